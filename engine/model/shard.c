/*
 * shard.c - a rank's weights as one safetensors image (engine/model/model.h:
 * dsv4_model_export_shard / dsv4_model_open_shard), so that weights outlive
 * the worker process that loaded them (DESIGN.md §1): the worker writes the
 * image into a memfd it hands to the supervisor, and a restarted worker binds
 * the image instead of reading the checkpoint again.
 *
 * What the image holds: every tensor of the checkpoint except the routed
 * experts this rank does not serve (their NVFP4 input_scale scalars stay:
 * the binding folds the largest of every expert's into the layer's
 * activation scale, and must find the same value again), and the
 * checkpoint's config.json in the metadata.  Other tensors are kept whole,
 * so the image binds through the ordinary path (rank / nranks slicing of
 * views): no second binding code to keep in step with the first.  The
 * extra bytes are the split attention and vocabulary tensors, a small
 * fraction next to the experts that dominate a rank's share.
 */
#include "engine/model/model_int.h"

#include "base/dsv4.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Whether a routed expert tensor of another rank (to leave out of the image). */
static bool foreign_expert(const struct dsv4_model *m, const char *name)
{
    const char *p = strstr(name, ".ffn.experts.");
    if (!p || (strncmp(name, "layers.", 7) && strncmp(name, "mtp.", 4)))
        return false;
    char *end;
    long e = strtol(p + 13, &end, 10);
    if (end == p + 13 || *end != '.')
        return false;
    if (!strcmp(end, ".w1.input_scale") || !strcmp(end, ".w2.input_scale") ||
        !strcmp(end, ".w3.input_scale"))
        return false;
    return e < m->e0 || e >= m->e1;
}

int dsv4_model_export_shard(const struct dsv4_model *m, const char *config_json, int fd,
                            dsv4_progress_fn progress, void *ctx, uint64_t *bytes)
{
    struct dsv4_st_writer *w = NULL;
    size_t n = dsv4_ckpt_count(m->ckpt);
    char label[64], meta[64];
    int rc;
    snprintf(label, sizeof label, "shard of rank %d/%d", m->rank, m->nranks);
    if ((rc = dsv4_st_writer_open_fd(fd, label, &w)))
        return rc;
    snprintf(meta, sizeof meta, "%d/%d", m->rank, m->nranks);
    if ((rc = dsv4_st_writer_metadata(w, "dsv4.shard", meta)) ||
        (rc = dsv4_st_writer_metadata(w, "config.json", config_json)))
        goto fail;
    for (size_t i = 0; i < n; i++) {
        const struct dsv4_tensor *t = dsv4_ckpt_tensor(m->ckpt, i);
        if (foreign_expert(m, t->name))
            continue;
        if ((rc = dsv4_st_writer_declare(w, t->name, t->dtype, t->ndim, t->shape)))
            goto fail;
    }
    if ((rc = dsv4_st_writer_begin(w)))
        goto fail;
    uint64_t total = dsv4_st_writer_data_size(w), done = 0, told = 0;
    for (size_t i = 0; i < n; i++) {
        const struct dsv4_tensor *t = dsv4_ckpt_tensor(m->ckpt, i);
        if (foreign_expert(m, t->name))
            continue;
        /* in pieces, so that progress moves while a large tensor's pages are read */
        for (uint64_t off = 0; off < t->nbytes;) {
            uint64_t piece = DSV4_MIN(t->nbytes - off, (uint64_t)64 << 20);
            if ((rc = dsv4_st_writer_write(w, t->name, (const char *)t->data + off, piece)))
                goto fail;
            off += piece;
            done += piece;
            if (progress && done - told >= ((uint64_t)64 << 20)) {
                progress(ctx, done, total);
                told = done;
            }
        }
    }
    if (progress)
        progress(ctx, done, total);
    if (bytes)
        *bytes = dsv4_st_writer_data_size(w);
    return dsv4_st_writer_commit(w);
fail:
    dsv4_st_writer_abort(w);
    return rc;
}

int dsv4_model_open_shard(int fd, int rank, int nranks, struct dsv4_model **out)
{
    char path[64], want[64];
    struct dsv4_ckpt *ck = NULL;
    struct dsv4_config cfg;
    int rc;
    *out = NULL;
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    if ((rc = dsv4_ckpt_open_file(path, &ck)))
        return dsv4_error_ctx(rc, "weights image (fd %d)", fd);
    const struct dsv4_st_file *f = dsv4_ckpt_shard(ck, 0);
    const char *who = dsv4_st_metadata(f, "dsv4.shard");
    const char *js = dsv4_st_metadata(f, "config.json");
    snprintf(want, sizeof want, "%d/%d", rank, nranks);
    if (!who || !js || strcmp(who, want)) {
        dsv4_ckpt_close(ck);
        return dsv4_error(DSV4_EMISMATCH, "weights image (fd %d) is for rank %s, not %s", fd,
                          who ? who : "(none)", want);
    }
    if ((rc = dsv4_config_parse(js, strlen(js), &cfg)) ||
        (rc = dsv4_model_bind(ck, &cfg, rank, nranks, out))) {
        dsv4_ckpt_close(ck);
        return rc;
    }
    (*out)->own_ckpt = true;
    return 0;
}
