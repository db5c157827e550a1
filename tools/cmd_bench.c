/*
 * cmd_bench.c - `dsv4 bench SUBJECT [OPTIONS]`: micro-benchmarks of the
 * engine's building blocks (not tests: they print numbers and assert
 * nothing), and of a running server (serve, plot).  Each subject is one
 * line of the table below and one dsv4_bench_* function (declared in
 * tools/cmds.h, or tools/bench_serve.h for serve and plot) in its own file.
 */
#include "base/dsv4.h"
#include "tools/bench_serve.h"
#include "tools/cmds.h"

#include <stdio.h>
#include <string.h>

static const struct dsv4_cmd subjects[] = {
        {"linear", dsv4_bench_linear, "CPU linear products per weight format vs memory copy"},
        {"forward", dsv4_bench_forward,
         "prefill / decode tok/s of the CPU forward pass vs roofline"},
        {"serve", dsv4_bench_serve,
         "throughput sweep / MTP acceptance probe of a running OpenAI-compatible server"},
        {"plot", dsv4_bench_plot, "SVG of `bench serve` JSON results: tok/s, TTFT, ITL"},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: dsv4 bench SUBJECT [OPTIONS]   (dsv4 bench SUBJECT --help)\n\n");
    for (size_t i = 0; i < DSV4_ARRAY_LEN(subjects); i++)
        fprintf(f, "  %-12s %s\n", subjects[i].name, subjects[i].summary);
}

int dsv4_cmd_bench(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < DSV4_ARRAY_LEN(subjects); i++)
        if (!strcmp(argv[1], subjects[i].name))
            return subjects[i].run(argc - 1, argv + 1);
    fprintf(stderr, "dsv4 bench: unknown subject '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
