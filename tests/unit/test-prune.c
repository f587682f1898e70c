/*
 * test-prune: removing backups with nj_prune_remove and by retention plans
 * (nj_prune_plan, nj_prune_apply), checked against truths kept beside
 * every point.
 *
 * Chains of two disks (full, incs, diffs, incs with a disk stored full;
 * random writes, zeroes over data, writes on the last byte; sizes not
 * multiples of 64 KiB) are built in several domains of one store.  Then
 * backups are removed one at a time: the full of a chain with children,
 * a middle inc, the full of a diff (two children merged), the newest,
 * several in a row, random subsets in random order, on disks that grew
 * or shrank between backups.  After every removal:
 *  - every remaining point of every domain restores exactly its truth,
 *    the removed ones are gone, every remaining point's chain resolves
 *    for each disk, and nj_verify finds the store sound;
 *  - each child of the removed backup kept its id and time; a child of a
 *    removed full became a full (level, no parent, each disk full with an
 *    index that tiles the whole disk); a child of another backup took its
 *    parent;
 *  - no chunk file was added, removed or rewritten (names, inodes and
 *    modification times are the same before and after), and the set of
 *    chunks the indexes reference stayed the same or shrank;
 *  - the backup's grandchildren are unchanged.
 * Protected backups are refused and stay protected when merged.  Plans
 * mark what the rules say, and applying one removes exactly what it
 * marks; a plan whose domain lock is taken removes nothing.
 */
#include "nj-test.h"
#include "nj-io.h"
#include "nj-prune.h"
#include "nj-restore.h"
#include "nj-util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define NDISKS 2

static const char *targets[NDISKS] = { "vda", "sdb" };

struct point {
    char *id;
    enum nj_level level;
    uint64_t size[NDISKS];
    unsigned char *truth[NDISKS];
    bool gone;
};

struct dom {
    char name[64], uuid[64];
    uint64_t size[NDISKS];
    unsigned char *cur[NDISKS];
    struct nj_test_dirty since_last[NDISKS], since_full[NDISKS];
    char *last_id, *last_full_id; /* for the next inc and diff */
    struct point *pts;
    size_t npts;
};

struct stats {
    unsigned removals, restores, verifies, chains, merged_children;
    unsigned became_full, refused;
    uint64_t refs_before, refs_after; /* with repeats, summed */
    uint64_t distinct_before, distinct_after;
    unsigned refs_grew; /* removals after which references (with repeats)
                           grew: a parent's entry split around a child's */
};

struct world {
    char *dir, *store, *scratch;
    struct nj_store *s;
    struct nj_codec *codec;
    struct dom **doms;
    size_t ndoms;
    uint64_t rng;
    struct stats st;
};

/* ---- building chains ---- */

static struct dom *dom_new(struct world *w, const char *name,
                           uint64_t size0, uint64_t size1)
{
    struct dom *d = nj_calloc(1, sizeof *d);
    snprintf(d->name, sizeof d->name, "%s", name);
    snprintf(d->uuid, sizeof d->uuid, "7a11e000-0000-4000-8000-%012zx",
             w->ndoms + 1);
    uint64_t sz[NDISKS] = { size0, size1 };
    for (int k = 0; k < NDISKS; k++) {
        d->size[k] = sz[k];
        d->cur[k] = nj_calloc(1, sz[k]);
        nj_test_dirty_init(&d->since_last[k], sz[k]);
        nj_test_dirty_init(&d->since_full[k], sz[k]);
        nj_test_mutate(&w->rng, d->cur[k], sz[k], &d->since_last[k], 10);
    }
    w->doms = nj_realloc_array(w->doms, w->ndoms + 1, sizeof *w->doms);
    w->doms[w->ndoms++] = d;
    return d;
}

static uint64_t rand_size(struct world *w)
{
    /* 512 KiB .. 2 MiB, plus an odd tail. */
    return (512u << 10) + nj_test_rand_below(&w->rng, 3) * (512u << 10) + 1 +
           nj_test_rand_below(&w->rng, 65535);
}

/* Random writes on every disk, marked dirty since the last backup and
 * since the last full. */
static void dom_mutate(struct world *w, struct dom *d, int nops)
{
    for (int k = 0; k < NDISKS; k++) {
        struct nj_test_dirty tmp;
        nj_test_dirty_init(&tmp, d->size[k]);
        nj_test_mutate(&w->rng, d->cur[k], d->size[k], &tmp, nops);
        for (size_t i = 0; i < tmp.nblocks; i++)
            if (tmp.bit[i])
                d->since_last[k].bit[i] = d->since_full[k].bit[i] = true;
        nj_test_dirty_free(&tmp);
    }
}

/* Change disk k's size: a grown tail reads as zero. */
static void dom_resize(struct dom *d, int k, uint64_t size)
{
    d->cur[k] = nj_realloc_array(d->cur[k], size, 1);
    if (size > d->size[k])
        memset(d->cur[k] + d->size[k], 0, size - d->size[k]);
    struct nj_test_dirty *maps[2] = { &d->since_last[k], &d->since_full[k] };
    for (int i = 0; i < 2; i++) {
        struct nj_test_dirty n;
        nj_test_dirty_init(&n, size);
        memcpy(n.bit, maps[i]->bit,
               NJ_MIN(n.nblocks, maps[i]->nblocks) * sizeof *n.bit);
        nj_test_dirty_free(maps[i]);
        *maps[i] = n;
    }
    d->size[k] = size;
}

/*
 * Commit a backup of d at level; full_mask names disks stored whole in an
 * inc or diff (the per-disk fallback).  Returns the new point.
 */
static struct point *dom_backup(struct world *w, struct dom *d,
                                enum nj_level level, unsigned full_mask)
{
    static const uint64_t grids[] = { 256u << 10, 1u << 20, 64u << 10 };
    const char *parent = level == NJ_LEVEL_INC    ? d->last_id
                         : level == NJ_LEVEL_DIFF ? d->last_full_id
                                                  : NULL;
    struct nj_backup_params bp = {
        .domain_name = d->name,
        .domain_uuid = d->uuid,
        .level = level,
        .parent = parent,
    };
    struct nj_backup *b = nj_backup_begin(w->s, &bp);
    REQUIRE(b);
    uint64_t grid = grids[nj_test_rand_below(&w->rng, NJ_ARRAY_SIZE(grids))];
    for (int k = 0; k < NDISKS; k++) {
        bool full = level == NJ_LEVEL_FULL || (full_mask & (1u << k));
        const struct nj_test_dirty *dm = level == NJ_LEVEL_DIFF
                                             ? &d->since_full[k]
                                             : &d->since_last[k];
        REQUIRE(nj_test_store_disk(b, w->codec, targets[k], d->cur[k],
                                   d->size[k], dm, full, grid) == 0);
    }
    REQUIRE(nj_backup_commit(b) == 0);
    d->pts = nj_realloc_array(d->pts, d->npts + 1, sizeof *d->pts);
    struct point *p = &d->pts[d->npts++];
    memset(p, 0, sizeof *p);
    p->id = nj_strdup(nj_backup_id(b));
    p->level = level;
    for (int k = 0; k < NDISKS; k++) {
        p->size[k] = d->size[k];
        p->truth[k] = nj_malloc(d->size[k]);
        memcpy(p->truth[k], d->cur[k], d->size[k]);
        nj_test_dirty_clear(&d->since_last[k]);
        if (level == NJ_LEVEL_FULL)
            nj_test_dirty_clear(&d->since_full[k]);
    }
    nj_backup_free(b);
    free(d->last_id);
    d->last_id = nj_strdup(p->id);
    if (level == NJ_LEVEL_FULL) {
        free(d->last_full_id);
        d->last_full_id = nj_strdup(p->id);
    }
    return p;
}

/* Backup then change the disks for the next one.  The point returned is
 * valid until the domain's next backup. */
static struct point *dom_step(struct world *w, struct dom *d,
                              enum nj_level level, unsigned full_mask)
{
    struct point *p = dom_backup(w, d, level, full_mask);
    dom_mutate(w, d, 1 + (int)nj_test_rand_below(&w->rng, 6));
    return p;
}

/* A random chain of n points: a full first, then incs, diffs and now and
 * then a new full or an inc with one disk stored whole. */
static void dom_random_chain(struct world *w, struct dom *d, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        enum nj_level l = NJ_LEVEL_FULL;
        unsigned mask = 0;
        if (i > 0) {
            uint64_t r = nj_test_rand_below(&w->rng, 100);
            l = r < 12 ? NJ_LEVEL_FULL : r < 35 ? NJ_LEVEL_DIFF : NJ_LEVEL_INC;
            if (l != NJ_LEVEL_FULL && nj_test_rand_below(&w->rng, 8) == 0)
                mask = 1u << nj_test_rand_below(&w->rng, NDISKS);
        }
        dom_step(w, d, l, mask);
    }
}

static struct point *dom_find(struct dom *d, const char *id)
{
    for (size_t i = 0; i < d->npts; i++)
        if (!strcmp(d->pts[i].id, id))
            return &d->pts[i];
    return NULL;
}

/* ---- checks ---- */

static void verify_store(struct world *w, const struct nj_catalog *c)
{
    char *report = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&report, &len);
    REQUIRE(f);
    struct nj_verify_opts vo = { .out = f };
    int r = nj_verify(w->s, c, &vo);
    fclose(f);
    if (r != 0)
        fprintf(stderr, "verify returned %d:\n%s", r, report);
    CHECK(r == 0);
    free(report);
    w->st.verifies++;
}

/* Every remaining point of every domain restores exactly, its chains
 * resolve, removed points are gone, and the store verifies. */
static void check_world(struct world *w, const char *when)
{
    struct nj_catalog *c = nj_catalog_open(w->s);
    REQUIRE(c);
    CHECK(nj_catalog_broken_count(c) == 0);
    size_t expect = 0;
    int before = nj_test_failures;
    for (size_t di = 0; di < w->ndoms; di++) {
        struct dom *d = w->doms[di];
        for (size_t i = 0; i < d->npts; i++) {
            struct point *p = &d->pts[i];
            const struct nj_manifest *m = nj_catalog_find(c, p->id);
            if (p->gone) {
                CHECK(m == NULL);
                continue;
            }
            expect++;
            CHECK(m != NULL);
            if (!m)
                continue;
            for (int k = 0; k < NDISKS; k++) {
                const struct nj_manifest **chain = NULL;
                int n = nj_catalog_chain(c, m, targets[k], &chain);
                CHECK(n > 0);
                if (n > 0) {
                    CHECK(nj_manifest_disk(chain[n - 1], targets[k])->full);
                    w->st.chains++;
                }
                free(chain);
                CHECK(nj_manifest_disk(m, targets[k])->size == p->size[k]);
                CHECK(nj_test_restore_compare(w->s, c, m, targets[k],
                                              p->truth[k], p->size[k],
                                              w->scratch) == 0);
                w->st.restores++;
            }
        }
    }
    CHECK(nj_catalog_count(c) == expect);
    verify_store(w, c);
    if (nj_test_failures != before)
        fprintf(stderr, "  (after: %s)\n", when);
    nj_catalog_free(c);
}

/* A chunk file as found in STORE/chunks. */
struct chunk_file {
    char name[72];
    ino_t ino;
    off_t size;
    struct timespec mtime;
};
NJ_VECTOR(chunk_vec, struct chunk_file);

static int cmp_chunk_file(const void *a, const void *b)
{
    return strcmp(((const struct chunk_file *)a)->name,
                  ((const struct chunk_file *)b)->name);
}

static void obj_chunk_seen(void *arg, const char *name, uint64_t size,
                          int64_t mtime)
{
    struct chunk_file f = { 0 };
    snprintf(f.name, sizeof f.name, "%s", name);
    f.size = (off_t)size;
    f.mtime.tv_sec = mtime;
    chunk_vec_append(arg, f);
}

static void chunks_snapshot(struct world *w, struct chunk_vec *out)
{
    out->len = 0;
    if (nj_test_store_is_obj(w->store)) {
        /* Listed in key order already; no inode to compare. */
        nj_test_obj_chunks(w->store, obj_chunk_seen, out);
        return;
    }
    for (int i = 0; i < 256; i++) {
        NJ_CLEANUP_FREE char *p = nj_asprintf("%s/chunks/%02x", w->store, i);
        DIR *dir = opendir(p);
        REQUIRE(dir);
        struct dirent *de;
        while ((de = readdir(dir)) != NULL) {
            if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
                continue;
            struct chunk_file f = { 0 };
            struct stat sb;
            REQUIRE(fstatat(dirfd(dir), de->d_name, &sb,
                            AT_SYMLINK_NOFOLLOW) == 0);
            snprintf(f.name, sizeof f.name, "%s", de->d_name);
            f.ino = sb.st_ino;
            f.size = sb.st_size;
            f.mtime = sb.st_mtim;
            chunk_vec_append(out, f);
        }
        closedir(dir);
    }
    if (out->len)
        qsort(out->ptr, out->len, sizeof *out->ptr, cmp_chunk_file);
}

static bool chunks_same(const struct chunk_vec *a, const struct chunk_vec *b)
{
    if (a->len != b->len) {
        fprintf(stderr, "chunk files: %zu before, %zu after\n", a->len,
                b->len);
        return false;
    }
    for (size_t i = 0; i < a->len; i++) {
        const struct chunk_file *x = &a->ptr[i], *y = &b->ptr[i];
        if (strcmp(x->name, y->name) || x->ino != y->ino ||
            x->size != y->size || x->mtime.tv_sec != y->mtime.tv_sec ||
            x->mtime.tv_nsec != y->mtime.tv_nsec) {
            fprintf(stderr, "chunk file %s changed\n", x->name);
            return false;
        }
    }
    return true;
}



static bool digests_subset(const struct digest_vec *a,
                           const struct digest_vec *b)
{
    size_t j = 0;
    for (size_t i = 0; i < a->len; i++) {
        while (j < b->len && nj_test_cmp_digest(&b->ptr[j], &a->ptr[i]) < 0)
            j++;
        if (j == b->len || nj_test_cmp_digest(&b->ptr[j], &a->ptr[i]) != 0)
            return false;
    }
    return true;
}

/* The index of (m, disk) tiles [0, size) with no gap. */
static bool index_tiles(struct world *w, const struct nj_manifest *m,
                        const struct nj_manifest_disk *md)
{
    struct nj_stream *in = nj_store_backup_open(w->s, m->id, md->index);
    if (!in)
        return false;
    struct nj_index_reader *r =
        nj_index_reader_open(in, md->index, &md->index_digest, md->size);
    if (!r)
        return false;
    uint64_t pos = 0;
    bool ok = nj_index_reader_covered(r) == md->size;
    struct nj_extent e;
    int rc;
    while ((rc = nj_index_reader_next(r, &e)) == 1) {
        ok &= e.offset == pos;
        pos = e.offset + e.length;
    }
    nj_index_reader_free(r);
    return ok && rc == 0 && pos == md->size;
}

/* What the catalog says about a backup before it is removed. */
struct before {
    char *parent;
    enum nj_level level;
    bool full_disk[NDISKS];
    char **children, **grandchildren; /* NULL-terminated */
    struct nj_digest *gc_digest;      /* grandchildren's first index */
    bool *child_protected;
    int64_t *child_time;
};

static void before_free(struct before *b)
{
    free(b->parent);
    nj_strv_free(b->children);
    nj_strv_free(b->grandchildren);
    free(b->gc_digest);
    free(b->child_protected);
    free(b->child_time);
}

static char **children_of(const struct nj_catalog *c, const char *id)
{
    size_t n = 0;
    char **v = nj_calloc(nj_catalog_count(c) + 1, sizeof *v);
    for (size_t i = 0; i < nj_catalog_count(c); i++) {
        const struct nj_manifest *m = nj_catalog_get(c, i);
        if (m->parent && !strcmp(m->parent, id))
            v[n++] = nj_strdup(m->id);
    }
    return v;
}

static void before_take(struct world *w, const char *id, struct before *b)
{
    memset(b, 0, sizeof *b);
    struct nj_catalog *c = nj_catalog_open(w->s);
    REQUIRE(c);
    const struct nj_manifest *x = nj_catalog_find(c, id);
    REQUIRE(x);
    b->parent = x->parent ? nj_strdup(x->parent) : NULL;
    b->level = x->level;
    for (int k = 0; k < NDISKS; k++)
        b->full_disk[k] = nj_manifest_disk(x, targets[k])->full;
    b->children = children_of(c, id);
    size_t nc = 0;
    while (b->children[nc])
        nc++;
    b->child_protected = nj_calloc(nc + 1, sizeof *b->child_protected);
    b->child_time = nj_calloc(nc + 1, sizeof *b->child_time);
    size_t ng = 0;
    b->grandchildren = nj_calloc(nj_catalog_count(c) + 1, sizeof(char *));
    b->gc_digest = nj_calloc(nj_catalog_count(c) + 1, sizeof *b->gc_digest);
    for (size_t i = 0; i < nc; i++) {
        b->child_protected[i] =
            nj_prune_is_protected(w->s, b->children[i]) == 1;
        b->child_time[i] = nj_catalog_find(c, b->children[i])->finished_us;
        char **g = children_of(c, b->children[i]);
        for (char **p = g; *p; p++) {
            b->gc_digest[ng] = nj_catalog_find(c, *p)->disks[0].index_digest;
            b->grandchildren[ng++] = *p;
        }
        free(g); /* its strings moved to b->grandchildren */
    }
    nj_catalog_free(c);
}

/* The removal did what nj-prune.h promises to the neighbours of x. */
static void check_neighbours(struct world *w, const struct before *b)
{
    struct nj_catalog *c = nj_catalog_open(w->s);
    REQUIRE(c);
    for (size_t i = 0; b->children[i]; i++) {
        const struct nj_manifest *m = nj_catalog_find(c, b->children[i]);
        CHECK(m != NULL);
        if (!m)
            continue;
        w->st.merged_children++;
        CHECK(m->finished_us == b->child_time[i]);
        CHECK(nj_prune_is_protected(w->s, m->id) == b->child_protected[i]);
        bool all_full = true;
        for (size_t k = 0; k < m->ndisks; k++)
            all_full &= m->disks[k].full;
        if (b->level == NJ_LEVEL_FULL) {
            /* A child of a removed full is a full. */
            CHECK(m->level == NJ_LEVEL_FULL);
            CHECK(m->parent == NULL);
            for (size_t k = 0; k < m->ndisks; k++) {
                CHECK(m->disks[k].full);
                CHECK(m->disks[k].covered == m->disks[k].size);
                CHECK(index_tiles(w, m, &m->disks[k]));
            }
            w->st.became_full++;
        } else if (all_full) {
            CHECK(m->level == NJ_LEVEL_FULL && m->parent == NULL);
            w->st.became_full++;
        } else {
            /* It depends on x's parent now. */
            CHECK(m->parent && b->parent && !strcmp(m->parent, b->parent));
            CHECK(m->level == NJ_LEVEL_INC || m->level == NJ_LEVEL_DIFF);
        }
        for (size_t k = 0; k < m->ndisks; k++)
            if (m->disks[k].full)
                CHECK(index_tiles(w, m, &m->disks[k]));
    }
    /* Grandchildren: untouched, still children of the merged child. */
    for (size_t i = 0; b->grandchildren[i]; i++) {
        const struct nj_manifest *m = nj_catalog_find(c, b->grandchildren[i]);
        CHECK(m != NULL);
        if (m)
            CHECK(nj_digest_eq(&m->disks[0].index_digest, &b->gc_digest[i]));
    }
    nj_catalog_free(c);
}

static struct dom *dom_of(struct world *w, const char *id, struct point **pp)
{
    for (size_t i = 0; i < w->ndoms; i++) {
        struct point *p = dom_find(w->doms[i], id);
        if (p) {
            *pp = p;
            return w->doms[i];
        }
    }
    REQUIRE(!"backup of no known domain");
    return NULL;
}

/* Remove one backup the way prune does (domain lock held), and check
 * everything the header lists. */
static void prune_one(struct world *w, const char *id_in)
{
    NJ_CLEANUP_FREE char *id = nj_strdup(id_in);
    struct point *p = NULL;
    struct dom *d = dom_of(w, id, &p);
    REQUIRE(!p->gone);
    struct before b;
    before_take(w, id, &b);
    struct chunk_vec cb = { 0 }, ca = { 0 };
    struct digest_vec rb = { 0 }, ra = { 0 };
    uint64_t nb = 0, na = 0;
    nj_test_referenced(w->s, &rb, &nb);
    chunks_snapshot(w, &cb);

    int fd = nj_backup_lock_domain(w->s, d->uuid, d->name);
    REQUIRE(fd >= 0);
    int r = nj_prune_remove(w->s, id);
    if (r < 0)
        fprintf(stderr, "remove %s (%s): %s\n", id, nj_level_name(b.level),
                nj_error_get());
    CHECK(r == 0);
    nj_store_unlock_domain(fd);
    if (r == 0)
        p->gone = true;
    w->st.removals++;

    chunks_snapshot(w, &ca);
    CHECK(chunks_same(&cb, &ca));
    nj_test_referenced(w->s, &ra, &na);
    CHECK(digests_subset(&ra, &rb));
    w->st.refs_before += nb;
    w->st.refs_after += na;
    w->st.refs_grew += na > nb;
    w->st.distinct_before += rb.len;
    w->st.distinct_after += ra.len;
    if (r == 0)
        check_neighbours(w, &b);
    /* Nothing left in staging: merges and the removal cleaned up. */
    if (nj_test_store_is_obj(w->store)) {
        char **staged = nj_store_staging_list(w->s);
        REQUIRE(staged);
        for (char **sid = staged; *sid; sid++) {
            fprintf(stderr, "staging '%s' left by a prune\n", *sid);
            CHECK(!"staging left behind");
        }
        nj_strv_free(staged);
    } else {
        NJ_CLEANUP_FREE char *sdir = nj_asprintf("%s/staging", w->store);
        DIR *sd = opendir(sdir);
        REQUIRE(sd);
        struct dirent *de;
        while ((de = readdir(sd)) != NULL)
            if (de->d_name[0] != '.') {
                fprintf(stderr, "staging '%s' left by a prune\n", de->d_name);
                CHECK(!"staging left behind");
            }
        closedir(sd);
    }
    char why[160];
    snprintf(why, sizeof why, "removing %s (%s) from '%s'", id,
             nj_level_name(b.level), d->name);
    check_world(w, why);
    before_free(&b);
    chunk_vec_reset(&cb);
    chunk_vec_reset(&ca);
    digest_vec_reset(&rb);
    digest_vec_reset(&ra);
}

static size_t live_count(const struct dom *d)
{
    size_t n = 0;
    for (size_t i = 0; i < d->npts; i++)
        n += !d->pts[i].gone;
    return n;
}

/* ---- scenarios ---- */

/* F I I: remove the full; its child becomes a full; then the new full. */
static void scenario_full_with_children(struct world *w)
{
    struct dom *d = dom_new(w, "full-with-children", rand_size(w),
                            rand_size(w));
    dom_step(w, d, NJ_LEVEL_FULL, 0);
    dom_step(w, d, NJ_LEVEL_INC, 0);
    dom_step(w, d, NJ_LEVEL_INC, 0);
    dom_step(w, d, NJ_LEVEL_INC, 0);
    check_world(w, "building full-with-children");
    prune_one(w, d->pts[0].id);
    prune_one(w, d->pts[1].id); /* the merged child, now a full */
    /* The chain goes on from the merged points. */
    dom_step(w, d, NJ_LEVEL_INC, 0);
    check_world(w, "an inc on a merged chain");
    prune_one(w, d->pts[2].id);
}

/* F I1 I2 I3 I4: remove the middle incs. */
static void scenario_middle(struct world *w)
{
    struct dom *d = dom_new(w, "middle inc", rand_size(w), rand_size(w));
    for (int i = 0; i < 6; i++)
        dom_step(w, d, i ? NJ_LEVEL_INC : NJ_LEVEL_FULL, 0);
    prune_one(w, d->pts[2].id);
    prune_one(w, d->pts[3].id); /* now the child of pts[1] */
    prune_one(w, d->pts[5].id); /* the newest */
    prune_one(w, d->pts[4].id); /* the newest again */
}

/* F I1 D2 I3 D4: the full of two diffs and an inc: all children merged. */
static void scenario_diff_full(struct world *w)
{
    struct dom *d = dom_new(w, "diff's full", rand_size(w), rand_size(w));
    dom_step(w, d, NJ_LEVEL_FULL, 0);
    dom_step(w, d, NJ_LEVEL_INC, 0);
    dom_step(w, d, NJ_LEVEL_DIFF, 0);
    dom_step(w, d, NJ_LEVEL_INC, 0);
    dom_step(w, d, NJ_LEVEL_DIFF, 0);
    dom_step(w, d, NJ_LEVEL_INC, 0);
    check_world(w, "building diff's full");
    prune_one(w, d->pts[0].id); /* I1, D2 and D4 become fulls */
    prune_one(w, d->pts[2].id); /* D2, now a full with child I3 */
}

/* Several in a row, oldest first, then newest first. */
static void scenario_in_a_row(struct world *w)
{
    struct dom *d = dom_new(w, "in a row", rand_size(w), rand_size(w));
    dom_random_chain(w, d, 9);
    for (int i = 0; i < 4; i++)
        prune_one(w, d->pts[i].id);
    for (int i = 8; i > 5; i--)
        prune_one(w, d->pts[i].id);
}

/* Disks that change size: an inc on a grown disk (its tail reads as zero
 * where it wrote nothing), an inc with a shrunk disk stored whole, then a
 * grown one on top of that. */
static void scenario_resize(struct world *w)
{
    struct dom *d = dom_new(w, "resized", (1u << 20) + 4097, 700001);
    dom_step(w, d, NJ_LEVEL_FULL, 0);
    dom_resize(d, 0, (2u << 20) + 123);
    dom_mutate(w, d, 3);
    dom_step(w, d, NJ_LEVEL_INC, 0); /* pts[1]: grown */
    dom_step(w, d, NJ_LEVEL_INC, 0);
    /* Shrink vda (stored whole), then grow it back incrementally: the
     * old full's bytes beyond the shrunk size must not come back. */
    dom_resize(d, 0, (1u << 20) + 77);
    dom_mutate(w, d, 2);
    dom_step(w, d, NJ_LEVEL_INC, 1u << 0); /* pts[3]: shrunk */
    dom_resize(d, 0, (2u << 20) + 9999);
    dom_mutate(w, d, 1);
    dom_step(w, d, NJ_LEVEL_INC, 0); /* pts[4]: regrown */
    dom_step(w, d, NJ_LEVEL_INC, 0);
    check_world(w, "building resized");
    prune_one(w, d->pts[3].id); /* regrown merges a whole, smaller vda */
    prune_one(w, d->pts[0].id); /* grown merges the smaller full */
}

/* Random chains, random removal orders, new backups in between. */
static void scenario_random(struct world *w, int round)
{
    char name[64];
    snprintf(name, sizeof name, "random %d", round);
    struct dom *d = dom_new(w, name, rand_size(w), rand_size(w));
    dom_random_chain(w, d, 8 + nj_test_rand_below(&w->rng, 5));
    check_world(w, "building a random chain");
    bool extended = false;
    while (live_count(d) > 1) {
        size_t pick = nj_test_rand_below(&w->rng, live_count(d));
        for (size_t i = 0; i < d->npts; i++) {
            if (d->pts[i].gone)
                continue;
            if (pick-- == 0) {
                prune_one(w, d->pts[i].id);
                break;
            }
        }
        /* Once: go on backing up the survivors' chain. */
        const struct point *newest = dom_find(d, d->last_id);
        if (!extended && live_count(d) <= 4 && newest && !newest->gone) {
            extended = true;
            dom_step(w, d, NJ_LEVEL_INC, 0);
            dom_step(w, d, NJ_LEVEL_INC, 0);
            check_world(w, "incs on a pruned chain");
        }
    }
}

/* Protected backups are refused, and a merge keeps the protection. */
static void scenario_protected(struct world *w)
{
    struct dom *d = dom_new(w, "protected", rand_size(w), rand_size(w));
    for (int i = 0; i < 5; i++)
        dom_step(w, d, i ? NJ_LEVEL_INC : NJ_LEVEL_FULL, 0);
    const char *f = d->pts[0].id, *child = d->pts[1].id, *mid = d->pts[2].id;
    CHECK(nj_prune_protect(w->s, mid, true) == 0);
    CHECK(nj_prune_protect(w->s, mid, true) == 0); /* twice is fine */
    CHECK(nj_prune_is_protected(w->s, mid) == 1);
    CHECK(nj_prune_is_protected(w->s, f) == 0);
    int fd = nj_backup_lock_domain(w->s, d->uuid, d->name);
    REQUIRE(fd >= 0);
    CHECK(nj_prune_remove(w->s, mid) < 0);
    CHECK(strstr(nj_error_get(), "protected") != NULL);
    CHECK(nj_prune_remove(w->s, "20000101T000000Z-00000000") < 0);
    CHECK(strstr(nj_error_get(), "no backup") != NULL);
    nj_store_unlock_domain(fd);
    w->st.refused += 2;
    check_world(w, "refusing a protected backup");
    /* Protected child of a removed backup: merged, still protected. */
    CHECK(nj_prune_protect(w->s, child, true) == 0);
    prune_one(w, f);
    CHECK(nj_prune_is_protected(w->s, child) == 1);
    CHECK(nj_prune_is_protected(w->s, mid) == 1);
    fd = nj_backup_lock_domain(w->s, d->uuid, d->name);
    REQUIRE(fd >= 0);
    CHECK(nj_prune_remove(w->s, child) < 0);
    nj_store_unlock_domain(fd);
    w->st.refused++;
    /* Lifted: removable again. */
    CHECK(nj_prune_protect(w->s, mid, false) == 0);
    CHECK(nj_prune_is_protected(w->s, mid) == 0);
    prune_one(w, mid);
    CHECK(nj_prune_protect(w->s, child, false) == 0);
    prune_one(w, child);
    CHECK(nj_prune_protect(w->s, "20000101T000000Z-00000000", true) < 0);
}

/* The decisions for domain, by id. */
static const struct nj_prune_decision *
decision_of(const struct nj_prune_decision *dv, size_t n, const char *id)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(dv[i].id, id))
            return &dv[i];
    return NULL;
}

/* Apply a plan and check it removed exactly what it marked. */
static void apply_checked(struct world *w, struct nj_prune_decision *dv,
                          size_t n)
{
    struct chunk_vec cb = { 0 }, ca = { 0 };
    chunks_snapshot(w, &cb);
    CHECK(nj_prune_apply(w->s, dv, n) == 0);
    chunks_snapshot(w, &ca);
    CHECK(chunks_same(&cb, &ca));
    chunk_vec_reset(&cb);
    chunk_vec_reset(&ca);
    for (size_t i = 0; i < n; i++) {
        CHECK(dv[i].removed == (dv[i].mark == NJ_MARK_REMOVE));
        CHECK(dv[i].error == NULL);
        if (dv[i].removed) {
            struct point *p = NULL;
            dom_of(w, dv[i].id, &p);
            p->gone = true;
            w->st.removals++;
        }
    }
    check_world(w, "applying a plan");
}

static long local_day(int64_t t)
{
    time_t tt = (time_t)t;
    struct tm tm;
    localtime_r(&tt, &tm);
    return (long)(tm.tm_year + 1900) * 1000 + tm.tm_yday;
}

static void scenario_plans(struct world *w)
{
    struct dom *d = dom_new(w, "planned", rand_size(w), rand_size(w));
    dom_random_chain(w, d, 8);
    struct dom *e = dom_new(w, "planned too", rand_size(w), rand_size(w));
    dom_random_chain(w, e, 6);
    check_world(w, "building planned domains");
    struct nj_keep_rules none = { 0 };
    struct nj_prune_decision *dv = NULL;
    size_t n = 0;
    CHECK(nj_prune_plan(w->s, d->name, &none, &dv, &n) < 0);
    CHECK(strstr(nj_error_get(), "no retention rule") != NULL);

    /* keep-last 2 of one domain, with an old backup protected. */
    CHECK(nj_prune_protect(w->s, d->pts[1].id, true) == 0);
    struct nj_keep_rules r = { .last = 2 };
    REQUIRE(nj_prune_plan(w->s, d->name, &r, &dv, &n) == 0);
    CHECK(n == d->npts);
    for (size_t i = 0; i < n; i++) {
        CHECK(!strcmp(dv[i].uuid, d->uuid));
        if (i > 0)
            CHECK(dv[i - 1].time >= dv[i].time);
    }
    for (size_t i = 0; i < d->npts; i++) {
        const struct nj_prune_decision *x = decision_of(dv, n, d->pts[i].id);
        CHECK(x != NULL);
        if (!x)
            continue;
        enum nj_keep_mark want = i >= d->npts - 2 ? NJ_MARK_KEEP
                                 : i == 1         ? NJ_MARK_PROTECTED
                                                  : NJ_MARK_REMOVE;
        CHECK(x->mark == want);
        CHECK(x->level == d->pts[i].level);
    }
    /* With the domain locked by a running backup, nothing goes. */
    int fd = nj_backup_lock_domain(w->s, d->uuid, d->name);
    REQUIRE(fd >= 0);
    CHECK(nj_prune_apply(w->s, dv, n) < 0);
    for (size_t i = 0; i < n; i++) {
        CHECK(!dv[i].removed);
        CHECK((dv[i].error != NULL) == (dv[i].mark == NJ_MARK_REMOVE));
    }
    nj_store_unlock_domain(fd);
    check_world(w, "a plan refused by a lock");
    nj_prune_plan_free(dv, n);
    REQUIRE(nj_prune_plan(w->s, d->name, &r, &dv, &n) == 0);
    apply_checked(w, dv, n);
    CHECK(live_count(d) == 3);
    CHECK(live_count(e) == e->npts);
    nj_prune_plan_free(dv, n);

    /* Every domain at once: keep-last 1 plus keep-daily 2 (all of these
     * backups fall on one day, already covered by keep-last). */
    CHECK(nj_prune_protect(w->s, d->pts[1].id, false) == 0);
    struct nj_keep_rules r2 = { .last = 1, .daily = 2 };
    REQUIRE(nj_prune_plan(w->s, NULL, &r2, &dv, &n) == 0);
    size_t keep = 0;
    for (size_t i = 0; i < n; i++) {
        keep += dv[i].mark != NJ_MARK_REMOVE;
        if (i > 0 && !strcmp(dv[i - 1].uuid, dv[i].uuid))
            CHECK(dv[i - 1].time >= dv[i].time);
    }
    size_t live = 0;
    for (size_t i = 0; i < w->ndoms; i++)
        live += live_count(w->doms[i]);
    CHECK(n == live);
    /* One per domain that has backups, unless the run crossed a local
     * midnight (then keep-daily keeps one more somewhere). */
    bool one_day = true;
    for (size_t i = 1; i < n; i++)
        one_day &= local_day(dv[i].time) == local_day(dv[0].time);
    size_t with = 0;
    for (size_t i = 0; i < w->ndoms; i++)
        with += live_count(w->doms[i]) > 0;
    CHECK(keep == with || !one_day);
    apply_checked(w, dv, n);
    nj_prune_plan_free(dv, n);
    for (size_t i = 0; i < w->ndoms; i++)
        CHECK(live_count(w->doms[i]) == 1 || !one_day);
    /* And the survivors' chains go on. */
    dom_step(w, e, NJ_LEVEL_INC, 0);
    check_world(w, "an inc after a plan");
}

static void dom_free(struct dom *d)
{
    for (size_t i = 0; i < d->npts; i++) {
        free(d->pts[i].id);
        for (int k = 0; k < NDISKS; k++)
            free(d->pts[i].truth[k]);
    }
    free(d->pts);
    for (int k = 0; k < NDISKS; k++) {
        free(d->cur[k]);
        nj_test_dirty_free(&d->since_last[k]);
        nj_test_dirty_free(&d->since_full[k]);
    }
    free(d->last_id);
    free(d->last_full_id);
    free(d);
}

int main(int argc, char **argv)
{
    struct world w = { .rng = 0x9e1e7e };
    if (argc > 1)
        REQUIRE(nj_parse_u64(argv[1], &w.rng) == 0);
    w.dir = nj_test_tmpdir("prune");
    w.store = nj_asprintf("%s/store", w.dir);
    if (access("/dev/shm", W_OK) == 0)
        w.scratch = nj_asprintf("/dev/shm/nightjar-prune-%ld.raw",
                                (long)getpid());
    else
        w.scratch = nj_asprintf("%s/restore.raw", w.dir);
    char *local = w.store;
    w.store = nj_test_store_url(local);
    free(local);
    w.s = nj_test_store_create(w.store);
    REQUIRE(w.s);
    w.codec = nj_codec_new(1);
    REQUIRE(w.codec);

    scenario_full_with_children(&w);
    scenario_middle(&w);
    scenario_diff_full(&w);
    scenario_in_a_row(&w);
    scenario_resize(&w);
    scenario_protected(&w);
    for (int i = 0; i < 4; i++)
        scenario_random(&w, i);
    scenario_plans(&w);

    printf("%u removals (%u merged children, %u became fulls, %u refused); "
           "%u disk restores compared, %u chains resolved, %u verifies\n",
           w.st.removals, w.st.merged_children, w.st.became_full,
           w.st.refused, w.st.restores, w.st.chains, w.st.verifies);
    printf("chunk references around removals: %llu before, %llu after, "
           "more after %u removals (entries split); distinct chunks %llu "
           "before, %llu after, never more\n",
           (unsigned long long)w.st.refs_before,
           (unsigned long long)w.st.refs_after, w.st.refs_grew,
           (unsigned long long)w.st.distinct_before,
           (unsigned long long)w.st.distinct_after);

    for (size_t i = 0; i < w.ndoms; i++)
        dom_free(w.doms[i]);
    free(w.doms);
    nj_codec_free(w.codec);
    nj_store_close(w.s);
    nj_test_rmtree(w.dir);
    free(w.dir);
    free(w.store);
    free(w.scratch);
    return nj_test_done("test-prune");
}
