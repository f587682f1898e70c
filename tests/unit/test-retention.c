/*
 * test-retention: retention decisions on synthetic calendars, checked
 * against expectations worked out by hand: keep-last, each period rule,
 * rule order (a period covered by an earlier rule does not count), empty
 * periods, protected backups, ISO weeks across a year end, and local
 * days across both DST changes (Europe/Berlin).
 */
#include "nj-retention.h"
#include "nj-test.h"
#include "nj-util.h"

#include <string.h>
#include <time.h>

/* Local time to Unix seconds in the current TZ (isdst -1: let mktime
 * decide, as for a wall-clock timestamp). */
static int64_t at(int y, int mo, int d, int h, int mi)
{
    struct tm tm = { .tm_year = y - 1900, .tm_mon = mo - 1, .tm_mday = d,
                     .tm_hour = h, .tm_min = mi, .tm_isdst = -1 };
    return (int64_t)mktime(&tm);
}

static void set_tz(const char *tz)
{
    setenv("TZ", tz, 1);
    tzset();
}

/* Run rules over times (any order in; sorted newest first here) and
 * return a string of K/R/P marks in the input order. */
static void run(const int64_t *times, size_t n, const bool *prot,
                const struct nj_keep_rules *r, char *out)
{
    struct nj_retention_item *it = nj_calloc(n, sizeof *it);
    size_t *order = nj_calloc(n, sizeof *order);
    for (size_t i = 0; i < n; i++)
        order[i] = i;
    /* sort indexes by time, newest first (n is small) */
    for (size_t i = 0; i < n; i++)
        for (size_t k = i + 1; k < n; k++)
            if (times[order[k]] > times[order[i]]) {
                size_t t = order[i];
                order[i] = order[k];
                order[k] = t;
            }
    for (size_t i = 0; i < n; i++) {
        it[i].time = times[order[i]];
        it[i].protect = prot && prot[order[i]];
    }
    nj_retention_apply(it, n, r);
    for (size_t i = 0; i < n; i++) {
        char c = it[i].mark == NJ_MARK_KEEP ? 'K'
                 : it[i].mark == NJ_MARK_PROTECTED ? 'P' : 'R';
        out[order[i]] = c;
        if (it[i].mark == NJ_MARK_KEEP)
            CHECK(strncmp(it[i].reason, "keep-", 5) == 0);
        else if (it[i].mark == NJ_MARK_REMOVE)
            CHECK(it[i].reason[0] != '\0');
    }
    out[n] = '\0';
    free(it);
    free(order);
}

#define EXPECT(times, prot, rules, want)                                    \
    do {                                                                    \
        char got[64];                                                       \
        run(times, NJ_ARRAY_SIZE(times), prot, rules, got);                 \
        if (strcmp(got, want) != 0) {                                       \
            fprintf(stderr, "%s:%d: marks %s, want %s\n", __FILE__,         \
                    __LINE__, got, want);                                   \
            nj_test_failures++;                                             \
        }                                                                   \
    } while (0)

int main(void)
{
    set_tz("UTC");
    /* Two backups a day for five days, oldest first. */
    int64_t t[10];
    for (int d = 0; d < 5; d++) {
        t[2 * d] = at(2026, 3, 1 + d, 1, 0);
        t[2 * d + 1] = at(2026, 3, 1 + d, 13, 0);
    }
    struct nj_keep_rules last3 = { .last = 3 };
    EXPECT(t, NULL, &last3, "RRRRRRRKKK");
    /* Each kept day keeps its newest backup. */
    struct nj_keep_rules daily3 = { .daily = 3 };
    EXPECT(t, NULL, &daily3, "RRRRRKRKRK");
    /* keep-last 1 covers day 5; daily 2 then takes days 4 and 3. */
    struct nj_keep_rules l1d2 = { .last = 1, .daily = 2 };
    EXPECT(t, NULL, &l1d2, "RRRRRKRKRK");
    /* keep-last 2 keeps both of day 5: daily 2 still takes 4 and 3 (day
     * 5 is covered, it does not count again). */
    struct nj_keep_rules l2d2 = { .last = 2, .daily = 2 };
    EXPECT(t, NULL, &l2d2, "RRRRRKRKKK");
    /* More days asked than exist: everything's newest-of-day is kept. */
    struct nj_keep_rules daily9 = { .daily = 9 };
    EXPECT(t, NULL, &daily9, "RKRKRKRKRK");
    /* Protected backups stay and do not count. */
    bool prot[10] = { [0] = true, [9] = true };
    struct nj_keep_rules last2 = { .last = 2 };
    EXPECT(t, prot, &last2, "PRRRRRRKKP");

    /* Empty periods do not count: backups on days 1, 2 and 10. */
    int64_t gap[] = { at(2026, 3, 1, 12, 0), at(2026, 3, 2, 12, 0),
                      at(2026, 3, 10, 12, 0) };
    struct nj_keep_rules daily2 = { .daily = 2 };
    EXPECT(gap, NULL, &daily2, "RKK");

    /* ISO weeks across a year end: 2026-12-28 (Mon) .. 2027-01-03 (Sun)
     * is week 2026-W53; 2027-01-04 starts 2027-W01. */
    int64_t yr[] = { at(2026, 12, 27, 10, 0), at(2026, 12, 28, 10, 0),
                     at(2027, 1, 3, 10, 0), at(2027, 1, 4, 10, 0) };
    struct nj_keep_rules weekly2 = { .weekly = 2 };
    EXPECT(yr, NULL, &weekly2, "RRKK");
    struct nj_keep_rules weekly3 = { .weekly = 3 };
    EXPECT(yr, NULL, &weekly3, "KRKK");
    struct nj_keep_rules yearly1 = { .yearly = 1 };
    EXPECT(yr, NULL, &yearly1, "RRRK");
    struct nj_keep_rules yearly5 = { .yearly = 5 };
    EXPECT(yr, NULL, &yearly5, "RKRK");
    struct nj_keep_rules monthly2 = { .monthly = 2 };
    EXPECT(yr, NULL, &monthly2, "RKRK");
    /* Monthly then yearly: December is kept by monthly, so yearly 2026 is
     * covered; yearly 2 has only 2025-and-older left: none. */
    struct nj_keep_rules m1y2 = { .monthly = 1, .yearly = 2 };
    EXPECT(yr, NULL, &m1y2, "RKRK");

    /* Local days across DST, Europe/Berlin.  Spring forward 2026-03-29
     * 02:00 -> 03:00; fall back 2026-10-25 03:00 -> 02:00. */
    set_tz("Europe/Berlin");
    int64_t spring[] = { at(2026, 3, 28, 23, 30), at(2026, 3, 29, 0, 30),
                         at(2026, 3, 29, 3, 30), at(2026, 3, 29, 23, 30),
                         at(2026, 3, 30, 0, 30) };
    EXPECT(spring, NULL, &daily3, "KRRKK");
    /* 00:30 local on 29 March is still 28 March in UTC: local time
     * decides, so in UTC the marks differ. */
    set_tz("UTC");
    char utc[8];
    run(spring, 5, NULL, &daily3, utc);
    CHECK(strcmp(utc, "KRRKK") != 0);
    set_tz("Europe/Berlin");
    /* Fall back: 02:30 happens twice; both are the same local hour. */
    int64_t first = at(2026, 10, 25, 1, 30) + 3600;  /* 02:30 CEST */
    int64_t second = first + 3600;                    /* 02:30 CET */
    int64_t fall[] = { at(2026, 10, 25, 1, 30), first, second,
                       at(2026, 10, 25, 4, 0) };
    struct nj_keep_rules hourly9 = { .hourly = 9 };
    EXPECT(fall, NULL, &hourly9, "KRKK");
    struct nj_keep_rules daily1 = { .daily = 1 };
    EXPECT(fall, NULL, &daily1, "RRRK");

    /* No rule at all is reported empty (callers refuse it). */
    struct nj_keep_rules none = { 0 };
    CHECK(nj_keep_rules_empty(&none));
    CHECK(!nj_keep_rules_empty(&daily1));
    return nj_test_done("test-retention");
}
