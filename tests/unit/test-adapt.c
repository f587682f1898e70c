/*
 * test-adapt: the adaptive compression policy of the datapath, as a pure
 * function (nj_zstd_adapt: the step taken at the end of a window of
 * votes) and the --zstd-level syntax (nj_zstd_level_parse).  A simulated
 * pipeline then runs the step window after window against models of the
 * three situations it must tell apart: workers slower than the reads,
 * reads slower on a machine with idle cores, reads slower because the
 * cores are all busy; the level must settle at the bottom, the top and
 * the bottom of the range respectively, and never be 0.
 */
#include "nj-datapath.h"
#include "nj-test.h"
#include "nj-util.h"

#include <string.h>

static void parse_cases(void)
{
    int lo = 99, hi = 99;
    CHECK(nj_zstd_level_parse("auto", &lo, &hi) == 0 &&
          lo == NJ_ZSTD_AUTO_MIN && hi == NJ_ZSTD_AUTO_MAX);
    CHECK(nj_zstd_level_parse("5", &lo, &hi) == 0 && lo == 5 && hi == 5);
    CHECK(nj_zstd_level_parse("-3", &lo, &hi) == 0 && lo == -3 && hi == -3);
    CHECK(nj_zstd_level_parse("-3..2", &lo, &hi) == 0 && lo == -3 && hi == 2);
    CHECK(nj_zstd_level_parse("19", &lo, &hi) == 0 && lo == 19);
    CHECK(nj_zstd_level_parse("-10..19", &lo, &hi) == 0 && lo == -10 && hi == 19);
    CHECK(nj_zstd_level_parse("4..4", &lo, &hi) == 0 && lo == 4 && hi == 4);
    const char *bad[] = { "", "0", "20", "-11", "3..1", "1..", "..3", "abc",
                          "1...3", " 3", "3 ", "+", "+3", "--1", "1..0", "0..2", "2..20",
                          "99999999999999999999", "1..2..3", "auto..3" };
    for (size_t i = 0; i < NJ_ARRAY_SIZE(bad); i++) {
        lo = hi = 42;
        CHECK(nj_zstd_level_parse(bad[i], &lo, &hi) == -1);
        CHECK(lo == 42 && hi == 42);
        CHECK(strstr(nj_error_get(), "is not a zstd level") != NULL);
    }
}

static void step_cases(void)
{
    /* window 8: 6 behind lowers, 2 waited with idle cores raises */
    CHECK(nj_zstd_adapt(3, 1, 3, 8, 6, 0, 2.0) == 2);
    CHECK(nj_zstd_adapt(3, 1, 3, 8, 5, 0, 2.0) == 3);    /* no majority */
    CHECK(nj_zstd_adapt(2, 1, 3, 8, 0, 2, 1.0) == 3);
    CHECK(nj_zstd_adapt(2, 1, 3, 8, 0, 1, 1.0) == 2);    /* too few waits */
    CHECK(nj_zstd_adapt(2, 1, 3, 8, 0, 2, 0.4) == 2);    /* some idle: hold */
    CHECK(nj_zstd_adapt(2, 1, 3, 8, 0, 2, 0.1) == 1);    /* none: down */
    CHECK(nj_zstd_adapt(2, 1, 3, 8, 0, 8, -1) == 2);     /* unknown: hold */
    CHECK(nj_zstd_adapt(2, 1, 3, 8, 0, 0, 2.0) == 2);
    /* behind wins over waited */
    CHECK(nj_zstd_adapt(2, 1, 3, 8, 6, 2, 2.0) == 1);
    /* clamped to the range */
    CHECK(nj_zstd_adapt(1, 1, 3, 8, 8, 0, 0) == 1);
    CHECK(nj_zstd_adapt(3, 1, 3, 8, 0, 8, 2.0) == 3);
    CHECK(nj_zstd_adapt(7, 1, 3, 8, 0, 0, 0) == 3);
    /* level 0 is skipped both ways */
    CHECK(nj_zstd_adapt(1, -3, 3, 8, 8, 0, 0) == -1);
    CHECK(nj_zstd_adapt(-1, -3, 3, 8, 0, 8, 1.5) == 1);
    CHECK(nj_zstd_adapt(-1, -3, 3, 8, 8, 0, 0) == -2);
    CHECK(nj_zstd_adapt(1, -3, -1, 8, 0, 0, 0) == -1);
}

/*
 * A model pipeline: per window, `compress` MB/s per core at level l
 * (halving every 2 levels up), `read` MB/s the source can give when it
 * has the CPU it needs, and `cores` shared by the workers and the source
 * (which needs `src_cpu` cores at full speed).  Votes follow from which
 * side is slower; idle cores are what both leave.
 */
struct model {
    double cores, read, src_cpu, compress1;
};

static int simulate(const struct model *m, int lo, int hi, int start,
                    int windows, bool *saw_zero)
{
    int l = start;
    for (int w = 0; w < windows; w++) {
        double rate = m->compress1;
        for (int k = 1; k < l; k++)
            rate *= 0.7;
        for (int k = l; k < 1; k++)
            rate *= 1.3;
        double src_rate = m->read;
        double need = m->src_cpu;
        double cpu_rate = rate * (m->cores - need); /* after the source */
        double through = cpu_rate < src_rate ? cpu_rate : src_rate;
        double used = need * through / m->read + through / rate;
        double idle = m->cores - used;
        if (idle < 0)
            idle = 0;
        unsigned behind = 0, waited = 0;
        if (cpu_rate < src_rate * 0.9)
            behind = 8;                    /* the workers are the bottleneck */
        else
            waited = 4;                    /* they wait for reads */
        l = nj_zstd_adapt(l, lo, hi, 8, behind, waited, idle);
        if (l == 0)
            *saw_zero = true;
    }
    return l;
}

static void simulation_cases(void)
{
    bool zero = false;
    /* Many cores, a slow disk: compressing harder is free -> the top. */
    struct model slow_disk = { .cores = 16, .read = 200, .src_cpu = 0.2,
                               .compress1 = 300 };
    CHECK(simulate(&slow_disk, 1, 9, 3, 50, &zero) == 9);
    /* Few cores, a fast source: the workers are behind -> the bottom. */
    struct model fast_src = { .cores = 2, .read = 2000, .src_cpu = 0.5,
                              .compress1 = 300 };
    CHECK(simulate(&fast_src, -5, 3, 3, 50, &zero) == -5);
    CHECK(simulate(&fast_src, 1, 3, 3, 50, &zero) == 1);
    CHECK(!zero);
}

int main(void)
{
    parse_cases();
    step_cases();
    simulation_cases();
    return nj_test_done("test-adapt");
}
