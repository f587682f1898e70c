/*
 * obj-dir.c: a directory as an object namespace (nj-object.h).
 *
 * A key is a relative path under the root: "chunks/ab/abcd..." is the file
 * ROOT/chunks/ab/abcd....  Directories are made as puts need them and
 * removed when a delete empties them; they are never objects themselves.
 *
 * How each guarantee of nj-object.h is kept:
 *  - all or nothing: a put writes a temporary file (".tmp-obj-XXXXXXXX",
 *    random, created O_EXCL, never a valid key) beside its key and links
 *    or renames it into place;
 *  - CREATE is linkat(2), which fails when the name exists: atomic;
 *  - IF_MATCH, REPLACE and delete take an flock on the object they change
 *    and check that the name still holds the inode they locked (else they
 *    start again), so that a compare-and-swap never overwrites a put it did
 *    not see; the tag is the SHA-256 of the content, in hex;
 *  - durability: a put fsyncs its file before the link and the directory
 *    after.  A NJ_OBJ_LAZY create (chunks) is written at once (O_DIRECT
 *    where the buffer allows: no copy through the page cache) but only
 *    named at the next nj_obj_sync(), or when enough are pending: one
 *    syncfs makes the whole batch durable, the links follow, and a second
 *    syncfs makes the names durable.  So no name is ever visible, even
 *    after a power loss, before its content is on disk (ext4 may keep a
 *    name whose delayed data never reached the disk: a chunk that a later
 *    create-only put would take for present);
 *  - nothing followed: every path is walked one component at a time with
 *    O_NOFOLLOW; a symlink, FIFO or device is listed as an object (so that
 *    it is seen) but never opened through or waited on;
 *  - listing walks the tree in key order (a directory sorts as its name
 *    followed by '/') and skips whole subtrees that sort before the token,
 *    so each page costs a walk down one path, not the whole tree.
 *    Temporary files are never listed; those more than a day old (left by
 *    a writer that died) are removed as the listing passes them.
 */
#include "nj-digest.h"
#include "nj-io.h"
#include "nj-object.h"
#include "nj-util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PAGE_MAX 1000
#define TMP_PREFIX ".tmp-"
#define TMP_STALE (24 * 3600)
#define ATTEMPTS 8

/* Lazy creates written but not yet named. */
#define PENDING_MAX_COUNT 4096
#define PENDING_MAX_BYTES (256ull << 20)

struct pending {
    char *key;
    char tmp[96]; /* beside the key */
};

struct obj_dir {
    struct nj_objects base;
    char *path;
    int root; /* -1 until the directory exists */
    pthread_mutex_t lock;
    /* pending: lazy creates to name at the next flush; flushing: the batch
     * a flush is naming now (both searched, so that a second create of a
     * key is seen as existing); flush_active while one runs. */
    struct pending *pending, *flushing;
    size_t npending, nflushing, cap_pending, cap_flushing;
    uint64_t pending_bytes;
    bool flush_active;
    int flush_error; /* errno of a failed background flush, for sync */
    pthread_cond_t flushed;
};

static struct obj_dir *to_dir(struct nj_objects *o)
{
    return (struct obj_dir *)o;
}

static int root_fd(struct obj_dir *d)
{
    pthread_mutex_lock(&d->lock);
    if (d->root < 0)
        d->root = nj_open_dir(AT_FDCWD, d->path);
    int fd = d->root;
    pthread_mutex_unlock(&d->lock);
    if (fd < 0)
        nj_error_prefix("object directory");
    return fd;
}

/* Open the directory holding key (making it when make), walked without
 * following anything; *last is the key's final segment.  -1 with errno
 * ENOENT when absent (and !make), ENOTDIR when a segment is not a
 * directory. */
static int open_parent(struct obj_dir *d, const char *key, bool make,
                       const char **last)
{
    int root = root_fd(d);
    return root < 0 ? -1 : nj_open_parent(root, key, make, last);
}

static int open_object(struct obj_dir *d, const char *key)
{
    int root = root_fd(d);
    if (root < 0)
        return -1;
    return nj_open_regular(root, key, O_RDONLY);
}

static int od_get(struct nj_objects *o, const char *key, size_t max,
                  void **buf, size_t *len)
{
    NJ_CLEANUP_CLOSE int fd = open_object(to_dir(o), key);
    if (fd < 0)
        return -1;
    struct stat st;
    if (fstat(fd, &st) < 0)
        return nj_error_errno(errno, "stat '%s'", key);
    if ((uint64_t)st.st_size > max) {
        errno = EFBIG;
        return nj_error("'%s' is too large (%lld bytes, limit %zu)", key,
                        (long long)st.st_size, max);
    }
    size_t n = (size_t)st.st_size;
    char *b = nj_malloc(n + 1);
    if (nj_full_pread(fd, b, n, 0) < 0) {
        int e = errno;
        free(b);
        errno = e ? e : EIO;
        return nj_error("read '%s': it changed while being read", key);
    }
    b[n] = '\0';
    *buf = b;
    *len = n;
    return 0;
}

static ssize_t od_get_range(struct nj_objects *o, const char *key,
                            uint64_t off, void *buf, size_t len)
{
    NJ_CLEANUP_CLOSE int fd = open_object(to_dir(o), key);
    if (fd < 0)
        return -1;
    size_t done = 0;
    while (done < len) {
        ssize_t n = pread(fd, (char *)buf + done, len - done,
                          (off_t)(off + done));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return nj_error_errno(errno, "read '%s'", key);
        if (n == 0)
            break;
        done += (size_t)n;
    }
    return (ssize_t)done;
}

static void tag_of(const void *buf, size_t len, char *tag)
{
    struct nj_digest d;
    nj_sha256(buf, len, &d);
    nj_digest_to_hex(&d, tag);
}

static int tag_of_fd(int fd, char *tag, const char *key)
{
    struct nj_sha256_ctx *c = nj_sha256_new();
    if (!c)
        return nj_error("sha256: out of memory");
    char buf[65536];
    off_t off = 0;
    for (;;) {
        ssize_t n = pread(fd, buf, sizeof buf, off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            nj_sha256_free(c);
            return nj_error_errno(errno, "read '%s'", key);
        }
        if (n == 0)
            break;
        nj_sha256_update(c, buf, (size_t)n);
        off += n;
    }
    struct nj_digest d;
    int r = nj_sha256_final(c, &d);
    nj_sha256_free(c);
    if (r < 0)
        return -1;
    nj_digest_to_hex(&d, tag);
    return 0;
}

/* Lock the object at pfd/name: its fd, flocked, still the inode the name
 * holds; -2 (errno ENOENT) when absent; -1 on error (EINVAL: not a
 * regular file). */
static int lock_object(int pfd, const char *name, const char *key)
{
    /* Each time round, another put or delete of the key has succeeded:
     * progress, so the bound only stops a name replaced without end. */
    for (int i = 0; i < 1000; i++) {
        int fd = openat(pfd, name,
                        O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
        if (fd < 0 && errno == ENOENT)
            return -2;
        if (fd < 0 && (errno == ELOOP || errno == ENXIO)) {
            errno = EINVAL;
            return nj_error("'%s' is not a regular file", key);
        }
        if (fd < 0)
            return nj_error_errno(errno, "open '%s'", key);
        struct stat a, b;
        if (fstat(fd, &a) < 0 || !S_ISREG(a.st_mode)) {
            close(fd);
            errno = EINVAL;
            return nj_error("'%s' is not a regular file", key);
        }
        if (flock(fd, LOCK_EX) < 0) {
            int e = errno;
            close(fd);
            return nj_error_errno(e, "lock '%s'", key);
        }
        if (fstatat(pfd, name, &b, AT_SYMLINK_NOFOLLOW) == 0 &&
            a.st_ino == b.st_ino && a.st_dev == b.st_dev)
            return fd;
        close(fd); /* replaced or deleted meanwhile: look again */
    }
    errno = EAGAIN;
    return nj_error("'%s' keeps changing", key);
}

static int write_tmp(int pfd, const char *key, const void *buf, size_t len,
                     bool durable, char *tmp, size_t tmpsize)
{
    int fd = nj_tmpfile_open(pfd, "obj", tmp, tmpsize);
    if (fd < 0)
        return -1;
    int w = durable ? nj_full_write(fd, buf, len)
                    : nj_write_direct(fd, buf, len);
    if (w < 0 || (durable && fsync(fd) < 0)) {
        int e = errno;
        close(fd);
        unlinkat(pfd, tmp, 0);
        return nj_error_errno(e, "write '%s'", key);
    }
    close(fd);
    return 0;
}

static int put_in(int pfd, const char *name, const char *key,
                  const void *buf, size_t len, enum nj_obj_put_mode mode,
                  bool durable, const char *tag)
{
    char tmp[96];
    if (mode == NJ_OBJ_CREATE) {
        if (write_tmp(pfd, key, buf, len, durable, tmp, sizeof tmp) < 0)
            return -1;
        int r = linkat(pfd, tmp, pfd, name, 0);
        int e = errno;
        unlinkat(pfd, tmp, 0);
        if (r < 0 && e == EEXIST)
            return 1;
        if (r < 0)
            return nj_error_errno(e, "create '%s'", key);
        return 0;
    }
    NJ_CLEANUP_CLOSE int held = lock_object(pfd, name, key);
    if (held == -1)
        return -1;
    if (mode == NJ_OBJ_IF_MATCH) {
        char now[NJ_OBJ_TAG_MAX];
        if (held == -2)
            return 1;
        if (tag_of_fd(held, now, key) < 0)
            return -1;
        if (strcmp(now, tag) != 0)
            return 1;
    }
    if (write_tmp(pfd, key, buf, len, durable, tmp, sizeof tmp) < 0)
        return -1;
    if (renameat(pfd, tmp, pfd, name) < 0) {
        int e = errno;
        unlinkat(pfd, tmp, 0);
        return nj_error_errno(e, "replace '%s'", key);
    }
    return 0;
}

/* ---- lazy creates: written now, named at the next flush ---- */

/* Caller holds d->lock. */
static bool pending_has(const struct obj_dir *d, const char *key)
{
    for (size_t i = 0; i < d->npending; i++)
        if (strcmp(d->pending[i].key, key) == 0)
            return true;
    for (size_t i = 0; i < d->nflushing; i++)
        if (strcmp(d->flushing[i].key, key) == 0)
            return true;
    return false;
}

/* Link (or, with !link, only drop) the temporary file of p; 0 or -1. */
static int pending_finish(int root, struct pending *p, bool link)
{
    const char *name;
    int ret = 0;
    /* The directory holds the temporary file: no delete removed it. */
    int pfd = nj_open_parent(root, p->key, false, &name);
    if (pfd < 0) {
        ret = link ? nj_error_prefix("name '%s'", p->key) : -1;
    } else {
        if (link && linkat(pfd, p->tmp, pfd, name, 0) < 0 && errno != EEXIST)
            ret = nj_error_errno(errno, "name '%s'", p->key);
        unlinkat(pfd, p->tmp, 0);
        close(pfd);
    }
    return ret;
}

/*
 * Make the pending creates durable (syncfs), then give them their names;
 * the names themselves become durable at the syncfs od_sync does next.
 * Called with d->lock held, dropped meanwhile so that other threads keep
 * writing into a fresh batch; with wait, a flush already running is
 * waited for first, so that on return everything put before the call is
 * named; without, a running flush makes this a no-op.  A failure is also
 * kept for the next od_sync: creates that answered 0 were lost.
 */
static int flush_locked(struct obj_dir *d, bool wait)
{
    while (d->flush_active) {
        if (!wait)
            return 0;
        pthread_cond_wait(&d->flushed, &d->lock);
    }
    if (d->npending == 0)
        return 0;
    struct pending *batch = d->pending;
    size_t n = d->npending, cap = d->cap_pending;
    d->pending = d->flushing;
    d->cap_pending = d->cap_flushing;
    d->npending = 0;
    d->flushing = batch;
    d->cap_flushing = cap;
    d->nflushing = n;
    d->pending_bytes = 0;
    d->flush_active = true;
    int root = d->root; /* open: the creates needed it */
    pthread_mutex_unlock(&d->lock);

    int ret = 0;
    if (syncfs(root) < 0)
        ret = nj_error_errno(errno, "syncfs '%s'", d->path);
    for (size_t i = 0; i < n; i++) /* never name what may not be on disk */
        if (pending_finish(root, &batch[i], ret == 0) < 0 && ret == 0)
            ret = -1;

    pthread_mutex_lock(&d->lock);
    if (ret < 0 && !d->flush_error)
        d->flush_error = errno ? errno : EIO;
    for (size_t i = 0; i < n; i++) /* other threads search them until now */
        free(batch[i].key);
    d->nflushing = 0;
    d->flush_active = false;
    pthread_cond_broadcast(&d->flushed);
    return ret;
}

/* A NJ_OBJ_LAZY create: 0 written (named at the next flush), 1 the key
 * exists or is pending, -1. */
static int put_lazy(struct obj_dir *d, int pfd, const char *name,
                    const char *key, const void *buf, size_t len)
{
    struct stat st;
    if (fstatat(pfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0)
        return 1; /* as linkat would find it: create-only */
    if (errno != ENOENT)
        return nj_error_errno(errno, "stat '%s'", key);
    pthread_mutex_lock(&d->lock);
    bool pend = pending_has(d, key);
    pthread_mutex_unlock(&d->lock);
    if (pend)
        return 1;
    struct pending p = { 0 };
    if (write_tmp(pfd, key, buf, len, false, p.tmp, sizeof p.tmp) < 0)
        return -1;
    int ret = 0;
    pthread_mutex_lock(&d->lock);
    if (pending_has(d, key)) { /* another thread, meanwhile */
        unlinkat(pfd, p.tmp, 0);
        ret = 1;
    } else {
        p.key = nj_strdup(key);
        if (d->npending == d->cap_pending) {
            d->cap_pending = d->cap_pending ? 2 * d->cap_pending : 64;
            d->pending = nj_realloc_array(d->pending, d->cap_pending,
                                          sizeof *d->pending);
        }
        d->pending[d->npending++] = p;
        d->pending_bytes += len;
        if (d->npending >= PENDING_MAX_COUNT ||
            d->pending_bytes >= PENDING_MAX_BYTES)
            ret = flush_locked(d, false);
    }
    pthread_mutex_unlock(&d->lock);
    return ret;
}

static int od_put(struct nj_objects *o, const char *key, const void *buf,
                  size_t len, enum nj_obj_put_mode mode, const char *tag,
                  char *tag_out)
{
    bool durable = !(mode & NJ_OBJ_LAZY);
    mode &= ~NJ_OBJ_LAZY;
    if (mode == NJ_OBJ_IF_MATCH && !tag) {
        errno = EINVAL;
        return nj_error("put '%s': IF_MATCH without a tag", key);
    }
    int r = -1;
    /* A delete emptying the directory may remove it under us: again. */
    for (int i = 0; i < ATTEMPTS; i++) {
        const char *name;
        int pfd = open_parent(to_dir(o), key, true, &name);
        if (pfd < 0)
            return -1;
        if (!durable && mode == NJ_OBJ_CREATE)
            r = put_lazy(to_dir(o), pfd, name, key, buf, len);
        else
            r = put_in(pfd, name, key, buf, len, mode, durable, tag);
        int e = errno;
        if (r == 0 && durable && fsync(pfd) < 0)
            r = nj_error_errno(errno, "fsync the directory of '%s'", key);
        close(pfd);
        if (r >= 0 || e != ENOENT)
            break;
        errno = e;
    }
    if (r == 0 && tag_out)
        tag_of(buf, len, tag_out);
    return r;
}

static int od_head(struct nj_objects *o, const char *key, uint64_t *size,
                   int64_t *mtime, char *tag)
{
    const char *name;
    NJ_CLEANUP_CLOSE int pfd = open_parent(to_dir(o), key, false, &name);
    if (pfd < 0)
        return errno == ENOENT ? 0 : -1;
    struct stat st;
    if (fstatat(pfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
        return errno == ENOENT ? 0 : nj_error_errno(errno, "stat '%s'", key);
    if (!S_ISREG(st.st_mode)) {
        errno = EINVAL;
        return nj_error("'%s' is not a regular file", key);
    }
    if (size)
        *size = (uint64_t)st.st_size;
    if (mtime)
        *mtime = (int64_t)st.st_mtime;
    if (tag) {
        NJ_CLEANUP_CLOSE int fd = nj_open_regular(pfd, name, O_RDONLY);
        if (fd < 0 || tag_of_fd(fd, tag, key) < 0)
            return errno == ENOENT ? 0 : -1;
    }
    return 1;
}

/* Remove the directories of key that its delete left empty, deepest
 * first, each through its parent opened without following anything. */
static void prune_dirs(struct obj_dir *d, const char *key)
{
    char path[NJ_OBJ_KEY_MAX + 1];
    snprintf(path, sizeof path, "%s", key);
    for (char *slash = strrchr(path, '/'); slash; slash = strrchr(path, '/')) {
        *slash = '\0'; /* path is now the directory to remove */
        const char *name;
        int pfd = open_parent(d, path, false, &name);
        if (pfd < 0)
            break;
        int r = unlinkat(pfd, name, AT_REMOVEDIR);
        close(pfd);
        if (r < 0)
            break; /* not empty (or already gone): its parents are not */
    }
}

static int od_del(struct nj_objects *o, const char *key)
{
    const char *name;
    int pfd = open_parent(to_dir(o), key, false, &name);
    if (pfd < 0)
        return errno == ENOENT ? 0 : -1;
    struct stat st;
    int r = 0;
    if (fstatat(pfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
        if (errno != ENOENT)
            r = nj_error_errno(errno, "stat '%s'", key);
    } else if (S_ISDIR(st.st_mode)) {
        errno = EISDIR;
        r = nj_error("'%s' is a directory, not an object", key);
    } else if (!S_ISREG(st.st_mode)) {
        /* A symlink or FIFO planted as an object: the name goes, nothing
         * it points to is touched. */
        if (unlinkat(pfd, name, 0) < 0 && errno != ENOENT)
            r = nj_error_errno(errno, "delete '%s'", key);
    } else {
        int held = lock_object(pfd, name, key);
        if (held == -1)
            r = -1;
        else if (held >= 0) {
            if (unlinkat(pfd, name, 0) < 0 && errno != ENOENT)
                r = nj_error_errno(errno, "delete '%s'", key);
            close(held);
        }
    }
    close(pfd);
    if (r == 0)
        prune_dirs(to_dir(o), key);
    return r;
}

static int od_del_many(struct nj_objects *o, const char *const *keys,
                       size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (od_del(o, keys[i]) < 0)
            return -1;
    return 0;
}

/* ---- listing ---- */

struct dent {
    char *name;
    bool dir; /* a real directory (not a symlink to one) */
};
NJ_VECTOR(dent_vec, struct dent)

struct lister {
    const char *token; /* list keys after this one; NULL: from the start */
    const char *delimiter;
    size_t prefix_len;
    struct nj_obj_page *page;
    size_t ocap, pcap;
    char *last; /* the last key or prefix put in the page */
    bool full;
    int64_t now;
};

/* Byte order of keys, a directory sorting as "name/". */
static int dent_cmp(const void *pa, const void *pb)
{
    const struct dent *a = pa, *b = pb;
    const unsigned char *x = (const unsigned char *)a->name;
    const unsigned char *y = (const unsigned char *)b->name;
    while (*x && *x == *y)
        x++, y++;
    unsigned cx = *x ? *x : a->dir ? '/' : 0;
    unsigned cy = *y ? *y : b->dir ? '/' : 0;
    return cx < cy ? -1 : cx > cy ? 1 : 0;
}

static void page_add_object(struct lister *l, char *key, const struct stat *st)
{
    struct nj_obj_page *p = l->page;
    if (p->nobjects == l->ocap) {
        l->ocap = l->ocap ? 2 * l->ocap : 64;
        p->objects = nj_realloc_array(p->objects, l->ocap, sizeof *p->objects);
    }
    p->objects[p->nobjects++] = (struct nj_obj_entry){
        .key = key,
        .size = S_ISREG(st->st_mode) ? (uint64_t)st->st_size : 0,
        .mtime = (int64_t)st->st_mtime,
    };
    l->last = key;
}

static void page_add_prefix(struct lister *l, char *prefix)
{
    struct nj_obj_page *p = l->page;
    if (p->nprefixes == l->pcap) {
        l->pcap = l->pcap ? 2 * l->pcap : 16;
        p->prefixes = nj_realloc_array(p->prefixes, l->pcap,
                                       sizeof *p->prefixes);
    }
    p->prefixes[p->nprefixes++] = prefix;
    l->last = prefix;
}

/* Whether the tree under dirfd holds an object (an empty directory a
 * delete left behind is not a common prefix on S3 either).  -1 on error. */
/* A directory stream of its own (not a dup: a dup would share the read
 * offset with every other walk of the same fd). */
static DIR *open_stream(int dirfd)
{
    int fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *dir = fd >= 0 ? fdopendir(fd) : NULL;
    if (!dir && fd >= 0)
        close(fd);
    return dir;
}

static int has_object(int dirfd, const char *key)
{
    DIR *dir = open_stream(dirfd);
    if (!dir)
        return nj_error_errno(errno, "open '%s'", key);
    int found = 0;
    struct dirent *de;
    while (found == 0 && (errno = 0, de = readdir(dir))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..") ||
            !strncmp(de->d_name, TMP_PREFIX, strlen(TMP_PREFIX)))
            continue;
        struct stat st;
        if (fstatat(dirfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
            continue;
        if (!S_ISDIR(st.st_mode)) {
            found = 1;
            break;
        }
        int sub = openat(dirfd, de->d_name,
                         O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (sub < 0) {
            found = nj_error_errno(errno, "open '%s%s/'", key, de->d_name);
            break;
        }
        found = has_object(sub, key);
        close(sub);
    }
    if (found == 0 && errno)
        found = nj_error_errno(errno, "read directory '%s'", key);
    closedir(dir);
    return found;
}

static int walk(struct lister *l, int dirfd, const char *base,
                const char *match);

/* One entry of a directory being walked: key is base + name. */
static int visit(struct lister *l, int dirfd, const struct dent *e,
                 const char *base)
{
    if (!e->dir) {
        NJ_CLEANUP_FREE char *key = nj_asprintf("%s%s", base, e->name);
        if (l->token && strcmp(key, l->token) <= 0)
            return 0;
        struct stat st;
        if (fstatat(dirfd, e->name, &st, AT_SYMLINK_NOFOLLOW) < 0)
            return errno == ENOENT ? 0
                                   : nj_error_errno(errno, "stat '%s'", key);
        page_add_object(l, key, &st);
        key = NULL;
        return 0;
    }
    NJ_CLEANUP_FREE char *dkey = nj_asprintf("%s%s/", base, e->name);
    bool inside = l->token && strncmp(l->token, dkey, strlen(dkey)) == 0;
    if (l->token && !inside && strcmp(dkey, l->token) <= 0)
        return 0; /* everything under it sorts before the token */
    NJ_CLEANUP_CLOSE int sub = openat(dirfd, e->name, O_RDONLY | O_DIRECTORY |
                                      O_NOFOLLOW | O_CLOEXEC);
    if (sub < 0) {
        if (errno == ENOENT)
            return 0; /* removed meanwhile: nothing under it */
        return nj_error_errno(errno, "open '%s'", dkey);
    }
    if (l->delimiter && strlen(dkey) > l->prefix_len) {
        if (inside) /* the token is this prefix or under it: reported */
            return 0;
        int h = has_object(sub, dkey);
        if (h <= 0)
            return h;
        page_add_prefix(l, dkey);
        dkey = NULL;
        return 0;
    }
    return walk(l, sub, dkey, NULL);
}

/* Walk dirfd (whose keys begin with base) in key order, entries whose
 * name begins with match (NULL: all), until the page is full. */
static int walk(struct lister *l, int dirfd, const char *base,
                const char *match)
{
    DIR *dir = open_stream(dirfd);
    if (!dir)
        return nj_error_errno(errno, "open '%s'", base);
    struct dent_vec ents = { 0 };
    int r = 0;
    struct dirent *d;
    while ((errno = 0, d = readdir(dir))) {
        if (!strcmp(d->d_name, ".") || !strcmp(d->d_name, ".."))
            continue;
        if (!strncmp(d->d_name, TMP_PREFIX, strlen(TMP_PREFIX))) {
            struct stat st;
            if (fstatat(dirfd, d->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
                S_ISREG(st.st_mode) && st.st_mtime < l->now - TMP_STALE)
                unlinkat(dirfd, d->d_name, 0);
            continue;
        }
        if (match && strncmp(d->d_name, match, strlen(match)) != 0)
            continue;
        bool isdir = d->d_type == DT_DIR;
        if (d->d_type == DT_UNKNOWN) {
            struct stat st;
            isdir = fstatat(dirfd, d->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
                    S_ISDIR(st.st_mode);
        }
        dent_vec_append(&ents, (struct dent){ nj_strdup(d->d_name), isdir });
    }
    if (errno)
        r = nj_error_errno(errno, "read directory '%s'", base);
    closedir(dir);
    if (ents.len)
        qsort(ents.ptr, ents.len, sizeof *ents.ptr, dent_cmp);
    for (size_t i = 0; r == 0 && i < ents.len && !l->full; i++) {
        r = visit(l, dirfd, &ents.ptr[i], base);
        if (l->page->nobjects + l->page->nprefixes >= PAGE_MAX)
            l->full = true;
    }
    for (size_t i = 0; i < ents.len; i++)
        free(ents.ptr[i].name);
    dent_vec_reset(&ents);
    return r;
}

static int od_list(struct nj_objects *o, const char *prefix,
                   const char *delimiter, char **token,
                   struct nj_obj_page *page)
{
    struct obj_dir *d = to_dir(o);
    struct lister l = {
        .token = *token,
        .delimiter = delimiter,
        .prefix_len = strlen(prefix),
        .page = page,
        .now = (int64_t)time(NULL),
    };
    /* The directory the prefix ends in, and what the names there must
     * begin with. */
    const char *slash = strrchr(prefix, '/');
    NJ_CLEANUP_FREE char *base =
        slash ? nj_asprintf("%.*s", (int)(slash - prefix + 1), prefix)
              : nj_strdup("");
    const char *match = slash ? slash + 1 : prefix;
    int fd;
    if (*base) {
        NJ_CLEANUP_FREE char *probe = nj_asprintf("%sx", base);
        const char *name;
        if (!nj_obj_key_valid(probe)) {
            errno = EINVAL;
            return nj_error("'%s' is not a valid key prefix", prefix);
        }
        fd = open_parent(d, probe, false, &name);
        if (fd < 0 && errno == ENOENT) {
            free(*token);
            *token = NULL;
            return 0; /* nothing under it */
        }
    } else {
        fd = root_fd(d);
        fd = fd < 0 ? -1 : dup(fd);
    }
    if (fd < 0)
        return -1;
    int r = walk(&l, fd, base, *match ? match : NULL);
    close(fd);
    if (r < 0) {
        nj_obj_page_clear(page);
        return -1;
    }
    char *next = l.full && l.last ? nj_strdup(l.last) : NULL;
    free(*token);
    *token = next;
    return 0;
}

static int od_sync(struct nj_objects *o)
{
    struct obj_dir *d = to_dir(o);
    int fd = root_fd(d);
    if (fd < 0)
        return -1;
    pthread_mutex_lock(&d->lock);
    int r = flush_locked(d, true);
    int lost = d->flush_error;
    pthread_mutex_unlock(&d->lock);
    if (r < 0)
        return -1;
    if (lost) {
        errno = lost;
        return nj_error("objects written to '%s' were lost: %s", d->path,
                        strerror(lost));
    }
    if (syncfs(fd) < 0)
        return nj_error_errno(errno, "syncfs '%s'", d->path);
    return 0;
}

static int od_create(struct nj_objects *o)
{
    struct obj_dir *d = to_dir(o);
    if (mkdir(d->path, 0700) < 0 && errno != EEXIST)
        return nj_error_errno(errno, "mkdir '%s'", d->path);
    return root_fd(d) < 0 ? -1 : 0;
}

static void od_free(struct nj_objects *o)
{
    struct obj_dir *d = to_dir(o);
    /* Creates never synced are dropped: nothing published names them. */
    for (size_t i = 0; i < d->npending; i++) {
        pending_finish(d->root, &d->pending[i], false);
        free(d->pending[i].key);
    }
    free(d->pending);
    free(d->flushing);
    if (d->root >= 0)
        close(d->root);
    pthread_cond_destroy(&d->flushed);
    pthread_mutex_destroy(&d->lock);
    free(d->path);
    free(d);
}

static const struct nj_objects_ops dir_objects_ops = {
    .name = "directory",
    .free = od_free,
    .get = od_get,
    .get_range = od_get_range,
    .put = od_put,
    .head = od_head,
    .del = od_del,
    .del_many = od_del_many,
    .list = od_list,
    .sync = od_sync,
    .create = od_create,
};

struct nj_objects *nj_objects_dir_new(const char *path)
{
    struct obj_dir *d = nj_calloc(1, sizeof *d);
    d->base.ops = &dir_objects_ops;
    d->path = nj_strdup(path);
    d->root = -1;
    pthread_mutex_init(&d->lock, NULL);
    pthread_cond_init(&d->flushed, NULL);
    return &d->base;
}
