/*
 * nj-test.h: shared support for nightjar's C tests.
 *
 * The "truth" of a disk is a plain memory buffer that receives the same
 * writes as the backups describe; every restore is compared against it.
 * The chunker here is deliberately simple and independent of datapath/:
 * it cuts dirty runs at a grid and stores each piece, or records zeroes.
 */
#ifndef NJ_TEST_H
#define NJ_TEST_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "nj-catalog.h"
#include "nj-util.h"

#define NJ_TEST_GRANULARITY (64u * 1024)

extern int nj_test_failures;

#define CHECK(cond)                                                        \
    do {                                                                   \
        if (!(cond)) {                                                     \
            fprintf(stderr, "%s:%d: check failed: %s (last error: %s)\n",  \
                    __FILE__, __LINE__, #cond, nj_error_get());            \
            nj_test_failures++;                                            \
        }                                                                  \
    } while (0)

#define REQUIRE(cond)                                                      \
    do {                                                                   \
        if (!(cond)) {                                                     \
            fprintf(stderr, "%s:%d: required: %s (last error: %s)\n",      \
                    __FILE__, __LINE__, #cond, nj_error_get());            \
            exit(1);                                                       \
        }                                                                  \
    } while (0)

/* Deterministic PRNG (splitmix64). */
uint64_t nj_test_rand(uint64_t *state);
uint64_t nj_test_rand_below(uint64_t *state, uint64_t n);
void nj_test_fill_random(uint64_t *state, unsigned char *buf, size_t len);

/* A new temporary directory (mkdtemp under $TMPDIR or /tmp); free it. */
char *nj_test_tmpdir(const char *tag);
void nj_test_rmtree(const char *path);

/* A dirty map at NJ_TEST_GRANULARITY over a disk of size bytes. */
struct nj_test_dirty {
    uint64_t size;
    size_t nblocks;
    bool *bit;
};
void nj_test_dirty_init(struct nj_test_dirty *d, uint64_t size);
void nj_test_dirty_mark(struct nj_test_dirty *d, uint64_t off, uint64_t len);
void nj_test_dirty_clear(struct nj_test_dirty *d);
void nj_test_dirty_free(struct nj_test_dirty *d);

/* Apply a random mix of writes (random data, zeroes, repeated patterns,
 * the very last byte) to truth and mark them dirty. */
void nj_test_mutate(uint64_t *rng, unsigned char *truth, uint64_t size,
                    struct nj_test_dirty *dirty, int nops);

/*
 * Store one disk of a backup from truth: the whole disk when full, else
 * the dirty blocks, cut at grid (a power of two).  Zero pieces become
 * zero entries.
 */
int nj_test_store_disk(struct nj_backup *b, struct nj_codec *codec,
                       const char *target, const unsigned char *truth,
                       uint64_t size, const struct nj_test_dirty *dirty,
                       bool full, uint64_t grid);

/* Restore (m, target) to a fresh raw file and compare with truth.
 * Returns 0 when equal. */
int nj_test_restore_compare(struct nj_store *s, const struct nj_catalog *c,
                            const struct nj_manifest *m, const char *target,
                            const unsigned char *truth, uint64_t size,
                            const char *scratch_path);

/* Sets of chunk digests. */
NJ_VECTOR(digest_vec, struct nj_digest);
int nj_test_cmp_digest(const void *a, const void *b);
void nj_test_digests_sort_unique(struct digest_vec *v);
/* Every chunk the committed backups' indexes reference, distinct and
 * sorted into out; *refs (when not NULL) counts references with repeats.
 * Requires a store with no unreadable backup. */
void nj_test_referenced(struct nj_store *s, struct digest_vec *out,
                        uint64_t *refs);

/* Copy a store (a directory tree) from one path to a new one, keeping
 * file modes and times. */
void nj_test_copy_store(const char *from, const char *to);

/* Exit code for a test: 0, or 1 after printing the failure count. */
int nj_test_done(const char *name);

#endif
