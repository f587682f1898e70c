/*
 * nj-digest.h: SHA-256 content addresses and CRC-32C frame checksums.
 *
 * A digest context belongs to one thread; never share one.
 */
#ifndef NJ_DIGEST_H
#define NJ_DIGEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define NJ_DIGEST_LEN 32
#define NJ_DIGEST_HEX_LEN 64

struct nj_digest {
    unsigned char b[NJ_DIGEST_LEN];
};

/* SHA-256 of buf.  Returns 0, or -1 with the last error set. */
int nj_sha256(const void *buf, size_t len, struct nj_digest *out);

/* Incremental SHA-256 for streams (one per thread). */
struct nj_sha256_ctx;
struct nj_sha256_ctx *nj_sha256_new(void);
int nj_sha256_update(struct nj_sha256_ctx *ctx, const void *buf, size_t len);
int nj_sha256_final(struct nj_sha256_ctx *ctx, struct nj_digest *out);
void nj_sha256_free(struct nj_sha256_ctx *ctx);

/* n bytes as 2n lowercase hex digits and a NUL (out: 2n + 1 bytes). */
void nj_hex_encode(const void *b, size_t n, char *out);
/* Exactly 2n lowercase hex digits and the string's end, into n bytes:
 * 0, or -1 on anything else. */
int nj_hex_decode(const char *hex, void *out, size_t n);
/* Lowercase hex; out must hold NJ_DIGEST_HEX_LEN + 1 bytes. */
void nj_digest_to_hex(const struct nj_digest *d, char *out);
/* Parse exactly 64 hex digits; -1 on anything else. */
int nj_digest_from_hex(const char *hex, struct nj_digest *out);

static inline bool nj_digest_eq(const struct nj_digest *a,
                                const struct nj_digest *b)
{
    return __builtin_memcmp(a->b, b->b, NJ_DIGEST_LEN) == 0;
}
int nj_digest_cmp(const struct nj_digest *a, const struct nj_digest *b);

/* CRC-32C (Castagnoli), as used by iSCSI and ext4: crc = nj_crc32c(0, ...)
 * then chain further calls with the previous value. */
uint32_t nj_crc32c(uint32_t crc, const void *buf, size_t len);

#endif
