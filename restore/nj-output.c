/*
 * nj-output.c: restore outputs (raw file, block device, qcow2 over NBD).
 *
 * Every output is an out_file, registered in a process-wide list from
 * before it creates anything until it is closed, so that a signal thread
 * can abandon them all (nj_output_abort_all).  States of a file output:
 *
 *   open:      private directory made (privfd), image inside it being
 *              written; nothing under the final name
 *   published: image renamed to the final name (under live_lock, so an
 *              abort either happens entirely before it, and the rename
 *              never happens, or entirely after, and removes nothing)
 *   closed:    private directory removed, unregistered
 *
 * Helpers (qemu-img, qemu-nbd) are started by spawn() in their own process
 * group, so a terminal's ^C reaches nightjar alone and nightjar decides
 * what happens to them; their pid is registered while they run, so an
 * abort can kill them.  A helper is reaped in two steps (waitid with
 * WNOWAIT, unregister, then reap) so that an abort never signals a pid
 * that has been reused.
 */
#include "nj-io.h"
#include "nj-output.h"
#include "nj-util.h"

#include <errno.h>
#include <fcntl.h>
#include <libnbd.h>
#include <pthread.h>
#include <linux/fs.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <dirent.h>
#include <unistd.h>

#define IMAGE_NAME "image"
#define SOCK_NAME "sock"
/* Descriptors handed to helpers stay clear of fd 3 (socket activation). */
#define HELPER_FD_MIN 10

struct out_file {
    struct nj_output base;
    struct out_file *live_next; /* under live_lock */
    bool aborted;               /* atomic */
    bool published;             /* under live_lock */
    pid_t helper;               /* running qemu-img/qemu-nbd, under live_lock */
    int dirfd;                  /* the output's directory */
    int privfd;                 /* the private directory, or -1 */
    char privname[48];
    char *name;                 /* last component of the path */
    char priv_path[64];         /* "/proc/self/fd/N" for helpers */
    bool force;
    mode_t mode;
};

static pthread_mutex_t live_lock = PTHREAD_MUTEX_INITIALIZER;
static struct out_file *live;
static bool all_aborted; /* written under live_lock, read atomically */

static bool is_aborted(struct out_file *f)
{
    return __atomic_load_n(&f->aborted, __ATOMIC_ACQUIRE);
}

bool nj_output_aborted(void)
{
    return __atomic_load_n(&all_aborted, __ATOMIC_ACQUIRE);
}

static int interrupted(struct out_file *f)
{
    return nj_error("output '%s': interrupted", f->base.path);
}

/* Kill a helper and whatever it started (its process group).  Under
 * live_lock, with the helper not yet reaped, so the ids are still its. */
static void helper_kill(pid_t pid)
{
    if (kill(-pid, SIGKILL) < 0)
        kill(pid, SIGKILL);
}

/* Remove everything inside the private directory (through its fd, so a
 * rename of it in a shared directory changes nothing), then the directory
 * itself by name.  Returns -1 with the last error set. */
static int priv_remove(struct out_file *f)
{
    if (f->privfd < 0)
        return 0;
    int ret = 0;
    int fd = openat(f->privfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) {
        ret = nj_error_errno(errno, "open private directory of '%s'",
                             f->base.path);
        if (fd >= 0)
            close(fd);
    } else {
        struct dirent *de;
        while ((de = readdir(d)) != NULL)
            if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..") &&
                nj_remove_tree(f->privfd, de->d_name) < 0)
                ret = -1;
        closedir(d);
    }
    if (unlinkat(f->dirfd, f->privname, AT_REMOVEDIR) < 0 && errno != ENOENT)
        ret = nj_error_errno(errno, "remove '%s'", f->privname);
    return ret;
}

unsigned nj_output_abort_all(void)
{
    unsigned n = 0;
    pthread_mutex_lock(&live_lock);
    __atomic_store_n(&all_aborted, true, __ATOMIC_RELEASE);
    for (struct out_file *f = live; f; f = f->live_next) {
        n++;
        __atomic_store_n(&f->aborted, true, __ATOMIC_RELEASE);
        if (f->helper > 0)
            helper_kill(f->helper);
        if (!f->published)
            priv_remove(f); /* best effort: the owner's discard repeats it */
    }
    pthread_mutex_unlock(&live_lock);
    return n;
}

static int live_add(struct out_file *f)
{
    if (all_aborted)
        return interrupted(f);
    f->live_next = live;
    live = f;
    return 0;
}

static void live_remove(struct out_file *f)
{
    pthread_mutex_lock(&live_lock);
    for (struct out_file **pp = &live; *pp; pp = &(*pp)->live_next)
        if (*pp == f) {
            *pp = f->live_next;
            break;
        }
    pthread_mutex_unlock(&live_lock);
}

/* Make the private directory: a random name, created exclusively, 0700
 * whatever the umask, checked to be ours.  Called under live_lock. */
static int priv_make(struct out_file *f)
{
    static const char alphabet[] = "abcdefghijklmnopqrstuvwxyz0123456789";
    for (int attempt = 0; attempt < 100; attempt++) {
        unsigned char raw[12];
        char rnd[sizeof raw + 1];
        if (getrandom(raw, sizeof raw, 0) != (ssize_t)sizeof raw)
            return nj_error_errno(errno, "getrandom");
        for (size_t i = 0; i < sizeof raw; i++)
            rnd[i] = alphabet[raw[i] % (sizeof alphabet - 1)];
        rnd[sizeof raw] = '\0';
        snprintf(f->privname, sizeof f->privname, ".nightjar-restore-%s", rnd);
        if (mkdirat(f->dirfd, f->privname, 0700) == 0)
            break;
        if (errno != EEXIST)
            return nj_error_errno(errno, "create a private directory next "
                                  "to '%s'", f->base.path);
        f->privname[0] = '\0';
    }
    if (!f->privname[0])
        return nj_error("create a private directory next to '%s': too many "
                        "collisions", f->base.path);
    int fd = openat(f->dirfd, f->privname,
                    O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        unlinkat(f->dirfd, f->privname, AT_REMOVEDIR);
        return nj_error_errno(e, "open '%s'", f->privname);
    }
    /* Above the fds socket activation uses; close-on-exec except in
     * helpers, which clear it in the child. */
    f->privfd = fcntl(fd, F_DUPFD_CLOEXEC, HELPER_FD_MIN);
    int e = errno;
    close(fd);
    if (f->privfd < 0)
        return nj_error_errno(e, "duplicate a descriptor");
    struct stat st;
    if (fstat(f->privfd, &st) < 0)
        return nj_error_errno(errno, "stat '%s'", f->privname);
    /* Someone who can rename in the shared directory could have put their
     * own directory under our name between mkdir and open. */
    if (!S_ISDIR(st.st_mode) || st.st_uid != geteuid()) {
        close(f->privfd);
        f->privfd = -1;
        return nj_error("private directory '%s' next to '%s' was replaced",
                        f->privname, f->base.path);
    }
    if (fchmod(f->privfd, 0700) < 0)
        return nj_error_errno(errno, "chmod '%s'", f->privname);
    snprintf(f->priv_path, sizeof f->priv_path, "/proc/self/fd/%d",
             f->privfd);
    return 0;
}

/*
 * Rename the finished image to its final name: without replacing unless
 * force (a rename replaces a symlink itself, never its target), then
 * remove the private directory and fsync the output's directory.  The
 * caller has fsync'ed the image.
 */
static int publish(struct out_file *f)
{
    pthread_mutex_lock(&live_lock);
    if (is_aborted(f)) {
        pthread_mutex_unlock(&live_lock);
        return interrupted(f);
    }
    int r;
    if (f->force) {
        r = renameat(f->privfd, IMAGE_NAME, f->dirfd, f->name);
    } else {
        r = renameat2(f->privfd, IMAGE_NAME, f->dirfd, f->name,
                      RENAME_NOREPLACE);
        if (r < 0 && errno == EINVAL) {
            /* A filesystem without RENAME_NOREPLACE: link never replaces. */
            r = linkat(f->privfd, IMAGE_NAME, f->dirfd, f->name, 0);
            if (r == 0)
                unlinkat(f->privfd, IMAGE_NAME, 0);
        }
    }
    int e = errno;
    if (r == 0)
        f->published = true;
    pthread_mutex_unlock(&live_lock);
    if (r < 0) {
        if (e == EEXIST)
            return nj_error("output '%s' appeared during the restore; use "
                            "--force to overwrite it", f->base.path);
        return nj_error_errno(e, "rename the restored image to '%s'",
                              f->base.path);
    }
    /* The rename and the removal of the private directory reach the disk
     * with the directory's fsync; without it a crash could lose the name
     * of a file whose data is safe. */
    if (priv_remove(f) < 0)
        return -1;
    if (fsync(f->dirfd) < 0)
        return nj_error_errno(errno, "fsync the directory of '%s'",
                              f->base.path);
    return 0;
}

/* ---- write buffers ----
 *
 * A buffer is in use while it has references (the caller's from get to
 * put, and one per queued write); with none it goes to the free list for
 * the next get.  in_use counts the bytes of buffers in use, total those of
 * all.  A get takes a free buffer that is large enough; when none is, the
 * free ones are freed and a new one is made, unless that would take in_use
 * past the limit: then it waits for a put.  One buffer is always granted
 * when none is in use, so a chunk of any size can be restored; total
 * stays within the limit or that one buffer.  The lock is taken after an
 * output's own lock, never before.
 */
struct obuf {
    struct nj_output_buf pub; /* first */
    struct obuf *next;        /* free list */
    unsigned refs;
};

struct nj_output_pool {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct obuf *free;
    uint64_t total, in_use, limit; /* limit 0: none */
    bool failed;
    char error[512];
};

static struct nj_output_pool *pool_new(uint64_t limit)
{
    struct nj_output_pool *p = nj_calloc(1, sizeof *p);
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->cond, NULL);
    p->limit = limit;
    return p;
}

/* Every buffer has been put and every write that held one is gone. */
static void pool_free(struct nj_output_pool *p)
{
    if (!p)
        return;
    for (struct obuf *b = p->free, *next = NULL; b; b = next) {
        next = b->next;
        free(b);
    }
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->cond);
    free(p);
}

/* Wake the waiting gets and make them, and all later ones, fail. */
static void pool_fail(struct nj_output_pool *p, const char *msg)
{
    pthread_mutex_lock(&p->lock);
    if (!p->failed) {
        p->failed = true;
        snprintf(p->error, sizeof p->error, "%s", msg);
    }
    pthread_cond_broadcast(&p->cond);
    pthread_mutex_unlock(&p->lock);
}

struct nj_output_buf *nj_output_buf_get(struct nj_output *o, size_t len)
{
    struct nj_output_pool *p = o->pool;
    struct obuf *b = NULL;
    pthread_mutex_lock(&p->lock);
    while (!p->failed) {
        struct obuf **pp = &p->free;
        while (*pp && (*pp)->pub.cap < len)
            pp = &(*pp)->next;
        if (*pp) {
            b = *pp;
            *pp = b->next;
            break;
        }
        /* None fits: the free ones are all too small. */
        while (p->free) {
            struct obuf *f = p->free;
            p->free = f->next;
            p->total -= f->pub.cap;
            free(f);
        }
        if (p->in_use == 0 || !p->limit || p->in_use + len <= p->limit) {
            /* A new one: malloc outside the lock. */
            p->total += len;
            p->in_use += len;
            pthread_mutex_unlock(&p->lock);
            b = nj_malloc(sizeof *b + len);
            b->pub.data = b + 1;
            b->pub.cap = len;
            b->next = NULL;
            b->refs = 1;
            return &b->pub;
        }
        pthread_cond_wait(&p->cond, &p->lock);
    }
    if (!b) {
        nj_error("%s", p->error);
        pthread_mutex_unlock(&p->lock);
        return NULL;
    }
    b->refs = 1;
    b->next = NULL;
    p->in_use += b->pub.cap;
    pthread_mutex_unlock(&p->lock);
    return &b->pub;
}

void nj_output_buf_ref(struct nj_output *o, struct nj_output_buf *pub)
{
    struct obuf *b = (struct obuf *)pub;
    pthread_mutex_lock(&o->pool->lock);
    b->refs++;
    pthread_mutex_unlock(&o->pool->lock);
}

void nj_output_buf_put(struct nj_output *o, struct nj_output_buf *pub)
{
    if (!pub)
        return;
    struct nj_output_pool *p = o->pool;
    struct obuf *b = (struct obuf *)pub;
    pthread_mutex_lock(&p->lock);
    if (--b->refs == 0) {
        p->in_use -= b->pub.cap;
        b->next = p->free;
        p->free = b;
        pthread_cond_broadcast(&p->cond);
    }
    pthread_mutex_unlock(&p->lock);
}

int nj_output_write_buf(struct nj_output *o, struct nj_output_buf *b,
                        size_t boff, size_t len, uint64_t off)
{
    if (o->ops->pwrite_buf)
        return o->ops->pwrite_buf(o, b, boff, len, off);
    return o->ops->pwrite(o, (const char *)b->data + boff, len, off);
}

/* ---- helpers: qemu-img and qemu-nbd ---- */

/* Format v in decimal into buf without malloc or locale (after fork). */
static void fmt_ulong(unsigned long v, char *buf, size_t size)
{
    char tmp[24];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v && n < sizeof tmp);
    size_t i = 0;
    for (; i < n && i + 1 < size; i++)
        buf[i] = tmp[n - 1 - i];
    buf[i] = '\0';
}

/*
 * Start argv[0] (from PATH) with f's private directory descriptor
 * inherited under the same number and, when listenfd >= 0, as a systemd
 * socket-activated server on fd 3.  tunables, when not NULL, is put in
 * front of the child's GLIBC_TUNABLES (the user's own settings come after
 * it and win).  The child gets its own process group and an empty signal
 * mask.  Registers the pid in f->helper.  Only async-signal-safe calls in
 * the child: the restore has threads.
 */
static pid_t spawn(struct out_file *f, char *const argv[], int listenfd,
                   const char *tunables)
{
    char **envp = NULL;
    char *listen_pid = NULL;
    NJ_CLEANUP_FREE char *tun = NULL;
    if (listenfd >= 0 || tunables) {
        static const char tun_name[] = "GLIBC_TUNABLES=";
        size_t n = 0;
        while (environ[n])
            n++;
        envp = nj_calloc(n + 4, sizeof *envp);
        size_t k = 0;
        if (listenfd >= 0) {
            listen_pid = nj_strdup("LISTEN_PID=xxxxxxxxxxxxxxxxxxxx");
            envp[k++] = listen_pid;
            envp[k++] = (char *)"LISTEN_FDS=1";
        }
        const char *user_tun = NULL;
        for (size_t i = 0; i < n; i++) {
            if (tunables && !strncmp(environ[i], tun_name, sizeof tun_name - 1))
                user_tun = environ[i] + sizeof tun_name - 1;
            else if (listenfd < 0 || strncmp(environ[i], "LISTEN_", 7) != 0)
                envp[k++] = environ[i];
        }
        if (tunables) {
            tun = user_tun && *user_tun
                      ? nj_asprintf("%s%s:%s", tun_name, tunables, user_tun)
                      : nj_asprintf("%s%s", tun_name, tunables);
            envp[k++] = tun;
        }
    }
    pid_t pid = fork();
    if (pid < 0) {
        free(envp);
        free(listen_pid);
        return nj_error_errno(errno, "fork");
    }
    if (pid == 0) {
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        signal(SIGPIPE, SIG_DFL);
        setpgid(0, 0);
        if (fcntl(f->privfd, F_SETFD, 0) < 0)
            _exit(126);
        if (listenfd >= 0) {
            if (listenfd != 3) {
                if (dup2(listenfd, 3) < 0)
                    _exit(126);
            } else if (fcntl(3, F_SETFD, 0) < 0) {
                _exit(126);
            }
            fmt_ulong((unsigned long)getpid(), listen_pid + 11, 21);
        }
        if (envp)
            environ = envp;
        execvp(argv[0], argv);
        static const char msg[] = "nightjar-restore: cannot run ";
        ssize_t w = write(STDERR_FILENO, msg, sizeof msg - 1);
        w = write(STDERR_FILENO, argv[0], strlen(argv[0]));
        w = write(STDERR_FILENO, "\n", 1);
        (void)w;
        _exit(127);
    }
    free(envp);
    free(listen_pid);
    /* In the parent too, so the group exists before anyone signals it. */
    setpgid(pid, pid);
    pthread_mutex_lock(&live_lock);
    f->helper = pid;
    if (is_aborted(f))
        helper_kill(pid);
    pthread_mutex_unlock(&live_lock);
    return pid;
}

/* Wait for the helper to exit, unregister it, reap it; fail unless it
 * exited with status 0. */
static int helper_wait(struct out_file *f, const char *what)
{
    pid_t pid = f->helper;
    if (pid <= 0)
        return 0;
    siginfo_t si;
    memset(&si, 0, sizeof si);
    while (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOWAIT) < 0)
        if (errno != EINTR) {
            int e = errno;
            pthread_mutex_lock(&live_lock);
            f->helper = 0;
            pthread_mutex_unlock(&live_lock);
            return nj_error_errno(e, "wait for '%s'", what);
        }
    pthread_mutex_lock(&live_lock);
    f->helper = 0;
    pthread_mutex_unlock(&live_lock);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (is_aborted(f))
        return interrupted(f);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return nj_error("'%s' failed (%s %d)", what,
                        WIFEXITED(status) ? "status" : "signal",
                        WIFEXITED(status) ? WEXITSTATUS(status)
                                          : WTERMSIG(status));
    return 0;
}

/* ---- raw files and block devices ---- */

struct fd_output {
    struct out_file file;
    int fd;
};

static int fd_pwrite(struct nj_output *o, const void *buf, size_t len,
                     uint64_t off)
{
    struct fd_output *f = (struct fd_output *)o;
    if (is_aborted(&f->file))
        return interrupted(&f->file);
    if (nj_full_pwrite(f->fd, buf, len, (off_t)off) < 0)
        return nj_error_errno(errno, "write '%s' at offset %llu", o->path,
                              (unsigned long long)off);
    return 0;
}

static int fd_zero(struct nj_output *o, uint64_t off, uint64_t len)
{
    struct fd_output *f = (struct fd_output *)o;
    if (is_aborted(&f->file))
        return interrupted(&f->file);
    if (o->in_place) {
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
    if (is_aborted(&f->file))
        return interrupted(&f->file);
    int ret = 0;
    if (fsync(f->fd) < 0)
        ret = nj_error_errno(errno, "fsync '%s'", o->path);
    if (close(f->fd) < 0 && ret == 0)
        ret = nj_error_errno(errno, "close '%s'", o->path);
    f->fd = -1;
    if (ret == 0 && !o->in_place)
        ret = publish(&f->file);
    return ret;
}

static void fd_discard(struct nj_output *o)
{
    struct fd_output *f = (struct fd_output *)o;
    if (f->fd >= 0)
        close(f->fd);
    f->fd = -1;
    if (!f->file.published)
        priv_remove(&f->file);
}

static const struct nj_output_ops fd_ops = {
    .pwrite = fd_pwrite,
    .zero = fd_zero,
    .finish = fd_finish,
    .discard = fd_discard,
};

/* A new sparse image in the private directory, mode applied with fchmod. */
static int raw_create(struct fd_output *f)
{
    struct out_file *of = &f->file;
    f->fd = openat(of->privfd, IMAGE_NAME,
                   O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (f->fd < 0)
        return nj_error_errno(errno, "create '%s'", of->base.path);
    if (fchmod(f->fd, of->mode) < 0)
        return nj_error_errno(errno, "chmod '%s'", of->base.path);
    /* A fresh file is all holes: zero ranges need no writes. */
    if (ftruncate(f->fd, (off_t)of->base.size) < 0)
        return nj_error_errno(errno, "resize '%s' to %llu bytes",
                              of->base.path,
                              (unsigned long long)of->base.size);
    return 0;
}

/* Open a block device for writing in place: devpath (a resolved path)
 * or the last component in the output's directory, never following a
 * symlink, never blocking, and checked to be a block device of at least
 * the disk's size. */
static int device_open(struct fd_output *f, const char *devpath)
{
    struct out_file *of = &f->file;
    int flags = O_WRONLY | O_EXCL | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC;
    f->fd = devpath ? open(devpath, flags) : openat(of->dirfd, of->name, flags);
    if (f->fd < 0)
        return nj_error_errno(errno, "open block device '%s'", of->base.path);
    struct stat st;
    if (fstat(f->fd, &st) < 0)
        return nj_error_errno(errno, "stat '%s'", of->base.path);
    if (!S_ISBLK(st.st_mode))
        return nj_error("output '%s' was replaced while it was opened",
                        of->base.path);
    int fl = fcntl(f->fd, F_GETFL);
    if (fl < 0 || fcntl(f->fd, F_SETFL, fl & ~O_NONBLOCK) < 0)
        return nj_error_errno(errno, "fcntl '%s'", of->base.path);
    uint64_t devsize = 0;
    if (ioctl(f->fd, BLKGETSIZE64, &devsize) < 0)
        return nj_error_errno(errno, "size of block device '%s'",
                              of->base.path);
    if (devsize < of->base.size)
        return nj_error("block device '%s' has %llu bytes, the disk needs "
                        "%llu", of->base.path, (unsigned long long)devsize,
                        (unsigned long long)of->base.size);
    of->base.in_place = true;
    of->base.needs_zero = true;
    return 0;
}

/* ---- qcow2 through qemu-nbd ----
 *
 * One thread owns the libnbd handle and keeps many asynchronous writes in
 * flight, so that qemu-nbd allocates and writes clusters in parallel;
 * synchronous writes from the restore workers would go one at a time.
 * pwrite_buf queues requests that hold a reference to the caller's write
 * buffer (the decoded chunk) and returns; the buffer goes back to the pool
 * when its last request is retired (libnbd's free callback, which runs
 * exactly once per request, even when the connection is gone), and the
 * pool's MAX_BUFFERED bounds the memory.  pwrite copies the data into a
 * queued request; it blocks only while MAX_QUEUED copied bytes are queued
 * or in flight.  A write that fails is reported by the next write and by
 * finish, and makes waiting nj_output_buf_get calls fail, so a restore
 * never ends well with data missing.
 *
 * qemu-nbd serves one connection (no --persistent) and exits when it is
 * closed; nightjar creates the listening socket in the private directory
 * and starts qemu-nbd itself (spawn), so it knows the pid and an abort can
 * kill it.
 *
 * qemu-nbd writes with O_DIRECT (--cache=none) when the filesystem takes
 * it: a restore writes each cluster once and never reads it back, so the
 * page cache only costs a copy of every byte (the largest cost of a qcow2
 * restore with --cache=writeback, more than SHA-256 and zstd together).
 * --cache=none still honours flushes, and finish flushes, waits for
 * qemu-nbd's clean exit and fsyncs the image before the rename.  Requests
 * of at most MAX_REQUEST bytes, at most MAX_IN_FLIGHT of them: enough to
 * keep the disk busy, and qemu-nbd's buffers (one per request) stay small.
 */

/*
 * qemu-nbd allocates a buffer for each write request and frees it when the
 * write is done; glibc serves these from mmap (its threshold does not
 * adapt here), so every request cost an mmap, page faults that clear each
 * page, and a munmap: with --cache=none, a third of qemu-nbd's time.  A
 * fixed mmap threshold above the request size and a trim threshold above
 * the bytes in flight make them reuse the heap.  One arena: with one per
 * thread the buffers spread over several heaps and qemu-nbd's peak RSS
 * went up to 58 MB (8 GiB bench image); with one, 24 to 50 MB over 15
 * runs, mostly 33.
 */
#define NBD_TUNABLES "glibc.malloc.mmap_threshold=2097152:" \
                     "glibc.malloc.trim_threshold=16777216:" \
                     "glibc.malloc.arena_max=1"

#define MAX_REQUEST (1u << 20)
/* Bytes of the write buffers in use: the chunks being decoded and those
 * whose writes are queued or in flight. */
#define MAX_BUFFERED (16u << 20)
#define MAX_QUEUED (8u << 20)
#define MAX_IN_FLIGHT 8

/* A write of len bytes at ptr (in data, or in the caller's buf, which the
 * request holds a reference to), or a zero request. */
struct wreq {
    struct wreq *next;
    struct nbd_output *n;
    uint64_t off;
    size_t len;
    size_t cost;              /* bytes counted in queued: the copies */
    bool zero;
    struct nj_output_buf *buf;
    const char *ptr;
    char data[];
};

struct nbd_output {
    struct out_file file;
    struct nbd_handle *nbd;
    int imgfd; /* our own descriptor of the image, for fchmod and fsync */
    pthread_t tid;
    bool started;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct wreq *head, *tail; /* queued, not yet submitted */
    uint64_t queued;          /* bytes copied into requests queued or in
                               * flight */
    unsigned in_flight;
    bool stop, failed;
    char error[512];
};

static int nbd_err(const char *what, const char *path)
{
    return nj_error("%s '%s': %s", what, path, nbd_get_error());
}

/* Under n->lock. */
static void wfail(struct nbd_output *n, const char *msg)
{
    if (!n->failed) {
        n->failed = true;
        snprintf(n->error, sizeof n->error, "%s", msg);
    }
    pool_fail(n->file.base.pool, n->error);
}

static void wreq_free(struct wreq *r)
{
    nj_output_buf_put(&r->n->file.base, r->buf);
    free(r);
}

/* libnbd's free callback: called exactly once for every request handed to
 * nbd_aio_*, after wdone or when nbd_close retires it, or when the call
 * fails.  No libnbd calls here. */
static void wfree(void *user_data)
{
    wreq_free(user_data);
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
                 n->file.base.path, (unsigned long long)r->off, strerror(*error));
        wfail(n, msg);
    }
    n->in_flight--;
    n->queued -= r->cost;
    pthread_cond_broadcast(&n->cond);
    pthread_mutex_unlock(&n->lock);
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
            size_t cost = r->cost;
            nbd_completion_callback cb = { .callback = wdone, .user_data = r,
                                           .free = wfree };
            int64_t c = r->zero ? nbd_aio_zero(n->nbd, r->len, r->off, cb, 0)
                                : nbd_aio_pwrite(n->nbd, r->ptr, r->len,
                                                 r->off, cb, 0);
            /* r may be freed now (wfree). */
            pthread_mutex_lock(&n->lock);
            if (c < 0) {
                char msg[512];
                snprintf(msg, sizeof msg, "write '%s': %s", n->file.base.path,
                         nbd_get_error());
                wfail(n, msg);
                n->in_flight--;
                n->queued -= cost;
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
            snprintf(msg, sizeof msg, "write '%s': %s", n->file.base.path,
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

/* Queue a write of len bytes at buf: copied, or with a reference to ob
 * when it is not NULL; or a zero request (buf NULL). */
static int enqueue(struct nbd_output *n, const void *buf, size_t len,
                   uint64_t off, bool zero, struct nj_output_buf *ob)
{
    bool copy = !zero && !ob;
    struct wreq *r = nj_malloc(sizeof *r + (copy ? len : 0));
    r->next = NULL;
    r->n = n;
    r->off = off;
    r->len = len;
    r->cost = copy ? len : 0;
    r->zero = zero;
    r->buf = NULL;
    r->ptr = buf;
    if (copy) {
        memcpy(r->data, buf, len);
        r->ptr = r->data;
    }
    if (is_aborted(&n->file)) {
        free(r);
        return interrupted(&n->file);
    }
    if (ob) {
        nj_output_buf_ref(&n->file.base, ob);
        r->buf = ob;
    }
    pthread_mutex_lock(&n->lock);
    while (!n->failed && r->cost && n->queued > 0 &&
           n->queued + len > MAX_QUEUED)
        pthread_cond_wait(&n->cond, &n->lock);
    if (n->failed) {
        nj_error("%s", n->error);
        pthread_mutex_unlock(&n->lock);
        wreq_free(r);
        return -1;
    }
    n->queued += r->cost;
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
    const char *p = buf;
    while (len > 0) {
        size_t k = NJ_MIN(len, (size_t)MAX_REQUEST);
        if (enqueue(n, p, k, off, false, NULL) < 0)
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
        if (enqueue(n, NULL, (size_t)k, off, true, NULL) < 0)
            return -1;
        off += k;
        len -= k;
    }
    return 0;
}

static int nbd_out_pwrite_buf(struct nj_output *o, struct nj_output_buf *b,
                              size_t boff, size_t len, uint64_t off)
{
    struct nbd_output *n = (struct nbd_output *)o;
    const char *p = (const char *)b->data + boff;
    while (len > 0) {
        size_t k = NJ_MIN(len, (size_t)MAX_REQUEST);
        if (enqueue(n, p, k, off, false, b) < 0)
            return -1;
        p += k;
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
        wreq_free(r);
    }
    n->head = n->tail = NULL;
}

/* Kill the helper if it still runs and reap it, whatever its status. */
static void helper_stop(struct out_file *f)
{
    pthread_mutex_lock(&live_lock);
    pid_t pid = f->helper;
    if (pid > 0)
        helper_kill(pid);
    pthread_mutex_unlock(&live_lock);
    if (pid > 0) {
        NJ_CLEANUP_FREE char *err = nj_strdup(nj_error_get());
        helper_wait(f, "helper");
        nj_error("%s", err);
    }
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
    nbd_close(n->nbd);
    n->nbd = NULL;
    /* With the connection closed qemu-nbd exits; its exit status says
     * whether the image is complete. */
    if (ret < 0)
        helper_stop(&n->file);
    else if (helper_wait(&n->file, "qemu-nbd") < 0)
        ret = nj_error_prefix("write '%s'", o->path);
    if (ret == 0 && fsync(n->imgfd) < 0)
        ret = nj_error_errno(errno, "fsync '%s'", o->path);
    if (ret == 0)
        ret = publish(&n->file);
    if (ret == 0) {
        close(n->imgfd);
        n->imgfd = -1;
        pthread_mutex_destroy(&n->lock);
        pthread_cond_destroy(&n->cond);
    }
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
    helper_stop(&n->file);
    nbd_close(n->nbd);
    n->nbd = NULL;
    if (n->imgfd >= 0)
        close(n->imgfd);
    n->imgfd = -1;
    if (!n->file.published)
        priv_remove(&n->file);
    pthread_mutex_destroy(&n->lock);
    pthread_cond_destroy(&n->cond);
}

static const struct nj_output_ops nbd_ops = {
    .pwrite = nbd_out_pwrite,
    .pwrite_buf = nbd_out_pwrite_buf,
    .zero = nbd_out_zero,
    .finish = nbd_out_finish,
    .discard = nbd_out_discard,
};

/* Whether the image's filesystem takes O_DIRECT (tmpfs before Linux 6.6
 * does not), tried on a descriptor of the image itself. */
static bool direct_ok(int imgfd)
{
    char self[64];
    snprintf(self, sizeof self, "/proc/self/fd/%d", imgfd);
    int fd = open(self, O_RDONLY | O_DIRECT | O_CLOEXEC);
    if (fd < 0)
        return false;
    close(fd);
    return true;
}

/* Create the image with qemu-img, then serve it with qemu-nbd and connect.
 * Both see the image only as /proc/self/fd/N/image. */
static int qcow2_start(struct nbd_output *n)
{
    struct out_file *f = &n->file;
    const char *path = f->base.path;
    char img[96], sizebuf[32];
    snprintf(img, sizeof img, "%s/%s", f->priv_path, IMAGE_NAME);
    snprintf(sizebuf, sizeof sizebuf, "%llu", (unsigned long long)f->base.size);
    char *create[] = { (char *)"qemu-img", (char *)"create", (char *)"-q",
                       (char *)"-f", (char *)"qcow2", (char *)"--", img,
                       sizebuf, NULL };
    if (spawn(f, create, -1, NULL) < 0 || helper_wait(f, "qemu-img") < 0)
        return nj_error_prefix("create qcow2 '%s'", path);
    n->imgfd = openat(f->privfd, IMAGE_NAME,
                      O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    struct stat st;
    if (n->imgfd < 0 || fstat(n->imgfd, &st) < 0)
        return nj_error_errno(errno, "open the new image of '%s'", path);
    if (!S_ISREG(st.st_mode))
        return nj_error("the new image of '%s' is not a regular file", path);
    if (fchmod(n->imgfd, f->mode) < 0)
        return nj_error_errno(errno, "chmod '%s'", path);

    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    snprintf(addr.sun_path, sizeof addr.sun_path, "%s/%s", f->priv_path,
             SOCK_NAME);
    NJ_CLEANUP_CLOSE int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return nj_error_errno(errno, "socket");
    if (bind(s, (struct sockaddr *)&addr, sizeof addr) < 0 ||
        listen(s, 1) < 0)
        return nj_error_errno(errno, "listen for qemu-nbd");
    char *serve[] = { (char *)"qemu-nbd", (char *)"-f", (char *)"qcow2",
                      (char *)(direct_ok(n->imgfd) ? "--cache=none"
                                                   : "--cache=writeback"),
                      (char *)"--", img, NULL };
    if (spawn(f, serve, s, NBD_TUNABLES) < 0)
        return nj_error_prefix("serve qcow2 '%s' with qemu-nbd", path);
    /* Only qemu-nbd holds the listening socket now: if it dies, the
     * connection fails instead of waiting. */
    close(s);
    s = -1;
    n->nbd = nbd_create();
    if (!n->nbd || nbd_connect_unix(n->nbd, addr.sun_path) < 0)
        return nbd_err("serve qcow2 with qemu-nbd", path);
    unlinkat(f->privfd, SOCK_NAME, 0);
    if (pthread_create(&n->tid, NULL, writer, n) != 0)
        return nj_error("cannot start the qcow2 writer thread");
    n->started = true;
    return 0;
}

/* Only root and we can change the entries of this directory. */
static bool dir_trusted(int dirfd)
{
    struct stat st;
    if (fstat(dirfd, &st) < 0)
        return false;
    return (st.st_uid == 0 || st.st_uid == geteuid()) &&
           !(st.st_mode & (S_IWGRP | S_IWOTH));
}

static void out_free(struct out_file *f)
{
    pool_free(f->base.pool);
    if (f->privfd >= 0)
        close(f->privfd);
    if (f->dirfd >= 0)
        close(f->dirfd);
    free(f->name);
    free(f->base.path);
    free(f);
}

/*
 * What is at the path decides the kind of output:
 *   nothing            a new file
 *   regular file       replaced by a new file (--force)
 *   symlink            replaced by a new file (--force), its target never
 *                      opened; except a symlink to a block device in a
 *                      directory only root or we can change, which is
 *                      followed (--force)
 *   block device       written in place (--force, raw only)
 *   anything else      refused
 * Sets *device, and *devpath to the resolved device of a followed symlink.
 */
static int output_kind(const char *path, int dirfd, const char *name,
                       bool force, bool *device, char **devpath)
{
    struct stat st;
    if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
        if (errno == ENOENT)
            return 0;
        return nj_error_errno(errno, "stat '%s'", path);
    }
    if (S_ISLNK(st.st_mode)) {
        if (!force)
            return nj_error("output '%s' exists (a symbolic link); use "
                            "--force to replace the link", path);
        struct stat target;
        if (stat(path, &target) < 0 || !S_ISBLK(target.st_mode))
            return 0;
        if (!dir_trusted(dirfd))
            return nj_error("output '%s' is a symbolic link to a block device "
                            "in a directory that others can change; name the "
                            "device itself", path);
        *devpath = realpath(path, NULL);
        if (!*devpath)
            return nj_error_errno(errno, "resolve '%s'", path);
        *device = true;
        return 0;
    }
    if (!force)
        return nj_error("output '%s' exists; use --force to overwrite it",
                        path);
    if (S_ISBLK(st.st_mode))
        *device = true;
    else if (!S_ISREG(st.st_mode))
        return nj_error("output '%s' is neither a regular file nor a block "
                        "device", path);
    return 0;
}

/* Split path into its directory (new string) and last component. */
static int split_path(const char *path, char **dir, const char **name)
{
    const char *slash = strrchr(path, '/');
    *name = slash ? slash + 1 : path;
    if (!**name || !strcmp(*name, ".") || !strcmp(*name, ".."))
        return nj_error("output '%s' does not name a file", path);
    if (!slash)
        *dir = nj_strdup(".");
    else if (slash == path)
        *dir = nj_strdup("/");
    else
        *dir = nj_asprintf("%.*s", (int)(slash - path), path);
    return 0;
}

struct nj_output *nj_output_open_opts(const char *path,
                                      enum nj_output_format fmt,
                                      uint64_t size,
                                      const struct nj_output_opts *opts)
{
    bool force = opts && opts->force;
    mode_t mode = opts ? opts->mode & 07777 : 0600;
    NJ_CLEANUP_FREE char *dir = NULL, *devpath = NULL;
    const char *name = NULL;
    if (split_path(path, &dir, &name) < 0)
        return NULL;
    NJ_CLEANUP_CLOSE int dirfd =
        open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dirfd < 0) {
        nj_error_errno(errno, "open the directory of '%s'", path);
        return NULL;
    }
    bool device = false;
    if (output_kind(path, dirfd, name, force, &device, &devpath) < 0)
        return NULL;
    if (device && fmt == NJ_OUTPUT_QCOW2) {
        nj_error("qcow2 output '%s' must be a file, not a block device", path);
        return NULL;
    }

    struct out_file *f;
    if (fmt == NJ_OUTPUT_QCOW2) {
        struct nbd_output *n = nj_calloc(1, sizeof *n);
        n->file.base.ops = &nbd_ops;
        n->imgfd = -1;
        pthread_mutex_init(&n->lock, NULL);
        pthread_cond_init(&n->cond, NULL);
        f = &n->file;
    } else {
        struct fd_output *d = nj_calloc(1, sizeof *d);
        d->file.base.ops = &fd_ops;
        d->fd = -1;
        f = &d->file;
    }
    f->base.path = nj_strdup(path);
    f->base.size = size;
    f->base.pool = pool_new(fmt == NJ_OUTPUT_QCOW2 ? MAX_BUFFERED : 0);
    f->dirfd = NJ_STEAL_FD(&dirfd);
    f->privfd = -1;
    f->name = nj_strdup(name);
    f->force = force;
    f->mode = mode;

    pthread_mutex_lock(&live_lock);
    bool registered = live_add(f) == 0;
    int r = registered ? 0 : -1;
    if (r == 0 && !device)
        r = priv_make(f);
    pthread_mutex_unlock(&live_lock);
    if (r == 0) {
        if (device)
            r = device_open((struct fd_output *)f, devpath);
        else if (fmt == NJ_OUTPUT_QCOW2)
            r = qcow2_start((struct nbd_output *)f);
        else
            r = raw_create((struct fd_output *)f);
    }
    if (r == 0)
        return &f->base;
    NJ_CLEANUP_FREE char *err = nj_strdup(nj_error_get());
    if (registered) {
        f->base.ops->discard(&f->base);
        live_remove(f);
    } else if (fmt == NJ_OUTPUT_QCOW2) {
        pthread_mutex_destroy(&((struct nbd_output *)f)->lock);
        pthread_cond_destroy(&((struct nbd_output *)f)->cond);
    }
    out_free(f);
    nj_error("%s", err);
    return NULL;
}

struct nj_output *nj_output_open(const char *path, enum nj_output_format fmt,
                                 uint64_t size, bool force)
{
    struct nj_output_opts opts = { .force = force, .mode = 0600 };
    return nj_output_open_opts(path, fmt, size, &opts);
}

int nj_output_close(struct nj_output *o, bool ok)
{
    if (!o)
        return 0;
    int ret = 0;
    if (ok)
        ret = o->ops->finish(o);
    if (!ok || ret < 0) {
        /* The caller reports the error that made it fail, not a later
         * one from the cleanup. */
        NJ_CLEANUP_FREE char *err = nj_strdup(nj_error_get());
        o->ops->discard(o);
        nj_error("%s", err);
    }
    struct out_file *f = (struct out_file *)o;
    live_remove(f);
    out_free(f);
    return ret;
}
