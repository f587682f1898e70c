/*
 * nj-manifest.h: the manifest, one per backup, and its JSON form.
 *
 * The manifest is written last; its publication (with the backup's
 * indexes) is the commit point, so a backup without one does not exist.
 * It is JSON produced and parsed by json-c.  Parsing checks every field's
 * type and range and fails with a message naming the field; unknown
 * fields are ignored so that later versions can add some.
 */
#ifndef NJ_MANIFEST_H
#define NJ_MANIFEST_H

#include <stdbool.h>
#include <stdint.h>

#include "nj-chunk.h"
#include "nj-digest.h"

#define NJ_MANIFEST_VERSION 1
#define NJ_MANIFEST_NAME "manifest.json"
#define NJ_MANIFEST_MAX (64u << 20)

enum nj_level {
    NJ_LEVEL_FULL,
    NJ_LEVEL_INC,
    NJ_LEVEL_DIFF,
    NJ_LEVEL_COPY,
};

const char *nj_level_name(enum nj_level l);
int nj_level_parse(const char *s, enum nj_level *out);

struct nj_disk_stats {
    uint64_t bytes_read;    /* bytes read from the source */
    uint64_t bytes_zero;    /* bytes found zero and not stored */
    uint64_t bytes_new;     /* plaintext bytes in chunks new to the store */
    uint64_t bytes_stored;  /* frame bytes written for those chunks */
    uint64_t bytes_dedup;   /* plaintext bytes whose chunk already existed */
    uint64_t chunks_new;
    uint64_t chunks_dedup;
    uint64_t usec;          /* wall time the disk's datapath took */
};

/*
 * How a disk's new chunks were compressed (informational: a reader never
 * needs it, each chunk frame says how it is encoded).  adaptive: the level
 * followed the pipeline between level_min and level_max; otherwise both
 * are the one level used.  Per level: chunks compressed at it, their
 * plaintext and frame bytes; raw_*: chunks stored uncompressed (sampled as
 * incompressible, or no smaller compressed).
 */
struct nj_disk_compression {
    bool adaptive;
    int level_min, level_max;
    uint64_t chunks[NJ_ZSTD_NLEVELS];
    uint64_t bytes[NJ_ZSTD_NLEVELS];
    uint64_t stored[NJ_ZSTD_NLEVELS];
    uint64_t raw_chunks, raw_bytes;
};

struct nj_manifest_disk {
    char *target;        /* "vda" */
    char *format;        /* "qcow2", "raw" */
    uint64_t size;       /* virtual size in bytes */
    bool full;           /* index covers the whole disk: chain base */
    char *index;         /* file name of the index in the backup */
    struct nj_digest index_digest;
    uint64_t entries;    /* index entry count */
    uint64_t covered;    /* bytes the index covers */
    struct nj_disk_stats stats;
    struct nj_disk_compression compression; /* all zero: not recorded */
};

struct nj_manifest {
    char *id;
    char *parent;        /* NULL for a full or copy */
    enum nj_level level;
    char *domain_name;
    char *domain_uuid;
    char *domain_xml;    /* may be NULL (imports) */
    char *checkpoint_name; /* NULL when no checkpoint (copy, imports) */
    char *checkpoint_xml;
    int64_t started;     /* Unix seconds */
    int64_t finished;
    int64_t finished_us; /* Unix microseconds: orders backups finished
                            within the same second */
    size_t ndisks;
    struct nj_manifest_disk *disks;
};

void nj_manifest_free(struct nj_manifest *m);
/* The disk with this target, or NULL. */
const struct nj_manifest_disk *nj_manifest_disk(const struct nj_manifest *m,
                                                const char *target);

/* JSON text (new string, pretty-printed, newline-terminated). */
char *nj_manifest_to_json(const struct nj_manifest *m);
/* The "compression" object of a disk as JSON text (new string), or NULL
 * when it is not recorded. */
char *nj_manifest_compression_json(const struct nj_disk_compression *c);
/* Parse and validate; NULL with the last error on anything malformed. */
struct nj_manifest *nj_manifest_from_json(const char *text, size_t len);

#endif
