/*
 * nj-index.h: the per-backup, per-disk extent index.
 *
 * An index lists what one backup captured of one disk: sorted,
 * non-overlapping entries, each either a zero range or a range of bytes
 * found in a chunk at an offset inside it.  A full backup's index covers
 * [0, disk size) with no gap; an incremental's covers the ranges it read.
 * The file layout is in docs/FORMAT.md; it ends with the SHA-256 of all
 * bytes before it, which the manifest repeats.
 *
 * The reader streams: it holds a fixed window of entries, never the whole
 * index, and validates each entry (order, overlap, bounds, chunk offsets)
 * as it goes, so a damaged index fails with a message, never a crash.
 */
#ifndef NJ_INDEX_H
#define NJ_INDEX_H

#include <stdbool.h>
#include <stdint.h>

#include "nj-digest.h"
#include "nj-stream.h"

#define NJ_INDEX_MAGIC "NJINDEX1"
#define NJ_INDEX_VERSION 1
#define NJ_INDEX_HEADER_LEN 64
#define NJ_INDEX_ENTRY_LEN 64

enum nj_extent_kind {
    NJ_EXTENT_ZERO = 0,
    NJ_EXTENT_DATA = 1,
};

struct nj_extent {
    uint64_t offset;       /* disk offset */
    uint64_t length;       /* > 0 */
    enum nj_extent_kind kind;
    struct nj_digest digest; /* DATA: the chunk */
    uint64_t chunk_offset; /* DATA: where the range starts inside it */
    uint32_t chunk_len;    /* DATA: the chunk's plaintext length */
};

/* Writer: entries are appended in order and written through a buffer. */
struct nj_index_writer;

/* Takes ownership of out (new and empty; NULL: fails, keeping the last
 * error of whoever could not make it). */
struct nj_index_writer *nj_index_writer_new(struct nj_stream *out,
                                           uint64_t disk_size);
/* Append one entry; fails if it is out of order, overlaps, or is invalid.
 * Adjacent zero entries are merged. */
int nj_index_writer_append(struct nj_index_writer *w, const struct nj_extent *e);
/* Flush, write header and trailer, make durable (nj_stream_flush).  Fills the file digest, the
 * entry count and the bytes covered. */
int nj_index_writer_finish(struct nj_index_writer *w, struct nj_digest *digest,
                           uint64_t *entries, uint64_t *covered);
void nj_index_writer_free(struct nj_index_writer *w);
/* Offset just past the last appended entry. */
uint64_t nj_index_writer_end(const struct nj_index_writer *w);

/* Reader. */
struct nj_index_reader;

/* What a manifest promises about an index (see nj_index_reader_open_checked). */
struct nj_index_expect {
    const struct nj_digest *digest; /* required: the manifest's index_sha256 */
    uint64_t disk_size;             /* the disk's size, > 0 */
    uint64_t entries;               /* entry count */
    uint64_t covered;               /* bytes the entries cover */
    bool full;                      /* the entries must tile [0, disk_size) */
};

/*
 * Open an index from a stream (ownership taken; NULL fails).  name is used
 * in messages.
 * When expect is not NULL the whole file is hashed first and must match.
 * disk_size, when not 0, must equal the size the index records.
 */
struct nj_index_reader *nj_index_reader_open(struct nj_stream *in,
                                             const char *name,
                                             const struct nj_digest *expect,
                                             uint64_t disk_size);
/*
 * Open an index and check all of it, once, against what its manifest
 * promises (in: ownership taken, NULL fails; name: for messages).  Cheap
 * bounds come first, before a byte of the entries is read: the stream (a
 * regular file when it is one) is exactly 64 + 64 * entries + 32 bytes, entries <= covered <= disk size
 * (every entry covers at least one byte), and the header says the same
 * disk size, count and coverage.  Then one pass hashes the file and checks
 * every entry (order, overlap, bounds, chunk ranges, the sum of lengths),
 * and the digest must match both the trailer and x->digest.  The reader is
 * then at the first entry; reading the entries again re-hashes them, and
 * the last nj_index_reader_next() fails if the file changed since.
 * NULL with the last error naming the index.
 */
struct nj_index_reader *nj_index_reader_open_checked(
    struct nj_stream *in, const char *name, const struct nj_index_expect *x);
uint64_t nj_index_reader_disk_size(const struct nj_index_reader *r);
uint64_t nj_index_reader_count(const struct nj_index_reader *r);
/* Bytes the header says the entries cover (checked against the entries
 * as they are read). */
uint64_t nj_index_reader_covered(const struct nj_index_reader *r);
/* 1 with *e filled, 0 at the end, -1 on a damaged entry.  At the end the
 * lengths must add up to the header's coverage and, when the reader was
 * opened with a digest, what was read must hash to it. */
int nj_index_reader_next(struct nj_index_reader *r, struct nj_extent *e);
/* Start again from the first entry. */
int nj_index_reader_rewind(struct nj_index_reader *r);
void nj_index_reader_free(struct nj_index_reader *r);

/* Validate a whole index held in memory (for the fuzzer and tests). */
int nj_index_check_buffer(const void *buf, size_t len, uint64_t disk_size);

#endif
