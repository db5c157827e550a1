/*
 * cmd_bench.c - `dsv4 bench SUBJECT [OPTIONS]`: micro-benchmarks of the
 * engine's building blocks (not tests: they print numbers and assert
 * nothing), and of a running server (serve, plot).  Each subject is one
 * line of the table below and one dsv4_bench_* function (declared in
 * tools/cmds.h, or tools/bench_serve.h for serve and plot) in its own file.
 *
 * Shorthands for a server benchmark: `dsv4 bench --openai URL ...` (or any
 * other leading option) is `dsv4 bench serve ...`, and `dsv4 bench --plot
 * OUT.svg A.json ...` is `dsv4 bench plot --out OUT.svg A.json ...`.
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
    fprintf(f, "\nShorthands: dsv4 bench --openai URL | --target HOST:PORT [OPTIONS] is\n"
               "dsv4 bench serve ...; dsv4 bench --plot OUT.svg RESULT.json... is\n"
               "dsv4 bench plot --out OUT.svg RESULT.json...\n");
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
    /* the shorthands: rewritten in place into the subject's own argv */
    if (!strcmp(argv[1], "--plot")) {
        argv[0] = "plot", argv[1] = "--out";
        return dsv4_bench_plot(argc, argv);
    }
    if (!strncmp(argv[1], "--", 2)) {
        argv[0] = "serve"; /* the options start at argv[1] */
        return dsv4_bench_serve(argc, argv);
    }
    fprintf(stderr, "dsv4 bench: unknown subject '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
