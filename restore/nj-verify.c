/*
 * nj-verify.c: check that what the selected backups reference is sound.
 *
 * Pass 1 opens every index of the selected backups (which checks its
 * digest against the manifest and each entry's order and bounds) and
 * collects the chunk addresses they reference.  The addresses are sorted
 * and deduplicated, so each chunk is read once however many backups share
 * it.  Pass 2 reads and fully decodes every chunk on all cores.  Pass 3,
 * only when something is damaged, walks the indexes again to name every
 * backup, disk and range that references a damaged chunk, and every
 * restore point whose chain goes through such a backup.
 *
 * Chains are checked once for the whole catalog (struct chains below):
 * each backup's link is resolved once, in catalog order, so verify is
 * O(backups + entries) however long the chains are; each selected
 * backup's own index is read once in pass 1.
 *
 * Memory is one digest per distinct chunk plus one chunk buffer per
 * thread: it grows with the data stored, never with the disk sizes.
 */
#include "nj-restore.h"
#include "nj-util.h"

#include <errno.h>
#include <json-c/json.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

struct ref {
    struct nj_digest d;
    uint32_t len;
};
NJ_VECTOR(ref_vec, struct ref);

struct damage {
    struct nj_digest d;
    char *error;
    bool missing;
};
NJ_VECTOR(damage_vec, struct damage);

struct problem {
    char *backup;
    char *disk;
    char *error;
};
NJ_VECTOR(problem_vec, struct problem);

NJ_VECTOR(manifest_vec, const struct nj_manifest *);

/* By digest, then length: a chunk referenced with two different lengths
 * is checked once for each, and the wrong one is reported. */
static int cmp_ref(const void *a, const void *b)
{
    const struct ref *x = a, *y = b;
    int c = nj_digest_cmp(&x->d, &y->d);
    if (c)
        return c;
    return x->len < y->len ? -1 : x->len > y->len;
}

static int cmp_damage(const void *a, const void *b)
{
    return nj_digest_cmp(&((const struct damage *)a)->d,
                         &((const struct damage *)b)->d);
}

static void add_problem(struct problem_vec *v, const char *backup,
                        const char *disk, const char *error)
{
    struct problem p = { nj_strdup(backup), disk ? nj_strdup(disk) : NULL,
                         nj_strdup(error) };
    problem_vec_append(v, p);
}

struct checker {
    struct nj_store *store;
    struct ref_vec *refs;
    size_t next;
    pthread_mutex_t lock;
    struct damage_vec *damaged;
    uint64_t bytes;
};

static void *check_worker(void *arg)
{
    struct checker *ck = arg;
    struct nj_codec *codec = nj_codec_new(1);
    void *frame = NULL, *raw = NULL;
    size_t frame_cap = 0, raw_cap = 0;
    for (;;) {
        size_t i = __atomic_fetch_add(&ck->next, 1, __ATOMIC_RELAXED);
        if (i >= ck->refs->len)
            break;
        const struct ref *r = &ck->refs->ptr[i];
        if (raw_cap < r->len) {
            free(raw);
            raw = nj_malloc(r->len);
            raw_cap = r->len;
        }
        bool missing = false;
        ssize_t flen = nj_store_chunk_get(ck->store, &r->d, &frame, &frame_cap);
        if (flen < 0)
            missing = errno == ENOENT;
        ssize_t n = -1;
        if (flen >= 0 && codec)
            n = nj_chunk_decode(codec, frame, (size_t)flen, &r->d, raw, r->len);
        if (n >= 0 && (uint32_t)n != r->len) {
            nj_error("chunk holds %zd bytes, indexes say %u", n, r->len);
            n = -1;
        }
        if (!codec)
            nj_error("cannot create a zstd context");
        pthread_mutex_lock(&ck->lock);
        if (n < 0) {
            struct damage dm = { r->d, nj_strdup(missing ? "missing"
                                                         : nj_error_get()),
                                 missing };
            damage_vec_append(ck->damaged, dm);
        } else {
            ck->bytes += r->len;
        }
        pthread_mutex_unlock(&ck->lock);
    }
    nj_codec_free(codec);
    free(frame);
    free(raw);
    return NULL;
}

/*
 * The chain of every disk of every backup, in one pass over the catalog in
 * its order (a parent always comes before its children, nj-catalog.c), so
 * that verify never walks a chain again from each point: O(backups x
 * disks).  For the disk at slot (pos, i): pdisk is the parent's disk slot
 * index it continues in (-1 when the disk is full here), and cause, when
 * the chain is broken, the slot where it breaks (its own, or an
 * ancestor's).
 */
struct chains {
    size_t n;
    size_t *first;   /* per position: its first slot */
    int32_t *pdisk;  /* per slot */
    size_t *cause;   /* per slot: SIZE_MAX when sound */
    char **why;      /* per slot that is a cause: the message */
};

static void chains_build(const struct nj_catalog *c, struct chains *ch)
{
    ch->n = nj_catalog_count(c);
    ch->first = nj_calloc(ch->n + 1, sizeof *ch->first);
    for (size_t k = 0; k < ch->n; k++)
        ch->first[k + 1] = ch->first[k] + nj_catalog_get(c, k)->ndisks;
    size_t slots = ch->first[ch->n];
    ch->pdisk = nj_calloc(slots ? slots : 1, sizeof *ch->pdisk);
    ch->cause = nj_calloc(slots ? slots : 1, sizeof *ch->cause);
    ch->why = nj_calloc(slots ? slots : 1, sizeof *ch->why);
    for (size_t k = 0; k < ch->n; k++) {
        const struct nj_manifest *m = nj_catalog_get(c, k);
        const struct nj_manifest *p = NULL;
        int link = m->parent ? nj_catalog_parent(c, m, &p) : 0;
        NJ_CLEANUP_FREE char *link_error = link < 0 ? nj_strdup(nj_error_get())
                                                    : NULL;
        for (size_t i = 0; i < m->ndisks; i++) {
            size_t slot = ch->first[k] + i;
            const struct nj_manifest_disk *d = &m->disks[i];
            ch->pdisk[slot] = -1;
            ch->cause[slot] = SIZE_MAX;
            if (d->full)
                continue;
            if (!m->parent) {
                ch->why[slot] = nj_asprintf("disk '%s' has no full backup at "
                                            "the root of its chain", d->target);
            } else if (link < 0) {
                ch->why[slot] = nj_strdup(link_error);
            } else {
                size_t pk = nj_catalog_pos(c, p);
                const struct nj_manifest_disk *pd = nj_manifest_disk(p, d->target);
                if (!pd) {
                    ch->why[slot] = nj_asprintf("disk '%s' is missing from "
                                                "backup '%s' in its chain",
                                                d->target, p->id);
                } else {
                    size_t ps = ch->first[pk] + (size_t)(pd - p->disks);
                    ch->pdisk[slot] = (int32_t)(pd - p->disks);
                    ch->cause[slot] = ch->cause[ps];
                    continue;
                }
            }
            ch->cause[slot] = slot;
        }
    }
}

static void chains_free(struct chains *ch)
{
    for (size_t i = 0; ch->first && i < ch->first[ch->n]; i++)
        free(ch->why[i]);
    free(ch->first);
    free(ch->pdisk);
    free(ch->cause);
    free(ch->why);
}

static void select_backups(const struct nj_catalog *c,
                           const struct nj_verify_opts *o,
                           const struct nj_manifest *point,
                           const struct chains *ch,
                           struct manifest_vec *sel,
                           struct problem_vec *problems)
{
    if (point) {
        bool *taken = nj_calloc(ch->n ? ch->n : 1, sizeof *taken);
        for (size_t k = 0; k < point->ndisks; k++) {
            const struct nj_manifest **chain = NULL;
            int n = nj_catalog_chain(c, point, point->disks[k].target, &chain);
            if (n < 0) {
                add_problem(problems, point->id, point->disks[k].target,
                            nj_error_get());
                continue;
            }
            for (int i = 0; i < n; i++) {
                size_t pos = nj_catalog_pos(c, chain[i]);
                if (!taken[pos])
                    manifest_vec_append(sel, chain[i]);
                taken[pos] = true;
            }
            free(chain);
        }
        free(taken);
        return;
    }
    for (size_t k = 0; k < ch->n; k++) {
        const struct nj_manifest *m = nj_catalog_get(c, k);
        if (o->domain && !nj_manifest_matches_domain(m, o->domain))
            continue;
        manifest_vec_append(sel, m);
        for (size_t i = 0; i < m->ndisks; i++) {
            size_t cause = ch->cause[ch->first[k] + i];
            if (cause == SIZE_MAX)
                continue;
            NJ_CLEANUP_FREE char *msg = nj_asprintf(
                "backup '%s' disk '%s': %s", m->id, m->disks[i].target,
                ch->why[cause]);
            add_problem(problems, m->id, m->disks[i].target, msg);
        }
    }
    for (size_t i = 0; !o->domain && i < nj_catalog_broken_count(c); i++)
        add_problem(problems, nj_catalog_broken_id(c, i), NULL,
                    nj_catalog_broken_error(c, i));
}

struct damage_ref {
    const struct nj_manifest *m;
    const char *disk;
    uint64_t off, len;
};
NJ_VECTOR(dref_vec, struct damage_ref);

/* One line of the human report, with control characters in what the store
 * provided (domain names, targets, error texts quoting them) escaped, so
 * that a store cannot forge report lines or drive the terminal. */
static void print_line(FILE *out, const char *fmt, ...) NJ_PRINTF(2, 3);
static void print_line(FILE *out, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *line = NULL;
    int n = vasprintf(&line, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    NJ_CLEANUP_FREE char *safe = nj_str_escape(line);
    free(line);
    fprintf(out, "%s\n", safe);
}

int nj_verify(struct nj_store *s, const struct nj_catalog *c,
              const struct nj_verify_opts *o)
{
    const struct nj_manifest *point = NULL;
    if (o->backup) {
        point = nj_catalog_resolve(c, o->domain, o->backup);
        if (!point)
            return -1;
    }
    struct manifest_vec sel = { 0 };
    struct problem_vec problems = { 0 };
    struct ref_vec refs = { 0 };
    struct damage_vec damaged = { 0 };
    struct chains ch = { 0 };
    chains_build(c, &ch);
    select_backups(c, o, point, &ch, &sel, &problems);

    /* Pass 1: indexes and the set of chunks. */
    uint64_t entries = 0;
    for (size_t i = 0; i < sel.len; i++) {
        const struct nj_manifest *m = sel.ptr[i];
        for (size_t k = 0; k < m->ndisks; k++) {
            struct nj_index_reader *r = nj_manifest_index_open(s, m, &m->disks[k]);
            struct nj_extent e;
            int rc = r ? 1 : -1;
            while (r && (rc = nj_index_reader_next(r, &e)) == 1) {
                entries++;
                if (e.kind == NJ_EXTENT_DATA)
                    ref_vec_append(&refs, (struct ref){ e.digest, e.chunk_len });
            }
            if (rc < 0)
                add_problem(&problems, m->id, m->disks[k].target,
                            nj_error_get());
            nj_index_reader_free(r);
        }
        /* Keep the set compact as it grows. */
        if (refs.len > 1 << 20 || i + 1 == sel.len) {
            if (refs.len)
                qsort(refs.ptr, refs.len, sizeof *refs.ptr, cmp_ref);
            size_t w = 0;
            for (size_t k = 0; k < refs.len; k++)
                if (w == 0 || cmp_ref(&refs.ptr[w - 1], &refs.ptr[k]) != 0)
                    refs.ptr[w++] = refs.ptr[k];
            refs.len = w;
        }
    }

    /* Pass 2: every chunk, on all cores. */
    unsigned nthreads = o->threads ? o->threads : nj_ncpus();
    struct checker ck = { .store = s, .refs = &refs, .damaged = &damaged };
    pthread_mutex_init(&ck.lock, NULL);
    pthread_t *tids = nj_calloc(nthreads, sizeof *tids);
    unsigned started = 0;
    for (; started < nthreads; started++)
        if (pthread_create(&tids[started], NULL, check_worker, &ck) != 0)
            break;
    if (started == 0)
        check_worker(&ck);
    for (unsigned i = 0; i < started; i++)
        pthread_join(tids[i], NULL);
    free(tids);
    pthread_mutex_destroy(&ck.lock);
    if (damaged.len)
        qsort(damaged.ptr, damaged.len, sizeof *damaged.ptr, cmp_damage);

    /* Pass 3: who references the damage. */
    struct dref_vec *drefs = nj_calloc(damaged.len ? damaged.len : 1,
                                       sizeof *drefs);
    for (size_t i = 0; damaged.len && i < sel.len; i++) {
        const struct nj_manifest *m = sel.ptr[i];
        for (size_t k = 0; k < m->ndisks; k++) {
            struct nj_index_reader *r = nj_manifest_index_open(s, m, &m->disks[k]);
            struct nj_extent e;
            while (r && nj_index_reader_next(r, &e) == 1) {
                if (e.kind != NJ_EXTENT_DATA)
                    continue;
                struct damage key = { .d = e.digest };
                struct damage *dm = bsearch(&key, damaged.ptr, damaged.len,
                                            sizeof key, cmp_damage);
                if (!dm)
                    continue;
                struct dref_vec *dv = &drefs[dm - damaged.ptr];
                struct damage_ref *last = dv->len ? &dv->ptr[dv->len - 1] : NULL;
                if (last && last->m == m && last->off + last->len == e.offset &&
                    !strcmp(last->disk, m->disks[k].target))
                    last->len += e.length;
                else
                    dref_vec_append(dv, (struct damage_ref){
                        m, m->disks[k].target, e.offset, e.length });
            }
            nj_index_reader_free(r);
        }
    }

    /* Restore points whose chain reads a backup that uses the damage: per
     * damaged chunk, one pass in catalog order (a disk is hit when its own
     * index uses the chunk or its sound chain continues in a disk that is
     * hit). */
    struct manifest_vec *affects = nj_calloc(damaged.len ? damaged.len : 1,
                                             sizeof *affects);
    size_t nslots = ch.first[ch.n];
    bool *hit = nj_calloc(nslots ? nslots : 1, sizeof *hit);
    for (size_t i = 0; i < damaged.len; i++) {
        memset(hit, 0, (nslots ? nslots : 1) * sizeof *hit);
        for (size_t k = 0; k < drefs[i].len; k++) {
            const struct damage_ref *dr = &drefs[i].ptr[k];
            size_t pos = nj_catalog_pos(c, dr->m);
            const struct nj_manifest_disk *d = nj_manifest_disk(dr->m, dr->disk);
            if (pos != SIZE_MAX && d)
                hit[ch.first[pos] + (size_t)(d - dr->m->disks)] = true;
        }
        for (size_t b = 0; b < ch.n; b++) {
            const struct nj_manifest *pm = nj_catalog_get(c, b);
            const struct nj_manifest *pp = NULL;
            if (pm->parent && nj_catalog_parent(c, pm, &pp) < 0)
                pp = NULL;
            size_t ppos = pp ? nj_catalog_pos(c, pp) : SIZE_MAX;
            bool any = false;
            for (size_t k = 0; k < pm->ndisks; k++) {
                size_t slot = ch.first[b] + k;
                if (ch.cause[slot] != SIZE_MAX) {
                    hit[slot] = false; /* a broken chain restores nothing */
                    continue;
                }
                if (!hit[slot] && ch.pdisk[slot] >= 0 && ppos != SIZE_MAX)
                    hit[slot] = hit[ch.first[ppos] + (size_t)ch.pdisk[slot]];
                any |= hit[slot];
            }
            if (any)
                manifest_vec_append(&affects[i], pm);
        }
    }
    free(hit);

    bool ok = damaged.len == 0 && problems.len == 0;
    if (o->json) {
        struct json_object *root = json_object_new_object();
        json_object_object_add(root, "ok", json_object_new_boolean(ok));
        json_object_object_add(root, "backups", json_object_new_uint64(sel.len));
        json_object_object_add(root, "entries", json_object_new_uint64(entries));
        json_object_object_add(root, "chunks", json_object_new_uint64(refs.len));
        json_object_object_add(root, "bytes", json_object_new_uint64(ck.bytes));
        struct json_object *jd = json_object_new_array();
        for (size_t i = 0; i < damaged.len; i++) {
            char hex[NJ_DIGEST_HEX_LEN + 1];
            nj_digest_to_hex(&damaged.ptr[i].d, hex);
            struct json_object *x = json_object_new_object();
            json_object_object_add(x, "chunk", json_object_new_string(hex));
            json_object_object_add(x, "missing", json_object_new_boolean(damaged.ptr[i].missing));
            json_object_object_add(x, "error", json_object_new_string(damaged.ptr[i].error));
            struct json_object *jr = json_object_new_array();
            struct json_object *ja = json_object_new_array();
            for (size_t k = 0; k < drefs[i].len; k++) {
                const struct damage_ref *dr = &drefs[i].ptr[k];
                struct json_object *y = json_object_new_object();
                json_object_object_add(y, "backup", json_object_new_string(dr->m->id));
                json_object_object_add(y, "domain", json_object_new_string(dr->m->domain_name));
                json_object_object_add(y, "disk", json_object_new_string(dr->disk));
                json_object_object_add(y, "offset", json_object_new_uint64(dr->off));
                json_object_object_add(y, "length", json_object_new_uint64(dr->len));
                json_object_array_add(jr, y);
            }
            for (size_t k = 0; k < affects[i].len; k++)
                json_object_array_add(ja, json_object_new_string(affects[i].ptr[k]->id));
            json_object_object_add(x, "refs", jr);
            json_object_object_add(x, "affects", ja);
            json_object_array_add(jd, x);
        }
        json_object_object_add(root, "damaged_chunks", jd);
        struct json_object *jp = json_object_new_array();
        for (size_t i = 0; i < problems.len; i++) {
            struct json_object *x = json_object_new_object();
            json_object_object_add(x, "backup", json_object_new_string(problems.ptr[i].backup));
            json_object_object_add(x, "disk", problems.ptr[i].disk ? json_object_new_string(problems.ptr[i].disk) : NULL);
            json_object_object_add(x, "error", json_object_new_string(problems.ptr[i].error));
            json_object_array_add(jp, x);
        }
        json_object_object_add(root, "problems", jp);
        fprintf(o->out, "%s\n", json_object_to_json_string_ext(
                                    root, JSON_C_TO_STRING_PRETTY |
                                              JSON_C_TO_STRING_NOSLASHESCAPE));
        json_object_put(root);
    } else {
        for (size_t i = 0; i < problems.len; i++)
            print_line(o->out, "damaged backup %s%s%s%s: %s",
                    problems.ptr[i].backup,
                    problems.ptr[i].disk ? " disk '" : "",
                    problems.ptr[i].disk ? problems.ptr[i].disk : "",
                    problems.ptr[i].disk ? "'" : "", problems.ptr[i].error);
        for (size_t i = 0; i < damaged.len; i++) {
            char hex[NJ_DIGEST_HEX_LEN + 1];
            nj_digest_to_hex(&damaged.ptr[i].d, hex);
            print_line(o->out, "%s chunk %s: %s",
                    damaged.ptr[i].missing ? "missing" : "damaged", hex,
                    damaged.ptr[i].error);
            for (size_t k = 0; k < drefs[i].len; k++) {
                const struct damage_ref *dr = &drefs[i].ptr[k];
                print_line(o->out, "  used by backup %s (domain '%s') disk '%s' "
                        "range %llu-%llu", dr->m->id, dr->m->domain_name,
                        dr->disk, (unsigned long long)dr->off,
                        (unsigned long long)(dr->off + dr->len));
            }
            for (size_t k = 0; k < affects[i].len; k++)
                print_line(o->out, "  affects restore point %s (domain '%s')",
                        affects[i].ptr[k]->id, affects[i].ptr[k]->domain_name);
        }
        char hb[32];
        fprintf(o->out, "verify: %zu backups, %zu chunks (%s) checked: %s\n",
                sel.len, refs.len, nj_human_bytes(ck.bytes, hb, sizeof hb),
                ok ? "all sound" : "DAMAGE FOUND");
        if (!ok)
            fprintf(o->out, "verify: %zu damaged or missing chunks, %zu "
                    "damaged backups or indexes\n", damaged.len, problems.len);
    }

    for (size_t i = 0; i < damaged.len; i++) {
        free(damaged.ptr[i].error);
        dref_vec_reset(&drefs[i]);
        manifest_vec_reset(&affects[i]);
    }
    free(drefs);
    free(affects);
    for (size_t i = 0; i < problems.len; i++) {
        free(problems.ptr[i].backup);
        free(problems.ptr[i].disk);
        free(problems.ptr[i].error);
    }
    problem_vec_reset(&problems);
    damage_vec_reset(&damaged);
    ref_vec_reset(&refs);
    manifest_vec_reset(&sel);
    chains_free(&ch);
    return ok ? 0 : 1;
}
