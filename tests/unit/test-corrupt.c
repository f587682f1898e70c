/*
 * test-corrupt: a damaged store is reported precisely and never restored
 * from silently.
 *
 * A chain of one domain (a full and two incs of two disks) is written
 * with content laid out so that chunks are shared: one chunk by two ranges
 * of one disk and by the other disk, one by both disks of an inc and by
 * the next inc, one used by a single inc and overwritten by the next.  The
 * test records every index entry it writes.  Then, one at a time, it
 * damages a chunk (a flipped payload byte, a truncation, a deletion, the
 * frame of another chunk of the same length) or an index (a flipped byte
 * in an entry's chunk digest, a deletion, the sound index of another
 * backup) and checks:
 *
 *  (a) nj_verify returns 1, and its JSON report names the damaged chunk
 *      with exactly the backups, disks and ranges that reference it (as
 *      recorded while writing), or names the damaged index's backup and
 *      disk; a verify of one point fails exactly when its chain holds a
 *      backup that references the damage;
 *  (b) the restore of every (point, disk) that reads the damage fails with
 *      an error naming the disk and a range where the chunk is read (or
 *      the damaged index), and nj_output_close(out, false) removes the
 *      partial output;
 *  (c) every other (point, disk) restores exactly;
 *  (d) once the original file is put back, verify passes again.
 *
 * The same is checked through the nightjar-restore program when the
 * NIGHTJAR_RESTORE environment variable names it (meson sets it): verify
 * exits 1, restore of a damaged point exits non-zero with one line on
 * stderr naming the range and leaves no output, restore of a sound point
 * succeeds.
 */
#include "nj-test.h"
#include "nj-io.h"
#include "nj-restore.h"
#include "nj-util.h"

#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define NDISKS 2
#define NPOINTS 3
#define G (256u << 10) /* the chunking grid */
#define BLK (64u << 10)
#define DOMAIN_NAME "corrupt"
#define DOMAIN_UUID "c0c0c0c0-1111-4222-8333-444455556666"

static const char *targets[NDISKS] = { "vda", "sdb" };
static const uint64_t sizes[NDISKS] = { 8 * (uint64_t)G + 777,
                                        4 * (uint64_t)G + 333 };

/* One index entry as written. */
struct rec {
    int point, disk;
    uint64_t off, len;
    bool data;
    struct nj_digest d;
    uint32_t chunk_len;
};
NJ_VECTOR(rec_vec, struct rec);

struct world {
    char *dir, *store, *scratch, *restore_bin;
    /* The store's directory, and where a backup's files sit in it: "" in
     * a directory store, "g00000001/" in the object store on a directory
     * (NJ_TEST_STORE=objdir: the same damage to the same files). */
    char *root;
    const char *gen;
    char *ids[NPOINTS];
    unsigned char *truth[NPOINTS][NDISKS];
    struct rec_vec recs;
    unsigned restores_failed, restores_ok, cli_runs;
};

/* ---- writing the chain ---- */

/* Store [off, off+len) of buf as entries cut at the grid, recording them. */
static void put_range(struct world *w, int point, int disk,
                      struct nj_backup *b, struct nj_backup_disk *bd,
                      struct nj_codec *codec, const unsigned char *buf,
                      uint64_t off, uint64_t len)
{
    while (len > 0) {
        uint64_t n = NJ_MIN(len, (off / G + 1) * G - off);
        struct nj_extent e = { .offset = off, .length = n };
        if (nj_is_zero(buf + off, (size_t)n)) {
            e.kind = NJ_EXTENT_ZERO;
        } else {
            e.kind = NJ_EXTENT_DATA;
            e.chunk_len = (uint32_t)n;
            REQUIRE(nj_backup_put_chunk(b, bd, codec, buf + off, (size_t)n,
                                        &e.digest) == 0);
        }
        REQUIRE(nj_backup_disk_append(bd, &e) == 0);
        rec_vec_append(&w->recs, (struct rec){ point, disk, off, n,
                                               e.kind == NJ_EXTENT_DATA,
                                               e.digest, e.chunk_len });
        off += n;
        len -= n;
    }
}

/* The writes of each point, as (disk, offset, length, fill) with fill
 * 'r' for random bytes and anything else a byte value repeated. */
struct write {
    int disk;
    uint64_t off, len;
    int fill;
};

static const struct write p0_writes[] = {
    /* vda: random cells, the pattern at cells 2, 5 and 6, zero at 7 */
    { 0, 0, 2 * (uint64_t)G, 'r' },
    { 0, 2 * (uint64_t)G, G, 0x5a },
    { 0, 3 * (uint64_t)G, 2 * (uint64_t)G, 'r' },
    { 0, 5 * (uint64_t)G, 2 * (uint64_t)G, 0x5a },
    { 0, 8 * (uint64_t)G, 777, 'r' },
    /* sdb: the same pattern cell at cell 1 */
    { 1, 0, G, 'r' },
    { 1, G, G, 0x5a },
    { 1, 2 * (uint64_t)G, 2 * (uint64_t)G + 333, 'r' },
};
static const struct write p1_writes[] = {
    { 0, 2 * (uint64_t)G + BLK, BLK, 'r' }, /* used by P1 only */
    { 0, 7 * (uint64_t)G, BLK, 0x33 },     /* a small shared chunk ... */
    { 1, 3 * (uint64_t)G, BLK, 0x33 },     /* ... on both disks */
};
static const struct write p2_writes[] = {
    { 0, 5 * (uint64_t)G, G, 'r' },         /* hides cell 5's pattern */
    { 1, G, G, 'r' },                       /* hides sdb's pattern */
    { 0, 2 * (uint64_t)G + BLK, BLK, 0x33 }, /* hides P1's own block */
};

static void build_chain(struct world *w)
{
    struct nj_store *s = nj_test_store_create(w->store);
    REQUIRE(s);
    struct nj_codec *codec = nj_codec_new(NJ_ZSTD_LEVEL_DEFAULT);
    REQUIRE(codec);
    uint64_t rng = 0xc0ffee;
    unsigned char *cur[NDISKS];
    for (int k = 0; k < NDISKS; k++)
        cur[k] = nj_calloc(1, (size_t)sizes[k]);
    static const struct {
        const struct write *w;
        size_t n;
    } plan[NPOINTS] = {
        { p0_writes, NJ_ARRAY_SIZE(p0_writes) },
        { p1_writes, NJ_ARRAY_SIZE(p1_writes) },
        { p2_writes, NJ_ARRAY_SIZE(p2_writes) },
    };
    for (int p = 0; p < NPOINTS; p++) {
        struct nj_test_dirty dirty[NDISKS];
        for (int k = 0; k < NDISKS; k++)
            nj_test_dirty_init(&dirty[k], sizes[k]);
        for (size_t i = 0; i < plan[p].n; i++) {
            const struct write *wr = &plan[p].w[i];
            unsigned char *at = cur[wr->disk] + wr->off;
            if (wr->fill == 'r')
                nj_test_fill_random(&rng, at, (size_t)wr->len);
            else
                memset(at, wr->fill, (size_t)wr->len);
            nj_test_dirty_mark(&dirty[wr->disk], wr->off, wr->len);
        }
        struct nj_backup_params bp = {
            .domain_name = DOMAIN_NAME,
            .domain_uuid = DOMAIN_UUID,
            .level = p == 0 ? NJ_LEVEL_FULL : NJ_LEVEL_INC,
            .parent = p == 0 ? NULL : w->ids[p - 1],
        };
        struct nj_backup *b = nj_backup_begin(s, &bp);
        REQUIRE(b);
        for (int k = 0; k < NDISKS; k++) {
            struct nj_backup_disk *bd = nj_backup_disk_add(
                b, targets[k], "raw", sizes[k], p == 0);
            REQUIRE(bd);
            if (p == 0) {
                put_range(w, p, k, b, bd, codec, cur[k], 0, sizes[k]);
                continue;
            }
            for (size_t i = 0; i < dirty[k].nblocks;) {
                if (!dirty[k].bit[i]) {
                    i++;
                    continue;
                }
                size_t j = i;
                while (j < dirty[k].nblocks && dirty[k].bit[j])
                    j++;
                uint64_t off = (uint64_t)i * NJ_TEST_GRANULARITY;
                uint64_t end = NJ_MIN((uint64_t)j * NJ_TEST_GRANULARITY,
                                      sizes[k]);
                put_range(w, p, k, b, bd, codec, cur[k], off, end - off);
                i = j;
            }
        }
        REQUIRE(nj_backup_commit(b) == 0);
        w->ids[p] = nj_strdup(nj_backup_id(b));
        nj_backup_free(b);
        for (int k = 0; k < NDISKS; k++) {
            w->truth[p][k] = nj_malloc((size_t)sizes[k]);
            memcpy(w->truth[p][k], cur[k], (size_t)sizes[k]);
            nj_test_dirty_free(&dirty[k]);
        }
    }
    for (int k = 0; k < NDISKS; k++)
        free(cur[k]);
    nj_codec_free(codec);
    nj_store_close(s);
}

/* ---- what the records say ---- */

/* Does the restore of (point, disk) read chunk d, and where?  Layers the
 * recorded entries newest first, byte by byte: independent of nj_view.
 * Fills reads[] (size bytes) with whether each byte comes from d. */
static bool point_reads(const struct world *w, int point, int disk,
                        const struct nj_digest *d, bool *reads)
{
    uint64_t size = sizes[disk];
    bool *taken = nj_calloc((size_t)size, sizeof *taken);
    bool any = false;
    memset(reads, 0, (size_t)size * sizeof *reads);
    for (int p = point; p >= 0; p--)
        for (size_t i = 0; i < w->recs.len; i++) {
            const struct rec *r = &w->recs.ptr[i];
            if (r->point != p || r->disk != disk)
                continue;
            bool hit = r->data && nj_digest_eq(&r->d, d);
            for (uint64_t x = r->off; x < r->off + r->len; x++) {
                if (taken[x])
                    continue;
                taken[x] = true;
                reads[x] = hit;
                any |= hit;
            }
        }
    free(taken);
    return any;
}

/* Is backup q in the chain of (point, disk)?  Chains here are linear:
 * every point's chain is points 0..point for each disk. */
static bool in_chain(int point, int q)
{
    return q <= point;
}

static int point_of(const struct world *w, const char *id)
{
    for (int p = 0; p < NPOINTS; p++)
        if (!strcmp(w->ids[p], id))
            return p;
    return -1;
}

static int disk_of(const char *target)
{
    for (int k = 0; k < NDISKS; k++)
        if (!strcmp(targets[k], target))
            return k;
    return -1;
}

/* ---- damage ---- */

enum kind {
    CHUNK_FLIP,
    CHUNK_TRUNCATE,
    CHUNK_DELETE,
    CHUNK_SWAP,
    INDEX_FLIP,
    INDEX_DELETE,
    INDEX_SWAP,
    KIND_COUNT
};

static const char *kind_names[KIND_COUNT] = {
    "chunk with a flipped payload byte", "truncated chunk", "deleted chunk",
    "chunk holding another chunk's frame", "index with a flipped byte",
    "deleted index", "index replaced by another backup's",
};

struct damage {
    enum kind kind;
    char *path;          /* the damaged file */
    void *orig;          /* its original content */
    size_t orig_len;
    struct nj_digest d;  /* chunks: the damaged chunk */
    char hex[NJ_DIGEST_HEX_LEN + 1];
    int point, disk;     /* indexes: whose */
};

static void *slurp(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    REQUIRE(fd >= 0);
    struct stat st;
    REQUIRE(fstat(fd, &st) == 0);
    void *buf = nj_malloc((size_t)st.st_size + 1);
    REQUIRE(nj_full_read(fd, buf, (size_t)st.st_size) == 0);
    close(fd);
    *len = (size_t)st.st_size;
    return buf;
}

static void spill(const char *path, const void *buf, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    REQUIRE(fd >= 0);
    REQUIRE(nj_full_write(fd, buf, len) == 0);
    REQUIRE(close(fd) == 0);
}

static char *chunk_path(const struct world *w, const struct nj_digest *d)
{
    char hex[NJ_DIGEST_HEX_LEN + 1];
    nj_digest_to_hex(d, hex);
    return nj_asprintf("%s/chunks/%.2s/%s", w->root, hex, hex);
}

/* The chunk of (point, disk) at offset off, from the records. */
static struct nj_digest chunk_at(const struct world *w, int point, int disk,
                                 uint64_t off, uint32_t *len)
{
    for (size_t i = 0; i < w->recs.len; i++) {
        const struct rec *r = &w->recs.ptr[i];
        if (r->point == point && r->disk == disk && r->data &&
            r->off <= off && off < r->off + r->len) {
            *len = r->chunk_len;
            return r->d;
        }
    }
    fprintf(stderr, "no chunk at point %d disk %d offset %llu\n", point, disk,
            (unsigned long long)off);
    exit(1);
}

static void damage_apply(struct world *w, struct damage *dm)
{
    uint32_t len = 0;
    switch (dm->kind) {
    case CHUNK_FLIP: /* the pattern cell: 3 references, 2 disks */
        dm->d = chunk_at(w, 0, 0, 2 * (uint64_t)G, &len);
        break;
    case CHUNK_TRUNCATE: /* used by P1 only, hidden by P2 */
        dm->d = chunk_at(w, 1, 0, 2 * (uint64_t)G + BLK, &len);
        break;
    case CHUNK_DELETE: /* both disks of P1, and P2 */
        dm->d = chunk_at(w, 1, 1, 3 * (uint64_t)G, &len);
        break;
    case CHUNK_SWAP: /* P0's first cell, replaced by its second */
        dm->d = chunk_at(w, 0, 0, 0, &len);
        break;
    case INDEX_FLIP:
        dm->point = 1;
        dm->disk = 1;
        break;
    case INDEX_DELETE:
        dm->point = 0;
        dm->disk = 0;
        break;
    case INDEX_SWAP: /* P2's vda index, a sound file, but P1's */
        dm->point = 2;
        dm->disk = 0;
        break;
    case KIND_COUNT:
        abort();
    }
    if (dm->kind <= CHUNK_SWAP) {
        nj_digest_to_hex(&dm->d, dm->hex);
        dm->path = chunk_path(w, &dm->d);
    } else {
        dm->path = nj_asprintf("%s/backups/%s/%sdisk%d.idx", w->root,
                               w->ids[dm->point], w->gen, dm->disk);
    }
    dm->orig = slurp(dm->path, &dm->orig_len);
    unsigned char *copy = nj_malloc(dm->orig_len);
    memcpy(copy, dm->orig, dm->orig_len);
    switch (dm->kind) {
    case CHUNK_FLIP:
        copy[NJ_CHUNK_HEADER_LEN + (dm->orig_len - NJ_CHUNK_HEADER_LEN) / 2] ^= 0x10;
        spill(dm->path, copy, dm->orig_len);
        break;
    case CHUNK_TRUNCATE:
        REQUIRE(truncate(dm->path, (off_t)(dm->orig_len / 2)) == 0);
        break;
    case CHUNK_DELETE:
    case INDEX_DELETE:
        REQUIRE(unlink(dm->path) == 0);
        break;
    case CHUNK_SWAP: {
        uint32_t olen = 0;
        struct nj_digest other = chunk_at(w, 0, 0, G, &olen);
        REQUIRE(olen == len && !nj_digest_eq(&other, &dm->d));
        NJ_CLEANUP_FREE char *op = chunk_path(w, &other);
        size_t flen = 0;
        void *frame = slurp(op, &flen);
        spill(dm->path, frame, flen);
        free(frame);
        break;
    }
    case INDEX_FLIP:
        /* A byte of the first entry's chunk digest: the entry stays
         * plausible, only the index digest can tell. */
        copy[NJ_INDEX_HEADER_LEN + 32 + 5] ^= 0x01;
        spill(dm->path, copy, dm->orig_len);
        break;
    case INDEX_SWAP: {
        NJ_CLEANUP_FREE char *op = nj_asprintf("%s/backups/%s/%sdisk0.idx",
                                               w->root, w->ids[1], w->gen);
        size_t flen = 0;
        void *other = slurp(op, &flen);
        spill(dm->path, other, flen);
        free(other);
        break;
    }
    case KIND_COUNT:
        abort();
    }
    free(copy);
}

static void damage_repair(struct damage *dm)
{
    spill(dm->path, dm->orig, dm->orig_len);
    free(dm->orig);
    free(dm->path);
}

/* Does (point, disk) read the damage?  reads: per byte, for chunks. */
static bool damage_hits(const struct world *w, const struct damage *dm,
                        int point, int disk, bool *reads)
{
    if (dm->kind <= CHUNK_SWAP)
        return point_reads(w, point, disk, &dm->d, reads);
    return disk == dm->disk && in_chain(point, dm->point);
}

/* Does the chain of point hold a backup that references the damage? */
static bool damage_in_chain(const struct world *w, const struct damage *dm,
                            int point)
{
    if (dm->kind > CHUNK_SWAP)
        return in_chain(point, dm->point);
    for (size_t i = 0; i < w->recs.len; i++) {
        const struct rec *r = &w->recs.ptr[i];
        if (r->data && nj_digest_eq(&r->d, &dm->d) && in_chain(point, r->point))
            return true;
    }
    return false;
}

/* ---- (a) verify ---- */

static int run_verify(struct nj_store *s, const struct nj_catalog *c,
                      const char *backup, struct json_object **report)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    REQUIRE(f);
    struct nj_verify_opts vo = { .backup = backup, .json = true, .out = f };
    int r = nj_verify(s, c, &vo);
    fclose(f);
    *report = json_tokener_parse(text);
    if (!*report)
        fprintf(stderr, "verify report is not JSON:\n%s\n", text);
    CHECK(*report != NULL);
    free(text);
    return r;
}

static struct json_object *get(struct json_object *o, const char *key)
{
    struct json_object *v = NULL;
    if (!o || !json_object_object_get_ex(o, key, &v))
        return NULL;
    return v;
}

static void check_chunk_report(const struct world *w, const struct damage *dm,
                               struct json_object *root)
{
    struct json_object *dc = get(root, "damaged_chunks");
    CHECK(json_object_is_type(dc, json_type_array) &&
          json_object_array_length(dc) == 1);
    CHECK(json_object_array_length(get(root, "problems")) == 0);
    if (!json_object_is_type(dc, json_type_array) ||
        json_object_array_length(dc) != 1)
        return;
    struct json_object *x = json_object_array_get_idx(dc, 0);
    CHECK(!strcmp(json_object_get_string(get(x, "chunk")), dm->hex));
    CHECK(json_object_get_boolean(get(x, "missing")) ==
          (dm->kind == CHUNK_DELETE));
    const char *err = json_object_get_string(get(x, "error"));
    static const char *const words[] = { "checksum", "frame length",
                                         "missing", "digest" };
    if (!err || !strstr(err, words[dm->kind]))
        fprintf(stderr, "%s: error '%s' should say '%s'\n",
                kind_names[dm->kind], err ? err : "", words[dm->kind]);
    CHECK(err && strstr(err, words[dm->kind]));

    /* Every reference, exactly: per backup and disk, the ranges reported
     * cover the same bytes as the entries written (however they are cut
     * or merged). */
    struct json_object *refs = get(x, "refs");
    bool *want = nj_calloc((size_t)sizes[0], sizeof *want);
    bool *got = nj_calloc((size_t)sizes[0], sizeof *got);
    for (int p = 0; p < NPOINTS; p++)
        for (int k = 0; k < NDISKS; k++) {
            memset(want, 0, (size_t)sizes[0] * sizeof *want);
            memset(got, 0, (size_t)sizes[0] * sizeof *got);
            for (size_t i = 0; i < w->recs.len; i++) {
                const struct rec *r = &w->recs.ptr[i];
                if (r->point == p && r->disk == k && r->data &&
                    nj_digest_eq(&r->d, &dm->d))
                    memset(want + r->off, 1, (size_t)r->len * sizeof *want);
            }
            for (size_t i = 0; i < json_object_array_length(refs); i++) {
                struct json_object *y = json_object_array_get_idx(refs, i);
                uint64_t off = json_object_get_uint64(get(y, "offset"));
                uint64_t len = json_object_get_uint64(get(y, "length"));
                if (point_of(w, json_object_get_string(get(y, "backup"))) != p ||
                    disk_of(json_object_get_string(get(y, "disk"))) != k)
                    continue;
                CHECK(!strcmp(json_object_get_string(get(y, "domain")),
                              DOMAIN_NAME));
                CHECK(len > 0 && nj_range_ok(off, len, sizes[k]));
                if (len > 0 && nj_range_ok(off, len, sizes[k]))
                    memset(got + off, 1, (size_t)len * sizeof *got);
            }
            bool same = memcmp(want, got, (size_t)sizes[k] * sizeof *got) == 0;
            if (!same)
                fprintf(stderr, "%s: the references of point %d disk '%s' "
                        "differ from what was written\n",
                        kind_names[dm->kind], p, targets[k]);
            CHECK(same);
        }
    for (size_t i = 0; i < json_object_array_length(refs); i++) {
        struct json_object *y = json_object_array_get_idx(refs, i);
        CHECK(point_of(w, json_object_get_string(get(y, "backup"))) >= 0);
        CHECK(disk_of(json_object_get_string(get(y, "disk"))) >= 0);
    }
    free(want);
    free(got);
    /* Affected points: at least every point that reads it, at most every
     * point whose chain references it. */
    struct json_object *aff = get(x, "affects");
    bool listed[NPOINTS] = { false };
    for (size_t i = 0; i < json_object_array_length(aff); i++) {
        int p = point_of(w, json_object_get_string(
                                json_object_array_get_idx(aff, i)));
        CHECK(p >= 0);
        if (p >= 0)
            listed[p] = true;
    }
    bool *reads = nj_calloc((size_t)sizes[0], sizeof *reads);
    for (int p = 0; p < NPOINTS; p++) {
        bool reads_it = false;
        for (int k = 0; k < NDISKS; k++)
            reads_it |= point_reads(w, p, k, &dm->d, reads);
        if (reads_it && !listed[p])
            fprintf(stderr, "%s: point %d reads the chunk but is not listed\n",
                    kind_names[dm->kind], p);
        CHECK(!reads_it || listed[p]);
        CHECK(!listed[p] || damage_in_chain(w, dm, p));
    }
    free(reads);
}

static void check_index_report(const struct world *w, const struct damage *dm,
                               struct json_object *root)
{
    CHECK(json_object_array_length(get(root, "damaged_chunks")) == 0);
    struct json_object *pr = get(root, "problems");
    CHECK(json_object_array_length(pr) == 1);
    if (json_object_array_length(pr) != 1)
        return;
    struct json_object *x = json_object_array_get_idx(pr, 0);
    CHECK(!strcmp(json_object_get_string(get(x, "backup")), w->ids[dm->point]));
    CHECK(!strcmp(json_object_get_string(get(x, "disk")), targets[dm->disk]));
    const char *err = json_object_get_string(get(x, "error"));
    CHECK(err && strstr(err, "idx"));
}

static void check_verify(const struct world *w, const struct damage *dm,
                         struct nj_store *s, const struct nj_catalog *c)
{
    struct json_object *root = NULL;
    int r = run_verify(s, c, NULL, &root);
    CHECK(r == 1);
    CHECK(!json_object_get_boolean(get(root, "ok")));
    if (dm->kind <= CHUNK_SWAP)
        check_chunk_report(w, dm, root);
    else
        check_index_report(w, dm, root);
    json_object_put(root);
    /* One point at a time: damage found exactly when the point's chain
     * holds a backup that references it. */
    for (int p = 0; p < NPOINTS; p++) {
        r = run_verify(s, c, w->ids[p], &root);
        bool want = damage_in_chain(w, dm, p);
        if (r != (want ? 1 : 0))
            fprintf(stderr, "%s: verify of point %d returned %d\n",
                    kind_names[dm->kind], p, r);
        CHECK(r == (want ? 1 : 0));
        json_object_put(root);
    }
}

/* ---- (b), (c) restore ---- */

/* The "range A-B" in msg, or false. */
static bool parse_range(const char *msg, uint64_t *a, uint64_t *b)
{
    const char *p = strstr(msg, "range ");
    if (!p)
        return false;
    p += 6;
    char num[32];
    size_t n = strspn(p, "0123456789");
    if (n == 0 || n >= sizeof num || p[n] != '-')
        return false;
    memcpy(num, p, n);
    num[n] = '\0';
    if (nj_parse_u64(num, a) < 0)
        return false;
    p += n + 1;
    n = strspn(p, "0123456789");
    if (n == 0 || n >= sizeof num)
        return false;
    memcpy(num, p, n);
    num[n] = '\0';
    return nj_parse_u64(num, b) == 0;
}

/* The message of a failed restore of (point, disk) names the disk and a
 * range whose first and last bytes come from the damaged chunk (or names
 * the damaged index). */
static void check_restore_error(const struct world *w, const struct damage *dm,
                                const char *msg, int disk, const bool *reads)
{
    NJ_CLEANUP_FREE char *dq = nj_asprintf("'%s'", targets[disk]);
    if (dm->kind > CHUNK_SWAP) {
        NJ_CLEANUP_FREE char *idx = nj_asprintf("%s/disk%d.idx",
                                                w->ids[dm->point], dm->disk);
        if (!strstr(msg, idx))
            fprintf(stderr, "%s: error '%s' should name '%s'\n",
                    kind_names[dm->kind], msg, idx);
        CHECK(strstr(msg, idx) != NULL);
        return;
    }
    uint64_t a = 0, b = 0;
    bool ok = strstr(msg, dq) && strstr(msg, dm->hex) &&
              parse_range(msg, &a, &b) && a < b && b <= sizes[disk] &&
              reads[a] && reads[b - 1];
    if (!ok)
        fprintf(stderr, "%s: error '%s' should name disk %s, the chunk and a "
                "range where it is read\n", kind_names[dm->kind], msg, dq);
    CHECK(ok);
}

static void check_restores(struct world *w, const struct damage *dm,
                           struct nj_store *s, const struct nj_catalog *c)
{
    bool *reads = nj_calloc((size_t)sizes[0], sizeof *reads);
    for (int p = 0; p < NPOINTS; p++) {
        const struct nj_manifest *m = nj_catalog_find(c, w->ids[p]);
        REQUIRE(m);
        for (int k = 0; k < NDISKS; k++) {
            if (!damage_hits(w, dm, p, k, reads)) {
                int r = nj_test_restore_compare(s, c, m, targets[k],
                                                w->truth[p][k], sizes[k],
                                                w->scratch);
                if (r < 0)
                    fprintf(stderr, "%s: sound point %d disk '%s': %s\n",
                            kind_names[dm->kind], p, targets[k],
                            nj_error_get());
                CHECK(r == 0);
                w->restores_ok++;
                continue;
            }
            struct nj_output *out = nj_output_open(w->scratch, NJ_OUTPUT_RAW,
                                                   sizes[k], false);
            REQUIRE(out);
            int r = nj_restore_disk(s, c, m, targets[k], out, NULL, NULL);
            NJ_CLEANUP_FREE char *msg = nj_strdup(nj_error_get());
            CHECK(nj_output_close(out, false) == 0);
            CHECK(access(w->scratch, F_OK) < 0 && errno == ENOENT);
            unlink(w->scratch);
            if (r != -1)
                fprintf(stderr, "%s: restore of point %d disk '%s' returned "
                        "%d\n", kind_names[dm->kind], p, targets[k], r);
            CHECK(r == -1);
            if (r == -1)
                check_restore_error(w, dm, msg, k, reads);
            w->restores_failed++;
        }
    }
    free(reads);
}

/* ---- the program ---- */

/* Run argv with stdout and stderr to files; the exit status. */
static int run_cli(struct world *w, const char *const argv[], char **out,
                   char **err)
{
    NJ_CLEANUP_FREE char *op = nj_asprintf("%s/cli.out", w->dir);
    NJ_CLEANUP_FREE char *ep = nj_asprintf("%s/cli.err", w->dir);
    fflush(NULL);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        int o = open(op, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int e = open(ep, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (o < 0 || e < 0 || dup2(o, 1) < 0 || dup2(e, 2) < 0)
            _exit(127);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    int status = 0;
    REQUIRE(waitpid(pid, &status, 0) == pid);
    size_t len = 0;
    *out = slurp(op, &len);
    (*out)[len] = '\0';
    *err = slurp(ep, &len);
    (*err)[len] = '\0';
    w->cli_runs++;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static void check_cli(struct world *w, const struct damage *dm)
{
    if (!w->restore_bin)
        return;
    char *out = NULL, *err = NULL;
    const char *verify[] = { w->restore_bin, "verify", "-s", w->store, NULL };
    int st = run_cli(w, verify, &out, &err);
    CHECK(st == 1);
    if (dm->kind <= CHUNK_SWAP)
        CHECK(strstr(out, dm->hex) != NULL);
    else
        CHECK(strstr(out, w->ids[dm->point]) != NULL);
    free(out);
    free(err);

    NJ_CLEANUP_FREE char *outpath = nj_asprintf("%s/cli.raw", w->dir);
    bool *reads = nj_calloc((size_t)sizes[0], sizeof *reads);
    bool failed_one = false, passed_one = false;
    for (int p = 0; p < NPOINTS; p++)
        for (int k = 0; k < NDISKS; k++) {
            bool hit = damage_hits(w, dm, p, k, reads);
            if ((hit && failed_one) || (!hit && passed_one))
                continue;
            const char *restore[] = { w->restore_bin, "restore", "-s",
                                      w->store, "-d", DOMAIN_NAME, "-b",
                                      w->ids[p], "--disk", targets[k], "-o",
                                      outpath, NULL };
            st = run_cli(w, restore, &out, &err);
            if (hit) {
                failed_one = true;
                size_t lines = 0;
                for (const char *q = err; *q; q++)
                    lines += *q == '\n';
                if (st == 0 || lines != 1 ||
                    strncmp(err, "nightjar-restore: ", 18) != 0)
                    fprintf(stderr, "%s: restore P%d %s exited %d with "
                            "stderr '%s'\n", kind_names[dm->kind], p,
                            targets[k], st, err);
                CHECK(st != 0);
                CHECK(lines == 1);
                CHECK(strncmp(err, "nightjar-restore: ", 18) == 0);
                check_restore_error(w, dm, err, k, reads);
                CHECK(access(outpath, F_OK) < 0 && errno == ENOENT);
            } else {
                passed_one = true;
                CHECK(st == 0);
                size_t len = 0;
                unsigned char *got = slurp(outpath, &len);
                CHECK(len == sizes[k] &&
                      memcmp(got, w->truth[p][k], (size_t)len) == 0);
                free(got);
            }
            unlink(outpath);
            free(out);
            free(err);
        }
    free(reads);
}

int main(void)
{
    struct world w = { 0 };
    w.dir = nj_test_tmpdir("corrupt");
    w.root = nj_asprintf("%s/store", w.dir);
    w.store = nj_test_store_url(w.root);
    REQUIRE(!nj_store_url_is_remote(w.store)); /* it damages files */
    w.scratch = nj_asprintf("%s/restore.raw", w.dir);
    const char *bin = getenv("NIGHTJAR_RESTORE");
    if (bin && access(bin, X_OK) == 0)
        w.restore_bin = nj_strdup(bin);
    else
        printf("NIGHTJAR_RESTORE not set: the program is not checked\n");
    build_chain(&w);
    w.gen = nj_test_store_is_obj(w.store) ? "g00000001/" : "";

    /* Sound to begin with. */
    struct nj_store *s = nj_store_open(w.store, 0);
    REQUIRE(s);
    struct nj_catalog *c = nj_catalog_open(s);
    REQUIRE(c);
    struct json_object *root = NULL;
    CHECK(run_verify(s, c, NULL, &root) == 0);
    json_object_put(root);
    nj_catalog_free(c);

    for (int kind = 0; kind < KIND_COUNT; kind++) {
        struct damage dm = { .kind = (enum kind)kind };
        damage_apply(&w, &dm);
        c = nj_catalog_open(s);
        REQUIRE(c);
        CHECK(nj_catalog_count(c) == NPOINTS);
        check_verify(&w, &dm, s, c);
        check_restores(&w, &dm, s, c);
        nj_catalog_free(c);
        check_cli(&w, &dm);
        damage_repair(&dm);
        c = nj_catalog_open(s);
        REQUIRE(c);
        int r = run_verify(s, c, NULL, &root);
        if (r != 0)
            fprintf(stderr, "after repairing the %s, verify returned %d\n",
                    kind_names[kind], r);
        CHECK(r == 0);
        json_object_put(root);
        nj_catalog_free(c);
        printf("%s: reported and contained\n", kind_names[kind]);
    }

    /* All repaired: every point restores. */
    c = nj_catalog_open(s);
    REQUIRE(c);
    for (int p = 0; p < NPOINTS; p++)
        for (int k = 0; k < NDISKS; k++) {
            CHECK(nj_test_restore_compare(s, c, nj_catalog_find(c, w.ids[p]),
                                          targets[k], w.truth[p][k], sizes[k],
                                          w.scratch) == 0);
            w.restores_ok++;
        }
    nj_catalog_free(c);
    nj_store_close(s);
    printf("%u restores refused, %u restored exactly, %u program runs\n",
           w.restores_failed, w.restores_ok, w.cli_runs);

    for (int p = 0; p < NPOINTS; p++) {
        free(w.ids[p]);
        for (int k = 0; k < NDISKS; k++)
            free(w.truth[p][k]);
    }
    rec_vec_reset(&w.recs);
    nj_test_rmtree(w.dir);
    free(w.dir);
    free(w.store);
    free(w.root);
    free(w.scratch);
    free(w.restore_bin);
    return nj_test_done("test-corrupt");
}
