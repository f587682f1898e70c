/*
 * nj-output.c: restore outputs (raw file, block device, qcow2 over NBD).
 */
#include "nj-io.h"
#include "nj-output.h"
#include "nj-util.h"

#include <errno.h>
#include <fcntl.h>
#include <libnbd.h>
#include <pthread.h>
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

/* ---- qcow2 through qemu-nbd ----
 *
 * One thread owns the libnbd handle and keeps many asynchronous writes in
 * flight, so that qemu-nbd allocates and writes clusters in parallel;
 * synchronous writes from the restore workers would go one at a time.
 * pwrite copies the data into a queued request and returns; it blocks
 * only while MAX_QUEUED bytes are queued or in flight, which bounds the
 * memory.  A write that fails is reported by the next pwrite and by
 * finish, so a restore never ends well with data missing.
 */

#define MAX_QUEUED (16u << 20)
#define MAX_IN_FLIGHT 16

struct wreq {
    struct wreq *next;
    struct nbd_output *n;
    uint64_t off;
    size_t len;
    bool zero;
    char data[];
};

struct nbd_output {
    struct nj_output base;
    struct nbd_handle *nbd;
    pthread_t tid;
    bool started;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct wreq *head, *tail; /* queued, not yet submitted */
    uint64_t queued;          /* bytes queued or in flight */
    unsigned in_flight;
    bool stop, failed;
    char error[512];
};

static int nbd_err(const char *what, const char *path)
{
    return nj_error("%s '%s': %s", what, path, nbd_get_error());
}

static void wfail(struct nbd_output *n, const char *msg)
{
    if (!n->failed) {
        n->failed = true;
        snprintf(n->error, sizeof n->error, "%s", msg);
    }
}

/* Runs in the writer thread, inside libnbd: no libnbd calls here. */
static int wdone(void *user_data, int *error)
{
    struct wreq *r = user_data;
    struct nbd_output *n = r->n;
    pthread_mutex_lock(&n->lock);
    if (*error) {
        char msg[512];
        snprintf(msg, sizeof msg, "write '%s' at offset %llu: %s",
                 n->base.path, (unsigned long long)r->off, strerror(*error));
        wfail(n, msg);
    }
    n->in_flight--;
    n->queued -= r->zero ? 0 : r->len;
    pthread_cond_broadcast(&n->cond);
    pthread_mutex_unlock(&n->lock);
    free(r);
    return 1;
}

static void *writer(void *arg)
{
    struct nbd_output *n = arg;
    for (;;) {
        pthread_mutex_lock(&n->lock);
        while (n->head && n->in_flight < MAX_IN_FLIGHT && !n->failed) {
            struct wreq *r = n->head;
            n->head = r->next;
            if (!n->head)
                n->tail = NULL;
            n->in_flight++;
            pthread_mutex_unlock(&n->lock);
            nbd_completion_callback cb = { .callback = wdone, .user_data = r };
            int64_t c = r->zero ? nbd_aio_zero(n->nbd, r->len, r->off, cb, 0)
                                : nbd_aio_pwrite(n->nbd, r->data, r->len,
                                                 r->off, cb, 0);
            pthread_mutex_lock(&n->lock);
            if (c < 0) {
                char msg[512];
                snprintf(msg, sizeof msg, "write '%s': %s", n->base.path,
                         nbd_get_error());
                wfail(n, msg);
                n->in_flight--;
                n->queued -= r->zero ? 0 : r->len;
                free(r);
            }
        }
        bool done = n->stop && !n->head && n->in_flight == 0;
        bool idle = !n->head && n->in_flight == 0;
        bool failed = n->failed;
        if (idle && !done && !failed)
            pthread_cond_wait(&n->cond, &n->lock);
        pthread_mutex_unlock(&n->lock);
        if (done || (failed && n->in_flight == 0))
            break;
        if (!idle && nbd_poll(n->nbd, 5) < 0) {
            pthread_mutex_lock(&n->lock);
            char msg[512];
            snprintf(msg, sizeof msg, "write '%s': %s", n->base.path,
                     nbd_get_error());
            wfail(n, msg);
            n->in_flight = 0; /* the connection is gone */
            pthread_cond_broadcast(&n->cond);
            pthread_mutex_unlock(&n->lock);
            break;
        }
    }
    return NULL;
}

static int enqueue(struct nbd_output *n, const void *buf, size_t len,
                   uint64_t off, bool zero)
{
    struct wreq *r = nj_malloc(sizeof *r + (zero ? 0 : len));
    r->next = NULL;
    r->n = n;
    r->off = off;
    r->len = len;
    r->zero = zero;
    if (!zero)
        memcpy(r->data, buf, len);
    pthread_mutex_lock(&n->lock);
    while (!n->failed && !zero && n->queued > 0 &&
           n->queued + len > MAX_QUEUED)
        pthread_cond_wait(&n->cond, &n->lock);
    if (n->failed) {
        nj_error("%s", n->error);
        pthread_mutex_unlock(&n->lock);
        free(r);
        return -1;
    }
    n->queued += zero ? 0 : len;
    if (n->tail)
        n->tail->next = r;
    else
        n->head = r;
    n->tail = r;
    pthread_cond_broadcast(&n->cond);
    pthread_mutex_unlock(&n->lock);
    return 0;
}

static int nbd_out_pwrite(struct nj_output *o, const void *buf, size_t len,
                          uint64_t off)
{
    struct nbd_output *n = (struct nbd_output *)o;
    /* libnbd limits one request to 32 MiB. */
    const char *p = buf;
    while (len > 0) {
        size_t k = NJ_MIN(len, (size_t)(32u << 20));
        if (enqueue(n, p, k, off, false) < 0)
            return -1;
        p += k;
        off += k;
        len -= k;
    }
    return 0;
}

static int nbd_out_zero(struct nj_output *o, uint64_t off, uint64_t len)
{
    struct nbd_output *n = (struct nbd_output *)o;
    while (len > 0) {
        uint64_t k = NJ_MIN(len, (uint64_t)1 << 30);
        if (enqueue(n, NULL, (size_t)k, off, true) < 0)
            return -1;
        off += k;
        len -= k;
    }
    return 0;
}

/* Let the writer drain and end. */
static void writer_stop(struct nbd_output *n)
{
    if (!n->started)
        return;
    pthread_mutex_lock(&n->lock);
    n->stop = true;
    pthread_cond_broadcast(&n->cond);
    pthread_mutex_unlock(&n->lock);
    pthread_join(n->tid, NULL);
    n->started = false;
    for (struct wreq *r = n->head, *next = NULL; r; r = next) {
        next = r->next;
        free(r);
    }
    n->head = n->tail = NULL;
}

static int nbd_out_finish(struct nj_output *o)
{
    struct nbd_output *n = (struct nbd_output *)o;
    writer_stop(n);
    int ret = 0;
    if (n->failed)
        ret = nj_error("%s", n->error);
    if (ret == 0 && nbd_flush(n->nbd, 0) < 0)
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
    pthread_mutex_lock(&n->lock);
    wfail(n, "discarded");
    pthread_cond_broadcast(&n->cond);
    pthread_mutex_unlock(&n->lock);
    writer_stop(n);
    nbd_close(n->nbd);
    n->nbd = NULL;
    unlink(o->path);
    pthread_mutex_destroy(&n->lock);
    pthread_cond_destroy(&n->cond);
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
    pthread_mutex_init(&n->lock, NULL);
    pthread_cond_init(&n->cond, NULL);
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
    if (pthread_create(&n->tid, NULL, writer, n) != 0) {
        nj_error("cannot start the qcow2 writer thread");
        nbd_out_discard(&n->base);
        free(n->base.path);
        free(n);
        return NULL;
    }
    n->started = true;
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
