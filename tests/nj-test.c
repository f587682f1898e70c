/*
 * nj-test.c: shared test support.  See nj-test.h.
 */
#include "nj-test.h"
#include "nj-io.h"
#include "nj-restore.h"
#include "nj-util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int nj_test_failures;

uint64_t nj_test_rand(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

uint64_t nj_test_rand_below(uint64_t *s, uint64_t n)
{
    return n ? nj_test_rand(s) % n : 0;
}

void nj_test_fill_random(uint64_t *s, unsigned char *buf, size_t len)
{
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t v = nj_test_rand(s);
        memcpy(buf + i, &v, 8);
    }
    for (; i < len; i++)
        buf[i] = (unsigned char)nj_test_rand(s);
}

char *nj_test_tmpdir(const char *tag)
{
    const char *base = getenv("TMPDIR");
    char *t = nj_asprintf("%s/nightjar-%s-XXXXXX", base ? base : "/tmp", tag);
    if (!mkdtemp(t)) {
        fprintf(stderr, "mkdtemp %s: %s\n", t, strerror(errno));
        exit(1);
    }
    return t;
}

void nj_test_rmtree(const char *path)
{
    nj_remove_tree(AT_FDCWD, path);
}

void nj_test_dirty_init(struct nj_test_dirty *d, uint64_t size)
{
    d->size = size;
    d->nblocks = (size_t)((size + NJ_TEST_GRANULARITY - 1) / NJ_TEST_GRANULARITY);
    d->bit = nj_calloc(d->nblocks, sizeof *d->bit);
}

void nj_test_dirty_mark(struct nj_test_dirty *d, uint64_t off, uint64_t len)
{
    if (len == 0)
        return;
    for (uint64_t b = off / NJ_TEST_GRANULARITY;
         b <= (off + len - 1) / NJ_TEST_GRANULARITY && b < d->nblocks; b++)
        d->bit[b] = true;
}

void nj_test_dirty_clear(struct nj_test_dirty *d)
{
    memset(d->bit, 0, d->nblocks * sizeof *d->bit);
}

void nj_test_dirty_free(struct nj_test_dirty *d)
{
    free(d->bit);
    d->bit = NULL;
}

void nj_test_mutate(uint64_t *rng, unsigned char *truth, uint64_t size,
                    struct nj_test_dirty *dirty, int nops)
{
    for (int i = 0; i < nops; i++) {
        uint64_t kind = nj_test_rand_below(rng, 6);
        uint64_t len = 1 + nj_test_rand_below(rng, 300 * 1024);
        uint64_t off = nj_test_rand_below(rng, size);
        if (kind == 5) /* at the very end of the disk */
            off = size - NJ_MIN(len, size);
        len = NJ_MIN(len, size - off);
        switch (kind) {
        case 0:
        case 1:
        case 5:
            nj_test_fill_random(rng, truth + off, len);
            break;
        case 2: /* zeroes over whatever was there */
        case 3:
            memset(truth + off, 0, len);
            break;
        default: /* a repeated pattern: compressible and dedup-able */
            memset(truth + off, 0x5a, len);
            break;
        }
        nj_test_dirty_mark(dirty, off, len);
    }
    /* The last byte, often. */
    if (nj_test_rand_below(rng, 2)) {
        truth[size - 1] = (unsigned char)(1 + nj_test_rand_below(rng, 255));
        nj_test_dirty_mark(dirty, size - 1, 1);
    }
}

static int store_range(struct nj_backup *b, struct nj_backup_disk *d,
                       struct nj_codec *codec, const unsigned char *truth,
                       uint64_t off, uint64_t len, uint64_t grid)
{
    while (len > 0) {
        uint64_t cell_end = (off / grid + 1) * grid;
        uint64_t n = NJ_MIN(len, cell_end - off);
        struct nj_extent e = { .offset = off, .length = n };
        if (nj_is_zero(truth + off, (size_t)n)) {
            e.kind = NJ_EXTENT_ZERO;
            nj_backup_disk_count(d, n, n);
        } else {
            e.kind = NJ_EXTENT_DATA;
            e.chunk_len = (uint32_t)n;
            if (nj_backup_put_chunk(b, d, codec, truth + off, (size_t)n,
                                    &e.digest) < 0)
                return -1;
            nj_backup_disk_count(d, n, 0);
        }
        if (nj_backup_disk_append(d, &e) < 0)
            return -1;
        off += n;
        len -= n;
    }
    return 0;
}

int nj_test_store_disk(struct nj_backup *b, struct nj_codec *codec,
                       const char *target, const unsigned char *truth,
                       uint64_t size, const struct nj_test_dirty *dirty,
                       bool full, uint64_t grid)
{
    struct nj_backup_disk *d = nj_backup_disk_add(b, target, "qcow2", size,
                                                  full);
    if (!d)
        return -1;
    if (full)
        return store_range(b, d, codec, truth, 0, size, grid);
    for (size_t i = 0; i < dirty->nblocks;) {
        if (!dirty->bit[i]) {
            i++;
            continue;
        }
        size_t j = i;
        while (j < dirty->nblocks && dirty->bit[j])
            j++;
        uint64_t off = (uint64_t)i * NJ_TEST_GRANULARITY;
        uint64_t end = NJ_MIN((uint64_t)j * NJ_TEST_GRANULARITY, size);
        if (store_range(b, d, codec, truth, off, end - off, grid) < 0)
            return -1;
        i = j;
    }
    return 0;
}

int nj_test_restore_compare(struct nj_store *s, const struct nj_catalog *c,
                            const struct nj_manifest *m, const char *target,
                            const unsigned char *truth, uint64_t size,
                            const char *scratch_path)
{
    struct nj_output *out = nj_output_open(scratch_path, NJ_OUTPUT_RAW, size,
                                           true);
    if (!out)
        return -1;
    int r = nj_restore_disk(s, c, m, target, out, NULL, NULL);
    if (nj_output_close(out, r == 0) < 0 || r < 0)
        return -1;
    int fd = open(scratch_path, O_RDONLY);
    if (fd < 0)
        return nj_error_errno(errno, "open '%s'", scratch_path);
    struct stat st;
    fstat(fd, &st);
    int ret = 0;
    if ((uint64_t)st.st_size != size)
        ret = nj_error("restored size %lld, expected %llu",
                       (long long)st.st_size, (unsigned long long)size);
    unsigned char *buf = nj_malloc(1 << 20);
    for (uint64_t off = 0; ret == 0 && off < size; off += 1 << 20) {
        size_t n = (size_t)NJ_MIN(size - off, (uint64_t)(1 << 20));
        if (nj_full_pread(fd, buf, n, (off_t)off) < 0)
            ret = nj_error_errno(errno, "read back");
        else if (memcmp(buf, truth + off, n) != 0) {
            size_t k = 0;
            while (buf[k] == truth[off + k])
                k++;
            ret = nj_error("backup %s disk '%s' differs at byte %llu",
                           m->id, target, (unsigned long long)(off + k));
        }
    }
    free(buf);
    close(fd);
    unlink(scratch_path);
    return ret;
}

int nj_test_done(const char *name)
{
    if (nj_test_failures) {
        fprintf(stderr, "%s: %d check(s) failed\n", name, nj_test_failures);
        return 1;
    }
    printf("%s: ok\n", name);
    return 0;
}

/* Copy a directory tree (regular files and directories), keeping modes
 * and times: mtimes matter to garbage collection. */
static void copy_tree(int sfd, int dfd)
{
    int fd = dup(sfd);
    REQUIRE(fd >= 0);
    DIR *d = fdopendir(fd);
    REQUIRE(d);
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        struct stat st;
        REQUIRE(fstatat(sfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0);
        struct timespec t[2] = { st.st_atim, st.st_mtim };
        if (S_ISDIR(st.st_mode)) {
            REQUIRE(mkdirat(dfd, de->d_name, st.st_mode & 07777) == 0);
            int s2 = openat(sfd, de->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            int d2 = openat(dfd, de->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            REQUIRE(s2 >= 0 && d2 >= 0);
            copy_tree(s2, d2);
            futimens(d2, t);
            close(s2);
            close(d2);
        } else if (S_ISREG(st.st_mode)) {
            int in = openat(sfd, de->d_name, O_RDONLY | O_CLOEXEC);
            int out = openat(dfd, de->d_name,
                             O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC,
                             st.st_mode & 07777);
            REQUIRE(in >= 0 && out >= 0);
            char buf[65536];
            ssize_t n;
            while ((n = read(in, buf, sizeof buf)) > 0)
                REQUIRE(nj_full_write(out, buf, (size_t)n) == 0);
            REQUIRE(n == 0);
            REQUIRE(futimens(out, t) == 0);
            close(in);
            close(out);
        }
    }
    closedir(d);
}

void nj_test_copy_store(const char *from, const char *to)
{
    nj_test_rmtree(to);
    REQUIRE(mkdir(to, 0755) == 0);
    int sfd = open(from, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int dfd = open(to, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    REQUIRE(sfd >= 0 && dfd >= 0);
    copy_tree(sfd, dfd);
    close(sfd);
    close(dfd);
}

int nj_test_cmp_digest(const void *a, const void *b)
{
    return memcmp(a, b, sizeof(struct nj_digest));
}

void nj_test_digests_sort_unique(struct digest_vec *v)
{
    if (v->len)
        qsort(v->ptr, v->len, sizeof *v->ptr, nj_test_cmp_digest);
    size_t n = 0;
    for (size_t i = 0; i < v->len; i++)
        if (n == 0 || nj_test_cmp_digest(&v->ptr[n - 1], &v->ptr[i]) != 0)
            v->ptr[n++] = v->ptr[i];
    v->len = n;
}

void nj_test_referenced(struct nj_store *s, struct digest_vec *out,
                        uint64_t *refs)
{
    out->len = 0;
    if (refs)
        *refs = 0;
    struct nj_catalog *c = nj_catalog_open(s);
    REQUIRE(c);
    REQUIRE(nj_catalog_broken_count(c) == 0);
    for (size_t i = 0; i < nj_catalog_count(c); i++) {
        const struct nj_manifest *m = nj_catalog_get(c, i);
        for (size_t k = 0; k < m->ndisks; k++) {
            struct nj_index_reader *r =
                nj_manifest_index_open(s, m, &m->disks[k]);
            REQUIRE(r);
            struct nj_extent e;
            int rc;
            while ((rc = nj_index_reader_next(r, &e)) == 1)
                if (e.kind == NJ_EXTENT_DATA) {
                    digest_vec_append(out, e.digest);
                    if (refs)
                        (*refs)++;
                }
            REQUIRE(rc == 0);
            nj_index_reader_free(r);
        }
    }
    nj_catalog_free(c);
    nj_test_digests_sort_unique(out);
}
