/*
 * st_tool.c - test helper for tests/io/test_python.py: exposes the reader,
 * the writer and the checkpoint code on the command line so that Python's
 * `safetensors` can check our files and we can check its files.
 *
 *   st_tool dump FILE          metadata and tensors, one line each:
 *                              M <key hex> <value hex>
 *                              T <name hex> <dtype> <dims,> <data hex>
 *   st_tool copy IN OUT        re-writes IN with the streaming writer
 *                              (metadata, tensors in offset order)
 *   st_tool index DIR SHARD..  dsv4_ckpt_write_index
 *   st_tool ckpt DIR           C <name hex> <shard file> per tensor
 * Errors print dsv4_errmsg() and exit 1.
 */
#include "dsv4-build.h"
#include "base/dsv4.h"
#include "engine/io/safetensors.h"

#include <stdio.h>
#include <string.h>

static void hex(const void *p, size_t n)
{
    const unsigned char *b = p;

    for (size_t i = 0; i < n; i++)
        printf("%02x", b[i]);
}

static int dump(const char *path)
{
    struct dsv4_st_file *f;
    int rc = dsv4_st_open(path, &f);

    if (rc)
        return rc;
    for (size_t i = 0; i < dsv4_st_metadata_count(f); i++) {
        const char *k, *v;
        dsv4_st_metadata_at(f, i, &k, &v);
        printf("M ");
        hex(k, strlen(k));
        printf(" ");
        hex(v, strlen(v));
        printf("\n");
    }
    for (size_t i = 0; i < dsv4_st_count(f); i++) {
        const struct dsv4_tensor *t = dsv4_st_tensor(f, i);
        printf("T ");
        hex(t->name, strlen(t->name));
        printf(" %s ", dsv4_dtype_name(t->dtype));
        for (int d = 0; d < t->ndim; d++)
            printf("%lld,", (long long)t->shape[d]);
        printf(" ");
        hex(t->data, t->nbytes);
        printf("\n");
    }
    dsv4_st_close(f);
    return 0;
}

static int copy(const char *in, const char *out)
{
    struct dsv4_st_file *f;
    struct dsv4_st_writer *w;
    int rc = dsv4_st_open(in, &f);

    if (rc)
        return rc;
    rc = dsv4_st_writer_open(out, &w);
    if (rc)
        goto done;
    for (size_t i = 0; i < dsv4_st_metadata_count(f) && !rc; i++) {
        const char *k, *v;
        dsv4_st_metadata_at(f, i, &k, &v);
        rc = dsv4_st_writer_metadata(w, k, v);
    }
    for (size_t i = 0; i < dsv4_st_count(f) && !rc; i++) {
        const struct dsv4_tensor *t = dsv4_st_tensor(f, i);
        rc = dsv4_st_writer_declare(w, t->name, t->dtype, t->ndim, t->shape);
    }
    if (!rc)
        rc = dsv4_st_writer_begin(w);
    for (size_t i = 0; i < dsv4_st_count(f) && !rc; i++) {
        const struct dsv4_tensor *t = dsv4_st_tensor(f, i);
        rc = dsv4_st_writer_write(w, t->name, t->data, t->nbytes);
    }
    if (rc)
        dsv4_st_writer_abort(w);
    else
        rc = dsv4_st_writer_commit(w);
done:
    dsv4_st_close(f);
    return rc;
}

static int ckpt(const char *dir)
{
    struct dsv4_ckpt *c;
    int rc = dsv4_ckpt_open(dir, &c);

    if (rc)
        return rc;
    for (size_t i = 0; i < dsv4_ckpt_count(c); i++) {
        const struct dsv4_tensor *t = dsv4_ckpt_tensor(c, i);
        printf("C ");
        hex(t->name, strlen(t->name));
        printf(" %s\n", dsv4_ckpt_shard_of(c, t->name));
    }
    dsv4_ckpt_close(c);
    return 0;
}

int main(int argc, char **argv)
{
    int rc;

    if (argc == 3 && !strcmp(argv[1], "dump"))
        rc = dump(argv[2]);
    else if (argc == 4 && !strcmp(argv[1], "copy"))
        rc = copy(argv[2], argv[3]);
    else if (argc >= 3 && !strcmp(argv[1], "index"))
        rc = dsv4_ckpt_write_index(argv[2], (const char *const *)argv + 3, (size_t)argc - 3);
    else if (argc == 3 && !strcmp(argv[1], "ckpt"))
        rc = ckpt(argv[2]);
    else {
        fprintf(stderr, "usage: st_tool dump FILE | copy IN OUT | index DIR SHARD... | ckpt DIR\n");
        return 2;
    }
    if (rc) {
        fprintf(stderr, "st_tool: %s (%s)\n", dsv4_errmsg(), dsv4_strerror(rc));
        return 1;
    }
    return 0;
}
