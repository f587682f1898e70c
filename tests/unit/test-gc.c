/*
 * test-gc: garbage collection of chunks (nj_gc), against sets computed
 * here from the indexes.
 *
 *  (a) Exactness.  After prunes (fulls with children, whole chains) and
 *      chunks put with no backup at all, every chunk file is aged; gc with
 *      grace 0 leaves exactly the chunks some index references, frees
 *      exactly the others, and counts both (kept + freed = files before,
 *      bytes too, references with repeats); every point restores and
 *      verify passes.  A second run frees nothing.  Grace: only chunks
 *      older than the grace period go.  A backup gc cannot read stops it
 *      before it sweeps anything.
 *  (b) Leftovers.  Temporary files in chunk directories older than a day
 *      are removed, younger ones kept.  A chunk moved aside (.gc-<hex>) by
 *      a killed gc goes back under its name when its mark is fresh, and
 *      is removed when old, unless a committed backup references it: then
 *      it goes back whatever its age (a backup deduplicated against it
 *      just before the dead gc moved it).
 *  (c) Kills.  gc, in a gated child (each file-system step waits for the
 *      test: nj_test_gate_fork), SIGKILLed at chosen steps on copies of a
 *      store with thousands of garbage chunks: half aimed at each phase
 *      in turn (before a mark: marking; right after a chunk is moved
 *      aside; before a later move: sweeping), half after a random step;
 *      where each landed is read from the chunk files, must be the phase
 *      aimed at, and every phase must be landed in.  After each kill
 *      every referenced chunk is there,
 *      verify passes and every point restores; the next gc finishes the
 *      job exactly.
 *  (d) A live writer.  A backup that has begun (lock held), written new
 *      chunks and deduplicated against old garbage keeps all of them
 *      through a gc with grace 0 run by another process, while garbage
 *      older than its start goes; it then commits and restores.  The same
 *      with the writer dead: its staging and chunks go.
 *  (e) Concurrency.  A writer commits fulls and incs of several domains
 *      whose content repeats (so they deduplicate against chunks earlier,
 *      now pruned, backups left as aged garbage), and prunes, while
 *      another process runs gc with grace 0 in a loop; the store verifies
 *      along the way, and at the end every backup still there restores
 *      exactly.  It runs until the writer took 800 steps and gc swept 20
 *      times (some freeing chunks), as counted, not for a time.
 *      `test-gc concurrency SWEEPS` runs only this part
 *      (and `test-gc exact|leftovers|live|kills` only that one).
 */
#include "nj-test.h"
#include "nj-io.h"
#include "nj-prune.h"
#include "nj-restore.h"
#include "nj-util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define NDISKS 2
#define DAY (24 * 3600)
#define KILLS 90 /* 45 aimed: 15 at each phase */

static const char *targets[NDISKS] = { "vda", "sdb" };

static void sleep_us(uint64_t us)
{
    struct timespec ts = { (time_t)(us / 1000000), (long)(us % 1000000) * 1000 };
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

static char *scratch_path(const char *dir)
{
    if (access("/dev/shm", W_OK) == 0)
        return nj_asprintf("/dev/shm/nightjar-gc-%ld.raw", (long)getpid());
    return nj_asprintf("%s/restore.raw", dir);
}

/* ---- digests and chunk files ---- */



static bool digests_has(const struct digest_vec *v, const struct nj_digest *d)
{
    return v->len &&
           bsearch(d, v->ptr, v->len, sizeof *v->ptr, nj_test_cmp_digest) != NULL;
}


/* What the chunk directories hold. */
struct chunk_census {
    struct digest_vec chunks; /* sorted */
    uint64_t bytes;
    size_t aside, tmp;        /* .gc-* and .tmp-* files */
};

static void census(const char *store, struct chunk_census *cs)
{
    cs->chunks.len = 0;
    cs->bytes = 0;
    cs->aside = cs->tmp = 0;
    for (int i = 0; i < 256; i++) {
        NJ_CLEANUP_FREE char *p = nj_asprintf("%s/chunks/%02x", store, i);
        DIR *d = opendir(p);
        REQUIRE(d);
        struct dirent *de;
        while ((de = readdir(d)) != NULL) {
            const char *n = de->d_name;
            if (!strcmp(n, ".") || !strcmp(n, ".."))
                continue;
            if (!strncmp(n, ".gc-", 4)) {
                cs->aside++;
                continue;
            }
            if (!strncmp(n, ".tmp-", 5)) {
                cs->tmp++;
                continue;
            }
            struct nj_digest dg;
            REQUIRE(nj_digest_from_hex(n, &dg) == 0);
            struct stat st;
            REQUIRE(fstatat(dirfd(d), n, &st, 0) == 0);
            cs->bytes += (uint64_t)st.st_size;
            digest_vec_append(&cs->chunks, dg);
        }
        closedir(d);
    }
    nj_test_digests_sort_unique(&cs->chunks);
}

static char *chunk_path(const char *store, const struct nj_digest *d,
                        const char *prefix)
{
    char hex[NJ_DIGEST_HEX_LEN + 1];
    nj_digest_to_hex(d, hex);
    return nj_asprintf("%s/chunks/%02x/%s%s", store, d->b[0], prefix, hex);
}

static void set_mtime(const char *path, int64_t t)
{
    struct timespec ts[2] = { { .tv_nsec = UTIME_OMIT }, { .tv_sec = t } };
    REQUIRE(utimensat(AT_FDCWD, path, ts, 0) == 0);
}

/* Set the modification time of every chunk file (not .gc- or .tmp-). */
static void age_chunks(const char *store, int64_t t)
{
    for (int i = 0; i < 256; i++) {
        NJ_CLEANUP_FREE char *p = nj_asprintf("%s/chunks/%02x", store, i);
        DIR *d = opendir(p);
        REQUIRE(d);
        struct dirent *de;
        struct timespec ts[2] = { { .tv_nsec = UTIME_OMIT }, { .tv_sec = t } };
        while ((de = readdir(d)) != NULL)
            if (de->d_name[0] != '.')
                utimensat(dirfd(d), de->d_name, ts, 0);
        closedir(d);
    }
}

/* ---- chains with truths ---- */

struct point {
    char *id;
    int dom;
    unsigned char *truth[NDISKS];
    bool gone;
};

struct chains {
    uint64_t size[NDISKS];
    struct point *pts;
    size_t npts;
    char name[8][32], uuid[8][64];
    int ndoms;
    uint64_t rng;
};

/* Append a chain of n points for a new domain: F I I D I F I ... */
static int chains_add(struct chains *ch, struct nj_store *s,
                      struct nj_codec *codec, size_t n)
{
    int dm = ch->ndoms++;
    REQUIRE(dm < 8);
    snprintf(ch->name[dm], sizeof ch->name[dm], "gc %d", dm);
    snprintf(ch->uuid[dm], sizeof ch->uuid[dm],
             "9c000000-0000-4000-8000-%012d", dm + 1);
    unsigned char *cur[NDISKS];
    struct nj_test_dirty last[NDISKS], since_full[NDISKS];
    for (int k = 0; k < NDISKS; k++) {
        cur[k] = nj_calloc(1, ch->size[k]);
        nj_test_dirty_init(&last[k], ch->size[k]);
        nj_test_dirty_init(&since_full[k], ch->size[k]);
        nj_test_mutate(&ch->rng, cur[k], ch->size[k], &last[k], 8);
    }
    char *last_id = NULL, *full_id = NULL;
    for (size_t i = 0; i < n; i++) {
        enum nj_level l = i % 5 == 0 ? NJ_LEVEL_FULL
                          : i % 5 == 3 ? NJ_LEVEL_DIFF
                                       : NJ_LEVEL_INC;
        struct nj_backup_params bp = {
            .domain_name = ch->name[dm],
            .domain_uuid = ch->uuid[dm],
            .level = l,
            .parent = l == NJ_LEVEL_INC    ? last_id
                      : l == NJ_LEVEL_DIFF ? full_id
                                           : NULL,
        };
        struct nj_backup *b = nj_backup_begin(s, &bp);
        REQUIRE(b);
        for (int k = 0; k < NDISKS; k++)
            REQUIRE(nj_test_store_disk(
                        b, codec, targets[k], cur[k], ch->size[k],
                        l == NJ_LEVEL_DIFF ? &since_full[k] : &last[k],
                        l == NJ_LEVEL_FULL, i % 2 ? 64u << 10 : 256u << 10) ==
                    0);
        REQUIRE(nj_backup_commit(b) == 0);
        ch->pts = nj_realloc_array(ch->pts, ch->npts + 1, sizeof *ch->pts);
        struct point *p = &ch->pts[ch->npts++];
        memset(p, 0, sizeof *p);
        p->id = nj_strdup(nj_backup_id(b));
        p->dom = dm;
        free(last_id);
        last_id = nj_strdup(p->id);
        if (l == NJ_LEVEL_FULL) {
            free(full_id);
            full_id = nj_strdup(p->id);
        }
        for (int k = 0; k < NDISKS; k++) {
            p->truth[k] = nj_malloc(ch->size[k]);
            memcpy(p->truth[k], cur[k], ch->size[k]);
            nj_test_dirty_clear(&last[k]);
            if (l == NJ_LEVEL_FULL)
                nj_test_dirty_clear(&since_full[k]);
            struct nj_test_dirty tmp;
            nj_test_dirty_init(&tmp, ch->size[k]);
            nj_test_mutate(&ch->rng, cur[k], ch->size[k], &tmp,
                           1 + (int)nj_test_rand_below(&ch->rng, 4));
            for (size_t j = 0; j < tmp.nblocks; j++)
                if (tmp.bit[j])
                    last[k].bit[j] = since_full[k].bit[j] = true;
            nj_test_dirty_free(&tmp);
        }
        nj_backup_free(b);
    }
    free(last_id);
    free(full_id);
    for (int k = 0; k < NDISKS; k++) {
        free(cur[k]);
        nj_test_dirty_free(&last[k]);
        nj_test_dirty_free(&since_full[k]);
    }
    return dm;
}

static void chains_free(struct chains *ch)
{
    for (size_t i = 0; i < ch->npts; i++) {
        free(ch->pts[i].id);
        for (int k = 0; k < NDISKS; k++)
            free(ch->pts[i].truth[k]);
    }
    free(ch->pts);
}

static void chains_prune(struct chains *ch, struct nj_store *s, size_t i)
{
    struct point *p = &ch->pts[i];
    int fd = nj_backup_lock_domain(s, ch->uuid[p->dom], ch->name[p->dom]);
    REQUIRE(fd >= 0);
    CHECK(nj_prune_remove(s, p->id) == 0);
    nj_store_unlock_domain(fd);
    p->gone = true;
}

static unsigned g_restores, g_verifies;

static void verify_store(struct nj_store *s, const struct nj_catalog *c)
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
    g_verifies++;
}

/* Every point not pruned restores its truth; the store verifies. */
static void chains_check(const struct chains *ch, struct nj_store *s,
                         const char *scratch, const char *when)
{
    int before = nj_test_failures;
    struct nj_catalog *c = nj_catalog_open(s);
    REQUIRE(c);
    CHECK(nj_catalog_broken_count(c) == 0);
    for (size_t i = 0; i < ch->npts; i++) {
        const struct point *p = &ch->pts[i];
        const struct nj_manifest *m = nj_catalog_find(c, p->id);
        CHECK((m == NULL) == p->gone);
        if (!m)
            continue;
        for (int k = 0; k < NDISKS; k++) {
            CHECK(nj_test_restore_compare(s, c, m, targets[k], p->truth[k],
                                          ch->size[k], scratch) == 0);
            g_restores++;
        }
    }
    verify_store(s, c);
    nj_catalog_free(c);
    if (nj_test_failures != before)
        fprintf(stderr, "  (after: %s)\n", when);
}

/* Put n chunks of fresh random content that no backup references. */
static void put_garbage(struct nj_store *s, struct nj_codec *codec,
                        uint64_t *rng, size_t n, struct digest_vec *out)
{
    unsigned char buf[4096];
    for (size_t i = 0; i < n; i++) {
        size_t len = 64 + nj_test_rand_below(rng, sizeof buf - 64);
        nj_test_fill_random(rng, buf, len);
        struct nj_digest d;
        REQUIRE(nj_sha256(buf, len, &d) == 0);
        size_t flen = 0;
        const void *frame = nj_codec_encode(codec, buf, len, &flen);
        REQUIRE(frame);
        REQUIRE(nj_store_chunk_put(s, &d, frame, flen) == 0);
        if (out)
            digest_vec_append(out, d);
    }
    REQUIRE(nj_store_sync(s) == 0);
}

/* ---- (a) exactness ---- */

static void part_exact(const char *dir)
{
    NJ_CLEANUP_FREE char *store = nj_asprintf("%s/exact", dir);
    NJ_CLEANUP_FREE char *scratch = scratch_path(dir);
    struct nj_store *s = nj_store_open(store, NJ_STORE_CREATE | NJ_STORE_CREATE_V1);
    REQUIRE(s);
    struct nj_codec *codec = nj_codec_new(1);
    struct chains ch = { .size = { (1u << 20) + 4321, (768u << 10) + 17 },
                         .rng = 0x6c1 };
    chains_add(&ch, s, codec, 8);  /* points 0..7 */
    chains_add(&ch, s, codec, 6);  /* 8..13 */
    chains_add(&ch, s, codec, 5);  /* 14..18 */
    /* A full with children, a middle inc, a diff; one chain entirely. */
    chains_prune(&ch, s, 0);
    chains_prune(&ch, s, 2);
    chains_prune(&ch, s, 3);
    for (size_t i = 8; i < 14; i++)
        chains_prune(&ch, s, i);
    chains_prune(&ch, s, 18);
    put_garbage(s, codec, &ch.rng, 300, NULL);
    chains_check(&ch, s, scratch, "building the exact store");

    struct digest_vec ref = { 0 };
    uint64_t refs = 0;
    nj_test_referenced(s, &ref, &refs);
    struct chunk_census before = { 0 }, after = { 0 };
    census(store, &before);
    size_t garbage = 0;
    uint64_t garbage_bytes = 0;
    for (size_t i = 0; i < before.chunks.len; i++)
        if (!digests_has(&ref, &before.chunks.ptr[i])) {
            garbage++;
            NJ_CLEANUP_FREE char *p =
                chunk_path(store, &before.chunks.ptr[i], "");
            struct stat st;
            REQUIRE(stat(p, &st) == 0);
            garbage_bytes += (uint64_t)st.st_size;
        }
    for (size_t i = 0; i < ref.len; i++)
        CHECK(digests_has(&before.chunks, &ref.ptr[i]));
    CHECK(garbage >= 300);

    /* Grace: garbage an hour and a half old goes with grace 3600, the
     * rest is younger and stays. */
    int64_t now = (int64_t)time(NULL);
    age_chunks(store, now - 1800);
    size_t old = 0;
    for (size_t i = 0; i < before.chunks.len; i += 3) {
        NJ_CLEANUP_FREE char *p = chunk_path(store, &before.chunks.ptr[i], "");
        set_mtime(p, now - 5400);
        old += !digests_has(&ref, &before.chunks.ptr[i]);
    }
    struct nj_gc_stats st;
    REQUIRE(nj_gc(s, 3600, &st) == 0);
    CHECK(st.chunks_freed == old);
    CHECK(st.chunks_kept + st.chunks_freed == before.chunks.len);
    census(store, &after);
    CHECK(after.chunks.len == before.chunks.len - old);
    printf("grace 3600: freed %llu of %zu garbage chunks (the older ones)\n",
           (unsigned long long)st.chunks_freed, garbage);

    /* Grace 0 with everything aged: exactly the referenced set stays. */
    census(store, &before);
    uint64_t gb = 0;
    garbage = 0;
    for (size_t i = 0; i < before.chunks.len; i++)
        if (!digests_has(&ref, &before.chunks.ptr[i])) {
            garbage++;
            NJ_CLEANUP_FREE char *p =
                chunk_path(store, &before.chunks.ptr[i], "");
            struct stat sb;
            REQUIRE(stat(p, &sb) == 0);
            gb += (uint64_t)sb.st_size;
        }
    garbage_bytes = gb;
    age_chunks(store, now - 7200);
    REQUIRE(nj_gc(s, 0, &st) == 0);
    census(store, &after);
    CHECK(after.chunks.len == ref.len);
    bool same = after.chunks.len == ref.len;
    for (size_t i = 0; same && i < ref.len; i++)
        same = !nj_test_cmp_digest(&after.chunks.ptr[i], &ref.ptr[i]);
    CHECK(same);
    CHECK(st.chunks_freed == garbage);
    CHECK(st.chunks_kept == ref.len);
    CHECK(st.chunks_kept + st.chunks_freed == before.chunks.len);
    CHECK(st.bytes_freed == garbage_bytes);
    CHECK(st.bytes_kept + st.bytes_freed == before.bytes);
    CHECK(st.bytes_kept == after.bytes);
    CHECK(st.referenced == refs);
    CHECK(st.tmp_removed == 0);
    printf("grace 0: freed %llu chunks (%llu bytes), kept %llu (%llu bytes) "
           "of %zu files; %llu references marked\n",
           (unsigned long long)st.chunks_freed,
           (unsigned long long)st.bytes_freed,
           (unsigned long long)st.chunks_kept,
           (unsigned long long)st.bytes_kept, before.chunks.len,
           (unsigned long long)st.referenced);
    chains_check(&ch, s, scratch, "gc with grace 0");
    /* Again: nothing more to free. */
    REQUIRE(nj_gc(s, 0, &st) == 0);
    CHECK(st.chunks_freed == 0 && st.chunks_kept == ref.len);

    /* A backup gc cannot read: it stops before sweeping. */
    put_garbage(s, codec, &ch.rng, 50, NULL);
    age_chunks(store, now - 7200);
    census(store, &before);
    const char *victim = ch.pts[4].id;
    NJ_CLEANUP_FREE char *man =
        nj_asprintf("%s/backups/%s/%s", store, victim, NJ_MANIFEST_NAME);
    NJ_CLEANUP_FREE char *saved = nj_asprintf("%s.saved", man);
    REQUIRE(rename(man, saved) == 0);
    REQUIRE(nj_gc(s, 0, &st) < 0);
    CHECK(strstr(nj_error_get(), victim) != NULL);
    census(store, &after);
    CHECK(after.chunks.len == before.chunks.len);
    /* An index that does not match its manifest: the same. */
    REQUIRE(rename(saved, man) == 0);
    NJ_CLEANUP_FREE char *idx =
        nj_asprintf("%s/backups/%s/disk1.idx", store, victim);
    int fd = open(idx, O_RDWR);
    REQUIRE(fd >= 0);
    unsigned char byte;
    REQUIRE(pread(fd, &byte, 1, 100) == 1);
    byte ^= 0x40;
    REQUIRE(pwrite(fd, &byte, 1, 100) == 1);
    CHECK(nj_gc(s, 0, &st) < 0);
    census(store, &after);
    CHECK(after.chunks.len == before.chunks.len);
    byte ^= 0x40;
    REQUIRE(pwrite(fd, &byte, 1, 100) == 1);
    close(fd);
    REQUIRE(nj_gc(s, 0, &st) == 0);
    CHECK(st.chunks_freed == 50);
    chains_check(&ch, s, scratch, "gc refusing damaged backups");

    digest_vec_reset(&ref);
    digest_vec_reset(&before.chunks);
    digest_vec_reset(&after.chunks);
    chains_free(&ch);
    nj_codec_free(codec);
    nj_store_close(s);
}

/* ---- (b) leftovers ---- */

static void make_tmp(const char *store, int dir, const char *name, int64_t t)
{
    NJ_CLEANUP_FREE char *p =
        nj_asprintf("%s/chunks/%02x/.tmp-%s", store, dir, name);
    int fd = open(p, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    REQUIRE(fd >= 0);
    REQUIRE(nj_full_write(fd, "partial", 7) == 0);
    close(fd);
    set_mtime(p, t);
}

static bool exists(const char *path)
{
    return access(path, F_OK) == 0;
}

static void part_leftovers(const char *dir)
{
    NJ_CLEANUP_FREE char *store = nj_asprintf("%s/leftovers", dir);
    NJ_CLEANUP_FREE char *scratch = scratch_path(dir);
    struct nj_store *s = nj_store_open(store, NJ_STORE_CREATE | NJ_STORE_CREATE_V1);
    REQUIRE(s);
    struct nj_codec *codec = nj_codec_new(1);
    struct chains ch = { .size = { (512u << 10) + 99, (256u << 10) + 5 },
                         .rng = 0x1ef7 };
    chains_add(&ch, s, codec, 4);
    struct digest_vec garbage = { 0 }, ref = { 0 };
    put_garbage(s, codec, &ch.rng, 4, &garbage);
    nj_test_referenced(s, &ref, NULL);
    int64_t now = (int64_t)time(NULL);
    age_chunks(store, now - 7200);

    /* Temporary files: two days, a day and a minute, 23 hours, fresh. */
    make_tmp(store, 0x00, "chunk-old1", now - 2 * DAY);
    make_tmp(store, 0x7f, "chunk-old2", now - DAY - 60);
    make_tmp(store, 0xff, "chunk-young", now - 23 * 3600);
    make_tmp(store, 0x10, "chunk-fresh", now);

    /* Chunks moved aside by a gc that died:
     *  g0: garbage, marked 100 s ago (fresh for grace 3600): goes back;
     *  g1: garbage, old: removed;
     *  g2: garbage, old, and a new copy under its name: the copy stays;
     *  r0: referenced by a committed backup, old: goes back. */
    char *path[4], *aside[4];
    const struct nj_digest *dg[4] = { &garbage.ptr[0], &garbage.ptr[1],
                                      &garbage.ptr[2], &ref.ptr[ref.len / 2] };
    int64_t when[4] = { now - 100, now - 7200, now - 7200, now - 7200 };
    for (int i = 0; i < 4; i++) {
        path[i] = chunk_path(store, dg[i], "");
        aside[i] = chunk_path(store, dg[i], ".gc-");
        REQUIRE(rename(path[i], aside[i]) == 0);
        set_mtime(aside[i], when[i]);
        if (i == 2) {
            /* A backup wrote the chunk anew meanwhile. */
            size_t len = 0;
            NJ_CLEANUP_FREE char *frame =
                nj_read_file(AT_FDCWD, aside[i], 1 << 20, &len);
            REQUIRE(frame);
            int fd = open(path[i], O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC,
                          0644);
            REQUIRE(fd >= 0 && nj_full_write(fd, frame, len) == 0);
            close(fd);
        }
    }
    /* garbage[3] stays an ordinary old garbage chunk. */
    NJ_CLEANUP_FREE char *g3 = chunk_path(store, &garbage.ptr[3], "");
    struct nj_gc_stats st;
    REQUIRE(nj_gc(s, 3600, &st) == 0);
    CHECK(st.tmp_removed == 2);
    NJ_CLEANUP_FREE char *t1 =
        nj_asprintf("%s/chunks/00/.tmp-chunk-old1", store);
    NJ_CLEANUP_FREE char *t2 =
        nj_asprintf("%s/chunks/7f/.tmp-chunk-old2", store);
    NJ_CLEANUP_FREE char *t3 =
        nj_asprintf("%s/chunks/ff/.tmp-chunk-young", store);
    NJ_CLEANUP_FREE char *t4 =
        nj_asprintf("%s/chunks/10/.tmp-chunk-fresh", store);
    CHECK(!exists(t1) && !exists(t2));
    CHECK(exists(t3) && exists(t4));
    for (int i = 0; i < 4; i++)
        CHECK(!exists(aside[i]));
    CHECK(exists(path[0]));  /* fresh: back */
    CHECK(!exists(path[1])); /* old garbage: gone */
    CHECK(exists(path[2]));  /* the new copy */
    if (!exists(path[3]))
        fprintf(stderr, "a referenced chunk moved aside by a dead gc was "
                "removed by the next one\n");
    CHECK(exists(path[3]));  /* referenced: back, whatever its age */
    CHECK(!exists(g3));
    chains_check(&ch, s, scratch, "gc with leftovers");
    /* With grace 0, the young tmp files still stay (they are under a
     * day old), the garbage that came back goes. */
    age_chunks(store, now - 7200);
    REQUIRE(nj_gc(s, 0, &st) == 0);
    CHECK(st.tmp_removed == 0 && exists(t3) && exists(t4));
    CHECK(!exists(path[0]) && !exists(path[2]) && exists(path[3]));
    chains_check(&ch, s, scratch, "gc after leftovers");
    for (int i = 0; i < 4; i++) {
        free(path[i]);
        free(aside[i]);
    }
    digest_vec_reset(&garbage);
    digest_vec_reset(&ref);
    chains_free(&ch);
    nj_codec_free(codec);
    nj_store_close(s);
}

/* ---- (c) kills ---- */



/* Where a gc kill lands, as read from the chunk directories. */
enum gc_landing {
    GC_MARKING,  /* nothing moved or freed yet */
    GC_ASIDE,    /* a chunk moved aside (.gc-), not yet removed */
    GC_SWEEPING, /* some garbage freed, nothing aside */
    GC_LANDINGS
};

static const char *gc_landing_names[GC_LANDINGS] = {
    "marking: nothing moved or freed yet",
    "sweeping: a chunk moved aside, not yet removed",
    "sweeping: some garbage freed, nothing aside",
};

/* gc's steps: a mark (utimensat of a chunk), a move aside, other. */
enum gc_step { GC_STEP_MARK, GC_STEP_ASIDE, GC_STEP_OTHER };

static enum gc_step gc_step_of(const struct nj_test_call *c)
{
    if (c->kind == NJ_CALL_UTIME && nj_test_path_has(c->path, "chunks/"))
        return GC_STEP_MARK;
    if (c->kind == NJ_CALL_RENAME && nj_test_path_has(c->path2, ".gc-"))
        return GC_STEP_ASIDE;
    return GC_STEP_OTHER;
}

/*
 * Run gc in a gated child on store (each file-system step waits for the
 * test: nj_test_gate_fork) and kill it: before its nth step of kind
 * `kind`; or, with after set, right after that step ran; or, when nth is
 * 0, after step `random_step` of any kind and a random delay of up to a
 * millisecond (anywhere before the next step, which waits).  With
 * random_step 0 too, run it to the end; counts[] gets the steps of each
 * kind seen.  True when killed.
 */
static bool gc_fork(const char *store, uint64_t *rng, enum gc_step kind,
                    uint64_t nth, bool after, uint64_t random_step,
                    uint64_t counts[3])
{
    struct nj_test_gate g;
    pid_t pid = nj_test_gate_fork(&g, false);
    if (pid == 0) {
        struct nj_store *s = nj_store_open(store, 0);
        struct nj_gc_stats st;
        int r = s ? nj_gc(s, 0, &st) : -1;
        if (r < 0)
            fprintf(stderr, "gc child: %s\n", nj_error_get());
        nj_store_close(s);
        _exit(r < 0 ? 3 : 0);
    }
    uint64_t seen[3] = { 0 };
    struct nj_test_call c;
    bool stop = false;
    while (!stop && nj_test_gate_next(&g, &c) == 1) {
        enum gc_step k = gc_step_of(&c);
        seen[k]++;
        if (nth && k == kind && seen[k] == nth && !after)
            break;
        nj_test_gate_pass(&g, &c);
        if (nth && k == kind && seen[k] == nth) {
            /* Let it run to its next step, which waits. */
            if (nj_test_gate_next(&g, &c) == 1)
                seen[gc_step_of(&c)]++;
            stop = true;
        }
        if (!nth && random_step && g.steps == random_step) {
            sleep_us(nj_test_rand_below(rng, 1000));
            stop = true;
        }
    }
    int status = nj_test_gate_kill(&g);
    if (counts)
        memcpy(counts, seen, sizeof seen);
    if (WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
        return true;
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    return false;
}

static void part_kills(const char *dir)
{
    /* Thousands of files copied and swept per kill: on tmpfs when there
     * is one (what a kill leaves is the same; durability is not what
     * this checks). */
    NJ_CLEANUP_FREE char *base = NULL;
    if (access("/dev/shm", W_OK) == 0) {
        base = nj_strdup("/dev/shm/nightjar-gc-kills-XXXXXX");
        REQUIRE(mkdtemp(base));
    } else {
        base = nj_strdup(dir);
    }
    NJ_CLEANUP_FREE char *tmpl = nj_asprintf("%s/kill-template", base);
    NJ_CLEANUP_FREE char *work = nj_asprintf("%s/kill-work", base);
    NJ_CLEANUP_FREE char *scratch = scratch_path(dir);
    struct nj_store *s = nj_store_open(tmpl, NJ_STORE_CREATE | NJ_STORE_CREATE_V1);
    REQUIRE(s);
    struct nj_codec *codec = nj_codec_new(1);
    struct chains ch = { .size = { (768u << 10) + 3, (512u << 10) + 1 },
                         .rng = 0xdead };
    chains_add(&ch, s, codec, 6);
    chains_add(&ch, s, codec, 5);
    chains_prune(&ch, s, 0);
    chains_prune(&ch, s, 8);
    put_garbage(s, codec, &ch.rng, 1500, NULL);
    struct digest_vec ref = { 0 };
    nj_test_referenced(s, &ref, NULL);
    nj_store_close(s);
    age_chunks(tmpl, (int64_t)time(NULL) - 7200);
    make_tmp(tmpl, 0x42, "chunk-stale", (int64_t)time(NULL) - 3 * DAY);
    struct chunk_census cs = { 0 };
    census(tmpl, &cs);
    size_t files = cs.chunks.len;

    /* One run uninterrupted: its steps, and what it leaves. */
    nj_test_copy_store(tmpl, work);
    uint64_t counts[3] = { 0 };
    CHECK(!gc_fork(work, &ch.rng, GC_STEP_OTHER, 0, false, 0, counts));
    census(work, &cs);
    CHECK(cs.chunks.len == ref.len && cs.aside == 0 && cs.tmp == 0);
    uint64_t marks = counts[GC_STEP_MARK], asides = counts[GC_STEP_ASIDE];
    uint64_t total = marks + asides + counts[GC_STEP_OTHER];
    printf("gc over %zu chunk files (%zu referenced): %llu steps (%llu "
           "marks, %llu moves aside)\n", files, ref.len,
           (unsigned long long)total, (unsigned long long)marks,
           (unsigned long long)asides);
    /* Every referenced chunk is marked, every garbage one moved aside. */
    CHECK(marks >= ref.len && asides == files - ref.len);
    REQUIRE(marks > 1 && asides > 1);

    /*
     * Kills: a third aimed at each phase in turn (before a random mark
     * but the first: marking; right after a random move aside: a chunk
     * aside; before a random move aside but the first: sweeping), the
     * rest after a random step and a random delay.
     */
    unsigned kills = 0, aimed = 0, finished = 0;
    unsigned landed[GC_LANDINGS] = { 0 };
    while (kills < KILLS) {
        nj_test_copy_store(tmpl, work);
        int target = kills % 2 == 0 ? (int)(kills / 2 % GC_LANDINGS) : -1;
        bool killed;
        if (target == GC_MARKING)
            killed = gc_fork(work, &ch.rng, GC_STEP_MARK,
                             2 + nj_test_rand_below(&ch.rng, marks - 1),
                             false, 0, NULL);
        else if (target == GC_ASIDE)
            killed = gc_fork(work, &ch.rng, GC_STEP_ASIDE,
                             1 + nj_test_rand_below(&ch.rng, asides), true,
                             0, NULL);
        else if (target == GC_SWEEPING)
            killed = gc_fork(work, &ch.rng, GC_STEP_ASIDE,
                             2 + nj_test_rand_below(&ch.rng, asides - 1),
                             false, 0, NULL);
        else
            killed = gc_fork(work, &ch.rng, GC_STEP_OTHER, 0, false,
                             1 + nj_test_rand_below(&ch.rng, total), NULL);
        if (!killed) {
            /* The last step's kill lands after gc ends: not a kill. */
            CHECK(target < 0);
            finished++;
            continue;
        }
        kills++;
        aimed += target >= 0;
        census(work, &cs);
        enum gc_landing l = cs.aside > 0            ? GC_ASIDE
                            : cs.chunks.len == files ? GC_MARKING
                                                     : GC_SWEEPING;
        landed[l]++;
        if (target >= 0 && (int)l != target) {
            fprintf(stderr, "a gc kill aimed at '%s' landed at '%s'\n",
                    gc_landing_names[target], gc_landing_names[l]);
            CHECK((int)l == target);
        }
        /* Every referenced chunk is there; the store verifies and every
         * point restores. */
        for (size_t i = 0; i < ref.len; i++)
            CHECK(digests_has(&cs.chunks, &ref.ptr[i]));
        struct nj_store *w = nj_store_open(work, 0);
        REQUIRE(w);
        chains_check(&ch, w, scratch, "a killed gc");
        /* The next run finishes the job. */
        struct nj_gc_stats st;
        CHECK(nj_gc(w, 0, &st) == 0);
        census(work, &cs);
        CHECK(cs.chunks.len == ref.len && cs.aside == 0 && cs.tmp == 0);
        if (kills % 10 == 0)
            chains_check(&ch, w, scratch, "gc after a killed gc");
        nj_store_close(w);
    }
    printf("%u gc kills (%u aimed at a phase, the others at a random "
           "step); %u runs finished first\n", kills, aimed, finished);
    for (int i = 0; i < GC_LANDINGS; i++) {
        printf("  %4u  %s\n", landed[i], gc_landing_names[i]);
        /* Every phase was landed in, as observed in the chunk files. */
        if (landed[i] == 0)
            fprintf(stderr, "no gc kill landed in phase '%s'\n",
                    gc_landing_names[i]);
        CHECK(landed[i] > 0);
    }
    digest_vec_reset(&ref);
    digest_vec_reset(&cs.chunks);
    chains_free(&ch);
    nj_codec_free(codec);
    if (strcmp(base, dir) != 0)
        nj_test_rmtree(base);
}

/* ---- (d) a live writer ---- */

struct gc_result {
    int rc;
    struct nj_gc_stats st;
    char err[256];
};

/* gc with grace 0 in another process. */
static struct gc_result gc_elsewhere(const char *store)
{
    int pfd[2];
    REQUIRE(pipe2(pfd, O_CLOEXEC) == 0);
    fflush(NULL);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        struct gc_result r = { 0 };
        struct nj_store *s = nj_store_open(store, 0);
        r.rc = s ? nj_gc(s, 0, &r.st) : -1;
        snprintf(r.err, sizeof r.err, "%s", r.rc < 0 ? nj_error_get() : "");
        nj_store_close(s);
        _exit(nj_full_write(pfd[1], &r, sizeof r) < 0);
    }
    close(pfd[1]);
    struct gc_result r = { .rc = -1 };
    REQUIRE(nj_full_read(pfd[0], &r, sizeof r) == 0);
    close(pfd[0]);
    int status = 0;
    REQUIRE(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    return r;
}

static void part_live_writer(const char *dir)
{
    NJ_CLEANUP_FREE char *store = nj_asprintf("%s/live", dir);
    NJ_CLEANUP_FREE char *scratch = scratch_path(dir);
    struct nj_store *s = nj_store_open(store, NJ_STORE_CREATE | NJ_STORE_CREATE_V1);
    REQUIRE(s);
    struct nj_codec *codec = nj_codec_new(1);
    uint64_t rng = 0x11fe;
    uint64_t size = (640u << 10) + 11;
    unsigned char *old = nj_malloc(size), *truth = nj_malloc(size);
    nj_test_fill_random(&rng, old, size);
    /* Old garbage: a backup of `old`, pruned; the live backup will
     * deduplicate against its first half.  Other old garbage: its second
     * half, which nothing touches. */
    static const char *uuid = "11fe0000-0000-4000-8000-000000000001";
    struct nj_backup_params bp = { .domain_name = "live", .domain_uuid = uuid,
                                   .level = NJ_LEVEL_FULL };
    struct nj_backup *b = nj_backup_begin(s, &bp);
    REQUIRE(b);
    REQUIRE(nj_test_store_disk(b, codec, "vda", old, size, NULL, true,
                               64u << 10) == 0);
    REQUIRE(nj_backup_commit(b) == 0);
    NJ_CLEANUP_FREE char *old_id = nj_strdup(nj_backup_id(b));
    nj_backup_free(b);
    int fd = nj_backup_lock_domain(s, uuid, "live");
    REQUIRE(fd >= 0);
    REQUIRE(nj_prune_remove(s, old_id) == 0);
    nj_store_unlock_domain(fd);
    age_chunks(store, (int64_t)time(NULL) - 7200);
    struct chunk_census before = { 0 };
    census(store, &before);
    size_t old_chunks = before.chunks.len;

    /* The live backup: first half of `old` again (dedup: touched), the
     * rest new; chunks made durable and visible, not yet committed. */
    memcpy(truth, old, size / 2);
    nj_test_fill_random(&rng, truth + size / 2, size - size / 2);
    b = nj_backup_begin(s, &bp);
    REQUIRE(b);
    REQUIRE(nj_test_store_disk(b, codec, "vda", truth, size, NULL, true,
                               64u << 10) == 0);
    REQUIRE(nj_store_sync(s) == 0);
    NJ_CLEANUP_FREE char *staged =
        nj_asprintf("%s/staging/%s", store, nj_backup_id(b));
    struct chunk_census mid = { 0 };
    census(store, &mid);
    size_t new_chunks = mid.chunks.len - old_chunks;
    CHECK(new_chunks > 0);
    /* Past the second of every mark, so grace 0 alone would not spare
     * them. */
    sleep_us(1200 * 1000);
    struct gc_result r = gc_elsewhere(store);
    CHECK(r.rc == 0);
    struct chunk_census after = { 0 };
    census(store, &after);
    /* What the live backup wrote or touched stayed; the untouched half of
     * the old garbage went. */
    size_t untouched = 0, kept_new = 0;
    for (size_t i = 0; i < mid.chunks.len; i++) {
        bool was_old = digests_has(&before.chunks, &mid.chunks.ptr[i]);
        bool there = digests_has(&after.chunks, &mid.chunks.ptr[i]);
        if (!was_old)
            kept_new += there;
    }
    CHECK(kept_new == new_chunks);
    untouched = mid.chunks.len - after.chunks.len;
    CHECK(r.st.chunks_freed == untouched);
    CHECK(untouched > 0 && untouched < old_chunks);
    CHECK(exists(staged));
    printf("live writer: gc elsewhere kept its %zu new and %zu deduplicated "
           "chunks, freed %zu untouched old ones\n", new_chunks,
           old_chunks - untouched, untouched);
    REQUIRE(nj_backup_commit(b) == 0);
    NJ_CLEANUP_FREE char *live_id = nj_strdup(nj_backup_id(b));
    nj_backup_free(b);
    struct nj_catalog *c = nj_catalog_open(s);
    REQUIRE(c);
    const struct nj_manifest *m = nj_catalog_find(c, live_id);
    REQUIRE(m);
    CHECK(nj_test_restore_compare(s, c, m, "vda", truth, size, scratch) == 0);
    verify_store(s, c);
    nj_catalog_free(c);

    /* A writer that died after writing chunks: its staging and chunks go
     * with the next gc. */
    census(store, &before);
    fflush(NULL);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        struct nj_store *s2 = nj_store_open(store, 0);
        struct nj_codec *c2 = nj_codec_new(1);
        unsigned char *junk = nj_malloc(size);
        uint64_t r2 = 0x5eed;
        nj_test_fill_random(&r2, junk, size);
        struct nj_backup_params p2 = { .domain_name = "dead",
                                       .domain_uuid = "dead0000-0000-4000-8000-000000000001",
                                       .level = NJ_LEVEL_FULL };
        struct nj_backup *b2 = s2 ? nj_backup_begin(s2, &p2) : NULL;
        if (!b2 || nj_test_store_disk(b2, c2, "vda", junk, size, NULL, true,
                                      64u << 10) < 0 ||
            nj_store_sync(s2) < 0)
            _exit(3);
        raise(SIGKILL);
        _exit(4);
    }
    int status = 0;
    REQUIRE(waitpid(pid, &status, 0) == pid);
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    census(store, &mid);
    CHECK(mid.chunks.len > before.chunks.len);
    sleep_us(1200 * 1000);
    r = gc_elsewhere(store);
    CHECK(r.rc == 0);
    CHECK(r.st.chunks_freed == mid.chunks.len - before.chunks.len);
    census(store, &after);
    CHECK(after.chunks.len == before.chunks.len);
    NJ_CLEANUP_FREE char *sdir = nj_asprintf("%s/staging", store);
    DIR *d = opendir(sdir);
    REQUIRE(d);
    struct dirent *de;
    size_t left = 0;
    while ((de = readdir(d)) != NULL)
        left += de->d_name[0] != '.';
    closedir(d);
    CHECK(left == 0);

    digest_vec_reset(&before.chunks);
    digest_vec_reset(&mid.chunks);
    digest_vec_reset(&after.chunks);
    free(old);
    free(truth);
    nj_codec_free(codec);
    nj_store_close(s);
}

/* ---- (e) concurrency ---- */

#define CW_DOMS 4
#define CW_POOL 6
#define CW_LIVE_MAX 24

struct cw_backup {
    char *id;
    int dom;
    unsigned char *truth;
};

struct cw_dom {
    char name[32], uuid[64];
    char *latest; /* its newest live backup, for incs */
    unsigned char *cur;
    struct nj_test_dirty dirty;
};

struct gc_loop_result {
    unsigned rounds, ok, refused;
    uint64_t freed, kept_last;
    char last_refusal[200];
};

/* The gc process: gc with grace 0 until the stop pipe closes; after
 * each round one byte on progress_fd: 'f' swept and freed something, 's'
 * swept, 'r' refused. */
static void gc_loop(const char *store, int stop_fd, int out_fd,
                    int progress_fd)
{
    struct nj_store *s = nj_store_open(store, 0);
    if (!s)
        _exit(3);
    struct gc_loop_result r = { 0 };
    for (;;) {
        struct pollfd pf = { .fd = stop_fd, .events = POLLIN };
        if (poll(&pf, 1, 0) > 0)
            break;
        struct nj_gc_stats st;
        r.rounds++;
        char what = 'r';
        if (nj_gc(s, 0, &st) == 0) {
            r.ok++;
            r.freed += st.chunks_freed;
            r.kept_last = st.chunks_kept;
            what = st.chunks_freed ? 'f' : 's';
        } else {
            /* A backup pruned or replaced while gc read the catalog:
             * gc refuses to sweep on a guess. */
            r.refused++;
            snprintf(r.last_refusal, sizeof r.last_refusal, "%s",
                     nj_error_get());
        }
        if (write(progress_fd, &what, 1) != 1)
            _exit(4);
    }
    nj_store_close(s);
    _exit(nj_full_write(out_fd, &r, sizeof r) < 0);
}

/* Begin a backup, retrying while the lock is held for a moment by gc
 * (which tries each domain lock that a staging directory names). */
static struct nj_backup *cw_begin(struct nj_store *s,
                                  const struct nj_backup_params *p,
                                  unsigned *retries)
{
    for (int i = 0; i < 2000; i++) {
        struct nj_backup *b = nj_backup_begin(s, p);
        if (b)
            return b;
        if (!strstr(nj_error_get(), "already being backed up"))
            break;
        (*retries)++;
        sleep_us(500);
    }
    return NULL;
}

static int cw_lock(struct nj_store *s, const struct cw_dom *d,
                   unsigned *retries)
{
    for (int i = 0; i < 2000; i++) {
        int fd = nj_backup_lock_domain(s, d->uuid, d->name);
        if (fd >= 0)
            return fd;
        (*retries)++;
        sleep_us(500);
    }
    return -1;
}

/* Age every chunk file no committed backup references, as if it had lain
 * there for two hours (only this writer commits, so the set is exact);
 * garbage gets those digests. */
static void cw_age_garbage(struct nj_store *s, const char *store,
                           struct digest_vec *garbage)
{
    garbage->len = 0;
    struct digest_vec ref = { 0 };
    nj_test_referenced(s, &ref, NULL);
    struct timespec ts[2] = { { .tv_nsec = UTIME_OMIT },
                              { .tv_sec = time(NULL) - 7200 } };
    for (int i = 0; i < 256; i++) {
        NJ_CLEANUP_FREE char *p = nj_asprintf("%s/chunks/%02x", store, i);
        DIR *d = opendir(p);
        REQUIRE(d);
        struct dirent *de;
        while ((de = readdir(d)) != NULL) {
            struct nj_digest dg;
            if (de->d_name[0] == '.' ||
                nj_digest_from_hex(de->d_name, &dg) < 0 ||
                digests_has(&ref, &dg))
                continue;
            if (utimensat(dirfd(d), de->d_name, ts, 0) == 0)
                digest_vec_append(garbage, dg);
        }
        closedir(d);
    }
    nj_test_digests_sort_unique(garbage);
    digest_vec_reset(&ref);
}

/* References of backup m's disk to chunks in set. */
static unsigned refs_into(struct nj_store *s, const struct nj_manifest *m,
                          const struct digest_vec *set)
{
    const struct nj_manifest_disk *md = &m->disks[0];
    struct nj_stream *in = nj_store_backup_open(s, m->id, md->index);
    REQUIRE(in);
    struct nj_index_reader *r =
        nj_index_reader_open(in, md->index, &md->index_digest, md->size);
    REQUIRE(r);
    unsigned n = 0;
    struct nj_extent e;
    while (nj_index_reader_next(r, &e) == 1)
        n += e.kind == NJ_EXTENT_DATA && digests_has(set, &e.digest);
    nj_index_reader_free(r);
    return n;
}

/* Drain the gc process's progress bytes (non-blocking). */
static void cw_progress(int fd, unsigned *swept, unsigned *freeing)
{
    char buf[256];
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0)
        for (ssize_t i = 0; i < n; i++) {
            *swept += buf[i] != 'r';
            *freeing += buf[i] == 'f';
        }
}

/*
 * The writer goes on until it has taken at least min_steps steps and gc
 * has swept at least min_sweeps times, some of them freeing chunks: counts
 * of what was seen, not an amount of time.  The failsafe (minutes) is a
 * failure.
 */
static void part_concurrency(const char *dir, unsigned min_sweeps)
{
    const unsigned min_steps = 800;
    const double failsafe = 600;
    NJ_CLEANUP_FREE char *store = nj_asprintf("%s/concurrent", dir);
    NJ_CLEANUP_FREE char *scratch = scratch_path(dir);
    struct nj_store *s = nj_store_open(store, NJ_STORE_CREATE | NJ_STORE_CREATE_V1);
    REQUIRE(s);
    struct nj_codec *codec = nj_codec_new(1);
    uint64_t rng = 0xc0c0;
    uint64_t size = (512u << 10) + 4097;
    unsigned char *pool[CW_POOL];
    for (int i = 0; i < CW_POOL; i++) {
        pool[i] = nj_malloc(size);
        nj_test_fill_random(&rng, pool[i], size);
    }
    struct cw_dom doms[CW_DOMS];
    for (int i = 0; i < CW_DOMS; i++) {
        memset(&doms[i], 0, sizeof doms[i]);
        snprintf(doms[i].name, sizeof doms[i].name, "writer %d", i);
        snprintf(doms[i].uuid, sizeof doms[i].uuid,
                 "c0c00000-0000-4000-8000-%012d", i + 1);
        doms[i].cur = nj_malloc(size);
        nj_test_dirty_init(&doms[i].dirty, size);
    }
    struct cw_backup *live = NULL;
    size_t nlive = 0;
    struct digest_vec garbage = { 0 }; /* aged, unreferenced */
    unsigned revived = 0;

    int stop[2], res[2], prog[2];
    REQUIRE(pipe2(stop, O_CLOEXEC) == 0 && pipe2(res, O_CLOEXEC) == 0 &&
            pipe2(prog, O_CLOEXEC | O_NONBLOCK) == 0);
    fflush(NULL);
    pid_t gc_pid = fork();
    REQUIRE(gc_pid >= 0);
    if (gc_pid == 0) {
        close(stop[1]);
        close(res[0]);
        close(prog[0]);
        /* Blocking writes: the parent drains the pipe as it goes. */
        REQUIRE(fcntl(prog[1], F_SETFL, 0) == 0);
        gc_loop(store, stop[0], res[1], prog[1]);
    }
    close(stop[0]);
    close(res[1]);
    close(prog[1]);
    unsigned swept = 0, freeing = 0;

    unsigned commits = 0, fulls = 0, incs = 0, prunes = 0, retries = 0;
    unsigned verifies = 0;
    uint64_t dedup = 0;
    double t0 = nj_mono_sec();
    unsigned char *reuse = nj_malloc(size);
    int reuse_dom = -1; /* a pruned backup's content, to back up again */
    for (unsigned step = 0;; step++) {
        cw_progress(prog[0], &swept, &freeing);
        if (step >= min_steps && swept >= min_sweeps && freeing > 0)
            break;
        if (nj_mono_sec() - t0 > failsafe) {
            fprintf(stderr, "concurrency: after %.0f s (the failsafe), %u "
                    "steps, gc swept %u times (%u freeing): a failure\n",
                    failsafe, step, swept, freeing);
            CHECK(!"concurrency reached its counts before the failsafe");
            break;
        }
        int di = (int)nj_test_rand_below(&rng, CW_DOMS);
        if (reuse_dom >= 0 && di == reuse_dom)
            di = (di + 1) % CW_DOMS;
        struct cw_dom *d = &doms[di];
        uint64_t r = nj_test_rand_below(&rng, 100);
        if (reuse_dom < 0 && nlive > 0 && (nlive >= CW_LIVE_MAX || r < 30)) {
            /* Prune a random backup, then age what became garbage. */
            size_t k = nj_test_rand_below(&rng, nlive);
            struct cw_backup *x = &live[k];
            struct cw_dom *xd = &doms[x->dom];
            int fd = cw_lock(s, xd, &retries);
            REQUIRE(fd >= 0);
            CHECK(nj_prune_remove(s, x->id) == 0);
            nj_store_unlock_domain(fd);
            if (xd->latest && !strcmp(xd->latest, x->id)) {
                free(xd->latest);
                xd->latest = NULL;
            }
            /* Most of the time, the very next backup is of the same data
             * under another domain: it meets the chunks just made garbage
             * while gc is after them. */
            if (nj_test_rand_below(&rng, 4) != 0) {
                memcpy(reuse, x->truth, size);
                reuse_dom = x->dom;
            }
            free(x->id);
            free(x->truth);
            live[k] = live[--nlive];
            prunes++;
            cw_age_garbage(s, store, &garbage);
        } else {
            /* A full of a pruned backup's data or of a pool version
             * (dedup against whatever is left of it, garbage included)
             * with a few new bytes, or an inc. */
            bool full = reuse_dom >= 0 || !d->latest || r < 70;
            if (reuse_dom >= 0) {
                memcpy(d->cur, reuse, size);
                nj_test_dirty_clear(&d->dirty);
                reuse_dom = -1;
            } else if (full) {
                memcpy(d->cur, pool[nj_test_rand_below(&rng, CW_POOL)], size);
                nj_test_dirty_clear(&d->dirty);
            }
            nj_test_mutate(&rng, d->cur, size, &d->dirty,
                           1 + (int)nj_test_rand_below(&rng, 2));
            struct nj_backup_params bp = {
                .domain_name = d->name,
                .domain_uuid = d->uuid,
                .level = full ? NJ_LEVEL_FULL : NJ_LEVEL_INC,
                .parent = full ? NULL : d->latest,
            };
            struct nj_backup *b = cw_begin(s, &bp, &retries);
            REQUIRE(b);
            REQUIRE(nj_test_store_disk(b, codec, "vda", d->cur, size,
                                       &d->dirty, full, 64u << 10) == 0);
            REQUIRE(nj_backup_commit(b) == 0);
            const struct nj_manifest *m = nj_backup_manifest(b);
            dedup += m->disks[0].stats.chunks_dedup;
            /* Chunks that were aged garbage when this backup began: it
             * deduplicated against them (racing gc), or wrote them again
             * after gc took them. */
            revived += refs_into(s, m, &garbage);
            live = nj_realloc_array(live, nlive + 1, sizeof *live);
            live[nlive].id = nj_strdup(nj_backup_id(b));
            live[nlive].dom = di;
            live[nlive].truth = nj_malloc(size);
            memcpy(live[nlive].truth, d->cur, size);
            nlive++;
            free(d->latest);
            d->latest = nj_strdup(nj_backup_id(b));
            nj_test_dirty_clear(&d->dirty);
            nj_backup_free(b);
            commits++;
            fulls += full;
            incs += !full;
        }
        /* Along the way: the committed backups' chunks are all there. */
        if (step % 8 == 7) {
            struct nj_catalog *c = nj_catalog_open(s);
            REQUIRE(c);
            int before = nj_test_failures;
            verify_store(s, c);
            if (nj_test_failures != before)
                fprintf(stderr, "  (verify during concurrent gc, step %u)\n",
                        step);
            nj_catalog_free(c);
            verifies++;
        }
    }
    close(stop[1]);
    struct gc_loop_result gr = { 0 };
    /* Drain progress while gc ends its round, so it is never blocked. */
    for (;;) {
        struct pollfd pf[2] = { { .fd = res[0], .events = POLLIN },
                                { .fd = prog[0], .events = POLLIN } };
        REQUIRE(poll(pf, 2, -1) > 0 || errno == EINTR);
        cw_progress(prog[0], &swept, &freeing);
        if (pf[0].revents)
            break;
    }
    REQUIRE(nj_full_read(res[0], &gr, sizeof gr) == 0);
    close(res[0]);
    close(prog[0]);
    int status = 0;
    REQUIRE(waitpid(gc_pid, &status, 0) == gc_pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    double took = nj_mono_sec() - t0;

    /* Every backup still there restores exactly; the store verifies. */
    struct nj_catalog *c = nj_catalog_open(s);
    REQUIRE(c);
    CHECK(nj_catalog_count(c) == nlive);
    for (size_t i = 0; i < nlive; i++) {
        const struct nj_manifest *m = nj_catalog_find(c, live[i].id);
        CHECK(m != NULL);
        if (m)
            CHECK(nj_test_restore_compare(s, c, m, "vda", live[i].truth, size,
                                          scratch) == 0);
        g_restores++;
    }
    verify_store(s, c);
    nj_catalog_free(c);
    printf("concurrency: %.1f s, %u commits (%u fulls, %u incs; %llu chunks "
           "deduplicated, %u references to aged garbage), %u prunes, %u "
           "verifies, %u lock retries; gc: %u rounds, %u swept (%llu chunks "
           "freed), %u refused\n", took, commits, fulls, incs,
           (unsigned long long)dedup, revived, prunes, verifies, retries,
           gr.rounds, gr.ok, (unsigned long long)gr.freed, gr.refused);
    if (gr.refused)
        printf("  last refusal: %s\n", gr.last_refusal);
    CHECK(commits > 0 && prunes > 0);
    CHECK(gr.ok >= min_sweeps && gr.freed > 0);

    for (size_t i = 0; i < nlive; i++) {
        free(live[i].id);
        free(live[i].truth);
    }
    free(live);
    free(reuse);
    digest_vec_reset(&garbage);
    for (int i = 0; i < CW_DOMS; i++) {
        free(doms[i].latest);
        free(doms[i].cur);
        nj_test_dirty_free(&doms[i].dirty);
    }
    for (int i = 0; i < CW_POOL; i++)
        free(pool[i]);
    nj_codec_free(codec);
    nj_store_close(s);
}

int main(int argc, char **argv)
{
    char *dir = nj_test_tmpdir("gc");
    const char *only = argc > 1 ? argv[1] : NULL;
    if (!only || !strcmp(only, "exact"))
        part_exact(dir);
    if (!only || !strcmp(only, "leftovers"))
        part_leftovers(dir);
    if (!only || !strcmp(only, "live"))
        part_live_writer(dir);
    if (!only || !strcmp(only, "concurrency"))
        part_concurrency(dir, argc > 2 ? (unsigned)atoi(argv[2]) : 20);
    if (!only || !strcmp(only, "kills"))
        part_kills(dir);
    printf("%u disk restores compared, %u verifies\n", g_restores,
           g_verifies);
    nj_test_rmtree(dir);
    free(dir);
    return nj_test_done("test-gc");
}
