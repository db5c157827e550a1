/*
 * tensor.h - element types and the plain tensor view used across the project:
 * checkpoint tensors (engine/io) and the arguments of the kernel ops
 * (kernels/backend.h).
 *
 * A dsv4_tensor describes bytes it does not own (an mmapped checkpoint, an
 * arena, device memory): data pointer, dtype, shape (outermost first),
 * strides in elements (all zero: contiguous row-major), the device the bytes
 * live on, and the byte size when known.  Packed FP4 tensors are described as
 * they are stored (I8/U8 with the last dimension halved); the model contract
 * knows their logical shape.  Views of read-only memory (an mmapped
 * checkpoint) are never passed as op outputs.
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

/* Where a tensor's bytes live: host memory, or GPU g as DSV4_DEVICE_GPU(g). */
#define DSV4_DEVICE_HOST   0
#define DSV4_DEVICE_GPU(g) ((g) + 1)

struct dsv4_tensor {
    const char *name; /* owned by whoever produced the view; NULL for op arguments */
    enum dsv4_dtype dtype;
    int ndim; /* 0 for a scalar */
    int64_t shape[DSV4_MAX_DIMS];
    int64_t stride[DSV4_MAX_DIMS]; /* elements; all zero = contiguous row-major */
    void *data;                    /* nbytes bytes (0: not recorded) */
    uint64_t nbytes;
    int device; /* DSV4_DEVICE_HOST (0) or DSV4_DEVICE_GPU(g) */
};

/* Product of the shape (1 for a scalar). */
int64_t dsv4_tensor_numel(const struct dsv4_tensor *t);

/* Stride of dimension i in elements (the contiguous one when strides are unset). */
int64_t dsv4_tensor_stride(const struct dsv4_tensor *t, int i);

/* True when the view is contiguous row-major (strides unset or equal to the dense ones). */
int dsv4_tensor_contig(const struct dsv4_tensor *t);

/* Writes "[3072, 3584]" into buf (always terminated); returns buf. */
char *dsv4_shape_str(const int64_t *shape, int ndim, char *buf, size_t len);

#endif
