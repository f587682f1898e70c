/*
 * nj-catalog.h: writing backups into a store, and reading its chains.
 *
 * Write side, used by the datapath and the agent:
 *
 *   b = nj_backup_begin(store, &params);     takes the domain lock
 *   d = nj_backup_disk_add(b, "vda", "qcow2", size, full);
 *   nj_backup_put_chunk(b, d, codec, buf, len, &digest);   any thread
 *   nj_backup_disk_append(d, &extent);       in disk-offset order
 *   nj_backup_commit(b);  or  nj_backup_abort(b);
 *   nj_backup_free(b);
 *
 * The backup is invisible until nj_backup_commit() returns 0.  Abort, or
 * a crash at any point before that, leaves every committed backup intact.
 *
 * Read side, used by restore, verify and the agent's chain logic: a
 * catalog is a snapshot of the store's committed manifests, sorted oldest
 * first.  The merged view of a backup's disk (nj_view) walks its chain
 * newest to oldest, so restore writes every byte once.
 */
#ifndef NJ_CATALOG_H
#define NJ_CATALOG_H

#include <stdbool.h>
#include <stdint.h>

#include "nj-chunk.h"
#include "nj-index.h"
#include "nj-manifest.h"
#include "nj-store.h"

struct nj_backup_params {
    const char *domain_name; /* required */
    const char *domain_uuid; /* required: the chain and lock key */
    const char *domain_xml;  /* optional */
    enum nj_level level;
    const char *parent;      /* required for inc and diff, else NULL */
    const char *checkpoint_name; /* optional */
    const char *checkpoint_xml;  /* optional */
    /* The new backup's id (from nj_backup_id_new), or NULL for a new one. */
    const char *id;
    /* A domain lock already taken with nj_backup_lock_domain(): the backup
     * takes it over, even when nj_backup_begin fails, and releases it
     * when freed. */
    bool have_lock;
    int lock_fd;
};

/*
 * Take the domain's lock (the one nj_backup_begin takes) for work that
 * must not race a backup of the domain, e.g. deciding a backup's level and
 * cleaning what a dead run left.  Returns an fd for
 * nj_store_unlock_domain() or for nj_backup_params.lock_fd.
 */
int nj_backup_lock_domain(struct nj_store *s, const char *domain_uuid,
                          const char *domain_name);
/* The lock key of a domain (as recorded in staged backups' owner.json). */
char *nj_backup_lock_key(const char *domain_uuid);
/* The owner record of a staged backup (JSON: lock key, domain, pid,
 * start time), so that a dead writer's staging can be recognised. */
char *nj_backup_owner_json(const char *lock_key, const char *domain);

struct nj_backup;
struct nj_backup_disk;

/* Start a backup.  Refused when another backup of the domain runs, when
 * the parent is missing, of another domain, or a copy. */
struct nj_backup *nj_backup_begin(struct nj_store *s,
                                  const struct nj_backup_params *p);
/* Borrowed: the new backup's id. */
const char *nj_backup_id(const struct nj_backup *b);

/* Add a disk.  full: its index will cover [0, size).  Thread-safe. */
struct nj_backup_disk *nj_backup_disk_add(struct nj_backup *b,
                                          const char *target,
                                          const char *format, uint64_t size,
                                          bool full);
/* Append an index entry (sorted by offset, non-overlapping). */
int nj_backup_disk_append(struct nj_backup_disk *d, const struct nj_extent *e);
/*
 * Hash, encode and store len bytes as one chunk, counting it in d's
 * statistics.  Thread-safe; codec must be the calling thread's own.
 * Fills *digest.  Returns 0, or -1 with the last error.
 */
int nj_backup_put_chunk(struct nj_backup *b, struct nj_backup_disk *d,
                        struct nj_codec *codec, const void *buf, size_t len,
                        struct nj_digest *digest);
/* Record the checkpoint this backup created (before commit). */
void nj_backup_set_checkpoint(struct nj_backup *b, const char *name,
                              const char *xml);

/* Count bytes read from the source and found zero (thread-safe). */
void nj_backup_disk_count(struct nj_backup_disk *d, uint64_t read,
                          uint64_t zero);
/* Record the disk's compression policy: a fixed level (level_min ==
 * level_max, !adaptive) or an adaptive range.  Chunks are counted per
 * level by nj_backup_put_chunk, from the codec's level. */
void nj_backup_disk_set_compression(struct nj_backup_disk *d, bool adaptive,
                                    int level_min, int level_max);
/* Record how long the disk's transfer took. */
void nj_backup_disk_set_usec(struct nj_backup_disk *d, uint64_t usec);
/* Borrowed: the statistics so far. */
const struct nj_disk_stats *nj_backup_disk_stats(const struct nj_backup_disk *d);

int nj_backup_commit(struct nj_backup *b);
/* Drop everything staged.  Safe after a failed commit. */
void nj_backup_abort(struct nj_backup *b);
/* Borrowed: the committed manifest (after nj_backup_commit), or NULL. */
const struct nj_manifest *nj_backup_manifest(const struct nj_backup *b);
/* Releases the domain lock; aborts when not committed. */
void nj_backup_free(struct nj_backup *b);

/* ---- read side ---- */

struct nj_catalog;

struct nj_catalog *nj_catalog_open(struct nj_store *s);
void nj_catalog_free(struct nj_catalog *c);

size_t nj_catalog_count(const struct nj_catalog *c);
/* Borrowed: the i-th manifest, oldest first. */
const struct nj_manifest *nj_catalog_get(const struct nj_catalog *c, size_t i);
const struct nj_manifest *nj_catalog_find(const struct nj_catalog *c,
                                          const char *id);
/* The position of m (a manifest of this catalog) in its order, oldest
 * first, in O(1); SIZE_MAX when m is not one of its manifests. */
size_t nj_catalog_pos(const struct nj_catalog *c, const struct nj_manifest *m);
/* The parent of m as the chain rules accept it, in O(1): 0 with *out set
 * (NULL for a backup without a parent), or -1 with the last error saying
 * why the link is broken (parent missing or damaged, of another domain, a
 * copy, or not older than m: which also rules out every cycle). */
int nj_catalog_parent(const struct nj_catalog *c, const struct nj_manifest *m,
                      const struct nj_manifest **out);
/* Backups present in the store whose manifest cannot be read: count, and
 * the i-th id and error message. */
size_t nj_catalog_broken_count(const struct nj_catalog *c);
const char *nj_catalog_broken_id(const struct nj_catalog *c, size_t i);
const char *nj_catalog_broken_error(const struct nj_catalog *c, size_t i);

/* Does manifest m belong to domain (a name or a UUID)? */
bool nj_manifest_matches_domain(const struct nj_manifest *m,
                                const char *domain);
/*
 * Find a backup: id is a backup id or "latest" (NULL means latest);
 * domain (name or UUID) is required with "latest", optional otherwise.
 */
const struct nj_manifest *nj_catalog_resolve(const struct nj_catalog *c,
                                             const char *domain,
                                             const char *id);
/* The backups a restore of m's disk target needs, newest (m) first,
 * ending at the one where the disk is full, every link checked as
 * nj_catalog_parent does.  O(chain length).  Returns the count written
 * to *out (a new array), or -1 with the last error when broken. */
int nj_catalog_chain(const struct nj_catalog *c, const struct nj_manifest *m,
                     const char *target, const struct nj_manifest ***out);
/* The id of the base (full or copy) at the root of m's chain. */
const char *nj_catalog_chain_root(const struct nj_catalog *c,
                                  const struct nj_manifest *m);

/* Open the index of disk d of backup m: its digest checked against the
 * manifest, and its coverage and entry count too.  NULL with the last
 * error naming the index. */
struct nj_index_reader *nj_manifest_index_open(struct nj_store *s,
                                               const struct nj_manifest *m,
                                               const struct nj_manifest_disk *d);

/* ---- merged view ---- */

struct nj_view;

/* Open the merged view of (m, target): every index of the chain. */
struct nj_view *nj_view_open(struct nj_store *s, const struct nj_catalog *c,
                             const struct nj_manifest *m, const char *target);
/* A view over explicit layers (newest first) of one disk, clipped to
 * size.  With gaps, ranges no layer covers read as ZERO; without, they
 * are left out (for merging indexes, where they must stay uncovered). */
struct nj_view *nj_view_open_layers(struct nj_store *s,
                                    const struct nj_manifest *const *chain,
                                    size_t n, const char *target,
                                    uint64_t size, bool gaps);
uint64_t nj_view_size(const struct nj_view *v);
/* The next segment in disk order: DATA (a chunk range) or ZERO (also used
 * for ranges no backup of the chain covers).  Segments tile [0, size).
 * 1 with *e filled, 0 at the end, -1 on a damaged index. */
int nj_view_next(struct nj_view *v, struct nj_extent *e);
void nj_view_free(struct nj_view *v);

/* A new backup id: "YYYYMMDDTHHMMSSZ-" followed by 8 random hex digits. */
char *nj_backup_id_new(void);

#endif
