/*
 * test-hostile: a store whose content was planted by someone hostile, or
 * that is created under a careless umask, never turns nightjar against
 * its host and never loses what is stored.
 *
 * A base store holds three backups: domain A full (P0) and inc (P1), and
 * domain B full (P2), each one disk whose content the test keeps.  Every
 * case copies it, plants one hostile object, runs library operations (and
 * the nightjar-restore program when NIGHTJAR_RESTORE names it) each in a
 * child process under an alarm() watchdog, so that a hang is a failure
 * and not a hung test, and requires:
 *
 *  - FIFO at a manifest, an index, a chunk, the store marker or a staging
 *    owner record: no operation hangs; each fails with one line naming
 *    the file ("... is not a regular file") or goes on without it;
 *  - symlink (and hard link) at locks/<key>.lock pointing outside: a
 *    backup and gc refuse it; the outside file keeps content and mtime;
 *  - chunk names that are symlinks to an outside file, or FIFOs: gc never
 *    sets the outside file's mtime, never removes or follows them; a
 *    backup that would dedup against one fails naming it;
 *  - a symlinked backup directory: protect, remove and gc create, change
 *    or remove nothing outside the store; a symlinked staging directory
 *    is not followed by a backup's cleanup;
 *  - an admin's README, a symlink, an ownerless directory with content in
 *    staging/, aged two days: a backup succeeds and leaves them, while a
 *    dead run's directory and empty orphans are still removed;
 *  - owner records and store markers with wrong types or values out of
 *    range are refused with a message, and such staging is never deleted;
 *  - the staging listing holds only directories, empty is not failure, and
 *    a store whose staging/ is a symlink does not open;
 *  - under umask 022 and 0, every directory of a new store is 0700 and
 *    every file 0600, temporary files included;
 * and after each case, once the planted object is removed and the original
 * put back, the whole store verifies and every backup restores exactly.
 */
#include "nj-test.h"
#include "nj-io.h"
#include "nj-prune.h"
#include "nj-restore.h"
#include "nj-util.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SIZE ((uint64_t)(1u << 20) + 3 * 4096)
#define GRID (256u << 10)
/* Seconds before an operation counts as hung: what they take is
 * milliseconds.  NJ_TEST_WATCHDOG overrides it (checking old code). */
static unsigned watchdog = 60;
#define OLD_TIME 1000000000 /* the outside file's mtime: 2001 */
#define UUID_A "aaaaaaaa-1111-4222-8333-444455556666"
#define UUID_B "bbbbbbbb-1111-4222-8333-444455556666"
#define NPOINTS 3

static const char outside_text[] = "outside the store: must never change\n";

struct world {
    char *dir, *base, *store, *outside, *restore_bin;
    char *ids[NPOINTS];
    unsigned char *truth[NPOINTS];
    char *key_a;
    uint64_t rng;
};

/* ---- small helpers ---- */

static void write_file(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    REQUIRE(fd >= 0);
    REQUIRE(nj_full_write(fd, text, strlen(text)) == 0);
    close(fd);
}

static void set_mtime(const char *path, time_t t)
{
    struct timespec ts[2] = { { .tv_sec = t }, { .tv_sec = t } };
    REQUIRE(utimensat(AT_FDCWD, path, ts, AT_SYMLINK_NOFOLLOW) == 0);
}

static void make_outside(struct world *w)
{
    write_file(w->outside, outside_text);
    set_mtime(w->outside, OLD_TIME);
}

/* The outside file as it was: content, size, mtime, one link. */
static bool outside_intact(const struct world *w)
{
    struct stat st;
    if (lstat(w->outside, &st) < 0 || !S_ISREG(st.st_mode))
        return false;
    size_t len = 0;
    NJ_CLEANUP_FREE char *text = nj_read_file(AT_FDCWD, w->outside, 4096, &len);
    bool ok = text && len == strlen(outside_text) &&
              memcmp(text, outside_text, len) == 0 &&
              st.st_mtime == OLD_TIME;
    if (!ok)
        fprintf(stderr, "outside file changed: size %lld mtime %lld\n",
                (long long)st.st_size, (long long)st.st_mtime);
    return ok;
}

static bool is_type(const char *path, mode_t type)
{
    struct stat st;
    return lstat(path, &st) == 0 && (st.st_mode & S_IFMT) == type;
}

static bool exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

/* A new full backup of one disk holding truth; its id in *id. */
static int backup_full(struct nj_store *s, const char *name, const char *uuid,
                       const unsigned char *truth, char **id)
{
    struct nj_codec *codec = nj_codec_new(NJ_ZSTD_LEVEL_DEFAULT);
    struct nj_backup_params bp = { .domain_name = name, .domain_uuid = uuid,
                                   .level = NJ_LEVEL_FULL };
    struct nj_backup *b = nj_backup_begin(s, &bp);
    int ret = -1;
    if (b && nj_test_store_disk(b, codec, "vda", truth, SIZE, NULL, true,
                                GRID) == 0 &&
        nj_backup_commit(b) == 0) {
        ret = 0;
        if (id)
            *id = nj_strdup(nj_backup_id(b));
    }
    nj_backup_free(b);
    nj_codec_free(codec);
    return ret;
}

/* ---- running an operation in a child under a watchdog ---- */

static char *shared_msg; /* MAP_SHARED: the child's last error */
#define MSG_MAX 1024

/* Run fn in a child with an alarm; returns its exit status (fn's return
 * value, 0..255), or -1 when it was killed (a hang: reported). */
static int in_child(const char *what, int (*fn)(struct world *, void *),
                    struct world *w, void *arg)
{
    shared_msg[0] = '\0';
    fflush(NULL);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        alarm(watchdog);
        int r = fn(w, arg);
        snprintf(shared_msg, MSG_MAX, "%s", nj_error_get());
        fflush(NULL);
        _exit(r);
    }
    int status = 0;
    REQUIRE(waitpid(pid, &status, 0) == pid);
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    fprintf(stderr, "%s: child killed by signal %d%s\n", what,
            WTERMSIG(status),
            WTERMSIG(status) == SIGALRM ? " (hung: watchdog)" : "");
    nj_test_failures++;
    return -1;
}

static bool msg_has(const char *needle)
{
    if (strstr(shared_msg, needle))
        return true;
    fprintf(stderr, "expected '%s' in '%s'\n", needle, shared_msg);
    return false;
}

/* Run the restore program with args under the watchdog; exit status (or
 * -1 when killed), its stderr in *err. */
static int run_cli(struct world *w, const char *const argv[], char **err)
{
    NJ_CLEANUP_FREE char *ep = nj_asprintf("%s/cli.err", w->dir);
    fflush(NULL);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        int o = open("/dev/null", O_WRONLY);
        int e = open(ep, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (o < 0 || e < 0 || dup2(o, 1) < 0 || dup2(e, 2) < 0)
            _exit(127);
        alarm(watchdog); /* survives exec */
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    int status = 0;
    REQUIRE(waitpid(pid, &status, 0) == pid);
    size_t len = 0;
    *err = nj_read_file(AT_FDCWD, ep, 1 << 20, &len);
    REQUIRE(*err);
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    fprintf(stderr, "%s %s: killed by signal %d\n", argv[0], argv[1],
            WTERMSIG(status));
    nj_test_failures++;
    return -1;
}

static size_t count_lines(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

/* ---- child operations ---- */

static int op_open(struct world *w, void *arg)
{
    (void)arg;
    struct nj_store *s = nj_store_open(w->store, 0);
    if (!s)
        return 1;
    nj_store_close(s);
    return 0;
}

/* 0: listed with no broken backup; 2: some broken (message: the first's
 * error); 1: failed. */
static int op_list(struct world *w, void *arg)
{
    (void)arg;
    struct nj_store *s = nj_store_open(w->store, 0);
    if (!s)
        return 1;
    struct nj_catalog *c = nj_catalog_open(s);
    int r = 1;
    if (c) {
        r = nj_catalog_broken_count(c) ? 2 : 0;
        if (r == 2)
            nj_error("%s: %s", nj_catalog_broken_id(c, 0),
                     nj_catalog_broken_error(c, 0));
    }
    nj_catalog_free(c);
    nj_store_close(s);
    return r;
}

/* nj_verify's result: 0 sound, 1 damage, 3 error (-1), 4 no store. */
static int op_verify(struct world *w, void *arg)
{
    (void)arg;
    struct nj_store *s = nj_store_open(w->store, 0);
    if (!s)
        return 4;
    struct nj_catalog *c = nj_catalog_open(s);
    FILE *devnull = fopen("/dev/null", "w");
    struct nj_verify_opts o = { .threads = 2, .out = devnull };
    int r = c ? nj_verify(s, c, &o) : -1;
    fclose(devnull);
    nj_catalog_free(c);
    nj_store_close(s);
    return r < 0 ? 3 : r;
}

/* Restore point *(int *)arg and compare: 0 exact, 1 failed. */
static int op_restore(struct world *w, void *arg)
{
    int p = *(int *)arg;
    struct nj_store *s = nj_store_open(w->store, 0);
    if (!s)
        return 1;
    struct nj_catalog *c = nj_catalog_open(s);
    const struct nj_manifest *m = c ? nj_catalog_find(c, w->ids[p]) : NULL;
    NJ_CLEANUP_FREE char *out = nj_asprintf("%s/restored.raw", w->dir);
    int r = 1;
    if (m)
        r = nj_test_restore_compare(s, c, m, "vda", w->truth[p], SIZE, out)
                ? 1 : 0;
    else if (c) {
        nj_error("backup '%s' is not in the catalog", w->ids[p]);
        for (size_t i = 0; i < nj_catalog_broken_count(c); i++)
            if (!strcmp(nj_catalog_broken_id(c, i), w->ids[p]))
                nj_error("%s", nj_catalog_broken_error(c, i));
    }
    unlink(out);
    nj_catalog_free(c);
    nj_store_close(s);
    return r;
}

static int op_gc(struct world *w, void *arg)
{
    (void)arg;
    struct nj_store *s = nj_store_open(w->store, 0);
    if (!s)
        return 1;
    struct nj_gc_stats st;
    int r = nj_gc(s, 0, &st);
    nj_store_close(s);
    return r < 0 ? 1 : 0;
}

/* A full backup of domain A with the content at arg (NULL: new random). */
static int op_backup(struct world *w, void *arg)
{
    unsigned char *buf = arg;
    unsigned char *fresh = NULL;
    if (!buf) {
        uint64_t rng = w->rng ^ (uint64_t)getpid();
        fresh = buf = nj_malloc(SIZE);
        nj_test_fill_random(&rng, buf, SIZE);
    }
    struct nj_store *s = nj_store_open(w->store, 0);
    int r = s && backup_full(s, "hostile-a", UUID_A, buf, NULL) == 0 ? 0 : 1;
    nj_store_close(s);
    free(fresh);
    return r;
}

/* An inc of domain A on P0. */
static int op_backup_inc(struct world *w, void *arg)
{
    (void)arg;
    struct nj_store *s = nj_store_open(w->store, 0);
    if (!s)
        return 1;
    struct nj_backup_params bp = { .domain_name = "hostile-a",
                                   .domain_uuid = UUID_A,
                                   .level = NJ_LEVEL_INC,
                                   .parent = w->ids[0] };
    struct nj_backup *b = nj_backup_begin(s, &bp);
    int r = b && nj_backup_disk_add(b, "vda", "raw", SIZE, false) &&
                    nj_backup_commit(b) == 0
                ? 0
                : 1;
    nj_backup_free(b);
    nj_store_close(s);
    return r;
}

static int op_protect(struct world *w, void *arg)
{
    int p = *(int *)arg;
    struct nj_store *s = nj_store_open(w->store, 0);
    int r = s && nj_prune_protect(s, w->ids[p], true) == 0 ? 0 : 1;
    nj_store_close(s);
    return r;
}

static int op_remove(struct world *w, void *arg)
{
    int p = *(int *)arg;
    struct nj_store *s = nj_store_open(w->store, 0);
    int r = s && nj_store_backup_remove(s, w->ids[p]) == 0 ? 0 : 1;
    nj_store_close(s);
    return r;
}

/* ---- the base store and the final check ---- */

static void build_base(struct world *w)
{
    struct nj_store *s = nj_store_open(w->base, NJ_STORE_CREATE | NJ_STORE_CREATE_V1);
    REQUIRE(s);
    for (int p = 0; p < NPOINTS; p++)
        w->truth[p] = nj_malloc(SIZE);
    nj_test_fill_random(&w->rng, w->truth[0], SIZE);
    REQUIRE(backup_full(s, "hostile-a", UUID_A, w->truth[0], &w->ids[0]) == 0);

    /* P1: an inc rewriting the second grid cell. */
    memcpy(w->truth[1], w->truth[0], SIZE);
    nj_test_fill_random(&w->rng, w->truth[1] + GRID, GRID);
    struct nj_test_dirty dirty;
    nj_test_dirty_init(&dirty, SIZE);
    nj_test_dirty_mark(&dirty, GRID, GRID);
    struct nj_codec *codec = nj_codec_new(NJ_ZSTD_LEVEL_DEFAULT);
    struct nj_backup_params bp = { .domain_name = "hostile-a",
                                   .domain_uuid = UUID_A,
                                   .level = NJ_LEVEL_INC,
                                   .parent = w->ids[0] };
    struct nj_backup *b = nj_backup_begin(s, &bp);
    REQUIRE(b);
    REQUIRE(nj_test_store_disk(b, codec, "vda", w->truth[1], SIZE, &dirty,
                               false, GRID) == 0);
    REQUIRE(nj_backup_commit(b) == 0);
    w->ids[1] = nj_strdup(nj_backup_id(b));
    nj_backup_free(b);
    nj_codec_free(codec);
    nj_test_dirty_free(&dirty);

    nj_test_fill_random(&w->rng, w->truth[2], SIZE);
    REQUIRE(backup_full(s, "hostile-b", UUID_B, w->truth[2], &w->ids[2]) == 0);
    nj_store_close(s);
    w->key_a = nj_backup_lock_key(UUID_A);
}

static void fresh_store(struct world *w)
{
    nj_test_copy_store(w->base, w->store);
    make_outside(w);
}

/* The whole store verifies, lists no broken backup, and each of the three
 * points restores exactly. */
static void check_sound(struct world *w, const char *what)
{
    int r = in_child(what, op_list, w, NULL);
    if (r != 0)
        fprintf(stderr, "%s: list after the case: %d (%s)\n", what, r,
                shared_msg);
    CHECK(r == 0);
    r = in_child(what, op_verify, w, NULL);
    if (r != 0)
        fprintf(stderr, "%s: verify after the case: %d (%s)\n", what, r,
                shared_msg);
    CHECK(r == 0);
    for (int p = 0; p < NPOINTS; p++) {
        r = in_child(what, op_restore, w, &p);
        if (r != 0)
            fprintf(stderr, "%s: restore P%d after the case: %s\n", what, p,
                    shared_msg);
        CHECK(r == 0);
    }
    CHECK(outside_intact(w));
}

/* The index file name and first data chunk of point p's disk. */
static void point_files(struct world *w, int p, char **index,
                        struct nj_digest *chunk)
{
    struct nj_store *s = nj_store_open(w->store, 0);
    REQUIRE(s);
    struct nj_catalog *c = nj_catalog_open(s);
    REQUIRE(c);
    const struct nj_manifest *m = nj_catalog_find(c, w->ids[p]);
    REQUIRE(m && m->ndisks == 1);
    *index = nj_strdup(m->disks[0].index);
    struct nj_index_reader *r = nj_manifest_index_open(s, m, &m->disks[0]);
    REQUIRE(r);
    struct nj_extent e;
    bool found = false;
    while (!found && nj_index_reader_next(r, &e) == 1)
        if (e.kind == NJ_EXTENT_DATA) {
            *chunk = e.digest;
            found = true;
        }
    REQUIRE(found);
    nj_index_reader_free(r);
    nj_catalog_free(c);
    nj_store_close(s);
}

static char *chunk_path(struct world *w, const struct nj_digest *d)
{
    char hex[NJ_DIGEST_HEX_LEN + 1];
    nj_digest_to_hex(d, hex);
    return nj_asprintf("%s/chunks/%.2s/%s", w->store, hex, hex);
}

/* ---- 1: FIFOs ---- */

enum fifo_kind { F_MANIFEST, F_INDEX, F_CHUNK, F_MARKER, F_OWNER };
static const char *const fifo_names[] = { "manifest", "index", "chunk",
                                          "store marker", "owner record" };

static void case_fifo(struct world *w, enum fifo_kind k)
{
    fresh_store(w);
    const char *what = fifo_names[k];
    NJ_CLEANUP_FREE char *index = NULL;
    struct nj_digest chunk;
    point_files(w, 0, &index, &chunk);
    NJ_CLEANUP_FREE char *path = NULL;
    NJ_CLEANUP_FREE char *needle = NULL; /* how the error names it */
    switch (k) {
    case F_MANIFEST:
        path = nj_asprintf("%s/backups/%s/manifest.json", w->store, w->ids[0]);
        needle = nj_asprintf("'backups/%s/manifest.json' is not a regular "
                             "file", w->ids[0]);
        break;
    case F_INDEX:
        path = nj_asprintf("%s/backups/%s/%s", w->store, w->ids[0], index);
        needle = nj_asprintf("'backups/%s/%s' is not a regular file",
                             w->ids[0], index);
        break;
    case F_CHUNK: {
        path = chunk_path(w, &chunk);
        char hex[NJ_DIGEST_HEX_LEN + 1];
        nj_digest_to_hex(&chunk, hex);
        needle = nj_asprintf("'chunks/%.2s/%s' is not a regular file", hex,
                             hex);
        break;
    }
    case F_MARKER:
        path = nj_asprintf("%s/nightjar-store.json", w->store);
        needle = nj_strdup("'nightjar-store.json' is not a regular file");
        break;
    case F_OWNER: {
        NJ_CLEANUP_FREE char *d =
            nj_asprintf("%s/staging/20260101T000000Z-deadbeef", w->store);
        REQUIRE(mkdir(d, 0700) == 0);
        path = nj_asprintf("%s/owner.json", d);
        write_file(path, "{}");
        needle = nj_strdup("is not a regular file");
        break;
    }
    }
    NJ_CLEANUP_FREE char *saved = nj_asprintf("%s/saved", w->dir);
    REQUIRE(rename(path, saved) == 0);
    REQUIRE(mkfifo(path, 0600) == 0);

    int r = in_child(what, op_open, w, NULL);
    if (k == F_MARKER) {
        CHECK(r == 1 && msg_has(needle));
    } else {
        CHECK(r == 0);
        r = in_child(what, op_list, w, NULL);
        if (k == F_MANIFEST)
            CHECK(r == 2 && msg_has(needle));
        else
            CHECK(r == 0);

        r = in_child(what, op_verify, w, NULL);
        if (k == F_OWNER)
            CHECK(r == 0);
        else
            CHECK(r == 1 || r == 3);

        int p0 = 0;
        r = in_child(what, op_restore, w, &p0);
        if (k == F_OWNER) {
            CHECK(r == 0);
        } else {
            CHECK(r == 1 && msg_has(needle));
        }
        int p2 = 2;
        CHECK(in_child(what, op_restore, w, &p2) == 0);

        /* gc: refuses when a backup is unreadable, else runs; never
         * waits on the FIFO. */
        r = in_child(what, op_gc, w, NULL);
        if (k == F_MANIFEST || k == F_INDEX)
            CHECK(r == 1 && msg_has("not a regular file"));
        else
            CHECK(r == 0);
        if (k == F_CHUNK)
            CHECK(is_type(path, S_IFIFO)); /* left where it was */

        /* A new backup of domain A cleans its staging (the owner FIFO)
         * and, for an inc, reads the parent's manifest. */
        r = in_child(what, op_backup, w, NULL);
        CHECK(r == 0);
        r = in_child(what, op_backup_inc, w, NULL);
        if (k == F_MANIFEST)
            CHECK(r == 1 && msg_has(needle));
        else if (k == F_OWNER)
            CHECK(r == 0);
        if (k == F_OWNER)
            CHECK(is_type(path, S_IFIFO)); /* an unreadable owner: kept */
    }

    if (w->restore_bin) {
        char *err = NULL;
        const char *verify[] = { w->restore_bin, "verify", "-s", w->store,
                                 NULL };
        r = run_cli(w, verify, &err);
        if (k == F_OWNER)
            CHECK(r == 0);
        else
            CHECK(r == 1);
        if (k == F_MARKER)
            CHECK(count_lines(err) == 1 && strstr(err, needle));
        free(err);
        const char *list[] = { w->restore_bin, "list", "-s", w->store, NULL };
        r = run_cli(w, list, &err);
        CHECK(r >= 0);
        if (k == F_MARKER)
            CHECK(r == 1 && count_lines(err) == 1 && strstr(err, needle));
        free(err);
    }

    REQUIRE(unlink(path) == 0);
    REQUIRE(rename(saved, path) == 0);
    check_sound(w, what);
}

/* ---- 2: the lock file ---- */

static void plant_owner(struct world *w, const char *name, const char *json,
                        time_t age)
{
    NJ_CLEANUP_FREE char *d = nj_asprintf("%s/staging/%s", w->store, name);
    NJ_CLEANUP_FREE char *f = nj_asprintf("%s/owner.json", d);
    REQUIRE(mkdir(d, 0700) == 0);
    write_file(f, json);
    if (age) {
        set_mtime(f, time(NULL) - age);
        set_mtime(d, time(NULL) - age);
    }
}

static void case_lock(struct world *w)
{
    fresh_store(w);
    NJ_CLEANUP_FREE char *lock =
        nj_asprintf("%s/locks/%s.lock", w->store, w->key_a);
    /* A dead run of domain A: gc tries its lock too. */
    NJ_CLEANUP_FREE char *owner = nj_asprintf(
        "{\"lock\":\"%s\",\"domain\":\"hostile-a\",\"pid\":1,\"started\":%lld}",
        w->key_a, (long long)time(NULL) - 10);
    plant_owner(w, "20260101T000000Z-00000001", owner, 0);

    unlink(lock);
    REQUIRE(symlink(w->outside, lock) == 0);
    int r = in_child("lock symlink", op_backup, w, NULL);
    CHECK(r == 1 && msg_has("is not a regular file") &&
          msg_has("locks/"));
    CHECK(outside_intact(w));
    r = in_child("lock symlink", op_gc, w, NULL);
    CHECK(r == 0);
    CHECK(outside_intact(w));
    CHECK(is_type(lock, S_IFLNK));

    /* A hard link to the outside file. */
    REQUIRE(unlink(lock) == 0);
    REQUIRE(link(w->outside, lock) == 0);
    r = in_child("lock hard link", op_backup, w, NULL);
    CHECK(r == 1 && msg_has("links"));
    r = in_child("lock hard link", op_gc, w, NULL);
    CHECK(r == 0);
    REQUIRE(unlink(lock) == 0);
    CHECK(outside_intact(w));

    /* A FIFO there: refused without waiting. */
    REQUIRE(mkfifo(lock, 0600) == 0);
    r = in_child("lock fifo", op_backup, w, NULL);
    CHECK(r == 1 && msg_has("is not a regular file"));
    REQUIRE(unlink(lock) == 0);

    /* Without the planted object, a backup works and the lock file it
     * creates is a private regular file holding its pid. */
    CHECK(in_child("lock", op_backup, w, NULL) == 0);
    struct stat st;
    CHECK(lstat(lock, &st) == 0 && S_ISREG(st.st_mode) &&
          (st.st_mode & 07777) == 0600);
    check_sound(w, "lock");
}

/* ---- 3: chunks that are symlinks or FIFOs ---- */

static void case_chunk_links(struct world *w)
{
    fresh_store(w);
    NJ_CLEANUP_FREE char *index = NULL;
    struct nj_digest d;
    point_files(w, 0, &index, &d);
    NJ_CLEANUP_FREE char *cp = chunk_path(w, &d);
    NJ_CLEANUP_FREE char *saved = nj_asprintf("%s/saved-chunk", w->dir);
    REQUIRE(rename(cp, saved) == 0);
    REQUIRE(symlink(w->outside, cp) == 0);
    /* Unreferenced names, old enough to be swept: a symlink to the
     * outside file, a FIFO, and an aside name (.gc-) that is a symlink. */
    char junk_hex[NJ_DIGEST_HEX_LEN + 1];
    memset(junk_hex, 'e', NJ_DIGEST_HEX_LEN);
    junk_hex[NJ_DIGEST_HEX_LEN] = '\0';
    NJ_CLEANUP_FREE char *junk_link =
        nj_asprintf("%s/chunks/ee/%s", w->store, junk_hex);
    junk_hex[NJ_DIGEST_HEX_LEN - 1] = 'f';
    NJ_CLEANUP_FREE char *junk_fifo =
        nj_asprintf("%s/chunks/ee/%s", w->store, junk_hex);
    junk_hex[NJ_DIGEST_HEX_LEN - 1] = 'd';
    NJ_CLEANUP_FREE char *junk_aside =
        nj_asprintf("%s/chunks/ee/.gc-%s", w->store, junk_hex);
    REQUIRE(symlink(w->outside, junk_link) == 0);
    REQUIRE(mkfifo(junk_fifo, 0600) == 0);
    REQUIRE(symlink(w->outside, junk_aside) == 0);
    set_mtime(junk_link, OLD_TIME);
    set_mtime(junk_fifo, OLD_TIME);
    set_mtime(junk_aside, time(NULL) + 3600);
    set_mtime(cp, OLD_TIME);

    int r = in_child("chunk symlink", op_gc, w, NULL);
    CHECK(r == 0);
    CHECK(outside_intact(w));
    CHECK(is_type(cp, S_IFLNK));
    CHECK(is_type(junk_link, S_IFLNK));
    CHECK(is_type(junk_fifo, S_IFIFO));
    CHECK(is_type(junk_aside, S_IFLNK));
    junk_hex[NJ_DIGEST_HEX_LEN - 1] = 'd';
    NJ_CLEANUP_FREE char *aside_target =
        nj_asprintf("%s/chunks/ee/%s", w->store, junk_hex);
    CHECK(!exists(aside_target)); /* no symlink put "back" as a chunk */

    /* A backup of P0's content dedups against the symlinked chunk: it
     * fails naming it, and touches nothing outside. */
    r = in_child("chunk symlink", op_backup, w, w->truth[0]);
    CHECK(r == 1 && msg_has("is not a regular file") && msg_has("chunks/"));
    CHECK(outside_intact(w));

    /* Readers: the damage is reported, never read through. */
    CHECK(in_child("chunk symlink", op_verify, w, NULL) == 1);
    int p0 = 0, p2 = 2;
    r = in_child("chunk symlink", op_restore, w, &p0);
    CHECK(r == 1 && msg_has("is not a regular file"));
    CHECK(in_child("chunk symlink", op_restore, w, &p2) == 0);
    CHECK(outside_intact(w));

    REQUIRE(unlink(cp) == 0);
    REQUIRE(rename(saved, cp) == 0);
    unlink(junk_link);
    unlink(junk_fifo);
    unlink(junk_aside);
    check_sound(w, "chunk symlink");
}

/* ---- 4: symlinked backup and staging directories ---- */

static char *dir_listing(const char *path)
{
    NJ_CLEANUP_FREE char *cmd = nj_asprintf("ls -la --time-style=+%%s '%s'",
                                            path);
    FILE *p = popen(cmd, "r");
    REQUIRE(p);
    char *buf = nj_calloc(1, 65536);
    size_t n = fread(buf, 1, 65535, p);
    buf[n] = '\0';
    pclose(p);
    return buf;
}

static void case_backup_dir_link(struct world *w)
{
    fresh_store(w);
    NJ_CLEANUP_FREE char *elsewhere = nj_asprintf("%s/elsewhere", w->dir);
    nj_test_rmtree(elsewhere);
    REQUIRE(mkdir(elsewhere, 0700) == 0);
    NJ_CLEANUP_FREE char *bdir =
        nj_asprintf("%s/backups/%s", w->store, w->ids[0]);
    NJ_CLEANUP_FREE char *moved = nj_asprintf("%s/%s", elsewhere, w->ids[0]);
    REQUIRE(rename(bdir, moved) == 0);
    REQUIRE(symlink(moved, bdir) == 0);
    NJ_CLEANUP_FREE char *before = dir_listing(moved);
    NJ_CLEANUP_FREE char *needle =
        nj_asprintf("'backups/%s' is not a directory", w->ids[0]);

    int p0 = 0;
    int r = in_child("backup dir symlink", op_protect, w, &p0);
    CHECK(r == 1 && msg_has(needle));
    r = in_child("backup dir symlink", op_remove, w, &p0);
    CHECK(r == 1 && msg_has(needle));
    r = in_child("backup dir symlink", op_list, w, NULL);
    CHECK(r == 2 && msg_has(w->ids[0]));
    r = in_child("backup dir symlink", op_gc, w, NULL);
    CHECK(r == 1); /* unreadable backup: not sweeping */
    int p2 = 2;
    CHECK(in_child("backup dir symlink", op_protect, w, &p2) == 0);
    CHECK(in_child("backup dir symlink", op_restore, w, &p2) == 0);

    NJ_CLEANUP_FREE char *after = dir_listing(moved);
    CHECK(strcmp(before, after) == 0);
    if (strcmp(before, after) != 0)
        fprintf(stderr, "before:\n%s\nafter:\n%s\n", before, after);
    CHECK(is_type(bdir, S_IFLNK));

    REQUIRE(unlink(bdir) == 0);
    REQUIRE(rename(moved, bdir) == 0);
    check_sound(w, "backup dir symlink");

    /* A staging entry that is a symlink to a directory whose owner record
     * names domain A: a backup of A neither follows nor fails on it. */
    NJ_CLEANUP_FREE char *other = nj_asprintf("%s/other", elsewhere);
    REQUIRE(mkdir(other, 0700) == 0);
    NJ_CLEANUP_FREE char *oj = nj_asprintf("%s/owner.json", other);
    NJ_CLEANUP_FREE char *keep = nj_asprintf("%s/keep.txt", other);
    NJ_CLEANUP_FREE char *owner = nj_asprintf(
        "{\"lock\":\"%s\",\"started\":1}", w->key_a);
    write_file(oj, owner);
    write_file(keep, "keep me\n");
    NJ_CLEANUP_FREE char *slink =
        nj_asprintf("%s/staging/20260101T000000Z-0000000a", w->store);
    REQUIRE(symlink(other, slink) == 0);
    set_mtime(slink, time(NULL) - 3 * 86400);
    CHECK(in_child("staging symlink", op_backup, w, NULL) == 0);
    CHECK(exists(oj) && exists(keep) && is_type(slink, S_IFLNK));
    CHECK(in_child("staging symlink", op_gc, w, NULL) == 0);
    CHECK(exists(oj) && exists(keep) && is_type(slink, S_IFLNK));
    unlink(slink);
    check_sound(w, "staging symlink");
}

/* ---- 6: what an admin leaves in staging/ ---- */

static void case_staging_junk(struct world *w)
{
    fresh_store(w);
    time_t old = time(NULL) - 2 * 86400;
    NJ_CLEANUP_FREE char *st = nj_asprintf("%s/staging", w->store);
    NJ_CLEANUP_FREE char *readme = nj_asprintf("%s/README", st);
    NJ_CLEANUP_FREE char *notes = nj_asprintf("%s/notes", st);
    NJ_CLEANUP_FREE char *notes_f = nj_asprintf("%s/notes/keep.txt", st);
    NJ_CLEANUP_FREE char *link = nj_asprintf("%s/link", st);
    NJ_CLEANUP_FREE char *empty = nj_asprintf("%s/empty-orphan", st);
    NJ_CLEANUP_FREE char *tmpo = nj_asprintf("%s/tmp-orphan", st);
    NJ_CLEANUP_FREE char *tmpo_f =
        nj_asprintf("%s/tmp-orphan/.tmp-pub-abcdefgh", st);
    NJ_CLEANUP_FREE char *fifo = nj_asprintf("%s/fifo", st);
    write_file(readme, "do not remove\n");
    REQUIRE(mkdir(notes, 0700) == 0);
    write_file(notes_f, "mine\n");
    REQUIRE(symlink(w->outside, link) == 0);
    REQUIRE(mkdir(empty, 0700) == 0);
    REQUIRE(mkdir(tmpo, 0700) == 0);
    write_file(tmpo_f, "");
    REQUIRE(mkfifo(fifo, 0600) == 0);
    const char *aged[] = { readme, notes_f, notes, link, tmpo_f, tmpo, empty,
                           fifo };
    for (size_t i = 0; i < NJ_ARRAY_SIZE(aged); i++)
        set_mtime(aged[i], old);
    /* A dead run of domain A: still removed by A's next backup. */
    NJ_CLEANUP_FREE char *owner = nj_asprintf(
        "{\"lock\":\"%s\",\"started\":%lld}", w->key_a, (long long)old);
    plant_owner(w, "20260101T000000Z-0000000b", owner, 0);
    NJ_CLEANUP_FREE char *dead =
        nj_asprintf("%s/20260101T000000Z-0000000b", st);

    /* The listing holds directories only. */
    struct nj_store *s = nj_store_open(w->store, 0);
    REQUIRE(s);
    char **ids = nj_store_staging_list(s);
    CHECK(ids != NULL);
    size_t n = 0;
    for (char **p = ids; p && *p; p++, n++)
        CHECK(strcmp(*p, "README") && strcmp(*p, "link") &&
              strcmp(*p, "fifo"));
    CHECK(n == 4); /* notes, empty-orphan, tmp-orphan, the dead run */
    nj_strv_free(ids);
    nj_store_close(s);

    int r = in_child("staging junk", op_backup, w, NULL);
    if (r != 0)
        fprintf(stderr, "backup with junk in staging: %s\n", shared_msg);
    CHECK(r == 0);
    CHECK(is_type(readme, S_IFREG) && is_type(notes_f, S_IFREG) &&
          is_type(link, S_IFLNK) && is_type(fifo, S_IFIFO));
    CHECK(!exists(empty) && !exists(tmpo) && !exists(dead));
    CHECK(in_child("staging junk", op_gc, w, NULL) == 0);
    CHECK(in_child("staging junk", op_backup, w, NULL) == 0);
    CHECK(is_type(readme, S_IFREG) && is_type(notes_f, S_IFREG));
    CHECK(outside_intact(w));
    check_sound(w, "staging junk");
}

/* ---- 9: values in owner records and the store marker ---- */

static void case_values(struct world *w)
{
    fresh_store(w);
    time_t old = time(NULL) - 2 * 86400;
    const char *k = w->key_a;
    char *bad[] = {
        nj_asprintf("{\"lock\":5,\"started\":1}"),
        nj_asprintf("{\"lock\":\"../../etc\",\"started\":1}"),
        nj_asprintf("{\"lock\":\"%s\",\"started\":-1}", k),
        nj_asprintf("{\"lock\":\"%s\",\"started\":\"1\"}", k),
        nj_asprintf("{\"lock\":\"%s\",\"started\":1e30}", k),
        nj_asprintf("{\"lock\":\"%s\",\"started\":9223372036854775807}", k),
        nj_asprintf("{\"lock\":\"%s\",\"started\":1,\"pid\":\"x\"}", k),
        nj_asprintf("{\"lock\":\"%s\",\"started\":1,\"pid\":-4}", k),
        nj_asprintf("{\"lock\":\"%s\",\"started\":1,\"domain\":[]}", k),
        nj_asprintf("{\"lock\":\"%s\",\"started\":1} trailing", k),
        nj_asprintf("[\"%s\", 1]", k),
        nj_asprintf("{\"lock\":\"%s\"", k),
    };
    char names[NJ_ARRAY_SIZE(bad)][64];
    for (size_t i = 0; i < NJ_ARRAY_SIZE(bad); i++) {
        snprintf(names[i], sizeof names[i], "20260101T000000Z-bad%04zu", i);
        plant_owner(w, names[i], bad[i], 2 * 86400);
    }
    NJ_CLEANUP_FREE char *good = nj_asprintf(
        "{\"lock\":\"%s\",\"started\":%lld,\"pid\":7,\"domain\":\"x\"}", k,
        (long long)old);
    plant_owner(w, "20260101T000000Z-good0000", good, 2 * 86400);

    struct nj_store *s = nj_store_open(w->store, 0);
    REQUIRE(s);
    for (size_t i = 0; i < NJ_ARRAY_SIZE(bad); i++) {
        struct nj_store_owner o;
        int r = nj_store_staging_owner_get(s, names[i], &o);
        CHECK(r == -1);
        NJ_CLEANUP_FREE char *n =
            nj_asprintf("staging/%s/owner.json", names[i]);
        CHECK(strstr(nj_error_get(), n) != NULL);
        if (r != -1 || !strstr(nj_error_get(), n))
            fprintf(stderr, "owner '%s': %d (%s)\n", bad[i], r,
                    nj_error_get());
        char *text = nj_store_staging_owner(s, names[i]);
        CHECK(text == NULL);
        free(text);
    }
    struct nj_store_owner o;
    CHECK(nj_store_staging_owner_get(s, "20260101T000000Z-good0000", &o) == 1);
    CHECK(strcmp(o.lock, k) == 0 && o.started == (int64_t)old && o.pid == 7);
    CHECK(nj_store_staging_owner_get(s, "20260101T000000Z-none0000", &o) == 0);
    nj_store_close(s);

    /* A's backup removes its dead run, and leaves every invalid record. */
    CHECK(in_child("owner values", op_backup, w, NULL) == 0);
    for (size_t i = 0; i < NJ_ARRAY_SIZE(bad); i++) {
        NJ_CLEANUP_FREE char *d =
            nj_asprintf("%s/staging/%s/owner.json", w->store, names[i]);
        CHECK(exists(d));
    }
    NJ_CLEANUP_FREE char *gd =
        nj_asprintf("%s/staging/20260101T000000Z-good0000", w->store);
    CHECK(!exists(gd));
    CHECK(in_child("owner values", op_gc, w, NULL) == 0);
    check_sound(w, "owner values");
    for (size_t i = 0; i < NJ_ARRAY_SIZE(bad); i++)
        free(bad[i]);

    /* Store markers. */
    static const char *const markers[] = {
        "{\"format\":\"nightjar-store\",\"version\":\"1\"}",
        "{\"format\":\"nightjar-store\",\"version\":1,\"chunk_id\":\"md5\"}",
        "{\"format\":\"nightjar-store\",\"version\":1,\"chunk_id\":7}",
        "{\"format\":\"nightjar-store\",\"version\":1,\"created\":\"x\"}",
        "{\"format\":\"nightjar-store\",\"version\":1,\"created\":-3}",
        "{\"format\":\"nightjar-store\",\"version\":1} {\"more\":1}",
        "{\"format\":\"nightjar-store\",\"version\":3}",
        "{\"format\":5,\"version\":1}",
    };
    NJ_CLEANUP_FREE char *mp = nj_asprintf("%s/nightjar-store.json", w->store);
    NJ_CLEANUP_FREE char *keepm = nj_asprintf("%s/saved-marker", w->dir);
    REQUIRE(rename(mp, keepm) == 0);
    for (size_t i = 0; i < NJ_ARRAY_SIZE(markers); i++) {
        write_file(mp, markers[i]);
        int r = in_child("marker", op_open, w, NULL);
        CHECK(r == 1 && msg_has(w->store));
        if (r != 1)
            fprintf(stderr, "marker '%s' accepted\n", markers[i]);
    }
    /* A symlink to a sound marker is not a marker. */
    NJ_CLEANUP_FREE char *sound_m = nj_asprintf("%s/sound-marker", w->dir);
    unlink(mp);
    REQUIRE(rename(keepm, sound_m) == 0);
    REQUIRE(symlink(sound_m, mp) == 0);
    int r = in_child("marker symlink", op_open, w, NULL);
    CHECK(r == 1 && msg_has("is not a regular file"));
    REQUIRE(unlink(mp) == 0);
    REQUIRE(rename(sound_m, mp) == 0);
    check_sound(w, "marker");
}

/* ---- 8: the top directories ---- */

static void case_top_dirs(struct world *w)
{
    static const char *const tops[] = { "staging", "backups", "locks",
                                        "chunks", "chunks/3c" };
    for (size_t i = 0; i < NJ_ARRAY_SIZE(tops); i++) {
        fresh_store(w);
        NJ_CLEANUP_FREE char *p = nj_asprintf("%s/%s", w->store, tops[i]);
        NJ_CLEANUP_FREE char *moved = nj_asprintf("%s/moved-top", w->dir);
        nj_test_rmtree(moved);
        REQUIRE(rename(p, moved) == 0);
        REQUIRE(symlink(moved, p) == 0);
        int r = in_child(tops[i], op_open, w, NULL);
        NJ_CLEANUP_FREE char *needle =
            nj_asprintf("'%s' is not a directory", strrchr(tops[i], '/')
                                                       ? strrchr(tops[i], '/') + 1
                                                       : tops[i]);
        CHECK(r == 1 && msg_has(needle));
        REQUIRE(unlink(p) == 0);
        REQUIRE(rename(moved, p) == 0);
    }
    /* An empty staging/ lists as empty, not as a failure. */
    fresh_store(w);
    struct nj_store *s = nj_store_open(w->store, 0);
    REQUIRE(s);
    char **ids = nj_store_staging_list(s);
    CHECK(ids != NULL && ids[0] == NULL);
    nj_strv_free(ids);
    nj_store_close(s);
}

/* ---- 5 and 7: modes ---- */

static int bad_modes;

static int check_mode(const char *path, const struct stat *st, int type,
                      struct FTW *ftw)
{
    (void)ftw;
    mode_t m = st->st_mode & 07777;
    bool ok = (type == FTW_D && m == 0700) || (type == FTW_F && m == 0600 &&
                                               S_ISREG(st->st_mode));
    if (!ok) {
        fprintf(stderr, "mode %04o type %d: %s\n", (unsigned)m, type, path);
        bad_modes++;
    }
    return 0;
}

static int op_umask_store(struct world *w, void *arg)
{
    mode_t u = *(mode_t *)arg;
    umask(u);
    nj_test_rmtree(w->store);
    struct nj_store *s = nj_store_open(w->store, NJ_STORE_CREATE | NJ_STORE_CREATE_V1);
    if (!s)
        return 1;
    char *id = NULL;
    int r = backup_full(s, "hostile-a", UUID_A, w->truth[0], &id);
    if (r == 0)
        r = nj_prune_protect(s, id, true);
    if (r == 0) {
        struct nj_gc_stats st;
        r = nj_gc(s, 0, &st);
    }
    /* A staged backup left open (owner record, an index) and a temporary
     * file of each kind. */
    struct nj_backup_params bp = { .domain_name = "hostile-b",
                                   .domain_uuid = UUID_B,
                                   .level = NJ_LEVEL_FULL };
    struct nj_backup *b = r == 0 ? nj_backup_begin(s, &bp) : NULL;
    if (r == 0 && (!b || !nj_backup_disk_add(b, "vda", "raw", SIZE, true)))
        r = -1;
    char tmp[64];
    NJ_CLEANUP_FREE char *cdir = nj_asprintf("%s/chunks/00", w->store);
    int dfd = open(cdir, O_RDONLY | O_DIRECTORY);
    int tfd = dfd >= 0 ? nj_tmpfile_open(dfd, "probe", tmp, sizeof tmp) : -1;
    if (tfd < 0)
        r = -1;
    if (tfd >= 0)
        close(tfd);
    if (dfd >= 0)
        close(dfd);
    free(id);
    /* Leave b staged: the child exits without freeing it. */
    (void)b;
    return r < 0 ? 1 : 0;
}

static void case_umask(struct world *w)
{
    static const mode_t masks[] = { 022, 0 };
    for (size_t i = 0; i < NJ_ARRAY_SIZE(masks); i++) {
        mode_t u = masks[i];
        int r = in_child("umask", op_umask_store, w, &u);
        if (r != 0)
            fprintf(stderr, "umask %03o: %s\n", (unsigned)u, shared_msg);
        CHECK(r == 0);
        bad_modes = 0;
        CHECK(nftw(w->store, check_mode, 16, FTW_PHYS) == 0);
        CHECK(bad_modes == 0);
        /* The store holds what the check is about. */
        NJ_CLEANUP_FREE char *staging = nj_asprintf("%s/staging", w->store);
        NJ_CLEANUP_FREE char *locks = nj_asprintf("%s/locks", w->store);
        CHECK(exists(staging) && exists(locks));
    }
    /* Two temporary files: distinct random names, created exclusively. */
    NJ_CLEANUP_FREE char *d = nj_asprintf("%s/tmpnames", w->dir);
    nj_test_rmtree(d);
    REQUIRE(mkdir(d, 0700) == 0);
    int dfd = open(d, O_RDONLY | O_DIRECTORY);
    REQUIRE(dfd >= 0);
    mode_t old = umask(0);
    char a[64], b[64];
    int fa = nj_tmpfile_open(dfd, "t", a, sizeof a);
    int fb = nj_tmpfile_open(dfd, "t", b, sizeof b);
    umask(old);
    CHECK(fa >= 0 && fb >= 0 && strcmp(a, b) != 0);
    CHECK(strlen(a) == strlen(".tmp-t-") + 8 && !strncmp(a, ".tmp-t-", 7));
    struct stat st;
    CHECK(fstat(fa, &st) == 0 && (st.st_mode & 07777) == 0600);
    close(fa);
    close(fb);
    close(dfd);
    nj_test_rmtree(d);
}

int main(void)
{
    struct world w = { .rng = 0x6057113 };
    shared_msg = mmap(NULL, MSG_MAX, PROT_READ | PROT_WRITE,
                      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    REQUIRE(shared_msg != MAP_FAILED);
    w.dir = nj_test_tmpdir("hostile");
    w.base = nj_asprintf("%s/base", w.dir);
    w.store = nj_asprintf("%s/store", w.dir);
    w.outside = nj_asprintf("%s/outside.txt", w.dir);
    const char *wd = getenv("NJ_TEST_WATCHDOG");
    if (wd && atoi(wd) > 0)
        watchdog = (unsigned)atoi(wd);
    const char *bin = getenv("NIGHTJAR_RESTORE");
    if (bin && *bin)
        w.restore_bin = nj_strdup(bin);
    build_base(&w);

    for (int k = F_MANIFEST; k <= F_OWNER; k++)
        case_fifo(&w, (enum fifo_kind)k);
    case_lock(&w);
    case_chunk_links(&w);
    case_backup_dir_link(&w);
    case_staging_junk(&w);
    case_values(&w);
    case_top_dirs(&w);
    case_umask(&w);

    nj_test_rmtree(w.dir);
    for (int p = 0; p < NPOINTS; p++) {
        free(w.ids[p]);
        free(w.truth[p]);
    }
    free(w.key_a);
    free(w.dir);
    free(w.base);
    free(w.store);
    free(w.outside);
    free(w.restore_bin);
    return nj_test_done("hostile");
}
