/*
 * test-crash: a writer process builds one domain's chain (fulls and
 * incrementals of two disks, written by two threads at once) into one
 * store in a loop, and is killed with
 * SIGKILL at chosen steps, 126 times.  After every kill
 * the store must open with no unreadable backup, verify clean, hold one
 * linear chain whose step numbers run 1..N without a gap or a repeat (so
 * every writer run continued from the last committed backup), and restore
 * its points exactly: every point not restored before, the newest and two
 * at random after each kill, all of them after every tenth kill and at the
 * end (verify reads every chunk and index of every point each time, so an
 * older point cannot change unnoticed in between).  The staging directory of a killed writer must be
 * gone as soon as the next run's backup has begun; the exception the
 * format allows (docs/FORMAT.md 6.4) is an orphan with no owner record,
 * left by a kill between mkdir and the owner record, which may stay for a
 * day: half of those are aged a day, and then they must go too.
 *
 * Step n's content is a pure function of (seed, n): a retried step writes
 * the same chunks as the attempt that was killed, so dedup meets whatever
 * that attempt left behind.  After each commit the writer records the
 * point's truth in truth/<id> (written, fsync'ed, renamed), so a truth file
 * exists only for a committed id.  A kill between the commit and that
 * record leaves a committed point with no truth file: it must verify like
 * the others and is compared with the replayed content instead.
 *
 * The writer runs gated (nj_test_gate_fork): every file-system step it
 * takes waits for the test, so kills land at chosen steps whatever the
 * machine's speed.  Half of them are aimed at each phase in turn (before
 * the step that ends it: the lock, the owner record, the first and the
 * second index, the step after the second index, the manifest, the
 * publishing rename, the truth file and its rename), half follow a random
 * step of the run.  Where each kill landed is read from what it left
 * behind, before any cleanup, and must be the phase aimed at; at the end
 * every phase must have been landed in.
 *
 * A kill leaves the page cache intact: this test checks the order in which
 * names become visible, not durability across a power loss.
 */
#include "nj-test.h"
#include "nj-io.h"
#include "nj-restore.h"
#include "nj-util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define NDISKS 2
#define FULL_EVERY 5
#define KILLS 126 /* 63 aimed: 7 at each phase */
#define SWEEP_EVERY 10  /* restore every point this often */
#define DOMAIN_NAME "crash 'test'"
#define DOMAIN_UUID "6b1d0c4e-6a0f-4c39-9a55-3c7e2f1d0a01"

static const char *targets[NDISKS] = { "vda", "sdb" };

struct world {
    uint64_t seed;
    uint64_t size[NDISKS];
    char *dir, *store, *truthdir, *scratch;
};

/* ---- the content of each step ---- */

static enum nj_level step_level(uint64_t n)
{
    return (n - 1) % FULL_EVERY == 0 ? NJ_LEVEL_FULL : NJ_LEVEL_INC;
}

static uint64_t step_grid(uint64_t n)
{
    static const uint64_t grids[] = { 256u << 10, 64u << 10, 1u << 20 };
    return grids[n % NJ_ARRAY_SIZE(grids)];
}

/* Apply step n's writes to state, marking them in dirty (cleared first). */
static void step_apply(const struct world *w, uint64_t n,
                       unsigned char *const *state, struct nj_test_dirty *dirty)
{
    uint64_t rng = w->seed * 0x9e3779b97f4a7c15ULL + n;
    for (int k = 0; k < NDISKS; k++) {
        nj_test_dirty_clear(&dirty[k]);
        int nops = n == 1 ? 12 : 1 + (int)nj_test_rand_below(&rng, 3);
        nj_test_mutate(&rng, state[k], w->size[k], &dirty[k], nops);
    }
}

static int step_of(const struct nj_manifest *m, uint64_t *n)
{
    if (!m->checkpoint_name || strncmp(m->checkpoint_name, "step-", 5) != 0)
        return -1;
    return nj_parse_u64(m->checkpoint_name + 5, n);
}

static uint64_t total_size(const struct world *w)
{
    uint64_t t = 0;
    for (int k = 0; k < NDISKS; k++)
        t += w->size[k];
    return t;
}

/* Read truth/<id> into state: 0, 1 when there is none, -1 on error. */
static int truth_load(const struct world *w, const char *id,
                      unsigned char *const *state)
{
    NJ_CLEANUP_FREE char *path = nj_asprintf("%s/%s", w->truthdir, id);
    NJ_CLEANUP_CLOSE int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT)
        return 1;
    if (fd < 0)
        return nj_error_errno(errno, "open '%s'", path);
    struct stat st;
    if (fstat(fd, &st) < 0 || (uint64_t)st.st_size != total_size(w))
        return nj_error("truth '%s' has the wrong size", path);
    for (int k = 0; k < NDISKS; k++)
        if (nj_full_read(fd, state[k], (size_t)w->size[k]) < 0)
            return nj_error("read truth '%s'", path);
    return 0;
}

static bool truth_exists(const struct world *w, const char *id)
{
    NJ_CLEANUP_FREE char *path = nj_asprintf("%s/%s", w->truthdir, id);
    return access(path, F_OK) == 0;
}

/* NULL when path is a staging directory the format lets survive a new
 * begin: no owner record, nothing but temporary files, under a day old. */
static const char *orphan_problem(const char *path)
{
    struct stat st;
    if (stat(path, &st) < 0)
        return NULL; /* gone meanwhile */
    if (time(NULL) - st.st_mtime > 24 * 3600)
        return "an orphan older than a day";
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
            why = "an orphan holding more than temporary files";
    }
    closedir(d);
    return why;
}

/* ---- the writer (child process) ---- */

NJ_PRINTF(1, 2) static void writer_die(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "writer: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, ": %s\n", nj_error_get());
    _exit(2);
}

/* Durably record the truth of a committed point as truth/<id>. */
static void truth_record(const struct world *w, const char *id,
                         unsigned char *const *state)
{
    NJ_CLEANUP_FREE char *tmp = nj_asprintf("%s/.tmp-%s", w->truthdir, id);
    NJ_CLEANUP_FREE char *path = nj_asprintf("%s/%s", w->truthdir, id);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        writer_die("create '%s'", tmp);
    for (int k = 0; k < NDISKS; k++)
        if (nj_full_write(fd, state[k], (size_t)w->size[k]) < 0)
            writer_die("write '%s'", tmp);
    if (fsync(fd) < 0 || close(fd) < 0 || rename(tmp, path) < 0)
        writer_die("publish '%s'", path);
    int dfd = open(w->truthdir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || fsync(dfd) < 0)
        writer_die("fsync '%s'", w->truthdir);
    close(dfd);
}

/*
 * Right after begin: every other staging directory must be one the format
 * lets live on, an orphan with no owner record (the writer died between
 * its mkdir and its owner record) holding at most temporary files, less
 * than a day old.  One that has an owner is of this domain (the only one)
 * and should have been removed; an older orphan too.
 */
static void writer_check_staging(const struct world *w, const char *id)
{
    NJ_CLEANUP_FREE char *path = nj_asprintf("%s/staging", w->store);
    DIR *d = opendir(path);
    if (!d)
        writer_die("open '%s'", path);
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..") ||
            !strcmp(de->d_name, id))
            continue;
        NJ_CLEANUP_FREE char *sub = nj_asprintf("%s/%s", path, de->d_name);
        const char *why = orphan_problem(sub);
        if (why) {
            fprintf(stderr, "writer: staging '%s' of a killed run survived "
                    "the begin of backup '%s': %s\n", de->d_name, id, why);
            _exit(3);
        }
    }
    closedir(d);
}

struct disk_job {
    const struct world *w;
    struct nj_backup *b;
    int k;
    const unsigned char *state;
    const struct nj_test_dirty *dirty;
    struct nj_codec *codec; /* the thread's own */
    bool full;
    uint64_t grid;
    int rc;
    char err[512];
};

static void *disk_job_run(void *p)
{
    struct disk_job *j = p;
    j->rc = nj_test_store_disk(j->b, j->codec, targets[j->k], j->state,
                               j->w->size[j->k], j->dirty, j->full, j->grid);
    if (j->rc < 0)
        snprintf(j->err, sizeof j->err, "%s", nj_error_get());
    return NULL;
}

/* Never returns: loops until killed. */
static void writer_run(const struct world *w, int ready_fd)
{
    struct nj_store *s = nj_store_open(w->store, 0);
    if (!s)
        writer_die("open store");
    struct nj_catalog *c = nj_catalog_open(s);
    if (!c)
        writer_die("open catalog");
    /* The last committed step, and the newest point with a truth file. */
    uint64_t last = 0, loaded = 0;
    char *parent = NULL;
    const char *loaded_id = NULL;
    for (size_t i = 0; i < nj_catalog_count(c); i++) {
        const struct nj_manifest *m = nj_catalog_get(c, i);
        uint64_t n = 0;
        if (step_of(m, &n) < 0)
            writer_die("backup '%s' has no step number", m->id);
        if (n > last) {
            last = n;
            free(parent);
            parent = nj_strdup(m->id);
        }
        if (n > loaded && truth_exists(w, m->id)) {
            loaded = n;
            loaded_id = m->id;
        }
    }
    unsigned char *state[NDISKS];
    struct nj_test_dirty dirty[NDISKS];
    for (int k = 0; k < NDISKS; k++) {
        state[k] = nj_calloc(1, (size_t)w->size[k]);
        nj_test_dirty_init(&dirty[k], w->size[k]);
    }
    if (loaded_id && truth_load(w, loaded_id, state) != 0)
        writer_die("load truth of '%s'", loaded_id);
    /* Points committed after it lost their truth to a kill: replay. */
    for (uint64_t n = loaded + 1; n <= last; n++)
        step_apply(w, n, state, dirty);
    nj_catalog_free(c);
    if (write(ready_fd, "r", 1) != 1)
        writer_die("signal ready");
    close(ready_fd);

    struct disk_job jobs[NDISKS];
    for (int k = 0; k < NDISKS; k++) {
        jobs[k] = (struct disk_job){ .w = w, .k = k, .state = state[k],
                                     .dirty = &dirty[k],
                                     .codec = nj_codec_new(1) };
        if (!jobs[k].codec)
            writer_die("codec");
    }
    for (;;) {
        uint64_t n = last + 1;
        enum nj_level level = step_level(n);
        bool full = level == NJ_LEVEL_FULL;
        step_apply(w, n, state, dirty);
        char cp[32];
        snprintf(cp, sizeof cp, "step-%llu", (unsigned long long)n);
        struct nj_backup_params bp = {
            .domain_name = DOMAIN_NAME,
            .domain_uuid = DOMAIN_UUID,
            .level = level,
            .parent = full ? NULL : parent,
            .checkpoint_name = cp,
        };
        struct nj_backup *b = nj_backup_begin(s, &bp);
        if (!b)
            writer_die("begin step %llu", (unsigned long long)n);
        writer_check_staging(w, nj_backup_id(b));
        /* The disks are written at once, as the datapath does: their
         * chunks meet in one pending set, some of them identical. */
        pthread_t tids[NDISKS];
        for (int k = 0; k < NDISKS; k++) {
            jobs[k].b = b;
            jobs[k].full = full;
            jobs[k].grid = step_grid(n);
            if (pthread_create(&tids[k], NULL, disk_job_run, &jobs[k]) != 0)
                writer_die("start a thread");
        }
        for (int k = 0; k < NDISKS; k++) {
            pthread_join(tids[k], NULL);
            if (jobs[k].rc < 0) {
                nj_error("%s", jobs[k].err);
                writer_die("store disk '%s'", targets[k]);
            }
        }
        if (nj_backup_commit(b) < 0)
            writer_die("commit step %llu", (unsigned long long)n);
        truth_record(w, nj_backup_id(b), state);
        free(parent);
        parent = nj_strdup(nj_backup_id(b));
        nj_backup_free(b);
        last = n;
    }
}

/* ---- what a kill left behind ---- */

enum landing {
    LAND_IDLE,          /* between backups: startup, step preparation */
    LAND_STAGING_BARE,  /* staging directory without its owner record */
    LAND_BEGUN,         /* owner record, no disk yet */
    LAND_DISK0,         /* disks: one index created so far */
    LAND_DISK1,         /* disks: both indexes created */
    LAND_INDEX_DONE,    /* commit: indexes finished, no manifest yet */
    LAND_MANIFEST,      /* commit: manifest staged, not yet published */
    LAND_PUBLISHED,     /* published, truth not yet recorded */
    LAND_TRUTH_TMP,     /* published, while recording the truth */
    LAND_COUNT
};

static const char *landing_names[LAND_COUNT] = {
    "between backups (startup, step preparation)",
    "begin: staging directory before its owner record",
    "begin: owner recorded, no disk added",
    "writing the disks, one index created",
    "writing the disks, both indexes created",
    "commit: indexes finished, manifest not staged",
    "commit: manifest staged, before the publishing rename",
    "after the publishing rename, truth not recorded",
    "after the publishing rename, while recording the truth",
};

NJ_VECTOR(str_vec, char *);

static void str_vec_free(struct str_vec *v)
{
    for (size_t i = 0; i < v->len; i++)
        free(v->ptr[i]);
    str_vec_reset(v);
}

static bool str_vec_has(const struct str_vec *v, const char *s)
{
    for (size_t i = 0; i < v->len; i++)
        if (!strcmp(v->ptr[i], s))
            return true;
    return false;
}

static void list_dir(const char *path, struct str_vec *out)
{
    DIR *d = opendir(path);
    REQUIRE(d);
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
            str_vec_append(out, nj_strdup(de->d_name));
    closedir(d);
}

static size_t count_tmp(const char *path)
{
    struct str_vec v = { 0 };
    list_dir(path, &v);
    size_t n = 0;
    for (size_t i = 0; i < v.len; i++)
        n += strncmp(v.ptr[i], ".tmp-", 5) == 0;
    str_vec_free(&v);
    return n;
}

/* The index file's header is written last: a finished index has its
 * magic. */
static bool index_finished(const char *path)
{
    NJ_CLEANUP_CLOSE int fd = open(path, O_RDONLY | O_CLOEXEC);
    char magic[8];
    return fd >= 0 && pread(fd, magic, sizeof magic, 0) == sizeof magic &&
           memcmp(magic, NJ_INDEX_MAGIC, sizeof magic) == 0;
}

static bool file_exists(const char *dir, const char *sub, const char *name)
{
    NJ_CLEANUP_FREE char *p = nj_asprintf("%s/%s/%s", dir, sub, name);
    return access(p, F_OK) == 0;
}

struct stats {
    unsigned kills, kills_aimed, kills_random;
    unsigned landed[LAND_COUNT];
    unsigned kills_with_tmp_chunks;
    size_t tmp_chunks;          /* temporary chunk files left, in all */
    unsigned stale_cleaned;     /* killed runs' staging removed by a begin */
    unsigned orphans_aged;      /* orphans made to look a day old */
    size_t untruthed;           /* committed backups with no truth file */
    unsigned chunks_checked;    /* new chunk names decoded */
    unsigned runs_continuing;   /* runs that committed after a kill */
    unsigned committed_no_truth;
    unsigned restores, restores_replay;
    unsigned verifies;
    uint64_t last_step;
};

/* Classify the kill by what it left; fills staging with the staging
 * directories present now. */
static enum landing survey(const struct world *w, const struct str_vec *prev,
                           struct str_vec *staging, struct stats *st)
{
    NJ_CLEANUP_FREE char *sdir = nj_asprintf("%s/staging", w->store);
    list_dir(sdir, staging);

    /* Temporary chunk files: nothing removes them yet (gc's job). */
    size_t tmp = 0;
    for (int i = 0; i < 256; i++) {
        NJ_CLEANUP_FREE char *p = nj_asprintf("%s/chunks/%02x", w->store, i);
        tmp += count_tmp(p);
    }
    if (tmp > st->tmp_chunks)
        st->kills_with_tmp_chunks++;
    st->tmp_chunks = tmp;

    enum landing l = LAND_IDLE;
    for (size_t i = 0; i < staging->len; i++) {
        const char *id = staging->ptr[i];
        if (str_vec_has(prev, id))
            continue; /* an older run's, checked elsewhere */
        NJ_CLEANUP_FREE char *base = nj_asprintf("%s/%s", sdir, id);
        NJ_CLEANUP_FREE char *i0 = nj_asprintf("%s/disk0.idx", base);
        NJ_CLEANUP_FREE char *i1 = nj_asprintf("%s/disk1.idx", base);
        if (!file_exists(sdir, id, "owner.json"))
            l = LAND_STAGING_BARE;
        else if (file_exists(sdir, id, NJ_MANIFEST_NAME))
            l = LAND_MANIFEST;
        else if (index_finished(i0))
            l = LAND_INDEX_DONE;
        else if (access(i1, F_OK) == 0)
            l = LAND_DISK1;
        else if (access(i0, F_OK) == 0)
            l = LAND_DISK0;
        else
            l = LAND_BEGUN;
    }

    /* A committed backup with no truth: killed after the publishing
     * rename, before or while its truth was recorded.  Temporary truth
     * files are the test's own: count and remove them. */
    struct str_vec v = { 0 };
    list_dir(w->truthdir, &v);
    bool truth_tmp = false;
    for (size_t i = 0; i < v.len; i++) {
        if (strncmp(v.ptr[i], ".tmp-", 5) != 0)
            continue;
        NJ_CLEANUP_FREE char *p = nj_asprintf("%s/%s", w->truthdir, v.ptr[i]);
        REQUIRE(unlink(p) == 0);
        truth_tmp = true;
    }
    str_vec_free(&v);
    NJ_CLEANUP_FREE char *bdir = nj_asprintf("%s/backups", w->store);
    list_dir(bdir, &v);
    size_t untruthed = 0;
    for (size_t i = 0; i < v.len; i++)
        untruthed += !truth_exists(w, v.ptr[i]);
    str_vec_free(&v);
    if (l == LAND_IDLE && untruthed > st->untruthed)
        l = truth_tmp ? LAND_TRUTH_TMP : LAND_PUBLISHED;
    st->untruthed = untruthed;
    return l;
}

/*
 * Sort the staging directories the kills left: those with an owner record
 * must go at the domain's next begin; orphans without one may stay for a
 * day, so half of them are made to look a day old and must go too.
 */
static void mark_staging(const struct world *w, const struct str_vec *staging,
                         struct str_vec *must_go, uint64_t *rng,
                         struct stats *st)
{
    /* rng NULL: age every orphan. */
    for (size_t i = 0; i < staging->len; i++) {
        const char *id = staging->ptr[i];
        NJ_CLEANUP_FREE char *sub = nj_asprintf("%s/staging/%s", w->store, id);
        NJ_CLEANUP_FREE char *owner = nj_asprintf("%s/owner.json", sub);
        if (access(owner, F_OK) == 0) {
            str_vec_append(must_go, nj_strdup(id));
            continue;
        }
        if (rng && nj_test_rand_below(rng, 2) == 0)
            continue;
        struct timespec old[2];
        clock_gettime(CLOCK_REALTIME, &old[0]);
        old[0].tv_sec -= 2 * 24 * 3600;
        old[1] = old[0];
        REQUIRE(utimensat(AT_FDCWD, sub, old, 0) == 0);
        st->orphans_aged++;
        str_vec_append(must_go, nj_strdup(id));
    }
}

/* ---- checks after a kill ---- */

/*
 * A chunk name is visible only once its frame is complete: every chunk
 * file whose inode changed since the run began (it was created or linked)
 * must decode and match the digest it is named by, whether or not a
 * backup references it.
 */
static void check_new_chunks(const struct world *w,
                             const struct timespec *since, struct stats *st)
{
    struct nj_store *s = nj_store_open(w->store, 0);
    REQUIRE(s);
    struct nj_codec *codec = nj_codec_new(1);
    REQUIRE(codec);
    void *frame = NULL, *raw = nj_malloc(NJ_CHUNK_MAX);
    size_t cap = 0;
    for (int i = 0; i < 256; i++) {
        NJ_CLEANUP_FREE char *dir = nj_asprintf("%s/chunks/%02x", w->store, i);
        struct str_vec v = { 0 };
        list_dir(dir, &v);
        for (size_t k = 0; k < v.len; k++) {
            struct nj_digest d;
            if (v.ptr[k][0] == '.')
                continue;
            CHECK(nj_digest_from_hex(v.ptr[k], &d) == 0);
            NJ_CLEANUP_FREE char *path = nj_asprintf("%s/%s", dir, v.ptr[k]);
            struct stat sb;
            REQUIRE(stat(path, &sb) == 0);
            if (sb.st_ctim.tv_sec < since->tv_sec ||
                (sb.st_ctim.tv_sec == since->tv_sec &&
                 sb.st_ctim.tv_nsec < since->tv_nsec))
                continue;
            ssize_t n = nj_store_chunk_get(s, &d, &frame, &cap);
            if (n >= 0)
                n = nj_chunk_decode(codec, frame, (size_t)n, &d, raw,
                                    NJ_CHUNK_MAX);
            if (n < 0)
                fprintf(stderr, "chunk %s is visible but unsound: %s\n",
                        v.ptr[k], nj_error_get());
            CHECK(n >= 0);
            st->chunks_checked++;
        }
        str_vec_free(&v);
    }
    free(frame);
    free(raw);
    nj_codec_free(codec);
    nj_store_close(s);
}


struct point {
    const struct nj_manifest *m;
    bool checked; /* restored at least once */
};

static void restore_point(const struct world *w, struct nj_store *s,
                          const struct nj_catalog *c,
                          const struct nj_manifest *m,
                          unsigned char *const *truth, struct stats *st)
{
    for (int k = 0; k < NDISKS; k++) {
        int r = nj_test_restore_compare(s, c, m, targets[k], truth[k],
                                        w->size[k], w->scratch);
        if (r < 0)
            fprintf(stderr, "restore of %s disk '%s': %s\n", m->id,
                    targets[k], nj_error_get());
        CHECK(r == 0);
        st->restores++;
    }
}

/* Checks done after every kill.  checked[n] remembers the steps restored
 * already; every step is restored when sweep is set. */
static void check_store(const struct world *w, bool sweep, uint64_t *rng,
                        bool **checked, size_t *checked_len, struct stats *st)
{
    struct nj_store *s = nj_store_open(w->store, 0);
    REQUIRE(s);
    struct nj_catalog *c = nj_catalog_open(s);
    REQUIRE(c);
    CHECK(nj_catalog_broken_count(c) == 0);
    for (size_t i = 0; i < nj_catalog_broken_count(c); i++)
        fprintf(stderr, "unreadable backup %s: %s\n",
                nj_catalog_broken_id(c, i), nj_catalog_broken_error(c, i));

    /* The whole store verifies. */
    char *report = NULL;
    size_t report_len = 0;
    FILE *f = open_memstream(&report, &report_len);
    REQUIRE(f);
    struct nj_verify_opts vo = { .out = f };
    int vr = nj_verify(s, c, &vo);
    fclose(f);
    if (vr != 0)
        fprintf(stderr, "verify returned %d:\n%s", vr, report);
    CHECK(vr == 0);
    free(report);
    st->verifies++;

    /* One chain, steps 1..N, each inc's parent the previous step. */
    size_t n = nj_catalog_count(c);
    const struct nj_manifest **by_step = nj_calloc(n + 1, sizeof *by_step);
    for (size_t i = 0; i < n; i++) {
        const struct nj_manifest *m = nj_catalog_get(c, i);
        uint64_t k = 0;
        CHECK(step_of(m, &k) == 0 && k >= 1 && k <= n);
        if (k < 1 || k > n)
            continue;
        if (by_step[k])
            fprintf(stderr, "step %llu committed twice: %s and %s\n",
                    (unsigned long long)k, by_step[k]->id, m->id);
        CHECK(!by_step[k]);
        by_step[k] = m;
    }
    for (size_t k = 1; k <= n; k++) {
        const struct nj_manifest *m = by_step[k];
        if (!m)
            continue;
        CHECK(m->level == step_level(k));
        CHECK(strcmp(m->domain_uuid, DOMAIN_UUID) == 0);
        CHECK(m->ndisks == NDISKS);
        if (m->level == NJ_LEVEL_FULL)
            CHECK(m->parent == NULL);
        else if (by_step[k - 1])
            CHECK(m->parent && strcmp(m->parent, by_step[k - 1]->id) == 0);
    }
    /* A new run continued the chain when the last step advanced. */
    if (n > st->last_step)
        st->runs_continuing++;
    CHECK(n >= st->last_step); /* nothing committed is ever lost */
    st->last_step = n;

    /* Every truth file names a committed backup. */
    struct str_vec tf = { 0 };
    list_dir(w->truthdir, &tf);
    for (size_t i = 0; i < tf.len; i++) {
        if (strncmp(tf.ptr[i], ".tmp-", 5) == 0)
            continue;
        if (!nj_catalog_find(c, tf.ptr[i]))
            fprintf(stderr, "truth file '%s' has no committed backup\n",
                    tf.ptr[i]);
        CHECK(nj_catalog_find(c, tf.ptr[i]) != NULL);
    }
    str_vec_free(&tf);

    /* Restores: every step never restored, the last one, two at random,
     * or everything on a sweep.  The replay runs alongside, and every
     * truth file read is compared with it. */
    if (*checked_len < n + 1) {
        *checked = nj_realloc_array(*checked, n + 1, sizeof **checked);
        memset(*checked + *checked_len, 0,
               (n + 1 - *checked_len) * sizeof **checked);
        *checked_len = n + 1;
    }
    uint64_t pick1 = 1 + nj_test_rand_below(rng, n ? n : 1);
    uint64_t pick2 = 1 + nj_test_rand_below(rng, n ? n : 1);
    unsigned char *replay[NDISKS], *truth[NDISKS];
    struct nj_test_dirty dirty[NDISKS];
    for (int k = 0; k < NDISKS; k++) {
        replay[k] = nj_calloc(1, (size_t)w->size[k]);
        truth[k] = nj_malloc((size_t)w->size[k]);
        nj_test_dirty_init(&dirty[k], w->size[k]);
    }
    for (size_t k = 1; k <= n; k++) {
        step_apply(w, k, replay, dirty);
        const struct nj_manifest *m = by_step[k];
        if (!m)
            continue;
        bool want = sweep || !(*checked)[k] || k == n || k == pick1 ||
                    k == pick2;
        if (!want)
            continue;
        int tr = truth_load(w, m->id, truth);
        CHECK(tr >= 0);
        if (tr == 0) {
            for (int d = 0; d < NDISKS; d++)
                CHECK(memcmp(truth[d], replay[d], (size_t)w->size[d]) == 0);
            restore_point(w, s, c, m, truth, st);
        } else {
            /* Committed, killed before its truth was recorded. */
            if (!(*checked)[k])
                st->committed_no_truth++;
            restore_point(w, s, c, m, replay, st);
            st->restores_replay += NDISKS;
        }
        (*checked)[k] = true;
    }
    for (int k = 0; k < NDISKS; k++) {
        free(replay[k]);
        free(truth[k]);
        nj_test_dirty_free(&dirty[k]);
    }
    free(by_step);
    nj_catalog_free(c);
    nj_store_close(s);
}

/* ---- where kills land: at observed steps ---- */

/*
 * The writer runs gated (nj_test_gate_fork): each file-system step it
 * takes (a file created, a mkdir, rename, link, unlink) waits until the
 * test lets it go on.  A kill is placed in one of two ways:
 *  - aimed: before the Kth time (K = 1 or 2: the first or the second
 *    backup of the run) the writer reaches the step that ends a given
 *    phase, so the kill lands in that phase whatever the machine's speed;
 *  - at random: the Nth step of the run (N uniform over about two
 *    backups' steps) is let through, and the kill follows after a random
 *    delay of up to a millisecond: anywhere between that step and the
 *    next, which waits for the test.
 * Where it landed is then read from what it left (survey), never
 * assumed; every phase must have been landed in by the end.
 */
enum step_kind {
    STEP_LOCK,         /* the domain's lock file is opened */
    STEP_OWNER,        /* the owner record becomes visible */
    STEP_INDEX,        /* an index file is created in staging */
    STEP_CHUNK,        /* a step in a chunk directory */
    STEP_MANIFEST,     /* the manifest becomes visible in staging */
    STEP_PUBLISH,      /* the staging directory is renamed into backups/ */
    STEP_TRUTH_CREATE, /* the test's truth file is created */
    STEP_TRUTH_RENAME, /* ... and renamed to its name */
    STEP_OTHER,
    STEP_COUNT
};

/* Does the call make a file named name visible? */
static bool makes_visible(const struct nj_test_call *c, const char *name)
{
    if (c->kind == NJ_CALL_RENAME || c->kind == NJ_CALL_LINK)
        return nj_test_path_ends(c->path2, name);
    return c->kind == NJ_CALL_CREATE && nj_test_path_ends(c->path, name);
}

static enum step_kind step_kind_of(const struct world *w,
                                   const struct nj_test_call *c)
{
    size_t tl = strlen(w->truthdir);
    if (!strncmp(c->path, w->truthdir, tl) && c->path[tl] == '/')
        return c->kind == NJ_CALL_CREATE   ? STEP_TRUTH_CREATE
               : c->kind == NJ_CALL_RENAME ? STEP_TRUTH_RENAME
                                           : STEP_OTHER;
    if (c->kind == NJ_CALL_CREATE && nj_test_path_has(c->path, "locks/"))
        return STEP_LOCK;
    if (makes_visible(c, "owner.json"))
        return STEP_OWNER;
    if (makes_visible(c, NJ_MANIFEST_NAME))
        return STEP_MANIFEST;
    if (c->kind == NJ_CALL_CREATE && nj_test_path_has(c->path, "staging/") &&
        strstr(c->path, ".idx"))
        return STEP_INDEX;
    if (c->kind == NJ_CALL_RENAME && nj_test_path_has(c->path, "staging/") &&
        nj_test_path_has(c->path2, "backups/"))
        return STEP_PUBLISH;
    if (nj_test_path_has(c->path, "chunks/"))
        return STEP_CHUNK;
    return STEP_OTHER;
}

/* The kill that lands in phase l: before the step of kind *kind (its
 * nth of the backup), or, for DISK1, at the first step after the second
 * index of a backup was created (*after_second_index). */
static void aim(enum landing l, enum step_kind *kind, unsigned *nth,
                bool *after_second_index)
{
    *nth = 1;
    *after_second_index = false;
    switch (l) {
    case LAND_IDLE: *kind = STEP_LOCK; break;
    case LAND_STAGING_BARE: *kind = STEP_OWNER; break;
    case LAND_BEGUN: *kind = STEP_INDEX; break;
    case LAND_DISK0: *kind = STEP_INDEX; *nth = 2; break;
    case LAND_DISK1: *kind = STEP_COUNT; *after_second_index = true; break;
    case LAND_INDEX_DONE: *kind = STEP_MANIFEST; break;
    case LAND_MANIFEST: *kind = STEP_PUBLISH; break;
    case LAND_PUBLISHED: *kind = STEP_TRUTH_CREATE; break;
    case LAND_TRUTH_TMP: *kind = STEP_TRUTH_RENAME; break;
    case LAND_COUNT: break;
    }
}

static void sleep_us(uint64_t us)
{
    struct timespec ts = { (time_t)(us / 1000000), (long)(us % 1000000) * 1000 };
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* Start the writer, gated; returns once it is ready (catalog read). */
static void writer_start(const struct world *w, struct nj_test_gate *g)
{
    int pfd[2];
    REQUIRE(pipe2(pfd, O_CLOEXEC) == 0);
    pid_t pid = nj_test_gate_fork(g, false);
    if (pid == 0) {
        close(pfd[0]);
        writer_run(w, pfd[1]);
        _exit(2);
    }
    close(pfd[1]);
    /* Its startup takes no gated step (it only reads); a writer that
     * died before it was ready fails the run. */
    char ready = 0;
    bool is_ready = read(pfd[0], &ready, 1) == 1;
    close(pfd[0]);
    if (!is_ready)
        fprintf(stderr, "writer died before it was ready\n");
    CHECK(is_ready);
}

static void writer_killed(struct nj_test_gate *g)
{
    int status = nj_test_gate_kill(g);
    bool killed = WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
    if (!killed)
        fprintf(stderr, "writer ended by itself (status 0x%x)\n", status);
    CHECK(killed);
}

/*
 * Run the writer once and kill it: aimed at phase target, or, when target
 * is LAND_COUNT, at random after step `random_step`.  *per_backup learns
 * the number of steps between two publishes.
 */
static void run_and_kill(const struct world *w, uint64_t *rng,
                         enum landing target, uint64_t random_step,
                         unsigned backup_k, uint64_t *per_backup)
{
    struct nj_test_gate g;
    writer_start(w, &g);
    enum step_kind kind = STEP_COUNT;
    unsigned nth = 0;
    bool after_second = false;
    if (target != LAND_COUNT)
        aim(target, &kind, &nth, &after_second);
    unsigned backup = 1;          /* the run's backup now being made */
    unsigned seen[STEP_COUNT] = { 0 }; /* of this backup */
    uint64_t last_publish = 0;
    struct nj_test_call c;
    while (nj_test_gate_next(&g, &c) == 1) {
        enum step_kind k = step_kind_of(w, &c);
        if (k == STEP_LOCK && seen[STEP_LOCK]) {
            /* The next backup begins. */
            backup++;
            memset(seen, 0, sizeof seen);
        }
        bool mine = backup == backup_k;
        if (target != LAND_COUNT && mine) {
            if (after_second ? seen[STEP_INDEX] == 2
                             : k == kind && seen[k] + 1 == nth)
                break; /* kill before this step */
        }
        seen[k]++;
        if (k == STEP_PUBLISH) {
            if (last_publish)
                *per_backup = g.steps - last_publish;
            last_publish = g.steps;
        }
        nj_test_gate_pass(&g, &c);
        if (target == LAND_COUNT && g.steps == random_step) {
            sleep_us(nj_test_rand_below(rng, 1000));
            break;
        }
    }
    writer_killed(&g);
}

int main(void)
{
    struct world w = { .seed = 0x5eed0001 };
    uint64_t rng = w.seed;
    for (int k = 0; k < NDISKS; k++)
        w.size[k] = (1 + (uint64_t)k) * (1u << 20) + 1 +
                    nj_test_rand_below(&rng, 65535);
    w.dir = nj_test_tmpdir("crash");
    w.store = nj_asprintf("%s/store", w.dir);
    w.truthdir = nj_asprintf("%s/truth", w.dir);
    /* Restores are compared through a scratch file: on tmpfs when there
     * is one, where the restore's final fsync costs nothing. */
    if (access("/dev/shm", W_OK) == 0)
        w.scratch = nj_asprintf("/dev/shm/nightjar-crash-%ld.raw",
                                (long)getpid());
    else
        w.scratch = nj_asprintf("%s/restore.raw", w.dir);
    REQUIRE(mkdir(w.truthdir, 0755) == 0);
    struct nj_store *s0 = nj_store_open(w.store, NJ_STORE_CREATE | NJ_STORE_CREATE_V1);
    REQUIRE(s0);
    nj_store_close(s0);

    /* A first run: two backups let through, killed before its next step.
     * It shows how many steps one backup takes (to spread the kills at
     * random steps), counted, not timed. */
    struct stats st = { 0 };
    uint64_t per_backup = 0;
    bool *checked = NULL;
    size_t checked_len = 0;
    {
        struct nj_test_gate g;
        writer_start(&w, &g);
        struct nj_test_call c;
        unsigned published = 0;
        uint64_t at = 0;
        while (published < 2 && nj_test_gate_next(&g, &c) == 1) {
            if (step_kind_of(&w, &c) == STEP_PUBLISH) {
                published++;
                if (published == 2)
                    per_backup = g.steps - at;
                at = g.steps;
            }
            nj_test_gate_pass(&g, &c);
        }
        /* After the second publish, at its next step: the truth record. */
        REQUIRE(nj_test_gate_next(&g, &c) == 1);
        writer_killed(&g);
        struct str_vec none = { 0 }, staging = { 0 };
        survey(&w, &none, &staging, &st);
        str_vec_free(&staging);
        check_store(&w, true, &rng, &checked, &checked_len, &st);
        REQUIRE(published == 2 && st.last_step == 2 && per_backup > 0);
        printf("first run: 2 backups, %llu steps each\n",
               (unsigned long long)per_backup);
        uint64_t steps = st.last_step;
        size_t untruthed = st.untruthed;
        memset(&st, 0, sizeof st);
        st.last_step = steps;
        st.untruthed = untruthed;
    }

    struct str_vec prev = { 0 }, must_go = { 0 };
    double start = nj_mono_sec();
    {
        /* The first run's leftovers count as the first "previous". */
        NJ_CLEANUP_FREE char *sdir = nj_asprintf("%s/staging", w.store);
        list_dir(sdir, &prev);
        mark_staging(&w, &prev, &must_go, &rng, &st);
    }
    /* Kills alternate: aimed at each phase in turn (the first or the
     * second backup of the run), and at a random step. */
    unsigned next_aim = 0;
    for (unsigned kill_no = 0; kill_no < KILLS; kill_no++) {
        uint64_t before = st.last_step;
        struct timespec began;
        clock_gettime(CLOCK_REALTIME, &began);
        enum landing target = LAND_COUNT;
        uint64_t random_step = 0;
        unsigned backup_k = 1 + (unsigned)nj_test_rand_below(&rng, 2);
        if (kill_no % 2 == 0) {
            target = (enum landing)(next_aim++ % LAND_COUNT);
            st.kills_aimed++;
        } else {
            random_step = 1 + nj_test_rand_below(&rng, 2 * per_backup);
            st.kills_random++;
        }
        run_and_kill(&w, &rng, target, random_step, backup_k, &per_backup);
        st.kills++;
        struct str_vec staging = { 0 };
        enum landing l = survey(&w, &prev, &staging, &st);
        st.landed[l]++;
        if (target != LAND_COUNT && l != target &&
            !(target == LAND_DISK1 && l == LAND_INDEX_DONE)) {
            /* DISK1 is aimed at the step after the second index: when a
             * backup writes no chunk that step is the manifest's. */
            fprintf(stderr, "a kill aimed at '%s' landed at '%s'\n",
                    landing_names[target], landing_names[l]);
            CHECK(l == target);
        }
        check_new_chunks(&w, &began, &st);
        check_store(&w, st.kills % SWEEP_EVERY == 0, &rng, &checked,
                    &checked_len, &st);
        /* A run that committed has begun a backup, which removes the
         * staging of the killed runs that the format says it must (the
         * writer also checks this right after its begin). */
        for (size_t i = 0; i < must_go.len; i++) {
            bool gone = !str_vec_has(&staging, must_go.ptr[i]);
            st.stale_cleaned += gone;
            if (!gone && st.last_step > before)
                fprintf(stderr, "staging '%s' survived a new backup\n",
                        must_go.ptr[i]);
            CHECK(gone || st.last_step == before);
        }
        str_vec_free(&must_go);
        mark_staging(&w, &staging, &must_go, &rng, &st);
        str_vec_free(&prev);
        prev = staging;
    }
    /* Last: restore everything once more. */
    check_store(&w, true, &rng, &checked, &checked_len, &st);
    double took = nj_mono_sec() - start;

    /* With every orphan a day old, a backup begun now clears all that the
     * kills left, and its abort leaves staging empty. */
    {
        str_vec_free(&must_go);
        mark_staging(&w, &prev, &must_go, NULL, &st);
        struct nj_store *s = nj_store_open(w.store, 0);
        REQUIRE(s);
        struct nj_catalog *c = nj_catalog_open(s);
        REQUIRE(c);
        const struct nj_manifest *lm = nj_catalog_resolve(c, DOMAIN_UUID,
                                                          "latest");
        REQUIRE(lm);
        struct nj_backup_params bp = { .domain_name = DOMAIN_NAME,
                                       .domain_uuid = DOMAIN_UUID,
                                       .level = NJ_LEVEL_INC,
                                       .parent = lm->id };
        struct nj_backup *b = nj_backup_begin(s, &bp);
        REQUIRE(b);
        NJ_CLEANUP_FREE char *sdir = nj_asprintf("%s/staging", w.store);
        struct str_vec v = { 0 };
        list_dir(sdir, &v);
        CHECK(v.len == 1 && !strcmp(v.ptr[0], nj_backup_id(b)));
        str_vec_free(&v);
        nj_backup_free(b);
        list_dir(sdir, &v);
        CHECK(v.len == 0);
        str_vec_free(&v);
        nj_catalog_free(c);
        nj_store_close(s);
    }

    printf("%u kills (%u aimed at a phase, %u at a random step) in %.1f s; "
           "chain of %llu steps\n", st.kills, st.kills_aimed,
           st.kills_random, took, (unsigned long long)st.last_step);
    for (int i = 0; i < LAND_COUNT; i++) {
        printf("  %4u  %s\n", st.landed[i], landing_names[i]);
        /* Every phase was landed in (as observed in what the kill left). */
        if (st.landed[i] == 0)
            fprintf(stderr, "no kill landed in phase '%s'\n",
                    landing_names[i]);
        CHECK(st.landed[i] > 0);
    }
    printf("  %4u kills left temporary chunk files (%zu left in all)\n",
           st.kills_with_tmp_chunks, st.tmp_chunks);
    printf("%u runs continued the chain; %u killed runs' staging removed "
           "by the next begin; %u points committed without truth\n",
           st.runs_continuing, st.stale_cleaned, st.committed_no_truth);
    printf("%u orphan staging directories (no owner record) aged a day "
           "and removed\n", st.orphans_aged);
    printf("%u verifies; %u new chunk names decoded; %u disk restores "
           "compared (%u against the replay)\n", st.verifies,
           st.chunks_checked, st.restores, st.restores_replay);

    str_vec_free(&prev);
    str_vec_free(&must_go);
    free(checked);
    nj_test_rmtree(w.dir);
    free(w.dir);
    free(w.store);
    free(w.truthdir);
    free(w.scratch);
    return nj_test_done("test-crash");
}
