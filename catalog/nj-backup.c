/*
 * nj-backup.c: the write side of the catalog.
 *
 * State machine of a backup:
 *
 *   begin --> STAGED --commit--> COMMITTED
 *                \--abort / crash--> (gone; staging removed now or later)
 *
 * begin takes the domain lock (so one backup per domain at a time), clears
 * what a dead writer of the same domain left in staging, and creates
 * staging/<id>/ with an owner record.  Indexes are written straight into
 * staging.  commit finishes each index, writes the manifest into staging,
 * and publishes the whole directory in one rename (store-dir.c), after
 * every chunk it references is durable.
 */
#include "nj-catalog.h"
#include "nj-io.h"
#include "nj-util.h"

#include <errno.h>
#include <limits.h>
#include <json-c/json.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

struct nj_backup_disk {
    struct nj_backup *b;
    struct nj_manifest_disk md;
    struct nj_index_writer *w;
};

struct nj_backup {
    struct nj_store *store;
    pthread_mutex_t lock; /* protects disks and ndisks */
    int lock_fd;
    bool committed, staged, commit_tried;
    struct nj_manifest m;
    struct nj_manifest *parent; /* for inc and diff */
    struct nj_backup_disk **disks;
    size_t ndisks;
};

char *nj_backup_id_new(void)
{
    unsigned char r[4] = { 0 };
    if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint32_t x = (uint32_t)ts.tv_nsec ^ (uint32_t)getpid();
        memcpy(r, &x, sizeof r);
    }
    time_t now = (time_t)(nj_now_us() / 1000000);
    struct tm tm;
    gmtime_r(&now, &tm);
    char stamp[32];
    strftime(stamp, sizeof stamp, "%Y%m%dT%H%M%SZ", &tm);
    return nj_asprintf("%s-%02x%02x%02x%02x", stamp, r[0], r[1], r[2], r[3]);
}

char *nj_backup_owner_json(const char *lock_key, const char *domain)
{
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "lock", json_object_new_string(lock_key));
    json_object_object_add(o, "domain", json_object_new_string(domain));
    json_object_object_add(o, "pid", json_object_new_int64(getpid()));
    json_object_object_add(o, "started", json_object_new_int64(time(NULL))); /* real: gc reads it */
    char *s = nj_strdup(json_object_to_json_string(o));
    json_object_put(o);
    return s;
}

/* The lock key of a domain: its UUID, if it is a safe name, else a
 * digest of it.  Names never go into paths. */
char *nj_backup_lock_key(const char *uuid)
{
    if (nj_store_name_valid(uuid) && strlen(uuid) <= 64)
        return nj_strdup(uuid);
    struct nj_digest d;
    char hex[NJ_DIGEST_HEX_LEN + 1];
    nj_sha256(uuid, strlen(uuid), &d);
    nj_digest_to_hex(&d, hex);
    return nj_strdup(hex);
}

/* The manifest of backup id: 0 with *out, or -1 saying which of absent or
 * unreadable (what names it in messages). */
static int read_manifest(struct nj_store *s, const char *id, const char *what,
                         struct nj_manifest **out)
{
    size_t len = 0;
    NJ_CLEANUP_FREE char *text =
        nj_store_backup_read(s, id, NJ_MANIFEST_NAME, NJ_MANIFEST_MAX, &len);
    if (!text) {
        /* Absent, or there but unreadable (a symlink, a FIFO): say which. */
        if (errno == ENOENT)
            return nj_error("%s '%s' not found in store '%s'", what, id,
                            nj_store_path(s));
        return nj_error_prefix("%s '%s'", what, id);
    }
    *out = nj_manifest_from_json(text, len);
    if (!*out)
        return nj_error_prefix("%s '%s'", what, id);
    return 0;
}

static int check_parent(struct nj_store *s, const struct nj_backup_params *p,
                        struct nj_manifest **out)
{
    bool needs = p->level == NJ_LEVEL_INC || p->level == NJ_LEVEL_DIFF;
    if (!needs) {
        if (p->parent)
            return nj_error("a %s backup cannot have a parent",
                            nj_level_name(p->level));
        return 0;
    }
    if (!p->parent)
        return nj_error("a %s backup needs a parent", nj_level_name(p->level));
    struct nj_manifest *pm = NULL;
    if (read_manifest(s, p->parent, "parent backup", &pm) < 0)
        return -1;
    int ret = 0;
    if (strcmp(pm->id, p->parent) != 0)
        ret = nj_error("parent backup '%s' has a manifest for '%s'",
                       p->parent, pm->id);
    else if (strcmp(pm->domain_uuid, p->domain_uuid) != 0)
        ret = nj_error("parent backup '%s' belongs to domain '%s', not '%s'",
                       p->parent, pm->domain_name, p->domain_name);
    else if (pm->level == NJ_LEVEL_COPY)
        ret = nj_error("parent backup '%s' is a copy, outside the chain",
                       p->parent);
    if (ret == 0 && out)
        *out = pm;
    else
        nj_manifest_free(pm);
    return ret;
}

NJ_VECTOR(known_vec, struct nj_digest)

/* Tell the store the chunks of m's indexes, each index once it was read
 * sound to its end (v: scratch, one index's digests at a time).  0, or
 * -1 at the first index that is not. */
static int chain_chunks(struct nj_store *s, const struct nj_manifest *m,
                        struct known_vec *v)
{
    for (size_t i = 0; i < m->ndisks; i++) {
        struct nj_index_reader *r = nj_manifest_index_open(s, m, &m->disks[i]);
        if (!r)
            return -1;
        v->len = 0;
        struct nj_extent e;
        int n;
        while ((n = nj_index_reader_next(r, &e)) == 1)
            if (e.kind == NJ_EXTENT_DATA)
                known_vec_append(v, e.digest);
        nj_index_reader_free(r);
        if (n < 0)
            return -1;
        for (size_t k = 0; k < v->len; k++)
            nj_store_chunk_known(s, &v->ptr[k]);
    }
    return 0;
}

/*
 * Object stores: every chunk the parent's chain references exists, since
 * those backups are committed and our domain lock keeps prune (and so gc)
 * from taking them, so deduplicating against one needs no request.  Only
 * digests from indexes checked against their manifests and read to their
 * end are told; a failure here costs requests, never correctness.
 */
static void preload_known(struct nj_store *s, const struct nj_manifest *parent)
{
    if (!parent || !nj_store_takes_known(s))
        return;
    struct known_vec v = { 0 };
    const struct nj_manifest *m = parent;
    struct nj_manifest *own = NULL;
    for (unsigned depth = 0; m && depth < 4096; depth++) {
        if (chain_chunks(s, m, &v) < 0 || m->level == NJ_LEVEL_FULL ||
            !m->parent)
            break;
        struct nj_manifest *up = NULL;
        if (read_manifest(s, m->parent, "backup", &up) < 0)
            break;
        nj_manifest_free(own);
        m = own = up;
    }
    nj_manifest_free(own);
    known_vec_reset(&v);
}

struct nj_backup *nj_backup_begin(struct nj_store *s,
                                  const struct nj_backup_params *p)
{
    if (!p->domain_name || !p->domain_uuid || !p->domain_uuid[0]) {
        nj_error("a backup needs a domain name and UUID");
        if (p->have_lock)
            nj_store_unlock_domain(p->lock_fd);
        return NULL;
    }
    NJ_CLEANUP_FREE char *key = nj_backup_lock_key(p->domain_uuid);
    int lock_fd = p->have_lock ? p->lock_fd
                               : nj_store_lock_domain(s, key, p->domain_name);
    if (lock_fd < 0)
        return NULL;
    /* Under the lock: no backup of this domain can commit meanwhile. */
    struct nj_manifest *parent = NULL;
    if (check_parent(s, p, &parent) < 0) {
        nj_store_unlock_domain(lock_fd);
        return NULL;
    }
    /* We hold the lock: whatever staging this domain has is a dead run's. */
    if (nj_store_staging_clean(s, key) < 0) {
        nj_manifest_free(parent);
        nj_store_unlock_domain(lock_fd);
        return NULL;
    }
    struct nj_backup *b = nj_calloc(1, sizeof *b);
    b->store = s;
    b->lock_fd = lock_fd;
    b->parent = parent;
    pthread_mutex_init(&b->lock, NULL);
    b->m.id = p->id ? nj_strdup(p->id) : nj_backup_id_new();
    b->m.level = p->level;
    b->m.parent = p->parent ? nj_strdup(p->parent) : NULL;
    b->m.domain_name = nj_strdup(p->domain_name);
    b->m.domain_uuid = nj_strdup(p->domain_uuid);
    b->m.domain_xml = p->domain_xml ? nj_strdup(p->domain_xml) : NULL;
    b->m.checkpoint_name =
        p->checkpoint_name ? nj_strdup(p->checkpoint_name) : NULL;
    b->m.checkpoint_xml =
        p->checkpoint_xml ? nj_strdup(p->checkpoint_xml) : NULL;
    b->m.started = nj_now_us() / 1000000;
    NJ_CLEANUP_FREE char *owner = nj_backup_owner_json(key, p->domain_name);
    if (nj_store_staging_create(s, b->m.id, owner) < 0) {
        nj_backup_free(b);
        return NULL;
    }
    b->staged = true;
    preload_known(s, parent);
    return b;
}

const char *nj_backup_id(const struct nj_backup *b)
{
    return b->m.id;
}

static struct nj_backup_disk *disk_add_locked(struct nj_backup *b,
                                              const char *target,
                                              const char *format,
                                              uint64_t size, bool full);

struct nj_backup_disk *nj_backup_disk_add(struct nj_backup *b,
                                          const char *target,
                                          const char *format, uint64_t size,
                                          bool full)
{
    pthread_mutex_lock(&b->lock);
    struct nj_backup_disk *d = disk_add_locked(b, target, format, size, full);
    pthread_mutex_unlock(&b->lock);
    return d;
}

static struct nj_backup_disk *disk_add_locked(struct nj_backup *b,
                                              const char *target,
                                              const char *format,
                                              uint64_t size, bool full)
{
    if (b->committed || !b->staged) {
        nj_error("backup '%s' is not open for writing", b->m.id);
        return NULL;
    }
    if (!target[0] || size == 0) {
        nj_error("disk '%s': empty target or zero size", target);
        return NULL;
    }
    if ((b->m.level == NJ_LEVEL_FULL || b->m.level == NJ_LEVEL_COPY) && !full) {
        nj_error("disk '%s' of a %s backup must be full", target,
                 nj_level_name(b->m.level));
        return NULL;
    }
    for (size_t i = 0; i < b->ndisks; i++)
        if (strcmp(b->disks[i]->md.target, target) == 0) {
            nj_error("disk '%s' added twice", target);
            return NULL;
        }
    if (!full && (!b->parent || !nj_manifest_disk(b->parent, target))) {
        nj_error("disk '%s' is not in the parent backup: it must be full",
                 target);
        return NULL;
    }
    char name[32];
    snprintf(name, sizeof name, "disk%zu.idx", b->ndisks);
    struct nj_index_writer *w =
        nj_index_writer_new(nj_store_staging_open(b->store, b->m.id, name),
                            size);
    if (!w)
        return NULL;
    struct nj_backup_disk *d = nj_calloc(1, sizeof *d);
    d->b = b;
    d->w = w;
    d->md.target = nj_strdup(target);
    d->md.format = nj_strdup(format ? format : "raw");
    d->md.size = size;
    d->md.full = full;
    d->md.index = nj_strdup(name);
    b->disks = nj_realloc_array(b->disks, b->ndisks + 1, sizeof *b->disks);
    b->disks[b->ndisks++] = d;
    return d;
}

int nj_backup_disk_append(struct nj_backup_disk *d, const struct nj_extent *e)
{
    if (nj_index_writer_append(d->w, e) < 0)
        return nj_error_prefix("disk '%s'", d->md.target);
    return 0;
}

static void add_u64(uint64_t *p, uint64_t v)
{
    __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}

/* A frame stored raw (zstd levels go below 0: -1 is one of them). */
#define LEVEL_RAW INT_MIN

/* The zstd level a frame was compressed at, or LEVEL_RAW. */
static int frame_level(const struct nj_codec *codec, const void *frame)
{
    int l = nj_codec_level(codec);
    if ((((const unsigned char *)frame)[5] & NJ_CHUNK_FLAG_ZSTD) &&
        l >= NJ_ZSTD_LEVEL_MIN && l <= NJ_ZSTD_LEVEL_MAX)
        return l;
    return LEVEL_RAW;
}

/* Count a new chunk under the level its frame was compressed at. */
static void count_compression(struct nj_disk_compression *c, int l,
                              size_t len, size_t flen)
{
    if (l != LEVEL_RAW) {
        add_u64(&c->chunks[l - NJ_ZSTD_LEVEL_MIN], 1);
        add_u64(&c->bytes[l - NJ_ZSTD_LEVEL_MIN], len);
        add_u64(&c->stored[l - NJ_ZSTD_LEVEL_MIN], flen);
    } else {
        add_u64(&c->raw_chunks, 1);
        add_u64(&c->raw_bytes, len);
    }
}

void nj_backup_disk_set_compression(struct nj_backup_disk *d, bool adaptive,
                                    int level_min, int level_max)
{
    d->md.compression.adaptive = adaptive;
    d->md.compression.level_min = level_min;
    d->md.compression.level_max = level_max;
}

static void count_put(struct nj_backup_disk *d, int rc, size_t len,
                      size_t flen, int level)
{
    if (rc == 0) {
        add_u64(&d->md.stats.bytes_new, len);
        add_u64(&d->md.stats.bytes_stored, flen);
        add_u64(&d->md.stats.chunks_new, 1);
        count_compression(&d->md.compression, level, len, flen);
    } else if (rc == 1) {
        add_u64(&d->md.stats.bytes_dedup, len);
        add_u64(&d->md.stats.chunks_dedup, 1);
    } /* a failed put counts nothing: the commit fails */
}

struct put_count {
    struct nj_backup_disk *d;
    size_t len, flen;
    int level;
};

static void put_counted(void *arg, int rc)
{
    struct put_count *pc = arg;
    count_put(pc->d, rc, pc->len, pc->flen, pc->level);
    free(pc);
}

int nj_backup_put_chunk(struct nj_backup *b, struct nj_backup_disk *d,
                        struct nj_codec *codec, const void *buf, size_t len,
                        struct nj_digest *digest)
{
    if (nj_sha256(buf, len, digest) < 0)
        return -1;
    /* Cheap existence check first: a dedup hit skips compression. */
    int r = nj_store_chunk_exists(b->store, digest);
    if (r < 0)
        return nj_error_prefix("disk '%s'", d->md.target);
    if (r == 1) {
        count_put(d, 1, len, 0, LEVEL_RAW);
        return 0;
    }
    size_t flen = 0;
    const void *frame = nj_codec_encode(codec, buf, len, &flen);
    if (!frame)
        return -1;
    /* Counted when the store knows whether it was new (S3: a create-only
     * put that finds the chunk there is a dedup); commit syncs first. */
    struct put_count *pc = nj_malloc(sizeof *pc);
    *pc = (struct put_count){ .d = d, .len = len, .flen = flen,
                              .level = frame_level(codec, frame) };
    if (nj_store_chunk_put_async(b->store, digest, frame, flen, put_counted,
                                 pc) < 0) {
        free(pc);
        return nj_error_prefix("disk '%s'", d->md.target);
    }
    return 0;
}

int nj_backup_lock_domain(struct nj_store *s, const char *domain_uuid,
                          const char *domain_name)
{
    NJ_CLEANUP_FREE char *key = nj_backup_lock_key(domain_uuid);
    return nj_store_lock_domain(s, key, domain_name);
}

void nj_backup_set_checkpoint(struct nj_backup *b, const char *name,
                              const char *xml)
{
    free(b->m.checkpoint_name);
    free(b->m.checkpoint_xml);
    b->m.checkpoint_name = name ? nj_strdup(name) : NULL;
    b->m.checkpoint_xml = xml ? nj_strdup(xml) : NULL;
}

void nj_backup_disk_count(struct nj_backup_disk *d, uint64_t read,
                          uint64_t zero)
{
    add_u64(&d->md.stats.bytes_read, read);
    add_u64(&d->md.stats.bytes_zero, zero);
}

void nj_backup_disk_set_usec(struct nj_backup_disk *d, uint64_t usec)
{
    d->md.stats.usec = usec;
}

const struct nj_disk_stats *nj_backup_disk_stats(const struct nj_backup_disk *d)
{
    return &d->md.stats;
}

static int cmp_disk(const void *x, const void *y)
{
    const struct nj_backup_disk *a = *(struct nj_backup_disk *const *)x;
    const struct nj_backup_disk *b = *(struct nj_backup_disk *const *)y;
    return strcmp(a->md.target, b->md.target);
}

int nj_backup_commit(struct nj_backup *b)
{
    if (b->committed || !b->staged)
        return nj_error("backup '%s' is not open for writing", b->m.id);
    if (b->commit_tried)
        return nj_error("backup '%s': commit already failed; abort it",
                        b->m.id);
    b->commit_tried = true;
    if (b->ndisks == 0)
        return nj_error("backup '%s' has no disks", b->m.id);
    /* Every background put answered (and counted) before the counts are
     * copied; a failed one fails the publish below, which syncs. */
    nj_store_settle(b->store);
    /* Disks in target order, however they were added. */
    qsort(b->disks, b->ndisks, sizeof *b->disks, cmp_disk);
    b->m.disks = nj_calloc(b->ndisks, sizeof *b->m.disks);
    b->m.ndisks = 0;
    for (size_t i = 0; i < b->ndisks; i++) {
        struct nj_backup_disk *d = b->disks[i];
        if (nj_index_writer_finish(d->w, &d->md.index_digest, &d->md.entries,
                                   &d->md.covered) < 0)
            return nj_error_prefix("disk '%s'", d->md.target);
        if (d->md.full && d->md.covered != d->md.size)
            return nj_error("disk '%s': a full index must cover all %llu "
                            "bytes, it covers %llu", d->md.target,
                            (unsigned long long)d->md.size,
                            (unsigned long long)d->md.covered);
        nj_index_writer_free(d->w);
        d->w = NULL;
        /* The manifest borrows the disk's strings; see nj_backup_free. */
        b->m.disks[b->m.ndisks++] = d->md;
    }
    b->m.finished_us = nj_now_us();
    b->m.finished = b->m.finished_us / 1000000;
    NJ_CLEANUP_FREE char *text = nj_manifest_to_json(&b->m);
    if (nj_store_staging_put(b->store, b->m.id, NJ_MANIFEST_NAME, text,
                             strlen(text)) < 0)
        return -1;
    int r = nj_store_backup_publish(b->store, b->m.id);
    if (r < 0)
        return -1;
    b->committed = true;
    b->staged = false;
    if (r > 0)
        fprintf(stderr, "nightjar: warning: backup %s is committed but its "
                "directory entry may not be durable yet: %s\n", b->m.id,
                nj_error_get());
    return 0;
}

void nj_backup_abort(struct nj_backup *b)
{
    if (!b || b->committed || !b->staged)
        return;
    for (size_t i = 0; i < b->ndisks; i++) {
        nj_index_writer_free(b->disks[i]->w);
        b->disks[i]->w = NULL;
    }
    nj_store_staging_remove(b->store, b->m.id);
    b->staged = false;
}

const struct nj_manifest *nj_backup_manifest(const struct nj_backup *b)
{
    return b->committed ? &b->m : NULL;
}

void nj_backup_free(struct nj_backup *b)
{
    if (!b)
        return;
    /* Background puts count into the disks: none may still be running. */
    nj_store_settle(b->store);
    nj_backup_abort(b);
    for (size_t i = 0; i < b->ndisks; i++) {
        struct nj_backup_disk *d = b->disks[i];
        nj_index_writer_free(d->w);
        free(d->md.target);
        free(d->md.format);
        free(d->md.index);
        free(d);
    }
    free(b->disks);
    /* Disk strings were borrowed by b->m.disks: free only the array. */
    free(b->m.disks);
    b->m.disks = NULL;
    b->m.ndisks = 0;
    nj_store_unlock_domain(b->lock_fd);
    nj_manifest_free(b->parent);
    pthread_mutex_destroy(&b->lock);
    free(b->m.id);
    free(b->m.parent);
    free(b->m.domain_name);
    free(b->m.domain_uuid);
    free(b->m.domain_xml);
    free(b->m.checkpoint_name);
    free(b->m.checkpoint_xml);
    free(b);
}
