/*
 * test-memory: restoring and verifying a sparse 64 GiB disk uses bounded
 * memory.  A full (scattered 1 MiB data cells, zero elsewhere) and two
 * incrementals (scattered 64 KiB writes) are stored; a child process then
 * restores the latest point to a sparse raw file and another verifies the
 * store, and the parent reads each child's peak RSS with wait4().  The
 * restored bytes are checked at every written range, and the file must be
 * sparse everywhere else.
 */
#include "nj-io.h"
#include "nj-restore.h"
#include "nj-test.h"
#include "nj-util.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define DISK_SIZE (64ull << 30)
#define CELL (1u << 20)
#define NCELLS 48
#define NWRITES 200
#define WSIZE (64u * 1024)
#define RSS_LIMIT_KIB (64 * 1024)

struct wr {
    uint64_t off, len, seed;
};

static void gen(uint64_t seed, unsigned char *buf, size_t len)
{
    uint64_t s = seed;
    nj_test_fill_random(&s, buf, len);
}

/* Child: run fn, exit with its status; parent: peak RSS in KiB. */
static long run_measured(int (*fn)(void *), void *arg, int *status)
{
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0)
        _exit(fn(arg));
    struct rusage ru;
    int st = 0;
    REQUIRE(wait4(pid, &st, 0, &ru) == pid);
    *status = WIFEXITED(st) ? WEXITSTATUS(st) : 128;
    return ru.ru_maxrss;
}

struct ctx {
    const char *store, *out;
};

static int do_restore(void *arg)
{
    struct ctx *c = arg;
    struct nj_store *s = nj_store_open(c->store, 0);
    struct nj_catalog *cat = s ? nj_catalog_open(s) : NULL;
    const struct nj_manifest *m = cat ? nj_catalog_resolve(cat, "big", NULL) : NULL;
    struct nj_output *o = m ? nj_output_open(c->out, NJ_OUTPUT_RAW, DISK_SIZE, false) : NULL;
    int r = o ? nj_restore_disk(s, cat, m, "vda", o, NULL, NULL) : -1;
    if (nj_output_close(o, r == 0) < 0)
        r = -1;
    if (r < 0)
        nj_error_print("restore child");
    nj_catalog_free(cat);
    nj_store_close(s);
    return r < 0;
}

static int do_verify(void *arg)
{
    struct ctx *c = arg;
    struct nj_store *s = nj_store_open(c->store, 0);
    struct nj_catalog *cat = s ? nj_catalog_open(s) : NULL;
    FILE *devnull = fopen("/dev/null", "w");
    struct nj_verify_opts vo = { .out = devnull };
    int r = cat ? nj_verify(s, cat, &vo) : -1;
    fclose(devnull);
    nj_catalog_free(cat);
    nj_store_close(s);
    return r != 0;
}

static int put_write(struct nj_backup *b, struct nj_backup_disk *d,
                     struct nj_codec *codec, const struct wr *w,
                     unsigned char *buf)
{
    gen(w->seed, buf, (size_t)w->len);
    struct nj_extent e = { .offset = w->off, .length = w->len,
                           .kind = NJ_EXTENT_DATA,
                           .chunk_len = (uint32_t)w->len };
    if (nj_backup_put_chunk(b, d, codec, buf, (size_t)w->len, &e.digest) < 0)
        return -1;
    return nj_backup_disk_append(d, &e);
}

static int cmp_wr(const void *a, const void *b)
{
    const struct wr *x = a, *y = b;
    return x->off < y->off ? -1 : x->off > y->off;
}

int main(void)
{
    char *dir = nj_test_tmpdir("memory");
    NJ_CLEANUP_FREE char *storedir = nj_asprintf("%s/store", dir);
    NJ_CLEANUP_FREE char *outpath = nj_asprintf("%s/out.raw", dir);
    struct nj_store *s = nj_store_open(storedir, NJ_STORE_CREATE);
    REQUIRE(s);
    struct nj_codec *codec = nj_codec_new(1);
    unsigned char *buf = nj_malloc(CELL);
    uint64_t rng = 42;

    /* All writes ever made, in order: the last one at an offset wins. */
    struct wr *all = nj_calloc(NCELLS + 2 * NWRITES, sizeof *all);
    size_t nall = 0;

    /* Full: NCELLS distinct cells, zero between them. */
    struct wr cells[NCELLS];
    for (int i = 0; i < NCELLS; i++) {
        uint64_t cell = (uint64_t)i * (DISK_SIZE / CELL / NCELLS) +
                        nj_test_rand_below(&rng, DISK_SIZE / CELL / NCELLS);
        cells[i] = (struct wr){ cell * CELL, CELL, 1000 + (uint64_t)i };
    }
    qsort(cells, NCELLS, sizeof *cells, cmp_wr);
    struct nj_backup_params bp = { .domain_name = "big",
                                   .domain_uuid = "big-uuid",
                                   .level = NJ_LEVEL_FULL };
    struct nj_backup *b = nj_backup_begin(s, &bp);
    REQUIRE(b);
    struct nj_backup_disk *d = nj_backup_disk_add(b, "vda", "qcow2", DISK_SIZE, true);
    REQUIRE(d);
    uint64_t pos = 0;
    for (int i = 0; i < NCELLS; i++) {
        if (cells[i].off > pos) {
            struct nj_extent z = { .offset = pos, .length = cells[i].off - pos,
                                   .kind = NJ_EXTENT_ZERO };
            REQUIRE(nj_backup_disk_append(d, &z) == 0);
        }
        REQUIRE(put_write(b, d, codec, &cells[i], buf) == 0);
        all[nall++] = cells[i];
        pos = cells[i].off + CELL;
    }
    struct nj_extent z = { .offset = pos, .length = DISK_SIZE - pos,
                           .kind = NJ_EXTENT_ZERO };
    REQUIRE(nj_backup_disk_append(d, &z) == 0);
    REQUIRE(nj_backup_commit(b) == 0);
    char *parent = nj_strdup(nj_backup_id(b));
    nj_backup_free(b);

    /* Two incrementals of scattered 64 KiB writes (aligned, distinct). */
    for (int inc = 0; inc < 2; inc++) {
        struct wr ws[NWRITES];
        for (int i = 0; i < NWRITES; i++) {
            uint64_t slot = (uint64_t)i * (DISK_SIZE / WSIZE / NWRITES) +
                            nj_test_rand_below(&rng, DISK_SIZE / WSIZE / NWRITES);
            ws[i] = (struct wr){ slot * WSIZE, WSIZE,
                                 5000 + (uint64_t)inc * 1000 + (uint64_t)i };
        }
        qsort(ws, NWRITES, sizeof *ws, cmp_wr);
        bp.level = NJ_LEVEL_INC;
        bp.parent = parent;
        b = nj_backup_begin(s, &bp);
        REQUIRE(b);
        d = nj_backup_disk_add(b, "vda", "qcow2", DISK_SIZE, false);
        REQUIRE(d);
        for (int i = 0; i < NWRITES; i++) {
            REQUIRE(put_write(b, d, codec, &ws[i], buf) == 0);
            all[nall++] = ws[i];
        }
        REQUIRE(nj_backup_commit(b) == 0);
        free(parent);
        parent = nj_strdup(nj_backup_id(b));
        nj_backup_free(b);
    }
    nj_store_close(s);

    struct ctx c = { storedir, outpath };
    int status = 0;
    long rss = run_measured(do_restore, &c, &status);
    CHECK(status == 0);
    printf("test-memory: restore of a 64 GiB sparse disk: peak RSS %ld KiB\n", rss);
    /* Under ASan the child inherits the parent's quarantine of freed
     * buffers (the store it just built): the bound is enforced by the
     * ordinary build, which the suite also runs. */
    if (NJ_UNDER_ASAN)
        printf("test-memory: AddressSanitizer build: the %d KiB bound is "
               "not enforced\n", RSS_LIMIT_KIB);
    CHECK(NJ_UNDER_ASAN || rss < RSS_LIMIT_KIB);
    long vrss = run_measured(do_verify, &c, &status);
    CHECK(status == 0);
    printf("test-memory: verify of the store: peak RSS %ld KiB\n", vrss);
    CHECK(NJ_UNDER_ASAN || vrss < RSS_LIMIT_KIB);

    /* Content: every write's range holds the newest write's bytes. */
    int fd = open(outpath, O_RDONLY);
    REQUIRE(fd >= 0);
    struct stat st;
    REQUIRE(fstat(fd, &st) == 0);
    CHECK((uint64_t)st.st_size == DISK_SIZE);
    unsigned char *want = nj_malloc(CELL), *got = nj_malloc(CELL);
    for (size_t i = 0; i < nall; i++) {
        /* Build the expected bytes by replaying later overlapping writes. */
        gen(all[i].seed, want, (size_t)all[i].len);
        for (size_t k = i + 1; k < nall; k++) {
            uint64_t lo = NJ_MAX(all[i].off, all[k].off);
            uint64_t hi = NJ_MIN(all[i].off + all[i].len, all[k].off + all[k].len);
            if (lo >= hi)
                continue;
            gen(all[k].seed, got, (size_t)all[k].len);
            memcpy(want + (lo - all[i].off), got + (lo - all[k].off), hi - lo);
        }
        REQUIRE(nj_full_pread(fd, got, (size_t)all[i].len, (off_t)all[i].off) == 0);
        CHECK(memcmp(want, got, (size_t)all[i].len) == 0);
    }
    /* Sparse: allocation is close to what was written, not 64 GiB. */
    uint64_t written = (uint64_t)NCELLS * CELL + 2ull * NWRITES * WSIZE;
    CHECK((uint64_t)st.st_blocks * 512 <= written + (8u << 20));
    /* And the bytes between writes read as zero (sample). */
    uint64_t srng = 9;
    for (int i = 0; i < 200; i++) {
        uint64_t off = nj_test_rand_below(&srng, DISK_SIZE - 4096) & ~4095ull;
        bool covered = false;
        for (size_t k = 0; k < nall && !covered; k++)
            covered = off + 4096 > all[k].off && off < all[k].off + all[k].len;
        if (covered)
            continue;
        REQUIRE(nj_full_pread(fd, got, 4096, (off_t)off) == 0);
        CHECK(nj_is_zero(got, 4096));
    }
    close(fd);
    free(want);
    free(got);
    free(all);
    free(buf);
    free(parent);
    nj_codec_free(codec);
    nj_test_rmtree(dir);
    free(dir);
    return nj_test_done("test-memory");
}
