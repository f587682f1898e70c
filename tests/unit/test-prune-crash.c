/*
 * test-prune-crash: prune killed at every step that ends a phase.
 *
 * A template store holds two domains' chains of two disks (fulls, incs,
 * diffs, one backup protected), with each point's truth kept in memory.
 * Each round copies the template, forks a child that runs one prune
 * operation on the copy (nj_prune_remove of one or several backups, or
 * nj_prune_plan + nj_prune_apply with keep-last rules), and SIGKILLs it.
 * The child runs gated (nj_test_gate_fork): each file-system step it
 * takes waits for the test, so a kill lands at a chosen step whatever the
 * machine's speed.  An uninterrupted run of each operation records which
 * of its steps end a phase (the first, every rename, the step after a
 * backup is moved into staging to be deleted, the step after an rmdir,
 * and a mark after the operation's last step); one kill goes before each
 * of them, so every phase is landed in by construction, and 80 more after
 * a random step and a random delay.
 * After every kill:
 *  - the store opens with no unreadable backup, holds only backups of the
 *    template and every backup the operation keeps; every backup still
 *    there restores exactly its truth, with its chain resolving for each
 *    disk, and nj_verify finds the store sound;
 *  - the chunk files are exactly the template's (prune never touches them);
 *  - running the operation again completes and leaves exactly the
 *    expected survivors, which restore exactly, and verify passes;
 *  - after that and one begun-and-aborted backup of each domain, staging
 *    holds nothing, or only what the format lets live for a day (an
 *    orphan with no owner record and nothing but temporary files).
 * Where each kill landed is read from what it left behind, and every
 * phase must have been landed in; a kill before the first step must
 * find the store untouched, one before the done mark everything done.
 * The stores live on tmpfs when there is one.  A kill leaves
 * the page cache intact: this checks the order of visible steps, not
 * durability across a power loss.
 */
#include "nj-test.h"
#include "nj-io.h"
#include "nj-prune.h"
#include "nj-restore.h"
#include "nj-util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define NDISKS 2
#define NDOMS 2
#define RANDOM_KILLS 80

static const char *targets[NDISKS] = { "vda", "sdb" };
static const char *dom_names[NDOMS] = { "crash prune", "bystander" };
static const char *dom_uuids[NDOMS] = {
    "c4a5e000-0000-4000-8000-000000000001",
    "c4a5e000-0000-4000-8000-000000000002",
};

struct point {
    char *id, *parent;
    int dom;
    enum nj_level level;
    unsigned char *truth[NDISKS];
};

struct op {
    char label[96];
    bool apply;              /* plan + apply, else remove ids in order */
    char **ids;              /* remove: in this order */
    const char *domain;      /* apply: NULL for all */
    struct nj_keep_rules rules;
    bool *removed;           /* per point: the operation removes it */
    uint64_t steps;          /* gated steps of an uninterrupted run */
    uint64_t *aims;          /* steps that end a phase (see note_aim) */
    size_t naims;
};

enum landing {
    LAND_UNTOUCHED,    /* nothing visible changed */
    LAND_MERGE_STAGED, /* a merge being built in staging */
    LAND_SWAPPED,      /* some children merged, their parent still there */
    LAND_REMOVING,     /* a backup renamed into staging, being deleted */
    LAND_PARTIAL,      /* some of the backups removed, some not */
    LAND_DONE,         /* everything removed (killed after, or finished) */
    LAND_COUNT
};

static const char *landing_names[LAND_COUNT] = {
    "nothing visible changed yet",
    "a merged child staged, not swapped in",
    "children swapped in, their parent still there",
    "a removed backup being deleted from staging",
    "some backups removed, others not yet",
    "all removed (killed after the last step)",
};

struct stats {
    unsigned kills, kills_aimed, finished_first, restores, verifies, reruns;
    unsigned landed[LAND_COUNT];
    unsigned left_staging; /* kills that left something in staging */
};

struct world {
    char *dir, *template, *work, *scratch;
    uint64_t size[NDISKS];
    struct point *pts;
    size_t npts;
    struct op *ops;
    size_t nops;
    uint64_t rng;
    char **template_chunks; /* sorted names */
    struct stats st;
};

static void sleep_us(uint64_t us)
{
    struct timespec ts = { (time_t)(us / 1000000), (long)(us % 1000000) * 1000 };
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* ---- copying a store ---- */



static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorted names of every file under STORE/chunks (temporary ones too). */
static char **chunk_names(const char *store, size_t *n)
{
    size_t cnt = 0;
    char **v = NULL;
    for (int i = 0; i < 256; i++) {
        NJ_CLEANUP_FREE char *p = nj_asprintf("%s/chunks/%02x", store, i);
        DIR *d = opendir(p);
        REQUIRE(d);
        struct dirent *de;
        while ((de = readdir(d)) != NULL) {
            if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
                continue;
            v = nj_realloc_array(v, cnt + 2, sizeof *v);
            v[cnt++] = nj_strdup(de->d_name);
        }
        closedir(d);
    }
    if (!v)
        v = nj_calloc(1, sizeof *v);
    v[cnt] = NULL;
    qsort(v, cnt, sizeof *v, cmp_str);
    *n = cnt;
    return v;
}

/* ---- the template ---- */

static void build_template(struct world *w)
{
    struct nj_store *s = nj_store_open(w->template, NJ_STORE_CREATE | NJ_STORE_CREATE_V1);
    REQUIRE(s);
    struct nj_codec *codec = nj_codec_new(1);
    REQUIRE(codec);
    /* Domain 0: F I I D I I F I D I D; domain 1: F I I. */
    static const enum nj_level plan0[] = {
        NJ_LEVEL_FULL, NJ_LEVEL_INC,  NJ_LEVEL_INC, NJ_LEVEL_DIFF,
        NJ_LEVEL_INC,  NJ_LEVEL_INC,  NJ_LEVEL_FULL, NJ_LEVEL_INC,
        NJ_LEVEL_DIFF, NJ_LEVEL_INC,  NJ_LEVEL_DIFF,
    };
    static const enum nj_level plan1[] = { NJ_LEVEL_FULL, NJ_LEVEL_INC,
                                           NJ_LEVEL_INC };
    const enum nj_level *plans[NDOMS] = { plan0, plan1 };
    size_t lens[NDOMS] = { NJ_ARRAY_SIZE(plan0), NJ_ARRAY_SIZE(plan1) };
    for (int dm = 0; dm < NDOMS; dm++) {
        unsigned char *cur[NDISKS];
        struct nj_test_dirty since_last[NDISKS], since_full[NDISKS];
        for (int k = 0; k < NDISKS; k++) {
            cur[k] = nj_calloc(1, w->size[k]);
            nj_test_dirty_init(&since_last[k], w->size[k]);
            nj_test_dirty_init(&since_full[k], w->size[k]);
            nj_test_mutate(&w->rng, cur[k], w->size[k], &since_last[k], 8);
        }
        const char *last = NULL, *last_full = NULL;
        for (size_t i = 0; i < lens[dm]; i++) {
            enum nj_level l = plans[dm][i];
            struct nj_backup_params bp = {
                .domain_name = dom_names[dm],
                .domain_uuid = dom_uuids[dm],
                .level = l,
                .parent = l == NJ_LEVEL_INC    ? last
                          : l == NJ_LEVEL_DIFF ? last_full
                                               : NULL,
            };
            struct nj_backup *b = nj_backup_begin(s, &bp);
            REQUIRE(b);
            /* Now and then an inc stores one disk whole. */
            unsigned mask = l == NJ_LEVEL_INC && i % 4 == 2 ? 2u : 0u;
            for (int k = 0; k < NDISKS; k++) {
                bool full = l == NJ_LEVEL_FULL || (mask & (1u << k));
                REQUIRE(nj_test_store_disk(
                            b, codec, targets[k], cur[k], w->size[k],
                            l == NJ_LEVEL_DIFF ? &since_full[k]
                                               : &since_last[k],
                            full, i % 2 ? 256u << 10 : 64u << 10) == 0);
            }
            REQUIRE(nj_backup_commit(b) == 0);
            w->pts = nj_realloc_array(w->pts, w->npts + 1, sizeof *w->pts);
            struct point *p = &w->pts[w->npts++];
            p->id = nj_strdup(nj_backup_id(b));
            p->parent = bp.parent ? nj_strdup(bp.parent) : NULL;
            p->dom = dm;
            p->level = l;
            for (int k = 0; k < NDISKS; k++) {
                p->truth[k] = nj_malloc(w->size[k]);
                memcpy(p->truth[k], cur[k], w->size[k]);
                nj_test_dirty_clear(&since_last[k]);
                if (l == NJ_LEVEL_FULL)
                    nj_test_dirty_clear(&since_full[k]);
            }
            nj_backup_free(b);
            last = p->id;
            if (l == NJ_LEVEL_FULL)
                last_full = p->id;
            for (int k = 0; k < NDISKS; k++) {
                struct nj_test_dirty tmp;
                nj_test_dirty_init(&tmp, w->size[k]);
                nj_test_mutate(&w->rng, cur[k], w->size[k], &tmp,
                               1 + (int)nj_test_rand_below(&w->rng, 5));
                for (size_t j = 0; j < tmp.nblocks; j++)
                    if (tmp.bit[j])
                        since_last[k].bit[j] = since_full[k].bit[j] = true;
                nj_test_dirty_free(&tmp);
            }
        }
        for (int k = 0; k < NDISKS; k++) {
            free(cur[k]);
            nj_test_dirty_free(&since_last[k]);
            nj_test_dirty_free(&since_full[k]);
        }
    }
    /* One old backup of domain 0 is protected: plans keep it. */
    REQUIRE(nj_prune_protect(s, w->pts[4].id, true) == 0);
    nj_codec_free(codec);
    nj_store_close(s);
}

static ssize_t point_index(const struct world *w, const char *id)
{
    for (size_t i = 0; i < w->npts; i++)
        if (!strcmp(w->pts[i].id, id))
            return (ssize_t)i;
    return -1;
}

static struct op *op_new(struct world *w, const char *label)
{
    w->ops = nj_realloc_array(w->ops, w->nops + 1, sizeof *w->ops);
    struct op *o = &w->ops[w->nops++];
    memset(o, 0, sizeof *o);
    snprintf(o->label, sizeof o->label, "%s", label);
    o->removed = nj_calloc(w->npts, sizeof *o->removed);
    return o;
}

static void op_remove(struct world *w, const char *label, const size_t *idx,
                      size_t n)
{
    struct op *o = op_new(w, label);
    o->ids = nj_calloc(n + 1, sizeof *o->ids);
    for (size_t i = 0; i < n; i++) {
        o->ids[i] = nj_strdup(w->pts[idx[i]].id);
        o->removed[idx[i]] = true;
    }
}

static void op_apply(struct world *w, const char *label, const char *domain,
                     unsigned last)
{
    struct op *o = op_new(w, label);
    o->apply = true;
    o->domain = domain;
    o->rules.last = last;
    /* What the plan removes, from the template (same manifests). */
    struct nj_store *s = nj_store_open(w->template, 0);
    REQUIRE(s);
    struct nj_prune_decision *d = NULL;
    size_t n = 0;
    REQUIRE(nj_prune_plan(s, domain, &o->rules, &d, &n) == 0);
    for (size_t i = 0; i < n; i++)
        if (d[i].mark == NJ_MARK_REMOVE) {
            ssize_t k = point_index(w, d[i].id);
            REQUIRE(k >= 0);
            o->removed[k] = true;
        }
    nj_prune_plan_free(d, n);
    nj_store_close(s);
}

static void make_ops(struct world *w)
{
    /* Domain 0: 0 F, 1 I, 2 I, 3 D(0), 4 I (protected), 5 I, 6 F, 7 I,
     * 8 D(6), 9 I, 10 D(6); domain 1: 11 F, 12 I, 13 I. */
    op_remove(w, "the full of a chain with a diff", (size_t[]){ 0 }, 1);
    op_remove(w, "a middle inc", (size_t[]){ 1 }, 1);
    op_remove(w, "the newest", (size_t[]){ 10 }, 1);
    op_remove(w, "the second full (three children)", (size_t[]){ 6 }, 1);
    op_remove(w, "three in a row", (size_t[]){ 0, 1, 2 }, 3);
    op_remove(w, "a diff and its full", (size_t[]){ 3, 0 }, 2);
    op_remove(w, "the other domain's full", (size_t[]){ 11 }, 1);
    op_apply(w, "keep-last 2", dom_names[0], 2);
    op_apply(w, "keep-last 4", dom_names[0], 4);
    op_apply(w, "keep-last 1, every domain", NULL, 1);
    /* Random subsets of domain 0 (never the protected one). */
    for (int r = 0; r < 4; r++) {
        size_t idx[10], n = 0;
        for (size_t i = 0; i <= 10; i++)
            if (i != 4 && nj_test_rand_below(&w->rng, 3) == 0 && n < 10)
                idx[n++] = i;
        if (n == 0)
            idx[n++] = 5;
        for (size_t i = n; i > 1; i--) { /* shuffle */
            size_t j = nj_test_rand_below(&w->rng, i);
            size_t t = idx[i - 1];
            idx[i - 1] = idx[j];
            idx[j] = t;
        }
        char label[64];
        snprintf(label, sizeof label, "random subset %d (%zu backups)", r, n);
        op_remove(w, label, idx, n);
    }
}

/* ---- running an operation ---- */

/* Run o on the store at path: 0 when it completed. */
static int op_run(const struct world *w, const struct op *o,
                  const char *path)
{
    struct nj_store *s = nj_store_open(path, 0);
    if (!s)
        return -1;
    int ret = 0;
    if (o->apply) {
        struct nj_prune_decision *d = NULL;
        size_t n = 0;
        ret = nj_prune_plan(s, o->domain, &o->rules, &d, &n);
        if (ret == 0)
            ret = nj_prune_apply(s, d, n);
        nj_prune_plan_free(d, n);
    } else {
        int fd = nj_backup_lock_domain(s, dom_uuids[0], dom_names[0]);
        int fd1 = nj_backup_lock_domain(s, dom_uuids[1], dom_names[1]);
        if (fd < 0 || fd1 < 0)
            ret = -1;
        struct nj_catalog *c = ret == 0 ? nj_catalog_open(s) : NULL;
        for (size_t i = 0; c && o->ids[i] && ret == 0; i++)
            if (nj_catalog_find(c, o->ids[i]))
                ret = nj_prune_remove(s, o->ids[i]);
        if (ret == 0 && !c)
            ret = -1;
        nj_catalog_free(c);
        nj_store_unlock_domain(fd);
        nj_store_unlock_domain(fd1);
    }
    (void)w;
    nj_store_close(s);
    return ret;
}

/* The child's last gated step, after the operation: an unlink of a name
 * that does not exist.  A kill before it lands after the operation's
 * last step. */
#define DONE_MARK "nj-prune-op-done"

/*
 * Fork a gated child running o on the work copy (nj_test_gate_fork: each
 * file-system step it takes waits for the test) and kill it: before its
 * step number kill_before (1 = before the first; the step after the
 * operation's last is the done mark), or after letting step random_after
 * run plus a random delay of up to a millisecond (anywhere before the
 * next step, which waits); neither when both are 0.  *steps gets the
 * operation's steps seen (the done mark not counted).  Returns true when
 * the kill landed.
 */
/*
 * The steps that end a phase, where aimed kills go (recorded by an
 * uninterrupted run): the first step; every rename (a merged child
 * swapped in, a backup moved into staging to be removed); the step after
 * a backup was moved there (its files are being deleted); the step after
 * an rmdir (a backup gone, the next not yet); the done mark.
 */
static void note_aim(struct op *o, uint64_t n)
{
    if (o->naims && o->aims[o->naims - 1] == n)
        return;
    o->aims = nj_realloc_array(o->aims, o->naims + 1, sizeof *o->aims);
    o->aims[o->naims++] = n;
}

static bool op_fork(struct world *w, struct op *o, uint64_t kill_before,
                    uint64_t random_after, uint64_t *steps, bool learn)
{
    struct nj_test_gate g;
    pid_t pid = nj_test_gate_fork(&g, false);
    if (pid == 0) {
        int r = op_run(w, o, w->work);
        if (r < 0)
            fprintf(stderr, "prune child: %s\n", nj_error_get());
        NJ_CLEANUP_FREE char *mark = nj_asprintf("%s/%s", w->dir, DONE_MARK);
        unlink(mark);
        _exit(r < 0 ? 3 : 0);
    }
    struct nj_test_call c;
    bool stop = false, done_mark = false, ends_phase = true;
    uint64_t n = 0;
    while (!stop && nj_test_gate_next(&g, &c) == 1) {
        n++;
        done_mark = nj_test_path_ends(c.path, DONE_MARK);
        if (learn && (ends_phase || done_mark || c.kind == NJ_CALL_RENAME))
            note_aim(o, n);
        ends_phase = c.kind == NJ_CALL_RMDIR ||
                     (c.kind == NJ_CALL_RENAME &&
                      nj_test_path_has(c.path2, "removed-"));
        if (n == kill_before)
            break;
        nj_test_gate_pass(&g, &c);
        if (n == random_after) {
            sleep_us(nj_test_rand_below(&w->rng, 1000));
            stop = true;
        }
    }
    int status = nj_test_gate_kill(&g);
    if (steps)
        *steps = done_mark ? n - 1 : n;
    if (WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
        return true;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fprintf(stderr, "prune child (%s) failed, status 0x%x\n", o->label,
                status);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    return false;
}

/* ---- checks ---- */

static void verify(struct world *w, struct nj_store *s,
                   const struct nj_catalog *c)
{
    char *report = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&report, &len);
    REQUIRE(f);
    struct nj_verify_opts vo = { .out = f };
    int r = nj_verify(s, c, &vo);
    fclose(f);
    if (r != 0)
        fprintf(stderr, "verify returned %d:\n%s", r, report);
    CHECK(r == 0);
    free(report);
    w->st.verifies++;
}

/*
 * The work store is sound: only template backups, all that o keeps,
 * each restoring its truth, verify clean, chunks untouched.  With final,
 * exactly o's survivors.  Returns the landing.
 */
static enum landing check_work(struct world *w, const struct op *o, bool final)
{
    int before = nj_test_failures;
    struct nj_store *s = nj_store_open(w->work, 0);
    REQUIRE(s);
    struct nj_catalog *c = nj_catalog_open(s);
    REQUIRE(c);
    CHECK(nj_catalog_broken_count(c) == 0);
    for (size_t i = 0; i < nj_catalog_broken_count(c); i++)
        fprintf(stderr, "unreadable backup %s: %s\n",
                nj_catalog_broken_id(c, i), nj_catalog_broken_error(c, i));
    size_t present = 0, removed = 0, want_removed = 0;
    bool swapped = false;
    for (size_t i = 0; i < nj_catalog_count(c); i++)
        CHECK(point_index(w, nj_catalog_get(c, i)->id) >= 0);
    for (size_t i = 0; i < w->npts; i++) {
        const struct point *p = &w->pts[i];
        const struct nj_manifest *m = nj_catalog_find(c, p->id);
        want_removed += o->removed[i];
        if (!m) {
            if (!o->removed[i])
                fprintf(stderr, "%s: backup %s is gone, the operation "
                        "keeps it\n", o->label, p->id);
            CHECK(o->removed[i]);
            removed++;
            continue;
        }
        present++;
        if (final)
            CHECK(!o->removed[i]);
        if ((m->parent == NULL) != (p->parent == NULL) ||
            (m->parent && strcmp(m->parent, p->parent) != 0))
            swapped = true;
        for (int k = 0; k < NDISKS; k++) {
            const struct nj_manifest **chain = NULL;
            CHECK(nj_catalog_chain(c, m, targets[k], &chain) > 0);
            free(chain);
            CHECK(nj_test_restore_compare(s, c, m, targets[k], p->truth[k],
                                          w->size[k], w->scratch) == 0);
            w->st.restores++;
        }
    }
    CHECK(nj_catalog_count(c) == present);
    verify(w, s, c);
    size_t n = 0;
    char **names = chunk_names(w->work, &n);
    bool same = true;
    for (size_t i = 0; same && (names[i] || w->template_chunks[i]); i++)
        same = names[i] && w->template_chunks[i] &&
               !strcmp(names[i], w->template_chunks[i]);
    if (!same)
        fprintf(stderr, "%s: chunk files changed\n", o->label);
    CHECK(same);
    nj_strv_free(names);
    nj_catalog_free(c);
    nj_store_close(s);

    bool merge_staged = false, removing = false;
    NJ_CLEANUP_FREE char *sdir = nj_asprintf("%s/staging", w->work);
    DIR *d = opendir(sdir);
    REQUIRE(d);
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        merge_staged |= !strncmp(de->d_name, "merge-", 6);
        removing |= !strncmp(de->d_name, "removed-", 8);
    }
    closedir(d);
    if (nj_test_failures != before)
        fprintf(stderr, "  (operation: %s%s)\n", o->label,
                final ? ", run again" : ", killed");
    if (removing)
        return LAND_REMOVING;
    if (removed == want_removed)
        return LAND_DONE;
    if (removed > 0)
        return LAND_PARTIAL;
    if (swapped)
        return LAND_SWAPPED;
    if (merge_staged)
        return LAND_MERGE_STAGED;
    return LAND_UNTOUCHED;
}

/* NULL when staging/<name> may stay: no owner record, only temporary
 * files, less than a day old (docs/FORMAT.md). */
static const char *staging_problem(const char *path)
{
    struct stat st;
    if (stat(path, &st) < 0)
        return NULL;
    if (time(NULL) - st.st_mtime > 24 * 3600)
        return "older than a day";
    DIR *d = opendir(path);
    if (!d)
        return NULL;
    const char *why = NULL;
    struct dirent *de;
    while (!why && (de = readdir(d)) != NULL) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        if (!strcmp(de->d_name, "owner.json"))
            why = "it has an owner record";
        else if (strncmp(de->d_name, ".tmp-", 5) != 0)
            why = "no owner record, but content";
    }
    closedir(d);
    return why;
}

/* After the rerun: a begun-and-aborted backup of each domain leaves
 * staging with nothing the format does not allow. */
static void check_staging(struct world *w, const struct op *o)
{
    struct nj_store *s = nj_store_open(w->work, 0);
    REQUIRE(s);
    struct nj_catalog *c = nj_catalog_open(s);
    REQUIRE(c);
    for (int dm = 0; dm < NDOMS; dm++) {
        const struct nj_manifest *m =
            nj_catalog_resolve(c, dom_uuids[dm], "latest");
        struct nj_backup_params bp = {
            .domain_name = dom_names[dm],
            .domain_uuid = dom_uuids[dm],
            .level = m ? NJ_LEVEL_INC : NJ_LEVEL_FULL,
            .parent = m ? m->id : NULL,
        };
        struct nj_backup *b = nj_backup_begin(s, &bp);
        CHECK(b != NULL);
        nj_backup_free(b);
    }
    nj_catalog_free(c);
    nj_store_close(s);
    NJ_CLEANUP_FREE char *sdir = nj_asprintf("%s/staging", w->work);
    DIR *d = opendir(sdir);
    REQUIRE(d);
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        NJ_CLEANUP_FREE char *sub = nj_asprintf("%s/%s", sdir, de->d_name);
        const char *why = staging_problem(sub);
        if (why)
            fprintf(stderr, "%s: staging '%s' survived a rerun and a new "
                    "backup: %s\n", o->label, de->d_name, why);
        CHECK(why == NULL);
    }
    closedir(d);
}

static bool staging_empty(const char *store)
{
    NJ_CLEANUP_FREE char *sdir = nj_asprintf("%s/staging", store);
    DIR *d = opendir(sdir);
    REQUIRE(d);
    bool empty = true;
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        empty &= !strcmp(de->d_name, ".") || !strcmp(de->d_name, "..");
    closedir(d);
    return empty;
}

int main(void)
{
    struct world w = { .rng = 0xc4a5e };
    w.size[0] = (1u << 20) + 1 + nj_test_rand_below(&w.rng, 65535);
    w.size[1] = (512u << 10) + 1 + nj_test_rand_below(&w.rng, 65535);
    /* Hundreds of store copies, each synced by the operation: on tmpfs
     * when there is one (what a kill leaves is the same; durability
     * across a power loss is not what this checks). */
    if (access("/dev/shm", W_OK) == 0) {
        w.dir = nj_strdup("/dev/shm/nightjar-prune-crash-XXXXXX");
        REQUIRE(mkdtemp(w.dir));
    } else {
        w.dir = nj_test_tmpdir("prune-crash");
    }
    w.template = nj_asprintf("%s/template", w.dir);
    w.work = nj_asprintf("%s/work", w.dir);
    if (access("/dev/shm", W_OK) == 0)
        w.scratch = nj_asprintf("/dev/shm/nightjar-prune-crash-%ld.raw",
                                (long)getpid());
    else
        w.scratch = nj_asprintf("%s/restore.raw", w.dir);
    build_template(&w);
    size_t nchunks = 0;
    w.template_chunks = chunk_names(w.template, &nchunks);
    make_ops(&w);

    /* Each operation once, uninterrupted: its duration, and its result. */
    for (size_t i = 0; i < w.nops; i++) {
        nj_test_copy_store(w.template, w.work);
        uint64_t steps = 0;
        CHECK(!op_fork(&w, &w.ops[i], 0, 0, &steps, true));
        w.ops[i].steps = steps;
        CHECK(steps > 0);
        CHECK(check_work(&w, &w.ops[i], true) == LAND_DONE);
        CHECK(staging_empty(w.work));
        printf("%-44s %3llu steps, %2zu ending a phase\n", w.ops[i].label,
               (unsigned long long)steps, w.ops[i].naims);
    }

    /*
     * Kills: before every step of every operation that ends a phase
     * (note_aim), so every phase an operation goes through is landed in
     * by construction; then RANDOM_KILLS more after a random step and a
     * random delay of up to a millisecond.
     */
    uint64_t aimed_total = 0;
    for (size_t i = 0; i < w.nops; i++)
        aimed_total += w.ops[i].naims;
    double start = nj_mono_sec();
    for (uint64_t k = 0; k < aimed_total + RANDOM_KILLS; k++) {
        struct op *o = NULL;
        uint64_t before = 0, after = 0;
        if (k < aimed_total) {
            uint64_t left = k;
            for (size_t i = 0; !o; i++) {
                if (left < w.ops[i].naims) {
                    o = &w.ops[i];
                    before = o->aims[left];
                } else {
                    left -= w.ops[i].naims;
                }
            }
        } else {
            o = &w.ops[nj_test_rand_below(&w.rng, w.nops)];
            after = 1 + nj_test_rand_below(&w.rng, o->steps);
        }
        nj_test_copy_store(w.template, w.work);
        bool killed = op_fork(&w, o, before, after, NULL, false);
        if (!killed) {
            /* Only a random kill's delay can outlast the child. */
            CHECK(after > 0);
            w.st.finished_first++;
            continue;
        }
        w.st.kills++;
        w.st.kills_aimed += before > 0;
        enum landing l = check_work(&w, o, false);
        w.st.landed[l]++;
        w.st.left_staging += !staging_empty(w.work);
        /* Before the first step nothing has changed; before the done
         * mark, everything has. */
        if (before == 1)
            CHECK(l == LAND_UNTOUCHED);
        if (before == o->steps + 1)
            CHECK(l == LAND_DONE);
        /* Again, to the end. */
        CHECK(op_run(&w, o, w.work) == 0);
        w.st.reruns++;
        check_work(&w, o, true);
        check_staging(&w, o);
    }
    double took = nj_mono_sec() - start;

    printf("%u kills (%u before each step that ends a phase, the others "
           "after a random step) in %.1f s (%u runs finished before their "
           "kill); template: %zu backups, %zu chunk files\n",
           w.st.kills, w.st.kills_aimed, took, w.st.finished_first, w.npts,
           nchunks);
    for (int i = 0; i < LAND_COUNT; i++) {
        printf("  %4u  %s\n", w.st.landed[i], landing_names[i]);
        /* Every phase was landed in, as observed in what the kill left. */
        if (w.st.landed[i] == 0)
            fprintf(stderr, "no kill landed in phase '%s'\n",
                    landing_names[i]);
        CHECK(w.st.landed[i] > 0);
    }
    printf("%u kills left something in staging; %u reruns; %u disk "
           "restores compared; %u verifies\n", w.st.left_staging,
           w.st.reruns, w.st.restores, w.st.verifies);

    for (size_t i = 0; i < w.nops; i++) {
        nj_strv_free(w.ops[i].ids);
        free(w.ops[i].removed);
        free(w.ops[i].aims);
    }
    free(w.ops);
    for (size_t i = 0; i < w.npts; i++) {
        free(w.pts[i].id);
        free(w.pts[i].parent);
        for (int k = 0; k < NDISKS; k++)
            free(w.pts[i].truth[k]);
    }
    free(w.pts);
    nj_strv_free(w.template_chunks);
    nj_test_rmtree(w.dir);
    free(w.dir);
    free(w.template);
    free(w.work);
    free(w.scratch);
    return nj_test_done("test-prune-crash");
}
