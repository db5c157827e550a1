/*
 * linear_simd.h - the batch-1 and batched kernels of one SIMD set of the
 * CPU linear driver (cpu_int.h), written once for any vector width: the
 * includer (linear_avx2.c: 8 lanes, linear_avx512.c: 16) defines the
 * vector primitives listed below and gets `simd_rows`.  One source for
 * both widths so that the AVX-512 set is the AVX2 set with wider vectors,
 * not a second design.
 *
 * Why: batch invariance.  Output (i, o) must have the same bits whatever
 * the batch, the other rows and the thread split, so the batch-1 kernels
 * (fused decode + FMA, memory-bound) and the batched ones (decode a tile
 * into L1, register-blocked micro-kernel, compute-bound) must add the same
 * terms in the same order.  Both take their weight vectors from the same
 * decoders below (quad_f, quad_b, chunk_i, bit-identical values, tails
 * through the same zero-padded copies) and follow one order per family:
 *   LIN_FAM_F  acc = 0 (VW lanes); for each vector step s over the row,
 *              zero-padded to a multiple of QW = 4 * VW columns:
 *              acc = fma(x[s], w[s], acc); y = hsum(acc) * alpha.
 *   LIN_FAM_B  acc = 0; per 128-column block (zero-padded to 128): p = 0,
 *              p = fma(x[s], c[s], p) over its steps (c = E4M3 * 2^-C8_EXP, x
 *              scaled by 2^FP8_XEXP: see blk_factor),
 *              acc = blk_acc(acc, p, block scale); y = hsum(acc) * alpha.
 *   LIN_FAM_I  acc = 0; per chunk of 8 * VW columns (zero-padded): lane l
 *              gets the exact integer sum of 2a * 2w over columns 8l..8l+7
 *              of the chunk (half an NVFP4 block), acc = fma(float(sum),
 *              wscale * ascale, acc); y = hsum(acc) * alpha.
 * hsum is one fixed tree (v_hsum).  The batched path keeps each output's
 * accumulator vector in scratch between LIN_KC-column chunks, so chunking
 * does not change the order; products are exact or, for F32 inputs, the
 * same FMA on the same operands.
 *
 * Primitives the includer defines (SIMD = its target attribute; V float
 * vector, VI integer vector, VW lanes; MR_F / MR_I activation rows per
 * micro-kernel):
 *   v_zero v_load v_store v_set1 v_fma v_mul v_hsum v_cvti vi_load vi_store,
 *   v_hsum4 (four v_hsum results, same bits, in one __m128),
 *   dec_f32q / dec_bf16q / dec_c16q (4 * VW values or E4M3 codes -> 4
 *     vectors in column order; c16 = exact E4M3 value * 2^-C8_EXP), with
 *     C8_EXP and FP8_XEXP (the FP8 activations' scale, 2^FP8_XEXP),
 *   dec_fp4q (2 * VW packed E2M1 bytes and one scale per vector -> exact
 *     value * scale), i4_planes (4 * VW packed bytes -> uint8 2 * E2M1 + 12
 *     of the even and odd columns), i4_dot (int32 lane sums of wl * ae +
 *     wh * ao over 4 bytes per lane, minus the lane's correction),
 *     i4_wscale (VW / 2 E4M3 block scales -> one float (E4M3 * 2^-8) per
 *     lane, each twice).
 * W4A4 weights are offset to unsigned bytes (2w + 12 in 0..24) so that
 * PMADDUBSW takes them without sign fix-ups: sum (2w + 12) * 2a = sum 4wa +
 * 12 * sum 2a, and the second term, which depends on the activation row
 * only, is the lane correction the driver computes once per call (acorr).
 * No intermediate can saturate (pairs of 24 * 12 in 16 bits).
 *
 * Invariants: no allocation; reads stay inside the sizes implied by
 * rows/cols (partial quads and chunks are copied into zeroed stack
 * buffers, the odd column's spare nibble cleared); scratch is the
 * LIN_SCRATCH bytes per thread that the driver passes.
 */

#define QW (4 * VW) /* columns per quad: the decode unit */

#ifndef LIN_UNROLL
#define LIN_UNROLL _Pragma("GCC unroll 16")
#endif

#define ALWAYS __attribute__((always_inline))

/* E8M0 byte -> 2^(b-127) (0: 2^-127, a subnormal; 255: NaN), as dsv4_e8m0_to_f32, by table */
#define E8M0_(b)   ((b) == 0 ? 0x00400000u : (b) == 255 ? 0x7fc00000u : (uint32_t)(b) << 23)
#define E8M0_4(b)  E8M0_(b), E8M0_((b) + 1), E8M0_((b) + 2), E8M0_((b) + 3)
#define E8M0_16(b) E8M0_4(b), E8M0_4((b) + 4), E8M0_4((b) + 8), E8M0_4((b) + 12)
#define E8M0_64(b) E8M0_16(b), E8M0_16((b) + 16), E8M0_16((b) + 32), E8M0_16((b) + 48)
static const union {
    uint32_t u[256];
    float f[256];
} e8m0_tab = {{E8M0_64(0), E8M0_64(64), E8M0_64(128), E8M0_64(192)}};

static inline float e8m0f(uint8_t b)
{
    return e8m0_tab.f[b];
}

/* prefetch the lines `dist` bytes ahead of a stream read `qb` bytes per quad at byte offset
 * `off` (one hint per 64-byte line) */
SIMD static inline ALWAYS void pf_quad(const uint8_t *p, int64_t off, int qb, int64_t dist)
{
    if (qb >= 64) {
        for (int b = 0; b < qb; b += 64)
            _mm_prefetch((const char *)p + off + b + dist, _MM_HINT_T0);
    } else if ((off & 63) == 0) {
        _mm_prefetch((const char *)p + off + dist, _MM_HINT_T0);
    }
}

/* ---------------------------------------------------------------- decoders (shared by both paths) */

/* LIN_FAM_F: exact FP32 weights (block scale applied) of row o, columns k..k+QW-1
 * (k % QW == 0, k + QW <= cols).  t8: dsv4_e4m3_table(). */
SIMD static inline ALWAYS void quad_f_full(const struct dsv4_qweight *w, int fmt, const float *t8,
                                           int64_t o, int64_t k, V q[4])
{
    const int64_t K = w->cols;
    if (fmt == DSV4_WFMT_F32) {
        dec_f32q((const float *)w->w + o * K + k, q);
    } else if (fmt == DSV4_WFMT_BF16) {
        dec_bf16q((const uint16_t *)w->w + o * K + k, q);
    } else { /* MXFP4 (E8M0 per 32) or NVFP4 (E4M3 per 16, scale2 left to alpha) */
        const uint8_t *row = (const uint8_t *)w->w + o * ((K + 1) / 2);
        float s[4];
        if (fmt == DSV4_WFMT_MXFP4) {
            const uint8_t *sc = w->scale + o * ((K + 31) / 32);
            LIN_UNROLL
            for (int v = 0; v < 4; v++) /* k % QW == 0, VW <= 16: one block per vector */
                s[v] = e8m0f(sc[k / 32 + v * VW / 32]);
        } else {
            const uint8_t *sc = w->scale + o * ((K + 15) / 16);
            LIN_UNROLL
            for (int v = 0; v < 4; v++)
                s[v] = t8[sc[k / 16 + v * VW / 16]];
        }
        dec_fp4q(row + k / 2, s, q);
    }
}

/* The same for any quad: past cols through zero-padded copies (the odd column's spare
 * nibble cleared, scales of vectors past cols 0). */
SIMD static inline ALWAYS void quad_f(const struct dsv4_qweight *w, int fmt, const float *t8,
                                      int64_t o, int64_t k, V q[4])
{
    const int64_t K = w->cols;
    if (k + QW <= K) {
        quad_f_full(w, fmt, t8, o, k, q);
    } else if (fmt == DSV4_WFMT_F32) {
        float t[QW] = {0};
        memcpy(t, (const float *)w->w + o * K + k, (size_t)(K - k) * sizeof(float));
        dec_f32q(t, q);
    } else if (fmt == DSV4_WFMT_BF16) {
        uint16_t t[QW] = {0};
        memcpy(t, (const uint16_t *)w->w + o * K + k, (size_t)(K - k) * sizeof(uint16_t));
        dec_bf16q(t, q);
    } else {
        const int mx = fmt == DSV4_WFMT_MXFP4, bs = mx ? 32 : 16;
        const int64_t rb = (K + 1) / 2;
        const uint8_t *sc = w->scale + o * ((K + bs - 1) / bs);
        float s[4];
        for (int v = 0; v < 4; v++) {
            int64_t e = k + (int64_t)v * VW;
            s[v] = e >= K ? 0.0f : mx ? e8m0f(sc[e / 32]) : t8[sc[e / 16]];
        }
        uint8_t t[2 * VW] = {0};
        int64_t n = rb - k / 2;
        memcpy(t, (const uint8_t *)w->w + o * rb + k / 2, (size_t)n);
        if (K & 1)
            t[n - 1] &= 15; /* the spare high nibble of an odd row */
        dec_fp4q(t, s, q);
    }
}

/* LIN_FAM_B: c16 values (E4M3 * 2^-C8_EXP, no scale) of FP8 row o, columns k..k+QW-1, zero past cols */
SIMD static inline ALWAYS void quad_b(const struct dsv4_qweight *w, int64_t o, int64_t k, V q[4])
{
    const int64_t K = w->cols;
    const uint8_t *s = (const uint8_t *)w->w + o * K + k;
    if (k + QW <= K) {
        dec_c16q(s, q);
        return;
    }
    uint8_t t[QW] = {0};
    if (k < K)
        memcpy(t, s, (size_t)(K - k));
    dec_c16q(t, q);
}

/* Factor of an FP8 block.  The decoder gives c = E4M3 * 2^-C8_EXP and the activations are
 * x * 2^FP8_XEXP (the kernel set's fp8_xexp, applied when the job's activations are
 * prepared), so a block's partial sum is 2^-C8_D times the sum of x * E4M3 and its factor is
 * 2^(sb-127) * 2^C8_D.  Past 2^127 the folded factor would overflow, so `big` blocks multiply
 * by 2^C8_D (C8_DF) first.  Both ways are exact: every product and partial sum is the same
 * number times a power of two, the same bits as with unscaled values while nothing leaves
 * FP32's normal range (activations of the FP8 path are E4M3 times power-of-two scales). */
#define C8_D  (C8_EXP - FP8_XEXP)
#define C8_DF ((float)(UINT64_C(1) << C8_D)) /* 2^C8_D, exact */
struct blkf {
    float f;
    int big;
};

static inline struct blkf blk_factor(uint8_t sb)
{
    struct blkf b = {sb <= 254 - C8_D ? e8m0f(sb) * C8_DF : e8m0f(sb), sb > 254 - C8_D};
    return b;
}

SIMD static inline ALWAYS V blk_acc(V acc, V p, struct blkf b)
{
    if (b.big)
        p = v_mul(p, v_set1(C8_DF));
    return v_fma(p, v_set1(b.f), acc);
}

/* LIN_FAM_I: int8 planes and lane scales of NVFP4 row o, columns e..e+8*VW-1
 * (e % (8*VW) == 0, e + 8*VW <= cols) */
SIMD static inline ALWAYS void chunk_i_full(const struct dsv4_qweight *w, int64_t o, int64_t e,
                                            VI *wl, VI *wh, V *sw)
{
    const int64_t K = w->cols;
    i4_planes((const uint8_t *)w->w + o * ((K + 1) / 2) + e / 2, wl, wh);
    *sw = i4_wscale(w->scale + o * ((K + 15) / 16) + e / 16);
}

/* The same for any chunk, zero past cols */
SIMD static inline ALWAYS void chunk_i(const struct dsv4_qweight *w, int64_t o, int64_t e, VI *wl,
                                       VI *wh, V *sw)
{
    const int64_t K = w->cols, rb = (K + 1) / 2, nsc = (K + 15) / 16;
    if (e + 8 * VW <= K) {
        chunk_i_full(w, o, e, wl, wh, sw);
        return;
    }
    uint8_t t[4 * VW] = {0}, ts[VW / 2] = {0};
    int64_t n = rb - e / 2;
    memcpy(t, (const uint8_t *)w->w + o * rb + e / 2, (size_t)n);
    if (K & 1)
        t[n - 1] &= 15;
    memcpy(ts, w->scale + o * nsc + e / 16, (size_t)(nsc - e / 16));
    i4_planes(t, wl, wh);
    *sw = i4_wscale(ts);
}

/* ---------------------------------------------------------------- batch 1 */

/* rows per group of the FP32 batch-1 kernels: each row is one FMA chain, so a few hide the
 * FMA latency; more streams than that slow the hardware prefetchers down */
#ifndef GV
#define GV 2
#endif

/* gv (1 or GV) rows at a time, one accumulator each; a short last group repeats its first
 * row */
SIMD static inline ALWAYS void gemv_f_fmt(const struct lin_job *j, int fmt, int gv, int64_t r0,
                                          int64_t r1)
{
    const struct dsv4_qweight *w = j->w;
    const int64_t K = w->cols, kq = (K + QW - 1) / QW * QW;
    const int64_t kfull = K / QW * QW;
    const float *t8 = dsv4_e4m3_table(), *x = j->x;
    /* weight bytes per quad and per row, for the prefetch */
    const int qb = fmt == DSV4_WFMT_F32 ? 4 * QW : fmt == DSV4_WFMT_BF16 ? 2 * QW : QW / 2;
    const int64_t rowb = fmt == DSV4_WFMT_F32 ? 4 * K : fmt == DSV4_WFMT_BF16 ? 2 * K : (K + 1) / 2;
    /* rows are contiguous, so a group of short rows is one stream of gv * rowb bytes whose
     * leading edge is the last row's: prefetch LIN_PF past it (a distance of LIN_PF inside
     * each row would land in rows the group is reading already: 1 KiB rows of a BF16 head
     * ran at 13 GB/s instead of 17 from page-cache memory) */
    const int64_t pfd = rowb <= 2 * LIN_PF ? (gv - 1) * rowb + LIN_PF : LIN_PF;
    for (int64_t o0 = r0; o0 < r1; o0 += gv) {
        int ng = (int)DSV4_MIN((int64_t)gv, r1 - o0);
        int64_t o[GV];
        V acc[GV];
        for (int g = 0; g < gv; g++) {
            o[g] = o0 + (g < ng ? g : 0);
            acc[g] = v_zero();
        }
        int64_t k = 0;
        for (; k < kfull; k += QW) {
            V x0 = v_load(x + k), x1 = v_load(x + k + VW);
            V x2 = v_load(x + k + 2 * VW), x3 = v_load(x + k + 3 * VW);
            LIN_UNROLL
            for (int g = 0; g < gv; g++) {
                V q[4];
                pf_quad((const uint8_t *)w->w + o[g] * rowb, k / QW * qb, qb, pfd);
                quad_f_full(w, fmt, t8, o[g], k, q);
                acc[g] = v_fma(x0, q[0], acc[g]);
                acc[g] = v_fma(x1, q[1], acc[g]);
                acc[g] = v_fma(x2, q[2], acc[g]);
                acc[g] = v_fma(x3, q[3], acc[g]);
            }
        }
        for (; k < kq; k += QW) {
            V x0 = v_load(x + k), x1 = v_load(x + k + VW);
            V x2 = v_load(x + k + 2 * VW), x3 = v_load(x + k + 3 * VW);
            for (int g = 0; g < gv; g++) {
                V q[4];
                quad_f(w, fmt, t8, o[g], k, q);
                acc[g] = v_fma(x0, q[0], acc[g]);
                acc[g] = v_fma(x1, q[1], acc[g]);
                acc[g] = v_fma(x2, q[2], acc[g]);
                acc[g] = v_fma(x3, q[3], acc[g]);
            }
        }
        for (int g = 0; g < ng; g++)
            j->y[o0 + g] = v_hsum(acc[g]) * j->alpha;
    }
}

/* Rows of at most GV_SHORT bytes go one at a time: the out-of-order window overlaps the FMA
 * chains of consecutive rows, and a thread reading one stream (not GV rows side by side) kept
 * the memory busier (AMD EPYC family 25: the 1 KiB rows of a BF16 head at 24 GB/s instead of
 * 19, the read bandwidth being 24-25).  Longer rows need GV chains to hide the FMA latency. */
#define GV_SHORT 2048
SIMD static void gemv_f(const struct lin_job *j, int64_t r0, int64_t r1)
{
    int64_t K = j->w->cols;
    switch (j->w->fmt) {
    case DSV4_WFMT_F32:
        if (4 * K <= GV_SHORT)
            gemv_f_fmt(j, DSV4_WFMT_F32, 1, r0, r1);
        else
            gemv_f_fmt(j, DSV4_WFMT_F32, GV, r0, r1);
        break;
    case DSV4_WFMT_BF16:
        if (2 * K <= GV_SHORT)
            gemv_f_fmt(j, DSV4_WFMT_BF16, 1, r0, r1);
        else
            gemv_f_fmt(j, DSV4_WFMT_BF16, GV, r0, r1);
        break;
    case DSV4_WFMT_MXFP4:
        gemv_f_fmt(j, DSV4_WFMT_MXFP4, GV, r0, r1);
        break;
    default:
        gemv_f_fmt(j, DSV4_WFMT_NVFP4, GV, r0, r1);
        break;
    }
}

/* FP8 weights: GV rows of one 128-row scale group at a time */
SIMD static void gemv_b(const struct lin_job *j, int64_t r0, int64_t r1)
{
    const struct dsv4_qweight *w = j->w;
    const int64_t K = w->cols, nsb = (K + 127) / 128, kfull = K / 128 * 128;
    const float *x = j->x;
    /* short rows: past the group's leading edge, as in gemv_f_fmt */
    const int64_t pfd = K <= 2 * LIN_PF ? (GV - 1) * K + LIN_PF : LIN_PF;
    for (int64_t o0 = r0; o0 < r1; o0 += GV) {
        int ng = (int)DSV4_MIN((int64_t)GV, r1 - o0);
        const uint8_t *sc = w->scale + (o0 / 128) * nsb;
        int64_t o[GV];
        V acc[GV];
        for (int g = 0; g < GV; g++) {
            o[g] = o0 + (g < ng ? g : 0);
            acc[g] = v_zero();
        }
        for (int64_t b0 = 0; b0 < nsb * 128; b0 += 128) {
            V p[GV];
            for (int g = 0; g < GV; g++)
                p[g] = v_zero();
            if (b0 < kfull) {
                for (int g = 0; g < GV; g++) {
                    const char *s = (const char *)w->w + o[g] * K + b0 + pfd;
                    _mm_prefetch(s, _MM_HINT_T0);
                    _mm_prefetch(s + 64, _MM_HINT_T0);
                }
                for (int64_t k = b0; k < b0 + 128; k += QW) {
                    V x0 = v_load(x + k), x1 = v_load(x + k + VW);
                    V x2 = v_load(x + k + 2 * VW), x3 = v_load(x + k + 3 * VW);
                    LIN_UNROLL
                    for (int g = 0; g < GV; g++) {
                        V q[4];
                        dec_c16q((const uint8_t *)w->w + o[g] * K + k, q);
                        p[g] = v_fma(x0, q[0], p[g]);
                        p[g] = v_fma(x1, q[1], p[g]);
                        p[g] = v_fma(x2, q[2], p[g]);
                        p[g] = v_fma(x3, q[3], p[g]);
                    }
                }
            } else {
                for (int64_t k = b0; k < b0 + 128; k += QW) {
                    V x0 = v_load(x + k), x1 = v_load(x + k + VW);
                    V x2 = v_load(x + k + 2 * VW), x3 = v_load(x + k + 3 * VW);
                    for (int g = 0; g < GV; g++) {
                        V q[4];
                        quad_b(w, o[g], k, q);
                        p[g] = v_fma(x0, q[0], p[g]);
                        p[g] = v_fma(x1, q[1], p[g]);
                        p[g] = v_fma(x2, q[2], p[g]);
                        p[g] = v_fma(x3, q[3], p[g]);
                    }
                }
            }
            struct blkf bf = blk_factor(sc[b0 / 128]);
            for (int g = 0; g < GV; g++)
                acc[g] = blk_acc(acc[g], p[g], bf);
        }
        for (int g = 0; g < ng; g++)
            j->y[o0 + g] = v_hsum(acc[g]) * j->alpha;
    }
}

/* NVFP4 W4A4: one chunk of row o into its accumulator */
SIMD static inline ALWAYS V gemv_i_chunk(const struct lin_job *j, int64_t o, int64_t e, int full,
                                         V acc)
{
    VI ae = vi_load(j->qe + e / 2), ao = vi_load(j->qo + e / 2), ac = vi_load(j->acorr + e / 8);
    VI wl, wh;
    V sw;
    if (full)
        chunk_i_full(j->w, o, e, &wl, &wh, &sw);
    else
        chunk_i(j->w, o, e, &wl, &wh, &sw);
    VI s = i4_dot(wl, wh, ae, ao, ac);
    return v_fma(v_cvti(s), v_mul(sw, v_load(j->sfa2 + e / 8)), acc);
}

/* one row at a time: a single stream per thread suits the hardware prefetchers, and the
 * int8 activations are cheap to reload from L1 */
SIMD static void gemv_i(const struct lin_job *j, int64_t r0, int64_t r1)
{
    const struct dsv4_qweight *w = j->w;
    const int64_t K = w->cols, rb = (K + 1) / 2, kfull = K / (16 * VW) * (16 * VW);
    for (int64_t o = r0; o < r1; o++) {
        const uint8_t *row = (const uint8_t *)w->w + o * rb;
        V acc = v_zero();
        int64_t e = 0;
        for (; e < kfull; e += 16 * VW) {
            _mm_prefetch((const char *)row + e / 2 + LIN_PF, _MM_HINT_T0);
            if (8 * VW > 64) /* bytes per iteration */
                _mm_prefetch((const char *)row + e / 2 + 64 + LIN_PF, _MM_HINT_T0);
            acc = gemv_i_chunk(j, o, e, 1, acc);
            acc = gemv_i_chunk(j, o, e + 8 * VW, 1, acc);
        }
        for (; e < K; e += 8 * VW)
            acc = gemv_i_chunk(j, o, e, e + 8 * VW <= K, acc);
        j->y[o] = v_hsum(acc) * j->alpha;
    }
}

/* W4A4 for a few activation rows (m <= LIN_FEW_I: a routed expert's tokens in a decode
 * step): each weight chunk decoded once, in registers, and applied to every row, instead of
 * a tile decoded into scratch for a micro-kernel that would run over only m rows.  nw (1 or
 * 2) weight rows at a time, each activation chunk loaded once for all of them: two for m <= 3
 * (AMD EPYC family 25, 64 experts' 384 x 512 products on one thread: 5% faster at m = 3,
 * 5-10% at m = 2; at m = 4 the extra accumulators leave too few registers to gain much).
 * The same terms in the same order as gemv_i and mk_i (the same bits). */
#define LIN_FEW_I 6
SIMD static inline ALWAYS void gemv_i_m(const struct lin_job *j, int64_t r0, int64_t r1, int m,
                                        int nw)
{
    const struct dsv4_qweight *w = j->w;
    const int64_t K = w->cols, rb = (K + 1) / 2, kx = j->kx;
    const int8_t *qe = j->qe, *qo = j->qo;
    const int32_t *acr = j->acorr;
    const float *sfa = j->sfa2;
    for (int64_t o = r0; o + nw <= r1; o += nw) {
        const uint8_t *row = (const uint8_t *)w->w + o * rb;
        V acc[2][LIN_FEW_I];
        LIN_UNROLL
        for (int q = 0; q < nw; q++) {
            LIN_UNROLL
            for (int i = 0; i < m; i++)
                acc[q][i] = v_zero();
        }
        for (int64_t e = 0; e < K; e += 8 * VW) {
            VI wl[2], wh[2];
            V sw[2];
            LIN_UNROLL
            for (int q = 0; q < nw; q++) {
                _mm_prefetch((const char *)row + q * rb + e / 2 + LIN_PF, _MM_HINT_T0);
                if (e + 8 * VW <= K)
                    chunk_i_full(w, o + q, e, &wl[q], &wh[q], &sw[q]);
                else
                    chunk_i(w, o + q, e, &wl[q], &wh[q], &sw[q]);
            }
            LIN_UNROLL
            for (int i = 0; i < m; i++) {
                VI ae = vi_load(qe + i * (kx / 2) + e / 2);
                VI ao = vi_load(qo + i * (kx / 2) + e / 2);
                VI ac = vi_load(acr + i * (kx / 8) + e / 8);
                V sa = v_load(sfa + i * (kx / 8) + e / 8);
                LIN_UNROLL
                for (int q = 0; q < nw; q++)
                    acc[q][i] = v_fma(v_cvti(i4_dot(wl[q], wh[q], ae, ao, ac)), v_mul(sw[q], sa),
                                      acc[q][i]);
            }
        }
        LIN_UNROLL
        for (int q = 0; q < nw; q++) {
            LIN_UNROLL
            for (int i = 0; i < m; i++)
                j->y[i * j->ldy + o + q] = v_hsum(acc[q][i]) * j->alpha;
        }
    }
}

/* m <= 3: pairs of weight rows, then the odd one left */
SIMD static inline ALWAYS void gemv_i_m2(const struct lin_job *j, int64_t r0, int64_t r1, int m)
{
    int64_t r = r0 + (r1 - r0) / 2 * 2;
    gemv_i_m(j, r0, r, m, 2);
    gemv_i_m(j, r, r1, m, 1);
}

SIMD static void gemv_i_few(const struct lin_job *j, int64_t r0, int64_t r1)
{
    switch (j->m) {
    case 2:
        gemv_i_m2(j, r0, r1, 2);
        break;
    case 3:
        gemv_i_m2(j, r0, r1, 3);
        break;
    case 4:
        gemv_i_m(j, r0, r1, 4, 1);
        break;
    case 5:
        gemv_i_m(j, r0, r1, 5, 1);
        break;
    default:
        gemv_i_m(j, r0, r1, 6, 1);
        break;
    }
}

/* ---------------------------------------------------------------- batched: tiles */

/* tile row strides: floats of LIN_FAM_F/B; bytes of LIN_FAM_I ([wl | wh] KC/2 bytes each,
 * then KC/8 lane scales) */
#define TROW_I (LIN_KC + LIN_KC / 8 * (int)sizeof(float))

/* rows t0..t0+nr-1, columns k0..k0+lenp-1 of the tile */
SIMD static inline ALWAYS void decode_f_fmt(const struct dsv4_qweight *w, int fmt, int64_t t0,
                                            int nr, int64_t k0, int lenp, float *wt)
{
    const float *t8 = dsv4_e4m3_table();
    for (int r = 0; r < nr; r++)
        for (int k = 0; k < lenp; k += QW) {
            V q[4];
            quad_f(w, fmt, t8, t0 + r, k0 + k, q);
            LIN_UNROLL
            for (int v = 0; v < 4; v++)
                v_store(wt + r * LIN_TROW + k + v * VW, q[v]);
        }
}

SIMD static void decode_f(const struct dsv4_qweight *w, int64_t t0, int nr, int64_t k0, int lenp,
                          float *wt)
{
    switch (w->fmt) {
    case DSV4_WFMT_F32:
        decode_f_fmt(w, DSV4_WFMT_F32, t0, nr, k0, lenp, wt);
        break;
    case DSV4_WFMT_BF16:
        decode_f_fmt(w, DSV4_WFMT_BF16, t0, nr, k0, lenp, wt);
        break;
    case DSV4_WFMT_MXFP4:
        decode_f_fmt(w, DSV4_WFMT_MXFP4, t0, nr, k0, lenp, wt);
        break;
    default:
        decode_f_fmt(w, DSV4_WFMT_NVFP4, t0, nr, k0, lenp, wt);
        break;
    }
}

SIMD static void decode_b(const struct dsv4_qweight *w, int64_t t0, int nr, int64_t k0, int lenp,
                          float *wt)
{
    for (int r = 0; r < nr; r++)
        for (int k = 0; k < lenp; k += QW) {
            V q[4];
            quad_b(w, t0 + r, k0 + k, q);
            LIN_UNROLL
            for (int v = 0; v < 4; v++)
                v_store(wt + r * LIN_TROW + k + v * VW, q[v]);
        }
}

SIMD static void decode_i(const struct dsv4_qweight *w, int64_t t0, int nr, int64_t k0, int lenp,
                          uint8_t *wt)
{
    for (int r = 0; r < nr; r++) {
        uint8_t *b = wt + r * TROW_I;
        float *sw = (float *)(b + LIN_KC);
        for (int e = 0; e < lenp; e += 8 * VW) {
            VI wl, wh;
            V s;
            chunk_i(w, t0 + r, k0 + e, &wl, &wh, &s);
            vi_store(b + e / 2, wl);
            vi_store(b + LIN_KC / 2 + e / 2, wh);
            v_store(sw + e / 8, s);
        }
    }
}

/*
 * Micro-kernels: mr activation rows (stride xs) x LIN_NR tile rows (wr[r]: offsets of the
 * rows to use, a short tile repeats row 0) over lenp columns; ab[i * LIN_NR + r] holds the
 * accumulator vectors between chunks (first: start from zero).
 */
SIMD static inline ALWAYS void mk_f(int mr, const float *x, int64_t xs, const float *wt,
                                    const int *wr, int lenp, float *ab, int first)
{
    V acc[MR_F][LIN_NR];
    LIN_UNROLL
    for (int i = 0; i < mr; i++) {
        LIN_UNROLL
        for (int r = 0; r < LIN_NR; r++)
            acc[i][r] = first ? v_zero() : v_load(ab + (i * LIN_NR + r) * VW);
    }
    for (int k = 0; k < lenp; k += VW) {
        V xv[MR_F];
        LIN_UNROLL
        for (int i = 0; i < mr; i++)
            xv[i] = v_load(x + i * xs + k);
        LIN_UNROLL
        for (int r = 0; r < LIN_NR; r++) {
            V wv = v_load(wt + wr[r] + k);
            LIN_UNROLL
            for (int i = 0; i < mr; i++)
                acc[i][r] = v_fma(xv[i], wv, acc[i][r]);
        }
    }
    LIN_UNROLL
    for (int i = 0; i < mr; i++) {
        LIN_UNROLL
        for (int r = 0; r < LIN_NR; r++)
            v_store(ab + (i * LIN_NR + r) * VW, acc[i][r]);
    }
}

/* FP8: per 128 block, partial sums in registers, then blk_acc into ab (bf: the block factors
 * of the chunk, shared by the tile's rows: a tile never straddles a 128-row scale group) */
SIMD static inline ALWAYS void mk_b(int mr, const float *x, int64_t xs, const float *wt,
                                    const int *wr, int lenp, float *ab, int first,
                                    const struct blkf *bf)
{
    for (int b0 = 0; b0 < lenp; b0 += 128) {
        V p[MR_F][LIN_NR];
        LIN_UNROLL
        for (int i = 0; i < mr; i++) {
            LIN_UNROLL
            for (int r = 0; r < LIN_NR; r++)
                p[i][r] = v_zero();
        }
        for (int k = b0; k < b0 + 128; k += VW) {
            V xv[MR_F];
            LIN_UNROLL
            for (int i = 0; i < mr; i++)
                xv[i] = v_load(x + i * xs + k);
            LIN_UNROLL
            for (int r = 0; r < LIN_NR; r++) {
                V wv = v_load(wt + wr[r] + k);
                LIN_UNROLL
                for (int i = 0; i < mr; i++)
                    p[i][r] = v_fma(xv[i], wv, p[i][r]);
            }
        }
        struct blkf f = bf[b0 / 128];
        if (f.big) { /* rare: the two-step scale */
            LIN_UNROLL
            for (int i = 0; i < mr; i++) {
                LIN_UNROLL
                for (int r = 0; r < LIN_NR; r++)
                    p[i][r] = v_mul(p[i][r], v_set1(C8_DF));
            }
            f.big = 0;
        }
        V fv = v_set1(f.f);
        LIN_UNROLL
        for (int i = 0; i < mr; i++) {
            LIN_UNROLL
            for (int r = 0; r < LIN_NR; r++) {
                float *a = ab + (i * LIN_NR + r) * VW;
                v_store(a, v_fma(p[i][r], fv, first && b0 == 0 ? v_zero() : v_load(a)));
            }
        }
    }
}

/* W4A4: activation planes qe/qo (stride xs bytes), lane scales sa and corrections ac
 * (stride xs / 4) */
SIMD static inline ALWAYS void mk_i(int mr, const int8_t *qe, const int8_t *qo, const float *sa,
                                    const int32_t *ac, int64_t xs, const uint8_t *wt, const int *wr,
                                    int lenp, float *ab, int first)
{
    V acc[MR_I][LIN_NR];
    LIN_UNROLL
    for (int i = 0; i < mr; i++) {
        LIN_UNROLL
        for (int r = 0; r < LIN_NR; r++)
            acc[i][r] = first ? v_zero() : v_load(ab + (i * LIN_NR + r) * VW);
    }
    for (int e = 0; e < lenp; e += 8 * VW) {
        VI ae[MR_I], ao[MR_I], aci[MR_I];
        V as[MR_I];
        LIN_UNROLL
        for (int i = 0; i < mr; i++) {
            ae[i] = vi_load(qe + i * xs + e / 2);
            ao[i] = vi_load(qo + i * xs + e / 2);
            aci[i] = vi_load(ac + i * (xs / 4) + e / 8);
            as[i] = v_load(sa + i * (xs / 4) + e / 8);
        }
        LIN_UNROLL
        for (int r = 0; r < LIN_NR; r++) {
            const uint8_t *b = wt + wr[r];
            VI wl = vi_load(b + e / 2), wh = vi_load(b + LIN_KC / 2 + e / 2);
            V sw = v_load((const float *)(b + LIN_KC) + e / 8);
            LIN_UNROLL
            for (int i = 0; i < mr; i++) {
                VI s = i4_dot(wl, wh, ae[i], ao[i], aci[i]);
                acc[i][r] = v_fma(v_cvti(s), v_mul(sw, as[i]), acc[i][r]);
            }
        }
    }
    LIN_UNROLL
    for (int i = 0; i < mr; i++) {
        LIN_UNROLL
        for (int r = 0; r < LIN_NR; r++)
            v_store(ab + (i * LIN_NR + r) * VW, acc[i][r]);
    }
}

#define MK_CASES(MR, CALL) \
    switch (MR) {          \
    case 1:                \
        CALL(1);           \
        break;             \
    case 2:                \
        CALL(2);           \
        break;             \
    case 3:                \
        CALL(3);           \
        break;             \
    case 4:                \
        CALL(4);           \
        break;             \
    case 5:                \
        CALL(5);           \
        break;             \
    default:               \
        CALL(6);           \
        break;             \
    }

SIMD static void run_f(int mr, const float *x, int64_t xs, const float *wt, const int *wr, int lenp,
                       float *ab, int first){
#define CALL_F(n) mk_f((n) <= MR_F ? (n) : MR_F, x, xs, wt, wr, lenp, ab, first)
        MK_CASES(mr, CALL_F)
#undef CALL_F
}

SIMD static void run_b(int mr, const float *x, int64_t xs, const float *wt, const int *wr, int lenp,
                       float *ab, int first, const struct blkf *bf){
#define CALL_B(n) mk_b((n) <= MR_F ? (n) : MR_F, x, xs, wt, wr, lenp, ab, first, bf)
        MK_CASES(mr, CALL_B)
#undef CALL_B
}

SIMD static void run_i(int mr, const int8_t *qe, const int8_t *qo, const float *sa,
                       const int32_t *ac, int64_t xs, const uint8_t *wt, const int *wr, int lenp,
                       float *ab, int first)
{
#define CALL_I(n) mk_i((n) <= MR_I ? (n) : MR_I, qe, qo, sa, ac, xs, wt, wr, lenp, ab, first)
    MK_CASES(mr, CALL_I)
#undef CALL_I
}

/*
 * The weight bytes of the tile chunk that the batched path decodes next, prefetched a few
 * lines before each micro-kernel call of the current chunk, so that they arrive while it
 * computes.  Without them the decode waited on memory: the stream goes idle during the
 * micro-kernels and the hardware prefetchers stop (AMD EPYC family 25, one thread: a
 * quarter of the decode's time on its first loads; the head of `small`, 129,280 x 512 BF16,
 * 6% faster at batch 32 and 18% at batch 8, FP8 products of 256-1,024 columns 3-5% faster).
 * All of them before the first call (98b7680, reverted) did not help: a burst of hints
 * beyond the miss buffers is dropped.  Data bytes only (the FP4 formats' scales are 1/16 or
 * 1/32 as many).
 */
struct pf_chunk {
    const char *next;     /* the next line to hint */
    int64_t rowb, b0, nb; /* bytes per weight row; first byte and bytes of each row's part */
    int per, col, left;   /* lines per row, next line's index in its row, lines left */
};

static inline void pf_set(struct pf_chunk *p, const struct dsv4_qweight *w, int64_t t0, int nr,
                          int64_t k0, int64_t len)
{
    /* twice the bytes per column: F32 8, BF16 4, FP8 2, MXFP4 / NVFP4 1 */
    const int64_t K = w->cols;
    int b2 = w->fmt == DSV4_WFMT_F32    ? 8
             : w->fmt == DSV4_WFMT_BF16 ? 4
             : w->fmt == DSV4_WFMT_FP8  ? 2
                                        : 1;
    p->rowb = (K * b2 + 1) / 2;
    p->b0 = (k0 * b2 / 2) & ~(int64_t)63;
    p->nb = ((k0 + len) * b2 + 1) / 2 - p->b0;
    p->per = (int)((p->nb + 63) / 64);
    p->col = 0;
    p->left = nr > 0 && len > 0 ? nr * p->per : 0;
    p->next = p->left ? (const char *)w->w + t0 * p->rowb + p->b0 : NULL;
}

static inline void pf_step(struct pf_chunk *p, int n)
{
    for (n = DSV4_MIN(n, p->left); n > 0; n--, p->left--) {
        _mm_prefetch(p->next, _MM_HINT_T0);
        if (++p->col < p->per) {
            p->next += 64;
        } else { /* the next row's part */
            p->col = 0;
            p->next += p->rowb - (int64_t)(p->per - 1) * 64;
        }
    }
}

/*
 * Rows r0..r1-1 for m >= 2: per block of LIN_MB activation rows, per tile of LIN_NR weight
 * rows, per LIN_KC-column chunk: decode the tile chunk into scratch, then run the
 * micro-kernel over the block's rows (prefetching the next chunk, pf_chunk); the
 * accumulators live in scratch between chunks.
 */
SIMD static void tiles(const struct lin_job *j, int64_t r0, int64_t r1, void *scr)
{
    const struct dsv4_qweight *w = j->w;
    const int64_t K = w->cols, kx = j->kx;
    const int fam = j->fam, mr = fam == LIN_FAM_I ? MR_I : MR_F;
    float *wt = scr;
    float *ab = (float *)((char *)scr + LIN_TILE_BYTES);
    for (int64_t i0 = 0; i0 < j->m; i0 += LIN_MB) {
        int mb = (int)DSV4_MIN((int64_t)LIN_MB, j->m - i0);
        for (int64_t t0 = r0; t0 < r1; t0 += LIN_NR) {
            int nr = (int)DSV4_MIN((int64_t)LIN_NR, r1 - t0), wr[LIN_NR];
            for (int r = 0; r < LIN_NR; r++)
                wr[r] = (r < nr ? r : 0) * (fam == LIN_FAM_I ? TROW_I : LIN_TROW);
            for (int64_t k0 = 0; k0 < K; k0 += LIN_KC) {
                int len = (int)DSV4_MIN((int64_t)LIN_KC, K - k0), first = k0 == 0;
                /* the next chunk: this tile's next columns, or the next tile's first */
                struct pf_chunk pf;
                if (k0 + LIN_KC < K)
                    pf_set(&pf, w, t0, nr, k0 + LIN_KC, DSV4_MIN((int64_t)LIN_KC, K - k0 - LIN_KC));
                else
                    pf_set(&pf, w, t0 + LIN_NR, (int)DSV4_MIN((int64_t)LIN_NR, r1 - t0 - LIN_NR), 0,
                           DSV4_MIN((int64_t)LIN_KC, K));
                const int calls = (mb + mr - 1) / mr, pstep = (pf.left + calls - 1) / calls;
                if (fam == LIN_FAM_F) {
                    int lenp = (len + QW - 1) / QW * QW;
                    decode_f(w, t0, nr, k0, lenp, wt);
                    for (int i = 0; i < mb; i += mr) {
                        pf_step(&pf, pstep);
                        run_f(DSV4_MIN(mr, mb - i), j->x + (i0 + i) * kx + k0, kx, wt, wr, lenp,
                              ab + (int64_t)i * LIN_NR * VW, first);
                    }
                } else if (fam == LIN_FAM_B) {
                    int lenp = (len + 127) / 128 * 128;
                    const int64_t nsb = (K + 127) / 128;
                    struct blkf bf[LIN_KC / 128];
                    decode_b(w, t0, nr, k0, lenp, wt);
                    for (int b = 0; b < lenp / 128; b++)
                        bf[b] = blk_factor(w->scale[(t0 / 128) * nsb + k0 / 128 + b]);
                    for (int i = 0; i < mb; i += mr) {
                        pf_step(&pf, pstep);
                        run_b(DSV4_MIN(mr, mb - i), j->x + (i0 + i) * kx + k0, kx, wt, wr, lenp,
                              ab + (int64_t)i * LIN_NR * VW, first, bf);
                    }
                } else {
                    int lenp = (len + 8 * VW - 1) / (8 * VW) * (8 * VW);
                    decode_i(w, t0, nr, k0, lenp, (uint8_t *)wt);
                    for (int i = 0; i < mb; i += mr) {
                        pf_step(&pf, pstep);
                        int64_t a = (i0 + i) * (kx / 2) + k0 / 2;
                        int64_t l = (i0 + i) * (kx / 8) + k0 / 8;
                        run_i(DSV4_MIN(mr, mb - i), j->qe + a, j->qo + a, j->sfa2 + l, j->acorr + l,
                              kx / 2, (const uint8_t *)wt, wr, lenp, ab + (int64_t)i * LIN_NR * VW,
                              first);
                    }
                }
            }
            for (int i = 0; i < mb; i++) {
                const float *a = ab + (int64_t)i * LIN_NR * VW;
                float *y = j->y + (i0 + i) * j->ldy + t0;
#if LIN_NR == 4
                if (nr == 4) {
                    __m128 s = v_hsum4(v_load(a), v_load(a + VW), v_load(a + 2 * VW),
                                       v_load(a + 3 * VW));
                    _mm_storeu_ps(y, _mm_mul_ps(s, _mm_set1_ps(j->alpha)));
                    continue;
                }
#endif
                for (int r = 0; r < nr; r++)
                    y[r] = v_hsum(v_load(a + r * VW)) * j->alpha;
            }
        }
    }
}

SIMD static void simd_rows(const struct lin_job *j, int64_t r0, int64_t r1, void *scratch)
{
    if (j->m > 1 && j->m <= LIN_FEW_I && j->fam == LIN_FAM_I)
        gemv_i_few(j, r0, r1);
    else if (j->m > 1)
        tiles(j, r0, r1, scratch);
    else if (j->fam == LIN_FAM_F)
        gemv_f(j, r0, r1);
    else if (j->fam == LIN_FAM_B)
        gemv_b(j, r0, r1);
    else
        gemv_i(j, r0, r1);
}
