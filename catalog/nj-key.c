/*
 * nj-key.c: key files and passphrases (nj-key.h; docs/FORMAT.md 14).
 */
#include "nj-key.h"
#include "nj-digest.h"
#include "nj-io.h"
#include "nj-util.h"

#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define KEY_FORMAT "nightjar-key"
#define KEY_VERSION 1
#define KEY_FILE_MAX 4096
#define SALT_LEN 16
#define NONCE_LEN 12
#define TAG_LEN 16
#define FPR_LABEL "nightjar key fingerprint 1"
/* A hostile file must not make the KDF take the machine: at most 1 GiB of
 * scrypt memory (128 * N * r bytes) and p <= 64. */
#define SCRYPT_MAXMEM (UINT64_C(1) << 30)

/* 32 MiB of memory and about a tenth of a second a try on this machine
 * class: within the backup's memory target, still costly to guess. */
const struct nj_key_kdf nj_key_kdf_default = { .n = 1u << 15, .r = 8, .p = 4 };

static int fingerprint_of(struct nj_key *k)
{
    unsigned char mac[32];
    unsigned int len = 0;
    if (!HMAC(EVP_sha256(), k->master, NJ_KEY_LEN,
              (const unsigned char *)FPR_LABEL, strlen(FPR_LABEL), mac, &len) ||
        len != sizeof mac)
        return nj_error("key fingerprint: HMAC-SHA256 failed");
    nj_hex_encode(mac, NJ_KEY_FPR_HEX / 2, k->fingerprint);
    return 0;
}

static bool kdf_sane(const struct nj_key_kdf *f)
{
    return f->n >= 2 && (f->n & (f->n - 1)) == 0 && f->n <= (UINT64_C(1) << 24) &&
           f->r >= 1 && f->r <= 64 && f->p >= 1 && f->p <= 64 &&
           128 * f->n * f->r <= SCRYPT_MAXMEM;
}

static char *aad_of(const struct nj_key_kdf *f, const char *salt_hex,
                    const char *fpr)
{
    return nj_asprintf("%s %d scrypt n=%llu r=%u p=%u salt=%s fingerprint=%s",
                       KEY_FORMAT, KEY_VERSION, (unsigned long long)f->n, f->r,
                       f->p, salt_hex, fpr);
}

static int derive(const char *pass, const unsigned char *salt,
                  const struct nj_key_kdf *f, unsigned char *out)
{
    if (EVP_PBE_scrypt(pass, strlen(pass), salt, SALT_LEN, f->n, f->r, f->p,
                       SCRYPT_MAXMEM + (1u << 20), out, NJ_KEY_LEN) != 1)
        return nj_error("scrypt failed (N=%llu r=%u p=%u)",
                        (unsigned long long)f->n, f->r, f->p);
    return 0;
}

/* AES-256-GCM of len bytes under key; enc: encrypt, else decrypt and
 * check tag.  0, or -1 (for decryption: the check failed). */
static int gcm(bool enc, const unsigned char *key, const unsigned char *nonce,
               const char *aad, const unsigned char *in, size_t len,
               unsigned char *out, unsigned char *tag)
{
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    int n = 0, ok = c != NULL;
    ok = ok && EVP_CipherInit_ex(c, EVP_aes_256_gcm(), NULL, NULL, NULL, enc) == 1;
    ok = ok && EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_IVLEN, NONCE_LEN, NULL) == 1;
    ok = ok && EVP_CipherInit_ex(c, NULL, NULL, key, nonce, enc) == 1;
    ok = ok && EVP_CipherUpdate(c, NULL, &n, (const unsigned char *)aad,
                                (int)strlen(aad)) == 1;
    ok = ok && EVP_CipherUpdate(c, out, &n, in, (int)len) == 1;
    if (ok && !enc)
        ok = EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, TAG_LEN, tag) == 1;
    ok = ok && EVP_CipherFinal_ex(c, out + n, &n) == 1;
    if (ok && enc)
        ok = EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, TAG_LEN, tag) == 1;
    EVP_CIPHER_CTX_free(c);
    return ok ? 0 : -1;
}

/* The file's text for k, wrapped with pass unless NULL. */
static char *key_text(const struct nj_key *k, const char *pass,
                      const struct nj_key_kdf *f, int64_t created)
{
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "format", json_object_new_string(KEY_FORMAT));
    json_object_object_add(o, "version", json_object_new_int(KEY_VERSION));
    json_object_object_add(o, "created", json_object_new_int64(created));
    json_object_object_add(o, "fingerprint", json_object_new_string(k->fingerprint));
    char hex[2 * NJ_KEY_LEN + 1];
    bool ok = true;
    if (!pass) {
        json_object_object_add(o, "protection", json_object_new_string("none"));
        nj_hex_encode(k->master, NJ_KEY_LEN, hex);
        json_object_object_add(o, "key", json_object_new_string(hex));
    } else {
        unsigned char salt[SALT_LEN], nonce[NONCE_LEN], kek[NJ_KEY_LEN];
        unsigned char wrapped[NJ_KEY_LEN], tag[TAG_LEN];
        char salt_hex[2 * SALT_LEN + 1];
        ok = RAND_bytes(salt, sizeof salt) == 1 &&
             RAND_bytes(nonce, sizeof nonce) == 1;
        nj_hex_encode(salt, SALT_LEN, salt_hex);
        NJ_CLEANUP_FREE char *aad = aad_of(f, salt_hex, k->fingerprint);
        ok = ok && derive(pass, salt, f, kek) == 0 &&
             gcm(true, kek, nonce, aad, k->master, NJ_KEY_LEN, wrapped, tag) == 0;
        OPENSSL_cleanse(kek, sizeof kek);
        json_object_object_add(o, "protection", json_object_new_string("scrypt"));
        struct json_object *s = json_object_new_object();
        json_object_object_add(s, "n", json_object_new_int64((int64_t)f->n));
        json_object_object_add(s, "r", json_object_new_int64(f->r));
        json_object_object_add(s, "p", json_object_new_int64(f->p));
        json_object_object_add(s, "salt", json_object_new_string(salt_hex));
        json_object_object_add(o, "scrypt", s);
        nj_hex_encode(nonce, NONCE_LEN, hex);
        json_object_object_add(o, "nonce", json_object_new_string(hex));
        nj_hex_encode(wrapped, NJ_KEY_LEN, hex);
        json_object_object_add(o, "wrapped", json_object_new_string(hex));
        nj_hex_encode(tag, TAG_LEN, hex);
        json_object_object_add(o, "tag", json_object_new_string(hex));
    }
    char *text = ok ? nj_asprintf("%s\n", json_object_to_json_string_ext(
                                              o, JSON_C_TO_STRING_PRETTY))
                    : NULL;
    json_object_put(o);
    OPENSSL_cleanse(hex, sizeof hex);
    if (!ok)
        nj_error("key file: could not make random bytes or wrap the key");
    return text;
}

/* Write text as path: replace, or create-only (never overwriting). */
static int write_key_file(const char *path, const char *text, bool replace)
{
    int r = nj_write_file_atomic(path, text, strlen(text), 0600, replace);
    if (r == 1)
        return nj_error("'%s' exists; a key file is never overwritten "
                        "(key passwd changes its passphrase)", path);
    return r < 0 ? nj_error_prefix("key file") : 0;
}

int nj_key_create(const char *path, const char *passphrase,
                  const struct nj_key_kdf *kdf, struct nj_key *out)
{
    const struct nj_key_kdf *f = kdf ? kdf : &nj_key_kdf_default;
    if (!kdf_sane(f))
        return nj_error("scrypt parameters out of range");
    struct nj_key k;
    if (RAND_bytes(k.master, NJ_KEY_LEN) != 1 || fingerprint_of(&k) < 0) {
        nj_key_clear(&k);
        return nj_error("key: no random bytes");
    }
    char *text = key_text(&k, passphrase, f, (int64_t)time(NULL));
    int r = text ? write_key_file(path, text, false) : -1;
    if (text) {
        OPENSSL_cleanse(text, strlen(text));
        free(text);
    }
    if (r == 0 && out)
        *out = k;
    nj_key_clear(&k);
    return r;
}

/* ---- reading ---- */

struct parsed {
    struct json_object *o;
    struct nj_key_info info;
    const char *key_hex, *salt_hex, *nonce_hex, *wrapped_hex, *tag_hex;
};

static const char *str_field(struct json_object *o, const char *name)
{
    struct json_object *v = NULL;
    return json_object_object_get_ex(o, name, &v) &&
                   json_object_is_type(v, json_type_string)
               ? json_object_get_string(v)
               : NULL;
}

static bool int_field(struct json_object *o, const char *name, int64_t *out)
{
    struct json_object *v = NULL;
    if (!json_object_object_get_ex(o, name, &v) ||
        !json_object_is_type(v, json_type_int))
        return false;
    *out = json_object_get_int64(v);
    return true;
}

static int parse_file(const char *path, struct parsed *p)
{
    memset(p, 0, sizeof *p);
    /* The path is the user's choice (a symlink to it is followed); what
     * it names must be a small regular file, never waited on. */
    NJ_CLEANUP_CLOSE int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return nj_error_errno(errno, "key file '%s'", path);
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
        return nj_error("key file '%s' is not a regular file", path);
    if (st.st_size > KEY_FILE_MAX)
        return nj_error("key file '%s' is too large to be one", path);
    char buf[KEY_FILE_MAX + 1];
    ssize_t n = pread(fd, buf, KEY_FILE_MAX, 0);
    if (n < 0)
        return nj_error_errno(errno, "read key file '%s'", path);
    buf[n] = '\0';
    struct json_tokener *tok = json_tokener_new();
    p->o = json_tokener_parse_ex(tok, buf, (int)n);
    bool complete = json_tokener_get_error(tok) == json_tokener_success &&
                    strspn(buf + json_tokener_get_parse_end(tok), " \t\r\n") ==
                        (size_t)n - json_tokener_get_parse_end(tok);
    json_tokener_free(tok);
    OPENSSL_cleanse(buf, sizeof buf);
    const char *fmt = p->o ? str_field(p->o, "format") : NULL;
    int64_t version = 0;
    if (!complete || !p->o || !fmt || strcmp(fmt, KEY_FORMAT) != 0)
        return nj_error("'%s' is not a nightjar key file (truncated or "
                        "damaged?)", path);
    if (!int_field(p->o, "version", &version) || version != KEY_VERSION)
        return nj_error("key file '%s' has an unknown version", path);
    const char *fpr = str_field(p->o, "fingerprint");
    const char *prot = str_field(p->o, "protection");
    unsigned char fb[NJ_KEY_FPR_HEX / 2];
    if (!fpr || nj_hex_decode(fpr, fb, sizeof fb) < 0 || !prot ||
        !int_field(p->o, "created", &p->info.created))
        return nj_error("key file '%s' is damaged (fingerprint, protection "
                        "or created)", path);
    snprintf(p->info.fingerprint, sizeof p->info.fingerprint, "%s", fpr);
    if (strcmp(prot, "none") == 0) {
        p->key_hex = str_field(p->o, "key");
        if (!p->key_hex)
            return nj_error("key file '%s' is damaged (no key)", path);
        if (st.st_mode & 077)
            return nj_error("key file '%s' holds a key in the clear and "
                            "others may read it (chmod 600 it)", path);
        return 0;
    }
    struct json_object *s = NULL;
    int64_t nn = 0, r = 0, pp = 0;
    if (strcmp(prot, "scrypt") != 0 ||
        !json_object_object_get_ex(p->o, "scrypt", &s) ||
        !int_field(s, "n", &nn) || !int_field(s, "r", &r) ||
        !int_field(s, "p", &pp) || nn < 0 || r < 0 || pp < 0 ||
        r > UINT32_MAX || pp > UINT32_MAX)
        return nj_error("key file '%s' is damaged (protection)", path);
    p->info.wrapped = true;
    p->info.kdf = (struct nj_key_kdf){ (uint64_t)nn, (uint32_t)r, (uint32_t)pp };
    if (!kdf_sane(&p->info.kdf))
        return nj_error("key file '%s': scrypt parameters out of range", path);
    p->salt_hex = str_field(s, "salt");
    p->nonce_hex = str_field(p->o, "nonce");
    p->wrapped_hex = str_field(p->o, "wrapped");
    p->tag_hex = str_field(p->o, "tag");
    if (!p->salt_hex || !p->nonce_hex || !p->wrapped_hex || !p->tag_hex)
        return nj_error("key file '%s' is damaged (wrapped key)", path);
    return 0;
}

int nj_key_info(const char *path, struct nj_key_info *info)
{
    struct parsed p;
    int r = parse_file(path, &p);
    if (r == 0)
        *info = p.info;
    json_object_put(p.o);
    return r;
}

int nj_key_load(const char *path, const char *passphrase, struct nj_key *out)
{
    struct parsed p;
    int r = parse_file(path, &p);
    struct nj_key k;
    memset(&k, 0, sizeof k);
    if (r == 0 && !p.info.wrapped) {
        if (nj_hex_decode(p.key_hex, k.master, NJ_KEY_LEN) < 0)
            r = nj_error("key file '%s' is damaged (key)", path);
    } else if (r == 0 && !passphrase) {
        r = nj_error("key file '%s' is protected by a passphrase; none was "
                     "given", path);
    } else if (r == 0) {
        unsigned char salt[SALT_LEN], nonce[NONCE_LEN], tag[TAG_LEN];
        unsigned char wrapped[NJ_KEY_LEN], kek[NJ_KEY_LEN];
        if (nj_hex_decode(p.salt_hex, salt, SALT_LEN) < 0 ||
            nj_hex_decode(p.nonce_hex, nonce, NONCE_LEN) < 0 ||
            nj_hex_decode(p.wrapped_hex, wrapped, NJ_KEY_LEN) < 0 ||
            nj_hex_decode(p.tag_hex, tag, TAG_LEN) < 0) {
            r = nj_error("key file '%s' is damaged (wrapped key)", path);
        } else {
            NJ_CLEANUP_FREE char *aad = aad_of(&p.info.kdf, p.salt_hex,
                                               p.info.fingerprint);
            r = derive(passphrase, salt, &p.info.kdf, kek);
            if (r == 0 && gcm(false, kek, nonce, aad, wrapped, NJ_KEY_LEN,
                              k.master, tag) < 0)
                r = nj_error("key file '%s': wrong passphrase, or the file "
                             "was changed", path);
            OPENSSL_cleanse(kek, sizeof kek);
        }
    }
    /* The stored fingerprint is the key's own (a plain key's damage). */
    if (r == 0 && fingerprint_of(&k) == 0 &&
        strcmp(k.fingerprint, p.info.fingerprint) != 0)
        r = nj_error("key file '%s' is damaged (its key does not match its "
                     "fingerprint)", path);
    json_object_put(p.o);
    if (r == 0)
        *out = k;
    nj_key_clear(&k);
    return r;
}

int nj_key_rewrap(const char *path, const struct nj_key *k,
                  const char *passphrase, const struct nj_key_kdf *kdf)
{
    const struct nj_key_kdf *f = kdf ? kdf : &nj_key_kdf_default;
    if (!kdf_sane(f))
        return nj_error("scrypt parameters out of range");
    struct nj_key_info info;
    if (nj_key_info(path, &info) < 0)
        return -1;
    char *text = key_text(k, passphrase, f, info.created);
    int r = text ? write_key_file(path, text, true) : -1;
    if (text) {
        OPENSSL_cleanse(text, strlen(text));
        free(text);
    }
    return r;
}

void nj_key_clear(struct nj_key *k)
{
    OPENSSL_cleanse(k, sizeof *k);
}

/* ---- passphrases ---- */

static char *read_line_fd(int fd)
{
    char buf[1025];
    size_t n = 0;
    while (n < sizeof buf - 1) {
        ssize_t r = read(fd, buf + n, 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0 || buf[n] == '\n')
            break;
        n++;
    }
    buf[n] = '\0';
    if (n > 0 && buf[n - 1] == '\r')
        buf[--n] = '\0';
    char *s = nj_strdup(buf);
    OPENSSL_cleanse(buf, sizeof buf);
    return s;
}

static char *tty_ask(int tty, const char *prompt)
{
    struct termios old, quiet;
    bool restore = tcgetattr(tty, &old) == 0;
    if (restore) {
        quiet = old;
        quiet.c_lflag &= ~(tcflag_t)ECHO;
        tcsetattr(tty, TCSAFLUSH, &quiet);
    }
    if (nj_full_write(tty, prompt, strlen(prompt)) < 0) {
        /* the prompt is a courtesy; the answer is what counts */
    }
    char *s = read_line_fd(tty);
    if (restore)
        tcsetattr(tty, TCSAFLUSH, &old);
    if (nj_full_write(tty, "\n", 1) < 0) {
        /* as above */
    }
    return s;
}

char *nj_passphrase_get(const char *file, const char *env,
                        const char *prompt, bool confirm)
{
    char *p = NULL;
    if (file) {
        NJ_CLEANUP_CLOSE int fd = open(file, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
        struct stat st;
        if (fd < 0) {
            nj_error_errno(errno, "passphrase file '%s'", file);
            return NULL;
        }
        if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
            nj_error("passphrase file '%s' is not a regular file", file);
            return NULL;
        }
        p = read_line_fd(fd);
    } else if (getenv(env)) {
        p = nj_strdup(getenv(env));
    } else {
        NJ_CLEANUP_CLOSE int tty = open("/dev/tty", O_RDWR | O_NOCTTY | O_CLOEXEC);
        if (tty < 0) {
            nj_error("no passphrase: give a passphrase file, set %s, or "
                     "run on a terminal", env);
            return NULL;
        }
        p = tty_ask(tty, prompt);
        if (confirm && p[0]) {
            char *again = tty_ask(tty, "again: ");
            bool same = strcmp(again, p) == 0;
            nj_passphrase_free(again);
            if (!same) {
                nj_passphrase_free(p);
                nj_error("the two passphrases differ");
                return NULL;
            }
        }
    }
    if (!p[0]) {
        nj_passphrase_free(p);
        nj_error("the passphrase is empty");
        return NULL;
    }
    return p;
}

void nj_passphrase_free(char *p)
{
    if (p) {
        OPENSSL_cleanse(p, strlen(p));
        free(p);
    }
}
