/*
 * nj-sync.h: copy committed backups from one store to another (any two
 * backends: directory or S3, either way).
 *
 * Backups the destination lacks are copied oldest first, each under the
 * destination's lock of its domain, keeping its id, parent, times and
 * protected flag (the manifest and indexes are copied byte for byte).
 * Only chunks the destination does not have are read from the source, and
 * each is decoded and checked against its digest before it is written:
 * damage in the source stops that backup, it is never propagated.  Each
 * backup is staged and published in the destination only when every chunk
 * and index it names is there, so an interrupted sync leaves nothing half
 * visible, and the next sync resumes (chunks already copied are found).
 * A backup whose parent is not in the destination (pruned there, or not
 * selected) is refused, not copied into a broken chain.  Prune in the
 * destination is independent: a backup the destination has, even merged
 * by its own prune, is left as it is, and a source backup older than the
 * newest one the destination holds of its domain is skipped (the
 * destination's prune removed it, or it predates the first sync there),
 * so a sync never undoes the destination's retention.
 */
#ifndef NJ_SYNC_H
#define NJ_SYNC_H

#include "nj-store.h"

#include <stdbool.h>
#include <stdint.h>

struct nj_sync_stats {
    unsigned backups_copied, backups_present, backups_skipped, backups_failed;
    uint64_t chunks_copied, chunks_present, bytes_copied; /* bytes: frames */
    double seconds;
};

/* A line per backup copied or failed goes to report(arg, line) when not
 * NULL.  domains: NULL (all) or a NULL-terminated list of domain names or
 * UUIDs.  0 when every selected backup is in dst afterwards; -1 with the
 * last error naming the first failure otherwise (the others are still
 * tried). */
int nj_sync(struct nj_store *src, struct nj_store *dst,
            const char *const *domains, struct nj_sync_stats *st,
            void (*report)(void *arg, const char *line), void *arg);

#endif
