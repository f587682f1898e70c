/*
 * nj-xml.h: the XML nightjar reads from and writes to libvirt.
 *
 * Everything is built and parsed with libxml2: domain names, descriptions
 * and paths are user input and are escaped by the library, never pasted
 * into strings.  Disks are read from the domain XML with XPath.
 *
 * Built documents are UTF-8, indented, with a fixed element and attribute
 * order, so the same input always gives the same bytes.  Parsers refuse
 * documents with a DTD and never touch the network.
 *
 * What libvirt 9.0 does with these documents (seen on a live libvirtd):
 * - checkpoint names must match [A-Za-z0-9_-][A-Za-z0-9_.-]* (the schema
 *   is enforced on create), and a qcow2 disk keeps the bitmap of a checkpoint
 *   after libvirt forgets the checkpoint (transient domain destroyed), so
 *   a name must never be used twice on the same image;
 * - in an incremental job every disk without a bitmap (raw, or a qcow2 disk
 *   added later) needs backupmode='full', else "missing or broken bitmap";
 * - a pull job needs a scratch file per disk ("argument key 'filename'
 *   must not have null value" without one), and the socket's directory must
 *   be writable by the QEMU user (libvirt-qemu);
 * - the job reports exportname='vda' and exportbitmap='backup-vda' for an
 *   incremental disk and no exportbitmap for a full one.
 */
#ifndef NJ_XML_H
#define NJ_XML_H

#include <stdbool.h>
#include <stddef.h>

enum nj_disk_kind {
    NJ_DISK_QCOW2,   /* file or block disk, qcow2: checkpoint='bitmap' */
    NJ_DISK_RAW,     /* file or block disk, raw: backed up whole each time */
    NJ_DISK_SKIP,    /* not backed up; skip_reason says why */
};

struct nj_domain_disk {
    char *target;      /* target dev, e.g. "vda" */
    char *device;      /* "disk", "cdrom", "floppy", "lun" */
    char *type;        /* source type: "file", "block", "network", ... */
    char *format;      /* driver type: "qcow2", "raw", ... (may be NULL) */
    char *source;      /* file or dev path; the image name of a network
                          disk; "pool/volume" of a volume (may be NULL) */
    char *protocol;    /* network disks: "rbd", "nbd", ... (else NULL) */
    enum nj_disk_kind kind;
    const char *skip_reason; /* static string, for NJ_DISK_SKIP */
};

struct nj_domain_info {
    char *name;
    char *uuid;
    size_t ndisks;
    struct nj_domain_disk *disks;
    /* The DAC label QEMU runs with (live XML, <seclabel model='dac'>),
     * -1 when there is none. */
    long long qemu_uid, qemu_gid;
};

/* Parse a domain XML (virDomainGetXMLDesc output).  Disks that cannot
 * take part (cdrom, floppy, lun, readonly, shareable, transient, network,
 * storage volume, no source, formats other than qcow2/raw) are listed with
 * kind NJ_DISK_SKIP and a reason.  A disk with no driver type is raw, as
 * libvirt makes it.  name and uuid are always set.  NULL with the last
 * error on malformed XML or a disk without a target. */
struct nj_domain_info *nj_domain_info_parse(const char *xml);
void nj_domain_info_free(struct nj_domain_info *d);

/* One disk's part in a backup job. */
struct nj_backup_disk_spec {
    const char *target;
    bool backup;          /* false: backup='no' */
    bool full;            /* backupmode='full' for this disk (raw disks,
                             or a disk falling back to full) */
    const char *scratch;  /* scratch file path, or NULL (libvirt 9.0
                             refuses a pull job without one) */
};

/*
 * <domainbackup mode='pull'> with <incremental> (NULL for a full),
 * <server transport='unix' socket=.../> and one <disk> per spec: backed-up
 * disks get backup='yes' type='file', backupmode='full' when full, and a
 * <scratch file=.../>; the others backup='no'.  No <disks> when ndisks is
 * 0 (libvirt then backs up every disk).  socket and scratch paths must be
 * absolute, incremental a valid checkpoint name, targets unique.
 * Returns a new string, or NULL with the last error.
 */
char *nj_xml_backup(const char *incremental, const char *socket,
                    const struct nj_backup_disk_spec *disks, size_t ndisks);

struct nj_checkpoint_disk_spec {
    const char *target;
    bool bitmap;          /* checkpoint='bitmap' or 'no' */
};

/* <domaincheckpoint> with name, description and disks; name and
 * description may be NULL (left out), no <disks> when ndisks is 0.  The
 * name must be one libvirt accepts (see above), the description any text
 * that XML can carry (valid UTF-8, no control characters but tab, newline
 * and carriage return).  Returns a new string, or NULL with the last error. */
char *nj_xml_checkpoint(const char *name, const char *description,
                        const struct nj_checkpoint_disk_spec *disks,
                        size_t ndisks);

/* What virDomainBackupGetXMLDesc says of one disk of a running job. */
struct nj_backup_export {
    char *target;
    char *exportname;    /* NBD export name */
    char *exportbitmap;  /* dirty bitmap name, NULL for a full disk */
};

/* Parse virDomainBackupGetXMLDesc output: the socket path and the
 * exports of the disks with backup='yes', in document order.  A backed-up
 * disk without exportname, or a server that is not a unix socket, is an
 * error.  Returns the count (*socket and *exports are new; *exports is an
 * array even when the count is 0) or -1, leaving both NULL. */
int nj_xml_backup_exports(const char *xml, char **socket,
                          struct nj_backup_export **exports);
void nj_backup_exports_free(struct nj_backup_export *e, size_t n);

/* Checkpoint XML (virDomainCheckpointGetXMLDesc with the SIZE flag):
 * the name, the description and parent name (or NULL), the creation time
 * (-1 when absent), and per disk the bitmap name (NULL when absent) and
 * size in bytes (-1 when not reported).  A <domain> inside is ignored. */
struct nj_checkpoint_disk_info {
    char *target;
    bool bitmap;
    char *bitmap_name;
    long long size;
};
struct nj_checkpoint_info {
    char *name;
    char *description;
    char *parent;
    long long creation_time;
    size_t ndisks;
    struct nj_checkpoint_disk_info *disks;
};
struct nj_checkpoint_info *nj_checkpoint_info_parse(const char *xml);

/* The checkpoint XML with its <parent> set to parent (or removed when
 * parent is NULL), for redefining a checkpoint whose recorded parent is
 * gone.  New string, or NULL with the last error. */
char *nj_xml_checkpoint_reparent(const char *xml, const char *parent);
void nj_checkpoint_info_free(struct nj_checkpoint_info *c);

#endif
