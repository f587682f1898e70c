/*
 * test-s3: the S3 client (catalog/nj-s3.c) against a real radosgw, the
 * one scripts/ceph-start.sh starts; skipped (77) without one.
 *
 * One bucket per run, emptied at the end.  Round trips of 0 bytes, 1 byte
 * and 5 MiB; errors (absent key, too small a maximum, wrong secret,
 * unreachable endpoint) with their errno and message; ranges; the two
 * conditional puts, with eight threads racing to create one key; HEAD;
 * keys that need encoding; listings over more than a page, with a
 * delimiter; deletes single and batched; asynchronous puts with their
 * callbacks, also while other threads make synchronous calls; the
 * counters.  And, needing no server, so run first:
 * nj_s3_config_load's sources, and retries against a fake server on
 * loopback that answers from a script (503 SlowDown, 500, 429, 400, 412,
 * or nothing at all).
 */
#include "nj-s3.h"
#include "nj-test.h"
#include "nj-util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static const char *endpoint, *access_key, *secret_key, *region;

static void config_for(struct nj_s3_config *c)
{
    memset(c, 0, sizeof *c);
    c->endpoint = nj_strdup(endpoint);
    c->region = nj_strdup(region);
    c->access_key = nj_strdup(access_key);
    c->secret_key = nj_strdup(secret_key);
    c->path_style = true;
    c->max_inflight = 8;
    c->retries = 3;
    c->timeout = 30;
}

static bool one_line(const char *s)
{
    return *s && !strchr(s, '\n');
}

/* ---- configuration ---------------------------------------------------- */

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    REQUIRE(f);
    fputs(text, f);
    REQUIRE(fclose(f) == 0);
}

static void clear_aws_env(void)
{
    static const char *vars[] = {
        "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION",
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
        "AWS_CA_BUNDLE", "AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE",
    };
    for (size_t i = 0; i < NJ_ARRAY_SIZE(vars); i++)
        unsetenv(vars[i]);
}

static void test_config(void)
{
    NJ_CLEANUP_FREE char *dir = nj_test_tmpdir("s3-config");
    NJ_CLEANUP_FREE char *creds = nj_asprintf("%s/credentials", dir);
    NJ_CLEANUP_FREE char *fifo = nj_asprintf("%s/fifo", dir);
    NJ_CLEANUP_FREE char *none = nj_asprintf("%s/none", dir);
    struct nj_s3_config c;

    clear_aws_env();
    setenv("HOME", dir, 1); /* no ~/.aws here */
    write_file(creds,
               "# a comment\n"
               "[default]\n"
               "aws_access_key_id = DEFAULTKEY\n"
               "aws_secret_access_key = defaultsecret\n"
               "\n"
               "[other]\n"
               "aws_access_key_id=OTHERKEY\n"
               "aws_secret_access_key=othersecret\n"
               "aws_session_token = othertoken\n"
               "region = eu-west-3\n"
               "endpoint_url = http://127.0.0.1:9/\n");

    /* Nothing anywhere: one line naming what to set. */
    setenv("AWS_SHARED_CREDENTIALS_FILE", none, 1);
    CHECK(nj_s3_config_load(&c, NULL) == -1);
    CHECK(strstr(nj_error_get(), "no credentials") != NULL);
    CHECK(one_line(nj_error_get()));
    CHECK(c.access_key == NULL);

    /* The profile's file. */
    setenv("AWS_SHARED_CREDENTIALS_FILE", creds, 1);
    setenv("AWS_PROFILE", "other", 1);
    REQUIRE(nj_s3_config_load(&c, NULL) == 0);
    CHECK(strcmp(c.access_key, "OTHERKEY") == 0);
    CHECK(strcmp(c.secret_key, "othersecret") == 0);
    CHECK(c.session_token && strcmp(c.session_token, "othertoken") == 0);
    CHECK(strcmp(c.region, "eu-west-3") == 0);
    CHECK(c.endpoint && strcmp(c.endpoint, "http://127.0.0.1:9/") == 0);
    CHECK(c.path_style);
    CHECK(c.max_inflight == 8 && c.retries == 5 && c.timeout == 60);
    nj_s3_config_clear(&c);

    unsetenv("AWS_PROFILE");
    REQUIRE(nj_s3_config_load(&c, NULL) == 0);
    CHECK(strcmp(c.access_key, "DEFAULTKEY") == 0);
    CHECK(c.session_token == NULL);
    CHECK(strcmp(c.region, "us-east-1") == 0);
    CHECK(c.endpoint == NULL && !c.path_style);
    nj_s3_config_clear(&c);

    /* A profile that is not there: no credentials. */
    setenv("AWS_PROFILE", "missing", 1);
    CHECK(nj_s3_config_load(&c, NULL) == -1);
    CHECK(strstr(nj_error_get(), "no credentials") != NULL);

    /* The environment wins over the file, the conf pairs come between. */
    setenv("AWS_PROFILE", "other", 1);
    setenv("AWS_ACCESS_KEY_ID", "ENVKEY", 1);
    setenv("AWS_SECRET_ACCESS_KEY", "envsecret", 1);
    setenv("AWS_REGION", "ap-south-1", 1);
    const char *conf[] = { "s3-endpoint", "http://conf:1",
                           "s3-access-key-id", "CONFKEY",
                           "s3-secret-access-key", "confsecret", NULL };
    REQUIRE(nj_s3_config_load(&c, conf) == 0);
    CHECK(strcmp(c.access_key, "ENVKEY") == 0);
    CHECK(strcmp(c.secret_key, "envsecret") == 0);
    CHECK(c.session_token == NULL); /* the file's token is not ENVKEY's */
    CHECK(strcmp(c.region, "ap-south-1") == 0);
    CHECK(strcmp(c.endpoint, "http://conf:1") == 0);
    nj_s3_config_clear(&c);
    unsetenv("AWS_ACCESS_KEY_ID");
    unsetenv("AWS_SECRET_ACCESS_KEY");
    unsetenv("AWS_REGION");
    REQUIRE(nj_s3_config_load(&c, conf) == 0);
    CHECK(strcmp(c.access_key, "CONFKEY") == 0);
    CHECK(strcmp(c.region, "eu-west-3") == 0); /* from the file */
    nj_s3_config_clear(&c);

    /* A FIFO is refused at once, not waited on. */
    REQUIRE(mkfifo(fifo, 0600) == 0);
    setenv("AWS_SHARED_CREDENTIALS_FILE", fifo, 1);
    double t0 = nj_mono_sec();
    CHECK(nj_s3_config_load(&c, NULL) == -1);
    CHECK(nj_mono_sec() - t0 < 2.0);
    CHECK(strstr(nj_error_get(), "not a regular file") != NULL);
    CHECK(one_line(nj_error_get()));

    clear_aws_env();
    nj_test_rmtree(dir);
}

/* ---- retries, against a scripted fake ---------------------------------- */

#define STALL 0 /* script entry: read the request, never answer */

struct fake {
    int lfd, port;
    const int *script;
    size_t nscript;
    size_t served; /* atomic */
    char last_date[64][32]; /* x-amz-date of each request seen */
    bool saw_token;         /* an x-amz-security-token: TOKEN header */
    const char *body;       /* of 2xx answers; NULL: empty */
    const char *etag;       /* of every answer; NULL: "fake-etag" */
    pthread_t thread;
    bool stop; /* atomic */
};

static const char *fake_code(int status)
{
    switch (status) {
    case 503: return "SlowDown";
    case 500: return "InternalError";
    case 429: return "TooManyRequests";
    case 400: return "InvalidArgument";
    case 412: return "PreconditionFailed";
    default: return "";
    }
}

static void fake_serve(struct fake *f, int cfd)
{
    char req[16384];
    size_t len = 0;
    char *end = NULL;
    while (!end && len + 1 < sizeof req) {
        ssize_t n = read(cfd, req + len, sizeof req - 1 - len);
        if (n <= 0)
            return;
        len += (size_t)n;
        req[len] = '\0';
        end = strstr(req, "\r\n\r\n");
    }
    if (!end)
        return;
    size_t body = 0;
    const char *cl = strcasestr(req, "\r\ncontent-length:");
    if (cl)
        body = strtoul(cl + 17, NULL, 10);
    size_t have = len - (size_t)(end + 4 - req);
    /* As S3 does: let the client send its body at once. */
    static const char go_on[] = "HTTP/1.1 100 Continue\r\n\r\n";
    if (have < body && strcasestr(req, "\r\nexpect: 100-continue") &&
        write(cfd, go_on, sizeof go_on - 1) != (ssize_t)sizeof go_on - 1)
        return;
    char sink[4096];
    while (have < body) {
        ssize_t n = read(cfd, sink, NJ_MIN(sizeof sink, body - have));
        if (n <= 0)
            return;
        have += (size_t)n;
    }
    size_t i = __atomic_fetch_add(&f->served, 1, __ATOMIC_SEQ_CST);
    const char *date = strcasestr(req, "\r\nx-amz-date:");
    if (date && i < NJ_ARRAY_SIZE(f->last_date))
        snprintf(f->last_date[i], sizeof f->last_date[i], "%.16s", date + 14);
    const char *signed_h = strstr(req, "SignedHeaders=");
    const char *signed_end = signed_h ? strchr(signed_h, ',') : NULL;
    const char *tok = signed_h ? strstr(signed_h, "x-amz-security-token") : NULL;
    if (strstr(req, "\r\nx-amz-security-token: TOKEN\r\n") && tok &&
        signed_end && tok < signed_end)
        f->saw_token = true; /* sent, and signed (in SignedHeaders) */
    int status = f->script[NJ_MIN(i, f->nscript - 1)];
    if (status == STALL) {
        struct pollfd p = { .fd = cfd, .events = POLLIN };
        poll(&p, 1, 10000); /* until the client gives up */
        return;
    }
    char xml[1024] = "";
    if (status < 300 && f->body)
        snprintf(xml, sizeof xml, "%s", f->body);
    else if (status >= 300)
        snprintf(xml, sizeof xml, "<?xml version=\"1.0\"?><Error><Code>%s"
                 "</Code><Message>scripted</Message></Error>",
                 fake_code(status));
    char resp[2048];
    int n = snprintf(resp, sizeof resp, "HTTP/1.1 %d Scripted\r\n"
                     "ETag: \"%s\"\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n\r\n%s", status,
                     f->etag ? f->etag : "fake-etag", strlen(xml), xml);
    if (write(cfd, resp, (size_t)n) != n)
        return;
}

static void *fake_main(void *arg)
{
    struct fake *f = arg;
    while (!__atomic_load_n(&f->stop, __ATOMIC_ACQUIRE)) {
        struct pollfd p = { .fd = f->lfd, .events = POLLIN };
        if (poll(&p, 1, 50) <= 0)
            continue;
        int cfd = accept(f->lfd, NULL, NULL);
        if (cfd < 0)
            continue;
        fake_serve(f, cfd);
        close(cfd);
    }
    return NULL;
}

static void fake_start(struct fake *f, const int *script, size_t n,
                       const char *body, const char *etag)
{
    memset(f, 0, sizeof *f);
    f->body = body;
    f->etag = etag;
    f->script = script;
    f->nscript = n;
    f->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(f->lfd >= 0);
    struct sockaddr_in a = { .sin_family = AF_INET,
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t alen = sizeof a;
    REQUIRE(bind(f->lfd, (struct sockaddr *)&a, sizeof a) == 0);
    REQUIRE(listen(f->lfd, 16) == 0);
    REQUIRE(getsockname(f->lfd, (struct sockaddr *)&a, &alen) == 0);
    f->port = ntohs(a.sin_port);
    REQUIRE(pthread_create(&f->thread, NULL, fake_main, f) == 0);
}

static void fake_stop(struct fake *f)
{
    __atomic_store_n(&f->stop, true, __ATOMIC_RELEASE);
    pthread_join(f->thread, NULL);
    close(f->lfd);
}

static struct nj_s3 *fake_client(const struct fake *f, unsigned retries,
                                 unsigned timeout)
{
    struct nj_s3_config c = {0};
    c.session_token = nj_strdup("TOKEN");
    c.endpoint = nj_asprintf("http://127.0.0.1:%d", f->port);
    c.access_key = nj_strdup("FAKEKEY");
    c.secret_key = nj_strdup("fakesecret");
    c.retries = retries;
    c.timeout = timeout;
    struct nj_s3 *s3 = nj_s3_new(&c, "fake");
    nj_s3_config_clear(&c);
    REQUIRE(s3);
    return s3;
}

static void test_retries(void)
{
    struct fake f;
    struct nj_obj_stats st;

    /* 503 SlowDown twice, then success: retried, each attempt signed anew. */
    static const int slow[] = { 503, 503, 200 };
    fake_start(&f, slow, NJ_ARRAY_SIZE(slow), NULL, NULL);
    struct nj_s3 *s3 = fake_client(&f, 5, 10);
    char etag[NJ_OBJ_TAG_MAX] = "";
    CHECK(nj_s3_put(s3, "k", "abc", 3, NJ_OBJ_REPLACE, NULL, etag) == 0);
    CHECK(strcmp(etag, "fake-etag") == 0);
    nj_s3_stats(s3, &st);
    CHECK(st.requests == 3 && st.retries == 2);
    CHECK(__atomic_load_n(&f.served, __ATOMIC_SEQ_CST) == 3);
    CHECK(f.last_date[0][0] && f.last_date[2][0]);
    CHECK(f.saw_token);
    nj_s3_free(s3);
    fake_stop(&f);

    /* 500 every time: the last answer, after retries + 1 attempts. */
    static const int broken[] = { 500 };
    fake_start(&f, broken, 1, NULL, NULL);
    s3 = fake_client(&f, 2, 10);
    errno = 0;
    CHECK(nj_s3_put(s3, "chunks/ab", "abc", 3, NJ_OBJ_REPLACE, NULL, NULL) == -1);
    CHECK(errno == EIO);
    CHECK(strcmp(nj_error_get(),
                 "s3 PUT 'chunks/ab': 500 InternalError (after 3 attempts)") == 0);
    CHECK(__atomic_load_n(&f.served, __ATOMIC_SEQ_CST) == 3);
    nj_s3_free(s3);
    fake_stop(&f);

    /* 429 is retried; 400 and 412 are not. */
    static const int busy[] = { 429, 200 };
    fake_start(&f, busy, NJ_ARRAY_SIZE(busy), NULL, NULL);
    s3 = fake_client(&f, 5, 10);
    void *back = NULL;
    size_t len = 0;
    CHECK(nj_s3_get(s3, "k", 10, &back, &len) == 0);
    CHECK(len == 0);
    free(back);
    CHECK(__atomic_load_n(&f.served, __ATOMIC_SEQ_CST) == 2);
    nj_s3_free(s3);
    fake_stop(&f);

    static const int bad[] = { 400, 200 };
    fake_start(&f, bad, NJ_ARRAY_SIZE(bad), NULL, NULL);
    s3 = fake_client(&f, 5, 10);
    errno = 0;
    CHECK(nj_s3_delete(s3, "k") == -1);
    CHECK(errno == EIO);
    CHECK(strcmp(nj_error_get(), "s3 DELETE 'k': 400 InvalidArgument") == 0);
    CHECK(__atomic_load_n(&f.served, __ATOMIC_SEQ_CST) == 1);
    nj_s3_free(s3);
    fake_stop(&f);

    static const int exists[] = { 412, 200 };
    fake_start(&f, exists, NJ_ARRAY_SIZE(exists), NULL, NULL);
    s3 = fake_client(&f, 5, 10);
    CHECK(nj_s3_put(s3, "k", "x", 1, NJ_OBJ_CREATE, NULL, NULL) == 1);
    CHECK(__atomic_load_n(&f.served, __ATOMIC_SEQ_CST) == 1);
    nj_s3_free(s3);
    fake_stop(&f);

    /* A CREATE whose first attempt wrote the object but lost the answer:
     * its retry fails the precondition, and the object there is ours (its
     * ETag the MD5 of our body), so the put succeeded; when the object is
     * someone else's, it did not. */
    static const int lost[] = { 500, 412, 200 };
    fake_start(&f, lost, NJ_ARRAY_SIZE(lost), NULL,
               "900150983cd24fb0d6963f7d28e17f72"); /* MD5 of "abc" */
    s3 = fake_client(&f, 2, 10);
    etag[0] = '\0';
    CHECK(nj_s3_put(s3, "k", "abc", 3, NJ_OBJ_CREATE, NULL, etag) == 0);
    CHECK(strcmp(etag, "900150983cd24fb0d6963f7d28e17f72") == 0);
    CHECK(__atomic_load_n(&f.served, __ATOMIC_SEQ_CST) == 3);
    nj_s3_free(s3);
    fake_stop(&f);
    fake_start(&f, lost, NJ_ARRAY_SIZE(lost), NULL, NULL);
    s3 = fake_client(&f, 2, 10);
    CHECK(nj_s3_put(s3, "k", "abc", 3, NJ_OBJ_CREATE, NULL, NULL) == 1);
    nj_s3_free(s3);
    fake_stop(&f);

    /* A server that ignores Range answers 200 with everything: the
     * client still returns only the bytes asked for. */
    static const int whole[] = { 200 };
    fake_start(&f, whole, 1, "0123456789", NULL);
    s3 = fake_client(&f, 0, 10);
    char part[8] = "";
    CHECK(nj_s3_get_range(s3, "k", 3, part, 4) == 4);
    CHECK(memcmp(part, "3456", 4) == 0);
    CHECK(nj_s3_get_range(s3, "k", 8, part, 4) == 2);
    CHECK(memcmp(part, "89", 2) == 0);
    nj_s3_free(s3);
    fake_stop(&f);

    /* A listing is refused, not half believed, when a key lies outside
     * the prefix or a truncated page has no token. */
    static const char outside[] = "<?xml version=\"1.0\"?><ListBucketResult><IsTruncated>false"
             "</IsTruncated><Contents><Key>p/a</Key><Size>1</Size></Contents>"
             "<Contents><Key>q/b</Key><Size>1</Size></Contents>"
             "</ListBucketResult>";
    fake_start(&f, whole, 1, outside, NULL);
    s3 = fake_client(&f, 0, 10);
    char *token = NULL;
    struct nj_obj_page page;
    errno = 0;
    CHECK(nj_s3_list(s3, "p/", NULL, &token, &page) == -1);
    CHECK(errno == EIO && page.nobjects == 0 && page.objects == NULL);
    CHECK(strstr(nj_error_get(), "'q/b'") != NULL);
    nj_s3_free(s3);
    fake_stop(&f);
    static const char untokened[] = "<?xml version=\"1.0\"?><ListBucketResult><IsTruncated>true"
             "</IsTruncated><Contents><Key>p/a</Key><Size>1</Size></Contents>"
             "</ListBucketResult>";
    fake_start(&f, whole, 1, untokened, NULL);
    s3 = fake_client(&f, 0, 10);
    CHECK(nj_s3_list(s3, "p/", NULL, &token, &page) == -1);
    CHECK(strstr(nj_error_get(), "continuation token") != NULL);
    nj_s3_free(s3);
    fake_stop(&f);
    fake_start(&f, whole, 1, "not xml", NULL);
    s3 = fake_client(&f, 0, 10);
    CHECK(nj_s3_list(s3, "p/", NULL, &token, &page) == -1);
    CHECK(one_line(nj_error_get()));
    CHECK(token == NULL);
    nj_s3_free(s3);
    fake_stop(&f);

    /* A server that takes the request and never answers (a full OSD):
     * the low-speed limit ends each attempt after timeout seconds. */
    static const int stall[] = { STALL };
    fake_start(&f, stall, 1, NULL, NULL);
    s3 = fake_client(&f, 1, 1);
    double t0 = nj_mono_sec();
    errno = 0;
    CHECK(nj_s3_put(s3, "k", "x", 1, NJ_OBJ_REPLACE, NULL, NULL) == -1);
    double took = nj_mono_sec() - t0;
    /* curl averages the speed over a few seconds, and the request's own
     * bytes count: each attempt ends 1 to 3 s after the last byte. */
    CHECK(took >= 1.5 && took < 12);
    CHECK(errno == EIO);
    CHECK(strstr(nj_error_get(), "(after 2 attempts)") != NULL);
    CHECK(one_line(nj_error_get()));
    fprintf(stderr, "stalled: %s (%.1f s)\n", nj_error_get(), took);
    CHECK(__atomic_load_n(&f.served, __ATOMIC_SEQ_CST) == 2);
    nj_s3_free(s3);
    fake_stop(&f);
}

/* ---- against the server ---------------------------------------------- */

static void test_roundtrip(struct nj_s3 *s3)
{
    static const size_t sizes[] = { 0, 1, 5u << 20 };
    uint64_t rng = 42;
    for (size_t i = 0; i < NJ_ARRAY_SIZE(sizes); i++) {
        size_t n = sizes[i];
        unsigned char *data = nj_malloc(n + 1);
        nj_test_fill_random(&rng, data, n);
        char key[64], etag[NJ_OBJ_TAG_MAX] = "";
        snprintf(key, sizeof key, "rt/object-%zu", n);
        CHECK(nj_s3_put(s3, key, data, n, NJ_OBJ_REPLACE, NULL, etag) == 0);
        CHECK(etag[0] != '\0' && !strchr(etag, '"'));
        void *back = NULL;
        size_t len = 99;
        CHECK(nj_s3_get(s3, key, n, &back, &len) == 0);
        CHECK(len == n);
        CHECK(back && memcmp(back, data, n) == 0);
        CHECK(back && ((unsigned char *)back)[len] == '\0');
        free(back);

        uint64_t size = 0;
        int64_t mtime = 0;
        char etag2[NJ_OBJ_TAG_MAX] = "";
        CHECK(nj_s3_head(s3, key, &size, &mtime, etag2) == 1);
        CHECK(size == n);
        CHECK(strcmp(etag, etag2) == 0);
        CHECK(mtime > time(NULL) - 3600 && mtime < time(NULL) + 3600);
        free(data);
    }

    /* Too small a maximum: EFBIG. */
    void *back = NULL;
    size_t len = 0;
    errno = 0;
    CHECK(nj_s3_get(s3, "rt/object-5242880", (5u << 20) - 1, &back, &len) == -1);
    CHECK(errno == EFBIG);
    CHECK(one_line(nj_error_get()));
    CHECK(nj_s3_get(s3, "rt/object-1", 0, &back, &len) == -1);
    CHECK(errno == EFBIG);

    /* Absent. */
    errno = 0;
    CHECK(nj_s3_get(s3, "rt/absent", 100, &back, &len) == -1);
    CHECK(errno == ENOENT);
    CHECK(strstr(nj_error_get(), "404") != NULL);
    CHECK(strstr(nj_error_get(), "rt/absent") != NULL);
    CHECK(one_line(nj_error_get()));
    CHECK(nj_s3_head(s3, "rt/absent", NULL, NULL, NULL) == 0);
    char buf[16];
    errno = 0;
    CHECK(nj_s3_get_range(s3, "rt/absent", 0, buf, sizeof buf) == -1);
    CHECK(errno == ENOENT);

    /* An empty key would name the bucket: refused before any request. */
    errno = 0;
    CHECK(nj_s3_delete(s3, "") == -1);
    CHECK(errno == EINVAL);
    CHECK(nj_s3_put(s3, "", "x", 1, NJ_OBJ_REPLACE, NULL, NULL) == -1);
    CHECK(nj_s3_head(s3, "", NULL, NULL, NULL) == -1);
}

static void test_range(struct nj_s3 *s3)
{
    unsigned char data[1000];
    for (size_t i = 0; i < sizeof data; i++)
        data[i] = (unsigned char)(i * 7 + 3);
    REQUIRE(nj_s3_put(s3, "range", data, sizeof data, NJ_OBJ_REPLACE,
                      NULL, NULL) == 0);
    unsigned char buf[300];
    CHECK(nj_s3_get_range(s3, "range", 0, buf, 100) == 100);
    CHECK(memcmp(buf, data, 100) == 0);
    CHECK(nj_s3_get_range(s3, "range", 450, buf, 300) == 300);
    CHECK(memcmp(buf, data + 450, 300) == 0);
    CHECK(nj_s3_get_range(s3, "range", 900, buf, 300) == 100); /* the end */
    CHECK(memcmp(buf, data + 900, 100) == 0);
    CHECK(nj_s3_get_range(s3, "range", 999, buf, 1) == 1);
    CHECK(buf[0] == data[999]);
    CHECK(nj_s3_get_range(s3, "range", 1000, buf, 10) == 0); /* at the end */
    CHECK(nj_s3_get_range(s3, "range", 5000, buf, 10) == 0); /* past it */
    CHECK(nj_s3_get_range(s3, "range", 0, buf, 0) == 0);
}

struct race {
    struct nj_s3 *s3;
    int index;
    int rc;
};

static void *race_main(void *arg)
{
    struct race *r = arg;
    char body[32];
    snprintf(body, sizeof body, "thread %d", r->index);
    r->rc = nj_s3_put(r->s3, "race/one", body, strlen(body), NJ_OBJ_CREATE,
                      NULL, NULL);
    return NULL;
}

static void test_conditional(struct nj_s3 *s3)
{
    char etag[NJ_OBJ_TAG_MAX] = "", etag2[NJ_OBJ_TAG_MAX] = "";
    CHECK(nj_s3_put(s3, "cond/create", "a", 1, NJ_OBJ_CREATE, NULL, etag) == 0);
    CHECK(nj_s3_put(s3, "cond/create", "b", 1, NJ_OBJ_CREATE, NULL, NULL) == 1);
    void *back = NULL;
    size_t len = 0;
    CHECK(nj_s3_get(s3, "cond/create", 10, &back, &len) == 0);
    CHECK(len == 1 && back && ((char *)back)[0] == 'a');
    free(back);

    CHECK(nj_s3_put(s3, "cond/create", "c", 1, NJ_OBJ_IF_MATCH, etag, etag2) == 0);
    CHECK(etag2[0] && strcmp(etag, etag2) != 0);
    CHECK(nj_s3_put(s3, "cond/create", "d", 1, NJ_OBJ_IF_MATCH, etag, NULL) == 1);
    CHECK(nj_s3_put(s3, "cond/absent", "d", 1, NJ_OBJ_IF_MATCH, etag, NULL) == 1);
    back = NULL;
    CHECK(nj_s3_get(s3, "cond/create", 10, &back, &len) == 0);
    CHECK(len == 1 && back && ((char *)back)[0] == 'c');
    free(back);

    struct race races[8];
    pthread_t th[8];
    for (int i = 0; i < 8; i++) {
        races[i] = (struct race){ .s3 = s3, .index = i, .rc = -2 };
        REQUIRE(pthread_create(&th[i], NULL, race_main, &races[i]) == 0);
    }
    int winners = 0, losers = 0;
    for (int i = 0; i < 8; i++) {
        pthread_join(th[i], NULL);
        winners += races[i].rc == 0;
        losers += races[i].rc == 1;
    }
    CHECK(winners == 1);
    CHECK(losers == 7);
}

static void test_encoding(struct nj_s3 *s3)
{
    static const char *keys[] = {
        "enc/with space", "enc/plus+sign", "enc/per%cent", "enc/eq=als",
        "enc/amp&ersand", "enc/quo\"te'", "enc/unicod\xc3\xa9-\xe2\x82\xac",
        "enc/question?mark#hash", "enc/a//double", "enc/tilde~_-.",
        "enc/dot/../dotdot", "enc/./dot", "enc/tab\there", "enc/semi;colon,comma",
    };
    for (size_t i = 0; i < NJ_ARRAY_SIZE(keys); i++) {
        CHECK(nj_s3_put(s3, keys[i], keys[i], strlen(keys[i]),
                        NJ_OBJ_REPLACE, NULL, NULL) == 0);
        void *back = NULL;
        size_t len = 0;
        CHECK(nj_s3_get(s3, keys[i], 100, &back, &len) == 0);
        CHECK(back && len == strlen(keys[i]) && memcmp(back, keys[i], len) == 0);
        free(back);
        CHECK(nj_s3_head(s3, keys[i], NULL, NULL, NULL) == 1);
    }
    /* Listed under their own names, in order. */
    char *token = NULL;
    struct nj_obj_page page;
    REQUIRE(nj_s3_list(s3, "enc/", NULL, &token, &page) == 0);
    CHECK(page.nobjects == NJ_ARRAY_SIZE(keys));
    for (size_t i = 0; i < page.nobjects; i++) {
        bool known = false;
        for (size_t k = 0; k < NJ_ARRAY_SIZE(keys); k++)
            known |= strcmp(page.objects[i].key, keys[k]) == 0;
        CHECK(known);
        if (i)
            CHECK(strcmp(page.objects[i - 1].key, page.objects[i].key) < 0);
    }
    CHECK(token == NULL);
    nj_obj_page_clear(&page);
    /* A prefix that needs encoding too. */
    REQUIRE(nj_s3_list(s3, "enc/per%", NULL, &token, &page) == 0);
    CHECK(page.nobjects == 1);
    nj_obj_page_clear(&page);
    REQUIRE(nj_s3_list(s3, "enc/with ", NULL, &token, &page) == 0);
    CHECK(page.nobjects == 1);
    nj_obj_page_clear(&page);
    CHECK(nj_s3_delete_many(s3, keys, NJ_ARRAY_SIZE(keys)) == 0);
    REQUIRE(nj_s3_list(s3, "enc/", NULL, &token, &page) == 0);
    CHECK(page.nobjects == 0);
    nj_obj_page_clear(&page);
}

static void count_done(void *arg, int rc)
{
    int *counts = arg;
    __atomic_fetch_add(&counts[rc == 0 ? 0 : 1], 1, __ATOMIC_RELAXED);
}

/* Every key under prefix, through every page; -1 on error. */
static long list_all(struct nj_s3 *s3, const char *prefix, long *pages)
{
    char *token = NULL;
    long n = 0;
    *pages = 0;
    char *last = NULL;
    do {
        struct nj_obj_page page;
        if (nj_s3_list(s3, prefix, NULL, &token, &page) < 0) {
            free(last);
            free(token);
            return -1;
        }
        (*pages)++;
        for (size_t i = 0; i < page.nobjects; i++) {
            CHECK(strncmp(page.objects[i].key, prefix, strlen(prefix)) == 0);
            CHECK(!last || strcmp(last, page.objects[i].key) < 0);
            free(last);
            last = nj_strdup(page.objects[i].key);
        }
        n += (long)page.nobjects;
        nj_obj_page_clear(&page);
    } while (token);
    free(last);
    return n;
}

static void test_list_and_delete(struct nj_s3 *s3)
{
    int counts[2] = { 0, 0 };
    char key[64];
    for (int i = 0; i < 1100; i++) {
        snprintf(key, sizeof key, "many/%s/%05d", i % 2 ? "odd" : "even", i);
        CHECK(nj_s3_put_async(s3, key, key, strlen(key), NJ_OBJ_REPLACE,
                              count_done, counts) == 0);
    }
    for (int i = 0; i < 400; i++) {
        snprintf(key, sizeof key, "many/top-%03d", i);
        CHECK(nj_s3_put_async(s3, key, "", 0, NJ_OBJ_CREATE, count_done,
                              counts) == 0);
    }
    nj_s3_wait(s3);
    CHECK(counts[0] == 1500 && counts[1] == 0);

    long pages = 0;
    CHECK(list_all(s3, "many/", &pages) == 1500);
    CHECK(pages == 2);
    CHECK(list_all(s3, "many/odd/", &pages) == 550);
    CHECK(pages == 1);
    CHECK(list_all(s3, "many/nothing", &pages) == 0);

    /* The first page is full, the token leads on. */
    char *token = NULL;
    struct nj_obj_page page;
    REQUIRE(nj_s3_list(s3, "many/", NULL, &token, &page) == 0);
    CHECK(page.nobjects == 1000);
    CHECK(token != NULL);
    CHECK(page.objects[0].size == strlen("many/even/00000"));
    CHECK(page.objects[0].mtime > time(NULL) - 3600);
    nj_obj_page_clear(&page);
    free(token);
    token = NULL;

    /* A delimiter: the two directories, and top-level keys as objects. */
    REQUIRE(nj_s3_list(s3, "many/", "/", &token, &page) == 0);
    CHECK(page.nprefixes == 2);
    if (page.nprefixes == 2) {
        CHECK(strcmp(page.prefixes[0], "many/even/") == 0);
        CHECK(strcmp(page.prefixes[1], "many/odd/") == 0);
    }
    CHECK(page.nobjects == 400);
    CHECK(token == NULL);
    nj_obj_page_clear(&page);

    /* delete_many of 1500 in two batches, plus an absent key. */
    char **keys = nj_calloc(1501, sizeof *keys);
    for (int i = 0; i < 1100; i++)
        keys[i] = nj_asprintf("many/%s/%05d", i % 2 ? "odd" : "even", i);
    for (int i = 0; i < 400; i++)
        keys[1100 + i] = nj_asprintf("many/top-%03d", i);
    keys[1500] = nj_strdup("many/never-there");
    CHECK(nj_s3_delete_many(s3, (const char *const *)keys, 1501) == 0);
    for (int i = 0; i <= 1500; i++)
        free(keys[i]);
    free(keys);
    CHECK(list_all(s3, "many/", &pages) == 0);

    CHECK(nj_s3_delete(s3, "many/never-there") == 0);
    CHECK(nj_s3_put(s3, "del/one", "x", 1, NJ_OBJ_REPLACE, NULL, NULL) == 0);
    CHECK(nj_s3_delete(s3, "del/one") == 0);
    CHECK(nj_s3_head(s3, "del/one", NULL, NULL, NULL) == 0);
}

static void test_async(struct nj_s3 *s3)
{
    int counts[2] = { 0, 0 };
    char key[64];
    unsigned char body[4096];
    uint64_t rng = 9;
    nj_test_fill_random(&rng, body, sizeof body);
    for (int i = 0; i < 200; i++) {
        snprintf(key, sizeof key, "async/%03d", i);
        CHECK(nj_s3_put_async(s3, key, body, (size_t)i * 17, NJ_OBJ_CREATE,
                              count_done, counts) == 0);
    }
    CHECK(nj_s3_put_async(s3, "async/no-callback", "z", 1, NJ_OBJ_REPLACE,
                          NULL, NULL) == 0);
    nj_s3_wait(s3);
    CHECK(counts[0] == 200);
    CHECK(counts[1] == 0);
    /* The copies were taken at call time. */
    void *back = NULL;
    size_t len = 0;
    CHECK(nj_s3_get(s3, "async/199", 1u << 20, &back, &len) == 0);
    CHECK(len == 199 * 17 && back && memcmp(back, body, len) == 0);
    free(back);
    CHECK(nj_s3_head(s3, "async/no-callback", NULL, NULL, NULL) == 1);

    /* CREATE again: every callback sees 1. */
    counts[0] = counts[1] = 0;
    for (int i = 0; i < 20; i++) {
        snprintf(key, sizeof key, "async/%03d", i);
        CHECK(nj_s3_put_async(s3, key, "", 0, NJ_OBJ_CREATE, count_done,
                              counts) == 0);
    }
    nj_s3_wait(s3);
    CHECK(counts[0] == 0 && counts[1] == 20);
}

struct mixer {
    struct nj_s3 *s3;
    int index, failures;
};

static void *mixer_main(void *arg)
{
    struct mixer *m = arg;
    char key[64], body[64];
    for (int i = 0; i < 40; i++) {
        snprintf(key, sizeof key, "mix/%d/%02d", m->index, i);
        snprintf(body, sizeof body, "thread %d item %d", m->index, i);
        void *back = NULL;
        size_t len = 0;
        uint64_t size = 0;
        if (nj_s3_put(m->s3, key, body, strlen(body), NJ_OBJ_CREATE, NULL,
                      NULL) != 0 ||
            nj_s3_get(m->s3, key, 100, &back, &len) != 0 ||
            len != strlen(body) || memcmp(back, body, len) != 0 ||
            nj_s3_head(m->s3, key, &size, NULL, NULL) != 1 ||
            size != strlen(body) || nj_s3_delete(m->s3, key) != 0 ||
            nj_s3_head(m->s3, key, NULL, NULL, NULL) != 0) {
            fprintf(stderr, "mixer %d item %d: %s\n", m->index, i,
                    nj_error_get());
            m->failures++;
        }
        free(back);
    }
    return NULL;
}

/* Synchronous calls from four threads while a fifth keeps the queue of
 * asynchronous puts full: every call gets its own answer. */
static void test_mixed(struct nj_s3 *s3)
{
    struct mixer m[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        m[i] = (struct mixer){ .s3 = s3, .index = i };
        REQUIRE(pthread_create(&th[i], NULL, mixer_main, &m[i]) == 0);
    }
    int counts[2] = { 0, 0 };
    char key[64];
    for (int i = 0; i < 300; i++) {
        snprintf(key, sizeof key, "mixasync/%03d", i);
        CHECK(nj_s3_put_async(s3, key, key, strlen(key), NJ_OBJ_REPLACE,
                              count_done, counts) == 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        CHECK(m[i].failures == 0);
    }
    nj_s3_wait(s3);
    CHECK(counts[0] == 300 && counts[1] == 0);
    long pages;
    CHECK(list_all(s3, "mix/", &pages) == 0);
    CHECK(list_all(s3, "mixasync/", &pages) == 300);
}

static void test_wrong_secret(const char *bucket)
{
    struct nj_s3_config c;
    config_for(&c);
    free(c.secret_key);
    c.secret_key = nj_strdup("not-the-secret");
    struct nj_s3 *bad = nj_s3_new(&c, bucket);
    REQUIRE(bad);
    errno = 0;
    CHECK(nj_s3_put(bad, "secret/x", "x", 1, NJ_OBJ_REPLACE, NULL, NULL) == -1);
    CHECK(errno == EACCES);
    CHECK(strstr(nj_error_get(), "403") != NULL);
    CHECK(strstr(nj_error_get(), "PUT 'secret/x'") != NULL);
    CHECK(one_line(nj_error_get()));
    fprintf(stderr, "wrong secret: %s\n", nj_error_get());
    void *back = NULL;
    size_t len = 0;
    errno = 0;
    CHECK(nj_s3_get(bad, "secret/x", 10, &back, &len) == -1);
    CHECK(errno == EACCES);
    struct nj_obj_stats st;
    nj_s3_stats(bad, &st);
    CHECK(st.retries == 0); /* a 403 is not retried */
    nj_s3_free(bad);
    nj_s3_config_clear(&c);
}

static void test_unreachable(void)
{
    struct nj_s3_config c;
    config_for(&c);
    free(c.endpoint);
    c.endpoint = nj_strdup("http://127.0.0.1:1");
    c.retries = 1;
    c.timeout = 5;
    struct nj_s3 *s3 = nj_s3_new(&c, "nowhere");
    REQUIRE(s3);
    double t0 = nj_mono_sec();
    errno = 0;
    CHECK(nj_s3_put(s3, "k", "x", 1, NJ_OBJ_REPLACE, NULL, NULL) == -1);
    CHECK(errno == EIO);
    CHECK(nj_mono_sec() - t0 < 10);
    CHECK(strstr(nj_error_get(), "PUT 'k'") != NULL);
    CHECK(strstr(nj_error_get(), "2 attempts") != NULL);
    CHECK(one_line(nj_error_get()));
    fprintf(stderr, "unreachable: %s\n", nj_error_get());
    struct nj_obj_stats st;
    nj_s3_stats(s3, &st);
    CHECK(st.requests == 2 && st.retries == 1);

    /* An asynchronous put reports the failure to its callback. */
    int counts[2] = { 0, 0 };
    CHECK(nj_s3_put_async(s3, "k", "x", 1, NJ_OBJ_REPLACE, count_done,
                          counts) == 0);
    nj_s3_wait(s3);
    CHECK(counts[0] == 0 && counts[1] == 1);
    nj_s3_free(s3);
    nj_s3_config_clear(&c);
}

static void cleanup_bucket(struct nj_s3 *s3)
{
    char *token = NULL;
    do {
        struct nj_obj_page page;
        if (nj_s3_list(s3, "", NULL, &token, &page) < 0) {
            CHECK(!"cleanup listing failed");
            free(token);
            return;
        }
        const char **keys = nj_calloc(page.nobjects + 1, sizeof *keys);
        for (size_t i = 0; i < page.nobjects; i++)
            keys[i] = page.objects[i].key;
        CHECK(nj_s3_delete_many(s3, keys, page.nobjects) == 0);
        free(keys);
        nj_obj_page_clear(&page);
    } while (token);
    long pages;
    CHECK(list_all(s3, "", &pages) == 0);
}

int main(void)
{
    test_config();
    test_retries();

    endpoint = getenv("NJ_TEST_S3_ENDPOINT");
    access_key = getenv("NJ_TEST_S3_ACCESS_KEY");
    secret_key = getenv("NJ_TEST_S3_SECRET_KEY");
    region = getenv("NJ_TEST_S3_REGION");
    if (!region || !*region)
        region = "us-east-1";
    if (!endpoint || !*endpoint || !access_key || !*access_key ||
        !secret_key || !*secret_key) {
        printf("test-s3: no test S3 endpoint: run scripts/ceph-start.sh and "
               "export its output\n");
        return nj_test_failures ? nj_test_done("test-s3") : 77;
    }

    char bucket[64];
    snprintf(bucket, sizeof bucket, "nj-test-s3-%d-%lld", (int)getpid(),
             (long long)time(NULL));
    struct nj_s3_config c;
    config_for(&c);
    struct nj_s3 *s3 = nj_s3_new(&c, bucket);
    REQUIRE(s3);
    REQUIRE(nj_s3_bucket_create(s3) == 0);
    CHECK(nj_s3_bucket_create(s3) == 0);

    test_roundtrip(s3);
    test_range(s3);
    test_conditional(s3);
    test_encoding(s3);
    test_list_and_delete(s3);
    test_async(s3);
    test_mixed(s3);
    test_wrong_secret(bucket);
    test_unreachable();

    struct nj_obj_stats st;
    nj_s3_stats(s3, &st);
    CHECK(st.requests > 2600); /* 1500 + 200 + 300 puts, 800 mixed, the rest */
    CHECK(st.bytes_sent >= (5u << 20));
    CHECK(st.bytes_received >= (5u << 20));
    printf("test-s3: %llu requests, %llu retries, %llu bytes sent, "
           "%llu received\n", (unsigned long long)st.requests,
           (unsigned long long)st.retries, (unsigned long long)st.bytes_sent,
           (unsigned long long)st.bytes_received);

    cleanup_bucket(s3);
    nj_s3_free(s3);
    nj_s3_config_clear(&c);
    return nj_test_done("test-s3");
}
