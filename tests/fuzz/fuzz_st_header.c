/*
 * fuzz_st_header.c - fuzz target of the safetensors header parser.
 *
 * Two forms of input, both of which must never crash or read out of bounds:
 *  - a whole file (u64 length prefix, header, data) through
 *    dsv4_st_open_memory(); accepted files are then walked: every view must
 *    lie inside the input, have numel * dtype size bytes, be found by name,
 *    and the views must tile the data section;
 *  - when the input starts with '{', the input itself as a bare header
 *    describing a 64-byte data section (dsv4_st_parse_header), so that the
 *    fuzzer can mutate JSON without keeping a length prefix consistent.
 */
#include "dsv4-build.h"
#include "base/dsv4.h"
#include "engine/io/safetensors.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void walk(const struct dsv4_st_file *f, const uint8_t *lo, const uint8_t *hi)
{
    volatile uint8_t sink = 0;
    uint64_t pos = 0;

    for (size_t i = 0; i < dsv4_st_count(f); i++) {
        const struct dsv4_tensor *t = dsv4_st_tensor(f, i);
        uint64_t numel = 1;
        for (int d = 0; d < t->ndim; d++)
            numel *= (uint64_t)t->shape[d];
        DSV4_ASSERT(t->ndim >= 0 && t->ndim <= DSV4_MAX_DIMS);
        DSV4_ASSERT(numel * dsv4_dtype_size(t->dtype) == t->nbytes);
        DSV4_ASSERT(dsv4_st_find(f, t->name) == t);
        DSV4_ASSERT(dsv4_st_offset(f, i) == pos);
        pos += t->nbytes;
        if (lo) {
            const uint8_t *p = t->data;
            DSV4_ASSERT(p >= lo && p + t->nbytes <= hi);
            if (t->nbytes)
                sink ^= p[0] ^ p[t->nbytes - 1];
        }
    }
    for (size_t i = 0; i < dsv4_st_metadata_count(f); i++) {
        const char *k, *v;
        dsv4_st_metadata_at(f, i, &k, &v);
        DSV4_ASSERT(dsv4_st_metadata(f, k) != NULL);
        sink ^= (uint8_t)strlen(v);
    }
    (void)sink;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct dsv4_st_file *f;

    if (dsv4_st_open_memory(data, size, &f) == 0) {
        DSV4_ASSERT(dsv4_st_file_size(f) == size);
        walk(f, data, data + size);
        dsv4_st_close(f);
    }
    if (size && data[0] == '{' && dsv4_st_parse_header((const char *)data, size, 64, &f) == 0) {
        walk(f, NULL, NULL);
        dsv4_st_close(f);
    }
    return 0;
}
