/*
 * nj-view.c: the merged view of one disk at one backup.
 *
 * Layers are the chain's indexes, layer 0 the newest.  Each layer is read
 * through a streaming cursor; the view holds one current entry per layer,
 * so memory is O(chain length), independent of the disk size and of the
 * number of entries.
 *
 * At position pos the newest layer whose current entry contains pos wins,
 * up to the end of that entry or the start of the next entry of any newer
 * layer, whichever comes first.  Positions no layer covers (possible only
 * beyond an older, smaller disk size) read as zero.  Every byte is thus
 * taken from exactly one backup, the newest that captured it, and the
 * segments tile [0, size) in order.  Adjacent zero segments are merged.
 *
 * Checks, all made when the view opens (nj_view_open): the chain's links
 * (nj_catalog_chain: parent present, same domain, not a copy, older), and
 * every layer's whole index (nj_manifest_index_open: digest, entry count,
 * coverage, order, bounds, a full's coverage of its disk).  While it runs
 * the view also refuses a gap below the size of the full that ends the
 * chain, and at the end reads every layer to its last entry so that a
 * file changed after the open is caught before the caller calls the view
 * complete.
 */
#include "nj-catalog.h"
#include "nj-util.h"

#include <string.h>

struct layer {
    struct nj_index_reader *r;
    const char *id; /* borrowed: the backup, for messages */
    struct nj_extent cur;
    bool have; /* cur is valid; false once the layer is exhausted */
};

struct nj_view {
    struct layer *layers;
    size_t n;
    uint64_t size, pos;
    bool gaps;                /* report uncovered ranges (as zero) */
    uint64_t base_end;        /* [0, base_end) must be covered: the size
                                 of the full at the end of the chain */
    bool drained;             /* every layer read to its end */
    struct nj_extent pending; /* a zero segment being merged */
    bool have_pending;
};

#define KIND_GAP 99 /* internal: a range no layer covers */

static void view_close_layers(struct nj_view *v)
{
    for (size_t i = 0; i < v->n; i++)
        nj_index_reader_free(v->layers[i].r);
}

void nj_view_free(struct nj_view *v)
{
    if (!v)
        return;
    view_close_layers(v);
    free(v->layers);
    free(v);
}

static int layer_advance(struct layer *l, uint64_t pos)
{
    while (l->have && l->cur.offset + l->cur.length <= pos) {
        int r = nj_index_reader_next(l->r, &l->cur);
        if (r < 0)
            return -1;
        l->have = r == 1;
    }
    return 0;
}

struct nj_index_reader *nj_manifest_index_open(struct nj_store *s,
                                               const struct nj_manifest *m,
                                               const struct nj_manifest_disk *d)
{
    NJ_CLEANUP_FREE char *name = nj_asprintf("%s/%s", m->id, d->index);
    struct nj_stream *in = nj_store_backup_open(s, m->id, d->index);
    if (!in)
        return NULL;
    struct nj_index_expect x = {
        .digest = &d->index_digest,
        .disk_size = d->size,
        .entries = d->entries,
        .covered = d->covered,
        .full = d->full,
    };
    return nj_index_reader_open_checked(in, name, &x);
}

struct nj_view *nj_view_open_layers(struct nj_store *s,
                                    const struct nj_manifest *const *chain,
                                    size_t n, const char *target,
                                    uint64_t size, bool gaps)
{
    struct nj_view *v = nj_calloc(1, sizeof *v);
    v->layers = nj_calloc(n ? n : 1, sizeof *v->layers);
    v->size = size;
    v->gaps = gaps;
    for (size_t i = 0; i < n; i++) {
        const struct nj_manifest_disk *d = nj_manifest_disk(chain[i], target);
        if (!d) {
            nj_error("backup '%s' has no disk '%s'", chain[i]->id, target);
            goto fail;
        }
        struct nj_index_reader *r = nj_manifest_index_open(s, chain[i], d);
        if (!r)
            goto fail;
        v->layers[i].r = r;
        v->layers[i].id = chain[i]->id;
        v->n = i + 1;
        if (i + 1 == n && gaps && d->full)
            v->base_end = NJ_MIN(size, d->size);
        v->layers[i].have = true;
        v->layers[i].cur.length = 0; /* forces the first read */
        if (layer_advance(&v->layers[i], 0) < 0)
            goto fail;
    }
    return v;
fail:
    nj_view_free(v);
    return NULL;
}

struct nj_view *nj_view_open(struct nj_store *s, const struct nj_catalog *c,
                             const struct nj_manifest *m, const char *target)
{
    const struct nj_manifest **chain = NULL;
    int n = nj_catalog_chain(c, m, target, &chain);
    if (n < 0)
        return NULL;
    struct nj_view *v = nj_view_open_layers(
        s, chain, (size_t)n, target, nj_manifest_disk(m, target)->size, true);
    free(chain);
    return v;
}

uint64_t nj_view_size(const struct nj_view *v)
{
    return v->size;
}

/* The next raw segment at v->pos (zero segments not merged). */
static int view_step(struct nj_view *v, struct nj_extent *e)
{
    uint64_t pos = v->pos;
    uint64_t limit = v->size;
    for (size_t i = 0; i < v->n; i++) {
        struct layer *l = &v->layers[i];
        if (layer_advance(l, pos) < 0)
            return -1;
        if (!l->have)
            continue;
        if (l->cur.offset <= pos) {
            /* Layer i wins from pos, until its entry ends or a newer
             * layer's next entry starts (limit already holds those). */
            uint64_t end = NJ_MIN(limit, l->cur.offset + l->cur.length);
            *e = l->cur;
            e->offset = pos;
            e->length = end - pos;
            if (e->kind == NJ_EXTENT_DATA)
                e->chunk_offset += pos - l->cur.offset;
            return 1;
        }
        limit = NJ_MIN(limit, l->cur.offset);
    }
    if (pos < v->base_end) {
        /* The full at the end of the chain was checked to cover this when
         * it was opened: its file changed since. */
        nj_error("backup '%s': range %llu-%llu is covered by no backup of "
                 "the chain", v->layers[v->n - 1].id, (unsigned long long)pos,
                 (unsigned long long)NJ_MIN(limit, v->base_end));
        return -1;
    }
    memset(e, 0, sizeof *e);
    e->offset = pos;
    e->length = limit - pos;
    e->kind = v->gaps ? NJ_EXTENT_ZERO : (enum nj_extent_kind)KIND_GAP;
    return 1;
}

int nj_view_next(struct nj_view *v, struct nj_extent *e)
{
    while (v->pos < v->size) {
        struct nj_extent s;
        if (view_step(v, &s) < 0)
            return -1;
        v->pos += s.length;
        if ((int)s.kind == KIND_GAP) {
            /* Not covered: ends a pending zero run, emits nothing. */
            if (v->have_pending) {
                *e = v->pending;
                v->have_pending = false;
                return 1;
            }
            continue;
        }
        if (s.kind == NJ_EXTENT_ZERO) {
            if (v->have_pending)
                v->pending.length += s.length;
            else {
                v->pending = s;
                v->have_pending = true;
            }
            continue;
        }
        if (v->have_pending) {
            *e = v->pending;
            v->pending = s;
            v->have_pending = false;
            /* s is returned next time: rewind pos to its start. */
            v->pos -= s.length;
            return 1;
        }
        *e = s;
        return 1;
    }
    if (v->have_pending) {
        *e = v->pending;
        v->have_pending = false;
        return 1;
    }
    /* Read every layer to its end, so that each index's end checks (its
     * lengths add up, it hashes to what was checked at the open) run
     * before the caller takes the view as complete. */
    for (size_t i = 0; !v->drained && i < v->n; i++)
        if (layer_advance(&v->layers[i], UINT64_MAX) < 0)
            return -1;
    v->drained = true;
    return 0;
}
