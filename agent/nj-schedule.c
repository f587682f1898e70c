/*
 * nj-schedule.c: calendars and the configuration file.  See nj-schedule.h.
 */
#include "nj-datapath.h"
#include "nj-io.h"
#include "nj-store.h"
#include "nj-schedule.h"
#include "nj-util.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>

static const char *const dow_names[] = { "sunday", "monday", "tuesday",
                                         "wednesday", "thursday", "friday",
                                         "saturday" };

/* "Mon" or "Monday", any case. */
static int parse_dow(const char *s, size_t len)
{
    for (int i = 0; i < 7; i++)
        if ((len == 3 || len == strlen(dow_names[i])) &&
            strncasecmp(s, dow_names[i], len) == 0)
            return i;
    return -1;
}

/* "Mon", "Mon,Wed", "Mon..Fri", "Sat,Sun" */
static int parse_dow_spec(const char *s, uint8_t *mask)
{
    *mask = 0;
    while (*s) {
        const char *comma = strchr(s, ',');
        size_t len = comma ? (size_t)(comma - s) : strlen(s);
        const char *dots = memmem(s, len, "..", 2);
        int a = parse_dow(s, dots ? (size_t)(dots - s) : len);
        int b = dots ? parse_dow(dots + 2, len - (size_t)(dots + 2 - s)) : a;
        if (a < 0 || b < 0)
            return -1;
        for (int d = a;; d = (d + 1) % 7) {
            *mask |= (uint8_t)(1u << d);
            if (d == b)
                break;
        }
        s += len + (comma ? 1 : 0);
        if (comma && !*s)
            return -1; /* "Mon," */
    }
    return *mask ? 0 : -1;
}

/* "*", "N", "N,M", "*\/K" into a bit mask of [0, limit). */
static int parse_field(const char *s, unsigned limit, uint64_t *mask)
{
    *mask = 0;
    if (strcmp(s, "*") == 0) {
        for (unsigned i = 0; i < limit; i++)
            *mask |= 1ull << i;
        return 0;
    }
    if (strncmp(s, "*/", 2) == 0) {
        uint64_t step = 0;
        if (nj_parse_u64(s + 2, &step) < 0 || step == 0 || step >= limit)
            return -1;
        for (unsigned i = 0; i < limit; i += (unsigned)step)
            *mask |= 1ull << i;
        return 0;
    }
    char buf[128];
    snprintf(buf, sizeof buf, "%s", s);
    /* (strsep, not strtok: an empty item, "1,,2" or "1,", is an error) */
    for (char *rest = buf, *t; (t = strsep(&rest, ",")) != NULL;) {
        uint64_t v = 0;
        if (nj_parse_u64(t, &v) < 0 || v >= limit)
            return -1;
        *mask |= 1ull << v;
    }
    return *mask ? 0 : -1;
}

static int parse_time(const char *s, struct nj_calendar *c)
{
    char h[64], m[64], sec[16] = "0";
    const char *c1 = strchr(s, ':');
    if (!c1 || (size_t)(c1 - s) >= sizeof h)
        return -1;
    memcpy(h, s, (size_t)(c1 - s));
    h[c1 - s] = '\0';
    const char *c2 = strchr(c1 + 1, ':');
    size_t mlen = c2 ? (size_t)(c2 - c1 - 1) : strlen(c1 + 1);
    if (mlen >= sizeof m)
        return -1;
    memcpy(m, c1 + 1, mlen);
    m[mlen] = '\0';
    if (c2)
        snprintf(sec, sizeof sec, "%s", c2 + 1);
    uint64_t hours = 0, minutes = 0, zs = 0;
    if (parse_field(h, 24, &hours) < 0 || parse_field(m, 60, &minutes) < 0 || nj_parse_u64(sec, &zs) < 0 ||
        zs != 0)
        return -1;
    c->hours = (uint32_t)hours;
    c->minutes = minutes;
    return 0;
}

int nj_calendar_parse(const char *spec, struct nj_calendar *c)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s", spec);
    char *w[4] = { 0 };
    int n = 0;
    for (char *save = NULL, *t = strtok_r(buf, " \t", &save); t && n < 4;
         t = strtok_r(NULL, " \t", &save))
        w[n++] = t;
    memset(c, 0, sizeof *c);
    c->dow = 0x7f;
    int r = -1;
    if (n == 2 && strcmp(w[0], "daily") == 0) {
        r = parse_time(w[1], c);
    } else if (n >= 1 && strcmp(w[0], "hourly") == 0) {
        c->hours = 0xffffff;
        uint64_t mm = 0;
        r = n == 1 ? (c->minutes = 1, 0)
            : n == 2 && w[1][0] == ':' && nj_parse_u64(w[1] + 1, &mm) == 0 &&
                      mm < 60
                ? (c->minutes = 1ull << mm, 0)
                : -1;
    } else if (n == 3 && strcmp(w[0], "weekly") == 0) {
        r = parse_dow_spec(w[1], &c->dow) < 0 ? -1 : parse_time(w[2], c);
    } else if (n >= 2 && strcmp(w[n - 2], "*-*-*") == 0) {
        r = (n == 3 ? parse_dow_spec(w[0], &c->dow) : n == 2 ? 0 : -1) < 0
                ? -1
                : parse_time(w[n - 1], c);
    }
    if (r < 0)
        return nj_error("schedule '%s' is not understood (use \"daily HH:MM\", "
                        "\"hourly\", \"weekly DOW HH:MM\" or \"[DOW] *-*-* "
                        "HH:MM\")", spec);
    return 0;
}

static bool same_wall_minute(const struct tm *a, int64_t t)
{
    time_t tt = (time_t)t;
    struct tm b;
    localtime_r(&tt, &b);
    return a->tm_min == b.tm_min && a->tm_hour == b.tm_hour &&
           a->tm_mday == b.tm_mday && a->tm_mon == b.tm_mon &&
           a->tm_year == b.tm_year;
}

/* The minute t matches, and its local time is not a repeat of an earlier
 * minute (when clocks go back, the repeated local times fire once, at
 * their first occurrence: the shifts in use are 30, 60 or 120 minutes). */
static bool matches(const struct nj_calendar *c, int64_t t)
{
    time_t tt = (time_t)t;
    struct tm tm;
    localtime_r(&tt, &tm);
    if (!((c->dow >> tm.tm_wday & 1) && (c->hours >> tm.tm_hour & 1) &&
          (c->minutes >> tm.tm_min & 1)))
        return false;
    static const int64_t shifts[] = { 1800, 3600, 7200 };
    for (size_t i = 0; i < NJ_ARRAY_SIZE(shifts); i++)
        if (same_wall_minute(&tm, t - shifts[i]))
            return false;
    return true;
}

int64_t nj_calendar_next(const struct nj_calendar *c, int64_t t)
{
    int64_t m = (t / 60 + 1) * 60;
    for (int64_t i = 0; i < 366 * 24 * 60; i++, m += 60)
        if (matches(c, m))
            return m;
    return -1;
}

int64_t nj_calendar_prev(const struct nj_calendar *c, int64_t t)
{
    int64_t m = t / 60 * 60;
    for (int64_t i = 0; i < 366 * 24 * 60; i++, m -= 60)
        if (matches(c, m))
            return m;
    return -1;
}

/* ---- configuration ---- */

static char **split_words(const char *v)
{
    size_t n = 0;
    char **w = nj_calloc(1, sizeof *w);
    char *buf = nj_strdup(v);
    for (char *save = NULL, *t = strtok_r(buf, " \t,", &save); t;
         t = strtok_r(NULL, " \t,", &save)) {
        w = nj_realloc_array(w, n + 2, sizeof *w);
        w[n++] = nj_strdup(t);
        w[n] = NULL;
    }
    free(buf);
    return w;
}

void nj_config_free(struct nj_config *c)
{
    if (!c)
        return;
    free(c->store);
    free(c->uri);
    free(c->scratch_dir);
    free(c->status_file);
    free(c->state_file);
    free(c->schedule_text);
    free(c->level);
    free(c->zstd_level);
    free(c->sync_to);
    nj_strv_free(c->domains);
    nj_strv_free(c->exclude);
    nj_strv_free(c->s3);
    free(c);
}

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = '\0';
    return s;
}

static int set_string(const char *path, int line, const char *key,
                      const char *v, char **out)
{
    if (!*v)
        return nj_error("%s:%d: %s: no value", path, line, key);
    if (!strcmp(key, "level") && strcmp(v, "auto") && strcmp(v, "full") &&
        strcmp(v, "inc") && strcmp(v, "diff") && strcmp(v, "copy"))
        return nj_error("%s:%d: level: auto, full, inc, diff or copy, not "
                        "'%s'", path, line, v);
    int lo, hi;
    if (!strcmp(key, "zstd-level") && nj_zstd_level_parse(v, &lo, &hi) < 0)
        return nj_error_prefix("%s:%d: zstd-level", path, line);
    free(*out);
    *out = nj_strdup(v);
    return 0;
}

static int set_uint(const char *path, int line, const char *key,
                    const char *v, unsigned *out)
{
    uint64_t n = 0;
    if (nj_parse_u64(v, &n) < 0 || n > 1000000)
        return nj_error("%s:%d: %s: '%s' is not a number", path, line, key, v);
    *out = (unsigned)n;
    return 0;
}

static int config_line(struct nj_config *c, const char *path, int line,
                       const char *key, const char *v)
{
    struct { const char *k; unsigned *p; } nums[] = {
        { "max-chain", &c->max_chain },     { "max-age", &c->max_age_days },
        { "concurrency", &c->concurrency }, { "keep-last", &c->keep.last },
        { "keep-hourly", &c->keep.hourly }, { "keep-daily", &c->keep.daily },
        { "keep-weekly", &c->keep.weekly }, { "keep-monthly", &c->keep.monthly },
        { "keep-yearly", &c->keep.yearly },
    };
    for (size_t i = 0; i < NJ_ARRAY_SIZE(nums); i++)
        if (!strcmp(key, nums[i].k))
            return set_uint(path, line, key, v, nums[i].p);
    struct { const char *k; char **p; } strs[] = {
        { "store", &c->store },           { "connect", &c->uri },
        { "scratch-dir", &c->scratch_dir }, { "status-file", &c->status_file },
        { "state-file", &c->state_file }, { "level", &c->level },
        { "zstd-level", &c->zstd_level }, { "sync-to", &c->sync_to },
    };
    for (size_t i = 0; i < NJ_ARRAY_SIZE(strs); i++)
        if (!strcmp(key, strs[i].k))
            return set_string(path, line, key, v, strs[i].p);
    static const char *const s3_keys[] = {
        "s3-endpoint", "s3-region", "s3-access-key-id",
        "s3-secret-access-key", "s3-session-token", "s3-ca-file",
    };
    for (size_t i = 0; i < NJ_ARRAY_SIZE(s3_keys); i++) {
        if (strcmp(key, s3_keys[i]) != 0)
            continue;
        if (!*v)
            return nj_error("%s:%d: %s: no value", path, line, key);
        size_t n = 0;
        while (c->s3 && c->s3[n])
            n++;
        for (size_t k = 0; k < n; k += 2)
            if (!strcmp(c->s3[k], key))
                return nj_error("%s:%d: '%s' given twice", path, line, key);
        c->s3 = nj_realloc_array(c->s3, n + 3, sizeof *c->s3);
        c->s3[n] = nj_strdup(key);
        c->s3[n + 1] = nj_strdup(v);
        c->s3[n + 2] = NULL;
        return 0;
    }
    if (!strcmp(key, "domains") || !strcmp(key, "exclude")) {
        char ***p = !strcmp(key, "domains") ? &c->domains : &c->exclude;
        nj_strv_free(*p);
        *p = split_words(v);
        return 0;
    }
    if (!strcmp(key, "schedule")) {
        free(c->schedule_text);
        c->schedule_text = nj_strdup(v);
        if (nj_calendar_parse(v, &c->schedule) < 0)
            return nj_error_prefix("%s:%d", path, line);
        return 0;
    }
    if (!strcmp(key, "gc")) {
        if (strcmp(v, "yes") && strcmp(v, "no"))
            return nj_error("%s:%d: gc: yes or no, not '%s'", path, line, v);
        c->gc = !strcmp(v, "yes");
        return 0;
    }
    if (!strcmp(key, "gc-grace")) {
        uint64_t g = 0;
        if (nj_parse_u64(v, &g) < 0)
            return nj_error("%s:%d: gc-grace: '%s' is not a number of seconds",
                            path, line, v);
        c->gc_grace = (int64_t)g;
        return 0;
    }
    return nj_error("%s:%d: unknown setting '%s'", path, line, key);
}

struct nj_config *nj_config_load(const char *path)
{
    size_t len = 0;
    /* The configuration is the administrator's, named on the command line
     * or in a unit: a symlink to it (configuration management does that)
     * is followed, once, by realpath; the file itself must still be a
     * regular file (nj_read_file refuses FIFOs and devices). */
    NJ_CLEANUP_FREE char *real = realpath(path, NULL);
    if (!real) {
        nj_error_errno(errno, "open '%s'", path);
        return NULL;
    }
    NJ_CLEANUP_FREE char *text = nj_read_file(AT_FDCWD, real, 1 << 20, &len);
    if (!text)
        return NULL;
    struct nj_config *c = nj_calloc(1, sizeof *c);
    c->uri = nj_strdup("qemu:///system");
    c->scratch_dir = nj_strdup("/var/tmp");
    c->level = nj_strdup("auto");
    c->max_chain = 30;
    c->max_age_days = 7;
    c->concurrency = 1;
    c->gc = true;
    c->gc_grace = 3600;
    int line = 0;
    /* (strsep, not strtok: blank lines count for the line numbers) */
    for (char *rest = text, *l; (l = strsep(&rest, "\n")) != NULL;) {
        line++;
        char *hash = strchr(l, '#');
        if (hash)
            *hash = '\0';
        char *t = trim(l);
        if (!*t)
            continue;
        char *eq = strchr(t, '=');
        if (!eq) {
            nj_error("%s:%d: expected 'key = value'", path, line);
            nj_config_free(c);
            return NULL;
        }
        *eq = '\0';
        if (config_line(c, path, line, trim(t), trim(eq + 1)) < 0) {
            nj_config_free(c);
            return NULL;
        }
    }
    const char *missing = !c->store ? "store" : !c->schedule_text ? "schedule"
                                                                  : NULL;
    if (missing) {
        nj_error("%s: '%s' is required", path, missing);
        nj_config_free(c);
        return NULL;
    }
    if (!c->domains)
        c->domains = split_words("*");
    if (c->sync_to && strcmp(c->sync_to, c->store) == 0) {
        nj_error("%s: 'sync-to' names the store itself", path);
        nj_config_free(c);
        return NULL;
    }
    if (!c->state_file && !nj_store_url_path(c->store)) {
        nj_error("%s: 'state-file' is required when the store is not a "
                 "local directory ('%s')", path, c->store);
        nj_config_free(c);
        return NULL;
    }
    for (size_t i = 0; c->s3 && c->s3[i]; i += 2) {
        struct stat st;
        if (strcmp(c->s3[i], "s3-secret-access-key") == 0 &&
            stat(real, &st) == 0 && (st.st_mode & 077)) {
            nj_error("%s: holds s3-secret-access-key but is readable by "
                     "others (chmod 600 it)", path);
            nj_config_free(c);
            return NULL;
        }
    }
    if (!c->state_file)
        c->state_file = nj_asprintf("%s.scheduler-state",
                                    nj_store_url_path(c->store));
    if (c->concurrency == 0)
        c->concurrency = 1;
    return c;
}
