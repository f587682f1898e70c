/*
 * store-dir.c: the directory store backend.
 *
 * Layout (docs/FORMAT.md):
 *   nightjar-store.json      format name and version: what makes a store
 *   chunks/XX/<64 hex>       chunk frames, XX = first two hex digits
 *   staging/<id>/            backups being written, owner.json first
 *   backups/<id>/            published backups: manifest.json + indexes
 *   locks/<key>.lock         per-domain flock files
 *
 * Durability.  Chunk frames are written to a temporary name in their
 * final directory and not fsync'ed one by one, which would cost a disk
 * flush per chunk.  They are kept in a pending set; nj_store_sync() makes
 * them durable with one syncfs(2) of the store's file system and only then
 * links each to its final name.  A name is therefore never visible before
 * its data is on disk, which matters because a later backup that finds
 * the name dedups against it without reading it.  Publishing a backup
 * syncs pending chunks, syncs the file system again (covering the new
 * chunk directory entries and the staged indexes), then renames
 * staging/<id> to backups/<id> with RENAME_NOREPLACE and fsyncs backups/.
 * That rename is the commit point: the manifest and every index appear
 * together or not at all.  A writer killed at any instant leaves at most
 * temporary files and a staging directory, both invisible to readers.  A
 * later backup of the same domain removes the staging directory; stray
 * chunks/XX/.tmp-* files are left for garbage collection (issue #6) to
 * remove, as scanning every chunk directory at each backup would cost too
 * much on a large store.
 *
 * A hostile store.  Anyone who can write into the store may plant a
 * symlink, a FIFO, a device or a stray file where nightjar expects its own
 * file or directory, or an owner record with nonsense in it.  Therefore:
 *  - the store's top directories (chunks/XX, staging, backups, locks) are
 *    opened once, at open, with O_NOFOLLOW; every path below them is
 *    opened with nj_open_regular()/nj_open_dir() (common/nj-io.h), which
 *    follow no symlink in any component and never block on a FIFO;
 *  - chunks are touched and marked with AT_SYMLINK_NOFOLLOW and then
 *    checked to be regular files; a chunk name that is anything else is
 *    damage: a backup that would dedup against it fails with its name,
 *    gc's mark treats it as missing, and the sweep leaves it where it is
 *    (it never renames, removes or follows a non-regular entry);
 *  - a lock file is created exclusively, or opened as an existing regular
 *    file with a single link, before anything is written into it;
 *  - staging cleanup looks only at directories with store names and an
 *    owner record that parses and validates; it leaves everything else
 *    alone (an admin's README, a symlink, a directory it cannot account
 *    for) and fails on none of them;
 *  - every directory is created 0700 and every file 0600, so no umask
 *    makes a guest's disk readable to other local users.  (An existing
 *    store keeps the modes it has.)
 */
#include "nj-chunk.h"
#include "nj-io.h"
#include "nj-store.h"
#include "nj-util.h"
#include "store-backend.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define STORE_MARKER NJ_STORE_MARKER
#define PENDING_MAX_COUNT 4096
#define PENDING_MAX_BYTES (256ull << 20)
#define STAGING_ORPHAN_AGE (24 * 3600)

struct pending {
    struct nj_digest d;
    char tmp[48];
};
NJ_VECTOR(pending_vec, struct pending);

struct dir_store {
    struct nj_store base;
    int rootfd;
    int chunksfd, stagingfd, backupsfd, locksfd;
    int chunkfd[256];
    pthread_mutex_t lock; /* protects the fields below */
    pthread_cond_t flushed;
    struct pending_vec pending;  /* written, not yet synced */
    struct pending_vec flushing; /* being synced and linked, lock dropped */
    bool flush_active;
    uint64_t pending_bytes;
};

static struct dir_store *to_dir(struct nj_store *s)
{
    return (struct dir_store *)s;
}

static void chunk_name(const struct nj_digest *d, char *out)
{
    nj_digest_to_hex(d, out);
}

/* Caller holds the lock. */
static bool pending_has(struct dir_store *ds, const struct nj_digest *d)
{
    for (size_t i = 0; i < ds->pending.len; i++)
        if (nj_digest_eq(&ds->pending.ptr[i].d, d))
            return true;
    for (size_t i = 0; i < ds->flushing.len; i++)
        if (nj_digest_eq(&ds->flushing.ptr[i].d, d))
            return true;
    return false;
}

/*
 * Make the pending chunks durable, then give them their names.  Called
 * with ds->lock held; the lock is dropped for the syncfs and the links, so
 * that other threads keep writing chunks meanwhile (into a fresh pending
 * set).  With wait, a flush already running is waited for first, so that
 * on return everything put before the call is durable; without, a running
 * flush makes this call a no-op.
 */
static int pending_flush_locked(struct dir_store *ds, bool wait)
{
    while (ds->flush_active) {
        if (!wait)
            return 0;
        pthread_cond_wait(&ds->flushed, &ds->lock);
    }
    if (ds->pending.len == 0)
        return 0;
    struct pending_vec batch = ds->pending;
    ds->pending = ds->flushing; /* an emptied vector, reused */
    ds->pending.len = 0;
    ds->flushing = batch;
    ds->pending_bytes = 0;
    ds->flush_active = true;
    pthread_mutex_unlock(&ds->lock);

    int ret = 0;
    if (syncfs(ds->rootfd) < 0)
        ret = nj_error_errno(errno, "syncfs '%s'", ds->base.path);
    for (size_t i = 0; i < batch.len; i++) {
        struct pending *p = &batch.ptr[i];
        char name[NJ_DIGEST_HEX_LEN + 1];
        chunk_name(&p->d, name);
        int dfd = ds->chunkfd[p->d.b[0]];
        /* Never link what may not be on disk. */
        if (ret == 0 && linkat(dfd, p->tmp, dfd, name, 0) < 0 &&
            errno != EEXIST)
            ret = nj_error_errno(errno, "link chunk '%s'", name);
        unlinkat(dfd, p->tmp, 0);
    }

    pthread_mutex_lock(&ds->lock);
    ds->flushing.len = 0;
    ds->flush_active = false;
    pthread_cond_broadcast(&ds->flushed);
    return ret;
}

static int dir_sync(struct nj_store *s)
{
    struct dir_store *ds = to_dir(s);
    pthread_mutex_lock(&ds->lock);
    int r = pending_flush_locked(ds, true);
    pthread_mutex_unlock(&ds->lock);
    return r;
}

static int dir_chunk_exists(struct nj_store *s, const struct nj_digest *d)
{
    struct dir_store *ds = to_dir(s);
    char name[NJ_DIGEST_HEX_LEN + 1];
    chunk_name(d, name);
    /* Finding a chunk touches it: garbage collection spares chunks
     * touched after its cutoff (nj-gc.c), so a backup that dedups against
     * a chunk can rely on it.  The touch lands on the file its name led
     * to, which a sweep may have moved aside (and judged by its old mark)
     * in between: only a name still there after the touch counts, as a
     * sweep that moves it later sees the touch. */
    int dfd = ds->chunkfd[d->b[0]];
    struct stat st;
    if (utimensat(dfd, name, NULL, AT_SYMLINK_NOFOLLOW) == 0 &&
        fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
        if (S_ISREG(st.st_mode))
            return 1;
        /* Not ours: deduplicating against it would reference damage, and
         * a new copy could not take its name. */
        errno = EINVAL;
        return nj_error("'chunks/%02x/%s' is not a regular file", d->b[0],
                        name);
    }
    if (errno != ENOENT)
        return nj_error_errno(errno, "touch chunk '%s'", name);
    pthread_mutex_lock(&ds->lock);
    bool pend = pending_has(ds, d);
    pthread_mutex_unlock(&ds->lock);
    return pend;
}

static int dir_chunk_put(struct nj_store *s, const struct nj_digest *d,
                         const void *frame, size_t len)
{
    struct dir_store *ds = to_dir(s);
    int r = dir_chunk_exists(s, d);
    if (r != 0)
        return r;
    int dfd = ds->chunkfd[d->b[0]];
    struct pending p = { .d = *d };
    NJ_CLEANUP_CLOSE int fd = nj_tmpfile_open(dfd, "chunk", p.tmp,
                                              sizeof p.tmp);
    if (fd < 0)
        return -1;
    if (nj_write_direct(fd, frame, len) < 0) {
        int e = errno;
        unlinkat(dfd, p.tmp, 0);
        return nj_error_errno(e, "write chunk to '%s'", ds->base.path);
    }
    pthread_mutex_lock(&ds->lock);
    int ret = 0;
    if (pending_has(ds, d)) {
        /* Another thread wrote the same chunk meanwhile. */
        unlinkat(dfd, p.tmp, 0);
        ret = 1;
    } else {
        pending_vec_append(&ds->pending, p);
        ds->pending_bytes += len;
        if (ds->pending.len >= PENDING_MAX_COUNT ||
            ds->pending_bytes >= PENDING_MAX_BYTES)
            ret = pending_flush_locked(ds, false);
    }
    pthread_mutex_unlock(&ds->lock);
    return ret;
}

static ssize_t dir_chunk_get(struct nj_store *s, const struct nj_digest *d,
                             void **buf, size_t *cap)
{
    struct dir_store *ds = to_dir(s);
    char name[NJ_DIGEST_HEX_LEN + 1];
    chunk_name(d, name);
    NJ_CLEANUP_CLOSE int fd =
        nj_open_regular(ds->chunkfd[d->b[0]], name, O_RDONLY);
    if (fd < 0) {
        int e = errno;
        if (e == EINVAL)
            nj_error("'chunks/%02x/%s' is not a regular file", d->b[0], name);
        else
            nj_error_errno(e, "chunk %.16s", name);
        errno = e;
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) < 0)
        return nj_error_errno(errno, "stat chunk %.16s", name);
    /* Never trust a size read from the store: cap it first. */
    if (st.st_size > (off_t)(NJ_CHUNK_HEADER_LEN + (size_t)NJ_CHUNK_MAX))
        return nj_error("chunk %.16s: file of %lld bytes is too large", name,
                        (long long)st.st_size);
    size_t len = (size_t)st.st_size;
    if (*cap < len) {
        free(*buf);
        /* aligned for nj_read_direct */
        *buf = nj_malloc_aligned(NJ_DIRECT_ALIGN, len);
        *cap = len;
    }
    if (nj_read_direct(fd, *buf, len) < 0)
        return nj_error_errno(errno, "read chunk %.16s", name);
    return (ssize_t)len;
}

static int dir_staging_create(struct nj_store *s, const char *id,
                              const char *owner_json)
{
    struct dir_store *ds = to_dir(s);
    NJ_CLEANUP_FREE char *path = nj_asprintf("staging/%s", id);
    if (mkdirat(ds->stagingfd, id, 0700) < 0)
        return nj_error_errno(errno, "create '%s' in store", path);
    NJ_CLEANUP_CLOSE int fd = nj_open_dir(ds->rootfd, path);
    if (fd < 0)
        return -1;
    return nj_publish_buffer(fd, "owner.json", owner_json,
                             strlen(owner_json));
}

static struct nj_stream *dir_staging_open(struct nj_store *s, const char *id,
                                          const char *name)
{
    struct dir_store *ds = to_dir(s);
    NJ_CLEANUP_FREE char *path = nj_asprintf("staging/%s/%s", id, name);
    int fd = nj_open_regular(ds->rootfd, path, O_RDWR | O_CREAT | O_EXCL);
    if (fd < 0)
        nj_error_prefix("create in store");
    return nj_stream_fd(fd);
}

static int dir_staging_put(struct nj_store *s, const char *id,
                           const char *name, const void *buf, size_t len)
{
    struct dir_store *ds = to_dir(s);
    NJ_CLEANUP_FREE char *path = nj_asprintf("staging/%s", id);
    NJ_CLEANUP_CLOSE int fd = nj_open_dir(ds->rootfd, path);
    if (fd < 0)
        return -1;
    return nj_publish_buffer(fd, name, buf, len);
}

/*
 * Make every chunk and staged file durable, then move staging/<staged_id>
 * into backups/<id> with one renameat2 (flags: RENAME_NOREPLACE to
 * publish, RENAME_EXCHANGE to replace).  0; 1 when the rename happened
 * but a directory fsync after it failed; -1 when nothing moved.
 */
static int move_into_backups(struct dir_store *ds, const char *staged_id,
                             const char *id, unsigned flags)
{
    if (dir_sync(&ds->base) < 0)
        return -1;
    /* Covers the staged files and the chunk links made by dir_sync. */
    if (syncfs(ds->rootfd) < 0)
        return nj_error_errno(errno, "syncfs '%s'", ds->base.path);
    if (renameat2(ds->stagingfd, staged_id, ds->backupsfd, id, flags) < 0)
        return nj_error_errno(errno, "%s backup '%s'",
                              flags == RENAME_EXCHANGE ? "replace" : "publish",
                              id);
    if (fsync(ds->backupsfd) < 0) {
        nj_error_errno(errno, "fsync directory 'backups'");
        return 1;
    }
    if (fsync(ds->stagingfd) < 0) {
        nj_error_errno(errno, "fsync directory 'staging'");
        return 1;
    }
    return 0;
}

static int dir_backup_publish(struct nj_store *s, const char *id)
{
    /* Once published the backup exists, so a failing directory fsync is
     * reported as "committed, durability unknown" (1), never as a failed
     * commit that a caller would roll back. */
    return move_into_backups(to_dir(s), id, id, RENAME_NOREPLACE);
}

/*
 * Remove staging/<name>, its owner record last: a writer killed halfway
 * through leaves a directory that its domain's next backup still
 * recognises and removes, or an empty one, never an orphan with content.
 * A symlink or non-directory at that name is refused, never followed.
 */
static int staging_remove_dir(int stagingfd, const char *name)
{
    int fd = openat(stagingfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
                                         O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return 0;
        if (errno == ENOTDIR || errno == ELOOP)
            return nj_error("'staging/%s' is not a directory", name);
        return nj_error_errno(errno, "open 'staging/%s'", name);
    }
    DIR *d = fdopendir(fd);
    if (!d) {
        close(fd);
        return nj_error_errno(errno, "open directory 'staging/%s'", name);
    }
    int ret = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..") &&
            strcmp(de->d_name, "owner.json") &&
            nj_remove_tree(dirfd(d), de->d_name) < 0)
            ret = -1;
    if (ret == 0 && unlinkat(dirfd(d), "owner.json", 0) < 0 && errno != ENOENT)
        ret = nj_error_errno(errno, "remove 'staging/%s/owner.json'", name);
    closedir(d);
    if (ret == 0 && unlinkat(stagingfd, name, AT_REMOVEDIR) < 0 &&
        errno != ENOENT)
        ret = nj_error_errno(errno, "remove directory 'staging/%s'", name);
    return ret;
}

static int dir_staging_remove(struct nj_store *s, const char *id)
{
    struct dir_store *ds = to_dir(s);
    return staging_remove_dir(ds->stagingfd, id);
}


/* The owner record of staging/<name>, read relative to that directory's
 * fd: 1 (filled), 0 when there is none, -1 when unreadable or invalid. */
static int owner_read_at(int dfd, const char *name, struct nj_store_owner *o)
{
    NJ_CLEANUP_FREE char *display = nj_asprintf("staging/%s/owner.json", name);
    size_t len = 0;
    NJ_CLEANUP_FREE char *text = nj_read_file(dfd, "owner.json", NJ_STORE_OWNER_MAX,
                                              &len);
    if (!text) {
        if (errno == ENOENT)
            return 0;
        return nj_error_prefix("staging/%s", name);
    }
    return nj_store_owner_parse(text, len, display, o);
}

static int dir_staging_owner(struct nj_store *s, const char *id,
                             struct nj_store_owner *o)
{
    struct dir_store *ds = to_dir(s);
    NJ_CLEANUP_FREE char *path = nj_asprintf("staging/%s", id);
    NJ_CLEANUP_CLOSE int dfd = nj_open_dir(ds->rootfd, path);
    if (dfd < 0)
        return errno == ENOENT ? 0 : -1;
    return owner_read_at(dfd, id, o);
}

/* Holding only temporary files (what a creation killed before its owner
 * record was published leaves), or nothing: 1; else 0; -1 on error. */
static int only_tmp_files(int dfd)
{
    int fd = dup(dfd);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    int ret = 1;
    struct dirent *de;
    errno = 0;
    while (ret == 1 && (de = readdir(d)) != NULL) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        struct stat st;
        if (strncmp(de->d_name, ".tmp-", 5) != 0 ||
            fstatat(dfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
            !S_ISREG(st.st_mode))
            ret = 0;
        errno = 0;
    }
    if (ret == 1 && errno != 0)
        ret = -1;
    closedir(d);
    return ret;
}

/*
 * Which entries of staging/ a writer may delete: directories (never
 * followed) with a valid owner record naming owner_key, and directories
 * with no owner record, older than a day, holding nothing but temporary
 * files.  Everything else is left alone without failing: entries that are
 * not directories or have no store name, directories whose owner record
 * is unreadable or invalid, and ownerless ones with other content.
 */
static int dir_staging_clean(struct nj_store *s, const char *owner_key)
{
    struct dir_store *ds = to_dir(s);
    int fd = dup(ds->stagingfd);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) {
        if (fd >= 0)
            close(fd);
        return nj_error_errno(errno, "open 'staging'");
    }
    rewinddir(d);
    int ret = 0;
    time_t now = time(NULL);
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        const char *n = de->d_name;
        if (!nj_store_name_valid(n))
            continue;
        NJ_CLEANUP_CLOSE int dfd = openat(
            ds->stagingfd, n, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (dfd < 0)
            continue; /* not a directory, a symlink, or gone */
        struct nj_store_owner o;
        int r = owner_read_at(dfd, n, &o);
        bool remove = false;
        if (r == 1) {
            remove = owner_key && strcmp(o.lock, owner_key) == 0;
        } else if (r == 0) {
            struct stat st;
            remove = fstat(dfd, &st) == 0 &&
                     now - st.st_mtime > STAGING_ORPHAN_AGE &&
                     only_tmp_files(dfd) == 1;
        }
        if (remove && staging_remove_dir(ds->stagingfd, n) < 0)
            ret = -1;
    }
    closedir(d);
    return ret;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The names with store names in a directory; with dirs_only, only the
 * entries that are directories (not symlinks).  NULL with the last error
 * set (naming what) when the directory cannot be read to its end. */
static char **list_names(int dirfd_, const char *what, bool dirs_only)
{
    int fd = dup(dirfd_);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) {
        if (fd >= 0)
            close(fd);
        nj_error_errno(errno, "open '%s'", what);
        return NULL;
    }
    rewinddir(d);
    size_t n = 0, cap = 16;
    char **v = nj_calloc(cap, sizeof *v);
    struct dirent *de;
    int err = 0;
    for (;;) {
        errno = 0;
        de = readdir(d);
        if (!de) {
            err = errno;
            break;
        }
        if (!nj_store_name_valid(de->d_name))
            continue;
        if (dirs_only && de->d_type != DT_DIR) {
            struct stat st;
            if (de->d_type != DT_UNKNOWN)
                continue;
            if (fstatat(dirfd_, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
                if (errno == ENOENT)
                    continue;
                err = errno;
                break;
            }
            if (!S_ISDIR(st.st_mode))
                continue;
        }
        if (n + 2 > cap) {
            cap *= 2;
            v = nj_realloc_array(v, cap, sizeof *v);
        }
        v[n++] = nj_strdup(de->d_name);
    }
    v[n] = NULL;
    closedir(d);
    if (err) {
        nj_strv_free(v);
        nj_error_errno(err, "read '%s'", what);
        return NULL;
    }
    qsort(v, n, sizeof *v, cmp_str);
    return v;
}

static char **dir_backup_list(struct nj_store *s)
{
    /* Every name, directory or not: one that cannot be read as a backup is
     * reported as unreadable (and stops gc), never skipped. */
    return list_names(to_dir(s)->backupsfd, "backups", false);
}

static char *dir_backup_read(struct nj_store *s, const char *id,
                             const char *name, size_t max, size_t *len)
{
    struct dir_store *ds = to_dir(s);
    NJ_CLEANUP_FREE char *path = nj_asprintf("backups/%s/%s", id, name);
    return nj_read_file(ds->rootfd, path, max, len);
}

static struct nj_stream *dir_backup_open(struct nj_store *s, const char *id,
                                         const char *name)
{
    struct dir_store *ds = to_dir(s);
    NJ_CLEANUP_FREE char *path = nj_asprintf("backups/%s/%s", id, name);
    return nj_stream_fd(nj_open_regular(ds->rootfd, path, O_RDONLY));
}

/*
 * The lock file is created exclusively (then it is ours and empty), or
 * else opened as an existing regular file that has a single link: a
 * symlink, FIFO or a hard link to some other file is refused before
 * anything is written, so the pid never lands outside locks/.
 */
static int dir_lock_domain(struct nj_store *s, const char *key,
                           const char *display_name)
{
    struct dir_store *ds = to_dir(s);
    NJ_CLEANUP_FREE char *name = nj_asprintf("%s.lock", key);
    NJ_CLEANUP_FREE char *path = nj_asprintf("locks/%s", name);
    bool created = true;
    NJ_CLEANUP_CLOSE int fd = openat(ds->locksfd, name,
                                     O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW |
                                         O_NONBLOCK | O_CLOEXEC,
                                     0600);
    if (fd < 0 && errno == EEXIST) {
        created = false;
        fd = nj_open_regular(ds->rootfd, path, O_RDWR);
        if (fd < 0)
            return nj_error_prefix("lock");
    } else if (fd < 0) {
        return nj_error_errno(errno, "create lock '%s'", path);
    } else {
        int fl = fcntl(fd, F_GETFL);
        if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0)
            return nj_error_errno(errno, "fcntl '%s'", path);
    }
    struct stat st;
    if (fstat(fd, &st) < 0)
        return nj_error_errno(errno, "stat '%s'", path);
    if (st.st_nlink != 1)
        return nj_error("lock '%s' has %ju links; refusing to use it", path,
                        (uintmax_t)st.st_nlink);
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        if (errno != EWOULDBLOCK)
            return nj_error_errno(errno, "lock '%s'", path);
        char buf[32] = "";
        ssize_t r = pread(fd, buf, sizeof buf - 1, 0);
        buf[r > 0 ? r : 0] = '\0';
        buf[strcspn(buf, "\n")] = '\0';
        /* The content is informational and comes from the store: only
         * digits are quoted. */
        if (buf[0] == '\0' || buf[strspn(buf, "0123456789")] != '\0')
            snprintf(buf, sizeof buf, "unknown");
        return nj_error("domain '%s' is already being backed up (pid %s)",
                        display_name, buf);
    }
    char pid[32];
    int n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    /* A regular file with one link, in locks/: truncating it is safe. */
    if ((!created && ftruncate(fd, 0) < 0) ||
        nj_full_pwrite(fd, pid, (size_t)n, 0) < 0)
        return nj_error_errno(errno, "write lock '%s'", path);
    return NJ_STEAL_FD(&fd);
}

static void dir_close(struct nj_store *s)
{
    struct dir_store *ds = to_dir(s);
    pthread_mutex_lock(&ds->lock);
    while (ds->flush_active)
        pthread_cond_wait(&ds->flushed, &ds->lock);
    /* Unsynced chunks are dropped: nothing references them. */
    for (size_t i = 0; i < ds->pending.len; i++)
        unlinkat(ds->chunkfd[ds->pending.ptr[i].d.b[0]],
                 ds->pending.ptr[i].tmp, 0);
    pending_vec_reset(&ds->pending);
    pending_vec_reset(&ds->flushing);
    pthread_mutex_unlock(&ds->lock);
    for (int i = 0; i < 256; i++)
        if (ds->chunkfd[i] >= 0)
            close(ds->chunkfd[i]);
    int *fds[] = { &ds->rootfd, &ds->chunksfd, &ds->stagingfd,
                   &ds->backupsfd, &ds->locksfd };
    for (size_t i = 0; i < NJ_ARRAY_SIZE(fds); i++)
        if (*fds[i] >= 0)
            close(*fds[i]);
    pthread_mutex_destroy(&ds->lock);
    pthread_cond_destroy(&ds->flushed);
    free(ds->base.path);
    free(ds);
}

/* Set the mtime of dfd/name to now without following a symlink; then 1
 * when it is a regular file, 0 when it is something else (damage, left
 * alone), -1 with errno when it cannot be touched (ENOENT: absent). */
static int touch_regular(int dfd, const char *name)
{
    struct stat st;
    if (utimensat(dfd, name, NULL, AT_SYMLINK_NOFOLLOW) < 0 ||
        fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
        return -1;
    return S_ISREG(st.st_mode) ? 1 : 0;
}

static int dir_chunk_mark(struct nj_store *s, const struct nj_digest *d)
{
    struct dir_store *ds = to_dir(s);
    char name[NJ_DIGEST_HEX_LEN + 1];
    chunk_name(d, name);
    int dfd = ds->chunkfd[d->b[0]];
    int r = touch_regular(dfd, name);
    if (r == 1)
        return 0;
    if (r == 0)
        return 1; /* not a regular file: damaged, as if missing */
    if (errno != ENOENT)
        return nj_error_errno(errno, "mark chunk '%s'", name);
    /* A gc killed between moving a chunk aside and putting it back (a
     * backup touched it meanwhile) left it as .gc-<name>: referenced, so
     * it goes back now, whatever its age. */
    char aside[NJ_DIGEST_HEX_LEN + 8];
    snprintf(aside, sizeof aside, ".gc-%s", name);
    struct stat st;
    if (fstatat(dfd, aside, &st, AT_SYMLINK_NOFOLLOW) < 0) {
        if (errno == ENOENT)
            return 1; /* missing: verify reports it, gc has nothing to keep */
        return nj_error_errno(errno, "stat chunk '%s'", aside);
    }
    if (!S_ISREG(st.st_mode))
        return 1;
    if (linkat(dfd, aside, dfd, name, 0) < 0 && errno != EEXIST) {
        if (errno == ENOENT)
            return 1;
        return nj_error_errno(errno, "put chunk '%s' back", name);
    }
    r = touch_regular(dfd, name);
    if (r < 0)
        return nj_error_errno(errno, "mark chunk '%s'", name);
    return r == 1 ? 0 : 1;
}

static bool is_chunk_name(const char *n)
{
    struct nj_digest d;
    return strlen(n) == NJ_DIGEST_HEX_LEN && nj_digest_from_hex(n, &d) == 0;
}

/*
 * Sweep one chunk directory.  A candidate is renamed aside first and its
 * mtime read from the moved file: a touch that raced with us is then
 * visible, and such a chunk goes back under its name (unless a backup
 * wrote a new copy meanwhile).  See nj-gc.c.  Only regular files are
 * considered: a symlink, FIFO, directory or device under a chunk, .gc- or
 * .tmp- name is never renamed, removed or followed (nor counted).
 */
static int sweep_dir(int dfd, int64_t cutoff, int64_t tmp_cutoff,
                     uint64_t *kept, uint64_t *kept_bytes, uint64_t *freed,
                     uint64_t *freed_bytes, uint64_t *tmp_removed)
{
    int fd = dup(dfd);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) {
        if (fd >= 0)
            close(fd);
        return nj_error_errno(errno, "open chunk directory");
    }
    /* The duplicate shares dfd's offset, which the last sweep through
     * this store handle left at the end: start from the beginning. */
    rewinddir(d);
    int ret = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        const char *n = de->d_name;
        struct stat st;
        if (n[0] == '.' && strncmp(n, ".tmp-", 5) != 0 &&
            strncmp(n, ".gc-", 4) != 0)
            continue;
        if (fstatat(dfd, n, &st, AT_SYMLINK_NOFOLLOW) < 0)
            continue; /* gone meanwhile */
        if (!S_ISREG(st.st_mode))
            continue;
        if (strncmp(n, ".tmp-", 5) == 0) {
            if (st.st_mtime < tmp_cutoff && unlinkat(dfd, n, 0) == 0)
                (*tmp_removed)++;
            continue;
        }
        if (strncmp(n, ".gc-", 4) == 0) {
            /* Moved aside by a GC that died: decide again. */
            const char *orig = n + 4;
            if (st.st_mtime >= cutoff && is_chunk_name(orig) &&
                linkat(dfd, n, dfd, orig, 0) < 0 && errno != EEXIST)
                ret = nj_error_errno(errno, "restore chunk '%s'", orig);
            unlinkat(dfd, n, 0);
            continue;
        }
        if (!is_chunk_name(n))
            continue;
        if (st.st_mtime >= cutoff) {
            (*kept)++;
            *kept_bytes += (uint64_t)st.st_size;
            continue;
        }
        char aside[NJ_DIGEST_HEX_LEN + 8];
        snprintf(aside, sizeof aside, ".gc-%s", n);
        if (renameat(dfd, n, dfd, aside) < 0) {
            if (errno != ENOENT)
                ret = nj_error_errno(errno, "move chunk '%s' aside", n);
            continue;
        }
        /* What was moved is judged again, by its own mode and mtime: if it
         * is not a regular file (replaced meanwhile) or was touched, it
         * goes back under its name. */
        if (fstatat(dfd, aside, &st, AT_SYMLINK_NOFOLLOW) < 0)
            continue; /* gone meanwhile */
        if (!S_ISREG(st.st_mode) || st.st_mtime >= cutoff) {
            if (linkat(dfd, aside, dfd, n, 0) < 0 && errno != EEXIST)
                ret = nj_error_errno(errno, "put chunk '%s' back", n);
            else
                unlinkat(dfd, aside, 0);
            if (S_ISREG(st.st_mode)) {
                (*kept)++;
                *kept_bytes += (uint64_t)st.st_size;
            }
            continue;
        }
        if (unlinkat(dfd, aside, 0) == 0) {
            (*freed)++;
            *freed_bytes += (uint64_t)st.st_size;
        }
    }
    closedir(d);
    return ret;
}

static int dir_gc_sweep(struct nj_store *s, int64_t cutoff, int64_t tmp_cutoff,
                        uint64_t *kept, uint64_t *kept_bytes, uint64_t *freed,
                        uint64_t *freed_bytes, uint64_t *tmp_removed)
{
    struct dir_store *ds = to_dir(s);
    int ret = 0;
    for (int i = 0; i < 256; i++)
        if (sweep_dir(ds->chunkfd[i], cutoff, tmp_cutoff, kept, kept_bytes,
                      freed, freed_bytes, tmp_removed) < 0)
            ret = -1;
    /* Removals need no durability: a chunk that comes back after a crash
     * is only garbage for the next run. */
    return ret;
}

static int dir_staging_link(struct nj_store *s, const char *id,
                            const char *name, const char *from_id,
                            const char *from_name)
{
    struct dir_store *ds = to_dir(s);
    NJ_CLEANUP_FREE char *fromdir = nj_asprintf("backups/%s", from_id);
    NJ_CLEANUP_FREE char *todir = nj_asprintf("staging/%s", id);
    NJ_CLEANUP_CLOSE int ffd = nj_open_dir(ds->rootfd, fromdir);
    if (ffd < 0)
        return -1;
    NJ_CLEANUP_CLOSE int tfd = nj_open_dir(ds->rootfd, todir);
    if (tfd < 0)
        return -1;
    struct stat st;
    if (fstatat(ffd, from_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
        return nj_error_errno(errno, "'%s/%s'", fromdir, from_name);
    if (!S_ISREG(st.st_mode))
        return nj_error("'%s/%s' is not a regular file", fromdir, from_name);
    if (linkat(ffd, from_name, tfd, name, 0) < 0)
        return nj_error_errno(errno, "link '%s/%s' into staging", fromdir,
                              from_name);
    return 0;
}

static int dir_backup_replace(struct nj_store *s, const char *staged_id,
                              const char *id)
{
    struct dir_store *ds = to_dir(s);
    NJ_CLEANUP_FREE char *path = nj_asprintf("backups/%s", id);
    NJ_CLEANUP_CLOSE int bfd = nj_open_dir(ds->rootfd, path);
    if (bfd < 0)
        return nj_error_prefix("replace backup '%s'", id);
    /* One atomic step: readers see the old backup or the new one. */
    int r = move_into_backups(ds, staged_id, id, RENAME_EXCHANGE);
    if (r < 0)
        return -1;
    /* The old version is now in staging under staged_id. */
    if (staging_remove_dir(ds->stagingfd, staged_id) < 0)
        return -1;
    return r > 0 ? nj_error("replaced backup '%s', but could not make the "
                            "change durable", id)
                 : 0;
}

static int dir_backup_remove(struct nj_store *s, const char *id)
{
    struct dir_store *ds = to_dir(s);
    NJ_CLEANUP_FREE char *path = nj_asprintf("backups/%s", id);
    NJ_CLEANUP_FREE char *to = nj_asprintf("removed-%s", id);
    /* Only a real directory is removed (a symlink there is refused; the
     * rename below would move the link, never its target). */
    NJ_CLEANUP_CLOSE int bfd = nj_open_dir(ds->rootfd, path);
    if (bfd < 0)
        return nj_error_prefix("remove backup '%s'", id);
    /* Owner record last, as for any staging directory: a removal killed
     * halfway leaves one that the domain's next backup still removes. */
    staging_remove_dir(ds->stagingfd, to);
    if (renameat2(ds->backupsfd, id, ds->stagingfd, to, RENAME_NOREPLACE) < 0)
        return nj_error_errno(errno, "remove backup '%s'", id);
    if (fsync(ds->backupsfd) < 0)
        return nj_error_errno(errno, "fsync directory 'backups'");
    return staging_remove_dir(ds->stagingfd, to);
}

/*
 * Flags are empty files in the backup's directory, which is opened with
 * O_NOFOLLOW (a symlinked backup directory is refused) and everything is
 * done relative to its fd.  A flag name that is not a regular file is an
 * error, never followed.
 */
static int dir_backup_set_flag(struct nj_store *s, const char *id,
                               const char *flag, bool on)
{
    struct dir_store *ds = to_dir(s);
    NJ_CLEANUP_FREE char *dir = nj_asprintf("backups/%s", id);
    NJ_CLEANUP_CLOSE int fd = nj_open_dir(ds->rootfd, dir);
    if (fd < 0)
        return nj_error_prefix("backup '%s'", id);
    struct stat st;
    bool exists = fstatat(fd, flag, &st, AT_SYMLINK_NOFOLLOW) == 0;
    if (!exists && errno != ENOENT)
        return nj_error_errno(errno, "'%s/%s'", dir, flag);
    if (exists && !S_ISREG(st.st_mode))
        return nj_error("'%s/%s' is not a regular file", dir, flag);
    if (on) {
        if (exists)
            return 0;
        return nj_publish_buffer(fd, flag, "", 0);
    }
    if (!exists)
        return 0;
    if (unlinkat(fd, flag, 0) < 0 && errno != ENOENT)
        return nj_error_errno(errno, "clear '%s/%s'", dir, flag);
    if (fsync(fd) < 0)
        return nj_error_errno(errno, "fsync directory '%s'", dir);
    return 0;
}

static int dir_backup_has_flag(struct nj_store *s, const char *id,
                               const char *flag)
{
    struct dir_store *ds = to_dir(s);
    NJ_CLEANUP_FREE char *dir = nj_asprintf("backups/%s", id);
    NJ_CLEANUP_CLOSE int fd = nj_open_dir(ds->rootfd, dir);
    if (fd < 0)
        return nj_error_prefix("backup '%s'", id);
    struct stat st;
    if (fstatat(fd, flag, &st, AT_SYMLINK_NOFOLLOW) < 0)
        return errno == ENOENT ? 0
                               : nj_error_errno(errno, "'%s/%s'", dir, flag);
    if (!S_ISREG(st.st_mode))
        return nj_error("'%s/%s' is not a regular file", dir, flag);
    return 1;
}

static char **dir_staging_list(struct nj_store *s)
{
    return list_names(to_dir(s)->stagingfd, "staging", true);
}

static const struct nj_store_ops dir_ops = {
    .name = "dir",
    .close = dir_close,
    .chunk_put = dir_chunk_put,
    .chunk_exists = dir_chunk_exists,
    .chunk_get = dir_chunk_get,
    .sync = dir_sync,
    .staging_create = dir_staging_create,
    .staging_open = dir_staging_open,
    .staging_put = dir_staging_put,
    .backup_publish = dir_backup_publish,
    .staging_remove = dir_staging_remove,
    .staging_clean = dir_staging_clean,
    .backup_list = dir_backup_list,
    .backup_read = dir_backup_read,
    .backup_open = dir_backup_open,
    .lock_domain = dir_lock_domain,
    .staging_link = dir_staging_link,
    .backup_replace = dir_backup_replace,
    .backup_remove = dir_backup_remove,
    .backup_set_flag = dir_backup_set_flag,
    .backup_has_flag = dir_backup_has_flag,
    .chunk_mark = dir_chunk_mark,
    .gc_sweep = dir_gc_sweep,
    .staging_list = dir_staging_list,
    .staging_owner = dir_staging_owner,
};

/* Entries of dirfd/path other than "." and ".." (-1 on error); with
 * subdirs, empty subdirectories are not counted. */
static long count_entries(int atfd, const char *path, bool subdirs)
{
    int fd = openat(atfd, path,
                    O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return -1;
    DIR *d = fdopendir(fd);
    if (!d) {
        close(fd);
        return -1;
    }
    long n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        if (subdirs && count_entries(dirfd(d), de->d_name, false) == 0)
            continue;
        n++;
    }
    closedir(d);
    return n;
}

/*
 * Empty, or holding only the empty skeleton that store_init creates before
 * it publishes the marker (a creation that was interrupted): then it is
 * safe to initialise.  Anything else, a backup or a chunk, is refused.
 */
static bool dir_is_empty(int fd)
{
    static const char *const skeleton[] = { "chunks", "staging", "backups",
                                            "locks" };
    int dup_fd = dup(fd);
    if (dup_fd < 0)
        return false;
    DIR *d = fdopendir(dup_fd);
    if (!d) {
        close(dup_fd);
        return false;
    }
    bool empty = true;
    struct dirent *de;
    while (empty && (de = readdir(d)) != NULL) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..") ||
            !strncmp(de->d_name, ".tmp-", 5))
            continue;
        bool known = false;
        for (size_t i = 0; i < NJ_ARRAY_SIZE(skeleton); i++)
            known |= strcmp(de->d_name, skeleton[i]) == 0;
        empty = known && count_entries(fd, de->d_name,
                                       !strcmp(de->d_name, "chunks")) == 0;
    }
    closedir(d);
    return empty;
}

static int store_init(int rootfd, const char *path)
{
    static const char *dirs[] = { "chunks", "staging", "backups", "locks" };
    for (size_t i = 0; i < NJ_ARRAY_SIZE(dirs); i++)
        if (nj_mkdir_exist_ok(rootfd, dirs[i], 0700) < 0)
            return -1;
    for (int i = 0; i < 256; i++) {
        char sub[16];
        snprintf(sub, sizeof sub, "chunks/%02x", i);
        if (nj_mkdir_exist_ok(rootfd, sub, 0700) < 0)
            return -1;
    }
    if (nj_fsync_dir(rootfd, "chunks") < 0)
        return -1;
    NJ_CLEANUP_FREE char *body = nj_store_marker_new(NJ_STORE_FORMAT_V1);
    /* The marker goes last: a store half created is not yet a store. */
    if (nj_publish_buffer(rootfd, STORE_MARKER, body, strlen(body)) < 0)
        return nj_error_prefix("initialise store '%s'", path);
    return 0;
}

static int store_check_marker(int rootfd, const char *path)
{
    size_t len = 0;
    NJ_CLEANUP_FREE char *text =
        nj_read_file(rootfd, STORE_MARKER, 65536, &len);
    if (!text) {
        if (errno == ENOENT ||
            faccessat(rootfd, STORE_MARKER, F_OK, AT_SYMLINK_NOFOLLOW) < 0)
            return nj_error("'%s' is not a nightjar store (no %s)", path,
                            STORE_MARKER);
        return nj_error_prefix("open store '%s'", path);
    }
    int v = nj_store_marker_check(text, len, path);
    if (v > NJ_STORE_FORMAT_V1)
        return nj_error("store '%s' has format version %d, the object "
                        "layout: open it by its path or as obj+file://",
                        path, v);
    return v < 0 ? -1 : 0;
}

struct nj_store *nj_store_dir_open(const char *path, unsigned flags)
{
    if ((flags & NJ_STORE_CREATE) && mkdir(path, 0700) < 0 &&
        errno != EEXIST) {
        nj_error_errno(errno, "create store '%s'", path);
        return NULL;
    }
    NJ_CLEANUP_CLOSE int rootfd =
        open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (rootfd < 0) {
        nj_error_errno(errno, "open store '%s'", path);
        return NULL;
    }
    if ((flags & NJ_STORE_CREATE) &&
        faccessat(rootfd, STORE_MARKER, F_OK, AT_SYMLINK_NOFOLLOW) < 0 &&
        errno == ENOENT) {
        if (!dir_is_empty(rootfd)) {
            nj_error("'%s' is not a nightjar store and not empty; refusing "
                     "to create a store there", path);
            return NULL;
        }
        if (store_init(rootfd, path) < 0)
            return NULL;
    }
    if (store_check_marker(rootfd, path) < 0)
        return NULL;

    struct dir_store *ds = nj_calloc(1, sizeof *ds);
    ds->base.ops = &dir_ops;
    ds->base.path = nj_strdup(path);
    pthread_mutex_init(&ds->lock, NULL);
    pthread_cond_init(&ds->flushed, NULL);
    for (int i = 0; i < 256; i++)
        ds->chunkfd[i] = -1;
    ds->chunksfd = ds->stagingfd = ds->backupsfd = ds->locksfd = -1;
    ds->rootfd = NJ_STEAL_FD(&rootfd);
    /* The store's own directories, none of them followed if a symlink:
     * everything below is reached through these fds. */
    struct {
        int *fd;
        const char *name;
    } top[] = { { &ds->chunksfd, "chunks" },
                { &ds->stagingfd, "staging" },
                { &ds->backupsfd, "backups" },
                { &ds->locksfd, "locks" } };
    for (size_t i = 0; i < NJ_ARRAY_SIZE(top); i++) {
        *top[i].fd = nj_open_dir(ds->rootfd, top[i].name);
        if (*top[i].fd < 0) {
            nj_error_prefix("store '%s' is damaged", path);
            dir_close(&ds->base);
            return NULL;
        }
    }
    for (int i = 0; i < 256; i++) {
        char sub[16];
        snprintf(sub, sizeof sub, "%02x", i);
        ds->chunkfd[i] = nj_open_dir(ds->chunksfd, sub);
        if (ds->chunkfd[i] < 0) {
            nj_error_prefix("store '%s' is damaged: chunks", path);
            dir_close(&ds->base);
            return NULL;
        }
    }
    return &ds->base;
}
