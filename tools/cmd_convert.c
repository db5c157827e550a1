/*
 * cmd_convert.c - `dsv4 convert SRC DST`: the upstream MXFP4 checkpoint ->
 * the NVFP4 artifact layout (tools/convert.h does the work; this file
 * parses options, draws progress on a terminal and prints the report).
 *
 * Invariants: bad usage (unknown option, malformed value, wrong operand
 * count) exits 2 with one line naming the problem; SRC must be an existing
 * directory and DST must not resolve to SRC or to a path inside it (the
 * converter would read files it is writing, or copy its output into
 * itself), checked on resolved paths before anything is created.
 */
#include "tools/convert.h"
#include "base/dsv4.h"
#include "tools/cmds.h"

#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <errno.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void help(FILE *f)
{
    fputs("usage: dsv4 convert [OPTIONS] SRC DST\n"
          "\n"
          "Converts an upstream MXFP4 DeepSeek-V4 checkpoint (Pro or Flash) into the\n"
          "NVFP4 artifact layout: trunk routed experts layers.N.ffn.experts.E.w{1,2,3}\n"
          "become NVFP4; every mtp.* tensor and every non-expert tensor is copied byte\n"
          "for byte.  Shards keep their file names and keys; per converted matrix <p>:\n"
          "  <p>.weight          U8 [rows, cols/2]  packed E2M1, low nibble = even column\n"
          "  <p>.scale           F8_E4M3 [rows, cols/16]  one scale per 16 elements\n"
          "                      (canada-quant naming, the published artifact's)\n"
          "  <p>.weight_scale_2  F32 [1]  global scale (shared by w1 and w3 of an expert)\n"
          "  <p>.input_scale     F32 [1]  1.0\n"
          "With --naming nvidia: <p>.weight_scale instead of <p>.scale and F32 []\n"
          "scalars, as NVIDIA's exports (same bytes).  Also writes config.json\n"
          "(expert_dtype fp4, quantization_config with moe_quant_algo NVFP4), a new\n"
          "model.safetensors.index.json, and copies every other file.  Shards already\n"
          "complete in DST are skipped (resumable); each shard is written to a\n"
          "temporary name and renamed when complete.\n"
          "\n"
          "options:\n"
          "  --mode lossless  (default) closed-form power-of-two cast: every block in\n"
          "                   the E4M3 exponent range is bit-exact; other blocks are\n"
          "                   requantized from their amax and counted\n"
          "  --mode amax      the published recipe (amax / 2688 global scale, ties to\n"
          "                   lower), reproducing its artifact byte for byte\n"
          "  --naming canada|nvidia  spelling of block scales and scalars (default canada)\n"
          "  --verify         dequantize both sides of every converted tensor and\n"
          "                   compare; compare every other tensor byte for byte; check\n"
          "                   the model contract; exit 1 on any non-finite value or\n"
          "                   difference in a copied tensor\n"
          "  --sample N       verify only N converted tensors, spread over the checkpoint\n"
          "  --threads N      worker threads (default: all cores)\n"
          "  --quiet          no progress line\n",
          f);
}

/* One-line usage error: exit status 2. */
static int bad_usage(const char *what, const char *arg)
{
    fprintf(stderr, "dsv4 convert: %s%s%s (see dsv4 convert --help)\n", what, arg ? " " : "",
            arg ? arg : "");
    return 2;
}

/* realpath of `dst`, or of its parent + its last component when `dst` does
 * not exist yet (the converter creates DST, not its parents). */
static int resolve_dst(const char *dst, char *out)
{
    if (realpath(dst, out))
        return 0;
    if (errno != ENOENT)
        return dsv4_error(DSV4_EIO, "DST %s: %s", dst, strerror(errno));
    char parent[PATH_MAX];
    size_t n = strlen(dst);
    while (n > 1 && dst[n - 1] == '/')
        n--;
    const char *slash = NULL;
    for (size_t i = 0; i < n; i++)
        if (dst[i] == '/')
            slash = dst + i;
    const char *base = slash ? slash + 1 : dst;
    int plen = slash ? (slash == dst ? 1 : (int)(slash - dst)) : 1;
    snprintf(parent, sizeof(parent), "%.*s", plen, slash ? dst : ".");
    char rp[PATH_MAX];
    if (!realpath(parent, rp))
        return dsv4_error(DSV4_ENOENT, "DST's parent directory %s: %s", parent, strerror(errno));
    if (snprintf(out, PATH_MAX, "%s/%.*s", strcmp(rp, "/") ? rp : "", (int)(dst + n - base),
                 base) >= PATH_MAX)
        return dsv4_error(DSV4_ERANGE, "DST %s: path too long", dst);
    return 0;
}

/* SRC an existing directory; DST neither SRC nor below it (see the header). */
static int check_paths(const char *src, const char *dst)
{
    char rs[PATH_MAX], rd[PATH_MAX];
    struct stat st;
    if (!realpath(src, rs) || stat(rs, &st) < 0)
        return dsv4_error(DSV4_ENOENT, "SRC %s: %s", src, strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return dsv4_error(DSV4_EINVAL, "SRC %s is not a directory", src);
    int rc = resolve_dst(dst, rd);
    if (rc)
        return rc;
    if (stat(rd, &st) == 0 && !S_ISDIR(st.st_mode))
        return dsv4_error(DSV4_EINVAL, "DST %s exists and is not a directory", dst);
    size_t n = strlen(rs);
    if (!strcmp(rd, rs))
        return dsv4_error(DSV4_EINVAL, "DST %s is the source directory", dst);
    if (!strncmp(rd, rs, n) && (rd[n] == '/' || !strcmp(rs, "/")))
        return dsv4_error(DSV4_EINVAL, "DST %s is inside the source directory %s", dst, src);
    return 0;
}

struct prog_state {
    bool tty;
    double last;
};

static void on_progress(void *arg, const struct dsv4_convert_progress *p)
{
    struct prog_state *s = arg;
    double now = p->elapsed_s;
    if (!s->tty || (now - s->last < 0.2 && p->tensors_done < p->tensors_total))
        return;
    s->last = now;
    if (!strcmp(p->phase, "verify")) {
        fprintf(stderr, "\r\033[Kverify: tensors %lld/%lld", (long long)p->tensors_done,
                (long long)p->tensors_total);
        return;
    }
    double rate = now > 0 ? (double)p->bytes_done / now : 0;
    double eta = rate > 0 ? (double)(p->bytes_total - p->bytes_done) / rate : 0;
    fprintf(stderr,
            "\r\033[Kshard %d/%d %s: tensors %lld/%lld, %.1f/%.1f GB, %.0f MB/s, ETA "
            "%d:%02d:%02d",
            p->shard, p->nshards, p->shard_name ? p->shard_name : "", (long long)p->tensors_done,
            (long long)p->tensors_total, (double)p->bytes_done / 1e9, (double)p->bytes_total / 1e9,
            rate / 1e6, (int)(eta / 3600), (int)(eta / 60) % 60, (int)eta % 60);
}

/* the summary on stdout; 1 when --verify found a difference */
static int print_report(const struct dsv4_convert_opts *o, const struct dsv4_convert_report *r)
{
    printf("mode: %s, naming: %s\n", dsv4_convert_mode_name(o->mode),
           dsv4_convert_naming_name(o->naming));
    printf("shards: %d (%d written, %d already complete)\n", r->shards, r->shards_written,
           r->shards_skipped);
    printf("tensors: %lld converted, %lld passed through; %.3f GB written in %.1f s\n",
           (long long)r->converted, (long long)r->passthrough, (double)r->bytes_written / 1e9,
           r->seconds);
    printf("blocks: %llu, exact %llu, out of range %llu, saturated elements %llu, zero scales "
           "%llu\n",
           (unsigned long long)r->stats.blocks, (unsigned long long)r->stats.exact,
           (unsigned long long)r->stats.oor, (unsigned long long)r->stats.saturated,
           (unsigned long long)r->stats.zero_scale);
    if (!o->verify)
        return 0;
    printf("verify: %lld converted tensors, %lld bit-exact; max abs err %.6g, mean rel err "
           "%.6g, min pearson %.9f; non-finite %llu\n",
           (long long)r->verified, (long long)r->verified_bitexact, r->cmp.max_abs,
           dsv4_convert_cmp_mean_rel(&r->cmp), r->verified ? r->min_pearson : 1.0,
           (unsigned long long)r->cmp.nonfinite);
    printf("verify: %lld other tensors, %lld byte-identical\n", (long long)r->pass_checked,
           (long long)r->pass_identical);
    if (r->cmp.nonfinite || r->pass_identical != r->pass_checked) {
        fprintf(stderr, "dsv4 convert: verification failed\n");
        return 1;
    }
    return 0;
}

int dsv4_cmd_convert(int argc, char **argv)
{
    static const struct option lopts[] = {
            {"mode", required_argument, NULL, 'm'},   {"verify", no_argument, NULL, 'v'},
            {"sample", required_argument, NULL, 's'}, {"threads", required_argument, NULL, 't'},
            {"quiet", no_argument, NULL, 'q'},        {"naming", required_argument, NULL, 'n'},
            {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0}};
    struct dsv4_convert_opts o = {0};
    struct prog_state ps = {isatty(2), -1.0};
    int c;
    char *end;
    optind = 1;
    opterr = 0; /* our own one-line messages, prefixed "dsv4 convert:" */
    while ((c = getopt_long(argc, argv, ":h", lopts, NULL)) != -1) {
        switch (c) {
        case 'm':
            if (dsv4_convert_mode_parse(optarg, &o.mode)) {
                fprintf(stderr, "dsv4 convert: %s\n", dsv4_errmsg());
                return 2;
            }
            break;
        case 'n':
            if (dsv4_convert_naming_parse(optarg, &o.naming)) {
                fprintf(stderr, "dsv4 convert: %s\n", dsv4_errmsg());
                return 2;
            }
            break;
        case 'v':
            o.verify = true;
            break;
        case 's':
        case 't': {
            errno = 0;
            long v = strtol(optarg, &end, 10);
            if (*end || end == optarg || errno || v < 1 || v > (c == 't' ? 1024 : 1L << 40)) {
                fprintf(stderr, "dsv4 convert: bad --%s '%s' (an integer, 1..%s)\n",
                        c == 's' ? "sample" : "threads", optarg, c == 's' ? "2^40" : "1024");
                return 2;
            }
            if (c == 's')
                o.sample = v;
            else
                o.threads = (int)v;
            break;
        }
        case 'q':
            ps.tty = false;
            break;
        case 'h':
            help(stdout);
            return 0;
        case ':':
            return bad_usage("missing value for", argv[optind - 1]);
        default:
            return bad_usage("unknown option", argv[optind - 1]);
        }
    }
    if (argc - optind != 2)
        return bad_usage(argc - optind < 2 ? "expects SRC DST, missing an operand"
                                           : "expects SRC DST, got extra operand",
                         argc - optind < 2 ? NULL : argv[optind + 2]);
    if (!argv[optind][0] || !argv[optind + 1][0])
        return bad_usage("SRC and DST must not be empty", NULL);
    if (check_paths(argv[optind], argv[optind + 1])) {
        fprintf(stderr, "dsv4 convert: %s\n", dsv4_errmsg());
        return 1;
    }
    if (o.sample && !o.verify)
        o.verify = true;
    /* a file-size limit must give an error status, not kill us mid-shard */
    signal(SIGXFSZ, SIG_IGN);
    o.progress = on_progress;
    o.progress_arg = &ps;

    struct dsv4_convert_report r;
    int rc = dsv4_convert_ckpt(argv[optind], argv[optind + 1], &o, &r);
    if (ps.tty)
        fprintf(stderr, "\r\033[K");
    if (rc) {
        fprintf(stderr, "dsv4 convert: %s\n", dsv4_errmsg());
        return 1;
    }
    return print_report(&o, &r);
}
