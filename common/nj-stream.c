/*
 * nj-stream.c: streams over a file descriptor and over memory.
 */
#include "nj-stream.h"

#include "nj-io.h"
#include "nj-util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int nj_stream_pread(struct nj_stream *s, void *buf, size_t len, uint64_t off)
{
    return s->ops->pread(s, buf, len, off);
}

int nj_stream_pwrite(struct nj_stream *s, const void *buf, size_t len,
                     uint64_t off)
{
    if (!s->ops->pwrite) {
        errno = EBADF;
        return nj_error("write: the stream is read-only");
    }
    return s->ops->pwrite(s, buf, len, off);
}

int nj_stream_size(struct nj_stream *s, uint64_t *size)
{
    return s->ops->size(s, size);
}

int nj_stream_flush(struct nj_stream *s)
{
    return s->ops->flush ? s->ops->flush(s) : 0;
}

void nj_stream_close(struct nj_stream *s)
{
    if (s)
        s->ops->close(s);
}

/* ---- a file ---- */

struct fd_stream {
    struct nj_stream base;
    int fd;
};

static int fd_of(struct nj_stream *s)
{
    return ((struct fd_stream *)s)->fd;
}

static int fds_pread(struct nj_stream *s, void *buf, size_t len, uint64_t off)
{
    if (off > (uint64_t)INT64_MAX - len) {
        errno = EINVAL;
        return nj_error("read at %llu: out of range", (unsigned long long)off);
    }
    if (nj_full_pread(fd_of(s), buf, len, (off_t)off) < 0) {
        if (errno != ENODATA)
            return nj_error_errno(errno, "read");
        nj_error("read: truncated");
        errno = EIO;
        return -1;
    }
    return 0;
}

static int fds_pwrite(struct nj_stream *s, const void *buf, size_t len,
                      uint64_t off)
{
    if (nj_full_pwrite(fd_of(s), buf, len, (off_t)off) < 0)
        return nj_error_errno(errno, "write");
    return 0;
}

static int fds_size(struct nj_stream *s, uint64_t *size)
{
    struct stat st;
    if (fstat(fd_of(s), &st) < 0)
        return nj_error_errno(errno, "stat");
    if (!S_ISREG(st.st_mode)) {
        errno = EINVAL;
        return nj_error("not a regular file");
    }
    *size = (uint64_t)st.st_size;
    return 0;
}

static int fds_flush(struct nj_stream *s)
{
    if (fsync(fd_of(s)) < 0)
        return nj_error_errno(errno, "fsync");
    return 0;
}

static void fds_close(struct nj_stream *s)
{
    close(fd_of(s));
    free(s);
}

static const struct nj_stream_ops fd_stream_ops = {
    .pread = fds_pread,
    .pwrite = fds_pwrite,
    .size = fds_size,
    .flush = fds_flush,
    .close = fds_close,
};

struct nj_stream *nj_stream_fd(int fd)
{
    if (fd < 0)
        return NULL;
    struct fd_stream *s = nj_calloc(1, sizeof *s);
    s->base.ops = &fd_stream_ops;
    s->fd = fd;
    return &s->base;
}

/* ---- memory ---- */

struct mem_stream {
    struct nj_stream base;
    const unsigned char *buf;
    size_t len;
};

static int mems_pread(struct nj_stream *s, void *buf, size_t len, uint64_t off)
{
    struct mem_stream *m = (struct mem_stream *)s;
    if (off > m->len || len > m->len - off) {
        errno = EIO;
        return nj_error("read: truncated");
    }
    memcpy(buf, m->buf + off, len);
    return 0;
}

static int mems_size(struct nj_stream *s, uint64_t *size)
{
    *size = ((struct mem_stream *)s)->len;
    return 0;
}

static void mems_close(struct nj_stream *s)
{
    free(s);
}

static const struct nj_stream_ops mem_stream_ops = {
    .pread = mems_pread,
    .size = mems_size,
    .close = mems_close,
};

struct nj_stream *nj_stream_mem(const void *buf, size_t len)
{
    struct mem_stream *s = nj_calloc(1, sizeof *s);
    s->base.ops = &mem_stream_ops;
    s->buf = buf;
    s->len = len;
    return &s->base;
}
