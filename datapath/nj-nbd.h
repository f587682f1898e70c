/*
 * nj-nbd.h: NBD sources for the datapath.
 *
 * A source names an NBD export: a URI (nbd://, nbd+unix://) or a Unix
 * socket and an export name, plus optionally a dirty-bitmap meta context
 * ("qemu:dirty-bitmap:NAME") for an incremental.  nj_qemu_nbd_start()
 * serves an image file read-only with qemu-nbd on a socket in a private
 * 0700 directory, so that no other user can connect to it.
 */
#ifndef NJ_NBD_H
#define NJ_NBD_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

struct nj_nbd_source {
    const char *uri;          /* or: */
    const char *socket;       /* a Unix socket path */
    const char *export_name;  /* with socket; "" is the default export */
    const char *bitmap_context; /* NULL for a full */
};

/* A running qemu-nbd serving one image. */
struct nj_qemu_nbd {
    pid_t pid;
    char *dir;     /* private directory holding the socket */
    char *socket;
};

/*
 * Serve path (format "qcow2" or "raw", or NULL to ask qemu-img) read-only,
 * exposing bitmap (NULL for none) and allowing `shared` connections.
 * Fails when the image or the bitmap does not exist.
 */
struct nj_qemu_nbd *nj_qemu_nbd_start(const char *path, const char *format,
                                      const char *bitmap, unsigned shared);
/* Stop the server and remove its directory. */
void nj_qemu_nbd_stop(struct nj_qemu_nbd *q);

/* The image format qemu-img reports for path ("qcow2", "raw", ...), new
 * string, or NULL with the last error. */
char *nj_image_format(const char *path);

/* Check that the qcow2 image at path has a usable persistent bitmap:
 * present, and not marked in-use (left inconsistent by a QEMU that did not
 * shut down cleanly).  0, or -1 with a message naming what is wrong. */
int nj_image_check_bitmap(const char *path, const char *bitmap);

#endif
