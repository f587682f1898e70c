/*
 * nj-marks.c: gc's marks: sorted 64-bit fingerprints, then Bloom layers
 * (nj-marks.h says what each guarantees).
 */
#include "nj-marks.h"
#include "nj-util.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

/* The first Bloom layer holds this many chunks at 1/256 false positives
 * (8 hash functions, 11.5 bits a chunk); each next one twice as many at
 * half the rate, so the rates add up to less than 1/128. */
#define LAYER0_CAP (4 * (size_t)NJ_MARKS_EXACT)
#define LAYER0_LOG2_INV_P 8
#define FP_CAP0 4096

struct layer {
    uint64_t *bits;
    uint64_t nbits;
    unsigned k;
    size_t cap, n;
};

struct nj_marks {
    uint64_t seed[2];
    /* Exact: fp[0 .. nfp), of which [0 .. sorted) is sorted and unique. */
    uint64_t *fp;
    size_t nfp, capfp, sorted;
    /* Then Bloom layers, the last one taking adds. */
    struct layer *layers;
    size_t nlayers, adds;
};

static uint64_t mix(uint64_t x)
{
    x += UINT64_C(0x9e3779b97f4a7c15);
    x = (x ^ (x >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)) * UINT64_C(0x94d049bb133111eb);
    return x ^ (x >> 31);
}

static uint64_t fingerprint(const struct nj_marks *m, const struct nj_digest *d)
{
    uint64_t w0, w1;
    memcpy(&w0, d->b, sizeof w0);
    memcpy(&w1, d->b + 8, sizeof w1);
    uint64_t b = mix(w1 ^ m->seed[1]);
    return mix(w0 ^ m->seed[0]) ^ ((b << 17) | (b >> 47));
}

struct nj_marks *nj_marks_new(void)
{
    struct nj_marks *m = nj_calloc(1, sizeof *m);
    if (getrandom(m->seed, sizeof m->seed, 0) != (ssize_t)sizeof m->seed) {
        /* Any seed is correct; a random one only varies which garbage a
         * Bloom layer keeps from run to run. */
        m->seed[0] = (uint64_t)(uintptr_t)m ^ (uint64_t)time(NULL);
        m->seed[1] = mix(m->seed[0]);
    }
    return m;
}

void nj_marks_free(struct nj_marks *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->nlayers; i++)
        free(m->layers[i].bits);
    free(m->layers);
    free(m->fp);
    free(m);
}

static void sift_down(uint64_t *a, size_t i, size_t n)
{
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            return;
        if (c + 1 < n && a[c + 1] > a[c])
            c++;
        if (a[i] >= a[c])
            return;
        uint64_t t = a[i];
        a[i] = a[c];
        a[c] = t;
        i = c;
    }
}

/* Heapsort: in place (glibc's qsort may allocate a copy of the array,
 * doubling the peak this set exists to bound). */
static void sort_u64(uint64_t *a, size_t n)
{
    for (size_t i = n / 2; i-- > 0;)
        sift_down(a, i, n);
    for (size_t end = n; end-- > 1;) {
        uint64_t t = a[0];
        a[0] = a[end];
        a[end] = t;
        sift_down(a, 0, end);
    }
}

/* Sort and deduplicate the fingerprints. */
static void compact(struct nj_marks *m)
{
    if (m->sorted == m->nfp)
        return;
    sort_u64(m->fp, m->nfp);
    size_t n = 0;
    for (size_t i = 0; i < m->nfp; i++)
        if (n == 0 || m->fp[n - 1] != m->fp[i])
            m->fp[n++] = m->fp[i];
    m->nfp = m->sorted = n;
}

static uint64_t bit_of(const struct layer *l, uint64_t fp, unsigned j)
{
    uint64_t h2 = mix(fp ^ UINT64_C(0x5851f42d4c957f2d)) | 1;
    uint64_t h = fp + j * h2;
    return (uint64_t)(((unsigned __int128)h * l->nbits) >> 64);
}

static bool layer_has(const struct layer *l, uint64_t fp)
{
    for (unsigned j = 0; j < l->k; j++) {
        uint64_t b = bit_of(l, fp, j);
        if (!(l->bits[b >> 6] & (UINT64_C(1) << (b & 63))))
            return false;
    }
    return true;
}

static bool bloom_has(const struct nj_marks *m, uint64_t fp)
{
    for (size_t i = 0; i < m->nlayers; i++)
        if (layer_has(&m->layers[i], fp))
            return true;
    return false;
}

static void layer_new(struct nj_marks *m)
{
    size_t i = m->nlayers;
    unsigned log2_inv_p = LAYER0_LOG2_INV_P + (unsigned)i;
    size_t cap = LAYER0_CAP << i;
    /* m = n log2(1/p) / ln 2 bits, rounded up to whole words */
    uint64_t nbits = (uint64_t)((double)cap * log2_inv_p / 0.6931471805599453);
    nbits = (nbits + 63) & ~(uint64_t)63;
    m->layers = nj_realloc_array(m->layers, i + 1, sizeof *m->layers);
    m->layers[i] = (struct layer){ .bits = nj_calloc(nbits / 64, 8),
                                   .nbits = nbits,
                                   .k = log2_inv_p,
                                   .cap = cap };
    m->nlayers = i + 1;
}

static void bloom_add(struct nj_marks *m, uint64_t fp)
{
    /* Already answered "marked" (added, or a false positive that will
     * answer so for good): nothing to set, and the layer's count stays a
     * count of distinct chunks. */
    if (m->nlayers > 0 && bloom_has(m, fp))
        return;
    if (m->nlayers == 0 || m->layers[m->nlayers - 1].n >=
                               m->layers[m->nlayers - 1].cap)
        layer_new(m);
    struct layer *l = &m->layers[m->nlayers - 1];
    for (unsigned j = 0; j < l->k; j++) {
        uint64_t b = bit_of(l, fp, j);
        l->bits[b >> 6] |= UINT64_C(1) << (b & 63);
    }
    l->n++;
    m->adds++;
}

void nj_marks_add(struct nj_marks *m, const struct nj_digest *d)
{
    uint64_t fp = fingerprint(m, d);
    if (m->nlayers > 0) {
        bloom_add(m, fp);
        return;
    }
    if (m->nfp == m->capfp) {
        compact(m);
        if (m->nfp > NJ_MARKS_EXACT) {
            /* Too many to keep exactly: into the filter, for good. */
            for (size_t i = 0; i < m->nfp; i++)
                bloom_add(m, m->fp[i]);
            free(m->fp);
            m->fp = NULL;
            m->nfp = m->capfp = m->sorted = 0;
            bloom_add(m, fp);
            return;
        }
        if (m->nfp >= m->capfp / 2) {
            m->capfp = m->capfp ? 2 * m->capfp : FP_CAP0;
            m->fp = nj_realloc_array(m->fp, m->capfp, sizeof *m->fp);
        }
    }
    m->fp[m->nfp++] = fp;
}

bool nj_marks_has(struct nj_marks *m, const struct nj_digest *d)
{
    uint64_t fp = fingerprint(m, d);
    if (m->nlayers > 0)
        return bloom_has(m, fp);
    compact(m);
    size_t lo = 0, hi = m->nfp;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (m->fp[mid] < fp)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < m->nfp && m->fp[lo] == fp;
}

bool nj_marks_exact(const struct nj_marks *m)
{
    return m->nlayers == 0;
}

size_t nj_marks_count(const struct nj_marks *m)
{
    return m->nlayers ? m->adds : m->nfp;
}

size_t nj_marks_bytes(const struct nj_marks *m)
{
    size_t n = m->capfp * sizeof *m->fp;
    for (size_t i = 0; i < m->nlayers; i++)
        n += (size_t)(m->layers[i].nbits / 8);
    return n;
}
