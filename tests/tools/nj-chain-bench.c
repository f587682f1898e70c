/*
 * nj-chain-bench: how long verify takes on one long chain.
 *
 *   nj-chain-bench DIR N
 *
 * Builds in DIR (which must not exist) a store with one chain of N
 * backups of one disk: a full written through the catalog API, then N - 1
 * incrementals of one entry each, written straight into backups/ (their
 * manifests and indexes are what nj_backup_commit writes; only the commit
 * protocol's syncs are skipped, so that building is fast).  Then it runs a
 * store-wide verify and a verify of the newest point, and prints the
 * seconds each took.  Not a test: a measurement, run by hand.
 */
#include "nj-io.h"
#include "nj-restore.h"
#include "nj-test.h"
#include "nj-util.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SIZE (1u << 20)

static void die(const char *what)
{
    fprintf(stderr, "nj-chain-bench: %s: %s\n", what, nj_error_get());
    exit(1);
}

int main(int argc, char **argv)
{
    uint64_t n = 0;
    if (argc != 3 || nj_parse_u64(argv[2], &n) < 0 || n < 1) {
        fprintf(stderr, "usage: nj-chain-bench DIR N\n");
        return 2;
    }
    const char *dir = argv[1];
    struct nj_store *s = nj_store_open(dir, NJ_STORE_CREATE);
    if (!s)
        die("create store");
    struct nj_codec *codec = nj_codec_new(1);
    unsigned char *buf = nj_calloc(1, SIZE);
    uint64_t rng = 7;
    nj_test_fill_random(&rng, buf, SIZE);
    struct nj_backup_params bp = { .domain_name = "bench",
                                   .domain_uuid = "bench-uuid",
                                   .level = NJ_LEVEL_FULL };
    struct nj_backup *b = nj_backup_begin(s, &bp);
    if (!b)
        die("begin");
    struct nj_backup_disk *bd = nj_backup_disk_add(b, "vda", "raw", SIZE, true);
    struct nj_extent e = { .offset = 0, .length = SIZE, .kind = NJ_EXTENT_DATA,
                           .chunk_len = SIZE };
    if (!bd || nj_backup_put_chunk(b, bd, codec, buf, SIZE, &e.digest) < 0 ||
        nj_backup_disk_append(bd, &e) < 0 || nj_backup_commit(b) < 0)
        die("full");
    /* The incrementals' manifest: the full's, with its strings copied. */
    const struct nj_manifest *fm = nj_backup_manifest(b);
    struct nj_manifest m = *fm;
    struct nj_manifest_disk d = fm->disks[0];
    m.disks = &d;
    m.domain_name = nj_strdup(fm->domain_name);
    m.domain_uuid = nj_strdup(fm->domain_uuid);
    d.target = nj_strdup(fm->disks[0].target);
    d.format = nj_strdup(fm->disks[0].format);
    d.index = nj_strdup(fm->disks[0].index);
    char *parent = nj_strdup(fm->id);
    nj_backup_free(b);

    m.level = NJ_LEVEL_INC;
    d.full = false;
    for (uint64_t i = 1; i < n; i++) {
        char id[64];
        snprintf(id, sizeof id, "bench-%08llu", (unsigned long long)i);
        NJ_CLEANUP_FREE char *bdir = nj_asprintf("%s/backups/%s", dir, id);
        NJ_CLEANUP_FREE char *ipath = nj_asprintf("%s/disk0.idx", bdir);
        NJ_CLEANUP_FREE char *mpath = nj_asprintf("%s/manifest.json", bdir);
        if (mkdir(bdir, 0700) < 0) {
            perror(bdir);
            return 1;
        }
        int fd = open(ipath, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        struct nj_index_writer *w = nj_index_writer_new(nj_stream_fd(fd), SIZE);
        /* One 4 KiB piece of the chunk, somewhere. */
        struct nj_extent x = e;
        x.offset = (i * 4096) % SIZE;
        x.length = 4096;
        x.chunk_offset = x.offset;
        if (!w || nj_index_writer_append(w, &x) < 0 ||
            nj_index_writer_finish(w, &d.index_digest, &d.entries,
                                   &d.covered) < 0)
            die("index");
        nj_index_writer_free(w);
        m.id = id;
        m.parent = parent;
        m.finished_us += 1000;
        m.finished = m.finished_us / 1000000;
        NJ_CLEANUP_FREE char *text = nj_manifest_to_json(&m);
        fd = open(mpath, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0 || nj_full_write(fd, text, strlen(text)) < 0) {
            perror(mpath);
            return 1;
        }
        close(fd);
        free(parent);
        parent = nj_strdup(id);
    }

    struct nj_catalog *c = nj_catalog_open(s);
    if (!c)
        die("catalog");
    FILE *devnull = fopen("/dev/null", "w");
    struct nj_verify_opts vo = { .threads = 1, .out = devnull };
    double t = nj_mono_sec();
    int r = nj_verify(s, c, &vo);
    double all = nj_mono_sec() - t;
    vo.backup = parent;
    t = nj_mono_sec();
    int r2 = nj_verify(s, c, &vo);
    double point = nj_mono_sec() - t;
    printf("%llu backups: store-wide verify %.2f s (returned %d), verify of "
           "the newest point %.2f s (returned %d)\n", (unsigned long long)n,
           all, r, point, r2);
    fclose(devnull);
    nj_catalog_free(c);
    free(m.domain_name);
    free(m.domain_uuid);
    free(d.target);
    free(d.format);
    free(d.index);
    free(parent);
    free(buf);
    nj_codec_free(codec);
    nj_store_close(s);
    return r == 0 && r2 == 0 ? 0 : 1;
}
