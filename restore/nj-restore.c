/*
 * nj-restore.c: the restore pipeline.
 *
 * The main thread walks the merged view and batches consecutive segments
 * that come from the same chunk into one job.  Worker threads (one per
 * core by default) each own a zstd context and buffers: they read the
 * chunk frame, check its CRC, decompress it into a write buffer of the
 * output, check its SHA-256 against the address, and only then write the
 * job's ranges from that buffer (handed to the output, not copied).  A
 * damaged chunk stops the pipeline with an error naming the chunk and the
 * disk range; nothing from it is written.  The job queue is bounded and
 * the output bounds its write buffers, so memory is a few chunk buffers
 * per worker regardless of the disk size.
 */
#include "nj-restore.h"
#include "nj-util.h"

#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define JOB_PIECES 64
#define QUEUE_PER_WORKER 2
#define SPARSE_BLOCK 4096

struct piece {
    uint64_t disk_off, len, chunk_off;
};

struct job {
    struct nj_digest digest;
    uint32_t chunk_len;
    size_t npieces;
    struct piece pieces[JOB_PIECES];
};

struct pipeline {
    struct nj_store *store;
    struct nj_output *out;
    const char *target;
    pthread_mutex_t lock;
    pthread_cond_t can_put, can_get;
    struct job *ring;
    size_t cap, head, count;
    bool closed;
    bool failed;
    char error[1024];
    uint64_t bytes_data, chunks_read;
};

static void pipe_fail(struct pipeline *p, const char *msg)
{
    pthread_mutex_lock(&p->lock);
    if (!p->failed) {
        p->failed = true;
        snprintf(p->error, sizeof p->error, "%s", msg);
    }
    pthread_cond_broadcast(&p->can_put);
    pthread_cond_broadcast(&p->can_get);
    pthread_mutex_unlock(&p->lock);
}

/*
 * Write len bytes at off.  An output that starts out zero (a new file or
 * qcow2 image) gets no writes for the aligned blocks of zeroes inside a
 * chunk, so they stay holes; an output with old content gets every byte.
 */
static int write_piece(struct nj_output *out, struct nj_output_buf *b,
                       size_t boff, uint64_t len, uint64_t off)
{
    if (out->needs_zero)
        return nj_output_write_buf(out, b, boff, (size_t)len, off);
    const char *buf = (const char *)b->data + boff;
    uint64_t pos = 0, run = 0; /* [run, pos) is data not yet written */
    while (pos < len) {
        uint64_t blk_end = NJ_MIN(len, (off + pos) / SPARSE_BLOCK *
                                           SPARSE_BLOCK + SPARSE_BLOCK - off);
        bool zero = nj_is_zero(buf + pos, (size_t)(blk_end - pos));
        if (zero && pos > run &&
            nj_output_write_buf(out, b, boff + run, (size_t)(pos - run),
                                off + run) < 0)
            return -1;
        pos = blk_end;
        if (zero)
            run = pos;
    }
    if (pos > run &&
        nj_output_write_buf(out, b, boff + run, (size_t)(pos - run),
                            off + run) < 0)
        return -1;
    return 0;
}

static int job_run(struct pipeline *p, const struct job *j,
                   struct nj_codec *codec, void **frame, size_t *frame_cap)
{
    ssize_t flen = nj_store_chunk_get(p->store, &j->digest, frame, frame_cap);
    ssize_t n = -1;
    struct nj_output_buf *raw = NULL;
    if (flen >= 0) {
        /* Fails only when the output has: its error, not the chunk's. */
        raw = nj_output_buf_get(p->out, j->chunk_len);
        if (!raw)
            return -1;
        n = nj_chunk_decode(codec, *frame, (size_t)flen, &j->digest,
                            raw->data, j->chunk_len);
        if (n >= 0 && (uint64_t)n != j->chunk_len) {
            nj_error("chunk is %zd bytes, the index says %u", n,
                     j->chunk_len);
            n = -1;
        }
    }
    if (n < 0) {
        nj_output_buf_put(p->out, raw);
        char hex[NJ_DIGEST_HEX_LEN + 1];
        nj_digest_to_hex(&j->digest, hex);
        const struct piece *first = &j->pieces[0];
        const struct piece *last = &j->pieces[j->npieces - 1];
        uint64_t end = last->disk_off + last->len;
        return nj_error_prefix("disk '%s' range %llu-%llu (%llu bytes): "
                               "chunk %s", p->target,
                               (unsigned long long)first->disk_off,
                               (unsigned long long)end,
                               (unsigned long long)(end - first->disk_off),
                               hex);
    }
    int ret = 0;
    for (size_t i = 0; ret == 0 && i < j->npieces; i++) {
        const struct piece *pc = &j->pieces[i];
        ret = write_piece(p->out, raw, (size_t)pc->chunk_off, pc->len,
                          pc->disk_off);
        if (ret == 0)
            __atomic_fetch_add(&p->bytes_data, pc->len, __ATOMIC_RELAXED);
    }
    nj_output_buf_put(p->out, raw);
    if (ret < 0)
        return -1;
    __atomic_fetch_add(&p->chunks_read, 1, __ATOMIC_RELAXED);
    return 0;
}

static void *worker(void *arg)
{
    struct pipeline *p = arg;
    struct nj_codec *codec = nj_codec_new(1);
    void *frame = NULL;
    size_t frame_cap = 0;
    struct job j;
    if (!codec) {
        pipe_fail(p, nj_error_get());
        return NULL;
    }
    for (;;) {
        pthread_mutex_lock(&p->lock);
        while (p->count == 0 && !p->closed && !p->failed)
            pthread_cond_wait(&p->can_get, &p->lock);
        if (p->failed || (p->count == 0 && p->closed)) {
            pthread_mutex_unlock(&p->lock);
            break;
        }
        j = p->ring[p->head];
        p->head = (p->head + 1) % p->cap;
        p->count--;
        pthread_cond_signal(&p->can_put);
        pthread_mutex_unlock(&p->lock);
        if (job_run(p, &j, codec, &frame, &frame_cap) < 0) {
            pipe_fail(p, nj_error_get());
            break;
        }
    }
    nj_codec_free(codec);
    free(frame);
    return NULL;
}

static int pipe_put(struct pipeline *p, const struct job *j)
{
    pthread_mutex_lock(&p->lock);
    while (p->count == p->cap && !p->failed)
        pthread_cond_wait(&p->can_put, &p->lock);
    if (p->failed) {
        pthread_mutex_unlock(&p->lock);
        return -1;
    }
    p->ring[(p->head + p->count) % p->cap] = *j;
    p->count++;
    pthread_cond_signal(&p->can_get);
    pthread_mutex_unlock(&p->lock);
    return 0;
}

/*
 * Batching segments into jobs.  A chunk of a full is often interleaved
 * with newer data (an incremental's 64 KiB blocks inside a 4 MiB cell), so
 * its pieces do not come one after the other; decoding the chunk once per
 * piece would hash and decompress it many times over.  A few jobs stay
 * open at once, each collecting the pieces of one chunk; a job goes to the
 * workers when it is full, when it is the oldest and a slot is needed, or
 * when the sweep has moved WINDOW bytes past its last piece.  Pieces of
 * one job may thus be written in any order: each byte is still written
 * exactly once.
 */
#define OPEN_JOBS 16
#define WINDOW (16ull << 20)

struct batcher {
    struct pipeline *p;
    struct job open[OPEN_JOBS];
    uint64_t last_end[OPEN_JOBS];
    bool failed;
};

static int batch_flush(struct batcher *b, size_t i)
{
    if (b->open[i].npieces == 0)
        return 0;
    int r = pipe_put(b->p, &b->open[i]);
    b->open[i].npieces = 0;
    if (r < 0)
        b->failed = true;
    return r;
}

static int batch_flush_all(struct batcher *b)
{
    int ret = 0;
    for (size_t i = 0; i < OPEN_JOBS; i++)
        if (batch_flush(b, i) < 0)
            ret = -1;
    return ret;
}

static int batch_add(struct batcher *b, const struct nj_extent *e)
{
    size_t slot = OPEN_JOBS, oldest = 0;
    for (size_t i = 0; i < OPEN_JOBS; i++) {
        struct job *j = &b->open[i];
        if (j->npieces && b->last_end[i] + WINDOW < e->offset &&
            batch_flush(b, i) < 0)
            return -1;
        if (j->npieces && j->npieces < JOB_PIECES &&
            nj_digest_eq(&j->digest, &e->digest) &&
            j->chunk_len == e->chunk_len)
            slot = i;
        if (b->open[oldest].npieces &&
            (!j->npieces || b->last_end[i] < b->last_end[oldest]))
            oldest = i;
    }
    if (slot == OPEN_JOBS) {
        /* A new job: a free slot, or the oldest one's. */
        slot = oldest;
        if (batch_flush(b, slot) < 0)
            return -1;
        b->open[slot].digest = e->digest;
        b->open[slot].chunk_len = e->chunk_len;
    }
    struct job *j = &b->open[slot];
    j->pieces[j->npieces++] = (struct piece){ e->offset, e->length,
                                              e->chunk_offset };
    b->last_end[slot] = e->offset + e->length;
    if (j->npieces == JOB_PIECES)
        return batch_flush(b, slot);
    return 0;
}

static void progress(const char *target, uint64_t done, uint64_t total,
                     double start, bool final)
{
    double el = nj_mono_sec() - start;
    double rate = el > 0 ? (double)done / el : 0;
    char a[32], b[32], r[32];
    fprintf(stderr, "\rrestore '%s': %s of %s, %s/s%s", target,
            nj_human_bytes(done, a, sizeof a),
            nj_human_bytes(total, b, sizeof b),
            nj_human_bytes((uint64_t)rate, r, sizeof r), final ? "\n" : "  ");
}

int nj_restore_disk(struct nj_store *s, const struct nj_catalog *c,
                    const struct nj_manifest *m, const char *target,
                    struct nj_output *out, const struct nj_restore_opts *opts,
                    struct nj_restore_stats *stats)
{
    if (!nj_manifest_disk(m, target))
        return nj_error("backup '%s' has no disk '%s'", m->id, target);
    struct nj_view *v = nj_view_open(s, c, m, target);
    if (!v)
        return -1;
    unsigned nthreads = opts && opts->threads ? opts->threads : nj_ncpus();
    struct pipeline p = { .store = s, .out = out, .target = target };
    pthread_mutex_init(&p.lock, NULL);
    pthread_cond_init(&p.can_put, NULL);
    pthread_cond_init(&p.can_get, NULL);
    p.cap = (size_t)nthreads * QUEUE_PER_WORKER;
    p.ring = nj_calloc(p.cap, sizeof *p.ring);
    pthread_t *tids = nj_calloc(nthreads, sizeof *tids);
    unsigned started = 0;
    int ret = 0;
    for (; started < nthreads; started++)
        if (pthread_create(&tids[started], NULL, worker, &p) != 0) {
            ret = nj_error("cannot start restore threads");
            pipe_fail(&p, nj_error_get());
            break;
        }

    struct batcher bt = { .p = &p };
    struct nj_extent e;
    uint64_t zero_bytes = 0, done = 0;
    double start = nj_mono_sec(), last = start;
    /* The target comes from the store: escaped before it reaches a tty. */
    NJ_CLEANUP_FREE char *shown =
        opts && opts->progress ? nj_str_escape(target) : NULL;
    int r = 0;
    while (ret == 0 && (r = nj_view_next(v, &e)) == 1) {
        if (e.kind == NJ_EXTENT_ZERO) {
            zero_bytes += e.length;
            if (out->needs_zero && out->ops->zero(out, e.offset, e.length) < 0)
                ret = -1;
        } else if (batch_add(&bt, &e) < 0) {
            break;
        }
        done = e.offset + e.length;
        if (opts && opts->progress && nj_mono_sec() - last > 0.5) {
            last = nj_mono_sec();
            progress(shown, done, nj_view_size(v), start, false);
        }
    }
    if (r < 0)
        ret = -1;
    if (ret < 0)
        pipe_fail(&p, nj_error_get());
    else
        batch_flush_all(&bt);
    pthread_mutex_lock(&p.lock);
    p.closed = true;
    pthread_cond_broadcast(&p.can_get);
    pthread_mutex_unlock(&p.lock);
    for (unsigned i = 0; i < started; i++)
        pthread_join(tids[i], NULL);
    if (p.failed) {
        nj_error("%s", p.error);
        ret = -1;
    }
    if (ret == 0 && opts && opts->progress)
        progress(shown, nj_view_size(v), nj_view_size(v), start, true);
    if (stats) {
        stats->bytes_data = p.bytes_data;
        stats->bytes_zero = zero_bytes;
        stats->chunks_read = p.chunks_read;
    }
    free(tids);
    free(p.ring);
    pthread_mutex_destroy(&p.lock);
    pthread_cond_destroy(&p.can_put);
    pthread_cond_destroy(&p.can_get);
    nj_view_free(v);
    return ret;
}
