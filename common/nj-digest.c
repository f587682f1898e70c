/*
 * nj-digest.c: SHA-256 through OpenSSL's EVP interface, and CRC-32C.
 *
 * CRC-32C uses the SSE4.2 crc32 instruction when the CPU has it and a
 * slicing-by-one table otherwise; both give identical results (tested
 * against the RFC 3720 check value in tests/unit/test-digest.c).
 */
#include "nj-digest.h"
#include "nj-util.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <string.h>

static int ssl_error(const char *what)
{
    unsigned long e = ERR_get_error();
    char buf[256] = "unknown OpenSSL error";
    if (e)
        ERR_error_string_n(e, buf, sizeof buf);
    return nj_error("%s: %s", what, buf);
}

int nj_sha256(const void *buf, size_t len, struct nj_digest *out)
{
    unsigned int n = 0;
    if (!EVP_Digest(buf, len, out->b, &n, EVP_sha256(), NULL) ||
        n != NJ_DIGEST_LEN)
        return ssl_error("sha256");
    return 0;
}

struct nj_sha256_ctx {
    EVP_MD_CTX *md;
};

struct nj_sha256_ctx *nj_sha256_new(void)
{
    struct nj_sha256_ctx *c = nj_calloc(1, sizeof *c);
    c->md = EVP_MD_CTX_new();
    if (!c->md || !EVP_DigestInit_ex(c->md, EVP_sha256(), NULL)) {
        ssl_error("sha256 init");
        nj_sha256_free(c);
        return NULL;
    }
    return c;
}

int nj_sha256_update(struct nj_sha256_ctx *c, const void *buf, size_t len)
{
    if (!EVP_DigestUpdate(c->md, buf, len))
        return ssl_error("sha256 update");
    return 0;
}

int nj_sha256_final(struct nj_sha256_ctx *c, struct nj_digest *out)
{
    unsigned int n = 0;
    if (!EVP_DigestFinal_ex(c->md, out->b, &n) || n != NJ_DIGEST_LEN)
        return ssl_error("sha256 final");
    return 0;
}

void nj_sha256_free(struct nj_sha256_ctx *c)
{
    if (!c)
        return;
    EVP_MD_CTX_free(c->md);
    free(c);
}

void nj_hex_encode(const void *buf, size_t n, char *out)
{
    static const char hexd[] = "0123456789abcdef";
    const unsigned char *b = buf;
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hexd[b[i] >> 4];
        out[2 * i + 1] = hexd[b[i] & 15];
    }
    out[2 * n] = '\0';
}

void nj_digest_to_hex(const struct nj_digest *d, char *out)
{
    nj_hex_encode(d->b, NJ_DIGEST_LEN, out);
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int nj_hex_decode(const char *hex, void *buf, size_t n)
{
    unsigned char *out = buf;
    for (size_t i = 0; i < n; i++) {
        int hi = hexval(hex[2 * i]);
        int lo = hi < 0 ? -1 : hexval(hex[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        out[i] = (unsigned char)(hi << 4 | lo);
    }
    return hex[2 * n] == '\0' ? 0 : -1;
}

int nj_digest_from_hex(const char *hex, struct nj_digest *out)
{
    return nj_hex_decode(hex, out->b, NJ_DIGEST_LEN);
}

int nj_digest_cmp(const struct nj_digest *a, const struct nj_digest *b)
{
    return memcmp(a->b, b->b, NJ_DIGEST_LEN);
}

static uint32_t crc_table[256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;
static bool crc_hw;

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ 0x82f63b78u : c >> 1;
        crc_table[i] = c;
    }
#if defined(__x86_64__)
    __builtin_cpu_init();
    crc_hw = __builtin_cpu_supports("sse4.2");
#endif
}

#if defined(__x86_64__)
__attribute__((target("sse4.2")))
static uint32_t crc32c_hw(uint32_t crc, const unsigned char *p, size_t len)
{
    uint64_t c = crc;
    while (len >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = __builtin_ia32_crc32di(c, v);
        p += 8;
        len -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (len--)
        c32 = __builtin_ia32_crc32qi(c32, *p++);
    return c32;
}
#endif

uint32_t nj_crc32c(uint32_t crc, const void *buf, size_t len)
{
    pthread_once(&crc_once, crc_init);
    const unsigned char *p = buf;
    crc = ~crc;
#if defined(__x86_64__)
    if (crc_hw)
        return ~crc32c_hw(crc, p, len);
#endif
    while (len--)
        crc = crc_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}
