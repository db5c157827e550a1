/*
 * test_ckpt.c - checkpoint directories: index + shards (written with the
 * writer and dsv4_ckpt_write_index), a single model.safetensors, a plain
 * directory of shards, and every inconsistency (missing shard, index vs
 * shard disagreement both ways, duplicate names across shards).
 */
#include "dsv4-build.h"
#include "base/dsv4.h"
#include "engine/io/safetensors.h"
#include "tests/test.h"

#include <sys/stat.h>
#include <unistd.h>

static char root[512];

static const char *dpath(const char *dir, const char *name)
{
    static char buf[16][1024];
    static int k;

    k = (k + 1) % 16;
    if (name)
        snprintf(buf[k], sizeof(buf[k]), "%.500s/%.100s/%.300s", root, dir, name);
    else
        snprintf(buf[k], sizeof(buf[k]), "%.500s/%.100s", root, dir);
    return buf[k];
}

/* Writes shard `file` of `dir` holding tensors names[0..n) (F32 [2, 3],
 * values 100 * tensor + element) and one I64 [5]. */
static void shard(const char *dir, const char *file, const char *const *names, size_t n)
{
    struct dsv4_tensor t[8];
    float v[8][6];

    DSV4_ASSERT(n <= 8);
    for (size_t i = 0; i < n; i++) {
        for (int j = 0; j < 6; j++)
            v[i][j] = (float)(100 * (names[i][0]) + j);
        t[i] = (struct dsv4_tensor){.name = names[i],
                                    .dtype = DSV4_DTYPE_F32,
                                    .ndim = 2,
                                    .shape = {2, 3},
                                    .data = v[i],
                                    .nbytes = 24};
    }
    mkdir(dpath(dir, NULL), 0755);
    CHECKF(dsv4_st_write_file(dpath(dir, file), t, n, NULL, 0) == 0, "%s", dsv4_errmsg());
}

static void write_text(const char *path, const char *text)
{
    FILE *fp = fopen(path, "w");

    fputs(text, fp);
    fclose(fp);
}

static void expect_fail(const char *dir, int status, const char *phrase)
{
    struct dsv4_ckpt *c = (struct dsv4_ckpt *)1;
    int rc = dsv4_ckpt_open(dpath(dir, NULL), &c);

    CHECKF(rc == status, "%s: status %d, expected %d (%s)", dir, rc, status, dsv4_errmsg());
    CHECKF(strstr(dsv4_errmsg(), phrase) != NULL, "%s: \"%s\" lacks \"%s\"", dir, dsv4_errmsg(),
           phrase);
    CHECK(c == NULL);
}

static void test_index(void)
{
    static const char *s1[] = {"b.weight", "a.weight"}, *s2[] = {"c.weight"};
    const char *files[] = {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"};
    struct dsv4_ckpt *c;
    FILE *fp;
    char text[2048];
    size_t n;

    shard("idx", files[0], s1, 2);
    shard("idx", files[1], s2, 1);
    /* a stray file the index does not name is ignored */
    shard("idx", "stray.safetensors", s2, 1);
    CHECKF(dsv4_ckpt_write_index(dpath("idx", NULL), files, 2) == 0, "%s", dsv4_errmsg());
    fp = fopen(dpath("idx", "model.safetensors.index.json"), "r");
    CHECK(fp != NULL);
    if (!fp)
        return;
    n = fread(text, 1, sizeof(text) - 1, fp);
    text[n] = '\0';
    fclose(fp);
    CHECK_STR(text, "{\n"
                    "  \"metadata\": {\n"
                    "    \"total_size\": 72\n"
                    "  },\n"
                    "  \"weight_map\": {\n"
                    "    \"a.weight\": \"model-00001-of-00002.safetensors\",\n"
                    "    \"b.weight\": \"model-00001-of-00002.safetensors\",\n"
                    "    \"c.weight\": \"model-00002-of-00002.safetensors\"\n"
                    "  }\n"
                    "}\n");
    CHECK(access(dpath("idx", "model.safetensors.index.json.tmp"), F_OK) != 0);

    CHECKF(dsv4_ckpt_open(dpath("idx", NULL), &c) == 0, "%s", dsv4_errmsg());
    if (!c)
        return;
    CHECK_INT(dsv4_ckpt_count(c), 3);
    CHECK_INT(dsv4_ckpt_shard_count(c), 2);
    CHECK_STR(dsv4_ckpt_shard_of(c, "c.weight"), files[1]);
    CHECK_STR(dsv4_ckpt_shard_of(c, "a.weight"), files[0]);
    CHECK(dsv4_ckpt_shard_of(c, "zz") == NULL);
    CHECK(dsv4_ckpt_find(c, "zz") == NULL);
    CHECK_STR(dsv4_ckpt_dir(c), dpath("idx", NULL));
    CHECK(((const float *)dsv4_ckpt_find(c, "c.weight")->data)[5] == 100 * 'c' + 5);
    CHECK(((const float *)dsv4_ckpt_find(c, "a.weight")->data)[0] == 100 * 'a');
    CHECK_STR(dsv4_st_path(dsv4_ckpt_shard(c, 1)), dpath("idx", files[1]));
    for (size_t i = 0; i < dsv4_ckpt_count(c); i++)
        CHECK(dsv4_ckpt_find(c, dsv4_ckpt_tensor(c, i)->name) == dsv4_ckpt_tensor(c, i));
    CHECK(dsv4_ckpt_tensor(c, 3) == NULL);
    dsv4_ckpt_close(c);

    /* duplicate names across shards: write_index refuses */
    shard("dupi", "x.safetensors", s2, 1);
    shard("dupi", "y.safetensors", s2, 1);
    {
        const char *xy[] = {"x.safetensors", "y.safetensors"};
        CHECK_INT(dsv4_ckpt_write_index(dpath("dupi", NULL), xy, 2), DSV4_EFORMAT);
        CHECK(strstr(dsv4_errmsg(), "\"c.weight\" is in both x.safetensors and y.safetensors"));
        CHECK(access(dpath("dupi", "model.safetensors.index.json"), F_OK) != 0);
    }
}

static void test_bad_index(void)
{
    static const char *s1[] = {"a", "b"}, *s2[] = {"c"};
    const char *sh1 = "{\"weight_map\": {\"a\": \"s1.safetensors\", \"b\": \"s1.safetensors\", "
                      "\"c\": \"s2.safetensors\"%s}}";
    char text[512];

    /* index naming a missing shard */
    shard("miss", "s1.safetensors", s1, 2);
    snprintf(text, sizeof(text), sh1, "");
    write_text(dpath("miss", "model.safetensors.index.json"), text);
    expect_fail("miss", DSV4_ENOENT, "names shard s2.safetensors, which does not exist");
    /* index assigns a tensor to the wrong shard */
    shard("wrong", "s1.safetensors", s1, 2);
    shard("wrong", "s2.safetensors", s2, 1);
    write_text(dpath("wrong", "model.safetensors.index.json"),
               "{\"weight_map\": {\"a\": \"s2.safetensors\", \"b\": \"s1.safetensors\", \"c\": "
               "\"s2.safetensors\"}}");
    expect_fail("wrong", DSV4_EMISMATCH,
                "assigns \"a\" to s2.safetensors but it is in s1.safetensors");
    /* index lists a tensor no shard holds */
    snprintf(text, sizeof(text), sh1, ", \"d\": \"s2.safetensors\"");
    write_text(dpath("wrong", "model.safetensors.index.json"), text);
    expect_fail("wrong", DSV4_EMISMATCH, "assigns \"d\" to s2.safetensors, which does not hold it");
    /* a shard holds a tensor the index does not list */
    write_text(dpath("wrong", "model.safetensors.index.json"),
               "{\"weight_map\": {\"a\": \"s1.safetensors\", \"c\": \"s2.safetensors\"}}");
    expect_fail("wrong", DSV4_EMISMATCH,
                "shard s1.safetensors holds \"b\", which the index does not list");
    /* duplicate weight_map entry */
    snprintf(text, sizeof(text), sh1, ", \"a\": \"s1.safetensors\"");
    write_text(dpath("wrong", "model.safetensors.index.json"), text);
    expect_fail("wrong", DSV4_EFORMAT, "duplicate weight_map entry \"a\"");
    /* malformed index files */
    write_text(dpath("wrong", "model.safetensors.index.json"), "{\"weight_map\": [1]}");
    expect_fail("wrong", DSV4_EFORMAT, "no \"weight_map\" object");
    write_text(dpath("wrong", "model.safetensors.index.json"), "{\"weight_map\": {\"a\": 1}}");
    expect_fail("wrong", DSV4_EFORMAT, "weight_map[\"a\"] is not a string");
    write_text(dpath("wrong", "model.safetensors.index.json"),
               "{\"weight_map\": {\"a\": \"../s1.safetensors\"}}");
    expect_fail("wrong", DSV4_EFORMAT, "is not a file name");
    write_text(dpath("wrong", "model.safetensors.index.json"), "{\"weight_map\": {}}");
    expect_fail("wrong", DSV4_EFORMAT, "weight_map is empty");
    write_text(dpath("wrong", "model.safetensors.index.json"), "not json");
    expect_fail("wrong", DSV4_EFORMAT, "not a JSON object");
    /* a bad shard's own error comes through with its path */
    write_text(dpath("wrong", "model.safetensors.index.json"),
               "{\"weight_map\": {\"a\": \"s1.safetensors\", \"b\": \"s1.safetensors\"}}");
    write_text(dpath("wrong", "s1.safetensors"), "junk");
    expect_fail("wrong", DSV4_EFORMAT, "s1.safetensors: file is 4 bytes");
}

static void test_plain_dirs(void)
{
    static const char *s1[] = {"a", "b"}, *s2[] = {"c"}, *s3[] = {"b"};
    struct dsv4_ckpt *c;

    /* single model.safetensors (others ignored) */
    shard("single", "model.safetensors", s1, 2);
    shard("single", "other.safetensors", s2, 1);
    CHECKF(dsv4_ckpt_open(dpath("single", NULL), &c) == 0, "%s", dsv4_errmsg());
    if (c) {
        CHECK_INT(dsv4_ckpt_count(c), 2);
        CHECK_INT(dsv4_ckpt_shard_count(c), 1);
        dsv4_ckpt_close(c);
    }
    /* directory of shards without index, in name order */
    shard("plain", "z.safetensors", s1, 2);
    shard("plain", "m.safetensors", s2, 1);
    write_text(dpath("plain", "notes.txt"), "x");
    CHECKF(dsv4_ckpt_open(dpath("plain", NULL), &c) == 0, "%s", dsv4_errmsg());
    if (c) {
        CHECK_INT(dsv4_ckpt_count(c), 3);
        CHECK_STR(dsv4_ckpt_tensor(c, 0)->name, "c");
        CHECK_STR(dsv4_ckpt_shard_of(c, "b"), "z.safetensors");
        dsv4_ckpt_close(c);
    }
    /* duplicate names across shards */
    shard("dup", "p1.safetensors", s1, 2);
    shard("dup", "p2.safetensors", s3, 1);
    expect_fail("dup", DSV4_EFORMAT, "tensor \"b\" is in both p1.safetensors and p2.safetensors");
    /* empty and missing directories */
    mkdir(dpath("empty", NULL), 0755);
    expect_fail("empty", DSV4_ENOENT, "no model.safetensors.index.json and no *.safetensors");
    expect_fail("absent", DSV4_ENOENT, "cannot open directory");
}

/* A checkpoint of Pro's scale: 64 shards, 147,200 tensors, with an index;
 * every tensor is found in its shard. */
static void test_scale(void)
{
    enum { SHARDS = 64, PER = 2300 };
    static char files[SHARDS][64];
    const char *names[SHARDS];
    struct dsv4_ckpt *c;
    char name[96];
    uint8_t byte = 7;
    size_t hits = 0, right = 0;
    double t0, t_open, t_find;

    mkdir(dpath("scale", NULL), 0755);
    for (int s = 0; s < SHARDS; s++) {
        struct dsv4_st_writer *w;
        snprintf(files[s], sizeof(files[s]), "model-%05d-of-%05d.safetensors", s + 1, SHARDS);
        names[s] = files[s];
        CHECK_INT(dsv4_st_writer_open(dpath("scale", files[s]), &w), 0);
        for (int i = 0; i < PER; i++) {
            snprintf(name, sizeof(name), "layers.%d.ffn.experts.%d.w%d.scale", s, i / 6, i % 6);
            dsv4_st_writer_declare(w, name, DSV4_DTYPE_F8_E8M0, 1, (int64_t[]){1});
        }
        CHECK_INT(dsv4_st_writer_begin(w), 0);
        for (int i = 0; i < PER; i++) {
            snprintf(name, sizeof(name), "layers.%d.ffn.experts.%d.w%d.scale", s, i / 6, i % 6);
            dsv4_st_writer_write(w, name, &byte, 1);
        }
        CHECKF(dsv4_st_writer_commit(w) == 0, "%s", dsv4_errmsg());
    }
    CHECKF(dsv4_ckpt_write_index(dpath("scale", NULL), names, SHARDS) == 0, "%s", dsv4_errmsg());
    t0 = dsv4_now();
    CHECKF(dsv4_ckpt_open(dpath("scale", NULL), &c) == 0, "%s", dsv4_errmsg());
    t_open = dsv4_now() - t0;
    if (!c)
        return;
    CHECK_INT(dsv4_ckpt_count(c), SHARDS * PER);
    t0 = dsv4_now();
    for (int s = 0; s < SHARDS; s++)
        for (int i = 0; i < PER; i++) {
            const char *sh;
            snprintf(name, sizeof(name), "layers.%d.ffn.experts.%d.w%d.scale", s, i / 6, i % 6);
            hits += dsv4_ckpt_find(c, name) != NULL;
            sh = dsv4_ckpt_shard_of(c, name);
            right += sh && !strcmp(sh, files[s]);
        }
    t_find = dsv4_now() - t0;
    CHECK_INT(hits, SHARDS * PER);
    CHECK_INT(right, SHARDS * PER);
    fprintf(stderr, "checkpoint of %d shards, %d tensors: open %.3f s, %.0f ns per find+shard_of\n",
            SHARDS, SHARDS * PER, t_open, t_find * 1e9 / (SHARDS * PER));
    dsv4_ckpt_close(c);
}

int main(void)
{
    snprintf(root, sizeof(root), "%s", test_tmpdir());
    test_index();
    test_bad_index();
    test_plain_dirs();
    test_scale();
    TEST_DONE();
}
