/*
 * formats.h - exact conversions between FP32 and the number formats of the
 * DeepSeek-V4 checkpoints (../shared/spec/formats.md, model.md §5), and the
 * block formats built from them.
 *
 * Scalar formats:
 *   BF16      1-8-7, conversion from FP32 rounds to nearest even, NaN stays NaN.
 *   E4M3      OCP float8_e4m3fn: bias 7, max +-448, no infinities, S.1111.111 = NaN.
 *   E8M0      unsigned exponent byte b: 2^(b-127); 0xFF = NaN.
 *   E2M1      FP4 nibble: bit 3 sign, bits 0-2 index into {0,.5,1,1.5,2,3,4,6}.
 * Encoders take a rounding mode: round-to-nearest-even (IEEE, what hardware
 * casts and ml_dtypes do) or ties-to-lower-magnitude (the published
 * MXFP4->NVFP4 recipe's table search).  Saturating encoders clamp finite
 * values to the largest magnitude; non-saturating E4M3 encodes overflow
 * (|x| > 464, i.e. past the rounding boundary of 448) as NaN like ml_dtypes.
 *
 * In TIES_LOWER mode a value that rounds to zero encodes +0 (the recipe
 * writes sign = (q < 0)); RNE keeps the sign of zero like ml_dtypes.  NaN
 * encodes to the E4M3 NaN of its sign; E2M1 has no NaN and encodes it as +0
 * (the activation quantisers carry NaN through their scales instead).
 *
 * Block formats (weights are [rows, cols], blocks run along cols = K; a
 * partial last block is allowed, so every count below is a ceiling):
 *   FP8 block  E4M3 [rows, cols] + E8M0 [ceil(rows/128), ceil(cols/128)]
 *   MXFP4      packed E2M1 [rows, ceil(cols/2)] (low nibble = even column)
 *              + E8M0 [rows, ceil(cols/32)]
 *   NVFP4      packed E2M1 [rows, ceil(cols/2)] + E4M3 [rows, ceil(cols/16)]
 *              + FP32 global scale
 */
#ifndef DSV4_FORMATS_H
#define DSV4_FORMATS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum dsv4_round {
    DSV4_ROUND_NEAREST_EVEN = 0,
    DSV4_ROUND_TIES_LOWER = 1 /* ties go to the smaller magnitude */
};

/* ---- BF16 */
float dsv4_bf16_to_f32(uint16_t h);
uint16_t dsv4_f32_to_bf16(float f);
/* FP32 value rounded to the nearest BF16 (RNE), returned as FP32. */
float dsv4_bf16_round(float f);

/* ---- E4M3 (float8_e4m3fn) */
float dsv4_e4m3_to_f32(uint8_t b);
/* The 256-entry decode table (index = code), valid for the process lifetime. */
const float *dsv4_e4m3_table(void);
uint8_t dsv4_f32_to_e4m3(float f, enum dsv4_round mode, bool saturate);

/* ---- E8M0 */
float dsv4_e8m0_to_f32(uint8_t b);
/* Exponent byte of a power of two (b = log2(x) + 127); x must be a normal
 * power of two or 2^-127 (asserted). */
uint8_t dsv4_e8m0_from_pow2(float x);

/* ---- E2M1 */
float dsv4_e2m1_to_f32(uint8_t nibble);
/* Nearest E2M1 (saturating at +-6); returns the nibble (sign in bit 3). */
uint8_t dsv4_f32_to_e2m1(float f, enum dsv4_round mode);

/*
 * Power-of-two scale of the reference activation quantizers:
 * 2^ceil(log2(amax / qmax)) computed as the reference kernel does (amax *
 * (1/qmax) in FP32, exponent bits, +1 when any mantissa bit is set).
 * NaN gives NaN, an infinite quotient +inf; callers floor amax so that the
 * quotient is never 0.
 */
float dsv4_pow2_scale(float amax, float qmax);

/* ---- dequantisation of weight blocks (rows r0..r0+nr-1, all columns) */

/* FP8 block: out[i][j] = e4m3(w[i][j]) * e8m0(s[i/128][j/128]). */
void dsv4_dequant_fp8_block(const uint8_t *w, const uint8_t *s, int64_t rows, int64_t cols,
                            int64_t r0, int64_t nr, float *out);
/* MXFP4: out[i][j] = e2m1(nib(i,j)) * e8m0(s[i][j/32]). */
void dsv4_dequant_mxfp4(const uint8_t *w, const uint8_t *s, int64_t rows, int64_t cols, int64_t r0,
                        int64_t nr, float *out);
/* NVFP4: out[i][j] = e2m1(nib(i,j)) * e4m3(s[i][j/16]) * scale2. */
void dsv4_dequant_nvfp4(const uint8_t *w, const uint8_t *s, float scale2, int64_t rows,
                        int64_t cols, int64_t r0, int64_t nr, float *out);

/* ---- activation quantisers (reference numerics, model.md §5.3, formats.md §2.1) */

/*
 * FP8 per token per `group` channels: amax = max(max|x|, 1e-4),
 * s = pow2_scale(amax, 448), q = e4m3_rne(clamp(x/s, -448, 448)).
 * q: [n] E4M3 codes; s: [ceil(n/group)] FP32 scales.
 */
void dsv4_act_quant_fp8(const float *x, int64_t n, int group, uint8_t *q, float *s);
/* Quantise-dequantise in place (the FP8 KV simulation, group 64). */
void dsv4_act_sim_fp8(float *x, int64_t n, int group);
/*
 * FP4 simulation per 32: amax = max(max|x|, 6*2^-126), s = pow2_scale(amax, 6),
 * x = e2m1_rne(clamp(x/s, -6, 6)) * s, in place.
 */
void dsv4_act_sim_fp4(float *x, int64_t n, int group);
/*
 * NVFP4 W4A4 activation quantiser per 16 (formats.md §2.1), global scale
 * gs = 1/input_scale: sf = e4m3_rne_sat(gs * (amax * (1/6))),
 * out_scale = 1 / (e4m3(sf) * (1/gs)) (0 when sf == 0), q = e2m1_rne(x *
 * out_scale) (saturating).  q: packed [ceil(n/2)] (an odd tail leaves the
 * last high nibble 0), sf: [ceil(n/16)] E4M3 codes.  Dequant: e2m1(q) *
 * e4m3(sf) / gs.  A NaN in a group makes its sf the NaN code.
 */
void dsv4_act_quant_nvfp4(const float *x, int64_t n, float input_scale, uint8_t *q, uint8_t *sf);

#endif
