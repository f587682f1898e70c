/*
 * nj-prune.c: remove a backup, merging it into its children first.
 *
 * For a child C of the removed backup X, and each disk of C:
 *  - a full disk of C keeps its index (a hard link of the same file);
 *  - an incremental disk gets a new index: the merged view of [C, X],
 *    i.e. C's entries, and X's entries for every range C does not cover.
 *    When the disk is full in X, X ends its chain, so a range neither
 *    covers (beyond X's size, on a disk that grew) restores as zeroes:
 *    the merge writes it as a zero entry and the disk is full in C'.
 *    Otherwise such ranges stay uncovered and X's parent shows through,
 *    as it did.
 * C' has X's parent; when no disk of C' depends on a parent any more it
 * becomes a full.  C' keeps C's flags (protected).  C' is built in staging
 * and swapped with C in one atomic exchange; only when every child is
 * replaced is X removed.
 *
 * A crash before an exchange leaves C and X untouched (the staging
 * directory is cleaned like any other); after it, C' and X both exist and
 * C' restores exactly what C did (it no longer needs X); a crash during
 * X's removal leaves X either whole or gone.  Restore points never change.
 *
 * Refusals, made before anything changes (check_children): a child of
 * another domain, a child whose link or chain is broken (a cycle, a parent
 * newer than its child, a missing full), and any protection flag that
 * cannot be read (X's or a child's) stop the removal with one error.
 */
#include "nj-io.h"
#include "nj-prune.h"
#include "nj-util.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define PROTECTED_FLAG "protected"

static int merge_disk(struct nj_store *s, const char *sid,
                      const struct nj_manifest *child,
                      const struct nj_manifest *x,
                      struct nj_manifest_disk *out)
{
    const struct nj_manifest_disk *cd = nj_manifest_disk(child, out->target);
    const struct nj_manifest_disk *xd = nj_manifest_disk(x, out->target);
    if (!xd)
        return nj_error("backup '%s' disk '%s' is incremental but its parent "
                        "'%s' lacks the disk", child->id, out->target, x->id);
    const struct nj_manifest *layers[2] = { child, x };
    struct nj_view *v = nj_view_open_layers(s, layers, 2, out->target,
                                            cd->size, xd->full);
    if (!v)
        return -1;
    struct nj_index_writer *w =
        nj_index_writer_new(nj_store_staging_open(s, sid, out->index),
                            cd->size);
    int ret = w ? 0 : -1;
    struct nj_extent e;
    int r = 0;
    while (ret == 0 && (r = nj_view_next(v, &e)) == 1)
        ret = nj_index_writer_append(w, &e);
    if (r < 0)
        ret = -1;
    if (ret == 0)
        ret = nj_index_writer_finish(w, &out->index_digest, &out->entries,
                                     &out->covered);
    nj_index_writer_free(w);
    nj_view_free(v);
    if (ret < 0)
        return nj_error_prefix("merge '%s' into '%s' disk '%s'", x->id,
                               child->id, out->target);
    /* Full when x's disk was full (then the view filled every gap). */
    out->full = xd->full && out->covered == out->size;
    return 0;
}

static char *dup_or_null(const char *s)
{
    return s ? nj_strdup(s) : NULL;
}

/* Build C' in staging and swap it in. */
static int merge_child(struct nj_store *s, const struct nj_manifest *child,
                       const struct nj_manifest *x, const char *lock_key)
{
    char sid[96];
    snprintf(sid, sizeof sid, "merge-%s", child->id);
    nj_store_staging_remove(s, sid);
    NJ_CLEANUP_FREE char *owner =
        nj_backup_owner_json(lock_key, child->domain_name);
    if (nj_store_staging_create(s, sid, owner) < 0)
        return -1;

    struct nj_manifest m = *child;
    m.disks = nj_calloc(child->ndisks, sizeof *m.disks);
    m.ndisks = child->ndisks;
    m.parent = dup_or_null(x->parent);
    int ret = 0;
    bool needs_parent = false;
    for (size_t i = 0; i < child->ndisks && ret == 0; i++) {
        m.disks[i] = child->disks[i];
        if (child->disks[i].full) {
            /* Unchanged: the same file under the new directory. */
            ret = nj_store_staging_link(s, sid, child->disks[i].index,
                                        child->id, child->disks[i].index);
        } else {
            ret = merge_disk(s, sid, child, x, &m.disks[i]);
            needs_parent |= !m.disks[i].full;
        }
    }
    if (ret == 0) {
        if (!needs_parent) {
            free(m.parent);
            m.parent = NULL;
            m.level = NJ_LEVEL_FULL;
        } else if (!m.parent) {
            ret = nj_error("backup '%s' would depend on a parent it does not "
                           "have", child->id);
        } else if (m.level == NJ_LEVEL_DIFF && x->level != NJ_LEVEL_FULL) {
            m.level = NJ_LEVEL_INC;
        }
    }
    int prot = ret == 0 ? nj_prune_is_protected(s, child->id) : 0;
    if (prot < 0)
        ret = -1;
    else if (prot == 1)
        ret = nj_store_staging_put(s, sid, PROTECTED_FLAG, "", 0);
    if (ret == 0) {
        NJ_CLEANUP_FREE char *text = nj_manifest_to_json(&m);
        ret = nj_store_staging_put(s, sid, NJ_MANIFEST_NAME, text,
                                   strlen(text));
    }
    if (ret == 0)
        ret = nj_store_backup_replace(s, sid, child->id);
    if (ret < 0)
        nj_store_staging_remove(s, sid);
    free(m.parent);
    free(m.disks);
    return ret;
}

/*
 * Before anything changes: x may be merged into its children only when
 * every child is of x's domain, its link to x is sound (same domain, not
 * newer than x: no cycle), its protection can be read, and the chain of
 * each of its incremental disks resolves through x to a full.  Otherwise
 * the merge would mix domains or chains: refuse, with the store as it was.
 */
static int check_children(const struct nj_catalog *c,
                          const struct nj_manifest *x, struct nj_store *s)
{
    for (size_t i = 0; i < nj_catalog_count(c); i++) {
        const struct nj_manifest *m = nj_catalog_get(c, i);
        if (!m->parent || strcmp(m->parent, x->id) != 0)
            continue;
        const struct nj_manifest *p = NULL;
        if (strcmp(m->domain_uuid, x->domain_uuid) != 0)
            return nj_error("not removing '%s': backup '%s' of another "
                            "domain (%s) names it as its parent; refusing "
                            "to merge across domains", x->id, m->id,
                            m->domain_uuid);
        if (nj_catalog_parent(c, m, &p) < 0 || p != x)
            return nj_error_prefix("not removing '%s': refusing to merge "
                                   "into a broken chain", x->id);
        for (size_t k = 0; k < m->ndisks; k++) {
            const struct nj_manifest **chain = NULL;
            if (m->disks[k].full)
                continue;
            if (nj_catalog_chain(c, m, m->disks[k].target, &chain) < 0)
                return nj_error_prefix("not removing '%s': refusing to merge "
                                       "into a broken chain", x->id);
            free(chain);
        }
        if (nj_prune_is_protected(s, m->id) < 0)
            return nj_error_prefix("not removing '%s'", x->id);
    }
    return 0;
}

int nj_prune_remove(struct nj_store *s, const char *id)
{
    struct nj_catalog *c = nj_catalog_open(s);
    if (!c)
        return -1;
    const struct nj_manifest *x = nj_catalog_find(c, id);
    int ret = 0;
    int prot = x ? nj_prune_is_protected(s, id) : 0;
    if (!x) {
        ret = nj_error("no backup '%s' in the store", id);
    } else if (prot < 0) {
        ret = nj_error_prefix("not removing '%s'", id);
    } else if (prot == 1) {
        ret = nj_error("backup '%s' is protected", id);
    } else if (check_children(c, x, s) < 0) {
        ret = -1;
    } else {
        NJ_CLEANUP_FREE char *key = nj_backup_lock_key(x->domain_uuid);
        /* On an object store a prune registers like a backup, so that gc
         * never marks while backups vanish under it (store-obj.c). */
        char sid[160];
        snprintf(sid, sizeof sid, "prune-%s", id);
        bool reg = nj_store_gc_exclusive(s);
        if (reg) {
            NJ_CLEANUP_FREE char *owner =
                nj_backup_owner_json(key, x->domain_name);
            nj_store_staging_remove(s, sid);
            ret = nj_store_staging_create(s, sid, owner);
        }
        for (size_t i = 0; i < nj_catalog_count(c) && ret == 0; i++) {
            const struct nj_manifest *m = nj_catalog_get(c, i);
            if (m->parent && strcmp(m->parent, id) == 0)
                ret = merge_child(s, m, x, key);
        }
        if (ret == 0)
            ret = nj_store_backup_remove(s, id);
        if (reg)
            nj_store_staging_remove(s, sid);
    }
    nj_catalog_free(c);
    return ret;
}

int nj_prune_protect(struct nj_store *s, const char *id, bool on)
{
    return nj_store_backup_set_flag(s, id, PROTECTED_FLAG, on);
}

int nj_prune_is_protected(struct nj_store *s, const char *id)
{
    int r = nj_store_backup_has_flag(s, id, PROTECTED_FLAG);
    if (r < 0)
        return nj_error_prefix("cannot tell whether backup '%s' is "
                               "protected", id);
    return r == 1;
}

static int cmp_decision(const void *a, const void *b)
{
    const struct nj_prune_decision *x = a, *y = b;
    int c = strcmp(x->uuid, y->uuid);
    if (c)
        return c;
    return x->time > y->time ? -1 : x->time < y->time;
}

int nj_prune_plan(struct nj_store *s, const char *domain,
                  const struct nj_keep_rules *r,
                  struct nj_prune_decision **out, size_t *n)
{
    if (nj_keep_rules_empty(r))
        return nj_error("no retention rule given (--keep-last, "
                        "--keep-daily, ...): refusing to remove everything");
    struct nj_catalog *c = nj_catalog_open(s);
    if (!c)
        return -1;
    size_t cnt = 0;
    struct nj_prune_decision *d =
        nj_calloc(nj_catalog_count(c) + 1, sizeof *d);
    for (size_t i = 0; i < nj_catalog_count(c); i++) {
        const struct nj_manifest *m = nj_catalog_get(c, i);
        if (domain && !nj_manifest_matches_domain(m, domain))
            continue;
        d[cnt].id = nj_strdup(m->id);
        d[cnt].domain = nj_strdup(m->domain_name);
        d[cnt].uuid = nj_strdup(m->domain_uuid);
        /* Microseconds decide the order; seconds are what periods see. */
        d[cnt].time = m->finished_us;
        d[cnt].level = m->level;
        cnt++;
    }
    nj_catalog_free(c);
    if (cnt)
        qsort(d, cnt, sizeof *d, cmp_decision);
    for (size_t i = 0; i < cnt;) {
        size_t j = i;
        while (j < cnt && strcmp(d[j].uuid, d[i].uuid) == 0)
            j++;
        struct nj_retention_item *it = nj_calloc(j - i, sizeof *it);
        for (size_t k = i; k < j; k++) {
            it[k - i].time = d[k].time / 1000000;
            /* Fail closed: a protection that cannot be read protects. */
            int prot = nj_prune_is_protected(s, d[k].id);
            it[k - i].protect = prot != 0;
            if (prot < 0)
                d[k].error = nj_strdup(nj_error_get());
        }
        nj_retention_apply(it, j - i, r);
        for (size_t k = i; k < j; k++) {
            d[k].mark = it[k - i].mark;
            memcpy(d[k].reason, it[k - i].reason, sizeof d[k].reason);
            if (d[k].error)
                snprintf(d[k].reason, sizeof d[k].reason,
                         "protection unreadable");
            d[k].time /= 1000000;
        }
        free(it);
        i = j;
    }
    *out = d;
    *n = cnt;
    return 0;
}

int nj_prune_apply(struct nj_store *s, struct nj_prune_decision *d, size_t n)
{
    int ret = 0;
    for (size_t i = 0; i < n;) {
        size_t j = i;
        while (j < n && strcmp(d[j].uuid, d[i].uuid) == 0)
            j++;
        bool any = false;
        for (size_t k = i; k < j; k++)
            any |= d[k].mark == NJ_MARK_REMOVE;
        int fd = any ? nj_backup_lock_domain(s, d[i].uuid, d[i].domain) : -1;
        if (any && fd < 0) {
            for (size_t k = i; k < j; k++)
                if (d[k].mark == NJ_MARK_REMOVE)
                    d[k].error = nj_strdup(nj_error_get());
            ret = -1;
        }
        /* Oldest first: each removal merges into children that stay. */
        for (size_t k = j; fd >= 0 && k-- > i;) {
            if (d[k].mark != NJ_MARK_REMOVE)
                continue;
            if (nj_prune_remove(s, d[k].id) < 0) {
                d[k].error = nj_strdup(nj_error_get());
                ret = -1;
            } else {
                d[k].removed = true;
            }
        }
        nj_store_unlock_domain(fd);
        i = j;
    }
    return ret;
}

void nj_prune_plan_free(struct nj_prune_decision *d, size_t n)
{
    if (!d)
        return;
    for (size_t i = 0; i < n; i++) {
        free(d[i].id);
        free(d[i].domain);
        free(d[i].uuid);
        free(d[i].error);
    }
    free(d);
}
