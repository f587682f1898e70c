/*
 * nj-bench-gc: garbage collection at scale.
 *
 *   nj-bench-gc [--chunks N] [--garbage M] [--dir DIR] [--threads T]
 *               [--max-rss MIB] [--keep] [--json] [--tiny] [--v1]
 *
 * Builds a store of N referenced and M unreferenced small chunks (64
 * bytes of distinct content each, framed with nj_chunk_encode and written
 * with nj_store_chunk_put), and three backups built with the catalog API
 * whose indexes reference them: a full of one domain with two disks of
 * N/2 one-chunk entries each, an incremental on it re-referencing every
 * hundredth chunk, and a full of a second domain referencing all N again
 * (dedup across domains).  A second later, nj_gc with grace 0 runs in a
 * fresh process (this program re-executed with --gc-only), so that its
 * peak RSS (VmHWM) is gc's alone.  Reports gc's wall time, peak RSS and the
 * chunks freed and kept, checks them (freed = M, kept = N, every
 * referenced chunk still there, every other gone) and gc's peak RSS
 * against a fixed bound, and removes the store unless --keep.  Exits 1
 * when a check fails, the memory bound included.
 *
 * The memory bound, 24 MiB by default (--max-rss), is the same for every
 * N: gc's memory must not grow with the number of chunks.  What it holds
 * is the mark cache, a fixed 8 MiB table of digests (MARK_CACHE_SLOTS in
 * catalog/nj-gc.c), the catalog of manifests (it grows with the number of
 * backups, three here, not with chunks), one index reader at a time, and
 * the program with its libraries (libc, zstd, OpenSSL, json-c).  Measured
 * (benchmarks/results-gc.md): 13.3 MiB with --tiny and 13.3 MiB with
 * 100,000 chunks; 24 MiB leaves room for libraries
 * and allocators that differ between machines, and still fails if gc
 * kept a set of chunks (1,000,000 digests alone are 32 MiB).  Under
 * AddressSanitizer, whose shadow memory and quarantine make RSS
 * meaningless, the bound is reported but not enforced.
 *
 * The store has the object layout (every new store's) unless --v1 asks
 * for the version-1 directory layout, whose gc marks chunks by mtime.  On
 * the object layout gc keeps its marks in memory (catalog/nj-marks.h):
 * exact fingerprints up to 256Ki chunks, then a filter of about 2 bytes a
 * chunk that may keep up to 1% of the garbage; so the bound there is the
 * fixed one plus 3 bytes a chunk, and up to M/100 garbage chunks may be
 * left once N passes the exact range.
 *
 * Defaults: N = 1,000,000, M = 100,000, DIR a new directory under
 * /var/tmp.  --tiny: N = 10,000, M = 1,000 under $TMPDIR or /tmp (the run
 * in the test suite).
 */
#include "nj-catalog.h"
#include "nj-chunk.h"
#include "nj-io.h"
#include "nj-marks.h"
#include "nj-prune.h"
#include "nj-util.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CHUNK_LEN 64
#define PROG "nj-bench-gc"
#define MAX_RSS_MIB_DEFAULT 24

#define UNDER_ASAN NJ_UNDER_ASAN

NJ_PRINTF(1, 2) static void die(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s: ", PROG);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    const char *e = nj_error_get();
    fprintf(stderr, "%s%s\n", e && e[0] ? ": " : "", e ? e : "");
    exit(1);
}

/* Chunk i's plaintext: its number, then bytes derived from it. */
static void chunk_content(uint64_t i, unsigned char *buf)
{
    uint64_t x = i * 0x9e3779b97f4a7c15ULL + 0x632be59bd9b4e019ULL;
    for (size_t k = 0; k < CHUNK_LEN; k += 8) {
        x ^= x >> 31;
        x *= 0xbf58476d1ce4e5b9ULL;
        x ^= x >> 27;
        memcpy(buf + k, &x, 8);
    }
    memcpy(buf, &i, sizeof i);
}

struct put_job {
    struct nj_store *s;
    struct nj_digest *digests;
    uint64_t first, end; /* chunk numbers [first, end) */
    int rc;
    char err[256];
};

static void *put_range(void *arg)
{
    struct put_job *j = arg;
    struct nj_codec *codec = nj_codec_new(1);
    unsigned char raw[CHUNK_LEN];
    size_t cap = nj_chunk_frame_bound(CHUNK_LEN);
    unsigned char *frame = nj_malloc(cap);
    for (uint64_t i = j->first; i < j->end && j->rc == 0; i++) {
        chunk_content(i, raw);
        size_t flen = nj_chunk_encode(codec, raw, CHUNK_LEN, frame, cap);
        if (flen == 0 || nj_sha256(raw, CHUNK_LEN, &j->digests[i]) < 0 ||
            nj_store_chunk_put(j->s, &j->digests[i], frame, flen) != 0)
            j->rc = -1;
    }
    if (j->rc < 0)
        snprintf(j->err, sizeof j->err, "%s", nj_error_get());
    free(frame);
    nj_codec_free(codec);
    return NULL;
}

static void put_chunks(struct nj_store *s, struct nj_digest *digests,
                       uint64_t n, unsigned threads)
{
    pthread_t *t = nj_calloc(threads, sizeof *t);
    struct put_job *jobs = nj_calloc(threads, sizeof *jobs);
    for (unsigned k = 0; k < threads; k++) {
        jobs[k] = (struct put_job){ .s = s, .digests = digests,
                                    .first = n * k / threads,
                                    .end = n * (k + 1) / threads };
        if (pthread_create(&t[k], NULL, put_range, &jobs[k]) != 0)
            die("start a thread");
    }
    for (unsigned k = 0; k < threads; k++) {
        pthread_join(t[k], NULL);
        if (jobs[k].rc < 0) {
            nj_error("%s", jobs[k].err);
            die("put chunks");
        }
    }
    if (nj_store_sync(s) < 0)
        die("sync");
    free(t);
    free(jobs);
}

static void add_disk(struct nj_backup *b, const char *target,
                     const struct nj_digest *digests, uint64_t first,
                     uint64_t count, uint64_t step, bool full)
{
    struct nj_backup_disk *d = nj_backup_disk_add(b, target, "raw",
                                                  count * CHUNK_LEN, full);
    if (!d)
        die("add disk '%s'", target);
    for (uint64_t i = 0; i < count; i += step) {
        struct nj_extent e = {
            .offset = i * CHUNK_LEN,
            .length = CHUNK_LEN,
            .kind = NJ_EXTENT_DATA,
            .digest = digests[first + i],
            .chunk_len = CHUNK_LEN,
        };
        if (nj_backup_disk_append(d, &e) < 0)
            die("index of '%s'", target);
    }
}

static char *backup(struct nj_store *s, const char *name, const char *uuid,
                    enum nj_level level, const char *parent,
                    const struct nj_digest *digests, uint64_t n)
{
    struct nj_backup_params p = { .domain_name = name, .domain_uuid = uuid,
                                  .level = level, .parent = parent };
    struct nj_backup *b = nj_backup_begin(s, &p);
    if (!b)
        die("begin a backup of '%s'", name);
    bool full = level == NJ_LEVEL_FULL;
    uint64_t step = full ? 1 : 100;
    add_disk(b, "vda", digests, 0, n / 2, step, full);
    add_disk(b, "vdb", digests, n / 2, n - n / 2, step, full);
    if (nj_backup_commit(b) < 0)
        die("commit a backup of '%s'", name);
    char *id = nj_strdup(nj_backup_id(b));
    nj_backup_free(b);
    return id;
}

/*
 * This process's peak RSS in KiB.  VmHWM, not getrusage's ru_maxrss:
 * Linux carries the high-water mark of the address space replaced by
 * exec into ru_maxrss, i.e. the forked copy of the parent (which holds
 * every digest), not gc's own.
 */
static long peak_rss_kib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kib = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmHWM: %ld kB", &kib) == 1)
            break;
    if (f)
        fclose(f);
    if (kib < 0) {
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        kib = ru.ru_maxrss;
    }
    return kib;
}

/* The child: gc, then one line of results on stdout. */
static int gc_only(const char *dir)
{
    struct nj_store *s = nj_store_open(dir, 0);
    if (!s)
        die("open store");
    double t0 = nj_mono_sec();
    struct nj_gc_stats st;
    if (nj_gc(s, 0, &st) < 0)
        die("gc");
    double took = nj_mono_sec() - t0;
    nj_store_close(s);
    printf("%.3f %ld %llu %llu %llu %llu %llu\n", took, peak_rss_kib(),
           (unsigned long long)st.chunks_freed,
           (unsigned long long)st.chunks_kept,
           (unsigned long long)st.referenced,
           (unsigned long long)st.bytes_freed,
           (unsigned long long)st.bytes_kept);
    return 0;
}

static bool chunk_present(const char *dir, const struct nj_digest *d)
{
    char hex[NJ_DIGEST_HEX_LEN + 1];
    nj_digest_to_hex(d, hex);
    char path[4096];
    snprintf(path, sizeof path, "%s/chunks/%.2s/%s", dir, hex, hex);
    return access(path, F_OK) == 0;
}

static uint64_t parse_count(const char *opt, const char *arg)
{
    uint64_t v = 0;
    if (nj_parse_u64(arg, &v) < 0 || v > (1ull << 32))
        die("%s: '%s' is not a count", opt, arg);
    return v;
}

int main(int argc, char **argv)
{
    enum { OPT_GC_ONLY = 256, OPT_KEEP, OPT_JSON, OPT_TINY, OPT_MAX_RSS,
           OPT_V1 };
    static const struct option opts[] = {
        { "chunks", required_argument, NULL, 'n' },
        { "garbage", required_argument, NULL, 'm' },
        { "dir", required_argument, NULL, 'd' },
        { "threads", required_argument, NULL, 't' },
        { "keep", no_argument, NULL, OPT_KEEP },
        { "json", no_argument, NULL, OPT_JSON },
        { "tiny", no_argument, NULL, OPT_TINY },
        { "v1", no_argument, NULL, OPT_V1 },
        { "max-rss", required_argument, NULL, OPT_MAX_RSS },
        { "gc-only", required_argument, NULL, OPT_GC_ONLY },
        { NULL, 0, NULL, 0 },
    };
    uint64_t n = 1000000, m = 100000, max_rss_mib = MAX_RSS_MIB_DEFAULT;
    unsigned threads = NJ_MAX(2u, nj_ncpus());
    const char *dir_opt = NULL;
    bool keep = false, json = false, tiny = false, v1 = false;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'n': n = parse_count("--chunks", optarg); break;
        case 'm': m = parse_count("--garbage", optarg); break;
        case 'd': dir_opt = optarg; break;
        case 't':
            threads = (unsigned)NJ_MAX(1u, parse_count("--threads", optarg));
            break;
        case OPT_KEEP: keep = true; break;
        case OPT_JSON: json = true; break;
        case OPT_TINY: tiny = true; break;
        case OPT_V1: v1 = true; break;
        case OPT_MAX_RSS:
            max_rss_mib = parse_count("--max-rss", optarg);
            break;
        case OPT_GC_ONLY: return gc_only(optarg);
        default: return 2;
        }
    }
    if (tiny) {
        n = 10000;
        m = 1000;
    }
    if (n < 2)
        die("--chunks must be at least 2");
    char *dir = NULL;
    if (dir_opt) {
        dir = nj_strdup(dir_opt);
    } else {
        const char *base = tiny ? getenv("TMPDIR") : NULL;
        dir = nj_asprintf("%s/nj-bench-gc-XXXXXX",
                          base ? base : tiny ? "/tmp" : "/var/tmp");
        if (!mkdtemp(dir))
            die("mkdtemp '%s': %s", dir, strerror(errno));
    }

    double t0 = nj_mono_sec();
    struct nj_store *s = nj_store_open(
        dir, NJ_STORE_CREATE | (v1 ? NJ_STORE_CREATE_V1 : 0));
    if (!s)
        die("create store '%s'", dir);
    if (!v1)
        max_rss_mib += (3 * n + (1u << 20) - 1) >> 20;
    uint64_t slack = !v1 && n > NJ_MARKS_EXACT ? m / 100 : 0;
    struct nj_digest *digests = nj_calloc(n + m, sizeof *digests);
    put_chunks(s, digests, n + m, threads);
    double t_put = nj_mono_sec() - t0;
    char *full = backup(s, "bench-gc", "b3c6c000-0000-4000-8000-000000000001",
                        NJ_LEVEL_FULL, NULL, digests, n);
    char *inc = backup(s, "bench-gc", "b3c6c000-0000-4000-8000-000000000001",
                       NJ_LEVEL_INC, full, digests, n);
    char *other = backup(s, "bench-gc 2",
                         "b3c6c000-0000-4000-8000-000000000002",
                         NJ_LEVEL_FULL, NULL, digests, n);
    nj_store_close(s);
    double t_build = nj_mono_sec() - t0;
    /* Past the second of the last chunk written, so that grace 0 sees
     * every unreferenced chunk as old. */
    usleep(1100 * 1000);

    int pfd[2];
    if (pipe(pfd) < 0)
        die("pipe: %s", strerror(errno));
    fflush(NULL);
    double t_gc0 = nj_mono_sec();
    pid_t pid = fork();
    if (pid < 0)
        die("fork: %s", strerror(errno));
    if (pid == 0) {
        dup2(pfd[1], STDOUT_FILENO);
        close(pfd[0]);
        close(pfd[1]);
        execl("/proc/self/exe", argv[0], "--gc-only", dir, (char *)NULL);
        _exit(127);
    }
    close(pfd[1]);
    char line[512] = "";
    FILE *f = fdopen(pfd[0], "r");
    if (!f || !fgets(line, sizeof line, f))
        line[0] = '\0';
    if (f)
        fclose(f);
    int status = 0;
    struct rusage ru;
    if (wait4(pid, &status, 0, &ru) != pid || !WIFEXITED(status) ||
        WEXITSTATUS(status) != 0)
        die("gc process failed (status 0x%x)", status);
    double t_gc_proc = nj_mono_sec() - t_gc0;
    double took = 0;
    long rss = 0;
    unsigned long long freed = 0, kept = 0, refs = 0, bfreed = 0, bkept = 0;
    if (sscanf(line, "%lf %ld %llu %llu %llu %llu %llu", &took, &rss, &freed,
               &kept, &refs, &bfreed, &bkept) != 7)
        die("gc process printed '%s'", line);

    /* What gc left: every referenced chunk, no other. */
    double t_chk = nj_mono_sec();
    uint64_t missing = 0, left = 0;
    for (uint64_t i = 0; i < n + m; i++) {
        bool there = chunk_present(dir, &digests[i]);
        missing += i < n && !there;
        left += i >= n && there;
    }
    t_chk = nj_mono_sec() - t_chk;
    int ret = 0;
    bool wrong = missing || left > slack || freed != m - left ||
                 kept != n + left;
    if (wrong) {
        fprintf(stderr, "%s: gc freed %llu (expected %llu), kept %llu "
                "(expected %llu); %llu referenced chunks missing, %llu "
                "unreferenced left\n", PROG, freed,
                (unsigned long long)m, kept, (unsigned long long)n,
                (unsigned long long)missing, (unsigned long long)left);
        ret = 1;
    }
    bool rss_over = rss > (long)(max_rss_mib * 1024);
    if (rss_over && !UNDER_ASAN) {
        fprintf(stderr, "%s: gc's peak RSS %.1f MiB is over the bound of "
                "%llu MiB (it must not grow with the chunk count)\n", PROG,
                (double)rss / 1024.0, (unsigned long long)max_rss_mib);
        ret = 1;
    }
    if (json) {
        printf("{\"chunks\": %llu, \"garbage\": %llu, \"references\": %llu, "
               "\"gc_seconds\": %.3f, \"gc_peak_rss_kib\": %ld, "
               "\"chunks_freed\": %llu, \"chunks_kept\": %llu, "
               "\"bytes_freed\": %llu, \"bytes_kept\": %llu, "
               "\"gc_peak_rss_bound_kib\": %llu, \"rss_bound_checked\": %s, "
               "\"build_seconds\": %.1f, \"ok\": %s}\n",
               (unsigned long long)n, (unsigned long long)m, refs, took, rss,
               freed, kept, bfreed, bkept,
               (unsigned long long)max_rss_mib * 1024,
               UNDER_ASAN ? "false" : "true", t_build,
               ret ? "false" : "true");
    } else {
        printf("store: %llu referenced + %llu unreferenced chunks of %d "
               "bytes, 3 backups (%llu index references); chunks written "
               "in %.1f s, store built in %.1f s\n",
               (unsigned long long)n, (unsigned long long)m, CHUNK_LEN, refs,
               t_put, t_build);
        printf("gc: %.2f s wall (%.2f s with process start), peak RSS "
               "%.1f MiB, freed %llu chunks (%llu bytes), kept %llu "
               "(%llu bytes); user %.2f s, system %.2f s\n", took, t_gc_proc,
               (double)rss / 1024.0, freed, bfreed, kept, bkept,
               (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6,
               (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6);
        printf("check: every referenced chunk present, every other gone%s "
               "(%.1f s): %s\n",
               slack ? " but at most 1% of the garbage" : "", t_chk,
               wrong ? "FAILED" : "ok");
        printf("check: gc's peak RSS %.1f MiB against the bound of %llu MiB: "
               "%s\n", (double)rss / 1024.0, (unsigned long long)max_rss_mib,
               UNDER_ASAN ? "not enforced (AddressSanitizer build)"
               : rss_over ? "FAILED" : "ok");
    }
    if (!keep && nj_remove_tree(AT_FDCWD, dir) < 0)
        nj_error_print(PROG);
    free(full);
    free(inc);
    free(other);
    free(digests);
    free(dir);
    return ret;
}
