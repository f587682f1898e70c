/*
 * nj-test.c: shared test support.  See nj-test.h.
 */
#include "nj-test.h"
#include "nj-io.h"
#include "nj-object.h"
#include "nj-s3.h"
#include "nj-restore.h"
#include "nj-util.h"

#include <dirent.h>
#include <errno.h>
#include <json-c/json.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
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

bool nj_test_s3_env(void)
{
    const char *ep = getenv("NJ_TEST_S3_ENDPOINT");
    const char *ak = getenv("NJ_TEST_S3_ACCESS_KEY");
    const char *sk = getenv("NJ_TEST_S3_SECRET_KEY");
    if (!ep || !*ep || !ak || !*ak || !sk || !*sk)
        return false;
    const char *region = getenv("NJ_TEST_S3_REGION");
    setenv("AWS_ENDPOINT_URL", ep, 1);
    setenv("AWS_ACCESS_KEY_ID", ak, 1);
    setenv("AWS_SECRET_ACCESS_KEY", sk, 1);
    setenv("AWS_REGION", region && *region ? region : "us-east-1", 1);
    /* No profile of the machine's user may leak into a test. */
    setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/nightjar-test", 1);
    return true;
}

char *nj_test_store_url(const char *local)
{
    const char *kind = getenv("NJ_TEST_STORE");
    if (kind && strcmp(kind, "v1") == 0)
        return nj_strdup(local); /* created by nj_test_create_flags() */
    if (kind && strcmp(kind, "objdir") == 0) {
        if (local[0] == '/')
            return nj_asprintf("obj+file://%s", local);
        char cwd[4096];
        REQUIRE(getcwd(cwd, sizeof cwd));
        return nj_asprintf("obj+file://%s/%s", cwd, local);
    }
    if (!kind || strcmp(kind, "s3") != 0)
        return nj_strdup(local);
    if (!nj_test_s3_env()) {
        printf("NJ_TEST_STORE=s3 but no test S3 endpoint: run "
               "scripts/ceph-start.sh and export what it prints\n");
        exit(77);
    }
    /* A prefix of its own in the shared test bucket, from the local
     * name, the pid and the time (runs never share one). */
    static unsigned seq;
    const char *base = strrchr(local, '/');
    base = base ? base + 1 : local;
    char clean[64];
    size_t n = 0;
    for (const char *p = base; *p && n < sizeof clean - 1; p++)
        clean[n++] = strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                            "0123456789-_", *p) ? *p : '_';
    clean[n] = '\0';
    return nj_asprintf("s3://nj-test/%ld-%ld-%u-%s", (long)time(NULL),
                       (long)getpid(), seq++, n ? clean : "store");
}

unsigned nj_test_create_flags(void)
{
    const char *kind = getenv("NJ_TEST_STORE");
    return NJ_STORE_CREATE |
           (kind && strcmp(kind, "v1") == 0 ? NJ_STORE_CREATE_V1 : 0);
}

struct nj_store *nj_test_store_create(const char *url)
{
    struct nj_store *s = nj_store_open(url, nj_test_create_flags());
    if (s) {
        /* The layout asked for, and no other. */
        const char *kind = getenv("NJ_TEST_STORE");
        REQUIRE(nj_test_store_is_obj(url) == !(kind && !strcmp(kind, "v1")));
    }
    return s;
}

bool nj_test_store_is_obj(const char *url)
{
    if (strncmp(url, "s3://", 5) == 0 || strncmp(url, "obj+file://", 11) == 0)
        return true;
    if (strstr(url, "://"))
        return false;
    /* A directory: the object layout unless its marker says version 1. */
    NJ_CLEANUP_FREE char *m = nj_asprintf("%s/nightjar-store.json", url);
    FILE *f = fopen(m, "r");
    REQUIRE(f);
    char buf[4096];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    struct json_object *j = json_tokener_parse(buf), *v = NULL;
    REQUIRE(j && json_object_object_get_ex(j, "version", &v));
    int version = json_object_get_int(v);
    json_object_put(j);
    return version != NJ_STORE_FORMAT_V1;
}

/* The object namespace of an object store's URL, and the store's key
 * prefix in it ("" or "PREFIX/"). */
static struct nj_objects *test_objects(const char *url, char **prefix)
{
    struct nj_objects *o;
    if (strncmp(url, "obj+file://", 11) == 0 || !strstr(url, "://")) {
        o = nj_objects_dir_new(strstr(url, "://") ? url + 11 : url);
        *prefix = nj_strdup("");
    } else {
        REQUIRE(strncmp(url, "s3://", 5) == 0);
        const char *b = url + 5;
        size_t blen = strcspn(b, "/");
        NJ_CLEANUP_FREE char *bucket = nj_calloc(1, blen + 1);
        memcpy(bucket, b, blen);
        const char *pre = b[blen] ? b + blen + 1 : "";
        *prefix = nj_asprintf("%s%s", pre, *pre ? "/" : "");
        struct nj_s3_config c = { 0 };
        REQUIRE(nj_s3_config_load(&c, NULL) == 0);
        o = nj_objects_s3_new(&c, bucket);
        nj_s3_config_clear(&c);
    }
    REQUIRE(o);
    return o;
}

char *nj_test_obj_read(const char *url, const char *key, size_t *len)
{
    NJ_CLEANUP_FREE char *prefix = NULL;
    struct nj_objects *o = test_objects(url, &prefix);
    NJ_CLEANUP_FREE char *k = nj_asprintf("%s%s", prefix, key);
    void *buf = NULL;
    if (nj_obj_get(o, k, 1 << 20, &buf, len) < 0)
        buf = NULL;
    nj_obj_free(o);
    return buf;
}

void nj_test_obj_chunks(const char *url,
                        void (*fn)(void *arg, const char *name, uint64_t size,
                                   int64_t mtime),
                        void *arg)
{
    NJ_CLEANUP_FREE char *base = NULL;
    struct nj_objects *o = test_objects(url, &base);
    NJ_CLEANUP_FREE char *prefix = nj_asprintf("%schunks/", base);
    char *token = NULL;
    do {
        struct nj_obj_page page = { 0 };
        REQUIRE(nj_obj_list(o, prefix, NULL, &token, &page) == 0);
        for (size_t i = 0; i < page.nobjects; i++) {
            const char *k = page.objects[i].key + strlen(prefix);
            fn(arg, strlen(k) > 3 ? k + 3 : k, page.objects[i].size,
               page.objects[i].mtime);
        }
        nj_obj_page_clear(&page);
    } while (token);
    nj_obj_free(o);
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

/* ---- syscall gates ---- */

#if defined(__x86_64__)
#define GATE_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define GATE_ARCH AUDIT_ARCH_AARCH64
#endif

#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define ARG_LO(i) (offsetof(struct seccomp_data, args[i]))
#else
#define ARG_LO(i) (offsetof(struct seccomp_data, args[i]) + 4)
#endif

#define CREATE_FLAGS (O_CREAT | (O_TMPFILE & ~O_DIRECTORY))

/* The calls stopped always (whatever their arguments). */
static const int gated_nrs[] = {
#ifdef __NR_creat
    __NR_creat,
#endif
#ifdef __NR_mkdir
    __NR_mkdir,
#endif
    __NR_mkdirat,
#ifdef __NR_rename
    __NR_rename,
#endif
#ifdef __NR_renameat
    __NR_renameat,
#endif
    __NR_renameat2,
#ifdef __NR_link
    __NR_link,
#endif
    __NR_linkat,
#ifdef __NR_unlink
    __NR_unlink,
#endif
    __NR_unlinkat,
#ifdef __NR_rmdir
    __NR_rmdir,
#endif
#ifdef __NR_symlink
    __NR_symlink,
#endif
    __NR_symlinkat,
    __NR_utimensat,
};

#ifdef GATE_ARCH
static size_t gate_filter(struct sock_filter *f, bool all_opens)
{
    size_t n = 0;
#define INS(x) (f[n++] = (struct sock_filter)x)
    INS(BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)));
    INS(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, GATE_ARCH, 1, 0));
    INS(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
    INS(BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)));
    for (size_t i = 0; i < NJ_ARRAY_SIZE(gated_nrs); i++) {
        INS(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)gated_nrs[i], 0, 1));
        INS(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF));
    }
    /* openat: flags in args[2]; open: in args[1]. */
    if (all_opens) {
        INS(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_openat, 0, 1));
        INS(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF));
    } else {
        INS(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_openat, 0, 4));
        INS(BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG_LO(2)));
        INS(BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, CREATE_FLAGS, 0, 1));
        INS(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF));
        INS(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
    }
#ifdef __NR_open
    INS(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_open, 0, 4));
    INS(BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG_LO(1)));
    INS(BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, all_opens ? ~0u : CREATE_FLAGS,
                 0, 1));
    INS(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF));
    INS(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
#endif
    INS(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
#undef INS
    return n;
}
#endif

/* In the child: install the filter, hand its listener to the parent.
 * On failure, send the errno instead and exit. */
static void gate_child(int sock, bool all_opens)
{
    int err = ENOSYS;
    int fd = -1;
#ifdef GATE_ARCH
    struct sock_filter f[64];
    struct sock_fprog prog = { .len = (unsigned short)gate_filter(f, all_opens),
                               .filter = f };
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        err = errno;
    else if ((fd = (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER,
                                SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog)) < 0)
        err = errno;
#endif
    char cbuf[CMSG_SPACE(sizeof(int))];
    memset(cbuf, 0, sizeof cbuf);
    struct iovec iov = { .iov_base = &err, .iov_len = sizeof err };
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
    if (fd >= 0) {
        err = 0;
        mh.msg_control = cbuf;
        mh.msg_controllen = sizeof cbuf;
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(cm), &fd, sizeof fd);
    }
    if (sendmsg(sock, &mh, 0) < 0 || fd < 0)
        _exit(126);
    close(fd);
    close(sock);
}

pid_t nj_test_gate_fork(struct nj_test_gate *g, bool all_opens)
{
    memset(g, 0, sizeof *g);
    g->listener = g->pidfd = g->memfd = -1;
    int sv[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0);
    fflush(NULL);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        close(sv[0]);
        gate_child(sv[1], all_opens);
        return 0;
    }
    close(sv[1]);
    int err = 0;
    char cbuf[CMSG_SPACE(sizeof(int))];
    struct iovec iov = { .iov_base = &err, .iov_len = sizeof err };
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
                         .msg_control = cbuf, .msg_controllen = sizeof cbuf };
    ssize_t n = recvmsg(sv[0], &mh, MSG_CMSG_CLOEXEC);
    close(sv[0]);
    struct cmsghdr *cm = n == (ssize_t)sizeof err ? CMSG_FIRSTHDR(&mh) : NULL;
    if (!cm || err != 0 || cm->cmsg_type != SCM_RIGHTS) {
        fprintf(stderr, "skipped: seccomp user notification is not "
                "available here (%s): the kill tests need it to stop a "
                "child at chosen steps\n", strerror(err ? err : EPROTO));
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        exit(77);
    }
    memcpy(&g->listener, CMSG_DATA(cm), sizeof(int));
    g->pid = pid;
    g->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    REQUIRE(g->pidfd >= 0);
    NJ_CLEANUP_FREE char *mem = nj_asprintf("/proc/%ld/mem", (long)pid);
    g->memfd = open(mem, O_RDONLY | O_CLOEXEC);
    REQUIRE(g->memfd >= 0);
    return pid;
}

/* A NUL-terminated string at addr in the child, or "" when unreadable. */
static void gate_read_str(struct nj_test_gate *g, uint64_t addr, char *out,
                          size_t cap)
{
    out[0] = '\0';
    if (!addr)
        return;
    size_t got = 0;
    while (got + 1 < cap) {
        /* Up to the end of the page: the next one may be unmapped. */
        size_t page = 4096 - (size_t)((addr + got) % 4096);
        size_t want = NJ_MIN(page, cap - 1 - got);
        ssize_t r = pread(g->memfd, out + got, want, (off_t)(addr + got));
        if (r <= 0)
            break;
        void *nul = memchr(out + got, '\0', (size_t)r);
        got += (size_t)r;
        if (nul)
            return;
    }
    out[got] = '\0';
}

/* path relative to dirfd (of thread tid), made absolute in out. */
static void gate_resolve(pid_t tid, int64_t dirfd, const char *path,
                         char *out, size_t cap)
{
    if (path[0] == '/' || (path[0] == '\0' && (int)dirfd == AT_FDCWD)) {
        snprintf(out, cap, "%s", path);
        return;
    }
    char link[64], dir[4096];
    if ((int)dirfd == AT_FDCWD)
        snprintf(link, sizeof link, "/proc/%ld/cwd", (long)tid);
    else
        snprintf(link, sizeof link, "/proc/%ld/fd/%d", (long)tid, (int)dirfd);
    ssize_t n = readlink(link, dir, sizeof dir - 1);
    dir[n > 0 ? n : 0] = '\0';
    if (path[0] == '\0') /* the fd itself (futimens) */
        snprintf(out, cap, "%s", dir);
    else
        snprintf(out, cap, "%s/%s", dir, path);
}

static void gate_describe(struct nj_test_gate *g, const struct seccomp_notif *q,
                          struct nj_test_call *c)
{
    const __u64 *a = q->data.args;
    pid_t tid = (pid_t)q->pid;
    char p1[4096], p2[4096];
    int64_t d1 = AT_FDCWD, d2 = AT_FDCWD;
    uint64_t s1 = 0, s2 = 0;
    c->id = q->id;
    c->flags = 0;
    int nr = q->data.nr;
    if (nr == __NR_openat) {
        d1 = (int64_t)a[0], s1 = a[1];
        c->kind = a[2] & CREATE_FLAGS ? NJ_CALL_CREATE : NJ_CALL_OPEN;
        c->flags = a[2];
    } else if (nr == __NR_mkdirat) {
        d1 = (int64_t)a[0], s1 = a[1], c->kind = NJ_CALL_MKDIR;
    } else if (nr == __NR_renameat2) {
        d1 = (int64_t)a[0], s1 = a[1], d2 = (int64_t)a[2], s2 = a[3];
        c->kind = NJ_CALL_RENAME, c->flags = a[4];
    } else if (nr == __NR_linkat) {
        d1 = (int64_t)a[0], s1 = a[1], d2 = (int64_t)a[2], s2 = a[3];
        c->kind = NJ_CALL_LINK, c->flags = a[4];
    } else if (nr == __NR_unlinkat) {
        d1 = (int64_t)a[0], s1 = a[1];
        c->kind = a[2] & AT_REMOVEDIR ? NJ_CALL_RMDIR : NJ_CALL_UNLINK;
    } else if (nr == __NR_symlinkat) {
        s2 = a[0], d1 = (int64_t)a[1], s1 = a[2], c->kind = NJ_CALL_SYMLINK;
    } else if (nr == __NR_utimensat) {
        d1 = (int64_t)a[0], s1 = a[1], c->kind = NJ_CALL_UTIME;
#ifdef __NR_renameat
    } else if (nr == __NR_renameat) {
        d1 = (int64_t)a[0], s1 = a[1], d2 = (int64_t)a[2], s2 = a[3];
        c->kind = NJ_CALL_RENAME;
#endif
#ifdef __NR_open
    } else if (nr == __NR_open) {
        s1 = a[0];
        c->kind = a[1] & CREATE_FLAGS ? NJ_CALL_CREATE : NJ_CALL_OPEN;
        c->flags = a[1];
#endif
#ifdef __NR_creat
    } else if (nr == __NR_creat) {
        s1 = a[0], c->kind = NJ_CALL_CREATE;
#endif
#ifdef __NR_mkdir
    } else if (nr == __NR_mkdir) {
        s1 = a[0], c->kind = NJ_CALL_MKDIR;
#endif
#ifdef __NR_rename
    } else if (nr == __NR_rename) {
        s1 = a[0], s2 = a[1], c->kind = NJ_CALL_RENAME;
#endif
#ifdef __NR_link
    } else if (nr == __NR_link) {
        s1 = a[0], s2 = a[1], c->kind = NJ_CALL_LINK;
#endif
#ifdef __NR_unlink
    } else if (nr == __NR_unlink) {
        s1 = a[0], c->kind = NJ_CALL_UNLINK;
#endif
#ifdef __NR_rmdir
    } else if (nr == __NR_rmdir) {
        s1 = a[0], c->kind = NJ_CALL_RMDIR;
#endif
#ifdef __NR_symlink
    } else if (nr == __NR_symlink) {
        s2 = a[0], s1 = a[1], c->kind = NJ_CALL_SYMLINK;
#endif
    } else {
        c->kind = NJ_CALL_OPEN;
    }
    gate_read_str(g, s1, p1, sizeof p1);
    gate_read_str(g, s2, p2, sizeof p2);
    if (c->kind == NJ_CALL_UTIME && !s1) /* futimens: the fd itself */
        p1[0] = '\0';
    gate_resolve(tid, d1, p1, c->path, sizeof c->path);
    if (c->kind == NJ_CALL_SYMLINK) /* the target is not resolved */
        snprintf(c->path2, sizeof c->path2, "%s", p2);
    else if (s2)
        gate_resolve(tid, d2, p2, c->path2, sizeof c->path2);
    else
        c->path2[0] = '\0';
}

static void gate_fail(struct nj_test_gate *g, const char *why)
{
    fprintf(stderr, "gate: %s: the failsafe of %d s is a failure\n", why,
            NJ_TEST_GATE_FAILSAFE);
    kill(g->pid, SIGKILL);
    exit(1);
}

int nj_test_gate_next(struct nj_test_gate *g, struct nj_test_call *call)
{
    if (g->ended)
        return 0;
    double deadline = nj_mono_sec() + NJ_TEST_GATE_FAILSAFE;
    for (;;) {
        struct pollfd pf[2] = { { .fd = g->listener, .events = POLLIN },
                                { .fd = g->pidfd, .events = POLLIN } };
        double left = deadline - nj_mono_sec();
        if (left <= 0)
            gate_fail(g, "the child took no step and did not end");
        int r = poll(pf, 2, (int)(left * 1000) + 1);
        if (r < 0 && errno == EINTR)
            continue;
        REQUIRE(r >= 0);
        if (pf[0].revents & POLLIN) {
            struct seccomp_notif q;
            memset(&q, 0, sizeof q);
            if (ioctl(g->listener, SECCOMP_IOCTL_NOTIF_RECV, &q) < 0) {
                if (errno == EINTR || errno == ENOENT)
                    continue; /* the caller died meanwhile */
                REQUIRE(!"SECCOMP_IOCTL_NOTIF_RECV");
            }
            gate_describe(g, &q, call);
            /* The strings were read from a live, waiting call. */
            if (ioctl(g->listener, SECCOMP_IOCTL_NOTIF_ID_VALID, &q.id) < 0)
                continue;
            g->steps++;
            return 1;
        }
        if (pf[1].revents & POLLIN) {
            REQUIRE(waitpid(g->pid, &g->status, 0) == g->pid);
            g->ended = true;
            return 0;
        }
        if (pf[0].revents & (POLLHUP | POLLERR)) {
            /* Every user of the filter is gone: the child is ending. */
            REQUIRE(waitpid(g->pid, &g->status, 0) == g->pid);
            g->ended = true;
            return 0;
        }
    }
}

void nj_test_gate_pass(struct nj_test_gate *g, const struct nj_test_call *call)
{
    struct seccomp_notif_resp resp = {
        .id = call->id,
        .flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE,
    };
    if (ioctl(g->listener, SECCOMP_IOCTL_NOTIF_SEND, &resp) < 0)
        REQUIRE(errno == ENOENT); /* the caller died meanwhile */
}

static void gate_release(struct nj_test_gate *g)
{
    if (g->listener >= 0)
        close(g->listener);
    if (g->pidfd >= 0)
        close(g->pidfd);
    if (g->memfd >= 0)
        close(g->memfd);
    g->listener = g->pidfd = g->memfd = -1;
}

int nj_test_gate_finish(struct nj_test_gate *g)
{
    struct nj_test_call c;
    while (nj_test_gate_next(g, &c) == 1)
        nj_test_gate_pass(g, &c);
    gate_release(g);
    return g->status;
}

int nj_test_gate_kill(struct nj_test_gate *g)
{
    if (!g->ended) {
        kill(g->pid, SIGKILL);
        REQUIRE(waitpid(g->pid, &g->status, 0) == g->pid);
        g->ended = true;
    }
    gate_release(g);
    return g->status;
}

bool nj_test_path_ends(const char *path, const char *name)
{
    size_t lp = strlen(path), ln = strlen(name);
    return lp > ln && path[lp - ln - 1] == '/' &&
           !strcmp(path + lp - ln, name);
}

bool nj_test_path_has(const char *path, const char *prefix)
{
    size_t n = strlen(prefix);
    for (const char *p = path; (p = strchr(p, '/')) != NULL; p++)
        if (!strncmp(p + 1, prefix, n))
            return true;
    return false;
}
