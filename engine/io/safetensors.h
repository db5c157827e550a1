/*
 * safetensors.h - reading and writing safetensors files and multi-shard
 * checkpoint directories.
 *
 * File format: u64 little-endian header length N, N bytes of JSON
 * {"name": {"dtype": "BF16", "shape": [..], "data_offsets": [b, e]}, ...,
 *  "__metadata__": {"k": "v"}}, then the data section; offsets are relative
 * to the data section.  The reader mmaps the file read-only and validates the
 * whole header before exposing any view: every offset inside the data
 * section, no overlaps, byte size == numel * dtype size, known dtypes, unique
 * names, bounded header size.  A view never points outside the mapping.
 *
 * Tensors must tile the data section exactly (no holes, no trailing bytes),
 * as the Python package requires; see safetensors.c for every rule.
 *
 * Alignment: files written by the Python package and by our writer pad the
 * header so that the data section starts 8-byte aligned, but a view is only
 * as aligned as its offset; the reader accepts any alignment (like Python),
 * so consumers that need aligned loads must check or copy.
 *
 * The mapping is MAP_SHARED read-only: a file truncated or rewritten in
 * place while mapped faults (SIGBUS) on access, so a served checkpoint must
 * only ever be replaced by rename, which is what the writer does.
 *
 * Ownership: a dsv4_st_file owns its mapping and the name strings; the views
 * it hands out live until dsv4_st_close().  A dsv4_ckpt owns its shards.
 * Errors: DSV4_EFORMAT (malformed), DSV4_ERANGE (offsets past the data, header
 * too large), DSV4_EMISMATCH (byte size != shape, index vs shards),
 * DSV4_ENOTSUP (unknown dtype, too many dims), DSV4_ENOENT (missing file),
 * DSV4_EIO; the message names the file, the tensor and the numbers.
 */
#ifndef DSV4_SAFETENSORS_H
#define DSV4_SAFETENSORS_H

#include "base/tensor.h"

#include <stddef.h>
#include <stdint.h>

/* Headers larger than this are rejected (the real V4 shards use < 1 MiB). */
#define DSV4_ST_MAX_HEADER (100u << 20)

struct dsv4_st_file;

/* Opens and validates one .safetensors file. */
int dsv4_st_open(const char *path, struct dsv4_st_file **out);
void dsv4_st_close(struct dsv4_st_file *f);

size_t dsv4_st_count(const struct dsv4_st_file *f);
/* i-th tensor in data-offset order. */
const struct dsv4_tensor *dsv4_st_tensor(const struct dsv4_st_file *f, size_t i);
/* Tensor by name, NULL if absent. */
const struct dsv4_tensor *dsv4_st_find(const struct dsv4_st_file *f, const char *name);
/* Value of a __metadata__ key, NULL if absent. */
const char *dsv4_st_metadata(const struct dsv4_st_file *f, const char *key);
size_t dsv4_st_metadata_count(const struct dsv4_st_file *f);
void dsv4_st_metadata_at(const struct dsv4_st_file *f, size_t i, const char **key,
                         const char **value);
const char *dsv4_st_path(const struct dsv4_st_file *f);
uint64_t dsv4_st_file_size(const struct dsv4_st_file *f);
/* Offset of the i-th tensor from the start of the data section. */
uint64_t dsv4_st_offset(const struct dsv4_st_file *f, size_t i);

/*
 * Validates a whole safetensors file held in memory (length prefix, header,
 * data).  The views point into `buf`, which must outlive the file object;
 * messages name the file "<memory>".  Used by tests and fuzz targets.
 */
int dsv4_st_open_memory(const void *buf, size_t len, struct dsv4_st_file **out);

/*
 * Parses and validates a header held in memory: `json` (`len` bytes, not
 * necessarily terminated) describing a data section of `data_len` bytes.
 * Used by the reader and by the fuzz target.  On success *out is a file
 * object without a mapping (views have data == NULL).
 */
int dsv4_st_parse_header(const char *json, size_t len, uint64_t data_len,
                         struct dsv4_st_file **out);

/* ---------------------------------------------------------------- writer */

/*
 * Streaming writer.  Declare every tensor (and metadata) first, then call
 * dsv4_st_writer_begin(), which writes the header, then hand over each
 * tensor's bytes with dsv4_st_writer_write() in any order and in any number
 * of pieces (pieces of one tensor in order).  Data goes to "<path>.tmp";
 * dsv4_st_writer_commit() checks every byte was written, fsyncs and renames
 * to <path>.  dsv4_st_writer_abort() (or free without commit) removes the
 * temporary file: a final name never holds a half-written file.
 * The header is written as safetensors' Python package writes it: JSON with
 * "__metadata__" first then tensors in declaration order, padded with spaces
 * to a multiple of 8 bytes.  Data offsets follow declaration order, so a
 * caller that declares wider dtypes first gets naturally aligned views.
 * begin() reserves the whole file (fallocate) so that a full disk is
 * reported up front.  Any write failure removes the temporary file; ENOSPC,
 * EDQUOT and EFBIG (RLIMIT_FSIZE, when SIGXFSZ is ignored) give DSV4_ENOSPC.
 * dsv4_st_writer_commit() frees the writer whatever it returns; after a
 * failed call other than commit the writer only accepts abort().  Two
 * writers must not target the same path at once (they share "<path>.tmp").
 */
struct dsv4_st_writer;

int dsv4_st_writer_open(const char *path, struct dsv4_st_writer **out);
/* The same straight into an open file (e.g. a memfd; the fd is dup'ed, the caller keeps
 * its own): no temporary name, no rename, no fsync; `label` names it in messages. */
int dsv4_st_writer_open_fd(int fd, const char *label, struct dsv4_st_writer **out);
int dsv4_st_writer_metadata(struct dsv4_st_writer *w, const char *key, const char *value);
int dsv4_st_writer_declare(struct dsv4_st_writer *w, const char *name, enum dsv4_dtype dtype,
                           int ndim, const int64_t *shape);
int dsv4_st_writer_begin(struct dsv4_st_writer *w);
int dsv4_st_writer_write(struct dsv4_st_writer *w, const char *name, const void *data,
                         size_t nbytes);
int dsv4_st_writer_commit(struct dsv4_st_writer *w);
void dsv4_st_writer_abort(struct dsv4_st_writer *w);
/* Total bytes of tensor data declared so far. */
uint64_t dsv4_st_writer_data_size(const struct dsv4_st_writer *w);

/* Convenience: writes one whole file from views (declaration order kept). */
int dsv4_st_write_file(const char *path, const struct dsv4_tensor *tensors, size_t n,
                       const char *const *meta_kv, size_t n_meta);

/* ---------------------------------------------------------------- checkpoints */

/*
 * A checkpoint directory: either model.safetensors.index.json naming the
 * shards (weight_map), or a single model.safetensors, or, without an index,
 * every *.safetensors in the directory.  Every shard the index names must
 * exist and hold exactly the tensors the index assigns to it; names are
 * unique across shards.
 */
struct dsv4_ckpt;

int dsv4_ckpt_open(const char *dir, struct dsv4_ckpt **out);
/* A checkpoint made of one safetensors file (any path, e.g. /proc/self/fd/N of a memfd). */
int dsv4_ckpt_open_file(const char *path, struct dsv4_ckpt **out);
void dsv4_ckpt_close(struct dsv4_ckpt *c);
size_t dsv4_ckpt_count(const struct dsv4_ckpt *c);
const struct dsv4_tensor *dsv4_ckpt_tensor(const struct dsv4_ckpt *c, size_t i);
const struct dsv4_tensor *dsv4_ckpt_find(const struct dsv4_ckpt *c, const char *name);
/* File name (not path) of the shard that holds `name`, NULL if absent. */
const char *dsv4_ckpt_shard_of(const struct dsv4_ckpt *c, const char *name);
size_t dsv4_ckpt_shard_count(const struct dsv4_ckpt *c);
const struct dsv4_st_file *dsv4_ckpt_shard(const struct dsv4_ckpt *c, size_t i);
const char *dsv4_ckpt_dir(const struct dsv4_ckpt *c);

/*
 * Writes model.safetensors.index.json for the shards in `dir` (each given by
 * file name): weight_map of every tensor, metadata.total_size = sum of tensor
 * byte sizes.  Written to a temporary name and renamed.
 */
int dsv4_ckpt_write_index(const char *dir, const char *const *shard_files, size_t n);

#endif
