/*
 * nj-manifest.c: manifest <-> JSON with json-c, validating on the way in.
 *
 * Every value is checked before it is used: types, string lengths (a name
 * or target cannot be megabytes), integer ranges (json-c clamps integers
 * that do not fit 64 bits without saying so: see get_u64), and relations
 * (entries <= covered <= size, finished the second of finished_us).
 */
#include "nj-manifest.h"
#include "nj-store.h"
#include "nj-util.h"

#include <json-c/json.h>
#include <stdio.h>
#include <string.h>

static const char *const level_names[] = {
    [NJ_LEVEL_FULL] = "full",
    [NJ_LEVEL_INC] = "inc",
    [NJ_LEVEL_DIFF] = "diff",
    [NJ_LEVEL_COPY] = "copy",
};

const char *nj_level_name(enum nj_level l)
{
    return (unsigned)l < NJ_ARRAY_SIZE(level_names) ? level_names[l] : "?";
}

int nj_level_parse(const char *s, enum nj_level *out)
{
    for (size_t i = 0; i < NJ_ARRAY_SIZE(level_names); i++)
        if (strcmp(s, level_names[i]) == 0) {
            *out = (enum nj_level)i;
            return 0;
        }
    return -1;
}

void nj_manifest_free(struct nj_manifest *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->ndisks; i++) {
        free(m->disks[i].target);
        free(m->disks[i].format);
        free(m->disks[i].index);
    }
    free(m->disks);
    free(m->id);
    free(m->parent);
    free(m->domain_name);
    free(m->domain_uuid);
    free(m->domain_xml);
    free(m->checkpoint_name);
    free(m->checkpoint_xml);
    free(m);
}

const struct nj_manifest_disk *nj_manifest_disk(const struct nj_manifest *m,
                                                const char *target)
{
    for (size_t i = 0; i < m->ndisks; i++)
        if (strcmp(m->disks[i].target, target) == 0)
            return &m->disks[i];
    return NULL;
}

/* ---- writing ---- */

static struct json_object *str_or_null(const char *s)
{
    return s ? json_object_new_string(s) : NULL;
}

static struct json_object *u64(uint64_t v)
{
    return json_object_new_uint64(v);
}

/* "compression": {"policy": "auto"|"fixed", "level_min", "level_max",
 * "levels": [{"level", "chunks", "bytes", "stored"}...], "raw_chunks",
 * "raw_bytes"}, or nothing when not recorded (level_min == 0). */
static void add_compression(struct json_object *jd,
                            const struct nj_disk_compression *c)
{
    if (c->level_min == 0)
        return;
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "policy",
                           json_object_new_string(c->adaptive ? "auto" : "fixed"));
    json_object_object_add(o, "level_min", json_object_new_int(c->level_min));
    json_object_object_add(o, "level_max", json_object_new_int(c->level_max));
    struct json_object *lv = json_object_new_array();
    for (int i = 0; i < NJ_ZSTD_NLEVELS; i++) {
        if (!c->chunks[i])
            continue;
        struct json_object *e = json_object_new_object();
        json_object_object_add(e, "level", json_object_new_int(i + NJ_ZSTD_LEVEL_MIN));
        json_object_object_add(e, "chunks", u64(c->chunks[i]));
        json_object_object_add(e, "bytes", u64(c->bytes[i]));
        json_object_object_add(e, "stored", u64(c->stored[i]));
        json_object_array_add(lv, e);
    }
    json_object_object_add(o, "levels", lv);
    json_object_object_add(o, "raw_chunks", u64(c->raw_chunks));
    json_object_object_add(o, "raw_bytes", u64(c->raw_bytes));
    json_object_object_add(jd, "compression", o);
}

char *nj_manifest_compression_json(const struct nj_disk_compression *c)
{
    struct json_object *o = json_object_new_object();
    add_compression(o, c);
    struct json_object *v = NULL;
    char *text = json_object_object_get_ex(o, "compression", &v)
                     ? nj_strdup(json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN))
                     : NULL;
    json_object_put(o);
    return text;
}

char *nj_manifest_to_json(const struct nj_manifest *m)
{
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "format", json_object_new_string("nightjar-manifest"));
    json_object_object_add(o, "version", json_object_new_int(NJ_MANIFEST_VERSION));
    json_object_object_add(o, "id", json_object_new_string(m->id));
    json_object_object_add(o, "parent", str_or_null(m->parent));
    json_object_object_add(o, "level", json_object_new_string(nj_level_name(m->level)));
    struct json_object *dom = json_object_new_object();
    json_object_object_add(dom, "name", json_object_new_string(m->domain_name));
    json_object_object_add(dom, "uuid", json_object_new_string(m->domain_uuid));
    json_object_object_add(dom, "xml", str_or_null(m->domain_xml));
    json_object_object_add(o, "domain", dom);
    struct json_object *cp = NULL;
    if (m->checkpoint_name) {
        cp = json_object_new_object();
        json_object_object_add(cp, "name", json_object_new_string(m->checkpoint_name));
        json_object_object_add(cp, "xml", str_or_null(m->checkpoint_xml));
    }
    json_object_object_add(o, "checkpoint", cp);
    json_object_object_add(o, "started", json_object_new_int64(m->started));
    json_object_object_add(o, "finished", json_object_new_int64(m->finished));
    json_object_object_add(o, "finished_us", json_object_new_int64(m->finished_us));
    struct json_object *disks = json_object_new_array();
    for (size_t i = 0; i < m->ndisks; i++) {
        const struct nj_manifest_disk *d = &m->disks[i];
        struct json_object *jd = json_object_new_object();
        char hex[NJ_DIGEST_HEX_LEN + 1];
        nj_digest_to_hex(&d->index_digest, hex);
        json_object_object_add(jd, "target", json_object_new_string(d->target));
        json_object_object_add(jd, "format", json_object_new_string(d->format));
        json_object_object_add(jd, "size", u64(d->size));
        json_object_object_add(jd, "level", json_object_new_string(d->full ? "full" : "inc"));
        json_object_object_add(jd, "index", json_object_new_string(d->index));
        json_object_object_add(jd, "index_sha256", json_object_new_string(hex));
        json_object_object_add(jd, "entries", u64(d->entries));
        json_object_object_add(jd, "covered", u64(d->covered));
        struct json_object *st = json_object_new_object();
        json_object_object_add(st, "bytes_read", u64(d->stats.bytes_read));
        json_object_object_add(st, "bytes_zero", u64(d->stats.bytes_zero));
        json_object_object_add(st, "bytes_new", u64(d->stats.bytes_new));
        json_object_object_add(st, "bytes_stored", u64(d->stats.bytes_stored));
        json_object_object_add(st, "bytes_dedup", u64(d->stats.bytes_dedup));
        json_object_object_add(st, "chunks_new", u64(d->stats.chunks_new));
        json_object_object_add(st, "chunks_dedup", u64(d->stats.chunks_dedup));
        json_object_object_add(st, "usec", u64(d->stats.usec));
        json_object_object_add(jd, "stats", st);
        add_compression(jd, &d->compression);
        json_object_array_add(disks, jd);
    }
    json_object_object_add(o, "disks", disks);
    char *text = nj_asprintf("%s\n", json_object_to_json_string_ext(
                                         o, JSON_C_TO_STRING_PRETTY |
                                                JSON_C_TO_STRING_NOSLASHESCAPE));
    json_object_put(o);
    return text;
}

/* ---- parsing ---- */

/* After a strict parse failed: was it a whole object with something after
 * it (the lenient parser stops there), for a clearer message? */
static bool trailing_data(const char *text, size_t len)
{
    struct json_tokener *tok = json_tokener_new_ex(64);
    if (!tok)
        return false;
    struct json_object *o = json_tokener_parse_ex(tok, text, (int)len);
    bool whole = o && json_tokener_get_error(tok) == json_tokener_success &&
                 json_tokener_get_parse_end(tok) < len;
    json_object_put(o);
    json_tokener_free(tok);
    return whole;
}

static struct json_object *field(struct json_object *o, const char *key,
                                 json_type type, const char *ctx)
{
    struct json_object *v = NULL;
    if (!json_object_object_get_ex(o, key, &v)) {
        nj_error("manifest%s: missing field '%s'", ctx, key);
        return NULL;
    }
    if (!json_object_is_type(v, type)) {
        nj_error("manifest%s: field '%s' has the wrong type", ctx, key);
        return NULL;
    }
    return v;
}

/* A string of 1 to max bytes (0 to max when may_be_empty), or null when
 * nullable. */
static int get_str_len(struct json_object *o, const char *key, bool nullable,
                       bool may_be_empty, size_t max, char **out,
                       const char *ctx)
{
    struct json_object *v = NULL;
    if (!json_object_object_get_ex(o, key, &v))
        return nj_error("manifest%s: missing field '%s'", ctx, key);
    if (!v) {
        if (!nullable)
            return nj_error("manifest%s: field '%s' is null", ctx, key);
        *out = NULL;
        return 0;
    }
    if (!json_object_is_type(v, json_type_string))
        return nj_error("manifest%s: field '%s' is not a string", ctx, key);
    /* A \u0000 escape would silently cut the C string short. */
    const char *str = json_object_get_string(v);
    size_t len = strlen(str);
    if (len != (size_t)json_object_get_string_len(v))
        return nj_error("manifest%s: field '%s' contains a NUL character",
                        ctx, key);
    if (len > max || (len == 0 && !may_be_empty))
        return nj_error("manifest%s: field '%s' is %zu bytes long (1 to %zu "
                        "allowed)", ctx, key, len, max);
    *out = nj_strdup(str);
    return 0;
}

/* Store names, levels and the like are checked further by the caller;
 * texts (XML) are bounded by the manifest's size. */
#define STR_MAX_TEXT ((size_t)NJ_MANIFEST_MAX)
#define STR_MAX_NAME 4096 /* domain and checkpoint names */
#define STR_MAX_SHORT 256 /* targets, UUIDs, formats, levels, ids */

static int get_str(struct json_object *o, const char *key, bool nullable,
                   char **out, const char *ctx)
{
    /* Empty strings fail the caller's own checks, with their message. */
    return get_str_len(o, key, nullable, true, STR_MAX_SHORT, out, ctx);
}

/*
 * Integers.  json-c clamps what does not fit: an integer above 2^64 - 1
 * reads as 2^64 - 1 and one below -2^63 as -2^63, with no error.  So the
 * ranges below stop short of those values: a u64 field is at most
 * INT64_MAX (a disk offset must fit an off_t), an i64 field is above
 * INT64_MIN, and json-c's unsigned objects above INT64_MAX are told from
 * a clamped INT64_MAX by reading them unsigned.
 */
static int get_u64(struct json_object *o, const char *key, uint64_t *out,
                   const char *ctx)
{
    struct json_object *v = field(o, key, json_type_int, ctx);
    if (!v)
        return -1;
    /* json-c keeps the sign: negative numbers are rejected here. */
    if (json_object_get_int64(v) < 0)
        return nj_error("manifest%s: field '%s' is negative", ctx, key);
    uint64_t u = json_object_get_uint64(v);
    if (u > (uint64_t)INT64_MAX)
        return nj_error("manifest%s: field '%s' is out of range", ctx, key);
    *out = u;
    return 0;
}

static int get_i64(struct json_object *o, const char *key, int64_t *out,
                   const char *ctx)
{
    struct json_object *v = field(o, key, json_type_int, ctx);
    if (!v)
        return -1;
    int64_t x = json_object_get_int64(v);
    if (x == INT64_MIN ||
        (x == INT64_MAX && json_object_get_uint64(v) != (uint64_t)INT64_MAX))
        return nj_error("manifest%s: field '%s' is out of range", ctx, key);
    *out = x;
    return 0;
}

/* A non-negative integer that fits int64, or false. */
static bool info_u64(struct json_object *o, const char *key, uint64_t *out)
{
    struct json_object *v = NULL;
    if (!json_object_object_get_ex(o, key, &v) ||
        !json_object_is_type(v, json_type_int) ||
        json_object_get_int64(v) < 0 ||
        json_object_get_uint64(v) > (uint64_t)INT64_MAX)
        return false;
    *out = json_object_get_uint64(v);
    return true;
}

static bool info_level(struct json_object *o, const char *key, int *out)
{
    struct json_object *v = NULL;
    if (!json_object_object_get_ex(o, key, &v) ||
        !json_object_is_type(v, json_type_int))
        return false;
    int64_t l = json_object_get_int64(v);
    if (l < NJ_ZSTD_LEVEL_MIN || l > NJ_ZSTD_LEVEL_MAX || l == 0)
        return false;
    *out = (int)l;
    return true;
}

/* The compression record is informational, like the statistics: anything
 * malformed in it is dropped (the whole record, or the one level entry),
 * never trusted and never fatal. */
static void parse_compression(struct json_object *jd,
                              struct nj_disk_compression *c)
{
    struct json_object *o = NULL, *pol = NULL, *lv = NULL;
    memset(c, 0, sizeof *c);
    if (!json_object_object_get_ex(jd, "compression", &o) ||
        !json_object_is_type(o, json_type_object) ||
        !json_object_object_get_ex(o, "policy", &pol) ||
        !json_object_is_type(pol, json_type_string) ||
        !info_level(o, "level_min", &c->level_min) ||
        !info_level(o, "level_max", &c->level_max) ||
        c->level_min > c->level_max) {
        memset(c, 0, sizeof *c);
        return;
    }
    c->adaptive = strcmp(json_object_get_string(pol), "auto") == 0;
    info_u64(o, "raw_chunks", &c->raw_chunks);
    info_u64(o, "raw_bytes", &c->raw_bytes);
    if (!json_object_object_get_ex(o, "levels", &lv) ||
        !json_object_is_type(lv, json_type_array))
        return;
    for (size_t k = 0; k < json_object_array_length(lv); k++) {
        struct json_object *e = json_object_array_get_idx(lv, k);
        int l = 0;
        uint64_t n = 0, b = 0, st = 0;
        if (!json_object_is_type(e, json_type_object) ||
            !info_level(e, "level", &l) || !info_u64(e, "chunks", &n) ||
            !info_u64(e, "bytes", &b) || !info_u64(e, "stored", &st))
            continue;
        c->chunks[l - NJ_ZSTD_LEVEL_MIN] = n;
        c->bytes[l - NJ_ZSTD_LEVEL_MIN] = b;
        c->stored[l - NJ_ZSTD_LEVEL_MIN] = st;
    }
}

static int parse_disk(struct json_object *jd, struct nj_manifest_disk *d,
                      size_t i)
{
    char ctx[48];
    snprintf(ctx, sizeof ctx, " disk %zu", i);
    if (!json_object_is_type(jd, json_type_object))
        return nj_error("manifest%s: not an object", ctx);
    NJ_CLEANUP_FREE char *level = NULL, *hex = NULL;
    if (get_str(jd, "target", false, &d->target, ctx) < 0 ||
        get_str_len(jd, "format", false, false, 64, &d->format, ctx) < 0 ||
        get_u64(jd, "size", &d->size, ctx) < 0 ||
        get_str(jd, "level", false, &level, ctx) < 0 ||
        get_str(jd, "index", false, &d->index, ctx) < 0 ||
        get_str(jd, "index_sha256", false, &hex, ctx) < 0 ||
        get_u64(jd, "entries", &d->entries, ctx) < 0 ||
        get_u64(jd, "covered", &d->covered, ctx) < 0)
        return -1;

    if (strcmp(level, "full") == 0)
        d->full = true;
    else if (strcmp(level, "inc") == 0)
        d->full = false;
    else
        return nj_error("manifest%s: unknown level '%s'", ctx, level);
    if (d->target[0] == '\0')
        return nj_error("manifest%s: empty target", ctx);
    if (!nj_store_name_valid(d->index))
        return nj_error("manifest%s: invalid index file name '%s'", ctx,
                        d->index);
    if (nj_digest_from_hex(hex, &d->index_digest) < 0)
        return nj_error("manifest%s: invalid index_sha256", ctx);
    if (d->covered > d->size)
        return nj_error("manifest%s: covers %llu bytes of a %llu-byte disk",
                        ctx, (unsigned long long)d->covered,
                        (unsigned long long)d->size);
    if (d->size == 0)
        return nj_error("manifest%s: disk size is zero", ctx);
    if (d->entries > d->covered)
        return nj_error("manifest%s: %llu entries cannot cover %llu bytes",
                        ctx, (unsigned long long)d->entries,
                        (unsigned long long)d->covered);
    if (d->full && d->covered != d->size)
        return nj_error("manifest%s: full disk index covers %llu of %llu "
                        "bytes", ctx, (unsigned long long)d->covered,
                        (unsigned long long)d->size);
    struct json_object *st = NULL;
    if (json_object_object_get_ex(jd, "stats", &st) &&
        json_object_is_type(st, json_type_object)) {
        struct { const char *k; uint64_t *v; } s[] = {
            { "bytes_read", &d->stats.bytes_read },
            { "bytes_zero", &d->stats.bytes_zero },
            { "bytes_new", &d->stats.bytes_new },
            { "bytes_stored", &d->stats.bytes_stored },
            { "bytes_dedup", &d->stats.bytes_dedup },
            { "chunks_new", &d->stats.chunks_new },
            { "chunks_dedup", &d->stats.chunks_dedup },
            { "usec", &d->stats.usec },
        };
        /* Informational: anything else (a wrong type, a negative or
         * possibly clamped value) reads as 0. */
        for (size_t k = 0; k < NJ_ARRAY_SIZE(s); k++)
            info_u64(st, s[k].k, s[k].v);
    }
    parse_compression(jd, &d->compression);
    return 0;
}

static int parse_into(struct nj_manifest *m, struct json_object *o)
{
    NJ_CLEANUP_FREE char *fmt = NULL, *level = NULL;
    struct json_object *dom = NULL, *cp = NULL, *disks = NULL, *ver = NULL;
    const char *ctx = "";

    if (!json_object_is_type(o, json_type_object))
        return nj_error("manifest is not a JSON object");
    if (get_str(o, "format", false, &fmt, ctx) < 0)
        return -1;
    if (strcmp(fmt, "nightjar-manifest") != 0)
        return nj_error("manifest: format is '%s', not 'nightjar-manifest'", fmt);
    if (!(ver = field(o, "version", json_type_int, ctx)))
        return -1;
    if (json_object_get_int64(ver) != NJ_MANIFEST_VERSION)
        return nj_error("manifest: unknown version %lld",
                 (long long)json_object_get_int64(ver));
    if (get_str(o, "id", false, &m->id, ctx) < 0 ||
        get_str(o, "parent", true, &m->parent, ctx) < 0 ||
        get_str(o, "level", false, &level, ctx) < 0 ||
        get_i64(o, "started", &m->started, ctx) < 0 ||
        get_i64(o, "finished", &m->finished, ctx) < 0 ||
        get_i64(o, "finished_us", &m->finished_us, ctx) < 0)
        return -1;
    /* Both from one reading of the clock (catalog/nj-backup.c). */
    int64_t secs = m->finished_us / 1000000 -
                   (m->finished_us % 1000000 < 0 ? 1 : 0);
    if (m->finished != secs)
        return nj_error("manifest: finished (%lld) is not the second of "
                        "finished_us (%lld)", (long long)m->finished,
                        (long long)m->finished_us);
    if (!nj_store_name_valid(m->id))
        return nj_error("manifest: invalid id '%s'", m->id);
    if (m->parent && !nj_store_name_valid(m->parent))
        return nj_error("manifest: invalid parent id '%s'", m->parent);
    if (nj_level_parse(level, &m->level) < 0)
        return nj_error("manifest: unknown level '%s'", level);
    bool needs_parent = m->level == NJ_LEVEL_INC || m->level == NJ_LEVEL_DIFF;
    if (needs_parent != (m->parent != NULL))
        return nj_error("manifest: a %s backup %s a parent", level,
                 needs_parent ? "needs" : "cannot have");
    if (!(dom = field(o, "domain", json_type_object, ctx)))
        return -1;
    if (get_str_len(dom, "name", false, false, STR_MAX_NAME, &m->domain_name,
                    " domain") < 0 ||
        get_str_len(dom, "uuid", false, false, STR_MAX_SHORT,
                    &m->domain_uuid, " domain") < 0 ||
        get_str_len(dom, "xml", true, true, STR_MAX_TEXT, &m->domain_xml,
                    " domain") < 0)
        return -1;
    if (!json_object_object_get_ex(o, "checkpoint", &cp))
        return nj_error("manifest: missing field 'checkpoint'");
    if (cp) {
        if (!json_object_is_type(cp, json_type_object))
            return nj_error("manifest: field 'checkpoint' is not an object");
        if (get_str_len(cp, "name", false, false, STR_MAX_NAME,
                        &m->checkpoint_name, " checkpoint") < 0 ||
            get_str_len(cp, "xml", true, true, STR_MAX_TEXT,
                        &m->checkpoint_xml, " checkpoint") < 0)
            return -1;
    }
    if (!(disks = field(o, "disks", json_type_array, ctx)))
        return -1;
    size_t n = json_object_array_length(disks);
    if (n == 0 || n > 4096)
        return nj_error("manifest: %zu disks is out of range", n);
    m->disks = nj_calloc(n, sizeof *m->disks);
    for (size_t i = 0; i < n; i++) {
        m->ndisks = i + 1;
        if (parse_disk(json_object_array_get_idx(disks, i), &m->disks[i], i) < 0)
            return -1;
        for (size_t j = 0; j < i; j++)
            if (strcmp(m->disks[j].target, m->disks[i].target) == 0 ||
                strcmp(m->disks[j].index, m->disks[i].index) == 0)
                return nj_error("manifest: disk '%s' appears twice",
                         m->disks[i].target);
        if ((m->level == NJ_LEVEL_FULL || m->level == NJ_LEVEL_COPY) &&
            !m->disks[i].full)
            return nj_error("manifest: disk '%s' of a %s backup is not full",
                     m->disks[i].target, level);
    }
    return 0;
}

static struct nj_manifest *parse(struct json_object *o)
{
    struct nj_manifest *m = nj_calloc(1, sizeof *m);
    if (parse_into(m, o) < 0) {
        nj_manifest_free(m);
        return NULL;
    }
    return m;
}

struct nj_manifest *nj_manifest_from_json(const char *text, size_t len)
{
    if (len > NJ_MANIFEST_MAX || len > INT32_MAX) {
        nj_error("manifest is too large (%zu bytes)", len);
        return NULL;
    }
    struct json_tokener *tok = json_tokener_new_ex(64);
    if (!tok) {
        nj_error("cannot allocate a JSON parser");
        return NULL;
    }
    /* JSON only: no comments, single quotes, leading zeros or NaN. */
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
    struct json_object *o = json_tokener_parse_ex(tok, text, (int)len);
    enum json_tokener_error err = json_tokener_get_error(tok);
    size_t used = json_tokener_get_parse_end(tok);
    json_tokener_free(tok);
    if (!o || err != json_tokener_success) {
        /* json-c says "continue" when the input ends inside a value. */
        if (err == json_tokener_success || err == json_tokener_continue)
            err = json_tokener_error_parse_eof;
        if (trailing_data(text, len))
            nj_error("manifest has trailing data after the JSON object");
        else
            nj_error("manifest is not valid JSON (%s)",
                     json_tokener_error_desc(err));
        json_object_put(o);
        return NULL;
    }
    for (size_t i = used; i < len; i++)
        if (text[i] != ' ' && text[i] != '\n' && text[i] != '\t' &&
            text[i] != '\r') {
            nj_error("manifest has trailing data after the JSON object");
            json_object_put(o);
            return NULL;
        }
    struct nj_manifest *m = parse(o);
    json_object_put(o);
    return m;
}
