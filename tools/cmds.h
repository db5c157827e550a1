/*
 * cmds.h - the subcommands of the `dsv4` tool.  Each lives in its own
 * tools/cmd_*.c file and returns the process exit status.
 */
#ifndef DSV4_TOOLS_CMDS_H
#define DSV4_TOOLS_CMDS_H

struct dsv4_cmd {
    const char *name;
    int (*run)(int argc, char **argv); /* argv[0] is the subcommand name */
    const char *summary;
};

int dsv4_cmd_version(int argc, char **argv);
int dsv4_cmd_tokenize(int argc, char **argv);
int dsv4_cmd_chat_encode(int argc, char **argv);
int dsv4_cmd_chat_parse(int argc, char **argv);
int dsv4_cmd_convert(int argc, char **argv);
int dsv4_cmd_mkmodel(int argc, char **argv);
int dsv4_cmd_plan(int argc, char **argv);
int dsv4_cmd_generate(int argc, char **argv);
int dsv4_cmd_bench(int argc, char **argv);
/* `dsv4 bench` subjects (tools/cmd_bench.c table) */
int dsv4_bench_linear(int argc, char **argv);
int dsv4_bench_forward(int argc, char **argv);

/*
 * The message of a library error without its leading "<module>: " when that module is the
 * subcommand's own (so "dsv4 generate: generate: bad x" reads "dsv4 generate: bad x").
 */
const char *dsv4_msg_body(const char *msg, const char *module);

#endif
