/*
 * nj-retention.c: retention rules.  See nj-retention.h.
 */
#include "nj-retention.h"
#include "nj-util.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

bool nj_keep_rules_empty(const struct nj_keep_rules *r)
{
    return !r->last && !r->hourly && !r->daily && !r->weekly && !r->monthly &&
           !r->yearly;
}

enum period { P_LAST, P_HOUR, P_DAY, P_WEEK, P_MONTH, P_YEAR };

static const char *const rule_names[] = {
    [P_LAST] = "keep-last",   [P_HOUR] = "keep-hourly",
    [P_DAY] = "keep-daily",   [P_WEEK] = "keep-weekly",
    [P_MONTH] = "keep-monthly", [P_YEAR] = "keep-yearly",
};

/* The period an instant falls in, as a string key (local time). */
static void period_key(enum period p, int64_t t, size_t idx, char *buf,
                       size_t len)
{
    time_t tt = (time_t)t;
    struct tm tm;
    localtime_r(&tt, &tm);
    switch (p) {
    case P_LAST: snprintf(buf, len, "#%zu", idx); break; /* its own period */
    case P_HOUR: strftime(buf, len, "%Y-%m-%d %H", &tm); break;
    case P_DAY: strftime(buf, len, "%Y-%m-%d", &tm); break;
    case P_WEEK: strftime(buf, len, "%G-W%V", &tm); break;
    case P_MONTH: strftime(buf, len, "%Y-%m", &tm); break;
    case P_YEAR: strftime(buf, len, "%Y", &tm); break;
    }
}

/* Linear set of keys: rule counts are small (tens to hundreds). */
NJ_VECTOR(key_vec, char *);

static bool key_has(const struct key_vec *v, const char *k)
{
    for (size_t i = 0; i < v->len; i++)
        if (strcmp(v->ptr[i], k) == 0)
            return true;
    return false;
}

static void keys_free(struct key_vec *v)
{
    for (size_t i = 0; i < v->len; i++)
        free(v->ptr[i]);
    key_vec_reset(v);
}

static void apply_rule(struct nj_retention_item *items, size_t n,
                       bool *decided, enum period p, unsigned keep)
{
    if (keep == 0)
        return;
    char key[32];
    struct key_vec covered = { 0 }, taken = { 0 };
    /* Periods already covered by backups earlier rules kept. */
    for (size_t i = 0; i < n; i++)
        if (items[i].mark == NJ_MARK_KEEP) {
            period_key(p, items[i].time, i, key, sizeof key);
            if (!key_has(&covered, key))
                key_vec_append(&covered, nj_strdup(key));
        }
    for (size_t i = 0; i < n; i++) {
        if (decided[i])
            continue;
        period_key(p, items[i].time, i, key, sizeof key);
        if (key_has(&covered, key))
            continue;
        if (key_has(&taken, key)) {
            /* An older backup of a period this rule already kept. */
            decided[i] = true;
            items[i].mark = NJ_MARK_REMOVE;
            snprintf(items[i].reason, sizeof items[i].reason,
                     "older than the %s of %s", rule_names[p] + 5, key);
            continue;
        }
        if (taken.len >= keep)
            break;
        key_vec_append(&taken, nj_strdup(key));
        decided[i] = true;
        items[i].mark = NJ_MARK_KEEP;
        if (p == P_LAST)
            snprintf(items[i].reason, sizeof items[i].reason, "%s",
                     rule_names[p]);
        else
            snprintf(items[i].reason, sizeof items[i].reason, "%s %s",
                     rule_names[p], key);
    }
    keys_free(&covered);
    keys_free(&taken);
}

void nj_retention_apply(struct nj_retention_item *items, size_t n,
                        const struct nj_keep_rules *r)
{
    bool *decided = nj_calloc(n ? n : 1, sizeof *decided);
    for (size_t i = 0; i < n; i++) {
        items[i].mark = NJ_MARK_REMOVE;
        items[i].reason[0] = '\0';
        if (items[i].protect) {
            items[i].mark = NJ_MARK_PROTECTED;
            snprintf(items[i].reason, sizeof items[i].reason, "protected");
            decided[i] = true;
        }
    }
    apply_rule(items, n, decided, P_LAST, r->last);
    apply_rule(items, n, decided, P_HOUR, r->hourly);
    apply_rule(items, n, decided, P_DAY, r->daily);
    apply_rule(items, n, decided, P_WEEK, r->weekly);
    apply_rule(items, n, decided, P_MONTH, r->monthly);
    apply_rule(items, n, decided, P_YEAR, r->yearly);
    for (size_t i = 0; i < n; i++)
        if (!decided[i] && items[i].mark == NJ_MARK_REMOVE)
            snprintf(items[i].reason, sizeof items[i].reason,
                     "no rule keeps it");
    free(decided);
}
