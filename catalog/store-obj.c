/*
 * store-obj.c: the store on object primitives (nj-object.h), over an S3
 * bucket (radosgw, AWS S3, any S3 service with strong read-after-write
 * consistency and conditional PUT: obj-s3.c) or a directory (obj-dir.c,
 * "obj+file://PATH"): the same code and the same objects on both.
 *
 * Object layout under s3://BUCKET/PREFIX/ or the directory (docs/FORMAT.md,
 * section 13):
 *   nightjar-store.json                  the store marker, as on a directory
 *   chunks/XX/<64 hex>                   chunk frames, byte for byte the files
 *                                        of a directory store
 *   staging/<id>/owner.json              a backup being written (for gc)
 *   backups/<id>/g<8 digits>/<name>      generation G of a backup: its
 *                                        indexes, then manifest.json last
 *   backups/<id>/flags/<flag>            flags ("protected"), empty objects
 *   locks/<key>.lease                    domain leases; locks/.gc.lease for gc
 *
 * Commit.  A backup exists when a generation of it has manifest.json; the
 * manifest is PUT last, create-only (If-None-Match: *), after every chunk
 * put has been answered (and nj_obj_sync made them durable) and every
 * index of that generation is there.  A
 * writer killed or cut off at any moment leaves objects no manifest names:
 * invisible, and removed by gc once a day old.  Readers take the newest
 * generation that has a manifest.  Prune's merge writes generation G+1
 * (indexes, then the manifest, create-only) and only then deletes
 * generation G: a crash in between leaves two complete generations, and
 * the newer one wins.  Removing a backup deletes its manifests oldest
 * first, so no older generation ever becomes visible again, and then the
 * rest.
 *
 * Locks are leases: an object holding owner (host id, boot id, pid) and an
 * expiry, created with If-None-Match: *, renewed by a thread every third of
 * its time to live with If-Match on its ETag, taken over with If-Match on
 * the ETag of a lease that has expired or whose holder is a dead process
 * of this host (same host id and boot id, no such pid), and deleted on
 * release.  A writer whose lease could not be renewed before it expired
 * refuses to publish.  For a server that ignores If-None-Match the lease
 * is not exclusive: this backend checks for conditional PUT when it
 * creates a store (check_conditional) and refuses a server without it,
 * unless NIGHTJAR_S3_NO_CONDITIONAL=1 asks for the weaker fallback: the
 * marker then records "s3_conditional": false, and every host opening the
 * store emulates the conditions (obj-s3.c: look, put, settle, look again;
 * NIGHTJAR_S3_SETTLE_MS, 5 s by default).
 *
 * Why gc never deletes a chunk a running backup relies on: see the argument
 * at gc_sweep below (it differs from the directory's, as objects have no
 * settable mtime and no atomic rename).
 *
 * Chunk existence: a chunk this process has put or seen exist is known,
 * and so is every chunk of a new incremental's parent chain (nj-backup.c
 * tells them, nj_store_chunk_known); any other is PUT create-only, in the
 * background, and a 412 says it was there (a dedup hit that cost the
 * upload, but no HEAD: the common case of new data costs one request per
 * chunk).  Nothing in a local cache is trusted: the known set
 * lives only as long as the store handle.
 *
 * Index files of a staged backup are written by nj-index.c (through a
 * stream) to a private unnamed temporary file (O_TMPFILE, $TMPDIR or
 * /var/tmp) and uploaded at publish; published ones are read through a
 * temporary copy fetched with range GETs.  Nothing else is kept locally: a restore needs only the URL
 * and credentials.
 *
 * Hostile store: every key listed is parsed strictly (anything that is not
 * of the layout above is left alone, never deleted, and makes the backup
 * it sits under unreadable rather than invisible), sizes from listings are
 * capped before use, and every listing that fails fails the caller.
 */
#include "nj-chunk.h"
#include "nj-digest.h"
#include "nj-io.h"
#include "nj-manifest.h"
#include "nj-marks.h"
#include "nj-object.h"
#include "nj-s3.h"
#include "nj-store.h"
#include "nj-util.h"
#include "store-backend.h"

#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define LEASE_TTL_DEFAULT 300 /* seconds */
/* Seconds of clock slack between hosts: 30, or a tenth of a short TTL */
#define LEASE_SKEW(ttl) ((ttl) >= 300 ? 30 : (ttl) / 10)
#define LEASE_MAX 4096
#define GC_LEASE_KEY ".gc" /* not a store name: no domain key can be it */
#define RANGE_STEP (4u << 20)
#define DELETE_BATCH 1000
#define INDEX_MAX ((uint64_t)1 << 36) /* 64 GiB: more is damage */
/* Chunk frames copied for background puts: at most this many, and this
 * many bytes of them (one frame may pass the byte bound alone), are alive
 * at once.  Many small chunks (an incremental's scattered writes) keep
 * requests in flight; big ones keep memory bounded. */
#define ASYNC_PUTS 16
#define ASYNC_BYTES (8u << 20)

/* ---- a set of digests (open addressing) ---- */

struct digest_set {
    struct nj_digest *slot;
    unsigned char *used;
    size_t cap, len;
};

static size_t dset_home(const struct digest_set *ds, const struct nj_digest *d)
{
    uint64_t h;
    memcpy(&h, d->b, sizeof h);
    return (size_t)h & (ds->cap - 1);
}

static bool dset_has(const struct digest_set *ds, const struct nj_digest *d)
{
    if (ds->cap == 0)
        return false;
    for (size_t i = dset_home(ds, d);; i = (i + 1) & (ds->cap - 1)) {
        if (!ds->used[i])
            return false;
        if (nj_digest_eq(&ds->slot[i], d))
            return true;
    }
}

static void dset_add(struct digest_set *ds, const struct nj_digest *d);

static void dset_grow(struct digest_set *ds)
{
    struct digest_set old = *ds;
    ds->cap = old.cap ? old.cap * 2 : 1024;
    ds->len = 0;
    ds->slot = nj_calloc(ds->cap, sizeof *ds->slot);
    ds->used = nj_calloc(ds->cap, 1);
    for (size_t i = 0; i < old.cap; i++)
        if (old.used[i])
            dset_add(ds, &old.slot[i]);
    free(old.slot);
    free(old.used);
}

static void dset_add(struct digest_set *ds, const struct nj_digest *d)
{
    if ((ds->len + 1) * 2 > ds->cap)
        dset_grow(ds);
    size_t i = dset_home(ds, d);
    while (ds->used[i]) {
        if (nj_digest_eq(&ds->slot[i], d))
            return;
        i = (i + 1) & (ds->cap - 1);
    }
    ds->used[i] = 1;
    ds->slot[i] = *d;
    ds->len++;
}

static void dset_free(struct digest_set *ds)
{
    free(ds->slot);
    free(ds->used);
    memset(ds, 0, sizeof *ds);
}

/* ---- the store ---- */

struct spool {
    char *name;
    int fd; /* private unnamed file */
};
NJ_VECTOR(spool_vec, struct spool);

struct staged {
    char *id;
    struct spool_vec files;
};
NJ_VECTOR(staged_vec, struct staged *);

struct lease;
NJ_VECTOR(lease_vec, struct lease *);

/* The newest generation of each backup, as last listed or written. */
struct gen_entry {
    char id[129];
    unsigned gen;
};
NJ_VECTOR(gen_vec, struct gen_entry);

struct obj_store {
    struct nj_store base;
    struct nj_objects *obj;
    char *prefix; /* "" or "PREFIX/" */
    char host[129], boot[64];
    int64_t ttl;
    pthread_mutex_t lock;
    struct digest_set known;  /* chunks known to exist (or being put) */
    /* Chunk puts run in the background, at most ASYNC_PUTS at once; the
     * first that fails is kept here, and from then on this handle puts
     * and publishes nothing (its known set may name a missing chunk). */
    unsigned async_puts;
    size_t async_bytes;
    char *put_error;
    pthread_cond_t put_done;
    struct nj_marks *marks; /* gc's marks, NULL outside a gc */
    struct staged_vec staged;
    struct lease_vec leases;
    struct gen_vec gens;
    pthread_t renewer;
    bool renewer_running, stopping;
    pthread_cond_t wake;
    pthread_cond_t renewed; /* a lease's renewal came back */
};

struct lease {
    struct obj_store *st; /* NULL once the store is closed */
    int handle;          /* an eventfd: what nj_store_lock_domain returns */
    char *key;           /* object key */
    char etag[NJ_OBJ_TAG_MAX];
    int64_t expires;
    bool lost;
    bool renewing;       /* a renewal's put is in flight (store's lock) */
};

static struct obj_store *to_obj(struct nj_store *s)
{
    return (struct obj_store *)s;
}

static char *key_of(const struct obj_store *st, const char *fmt, ...)
    NJ_PRINTF(2, 3);
static char *key_of(const struct obj_store *st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *rest = NULL;
    if (vasprintf(&rest, fmt, ap) < 0)
        abort();
    va_end(ap);
    char *k = nj_asprintf("%s%s", st->prefix, rest);
    free(rest);
    return k;
}

static void chunk_key(const struct obj_store *st, const struct nj_digest *d,
                      char *out, size_t size)
{
    char hex[NJ_DIGEST_HEX_LEN + 1];
    nj_digest_to_hex(d, hex);
    snprintf(out, size, "%schunks/%.2s/%s", st->prefix, hex, hex);
}

/* A private unnamed file for spooling; -1 with the error set. */
static int spool_open(void)
{
    const char *dir = getenv("TMPDIR");
    if (!dir || !*dir)
        dir = "/var/tmp";
    int fd = open(dir, O_TMPFILE | O_RDWR | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return nj_error_errno(errno, "temporary file in '%s'", dir);
    return fd;
}

/* ---- chunks ---- */

static int obj_chunk_exists(struct nj_store *s, const struct nj_digest *d)
{
    struct obj_store *st = to_obj(s);
    pthread_mutex_lock(&st->lock);
    bool k = dset_has(&st->known, d);
    pthread_mutex_unlock(&st->lock);
    /* Unknown: the create-only put decides, at no extra request. */
    return k ? 1 : 0;
}

static void known_add(struct obj_store *st, const struct nj_digest *d)
{
    pthread_mutex_lock(&st->lock);
    dset_add(&st->known, d);
    pthread_mutex_unlock(&st->lock);
}

static void obj_chunk_known(struct nj_store *s, const struct nj_digest *d)
{
    known_add(to_obj(s), d);
}

static int obj_chunk_present(struct nj_store *s, const struct nj_digest *d)
{
    struct obj_store *st = to_obj(s);
    if (obj_chunk_exists(s, d) == 1)
        return 1;
    char key[256];
    chunk_key(st, d, key, sizeof key);
    int r = nj_obj_head(st->obj, key, NULL, NULL, NULL);
    if (r == 1)
        known_add(st, d);
    return r;
}

struct chunk_put {
    struct obj_store *st;
    size_t len;
    char key[256];
    void (*done)(void *arg, int rc);
    void *arg;
};

/* From the namespace's I/O thread (or inline): nothing may call into it. */
static void chunk_put_done(void *arg, int rc)
{
    struct chunk_put *cp = arg;
    struct obj_store *st = cp->st;
    if (cp->done)
        cp->done(cp->arg, rc);
    pthread_mutex_lock(&st->lock);
    if (rc < 0 && !st->put_error)
        st->put_error = nj_asprintf("put '%s': %s", cp->key, nj_error_get());
    st->async_puts--;
    st->async_bytes -= cp->len;
    pthread_cond_broadcast(&st->put_done);
    pthread_mutex_unlock(&st->lock);
    free(cp);
}

/* Wait for every background chunk put: 0, or -1 with the first failure. */
static int chunks_settled(struct obj_store *st)
{
    nj_obj_wait(st->obj);
    pthread_mutex_lock(&st->lock);
    while (st->async_puts > 0)
        pthread_cond_wait(&st->put_done, &st->lock);
    int r = st->put_error ? nj_error("%s", st->put_error) : 0;
    pthread_mutex_unlock(&st->lock);
    return r;
}

/* A chunk not known to exist is put create-only in the background (a 412
 * means it was there); it counts as known at once, so a second put of it
 * meanwhile is a dedup.  A failure makes the next sync and publish fail,
 * and every later put through this handle. */
static int obj_chunk_put_async(struct nj_store *s, const struct nj_digest *d,
                               const void *frame, size_t len,
                               void (*done)(void *arg, int rc), void *arg)
{
    struct obj_store *st = to_obj(s);
    pthread_mutex_lock(&st->lock);
    if (dset_has(&st->known, d)) {
        pthread_mutex_unlock(&st->lock);
        if (done)
            done(arg, 1);
        return 0;
    }
    while (!st->put_error &&
           (st->async_puts >= ASYNC_PUTS ||
            (st->async_puts > 0 && st->async_bytes + len > ASYNC_BYTES)))
        pthread_cond_wait(&st->put_done, &st->lock);
    if (st->put_error) {
        int r = nj_error("%s", st->put_error);
        pthread_mutex_unlock(&st->lock);
        return r;
    }
    dset_add(&st->known, d);
    st->async_puts++;
    st->async_bytes += len;
    pthread_mutex_unlock(&st->lock);
    struct chunk_put *cp = nj_malloc(sizeof *cp);
    *cp = (struct chunk_put){ .st = st, .len = len, .done = done, .arg = arg };
    chunk_key(st, d, cp->key, sizeof cp->key);
    if (nj_obj_put_async(st->obj, cp->key, frame, len,
                         NJ_OBJ_CREATE | NJ_OBJ_LAZY, chunk_put_done,
                         cp) < 0) {
        /* Not queued, so its done never runs: fail the handle as if it
         * had failed, without telling the caller's done. */
        cp->done = NULL;
        chunk_put_done(cp, -1);
        return -1;
    }
    return 0;
}

/* The same, waited for: 0 written, 1 it was there, -1. */
static void put_waited(void *arg, int rc)
{
    *(int *)arg = rc;
}

static void obj_settle(struct nj_store *s)
{
    chunks_settled(to_obj(s));
}

static int obj_chunk_put(struct nj_store *s, const struct nj_digest *d,
                         const void *frame, size_t len)
{
    int rc = -2;
    if (obj_chunk_put_async(s, d, frame, len, put_waited, &rc) < 0)
        return -1;
    /* rc is set once every put has settled (done runs before the count
     * drops, under the store's lock); another put's failure is not ours. */
    if (chunks_settled(to_obj(s)) < 0 && rc < 0)
        return -1;
    return rc;
}

static ssize_t obj_chunk_get(struct nj_store *s, const struct nj_digest *d,
                            void **buf, size_t *cap)
{
    struct obj_store *st = to_obj(s);
    char key[256];
    chunk_key(st, d, key, sizeof key);
    void *got = NULL;
    size_t len = 0;
    if (nj_obj_get(st->obj, key, NJ_CHUNK_HEADER_LEN + (size_t)NJ_CHUNK_MAX,
                  &got, &len) < 0) {
        int e = errno;
        if (e == EFBIG)
            nj_error("chunk %.16s: object too large", key + strlen(key) - 64);
        errno = e;
        return -1;
    }
    if (*cap >= len) {
        memcpy(*buf, got, len);
        free(got);
    } else {
        free(*buf);
        *buf = got;
        *cap = len;
    }
    return (ssize_t)len;
}

/* Chunks are put in the background and lazily (NJ_OBJ_LAZY): all done
 * and durable from here on, or the sync fails. */
static int obj_sync(struct nj_store *s)
{
    if (chunks_settled(to_obj(s)) < 0)
        return -1;
    return nj_obj_sync(to_obj(s)->obj);
}

/* ---- leases ---- */

static pthread_mutex_t lease_registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct lease_vec lease_registry;

static char *lease_body(const struct obj_store *st, int64_t expires)
{
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "host", json_object_new_string(st->host));
    json_object_object_add(o, "boot", json_object_new_string(st->boot));
    json_object_object_add(o, "pid", json_object_new_int64(getpid()));
    json_object_object_add(o, "expires", json_object_new_int64(expires));
    char *t = nj_strdup(json_object_to_json_string(o));
    json_object_put(o);
    return t;
}

struct lease_info {
    char host[129], boot[64];
    int64_t pid, expires;
};

/* Parse a lease read from the store; false when it makes no sense. */
static bool lease_parse(const char *text, size_t len, struct lease_info *li)
{
    memset(li, 0, sizeof *li);
    struct json_tokener *tok = json_tokener_new();
    struct json_object *o = json_tokener_parse_ex(tok, text, (int)len);
    json_tokener_free(tok);
    struct json_object *h = NULL, *b = NULL, *p = NULL, *e = NULL;
    bool ok = o && json_object_is_type(o, json_type_object) &&
              json_object_object_get_ex(o, "host", &h) &&
              json_object_is_type(h, json_type_string) &&
              nj_store_name_valid(json_object_get_string(h)) &&
              json_object_object_get_ex(o, "boot", &b) &&
              json_object_is_type(b, json_type_string) &&
              json_object_get_string_len(b) < (int)sizeof li->boot &&
              json_object_object_get_ex(o, "pid", &p) &&
              json_object_is_type(p, json_type_int) &&
              json_object_object_get_ex(o, "expires", &e) &&
              json_object_is_type(e, json_type_int);
    if (ok) {
        snprintf(li->host, sizeof li->host, "%s", json_object_get_string(h));
        snprintf(li->boot, sizeof li->boot, "%s", json_object_get_string(b));
        li->pid = json_object_get_int64(p);
        li->expires = json_object_get_int64(e);
    }
    json_object_put(o);
    return ok;
}

/* A lease another process holds and may still use. */
static bool lease_live(const struct obj_store *st, const struct lease_info *li,
                       int64_t now)
{
    if (li->expires + LEASE_SKEW(st->ttl) < now)
        return false;
    if (strcmp(li->host, st->host) == 0 && strcmp(li->boot, st->boot) == 0 &&
        li->pid > 0 && li->pid <= INT32_MAX && li->pid != getpid() &&
        kill((pid_t)li->pid, 0) < 0 && errno == ESRCH)
        return false; /* its holder died on this host */
    return true;
}

/*
 * Read the lease at key: 1 with *li and etag filled (li->expires is 0 and
 * the lease counts as live for a TTL from its mtime when it makes no
 * sense), 0 when there is none, -1 on error.
 */
static int lease_read(struct obj_store *st, const char *key,
                      struct lease_info *li, char *etag, bool *sane)
{
    int64_t mtime = 0;
    int r = nj_obj_head(st->obj, key, NULL, &mtime, etag);
    if (r <= 0)
        return r;
    void *text = NULL;
    size_t len = 0;
    if (nj_obj_get(st->obj, key, LEASE_MAX, &text, &len) < 0) {
        if (errno == ENOENT)
            return 0;
        if (errno != EFBIG)
            return -1;
        len = 0;
    }
    *sane = text && lease_parse(text, len, li);
    free(text);
    if (!*sane) {
        memset(li, 0, sizeof *li);
        li->expires = mtime + st->ttl;
        snprintf(li->host, sizeof li->host, "unknown");
    }
    return 1;
}

static void *renewer_main(void *arg);

static void lease_register(struct obj_store *st, struct lease *l)
{
    pthread_mutex_lock(&lease_registry_lock);
    lease_vec_append(&lease_registry, l);
    pthread_mutex_unlock(&lease_registry_lock);
    pthread_mutex_lock(&st->lock);
    lease_vec_append(&st->leases, l);
    if (!st->renewer_running &&
        pthread_create(&st->renewer, NULL, renewer_main, st) == 0)
        st->renewer_running = true;
    pthread_mutex_unlock(&st->lock);
}

/*
 * Take the lease key ("locks/K.lease"); what names the holder in the
 * "busy" message.  Returns a handle (an eventfd) or -1.
 */
static int lease_take(struct obj_store *st, const char *lkey, const char *what)
{
    NJ_CLEANUP_FREE char *key = key_of(st, "locks/%s.lease", lkey);
    for (int attempt = 0; attempt < 4; attempt++) {
        int64_t now = (int64_t)time(NULL);
        NJ_CLEANUP_FREE char *body = lease_body(st, now + st->ttl);
        char etag[NJ_OBJ_TAG_MAX] = "";
        int r = nj_obj_put(st->obj, key, body, strlen(body), NJ_OBJ_CREATE,
                          NULL, etag);
        if (r < 0)
            return nj_error_prefix("lock %s", what);
        if (r == 1) {
            struct lease_info li;
            char old[NJ_OBJ_TAG_MAX] = "";
            bool sane = false;
            r = lease_read(st, key, &li, old, &sane);
            if (r < 0)
                return nj_error_prefix("lock %s", what);
            if (r == 0)
                continue; /* released meanwhile: create again */
            if (lease_live(st, &li, now)) {
                if (li.pid > 0)
                    return nj_error("%s (pid %lld on host %s)", what,
                                    (long long)li.pid, li.host);
                return nj_error("%s (lease held by host %s)", what, li.host);
            }
            /* Expired, or its holder is dead: take it over, unless someone
             * else did first (then look again). */
            r = nj_obj_put(st->obj, key, body, strlen(body), NJ_OBJ_IF_MATCH,
                          old, etag);
            if (r < 0)
                return nj_error_prefix("lock %s", what);
            if (r == 1)
                continue;
        }
        int h = eventfd(0, EFD_CLOEXEC);
        if (h < 0) {
            nj_obj_delete(st->obj, key);
            return nj_error_errno(errno, "eventfd");
        }
        struct lease *l = nj_calloc(1, sizeof *l);
        l->st = st;
        l->handle = h;
        l->key = NJ_STEAL(&key);
        snprintf(l->etag, sizeof l->etag, "%s", etag);
        l->expires = now + st->ttl;
        lease_register(st, l);
        return h;
    }
    return nj_error("%s: the lease changed hands repeatedly", what);
}

/* Release: delete the lease if it is still ours (its ETag is ours).
 * Called with l removed from its store's list. */
static void lease_release(struct obj_store *st, struct lease *l)
{
    char etag[NJ_OBJ_TAG_MAX] = "";
    if (!l->lost && nj_obj_head(st->obj, l->key, NULL, NULL, etag) == 1 &&
        strcmp(etag, l->etag) == 0)
        nj_obj_delete(st->obj, l->key);
}

static void lease_drop(struct lease *l)
{
    close(l->handle);
    free(l->key);
    free(l);
}

/* The renewal thread: every third of the TTL, renew each lease with
 * If-Match; one that changed hands, or that could not be renewed before it
 * expired, is lost, and publish refuses while any is. */
static void *renewer_main(void *arg)
{
    struct obj_store *st = arg;
    pthread_mutex_lock(&st->lock);
    while (!st->stopping) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += NJ_MAX(st->ttl / 3, 1);
        pthread_cond_timedwait(&st->wake, &st->lock, &ts);
        if (st->stopping)
            break;
        for (size_t i = 0; i < st->leases.len; i++) {
            struct lease *l = st->leases.ptr[i];
            if (l->lost)
                continue;
            int64_t now = (int64_t)time(NULL);
            char *body = lease_body(st, now + st->ttl);
            char etag[NJ_OBJ_TAG_MAX] = "";
            char old[NJ_OBJ_TAG_MAX];
            snprintf(old, sizeof old, "%s", l->etag);
            NJ_CLEANUP_FREE char *key = nj_strdup(l->key);
            l->renewing = true;
            pthread_mutex_unlock(&st->lock);
            int r = nj_obj_put(st->obj, key, body, strlen(body),
                              NJ_OBJ_IF_MATCH, old, etag);
            pthread_mutex_lock(&st->lock);
            free(body);
            /* l stays alive while renewing, even if released meanwhile:
             * the release waits, so that it deletes the lease by the ETag
             * this renewal gave it rather than leave it to expire. */
            if (r == 0) {
                snprintf(l->etag, sizeof l->etag, "%s", etag);
                l->expires = now + st->ttl;
            } else if (r == 1 || now >= l->expires) {
                l->lost = true;
            }
            l->renewing = false;
            pthread_cond_broadcast(&st->renewed);
            if (i >= st->leases.len || st->leases.ptr[i] != l)
                break; /* released meanwhile; the next round sees the rest */
        }
    }
    pthread_mutex_unlock(&st->lock);
    return NULL;
}

static bool any_lease_lost(struct obj_store *st)
{
    bool lost = false;
    int64_t now = (int64_t)time(NULL);
    pthread_mutex_lock(&st->lock);
    for (size_t i = 0; i < st->leases.len; i++)
        lost |= st->leases.ptr[i]->lost || now >= st->leases.ptr[i]->expires;
    pthread_mutex_unlock(&st->lock);
    return lost;
}

static int obj_lock_domain(struct nj_store *s, const char *key,
                          const char *display_name)
{
    NJ_CLEANUP_FREE char *what =
        nj_asprintf("domain '%s' is already being backed up", display_name);
    return lease_take(to_obj(s), key, what);
}

bool nj_store_obj_unlock(int handle)
{
    struct lease *l = NULL;
    pthread_mutex_lock(&lease_registry_lock);
    for (size_t i = 0; i < lease_registry.len; i++)
        if (lease_registry.ptr[i]->handle == handle) {
            l = lease_registry.ptr[i];
            lease_registry.ptr[i] = lease_registry.ptr[--lease_registry.len];
            break;
        }
    pthread_mutex_unlock(&lease_registry_lock);
    if (!l)
        return false;
    struct obj_store *st = l->st;
    if (st) {
        pthread_mutex_lock(&st->lock);
        for (size_t i = 0; i < st->leases.len; i++)
            if (st->leases.ptr[i] == l) {
                memmove(&st->leases.ptr[i], &st->leases.ptr[i + 1],
                        (st->leases.len - i - 1) * sizeof *st->leases.ptr);
                st->leases.len--;
                break;
            }
        while (l->renewing)
            pthread_cond_wait(&st->renewed, &st->lock);
        pthread_mutex_unlock(&st->lock);
        lease_release(st, l);
    }
    lease_drop(l);
    return true;
}

/* ---- gc's lease and the writers' wait for it ---- */

static int obj_gc_begin(struct nj_store *s)
{
    return lease_take(to_obj(s), GC_LEASE_KEY,
                      "garbage collection is already running on this store");
}

/*
 * A writer that registered its staging record waits while a gc holds its
 * lease (see gc_sweep's argument).  Returns 0, or -1 when the lease cannot
 * be read.
 */
static int wait_for_gc(struct obj_store *st)
{
    NJ_CLEANUP_FREE char *key = key_of(st, "locks/%s.lease", GC_LEASE_KEY);
    bool said = false;
    for (;;) {
        struct lease_info li;
        char etag[NJ_OBJ_TAG_MAX];
        bool sane = false;
        int r = lease_read(st, key, &li, etag, &sane);
        if (r < 0)
            return nj_error_prefix("check for a running gc");
        if (r == 0 || !lease_live(st, &li, (int64_t)time(NULL)))
            return 0;
        if (!said)
            fprintf(stderr, "nightjar: waiting for garbage collection on "
                            "host %s to finish\n", li.host);
        said = true;
        sleep(1);
    }
}

/* ---- staging ---- */

static struct staged *staged_find(struct obj_store *st, const char *id,
                                  size_t *pos)
{
    for (size_t i = 0; i < st->staged.len; i++)
        if (strcmp(st->staged.ptr[i]->id, id) == 0) {
            if (pos)
                *pos = i;
            return st->staged.ptr[i];
        }
    return NULL;
}

static void staged_free(struct staged *sg)
{
    if (!sg)
        return;
    for (size_t i = 0; i < sg->files.len; i++) {
        close(sg->files.ptr[i].fd);
        free(sg->files.ptr[i].name);
    }
    spool_vec_reset(&sg->files);
    free(sg->id);
    free(sg);
}

static int obj_staging_create(struct nj_store *s, const char *id,
                             const char *owner_json)
{
    struct obj_store *st = to_obj(s);
    NJ_CLEANUP_FREE char *key = key_of(st, "staging/%s/owner.json", id);
    int r = nj_obj_put(st->obj, key, owner_json, strlen(owner_json),
                      NJ_OBJ_CREATE, NULL, NULL);
    if (r < 0)
        return nj_error_prefix("stage backup '%s'", id);
    if (r == 1)
        return nj_error("stage backup '%s': it is already being written", id);
    if (wait_for_gc(st) < 0) {
        nj_obj_delete(st->obj, key);
        return -1;
    }
    struct staged *sg = nj_calloc(1, sizeof *sg);
    sg->id = nj_strdup(id);
    pthread_mutex_lock(&st->lock);
    staged_vec_append(&st->staged, sg);
    pthread_mutex_unlock(&st->lock);
    return 0;
}

/* A new spool for (id, name); returns a dup of its fd for the caller. */
static int spool_add(struct obj_store *st, const char *id, const char *name)
{
    int fd = spool_open();
    if (fd < 0)
        return -1;
    int dup_fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (dup_fd < 0) {
        close(fd);
        return nj_error_errno(errno, "dup");
    }
    pthread_mutex_lock(&st->lock);
    struct staged *sg = staged_find(st, id, NULL);
    bool dupname = false;
    for (size_t i = 0; sg && i < sg->files.len; i++)
        dupname |= strcmp(sg->files.ptr[i].name, name) == 0;
    if (sg && !dupname)
        spool_vec_append(&sg->files,
                         (struct spool){ .name = nj_strdup(name), .fd = fd });
    pthread_mutex_unlock(&st->lock);
    if (!sg || dupname) {
        close(fd);
        close(dup_fd);
        return nj_error(dupname ? "staged backup '%s' already has '%s'"
                                : "no staged backup '%s' (for '%s')",
                        id, name);
    }
    return dup_fd;
}

static struct nj_stream *obj_staging_open(struct nj_store *s, const char *id,
                                          const char *name)
{
    return nj_stream_fd(spool_add(to_obj(s), id, name));
}

static int obj_staging_put(struct nj_store *s, const char *id,
                          const char *name, const void *buf, size_t len)
{
    NJ_CLEANUP_CLOSE int fd = spool_add(to_obj(s), id, name);
    if (fd < 0)
        return -1;
    if (nj_full_write(fd, buf, len) < 0)
        return nj_error_errno(errno, "spool '%s/%s'", id, name);
    return 0;
}

/* Upload a spool as key (mode as nj_s3_put); 0, 1 (precondition), -1. */
static int spool_upload(struct obj_store *st, int fd, const char *key,
                        enum nj_obj_put_mode mode)
{
    struct stat sb;
    if (fstat(fd, &sb) < 0)
        return nj_error_errno(errno, "stat spool");
    size_t len = (size_t)sb.st_size;
    void *map = NULL;
    if (len > 0) {
        map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED)
            return nj_error_errno(errno, "map spool for '%s'", key);
    }
    int r = nj_obj_put(st->obj, key, len ? map : "", len, mode, NULL, NULL);
    if (map)
        munmap(map, len);
    return r;
}

/* Detach this process's staged backup id from the list: it, or NULL. */
static struct staged *staged_detach(struct obj_store *st, const char *id)
{
    size_t pos = 0;
    pthread_mutex_lock(&st->lock);
    struct staged *sg = staged_find(st, id, &pos);
    if (sg)
        st->staged.ptr[pos] = st->staged.ptr[--st->staged.len];
    pthread_mutex_unlock(&st->lock);
    return sg;
}

static struct staged *staged_take(struct obj_store *st, const char *id)
{
    struct staged *sg = staged_detach(st, id);
    if (!sg)
        nj_error("no staged backup '%s' in this process", id);
    return sg;
}

static unsigned gen_cached(struct obj_store *st, const char *id)
{
    unsigned gen = 0;
    pthread_mutex_lock(&st->lock);
    for (size_t i = 0; i < st->gens.len && !gen; i++)
        if (strcmp(st->gens.ptr[i].id, id) == 0)
            gen = st->gens.ptr[i].gen;
    pthread_mutex_unlock(&st->lock);
    return gen;
}

/* Remember id's newest generation (0: forget it). */
static void gen_set(struct obj_store *st, const char *id, unsigned gen)
{
    pthread_mutex_lock(&st->lock);
    size_t i = 0;
    while (i < st->gens.len && strcmp(st->gens.ptr[i].id, id) != 0)
        i++;
    if (gen == 0) {
        if (i < st->gens.len)
            st->gens.ptr[i] = st->gens.ptr[--st->gens.len];
    } else {
        if (i == st->gens.len) {
            struct gen_entry e = { .gen = gen };
            snprintf(e.id, sizeof e.id, "%s", id);
            gen_vec_append(&st->gens, e);
        }
        st->gens.ptr[i].gen = gen;
    }
    pthread_mutex_unlock(&st->lock);
}

/*
 * The generations of one backup, from a listing of backups/<id>/: the
 * newest with a manifest (0: none), the highest seen, and whether a key
 * does not fit the layout.
 */
struct backup_gens {
    unsigned newest, highest;
    bool odd;
};

/* Parse the part of a key after "backups/<id>/"; updates g. */
static void gens_note(struct backup_gens *g, const char *rest)
{
    unsigned gen = 0;
    int n = 0;
    if (strncmp(rest, "flags/", 6) == 0) {
        if (!nj_store_name_valid(rest + 6))
            g->odd = true;
        return;
    }
    if (sscanf(rest, "g%8u/%n", &gen, &n) != 1 || n != 10 || gen == 0 ||
        !nj_store_name_valid(rest + n)) {
        g->odd = true;
        return;
    }
    g->highest = NJ_MAX(g->highest, gen);
    if (strcmp(rest + n, NJ_MANIFEST_NAME) == 0)
        g->newest = NJ_MAX(g->newest, gen);
}

/* List every key under backups/<id>/ (into keys, when not NULL) and its
 * generations.  0 or -1. */
static int backup_scan(struct obj_store *st, const char *id,
                       struct backup_gens *g, char ***keys, size_t *nkeys)
{
    memset(g, 0, sizeof *g);
    NJ_CLEANUP_FREE char *prefix = key_of(st, "backups/%s/", id);
    size_t plen = strlen(prefix);
    char *token = NULL;
    size_t n = 0;
    char **v = NULL;
    do {
        struct nj_obj_page page = { 0 };
        if (nj_obj_list(st->obj, prefix, NULL, &token, &page) < 0) {
            for (size_t i = 0; i < n; i++)
                free(v[i]);
            free(v);
            return nj_error_prefix("list backup '%s'", id);
        }
        for (size_t i = 0; i < page.nobjects; i++) {
            gens_note(g, page.objects[i].key + plen);
            if (keys) {
                v = nj_realloc_array(v, n + 2, sizeof *v);
                v[n++] = nj_strdup(page.objects[i].key);
                v[n] = NULL;
            }
        }
        nj_obj_page_clear(&page);
    } while (token);
    if (keys) {
        *keys = v;
        *nkeys = n;
    }
    return 0;
}

/* Upload every staged file into generation gen of id, the manifest last
 * and create-only.  0, or -1 (nothing visible: the manifest was not put). */
static int upload_generation(struct obj_store *st, struct staged *sg,
                             const char *id, unsigned gen)
{
    int manifest = -1;
    for (size_t i = 0; i < sg->files.len; i++) {
        if (strcmp(sg->files.ptr[i].name, NJ_MANIFEST_NAME) == 0) {
            manifest = sg->files.ptr[i].fd;
            continue;
        }
        /* Indexes go into the generation; anything else staged beside
         * them is a flag (prune carries "protected" over that way). */
        const char *name = sg->files.ptr[i].name;
        size_t nl = strlen(name);
        bool index = nl > 4 && strcmp(name + nl - 4, ".idx") == 0;
        NJ_CLEANUP_FREE char *key =
            index ? key_of(st, "backups/%s/g%08u/%s", id, gen, name)
                  : key_of(st, "backups/%s/flags/%s", id, name);
        if (spool_upload(st, sg->files.ptr[i].fd, key,
                         NJ_OBJ_REPLACE) != 0)
            return nj_error_prefix("publish '%s'", id);
    }
    if (manifest < 0)
        return nj_error("publish '%s': no manifest staged", id);
    /* Every chunk and index it names durable before the manifest. */
    if (chunks_settled(st) < 0 || nj_obj_sync(st->obj) < 0)
        return nj_error_prefix("publish '%s'", id);
    if (any_lease_lost(st))
        return nj_error("publish '%s': the lock's lease was lost (another "
                        "host may have taken it over); not publishing", id);
    NJ_CLEANUP_FREE char *key = key_of(st, "backups/%s/g%08u/%s", id, gen,
                                       NJ_MANIFEST_NAME);
    int r = spool_upload(st, manifest, key, NJ_OBJ_CREATE);
    if (r < 0)
        return nj_error_prefix("publish '%s'", id);
    if (r == 1)
        return nj_error("publish '%s': generation %u already exists", id, gen);
    return 0;
}

static int obj_backup_publish(struct nj_store *s, const char *id)
{
    struct obj_store *st = to_obj(s);
    struct staged *sg = staged_take(st, id);
    if (!sg)
        return -1;
    nj_obj_wait(st->obj);
    struct backup_gens g;
    int ret = backup_scan(st, id, &g, NULL, NULL);
    if (ret == 0 && (g.newest || g.odd))
        ret = nj_error("publish '%s': a backup of that id exists", id);
    if (ret == 0)
        ret = upload_generation(st, sg, id, g.highest + 1);
    if (ret == 0)
        gen_set(st, id, g.highest + 1);
    if (ret == 0) {
        NJ_CLEANUP_FREE char *key = key_of(st, "staging/%s/owner.json", id);
        nj_obj_delete(st->obj, key); /* if this fails, gc removes it later */
    }
    staged_free(sg);
    return ret;
}

static int obj_staging_remove(struct nj_store *s, const char *id)
{
    struct obj_store *st = to_obj(s);
    staged_free(staged_detach(st, id));
    NJ_CLEANUP_FREE char *key = key_of(st, "staging/%s/owner.json", id);
    if (nj_obj_delete(st->obj, key) < 0)
        return nj_error_prefix("remove staged backup '%s'", id);
    return 0;
}

static int obj_staging_owner(struct nj_store *s, const char *id,
                            struct nj_store_owner *o)
{
    struct obj_store *st = to_obj(s);
    NJ_CLEANUP_FREE char *key = key_of(st, "staging/%s/owner.json", id);
    NJ_CLEANUP_FREE char *display = nj_asprintf("staging/%s/owner.json", id);
    void *text = NULL;
    size_t len = 0;
    if (nj_obj_get(st->obj, key, NJ_STORE_OWNER_MAX, &text, &len) < 0)
        return errno == ENOENT ? 0 : nj_error_prefix("staging/%s", id);
    int r = nj_store_owner_parse(text, len, display, o);
    free(text);
    return r;
}

/* Names under PREFIX/<dir>/ with the delimiter (store names only). */
static char **list_dirs(struct obj_store *st, const char *dir)
{
    NJ_CLEANUP_FREE char *prefix = key_of(st, "%s/", dir);
    size_t plen = strlen(prefix);
    char *token = NULL;
    size_t n = 0;
    char **v = nj_calloc(1, sizeof *v);
    do {
        struct nj_obj_page page = { 0 };
        if (nj_obj_list(st->obj, prefix, "/", &token, &page) < 0) {
            nj_strv_free(v);
            nj_error_prefix("list '%s'", dir);
            return NULL;
        }
        for (size_t i = 0; i < page.nprefixes; i++) {
            const char *p = page.prefixes[i] + plen;
            size_t l = strlen(p);
            if (l < 2 || p[l - 1] != '/')
                continue;
            char *name = nj_strdup(p);
            name[l - 1] = '\0';
            if (!nj_store_name_valid(name)) {
                free(name);
                continue;
            }
            v = nj_realloc_array(v, n + 2, sizeof *v);
            v[n++] = name;
            v[n] = NULL;
        }
        nj_obj_page_clear(&page);
    } while (token);
    return v;
}

static char **obj_staging_list(struct nj_store *s)
{
    return list_dirs(to_obj(s), "staging");
}

static int obj_staging_clean(struct nj_store *s, const char *owner_key)
{
    struct obj_store *st = to_obj(s);
    char **ids = list_dirs(st, "staging");
    if (!ids)
        return -1;
    int ret = 0;
    for (char **id = ids; *id; id++) {
        struct nj_store_owner o;
        if (obj_staging_owner(s, *id, &o) != 1 ||
            strcmp(o.lock, owner_key) != 0)
            continue; /* not ours, or unreadable: left alone */
        pthread_mutex_lock(&st->lock);
        bool mine = staged_find(st, *id, NULL) != NULL;
        pthread_mutex_unlock(&st->lock);
        if (!mine && obj_staging_remove(s, *id) < 0)
            ret = -1;
    }
    nj_strv_free(ids);
    return ret;
}

/* ---- published backups ---- */

static char **obj_backup_list(struct nj_store *s)
{
    struct obj_store *st = to_obj(s);
    /* One listing of backups/ (a few keys per backup), grouped by id. */
    NJ_CLEANUP_FREE char *prefix = key_of(st, "backups/");
    size_t plen = strlen(prefix);
    char *token = NULL;
    char **v = nj_calloc(1, sizeof *v);
    size_t n = 0;
    char cur[130] = "";
    struct backup_gens g = { 0 };
    bool done = false;
    while (!done) {
        struct nj_obj_page page = { 0 };
        if (nj_obj_list(st->obj, prefix, NULL, &token, &page) < 0) {
            nj_strv_free(v);
            nj_error_prefix("list backups");
            return NULL;
        }
        done = token == NULL;
        for (size_t i = 0; i <= page.nobjects; i++) {
            const char *k = i < page.nobjects ? page.objects[i].key + plen
                                              : NULL;
            const char *slash = k ? strchr(k, '/') : NULL;
            size_t idlen = slash ? (size_t)(slash - k) : 0;
            bool same = k && slash && idlen < sizeof cur &&
                        strlen(cur) == idlen && memcmp(cur, k, idlen) == 0;
            if (i == page.nobjects && !done)
                break; /* the id may go on in the next page */
            if (!same && cur[0]) {
                if (g.newest || g.odd) {
                    gen_set(st, cur, g.odd ? 0 : g.newest);
                    v = nj_realloc_array(v, n + 2, sizeof *v);
                    v[n++] = nj_strdup(cur);
                    v[n] = NULL;
                }
                cur[0] = '\0';
            }
            if (!k || !slash || idlen >= sizeof cur)
                continue;
            if (!same) {
                memcpy(cur, k, idlen);
                cur[idlen] = '\0';
                memset(&g, 0, sizeof g);
                if (!nj_store_name_valid(cur)) {
                    cur[0] = '\0';
                    continue;
                }
            }
            gens_note(&g, slash + 1);
        }
        nj_obj_page_clear(&page);
    }
    return v;
}

/* The key of a published backup's file in its newest generation; NULL
 * with errno ENOENT when the backup does not exist.  The generation comes
 * from the cache unless fresh; *cached says whether it did, so that a
 * caller that finds the object gone (another process merged or removed
 * the backup) asks again, fresh. */
static char *published_key(struct obj_store *st, const char *id,
                           const char *name, bool fresh, bool *cached)
{
    unsigned gen = fresh ? 0 : gen_cached(st, id);
    *cached = gen != 0;
    if (gen)
        return key_of(st, "backups/%s/g%08u/%s", id, gen, name);
    struct backup_gens g;
    if (backup_scan(st, id, &g, NULL, NULL) < 0)
        return NULL;
    gen_set(st, id, g.odd ? 0 : g.newest);
    if (g.newest == 0) {
        nj_error(g.odd ? "'backups/%s' is not a backup (objects outside "
                         "the layout)"
                       : "no backup '%s'", id);
        errno = g.odd ? EINVAL : ENOENT;
        return NULL;
    }
    return key_of(st, "backups/%s/g%08u/%s", id, g.newest, name);
}

static char *obj_backup_read(struct nj_store *s, const char *id,
                            const char *name, size_t max, size_t *len)
{
    struct obj_store *st = to_obj(s);
    for (bool fresh = false;; fresh = true) {
        bool cached = false;
        NJ_CLEANUP_FREE char *key = published_key(st, id, name, fresh,
                                                  &cached);
        if (!key)
            return NULL;
        void *text = NULL;
        if (nj_obj_get(st->obj, key, max, &text, len) == 0)
            return text;
        int e = errno;
        if (e == ENOENT && cached)
            continue;
        nj_error_prefix("backups/%s/%s", id, name);
        errno = e;
        return NULL;
    }
}

/* Copy an object into fd with range GETs; 0 or -1. */
static int fetch_into(struct obj_store *st, const char *key, int fd)
{
    void *buf = nj_malloc(RANGE_STEP);
    uint64_t off = 0;
    int ret = 0;
    for (;;) {
        ssize_t n = nj_obj_get_range(st->obj, key, off, buf, RANGE_STEP);
        if (n < 0) {
            ret = -1;
            break;
        }
        if (n > 0 && nj_full_write(fd, buf, (size_t)n) < 0) {
            ret = nj_error_errno(errno, "spool '%s'", key);
            break;
        }
        off += (uint64_t)n;
        if ((size_t)n < RANGE_STEP)
            break;
        if (off > INDEX_MAX) {
            ret = nj_error("'%s' is too large", key);
            break;
        }
    }
    free(buf);
    if (ret == 0 && lseek(fd, 0, SEEK_SET) < 0)
        ret = nj_error_errno(errno, "seek spool");
    return ret;
}

/* Fetch a published file into a new spool (or fd, when >= 0): the fd, or
 * -1. */
static int fetch_published(struct obj_store *st, const char *id,
                           const char *name, int fd)
{
    NJ_CLEANUP_CLOSE int own = fd < 0 ? spool_open() : -1;
    if (fd < 0 && own < 0)
        return -1;
    int out = fd >= 0 ? fd : own;
    for (bool fresh = false;; fresh = true) {
        bool cached = false;
        NJ_CLEANUP_FREE char *key = published_key(st, id, name, fresh,
                                                  &cached);
        if (!key)
            return -1;
        if (fetch_into(st, key, out) == 0)
            break;
        if (errno != ENOENT || !cached)
            return -1;
        if (ftruncate(out, 0) < 0 || lseek(out, 0, SEEK_SET) < 0)
            return nj_error_errno(errno, "spool");
    }
    return fd >= 0 ? fd : NJ_STEAL_FD(&own);
}

/* The object is fetched whole into a private spool first (range GETs): a
 * prune that replaces the generation meanwhile cannot change it under the
 * reader, which checks it against its manifest anyway. */
static struct nj_stream *obj_backup_open(struct nj_store *s, const char *id,
                                         const char *name)
{
    int fd = fetch_published(to_obj(s), id, name, -1);
    if (fd < 0)
        nj_error_prefix("backups/%s/%s", id, name);
    return nj_stream_fd(fd);
}

static int obj_staging_link(struct nj_store *s, const char *id,
                           const char *name, const char *from_id,
                           const char *from_name)
{
    struct obj_store *st = to_obj(s);
    NJ_CLEANUP_CLOSE int fd = spool_add(st, id, name);
    if (fd < 0 || fetch_published(st, from_id, from_name, fd) < 0)
        return nj_error_prefix("link '%s/%s'", from_id, from_name);
    return 0;
}

/* Delete keys, the manifests of every generation first, oldest first (so
 * no older generation becomes the newest), then the rest.  keep_gen: a
 * generation left alone (0: none); keep_flags: leave flags/ alone. */
static int delete_backup_keys(struct obj_store *st, char **keys, size_t n,
                              const char *id, unsigned keep_gen,
                              bool keep_flags)
{
    NJ_CLEANUP_FREE char *prefix = key_of(st, "backups/%s/", id);
    size_t plen = strlen(prefix);
    /* S3 lists in key order, and g%08u sorts by number. */
    const char **rest = nj_calloc(n + 1, sizeof *rest);
    size_t nrest = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned gen = 0;
        int used = 0;
        const char *r = keys[i] + plen;
        bool gfile = sscanf(r, "g%8u/%n", &gen, &used) == 1 && used == 10;
        if ((gfile && gen == keep_gen) ||
            (keep_flags && strncmp(r, "flags/", 6) == 0))
            continue;
        if (gfile && strcmp(r + used, NJ_MANIFEST_NAME) == 0) {
            if (nj_obj_delete(st->obj, keys[i]) < 0) {
                free(rest);
                return -1;
            }
            continue;
        }
        rest[nrest++] = keys[i];
    }
    int r = nrest ? nj_obj_delete_many(st->obj, rest, nrest) : 0;
    free(rest);
    return r;
}

static int obj_backup_replace(struct nj_store *s, const char *staged_id,
                             const char *id)
{
    struct obj_store *st = to_obj(s);
    struct staged *sg = staged_take(st, staged_id);
    if (!sg)
        return -1;
    struct backup_gens g;
    char **keys = NULL;
    size_t n = 0;
    int ret = backup_scan(st, id, &g, &keys, &n);
    if (ret == 0 && g.newest == 0)
        ret = nj_error("replace '%s': no such backup", id);
    unsigned gen = g.highest + 1;
    if (ret == 0)
        ret = upload_generation(st, sg, id, gen);
    if (ret == 0)
        gen_set(st, id, gen);
    staged_free(sg);
    if (ret == 0) {
        NJ_CLEANUP_FREE char *okey =
            key_of(st, "staging/%s/owner.json", staged_id);
        nj_obj_delete(st->obj, okey);
        /* The new generation is the backup now; the old ones are garbage
         * that gc would also find. */
        if (delete_backup_keys(st, keys, n, id, gen, true) < 0)
            ret = 0; /* left for gc: the replace itself is done */
    }
    for (size_t i = 0; i < n; i++)
        free(keys[i]);
    free(keys);
    return ret;
}

static int obj_backup_remove(struct nj_store *s, const char *id)
{
    struct obj_store *st = to_obj(s);
    struct backup_gens g;
    char **keys = NULL;
    size_t n = 0;
    int ret = backup_scan(st, id, &g, &keys, &n);
    if (ret == 0 && n == 0) {
        errno = ENOENT;
        ret = nj_error("remove '%s': no such backup", id);
    }
    gen_set(st, id, 0);
    if (ret == 0)
        ret = delete_backup_keys(st, keys, n, id, 0, false);
    for (size_t i = 0; i < n; i++)
        free(keys[i]);
    free(keys);
    if (ret < 0)
        return nj_error_prefix("remove backup '%s'", id);
    return 0;
}

static int obj_backup_set_flag(struct nj_store *s, const char *id,
                              const char *flag, bool on)
{
    struct obj_store *st = to_obj(s);
    bool cached = false;
    NJ_CLEANUP_FREE char *mkey = published_key(st, id, NJ_MANIFEST_NAME,
                                               true, &cached);
    if (!mkey)
        return -1;
    NJ_CLEANUP_FREE char *key = key_of(st, "backups/%s/flags/%s", id, flag);
    int r = on ? nj_obj_put(st->obj, key, "", 0, NJ_OBJ_REPLACE, NULL, NULL)
               : nj_obj_delete(st->obj, key);
    return r < 0 ? nj_error_prefix("flag '%s' of '%s'", flag, id) : 0;
}

static int obj_backup_has_flag(struct nj_store *s, const char *id,
                              const char *flag)
{
    struct obj_store *st = to_obj(s);
    NJ_CLEANUP_FREE char *key = key_of(st, "backups/%s/flags/%s", id, flag);
    uint64_t size = 0;
    int r = nj_obj_head(st->obj, key, &size, NULL, NULL);
    if (r < 0)
        return nj_error_prefix("flag '%s' of '%s'", flag, id);
    return r;
}

/* ---- garbage collection ---- */

static int obj_chunk_mark(struct nj_store *s, const struct nj_digest *d)
{
    struct obj_store *st = to_obj(s);
    pthread_mutex_lock(&st->lock);
    if (!st->marks)
        st->marks = nj_marks_new();
    nj_marks_add(st->marks, d);
    pthread_mutex_unlock(&st->lock);
    return 0;
}

/* Writers registered (staging/ not empty): 1; none: 0; -1 on error. */
static int writers_present(struct obj_store *st)
{
    char **ids = list_dirs(st, "staging");
    if (!ids)
        return -1;
    int r = ids[0] != NULL;
    nj_strv_free(ids);
    return r;
}

static bool parse_chunk_key(const char *rest, struct nj_digest *d)
{
    /* "XX/<64 hex>" */
    if (strlen(rest) != 3 + NJ_DIGEST_HEX_LEN || rest[2] != '/' ||
        strncmp(rest, rest + 3, 2) != 0)
        return false;
    return nj_digest_from_hex(rest + 3, d) == 0;
}

struct sweep {
    struct obj_store *st;
    const char **batch;
    uint64_t *bytes;
    size_t n;
    bool stopped;
    uint64_t *freed, *freed_bytes, *kept, *kept_bytes;
};

/* Delete the batch, unless a writer has registered since gc began (then
 * stop: the batch is kept).  0 or -1. */
static int sweep_flush(struct sweep *sw)
{
    if (sw->n == 0)
        return 0;
    int w = sw->stopped ? 1 : writers_present(sw->st);
    if (w < 0)
        return -1;
    if (w == 0 && nj_obj_delete_many(sw->st->obj, sw->batch, sw->n) < 0)
        return -1;
    for (size_t i = 0; i < sw->n; i++) {
        if (w == 0) {
            (*sw->freed)++;
            *sw->freed_bytes += sw->bytes[i];
        } else {
            (*sw->kept)++;
            *sw->kept_bytes += sw->bytes[i];
        }
        free((char *)sw->batch[i]);
    }
    sw->stopped |= w == 1;
    sw->n = 0;
    return 0;
}

/* Remove what interrupted publishes and merges left under backups/: keys
 * of generations newer or older than the newest one with a manifest, and
 * of ids with no manifest at all, once older than tmp_cutoff.  Keys that
 * do not fit the layout are left alone. */
static int sweep_backups(struct obj_store *st, int64_t tmp_cutoff,
                         uint64_t *removed)
{
    char **ids = list_dirs(st, "backups");
    if (!ids)
        return -1;
    int ret = 0;
    for (char **id = ids; ret == 0 && *id; id++) {
        NJ_CLEANUP_FREE char *prefix = key_of(st, "backups/%s/", *id);
        size_t plen = strlen(prefix);
        struct backup_gens g;
        if (backup_scan(st, *id, &g, NULL, NULL) < 0) {
            ret = -1;
            break;
        }
        char *token = NULL;
        do {
            struct nj_obj_page page = { 0 };
            if (nj_obj_list(st->obj, prefix, NULL, &token, &page) < 0) {
                ret = -1;
                break;
            }
            const char **del = nj_calloc(page.nobjects + 1, sizeof *del);
            size_t nd = 0;
            for (size_t i = 0; i < page.nobjects; i++) {
                const char *r = page.objects[i].key + plen;
                unsigned gen = 0;
                int used = 0;
                bool gfile = sscanf(r, "g%8u/%n", &gen, &used) == 1 &&
                             used == 10;
                bool flag = strncmp(r, "flags/", 6) == 0;
                bool stale = page.objects[i].mtime < tmp_cutoff;
                if (stale && ((gfile && gen != g.newest) ||
                              (flag && g.newest == 0)))
                    del[nd++] = page.objects[i].key;
            }
            if (nd && writers_present(st) == 0 &&
                nj_obj_delete_many(st->obj, del, nd) == 0)
                *removed += nd;
            free(del);
            nj_obj_page_clear(&page);
        } while (token);
    }
    nj_strv_free(ids);
    return ret;
}

/*
 * Why a backup running meanwhile never loses a chunk, on object storage:
 *
 * Objects have no mtime a reader can set and no atomic rename, so the
 * directory's argument (nj-gc.c) does not carry over.  Instead gc and
 * writers exclude each other through two kinds of object, under strong
 * read-after-write consistency (radosgw, and AWS S3 since 2020):
 *  - gc takes the lease locks/.gc.lease (nj_store_gc_begin) before it lists
 *    a single manifest, and holds it until the sweep ends;
 *  - a writer creates staging/<id>/owner.json first, and only then reads
 *    locks/.gc.lease, waiting while a live gc holds it, before it relies on
 *    any chunk it did not upload itself.
 * Every delete the sweep issues is preceded, after the gc lease was taken,
 * by a listing of staging/ that found it empty (dead writers' records were
 * removed by nj-gc.c's oldest_running, which takes their domain lease).
 * Take a writer W and a delete D.  If W's record was created before that
 * listing, the listing would have seen it: no D.  Otherwise W's record,
 * hence W's read of the gc lease, came after the gc lease was taken, so W
 * waited for gc to end before deduplicating against anything: D cannot
 * remove a chunk W relies on.  The chunks W uploads itself are younger
 * than the cutoff (nj-gc.c puts it before the grace period and the start
 * of any backup still running), and W's committed manifest, if any, is
 * listed by the mark.  A writer whose domain lease expired (it could not
 * renew) refuses to publish, so a record gc judged dead never commits.
 * The price: a sweep deletes nothing while any backup is running; it
 * reports how much it kept.
 */
static int obj_gc_sweep(struct nj_store *s, int64_t cutoff, int64_t tmp_cutoff,
                       uint64_t *kept, uint64_t *kept_bytes, uint64_t *freed,
                       uint64_t *freed_bytes, uint64_t *tmp_removed)
{
    struct obj_store *st = to_obj(s);
    struct sweep sw = { .st = st, .freed = freed, .freed_bytes = freed_bytes,
                        .kept = kept, .kept_bytes = kept_bytes };
    int w = writers_present(st);
    if (w < 0)
        return nj_error_prefix("gc: cannot list the backups running; not "
                               "sweeping");
    sw.stopped = w == 1;
    sw.batch = nj_calloc(DELETE_BATCH, sizeof *sw.batch);
    sw.bytes = nj_calloc(DELETE_BATCH, sizeof *sw.bytes);
    NJ_CLEANUP_FREE char *prefix = key_of(st, "chunks/");
    size_t plen = strlen(prefix);
    char *token = NULL;
    int ret = 0;
    do {
        struct nj_obj_page page = { 0 };
        if (nj_obj_list(st->obj, prefix, NULL, &token, &page) < 0) {
            ret = nj_error_prefix("gc: list chunks; sweep stopped");
            break;
        }
        for (size_t i = 0; ret == 0 && i < page.nobjects; i++) {
            struct nj_digest d;
            if (!parse_chunk_key(page.objects[i].key + plen, &d))
                continue; /* not a chunk: left alone, uncounted */
            pthread_mutex_lock(&st->lock);
            bool marked = st->marks && nj_marks_has(st->marks, &d);
            pthread_mutex_unlock(&st->lock);
            uint64_t size = page.objects[i].size;
            if (marked || page.objects[i].mtime >= cutoff) {
                (*kept)++;
                *kept_bytes += size;
                continue;
            }
            sw.batch[sw.n] = nj_strdup(page.objects[i].key);
            sw.bytes[sw.n++] = size;
            if (sw.n == DELETE_BATCH && sweep_flush(&sw) < 0)
                ret = nj_error_prefix("gc: sweep stopped");
        }
        nj_obj_page_clear(&page);
    } while (ret == 0 && token);
    free(token);
    if (ret == 0 && sweep_flush(&sw) < 0)
        ret = nj_error_prefix("gc: sweep stopped");
    for (size_t i = 0; i < sw.n; i++)
        free((char *)sw.batch[i]);
    free(sw.batch);
    free(sw.bytes);
    if (ret == 0 && !sw.stopped)
        ret = sweep_backups(st, tmp_cutoff, tmp_removed);
    if (ret == 0 && sw.stopped)
        fprintf(stderr, "nightjar: gc: backups are running; no chunk was "
                        "removed (run gc again when none is)\n");
    pthread_mutex_lock(&st->lock);
    if (ret == 0 && !sw.stopped && st->marks && !nj_marks_exact(st->marks))
        fprintf(stderr, "nightjar: gc: %zu chunks referenced: marked in a "
                        "filter of %zu KiB, which keeps about 1%% of the "
                        "garbage for a later run\n",
                nj_marks_count(st->marks), nj_marks_bytes(st->marks) >> 10);
    nj_marks_free(st->marks);
    st->marks = NULL;
    pthread_mutex_unlock(&st->lock);
    return ret;
}

/* ---- open and close ---- */

static void obj_close(struct nj_store *s)
{
    struct obj_store *st = to_obj(s);
    /* Background puts call back into st: none may be left. */
    if (st->obj)
        chunks_settled(st);
    pthread_mutex_lock(&st->lock);
    st->stopping = true;
    pthread_cond_broadcast(&st->wake);
    pthread_mutex_unlock(&st->lock);
    if (st->renewer_running)
        pthread_join(st->renewer, NULL);
    /* Leases still held are released now; their handles stay valid
     * (unlock then only closes them). */
    for (size_t i = 0; i < st->leases.len; i++) {
        struct lease *l = st->leases.ptr[i];
        lease_release(st, l);
        pthread_mutex_lock(&lease_registry_lock);
        l->st = NULL;
        pthread_mutex_unlock(&lease_registry_lock);
    }
    lease_vec_reset(&st->leases);
    gen_vec_reset(&st->gens);
    for (size_t i = 0; i < st->staged.len; i++)
        staged_free(st->staged.ptr[i]);
    staged_vec_reset(&st->staged);
    dset_free(&st->known);
    nj_marks_free(st->marks);
    nj_obj_free(st->obj);
    pthread_mutex_destroy(&st->lock);
    pthread_cond_destroy(&st->wake);
    pthread_cond_destroy(&st->renewed);
    pthread_cond_destroy(&st->put_done);
    free(st->put_error);
    free(st->prefix);
    free(st->base.path);
    free(st);
}

static bool obj_transfer_stats(struct nj_store *s, struct nj_store_transfer *t)
{
    struct nj_obj_stats st;
    if (!nj_obj_stats(to_obj(s)->obj, &st))
        return false;
    t->requests = st.requests;
    t->retries = st.retries;
    t->bytes_sent = st.bytes_sent;
    t->bytes_received = st.bytes_received;
    return true;
}

static const struct nj_store_ops obj_ops = {
    .name = "s3",
    .close = obj_close,
    .chunk_put = obj_chunk_put,
    .chunk_exists = obj_chunk_exists,
    .chunk_get = obj_chunk_get,
    .sync = obj_sync,
    .staging_create = obj_staging_create,
    .staging_open = obj_staging_open,
    .staging_put = obj_staging_put,
    .backup_publish = obj_backup_publish,
    .staging_remove = obj_staging_remove,
    .staging_clean = obj_staging_clean,
    .backup_list = obj_backup_list,
    .backup_read = obj_backup_read,
    .backup_open = obj_backup_open,
    .lock_domain = obj_lock_domain,
    .staging_link = obj_staging_link,
    .backup_replace = obj_backup_replace,
    .backup_remove = obj_backup_remove,
    .backup_set_flag = obj_backup_set_flag,
    .backup_has_flag = obj_backup_has_flag,
    .chunk_mark = obj_chunk_mark,
    .gc_sweep = obj_gc_sweep,
    .staging_list = obj_staging_list,
    .staging_owner = obj_staging_owner,
    .gc_begin = obj_gc_begin,
    .chunk_present = obj_chunk_present,
    .chunk_known = obj_chunk_known,
    .chunk_put_async = obj_chunk_put_async,
    .settle = obj_settle,
    .transfer_stats = obj_transfer_stats,
};

static void read_id_file(const char *path, char *out, size_t size)
{
    out[0] = '\0';
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0)
        return;
    ssize_t n = read(fd, out, size - 1);
    close(fd);
    out[n > 0 ? n : 0] = '\0';
    out[strcspn(out, "\n")] = '\0';
}

/* Host identity: NIGHTJAR_HOST_ID, /etc/machine-id or the host name,
 * reduced to a store name. */
static void host_identity(struct obj_store *st)
{
    const char *env = getenv("NIGHTJAR_HOST_ID");
    if (env && *env)
        snprintf(st->host, sizeof st->host, "%s", env);
    else
        read_id_file("/etc/machine-id", st->host, sizeof st->host);
    if (!st->host[0] && gethostname(st->host, sizeof st->host - 1) < 0)
        snprintf(st->host, sizeof st->host, "unknown");
    for (char *p = st->host; *p; p++)
        if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                    "0123456789._-", *p))
            *p = '_';
    if (st->host[0] == '.' || !st->host[0])
        st->host[0] = '_';
    read_id_file("/proc/sys/kernel/random/boot_id", st->boot, sizeof st->boot);
    const char *ttl = getenv("NIGHTJAR_LEASE_TTL");
    long t = ttl ? strtol(ttl, NULL, 10) : 0;
    st->ttl = t >= 2 && t <= 86400 ? t : LEASE_TTL_DEFAULT;
}

/* s3://BUCKET[/PREFIX]: bucket as S3 allows it (3..63 of [a-z0-9.-]),
 * prefix segments store names. */
static int parse_url(const char *url, char **bucket, char **prefix)
{
    const char *b = url + 5;
    size_t blen = strcspn(b, "/");
    if (blen < 3 || blen > 63 || strspn(b, "abcdefghijklmnopqrstuvwxyz"
                                           "0123456789.-") < blen)
        return nj_error("'%s': not a valid S3 bucket name", url);
    *bucket = nj_calloc(1, blen + 1);
    memcpy(*bucket, b, blen);
    const char *p = b + blen;
    while (*p == '/')
        p++;
    NJ_CLEANUP_FREE char *pre = nj_strdup(p);
    size_t l = strlen(pre);
    while (l > 0 && pre[l - 1] == '/')
        pre[--l] = '\0';
    if (l > 512) {
        free(*bucket);
        return nj_error("'%s': prefix too long", url);
    }
    for (char *seg = pre, *next; l > 0 && seg; seg = next) {
        next = strchr(seg, '/');
        if (next)
            *next++ = '\0';
        if (!nj_store_name_valid(seg)) {
            free(*bucket);
            return nj_error("'%s': prefix segment '%s' is not a store name "
                            "([A-Za-z0-9._-], not starting with '.')",
                            url, seg);
        }
        if (next)
            next[-1] = '/';
    }
    *prefix = l ? nj_asprintf("%s/", pre) : nj_strdup("");
    return 0;
}

/* Whether the namespace keeps the two preconditions leases and commits
 * rest on: a second create-only put of a key fails, and so does a put
 * that names the wrong tag.  A server that ignores If-None-Match (some
 * S3 look-alikes do) would let two writers both "create" one lease and
 * let a commit overwrite a backup: such a store is refused, never made,
 * unless NIGHTJAR_S3_NO_CONDITIONAL=1 asks for emulated conditions ("force":
 * emulated without asking the server).  0 honoured; 1 to be emulated; -1
 * refused or failed. */
static int check_conditional(struct obj_store *st, const char *url)
{
    const char *opt = getenv("NIGHTJAR_S3_NO_CONDITIONAL");
    if (opt && strcmp(opt, "force") == 0)
        return 1;
    NJ_CLEANUP_FREE char *key = key_of(st, "locks/probe.%s.%ld", st->host,
                                       (long)getpid());
    char tag[NJ_OBJ_TAG_MAX];
    int r1 = nj_obj_put(st->obj, key, "1", 1, NJ_OBJ_CREATE, NULL, tag);
    int r2 = r1 == 0 ? nj_obj_put(st->obj, key, "2", 1, NJ_OBJ_CREATE, NULL,
                                  NULL)
                     : -1;
    int r3 = r2 == 1 ? nj_obj_put(st->obj, key, "3", 1, NJ_OBJ_IF_MATCH,
                                  "0000000000000000", NULL)
                     : -1;
    int e = errno;
    nj_obj_delete(st->obj, key);
    if (r1 < 0 || (r2 < 0 && r1 == 0) || (r3 < 0 && r2 == 1)) {
        errno = e;
        return nj_error_prefix("create store '%s'", url);
    }
    if (r1 != 0 || r2 != 1 || r3 != 1) {
        if (opt && strcmp(opt, "1") == 0)
            return 1;
        return nj_error("'%s': the server does not honour conditional PUT "
                        "(If-None-Match: *, If-Match); leases and commits "
                        "would not be safe, so no store is made there "
                        "(NIGHTJAR_S3_NO_CONDITIONAL=1 makes one with "
                        "emulated, weaker conditions)", url);
    }
    return 0;
}

/* The settle time of emulated conditional puts: NIGHTJAR_S3_SETTLE_MS, or
 * 5 s. */
static unsigned settle_ms(void)
{
    const char *v = getenv("NIGHTJAR_S3_SETTLE_MS");
    char *end = NULL;
    unsigned long ms = v ? strtoul(v, &end, 10) : 0;
    return v && *v && !*end && ms >= 1 && ms <= 600000 ? (unsigned)ms : 5000;
}

/* Whether a marker says the store's server ignores conditional puts. */
static bool marker_unconditional(const char *text, size_t len)
{
    struct json_tokener *tok = json_tokener_new();
    struct json_object *o = json_tokener_parse_ex(tok, text, (int)len);
    json_tokener_free(tok);
    struct json_object *c = NULL;
    bool r = o && json_object_object_get_ex(o, "s3_conditional", &c) &&
             json_object_is_type(c, json_type_boolean) &&
             !json_object_get_boolean(c);
    json_object_put(o);
    return r;
}

/* Open the store under prefix ("" or "PREFIX/") of the namespace o (taken
 * over, freed on failure); url names it in messages.  on_dir: the objects
 * are files of a directory, where a version-1 marker means the other
 * layout (an S3 store has only this one: markers written by nightjar
 * builds before directories took it say 1). */
static struct nj_store *store_open(struct nj_objects *o, bool on_dir,
                                   const char *url, char *prefix,
                                   unsigned flags)
{
    struct obj_store *st = nj_calloc(1, sizeof *st);
    st->base.ops = &obj_ops;
    st->base.path = nj_strdup(url);
    st->prefix = prefix;
    st->obj = o;
    pthread_mutex_init(&st->lock, NULL);
    pthread_cond_init(&st->wake, NULL);
    pthread_cond_init(&st->renewed, NULL);
    pthread_cond_init(&st->put_done, NULL);
    host_identity(st);
    NJ_CLEANUP_FREE char *mkey = key_of(st, "%s", NJ_STORE_MARKER);
    void *text = NULL;
    size_t len = 0;
    int r = nj_obj_get(st->obj, mkey, 65536, &text, &len);
    if (r < 0 && errno == ENOENT && (flags & NJ_STORE_CREATE)) {
        /* A new store: in a bucket (directory) made if needed, under a
         * prefix that holds nothing yet. */
        char *token = NULL;
        struct nj_obj_page page = { 0 };
        if (nj_obj_create(st->obj) < 0 ||
            nj_obj_list(st->obj, st->prefix, NULL, &token, &page) < 0) {
            nj_error_prefix("create store '%s'", url);
            obj_close(&st->base);
            return NULL;
        }
        bool empty = page.nobjects == 0;
        nj_obj_page_clear(&page);
        free(token);
        if (!empty) {
            nj_error("'%s' is not a nightjar store and not empty; refusing "
                     "to create a store there", url);
            obj_close(&st->base);
            return NULL;
        }
        int cond = on_dir ? 0 : check_conditional(st, url);
        if (cond < 0) {
            obj_close(&st->base);
            return NULL;
        }
        NJ_CLEANUP_FREE char *body =
            nj_store_marker_new(NJ_STORE_FORMAT_VERSION);
        if (cond == 1) {
            /* Recorded, so that every host opening the store emulates. */
            struct json_object *m = json_tokener_parse(body);
            json_object_object_add(m, "s3_conditional",
                                   json_object_new_boolean(0));
            free(body);
            body = nj_asprintf("%s\n", json_object_to_json_string_ext(
                                          m, JSON_C_TO_STRING_PRETTY));
            json_object_put(m);
            nj_objects_s3_emulate(st->obj, settle_ms());
        }
        if (nj_obj_put(st->obj, mkey, body, strlen(body), NJ_OBJ_CREATE,
                       NULL, NULL) < 0) {
            nj_error_prefix("create store '%s'", url);
            obj_close(&st->base);
            return NULL;
        }
        r = nj_obj_get(st->obj, mkey, 65536, &text, &len);
    }
    if (r < 0) {
        if (errno == ENOENT)
            nj_error("'%s' is not a nightjar store (no %s)", url,
                     NJ_STORE_MARKER);
        else
            nj_error_prefix("open store '%s'", url);
        obj_close(&st->base);
        return NULL;
    }
    r = nj_store_marker_check(text, len, url);
    if (r > 0 && !on_dir && marker_unconditional(text, len))
        nj_objects_s3_emulate(st->obj, settle_ms());
    free(text);
    if (r == NJ_STORE_FORMAT_V1 && on_dir) {
        r = nj_error("store '%s' has format version 1, the directory "
                     "layout: open it by its path", url);
    }
    if (r < 0) {
        obj_close(&st->base);
        return NULL;
    }
    return &st->base;
}

struct nj_store *nj_store_s3_open(const char *url, unsigned flags)
{
    char *bucket = NULL, *prefix = NULL;
    if (parse_url(url, &bucket, &prefix) < 0)
        return NULL;
    struct nj_s3_config c = { 0 };
    if (nj_s3_config_load(&c, NULL) < 0) {
        free(bucket);
        free(prefix);
        nj_error_prefix("store '%s'", url);
        return NULL;
    }
    struct nj_objects *o = nj_objects_s3_new(&c, bucket);
    nj_s3_config_clear(&c);
    free(bucket);
    if (!o) {
        free(prefix);
        nj_error_prefix("store '%s'", url);
        return NULL;
    }
    return store_open(o, false, url, prefix, flags);
}

/* The same objects as files under path (a path, file:// or obj+file://
 * URL; the directory may be a copy of a bucket). */
struct nj_store *nj_store_objdir_open_path(const char *path,
                                           const char *name, unsigned flags)
{
    return store_open(nj_objects_dir_new(path), true, name, nj_strdup(""),
                      flags);
}
