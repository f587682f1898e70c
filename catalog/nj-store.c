/*
 * nj-store.c: the store front end: argument checks, then the backend.
 */
#include "nj-store.h"
#include "nj-util.h"
#include "store-backend.h"

#include <errno.h>
#include <json-c/json.h>
#include <string.h>
#include <sys/file.h>

bool nj_store_name_valid(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > 128 || name[0] == '.')
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.'))
            return false;
    }
    return true;
}

#define CHECK_NAME(what, n)                                                 \
    do {                                                                    \
        if (!nj_store_name_valid(n)) {                                      \
            nj_error("invalid %s '%s'", what, n);                           \
            return -1;                                                      \
        }                                                                   \
    } while (0)

struct nj_store *nj_store_open(const char *path, unsigned flags)
{
    return nj_store_dir_open(path, flags);
}

void nj_store_close(struct nj_store *s)
{
    if (s)
        s->ops->close(s);
}

const char *nj_store_path(const struct nj_store *s)
{
    return s->path;
}

int nj_store_chunk_put(struct nj_store *s, const struct nj_digest *d,
                       const void *frame, size_t frame_len)
{
    return s->ops->chunk_put(s, d, frame, frame_len);
}

int nj_store_chunk_exists(struct nj_store *s, const struct nj_digest *d)
{
    return s->ops->chunk_exists(s, d);
}

ssize_t nj_store_chunk_get(struct nj_store *s, const struct nj_digest *d,
                           void **buf, size_t *cap)
{
    return s->ops->chunk_get(s, d, buf, cap);
}

int nj_store_sync(struct nj_store *s)
{
    return s->ops->sync(s);
}

int nj_store_staging_create(struct nj_store *s, const char *id,
                            const char *owner_json)
{
    CHECK_NAME("backup id", id);
    return s->ops->staging_create(s, id, owner_json);
}

int nj_store_staging_open(struct nj_store *s, const char *id, const char *name)
{
    CHECK_NAME("backup id", id);
    CHECK_NAME("file name", name);
    return s->ops->staging_open(s, id, name);
}

int nj_store_staging_put(struct nj_store *s, const char *id, const char *name,
                         const void *buf, size_t len)
{
    CHECK_NAME("backup id", id);
    CHECK_NAME("file name", name);
    return s->ops->staging_put(s, id, name, buf, len);
}

int nj_store_backup_publish(struct nj_store *s, const char *id)
{
    CHECK_NAME("backup id", id);
    return s->ops->backup_publish(s, id);
}

int nj_store_staging_remove(struct nj_store *s, const char *id)
{
    CHECK_NAME("backup id", id);
    return s->ops->staging_remove(s, id);
}

int nj_store_staging_clean(struct nj_store *s, const char *owner_key)
{
    return s->ops->staging_clean(s, owner_key);
}

char **nj_store_backup_list(struct nj_store *s)
{
    return s->ops->backup_list(s);
}

char *nj_store_backup_read(struct nj_store *s, const char *id,
                           const char *name, size_t max, size_t *len)
{
    if (!nj_store_name_valid(id) || !nj_store_name_valid(name)) {
        nj_error("invalid backup id or file name '%s/%s'", id, name);
        errno = EINVAL;
        return NULL;
    }
    return s->ops->backup_read(s, id, name, max, len);
}

int nj_store_backup_open(struct nj_store *s, const char *id, const char *name)
{
    CHECK_NAME("backup id", id);
    CHECK_NAME("file name", name);
    return s->ops->backup_open(s, id, name);
}

int nj_store_lock_domain(struct nj_store *s, const char *key,
                         const char *display_name)
{
    CHECK_NAME("lock key", key);
    return s->ops->lock_domain(s, key, display_name);
}

void nj_store_unlock_domain(int fd)
{
    if (fd >= 0) {
        flock(fd, LOCK_UN);
        close(fd);
    }
}

void nj_strv_free(char **v)
{
    if (!v)
        return;
    for (char **p = v; *p; p++)
        free(*p);
    free(v);
}

int nj_store_staging_link(struct nj_store *s, const char *id, const char *name,
                          const char *from_id, const char *from_name)
{
    CHECK_NAME("backup id", id);
    CHECK_NAME("file name", name);
    CHECK_NAME("backup id", from_id);
    CHECK_NAME("file name", from_name);
    return s->ops->staging_link(s, id, name, from_id, from_name);
}

int nj_store_backup_replace(struct nj_store *s, const char *staged_id,
                            const char *id)
{
    CHECK_NAME("backup id", staged_id);
    CHECK_NAME("backup id", id);
    return s->ops->backup_replace(s, staged_id, id);
}

int nj_store_backup_remove(struct nj_store *s, const char *id)
{
    CHECK_NAME("backup id", id);
    return s->ops->backup_remove(s, id);
}

int nj_store_backup_set_flag(struct nj_store *s, const char *id,
                             const char *flag, bool on)
{
    CHECK_NAME("backup id", id);
    CHECK_NAME("flag", flag);
    return s->ops->backup_set_flag(s, id, flag, on);
}

int nj_store_backup_has_flag(struct nj_store *s, const char *id,
                             const char *flag)
{
    CHECK_NAME("backup id", id);
    CHECK_NAME("flag", flag);
    return s->ops->backup_has_flag(s, id, flag);
}

int nj_store_chunk_mark(struct nj_store *s, const struct nj_digest *d)
{
    return s->ops->chunk_mark(s, d);
}

int nj_store_gc_sweep(struct nj_store *s, int64_t cutoff, int64_t tmp_cutoff,
                      uint64_t *kept, uint64_t *kept_bytes, uint64_t *freed,
                      uint64_t *freed_bytes, uint64_t *tmp_removed)
{
    return s->ops->gc_sweep(s, cutoff, tmp_cutoff, kept, kept_bytes, freed,
                            freed_bytes, tmp_removed);
}

char **nj_store_staging_list(struct nj_store *s)
{
    return s->ops->staging_list(s);
}

int nj_store_staging_owner_get(struct nj_store *s, const char *id,
                               struct nj_store_owner *o)
{
    CHECK_NAME("backup id", id);
    return s->ops->staging_owner(s, id, o);
}

char *nj_store_staging_owner(struct nj_store *s, const char *id)
{
    struct nj_store_owner o;
    int r = nj_store_staging_owner_get(s, id, &o);
    if (r <= 0) {
        if (r == 0)
            nj_error("staged backup '%s' has no owner record", id);
        return NULL;
    }
    struct json_object *j = json_object_new_object();
    json_object_object_add(j, "lock", json_object_new_string(o.lock));
    json_object_object_add(j, "started", json_object_new_int64(o.started));
    if (o.pid > 0)
        json_object_object_add(j, "pid", json_object_new_int64(o.pid));
    char *text = nj_strdup(json_object_to_json_string(j));
    json_object_put(j);
    return text;
}
