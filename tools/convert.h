/*
 * convert.h - MXFP4 -> NVFP4 conversion of DeepSeek-V4 routed experts
 * (../shared/spec/formats.md §1.2-1.6): the per-block math on buffers, the
 * verification metrics, and the whole-checkpoint converter behind
 * `dsv4 convert`.
 *
 * Layouts (one expert matrix [rows, cols], blocks run along cols = K):
 *   MXFP4 source  w: packed E2M1 [rows, cols/2] (low nibble = even column),
 *                 s: E8M0 [rows, cols/32], value = e2m1 * 2^(s - 127).
 *   NVFP4 output  w: packed E2M1 [rows, cols/2] (same nibble order),
 *                 s: E4M3 [rows, cols/16], scale2: FP32 per tensor,
 *                 value = e2m1 * e4m3(s) * scale2.
 * cols must be a multiple of 32.  Each 32-block of the source becomes two
 * 16-blocks of the output sharing the source exponent.
 *
 * Two modes:
 *   LOSSLESS (default, §1.6): scale2 = 2^m with m = kmax - 8 (kmax = the
 *     largest source exponent of the tensor, or of w1 and w3 together, over
 *     non-zero E8M0 bytes; m clamped to >= -126 so scale2 stays a normal
 *     float; m = 0 when no byte is non-zero).  A 16-block with
 *     delta = k - m in [-9, 8] keeps its 8 packed bytes verbatim and gets the
 *     E4M3 code of 2^delta, so its dequantized values are bit-identical to
 *     the source.  A block whose 16 magnitudes are all zero is also copied
 *     verbatim (code 0).  Any other block is out of range (OOR): it is
 *     requantized from its amax (E4M3 scale rounded to nearest even, E2M1
 *     with ties rounded up, as the NVIDIA cast does) and counted.
 *   AMAX (§1.2, the published canada-quant recipe, reproducible byte for
 *     byte): scale2 = max(amax(w1), amax(w3)) / 2688 (w2: its own amax;
 *     1.0 when amax is 0); per 16-block raw = (amax16 / 6) / scale2 clamped
 *     to [0, 448] and rounded to the nearest E4M3 value with exact ties going
 *     to the lower value; elements x = src / (scale2 * s) (s = 1.0 when the
 *     code is 0) rounded to {0,.5,1,1.5,2,3,4,6} with ties to the lower
 *     magnitude, |x| > 6 saturating to 6, values rounding to 0 stored as +0.
 * All arithmetic of the recipe is FP32, in the order written above.
 *
 * Invariants: the row functions never read past the rows they are given and
 * never fail; bad inputs (NaN E8M0 byte 0xFF) are rejected by
 * dsv4_convert_scan() before any conversion.
 */
#ifndef DSV4_CONVERT_H
#define DSV4_CONVERT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum dsv4_convert_mode {
    DSV4_CONVERT_LOSSLESS = 0, /* closed-form power-of-two cast, §1.6 */
    DSV4_CONVERT_AMAX = 1      /* published amax recipe, §1.2 */
};

/* "lossless" / "amax". */
const char *dsv4_convert_mode_name(enum dsv4_convert_mode m);
/* Parses a mode name; DSV4_EINVAL with a message if unknown. */
int dsv4_convert_mode_parse(const char *s, enum dsv4_convert_mode *out);

/* Per-16-block counters of a conversion (summable). */
struct dsv4_convert_stats {
    uint64_t blocks;     /* 16-element output blocks */
    uint64_t exact;      /* lossless: copied verbatim (in range or all-zero) */
    uint64_t oor;        /* lossless: out of range, requantized */
    uint64_t saturated;  /* amax: elements with |x| > 6 clamped to 6 */
    uint64_t zero_scale; /* output blocks whose E4M3 code is 0 */
};

void dsv4_convert_stats_add(struct dsv4_convert_stats *acc, const struct dsv4_convert_stats *s);

/* ---------------------------------------------------------------- math on buffers */

/*
 * Checks the n E8M0 bytes of a source scale tensor and returns in *kmax the
 * largest exponent (byte - 127) over non-zero bytes, or INT32_MIN when every
 * byte is zero.  DSV4_EFORMAT (with the index) for a NaN byte 0xFF.
 */
int dsv4_convert_scan(const uint8_t *s, int64_t n, int32_t *kmax);

/*
 * Lossless global exponent m of a tensor (or w1/w3 pair) from the kmax of
 * each member (INT32_MIN = no non-zero scale): m = max(kmax) - 8, clamped to
 * >= -126; 0 when no member has a non-zero scale.  scale2 = 2^m exactly.
 */
int dsv4_convert_lossless_exp(int32_t kmax_a, int32_t kmax_b);
float dsv4_convert_pow2(int e); /* 2^e for -126 <= e <= 127, exact */

/*
 * Lossless cast of nrows rows: w [nrows, cols/2], s [nrows, cols/32] ->
 * ow [nrows, cols/2], os [nrows, cols/16], global exponent m (scale2 = 2^m).
 * Adds its block counts to *st.
 */
void dsv4_convert_lossless_rows(const uint8_t *w, const uint8_t *s, int64_t cols, int64_t nrows,
                                int m, uint8_t *ow, uint8_t *os, struct dsv4_convert_stats *st);

/*
 * Full-tensor amax of an MXFP4 matrix: max over elements of
 * |e2m1(nibble) * 2^(s - 127)| (FP32; a zero byte decodes literally as
 * 2^-127).  The scale bytes must have passed dsv4_convert_scan().
 */
float dsv4_convert_amax(const uint8_t *w, const uint8_t *s, int64_t cols, int64_t nrows);

/* Recipe global scale: max(amax_a, amax_b) / 2688 in FP32, 1.0 when that max is 0. */
float dsv4_convert_amax_scale2(float amax_a, float amax_b);

/*
 * Published-recipe requantization of nrows rows (layouts as above) with the
 * global scale scale2 from dsv4_convert_amax_scale2().  Adds to *st.
 */
void dsv4_convert_amax_rows(const uint8_t *w, const uint8_t *s, int64_t cols, int64_t nrows,
                            float scale2, uint8_t *ow, uint8_t *os, struct dsv4_convert_stats *st);

/* The recipe's E4M3 table search: nearest positive E4M3 code to v in
 * [0, 448] (v clamped first), exact ties to the lower code. */
uint8_t dsv4_convert_e4m3_ties_lower(float v);
/* The recipe's E2M1 rounding: nibble of the nearest grid value, ties to the
 * lower magnitude, saturating at 6, +0 for values rounding to zero. */
uint8_t dsv4_convert_e2m1_ties_lower(float x);

/* ---------------------------------------------------------------- verification */

/*
 * Comparison of a source tensor a (MXFP4) with its conversion b (NVFP4),
 * accumulated over rows and mergeable across threads.  Relative error
 * counts only elements with |a| > 1e-6.  Pairs with a NaN/Inf side are
 * counted in nonfinite and left out of every other metric.  Pearson moments
 * use pairwise merging (Chan et al.) in double.
 */
struct dsv4_convert_cmp {
    uint64_t total;     /* elements compared */
    uint64_t bit_equal; /* elements whose FP32 bit patterns are equal */
    uint64_t n;         /* finite pairs (the moments' count) */
    uint64_t nonfinite; /* NaN/Inf values on either side */
    double max_abs;     /* max |b - a| */
    double sum_rel;     /* sum of |b - a| / |a| over |a| > 1e-6 */
    uint64_t n_rel;
    double mean_a, mean_b, m2a, m2b, cab; /* running moments */
};

void dsv4_convert_cmp_init(struct dsv4_convert_cmp *c);
/* Accumulates n pairs of values. */
void dsv4_convert_cmp_add(struct dsv4_convert_cmp *c, const float *a, const float *b, int64_t n);
void dsv4_convert_cmp_merge(struct dsv4_convert_cmp *acc, const struct dsv4_convert_cmp *c);
/* Pearson correlation; 1 when both sides are constant and equal, 0 when
 * only one side is constant. */
double dsv4_convert_cmp_pearson(const struct dsv4_convert_cmp *c);
double dsv4_convert_cmp_mean_rel(const struct dsv4_convert_cmp *c);

/* ---------------------------------------------------------------- checkpoints */

struct dsv4_convert_progress {
    int shard, nshards; /* 1-based index of the shard being written */
    const char *shard_name;
    int64_t tensors_done, tensors_total; /* over the whole run */
    uint64_t bytes_done, bytes_total;    /* output bytes of this run */
    double elapsed_s;
    const char *phase; /* "convert", "verify", "skip" */
};

typedef void (*dsv4_convert_progress_fn)(void *arg, const struct dsv4_convert_progress *p);

/*
 * Names and scalar shapes of the converted experts' new tensors:
 *   CANADA (default)  <p>.scale (E4M3) and F32 [1] sidecars: the published
 *                     artifact's spelling, every source key kept
 *   NVIDIA            <p>.weight_scale (E4M3) and F32 [] (0-d) sidecars, as
 *                     NVIDIA's ModelOpt exports; <p>.scale is dropped
 * The bytes are the same; the loader accepts both.
 */
enum dsv4_convert_naming { DSV4_CONVERT_NAMING_CANADA = 0, DSV4_CONVERT_NAMING_NVIDIA = 1 };

/* "canada" / "nvidia"; parse gives DSV4_EINVAL with a message if unknown. */
const char *dsv4_convert_naming_name(enum dsv4_convert_naming n);
int dsv4_convert_naming_parse(const char *s, enum dsv4_convert_naming *out);

struct dsv4_convert_opts {
    enum dsv4_convert_mode mode;
    enum dsv4_convert_naming naming;
    int threads;                       /* worker threads; <= 0: all online cores */
    bool verify;                       /* dequantize and compare after writing */
    int64_t sample;                    /* verify only this many converted tensors (0 = all) */
    dsv4_convert_progress_fn progress; /* optional, called from the calling thread */
    void *progress_arg;
};

struct dsv4_convert_report {
    int shards;          /* shards of the checkpoint */
    int shards_written;  /* converted by this run */
    int shards_skipped;  /* already complete in DST */
    int64_t converted;   /* expert tensors (.weight) converted in written shards */
    int64_t passthrough; /* tensors copied byte for byte in written shards */
    uint64_t bytes_written;
    double seconds;
    struct dsv4_convert_stats stats;
    /* verification (opts.verify) */
    int64_t verified;          /* converted tensors compared */
    int64_t verified_bitexact; /* of those, every element bit-identical */
    int64_t pass_checked;      /* passthrough tensors compared byte for byte */
    int64_t pass_identical;
    struct dsv4_convert_cmp cmp; /* merged over every verified tensor */
    double min_pearson;          /* worst tensor */
};

/*
 * Converts the upstream MXFP4 checkpoint directory src into the NVFP4
 * artifact layout in dst (created if absent): trunk routed experts
 * layers.N.ffn.experts.E.w{1,2,3} are converted, every other tensor
 * (mtp.* included) is copied byte for byte; each shard keeps its file name
 * and key set plus `<p>.weight_scale_2` and `<p>.input_scale` (F32 [1],
 * 1.0) per converted `<p>`; `<p>.scale` becomes E4M3 [rows, cols/16] and
 * `<p>.weight` U8 (opts.naming NVIDIA: `<p>.weight_scale` instead of
 * `<p>.scale`, F32 [] sidecars).  Tensors of a shard are laid out in safetensors' own
 * order (dtype rank descending, then name).  Writes config.json
 * (quantization_config replaced, moe_quant_algo NVFP4), a new
 * model.safetensors.index.json and copies every other file.
 * Resumable: a shard already present under its final name (converted with
 * the same mode) is skipped.  Memory: one tensor per thread.
 */
int dsv4_convert_ckpt(const char *src, const char *dst, const struct dsv4_convert_opts *opts,
                      struct dsv4_convert_report *rep);

#endif
