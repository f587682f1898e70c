/*
 * nj-restore.h: rebuilding a disk from the store, and verifying the store.
 *
 * Neither needs a hypervisor: this library links the catalog, libnbd (for
 * qcow2 output through qemu-nbd) and nothing of libvirt or the agent.
 */
#ifndef NJ_RESTORE_H
#define NJ_RESTORE_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "nj-catalog.h"
#include "nj-output.h"

struct nj_restore_opts {
    unsigned threads; /* 0: one per core */
    bool progress;    /* progress line on stderr */
};

struct nj_restore_stats {
    uint64_t bytes_data;  /* bytes written from chunks */
    uint64_t bytes_zero;  /* bytes left as holes or zeroed */
    uint64_t chunks_read;
};

/*
 * Write the disk target of backup m to out: the chain is merged newest to
 * oldest, so each byte is written once, and every chunk is checked
 * (frame CRC, length, SHA-256) before any of it is written.  On a damaged
 * or missing chunk it fails, naming the chunk and the disk range.
 */
int nj_restore_disk(struct nj_store *s, const struct nj_catalog *c,
                    const struct nj_manifest *m, const char *target,
                    struct nj_output *out, const struct nj_restore_opts *opts,
                    struct nj_restore_stats *stats);

struct nj_verify_opts {
    const char *domain;    /* only this domain's backups (name or UUID) */
    const char *backup;    /* only what this backup's restore needs */
    unsigned threads;
    bool json;
    FILE *out;             /* report stream */
};

/* Read every chunk the selected backups reference and check it; report
 * each damaged or missing chunk with every backup and range it affects.
 * Returns 0 when all is sound, 1 when damage was found, -1 on error. */
int nj_verify(struct nj_store *s, const struct nj_catalog *c,
              const struct nj_verify_opts *opts);

#endif
