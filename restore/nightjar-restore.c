/*
 * nightjar-restore: list, restore and verify backups, offline.
 *
 *   nightjar-restore list    -s STORE [-d DOMAIN] [--json]
 *   nightjar-restore restore -s STORE -d DOMAIN [-b ID|latest] --disk TARGET
 *                            -o OUTPUT [-f raw|qcow2] [--force]
 *   nightjar-restore verify  -s STORE [-d DOMAIN] [-b ID] [--json]
 *
 * Exit status: 0 success, 1 failure (verify: damage found), 2 usage.
 */
#include "nj-restore.h"
#include "nj-util.h"

#include <getopt.h>
#include <stdarg.h>
#include <json-c/json.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *prog = "nightjar-restore";

static void usage(FILE *f)
{
    fprintf(f,
        "usage: %s list    -s STORE [-d DOMAIN] [--json]\n"
        "       %s restore -s STORE -d DOMAIN [-b ID|latest] --disk TARGET -o OUTPUT\n"
        "                          [-f raw|qcow2] [--force] [--threads N]\n"
        "       %s verify  -s STORE [-d DOMAIN] [-b ID] [--json] [--threads N]\n"
        "       %s --version\n",
        prog, prog, prog, prog);
}

static int die(void)
{
    nj_error_print(prog);
    return 1;
}

NJ_PRINTF(1, 2) static int usage_error(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s: ", prog);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs(" (see --help)\n", stderr);
    return 2;
}

struct args {
    const char *store, *domain, *backup, *disk, *output, *format;
    bool json, force;
    unsigned threads;
};

enum { OPT_JSON = 256, OPT_DISK, OPT_FORCE, OPT_THREADS };

static int parse_args(int argc, char **argv, struct args *a)
{
    static const struct option opts[] = {
        { "store", required_argument, NULL, 's' },
        { "domain", required_argument, NULL, 'd' },
        { "backup", required_argument, NULL, 'b' },
        { "output", required_argument, NULL, 'o' },
        { "format", required_argument, NULL, 'f' },
        { "disk", required_argument, NULL, OPT_DISK },
        { "json", no_argument, NULL, OPT_JSON },
        { "force", no_argument, NULL, OPT_FORCE },
        { "threads", required_argument, NULL, OPT_THREADS },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "s:d:b:o:f:h", opts, NULL)) != -1) {
        switch (c) {
        case 's': a->store = optarg; break;
        case 'd': a->domain = optarg; break;
        case 'b': a->backup = optarg; break;
        case 'o': a->output = optarg; break;
        case 'f': a->format = optarg; break;
        case OPT_DISK: a->disk = optarg; break;
        case OPT_JSON: a->json = true; break;
        case OPT_FORCE: a->force = true; break;
        case OPT_THREADS: {
            uint64_t t = 0;
            if (nj_parse_u64(optarg, &t) < 0 || t == 0 || t > 256)
                return usage_error("--threads: '%s' is not a number from 1 "
                                   "to 256", optarg);
            a->threads = (unsigned)t;
            break;
        }
        case 'h': usage(stdout); exit(0);
        default: return 2; /* getopt said why */
        }
    }
    if (optind < argc)
        return usage_error("unexpected argument '%s'", argv[optind]);
    if (!a->store)
        return usage_error("%s", "a store is required (-s STORE)");
    return 0;
}

static void format_time(int64_t t, char *buf, size_t len)
{
    time_t tt = (time_t)t;
    struct tm tm;
    localtime_r(&tt, &tm);
    strftime(buf, len, "%Y-%m-%d %H:%M:%S", &tm);
}

static int cmd_list(struct nj_store *s, const struct nj_catalog *c,
                    const struct args *a)
{
    if (a->json) {
        struct json_object *arr = json_object_new_array();
        for (size_t i = 0; i < nj_catalog_count(c); i++) {
            const struct nj_manifest *m = nj_catalog_get(c, i);
            if (a->domain && !nj_manifest_matches_domain(m, a->domain))
                continue;
            struct json_object *o = json_object_new_object();
            json_object_object_add(o, "id", json_object_new_string(m->id));
            json_object_object_add(o, "domain", json_object_new_string(m->domain_name));
            json_object_object_add(o, "uuid", json_object_new_string(m->domain_uuid));
            json_object_object_add(o, "level", json_object_new_string(nj_level_name(m->level)));
            json_object_object_add(o, "parent", m->parent ? json_object_new_string(m->parent) : NULL);
            const char *root = nj_catalog_chain_root(c, m);
            json_object_object_add(o, "chain", root ? json_object_new_string(root) : NULL);
            json_object_object_add(o, "time", json_object_new_int64(m->finished));
            json_object_object_add(o, "started", json_object_new_int64(m->started));
            json_object_object_add(o, "checkpoint", m->checkpoint_name ? json_object_new_string(m->checkpoint_name) : NULL);
            json_object_object_add(o, "protected", json_object_new_boolean(
                                                       nj_store_backup_has_flag(s, m->id, "protected") == 1));
            struct json_object *disks = json_object_new_array();
            for (size_t k = 0; k < m->ndisks; k++) {
                const struct nj_manifest_disk *d = &m->disks[k];
                struct json_object *jd = json_object_new_object();
                json_object_object_add(jd, "target", json_object_new_string(d->target));
                json_object_object_add(jd, "size", json_object_new_uint64(d->size));
                json_object_object_add(jd, "format", json_object_new_string(d->format));
                json_object_object_add(jd, "level", json_object_new_string(d->full ? "full" : "inc"));
                json_object_object_add(jd, "bytes_stored", json_object_new_uint64(d->stats.bytes_stored));
                json_object_array_add(disks, jd);
            }
            json_object_object_add(o, "disks", disks);
            json_object_array_add(arr, o);
        }
        printf("%s\n", json_object_to_json_string_ext(
                           arr, JSON_C_TO_STRING_PRETTY |
                                    JSON_C_TO_STRING_NOSLASHESCAPE));
        json_object_put(arr);
    } else {
        printf("%-26s %-20s %-5s %-19s %-26s %s\n", "ID", "DOMAIN", "LEVEL",
               "TIME", "PARENT", "DISKS");
        for (size_t i = 0; i < nj_catalog_count(c); i++) {
            const struct nj_manifest *m = nj_catalog_get(c, i);
            if (a->domain && !nj_manifest_matches_domain(m, a->domain))
                continue;
            char when[32], sz[32];
            format_time(m->finished, when, sizeof when);
            printf("%-26s %-20s %-5s %-19s %-26s", m->id, m->domain_name,
                   nj_level_name(m->level), when, m->parent ? m->parent : "-");
            for (size_t k = 0; k < m->ndisks; k++)
                printf("%s%s(%s)", k ? "," : " ", m->disks[k].target,
                       nj_human_bytes(m->disks[k].size, sz, sizeof sz));
            printf("\n");
        }
    }
    for (size_t i = 0; i < nj_catalog_broken_count(c); i++)
        fprintf(stderr, "%s: warning: backup '%s' is unreadable: %s\n", prog,
                nj_catalog_broken_id(c, i), nj_catalog_broken_error(c, i));
    return 0;
}

static int cmd_restore(struct nj_store *s, const struct nj_catalog *c,
                       const struct args *a)
{
    if (!a->domain)
        return usage_error("%s", "restore needs a domain (-d DOMAIN)");
    if (!a->output)
        return usage_error("%s", "restore needs an output (-o OUTPUT)");
    enum nj_output_format fmt = NJ_OUTPUT_RAW;
    if (a->format && strcmp(a->format, "qcow2") == 0)
        fmt = NJ_OUTPUT_QCOW2;
    else if (a->format && strcmp(a->format, "raw") != 0)
        return usage_error("unknown output format '%s' (raw or qcow2)",
                           a->format);
    const struct nj_manifest *m = nj_catalog_resolve(c, a->domain, a->backup);
    if (!m)
        return die();
    const char *target = a->disk;
    if (!target) {
        if (m->ndisks != 1) {
            nj_error("backup '%s' has %zu disks; choose one with --disk",
                     m->id, m->ndisks);
            return die();
        }
        target = m->disks[0].target;
    }
    const struct nj_manifest_disk *d = nj_manifest_disk(m, target);
    if (!d) {
        nj_error("backup '%s' of '%s' has no disk '%s'", m->id,
                 m->domain_name, target);
        return die();
    }
    struct nj_output *out = nj_output_open(a->output, fmt, d->size, a->force);
    if (!out)
        return die();
    struct nj_restore_opts ro = { .threads = a->threads,
                                  .progress = isatty(STDERR_FILENO) };
    struct nj_restore_stats st = { 0 };
    int r = nj_restore_disk(s, c, m, target, out, &ro, &st);
    if (r < 0) {
        nj_output_close(out, false);
        nj_error_prefix("restore of '%s' failed, '%s' removed", target,
                        a->output);
        return die();
    }
    if (nj_output_close(out, true) < 0)
        return die();
    if (isatty(STDERR_FILENO)) {
        char b1[32], b2[32];
        fprintf(stderr, "%s: restored '%s' of backup %s to '%s': %s data, "
                "%s zero\n", prog, target, m->id, a->output,
                nj_human_bytes(st.bytes_data, b1, sizeof b1),
                nj_human_bytes(st.bytes_zero, b2, sizeof b2));
    }
    return 0;
}

static int cmd_verify(struct nj_store *s, const struct nj_catalog *c,
                      const struct args *a)
{
    struct nj_verify_opts vo = { .domain = a->domain, .backup = a->backup,
                                 .threads = a->threads, .json = a->json,
                                 .out = stdout };
    int r = nj_verify(s, c, &vo);
    if (r < 0)
        return die();
    if (r > 0)
        fprintf(stderr, "%s: verify found damage in store '%s'\n", prog,
                a->store);
    return r;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(cmd, "--version")) {
        printf("nightjar-restore %s\n", NJ_VERSION);
        return 0;
    }
    int (*fn)(struct nj_store *, const struct nj_catalog *,
              const struct args *) = NULL;
    if (!strcmp(cmd, "list"))
        fn = cmd_list;
    else if (!strcmp(cmd, "restore"))
        fn = cmd_restore;
    else if (!strcmp(cmd, "verify"))
        fn = cmd_verify;
    else
        return usage_error("unknown command '%s'", cmd);
    struct args a = { 0 };
    int r = parse_args(argc - 1, argv + 1, &a);
    if (r)
        return r;
    struct nj_store *s = nj_store_open(a.store, 0);
    if (!s)
        return die();
    struct nj_catalog *c = nj_catalog_open(s);
    if (!c) {
        nj_store_close(s);
        return die();
    }
    r = fn(s, c, &a);
    nj_catalog_free(c);
    nj_store_close(s);
    return r;
}
