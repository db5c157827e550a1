/*
 * fmt_encode.c - test helper: encodes a binary file of FP32 values with one
 * of the encoders of kernels/formats.h and writes the codes (one byte per
 * value, two for BF16), so test_formats_mldtypes.py can compare them with
 * ml_dtypes.  Usage: fmt_encode bf16|e4m3|e4m3sat|e4m3lower|e2m1|e2m1lower IN OUT
 */
#include "kernels/formats.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: fmt_encode FORMAT IN OUT\n");
        return 2;
    }
    const char *fmt = argv[1];
    FILE *in = fopen(argv[2], "rb"), *out = fopen(argv[3], "wb");
    if (!in || !out) {
        perror("fmt_encode");
        return 1;
    }
    float f;
    while (fread(&f, 4, 1, in) == 1) {
        if (!strcmp(fmt, "bf16")) {
            uint16_t h = dsv4_f32_to_bf16(f);
            fwrite(&h, 2, 1, out);
            continue;
        }
        uint8_t c;
        if (!strcmp(fmt, "e4m3"))
            c = dsv4_f32_to_e4m3(f, DSV4_ROUND_NEAREST_EVEN, false);
        else if (!strcmp(fmt, "e4m3sat"))
            c = dsv4_f32_to_e4m3(f, DSV4_ROUND_NEAREST_EVEN, true);
        else if (!strcmp(fmt, "e4m3lower"))
            c = dsv4_f32_to_e4m3(f, DSV4_ROUND_TIES_LOWER, true);
        else if (!strcmp(fmt, "e2m1"))
            c = dsv4_f32_to_e2m1(f, DSV4_ROUND_NEAREST_EVEN);
        else if (!strcmp(fmt, "e2m1lower"))
            c = dsv4_f32_to_e2m1(f, DSV4_ROUND_TIES_LOWER);
        else {
            fprintf(stderr, "fmt_encode: unknown format %s\n", fmt);
            return 2;
        }
        fwrite(&c, 1, 1, out);
    }
    if (ferror(in) || fclose(out) != 0) {
        perror("fmt_encode");
        return 1;
    }
    fclose(in);
    return 0;
}
