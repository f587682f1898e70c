/*
 * test-frame: the chunk frame codec and CRC-32C.
 *
 * Round trips cover compressible and incompressible plaintext from 1 byte
 * to 4 MiB (and one chunk of NJ_CHUNK_MAX) and check every header field
 * against the layout in nj-chunk.h, with a CRC computed here by a plain
 * bitwise implementation that shares nothing with common/nj-digest.c.
 *
 * Every rejection path is then taken on purpose: each damaged frame is
 * built from a good one and, where the point is to reach a check behind
 * the CRC, its CRC is recomputed so that the check itself must catch it.
 * The zstd payloads that lie about their size are built byte by byte from
 * the zstd frame format (RFC 8878) so that the test does not depend on
 * what the library's compressor happens to emit.
 */
#include "nj-test.h"
#include "nj-chunk.h"
#include "nj-digest.h"
#include "nj-util.h"

#include <string.h>

/* ---- an independent CRC-32C ---- */

static uint32_t ref_crc32c(uint32_t crc, const void *buf, size_t len)
{
    const unsigned char *p = buf;
    crc = ~crc;
    while (len--) {
        crc ^= *p++;
        for (int k = 0; k < 8; k++)
            crc = (crc >> 1) ^ (0x82f63b78u & (0u - (crc & 1)));
    }
    return ~crc;
}

static void test_crc32c(void)
{
    /* The standard check value of CRC-32C. */
    CHECK(nj_crc32c(0, "123456789", 9) == 0xe3069283u);
    CHECK(ref_crc32c(0, "123456789", 9) == 0xe3069283u);
    CHECK(nj_crc32c(0, "", 0) == 0);

    /* RFC 3720 appendix B.4 vectors (32 bytes each). */
    unsigned char v[32];
    memset(v, 0, sizeof v);
    CHECK(nj_crc32c(0, v, sizeof v) == 0x8a9136aau);
    memset(v, 0xff, sizeof v);
    CHECK(nj_crc32c(0, v, sizeof v) == 0x62a8ab43u);
    for (int i = 0; i < 32; i++)
        v[i] = (unsigned char)i;
    CHECK(nj_crc32c(0, v, sizeof v) == 0x46dd794eu);
    for (int i = 0; i < 32; i++)
        v[i] = (unsigned char)(31 - i);
    CHECK(nj_crc32c(0, v, sizeof v) == 0x113fdb5cu);

    /*
     * Whatever path the library takes on this CPU (SSE4.2 or table), it
     * must agree with the bitwise reference at every length around the
     * 8-byte steps and at every alignment, and chaining must equal one
     * call over the whole buffer.
     */
    uint64_t rng = 42;
    enum { MAXLEN = 600 };
    unsigned char *buf = nj_malloc(MAXLEN + 16);
    nj_test_fill_random(&rng, buf, MAXLEN + 16);
    int bad = 0;
    for (size_t align = 0; align < 16; align++)
        for (size_t len = 0; len <= MAXLEN; len++) {
            uint32_t want = ref_crc32c(0, buf + align, len);
            if (nj_crc32c(0, buf + align, len) != want)
                bad++;
            size_t cut = len ? (size_t)nj_test_rand_below(&rng, len + 1) : 0;
            uint32_t c = nj_crc32c(0, buf + align, cut);
            c = nj_crc32c(c, buf + align + cut, len - cut);
            if (c != want)
                bad++;
        }
    CHECK(bad == 0);
    /* A long buffer, and a seed other than 0. */
    unsigned char *big = nj_malloc(1u << 20);
    nj_test_fill_random(&rng, big, 1u << 20);
    CHECK(nj_crc32c(0, big, 1u << 20) == ref_crc32c(0, big, 1u << 20));
    CHECK(nj_crc32c(0x12345678u, big + 3, 1000) ==
          ref_crc32c(0x12345678u, big + 3, 1000));
    free(big);
    free(buf);
}

/* ---- helpers ---- */

static void error_reset(void)
{
    nj_error("%s", "");
}

/* The CRC a frame should carry, computed with the reference CRC. */
static uint32_t frame_ref_crc(const unsigned char *f, size_t len)
{
    uint32_t c = ref_crc32c(0, f, 28);
    return ref_crc32c(c, f + NJ_CHUNK_HEADER_LEN, len - NJ_CHUNK_HEADER_LEN);
}

static void frame_fix_crc(unsigned char *f, size_t len)
{
    nj_put_le32(f + 28, frame_ref_crc(f, len));
}

static unsigned char *dup_frame(const void *f, size_t len)
{
    unsigned char *p = nj_malloc(len ? len : 1);
    memcpy(p, f, len);
    return p;
}

/*
 * Assert that decoding (and, when peek_too, peeking) the frame fails with
 * -1 and a last error containing want.
 */
static void reject_at(int line, const unsigned char *f, size_t len,
                      const struct nj_digest *expect, size_t raw_cap,
                      bool peek_too, const char *want, struct nj_codec *codec)
{
    unsigned char *raw = nj_malloc(raw_cap ? raw_cap : 1);
    /* A copy of exactly len bytes, so that ASan sees any overread. */
    unsigned char *copy = dup_frame(f, len);
    error_reset();
    ssize_t r = nj_chunk_decode(codec, copy, len, expect, raw, raw_cap);
    if (r != -1 || !*nj_error_get() || !strstr(nj_error_get(), want)) {
        fprintf(stderr, "line %d: decode returned %zd with '%s', wanted -1 "
                "and '%s'\n", line, r, nj_error_get(), want);
        nj_test_failures++;
    }
    if (peek_too) {
        uint32_t raw_len = 0xdeadbeef;
        error_reset();
        int p = nj_chunk_peek(copy, len, &raw_len);
        if (p != -1 || !*nj_error_get() || !strstr(nj_error_get(), want)) {
            fprintf(stderr, "line %d: peek returned %d with '%s', wanted -1 "
                    "and '%s'\n", line, p, nj_error_get(), want);
            nj_test_failures++;
        }
    }
    free(copy);
    free(raw);
}

#define REJECT(f, len, expect, cap, peek_too, want)                         \
    reject_at(__LINE__, f, len, expect, cap, peek_too, want, codec)

/* ---- round trips ---- */

enum fill { FILL_ZERO, FILL_TEXT, FILL_RANDOM, FILL_HALF };

static void fill(uint64_t *rng, unsigned char *p, size_t n, enum fill how)
{
    switch (how) {
    case FILL_ZERO:
        memset(p, 0, n);
        break;
    case FILL_TEXT:
        for (size_t i = 0; i < n; i++)
            p[i] = (unsigned char)("nightjar frames "[i % 16] + (i / 4096) % 3);
        break;
    case FILL_RANDOM:
        nj_test_fill_random(rng, p, n);
        break;
    case FILL_HALF:
        nj_test_fill_random(rng, p, n / 2);
        memset(p + n / 2, 0x5a, n - n / 2);
        break;
    }
}

static void round_trip(struct nj_codec *codec, uint64_t *rng, size_t n,
                       enum fill how)
{
    unsigned char *raw = nj_malloc(n);
    fill(rng, raw, n, how);
    struct nj_digest d;
    REQUIRE(nj_sha256(raw, n, &d) == 0);
    size_t cap = nj_chunk_frame_bound(n);
    CHECK(cap >= NJ_CHUNK_HEADER_LEN + n);
    unsigned char *frame = nj_malloc(cap);
    size_t flen = nj_chunk_encode(codec, raw, n, frame, cap);
    REQUIRE(flen > 0 && flen <= cap);

    /* Every header field, read against the documented layout. */
    uint32_t stored = nj_get_le32(frame + 12);
    CHECK(memcmp(frame, "NJCK", 4) == 0);
    CHECK(frame[4] == 1);
    CHECK(frame[5] == 0 || frame[5] == NJ_CHUNK_FLAG_ZSTD);
    CHECK(nj_get_le16(frame + 6) == 0);
    CHECK(nj_get_le32(frame + 8) == n);
    CHECK(stored + NJ_CHUNK_HEADER_LEN == flen);
    CHECK(nj_is_zero(frame + 16, 12));
    CHECK(nj_get_le32(frame + 28) == frame_ref_crc(frame, flen));
    /* Compression is kept only when it makes the payload smaller. */
    if (frame[5] & NJ_CHUNK_FLAG_ZSTD) {
        CHECK(stored < n);
    } else {
        CHECK(stored == n);
        CHECK(memcmp(frame + NJ_CHUNK_HEADER_LEN, raw, n) == 0);
    }
    if (how == FILL_RANDOM)
        CHECK(frame[5] == 0);
    if (how != FILL_RANDOM && n >= 256)
        CHECK(frame[5] == NJ_CHUNK_FLAG_ZSTD);
    if (n == 1)
        CHECK(frame[5] == 0);

    uint32_t peeked = 0;
    CHECK(nj_chunk_peek(frame, flen, &peeked) == 0 && peeked == n);

    /* Decode into a buffer of exactly n bytes, then a larger one. */
    unsigned char *out = nj_malloc(n);
    CHECK(nj_chunk_decode(codec, frame, flen, &d, out, n) == (ssize_t)n);
    CHECK(memcmp(out, raw, n) == 0);
    free(out);
    out = nj_malloc(n + 100);
    CHECK(nj_chunk_decode(codec, frame, flen, &d, out, n + 100) == (ssize_t)n);
    CHECK(memcmp(out, raw, n) == 0);
    free(out);
    /* One byte too small a destination is refused before decoding. */
    if (n > 1) {
        out = nj_malloc(n - 1);
        error_reset();
        CHECK(nj_chunk_decode(codec, frame, flen, &d, out, n - 1) == -1);
        CHECK(strstr(nj_error_get(), "exceeds the expected") != NULL);
        free(out);
    }

    /* The codec's own buffer gives the same bytes. */
    size_t clen = 0;
    const void *cf = nj_codec_encode(codec, raw, n, &clen);
    CHECK(cf && clen == flen && memcmp(cf, frame, flen) == 0);

    free(frame);
    free(raw);
}

static void test_round_trips(struct nj_codec *codec)
{
    static const size_t sizes[] = {
        1, 2, 7, 31, 32, 33, 63, 64, 255, 256, 511, 4096, 65535, 65536,
        65537, 131073, 1u << 20, (4u << 20) - 1, 4u << 20,
    };
    uint64_t rng = 7;
    for (size_t i = 0; i < NJ_ARRAY_SIZE(sizes); i++)
        for (int how = FILL_ZERO; how <= FILL_HALF; how++)
            round_trip(codec, &rng, sizes[i], (enum fill)how);
    /* The largest chunk a frame may hold. */
    round_trip(codec, &rng, NJ_CHUNK_MAX, FILL_HALF);
}

static void test_encode_refusals(struct nj_codec *codec)
{
    unsigned char raw[64] = { 0 };
    unsigned char out[256];
    error_reset();
    CHECK(nj_chunk_encode(codec, raw, 0, out, sizeof out) == 0);
    CHECK(strstr(nj_error_get(), "out of range") != NULL);
    error_reset();
    /* Refused on the length alone, before raw is read. */
    CHECK(nj_chunk_encode(codec, raw, (size_t)NJ_CHUNK_MAX + 1, out,
                          sizeof out) == 0);
    CHECK(strstr(nj_error_get(), "out of range") != NULL);
    error_reset();
    CHECK(nj_chunk_encode(codec, raw, sizeof raw, out,
                          nj_chunk_frame_bound(sizeof raw) - 1) == 0);
    CHECK(strstr(nj_error_get(), "too small") != NULL);
    size_t flen = 1;
    error_reset();
    CHECK(nj_codec_encode(codec, raw, 0, &flen) == NULL && flen == 0);
    CHECK(*nj_error_get() != '\0');
}

/* ---- rejections of damaged frames ---- */

static void test_header_rejections(struct nj_codec *codec, bool compressed)
{
    enum { N = 20000 };
    uint64_t rng = 99;
    unsigned char *raw = nj_malloc(N);
    fill(&rng, raw, N, compressed ? FILL_TEXT : FILL_RANDOM);
    struct nj_digest d;
    REQUIRE(nj_sha256(raw, N, &d) == 0);
    size_t cap = nj_chunk_frame_bound(N);
    unsigned char *good = nj_malloc(cap);
    size_t len = nj_chunk_encode(codec, raw, N, good, cap);
    REQUIRE(len > 0);
    REQUIRE((good[5] == NJ_CHUNK_FLAG_ZSTD) == compressed);
    unsigned char *f = nj_malloc(len);

    /* Truncated: nothing, less than a header, header only, one short. */
    REJECT(good, 0, &d, N, true, "frame truncated");
    REJECT(good, 1, &d, N, true, "frame truncated");
    REJECT(good, NJ_CHUNK_HEADER_LEN - 1, &d, N, true, "frame truncated");
    REJECT(good, NJ_CHUNK_HEADER_LEN, &d, N, true, "does not match header");
    REJECT(good, len - 1, &d, N, true, "does not match header");
    /* One byte too many. */
    {
        unsigned char *longer = nj_malloc(len + 1);
        memcpy(longer, good, len);
        longer[len] = 0;
        REJECT(longer, len + 1, &d, N, true, "does not match header");
        free(longer);
    }

    /* Bad magic (CRC recomputed, so the magic check must catch it). */
    memcpy(f, good, len);
    f[0] = 'X';
    frame_fix_crc(f, len);
    REJECT(f, len, &d, N, true, "bad frame magic");
    memcpy(f, good, len);
    memcpy(f, "njck", 4);
    frame_fix_crc(f, len);
    REJECT(f, len, &d, N, true, "bad frame magic");

    /* Unknown versions. */
    static const unsigned char versions[] = { 0, 2, 0xff };
    for (size_t i = 0; i < NJ_ARRAY_SIZE(versions); i++) {
        memcpy(f, good, len);
        f[4] = versions[i];
        frame_fix_crc(f, len);
        REJECT(f, len, &d, N, true, "unknown frame version");
    }

    /* Encrypted and unknown flags. */
    memcpy(f, good, len);
    f[5] |= NJ_CHUNK_FLAG_ENCRYPTED;
    frame_fix_crc(f, len);
    REJECT(f, len, &d, N, true, "encrypted chunks need a newer nightjar");
    for (int bit = 2; bit < 8; bit++) {
        memcpy(f, good, len);
        f[5] |= (unsigned char)(1u << bit);
        frame_fix_crc(f, len);
        REJECT(f, len, &d, N, true, "unsupported frame flags");
    }

    /* A nonzero envelope length, small and large. */
    memcpy(f, good, len);
    nj_put_le16(f + 6, 1);
    frame_fix_crc(f, len);
    REJECT(f, len, &d, N, true, "unexpected envelope of 1 bytes");
    memcpy(f, good, len);
    nj_put_le16(f + 6, 0xffff);
    frame_fix_crc(f, len);
    REJECT(f, len, &d, N, true, "unexpected envelope");

    /* Raw length 0 and above NJ_CHUNK_MAX. */
    memcpy(f, good, len);
    nj_put_le32(f + 8, 0);
    frame_fix_crc(f, len);
    REJECT(f, len, &d, N, true, "raw length 0 out of range");
    memcpy(f, good, len);
    nj_put_le32(f + 8, NJ_CHUNK_MAX + 1);
    frame_fix_crc(f, len);
    REJECT(f, len, &d, N, true, "out of range");
    memcpy(f, good, len);
    nj_put_le32(f + 8, UINT32_MAX);
    frame_fix_crc(f, len);
    REJECT(f, len, &d, N, true, "out of range");

    /* Stored length that disagrees with the frame size, both ways. */
    memcpy(f, good, len);
    nj_put_le32(f + 12, nj_get_le32(good + 12) + 1);
    frame_fix_crc(f, len);
    REJECT(f, len, &d, N, true,
           compressed ? "does not match header" : "differs from raw length");
    memcpy(f, good, len);
    nj_put_le32(f + 12, UINT32_MAX);
    frame_fix_crc(f, len);
    REJECT(f, len, &d, N, true,
           compressed ? "does not match header" : "differs from raw length");
    if (!compressed) {
        /* Uncompressed: stored must equal raw even when the frame agrees. */
        memcpy(f, good, len);
        nj_put_le32(f + 8, N - 1);
        frame_fix_crc(f, len);
        REJECT(f, len, &d, N, true, "differs from raw length");
    }

    /* Reserved bytes, each of them. */
    for (int i = 16; i < 28; i++) {
        memcpy(f, good, len);
        f[i] = 1;
        frame_fix_crc(f, len);
        REJECT(f, len, &d, N, true, "reserved header bytes are not zero");
    }

    /* A flipped payload byte anywhere: the CRC catches it. */
    static const size_t where[] = { 0, 1, 100, 5000 };
    for (size_t i = 0; i < NJ_ARRAY_SIZE(where); i++) {
        size_t at = NJ_CHUNK_HEADER_LEN +
                    NJ_MIN(where[i], len - NJ_CHUNK_HEADER_LEN - 1);
        memcpy(f, good, len);
        f[at] ^= 0x10;
        REJECT(f, len, &d, N, true, "frame checksum mismatch");
    }
    memcpy(f, good, len);
    f[len - 1] ^= 0x80;
    REJECT(f, len, &d, N, true, "frame checksum mismatch");

    /* Every single-bit flip of the header is rejected by some check. */
    int accepted = 0;
    for (int i = 0; i < NJ_CHUNK_HEADER_LEN; i++)
        for (int bit = 0; bit < 8; bit++) {
            memcpy(f, good, len);
            f[i] ^= (unsigned char)(1u << bit);
            uint32_t rl = 0;
            error_reset();
            if (nj_chunk_peek(f, len, &rl) != -1 || !*nj_error_get())
                accepted++;
            unsigned char *out = nj_malloc(N);
            error_reset();
            if (nj_chunk_decode(codec, f, len, &d, out, N) != -1 ||
                !*nj_error_get())
                accepted++;
            free(out);
        }
    CHECK(accepted == 0);
    /* The CRC field itself. */
    memcpy(f, good, len);
    f[29] ^= 1;
    REJECT(f, len, &d, N, true, "frame checksum mismatch");

    /* Raw length changed without fixing the CRC: the CRC catches it. */
    memcpy(f, good, len);
    nj_put_le32(f + 8, N + 1);
    REJECT(f, len, &d, N + 1, true, compressed ? "frame checksum mismatch"
                                               : "differs from raw length");

    /* Wrong expected digest: the frame is fine, the content is not it. */
    struct nj_digest wrong = d;
    wrong.b[31] ^= 1;
    REJECT(good, len, &wrong, N, false, "content digest mismatch");
    memset(&wrong, 0, sizeof wrong);
    REJECT(good, len, &wrong, N, false, "content digest mismatch");

    /* A destination smaller than the raw length. */
    REJECT(good, len, &d, N - 1, false, "exceeds the expected");
    REJECT(good, len, &d, 0, false, "exceeds the expected");

    if (compressed) {
        /* Header claims one byte less than the zstd frame holds. */
        memcpy(f, good, len);
        nj_put_le32(f + 8, N - 1);
        frame_fix_crc(f, len);
        REJECT(f, len, &d, N, false, "zstd frame declares 20000 bytes, "
                                     "header 19999");
        /* A damaged zstd payload behind a good CRC: never accepted. */
        int ok = 0;
        for (size_t at = NJ_CHUNK_HEADER_LEN; at < len; at += 7) {
            memcpy(f, good, len);
            f[at] ^= 0x55;
            frame_fix_crc(f, len);
            unsigned char *out = nj_malloc(N);
            error_reset();
            if (nj_chunk_decode(codec, f, len, &d, out, N) != -1 ||
                !*nj_error_get())
                ok++;
            free(out);
        }
        CHECK(ok == 0);
        /* The codec still works after all those errors. */
        unsigned char *out = nj_malloc(N);
        CHECK(nj_chunk_decode(codec, good, len, &d, out, N) == N);
        CHECK(memcmp(out, raw, N) == 0);
        free(out);
    }

    free(f);
    free(good);
    free(raw);
}

/* ---- zstd payloads that lie ---- */

/* Build a frame with the zstd flag around an arbitrary payload. */
static size_t make_frame(unsigned char *f, uint32_t raw_len,
                         const unsigned char *payload, size_t plen)
{
    memset(f, 0, NJ_CHUNK_HEADER_LEN);
    memcpy(f, NJ_CHUNK_MAGIC, 4);
    f[4] = NJ_CHUNK_VERSION;
    f[5] = NJ_CHUNK_FLAG_ZSTD;
    nj_put_le32(f + 8, raw_len);
    nj_put_le32(f + 12, (uint32_t)plen);
    memcpy(f + NJ_CHUNK_HEADER_LEN, payload, plen);
    frame_fix_crc(f, NJ_CHUNK_HEADER_LEN + plen);
    return NJ_CHUNK_HEADER_LEN + plen;
}

/*
 * A zstd frame (RFC 8878 section 3.1.1): magic 0xFD2FB528, a frame header
 * descriptor, then blocks with 3-byte headers (bit 0 last block, bits 1-2
 * type: 0 raw, 1 RLE; bits 3-23 size).  fcs < 0: no content size (a
 * window descriptor instead); otherwise a single-segment frame with a
 * 1-byte (fcs < 256) or 2-byte (value - 256) content size.
 */
static size_t zstd_begin(unsigned char *z, long fcs)
{
    size_t n = 0;
    z[n++] = 0x28;
    z[n++] = 0xb5;
    z[n++] = 0x2f;
    z[n++] = 0xfd;
    if (fcs < 0) {
        z[n++] = 0x00;  /* no FCS, not single segment */
        z[n++] = 0x08;  /* window descriptor: 2^(10+1) = 2 KiB */
    } else if (fcs < 256) {
        z[n++] = 0x20;  /* single segment, 1-byte FCS */
        z[n++] = (unsigned char)fcs;
    } else {
        z[n++] = 0x60;  /* single segment, 2-byte FCS */
        nj_put_le16(z + n, (uint16_t)(fcs - 256));
        n += 2;
    }
    return n;
}

static size_t zstd_raw_block(unsigned char *z, const unsigned char *data,
                             uint32_t size, bool last)
{
    uint32_t h = size << 3 | (last ? 1u : 0u);
    z[0] = (unsigned char)h;
    z[1] = (unsigned char)(h >> 8);
    z[2] = (unsigned char)(h >> 16);
    memcpy(z + 3, data, size);
    return 3 + size;
}

static size_t zstd_rle_block(unsigned char *z, unsigned char byte,
                             uint32_t size, bool last)
{
    uint32_t h = size << 3 | 1u << 1 | (last ? 1u : 0u);
    z[0] = (unsigned char)h;
    z[1] = (unsigned char)(h >> 8);
    z[2] = (unsigned char)(h >> 16);
    z[3] = byte;
    return 4;
}

static void test_zstd_lies(struct nj_codec *codec)
{
    enum { N = 200 };
    unsigned char data[N];
    for (int i = 0; i < N; i++)
        data[i] = (unsigned char)(i * 37 + 11);
    struct nj_digest d;
    REQUIRE(nj_sha256(data, N, &d) == 0);
    unsigned char z[1024], f[2048], out[4096];
    size_t zl, fl;

    /* Control: an honest hand-made frame decodes, so the cases below
     * fail for their lie and not for a malformed frame. */
    zl = zstd_begin(z, N);
    zl += zstd_raw_block(z + zl, data, N, true);
    fl = make_frame(f, N, z, zl);
    error_reset();
    CHECK(nj_chunk_decode(codec, f, fl, &d, out, N) == N);
    CHECK(memcmp(out, data, N) == 0);
    /* The same with an RLE block. */
    {
        unsigned char rle[300];
        memset(rle, 0xab, sizeof rle);
        struct nj_digest dr;
        REQUIRE(nj_sha256(rle, sizeof rle, &dr) == 0);
        zl = zstd_begin(z, sizeof rle);
        zl += zstd_rle_block(z + zl, 0xab, sizeof rle, true);
        fl = make_frame(f, sizeof rle, z, zl);
        CHECK(nj_chunk_decode(codec, f, fl, &dr, out, sizeof rle) ==
              (ssize_t)sizeof rle);
        CHECK(memcmp(out, rle, sizeof rle) == 0);
    }

    /* The zstd frame and the header disagree. */
    zl = zstd_begin(z, N);
    zl += zstd_raw_block(z + zl, data, N, true);
    fl = make_frame(f, N + 1, z, zl);
    REJECT(f, fl, &d, sizeof out, false, "zstd frame declares 200 bytes, "
                                         "header 201");
    fl = make_frame(f, N - 1, z, zl);
    REJECT(f, fl, &d, sizeof out, false, "zstd frame declares 200 bytes");

    /* Declared content size larger than the blocks hold, header agreeing
     * with the lie. */
    zl = zstd_begin(z, N + 1);
    zl += zstd_raw_block(z + zl, data, N, true);
    fl = make_frame(f, N + 1, z, zl);
    REJECT(f, fl, &d, sizeof out, false, "zstd decompress");

    /* Declared content size smaller than the blocks hold. */
    zl = zstd_begin(z, N - 1);
    zl += zstd_raw_block(z + zl, data, N, true);
    fl = make_frame(f, N - 1, z, zl);
    REJECT(f, fl, &d, sizeof out, false, "zstd decompress");

    /* An RLE block expanding far beyond the declared size (a bomb). */
    zl = zstd_begin(z, 300);
    zl += zstd_rle_block(z + zl, 0, 100000, true);
    fl = make_frame(f, 300, z, zl);
    REJECT(f, fl, &d, sizeof out, false, "zstd decompress");

    /* Two blocks whose sum exceeds the declared size. */
    zl = zstd_begin(z, N);
    zl += zstd_raw_block(z + zl, data, N, false);
    zl += zstd_raw_block(z + zl, data, 10, true);
    fl = make_frame(f, N, z, zl);
    REJECT(f, fl, &d, sizeof out, false, "zstd decompress");

    /* No last block: the frame is truncated. */
    zl = zstd_begin(z, N);
    zl += zstd_raw_block(z + zl, data, N, false);
    fl = make_frame(f, N, z, zl);
    REJECT(f, fl, &d, sizeof out, false, "zstd decompress");

    /* No content size at all: not trusted. */
    zl = zstd_begin(z, -1);
    zl += zstd_raw_block(z + zl, data, N, true);
    fl = make_frame(f, N, z, zl);
    REJECT(f, fl, &d, sizeof out, false, "zstd frame declares");

    /* A second frame behind the first. */
    zl = zstd_begin(z, N);
    zl += zstd_raw_block(z + zl, data, N, true);
    size_t zl2 = zstd_begin(z + zl, 50);
    zl2 += zstd_raw_block(z + zl + zl2, data, 50, true);
    fl = make_frame(f, N, z, zl + zl2);
    REJECT(f, fl, &d, sizeof out, false, "zstd decompress");
    fl = make_frame(f, N + 50, z, zl + zl2);
    REJECT(f, fl, &d, sizeof out, false, "zstd frame declares");

    /* Not a zstd frame at all, and a truncated zstd header. */
    fl = make_frame(f, N, data, N);
    REJECT(f, fl, &d, sizeof out, false, "zstd frame declares");
    zl = zstd_begin(z, N);
    fl = make_frame(f, N, z, 3);
    REJECT(f, fl, &d, sizeof out, false, "zstd frame declares");
    /* Header only, no block. */
    fl = make_frame(f, N, z, zl);
    REJECT(f, fl, &d, sizeof out, false, "zstd decompress");
}

int main(void)
{
    struct nj_codec *codec = nj_codec_new(NJ_ZSTD_LEVEL_DEFAULT);
    REQUIRE(codec);
    test_crc32c();
    test_round_trips(codec);
    test_encode_refusals(codec);
    test_header_rejections(codec, false);
    test_header_rejections(codec, true);
    test_zstd_lies(codec);
    nj_codec_free(codec);
    nj_codec_free(NULL);
    return nj_test_done("test-frame");
}
