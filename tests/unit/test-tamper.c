/*
 * test-tamper: whatever is in a store, no restore exits 0 with bytes that
 * differ from what was backed up; verify reports the damage; prune refuses
 * to merge across domains or chains and leaves the store as it was.
 *
 * A pristine store holds two domains: A (disks vda and vdb; a full and two
 * incs, A0 <- A1 <- A2) and B (one disk vda; B0 <- B1), with the truth of
 * every disk at every point.  Each case copies the pristine store, tampers
 * with it as someone with write access to the store could (index entries
 * with a gap at the start of a full, out of order, overlapping, outside the
 * disk, resealed so that their digests match; wrong entry counts, a
 * truncated index, a flipped byte and swapped files among chunks, indexes
 * swapped between backups and between disks, a parent naming another
 * domain's backup, a cycle of parents, a parent newer than its child, a
 * missing full, manifests with wrong types, integers json-c clamps and a
 * disk size that differs from its index), then for every point and disk:
 *
 *  - the library's restore, and the nightjar-restore program when
 *    NIGHTJAR_RESTORE names it, either fail or give exactly the truth; the
 *    case's victim (a point and disk the tamper reaches) must fail;
 *  - a store-wide nj_verify returns 1;
 *  - for the chain cases, nj_prune_remove of the backups involved fails and
 *    the store's files are byte for byte what they were.
 *
 * Then the fail-closed checks: an unreadable protection flag (a symlink
 * loop, and a backend that reports an error) stops prune; a staging
 * directory that cannot be listed stops gc before it sweeps anything.
 */
#include "nj-io.h"
#include "nj-restore.h"
#include "nj-test.h"
#include "nj-util.h"
#include "nj-prune.h"
#include "store-backend.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define GRID (256u << 10)
#define NPTS 5
enum { A0, A1, A2, B0, B1 };

static const uint64_t sizes[2] = { (1u << 20) + 4097, (512u << 10) + 333 };
static const char *const targets[2] = { "vda", "vdb" };

struct world {
    char *dir, *pristine, *work, *scratch, *bin;
    /* The stores' URLs: the paths, or with NJ_TEST_STORE=objdir the
     * object store on those directories (the same damage to the same
     * files, where a backup's files sit in generation 1). */
    char *pristine_url, *work_url;
    bool obj;
    char *ids[NPTS];
    unsigned char *truth[NPTS][2]; /* NULL: no such disk */
    unsigned cases, restores_failed, restores_exact, cli_runs;
};

/* ---- building the pristine store ---- */

static void build(struct world *w)
{
    struct nj_store *s = nj_test_store_create(w->pristine_url);
    REQUIRE(s);
    struct nj_codec *codec = nj_codec_new(1);
    uint64_t rng = 0x7a3e9;
    for (int dom = 0; dom < 2; dom++) {
        int ndisks = dom == 0 ? 2 : 1;
        int first = dom == 0 ? A0 : B0, npts = dom == 0 ? 3 : 2;
        unsigned char *cur[2] = { NULL, NULL };
        struct nj_test_dirty dirty[2];
        for (int k = 0; k < ndisks; k++) {
            cur[k] = nj_malloc((size_t)sizes[k]);
            nj_test_fill_random(&rng, cur[k], (size_t)sizes[k]);
            nj_test_dirty_init(&dirty[k], sizes[k]);
        }
        for (int p = 0; p < npts; p++) {
            struct nj_backup_params bp = {
                .domain_name = dom == 0 ? "tamper-a" : "tamper-b",
                .domain_uuid = dom == 0 ? "aaaaaaaa-0000-4000-8000-00000000000a"
                                        : "bbbbbbbb-0000-4000-8000-00000000000b",
                .level = p ? NJ_LEVEL_INC : NJ_LEVEL_FULL,
                .parent = p ? w->ids[first + p - 1] : NULL,
            };
            struct nj_backup *b = nj_backup_begin(s, &bp);
            REQUIRE(b);
            for (int k = 0; k < ndisks; k++) {
                if (p) {
                    nj_test_dirty_clear(&dirty[k]);
                    nj_test_mutate(&rng, cur[k], sizes[k], &dirty[k], 4);
                }
                REQUIRE(nj_test_store_disk(b, codec, targets[k], cur[k],
                                           sizes[k], &dirty[k], p == 0,
                                           GRID) == 0);
                w->truth[first + p][k] = nj_malloc((size_t)sizes[k]);
                memcpy(w->truth[first + p][k], cur[k], (size_t)sizes[k]);
            }
            REQUIRE(nj_backup_commit(b) == 0);
            w->ids[first + p] = nj_strdup(nj_backup_id(b));
            nj_backup_free(b);
        }
        for (int k = 0; k < ndisks; k++) {
            free(cur[k]);
            nj_test_dirty_free(&dirty[k]);
        }
    }
    nj_codec_free(codec);
    nj_store_close(s);
}

/* ---- files ---- */

static unsigned char *slurp(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    REQUIRE(fd >= 0);
    struct stat st;
    REQUIRE(fstat(fd, &st) == 0);
    unsigned char *buf = nj_malloc((size_t)st.st_size + 1);
    REQUIRE(nj_full_read(fd, buf, (size_t)st.st_size) == 0);
    close(fd);
    buf[st.st_size] = '\0';
    *len = (size_t)st.st_size;
    return buf;
}

static void spill(const char *path, const void *buf, size_t len)
{
    unlink(path);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    REQUIRE(fd >= 0);
    REQUIRE(nj_full_write(fd, buf, len) == 0);
    REQUIRE(close(fd) == 0);
}

static char *bpath(const struct world *w, int pt, const char *name)
{
    if (w->obj)
        return nj_asprintf("%s/backups/%s/%s%s", w->work, w->ids[pt],
                           strcmp(name, "protected") == 0 ? "flags/"
                                                          : "g00000001/",
                           name);
    return nj_asprintf("%s/backups/%s/%s", w->work, w->ids[pt], name);
}

/* Every file of the work store, with a digest of its content, sorted. */
NJ_VECTOR(str_vec, char *);

static void snapshot(const char *root, const char *rel, struct str_vec *out)
{
    NJ_CLEANUP_FREE char *path = nj_asprintf("%s/%s", root, rel);
    DIR *d = opendir(path);
    REQUIRE(d);
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        NJ_CLEANUP_FREE char *r = nj_asprintf("%s/%s", rel, de->d_name);
        NJ_CLEANUP_FREE char *p = nj_asprintf("%s/%s", root, r);
        struct stat st;
        REQUIRE(lstat(p, &st) == 0);
        if (S_ISDIR(st.st_mode)) {
            str_vec_append(out, nj_asprintf("%s/", r));
            snapshot(root, r, out);
        } else if (S_ISREG(st.st_mode)) {
            size_t len = 0;
            unsigned char *buf = slurp(p, &len);
            struct nj_digest dg;
            REQUIRE(nj_sha256(buf, len, &dg) == 0);
            char hex[NJ_DIGEST_HEX_LEN + 1];
            nj_digest_to_hex(&dg, hex);
            str_vec_append(out, nj_asprintf("%s %s", r, hex));
            free(buf);
        } else {
            str_vec_append(out, nj_asprintf("%s ?", r));
        }
    }
    closedir(d);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void snap(const char *root, struct str_vec *v)
{
    snapshot(root, ".", v);
    if (v->len)
        qsort(v->ptr, v->len, sizeof *v->ptr, cmp_str);
}

static bool snap_same(const struct str_vec *a, const struct str_vec *b)
{
    if (a->len != b->len)
        return false;
    for (size_t i = 0; i < a->len; i++)
        if (strcmp(a->ptr[i], b->ptr[i]) != 0)
            return false;
    return true;
}

static void snap_free(struct str_vec *v)
{
    for (size_t i = 0; i < v->len; i++)
        free(v->ptr[i]);
    str_vec_reset(v);
}

/* ---- manifests and indexes ---- */

static struct json_object *manifest_load(const struct world *w, int pt)
{
    NJ_CLEANUP_FREE char *p = bpath(w, pt, "manifest.json");
    size_t len = 0;
    unsigned char *t = slurp(p, &len);
    struct json_object *o = json_tokener_parse((char *)t);
    REQUIRE(o);
    free(t);
    return o;
}

static void manifest_store(const struct world *w, int pt,
                           struct json_object *o)
{
    NJ_CLEANUP_FREE char *p = bpath(w, pt, "manifest.json");
    const char *t = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY);
    spill(p, t, strlen(t));
    json_object_put(o);
}

static struct json_object *disk_obj(struct json_object *o, int k)
{
    struct json_object *disks = NULL;
    REQUIRE(json_object_object_get_ex(o, "disks", &disks));
    return json_object_array_get_idx(disks, (size_t)k);
}

/* Replace text `from` by `to` in a manifest, as text. */
static void manifest_subst(const struct world *w, int pt, const char *from,
                           const char *to)
{
    NJ_CLEANUP_FREE char *p = bpath(w, pt, "manifest.json");
    size_t len = 0;
    unsigned char *t = slurp(p, &len);
    char *at = strstr((char *)t, from);
    REQUIRE(at);
    NJ_CLEANUP_FREE char *n = nj_asprintf("%.*s%s%s", (int)(at - (char *)t),
                                          (char *)t, to, at + strlen(from));
    spill(p, n, strlen(n));
    free(t);
}

struct idx {
    unsigned char *buf;
    size_t len;
    uint64_t count;
};

static struct idx idx_load(const struct world *w, int pt, int k)
{
    NJ_CLEANUP_FREE char *name = nj_asprintf("disk%d.idx", k);
    NJ_CLEANUP_FREE char *p = bpath(w, pt, name);
    struct idx x;
    x.buf = slurp(p, &x.len);
    x.count = nj_get_le64(x.buf + 24);
    REQUIRE(x.len == 96 + 64 * x.count);
    return x;
}

static unsigned char *entry(struct idx *x, uint64_t i)
{
    REQUIRE(i < x->count);
    return x->buf + 64 + 64 * i;
}

/* Write x back with a trailer that matches it, and make the manifest
 * promise exactly what its header says: only the semantic checks can
 * tell what is wrong. */
static void idx_reseal(const struct world *w, int pt, int k, struct idx *x)
{
    struct nj_digest d;
    REQUIRE(nj_sha256(x->buf, x->len - 32, &d) == 0);
    memcpy(x->buf + x->len - 32, d.b, 32);
    NJ_CLEANUP_FREE char *name = nj_asprintf("disk%d.idx", k);
    NJ_CLEANUP_FREE char *p = bpath(w, pt, name);
    spill(p, x->buf, x->len);
    char hex[NJ_DIGEST_HEX_LEN + 1];
    nj_digest_to_hex(&d, hex);
    struct json_object *o = manifest_load(w, pt);
    struct json_object *jd = disk_obj(o, k);
    json_object_object_add(jd, "index_sha256", json_object_new_string(hex));
    json_object_object_add(jd, "entries",
                           json_object_new_uint64(nj_get_le64(x->buf + 24)));
    json_object_object_add(jd, "covered",
                           json_object_new_uint64(nj_get_le64(x->buf + 32)));
    manifest_store(w, pt, o);
    free(x->buf);
}

static char *chunk_file(const struct world *w, const unsigned char *digest)
{
    struct nj_digest d;
    memcpy(d.b, digest, 32);
    char hex[NJ_DIGEST_HEX_LEN + 1];
    nj_digest_to_hex(&d, hex);
    return nj_asprintf("%s/chunks/%.2s/%s", w->work, hex, hex);
}

/* ---- the cases ---- */

enum kind {
    GAP_START, OUT_OF_ORDER, OVERLAP, OUTSIDE_DISK, WRONG_COUNT, TRUNCATED,
    CHUNK_FLIP, CHUNK_SWAP, INDEX_SWAP_BACKUPS, INDEX_SWAP_DISKS,
    PARENT_OTHER_DOMAIN, PARENT_CYCLE, PARENT_NEWER, FULL_MISSING,
    WRONG_TYPE, CLAMPED_INT, SIZE_DIFFERS, HUGE_INDEX, KIND_COUNT
};

static const char *const kind_names[KIND_COUNT] = {
    "full index with a gap at the start", "entries out of order",
    "overlapping entries", "entry outside the disk", "wrong entry count",
    "truncated index", "flipped byte in a chunk", "swapped chunk files",
    "indexes swapped between backups", "indexes swapped between disks",
    "parent naming another domain's backup", "a cycle of parents",
    "a parent newer than its child", "an inc whose full is missing",
    "manifest with a wrong type", "manifest integer json-c clamps",
    "disk size differing from its index along the chain",
    "huge index file with a small entry count",
};

struct tcase {
    int victim, disk;     /* a restore that must fail */
    int prune[2];         /* backups prune must refuse to remove, or -1 */
};

static struct tcase apply(struct world *w, enum kind kind)
{
    struct tcase tc = { A0, 0, { -1, -1 } };
    struct idx x;
    switch (kind) {
    case GAP_START: /* A0 vda loses its first entry; the header still
                       claims the whole disk */
        x = idx_load(w, A0, 0);
        memmove(x.buf + 64, x.buf + 128, x.len - 128);
        x.len -= 64;
        x.count--;
        nj_put_le64(x.buf + 24, x.count);
        idx_reseal(w, A0, 0, &x);
        break;
    case OUT_OF_ORDER: { /* A0 vda's last two entries swapped: a view
                            that stops at the disk end never reads the
                            last one */
        x = idx_load(w, A0, 0);
        unsigned char t[64];
        memcpy(t, entry(&x, x.count - 2), 64);
        memcpy(entry(&x, x.count - 2), entry(&x, x.count - 1), 64);
        memcpy(entry(&x, x.count - 1), t, 64);
        idx_reseal(w, A0, 0, &x);
        break;
    }
    case OVERLAP: { /* A0 vda entry 1 starts 4 KiB early */
        x = idx_load(w, A0, 0);
        unsigned char *e = entry(&x, 1);
        nj_put_le64(e, nj_get_le64(e) - 4096);
        idx_reseal(w, A0, 0, &x);
        break;
    }
    case OUTSIDE_DISK: { /* A0 vda's last entry moved past the end */
        x = idx_load(w, A0, 0);
        unsigned char *e = entry(&x, x.count - 1);
        nj_put_le64(e, nj_get_le64(e) + 4096);
        idx_reseal(w, A0, 0, &x);
        break;
    }
    case WRONG_COUNT: { /* A1 vdb: the manifest promises one entry more */
        struct json_object *o = manifest_load(w, A1);
        struct json_object *jd = disk_obj(o, 1), *v = NULL;
        REQUIRE(json_object_object_get_ex(jd, "entries", &v));
        json_object_object_add(jd, "entries", json_object_new_uint64(
                                                  json_object_get_uint64(v) + 1));
        manifest_store(w, A1, o);
        tc = (struct tcase){ A1, 1, { -1, -1 } };
        break;
    }
    case TRUNCATED: {
        NJ_CLEANUP_FREE char *p = bpath(w, A1, "disk0.idx");
        struct stat st;
        REQUIRE(stat(p, &st) == 0);
        REQUIRE(truncate(p, st.st_size - 64) == 0);
        tc = (struct tcase){ A2, 0, { -1, -1 } };
        break;
    }
    case CHUNK_FLIP: { /* the chunk of A0 vda's first entry */
        x = idx_load(w, A0, 0);
        REQUIRE(entry(&x, 0)[28] == 1);
        NJ_CLEANUP_FREE char *p = chunk_file(w, entry(&x, 0) + 32);
        size_t len = 0;
        unsigned char *c = slurp(p, &len);
        c[len - 1] ^= 0x40;
        spill(p, c, len);
        free(c);
        free(x.buf);
        break;
    }
    case CHUNK_SWAP: { /* the chunks of A0 vda's first two entries */
        x = idx_load(w, A0, 0);
        REQUIRE(entry(&x, 0)[28] == 1 && entry(&x, 1)[28] == 1);
        NJ_CLEANUP_FREE char *p0 = chunk_file(w, entry(&x, 0) + 32);
        NJ_CLEANUP_FREE char *p1 = chunk_file(w, entry(&x, 1) + 32);
        size_t l0 = 0, l1 = 0;
        unsigned char *c0 = slurp(p0, &l0), *c1 = slurp(p1, &l1);
        spill(p0, c1, l1);
        spill(p1, c0, l0);
        free(c0);
        free(c1);
        free(x.buf);
        break;
    }
    case INDEX_SWAP_BACKUPS: { /* A1's vda index is A2's */
        NJ_CLEANUP_FREE char *p1 = bpath(w, A1, "disk0.idx");
        NJ_CLEANUP_FREE char *p2 = bpath(w, A2, "disk0.idx");
        size_t len = 0;
        unsigned char *c = slurp(p2, &len);
        spill(p1, c, len);
        free(c);
        tc = (struct tcase){ A1, 0, { -1, -1 } };
        break;
    }
    case INDEX_SWAP_DISKS: { /* A0's vda and vdb indexes exchanged */
        NJ_CLEANUP_FREE char *p0 = bpath(w, A0, "disk0.idx");
        NJ_CLEANUP_FREE char *p1 = bpath(w, A0, "disk1.idx");
        size_t l0 = 0, l1 = 0;
        unsigned char *c0 = slurp(p0, &l0), *c1 = slurp(p1, &l1);
        spill(p0, c1, l1);
        spill(p1, c0, l0);
        free(c0);
        free(c1);
        break;
    }
    case PARENT_OTHER_DOMAIN: { /* B1's parent is A1 */
        struct json_object *o = manifest_load(w, B1);
        json_object_object_add(o, "parent", json_object_new_string(w->ids[A1]));
        manifest_store(w, B1, o);
        tc = (struct tcase){ B1, 0, { A1, -1 } };
        break;
    }
    case PARENT_CYCLE: { /* A1's parent is A2, whose parent is A1 */
        struct json_object *o = manifest_load(w, A1);
        json_object_object_add(o, "parent", json_object_new_string(w->ids[A2]));
        manifest_store(w, A1, o);
        tc = (struct tcase){ A2, 0, { A1, A2 } };
        break;
    }
    case PARENT_NEWER: { /* A1 finished after its child A2 */
        struct json_object *o2 = manifest_load(w, A2), *v = NULL;
        REQUIRE(json_object_object_get_ex(o2, "finished_us", &v));
        int64_t us = json_object_get_int64(v) + 5000000;
        json_object_put(o2);
        struct json_object *o = manifest_load(w, A1);
        json_object_object_add(o, "finished_us", json_object_new_int64(us));
        json_object_object_add(o, "finished",
                               json_object_new_int64(us / 1000000));
        manifest_store(w, A1, o);
        tc = (struct tcase){ A2, 0, { A1, -1 } };
        break;
    }
    case FULL_MISSING: {
        NJ_CLEANUP_FREE char *p = nj_asprintf("%s/backups/%s", w->work,
                                              w->ids[A0]);
        nj_test_rmtree(p);
        tc = (struct tcase){ A1, 0, { A1, -1 } };
        break;
    }
    case WRONG_TYPE: { /* A1 vda's size is a string */
        struct json_object *o = manifest_load(w, A1);
        json_object_object_add(disk_obj(o, 0), "size",
                               json_object_new_string("1052673"));
        manifest_store(w, A1, o);
        tc = (struct tcase){ A2, 0, { -1, -1 } };
        break;
    }
    case CLAMPED_INT: { /* A1's finished_us beyond 64 bits */
        struct json_object *o = manifest_load(w, A1), *v = NULL;
        REQUIRE(json_object_object_get_ex(o, "finished_us", &v));
        NJ_CLEANUP_FREE char *from = nj_asprintf(
            "\"finished_us\":%lld", (long long)json_object_get_int64(v));
        json_object_put(o);
        manifest_subst(w, A1, from, "\"finished_us\":99999999999999999999");
        manifest_subst(w, A1, "\"finished\":", "\"finished\":9223372036854"
                                                "775807, \"x\":");
        tc = (struct tcase){ A1, 0, { -1, -1 } };
        break;
    }
    case SIZE_DIFFERS: { /* A1 says vdb grew; its index does not */
        struct json_object *o = manifest_load(w, A1);
        json_object_object_add(disk_obj(o, 1), "size",
                               json_object_new_uint64(sizes[1] + 4096));
        manifest_store(w, A1, o);
        tc = (struct tcase){ A2, 1, { -1, -1 } };
        break;
    }
    case HUGE_INDEX: { /* 64 MiB of entries behind a manifest that
                          promises a few */
        NJ_CLEANUP_FREE char *p = bpath(w, A1, "disk0.idx");
        REQUIRE(truncate(p, 96 + 64 * (1 << 20)) == 0);
        tc = (struct tcase){ A1, 0, { -1, -1 } };
        break;
    }
    case KIND_COUNT:
        abort();
    }
    return tc;
}

/* ---- the checks ---- */

static bool file_is(const char *path, const unsigned char *truth,
                    uint64_t size)
{
    size_t len = 0;
    unsigned char *got = slurp(path, &len);
    bool same = len == size && memcmp(got, truth, (size_t)size) == 0;
    free(got);
    return same;
}

/* 0: restored exactly; 1: refused; -1: exit 0 with wrong bytes. */
static int restore_lib(struct world *w, struct nj_store *s,
                       const struct nj_catalog *c, int pt, int k)
{
    const struct nj_manifest *m = nj_catalog_find(c, w->ids[pt]);
    if (!m || !nj_manifest_disk(m, targets[k]))
        return 1;
    uint64_t size = nj_manifest_disk(m, targets[k])->size;
    struct nj_output *out = nj_output_open(w->scratch, NJ_OUTPUT_RAW, size,
                                           true);
    REQUIRE(out);
    int r = nj_restore_disk(s, c, m, targets[k], out, NULL, NULL);
    REQUIRE(nj_output_close(out, r == 0) == 0 || r < 0);
    if (r < 0) {
        CHECK(access(w->scratch, F_OK) < 0);
        return 1;
    }
    bool same = file_is(w->scratch, w->truth[pt][k], sizes[k]);
    unlink(w->scratch);
    return same ? 0 : -1;
}

static int restore_cli(struct world *w, int pt, int k)
{
    NJ_CLEANUP_FREE char *errp = nj_asprintf("%s/cli.err", w->dir);
    fflush(NULL);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        int e = open(errp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        int nul = open("/dev/null", O_WRONLY | O_CLOEXEC);
        if (e < 0 || nul < 0 || dup2(nul, 1) < 0 || dup2(e, 2) < 0)
            _exit(127);
        execl(w->bin, w->bin, "restore", "-s", w->work_url, "-b", w->ids[pt],
              "--disk", targets[k], "-o", w->scratch, (char *)NULL);
        _exit(127);
    }
    int st = 0;
    REQUIRE(waitpid(pid, &st, 0) == pid);
    w->cli_runs++;
    REQUIRE(WIFEXITED(st) && WEXITSTATUS(st) != 127);
    if (WEXITSTATUS(st) != 0) {
        CHECK(access(w->scratch, F_OK) < 0);
        size_t len = 0;
        unsigned char *err = slurp(errp, &len);
        size_t lines = 0;
        for (size_t i = 0; i < len; i++)
            lines += err[i] == '\n';
        if (lines != 1)
            fprintf(stderr, "restore stderr is not one line: %s", err);
        CHECK(lines == 1);
        free(err);
        return 1;
    }
    bool same = file_is(w->scratch, w->truth[pt][k], sizes[k]);
    unlink(w->scratch);
    return same ? 0 : -1;
}

static int verify_store(struct nj_store *s, const struct nj_catalog *c)
{
    FILE *f = fopen("/dev/null", "w");
    REQUIRE(f);
    struct nj_verify_opts vo = { .threads = 1, .out = f };
    int r = nj_verify(s, c, &vo);
    fclose(f);
    return r;
}

static void run_case(struct world *w, enum kind kind)
{
    nj_test_rmtree(w->work);
    nj_test_copy_store(w->pristine, w->work);
    struct tcase tc = apply(w, kind);
    struct nj_store *s = nj_store_open(w->work_url, 0);
    REQUIRE(s);
    struct nj_catalog *c = nj_catalog_open(s);
    REQUIRE(c);
    int vr = verify_store(s, c);
    if (vr != 1)
        fprintf(stderr, "%s: verify returned %d\n", kind_names[kind], vr);
    CHECK(vr == 1);
    for (int pt = 0; pt < NPTS; pt++)
        for (int k = 0; k < 2; k++) {
            if (!w->truth[pt][k])
                continue;
            int r = restore_lib(w, s, c, pt, k);
            int rc = w->bin ? restore_cli(w, pt, k) : r;
            if (r < 0 || rc < 0)
                fprintf(stderr, "%s: restore of %s '%s' exited 0 with wrong "
                        "bytes (%s)\n", kind_names[kind], w->ids[pt],
                        targets[k], r < 0 ? "library" : "program");
            CHECK(r >= 0 && rc >= 0);
            if (pt == tc.victim && k == tc.disk) {
                if (r != 1 || rc != 1)
                    fprintf(stderr, "%s: restore of the victim %s '%s' did "
                            "not fail\n", kind_names[kind], w->ids[pt],
                            targets[k]);
                CHECK(r == 1 && rc == 1);
            }
            if (r == 1)
                w->restores_failed++;
            else
                w->restores_exact++;
        }
    nj_catalog_free(c);
    for (int i = 0; i < 2; i++) {
        if (tc.prune[i] < 0)
            continue;
        struct str_vec before = { 0 }, after = { 0 };
        snap(w->work, &before);
        int r = nj_prune_remove(s, w->ids[tc.prune[i]]);
        const char *err = nj_error_get();
        snap(w->work, &after);
        if (r != -1 || !snap_same(&before, &after))
            fprintf(stderr, "%s: prune of %s returned %d, store %s\n",
                    kind_names[kind], w->ids[tc.prune[i]], r,
                    snap_same(&before, &after) ? "unchanged" : "CHANGED");
        CHECK(r == -1);
        CHECK(strchr(err, '\n') == NULL);
        CHECK(snap_same(&before, &after));
        snap_free(&before);
        snap_free(&after);
    }
    nj_store_close(s);
    w->cases++;
    printf("%s: contained\n", kind_names[kind]);
}

/* ---- fail closed ---- */

static int failing_has_flag(struct nj_store *s, const char *id,
                            const char *flag)
{
    return nj_error_errno(EIO, "'backups/%s/%s'", id, flag);
}

static char **failing_staging_list(struct nj_store *s)
{
    nj_error_errno(EIO, "open 'staging'");
    return NULL;
}

static void fail_closed(struct world *w)
{
    /* A protection flag that cannot be read (a symlink loop): prune of
     * A2 (no children) would otherwise simply delete it. */
    nj_test_rmtree(w->work);
    nj_test_copy_store(w->pristine, w->work);
    NJ_CLEANUP_FREE char *flag = bpath(w, A2, "protected");
    if (w->obj) { /* flags/ exists only once a flag was set */
        NJ_CLEANUP_FREE char *fdir = nj_strdup(flag);
        *strrchr(fdir, '/') = '\0';
        REQUIRE(mkdir(fdir, 0700) == 0);
    }
    REQUIRE(symlink("protected", flag) == 0);
    struct nj_store *s = nj_store_open(w->work_url, 0);
    REQUIRE(s);
    CHECK(nj_prune_is_protected(s, w->ids[A2]) != 0);
    struct str_vec before = { 0 }, after = { 0 };
    snap(w->work, &before);
    CHECK(nj_prune_remove(s, w->ids[A2]) == -1);
    snap(w->work, &after);
    CHECK(snap_same(&before, &after));
    snap_free(&after);
    /* The same through a backend that reports the error, for the backup
     * and for a child whose flag must be carried over. */
    const struct nj_store_ops *real = s->ops;
    struct nj_store_ops ops = *real;
    ops.backup_has_flag = failing_has_flag;
    s->ops = &ops;
    int prot = nj_prune_is_protected(s, w->ids[A1]);
    CHECK(prot == -1);
    CHECK(strstr(nj_error_get(), w->ids[A1]) != NULL);
    CHECK(nj_prune_remove(s, w->ids[A1]) == -1);
    CHECK(nj_prune_remove(s, w->ids[B1]) == -1);
    /* The plan keeps what it cannot judge. */
    struct nj_keep_rules rules = { .last = 1 };
    struct nj_prune_decision *d = NULL;
    size_t n = 0;
    REQUIRE(nj_prune_plan(s, NULL, &rules, &d, &n) == 0);
    CHECK(n == NPTS);
    for (size_t i = 0; i < n; i++)
        CHECK(d[i].mark != NJ_MARK_REMOVE && d[i].error != NULL);
    CHECK(nj_prune_apply(s, d, n) == 0);
    nj_prune_plan_free(d, n);
    snap(w->work, &after);
    CHECK(snap_same(&before, &after));
    snap_free(&after);
    s->ops = real;

    /* gc with a staging listing that fails: nothing swept.  An old chunk
     * nobody references is what a sweep would remove. */
    NJ_CLEANUP_FREE char *orphan = nj_asprintf(
        "%s/chunks/00/00aa000000000000000000000000000000000000000000000000"
        "000000000000", w->work);
    NJ_CLEANUP_FREE char *odir = nj_asprintf("%s/chunks/00", w->work);
    REQUIRE(mkdir(odir, 0700) == 0 || errno == EEXIST); /* objects: none yet */
    spill(orphan, "NJCK", 4);
    struct timespec old[2] = { { 1000000, 0 }, { 1000000, 0 } };
    REQUIRE(utimensat(AT_FDCWD, orphan, old, 0) == 0);
    ops = *real;
    ops.staging_list = failing_staging_list;
    s->ops = &ops;
    struct nj_gc_stats st;
    CHECK(nj_gc(s, 0, &st) == -1);
    CHECK(strstr(nj_error_get(), "not sweeping") != NULL);
    CHECK(access(orphan, F_OK) == 0);
    s->ops = real;
    /* Control: with the real listing, the same gc removes the orphan. */
    CHECK(nj_gc(s, 0, &st) == 0);
    CHECK(access(orphan, F_OK) < 0 && errno == ENOENT);
    nj_store_close(s);
    snap_free(&before);
    printf("unreadable protection and staging: fail closed\n");
}

int main(void)
{
    struct world w = { 0 };
    w.dir = nj_test_tmpdir("tamper");
    w.pristine = nj_asprintf("%s/pristine", w.dir);
    w.work = nj_asprintf("%s/work", w.dir);
    w.pristine_url = nj_test_store_url(w.pristine);
    w.work_url = nj_test_store_url(w.work);
    REQUIRE(!nj_store_url_is_remote(w.work_url)); /* it damages files */
    w.scratch = nj_asprintf("%s/out.raw", w.dir);
    const char *bin = getenv("NIGHTJAR_RESTORE");
    if (bin && access(bin, X_OK) == 0)
        w.bin = nj_strdup(bin);
    else
        printf("NIGHTJAR_RESTORE not set: the program is not checked\n");
    build(&w);
    w.obj = nj_test_store_is_obj(w.pristine_url);

    /* Control: the untouched copy verifies and restores exactly. */
    nj_test_copy_store(w.pristine, w.work);
    {
        struct nj_store *s = nj_store_open(w.work_url, 0);
        REQUIRE(s);
        struct nj_catalog *c = nj_catalog_open(s);
        REQUIRE(c);
        CHECK(verify_store(s, c) == 0);
        for (int pt = 0; pt < NPTS; pt++)
            for (int k = 0; k < 2; k++)
                if (w.truth[pt][k])
                    CHECK(restore_lib(&w, s, c, pt, k) == 0);
        nj_catalog_free(c);
        nj_store_close(s);
    }
    for (int k = 0; k < KIND_COUNT; k++)
        run_case(&w, (enum kind)k);
    fail_closed(&w);
    printf("%u cases: %u restores refused, %u exact, %u program runs\n",
           w.cases, w.restores_failed, w.restores_exact, w.cli_runs);

    for (int pt = 0; pt < NPTS; pt++) {
        free(w.ids[pt]);
        for (int k = 0; k < 2; k++)
            free(w.truth[pt][k]);
    }
    nj_test_rmtree(w.dir);
    free(w.dir);
    free(w.pristine);
    free(w.pristine_url);
    free(w.work_url);
    free(w.work);
    free(w.scratch);
    free(w.bin);
    return nj_test_done("test-tamper");
}
