/*
 * nj-nbd.c: qemu-nbd for image files, and image format probing.
 */
#include "nj-io.h"
#include "nj-nbd.h"
#include "nj-util.h"

#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <libnbd.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Run argv with stdout captured (at most max bytes) and stderr kept for
 * the error message.  Returns the output or NULL. */
static char *run_capture(char *const argv[], size_t max)
{
    int out[2], err[2];
    if (pipe2(out, O_CLOEXEC) < 0) {
        nj_error_errno(errno, "pipe");
        return NULL;
    }
    if (pipe2(err, O_CLOEXEC) < 0) {
        close(out[0]);
        close(out[1]);
        nj_error_errno(errno, "pipe");
        return NULL;
    }
    pid_t pid = fork();
    if (pid < 0) {
        nj_error_errno(errno, "fork");
        return NULL;
    }
    if (pid == 0) {
        dup2(out[1], 1);
        dup2(err[1], 2);
        execvp(argv[0], argv);
        fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    close(out[1]);
    close(err[1]);
    char *buf = nj_malloc(max + 1);
    size_t len = 0;
    ssize_t r;
    while (len < max && (r = read(out[0], buf + len, max - len)) != 0) {
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            break;
        len += (size_t)r;
    }
    buf[len] = '\0';
    char ebuf[512];
    size_t elen = 0;
    while (elen < sizeof ebuf - 1 &&
           (r = read(err[0], ebuf + elen, sizeof ebuf - 1 - elen)) > 0)
        elen += (size_t)r;
    ebuf[elen] = '\0';
    close(out[0]);
    close(err[0]);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        ebuf[strcspn(ebuf, "\n")] = '\0';
        nj_error("%s: %s", argv[0], ebuf[0] ? ebuf : "failed");
        free(buf);
        return NULL;
    }
    return buf;
}

/* qemu-img info as JSON, or NULL. */
static struct json_object *image_info(const char *path)
{
    char *argv[] = { (char *)"qemu-img", (char *)"info", (char *)"-U",
                     (char *)"--output=json", (char *)"--", (char *)path,
                     NULL };
    NJ_CLEANUP_FREE char *text = run_capture(argv, 1 << 20);
    if (!text)
        return NULL;
    struct json_object *o = json_tokener_parse(text);
    if (!o)
        nj_error("cannot parse qemu-img info of '%s'", path);
    return o;
}

int nj_image_check_bitmap(const char *path, const char *bitmap)
{
    struct json_object *o = image_info(path);
    if (!o)
        return -1;
    struct json_object *fs = NULL, *data = NULL, *bms = NULL;
    int ret = nj_error("image '%s' has no persistent bitmap '%s'", path,
                       bitmap);
    if (json_object_object_get_ex(o, "format-specific", &fs) &&
        json_object_object_get_ex(fs, "data", &data) &&
        json_object_object_get_ex(data, "bitmaps", &bms) &&
        json_object_is_type(bms, json_type_array)) {
        for (size_t i = 0; i < json_object_array_length(bms); i++) {
            struct json_object *bm = json_object_array_get_idx(bms, i);
            struct json_object *name = NULL, *flags = NULL;
            if (!json_object_object_get_ex(bm, "name", &name) ||
                strcmp(json_object_get_string(name), bitmap) != 0)
                continue;
            ret = 0;
            if (json_object_object_get_ex(bm, "flags", &flags))
                for (size_t k = 0; k < json_object_array_length(flags); k++)
                    if (strcmp(json_object_get_string(
                                   json_object_array_get_idx(flags, k)),
                               "in-use") == 0)
                        ret = nj_error("bitmap '%s' of image '%s' is in use "
                                       "or was left inconsistent by an "
                                       "unclean shutdown: a full backup is "
                                       "needed", bitmap, path);
        }
    }
    json_object_put(o);
    return ret;
}

char *nj_image_format(const char *path)
{
    struct json_object *o = image_info(path);
    if (!o)
        return NULL;
    struct json_object *f = NULL;
    char *fmt = NULL;
    if (o && json_object_object_get_ex(o, "format", &f) &&
        json_object_is_type(f, json_type_string))
        fmt = nj_strdup(json_object_get_string(f));
    else
        nj_error("cannot read the format of '%s' from qemu-img", path);
    json_object_put(o);
    return fmt;
}

static int spawn_server(struct nj_qemu_nbd *q, const char *path,
                        const char *fmt, const char *bitmap, unsigned shared,
                        bool direct);

struct nj_qemu_nbd *nj_qemu_nbd_start(const char *path, const char *format,
                                      const char *bitmap, unsigned shared)
{
    struct stat st;
    if (stat(path, &st) < 0) {
        nj_error_errno(errno, "image '%s'", path);
        return NULL;
    }
    NJ_CLEANUP_FREE char *fmt = format ? nj_strdup(format)
                                       : nj_image_format(path);
    if (!fmt)
        return NULL;
    if (strcmp(fmt, "qcow2") != 0 && strcmp(fmt, "raw") != 0) {
        nj_error("image '%s' is %s; only qcow2 and raw images can be "
                 "imported", path, fmt);
        return NULL;
    }
    if (bitmap && strcmp(fmt, "qcow2") != 0) {
        nj_error("image '%s' is %s: persistent bitmaps need qcow2", path, fmt);
        return NULL;
    }
    const char *tmp = getenv("TMPDIR");
    char *dir = nj_asprintf("%s/nightjar-nbd-XXXXXX", tmp ? tmp : "/tmp");
    if (!mkdtemp(dir)) { /* mkdtemp makes it 0700 */
        nj_error_errno(errno, "create private directory '%s'", dir);
        free(dir);
        return NULL;
    }
    struct nj_qemu_nbd *q = nj_calloc(1, sizeof *q);
    q->dir = dir;
    q->socket = nj_asprintf("%s/nbd.sock", dir);
    if (spawn_server(q, path, fmt, bitmap, shared, true) < 0 &&
        spawn_server(q, path, fmt, bitmap, shared, false) < 0) {
        nj_error_prefix("serve '%s'", path);
        nj_qemu_nbd_stop(q);
        return NULL;
    }
    return q;
}

/* The first line qemu-nbd wrote to its log, for error messages. */
static void log_first_line(const char *log, char *buf, size_t len)
{
    size_t n = 0;
    NJ_CLEANUP_FREE char *text = nj_read_file(AT_FDCWD, log, 65536, &n);
    snprintf(buf, len, "%s", text && text[0] ? text : "exited");
    buf[strcspn(buf, "\n")] = '\0';
}

/*
 * Start qemu-nbd as our child, logging to a file in the private
 * directory, and wait until its socket accepts connections or it exits.
 * direct: O_DIRECT reads (no page-cache pollution); some file systems
 * (tmpfs) refuse them, hence the caller's second try without.
 */
static int spawn_server(struct nj_qemu_nbd *q, const char *path,
                        const char *fmt, const char *bitmap, unsigned shared,
                        bool direct)
{
    NJ_CLEANUP_FREE char *log = nj_asprintf("%s/qemu-nbd.log", q->dir);
    NJ_CLEANUP_FREE char *sockarg = nj_asprintf("--socket=%s", q->socket);
    NJ_CLEANUP_FREE char *fmtarg = nj_asprintf("--format=%s", fmt);
    NJ_CLEANUP_FREE char *sharearg = nj_asprintf("--shared=%u", shared);
    NJ_CLEANUP_FREE char *bmarg = bitmap ? nj_asprintf("--bitmap=%s", bitmap)
                                         : NULL;
    char *argv[16];
    int n = 0;
    argv[n++] = (char *)"qemu-nbd";
    argv[n++] = (char *)"--read-only";
    argv[n++] = (char *)"--persistent";
    argv[n++] = direct ? (char *)"--cache=none" : (char *)"--cache=writeback";
    argv[n++] = direct ? (char *)"--aio=native" : (char *)"--aio=threads";
    argv[n++] = sockarg;
    argv[n++] = fmtarg;
    argv[n++] = sharearg;
    if (bmarg)
        argv[n++] = bmarg;
    argv[n++] = (char *)"--";
    argv[n++] = (char *)path;
    argv[n] = NULL;
    unlink(q->socket);
    int logfd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (logfd < 0)
        return nj_error_errno(errno, "create '%s'", log);
    pid_t pid = fork();
    if (pid < 0) {
        close(logfd);
        return nj_error_errno(errno, "fork");
    }
    if (pid == 0) {
        int devnull = open("/dev/null", O_RDWR);
        dup2(devnull, 0);
        dup2(logfd, 1);
        dup2(logfd, 2);
        /* Its own process group: a terminal's ^C reaches us, and we stop
         * it in order. */
        setpgid(0, 0);
        execvp(argv[0], argv);
        fprintf(stderr, "exec qemu-nbd: %s\n", strerror(errno));
        _exit(127);
    }
    close(logfd);
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(q->socket) >= sizeof sa.sun_path) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        return nj_error("socket path '%s' is too long", q->socket);
    }
    strcpy(sa.sun_path, q->socket);
    for (int i = 0; i < 3000; i++) { /* up to 30 s */
        int status = 0;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            char msg[512];
            log_first_line(log, msg, sizeof msg);
            const char *m = msg;
            if (strncmp(m, "qemu-nbd: ", 10) == 0)
                m += 10;
            return nj_error("qemu-nbd: %s", m);
        }
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        bool listening = fd >= 0 &&
                         connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
        if (fd >= 0)
            close(fd);
        /* qemu-nbd listens before it opens the image: only a complete
         * handshake says the export is there (an image locked by a
         * running VM fails here). */
        if (listening) {
            struct nbd_handle *h = nbd_create();
            bool ok = h && nbd_connect_unix(h, q->socket) == 0;
            if (ok)
                nbd_shutdown(h, 0);
            nbd_close(h);
            if (ok) {
                q->pid = pid;
                return 0;
            }
        }
        struct timespec ts = { 0, 10 * 1000 * 1000 };
        nanosleep(&ts, NULL);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return nj_error("qemu-nbd did not start listening within 30 s");
}

void nj_qemu_nbd_stop(struct nj_qemu_nbd *q)
{
    if (!q)
        return;
    if (q->pid > 0) {
        kill(q->pid, SIGTERM);
        int status;
        bool gone = false;
        for (int i = 0; i < 500 && !gone; i++) {
            gone = waitpid(q->pid, &status, WNOHANG) == q->pid;
            if (!gone) {
                struct timespec ts = { 0, 10 * 1000 * 1000 };
                nanosleep(&ts, NULL);
            }
        }
        if (!gone) {
            kill(q->pid, SIGKILL);
            waitpid(q->pid, &status, 0);
        }
    }
    if (q->dir)
        nj_remove_tree(AT_FDCWD, q->dir);
    free(q->dir);
    free(q->socket);
    free(q);
}
