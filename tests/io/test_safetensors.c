/*
 * test_safetensors.c - the safetensors reader and writer: round trips over
 * every dtype, views and metadata, every malformed-file case (status and a
 * key phrase of the message, which must name the file), writer misuse,
 * ENOSPC through RLIMIT_FSIZE leaving no file behind, and O(1) find() on a
 * 300k-tensor header.
 */
#include "dsv4-build.h"
#include "base/dsv4.h"
#include "engine/io/safetensors.h"
#include "tests/test.h"

#include <signal.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char tmpdir[512];

static const char *tpath(const char *name)
{
    static char buf[64][1024];
    static int k;

    k = (k + 1) % 64;
    snprintf(buf[k], sizeof(buf[k]), "%s/%s", tmpdir, name);
    return buf[k];
}

static bool exists(const char *path)
{
    struct stat st;

    return stat(path, &st) == 0;
}

/* Writes prefix (the header length, or `hlen_override` when not ~0) + header + data. */
static void write_raw(const char *path, const char *header, uint64_t hlen_override,
                      const void *data, size_t dlen)
{
    FILE *fp = fopen(path, "wb");
    uint64_t h = hlen_override != ~0ull ? hlen_override : strlen(header);
    uint8_t p[8];

    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(h >> (8 * i));
    fwrite(p, 1, 8, fp);
    fwrite(header, 1, strlen(header), fp);
    if (dlen)
        fwrite(data, 1, dlen, fp);
    fclose(fp);
}

static int n_bad;

/* Opens a crafted file and expects `status` with `phrase` and the path in the message. */
#define BAD(header, data_len, status, phrase) \
    bad_case(__LINE__, header, ~0ull, data_len, status, phrase)

static void bad_case(int line, const char *header, uint64_t hlen, size_t data_len, int status,
                     const char *phrase)
{
    static uint8_t zeros[4096];
    char name[64];
    const char *path;
    struct dsv4_st_file *f = (struct dsv4_st_file *)1;
    int rc;

    snprintf(name, sizeof(name), "bad%d.safetensors", n_bad++);
    path = tpath(name);
    write_raw(path, header, hlen, zeros, data_len);
    rc = dsv4_st_open(path, &f);
    CHECKF(rc == status, "line %d: status %d (%s), expected %d; msg: %s", line, rc,
           dsv4_strerror(rc), status, dsv4_errmsg());
    CHECKF(strstr(dsv4_errmsg(), phrase) != NULL, "line %d: message \"%s\" lacks \"%s\"", line,
           dsv4_errmsg(), phrase);
    CHECKF(strstr(dsv4_errmsg(), path) != NULL, "line %d: message \"%s\" lacks the path", line,
           dsv4_errmsg());
    CHECK(f == NULL);
    if (rc == 0)
        dsv4_st_close(f);
}

static void test_bad_files(void)
{
    const char *path = tpath("short.safetensors");
    FILE *fp = fopen(path, "wb");
    struct dsv4_st_file *f;
    char big[512];

    fwrite("\x05\0\0\0", 1, 4, fp);
    fclose(fp);
    CHECK_INT(dsv4_st_open(path, &f), DSV4_EFORMAT);
    CHECK(strstr(dsv4_errmsg(), "shorter than the 8-byte") && strstr(dsv4_errmsg(), path));
    CHECK_INT(dsv4_st_open(tpath("missing.safetensors"), &f), DSV4_ENOENT);

    /* header length vs file */
    bad_case(__LINE__, "{}      ", 1000, 0, DSV4_EFORMAT, "runs past the end");
    bad_case(__LINE__, "{}      ", (uint64_t)DSV4_ST_MAX_HEADER + 1, 0, DSV4_ERANGE, "exceeds the");
    bad_case(__LINE__, "{}      ", ~0ull - 1, 0, DSV4_ERANGE, "exceeds the");
    /* not JSON / not an object / wrong types */
    BAD("[1, 2]", 0, DSV4_EFORMAT, "does not start with '{'");
    BAD("", 0, DSV4_EFORMAT, "does not start with '{'");
    BAD("{\"a\": ", 0, DSV4_EFORMAT, "not valid JSON");
    BAD("{\"a\": {}} x", 0, DSV4_EFORMAT, "trailing bytes after the JSON");
    BAD("{\"a\":\x01{}}", 0, DSV4_EFORMAT, "control byte 0x01");
    BAD("{\"\xff\": {}}", 0, DSV4_EFORMAT, "not valid UTF-8");
    BAD("{\"\xc0\xaf\": {}}", 0, DSV4_EFORMAT, "not valid UTF-8");
    BAD("{\"a\": 5}", 0, DSV4_EFORMAT, "entry is not an object");
    BAD("{\"a\": {\"shape\": [], \"data_offsets\": [0, 1]}}", 1, DSV4_EFORMAT, "missing \"dtype\"");
    BAD("{\"a\": {\"dtype\": \"U8\", \"data_offsets\": [0, 1]}}", 1, DSV4_EFORMAT,
        "missing \"shape\"");
    BAD("{\"a\": {\"dtype\": \"U8\", \"shape\": []}}", 1, DSV4_EFORMAT, "missing \"data_offsets\"");
    BAD("{\"a\": {\"dtype\": 5, \"shape\": [], \"data_offsets\": [0, 1]}}", 1, DSV4_EFORMAT,
        "dtype is not a string");
    BAD("{\"a\": {\"dtype\": \"U8\", \"dtype\": \"U8\", \"shape\": [], \"data_offsets\": [0, "
        "1]}}",
        1, DSV4_EFORMAT, "duplicate key \"dtype\"");
    BAD("{\"a\": {\"dtype\": \"U8\", \"shape\": 1, \"data_offsets\": [0, 1]}}", 1, DSV4_EFORMAT,
        "shape is not an array");
    BAD("{\"a\": {\"dtype\": \"U8\", \"shape\": [], \"data_offsets\": [0]}}", 1, DSV4_EFORMAT,
        "not an array of 2 integers");
    BAD("{\"a\": {\"dtype\": \"U8\", \"shape\": [], \"data_offsets\": {\"0\": 1}}}", 1,
        DSV4_EFORMAT, "not an array of 2 integers");
    BAD("{\"a\": {\"dtype\": \"U8\", \"shape\": [], \"data_offsets\": [\"0\", 1]}}", 1,
        DSV4_EFORMAT, "are not non-negative integers");
    BAD("{\"a\": {\"dtype\": \"U8\", \"shape\": [], \"data_offsets\": [0.5, 1]}}", 1, DSV4_EFORMAT,
        "not a plain non-negative integer at offset 53");
    BAD("{\"a\": {\"dtype\": \"U8\", \"shape\": [], \"data_offsets\": [-1, 0]}}", 1, DSV4_EFORMAT,
        "not a plain non-negative integer at offset 52");
    BAD("{\"a\": {\"dtype\": \"U8\", \"shape\": [], \"data_offsets\": [0, 1e300]}}", 1,
        DSV4_EFORMAT, "not a plain non-negative integer at offset 56");
    BAD("{\"a\": {\"dtype\": \"U8\", \"shape\": [], \"data_offsets\": [0, 1e0]}}", 1, DSV4_EFORMAT,
        "not a plain non-negative integer at offset 56");
    BAD("{\"a\": {\"dtype\": \"U8\", \"shape\": [1E0], \"data_offsets\": [0, 1]}}", 1, DSV4_EFORMAT,
        "not a plain non-negative integer at offset 33");
    BAD("{\"a\": {\"dtype\": \"U8\", \"shape\": [-0], \"data_offsets\": [0, 0]}}", 1, DSV4_EFORMAT,
        "not a plain non-negative integer at offset 32");
    BAD("{\"a\": {\"dtype\": \"U8\", \"shape\": [01], \"data_offsets\": [0, 1]}}", 1, DSV4_EFORMAT,
        "not a plain non-negative integer at offset 32");
    {
        static const char h[] = "{\"x-1.5e3 \\\" -0.1\": {\"dtype\": \"U8\", \"shape\": [10], "
                                "\"data_offsets\": [0, 10]}, \"__metadata__\": {\"v\": \"-1e5\"}}";
        struct dsv4_st_file *g = NULL;
        CHECKF(dsv4_st_parse_header(h, strlen(h), 10, &g) == 0, "%s", dsv4_errmsg());
        if (g) {
            CHECK(dsv4_st_find(g, "x-1.5e3 \" -0.1") != NULL);
            CHECK_STR(dsv4_st_metadata(g, "v"), "-1e5");
            dsv4_st_close(g);
        }
    }
    BAD("{\"a\": {\"dtype\": \"U8\", \"shape\": [4], \"data_offsets\": [4, 0]}}", 4, DSV4_EFORMAT,
        "data_offsets reversed [4, 0]");
    /* dtype, shape and size */
    BAD("{\"a\": {\"dtype\": \"F99\", \"shape\": [], \"data_offsets\": [0, 1]}}", 1, DSV4_ENOTSUP,
        "unsupported dtype \"F99\"");
    BAD("{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 4]}}", 4,
        DSV4_EMISMATCH, "F32 [2] needs 8 bytes but data_offsets [0, 4] span 4");
    BAD("{\"a\": {\"dtype\": \"U8\", \"shape\": [-1], \"data_offsets\": [0, 1]}}", 1, DSV4_EFORMAT,
        "not a plain non-negative integer at offset 32");
    BAD("{\"a\": {\"dtype\": \"U8\", \"shape\": [1.5], \"data_offsets\": [0, 1]}}", 1, DSV4_EFORMAT,
        "not a plain non-negative integer at offset 33");
    BAD("{\"a\": {\"dtype\": \"U8\", \"shape\": [\"1\"], \"data_offsets\": [0, 1]}}", 1,
        DSV4_EFORMAT, "shape[0] is not a non-negative integer");
    BAD("{\"a\": {\"dtype\": \"U8\", \"shape\": [4294967296, 4294967296], \"data_offsets\": [0, "
        "1]}}",
        1, DSV4_ERANGE, "numel overflows");
    BAD("{\"a\": {\"dtype\": \"F32\", \"shape\": [2147483648, 2147483648, 2], \"data_offsets\": "
        "[0, 1]}}",
        1, DSV4_ERANGE, "byte size of F32");
    BAD("{\"a\": {\"dtype\": \"U8\", \"shape\": [1,1,1,1,1,1,1,1,1], \"data_offsets\": [0, 1]}}", 1,
        DSV4_ENOTSUP, "more than 8 dims");
    /* layout of the data section */
    BAD("{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}}", 4, DSV4_ERANGE,
        "past the end of the 4-byte data section");
    BAD("{\"a\": {\"dtype\": \"U8\", \"shape\": [4], \"data_offsets\": [0, 4]}, \"b\": "
        "{\"dtype\": \"U8\", \"shape\": [4], \"data_offsets\": [2, 6]}}",
        6, DSV4_EFORMAT, "overlap \"a\" which ends at 4");
    BAD("{\"a\": {\"dtype\": \"U8\", \"shape\": [4], \"data_offsets\": [0, 4]}, \"b\": "
        "{\"dtype\": \"U8\", \"shape\": [4], \"data_offsets\": [0, 4]}}",
        4, DSV4_EFORMAT, "overlap");
    BAD("{\"a\": {\"dtype\": \"U8\", \"shape\": [4], \"data_offsets\": [0, 4]}, \"b\": "
        "{\"dtype\": \"U8\", \"shape\": [4], \"data_offsets\": [8, 12]}}",
        12, DSV4_EFORMAT, "hole of 4 bytes");
    BAD("{\"a\": {\"dtype\": \"U8\", \"shape\": [4], \"data_offsets\": [2, 6]}}", 6, DSV4_EFORMAT,
        "hole of 2 bytes");
    BAD("{\"a\": {\"dtype\": \"U8\", \"shape\": [4], \"data_offsets\": [0, 4]}}", 9, DSV4_EFORMAT,
        "tensors cover 4 bytes but the data section has 9");
    /* names and metadata */
    BAD("{\"a\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [0, 1]}, \"a\": "
        "{\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [1, 2]}}",
        2, DSV4_EFORMAT, "duplicate tensor name \"a\"");
    BAD("{\"__metadata__\": {}, \"__metadata__\": {}}", 0, DSV4_EFORMAT, "duplicate __metadata__");
    BAD("{\"__metadata__\": [1]}", 0, DSV4_EFORMAT, "__metadata__ is not an object");
    BAD("{\"__metadata__\": {\"k\": 1}}", 0, DSV4_EFORMAT, "value of \"k\" is not a string");
    BAD("{\"__metadata__\": {\"k\": \"1\", \"k\": \"2\"}}", 0, DSV4_EFORMAT,
        "duplicate __metadata__ key \"k\"");

    /* a bad byte is found at every position of the 8-byte-word fast path */
    for (size_t p = 2; p < 26; p++) {
        char h[64], want[64];
        struct dsv4_st_file *g = NULL;
        snprintf(h, sizeof(h), "{\"%s\": {}}", "aaaaaaaaaaaaaaaaaaaaaaaaaaaa");
        for (int bad = 0; bad < 2; bad++) {
            h[p] = bad ? '\x1f' : '\xfe';
            CHECK_INT(dsv4_st_parse_header(h, strlen(h), 0, &g), DSV4_EFORMAT);
            snprintf(want, sizeof(want), "%s at offset %zu", bad ? "control byte 0x1f" : "UTF-8",
                     p);
            CHECKF(strstr(dsv4_errmsg(), want) != NULL, "\"%s\" lacks \"%s\"", dsv4_errmsg(), want);
        }
        h[p] = '\xc3', h[p + 1] = '\xbc'; /* a valid two-byte sequence (u-umlaut) */
        CHECK_INT(dsv4_st_parse_header(h, strlen(h), 0, &g), DSV4_EFORMAT);
        CHECK(strstr(dsv4_errmsg(), "missing \"dtype\"") != NULL);
    }

    /* valid corner cases: padding, null metadata, extra keys, empty tensors */
    snprintf(big, sizeof(big),
             "{\"__metadata__\": null, \"z\": {\"dtype\": \"F32\", \"shape\": [0, 3], "
             "\"data_offsets\": [4, 4], \"extra\": 1}, \"s\": {\"dtype\": \"I32\", \"shape\": [], "
             "\"data_offsets\": [0, 4]}}     ");
    write_raw(tpath("ok.safetensors"), big, ~0ull, "\x01\x02\x03\x04", 4);
    CHECKF(dsv4_st_open(tpath("ok.safetensors"), &f) == 0, "%s", dsv4_errmsg());
    if (f) {
        CHECK_INT(dsv4_st_count(f), 2);
        CHECK_STR(dsv4_st_tensor(f, 0)->name, "s");
        CHECK_INT(dsv4_st_tensor(f, 0)->ndim, 0);
        CHECK_INT(dsv4_tensor_numel(dsv4_st_tensor(f, 0)), 1);
        {
            int32_t v; /* this header is not padded: the view is unaligned */
            memcpy(&v, dsv4_st_tensor(f, 0)->data, 4);
            CHECK_INT(v, 0x04030201);
        }
        CHECK_INT(dsv4_st_find(f, "z")->nbytes, 0);
        CHECK_INT(dsv4_st_find(f, "z")->shape[1], 3);
        CHECK_INT(dsv4_st_metadata_count(f), 0);
        dsv4_st_close(f);
    }
}

/* Deterministic bytes of tensor i. */
static uint8_t pattern(size_t i, size_t j)
{
    return (uint8_t)((i * 131 + j * 7 + (j >> 8) * 13 + 3) & 0xff);
}

static void test_round_trip(void)
{
    const char *path = tpath("rt.safetensors");
    struct dsv4_st_writer *w;
    struct dsv4_st_file *f = NULL;
    int64_t shape[3] = {3, 5, 2};
    size_t nd = DSV4_DTYPE_COUNT - 1;
    uint8_t buf[256];
    const char *k, *v;

    CHECK_INT(dsv4_st_writer_open(path, &w), 0);
    CHECK_INT(dsv4_st_writer_metadata(w, "format", "pt"), 0);
    CHECK_INT(dsv4_st_writer_metadata(w, "note", "quote \" backslash \\ nl \n ü"), 0);
    CHECK_INT(dsv4_st_writer_metadata(w, "format", "x"), DSV4_EEXIST);
    for (size_t d = 1; d <= nd; d++) {
        char name[64];
        snprintf(name, sizeof(name), "t.%s", dsv4_dtype_name((enum dsv4_dtype)d));
        CHECKF(dsv4_st_writer_declare(w, name, (enum dsv4_dtype)d, 3, shape) == 0, "%s",
               dsv4_errmsg());
    }
    CHECK_INT(dsv4_st_writer_declare(w, "scalar", DSV4_DTYPE_F64, 0, shape), 0);
    CHECK_INT(dsv4_st_writer_declare(w, "empty", DSV4_DTYPE_BF16, 2, (int64_t[]){0, 7}), 0);
    CHECK_INT(dsv4_st_writer_declare(w, "we\"ird\\name/ü", DSV4_DTYPE_U8, 1, (int64_t[]){1}), 0);
    CHECK_INT(dsv4_st_writer_declare(w, "scalar", DSV4_DTYPE_U8, 0, shape), DSV4_EEXIST);
    CHECK_INT(dsv4_st_writer_declare(w, "neg", DSV4_DTYPE_U8, 1, (int64_t[]){-1}), DSV4_EINVAL);
    CHECK_INT(dsv4_st_writer_declare(w, "nine", DSV4_DTYPE_U8, 9, shape), DSV4_EINVAL);
    CHECK_INT(dsv4_st_writer_declare(w, "__metadata__", DSV4_DTYPE_U8, 0, shape), DSV4_EINVAL);
    CHECK_INT(dsv4_st_writer_declare(w, "bad", DSV4_DTYPE_INVALID, 0, shape), DSV4_EINVAL);
    CHECK_INT(dsv4_st_writer_write(w, "scalar", buf, 8), DSV4_EINVAL); /* before begin */
    CHECK_INT(dsv4_st_writer_begin(w), 0);
    CHECK_INT(dsv4_st_writer_declare(w, "late", DSV4_DTYPE_U8, 0, shape), DSV4_EINVAL);
    /* write in reverse order, in pieces of 7 bytes */
    for (size_t d = nd; d >= 1; d--) {
        char name[64];
        size_t n = 30 * dsv4_dtype_size((enum dsv4_dtype)d);
        snprintf(name, sizeof(name), "t.%s", dsv4_dtype_name((enum dsv4_dtype)d));
        for (size_t j = 0; j < n; j++)
            buf[j] = pattern(d, j);
        if (d == DSV4_DTYPE_BOOL)
            for (size_t j = 0; j < n; j++)
                buf[j] &= 1;
        for (size_t off = 0; off < n; off += 7)
            CHECK_INT(dsv4_st_writer_write(w, name, buf + off, DSV4_MIN(7, n - off)), 0);
    }
    CHECK_INT(dsv4_st_writer_write(w, "t.U8", buf, 1), DSV4_ERANGE); /* past declared size */
    CHECK_INT(dsv4_st_writer_write(w, "nope", buf, 1), DSV4_ENOENT);
    memcpy(buf, "\x00\x00\x00\x00\x00\x00\xf0\x3f", 8); /* 1.0 */
    CHECK_INT(dsv4_st_writer_write(w, "scalar", buf, 8), 0);
    CHECK_INT(dsv4_st_writer_write(w, "we\"ird\\name/ü", "Z", 1), 0);
    CHECK(!exists(path));
    CHECKF(dsv4_st_writer_commit(w) == 0, "%s", dsv4_errmsg());
    CHECK(exists(path));
    CHECK(!exists(tpath("rt.safetensors.tmp")));

    CHECKF(dsv4_st_open(path, &f) == 0, "%s", dsv4_errmsg());
    if (!f)
        return;
    CHECK_INT(dsv4_st_count(f), nd + 3);
    CHECK_STR(dsv4_st_metadata(f, "format"), "pt");
    CHECK_STR(dsv4_st_metadata(f, "note"), "quote \" backslash \\ nl \n ü");
    CHECK(dsv4_st_metadata(f, "absent") == NULL);
    CHECK_INT(dsv4_st_metadata_count(f), 2);
    dsv4_st_metadata_at(f, 1, &k, &v);
    CHECK_STR(k, "note");
    for (size_t d = 1; d <= nd; d++) {
        char name[64];
        const struct dsv4_tensor *t;
        size_t n = 30 * dsv4_dtype_size((enum dsv4_dtype)d);
        bool same = true;
        snprintf(name, sizeof(name), "t.%s", dsv4_dtype_name((enum dsv4_dtype)d));
        t = dsv4_st_find(f, name);
        CHECKF(t != NULL, "%s", name);
        if (!t)
            continue;
        CHECK_INT(t->dtype, d);
        CHECK_INT(t->ndim, 3);
        CHECK(t->shape[0] == 3 && t->shape[1] == 5 && t->shape[2] == 2);
        CHECK_INT(t->nbytes, n);
        for (size_t j = 0; j < n; j++)
            same &= ((const uint8_t *)t->data)[j] ==
                    (d == DSV4_DTYPE_BOOL ? (pattern(d, j) & 1) : pattern(d, j));
        CHECKF(same, "%s bytes differ", name);
    }
    {
        double one; /* F64 after odd-sized tensors: an unaligned view */
        memcpy(&one, dsv4_st_find(f, "scalar")->data, 8);
        CHECK(one == 1.0);
    }
    CHECK_INT(dsv4_st_find(f, "scalar")->ndim, 0);
    CHECK_INT(dsv4_st_find(f, "empty")->nbytes, 0);
    CHECK(!memcmp(dsv4_st_find(f, "we\"ird\\name/ü")->data, "Z", 1));
    /* offset order, contiguity, header padding */
    for (size_t i = 1; i < dsv4_st_count(f); i++)
        CHECK(dsv4_st_offset(f, i) == dsv4_st_offset(f, i - 1) + dsv4_st_tensor(f, i - 1)->nbytes);
    {
        const uint8_t *base = dsv4_st_tensor(f, 0)->data;
        CHECK(((uintptr_t)base - dsv4_st_offset(f, 0)) % 8 == 0);
    }
    dsv4_st_close(f);

    /* dsv4_st_write_file and the in-memory reader */
    {
        float vals[6] = {1, 2, 3, 4, 5, 6};
        struct dsv4_tensor t = {.name = "w",
                                .dtype = DSV4_DTYPE_F32,
                                .ndim = 2,
                                .shape = {2, 3},
                                .data = vals,
                                .nbytes = sizeof(vals)};
        const char *meta[] = {"a", "b"};
        static const char want[] = "{\"__metadata__\":{\"a\":\"b\"},\"w\":{\"dtype\":\"F32\","
                                   "\"shape\":[2,3],\"data_offsets\":[0,24]}}";
        FILE *fp;
        uint8_t file[1024];
        size_t n;
        CHECK_INT(dsv4_st_write_file(tpath("one.safetensors"), &t, 1, meta, 1), 0);
        t.nbytes = 4;
        CHECK_INT(dsv4_st_write_file(tpath("two.safetensors"), &t, 1, meta, 1), DSV4_EMISMATCH);
        CHECK(!exists(tpath("two.safetensors")) && !exists(tpath("two.safetensors.tmp")));
        fp = fopen(tpath("one.safetensors"), "rb");
        n = fread(file, 1, sizeof(file), fp);
        fclose(fp);
        CHECK(n > 8 && (file[0] | file[1] << 8) % 8 == 0);
        CHECK(!memcmp(file + 8, want, sizeof(want) - 1));
        CHECK_INT(dsv4_st_open_memory(file, n, &f), 0);
        if (f) {
            CHECK(!memcmp(dsv4_st_find(f, "w")->data, vals, 24));
            CHECK_STR(dsv4_st_path(f), "<memory>");
            dsv4_st_close(f);
        }
        CHECK_INT(dsv4_st_open_memory(file, n - 1, &f), DSV4_ERANGE);
        CHECK(strstr(dsv4_errmsg(), "<memory>") != NULL);
    }
}

static void test_writer_failures(void)
{
    struct dsv4_st_writer *w;
    char path[1024];
    uint8_t buf[16] = {0};
    pid_t pid;
    int status;

    snprintf(path, sizeof(path), "%s", tpath("partial.safetensors"));
    /* commit with bytes missing: error, no final file, no temporary */
    CHECK_INT(dsv4_st_writer_open(path, &w), 0);
    CHECK_INT(dsv4_st_writer_declare(w, "a", DSV4_DTYPE_U8, 1, (int64_t[]){16}), 0);
    CHECK_INT(dsv4_st_writer_begin(w), 0);
    CHECK_INT(dsv4_st_writer_write(w, "a", buf, 8), 0);
    CHECK(exists(tpath("partial.safetensors.tmp")));
    CHECK_INT(dsv4_st_writer_commit(w), DSV4_EINVAL);
    CHECK(strstr(dsv4_errmsg(), "8 of 16 bytes written") != NULL);
    CHECK(!exists(path) && !exists(tpath("partial.safetensors.tmp")));
    /* abort */
    CHECK_INT(dsv4_st_writer_open(path, &w), 0);
    CHECK_INT(dsv4_st_writer_declare(w, "a", DSV4_DTYPE_U8, 1, (int64_t[]){16}), 0);
    dsv4_st_writer_abort(w);
    CHECK(!exists(path) && !exists(tpath("partial.safetensors.tmp")));
    /* missing directory */
    CHECK_INT(dsv4_st_writer_open(tpath("no/such/dir.safetensors"), &w), DSV4_ENOENT);
    /* an existing final file is replaced atomically only on commit */
    {
        struct dsv4_tensor t = {.name = "x",
                                .dtype = DSV4_DTYPE_U8,
                                .ndim = 1,
                                .shape = {4},
                                .data = "abcd",
                                .nbytes = 4};
        struct dsv4_st_file *f;
        CHECK_INT(dsv4_st_write_file(path, &t, 1, NULL, 0), 0);
        CHECK_INT(dsv4_st_writer_open(path, &w), 0);
        dsv4_st_writer_abort(w);
        CHECK_INT(dsv4_st_open(path, &f), 0);
        if (f) {
            CHECK(!memcmp(dsv4_st_find(f, "x")->data, "abcd", 4));
            dsv4_st_close(f);
        }
    }

    /* ENOSPC: a child limited by RLIMIT_FSIZE (SIGXFSZ ignored) writes 1 MiB,
     * once with the limit set before begin() (the space reservation fails)
     * and once after it (the data write past the limit fails). */
    for (int late = 0; late < 2; late++) {
        fflush(NULL);
        pid = fork();
        if (pid == 0) {
            struct rlimit rl = {64 << 10, 64 << 10};
            static uint8_t data[1 << 20];
            const char *p2 = tpath("full.safetensors");
            int rc;
            signal(SIGXFSZ, SIG_IGN);
            if (!late)
                setrlimit(RLIMIT_FSIZE, &rl);
            if (dsv4_st_writer_open(p2, &w))
                _exit(10);
            if (dsv4_st_writer_declare(w, "big", DSV4_DTYPE_U8, 1, (int64_t[]){sizeof(data)}))
                _exit(11);
            rc = dsv4_st_writer_begin(w);
            if (late && rc == 0)
                setrlimit(RLIMIT_FSIZE, &rl);
            if (!rc)
                rc = dsv4_st_writer_write(w, "big", data, sizeof(data));
            if (rc != DSV4_ENOSPC) {
                fprintf(stderr, "child: rc %d: %s\n", rc, dsv4_errmsg());
                _exit(12);
            }
            if (!strstr(dsv4_errmsg(), "no space left") || !strstr(dsv4_errmsg(), p2) ||
                !strstr(dsv4_errmsg(), late ? "writing tensor \"big\"" : "reserving space")) {
                fprintf(stderr, "child: message: %s\n", dsv4_errmsg());
                _exit(13);
            }
            fprintf(stderr, "child message: %s\n", dsv4_errmsg());
            /* the writer refuses further work, abort cleans up */
            if (dsv4_st_writer_write(w, "big", data, 1) != DSV4_EINVAL)
                _exit(14);
            dsv4_st_writer_abort(w);
            _exit(0);
        }
        CHECK(pid > 0);
        waitpid(pid, &status, 0);
        CHECKF(WIFEXITED(status) && WEXITSTATUS(status) == 0, "ENOSPC child (late %d) status %d",
               late, status);
        CHECK(!exists(tpath("full.safetensors")) && !exists(tpath("full.safetensors.tmp")));
    }
}

/* find() must stay O(1): lookups in a 300k-tensor header cost about what
 * they cost in a 1k-tensor one (a linear scan would be 300x). */
static double lookup_ns(size_t n, double *parse_s)
{
    struct dsv4_st_writer *w;
    struct dsv4_st_file *f = NULL;
    char name[64], path[64];
    static uint8_t zero[1];
    double t0, t1;
    size_t hits = 0, rounds = 2000000 / n + 1;

    snprintf(path, sizeof(path), "many%zu.safetensors", n);
    dsv4_st_writer_open(tpath(path), &w);
    for (size_t i = 0; i < n; i++) {
        snprintf(name, sizeof(name), "layers.%zu.ffn.experts.%zu.w1.scale", i / 1000, i % 1000);
        dsv4_st_writer_declare(w, name, DSV4_DTYPE_U8, 1, (int64_t[]){1});
    }
    dsv4_st_writer_begin(w);
    for (size_t i = 0; i < n; i++) {
        snprintf(name, sizeof(name), "layers.%zu.ffn.experts.%zu.w1.scale", i / 1000, i % 1000);
        dsv4_st_writer_write(w, name, zero, 1);
    }
    CHECKF(dsv4_st_writer_commit(w) == 0, "%s", dsv4_errmsg());
    t0 = dsv4_now();
    CHECKF(dsv4_st_open(tpath(path), &f) == 0, "%s", dsv4_errmsg());
    *parse_s = dsv4_now() - t0;
    if (!f)
        return 1e9;
    CHECK_INT(dsv4_st_count(f), n);
    t0 = dsv4_now();
    for (size_t r = 0; r < rounds; r++)
        for (size_t i = 0; i < n; i += 1) {
            snprintf(name, sizeof(name), "layers.%zu.ffn.experts.%zu.w1.scale", i / 1000, i % 1000);
            hits += dsv4_st_find(f, name) != NULL;
        }
    t1 = dsv4_now();
    CHECK_INT(hits, rounds * n);
    CHECK(dsv4_st_find(f, "layers.0.ffn.experts.0.w1.weight") == NULL);
    dsv4_st_close(f);
    return (t1 - t0) * 1e9 / (double)(rounds * n);
}

static void test_many(void)
{
    double p_small, p_big;
    double small = lookup_ns(1000, &p_small), big = lookup_ns(300000, &p_big);

    fprintf(stderr, "find: %.0f ns/lookup at 1k tensors, %.0f ns at 300k (open %.3f s)\n", small,
            big, p_big);
    CHECKF(big < 30 * small, "lookup at 300k tensors %.0f ns vs %.0f ns at 1k", big, small);
}

int main(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "%s", test_tmpdir());
    test_bad_files();
    test_round_trip();
    test_writer_failures();
    test_many();
    TEST_DONE();
}
