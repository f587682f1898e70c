/*
 * fuzz-index: libFuzzer target for the extent index parsers.
 *
 * The input is checked in memory with nj_index_check_buffer(), and given
 * as a memory stream (nj_stream_mem) to the streaming reader, which opens
 * it and reads to the end, twice (the second time after a rewind).  The two
 * parsers must agree on whether the index is valid; every entry the
 * reader returns must be in order, non-empty, inside the disk and inside
 * its chunk; a valid index must reopen with its own digest and disk size
 * as the expected ones.
 *
 * Each input is tried as it is and with its SHA-256 trailer recomputed:
 * mutations almost never keep the trailer right, and without the second
 * try the per-entry checks behind it would go unexplored.
 */
#include "nj-chunk.h"
#include "nj-index.h"
#include "nj-io.h"
#include "nj-util.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fail(const char *what)
{
    fprintf(stderr, "fuzz-index: %s (last error: %s)\n", what,
            nj_error_get());
    abort();
}

/* Read to the end: 0 when the whole index is valid, -1 otherwise. */
static int read_through(struct nj_index_reader *r, uint64_t *count)
{
    struct nj_extent e;
    uint64_t n = 0, prev_end = 0;
    uint64_t disk = nj_index_reader_disk_size(r);
    int rc;
    nj_error("%s", "");
    while ((rc = nj_index_reader_next(r, &e)) == 1) {
        if (e.length == 0 || e.offset < prev_end ||
            !nj_range_ok(e.offset, e.length, disk))
            fail("reader returned an entry out of order or range");
        if (e.kind == NJ_EXTENT_DATA &&
            (e.chunk_len == 0 || e.chunk_len > NJ_CHUNK_MAX ||
             !nj_range_ok(e.chunk_offset, e.length, e.chunk_len)))
            fail("reader returned a data entry outside its chunk");
        if (e.kind != NJ_EXTENT_DATA && e.kind != NJ_EXTENT_ZERO)
            fail("reader returned an unknown kind");
        prev_end = e.offset + e.length;
        if (++n > nj_index_reader_count(r))
            fail("reader returned more entries than its count");
    }
    if (rc < 0 && !*nj_error_get())
        fail("reader failed without a message");
    if (rc == 0 && n != nj_index_reader_count(r))
        fail("reader ended before its count");
    *count = n;
    return rc < 0 ? -1 : 0;
}

static void check_index(const uint8_t *data, size_t size)
{
    nj_error("%s", "");
    int in_memory = nj_index_check_buffer(data, size, 0);
    if (in_memory < 0 && !*nj_error_get())
        fail("check_buffer failed without a message");

    nj_error("%s", "");
    struct nj_index_reader *r =
        nj_index_reader_open(nj_stream_mem(data, size), "fuzz", NULL, 0);
    int streamed = -1;
    if (!r) {
        if (!*nj_error_get())
            fail("reader open failed without a message");
    } else {
        uint64_t n1 = 0, n2 = 0;
        streamed = read_through(r, &n1);
        nj_index_reader_rewind(r);
        if (read_through(r, &n2) != streamed || n1 != n2)
            fail("a rewound reader read differently");
        if (streamed == 0) {
            /* Valid: it reopens with its own digest and size expected. */
            struct nj_digest d;
            if (nj_sha256(data, size - NJ_DIGEST_LEN, &d) < 0)
                fail("sha256");
            uint64_t disk = nj_index_reader_disk_size(r);
            struct nj_index_reader *r2 =
                nj_index_reader_open(nj_stream_mem(data, size), "fuzz", &d, disk);
            if (!r2 || read_through(r2, &n2) != 0 || n2 != n1)
                fail("a valid index did not reopen with its digest");
            nj_index_reader_free(r2);
            if (disk && nj_index_check_buffer(data, size, disk) != 0)
                fail("check_buffer refused its own disk size");
        }
        nj_index_reader_free(r);
    }
    if ((in_memory == 0) != (streamed == 0))
        fail(in_memory == 0 ? "check_buffer accepted what the reader refused"
                            : "the reader accepted what check_buffer refused");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_index(data, size);
    if (size >= NJ_DIGEST_LEN) {
        unsigned char *b = nj_malloc(size);
        memcpy(b, data, size);
        struct nj_digest d;
        if (nj_sha256(b, size - NJ_DIGEST_LEN, &d) < 0)
            fail("sha256");
        memcpy(b + size - NJ_DIGEST_LEN, d.b, NJ_DIGEST_LEN);
        check_index(b, size);
        free(b);
    }
    return 0;
}
