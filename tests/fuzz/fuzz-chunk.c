/*
 * fuzz-chunk: libFuzzer target for the chunk frame codec.
 *
 * Each input is used twice:
 *
 *  - as a frame: nj_chunk_peek() and nj_chunk_decode() must refuse it with
 *    a message or accept it, never crash, and decode must never accept
 *    what peek refused.  The destination is allocated at exactly the raw
 *    length the header claims (capped at 1 MiB), so ASan sees any write
 *    past it.  The frame is tried as it is and with its CRC recomputed:
 *    mutations rarely keep a CRC-32C right, and without the second try
 *    the checks and the zstd decoder behind the CRC would go unexplored.
 *
 *  - as plaintext: encoding then decoding must give it back, the zstd flag
 *    must mean a smaller payload, and the frame with any single bit
 *    flipped must be refused (CRC-32C detects every single-bit error).
 */
#include "nj-chunk.h"
#include "nj-digest.h"
#include "nj-util.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RAW_CAP (1u << 20)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct nj_codec *codec;

static void fail(const char *what)
{
    fprintf(stderr, "fuzz-chunk: %s (last error: %s)\n", what,
            nj_error_get());
    abort();
}

static void as_frame(const uint8_t *data, size_t size)
{
    uint32_t raw_len = 0;
    nj_error("%s", "");
    int p = nj_chunk_peek(data, size, &raw_len);
    if (p < 0 && !*nj_error_get())
        fail("peek failed without a message");
    if (p == 0 && (raw_len == 0 || raw_len > NJ_CHUNK_MAX))
        fail("peek accepted an out-of-range raw length");
    size_t cap = p == 0 ? NJ_MIN(raw_len, RAW_CAP) : 64;
    unsigned char *raw = nj_malloc(cap);
    struct nj_digest expect;
    memset(&expect, 0, sizeof expect);
    nj_error("%s", "");
    ssize_t n = nj_chunk_decode(codec, data, size, &expect, raw, cap);
    if (n < 0 && !*nj_error_get())
        fail("decode failed without a message");
    if (n >= 0 && p < 0)
        fail("decode accepted a frame peek refused");
    if (n >= 0 && (size_t)n != raw_len)
        fail("decode returned a length other than the header's");
    free(raw);
}

static void as_plaintext(const uint8_t *data, size_t size)
{
    if (size == 0 || size > NJ_CHUNK_MAX)
        return;
    struct nj_digest d;
    if (nj_sha256(data, size, &d) < 0)
        fail("sha256");
    size_t flen = 0;
    const void *f = nj_codec_encode(codec, data, size, &flen);
    if (!f)
        fail("encode failed");
    unsigned char *frame = nj_malloc(flen);
    memcpy(frame, f, flen);
    uint32_t stored = nj_get_le32(frame + 12);
    if (frame[5] & NJ_CHUNK_FLAG_ZSTD ? stored >= size : stored != size)
        fail("zstd flag and stored length disagree");
    unsigned char *raw = nj_malloc(size);
    if (nj_chunk_decode(codec, frame, flen, &d, raw, size) != (ssize_t)size ||
        memcmp(raw, data, size) != 0)
        fail("round trip failed");
    /* Flip one bit, chosen from the input. */
    uint64_t h = nj_crc32c(0, data, size);
    size_t bit = (size_t)(h % ((uint64_t)flen * 8));
    frame[bit / 8] ^= (unsigned char)(1u << (bit % 8));
    if (nj_chunk_decode(codec, frame, flen, &d, raw, size) >= 0)
        fail("a frame with a flipped bit was accepted");
    free(raw);
    free(frame);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!codec && !(codec = nj_codec_new(NJ_ZSTD_LEVEL_DEFAULT)))
        fail("codec");
    as_frame(data, size);
    if (size >= NJ_CHUNK_HEADER_LEN) {
        unsigned char *f = nj_malloc(size);
        memcpy(f, data, size);
        uint32_t crc = nj_crc32c(0, f, 28);
        crc = nj_crc32c(crc, f + NJ_CHUNK_HEADER_LEN, size - NJ_CHUNK_HEADER_LEN);
        nj_put_le32(f + 28, crc);
        as_frame(f, size);
        free(f);
    }
    as_plaintext(data, size);
    return 0;
}
