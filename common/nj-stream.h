/*
 * nj-stream.h: a byte stream with random access, what extent indexes are
 * read from and written to (catalog/nj-index.c), so that they need no file
 * descriptor: a file (nj_stream_fd), a buffer in memory (nj_stream_mem), or
 * whatever a store backend hands out from nj_store_staging_open() and
 * nj_store_backup_open().
 *
 * Reads are exact: a read past the end fails (EIO, "truncated"), so a
 * short file is never mistaken for zeros.  A stream is used by one thread
 * at a time.
 */
#ifndef NJ_STREAM_H
#define NJ_STREAM_H

#include <stddef.h>
#include <stdint.h>

struct nj_stream;

struct nj_stream_ops {
    int (*pread)(struct nj_stream *s, void *buf, size_t len, uint64_t off);
    int (*pwrite)(struct nj_stream *s, const void *buf, size_t len,
                  uint64_t off);
    int (*size)(struct nj_stream *s, uint64_t *size);
    int (*flush)(struct nj_stream *s);
    void (*close)(struct nj_stream *s);
};

struct nj_stream {
    const struct nj_stream_ops *ops;
};

/* A regular file (fd taken over, closed with the stream; the size call
 * fails when fd is not a regular file).  NULL when fd < 0, the last error
 * kept as the caller set it. */
struct nj_stream *nj_stream_fd(int fd);
/* len bytes at buf, read-only (not copied: buf must outlive the stream). */
struct nj_stream *nj_stream_mem(const void *buf, size_t len);

/* Exactly len bytes at off: 0, or -1 with the last error (EIO when the
 * stream ends first). */
int nj_stream_pread(struct nj_stream *s, void *buf, size_t len, uint64_t off);
int nj_stream_pwrite(struct nj_stream *s, const void *buf, size_t len,
                     uint64_t off);
/* The stream's length now. */
int nj_stream_size(struct nj_stream *s, uint64_t *size);
/* Make what was written durable (a file: fsync). */
int nj_stream_flush(struct nj_stream *s);
void nj_stream_close(struct nj_stream *s);

#endif
