/*
 * nj-plan.c: merge base:allocation and a dirty bitmap into a read plan.
 * See nj-plan.h for the rules.
 *
 * Each context has a queue of extents covering [q.start, q.end) with no
 * gap; the sweep position pos never goes backwards.  When a queue no
 * longer covers pos, one fetch from pos refills every empty queue.
 */
#include "nj-plan.h"
#include "nj-util.h"

#include <string.h>

struct ext {
    uint64_t end;   /* exclusive end */
    uint32_t flags;
};
NJ_VECTOR(ext_vec, struct ext);

struct queue {
    struct ext_vec v;
    size_t head;
    uint64_t start; /* where v.ptr[head] begins */
    bool fed;       /* got extents in the current fetch */
};

struct nj_plan {
    uint64_t size, pos;
    bool incremental;
    nj_plan_fetch_fn fetch;
    void *opaque;
    struct queue q[2];
    int stalls;
};

struct nj_plan *nj_plan_new(uint64_t size, bool incremental,
                            nj_plan_fetch_fn fetch, void *opaque)
{
    struct nj_plan *p = nj_calloc(1, sizeof *p);
    p->size = size;
    p->incremental = incremental;
    p->fetch = fetch;
    p->opaque = opaque;
    return p;
}

void nj_plan_free(struct nj_plan *p)
{
    if (!p)
        return;
    ext_vec_reset(&p->q[0].v);
    ext_vec_reset(&p->q[1].v);
    free(p);
}

static bool queue_covers(const struct queue *q, uint64_t pos)
{
    return q->head < q->v.len && q->start <= pos &&
           pos < q->v.ptr[q->v.len - 1].end;
}

void nj_plan_add_extents(struct nj_plan *p, enum nj_plan_context ctx,
                         uint64_t offset, const uint32_t *entries, size_t n)
{
    if ((unsigned)ctx > 1)
        return;
    struct queue *q = &p->q[ctx];
    /* Extents must continue the queue or start afresh at pos. */
    uint64_t at = offset;
    if (q->head < q->v.len) {
        if (offset != q->v.ptr[q->v.len - 1].end)
            return; /* out of sequence: ignored, a later fetch repairs */
    } else {
        q->v.len = q->head = 0;
        q->start = offset;
    }
    for (size_t i = 0; i < n && at < p->size; i++) {
        uint64_t len = entries[2 * i];
        if (len == 0)
            continue;
        uint64_t end = NJ_MIN(at + len, p->size); /* clip overlong */
        ext_vec_append(&q->v, (struct ext){ end, entries[2 * i + 1] });
        at = end;
    }
    q->fed = true;
}

/* Drop extents that end at or before pos. */
static void queue_advance(struct queue *q, uint64_t pos)
{
    while (q->head < q->v.len && q->v.ptr[q->head].end <= pos) {
        q->start = q->v.ptr[q->head].end;
        q->head++;
    }
}

static int refill(struct nj_plan *p)
{
    int nctx = p->incremental ? 2 : 1;
    bool need = false;
    for (int i = 0; i < nctx; i++) {
        queue_advance(&p->q[i], p->pos);
        if (!queue_covers(&p->q[i], p->pos)) {
            /* Restart the queue at pos: what it held is behind us. */
            p->q[i].v.len = p->q[i].head = 0;
            need = true;
        }
        p->q[i].fed = false;
    }
    if (!need)
        return 0;
    uint64_t len = NJ_MIN(p->size - p->pos, NJ_PLAN_FETCH_MAX);
    if (p->fetch(p->opaque, p, p->pos, len) < 0)
        return -1;
    for (int i = 0; i < nctx; i++) {
        if (queue_covers(&p->q[i], p->pos))
            continue;
        if (++p->stalls >= 3)
            return nj_error("block status for %s made no progress at offset "
                            "%llu", i == NJ_CTX_ALLOC ? "base:allocation"
                                                      : "the dirty bitmap",
                            (unsigned long long)p->pos);
        return 0; /* ask again */
    }
    p->stalls = 0;
    return 0;
}

static enum nj_plan_kind classify(const struct nj_plan *p, uint32_t alloc,
                                  uint32_t dirty)
{
    if (p->incremental && !(dirty & NJ_STATE_DIRTY))
        return NJ_PLAN_SKIP;
    return alloc & NJ_STATE_ZERO ? NJ_PLAN_ZERO : NJ_PLAN_DATA;
}

int nj_plan_next(struct nj_plan *p, uint64_t max_len, struct nj_plan_range *r)
{
    if (max_len == 0)
        max_len = UINT64_MAX;
    bool have = false;
    int nctx = p->incremental ? 2 : 1;
    while (p->pos < p->size) {
        bool covered = true;
        for (int i = 0; i < nctx; i++) {
            queue_advance(&p->q[i], p->pos);
            covered &= queue_covers(&p->q[i], p->pos);
        }
        if (!covered) {
            if (refill(p) < 0)
                return -1;
            continue;
        }
        const struct ext *a = &p->q[NJ_CTX_ALLOC].v.ptr[p->q[NJ_CTX_ALLOC].head];
        uint64_t end = a->end;
        uint32_t dflags = 0;
        if (p->incremental) {
            const struct ext *d = &p->q[NJ_CTX_DIRTY].v.ptr[p->q[NJ_CTX_DIRTY].head];
            end = NJ_MIN(end, d->end);
            dflags = d->flags;
        }
        enum nj_plan_kind k = classify(p, a->flags, dflags);
        if (have && (k != r->kind || r->length >= max_len))
            return 1;
        if (!have) {
            r->offset = p->pos;
            r->length = 0;
            r->kind = k;
            have = true;
        }
        uint64_t take = NJ_MIN(end - p->pos, max_len - r->length);
        r->length += take;
        p->pos += take;
    }
    return have ? 1 : 0;
}
