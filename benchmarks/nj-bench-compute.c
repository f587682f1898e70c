/*
 * nj-bench-compute: the compute bound of a backup on given bytes.
 *
 *   nj-bench-compute FILE [--threads N] [--level L] [--grid BYTES]
 *                    [--only sha256|zstd] [--limit BYTES] [--json]
 *
 * Reads FILE (a raw disk image) cell by cell, skips all-zero cells as the
 * datapath does, and on N threads hashes (SHA-256) and compresses (zstd
 * at level L, negative levels included, through nightjar's own chunk
 * codec, so incompressible cells are sampled and stored raw as in a
 * backup) every other cell: the same work the datapath does per byte,
 * minus all I/O.  --only measures one of the two alone (the per-core
 * rates bench-vs-peer.sh prints); --limit stops after that many non-zero
 * bytes (a sample).  Reports the bytes processed, the wall time and the
 * stored (compressed) size.  The file is read into the page cache first
 * so the timing is compute only.
 */
#include "nj-chunk.h"
#include "nj-util.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct ctx {
    const unsigned char *map;
    uint64_t size, grid;
    int level;
    bool hash, compress;
    uint64_t limit; /* non-zero bytes to process; 0: all */
    uint64_t taken; /* atomic: non-zero bytes claimed */
    uint64_t next; /* atomic cell counter */
    uint64_t bytes, stored, zero;
};

static void *work(void *arg)
{
    struct ctx *c = arg;
    struct nj_codec *codec = nj_codec_new(c->level);
    uint64_t bytes = 0, stored = 0, zero = 0;
    for (;;) {
        uint64_t cell = __atomic_fetch_add(&c->next, 1, __ATOMIC_RELAXED);
        uint64_t off = cell * c->grid;
        if (off >= c->size)
            break;
        size_t len = (size_t)NJ_MIN(c->grid, c->size - off);
        const unsigned char *p = c->map + off;
        if (nj_is_zero(p, len)) {
            zero += len;
            continue;
        }
        if (c->limit &&
            __atomic_fetch_add(&c->taken, len, __ATOMIC_RELAXED) >= c->limit)
            break;
        size_t flen = len;
        if (c->hash) {
            struct nj_digest d;
            nj_sha256(p, len, &d);
        }
        if (c->compress && !nj_codec_encode(codec, p, len, &flen)) {
            nj_error_print("nj-bench-compute");
            exit(1);
        }
        bytes += len;
        stored += flen;
    }
    __atomic_fetch_add(&c->bytes, bytes, __ATOMIC_RELAXED);
    __atomic_fetch_add(&c->stored, stored, __ATOMIC_RELAXED);
    __atomic_fetch_add(&c->zero, zero, __ATOMIC_RELAXED);
    nj_codec_free(codec);
    return NULL;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    unsigned threads = nj_ncpus();
    uint64_t grid = 4u << 20, v = 0;
    int level = NJ_ZSTD_LEVEL_DEFAULT;
    bool json = false;
    const char *only = NULL;
    uint64_t limit = 0;
    static const struct option opts[] = {
        { "only", required_argument, NULL, 'o' },
        { "limit", required_argument, NULL, 'm' },
        { "threads", required_argument, NULL, 't' },
        { "level", required_argument, NULL, 'l' },
        { "grid", required_argument, NULL, 'g' },
        { "json", no_argument, NULL, 'j' },
        { NULL, 0, NULL, 0 },
    };
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 't': if (nj_parse_u64(optarg, &v) == 0 && v) threads = (unsigned)v; break;
        case 'l': {
            char *end = NULL;
            long l = strtol(optarg, &end, 10);
            if (!*optarg || *end || l < NJ_ZSTD_LEVEL_MIN || l > NJ_ZSTD_LEVEL_MAX || l == 0) {
                fprintf(stderr, "nj-bench-compute: --level must be %d..%d, not 0\n",
                        NJ_ZSTD_LEVEL_MIN, NJ_ZSTD_LEVEL_MAX);
                return 2;
            }
            level = (int)l;
            break;
        }
        case 'o': only = optarg; break;
        case 'm': if (nj_parse_u64(optarg, &v) == 0) limit = v; break;
        case 'g': if (nj_parse_u64(optarg, &v) == 0 && v) grid = v; break;
        case 'j': json = true; break;
        default: return 2;
        }
    }
    if (argc - optind != 1) {
        fprintf(stderr, "usage: nj-bench-compute FILE [--threads N] "
                        "[--level L] [--grid BYTES] [--only sha256|zstd] "
                        "[--limit BYTES] [--json]\n");
        return 2;
    }
    int fd = open(argv[optind], O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0 || st.st_size == 0) {
        fprintf(stderr, "nj-bench-compute: '%s': %s\n", argv[optind],
                strerror(errno));
        return 1;
    }
    if (only && strcmp(only, "sha256") != 0 && strcmp(only, "zstd") != 0) {
        fprintf(stderr, "nj-bench-compute: --only takes sha256 or zstd\n");
        return 2;
    }
    struct ctx cx = { .size = (uint64_t)st.st_size, .grid = grid,
                      .level = level, .limit = limit,
                      .hash = !only || strcmp(only, "sha256") == 0,
                      .compress = !only || strcmp(only, "zstd") == 0 };
    cx.map = mmap(NULL, cx.size, PROT_READ, MAP_SHARED, fd, 0);
    if (cx.map == MAP_FAILED) {
        fprintf(stderr, "nj-bench-compute: mmap: %s\n", strerror(errno));
        return 1;
    }
    /* Fault everything in first: measure compute, not the disk. */
    volatile unsigned char sink = 0;
    for (uint64_t o = 0; o < cx.size; o += 4096)
        sink ^= cx.map[o];
    (void)sink;
    pthread_t *t = nj_calloc(threads, sizeof *t);
    double t0 = now();
    for (unsigned i = 0; i < threads; i++)
        pthread_create(&t[i], NULL, work, &cx);
    for (unsigned i = 0; i < threads; i++)
        pthread_join(t[i], NULL);
    double el = now() - t0;
    if (json)
        printf("{\"threads\":%u,\"level\":%d,\"only\":\"%s\",\"grid\":%llu,"
               "\"bytes\":%llu,\"zero\":%llu,\"stored\":%llu,"
               "\"seconds\":%.4f,\"mb_per_s\":%.1f}\n", threads, level,
               only ? only : "",
               (unsigned long long)grid, (unsigned long long)cx.bytes,
               (unsigned long long)cx.zero, (unsigned long long)cx.stored,
               el, (double)cx.bytes / el / 1e6);
    else
        printf("threads %u level %d grid %llu: %llu data bytes in %.3f s "
               "(%.1f MB/s), stored %llu (ratio %.2f)\n", threads, level,
               (unsigned long long)grid, (unsigned long long)cx.bytes, el,
               (double)cx.bytes / el / 1e6, (unsigned long long)cx.stored,
               cx.stored ? (double)cx.bytes / (double)cx.stored : 0);
    free(t);
    return 0;
}
