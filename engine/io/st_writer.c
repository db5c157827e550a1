/*
 * st_writer.c - the streaming safetensors writer and the checkpoint index
 * writer (see safetensors.h).
 *
 * Crash safety: bytes go to "<path>.tmp"; only a complete, fsynced file is
 * renamed over <path> (and the directory fsynced), so a reader never sees a
 * half-written file under a final name whatever happens to this process.
 * Every failure removes the temporary file.  The index goes through
 * dsv4_file_write (fileio.h), which gives the same guarantees.
 *
 * The header is the compact JSON the Python package writes
 * ({"__metadata__":{..},"name":{"dtype":..,"shape":[..],"data_offsets":[b,e]}})
 * padded with spaces so that the data section starts on an 8-byte boundary.
 * Offsets are assigned in declaration order and tile the data section, so
 * the file passes our reader and Python's `safetensors` alike.
 */
#include "dsv4-build.h"
#include "engine/io/safetensors.h"
#include "base/dsv4.h"
#include "engine/io/fileio.h"
#include "engine/io/st_internal.h"
#include "engine/io/strbuf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_OFFSET (1ull << 53) /* readers parse offsets through doubles */

/* ---------------------------------------------------------------- file helpers */

static int status_of_errno(int e)
{
    return e == ENOSPC || e == EDQUOT || e == EFBIG ? DSV4_ENOSPC : DSV4_EIO;
}

static int write_all(int fd, const void *buf, size_t n, uint64_t off)
{
    const char *p = buf;

    while (n) {
        ssize_t k = pwrite(fd, p, n > (1u << 30) ? (1u << 30) : n, (off_t)off);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (k == 0) {
            errno = ENOSPC;
            return -1;
        }
        p += k;
        n -= (size_t)k;
        off += (uint64_t)k;
    }
    return 0;
}

/* ---------------------------------------------------------------- writer */

struct wdecl {
    char *name; /* first member: hashed */
    enum dsv4_dtype dtype;
    int ndim;
    int64_t shape[DSV4_MAX_DIMS];
    uint64_t begin, nbytes, written;
};

enum wstate { W_DECLARE, W_WRITE, W_FAILED };

struct dsv4_st_writer {
    char *path, *tmp; /* tmp NULL: writing straight into a caller's fd (open_fd) */
    int fd;
    enum wstate state;
    struct wdecl *t;
    size_t n, cap;
    struct name_hash hash;
    char **mk, **mv;
    size_t n_meta, meta_cap;
    uint64_t data_size, data_start;
};

static void writer_free(struct dsv4_st_writer *w)
{
    if (w->fd >= 0)
        close(w->fd);
    for (size_t i = 0; i < w->n; i++)
        free(w->t[i].name);
    for (size_t i = 0; i < w->n_meta; i++) {
        free(w->mk[i]);
        free(w->mv[i]);
    }
    free(w->t);
    free(w->mk);
    free(w->mv);
    free(w->hash.slot);
    free(w->path);
    free(w->tmp);
    free(w);
}

/* Records an I/O failure: removes the temporary file, poisons the writer. */
static int writer_fail(struct dsv4_st_writer *w, const char *what, int e)
{
    int st = status_of_errno(e);

    if (w->fd >= 0) {
        close(w->fd);
        w->fd = -1;
    }
    if (w->tmp)
        unlink(w->tmp);
    w->state = W_FAILED;
    return dsv4_error(st, "%s: %s: %s%s; nothing written under the final name", w->path, what,
                      strerror(e), st == DSV4_ENOSPC ? " (no space left)" : "");
}

int dsv4_st_writer_open(const char *path, struct dsv4_st_writer **out)
{
    struct dsv4_st_writer *w;
    size_t l = strlen(path);

    *out = NULL;
    w = calloc(1, sizeof(*w));
    if (!w)
        return dsv4_error(DSV4_ENOMEM, "%s: out of memory", path);
    w->fd = -1;
    w->path = strdup(path);
    w->tmp = malloc(l + 5);
    if (!w->path || !w->tmp || hash_init(&w->hash, 64)) {
        writer_free(w);
        return dsv4_error(DSV4_ENOMEM, "%s: out of memory", path);
    }
    memcpy(w->tmp, path, l);
    memcpy(w->tmp + l, ".tmp", 5);
    w->fd = open(w->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (w->fd < 0) {
        int e = errno;
        writer_free(w);
        return dsv4_error(e == ENOENT ? DSV4_ENOENT : status_of_errno(e),
                          "%s.tmp: cannot create: %s", path, strerror(e));
    }
    *out = w;
    return 0;
}

static bool utf8_ok(const char *s)
{
    size_t n = strlen(s);

    return st_utf8_check((const uint8_t *)s, n) == n;
}

int dsv4_st_writer_open_fd(int fd, const char *label, struct dsv4_st_writer **out)
{
    struct dsv4_st_writer *w;

    *out = NULL;
    w = calloc(1, sizeof(*w));
    if (!w)
        return dsv4_error(DSV4_ENOMEM, "%s: out of memory", label);
    w->fd = -1;
    w->path = strdup(label);
    if (!w->path || hash_init(&w->hash, 64)) {
        writer_free(w);
        return dsv4_error(DSV4_ENOMEM, "%s: out of memory", label);
    }
    w->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (w->fd < 0) {
        int e = errno;
        writer_free(w);
        return dsv4_error(DSV4_EIO, "%s: dup: %s", label, strerror(e));
    }
    *out = w;
    return 0;
}

int dsv4_st_writer_metadata(struct dsv4_st_writer *w, const char *key, const char *value)
{
    char **k, **v;

    if (w->state != W_DECLARE)
        return dsv4_error(DSV4_EINVAL, "%s: metadata \"%.200s\" after begin or failure", w->path,
                          key ? key : "(null)");
    if (!key || !value)
        return dsv4_error(DSV4_EINVAL, "%s: metadata with no %s", w->path, key ? "value" : "key");
    if (!utf8_ok(key) || !utf8_ok(value))
        return dsv4_error(DSV4_EINVAL, "%s: metadata \"%.200s\" is not valid UTF-8", w->path, key);
    for (size_t i = 0; i < w->n_meta; i++)
        if (!strcmp(w->mk[i], key))
            return dsv4_error(DSV4_EEXIST, "%s: metadata key \"%.200s\" given twice", w->path, key);
    if (w->n_meta == w->meta_cap) {
        size_t nc = w->meta_cap ? 2 * w->meta_cap : 8;
        k = realloc(w->mk, nc * sizeof(*k));
        if (!k)
            return dsv4_error(DSV4_ENOMEM, "%s: out of memory", w->path);
        w->mk = k;
        v = realloc(w->mv, nc * sizeof(*v));
        if (!v)
            return dsv4_error(DSV4_ENOMEM, "%s: out of memory", w->path);
        w->mv = v;
        w->meta_cap = nc;
    }
    w->mk[w->n_meta] = strdup(key);
    w->mv[w->n_meta] = strdup(value);
    if (!w->mk[w->n_meta] || !w->mv[w->n_meta]) {
        free(w->mk[w->n_meta]);
        free(w->mv[w->n_meta]);
        return dsv4_error(DSV4_ENOMEM, "%s: out of memory", w->path);
    }
    w->n_meta++;
    return 0;
}

int dsv4_st_writer_declare(struct dsv4_st_writer *w, const char *name, enum dsv4_dtype dtype,
                           int ndim, const int64_t *shape)
{
    struct wdecl *d;
    uint64_t numel = 1, nbytes;
    size_t esize = dsv4_dtype_size(dtype);

    if (w->state != W_DECLARE)
        return dsv4_error(DSV4_EINVAL, "%s: declare \"%.200s\" after begin or failure", w->path,
                          name);
    if (!utf8_ok(name) || !strcmp(name, "__metadata__"))
        return dsv4_error(DSV4_EINVAL, "%s: bad tensor name \"%.200s\"", w->path, name);
    if (!esize)
        return dsv4_error(DSV4_EINVAL, "%s: tensor \"%.200s\": invalid dtype %d", w->path, name,
                          (int)dtype);
    if (ndim < 0 || ndim > DSV4_MAX_DIMS)
        return dsv4_error(DSV4_EINVAL, "%s: tensor \"%.200s\": %d dims (0..%d allowed)", w->path,
                          name, ndim, DSV4_MAX_DIMS);
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 0 || (uint64_t)shape[i] >= MAX_OFFSET ||
            __builtin_mul_overflow(numel, (uint64_t)shape[i], &numel))
            return dsv4_error(DSV4_EINVAL, "%s: tensor \"%.200s\": bad dim %d = %lld", w->path,
                              name, i, (long long)shape[i]);
    if (__builtin_mul_overflow(numel, (uint64_t)esize, &nbytes) ||
        w->data_size + nbytes >= MAX_OFFSET || w->data_size + nbytes < w->data_size)
        return dsv4_error(DSV4_ERANGE, "%s: tensor \"%.200s\": data size too large", w->path, name);
    if (w->n == w->cap) {
        size_t nc = w->cap ? 2 * w->cap : 64;
        struct wdecl *t = realloc(w->t, nc * sizeof(*t));
        if (!t)
            return dsv4_error(DSV4_ENOMEM, "%s: out of memory", w->path);
        w->t = t;
        w->cap = nc;
        if (hash_init(&w->hash, nc))
            return dsv4_error(DSV4_ENOMEM, "%s: out of memory", w->path);
        for (size_t i = 0; i < w->n; i++)
            hash_insert(&w->hash, w->t, sizeof(*w->t), (uint32_t)i);
    }
    d = &w->t[w->n];
    memset(d, 0, sizeof(*d));
    d->name = strdup(name);
    if (!d->name)
        return dsv4_error(DSV4_ENOMEM, "%s: out of memory", w->path);
    if (hash_insert(&w->hash, w->t, sizeof(*w->t), (uint32_t)w->n) >= 0) {
        free(d->name);
        return dsv4_error(DSV4_EEXIST, "%s: tensor \"%.200s\" declared twice", w->path, name);
    }
    d->dtype = dtype;
    d->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        d->shape[i] = shape[i];
    d->begin = w->data_size;
    d->nbytes = nbytes;
    w->data_size += nbytes;
    w->n++;
    return 0;
}

uint64_t dsv4_st_writer_data_size(const struct dsv4_st_writer *w)
{
    return w->data_size;
}

int dsv4_st_writer_begin(struct dsv4_st_writer *w)
{
    struct dsv4_strbuf b = {0};
    uint8_t prefix[8];
    uint64_t hlen;
    int rc = 0;

    if (w->state != W_DECLARE)
        return dsv4_error(DSV4_EINVAL, "%s: begin called twice or after failure", w->path);
    dsv4_strbuf_str(&b, "{");
    if (w->n_meta) {
        dsv4_strbuf_str(&b, "\"__metadata__\":{");
        for (size_t i = 0; i < w->n_meta; i++) {
            if (i)
                dsv4_strbuf_str(&b, ",");
            dsv4_strbuf_json_str(&b, w->mk[i], false);
            dsv4_strbuf_str(&b, ":");
            dsv4_strbuf_json_str(&b, w->mv[i], false);
        }
        dsv4_strbuf_str(&b, "}");
    }
    for (size_t i = 0; i < w->n; i++) {
        const struct wdecl *d = &w->t[i];
        if (i || w->n_meta)
            dsv4_strbuf_str(&b, ",");
        dsv4_strbuf_json_str(&b, d->name, false);
        dsv4_strbuf_str(&b, ":{\"dtype\":\"");
        dsv4_strbuf_str(&b, dsv4_dtype_name(d->dtype));
        dsv4_strbuf_str(&b, "\",\"shape\":[");
        for (int j = 0; j < d->ndim; j++)
            dsv4_strbuf_fmt(&b, j ? ",%llu" : "%llu", (unsigned long long)d->shape[j]);
        dsv4_strbuf_fmt(&b, "],\"data_offsets\":[%llu,", (unsigned long long)d->begin);
        dsv4_strbuf_fmt(&b, "%llu]}", (unsigned long long)(d->begin + d->nbytes));
    }
    dsv4_strbuf_str(&b, "}");
    while (b.len % 8 && !b.oom)
        dsv4_strbuf_str(&b, " ");
    if (b.oom) {
        free(b.p);
        return dsv4_error(DSV4_ENOMEM, "%s: out of memory for the header", w->path);
    }
    if (b.len > DSV4_ST_MAX_HEADER) {
        free(b.p);
        return dsv4_error(DSV4_ERANGE, "%s: header of %zu bytes exceeds the %u-byte limit", w->path,
                          b.len, DSV4_ST_MAX_HEADER);
    }
    hlen = b.len;
    for (int i = 0; i < 8; i++)
        prefix[i] = (uint8_t)(hlen >> (8 * i));
    w->data_start = 8 + hlen;
    /* Reserve the whole file first: a full disk shows up here, not after
     * hours of conversion.  Filesystems without fallocate just skip it. */
    if (w->data_start + w->data_size > 0 &&
        fallocate(w->fd, 0, 0, (off_t)(w->data_start + w->data_size)) < 0 && errno != EOPNOTSUPP &&
        errno != ENOSYS) {
        rc = writer_fail(w, "reserving space", errno);
        goto done;
    }
    if (write_all(w->fd, prefix, 8, 0) < 0 || write_all(w->fd, b.p, b.len, 8) < 0) {
        rc = writer_fail(w, "writing the header", errno);
        goto done;
    }
    w->state = W_WRITE;
done:
    free(b.p);
    return rc;
}

int dsv4_st_writer_write(struct dsv4_st_writer *w, const char *name, const void *data,
                         size_t nbytes)
{
    long i;
    struct wdecl *d;

    if (w->state != W_WRITE)
        return dsv4_error(DSV4_EINVAL, "%s: write \"%.200s\" before begin or after failure",
                          w->path, name);
    i = hash_find(&w->hash, w->t, sizeof(*w->t), name);
    if (i < 0)
        return dsv4_error(DSV4_ENOENT, "%s: write of undeclared tensor \"%.200s\"", w->path, name);
    d = &w->t[i];
    if (nbytes > d->nbytes - d->written)
        return dsv4_error(DSV4_ERANGE,
                          "%s: tensor \"%.200s\": %zu more bytes after %llu of %llu written",
                          w->path, name, nbytes, (unsigned long long)d->written,
                          (unsigned long long)d->nbytes);
    if (write_all(w->fd, data, nbytes, w->data_start + d->begin + d->written) < 0) {
        char what[256];
        snprintf(what, sizeof(what), "writing tensor \"%.200s\"", name);
        return writer_fail(w, what, errno);
    }
    d->written += nbytes;
    return 0;
}

int dsv4_st_writer_commit(struct dsv4_st_writer *w)
{
    int rc = 0;

    if (w->state != W_WRITE) {
        rc = dsv4_error(DSV4_EINVAL, "%s: commit before begin or after failure", w->path);
        goto fail;
    }
    for (size_t i = 0; i < w->n; i++)
        if (w->t[i].written != w->t[i].nbytes) {
            rc = dsv4_error(DSV4_EINVAL, "%s: tensor \"%.200s\": %llu of %llu bytes written",
                            w->path, w->t[i].name, (unsigned long long)w->t[i].written,
                            (unsigned long long)w->t[i].nbytes);
            goto fail;
        }
    if (w->tmp && fsync(w->fd) < 0) {
        rc = writer_fail(w, "fsync", errno);
        goto fail;
    }
    if (close(w->fd) < 0) {
        w->fd = -1;
        rc = writer_fail(w, "close", errno);
        goto fail;
    }
    w->fd = -1;
    if (!w->tmp) {
        writer_free(w);
        return 0;
    }
    if (rename(w->tmp, w->path) < 0) {
        rc = writer_fail(w, "rename", errno);
        goto fail;
    }
    dsv4_file_sync_parent(w->path);
    writer_free(w);
    return 0;
fail:
    dsv4_st_writer_abort(w);
    return rc;
}

void dsv4_st_writer_abort(struct dsv4_st_writer *w)
{
    if (!w)
        return;
    if (w->fd >= 0) {
        close(w->fd);
        w->fd = -1;
    }
    if (w->state != W_FAILED && w->tmp)
        unlink(w->tmp);
    writer_free(w);
}

int dsv4_st_write_file(const char *path, const struct dsv4_tensor *tensors, size_t n,
                       const char *const *meta_kv, size_t n_meta)
{
    struct dsv4_st_writer *w;
    int rc;

    rc = dsv4_st_writer_open(path, &w);
    if (rc)
        return rc;
    for (size_t i = 0; i < n_meta && !rc; i++)
        rc = dsv4_st_writer_metadata(w, meta_kv[2 * i], meta_kv[2 * i + 1]);
    for (size_t i = 0; i < n && !rc; i++)
        rc = dsv4_st_writer_declare(w, tensors[i].name, tensors[i].dtype, tensors[i].ndim,
                                    tensors[i].shape);
    if (!rc)
        rc = dsv4_st_writer_begin(w);
    for (size_t i = 0; i < n && !rc; i++) {
        if (tensors[i].nbytes != w->t[i].nbytes) {
            rc = dsv4_error(DSV4_EMISMATCH,
                            "%s: tensor \"%.200s\": view has %llu bytes, shape "
                            "needs %llu",
                            path, tensors[i].name, (unsigned long long)tensors[i].nbytes,
                            (unsigned long long)w->t[i].nbytes);
            break;
        }
        rc = dsv4_st_writer_write(w, tensors[i].name, tensors[i].data, tensors[i].nbytes);
    }
    if (rc) {
        dsv4_st_writer_abort(w);
        return rc;
    }
    return dsv4_st_writer_commit(w);
}

/* ---------------------------------------------------------------- index writer */

struct iref {
    const char *name;
    size_t shard;
};

static int cmp_iref(const void *a, const void *b)
{
    return strcmp(((const struct iref *)a)->name, ((const struct iref *)b)->name);
}

int dsv4_ckpt_write_index(const char *dir, const char *const *shard_files, size_t n)
{
    struct dsv4_st_file **f = calloc(n + 1, sizeof(*f));
    struct iref *refs = NULL;
    struct name_hash h = {0};
    struct dsv4_strbuf b = {0};
    char *path = NULL;
    size_t total = 0, k = 0, plen = strlen(dir) + 300;
    uint64_t size = 0;
    int rc = 0;

    if (!f || !(path = malloc(plen))) {
        rc = dsv4_error(DSV4_ENOMEM, "%s: out of memory", dir);
        goto done;
    }
    for (size_t s = 0; s < n; s++) {
        if (strlen(shard_files[s]) > 255 || strchr(shard_files[s], '/')) {
            rc = dsv4_error(DSV4_EINVAL, "%s: \"%.200s\" is not a shard file name", dir,
                            shard_files[s]);
            goto done;
        }
        snprintf(path, plen, "%s/%s", dir, shard_files[s]);
        rc = dsv4_st_open(path, &f[s]);
        if (rc)
            goto done;
        total += dsv4_st_count(f[s]);
    }
    refs = calloc(total + 1, sizeof(*refs));
    if (!refs || hash_init(&h, total)) {
        rc = dsv4_error(DSV4_ENOMEM, "%s: out of memory", dir);
        goto done;
    }
    for (size_t s = 0; s < n; s++)
        for (size_t i = 0; i < dsv4_st_count(f[s]); i++, k++) {
            const struct dsv4_tensor *t = dsv4_st_tensor(f[s], i);
            long prev;
            refs[k].name = t->name;
            refs[k].shard = s;
            size += t->nbytes;
            prev = hash_insert(&h, refs, sizeof(*refs), (uint32_t)k);
            if (prev >= 0) {
                rc = dsv4_error(DSV4_EFORMAT, "%s: tensor \"%.200s\" is in both %.200s and %.200s",
                                dir, t->name, shard_files[refs[prev].shard], shard_files[s]);
                goto done;
            }
        }
    qsort(refs, total, sizeof(*refs), cmp_iref);
    dsv4_strbuf_str(&b, "{\n  \"metadata\": {\n    \"total_size\": ");
    dsv4_strbuf_fmt(&b, "%llu", (unsigned long long)size);
    dsv4_strbuf_str(&b, "\n  },\n  \"weight_map\": {");
    for (size_t i = 0; i < total; i++) {
        dsv4_strbuf_str(&b, i ? ",\n    " : "\n    ");
        dsv4_strbuf_json_str(&b, refs[i].name, true);
        dsv4_strbuf_str(&b, ": ");
        dsv4_strbuf_json_str(&b, shard_files[refs[i].shard], true);
    }
    dsv4_strbuf_str(&b, total ? "\n  }\n}\n" : "}\n}\n");
    if (b.oom) {
        rc = dsv4_error(DSV4_ENOMEM, "%s: out of memory", dir);
        goto done;
    }
    snprintf(path, plen, "%s/model.safetensors.index.json", dir);
    rc = dsv4_file_write(path, b.p, b.len);
done:
    for (size_t s = 0; f && s < n; s++)
        dsv4_st_close(f[s]);
    free(f);
    free(refs);
    free(h.slot);
    free(b.p);
    free(path);
    return rc;
}
