/*
 * obj-s3.c: an S3 bucket as an object namespace (nj-object.h), over the
 * client of nj-s3.c.  Tags are ETags; puts are durable when answered, so
 * there is nothing to sync; put_async runs on the client's I/O thread.
 *
 * For a server that ignores If-None-Match / If-Match (a store created
 * with NIGHTJAR_S3_NO_CONDITIONAL=1 says so in its marker), conditional
 * puts are emulated, restic-style: look (HEAD), put unconditionally, wait
 * a settle time, and look again; the put counts only if the object still
 * has the ETag of what was put (else it answers 1, as a 412 would).  Of
 * two writers racing for one key, the later put wins and the earlier one
 * sees it and backs off, unless a put takes longer than the settle time
 * to land after its HEAD: a put that starts later than half the settle
 * time after its HEAD is not made.  Lazy creates (chunks: content-
 * addressed, any copy is right) only look before they put.
 */
#include "nj-object.h"
#include "nj-s3.h"
#include "nj-util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct obj_s3 {
    struct nj_objects base;
    struct nj_s3 *s3;
    unsigned settle_ms; /* 0: the server honours conditional puts */
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

static void sleep_ms(unsigned ms)
{
    struct timespec ts = { .tv_sec = ms / 1000,
                           .tv_nsec = (long)(ms % 1000) * 1000000 };
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* A conditional put without the server's help (see the top). */
static int emulated_put(struct obj_s3 *o, const char *key, const void *buf,
                        size_t len, enum nj_obj_put_mode mode,
                        const char *tag, char *tag_out)
{
    bool lazy = mode & NJ_OBJ_LAZY;
    mode &= ~NJ_OBJ_LAZY;
    char now[NJ_OBJ_TAG_MAX] = "";
    double t0 = nj_mono_sec();
    int h = nj_s3_head(o->s3, key, NULL, NULL, now);
    if (h < 0)
        return -1;
    if (mode == NJ_OBJ_CREATE && h == 1)
        return 1;
    if (mode == NJ_OBJ_IF_MATCH && (h == 0 || strcmp(now, tag) != 0))
        return 1;
    if (!lazy && nj_mono_sec() - t0 > o->settle_ms / 2000.0) {
        errno = ETIMEDOUT;
        return nj_error("put '%s': the server took more than %u ms to "
                        "answer a HEAD; not racing without conditional PUT",
                        key, o->settle_ms / 2);
    }
    char mine[NJ_OBJ_TAG_MAX];
    if (nj_s3_put(o->s3, key, buf, len, NJ_OBJ_REPLACE, NULL, mine) < 0)
        return -1;
    if (!lazy) {
        sleep_ms(o->settle_ms);
        h = nj_s3_head(o->s3, key, NULL, NULL, now);
        if (h < 0)
            return -1;
        if (h == 0 || strcmp(now, mine) != 0)
            return 1; /* another writer's put landed after ours: theirs */
    }
    if (tag_out)
        snprintf(tag_out, NJ_OBJ_TAG_MAX, "%s", mine);
    return 0;
}

static int os3_put(struct nj_objects *o, const char *key, const void *buf,
                   size_t len, enum nj_obj_put_mode mode, const char *tag,
                   char *tag_out)
{
    struct obj_s3 *os = (struct obj_s3 *)o;
    if (os->settle_ms && (mode & ~NJ_OBJ_LAZY) != NJ_OBJ_REPLACE)
        return emulated_put(os, key, buf, len, mode, tag, tag_out);
    /* S3 answers a put once it is durable: NJ_OBJ_LAZY changes nothing. */
    return nj_s3_put(s3_of(o), key, buf, len, mode & ~NJ_OBJ_LAZY, tag,
                     tag_out);
}

static int os3_put_async(struct nj_objects *o, const char *key,
                         const void *buf, size_t len,
                         enum nj_obj_put_mode mode,
                         void (*done)(void *arg, int rc), void *arg)
{
    struct obj_s3 *os = (struct obj_s3 *)o;
    if (os->settle_ms && (mode & ~NJ_OBJ_LAZY) != NJ_OBJ_REPLACE) {
        int rc = emulated_put(os, key, buf, len, mode, NULL, NULL);
        if (done)
            done(arg, rc);
        return 0;
    }
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

bool nj_objects_s3_emulate(struct nj_objects *o, unsigned settle_ms)
{
    if (o->ops != &s3_objects_ops)
        return false;
    ((struct obj_s3 *)o)->settle_ms = settle_ms ? settle_ms : 1;
    return true;
}

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
