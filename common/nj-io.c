/*
 * nj-io.c: full I/O helpers, opening hostile paths, durable publication.
 * See nj-io.h.
 */
#include "nj-io.h"
#include "nj-util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

int nj_full_read(int fd, void *buf, size_t len)
{
    char *p = buf;
    while (len > 0) {
        ssize_t r = read(fd, p, len);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (r == 0) {
            errno = ENODATA;
            return -1;
        }
        p += r;
        len -= (size_t)r;
    }
    return 0;
}

int nj_full_write(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t r = write(fd, p, len);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += r;
        len -= (size_t)r;
    }
    return 0;
}

/*
 * The O_DIRECT part of nj_write_direct / nj_read_direct: transfer the
 * first `head` bytes (a multiple of NJ_DIRECT_ALIGN, buf aligned) with
 * O_DIRECT set, and put the descriptor back as it was, positioned after
 * what was transferred.  Returns how many bytes were (less than head when
 * the file system refused O_DIRECT or stopped at an unaligned count: the
 * caller does the rest the ordinary way), or -1 with errno.
 */
static ssize_t direct_head(int fd, char *buf, size_t head, bool writing)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_DIRECT) < 0)
        return 0;
    size_t done = 0;
    int err = 0;
    while (done < head) {
        ssize_t r = writing ? pwrite(fd, buf + done, head - done, (off_t)done)
                            : pread(fd, buf + done, head - done, (off_t)done);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && errno != EINVAL)
            err = errno;
        if (r > 0)
            done += (size_t)r;
        if (r <= 0 || ((size_t)r & (NJ_DIRECT_ALIGN - 1)))
            break;
    }
    if (fcntl(fd, F_SETFL, fl) < 0 && !err)
        err = errno;
    if (!err && lseek(fd, (off_t)done, SEEK_SET) < 0)
        err = errno;
    if (err) {
        errno = err;
        return -1;
    }
    return (ssize_t)done;
}

static bool direct_ok(const void *buf, size_t len)
{
    return len >= NJ_DIRECT_MIN && !((uintptr_t)buf & (NJ_DIRECT_ALIGN - 1));
}

int nj_write_direct(int fd, const void *buf, size_t len)
{
    if (!direct_ok(buf, len))
        return nj_full_write(fd, buf, len);
    ssize_t done = direct_head(fd, (char *)buf,
                               len & ~(size_t)(NJ_DIRECT_ALIGN - 1), true);
    if (done < 0)
        return -1;
    return nj_full_write(fd, (const char *)buf + done, len - (size_t)done);
}

int nj_read_direct(int fd, void *buf, size_t len)
{
    if (!direct_ok(buf, len))
        return nj_full_read(fd, buf, len);
    ssize_t done = direct_head(fd, buf, len & ~(size_t)(NJ_DIRECT_ALIGN - 1),
                               false);
    if (done < 0)
        return -1;
    /* an early end of file shows here as ENODATA */
    return nj_full_read(fd, (char *)buf + done, len - (size_t)done);
}

int nj_full_pread(int fd, void *buf, size_t len, off_t off)
{
    char *p = buf;
    while (len > 0) {
        ssize_t r = pread(fd, p, len, off);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (r == 0) {
            errno = ENODATA;
            return -1;
        }
        p += r;
        off += r;
        len -= (size_t)r;
    }
    return 0;
}

int nj_full_pwrite(int fd, const void *buf, size_t len, off_t off)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t r = pwrite(fd, p, len, off);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += r;
        off += r;
        len -= (size_t)r;
    }
    return 0;
}

/*
 * Walk the directories of a relative path below dirfd without following a
 * symlink (making each that is missing, 0700, when make): returns an fd of
 * the directory holding the last component (dirfd itself when path has
 * one component; *owned says whether to close it) and the last component
 * in *last.  -1 with the last error set.
 */
static int walk_parent(int dirfd, const char *path, const char **last,
                       bool *owned, bool make)
{
    *owned = false;
    *last = path;
    if (dirfd == AT_FDCWD || path[0] == '/')
        return dirfd;
    int fd = dirfd;
    const char *p = path;
    for (;;) {
        const char *slash = strchr(p, '/');
        if (!slash)
            break;
        size_t n = (size_t)(slash - p);
        if (n == 0) { /* "a//b" or a leading '/': skip */
            p = slash + 1;
            continue;
        }
        char comp[256];
        if (n >= sizeof comp) {
            if (*owned)
                close(fd);
            nj_error_errno(ENAMETOOLONG, "open '%s'", path);
            errno = ENAMETOOLONG;
            return -1;
        }
        memcpy(comp, p, n);
        comp[n] = '\0';
        int nfd = -1;
        /* Again after a mkdir: a concurrent rmdir of an emptied
         * directory may take it first. */
        for (int i = 0; i < 8; i++) {
            nfd = openat(fd, comp,
                         O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (nfd >= 0 || errno != ENOENT || !make)
                break;
            if (mkdirat(fd, comp, 0700) < 0 && errno != EEXIST)
                break;
        }
        int e = errno;
        if (*owned)
            close(fd);
        if (nfd < 0) {
            int len = (int)(slash - path);
            if (e == ENOTDIR || e == ELOOP) {
                nj_error("'%.*s' is not a directory", len, path);
                e = ENOTDIR;
            } else {
                nj_error_errno(e, "open '%s'", path);
            }
            errno = e;
            return -1;
        }
        fd = nfd;
        *owned = true;
        p = slash + 1;
    }
    *last = p;
    return fd;
}

int nj_open_parent(int dirfd, const char *path, bool make, const char **last)
{
    bool owned;
    int fd = walk_parent(dirfd, path, last, &owned, make);
    if (fd < 0 || owned)
        return fd;
    fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (fd < 0)
        return nj_error_errno(errno, "dup");
    return fd;
}

int nj_open_regular(int dirfd, const char *path, int flags)
{
    const char *last;
    bool owned;
    int pfd = walk_parent(dirfd, path, &last, &owned, false);
    if (pfd < 0 && pfd != AT_FDCWD)
        return -1;
    int fd = openat(pfd, last, flags | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC,
                    0600);
    int e = errno;
    if (owned)
        close(pfd);
    if (fd < 0) {
        /* ELOOP: a symlink; ENXIO: a FIFO without reader or a device
         * without driver; EISDIR: a directory opened for writing. */
        if (e == ELOOP || e == ENXIO || e == EISDIR) {
            nj_error("'%s' is not a regular file", path);
            e = EINVAL;
        } else {
            nj_error_errno(e, "open '%s'", path);
        }
        errno = e;
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        e = errno;
        close(fd);
        nj_error_errno(e, "stat '%s'", path);
        errno = e;
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        nj_error("'%s' is not a regular file", path);
        errno = EINVAL;
        return -1;
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0) {
        e = errno;
        close(fd);
        nj_error_errno(e, "fcntl '%s'", path);
        errno = e;
        return -1;
    }
    return fd;
}

int nj_open_dir(int dirfd, const char *path)
{
    const char *last;
    bool owned;
    int pfd = walk_parent(dirfd, path, &last, &owned, false);
    if (pfd < 0 && pfd != AT_FDCWD)
        return -1;
    int fd = openat(pfd, *last ? last : ".",
                    O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    int e = errno;
    if (owned)
        close(pfd);
    if (fd < 0) {
        if (e == ENOTDIR || e == ELOOP) {
            nj_error("'%s' is not a directory", path);
            e = ENOTDIR;
        } else {
            nj_error_errno(e, "open '%s'", path);
        }
        errno = e;
        return -1;
    }
    return fd;
}

char *nj_read_file(int dirfd, const char *path, size_t max, size_t *len_out)
{
    NJ_CLEANUP_CLOSE int fd = nj_open_regular(dirfd, path, O_RDONLY);
    if (fd < 0)
        return NULL;
    struct stat st;
    if (fstat(fd, &st) < 0) {
        nj_error_errno(errno, "stat '%s'", path);
        return NULL;
    }
    if ((uint64_t)st.st_size > max) {
        nj_error("'%s' is too large (%lld bytes, limit %zu)", path,
                 (long long)st.st_size, max);
        return NULL;
    }
    size_t len = (size_t)st.st_size;
    NJ_CLEANUP_FREE char *buf = nj_malloc(len + 1);
    if (nj_full_read(fd, buf, len) < 0) {
        nj_error_errno(errno, "read '%s'", path);
        return NULL;
    }
    buf[len] = '\0';
    if (len_out)
        *len_out = len;
    return NJ_STEAL(&buf);
}

int nj_tmpfile_open(int dirfd, const char *prefix, char *tmpname, size_t size)
{
    static const char alphabet[] = "abcdefghijklmnopqrstuvwxyz0123456789";
    for (int attempt = 0; attempt < 100; attempt++) {
        char rnd[9];
        unsigned char raw[8];
        if (getrandom(raw, sizeof raw, 0) != (ssize_t)sizeof raw)
            return nj_error_errno(errno, "getrandom");
        for (int i = 0; i < 8; i++)
            rnd[i] = alphabet[raw[i] % (sizeof alphabet - 1)];
        rnd[8] = '\0';
        snprintf(tmpname, size, ".tmp-%s-%s", prefix, rnd);
        int fd = openat(dirfd, tmpname,
                        O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                        0600);
        if (fd >= 0)
            return fd;
        if (errno != EEXIST)
            return nj_error_errno(errno, "create temporary file '%s'", tmpname);
    }
    return nj_error("create temporary file for '%s': too many collisions",
                    prefix);
}

int nj_publish_tmpfile(int fd, int dirfd, const char *tmpname, const char *name)
{
    if (fsync(fd) < 0) {
        int e = errno;
        unlinkat(dirfd, tmpname, 0);
        return nj_error_errno(e, "fsync '%s'", tmpname);
    }
    int ret = 0;
    if (linkat(dirfd, tmpname, dirfd, name, 0) < 0) {
        if (errno != EEXIST) {
            int e = errno;
            unlinkat(dirfd, tmpname, 0);
            return nj_error_errno(e, "link '%s'", name);
        }
        ret = 1;
    }
    if (unlinkat(dirfd, tmpname, 0) < 0)
        return nj_error_errno(errno, "unlink '%s'", tmpname);
    return ret;
}

int nj_publish_buffer(int dirfd, const char *name, const void *buf, size_t len)
{
    char tmp[128];
    NJ_CLEANUP_CLOSE int fd = nj_tmpfile_open(dirfd, "pub", tmp, sizeof tmp);
    if (fd < 0)
        return -1;
    if (nj_full_write(fd, buf, len) < 0) {
        int e = errno;
        unlinkat(dirfd, tmp, 0);
        return nj_error_errno(e, "write '%s'", name);
    }
    int r = nj_publish_tmpfile(fd, dirfd, tmp, name);
    if (r < 0)
        return -1;
    if (r == 1) {
        errno = EEXIST;
        return nj_error("publish '%s': file exists", name);
    }
    return nj_fsync_dir(dirfd, ".");
}

int nj_write_file_atomic(const char *path, const void *buf, size_t len,
                         mode_t mode, bool replace)
{
    NJ_CLEANUP_FREE char *copy = nj_strdup(path);
    char *slash = strrchr(copy, '/');
    const char *dir = slash ? (slash == copy ? "/" : copy) : ".";
    const char *base = slash ? slash + 1 : copy;
    if (slash)
        *slash = '\0';
    if (!*base)
        return nj_error("'%s' names no file", path);
    NJ_CLEANUP_CLOSE int dfd =
        open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return nj_error_errno(errno, "open directory '%s'", dir);
    char tmp[64];
    NJ_CLEANUP_CLOSE int fd = nj_tmpfile_open(dfd, "nightjar", tmp, sizeof tmp);
    if (fd < 0)
        return nj_error_prefix("write '%s'", path);
    int e = 0, exists = 0;
    if (fchmod(fd, mode) < 0 || nj_full_write(fd, buf, len) < 0 ||
        fsync(fd) < 0)
        e = errno;
    else if (replace && renameat(dfd, tmp, dfd, base) < 0)
        e = errno;
    else if (!replace && linkat(dfd, tmp, dfd, base, 0) < 0) {
        if (errno == EEXIST)
            exists = 1;
        else
            e = errno;
    }
    if (e || !replace)
        unlinkat(dfd, tmp, 0);
    if (e)
        return nj_error_errno(e, "write '%s'", path);
    if (exists)
        return 1;
    if (fsync(dfd) < 0)
        return nj_error_errno(errno, "fsync directory '%s'", dir);
    return 0;
}

int nj_fsync_dir(int dirfd, const char *path)
{
    NJ_CLEANUP_CLOSE int fd = nj_open_dir(dirfd, path);
    if (fd < 0)
        return -1;
    if (fsync(fd) < 0)
        return nj_error_errno(errno, "fsync directory '%s'", path);
    return 0;
}

int nj_mkdir_exist_ok(int dirfd, const char *path, mode_t mode)
{
    if (mkdirat(dirfd, path, mode) == 0)
        return 0;
    if (errno != EEXIST)
        return nj_error_errno(errno, "create directory '%s'", path);
    struct stat st;
    if (fstatat(dirfd, path, &st, AT_SYMLINK_NOFOLLOW) < 0)
        return nj_error_errno(errno, "stat '%s'", path);
    if (!S_ISDIR(st.st_mode)) {
        errno = ENOTDIR;
        return nj_error("'%s' is not a directory", path);
    }
    return 0;
}

int nj_remove_tree(int atfd, const char *path)
{
    int fd = openat(atfd, path,
                    O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return 0;
        if (errno == ENOTDIR || errno == ELOOP) {
            if (unlinkat(atfd, path, 0) < 0 && errno != ENOENT)
                return nj_error_errno(errno, "remove '%s'", path);
            return 0;
        }
        return nj_error_errno(errno, "open '%s'", path);
    }
    DIR *d = fdopendir(fd);
    if (!d) {
        close(fd);
        return nj_error_errno(errno, "open directory '%s'", path);
    }
    int ret = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        bool is_dir = de->d_type == DT_DIR;
        if (de->d_type == DT_UNKNOWN) {
            struct stat st;
            is_dir = fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
                     S_ISDIR(st.st_mode);
        }
        if (is_dir) {
            if (nj_remove_tree(dirfd(d), de->d_name) < 0)
                ret = -1;
        } else if (unlinkat(dirfd(d), de->d_name, 0) < 0 && errno != ENOENT) {
            ret = nj_error_errno(errno, "remove '%s/%s'", path, de->d_name);
        }
    }
    closedir(d);
    if (unlinkat(atfd, path, AT_REMOVEDIR) < 0 && errno != ENOENT)
        ret = nj_error_errno(errno, "remove directory '%s'", path);
    return ret;
}
