/*
 * test-lock: the domain lock and the parent rules of nj_backup_begin.
 *
 *  (a) Two domains are backed up into one store at the same time, by two
 *      processes and then by two threads, each with its own store handle,
 *      in lock step: at every round both backups are open at once, their
 *      first disks share content (so both writers store the same chunks
 *      at the same time), both commit, the store verifies and every point
 *      of both restores exactly.
 *  (b) A second backup of a domain being backed up is refused, naming the
 *      domain and the holder's pid: from another handle in the same
 *      process, from another process, and under another name with the same
 *      UUID.  The open backup is undisturbed and commits.
 *  (c) A writer that died holding the lock (it exited, or was SIGKILLed,
 *      with a backup open or with only the lock) never blocks: while it
 *      lives a begin is refused at once (one that waited would never
 *      return: a failsafe alarm of minutes fails the test); once it is
 *      dead the next begin succeeds on its first try, removes the dead
 *      writer's staging directory and puts its own pid in the lock file.
 *  (d) An inc or diff whose parent is missing, of another domain, a copy,
 *      or named by a path is refused, and so are a full with a parent and
 *      an inc without one; a refusal leaves no staging directory and
 *      releases the lock, even one handed over by the caller.
 */
#include "nj-test.h"
#include "nj-restore.h"
#include "nj-util.h"

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
#define ROUNDS 4
#define ID_MSG 64 /* one id per pipe message, NUL padded */

static const char *targets[NDISKS] = { "vda", "sdb" };

/* A domain whose content at round r is a pure function of its seed: the
 * parent process can rebuild what a child backed up. */
struct dom {
    const char *name, *uuid;
    uint64_t seed;
    uint64_t size[NDISKS];
    unsigned char *state[NDISKS];
    struct nj_test_dirty dirty[NDISKS];
    unsigned round;
    char *ids[ROUNDS + 1]; /* ids[r]: the backup of round r */
};

static void dom_init(struct dom *d, const char *name, const char *uuid,
                     uint64_t seed)
{
    d->name = name;
    d->uuid = uuid;
    d->seed = seed;
    d->round = 0;
    for (int k = 0; k < NDISKS; k++) {
        /* vda is the same size everywhere, so its content can be shared. */
        d->size[k] = k == 0 ? (2u << 20) + 4097
                            : (1u << 20) + 1 + seed % 65535;
        d->state[k] = nj_calloc(1, (size_t)d->size[k]);
        nj_test_dirty_init(&d->dirty[k], d->size[k]);
    }
    for (int r = 0; r <= ROUNDS; r++)
        d->ids[r] = NULL;
}

static void dom_free(struct dom *d)
{
    for (int k = 0; k < NDISKS; k++) {
        free(d->state[k]);
        nj_test_dirty_free(&d->dirty[k]);
    }
    for (int r = 0; r <= ROUNDS; r++)
        free(d->ids[r]);
}

/* Advance to the next round's content.  Round 1 starts every domain's vda
 * from the same bytes: concurrent fulls store identical chunks. */
static void dom_step(struct dom *d)
{
    d->round++;
    for (int k = 0; k < NDISKS; k++) {
        uint64_t rng = d->round == 1 && k == 0
                           ? 0x5151
                           : d->seed * 1000003 + d->round * 31 + (uint64_t)k;
        nj_test_dirty_clear(&d->dirty[k]);
        nj_test_mutate(&rng, d->state[k], d->size[k], &d->dirty[k],
                       d->round == 1 ? 12 : 3);
    }
}

static enum nj_level round_level(unsigned r)
{
    return r == 1 ? NJ_LEVEL_FULL : NJ_LEVEL_INC;
}

/* Begin the backup of d's current round. */
static struct nj_backup *dom_begin(struct nj_store *s, const struct dom *d)
{
    struct nj_backup_params bp = {
        .domain_name = d->name,
        .domain_uuid = d->uuid,
        .level = round_level(d->round),
        .parent = d->round > 1 ? d->ids[d->round - 1] : NULL,
    };
    return nj_backup_begin(s, &bp);
}

/* Store d's disks into b and commit; records the id.  -1 on error. */
static int dom_finish(struct dom *d, struct nj_backup *b,
                      struct nj_codec *codec)
{
    bool full = round_level(d->round) == NJ_LEVEL_FULL;
    for (int k = 0; k < NDISKS; k++)
        if (nj_test_store_disk(b, codec, targets[k], d->state[k], d->size[k],
                               &d->dirty[k], full, 256u << 10) < 0)
            return -1;
    if (nj_backup_commit(b) < 0)
        return -1;
    d->ids[d->round] = nj_strdup(nj_backup_id(b));
    return 0;
}

/* Restore every round of d from the store and compare; d's content is
 * rebuilt from its seed as it goes. */
static void dom_check(const char *store, const char *scratch, struct dom *d,
                      unsigned *restored)
{
    struct dom t;
    dom_init(&t, d->name, d->uuid, d->seed);
    struct nj_store *s = nj_store_open(store, 0);
    REQUIRE(s);
    struct nj_catalog *c = nj_catalog_open(s);
    REQUIRE(c);
    for (unsigned r = 1; r <= ROUNDS; r++) {
        dom_step(&t);
        CHECK(d->ids[r] != NULL);
        if (!d->ids[r])
            continue;
        const struct nj_manifest *m = nj_catalog_find(c, d->ids[r]);
        CHECK(m != NULL);
        if (!m)
            continue;
        CHECK(strcmp(m->domain_uuid, d->uuid) == 0);
        CHECK(r == 1 ? m->parent == NULL
                     : m->parent && !strcmp(m->parent, d->ids[r - 1]));
        for (int k = 0; k < NDISKS; k++) {
            int rc = nj_test_restore_compare(s, c, m, targets[k], t.state[k],
                                             t.size[k], scratch);
            if (rc < 0)
                fprintf(stderr, "%s round %u disk '%s': %s\n", d->name, r,
                        targets[k], nj_error_get());
            CHECK(rc == 0);
            (*restored)++;
        }
    }
    nj_catalog_free(c);
    nj_store_close(s);
    dom_free(&t);
}

static void check_verify(const char *store)
{
    struct nj_store *s = nj_store_open(store, 0);
    REQUIRE(s);
    struct nj_catalog *c = nj_catalog_open(s);
    REQUIRE(c);
    CHECK(nj_catalog_broken_count(c) == 0);
    char *report = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&report, &len);
    REQUIRE(f);
    struct nj_verify_opts vo = { .out = f };
    int r = nj_verify(s, c, &vo);
    fclose(f);
    if (r != 0)
        fprintf(stderr, "verify of '%s' returned %d:\n%s", store, r, report);
    CHECK(r == 0);
    free(report);
    nj_catalog_free(c);
    nj_store_close(s);
}

/* The staged backups, as the store lists them (-1 when it cannot), and
 * whether id is one of them. */
static long staging_scan(const char *store, const char *id, bool *has)
{
    struct nj_store *s = nj_store_open(store, 0);
    REQUIRE(s);
    char **v = nj_store_staging_list(s);
    long n = -1;
    if (v)
        for (n = 0; v[n]; n++)
            if (id && strcmp(v[n], id) == 0)
                *has = true;
    nj_strv_free(v);
    nj_store_close(s);
    return n;
}

static size_t count_staging(const char *store)
{
    long n = staging_scan(store, NULL, NULL);
    REQUIRE(n >= 0);
    return (size_t)n;
}

static bool staging_has(const char *store, const char *id)
{
    bool has = false;
    REQUIRE(staging_scan(store, id, &has) >= 0);
    return has;
}

/* The pid recorded in the domain's lock (its UUID is the key): the lock
 * file of a directory store, the lease object of an object store. */
static long lock_file_pid(const char *store, const char *uuid)
{
    if (nj_test_store_is_obj(store)) {
        NJ_CLEANUP_FREE char *key = nj_asprintf("locks/%s.lease", uuid);
        size_t len = 0;
        NJ_CLEANUP_FREE char *text = nj_test_obj_read(store, key, &len);
        const char *p = text ? strstr(text, "\"pid\":") : NULL;
        return p ? strtol(p + 6, NULL, 10) : -1;
    }
    NJ_CLEANUP_FREE char *p = nj_asprintf("%s/locks/%s.lock", store, uuid);
    char buf[32] = "";
    NJ_CLEANUP_CLOSE int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    buf[n > 0 ? n : 0] = '\0';
    uint64_t v = 0;
    buf[strcspn(buf, "\n")] = '\0';
    return nj_parse_u64(buf, &v) == 0 ? (long)v : -1;
}

/* ---- pipes between the test and its children ---- */

static void send_msg(int fd, const char *msg)
{
    char buf[ID_MSG] = { 0 };
    snprintf(buf, sizeof buf, "%s", msg);
    if (write(fd, buf, sizeof buf) != (ssize_t)sizeof buf)
        _exit(9);
}

/* A message, or NULL when the other end is gone. */
static char *recv_msg(int fd)
{
    char buf[ID_MSG + 1];
    size_t got = 0;
    while (got < ID_MSG) {
        ssize_t n = read(fd, buf + got, ID_MSG - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return NULL;
        got += (size_t)n;
    }
    buf[ID_MSG] = '\0';
    return nj_strdup(buf);
}

/* A longer message (an error text) in one write. */
static void send_text(int fd, const char *text)
{
    size_t len = strlen(text);
    if (write(fd, text, len) != (ssize_t)len)
        _exit(9);
}

static char *recv_text(int fd)
{
    char buf[4096];
    size_t got = 0;
    ssize_t n;
    while (got < sizeof buf - 1 &&
           (n = read(fd, buf + got, sizeof buf - 1 - got)) > 0)
        got += (size_t)n;
    buf[got] = '\0';
    return nj_strdup(buf);
}

NJ_PRINTF(1, 2) static void child_die(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "child %ld: ", (long)getpid());
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, ": %s\n", nj_error_get());
    _exit(1);
}

static int wait_exit(pid_t pid)
{
    int status = 0;
    REQUIRE(waitpid(pid, &status, 0) == pid);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/*
 * Children are fresh instances of this program (re-executed, not merely
 * forked), like a second nightjar process: they inherit no heap, and
 * under valgrind (which does not follow exec here) only the test itself
 * is checked.  The child reads messages on fd 3 and writes them on fd 4.
 */
static const char *self_path = "/proc/self/exe"; /* argv[0] when a path */

static pid_t spawn(const char *const argv[], int from_parent, int to_parent)
{
    fflush(NULL);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        /* Out of the way first (either may be 3 or 4 already); dup2
         * then clears close-on-exec on the copies. */
        int in = from_parent >= 0 ? fcntl(from_parent, F_DUPFD_CLOEXEC, 10)
                                  : -1;
        int out = fcntl(to_parent, F_DUPFD_CLOEXEC, 10);
        if (out < 0 || (from_parent >= 0 && in < 0) ||
            (in >= 0 && dup2(in, 3) < 0) || dup2(out, 4) < 0)
            _exit(126);
        execv(self_path, (char *const *)argv);
        _exit(127);
    }
    return pid;
}

/* Child "writer": back up a domain for ROUNDS rounds; at each round say
 * "begun", wait for "go", then write, commit and send the id. */
static int child_writer(const char *store, struct dom *d)
{
    struct nj_store *s = nj_store_open(store, 0);
    if (!s)
        child_die("open store");
    struct nj_codec *codec = nj_codec_new(1);
    for (unsigned r = 1; r <= ROUNDS; r++) {
        dom_step(d);
        struct nj_backup *b = dom_begin(s, d);
        if (!b)
            child_die("begin %s round %u", d->name, r);
        send_msg(4, "begun");
        NJ_CLEANUP_FREE char *go = recv_msg(3);
        if (!go)
            child_die("no go");
        if (dom_finish(d, b, codec) < 0)
            child_die("backup %s round %u", d->name, r);
        send_msg(4, nj_backup_id(b));
        nj_backup_free(b);
    }
    nj_codec_free(codec);
    nj_store_close(s);
    return 0;
}

/* Child "refuse": try to begin round 1 of a domain that is being backed
 * up; send the error (or "begun"). */
static int child_refuse(const char *store, struct dom *d)
{
    struct nj_store *s = nj_store_open(store, 0);
    if (!s)
        child_die("open store");
    dom_step(d);
    struct nj_backup *b = dom_begin(s, d);
    send_text(4, b ? "begun" : nj_error_get());
    nj_backup_free(b);
    nj_store_close(s);
    return 0;
}

enum death { DIE_EXIT, DIE_KILL, DIE_KILL_LOCK_ONLY };
static const char *const death_names[] = { "exit", "kill", "killlock" };

/* Child "dead": take the domain's lock, and unless only the lock is
 * wanted begin round 2 (parent given) and store half of it; say so, then
 * exit without any cleanup, or wait to be killed. */
static int child_dead(const char *store, struct dom *d, enum death how,
                      const char *parent)
{
    struct nj_store *s = nj_store_open(store, 0);
    if (!s)
        child_die("open store");
    if (how == DIE_KILL_LOCK_ONLY) {
        if (nj_backup_lock_domain(s, d->uuid, d->name) < 0)
            child_die("lock");
        send_msg(4, "locked");
    } else {
        dom_step(d);
        dom_step(d);
        d->ids[1] = nj_strdup(parent);
        struct nj_backup *b = dom_begin(s, d);
        if (!b)
            child_die("begin");
        struct nj_codec *codec = nj_codec_new(1);
        if (nj_test_store_disk(b, codec, targets[0], d->state[0], d->size[0],
                               &d->dirty[0], false, 64u << 10) < 0)
            child_die("store");
        send_msg(4, nj_backup_id(b));
        if (how == DIE_EXIT)
            _exit(0); /* no commit, no free, no close */
    }
    for (;;)
        pause();
}

/* argv: MODE STORE NAME UUID SEED [DEATH PARENT] */
static int child_main(int argc, char **argv)
{
    uint64_t seed = 0;
    if (argc < 6 || nj_parse_u64(argv[5], &seed) < 0) {
        fprintf(stderr, "test-lock: bad child arguments\n");
        return 2;
    }
    struct dom d;
    dom_init(&d, argv[3], argv[4], seed);
    int r = 2;
    if (!strcmp(argv[1], "writer"))
        r = child_writer(argv[2], &d);
    else if (!strcmp(argv[1], "refuse"))
        r = child_refuse(argv[2], &d);
    else if (!strcmp(argv[1], "dead") && argc == 8)
        for (int how = 0; how < 3; how++)
            if (!strcmp(argv[6], death_names[how]))
                r = child_dead(argv[2], &d, (enum death)how, argv[7]);
    dom_free(&d);
    return r;
}

static char *seed_str(uint64_t seed)
{
    return nj_asprintf("%llu", (unsigned long long)seed);
}

/* ---- (a) two domains at once ---- */

static void test_two_processes(const char *dir, unsigned *restored)
{
    NJ_CLEANUP_FREE char *local = nj_asprintf("%s/procs", dir);
    NJ_CLEANUP_FREE char *store = nj_test_store_url(local);
    NJ_CLEANUP_FREE char *scratch = nj_asprintf("%s/procs.raw", dir);
    struct nj_store *s0 = nj_test_store_create(store);
    REQUIRE(s0);
    nj_store_close(s0);
    struct dom doms[2];
    dom_init(&doms[0], "alpha", "a1a1a1a1-0000-4000-8000-000000000001", 11);
    dom_init(&doms[1], "beta", "b2b2b2b2-0000-4000-8000-000000000002", 22);
    pid_t pids[2];
    int up[2][2], down[2][2];
    for (int i = 0; i < 2; i++) {
        REQUIRE(pipe2(up[i], O_CLOEXEC) == 0 && pipe2(down[i], O_CLOEXEC) == 0);
        NJ_CLEANUP_FREE char *seed = seed_str(doms[i].seed);
        const char *argv[] = { "test-lock", "writer", store, doms[i].name,
                               doms[i].uuid, seed, NULL };
        pids[i] = spawn(argv, down[i][0], up[i][1]);
        close(up[i][1]);
        close(down[i][0]);
    }
    unsigned both_open = 0;
    for (unsigned r = 1; r <= ROUNDS; r++) {
        bool ok = true;
        for (int i = 0; i < 2 && ok; i++) {
            NJ_CLEANUP_FREE char *m = recv_msg(up[i][0]);
            ok = m && !strcmp(m, "begun");
        }
        CHECK(ok);
        if (!ok)
            break;
        /* Both backups are open now, each with its lock and staging. */
        both_open += count_staging(store) == 2;
        for (int i = 0; i < 2; i++)
            send_msg(down[i][1], "go");
        for (int i = 0; i < 2; i++) {
            char *id = recv_msg(up[i][0]);
            CHECK(id != NULL);
            doms[i].ids[r] = id;
        }
    }
    for (int i = 0; i < 2; i++) {
        close(up[i][0]);
        close(down[i][1]);
        CHECK(wait_exit(pids[i]) == 0);
    }
    CHECK(both_open == ROUNDS);
    CHECK(count_staging(store) == 0);
    check_verify(store);
    for (int i = 0; i < 2; i++) {
        dom_check(store, scratch, &doms[i], restored);
        dom_free(&doms[i]);
    }
    printf("two processes: %u rounds with both backups open at once\n",
           both_open);
}

struct thread_arg {
    const char *store;
    struct dom *d;
    pthread_barrier_t *barrier;
    int failed;
};

static void *concurrent_thread(void *p)
{
    struct thread_arg *a = p;
    struct nj_store *s = nj_store_open(a->store, 0);
    struct nj_codec *codec = nj_codec_new(1);
    for (unsigned r = 1; r <= ROUNDS; r++) {
        dom_step(a->d);
        struct nj_backup *b = s ? dom_begin(s, a->d) : NULL;
        if (!b)
            fprintf(stderr, "thread %s round %u: begin: %s\n", a->d->name, r,
                    nj_error_get());
        /* Both threads have begun (or failed) before either writes. */
        pthread_barrier_wait(a->barrier);
        if (!b || dom_finish(a->d, b, codec) < 0) {
            if (b)
                fprintf(stderr, "thread %s round %u: %s\n", a->d->name, r,
                        nj_error_get());
            a->failed = 1;
        }
        nj_backup_free(b);
        pthread_barrier_wait(a->barrier);
    }
    nj_codec_free(codec);
    nj_store_close(s);
    return NULL;
}

static void test_two_threads(const char *dir, unsigned *restored)
{
    NJ_CLEANUP_FREE char *local = nj_asprintf("%s/threads", dir);
    NJ_CLEANUP_FREE char *store = nj_test_store_url(local);
    NJ_CLEANUP_FREE char *scratch = nj_asprintf("%s/threads.raw", dir);
    struct nj_store *s0 = nj_test_store_create(store);
    REQUIRE(s0);
    nj_store_close(s0);
    struct dom doms[2];
    dom_init(&doms[0], "gamma", "c3c3c3c3-0000-4000-8000-000000000003", 33);
    dom_init(&doms[1], "delta", "d4d4d4d4-0000-4000-8000-000000000004", 44);
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, 2);
    struct thread_arg args[2];
    pthread_t tids[2];
    for (int i = 0; i < 2; i++) {
        args[i] = (struct thread_arg){ store, &doms[i], &barrier, 0 };
        REQUIRE(pthread_create(&tids[i], NULL, concurrent_thread, &args[i]) == 0);
    }
    for (int i = 0; i < 2; i++) {
        pthread_join(tids[i], NULL);
        CHECK(!args[i].failed);
    }
    pthread_barrier_destroy(&barrier);
    CHECK(count_staging(store) == 0);
    check_verify(store);
    for (int i = 0; i < 2; i++) {
        dom_check(store, scratch, &doms[i], restored);
        dom_free(&doms[i]);
    }
}

/* ---- (b) one backup per domain ---- */

static void check_refusal(const char *msg, const char *name, long pid)
{
    /* "(pid N)" from a directory store, "(pid N on host H)" from an
     * object store's lease. */
    NJ_CLEANUP_FREE char *want = nj_asprintf("(pid %ld", pid);
    const char *at = strstr(msg, want);
    CHECK(at && (at[strlen(want)] == ')' || at[strlen(want)] == ' '));
    if (!strstr(msg, "already being backed up") || !strstr(msg, want) ||
        !strstr(msg, name))
        fprintf(stderr, "refusal '%s' should name '%s' and pid %ld\n", msg,
                name, pid);
    CHECK(strstr(msg, "already being backed up") != NULL);
    CHECK(strstr(msg, want) != NULL);
    CHECK(strstr(msg, name) != NULL);
}

static void test_same_domain(const char *dir, unsigned *restored)
{
    NJ_CLEANUP_FREE char *local = nj_asprintf("%s/same", dir);
    NJ_CLEANUP_FREE char *store = nj_test_store_url(local);
    NJ_CLEANUP_FREE char *scratch = nj_asprintf("%s/same.raw", dir);
    struct dom d;
    dom_init(&d, "epsilon", "e5e5e5e5-0000-4000-8000-000000000005", 55);
    struct nj_store *s1 = nj_test_store_create(store);
    struct nj_store *s2 = nj_store_open(store, 0);
    REQUIRE(s1 && s2);
    struct nj_codec *codec = nj_codec_new(1);

    dom_step(&d);
    struct nj_backup *b1 = dom_begin(s1, &d);
    REQUIRE(b1);
    NJ_CLEANUP_FREE char *id1 = nj_strdup(nj_backup_id(b1));
    CHECK(lock_file_pid(store, d.uuid) == (long)getpid());

    /* Another handle in this process. */
    struct nj_backup *b2 = dom_begin(s2, &d);
    CHECK(b2 == NULL);
    check_refusal(nj_error_get(), d.name, (long)getpid());
    nj_backup_free(b2);

    /* Same UUID under another name: the same domain. */
    struct nj_backup_params other = { .domain_name = "epsilon-renamed",
                                      .domain_uuid = d.uuid,
                                      .level = NJ_LEVEL_FULL };
    b2 = nj_backup_begin(s2, &other);
    CHECK(b2 == NULL);
    check_refusal(nj_error_get(), "epsilon-renamed", (long)getpid());
    nj_backup_free(b2);

    /* Another process. */
    int pfd[2];
    REQUIRE(pipe2(pfd, O_CLOEXEC) == 0);
    NJ_CLEANUP_FREE char *seed = seed_str(d.seed);
    const char *argv[] = { "test-lock", "refuse", store, d.name, d.uuid, seed,
                           NULL };
    pid_t pid = spawn(argv, -1, pfd[1]);
    close(pfd[1]);
    NJ_CLEANUP_FREE char *msg = recv_text(pfd[0]);
    close(pfd[0]);
    CHECK(wait_exit(pid) == 0);
    check_refusal(msg, d.name, (long)getpid());

    /* The refusals touched nothing: b1's staging is there, alone, and b1
     * commits and restores. */
    CHECK(count_staging(store) == 1 && staging_has(store, id1));
    CHECK(lock_file_pid(store, d.uuid) == (long)getpid());
    CHECK(dom_finish(&d, b1, codec) == 0);
    nj_backup_free(b1);

    /* Once b1 is done the domain is free again, from either handle. */
    for (unsigned r = 2; r <= ROUNDS; r++) {
        dom_step(&d);
        struct nj_backup *b = dom_begin(r % 2 ? s1 : s2, &d);
        CHECK(b != NULL);
        if (b)
            CHECK(dom_finish(&d, b, codec) == 0);
        nj_backup_free(b);
    }
    nj_codec_free(codec);
    nj_store_close(s1);
    nj_store_close(s2);
    check_verify(store);
    dom_check(store, scratch, &d, restored);
    dom_free(&d);
}

/* ---- (c) a dead writer does not block ---- */

static void test_dead_writer(const char *dir, enum death how,
                             unsigned *restored)
{
    NJ_CLEANUP_FREE char *local = nj_asprintf("%s/dead-%s", dir,
                                              death_names[how]);
    NJ_CLEANUP_FREE char *store = nj_test_store_url(local);
    NJ_CLEANUP_FREE char *scratch = nj_asprintf("%s/dead.raw", dir);
    struct dom d;
    dom_init(&d, "zeta", "f6f6f6f6-0000-4000-8000-000000000006", 66);
    struct nj_store *s = nj_test_store_create(store);
    REQUIRE(s);
    struct nj_codec *codec = nj_codec_new(1);
    /* A committed full first, so that the dead writer was an inc. */
    dom_step(&d);
    struct nj_backup *b = dom_begin(s, &d);
    REQUIRE(b);
    REQUIRE(dom_finish(&d, b, codec) == 0);
    nj_backup_free(b);

    int pfd[2];
    REQUIRE(pipe2(pfd, O_CLOEXEC) == 0);
    NJ_CLEANUP_FREE char *seed = seed_str(d.seed);
    const char *argv[] = { "test-lock", "dead", store, d.name, d.uuid, seed,
                           death_names[how], d.ids[1], NULL };
    pid_t pid = spawn(argv, -1, pfd[1]);
    close(pfd[1]);
    NJ_CLEANUP_FREE char *msg = recv_msg(pfd[0]);
    close(pfd[0]);
    REQUIRE(msg);
    if (how != DIE_EXIT) {
        /* Alive, it holds the lock. */
        struct nj_backup_params bp = { .domain_name = d.name,
                                       .domain_uuid = d.uuid,
                                       .level = NJ_LEVEL_INC,
                                       .parent = d.ids[1] };
        b = nj_backup_begin(s, &bp);
        CHECK(b == NULL);
        check_refusal(nj_error_get(), d.name, (long)pid);
        nj_backup_free(b);
        kill(pid, SIGKILL);
    }
    int st = wait_exit(pid);
    CHECK(how == DIE_EXIT ? st == 0 : st == 128 + SIGKILL);
    CHECK(lock_file_pid(store, d.uuid) == (long)pid);
    if (how != DIE_KILL_LOCK_ONLY)
        CHECK(staging_has(store, msg));

    /* The next begin goes through on its first try and clears the dead
     * run.  That it does not wait is shown above, with no clock: while
     * the holder lived (pausing until killed) a begin was refused at
     * once, where a begin that waited for the lock would never return
     * (the failsafe alarm in main turns that into a failure). */
    dom_step(&d);
    b = dom_begin(s, &d);
    CHECK(b != NULL);
    if (how != DIE_KILL_LOCK_ONLY)
        CHECK(!staging_has(store, msg));
    CHECK(count_staging(store) == 1);
    CHECK(lock_file_pid(store, d.uuid) == (long)getpid());
    if (b)
        CHECK(dom_finish(&d, b, codec) == 0);
    nj_backup_free(b);
    /* The rest of the chain. */
    while (d.round < ROUNDS) {
        dom_step(&d);
        b = dom_begin(s, &d);
        CHECK(b != NULL);
        if (b)
            CHECK(dom_finish(&d, b, codec) == 0);
        nj_backup_free(b);
    }
    CHECK(count_staging(store) == 0);
    nj_codec_free(codec);
    nj_store_close(s);
    check_verify(store);
    dom_check(store, scratch, &d, restored);
    dom_free(&d);
}

/* ---- (d) parents ---- */

/* A begin that must fail with a message containing want, leave staging
 * as it was and leave the domain unlocked. */
static void check_refused(struct nj_store *s, const char *store,
                          const struct nj_backup_params *bp, const char *want)
{
    size_t before = count_staging(store);
    struct nj_backup *b = nj_backup_begin(s, bp);
    CHECK(b == NULL);
    if (b) {
        fprintf(stderr, "a %s backup with parent '%s' was accepted\n",
                nj_level_name(bp->level), bp->parent ? bp->parent : "(none)");
        nj_backup_free(b);
        return;
    }
    const char *msg = nj_error_get();
    if (!strstr(msg, want))
        fprintf(stderr, "refusal '%s' should say '%s'\n", msg, want);
    CHECK(strstr(msg, want) != NULL);
    CHECK(count_staging(store) == before);
    int fd = nj_backup_lock_domain(s, bp->domain_uuid, bp->domain_name);
    CHECK(fd >= 0);
    nj_store_unlock_domain(fd);
}

static char *commit_simple(struct nj_store *s, struct dom *d, enum nj_level l,
                           const char *parent, struct nj_codec *codec)
{
    struct nj_backup_params bp = { .domain_name = d->name,
                                   .domain_uuid = d->uuid,
                                   .level = l,
                                   .parent = parent };
    struct nj_backup *b = nj_backup_begin(s, &bp);
    REQUIRE(b);
    bool full = l == NJ_LEVEL_FULL || l == NJ_LEVEL_COPY;
    for (int k = 0; k < NDISKS; k++)
        REQUIRE(nj_test_store_disk(b, codec, targets[k], d->state[k],
                                   d->size[k], &d->dirty[k], full,
                                   1u << 20) == 0);
    REQUIRE(nj_backup_commit(b) == 0);
    char *id = nj_strdup(nj_backup_id(b));
    nj_backup_free(b);
    return id;
}

static void test_parents(const char *dir, unsigned *restored)
{
    NJ_CLEANUP_FREE char *local = nj_asprintf("%s/parents", dir);
    NJ_CLEANUP_FREE char *store = nj_test_store_url(local);
    NJ_CLEANUP_FREE char *scratch = nj_asprintf("%s/parents.raw", dir);
    struct nj_store *s = nj_test_store_create(store);
    REQUIRE(s);
    struct nj_codec *codec = nj_codec_new(1);
    struct dom p, q;
    dom_init(&p, "eta", "07070707-0000-4000-8000-000000000007", 77);
    dom_init(&q, "theta", "08080808-0000-4000-8000-000000000008", 88);
    dom_step(&p);
    dom_step(&q);
    NJ_CLEANUP_FREE char *p_full = commit_simple(s, &p, NJ_LEVEL_FULL, NULL,
                                                 codec);
    NJ_CLEANUP_FREE char *p_copy = commit_simple(s, &p, NJ_LEVEL_COPY, NULL,
                                                 codec);
    NJ_CLEANUP_FREE char *q_full = commit_simple(s, &q, NJ_LEVEL_FULL, NULL,
                                                 codec);
    NJ_CLEANUP_FREE char *path_parent = nj_asprintf("../backups/%s", p_full);
    NJ_CLEANUP_FREE char *missing = nj_backup_id_new();

    static const enum nj_level needing[] = { NJ_LEVEL_INC, NJ_LEVEL_DIFF };
    for (size_t i = 0; i < NJ_ARRAY_SIZE(needing); i++) {
        struct nj_backup_params bp = { .domain_name = p.name,
                                       .domain_uuid = p.uuid,
                                       .level = needing[i] };
        bp.parent = q_full;
        check_refused(s, store, &bp, "belongs to domain");
        bp.parent = p_copy;
        check_refused(s, store, &bp, "is a copy");
        bp.parent = missing;
        check_refused(s, store, &bp, "not found");
        bp.parent = path_parent;
        check_refused(s, store, &bp, path_parent);
        bp.parent = NULL;
        check_refused(s, store, &bp, "needs a parent");
        /* A lock handed over is released by the refusal too. */
        bp.parent = q_full;
        bp.lock_fd = nj_backup_lock_domain(s, p.uuid, p.name);
        REQUIRE(bp.lock_fd >= 0);
        bp.have_lock = true;
        check_refused(s, store, &bp, "belongs to domain");
    }
    struct nj_backup_params fp = { .domain_name = p.name,
                                   .domain_uuid = p.uuid,
                                   .level = NJ_LEVEL_FULL,
                                   .parent = p_full };
    check_refused(s, store, &fp, "cannot have a parent");
    fp.level = NJ_LEVEL_COPY;
    check_refused(s, store, &fp, "cannot have a parent");

    /* The right parent is accepted, also under a new domain name: the
     * chain follows the UUID. */
    dom_step(&p);
    p.name = "eta-renamed";
    NJ_CLEANUP_FREE char *p_inc = commit_simple(s, &p, NJ_LEVEL_INC, p_full,
                                                codec);
    CHECK(count_staging(store) == 0);
    nj_codec_free(codec);
    nj_store_close(s);
    check_verify(store);

    /* Restore the inc: it is round 2 of eta. */
    struct dom t;
    dom_init(&t, "eta", p.uuid, p.seed);
    dom_step(&t);
    dom_step(&t);
    s = nj_store_open(store, 0);
    REQUIRE(s);
    struct nj_catalog *c = nj_catalog_open(s);
    REQUIRE(c);
    const struct nj_manifest *m = nj_catalog_find(c, p_inc);
    REQUIRE(m);
    CHECK(m->parent && !strcmp(m->parent, p_full));
    for (int k = 0; k < NDISKS; k++) {
        CHECK(nj_test_restore_compare(s, c, m, targets[k], t.state[k],
                                      t.size[k], scratch) == 0);
        (*restored)++;
    }
    nj_catalog_free(c);
    nj_store_close(s);
    dom_free(&t);
    dom_free(&p);
    dom_free(&q);
}

/* A begin that waits forever must fail the test, with a message, not
 * hang until meson's timeout; minutes, never a bound on speed. */
static void failsafe(int sig)
{
    static const char msg[] = "test-lock: failsafe alarm: a call never "
                              "returned (a begin waiting for a lock?)\n";
    (void)sig;
    if (write(2, msg, sizeof msg - 1) < 0)
        _exit(1);
    _exit(1);
}

int main(int argc, char **argv)
{
    /* Under valgrind /proc/self/exe is valgrind itself. */
    if (strchr(argv[0], '/'))
        self_path = argv[0];
    if (argc > 1)
        return child_main(argc, argv);
    signal(SIGALRM, failsafe);
    alarm(NJ_TEST_GATE_FAILSAFE);
    char *dir = nj_test_tmpdir("lock");
    unsigned restored = 0;
    test_two_processes(dir, &restored);
    test_two_threads(dir, &restored);
    test_same_domain(dir, &restored);
    test_dead_writer(dir, DIE_EXIT, &restored);
    test_dead_writer(dir, DIE_KILL, &restored);
    test_dead_writer(dir, DIE_KILL_LOCK_ONLY, &restored);
    test_parents(dir, &restored);
    printf("%u disk restores compared\n", restored);
    nj_test_rmtree(dir);
    free(dir);
    return nj_test_done("test-lock");
}
