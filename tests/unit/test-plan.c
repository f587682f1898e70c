/*
 * test-plan: the extent planner against scripted block-status servers:
 * well-behaved, short replies, one extent per reply, overlong and
 * zero-length extents, a server that stops making progress, and the
 * full/incremental classification rules (zero with or without hole is
 * zero; dirty-and-zero is recorded as zero; clean is skipped).  Results
 * are compared with a per-byte model of the same maps.
 */
#include "nj-plan.h"
#include "nj-test.h"
#include "nj-util.h"

#include <string.h>

#define UNIT 4096

/* A disk map described per UNIT: allocation flags and dirty bits. */
struct fake {
    uint64_t size;
    size_t nunits;
    uint32_t *alloc;
    uint32_t *dirty;
    int mode;      /* behaviour, see below */
    int calls;
    uint64_t rng;
};

enum { WELL, SHORT, ONE, OVERLONG, ZEROLEN, STALL, DIRTY_STALL };

/* Emit runs of equal flags from off, at most max_runs of them. */
static void emit(struct nj_plan *p, struct fake *f, enum nj_plan_context ctx,
                 const uint32_t *map, uint64_t off, uint64_t len,
                 size_t max_runs, bool overlong, bool zerolen)
{
    uint32_t ents[2 * 64];
    size_t n = 0;
    uint64_t pos = off, end = NJ_MIN(off + len, f->size);
    while (pos < end && n < NJ_MIN(max_runs, (size_t)64)) {
        if (zerolen && n + 1 < 64 && (nj_test_rand(&f->rng) & 1)) {
            ents[2 * n] = 0;
            ents[2 * n + 1] = 7;
            n++;
            continue;
        }
        uint32_t flags = map[pos / UNIT];
        uint64_t e = pos;
        while (e < end && map[e / UNIT] == flags)
            e = (e / UNIT + 1) * UNIT;
        e = NJ_MIN(e, end);
        ents[2 * n] = (uint32_t)(e - pos);
        ents[2 * n + 1] = flags;
        n++;
        pos = e;
    }
    if (overlong && n > 0 && pos == end)
        ents[2 * (n - 1)] += 10 * UNIT; /* past the request (and the disk) */
    nj_plan_add_extents(p, ctx, off, ents, n);
}

static int fetch(void *opaque, struct nj_plan *p, uint64_t off, uint64_t len)
{
    struct fake *f = opaque;
    f->calls++;
    if (f->calls > 100000)
        return nj_error("test: too many fetches");
    size_t runs = 64;
    switch (f->mode) {
    case SHORT: runs = 1 + nj_test_rand_below(&f->rng, 3); break;
    case ONE: runs = 1; break;
    case STALL:
        if (off >= f->size / 2)
            return 0; /* answers with nothing */
        runs = 4;
        break;
    case DIRTY_STALL: runs = 4; break;
    default: break;
    }
    emit(p, f, NJ_CTX_ALLOC, f->alloc, off, len, runs, f->mode == OVERLONG,
         f->mode == ZEROLEN);
    if (f->mode == DIRTY_STALL && off >= f->size / 2)
        return 0;
    if (f->dirty)
        emit(p, f, NJ_CTX_DIRTY, f->dirty, off, len,
             f->mode == SHORT ? runs + 1 : runs, f->mode == OVERLONG,
             f->mode == ZEROLEN);
    return 0;
}

static enum nj_plan_kind model(const struct fake *f, uint64_t unit)
{
    if (f->dirty && !(f->dirty[unit] & NJ_STATE_DIRTY))
        return NJ_PLAN_SKIP;
    return f->alloc[unit] & NJ_STATE_ZERO ? NJ_PLAN_ZERO : NJ_PLAN_DATA;
}

static int run(struct fake *f, bool inc, uint64_t max_len)
{
    struct nj_plan *p = nj_plan_new(f->size, inc, fetch, f);
    struct nj_plan_range r;
    uint64_t pos = 0;
    int rc;
    enum nj_plan_kind prev = NJ_PLAN_SKIP;
    bool first = true;
    while ((rc = nj_plan_next(p, max_len, &r)) == 1) {
        CHECK(r.offset == pos);
        CHECK(r.length > 0);
        CHECK(max_len == 0 || r.length <= max_len);
        for (uint64_t u = r.offset; u < r.offset + r.length; u += UNIT)
            if (model(f, u / UNIT) != r.kind) {
                CHECK(model(f, u / UNIT) == r.kind);
                break;
            }
        /* Adjacent ranges of one kind are merged (unless capped). */
        if (!first && max_len == 0)
            CHECK(prev != r.kind);
        prev = r.kind;
        first = false;
        pos += r.length;
    }
    nj_plan_free(p);
    if (rc == 0)
        CHECK(pos == f->size);
    return rc;
}

/* The aligned planner: tiles the disk, DATA edges on the alignment (or
 * the disk end), covers every byte the model calls DATA, and ZERO/SKIP
 * output only where the model says so. */
static void run_aligned(struct fake *f, bool inc, uint64_t align)
{
    struct nj_plan *p = nj_plan_new(f->size, inc, fetch, f);
    struct nj_plan_range r;
    uint64_t pos = 0;
    int rc;
    while ((rc = nj_plan_next_aligned(p, align, &r)) == 1) {
        CHECK(r.offset == pos && r.length > 0);
        if (r.kind == NJ_PLAN_DATA) {
            CHECK(r.offset % align == 0);
            CHECK((r.offset + r.length) % align == 0 ||
                  r.offset + r.length == f->size);
        }
        for (uint64_t u = r.offset; u < r.offset + r.length; u += UNIT) {
            enum nj_plan_kind m = model(f, u / UNIT);
            if (r.kind != NJ_PLAN_DATA && m != r.kind) {
                CHECK(m == r.kind);
                break;
            }
        }
        pos += r.length;
    }
    CHECK(rc == 0);
    CHECK(pos == f->size);
    nj_plan_free(p);
}

static void make_maps(struct fake *f, uint64_t seed, bool with_dirty)
{
    f->rng = seed;
    f->nunits = (size_t)((f->size + UNIT - 1) / UNIT);
    f->alloc = nj_calloc(f->nunits, sizeof *f->alloc);
    f->dirty = with_dirty ? nj_calloc(f->nunits, sizeof *f->dirty) : NULL;
    static const uint32_t kinds[] = { 0, NJ_STATE_ZERO,
                                      NJ_STATE_ZERO | NJ_STATE_HOLE,
                                      NJ_STATE_HOLE /* hole, not zero: data */ };
    for (size_t i = 0; i < f->nunits;) {
        size_t run = 1 + nj_test_rand_below(&f->rng, 20);
        uint32_t a = kinds[nj_test_rand_below(&f->rng, 4)];
        for (size_t k = 0; k < run && i + k < f->nunits; k++)
            f->alloc[i + k] = a;
        i += run;
    }
    if (with_dirty)
        for (size_t i = 0; i < f->nunits;) {
            size_t run = 1 + nj_test_rand_below(&f->rng, 30);
            uint32_t d = (uint32_t)nj_test_rand_below(&f->rng, 2);
            for (size_t k = 0; k < run && i + k < f->nunits; k++)
                f->dirty[i + k] = d;
            i += run;
        }
}

int main(void)
{
    static const int modes[] = { WELL, SHORT, ONE, OVERLONG, ZEROLEN };
    for (uint64_t seed = 1; seed <= 20; seed++)
        for (size_t m = 0; m < NJ_ARRAY_SIZE(modes); m++)
            for (int inc = 0; inc < 2; inc++) {
                struct fake f = { .size = 1000 * UNIT + (seed * 37) % UNIT,
                                  .mode = modes[m] };
                make_maps(&f, seed * 100 + m, inc);
                CHECK(run(&f, inc, 0) == 0);
                f.calls = 0;
                CHECK(run(&f, inc, 7 * UNIT) == 0);
                f.calls = 0;
                run_aligned(&f, inc, 4 * UNIT);
                f.calls = 0;
                run_aligned(&f, inc, 16 * UNIT);
                free(f.alloc);
                free(f.dirty);
            }

    /* A hole that is not reported zero is data; zero with or without
     * hole is zero. */
    {
        struct fake f = { .size = 4 * UNIT, .mode = WELL };
        f.alloc = (uint32_t[]){ NJ_STATE_HOLE, NJ_STATE_ZERO,
                                NJ_STATE_ZERO | NJ_STATE_HOLE, 0 };
        struct nj_plan *p = nj_plan_new(f.size, false, fetch, &f);
        struct nj_plan_range r;
        CHECK(nj_plan_next(p, 0, &r) == 1 && r.kind == NJ_PLAN_DATA &&
              r.length == UNIT);
        CHECK(nj_plan_next(p, 0, &r) == 1 && r.kind == NJ_PLAN_ZERO &&
              r.offset == UNIT && r.length == 2 * UNIT);
        CHECK(nj_plan_next(p, 0, &r) == 1 && r.kind == NJ_PLAN_DATA);
        CHECK(nj_plan_next(p, 0, &r) == 0);
        nj_plan_free(p);
    }
    /* Dirty and zero is recorded as zero, not skipped. */
    {
        struct fake f = { .size = 3 * UNIT, .mode = WELL };
        f.alloc = (uint32_t[]){ NJ_STATE_ZERO | NJ_STATE_HOLE, 0, 0 };
        f.dirty = (uint32_t[]){ 1, 0, 1 };
        struct nj_plan *p = nj_plan_new(f.size, true, fetch, &f);
        struct nj_plan_range r;
        CHECK(nj_plan_next(p, 0, &r) == 1 && r.kind == NJ_PLAN_ZERO);
        CHECK(nj_plan_next(p, 0, &r) == 1 && r.kind == NJ_PLAN_SKIP);
        CHECK(nj_plan_next(p, 0, &r) == 1 && r.kind == NJ_PLAN_DATA &&
              r.offset == 2 * UNIT);
        nj_plan_free(p);
    }
    /* A server that stops making progress is an error, not a loop. */
    for (int mode = STALL; mode <= DIRTY_STALL; mode++) {
        struct fake f = { .size = 200 * UNIT, .mode = mode };
        make_maps(&f, 99, true);
        int rc = run(&f, true, 0);
        CHECK(rc == -1);
        CHECK(strstr(nj_error_get(), "made no progress") != NULL);
        CHECK(f.calls < 1000);
        free(f.alloc);
        free(f.dirty);
    }
    return nj_test_done("test-plan");
}
