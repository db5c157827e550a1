/*
 * model.h - the weights of one rank of a DeepSeek-V4 model, bound from a
 * checkpoint directory in their stored formats (../shared/spec/model.md §2).
 *
 * Rank r of N holds (DESIGN.md §2): attention heads [r*H/N, (r+1)*H/N) of
 * wq_b, attn_sink and the matching wo_a groups; indexer heads of indexer
 * wq_b / weights_proj; routed experts [r*E/N, (r+1)*E/N); vocabulary rows
 * [r*ceil(V/N), ...) of embed and head; everything else (wq_a, wkv, wo_b,
 * compressors, norms, hc_*, router, shared expert) whole.  Matrices are
 * views (struct dsv4_qweight) into the mmapped checkpoint: FP8 E4M3 with
 * E8M0 128x128 block scales, MXFP4, NVFP4 (.scale or .weight_scale,
 * weight_scale_2 / input_scale as [1] or []), FP8 experts, BF16, F32.
 * Nothing large is dequantised.  Small vectors (norm weights, biases, ape,
 * sinks, hc_* scales/bases, tid2eid) are copied into FP32/int32 arrays so
 * the forward pass reads aligned native values; F32 matrices that happen to
 * be misaligned in the file (hc_*_fn) are copied too.
 *
 * Every tensor is checked on binding (presence, dtype, shape, scale layout,
 * tid2eid values < E); a checkpoint that does not match gets DSV4_EFORMAT
 * or DSV4_ENOENT naming the tensor.
 *
 * Ownership: dsv4_model owns its checkpoint handle (unless borrowed) and the
 * small copies; views stay valid until dsv4_model_close().  A model is
 * read-only after open and may be shared by threads.  The handle is opaque
 * outside engine/model/ (the weights' layout is model_int.h).
 */
#ifndef DSV4_MODEL_H
#define DSV4_MODEL_H

#include "engine/io/config.h"
#include "engine/io/safetensors.h"

#include <stdbool.h>
#include <stdint.h>

struct dsv4_model;

/*
 * Opens config.json + the checkpoint in `dir` and binds rank `rank` of `nranks`.
 * Fails (DSV4_ENOTSUP) when the split does not divide a dimension the formats need
 * aligned (heads, groups or FP8 row blocks).
 */
int dsv4_model_open(const char *dir, int rank, int nranks, struct dsv4_model **out);
/* The same over an already open checkpoint (borrowed; must outlive the model). */
int dsv4_model_bind(struct dsv4_ckpt *ckpt, const struct dsv4_config *cfg, int rank, int nranks,
                    struct dsv4_model **out);
void dsv4_model_close(struct dsv4_model *m);

/*
 * Weights that outlive the process (engine/model/shard.c): export_shard writes this rank's
 * share of the checkpoint (every tensor but other ranks' routed experts) and config_json
 * (the checkpoint's config.json text) as one safetensors image into fd, e.g. a memfd, and
 * reports its data bytes (progress, may be NULL, every 64 MiB); open_shard binds rank/nranks from such an image (fd stays the
 * caller's; the image is mapped read-only) without touching the checkpoint.
 */
typedef void (*dsv4_progress_fn)(void *ctx, uint64_t done, uint64_t total);
int dsv4_model_export_shard(const struct dsv4_model *m, const char *config_json, int fd,
                            dsv4_progress_fn progress, void *ctx, uint64_t *bytes);
int dsv4_model_open_shard(int fd, int rank, int nranks, struct dsv4_model **out);

/*
 * A copy of model m whose weights live in the memory of backend be (a GPU backend): every
 * matrix, scale and small vector uploaded into one allocation, and the routed-expert arrays
 * as device arrays of device pointers (what the moe op reads).  The forward pass, state
 * pool and step object of a device backend take the copy (dsv4_step_create makes one
 * itself when given a host model).  The copy borrows m (config, checkpoint, host tables),
 * which must outlive it; close it with dsv4_model_close before closing m.  DSV4_EINVAL for a
 * host backend, DSV4_ENOMEM when the weights do not fit.
 */
struct dsv4_backend;
int dsv4_model_upload(const struct dsv4_model *m, struct dsv4_backend *be, struct dsv4_model **out);
/*
 * As dsv4_model_upload, into memory another process can map (the backend's alloc_shared:
 * CUDA VMM on a GPU): *fd names it (the caller owns it).  A worker hands the descriptor to
 * its supervisor, and the next incarnation of the same rank maps the weights with
 * dsv4_model_import instead of uploading them.  DSV4_ENOTSUP when the backend has no
 * shareable memory.
 */
int dsv4_model_upload_shared(const struct dsv4_model *m, struct dsv4_backend *be, int *fd,
                             struct dsv4_model **out);
/*
 * The device copy of m from the shareable weights behind fd (made by
 * dsv4_model_upload_shared of the same model and rank, in any process): nothing is uploaded
 * but the expert pointer arrays.  The arena's header is checked first (size, a fingerprint
 * of the layout, rank, and that the upload completed): DSV4_EFORMAT or DSV4_EINVAL (the
 * allocation is gone or smaller) with a message, after which the caller uploads instead.
 * fd stays the caller's.
 */
int dsv4_model_import(const struct dsv4_model *m, struct dsv4_backend *be, int fd,
                      struct dsv4_model **out);
/* Where the weights live: DSV4_DEVICE_HOST (0) for a bound model, else the device of the
 * backend they were uploaded to (base/tensor.h). */
int dsv4_model_device(const struct dsv4_model *m);

const struct dsv4_config *dsv4_model_config(const struct dsv4_model *m);
int dsv4_model_rank(const struct dsv4_model *m);
int dsv4_model_nranks(const struct dsv4_model *m);
bool dsv4_model_has_mtp(const struct dsv4_model *m);
/* Bytes of this rank's weight views. */
uint64_t dsv4_model_weight_bytes(const struct dsv4_model *m);

/* Bytes of weights one decode token of batch 1 reads on this rank (top-k experts
 * counted at their average size, MTP excluded): the roofline numerator. */
uint64_t dsv4_model_decode_bytes(const struct dsv4_model *m);
/*
 * One decode step of `batch` tokens on this rank: the bytes of weights it reads (each of the
 * rank's routed experts at most once, picked by some token of the batch with probability
 * 1 - (1 - k/E)^batch) and the multiply-adds of its weight products (2 FLOP each; attention
 * over the context, norms and element-wise ops not counted).  The two numerators of a
 * batched roofline: step time >= max(bytes / bandwidth, 2 * macs / peak FLOP/s).
 */
void dsv4_model_decode_cost(const struct dsv4_model *m, int batch, double *bytes, double *macs);

/* Routed experts [*e0, *e1) of a layer held by this rank (tests, diagnostics). */
void dsv4_model_expert_range(const struct dsv4_model *m, int *e0, int *e1);
/* Expert ids tid2eid[token] of a hash-routed layer ([k]), NULL for other layers. */
const int32_t *dsv4_model_hash_ids(const struct dsv4_model *m, int layer, int32_t token);

#endif
