/*
 * nj-index.c: extent index writer and streaming reader.
 *
 * Header (64 bytes, little-endian):
 *   0 magic "NJINDEX1"   8 version u32   12 entry size u32 (64)
 *  16 disk size u64     24 entry count u64  32 bytes covered u64
 *  40 reserved, zero
 * Entry (64 bytes):
 *   0 offset u64   8 length u64   16 chunk offset u64
 *  24 chunk length u32   28 kind u8   29 reserved (3 bytes, zero)
 *  32 digest (32 bytes; zero for ZERO entries)
 * Trailer: SHA-256 of header and entries (32 bytes).
 *
 * Invariants checked by both writer and reader: length > 0; offset +
 * length <= disk size without overflow; each entry starts at or after the
 * previous end; DATA entries satisfy chunk_offset + length <= chunk_len
 * <= NJ_CHUNK_MAX; ZERO entries carry no chunk fields.  The reader and
 * nj_index_check_buffer() also check that the lengths add up to the
 * header's bytes covered (the reader when it reaches the last entry).
 *
 * nj_index_reader_open_checked() is what restore, verify, prune and gc use
 * (through nj_manifest_index_open): it checks the cheap bounds a manifest
 * gives (file size from the entry count, count <= covered <= disk size)
 * before reading anything, then validates the whole index in the same pass
 * that hashes it, so that a reader which stops early (a view stops at the
 * disk size) never trusts an entry nobody checked.  What next() returns is
 * hashed again and compared at the end, against a file changed meanwhile.
 */
#include "nj-chunk.h"
#include "nj-index.h"
#include "nj-io.h"
#include "nj-util.h"

#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define WINDOW_ENTRIES 1024

static void encode_entry(unsigned char *p, const struct nj_extent *e)
{
    memset(p, 0, NJ_INDEX_ENTRY_LEN);
    nj_put_le64(p, e->offset);
    nj_put_le64(p + 8, e->length);
    if (e->kind == NJ_EXTENT_DATA) {
        nj_put_le64(p + 16, e->chunk_offset);
        nj_put_le32(p + 24, e->chunk_len);
        memcpy(p + 32, e->digest.b, NJ_DIGEST_LEN);
    }
    p[28] = (unsigned char)e->kind;
}

/* Check one entry against the disk size and the previous end. */
static int check_entry(const struct nj_extent *e, uint64_t disk_size,
                       uint64_t prev_end, uint64_t idx, const char *name)
{
    if (e->length == 0)
        return nj_error("index '%s' entry %llu: empty range at %llu", name,
                        (unsigned long long)idx,
                        (unsigned long long)e->offset);
    if (!nj_range_ok(e->offset, e->length, disk_size))
        return nj_error("index '%s' entry %llu: range %llu+%llu is past the "
                        "disk end %llu", name, (unsigned long long)idx,
                        (unsigned long long)e->offset,
                        (unsigned long long)e->length,
                        (unsigned long long)disk_size);
    if (e->offset < prev_end)
        return nj_error("index '%s' entry %llu: range at %llu overlaps or is "
                        "out of order (previous end %llu)", name,
                        (unsigned long long)idx,
                        (unsigned long long)e->offset,
                        (unsigned long long)prev_end);
    if (e->kind == NJ_EXTENT_DATA) {
        if (e->chunk_len == 0 || e->chunk_len > NJ_CHUNK_MAX ||
            !nj_range_ok(e->chunk_offset, e->length, e->chunk_len))
            return nj_error("index '%s' entry %llu: chunk range %llu+%llu "
                            "does not fit a chunk of %u bytes", name,
                            (unsigned long long)idx,
                            (unsigned long long)e->chunk_offset,
                            (unsigned long long)e->length, e->chunk_len);
    } else if (e->kind != NJ_EXTENT_ZERO) {
        return nj_error("index '%s' entry %llu: unknown kind %d", name,
                        (unsigned long long)idx, (int)e->kind);
    }
    return 0;
}

static int decode_entry(const unsigned char *p, struct nj_extent *e,
                        uint64_t idx, const char *name)
{
    memset(e, 0, sizeof *e);
    e->offset = nj_get_le64(p);
    e->length = nj_get_le64(p + 8);
    e->chunk_offset = nj_get_le64(p + 16);
    e->chunk_len = nj_get_le32(p + 24);
    if (p[29] || p[30] || p[31])
        return nj_error("index '%s' entry %llu: reserved bytes are not zero",
                        name, (unsigned long long)idx);
    switch (p[28]) {
    case NJ_EXTENT_ZERO:
        e->kind = NJ_EXTENT_ZERO;
        for (int i = 32; i < NJ_INDEX_ENTRY_LEN; i++)
            if (p[i])
                return nj_error("index '%s' entry %llu: zero entry with a "
                                "digest", name, (unsigned long long)idx);
        if (e->chunk_offset || e->chunk_len)
            return nj_error("index '%s' entry %llu: zero entry with chunk "
                            "fields", name, (unsigned long long)idx);
        break;
    case NJ_EXTENT_DATA:
        e->kind = NJ_EXTENT_DATA;
        memcpy(e->digest.b, p + 32, NJ_DIGEST_LEN);
        break;
    default:
        return nj_error("index '%s' entry %llu: unknown kind %u", name,
                        (unsigned long long)idx, p[28]);
    }
    return 0;
}

struct header {
    uint64_t disk_size, count, covered;
};

static void encode_header(unsigned char *p, const struct header *h)
{
    memset(p, 0, NJ_INDEX_HEADER_LEN);
    memcpy(p, NJ_INDEX_MAGIC, 8);
    nj_put_le32(p + 8, NJ_INDEX_VERSION);
    nj_put_le32(p + 12, NJ_INDEX_ENTRY_LEN);
    nj_put_le64(p + 16, h->disk_size);
    nj_put_le64(p + 24, h->count);
    nj_put_le64(p + 32, h->covered);
}

static int decode_header(const unsigned char *p, uint64_t file_len,
                         struct header *h, const char *name)
{
    if (file_len < NJ_INDEX_HEADER_LEN + NJ_DIGEST_LEN)
        return nj_error("index '%s' is truncated (%llu bytes)", name,
                        (unsigned long long)file_len);
    if (memcmp(p, NJ_INDEX_MAGIC, 8) != 0)
        return nj_error("index '%s' has a bad magic", name);
    if (nj_get_le32(p + 8) != NJ_INDEX_VERSION)
        return nj_error("index '%s' has unknown version %u", name,
                        nj_get_le32(p + 8));
    if (nj_get_le32(p + 12) != NJ_INDEX_ENTRY_LEN)
        return nj_error("index '%s' has entry size %u, expected %d", name,
                        nj_get_le32(p + 12), NJ_INDEX_ENTRY_LEN);
    for (int i = 40; i < NJ_INDEX_HEADER_LEN; i++)
        if (p[i])
            return nj_error("index '%s': reserved header bytes are not zero",
                            name);
    h->disk_size = nj_get_le64(p + 16);
    h->count = nj_get_le64(p + 24);
    h->covered = nj_get_le64(p + 32);
    uint64_t body = file_len - NJ_INDEX_HEADER_LEN - NJ_DIGEST_LEN;
    if (body % NJ_INDEX_ENTRY_LEN || body / NJ_INDEX_ENTRY_LEN != h->count)
        return nj_error("index '%s' claims %llu entries but holds %llu bytes "
                        "of entries", name, (unsigned long long)h->count,
                        (unsigned long long)body);
    if (h->covered > h->disk_size)
        return nj_error("index '%s' covers %llu bytes of a %llu-byte disk",
                        name, (unsigned long long)h->covered,
                        (unsigned long long)h->disk_size);
    /* Every entry covers at least one byte. */
    if (h->count > h->covered)
        return nj_error("index '%s' claims %llu entries covering %llu bytes",
                        name, (unsigned long long)h->count,
                        (unsigned long long)h->covered);
    return 0;
}

/* The SHA-256 of the first len bytes of in, read through buf. */
static int hash_file(struct nj_stream *in, uint64_t len, struct nj_digest *out,
                     unsigned char *buf, size_t bufsz)
{
    struct nj_sha256_ctx *sha = nj_sha256_new();
    if (!sha)
        return -1;
    uint64_t off = 0;
    int ret = 0;
    while (off < len) {
        size_t n = (size_t)NJ_MIN(len - off, (uint64_t)bufsz);
        if (nj_stream_pread(in, buf, n, off) < 0) {
            ret = -1;
            break;
        }
        if (nj_sha256_update(sha, buf, n) < 0) {
            ret = -1;
            break;
        }
        off += n;
    }
    if (ret == 0)
        ret = nj_sha256_final(sha, out);
    nj_sha256_free(sha);
    return ret;
}

/* ---- writer ---- */

struct nj_index_writer {
    struct nj_stream *out;
    uint64_t pos; /* where the next entries go */
    struct header h;
    struct nj_extent last; /* pending entry, for merging zeros */
    bool have_last;
    uint64_t end;
    unsigned char *buf;
    size_t buf_used;
    bool failed;
};

struct nj_index_writer *nj_index_writer_new(struct nj_stream *out,
                                           uint64_t disk_size)
{
    if (!out)
        return NULL; /* the error of whoever failed to make it */
    struct nj_index_writer *w = nj_calloc(1, sizeof *w);
    w->out = out;
    w->pos = NJ_INDEX_HEADER_LEN;
    w->h.disk_size = disk_size;
    w->buf = nj_malloc(WINDOW_ENTRIES * NJ_INDEX_ENTRY_LEN);
    unsigned char zero[NJ_INDEX_HEADER_LEN] = { 0 };
    /* The header is written last, once the counts are known. */
    if (nj_stream_pwrite(out, zero, sizeof zero, 0) < 0) {
        nj_error_prefix("write index header");
        nj_index_writer_free(w);
        return NULL;
    }
    return w;
}

static int writer_flush(struct nj_index_writer *w)
{
    if (w->buf_used == 0)
        return 0;
    if (nj_stream_pwrite(w->out, w->buf, w->buf_used, w->pos) < 0)
        return nj_error_prefix("write index");
    w->pos += w->buf_used;
    w->buf_used = 0;
    return 0;
}

static int writer_emit(struct nj_index_writer *w, const struct nj_extent *e)
{
    if (w->buf_used == WINDOW_ENTRIES * NJ_INDEX_ENTRY_LEN &&
        writer_flush(w) < 0)
        return -1;
    encode_entry(w->buf + w->buf_used, e);
    w->buf_used += NJ_INDEX_ENTRY_LEN;
    w->h.count++;
    w->h.covered += e->length;
    return 0;
}

int nj_index_writer_append(struct nj_index_writer *w, const struct nj_extent *e)
{
    if (w->failed)
        return nj_error("index writer already failed");
    if (check_entry(e, w->h.disk_size, w->end, w->h.count + w->have_last,
                    "new") < 0)
        return -1;
    w->end = e->offset + e->length;
    if (w->have_last && e->kind == NJ_EXTENT_ZERO &&
        w->last.kind == NJ_EXTENT_ZERO &&
        w->last.offset + w->last.length == e->offset) {
        w->last.length += e->length;
        return 0;
    }
    if (w->have_last && writer_emit(w, &w->last) < 0) {
        w->failed = true;
        return -1;
    }
    w->last = *e;
    w->have_last = true;
    return 0;
}

uint64_t nj_index_writer_end(const struct nj_index_writer *w)
{
    return w->end;
}

int nj_index_writer_finish(struct nj_index_writer *w, struct nj_digest *digest,
                           uint64_t *entries, uint64_t *covered)
{
    if (w->failed)
        return nj_error("index writer already failed");
    if (w->have_last && writer_emit(w, &w->last) < 0)
        return -1;
    w->have_last = false;
    if (writer_flush(w) < 0)
        return -1;
    unsigned char hdr[NJ_INDEX_HEADER_LEN];
    encode_header(hdr, &w->h);
    if (nj_stream_pwrite(w->out, hdr, sizeof hdr, 0) < 0)
        return nj_error_prefix("write index header");
    /* Hash the file as written, from the start. */
    uint64_t end = NJ_INDEX_HEADER_LEN + w->h.count * NJ_INDEX_ENTRY_LEN;
    struct nj_digest d;
    if (hash_file(w->out, end, &d, w->buf,
                  WINDOW_ENTRIES * NJ_INDEX_ENTRY_LEN) < 0)
        return nj_error_prefix("reread index");
    if (nj_stream_pwrite(w->out, d.b, NJ_DIGEST_LEN, end) < 0)
        return nj_error_prefix("write index trailer");
    if (nj_stream_flush(w->out) < 0)
        return nj_error_prefix("index");
    if (digest)
        *digest = d;
    if (entries)
        *entries = w->h.count;
    if (covered)
        *covered = w->h.covered;
    return 0;
}

void nj_index_writer_free(struct nj_index_writer *w)
{
    if (!w)
        return;
    nj_stream_close(w->out);
    free(w->buf);
    free(w);
}

/* ---- reader ---- */

struct nj_index_reader {
    struct nj_stream *in;
    char *name;
    struct header h;
    unsigned char hdr[NJ_INDEX_HEADER_LEN]; /* as read and checked */
    unsigned char *buf;
    size_t buf_entries, buf_pos;
    uint64_t next_idx; /* index of the next entry to return */
    uint64_t prev_end;
    uint64_t covered;  /* sum of the lengths returned so far */
    /* With a digest: what next() reads is hashed again, and compared at
     * the end, so that a file changed after the open is caught. */
    bool have_digest;
    struct nj_digest digest;
    struct nj_sha256_ctx *sha; /* NULL once the end was checked */
    bool stream_failed;
};

static int reader_init(struct nj_index_reader *r, const struct nj_digest *expect,
                       uint64_t disk_size)
{
    const char *name = r->name;
    uint64_t size;
    unsigned char hdr[NJ_INDEX_HEADER_LEN];
    if (nj_stream_size(r->in, &size) < 0)
        return nj_error_prefix("index '%s'", name);
    if (size < NJ_INDEX_HEADER_LEN + NJ_DIGEST_LEN)
        return nj_error("index '%s' is truncated (%llu bytes)", name,
                        (unsigned long long)size);
    if (nj_stream_pread(r->in, hdr, sizeof hdr, 0) < 0)
        return nj_error_prefix("read index '%s'", name);
    if (decode_header(hdr, size, &r->h, name) < 0)
        return -1;
    memcpy(r->hdr, hdr, sizeof hdr);
    if (disk_size && r->h.disk_size != disk_size)
        return nj_error("index '%s' is for a disk of %llu bytes, the "
                        "manifest says %llu", name,
                        (unsigned long long)r->h.disk_size,
                        (unsigned long long)disk_size);
    uint64_t body = size - NJ_DIGEST_LEN;
    struct nj_digest got, trailer;
    if (nj_stream_pread(r->in, trailer.b, NJ_DIGEST_LEN, body) < 0)
        return nj_error_prefix("read index '%s' trailer", name);
    if (hash_file(r->in, body, &got, r->buf,
                  WINDOW_ENTRIES * NJ_INDEX_ENTRY_LEN) < 0)
        return nj_error_prefix("index '%s'", name);
    if (!nj_digest_eq(&got, &trailer))
        return nj_error("index '%s' is damaged (checksum mismatch)", name);
    if (expect && !nj_digest_eq(&got, expect))
        return nj_error("index '%s' does not match the digest in its "
                        "manifest", name);
    r->have_digest = true;
    r->digest = got;
    return 0;
}

/* Start hashing what next() reads, from the header on. */
static int stream_start(struct nj_index_reader *r)
{
    nj_sha256_free(r->sha);
    r->sha = NULL;
    r->stream_failed = false;
    if (!r->have_digest)
        return 0;
    r->sha = nj_sha256_new();
    if (!r->sha || nj_sha256_update(r->sha, r->hdr, sizeof r->hdr) < 0)
        return nj_error_prefix("index '%s'", r->name);
    return 0;
}

/*
 * The checked open's one pass over the entries: hash them with the header
 * and check each one (order, bounds, chunk range) and their sum.  An entry
 * error is reported only once the digest matched, so that a damaged file
 * is called damaged rather than blamed on its first odd entry.
 */
static int check_all(struct nj_index_reader *r, const struct nj_index_expect *x)
{
    const char *name = r->name;
    struct nj_sha256_ctx *sha = nj_sha256_new();
    if (!sha || nj_sha256_update(sha, r->hdr, sizeof r->hdr) < 0) {
        nj_sha256_free(sha);
        return nj_error_prefix("index '%s'", name);
    }
    NJ_CLEANUP_FREE char *entry_error = NULL;
    uint64_t prev_end = 0, covered = 0;
    int ret = 0;
    for (uint64_t i = 0; i < r->h.count && ret == 0;) {
        size_t n = (size_t)NJ_MIN(r->h.count - i, (uint64_t)WINDOW_ENTRIES);
        uint64_t off = NJ_INDEX_HEADER_LEN + i * NJ_INDEX_ENTRY_LEN;
        if (nj_stream_pread(r->in, r->buf, n * NJ_INDEX_ENTRY_LEN, off) < 0)
            ret = nj_error_prefix("read index '%s'", name);
        else if (nj_sha256_update(sha, r->buf, n * NJ_INDEX_ENTRY_LEN) < 0)
            ret = nj_error_prefix("index '%s'", name);
        for (size_t k = 0; ret == 0 && !entry_error && k < n; k++) {
            struct nj_extent e;
            if (decode_entry(r->buf + k * NJ_INDEX_ENTRY_LEN, &e, i + k,
                             name) < 0 ||
                check_entry(&e, r->h.disk_size, prev_end, i + k, name) < 0) {
                entry_error = nj_strdup(nj_error_get());
                break;
            }
            prev_end = e.offset + e.length;
            covered += e.length;
        }
        i += n;
    }
    struct nj_digest got, trailer;
    if (ret == 0 && nj_sha256_final(sha, &got) < 0)
        ret = nj_error_prefix("index '%s'", name);
    nj_sha256_free(sha);
    if (ret < 0)
        return -1;
    uint64_t body = NJ_INDEX_HEADER_LEN + r->h.count * NJ_INDEX_ENTRY_LEN;
    if (nj_stream_pread(r->in, trailer.b, NJ_DIGEST_LEN, body) < 0)
        return nj_error_prefix("read index '%s' trailer", name);
    if (!nj_digest_eq(&got, &trailer))
        return nj_error("index '%s' is damaged (checksum mismatch)", name);
    if (!nj_digest_eq(&got, x->digest))
        return nj_error("index '%s' does not match the digest in its "
                        "manifest", name);
    if (entry_error)
        return nj_error("%s", entry_error);
    if (covered != r->h.covered)
        return nj_error("index '%s' covers %llu bytes, header says %llu",
                        name, (unsigned long long)covered,
                        (unsigned long long)r->h.covered);
    if (x->full && (covered != x->disk_size))
        return nj_error("index '%s' of a full disk covers %llu of %llu bytes",
                        name, (unsigned long long)covered,
                        (unsigned long long)x->disk_size);
    r->have_digest = true;
    r->digest = got;
    return 0;
}

static int reader_init_checked(struct nj_index_reader *r,
                               const struct nj_index_expect *x)
{
    const char *name = r->name;
    uint64_t size;
    if (!x->digest || x->disk_size == 0)
        return nj_error("index '%s': no digest or disk size to check it "
                        "against", name);
    /* Cheap bounds first: nothing of the entries is read before them. */
    if (x->covered > x->disk_size || x->entries > x->covered ||
        (x->full && x->covered != x->disk_size))
        return nj_error("index '%s': its manifest promises %llu entries "
                        "covering %llu bytes of a %llu-byte disk", name,
                        (unsigned long long)x->entries,
                        (unsigned long long)x->covered,
                        (unsigned long long)x->disk_size);
    if (nj_stream_size(r->in, &size) < 0)
        return nj_error_prefix("index '%s'", name);
    uint64_t max_entries = ((uint64_t)INT64_MAX - NJ_INDEX_HEADER_LEN -
                            NJ_DIGEST_LEN) / NJ_INDEX_ENTRY_LEN;
    if (x->entries > max_entries ||
        size != NJ_INDEX_HEADER_LEN + NJ_DIGEST_LEN +
                    x->entries * NJ_INDEX_ENTRY_LEN)
        return nj_error("index '%s' is %llu bytes, its manifest promises %llu "
                        "entries", name, (unsigned long long)size,
                        (unsigned long long)x->entries);
    if (nj_stream_pread(r->in, r->hdr, sizeof r->hdr, 0) < 0)
        return nj_error_prefix("read index '%s'", name);
    if (decode_header(r->hdr, size, &r->h, name) < 0)
        return -1;
    if (r->h.disk_size != x->disk_size || r->h.count != x->entries ||
        r->h.covered != x->covered)
        return nj_error("index '%s' is for a %llu-byte disk, %llu bytes in "
                        "%llu entries; its manifest says %llu, %llu in %llu",
                        name, (unsigned long long)r->h.disk_size,
                        (unsigned long long)r->h.covered,
                        (unsigned long long)r->h.count,
                        (unsigned long long)x->disk_size,
                        (unsigned long long)x->covered,
                        (unsigned long long)x->entries);
    if (check_all(r, x) < 0)
        return -1;
    return stream_start(r);
}

struct nj_index_reader *nj_index_reader_open_checked(
    struct nj_stream *in, const char *name, const struct nj_index_expect *x)
{
    struct nj_index_reader *r = nj_calloc(1, sizeof *r);
    r->in = in;
    r->name = nj_strdup(name);
    r->buf = nj_malloc(WINDOW_ENTRIES * NJ_INDEX_ENTRY_LEN);
    if (!in || reader_init_checked(r, x) < 0) {
        if (!in)
            nj_error("index '%s': no file", name);
        nj_index_reader_free(r);
        return NULL;
    }
    return r;
}

struct nj_index_reader *nj_index_reader_open(struct nj_stream *in,
                                             const char *name,
                                             const struct nj_digest *expect,
                                             uint64_t disk_size)
{
    if (!in)
        return NULL; /* the error of whoever failed to make it */
    struct nj_index_reader *r = nj_calloc(1, sizeof *r);
    r->in = in;
    r->name = nj_strdup(name);
    r->buf = nj_malloc(WINDOW_ENTRIES * NJ_INDEX_ENTRY_LEN);
    if (reader_init(r, expect, disk_size) < 0 || stream_start(r) < 0) {
        nj_index_reader_free(r);
        return NULL;
    }
    return r;
}

uint64_t nj_index_reader_disk_size(const struct nj_index_reader *r)
{
    return r->h.disk_size;
}

uint64_t nj_index_reader_covered(const struct nj_index_reader *r)
{
    return r->h.covered;
}

uint64_t nj_index_reader_count(const struct nj_index_reader *r)
{
    return r->h.count;
}

int nj_index_reader_rewind(struct nj_index_reader *r)
{
    r->buf_entries = r->buf_pos = 0;
    r->next_idx = 0;
    r->prev_end = 0;
    r->covered = 0;
    return stream_start(r);
}

int nj_index_reader_next(struct nj_index_reader *r, struct nj_extent *e)
{
    if (r->stream_failed)
        return nj_error("index '%s' changed while it was read", r->name);
    if (r->next_idx >= r->h.count) {
        /* As nj_index_check_buffer() does: the header must add up. */
        if (r->covered != r->h.covered)
            return nj_error("index '%s' covers %llu bytes, header says %llu",
                            r->name, (unsigned long long)r->covered,
                            (unsigned long long)r->h.covered);
        if (r->sha) {
            struct nj_digest got;
            int f = nj_sha256_final(r->sha, &got);
            nj_sha256_free(r->sha);
            r->sha = NULL;
            if (f < 0)
                return nj_error_prefix("index '%s'", r->name);
            if (!nj_digest_eq(&got, &r->digest)) {
                r->stream_failed = true;
                return nj_error("index '%s' changed while it was read",
                                r->name);
            }
        }
        return 0;
    }
    if (r->buf_pos == r->buf_entries) {
        uint64_t left = r->h.count - r->next_idx;
        size_t n = (size_t)NJ_MIN(left, (uint64_t)WINDOW_ENTRIES);
        uint64_t off = NJ_INDEX_HEADER_LEN + r->next_idx * NJ_INDEX_ENTRY_LEN;
        if (nj_stream_pread(r->in, r->buf, n * NJ_INDEX_ENTRY_LEN, off) < 0)
            return nj_error_prefix("read index '%s'", r->name);
        if (r->sha && nj_sha256_update(r->sha, r->buf,
                                       n * NJ_INDEX_ENTRY_LEN) < 0)
            return nj_error_prefix("index '%s'", r->name);
        r->buf_entries = n;
        r->buf_pos = 0;
    }
    const unsigned char *p = r->buf + r->buf_pos * NJ_INDEX_ENTRY_LEN;
    if (decode_entry(p, e, r->next_idx, r->name) < 0 ||
        check_entry(e, r->h.disk_size, r->prev_end, r->next_idx, r->name) < 0)
        return -1;
    r->buf_pos++;
    r->next_idx++;
    r->prev_end = e->offset + e->length;
    r->covered += e->length;
    return 1;
}

void nj_index_reader_free(struct nj_index_reader *r)
{
    if (!r)
        return;
    nj_stream_close(r->in);
    nj_sha256_free(r->sha);
    free(r->name);
    free(r->buf);
    free(r);
}

int nj_index_check_buffer(const void *buf, size_t len, uint64_t disk_size)
{
    const unsigned char *p = buf;
    struct header h;
    if (decode_header(p, len, &h, "buffer") < 0)
        return -1;
    if (disk_size && h.disk_size != disk_size)
        return nj_error("index is for another disk size");
    struct nj_digest got;
    size_t body = len - NJ_DIGEST_LEN;
    if (nj_sha256(p, body, &got) < 0)
        return -1;
    if (memcmp(got.b, p + body, NJ_DIGEST_LEN) != 0)
        return nj_error("index is damaged (checksum mismatch)");
    uint64_t prev_end = 0, covered = 0;
    for (uint64_t i = 0; i < h.count; i++) {
        struct nj_extent e;
        const unsigned char *q = p + NJ_INDEX_HEADER_LEN + i * NJ_INDEX_ENTRY_LEN;
        if (decode_entry(q, &e, i, "buffer") < 0 ||
            check_entry(&e, h.disk_size, prev_end, i, "buffer") < 0)
            return -1;
        prev_end = e.offset + e.length;
        covered += e.length;
    }
    if (covered != h.covered)
        return nj_error("index covers %llu bytes, header says %llu",
                        (unsigned long long)covered,
                        (unsigned long long)h.covered);
    return 0;
}
