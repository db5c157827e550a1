/*
 * tensor.h - element types and the plain tensor view used across the engine.
 *
 * A dsv4_tensor describes bytes it does not own (an mmapped checkpoint, an
 * arena, device memory): data pointer, dtype, shape (row-major, contiguous,
 * outermost first) and byte size.  Packed FP4 tensors are described as they
 * are stored (I8/U8 with the last dimension halved); the model contract knows
 * their logical shape.
 */
#ifndef DSV4_TENSOR_H
#define DSV4_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#define DSV4_MAX_DIMS 8

enum dsv4_dtype {
    DSV4_DTYPE_INVALID = 0,
    DSV4_DTYPE_BOOL,
    DSV4_DTYPE_U8,
    DSV4_DTYPE_I8,
    DSV4_DTYPE_I16,
    DSV4_DTYPE_U16,
    DSV4_DTYPE_F16,
    DSV4_DTYPE_BF16,
    DSV4_DTYPE_I32,
    DSV4_DTYPE_U32,
    DSV4_DTYPE_F32,
    DSV4_DTYPE_I64,
    DSV4_DTYPE_U64,
    DSV4_DTYPE_F64,
    DSV4_DTYPE_F8_E4M3,
    DSV4_DTYPE_F8_E5M2,
    DSV4_DTYPE_F8_E8M0,
    DSV4_DTYPE_COUNT
};

/* Bytes per element (0 for INVALID). */
size_t dsv4_dtype_size(enum dsv4_dtype dt);

/* safetensors spelling ("BF16", "F8_E4M3", ...). */
const char *dsv4_dtype_name(enum dsv4_dtype dt);

/* Parses a safetensors dtype string of `len` bytes; DSV4_DTYPE_INVALID if unknown. */
enum dsv4_dtype dsv4_dtype_parse(const char *s, size_t len);

struct dsv4_tensor {
    const char *name; /* owned by whoever produced the view */
    enum dsv4_dtype dtype;
    int ndim; /* 0 for a scalar */
    int64_t shape[DSV4_MAX_DIMS];
    const void *data; /* nbytes readable bytes */
    uint64_t nbytes;
};

/* Product of the shape (1 for a scalar). */
int64_t dsv4_tensor_numel(const struct dsv4_tensor *t);

/* Writes "[3072, 3584]" into buf (always terminated); returns buf. */
char *dsv4_shape_str(const int64_t *shape, int ndim, char *buf, size_t len);

#endif
