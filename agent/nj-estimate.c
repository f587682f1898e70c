/*
 * nj-estimate.c: `nightjar-agent estimate`: what the next backup of a
 * domain would cost, without taking it.
 *
 * Per disk: the bytes changed since the last committed checkpoint, as
 * libvirt measures them (virDomainCheckpointGetXMLDesc with
 * VIR_DOMAIN_CHECKPOINT_XML_SIZE), or the allocated bytes when the disk
 * needs a full (no chain, a new or resized disk, a raw disk).  Those bytes
 * are turned into stored bytes and seconds with the domain's own history:
 * the ratio of bytes stored to bytes read, and the bytes read per second,
 * over its committed backups (fulls for fulls, the rest for incrementals).
 * A domain with no history gets the bytes and no projection.
 */
#include "nj-agent.h"
#include "nj-util.h"
#include "nj-virt.h"
#include "nj-xml.h"

#include <json-c/json.h>
#include <stdio.h>
#include <string.h>

struct history {
    uint64_t read, stored, seconds_read;
    double seconds;
};

/* Ratio and throughput from the domain's committed backups. */
static void learn(const struct nj_catalog *c, const char *uuid,
                  struct history *full, struct history *inc)
{
    for (size_t i = 0; i < nj_catalog_count(c); i++) {
        const struct nj_manifest *m = nj_catalog_get(c, i);
        if (strcmp(m->domain_uuid, uuid) != 0)
            continue;
        for (size_t k = 0; k < m->ndisks; k++) {
            const struct nj_disk_stats *st = &m->disks[k].stats;
            struct history *h = m->disks[k].full ? full : inc;
            h->read += st->bytes_read;
            h->stored += st->bytes_stored;
            if (st->usec) {
                h->seconds += (double)st->usec / 1e6;
                h->seconds_read += st->bytes_read;
            }
        }
    }
}

static struct json_object *projection(const struct history *h, uint64_t bytes,
                                      const char *what)
{
    if (!strcmp(what, "stored"))
        return h->read ? json_object_new_uint64((uint64_t)(
                             (double)bytes * (double)h->stored / (double)h->read))
                       : NULL;
    return h->seconds > 0 && h->seconds_read
               ? json_object_new_double((double)bytes /
                                        ((double)h->seconds_read / h->seconds))
               : NULL;
}

static const struct nj_manifest *last_committed(const struct nj_catalog *c,
                                                const char *uuid)
{
    for (size_t i = nj_catalog_count(c); i-- > 0;) {
        const struct nj_manifest *m = nj_catalog_get(c, i);
        if (!strcmp(m->domain_uuid, uuid) && m->level != NJ_LEVEL_COPY)
            return m;
    }
    return NULL;
}

/* The changed bytes per disk of checkpoint name; NULL when unavailable. */
static struct nj_checkpoint_info *sizes(virDomainPtr dom, const char *name)
{
    virDomainCheckpointPtr cp = virDomainCheckpointLookupByName(dom, name, 0);
    if (!cp) {
        nj_virt_error("checkpoint '%s'", name);
        return NULL;
    }
    char *xml = virDomainCheckpointGetXMLDesc(
        cp, VIR_DOMAIN_CHECKPOINT_XML_SIZE | VIR_DOMAIN_CHECKPOINT_XML_NO_DOMAIN);
    virDomainCheckpointFree(cp);
    if (!xml) {
        nj_virt_error("size of checkpoint '%s'", name);
        return NULL;
    }
    struct nj_checkpoint_info *ci = nj_checkpoint_info_parse(xml);
    free(xml);
    return ci;
}

static struct json_object *estimate_domain(virDomainPtr dom,
                                           const struct nj_catalog *c,
                                           bool *failed)
{
    struct json_object *o = json_object_new_object();
    NJ_CLEANUP_FREE char *xml = nj_virt_domain_xml(dom);
    struct nj_domain_info *info = xml ? nj_domain_info_parse(xml) : NULL;
    if (!info) {
        json_object_object_add(o, "domain", json_object_new_string(virDomainGetName(dom)));
        json_object_object_add(o, "error", json_object_new_string(nj_error_get()));
        *failed = true;
        return o;
    }
    struct history full = { 0 }, inc = { 0 };
    learn(c, info->uuid, &full, &inc);
    const struct nj_manifest *base = last_committed(c, info->uuid);
    bool active = virDomainIsActive(dom) == 1;
    struct nj_checkpoint_info *ci = NULL;
    const char *note = NULL;
    if (base && base->checkpoint_name) {
        if (!active)
            note = "domain is shut off: changed bytes are unknown until it runs";
        else if (!(ci = sizes(dom, base->checkpoint_name)))
            note = nj_error_get();
    }
    json_object_object_add(o, "domain", json_object_new_string(info->name));
    json_object_object_add(o, "uuid", json_object_new_string(info->uuid));
    json_object_object_add(o, "base", base ? json_object_new_string(base->id) : NULL);
    if (note)
        json_object_object_add(o, "note", json_object_new_string(note));
    struct json_object *disks = json_object_new_array();
    uint64_t tot_bytes = 0, tot_stored = 0;
    double tot_secs = 0;
    bool have_stored = true, have_secs = true;
    for (size_t i = 0; i < info->ndisks; i++) {
        const struct nj_domain_disk *dd = &info->disks[i];
        if (dd->kind == NJ_DISK_SKIP)
            continue;
        virDomainBlockInfo bi = { 0 };
        bool have_bi = true;
        if (virDomainGetBlockInfo(dom, dd->target, &bi, 0) < 0) {
            virResetLastError();
            have_bi = false;
        }
        const struct nj_manifest_disk *pd = base ? nj_manifest_disk(base, dd->target) : NULL;
        long long changed = -1;
        for (size_t k = 0; ci && k < ci->ndisks; k++)
            if (!strcmp(ci->disks[k].target, dd->target) && ci->disks[k].bitmap)
                changed = ci->disks[k].size;
        bool is_inc = dd->kind == NJ_DISK_QCOW2 && pd && have_bi &&
                      pd->size == bi.capacity && changed >= 0;
        bool unknown = dd->kind == NJ_DISK_QCOW2 && pd && !ci && base &&
                       base->checkpoint_name;
        uint64_t bytes = is_inc ? (uint64_t)changed : bi.allocation;
        struct json_object *jd = json_object_new_object();
        json_object_object_add(jd, "target", json_object_new_string(dd->target));
        json_object_object_add(jd, "level", json_object_new_string(is_inc ? "inc" : "full"));
        json_object_object_add(jd, "size", have_bi ? json_object_new_uint64(bi.capacity) : NULL);
        if (unknown) {
            json_object_object_add(jd, "bytes", NULL);
            json_object_array_add(disks, jd);
            have_stored = have_secs = false;
            continue;
        }
        json_object_object_add(jd, "bytes", json_object_new_uint64(bytes));
        struct json_object *ps = projection(is_inc ? &inc : &full, bytes, "stored");
        struct json_object *pt = projection(is_inc ? &inc : &full, bytes, "seconds");
        if (ps)
            tot_stored += json_object_get_uint64(ps);
        else
            have_stored = false;
        if (pt)
            tot_secs += json_object_get_double(pt);
        else
            have_secs = false;
        json_object_object_add(jd, "projected_stored", ps);
        json_object_object_add(jd, "projected_seconds", pt);
        json_object_array_add(disks, jd);
        tot_bytes += bytes;
    }
    json_object_object_add(o, "disks", disks);
    json_object_object_add(o, "bytes", json_object_new_uint64(tot_bytes));
    json_object_object_add(o, "projected_stored", have_stored ? json_object_new_uint64(tot_stored) : NULL);
    json_object_object_add(o, "projected_seconds", have_secs ? json_object_new_double(tot_secs) : NULL);
    nj_checkpoint_info_free(ci);
    nj_domain_info_free(info);
    return o;
}

static void print_human(struct json_object *o)
{
    struct json_object *v = NULL;
    if (json_object_object_get_ex(o, "error", &v)) {
        printf("%s: %s\n", json_object_get_string(json_object_object_get(o, "domain")),
               json_object_get_string(v));
        return;
    }
    printf("%s (base %s)\n", json_object_get_string(json_object_object_get(o, "domain")),
           json_object_object_get(o, "base")
               ? json_object_get_string(json_object_object_get(o, "base"))
               : "none: a full is due");
    if (json_object_object_get_ex(o, "note", &v))
        printf("  note: %s\n", json_object_get_string(v));
    struct json_object *disks = json_object_object_get(o, "disks");
    for (size_t i = 0; i < json_object_array_length(disks); i++) {
        struct json_object *d = json_object_array_get_idx(disks, i);
        struct json_object *b = json_object_object_get(d, "bytes");
        struct json_object *ps = json_object_object_get(d, "projected_stored");
        struct json_object *pt = json_object_object_get(d, "projected_seconds");
        char x[32], y[32];
        printf("  %-8s %-4s %12s to read", json_object_get_string(json_object_object_get(d, "target")),
               json_object_get_string(json_object_object_get(d, "level")),
               b ? nj_human_bytes(json_object_get_uint64(b), x, sizeof x) : "unknown");
        if (ps)
            printf(", ~%s stored", nj_human_bytes(json_object_get_uint64(ps), y, sizeof y));
        if (pt)
            printf(", ~%.0f s", json_object_get_double(pt));
        printf("\n");
    }
}

int nj_agent_estimate(const char *uri, const char *store_path,
                      const char *domain, bool all, bool json)
{
    nj_virt_init();
    virConnectPtr conn = nj_virt_connect(uri);
    if (!conn)
        return -1;
    struct nj_store *s = nj_store_open(store_path, 0);
    struct nj_catalog *c = s ? nj_catalog_open(s) : NULL;
    int ret = -1;
    bool failed = false;
    if (c) {
        struct json_object *arr = json_object_new_array();
        if (all) {
            virDomainPtr *doms = NULL;
            int n = virConnectListAllDomains(conn, &doms, 0);
            if (n < 0)
                nj_virt_error("list domains");
            for (int i = 0; i < n; i++) {
                json_object_array_add(arr, estimate_domain(doms[i], c, &failed));
                virDomainFree(doms[i]);
            }
            free(doms);
            ret = n < 0 ? -1 : 0;
        } else {
            virDomainPtr dom = nj_virt_domain(conn, domain);
            if (dom) {
                json_object_array_add(arr, estimate_domain(dom, c, &failed));
                virDomainFree(dom);
                ret = 0;
            }
        }
        if (ret == 0) {
            if (json)
                printf("%s\n", json_object_to_json_string_ext(
                                   all ? arr : json_object_array_get_idx(arr, 0),
                                   JSON_C_TO_STRING_PRETTY |
                                       JSON_C_TO_STRING_NOSLASHESCAPE));
            else
                for (size_t i = 0; i < json_object_array_length(arr); i++)
                    print_human(json_object_array_get_idx(arr, i));
            if (failed && !all) {
                ret = nj_error("%s", json_object_get_string(json_object_object_get(
                                         json_object_array_get_idx(arr, 0), "error")));
            }
        }
        json_object_put(arr);
    }
    nj_catalog_free(c);
    nj_store_close(s);
    virConnectClose(conn);
    return ret;
}
