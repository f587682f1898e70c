/*
 * nj-store.c: the store front end: argument checks, then the backend.
 */
#include "nj-store.h"
#include "nj-io.h"
#include "nj-util.h"
#include "store-backend.h"

#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

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

bool nj_store_url_is_remote(const char *url)
{
    return strncmp(url, "s3://", 5) == 0;
}

/* The format version a directory's marker states: 1 or 2; 0 when it has
 * none (or the directory is absent); -1 when the marker is there but
 * unreadable or invalid (store-dir.c's open then says exactly why). */
static int local_version(const char *path)
{
    NJ_CLEANUP_CLOSE int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    size_t len = 0;
    NJ_CLEANUP_FREE char *text = nj_read_file(fd, NJ_STORE_MARKER, 65536,
                                              &len);
    if (!text)
        return errno == ENOENT &&
                       faccessat(fd, NJ_STORE_MARKER, F_OK,
                                 AT_SYMLINK_NOFOLLOW) < 0
                   ? 0
                   : -1;
    return nj_store_marker_check(text, len, path);
}

/* A directory store: the object layout (store-obj.c on obj-dir.c) when its
 * marker says version 2 or when it is created now; store-dir.c for
 * version 1, for NJ_STORE_CREATE_V1, and to report what is wrong with
 * anything else. */
static struct nj_store *open_local(const char *path, const char *name,
                                   unsigned flags)
{
    int v = local_version(path);
    if (v == NJ_STORE_FORMAT_VERSION ||
        (v == 0 && (flags & NJ_STORE_CREATE) && !(flags & NJ_STORE_CREATE_V1)))
        return nj_store_objdir_open_path(path, name, flags);
    return nj_store_dir_open(path, flags);
}

/* file://PATH with an absolute path (file:///srv/store), or
 * file://localhost/PATH; no other host. */
const char *nj_store_url_path(const char *url)
{
    const char *p = url;
    if (strncmp(p, "obj+", 4) == 0 && strncmp(p + 4, "file://", 7) == 0)
        p += 4;
    if (strncmp(p, "file://", 7) == 0) {
        p += 7;
        if (strncmp(p, "localhost/", 10) == 0)
            p += 9;
        return p[0] == '/' ? p : NULL;
    }
    return strstr(url, "://") ? NULL : url;
}

struct nj_store *nj_store_open(const char *url, unsigned flags)
{
    if (nj_store_url_is_remote(url))
        return nj_store_s3_open(url, flags);
    bool objects = strncmp(url, "obj+file://", 11) == 0;
    if (objects || strncmp(url, "file://", 7) == 0) {
        const char *p = nj_store_url_path(url);
        if (!p) {
            nj_error("'%s': a%s URL needs an absolute path (%s:///PATH)",
                     url, objects ? "n obj+file://" : " file://",
                     objects ? "obj+file" : "file");
            return NULL;
        }
        /* obj+file:// insists on the object layout (a version-1 marker
         * is refused there); file:// is a path. */
        return objects ? nj_store_objdir_open_path(p, url, flags)
                       : open_local(p, url, flags);
    }
    if (strstr(url, "://")) {
        nj_error("'%s': unknown store URL (a path, file://PATH, "
                 "obj+file://PATH or s3://BUCKET[/PREFIX])", url);
        return NULL;
    }
    return open_local(url, url, flags);
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

int nj_store_chunk_put_async(struct nj_store *s, const struct nj_digest *d,
                             const void *frame, size_t frame_len,
                             void (*done)(void *arg, int rc), void *arg)
{
    if (s->ops->chunk_put_async)
        return s->ops->chunk_put_async(s, d, frame, frame_len, done, arg);
    int rc = s->ops->chunk_put(s, d, frame, frame_len);
    if (rc < 0)
        return -1;
    if (done)
        done(arg, rc);
    return 0;
}

void nj_store_settle(struct nj_store *s)
{
    if (s->ops->settle)
        s->ops->settle(s);
}

bool nj_store_takes_known(const struct nj_store *s)
{
    return s->ops->chunk_known != NULL;
}

void nj_store_chunk_known(struct nj_store *s, const struct nj_digest *d)
{
    if (s->ops->chunk_known)
        s->ops->chunk_known(s, d);
}

int nj_store_chunk_exists(struct nj_store *s, const struct nj_digest *d)
{
    return s->ops->chunk_exists(s, d);
}

int nj_store_chunk_present(struct nj_store *s, const struct nj_digest *d)
{
    if (s->ops->chunk_present)
        return s->ops->chunk_present(s, d);
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

struct nj_stream *nj_store_staging_open(struct nj_store *s, const char *id,
                                        const char *name)
{
    if (!nj_store_name_valid(id) || !nj_store_name_valid(name)) {
        nj_error("invalid backup id or file name '%s/%s'", id, name);
        return NULL;
    }
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

struct nj_stream *nj_store_backup_open(struct nj_store *s, const char *id,
                                       const char *name)
{
    if (!nj_store_name_valid(id) || !nj_store_name_valid(name)) {
        nj_error("invalid backup id or file name '%s/%s'", id, name);
        return NULL;
    }
    return s->ops->backup_open(s, id, name);
}

int nj_store_lock_domain(struct nj_store *s, const char *key,
                         const char *display_name)
{
    CHECK_NAME("lock key", key);
    return s->ops->lock_domain(s, key, display_name);
}

int nj_store_gc_begin(struct nj_store *s)
{
    if (s->ops->gc_begin)
        return s->ops->gc_begin(s);
    /* Nothing to hold (nj-gc.c's mtime protocol): a handle all the same,
     * so that callers treat every backend alike. */
    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return nj_error_errno(errno, "open /dev/null");
    return fd;
}

bool nj_store_transfer_stats(struct nj_store *s, struct nj_store_transfer *t)
{
    memset(t, 0, sizeof *t);
    return s->ops->transfer_stats && s->ops->transfer_stats(s, t);
}

bool nj_store_gc_exclusive(const struct nj_store *s)
{
    return s->ops->gc_begin != NULL;
}

void nj_store_unlock_domain(int fd)
{
    if (fd >= 0 && nj_store_obj_unlock(fd))
        return;
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

/* ---- shared by the backends (store-backend.h) ---- */

char *nj_store_marker_new(int version)
{
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "format", json_object_new_string(NJ_STORE_FORMAT_NAME));
    json_object_object_add(o, "version", json_object_new_int(version));
    json_object_object_add(o, "chunk_id", json_object_new_string("sha256"));
    json_object_object_add(o, "created", json_object_new_int64((int64_t)time(NULL)));
    const char *text = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY);
    char *body = nj_asprintf("%s\n", text);
    json_object_put(o);
    return body;
}

int nj_store_marker_check(const char *text, size_t len, const char *path)
{
    struct json_tokener *tok = json_tokener_new();
    struct json_object *o = json_tokener_parse_ex(tok, text, (int)len);
    bool complete = json_tokener_get_error(tok) == json_tokener_success;
    if (complete) {
        size_t end = json_tokener_get_parse_end(tok);
        complete = end <= len &&
                   strspn(text + end, " \t\r\n") == len - end;
    }
    json_tokener_free(tok);
    struct json_object *f = NULL, *v = NULL, *c = NULL, *t = NULL;
    int ret = 0;
    if (!o || !complete || !json_object_is_type(o, json_type_object) ||
        !json_object_object_get_ex(o, "format", &f) ||
        !json_object_is_type(f, json_type_string) ||
        strcmp(json_object_get_string(f), NJ_STORE_FORMAT_NAME) != 0) {
        ret = nj_error("'%s' is not a nightjar store (%s is not a store "
                       "marker)", path, NJ_STORE_MARKER);
    } else if (!json_object_object_get_ex(o, "version", &v) ||
               !json_object_is_type(v, json_type_int)) {
        ret = nj_error("store '%s' has no format version", path);
    } else if (json_object_get_int64(v) != NJ_STORE_FORMAT_V1 &&
               json_object_get_int64(v) != NJ_STORE_FORMAT_VERSION) {
        ret = nj_error("store '%s' has format version %lld; this nightjar "
                       "reads versions %d and %d", path,
                       (long long)json_object_get_int64(v),
                       NJ_STORE_FORMAT_V1, NJ_STORE_FORMAT_VERSION);
    } else if (json_object_object_get_ex(o, "chunk_id", &c) &&
               (!json_object_is_type(c, json_type_string) ||
                strcmp(json_object_get_string(c), "sha256") != 0)) {
        ret = nj_error("store '%s' names chunks by an unknown id (%s: "
                       "\"chunk_id\" is not \"sha256\")", path, NJ_STORE_MARKER);
    } else if (json_object_object_get_ex(o, "created", &t) &&
               (!json_object_is_type(t, json_type_int) ||
                json_object_get_int64(t) < 0)) {
        ret = nj_error("store '%s': %s has an invalid \"created\"", path,
                       NJ_STORE_MARKER);
    }
    if (ret == 0)
        ret = (int)json_object_get_int64(v);
    json_object_put(o);
    return ret;
}


/*
 * Parse and validate an owner record (name: for messages).  1 with *o
 * filled; -1 with the last error set when it is not a JSON object whose
 * "lock" is a store name and whose "started" is an integer in
 * [0, NJ_STORE_OWNER_STARTED_MAX], or when "pid" or "domain" are present with the
 * wrong type or out of range.  Unknown members are ignored.
 */
int nj_store_owner_parse(const char *text, size_t len, const char *name,
                         struct nj_store_owner *o)
{
    memset(o, 0, sizeof *o);
    struct json_tokener *tok = json_tokener_new();
    struct json_object *j = json_tokener_parse_ex(tok, text, (int)len);
    /* Complete, with nothing but white space after it. */
    bool complete = json_tokener_get_error(tok) == json_tokener_success;
    size_t end = complete ? json_tokener_get_parse_end(tok) : 0;
    json_tokener_free(tok);
    if (j && (!complete || end > len ||
              strspn(text + end, " \t\r\n") != len - end)) {
        json_object_put(j);
        j = NULL;
    }
    struct json_object *k = NULL, *st = NULL, *pid = NULL, *dom = NULL;
    int ret = 1;
    if (!j || !json_object_is_type(j, json_type_object))
        ret = nj_error("'%s' is not a JSON object", name);
    else if (!json_object_object_get_ex(j, "lock", &k) ||
             !json_object_is_type(k, json_type_string) ||
             !nj_store_name_valid(json_object_get_string(k)))
        ret = nj_error("'%s' has no valid \"lock\"", name);
    else if (!json_object_object_get_ex(j, "started", &st) ||
             !json_object_is_type(st, json_type_int) ||
             json_object_get_int64(st) < 0 ||
             json_object_get_int64(st) > NJ_STORE_OWNER_STARTED_MAX)
        ret = nj_error("'%s' has no valid \"started\"", name);
    else if (json_object_object_get_ex(j, "pid", &pid) &&
             (!json_object_is_type(pid, json_type_int) ||
              json_object_get_int64(pid) <= 0 ||
              json_object_get_int64(pid) > INT32_MAX))
        ret = nj_error("'%s' has an invalid \"pid\"", name);
    else if (json_object_object_get_ex(j, "domain", &dom) &&
             (!json_object_is_type(dom, json_type_string) ||
              json_object_get_string_len(dom) > 1024))
        ret = nj_error("'%s' has an invalid \"domain\"", name);
    if (ret == 1) {
        snprintf(o->lock, sizeof o->lock, "%s", json_object_get_string(k));
        o->started = json_object_get_int64(st);
        o->pid = pid ? json_object_get_int64(pid) : 0;
    }
    json_object_put(j);
    return ret;
}

