/*
 * nj-gc.c: garbage collection of chunks, mark and sweep.
 *
 * Why a backup running at the same time never loses a chunk:
 *
 * A chunk's modification time is its mark.  GC starts at T0 and computes
 * a cutoff no later than T0 - grace and no later than the start of the
 * oldest backup still running (staging with a live owner, seen through
 * the domain lock).  It then marks, by setting the mtime to now, every
 * chunk that a committed backup listed after T0 references, and removes
 * chunks whose mtime is older than the cutoff.  A backup's chunk is either
 *  (a) one it wrote: written after the backup started, so its mtime is
 *      after the cutoff; or
 *  (b) one it found already there and deduplicated against: finding it
 *      sets its mtime to now (nj_store_chunk_exists touches it), which is
 *      after the cutoff too.
 * The last race is between that touch and the sweep's decision, so the
 * sweep never unlinks a name it has only looked at: it first renames the
 * chunk aside (atomic), then looks at the mtime of what it moved.  A touch
 * that came before the rename is seen, and the chunk goes back under its
 * name; a touch after it finds no file, and the backup writes the chunk
 * anew.  A touch looks the name up before it sets the time, so a rename
 * and the sweep's look can fall in between, the time landing on a file
 * already judged: the backup therefore counts the chunk as found only if
 * its name is still there after the touch (a rename after that check is
 * followed by a look that sees the touch).  Either way the chunk the
 * backup relies on exists when it commits.  Backups that commit during
 * the mark phase are covered by (a) and (b) as well, and prune's merged
 * indexes reference only chunks that the indexes they replace referenced.
 * If any listed backup cannot be read, or staging cannot be listed, GC
 * stops before sweeping: it never removes a chunk on a guess.
 *
 * Crash safety: marks are only timestamps.  A chunk moved aside by a GC
 * killed at that instant (.gc-<name>) is put back by the next run's mark
 * when a committed backup references it (a backup touched it just before
 * it was moved: its mark may be older than the next run's cutoff), and
 * otherwise put back or removed by the sweep's rule.  Until that next
 * run such a chunk is missing for readers.
 *
 * Memory: indexes are streamed, and repeated references are skipped with
 * a fixed-size cache, so memory does not grow with the store.
 */
#include "nj-prune.h"
#include "nj-util.h"

#include <json-c/json.h>
#include <string.h>
#include <time.h>

/* Digests marked lately, so that a chunk referenced again and again is
 * marked once: on a directory each mark is a utimensat, so 8 MiB; an
 * object store's marks (nj-marks.h) fold repeats themselves, so little. */
#define MARK_CACHE_SLOTS (1u << 18)
#define MARK_CACHE_SLOTS_OBJ (1u << 12)
#define START_MARGIN 60             /* seconds of clock slack */
#define MARK_ATTEMPTS 3

/*
 * The oldest start of a backup still running, into *oldest (t0 + 1 when
 * none runs); dead runs' staging is removed on the way (its domain lock is
 * free).  Fails closed: when staging cannot be listed, -1, and the caller
 * sweeps nothing.  An owner record that cannot be read or makes no sense
 * counts as a backup started now (its staging is kept, the cutoff moves
 * back), never as "nothing runs".
 */
static int oldest_running(struct nj_store *s, int64_t t0, int64_t *oldest)
{
    *oldest = t0 + 1;
    char **ids = nj_store_staging_list(s);
    if (!ids)
        return nj_error_prefix("gc: cannot list the backups running; not "
                               "sweeping");
    for (char **id = ids; *id; id++) {
        NJ_CLEANUP_FREE char *text = nj_store_staging_owner(s, *id);
        struct json_object *o = text ? json_tokener_parse(text) : NULL;
        struct json_object *k = NULL, *st = NULL;
        const char *key = NULL;
        int64_t started = t0; /* unreadable: as if it started now */
        if (o && json_object_object_get_ex(o, "lock", &k) &&
            json_object_is_type(k, json_type_string) &&
            nj_store_name_valid(json_object_get_string(k)))
            key = json_object_get_string(k);
        if (o && json_object_object_get_ex(o, "started", &st) &&
            json_object_is_type(st, json_type_int))
            started = NJ_MIN(json_object_get_int64(st), t0);
        int fd = key ? nj_store_lock_domain(s, key, key) : -1;
        if (fd >= 0) {
            /* Nobody holds it: a dead run's leftovers. */
            nj_store_staging_remove(s, *id);
            nj_store_unlock_domain(fd);
        } else {
            /* Running (or unreadable: be conservative). */
            *oldest = NJ_MIN(*oldest, started);
        }
        json_object_put(o);
    }
    nj_strv_free(ids);
    return 0;
}

static int mark_backup(struct nj_store *s, const struct nj_manifest *m,
                       struct nj_digest *cache, uint32_t slots,
                       struct nj_gc_stats *st)
{
    for (size_t k = 0; k < m->ndisks; k++) {
        const struct nj_manifest_disk *d = &m->disks[k];
        struct nj_index_reader *r = nj_manifest_index_open(s, m, d);
        if (!r)
            return nj_error_prefix("gc: cannot read backup '%s'", m->id);
        struct nj_extent e;
        int rc;
        while ((rc = nj_index_reader_next(r, &e)) == 1) {
            if (e.kind != NJ_EXTENT_DATA)
                continue;
            st->referenced++;
            uint32_t slot;
            memcpy(&slot, e.digest.b, sizeof slot);
            slot &= slots - 1;
            if (nj_digest_eq(&cache[slot], &e.digest))
                continue;
            if (nj_store_chunk_mark(s, &e.digest) < 0) {
                nj_index_reader_free(r);
                return -1;
            }
            cache[slot] = e.digest;
        }
        nj_index_reader_free(r);
        if (rc < 0)
            return nj_error_prefix("gc: backup '%s'", m->id);
    }
    return 0;
}

int nj_gc(struct nj_store *s, int64_t grace, struct nj_gc_stats *st)
{
    memset(st, 0, sizeof *st);
    double t_start = nj_mono_sec();
    int64_t t0 = (int64_t)time(NULL);
    int64_t cutoff = t0 - grace;
    int64_t oldest = 0;
    /* On object stores, new backups wait from here on before relying on
     * old chunks (store-obj.c); the directory needs no such exclusion. */
    int gc_lock = nj_store_gc_begin(s);
    if (gc_lock < 0 || oldest_running(s, t0, &oldest) < 0) {
        nj_store_unlock_domain(gc_lock);
        st->seconds = nj_mono_sec() - t_start;
        return -1;
    }
    int64_t tmp_cutoff = t0 - 86400;
    if (oldest < t0 + 1)
        cutoff = NJ_MIN(cutoff, oldest - START_MARGIN);
    bool count_only = oldest < t0 + 1 && nj_store_gc_exclusive(s);
    if (count_only) {
        /* An object store: with backups (or prunes) running this run can
         * delete nothing (store-obj.c), so let them go on now, and skip
         * the mark: the sweep only counts. */
        nj_store_unlock_domain(gc_lock);
        gc_lock = -1;
        cutoff = tmp_cutoff = INT64_MIN;
    }
    /* A prune running meanwhile may remove or merge a listed backup under
     * the mark (an index gone, or replaced by one with another digest):
     * the mark is then started again on a new listing, which is still
     * after t0, up to MARK_ATTEMPTS times; marks already set stay valid.
     * Persistent damage fails every attempt and nothing is swept. */
    uint32_t slots = nj_store_takes_known(s) ? MARK_CACHE_SLOTS_OBJ
                                             : MARK_CACHE_SLOTS;
    struct nj_digest *cache = nj_calloc(slots, sizeof *cache);
    int ret = count_only ? 0 : -1;
    for (int attempt = 0; ret < 0 && attempt < MARK_ATTEMPTS; attempt++) {
        struct nj_catalog *c = nj_catalog_open(s);
        if (!c)
            break;
        st->referenced = 0;
        ret = 0;
        if (nj_catalog_broken_count(c) > 0)
            ret = nj_error("gc: backup '%s' is unreadable (%s); not sweeping",
                           nj_catalog_broken_id(c, 0),
                           nj_catalog_broken_error(c, 0));
        for (size_t i = 0; ret == 0 && i < nj_catalog_count(c); i++)
            ret = mark_backup(s, nj_catalog_get(c, i), cache, slots, st);
        nj_catalog_free(c);
    }
    free(cache);
    if (ret == 0)
        ret = nj_store_gc_sweep(s, cutoff, tmp_cutoff, &st->chunks_kept,
                                &st->bytes_kept, &st->chunks_freed,
                                &st->bytes_freed, &st->tmp_removed);
    nj_store_unlock_domain(gc_lock);
    st->seconds = nj_mono_sec() - t_start;
    return ret;
}
