/*
 * obj-s3.c: an S3 bucket as an object namespace (nj-object.h), over the
 * client of nj-s3.c.  Tags are ETags; puts are durable when answered, so
 * there is nothing to sync; put_async runs on the client's I/O thread.
 */
#include "nj-object.h"
#include "nj-s3.h"
#include "nj-util.h"

#include <stdlib.h>

struct obj_s3 {
    struct nj_objects base;
    struct nj_s3 *s3;
};

static struct nj_s3 *s3_of(struct nj_objects *o)
{
    return ((struct obj_s3 *)o)->s3;
}

static void os3_free(struct nj_objects *o)
{
    nj_s3_free(s3_of(o));
    free(o);
}

static int os3_get(struct nj_objects *o, const char *key, size_t max,
                   void **buf, size_t *len)
{
    return nj_s3_get(s3_of(o), key, max, buf, len);
}

static ssize_t os3_get_range(struct nj_objects *o, const char *key,
                             uint64_t off, void *buf, size_t len)
{
    return nj_s3_get_range(s3_of(o), key, off, buf, len);
}

static int os3_put(struct nj_objects *o, const char *key, const void *buf,
                   size_t len, enum nj_obj_put_mode mode, const char *tag,
                   char *tag_out)
{
    /* S3 answers a put once it is durable: NJ_OBJ_LAZY changes nothing. */
    return nj_s3_put(s3_of(o), key, buf, len, mode & ~NJ_OBJ_LAZY, tag,
                     tag_out);
}

static int os3_put_async(struct nj_objects *o, const char *key,
                         const void *buf, size_t len,
                         enum nj_obj_put_mode mode,
                         void (*done)(void *arg, int rc), void *arg)
{
    return nj_s3_put_async(s3_of(o), key, buf, len, mode & ~NJ_OBJ_LAZY,
                           done, arg);
}

static void os3_wait(struct nj_objects *o)
{
    nj_s3_wait(s3_of(o));
}

static int os3_head(struct nj_objects *o, const char *key, uint64_t *size,
                    int64_t *mtime, char *tag)
{
    return nj_s3_head(s3_of(o), key, size, mtime, tag);
}

static int os3_del(struct nj_objects *o, const char *key)
{
    return nj_s3_delete(s3_of(o), key);
}

static int os3_del_many(struct nj_objects *o, const char *const *keys,
                        size_t n)
{
    return nj_s3_delete_many(s3_of(o), keys, n);
}

static int os3_list(struct nj_objects *o, const char *prefix,
                    const char *delimiter, char **token,
                    struct nj_obj_page *page)
{
    return nj_s3_list(s3_of(o), prefix, delimiter, token, page);
}

static int os3_create(struct nj_objects *o)
{
    return nj_s3_bucket_create(s3_of(o));
}

static void os3_stats(struct nj_objects *o, struct nj_obj_stats *st)
{
    nj_s3_stats(s3_of(o), st);
}

static const struct nj_objects_ops s3_objects_ops = {
    .name = "s3",
    .free = os3_free,
    .get = os3_get,
    .get_range = os3_get_range,
    .put = os3_put,
    .put_async = os3_put_async,
    .wait = os3_wait,
    .head = os3_head,
    .del = os3_del,
    .del_many = os3_del_many,
    .list = os3_list,
    .create = os3_create,
    .stats = os3_stats,
};

struct nj_objects *nj_objects_s3_new(const struct nj_s3_config *c,
                                     const char *bucket)
{
    struct nj_s3 *s3 = nj_s3_new(c, bucket);
    if (!s3)
        return NULL;
    struct obj_s3 *o = nj_calloc(1, sizeof *o);
    o->base.ops = &s3_objects_ops;
    o->s3 = s3;
    return &o->base;
}
