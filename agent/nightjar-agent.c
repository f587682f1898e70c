/*
 * nightjar-agent: back up libvirt domains and disk images into a store.
 *
 *   nightjar-agent import -s STORE -d NAME --disk TARGET [-l full|inc]
 *                         [--format raw|qcow2] [--bitmap NAME] [--json] SOURCE
 *
 * Exit status: 0 success, 1 failure, 2 usage.
 */
#include "nj-agent.h"
#include "nj-key.h"
#include "nj-prune.h"
#include "nj-schedule.h"
#include "nj-sync.h"
#include "nj-util.h"

#include <json-c/json.h>

#include <getopt.h>
#include <malloc.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static const char *prog = "nightjar-agent";

static void usage(FILE *f)
{
    fprintf(f,
        "usage: %s backup -c URI -s STORE -d DOMAIN [-l auto|full|inc|diff|copy]\n"
        "                        [--disk TARGET]... [--json] [--quiesce[=try]]\n"
        "                        [--scratch-dir DIR] [--scratch-min BYTES]\n"
        "                        [--max-chain N] [--max-age DAYS]\n"
        "       %s estimate -c URI -s STORE (-d DOMAIN | --all) [--json]\n"
        "       %s prune -s STORE [-d DOMAIN] [--keep-last N] [--keep-hourly N]\n"
        "                       [--keep-daily N] [--keep-weekly N] [--keep-monthly N]\n"
        "                       [--keep-yearly N] [--dry-run] [--json]\n"
        "       %s gc -s STORE [--grace SECONDS] [--json]\n"
        "       %s run --config FILE [--once]\n"
        "       %s protect -s STORE -b ID [--off]\n"
        "       %s sync -s STORE --to STORE [-d DOMAIN]... [--json]\n"
        "       %s key create --key-file FILE [--passphrase-file F | --no-passphrase]\n"
        "       %s key show --key-file FILE [--json]\n"
        "       %s key passwd --key-file FILE [--passphrase-file F]\n"
        "                       [--new-passphrase-file F | --no-passphrase]\n"
        "  passphrases: from the file given, else NIGHTJAR_PASSPHRASE (the new one\n"
        "    of passwd: NIGHTJAR_NEW_PASSPHRASE), else the terminal; never argv\n"
        "       %s import -s STORE -d NAME --disk TARGET [-l full|inc]\n"
        "                        [--format raw|qcow2] [--bitmap NAME] [--json] SOURCE\n"
        "  SOURCE is a qcow2 or raw image file, or an nbd:// or nbd+unix:// URI\n"
        "  --format: the image file's format, never guessed from its content;\n"
        "    without it, qcow2 if the name ends in .qcow2, else raw, and a file\n"
        "    taken as raw that starts like an image format is refused\n"
        "  tuning: [--threads N] [--connections N] [--requests N]\n"
        "          [--grid BYTES] [--zstd-level auto|N|LO..HI] [--max-inflight BYTES]\n"
        "       %s --version\n",
        prog, prog, prog, prog, prog, prog, prog, prog, prog, prog, prog,
        prog);
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

/* getopt_long's '?' or ':' (opterr is 0): one line naming the command
 * and the option, exit status 2.  optstring: the loop's short options. */
static int bad_option(int c, char **argv, const char *optstring)
{
    const char *arg = optind > 0 ? argv[optind - 1] : "";
    if (c == ':')
        return usage_error("%s: option '%s' needs a value", argv[0], arg);
    if (optopt == 0)
        return usage_error("%s: unknown option '%s'", argv[0], arg);
    if (optopt < 256 && !strchr(optstring, optopt))
        return usage_error("%s: unknown option '-%c'", argv[0], optopt);
    return usage_error("%s: option '%s' takes no value", argv[0], arg);
}

enum {
    OPT_DISK = 256, OPT_JSON, OPT_BITMAP, OPT_THREADS, OPT_CONNS,
    OPT_REQUESTS, OPT_GRID, OPT_ZLEVEL, OPT_INFLIGHT, OPT_QUIESCE,
    OPT_SCRATCH, OPT_SCRATCH_MIN, OPT_MAX_CHAIN, OPT_MAX_AGE, OPT_FORMAT,
};

#define TUNING_OPTIONS                                                     \
    { "threads", required_argument, NULL, OPT_THREADS },                   \
    { "connections", required_argument, NULL, OPT_CONNS },                 \
    { "requests", required_argument, NULL, OPT_REQUESTS },                 \
    { "grid", required_argument, NULL, OPT_GRID },                         \
    { "zstd-level", required_argument, NULL, OPT_ZLEVEL },                 \
    { "max-inflight", required_argument, NULL, OPT_INFLIGHT }

static int parse_num(const char *opt, const char *arg, uint64_t lo,
                     uint64_t hi, uint64_t *out)
{
    if (nj_parse_u64(arg, out) < 0 || *out < lo || *out > hi)
        return usage_error("%s: '%s' is not a number from %llu to %llu", opt,
                           arg, (unsigned long long)lo,
                           (unsigned long long)hi);
    return 0;
}

/* 1: c was a tuning option and is parsed; 0: not one; -1: bad value. */
static int parse_tuning(int c, struct nj_datapath_opts *dp)
{
    uint64_t v = 0;
    switch (c) {
    case OPT_THREADS:
        if (parse_num("--threads", optarg, 1, 256, &v)) return -1;
        dp->threads = (unsigned)v;
        return 1;
    case OPT_CONNS:
        if (parse_num("--connections", optarg, 1, 16, &v)) return -1;
        dp->connections = (unsigned)v;
        return 1;
    case OPT_REQUESTS:
        if (parse_num("--requests", optarg, 1, 64, &v)) return -1;
        dp->requests = (unsigned)v;
        return 1;
    case OPT_GRID:
        if (parse_num("--grid", optarg, 4096, NJ_CHUNK_MAX, &v)) return -1;
        dp->grid = v;
        return 1;
    case OPT_ZLEVEL:
        if (nj_zstd_level_parse(optarg, &dp->zstd_min, &dp->zstd_max) < 0) {
            usage_error("--zstd-level: %s", nj_error_get());
            return -1;
        }
        return 1;
    case OPT_INFLIGHT:
        if (parse_num("--max-inflight", optarg, 1 << 20, 1ull << 32, &v)) return -1;
        dp->max_inflight = v;
        return 1;
    default:
        return 0;
    }
}

static int cmd_backup(int argc, char **argv)
{
    static const struct option opts[] = {
        { "connect", required_argument, NULL, 'c' },
        { "store", required_argument, NULL, 's' },
        { "domain", required_argument, NULL, 'd' },
        { "level", required_argument, NULL, 'l' },
        { "disk", required_argument, NULL, OPT_DISK },
        { "json", no_argument, NULL, OPT_JSON },
        { "quiesce", optional_argument, NULL, OPT_QUIESCE },
        { "scratch-dir", required_argument, NULL, OPT_SCRATCH },
        { "scratch-min", required_argument, NULL, OPT_SCRATCH_MIN },
        { "max-chain", required_argument, NULL, OPT_MAX_CHAIN },
        { "max-age", required_argument, NULL, OPT_MAX_AGE },
        TUNING_OPTIONS,
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    struct nj_backup_args a = {
        .uri = "qemu:///system",
        .level_auto = true,
        .scratch_dir = "/var/tmp",
        .scratch_min = 1ull << 30,
        .max_chain = 30,
        .max_age_days = 7,
    };
    a.dp.progress = isatty(STDERR_FILENO);
    const char **disks = nj_calloc((size_t)argc + 1, sizeof *disks);
    uint64_t v = 0;
    int c, r;
    while ((c = getopt_long(argc, argv, ":c:s:d:l:h", opts, NULL)) != -1) {
        if ((r = parse_tuning(c, &a.dp)) != 0) {
            if (r < 0)
                return 2;
            continue;
        }
        switch (c) {
        case 'c': a.uri = optarg; break;
        case 's': a.store = optarg; break;
        case 'd': a.domain = optarg; break;
        case 'l':
            if (strcmp(optarg, "auto") == 0) {
                a.level_auto = true;
            } else if (nj_level_parse(optarg, &a.level) == 0) {
                a.level_auto = false;
            } else {
                return usage_error("unknown level '%s' (auto, full, inc, "
                                   "diff or copy)", optarg);
            }
            break;
        case OPT_DISK: disks[a.ndisks++] = optarg; break;
        case OPT_JSON: a.json = true; break;
        case OPT_QUIESCE:
            if (!optarg || strcmp(optarg, "yes") == 0)
                a.quiesce = NJ_QUIESCE_YES;
            else if (strcmp(optarg, "try") == 0)
                a.quiesce = NJ_QUIESCE_TRY;
            else
                return usage_error("--quiesce takes no value or 'try', not "
                                   "'%s'", optarg);
            break;
        case OPT_SCRATCH: a.scratch_dir = optarg; break;
        case OPT_SCRATCH_MIN:
            if (parse_num("--scratch-min", optarg, 0, UINT64_MAX, &v)) return 2;
            a.scratch_min = v;
            break;
        case OPT_MAX_CHAIN:
            if (parse_num("--max-chain", optarg, 0, 100000, &v)) return 2;
            a.max_chain = (unsigned)v;
            break;
        case OPT_MAX_AGE:
            if (parse_num("--max-age", optarg, 0, 100000, &v)) return 2;
            a.max_age_days = (unsigned)v;
            break;
        case 'h': usage(stdout); return 0;
        default: return bad_option(c, argv, ":c:s:d:l:h");
        }
    }
    if (optind < argc)
        return usage_error("unexpected argument '%s'", argv[optind]);
    if (!a.store)
        return usage_error("a store is required (-s STORE)");
    if (!a.domain || !a.domain[0])
        return usage_error("a domain is required (-d DOMAIN)");
    a.disks = disks;
    nj_agent_install_signals();
    int ret = nj_agent_backup(&a) < 0 ? 1 : 0;
    if (ret)
        nj_error_print(prog);
    free(disks);
    return ret;
}

static int cmd_estimate(int argc, char **argv)
{
    static const struct option opts[] = {
        { "connect", required_argument, NULL, 'c' },
        { "store", required_argument, NULL, 's' },
        { "domain", required_argument, NULL, 'd' },
        { "all", no_argument, NULL, 'a' },
        { "json", no_argument, NULL, OPT_JSON },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *uri = "qemu:///system", *store = NULL, *domain = NULL;
    bool all = false, json = false;
    int c;
    while ((c = getopt_long(argc, argv, ":c:s:d:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c': uri = optarg; break;
        case 's': store = optarg; break;
        case 'd': domain = optarg; break;
        case 'a': all = true; break;
        case OPT_JSON: json = true; break;
        case 'h': usage(stdout); return 0;
        default: return bad_option(c, argv, ":c:s:d:h");
        }
    }
    if (optind < argc)
        return usage_error("unexpected argument '%s'", argv[optind]);
    if (!store)
        return usage_error("a store is required (-s STORE)");
    if (!domain == !all)
        return usage_error("estimate needs -d DOMAIN or --all");
    if (nj_agent_estimate(uri, store, domain, all, json) < 0) {
        nj_error_print(prog);
        return 1;
    }
    return 0;
}

enum { OPT_KEEP = 512, OPT_DRY = OPT_KEEP + 6, OPT_GRACE, OPT_OFF,
       OPT_CONFIG, OPT_ONCE, OPT_SIM_FROM, OPT_SIM_RUNS, OPT_TO,
       OPT_KEY_FILE, OPT_PASS_FILE, OPT_NEW_PASS_FILE, OPT_NO_PASS,
       OPT_KEY_JSON };

static int cmd_run(int argc, char **argv)
{
    static const struct option opts[] = {
        { "config", required_argument, NULL, OPT_CONFIG },
        { "once", no_argument, NULL, OPT_ONCE },
        { "simulate-from", required_argument, NULL, OPT_SIM_FROM },
        { "simulate-runs", required_argument, NULL, OPT_SIM_RUNS },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    struct nj_run_opts o = { 0 };
    uint64_t v = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case OPT_CONFIG: o.config = optarg; break;
        case OPT_ONCE: o.once = true; break;
        case OPT_SIM_FROM:
            if (parse_num("--simulate-from", optarg, 1, INT64_MAX, &v)) return 2;
            o.simulate_from = (int64_t)v;
            break;
        case OPT_SIM_RUNS:
            if (parse_num("--simulate-runs", optarg, 1, 100000, &v)) return 2;
            o.simulate_runs = (unsigned)v;
            break;
        case 'h': usage(stdout); return 0;
        default: return bad_option(c, argv, ":h");
        }
    }
    if (optind < argc)
        return usage_error("unexpected argument '%s'", argv[optind]);
    if (!o.config)
        return usage_error("run needs --config FILE");
    if (!o.simulate_from != !o.simulate_runs)
        return usage_error("--simulate-from and --simulate-runs go together");
    nj_agent_install_signals();
    if (nj_agent_run(&o) < 0) {
        nj_error_print(prog);
        return 1;
    }
    return 0;
}

static int cmd_prune(int argc, char **argv)
{
    static const char *const keeps[] = { "keep-last", "keep-hourly",
                                         "keep-daily", "keep-weekly",
                                         "keep-monthly", "keep-yearly" };
    static const struct option opts[] = {
        { "store", required_argument, NULL, 's' },
        { "domain", required_argument, NULL, 'd' },
        { "keep-last", required_argument, NULL, OPT_KEEP + 0 },
        { "keep-hourly", required_argument, NULL, OPT_KEEP + 1 },
        { "keep-daily", required_argument, NULL, OPT_KEEP + 2 },
        { "keep-weekly", required_argument, NULL, OPT_KEEP + 3 },
        { "keep-monthly", required_argument, NULL, OPT_KEEP + 4 },
        { "keep-yearly", required_argument, NULL, OPT_KEEP + 5 },
        { "dry-run", no_argument, NULL, OPT_DRY },
        { "json", no_argument, NULL, OPT_JSON },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *store = NULL, *domain = NULL;
    struct nj_keep_rules r = { 0 };
    unsigned *slot[] = { &r.last, &r.hourly, &r.daily, &r.weekly, &r.monthly,
                         &r.yearly };
    bool dry = false, json = false;
    uint64_t v = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":s:d:h", opts, NULL)) != -1) {
        if (c >= OPT_KEEP && c < OPT_KEEP + 6) {
            NJ_CLEANUP_FREE char *name = nj_asprintf("--%s", keeps[c - OPT_KEEP]);
            if (parse_num(name, optarg, 0, 1000000, &v))
                return 2;
            *slot[c - OPT_KEEP] = (unsigned)v;
            continue;
        }
        switch (c) {
        case 's': store = optarg; break;
        case 'd': domain = optarg; break;
        case OPT_DRY: dry = true; break;
        case OPT_JSON: json = true; break;
        case 'h': usage(stdout); return 0;
        default: return bad_option(c, argv, ":s:d:h");
        }
    }
    if (optind < argc)
        return usage_error("unexpected argument '%s'", argv[optind]);
    if (!store)
        return usage_error("a store is required (-s STORE)");
    if (nj_keep_rules_empty(&r))
        return usage_error("prune needs a rule (--keep-last N, --keep-daily "
                           "N, ...): with none it would remove everything");
    struct nj_store *s = nj_store_open(store, 0);
    struct nj_prune_decision *d = NULL;
    size_t n = 0;
    if (!s || nj_prune_plan(s, domain, &r, &d, &n) < 0) {
        nj_error_print(prog);
        nj_store_close(s);
        return 1;
    }
    if (domain && n == 0) {
        /* a mistyped name must not look like "nothing to remove" */
        fprintf(stderr, "%s: no backup of domain '%s' in store '%s'\n", prog,
                domain, store);
        nj_store_close(s);
        return 1;
    }
    int ret = dry ? 0 : nj_prune_apply(s, d, n);
    struct json_object *arr = json_object_new_array();
    for (size_t i = 0; i < n; i++) {
        const char *action = d[i].mark == NJ_MARK_REMOVE
                                 ? (dry ? "remove" : d[i].removed ? "removed" : "failed")
                                 : "keep";
        if (json) {
            struct json_object *o = json_object_new_object();
            json_object_object_add(o, "id", json_object_new_string(d[i].id));
            json_object_object_add(o, "domain", json_object_new_string(d[i].domain));
            json_object_object_add(o, "time", json_object_new_int64(d[i].time));
            json_object_object_add(o, "level", json_object_new_string(nj_level_name(d[i].level)));
            json_object_object_add(o, "action", json_object_new_string(action));
            json_object_object_add(o, "reason", json_object_new_string(d[i].reason));
            if (d[i].error)
                json_object_object_add(o, "error", json_object_new_string(d[i].error));
            json_object_array_add(arr, o);
        } else {
            NJ_CLEANUP_FREE char *dom = nj_str_escape(d[i].domain);
            printf("%-8s %-26s %-20s %-4s %s%s%s\n", action, d[i].id, dom,
                   nj_level_name(d[i].level), d[i].reason,
                   d[i].error ? ": " : "", d[i].error ? d[i].error : "");
        }
    }
    if (json)
        printf("%s\n", json_object_to_json_string_ext(
                           arr, JSON_C_TO_STRING_PRETTY |
                                    JSON_C_TO_STRING_NOSLASHESCAPE));
    json_object_put(arr);
    if (ret < 0)
        fprintf(stderr, "%s: prune could not remove every backup it should\n",
                prog);
    nj_prune_plan_free(d, n);
    nj_store_close(s);
    return ret < 0 ? 1 : 0;
}

static int cmd_gc(int argc, char **argv)
{
    static const struct option opts[] = {
        { "store", required_argument, NULL, 's' },
        { "grace", required_argument, NULL, OPT_GRACE },
        { "json", no_argument, NULL, OPT_JSON },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *store = NULL;
    uint64_t grace = 3600;
    bool json = false;
    int c;
    while ((c = getopt_long(argc, argv, ":s:h", opts, NULL)) != -1) {
        switch (c) {
        case 's': store = optarg; break;
        case OPT_GRACE:
            if (parse_num("--grace", optarg, 0, 10ull * 365 * 86400, &grace))
                return 2;
            break;
        case OPT_JSON: json = true; break;
        case 'h': usage(stdout); return 0;
        default: return bad_option(c, argv, ":s:h");
        }
    }
    if (optind < argc)
        return usage_error("unexpected argument '%s'", argv[optind]);
    if (!store)
        return usage_error("a store is required (-s STORE)");
    struct nj_store *s = nj_store_open(store, 0);
    struct nj_gc_stats st;
    if (!s || nj_gc(s, (int64_t)grace, &st) < 0) {
        nj_error_print(prog);
        nj_store_close(s);
        return 1;
    }
    nj_store_close(s);
    if (json) {
        printf("{\"chunks_freed\": %llu, \"bytes_freed\": %llu, "
               "\"chunks_kept\": %llu, \"bytes_kept\": %llu, "
               "\"references\": %llu, \"tmp_removed\": %llu, "
               "\"seconds\": %.3f}\n",
               (unsigned long long)st.chunks_freed,
               (unsigned long long)st.bytes_freed,
               (unsigned long long)st.chunks_kept,
               (unsigned long long)st.bytes_kept,
               (unsigned long long)st.referenced,
               (unsigned long long)st.tmp_removed, st.seconds);
    } else {
        char a[32], b[32];
        printf("gc: freed %llu chunks (%s), kept %llu chunks (%s) in %.1f s\n",
               (unsigned long long)st.chunks_freed,
               nj_human_bytes(st.bytes_freed, a, sizeof a),
               (unsigned long long)st.chunks_kept,
               nj_human_bytes(st.bytes_kept, b, sizeof b), st.seconds);
    }
    return 0;
}

static void sync_line(void *arg, const char *line)
{
    FILE *f = arg;
    fprintf(f, "%s\n", line);
}

static int cmd_sync(int argc, char **argv)
{
    static const struct option opts[] = {
        { "store", required_argument, NULL, 's' },
        { "to", required_argument, NULL, OPT_TO },
        { "domain", required_argument, NULL, 'd' },
        { "json", no_argument, NULL, OPT_JSON },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *src = NULL, *dst = NULL;
    const char **domains = nj_calloc((size_t)argc + 1, sizeof *domains);
    size_t nd = 0;
    bool json = false;
    int c;
    while ((c = getopt_long(argc, argv, ":s:d:h", opts, NULL)) != -1) {
        switch (c) {
        case 's': src = optarg; break;
        case OPT_TO: dst = optarg; break;
        case 'd': domains[nd++] = optarg; break;
        case OPT_JSON: json = true; break;
        case 'h': free(domains); usage(stdout); return 0;
        default: free(domains); return bad_option(c, argv, ":s:d:h");
        }
    }
    if (optind < argc || !src || !dst) {
        free(domains);
        if (optind < argc)
            return usage_error("unexpected argument '%s'", argv[optind]);
        return usage_error("sync needs -s STORE and --to STORE");
    }
    if (strcmp(src, dst) == 0) {
        free(domains);
        return usage_error("sync: the source and the destination are the "
                           "same store");
    }
    struct nj_store *s = nj_store_open(src, 0);
    struct nj_store *d = s ? nj_store_open(dst, NJ_STORE_CREATE) : NULL;
    struct nj_sync_stats st;
    int ret = d ? nj_sync(s, d, nd ? domains : NULL, &st, sync_line,
                          json ? stderr : stdout)
                : -1;
    if (ret < 0)
        nj_error_print(prog);
    if (d && json)
        printf("{\"copied\": %u, \"present\": %u, \"skipped\": %u, "
               "\"failed\": %u, "
               "\"chunks_copied\": %llu, \"chunks_present\": %llu, "
               "\"bytes_copied\": %llu, \"seconds\": %.3f}\n",
               st.backups_copied, st.backups_present, st.backups_skipped,
               st.backups_failed, (unsigned long long)st.chunks_copied,
               (unsigned long long)st.chunks_present,
               (unsigned long long)st.bytes_copied, st.seconds);
    else if (d) {
        char b[32];
        printf("sync: %u copied, %u already there, %u older than the "
               "destination's newest (skipped), %u failed; %llu chunks (%s) "
               "copied, %llu already there, in %.1f s\n",
               st.backups_copied, st.backups_present, st.backups_skipped,
               st.backups_failed,
               (unsigned long long)st.chunks_copied,
               nj_human_bytes(st.bytes_copied, b, sizeof b),
               (unsigned long long)st.chunks_present, st.seconds);
    }
    nj_store_close(d);
    nj_store_close(s);
    free(domains);
    return ret < 0 ? 1 : 0;
}

static int cmd_protect(int argc, char **argv)
{
    static const struct option opts[] = {
        { "store", required_argument, NULL, 's' },
        { "backup", required_argument, NULL, 'b' },
        { "off", no_argument, NULL, OPT_OFF },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *store = NULL, *id = NULL;
    bool off = false;
    int c;
    while ((c = getopt_long(argc, argv, ":s:b:h", opts, NULL)) != -1) {
        switch (c) {
        case 's': store = optarg; break;
        case 'b': id = optarg; break;
        case OPT_OFF: off = true; break;
        case 'h': usage(stdout); return 0;
        default: return bad_option(c, argv, ":s:b:h");
        }
    }
    if (optind < argc)
        return usage_error("unexpected argument '%s'", argv[optind]);
    if (!store || !id)
        return usage_error("protect needs -s STORE and -b ID");
    if (!nj_store_name_valid(id))
        return usage_error("'%s' is not a backup id", id);
    struct nj_store *s = nj_store_open(store, 0);
    struct nj_catalog *cat = s ? nj_catalog_open(s) : NULL;
    int ret = 0;
    if (!cat)
        ret = -1;
    else if (!nj_catalog_find(cat, id))
        ret = nj_error("no backup '%s' in store '%s'", id, store);
    else
        ret = nj_prune_protect(s, id, !off);
    if (ret < 0)
        nj_error_print(prog);
    nj_catalog_free(cat);
    nj_store_close(s);
    return ret < 0 ? 1 : 0;
}

/* nightjar-agent key create|show|passwd (catalog/nj-key.h). */
static int cmd_key(int argc, char **argv)
{
    static const struct option opts[] = {
        { "key-file", required_argument, NULL, OPT_KEY_FILE },
        { "passphrase-file", required_argument, NULL, OPT_PASS_FILE },
        { "new-passphrase-file", required_argument, NULL, OPT_NEW_PASS_FILE },
        { "no-passphrase", no_argument, NULL, OPT_NO_PASS },
        { "json", no_argument, NULL, OPT_KEY_JSON },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    if (argc < 2)
        return usage_error("key needs create, show or passwd");
    const char *sub = argv[1];
    bool create = !strcmp(sub, "create"), show = !strcmp(sub, "show"),
         passwd = !strcmp(sub, "passwd");
    if (!create && !show && !passwd)
        return usage_error("unknown key command '%s'", sub);
    const char *file = NULL, *pass_file = NULL, *new_pass_file = NULL;
    bool no_pass = false, json = false;
    int c;
    argc--;
    argv++;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case OPT_KEY_FILE: file = optarg; break;
        case OPT_PASS_FILE: pass_file = optarg; break;
        case OPT_NEW_PASS_FILE: new_pass_file = optarg; break;
        case OPT_NO_PASS: no_pass = true; break;
        case OPT_KEY_JSON: json = true; break;
        case 'h': usage(stdout); return 0;
        default: return bad_option(c, argv, ":h");
        }
    }
    if (optind < argc)
        return usage_error("unexpected argument '%s' (a passphrase is never "
                           "taken from the command line)", argv[optind]);
    if (!file)
        return usage_error("key %s needs --key-file FILE", sub);
    if ((show && (pass_file || new_pass_file || no_pass)) ||
        (create && new_pass_file) || (!show && json))
        return usage_error("key %s: option not for this command", sub);
    if (no_pass && (create ? pass_file != NULL : new_pass_file != NULL))
        return usage_error("--no-passphrase and a passphrase file exclude "
                           "each other");
    int ret = 0;
    if (create) {
        char *p = no_pass ? NULL
                          : nj_passphrase_get(pass_file, "NIGHTJAR_PASSPHRASE",
                                              "passphrase for the new key: ",
                                              true);
        struct nj_key k;
        ret = !no_pass && !p ? -1 : nj_key_create(file, p, NULL, &k);
        nj_passphrase_free(p);
        if (ret == 0)
            printf("created %s: fingerprint %s, %s\n", file, k.fingerprint,
                   no_pass ? "not protected by a passphrase"
                           : "protected by a passphrase (scrypt)");
        nj_key_clear(&k);
    } else if (show) {
        struct nj_key_info in;
        ret = nj_key_info(file, &in);
        if (ret == 0 && json) {
            struct json_object *o = json_object_new_object();
            json_object_object_add(o, "fingerprint",
                                   json_object_new_string(in.fingerprint));
            json_object_object_add(o, "protection", json_object_new_string(
                                                        in.wrapped ? "scrypt"
                                                                   : "none"));
            struct json_object *s = NULL;
            if (in.wrapped) {
                s = json_object_new_object();
                json_object_object_add(s, "n",
                                       json_object_new_int64((int64_t)in.kdf.n));
                json_object_object_add(s, "r", json_object_new_int64(in.kdf.r));
                json_object_object_add(s, "p", json_object_new_int64(in.kdf.p));
            }
            json_object_object_add(o, "scrypt", s);
            json_object_object_add(o, "created",
                                   json_object_new_int64(in.created));
            printf("%s\n", json_object_to_json_string(o));
            json_object_put(o);
        } else if (ret == 0) {
            printf("fingerprint: %s\n", in.fingerprint);
            if (in.wrapped)
                printf("protection: passphrase (scrypt N=%llu r=%u p=%u)\n",
                       (unsigned long long)in.kdf.n, in.kdf.r, in.kdf.p);
            else
                printf("protection: none (the key is in the clear)\n");
        }
    } else {
        struct nj_key_info in;
        char *old = NULL, *neu = NULL;
        struct nj_key k;
        memset(&k, 0, sizeof k);
        ret = nj_key_info(file, &in);
        if (ret == 0 && in.wrapped) {
            old = nj_passphrase_get(pass_file, "NIGHTJAR_PASSPHRASE",
                                    "current passphrase: ", false);
            if (!old)
                ret = -1;
        }
        if (ret == 0)
            ret = nj_key_load(file, old, &k);
        if (ret == 0 && !no_pass) {
            neu = nj_passphrase_get(new_pass_file, "NIGHTJAR_NEW_PASSPHRASE",
                                    "new passphrase: ", true);
            if (!neu)
                ret = -1;
        }
        if (ret == 0)
            ret = nj_key_rewrap(file, &k, neu, NULL);
        if (ret == 0)
            printf("%s: fingerprint %s, now %s\n", file, k.fingerprint,
                   neu ? "protected by the new passphrase"
                       : "not protected by a passphrase");
        nj_key_clear(&k);
        nj_passphrase_free(old);
        nj_passphrase_free(neu);
    }
    if (ret < 0)
        nj_error_print(prog);
    return ret < 0 ? 1 : 0;
}

static int cmd_import(int argc, char **argv)
{
    static const struct option opts[] = {
        { "store", required_argument, NULL, 's' },
        { "domain", required_argument, NULL, 'd' },
        { "level", required_argument, NULL, 'l' },
        { "disk", required_argument, NULL, OPT_DISK },
        { "bitmap", required_argument, NULL, OPT_BITMAP },
        { "format", required_argument, NULL, OPT_FORMAT },
        { "json", no_argument, NULL, OPT_JSON },
        TUNING_OPTIONS,
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    struct nj_import_args a = { .level = NJ_LEVEL_FULL };
    a.dp.progress = isatty(STDERR_FILENO);
    const char *level = NULL;
    int c, r;
    while ((c = getopt_long(argc, argv, ":s:d:l:h", opts, NULL)) != -1) {
        if ((r = parse_tuning(c, &a.dp)) != 0) {
            if (r < 0)
                return 2;
            continue;
        }
        switch (c) {
        case 's': a.store = optarg; break;
        case 'd': a.domain = optarg; break;
        case 'l': level = optarg; break;
        case OPT_DISK: a.target = optarg; break;
        case OPT_BITMAP: a.bitmap = optarg; break;
        case OPT_FORMAT:
            if (strcmp(optarg, "raw") != 0 && strcmp(optarg, "qcow2") != 0)
                return usage_error("--format: raw or qcow2, not '%s'", optarg);
            a.format = optarg;
            break;
        case OPT_JSON: a.json = true; break;
        case 'h': usage(stdout); return 0;
        default: return bad_option(c, argv, ":s:d:l:h");
        }
    }
    if (argc - optind != 1)
        return usage_error("import needs exactly one SOURCE");
    a.source = argv[optind];
    if (!a.store)
        return usage_error("a store is required (-s STORE)");
    if (!a.domain || !a.domain[0])
        return usage_error("a name is required (-d NAME)");
    if (!a.target || !a.target[0])
        return usage_error("a disk target is required (--disk TARGET)");
    if (level && (nj_level_parse(level, &a.level) < 0 ||
                  (a.level != NJ_LEVEL_FULL && a.level != NJ_LEVEL_INC)))
        return usage_error("import level must be full or inc, not '%s'", level);
    if (a.level == NJ_LEVEL_INC && !a.bitmap)
        return usage_error("an incremental import needs --bitmap NAME");
    nj_agent_install_signals();
    if (nj_agent_import(&a) < 0) {
        nj_error_print(prog);
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    /* Chunk and slot buffers are megabytes each, allocated per disk and
     * per worker.  A fixed threshold keeps them in their own mappings,
     * returned to the kernel when freed; glibc's default threshold rises
     * after the first such free and then leaves them in per-thread heaps
     * that only grow, which made the peak RSS depend on the thread count
     * and the order of frees. */
    mallopt(M_MMAP_THRESHOLD, 256 << 10);
    opterr = 0; /* bad_option() says what is wrong, once */
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
        printf("nightjar-agent %s\n", NJ_VERSION);
        return 0;
    }
    if (!strcmp(cmd, "backup"))
        return cmd_backup(argc - 1, argv + 1);
    if (!strcmp(cmd, "import"))
        return cmd_import(argc - 1, argv + 1);
    if (!strcmp(cmd, "estimate"))
        return cmd_estimate(argc - 1, argv + 1);
    if (!strcmp(cmd, "prune"))
        return cmd_prune(argc - 1, argv + 1);
    if (!strcmp(cmd, "gc"))
        return cmd_gc(argc - 1, argv + 1);
    if (!strcmp(cmd, "run"))
        return cmd_run(argc - 1, argv + 1);
    if (!strcmp(cmd, "protect"))
        return cmd_protect(argc - 1, argv + 1);
    if (!strcmp(cmd, "sync"))
        return cmd_sync(argc - 1, argv + 1);
    if (!strcmp(cmd, "key"))
        return cmd_key(argc - 1, argv + 1);
    return usage_error("unknown command '%s'", cmd);
}
