/*
 * store-backend.h: the interface a store backend implements (private to
 * catalog/).  struct nj_store is the base every backend embeds first.
 *
 * Each op implements the nj_store_* call of the same name, with the
 * contract written in nj-store.h; names passed in have been checked with
 * nj_store_name_valid() by the front end.  What every backend guarantees
 * on top, because the store's content is hostile:
 *  - no op follows a symlink found in the store, blocks on a FIFO or
 *    device found there, or creates, writes, truncates or touches a file
 *    outside the store;
 *  - files handed out as streams (staging_open, backup_open) are regular
 *    files or what the backend keeps for them; values read from the store
 *    (owner records) are validated;
 *  - list ops distinguish failure (NULL, last error set) from an empty
 *    listing (an array holding only NULL): callers decide deletions on
 *    them and must be able to fail closed;
 *  - new files are created 0600 and new directories 0700.
 */
#ifndef NJ_STORE_BACKEND_H
#define NJ_STORE_BACKEND_H

#include "nj-store.h"

struct nj_store_ops {
    const char *name;
    void (*close)(struct nj_store *s);
    int (*chunk_put)(struct nj_store *s, const struct nj_digest *d,
                     const void *frame, size_t len);
    int (*chunk_exists)(struct nj_store *s, const struct nj_digest *d);
    ssize_t (*chunk_get)(struct nj_store *s, const struct nj_digest *d,
                         void **buf, size_t *cap);
    int (*sync)(struct nj_store *s);
    int (*staging_create)(struct nj_store *s, const char *id,
                          const char *owner_json);
    struct nj_stream *(*staging_open)(struct nj_store *s, const char *id,
                                      const char *name);
    int (*staging_put)(struct nj_store *s, const char *id, const char *name,
                       const void *buf, size_t len);
    int (*backup_publish)(struct nj_store *s, const char *id);
    int (*staging_remove)(struct nj_store *s, const char *id);
    int (*staging_clean)(struct nj_store *s, const char *owner_key);
    char **(*backup_list)(struct nj_store *s);
    char *(*backup_read)(struct nj_store *s, const char *id, const char *name,
                         size_t max, size_t *len);
    struct nj_stream *(*backup_open)(struct nj_store *s, const char *id,
                                     const char *name);
    int (*lock_domain)(struct nj_store *s, const char *key,
                       const char *display_name);
    int (*staging_link)(struct nj_store *s, const char *id, const char *name,
                        const char *from_id, const char *from_name);
    int (*backup_replace)(struct nj_store *s, const char *staged_id,
                          const char *id);
    int (*backup_remove)(struct nj_store *s, const char *id);
    int (*backup_set_flag)(struct nj_store *s, const char *id,
                           const char *flag, bool on);
    int (*backup_has_flag)(struct nj_store *s, const char *id,
                           const char *flag);
    int (*chunk_mark)(struct nj_store *s, const struct nj_digest *d);
    int (*gc_sweep)(struct nj_store *s, int64_t cutoff, int64_t tmp_cutoff,
                    uint64_t *kept, uint64_t *kept_bytes, uint64_t *freed,
                    uint64_t *freed_bytes, uint64_t *tmp_removed);
    char **(*staging_list)(struct nj_store *s);
    /* 1 filled, 0 no record, -1 unreadable or invalid. */
    int (*staging_owner)(struct nj_store *s, const char *id,
                         struct nj_store_owner *o);
    /* Optional: exclude writers' reliance on old chunks while gc runs
     * (object stores; see store-obj.c).  A lock handle, or -1. */
    int (*gc_begin)(struct nj_store *s);
    /* Optional: a real existence check (S3: HEAD) where chunk_exists may
     * answer 0 for a chunk it has not seen; NULL: chunk_exists. */
    int (*chunk_present)(struct nj_store *s, const struct nj_digest *d);
    /* Optional: put a chunk in the background (see nj-store.h). */
    int (*chunk_put_async)(struct nj_store *s, const struct nj_digest *d,
                           const void *frame, size_t len,
                           void (*done)(void *arg, int rc), void *arg);
    /* Optional, with chunk_put_async: wait for every background put. */
    void (*settle)(struct nj_store *s);
    /* Optional: note a chunk the caller knows to exist (object stores:
     * chunk_exists then answers 1 for it without a request). */
    void (*chunk_known)(struct nj_store *s, const struct nj_digest *d);
    /* Optional: request counters of a remote backend; false when it keeps
     * none. */
    bool (*transfer_stats)(struct nj_store *s, struct nj_store_transfer *t);
};

struct nj_store {
    const struct nj_store_ops *ops;
    char *path;
};

struct nj_store *nj_store_dir_open(const char *path, unsigned flags);
/* The object store of catalog/store-obj.c, on an S3 bucket (url:
 * "s3://BUCKET" or "s3://BUCKET/PREFIX") or on a directory (path; name
 * names the store in messages: the path or the URL it came from). */
struct nj_store *nj_store_s3_open(const char *url, unsigned flags);
struct nj_store *nj_store_objdir_open_path(const char *path,
                                           const char *name, unsigned flags);
/* Release the object store lease whose handle this is: true when it was
 * one. */
bool nj_store_obj_unlock(int handle);

/* What every backend shares: the store marker (its text, newly made, and
 * its check; path names the store in messages) and the owner record. */
#define NJ_STORE_MARKER "nightjar-store.json"
#define NJ_STORE_FORMAT_NAME "nightjar-store"
#define NJ_STORE_OWNER_MAX 65536
#define NJ_STORE_OWNER_STARTED_MAX (INT64_C(1) << 40) /* seconds: year 36812 */
/* marker_new: the marker of a new store of that format version; check:
 * the version (NJ_STORE_FORMAT_V1 or NJ_STORE_FORMAT_VERSION), or -1. */
char *nj_store_marker_new(int version);
int nj_store_marker_check(const char *text, size_t len, const char *path);
/* Parse and validate an owner record (name: for messages): 1 with *o
 * filled, -1 with the last error set. */
int nj_store_owner_parse(const char *text, size_t len, const char *name,
                         struct nj_store_owner *o);


#endif
