/*
 * nj-chunk.c: the chunk frame codec.  See nj-chunk.h for the layout.
 */
#include "nj-chunk.h"
#include "nj-io.h"
#include "nj-util.h"

#include <string.h>
#include <sys/types.h>
#include <zstd.h>

struct nj_codec {
    ZSTD_CCtx *cctx;
    ZSTD_DCtx *dctx;
    int level;
    void *scratch;
    size_t scratch_cap;
};

struct nj_codec *nj_codec_new(int level)
{
    struct nj_codec *c = nj_calloc(1, sizeof *c);
    c->cctx = ZSTD_createCCtx();
    c->dctx = ZSTD_createDCtx();
    c->level = level;
    if (!c->cctx || !c->dctx) {
        nj_codec_free(c);
        nj_error("cannot create zstd contexts");
        return NULL;
    }
    ZSTD_CCtx_setParameter(c->cctx, ZSTD_c_compressionLevel, level);
    /* The frame has its own checksum and the plaintext its SHA-256. */
    ZSTD_CCtx_setParameter(c->cctx, ZSTD_c_checksumFlag, 0);
    return c;
}

void nj_codec_set_level(struct nj_codec *c, int level)
{
    if (level == c->level)
        return;
    c->level = level;
    ZSTD_CCtx_setParameter(c->cctx, ZSTD_c_compressionLevel, level);
}

int nj_codec_level(const struct nj_codec *c)
{
    return c->level;
}

void nj_codec_free(struct nj_codec *c)
{
    if (!c)
        return;
    ZSTD_freeCCtx(c->cctx);
    ZSTD_freeDCtx(c->dctx);
    free(c->scratch);
    free(c);
}

size_t nj_chunk_frame_bound(size_t raw_len)
{
    size_t z = ZSTD_compressBound(raw_len);
    return NJ_CHUNK_HEADER_LEN + NJ_MAX(z, raw_len);
}

static uint32_t frame_crc(const unsigned char *hdr, const void *rest,
                          size_t rest_len)
{
    uint32_t crc = nj_crc32c(0, hdr, 28);
    return nj_crc32c(crc, rest, rest_len);
}

/*
 * Already-compressed or encrypted data does not shrink, and compressing a
 * whole chunk of it costs as much as compressing text.  A large chunk is
 * therefore sampled first, at its start, middle and end: when none of the
 * three samples shrinks by 2 % at level 1, the chunk is stored as it is.
 * (Being wrong costs only compression on a chunk whose three samples
 * looked random and whose rest did not; the frame is valid either way.)
 */
#define SAMPLE (32u << 10)

static bool sample_shrinks(struct nj_codec *c, const unsigned char *p,
                           void *scratch, size_t cap)
{
    size_t n = ZSTD_compressCCtx(c->cctx, scratch, cap, p, SAMPLE, 1);
    return ZSTD_isError(n) || n < SAMPLE - SAMPLE / 50;
}

static bool looks_incompressible(struct nj_codec *c, const void *raw,
                                 size_t raw_len, void *scratch, size_t cap)
{
    if (raw_len < 8 * SAMPLE)
        return false;
    const unsigned char *p = raw;
    bool shrinks = sample_shrinks(c, p, scratch, cap) ||
                   sample_shrinks(c, p + raw_len / 2, scratch, cap) ||
                   sample_shrinks(c, p + raw_len - SAMPLE, scratch, cap);
    /* compressCCtx replaced the parameters: restore the codec's. */
    ZSTD_CCtx_reset(c->cctx, ZSTD_reset_session_and_parameters);
    ZSTD_CCtx_setParameter(c->cctx, ZSTD_c_compressionLevel, c->level);
    ZSTD_CCtx_setParameter(c->cctx, ZSTD_c_checksumFlag, 0);
    return !shrinks;
}

size_t nj_chunk_encode(struct nj_codec *c, const void *raw, size_t raw_len,
                       void *out, size_t out_cap)
{
    if (raw_len == 0 || raw_len > NJ_CHUNK_MAX) {
        nj_error("chunk of %zu bytes is out of range", raw_len);
        return 0;
    }
    if (out_cap < nj_chunk_frame_bound(raw_len)) {
        nj_error("chunk frame buffer too small");
        return 0;
    }
    unsigned char *hdr = out;
    unsigned char *payload = hdr + NJ_CHUNK_HEADER_LEN;
    size_t cap = out_cap - NJ_CHUNK_HEADER_LEN;
    uint8_t flags = 0;
    size_t stored = raw_len;
    if (!looks_incompressible(c, raw, raw_len, payload, cap))
        stored = ZSTD_compress2(c->cctx, payload, cap, raw, raw_len);
    if (ZSTD_isError(stored)) {
        nj_error("zstd compress: %s", ZSTD_getErrorName(stored));
        return 0;
    }
    if (stored < raw_len) {
        flags |= NJ_CHUNK_FLAG_ZSTD;
    } else {
        memcpy(payload, raw, raw_len);
        stored = raw_len;
    }
    memcpy(hdr, NJ_CHUNK_MAGIC, 4);
    hdr[4] = NJ_CHUNK_VERSION;
    hdr[5] = flags;
    nj_put_le16(hdr + 6, 0);
    nj_put_le32(hdr + 8, (uint32_t)raw_len);
    nj_put_le32(hdr + 12, (uint32_t)stored);
    memset(hdr + 16, 0, 12);
    nj_put_le32(hdr + 28, frame_crc(hdr, payload, stored));
    return NJ_CHUNK_HEADER_LEN + stored;
}

const void *nj_codec_encode(struct nj_codec *c, const void *raw,
                            size_t raw_len, size_t *frame_len)
{
    size_t need = nj_chunk_frame_bound(raw_len);
    if (c->scratch_cap < need) {
        free(c->scratch);
        /* aligned for the store's O_DIRECT writes (nj_write_direct) */
        c->scratch = nj_malloc_aligned(NJ_DIRECT_ALIGN, need);
        c->scratch_cap = need;
    }
    *frame_len = nj_chunk_encode(c, raw, raw_len, c->scratch, c->scratch_cap);
    return *frame_len ? c->scratch : NULL;
}

int nj_chunk_peek(const void *frame, size_t frame_len, uint32_t *raw_len)
{
    const unsigned char *hdr = frame;
    if (frame_len < NJ_CHUNK_HEADER_LEN)
        return nj_error("frame truncated (%zu bytes, header needs %d)",
                        frame_len, NJ_CHUNK_HEADER_LEN);
    if (memcmp(hdr, NJ_CHUNK_MAGIC, 4) != 0)
        return nj_error("bad frame magic");
    if (hdr[4] != NJ_CHUNK_VERSION)
        return nj_error("unknown frame version %u", hdr[4]);
    if (hdr[5] & ~NJ_CHUNK_FLAGS_KNOWN)
        return nj_error("unsupported frame flags 0x%02x%s", hdr[5],
                        hdr[5] & NJ_CHUNK_FLAG_ENCRYPTED
                            ? " (encrypted chunks need a newer nightjar)"
                            : "");
    uint16_t env = nj_get_le16(hdr + 6);
    uint32_t raw = nj_get_le32(hdr + 8);
    uint32_t stored = nj_get_le32(hdr + 12);
    if (env != 0)
        return nj_error("unexpected envelope of %u bytes", env);
    if (raw == 0 || raw > NJ_CHUNK_MAX)
        return nj_error("raw length %u out of range", raw);
    if (!(hdr[5] & NJ_CHUNK_FLAG_ZSTD) && stored != raw)
        return nj_error("stored length %u differs from raw length %u for an "
                        "uncompressed chunk", stored, raw);
    if ((uint64_t)stored + NJ_CHUNK_HEADER_LEN != frame_len)
        return nj_error("frame length %zu does not match header (%u + %d)",
                        frame_len, stored, NJ_CHUNK_HEADER_LEN);
    for (int i = 16; i < 28; i++)
        if (hdr[i])
            return nj_error("reserved header bytes are not zero");
    uint32_t want = nj_get_le32(hdr + 28);
    uint32_t got = frame_crc(hdr, hdr + NJ_CHUNK_HEADER_LEN, stored);
    if (want != got)
        return nj_error("frame checksum mismatch (stored %08x, computed %08x)",
                        want, got);
    *raw_len = raw;
    return 0;
}

ssize_t nj_chunk_decode(struct nj_codec *c, const void *frame,
                        size_t frame_len, const struct nj_digest *expect,
                        void *raw, size_t raw_cap)
{
    uint32_t raw_len = 0;
    if (nj_chunk_peek(frame, frame_len, &raw_len) < 0)
        return -1;
    if (raw_len > raw_cap)
        return nj_error("raw length %u exceeds the expected %zu", raw_len,
                        raw_cap);
    const unsigned char *hdr = frame;
    const unsigned char *payload = hdr + NJ_CHUNK_HEADER_LEN;
    size_t stored = frame_len - NJ_CHUNK_HEADER_LEN;
    if (hdr[5] & NJ_CHUNK_FLAG_ZSTD) {
        unsigned long long content = ZSTD_getFrameContentSize(payload, stored);
        if (content != raw_len)
            return nj_error("zstd frame declares %llu bytes, header %u",
                            content, raw_len);
        size_t n = ZSTD_decompressDCtx(c->dctx, raw, raw_len, payload, stored);
        if (ZSTD_isError(n))
            return nj_error("zstd decompress: %s", ZSTD_getErrorName(n));
        if (n != raw_len)
            return nj_error("decompressed %zu bytes, expected %u", n, raw_len);
    } else {
        memcpy(raw, payload, raw_len);
    }
    struct nj_digest d;
    if (nj_sha256(raw, raw_len, &d) < 0)
        return -1;
    if (!nj_digest_eq(&d, expect))
        return nj_error("content digest mismatch");
    return raw_len;
}
