/*
 * test-store-obj: what the object store (store-obj.c) guarantees beyond
 * what test-chain and test-prune check on it, on both object namespaces:
 * "s3", a real radosgw (NJ_TEST_S3_*, exit 77 without), and "dir", a
 * directory (obj+file://):
 *  - domain leases: refused while held, taken over at once from a dead
 *    process of this host, after expiry from another host, never while
 *    alive; a writer whose lease was taken away does not publish;
 *  - a writer killed at any moment leaves every committed backup restorable
 *    and nothing half visible;
 *  - gc and writers: gc sweeps nothing while a backup runs; a backup that
 *    starts while gc holds its lease waits for it, and a chunk it then
 *    dedups against survives the next gc;
 *  - a hostile bucket: objects outside the layout are never deleted and
 *    make gc refuse to sweep rather than guess; a newer generation wins;
 *  - tampering: a chunk flipped, truncated or swapped, an index flipped,
 *    truncated or swapped with another domain's, a manifest swapped with
 *    another backup's or replayed as a newer generation: restore refuses
 *    (never other bytes) and verify fails; the other backups still
 *    restore;
 *  - an incremental knows its parent chain's chunks exist (no request
 *    to deduplicate against them), a fresh handle knows none;
 *  - dir only: an incremental, then a prune merge, killed before each of
 *    their file-system steps in turn (syscall gates): every committed
 *    backup restores exactly after every kill, nothing half visible.
 */
#include "nj-test.h"
#include "nj-restore.h"
#include "nj-io.h"
#include "nj-prune.h"
#include "nj-object.h"
#include "nj-s3.h"
#include "nj-util.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SIZE (6u * 1048576 + 4093)
#define GRID (256u << 10)

static const char *UUID = "5a5a5a5a-0000-4000-8000-000000000001";

struct world {
    char *url;
    char *prefix; /* key prefix inside the bucket, with '/' */
    struct nj_objects *obj;
    struct nj_codec *codec;
    uint64_t rng;
    char *scratch;
};

static struct nj_store *open_store(struct world *w)
{
    struct nj_store *s = nj_store_open(w->url, NJ_STORE_CREATE);
    if (!s)
        fprintf(stderr, "open: %s\n", nj_error_get());
    REQUIRE(s);
    return s;
}

/* A full backup of truth, committed; its id (free it). */
static char *backup_full(struct nj_store *s, struct world *w,
                         const char *uuid, const unsigned char *truth,
                         const char *id)
{
    struct nj_backup_params bp = { .domain_name = "s3 'dom' & co",
                                   .domain_uuid = uuid,
                                   .level = NJ_LEVEL_FULL,
                                   .id = id };
    struct nj_backup *b = nj_backup_begin(s, &bp);
    if (!b)
        fprintf(stderr, "begin: %s\n", nj_error_get());
    REQUIRE(b);
    REQUIRE(nj_test_store_disk(b, w->codec, "vda", truth, SIZE, NULL, true,
                               GRID) == 0);
    REQUIRE(nj_backup_commit(b) == 0);
    char *out = nj_strdup(nj_backup_id(b));
    nj_backup_free(b);
    return out;
}

static void check_restores(struct nj_store *s, struct world *w, const char *id,
                           const unsigned char *truth)
{
    struct nj_catalog *c = nj_catalog_open(s);
    REQUIRE(c);
    CHECK(nj_catalog_broken_count(c) == 0);
    const struct nj_manifest *m = nj_catalog_find(c, id);
    CHECK(m != NULL);
    if (m)
        CHECK(nj_test_restore_compare(s, c, m, "vda", truth, SIZE,
                                      w->scratch) == 0);
    nj_catalog_free(c);
}

static size_t count_backups(struct nj_store *s)
{
    char **ids = nj_store_backup_list(s);
    REQUIRE(ids);
    size_t n = 0;
    while (ids[n])
        n++;
    nj_strv_free(ids);
    return n;
}

/* ---- leases ---- */

static void test_leases(struct world *w)
{
    struct nj_store *a = open_store(w);
    struct nj_store *b = open_store(w);
    int la = nj_backup_lock_domain(a, UUID, "dom");
    CHECK(la >= 0);
    /* Held by a live process (this one): refused, with who holds it. */
    CHECK(nj_backup_lock_domain(b, UUID, "dom") < 0);
    CHECK(strstr(nj_error_get(), "already being backed up (pid") != NULL);
    nj_store_unlock_domain(la);
    int lb = nj_backup_lock_domain(b, UUID, "dom");
    CHECK(lb >= 0);
    nj_store_unlock_domain(lb);

    /* A holder killed on this host: taken over at once. */
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        struct nj_store *c = nj_store_open(w->url, 0);
        _exit(c && nj_backup_lock_domain(c, UUID, "dom") >= 0 ? 0 : 1);
        /* exits holding it: no release */
    }
    int st = 0;
    REQUIRE(waitpid(pid, &st, 0) == pid);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    la = nj_backup_lock_domain(a, UUID, "dom");
    CHECK(la >= 0);
    nj_store_unlock_domain(la);
    nj_store_close(a);
    nj_store_close(b);

    /* Another host's holder that died: refused until the lease expires
     * (TTL 3 s here), then taken over. */
    setenv("NIGHTJAR_HOST_ID", "other-host", 1);
    pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        struct nj_store *c = nj_store_open(w->url, 0);
        _exit(c && nj_backup_lock_domain(c, UUID, "dom") >= 0 ? 0 : 1);
    }
    REQUIRE(waitpid(pid, &st, 0) == pid);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    setenv("NIGHTJAR_HOST_ID", "this-host", 1);
    a = open_store(w);
    CHECK(nj_backup_lock_domain(a, UUID, "dom") < 0);
    CHECK(strstr(nj_error_get(), "on host other-host") != NULL);
    sleep(5); /* past its expiry: a lease's time, not the machine's speed */
    la = nj_backup_lock_domain(a, UUID, "dom");
    CHECK(la >= 0);
    nj_store_unlock_domain(la);

    /* A lease that changed hands under a running backup: no publish. */
    unsigned char *truth = nj_calloc(1, SIZE);
    nj_test_fill_random(&w->rng, truth, 3 * GRID);
    struct nj_backup_params bp = { .domain_name = "dom", .domain_uuid = UUID,
                                   .level = NJ_LEVEL_FULL };
    struct nj_backup *bk = nj_backup_begin(a, &bp);
    REQUIRE(bk);
    REQUIRE(nj_test_store_disk(bk, w->codec, "vda", truth, SIZE, NULL, true,
                               GRID) == 0);
    NJ_CLEANUP_FREE char *lkey = nj_asprintf("%slocks/%s.lease", w->prefix,
                                             UUID);
    const char *intruder = "{\"host\":\"thief\",\"boot\":\"x\",\"pid\":1,"
                           "\"expires\":99999999999}";
    REQUIRE(nj_obj_put(w->obj, lkey, intruder, strlen(intruder),
                      NJ_OBJ_REPLACE, NULL, NULL) == 0);
    sleep(3); /* a renewal round (every second at TTL 3) sees it */
    size_t before = count_backups(a);
    CHECK(nj_backup_commit(bk) < 0);
    CHECK(strstr(nj_error_get(), "lease was lost") != NULL);
    nj_backup_free(bk);
    CHECK(count_backups(a) == before);
    /* Not ours any more: releasing left the intruder's lease alone. */
    void *text = NULL;
    size_t len = 0;
    CHECK(nj_obj_get(w->obj, lkey, 4096, &text, &len) == 0 && text &&
          strstr(text, "thief") != NULL);
    free(text);
    nj_obj_delete(w->obj, lkey);
    nj_store_close(a);
    free(truth);
}

/* ---- a writer killed at any moment ---- */

static void test_killed_writer(struct world *w)
{
    struct nj_store *s = open_store(w);
    unsigned char *truth = nj_calloc(1, SIZE);
    nj_test_fill_random(&w->rng, truth, SIZE / 2);
    char *committed = backup_full(s, w, "killed-dom", truth, NULL);
    nj_store_close(s);

    /* How long an uninterrupted backup takes here, to spread the kills
     * over it; where each lands does not matter, only that the store is
     * sound after every one. */
    unsigned char *next = nj_malloc(SIZE);
    double t0 = 0;
    unsigned visible = 0;
    /* Rounds 0 and 1 run through (the second one's time is t0, free of
     * first-connection costs); rounds 2..9 are killed. */
    for (int round = 0; round < 10; round++) {
        memcpy(next, truth, SIZE);
        nj_test_fill_random(&w->rng, next, SIZE / 3);
        NJ_CLEANUP_FREE char *rid = nj_backup_id_new();
        /* Kills spread over [t0/4, 2 t0]: before, during and after the
         * chunks, the indexes and the manifest. */
        useconds_t delay = (useconds_t)(t0 * 1e6 * (round - 1) / 4.0);
        pid_t pid = fork();
        REQUIRE(pid >= 0);
        if (pid == 0) {
            struct nj_store *cs = nj_store_open(w->url, 0);
            if (!cs)
                _exit(2);
            free(backup_full(cs, w, "killed-dom", next, rid));
            _exit(0);
        }
        double start = nj_mono_sec();
        if (round > 1) {
            usleep(delay);
            kill(pid, SIGKILL);
        }
        int st = 0;
        REQUIRE(waitpid(pid, &st, 0) == pid);
        if (round <= 1) {
            CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
            t0 = nj_mono_sec() - start;
        }
        s = open_store(w);
        struct nj_catalog *c = nj_catalog_open(s);
        REQUIRE(c);
        CHECK(nj_catalog_broken_count(c) == 0);
        /* The committed one restores exactly; this round's, when it is
         * visible at all, is complete and restores what it was given. */
        const struct nj_manifest *m = nj_catalog_find(c, committed);
        CHECK(m && nj_test_restore_compare(s, c, m, "vda", truth, SIZE,
                                           w->scratch) == 0);
        m = nj_catalog_find(c, rid);
        CHECK(round > 1 || m != NULL);
        if (m) {
            visible++;
            CHECK(nj_test_restore_compare(s, c, m, "vda", next, SIZE,
                                          w->scratch) == 0);
        }
        nj_catalog_free(c);
        nj_store_close(s);
    }
    printf("killed writers: %u of 8 killed backups had committed (%.2f s "
           "each)\n", visible - 2, t0);
    /* The next backup of the domain cleans what the dead ones left in
     * staging, and gc finds nothing referenced missing. */
    s = open_store(w);
    char *id = backup_full(s, w, "killed-dom", truth, NULL);
    char **staged = nj_store_staging_list(s);
    REQUIRE(staged);
    CHECK(staged[0] == NULL);
    nj_strv_free(staged);
    struct nj_gc_stats gs;
    CHECK(nj_gc(s, 0, &gs) == 0);
    check_restores(s, w, id, truth);
    check_restores(s, w, committed, truth);
    nj_store_close(s);
    free(id);
    free(committed);
    free(truth);
    free(next);
}

/* ---- the parent's chunks are known without a request ---- */

static void test_parent_known(struct world *w)
{
    struct nj_store *s = open_store(w);
    unsigned char *truth = nj_calloc(1, SIZE);
    nj_test_fill_random(&w->rng, truth, SIZE);
    char *full = backup_full(s, w, "known-dom", truth, NULL);
    nj_store_close(s);

    /* A fresh handle knows nothing: existence is decided by the put. */
    s = open_store(w);
    struct nj_catalog *c = nj_catalog_open(s);
    REQUIRE(c);
    const struct nj_manifest *m = nj_catalog_find(c, full);
    REQUIRE(m);
    struct nj_index_reader *r = nj_manifest_index_open(s, m, &m->disks[0]);
    REQUIRE(r);
    struct nj_digest d[2];
    unsigned nd = 0;
    struct nj_extent e;
    while (nd < 2 && nj_index_reader_next(r, &e) == 1)
        if (e.kind == NJ_EXTENT_DATA &&
            (nd == 0 || !nj_digest_eq(&d[0], &e.digest)))
            d[nd++] = e.digest;
    nj_index_reader_free(r);
    nj_catalog_free(c);
    REQUIRE(nd == 2);
    CHECK(nj_store_chunk_exists(s, &d[0]) == 0);
    CHECK(nj_store_chunk_exists(s, &d[1]) == 0);
    /* An incremental on top of it knows every chunk of its parent. */
    struct nj_backup_params bp = { .domain_name = "s3 'dom' & co",
                                   .domain_uuid = "known-dom",
                                   .level = NJ_LEVEL_INC,
                                   .parent = full };
    struct nj_backup *b = nj_backup_begin(s, &bp);
    REQUIRE(b);
    CHECK(nj_store_chunk_exists(s, &d[0]) == 1);
    CHECK(nj_store_chunk_exists(s, &d[1]) == 1);
    nj_backup_free(b); /* abandoned: nothing published */
    nj_store_close(s);
    free(full);
    free(truth);
}

/* ---- tampering: any changed object fails restore and verify ---- */

static int verify_quiet(struct nj_store *s, const struct nj_catalog *c)
{
    FILE *f = fopen("/dev/null", "w");
    REQUIRE(f);
    struct nj_verify_opts vo = { .threads = 2, .out = f };
    int r = nj_verify(s, c, &vo);
    fclose(f);
    return r;
}

/* Restore id's vda: 0 exact, 1 refused (an error), and a failed check
 * when it "succeeded" with other bytes: the one outcome never allowed. */
static int restore_outcome(struct world *w, const char *id,
                           const unsigned char *truth)
{
    struct nj_store *s = open_store(w);
    struct nj_catalog *c = nj_catalog_open(s);
    int ret = 1;
    const struct nj_manifest *m = c ? nj_catalog_find(c, id) : NULL;
    if (m) {
        struct nj_output *out = nj_output_open(w->scratch, NJ_OUTPUT_RAW,
                                               SIZE, true);
        REQUIRE(out);
        int r = nj_restore_disk(s, c, m, "vda", out, NULL, NULL);
        if (nj_output_close(out, r == 0) == 0 && r == 0) {
            size_t len = 0;
            NJ_CLEANUP_FREE char *got = nj_read_file(AT_FDCWD, w->scratch,
                                                     SIZE, &len);
            CHECK(got && len == SIZE);
            bool same = got && len == SIZE && memcmp(got, truth, SIZE) == 0;
            if (!same)
                fprintf(stderr, "backup %s restored WRONG bytes\n", id);
            CHECK(same);
            ret = same ? 0 : 1;
        }
        unlink(w->scratch);
    }
    if (c)
        nj_catalog_free(c);
    nj_store_close(s);
    return ret;
}

static int verify_outcome(struct world *w)
{
    struct nj_store *s = open_store(w);
    struct nj_catalog *c = nj_catalog_open(s);
    int r = c ? verify_quiet(s, c) : 1;
    if (c)
        nj_catalog_free(c);
    nj_store_close(s);
    return r;
}

static char *get_obj(struct world *w, const char *key, size_t *len)
{
    void *buf = NULL;
    REQUIRE(nj_obj_get(w->obj, key, 1 << 26, &buf, len) == 0);
    return buf;
}

static void put_obj(struct world *w, const char *key, const void *buf,
                    size_t len)
{
    REQUIRE(nj_obj_put(w->obj, key, buf, len, NJ_OBJ_REPLACE, NULL, NULL) ==
            0);
}

/* The key of id's generation-1 object name. */
static char *gen1_key(struct world *w, const char *id, const char *name)
{
    return nj_asprintf("%sbackups/%s/g00000001/%s", w->prefix, id, name);
}

/* The key of a chunk id references (the first data extent's). */
static char *chunk_of(struct world *w, const char *id)
{
    struct nj_store *s = open_store(w);
    struct nj_catalog *c = nj_catalog_open(s);
    REQUIRE(c);
    const struct nj_manifest *m = nj_catalog_find(c, id);
    REQUIRE(m);
    struct nj_index_reader *r = nj_manifest_index_open(s, m, &m->disks[0]);
    REQUIRE(r);
    struct nj_extent e;
    char *key = NULL;
    while (!key && nj_index_reader_next(r, &e) == 1)
        if (e.kind == NJ_EXTENT_DATA) {
            char hex[NJ_DIGEST_HEX_LEN + 1];
            nj_digest_to_hex(&e.digest, hex);
            key = nj_asprintf("%schunks/%.2s/%s", w->prefix, hex, hex);
        }
    nj_index_reader_free(r);
    nj_catalog_free(c);
    nj_store_close(s);
    REQUIRE(key);
    return key;
}

static void test_tamper(struct world *w)
{
    unsigned char *t1 = nj_calloc(1, SIZE), *t2 = nj_calloc(1, SIZE);
    nj_test_fill_random(&w->rng, t1, SIZE / 2);
    nj_test_fill_random(&w->rng, t2 + SIZE / 4, SIZE / 2);
    struct nj_store *s = open_store(w);
    char *id1 = backup_full(s, w, "tamper-one", t1, NULL);
    char *id2 = backup_full(s, w, "tamper-two", t2, NULL);
    nj_store_close(s);
    CHECK(restore_outcome(w, id1, t1) == 0 && restore_outcome(w, id2, t2) == 0);
    CHECK(verify_outcome(w) == 0);

    NJ_CLEANUP_FREE char *c1 = chunk_of(w, id1);
    NJ_CLEANUP_FREE char *c2 = chunk_of(w, id2);
    NJ_CLEANUP_FREE char *m1 = gen1_key(w, id1, NJ_MANIFEST_NAME);
    NJ_CLEANUP_FREE char *m2 = gen1_key(w, id2, NJ_MANIFEST_NAME);
    NJ_CLEANUP_FREE char *i1 = gen1_key(w, id1, "disk0.idx");
    NJ_CLEANUP_FREE char *i2 = gen1_key(w, id2, "disk0.idx");
    REQUIRE(nj_obj_head(w->obj, i1, NULL, NULL, NULL) == 1);
    size_t lc1, lc2, li1, li2, lm1, lm2;
    char *oc1 = get_obj(w, c1, &lc1), *oc2 = get_obj(w, c2, &lc2);
    char *oi1 = get_obj(w, i1, &li1), *oi2 = get_obj(w, i2, &li2);
    char *om1 = get_obj(w, m1, &lm1), *om2 = get_obj(w, m2, &lm2);

    /* Each damage, then the original bytes back. */
    struct { const char *what, *key; const char *body; size_t len; }
        cases[] = {
            { "chunk byte flipped", c1, NULL, 0 },
            { "chunk truncated", c1, oc1, lc1 / 2 },
            { "chunk swapped with another's", c1, oc2, lc2 },
            { "index byte flipped", i1, NULL, 0 },
            { "index truncated", i1, oi1, li1 - 1 },
            { "index swapped with another domain's", i1, oi2, li2 },
            { "manifest swapped with another backup's", m1, om2, lm2 },
        };
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        size_t olen = 0;
        char *orig = get_obj(w, cases[k].key, &olen);
        if (cases[k].body) {
            put_obj(w, cases[k].key, cases[k].body, cases[k].len);
        } else {
            orig[olen / 2] ^= 0x20;
            put_obj(w, cases[k].key, orig, olen);
            orig[olen / 2] ^= 0x20;
        }
        int rr = restore_outcome(w, id1, t1);
        int vr = verify_outcome(w);
        if (rr != 1 || vr == 0)
            fprintf(stderr, "tamper '%s': restore %d, verify %d\n",
                    cases[k].what, rr, vr);
        CHECK(rr == 1);  /* refused, never wrong bytes */
        CHECK(vr != 0);  /* verify names the damage */
        /* The other domain's backup is untouched by the damage. */
        if (cases[k].key != m1)
            CHECK(restore_outcome(w, id2, t2) == 0);
        put_obj(w, cases[k].key, orig, olen);
        free(orig);
    }
    /* A manifest of another backup under this id's generation: refused
     * (the id inside does not match), and so is an old manifest replayed
     * as a newer generation of another backup. */
    NJ_CLEANUP_FREE char *g2 =
        nj_asprintf("%sbackups/%s/g00000002/%s", w->prefix, id2,
                    NJ_MANIFEST_NAME);
    REQUIRE(nj_obj_put(w->obj, g2, om1, lm1, NJ_OBJ_CREATE, NULL, NULL) == 0);
    CHECK(restore_outcome(w, id2, t2) == 1);
    CHECK(verify_outcome(w) != 0);
    REQUIRE(nj_obj_delete(w->obj, g2) == 0);
    CHECK(restore_outcome(w, id1, t1) == 0 && restore_outcome(w, id2, t2) == 0);
    CHECK(verify_outcome(w) == 0);
    free(oc1);
    free(oc2);
    free(oi1);
    free(oi2);
    free(om1);
    free(om2);
    free(id1);
    free(id2);
    free(t1);
    free(t2);
}

/* ---- dir only: a backup and a prune killed before each of their steps ---- */

/* A backup (full when parent is NULL, else an incremental of the blocks
 * dirty marks) of truth into the store at w->url, for a gated child. */
static char *backup_one(struct nj_store *s, struct world *w, const char *uuid,
                        const unsigned char *truth, const char *parent,
                        const struct nj_test_dirty *dirty, const char *id)
{
    struct nj_backup_params bp = {
        .domain_name = "step \"dom\" & co",
        .domain_uuid = uuid,
        .level = parent ? NJ_LEVEL_INC : NJ_LEVEL_FULL,
        .parent = parent,
        .id = id,
    };
    struct nj_backup *b = nj_backup_begin(s, &bp);
    if (!b) {
        fprintf(stderr, "begin: %s\n", nj_error_get());
        return NULL;
    }
    if (nj_test_store_disk(b, w->codec, "vda", truth, SIZE, dirty, !parent,
                           GRID) < 0 ||
        nj_backup_commit(b) < 0) {
        fprintf(stderr, "backup: %s\n", nj_error_get());
        nj_backup_free(b);
        return NULL;
    }
    char *out = nj_strdup(nj_backup_id(b));
    nj_backup_free(b);
    return out;
}

/* Run op in a gated child, killed before its k-th file-system step (k from
 * 0 up), until a child runs to its end; after each kill, check() looks at
 * the store.  Returns the number of kills. */
static unsigned kill_at_every_step(struct world *w, int (*op)(struct world *w,
                                                            void *arg),
                                   void (*check)(struct world *w, void *arg,
                                                 bool finished),
                                   void *arg)
{
    unsigned kills = 0;
    for (uint64_t k = 0;; k++) {
        REQUIRE(k < 20000);
        struct nj_test_gate g;
        pid_t pid = nj_test_gate_fork(&g, false);
        if (pid == 0)
            _exit(op(w, arg) == 0 ? 0 : 1);
        struct nj_test_call call;
        int more = 1;
        for (uint64_t i = 0; i < k && (more = nj_test_gate_next(&g, &call));
             i++)
            nj_test_gate_pass(&g, &call);
        if (more == 1)
            more = nj_test_gate_next(&g, &call);
        int st = nj_test_gate_kill(&g);
        bool finished = more == 0;
        if (finished) {
            CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
        } else {
            CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
            kills++;
        }
        check(w, arg, finished);
        if (finished)
            return kills;
    }
}

struct step_world {
    unsigned char *a, *b;     /* the full's and the incremental's truth */
    struct nj_test_dirty dirty;
    char *full, *inc;         /* committed ids */
    char *rid;                /* the id the killed backup would take */
    unsigned visible;
};

static int step_backup(struct world *w, void *arg)
{
    struct step_world *sw = arg;
    struct nj_store *s = nj_store_open(w->url, 0);
    if (!s)
        return -1;
    char *id = backup_one(s, w, "step-dom", sw->b, sw->full, &sw->dirty,
                          sw->rid);
    nj_store_close(s);
    free(id);
    return id ? 0 : -1;
}

static void step_backup_check(struct world *w, void *arg, bool finished)
{
    struct step_world *sw = arg;
    struct nj_store *s = open_store(w);
    struct nj_catalog *c = nj_catalog_open(s);
    REQUIRE(c);
    CHECK(nj_catalog_broken_count(c) == 0);
    const struct nj_manifest *m = nj_catalog_find(c, sw->full);
    CHECK(m && nj_test_restore_compare(s, c, m, "vda", sw->a, SIZE,
                                       w->scratch) == 0);
    m = nj_catalog_find(c, sw->rid);
    CHECK(!finished || m);
    if (m) {
        sw->visible++;
        CHECK(nj_test_restore_compare(s, c, m, "vda", sw->b, SIZE,
                                      w->scratch) == 0);
    }
    nj_catalog_free(c);
    nj_store_close(s);
    if (!finished) { /* the next attempt takes a new id */
        free(sw->rid);
        sw->rid = nj_backup_id_new();
    }
}

static int step_prune(struct world *w, void *arg)
{
    struct step_world *sw = arg;
    struct nj_store *s = nj_store_open(w->url, 0);
    if (!s)
        return -1;
    int r = nj_prune_remove(s, sw->full);
    if (r < 0)
        fprintf(stderr, "prune: %s\n", nj_error_get());
    nj_store_close(s);
    return r;
}

static void step_prune_check(struct world *w, void *arg, bool finished)
{
    struct step_world *sw = arg;
    struct nj_store *s = open_store(w);
    struct nj_catalog *c = nj_catalog_open(s);
    REQUIRE(c);
    CHECK(nj_catalog_broken_count(c) == 0);
    /* The incremental always restores exactly; the full is there and
     * exact until the prune ends, and gone once it has. */
    const struct nj_manifest *m = nj_catalog_find(c, sw->inc);
    CHECK(m && nj_test_restore_compare(s, c, m, "vda", sw->b, SIZE,
                                       w->scratch) == 0);
    m = nj_catalog_find(c, sw->full);
    CHECK(!finished || !m);
    if (m) {
        sw->visible++;
        CHECK(nj_test_restore_compare(s, c, m, "vda", sw->a, SIZE,
                                      w->scratch) == 0);
    }
    nj_catalog_free(c);
    nj_store_close(s);
}

static void test_every_step(struct world *w)
{
    struct step_world sw = { .a = nj_calloc(1, SIZE), .b = nj_malloc(SIZE) };
    nj_test_fill_random(&w->rng, sw.a, SIZE / 2);
    memcpy(sw.b, sw.a, SIZE);
    nj_test_dirty_init(&sw.dirty, SIZE);
    nj_test_mutate(&w->rng, sw.b, SIZE, &sw.dirty, 6);
    struct nj_store *s = open_store(w);
    sw.full = backup_one(s, w, "step-dom", sw.a, NULL, NULL, NULL);
    REQUIRE(sw.full);
    nj_store_close(s);

    sw.rid = nj_backup_id_new();
    unsigned kills = kill_at_every_step(w, step_backup, step_backup_check,
                                        &sw);
    printf("every step: an incremental killed at each of its %u steps (%u "
           "were committed)\n", kills, sw.visible - 1);
    CHECK(kills > 10);
    sw.inc = sw.rid;
    sw.rid = NULL;

    /* Removing the full merges it into the incremental (a new generation
     * of it), then deletes the full. */
    sw.visible = 0;
    kills = kill_at_every_step(w, step_prune, step_prune_check, &sw);
    printf("every step: a prune merge killed at each of its %u steps\n",
           kills);
    CHECK(kills > 5);
    s = open_store(w);
    struct nj_gc_stats gs;
    CHECK(nj_gc(s, 0, &gs) == 0);
    check_restores(s, w, sw.inc, sw.b);
    nj_store_close(s);
    nj_test_dirty_free(&sw.dirty);
    free(sw.full);
    free(sw.inc);
    free(sw.a);
    free(sw.b);
}

/* ---- gc and writers ---- */

static void put_garbage_chunk(struct nj_store *s, struct world *w,
                              unsigned char *buf, size_t len,
                              struct nj_digest *d)
{
    nj_test_fill_random(&w->rng, buf, len);
    REQUIRE(nj_sha256(buf, len, d) == 0);
    size_t flen = 0;
    const void *frame = nj_codec_encode(w->codec, buf, len, &flen);
    REQUIRE(frame);
    REQUIRE(nj_store_chunk_put(s, d, frame, flen) == 0);
    REQUIRE(nj_store_sync(s) == 0); /* visible by its name from here on */
}

static int chunk_present(struct world *w, const struct nj_digest *d)
{
    char hex[NJ_DIGEST_HEX_LEN + 1];
    nj_digest_to_hex(d, hex);
    NJ_CLEANUP_FREE char *key = nj_asprintf("%schunks/%.2s/%s", w->prefix,
                                            hex, hex);
    return nj_obj_head(w->obj, key, NULL, NULL, NULL);
}

static void test_gc_and_writers(struct world *w)
{
    struct nj_store *s = open_store(w);
    unsigned char *buf = nj_malloc(GRID);
    struct nj_digest g1, g2;
    put_garbage_chunk(s, w, buf, GRID, &g1);
    sleep(2); /* older than a grace of 1 s */

    /* A backup running (its staging registered): gc sweeps nothing. */
    struct nj_backup_params bp = { .domain_name = "gcw", .domain_uuid = "gcw",
                                   .level = NJ_LEVEL_FULL };
    struct nj_backup *b = nj_backup_begin(s, &bp);
    REQUIRE(b);
    struct nj_store *g = open_store(w);
    struct nj_gc_stats gs;
    CHECK(nj_gc(g, 1, &gs) == 0);
    CHECK(gs.chunks_freed == 0);
    CHECK(chunk_present(w, &g1) == 1);
    nj_backup_abort(b);
    nj_backup_free(b);
    /* None running: the garbage goes. */
    CHECK(nj_gc(g, 1, &gs) == 0);
    CHECK(gs.chunks_freed >= 1);
    CHECK(chunk_present(w, &g1) == 0);

    /* A backup that starts while gc holds its lease waits, then dedups
     * against an old unreferenced chunk; that chunk survives gc. */
    put_garbage_chunk(s, w, buf, GRID, &g2);
    sleep(2);
    int gl = nj_store_gc_begin(g);
    REQUIRE(gl >= 0);
    CHECK(nj_store_gc_begin(s) < 0); /* one gc at a time */
    CHECK(strstr(nj_error_get(), "garbage collection is already running"));
    int pfd[2];
    REQUIRE(pipe(pfd) == 0);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        close(pfd[0]);
        struct nj_store *cs = nj_store_open(w->url, 0);
        struct nj_backup_params cp = { .domain_name = "gcw2",
                                       .domain_uuid = "gcw2",
                                       .level = NJ_LEVEL_FULL };
        struct nj_backup *cb = cs ? nj_backup_begin(cs, &cp) : NULL;
        if (!cb)
            _exit(2);
        /* Only now past the wait: say so. */
        if (write(pfd[1], "w", 1) != 1)
            _exit(3);
        /* A disk whose one chunk is g2's content. */
        unsigned char *t = nj_calloc(1, SIZE);
        memcpy(t, buf, GRID);
        if (nj_test_store_disk(cb, w->codec, "vda", t, SIZE, NULL, true,
                               GRID) < 0 ||
            nj_backup_commit(cb) < 0)
            _exit(4);
        _exit(0);
    }
    close(pfd[1]);
    /* While gc's lease is held the writer must not get past its wait.
     * (A slow machine only makes this more certain.) */
    sleep(2);
    char c;
    struct timeval tv = { 0, 0 };
    fd_set set;
    FD_ZERO(&set);
    FD_SET(pfd[0], &set);
    CHECK(select(pfd[0] + 1, &set, NULL, NULL, &tv) == 0);
    nj_store_unlock_domain(gl);
    CHECK(read(pfd[0], &c, 1) == 1);
    close(pfd[0]);
    int st = 0;
    REQUIRE(waitpid(pid, &st, 0) == pid);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    CHECK(nj_gc(g, 1, &gs) == 0);
    CHECK(chunk_present(w, &g2) == 1);
    unsigned char *t = nj_calloc(1, SIZE);
    memcpy(t, buf, GRID);
    struct nj_catalog *cat = nj_catalog_open(g);
    REQUIRE(cat);
    const struct nj_manifest *m = nj_catalog_resolve(cat, "gcw2", "latest");
    CHECK(m != NULL);
    if (m)
        CHECK(nj_test_restore_compare(g, cat, m, "vda", t, SIZE,
                                      w->scratch) == 0);
    nj_catalog_free(cat);
    free(t);
    free(buf);
    nj_store_close(g);
    nj_store_close(s);
}

/* ---- a hostile bucket ---- */

static void test_hostile(struct world *w)
{
    struct nj_store *s = open_store(w);
    unsigned char *truth = nj_calloc(1, SIZE);
    nj_test_fill_random(&w->rng, truth, GRID * 2);
    char *id = backup_full(s, w, "hostile", truth, NULL);

    /* A newer complete generation (what a merge killed before it deleted
     * the old one leaves) wins: copy the manifest into g2. */
    NJ_CLEANUP_FREE char *g1 = nj_asprintf("%sbackups/%s/g00000001/manifest.json",
                                           w->prefix, id);
    NJ_CLEANUP_FREE char *g2 = nj_asprintf("%sbackups/%s/g00000002/manifest.json",
                                           w->prefix, id);
    NJ_CLEANUP_FREE char *i1 = nj_asprintf("%sbackups/%s/g00000001/disk0.idx",
                                           w->prefix, id);
    NJ_CLEANUP_FREE char *i2 = nj_asprintf("%sbackups/%s/g00000002/disk0.idx",
                                           w->prefix, id);
    void *mt = NULL, *it = NULL;
    size_t ml = 0, il = 0;
    REQUIRE(nj_obj_get(w->obj, g1, 1 << 20, &mt, &ml) == 0);
    REQUIRE(nj_obj_get(w->obj, i1, 1 << 24, &it, &il) == 0);
    REQUIRE(nj_obj_put(w->obj, i2, it, il, NJ_OBJ_CREATE, NULL, NULL) == 0);
    REQUIRE(nj_obj_put(w->obj, g2, mt, ml, NJ_OBJ_CREATE, NULL, NULL) == 0);
    nj_store_close(s);
    s = open_store(w);
    /* g1's index damaged: only g2 is read, so the backup still restores. */
    REQUIRE(nj_obj_put(w->obj, i1, "junk", 4, NJ_OBJ_REPLACE, NULL, NULL) == 0);
    check_restores(s, w, id, truth);

    /* Objects outside the layout: a stray key under chunks/ is never
     * deleted by gc; a backup whose objects make no sense is reported
     * unreadable, and gc then refuses to sweep at all. */
    NJ_CLEANUP_FREE char *stray = nj_asprintf("%schunks/zz/not-a-chunk",
                                              w->prefix);
    NJ_CLEANUP_FREE char *odd = nj_asprintf("%sbackups/evil/manifest.json",
                                            w->prefix);
    REQUIRE(nj_obj_put(w->obj, stray, "x", 1, NJ_OBJ_REPLACE, NULL, NULL) == 0);
    struct nj_gc_stats gs;
    CHECK(nj_gc(s, 0, &gs) == 0);
    CHECK(nj_obj_head(w->obj, stray, NULL, NULL, NULL) == 1);
    check_restores(s, w, id, truth);
    REQUIRE(nj_obj_put(w->obj, odd, "{}", 2, NJ_OBJ_REPLACE, NULL, NULL) == 0);
    struct nj_catalog *c = nj_catalog_open(s);
    REQUIRE(c);
    CHECK(nj_catalog_broken_count(c) == 1);
    nj_catalog_free(c);
    CHECK(nj_gc(s, 0, &gs) < 0);
    CHECK(strstr(nj_error_get(), "not sweeping") != NULL);
    nj_obj_delete(w->obj, odd);
    nj_obj_delete(w->obj, stray);
    /* A second publish of an existing id is refused. */
    CHECK(nj_store_staging_create(s, id, "{\"lock\":\"hostile\","
                                         "\"started\":1}") == 0);
    CHECK(nj_store_staging_put(s, id, "manifest.json", mt, ml) == 0);
    CHECK(nj_store_backup_publish(s, id) < 0);
    CHECK(strstr(nj_error_get(), "exists") != NULL);
    CHECK(nj_store_staging_remove(s, id) == 0);
    check_restores(s, w, id, truth);
    free(mt);
    free(it);
    nj_store_close(s);
    free(id);
    free(truth);
}

/* ---- credentials ---- */

static void test_credentials(struct world *w)
{
    NJ_CLEANUP_FREE char *good = nj_strdup(getenv("AWS_SECRET_ACCESS_KEY"));
    setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret", 1);
    NJ_CLEANUP_FREE char *url = nj_asprintf("%s-new", w->url);
    CHECK(nj_store_open(url, NJ_STORE_CREATE) == NULL);
    CHECK(strchr(nj_error_get(), '\n') == NULL);
    CHECK(strstr(nj_error_get(), "403") != NULL ||
          strstr(nj_error_get(), "SignatureDoesNotMatch") != NULL);
    setenv("AWS_SECRET_ACCESS_KEY", good, 1);
    /* Nothing was created under that prefix. */
    CHECK(nj_store_open(url, 0) == NULL);
    CHECK(strstr(nj_error_get(), "not a nightjar store") != NULL);
}

/* Emulated conditional puts: several processes take one domain's lease
 * at the same moment; exactly one holds it (the others see the winner's
 * put after the settle time and back off), and then it restores. */
static void test_lease_race(struct world *w)
{
    enum { N = 6 };
    int go[2], res[2];
    REQUIRE(pipe(go) == 0 && pipe(res) == 0);
    pid_t pids[N];
    for (int i = 0; i < N; i++) {
        pids[i] = fork();
        REQUIRE(pids[i] >= 0);
        if (pids[i] == 0) {
            close(go[1]);
            struct nj_store *c = nj_store_open(w->url, 0);
            char x;
            if (!c || read(go[0], &x, 1) != 0) /* EOF: all released */
                _exit(2);
            int l = nj_backup_lock_domain(c, UUID, "race");
            char r = l >= 0 ? 'w' : 'l';
            if (write(res[1], &r, 1) != 1)
                _exit(2);
            if (l >= 0) {
                sleep(2); /* held while the others look */
                nj_store_unlock_domain(l);
            }
            nj_store_close(c);
            _exit(0);
        }
    }
    close(go[0]);
    close(res[1]);
    close(go[1]); /* every child starts now */
    int winners = 0, losers = 0;
    char r;
    while (read(res[0], &r, 1) == 1)
        r == 'w' ? winners++ : losers++;
    close(res[0]);
    for (int i = 0; i < N; i++) {
        int st = 0;
        REQUIRE(waitpid(pids[i], &st, 0) == pids[i]);
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    printf("lease race: %d winner(s), %d refused\n", winners, losers);
    CHECK(winners == 1 && losers == N - 1);
}

int main(int argc, char **argv)
{
    bool emul = argc > 1 && strcmp(argv[1], "s3-emulated") == 0;
    bool s3 = emul || (argc > 1 && strcmp(argv[1], "s3") == 0);
    if (argc != 2 || (!s3 && strcmp(argv[1], "dir") != 0)) {
        fprintf(stderr, "usage: test-store-obj s3|s3-emulated|dir\n");
        return 2;
    }
    if (emul) {
        /* As on a server that ignores If-None-Match / If-Match: radosgw
         * does not, so the probe would pass; "force" emulates anyway. */
        setenv("NIGHTJAR_S3_NO_CONDITIONAL", "force", 1);
        setenv("NIGHTJAR_S3_SETTLE_MS", "400", 1);
    }
    if (s3 && !nj_test_s3_env()) {
        printf("no test S3 endpoint: run scripts/ceph-start.sh and export "
               "what it prints\n");
        return 77;
    }
    setenv("NIGHTJAR_LEASE_TTL", "3", 1);
    setenv("NIGHTJAR_HOST_ID", "this-host", 1);
    struct world w = { .rng = 0x53335 };
    NJ_CLEANUP_FREE char *dir = nj_test_tmpdir("store-obj");
    w.scratch = nj_asprintf("%s/restore.raw", dir);
    if (s3) {
        w.prefix = nj_asprintf("s3t-%ld-%ld/", (long)time(NULL),
                               (long)getpid());
        w.url = nj_asprintf("s3://nj-test/%.*s", (int)strlen(w.prefix) - 1,
                            w.prefix);
        struct nj_s3_config c = { 0 };
        REQUIRE(nj_s3_config_load(&c, NULL) == 0);
        w.obj = nj_objects_s3_new(&c, "nj-test");
        nj_s3_config_clear(&c);
    } else {
        /* The same objects as files: what this test does to the bucket it
         * does to the directory. */
        NJ_CLEANUP_FREE char *root = nj_asprintf("%s/store", dir);
        w.prefix = nj_strdup("");
        w.url = nj_asprintf("obj+file://%s", root);
        w.obj = nj_objects_dir_new(root);
    }
    REQUIRE(w.obj);
    w.codec = nj_codec_new(1);
    REQUIRE(w.codec);

    if (emul) {
        /* The store says so, for every host that opens it, and a lease
         * taken costs the settle time (a sleep: a lower bound on any
         * machine), as the emulation waits before it looks again. */
        struct nj_store *s = open_store(&w);
        NJ_CLEANUP_FREE char *mk = nj_asprintf("%snightjar-store.json",
                                               w.prefix);
        void *mbuf = NULL;
        size_t mlen = 0;
        REQUIRE(nj_obj_get(w.obj, mk, 65536, &mbuf, &mlen) == 0);
        CHECK(strstr(mbuf, "\"s3_conditional\":false") != NULL);
        free(mbuf);
        unsetenv("NIGHTJAR_S3_NO_CONDITIONAL"); /* the marker suffices */
        struct nj_store *s2 = open_store(&w);
        double t0 = nj_mono_sec();
        int l = nj_backup_lock_domain(s2, UUID, "settle");
        CHECK(l >= 0 && nj_mono_sec() - t0 >= 0.4);
        nj_store_unlock_domain(l);
        /* A release while a renewal is in flight (each holds a settle
         * time, 400 ms of every second here) deletes the lease by the
         * ETag that renewal gave it: released is gone, whenever. */
        NJ_CLEANUP_FREE char *lkey = nj_asprintf("%slocks/%s.lease",
                                                 w.prefix, UUID);
        for (int i = 0; i < 6; i++) {
            l = nj_backup_lock_domain(s2, UUID, "renewed");
            REQUIRE(l >= 0);
            usleep((useconds_t)(700000 + 150000 * i));
            nj_store_unlock_domain(l);
            CHECK(nj_obj_head(w.obj, lkey, NULL, NULL, NULL) == 0);
        }
        nj_store_close(s2);
        nj_store_close(s);
        test_leases(&w);
        test_lease_race(&w);
        test_killed_writer(&w);
        test_parent_known(&w);
        goto out;
    }
    if (s3)
        test_credentials(&w); /* directories have none */
    test_leases(&w);
    test_killed_writer(&w);
    test_gc_and_writers(&w);
    test_hostile(&w);
    test_parent_known(&w);
    test_tamper(&w);
    if (!s3) /* the gates see file-system steps, not requests */
        test_every_step(&w);

out:
    nj_codec_free(w.codec);
    nj_obj_free(w.obj);
    nj_test_rmtree(dir);
    free(w.scratch);
    free(w.url);
    free(w.prefix);
    return nj_test_done(emul ? "test-store-obj s3-emulated"
                        : s3 ? "test-store-obj s3" : "test-store-obj dir");
}
