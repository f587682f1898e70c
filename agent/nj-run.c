/*
 * nj-run.c: `nightjar-agent run --config FILE`: the nightly service.
 *
 * At each time the configured calendar names: back up every domain of the
 * connection that matches the patterns (at most `concurrency` at once,
 * each as a child `nightjar-agent backup`, so that one domain's failure or
 * crash cannot take the others down), then prune with the retention rules
 * and collect garbage.  One log line per job on stderr (journald reads
 * it), and a Prometheus textfile-collector status file.
 *
 * A run that the host missed (it was down at the scheduled time) is made
 * once at start-up: the state file records the last scheduled time served.
 * SIGTERM or SIGINT stops the service: running backups get SIGTERM and
 * roll back (nothing committed is touched), and the state is saved.  A
 * run that was stopped does not count as served: the next start makes it.
 *
 * The clock can be simulated (--simulate-from, --simulate-runs): each run
 * then happens at the next scheduled time of a virtual clock, with no
 * sleeping, and the backups are stamped with that time
 * (NIGHTJAR_FAKE_NOW), so that tests can drive weeks of nights in seconds.
 */
#include "nj-agent.h"
#include "nj-io.h"
#include "nj-prune.h"
#include "nj-schedule.h"
#include "nj-sync.h"
#include "nj-util.h"
#include "nj-virt.h"

#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <json-c/json.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct result {
    char *name, *uuid;
    bool ok;
    int64_t finished;
    double seconds;
    uint64_t bytes_read, bytes_stored;
    char level[8];
};

struct service {
    const struct nj_run_opts *o;
    struct nj_config *cfg;
    struct result *res; /* per domain, kept across runs */
    size_t nres;
    int64_t last_served;
    uint64_t gc_freed;
    int64_t last_run;
};

static void logline(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logline(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "nightjar: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

static struct result *result_for(struct service *sv, const char *name,
                                 const char *uuid)
{
    for (size_t i = 0; i < sv->nres; i++)
        if (!strcmp(sv->res[i].uuid, uuid)) {
            if (strcmp(sv->res[i].name, name) != 0) { /* renamed */
                free(sv->res[i].name);
                sv->res[i].name = nj_strdup(name);
            }
            return &sv->res[i];
        }
    sv->res = nj_realloc_array(sv->res, sv->nres + 1, sizeof *sv->res);
    struct result *r = &sv->res[sv->nres++];
    memset(r, 0, sizeof *r);
    r->name = nj_strdup(name);
    r->uuid = nj_strdup(uuid);
    return r;
}

/* ---- state and status files ----
 *
 * Both files are replaced whole: the new text goes to a temporary file
 * created exclusively (O_EXCL, a random name) in the same directory, is
 * fsync'ed, renamed over the old name (rename replaces a symlink planted
 * there, it never writes through one), and the directory is fsync'ed so
 * that the rename itself survives a crash.
 *
 * The state file is read as hostile input: it may sit in a directory
 * others can write, and a hand edit may break it.  It is opened without
 * following a symlink and without blocking on a FIFO, must be a regular
 * file of at most STATE_MAX bytes, and every value is checked for its
 * JSON type and range before use.  A bad value costs that value (with a
 * warning), never the service: a bad last_served counts as "never
 * served", a bad domain entry is dropped.  The uuid and name of an entry
 * end up as labels in the status file: the uuid must have the canonical
 * 36-character form, the name must be UTF-8 without control characters,
 * and every label value is escaped anyway.
 */

#define STATE_MAX (1 << 20)
/* Times in the state file: from the epoch to the end of year 9999. */
#define TIME_MAX INT64_C(253402300799)
#define NAME_MAX_LEN 1024

/* 8-4-4-4-12 lowercase hex digits, as libvirt and nj_agent_name_uuid
 * print them. */
static bool uuid_ok(const char *s)
{
    if (strlen(s) != 36)
        return false;
    for (int i = 0; i < 36; i++) {
        bool dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash ? s[i] != '-'
                 : !((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    }
    return true;
}

/* Non-empty, at most NAME_MAX_LEN bytes of valid UTF-8, no control
 * characters. */
static bool name_ok(const char *s, size_t len)
{
    if (len == 0 || len > NAME_MAX_LEN || strlen(s) != len)
        return false;
    const unsigned char *p = (const unsigned char *)s, *e = p + len;
    while (p < e) {
        unsigned c = *p;
        size_t n = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3
                              : (c & 0xf8) == 0xf0 ? 4 : 0;
        if (n == 0 || (size_t)(e - p) < n)
            return false;
        if (n == 1 && (c < 0x20 || c == 0x7f))
            return false;
        uint32_t cp = n == 1 ? c : c & (0x7fu >> n);
        for (size_t k = 1; k < n; k++) {
            if ((p[k] & 0xc0) != 0x80)
                return false;
            cp = cp << 6 | (p[k] & 0x3fu);
        }
        /* overlong forms, surrogates, beyond U+10FFFF, C1 controls */
        static const uint32_t min[] = { 0, 0, 0x80, 0x800, 0x10000 };
        if (cp < min[n] || (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff ||
            (cp >= 0x80 && cp <= 0x9f))
            return false;
        p += n;
    }
    return true;
}

/* An integer member key of o in [0, TIME_MAX]: 1 and *out set; 0 when
 * absent; -1 when present with a wrong type or out of range. */
static int get_time(struct json_object *o, const char *key, int64_t *out)
{
    struct json_object *v = NULL;
    if (!json_object_object_get_ex(o, key, &v))
        return 0;
    if (!json_object_is_type(v, json_type_int))
        return -1;
    errno = 0;
    int64_t t = json_object_get_int64(v);
    if (errno != 0 || t < 0 || t > TIME_MAX)
        return -1;
    *out = t;
    return 1;
}

/* The text of the state file, or NULL: *missing tells "no such file"
 * (not worth a warning) from every other failure (last error set). */
static char *read_state_text(const char *path, bool *missing)
{
    *missing = false;
    size_t len = 0;
    /* no symlink followed, no FIFO waited on, at most STATE_MAX bytes */
    NJ_CLEANUP_FREE char *text = nj_read_file(AT_FDCWD, path, STATE_MAX, &len);
    if (!text) {
        *missing = errno == ENOENT;
        return NULL;
    }
    if (strlen(text) != len) {
        nj_error("'%s' holds a NUL byte", path);
        return NULL;
    }
    return NJ_STEAL(&text);
}

/* One entry of "domains"; a warning and nothing else when it is bad. */
static void load_state_domain(struct service *sv, const char *path, size_t i,
                              struct json_object *d)
{
    struct json_object *n = NULL, *u = NULL;
    int64_t t = 0;
    const char *why = NULL;
    if (!json_object_is_type(d, json_type_object))
        why = "not an object";
    else if (!json_object_object_get_ex(d, "name", &n) ||
             !json_object_is_type(n, json_type_string))
        why = "no \"name\" string";
    else if (!name_ok(json_object_get_string(n),
                      (size_t)json_object_get_string_len(n)))
        why = "\"name\" is empty, too long, not UTF-8 or holds control "
              "characters";
    else if (!json_object_object_get_ex(d, "uuid", &u) ||
             !json_object_is_type(u, json_type_string))
        why = "no \"uuid\" string";
    else if (!uuid_ok(json_object_get_string(u)) ||
             (size_t)json_object_get_string_len(u) != 36)
        why = "\"uuid\" is not a UUID (36 characters, 8-4-4-4-12 lowercase hex)";
    else if (get_time(d, "last_success", &t) < 0)
        why = "\"last_success\" is not a number of seconds since 1970";
    else
        for (size_t k = 0; k < sv->nres; k++)
            if (!strcmp(sv->res[k].uuid, json_object_get_string(u)))
                why = "a second entry for this uuid";
    if (why) {
        logline("warning: state file '%s': domains[%zu] ignored: %s", path, i,
                why);
        return;
    }
    struct result *r = result_for(sv, json_object_get_string(n),
                                  json_object_get_string(u));
    r->finished = t;
}

static void load_state(struct service *sv)
{
    const char *path = sv->cfg->state_file;
    bool missing = false;
    NJ_CLEANUP_FREE char *text = read_state_text(path, &missing);
    if (!text) {
        if (!missing)
            logline("warning: state file ignored: %s", nj_error_get());
        return;
    }
    struct json_object *o = json_tokener_parse(text);
    if (!o || !json_object_is_type(o, json_type_object)) {
        logline("warning: state file '%s' ignored: not a JSON object", path);
        json_object_put(o);
        return;
    }
    if (get_time(o, "last_served", &sv->last_served) < 0) {
        sv->last_served = 0;
        logline("warning: state file '%s': \"last_served\" ignored: not a "
                "number of seconds since 1970", path);
    }
    struct json_object *doms = NULL;
    if (json_object_object_get_ex(o, "domains", &doms)) {
        if (!json_object_is_type(doms, json_type_array))
            logline("warning: state file '%s': \"domains\" ignored: not an "
                    "array", path);
        else
            for (size_t i = 0; i < json_object_array_length(doms); i++)
                load_state_domain(sv, path, i,
                                  json_object_array_get_idx(doms, i));
    }
    json_object_put(o);
}

static void save_state(struct service *sv)
{
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "last_served", json_object_new_int64(sv->last_served));
    struct json_object *doms = json_object_new_array();
    for (size_t i = 0; i < sv->nres; i++) {
        struct json_object *d = json_object_new_object();
        json_object_object_add(d, "name", json_object_new_string(sv->res[i].name));
        json_object_object_add(d, "uuid", json_object_new_string(sv->res[i].uuid));
        json_object_object_add(d, "last_success", json_object_new_int64(sv->res[i].finished));
        json_object_array_add(doms, d);
    }
    json_object_object_add(o, "domains", doms);
    NJ_CLEANUP_FREE char *text = nj_asprintf("%s\n", json_object_to_json_string(o));
    json_object_put(o);
    /* 0600: it names the domains, and only the service reads it */
    if (nj_write_file_atomic(sv->cfg->state_file, text, strlen(text), 0600,
                             true) < 0)
        logline("warning: state file: %s", nj_error_get());
}

/* A Prometheus label value: backslash, double quote and newline escaped,
 * as the text exposition format defines. */
static char *label(const char *s)
{
    size_t n = 0;
    char *out = nj_malloc(2 * strlen(s) + 1);
    for (; *s; s++) {
        if (*s == '\\' || *s == '"') {
            out[n++] = '\\';
            out[n++] = *s;
        } else if (*s == '\n') {
            out[n++] = '\\';
            out[n++] = 'n';
        } else {
            out[n++] = *s;
        }
    }
    out[n] = '\0';
    return out;
}

static void write_status(struct service *sv)
{
    if (!sv->cfg->status_file)
        return;
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f) {
        logline("warning: status file: %s", strerror(errno));
        return;
    }
    fprintf(f, "# HELP nightjar_backup_success 1 if the last backup of the domain succeeded.\n"
               "# TYPE nightjar_backup_success gauge\n");
    for (size_t i = 0; i < sv->nres; i++) {
        NJ_CLEANUP_FREE char *l = label(sv->res[i].name);
        NJ_CLEANUP_FREE char *u = label(sv->res[i].uuid);
        fprintf(f, "nightjar_backup_success{domain=\"%s\",uuid=\"%s\"} %d\n", l,
                u, sv->res[i].ok ? 1 : 0);
    }
    static const struct { const char *name, *help; } m[] = {
        { "nightjar_backup_last_success_timestamp_seconds",
          "Time the last successful backup of the domain finished." },
        { "nightjar_backup_duration_seconds", "Duration of the last backup." },
        { "nightjar_backup_bytes_read", "Bytes the last backup read." },
        { "nightjar_backup_bytes_stored", "Bytes the last backup added to the store." },
    };
    for (size_t k = 0; k < NJ_ARRAY_SIZE(m); k++) {
        fprintf(f, "# HELP %s %s\n# TYPE %s gauge\n", m[k].name, m[k].help,
                m[k].name);
        for (size_t i = 0; i < sv->nres; i++) {
            const struct result *r = &sv->res[i];
            NJ_CLEANUP_FREE char *l = label(r->name);
            NJ_CLEANUP_FREE char *u = label(r->uuid);
            double v = k == 0 ? (double)r->finished
                       : k == 1 ? r->seconds
                       : k == 2 ? (double)r->bytes_read
                                : (double)r->bytes_stored;
            fprintf(f, "%s{domain=\"%s\",uuid=\"%s\"} %.17g\n", m[k].name, l,
                    u, v);
        }
    }
    fprintf(f, "# HELP nightjar_gc_bytes_freed_total Bytes freed by garbage collection since the service started.\n"
               "# TYPE nightjar_gc_bytes_freed_total counter\n"
               "nightjar_gc_bytes_freed_total %llu\n"
               "# HELP nightjar_scheduler_last_run_timestamp_seconds Time the last scheduled run started.\n"
               "# TYPE nightjar_scheduler_last_run_timestamp_seconds gauge\n"
               "nightjar_scheduler_last_run_timestamp_seconds %lld\n",
            (unsigned long long)sv->gc_freed, (long long)sv->last_run);
    if (fclose(f) != 0) {
        logline("warning: status file: %s", strerror(errno));
        free(text);
        return;
    }
    /* 0644: a textfile collector running as another user reads it */
    if (nj_write_file_atomic(sv->cfg->status_file, text, strlen(text), 0644,
                             true) < 0)
        logline("warning: status file: %s", nj_error_get());
    free(text);
}

/* ---- jobs ---- */

struct child {
    pid_t pid;
    int out;             /* the child's stdout (JSON result) */
    int err;             /* the child's stderr */
    char *name, *uuid;
    double started;
};

static char *self_exe(void)
{
    char buf[4096];
    ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
    if (n <= 0)
        return nj_strdup("nightjar-agent");
    buf[n] = '\0';
    return nj_strdup(buf);
}

static bool spawn(struct service *sv, struct child *c, int64_t fake_now)
{
    const struct nj_config *cfg = sv->cfg;
    /* Unlinked temporary files, not pipes: a child never blocks on a full
     * pipe while we wait for it, however much it writes. */
    FILE *fo = tmpfile(), *fe = tmpfile();
    if (!fo || !fe) {
        if (fo)
            fclose(fo);
        if (fe)
            fclose(fe);
        return false;
    }
    int out[2] = { fcntl(fileno(fo), F_DUPFD_CLOEXEC, 0),
                    fcntl(fileno(fo), F_DUPFD_CLOEXEC, 0) };
    int err[2] = { fcntl(fileno(fe), F_DUPFD_CLOEXEC, 0),
                    fcntl(fileno(fe), F_DUPFD_CLOEXEC, 0) };
    fclose(fo);
    fclose(fe);
    if (out[0] < 0 || out[1] < 0 || err[0] < 0 || err[1] < 0) {
        for (int i = 0; i < 2; i++) {
            if (out[i] >= 0)
                close(out[i]);
            if (err[i] >= 0)
                close(err[i]);
        }
        return false;
    }
    NJ_CLEANUP_FREE char *exe = self_exe();
    char chain[16], age[16];
    snprintf(chain, sizeof chain, "%u", cfg->max_chain);
    snprintf(age, sizeof age, "%u", cfg->max_age_days);
    char *argv[] = { exe, (char *)"backup", (char *)"-c", cfg->uri,
                     (char *)"-s", cfg->store, (char *)"-d", c->uuid,
                     (char *)"-l", cfg->level, (char *)"--max-chain", chain,
                     (char *)"--max-age", age, (char *)"--scratch-dir",
                     cfg->scratch_dir, (char *)"--json", NULL, NULL, NULL };
    if (cfg->zstd_level) {
        argv[NJ_ARRAY_SIZE(argv) - 3] = (char *)"--zstd-level";
        argv[NJ_ARRAY_SIZE(argv) - 2] = cfg->zstd_level;
    }
    c->pid = fork();
    if (c->pid < 0) {
        close(out[0]); close(out[1]); close(err[0]); close(err[1]);
        return false;
    }
    if (c->pid == 0) {
        dup2(out[1], 1);
        dup2(err[1], 2);
        if (fake_now > 0) {
            char t[32];
            snprintf(t, sizeof t, "%lld", (long long)fake_now);
            setenv("NIGHTJAR_FAKE_NOW", t, 1);
        }
        signal(SIGTERM, SIG_DFL);
        signal(SIGINT, SIG_DFL);
        execv(argv[0], argv);
        fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    close(out[1]);
    close(err[1]);
    c->out = out[0];
    c->err = err[0];
    c->started = nj_mono_sec();
    return true;
}

static char *slurp(int fd)
{
    lseek(fd, 0, SEEK_SET);
    size_t len = 0, cap = 4096;
    char *buf = nj_malloc(cap);
    ssize_t r;
    while ((r = read(fd, buf + len, cap - len - 1)) != 0) {
        if (r < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        len += (size_t)r;
        if (cap - len < 2)
            buf = nj_realloc_array(buf, cap *= 2, 1);
    }
    buf[len] = '\0';
    close(fd);
    return buf;
}

static void finish(struct service *sv, struct child *c, int status)
{
    NJ_CLEANUP_FREE char *out = slurp(c->out);
    NJ_CLEANUP_FREE char *err = slurp(c->err);
    struct result *r = result_for(sv, c->name, c->uuid);
    r->seconds = nj_mono_sec() - c->started;
    struct json_object *o = json_tokener_parse(out);
    bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0 && o;
    r->ok = ok;
    if (ok) {
        /* (our own child's output, but a wrong type must not abort:
         * json-c asserts on an array call with a non-array) */
        struct json_object *v = NULL, *disks = NULL;
        r->bytes_read = r->bytes_stored = 0;
        if (json_object_object_get_ex(o, "disks", &disks) &&
            json_object_is_type(disks, json_type_array))
            for (size_t i = 0; i < json_object_array_length(disks); i++) {
                struct json_object *d = json_object_array_get_idx(disks, i);
                struct json_object *br = NULL, *bs = NULL;
                if (json_object_object_get_ex(d, "bytes_read", &br) &&
                    json_object_is_type(br, json_type_int))
                    r->bytes_read += json_object_get_uint64(br);
                if (json_object_object_get_ex(d, "bytes_stored", &bs) &&
                    json_object_is_type(bs, json_type_int))
                    r->bytes_stored += json_object_get_uint64(bs);
            }
        int64_t t = 0;
        if (get_time(o, "time", &t) > 0)
            r->finished = t;
        snprintf(r->level, sizeof r->level, "%s",
                 json_object_object_get_ex(o, "level", &v) ? json_object_get_string(v) : "?");
        char a[32], b[32];
        logline("backup '%s': ok, %s %s, read %s, stored %s, %.1f s", c->name,
                r->level,
                json_object_object_get_ex(o, "id", &v) ? json_object_get_string(v) : "?",
                nj_human_bytes(r->bytes_read, a, sizeof a),
                nj_human_bytes(r->bytes_stored, b, sizeof b), r->seconds);
    } else {
        /* The child's last non-empty line says why. */
        char *last = err, *p = err;
        while ((p = strchr(p, '\n')) != NULL) {
            if (p[1])
                last = p + 1;
            *p++ = '\0';
        }
        logline("backup '%s': FAILED (%s): %s", c->name,
                WIFSIGNALED(status) ? "killed" : "exit status",
                *last ? last : "no message");
    }
    json_object_put(o);
    free(c->name);
    free(c->uuid);
}

/* Domains of the connection that the configuration selects. */
static int select_domains(const struct nj_config *cfg, char ***names,
                          char ***uuids, size_t *n)
{
    virConnectPtr conn = nj_virt_connect(cfg->uri);
    if (!conn)
        return -1;
    virDomainPtr *doms = NULL;
    int cnt = virConnectListAllDomains(conn, &doms, 0);
    if (cnt < 0) {
        nj_virt_error("list domains");
        virConnectClose(conn);
        return -1;
    }
    *names = nj_calloc((size_t)cnt + 1, sizeof **names);
    *uuids = nj_calloc((size_t)cnt + 1, sizeof **uuids);
    *n = 0;
    for (int i = 0; i < cnt; i++) {
        const char *name = virDomainGetName(doms[i]);
        char uuid[VIR_UUID_STRING_BUFLEN];
        bool want = false;
        for (char **p = cfg->domains; p && *p; p++)
            want |= fnmatch(*p, name, 0) == 0;
        for (char **p = cfg->exclude; p && *p; p++)
            want &= fnmatch(*p, name, 0) != 0;
        if (want && virDomainGetUUIDString(doms[i], uuid) == 0) {
            (*names)[*n] = nj_strdup(name);
            (*uuids)[(*n)++] = nj_strdup(uuid);
        }
        virDomainFree(doms[i]);
    }
    free(doms);
    virConnectClose(conn);
    return 0;
}

static void sync_logline(void *arg, const char *line)
{
    (void)arg;
    logline("sync: %s", line);
}

/* The off-site copy after a run: every backup the destination lacks. */
static void run_sync(struct nj_store *s, const char *to)
{
    struct nj_store *d = nj_store_open(to, NJ_STORE_CREATE);
    if (!d) {
        logline("sync: %s", nj_error_get());
        return;
    }
    struct nj_sync_stats st;
    int r = nj_sync(s, d, NULL, &st, sync_logline, NULL);
    char a[32];
    logline("sync: to '%s': %u backup(s) copied, %u already there, %u "
            "failed; %llu chunk(s) copied (%s), %.1f s%s", to,
            st.backups_copied, st.backups_present, st.backups_failed,
            (unsigned long long)st.chunks_copied,
            nj_human_bytes(st.bytes_copied, a, sizeof a), st.seconds,
            r < 0 ? " (some failed)" : "");
    nj_store_close(d);
}

/* One scheduled run: backups, then prune, gc and the sync. */
static void run_once(struct service *sv, int64_t fake_now)
{
    const struct nj_config *cfg = sv->cfg;
    sv->last_run = fake_now > 0 ? fake_now : (int64_t)time(NULL);
    char **names = NULL, **uuids = NULL;
    size_t n = 0;
    if (select_domains(cfg, &names, &uuids, &n) < 0) {
        logline("run: %s", nj_error_get());
        return;
    }
    logline("run: %zu domain(s), at most %u at once", n, cfg->concurrency);
    struct child *kids = nj_calloc(cfg->concurrency, sizeof *kids);
    size_t next = 0, running = 0;
    bool stopping = false;
    while (next < n || running > 0) {
        while (!stopping && running < cfg->concurrency && next < n) {
            struct child *c = &kids[0];
            for (unsigned k = 0; k < cfg->concurrency; k++)
                if (kids[k].pid == 0) {
                    c = &kids[k];
                    break;
                }
            c->name = names[next];
            c->uuid = uuids[next];
            names[next] = uuids[next] = NULL;
            next++;
            if (spawn(sv, c, fake_now))
                running++;
            else {
                logline("backup '%s': FAILED: cannot start: %s", c->name,
                        strerror(errno));
                free(c->name);
                free(c->uuid);
                memset(c, 0, sizeof *c);
            }
        }
        if (nj_agent_interrupted && !stopping) {
            stopping = true;
            logline("stopping: ending %zu running backup(s)", running);
            for (unsigned k = 0; k < cfg->concurrency; k++)
                if (kids[k].pid > 0)
                    kill(kids[k].pid, SIGTERM);
            next = n; /* start nothing more */
        }
        if (running == 0)
            break;
        int status = 0;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid == 0) {
            /* Polled: a signal that came just before a blocking wait
             * would go unnoticed until a backup ended by itself. */
            struct timespec ts = { 0, 100 * 1000 * 1000 };
            nanosleep(&ts, NULL);
            continue;
        }
        if (pid < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        for (unsigned k = 0; k < cfg->concurrency; k++)
            if (kids[k].pid == pid) {
                finish(sv, &kids[k], status);
                memset(&kids[k], 0, sizeof kids[k]);
                running--;
            }
    }
    free(kids);
    nj_strv_free(names);
    nj_strv_free(uuids);
    if (stopping || nj_agent_interrupted)
        return;

    struct nj_store *s = nj_store_open(cfg->store, 0);
    if (!s) {
        logline("prune: %s", nj_error_get());
        return;
    }
    if (!nj_keep_rules_empty(&cfg->keep)) {
        struct nj_prune_decision *d = NULL;
        size_t nd = 0;
        if (nj_prune_plan(s, NULL, &cfg->keep, &d, &nd) < 0) {
            logline("prune: %s", nj_error_get());
        } else {
            /* Only domains this configuration manages. */
            for (size_t i = 0; i < nd; i++) {
                bool mine = false;
                for (char **p = cfg->domains; p && *p; p++)
                    mine |= fnmatch(*p, d[i].domain, 0) == 0;
                for (char **p = cfg->exclude; p && *p; p++)
                    mine &= fnmatch(*p, d[i].domain, 0) != 0;
                if (!mine && d[i].mark == NJ_MARK_REMOVE)
                    d[i].mark = NJ_MARK_KEEP;
            }
            int r = nj_prune_apply(s, d, nd);
            size_t removed = 0;
            for (size_t i = 0; i < nd; i++) {
                removed += d[i].removed;
                if (d[i].error)
                    logline("prune: %s: %s", d[i].id, d[i].error);
            }
            logline("prune: removed %zu of %zu backup(s)%s", removed, nd,
                    r < 0 ? " (some failed)" : "");
        }
        nj_prune_plan_free(d, nd);
    }
    if (cfg->gc) {
        struct nj_gc_stats st;
        if (nj_gc(s, cfg->gc_grace, &st) < 0) {
            logline("gc: %s", nj_error_get());
        } else {
            char a[32];
            sv->gc_freed += st.bytes_freed;
            logline("gc: freed %llu chunk(s), %s, kept %llu, %.1f s",
                    (unsigned long long)st.chunks_freed,
                    nj_human_bytes(st.bytes_freed, a, sizeof a),
                    (unsigned long long)st.chunks_kept, st.seconds);
        }
    }
    if (cfg->sync_to)
        run_sync(s, cfg->sync_to);
    nj_store_close(s);
}

/* Sleep until t (real clock), waking for signals. */
static void sleep_until(int64_t t)
{
    while (!nj_agent_interrupted) {
        int64_t now = (int64_t)time(NULL);
        if (now >= t)
            return;
        struct timespec ts = { NJ_MIN(t - now, (int64_t)60), 0 };
        nanosleep(&ts, NULL); /* EINTR on a signal */
    }
}

/* The config file's S3 settings reach this process's store opens and the
 * backups it starts as the AWS variables they stand for; a variable the
 * environment already sets wins, as nj-s3.h orders the sources. */
static void export_s3_settings(const struct nj_config *c)
{
    static const char *const map[][2] = {
        { "s3-endpoint", "AWS_ENDPOINT_URL" },
        { "s3-region", "AWS_REGION" },
        { "s3-access-key-id", "AWS_ACCESS_KEY_ID" },
        { "s3-secret-access-key", "AWS_SECRET_ACCESS_KEY" },
        { "s3-session-token", "AWS_SESSION_TOKEN" },
        { "s3-ca-file", "AWS_CA_BUNDLE" },
    };
    for (size_t i = 0; c->s3 && c->s3[i]; i += 2)
        for (size_t k = 0; k < NJ_ARRAY_SIZE(map); k++)
            if (strcmp(c->s3[i], map[k][0]) == 0)
                setenv(map[k][1], c->s3[i + 1], 0);
}

int nj_agent_run(const struct nj_run_opts *o)
{
    nj_virt_init();
    struct service sv = { .o = o };
    sv.cfg = nj_config_load(o->config);
    if (!sv.cfg)
        return -1;
    export_s3_settings(sv.cfg);
    load_state(&sv);
    bool sim = o->simulate_from > 0;
    int64_t now = sim ? o->simulate_from : (int64_t)time(NULL);
    logline("service started: store '%s', schedule '%s'%s", sv.cfg->store,
            sv.cfg->schedule_text, sim ? " (simulated clock)" : "");
    if (o->once) {
        run_once(&sv, 0);
        write_status(&sv);
        save_state(&sv);
    } else {
        /* A run the host missed: serve the last scheduled time once. */
        int64_t prev = nj_calendar_prev(&sv.cfg->schedule, now);
        if (prev > 0 && sv.last_served > 0 && sv.last_served < prev) {
            logline("missed the run of %lld: running now", (long long)prev);
            run_once(&sv, sim ? now : 0);
            if (!nj_agent_interrupted)
                sv.last_served = prev;
            write_status(&sv);
            save_state(&sv);
        } else if (sv.last_served == 0 && prev > 0) {
            sv.last_served = prev; /* first start: begin with the next */
            save_state(&sv);
        }
        unsigned runs = 0;
        while (!nj_agent_interrupted && (!sim || runs < o->simulate_runs)) {
            int64_t next = nj_calendar_next(&sv.cfg->schedule, now);
            if (next < 0) {
                logline("schedule '%s' never fires", sv.cfg->schedule_text);
                break;
            }
            if (sim)
                now = next;
            else
                sleep_until(next);
            if (nj_agent_interrupted)
                break;
            run_once(&sv, sim ? next : 0);
            if (!nj_agent_interrupted)
                sv.last_served = next;
            if (!sim)
                now = (int64_t)time(NULL);
            runs++;
            write_status(&sv);
            save_state(&sv);
        }
    }
    logline("service stopped");
    for (size_t i = 0; i < sv.nres; i++) {
        free(sv.res[i].name);
        free(sv.res[i].uuid);
    }
    free(sv.res);
    nj_config_free(sv.cfg);
    return 0;
}
