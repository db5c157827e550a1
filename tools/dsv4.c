/*
 * dsv4.c - the `dsv4` tool: offline commands around the engine (checkpoint
 * generation, planning, conversion, generation, tokenizer).  Dispatches to
 * the subcommand named by argv[1].
 *
 * Exit status convention shared by every subcommand: 0 ok, 1 bad input or
 * a failed operation (message on stderr), 2 bad usage (unknown command or
 * option, missing or malformed option value); `dsv4 CMD --help` prints to
 * stdout and exits 0.
 */
#include "dsv4-build.h"
#include "base/dsv4.h"
#include "tools/cmds.h"

#include <stdio.h>
#include <string.h>

static const struct dsv4_cmd cmds[] = {
        {"version", dsv4_cmd_version, "print the version and the build's features"},
        {"tokenize", dsv4_cmd_tokenize, "text <-> token ids with a tokenizer.json"},
        {"chat-encode", dsv4_cmd_chat_encode, "render chat messages as a DeepSeek-V4 prompt"},
        {"chat-parse", dsv4_cmd_chat_parse, "parse a completion: reasoning, content, tool calls"},
        {"convert", dsv4_cmd_convert, "convert an MXFP4 checkpoint to the NVFP4 artifact layout"},
        {"mkmodel", dsv4_cmd_mkmodel, "write a synthetic checkpoint (tiny, small or any config)"},
        {"plan", dsv4_cmd_plan, "parallel layout and memory plan of a checkpoint or config"},
        {"generate", dsv4_cmd_generate, "generate tokens on CPU (MTP drafting, N ranks)"},
        {"bench", dsv4_cmd_bench, "micro-benchmarks (dsv4 bench linear, ...)"},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: dsv4 COMMAND [OPTIONS]   (dsv4 COMMAND --help for its options)\n\n");
    for (size_t i = 0; i < DSV4_ARRAY_LEN(cmds); i++)
        fprintf(f, "  %-12s %s\n", cmds[i].name, cmds[i].summary);
}

int dsv4_cmd_version(int argc, char **argv)
{
    if (argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        printf("usage: dsv4 version   (also dsv4 --version, dsv4 -V)\n"
               "  prints the version and the features this build was configured with\n");
        return 0;
    }
    if (argc > 1) {
        fprintf(stderr, "dsv4 version: unexpected argument '%s' (see dsv4 version --help)\n",
                argv[1]);
        return 2;
    }
    printf("dsv4 %s\nfeatures: %s\n", dsv4_version(), dsv4_features());
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "-V"))
        return dsv4_cmd_version(argc - 1, argv + 1);
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < DSV4_ARRAY_LEN(cmds); i++)
        if (!strcmp(argv[1], cmds[i].name))
            return cmds[i].run(argc - 1, argv + 1);
    fprintf(stderr, "dsv4: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}

const char *dsv4_msg_body(const char *msg, const char *module)
{
    size_t n = strlen(module);
    if (!strncmp(msg, module, n) && msg[n] == ':' && msg[n + 1] == ' ')
        return msg + n + 2;
    return msg;
}
