/*
 * nj-store.h: a nightjar store, the place backups land in.
 *
 * The store is reached only through these calls; a backend ops table
 * behind them keeps the callers unchanged: catalog/store-obj.c on object
 * primitives (S3, and every new directory store), catalog/store-dir.c for
 * directories of the version-1 layout.  The layouts, the version file and
 * the publication rules are in docs/FORMAT.md.
 *
 * Thread safety: after nj_store_open() every call may be made from several
 * threads at once, except nj_store_close().
 *
 * A store is hostile ground: whoever can write into it may put a symlink,
 * a FIFO or a stray file anywhere.  No call follows a symlink inside the
 * store, blocks on a FIFO, or writes outside it; a file or directory that
 * is not what nightjar expects fails the call that needs it with one line
 * naming it ("'backups/ID/manifest.json' is not a regular file").  Stores
 * are created with directories 0700 and files 0600, whatever the umask.
 */
#ifndef NJ_STORE_H
#define NJ_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "nj-digest.h"
#include "nj-stream.h"

/* Format versions (docs/FORMAT.md section 9): 2 is the object layout
 * (section 13), which every new store gets, on a directory as on S3; 1 is
 * the directory layout of section 2, still read and written where it
 * exists. */
#define NJ_STORE_FORMAT_VERSION 2
#define NJ_STORE_FORMAT_V1 1

struct nj_store;

enum nj_store_open_flags {
    NJ_STORE_CREATE = 1 << 0, /* create the store when path is absent or
                                 an empty directory */
    NJ_STORE_CREATE_V1 = 1 << 1, /* with NJ_STORE_CREATE at a path: the
                                    version-1 directory layout, for tests
                                    of it and for a store shared with
                                    nightjar 0.1 hosts */
};

/* Open the store at a URL: a path or file://PATH for a directory store,
 * s3://BUCKET[/PREFIX] for an S3 store (credentials and endpoint the AWS
 * way, nj-s3.h).  Both hold the same objects through the same code
 * (catalog/store-obj.c on nj-object.h); a directory whose marker says
 * version 1 is opened with the directory layout (catalog/store-dir.c),
 * and obj+file://PATH insists on the object layout.  For a directory,
 * symlinks in path itself are followed: that is the caller's choice; none
 * inside the store is.  Fails with a clear message when the URL is not a
 * store, has an unknown format version or an invalid nightjar-store.json,
 * or lacks one of its directories. */
struct nj_store *nj_store_open(const char *url, unsigned flags);
/* True when url names an S3 store (not a local path). */
bool nj_store_url_is_remote(const char *url);
/* The directory a local store's URL names (a path, file:///PATH,
 * obj+file:///PATH; borrowed from url), or NULL for any other URL. */
const char *nj_store_url_path(const char *url);

void nj_store_close(struct nj_store *s);
/* Borrowed: the path or URL the store was opened with. */
const char *nj_store_path(const struct nj_store *s);

/*
 * Chunks.  put stores a frame under its digest and is idempotent: when the
 * digest already exists it returns 1 and stores nothing.  It returns 0
 * when the frame was written.  A written chunk becomes durable and visible
 * by its name no later than the next nj_store_sync(); the writer keeps a
 * set of pending digests so that a second put of the same digest before
 * then is also recognised.  (The new names themselves are made durable
 * by the syncfs that nj_store_backup_publish does before its rename.)
 */
int nj_store_chunk_put(struct nj_store *s, const struct nj_digest *d,
                       const void *frame, size_t frame_len);
/* Put a chunk in the background where the store can (S3: several uploads
 * in flight while the caller compresses the next): done(arg, rc) gets
 * what nj_store_chunk_put() would return (0 written, 1 it was there, -1),
 * possibly from another thread and before this returns, at the latest
 * before nj_store_sync() returns; frame is copied.  Elsewhere the put runs
 * now.  0, or -1 when it was not queued (done is then not called).  A
 * failed put fails the next nj_store_sync() and publish. */
int nj_store_chunk_put_async(struct nj_store *s, const struct nj_digest *d,
                             const void *frame, size_t frame_len,
                             void (*done)(void *arg, int rc), void *arg);
/* Wait until every background put has called its done (errors are left
 * for nj_store_sync()). */
void nj_store_settle(struct nj_store *s);
/* 1 when present (or pending), 0 when absent, -1 on error (also when
 * something other than a regular file has the chunk's name: deduplicating
 * against it would store a reference to damage).  Finding a chunk sets its
 * mtime (never through a symlink); see nj-gc.c. */
int nj_store_chunk_exists(struct nj_store *s, const struct nj_digest *d);
/* Whether the store holds the chunk, asked of the store itself: 1, 0, or
 * -1.  nj_store_chunk_exists() may answer 0 for a chunk an S3 store has
 * but this handle has not seen (its create-only put then finds it); this
 * asks (a HEAD).  On a directory it is nj_store_chunk_exists(). */
int nj_store_chunk_present(struct nj_store *s, const struct nj_digest *d);
/* Whether nj_store_chunk_known() means anything to this store (object
 * stores; a directory finds a chunk with one stat, which is also gc's
 * mark, so it is never told). */
bool nj_store_takes_known(const struct nj_store *s);
/* Tell the store that chunk d exists because a committed backup that
 * cannot vanish meanwhile references it (the parent chain of a backup
 * holding its domain's lock): its next put costs no request.  Nothing
 * else is ever told so; no cache outlives the handle. */
void nj_store_chunk_known(struct nj_store *s, const struct nj_digest *d);
/* Read a frame into *buf (grown with realloc as needed; *cap is its size).
 * Returns the frame length, or -1 with the last error (ENOENT: missing;
 * EINVAL: not a regular file). */
ssize_t nj_store_chunk_get(struct nj_store *s, const struct nj_digest *d,
                           void **buf, size_t *cap);
/* Make every chunk put so far durable and visible. */
int nj_store_sync(struct nj_store *s);

/*
 * Backup metadata.  A backup is staged (files written under its id while
 * it runs) and published atomically by nj_store_backup_publish(), which
 * makes every staged file appear together.  A staged backup that is never
 * published is invisible and removed by nj_store_staging_clean().
 */
int nj_store_staging_create(struct nj_store *s, const char *id,
                            const char *owner_json);
/* Open a new file in a staged backup for writing (and reading back): a
 * stream, or NULL with the last error.  nj_stream_flush() makes it
 * durable; it is published with the backup. */
struct nj_stream *nj_store_staging_open(struct nj_store *s, const char *id,
                                        const char *name);
/* Publish a buffer as a staged file (durably). */
int nj_store_staging_put(struct nj_store *s, const char *id, const char *name,
                         const void *buf, size_t len);
/* Atomically publish the staged backup id (every chunk is synced first).
 * 0; 1 when published but a directory fsync after the rename failed (the
 * backup exists; its durability across a crash is unknown); -1 when not
 * published. */
int nj_store_backup_publish(struct nj_store *s, const char *id);
/* Drop a staged backup. */
int nj_store_staging_remove(struct nj_store *s, const char *id);
/* Remove staged backups whose valid owner record names owner_key (a
 * domain lock is held by the caller), and directories with no owner record
 * older than a day that hold nothing but temporary files.  Anything else
 * in staging/ (a file, a symlink, an invalid owner record, an ownerless
 * directory with content) is left alone and fails nothing. */
int nj_store_staging_clean(struct nj_store *s, const char *owner_key);

/* Hard-link a published backup's file into a staged backup. */
int nj_store_staging_link(struct nj_store *s, const char *id, const char *name,
                          const char *from_id, const char *from_name);
/* Atomically exchange the staged backup staged_id with the published
 * backup id (which must exist), then drop the old one. */
int nj_store_backup_replace(struct nj_store *s, const char *staged_id,
                            const char *id);
/* Atomically unpublish backup id, then delete it. */
int nj_store_backup_remove(struct nj_store *s, const char *id);
/* Flags of a published backup (e.g. "protected"), kept beside its
 * manifest: set or clear (durably), and test (1, 0, or -1).  The backup's
 * directory is never followed if it is a symlink, and a flag that is not a
 * regular file is an error (-1), never followed; callers that decide a
 * deletion from has_flag must treat -1 as "do not delete". */
int nj_store_backup_set_flag(struct nj_store *s, const char *id,
                             const char *flag, bool on);
int nj_store_backup_has_flag(struct nj_store *s, const char *id,
                             const char *flag);

/*
 * Garbage collection (see catalog/nj-gc.c for the safety argument).
 * mark: set a chunk's modification time to now (0, or 1 when absent or
 * not a regular file: damage that verify reports; it is never followed).
 * sweep: remove chunk files last modified before cutoff (Unix seconds),
 * checking each again after moving it aside, so that a chunk a running
 * backup touches meanwhile survives; also removes stale temporary files
 * older than tmp_cutoff.  Counts into the four totals.  The sweep only
 * ever renames or removes regular files: any other entry in chunks/ is
 * left where it is, uncounted.
 */
int nj_store_chunk_mark(struct nj_store *s, const struct nj_digest *d);
int nj_store_gc_sweep(struct nj_store *s, int64_t cutoff, int64_t tmp_cutoff,
                      uint64_t *kept, uint64_t *kept_bytes, uint64_t *freed,
                      uint64_t *freed_bytes, uint64_t *tmp_removed);
/*
 * Staged backups.  list: the ids of the directories in staging/ (not
 * symlinks, not files), as a NULL-terminated array, EMPTY (not NULL) when
 * there is none.  NULL, with the last error set, means staging/ could not
 * be read: the caller cannot tell whether a backup is running and must
 * act as if one were (gc must not sweep).
 */
char **nj_store_staging_list(struct nj_store *s);

/* A staged backup's owner record, validated: lock is a store name,
 * started a Unix time in [0, 2^40], pid positive or 0 when not recorded. */
struct nj_store_owner {
    char lock[129];
    int64_t started;
    int64_t pid;
};
/* 1 with *o filled; 0 when the staged backup (or its owner record) does
 * not exist; -1 with the last error set when the record is unreadable or
 * invalid (a FIFO, a symlink, bad JSON, a value out of range).  Callers
 * that decide deletions treat -1 as "owner unknown, maybe running". */
int nj_store_staging_owner_get(struct nj_store *s, const char *id,
                               struct nj_store_owner *o);
/* The same record as JSON text {"lock","started","pid"} rebuilt from the
 * validated values, or NULL (absent, unreadable or invalid: the last error
 * says which).  Prefer nj_store_staging_owner_get(). */
char *nj_store_staging_owner(struct nj_store *s, const char *id);

/* Published backups: list ids (a NULL-terminated array to free with
 * nj_strv_free; NULL with the last error when backups/ cannot be read to
 * its end; every entry with a store name is listed, so that one that is
 * not a backup directory is reported as unreadable, never skipped), read a
 * file of one, open one for reading (a stream over a regular file or the
 * object's bytes; no symlink followed, no FIFO waited on; NULL with the
 * last error). */
char **nj_store_backup_list(struct nj_store *s);
char *nj_store_backup_read(struct nj_store *s, const char *id,
                           const char *name, size_t max, size_t *len);
struct nj_stream *nj_store_backup_open(struct nj_store *s, const char *id,
                                       const char *name);

/*
 * Domain locks: one backup per domain at a time.  The lock is an flock on
 * a file in the store, so the kernel drops it when its holder dies and a
 * crashed writer never blocks the next one.  Returns a lock fd, or -1 with
 * "domain 'NAME' is already being backed up (pid N)".  The lock file is
 * created exclusively, or used only when it is a regular file with one
 * link: a symlink or hard link planted there is refused, never written.
 */
int nj_store_lock_domain(struct nj_store *s, const char *key,
                         const char *display_name);
void nj_store_unlock_domain(int fd);

/* Garbage collection's exclusion (S3 stores: a lease that makes new
 * backups wait before they rely on old chunks; see store-obj.c).  Returns a
 * lock handle for nj_store_unlock_domain(), or -1 with "garbage collection
 * is already running ..." ; directory stores need none and return a handle
 * that holds nothing. */
int nj_store_gc_begin(struct nj_store *s);
/* Requests this handle made to a remote store (S3), for reports and
 * benchmarks: false (and zeros) for a directory. */
struct nj_store_transfer {
    uint64_t requests, retries, bytes_sent, bytes_received;
};
bool nj_store_transfer_stats(struct nj_store *s, struct nj_store_transfer *t);
/* True when gc and backups exclude each other on this backend (S3). */
bool nj_store_gc_exclusive(const struct nj_store *s);

void nj_strv_free(char **v);

/* Names that may appear as ids, file names and lock keys in a store:
 * [A-Za-z0-9._-], not starting with '.', at most 128 bytes. */
bool nj_store_name_valid(const char *name);

#endif
