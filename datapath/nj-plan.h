/*
 * nj-plan.h: extent planning from NBD block status.
 *
 * The planner walks a disk from offset 0 to its size and classifies every
 * byte as DATA (must be read), ZERO (recorded as a zero entry, never read)
 * or SKIP (unchanged since the checkpoint: not part of this backup).
 *
 *  - full:        base:allocation only.  A range the server reports with
 *                 the ZERO flag is ZERO, whether or not it is also a HOLE;
 *                 everything else is DATA.
 *  - incremental: the dirty bitmap intersected with base:allocation.  Clean
 *                 ranges are SKIP; dirty ranges are DATA, or ZERO when the
 *                 allocation says zero (a region dirtied and then zeroed
 *                 or discarded must be recorded, never dropped).
 *
 * The planner knows nothing of NBD: a fetch callback fills the extents of
 * each context from a given offset (the NBD implementation asks for a
 * large range and both contexts in one request).  Both contexts are merged
 * in one sweep, O(extents).  A fetch may return fewer extents than asked
 * (the planner asks again from where they end), extents past the range or
 * the disk end (clipped), or zero-length extents (ignored); a fetch that
 * makes no progress three times in a row is an error, never a loop.
 */
#ifndef NJ_PLAN_H
#define NJ_PLAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* NBD base:allocation flags, and the dirty-bitmap context's dirty bit. */
#define NJ_STATE_HOLE 1u
#define NJ_STATE_ZERO 2u
#define NJ_STATE_DIRTY 1u

enum nj_plan_kind {
    NJ_PLAN_DATA,
    NJ_PLAN_ZERO,
    NJ_PLAN_SKIP,
};

struct nj_plan_range {
    uint64_t offset, length;
    enum nj_plan_kind kind;
};

enum nj_plan_context {
    NJ_CTX_ALLOC = 0,
    NJ_CTX_DIRTY = 1,
};

struct nj_plan;

/*
 * Fetch callback: report extents of the contexts starting at offset, by
 * calling nj_plan_add_extents() for each context (the NBD callback can do
 * that directly).  Returns 0, or -1 with the last error set.
 */
typedef int (*nj_plan_fetch_fn)(void *opaque, struct nj_plan *p,
                                uint64_t offset, uint64_t length);

/* incremental: the dirty context is used too. */
struct nj_plan *nj_plan_new(uint64_t size, bool incremental,
                            nj_plan_fetch_fn fetch, void *opaque);
void nj_plan_free(struct nj_plan *p);

/* Called from the fetch callback: a run of (length, flags) pairs for ctx,
 * the first starting at offset.  entries holds 2 * n uint32_t values. */
void nj_plan_add_extents(struct nj_plan *p, enum nj_plan_context ctx,
                         uint64_t offset, const uint32_t *entries, size_t n);

/* The next classified range in disk order (SKIP ranges included, adjacent
 * ranges of one kind merged up to max_len).  1 with *r set, 0 at the end,
 * -1 on error. */
int nj_plan_next(struct nj_plan *p, uint64_t max_len, struct nj_plan_range *r);

/*
 * Like nj_plan_next, but DATA ranges are widened to `align` boundaries
 * (a power of two; the disk end excepted), taking the block-sized edges of
 * neighbouring ZERO or SKIP ranges, which are trimmed to match.  Reading
 * whole blocks makes chunk boundaries depend on the data, not on how
 * finely a server reports allocation, so identical disks chunk and dedup
 * identically.  Ranges still tile the disk in order without overlap.
 */
int nj_plan_next_aligned(struct nj_plan *p, uint64_t align,
                         struct nj_plan_range *r);

/* Largest range one fetch asks for. */
#define NJ_PLAN_FETCH_MAX (1ull << 31)

#endif
