/*
 * test-key: key files (catalog/nj-key.h).  A key round-trips through a
 * file in the clear and wrapped with a passphrase; a wrong passphrase, a
 * missing or truncated file, every single-byte change of a wrapped file,
 * a downgraded scrypt cost and a swapped fingerprint fail with one line
 * and never yield another key; an existing file is never overwritten; a
 * key in the clear that others may read, a FIFO and an oversized file are
 * refused (the FIFO without blocking); rewrapping keeps the key and its
 * fingerprint and retires the old passphrase.
 */
#include "nj-test.h"
#include "nj-key.h"
#include "nj-util.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Cheap scrypt for the test (the default costs a tenth of a second). */
static const struct nj_key_kdf fast = { .n = 1024, .r = 8, .p = 1 };

static char *slurp(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY);
    REQUIRE(fd >= 0);
    char *buf = nj_malloc(8192);
    ssize_t n = read(fd, buf, 8191);
    REQUIRE(n >= 0);
    close(fd);
    buf[n] = '\0';
    *len = (size_t)n;
    return buf;
}

static void spill(const char *path, const char *buf, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    REQUIRE(fd >= 0);
    REQUIRE(write(fd, buf, len) == (ssize_t)len);
    close(fd);
}

static bool same_key(const struct nj_key *a, const struct nj_key *b)
{
    return memcmp(a->master, b->master, NJ_KEY_LEN) == 0 &&
           strcmp(a->fingerprint, b->fingerprint) == 0;
}

/* Loading path must fail with want in the message. */
static void refused(const char *path, const char *pass, const char *want)
{
    struct nj_key k;
    nj_error("%s", "");
    int r = nj_key_load(path, pass, &k);
    CHECK(r < 0);
    if (r == 0 || !strstr(nj_error_get(), want)) {
        fprintf(stderr, "load '%s': %s (rc %d), wanted '%s'\n", path,
                nj_error_get(), r, want);
        nj_test_failures++;
    }
    CHECK(strchr(nj_error_get(), '\n') == NULL);
}

int main(void)
{
    char *dir = nj_test_tmpdir("key");
    NJ_CLEANUP_FREE char *plain = nj_asprintf("%s/plain.key", dir);
    NJ_CLEANUP_FREE char *wrapped = nj_asprintf("%s/wrapped.key", dir);
    NJ_CLEANUP_FREE char *work = nj_asprintf("%s/work.key", dir);

    /* Round trips; files 0600; the fingerprint is the key's. */
    struct nj_key kp, kw, got;
    REQUIRE(nj_key_create(plain, NULL, &fast, &kp) == 0);
    REQUIRE(nj_key_create(wrapped, "pass word", &fast, &kw) == 0);
    CHECK(!same_key(&kp, &kw));
    struct stat st;
    REQUIRE(stat(plain, &st) == 0);
    CHECK((st.st_mode & 0777) == 0600);
    REQUIRE(stat(wrapped, &st) == 0);
    CHECK((st.st_mode & 0777) == 0600);
    CHECK(nj_key_load(plain, NULL, &got) == 0 && same_key(&got, &kp));
    CHECK(nj_key_load(wrapped, "pass word", &got) == 0 && same_key(&got, &kw));
    struct nj_key_info in;
    CHECK(nj_key_info(wrapped, &in) == 0 && in.wrapped &&
          in.kdf.n == fast.n && in.kdf.r == fast.r && in.kdf.p == fast.p &&
          strcmp(in.fingerprint, kw.fingerprint) == 0);
    CHECK(nj_key_info(plain, &in) == 0 && !in.wrapped);
    /* The key itself is not in the wrapped file. */
    size_t len = 0;
    NJ_CLEANUP_FREE char *text = slurp(wrapped, &len);
    char hex[2 * NJ_KEY_LEN + 1];
    for (int i = 0; i < NJ_KEY_LEN; i++)
        snprintf(hex + 2 * i, 3, "%02x", kw.master[i]);
    CHECK(strstr(text, hex) == NULL);

    /* Wrong or missing passphrase. */
    refused(wrapped, "pass worD", "wrong passphrase");
    refused(wrapped, NULL, "protected by a passphrase");
    NJ_CLEANUP_FREE char *missing = nj_asprintf("%s/missing.key", dir);
    refused(missing, NULL, "No such file");

    /* Never overwritten. */
    struct nj_key k3;
    nj_error("%s", "");
    CHECK(nj_key_create(wrapped, NULL, &fast, &k3) < 0);
    CHECK(strstr(nj_error_get(), "never overwritten") != NULL);
    CHECK(nj_key_load(wrapped, "pass word", &got) == 0 && same_key(&got, &kw));

    /* Every truncation, and every byte changed, of the wrapped file: an
     * error, or (a change JSON does not see, such as white space) the same
     * key; never another one. */
    unsigned errors = 0, same = 0, cut = 0;
    for (size_t n = 0; n < len; n++) {
        spill(work, text, n);
        if (nj_key_load(work, "pass word", &got) < 0)
            cut++;
        else /* only the final newline dropped */
            CHECK(strspn(text + n, " \n") == len - n && same_key(&got, &kw));
    }
    CHECK(cut == len - 1);
    for (size_t i = 0; i < len; i++) {
        char *t = nj_strdup(text);
        t[i] = (char)(t[i] == 'a' ? 'b' : t[i] == '0' ? '1' : t[i] ^ 0x01);
        spill(work, t, len);
        free(t);
        if (nj_key_load(work, "pass word", &got) < 0)
            errors++;
        else if (same_key(&got, &kw))
            same++;
        else {
            fprintf(stderr, "byte %zu changed: another key loaded\n", i);
            nj_test_failures++;
        }
    }
    printf("wrapped file of %zu bytes: %u truncations and %u one-byte "
           "changes refused, %u changes harmless\n", len, cut, errors, same);
    CHECK(errors + same == len && errors >= len - 16);

    /* A downgraded cost or a swapped fingerprint: bound into the tag. */
    char *t = nj_strdup(text);
    char *p = strstr(t, "\"n\":1024");
    REQUIRE(p);
    memcpy(p, "\"n\":512 ", 8);
    spill(work, t, strlen(t));
    refused(work, "pass word", "wrong passphrase, or the file was changed");
    free(t);
    t = nj_strdup(text);
    p = strstr(t, kw.fingerprint);
    REQUIRE(p);
    memcpy(p, kp.fingerprint, NJ_KEY_FPR_HEX);
    spill(work, t, strlen(t));
    refused(work, "pass word", "wrong passphrase, or the file was changed");
    free(t);
    /* A plain key whose fingerprint is not its own. */
    size_t plen = 0;
    NJ_CLEANUP_FREE char *ptext = slurp(plain, &plen);
    t = nj_strdup(ptext);
    p = strstr(t, kp.fingerprint);
    REQUIRE(p);
    memcpy(p, kw.fingerprint, NJ_KEY_FPR_HEX);
    spill(work, t, strlen(t));
    refused(work, NULL, "does not match its fingerprint");
    free(t);

    /* Refused outright: readable by others, a FIFO, too large, a dir. */
    REQUIRE(chmod(plain, 0640) == 0);
    refused(plain, NULL, "others may read it");
    REQUIRE(chmod(plain, 0600) == 0);
    NJ_CLEANUP_FREE char *fifo = nj_asprintf("%s/fifo.key", dir);
    REQUIRE(mkfifo(fifo, 0600) == 0);
    refused(fifo, NULL, "not a regular file");
    char *big = nj_calloc(1, 10000);
    memset(big, ' ', 9999);
    spill(work, big, 9999);
    free(big);
    refused(work, NULL, "too large");
    refused(dir, NULL, "not a regular file");

    /* Rewrap: same key and fingerprint, new passphrase, old one retired;
     * then in the clear. */
    spill(work, text, len);
    REQUIRE(chmod(work, 0600) == 0);
    REQUIRE(nj_key_load(work, "pass word", &got) == 0);
    CHECK(nj_key_rewrap(work, &got, "other", &fast) == 0);
    refused(work, "pass word", "wrong passphrase");
    CHECK(nj_key_load(work, "other", &got) == 0 && same_key(&got, &kw));
    CHECK(nj_key_rewrap(work, &got, NULL, &fast) == 0);
    CHECK(nj_key_load(work, NULL, &got) == 0 && same_key(&got, &kw));
    REQUIRE(stat(work, &st) == 0);
    CHECK((st.st_mode & 0777) == 0600);

    nj_key_clear(&got);
    nj_test_rmtree(dir);
    free(dir);
    return nj_test_done("test-key");
}
