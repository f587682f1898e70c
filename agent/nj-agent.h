/*
 * nj-agent.h: nightjar-agent's commands.
 */
#ifndef NJ_AGENT_H
#define NJ_AGENT_H

#include <signal.h>
#include <stdbool.h>

#include "nj-catalog.h"
#include "nj-datapath.h"

/* Set by SIGINT/SIGTERM: long work stops and rolls back. */
extern volatile int nj_agent_interrupted;
void nj_agent_install_signals(void);

struct nj_import_args {
    const char *store;
    const char *domain;      /* a name for the imported chain */
    const char *target;      /* disk target */
    const char *source;      /* image file or nbd:// / nbd+unix:// URI */
    const char *format;      /* "raw", "qcow2", or NULL: qcow2 when the
                                file's name ends in ".qcow2", else raw
                                (refused if it starts like an image
                                format); never probed */
    const char *bitmap;      /* persistent bitmap (files) or dirty bitmap
                                (URIs) for an incremental */
    enum nj_level level;     /* full or inc */
    bool json;
    struct nj_datapath_opts dp;
};

enum { NJ_QUIESCE_NO = 0, NJ_QUIESCE_YES = 1, NJ_QUIESCE_TRY = 2 };

struct nj_backup_args {
    const char *uri;         /* libvirt URI */
    const char *store;
    const char *domain;      /* name or UUID */
    enum nj_level level;     /* unless level_auto */
    bool level_auto;
    const char *const *disks; /* --disk filter, ndisks of them */
    size_t ndisks;
    bool json;
    int quiesce;             /* NJ_QUIESCE_* */
    const char *scratch_dir; /* socket and scratch files */
    uint64_t scratch_min;    /* free space required there */
    unsigned max_chain;      /* auto: a full once a chain has this many */
    unsigned max_age_days;   /* auto: a full once the full is this old */
    struct nj_datapath_opts dp;
};

/* One backup of a libvirt domain; prints the result on stdout. */
int nj_agent_backup(const struct nj_backup_args *a);

/* Estimate the next backup of domain (or of every domain of the
 * connection when all); prints a table or JSON on stdout. */
int nj_agent_estimate(const char *uri, const char *store, const char *domain,
                      bool all, bool json);

/* Run an import; prints the result (JSON or a line) on stdout. */
int nj_agent_import(const struct nj_import_args *a);

/* A stable UUID-shaped key for a name with no libvirt UUID. */
char *nj_agent_name_uuid(const char *name);

/* Print one backup's result as JSON (the interface scripts rely on). */
void nj_agent_print_result(struct nj_store *s, const struct nj_manifest *m,
                           bool json, const double *seconds);

#endif
