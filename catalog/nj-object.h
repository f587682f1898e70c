/*
 * nj-object.h: the object primitives a store is built on (private to
 * catalog/).
 *
 * An object namespace is a flat set of keys, each naming an immutable
 * byte string: an S3 bucket (obj-s3.c, over nj-s3.c) or a directory
 * (obj-dir.c, keys as relative paths).  catalog/store-obj.c builds the
 * store of docs/FORMAT.md section 13 on these calls alone, so both
 * namespaces hold the same format, byte for byte: a bucket copied to a
 * directory with any S3 tool opens as "obj+file://DIR", and back.
 *
 * What every implementation guarantees:
 *  - keys are "/"-separated segments of [A-Za-z0-9._-], none empty, none
 *    "." or "..", none starting with ".tmp-" (a directory's temporary
 *    files), at most 1024 bytes; any other key is refused with EINVAL
 *    before anything is asked of the namespace;
 *  - read-after-write: once a put or delete has returned, every later get,
 *    head and list (from any process) sees it; a put is all or nothing (a
 *    reader never sees part of an object, whatever kills the writer);
 *  - NJ_OBJ_CREATE is atomic against every other put of the key: of many
 *    racing creates exactly one returns 0; NJ_OBJ_IF_MATCH is a
 *    compare-and-swap on the object's tag (a tag names one content: it
 *    changes on every put that changes the bytes);
 *  - list returns every key under a prefix in byte order, in pages that
 *    resume after the last key of the previous one; a failed listing is -1,
 *    never a short or empty page, because callers decide deletions on it;
 *  - nothing is followed: on a directory, a symlink, FIFO or device where
 *    an object or a directory of keys should be fails the call that meets
 *    it (EINVAL, "not a regular file") and is never opened blocking;
 *  - durability: S3 makes a put durable before it answers; a directory
 *    makes a put durable at the next nj_obj_sync() (the store calls it
 *    before every put that publishes: a manifest, a lease).
 *
 * What a caller may not assume: that a listing is a snapshot (keys put or
 * deleted during it may or may not appear), that an object's mtime is
 * settable or ordered across hosts beyond the clock skew the caller
 * allows, that a directory of keys exists apart from its objects, that a
 * key may also be the first segments of another ("a" and "a/b": S3 holds
 * both, a directory cannot), or that a rename exists at all.  Leases (store-obj.c) are built on CREATE and
 * IF_MATCH alone.
 *
 * Thread safety: every call may be made from several threads at once,
 * except nj_obj_free().
 */
#ifndef NJ_OBJECT_H
#define NJ_OBJECT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define NJ_OBJ_KEY_MAX 1024
#define NJ_OBJ_TAG_MAX 80 /* with its NUL */

enum nj_obj_put_mode {
    NJ_OBJ_REPLACE,  /* unconditional */
    NJ_OBJ_CREATE,   /* only when the key is absent (If-None-Match: *) */
    NJ_OBJ_IF_MATCH, /* only when the key's tag is the one given */
};
/* A flag, or-ed into a mode: durable only at the next nj_obj_sync() (bulk
 * data whose names are published only after one: chunks).  With CREATE a
 * namespace may also defer making the key visible until then (a directory
 * does, so that no name ever precedes its data on disk); a second create
 * of the key meanwhile answers 1, and a handle freed before the sync may
 * drop it.  Use it only for content-addressed data, where whoever created
 * a key first wrote the same bytes. */
#define NJ_OBJ_LAZY 0x100

/* Counters of requests made (remote namespaces; zeros for a directory):
 * requests counts every attempt, retries the repeated ones among them,
 * bytes the request and response bodies. */
struct nj_obj_stats {
    uint64_t requests, retries, bytes_sent, bytes_received;
};

struct nj_obj_entry {
    char *key;
    uint64_t size;
    int64_t mtime; /* Unix seconds */
};
struct nj_obj_page {
    struct nj_obj_entry *objects;
    size_t nobjects;
    char **prefixes; /* with a delimiter: the common prefixes, each ending
                        with it, in byte order */
    size_t nprefixes;
};
void nj_obj_page_clear(struct nj_obj_page *page);

struct nj_objects;

struct nj_objects_ops {
    const char *name;
    void (*free)(struct nj_objects *o);
    int (*get)(struct nj_objects *o, const char *key, size_t max, void **buf,
               size_t *len);
    ssize_t (*get_range)(struct nj_objects *o, const char *key, uint64_t off,
                         void *buf, size_t len);
    int (*put)(struct nj_objects *o, const char *key, const void *buf,
               size_t len, enum nj_obj_put_mode mode, const char *tag,
               char *tag_out);
    /* Optional (NULL: put, then done, in the caller's thread). */
    int (*put_async)(struct nj_objects *o, const char *key, const void *buf,
                     size_t len, enum nj_obj_put_mode mode,
                     void (*done)(void *arg, int rc), void *arg);
    /* Optional: wait for put_async. */
    void (*wait)(struct nj_objects *o);
    int (*head)(struct nj_objects *o, const char *key, uint64_t *size,
                int64_t *mtime, char *tag);
    int (*del)(struct nj_objects *o, const char *key);
    int (*del_many)(struct nj_objects *o, const char *const *keys, size_t n);
    int (*list)(struct nj_objects *o, const char *prefix,
                const char *delimiter, char **token, struct nj_obj_page *page);
    int (*sync)(struct nj_objects *o);
    int (*create)(struct nj_objects *o);
    void (*stats)(struct nj_objects *o, struct nj_obj_stats *st);
};

struct nj_objects {
    const struct nj_objects_ops *ops;
};

/* A bucket (catalog/obj-s3.c); config and bucket as nj_s3_new takes them. */
struct nj_s3_config;
struct nj_objects *nj_objects_s3_new(const struct nj_s3_config *c,
                                     const char *bucket);
/* A directory (catalog/obj-dir.c): the root is opened now (it need not
 * exist until nj_obj_create). */
struct nj_objects *nj_objects_dir_new(const char *path);
/* Emulate the conditional puts an S3 server ignores (obj-s3.c: look, put,
 * wait settle_ms, look again): weaker, for servers that cannot do better.
 * false when o is not an S3 namespace. */
bool nj_objects_s3_emulate(struct nj_objects *o, unsigned settle_ms);

void nj_obj_free(struct nj_objects *o);

/* GET a whole object of at most max bytes into a new buffer (a NUL added
 * after the end, not counted in *len).  0, or -1 with errno ENOENT when
 * absent, EFBIG when larger than max, EINVAL when not an object (a
 * directory's symlink, FIFO, device). */
int nj_obj_get(struct nj_objects *o, const char *key, size_t max, void **buf,
               size_t *len);
/* Bytes [off, off+len) into buf: the count read (less than len only at the
 * object's end, 0 at or past it), or -1 (ENOENT when absent). */
ssize_t nj_obj_get_range(struct nj_objects *o, const char *key, uint64_t off,
                         void *buf, size_t len);
/* Put buf as key: 0 written (tag_out, when not NULL, receives the new tag,
 * at most NJ_OBJ_TAG_MAX bytes with its NUL); 1 when the precondition
 * failed (CREATE: the key exists; IF_MATCH: its tag is not tag, or it is
 * absent); -1 on error. */
int nj_obj_put(struct nj_objects *o, const char *key, const void *buf,
               size_t len, enum nj_obj_put_mode mode, const char *tag,
               char *tag_out);
/* Queue a put (REPLACE or CREATE) of a private copy of buf; may block
 * while a bounded number are queued.  done(arg, rc) gets what nj_obj_put
 * would return, possibly from another thread (done must not call back into
 * the namespace); done may be NULL.  0 queued, -1 not. */
int nj_obj_put_async(struct nj_objects *o, const char *key, const void *buf,
                     size_t len, enum nj_obj_put_mode mode,
                     void (*done)(void *arg, int rc), void *arg);
/* Wait until every queued put has completed. */
void nj_obj_wait(struct nj_objects *o);
/* 1 present (size, mtime, tag filled where not NULL), 0 absent, -1. */
int nj_obj_head(struct nj_objects *o, const char *key, uint64_t *size,
                int64_t *mtime, char *tag);
/* Delete one key; an absent key is gone already: 0.  0 or -1. */
int nj_obj_delete(struct nj_objects *o, const char *key);
/* Delete keys (absent ones count as deleted); 0 when all are gone, -1
 * naming the first that is not. */
int nj_obj_delete_many(struct nj_objects *o, const char *const *keys,
                       size_t n);
/* One page of the keys beginning with prefix ("" for all).  delimiter:
 * NULL, or "/" to roll keys up at the next "/" after the prefix into
 * page->prefixes.  *token: NULL for the first page, then what the last
 * call left (freed and replaced here; NULL after the last page).  0 with
 * the page (possibly empty), -1 on error. */
int nj_obj_list(struct nj_objects *o, const char *prefix,
                const char *delimiter, char **token, struct nj_obj_page *page);
/* Make every put and delete so far durable (a directory: syncfs). */
int nj_obj_sync(struct nj_objects *o);
/* Make the namespace itself (a bucket, a directory); 0 made or already
 * there, -1. */
int nj_obj_create(struct nj_objects *o);
/* Counters (false and zeros when the namespace keeps none). */
bool nj_obj_stats(struct nj_objects *o, struct nj_obj_stats *st);

/* Whether key is a valid object key (see above). */
bool nj_obj_key_valid(const char *key);

#endif
