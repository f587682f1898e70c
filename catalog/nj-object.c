/*
 * nj-object.c: the calls of nj-object.h, dispatched to a namespace's ops,
 * with the key check every namespace shares.
 */
#include "nj-object.h"

#include "nj-util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

bool nj_obj_key_valid(const char *key)
{
    size_t len = strlen(key);
    if (len == 0 || len > NJ_OBJ_KEY_MAX)
        return false;
    for (const char *seg = key;;) {
        size_t n = strcspn(seg, "/");
        if (n == 0 || (n == 1 && seg[0] == '.') ||
            (n == 2 && seg[0] == '.' && seg[1] == '.') ||
            strncmp(seg, ".tmp-", 5) == 0 ||
            strspn(seg, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                        "0123456789._-") < n)
            return false;
        if (!seg[n])
            return true;
        seg += n + 1;
    }
}

static int key_check(const char *key)
{
    if (nj_obj_key_valid(key))
        return 0;
    errno = EINVAL;
    return nj_error("'%.80s' is not a valid object key", key);
}

void nj_obj_free(struct nj_objects *o)
{
    if (o)
        o->ops->free(o);
}

int nj_obj_get(struct nj_objects *o, const char *key, size_t max, void **buf,
               size_t *len)
{
    if (key_check(key) < 0)
        return -1;
    return o->ops->get(o, key, max, buf, len);
}

ssize_t nj_obj_get_range(struct nj_objects *o, const char *key, uint64_t off,
                         void *buf, size_t len)
{
    if (key_check(key) < 0)
        return -1;
    return o->ops->get_range(o, key, off, buf, len);
}

int nj_obj_put(struct nj_objects *o, const char *key, const void *buf,
               size_t len, enum nj_obj_put_mode mode, const char *tag,
               char *tag_out)
{
    if (key_check(key) < 0)
        return -1;
    return o->ops->put(o, key, buf, len, mode, tag, tag_out);
}

int nj_obj_put_async(struct nj_objects *o, const char *key, const void *buf,
                     size_t len, enum nj_obj_put_mode mode,
                     void (*done)(void *arg, int rc), void *arg)
{
    if (key_check(key) < 0 || (mode & ~NJ_OBJ_LAZY) == NJ_OBJ_IF_MATCH) {
        errno = EINVAL;
        return -1;
    }
    if (o->ops->put_async)
        return o->ops->put_async(o, key, buf, len, mode, done, arg);
    int rc = o->ops->put(o, key, buf, len, mode, NULL, NULL);
    if (done)
        done(arg, rc);
    return 0;
}

void nj_obj_wait(struct nj_objects *o)
{
    if (o->ops->wait)
        o->ops->wait(o);
}

int nj_obj_head(struct nj_objects *o, const char *key, uint64_t *size,
                int64_t *mtime, char *tag)
{
    if (key_check(key) < 0)
        return -1;
    return o->ops->head(o, key, size, mtime, tag);
}

int nj_obj_delete(struct nj_objects *o, const char *key)
{
    if (key_check(key) < 0)
        return -1;
    return o->ops->del(o, key);
}

int nj_obj_delete_many(struct nj_objects *o, const char *const *keys, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (key_check(keys[i]) < 0)
            return -1;
    return n ? o->ops->del_many(o, keys, n) : 0;
}

int nj_obj_list(struct nj_objects *o, const char *prefix,
                const char *delimiter, char **token, struct nj_obj_page *page)
{
    memset(page, 0, sizeof *page);
    if (delimiter && strcmp(delimiter, "/") != 0) {
        errno = EINVAL;
        return nj_error("list: only '/' is a delimiter");
    }
    return o->ops->list(o, prefix, delimiter, token, page);
}

int nj_obj_sync(struct nj_objects *o)
{
    return o->ops->sync ? o->ops->sync(o) : 0;
}

int nj_obj_create(struct nj_objects *o)
{
    return o->ops->create(o);
}

bool nj_obj_stats(struct nj_objects *o, struct nj_obj_stats *st)
{
    memset(st, 0, sizeof *st);
    if (!o->ops->stats)
        return false;
    o->ops->stats(o, st);
    return true;
}

void nj_obj_page_clear(struct nj_obj_page *page)
{
    if (!page)
        return;
    for (size_t i = 0; i < page->nobjects; i++)
        free(page->objects[i].key);
    for (size_t i = 0; i < page->nprefixes; i++)
        free(page->prefixes[i]);
    free(page->objects);
    free(page->prefixes);
    memset(page, 0, sizeof *page);
}
