/*
 * test_fileio.c - engine/fileio: read/write/copy round trips (a copy larger
 * than one 1 MiB chunk), the size bound, refusal of non-regular sources
 * (a directory, a FIFO without a writer: refused, not waited on), and the
 * crash-safety promise: a failed write or copy leaves neither the final
 * name nor "<path>.tmp" behind (a write past RLIMIT_FSIZE fails mid-way).
 */
#include "base/dsv4.h"
#include "engine/io/fileio.h"
#include "tests/test.h"

#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[4096];

static const char *at(const char *name, char *buf)
{
    snprintf(buf, 4200, "%s/%s", dir, name);
    return buf;
}

static bool exists(const char *path)
{
    return access(path, F_OK) == 0;
}

static void test_round_trips(void)
{
    char p[4200], q[4200], t[4300], *got = NULL;
    size_t len = 0, big = (3u << 20) + 12345;
    unsigned char *data = malloc(big);

    CHECK(data != NULL);
    if (!data)
        return;
    for (size_t i = 0; i < big; i++)
        data[i] = (unsigned char)(i * 2654435761u >> 13);
    CHECK_INT(dsv4_file_write(at("a.bin", p), data, big), 0);
    CHECK(!exists(strcat(strcpy(t, p), ".tmp")));
    CHECK_INT(dsv4_file_read(p, big, &got, &len), 0);
    CHECK(got && len == big && !memcmp(got, data, big) && got[big] == 0);
    free(got);
    got = NULL;
    /* one byte over the bound */
    CHECK_INT(dsv4_file_read(p, big - 1, &got, &len), DSV4_ERANGE);
    CHECK(got == NULL && strstr(dsv4_errmsg(), "a.bin"));
    /* copy through several chunks, over an existing file */
    CHECK_INT(dsv4_file_write(at("b.bin", q), "old", 3), 0);
    CHECK_INT(dsv4_file_copy(p, q), 0);
    CHECK_INT(dsv4_file_read(q, big, &got, &len), 0);
    CHECK(got && len == big && !memcmp(got, data, big));
    free(got);
    got = NULL;
    /* empty file */
    CHECK_INT(dsv4_file_write(p, "", 0), 0);
    CHECK_INT(dsv4_file_read(p, 10, &got, &len), 0);
    CHECK(got && len == 0 && got[0] == 0);
    free(got);
    free(data);
}

static void test_refusals(void)
{
    char p[4200], q[4200], t[4300], *got = NULL;
    size_t len;

    CHECK_INT(dsv4_file_read(at("missing", p), 100, &got, &len), DSV4_ENOENT);
    CHECK(got == NULL && strstr(dsv4_errmsg(), "missing"));
    CHECK_INT(dsv4_file_copy(p, at("c.bin", q)), DSV4_ENOENT);
    CHECK(!exists(q) && !exists(strcat(strcpy(t, q), ".tmp")));
    /* a directory */
    CHECK(dsv4_file_read(dir, 100, &got, &len) != 0);
    CHECK(got == NULL && strstr(dsv4_errmsg(), "not a regular file"));
    CHECK(dsv4_file_copy(dir, q) != 0);
    CHECK(!exists(q) && !exists(t));
    /* a FIFO nobody writes to: refused at once (the test would hang otherwise) */
    CHECK_INT(mkfifo(at("fifo", p), 0600), 0);
    CHECK(dsv4_file_read(p, 100, &got, &len) != 0);
    CHECK(got == NULL && strstr(dsv4_errmsg(), "not a regular file"));
    CHECK(dsv4_file_copy(p, q) != 0);
    CHECK(!exists(q) && !exists(t));
    /* a destination in a missing folder */
    CHECK(dsv4_file_write(at("no/such/dir/x", p), "x", 1) != 0);
    CHECK(strstr(dsv4_errmsg(), "no/such/dir/x.tmp"));
}

/* A write that fails part-way leaves no file under either name. */
static void test_failed_write(void)
{
    char p[4200], t[4300], *buf = calloc(1, 1 << 20);
    struct rlimit old, lim;

    CHECK(buf != NULL);
    if (!buf || getrlimit(RLIMIT_FSIZE, &old))
        return;
    signal(SIGXFSZ, SIG_IGN); /* write() then fails with EFBIG */
    lim = old;
    lim.rlim_cur = 65536;
    CHECK_INT(setrlimit(RLIMIT_FSIZE, &lim), 0);
    int rc = dsv4_file_write(at("big.bin", p), buf, 1 << 20);
    setrlimit(RLIMIT_FSIZE, &old);
    CHECK(rc != 0 && strstr(dsv4_errmsg(), "big.bin.tmp"));
    CHECK(!exists(p) && !exists(strcat(strcpy(t, p), ".tmp")));
    /* the same through copy: source 1 MiB, limit 64 KiB */
    char src[4200];
    CHECK_INT(dsv4_file_write(at("src.bin", src), buf, 1 << 20), 0);
    lim.rlim_cur = 65536;
    CHECK_INT(setrlimit(RLIMIT_FSIZE, &lim), 0);
    rc = dsv4_file_copy(src, p);
    setrlimit(RLIMIT_FSIZE, &old);
    CHECK(rc != 0);
    CHECK(!exists(p) && !exists(t));
    free(buf);
}

int main(void)
{
    char cmd[4200];

    snprintf(dir, sizeof(dir), "%s/fileio.XXXXXX",
             getenv("DSV4_TMP") ? getenv("DSV4_TMP") : "/tmp");
    alarm(60); /* a blocking open of the FIFO kills the test instead of hanging it */
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_round_trips();
    test_refusals();
    test_failed_write();
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
    TEST_DONE();
}
