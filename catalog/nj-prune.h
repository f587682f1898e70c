/*
 * nj-prune.h: removing backups without breaking chains, and garbage
 * collection of the chunks no backup uses any more.
 */
#ifndef NJ_PRUNE_H
#define NJ_PRUNE_H

#include <stdbool.h>
#include <stdint.h>

#include "nj-catalog.h"
#include "nj-retention.h"

/*
 * Remove backup id.  Each child of the backup first takes over the
 * backup's index entries for every range the child itself does not cover
 * (metadata only: the chunks are shared), so every kept restore point
 * gives exactly the bytes it gave before; a child of a removed full
 * becomes a full.  Each child is replaced atomically (its id stays); the
 * backup disappears last.  Killed at any instant, the store stays valid
 * and no kept point changes.  The caller holds the domain's lock.
 * Refused, with nothing changed, when the backup is protected or its
 * protection (or a child's) cannot be read, and when a child is of another
 * domain or its chain through the backup is broken (no merge across
 * domains or chains).
 */
int nj_prune_remove(struct nj_store *s, const char *id);

/* One backup and what a retention policy decides for it. */
struct nj_prune_decision {
    char *id, *domain, *uuid;
    int64_t time;
    enum nj_level level;
    enum nj_keep_mark mark;
    char reason[48];
    bool removed;      /* after nj_prune_apply */
    char *error;       /* after nj_prune_apply, when removing failed */
};

/* Decide, per domain (all, or the one named: name or UUID), which
 * backups the rules keep.  Copies are judged like any backup.  *out is
 * sorted by domain, then newest first. */
int nj_prune_plan(struct nj_store *s, const char *domain,
                  const struct nj_keep_rules *r,
                  struct nj_prune_decision **out, size_t *n);
/* Remove what the plan marks for removal, oldest first, holding each
 * domain's lock.  Returns 0 when every removal succeeded. */
int nj_prune_apply(struct nj_store *s, struct nj_prune_decision *d, size_t n);
void nj_prune_plan_free(struct nj_prune_decision *d, size_t n);

/* Protect a backup from prune (or lift the protection). */
int nj_prune_protect(struct nj_store *s, const char *id, bool on);
/* 1 when protected, 0 when not, -1 with the last error when the flag
 * cannot be read (callers must then act as if it were protected). */
int nj_prune_is_protected(struct nj_store *s, const char *id);

struct nj_gc_stats {
    uint64_t chunks_kept, bytes_kept;
    uint64_t chunks_freed, bytes_freed;
    uint64_t referenced;     /* chunk references marked (with repeats) */
    uint64_t tmp_removed;    /* stale temporary files removed */
    double seconds;
};

/*
 * Mark and sweep.  Every chunk a committed backup references is marked
 * (its modification time set to now); chunks not touched since the start
 * of the run minus `grace` seconds are removed.  Safe against backups
 * running at the same time: see the argument in nj-gc.c.
 */
int nj_gc(struct nj_store *s, int64_t grace, struct nj_gc_stats *st);

#endif
