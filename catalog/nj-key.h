/*
 * nj-key.h: a store's master key and its key file (issue #12, first part;
 * the file's format is docs/FORMAT.md section 14).
 *
 * A key file holds one 256-bit master key, either in the clear (mode 0600,
 * refused when others may read it) or wrapped with AES-256-GCM under a key
 * derived from a passphrase with scrypt, whose parameters and salt the file
 * records.  Every field that says how to unwrap is bound into the GCM tag
 * (the associated data), so a changed parameter or fingerprint fails the
 * unwrap instead of weakening it.  The fingerprint (HMAC-SHA256 of a fixed
 * label under the key, first 16 bytes, hex) names the key without
 * revealing it; a store records it, never the key.
 *
 * Passphrases come from a file, the environment (NIGHTJAR_PASSPHRASE) or
 * the terminal, never from the command line.
 */
#ifndef NJ_KEY_H
#define NJ_KEY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define NJ_KEY_LEN 32
#define NJ_KEY_FPR_HEX 32 /* 16 bytes */

struct nj_key {
    unsigned char master[NJ_KEY_LEN];
    char fingerprint[NJ_KEY_FPR_HEX + 1];
};

/* scrypt's cost: N (a power of two), r, p; what new files get. */
struct nj_key_kdf {
    uint64_t n;
    uint32_t r, p;
};
extern const struct nj_key_kdf nj_key_kdf_default;

/* What a key file says about itself, without the passphrase. */
struct nj_key_info {
    char fingerprint[NJ_KEY_FPR_HEX + 1];
    bool wrapped;
    struct nj_key_kdf kdf; /* when wrapped */
    int64_t created;
};

/* Make a new random key and write it to path, which must not exist (it is
 * never replaced), mode 0600, wrapped with passphrase (NULL: in the
 * clear; kdf NULL: the default cost).  0, or -1 with the last error. */
int nj_key_create(const char *path, const char *passphrase,
                  const struct nj_key_kdf *kdf, struct nj_key *out);
/* Read a key file's description: 0, or -1 (not a key file, damaged). */
int nj_key_info(const char *path, struct nj_key_info *info);
/* Load the key: passphrase is needed when the file is wrapped (NULL then
 * fails saying so).  A wrong passphrase and a damaged file both fail the
 * GCM check: "wrong passphrase, or the key file was changed". */
int nj_key_load(const char *path, const char *passphrase, struct nj_key *out);
/* Rewrite path with the same key under a new passphrase (NULL: in the
 * clear), replacing the file atomically. */
int nj_key_rewrap(const char *path, const struct nj_key *k,
                  const char *passphrase, const struct nj_key_kdf *kdf);
/* Wipe a key from memory. */
void nj_key_clear(struct nj_key *k);

/*
 * Passphrases.  nj_passphrase_get: from file when given (its first line,
 * without the newline; the file may not be a FIFO or a directory), else
 * the environment variable env (NIGHTJAR_PASSPHRASE; key passwd's new one:
 * NIGHTJAR_NEW_PASSPHRASE), else the terminal (/dev/tty, without echo;
 * asked twice when confirm).  Returns a string to free with
 * nj_passphrase_free, or NULL with the last error (no terminal and
 * nothing else given; empty).
 */
char *nj_passphrase_get(const char *file, const char *env,
                        const char *prompt, bool confirm);
void nj_passphrase_free(char *p);

#endif
