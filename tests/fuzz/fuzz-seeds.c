/*
 * fuzz-seeds: write small valid seed inputs for the fuzz targets, made
 * with the library's own encoders so that they always match the current
 * format.  Usage: fuzz-seeds DIR; writes DIR/seed-<target>-<name> for the
 * targets chunk, index and manifest (the names are listed in meson.build).
 */
#include "nj-chunk.h"
#include "nj-index.h"
#include "nj-io.h"
#include "nj-manifest.h"
#include "nj-util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *outdir;

static void die(const char *what)
{
    fprintf(stderr, "fuzz-seeds: %s: %s\n", what, nj_error_get());
    exit(1);
}

static char *seed_path(const char *target, const char *name)
{
    return nj_asprintf("%s/seed-%s-%s", outdir, target, name);
}

static void put(const char *target, const char *name, const void *buf,
                size_t len)
{
    NJ_CLEANUP_FREE char *path = seed_path(target, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || nj_full_write(fd, buf, len) < 0 || close(fd) < 0) {
        nj_error_errno(errno, "write '%s'", path);
        die("write");
    }
}

static void chunk_seed(struct nj_codec *c, const char *name,
                       const void *raw, size_t len)
{
    size_t flen = 0;
    const void *f = nj_codec_encode(c, raw, len, &flen);
    if (!f)
        die("encode");
    put("chunk", name, f, flen);
}

/* An index of n entries (zero, data, gap, repeating) over a disk. */
static void index_seed(const char *name, size_t n)
{
    NJ_CLEANUP_FREE char *path = seed_path("index", name);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        nj_error_errno(errno, "create '%s'", path);
        die("index");
    }
    uint64_t size = (uint64_t)n * 8192 + 4097;
    struct nj_index_writer *w = nj_index_writer_new(nj_stream_fd(fd), size);
    if (!w)
        die("index writer");
    for (size_t i = 0; i < n; i++) {
        struct nj_extent e = { .offset = (uint64_t)i * 8192,
                               .length = 4096 + (i % 2) * 4096 };
        if (i % 3 == 1) {
            e.kind = NJ_EXTENT_DATA;
            e.chunk_len = 65536;
            e.chunk_offset = (i * 512) % 32768;
            for (int k = 0; k < NJ_DIGEST_LEN; k++)
                e.digest.b[k] = (unsigned char)(i + (size_t)k);
        } else {
            e.kind = NJ_EXTENT_ZERO;
        }
        if (nj_index_writer_append(w, &e) < 0)
            die("index append");
    }
    if (nj_index_writer_finish(w, NULL, NULL, NULL) < 0)
        die("index finish");
    nj_index_writer_free(w);
}

static void manifest_seed(const char *name, enum nj_level level)
{
    struct nj_manifest m = {
        .id = (char *)"20260101T000000Z-0123abcd",
        .parent = level == NJ_LEVEL_INC ? (char *)"20251231T000000Z-89abcdef"
                                        : NULL,
        .level = level,
        .domain_name = (char *)"seed \"vm\" & <x> caf\xc3\xa9",
        .domain_uuid = (char *)"6f1c8a52-0d3e-4b7a-9c11-2e5f7d9a0b34",
        .domain_xml = (char *)"<domain><name>seed</name></domain>",
        .checkpoint_name = (char *)"cp-1",
        .started = 1767225600,
        .finished = 1767225660,
        .finished_us = 1767225660123456,
    };
    struct nj_manifest_disk disks[2] = {
        { .target = (char *)"vda", .format = (char *)"qcow2",
          .size = 1u << 30, .full = true, .index = (char *)"disk0.idx",
          .entries = 12, .covered = 1u << 30,
          .stats = { .bytes_read = 1u << 30, .chunks_new = 3 } },
        { .target = (char *)"sdb", .format = (char *)"raw",
          .size = 3149825, .full = level != NJ_LEVEL_INC,
          .index = (char *)"disk1.idx", .entries = 4,
          .covered = level != NJ_LEVEL_INC ? 3149825 : 1249281 },
    };
    for (int k = 0; k < NJ_DIGEST_LEN; k++) {
        disks[0].index_digest.b[k] = (unsigned char)k;
        disks[1].index_digest.b[k] = (unsigned char)(255 - k);
    }
    m.ndisks = 2;
    m.disks = disks;
    NJ_CLEANUP_FREE char *text = nj_manifest_to_json(&m);
    put("manifest", name, text, strlen(text));
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: fuzz-seeds DIR\n");
        return 2;
    }
    outdir = argv[1];
    if (mkdir(outdir, 0755) < 0 && errno != EEXIST) {
        perror(outdir);
        return 1;
    }
    struct nj_codec *c = nj_codec_new(NJ_ZSTD_LEVEL_DEFAULT);
    if (!c)
        die("codec");
    unsigned char buf[4096];
    uint64_t s = 0x9e3779b97f4a7c15ULL;
    for (size_t i = 0; i < sizeof buf; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        buf[i] = (unsigned char)s;
    }
    chunk_seed(c, "raw-1", buf, 1);
    chunk_seed(c, "raw-100", buf, 100);
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = (unsigned char)("nightjar seed "[i % 14]);
    chunk_seed(c, "zstd-4096", buf, sizeof buf);
    memset(buf, 0, sizeof buf);
    chunk_seed(c, "zstd-zero", buf, sizeof buf);
    nj_codec_free(c);

    index_seed("empty", 0);
    index_seed("small", 7);
    index_seed("window", 1030); /* crosses the reader's 1024-entry window */

    manifest_seed("full.json", NJ_LEVEL_FULL);
    manifest_seed("inc.json", NJ_LEVEL_INC);
    return 0;
}
