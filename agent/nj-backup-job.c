/*
 * nj-backup-job.c: `nightjar-agent backup`: one checkpoint-based backup of
 * one libvirt domain, pull mode.
 *
 * Order of work, and what undoes each step on failure or signal:
 *
 *   1. take the domain's store lock               released at the end
 *   2. clean what a killed run left: a pull job of ours, its directory,
 *      nightjar checkpoints of this store that no committed backup uses
 *   3. decide the level and each disk's mode from the catalog: the base of
 *      an incremental is always the last *committed* backup's checkpoint,
 *      redefined from the catalog when libvirt lost it
 *   4. start a shut-off domain paused (autodestroy)  destroyed gracefully
 *   5. virDomainBackupBegin with a new checkpoint    job aborted,
 *                                                    checkpoint deleted
 *   6. datapath: every disk in parallel into the store   backup aborted
 *   7. end the pull job, then commit the catalog     checkpoint deleted
 *                                                    if the commit fails
 *
 * A checkpoint left by a run killed between 5 and 7 is removed by step 2
 * of a later run; deleting a checkpoint merges its bitmap into its parent,
 * so the next incremental from the last committed checkpoint still sees
 * every change.
 */
#include "nj-agent.h"
#include "nj-io.h"
#include "nj-util.h"
#include "nj-virt.h"
#include "nj-xml.h"

#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#define CHECKPOINT_PREFIX "nightjar."

struct job_disk {
    const struct nj_domain_disk *dd;
    bool selected;
    bool full;        /* backupmode='full' */
    bool bitmap;      /* checkpoint='bitmap' in the new checkpoint */
    uint64_t size;
    char *scratch;
    /* filled by the job */
    char *exportname, *exportbitmap;
    struct nj_datapath_result res;
    int rc;
    char error[1024];
};

struct job {
    const struct nj_backup_args *a;
    virConnectPtr conn;
    virDomainPtr dom;
    struct nj_domain_info *info;
    char *dom_xml;
    struct nj_store *store;
    struct nj_catalog *cat;
    int lock_fd;
    char *store_tag;      /* 8 hex digits: the checkpoint namespace */
    char *store_digest;   /* all 64: job directory ownership */
    struct nj_backup *b;
    enum nj_level level;
    const struct nj_manifest *parent;
    const char *base_cp;
    char *id, *cp_name;
    bool started, job_running, cp_created, frozen;
    char *dir, *socket;
    struct job_disk *disks;
    size_t ndisks;
};

static void note(const struct job *j, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void note(const struct job *j, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "nightjar-agent: %s: ", j->info ? j->info->name : "?");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/* The SHA-256 of the store's real path, in hex; the checkpoint namespace
 * is its first 8 digits (a short tag), job directories use all of it. */
static char *store_digest(const char *path)
{
    char real[4096];
    const char *p = realpath(path, real) ? real : path;
    struct nj_digest d;
    nj_sha256(p, strlen(p), &d);
    char hex[NJ_DIGEST_HEX_LEN + 1];
    nj_digest_to_hex(&d, hex);
    return nj_strdup(hex);
}

static bool referenced_checkpoint(const struct nj_catalog *c, const char *name)
{
    for (size_t i = 0; i < nj_catalog_count(c); i++) {
        const struct nj_manifest *m = nj_catalog_get(c, i);
        if (m->checkpoint_name && strcmp(m->checkpoint_name, name) == 0)
            return true;
    }
    return false;
}

/*
 * Job directories are named nj-<key>-<first 8 of the UUID>-<backup id>,
 * where key is 20 hex digits of SHA-256(store digest, full UUID): short,
 * because the NBD socket inside must fit a Unix socket path, and specific,
 * so that a run only ever cleans up after runs of the same store and
 * domain (the 8 UUID digits are only there for people reading the
 * directory).  Because a name can still collide, each directory holds an
 * "owner" file naming the full store digest and UUID, written before
 * the directory is handed to QEMU; a stale directory is removed only when
 * that file proves it is ours.
 */
#define JOB_KEY_LEN 20
#define JOB_OWNER_FILE "owner"
#define JOB_OWNER_MAX 4096

static char *job_dir_prefix(const struct job *j)
{
    NJ_CLEANUP_FREE char *both = nj_asprintf("%s\n%s", j->store_digest,
                                             j->info->uuid);
    struct nj_digest d;
    nj_sha256(both, strlen(both), &d);
    char hex[NJ_DIGEST_HEX_LEN + 1];
    nj_digest_to_hex(&d, hex);
    hex[JOB_KEY_LEN] = '\0';
    char short_uuid[9];
    size_t k = 0;
    for (const char *p = j->info->uuid; *p && k < 8; p++)
        if (*p != '-')
            short_uuid[k++] = *p;
    short_uuid[k] = '\0';
    return nj_asprintf("nj-%s-%s-", hex, short_uuid);
}

static char *job_owner_text(const struct job *j)
{
    return nj_asprintf("nightjar backup job\nstore %s\nuuid %s\n",
                       j->store_digest, j->info->uuid);
}

/* 1 when the directory name in dirfd holds an owner file naming this
 * store and domain, 0 when it does not or cannot be read (a directory
 * we cannot prove is ours is never removed).  Nothing is followed: the
 * directory and the file are opened with O_NOFOLLOW, the file without
 * blocking and only when it is a small regular file. */
static int job_dir_is_ours(const struct job *j, int dirfd, const char *name)
{
    NJ_CLEANUP_CLOSE int dfd = nj_open_dir(dirfd, name);
    if (dfd < 0)
        return 0;
    size_t n = 0;
    NJ_CLEANUP_FREE char *text =
        nj_read_file(dfd, JOB_OWNER_FILE, JOB_OWNER_MAX, &n);
    if (!text || n == 0)
        return 0;
    NJ_CLEANUP_FREE char *want = job_owner_text(j);
    return strcmp(text, want) == 0;
}

/* Write the owner file into the new job directory j->dir (ours: we just
 * made it, 0700 root). */
static int write_job_owner(const struct job *j)
{
    NJ_CLEANUP_CLOSE int dfd = open(j->dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
                                                O_CLOEXEC);
    if (dfd < 0)
        return nj_error_errno(errno, "open job directory '%s'", j->dir);
    NJ_CLEANUP_CLOSE int fd =
        openat(dfd, JOB_OWNER_FILE,
               O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
        return nj_error_errno(errno, "create '%s/" JOB_OWNER_FILE "'", j->dir);
    NJ_CLEANUP_FREE char *text = job_owner_text(j);
    if (nj_full_write(fd, text, strlen(text)) < 0)
        return nj_error_errno(errno, "write '%s/" JOB_OWNER_FILE "'", j->dir);
    return 0;
}

/* Wait until the domain has no backup job (virDomainAbortJob returns
 * before libvirt has finished ending it). */
static void wait_job_gone(struct job *j)
{
    for (int i = 0; i < 300 && nj_virt_backup_active(j->dom, NULL); i++) {
        struct timespec ts = { 0, 100 * 1000 * 1000 };
        nanosleep(&ts, NULL);
    }
}

/* Step 2: what a killed run left behind. */
static int clean_stale(struct job *j)
{
    char *xml = NULL;
    NJ_CLEANUP_FREE char *base = job_dir_prefix(j);
    NJ_CLEANUP_FREE char *prefix = nj_asprintf("%s/%s", j->a->scratch_dir,
                                               base);
    if (nj_virt_backup_active(j->dom, &xml)) {
        char *sock = NULL;
        struct nj_backup_export *ex = NULL;
        int n = nj_xml_backup_exports(xml, &sock, &ex);
        bool ours = n >= 0 && sock && strncmp(sock, prefix, strlen(prefix)) == 0;
        free(sock);
        nj_backup_exports_free(ex, n > 0 ? (size_t)n : 0);
        free(xml);
        if (!ours)
            return nj_error("domain '%s' already has a backup job running "
                            "(another tool, or nightjar with another store "
                            "or scratch directory)", j->info->name);
        if (virDomainAbortJob(j->dom) < 0)
            return nj_virt_error("end the stale backup job of '%s'",
                                 j->info->name);
        wait_job_gone(j);
        note(j, "ended a backup job left by an interrupted run");
    }
    /* Our job directories: we hold the lock, so their runs are dead.  A
     * directory whose owner file does not name this store and domain is
     * left alone, said once. */
    DIR *d = opendir(j->a->scratch_dir);
    if (d) {
        struct dirent *de;
        while ((de = readdir(d)) != NULL) {
            if (strncmp(de->d_name, base, strlen(base)) != 0)
                continue;
            if (!job_dir_is_ours(j, dirfd(d), de->d_name)) {
                note(j, "left '%s/%s' alone: its owner file does not prove "
                     "it is a job directory of this store and domain",
                     j->a->scratch_dir, de->d_name);
                continue;
            }
            if (nj_remove_tree(dirfd(d), de->d_name) < 0)
                note(j, "warning: %s", nj_error_get());
            else
                note(j, "removed '%s/%s' left by an interrupted run",
                     j->a->scratch_dir, de->d_name);
        }
        closedir(d);
    }
    /* Checkpoints of this store that no committed backup uses. */
    virDomainCheckpointPtr *cps = NULL;
    int n = virDomainListAllCheckpoints(j->dom, &cps, 0);
    if (n < 0)
        return nj_virt_error("list checkpoints of '%s'", j->info->name);
    NJ_CLEANUP_FREE char *ours = nj_asprintf(CHECKPOINT_PREFIX "%s.",
                                             j->store_tag);
    int ret = 0;
    /* Newest first, so that each delete merges into a parent that is
     * still there. */
    for (int i = n - 1; i >= 0; i--) {
        const char *name = virDomainCheckpointGetName(cps[i]);
        if (ret == 0 && name && strncmp(name, ours, strlen(ours)) == 0 &&
            !referenced_checkpoint(j->cat, name)) {
            if (virDomainCheckpointDelete(cps[i], 0) < 0)
                ret = nj_virt_error("delete stale checkpoint '%s'", name);
            else
                note(j, "deleted checkpoint '%s' left by an interrupted run",
                     name);
        }
    }
    for (int i = 0; i < n; i++)
        virDomainCheckpointFree(cps[i]);
    free(cps);
    return ret;
}

/* The newest committed non-copy backup of the domain, and the newest
 * full. */
static void chain_heads(const struct job *j, const struct nj_manifest **last,
                        const struct nj_manifest **last_full)
{
    *last = *last_full = NULL;
    for (size_t i = nj_catalog_count(j->cat); i-- > 0;) {
        const struct nj_manifest *m = nj_catalog_get(j->cat, i);
        if (strcmp(m->domain_uuid, j->info->uuid) != 0 ||
            m->level == NJ_LEVEL_COPY)
            continue;
        if (!*last)
            *last = m;
        if (!*last_full && m->level == NJ_LEVEL_FULL)
            *last_full = m;
    }
}

static size_t chain_length(const struct job *j, const struct nj_manifest *m)
{
    size_t n = 0;
    while (m && n <= nj_catalog_count(j->cat)) {
        n++;
        m = m->parent ? nj_catalog_find(j->cat, m->parent) : NULL;
    }
    return n;
}

static int select_disks(struct job *j)
{
    const struct nj_backup_args *a = j->a;
    j->ndisks = j->info->ndisks;
    j->disks = nj_calloc(j->ndisks ? j->ndisks : 1, sizeof *j->disks);
    for (size_t f = 0; f < a->ndisks; f++) {
        bool found = false;
        for (size_t i = 0; i < j->info->ndisks; i++) {
            const struct nj_domain_disk *dd = &j->info->disks[i];
            if (strcmp(dd->target, a->disks[f]) != 0)
                continue;
            found = true;
            if (dd->kind == NJ_DISK_SKIP)
                return nj_error("disk '%s' of '%s' cannot be backed up: %s",
                                dd->target, j->info->name, dd->skip_reason);
        }
        if (!found)
            return nj_error("domain '%s' has no disk '%s'", j->info->name,
                            a->disks[f]);
    }
    size_t nsel = 0;
    for (size_t i = 0; i < j->info->ndisks; i++) {
        struct job_disk *d = &j->disks[i];
        d->dd = &j->info->disks[i];
        bool wanted = a->ndisks == 0;
        for (size_t f = 0; f < a->ndisks; f++)
            wanted |= strcmp(a->disks[f], d->dd->target) == 0;
        if (d->dd->kind == NJ_DISK_SKIP) {
            if (a->ndisks == 0 && !a->json)
                note(j, "disk '%s' skipped: %s", d->dd->target,
                     d->dd->skip_reason);
            continue;
        }
        d->selected = wanted;
        nsel += wanted;
    }
    if (nsel == 0)
        return nj_error("domain '%s' has no disk that can be backed up "
                        "(qcow2 or raw file or block disks)", j->info->name);
    return 0;
}

static bool checkpoint_exists(struct job *j, const char *name)
{
    virDomainCheckpointPtr cp = virDomainCheckpointLookupByName(j->dom, name, 0);
    if (cp) {
        virDomainCheckpointFree(cp);
        return true;
    }
    virResetLastError();
    return false;
}

/*
 * Make the base checkpoint known to libvirt again when the metadata was
 * lost (domain undefined and defined again, moved to another host): every
 * checkpoint of this domain in the catalog that libvirt no longer knows is
 * redefined from the XML kept there, oldest first, each validated against
 * the bitmaps QEMU has.  The <parent> each XML names may be gone (another
 * tool's checkpoint, or one of an older chain), so each is re-parented to
 * the newest checkpoint redefined or present before it.  Only a failure on
 * the base's own chain matters; 0 when the base is usable.
 */
static int ensure_base_checkpoint(struct job *j, const struct nj_manifest *base)
{
    if (checkpoint_exists(j, base->checkpoint_name))
        return 0;
    /* The base's chain, to know which failures matter. */
    const struct nj_manifest *chain[256];
    size_t nchain = 0;
    for (const struct nj_manifest *m = base; m && nchain < NJ_ARRAY_SIZE(chain);
         m = m->parent ? nj_catalog_find(j->cat, m->parent) : NULL)
        chain[nchain++] = m;
    const char *prev = NULL;
    for (size_t i = 0; i < nj_catalog_count(j->cat); i++) {
        const struct nj_manifest *m = nj_catalog_get(j->cat, i);
        if (strcmp(m->domain_uuid, j->info->uuid) != 0 || !m->checkpoint_name ||
            !m->checkpoint_xml)
            continue;
        if (m->finished_us > base->finished_us)
            break;
        bool in_chain = false;
        for (size_t k = 0; k < nchain; k++)
            in_chain |= chain[k] == m;
        if (checkpoint_exists(j, m->checkpoint_name)) {
            prev = m->checkpoint_name;
            continue;
        }
        NJ_CLEANUP_FREE char *xml =
            nj_xml_checkpoint_reparent(m->checkpoint_xml, prev);
        virDomainCheckpointPtr cp =
            xml ? virDomainCheckpointCreateXML(
                      j->dom, xml,
                      VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE |
                          VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE_VALIDATE)
                : NULL;
        if (!cp) {
            if (xml)
                nj_virt_error("redefine checkpoint '%s'", m->checkpoint_name);
            if (in_chain)
                return -1;
            virResetLastError();
            continue; /* an older chain's bitmaps may be gone: not needed */
        }
        virDomainCheckpointFree(cp);
        note(j, "redefined checkpoint '%s' from the store", m->checkpoint_name);
        prev = m->checkpoint_name;
    }
    return checkpoint_exists(j, base->checkpoint_name)
               ? 0
               : nj_error("checkpoint '%s' could not be redefined",
                          base->checkpoint_name);
}

/* Bitmap disks of the base checkpoint, as libvirt reports them. */
static struct nj_checkpoint_info *base_info(struct job *j)
{
    virDomainCheckpointPtr cp =
        virDomainCheckpointLookupByName(j->dom, j->base_cp, 0);
    if (!cp) {
        nj_virt_error("checkpoint '%s'", j->base_cp);
        return NULL;
    }
    /* With SIZE, libvirt reports no size for a disk whose bitmap QEMU no
     * longer has: that is how a lost or broken bitmap shows. */
    char *xml = virDomainCheckpointGetXMLDesc(
        cp, VIR_DOMAIN_CHECKPOINT_XML_NO_DOMAIN | VIR_DOMAIN_CHECKPOINT_XML_SIZE);
    virDomainCheckpointFree(cp);
    if (!xml) {
        nj_virt_error("XML of checkpoint '%s'", j->base_cp);
        return NULL;
    }
    struct nj_checkpoint_info *ci = nj_checkpoint_info_parse(xml);
    free(xml);
    return ci;
}

static int disk_sizes(struct job *j)
{
    for (size_t i = 0; i < j->ndisks; i++) {
        struct job_disk *d = &j->disks[i];
        if (!d->selected)
            continue;
        virDomainBlockInfo bi;
        if (virDomainGetBlockInfo(j->dom, d->dd->target, &bi, 0) < 0)
            return nj_virt_error("size of disk '%s'", d->dd->target);
        d->size = bi.capacity;
    }
    return 0;
}

/* Step 3: level and per-disk modes. */
static int decide(struct job *j)
{
    const struct nj_backup_args *a = j->a;
    const struct nj_manifest *last = NULL, *last_full = NULL;
    chain_heads(j, &last, &last_full);
    enum nj_level want = a->level;
    if (a->level_auto) {
        want = NJ_LEVEL_INC;
        if (!last) {
            want = NJ_LEVEL_FULL;
        } else if (a->max_chain && chain_length(j, last) >= a->max_chain) {
            note(j, "chain has %zu backups (limit %u): full", chain_length(j, last),
                 a->max_chain);
            want = NJ_LEVEL_FULL;
        } else if (a->max_age_days && last_full &&
                   nj_now_us() / 1000000 - last_full->finished >
                       (int64_t)a->max_age_days * 86400) {
            note(j, "last full is older than %u days: full", a->max_age_days);
            want = NJ_LEVEL_FULL;
        } else if (!last_full) {
            want = NJ_LEVEL_FULL;
        }
    }
    const struct nj_manifest *base = NULL;
    if (want == NJ_LEVEL_INC)
        base = last;
    else if (want == NJ_LEVEL_DIFF)
        base = last_full;
    if ((want == NJ_LEVEL_INC || want == NJ_LEVEL_DIFF) && !base)
        return nj_error("no earlier %s backup of '%s' in store '%s': run a "
                        "full first (or use -l auto)",
                        want == NJ_LEVEL_DIFF ? "full" : "committed",
                        j->info->name, a->store);
    if (base && !base->checkpoint_name) {
        note(j, "backup %s has no checkpoint: full", base->id);
        base = NULL;
        want = NJ_LEVEL_FULL;
    }
    if (base && ensure_base_checkpoint(j, base) < 0) {
        note(j, "%s; falling back to a full", nj_error_get());
        base = NULL;
        want = NJ_LEVEL_FULL;
    }
    struct nj_checkpoint_info *ci = NULL;
    if (base) {
        j->base_cp = base->checkpoint_name;
        ci = base_info(j);
        if (!ci) {
            note(j, "%s; falling back to a full", nj_error_get());
            base = NULL;
            want = NJ_LEVEL_FULL;
            j->base_cp = NULL;
        }
    }
    bool any_inc = false;
    for (size_t i = 0; i < j->ndisks; i++) {
        struct job_disk *d = &j->disks[i];
        if (!d->selected)
            continue;
        d->bitmap = want != NJ_LEVEL_COPY && d->dd->kind == NJ_DISK_QCOW2;
        d->full = true;
        if (!base || d->dd->kind != NJ_DISK_QCOW2)
            continue;
        const struct nj_manifest_disk *pd = nj_manifest_disk(base, d->dd->target);
        bool in_cp = false, broken = false;
        for (size_t k = 0; ci && k < ci->ndisks; k++)
            if (strcmp(ci->disks[k].target, d->dd->target) == 0 &&
                ci->disks[k].bitmap) {
                in_cp = true;
                broken = ci->disks[k].size < 0;
            }
        if (!pd)
            note(j, "disk '%s' is new since backup %s: full", d->dd->target,
                 base->id);
        else if (pd->size != d->size)
            note(j, "disk '%s' was resized since backup %s: full",
                 d->dd->target, base->id);
        else if (!in_cp)
            note(j, "disk '%s' has no bitmap in checkpoint '%s': full",
                 d->dd->target, j->base_cp);
        else if (broken)
            note(j, "the bitmap of checkpoint '%s' on disk '%s' is missing "
                 "or inconsistent in QEMU: full", j->base_cp, d->dd->target);
        else {
            d->full = false;
            any_inc = true;
        }
    }
    nj_checkpoint_info_free(ci);
    if (base && !any_inc) {
        if (!a->level_auto)
            note(j, "no disk can be backed up incrementally: taking a full");
        base = NULL;
        j->base_cp = NULL;
        want = NJ_LEVEL_FULL;
    }
    j->level = want;
    j->parent = base;
    return 0;
}

static int check_space(struct job *j)
{
    struct statvfs sv;
    if (statvfs(j->a->scratch_dir, &sv) < 0)
        return nj_error_errno(errno, "scratch directory '%s'",
                              j->a->scratch_dir);
    uint64_t free_bytes = (uint64_t)sv.f_bavail * sv.f_frsize;
    uint64_t need = j->a->scratch_min;
    if (free_bytes < need) {
        char a[32], b[32];
        return nj_error("scratch directory '%s' has %s free, at least %s is "
                        "needed (--scratch-dir, --scratch-min)",
                        j->a->scratch_dir,
                        nj_human_bytes(free_bytes, a, sizeof a),
                        nj_human_bytes(need, b, sizeof b));
    }
    return 0;
}

/* A private directory for the socket and scratch files that QEMU (running
 * as its DAC user) can use and nobody else can enter. */
static int make_job_dir(struct job *j)
{
    NJ_CLEANUP_FREE char *base = job_dir_prefix(j);
    j->dir = nj_asprintf("%s/%s%s", j->a->scratch_dir, base, j->id);
    /* The socket path must fit sockaddr_un.sun_path (108 bytes). */
    if (strlen(j->dir) + strlen("/nbd.sock") >= 108) {
        size_t room = 108 - 1 - strlen("/nbd.sock") - strlen(base) -
                      strlen(j->id) - 1;
        free(j->dir);
        j->dir = NULL;
        return nj_error("scratch directory '%s' is too long for the NBD "
                        "socket path: use one of at most %zu characters",
                        j->a->scratch_dir, room);
    }
    if (mkdir(j->dir, 0700) < 0) {
        int e = errno;
        free(j->dir);
        j->dir = NULL;
        return nj_error_errno(e, "create job directory in '%s'",
                              j->a->scratch_dir);
    }
    if (write_job_owner(j) < 0)
        return -1;
    if (j->info->qemu_uid >= 0 &&
        chown(j->dir, (uid_t)j->info->qemu_uid, (gid_t)j->info->qemu_gid) < 0)
        return nj_error_errno(errno, "hand '%s' to QEMU's user", j->dir);
    j->socket = nj_asprintf("%s/nbd.sock", j->dir);
    for (size_t i = 0; i < j->ndisks; i++)
        if (j->disks[i].selected)
            j->disks[i].scratch = nj_asprintf("%s/%s.scratch", j->dir,
                                              j->disks[i].dd->target);
    return 0;
}

static int quiesce(struct job *j, bool freeze)
{
    if (!j->a->quiesce || (!freeze && !j->frozen))
        return 0;
    if (freeze && j->started) {
        note(j, "the domain was shut off: nothing to quiesce");
        return 0;
    }
    int r = freeze ? virDomainFSFreeze(j->dom, NULL, 0, 0)
                   : virDomainFSThaw(j->dom, NULL, 0, 0);
    if (r >= 0) {
        j->frozen = freeze;
        return 0;
    }
    nj_virt_error("%s the file systems of '%s' (guest agent)",
                  freeze ? "freeze" : "thaw", j->info->name);
    if (j->a->quiesce == NJ_QUIESCE_TRY) {
        note(j, "warning: %s; going on without quiescing", nj_error_get());
        return 0;
    }
    return -1;
}

/* Step 5. */
/*
 * Test hook: with NIGHTJAR_TEST_HOLD_JOB=DIR in the environment, a backup
 * whose pull job has begun creates DIR/<domain uuid> and waits there,
 * inside its job, until that file is removed or the run is interrupted.
 * Tests use it to act on a backup whose job certainly runs (a SIGTERM to
 * the scheduler, a second agent), which no amount of polling from outside
 * can guarantee.  Nothing sets it outside the test suite.
 */
static int hold_job(struct job *j)
{
    const char *dir = getenv("NIGHTJAR_TEST_HOLD_JOB");
    if (!dir || !*dir)
        return 0;
    NJ_CLEANUP_FREE char *path = nj_asprintf("%s/%s", dir, j->info->uuid);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                  0600);
    if (fd < 0)
        return nj_error_errno(errno, "test hold '%s'", path);
    close(fd);
    while (!nj_agent_interrupted && access(path, F_OK) == 0)
        usleep(20000);
    if (nj_agent_interrupted) {
        unlink(path);
        return nj_error("interrupted");
    }
    return 0;
}

static int begin_job(struct job *j)
{
    struct nj_backup_disk_spec *bs = nj_calloc(j->ndisks, sizeof *bs);
    struct nj_checkpoint_disk_spec *cs = nj_calloc(j->ndisks, sizeof *cs);
    for (size_t i = 0; i < j->ndisks; i++) {
        struct job_disk *d = &j->disks[i];
        bs[i] = (struct nj_backup_disk_spec){ d->dd->target, d->selected,
                                              d->full, d->scratch };
        cs[i] = (struct nj_checkpoint_disk_spec){ d->dd->target,
                                                  d->selected && d->bitmap };
    }
    NJ_CLEANUP_FREE char *bxml = nj_xml_backup(j->base_cp, j->socket, bs,
                                               j->ndisks);
    NJ_CLEANUP_FREE char *desc = nj_asprintf("nightjar backup %s of %s", j->id,
                                             j->info->name);
    NJ_CLEANUP_FREE char *cxml = NULL;
    if (j->level != NJ_LEVEL_COPY)
        cxml = nj_xml_checkpoint(j->cp_name, desc, cs, j->ndisks);
    free(bs);
    free(cs);
    if (!bxml || (j->level != NJ_LEVEL_COPY && !cxml))
        return -1;
    if (quiesce(j, true) < 0)
        return -1;
    int r = virDomainBackupBegin(j->dom, bxml, cxml, 0);
    int code = r < 0 ? virGetLastErrorCode() : 0;
    if (r < 0)
        nj_virt_error("start the backup of '%s'", j->info->name);
    quiesce(j, false);
    if (r < 0 && code == VIR_ERR_CHECKPOINT_INCONSISTENT && j->base_cp) {
        /* A bitmap libvirt could not see in advance is broken: every
         * disk goes full rather than no backup at all. */
        note(j, "%s; taking a full instead", nj_error_get());
        for (size_t i = 0; i < j->ndisks; i++)
            j->disks[i].full = true;
        j->base_cp = NULL;
        j->parent = NULL;
        j->level = NJ_LEVEL_FULL;
        return begin_job(j);
    }
    if (r < 0)
        return -1;
    j->job_running = true;
    j->cp_created = cxml != NULL;
    if (hold_job(j) < 0)
        return -1;
    char *xml = virDomainBackupGetXMLDesc(j->dom, 0);
    if (!xml)
        return nj_virt_error("read the backup job of '%s'", j->info->name);
    char *sock = NULL;
    struct nj_backup_export *ex = NULL;
    int n = nj_xml_backup_exports(xml, &sock, &ex);
    free(xml);
    if (n < 0)
        return -1;
    int ret = 0;
    for (size_t i = 0; i < j->ndisks && ret == 0; i++) {
        struct job_disk *d = &j->disks[i];
        if (!d->selected)
            continue;
        for (int k = 0; k < n; k++)
            if (strcmp(ex[k].target, d->dd->target) == 0) {
                d->exportname = nj_strdup(ex[k].exportname);
                d->exportbitmap = ex[k].exportbitmap
                                      ? nj_strdup(ex[k].exportbitmap)
                                      : NULL;
            }
        if (!d->exportname)
            ret = nj_error("the backup job of '%s' exports no disk '%s'",
                           j->info->name, d->dd->target);
        else if (!d->full && !d->exportbitmap)
            ret = nj_error("the backup job of '%s' exports no dirty bitmap "
                           "for disk '%s'", j->info->name, d->dd->target);
    }
    free(sock);
    nj_backup_exports_free(ex, (size_t)n);
    return ret;
}

struct disk_thread {
    struct job *j;
    struct job_disk *d;
};

static void *disk_worker(void *arg)
{
    struct disk_thread *t = arg;
    struct job_disk *d = t->d;
    NJ_CLEANUP_FREE char *ctx =
        d->full ? NULL : nj_asprintf("qemu:dirty-bitmap:%s", d->exportbitmap);
    struct nj_nbd_source src = { .socket = t->j->socket,
                                 .export_name = d->exportname,
                                 .bitmap_context = ctx };
    struct nj_datapath_opts o = t->j->a->dp;
    o.cancel = &nj_agent_interrupted;
    d->rc = nj_datapath_backup_disk(t->j->b, d->dd->target,
                                    d->dd->kind == NJ_DISK_QCOW2 ? "qcow2" : "raw",
                                    &src, &o, &d->res);
    if (d->rc < 0)
        snprintf(d->error, sizeof d->error, "%s", nj_error_get());
    return NULL;
}

/* Step 6: every selected disk at once. */
static int run_disks(struct job *j)
{
    struct disk_thread *t = nj_calloc(j->ndisks, sizeof *t);
    pthread_t *tid = nj_calloc(j->ndisks, sizeof *tid);
    bool *started = nj_calloc(j->ndisks, sizeof *started);
    int ret = 0;
    for (size_t i = 0; i < j->ndisks; i++) {
        if (!j->disks[i].selected)
            continue;
        t[i] = (struct disk_thread){ j, &j->disks[i] };
        started[i] = pthread_create(&tid[i], NULL, disk_worker, &t[i]) == 0;
        if (!started[i]) {
            ret = nj_error("cannot start a thread for disk '%s'",
                           j->disks[i].dd->target);
            nj_agent_interrupted = -1; /* stop the others */
        }
    }
    for (size_t i = 0; i < j->ndisks; i++)
        if (started[i]) {
            pthread_join(tid[i], NULL);
            if (j->disks[i].rc < 0 && ret == 0)
                ret = nj_error("%s", j->disks[i].error);
        }
    free(t);
    free(tid);
    free(started);
    return ret;
}

static void end_job(struct job *j)
{
    if (!j->job_running)
        return;
    if (virDomainAbortJob(j->dom) < 0)
        note(j, "warning: %s",
             (nj_virt_error("end the backup job"), nj_error_get()));
    else
        wait_job_gone(j);
    j->job_running = false;
}

static void delete_checkpoint(struct job *j)
{
    if (!j->cp_created)
        return;
    virDomainCheckpointPtr cp =
        virDomainCheckpointLookupByName(j->dom, j->cp_name, 0);
    if (!cp || virDomainCheckpointDelete(cp, 0) < 0) {
        char saved[1024];
        snprintf(saved, sizeof saved, "%s", nj_error_get());
        nj_virt_error("delete checkpoint '%s'", j->cp_name);
        note(j, "warning: %s (a later run removes it)", nj_error_get());
        nj_error("%s", saved);
    }
    if (cp)
        virDomainCheckpointFree(cp);
    j->cp_created = false;
}

static int commit(struct job *j)
{
    NJ_CLEANUP_FREE char *cpxml = NULL;
    if (j->cp_created) {
        virDomainCheckpointPtr cp =
            virDomainCheckpointLookupByName(j->dom, j->cp_name, 0);
        if (cp)
            cpxml = virDomainCheckpointGetXMLDesc(cp, 0);
        if (cp)
            virDomainCheckpointFree(cp);
        if (!cpxml)
            return nj_virt_error("XML of checkpoint '%s'", j->cp_name);
        nj_backup_set_checkpoint(j->b, j->cp_name, cpxml);
    }
    return nj_backup_commit(j->b);
}

static int run(struct job *j)
{
    const struct nj_backup_args *a = j->a;
    j->lock_fd = -1;
    j->conn = nj_virt_connect(a->uri);
    if (!j->conn)
        return -1;
    j->dom = nj_virt_domain(j->conn, a->domain);
    if (!j->dom)
        return -1;
    j->dom_xml = nj_virt_domain_xml(j->dom);
    if (!j->dom_xml)
        return -1;
    j->info = nj_domain_info_parse(j->dom_xml);
    if (!j->info)
        return -1;
    j->store = nj_store_open(a->store, NJ_STORE_CREATE);
    if (!j->store)
        return -1;
    j->store_digest = store_digest(a->store);
    j->store_tag = nj_asprintf("%.8s", j->store_digest);
    j->lock_fd = nj_backup_lock_domain(j->store, j->info->uuid, j->info->name);
    if (j->lock_fd < 0)
        return -1;
    j->cat = nj_catalog_open(j->store);
    if (!j->cat || select_disks(j) < 0)
        return -1;

    int active = virDomainIsActive(j->dom);
    if (active < 0)
        return nj_virt_error("state of '%s'", j->info->name);
    if (!active) {
        /* libvirt makes checkpoints of running domains only: run QEMU
         * paused for the job; autodestroy ends it if we die. */
        if (virDomainCreateWithFlags(j->dom, VIR_DOMAIN_START_PAUSED |
                                                 VIR_DOMAIN_START_AUTODESTROY) < 0)
            return nj_virt_error("start '%s' paused for the backup",
                                 j->info->name);
        j->started = true;
        free(j->dom_xml);
        nj_domain_info_free(j->info);
        j->dom_xml = nj_virt_domain_xml(j->dom);
        j->info = j->dom_xml ? nj_domain_info_parse(j->dom_xml) : NULL;
        if (!j->info)
            return -1;
        free(j->disks);
        j->disks = NULL;
        if (select_disks(j) < 0)
            return -1;
    }
    if (clean_stale(j) < 0 || disk_sizes(j) < 0 || decide(j) < 0 ||
        check_space(j) < 0)
        return -1;

    j->id = nj_backup_id_new();
    j->cp_name = nj_asprintf(CHECKPOINT_PREFIX "%s.%s", j->store_tag, j->id);
    if (make_job_dir(j) < 0)
        return -1;
    if (nj_agent_interrupted)
        return nj_error("interrupted");
    if (begin_job(j) < 0)
        return -1;

    struct nj_backup_params bp = {
        .id = j->id,
        .domain_name = j->info->name,
        .domain_uuid = j->info->uuid,
        .domain_xml = j->dom_xml,
        .level = j->level,
        .parent = j->parent ? j->parent->id : NULL,
        .have_lock = true,
        .lock_fd = j->lock_fd,
    };
    j->lock_fd = -1; /* the backup owns it now */
    j->b = nj_backup_begin(j->store, &bp);
    if (!j->b)
        return -1;
    if (run_disks(j) < 0)
        return -1;
    if (nj_agent_interrupted)
        return nj_error("interrupted");
    end_job(j);
    if (commit(j) < 0)
        return -1;
    j->cp_created = false; /* committed: it belongs to the chain now */
    return 0;
}

static void print_result(const struct job *j)
{
    const struct nj_manifest *m = nj_backup_manifest(j->b);
    double *secs = nj_calloc(m->ndisks, sizeof *secs);
    for (size_t i = 0; i < m->ndisks; i++)
        for (size_t k = 0; k < j->ndisks; k++)
            if (j->disks[k].selected &&
                strcmp(j->disks[k].dd->target, m->disks[i].target) == 0)
                secs[i] = j->disks[k].res.seconds;
    nj_agent_print_result(j->store, m, j->a->json, secs);
    free(secs);
}

int nj_agent_backup(const struct nj_backup_args *a)
{
    nj_virt_init();
    struct job j = { .a = a, .lock_fd = -1 };
    int ret = run(&j);
    if (ret < 0) {
        char saved[1024];
        snprintf(saved, sizeof saved, "%s", nj_error_get());
        end_job(&j);
        delete_checkpoint(&j);
        nj_error("%s", saved);
    } else {
        print_result(&j);
    }
    nj_backup_free(j.b); /* aborts when not committed; releases the lock */
    if (j.lock_fd >= 0)
        nj_store_unlock_domain(j.lock_fd);
    if (j.dir)
        nj_remove_tree(AT_FDCWD, j.dir);
    if (j.started && j.dom &&
        virDomainDestroyFlags(j.dom, VIR_DOMAIN_DESTROY_GRACEFUL) < 0)
        virResetLastError();
    for (size_t i = 0; i < j.ndisks; i++) {
        free(j.disks[i].scratch);
        free(j.disks[i].exportname);
        free(j.disks[i].exportbitmap);
    }
    free(j.disks);
    free(j.dir);
    free(j.socket);
    free(j.id);
    free(j.cp_name);
    free(j.store_tag);
    free(j.store_digest);
    free(j.dom_xml);
    nj_domain_info_free(j.info);
    nj_catalog_free(j.cat);
    nj_store_close(j.store);
    if (j.dom)
        virDomainFree(j.dom);
    if (j.conn)
        virConnectClose(j.conn);
    return ret;
}
