/*
 * nj-catalog.c: the read side: committed manifests and their chains.
 *
 * Chain invariants (checked here, relied on by restore, verify and prune):
 *  - a backup's parent is a committed backup of the same domain UUID that
 *    is not a copy, and is older: it comes first in the catalog's order
 *    (finished_us, then id); full and copy backups have no parent;
 *  - following parents from any backup ends, for each of its disks, at a
 *    backup in which that disk is full (its index covers the whole disk);
 *  - so a chain never has a cycle: every link goes to an earlier backup.
 * Each link is resolved once, when the catalog opens, through a hash map
 * from id to position; a broken link keeps its reason.  A broken chain is
 * reported when it is used, not when the store opens, so that one damaged
 * backup does not hide the others.
 */
#include "nj-catalog.h"
#include "nj-util.h"

#include <errno.h>
#include <string.h>

struct broken {
    char *id;
    char *error;
};

struct nj_catalog {
    struct nj_manifest **m;
    size_t n;
    struct broken *broken;
    size_t nbroken;
    /* Open addressing, id -> position + 1 (0: empty); nslots a power of 2. */
    size_t *slots;
    size_t nslots;
    /* Per position: the parent's position, or SIZE_MAX (none or broken),
     * and why the link is broken (NULL when sound or absent). */
    size_t *parent;
    char **link_error;
};

static uint64_t hash_id(const char *id)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (const unsigned char *p = (const unsigned char *)id; *p; p++)
        h = (h ^ *p) * 1099511628211ull;
    return h;
}

static size_t find_pos(const struct nj_catalog *c, const char *id)
{
    if (!c->nslots)
        return SIZE_MAX;
    for (size_t i = (size_t)hash_id(id) & (c->nslots - 1);;
         i = (i + 1) & (c->nslots - 1)) {
        if (!c->slots[i])
            return SIZE_MAX;
        if (strcmp(c->m[c->slots[i] - 1]->id, id) == 0)
            return c->slots[i] - 1;
    }
}

static void build_map(struct nj_catalog *c)
{
    c->nslots = 16;
    while (c->nslots < 2 * c->n)
        c->nslots *= 2;
    c->slots = nj_calloc(c->nslots, sizeof *c->slots);
    for (size_t k = 0; k < c->n; k++) {
        size_t i = (size_t)hash_id(c->m[k]->id) & (c->nslots - 1);
        while (c->slots[i])
            i = (i + 1) & (c->nslots - 1);
        c->slots[i] = k + 1;
    }
}

static int cmp_manifest(const void *a, const void *b)
{
    const struct nj_manifest *x = *(struct nj_manifest *const *)a;
    const struct nj_manifest *y = *(struct nj_manifest *const *)b;
    if (x->finished_us != y->finished_us)
        return x->finished_us < y->finished_us ? -1 : 1;
    return strcmp(x->id, y->id);
}

/* Resolve and check every parent link once. */
static void build_links(struct nj_catalog *c)
{
    c->parent = nj_calloc(c->n ? c->n : 1, sizeof *c->parent);
    c->link_error = nj_calloc(c->n ? c->n : 1, sizeof *c->link_error);
    for (size_t k = 0; k < c->n; k++) {
        const struct nj_manifest *m = c->m[k];
        c->parent[k] = SIZE_MAX;
        if (!m->parent)
            continue;
        size_t p = find_pos(c, m->parent);
        const struct nj_manifest *pm = p == SIZE_MAX ? NULL : c->m[p];
        bool damaged = false;
        for (size_t i = 0; !pm && i < c->nbroken; i++)
            damaged |= strcmp(c->broken[i].id, m->parent) == 0;
        if (!pm)
            c->link_error[k] = nj_asprintf(
                "parent backup '%s' of '%s' is %s", m->parent, m->id,
                damaged ? "damaged" : "missing");
        else if (strcmp(pm->domain_uuid, m->domain_uuid) != 0)
            c->link_error[k] = nj_asprintf(
                "backup '%s' (domain %s) names '%s' of another domain (%s) "
                "as its parent", m->id, m->domain_uuid, pm->id,
                pm->domain_uuid);
        else if (pm->level == NJ_LEVEL_COPY)
            c->link_error[k] = nj_asprintf(
                "parent '%s' of '%s' is a copy, outside the chain", pm->id,
                m->id);
        else if (p >= k)
            /* Also what makes every cycle a broken link. */
            c->link_error[k] = nj_asprintf(
                "parent '%s' of '%s' is not older than it", pm->id, m->id);
        else
            c->parent[k] = p;
    }
}

struct nj_catalog *nj_catalog_open(struct nj_store *s)
{
    char **ids = nj_store_backup_list(s);
    if (!ids)
        return NULL;
    struct nj_catalog *c = nj_calloc(1, sizeof *c);
    for (char **id = ids; *id; id++) {
        size_t len = 0;
        NJ_CLEANUP_FREE char *text = nj_store_backup_read(
            s, *id, NJ_MANIFEST_NAME, NJ_MANIFEST_MAX, &len);
        struct nj_manifest *m = text ? nj_manifest_from_json(text, len) : NULL;
        if (m && strcmp(m->id, *id) != 0) {
            nj_error("manifest id '%s' does not match its directory", m->id);
            nj_manifest_free(m);
            m = NULL;
        }
        if (!m) {
            c->broken = nj_realloc_array(c->broken, c->nbroken + 1,
                                         sizeof *c->broken);
            c->broken[c->nbroken].id = nj_strdup(*id);
            c->broken[c->nbroken].error = nj_strdup(nj_error_get());
            c->nbroken++;
            continue;
        }
        c->m = nj_realloc_array(c->m, c->n + 1, sizeof *c->m);
        c->m[c->n++] = m;
    }
    nj_strv_free(ids);
    if (c->n)
        qsort(c->m, c->n, sizeof *c->m, cmp_manifest);
    build_map(c);
    build_links(c);
    return c;
}

void nj_catalog_free(struct nj_catalog *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->n; i++) {
        nj_manifest_free(c->m[i]);
        free(c->link_error[i]);
    }
    free(c->link_error);
    free(c->parent);
    free(c->slots);
    for (size_t i = 0; i < c->nbroken; i++) {
        free(c->broken[i].id);
        free(c->broken[i].error);
    }
    free(c->broken);
    free(c->m);
    free(c);
}

size_t nj_catalog_count(const struct nj_catalog *c)
{
    return c->n;
}

const struct nj_manifest *nj_catalog_get(const struct nj_catalog *c, size_t i)
{
    return i < c->n ? c->m[i] : NULL;
}

size_t nj_catalog_broken_count(const struct nj_catalog *c)
{
    return c->nbroken;
}

const char *nj_catalog_broken_id(const struct nj_catalog *c, size_t i)
{
    return c->broken[i].id;
}

const char *nj_catalog_broken_error(const struct nj_catalog *c, size_t i)
{
    return c->broken[i].error;
}

const struct nj_manifest *nj_catalog_find(const struct nj_catalog *c,
                                          const char *id)
{
    size_t p = find_pos(c, id);
    return p == SIZE_MAX ? NULL : c->m[p];
}

size_t nj_catalog_pos(const struct nj_catalog *c, const struct nj_manifest *m)
{
    size_t p = find_pos(c, m->id);
    return p != SIZE_MAX && c->m[p] == m ? p : SIZE_MAX;
}

int nj_catalog_parent(const struct nj_catalog *c, const struct nj_manifest *m,
                      const struct nj_manifest **out)
{
    *out = NULL;
    size_t k = nj_catalog_pos(c, m);
    if (k == SIZE_MAX)
        return nj_error("backup '%s' is not in the catalog", m->id);
    if (c->link_error[k])
        return nj_error("%s", c->link_error[k]);
    if (c->parent[k] != SIZE_MAX)
        *out = c->m[c->parent[k]];
    return 0;
}

bool nj_manifest_matches_domain(const struct nj_manifest *m,
                                const char *domain)
{
    return strcmp(m->domain_name, domain) == 0 ||
           strcasecmp(m->domain_uuid, domain) == 0;
}

const struct nj_manifest *nj_catalog_resolve(const struct nj_catalog *c,
                                             const char *domain,
                                             const char *id)
{
    if (id && strcmp(id, "latest") != 0) {
        const struct nj_manifest *m = nj_catalog_find(c, id);
        for (size_t i = 0; !m && i < c->nbroken; i++)
            if (strcmp(c->broken[i].id, id) == 0) {
                nj_error("backup '%s' is damaged: %s", id,
                         c->broken[i].error);
                return NULL;
            }
        if (!m) {
            nj_error("no backup '%s' in the store", id);
            return NULL;
        }
        if (domain && !nj_manifest_matches_domain(m, domain)) {
            nj_error("backup '%s' belongs to domain '%s', not '%s'", id,
                     m->domain_name, domain);
            return NULL;
        }
        return m;
    }
    if (!domain) {
        nj_error("'latest' needs a domain (-d)");
        return NULL;
    }
    const struct nj_manifest *found = NULL;
    for (size_t i = c->n; i-- > 0;)
        if (nj_manifest_matches_domain(c->m[i], domain)) {
            if (found && strcmp(found->domain_uuid, c->m[i]->domain_uuid)) {
                nj_error("domain name '%s' is ambiguous (UUIDs %s and %s); "
                         "use the UUID", domain, found->domain_uuid,
                         c->m[i]->domain_uuid);
                return NULL;
            }
            if (!found)
                found = c->m[i];
        }
    if (!found)
        nj_error("no backup of domain '%s' in the store", domain);
    return found;
}

int nj_catalog_chain(const struct nj_catalog *c, const struct nj_manifest *m,
                     const char *target, const struct nj_manifest ***out)
{
    const struct nj_manifest **v = NULL;
    size_t n = 0;
    const struct nj_manifest *cur = m;
    while (cur) {
        if (n > c->n) { /* cannot happen: links go to older backups */
            free(v);
            return nj_error("backup '%s': chain has a cycle", m->id);
        }
        const struct nj_manifest_disk *d = nj_manifest_disk(cur, target);
        if (!d) {
            free(v);
            return nj_error("backup '%s': disk '%s' is missing from backup "
                            "'%s' in its chain", m->id, target, cur->id);
        }
        v = nj_realloc_array(v, n + 1, sizeof *v);
        v[n++] = cur;
        if (d->full) {
            *out = v;
            return (int)n;
        }
        if (!cur->parent) {
            free(v);
            return nj_error("backup '%s': disk '%s' has no full backup at the "
                            "root of its chain", m->id, target);
        }
        const struct nj_manifest *p = NULL;
        if (nj_catalog_parent(c, cur, &p) < 0) {
            free(v);
            return nj_error_prefix("backup '%s' disk '%s'", m->id, target);
        }
        cur = p;
    }
    free(v);
    return nj_error("backup '%s': chain ends without a full", m->id);
}

const char *nj_catalog_chain_root(const struct nj_catalog *c,
                                  const struct nj_manifest *m)
{
    const struct nj_manifest *cur = m;
    for (size_t steps = 0; cur && cur->parent && steps <= c->n; steps++) {
        const struct nj_manifest *p = NULL;
        if (nj_catalog_parent(c, cur, &p) < 0)
            return NULL;
        cur = p;
    }
    return cur && !cur->parent ? cur->id : NULL;
}
