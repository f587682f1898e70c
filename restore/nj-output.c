/*
 * nj-output.c: restore outputs (raw file, block device, qcow2 over NBD).
 */
#include "nj-io.h"
#include "nj-output.h"
#include "nj-util.h"

#include <errno.h>
#include <fcntl.h>
#include <libnbd.h>
#include <linux/fs.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- raw files and block devices ---- */

struct fd_output {
    struct nj_output base;
    int fd;
    bool created; /* we made (or truncated) the file: remove on failure */
    bool blockdev;
};

static int fd_pwrite(struct nj_output *o, const void *buf, size_t len,
                     uint64_t off)
{
    struct fd_output *f = (struct fd_output *)o;
    if (nj_full_pwrite(f->fd, buf, len, (off_t)off) < 0)
        return nj_error_errno(errno, "write '%s' at offset %llu", o->path,
                              (unsigned long long)off);
    return 0;
}

static int fd_zero(struct nj_output *o, uint64_t off, uint64_t len)
{
    struct fd_output *f = (struct fd_output *)o;
    if (f->blockdev) {
        uint64_t range[2] = { off, len };
        if (ioctl(f->fd, BLKZEROOUT, range) == 0)
            return 0;
    } else if (fallocate(f->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                         (off_t)off, (off_t)len) == 0) {
        return 0;
    }
    /* No zeroing primitive: write zeroes. */
    static const char zeros[1 << 16];
    while (len > 0) {
        size_t n = (size_t)NJ_MIN(len, (uint64_t)sizeof zeros);
        if (fd_pwrite(o, zeros, n, off) < 0)
            return -1;
        off += n;
        len -= n;
    }
    return 0;
}

static int fd_finish(struct nj_output *o)
{
    struct fd_output *f = (struct fd_output *)o;
    int ret = 0;
    if (fsync(f->fd) < 0)
        ret = nj_error_errno(errno, "fsync '%s'", o->path);
    if (close(f->fd) < 0 && ret == 0)
        ret = nj_error_errno(errno, "close '%s'", o->path);
    f->fd = -1;
    return ret;
}

static void fd_discard(struct nj_output *o)
{
    struct fd_output *f = (struct fd_output *)o;
    if (f->fd >= 0)
        close(f->fd);
    f->fd = -1;
    if (f->created)
        unlink(o->path);
}

static const struct nj_output_ops fd_ops = {
    .pwrite = fd_pwrite,
    .zero = fd_zero,
    .finish = fd_finish,
    .discard = fd_discard,
};

static struct nj_output *fd_open(const char *path, uint64_t size, bool force)
{
    struct stat st;
    bool exists = stat(path, &st) == 0;
    if (exists && !force) {
        nj_error("output '%s' exists; use --force to overwrite it", path);
        return NULL;
    }
    struct fd_output *f = nj_calloc(1, sizeof *f);
    f->base.ops = &fd_ops;
    f->base.path = nj_strdup(path);
    f->base.size = size;
    f->fd = -1;
    if (exists && S_ISBLK(st.st_mode)) {
        f->blockdev = true;
        f->base.needs_zero = true;
        f->fd = open(path, O_WRONLY | O_EXCL | O_CLOEXEC);
        uint64_t devsize = 0;
        if (f->fd < 0) {
            nj_error_errno(errno, "open block device '%s'", path);
        } else if (ioctl(f->fd, BLKGETSIZE64, &devsize) < 0) {
            nj_error_errno(errno, "size of block device '%s'", path);
        } else if (devsize < size) {
            nj_error("block device '%s' has %llu bytes, the disk needs %llu",
                     path, (unsigned long long)devsize,
                     (unsigned long long)size);
        } else {
            return &f->base;
        }
    } else if (exists && !S_ISREG(st.st_mode)) {
        nj_error("output '%s' is neither a regular file nor a block device",
                 path);
    } else {
        /* A fresh file is all holes: zero ranges need no writes. */
        f->fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC |
                               (exists ? O_TRUNC : O_EXCL), 0644);
        if (f->fd < 0) {
            nj_error_errno(errno, "create '%s'", path);
        } else {
            f->created = true;
            if (ftruncate(f->fd, (off_t)size) < 0)
                nj_error_errno(errno, "resize '%s' to %llu bytes", path,
                               (unsigned long long)size);
            else
                return &f->base;
        }
    }
    fd_discard(&f->base);
    free(f->base.path);
    free(f);
    return NULL;
}

/* ---- qcow2 through qemu-nbd ---- */

struct nbd_output {
    struct nj_output base;
    struct nbd_handle *nbd;
};

static int nbd_err(const char *what, const char *path)
{
    return nj_error("%s '%s': %s", what, path, nbd_get_error());
}

static int nbd_out_pwrite(struct nj_output *o, const void *buf, size_t len,
                          uint64_t off)
{
    struct nbd_output *n = (struct nbd_output *)o;
    /* libnbd limits one request to 32 MiB. */
    const char *p = buf;
    while (len > 0) {
        size_t k = NJ_MIN(len, (size_t)(32u << 20));
        if (nbd_pwrite(n->nbd, p, k, off, 0) < 0)
            return nbd_err("write", o->path);
        p += k;
        off += k;
        len -= k;
    }
    return 0;
}

static int nbd_out_zero(struct nj_output *o, uint64_t off, uint64_t len)
{
    struct nbd_output *n = (struct nbd_output *)o;
    if (nbd_zero(n->nbd, len, off, 0) < 0)
        return nbd_err("zero", o->path);
    return 0;
}

static int nbd_out_finish(struct nj_output *o)
{
    struct nbd_output *n = (struct nbd_output *)o;
    int ret = 0;
    if (nbd_flush(n->nbd, 0) < 0)
        ret = nbd_err("flush", o->path);
    if (ret == 0 && nbd_shutdown(n->nbd, 0) < 0)
        ret = nbd_err("close", o->path);
    /* nbd_close waits for qemu-nbd to exit, so the image is complete. */
    nbd_close(n->nbd);
    n->nbd = NULL;
    return ret;
}

static void nbd_out_discard(struct nj_output *o)
{
    struct nbd_output *n = (struct nbd_output *)o;
    nbd_close(n->nbd);
    n->nbd = NULL;
    unlink(o->path);
}

static const struct nj_output_ops nbd_ops = {
    .pwrite = nbd_out_pwrite,
    .zero = nbd_out_zero,
    .finish = nbd_out_finish,
    .discard = nbd_out_discard,
};

/* Run argv, wait, and fail with its exit status. */
static int run_command(char *const argv[])
{
    pid_t pid = fork();
    if (pid < 0)
        return nj_error_errno(errno, "fork");
    if (pid == 0) {
        execvp(argv[0], argv);
        fprintf(stderr, "nightjar: exec '%s': %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return nj_error_errno(errno, "wait for '%s'", argv[0]);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return nj_error("'%s' failed (status %d)", argv[0],
                        WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    return 0;
}

static struct nj_output *qcow2_open(const char *path, uint64_t size,
                                    bool force)
{
    struct stat st;
    if (stat(path, &st) == 0) {
        if (!force) {
            nj_error("output '%s' exists; use --force to overwrite it", path);
            return NULL;
        }
        if (!S_ISREG(st.st_mode)) {
            nj_error("qcow2 output '%s' must be a regular file", path);
            return NULL;
        }
    }
    char sizebuf[32];
    snprintf(sizebuf, sizeof sizebuf, "%llu", (unsigned long long)size);
    char *create[] = { (char *)"qemu-img", (char *)"create", (char *)"-q",
                       (char *)"-f", (char *)"qcow2", (char *)"--",
                       (char *)path, sizebuf, NULL };
    if (run_command(create) < 0) {
        nj_error_prefix("create qcow2 '%s'", path);
        return NULL;
    }
    struct nbd_output *n = nj_calloc(1, sizeof *n);
    n->base.ops = &nbd_ops;
    n->base.path = nj_strdup(path);
    n->base.size = size;
    n->nbd = nbd_create();
    char *serve[] = { (char *)"qemu-nbd", (char *)"-f", (char *)"qcow2",
                      (char *)"--cache=writeback", (char *)"--", (char *)path,
                      NULL };
    if (!n->nbd ||
        nbd_connect_systemd_socket_activation(n->nbd, serve) < 0) {
        nbd_err("serve qcow2 with qemu-nbd", path);
        nbd_out_discard(&n->base);
        free(n->base.path);
        free(n);
        return NULL;
    }
    return &n->base;
}

struct nj_output *nj_output_open(const char *path, enum nj_output_format fmt,
                                 uint64_t size, bool force)
{
    return fmt == NJ_OUTPUT_QCOW2 ? qcow2_open(path, size, force)
                                  : fd_open(path, size, force);
}

int nj_output_close(struct nj_output *o, bool ok)
{
    if (!o)
        return 0;
    int ret = 0;
    if (ok)
        ret = o->ops->finish(o);
    if (!ok || ret < 0)
        o->ops->discard(o);
    free(o->path);
    free(o);
    return ret;
}
