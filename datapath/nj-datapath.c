/*
 * nj-datapath.c: the backup pipeline for one disk.
 *
 *   readers (one thread per NBD connection)
 *      claim the next item from the planner, read it with nbd_aio_pread,
 *      keep up to `requests` reads in flight, poll their own handle
 *   workers (one per core)
 *      split a read at zero blocks, hash, compress, store the chunks
 *   committer (the calling thread)
 *      appends each item's index entries strictly in disk order
 *
 * Items live in a ring of slots.  Item number seq can only use slot
 * seq % nslots, and only once the committer has freed that slot, so the
 * committer finds items in order, and at most nslots buffers of at most
 * `grid` bytes exist: memory is bounded by max_inflight whatever the disk
 * size.  A slot is owned by exactly one party at a time:
 *
 *   FREE --claim (reader)--> READING --completion--> QUEUED (worker)
 *        --processed--> DONE (committer) --appended--> FREE
 *
 * Planned zero items go straight from claim to DONE, and from that moment
 * the slot is the committer's: the claiming reader must not look at it
 * again (the committer may free it and another reader claim it for data
 * before the first one runs its next instruction).  Locks: plan_lock
 * serialises the planner (which may issue block status on the claiming
 * reader's handle); lock protects slot states and the work queue.  Read
 * completions run inside that reader's own libnbd calls and only take
 * lock, never plan_lock, and never call libnbd.  Any error marks the
 * pipeline failed; every thread then stops and the caller aborts the
 * backup, so nothing of a failed run is ever committed.
 */
#include "nj-datapath.h"
#include "nj-plan.h"
#include "nj-util.h"

#include <errno.h>
#include <fcntl.h>
#include <libnbd.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define ALLOC_CONTEXT "base:allocation"
#define MAX_CONNECTIONS 16
#define ZERO_ITEM_MAX (1ull << 40)

enum slot_state { S_FREE, S_READING, S_QUEUED, S_DONE };

NJ_VECTOR(extent_vec, struct nj_extent);

struct conn;

struct slot {
    struct dp *dp;
    struct conn *conn;
    uint64_t seq, off, len;
    bool zero;
    enum slot_state state;
    char *buf;
    struct extent_vec out;
    uint64_t zero_bytes;
};

struct conn {
    struct dp *dp;
    struct nbd_handle *h;
    pthread_t tid;
    bool started;
};

struct dp {
    struct nj_backup *b;
    struct nj_backup_disk *disk;
    const char *target;
    const char *bitmap;
    bool have_alloc;
    uint64_t size, grid, block;
    unsigned requests;

    /* Compression level (under lock): workers read level before each
     * item; adapt_vote moves it between level_lo and level_hi. */
    int level, level_lo, level_hi;
    unsigned nworkers, votes, behind, starved;
    uint64_t cpu_idle, cpu_total; /* /proc/stat at the window's start */

    pthread_mutex_t plan_lock;
    struct nj_plan *plan;
    struct nbd_handle *plan_h;
    struct nj_plan_range cur;
    bool have_cur, plan_done;
    uint64_t next_seq;
    uint64_t planned_data, planned_zero, skipped;

    pthread_mutex_t lock;
    pthread_cond_t cond_free, cond_work, cond_done;
    struct slot *slots;
    size_t nslots;
    size_t *workq;
    size_t wq_head, wq_count;
    bool failed, plan_finished, stop_workers;
    uint64_t total_items;
    char error[1024];

    struct conn conns[MAX_CONNECTIONS];
    unsigned nconns;
};

static void dp_fail(struct dp *dp, const char *msg)
{
    pthread_mutex_lock(&dp->lock);
    if (!dp->failed) {
        dp->failed = true;
        snprintf(dp->error, sizeof dp->error, "%s", msg);
    }
    pthread_cond_broadcast(&dp->cond_free);
    pthread_cond_broadcast(&dp->cond_work);
    pthread_cond_broadcast(&dp->cond_done);
    pthread_mutex_unlock(&dp->lock);
}

static bool dp_failed(struct dp *dp)
{
    pthread_mutex_lock(&dp->lock);
    bool f = dp->failed;
    pthread_mutex_unlock(&dp->lock);
    return f;
}

/* ---- NBD connections ---- */

static struct nbd_handle *nbd_open(const struct nj_nbd_source *src,
                                   const char *target)
{
    struct nbd_handle *h = nbd_create();
    if (!h) {
        nj_error("disk '%s': %s", target, nbd_get_error());
        return NULL;
    }
    if (nbd_add_meta_context(h, ALLOC_CONTEXT) < 0 ||
        (src->bitmap_context &&
         nbd_add_meta_context(h, src->bitmap_context) < 0))
        goto fail;
    if (src->uri) {
        if (nbd_connect_uri(h, src->uri) < 0)
            goto fail;
    } else {
        if (nbd_set_export_name(h, src->export_name ? src->export_name : "") < 0 ||
            nbd_connect_unix(h, src->socket) < 0)
            goto fail;
    }
    return h;
fail:
    nj_error("disk '%s': connect to %s: %s", target,
             src->uri ? src->uri : src->socket, nbd_get_error());
    nbd_close(h);
    return NULL;
}

static int parse_level(const char *s, const char *end, int *out)
{
    char buf[16];
    size_t n = (size_t)(end - s);
    if (n == 0 || n >= sizeof buf)
        return -1;
    memcpy(buf, s, n);
    buf[n] = '\0';
    for (size_t i = 0; i < n; i++)
        if (!(buf[i] >= '0' && buf[i] <= '9') && !(i == 0 && buf[i] == '-'))
            return -1;
    char *e = NULL;
    errno = 0;
    long l = strtol(buf, &e, 10);
    if (errno || *e || l < NJ_ZSTD_LEVEL_MIN || l > NJ_ZSTD_LEVEL_MAX || l == 0)
        return -1;
    *out = (int)l;
    return 0;
}

int nj_zstd_level_parse(const char *s, int *lo, int *hi)
{
    if (strcmp(s, "auto") == 0) {
        *lo = NJ_ZSTD_AUTO_MIN;
        *hi = NJ_ZSTD_AUTO_MAX;
        return 0;
    }
    const char *dots = strstr(s, "..");
    int a = 0, b = 0;
    if (dots ? parse_level(s, dots, &a) < 0 ||
                   parse_level(dots + 2, dots + 2 + strlen(dots + 2), &b) < 0 ||
                   a > b
             : parse_level(s, s + strlen(s), &a) < 0)
        return nj_error("'%s' is not a zstd level: auto, a level N or a "
                        "range LO..HI, levels from %d to %d except 0", s,
                        NJ_ZSTD_LEVEL_MIN, NJ_ZSTD_LEVEL_MAX);
    *lo = a;
    *hi = dots ? b : a;
    return 0;
}

int nj_nbd_export_size(const struct nj_nbd_source *src, uint64_t *size)
{
    struct nbd_handle *h = nbd_open(src, "export");
    if (!h)
        return -1;
    int64_t s = nbd_get_size(h);
    if (s < 0)
        nj_error("export size: %s", nbd_get_error());
    else
        *size = (uint64_t)s;
    nbd_shutdown(h, 0);
    nbd_close(h);
    return s < 0 ? -1 : 0;
}

/* ---- planning ---- */

static int extent_cb(void *user_data, const char *metacontext,
                     uint64_t offset, uint32_t *entries, size_t nr_entries,
                     int *error)
{
    struct dp *dp = user_data;
    if (strcmp(metacontext, ALLOC_CONTEXT) == 0)
        nj_plan_add_extents(dp->plan, NJ_CTX_ALLOC, offset, entries,
                            nr_entries / 2);
    else if (dp->bitmap && strcmp(metacontext, dp->bitmap) == 0)
        nj_plan_add_extents(dp->plan, NJ_CTX_DIRTY, offset, entries,
                            nr_entries / 2);
    return 0;
}

static int fetch(void *opaque, struct nj_plan *p, uint64_t off, uint64_t len)
{
    struct dp *dp = opaque;
    if (!dp->have_alloc) {
        /* No base:allocation on this server: everything is data. */
        uint32_t e[2] = { (uint32_t)NJ_MIN(len, (uint64_t)1 << 31), 0 };
        nj_plan_add_extents(p, NJ_CTX_ALLOC, off, e, 1);
        if (!dp->bitmap)
            return 0;
    }
    nbd_extent_callback cb = { .callback = extent_cb, .user_data = dp };
    if (nbd_block_status(dp->plan_h, len, off, cb, 0) < 0)
        return nj_error("disk '%s': block status at offset %llu: %s",
                        dp->target, (unsigned long long)off,
                        nbd_get_error());
    return 0;
}

/*
 * Next item: a zero range, or a data range inside one grid cell.  Caller
 * holds plan_lock.  1 with the item set, 0 at the end, -1 on error.
 */
static int plan_item(struct dp *dp, struct nbd_handle *h, uint64_t *off,
                     uint64_t *len, bool *zero)
{
    while (!dp->have_cur) {
        dp->plan_h = h;
        int r = nj_plan_next_aligned(dp->plan, dp->block, &dp->cur);
        if (r <= 0)
            return r;
        if (dp->cur.kind == NJ_PLAN_SKIP) {
            dp->skipped += dp->cur.length;
            continue;
        }
        if (dp->cur.kind == NJ_PLAN_ZERO)
            dp->planned_zero += dp->cur.length;
        else
            dp->planned_data += dp->cur.length;
        dp->have_cur = true;
    }
    *off = dp->cur.offset;
    *zero = dp->cur.kind == NJ_PLAN_ZERO;
    if (*zero) {
        *len = NJ_MIN(dp->cur.length, ZERO_ITEM_MAX);
    } else {
        uint64_t cell_end = (*off / dp->grid + 1) * dp->grid;
        *len = NJ_MIN(dp->cur.length, cell_end - *off);
    }
    dp->cur.offset += *len;
    dp->cur.length -= *len;
    if (dp->cur.length == 0)
        dp->have_cur = false;
    return 1;
}

/* ---- readers ---- */

static int read_done(void *user_data, int *error)
{
    struct slot *s = user_data;
    struct dp *dp = s->dp;
    if (*error) {
        char msg[512];
        snprintf(msg, sizeof msg, "read '%s' at offset %llu (%llu bytes): %s",
                 dp->target, (unsigned long long)s->off,
                 (unsigned long long)s->len, strerror(*error));
        dp_fail(dp, msg);
        return 1;
    }
    pthread_mutex_lock(&dp->lock);
    s->state = S_QUEUED;
    dp->workq[(dp->wq_head + dp->wq_count) % dp->nslots] = (size_t)(s - dp->slots);
    dp->wq_count++;
    pthread_cond_signal(&dp->cond_work);
    pthread_mutex_unlock(&dp->lock);
    return 1;
}

/* 1: claimed *out, a data item to read; 3: a zero item, already handed to
 * the committer (*out untouched: the committer may free and another reader
 * reclaim that slot at once, so the caller must not look at it again);
 * 0: the needed slot is busy; 2: planning is over; -1: error (last error
 * set). */
static int claim(struct conn *c, struct slot **out)
{
    struct dp *dp = c->dp;
    pthread_mutex_lock(&dp->plan_lock);
    if (dp->plan_done) {
        pthread_mutex_unlock(&dp->plan_lock);
        return 2;
    }
    struct slot *s = &dp->slots[dp->next_seq % dp->nslots];
    pthread_mutex_lock(&dp->lock);
    bool free_slot = s->state == S_FREE;
    pthread_mutex_unlock(&dp->lock);
    if (!free_slot) {
        pthread_mutex_unlock(&dp->plan_lock);
        return 0;
    }
    uint64_t off = 0, len = 0;
    bool zero = false;
    int r = plan_item(dp, c->h, &off, &len, &zero);
    if (r <= 0) {
        if (r == 0) {
            dp->plan_done = true;
            pthread_mutex_lock(&dp->lock);
            dp->plan_finished = true;
            dp->total_items = dp->next_seq;
            pthread_cond_broadcast(&dp->cond_done);
            pthread_mutex_unlock(&dp->lock);
        }
        pthread_mutex_unlock(&dp->plan_lock);
        return r == 0 ? 2 : -1;
    }
    s->seq = dp->next_seq++;
    s->off = off;
    s->len = len;
    s->zero = zero;
    s->conn = c;
    s->out.len = 0;
    s->zero_bytes = 0;
    pthread_mutex_lock(&dp->lock);
    if (zero) {
        s->state = S_DONE;
        pthread_cond_broadcast(&dp->cond_done);
    } else {
        s->state = S_READING;
    }
    pthread_mutex_unlock(&dp->lock);
    pthread_mutex_unlock(&dp->plan_lock);
    if (zero)
        return 3;
    *out = s;
    return 1;
}

static void *reader(void *arg)
{
    struct conn *c = arg;
    struct dp *dp = c->dp;
    bool planning_over = false;
    while (!dp_failed(dp)) {
        /* libnbd's own count of this handle's commands not yet retired
         * (read_done retires each one by returning 1): no second count to
         * keep in step with it. */
        int in_flight = nbd_aio_in_flight(c->h);
        if (in_flight < 0) {
            char msg[512];
            snprintf(msg, sizeof msg, "read '%s': %s", dp->target,
                     nbd_get_error());
            dp_fail(dp, msg);
            break;
        }
        if (!planning_over && (unsigned)in_flight < dp->requests) {
            struct slot *s = NULL;
            int r = claim(c, &s);
            if (r < 0) {
                dp_fail(dp, nj_error_get());
                break;
            }
            if (r == 2)
                planning_over = true;
            if (r == 3)
                continue;
            if (r == 1) {
                if (!s->buf)
                    s->buf = nj_malloc(dp->grid);
                nbd_completion_callback cb = { .callback = read_done,
                                               .user_data = s };
                if (nbd_aio_pread(c->h, s->buf, (size_t)s->len, s->off, cb,
                                  0) < 0) {
                    char msg[512];
                    snprintf(msg, sizeof msg, "read '%s' at offset %llu: %s",
                             dp->target, (unsigned long long)s->off,
                             nbd_get_error());
                    dp_fail(dp, msg);
                    break;
                }
                continue;
            }
        }
        if (in_flight > 0) {
            if (nbd_poll(c->h, 1000) < 0) {
                char msg[512];
                snprintf(msg, sizeof msg, "read '%s': %s", dp->target,
                         nbd_get_error());
                dp_fail(dp, msg);
                break;
            }
            continue;
        }
        if (planning_over)
            break;
        /* Nothing in flight and the next slot is busy: wait for the
         * committer to free one (timed, the slot may be freed between
         * our check and the wait). */
        pthread_mutex_lock(&dp->lock);
        if (!dp->failed) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 20 * 1000 * 1000;
            if (ts.tv_nsec >= 1000000000) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000;
            }
            pthread_cond_timedwait(&dp->cond_free, &dp->lock, &ts);
        }
        pthread_mutex_unlock(&dp->lock);
    }
    return NULL;
}

/* ---- workers ---- */

int nj_zstd_adapt(int level, int lo, int hi, unsigned window,
                  unsigned behind, unsigned waited, double idle_cores)
{
    int l = level;
    if (behind * 4 >= window * 3)
        l--;
    else if (waited * 4 >= window && idle_cores >= 0.5)
        l++;
    else if (waited * 4 >= window && idle_cores >= 0 && idle_cores < 0.25)
        l--;
    if (l == 0) /* zstd's "default", not a level of its own */
        l = l < level ? -1 : 1;
    return NJ_MAX(lo, NJ_MIN(hi, l));
}

/* The machine's idle and total CPU time so far (/proc/stat, in ticks);
 * false when it cannot be read. */
static bool cpu_times(uint64_t *idle, uint64_t *total)
{
    char buf[256];
    int fd = open("/proc/stat", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 4 || strncmp(buf, "cpu ", 4) != 0)
        return false;
    buf[n] = '\0';
    /* user nice system idle iowait irq softirq steal */
    unsigned long long v[8] = { 0 };
    if (sscanf(buf + 4, "%llu %llu %llu %llu %llu %llu %llu %llu", &v[0],
               &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7]) < 4)
        return false;
    *idle = v[3] + v[4];
    *total = 0;
    for (int i = 0; i < 8; i++)
        *total += v[i];
    return true;
}

/*
 * One vote per item a worker takes (caller holds lock).  waited: the
 * worker found nothing to do and slept.  behind: after this item, work is
 * still queued, so the workers are the bottleneck.  A window holds 2
 * votes per worker (at least 8); at its end:
 *
 *   3/4 behind                          one level down
 *   1/4 waited, the machine has idle    one level up: the reads are the
 *     CPU (half a core or more)         bottleneck and compressing harder
 *                                       costs no time
 *   1/4 waited, the machine has no      one level down: the reads wait for
 *     idle CPU (under a quarter core)   CPU that compression takes (the
 *                                       NBD server shares the cores)
 *
 * and the window starts again, so each step rests on evidence gathered at
 * the level it leaves.  Waiting for reads alone cannot tell a slow disk
 * from a server starved of CPU by our own workers, hence the idle CPU.
 */
static void adapt_vote(struct dp *dp, bool waited)
{
    if (dp->level_lo == dp->level_hi)
        return;
    unsigned window = NJ_MAX(2 * dp->nworkers, 8u);
    dp->votes++;
    if (waited)
        dp->starved++;
    else if (dp->wq_count > 0)
        dp->behind++;
    if (dp->votes < window)
        return;
    uint64_t idle = 0, total = 0;
    double idle_cores = -1;
    if (cpu_times(&idle, &total)) {
        if (dp->cpu_total && total > dp->cpu_total)
            idle_cores = (double)(idle - dp->cpu_idle) /
                         (double)(total - dp->cpu_total) * nj_ncpus();
        dp->cpu_idle = idle;
        dp->cpu_total = total;
    }
    dp->level = nj_zstd_adapt(dp->level, dp->level_lo, dp->level_hi, window,
                              dp->behind, dp->starved, idle_cores);
    dp->votes = dp->behind = dp->starved = 0;
}

static int emit(struct dp *dp, struct slot *s, struct nj_codec *codec,
                uint64_t from, uint64_t to, bool zero)
{
    struct nj_extent e = { .offset = s->off + from, .length = to - from };
    if (zero) {
        e.kind = NJ_EXTENT_ZERO;
        s->zero_bytes += e.length;
    } else {
        e.kind = NJ_EXTENT_DATA;
        e.chunk_len = (uint32_t)e.length;
        if (nj_backup_put_chunk(dp->b, dp->disk, codec, s->buf + from,
                                (size_t)e.length, &e.digest) < 0)
            return -1;
    }
    extent_vec_append(&s->out, e);
    return 0;
}

/* Split the read at zero blocks; store each non-zero run as a chunk. */
static int process(struct dp *dp, struct slot *s, struct nj_codec *codec)
{
    uint64_t pos = 0, run = 0;
    bool run_zero = false;
    while (pos < s->len) {
        uint64_t abs = s->off + pos;
        uint64_t blk_end = NJ_MIN(s->len, (abs / dp->block + 1) * dp->block -
                                              s->off);
        bool zero = nj_is_zero(s->buf + pos, (size_t)(blk_end - pos));
        if (pos > run && zero != run_zero) {
            if (emit(dp, s, codec, run, pos, run_zero) < 0)
                return -1;
            run = pos;
        }
        run_zero = zero;
        pos = blk_end;
    }
    if (pos > run && emit(dp, s, codec, run, pos, run_zero) < 0)
        return -1;
    nj_backup_disk_count(dp->disk, s->len, s->zero_bytes);
    return 0;
}

static void *worker(void *arg)
{
    struct dp *dp = arg;
    pthread_mutex_lock(&dp->lock);
    int level = dp->level;
    pthread_mutex_unlock(&dp->lock);
    struct nj_codec *codec = nj_codec_new(level);
    if (!codec) {
        dp_fail(dp, nj_error_get());
        return NULL;
    }
    for (;;) {
        pthread_mutex_lock(&dp->lock);
        bool waited = false;
        while (dp->wq_count == 0 && !dp->stop_workers && !dp->failed) {
            waited = true;
            pthread_cond_wait(&dp->cond_work, &dp->lock);
        }
        if (dp->failed || dp->wq_count == 0) {
            pthread_mutex_unlock(&dp->lock);
            break;
        }
        struct slot *s = &dp->slots[dp->workq[dp->wq_head]];
        dp->wq_head = (dp->wq_head + 1) % dp->nslots;
        dp->wq_count--;
        adapt_vote(dp, waited);
        level = dp->level;
        pthread_mutex_unlock(&dp->lock);
        nj_codec_set_level(codec, level);
        if (process(dp, s, codec) < 0) {
            dp_fail(dp, nj_error_get());
            break;
        }
        pthread_mutex_lock(&dp->lock);
        s->state = S_DONE;
        pthread_cond_broadcast(&dp->cond_done);
        pthread_mutex_unlock(&dp->lock);
    }
    nj_codec_free(codec);
    return NULL;
}

/* ---- committer and set-up ---- */

static void show_progress(struct dp *dp, uint64_t pos, double start,
                          bool final)
{
    double el = nj_mono_sec() - start;
    const struct nj_disk_stats *st = nj_backup_disk_stats(dp->disk);
    double rate = el > 0 ? (double)st->bytes_read / el : 0;
    char a[32], b[32], r[32];
    double frac = dp->size ? (double)pos / (double)dp->size : 1;
    double eta = frac > 0.01 ? el / frac - el : 0;
    fprintf(stderr, "\rbackup '%s': %s of %s (%3.0f%%), read %s/s, ETA %02d:%02d%s",
            dp->target, nj_human_bytes(pos, a, sizeof a),
            nj_human_bytes(dp->size, b, sizeof b), frac * 100,
            nj_human_bytes((uint64_t)rate, r, sizeof r),
            (int)(eta / 60), (int)eta % 60, final ? "\n" : "  ");
}

static int commit_loop(struct dp *dp, bool progress, volatile int *cancel)
{
    uint64_t seq = 0;
    double start = nj_mono_sec(), last = start;
    for (;;) {
        pthread_mutex_lock(&dp->lock);
        struct slot *s = NULL;
        for (;;) {
            if (dp->failed)
                break;
            struct slot *c = &dp->slots[seq % dp->nslots];
            if (c->state == S_DONE && c->seq == seq) {
                s = c;
                break;
            }
            if (dp->plan_finished && seq == dp->total_items)
                break;
            if (cancel && *cancel) {
                dp->failed = true;
                snprintf(dp->error, sizeof dp->error,
                         "backup of '%s' interrupted", dp->target);
                pthread_cond_broadcast(&dp->cond_free);
                pthread_cond_broadcast(&dp->cond_work);
                break;
            }
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 200 * 1000 * 1000;
            if (ts.tv_nsec >= 1000000000) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000;
            }
            pthread_cond_timedwait(&dp->cond_done, &dp->lock, &ts);
        }
        bool failed = dp->failed;
        pthread_mutex_unlock(&dp->lock);
        if (failed)
            return nj_error("%s", dp->error);
        if (!s)
            break;
        if (s->zero) {
            struct nj_extent e = { .offset = s->off, .length = s->len,
                                   .kind = NJ_EXTENT_ZERO };
            if (nj_backup_disk_append(dp->disk, &e) < 0)
                return -1;
            nj_backup_disk_count(dp->disk, 0, s->len);
        } else {
            for (size_t i = 0; i < s->out.len; i++)
                if (nj_backup_disk_append(dp->disk, &s->out.ptr[i]) < 0)
                    return -1;
        }
        uint64_t pos = s->off + s->len;
        pthread_mutex_lock(&dp->lock);
        s->state = S_FREE;
        pthread_cond_broadcast(&dp->cond_free);
        pthread_mutex_unlock(&dp->lock);
        seq++;
        if (progress && nj_mono_sec() - last > 0.5) {
            last = nj_mono_sec();
            show_progress(dp, pos, start, false);
        }
    }
    if (progress)
        show_progress(dp, dp->size, start, true);
    return 0;
}

/* The ring's size: max_inflight bytes of grid-sized buffers, at least 2. */
static size_t slot_count(const struct nj_datapath_opts *o, uint64_t grid)
{
    uint64_t inflight = o->max_inflight ? o->max_inflight : NJ_INFLIGHT_DEFAULT;
    return (size_t)NJ_MAX(inflight / grid, (uint64_t)2);
}

/* Connect, check the export and prepare the slots. */
static int dp_setup(struct dp *dp, const struct nj_nbd_source *src,
                    const struct nj_datapath_opts *o, const char *target,
                    const char *format)
{
    struct nj_backup *b = dp->b;
    if ((dp->grid & (dp->grid - 1)) || dp->grid < 4096 ||
        dp->grid > NJ_CHUNK_MAX || (dp->block & (dp->block - 1)) ||
        dp->block < 512 || dp->block > dp->grid) {
        return nj_error("grid (%llu) and block (%llu) must be powers of two "
                        "with 512 <= block <= grid <= %u",
                        (unsigned long long)dp->grid,
                        (unsigned long long)dp->block, NJ_CHUNK_MAX);
    }
    struct nbd_handle *h0 = nbd_open(src, target);
    if (!h0)
        return -1;
    dp->conns[0] = (struct conn){ .dp = dp, .h = h0 };
    dp->nconns = 1;
    int64_t size = nbd_get_size(h0);
    if (size <= 0) {
        nj_error("disk '%s': export has no size: %s", target,
                 size < 0 ? nbd_get_error() : "empty");
        return -1;
    }
    dp->size = (uint64_t)size;
    dp->have_alloc = nbd_can_meta_context(h0, ALLOC_CONTEXT) == 1;
    if (src->bitmap_context &&
        nbd_can_meta_context(h0, src->bitmap_context) != 1) {
        nj_error("disk '%s': the export has no dirty bitmap context '%s'",
                 target, src->bitmap_context);
        return -1;
    }
    unsigned want = o->connections ? o->connections : 4;
    if (want > 1 && nbd_can_multi_conn(h0) == 1) {
        for (unsigned i = 1; i < NJ_MIN(want, (unsigned)MAX_CONNECTIONS); i++) {
            struct nbd_handle *h = nbd_open(src, target);
            if (!h)
                return -1;
            dp->conns[dp->nconns++] = (struct conn){ .dp = dp, .h = h };
        }
    }
    dp->disk = nj_backup_disk_add(b, target, format, dp->size,
                                  src->bitmap_context == NULL);
    if (!dp->disk)
        return -1;
    nj_backup_disk_set_compression(dp->disk, dp->level_lo != dp->level_hi,
                                   dp->level_lo, dp->level_hi);
    dp->plan = nj_plan_new(dp->size, src->bitmap_context != NULL, fetch, dp);
    dp->nslots = slot_count(o, dp->grid);
    dp->slots = nj_calloc(dp->nslots, sizeof *dp->slots);
    dp->workq = nj_calloc(dp->nslots, sizeof *dp->workq);
    for (size_t i = 0; i < dp->nslots; i++)
        dp->slots[i].dp = dp;

    return 0;
}

int nj_datapath_backup_disk(struct nj_backup *b, const char *target,
                            const char *format,
                            const struct nj_nbd_source *src,
                            const struct nj_datapath_opts *o,
                            struct nj_datapath_result *res)
{
    struct nj_datapath_opts def = { 0 };
    if (!o)
        o = &def;
    double t0 = nj_mono_sec();
    struct dp *dp = nj_calloc(1, sizeof *dp);
    dp->b = b;
    dp->target = target;
    dp->bitmap = src->bitmap_context;
    dp->grid = o->grid ? o->grid : NJ_GRID_DEFAULT;
    dp->block = o->block ? o->block : NJ_BLOCK_DEFAULT;
    dp->requests = o->requests ? o->requests : 4;
    if (o->zstd_min || o->zstd_max) {
        dp->level_lo = NJ_MIN(o->zstd_min, o->zstd_max);
        dp->level_hi = NJ_MAX(o->zstd_min, o->zstd_max);
    } else {
        dp->level_lo = NJ_ZSTD_AUTO_MIN;
        dp->level_hi = NJ_ZSTD_AUTO_MAX;
    }
    /* Start at the default level, or the range's nearest end. */
    dp->level = NJ_MAX(dp->level_lo, NJ_MIN(dp->level_hi, NJ_ZSTD_LEVEL_DEFAULT));
    if (!cpu_times(&dp->cpu_idle, &dp->cpu_total))
        dp->cpu_total = 0;
    pthread_mutex_init(&dp->plan_lock, NULL);
    pthread_mutex_init(&dp->lock, NULL);
    pthread_cond_init(&dp->cond_free, NULL);
    pthread_cond_init(&dp->cond_work, NULL);
    pthread_cond_init(&dp->cond_done, NULL);
    /* One more worker than cores (a worker blocked writing a chunk file
     * would otherwise leave its core idle), but no more than there are
     * slots: more could never have an item, and each costs a frame buffer
     * and a zstd context, so the memory stays bounded however many cores
     * the host has. */
    unsigned max_workers = (unsigned)NJ_MIN(slot_count(o, dp->grid), (size_t)256);
    unsigned nworkers = o->threads ? o->threads
                                   : NJ_MIN(nj_ncpus() + 1, max_workers);
    dp->nworkers = nworkers;
    pthread_t *workers = nj_calloc(nworkers, sizeof *workers);
    unsigned started_workers = 0;
    int ret = -1;

    if (dp_setup(dp, src, o, target, format) < 0)
        goto out;
    for (; started_workers < nworkers; started_workers++)
        if (pthread_create(&workers[started_workers], NULL, worker, dp) != 0) {
            dp_fail(dp, "cannot start worker threads");
            break;
        }
    for (unsigned i = 0; i < dp->nconns; i++) {
        if (pthread_create(&dp->conns[i].tid, NULL, reader, &dp->conns[i]) != 0) {
            dp_fail(dp, "cannot start reader threads");
            break;
        }
        dp->conns[i].started = true;
    }
    ret = commit_loop(dp, o->progress, o->cancel);
    if (ret < 0)
        dp_fail(dp, nj_error_get());

out:
    pthread_mutex_lock(&dp->lock);
    dp->stop_workers = true;
    pthread_cond_broadcast(&dp->cond_work);
    pthread_mutex_unlock(&dp->lock);
    for (unsigned i = 0; i < dp->nconns; i++)
        if (dp->conns[i].started)
            pthread_join(dp->conns[i].tid, NULL);
    for (unsigned i = 0; i < started_workers; i++)
        pthread_join(workers[i], NULL);
    if (ret < 0 && dp->failed)
        nj_error("%s", dp->error);
    for (unsigned i = 0; i < dp->nconns; i++) {
        if (ret == 0)
            nbd_shutdown(dp->conns[i].h, 0);
        nbd_close(dp->conns[i].h);
    }
    if (ret == 0)
        nj_backup_disk_set_usec(dp->disk, (uint64_t)((nj_mono_sec() - t0) * 1e6));
    if (res) {
        res->size = dp->size;
        res->planned_data = dp->planned_data;
        res->planned_zero = dp->planned_zero;
        res->skipped = dp->skipped;
        res->seconds = nj_mono_sec() - t0;
    }
    for (size_t i = 0; i < dp->nslots; i++) {
        free(dp->slots[i].buf);
        extent_vec_reset(&dp->slots[i].out);
    }
    free(dp->slots);
    free(dp->workq);
    free(workers);
    nj_plan_free(dp->plan);
    pthread_mutex_destroy(&dp->plan_lock);
    pthread_mutex_destroy(&dp->lock);
    pthread_cond_destroy(&dp->cond_free);
    pthread_cond_destroy(&dp->cond_work);
    pthread_cond_destroy(&dp->cond_done);
    free(dp);
    return ret;
}
