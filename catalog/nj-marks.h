/*
 * nj-marks.h: gc's set of referenced chunks, in bounded memory.
 *
 * An object store cannot mark a chunk on the chunk itself (no settable
 * mtime), so gc keeps its marks in memory: every chunk some index
 * references is added, then each chunk the store lists is looked up and
 * the unmarked old ones are deleted.  An answer "marked" for a chunk that
 * was never added only keeps garbage; "not marked" for one that was would
 * delete a live chunk.  So: no false negatives, ever; false positives
 * only where memory demands them.
 *
 *  - Up to NJ_MARKS_EXACT distinct chunks the set holds a 64-bit
 *    fingerprint of each (8 bytes; a garbage chunk is kept by a
 *    fingerprint collision with probability about n / 2^64): gc is exact.
 *  - Past that it turns into a Bloom filter that grows by layers (each
 *    twice the capacity of the last, at half its false-positive rate), so
 *    memory stays near 1.5 to 2 bytes a chunk whatever the count, and at
 *    most about 1% of the garbage survives a run.  The fingerprints are
 *    keyed with a random seed per set, so what one run keeps by mistake
 *    the next run frees.
 *
 * Not thread-safe: the caller serialises.  Lookups come after the last
 * add (the first lookup sorts).
 */
#ifndef NJ_MARKS_H
#define NJ_MARKS_H

#include <stdbool.h>
#include <stddef.h>

#include "nj-digest.h"

#define NJ_MARKS_EXACT (256u * 1024) /* fingerprints: 2 to 4 MiB */

struct nj_marks;

struct nj_marks *nj_marks_new(void);
void nj_marks_free(struct nj_marks *m);
void nj_marks_add(struct nj_marks *m, const struct nj_digest *d);
/* Whether d may have been added: true for every digest that was. */
bool nj_marks_has(struct nj_marks *m, const struct nj_digest *d);
/* Whether the answers are exact (no Bloom layer yet), and how many
 * chunks the set holds (while exact, repeats not yet folded count). */
bool nj_marks_exact(const struct nj_marks *m);
size_t nj_marks_count(const struct nj_marks *m);
/* Bytes of memory the set holds. */
size_t nj_marks_bytes(const struct nj_marks *m);

#endif
