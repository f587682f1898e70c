/*
 * nj-import.c: `nightjar-agent import`: back up a disk image file or an
 * NBD export with no libvirt involved.
 *
 * A file is served read-only by a qemu-nbd that we start on a socket in a
 * private directory and stop afterwards, whatever happens.  A full reads
 * base:allocation; an incremental also reads the persistent bitmap named
 * by --bitmap, which the user has kept since the parent backup (the store
 * cannot check that promise: it is the contract of --bitmap).  The parent
 * of an incremental is the newest committed backup of the same name that
 * has this disk at the same size.
 */
#include "nj-agent.h"
#include "nj-nbd.h"
#include "nj-util.h"

#include <json-c/json.h>
#include <stdio.h>
#include <string.h>

volatile int nj_agent_interrupted;

static void on_signal(int sig)
{
    nj_agent_interrupted = sig;
}

void nj_agent_install_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

char *nj_agent_name_uuid(const char *name)
{
    NJ_CLEANUP_FREE char *key = nj_asprintf("nightjar-import:%s", name);
    struct nj_digest d;
    nj_sha256(key, strlen(key), &d);
    unsigned char *b = d.b;
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x80); /* version 8: custom */
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    return nj_asprintf("%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-"
                       "%02x%02x%02x%02x%02x%02x",
                       b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8],
                       b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
}

static bool is_uri(const char *s)
{
    return strncmp(s, "nbd://", 6) == 0 || strncmp(s, "nbd+unix://", 11) == 0 ||
           strncmp(s, "nbds://", 7) == 0 || strncmp(s, "nbds+unix://", 12) == 0;
}

/* The newest non-copy backup of uuid that has target; NULL if none. */
static const struct nj_manifest *find_parent(const struct nj_catalog *c,
                                             const char *uuid,
                                             const char *target)
{
    for (size_t i = nj_catalog_count(c); i-- > 0;) {
        const struct nj_manifest *m = nj_catalog_get(c, i);
        if (strcmp(m->domain_uuid, uuid) == 0 && m->level != NJ_LEVEL_COPY &&
            nj_manifest_disk(m, target))
            return m;
    }
    return NULL;
}

void nj_agent_print_result(const struct nj_manifest *m, bool json,
                           const double *seconds)
{
    if (!json) {
        for (size_t i = 0; i < m->ndisks; i++) {
            const struct nj_manifest_disk *d = &m->disks[i];
            char r[32], st[32];
            printf("%s %s %s disk '%s' (%s): read %s, stored %s\n", m->id,
                   nj_level_name(m->level), m->domain_name, d->target,
                   d->full ? "full" : "inc",
                   nj_human_bytes(d->stats.bytes_read, r, sizeof r),
                   nj_human_bytes(d->stats.bytes_stored, st, sizeof st));
        }
        return;
    }
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "id", json_object_new_string(m->id));
    json_object_object_add(o, "level", json_object_new_string(nj_level_name(m->level)));
    json_object_object_add(o, "parent", m->parent ? json_object_new_string(m->parent) : NULL);
    json_object_object_add(o, "domain", json_object_new_string(m->domain_name));
    json_object_object_add(o, "uuid", json_object_new_string(m->domain_uuid));
    json_object_object_add(o, "checkpoint", m->checkpoint_name ? json_object_new_string(m->checkpoint_name) : NULL);
    json_object_object_add(o, "time", json_object_new_int64(m->finished));
    struct json_object *disks = json_object_new_array();
    for (size_t i = 0; i < m->ndisks; i++) {
        const struct nj_manifest_disk *d = &m->disks[i];
        struct json_object *jd = json_object_new_object();
        json_object_object_add(jd, "target", json_object_new_string(d->target));
        json_object_object_add(jd, "level", json_object_new_string(d->full ? "full" : "inc"));
        json_object_object_add(jd, "size", json_object_new_uint64(d->size));
        json_object_object_add(jd, "bytes_read", json_object_new_uint64(d->stats.bytes_read));
        json_object_object_add(jd, "bytes_zero", json_object_new_uint64(d->stats.bytes_zero));
        json_object_object_add(jd, "bytes_new", json_object_new_uint64(d->stats.bytes_new));
        json_object_object_add(jd, "bytes_stored", json_object_new_uint64(d->stats.bytes_stored));
        json_object_object_add(jd, "bytes_dedup", json_object_new_uint64(d->stats.bytes_dedup));
        json_object_object_add(jd, "chunks_new", json_object_new_uint64(d->stats.chunks_new));
        json_object_object_add(jd, "chunks_dedup", json_object_new_uint64(d->stats.chunks_dedup));
        if (seconds)
            json_object_object_add(jd, "seconds", json_object_new_double(seconds[i]));
        json_object_array_add(disks, jd);
    }
    json_object_object_add(o, "disks", disks);
    printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY |
                                                         JSON_C_TO_STRING_NOSLASHESCAPE));
    json_object_put(o);
}

struct import_state {
    struct nj_store *store;
    struct nj_qemu_nbd *qemu_nbd;
    struct nj_backup *backup;
    char *uuid, *parent, *format, *ctx;
};

static int import_find_parent(struct import_state *st,
                              const struct nj_import_args *a,
                              uint64_t *parent_size)
{
    struct nj_catalog *c = nj_catalog_open(st->store);
    if (!c)
        return -1;
    const struct nj_manifest *pm = find_parent(c, st->uuid, a->target);
    if (pm) {
        st->parent = nj_strdup(pm->id);
        *parent_size = nj_manifest_disk(pm, a->target)->size;
    }
    nj_catalog_free(c);
    if (!st->parent)
        return nj_error("no earlier backup of '%s' disk '%s' in store '%s': "
                        "import a full first", a->domain, a->target, a->store);
    return 0;
}

/* Serve or name the source. */
static int import_source(struct import_state *st,
                         const struct nj_import_args *a,
                         struct nj_nbd_source *src)
{
    bool inc = a->level == NJ_LEVEL_INC;
    if (is_uri(a->source)) {
        src->uri = a->source;
        st->format = nj_strdup("raw");
        if (inc)
            st->ctx = strncmp(a->bitmap, "qemu:", 5) == 0
                          ? nj_strdup(a->bitmap)
                          : nj_asprintf("qemu:dirty-bitmap:%s", a->bitmap);
    } else {
        st->format = nj_image_format(a->source);
        if (!st->format)
            return nj_error_prefix("import '%s'", a->source);
        if (inc && strcmp(st->format, "qcow2") == 0 &&
            nj_image_check_bitmap(a->source, a->bitmap) < 0)
            return -1;
        unsigned conns = a->dp.connections ? a->dp.connections : 4;
        st->qemu_nbd = nj_qemu_nbd_start(a->source, st->format,
                                         inc ? a->bitmap : NULL, conns + 1);
        if (!st->qemu_nbd)
            return -1;
        src->socket = st->qemu_nbd->socket;
        src->export_name = "";
        if (inc)
            st->ctx = nj_asprintf("qemu:dirty-bitmap:%s", a->bitmap);
    }
    src->bitmap_context = inc ? st->ctx : NULL;
    return 0;
}

static int import_run(struct import_state *st, const struct nj_import_args *a)
{
    if (a->level != NJ_LEVEL_FULL && a->level != NJ_LEVEL_INC)
        return nj_error("import does levels full and inc only");
    if (a->level == NJ_LEVEL_INC && !a->bitmap)
        return nj_error("an incremental import needs --bitmap NAME");
    st->uuid = nj_agent_name_uuid(a->domain);
    st->store = nj_store_open(a->store, NJ_STORE_CREATE);
    if (!st->store)
        return -1;
    uint64_t parent_size = 0;
    if (a->level == NJ_LEVEL_INC &&
        import_find_parent(st, a, &parent_size) < 0)
        return -1;
    struct nj_nbd_source src = { 0 };
    if (import_source(st, a, &src) < 0)
        return -1;
    if (a->level == NJ_LEVEL_INC) {
        uint64_t size = 0;
        if (nj_nbd_export_size(&src, &size) < 0)
            return -1;
        if (size != parent_size)
            return nj_error("disk '%s' is %llu bytes now, %llu in backup %s: "
                            "import a full", a->target,
                            (unsigned long long)size,
                            (unsigned long long)parent_size, st->parent);
    }
    struct nj_backup_params bp = {
        .domain_name = a->domain,
        .domain_uuid = st->uuid,
        .level = a->level,
        .parent = st->parent,
    };
    st->backup = nj_backup_begin(st->store, &bp);
    if (!st->backup)
        return -1;
    struct nj_datapath_opts dpo = a->dp;
    dpo.cancel = &nj_agent_interrupted;
    struct nj_datapath_result res = { 0 };
    if (nj_datapath_backup_disk(st->backup, a->target, st->format, &src, &dpo,
                                &res) < 0)
        return -1;
    if (nj_agent_interrupted)
        return nj_error("interrupted");
    if (nj_backup_commit(st->backup) < 0)
        return -1;
    nj_agent_print_result(nj_backup_manifest(st->backup), a->json,
                          &res.seconds);
    return 0;
}

int nj_agent_import(const struct nj_import_args *a)
{
    struct import_state st = { 0 };
    int ret = import_run(&st, a);
    nj_backup_free(st.backup); /* aborts when not committed */
    nj_qemu_nbd_stop(st.qemu_nbd);
    nj_store_close(st.store);
    free(st.uuid);
    free(st.parent);
    free(st.format);
    free(st.ctx);
    return ret;
}
