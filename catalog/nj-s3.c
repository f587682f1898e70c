/*
 * nj-s3.c: the S3 client of nj-s3.h.
 *
 * Engine.  One curl multi handle belongs to a private I/O thread; no other
 * thread calls curl on it, except curl_multi_wakeup().  A request (struct
 * req) is built by the calling thread, queued under s3->lock, and from
 * then on belongs to the I/O thread until it is complete:
 *
 *   queued --dispatch--> running --done--> complete
 *      ^                    |
 *      +---- backoff <------+  (retryable failure, attempts left)
 *
 * At most max_inflight requests run at once.  Each dispatch sets the easy
 * handle up from scratch (curl_easy_reset, then every option), so that a
 * retried request is signed again with a fresh x-amz-date.  Easy handles
 * are kept in a pool after use: their connections stay in the multi
 * handle's cache and are reused.
 *
 * Completion of a synchronous request sets r->complete and broadcasts
 * s3->cond; the waiting thread turns r->msg / r->err into its own last
 * error (the I/O thread's last error is thread-local and of no use to
 * it), then frees r.  An asynchronous PUT owns a copy of its body; its
 * callback runs on the I/O thread with that thread's last error set, and
 * the I/O thread frees it.  nj_s3_put_async() blocks while max_inflight
 * asynchronous requests are outstanding, so at most max_inflight copies
 * are alive.
 *
 * Signing.  libcurl (CURLOPT_AWS_SIGV4) signs the request line and
 * headers exactly as given, so what it is given must already be canonical:
 * keys percent-encoded with uppercase %XX except unreserved characters and
 * '/', sent as they are (CURLOPT_PATH_AS_IS: no dot-segment removal);
 * query parameters sorted by name with encoded values ("delete=" when
 * value-less); x-amz-content-sha256 set here, because libcurl does not.
 * The Expect header is left to libcurl: blanking it makes libcurl sign a
 * header it then does not send.
 *
 * Stats count every HTTP attempt in requests, the repeated ones also in
 * retries, and body bytes both ways.
 */
#include "nj-digest.h"
#include "nj-s3.h"
#include "nj-util.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <curl/curl.h>
#include <libxml/parser.h>
#include <libxml/tree.h>
#include <openssl/evp.h>

#define BACKOFF_BASE_MS 100
#define BACKOFF_CAP_MS 10000
#define ERROR_BODY_MAX (64u * 1024)
#define CREDENTIALS_MAX (1u << 20)
#define PRESIZE_MAX (64u << 20)

/* Outcomes a request may accept besides 2xx. */
enum {
    OK_412 = 1 << 0, /* precondition failed: a result */
    OK_404 = 1 << 1, /* absent: a result (HEAD, DELETE) */
    OK_416 = 1 << 2, /* range past the end: zero bytes */
    OK_409_OWNED = 1 << 3, /* BucketAlreadyOwnedByYou */
};

struct req {
    struct nj_s3 *s3;
    const char *method; /* "GET", "PUT", "HEAD", "DELETE", "POST" */
    char *what;         /* the key or "bucket", for messages */
    char *url;
    char *headers[4];   /* extra request headers, owned */
    size_t nheaders;
    unsigned ok_mask;

    const unsigned char *body; /* request body, borrowed or owned_body */
    unsigned char *owned_body;
    size_t body_len, body_off;
    char sha256[2 * 32 + 1];

    /* Response body: into a growing buffer of at most resp_max bytes, or,
     * with range_buf, into the caller's buffer after skipping range_skip
     * bytes (a server ignoring Range answers 200 with everything). */
    unsigned char *resp;
    size_t resp_len, resp_cap, resp_max;
    unsigned char *range_buf;
    size_t range_len;
    uint64_t range_off, range_skip;
    bool too_big, range_full, range_started;

    long status;
    char etag[NJ_OBJ_TAG_MAX];
    uint64_t content_length;
    bool have_length;
    int64_t mtime;

    CURL *easy;
    struct curl_slist *hlist; /* the headers of the running attempt */
    unsigned attempt;
    struct timespec due; /* of a request in backoff */
    char curl_err[CURL_ERROR_SIZE];

    /* Result. */
    int rc, err;
    char msg[512];
    bool complete;

    bool async;
    void (*done)(void *arg, int rc);
    void *done_arg;
    struct req *next;
};

struct nj_s3 {
    char *base; /* "http://host:port/bucket", "https://B.s3.R.amazonaws.com" */
    char *bucket;
    char *region;
    char *sigv4;       /* "aws:amz:REGION:s3" */
    char *access_key, *secret_key;
    char *token_header; /* "x-amz-security-token: ..." or NULL */
    char *ca_file;
    unsigned max_inflight, retries, timeout;

    CURLM *multi;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct req *queue_head, *queue_tail; /* waiting for dispatch */
    struct req *backoff;                 /* unordered */
    unsigned running;
    unsigned async_outstanding;
    bool stop;
    CURL **pool;
    size_t npool;
    uint64_t rng;
    struct nj_obj_stats stats;
};

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static CURLcode global_rc;

static void global_init(void)
{
    global_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
    xmlInitParser();
}

/* ---- small helpers ---------------------------------------------------- */

static int sha256_hex(const void *buf, size_t len, char *out)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    if (!EVP_Digest(buf, len, md, &mdlen, EVP_sha256(), NULL) || mdlen != 32)
        return nj_error("s3: SHA-256 failed");
    nj_hex_encode(md, 32, out);
    return 0;
}

static bool unreserved(unsigned char c)
{
    return isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~';
}

/* Percent-encode s (uppercase %XX), keeping '/' when keep_slash. */
static char *uri_encode(const char *s, bool keep_slash)
{
    static const char digits[] = "0123456789ABCDEF";
    size_t n = strlen(s);
    char *out = nj_malloc(3 * n + 1), *p = out;
    for (const unsigned char *q = (const unsigned char *)s; *q; q++) {
        if (unreserved(*q) || (keep_slash && *q == '/')) {
            *p++ = (char)*q;
        } else {
            *p++ = '%';
            *p++ = digits[*q >> 4];
            *p++ = digits[*q & 15];
        }
    }
    *p = '\0';
    return out;
}

static char *xml_escape(const char *s)
{
    size_t n = strlen(s);
    char *out = nj_malloc(6 * n + 1), *p = out;
    for (; *s; s++) {
        const char *rep = NULL;
        switch (*s) {
        case '&': rep = "&amp;"; break;
        case '<': rep = "&lt;"; break;
        case '>': rep = "&gt;"; break;
        case '"': rep = "&quot;"; break;
        case '\'': rep = "&apos;"; break;
        default: break;
        }
        if (rep) {
            size_t l = strlen(rep);
            memcpy(p, rep, l);
            p += l;
        } else {
            *p++ = *s;
        }
    }
    *p = '\0';
    return out;
}

/* Copy an ETag without quotes or surrounding blanks. */
static void etag_copy(char *dst, const char *src, size_t srclen)
{
    while (srclen && (isspace((unsigned char)*src) || *src == '"')) {
        src++;
        srclen--;
    }
    while (srclen && (isspace((unsigned char)src[srclen - 1]) ||
                      src[srclen - 1] == '"'))
        srclen--;
    if (srclen >= NJ_OBJ_TAG_MAX)
        srclen = NJ_OBJ_TAG_MAX - 1;
    memcpy(dst, src, srclen);
    dst[srclen] = '\0';
}

/* A growing string. */
struct buf {
    char *p;
    size_t len, cap;
};

static void buf_add(struct buf *b, const char *s)
{
    size_t l = strlen(s);
    if (b->len + l + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (b->len + l + 1 > cap)
            cap *= 2;
        b->p = nj_realloc_array(b->p, cap, 1);
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, l + 1);
    b->len += l;
}

static xmlDocPtr xml_parse(const void *buf, size_t len)
{
    if (len == 0 || len > INT32_MAX)
        return NULL;
    return xmlReadMemory(buf, (int)len, "s3.xml", NULL,
                         XML_PARSE_NONET | XML_PARSE_NOERROR |
                         XML_PARSE_NOWARNING);
}

static bool xml_is(const xmlNode *n, const char *name)
{
    return n->type == XML_ELEMENT_NODE &&
           strcmp((const char *)n->name, name) == 0;
}

/* The text of n, a new string. */
static char *xml_text(const xmlNode *n)
{
    xmlChar *t = xmlNodeGetContent(n);
    char *s = nj_strdup(t ? (const char *)t : "");
    xmlFree(t);
    return s;
}

/* The text of n's child element name, a new string, or NULL. */
static char *xml_child_text(const xmlNode *n, const char *name)
{
    for (const xmlNode *c = n->children; c; c = c->next) {
        if (xml_is(c, name))
            return xml_text(c);
    }
    return NULL;
}

/* <Error><Code>X</Code>... into code (empty when there is none). */
static void error_code(const struct req *r, char *code, size_t size)
{
    code[0] = '\0';
    xmlDocPtr doc = xml_parse(r->resp, r->resp_len);
    if (!doc)
        return;
    xmlNode *root = xmlDocGetRootElement(doc);
    char *c = root ? xml_child_text(root, "Code") : NULL;
    if (c) {
        /* One line, printable. */
        size_t i = 0;
        for (const char *p = c; *p && i + 1 < size; p++)
            code[i++] = isgraph((unsigned char)*p) ? *p : '?';
        code[i] = '\0';
    }
    free(c);
    xmlFreeDoc(doc);
}

/* ---- curl callbacks --------------------------------------------------- */

static size_t read_cb(char *buf, size_t size, size_t nmemb, void *arg)
{
    struct req *r = arg;
    size_t n = NJ_MIN(size * nmemb, r->body_len - r->body_off);
    if (n)
        memcpy(buf, r->body + r->body_off, n);
    r->body_off += n;
    return n;
}

static int seek_cb(void *arg, curl_off_t off, int origin)
{
    struct req *r = arg;
    if (origin != SEEK_SET || off < 0 || (uint64_t)off > r->body_len)
        return CURL_SEEKFUNC_FAIL;
    r->body_off = (size_t)off;
    return CURL_SEEKFUNC_OK;
}

static size_t write_cb(char *data, size_t size, size_t nmemb, void *arg)
{
    struct req *r = arg;
    size_t n = size * nmemb;
    long status = 0;
    curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
    bool success = status >= 200 && status < 300;

    if (r->range_buf && success) {
        if (!r->range_started) {
            r->range_started = true;
            r->range_skip = status == 200 ? r->range_off : 0;
        }
        size_t skip = (size_t)NJ_MIN(r->range_skip, (uint64_t)n);
        r->range_skip -= skip;
        size_t take = NJ_MIN(n - skip, r->range_len - r->resp_len);
        memcpy(r->range_buf + r->resp_len, data + skip, take);
        r->resp_len += take;
        if (r->resp_len == r->range_len && skip + take < n) {
            r->range_full = true; /* a 200 with more: we have enough */
            return 0;
        }
        return n;
    }
    size_t max = success ? r->resp_max : ERROR_BODY_MAX;
    if (n > max - r->resp_len) {
        if (success) {
            r->too_big = true;
            return 0;
        }
        n = max - r->resp_len; /* an error body: keep its start */
        if (n == 0)
            return size * nmemb;
    }
    if (r->resp_len + n + 1 > r->resp_cap) {
        size_t cap = r->resp_cap ? r->resp_cap : 4096;
        while (cap < r->resp_len + n + 1)
            cap *= 2;
        r->resp = nj_realloc_array(r->resp, cap, 1);
        r->resp_cap = cap;
    }
    memcpy(r->resp + r->resp_len, data, n);
    r->resp_len += n;
    r->resp[r->resp_len] = '\0';
    return size * nmemb;
}

static bool header_is(const char *line, size_t len, const char *name,
                      const char **value, size_t *vlen)
{
    size_t n = strlen(name);
    if (len <= n || line[n] != ':' || strncasecmp(line, name, n) != 0)
        return false;
    const char *v = line + n + 1;
    size_t l = len - n - 1;
    while (l && isspace((unsigned char)*v)) {
        v++;
        l--;
    }
    while (l && isspace((unsigned char)v[l - 1]))
        l--;
    *value = v;
    *vlen = l;
    return true;
}

static size_t header_cb(char *line, size_t size, size_t nmemb, void *arg)
{
    struct req *r = arg;
    size_t len = size * nmemb;
    const char *v;
    size_t vl;
    char tmp[128];

    if (len >= 5 && strncmp(line, "HTTP/", 5) == 0) {
        /* A new response (after 100 Continue, say): forget the last. */
        r->etag[0] = '\0';
        r->have_length = false;
        r->mtime = 0;
    } else if (header_is(line, len, "ETag", &v, &vl)) {
        etag_copy(r->etag, v, vl);
    } else if (header_is(line, len, "Content-Length", &v, &vl)) {
        if (vl < sizeof tmp) {
            memcpy(tmp, v, vl);
            tmp[vl] = '\0';
            uint64_t n;
            if (nj_parse_u64(tmp, &n) == 0) {
                r->content_length = n;
                r->have_length = true;
                long status = 0;
                curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
                bool body = status >= 200 && status < 300 && !r->range_buf &&
                            strcmp(r->method, "HEAD") != 0;
                if (body && n > r->resp_max) {
                    r->too_big = true; /* say so before the download */
                    return 0;
                }
                /* Room for what the server announces, up to a bound:
                 * a claimed size is not trusted with memory. */
                if (body && n < PRESIZE_MAX && n + 1 > r->resp_cap) {
                    r->resp = nj_realloc_array(r->resp, (size_t)n + 1, 1);
                    r->resp_cap = (size_t)n + 1;
                }
            }
        }
    } else if (header_is(line, len, "Last-Modified", &v, &vl)) {
        if (vl < sizeof tmp) {
            memcpy(tmp, v, vl);
            tmp[vl] = '\0';
            time_t t = curl_getdate(tmp, NULL);
            if (t != -1)
                r->mtime = (int64_t)t;
        }
    }
    return len;
}

/* ---- requests --------------------------------------------------------- */

static void req_free(struct req *r)
{
    if (!r)
        return;
    free(r->what);
    free(r->url);
    for (size_t i = 0; i < r->nheaders; i++)
        free(r->headers[i]);
    free(r->owned_body);
    free(r->resp);
    free(r);
}

/* An object's key: not empty (that would name the bucket itself). */
static int key_check(const char *method, const char *key)
{
    if (key && *key)
        return 0;
    nj_error("s3 %s: empty key", method);
    errno = EINVAL;
    return -1;
}

/* A request on key (NULL: the bucket itself) with query (already sorted
 * and encoded, or NULL). */
static struct req *req_new(struct nj_s3 *s3, const char *method,
                           const char *key, const char *query)
{
    struct req *r = nj_calloc(1, sizeof *r);
    r->s3 = s3;
    r->method = method;
    r->what = nj_strdup(key ? key : s3->bucket);
    NJ_CLEANUP_FREE char *path = uri_encode(key ? key : "", true);
    r->url = nj_asprintf("%s/%s%s%s", s3->base, path, query ? "?" : "",
                         query ? query : "");
    r->resp_max = ERROR_BODY_MAX;
    return r;
}

/* Name r for messages by what (taking ownership) instead of its key. */
static void req_name(struct req *r, char *what)
{
    free(r->what);
    r->what = what;
}

static void req_header(struct req *r, char *h)
{
    if (r->nheaders == NJ_ARRAY_SIZE(r->headers))
        abort();
    r->headers[r->nheaders++] = h;
}

/* Set the easy handle up for one attempt.  Called on the I/O thread. */
static int req_setup(struct req *r, struct curl_slist **hdrs)
{
    struct nj_s3 *s3 = r->s3;
    CURL *e = r->easy;
    curl_easy_reset(e);
    r->curl_err[0] = '\0';
    r->body_off = 0;
    r->resp_len = 0;
    r->too_big = r->range_full = r->range_started = false;
    r->etag[0] = '\0';
    r->have_length = false;
    r->mtime = 0;
    r->status = 0;

    char sha[100];
    snprintf(sha, sizeof sha, "x-amz-content-sha256: %s", r->sha256);
    const char *lines[NJ_ARRAY_SIZE(r->headers) + 2];
    size_t nlines = 0;
    lines[nlines++] = sha;
    if (s3->token_header)
        lines[nlines++] = s3->token_header;
    for (size_t i = 0; i < r->nheaders; i++)
        lines[nlines++] = r->headers[i];
    struct curl_slist *h = NULL;
    for (size_t i = 0; i < nlines; i++) {
        struct curl_slist *t = curl_slist_append(h, lines[i]);
        if (!t) {
            curl_slist_free_all(h);
            *hdrs = NULL;
            return -1;
        }
        h = t;
    }
    *hdrs = h;

    long connect = NJ_MIN(s3->timeout, 30u);
    CURLcode c = CURLE_OK;
#define SET(opt, val) \
    do { if (c == CURLE_OK) c = curl_easy_setopt(e, opt, val); } while (0)
    SET(CURLOPT_URL, r->url);
    /* Keys are names, not paths: "a/../b" must not become "b". */
    SET(CURLOPT_PATH_AS_IS, 1L);
    SET(CURLOPT_PROTOCOLS_STR, "http,https");
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_PRIVATE, (void *)r);
    SET(CURLOPT_ERRORBUFFER, r->curl_err);
    SET(CURLOPT_AWS_SIGV4, s3->sigv4);
    SET(CURLOPT_USERNAME, s3->access_key);
    SET(CURLOPT_PASSWORD, s3->secret_key);
    SET(CURLOPT_HTTPHEADER, h);
    SET(CURLOPT_WRITEFUNCTION, write_cb);
    SET(CURLOPT_WRITEDATA, (void *)r);
    SET(CURLOPT_HEADERFUNCTION, header_cb);
    SET(CURLOPT_HEADERDATA, (void *)r);
    SET(CURLOPT_CONNECTTIMEOUT, connect);
    SET(CURLOPT_LOW_SPEED_LIMIT, 1L);
    SET(CURLOPT_LOW_SPEED_TIME, (long)s3->timeout);
    SET(CURLOPT_TCP_KEEPALIVE, 1L);
    if (s3->ca_file)
        SET(CURLOPT_CAINFO, s3->ca_file);
    if (strcmp(r->method, "PUT") == 0) {
        SET(CURLOPT_UPLOAD, 1L);
        SET(CURLOPT_READFUNCTION, read_cb);
        SET(CURLOPT_READDATA, (void *)r);
        SET(CURLOPT_SEEKFUNCTION, seek_cb);
        SET(CURLOPT_SEEKDATA, (void *)r);
        SET(CURLOPT_INFILESIZE_LARGE, (curl_off_t)r->body_len);
    } else if (strcmp(r->method, "POST") == 0) {
        SET(CURLOPT_POST, 1L);
        SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->body_len);
        SET(CURLOPT_POSTFIELDS, (const void *)r->body);
    } else if (strcmp(r->method, "HEAD") == 0) {
        SET(CURLOPT_NOBODY, 1L);
    } else if (strcmp(r->method, "DELETE") == 0) {
        SET(CURLOPT_CUSTOMREQUEST, "DELETE");
    }
#undef SET
    if (c != CURLE_OK) {
        snprintf(r->curl_err, sizeof r->curl_err, "%s",
                 curl_easy_strerror(c));
        return -1;
    }
    return 0;
}

static bool curl_retryable(CURLcode c)
{
    return c == CURLE_COULDNT_CONNECT || c == CURLE_COULDNT_RESOLVE_HOST ||
           c == CURLE_OPERATION_TIMEDOUT || c == CURLE_SEND_ERROR ||
           c == CURLE_RECV_ERROR || c == CURLE_GOT_NOTHING ||
           c == CURLE_PARTIAL_FILE || c == CURLE_SSL_CONNECT_ERROR ||
           c == CURLE_HTTP2 || c == CURLE_HTTP2_STREAM;
}

static const char *http_reason(long status)
{
    switch (status) {
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 412: return "Precondition Failed";
    case 416: return "Range Not Satisfiable";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "";
    }
}

static int http_errno(long status)
{
    if (status == 404)
        return ENOENT;
    if (status == 401 || status == 403)
        return EACCES;
    return EIO;
}

/* ---- the I/O thread --------------------------------------------------- */

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static bool ts_before(const struct timespec *a, const struct timespec *b)
{
    return a->tv_sec < b->tv_sec ||
           (a->tv_sec == b->tv_sec && a->tv_nsec < b->tv_nsec);
}

static long ts_ms_until(const struct timespec *now, const struct timespec *t)
{
    long ms = (long)(t->tv_sec - now->tv_sec) * 1000 +
              (t->tv_nsec - now->tv_nsec) / 1000000;
    return ms < 0 ? 0 : ms + 1;
}

/* A complete request: hand it back.  Called with s3->lock held. */
static void complete_locked(struct nj_s3 *s3, struct req *r)
{
    if (r->async) {
        pthread_mutex_unlock(&s3->lock);
        if (r->rc < 0)
            nj_error("%s", r->msg);
        if (r->done)
            r->done(r->done_arg, r->rc);
        req_free(r);
        pthread_mutex_lock(&s3->lock);
        s3->async_outstanding--;
    } else {
        r->complete = true;
    }
    pthread_cond_broadcast(&s3->cond);
}

static void fail_req(struct req *r, int err, const char *fmt, ...)
    NJ_PRINTF(3, 4);
static void fail_req(struct req *r, int err, const char *fmt, ...)
{
    char why[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    NJ_CLEANUP_FREE char *what = nj_str_escape(r->what);
    snprintf(r->msg, sizeof r->msg, "s3 %s '%s': %s", r->method, what, why);
    r->rc = -1;
    r->err = err;
}

/* Decide on a finished attempt: 0 final (r->rc set), 1 retry. */
static int judge(struct nj_s3 *s3, struct req *r, CURLcode cc)
{
    if (cc == CURLE_WRITE_ERROR && r->too_big) {
        fail_req(r, EFBIG, "object larger than %zu bytes", r->resp_max);
        return 0;
    }
    if (cc != CURLE_OK && !(cc == CURLE_WRITE_ERROR && r->range_full)) {
        const char *text = r->curl_err[0] ? r->curl_err : curl_easy_strerror(cc);
        if (curl_retryable(cc) && r->attempt < s3->retries)
            return 1;
        if (r->attempt)
            fail_req(r, EIO, "%s (after %u attempts)", text, r->attempt + 1);
        else
            fail_req(r, EIO, "%s", text);
        return 0;
    }
    long st = r->status;
    if (st >= 200 && st < 300) {
        r->rc = 0;
        return 0;
    }
    if ((st == 412 && (r->ok_mask & OK_412)) ||
        (st == 404 && (r->ok_mask & OK_404)) ||
        (st == 416 && (r->ok_mask & OK_416))) {
        r->rc = st == 412 ? 1 : 0;
        return 0;
    }
    char code[96];
    error_code(r, code, sizeof code);
    if (st == 409 && (r->ok_mask & OK_409_OWNED) &&
        strcmp(code, "BucketAlreadyOwnedByYou") == 0) {
        r->rc = 0;
        return 0;
    }
    if ((st >= 500 || st == 429) && r->attempt < s3->retries)
        return 1;
    if (!code[0])
        snprintf(code, sizeof code, "%s", http_reason(st));
    char after[48] = "";
    if (r->attempt)
        snprintf(after, sizeof after, " (after %u attempts)", r->attempt + 1);
    fail_req(r, http_errno(st), "%ld%s%s%s", st, code[0] ? " " : "", code,
             after);
    return 0;
}

static void dispatch_locked(struct nj_s3 *s3)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    /* Requests whose backoff is over go to the front of the queue. */
    for (struct req **pp = &s3->backoff; *pp;) {
        struct req *r = *pp;
        if (!ts_before(&now, &r->due)) {
            *pp = r->next;
            r->next = s3->queue_head;
            s3->queue_head = r;
            if (!s3->queue_tail)
                s3->queue_tail = r;
        } else {
            pp = &r->next;
        }
    }
    while (s3->running < s3->max_inflight && s3->queue_head) {
        struct req *r = s3->queue_head;
        s3->queue_head = r->next;
        if (!s3->queue_head)
            s3->queue_tail = NULL;
        r->next = NULL;
        r->easy = s3->npool ? s3->pool[--s3->npool] : curl_easy_init();
        struct curl_slist *h = NULL;
        if (!r->easy) {
            fail_req(r, ENOMEM, "curl_easy_init failed");
            complete_locked(s3, r);
            continue;
        }
        if (req_setup(r, &h) < 0 ||
            curl_multi_add_handle(s3->multi, r->easy) != CURLM_OK) {
            curl_slist_free_all(h);
            fail_req(r, EIO, "request setup: %s",
                     r->curl_err[0] ? r->curl_err : "out of memory");
            s3->pool[s3->npool++] = r->easy;
            r->easy = NULL;
            complete_locked(s3, r);
            continue;
        }
        r->hlist = h; /* lives as long as the transfer */
        s3->running++;
        s3->stats.requests++;
        s3->stats.bytes_sent += r->body_len;
    }
}

/* An attempt finished: judge it with the lock free (it may parse an
 * error body), then retry or complete it under the lock. */
static void finish(struct nj_s3 *s3, struct req *r, CURLcode cc)
{
    curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &r->status);
    curl_multi_remove_handle(s3->multi, r->easy);
    curl_slist_free_all(r->hlist);
    r->hlist = NULL;
    int retry = judge(s3, r, cc);

    pthread_mutex_lock(&s3->lock);
    s3->pool[s3->npool++] = r->easy;
    r->easy = NULL;
    s3->running--;
    s3->stats.bytes_received += r->resp_len;
    if (retry) {
        /* Full jitter: uniform in [0, min(cap, base * 2^attempt)]. */
        uint64_t ceiling = BACKOFF_CAP_MS;
        if (r->attempt < 7)
            ceiling = NJ_MIN((uint64_t)BACKOFF_BASE_MS << r->attempt,
                             (uint64_t)BACKOFF_CAP_MS);
        uint64_t ms = rng_next(&s3->rng) % (ceiling + 1);
        r->attempt++;
        s3->stats.retries++;
        clock_gettime(CLOCK_MONOTONIC, &r->due);
        r->due.tv_sec += (time_t)(ms / 1000);
        r->due.tv_nsec += (long)(ms % 1000) * 1000000;
        if (r->due.tv_nsec >= 1000000000) {
            r->due.tv_sec++;
            r->due.tv_nsec -= 1000000000;
        }
        r->next = s3->backoff;
        s3->backoff = r;
    } else {
        complete_locked(s3, r);
    }
    pthread_mutex_unlock(&s3->lock);
}

static void *io_thread(void *arg)
{
    struct nj_s3 *s3 = arg;
    pthread_mutex_lock(&s3->lock);
    for (;;) {
        dispatch_locked(s3);
        if (s3->stop && !s3->running && !s3->queue_head && !s3->backoff)
            break;
        long wait_ms = 1000;
        if (s3->backoff) {
            struct timespec now;
            clock_gettime(CLOCK_MONOTONIC, &now);
            for (struct req *r = s3->backoff; r; r = r->next)
                wait_ms = NJ_MIN(wait_ms, ts_ms_until(&now, &r->due));
        }
        pthread_mutex_unlock(&s3->lock);

        int still = 0;
        curl_multi_perform(s3->multi, &still);
        struct CURLMsg *m;
        int left;
        bool finished = false;
        while ((m = curl_multi_info_read(s3->multi, &left))) {
            if (m->msg != CURLMSG_DONE)
                continue;
            struct req *r = NULL;
            CURLcode cc = m->data.result;
            curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&r);
            finish(s3, r, cc);
            finished = true;
        }
        pthread_mutex_lock(&s3->lock);
        if (finished)
            continue; /* dispatch what can go now before sleeping */
        if (s3->queue_head && s3->running < s3->max_inflight)
            continue;
        pthread_mutex_unlock(&s3->lock);
        curl_multi_poll(s3->multi, NULL, 0, (int)wait_ms, NULL);
        pthread_mutex_lock(&s3->lock);
    }
    pthread_mutex_unlock(&s3->lock);
    return NULL;
}

static void submit(struct nj_s3 *s3, struct req *r)
{
    pthread_mutex_lock(&s3->lock);
    r->next = NULL;
    if (s3->queue_tail)
        s3->queue_tail->next = r;
    else
        s3->queue_head = r;
    s3->queue_tail = r;
    pthread_mutex_unlock(&s3->lock);
    curl_multi_wakeup(s3->multi);
}

/* Run r and wait for it; the result's error becomes this thread's last
 * error.  Returns r->rc; r stays for the caller to read and free. */
static int run(struct nj_s3 *s3, struct req *r)
{
    if (!r->body)
        r->body = (const unsigned char *)"";
    if (sha256_hex(r->body, r->body_len, r->sha256) < 0)
        return r->rc = -1;
    submit(s3, r);
    pthread_mutex_lock(&s3->lock);
    while (!r->complete)
        pthread_cond_wait(&s3->cond, &s3->lock);
    pthread_mutex_unlock(&s3->lock);
    if (r->rc < 0) {
        nj_error("%s", r->msg);
        errno = r->err;
    }
    return r->rc;
}

/* ---- the client ------------------------------------------------------- */

struct nj_s3 *nj_s3_new(const struct nj_s3_config *c, const char *bucket)
{
    pthread_once(&global_once, global_init);
    if (global_rc != CURLE_OK) {
        nj_error("s3: curl_global_init: %s", curl_easy_strerror(global_rc));
        return NULL;
    }
    if (!c->access_key || !c->secret_key) {
        nj_error("s3: no credentials in the configuration");
        errno = EINVAL;
        return NULL;
    }
    if (!bucket || !*bucket || strpbrk(bucket, "/?#% ")) {
        nj_error("s3: invalid bucket name '%s'", bucket ? bucket : "");
        errno = EINVAL;
        return NULL;
    }
    const char *region = c->region && *c->region ? c->region : "us-east-1";
    struct nj_s3 *s3 = nj_calloc(1, sizeof *s3);
    s3->bucket = nj_strdup(bucket);
    s3->region = nj_strdup(region);
    if (c->endpoint && *c->endpoint) {
        size_t n = strlen(c->endpoint);
        while (n && c->endpoint[n - 1] == '/')
            n--;
        s3->base = nj_asprintf("%.*s/%s", (int)n, c->endpoint, bucket);
    } else if (c->path_style) {
        s3->base = nj_asprintf("https://s3.%s.amazonaws.com/%s", region,
                               bucket);
    } else {
        s3->base = nj_asprintf("https://%s.s3.%s.amazonaws.com", bucket,
                               region);
    }
    s3->sigv4 = nj_asprintf("aws:amz:%s:s3", region);
    s3->access_key = nj_strdup(c->access_key);
    s3->secret_key = nj_strdup(c->secret_key);
    if (c->session_token && *c->session_token)
        s3->token_header = nj_asprintf("x-amz-security-token: %s",
                                       c->session_token);
    s3->ca_file = c->ca_file ? nj_strdup(c->ca_file) : NULL;
    s3->max_inflight = c->max_inflight ? c->max_inflight : 8;
    s3->retries = c->retries;
    s3->timeout = c->timeout ? c->timeout : 60;
    s3->pool = nj_calloc(s3->max_inflight, sizeof *s3->pool);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    s3->rng = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^
              (uint64_t)getpid();
    pthread_mutex_init(&s3->lock, NULL);
    pthread_cond_init(&s3->cond, NULL);
    int e = 0;
    s3->multi = curl_multi_init();
    if (!s3->multi) {
        nj_error("s3: curl_multi_init failed");
        goto fail;
    }
    curl_multi_setopt(s3->multi, CURLMOPT_MAXCONNECTS,
                      (long)s3->max_inflight * 2);
    /* The I/O thread takes no signals: the program's handlers run
     * elsewhere, and a SIGPIPE from a TLS write to a closed connection
     * stays blocked there instead of killing the process. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    e = pthread_create(&s3->thread, NULL, io_thread, s3);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (e) {
        nj_error_errno(e, "s3: create the I/O thread");
        goto fail;
    }
    return s3;

fail:
    if (s3->multi)
        curl_multi_cleanup(s3->multi);
    s3->multi = NULL;
    s3->stop = true;
    pthread_mutex_destroy(&s3->lock);
    pthread_cond_destroy(&s3->cond);
    free(s3->pool);
    free(s3->base);
    free(s3->bucket);
    free(s3->region);
    free(s3->sigv4);
    free(s3->access_key);
    free(s3->secret_key);
    free(s3->token_header);
    free(s3->ca_file);
    free(s3);
    return NULL;
}

void nj_s3_free(struct nj_s3 *s3)
{
    if (!s3)
        return;
    nj_s3_wait(s3);
    pthread_mutex_lock(&s3->lock);
    s3->stop = true;
    pthread_mutex_unlock(&s3->lock);
    curl_multi_wakeup(s3->multi);
    pthread_join(s3->thread, NULL);
    for (size_t i = 0; i < s3->npool; i++)
        curl_easy_cleanup(s3->pool[i]);
    curl_multi_cleanup(s3->multi);
    pthread_mutex_destroy(&s3->lock);
    pthread_cond_destroy(&s3->cond);
    free(s3->pool);
    free(s3->base);
    free(s3->bucket);
    free(s3->region);
    free(s3->sigv4);
    if (s3->secret_key)
        memset(s3->secret_key, 0, strlen(s3->secret_key));
    free(s3->access_key);
    free(s3->secret_key);
    free(s3->token_header);
    free(s3->ca_file);
    free(s3);
}

void nj_s3_stats(struct nj_s3 *s3, struct nj_obj_stats *st)
{
    pthread_mutex_lock(&s3->lock);
    *st = s3->stats;
    pthread_mutex_unlock(&s3->lock);
}

int nj_s3_get(struct nj_s3 *s3, const char *key, size_t max, void **buf,
              size_t *len)
{
    if (key_check("GET", key) < 0)
        return -1;
    struct req *r = req_new(s3, "GET", key, NULL);
    r->resp_max = max;
    int rc = run(s3, r);
    if (rc == 0) {
        if (!r->resp)
            r->resp = nj_calloc(1, 1);
        r->resp[r->resp_len] = '\0'; /* presized, maybe never written */
        *buf = NJ_STEAL(&r->resp);
        *len = r->resp_len;
    }
    req_free(r);
    return rc;
}

ssize_t nj_s3_get_range(struct nj_s3 *s3, const char *key, uint64_t off,
                        void *buf, size_t len)
{
    if (key_check("GET", key) < 0)
        return -1;
    if (len == 0)
        return 0;
    if (len > SSIZE_MAX || !nj_range_ok(off, len, UINT64_MAX)) {
        nj_error("s3 GET '%s': range at %llu of %zu bytes overflows", key,
                 (unsigned long long)off, len);
        errno = EINVAL;
        return -1;
    }
    struct req *r = req_new(s3, "GET", key, NULL);
    req_header(r, nj_asprintf("Range: bytes=%llu-%llu",
                              (unsigned long long)off,
                              (unsigned long long)(off + len - 1)));
    r->ok_mask = OK_416;
    r->range_buf = buf;
    r->range_len = len;
    r->range_off = off;
    int rc = run(s3, r);
    ssize_t n = -1;
    /* 206, or 200 with the whole object (write_cb skipped to off), or 416
     * for a range that starts at or after the end. */
    if (rc == 0)
        n = r->status == 416 ? 0 : (ssize_t)r->resp_len;
    req_free(r);
    return n;
}

static int put_prepare(struct req *r, enum nj_obj_put_mode mode,
                       const char *etag)
{
    switch (mode) {
    case NJ_OBJ_REPLACE:
        break;
    case NJ_OBJ_CREATE:
        req_header(r, nj_strdup("If-None-Match: *"));
        r->ok_mask = OK_412;
        break;
    case NJ_OBJ_IF_MATCH:
        if (!etag || !*etag || strpbrk(etag, "\r\n")) {
            nj_error("s3 PUT '%s': If-Match needs an etag", r->what);
            errno = EINVAL;
            return -1;
        }
        req_header(r, nj_asprintf("If-Match: %s", etag));
        /* S3 answers 404 for If-Match on an absent key: also "not it". */
        r->ok_mask = OK_412 | OK_404;
        break;
    default:
        nj_error("s3 PUT '%s': unknown mode %d", r->what, (int)mode);
        errno = EINVAL;
        return -1;
    }
    return 0;
}

/*
 * A CREATE that failed its precondition only after a retry: the attempt
 * before may have written the object and lost the answer.  The object is
 * ours when its ETag is the MD5 of our body (a single-part upload's ETag
 * is): 0 then, else 1.  When the HEAD fails the answer stays 1, the
 * cautious one for a caller that creates to take a lock.
 */
static int put_was_ours(struct nj_s3 *s3, const char *key, const void *buf,
                        size_t len, char *etag_out)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    char mine[2 * 16 + 1], there[NJ_OBJ_TAG_MAX] = "";
    if (!EVP_Digest(buf ? buf : "", len, md, &mdlen, EVP_md5(), NULL) ||
        mdlen != 16)
        return 1;
    nj_hex_encode(md, 16, mine);
    if (nj_s3_head(s3, key, NULL, NULL, there) != 1 ||
        strcasecmp(there, mine) != 0)
        return 1;
    if (etag_out)
        memcpy(etag_out, there, sizeof there);
    return 0;
}

int nj_s3_put(struct nj_s3 *s3, const char *key, const void *buf, size_t len,
              enum nj_obj_put_mode mode, const char *etag, char *etag_out)
{
    if (key_check("PUT", key) < 0)
        return -1;
    struct req *r = req_new(s3, "PUT", key, NULL);
    r->body = buf;
    r->body_len = len;
    if (put_prepare(r, mode, etag) < 0) {
        req_free(r);
        return -1;
    }
    int rc = run(s3, r);
    if (rc == 0 && r->status == 404)
        rc = 1;
    if (rc == 0 && etag_out)
        memcpy(etag_out, r->etag, sizeof r->etag);
    bool retried = r->attempt > 0;
    req_free(r);
    if (rc == 1 && mode == NJ_OBJ_CREATE && retried)
        rc = put_was_ours(s3, key, buf, len, etag_out);
    return rc;
}

int nj_s3_put_async(struct nj_s3 *s3, const char *key, const void *buf,
                    size_t len, enum nj_obj_put_mode mode,
                    void (*done)(void *arg, int rc), void *arg)
{
    if (key_check("PUT", key) < 0)
        return -1;
    if (mode != NJ_OBJ_REPLACE && mode != NJ_OBJ_CREATE) {
        nj_error("s3 PUT '%s': asynchronous puts are REPLACE or CREATE", key);
        errno = EINVAL;
        return -1;
    }
    struct req *r = req_new(s3, "PUT", key, NULL);
    if (put_prepare(r, mode, NULL) < 0) {
        req_free(r);
        return -1;
    }
    r->async = true;
    r->done = done;
    r->done_arg = arg;
    r->body_len = len;
    if (sha256_hex(buf ? buf : "", len, r->sha256) < 0) {
        req_free(r);
        return -1;
    }
    pthread_mutex_lock(&s3->lock);
    while (s3->async_outstanding >= s3->max_inflight)
        pthread_cond_wait(&s3->cond, &s3->lock);
    s3->async_outstanding++;
    pthread_mutex_unlock(&s3->lock);
    r->owned_body = nj_malloc(len ? len : 1);
    if (len)
        memcpy(r->owned_body, buf, len);
    r->body = r->owned_body;
    submit(s3, r);
    return 0;
}

void nj_s3_wait(struct nj_s3 *s3)
{
    pthread_mutex_lock(&s3->lock);
    while (s3->async_outstanding)
        pthread_cond_wait(&s3->cond, &s3->lock);
    pthread_mutex_unlock(&s3->lock);
}

int nj_s3_head(struct nj_s3 *s3, const char *key, uint64_t *size,
               int64_t *mtime, char *etag)
{
    if (key_check("HEAD", key) < 0)
        return -1;
    struct req *r = req_new(s3, "HEAD", key, NULL);
    r->ok_mask = OK_404;
    int rc = run(s3, r);
    if (rc == 0 && r->status == 404) {
        rc = 0;
    } else if (rc == 0) {
        rc = 1;
        if (size)
            *size = r->content_length;
        if (mtime)
            *mtime = r->mtime;
        if (etag)
            memcpy(etag, r->etag, sizeof r->etag);
    }
    req_free(r);
    return rc;
}

int nj_s3_delete(struct nj_s3 *s3, const char *key)
{
    if (key_check("DELETE", key) < 0)
        return -1;
    struct req *r = req_new(s3, "DELETE", key, NULL);
    r->ok_mask = OK_404;
    int rc = run(s3, r);
    req_free(r);
    return rc < 0 ? -1 : 0;
}

static int md5_base64(const void *buf, size_t len, char *out, size_t size)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    if (size < 25 || !EVP_Digest(buf, len, md, &mdlen, EVP_md5(), NULL))
        return nj_error("s3: MD5 failed");
    EVP_EncodeBlock((unsigned char *)out, md, (int)mdlen);
    return 0;
}

/* The first <Error> of a DeleteObjects answer other than NoSuchKey. */
static int delete_result(struct req *r)
{
    xmlDocPtr doc = xml_parse(r->resp, r->resp_len);
    if (!doc) {
        fail_req(r, EIO, "unreadable DeleteObjects answer");
        return -1;
    }
    int rc = 0;
    xmlNode *root = xmlDocGetRootElement(doc);
    for (xmlNode *n = root ? root->children : NULL; n && rc == 0; n = n->next) {
        if (!xml_is(n, "Error"))
            continue;
        NJ_CLEANUP_FREE char *key = xml_child_text(n, "Key");
        NJ_CLEANUP_FREE char *code = xml_child_text(n, "Code");
        if (code && strcmp(code, "NoSuchKey") == 0)
            continue;
        req_name(r, nj_strdup(key ? key : "?"));
        fail_req(r, EIO, "DeleteObjects refused: %s", code ? code : "?");
        rc = -1;
    }
    xmlFreeDoc(doc);
    return rc;
}

int nj_s3_delete_many(struct nj_s3 *s3, const char *const *keys, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (key_check("POST ?delete", keys[i]) < 0)
            return -1;
    for (size_t start = 0; start < n; start += 1000) {
        size_t end = NJ_MIN(n, start + 1000);
        struct buf b = {0};
        buf_add(&b, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>"
                    "<Delete><Quiet>true</Quiet>");
        for (size_t i = start; i < end; i++) {
            NJ_CLEANUP_FREE char *esc = xml_escape(keys[i]);
            buf_add(&b, "<Object><Key>");
            buf_add(&b, esc);
            buf_add(&b, "</Key></Object>");
        }
        buf_add(&b, "</Delete>");
        char *body = b.p;
        size_t blen = b.len;
        char md5[32];
        struct req *r = req_new(s3, "POST", NULL, "delete=");
        req_name(r, nj_strdup("?delete"));
        r->owned_body = (unsigned char *)body;
        r->body = r->owned_body;
        r->body_len = blen;
        r->resp_max = 16u << 20;
        if (md5_base64(body, blen, md5, sizeof md5) < 0) {
            req_free(r);
            return -1;
        }
        req_header(r, nj_asprintf("Content-MD5: %s", md5));
        req_header(r, nj_strdup("Content-Type: application/xml"));
        int rc = run(s3, r);
        if (rc == 0 && delete_result(r) < 0) {
            nj_error("%s", r->msg);
            errno = r->err;
            rc = -1;
        }
        req_free(r);
        if (rc < 0)
            return -1;
    }
    return 0;
}

/* "2024-05-01T12:34:56.000Z" as Unix seconds; -1 when unreadable. */
static int64_t parse_iso8601(const char *s)
{
    struct tm tm = {0};
    const char *end = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
    if (!end)
        return -1;
    return (int64_t)timegm(&tm);
}

static int list_parse(struct req *r, const char *prefix, char **token,
                      struct nj_obj_page *page)
{
    xmlDocPtr doc = xml_parse(r->resp, r->resp_len);
    xmlNode *root = doc ? xmlDocGetRootElement(doc) : NULL;
    if (!root || !xml_is(root, "ListBucketResult")) {
        xmlFreeDoc(doc);
        fail_req(r, EIO, "unreadable ListObjectsV2 answer");
        return -1;
    }
    size_t prefix_len = strlen(prefix);
    size_t ocap = 0, pcap = 0;
    bool truncated = false;
    char *next = NULL;
    int rc = 0;
    for (xmlNode *n = root->children; n && rc == 0; n = n->next) {
        if (xml_is(n, "Contents")) {
            char *key = xml_child_text(n, "Key");
            NJ_CLEANUP_FREE char *size = xml_child_text(n, "Size");
            NJ_CLEANUP_FREE char *lm = xml_child_text(n, "LastModified");
            uint64_t sz = 0;
            if (!key || strncmp(key, prefix, prefix_len) != 0 || !size ||
                nj_parse_u64(size, &sz) < 0) {
                fail_req(r, EIO, "listing has a bad entry '%s'",
                         key ? key : "?");
                free(key);
                rc = -1;
                break;
            }
            if (page->nobjects == ocap) {
                ocap = ocap ? 2 * ocap : 64;
                page->objects = nj_realloc_array(page->objects, ocap,
                                                 sizeof *page->objects);
            }
            struct nj_obj_entry *o = &page->objects[page->nobjects++];
            o->key = key;
            o->size = sz;
            o->mtime = lm ? parse_iso8601(lm) : -1;
        } else if (xml_is(n, "CommonPrefixes")) {
            char *p = xml_child_text(n, "Prefix");
            if (!p || strncmp(p, prefix, prefix_len) != 0) {
                fail_req(r, EIO, "listing has a bad common prefix '%s'",
                         p ? p : "?");
                free(p);
                rc = -1;
                break;
            }
            if (page->nprefixes == pcap) {
                pcap = pcap ? 2 * pcap : 16;
                page->prefixes = nj_realloc_array(page->prefixes, pcap,
                                                  sizeof *page->prefixes);
            }
            page->prefixes[page->nprefixes++] = p;
        } else if (xml_is(n, "IsTruncated")) {
            NJ_CLEANUP_FREE char *t = xml_text(n);
            truncated = t && strcmp(t, "true") == 0;
        } else if (xml_is(n, "NextContinuationToken")) {
            free(next);
            next = xml_text(n);
        }
    }
    xmlFreeDoc(doc);
    if (rc == 0 && truncated && (!next || !*next)) {
        fail_req(r, EIO, "truncated listing without a continuation token");
        rc = -1;
    }
    free(*token);
    *token = NULL;
    if (rc == 0 && truncated)
        *token = NJ_STEAL(&next);
    free(next);
    return rc;
}

int nj_s3_list(struct nj_s3 *s3, const char *prefix, const char *delimiter,
               char **token, struct nj_obj_page *page)
{
    memset(page, 0, sizeof *page);
    if (!prefix)
        prefix = "";
    /* Parameters sorted by name, values encoded: libcurl signs them so. */
    struct buf q = {0};
    if (*token) {
        NJ_CLEANUP_FREE char *t = uri_encode(*token, false);
        buf_add(&q, "continuation-token=");
        buf_add(&q, t);
        buf_add(&q, "&");
    }
    if (delimiter && *delimiter) {
        NJ_CLEANUP_FREE char *d = uri_encode(delimiter, false);
        buf_add(&q, "delimiter=");
        buf_add(&q, d);
        buf_add(&q, "&");
    }
    NJ_CLEANUP_FREE char *p = uri_encode(prefix, false);
    buf_add(&q, "list-type=2&prefix=");
    buf_add(&q, p);
    struct req *r = req_new(s3, "GET", NULL, q.p);
    free(q.p);
    req_name(r, nj_asprintf("?list prefix=%s", prefix));
    r->resp_max = 64u << 20;
    int rc = run(s3, r);
    if (rc == 0 && list_parse(r, prefix, token, page) < 0) {
        nj_error("%s", r->msg);
        errno = r->err;
        nj_obj_page_clear(page);
        rc = -1;
    }
    req_free(r);
    return rc;
}

int nj_s3_bucket_create(struct nj_s3 *s3)
{
    struct req *r = req_new(s3, "PUT", NULL, NULL);
    r->ok_mask = OK_409_OWNED;
    if (strcmp(s3->region, "us-east-1") != 0) {
        char *body = nj_asprintf(
            "<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/"
            "2006-03-01/\"><LocationConstraint>%s</LocationConstraint>"
            "</CreateBucketConfiguration>", s3->region);
        r->owned_body = (unsigned char *)body;
        r->body = r->owned_body;
        r->body_len = strlen(body);
    }
    int rc = run(s3, r);
    req_free(r);
    return rc;
}

/* ---- configuration ---------------------------------------------------- */

static void take(char **field, const char *value)
{
    if (!*field && value && *value)
        *field = nj_strdup(value);
}

static const char *conf_get(const char *const *conf, const char *key)
{
    for (size_t i = 0; conf && conf[i] && conf[i + 1]; i += 2)
        if (strcmp(conf[i], key) == 0)
            return conf[i + 1];
    return NULL;
}

/* Read the credentials file at path into a new string; *text NULL when
 * there is none.  Only a regular file is read: a FIFO or device would
 * block or never end. */
static int credentials_read(const char *path, char **text)
{
    *text = NULL;
    NJ_CLEANUP_CLOSE int fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK |
                                   O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        if (errno == ENOENT)
            return 0;
        int e = errno;
        nj_error_errno(e, "s3: open credentials file '%s'", path);
        errno = e;
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int e = errno;
        nj_error_errno(e, "s3: stat credentials file '%s'", path);
        errno = e;
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        nj_error("s3: credentials file '%s' is not a regular file", path);
        errno = EINVAL;
        return -1;
    }
    if (st.st_size > (off_t)CREDENTIALS_MAX) {
        nj_error("s3: credentials file '%s' is larger than %u bytes", path,
                 CREDENTIALS_MAX);
        errno = EFBIG;
        return -1;
    }
    size_t cap = (size_t)st.st_size + 1, len = 0;
    char *buf = nj_malloc(cap);
    for (;;) {
        if (len + 1 >= cap) {
            if (cap > CREDENTIALS_MAX) {
                free(buf);
                nj_error("s3: credentials file '%s' is larger than %u bytes",
                         path, CREDENTIALS_MAX);
                errno = EFBIG;
                return -1;
            }
            cap *= 2;
            buf = nj_realloc_array(buf, cap, 1);
        }
        ssize_t n = read(fd, buf + len, cap - 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = errno;
            free(buf);
            nj_error_errno(e, "s3: read credentials file '%s'", path);
            errno = e;
            return -1;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    buf[len] = '\0';
    *text = buf;
    return 0;
}

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1]))
        s[--n] = '\0';
    return s;
}

/* Fill what is unset in c from the profile's section of text. */
static void credentials_apply(char *text, const char *profile,
                              struct nj_s3_config *c, bool want_keys)
{
    bool in = false;
    for (char *save = NULL, *line = strtok_r(text, "\n", &save); line;
         line = strtok_r(NULL, "\n", &save)) {
        char *l = trim(line);
        if (*l == '#' || *l == ';' || *l == '\0')
            continue;
        if (*l == '[') {
            char *end = strchr(l, ']');
            if (end) {
                *end = '\0';
                in = strcmp(trim(l + 1), profile) == 0;
            }
            continue;
        }
        char *eq = strchr(l, '=');
        if (!in || !eq)
            continue;
        *eq = '\0';
        char *k = trim(l), *v = trim(eq + 1);
        if (want_keys && strcmp(k, "aws_access_key_id") == 0)
            take(&c->access_key, v);
        else if (want_keys && strcmp(k, "aws_secret_access_key") == 0)
            take(&c->secret_key, v);
        else if (want_keys && strcmp(k, "aws_session_token") == 0)
            take(&c->session_token, v);
        else if (strcmp(k, "region") == 0)
            take(&c->region, v);
        else if (strcmp(k, "endpoint_url") == 0)
            take(&c->endpoint, v);
        else if (strcmp(k, "ca_bundle") == 0)
            take(&c->ca_file, v);
    }
}

int nj_s3_config_load(struct nj_s3_config *c, const char *const *conf)
{
    memset(c, 0, sizeof *c);
    /* The key, secret and token travel together: from the first source
     * that has an access key, so a token never pairs with another key. */
    take(&c->endpoint, getenv("AWS_ENDPOINT_URL"));
    take(&c->region, getenv("AWS_REGION"));
    take(&c->region, getenv("AWS_DEFAULT_REGION"));
    take(&c->ca_file, getenv("AWS_CA_BUNDLE"));
    if (getenv("AWS_ACCESS_KEY_ID") && *getenv("AWS_ACCESS_KEY_ID")) {
        take(&c->access_key, getenv("AWS_ACCESS_KEY_ID"));
        take(&c->secret_key, getenv("AWS_SECRET_ACCESS_KEY"));
        take(&c->session_token, getenv("AWS_SESSION_TOKEN"));
    }

    take(&c->endpoint, conf_get(conf, "s3-endpoint"));
    take(&c->region, conf_get(conf, "s3-region"));
    take(&c->ca_file, conf_get(conf, "s3-ca-file"));
    const char *ck = conf_get(conf, "s3-access-key-id");
    if (!c->access_key && ck && *ck) {
        take(&c->access_key, ck);
        take(&c->secret_key, conf_get(conf, "s3-secret-access-key"));
        take(&c->session_token, conf_get(conf, "s3-session-token"));
    }

    if (!c->access_key || !c->region || !c->endpoint) {
        const char *path = getenv("AWS_SHARED_CREDENTIALS_FILE");
        NJ_CLEANUP_FREE char *home_path = NULL;
        if (!path || !*path) {
            const char *home = getenv("HOME");
            if (home && *home)
                path = home_path = nj_asprintf("%s/.aws/credentials", home);
        }
        const char *profile = getenv("AWS_PROFILE");
        if (!profile || !*profile)
            profile = "default";
        NJ_CLEANUP_FREE char *text = NULL;
        if (path && credentials_read(path, &text) < 0) {
            int e = errno;
            nj_s3_config_clear(c);
            errno = e;
            return -1;
        }
        if (text)
            credentials_apply(text, profile, c, !c->access_key);
    }

    if (!c->access_key || !c->secret_key) {
        nj_s3_config_clear(c);
        nj_error("s3: no credentials: set AWS_ACCESS_KEY_ID and "
                 "AWS_SECRET_ACCESS_KEY or a profile in ~/.aws/credentials");
        errno = ENOENT;
        return -1;
    }
    take(&c->region, "us-east-1");
    c->path_style = c->endpoint != NULL;
    c->max_inflight = 8;
    c->retries = 5;
    c->timeout = 60;
    return 0;
}

void nj_s3_config_clear(struct nj_s3_config *c)
{
    if (!c)
        return;
    if (c->secret_key)
        memset(c->secret_key, 0, strlen(c->secret_key));
    free(c->endpoint);
    free(c->region);
    free(c->access_key);
    free(c->secret_key);
    free(c->session_token);
    free(c->ca_file);
    memset(c, 0, sizeof *c);
}
