/*
 * nj-datapath.h: read what a backup needs from NBD into the store.
 *
 * One call backs up one disk: it connects to the source, plans extents
 * (nj-plan.h), reads DATA ranges with asynchronous libnbd requests over
 * one or more connections, and hands each read to worker threads that
 * split it at zero blocks, hash, compress and store the chunks, while the
 * calling thread appends index entries in disk order.
 *
 * Chunking: the disk is divided into cells of `grid` bytes (a power of
 * two).  No chunk crosses a cell boundary.  Inside what is read, runs of
 * all-zero blocks (`block` bytes, aligned to the disk) become zero entries
 * and are never stored; each maximal non-zero run inside a cell becomes
 * one chunk.  A full backup of allocated data therefore stores whole cells
 * (identical cells dedup across disks and domains), while a small dirty
 * run becomes a small chunk at the bitmap's granularity.
 *
 * Memory is bounded by the buffers in flight (max_inflight bytes) plus
 * one compression context and frame buffer per worker; it does not grow
 * with the disk.
 */
#ifndef NJ_DATAPATH_H
#define NJ_DATAPATH_H

#include <stdbool.h>
#include <stdint.h>

#include "nj-catalog.h"
#include "nj-nbd.h"

#define NJ_GRID_DEFAULT (4u << 20)
#define NJ_BLOCK_DEFAULT (64u << 10)
#define NJ_INFLIGHT_DEFAULT (24u << 20)

/*
 * Adaptive compression (the default).  How hard to compress is decided
 * by the pipeline, as zstd --adapt does for a stream: the level goes one
 * step down when the workers fall behind the reads, or when reads wait
 * while the machine has no idle CPU (the NBD server shares the cores);
 * one step up when reads are the bottleneck and cores are idle.  Each
 * step needs a clear majority over a window of chunks (adapt_vote in
 * nj-datapath.c).  The default range stops at level 1: below it zstd's
 * fast levels cost much more size for little time (the curve in
 * docs/DATAPATH.md, "Throughput against the bounds"), and a host whose
 * cores are shared with the QEMU serving the export runs at the range's
 * bottom.  --zstd-level LO..HI widens it, e.g. to -5..3.
 */
#define NJ_ZSTD_AUTO_MIN 1
#define NJ_ZSTD_AUTO_MAX 3

/*
 * The adaptive step, at the end of a window of `window` items of which
 * `behind` found work still queued after them and `waited` found none and
 * waited; idle_cores: the machine's idle CPU over the window, in cores
 * (negative: unknown).  Returns the next level, within lo..hi, never 0.
 */
int nj_zstd_adapt(int level, int lo, int hi, unsigned window,
                  unsigned behind, unsigned waited, double idle_cores);

/* Parse a --zstd-level argument: "auto", "N" or "LO..HI" (levels from
 * NJ_ZSTD_LEVEL_MIN to NJ_ZSTD_LEVEL_MAX, 0 excepted).  0, or -1 with the
 * last error. */
int nj_zstd_level_parse(const char *s, int *lo, int *hi);

struct nj_datapath_opts {
    unsigned threads;      /* workers; 0: one per core plus one, at most
                              one per slot (max_inflight / grid) */
    unsigned connections;  /* NBD connections; 0: 4 when multi-conn */
    unsigned requests;     /* requests in flight per connection; 0: 4 */
    uint64_t grid;         /* 0: NJ_GRID_DEFAULT */
    uint64_t block;        /* zero-detection block; 0: NJ_BLOCK_DEFAULT */
    uint64_t max_inflight; /* 0: NJ_INFLIGHT_DEFAULT */
    /* zstd levels: equal, that one fixed level; different, the level
     * adapts between them (below); both 0: NJ_ZSTD_AUTO_MIN..MAX. */
    int zstd_min, zstd_max;
    bool progress;         /* progress line on stderr */
    /* When not NULL and set non-zero (e.g. by a signal handler), the run
     * stops with "interrupted" within a fraction of a second. */
    volatile int *cancel;
};

/* Counters beyond the store's statistics. */
struct nj_datapath_result {
    uint64_t size;         /* the export's size */
    uint64_t planned_data; /* bytes planned for reading */
    uint64_t planned_zero; /* bytes planned as zero from block status */
    uint64_t skipped;      /* bytes unchanged (incremental) */
    double seconds;
};

/*
 * Back up the export as disk `target` of b: a full when src has no bitmap
 * context (the index then covers the whole disk), else an incremental of
 * the dirty ranges.  On failure nothing is added to b that would commit:
 * the caller aborts the backup.
 */
int nj_datapath_backup_disk(struct nj_backup *b, const char *target,
                            const char *format,
                            const struct nj_nbd_source *src,
                            const struct nj_datapath_opts *opts,
                            struct nj_datapath_result *res);

/* Size of an export (connects once). */
int nj_nbd_export_size(const struct nj_nbd_source *src, uint64_t *size);

#endif
