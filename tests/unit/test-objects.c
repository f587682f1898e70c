/*
 * test-objects: the contract of nj-object.h, checked the same way on every
 * object namespace: "dir" (obj-dir.c in a private directory) and "s3"
 * (obj-s3.c on the test radosgw, NJ_TEST_S3_*; exit 77 without).
 *
 *  - get of an absent key is ENOENT, of a too large one EFBIG; ranges
 *    stop at the end; invalid keys are refused before any request;
 *  - CREATE is create-only, REPLACE replaces, IF_MATCH is a compare and
 *    swap on the tag, and tags change with content;
 *  - of many racing CREATEs exactly one wins; racing IF_MATCH increments
 *    of a counter lose no update (each success is one increment);
 *  - list: every key in byte order across pages (more than one page),
 *    prefixes that end mid-segment, the "/" delimiter's common prefixes,
 *    nothing for an absent prefix, deleted keys gone;
 *  - delete of an absent key succeeds; delete_many removes all;
 *  - dir only: a symlink, FIFO or directory where an object is expected
 *    fails the call and is never followed or waited on; stale temporary
 *    files are never listed.
 */
#include "nj-test.h"
#include "nj-object.h"
#include "nj-s3.h"
#include "nj-util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define RACERS 8
#define INCREMENTS 12
#define MANY 1234 /* more than a page of 1000 */

static struct nj_objects *o;
static char *pre; /* "" or "run-.../" */
static char *root; /* dir: the directory */

/* The key rest under this run's prefix (free it). */
static char *K(const char *rest)
{
    return nj_asprintf("%s%s", pre, rest);
}

static void test_get_put(void)
{
    NJ_CLEANUP_FREE char *k = K("a/b/one");
    void *buf = NULL;
    size_t len = 0;
    errno = 0;
    CHECK(nj_obj_get(o, k, 100, &buf, &len) == -1 && errno == ENOENT);
    CHECK(nj_obj_head(o, k, NULL, NULL, NULL) == 0);
    char tag1[NJ_OBJ_TAG_MAX] = "", tag2[NJ_OBJ_TAG_MAX] = "";
    CHECK(nj_obj_put(o, k, "hello", 5, NJ_OBJ_CREATE, NULL, tag1) == 0);
    CHECK(tag1[0] != '\0');
    CHECK(nj_obj_put(o, k, "other", 5, NJ_OBJ_CREATE, NULL, NULL) == 1);
    REQUIRE(nj_obj_get(o, k, 100, &buf, &len) == 0);
    CHECK(len == 5 && memcmp(buf, "hello", 5) == 0 &&
          ((char *)buf)[5] == '\0');
    free(buf);
    errno = 0;
    CHECK(nj_obj_get(o, k, 4, &buf, &len) == -1 && errno == EFBIG);

    uint64_t size = 0;
    int64_t mtime = 0;
    char htag[NJ_OBJ_TAG_MAX] = "";
    CHECK(nj_obj_head(o, k, &size, &mtime, htag) == 1);
    CHECK(size == 5 && strcmp(htag, tag1) == 0);
    CHECK(mtime > (int64_t)time(NULL) - 3600 &&
          mtime < (int64_t)time(NULL) + 3600);

    char part[8] = { 0 };
    CHECK(nj_obj_get_range(o, k, 1, part, 3) == 3 &&
          memcmp(part, "ell", 3) == 0);
    CHECK(nj_obj_get_range(o, k, 3, part, 8) == 2 &&
          memcmp(part, "lo", 2) == 0);

    /* Compare and swap on the tag. */
    CHECK(nj_obj_put(o, k, "x", 1, NJ_OBJ_IF_MATCH, "0123abcd", NULL) == 1);
    CHECK(nj_obj_put(o, k, "world", 5, NJ_OBJ_IF_MATCH, tag1, tag2) == 0);
    CHECK(strcmp(tag1, tag2) != 0);
    CHECK(nj_obj_put(o, k, "again", 5, NJ_OBJ_IF_MATCH, tag1, NULL) == 1);
    REQUIRE(nj_obj_get(o, k, 100, &buf, &len) == 0);
    CHECK(len == 5 && memcmp(buf, "world", 5) == 0);
    free(buf);
    NJ_CLEANUP_FREE char *absent = K("a/b/absent");
    CHECK(nj_obj_put(o, absent, "x", 1, NJ_OBJ_IF_MATCH, tag2, NULL) == 1);
    CHECK(nj_obj_head(o, absent, NULL, NULL, NULL) == 0);

    /* Replace, empty objects, lazy puts made durable by sync. */
    CHECK(nj_obj_put(o, k, "", 0, NJ_OBJ_REPLACE, NULL, NULL) == 0);
    REQUIRE(nj_obj_get(o, k, 100, &buf, &len) == 0);
    CHECK(len == 0);
    free(buf);
    NJ_CLEANUP_FREE char *lazy = K("a/lazy");
    CHECK(nj_obj_put(o, lazy, "zz", 2, NJ_OBJ_CREATE | NJ_OBJ_LAZY, NULL,
                     NULL) == 0);
    CHECK(nj_obj_sync(o) == 0);
    CHECK(nj_obj_head(o, lazy, &size, NULL, NULL) == 1 && size == 2);

    CHECK(nj_obj_delete(o, k) == 0);
    CHECK(nj_obj_delete(o, k) == 0); /* absent: gone already */
    CHECK(nj_obj_head(o, k, NULL, NULL, NULL) == 0);
    CHECK(nj_obj_delete(o, lazy) == 0);

    /* Keys that are not keys, refused before anything is asked. */
    static const char *bad[] = { "", "/abs", "a//b", "a/", "../up", "a/./b",
                                 "a/../b", "sp ace", "a/.tmp-x", "q\"uote" };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        errno = 0;
        CHECK(nj_obj_put(o, bad[i], "x", 1, NJ_OBJ_REPLACE, NULL, NULL) ==
                  -1 && errno == EINVAL);
        CHECK(nj_obj_get(o, bad[i], 10, &buf, &len) == -1 && errno == EINVAL);
    }
}

/* ---- races ---- */

struct racer {
    const char *key;
    int rc;
    unsigned wins;
};

static void *create_racer(void *arg)
{
    struct racer *r = arg;
    char body[32];
    snprintf(body, sizeof body, "%p", arg);
    r->rc = nj_obj_put(o, r->key, body, strlen(body), NJ_OBJ_CREATE, NULL,
                       NULL);
    return NULL;
}

/* Read the counter, put it plus one if its tag is unchanged; count the
 * successes. */
static void *cas_racer(void *arg)
{
    struct racer *r = arg;
    for (int n = 0; n < 2000 && r->wins < INCREMENTS; n++) {
        char tag[NJ_OBJ_TAG_MAX];
        void *buf = NULL;
        size_t len = 0;
        if (nj_obj_head(o, r->key, NULL, NULL, tag) != 1 ||
            nj_obj_get(o, r->key, 64, &buf, &len) != 0) {
            fprintf(stderr, "cas read: %s\n", nj_error_get());
            r->rc = -1;
            return NULL;
        }
        unsigned long v = strtoul(buf, NULL, 10);
        free(buf);
        char body[32];
        snprintf(body, sizeof body, "%lu", v + 1);
        int rc = nj_obj_put(o, r->key, body, strlen(body), NJ_OBJ_IF_MATCH,
                            tag, NULL);
        if (rc < 0) {
            fprintf(stderr, "cas: %s\n", nj_error_get());
            r->rc = -1;
            return NULL;
        }
        r->wins += rc == 0;
    }
    return NULL;
}

static void test_races(void)
{
    NJ_CLEANUP_FREE char *k = K("race/create");
    pthread_t t[RACERS];
    struct racer r[RACERS];
    for (int i = 0; i < RACERS; i++) {
        r[i] = (struct racer){ .key = k };
        REQUIRE(pthread_create(&t[i], NULL, create_racer, &r[i]) == 0);
    }
    int won = 0, lost = 0;
    for (int i = 0; i < RACERS; i++) {
        pthread_join(t[i], NULL);
        won += r[i].rc == 0;
        lost += r[i].rc == 1;
    }
    CHECK(won == 1 && lost == RACERS - 1);

    /* A counter: the head/get pair is not atomic, but the put is a CAS on
     * the tag, so the final value is exactly the number of successes. */
    NJ_CLEANUP_FREE char *c = K("race/counter");
    REQUIRE(nj_obj_put(o, c, "0", 1, NJ_OBJ_REPLACE, NULL, NULL) == 0);
    unsigned total = 0;
    for (int i = 0; i < 4; i++) {
        r[i] = (struct racer){ .key = c };
        REQUIRE(pthread_create(&t[i], NULL, cas_racer, &r[i]) == 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        CHECK(r[i].rc == 0);
        total += r[i].wins;
    }
    void *buf = NULL;
    size_t len = 0;
    REQUIRE(nj_obj_get(o, c, 64, &buf, &len) == 0);
    CHECK(strtoul(buf, NULL, 10) == total);
    CHECK(total == 4 * INCREMENTS);
    free(buf);
    const char *keys[] = { k, c };
    CHECK(nj_obj_delete_many(o, keys, 2) == 0);
}

/* ---- listing ---- */

static void put_async_done(void *arg, int rc)
{
    if (rc != 0)
        __atomic_add_fetch((int *)arg, 1, __ATOMIC_RELAXED);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Every key under prefix, page by page: checks byte order within and
 * across pages; the count, or -1 when a listing failed. */
static long list_all(const char *prefix, const char *delim, char ***out,
                     unsigned *pages)
{
    char *token = NULL;
    long n = 0;
    char **v = NULL;
    *pages = 0;
    do {
        struct nj_obj_page page = { 0 };
        if (nj_obj_list(o, prefix, delim, &token, &page) < 0)
            return -1;
        (*pages)++;
        for (size_t i = 0; i < page.nobjects + page.nprefixes; i++) {
            char *key = i < page.nobjects ? page.objects[i].key
                                          : page.prefixes[i - page.nobjects];
            CHECK(strncmp(key, prefix, strlen(prefix)) == 0);
            v = nj_realloc_array(v, (size_t)n + 1, sizeof *v);
            v[n++] = nj_strdup(key);
        }
        for (size_t i = 1; i < page.nobjects; i++)
            CHECK(strcmp(page.objects[i - 1].key, page.objects[i].key) < 0);
        nj_obj_page_clear(&page);
    } while (token);
    *out = v;
    return n;
}

static void free_keys(char **v, long n)
{
    for (long i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

static void test_list(void)
{
    /* MANY keys in a two-level tree with names chosen to sort awkwardly:
     * "x.y" sorts before "x/..." ('.' < '/'), "x0" after. */
    char **want = nj_calloc(MANY + 3, sizeof *want);
    int failed = 0;
    size_t nwant = 0;
    for (unsigned i = 0; i < MANY; i++)
        want[nwant++] = nj_asprintf("%slist/d%02u/k%04u", pre, i % 37, i);
    want[nwant++] = nj_asprintf("%slist/d05.y", pre);
    want[nwant++] = nj_asprintf("%slist/d050", pre);
    want[nwant++] = nj_asprintf("%slist/d05-", pre);
    for (size_t i = 0; i < nwant; i++)
        REQUIRE(nj_obj_put_async(o, want[i], "v", 1, NJ_OBJ_REPLACE,
                                 put_async_done, &failed) == 0);
    nj_obj_wait(o);
    CHECK(failed == 0);
    qsort(want, nwant, sizeof *want, cmp_str);

    NJ_CLEANUP_FREE char *lp = K("list/");
    char **got = NULL;
    unsigned pages = 0;
    /* The whole namespace (the root of a directory), twice: a listing
     * leaves nothing behind that shortens the next. */
    long all1 = list_all(pre, NULL, &got, &pages);
    free_keys(got, all1);
    long all2 = list_all(pre, NULL, &got, &pages);
    free_keys(got, all2);
    CHECK(all1 >= (long)nwant && all1 == all2);
    long n = list_all(lp, NULL, &got, &pages);
    CHECK(n == (long)nwant);
    CHECK(pages >= 2);
    for (long i = 0; n == (long)nwant && i < n; i++)
        if (strcmp(got[i], want[i]) != 0) {
            fprintf(stderr, "list[%ld]: '%s', want '%s'\n", i, got[i],
                    want[i]);
            CHECK(!"listing out of order or wrong");
            break;
        }
    free_keys(got, n);

    /* A prefix ending mid-segment: "d05" matches d05/..., d05.y, d050,
     * d05-. */
    NJ_CLEANUP_FREE char *mid = K("list/d05");
    size_t expect = 0;
    for (size_t i = 0; i < nwant; i++)
        expect += strncmp(want[i], mid, strlen(mid)) == 0;
    n = list_all(mid, NULL, &got, &pages);
    CHECK(n == (long)expect);
    free_keys(got, n);

    /* The delimiter: 37 directories as common prefixes and the three
     * objects beside them, in byte order all together. */
    n = list_all(lp, "/", &got, &pages);
    CHECK(n == 37 + 3);
    unsigned dirs = 0;
    for (long i = 0; i < n; i++)
        dirs += got[i][strlen(got[i]) - 1] == '/';
    CHECK(dirs == 37);
    free_keys(got, n);

    /* Absent prefix: an empty listing, not a failure. */
    NJ_CLEANUP_FREE char *none = K("nothing-here/");
    n = list_all(none, NULL, &got, &pages);
    CHECK(n == 0);
    free_keys(got, n);

    CHECK(nj_obj_delete_many(o, (const char *const *)want, nwant) == 0);
    n = list_all(lp, NULL, &got, &pages);
    CHECK(n == 0);
    free_keys(got, n);
    n = list_all(lp, "/", &got, &pages);
    CHECK(n == 0); /* no empty "directories" left as prefixes */
    free_keys(got, n);
    for (size_t i = 0; i < nwant; i++)
        free(want[i]);
    free(want);
}

/* ---- hostile directory ---- */

static void test_hostile_dir(void)
{
    NJ_CLEANUP_FREE char *outside = nj_asprintf("%s.outside", root);
    REQUIRE(mkdir(outside, 0700) == 0 || errno == EEXIST);
    NJ_CLEANUP_FREE char *secret = nj_asprintf("%s/secret", outside);
    int fd = open(secret, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    REQUIRE(fd >= 0);
    REQUIRE(write(fd, "secret", 6) == 6);
    close(fd);
    NJ_CLEANUP_FREE char *h = nj_asprintf("%s/h", root);
    REQUIRE(mkdir(h, 0700) == 0);

    /* A symlink as an object and as a directory of keys. */
    NJ_CLEANUP_FREE char *link = nj_asprintf("%s/h/link", root);
    REQUIRE(symlink(secret, link) == 0);
    NJ_CLEANUP_FREE char *dlink = nj_asprintf("%s/h/dlink", root);
    REQUIRE(symlink(outside, dlink) == 0);
    void *buf = NULL;
    size_t len = 0;
    errno = 0;
    CHECK(nj_obj_get(o, "h/link", 100, &buf, &len) == -1 && errno == EINVAL);
    CHECK(strstr(nj_error_get(), "not a regular file") != NULL);
    CHECK(nj_obj_head(o, "h/link", NULL, NULL, NULL) == -1);
    CHECK(nj_obj_get(o, "h/dlink/secret", 100, &buf, &len) == -1);
    CHECK(nj_obj_put(o, "h/dlink/new", "x", 1, NJ_OBJ_REPLACE, NULL, NULL) ==
          -1);
    CHECK(nj_obj_put(o, "h/link", "x", 1, NJ_OBJ_IF_MATCH, "t", NULL) == -1);
    NJ_CLEANUP_FREE char *outnew = nj_asprintf("%s/new", outside);
    CHECK(access(outnew, F_OK) != 0);
    /* Listed, so that they are seen; never descended into. */
    char **got = NULL;
    unsigned pages;
    long n = list_all("h/", NULL, &got, &pages);
    CHECK(n == 2);
    for (long i = 0; i < n; i++)
        CHECK(strcmp(got[i], "h/dlink") == 0 || strcmp(got[i], "h/link") == 0);
    free_keys(got, n);

    /* A FIFO: never waited on. */
    NJ_CLEANUP_FREE char *fifo = nj_asprintf("%s/h/fifo", root);
    REQUIRE(mkfifo(fifo, 0600) == 0);
    CHECK(nj_obj_get(o, "h/fifo", 100, &buf, &len) == -1 && errno == EINVAL);
    CHECK(nj_obj_get_range(o, "h/fifo", 0, &len, 1) == -1);
    /* A directory where an object is expected. */
    NJ_CLEANUP_FREE char *sub = nj_asprintf("%s/h/sub", root);
    REQUIRE(mkdir(sub, 0700) == 0);
    NJ_CLEANUP_FREE char *subf = nj_asprintf("%s/h/sub/f", root);
    fd = open(subf, O_WRONLY | O_CREAT, 0600);
    REQUIRE(fd >= 0);
    close(fd);
    CHECK(nj_obj_get(o, "h/sub", 100, &buf, &len) == -1);
    CHECK(nj_obj_delete(o, "h/sub") == -1);
    CHECK(access(subf, F_OK) == 0);

    /* Deleting the planted names removes the names only. */
    CHECK(nj_obj_delete(o, "h/link") == 0);
    CHECK(nj_obj_delete(o, "h/dlink") == 0);
    CHECK(access(secret, F_OK) == 0 && access(outside, F_OK) == 0);

    /* A stale temporary file is never listed; a day old, it goes. */
    NJ_CLEANUP_FREE char *tmp = nj_asprintf("%s/h/.tmp-obj-stale", root);
    fd = open(tmp, O_WRONLY | O_CREAT, 0600);
    REQUIRE(fd >= 0);
    close(fd);
    struct timespec old[2] = { { time(NULL) - 3 * 86400, 0 },
                               { time(NULL) - 3 * 86400, 0 } };
    REQUIRE(utimensat(AT_FDCWD, tmp, old, AT_SYMLINK_NOFOLLOW) == 0);
    n = list_all("h/", NULL, &got, &pages);
    for (long i = 0; i < n; i++)
        CHECK(strstr(got[i], ".tmp-") == NULL);
    free_keys(got, n);
    CHECK(access(tmp, F_OK) != 0);
    nj_test_rmtree(outside);
}

/* Count the temporary files left anywhere under path. */
static size_t count_tmp(const char *path)
{
    DIR *dh = opendir(path);
    if (!dh)
        return 0;
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(dh))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        if (strncmp(e->d_name, ".tmp-", 5) == 0)
            n++;
        else if (e->d_type == DT_DIR) {
            NJ_CLEANUP_FREE char *sub = nj_asprintf("%s/%s", path, e->d_name);
            n += count_tmp(sub);
        }
    }
    closedir(dh);
    return n;
}

/* A directory names a lazy create only at the next sync, after a syncfs
 * made its content durable (a name never precedes its data, even across
 * a power loss); until then a second create of the key finds it, and a
 * handle freed unsynced leaves nothing behind. */
static void test_lazy_dir(void)
{
    CHECK(nj_obj_put(o, "lz/a", "aaa", 3, NJ_OBJ_CREATE | NJ_OBJ_LAZY, NULL,
                     NULL) == 0);
    CHECK(nj_obj_head(o, "lz/a", NULL, NULL, NULL) == 0); /* not yet named */
    CHECK(count_tmp(root) == 1);
    CHECK(nj_obj_put(o, "lz/a", "bbb", 3, NJ_OBJ_CREATE | NJ_OBJ_LAZY, NULL,
                     NULL) == 1); /* pending: it exists */
    struct nj_obj_page page = { 0 };
    char *token = NULL;
    CHECK(nj_obj_list(o, "lz/", NULL, &token, &page) == 0);
    CHECK(page.nobjects == 0);
    nj_obj_page_clear(&page);
    CHECK(nj_obj_sync(o) == 0);
    void *buf = NULL;
    size_t len = 0;
    REQUIRE(nj_obj_get(o, "lz/a", 10, &buf, &len) == 0);
    CHECK(len == 3 && memcmp(buf, "aaa", 3) == 0);
    free(buf);
    CHECK(count_tmp(root) == 0);

    /* More than one batch: some are named by a flush a put started. */
    enum { N = 5000 };
    for (int i = 0; i < N; i++) {
        char key[64], val[32];
        snprintf(key, sizeof key, "lz/m%02x/k%05d", i & 0xff, i);
        int n = snprintf(val, sizeof val, "value %d", i);
        CHECK(nj_obj_put(o, key, val, (size_t)n, NJ_OBJ_CREATE | NJ_OBJ_LAZY,
                         NULL, NULL) == 0);
    }
    CHECK(nj_obj_sync(o) == 0);
    CHECK(count_tmp(root) == 0);
    for (int i = 0; i < N; i += 97) {
        char key[64], val[32];
        snprintf(key, sizeof key, "lz/m%02x/k%05d", i & 0xff, i);
        int n = snprintf(val, sizeof val, "value %d", i);
        REQUIRE(nj_obj_get(o, key, 100, &buf, &len) == 0);
        CHECK(len == (size_t)n && memcmp(buf, val, len) == 0);
        free(buf);
    }
    long total = 0;
    do {
        REQUIRE(nj_obj_list(o, "lz/", NULL, &token, &page) == 0);
        total += (long)page.nobjects;
        nj_obj_page_clear(&page);
    } while (token);
    CHECK(total == N + 1);

    /* Freed before a sync: nothing named, no temporary file left. */
    CHECK(nj_obj_put(o, "lz/dropped", "d", 1, NJ_OBJ_CREATE | NJ_OBJ_LAZY,
                     NULL, NULL) == 0);
    nj_obj_free(o);
    CHECK(count_tmp(root) == 0);
    o = nj_objects_dir_new(root);
    CHECK(nj_obj_head(o, "lz/dropped", NULL, NULL, NULL) == 0);
}

int main(int argc, char **argv)
{
    bool s3 = argc == 2 && strcmp(argv[1], "s3") == 0;
    if (argc != 2 || (!s3 && strcmp(argv[1], "dir") != 0)) {
        fprintf(stderr, "usage: test-objects s3|dir\n");
        return 2;
    }
    NJ_CLEANUP_FREE char *dir = nj_test_tmpdir("objects");
    if (s3) {
        if (!nj_test_s3_env()) {
            printf("no test S3 endpoint: run scripts/ceph-start.sh and "
                   "export what it prints\n");
            return 77;
        }
        struct nj_s3_config c = { 0 };
        REQUIRE(nj_s3_config_load(&c, NULL) == 0);
        o = nj_objects_s3_new(&c, "nj-test");
        nj_s3_config_clear(&c);
        REQUIRE(o);
        REQUIRE(nj_obj_create(o) == 0);
        pre = nj_asprintf("objects-%ld-%ld/", (long)time(NULL),
                          (long)getpid());
    } else {
        root = nj_asprintf("%s/ns", dir);
        o = nj_objects_dir_new(root);
        void *buf = NULL;
        size_t len = 0;
        CHECK(nj_obj_get(o, "x", 10, &buf, &len) == -1); /* no root yet */
        REQUIRE(nj_obj_create(o) == 0);
        pre = nj_strdup("");
    }
    test_get_put();
    test_races();
    test_list();
    if (!s3) {
        test_hostile_dir();
        test_lazy_dir();
    }
    nj_obj_free(o);
    nj_test_rmtree(dir);
    free(root);
    free(pre);
    return nj_test_done(s3 ? "test-objects s3" : "test-objects dir");
}
