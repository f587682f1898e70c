/*
 * nj-output.h: where a restore writes a disk.
 *
 * Three backends behind one ops table: a sparse raw file, an existing block
 * device, and a qcow2 image (created with qemu-img and written through
 * qemu-nbd, which nightjar starts with socket activation).  Outputs created
 * by the restore start all zero, so zero ranges are left as holes; only a
 * block device needs zero ranges written.
 *
 * The output's directory may be shared with users we do not trust (/tmp,
 * a shared images directory), so a file output is never written under its
 * final name.  It is built in a new private directory (mode 0700, random
 * name, in the output's own directory so the final rename stays on one
 * filesystem), and published only when it is complete: fsync of the file,
 * a rename to the final name (without replacing unless --force; a rename
 * replaces a symbolic link itself, never its target), the private
 * directory removed, and the output's directory fsync'ed.  qemu-img and
 * qemu-nbd are only given paths inside the private directory, through a
 * descriptor of it (/proc/self/fd/N/...), so no rename or symlink in the
 * shared directory can redirect them.  On failure, or on nj_output_abort_all,
 * the private directory and everything in it are removed: no partial
 * output ever appears under the final name, and an output that existed
 * before a failed --force restore is left as it was.
 *
 * A block device is written in place (that is what --force on a device
 * means).  The last component is opened without following symlinks, except
 * a symlink that lives in a directory only root or we can change (/dev/disk/
 * by-id, /dev/mapper, /dev/VG) and points to a block device: that is
 * followed, because the user named it and nobody else could have changed
 * it.  A symlink in any other directory is treated as a file name: with
 * --force it is replaced by the restored file, its target never opened.
 *
 * pwrite may be called from several threads at once.
 *
 * Write buffers (nj_output_buf_get/write/put) let the caller hand over the
 * bytes instead of having them copied: the qcow2 output queues its NBD
 * writes with a reference to the caller's buffer and drops it when the
 * write is done.  The output owns the buffers and bounds their bytes,
 * which bounds the memory of a restore; other outputs write before
 * nj_output_write_buf returns and only recycle the buffers.
 */
#ifndef NJ_OUTPUT_H
#define NJ_OUTPUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

enum nj_output_format {
    NJ_OUTPUT_RAW,
    NJ_OUTPUT_QCOW2,
};

struct nj_output;
struct nj_output_pool;

/* A write buffer: cap bytes at data, owned by the output. */
struct nj_output_buf {
    void *data;
    size_t cap;
};

struct nj_output_ops {
    int (*pwrite)(struct nj_output *o, const void *buf, size_t len,
                  uint64_t off);
    /* Optional: write len bytes at b->data + boff, keeping a reference to
     * b (nj_output_buf_ref) until they are written instead of copying
     * them.  NULL: pwrite is used. */
    int (*pwrite_buf)(struct nj_output *o, struct nj_output_buf *b,
                      size_t boff, size_t len, uint64_t off);
    int (*zero)(struct nj_output *o, uint64_t off, uint64_t len);
    int (*finish)(struct nj_output *o);  /* flush, close, publish: success */
    void (*discard)(struct nj_output *o); /* failure: remove what we made */
};

struct nj_output {
    const struct nj_output_ops *ops;
    char *path;      /* as the user named it, for messages */
    uint64_t size;
    bool needs_zero; /* zero ranges must be written (block devices) */
    bool in_place;   /* a block device: written in place, never removed */
    struct nj_output_pool *pool; /* write buffers */
};

struct nj_output_opts {
    bool force;  /* replace an existing file or symlink; write a device */
    mode_t mode; /* permissions of a created file (0600 by default in the
                  * program), applied with fchmod: umask does not apply.
                  * Devices keep theirs. */
};

/*
 * Open path for a disk of size bytes.  An existing path is refused unless
 * opts->force is set; with force a regular file or symlink at path is
 * replaced when the restore succeeds (and left as it was when it fails).
 * Block devices are written in place (raw only) and must be at least size
 * bytes.  Anything else (directory, FIFO, socket, character device) is
 * refused.  Fails, saying so, once nj_output_abort_all has been called.
 */
struct nj_output *nj_output_open_opts(const char *path,
                                      enum nj_output_format fmt,
                                      uint64_t size,
                                      const struct nj_output_opts *opts);
/* The same with mode 0600. */
struct nj_output *nj_output_open(const char *path, enum nj_output_format fmt,
                                 uint64_t size, bool force);
/* Finish (ok) or discard (!ok), then free.  Returns -1 if finishing
 * failed (the output is then discarded). */
int nj_output_close(struct nj_output *o, bool ok);

/*
 * A write buffer of at least len bytes, for the caller alone until its
 * first nj_output_write_buf.  Blocks while the output's buffers that are
 * in use hold its bound of bytes (one buffer is always granted, however
 * large); NULL with the last error once the output has failed.
 */
struct nj_output_buf *nj_output_buf_get(struct nj_output *o, size_t len);
/* Write len bytes at b->data + boff to off; boff + len <= b->cap.  The
 * bytes of b must not change after this call: they may be written later.
 * A failed write is reported by this call, a later one, or close. */
int nj_output_write_buf(struct nj_output *o, struct nj_output_buf *b,
                        size_t boff, size_t len, uint64_t off);
/* The caller is done with b (its writes may still be in flight). */
void nj_output_buf_put(struct nj_output *o, struct nj_output_buf *b);
/* For a pwrite_buf op: one more reference to b, dropped with
 * nj_output_buf_put.  Does not block. */
void nj_output_buf_ref(struct nj_output *o, struct nj_output_buf *b);

/*
 * For a signal handler thread: abandon every open output at once.  Removes
 * the private directory of each unpublished file output, kills any
 * qemu-img or qemu-nbd it started (SIGKILL), and makes every later write,
 * finish and open fail with "interrupted"; block devices are left as they
 * are.  The owner must still close its outputs (nj_output_close with ok
 * false), which removes whatever was created after this call.  Safe to
 * call from any thread at any time, and more than once.  Returns the
 * number of outputs that were open (published or not).
 */
unsigned nj_output_abort_all(void);
/* True once nj_output_abort_all has been called. */
bool nj_output_aborted(void);

#endif
