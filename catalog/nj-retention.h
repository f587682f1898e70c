/*
 * nj-retention.h: which backups a retention policy keeps.
 *
 * The semantics users know from Proxmox Backup Server, restic and borg:
 *
 *  - keep-last N keeps the N newest backups;
 *  - keep-hourly/daily/weekly/monthly/yearly N keep, for each of the N
 *    newest periods (local time; ISO weeks) that have a backup, the newest
 *    backup of that period;
 *  - rules apply in that order, and a period already covered by a backup
 *    that an earlier rule kept does not count again for a later rule;
 *  - periods with no backup do not count;
 *  - protected backups are never removed and count for no rule;
 *  - everything else is removed.
 *
 * Pure logic, no I/O: tests drive it with synthetic calendars.
 */
#ifndef NJ_RETENTION_H
#define NJ_RETENTION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct nj_keep_rules {
    unsigned last, hourly, daily, weekly, monthly, yearly;
};

/* True when no rule is set: callers refuse to prune with no rule, which
 * would remove everything. */
bool nj_keep_rules_empty(const struct nj_keep_rules *r);

enum nj_keep_mark {
    NJ_MARK_REMOVE = 0,
    NJ_MARK_KEEP,
    NJ_MARK_PROTECTED,
};

struct nj_retention_item {
    int64_t time;          /* Unix seconds */
    bool protect;
    /* out */
    enum nj_keep_mark mark;
    char reason[48];       /* "keep-daily 2026-11-21", "keep-last", ... */
};

/* Mark items, which must be sorted newest first. */
void nj_retention_apply(struct nj_retention_item *items, size_t n,
                        const struct nj_keep_rules *r);

#endif
