/*
 * nj-chunk.h: chunk framing, compression and verification.
 *
 * A chunk is a run of disk bytes (at most NJ_CHUNK_MAX) addressed by the
 * SHA-256 of its plaintext.  On disk it is a frame (docs/FORMAT.md):
 *
 *   0  magic "NJCK"         4  version (1)      5  flags
 *   6  envelope length      8  raw length      12  stored length
 *  16  reserved (12 zero bytes)                28  CRC-32C
 *  32  envelope (envelope length bytes, none in v1)
 *      payload (stored length bytes: zstd frame, or the raw bytes)
 *
 * The CRC-32C covers bytes 0..27 of the header, the envelope and the
 * payload.  Decoding trusts no length it reads: every length is checked
 * against the frame size and NJ_CHUNK_MAX before anything is allocated,
 * and the plaintext's SHA-256 is compared with the expected address.
 *
 * A codec holds one thread's zstd contexts: one codec per thread.
 */
#ifndef NJ_CHUNK_H
#define NJ_CHUNK_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "nj-digest.h"

#define NJ_CHUNK_MAGIC "NJCK"
#define NJ_CHUNK_VERSION 1
#define NJ_CHUNK_HEADER_LEN 32
#define NJ_CHUNK_MAX (64u << 20)
#define NJ_CHUNK_FLAG_ZSTD 0x01u
#define NJ_CHUNK_FLAG_ENCRYPTED 0x02u /* reserved; rejected in v1 */
#define NJ_CHUNK_FLAGS_KNOWN NJ_CHUNK_FLAG_ZSTD

#define NJ_ZSTD_LEVEL_DEFAULT 3
/* The levels nightjar accepts: zstd's fast (negative) levels down to -10,
 * its regular ones up to 19.  Level 0 means zstd's default (3) to zstd and
 * is not used. */
#define NJ_ZSTD_LEVEL_MIN (-10)
#define NJ_ZSTD_LEVEL_MAX 19
#define NJ_ZSTD_NLEVELS (NJ_ZSTD_LEVEL_MAX - NJ_ZSTD_LEVEL_MIN + 1)

struct nj_codec;

/* A new codec compressing at the given zstd level. */
struct nj_codec *nj_codec_new(int level);
void nj_codec_free(struct nj_codec *c);
/* Compress the codec's next chunks at another level (between frames). */
void nj_codec_set_level(struct nj_codec *c, int level);
int nj_codec_level(const struct nj_codec *c);

/* Worst-case frame size for raw_len plaintext bytes. */
size_t nj_chunk_frame_bound(size_t raw_len);

/*
 * Encode raw into a frame in out (capacity out_cap, at least
 * nj_chunk_frame_bound(raw_len)).  Compression is kept only when it makes
 * the payload smaller.  Returns the frame length, or 0 with the last error.
 */
size_t nj_chunk_encode(struct nj_codec *c, const void *raw, size_t raw_len,
                       void *out, size_t out_cap);

/* Encode into the codec's own buffer; returns a pointer to the frame,
 * valid until the codec's next encode, or NULL with the last error. */
const void *nj_codec_encode(struct nj_codec *c, const void *raw,
                            size_t raw_len, size_t *frame_len);

/* Parse and check a frame's header; returns 0 and the raw length, or -1
 * with the last error ("bad magic", "checksum mismatch", ...). */
int nj_chunk_peek(const void *frame, size_t frame_len, uint32_t *raw_len);

/*
 * Check the frame (header, lengths, CRC), decompress into raw (capacity
 * raw_cap), and compare the plaintext's SHA-256 with expect.  Returns the
 * raw length, or -1 with the last error naming what is wrong.
 */
ssize_t nj_chunk_decode(struct nj_codec *c, const void *frame,
                        size_t frame_len, const struct nj_digest *expect,
                        void *raw, size_t raw_cap);

#endif
