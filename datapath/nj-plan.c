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
NJ_VECTOR(range_vec, struct nj_plan_range);

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
    /* nj_plan_next_aligned state */
    struct range_vec out, pend;
    size_t out_head;
    uint64_t cursor;  /* end of what was taken from nj_plan_next */
    uint64_t out_end; /* end of what was pushed to out */
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
    range_vec_reset(&p->out);
    range_vec_reset(&p->pend);
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

static uint64_t align_down(uint64_t x, uint64_t a)
{
    return x & ~(a - 1);
}

static uint64_t align_up_clip(uint64_t x, uint64_t a, uint64_t size)
{
    uint64_t up = (x + a - 1) & ~(a - 1);
    return up < x || up > size ? size : up;
}

static void out_push(struct range_vec *v, uint64_t off, uint64_t len,
                     enum nj_plan_kind kind)
{
    if (len == 0)
        return;
    if (v->len) {
        struct nj_plan_range *l = &v->ptr[v->len - 1];
        if (l->kind == kind && l->offset + l->length == off) {
            l->length += len;
            return;
        }
    }
    range_vec_append(v, (struct nj_plan_range){ off, len, kind });
}

static void flush_pending(struct nj_plan *p)
{
    for (size_t i = 0; i < p->pend.len; i++)
        out_push(&p->out, p->pend.ptr[i].offset, p->pend.ptr[i].length,
                 p->pend.ptr[i].kind);
    p->pend.len = 0;
}

/*
 * Blocks are decided one at a time.  A non-DATA range emits at once the
 * whole blocks it covers; its tail in a partly covered block waits in
 * pend until that block is known: a DATA range arriving inside the block
 * takes the whole block (pend is dropped: those bytes are read instead),
 * and a range reaching past the block releases pend as it is.
 */
int nj_plan_next_aligned(struct nj_plan *p, uint64_t align,
                         struct nj_plan_range *r)
{
    while (p->out_head == p->out.len) {
        p->out.len = p->out_head = 0;
        struct nj_plan_range c;
        int rc = nj_plan_next(p, 0, &c);
        if (rc < 0)
            return -1;
        if (rc == 0) {
            flush_pending(p);
            if (p->out.len == 0)
                return 0;
            break;
        }
        uint64_t end = c.offset + c.length;
        uint64_t start = NJ_MAX(c.offset, p->cursor);
        if (end <= start)
            continue; /* swallowed by a widened DATA range */
        if (c.kind == NJ_PLAN_DATA) {
            uint64_t bs = align_down(start, align);
            if (p->pend.len && p->pend.ptr[0].offset >= bs)
                p->pend.len = 0; /* same block: read it */
            flush_pending(p);
            uint64_t e = align_up_clip(end, align, p->size);
            out_push(&p->out, NJ_MAX(bs, p->out_end), e - NJ_MAX(bs, p->out_end),
                     NJ_PLAN_DATA);
            p->out_end = p->cursor = e;
            continue;
        }
        if (p->pend.len &&
            end > align_up_clip(p->pend.ptr[0].offset + 1, align, p->size))
            flush_pending(p); /* the pending block had no DATA */
        uint64_t whole_end = NJ_MAX(align_down(end, align), start);
        if (end == p->size)
            whole_end = end;
        if (p->pend.len == 0) {
            out_push(&p->out, start, whole_end - start, c.kind);
            if (whole_end > start)
                p->out_end = whole_end;
            start = whole_end;
        }
        if (end > start)
            range_vec_append(&p->pend, (struct nj_plan_range){
                start, end - start, c.kind });
        p->cursor = end;
        if (p->pend.len == 0)
            p->out_end = end;
    }
    *r = p->out.ptr[p->out_head++];
    return 1;
}
