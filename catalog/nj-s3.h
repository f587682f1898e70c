/*
 * nj-s3.h: a small S3 client (libcurl, SigV4), the transport of the S3
 * store backend (catalog/store-obj.c).
 *
 * Every request goes through one curl multi handle driven by a private I/O
 * thread, with at most max_inflight requests on the wire; callers block in
 * the synchronous calls, or queue puts with nj_s3_put_async() and collect
 * them with nj_s3_wait().  Every call may be made from several threads at
 * once.
 *
 * Signing: AWS SigV4 through CURLOPT_AWS_SIGV4, with x-amz-content-sha256
 * set to the real SHA-256 of the payload (the hash of "" for bodiless
 * requests), and query strings built sorted and percent-encoded here,
 * because libcurl signs them as given.  Addressing is path-style
 * (ENDPOINT/BUCKET/KEY) for a custom endpoint and virtual-hosted
 * (BUCKET.s3.REGION.amazonaws.com/KEY) for AWS itself, unless
 * path_style forces the former.
 *
 * Retries: 5xx, 429, 503 SlowDown, connection failures and timeouts are
 * retried with exponential backoff and full jitter (base 100 ms, cap 10 s,
 * retries times); any other 4xx fails at once.  A precondition failure
 * (412 on If-None-Match / If-Match) is not an error: it is a result.
 * Every request has a connect timeout and a low-speed limit, because a
 * full OSD makes writes block rather than fail.
 *
 * Errors: -1 with the last error set (nj-util.h), one line naming the
 * method, the key and the S3 error code or curl's text, e.g.
 * "s3 PUT 'chunks/ab/ab12...': 403 SignatureDoesNotMatch"; errno is
 * ENOENT for 404, EACCES for 401/403, EIO otherwise.
 */
#ifndef NJ_S3_H
#define NJ_S3_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "nj-object.h"

struct nj_s3_config {
    char *endpoint;      /* "http://127.0.0.1:7480"; NULL: AWS for region */
    char *region;        /* default "us-east-1" */
    char *access_key;
    char *secret_key;
    char *session_token; /* optional */
    char *ca_file;       /* optional; NULL: the system CA store */
    bool path_style;     /* forced on when endpoint is set */
    unsigned max_inflight; /* default 8; 0 in nj_s3_new: 8 */
    unsigned retries;      /* default 5; 0 in nj_s3_new: no retry */
    unsigned timeout;      /* seconds without progress; default 60; 0: 60 */
};

/*
 * Fill c the AWS way, each key from the first source that has it:
 *  1. the environment: AWS_ENDPOINT_URL, AWS_REGION (or
 *     AWS_DEFAULT_REGION), AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
 *     AWS_SESSION_TOKEN, AWS_CA_BUNDLE;
 *  2. conf, pairs from nightjar's config file (keys "s3-endpoint",
 *     "s3-region", "s3-access-key-id", "s3-secret-access-key",
 *     "s3-session-token", "s3-ca-file"); NULL-terminated array of
 *     alternating key, value; may be NULL;
 *  3. the profile AWS_PROFILE (default "default") of
 *     AWS_SHARED_CREDENTIALS_FILE (default ~/.aws/credentials):
 *     aws_access_key_id, aws_secret_access_key, aws_session_token, and
 *     region / endpoint_url / ca_bundle when present there.
 * The access key, secret and session token come together from the first
 * source that has an access key (a token never pairs with another
 * source's key).  The credentials file is read only when it is a regular
 * file, not through a symbolic link (no FIFO waited on); one that is not
 * is an error, a missing one is not.  Fails with one line when no access
 * key or secret is found ("s3: no credentials: set AWS_ACCESS_KEY_ID and
 * AWS_SECRET_ACCESS_KEY or a profile in ~/.aws/credentials").
 */
int nj_s3_config_load(struct nj_s3_config *c, const char *const *conf);
void nj_s3_config_clear(struct nj_s3_config *c);

struct nj_s3;

/* A client for one bucket.  Copies what it needs from c. */
struct nj_s3 *nj_s3_new(const struct nj_s3_config *c, const char *bucket);
void nj_s3_free(struct nj_s3 *s3);

/* Counters since nj_s3_new (for benchmarks and the closing --json), as
 * nj-object.h defines them; requests counts every HTTP attempt. */
void nj_s3_stats(struct nj_s3 *s3, struct nj_obj_stats *st);

/* GET a whole object of at most max bytes into a new buffer (NUL added
 * after the end, not counted in *len).  -1 with errno ENOENT when absent;
 * EFBIG when larger than max.  Every call taking a key refuses an empty
 * one (EINVAL): it would name the bucket. */
int nj_s3_get(struct nj_s3 *s3, const char *key, size_t max, void **buf,
              size_t *len);
/* GET bytes [off, off+len) into buf; returns the bytes read (less than len
 * only at the object's end), or -1 (ENOENT when absent). */
ssize_t nj_s3_get_range(struct nj_s3 *s3, const char *key, uint64_t off,
                        void *buf, size_t len);

/* PUT buf as key.  0 written (etag_out, when not NULL, receives the new
 * ETag unquoted, at most NJ_OBJ_TAG_MAX bytes with its NUL); 1 when the
 * precondition failed (CREATE: the key exists; IF_MATCH: its ETag is not
 * etag, or it is absent); -1 on error.  A CREATE that fails its
 * precondition only on a retry (an earlier attempt may have written and
 * lost the answer) is 0 when the object's ETag is the MD5 of buf: ours. */
int nj_s3_put(struct nj_s3 *s3, const char *key, const void *buf, size_t len,
              enum nj_obj_put_mode mode, const char *etag, char *etag_out);

/* Queue a PUT (REPLACE or CREATE) of a private copy of buf; blocks while
 * max_inflight asynchronous puts are queued or running (so at most
 * max_inflight copies are alive).  The result is reported to
 * done(arg, rc) from the I/O thread (rc as nj_s3_put returns, with the
 * last error of that thread set when -1; done must not call back into
 * nj_s3).  done may be NULL.  Returns 0 queued, -1 when it could not be. */
int nj_s3_put_async(struct nj_s3 *s3, const char *key, const void *buf,
                    size_t len, enum nj_obj_put_mode mode,
                    void (*done)(void *arg, int rc), void *arg);
/* Wait until every asynchronous put has completed, including those that
 * other threads queue meanwhile. */
void nj_s3_wait(struct nj_s3 *s3);

/* HEAD: 1 present (size, mtime as Unix seconds, etag unquoted filled where
 * not NULL), 0 absent, -1 error. */
int nj_s3_head(struct nj_s3 *s3, const char *key, uint64_t *size,
               int64_t *mtime, char *etag);

/* DELETE one key; deleting an absent key succeeds.  0 or -1. */
int nj_s3_delete(struct nj_s3 *s3, const char *key);
/* DeleteObjects (POST ?delete, Content-MD5 set), in batches of at most
 * 1000; 0 when every key is gone (absent counts as gone), -1 naming the
 * first key the server refused. */
int nj_s3_delete_many(struct nj_s3 *s3, const char *const *keys, size_t n);

/* ListObjectsV2, one page.  prefix may be ""; delimiter may be NULL.
 * *token: NULL for the first page, then the continuation token returned
 * (freed and replaced here; NULL after the last page).  Entries are
 * sorted by key, as S3 returns them; keys are checked to begin with
 * prefix (a server that says otherwise is an error).  Returns 0 with the
 * page (possibly empty), -1 on error: failure and an empty listing are
 * distinct because callers decide deletions on listings. */
int nj_s3_list(struct nj_s3 *s3, const char *prefix, const char *delimiter,
               char **token, struct nj_obj_page *page);

/* Create the bucket (PUT /BUCKET); 0 created or already ours, -1. */
int nj_s3_bucket_create(struct nj_s3 *s3);

#endif
