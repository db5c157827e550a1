/*
 * tok_bench.c - encode/decode throughput of the C tokenizer on one core:
 * encodes the whole file REPS times (best time counts), prints MB/s and the
 * ids (with --ids) so that bench_tokenizer.py can compare them with HF.
 *
 * usage: tok_bench TOKENIZER.json TEXT_FILE [REPS] [--ids]
 */
#include "base/dsv4.h"
#include "engine/text/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: tok_bench TOKENIZER.json TEXT_FILE [REPS] [--ids]\n");
        return 2;
    }
    int reps = argc > 3 && strcmp(argv[3], "--ids") ? atoi(argv[3]) : 5;
    bool ids = !strcmp(argv[argc - 1], "--ids");
    struct dsv4_tokenizer *tok;
    if (dsv4_tokenizer_load(argv[1], &tok)) {
        fprintf(stderr, "tok_bench: %s\n", dsv4_errmsg());
        return 1;
    }
    FILE *f = fopen(argv[2], "rb");
    if (!f) {
        perror(argv[2]);
        return 1;
    }
    fseek(f, 0, SEEK_END);
    size_t n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = malloc(n + 1);
    if (!text || fread(text, 1, n, f) != n) {
        fprintf(stderr, "tok_bench: cannot read %s\n", argv[2]);
        return 1;
    }
    fclose(f);
    struct dsv4_tokens t = {0};
    double best = 1e30, best_dec = 1e30;
    for (int r = 0; r < (reps > 0 ? reps : 1); r++) {
        t.len = 0;
        double t0 = dsv4_now();
        if (dsv4_tokenizer_encode(tok, text, n, 0, &t)) {
            fprintf(stderr, "tok_bench: %s\n", dsv4_errmsg());
            return 1;
        }
        best = DSV4_MIN(best, dsv4_now() - t0);
        char *out;
        size_t ol;
        t0 = dsv4_now();
        if (dsv4_tokenizer_decode(tok, t.ids, t.len, 0, &out, &ol))
            return 1;
        best_dec = DSV4_MIN(best_dec, dsv4_now() - t0);
        free(out);
    }
    fprintf(stderr,
            "C encode: %.2f MB/s (%zu bytes -> %zu ids, best of %d: %.4f s); decode %.1f MB/s\n",
            n / best / 1e6, n, t.len, reps, best, n / best_dec / 1e6);
    printf("encode_mb_s %.3f\n", n / best / 1e6);
    if (ids)
        for (size_t i = 0; i < t.len; i++)
            printf(i + 1 < t.len ? "%d " : "%d\n", t.ids[i]);
    dsv4_tokens_free(&t);
    free(text);
    dsv4_tokenizer_free(tok);
    return 0;
}
