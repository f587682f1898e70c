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
 *
 * Hostile files.  Everything in a store (and in any directory another user
 * may write) may be a symlink, a FIFO, a device or a directory where a
 * regular file is expected.  nj_open_regular() and nj_open_dir() are the
 * only ways nightjar opens such paths: they never follow a symlink, never
 * block in open(2), and say in one line what was found instead.  Every
 * file they, nj_tmpfile_open() or nj_publish_*() create is created with
 * mode 0600 and every directory of a store with 0700: a umask can only
 * clear bits, so no umask makes them readable by anyone else.
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

#define NJ_DIRECT_ALIGN 4096u
/* Below this, ordinary I/O: copying a small chunk costs little, and a
 * direct transfer's latency would serialise the many small chunks of an
 * incremental (a full's chunks are megabytes). */
#define NJ_DIRECT_MIN (256u << 10)
/*
 * Write len bytes to a new, empty file fd, bypassing the page cache where
 * the file system allows it: the largest multiple of NJ_DIRECT_ALIGN of
 * them with O_DIRECT when buf is aligned to NJ_DIRECT_ALIGN and len is at
 * least NJ_DIRECT_MIN, the rest (and everything, where O_DIRECT is
 * refused) with ordinary writes.  Chunk files are written once and read
 * rarely: copying them into the page cache costs CPU that a backup
 * competing with its VMs for the cores does not have (measured in
 * docs/DATAPATH.md), and evicts the host's cache.  Durability is
 * unchanged: the caller still syncs before publishing.  0, or -1 with
 * errno.
 */
int nj_write_direct(int fd, const void *buf, size_t len);
/* Read len bytes from the start of fd the same way (a restore reads each
 * chunk once), as nj_full_read does otherwise: -1 with ENODATA at an
 * early end of file. */
int nj_read_direct(int fd, void *buf, size_t len);
int nj_full_pread(int fd, void *buf, size_t len, off_t off);
int nj_full_pwrite(int fd, const void *buf, size_t len, off_t off);

/*
 * Open dirfd/path, which must be a regular file.  flags: O_RDONLY, O_WRONLY
 * or O_RDWR, plus any of O_CREAT, O_EXCL, O_APPEND (a new file gets mode
 * 0600).  The last component is opened with O_NOFOLLOW and O_NONBLOCK
 * (cleared again before return), then checked with fstat; the fd is
 * close-on-exec.  When dirfd is a directory fd (not AT_FDCWD), path is
 * relative to it and no component of it is followed if it is a symlink:
 * "backups/ID/manifest.json" relative to a store's fd stays in the store.
 * With AT_FDCWD only the last component is protected (the directories of
 * a path given on a command line are the user's choice).
 *
 * Returns the fd, or -1 with the last error set, naming path:
 *   "'PATH' is not a regular file"  errno EINVAL (a symlink, FIFO, socket,
 *                                    device or directory; never opened
 *                                    through, never waited on)
 *   "'DIR' is not a directory"      errno ENOTDIR (a component of path)
 *   "open 'PATH': <strerror>"       errno kept (ENOENT: absent)
 */
int nj_open_regular(int dirfd, const char *path, int flags);

/* The directory holding path's last component, below dirfd (a directory
 * fd; path relative), walked as nj_open_regular() does: no symlink
 * followed; with make, missing directories are made (0700).  Returns a
 * new fd and the last component in *last, or -1 with the last error
 * (errno ENOENT: a directory is missing; ENOTDIR: a component is not a
 * directory). */
int nj_open_parent(int dirfd, const char *path, bool make, const char **last);

/* Open dirfd/path as a directory (O_RDONLY | O_DIRECTORY | O_CLOEXEC),
 * with the same rule as nj_open_regular() for symlinks in path: none is
 * followed when dirfd is a directory fd, the last one never.  Errors as
 * above ("'PATH' is not a directory", errno ENOTDIR, for a symlink or a
 * non-directory). */
int nj_open_dir(int dirfd, const char *path);

/* Read a whole file of at most max bytes into a new NUL-terminated buffer.
 * The file is opened with nj_open_regular() (so: no symlink followed as
 * described there, no FIFO waited on).  Returns NULL with the last error
 * set (naming path) on failure; errno ENOENT when it does not exist. */
char *nj_read_file(int dirfd, const char *path, size_t max, size_t *len_out);

/* Create a new temporary file in dirfd named ".tmp-<prefix>-XXXXXXXX" (8
 * characters from getrandom(2); O_CREAT | O_EXCL | O_NOFOLLOW, mode 0600);
 * the name is stored in tmpname (at least 64 bytes).  Returns the fd
 * (write-only) or -1. */
int nj_tmpfile_open(int dirfd, const char *prefix, char *tmpname, size_t size);

/* fsync(fd), then link dirfd/tmpname to dirfd/name without replacing, then
 * unlink tmpname.  Returns 0, 1 when name already existed (tmp removed,
 * the existing file kept), or -1 with the last error set. */
int nj_publish_tmpfile(int fd, int dirfd, const char *tmpname, const char *name);

/* Write buf to dirfd/name durably (tmp + fsync + link without replace +
 * directory fsync).  Fails with EEXIST if name exists. */
int nj_publish_buffer(int dirfd, const char *name, const void *buf, size_t len);

/* Write buf as the file path durably, mode mode whatever the umask: a
 * temporary file beside it, fsynced, then renamed over path (replace) or
 * linked without replacing (!replace), then the directory fsynced.
 * Returns 0; 1 when !replace and path exists (nothing written); -1 with
 * the last error.  On failure the old file is as it was and no temporary
 * file is left behind.  path itself is the caller's: symlinks in its
 * directory part are followed. */
int nj_write_file_atomic(const char *path, const void *buf, size_t len,
                         mode_t mode, bool replace);

/* fsync a directory by path relative to dirfd (opened with nj_open_dir). */
int nj_fsync_dir(int dirfd, const char *path);

/* mkdirat(dirfd, path, mode) that accepts an existing directory (not a
 * symlink to one: that fails with "'PATH' is not a directory"). */
int nj_mkdir_exist_ok(int dirfd, const char *path, mode_t mode);

/* Remove a directory tree relative to dirfd (no symlinks followed). */
int nj_remove_tree(int atfd, const char *path);

#endif
