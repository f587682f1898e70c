/*
 * test-marks: gc's mark set (nj-marks.h).  Never a false negative, in the
 * exact phase and after it turned into Bloom layers; no false positive
 * while exact; past that a false-positive rate well under the 2% it
 * allows itself (about 0.8% expected: the bound is many standard
 * deviations away with a million probes); memory near 2 bytes a chunk
 * once in the filter, not 8 or more; repeats do not count; two sets keep
 * different garbage (their seeds differ).
 */
#include "nj-test.h"
#include "nj-marks.h"

#include <string.h>

static void digest_of(uint64_t tag, uint64_t i, struct nj_digest *d)
{
    uint64_t rng = tag * UINT64_C(0x100000001b3) ^ (i + 1) * UINT64_C(0x9e3779b97f4a7c15);
    nj_test_fill_random(&rng, d->b, sizeof d->b);
}

/* Probes never added: how many the set claims. */
static size_t false_positives(struct nj_marks *m, size_t probes)
{
    size_t fp = 0;
    for (size_t i = 0; i < probes; i++) {
        struct nj_digest d;
        digest_of(2, i, &d);
        fp += nj_marks_has(m, &d);
    }
    return fp;
}

static void all_present(struct nj_marks *m, size_t n)
{
    size_t missing = 0;
    for (size_t i = 0; i < n; i++) {
        struct nj_digest d;
        digest_of(1, i, &d);
        missing += !nj_marks_has(m, &d);
    }
    CHECK(missing == 0);
}

int main(void)
{
    /* Exact: each added once and again (repeats fold), none invented. */
    struct nj_marks *m = nj_marks_new();
    const size_t small = NJ_MARKS_EXACT - 1000;
    for (int rep = 0; rep < 2; rep++)
        for (size_t i = 0; i < small; i++) {
            struct nj_digest d;
            digest_of(1, i, &d);
            nj_marks_add(m, &d);
        }
    all_present(m, small);
    CHECK(nj_marks_exact(m));
    CHECK(nj_marks_count(m) == small);
    CHECK(false_positives(m, 1000000) == 0);
    CHECK(nj_marks_bytes(m) <= 8u << 20);
    nj_marks_free(m);

    /* Past the exact bound: a filter; nothing lost, little invented. */
    const size_t big = 3 * (size_t)NJ_MARKS_EXACT + 12345;
    struct nj_marks *a = nj_marks_new(), *b = nj_marks_new();
    for (size_t i = 0; i < big; i++) {
        struct nj_digest d;
        digest_of(1, i, &d);
        nj_marks_add(a, &d);
        nj_marks_add(b, &d);
        if (i % 7 == 0)
            nj_marks_add(a, &d); /* a repeat */
    }
    CHECK(!nj_marks_exact(a));
    all_present(a, big);
    all_present(b, big);
    size_t probes = 1000000;
    size_t fa = false_positives(a, probes), fb = false_positives(b, probes);
    printf("filter: %zu chunks in %zu KiB (%.2f bytes each); false "
           "positives %.3f%% and %.3f%%\n", big, nj_marks_bytes(a) >> 10,
           (double)nj_marks_bytes(a) / (double)big, 100.0 * (double)fa / (double)probes,
           100.0 * (double)fb / (double)probes);
    CHECK(fa > 0 && fa < probes / 50);
    CHECK(fb < probes / 50);
    CHECK(nj_marks_bytes(a) < 3 * big); /* not 8 bytes a chunk, or more */
    CHECK(nj_marks_count(a) <= big);    /* repeats were not counted */
    /* Different seeds: the garbage each keeps differs. */
    size_t both = 0;
    for (size_t i = 0; i < probes; i++) {
        struct nj_digest d;
        digest_of(2, i, &d);
        both += nj_marks_has(a, &d) && nj_marks_has(b, &d);
    }
    CHECK(both < fa / 4 + 1);
    nj_marks_free(a);
    nj_marks_free(b);
    return nj_test_done("test-marks");
}
