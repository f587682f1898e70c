/*
 * test-index: the extent index writer, streaming reader and
 * nj_index_check_buffer().
 *
 * Good indexes are written with the writer and read back entry by entry,
 * across the reader's window of 1024 entries; the writer's bytes are also
 * compared with a file built here from the layout in nj-index.c, so both
 * sides agree with the documented format and not only with each other.
 *
 * Damaged indexes are built by hand.  Where a damage sits in the entries,
 * the SHA-256 trailer is recomputed (and given to the reader as the
 * expected digest, as a manifest would) so that the per-entry checks, not
 * the checksum, have to catch it, and the damaged entry is placed beyond
 * the first window.
 */
#include "nj-test.h"
#include "nj-index.h"
#include "nj-util.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define TRAILER NJ_DIGEST_LEN

static char *tmpdir;
static unsigned file_seq;

static void error_reset(void)
{
    nj_error("%s", "");
}

static bool error_has(const char *want)
{
    return *nj_error_get() && strstr(nj_error_get(), want) != NULL;
}

static char *tmp_path(void)
{
    return nj_asprintf("%s/index-%u", tmpdir, file_seq++);
}

/* ---- an independent encoder of the documented layout ---- */

struct raw_entry {
    uint64_t offset, length, chunk_offset;
    uint32_t chunk_len;
    uint8_t kind;
    uint8_t reserved[3];
    unsigned char digest[NJ_DIGEST_LEN];
};

struct raw_index {
    char magic[8];
    uint32_t version, entry_len;
    uint64_t disk_size, count, covered;
    unsigned char reserved[24];
    size_t n;
    struct raw_entry *e;
};

static void raw_init(struct raw_index *x, uint64_t disk_size, size_t n)
{
    memset(x, 0, sizeof *x);
    memcpy(x->magic, "NJINDEX1", 8);
    x->version = 1;
    x->entry_len = 64;
    x->disk_size = disk_size;
    x->n = n;
    x->e = nj_calloc(n ? n : 1, sizeof *x->e);
}

/* Header count and covered from the entries as they are. */
static void raw_count(struct raw_index *x)
{
    x->count = x->n;
    x->covered = 0;
    for (size_t i = 0; i < x->n; i++)
        x->covered += x->e[i].length;
}

static void raw_data(struct raw_entry *e, uint64_t off, uint64_t len,
                     uint64_t chunk_off, uint32_t chunk_len, unsigned seed)
{
    memset(e, 0, sizeof *e);
    e->offset = off;
    e->length = len;
    e->kind = 1;
    e->chunk_offset = chunk_off;
    e->chunk_len = chunk_len;
    for (int i = 0; i < NJ_DIGEST_LEN; i++)
        e->digest[i] = (unsigned char)(seed * 31 + (unsigned)i);
}

static void raw_zero(struct raw_entry *e, uint64_t off, uint64_t len)
{
    memset(e, 0, sizeof *e);
    e->offset = off;
    e->length = len;
}

/* The file bytes, with the SHA-256 trailer of everything before it. */
static unsigned char *raw_build(const struct raw_index *x, size_t *len_out)
{
    size_t len = 64 + x->n * 64 + TRAILER;
    unsigned char *p = nj_calloc(1, len);
    memcpy(p, x->magic, 8);
    nj_put_le32(p + 8, x->version);
    nj_put_le32(p + 12, x->entry_len);
    nj_put_le64(p + 16, x->disk_size);
    nj_put_le64(p + 24, x->count);
    nj_put_le64(p + 32, x->covered);
    memcpy(p + 40, x->reserved, 24);
    for (size_t i = 0; i < x->n; i++) {
        unsigned char *q = p + 64 + i * 64;
        const struct raw_entry *e = &x->e[i];
        nj_put_le64(q, e->offset);
        nj_put_le64(q + 8, e->length);
        nj_put_le64(q + 16, e->chunk_offset);
        nj_put_le32(q + 24, e->chunk_len);
        q[28] = e->kind;
        memcpy(q + 29, e->reserved, 3);
        memcpy(q + 32, e->digest, NJ_DIGEST_LEN);
    }
    struct nj_digest d;
    REQUIRE(nj_sha256(p, len - TRAILER, &d) == 0);
    memcpy(p + len - TRAILER, d.b, TRAILER);
    *len_out = len;
    return p;
}

static void reseal(unsigned char *p, size_t len)
{
    struct nj_digest d;
    REQUIRE(nj_sha256(p, len - TRAILER, &d) == 0);
    memcpy(p + len - TRAILER, d.b, TRAILER);
}

static void body_digest(const unsigned char *p, size_t len, struct nj_digest *d)
{
    REQUIRE(nj_sha256(p, len - TRAILER, d) == 0);
}

static char *write_file(const void *buf, size_t len)
{
    char *path = tmp_path();
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    REQUIRE(fd >= 0);
    REQUIRE(len == 0 || write(fd, buf, len) == (ssize_t)len);
    close(fd);
    return path;
}

static unsigned char *read_whole(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    REQUIRE(fd >= 0);
    struct stat st;
    REQUIRE(fstat(fd, &st) == 0);
    unsigned char *p = nj_malloc((size_t)st.st_size + 1);
    REQUIRE(read(fd, p, (size_t)st.st_size) == st.st_size);
    close(fd);
    *len = (size_t)st.st_size;
    return p;
}

static struct nj_index_reader *open_path(const char *path, const char *name,
                                         const struct nj_digest *expect,
                                         uint64_t disk_size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    REQUIRE(fd >= 0);
    return nj_index_reader_open(nj_stream_fd(fd), name, expect, disk_size);
}

/* ---- writer helpers ---- */

static struct nj_extent ext_zero(uint64_t off, uint64_t len)
{
    struct nj_extent e = { .offset = off, .length = len,
                           .kind = NJ_EXTENT_ZERO };
    return e;
}

static struct nj_extent ext_data(uint64_t off, uint64_t len,
                                 uint64_t chunk_off, uint32_t chunk_len,
                                 unsigned seed)
{
    struct nj_extent e = { .offset = off, .length = len,
                           .kind = NJ_EXTENT_DATA,
                           .chunk_offset = chunk_off,
                           .chunk_len = chunk_len };
    for (int i = 0; i < NJ_DIGEST_LEN; i++)
        e.digest.b[i] = (unsigned char)(seed * 31 + (unsigned)i);
    return e;
}

static bool ext_eq(const struct nj_extent *a, const struct nj_extent *b)
{
    if (a->offset != b->offset || a->length != b->length ||
        a->kind != b->kind)
        return false;
    if (a->kind == NJ_EXTENT_ZERO)
        return true;
    return a->chunk_offset == b->chunk_offset &&
           a->chunk_len == b->chunk_len && nj_digest_eq(&a->digest, &b->digest);
}

struct written {
    char *path;
    struct nj_digest digest;
    uint64_t entries, covered;
};

/* Write entries with the writer; every append must succeed. */
static void write_index(uint64_t disk_size, const struct nj_extent *e,
                        size_t n, struct written *w)
{
    w->path = tmp_path();
    int fd = open(w->path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    REQUIRE(fd >= 0);
    struct nj_index_writer *iw = nj_index_writer_new(nj_stream_fd(fd), disk_size);
    REQUIRE(iw);
    for (size_t i = 0; i < n; i++)
        REQUIRE(nj_index_writer_append(iw, &e[i]) == 0);
    REQUIRE(nj_index_writer_finish(iw, &w->digest, &w->entries,
                                   &w->covered) == 0);
    nj_index_writer_free(iw);
}

/* Read every entry into out (capacity cap); returns the count, or -1. */
static long read_all(struct nj_index_reader *r, struct nj_extent *out,
                     size_t cap)
{
    long n = 0;
    struct nj_extent e;
    int rc;
    while ((rc = nj_index_reader_next(r, &e)) == 1) {
        if ((size_t)n < cap)
            out[n] = e;
        n++;
    }
    return rc < 0 ? -1 : n;
}

/* The file must read back as exactly want[0..n). */
static void check_reads_back(const struct written *w, uint64_t disk_size,
                             const struct nj_extent *want, size_t n)
{
    size_t len = 0;
    unsigned char *p = read_whole(w->path, &len);
    CHECK(len == 64 + n * 64 + TRAILER);
    struct nj_digest d;
    body_digest(p, len, &d);
    CHECK(nj_digest_eq(&d, &w->digest));
    CHECK(memcmp(p + len - TRAILER, d.b, TRAILER) == 0);
    CHECK(w->entries == n);
    uint64_t covered = 0;
    for (size_t i = 0; i < n; i++)
        covered += want[i].length;
    CHECK(w->covered == covered);
    CHECK(nj_get_le64(p + 24) == n && nj_get_le64(p + 32) == covered);
    CHECK(nj_index_check_buffer(p, len, disk_size) == 0);
    CHECK(nj_index_check_buffer(p, len, 0) == 0);
    error_reset();
    CHECK(nj_index_check_buffer(p, len, disk_size ^ 1) == -1);
    CHECK(error_has("another disk size"));
    free(p);

    struct nj_index_reader *r = open_path(w->path, "good", &w->digest,
                                          disk_size);
    REQUIRE(r);
    CHECK(nj_index_reader_disk_size(r) == disk_size);
    CHECK(nj_index_reader_count(r) == n);
    struct nj_extent *got = nj_calloc(n + 1, sizeof *got);
    for (int pass = 0; pass < 2; pass++) {
        memset(got, 0, (n + 1) * sizeof *got);
        CHECK(read_all(r, got, n + 1) == (long)n);
        size_t bad = 0;
        for (size_t i = 0; i < n; i++)
            bad += !ext_eq(&got[i], &want[i]);
        CHECK(bad == 0);
        /* At the end it stays at the end. */
        struct nj_extent e;
        CHECK(nj_index_reader_next(r, &e) == 0);
        CHECK(nj_index_reader_rewind(r) == 0);
    }
    free(got);
    nj_index_reader_free(r);
    /* Without an expected digest or size, too. */
    r = open_path(w->path, "good", NULL, 0);
    REQUIRE(r);
    CHECK(read_all(r, NULL, 0) == (long)n);
    nj_index_reader_free(r);
}

/* ---- round trips ---- */

static void test_round_trip_small(void)
{
    const uint64_t size = (10u << 20) + 123;
    struct nj_extent e[] = {
        ext_zero(0, 65536),
        ext_data(65536, 1000, 0, 1000, 1),
        ext_data(65536 + 1000, 24000, 4096, 4u << 20, 2),
        /* gap */
        ext_zero(1u << 20, 1u << 20),
        ext_data(2u << 20, 4u << 20, 0, 4u << 20, 3),
        ext_data(size - 1, 1, NJ_CHUNK_MAX - 1, NJ_CHUNK_MAX, 4),
    };
    size_t n = NJ_ARRAY_SIZE(e);
    struct written w;
    write_index(size, e, n, &w);
    check_reads_back(&w, size, e, n);

    /* Byte for byte what the documented layout says. */
    struct raw_index x;
    raw_init(&x, size, n);
    raw_zero(&x.e[0], 0, 65536);
    raw_data(&x.e[1], 65536, 1000, 0, 1000, 1);
    raw_data(&x.e[2], 65536 + 1000, 24000, 4096, 4u << 20, 2);
    raw_zero(&x.e[3], 1u << 20, 1u << 20);
    raw_data(&x.e[4], 2u << 20, 4u << 20, 0, 4u << 20, 3);
    raw_data(&x.e[5], size - 1, 1, NJ_CHUNK_MAX - 1, NJ_CHUNK_MAX, 4);
    raw_count(&x);
    size_t blen = 0, flen = 0;
    unsigned char *built = raw_build(&x, &blen);
    unsigned char *file = read_whole(w.path, &flen);
    CHECK(blen == flen && memcmp(built, file, blen) == 0);
    free(built);
    free(file);
    free(x.e);
    free(w.path);
}

static void test_round_trip_many(void)
{
    /* 5000 entries: the reader refills its 1024-entry window 5 times. */
    enum { N = 5000 };
    uint64_t rng = 5;
    struct nj_extent *e = nj_calloc(N, sizeof *e);
    uint64_t off = 0;
    for (size_t i = 0; i < N; i++) {
        off += nj_test_rand_below(&rng, 3) * 4096; /* sometimes a gap */
        uint64_t len = 1 + nj_test_rand_below(&rng, 1u << 20);
        if (i % 2 == 0) {
            e[i] = ext_zero(off, len);
        } else {
            uint32_t clen = (uint32_t)(len + nj_test_rand_below(&rng, 4096));
            e[i] = ext_data(off, len, clen - len, clen, (unsigned)i);
        }
        off += len;
    }
    uint64_t size = off + 77;
    struct written w;
    write_index(size, e, N, &w);
    /* Zero entries separated by data entries are never merged. */
    check_reads_back(&w, size, e, N);
    free(w.path);
    free(e);
}

static void test_zero_merging(void)
{
    const uint64_t size = 1u << 30;
    struct written w;

    /* Adjacent zeros merge into one entry. */
    struct nj_extent a[] = { ext_zero(0, 10), ext_zero(10, 20),
                             ext_zero(30, 5) };
    write_index(size, a, NJ_ARRAY_SIZE(a), &w);
    struct nj_extent a_want[] = { ext_zero(0, 35) };
    check_reads_back(&w, size, a_want, 1);
    free(w.path);

    /* A gap, or data between them, keeps them apart; data never merges. */
    struct nj_extent b[] = {
        ext_zero(0, 10), ext_zero(11, 9), ext_data(20, 5, 0, 5, 1),
        ext_zero(25, 5), ext_zero(30, 5), ext_data(35, 5, 0, 5, 1),
        ext_data(40, 5, 0, 5, 1), ext_zero(45, 1),
    };
    write_index(size, b, NJ_ARRAY_SIZE(b), &w);
    struct nj_extent b_want[] = {
        ext_zero(0, 10), ext_zero(11, 9), ext_data(20, 5, 0, 5, 1),
        ext_zero(25, 10), ext_data(35, 5, 0, 5, 1),
        ext_data(40, 5, 0, 5, 1), ext_zero(45, 1),
    };
    check_reads_back(&w, size, b_want, NJ_ARRAY_SIZE(b_want));
    free(w.path);

    /* 3000 adjacent zeros (more than a writer buffer) become one, and the
     * entry after them still lands right. */
    enum { NZ = 3000 };
    struct nj_extent *z = nj_calloc(NZ + 1, sizeof *z);
    for (size_t i = 0; i < NZ; i++)
        z[i] = ext_zero(i * 512, 512);
    z[NZ] = ext_data(NZ * 512, 512, 0, 512, 9);
    write_index(size, z, NZ + 1, &w);
    struct nj_extent z_want[] = { ext_zero(0, NZ * 512),
                                  ext_data(NZ * 512, 512, 0, 512, 9) };
    check_reads_back(&w, size, z_want, 2);
    free(w.path);
    free(z);

    /* No entries at all. */
    write_index(size, NULL, 0, &w);
    check_reads_back(&w, size, NULL, 0);
    free(w.path);
    /* A full disk as one zero entry. */
    struct nj_extent f[] = { ext_zero(0, size) };
    write_index(size, f, 1, &w);
    check_reads_back(&w, size, f, 1);
    free(w.path);
}

/* ---- writer refusals ---- */

static void writer_refuses_at(int line, struct nj_index_writer *iw,
                              const struct nj_extent *e, const char *want)
{
    uint64_t end = nj_index_writer_end(iw);
    error_reset();
    int r = nj_index_writer_append(iw, e);
    if (r != -1 || !error_has(want)) {
        fprintf(stderr, "line %d: append returned %d with '%s', wanted -1 "
                "and '%s'\n", line, r, nj_error_get(), want);
        nj_test_failures++;
    }
    /* A refused entry changes nothing. */
    CHECK(nj_index_writer_end(iw) == end);
}

#define WRITER_REFUSES(iw, e, want)                                         \
    do {                                                                    \
        struct nj_extent e_ = (e);                                          \
        writer_refuses_at(__LINE__, iw, &e_, want);                         \
    } while (0)

static void test_writer_refusals(void)
{
    const uint64_t size = 1000000;
    char *path = tmp_path();
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    REQUIRE(fd >= 0);
    struct nj_index_writer *iw = nj_index_writer_new(nj_stream_fd(fd), size);
    REQUIRE(iw);
    struct nj_extent ok1 = ext_data(1000, 1000, 0, 1000, 1);
    REQUIRE(nj_index_writer_append(iw, &ok1) == 0);
    CHECK(nj_index_writer_end(iw) == 2000);

    const char *order = "overlaps or is out of order";
    WRITER_REFUSES(iw, ext_zero(0, 500), order);          /* before */
    WRITER_REFUSES(iw, ext_zero(0, 1000), order);         /* before, touching */
    WRITER_REFUSES(iw, ext_zero(1000, 1000), order);      /* same range */
    WRITER_REFUSES(iw, ext_zero(1999, 10), order);        /* overlapping */
    WRITER_REFUSES(iw, ext_data(1500, 10, 0, 10, 2), order);
    WRITER_REFUSES(iw, ext_zero(2000, 0), "empty range at 2000");
    WRITER_REFUSES(iw, ext_data(5000, 0, 0, 10, 2), "empty range");
    WRITER_REFUSES(iw, ext_zero(size - 10, 11), "past the disk end 1000000");
    WRITER_REFUSES(iw, ext_zero(size, 1), "past the disk end");
    WRITER_REFUSES(iw, ext_zero(UINT64_MAX, 1), "past the disk end");
    WRITER_REFUSES(iw, ext_zero(5000, UINT64_MAX), "past the disk end");
    /* offset + length wraps to a small number. */
    WRITER_REFUSES(iw, ext_zero(5000, UINT64_MAX - 4000), "past the disk end");
    /* Data entries must fit their chunk. */
    const char *fit = "does not fit a chunk";
    WRITER_REFUSES(iw, ext_data(3000, 100, 0, 99, 3), fit);
    WRITER_REFUSES(iw, ext_data(3000, 100, 1, 100, 3), fit);
    WRITER_REFUSES(iw, ext_data(3000, 100, 1000, 100, 3), fit);
    WRITER_REFUSES(iw, ext_data(3000, 100, UINT64_MAX, 100, 3), fit);
    WRITER_REFUSES(iw, ext_data(3000, 100, UINT64_MAX - 50, 100, 3), fit);
    WRITER_REFUSES(iw, ext_data(3000, 1, 0, 0, 3), fit);
    WRITER_REFUSES(iw, ext_data(3000, 1, 0, NJ_CHUNK_MAX + 1, 3), fit);
    WRITER_REFUSES(iw, ext_data(3000, 1, 0, UINT32_MAX, 3), fit);
    struct nj_extent odd = ext_zero(3000, 10);
    odd.kind = (enum nj_extent_kind)7;
    WRITER_REFUSES(iw, odd, "unknown kind 7");

    /* Boundaries that are fine, after all those refusals. */
    struct nj_extent ok[] = {
        ext_zero(2000, 1000),                       /* touching the last */
        ext_data(3000, 100, 0, 100, 4),             /* exactly the chunk */
        ext_data(4000, 1, NJ_CHUNK_MAX - 1, NJ_CHUNK_MAX, 5),
        ext_zero(size - 1, 1),                      /* the last byte */
    };
    for (size_t i = 0; i < NJ_ARRAY_SIZE(ok); i++)
        CHECK(nj_index_writer_append(iw, &ok[i]) == 0);
    WRITER_REFUSES(iw, ext_zero(size - 1, 1), order);
    struct written w = { .path = path };
    CHECK(nj_index_writer_finish(iw, &w.digest, &w.entries, &w.covered) == 0);
    nj_index_writer_free(iw);
    struct nj_extent want[] = { ok1, ok[0], ok[1], ok[2], ok[3] };
    check_reads_back(&w, size, want, NJ_ARRAY_SIZE(want));
    free(path);

    /* A disk of 2^64 - 1 bytes: offset + length wrapping past zero. */
    path = tmp_path();
    fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    REQUIRE(fd >= 0);
    iw = nj_index_writer_new(nj_stream_fd(fd), UINT64_MAX);
    REQUIRE(iw);
    WRITER_REFUSES(iw, ext_zero(UINT64_MAX - 10, 100), "past the disk end");
    WRITER_REFUSES(iw, ext_zero(1ull << 63, (1ull << 63) + 1),
                   "past the disk end");
    struct nj_extent big = ext_zero(UINT64_MAX - 10, 10);
    CHECK(nj_index_writer_append(iw, &big) == 0);
    /* After an entry ending at 2^64 - 1, nothing more fits. */
    WRITER_REFUSES(iw, ext_zero(UINT64_MAX - 1, 1), order);
    w.path = path;
    CHECK(nj_index_writer_finish(iw, &w.digest, &w.entries, &w.covered) == 0);
    nj_index_writer_free(iw);
    check_reads_back(&w, UINT64_MAX, &big, 1);
    free(path);
    nj_index_writer_free(NULL);
}

/* ---- reader refusals ---- */

/*
 * Open buf as a file and expect nj_index_reader_open to fail with want;
 * nj_index_check_buffer must fail too, with check_want (NULL: want), or
 * is not asked when check_want is "" (a check it has no input for).
 */
static void open_refuses_at(int line, const unsigned char *buf, size_t len,
                            const struct nj_digest *expect, uint64_t disk_size,
                            const char *want, const char *check_want)
{
    char *path = write_file(buf, len);
    error_reset();
    struct nj_index_reader *r = open_path(path, "bad", expect, disk_size);
    if (r || !error_has(want) || !error_has("index 'bad'")) {
        fprintf(stderr, "line %d: reader open %s with '%s', wanted '%s'\n",
                line, r ? "succeeded" : "failed", nj_error_get(), want);
        nj_test_failures++;
    }
    nj_index_reader_free(r);
    unlink(path);
    free(path);
    if (check_want && !*check_want)
        return;
    /* An exact-size copy, so that ASan sees any overread. */
    unsigned char *copy = nj_malloc(len ? len : 1);
    if (len)
        memcpy(copy, buf, len);
    error_reset();
    int c = nj_index_check_buffer(copy, len, disk_size);
    if (c != -1 || !error_has(check_want ? check_want : want)) {
        fprintf(stderr, "line %d: check_buffer returned %d with '%s', "
                "wanted '%s'\n", line, c, nj_error_get(),
                check_want ? check_want : want);
        nj_test_failures++;
    }
    free(copy);
}

#define OPEN_REFUSES(buf, len, expect, disk_size, want, check_want)         \
    open_refuses_at(__LINE__, buf, len, expect, disk_size, want, check_want)

static void test_reader_header_refusals(void)
{
    const uint64_t size = 1u << 30;
    enum { N = 40 };
    struct raw_index x;
    raw_init(&x, size, N);
    for (size_t i = 0; i < N; i++)
        raw_data(&x.e[i], i * 8192, 4096, 0, 4096, (unsigned)i);
    raw_count(&x);
    size_t len = 0;
    unsigned char *good = raw_build(&x, &len);
    struct nj_digest gd;
    body_digest(good, len, &gd);
    CHECK(nj_index_check_buffer(good, len, size) == 0);
    unsigned char *b = nj_malloc(len + 64);

    /* Truncated below the smallest possible index. */
    OPEN_REFUSES(good, 0, NULL, 0, "truncated (0 bytes)", NULL);
    OPEN_REFUSES(good, 1, NULL, 0, "truncated", NULL);
    OPEN_REFUSES(good, 64, NULL, 0, "truncated", NULL);
    OPEN_REFUSES(good, 64 + TRAILER - 1, NULL, 0, "truncated", NULL);
    /* Truncated inside the entries or the trailer: sizes disagree. */
    OPEN_REFUSES(good, len - 1, NULL, 0, "claims 40 entries", NULL);
    OPEN_REFUSES(good, len - 64, NULL, 0, "claims 40 entries", NULL);
    OPEN_REFUSES(good, len - TRAILER, NULL, 0, "claims 40 entries", NULL);
    /* Resealed after cutting whole entries: still refused. */
    memcpy(b, good, len - 64 * 3);
    reseal(b, len - 64 * 3);
    OPEN_REFUSES(b, len - 64 * 3, NULL, 0, "claims 40 entries", NULL);
    /* A byte too many. */
    memcpy(b, good, len);
    b[len] = 0;
    OPEN_REFUSES(b, len + 1, NULL, 0, "claims 40 entries", NULL);

    /* Bad magic, version, entry size, reserved bytes (all resealed). */
    memcpy(b, good, len);
    b[7] = '2';
    reseal(b, len);
    OPEN_REFUSES(b, len, NULL, 0, "has a bad magic", NULL);
    memcpy(b, good, len);
    memset(b, 0, 8);
    reseal(b, len);
    OPEN_REFUSES(b, len, NULL, 0, "has a bad magic", NULL);
    memcpy(b, good, len);
    nj_put_le32(b + 8, 2);
    reseal(b, len);
    OPEN_REFUSES(b, len, NULL, 0, "unknown version 2", NULL);
    memcpy(b, good, len);
    nj_put_le32(b + 8, 0);
    reseal(b, len);
    OPEN_REFUSES(b, len, NULL, 0, "unknown version 0", NULL);
    memcpy(b, good, len);
    nj_put_le32(b + 12, 32);
    reseal(b, len);
    OPEN_REFUSES(b, len, NULL, 0, "entry size 32, expected 64", NULL);
    for (int i = 40; i < 64; i += 7) {
        memcpy(b, good, len);
        b[i] = 0x80;
        reseal(b, len);
        OPEN_REFUSES(b, len, NULL, 0, "reserved header bytes", NULL);
    }

    /* Absurd entry counts, resealed. */
    static const uint64_t counts[] = {
        N + 1, N - 1, 0, UINT64_MAX, UINT64_MAX / 64, 1ull << 58,
        (1ull << 58) + N,
    };
    for (size_t i = 0; i < NJ_ARRAY_SIZE(counts); i++) {
        memcpy(b, good, len);
        nj_put_le64(b + 24, counts[i]);
        reseal(b, len);
        OPEN_REFUSES(b, len, NULL, 0, "entries but holds", NULL);
    }
    /* Covered bytes beyond the disk. */
    memcpy(b, good, len);
    nj_put_le64(b + 32, size + 1);
    reseal(b, len);
    OPEN_REFUSES(b, len, NULL, 0, "covers 1073741825 bytes of a", NULL);

    /* A bad trailer, or a changed byte with the old trailer. */
    memcpy(b, good, len);
    b[len - 1] ^= 1;
    OPEN_REFUSES(b, len, NULL, 0, "damaged (checksum mismatch)",
                 "checksum mismatch");
    memcpy(b, good, len);
    b[len - TRAILER] ^= 0x40;
    OPEN_REFUSES(b, len, NULL, 0, "checksum mismatch", NULL);
    memcpy(b, good, len);
    b[64 + 20 * 64 + 40] ^= 1; /* a digest byte of entry 20 */
    OPEN_REFUSES(b, len, NULL, 0, "checksum mismatch", NULL);
    memcpy(b, good, len);
    b[16] ^= 1; /* the disk size */
    OPEN_REFUSES(b, len, NULL, 0, "checksum mismatch", NULL);

    /* A good file that is not the one the manifest names. */
    struct nj_digest other = gd;
    other.b[0] ^= 1;
    OPEN_REFUSES(good, len, &other, 0,
                 "does not match the digest in its manifest", "");
    /* A good file for another disk size. */
    OPEN_REFUSES(good, len, &gd, size + 512,
                 "is for a disk of 1073741824 bytes, the manifest says "
                 "1073742336", "another disk size");

    /* And the good one passes with both. */
    char *path = write_file(good, len);
    struct nj_index_reader *r = open_path(path, "good", &gd, size);
    CHECK(r && read_all(r, NULL, 0) == N);
    nj_index_reader_free(r);
    free(path);

    free(b);
    free(good);
    free(x.e);
}

/*
 * A damaged entry at position at, behind a valid trailer that the
 * "manifest" also names: the reader opens, returns the entries before it,
 * then fails naming the entry; nj_index_check_buffer fails the same way.
 */
static void entry_refused_at(int line, struct raw_index *x, size_t at,
                             const char *want)
{
    size_t len = 0;
    unsigned char *buf = raw_build(x, &len);
    struct nj_digest d;
    body_digest(buf, len, &d);
    char *path = write_file(buf, len);
    char *entry_name = nj_asprintf("entry %zu", at);
    error_reset();
    struct nj_index_reader *r = open_path(path, "crafted", &d, x->disk_size);
    if (!r) {
        fprintf(stderr, "line %d: open failed with '%s'; the entry check "
                "should catch it\n", line, nj_error_get());
        nj_test_failures++;
    } else {
        struct nj_extent e;
        size_t n = 0;
        int rc;
        error_reset();
        while ((rc = nj_index_reader_next(r, &e)) == 1)
            n++;
        if (rc != -1 || n != at || !error_has(want) ||
            !error_has(entry_name) || !error_has("index 'crafted'")) {
            fprintf(stderr, "line %d: reader gave %zu entries then %d with "
                    "'%s', wanted %zu then -1 with '%s'\n", line, n, rc,
                    nj_error_get(), at, want);
            nj_test_failures++;
        }
        /* Asking again does not skip the damage. */
        error_reset();
        CHECK(nj_index_reader_next(r, &e) == -1 && error_has(want));
        nj_index_reader_free(r);
    }
    unlink(path);
    free(path);
    error_reset();
    int c = nj_index_check_buffer(buf, len, x->disk_size);
    if (c != -1 || !error_has(want) || !error_has(entry_name)) {
        fprintf(stderr, "line %d: check_buffer returned %d with '%s', "
                "wanted '%s'\n", line, c, nj_error_get(), want);
        nj_test_failures++;
    }
    free(entry_name);
    free(buf);
}

#define ENTRY_REFUSED(x, at, want) entry_refused_at(__LINE__, x, at, want)

/* A valid index of n entries: data and zero alternating, 4 KiB apart. */
static void base_index(struct raw_index *x, size_t n, uint64_t size)
{
    raw_init(x, size, n);
    for (size_t i = 0; i < n; i++) {
        if (i % 3 == 0)
            raw_zero(&x->e[i], i * 8192, 4096);
        else
            raw_data(&x->e[i], i * 8192, 4096, 100, 8192, (unsigned)i);
    }
    raw_count(x);
}

static void test_reader_entry_refusals(void)
{
    enum { N = 2000, AT = 1500 };
    const uint64_t size = (uint64_t)N * 8192;
    struct raw_index x;
    const char *order = "overlaps or is out of order";
    const char *fit = "does not fit a chunk";

    /* The base is good (control). */
    base_index(&x, N, size);
    {
        size_t len = 0;
        unsigned char *buf = raw_build(&x, &len);
        CHECK(nj_index_check_buffer(buf, len, size) == 0);
        char *path = write_file(buf, len);
        struct nj_index_reader *r = open_path(path, "crafted", NULL, size);
        CHECK(r && read_all(r, NULL, 0) == N);
        nj_index_reader_free(r);
        free(path);
        free(buf);
    }

#define CASE(setup, want)                                                   \
    do {                                                                    \
        base_index(&x, N, size);                                            \
        setup;                                                              \
        raw_count(&x);                                                      \
        ENTRY_REFUSED(&x, AT, want);                                        \
        free(x.e);                                                          \
    } while (0)

    free(x.e);
    /* Unsorted: entry AT starts before entry AT-1. */
    CASE(x.e[AT].offset = x.e[AT - 2].offset, order);
    /* Swapped with its predecessor. */
    CASE({
        struct raw_entry t = x.e[AT];
        x.e[AT] = x.e[AT - 1];
        x.e[AT - 1] = t;
    }, order);
    /* Overlapping by one byte, and a duplicate. */
    CASE(x.e[AT].offset = x.e[AT - 1].offset + x.e[AT - 1].length - 1, order);
    CASE(x.e[AT] = x.e[AT - 1], order);
    /* Past the end of the disk: the last entry, one byte too long. */
    base_index(&x, N, size);
    x.e[N - 1].length = size - x.e[N - 1].offset + 1;
    raw_count(&x);
    ENTRY_REFUSED(&x, N - 1, "past the disk end");
    free(x.e);
    /* Starting past the end. */
    base_index(&x, N, size);
    x.e[N - 1].offset = size;
    x.e[N - 1].length = 1;
    raw_count(&x);
    ENTRY_REFUSED(&x, N - 1, "past the disk end");
    free(x.e);
    /* Zero length. */
    CASE(x.e[AT].length = 0, "empty range");
    /* offset + length wraps around 2^64 to 1; the header keeps the sum of
     * the honest lengths so that only the entry check can catch it. */
    base_index(&x, N, size);
    raw_count(&x);
    x.e[AT].length = UINT64_MAX - x.e[AT].offset + 2;
    ENTRY_REFUSED(&x, AT, "past the disk end");
    free(x.e);
    /* Chunk ranges (AT + 1 is a data entry). */
#undef CASE
#define CASE_AT(at, setup, want)                                            \
    do {                                                                    \
        base_index(&x, N, size);                                            \
        setup;                                                              \
        raw_count(&x);                                                      \
        ENTRY_REFUSED(&x, at, want);                                        \
        free(x.e);                                                          \
    } while (0)
    CASE_AT(AT + 1, x.e[AT + 1].chunk_offset = 8192 - 4095, fit);
    CASE_AT(AT + 1, x.e[AT + 1].chunk_offset = UINT64_MAX - 100, fit);
    CASE_AT(AT + 1, x.e[AT + 1].chunk_len = 4000, fit);
    CASE_AT(AT + 1, x.e[AT + 1].chunk_len = 0, fit);
    CASE_AT(AT + 1, x.e[AT + 1].chunk_len = NJ_CHUNK_MAX + 1, fit);
    /* Unknown kinds, reserved bytes, zero entries with chunk fields. */
    CASE_AT(AT, x.e[AT].kind = 2, "unknown kind 2");
    CASE_AT(AT, x.e[AT].kind = 0xff, "unknown kind 255");
    CASE_AT(AT, x.e[AT].reserved[2] = 1, "reserved bytes are not zero");
    CASE_AT(AT, x.e[AT].chunk_len = 4096, "zero entry with chunk fields");
    CASE_AT(AT, x.e[AT].chunk_offset = 1, "zero entry with chunk fields");
    /* The very first entry, and an entry in the first window. */
    CASE_AT(0, x.e[0].length = 0, "empty range");
    CASE_AT(3, x.e[3].offset = 0, order);
    /* Entry after the window boundary at 1024. */
    CASE_AT(1024, x.e[1024].offset = x.e[1023].offset, order);
#undef CASE_AT

    /* The header's covered bytes disagree with the entries. */
    base_index(&x, N, size);
    raw_count(&x);
    x.covered -= 1;
    {
        size_t len = 0;
        unsigned char *buf = raw_build(&x, &len);
        struct nj_digest d;
        body_digest(buf, len, &d);
        error_reset();
        CHECK(nj_index_check_buffer(buf, len, size) == -1);
        CHECK(error_has("header says"));
        char *path = write_file(buf, len);
        struct nj_index_reader *r = open_path(path, "crafted", &d, size);
        REQUIRE(r);
        error_reset();
        CHECK(read_all(r, NULL, 0) == -1);
        CHECK(error_has("index 'crafted'") && error_has("header says"));
        nj_index_reader_free(r);
        free(path);
        free(buf);
    }
    free(x.e);
}

/* ---- the checked open (what restore, verify, prune and gc use) ---- */

static struct nj_index_reader *open_checked(const char *path, int flags,
                                            const struct nj_index_expect *x)
{
    int fd = open(path, flags | O_CLOEXEC);
    REQUIRE(fd >= 0);
    return nj_index_reader_open_checked(nj_stream_fd(fd), "checked", x);
}

static void test_checked_open(void)
{
    enum { N = 3000 };
    const uint64_t size = (uint64_t)N * 8192 + 100;
    struct nj_extent *e = nj_calloc(N, sizeof *e);
    for (size_t i = 0; i < N; i++)
        e[i] = i % 2 ? ext_data(i * 8192, 8192, 0, 8192, (unsigned)i)
                     : ext_zero(i * 8192, 8192);
    struct written w;
    write_index(size, e, N, &w);
    struct nj_index_expect x = { &w.digest, size, w.entries, w.covered, false };

    /* Sound: opens at the first entry and reads every one. */
    struct nj_index_reader *r = open_checked(w.path, O_RDONLY, &x);
    REQUIRE(r);
    CHECK(read_all(r, NULL, 0) == N);
    CHECK(nj_index_reader_rewind(r) == 0 && read_all(r, NULL, 0) == N);
    nj_index_reader_free(r);

    /* Cheap bounds come before any read: on a descriptor that cannot be
     * read, the size promised by the manifest is what refuses. */
    struct nj_index_expect more = x;
    more.entries = N + 1;
    error_reset();
    CHECK(open_checked(w.path, O_WRONLY, &more) == NULL);
    CHECK(error_has("its manifest promises 3001 entries"));
    /* More entries than bytes covered, a full that does not cover its
     * disk: refused from the manifest's numbers alone. */
    struct nj_index_expect bad = x;
    bad.entries = bad.covered + 1;
    error_reset();
    CHECK(open_checked(w.path, O_WRONLY, &bad) == NULL);
    CHECK(error_has("promises"));
    bad = x;
    bad.full = true;
    error_reset();
    CHECK(open_checked(w.path, O_WRONLY, &bad) == NULL);
    CHECK(error_has("promises"));
    /* A huge sparse file behind a small count: refused, not hashed. */
    {
        char *huge = tmp_path();
        int fd = open(huge, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        REQUIRE(fd >= 0 && ftruncate(fd, (off_t)1 << 40) == 0);
        close(fd);
        error_reset();
        CHECK(open_checked(huge, O_WRONLY, &x) == NULL);
        CHECK(error_has("is 1099511627776 bytes"));
        unlink(huge);
        free(huge);
    }
    /* The header must say what the manifest says. */
    struct nj_index_expect other = x;
    other.disk_size = size + 1;
    error_reset();
    CHECK(open_checked(w.path, O_RDONLY, &other) == NULL);
    CHECK(error_has("its manifest says"));
    other = x;
    other.covered = x.covered + 1;
    error_reset();
    CHECK(open_checked(w.path, O_RDONLY, &other) == NULL);
    CHECK(error_has("its manifest says"));

    /* Changed after the open: the stream no longer hashes to what was
     * checked, and the last read says so. */
    r = open_checked(w.path, O_RDONLY, &x);
    REQUIRE(r);
    {
        int fd = open(w.path, O_WRONLY | O_CLOEXEC);
        REQUIRE(fd >= 0);
        unsigned char b = 0x77;
        /* A byte of the digest of entry 2001 (a DATA entry). */
        REQUIRE(pwrite(fd, &b, 1, 64 + 64 * 2001 + 40) == 1);
        close(fd);
    }
    error_reset();
    CHECK(read_all(r, NULL, 0) == -1);
    CHECK(error_has("changed while it was read"));
    nj_index_reader_free(r);
    unlink(w.path);
    free(w.path);
    free(e);
}

/* A header whose count exceeds what it covers is refused at once. */
static void test_header_count_bound(void)
{
    struct raw_index x;
    raw_init(&x, 1 << 20, 2);
    raw_zero(&x.e[0], 0, 4096);
    raw_zero(&x.e[1], 8192, 4096);
    raw_count(&x);
    x.covered = 1;
    size_t len = 0;
    unsigned char *buf = raw_build(&x, &len);
    char *path = write_file(buf, len);
    error_reset();
    struct nj_index_reader *r = open_path(path, "bad", NULL, 0);
    CHECK(r == NULL && error_has("claims 2 entries covering 1 bytes"));
    nj_index_reader_free(r);
    error_reset();
    CHECK(nj_index_check_buffer(buf, len, 0) == -1);
    CHECK(error_has("claims 2 entries"));
    unlink(path);
    free(path);
    free(buf);
    free(x.e);
}

int main(void)
{
    tmpdir = nj_test_tmpdir("index");
    test_round_trip_small();
    test_round_trip_many();
    test_zero_merging();
    test_writer_refusals();
    test_reader_header_refusals();
    test_reader_entry_refusals();
    test_checked_open();
    test_header_count_bound();
    nj_test_rmtree(tmpdir);
    free(tmpdir);
    return nj_test_done("test-index");
}
