/*
 * nj-io.h: full I/O and the one durable-publish helper.
 *
 * Every read and write in nightjar goes through the full_* helpers, which
 * retry on EINTR and short transfers; a short read at end of file is
 * reported, never silently accepted.
 *
 * Publishing a file durably (nj_publish_*): the content is written to a
 * temporary file in the destination directory, fsync'ed, then linked to
 * its final name with link(2), which fails rather than replace an existing
 * name, and the temporary name is removed.  The caller then makes the
 * directory entry durable, either with nj_fsync_dir() on that directory or
 * by a syncfs(2) over the whole store before the commit point.  The fsync
 * before the link matters: without it a crash can leave a visible name
 * whose data blocks never reached the disk.
 */
#ifndef NJ_IO_H
#define NJ_IO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* All return 0 on success, -1 with errno set on failure.  A read that hits
 * end of file before len bytes sets errno to ENODATA. */
int nj_full_read(int fd, void *buf, size_t len);
int nj_full_write(int fd, const void *buf, size_t len);
int nj_full_pread(int fd, void *buf, size_t len, off_t off);
int nj_full_pwrite(int fd, const void *buf, size_t len, off_t off);

/* Read a whole file of at most max bytes into a new NUL-terminated buffer.
 * Returns NULL with the last error set (naming path) on failure. */
char *nj_read_file(int dirfd, const char *path, size_t max, size_t *len_out);

/* Open a new temporary file in dirfd named ".tmp-<prefix>-XXXXXX"; the name
 * is stored in tmpname (at least 64 bytes).  Returns the fd or -1. */
int nj_tmpfile_open(int dirfd, const char *prefix, char *tmpname, size_t size);

/* fsync(fd), then link dirfd/tmpname to dirfd/name without replacing, then
 * unlink tmpname.  Returns 0, 1 when name already existed (tmp removed,
 * the existing file kept), or -1 with the last error set. */
int nj_publish_tmpfile(int fd, int dirfd, const char *tmpname, const char *name);

/* Write buf to dirfd/name durably (tmp + fsync + link without replace +
 * directory fsync).  Fails with EEXIST if name exists. */
int nj_publish_buffer(int dirfd, const char *name, const void *buf, size_t len);

/* fsync a directory by fd or by path relative to dirfd. */
int nj_fsync_dir(int dirfd, const char *path);

/* mkdirat that accepts an existing directory. */
int nj_mkdir_exist_ok(int dirfd, const char *path, mode_t mode);

/* Remove a directory tree relative to dirfd (no symlinks followed). */
int nj_remove_tree(int atfd, const char *path);

#endif
