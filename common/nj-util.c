/*
 * nj-util.c: thread-local last error, checked allocation, small parsers.
 */
#include "nj-util.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define NJ_ERROR_MAX 1024

static _Thread_local char last_error[NJ_ERROR_MAX];

int nj_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return -1;
}

int nj_error_errno(int errnum, const char *fmt, ...)
{
    char msg[NJ_ERROR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(last_error, sizeof last_error, "%s: %s", msg, strerror(errnum));
    return -1;
}

int nj_error_prefix(const char *fmt, ...)
{
    char ctx[NJ_ERROR_MAX], old[NJ_ERROR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ctx, sizeof ctx, fmt, ap);
    va_end(ap);
    memcpy(old, last_error, sizeof old);
    snprintf(last_error, sizeof last_error, "%s: %s", ctx, old);
    return -1;
}

const char *nj_error_get(void)
{
    return last_error;
}

void nj_error_print(const char *prog)
{
    fprintf(stderr, "%s: %s\n", prog,
            last_error[0] ? last_error : "unknown error");
}

static void nj_oom(size_t n)
{
    fprintf(stderr, "nightjar: out of memory allocating %zu bytes\n", n);
    abort();
}

void *nj_malloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        nj_oom(n);
    return p;
}

void *nj_malloc_aligned(size_t align, size_t n)
{
    void *p = NULL;
    if (posix_memalign(&p, align, n ? n : 1) != 0)
        nj_oom(n);
    return p;
}

void *nj_calloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        nj_oom(n * size);
    return p;
}

void *nj_realloc_array(void *p, size_t n, size_t size)
{
    if (size && n > SIZE_MAX / size)
        nj_oom(SIZE_MAX);
    size_t bytes = n * size;
    void *q = realloc(p, bytes ? bytes : 1);
    if (!q)
        nj_oom(bytes);
    return q;
}

char *nj_strdup(const char *s)
{
    char *p = strdup(s);
    if (!p)
        nj_oom(strlen(s) + 1);
    return p;
}

char *nj_asprintf(const char *fmt, ...)
{
    char *s = NULL;
    va_list ap;
    va_start(ap, fmt);
    int r = vasprintf(&s, fmt, ap);
    va_end(ap);
    if (r < 0)
        nj_oom(0);
    return s;
}

int64_t nj_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t real = (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
    static int64_t offset, init;
    if (!__atomic_load_n(&init, __ATOMIC_ACQUIRE)) {
        const char *f = getenv("NIGHTJAR_FAKE_NOW");
        uint64_t fake = 0;
        int64_t off = f && nj_parse_u64(f, &fake) == 0
                          ? (int64_t)fake * 1000000 - real
                          : 0;
        __atomic_store_n(&offset, off, __ATOMIC_RELAXED);
        __atomic_store_n(&init, 1, __ATOMIC_RELEASE);
    }
    return real + __atomic_load_n(&offset, __ATOMIC_RELAXED);
}

double nj_mono_sec(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

unsigned nj_ncpus(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (unsigned)n : 1;
}

int nj_parse_u64(const char *s, uint64_t *out)
{
    if (!s || *s < '0' || *s > '9')
        return -1;
    errno = 0;
    char *end = NULL;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end)
        return -1;
    *out = v;
    return 0;
}

const char *nj_human_bytes(uint64_t n, char *buf, size_t buflen)
{
    static const char *units[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB" };
    double v = (double)n;
    size_t u = 0;
    while (v >= 1024 && u + 1 < NJ_ARRAY_SIZE(units)) {
        v /= 1024;
        u++;
    }
    if (u == 0)
        snprintf(buf, buflen, "%" PRIu64 " B", n);
    else
        snprintf(buf, buflen, "%.1f %s", v, units[u]);
    return buf;
}

bool nj_is_zero(const void *buf, size_t len)
{
    const unsigned char *p = buf;
    /* Check a short prefix byte by byte, then compare the buffer with
     * itself shifted by that prefix: memcmp is vectorised. */
    size_t head = NJ_MIN(len, (size_t)16);
    for (size_t i = 0; i < head; i++)
        if (p[i])
            return false;
    return len <= 16 || memcmp(p, p + 16, len - 16) == 0;
}

/* Length of the valid UTF-8 sequence at p (1-4), or 0 when invalid;
 * *cp gets the code point. */
static size_t utf8_seq(const unsigned char *p, uint32_t *cp)
{
    size_t n;
    uint32_t c, min;
    if (p[0] < 0x80) {
        *cp = p[0];
        return 1;
    } else if ((p[0] & 0xe0) == 0xc0) {
        n = 2, c = p[0] & 0x1f, min = 0x80;
    } else if ((p[0] & 0xf0) == 0xe0) {
        n = 3, c = p[0] & 0x0f, min = 0x800;
    } else if ((p[0] & 0xf8) == 0xf0) {
        n = 4, c = p[0] & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xc0) != 0x80) /* also stops at the NUL */
            return 0;
        c = (c << 6) | (p[i] & 0x3f);
    }
    if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
        return 0;
    *cp = c;
    return n;
}

static bool cp_unsafe(uint32_t c)
{
    return c < 0x20 || c == 0x7f || (c >= 0x80 && c <= 0x9f) ||
           c == 0x2028 || c == 0x2029 || (c >= 0x200e && c <= 0x200f) ||
           (c >= 0x202a && c <= 0x202e) || (c >= 0x2066 && c <= 0x2069);
}

char *nj_str_escape(const char *s)
{
    const unsigned char *p = (const unsigned char *)(s ? s : "");
    size_t len = strlen((const char *)p);
    /* Each byte becomes at most 4 ("\xHH"). */
    char *out = nj_malloc(len * 4 + 1), *o = out;
    while (*p) {
        uint32_t c = 0;
        size_t n = utf8_seq(p, &c);
        if (n > 0 && !cp_unsafe(c) && c != '\\') {
            memcpy(o, p, n);
            o += n;
            p += n;
            continue;
        }
        if (n == 0)
            n = 1; /* an invalid byte: escape it alone */
        for (size_t i = 0; i < n; i++, p++) {
            if (*p == '\\') {
                *o++ = '\\', *o++ = '\\';
            } else if (*p == '\n') {
                *o++ = '\\', *o++ = 'n';
            } else if (*p == '\r') {
                *o++ = '\\', *o++ = 'r';
            } else if (*p == '\t') {
                *o++ = '\\', *o++ = 't';
            } else {
                static const char hex[] = "0123456789abcdef";
                *o++ = '\\', *o++ = 'x';
                *o++ = hex[*p >> 4], *o++ = hex[*p & 15];
            }
        }
    }
    *o = '\0';
    return out;
}
