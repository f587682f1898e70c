/*
 * test-io: nj_write_direct and nj_read_direct, the chunk writer and
 * reader that bypass the page cache where they can.  Every length around
 * the alignment, from aligned and unaligned buffers, on the test's own
 * directory and on /dev/shm (tmpfs, where O_DIRECT may be refused and the
 * ordinary path must take over): the file must hold exactly the bytes
 * given, no more; reading them back directly gives them exactly, and
 * asking for more than the file holds fails with ENODATA; the descriptor
 * is left without O_DIRECT.
 */
#include "nj-io.h"
#include "nj-test.h"
#include "nj-util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void run_in(const char *dir)
{
    static const size_t lens[] = { 0, 1, 511, 512, 4095, 4096, 4097, 8192,
                                   65536 + 17, NJ_DIRECT_MIN - 1,
                                   NJ_DIRECT_MIN, NJ_DIRECT_MIN + 1,
                                   (1u << 20) + 4095, (4u << 20) + 32 };
    size_t max = (4u << 20) + 32 + 2 * NJ_DIRECT_ALIGN;
    unsigned char *buf = nj_malloc_aligned(NJ_DIRECT_ALIGN, max);
    unsigned char *back = nj_malloc(max);
    uint64_t rng = 7;
    nj_test_fill_random(&rng, buf, max);
    char path[4096];
    snprintf(path, sizeof path, "%s/nj-test-io.%d", dir, (int)getpid());
    for (size_t i = 0; i < NJ_ARRAY_SIZE(lens); i++) {
        for (size_t shift = 0; shift <= 16; shift += 16) {
            const unsigned char *src = buf + shift;
            size_t len = lens[i];
            int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
            REQUIRE(fd >= 0);
            CHECK(nj_write_direct(fd, src, len) == 0);
            int fl = fcntl(fd, F_GETFL);
            CHECK(fl >= 0 && !(fl & O_DIRECT));
            struct stat st;
            CHECK(fstat(fd, &st) == 0 && (size_t)st.st_size == len);
            /* the file position is at the end, as after write() */
            CHECK(lseek(fd, 0, SEEK_CUR) == (off_t)len);
            CHECK(nj_full_pread(fd, back, len, 0) == 0);
            if (memcmp(back, src, len) != 0) {
                fprintf(stderr, "%s: length %zu, shift %zu: content differs\n",
                        dir, len, shift);
                nj_test_failures++;
            }
            /* read back directly, into an aligned and an unaligned buffer */
            unsigned char *rd = nj_malloc_aligned(NJ_DIRECT_ALIGN, max);
            CHECK(lseek(fd, 0, SEEK_SET) == 0);
            memset(rd, 0xee, max);
            CHECK(nj_read_direct(fd, rd + shift, len) == 0);
            CHECK(memcmp(rd + shift, src, len) == 0);
            fl = fcntl(fd, F_GETFL);
            CHECK(fl >= 0 && !(fl & O_DIRECT));
            CHECK(lseek(fd, 0, SEEK_SET) == 0);
            errno = 0;
            CHECK(nj_read_direct(fd, rd, len + 1) == -1 && errno == ENODATA);
            CHECK(lseek(fd, 0, SEEK_SET) == 0);
            CHECK(nj_read_direct(fd, rd, len + NJ_DIRECT_ALIGN) == -1 &&
                  errno == ENODATA);
            free(rd);
            close(fd);
            unlink(path);
        }
    }
    free(buf);
    free(back);
}

int main(void)
{
    const char *tmp = getenv("TMPDIR");
    run_in(tmp && *tmp ? tmp : "/tmp");
    run_in(".");
    struct stat st;
    if (stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode))
        run_in("/dev/shm");
    return nj_test_done("test-io");
}
