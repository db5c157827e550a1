/*
 * test_linear_ref.c - checks the scalar oracle dsv4_ref_linear against an
 * independent model (whole-weight dequantisation, reference activation
 * quantisers, double-precision matmul) for every weight format and
 * activation path, on shapes with partial blocks; and the validation of
 * weight views.
 */
#include "base/dsv4.h"
#include "tests/kernels/lintest.h"

static const struct {
    enum dsv4_wfmt fmt;
    enum dsv4_act act;
} combos[] = {
        {DSV4_WFMT_F32, DSV4_ACT_F32},     {DSV4_WFMT_BF16, DSV4_ACT_F32},
        {DSV4_WFMT_FP8, DSV4_ACT_FP8},     {DSV4_WFMT_FP8, DSV4_ACT_F32},
        {DSV4_WFMT_MXFP4, DSV4_ACT_FP8},   {DSV4_WFMT_MXFP4, DSV4_ACT_F32},
        {DSV4_WFMT_NVFP4, DSV4_ACT_NVFP4}, {DSV4_WFMT_NVFP4, DSV4_ACT_FP8},
        {DSV4_WFMT_NVFP4, DSV4_ACT_F32},
};

int main(void)
{
    static const int64_t shapes[][3] = {
            /* rows, cols, m */
            {1, 16, 1}, {3, 100, 2}, {130, 300, 3}, {257, 130, 1}, {64, 520, 5}, {17, 1024, 4},
    };
    for (size_t c = 0; c < DSV4_ARRAY_LEN(combos); c++)
        for (size_t s = 0; s < DSV4_ARRAY_LEN(shapes); s++) {
            int64_t R = shapes[s][0], K = shapes[s][1], m = shapes[s][2];
            struct lt_weight t;
            lt_weight_make(&t, combos[c].fmt, R, K);
            CHECK_INT(dsv4_linear_check(&t.q, combos[c].act), 0);
            float *x = malloc((size_t)(m * K) * sizeof(float));
            float *y = malloc((size_t)(m * R) * sizeof(float));
            double *yd = malloc((size_t)(m * R) * sizeof(double));
            double *as = malloc((size_t)(m * R) * sizeof(double));
            lt_act_make(x, m, K);
            dsv4_ref_linear(&t.q, combos[c].act, x, m, y);
            lt_model(&t.q, combos[c].act, x, m, yd, as);
            char what[96];
            snprintf(what, sizeof(what), "ref %s/%s [%lld,%lld] m=%lld",
                     dsv4_wfmt_name(combos[c].fmt), dsv4_act_name(combos[c].act), (long long)R,
                     (long long)K, (long long)m);
            /* sequential FP32 sums: error <= K * 2^-24 * sum|x w| (+ final scale) */
            double rel = (double)(K + 2) * 0x1p-24;
            CHECKF(lt_compare(what, y, yd, as, m * R, rel, 1e-5) == 0, "%s", what);
            /* a NaN in the input reaches the output of its row and fails the comparison */
            x[K / 2] = NAN;
            dsv4_ref_linear(&t.q, combos[c].act, x, m, y);
            CHECKF(isnan(y[0]) && isnan(y[R - 1]), "%s: NaN not propagated", what);
            CHECKF(lt_compare("(expected to fail)", y, yd, as, m * R, rel, 1e-5) > 0, "%s", what);
            free(x);
            free(y);
            free(yd);
            free(as);
            lt_weight_free(&t);
        }

    /* validation */
    struct lt_weight t;
    lt_weight_make(&t, DSV4_WFMT_FP8, 4, 8);
    CHECK_INT(dsv4_linear_check(&t.q, DSV4_ACT_NVFP4), DSV4_EINVAL);
    CHECK(strstr(dsv4_errmsg(), "nvfp4") && strstr(dsv4_errmsg(), "fp8"));
    t.q.scale = NULL;
    CHECK_INT(dsv4_linear_check(&t.q, DSV4_ACT_FP8), DSV4_EINVAL);
    t.q.scale = t.s;
    t.q.cols = 0;
    CHECK_INT(dsv4_linear_check(&t.q, DSV4_ACT_FP8), DSV4_EINVAL);
    t.q.cols = 8;
    t.q.fmt = (enum dsv4_wfmt)9;
    CHECK_INT(dsv4_linear_check(&t.q, DSV4_ACT_F32), DSV4_EINVAL);
    lt_weight_free(&t);
    lt_weight_make(&t, DSV4_WFMT_BF16, 4, 8);
    CHECK_INT(dsv4_linear_check(&t.q, DSV4_ACT_FP8), DSV4_EINVAL);
    lt_weight_free(&t);
    lt_weight_make(&t, DSV4_WFMT_NVFP4, 4, 8);
    t.q.input_scale = 0.0f;
    CHECK_INT(dsv4_linear_check(&t.q, DSV4_ACT_NVFP4), DSV4_EINVAL);
    lt_weight_free(&t);
    CHECK_INT(dsv4_qweight_bytes(
                      &(struct dsv4_qweight){.fmt = DSV4_WFMT_FP8, .rows = 7168, .cols = 3072}),
              7168 * 3072 + 56 * 24);
    CHECK_INT(dsv4_qweight_bytes(
                      &(struct dsv4_qweight){.fmt = DSV4_WFMT_NVFP4, .rows = 3072, .cols = 7168}),
              3072 * 3584 + 3072 * 448);
    CHECK(dsv4_default_act(DSV4_WFMT_MXFP4) == DSV4_ACT_FP8);
    CHECK(dsv4_default_act(DSV4_WFMT_NVFP4) == DSV4_ACT_NVFP4);
    TEST_DONE();
}
