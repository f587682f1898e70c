/*
 * nj-xml.c: libvirt's backup, checkpoint and domain XML, built and read
 * with libxml2.
 *
 * Building: a tree is made with xmlNewNode/xmlNewProp/xmlNewTextChild
 * (which escape on output) and serialised once, indented, in UTF-8.  User
 * text is checked before it goes in: it must be valid UTF-8 made of XML
 * 1.0 characters, because libxml2 would otherwise write character
 * references that no parser reads back.  Checkpoint names are held to the
 * pattern of libvirt's schema so that a bad name fails here, with a clear
 * message, rather than inside virDomainBackupBegin.
 *
 * Parsing: one parser context per document, no network, no DTD (libvirt
 * never writes one; refusing it rules out entity tricks), errors taken
 * from the context and translated into the nightjar error at once.
 * Elements are found with XPath from the document root downwards, child
 * by child, so that a <domain> embedded in a checkpoint or the
 * <backingStore> of a disk is never mistaken for the thing looked for.
 *
 * libxml2 returning NULL while building means it ran out of memory; like
 * nj_malloc, that aborts.
 */
#include "nj-xml.h"
#include "nj-util.h"

#include <libxml/parser.h>
#include <libxml/tree.h>
#include <libxml/xmlerror.h>
#include <libxml/xpath.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

/* ---- libxml2 plumbing ---- */

static pthread_once_t xml_once = PTHREAD_ONCE_INIT;

static void xml_init_once(void)
{
    xmlInitParser();
}

static void xml_init(void)
{
    pthread_once(&xml_once, xml_init_once);
}

static void xml_docp_free(xmlDocPtr *p)
{
    xmlFreeDoc(*p);
}
static void xml_ctxtp_free(xmlXPathContextPtr *p)
{
    xmlXPathFreeContext(*p);
}
static void xml_objp_free(xmlXPathObjectPtr *p)
{
    xmlXPathFreeObject(*p);
}
#define CLEANUP_DOC __attribute__((cleanup(xml_docp_free)))
#define CLEANUP_XPCTX __attribute__((cleanup(xml_ctxtp_free)))
#define CLEANUP_XPOBJ __attribute__((cleanup(xml_objp_free)))

static _Noreturn void xml_oom(void)
{
    fputs("nightjar: out of memory in libxml2\n", stderr);
    abort();
}

static const xmlChar *X(const char *s)
{
    return (const xmlChar *)s;
}

/* ---- building ---- */

/*
 * Is s valid UTF-8 made only of XML 1.0 characters (#x9 | #xA | #xD |
 * [#x20-#xD7FF] | [#xE000-#xFFFD] | [#x10000-#x10FFFF])?  Overlong forms
 * and surrogates are refused.
 */
static bool xml_text_ok(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        unsigned c = *p;
        int n;
        unsigned min;
        if (c < 0x80) {
            n = 0;
            min = 0;
        } else if ((c & 0xe0) == 0xc0) {
            n = 1;
            c &= 0x1f;
            min = 0x80;
        } else if ((c & 0xf0) == 0xe0) {
            n = 2;
            c &= 0x0f;
            min = 0x800;
        } else if ((c & 0xf8) == 0xf0) {
            n = 3;
            c &= 0x07;
            min = 0x10000;
        } else {
            return false;
        }
        p++;
        for (int i = 0; i < n; i++, p++) {
            if ((*p & 0xc0) != 0x80)
                return false;
            c = (c << 6) | (*p & 0x3f);
        }
        if (c < min || c > 0x10ffff)
            return false;
        if (c < 0x20 && c != 0x9 && c != 0xa && c != 0xd)
            return false;
        if ((c >= 0xd800 && c <= 0xdfff) || c == 0xfffe || c == 0xffff)
            return false;
    }
    return true;
}

static int check_text(const char *what, const char *s)
{
    if (!xml_text_ok(s))
        return nj_error("%s is not valid UTF-8 text for XML "
                        "(or holds control characters)", what);
    return 0;
}

/* libvirt's checkpointName: [a-zA-Z0-9_\-][a-zA-Z0-9_\-.]* */
static int check_checkpoint_name(const char *what, const char *name)
{
    if (check_text(what, name) < 0)
        return -1;
    bool ok = *name != '\0' && *name != '.';
    for (const char *p = name; ok && *p; p++)
        ok = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
             (*p >= '0' && *p <= '9') || *p == '_' || *p == '-' || *p == '.';
    if (!ok)
        return nj_error("%s '%s' is not a valid libvirt checkpoint name: "
                        "use letters, digits, '_', '-' and '.' (not first)",
                        what, name);
    return 0;
}

static int check_abs_path(const char *what, const char *path)
{
    if (!path || path[0] != '/')
        return nj_error("%s '%s' is not an absolute path", what,
                        path ? path : "");
    return check_text(what, path);
}

static xmlNodePtr new_root(xmlDocPtr doc, const char *name)
{
    xmlNodePtr n = xmlNewDocNode(doc, NULL, X(name), NULL);
    if (!n)
        xml_oom();
    xmlDocSetRootElement(doc, n);
    return n;
}

/* A child element; text (escaped) may be NULL. */
static xmlNodePtr add_child(xmlNodePtr parent, const char *name,
                            const char *text)
{
    xmlNodePtr n = xmlNewTextChild(parent, NULL, X(name), text ? X(text) : NULL);
    if (!n)
        xml_oom();
    return n;
}

static void add_prop(xmlNodePtr node, const char *name, const char *value)
{
    if (!xmlNewProp(node, X(name), X(value)))
        xml_oom();
}

static xmlDocPtr new_doc(void)
{
    xml_init();
    xmlDocPtr doc = xmlNewDoc(X("1.0"));
    if (!doc)
        xml_oom();
    return doc;
}

static char *doc_dump(xmlDocPtr doc)
{
    xmlChar *mem = NULL;
    int len = 0;
    xmlDocDumpFormatMemoryEnc(doc, &mem, &len, "UTF-8", 1);
    if (!mem)
        xml_oom();
    char *s = nj_strdup((const char *)mem);
    xmlFree(mem);
    return s;
}

char *nj_xml_backup(const char *incremental, const char *socket,
                    const struct nj_backup_disk_spec *disks, size_t ndisks)
{
    if (incremental && check_checkpoint_name("incremental checkpoint",
                                             incremental) < 0)
        return NULL;
    if (check_abs_path("backup socket", socket) < 0)
        return NULL;
    for (size_t i = 0; i < ndisks; i++) {
        const struct nj_backup_disk_spec *d = &disks[i];
        if (!d->target || !*d->target)
            return nj_error("backup disk %zu has no target", i), NULL;
        if (check_text("backup disk target", d->target) < 0)
            return NULL;
        for (size_t j = 0; j < i; j++)
            if (strcmp(disks[j].target, d->target) == 0)
                return nj_error("backup disk '%s' is listed twice",
                                d->target), NULL;
        if (d->backup && d->scratch &&
            check_abs_path("scratch file", d->scratch) < 0)
            return nj_error_prefix("backup disk '%s'", d->target), NULL;
    }

    CLEANUP_DOC xmlDocPtr doc = new_doc();
    xmlNodePtr root = new_root(doc, "domainbackup");
    add_prop(root, "mode", "pull");
    if (incremental)
        add_child(root, "incremental", incremental);
    xmlNodePtr server = add_child(root, "server", NULL);
    add_prop(server, "transport", "unix");
    add_prop(server, "socket", socket);
    if (ndisks > 0) {
        xmlNodePtr list = add_child(root, "disks", NULL);
        for (size_t i = 0; i < ndisks; i++) {
            const struct nj_backup_disk_spec *d = &disks[i];
            xmlNodePtr n = add_child(list, "disk", NULL);
            add_prop(n, "name", d->target);
            if (!d->backup) {
                add_prop(n, "backup", "no");
                continue;
            }
            add_prop(n, "backup", "yes");
            add_prop(n, "type", "file");
            if (d->full)
                add_prop(n, "backupmode", "full");
            if (d->scratch) {
                xmlNodePtr sc = add_child(n, "scratch", NULL);
                add_prop(sc, "file", d->scratch);
            }
        }
    }
    return doc_dump(doc);
}

char *nj_xml_checkpoint(const char *name, const char *description,
                        const struct nj_checkpoint_disk_spec *disks,
                        size_t ndisks)
{
    if (name && check_checkpoint_name("checkpoint name", name) < 0)
        return NULL;
    if (description && check_text("checkpoint description", description) < 0)
        return NULL;
    for (size_t i = 0; i < ndisks; i++) {
        const char *t = disks[i].target;
        if (!t || !*t)
            return nj_error("checkpoint disk %zu has no target", i), NULL;
        if (check_text("checkpoint disk target", t) < 0)
            return NULL;
        for (size_t j = 0; j < i; j++)
            if (strcmp(disks[j].target, t) == 0)
                return nj_error("checkpoint disk '%s' is listed twice", t),
                       NULL;
    }

    CLEANUP_DOC xmlDocPtr doc = new_doc();
    xmlNodePtr root = new_root(doc, "domaincheckpoint");
    if (name)
        add_child(root, "name", name);
    if (description)
        add_child(root, "description", description);
    if (ndisks > 0) {
        xmlNodePtr list = add_child(root, "disks", NULL);
        for (size_t i = 0; i < ndisks; i++) {
            xmlNodePtr n = add_child(list, "disk", NULL);
            add_prop(n, "name", disks[i].target);
            add_prop(n, "checkpoint", disks[i].bitmap ? "bitmap" : "no");
        }
    }
    return doc_dump(doc);
}

/* ---- parsing ---- */

/*
 * Parse xml, whose root must be the element root; what names the document
 * in messages ("domain XML").  Returns the document or NULL.
 */
static xmlDocPtr parse_doc(const char *xml, const char *what,
                           const char *root)
{
    xml_init();
    if (!xml)
        return nj_error("%s: no document", what), NULL;
    size_t len = strlen(xml);
    if (len > INT_MAX)
        return nj_error("%s: document too large (%zu bytes)", what, len), NULL;

    xmlParserCtxtPtr pc = xmlNewParserCtxt();
    if (!pc)
        xml_oom();
    xmlDocPtr doc = xmlCtxtReadMemory(pc, xml, (int)len, NULL, NULL,
                                      XML_PARSE_NONET | XML_PARSE_NOERROR |
                                      XML_PARSE_NOWARNING);
    if (!doc) {
        xmlErrorPtr e = xmlCtxtGetLastError(pc);
        const char *msg = e && e->message ? e->message : "not well-formed";
        size_t mlen = strlen(msg);
        while (mlen > 0 && (msg[mlen - 1] == '\n' || msg[mlen - 1] == ' '))
            mlen--;
        nj_error("%s: line %d: %.*s", what, e ? e->line : 0, (int)mlen, msg);
        xmlFreeParserCtxt(pc);
        return NULL;
    }
    xmlFreeParserCtxt(pc);

    if (doc->intSubset || doc->extSubset) {
        xmlFreeDoc(doc);
        return nj_error("%s: a document type declaration is not allowed",
                        what), NULL;
    }
    xmlNodePtr r = xmlDocGetRootElement(doc);
    if (!r || !xmlStrEqual(r->name, X(root)) || r->ns) {
        nj_error("%s: root element is <%s>, expected <%s>", what,
                 r ? (const char *)r->name : "", root);
        xmlFreeDoc(doc);
        return NULL;
    }
    return doc;
}

static xmlXPathContextPtr new_xpath(xmlDocPtr doc)
{
    xmlXPathContextPtr ctx = xmlXPathNewContext(doc);
    if (!ctx)
        xml_oom();
    return ctx;
}

/* The node set matched by expr, evaluated at node (never NULL; the set
 * may be empty). */
static xmlXPathObjectPtr xp_eval(xmlXPathContextPtr ctx, xmlNodePtr node,
                                 const char *expr)
{
    ctx->node = node;
    xmlXPathObjectPtr o = xmlXPathEvalExpression(X(expr), ctx);
    if (!o || o->type != XPATH_NODESET) {
        /* The expressions are constants of this file. */
        fprintf(stderr, "nightjar: bad XPath expression '%s'\n", expr);
        abort();
    }
    return o;
}

static size_t xp_count(const xmlXPathObjectPtr o)
{
    return o->nodesetval ? (size_t)o->nodesetval->nodeNr : 0;
}

static xmlNodePtr xp_item(const xmlXPathObjectPtr o, size_t i)
{
    return o->nodesetval->nodeTab[i];
}

/* The first node matched by expr at node, or NULL. */
static xmlNodePtr xp_node(xmlXPathContextPtr ctx, xmlNodePtr node,
                          const char *expr)
{
    CLEANUP_XPOBJ xmlXPathObjectPtr o = xp_eval(ctx, node, expr);
    return xp_count(o) ? xp_item(o, 0) : NULL;
}

/* The text of the first node matched by expr at node (an element's text
 * or an attribute's value), as a new string; NULL when nothing matches. */
static char *xp_string(xmlXPathContextPtr ctx, xmlNodePtr node,
                       const char *expr)
{
    xmlNodePtr n = xp_node(ctx, node, expr);
    if (!n)
        return NULL;
    xmlChar *c = xmlNodeGetContent(n);
    if (!c)
        xml_oom();
    char *s = nj_strdup((const char *)c);
    xmlFree(c);
    return s;
}

/* A decimal count no larger than LLONG_MAX; -1 when s is NULL. */
static int parse_ll(const char *what, const char *s, long long *out)
{
    uint64_t v = 0;
    if (!s) {
        *out = -1;
        return 0;
    }
    if (nj_parse_u64(s, &v) < 0 || v > (uint64_t)LLONG_MAX)
        return nj_error("%s '%s' is not a number", what, s);
    *out = (long long)v;
    return 0;
}

/* ---- domain XML ---- */

static const struct {
    const char *format;
    const char *reason;
} other_formats[] = {
    {"vmdk", "format 'vmdk' is not supported"},
    {"vdi", "format 'vdi' is not supported"},
    {"vpc", "format 'vpc' is not supported"},
    {"vhd", "format 'vhd' is not supported"},
    {"vhdx", "format 'vhdx' is not supported"},
    {"qed", "format 'qed' is not supported"},
    {"qcow", "format 'qcow' is not supported"},
    {"cow", "format 'cow' is not supported"},
    {"luks", "format 'luks' is not supported"},
    {"iso", "format 'iso' is not supported"},
    {"dmg", "format 'dmg' is not supported"},
    {"bochs", "format 'bochs' is not supported"},
    {"cloop", "format 'cloop' is not supported"},
    {"parallels", "format 'parallels' is not supported"},
    {"ploop", "format 'ploop' is not supported"},
    {"fat", "format 'fat' is not supported"},
};

static const char *format_reason(const char *format)
{
    for (size_t i = 0; i < NJ_ARRAY_SIZE(other_formats); i++)
        if (strcmp(format, other_formats[i].format) == 0)
            return other_formats[i].reason;
    return "format is neither qcow2 nor raw";
}

static const char *type_reason(const char *type)
{
    if (strcmp(type, "network") == 0)
        return "network disk";
    if (strcmp(type, "volume") == 0)
        return "storage volume";
    if (strcmp(type, "dir") == 0)
        return "directory disk";
    if (strcmp(type, "nvme") == 0)
        return "nvme disk";
    if (strcmp(type, "vhostuser") == 0)
        return "vhost-user disk";
    return "unsupported disk type";
}

static const char *device_reason(const char *device)
{
    if (strcmp(device, "cdrom") == 0)
        return "cdrom";
    if (strcmp(device, "floppy") == 0)
        return "floppy";
    if (strcmp(device, "lun") == 0)
        return "lun";
    return "unsupported device";
}

static char *disk_source(xmlXPathContextPtr ctx, xmlNodePtr n,
                         const char *type)
{
    if (strcmp(type, "file") == 0)
        return xp_string(ctx, n, "source/@file");
    if (strcmp(type, "block") == 0)
        return xp_string(ctx, n, "source/@dev");
    if (strcmp(type, "network") == 0)
        return xp_string(ctx, n, "source/@name");
    if (strcmp(type, "dir") == 0)
        return xp_string(ctx, n, "source/@dir");
    if (strcmp(type, "vhostuser") == 0)
        return xp_string(ctx, n, "source/@path");
    if (strcmp(type, "volume") == 0) {
        NJ_CLEANUP_FREE char *pool = xp_string(ctx, n, "source/@pool");
        NJ_CLEANUP_FREE char *vol = xp_string(ctx, n, "source/@volume");
        if (!pool || !vol)
            return NULL;
        return nj_asprintf("%s/%s", pool, vol);
    }
    return NULL;
}

static void classify(struct nj_domain_disk *d, bool readonly, bool shareable,
                     bool transient)
{
    d->kind = NJ_DISK_SKIP;
    if (strcmp(d->device, "disk") != 0)
        d->skip_reason = device_reason(d->device);
    else if (strcmp(d->type, "file") != 0 && strcmp(d->type, "block") != 0)
        d->skip_reason = type_reason(d->type);
    else if (!d->source || !*d->source)
        d->skip_reason = "no source";
    else if (readonly)
        d->skip_reason = "read-only";
    else if (shareable)
        d->skip_reason = "shareable";
    else if (transient)
        d->skip_reason = "transient";
    else if (!d->format || strcmp(d->format, "raw") == 0)
        d->kind = NJ_DISK_RAW;
    else if (strcmp(d->format, "qcow2") == 0)
        d->kind = NJ_DISK_QCOW2;
    else
        d->skip_reason = format_reason(d->format);
    if (d->kind != NJ_DISK_SKIP)
        d->skip_reason = NULL;
}

static int parse_disk(xmlXPathContextPtr ctx, xmlNodePtr n, size_t index,
                      struct nj_domain_disk *d)
{
    d->target = xp_string(ctx, n, "target/@dev");
    if (!d->target || !*d->target)
        return nj_error("disk %zu has no target dev", index);
    d->device = xp_string(ctx, n, "@device");
    if (!d->device)
        d->device = nj_strdup("disk");
    d->type = xp_string(ctx, n, "@type");
    if (!d->type)
        d->type = nj_strdup("file");
    d->format = xp_string(ctx, n, "driver/@type");
    d->source = disk_source(ctx, n, d->type);
    if (strcmp(d->type, "network") == 0)
        d->protocol = xp_string(ctx, n, "source/@protocol");
    classify(d, xp_node(ctx, n, "readonly") != NULL,
             xp_node(ctx, n, "shareable") != NULL,
             xp_node(ctx, n, "transient") != NULL);
    return 0;
}

static void domain_info_freep(struct nj_domain_info **p)
{
    nj_domain_info_free(*p);
}

struct nj_domain_info *nj_domain_info_parse(const char *xml)
{
    CLEANUP_DOC xmlDocPtr doc = parse_doc(xml, "domain XML", "domain");
    if (!doc)
        return NULL;
    CLEANUP_XPCTX xmlXPathContextPtr ctx = new_xpath(doc);
    xmlNodePtr root = xmlDocGetRootElement(doc);

    __attribute__((cleanup(domain_info_freep))) struct nj_domain_info *d =
        nj_calloc(1, sizeof *d);
    d->name = xp_string(ctx, root, "name");
    if (!d->name || !*d->name)
        return nj_error("domain XML: no <name>"), NULL;
    d->uuid = xp_string(ctx, root, "uuid");
    if (!d->uuid || !*d->uuid)
        return nj_error("domain XML of '%s': no <uuid>", d->name), NULL;

    /* "+64055:+64055" (or "user:group" names, which we do not resolve). */
    d->qemu_uid = d->qemu_gid = -1;
    NJ_CLEANUP_FREE char *label =
        xp_string(ctx, root, "seclabel[@model='dac']/label");
    if (label) {
        long long u = -1, g = -1;
        char plus1 = 0, plus2 = 0;
        if (sscanf(label, "%c%lld:%c%lld", &plus1, &u, &plus2, &g) == 4 &&
            plus1 == '+' && plus2 == '+' && u >= 0 && g >= 0) {
            d->qemu_uid = u;
            d->qemu_gid = g;
        }
    }

    CLEANUP_XPOBJ xmlXPathObjectPtr disks = xp_eval(ctx, root, "devices/disk");
    size_t n = xp_count(disks);
    d->disks = nj_calloc(n, sizeof *d->disks);
    for (size_t i = 0; i < n; i++) {
        d->ndisks = i + 1;
        if (parse_disk(ctx, xp_item(disks, i), i, &d->disks[i]) < 0)
            return nj_error_prefix("domain XML of '%s'", d->name), NULL;
    }
    return NJ_STEAL(&d);
}

void nj_domain_info_free(struct nj_domain_info *d)
{
    if (!d)
        return;
    for (size_t i = 0; i < d->ndisks; i++) {
        struct nj_domain_disk *k = &d->disks[i];
        free(k->target);
        free(k->device);
        free(k->type);
        free(k->format);
        free(k->source);
        free(k->protocol);
    }
    free(d->disks);
    free(d->name);
    free(d->uuid);
    free(d);
}

/* ---- backup job XML ---- */

void nj_backup_exports_free(struct nj_backup_export *e, size_t n)
{
    if (!e)
        return;
    for (size_t i = 0; i < n; i++) {
        free(e[i].target);
        free(e[i].exportname);
        free(e[i].exportbitmap);
    }
    free(e);
}

/* Fill out[0..n) from the disk nodes with backup other than 'no'; *filled
 * counts the entries that hold allocations, for the caller's cleanup. */
static int parse_exports(xmlXPathContextPtr ctx, const xmlXPathObjectPtr disks,
                         struct nj_backup_export *out, size_t *filled)
{
    for (size_t i = 0; i < xp_count(disks); i++) {
        xmlNodePtr n = xp_item(disks, i);
        struct nj_backup_export *e = &out[*filled];
        (*filled)++;
        e->target = xp_string(ctx, n, "@name");
        if (!e->target || !*e->target)
            return nj_error("backup job XML: disk %zu has no name", i);
        e->exportname = xp_string(ctx, n, "@exportname");
        if (!e->exportname || !*e->exportname)
            return nj_error("backup job XML: disk '%s' has no exportname",
                            e->target);
        e->exportbitmap = xp_string(ctx, n, "@exportbitmap");
        if (e->exportbitmap && !*e->exportbitmap)
            return nj_error("backup job XML: disk '%s' has an empty "
                            "exportbitmap", e->target);
    }
    return 0;
}

int nj_xml_backup_exports(const char *xml, char **socket,
                          struct nj_backup_export **exports)
{
    *socket = NULL;
    *exports = NULL;
    CLEANUP_DOC xmlDocPtr doc = parse_doc(xml, "backup job XML",
                                          "domainbackup");
    if (!doc)
        return -1;
    CLEANUP_XPCTX xmlXPathContextPtr ctx = new_xpath(doc);
    xmlNodePtr root = xmlDocGetRootElement(doc);

    NJ_CLEANUP_FREE char *mode = xp_string(ctx, root, "@mode");
    if (!mode || strcmp(mode, "pull") != 0)
        return nj_error("backup job XML: mode is '%s', expected 'pull'",
                        mode ? mode : "push");
    NJ_CLEANUP_FREE char *transport =
        xp_string(ctx, root, "server/@transport");
    NJ_CLEANUP_FREE char *path = xp_string(ctx, root, "server/@socket");
    if (!transport || strcmp(transport, "unix") != 0 || !path || !*path)
        return nj_error("backup job XML: the NBD server is not on a unix "
                        "socket (transport '%s')",
                        transport ? transport : "tcp");

    CLEANUP_XPOBJ xmlXPathObjectPtr disks =
        xp_eval(ctx, root, "disks/disk[not(@backup='no')]");
    size_t n = xp_count(disks), filled = 0;
    struct nj_backup_export *e = nj_calloc(n, sizeof *e);
    if (parse_exports(ctx, disks, e, &filled) < 0) {
        nj_backup_exports_free(e, filled);
        return -1;
    }
    if (n > INT_MAX) {
        nj_backup_exports_free(e, filled);
        return nj_error("backup job XML: too many disks");
    }
    *socket = NJ_STEAL(&path);
    *exports = e;
    return (int)n;
}

/* ---- checkpoint XML ---- */

static void checkpoint_info_freep(struct nj_checkpoint_info **p)
{
    nj_checkpoint_info_free(*p);
}

static int parse_checkpoint_disk(xmlXPathContextPtr ctx, xmlNodePtr n,
                                 size_t index,
                                 struct nj_checkpoint_disk_info *k)
{
    k->target = xp_string(ctx, n, "@name");
    if (!k->target || !*k->target)
        return nj_error("disk %zu has no name", index);
    NJ_CLEANUP_FREE char *mode = xp_string(ctx, n, "@checkpoint");
    if (mode && strcmp(mode, "bitmap") != 0 && strcmp(mode, "no") != 0)
        return nj_error("disk '%s': unknown checkpoint mode '%s'", k->target,
                        mode);
    /* The schema's default is a bitmap. */
    k->bitmap = !mode || strcmp(mode, "bitmap") == 0;
    k->bitmap_name = xp_string(ctx, n, "@bitmap");
    NJ_CLEANUP_FREE char *size = xp_string(ctx, n, "@size");
    if (parse_ll("size", size, &k->size) < 0)
        return nj_error_prefix("disk '%s'", k->target);
    return 0;
}

struct nj_checkpoint_info *nj_checkpoint_info_parse(const char *xml)
{
    CLEANUP_DOC xmlDocPtr doc = parse_doc(xml, "checkpoint XML",
                                          "domaincheckpoint");
    if (!doc)
        return NULL;
    CLEANUP_XPCTX xmlXPathContextPtr ctx = new_xpath(doc);
    xmlNodePtr root = xmlDocGetRootElement(doc);

    __attribute__((cleanup(checkpoint_info_freep))) struct nj_checkpoint_info
        *c = nj_calloc(1, sizeof *c);
    c->name = xp_string(ctx, root, "name");
    if (!c->name || !*c->name)
        return nj_error("checkpoint XML: no <name>"), NULL;
    c->description = xp_string(ctx, root, "description");
    c->parent = xp_string(ctx, root, "parent/name");
    NJ_CLEANUP_FREE char *ctime = xp_string(ctx, root, "creationTime");
    if (parse_ll("creationTime", ctime, &c->creation_time) < 0)
        return nj_error_prefix("checkpoint '%s'", c->name), NULL;

    CLEANUP_XPOBJ xmlXPathObjectPtr disks = xp_eval(ctx, root, "disks/disk");
    size_t n = xp_count(disks);
    c->disks = nj_calloc(n, sizeof *c->disks);
    for (size_t i = 0; i < n; i++) {
        c->ndisks = i + 1;
        if (parse_checkpoint_disk(ctx, xp_item(disks, i), i, &c->disks[i]) < 0)
            return nj_error_prefix("checkpoint '%s'", c->name), NULL;
    }
    return NJ_STEAL(&c);
}

void nj_checkpoint_info_free(struct nj_checkpoint_info *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->ndisks; i++) {
        free(c->disks[i].target);
        free(c->disks[i].bitmap_name);
    }
    free(c->disks);
    free(c->name);
    free(c->description);
    free(c->parent);
    free(c);
}

char *nj_xml_checkpoint_reparent(const char *xml, const char *parent)
{
    CLEANUP_DOC xmlDocPtr doc = parse_doc(xml, "checkpoint XML",
                                          "domaincheckpoint");
    if (!doc)
        return NULL;
    if (parent && check_checkpoint_name("parent", parent) < 0)
        return NULL;
    xmlNodePtr root = xmlDocGetRootElement(doc);
    for (xmlNodePtr n = root->children, next = NULL; n; n = next) {
        next = n->next;
        if (n->type == XML_ELEMENT_NODE && xmlStrEqual(n->name, X("parent"))) {
            xmlUnlinkNode(n);
            xmlFreeNode(n);
        }
    }
    if (parent) {
        xmlNodePtr p = add_child(root, "parent", NULL);
        add_child(p, "name", parent);
    }
    return doc_dump(doc);
}
