/*
 * test-manifest: the manifest's JSON form, and how a store and a catalog
 * meet damaged metadata.
 *
 * Round trips carry user input that must survive escaping (quotes, &, <,
 * newlines, non-ASCII UTF-8) and 64-bit values at their limits.  The
 * rejections are generated from a good manifest with json-c: every
 * required field removed, given the wrong type or null, and each rule of
 * docs/FORMAT.md section 5 broken once; every one must fail with a message
 * naming the problem.  The parser gets exact-size buffers with no NUL
 * after them, so that ASan sees a read past len.
 *
 * The store part damages a committed backup's manifest.json and the store
 * marker on disk and checks that the catalog and nj_store_open say so
 * clearly instead of failing wholesale or accepting them.
 */
#include "nj-test.h"
#include "nj-io.h"
#include "nj-manifest.h"
#include "nj-util.h"

#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void error_reset(void)
{
    nj_error("%s", "");
}

static bool error_has(const char *want)
{
    return *nj_error_get() && strstr(nj_error_get(), want) != NULL;
}

/* ---- a sample manifest ---- */

static const char weird[] =
    "a \"quoted\" & <tagged> name\nwith a newline, \\ a backslash, / a "
    "slash, \t a tab, caf\xc3\xa9, \xe6\x97\xa5\xe6\x9c\xac, "
    "\xf0\x9f\x90\xa6 and \x01 a control character";

static void set_digest(struct nj_digest *d, unsigned seed)
{
    for (int i = 0; i < NJ_DIGEST_LEN; i++)
        d->b[i] = (unsigned char)(seed * 13 + (unsigned)i * 7);
}

static struct nj_manifest *sample(enum nj_level level)
{
    struct nj_manifest *m = nj_calloc(1, sizeof *m);
    m->id = nj_strdup("20260101T000000Z-0123abcd");
    m->level = level;
    if (level == NJ_LEVEL_INC || level == NJ_LEVEL_DIFF)
        m->parent = nj_strdup("20251231T235959Z-fedc9876");
    m->domain_name = nj_asprintf("dom %s", weird);
    m->domain_uuid = nj_strdup("6f1c8a52-0d3e-4b7a-9c11-2e5f7d9a0b34");
    m->domain_xml = nj_asprintf("<domain type='kvm'><name>%s</name>"
                                "<description>&amp; \"x\" </description>"
                                "</domain>\n", weird);
    if (level != NJ_LEVEL_COPY) {
        m->checkpoint_name = nj_asprintf("cp %s", weird);
        m->checkpoint_xml = nj_strdup("<domaincheckpoint><name>a&amp;b"
                                      "</name></domaincheckpoint>");
    }
    m->started = -1;
    m->finished = INT64_MAX / 1000000;
    m->finished_us = INT64_MAX;
    bool all_full = level == NJ_LEVEL_FULL || level == NJ_LEVEL_COPY;
    m->ndisks = 3;
    m->disks = nj_calloc(m->ndisks, sizeof *m->disks);
    for (size_t i = 0; i < m->ndisks; i++) {
        struct nj_manifest_disk *d = &m->disks[i];
        d->target = i == 2 ? nj_asprintf("disk %s", weird)
                           : nj_strdup(i == 0 ? "vda" : "sdb");
        d->format = nj_strdup(i == 1 ? "raw" : "qcow2 \"odd\" <fmt>");
        d->index = nj_asprintf("disk%zu.idx", i);
        set_digest(&d->index_digest, (unsigned)i);
        d->full = all_full || i == 0;
        switch (i) {
        case 0: /* the largest size allowed (an off_t), exactly */
            d->size = INT64_MAX;
            break;
        case 1: /* above 2^53, where a double would round */
            d->size = (1ull << 62) + 12345;
            break;
        default:
            d->size = 3149825;
            break;
        }
        d->covered = d->full ? d->size : d->size / 3;
        d->entries = 1000 + i;
        d->stats.bytes_read = INT64_MAX - i;
        d->stats.bytes_zero = 0;
        d->stats.bytes_new = 1ull << 62;
        d->stats.bytes_stored = 12345;
        d->stats.bytes_dedup = (1ull << 62) + 1;
        d->stats.chunks_new = 7;
        d->stats.chunks_dedup = 9;
        /* disk 0: adaptive over negative and positive levels; disk 1:
         * fixed; disk 2: not recorded (older manifests) */
        if (i == 0) {
            d->compression = (struct nj_disk_compression){
                .adaptive = true, .level_min = -3, .level_max = 3,
                .raw_chunks = 4, .raw_bytes = 1ull << 40 };
            d->compression.chunks[-3 - NJ_ZSTD_LEVEL_MIN] = 2;
            d->compression.bytes[-3 - NJ_ZSTD_LEVEL_MIN] = INT64_MAX;
            d->compression.stored[-3 - NJ_ZSTD_LEVEL_MIN] = 3;
            d->compression.chunks[2 - NJ_ZSTD_LEVEL_MIN] = 5;
            d->compression.bytes[2 - NJ_ZSTD_LEVEL_MIN] = 1ull << 33;
            d->compression.stored[2 - NJ_ZSTD_LEVEL_MIN] = 1ull << 31;
        } else if (i == 1) {
            d->compression = (struct nj_disk_compression){
                .level_min = NJ_ZSTD_LEVEL_MAX, .level_max = NJ_ZSTD_LEVEL_MAX };
            d->compression.chunks[NJ_ZSTD_NLEVELS - 1] = 1;
            d->compression.bytes[NJ_ZSTD_NLEVELS - 1] = 4096;
            d->compression.stored[NJ_ZSTD_NLEVELS - 1] = 100;
        }
    }
    return m;
}

static bool str_eq(const char *a, const char *b)
{
    return a == b || (a && b && strcmp(a, b) == 0);
}

static bool manifest_eq(const struct nj_manifest *a,
                        const struct nj_manifest *b)
{
    if (!str_eq(a->id, b->id) || !str_eq(a->parent, b->parent) ||
        a->level != b->level || !str_eq(a->domain_name, b->domain_name) ||
        !str_eq(a->domain_uuid, b->domain_uuid) ||
        !str_eq(a->domain_xml, b->domain_xml) ||
        !str_eq(a->checkpoint_name, b->checkpoint_name) ||
        !str_eq(a->checkpoint_xml, b->checkpoint_xml) ||
        a->started != b->started || a->finished != b->finished ||
        a->finished_us != b->finished_us || a->ndisks != b->ndisks)
        return false;
    for (size_t i = 0; i < a->ndisks; i++) {
        const struct nj_manifest_disk *x = &a->disks[i], *y = &b->disks[i];
        if (!str_eq(x->target, y->target) || !str_eq(x->format, y->format) ||
            x->size != y->size || x->full != y->full ||
            !str_eq(x->index, y->index) ||
            !nj_digest_eq(&x->index_digest, &y->index_digest) ||
            x->entries != y->entries || x->covered != y->covered ||
            memcmp(&x->stats, &y->stats, sizeof x->stats) != 0 ||
            memcmp(&x->compression, &y->compression,
                   sizeof x->compression) != 0)
            return false;
    }
    return true;
}

/* Parse from an exact-size copy: no NUL terminator after len. */
static struct nj_manifest *parse_exact(const char *text, size_t len)
{
    char *copy = nj_malloc(len ? len : 1);
    memcpy(copy, text, len);
    struct nj_manifest *m = nj_manifest_from_json(copy, len);
    free(copy);
    return m;
}

/* ---- round trips ---- */

static void round_trip(struct nj_manifest *m)
{
    char *text = nj_manifest_to_json(m);
    REQUIRE(text);
    size_t len = strlen(text);
    CHECK(len > 0 && text[len - 1] == '\n');
    /* '/' is not escaped (JSON_C_TO_STRING_NOSLASHESCAPE), raw newlines
     * and quotes are. */
    CHECK(strstr(text, "\\/") == NULL);
    CHECK(strstr(text, "a \"quoted\"") == NULL);
    CHECK(strstr(text, "a \\\"quoted\\\"") != NULL);
    struct nj_manifest *back = parse_exact(text, len);
    CHECK(back != NULL);
    if (back) {
        CHECK(manifest_eq(m, back));
        char *again = nj_manifest_to_json(back);
        CHECK(strcmp(text, again) == 0);
        free(again);
        CHECK(nj_manifest_disk(back, "sdb") == &back->disks[1]);
        CHECK(nj_manifest_disk(back, "vdz") == NULL);
    }
    /* Whitespace after the object is fine; so is none at all. */
    char *spaced = nj_asprintf("%s \t\r\n\n", text);
    struct nj_manifest *m2 = parse_exact(spaced, strlen(spaced));
    CHECK(m2 && manifest_eq(m, m2));
    nj_manifest_free(m2);
    m2 = parse_exact(text, len - 1);
    CHECK(m2 && manifest_eq(m, m2));
    nj_manifest_free(m2);
    /* Any JSON layout: the compact form of the same object. */
    struct json_object *o = json_tokener_parse(text);
    REQUIRE(o);
    const char *compact = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
    m2 = parse_exact(compact, strlen(compact));
    CHECK(m2 && manifest_eq(m, m2));
    nj_manifest_free(m2);
    json_object_put(o);
    free(spaced);
    nj_manifest_free(back);
    free(text);
}

static void test_round_trips(void)
{
    static const enum nj_level levels[] = { NJ_LEVEL_FULL, NJ_LEVEL_INC,
                                            NJ_LEVEL_DIFF, NJ_LEVEL_COPY };
    for (size_t i = 0; i < NJ_ARRAY_SIZE(levels); i++) {
        struct nj_manifest *m = sample(levels[i]);
        round_trip(m);
        nj_manifest_free(m);
    }
    /* Nulls where they are allowed: no domain XML, checkpoint without
     * XML, and no checkpoint at all. */
    struct nj_manifest *m = sample(NJ_LEVEL_INC);
    free(m->domain_xml);
    m->domain_xml = NULL;
    free(m->checkpoint_xml);
    m->checkpoint_xml = NULL;
    round_trip(m);
    free(m->checkpoint_name);
    m->checkpoint_name = NULL;
    round_trip(m);
    nj_manifest_free(m);
    nj_manifest_free(NULL);

    /* Level names. */
    enum nj_level l;
    CHECK(nj_level_parse("diff", &l) == 0 && l == NJ_LEVEL_DIFF);
    CHECK(nj_level_parse("Full", &l) == -1);
    CHECK(strcmp(nj_level_name(NJ_LEVEL_COPY), "copy") == 0);
}

/* ---- rejections ---- */

static void reject_at(int line, const char *text, size_t len, const char *want)
{
    error_reset();
    struct nj_manifest *m = parse_exact(text, len);
    if (m || !error_has(want)) {
        fprintf(stderr, "line %d: parse %s with '%s', wanted '%s'\n", line,
                m ? "succeeded" : "failed", nj_error_get(), want);
        nj_test_failures++;
    }
    nj_manifest_free(m);
}

#define REJECT_TEXT(text, want) reject_at(__LINE__, text, strlen(text), want)

static char *good_text(void)
{
    struct nj_manifest *m = sample(NJ_LEVEL_INC);
    char *t = nj_manifest_to_json(m);
    nj_manifest_free(m);
    return t;
}

/* A fresh json-c object of the good inc manifest. */
static struct json_object *good_obj(void)
{
    NJ_CLEANUP_FREE char *t = good_text();
    struct json_object *o = json_tokener_parse(t);
    REQUIRE(o);
    return o;
}

static struct json_object *member(struct json_object *o, const char *path)
{
    /* "domain", "checkpoint", "disks", "disk0".."disk2", "stats0".."stats2":
     * a member of the top-level object, a disk, or a disk's stats. */
    struct json_object *v = NULL;
    if (strcmp(path, "disks") != 0 &&
        (strncmp(path, "disk", 4) == 0 || strncmp(path, "stats", 5) == 0)) {
        bool stats = path[0] == 's';
        struct json_object *disks = NULL;
        REQUIRE(json_object_object_get_ex(o, "disks", &disks));
        v = json_object_array_get_idx(disks, (size_t)atoi(path + (stats ? 5 : 4)));
        if (stats)
            REQUIRE(json_object_object_get_ex(v, "stats", &v));
    } else {
        REQUIRE(json_object_object_get_ex(o, path, &v));
    }
    REQUIRE(v);
    return v;
}

/* Serialise o (consumed) and expect a rejection containing want; when
 * accept is true, expect success instead and return the manifest. */
static struct nj_manifest *try_obj_at(int line, struct json_object *o,
                                      const char *want, bool accept)
{
    const char *t = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
    struct nj_manifest *m = NULL;
    if (accept) {
        error_reset();
        m = parse_exact(t, strlen(t));
        if (!m) {
            fprintf(stderr, "line %d: parse failed with '%s', wanted success\n",
                    line, nj_error_get());
            nj_test_failures++;
        }
    } else {
        reject_at(line, t, strlen(t), want);
    }
    json_object_put(o);
    return m;
}

#define REJECT_OBJ(o, want) try_obj_at(__LINE__, o, want, false)
#define ACCEPT_OBJ(o) try_obj_at(__LINE__, o, NULL, true)

/* Set o[where][key] = v (where NULL: top level). */
static struct json_object *with(const char *where, const char *key,
                                struct json_object *v)
{
    struct json_object *o = good_obj();
    struct json_object *t = where ? member(o, where) : o;
    json_object_object_add(t, key, v);
    return o;
}

static struct json_object *without(const char *where, const char *key)
{
    struct json_object *o = good_obj();
    struct json_object *t = where ? member(o, where) : o;
    REQUIRE(json_object_object_get_ex(t, key, NULL));
    json_object_object_del(t, key);
    return o;
}

static void test_invalid_json(void)
{
    REJECT_TEXT("", "not valid JSON");
    REJECT_TEXT(" \n", "not valid JSON");
    REJECT_TEXT("{", "not valid JSON");
    REJECT_TEXT("}", "not valid JSON");
    REJECT_TEXT("nightjar", "not valid JSON");
    REJECT_TEXT("{\"format\": }", "not valid JSON");
    REJECT_TEXT("{\"format\" \"nightjar-manifest\"}", "not valid JSON");
    REJECT_TEXT("{\"a\": [1, 2}", "not valid JSON");
    REJECT_TEXT("{\"a\": \"unterminated}", "not valid JSON");
    REJECT_TEXT("\xff\xfe{}", "not valid JSON");
    /* Valid JSON that is not an object. */
    REJECT_TEXT("[]", "not a JSON object");
    REJECT_TEXT("[{\"format\": \"nightjar-manifest\"}]", "not a JSON object");
    REJECT_TEXT("\"nightjar-manifest\"", "not a JSON object");
    REJECT_TEXT("42 ", "not a JSON object");
    REJECT_TEXT("{}", "missing field 'format'");
    /* A NUL byte inside a string ends the input early for json-c. */
    {
        static const char nul[] = "{\"format\": \"night\0jar\"}";
        reject_at(__LINE__, nul, sizeof nul - 1, "not valid JSON");
    }

    /* Every proper prefix of a good manifest is refused, and says the
     * data ended early rather than something cryptic. */
    NJ_CLEANUP_FREE char *good = good_text();
    size_t len = strlen(good);
    int accepted = 0, unclear = 0;
    for (size_t n = 0; n + 1 < len; n++) {
        error_reset();
        struct nj_manifest *m = parse_exact(good, n);
        if (m)
            accepted++;
        else if (!error_has("not valid JSON (unexpected end of data)"))
            unclear++;
        nj_manifest_free(m);
    }
    CHECK(accepted == 0);
    CHECK(unclear == 0);
    /* (n = len - 1 drops only the final newline: still complete.) */

    /* Trailing garbage. */
    static const char *const tails[] = { "x", "{}", ",", "\n}", " null",
                                         "\n\n#" };
    for (size_t i = 0; i < NJ_ARRAY_SIZE(tails); i++) {
        NJ_CLEANUP_FREE char *t = nj_asprintf("%s%s", good, tails[i]);
        REJECT_TEXT(t, "trailing data after the JSON object");
    }
    {
        /* A NUL byte after the object. */
        char *t = nj_malloc(len + 1);
        memcpy(t, good, len);
        t[len] = '\0';
        reject_at(__LINE__, t, len + 1, "trailing data");
        free(t);
    }
    /* The whole manifest twice. */
    {
        NJ_CLEANUP_FREE char *t = nj_asprintf("%s%s", good, good);
        REJECT_TEXT(t, "trailing data");
    }

    /* Nesting deeper than the parser's limit, in an unknown field. */
    {
        char deep[300];
        size_t n = 0;
        n += (size_t)snprintf(deep, sizeof deep, "{\"x\":");
        for (int i = 0; i < 100; i++)
            deep[n++] = '[';
        for (int i = 0; i < 100; i++)
            deep[n++] = ']';
        deep[n++] = '}';
        reject_at(__LINE__, deep, n, "not valid JSON (nesting too deep)");
    }

    /* Larger than NJ_MANIFEST_MAX: refused on the size alone. */
    {
        size_t big = (size_t)NJ_MANIFEST_MAX + 1;
        char *t = nj_malloc(big);
        memset(t, ' ', big);
        memcpy(t, good, len);
        error_reset();
        CHECK(nj_manifest_from_json(t, big) == NULL);
        CHECK(error_has("too large"));
        /* At exactly the limit, trailing spaces are fine. */
        struct nj_manifest *m = nj_manifest_from_json(t, big - 1);
        CHECK(m != NULL);
        nj_manifest_free(m);
        free(t);
    }
}

static void test_missing_and_types(void)
{
    /* Every required field, removed. */
    static const struct { const char *where, *key; } required[] = {
        { NULL, "format" },      { NULL, "version" },
        { NULL, "id" },          { NULL, "parent" },
        { NULL, "level" },       { NULL, "domain" },
        { NULL, "checkpoint" },  { NULL, "started" },
        { NULL, "finished" },    { NULL, "finished_us" },
        { NULL, "disks" },       { "domain", "name" },
        { "domain", "uuid" },    { "domain", "xml" },
        { "checkpoint", "name" }, { "checkpoint", "xml" },
        { "disk1", "target" },   { "disk1", "format" },
        { "disk1", "size" },     { "disk1", "level" },
        { "disk1", "index" },    { "disk1", "index_sha256" },
        { "disk1", "entries" },  { "disk1", "covered" },
    };
    for (size_t i = 0; i < NJ_ARRAY_SIZE(required); i++) {
        NJ_CLEANUP_FREE char *want =
            nj_asprintf("missing field '%s'", required[i].key);
        REJECT_OBJ(without(required[i].where, required[i].key), want);
    }
    /* The context is named. */
    REJECT_OBJ(without("disk1", "size"), "manifest disk 1: missing field");
    REJECT_OBJ(without("domain", "uuid"), "manifest domain: missing field");

    /* Strings given as numbers, objects or arrays. */
    static const struct { const char *where, *key; } strings[] = {
        { NULL, "format" },      { NULL, "id" },
        { NULL, "parent" },      { NULL, "level" },
        { "domain", "name" },    { "domain", "uuid" },
        { "domain", "xml" },     { "checkpoint", "name" },
        { "checkpoint", "xml" }, { "disk2", "target" },
        { "disk2", "format" },   { "disk2", "level" },
        { "disk2", "index" },    { "disk2", "index_sha256" },
    };
    for (size_t i = 0; i < NJ_ARRAY_SIZE(strings); i++) {
        const char *w = strings[i].where, *k = strings[i].key;
        NJ_CLEANUP_FREE char *want = nj_asprintf("field '%s' is not a string", k);
        REJECT_OBJ(with(w, k, json_object_new_int(5)), want);
        REJECT_OBJ(with(w, k, json_object_new_object()), want);
        REJECT_OBJ(with(w, k, json_object_new_array()), want);
        REJECT_OBJ(with(w, k, json_object_new_boolean(1)), want);
    }
    /* Null where a string is required. */
    static const struct { const char *where, *key; } not_null[] = {
        { NULL, "format" },   { NULL, "id" },        { NULL, "level" },
        { "domain", "name" }, { "domain", "uuid" },  { "checkpoint", "name" },
        { "disk0", "target" }, { "disk0", "format" }, { "disk0", "level" },
        { "disk0", "index" }, { "disk0", "index_sha256" },
    };
    for (size_t i = 0; i < NJ_ARRAY_SIZE(not_null); i++) {
        NJ_CLEANUP_FREE char *want =
            nj_asprintf("field '%s' is null", not_null[i].key);
        REJECT_OBJ(with(not_null[i].where, not_null[i].key, NULL), want);
    }
    /* Integers given as strings, doubles, booleans, null. */
    static const struct { const char *where, *key; } ints[] = {
        { NULL, "version" },  { NULL, "started" },  { NULL, "finished" },
        { NULL, "finished_us" }, { "disk0", "size" }, { "disk0", "entries" },
        { "disk0", "covered" },
    };
    for (size_t i = 0; i < NJ_ARRAY_SIZE(ints); i++) {
        const char *w = ints[i].where, *k = ints[i].key;
        NJ_CLEANUP_FREE char *want =
            nj_asprintf("field '%s' has the wrong type", k);
        REJECT_OBJ(with(w, k, json_object_new_string("1")), want);
        REJECT_OBJ(with(w, k, json_object_new_double(1.0)), want);
        REJECT_OBJ(with(w, k, json_object_new_double(1.5)), want);
        REJECT_OBJ(with(w, k, json_object_new_boolean(1)), want);
        REJECT_OBJ(with(w, k, NULL), want);
    }
    /* An exponent is a double too, even when its value is whole. */
    {
        NJ_CLEANUP_FREE char *t = good_text();
        char *p = strstr(t, "\"version\":1,");
        REQUIRE(p);
        NJ_CLEANUP_FREE char *t2 = nj_asprintf("%.*s\"version\":1e0,%s",
                                               (int)(p - t), t,
                                               p + strlen("\"version\":1,"));
        REJECT_TEXT(t2, "field 'version' has the wrong type");
    }
    /* Containers of the wrong kind. */
    REJECT_OBJ(with(NULL, "domain", json_object_new_string("dom")),
               "field 'domain' has the wrong type");
    REJECT_OBJ(with(NULL, "domain", NULL), "field 'domain' has the wrong type");
    REJECT_OBJ(with(NULL, "domain", json_object_new_array()),
               "field 'domain' has the wrong type");
    REJECT_OBJ(with(NULL, "checkpoint", json_object_new_string("cp")),
               "field 'checkpoint' is not an object");
    REJECT_OBJ(with(NULL, "checkpoint", json_object_new_array()),
               "field 'checkpoint' is not an object");
    REJECT_OBJ(with(NULL, "disks", json_object_new_object()),
               "field 'disks' has the wrong type");
    REJECT_OBJ(with(NULL, "disks", NULL), "field 'disks' has the wrong type");
    {
        struct json_object *o = good_obj();
        json_object_array_put_idx(member(o, "disks"), 1,
                                  json_object_new_string("vdb"));
        REJECT_OBJ(o, "manifest disk 1: not an object");
        o = good_obj();
        json_object_array_put_idx(member(o, "disks"), 0, NULL);
        REJECT_OBJ(o, "manifest disk 0: not an object");
    }
}

/* good_text() with the first occurrence of from replaced by to. */
static char *good_with(const char *from, const char *to)
{
    NJ_CLEANUP_FREE char *t = good_text();
    char *p = strstr(t, from);
    REQUIRE(p);
    return nj_asprintf("%.*s%s%s", (int)(p - t), t, to, p + strlen(from));
}

#define REJECT_SUBST(from, to, want)                                       \
    do {                                                                   \
        char *t_ = good_with(from, to);                                    \
        reject_at(__LINE__, t_, strlen(t_), want);                         \
        free(t_);                                                          \
    } while (0)

/* Values json-c would clamp or bend, lengths, relations (issue 9). */
static void test_values(void)
{
    /* Integers beyond 64 bits: json-c reads them as the nearest bound. */
    REJECT_SUBST("\"size\":9223372036854775807", "\"size\":99999999999999999999",
                 "manifest disk 0: field 'size' is out of range");
    REJECT_SUBST("\"size\":9223372036854775807",
                 "\"size\":18446744073709551615", "field 'size' is out of range");
    REJECT_SUBST("\"entries\":1000", "\"entries\":99999999999999999999999",
                 "field 'entries' is out of range");
    REJECT_SUBST("\"finished_us\":9223372036854775807",
                 "\"finished_us\":99999999999999999999",
                 "field 'finished_us' is out of range");
    REJECT_SUBST("\"finished_us\":9223372036854775807",
                 "\"finished_us\":9223372036854775808",
                 "field 'finished_us' is out of range");
    REJECT_SUBST("\"started\":-1", "\"started\":-99999999999999999999",
                 "field 'started' is out of range");
    /* Not JSON, though json-c's lenient mode takes it. */
    REJECT_SUBST("\"version\":1,", "\"version\":01,", "not valid JSON");
    REJECT_SUBST("\"version\":1,", "\"version\":1,/* x */", "not valid JSON");
    /* finished and finished_us come from one reading of the clock. */
    REJECT_OBJ(with(NULL, "finished", json_object_new_int64(5)),
               "finished (5) is not the second of finished_us");
    REJECT_OBJ(with(NULL, "finished_us", json_object_new_int64(-1)),
               "finished (9223372036854) is not the second of finished_us (-1)");
    {
        struct json_object *o = with(NULL, "finished_us",
                                     json_object_new_int64(-1));
        json_object_object_add(o, "finished", json_object_new_int64(-1));
        struct nj_manifest *m = ACCEPT_OBJ(o);
        nj_manifest_free(m);
    }
    /* String lengths. */
    char big[5000];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    big[257] = '\0';
    REJECT_OBJ(with("disk1", "target", json_object_new_string(big)),
               "field 'target' is 257 bytes long");
    REJECT_OBJ(with("domain", "uuid", json_object_new_string(big)),
               "field 'uuid' is 257 bytes long");
    REJECT_OBJ(with("domain", "uuid", json_object_new_string("")),
               "field 'uuid' is 0 bytes long");
    REJECT_OBJ(with("domain", "name", json_object_new_string("")),
               "field 'name' is 0 bytes long");
    big[65] = '\0';
    REJECT_OBJ(with("disk1", "format", json_object_new_string(big)),
               "field 'format' is 65 bytes long");
    big[65] = 'a';
    big[257] = 'a';
    REJECT_OBJ(with("domain", "name", json_object_new_string(big)),
               "field 'name' is 4999 bytes long");
    big[4096] = '\0';
    {
        struct nj_manifest *m = ACCEPT_OBJ(
            with("domain", "name", json_object_new_string(big)));
        CHECK(m && strlen(m->domain_name) == 4096);
        nj_manifest_free(m);
    }
    /* A statistic json-c may have clamped reads as 0, like a wrong type. */
    {
        struct json_object *o = good_obj();
        json_object_object_add(member(o, "stats1"), "bytes_new",
                               json_object_new_uint64(UINT64_MAX));
        struct nj_manifest *m = ACCEPT_OBJ(o);
        CHECK(m && m->disks[1].stats.bytes_new == 0);
        nj_manifest_free(m);
    }
}

static void test_rules(void)
{
    /* Format name and version. */
    REJECT_OBJ(with(NULL, "format", json_object_new_string("nightjar-store")),
               "format is 'nightjar-store', not 'nightjar-manifest'");
    REJECT_OBJ(with(NULL, "format", json_object_new_string("")),
               "format is ''");
    REJECT_OBJ(with(NULL, "format", json_object_new_string("Nightjar-Manifest")),
               "not 'nightjar-manifest'");
    static const int64_t versions[] = { 0, 2, 99, -1, INT64_MAX };
    for (size_t i = 0; i < NJ_ARRAY_SIZE(versions); i++) {
        NJ_CLEANUP_FREE char *want =
            nj_asprintf("unknown version %lld", (long long)versions[i]);
        REJECT_OBJ(with(NULL, "version", json_object_new_int64(versions[i])),
                   want);
    }

    /* Negative sizes and counts. */
    static const char *const u64s[] = { "size", "entries", "covered" };
    for (size_t i = 0; i < NJ_ARRAY_SIZE(u64s); i++) {
        NJ_CLEANUP_FREE char *want =
            nj_asprintf("field '%s' is negative", u64s[i]);
        REJECT_OBJ(with("disk1", u64s[i], json_object_new_int64(-1)), want);
        REJECT_OBJ(with("disk1", u64s[i], json_object_new_int64(INT64_MIN)),
                   want);
    }
    /* Negative statistics are not an error; they read as 0. */
    {
        struct json_object *o = good_obj();
        json_object_object_add(member(o, "stats1"), "bytes_new",
                               json_object_new_int64(-5));
        json_object_object_add(member(o, "stats1"), "chunks_new",
                               json_object_new_string("7"));
        json_object_object_del(member(o, "disk2"), "stats");
        struct nj_manifest *m = ACCEPT_OBJ(o);
        CHECK(m && m->disks[1].stats.bytes_new == 0 &&
              m->disks[1].stats.chunks_new == 0 &&
              m->disks[1].stats.bytes_stored == 12345 &&
              m->disks[2].stats.bytes_read == 0);
        nj_manifest_free(m);
    }

    /* The compression record is informational: a malformed record is
     * dropped whole, a malformed level entry alone, never fatal. */
    {
        struct json_object *o = good_obj();
        struct json_object *c0 = NULL, *c1 = NULL, *lv = NULL;
        REQUIRE(json_object_object_get_ex(member(o, "disk0"), "compression", &c0));
        REQUIRE(json_object_object_get_ex(member(o, "disk1"), "compression", &c1));
        REQUIRE(json_object_object_get_ex(c0, "levels", &lv));
        REQUIRE(json_object_array_length(lv) == 2);
        /* disk 0: a new entry with a level out of range, and a negative
         * chunk count in an existing one */
        struct json_object *e = json_object_new_object();
        json_object_object_add(e, "level", json_object_new_int(20));
        json_object_object_add(e, "chunks", json_object_new_int(1));
        json_object_object_add(e, "bytes", json_object_new_int(1));
        json_object_object_add(e, "stored", json_object_new_int(1));
        json_object_array_add(lv, e);
        json_object_object_add(json_object_array_get_idx(lv, 0), "chunks",
                               json_object_new_int(-1));
        /* disk 1: min above max */
        json_object_object_add(c1, "level_min", json_object_new_int(5));
        json_object_object_add(c1, "level_max", json_object_new_int(4));
        struct nj_manifest *m = ACCEPT_OBJ(o);
        REQUIRE(m);
        const struct nj_disk_compression *d0 = &m->disks[0].compression;
        CHECK(d0->adaptive && d0->level_min == -3 && d0->level_max == 3);
        CHECK(d0->chunks[-3 - NJ_ZSTD_LEVEL_MIN] == 0);      /* dropped */
        CHECK(d0->chunks[2 - NJ_ZSTD_LEVEL_MIN] == 5 &&
              d0->stored[2 - NJ_ZSTD_LEVEL_MIN] == 1ull << 31);
        CHECK(d0->raw_chunks == 4 && d0->raw_bytes == 1ull << 40);
        CHECK(m->disks[1].compression.level_min == 0 &&
              m->disks[1].compression.chunks[NJ_ZSTD_NLEVELS - 1] == 0);
        CHECK(m->disks[2].compression.level_min == 0);
        nj_manifest_free(m);
    }

    /* Invalid ids, parents and index file names. */
    static const char *const bad_names[] = {
        "", "a/b", "../x", "..", ".", ".hidden", "x/../y", "/abs",
        "a b", "caf\xc3\xa9", "a\\b", "a\nb", "a:b", "a*",
    };
    char n129[130], n128[129];
    memset(n129, 'x', 129);
    n129[129] = '\0';
    memset(n128, 'y', 128);
    n128[128] = '\0';
    for (size_t i = 0; i < NJ_ARRAY_SIZE(bad_names); i++) {
        const char *n = bad_names[i];
        REJECT_OBJ(with(NULL, "id", json_object_new_string(n)),
                   "manifest: invalid id");
        REJECT_OBJ(with(NULL, "parent", json_object_new_string(n)),
                   "manifest: invalid parent id");
        REJECT_OBJ(with("disk1", "index", json_object_new_string(n)),
                   "invalid index file name");
    }
    REJECT_OBJ(with(NULL, "id", json_object_new_string(n129)),
               "manifest: invalid id");
    REJECT_OBJ(with(NULL, "parent", json_object_new_string(n129)),
               "manifest: invalid parent id");
    REJECT_OBJ(with("disk0", "index", json_object_new_string(n129)),
               "invalid index file name");
    /* A \u0000 escape must not cut a string short into a valid one. */
    REJECT_OBJ(with(NULL, "id", json_object_new_string_len("abc\0/../x", 9)),
               "field 'id' contains a NUL character");
    REJECT_OBJ(with(NULL, "parent", json_object_new_string_len("p\0", 2)),
               "field 'parent' contains a NUL character");
    REJECT_OBJ(with("domain", "name", json_object_new_string_len("a\0b", 3)),
               "manifest domain: field 'name' contains a NUL character");
    REJECT_OBJ(with("disk1", "target", json_object_new_string_len("vda\0", 4)),
               "manifest disk 1: field 'target' contains a NUL character");
    REJECT_TEXT("{\"format\":\"nightjar-manifest\\u0000x\"}",
                "field 'format' contains a NUL character");
    /* 128 bytes is the longest valid name; dots inside are fine. */
    {
        struct nj_manifest *m =
            ACCEPT_OBJ(with(NULL, "id", json_object_new_string(n128)));
        CHECK(m && strcmp(m->id, n128) == 0);
        nj_manifest_free(m);
        m = ACCEPT_OBJ(with(NULL, "parent", json_object_new_string("a..b")));
        nj_manifest_free(m);
    }

    /* Levels and parents. */
    REJECT_OBJ(with(NULL, "parent", NULL), "a inc backup needs a parent");
    {
        struct json_object *o = with(NULL, "parent", NULL);
        json_object_object_add(o, "level", json_object_new_string("diff"));
        REJECT_OBJ(o, "a diff backup needs a parent");
    }
    {
        struct json_object *o = good_obj();
        json_object_object_add(o, "level", json_object_new_string("full"));
        REJECT_OBJ(o, "a full backup cannot have a parent");
        o = good_obj();
        json_object_object_add(o, "level", json_object_new_string("copy"));
        REJECT_OBJ(o, "a copy backup cannot have a parent");
    }
    REJECT_OBJ(with(NULL, "level", json_object_new_string("weekly")),
               "unknown level 'weekly'");
    REJECT_OBJ(with(NULL, "level", json_object_new_string("FULL")),
               "unknown level 'FULL'");
    /* A full backup whose disk is not full. */
    {
        struct json_object *o = with(NULL, "parent", NULL);
        json_object_object_add(o, "level", json_object_new_string("full"));
        REJECT_OBJ(o, "disk 'sdb' of a full backup is not full");
    }
    REJECT_OBJ(with("disk1", "level", json_object_new_string("diff")),
               "manifest disk 1: unknown level 'diff'");
    REJECT_OBJ(with("disk1", "target", json_object_new_string("")),
               "manifest disk 1: empty target");

    /* Duplicate targets and index names. */
    REJECT_OBJ(with("disk1", "target", json_object_new_string("vda")),
               "disk 'vda' appears twice");
    REJECT_OBJ(with("disk2", "index", json_object_new_string("disk0.idx")),
               "appears twice");

    /* Coverage against size. */
    REJECT_OBJ(with("disk0", "covered", json_object_new_int64(INT64_MAX - 1)),
               "full disk index covers 9223372036854775806 of "
               "9223372036854775807 bytes");
    REJECT_OBJ(with("disk0", "covered", json_object_new_int64(0)),
               "1000 entries cannot cover 0 bytes");
    {
        struct json_object *o = with("disk0", "covered",
                                     json_object_new_int64(0));
        json_object_object_add(member(o, "disk0"), "entries",
                               json_object_new_int64(0));
        REJECT_OBJ(o, "full disk index covers 0 of");
    }
    /* More entries than bytes covered: each entry covers one at least. */
    REJECT_OBJ(with("disk2", "entries", json_object_new_int64(1049942)),
               "1049942 entries cannot cover 1049941 bytes");
    REJECT_OBJ(with("disk2", "covered", json_object_new_int64(3149826)),
               "covers 3149826 bytes of a 3149825-byte disk");
    REJECT_OBJ(with("disk2", "size", json_object_new_int64(0)),
               "covers 1049941 bytes of a 0-byte disk");
    {
        /* covered == size is fine for an inc disk. */
        struct nj_manifest *m = ACCEPT_OBJ(
            with("disk2", "covered", json_object_new_int64(3149825)));
        nj_manifest_free(m);
    }

    /* Index digests. */
    static const char *const hexes[] = {
        "",
        "00112233445566778899aabbccddeeff00112233445566778899aabbccddeef",
        "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff0",
        "00112233445566778899aabbccddeeff00112233445566778899aabbccddeefg",
        "00112233445566778899aabbccddeeff 0112233445566778899aabbccddeeff",
        "0x112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
        "00112233445566778899aabbccddeeff00112233445566778899aabbccddee-f",
    };
    for (size_t i = 0; i < NJ_ARRAY_SIZE(hexes); i++)
        REJECT_OBJ(with("disk0", "index_sha256", json_object_new_string(hexes[i])),
                   "manifest disk 0: invalid index_sha256");
    {
        struct nj_manifest *m = ACCEPT_OBJ(with("disk0", "index_sha256",
            json_object_new_string("00112233445566778899AABBCCDDEEFF"
                                   "00112233445566778899aabbccddeeff")));
        CHECK(m && m->disks[0].index_digest.b[10] == 0xaa);
        nj_manifest_free(m);
    }

    /* Disk counts. */
    REJECT_OBJ(with(NULL, "disks", json_object_new_array()),
               "0 disks is out of range");
    {
        struct json_object *o = good_obj();
        struct json_object *disks = member(o, "disks");
        struct json_object *d0 = json_object_array_get_idx(disks, 0);
        for (int i = 3; i < 4097; i++) {
            struct json_object *d = NULL;
            REQUIRE(json_object_deep_copy(d0, &d, NULL) == 0);
            char name[32];
            snprintf(name, sizeof name, "t%d", i);
            json_object_object_add(d, "target", json_object_new_string(name));
            snprintf(name, sizeof name, "i%d", i);
            json_object_object_add(d, "index", json_object_new_string(name));
            json_object_array_add(disks, d);
        }
        REJECT_OBJ(o, "4097 disks is out of range");
    }

    /* Unknown fields are ignored at every level. */
    {
        struct json_object *o = good_obj();
        json_object_object_add(o, "future", json_object_new_string("x"));
        json_object_object_add(member(o, "domain"), "future",
                               json_object_new_array());
        json_object_object_add(member(o, "checkpoint"), "future", NULL);
        json_object_object_add(member(o, "disk1"), "future",
                               json_object_new_object());
        json_object_object_add(member(o, "stats1"), "future",
                               json_object_new_double(0.5));
        struct nj_manifest *m = ACCEPT_OBJ(o);
        struct nj_manifest *want = sample(NJ_LEVEL_INC);
        CHECK(m && manifest_eq(m, want));
        nj_manifest_free(want);
        nj_manifest_free(m);
    }
    /* A checkpoint may be null. */
    {
        struct nj_manifest *m = ACCEPT_OBJ(with(NULL, "checkpoint", NULL));
        CHECK(m && !m->checkpoint_name && !m->checkpoint_xml);
        nj_manifest_free(m);
    }
}

/* ---- the store: damaged manifests and markers ---- */

static void write_text(const char *path, const void *buf, size_t len)
{
    /* Published files may be read-only: replace rather than rewrite. */
    if (unlink(path) < 0 && errno != ENOENT) {
        fprintf(stderr, "unlink %s: %s\n", path, strerror(errno));
        exit(1);
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    REQUIRE(fd >= 0);
    REQUIRE(nj_full_write(fd, buf, len) == 0);
    close(fd);
}

static char *read_text(const char *path, size_t *len)
{
    return nj_read_file(AT_FDCWD, path, 1 << 20, len);
}

static char *commit_backup(struct nj_store *s, struct nj_codec *codec,
                           enum nj_level level, const char *parent,
                           const unsigned char *truth, uint64_t size)
{
    struct nj_backup_params p = {
        .domain_name = "manifest-test",
        .domain_uuid = "aaaaaaaa-bbbb-4ccc-8ddd-000000000001",
        .level = level,
        .parent = parent,
    };
    struct nj_backup *b = nj_backup_begin(s, &p);
    REQUIRE(b);
    struct nj_test_dirty dirty;
    nj_test_dirty_init(&dirty, size);
    nj_test_dirty_mark(&dirty, 0, 65536);
    REQUIRE(nj_test_store_disk(b, codec, "vda", truth, size, &dirty,
                               level == NJ_LEVEL_FULL, 1u << 20) == 0);
    nj_test_dirty_free(&dirty);
    REQUIRE(nj_backup_commit(b) == 0);
    char *id = nj_strdup(nj_backup_id(b));
    nj_backup_free(b);
    return id;
}

/* Damage b's manifest with text, reopen the catalog, and check that b is
 * listed broken with want while good still resolves. */
static void damaged_at(int line, struct nj_store *s, const char *storedir,
                       const char *good, const char *bad, const void *text,
                       size_t len, const char *want)
{
    NJ_CLEANUP_FREE char *path =
        nj_asprintf("%s/backups/%s/manifest.json", storedir, bad);
    size_t olen = 0;
    char *orig = read_text(path, &olen);
    REQUIRE(orig);
    write_text(path, text, len);

    error_reset();
    struct nj_catalog *c = nj_catalog_open(s);
    if (!c) {
        fprintf(stderr, "line %d: catalog open failed: %s\n", line,
                nj_error_get());
        nj_test_failures++;
    } else {
        CHECK(nj_catalog_count(c) == 1);
        CHECK(nj_catalog_find(c, bad) == NULL);
        CHECK(nj_catalog_find(c, good) != NULL);
        CHECK(nj_catalog_broken_count(c) == 1);
        if (nj_catalog_broken_count(c) == 1) {
            CHECK(strcmp(nj_catalog_broken_id(c, 0), bad) == 0);
            const char *err = nj_catalog_broken_error(c, 0);
            if (!err || !strstr(err, want)) {
                fprintf(stderr, "line %d: broken error '%s', wanted '%s'\n",
                        line, err ? err : "(null)", want);
                nj_test_failures++;
            }
        }
        error_reset();
        CHECK(nj_catalog_resolve(c, NULL, bad) == NULL);
        NJ_CLEANUP_FREE char *damaged = nj_asprintf("backup '%s' is damaged",
                                                    bad);
        if (!error_has(damaged) || !error_has(want)) {
            fprintf(stderr, "line %d: resolve error '%s', wanted '%s' and "
                    "'%s'\n", line, nj_error_get(), damaged, want);
            nj_test_failures++;
        }
        error_reset();
        CHECK(nj_catalog_resolve(c, "manifest-test", bad) == NULL);
        CHECK(error_has(damaged));
        const struct nj_manifest *g = nj_catalog_resolve(c, NULL, good);
        CHECK(g && strcmp(g->id, good) == 0);
        nj_catalog_free(c);
    }
    write_text(path, orig, olen);
    free(orig);
}

#define DAMAGED(text, len, want)                                            \
    damaged_at(__LINE__, s, storedir, a, b, text, len, want)

static void test_store_damaged_manifest(const char *dir)
{
    NJ_CLEANUP_FREE char *storedir = nj_asprintf("%s/store", dir);
    /* The version-1 layout: backups/ID/manifest.json */
    struct nj_store *s =
        nj_store_open(storedir, NJ_STORE_CREATE | NJ_STORE_CREATE_V1);
    REQUIRE(s);
    struct nj_codec *codec = nj_codec_new(1);
    REQUIRE(codec);
    const uint64_t size = (1u << 20) + 5;
    unsigned char *truth = nj_calloc(1, size);
    uint64_t rng = 3;
    nj_test_fill_random(&rng, truth, 65536);
    char *a = commit_backup(s, codec, NJ_LEVEL_FULL, NULL, truth, size);
    truth[7] ^= 1;
    char *b = commit_backup(s, codec, NJ_LEVEL_INC, a, truth, size);

    /* Control: both readable. */
    struct nj_catalog *c = nj_catalog_open(s);
    REQUIRE(c);
    CHECK(nj_catalog_count(c) == 2 && nj_catalog_broken_count(c) == 0);
    nj_catalog_free(c);

    static const char garbage[] = "{ this is not json";
    DAMAGED(garbage, sizeof garbage - 1, "not valid JSON");
    DAMAGED("", 0, "not valid JSON");
    DAMAGED("\x00\x01\x02\x03", 4, "not valid JSON");
    DAMAGED("[]", 2, "not a JSON object");
    {
        /* The real manifest, cut in half. */
        NJ_CLEANUP_FREE char *path =
            nj_asprintf("%s/backups/%s/manifest.json", storedir, b);
        size_t len = 0;
        NJ_CLEANUP_FREE char *t = read_text(path, &len);
        REQUIRE(t);
        DAMAGED(t, len / 2, "unexpected end of data");
        /* Valid, but naming the parent as a full with no parent field. */
        struct json_object *o = json_tokener_parse(t);
        REQUIRE(o);
        json_object_object_del(o, "parent");
        const char *t2 = json_object_to_json_string(o);
        DAMAGED(t2, strlen(t2), "missing field 'parent'");
        json_object_put(o);
    }
    {
        /* Another backup's manifest in b's directory. */
        NJ_CLEANUP_FREE char *path =
            nj_asprintf("%s/backups/%s/manifest.json", storedir, a);
        size_t len = 0;
        NJ_CLEANUP_FREE char *t = read_text(path, &len);
        REQUIRE(t);
        NJ_CLEANUP_FREE char *want =
            nj_asprintf("manifest id '%s' does not match its directory", a);
        DAMAGED(t, len, want);
    }

    /* Restored, b is whole again. */
    c = nj_catalog_open(s);
    REQUIRE(c);
    CHECK(nj_catalog_count(c) == 2 && nj_catalog_broken_count(c) == 0);
    const struct nj_manifest *lm = nj_catalog_resolve(c, "manifest-test",
                                                      "latest");
    CHECK(lm && strcmp(lm->id, b) == 0);
    nj_catalog_free(c);

    free(a);
    free(b);
    free(truth);
    nj_codec_free(codec);
    nj_store_close(s);
}

static void open_refused_at(int line, const char *path, unsigned flags,
                            const char *want)
{
    error_reset();
    struct nj_store *s = nj_store_open(path, flags);
    if (s || !error_has(want) || !error_has(path)) {
        fprintf(stderr, "line %d: store open %s with '%s', wanted '%s' "
                "naming '%s'\n", line, s ? "succeeded" : "failed",
                nj_error_get(), want, path);
        nj_test_failures++;
    }
    nj_store_close(s);
}

#define OPEN_REFUSED(path, flags, want) open_refused_at(__LINE__, path, flags, want)

/* The marker's checks, on a store created with create (either layout). */
static void test_store_marker(const char *top, unsigned create)
{
    bool v1 = create & NJ_STORE_CREATE_V1;
    NJ_CLEANUP_FREE char *dir = nj_asprintf("%s/%s", top, v1 ? "v1" : "v2");
    REQUIRE(mkdir(dir, 0700) == 0);
    NJ_CLEANUP_FREE char *storedir = nj_asprintf("%s/marker", dir);
    struct nj_store *s = nj_store_open(storedir, create);
    REQUIRE(s);
    nj_store_close(s);
    NJ_CLEANUP_FREE char *marker =
        nj_asprintf("%s/nightjar-store.json", storedir);
    size_t olen = 0;
    NJ_CLEANUP_FREE char *orig = read_text(marker, &olen);
    REQUIRE(orig);

    /* Version 99, as a later nightjar would write it. */
    struct json_object *o = json_tokener_parse(orig);
    REQUIRE(o);
    json_object_object_add(o, "version", json_object_new_int(99));
    const char *t = json_object_to_json_string(o);
    write_text(marker, t, strlen(t));
    OPEN_REFUSED(storedir, 0, "has format version 99; this nightjar reads "
                              "versions 1 and 2");
    /* Creating does not paper over it. */
    OPEN_REFUSED(storedir, create, "has format version 99");
    /* No version, or a version of the wrong type. */
    json_object_object_del(o, "version");
    t = json_object_to_json_string(o);
    write_text(marker, t, strlen(t));
    OPEN_REFUSED(storedir, 0, "has no format version");
    json_object_object_add(o, "version", json_object_new_string("1"));
    t = json_object_to_json_string(o);
    write_text(marker, t, strlen(t));
    OPEN_REFUSED(storedir, 0, "has no format version");
    /* Another format name. */
    json_object_object_add(o, "version", json_object_new_int(1));
    json_object_object_add(o, "format", json_object_new_string("nightjar-manifest"));
    t = json_object_to_json_string(o);
    write_text(marker, t, strlen(t));
    OPEN_REFUSED(storedir, 0, "is not a nightjar store (nightjar-store.json "
                              "is not a store marker)");
    json_object_put(o);
    /* Garbage, truncated, empty. */
    static const char garbage[] = "\x7f" "ELF garbage {{{";
    write_text(marker, garbage, sizeof garbage - 1);
    OPEN_REFUSED(storedir, 0, "is not a store marker");
    write_text(marker, orig, olen / 2);
    OPEN_REFUSED(storedir, 0, "is not a store marker");
    write_text(marker, "", 0);
    OPEN_REFUSED(storedir, 0, "is not a store marker");
    write_text(marker, "[1]", 3);
    OPEN_REFUSED(storedir, 0, "is not a store marker");
    /* Restored, it opens again. */
    write_text(marker, orig, olen);
    s = nj_store_open(storedir, 0);
    CHECK(s != NULL);
    nj_store_close(s);
    /* Each layout only as itself: obj+file:// insists on the objects. */
    NJ_CLEANUP_FREE char *ourl = nj_asprintf("obj+file://%s", storedir);
    if (v1) {
        OPEN_REFUSED(ourl, 0, "has format version 1, the directory layout");
    } else {
        s = nj_store_open(ourl, 0);
        CHECK(s != NULL);
        nj_store_close(s);
    }

    /* Directories that are not stores. */
    NJ_CLEANUP_FREE char *empty = nj_asprintf("%s/empty", dir);
    REQUIRE(mkdir(empty, 0755) == 0);
    OPEN_REFUSED(empty, 0, "is not a nightjar store (no nightjar-store.json)");
    NJ_CLEANUP_FREE char *full = nj_asprintf("%s/notastore", dir);
    REQUIRE(mkdir(full, 0755) == 0);
    NJ_CLEANUP_FREE char *file = nj_asprintf("%s/notastore/data", dir);
    write_text(file, "x", 1);
    OPEN_REFUSED(full, 0, "is not a nightjar store (no nightjar-store.json)");
    OPEN_REFUSED(full, create, "is not a nightjar store and not "
                                        "empty; refusing to create");
    /* Still untouched: no store was created there. */
    NJ_CLEANUP_FREE char *m2 = nj_asprintf("%s/nightjar-store.json", full);
    CHECK(access(m2, F_OK) < 0 && errno == ENOENT);
    NJ_CLEANUP_FREE char *missing = nj_asprintf("%s/missing", dir);
    OPEN_REFUSED(missing, 0, "No such file or directory");
    OPEN_REFUSED(file, 0, "Not a directory");
    OPEN_REFUSED(file, create, v1 ? "Not a directory" : "is not a directory");
    if (!v1) {
        /* Without its marker, a store of objects is a directory holding
         * files: never created over. */
        REQUIRE(unlink(marker) == 0);
        NJ_CLEANUP_FREE char *cdir = nj_asprintf("%s/chunks", storedir);
        NJ_CLEANUP_FREE char *cdir2 = nj_asprintf("%s/chunks/ab", storedir);
        REQUIRE(mkdir(cdir, 0700) == 0 && mkdir(cdir2, 0700) == 0);
        NJ_CLEANUP_FREE char *chunk =
            nj_asprintf("%s/chunks/ab/abcd", storedir);
        write_text(chunk, "x", 1);
        OPEN_REFUSED(storedir, 0, "is not a nightjar store (no "
                                  "nightjar-store.json)");
        OPEN_REFUSED(storedir, create, "not empty; refusing");
        CHECK(access(marker, F_OK) < 0);
        return;
    }
    /* The store marker missing from an empty skeleton: a creation that
     * was interrupted.  Opening refuses it; creating completes it. */
    REQUIRE(unlink(marker) == 0);
    OPEN_REFUSED(storedir, 0, "is not a nightjar store (no nightjar-store.json)");
    s = nj_store_open(storedir, create);
    CHECK(s != NULL);
    CHECK(access(marker, F_OK) == 0);
    nj_store_close(s);
    /* But not once the skeleton holds anything: a backup or a chunk. */
    REQUIRE(unlink(marker) == 0);
    NJ_CLEANUP_FREE char *bdir = nj_asprintf("%s/backups/x", storedir);
    REQUIRE(mkdir(bdir, 0755) == 0);
    OPEN_REFUSED(storedir, create, "not empty; refusing");
    REQUIRE(rmdir(bdir) == 0);
    NJ_CLEANUP_FREE char *chunk = nj_asprintf("%s/chunks/ab/abcd", storedir);
    write_text(chunk, "x", 1);
    OPEN_REFUSED(storedir, create, "not empty; refusing");
    CHECK(access(marker, F_OK) < 0);
}

int main(void)
{
    test_round_trips();
    test_invalid_json();
    test_missing_and_types();
    test_rules();
    test_values();
    char *dir = nj_test_tmpdir("manifest");
    test_store_damaged_manifest(dir);
    test_store_marker(dir, NJ_STORE_CREATE);
    test_store_marker(dir, NJ_STORE_CREATE | NJ_STORE_CREATE_V1);
    nj_test_rmtree(dir);
    free(dir);
    return nj_test_done("test-manifest");
}
