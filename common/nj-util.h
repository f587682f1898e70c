/*
 * nj-util.h: the small things every nightjar module uses.
 *
 * Error model: a function that fails returns -1 (or NULL) and leaves a
 * one-line description in a thread-local buffer, read with nj_error_get().
 * Foreign errors (errno, zstd, OpenSSL, json-c, libnbd) are translated into
 * it at the boundary where they happen, because any later call may reset
 * them.  Messages are lowercase, name the subject in quotes, and carry
 * offsets and strerror text where they help; the program prints the last
 * error once, prefixed with its own name.
 */
#ifndef NJ_UTIL_H
#define NJ_UTIL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#define NJ_ARRAY_SIZE(a) (sizeof (a) / sizeof ((a)[0]))
#define NJ_MIN(a, b) ((a) < (b) ? (a) : (b))
#define NJ_MAX(a, b) ((a) > (b) ? (a) : (b))

#define NJ_PRINTF(f, a) __attribute__((format(printf, f, a)))

/* 1 in an AddressSanitizer build, whose shadow memory and quarantine make
 * a process's RSS meaningless as a measure of its own memory. */
#if defined(__SANITIZE_ADDRESS__)
#define NJ_UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define NJ_UNDER_ASAN 1
#endif
#endif
#ifndef NJ_UNDER_ASAN
#define NJ_UNDER_ASAN 0
#endif

/* Set the thread's last error.  Always returns -1 for tail calls. */
int nj_error(const char *fmt, ...) NJ_PRINTF(1, 2);
/* Same, appending ": strerror(errnum)". */
int nj_error_errno(int errnum, const char *fmt, ...) NJ_PRINTF(2, 3);
/* Prefix the current last error with more context: "ctx: old". */
int nj_error_prefix(const char *fmt, ...) NJ_PRINTF(1, 2);
/* Borrowed pointer to the thread's last error ("" when none). */
const char *nj_error_get(void);
/* Print "prog: last error" on stderr. */
void nj_error_print(const char *prog);

/* Allocation that never returns NULL: aborts with a message instead. */
void *nj_malloc(size_t n);
/* n bytes aligned to align (a power of two, at least sizeof(void *)); free() it. */
void *nj_malloc_aligned(size_t align, size_t n);
void *nj_calloc(size_t n, size_t size);
void *nj_realloc_array(void *p, size_t n, size_t size);
char *nj_strdup(const char *s);
char *nj_asprintf(const char *fmt, ...) NJ_PRINTF(1, 2);

/* Cleanup attributes for locals.  Initialise every such variable. */
static inline void nj_freep(void *p) { free(*(void **)p); }
static inline void nj_closep(int *fd)
{
    if (*fd >= 0)
        close(*fd);
}
#define NJ_CLEANUP_FREE __attribute__((cleanup(nj_freep)))
#define NJ_CLEANUP_CLOSE __attribute__((cleanup(nj_closep)))

/* Hand ownership out of a cleanup variable. */
#define NJ_STEAL(pp) \
    __extension__({ __typeof__(*(pp)) _p = *(pp); *(pp) = NULL; _p; })
#define NJ_STEAL_FD(fdp) \
    __extension__({ int _fd = *(fdp); *(fdp) = -1; _fd; })

/*
 * Typed growable vectors, in the manner of nbdkit's DEFINE_VECTOR_TYPE:
 *   NJ_VECTOR(u64_vec, uint64_t);
 *   struct u64_vec v = {0}; u64_vec_append(&v, 7); free(v.ptr);
 */
#define NJ_VECTOR(name, type)                                              \
    struct name {                                                          \
        type *ptr;                                                         \
        size_t len, cap;                                                   \
    };                                                                     \
    static inline void name##_reserve(struct name *v, size_t n)            \
    {                                                                      \
        if (v->len + n <= v->cap)                                          \
            return;                                                        \
        size_t c = v->cap ? v->cap : 16;                                   \
        while (c < v->len + n)                                             \
            c *= 2;                                                        \
        v->ptr = nj_realloc_array(v->ptr, c, sizeof (type));               \
        v->cap = c;                                                        \
    }                                                                      \
    static inline void name##_append(struct name *v, type x)               \
    {                                                                      \
        name##_reserve(v, 1);                                              \
        v->ptr[v->len++] = x;                                              \
    }                                                                      \
    static inline void name##_reset(struct name *v)                        \
    {                                                                      \
        free(v->ptr);                                                      \
        v->ptr = NULL;                                                     \
        v->len = v->cap = 0;                                               \
    }

/* Overflow-checked a + b <= limit for unsigned 64-bit ranges. */
static inline bool nj_range_ok(uint64_t off, uint64_t len, uint64_t limit)
{
    return off <= limit && len <= limit - off;
}

/* Little-endian encoding helpers for on-disk structures. */
static inline void nj_put_le16(unsigned char *p, uint16_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
}
static inline void nj_put_le32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}
static inline void nj_put_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}
static inline uint16_t nj_get_le16(const unsigned char *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}
static inline uint32_t nj_get_le32(const unsigned char *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}
static inline uint64_t nj_get_le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* True when all len bytes of buf are zero. */
bool nj_is_zero(const void *buf, size_t len);

/*
 * The wall clock that backups are stamped with, in microseconds.  When
 * the environment has NIGHTJAR_FAKE_NOW=<Unix seconds>, the clock starts
 * there (and runs at real speed): the scheduler uses it to drive simulated
 * nights in tests.  Garbage collection never uses it.
 */
int64_t nj_now_us(void);

/* Seconds on the monotonic clock, for measuring durations. */
double nj_mono_sec(void);

/* Number of online CPUs, at least 1. */
unsigned nj_ncpus(void);

/* Parse a decimal unsigned 64-bit number; -1 on junk or overflow. */
int nj_parse_u64(const char *s, uint64_t *out);

/* Format a byte count for humans ("1.5 GiB") into buf. */
const char *nj_human_bytes(uint64_t n, char *buf, size_t buflen);

/*
 * A copy of s that is safe to print on a terminal: C0 controls, DEL, C1
 * controls (U+0080-U+009F), Unicode line separators and bidirectional
 * overrides, and bytes that are not valid UTF-8 are written as \xHH (\n,
 * \r, \t as such), a backslash as \\; printable UTF-8 is kept.  For
 * names read from a store or a state file.  Never NULL; the caller frees.
 */
char *nj_str_escape(const char *s);

#endif
