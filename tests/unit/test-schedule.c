/*
 * test-schedule: the scheduler's calendars and configuration file
 * (agent/nj-schedule.c).
 *
 * Calendars: every documented form parses to the expected weekday, hour
 * and minute sets; junk is refused with a message naming the spec.
 * nj_calendar_next and nj_calendar_prev give the instants worked out by
 * hand, in UTC and in Europe/Berlin across both DST changes of 2024
 * (spring forward Sun 31 March 01:00 UTC, 02:00 CET -> 03:00 CEST; fall
 * back Sun 27 October 01:00 UTC, 03:00 CEST -> 02:00 CET):
 *
 *  - a local time that does not exist (02:30 on the spring-forward day)
 *    does not fire that day: the next existing match is the next day's;
 *  - a local time that happens twice (02:30 on the fall-back day) fires
 *    once, at its first occurrence; the repeat is no match, for next and
 *    for prev alike.
 *
 * Besides the fixed expectations, next and prev are checked against each
 * other at many instants (next(t) > t with no match in between, prev(t)
 * <= t, every result a whole minute whose local fields match).
 *
 * Configuration: a file with every key, the shipped example
 * ($NJ_CONF_EXAMPLE), the defaults, and each error, which names the file
 * and line ("FILE:LINE: ...", or "FILE: 'store' is required").
 */
#include "nj-schedule.h"
#include "nj-store.h"
#include "nj-test.h"
#include "nj-util.h"

#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static void set_tz(const char *tz)
{
    setenv("TZ", tz, 1);
    tzset();
}

/* A UTC wall-clock time as Unix seconds. */
static int64_t utc(int y, int mo, int d, int h, int mi)
{
    struct tm tm = { .tm_year = y - 1900, .tm_mon = mo - 1, .tm_mday = d,
                     .tm_hour = h, .tm_min = mi };
    return (int64_t)timegm(&tm);
}

static const char *show(int64_t t, char *buf, size_t len)
{
    if (t < 0) {
        snprintf(buf, len, "%lld", (long long)t);
        return buf;
    }
    time_t tt = (time_t)t;
    struct tm tm;
    localtime_r(&tt, &tm);
    strftime(buf, len, "%a %Y-%m-%d %H:%M:%S %Z", &tm);
    return buf;
}

static struct nj_calendar cal(const char *spec)
{
    struct nj_calendar c;
    if (nj_calendar_parse(spec, &c) < 0) {
        fprintf(stderr, "cannot parse '%s': %s\n", spec, nj_error_get());
        exit(1);
    }
    return c;
}

/* next(spec, from) == want, and prev(want) == want. */
static void expect_next(int line, const char *spec, int64_t from, int64_t want)
{
    struct nj_calendar c = cal(spec);
    int64_t got = nj_calendar_next(&c, from);
    char a[64], b[64], f[64];
    if (got != want) {
        fprintf(stderr, "line %d: next('%s', %s) = %s, want %s\n", line, spec,
                show(from, f, sizeof f), show(got, a, sizeof a),
                show(want, b, sizeof b));
        nj_test_failures++;
    }
    if (want > 0 && nj_calendar_prev(&c, want) != want) {
        fprintf(stderr, "line %d: prev('%s', %s) is not itself\n", line, spec,
                show(want, b, sizeof b));
        nj_test_failures++;
    }
}

static void expect_prev(int line, const char *spec, int64_t from, int64_t want)
{
    struct nj_calendar c = cal(spec);
    int64_t got = nj_calendar_prev(&c, from);
    char a[64], b[64], f[64];
    if (got != want) {
        fprintf(stderr, "line %d: prev('%s', %s) = %s, want %s\n", line, spec,
                show(from, f, sizeof f), show(got, a, sizeof a),
                show(want, b, sizeof b));
        nj_test_failures++;
    }
}

#define NEXT(spec, from, want) expect_next(__LINE__, spec, from, want)
#define PREV(spec, from, want) expect_prev(__LINE__, spec, from, want)

/* ---- parsing ---- */

static void parse_ok(const char *spec, uint8_t dow, uint32_t hours,
                     uint64_t minutes)
{
    struct nj_calendar c;
    memset(&c, 0xee, sizeof c);
    if (nj_calendar_parse(spec, &c) < 0) {
        fprintf(stderr, "'%s' refused: %s\n", spec, nj_error_get());
        nj_test_failures++;
        return;
    }
    if (c.dow != dow || c.hours != hours || c.minutes != minutes) {
        fprintf(stderr, "'%s': dow %#x hours %#x minutes %#llx, want %#x %#x %#llx\n",
                spec, c.dow, c.hours, (unsigned long long)c.minutes, dow, hours,
                (unsigned long long)minutes);
        nj_test_failures++;
    }
}

static void parse_bad(const char *spec)
{
    struct nj_calendar c;
    if (nj_calendar_parse(spec, &c) == 0) {
        fprintf(stderr, "'%s' accepted (dow %#x hours %#x minutes %#llx)\n",
                spec, c.dow, c.hours, (unsigned long long)c.minutes);
        nj_test_failures++;
        return;
    }
    NJ_CLEANUP_FREE char *want = nj_asprintf("schedule '%s' is not understood", spec);
    if (!strstr(nj_error_get(), want) || !strstr(nj_error_get(), "daily HH:MM")) {
        fprintf(stderr, "'%s': unclear message: %s\n", spec, nj_error_get());
        nj_test_failures++;
    }
}

#define ALL_DAYS 0x7f
#define ALL_HOURS 0xffffffu
#define H(h) (1u << (h))
#define M(m) (1ull << (m))

static void test_parse(void)
{
    parse_ok("daily 02:00", ALL_DAYS, H(2), M(0));
    parse_ok("hourly", ALL_DAYS, ALL_HOURS, M(0));
    parse_ok("hourly :15", ALL_DAYS, ALL_HOURS, M(15));
    parse_ok("weekly Sun 03:00", 1, H(3), M(0));
    parse_ok("Mon..Fri *-*-* 01:30", 0x3e, H(1), M(30));
    parse_ok("Sat,Sun *-*-* */6:00", 0x41, H(0) | H(6) | H(12) | H(18), M(0));
    parse_ok("*-*-* 2,14:00:00", ALL_DAYS, H(2) | H(14), M(0));
    /* more of the same forms */
    parse_ok("  daily   7:05  ", ALL_DAYS, H(7), M(5));
    parse_ok("daily 23:59", ALL_DAYS, H(23), M(59));
    parse_ok("weekly sat 00:00", 0x40, H(0), M(0));
    parse_ok("weekly Monday 04:10", 0x02, H(4), M(10));
    parse_ok("Fri..Mon *-*-* 23:59", 0x63, H(23), M(59)); /* wraps */
    parse_ok("Mon,Wed..Thu,Sat *-*-* 12:00", 0x5a, H(12), M(0));
    parse_ok("*-*-* *:*", ALL_DAYS, ALL_HOURS, ~0ull >> 4);
    parse_ok("*-*-* 01:*/15", ALL_DAYS, H(1), M(0) | M(15) | M(30) | M(45));
    parse_ok("*-*-* 0,12:0,30", ALL_DAYS, H(0) | H(12), M(0) | M(30));

    const char *junk[] = {
        "", "   ", "daily", "daily 02", "daily 24:00", "daily 02:60",
        "daily 02:00 03:00", "daily two:00", "daily -1:00", "daily 02:0x",
        "daily 02:00:30", "daily :15", "hourly 15", "hourly :60", "hourly :",
        "hourly :1x", "hourly :15 :30", "weekly Xyz 03:00", "weekly 03:00",
        "weekly Sun", "weekly Su 03:00", "weekly Monkey 03:00",
        "Mon..Fri 01:30", "2024-*-* 01:00", "*-*-*", "*-*-* 01:00:30",
        "*-*-* */0:00", "*-*-* */24:00", "*-*-* 1-3:00", "*-*-* 1,,3:00",
        "*-*-* 1,:00", "Mon, *-*-* 01:00", "Mon..,Fri *-*-* 01:00",
        "*-*-* 01:00 Mon", "monthly 01:00", "Mon *-*-* *-*-* 01:00",
        "*-*-* 99999999999999999999:00",
    };
    for (size_t i = 0; i < NJ_ARRAY_SIZE(junk); i++)
        parse_bad(junk[i]);
}

/* ---- next and prev ---- */

static void test_utc(void)
{
    set_tz("UTC");
    /* daily: strictly after for next, at or before for prev */
    NEXT("daily 02:00", utc(2024, 1, 1, 0, 0), utc(2024, 1, 1, 2, 0));
    NEXT("daily 02:00", utc(2024, 1, 1, 1, 59) + 59, utc(2024, 1, 1, 2, 0));
    NEXT("daily 02:00", utc(2024, 1, 1, 2, 0), utc(2024, 1, 2, 2, 0));
    NEXT("daily 02:00", utc(2024, 1, 1, 2, 0) + 30, utc(2024, 1, 2, 2, 0));
    PREV("daily 02:00", utc(2024, 1, 1, 2, 0), utc(2024, 1, 1, 2, 0));
    PREV("daily 02:00", utc(2024, 1, 1, 2, 0) + 59, utc(2024, 1, 1, 2, 0));
    PREV("daily 02:00", utc(2024, 1, 1, 2, 0) - 1, utc(2023, 12, 31, 2, 0));
    /* across a leap day and a year end */
    NEXT("daily 02:00", utc(2024, 2, 28, 3, 0), utc(2024, 2, 29, 2, 0));
    NEXT("*-*-* 2,14:00:00", utc(2024, 12, 31, 15, 0), utc(2025, 1, 1, 2, 0));
    NEXT("*-*-* 2,14:00:00", utc(2025, 1, 1, 2, 0), utc(2025, 1, 1, 14, 0));
    PREV("*-*-* 2,14:00:00", utc(2025, 1, 1, 1, 0), utc(2024, 12, 31, 14, 0));
    /* hourly */
    NEXT("hourly", utc(2024, 5, 31, 10, 0), utc(2024, 5, 31, 11, 0));
    NEXT("hourly", utc(2024, 5, 31, 23, 30), utc(2024, 6, 1, 0, 0));
    NEXT("hourly :15", utc(2024, 5, 31, 10, 14) + 59, utc(2024, 5, 31, 10, 15));
    NEXT("hourly :15", utc(2024, 5, 31, 10, 15), utc(2024, 5, 31, 11, 15));
    PREV("hourly :15", utc(2024, 5, 31, 10, 14), utc(2024, 5, 31, 9, 15));
    /* weekly across a month end: Fri 31 May 2024 -> Sun 2 June */
    NEXT("weekly Sun 03:00", utc(2024, 5, 31, 12, 0), utc(2024, 6, 2, 3, 0));
    NEXT("weekly Sun 03:00", utc(2024, 6, 2, 3, 0), utc(2024, 6, 9, 3, 0));
    PREV("weekly Sun 03:00", utc(2024, 6, 1, 12, 0), utc(2024, 5, 26, 3, 0));
    NEXT("weekly Wed 00:00", utc(2024, 1, 31, 0, 0), utc(2024, 2, 7, 0, 0));
    /* weekdays: Fri after the time -> Mon */
    NEXT("Mon..Fri *-*-* 01:30", utc(2024, 5, 31, 2, 0), utc(2024, 6, 3, 1, 30));
    NEXT("Mon..Fri *-*-* 01:30", utc(2024, 5, 31, 1, 0), utc(2024, 5, 31, 1, 30));
    PREV("Mon..Fri *-*-* 01:30", utc(2024, 6, 2, 23, 0), utc(2024, 5, 31, 1, 30));
    /* weekends every six hours: the whole sequence over a weekend */
    int64_t t = utc(2024, 5, 31, 23, 0);
    int64_t want[] = {
        utc(2024, 6, 1, 0, 0), utc(2024, 6, 1, 6, 0), utc(2024, 6, 1, 12, 0),
        utc(2024, 6, 1, 18, 0), utc(2024, 6, 2, 0, 0), utc(2024, 6, 2, 6, 0),
        utc(2024, 6, 2, 12, 0), utc(2024, 6, 2, 18, 0), utc(2024, 6, 8, 0, 0),
    };
    for (size_t i = 0; i < NJ_ARRAY_SIZE(want); i++) {
        NEXT("Sat,Sun *-*-* */6:00", t, want[i]);
        t = want[i];
    }
    PREV("Sat,Sun *-*-* */6:00", utc(2024, 6, 7, 23, 59), utc(2024, 6, 2, 18, 0));
    /* every minute */
    NEXT("*-*-* *:*", utc(2024, 5, 31, 10, 0) + 1, utc(2024, 5, 31, 10, 1));
    PREV("*-*-* *:*", utc(2024, 5, 31, 10, 0) + 59, utc(2024, 5, 31, 10, 0));
}

/* Europe/Berlin: CET is UTC+1, CEST UTC+2. */
static void test_berlin(void)
{
    set_tz("Europe/Berlin");
    /* plain days: local times */
    NEXT("daily 02:30", utc(2024, 1, 10, 12, 0), utc(2024, 1, 11, 1, 30));
    NEXT("daily 02:30", utc(2024, 7, 10, 12, 0), utc(2024, 7, 11, 0, 30));

    /* Spring forward, Sun 31 March 2024: local 02:00-02:59 does not
     * exist.  "daily 02:30" does not fire that day: after Sat 30 March
     * 02:30 CET the next match is Mon 1 April 02:30 CEST. */
    NEXT("daily 02:30", utc(2024, 3, 30, 1, 30), utc(2024, 4, 1, 0, 30));
    NEXT("daily 02:30", utc(2024, 3, 30, 12, 0), utc(2024, 4, 1, 0, 30));
    PREV("daily 02:30", utc(2024, 3, 31, 10, 0), utc(2024, 3, 30, 1, 30));
    PREV("daily 02:30", utc(2024, 4, 1, 0, 29), utc(2024, 3, 30, 1, 30));
    /* the same for every minute of the missing hour, and for 02:00 */
    NEXT("daily 02:00", utc(2024, 3, 30, 12, 0), utc(2024, 4, 1, 0, 0));
    NEXT("daily 02:59", utc(2024, 3, 30, 12, 0), utc(2024, 4, 1, 0, 59));
    /* around the gap: 01:59 CET and 03:00 CEST exist, one minute apart */
    NEXT("daily 01:59", utc(2024, 3, 30, 12, 0), utc(2024, 3, 31, 0, 59));
    NEXT("daily 03:00", utc(2024, 3, 30, 12, 0), utc(2024, 3, 31, 1, 0));
    NEXT("daily 03:30", utc(2024, 3, 30, 12, 0), utc(2024, 3, 31, 1, 30));
    NEXT("hourly", utc(2024, 3, 31, 0, 0), utc(2024, 3, 31, 1, 0)); /* 01:00 CET -> 03:00 CEST */
    /* weekly on the spring-forward Sunday, at the first minute after the
     * gap, and across the month end */
    NEXT("weekly Sun 03:00", utc(2024, 3, 29, 12, 0), utc(2024, 3, 31, 1, 0));
    NEXT("weekly Sun 03:00", utc(2024, 3, 31, 1, 0), utc(2024, 4, 7, 1, 0));
    NEXT("weekly Sun 02:30", utc(2024, 3, 29, 12, 0), utc(2024, 4, 7, 0, 30));
    PREV("weekly Sun 03:00", utc(2024, 4, 6, 12, 0), utc(2024, 3, 31, 1, 0));
    PREV("weekly Sun 03:00", utc(2024, 3, 31, 0, 59), utc(2024, 3, 24, 2, 0));

    /* Fall back, Sun 27 October 2024: local 02:00-02:59 happens twice
     * (00:00-00:59 UTC in CEST, then 01:00-01:59 UTC in CET).  "daily
     * 02:30" fires once, at the first occurrence. */
    NEXT("daily 02:30", utc(2024, 10, 26, 10, 0), utc(2024, 10, 27, 0, 30));
    NEXT("daily 02:30", utc(2024, 10, 27, 0, 29), utc(2024, 10, 27, 0, 30));
    NEXT("daily 02:30", utc(2024, 10, 27, 0, 30), utc(2024, 10, 28, 1, 30));
    NEXT("daily 02:30", utc(2024, 10, 27, 1, 0), utc(2024, 10, 28, 1, 30));
    /* during the repeated hour, the last match is the first occurrence */
    PREV("daily 02:30", utc(2024, 10, 27, 1, 45), utc(2024, 10, 27, 0, 30));
    PREV("daily 02:30", utc(2024, 10, 27, 1, 30), utc(2024, 10, 27, 0, 30));
    PREV("daily 02:30", utc(2024, 10, 27, 10, 0), utc(2024, 10, 27, 0, 30));
    PREV("daily 02:30", utc(2024, 10, 28, 1, 29), utc(2024, 10, 27, 0, 30));
    /* around the repeat: 01:59 and 03:00 once each */
    NEXT("daily 01:59", utc(2024, 10, 26, 10, 0), utc(2024, 10, 26, 23, 59));
    NEXT("daily 03:00", utc(2024, 10, 26, 10, 0), utc(2024, 10, 27, 2, 0));
    /* hourly: 02:00 CEST, then 03:00 CET (02:00 CET is a repeat) */
    NEXT("hourly", utc(2024, 10, 26, 23, 0), utc(2024, 10, 27, 0, 0));
    NEXT("hourly", utc(2024, 10, 27, 0, 0), utc(2024, 10, 27, 2, 0));
    NEXT("hourly :15", utc(2024, 10, 27, 0, 15), utc(2024, 10, 27, 2, 15));
    /* weekly across the month end after the change */
    NEXT("weekly Sun 03:00", utc(2024, 10, 31, 12, 0), utc(2024, 11, 3, 2, 0));
    NEXT("weekly Sun 02:30", utc(2024, 10, 26, 12, 0), utc(2024, 10, 27, 0, 30));
    NEXT("weekly Sun 02:30", utc(2024, 10, 27, 0, 30), utc(2024, 11, 3, 1, 30));
    NEXT("Mon..Fri *-*-* 01:30", utc(2024, 10, 25, 12, 0), utc(2024, 10, 28, 0, 30));
}

/* next and prev agree with each other and with the calendar's fields. */
static bool fields_match(const struct nj_calendar *c, int64_t t)
{
    time_t tt = (time_t)t;
    struct tm tm;
    localtime_r(&tt, &tm);
    return t % 60 == 0 && (c->dow >> tm.tm_wday & 1) &&
           (c->hours >> tm.tm_hour & 1) && (c->minutes >> tm.tm_min & 1);
}

static void test_consistency(const char *tz, int64_t from, int64_t span)
{
    set_tz(tz);
    static const char *const specs[] = {
        "daily 02:30", "hourly :15", "weekly Sun 03:00", "Mon..Fri *-*-* 01:30",
        "Sat,Sun *-*-* */6:00", "*-*-* 2,14:00:00", "daily 00:00",
    };
    uint64_t rng = 42;
    for (size_t s = 0; s < NJ_ARRAY_SIZE(specs); s++) {
        struct nj_calendar c = cal(specs[s]);
        for (int i = 0; i < 200; i++) {
            int64_t t = from + (int64_t)nj_test_rand_below(&rng, (uint64_t)span);
            if (i % 3 == 0)
                t -= t % 60; /* whole minutes too */
            int64_t n = nj_calendar_next(&c, t), p = nj_calendar_prev(&c, t);
            bool ok = n > t && p <= t && p > 0 && fields_match(&c, n) &&
                      fields_match(&c, p) && nj_calendar_prev(&c, n) == n &&
                      nj_calendar_prev(&c, n - 1) == p &&
                      nj_calendar_next(&c, p) == n;
            if (!ok) {
                char a[64], b[64], d[64];
                fprintf(stderr, "%s '%s' at %s: next %s, prev %s disagree\n",
                        tz, specs[s], show(t, a, sizeof a), show(n, b, sizeof b),
                        show(p, d, sizeof d));
                nj_test_failures++;
                break;
            }
        }
    }
}

/* ---- configuration ---- */

static char *dir;

static char *write_conf(const char *name, const char *text)
{
    char *path = nj_asprintf("%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    REQUIRE(f);
    fputs(text, f);
    REQUIRE(fclose(f) == 0);
    return path;
}

static bool strv_is(char **v, const char *const *want, size_t n)
{
    size_t i = 0;
    for (; v && v[i]; i++)
        if (i >= n || strcmp(v[i], want[i]) != 0)
            return false;
    return i == n;
}

static void test_config_full(void)
{
    NJ_CLEANUP_FREE char *path = write_conf("full.conf",
        "# every key\n"
        "\n"
        "store = /srv/nightjar store\n"
        "connect=qemu+ssh://host/system\n"
        "  domains =  web-*, db-?  mail\t# three patterns\n"
        "exclude = *-test\n"
        "\n"
        "\n"
        "schedule = Mon..Fri *-*-* 01:30   # weeknights\n"
        "level = inc\n"
        "zstd-level = -3..2\n"
        "max-chain = 14\n"
        "max-age = 9\n"
        "concurrency = 3\n"
        "keep-last = 2\n"
        "keep-hourly = 24\n"
        "keep-daily = 7\n"
        "keep-weekly = 4\n"
        "keep-monthly = 6\n"
        "keep-yearly = 1\n"
        "gc = no\n"
        "gc-grace = 600\n"
        "scratch-dir = /var/tmp/nj\n"
        "status-file = /var/lib/node-exporter/nightjar.prom\n"
        "state-file = /var/lib/nightjar/state.json\r\n");
    struct nj_config *c = nj_config_load(path);
    REQUIRE(c);
    CHECK(!strcmp(c->store, "/srv/nightjar store"));
    CHECK(!strcmp(c->uri, "qemu+ssh://host/system"));
    static const char *const doms[] = { "web-*", "db-?", "mail" };
    static const char *const excl[] = { "*-test" };
    CHECK(strv_is(c->domains, doms, 3));
    CHECK(strv_is(c->exclude, excl, 1));
    CHECK(!strcmp(c->schedule_text, "Mon..Fri *-*-* 01:30"));
    CHECK(c->schedule.dow == 0x3e && c->schedule.hours == H(1) &&
          c->schedule.minutes == M(30));
    CHECK(!strcmp(c->level, "inc"));
    CHECK(c->zstd_level && !strcmp(c->zstd_level, "-3..2"));
    CHECK(c->max_chain == 14 && c->max_age_days == 9 && c->concurrency == 3);
    CHECK(c->keep.last == 2 && c->keep.hourly == 24 && c->keep.daily == 7 &&
          c->keep.weekly == 4 && c->keep.monthly == 6 && c->keep.yearly == 1);
    CHECK(!c->gc && c->gc_grace == 600);
    CHECK(!strcmp(c->scratch_dir, "/var/tmp/nj"));
    CHECK(!strcmp(c->status_file, "/var/lib/node-exporter/nightjar.prom"));
    CHECK(!strcmp(c->state_file, "/var/lib/nightjar/state.json"));
    nj_config_free(c);
}

static void test_config_defaults(void)
{
    NJ_CLEANUP_FREE char *path = write_conf("min.conf",
        "store=/s\nschedule=daily 02:00\n");
    struct nj_config *c = nj_config_load(path);
    REQUIRE(c);
    static const char *const all[] = { "*" };
    CHECK(!strcmp(c->store, "/s") && !strcmp(c->uri, "qemu:///system"));
    CHECK(strv_is(c->domains, all, 1) && c->exclude == NULL);
    CHECK(!strcmp(c->level, "auto") && !strcmp(c->scratch_dir, "/var/tmp"));
    CHECK(c->max_chain == 30 && c->max_age_days == 7 && c->concurrency == 1);
    CHECK(nj_keep_rules_empty(&c->keep));
    CHECK(c->gc && c->gc_grace == 3600);
    CHECK(c->status_file == NULL);
    CHECK(!strcmp(c->state_file, "/s.scheduler-state"));
    nj_config_free(c);
    /* A store named by URL: the state file beside its directory. */
    static const char *const urls[][2] = {
        { "file:///srv/st", "/srv/st.scheduler-state" },
        { "file://localhost/srv/st", "/srv/st.scheduler-state" },
        { "obj+file:///srv/o", "/srv/o.scheduler-state" },
    };
    for (size_t i = 0; i < NJ_ARRAY_SIZE(urls); i++) {
        NJ_CLEANUP_FREE char *text =
            nj_asprintf("store=%s\nschedule=daily 02:00\n", urls[i][0]);
        NJ_CLEANUP_FREE char *p2 = write_conf("url.conf", text);
        c = nj_config_load(p2);
        CHECK(c && !strcmp(c->state_file, urls[i][1]));
        nj_config_free(c);
    }

    /* concurrency 0 means 1; a key given twice: the last one counts */
    NJ_CLEANUP_FREE char *p2 = write_conf("twice.conf",
        "store=/a\nstore=/b\nschedule=hourly\nschedule=daily 03:00\n"
        "concurrency=0\ndomains=x\ndomains=y z\ngc=yes\n");
    c = nj_config_load(p2);
    REQUIRE(c);
    static const char *const yz[] = { "y", "z" };
    CHECK(!strcmp(c->store, "/b") && !strcmp(c->schedule_text, "daily 03:00"));
    CHECK(c->schedule.hours == H(3) && c->concurrency == 1);
    CHECK(strv_is(c->domains, yz, 2) && c->gc);
    nj_config_free(c);
}

static void test_config_example(void)
{
    const char *ex = getenv("NJ_CONF_EXAMPLE");
    if (!ex) {
        printf("NJ_CONF_EXAMPLE not set: the shipped example is not checked\n");
        return;
    }
    struct nj_config *c = nj_config_load(ex);
    if (!c) {
        fprintf(stderr, "%s: %s\n", ex, nj_error_get());
        nj_test_failures++;
        return;
    }
    static const char *const all[] = { "*" };
    static const char *const test[] = { "test-*" };
    CHECK(!strcmp(c->store, "/var/lib/nightjar/store"));
    CHECK(!strcmp(c->uri, "qemu:///system"));
    CHECK(strv_is(c->domains, all, 1) && strv_is(c->exclude, test, 1));
    CHECK(!strcmp(c->schedule_text, "daily 02:00") && c->schedule.hours == H(2));
    CHECK(!strcmp(c->level, "auto"));
    CHECK(c->max_chain == 14 && c->max_age_days == 7 && c->concurrency == 2);
    CHECK(c->keep.last == 3 && c->keep.daily == 7 && c->keep.weekly == 4 &&
          c->keep.monthly == 6 && c->keep.hourly == 0 && c->keep.yearly == 0);
    CHECK(c->gc && c->gc_grace == 3600);
    CHECK(!strcmp(c->scratch_dir, "/var/tmp"));
    CHECK(c->status_file && !strcmp(c->status_file,
                                    "/var/lib/prometheus/node-exporter/nightjar.prom"));
    CHECK(!strcmp(c->state_file, "/var/lib/nightjar/store.scheduler-state"));
    nj_config_free(c);
}

/* Loading text fails with exactly "PATH<suffix>" where suffix starts
 * with want ("PATH:LINE: ..." or "PATH: ..."). */
static void config_bad(int line, const char *text, const char *want)
{
    NJ_CLEANUP_FREE char *path = write_conf("bad.conf", text);
    struct nj_config *c = nj_config_load(path);
    if (c) {
        fprintf(stderr, "line %d: accepted: %s\n", line, text);
        nj_test_failures++;
        nj_config_free(c);
        return;
    }
    NJ_CLEANUP_FREE char *full = nj_asprintf("%s%s", path, want);
    if (strncmp(nj_error_get(), full, strlen(full)) != 0) {
        fprintf(stderr, "line %d: error '%s', want '%s...'\n", line,
                nj_error_get(), full);
        nj_test_failures++;
    }
}

#define BAD(text, want) config_bad(__LINE__, text, want)
/* Two lines of comment and blank before the bad line 4. */
#define PRE "# nightjar\n\nstore = /s\n"

static void test_config_errors(void)
{
    BAD(PRE "colour = blue\nschedule = daily 02:00\n", ":4: unknown setting 'colour'");
    BAD(PRE "schedule daily 02:00\n", ":4: expected 'key = value'");
    BAD(PRE "keep-daily = seven\nschedule = daily 02:00\n",
        ":4: keep-daily: 'seven' is not a number");
    BAD(PRE "max-chain = -1\n", ":4: max-chain: '-1' is not a number");
    BAD(PRE "concurrency = 3x\n", ":4: concurrency: '3x' is not a number");
    BAD(PRE "keep-weekly = 99999999999999999999999\n", ":4: keep-weekly: ");
    BAD(PRE "max-age =\n", ":4: max-age: '' is not a number");
    BAD(PRE "gc-grace = soon\n", ":4: gc-grace: 'soon' is not a number");
    BAD(PRE "gc = maybe\n", ":4: gc: yes or no, not 'maybe'");
    BAD(PRE "schedule = daily 25:00\n",
        ":4: schedule 'daily 25:00' is not understood");
    BAD(PRE "schedule =\n", ":4: schedule '' is not understood");
    BAD(PRE "level = fastest\nschedule = daily 02:00\n", ":4: level: ");
    BAD(PRE "zstd-level = 0\nschedule = daily 02:00\n",
        ":4: zstd-level: '0' is not a zstd level");
    BAD(PRE "zstd-level = 9..1\nschedule = daily 02:00\n",
        ":4: zstd-level: '9..1' is not a zstd level");
    BAD(PRE "scratch-dir =\nschedule = daily 02:00\n", ":4: scratch-dir: ");
    BAD("# no store\n\nschedule = daily 02:00\n", ": 'store' is required");
    BAD("store = /s\n", ": 'schedule' is required");
    BAD("", ": 'store' is required");
    /* a line number far down, after CRLF lines and blank ones */
    BAD("store = /s\r\n\r\n\n\n# x\n  \nschedule = hourly\r\n\nbogus\n",
        ":9: expected 'key = value'");

    NJ_CLEANUP_FREE char *missing = nj_asprintf("%s/no-such.conf", dir);
    CHECK(nj_config_load(missing) == NULL);
    CHECK(strstr(nj_error_get(), "no-such.conf") != NULL);

    /* The administrator's configuration may be a symlink (configuration
     * management); a FIFO there is refused, not waited on. */
    NJ_CLEANUP_FREE char *real = nj_asprintf("%s/real.conf", dir);
    NJ_CLEANUP_FREE char *link = nj_asprintf("%s/link.conf", dir);
    NJ_CLEANUP_FREE char *fifo = nj_asprintf("%s/fifo.conf", dir);
    FILE *f = fopen(real, "w");
    CHECK(f != NULL);
    if (f) {
        fputs("store = /s\nschedule = hourly\n", f);
        fclose(f);
    }
    CHECK(symlink(real, link) == 0);
    struct nj_config *c = nj_config_load(link);
    CHECK(c != NULL && !strcmp(c->store, "/s"));
    nj_config_free(c);
    CHECK(mkfifo(fifo, 0600) == 0);
    CHECK(nj_config_load(fifo) == NULL);
    CHECK(strstr(nj_error_get(), "not a regular file") != NULL);
}

int main(void)
{
    test_parse();
    test_utc();
    test_berlin();
    test_consistency("UTC", utc(2024, 12, 20, 0, 0), 20 * 86400);
    test_consistency("Europe/Berlin", utc(2024, 3, 25, 0, 0), 14 * 86400);
    test_consistency("Europe/Berlin", utc(2024, 10, 21, 0, 0), 14 * 86400);
    set_tz("UTC");
    dir = nj_test_tmpdir("schedule");
    test_config_full();
    test_config_defaults();
    test_config_example();
    test_config_errors();
    nj_test_rmtree(dir);
    free(dir);
    return nj_test_done("test-schedule");
}
