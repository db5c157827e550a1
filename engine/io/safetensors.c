/*
 * safetensors.c - the safetensors reader (header parser, mmapped files) and
 * checkpoint directories (see safetensors.h).  The writer and the index
 * writer live in st_writer.c.
 *
 * Validation follows the Python `safetensors` package so that a file one
 * side accepts the other accepts too:
 *  - the header is UTF-8 JSON starting with '{' (trailing blanks allowed, as
 *    writers pad it to 8 bytes), an object of tensor entries plus an optional
 *    "__metadata__" object of string values;
 *  - every entry has "dtype" (a known name), "shape" (at most DSV4_MAX_DIMS
 *    non-negative integers) and "data_offsets" ([begin, end], integers);
 *    unknown extra keys in an entry are ignored, as the Python package does;
 *  - end - begin == numel * dtype size, computed without overflow;
 *  - sorted by offset, the tensors tile the data section exactly: the first
 *    begins at 0, each begins where the previous ends, the last ends at the
 *    end of the file.  Holes and trailing bytes are rejected, like Python's
 *    "MetadataIncompleteBuffer"/"InvalidOffset" checks, so no byte of a file
 *    is unaccounted for and overlaps cannot hide;
 *  - names are unique (cJSON keeps duplicate keys; we detect them).
 * Numbers are read through cJSON's doubles, so offsets and dimensions must
 * be integers below 2^53 (9 PB); a lexical pre-check rejects, like Python's
 * usize fields, every number with a sign, fraction, exponent or leading zero
 * ("1e3", "1.0", "-0", "01"), which doubles would otherwise blur.
 *
 * Invariant: after a successful open every view satisfies
 * data + nbytes <= mapping end, and find() is O(1) (open addressing over
 * FNV-1a hashes), which a 300k-tensor checkpoint needs.
 */
#include "dsv4-build.h"
#include "engine/io/safetensors.h"
#include "base/dsv4.h"
#include "engine/io/fileio.h"
#include "engine/io/st_internal.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_INDEX_BYTES (1u << 30) /* model.safetensors.index.json (real: ~11 MB) */
/* Room for "<dir>/<file name>": names are checked to be at most 255 bytes. */
#define PATH_EXTRA    300
#define MAX_EXACT_INT 9007199254740992.0 /* 2^53 */

/* ---------------------------------------------------------------- file object */

struct dsv4_st_file {
    char *path;
    void *map; /* NULL unless opened from a file */
    size_t map_len;
    uint64_t file_size;
    const uint8_t *data; /* data section, NULL for a parsed header alone */
    uint64_t data_len;
    size_t n;
    struct dsv4_tensor *t; /* in data-offset order */
    struct name_hash hash;
    size_t n_meta;
    const char **meta_k, **meta_v;
    char *pool;      /* names and metadata strings */
    uint64_t *begin; /* data offset of each tensor */
};

void dsv4_st_close(struct dsv4_st_file *f)
{
    if (!f)
        return;
    if (f->map)
        munmap(f->map, f->map_len);
    free(f->path);
    free(f->t);
    free(f->hash.slot);
    free(f->meta_k);
    free(f->meta_v);
    free(f->pool);
    free(f->begin);
    free(f);
}

size_t dsv4_st_count(const struct dsv4_st_file *f)
{
    return f->n;
}

const struct dsv4_tensor *dsv4_st_tensor(const struct dsv4_st_file *f, size_t i)
{
    return i < f->n ? &f->t[i] : NULL;
}

const struct dsv4_tensor *dsv4_st_find(const struct dsv4_st_file *f, const char *name)
{
    long i = hash_find(&f->hash, &f->t[0].name, sizeof(f->t[0]), name);

    return i < 0 ? NULL : &f->t[i];
}

uint64_t dsv4_st_offset(const struct dsv4_st_file *f, size_t i)
{
    return i < f->n ? f->begin[i] : 0;
}

const char *dsv4_st_metadata(const struct dsv4_st_file *f, const char *key)
{
    for (size_t i = 0; i < f->n_meta; i++)
        if (!strcmp(f->meta_k[i], key))
            return f->meta_v[i];
    return NULL;
}

size_t dsv4_st_metadata_count(const struct dsv4_st_file *f)
{
    return f->n_meta;
}

void dsv4_st_metadata_at(const struct dsv4_st_file *f, size_t i, const char **key,
                         const char **value)
{
    DSV4_ASSERT(i < f->n_meta);
    *key = f->meta_k[i];
    *value = f->meta_v[i];
}

const char *dsv4_st_path(const struct dsv4_st_file *f)
{
    return f->path;
}

uint64_t dsv4_st_file_size(const struct dsv4_st_file *f)
{
    return f->file_size;
}

/* ---------------------------------------------------------------- header parser */

/* JSON allows no raw control characters and must be UTF-8 (Python rejects
 * anything else); also keeps NUL bytes away from cJSON's C strings.  Plain
 * ASCII, almost all of a header, is skipped 8 bytes at a time. */
static int check_bytes(const char *label, const uint8_t *s, size_t len)
{
    const uint64_t ones = 0x0101010101010101ull, high = 0x8080808080808080ull;
    size_t i = 0;

    while (i < len) {
        uint8_t c;
        size_t k;

        if (len - i >= 8) {
            uint64_t x;
            memcpy(&x, s + i, 8);
            /* no byte >= 0x80 and none < 0x20 */
            if (!(x & high) && !((x - 0x20 * ones) & ~x & high)) {
                i += 8;
                continue;
            }
        }
        c = s[i];
        if (c < 0x20 && c != '\t' && c != '\n' && c != '\r')
            return dsv4_error(DSV4_EFORMAT, "%s: header has control byte 0x%02x at offset %zu",
                              label, c, i);
        k = st_utf8_seq(s + i, len - i);
        if (!k)
            return dsv4_error(DSV4_EFORMAT, "%s: header is not valid UTF-8 at offset %zu", label,
                              i);
        i += k;
    }
    return 0;
}

/* The only numbers of a header are shapes and offsets, which must be plain
 * non-negative integers: outside strings, reject '-', '.', an exponent and
 * a leading zero followed by a digit (cJSON would accept them all). */
static int check_numbers(const char *label, const char *s, size_t len)
{
    bool in_str = false;

    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        bool digit_before = i > 0 && s[i - 1] >= '0' && s[i - 1] <= '9';
        if (in_str) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_str = false;
            continue;
        }
        if (c == '"') {
            in_str = true;
        } else if (c == '-' || c == '.' || ((c == 'e' || c == 'E') && digit_before) ||
                   (c == '0' && !digit_before && i + 1 < len && s[i + 1] >= '0' &&
                    s[i + 1] <= '9')) {
            return dsv4_error(DSV4_EFORMAT,
                              "%s: header has a number that is not a plain non-negative integer "
                              "at offset %zu",
                              label, i);
        }
    }
    return 0;
}

/* Reads a JSON number that must be an exact non-negative integer. */
static bool get_u53(const cJSON *v, uint64_t *out)
{
    double d;

    if (!cJSON_IsNumber(v))
        return false;
    d = v->valuedouble;
    if (!isfinite(d) || d < 0 || d != floor(d) || d > MAX_EXACT_INT)
        return false;
    *out = (uint64_t)d;
    return true;
}

struct entry {
    const char *name;
    enum dsv4_dtype dtype;
    int ndim;
    int64_t shape[DSV4_MAX_DIMS];
    uint64_t begin, end;
};

static int cmp_entry(const void *a, const void *b)
{
    const struct entry *x = a, *y = b;

    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* Copies a string into the pool (bounded by the header length: decoded JSON
 * strings are never longer than their encoding). */
static const char *pool_add(char *pool, size_t cap, size_t *used, const char *s)
{
    size_t n = strlen(s) + 1;

    if (n > cap - *used)
        return NULL;
    memcpy(pool + *used, s, n);
    *used += n;
    return pool + *used - n;
}

static int parse_entry(const char *label, const cJSON *e, struct entry *out)
{
    const char *name = out->name;
    const cJSON *dtype = NULL, *shape = NULL, *offs = NULL, *c;
    uint64_t numel = 1, nbytes, dim;
    size_t esize;
    int i;
    char sh[160];

    if (!cJSON_IsObject(e))
        return dsv4_error(DSV4_EFORMAT, "%s: tensor \"%.200s\": entry is not an object", label,
                          name);
    cJSON_ArrayForEach(c, e)
    {
        const cJSON **slot = NULL;
        if (!strcmp(c->string, "dtype"))
            slot = &dtype;
        else if (!strcmp(c->string, "shape"))
            slot = &shape;
        else if (!strcmp(c->string, "data_offsets"))
            slot = &offs;
        if (!slot)
            continue;
        if (*slot)
            return dsv4_error(DSV4_EFORMAT, "%s: tensor \"%.200s\": duplicate key \"%s\"", label,
                              name, c->string);
        *slot = c;
    }
    if (!dtype || !shape || !offs)
        return dsv4_error(DSV4_EFORMAT, "%s: tensor \"%.200s\": missing \"%s\"", label, name,
                          !dtype   ? "dtype"
                          : !shape ? "shape"
                                   : "data_offsets");
    if (!cJSON_IsString(dtype))
        return dsv4_error(DSV4_EFORMAT, "%s: tensor \"%.200s\": dtype is not a string", label,
                          name);
    out->dtype = dsv4_dtype_parse(dtype->valuestring, strlen(dtype->valuestring));
    if (out->dtype == DSV4_DTYPE_INVALID)
        return dsv4_error(DSV4_ENOTSUP, "%s: tensor \"%.200s\": unsupported dtype \"%.40s\"", label,
                          name, dtype->valuestring);
    esize = dsv4_dtype_size(out->dtype);
    if (!cJSON_IsArray(shape))
        return dsv4_error(DSV4_EFORMAT, "%s: tensor \"%.200s\": shape is not an array", label,
                          name);
    i = 0;
    cJSON_ArrayForEach(c, shape)
    {
        if (i == DSV4_MAX_DIMS)
            return dsv4_error(DSV4_ENOTSUP, "%s: tensor \"%.200s\": more than %d dims", label, name,
                              DSV4_MAX_DIMS);
        if (!get_u53(c, &dim))
            return dsv4_error(DSV4_EFORMAT,
                              "%s: tensor \"%.200s\": shape[%d] is not a non-negative integer "
                              "(negative dim?)",
                              label, name, i);
        out->shape[i++] = (int64_t)dim;
        if (__builtin_mul_overflow(numel, dim, &numel))
            return dsv4_error(DSV4_ERANGE, "%s: tensor \"%.200s\": numel overflows 64 bits", label,
                              name);
    }
    out->ndim = i;
    if (__builtin_mul_overflow(numel, (uint64_t)esize, &nbytes)) {
        dsv4_shape_str(out->shape, out->ndim, sh, sizeof(sh));
        return dsv4_error(DSV4_ERANGE, "%s: tensor \"%.200s\": byte size of %s %s overflows", label,
                          name, dsv4_dtype_name(out->dtype), sh);
    }
    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2)
        return dsv4_error(DSV4_EFORMAT,
                          "%s: tensor \"%.200s\": data_offsets is not an array of 2 integers",
                          label, name);
    if (!get_u53(offs->child, &out->begin) || !get_u53(offs->child->next, &out->end))
        return dsv4_error(DSV4_EFORMAT,
                          "%s: tensor \"%.200s\": data_offsets are not non-negative integers",
                          label, name);
    if (out->end < out->begin)
        return dsv4_error(DSV4_EFORMAT, "%s: tensor \"%.200s\": data_offsets reversed [%llu, %llu]",
                          label, name, (unsigned long long)out->begin,
                          (unsigned long long)out->end);
    if (out->end - out->begin != nbytes) {
        /* the shape string costs a printf: built on this error path only */
        dsv4_shape_str(out->shape, out->ndim, sh, sizeof(sh));
        return dsv4_error(DSV4_EMISMATCH,
                          "%s: tensor \"%.200s\": %s %s needs %llu bytes but data_offsets "
                          "[%llu, %llu] span %llu",
                          label, name, dsv4_dtype_name(out->dtype), sh, (unsigned long long)nbytes,
                          (unsigned long long)out->begin, (unsigned long long)out->end,
                          (unsigned long long)(out->end - out->begin));
    }
    return 0;
}

static int parse_metadata(const char *label, const cJSON *m, struct dsv4_st_file *f, char *pool,
                          size_t cap, size_t *used)
{
    const cJSON *c;
    size_t n = 0;

    if (cJSON_IsNull(m))
        return 0;
    if (!cJSON_IsObject(m))
        return dsv4_error(DSV4_EFORMAT, "%s: __metadata__ is not an object", label);
    cJSON_ArrayForEach(c, m) n++;
    f->meta_k = calloc(n + 1, sizeof(*f->meta_k));
    f->meta_v = calloc(n + 1, sizeof(*f->meta_v));
    if (!f->meta_k || !f->meta_v)
        return dsv4_error(DSV4_ENOMEM, "%s: out of memory for metadata", label);
    cJSON_ArrayForEach(c, m)
    {
        if (!cJSON_IsString(c))
            return dsv4_error(DSV4_EFORMAT, "%s: __metadata__ value of \"%.200s\" is not a string",
                              label, c->string);
        for (size_t i = 0; i < f->n_meta; i++)
            if (!strcmp(f->meta_k[i], c->string))
                return dsv4_error(DSV4_EFORMAT, "%s: duplicate __metadata__ key \"%.200s\"", label,
                                  c->string);
        f->meta_k[f->n_meta] = pool_add(pool, cap, used, c->string);
        f->meta_v[f->n_meta] = pool_add(pool, cap, used, c->valuestring);
        if (!f->meta_k[f->n_meta] || !f->meta_v[f->n_meta])
            return dsv4_error(DSV4_EINTERNAL, "%s: string pool overflow", label);
        f->n_meta++;
    }
    return 0;
}

/* Parses `len` header bytes describing `data_len` data bytes; messages start
 * with `label` (the file path). */
static int st_parse(const char *label, const char *json, size_t len, uint64_t data_len,
                    struct dsv4_st_file **out)
{
    struct dsv4_st_file *f = NULL;
    struct entry *ents = NULL;
    cJSON *root = NULL;
    const cJSON *c, *meta = NULL;
    const char *end = NULL;
    size_t n = 0, used = 0, cap = len + 1, k;
    uint64_t pos = 0;
    int rc;

    *out = NULL;
    if (len > DSV4_ST_MAX_HEADER)
        return dsv4_error(DSV4_ERANGE, "%s: header of %zu bytes exceeds the %u-byte limit", label,
                          len, DSV4_ST_MAX_HEADER);
    if (len == 0 || json[0] != '{')
        return dsv4_error(DSV4_EFORMAT, "%s: header does not start with '{' (not JSON object)",
                          label);
    rc = check_bytes(label, (const uint8_t *)json, len);
    if (!rc)
        rc = check_numbers(label, json, len);
    if (rc)
        return rc;
    root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
    if (!root) {
        size_t at = end && end >= json && end <= json + len ? (size_t)(end - json) : 0;
        return dsv4_error(DSV4_EFORMAT, "%s: header is not valid JSON (error near byte %zu)", label,
                          at);
    }
    for (const char *p = end; p < json + len; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            rc = dsv4_error(DSV4_EFORMAT, "%s: header has trailing bytes after the JSON at %zu",
                            label, (size_t)(p - json));
            goto fail;
        }
    if (!cJSON_IsObject(root)) {
        rc = dsv4_error(DSV4_EFORMAT, "%s: header is not a JSON object", label);
        goto fail;
    }
    f = calloc(1, sizeof(*f));
    if (!f)
        goto nomem;
    f->pool = malloc(cap);
    if (!f->pool)
        goto nomem;
    cJSON_ArrayForEach(c, root)
    {
        if (!strcmp(c->string, "__metadata__")) {
            if (meta) {
                rc = dsv4_error(DSV4_EFORMAT, "%s: duplicate __metadata__", label);
                goto fail;
            }
            meta = c;
        } else {
            n++;
        }
    }
    if (n > UINT32_MAX / 4) {
        rc = dsv4_error(DSV4_ERANGE, "%s: too many tensors (%zu)", label, n);
        goto fail;
    }
    if (meta) {
        rc = parse_metadata(label, meta, f, f->pool, cap, &used);
        if (rc)
            goto fail;
    }
    ents = calloc(n + 1, sizeof(*ents));
    if (!ents)
        goto nomem;
    k = 0;
    cJSON_ArrayForEach(c, root)
    {
        if (c == meta)
            continue;
        ents[k].name = pool_add(f->pool, cap, &used, c->string);
        if (!ents[k].name) {
            rc = dsv4_error(DSV4_EINTERNAL, "%s: string pool overflow", label);
            goto fail;
        }
        rc = parse_entry(label, c, &ents[k]);
        if (rc)
            goto fail;
        k++;
    }
    qsort(ents, n, sizeof(*ents), cmp_entry);
    f->n = n;
    f->t = calloc(n + 1, sizeof(*f->t));
    f->begin = calloc(n + 1, sizeof(*f->begin));
    if (!f->t || !f->begin)
        goto nomem;
    for (size_t i = 0; i < n; i++) {
        struct dsv4_tensor *t = &f->t[i];
        t->name = ents[i].name;
        t->dtype = ents[i].dtype;
        t->ndim = ents[i].ndim;
        memcpy(t->shape, ents[i].shape, sizeof(t->shape));
        t->nbytes = ents[i].end - ents[i].begin;
        f->begin[i] = ents[i].begin;
    }
    rc = hash_init(&f->hash, n);
    if (rc)
        goto nomem;
    for (size_t i = 0; i < n; i++)
        if (hash_insert(&f->hash, &f->t[0].name, sizeof(f->t[0]), (uint32_t)i) >= 0) {
            rc = dsv4_error(DSV4_EFORMAT, "%s: duplicate tensor name \"%.200s\"", label,
                            f->t[i].name);
            goto fail;
        }
    for (size_t i = 0; i < n; i++) {
        const struct entry *e = &ents[i];
        if (e->end > data_len) {
            rc = dsv4_error(DSV4_ERANGE,
                            "%s: tensor \"%.200s\": data_offsets [%llu, %llu] past the end of "
                            "the %llu-byte data section (truncated file?)",
                            label, e->name, (unsigned long long)e->begin,
                            (unsigned long long)e->end, (unsigned long long)data_len);
            goto fail;
        }
        if (e->begin < pos) {
            rc = dsv4_error(DSV4_EFORMAT,
                            "%s: tensor \"%.200s\": data_offsets [%llu, %llu] overlap \"%.200s\" "
                            "which ends at %llu",
                            label, e->name, (unsigned long long)e->begin,
                            (unsigned long long)e->end, ents[i - 1].name, (unsigned long long)pos);
            goto fail;
        }
        if (e->begin > pos) {
            rc = dsv4_error(DSV4_EFORMAT,
                            "%s: tensor \"%.200s\": hole of %llu bytes before data_offsets "
                            "[%llu, %llu] (tensors must be contiguous)",
                            label, e->name, (unsigned long long)(e->begin - pos),
                            (unsigned long long)e->begin, (unsigned long long)e->end);
            goto fail;
        }
        pos = e->end;
    }
    if (pos != data_len) {
        rc = dsv4_error(DSV4_EFORMAT,
                        "%s: tensors cover %llu bytes but the data section has %llu "
                        "(trailing bytes)",
                        label, (unsigned long long)pos, (unsigned long long)data_len);
        goto fail;
    }
    f->data_len = data_len;
    free(ents);
    cJSON_Delete(root);
    *out = f;
    return 0;
nomem:
    rc = dsv4_error(DSV4_ENOMEM, "%s: out of memory parsing the header", label);
fail:
    free(ents);
    cJSON_Delete(root);
    dsv4_st_close(f);
    return rc;
}

int dsv4_st_parse_header(const char *json, size_t len, uint64_t data_len, struct dsv4_st_file **out)
{
    return st_parse("<header>", json, len, data_len, out);
}

static int open_buffer(const char *label, const uint8_t *buf, size_t len, struct dsv4_st_file **out)
{
    uint64_t hlen = 0;
    struct dsv4_st_file *f;
    int rc;

    *out = NULL;
    if (len < 8)
        return dsv4_error(DSV4_EFORMAT,
                          "%s: file is %zu bytes, shorter than the 8-byte header length "
                          "(truncated?)",
                          label, len);
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | buf[i];
    if (hlen > DSV4_ST_MAX_HEADER)
        return dsv4_error(DSV4_ERANGE, "%s: header length %llu exceeds the %u-byte limit", label,
                          (unsigned long long)hlen, DSV4_ST_MAX_HEADER);
    if (hlen > len - 8)
        return dsv4_error(DSV4_EFORMAT,
                          "%s: header length %llu runs past the end of the %zu-byte file", label,
                          (unsigned long long)hlen, len);
    rc = st_parse(label, (const char *)buf + 8, (size_t)hlen, len - 8 - hlen, &f);
    if (rc)
        return rc;
    f->data = buf + 8 + hlen;
    f->file_size = len;
    for (size_t i = 0; i < f->n; i++)
        f->t[i].data = (void *)(f->data + f->begin[i]); /* read-only view (tensor.h) */
    f->path = strdup(label);
    if (!f->path) {
        dsv4_st_close(f);
        return dsv4_error(DSV4_ENOMEM, "%s: out of memory", label);
    }
    *out = f;
    return 0;
}

int dsv4_st_open_memory(const void *buf, size_t len, struct dsv4_st_file **out)
{
    return open_buffer("<memory>", buf, len, out);
}

int dsv4_st_open(const char *path, struct dsv4_st_file **out)
{
    struct stat st;
    void *map = NULL;
    int fd, rc;

    *out = NULL;
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return dsv4_error(errno == ENOENT ? DSV4_ENOENT : DSV4_EIO, "%s: cannot open: %s", path,
                          strerror(errno));
    if (fstat(fd, &st) < 0) {
        rc = dsv4_error(DSV4_EIO, "%s: fstat: %s", path, strerror(errno));
        goto done;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = dsv4_error(DSV4_EFORMAT, "%s: not a regular file", path);
        goto done;
    }
    if (st.st_size < 8) {
        rc = dsv4_error(DSV4_EFORMAT,
                        "%s: file is %lld bytes, shorter than the 8-byte header length "
                        "(truncated?)",
                        path, (long long)st.st_size);
        goto done;
    }
    map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) {
        rc = dsv4_error(DSV4_EIO, "%s: mmap of %lld bytes: %s", path, (long long)st.st_size,
                        strerror(errno));
        goto done;
    }
    rc = open_buffer(path, map, (size_t)st.st_size, out);
    if (rc) {
        munmap(map, (size_t)st.st_size);
        goto done;
    }
    (*out)->map = map;
    (*out)->map_len = (size_t)st.st_size;
done:
    close(fd);
    return rc;
}

/* ---------------------------------------------------------------- checkpoints */

struct ckpt_ref {
    const char *name; /* first: hashed through the same helpers */
    const struct dsv4_tensor *t;
    uint32_t shard;
};

struct dsv4_ckpt {
    char *dir;
    size_t n_shards;
    struct dsv4_st_file **shards;
    char **shard_names;
    size_t n;
    struct ckpt_ref *refs;
    struct name_hash hash;
};

void dsv4_ckpt_close(struct dsv4_ckpt *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->n_shards; i++) {
        dsv4_st_close(c->shards[i]);
        free(c->shard_names[i]);
    }
    free(c->shards);
    free(c->shard_names);
    free(c->refs);
    free(c->hash.slot);
    free(c->dir);
    free(c);
}

size_t dsv4_ckpt_count(const struct dsv4_ckpt *c)
{
    return c->n;
}

const struct dsv4_tensor *dsv4_ckpt_tensor(const struct dsv4_ckpt *c, size_t i)
{
    return i < c->n ? c->refs[i].t : NULL;
}

static long ckpt_lookup(const struct dsv4_ckpt *c, const char *name)
{
    return hash_find(&c->hash, &c->refs[0].name, sizeof(c->refs[0]), name);
}

const struct dsv4_tensor *dsv4_ckpt_find(const struct dsv4_ckpt *c, const char *name)
{
    long i = ckpt_lookup(c, name);

    return i < 0 ? NULL : c->refs[i].t;
}

const char *dsv4_ckpt_shard_of(const struct dsv4_ckpt *c, const char *name)
{
    long i = ckpt_lookup(c, name);

    return i < 0 ? NULL : c->shard_names[c->refs[i].shard];
}

size_t dsv4_ckpt_shard_count(const struct dsv4_ckpt *c)
{
    return c->n_shards;
}

const struct dsv4_st_file *dsv4_ckpt_shard(const struct dsv4_ckpt *c, size_t i)
{
    return i < c->n_shards ? c->shards[i] : NULL;
}

const char *dsv4_ckpt_dir(const struct dsv4_ckpt *c)
{
    return c->dir;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool file_exists(const char *path)
{
    struct stat st;

    return stat(path, &st) == 0;
}

static int add_shard_name(struct dsv4_ckpt *c, size_t *cap, const char *name)
{
    if (c->n_shards == *cap) {
        size_t nc = *cap ? 2 * *cap : 16;
        char **p = realloc(c->shard_names, nc * sizeof(*p));
        if (!p)
            return DSV4_ENOMEM;
        c->shard_names = p;
        *cap = nc;
    }
    c->shard_names[c->n_shards] = strdup(name);
    if (!c->shard_names[c->n_shards])
        return DSV4_ENOMEM;
    c->n_shards++;
    return 0;
}

/* Shard names of a directory without index: every *.safetensors, sorted. */
static int list_dir(struct dsv4_ckpt *c)
{
    DIR *d = opendir(c->dir);
    struct dirent *de;
    size_t cap = 0;
    int rc = 0;

    if (!d)
        return dsv4_error(errno == ENOENT ? DSV4_ENOENT : DSV4_EIO, "%s: cannot open directory: %s",
                          c->dir, strerror(errno));
    while ((de = readdir(d))) {
        size_t l = strlen(de->d_name);
        if (l <= 12 || strcmp(de->d_name + l - 12, ".safetensors"))
            continue;
        if (add_shard_name(c, &cap, de->d_name)) {
            rc = dsv4_error(DSV4_ENOMEM, "%s: out of memory", c->dir);
            break;
        }
    }
    closedir(d);
    if (!rc && c->n_shards == 0)
        rc = dsv4_error(DSV4_ENOENT,
                        "%s: no model.safetensors.index.json and no *.safetensors file", c->dir);
    if (!rc)
        qsort(c->shard_names, c->n_shards, sizeof(char *), cmp_str);
    return rc;
}

/* Reads the index: shard names (sorted) and the name -> shard map. */
static int read_index(struct dsv4_ckpt *c, const char *path, cJSON **map_out)
{
    char *text = NULL;
    size_t len = 0, cap = 0;
    cJSON *root = NULL, *map;
    const cJSON *e;
    int rc;

    *map_out = NULL;
    rc = dsv4_file_read(path, MAX_INDEX_BYTES, &text, &len);
    if (rc)
        return rc;
    root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!root || !cJSON_IsObject(root)) {
        rc = dsv4_error(DSV4_EFORMAT, "%s: not a JSON object", path);
        goto fail;
    }
    map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(map)) {
        rc = dsv4_error(DSV4_EFORMAT, "%s: no \"weight_map\" object", path);
        goto fail;
    }
    cJSON_ArrayForEach(e, map)
    {
        const char *s = e->valuestring;
        bool seen = false;
        if (!cJSON_IsString(e)) {
            rc = dsv4_error(DSV4_EFORMAT, "%s: weight_map[\"%.200s\"] is not a string", path,
                            e->string);
            goto fail;
        }
        if (!*s || strlen(s) > 255 || strchr(s, '/') || !strcmp(s, ".") || !strcmp(s, "..")) {
            rc = dsv4_error(DSV4_EFORMAT,
                            "%s: weight_map[\"%.200s\"] = \"%.200s\" is not a file name", path,
                            e->string, s);
            goto fail;
        }
        /* Shards are few (64): a linear scan over the distinct names is enough. */
        for (size_t i = c->n_shards; i-- > 0;)
            if (!strcmp(c->shard_names[i], s)) {
                seen = true;
                break;
            }
        if (!seen && add_shard_name(c, &cap, s)) {
            rc = dsv4_error(DSV4_ENOMEM, "%s: out of memory", path);
            goto fail;
        }
    }
    if (c->n_shards == 0) {
        rc = dsv4_error(DSV4_EFORMAT, "%s: weight_map is empty", path);
        goto fail;
    }
    qsort(c->shard_names, c->n_shards, sizeof(char *), cmp_str);
    *map_out = root;
    return 0;
fail:
    cJSON_Delete(root);
    return rc;
}

/* Checks the index against the shards: every entry names a tensor its shard
 * holds, every shard tensor is listed under its shard, no name twice. */
static int check_index(struct dsv4_ckpt *c, const char *path, const cJSON *root)
{
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(root, "weight_map"), *e;
    size_t n_map = 0;
    uint8_t *seen = calloc(c->n + 1, 1);

    if (!seen)
        return dsv4_error(DSV4_ENOMEM, "%s: out of memory", path);
    cJSON_ArrayForEach(e, map)
    {
        long i = ckpt_lookup(c, e->string);
        n_map++;
        if (i < 0) {
            free(seen);
            return dsv4_error(DSV4_EMISMATCH,
                              "%s: index assigns \"%.200s\" to %.200s, which does not hold it",
                              path, e->string, e->valuestring);
        }
        if (strcmp(c->shard_names[c->refs[i].shard], e->valuestring)) {
            free(seen);
            return dsv4_error(DSV4_EMISMATCH,
                              "%s: index assigns \"%.200s\" to %.200s but it is in %.200s", path,
                              e->string, e->valuestring, c->shard_names[c->refs[i].shard]);
        }
        if (seen[i]) {
            free(seen);
            return dsv4_error(DSV4_EFORMAT, "%s: duplicate weight_map entry \"%.200s\"", path,
                              e->string);
        }
        seen[i] = 1;
    }
    for (size_t i = 0; i < c->n; i++)
        if (!seen[i]) {
            free(seen);
            return dsv4_error(DSV4_EMISMATCH,
                              "%s: shard %.200s holds \"%.200s\", which the index does not list",
                              path, c->shard_names[c->refs[i].shard], c->refs[i].name);
        }
    free(seen);
    return 0;
}

/* A checkpoint of `path` alone (single = true) or of the directory `dir`. */
static int ckpt_open(const char *dir, bool single, struct dsv4_ckpt **out)
{
    struct dsv4_ckpt *c;
    char *path = NULL;
    cJSON *index = NULL;
    size_t k;
    int rc;

    *out = NULL;
    c = calloc(1, sizeof(*c));
    if (!c || !(c->dir = strdup(dir)) || !(path = malloc(strlen(dir) + PATH_EXTRA))) {
        rc = dsv4_error(DSV4_ENOMEM, "%s: out of memory", dir);
        goto fail;
    }
    snprintf(path, strlen(dir) + PATH_EXTRA, "%s/model.safetensors.index.json", dir);
    if (single) {
        size_t cap = 0;
        rc = add_shard_name(c, &cap, "model.safetensors");
        if (rc)
            rc = dsv4_error(DSV4_ENOMEM, "%s: out of memory", dir);
    } else if (file_exists(path)) {
        rc = read_index(c, path, &index);
    } else {
        snprintf(path, strlen(dir) + PATH_EXTRA, "%s/model.safetensors", dir);
        if (file_exists(path)) {
            size_t cap = 0;
            rc = add_shard_name(c, &cap, "model.safetensors");
            if (rc)
                rc = dsv4_error(DSV4_ENOMEM, "%s: out of memory", dir);
        } else {
            rc = list_dir(c);
        }
    }
    if (rc)
        goto fail;
    c->shards = calloc(c->n_shards, sizeof(*c->shards));
    if (!c->shards) {
        rc = dsv4_error(DSV4_ENOMEM, "%s: out of memory", dir);
        goto fail;
    }
    for (size_t s = 0; s < c->n_shards; s++) {
        if (single)
            snprintf(path, strlen(dir) + PATH_EXTRA, "%s", dir);
        else
            snprintf(path, strlen(dir) + PATH_EXTRA, "%s/%s", dir, c->shard_names[s]);
        if (index && !file_exists(path)) {
            rc = dsv4_error(DSV4_ENOENT,
                            "%s/model.safetensors.index.json names shard %.200s, which does not "
                            "exist",
                            dir, c->shard_names[s]);
            goto fail;
        }
        rc = dsv4_st_open(path, &c->shards[s]);
        if (rc)
            goto fail;
        if (c->n + c->shards[s]->n >= UINT32_MAX / 4) {
            rc = dsv4_error(DSV4_ERANGE, "%s: too many tensors", dir);
            goto fail;
        }
        c->n += c->shards[s]->n;
    }
    c->refs = calloc(c->n + 1, sizeof(*c->refs));
    if (!c->refs || hash_init(&c->hash, c->n)) {
        rc = dsv4_error(DSV4_ENOMEM, "%s: out of memory", dir);
        goto fail;
    }
    k = 0;
    for (size_t s = 0; s < c->n_shards; s++)
        for (size_t i = 0; i < c->shards[s]->n; i++, k++) {
            long prev;
            c->refs[k].t = &c->shards[s]->t[i];
            c->refs[k].name = c->refs[k].t->name;
            c->refs[k].shard = (uint32_t)s;
            prev = hash_insert(&c->hash, &c->refs[0].name, sizeof(c->refs[0]), (uint32_t)k);
            if (prev >= 0) {
                rc = dsv4_error(DSV4_EFORMAT, "%s: tensor \"%.200s\" is in both %.200s and %.200s",
                                dir, c->refs[k].name, c->shard_names[c->refs[prev].shard],
                                c->shard_names[s]);
                goto fail;
            }
        }
    if (index) {
        snprintf(path, strlen(dir) + PATH_EXTRA, "%s/model.safetensors.index.json", dir);
        rc = check_index(c, path, index);
        if (rc)
            goto fail;
    }
    cJSON_Delete(index);
    free(path);
    *out = c;
    return 0;
fail:
    cJSON_Delete(index);
    free(path);
    dsv4_ckpt_close(c);
    return rc;
}

int dsv4_ckpt_open(const char *dir, struct dsv4_ckpt **out)
{
    return ckpt_open(dir, false, out);
}

int dsv4_ckpt_open_file(const char *path, struct dsv4_ckpt **out)
{
    return ckpt_open(path, true, out);
}
