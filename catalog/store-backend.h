/*
 * store-backend.h: the interface a store backend implements (private to
 * catalog/).  struct nj_store is the base every backend embeds first.
 */
#ifndef NJ_STORE_BACKEND_H
#define NJ_STORE_BACKEND_H

#include "nj-store.h"

struct nj_store_ops {
    const char *name;
    void (*close)(struct nj_store *s);
    int (*chunk_put)(struct nj_store *s, const struct nj_digest *d,
                     const void *frame, size_t len);
    int (*chunk_exists)(struct nj_store *s, const struct nj_digest *d);
    ssize_t (*chunk_get)(struct nj_store *s, const struct nj_digest *d,
                         void **buf, size_t *cap);
    int (*sync)(struct nj_store *s);
    int (*staging_create)(struct nj_store *s, const char *id,
                          const char *owner_json);
    int (*staging_open)(struct nj_store *s, const char *id, const char *name);
    int (*staging_put)(struct nj_store *s, const char *id, const char *name,
                       const void *buf, size_t len);
    int (*backup_publish)(struct nj_store *s, const char *id);
    int (*staging_remove)(struct nj_store *s, const char *id);
    int (*staging_clean)(struct nj_store *s, const char *owner_key);
    char **(*backup_list)(struct nj_store *s);
    char *(*backup_read)(struct nj_store *s, const char *id, const char *name,
                         size_t max, size_t *len);
    int (*backup_open)(struct nj_store *s, const char *id, const char *name);
    int (*lock_domain)(struct nj_store *s, const char *key,
                       const char *display_name);
};

struct nj_store {
    const struct nj_store_ops *ops;
    char *path;
};

struct nj_store *nj_store_dir_open(const char *path, unsigned flags);


#endif
