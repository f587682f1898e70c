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
 *
 * The format of an image file is never guessed from its content: a raw
 * guest disk holds whatever the guest wrote, and a guest that writes a
 * qcow2 header naming a host file as its backing file would otherwise
 * have that host file backed up (and restored) as its disk.  The format
 * is --format, else qcow2 for a name ending in ".qcow2", else raw, and
 * qemu-nbd always gets it explicitly.  Without --format, a file taken as
 * raw whose first bytes are the magic of an image format (qcow2, QED,
 * VMDK, VHDX, VHD, VDI, LUKS, ...) is refused: the user says which it
 * is.  A qcow2 image may have a backing chain (the user named the image,
 * the chain is theirs), but every member must record its backing file's
 * format, raw or qcow2, so that qemu never probes one, and no member may
 * use an external data file.
 */
#include "nj-agent.h"
#include "nj-nbd.h"
#include "nj-util.h"

#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

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

void nj_agent_print_result(struct nj_store *s, const struct nj_manifest *m,
                           bool json, const double *seconds)
{
    if (!json) {
        for (size_t i = 0; i < m->ndisks; i++) {
            const struct nj_manifest_disk *d = &m->disks[i];
            char r[32], st[32], z[64] = "";
            const struct nj_disk_compression *c = &d->compression;
            if (c->level_min && c->level_min != c->level_max) {
                /* the level that compressed the most bytes */
                int best = 0;
                for (int k = 1; k < NJ_ZSTD_NLEVELS; k++)
                    if (c->bytes[k] > c->bytes[best])
                        best = k;
                if (c->bytes[best])
                    snprintf(z, sizeof z, ", zstd %d..%d (mostly %d)",
                             c->level_min, c->level_max,
                             best + NJ_ZSTD_LEVEL_MIN);
            } else if (c->level_min) {
                snprintf(z, sizeof z, ", zstd %d", c->level_min);
            }
            printf("%s %s %s disk '%s' (%s): read %s, stored %s%s\n", m->id,
                   nj_level_name(m->level), m->domain_name, d->target,
                   d->full ? "full" : "inc",
                   nj_human_bytes(d->stats.bytes_read, r, sizeof r),
                   nj_human_bytes(d->stats.bytes_stored, st, sizeof st), z);
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
        NJ_CLEANUP_FREE char *comp = nj_manifest_compression_json(&d->compression);
        if (comp)
            json_object_object_add(jd, "compression", json_tokener_parse(comp));
        if (seconds)
            json_object_object_add(jd, "seconds", json_object_new_double(seconds[i]));
        json_object_array_add(disks, jd);
    }
    json_object_object_add(o, "disks", disks);
    struct nj_store_transfer t;
    if (s && nj_store_transfer_stats(s, &t)) {
        /* Requests to the object store so far, this backup's included. */
        struct json_object *jt = json_object_new_object();
        json_object_object_add(jt, "requests", json_object_new_uint64(t.requests));
        json_object_object_add(jt, "retries", json_object_new_uint64(t.retries));
        json_object_object_add(jt, "bytes_sent", json_object_new_uint64(t.bytes_sent));
        json_object_object_add(jt, "bytes_received", json_object_new_uint64(t.bytes_received));
        json_object_object_add(o, "transfer", jt);
    }
    printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY |
                                                         JSON_C_TO_STRING_NOSLASHESCAPE));
    json_object_put(o);
}

/* ---- image files: the format, without probing ---- */

/* The magic numbers qemu's probes look for at the start of a file. */
static const struct {
    const char *name;
    size_t off, len;
    const char *magic;
} image_magic[] = {
    { "qcow2", 0, 4, "QFI\xfb" },  /* qcow and qcow2 */
    { "qed", 0, 4, "QED\0" },
    { "vmdk", 0, 4, "KDMV" },
    { "vmdk", 0, 4, "COWD" },
    { "vmdk", 0, 21, "# Disk DescriptorFile" },
    { "vhdx", 0, 8, "vhdxfile" },
    { "vpc", 0, 8, "conectix" },
    { "vdi", 0x40, 4, "\x7f\x10\xda\xbe" },
    { "luks", 0, 6, "LUKS\xba\xbe" },
    { "parallels", 0, 16, "WithoutFreeSpace" },
    { "parallels", 0, 16, "WithouFreSpacExt" },
    { "bochs", 0, 22, "Bochs Virtual HD Image" },
    { "cloop", 0, 37, "#!/bin/sh\n#V2.0 Format\nmodprobe cloop" },
};

/* The first image format whose magic buf[0, len) holds, or NULL. */
static const char *magic_format(const unsigned char *buf, size_t len)
{
    for (size_t i = 0; i < NJ_ARRAY_SIZE(image_magic); i++)
        if (image_magic[i].off + image_magic[i].len <= len &&
            memcmp(buf + image_magic[i].off, image_magic[i].magic,
                   image_magic[i].len) == 0)
            return image_magic[i].name;
    return NULL;
}

static uint32_t get_be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 |
           p[3];
}

static uint64_t get_be64(const unsigned char *p)
{
    return (uint64_t)get_be32(p) << 32 | get_be32(p + 4);
}

/* Open an image file for reading its header: not blocking on a FIFO, a
 * regular file or a block device.  Returns the fd or -1. */
static int image_open(const char *path)
{
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return nj_error_errno(errno, "open '%s'", path);
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int e = errno;
        close(fd);
        return nj_error_errno(e, "stat '%s'", path);
    }
    if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
        close(fd);
        return nj_error("'%s' is not a regular file or a block device", path);
    }
    return fd;
}

/* Read up to len bytes from the start of fd; the count, or -1. */
static ssize_t read_head(int fd, const char *path, unsigned char *buf,
                         size_t len)
{
    size_t n = 0;
    while (n < len) {
        ssize_t r = pread(fd, buf + n, len - n, (off_t)n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return nj_error_errno(errno, "read '%s'", path);
        if (r == 0)
            break;
        n += (size_t)r;
    }
    return (ssize_t)n;
}

#define QCOW2_EXT_BACKING_FORMAT 0xe2792acau
#define QCOW2_EXT_DATA_FILE 0x44415441u
#define QCOW2_INCOMPAT_DATA_FILE (1u << 2)
#define QCOW2_CHAIN_MAX 16

/*
 * Check the qcow2 image at path and, through the formats it records, its
 * backing chain: every member is a qcow2 image (raw ends the chain) that
 * records its backing file's format, none uses an external data file.
 */
static int check_qcow2_chain(const char *path, int depth)
{
    if (depth >= QCOW2_CHAIN_MAX)
        return nj_error("image '%s': backing chain longer than %d images",
                        path, QCOW2_CHAIN_MAX);
    NJ_CLEANUP_CLOSE int fd = image_open(path);
    if (fd < 0)
        return -1;
    /* qemu writes the header, its extensions and the backing file name
     * at the start of the first cluster: the first 64 KiB hold them, and
     * a backing file name found beyond is refused (fail closed) */
    enum { HEAD = 65536 };
    NJ_CLEANUP_FREE unsigned char *h = nj_malloc(HEAD);
    ssize_t n = read_head(fd, path, h, HEAD);
    if (n < 0)
        return -1;
    size_t len = (size_t)n;
    if (len < 72 || memcmp(h, "QFI\xfb", 4) != 0)
        return nj_error("'%s' has no qcow2 header: pass --format raw if it "
                        "is a raw image", path);
    uint32_t version = get_be32(h + 4);
    if (version != 2 && version != 3)
        return nj_error("image '%s' is qcow version %u: only qcow2 (versions "
                        "2 and 3) can be imported", path, version);
    uint64_t boff = get_be64(h + 8);
    uint32_t blen = get_be32(h + 16);
    size_t hdr = 72;
    if (version == 3) {
        if (len < 104)
            return nj_error("image '%s': truncated qcow2 header", path);
        if (get_be64(h + 72) & QCOW2_INCOMPAT_DATA_FILE)
            return nj_error("image '%s' keeps its data in an external data "
                            "file: not supported by import", path);
        hdr = get_be32(h + 100);
        if (hdr < 104 || hdr > len)
            return nj_error("image '%s': bad qcow2 header length %zu", path,
                            hdr);
    }
    /* header extensions: type, length, data padded to 8 bytes, up to an
     * end marker or the backing file name (where qemu stops too) */
    NJ_CLEANUP_FREE char *bfmt = NULL;
    size_t end = boff != 0 && boff < len ? (size_t)boff : len;
    for (size_t off = hdr; off + 8 <= end;) {
        uint32_t type = get_be32(h + off), elen = get_be32(h + off + 4);
        off += 8;
        if (type == 0)
            break;
        if (elen > end - off)
            return nj_error("image '%s': bad qcow2 header extension", path);
        if (type == QCOW2_EXT_DATA_FILE)
            return nj_error("image '%s' names an external data file: not "
                            "supported by import", path);
        if (type == QCOW2_EXT_BACKING_FORMAT) {
            free(bfmt);
            bfmt = nj_malloc(elen + 1);
            memcpy(bfmt, h + off, elen);
            bfmt[elen] = '\0';
        }
        off += ((size_t)elen + 7) & ~(size_t)7;
    }
    if (boff == 0)
        return 0;
    if (blen == 0 || blen > 1023 || boff > len || blen > len - boff)
        return nj_error("image '%s': bad backing file name in its qcow2 "
                        "header", path);
    NJ_CLEANUP_FREE char *backing = nj_malloc(blen + 1);
    memcpy(backing, h + boff, blen);
    backing[blen] = '\0';
    if (strlen(backing) != blen)
        return nj_error("image '%s': bad backing file name in its qcow2 "
                        "header", path);
    if (!bfmt || !*bfmt)
        return nj_error("image '%s' has backing file '%s' but does not record "
                        "its format (qemu would guess it from the content): "
                        "record it with qemu-img rebase -u -F raw|qcow2 -b "
                        "'%s', or import a flattened copy", path, backing,
                        backing);
    if (strcmp(bfmt, "raw") != 0 && strcmp(bfmt, "qcow2") != 0)
        return nj_error("image '%s' has backing file '%s' of format '%s': "
                        "only raw and qcow2 backing files can be imported",
                        path, backing, bfmt);
    /* a protocol ("nbd://", "ssh:", ...) or a json: name is no file */
    if (strncmp(backing, "json:", 5) == 0 ||
        (strchr(backing, ':') && backing[0] != '/' &&
         strcspn(backing, ":") < strcspn(backing, "/")))
        return nj_error("image '%s' has backing file '%s': only files can be "
                        "imported", path, backing);
    if (strcmp(bfmt, "raw") == 0)
        return 0;
    /* qemu resolves a relative name against the image's directory */
    NJ_CLEANUP_FREE char *next = NULL;
    const char *slash = strrchr(path, '/');
    if (backing[0] == '/' || !slash)
        next = nj_strdup(backing);
    else
        next = nj_asprintf("%.*s/%s", (int)(slash - path), path, backing);
    return check_qcow2_chain(next, depth + 1);
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/*
 * The format to serve the image file path with: format when the user
 * gave it, else by the name, refusing a file taken as raw whose content
 * looks like an image format.  Returns a new string or NULL.
 */
static char *import_file_format(const char *path, const char *format)
{
    const char *fmt = format ? format
                      : ends_with(path, ".qcow2") ? "qcow2" : "raw";
    if (strcmp(fmt, "qcow2") == 0) {
        if (check_qcow2_chain(path, 0) < 0)
            return NULL;
        return nj_strdup(fmt);
    }
    NJ_CLEANUP_CLOSE int fd = image_open(path);
    if (fd < 0)
        return NULL;
    if (!format) {
        unsigned char h[512];
        ssize_t n = read_head(fd, path, h, sizeof h);
        if (n < 0)
            return NULL;
        const char *looks = magic_format(h, (size_t)n);
        if (looks) {
            nj_error("'%s' is taken as a raw image (its name does not end in "
                     ".qcow2) but starts like a %s image: pass --format raw "
                     "to back up its bytes as they are%s", path, looks,
                     strcmp(looks, "qcow2") == 0
                         ? ", or --format qcow2 if it is a qcow2 image"
                         : "");
            return NULL;
        }
    }
    return nj_strdup("raw");
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
        if (inc &&
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
    /* the source's format first: a refused source creates no store */
    if (is_uri(a->source)) {
        if (a->format && strcmp(a->format, "raw") != 0)
            return nj_error("an NBD export is read as raw: --format %s "
                            "applies to image files only", a->format);
    } else {
        st->format = import_file_format(a->source, a->format);
        if (!st->format)
            return -1;
        if (a->level == NJ_LEVEL_INC && strcmp(st->format, "qcow2") != 0)
            return nj_error("image '%s' is %s: persistent bitmaps need qcow2",
                            a->source, st->format);
    }
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
    nj_agent_print_result(st->store, nj_backup_manifest(st->backup), a->json,
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
