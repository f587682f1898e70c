/*
 * test-chain: random sparse disks go through chains of full, incremental
 * and differential backups built with the catalog API; every point of
 * every chain is restored and compared byte for byte with the truth kept
 * beside it.  Disk sizes are not multiples of 64 KiB, writes land on the
 * last byte, and zeroes overwrite data.
 */
#include "nj-test.h"
#include "nj-restore.h"
#include "nj-util.h"

#include <string.h>
#include <sys/stat.h>

#define NDISKS 2

struct point {
    char *id;
    unsigned char *truth[NDISKS];
};

static const char *targets[NDISKS] = { "vda", "sdb" };

static void run_chain(const char *storedir, uint64_t seed, uint64_t grid)
{
    uint64_t rng = seed;
    uint64_t size[NDISKS];
    unsigned char *truth[NDISKS];
    struct nj_test_dirty since_last[NDISKS], since_full[NDISKS];
    for (int k = 0; k < NDISKS; k++) {
        /* 1..9 MiB plus an odd tail. */
        size[k] = (1 + nj_test_rand_below(&rng, 8)) * (1u << 20) +
                  1 + nj_test_rand_below(&rng, 65535);
        truth[k] = nj_calloc(1, size[k]);
        nj_test_dirty_init(&since_last[k], size[k]);
        nj_test_dirty_init(&since_full[k], size[k]);
        /* Sparse initial content. */
        nj_test_mutate(&rng, truth[k], size[k], &since_last[k], 12);
    }
    NJ_CLEANUP_FREE char *url = nj_test_store_url(storedir);
    struct nj_store *s = nj_test_store_create(url);
    REQUIRE(s);
    struct nj_codec *codec = nj_codec_new(NJ_ZSTD_LEVEL_DEFAULT);
    char uuid[64];
    snprintf(uuid, sizeof uuid, "00000000-0000-4000-8000-%012llx",
             (unsigned long long)seed);
    static const enum nj_level plan[] = { NJ_LEVEL_FULL, NJ_LEVEL_INC,
                                          NJ_LEVEL_INC,  NJ_LEVEL_DIFF,
                                          NJ_LEVEL_INC,  NJ_LEVEL_FULL,
                                          NJ_LEVEL_INC };
    size_t npoints = NJ_ARRAY_SIZE(plan);
    struct point *pts = nj_calloc(npoints, sizeof *pts);
    char *last = NULL, *last_full = NULL;
    for (size_t p = 0; p < npoints; p++) {
        struct nj_backup_params bp = {
            .domain_name = "chain \"test\" & <more>",
            .domain_uuid = uuid,
            .level = plan[p],
            .parent = plan[p] == NJ_LEVEL_INC ? last
                      : plan[p] == NJ_LEVEL_DIFF ? last_full : NULL,
        };
        struct nj_backup *b = nj_backup_begin(s, &bp);
        REQUIRE(b);
        for (int k = 0; k < NDISKS; k++) {
            bool full = plan[p] == NJ_LEVEL_FULL;
            const struct nj_test_dirty *dm =
                plan[p] == NJ_LEVEL_DIFF ? &since_full[k] : &since_last[k];
            REQUIRE(nj_test_store_disk(b, codec, targets[k], truth[k],
                                       size[k], dm, full, grid) == 0);
        }
        REQUIRE(nj_backup_commit(b) == 0);
        pts[p].id = nj_strdup(nj_backup_id(b));
        nj_backup_free(b);
        for (int k = 0; k < NDISKS; k++) {
            pts[p].truth[k] = nj_malloc(size[k]);
            memcpy(pts[p].truth[k], truth[k], size[k]);
            nj_test_dirty_clear(&since_last[k]);
            if (plan[p] == NJ_LEVEL_FULL)
                nj_test_dirty_clear(&since_full[k]);
        }
        free(last);
        last = nj_strdup(pts[p].id);
        if (plan[p] == NJ_LEVEL_FULL) {
            free(last_full);
            last_full = nj_strdup(pts[p].id);
        }
        /* Change the disks for the next point. */
        for (int k = 0; k < NDISKS; k++) {
            struct nj_test_dirty tmp;
            nj_test_dirty_init(&tmp, size[k]);
            nj_test_mutate(&rng, truth[k], size[k], &tmp,
                           1 + (int)nj_test_rand_below(&rng, 10));
            for (size_t i = 0; i < tmp.nblocks; i++)
                if (tmp.bit[i])
                    since_last[k].bit[i] = since_full[k].bit[i] = true;
            nj_test_dirty_free(&tmp);
        }
    }

    /* Every point restores exactly. */
    struct nj_catalog *c = nj_catalog_open(s);
    REQUIRE(c);
    CHECK(nj_catalog_count(c) == npoints);
    NJ_CLEANUP_FREE char *scratch = nj_asprintf("%s.restore", storedir);
    for (size_t p = 0; p < npoints; p++) {
        const struct nj_manifest *m = nj_catalog_find(c, pts[p].id);
        REQUIRE(m);
        CHECK(m->level == plan[p]);
        for (int k = 0; k < NDISKS; k++)
            CHECK(nj_test_restore_compare(s, c, m, targets[k], pts[p].truth[k],
                                          size[k], scratch) == 0);
    }
    /* "latest" is the last point. */
    const struct nj_manifest *lm =
        nj_catalog_resolve(c, "chain \"test\" & <more>", "latest");
    CHECK(lm && strcmp(lm->id, pts[npoints - 1].id) == 0);
    const struct nj_manifest *lu = nj_catalog_resolve(c, uuid, NULL);
    CHECK(lu && strcmp(lu->id, pts[npoints - 1].id) == 0);
    /* The diff's parent is the full, the chain of the last inc is 2 long. */
    const struct nj_manifest *dm = nj_catalog_find(c, pts[3].id);
    CHECK(dm && dm->parent && strcmp(dm->parent, pts[0].id) == 0);
    const struct nj_manifest **chain = NULL;
    CHECK(nj_catalog_chain(c, nj_catalog_find(c, pts[6].id), "vda", &chain) == 2);
    free(chain);

    /* A fresh full restore is sparse: zero ranges are holes. */
    {
        const struct nj_manifest *m0 = nj_catalog_find(c, pts[0].id);
        struct nj_output *out = nj_output_open(scratch, NJ_OUTPUT_RAW, size[0],
                                               false);
        REQUIRE(out);
        struct nj_restore_stats st;
        CHECK(nj_restore_disk(s, c, m0, "vda", out, NULL, &st) == 0);
        CHECK(nj_output_close(out, true) == 0);
        struct stat sb;
        CHECK(stat(scratch, &sb) == 0);
        /* Independently of the restore: the full stored every grid cell
         * holding a non-zero byte as data, every other as zero
         * (nj_test_store_disk), so that is what the restore must write;
         * and every non-zero byte lies in such a cell. */
        uint64_t nonzero = 0, data_cells = 0;
        for (uint64_t off = 0; off < size[0]; off += grid) {
            uint64_t n = NJ_MIN(grid, size[0] - off), nz = 0;
            for (uint64_t i = 0; i < n; i++)
                nz += pts[0].truth[0][off + i] != 0;
            nonzero += nz;
            data_cells += nz ? n : 0;
        }
        CHECK(nonzero > 0 && nonzero <= data_cells);
        CHECK(st.bytes_data == data_cells);
        CHECK(st.bytes_zero == size[0] - data_cells);
        /* Allocated bytes stay near the non-zero bytes (zero cells, and
         * zero runs inside data cells, are holes), far below the size
         * when the disk is mostly zero; 1 MiB covers block rounding. */
        CHECK((uint64_t)sb.st_blocks * 512 <= nonzero + (1u << 20));
        CHECK(st.bytes_data + st.bytes_zero == size[0]);
        printf("seed %llu: full of %llu bytes, %llu non-zero, %llu in data "
               "cells, %llu allocated after restore\n",
               (unsigned long long)seed, (unsigned long long)size[0],
               (unsigned long long)nonzero, (unsigned long long)data_cells,
               (unsigned long long)sb.st_blocks * 512);
        /* Refuses to overwrite without force. */
        CHECK(nj_output_open(scratch, NJ_OUTPUT_RAW, size[0], false) == NULL);
        CHECK(strstr(nj_error_get(), "--force") != NULL);
        unlink(scratch);
    }

    nj_catalog_free(c);
    for (size_t p = 0; p < npoints; p++) {
        free(pts[p].id);
        for (int k = 0; k < NDISKS; k++)
            free(pts[p].truth[k]);
    }
    free(pts);
    free(last);
    free(last_full);
    for (int k = 0; k < NDISKS; k++) {
        free(truth[k]);
        nj_test_dirty_free(&since_last[k]);
        nj_test_dirty_free(&since_full[k]);
    }
    nj_codec_free(codec);
    nj_store_close(s);
}

int main(void)
{
    char *dir = nj_test_tmpdir("chain");
    static const uint64_t grids[] = { 1u << 20, 4u << 20, 256u << 10 };
    for (uint64_t seed = 1; seed <= 6; seed++) {
        NJ_CLEANUP_FREE char *store = nj_asprintf("%s/store-%llu", dir,
                                                  (unsigned long long)seed);
        run_chain(store, seed, grids[seed % NJ_ARRAY_SIZE(grids)]);
    }
    nj_test_rmtree(dir);
    free(dir);
    return nj_test_done("test-chain");
}
