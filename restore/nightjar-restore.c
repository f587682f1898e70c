/*
 * nightjar-restore: list, restore and verify backups, offline.
 *
 *   nightjar-restore list    -s STORE [-d DOMAIN] [--json]
 *   nightjar-restore restore -s STORE -d DOMAIN [-b ID|latest] --disk TARGET
 *                            -o OUTPUT [-f raw|qcow2] [--force] [--mode OCTAL]
 *   nightjar-restore verify  -s STORE [-d DOMAIN] [-b ID] [--json]
 *
 * Exit status: 0 success, 1 failure (verify: damage found), 2 usage,
 * 128 + the signal number when a restore is interrupted (130 SIGINT,
 * 143 SIGTERM, 129 SIGHUP).
 *
 * Signals during a restore: SIGINT, SIGTERM and SIGHUP are blocked in every
 * thread and taken by one signal thread.  The first one abandons the
 * outputs (nj_output_abort_all: the partial file is removed at once, a
 * qemu-nbd child is killed, every later write fails), the restore then
 * unwinds as from any failure, and main prints one line saying so; a block
 * device is left as it is and the line says it is incomplete.  When no
 * output is open the signal thread exits at once; a second signal exits at
 * once whatever the state.
 *
 * Every string that comes from the store (domain names, ids, disk targets,
 * and error messages, which quote them) is printed through nj_str_escape,
 * so that a forged name cannot add table rows or send terminal escapes.
 * The JSON output is escaped by json-c.
 */
#include "nj-restore.h"
#include "nj-util.h"

#include <getopt.h>
#include <pthread.h>
#include <signal.h>
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
        "                          [-f raw|qcow2] [--force] [--mode OCTAL] [--threads N]\n"
        "       %s verify  -s STORE [-d DOMAIN] [-b ID] [--json] [--threads N]\n"
        "       %s --version\n"
        "\n"
        "restore writes a new file and renames it to OUTPUT when it is complete;\n"
        "an existing OUTPUT (file or symbolic link; the link itself, never its\n"
        "target) is replaced only with --force, and is left as it was if the\n"
        "restore fails or is interrupted.  A block device is written in place\n"
        "(--force).  --mode OCTAL sets the new file's permissions (default 0600,\n"
        "whatever the umask).  Interrupted (SIGINT, SIGTERM, SIGHUP): the partial\n"
        "file is removed, exit status 128 + the signal number.\n",
        prog, prog, prog, prog);
}

/* Print the last error, escaped: it may quote names from the store. */
static int die(void)
{
    const char *e = nj_error_get();
    NJ_CLEANUP_FREE char *safe = nj_str_escape(e[0] ? e : "unknown error");
    fprintf(stderr, "%s: %s\n", prog, safe);
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
    mode_t mode;
};

enum { OPT_JSON = 256, OPT_DISK, OPT_FORCE, OPT_THREADS, OPT_MODE };

/* An octal mode of 1 to 4 digits, at most 0777. */
static int parse_mode(const char *s, mode_t *out)
{
    size_t n = strlen(s);
    if (n == 0 || n > 4 || strspn(s, "01234567") != n)
        return -1;
    unsigned long v = strtoul(s, NULL, 8);
    if (v > 0777)
        return -1;
    *out = (mode_t)v;
    return 0;
}

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
        { "mode", required_argument, NULL, OPT_MODE },
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
        case OPT_MODE:
            if (parse_mode(optarg, &a->mode) < 0)
                return usage_error("--mode: '%s' is not an octal mode from 0 "
                                   "to 0777", optarg);
            break;
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
            NJ_CLEANUP_FREE char *id = nj_str_escape(m->id);
            NJ_CLEANUP_FREE char *dom = nj_str_escape(m->domain_name);
            NJ_CLEANUP_FREE char *parent =
                nj_str_escape(m->parent ? m->parent : "-");
            printf("%-26s %-20s %-5s %-19s %-26s", id, dom,
                   nj_level_name(m->level), when, parent);
            for (size_t k = 0; k < m->ndisks; k++) {
                NJ_CLEANUP_FREE char *t = nj_str_escape(m->disks[k].target);
                printf("%s%s(%s)", k ? "," : " ", t,
                       nj_human_bytes(m->disks[k].size, sz, sizeof sz));
            }
            printf("\n");
        }
    }
    for (size_t i = 0; i < nj_catalog_broken_count(c); i++) {
        NJ_CLEANUP_FREE char *id = nj_str_escape(nj_catalog_broken_id(c, i));
        NJ_CLEANUP_FREE char *err =
            nj_str_escape(nj_catalog_broken_error(c, i));
        fprintf(stderr, "%s: warning: backup '%s' is unreadable: %s\n", prog,
                id, err);
    }
    return 0;
}

/* ---- signals ---- */

static sigset_t stop_signals;
static int signal_seen; /* the first stop signal, atomic */

static const char *signal_name(int sig)
{
    switch (sig) {
    case SIGINT: return "SIGINT";
    case SIGTERM: return "SIGTERM";
    case SIGHUP: return "SIGHUP";
    default: return "a signal";
    }
}

static void *signal_thread(void *arg)
{
    (void)arg;
    for (;;) {
        int sig = 0;
        if (sigwait(&stop_signals, &sig) != 0)
            continue;
        int first = 0;
        if (__atomic_compare_exchange_n(&signal_seen, &first, sig, false,
                                        __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
            /* With an output open, the restore unwinds and main reports. */
            if (nj_output_abort_all() > 0)
                continue;
            fprintf(stderr, "%s%s: interrupted by %s\n",
                    isatty(STDERR_FILENO) ? "\n" : "", prog,
                    signal_name(sig));
        } else {
            fprintf(stderr, "%s: interrupted again by %s; exiting now\n",
                    prog, signal_name(sig));
        }
        _exit(128 + sig);
    }
    return NULL;
}

/* Take SIGINT, SIGTERM and SIGHUP in one thread: blocked here, before any
 * other thread exists, so that every thread inherits the mask.  Helpers
 * (qemu-img, qemu-nbd) get an empty mask back (nj-output.c). */
static int signals_start(void)
{
    static const int sigs[] = { SIGINT, SIGTERM, SIGHUP };
    sigemptyset(&stop_signals);
    for (size_t i = 0; i < NJ_ARRAY_SIZE(sigs); i++) {
        /* A signal ignored by whoever started us (nohup, a background job
         * of a shell) stays ignored. */
        struct sigaction old;
        if (sigaction(sigs[i], NULL, &old) == 0 && old.sa_handler == SIG_IGN)
            continue;
        sigaddset(&stop_signals, sigs[i]);
    }
    int e = pthread_sigmask(SIG_BLOCK, &stop_signals, NULL);
    pthread_t tid;
    if (e == 0)
        e = pthread_create(&tid, NULL, signal_thread, NULL);
    if (e == 0)
        e = pthread_detach(tid);
    if (e != 0)
        return nj_error_errno(e, "cannot start the signal thread");
    return 0;
}

/* The one line for an interrupted restore. */
static int interrupted(bool in_place, const char *output)
{
    int sig = __atomic_load_n(&signal_seen, __ATOMIC_SEQ_CST);
    const char *nl = isatty(STDERR_FILENO) ? "\n" : "";
    if (in_place)
        fprintf(stderr, "%s%s: interrupted by %s; block device '%s' is "
                "incomplete\n", nl, prog, signal_name(sig), output);
    else
        fprintf(stderr, "%s%s: interrupted by %s; partial output removed\n",
                nl, prog, signal_name(sig));
    return 128 + sig;
}

static bool was_interrupted(void)
{
    return __atomic_load_n(&signal_seen, __ATOMIC_SEQ_CST) != 0;
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
    struct nj_output_opts oo = { .force = a->force, .mode = a->mode };
    struct nj_output *out = nj_output_open_opts(a->output, fmt, d->size, &oo);
    if (!out)
        return was_interrupted() ? interrupted(false, a->output) : die();
    bool in_place = out->in_place;
    struct nj_restore_opts ro = { .threads = a->threads,
                                  .progress = isatty(STDERR_FILENO) };
    struct nj_restore_stats st = { 0 };
    int r = nj_restore_disk(s, c, m, target, out, &ro, &st);
    if (r < 0) {
        nj_output_close(out, false);
        if (was_interrupted())
            return interrupted(in_place, a->output);
        if (in_place)
            nj_error_prefix("restore of '%s' failed, block device '%s' is "
                            "incomplete", target, a->output);
        else
            nj_error_prefix("restore of '%s' failed, nothing written to '%s'",
                            target, a->output);
        return die();
    }
    if (nj_output_close(out, true) < 0)
        return was_interrupted() ? interrupted(in_place, a->output) : die();
    if (was_interrupted()) {
        fprintf(stderr, "%s: interrupted by %s after the restore to '%s' "
                "was complete; it is kept\n", prog,
                signal_name(__atomic_load_n(&signal_seen, __ATOMIC_SEQ_CST)),
                a->output);
        return 128 + __atomic_load_n(&signal_seen, __ATOMIC_SEQ_CST);
    }
    if (isatty(STDERR_FILENO)) {
        char b1[32], b2[32];
        NJ_CLEANUP_FREE char *t = nj_str_escape(target);
        NJ_CLEANUP_FREE char *id = nj_str_escape(m->id);
        fprintf(stderr, "%s: restored '%s' of backup %s to '%s': %s data, "
                "%s zero\n", prog, t, id, a->output,
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
    struct args a = { .mode = 0600 };
    int r = parse_args(argc - 1, argv + 1, &a);
    if (r)
        return r;
    if (fn == cmd_restore && signals_start() < 0)
        return die();
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
