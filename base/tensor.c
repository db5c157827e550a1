/*
 * tensor.c - dtype table and small tensor helpers (see tensor.h).
 */
#include "dsv4-build.h"
#include "base/tensor.h"

#include <stdio.h>
#include <string.h>

static const struct {
    const char *name;
    size_t size;
} dtypes[DSV4_DTYPE_COUNT] = {
        [DSV4_DTYPE_INVALID] = {"INVALID", 0}, [DSV4_DTYPE_BOOL] = {"BOOL", 1},
        [DSV4_DTYPE_U8] = {"U8", 1},           [DSV4_DTYPE_I8] = {"I8", 1},
        [DSV4_DTYPE_I16] = {"I16", 2},         [DSV4_DTYPE_U16] = {"U16", 2},
        [DSV4_DTYPE_F16] = {"F16", 2},         [DSV4_DTYPE_BF16] = {"BF16", 2},
        [DSV4_DTYPE_I32] = {"I32", 4},         [DSV4_DTYPE_U32] = {"U32", 4},
        [DSV4_DTYPE_F32] = {"F32", 4},         [DSV4_DTYPE_I64] = {"I64", 8},
        [DSV4_DTYPE_U64] = {"U64", 8},         [DSV4_DTYPE_F64] = {"F64", 8},
        [DSV4_DTYPE_F8_E4M3] = {"F8_E4M3", 1}, [DSV4_DTYPE_F8_E5M2] = {"F8_E5M2", 1},
        [DSV4_DTYPE_F8_E8M0] = {"F8_E8M0", 1},
};

size_t dsv4_dtype_size(enum dsv4_dtype dt)
{
    if ((int)dt <= 0 || dt >= DSV4_DTYPE_COUNT)
        return 0;
    return dtypes[dt].size;
}

const char *dsv4_dtype_name(enum dsv4_dtype dt)
{
    if ((int)dt <= 0 || dt >= DSV4_DTYPE_COUNT)
        return "INVALID";
    return dtypes[dt].name;
}

enum dsv4_dtype dsv4_dtype_parse(const char *s, size_t len)
{
    for (int i = 1; i < DSV4_DTYPE_COUNT; i++)
        if (strlen(dtypes[i].name) == len && !memcmp(dtypes[i].name, s, len))
            return (enum dsv4_dtype)i;
    return DSV4_DTYPE_INVALID;
}

int64_t dsv4_tensor_numel(const struct dsv4_tensor *t)
{
    int64_t n = 1;

    for (int i = 0; i < t->ndim; i++)
        n *= t->shape[i];
    return n;
}

char *dsv4_shape_str(const int64_t *shape, int ndim, char *buf, size_t len)
{
    size_t off = 0;

    if (len == 0)
        return buf;
    buf[0] = '\0';
    off += (size_t)snprintf(buf + off, len - off, "[");
    for (int i = 0; i < ndim && off < len; i++)
        off += (size_t)snprintf(buf + off, len - off, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (off < len)
        snprintf(buf + off, len - off, "]");
    return buf;
}

int64_t dsv4_tensor_stride(const struct dsv4_tensor *t, int i)
{
    int set = 0;
    for (int d = 0; d < t->ndim; d++)
        set |= t->stride[d] != 0;
    if (set)
        return t->stride[i];
    int64_t s = 1;
    for (int d = t->ndim - 1; d > i; d--)
        s *= t->shape[d];
    return s;
}

int dsv4_tensor_contig(const struct dsv4_tensor *t)
{
    int64_t s = 1;
    for (int d = t->ndim - 1; d >= 0; d--) {
        if (dsv4_tensor_stride(t, d) != s && t->shape[d] != 1)
            return 0;
        s *= t->shape[d];
    }
    return 1;
}
