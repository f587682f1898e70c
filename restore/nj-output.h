/*
 * nj-output.h: where a restore writes a disk.
 *
 * Three backends behind one ops table: a sparse raw file, an existing block
 * device, and a qcow2 image (created with qemu-img and written through
 * qemu-nbd, started by libnbd with socket activation).  Outputs created by
 * the restore start all zero, so zero ranges are left as holes; only a
 * block device needs zero ranges written.
 *
 * pwrite may be called from several threads at once.
 */
#ifndef NJ_OUTPUT_H
#define NJ_OUTPUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum nj_output_format {
    NJ_OUTPUT_RAW,
    NJ_OUTPUT_QCOW2,
};

struct nj_output;

struct nj_output_ops {
    int (*pwrite)(struct nj_output *o, const void *buf, size_t len,
                  uint64_t off);
    int (*zero)(struct nj_output *o, uint64_t off, uint64_t len);
    int (*finish)(struct nj_output *o);  /* flush and close: success */
    void (*discard)(struct nj_output *o); /* failure: remove what we made */
};

struct nj_output {
    const struct nj_output_ops *ops;
    char *path;
    uint64_t size;
    bool needs_zero; /* zero ranges must be written (block devices) */
};

/*
 * Open path for a disk of size bytes.  An existing path is refused unless
 * force is set.  Block devices are written in place (raw only) and must be
 * at least size bytes.
 */
struct nj_output *nj_output_open(const char *path, enum nj_output_format fmt,
                                 uint64_t size, bool force);
/* Finish (ok) or discard (!ok), then free.  Returns -1 if finishing
 * failed. */
int nj_output_close(struct nj_output *o, bool ok);

#endif
