/*
 * nj-testgen: build a store with a known chain for the shell tests.
 *
 *   nj-testgen STORE TRUTHDIR [--domain NAME] [--uuid UUID] [--seed N]
 *              [--size BYTES] [--incs K] [--grid BYTES]
 *
 * Writes a full and K incrementals of one disk 'vda' through the catalog
 * API (the same random writes, zeroes and end-of-disk writes as the unit
 * tests), and after each commit TRUTHDIR/<id>.raw, the disk as it was at
 * that point.  Prints the ids, oldest first, one per line.
 */
#include "nj-io.h"
#include "nj-test.h"
#include "nj-util.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    const char *domain = "testgen", *uuid = NULL;
    uint64_t seed = 1, size = 3 * (1u << 20) + 4097, incs = 2,
             grid = 1u << 20;
    static const struct option opts[] = {
        { "domain", required_argument, NULL, 'd' },
        { "uuid", required_argument, NULL, 'u' },
        { "seed", required_argument, NULL, 's' },
        { "size", required_argument, NULL, 'z' },
        { "incs", required_argument, NULL, 'i' },
        { "grid", required_argument, NULL, 'g' },
        { NULL, 0, NULL, 0 },
    };
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'd': domain = optarg; break;
        case 'u': uuid = optarg; break;
        case 's': nj_parse_u64(optarg, &seed); break;
        case 'z': nj_parse_u64(optarg, &size); break;
        case 'i': nj_parse_u64(optarg, &incs); break;
        case 'g': nj_parse_u64(optarg, &grid); break;
        default: return 2;
        }
    }
    if (argc - optind != 2 || size == 0) {
        fprintf(stderr, "usage: nj-testgen STORE TRUTHDIR [options]\n");
        return 2;
    }
    const char *storedir = argv[optind], *truthdir = argv[optind + 1];
    char uuidbuf[64];
    if (!uuid) {
        snprintf(uuidbuf, sizeof uuidbuf, "11111111-2222-4333-8444-%012llx",
                 (unsigned long long)seed);
        uuid = uuidbuf;
    }
    struct nj_store *s = nj_store_open(storedir, NJ_STORE_CREATE);
    if (!s) {
        nj_error_print("nj-testgen");
        return 1;
    }
    struct nj_codec *codec = nj_codec_new(NJ_ZSTD_LEVEL_DEFAULT);
    uint64_t rng = seed;
    unsigned char *truth = nj_calloc(1, size);
    struct nj_test_dirty dirty;
    nj_test_dirty_init(&dirty, size);
    nj_test_mutate(&rng, truth, size, &dirty, 10);
    char *parent = NULL;
    for (uint64_t p = 0; p <= incs; p++) {
        struct nj_backup_params bp = {
            .domain_name = domain, .domain_uuid = uuid,
            .level = p ? NJ_LEVEL_INC : NJ_LEVEL_FULL,
            .parent = p ? parent : NULL,
            .checkpoint_name = "testgen-cp",
        };
        struct nj_backup *b = nj_backup_begin(s, &bp);
        if (!b || nj_test_store_disk(b, codec, "vda", truth, size, &dirty,
                                     p == 0, grid) < 0 ||
            nj_backup_commit(b) < 0) {
            nj_error_print("nj-testgen");
            return 1;
        }
        free(parent);
        parent = nj_strdup(nj_backup_id(b));
        nj_backup_free(b);
        NJ_CLEANUP_FREE char *path = nj_asprintf("%s/%s.raw", truthdir, parent);
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0 || nj_full_write(fd, truth, size) < 0) {
            fprintf(stderr, "nj-testgen: write '%s': %s\n", path,
                    strerror(errno));
            return 1;
        }
        close(fd);
        printf("%s\n", parent);
        nj_test_dirty_clear(&dirty);
        nj_test_mutate(&rng, truth, size, &dirty, 6);
    }
    free(parent);
    free(truth);
    nj_test_dirty_free(&dirty);
    nj_codec_free(codec);
    nj_store_close(s);
    return 0;
}
