/*
 * nj-sync.c: copy committed backups between stores (nj-sync.h).
 *
 * Why a backup in dst is never half there: its chunks are put first, then
 * its indexes and manifest are staged, and nj_store_backup_publish makes
 * them visible at once (a rename on a directory, the manifest object put
 * last on S3).  Chunks dst already has are found with
 * nj_store_chunk_present, which on a directory also marks them for gc and
 * on S3 happens after the staging record exists, so gc's protocol of each
 * backend covers a sync exactly as it covers a backup.
 */
#include "nj-sync.h"
#include "nj-catalog.h"
#include "nj-chunk.h"
#include "nj-index.h"
#include "nj-io.h"
#include "nj-manifest.h"
#include "nj-prune.h"
#include "nj-util.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define SYNC_THREADS 4
#define COPY_BUF (1u << 20)

NJ_VECTOR(dvec, struct nj_digest);

struct copy_job {
    struct nj_store *src, *dst;
    const struct dvec *digests;
    size_t next;
    pthread_mutex_t lock;
    char *error; /* the first failure */
    struct nj_sync_stats *st;
};

static void job_fail(struct copy_job *j)
{
    pthread_mutex_lock(&j->lock);
    if (!j->error)
        j->error = nj_strdup(nj_error_get());
    pthread_mutex_unlock(&j->lock);
}

/* Copy one chunk unless dst has it; the frame is decoded and checked
 * against its digest first.  0 or -1. */
static int copy_chunk(struct copy_job *j, struct nj_codec *codec,
                      const struct nj_digest *d, void **frame, size_t *fcap,
                      void **raw, size_t *rcap)
{
    char hex[NJ_DIGEST_HEX_LEN + 1];
    nj_digest_to_hex(d, hex);
    int r = nj_store_chunk_present(j->dst, d);
    if (r < 0)
        return nj_error_prefix("chunk %.16s in the destination", hex);
    if (r == 1) {
        __atomic_fetch_add(&j->st->chunks_present, 1, __ATOMIC_RELAXED);
        return 0;
    }
    ssize_t flen = nj_store_chunk_get(j->src, d, frame, fcap);
    if (flen < 0)
        return nj_error_prefix("chunk %.16s in the source", hex);
    uint32_t raw_len = 0;
    if (nj_chunk_peek(*frame, (size_t)flen, &raw_len) < 0)
        return nj_error_prefix("chunk %.16s in the source is damaged", hex);
    if (*rcap < raw_len) {
        free(*raw);
        *raw = nj_malloc(raw_len);
        *rcap = raw_len;
    }
    if (nj_chunk_decode(codec, *frame, (size_t)flen, d, *raw, *rcap) < 0)
        return nj_error_prefix("chunk %.16s in the source is damaged", hex);
    r = nj_store_chunk_put(j->dst, d, *frame, (size_t)flen);
    if (r < 0)
        return nj_error_prefix("chunk %.16s", hex);
    if (r == 0) {
        __atomic_fetch_add(&j->st->chunks_copied, 1, __ATOMIC_RELAXED);
        __atomic_fetch_add(&j->st->bytes_copied, (uint64_t)flen,
                           __ATOMIC_RELAXED);
    } else {
        __atomic_fetch_add(&j->st->chunks_present, 1, __ATOMIC_RELAXED);
    }
    return 0;
}

static void *copy_worker(void *arg)
{
    struct copy_job *j = arg;
    struct nj_codec *codec = nj_codec_new(1);
    void *frame = NULL, *raw = NULL;
    size_t fcap = 0, rcap = 0;
    if (!codec) {
        nj_error("cannot create a zstd context");
        job_fail(j);
    }
    for (;;) {
        pthread_mutex_lock(&j->lock);
        bool stop = j->error != NULL;
        size_t i = j->next++;
        pthread_mutex_unlock(&j->lock);
        if (stop || !codec || i >= j->digests->len)
            break;
        if (copy_chunk(j, codec, &j->digests->ptr[i], &frame, &fcap, &raw,
                       &rcap) < 0) {
            job_fail(j);
            break;
        }
    }
    nj_codec_free(codec);
    free(frame);
    free(raw);
    return NULL;
}

static int cmp_digest(const void *a, const void *b)
{
    return memcmp(a, b, sizeof(struct nj_digest));
}

/* The distinct chunks a backup's indexes name (each index is validated
 * against the manifest on the way). */
static int backup_digests(struct nj_store *src, const struct nj_manifest *m,
                          struct dvec *out)
{
    for (size_t k = 0; k < m->ndisks; k++) {
        struct nj_index_reader *r = nj_manifest_index_open(src, m,
                                                           &m->disks[k]);
        if (!r)
            return -1;
        struct nj_extent e;
        int rc;
        while ((rc = nj_index_reader_next(r, &e)) == 1)
            if (e.kind == NJ_EXTENT_DATA &&
                (out->len == 0 ||
                 !nj_digest_eq(&out->ptr[out->len - 1], &e.digest)))
                dvec_append(out, e.digest);
        nj_index_reader_free(r);
        if (rc < 0)
            return -1;
    }
    if (out->len)
        qsort(out->ptr, out->len, sizeof *out->ptr, cmp_digest);
    size_t n = 0;
    for (size_t i = 0; i < out->len; i++)
        if (n == 0 || !nj_digest_eq(&out->ptr[n - 1], &out->ptr[i]))
            out->ptr[n++] = out->ptr[i];
    out->len = n;
    return 0;
}

static int copy_chunks(struct nj_store *src, struct nj_store *dst,
                       const struct dvec *digests, struct nj_sync_stats *st)
{
    struct copy_job j = { .src = src, .dst = dst, .digests = digests,
                          .st = st };
    pthread_mutex_init(&j.lock, NULL);
    pthread_t t[SYNC_THREADS];
    size_t started = 0;
    for (; started < SYNC_THREADS; started++)
        if (pthread_create(&t[started], NULL, copy_worker, &j) != 0)
            break;
    if (started == 0)
        copy_worker(&j);
    for (size_t i = 0; i < started; i++)
        pthread_join(t[i], NULL);
    pthread_mutex_destroy(&j.lock);
    if (j.error) {
        nj_error("%s", j.error);
        free(j.error);
        return -1;
    }
    return nj_store_sync(dst);
}

/* Copy a published file of src into dst's staging, byte for byte. */
static int copy_file(struct nj_store *src, struct nj_store *dst,
                     const char *id, const char *name)
{
    struct nj_stream *in = nj_store_backup_open(src, id, name);
    if (!in)
        return -1;
    struct nj_stream *out = nj_store_staging_open(dst, id, name);
    uint64_t size = 0;
    int ret = out ? nj_stream_size(in, &size) : -1;
    void *buf = nj_malloc(COPY_BUF);
    for (uint64_t off = 0; ret == 0 && off < size;) {
        size_t n = (size_t)NJ_MIN(size - off, (uint64_t)COPY_BUF);
        if (nj_stream_pread(in, buf, n, off) < 0)
            ret = nj_error_prefix("read '%s/%s'", id, name);
        else if (nj_stream_pwrite(out, buf, n, off) < 0)
            ret = nj_error_prefix("write '%s/%s'", id, name);
        off += n;
    }
    free(buf);
    if (ret == 0 && nj_stream_flush(out) < 0)
        ret = nj_error_prefix("'%s/%s'", id, name);
    nj_stream_close(out);
    nj_stream_close(in);
    return ret;
}

static int copy_backup(struct nj_store *src, struct nj_store *dst,
                       const struct nj_manifest *m, struct nj_sync_stats *st)
{
    struct dvec digests = { 0 };
    if (backup_digests(src, m, &digests) < 0) {
        dvec_reset(&digests);
        return -1;
    }
    NJ_CLEANUP_FREE char *key = nj_backup_lock_key(m->domain_uuid);
    int lock = nj_backup_lock_domain(dst, m->domain_uuid, m->domain_name);
    if (lock < 0) {
        dvec_reset(&digests);
        return -1;
    }
    NJ_CLEANUP_FREE char *owner = nj_backup_owner_json(key, m->domain_name);
    int ret = nj_store_staging_clean(dst, key);
    if (ret == 0)
        ret = nj_store_staging_create(dst, m->id, owner);
    bool staged = ret == 0;
    /* After the staging record: gc's protocol now covers what we find. */
    if (ret == 0)
        ret = copy_chunks(src, dst, &digests, st);
    for (size_t k = 0; ret == 0 && k < m->ndisks; k++)
        ret = copy_file(src, dst, m->id, m->disks[k].index);
    int prot = ret == 0 ? nj_prune_is_protected(src, m->id) : 0;
    if (prot < 0)
        ret = -1;
    else if (prot == 1)
        ret = nj_store_staging_put(dst, m->id, "protected", "", 0);
    size_t len = 0;
    NJ_CLEANUP_FREE char *text =
        ret == 0 ? nj_store_backup_read(src, m->id, NJ_MANIFEST_NAME,
                                        NJ_MANIFEST_MAX, &len)
                 : NULL;
    if (ret == 0 && !text)
        ret = -1;
    if (ret == 0)
        ret = nj_store_staging_put(dst, m->id, NJ_MANIFEST_NAME, text, len);
    if (ret == 0 && nj_store_backup_publish(dst, m->id) < 0)
        ret = -1;
    if (ret < 0 && staged)
        nj_store_staging_remove(dst, m->id);
    nj_store_unlock_domain(lock);
    dvec_reset(&digests);
    return ret;
}

static bool selected(const struct nj_manifest *m, const char *const *domains)
{
    if (!domains)
        return true;
    for (const char *const *d = domains; *d; d++)
        if (!strcmp(*d, m->domain_name) || !strcmp(*d, m->domain_uuid))
            return true;
    return false;
}

static int cmp_age(const void *a, const void *b)
{
    const struct nj_manifest *x = *(const struct nj_manifest *const *)a;
    const struct nj_manifest *y = *(const struct nj_manifest *const *)b;
    if (x->finished_us != y->finished_us)
        return x->finished_us < y->finished_us ? -1 : 1;
    return strcmp(x->id, y->id);
}

static void say(void (*report)(void *, const char *), void *arg,
                const char *fmt, ...) NJ_PRINTF(3, 4);
static void say(void (*report)(void *, const char *), void *arg,
                const char *fmt, ...)
{
    if (!report)
        return;
    va_list ap;
    va_start(ap, fmt);
    char line[1024];
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    report(arg, line);
}

int nj_sync(struct nj_store *src, struct nj_store *dst,
            const char *const *domains, struct nj_sync_stats *st,
            void (*report)(void *arg, const char *line), void *arg)
{
    memset(st, 0, sizeof *st);
    double t0 = nj_mono_sec();
    struct nj_catalog *sc = nj_catalog_open(src);
    if (!sc)
        return nj_error_prefix("source");
    struct nj_catalog *dc = nj_catalog_open(dst);
    if (!dc) {
        nj_catalog_free(sc);
        return nj_error_prefix("destination");
    }
    NJ_CLEANUP_FREE char *first = NULL;
    if (nj_catalog_broken_count(sc) > 0) {
        first = nj_asprintf("source backup '%s' is unreadable (%s); not "
                            "copied", nj_catalog_broken_id(sc, 0),
                            nj_catalog_broken_error(sc, 0));
        say(report, arg, "%s", first);
        st->backups_failed += (unsigned)nj_catalog_broken_count(sc);
    }
    size_t n = nj_catalog_count(sc);
    const struct nj_manifest **todo = nj_calloc(n + 1, sizeof *todo);
    size_t nt = 0;
    for (size_t i = 0; i < n; i++) {
        const struct nj_manifest *m = nj_catalog_get(sc, i);
        if (selected(m, domains))
            todo[nt++] = m;
    }
    if (nt)
        qsort(todo, nt, sizeof *todo, cmp_age);
    /* Ids in dst, and those copied now (parents come first). */
    size_t nd = nj_catalog_count(dc);
    char **have = nj_calloc(nd + nt + 1, sizeof *have);
    size_t nh = 0;
    for (size_t i = 0; i < nd; i++)
        have[nh++] = nj_strdup(nj_catalog_get(dc, i)->id);
    for (size_t i = 0; i < nt; i++) {
        const struct nj_manifest *m = todo[i];
        bool present = false, parent_ok = m->parent == NULL;
        for (size_t h = 0; h < nh; h++) {
            present |= strcmp(have[h], m->id) == 0;
            parent_ok |= m->parent && strcmp(have[h], m->parent) == 0;
        }
        if (present) {
            st->backups_present++;
            continue;
        }
        /* Older than what dst has of the domain: its own prune removed
         * it (or it was never wanted there); copying it back would undo
         * dst's retention. */
        bool superseded = false;
        for (size_t k = 0; k < nd; k++) {
            const struct nj_manifest *dm = nj_catalog_get(dc, k);
            superseded |= strcmp(dm->domain_uuid, m->domain_uuid) == 0 &&
                          dm->finished_us > m->finished_us;
        }
        if (superseded) {
            st->backups_skipped++;
            continue;
        }
        int r = 0;
        if (!parent_ok)
            r = nj_error("backup '%s' of '%s': its parent '%s' is not in the "
                         "destination; not copied", m->id, m->domain_name,
                         m->parent);
        else
            r = copy_backup(src, dst, m, st);
        if (r < 0) {
            if (parent_ok)
                nj_error_prefix("backup '%s' of '%s'", m->id, m->domain_name);
            say(report, arg, "%s", nj_error_get());
            if (!first)
                first = nj_strdup(nj_error_get());
            st->backups_failed++;
            continue;
        }
        say(report, arg, "copied %s %s %s", m->id, nj_level_name(m->level),
            m->domain_name);
        st->backups_copied++;
        have[nh++] = nj_strdup(m->id);
    }
    for (size_t h = 0; h < nh; h++)
        free(have[h]);
    free(have);
    free(todo);
    nj_catalog_free(dc);
    nj_catalog_free(sc);
    st->seconds = nj_mono_sec() - t0;
    if (first)
        return nj_error("%s", first);
    return 0;
}
