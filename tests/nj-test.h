/*
 * nj-test.h: shared support for nightjar's C tests.
 *
 * The "truth" of a disk is a plain memory buffer that receives the same
 * writes as the backups describe; every restore is compared against it.
 * The chunker here is deliberately simple and independent of datapath/:
 * it cuts dirty runs at a grid and stores each piece, or records zeroes.
 */
#ifndef NJ_TEST_H
#define NJ_TEST_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/types.h>

#include "nj-catalog.h"
#include "nj-util.h"

#define NJ_TEST_GRANULARITY (64u * 1024)

extern int nj_test_failures;

#define CHECK(cond)                                                        \
    do {                                                                   \
        if (!(cond)) {                                                     \
            fprintf(stderr, "%s:%d: check failed: %s (last error: %s)\n",  \
                    __FILE__, __LINE__, #cond, nj_error_get());            \
            nj_test_failures++;                                            \
        }                                                                  \
    } while (0)

#define REQUIRE(cond)                                                      \
    do {                                                                   \
        if (!(cond)) {                                                     \
            fprintf(stderr, "%s:%d: required: %s (last error: %s)\n",      \
                    __FILE__, __LINE__, #cond, nj_error_get());            \
            exit(1);                                                       \
        }                                                                  \
    } while (0)

/* Deterministic PRNG (splitmix64). */
uint64_t nj_test_rand(uint64_t *state);
uint64_t nj_test_rand_below(uint64_t *state, uint64_t n);
void nj_test_fill_random(uint64_t *state, unsigned char *buf, size_t len);

/* A new temporary directory (mkdtemp under $TMPDIR or /tmp); free it. */
char *nj_test_tmpdir(const char *tag);
void nj_test_rmtree(const char *path);

/* A dirty map at NJ_TEST_GRANULARITY over a disk of size bytes. */
struct nj_test_dirty {
    uint64_t size;
    size_t nblocks;
    bool *bit;
};
void nj_test_dirty_init(struct nj_test_dirty *d, uint64_t size);
void nj_test_dirty_mark(struct nj_test_dirty *d, uint64_t off, uint64_t len);
void nj_test_dirty_clear(struct nj_test_dirty *d);
void nj_test_dirty_free(struct nj_test_dirty *d);

/* Apply a random mix of writes (random data, zeroes, repeated patterns,
 * the very last byte) to truth and mark them dirty. */
void nj_test_mutate(uint64_t *rng, unsigned char *truth, uint64_t size,
                    struct nj_test_dirty *dirty, int nops);

/*
 * Store one disk of a backup from truth: the whole disk when full, else
 * the dirty blocks, cut at grid (a power of two).  Zero pieces become
 * zero entries.
 */
int nj_test_store_disk(struct nj_backup *b, struct nj_codec *codec,
                       const char *target, const unsigned char *truth,
                       uint64_t size, const struct nj_test_dirty *dirty,
                       bool full, uint64_t grid);

/* Restore (m, target) to a fresh raw file and compare with truth.
 * Returns 0 when equal. */
int nj_test_restore_compare(struct nj_store *s, const struct nj_catalog *c,
                            const struct nj_manifest *m, const char *target,
                            const unsigned char *truth, uint64_t size,
                            const char *scratch_path);

/* Sets of chunk digests. */
NJ_VECTOR(digest_vec, struct nj_digest);
int nj_test_cmp_digest(const void *a, const void *b);
void nj_test_digests_sort_unique(struct digest_vec *v);
/* Every chunk the committed backups' indexes reference, distinct and
 * sorted into out; *refs (when not NULL) counts references with repeats.
 * Requires a store with no unreadable backup. */
void nj_test_referenced(struct nj_store *s, struct digest_vec *out,
                        uint64_t *refs);

/*
 * Stores on every backend.  nj_test_store_url(local) returns local (a
 * directory path: a new store there has the object layout) unless
 * NJ_TEST_STORE says otherwise: "v1", local too, and
 * nj_test_create_flags() then asks for the version-1 directory layout
 * (tests create their stores with those flags); "objdir", the
 * obj+file:// URL of local (the object store on a directory); "s3", an
 * s3:// URL of a fresh prefix in the bucket "nj-test" of the test S3
 * endpoint (NJ_TEST_S3_*, as scripts/ceph-start.sh prints them; exits 77
 * saying so when they are unset).  nj_test_s3_env() exports those as the AWS_* variables the S3
 * backend reads: false when they are unset.
 */
char *nj_test_store_url(const char *local);
unsigned nj_test_create_flags(void);
/* nj_store_open(url, nj_test_create_flags()), checking that the store it
 * made or found has the layout NJ_TEST_STORE asks for. */
struct nj_store *nj_test_store_create(const char *url);
bool nj_test_s3_env(void);
/* An object of the object store at url (key below its prefix), at most
 * 1 MiB, NUL-terminated: NULL when absent or unreadable. */
char *nj_test_obj_read(const char *url, const char *key, size_t *len);
/* Whether url names a store in the object layout (s3://, obj+file://, or
 * a directory whose marker is not version 1; it must exist). */
bool nj_test_store_is_obj(const char *url);
/* Call fn for each object under chunks/ of the object store at url (name:
 * the 64 hex digits), in key order; fails the test when listing fails. */
void nj_test_obj_chunks(const char *url,
                        void (*fn)(void *arg, const char *name, uint64_t size,
                                   int64_t mtime),
                        void *arg);

/* Copy a store (a directory tree) from one path to a new one, keeping
 * file modes and times. */
void nj_test_copy_store(const char *from, const char *to);

/*
 * Syscall gates: kills at chosen steps, whatever the machine's speed.
 *
 * nj_test_gate_fork() forks a child whose file-system steps each wait,
 * just before the system call runs, until the parent lets them go on or
 * kills the child: creating a file (open/openat with O_CREAT or
 * O_TMPFILE; with all_opens, every openat), mkdir, rename (renameat2
 * too), link, unlink, rmdir, symlink, utimensat.  The child's other calls
 * run freely.  A kill while a step waits lands exactly between the steps
 * before it and that step, so a test that kills "before the Kth step of
 * kind X" is certain to land where it says on any machine.  Built on
 * seccomp user notification (Linux 5.5 or later); when the kernel refuses
 * it, the test exits 77 saying why.
 *
 * Every wait for the child has a failsafe of NJ_TEST_GATE_FAILSAFE
 * seconds: hitting it kills the child and fails the test (exit 1); it is
 * never a pass.
 */
#define NJ_TEST_GATE_FAILSAFE 600

struct nj_test_gate {
    pid_t pid;
    int listener, pidfd, memfd;
    int status;   /* the child's wait status once it ended */
    bool ended;
    uint64_t steps; /* steps seen so far */
};

enum nj_test_call_kind {
    NJ_CALL_CREATE,  /* a file created (O_CREAT or O_TMPFILE) */
    NJ_CALL_OPEN,    /* an open without O_CREAT (only with all_opens) */
    NJ_CALL_MKDIR,
    NJ_CALL_RENAME,  /* flags: renameat2's (RENAME_EXCHANGE, ...) */
    NJ_CALL_LINK,
    NJ_CALL_UNLINK,
    NJ_CALL_RMDIR,
    NJ_CALL_SYMLINK,
    NJ_CALL_UTIME,
};

struct nj_test_call {
    uint64_t id;
    enum nj_test_call_kind kind;
    unsigned long flags;
    /* Absolute paths, resolved against the call's directory fds: the
     * path, and the new one of a rename, link or symlink ("" if none). */
    char path[4096], path2[4096];
};

/* Fork a gated child: 0 in the child, the pid in the parent (g set up).
 * Exits 77 when the kernel lacks seccomp user notification. */
pid_t nj_test_gate_fork(struct nj_test_gate *g, bool all_opens);

/* The child's next step, waiting for it: 1 with *call filled (the child
 * waits until nj_test_gate_pass or nj_test_gate_kill), 0 once the child
 * has ended by itself (g->status). */
int nj_test_gate_next(struct nj_test_gate *g, struct nj_test_call *call);

/* Let the step the child waits at run. */
void nj_test_gate_pass(struct nj_test_gate *g, const struct nj_test_call *call);

/* Pass every step until the child ends; returns its wait status. */
int nj_test_gate_finish(struct nj_test_gate *g);

/* SIGKILL the child (where it is, e.g. waiting at a step), reap it and
 * release g; returns the wait status (or the status it ended with). */
int nj_test_gate_kill(struct nj_test_gate *g);

/* Does path end in /name, or have a component starting with prefix? */
bool nj_test_path_ends(const char *path, const char *name);
bool nj_test_path_has(const char *path, const char *prefix);

/* Exit code for a test: 0, or 1 after printing the failure count. */
int nj_test_done(const char *name);

#endif
