/*
 * nj-schedule.h: when the scheduler runs, and its configuration file.
 */
#ifndef NJ_SCHEDULE_H
#define NJ_SCHEDULE_H

#include <stdbool.h>
#include <stdint.h>

#include "nj-retention.h"

/*
 * A calendar, from one of:
 *   "daily HH:MM"            every day at that local time
 *   "hourly" / "hourly :MM"  every hour (at minute MM)
 *   "weekly DOW HH:MM"       once a week ("weekly Sun 03:00")
 *   "[DOW[,DOW|..DOW]] *-*-* HH:MM[:SS]"  a systemd-like subset: an
 *       optional weekday list or range ("Mon..Fri", "Sat,Sun"), the date
 *       part "*-*-*", and hour and minute fields that are a number, "*",
 *       a comma list ("2,14") or a step ("*\/6"); seconds must be 0.
 * A weekday is "Mon" or "Monday", in any case.
 *
 * Times are local.  When clocks go forward, a time in the skipped hour
 * does not exist and does not fire that day ("daily 02:30" on the
 * spring-forward day of Europe/Berlin: the next match is the next day's
 * 02:30).  When clocks go back, a time in the repeated hour fires once,
 * at its first occurrence; the repeat is no match.
 */
struct nj_calendar {
    uint8_t dow;        /* bit d: weekday d (0 = Sunday) */
    uint32_t hours;     /* bit h */
    uint64_t minutes;   /* bit m */
};

int nj_calendar_parse(const char *spec, struct nj_calendar *c);
/* The first matching minute strictly after t, local time; -1 if none
 * within a year. */
int64_t nj_calendar_next(const struct nj_calendar *c, int64_t t);
/* The last matching minute at or before t; -1 if none within a year. */
int64_t nj_calendar_prev(const struct nj_calendar *c, int64_t t);

struct nj_config {
    char *store, *uri, *scratch_dir, *status_file, *state_file;
    char **domains, **exclude;   /* NULL-terminated glob lists */
    struct nj_calendar schedule;
    char *schedule_text;
    char *level;                 /* auto, full, inc, diff, copy */
    char *zstd_level;            /* --zstd-level for every backup, or NULL */
    char *sync_to;               /* a store to sync to after each run */
    unsigned max_chain, max_age_days, concurrency;
    struct nj_keep_rules keep;
    int64_t gc_grace;
    bool gc;
    /* S3 settings ("s3-endpoint", ...; nj-s3.h): key, value pairs, NULL
     * terminated, or NULL when the file has none. */
    char **s3;
};

/* Parse a configuration file ("key = value" lines, '#' comments); every
 * error names the file and line. */
struct nj_config *nj_config_load(const char *path);
void nj_config_free(struct nj_config *c);

struct nj_run_opts {
    const char *config;
    bool once;               /* run every job now, then exit */
    int64_t simulate_from;   /* > 0: simulated clock starts here */
    unsigned simulate_runs;  /* with simulate_from: this many runs */
};

/* The long-running service (or one pass with once). */
int nj_agent_run(const struct nj_run_opts *o);

#endif
