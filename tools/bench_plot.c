/*
 * bench_plot.c - `dsv4 bench plot --out out.svg FILE.json [FILE2.json ...]`:
 * one SVG of `dsv4 bench serve` results: aggregate output tok/s against
 * concurrency (the published sweep's axes), and, when the runs streamed,
 * TTFT and inter-token latency p50 / p90 / p99 against concurrency.  One
 * color per JSON file, legend from --label, the file's own "label", or its
 * model and target ("gRPC HOST:PORT" for a run over gRPC).  Rate runs
 * (--rate) plot against the request rate.
 * --published adds the published reference sweep (spec/formats.md §3.1:
 * vLLM on 8x B300, MTP n=1, max_tokens 128, README 056e0502) to the tok/s
 * panel as a gray dashed line, so that a run reads against the target.
 *
 * Why hand-written SVG: a plot must come out of the same binary on a
 * machine with nothing else installed; SVG is text, opens in any browser
 * and converts with rsvg-convert.
 *
 * Invariants: x is a log2 axis over whole powers of two that cover every
 * point; y axes are linear from 0 with 1-2-5 ticks; text from the files is
 * XML-escaped; a file that is not a `bench serve` result is refused with a
 * message naming it (exit 1), never drawn half.
 */
#include "tools/bench_serve.h"

#include "base/dsv4.h"
#include "engine/io/strbuf.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ME         "dsv4 bench plot"
#define MAX_FILES  16
#define MAX_POINTS 64

/* panel geometry (px) */
#define WIDTH   1000
#define PANEL_H 360
#define LEFT    90
#define RIGHT   730 /* right edge of the plot area; the legend is to its right */
#define TOP_PAD 50
#define BOT_PAD 60
#define TITLE_H 60

static const char *const COLORS[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e",
                                     "#9467bd", "#8c564b", "#e377c2", "#17becf"};
static const char *const DASH[3] = {"", "8,4", "2,3"}; /* p50, p90, p99 */
static const char *const PCT_NAME[3] = {"p50", "p90", "p99"};

enum { M_TOK, M_TTFT, M_ITL, M_COUNT };

struct series {
    char label[200];
    char note[300];
    int n;
    double x[MAX_POINTS];
    double v[M_COUNT][3][MAX_POINTS]; /* [metric][p50/p90/p99 or 0 for tok/s][point]; NAN: none */
    bool has[M_COUNT];
    bool reference; /* the published sweep: gray, dashed */
};

#define REF_COLOR "#777777"
#define REF_DASH  "6,4"

/* the published final table (formats.md §3.1): concurrency -> aggregate tok/s */
static const double PUB_X[4] = {1, 16, 64, 128};
static const double PUB_TOK[4] = {139.3, 672.6, 1927.3, 3004.8};
#define PUB_LABEL "published (vLLM, 8x B300)"

static void usage(FILE *f)
{
    fprintf(f, "usage: dsv4 bench plot --out FILE.svg [--label L]... [--title T] [--published]\n"
               "         FILE.json...\n"
               "  --out FILE.svg   the SVG to write\n"
               "  --label L        legend of the JSON file that follows (default: the file's\n"
               "                   own label, else its model @ target)\n"
               "  --title T        the title (default: output tok/s vs concurrency)\n"
               "  --published      add the published reference sweep (vLLM, 8x B300, MTP n=1:\n"
               "                   139.3 / 672.6 / 1927.3 / 3004.8 tok/s at c = 1/16/64/128)\n"
               "Plots aggregate output tok/s vs concurrency (log2 axis), and TTFT / ITL\n"
               "p50 (solid) / p90 (dashed) / p99 (dotted) when the runs streamed.\n");
}

static void xml_str(struct dsv4_strbuf *b, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '&':
            dsv4_strbuf_str(b, "&amp;");
            break;
        case '<':
            dsv4_strbuf_str(b, "&lt;");
            break;
        case '>':
            dsv4_strbuf_str(b, "&gt;");
            break;
        case '"':
            dsv4_strbuf_str(b, "&quot;");
            break;
        case '\'':
            dsv4_strbuf_str(b, "&apos;");
            break;
        default:
            if ((unsigned char)*s < 0x20 && *s != '\t')
                dsv4_strbuf_str(b, " "); /* not allowed in XML 1.0 */
            else
                dsv4_strbuf_put(b, s, 1);
        }
    }
}

static double num_or_nan(const cJSON *j)
{
    return cJSON_IsNumber(j) && isfinite(j->valuedouble) ? j->valuedouble : NAN;
}

static const char *str_or(const cJSON *o, const char *key, const char *dflt)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(j) ? j->valuestring : dflt;
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        dsv4_error(DSV4_EIO, "%s: %s", path, strerror(errno));
        return NULL;
    }
    struct dsv4_strbuf b;
    dsv4_strbuf_init(&b);
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), f)) > 0 && b.len < (256u << 20))
        dsv4_strbuf_put(&b, buf, n);
    bool err = ferror(f) != 0;
    fclose(f);
    if (err || b.oom || b.len >= (256u << 20)) {
        dsv4_strbuf_free(&b);
        dsv4_error(DSV4_EIO, "%s: read error or over 256 MiB", path);
        return NULL;
    }
    *len = b.len;
    return b.p ? b.p : strdup("");
}

/* Reads one result file into s; *rate: its x axis is the request rate. */
static int load(const char *path, const char *label, struct series *s, bool *rate)
{
    size_t len = 0;
    char *text = read_file(path, &len);
    if (!text)
        return DSV4_EIO;
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    int rc = 0;
    const cJSON *levels = cJSON_GetObjectItemCaseSensitive(root, "levels");
    if (!cJSON_IsObject(root)) {
        rc = dsv4_error(DSV4_EFORMAT, "%s: not a JSON object", path);
        goto out;
    }
    if (!cJSON_IsArray(levels) || !cJSON_GetArraySize(levels)) {
        rc = dsv4_error(DSV4_EFORMAT, "%s: no \"levels\" (not a `dsv4 bench serve` sweep)", path);
        goto out;
    }
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(root, "settings");
    *rate = !strcmp(str_or(st, "mode", ""), "rate");
    const char *model = str_or(root, "model", "?"), *target = str_or(root, "target", "?");
    if (!strncmp(target, "http://", 7))
        target += 7;
    if (label)
        snprintf(s->label, sizeof(s->label), "%s", label);
    else if (cJSON_IsString(cJSON_GetObjectItemCaseSensitive(root, "label")))
        snprintf(s->label, sizeof(s->label), "%s", str_or(root, "label", ""));
    else /* the same server over both transports must read apart, also when cut short */
        snprintf(s->label, sizeof(s->label), "%s @ %s%s", model,
                 strcmp(str_or(root, "transport", ""), "grpc") ? "" : "gRPC ", target);
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(st, "max_tokens");
    const cJSON *stream = cJSON_GetObjectItemCaseSensitive(st, "stream");
    char who[220] = "";
    if (label || cJSON_IsString(cJSON_GetObjectItemCaseSensitive(root, "label")))
        snprintf(who, sizeof(who), ": %s @ %s", model, target);
    snprintf(s->note, sizeof(s->note), "%s%s, max_tokens %.0f, %s, %s, client %s", s->label, who,
             cJSON_IsNumber(mt) ? mt->valuedouble : 0.0,
             cJSON_IsTrue(stream) ? "streamed" : "not streamed", str_or(root, "date", "?"),
             str_or(root, "client_cpu", "?"));
    const cJSON *lv;
    cJSON_ArrayForEach(lv, levels)
    {
        if (s->n >= MAX_POINTS) {
            rc = dsv4_error(DSV4_ERANGE, "%s: more than %d levels", path, MAX_POINTS);
            goto out;
        }
        double x = num_or_nan(cJSON_GetObjectItemCaseSensitive(lv, *rate ? "rate" : "concurrency"));
        double tok = num_or_nan(cJSON_GetObjectItemCaseSensitive(lv, "tok_s"));
        if (!(x > 0) || isnan(tok)) {
            rc = dsv4_error(DSV4_EFORMAT, "%s: level %d has no positive %s or no tok_s", path, s->n,
                            *rate ? "rate" : "concurrency");
            goto out;
        }
        int i = s->n++;
        s->x[i] = x;
        s->v[M_TOK][0][i] = tok;
        s->v[M_TOK][1][i] = s->v[M_TOK][2][i] = NAN;
        s->has[M_TOK] = true;
        static const char *const keys[M_COUNT] = {NULL, "ttft_ms", "itl_ms"};
        for (int m = M_TTFT; m < M_COUNT; m++) {
            const cJSON *p = cJSON_GetObjectItemCaseSensitive(lv, keys[m]);
            for (int q = 0; q < 3; q++) {
                double v = num_or_nan(cJSON_GetObjectItemCaseSensitive(p, PCT_NAME[q]));
                s->v[m][q][i] = v;
                if (!isnan(v))
                    s->has[m] = true;
            }
        }
    }
out:
    cJSON_Delete(root);
    return rc;
}

/* A 1-2-5 step giving about `want` intervals up to max. */
static double nice_step(double max, int want)
{
    double raw = max / want, mag = pow(10, floor(log10(raw)));
    double f = raw / mag;
    return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * mag;
}

static void fmt_tick(char *buf, size_t n, double v)
{
    if (fabs(v) >= 10000)
        snprintf(buf, n, "%.0fk", v / 1000);
    else
        snprintf(buf, n, "%g", v);
}

struct axes {
    double lx0, lx1; /* log2 of the x range */
    double ymax;
    int top, bottom;
};

static double px_x(const struct axes *a, double x)
{
    return LEFT + (log2(x) - a->lx0) / (a->lx1 - a->lx0) * (RIGHT - LEFT);
}

static double px_y(const struct axes *a, double y)
{
    return a->bottom - y / a->ymax * (a->bottom - a->top);
}

static void panel(struct dsv4_strbuf *b, int y0, const char *title, const char *ylabel,
                  const char *xlabel, int m, const struct series *ss, int n, double lx0, double lx1)
{
    struct axes a = {lx0, lx1, 0, y0 + TOP_PAD, y0 + PANEL_H - BOT_PAD};
    int nq = m == M_TOK ? 1 : 3;
    for (int f = 0; f < n; f++)
        for (int q = 0; q < nq; q++)
            for (int i = 0; i < ss[f].n; i++)
                if (!isnan(ss[f].v[m][q][i]))
                    a.ymax = DSV4_MAX(a.ymax, ss[f].v[m][q][i]);
    if (!(a.ymax > 0))
        a.ymax = 1;
    double step = nice_step(a.ymax * 1.05, 5);
    a.ymax = ceil(a.ymax * 1.05 / step) * step;

    dsv4_strbuf_fmt(b, "<g class=\"panel\" id=\"panel-%s\">\n",
                    m == M_TOK    ? "tok_s"
                    : m == M_TTFT ? "ttft"
                                  : "itl");
    dsv4_strbuf_fmt(b,
                    "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"#fbfbfb\" "
                    "stroke=\"#999\"/>\n",
                    LEFT, a.top, RIGHT - LEFT, a.bottom - a.top);
    dsv4_strbuf_fmt(b, "<text x=\"%d\" y=\"%d\" font-size=\"16\" font-weight=\"bold\">", LEFT,
                    y0 + 30);
    xml_str(b, title);
    dsv4_strbuf_str(b, "</text>\n");
    /* y grid and ticks */
    for (double v = 0; v <= a.ymax * (1 + 1e-9); v += step) {
        double y = px_y(&a, v);
        char t[32];
        fmt_tick(t, sizeof(t), v);
        dsv4_strbuf_fmt(
                b,
                "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#ddd\"/>"
                "<text x=\"%d\" y=\"%.1f\" font-size=\"12\" text-anchor=\"end\">%s</text>\n",
                LEFT, y, RIGHT, y, LEFT - 6, y + 4, t);
    }
    /* x grid: powers of two, every other one when crowded */
    int span = (int)(lx1 - lx0), every = span > 12 ? 2 : 1;
    for (int e = (int)lx0; e <= (int)lx1; e++) {
        if ((e - (int)lx0) % every)
            continue;
        double x = px_x(&a, pow(2, e));
        char t[32];
        fmt_tick(t, sizeof(t), pow(2, e));
        dsv4_strbuf_fmt(b,
                        "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#ddd\"/>"
                        "<text x=\"%.1f\" y=\"%d\" font-size=\"12\" "
                        "text-anchor=\"middle\">%s</text>\n",
                        x, a.top, x, a.bottom, x, a.bottom + 18, t);
    }
    dsv4_strbuf_fmt(b, "<text x=\"%d\" y=\"%d\" font-size=\"13\" text-anchor=\"middle\">",
                    (LEFT + RIGHT) / 2, a.bottom + 40);
    xml_str(b, xlabel);
    dsv4_strbuf_str(b, "</text>\n");
    int ymid = (a.top + a.bottom) / 2;
    dsv4_strbuf_fmt(b,
                    "<text x=\"%d\" y=\"%d\" font-size=\"13\" text-anchor=\"middle\" "
                    "transform=\"rotate(-90 %d %d)\">",
                    28, ymid, 28, ymid);
    xml_str(b, ylabel);
    dsv4_strbuf_str(b, "</text>\n");
    /* the series */
    for (int f = 0; f < n; f++) {
        const char *col = ss[f].reference ? REF_COLOR : COLORS[f % DSV4_ARRAY_LEN(COLORS)];
        for (int q = 0; q < nq; q++) {
            const char *dash = ss[f].reference ? REF_DASH : DASH[q];
            struct dsv4_strbuf pts;
            dsv4_strbuf_init(&pts);
            int np = 0;
            for (int i = 0; i < ss[f].n; i++) {
                double v = ss[f].v[m][q][i];
                if (isnan(v))
                    continue;
                dsv4_strbuf_fmt(&pts, "%s%.1f,%.1f", np ? " " : "", px_x(&a, ss[f].x[i]),
                                px_y(&a, v));
                np++;
            }
            if (np) {
                dsv4_strbuf_fmt(b,
                                "<polyline class=\"series\" fill=\"none\" stroke=\"%s\" "
                                "stroke-width=\"2\"%s%s%s points=\"%s\"/>\n",
                                col, dash[0] ? " stroke-dasharray=\"" : "", dash,
                                dash[0] ? "\"" : "", pts.p);
                for (int i = 0; i < ss[f].n; i++) {
                    double v = ss[f].v[m][q][i];
                    if (isnan(v))
                        continue;
                    dsv4_strbuf_fmt(b,
                                    "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3.5\" fill=\"%s\">"
                                    "<title>%g: %.4g</title></circle>\n",
                                    px_x(&a, ss[f].x[i]), px_y(&a, v), col, ss[f].x[i], v);
                }
            }
            dsv4_strbuf_free(&pts);
        }
    }
    /* legend */
    int ly = a.top + 8;
    for (int f = 0; f < n; f++) {
        if (!ss[f].has[m])
            continue; /* a run that did not stream has no latency lines */
        const char *col = ss[f].reference ? REF_COLOR : COLORS[f % DSV4_ARRAY_LEN(COLORS)];
        dsv4_strbuf_fmt(b,
                        "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"%s\" "
                        "stroke-width=\"3\"%s/><text class=\"legend\" x=\"%d\" y=\"%d\" "
                        "font-size=\"12\">",
                        RIGHT + 14, ly, RIGHT + 40, ly, col,
                        ss[f].reference ? " stroke-dasharray=\"" REF_DASH "\"" : "", RIGHT + 46,
                        ly + 4);
        char lab[32];
        snprintf(lab, sizeof(lab), "%s", ss[f].label);
        if (strlen(ss[f].label) >= sizeof(lab))
            strcpy(lab + sizeof(lab) - 4, "...");
        xml_str(b, lab);
        dsv4_strbuf_str(b, "</text>\n");
        ly += 22;
    }
    if (nq == 3) {
        ly += 8;
        for (int q = 0; q < 3; q++, ly += 20)
            dsv4_strbuf_fmt(b,
                            "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"#333\" "
                            "stroke-width=\"2\"%s%s%s/><text x=\"%d\" y=\"%d\" "
                            "font-size=\"12\">%s</text>\n",
                            RIGHT + 14, ly, RIGHT + 40, ly,
                            DASH[q][0] ? " stroke-dasharray=\"" : "", DASH[q],
                            DASH[q][0] ? "\"" : "", RIGHT + 46, ly + 4, PCT_NAME[q]);
    }
    dsv4_strbuf_str(b, "</g>\n");
}

int dsv4_bench_plot(int argc, char **argv)
{
    const char *out = NULL, *title = NULL, *labels[MAX_FILES] = {0}, *files[MAX_FILES];
    const char *pending = NULL; /* a --label waiting for its file */
    int n_files = 0;
    bool published = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--published")) {
            published = true;
            continue;
        }
        if (!strcmp(a, "--out") || !strcmp(a, "--label") || !strcmp(a, "--title")) {
            if (i + 1 >= argc) {
                fprintf(stderr, ME ": %s needs a value\n", a);
                return 2;
            }
            const char *v = argv[++i];
            if (!strcmp(a, "--out")) {
                if (!*v) {
                    fprintf(stderr, ME ": bad --out ''\n");
                    return 2;
                }
                out = v;
            } else if (!strcmp(a, "--title")) {
                title = v;
            } else {
                if (pending) {
                    fprintf(stderr, ME ": two --label before one file\n");
                    return 2;
                }
                pending = v;
            }
            continue;
        }
        if (a[0] == '-' && a[1]) {
            fprintf(stderr, ME ": unknown option '%s'\n", a);
            return 2;
        }
        if (n_files >= MAX_FILES) {
            fprintf(stderr, ME ": more than %d files\n", MAX_FILES);
            return 2;
        }
        labels[n_files] = pending;
        pending = NULL;
        files[n_files++] = a;
    }
    if (pending) {
        fprintf(stderr, ME ": --label '%s' is not followed by a file\n", pending);
        return 2;
    }
    if (!out || !n_files) {
        fprintf(stderr, ME ": %s\n", !out ? "--out FILE.svg is required" : "no JSON file given");
        usage(stderr);
        return 2;
    }
    struct series *ss = calloc((size_t)n_files + 1, sizeof(*ss));
    if (!ss) {
        fprintf(stderr, ME ": out of memory\n");
        return 1;
    }
    int rc = 0, n_rate = 0;
    double xmin = INFINITY, xmax = 0;
    bool any[M_COUNT] = {false};
    for (int f = 0; f < n_files && !rc; f++) {
        bool rate = false;
        rc = load(files[f], labels[f], &ss[f], &rate);
        n_rate += rate;
        for (int i = 0; !rc && i < ss[f].n; i++) {
            xmin = DSV4_MIN(xmin, ss[f].x[i]);
            xmax = DSV4_MAX(xmax, ss[f].x[i]);
        }
        for (int m = 0; m < M_COUNT; m++)
            any[m] |= ss[f].has[m];
    }
    if (!rc && n_rate && n_rate != n_files)
        rc = dsv4_error(DSV4_EINVAL, "cannot mix --rate and --concurrency results in one plot");
    if (!rc && n_rate && published)
        rc = dsv4_error(DSV4_EINVAL, "--published is a concurrency sweep: not with --rate results");
    int n_series = n_files;
    if (!rc && published) {
        struct series *r = &ss[n_series++];
        snprintf(r->label, sizeof(r->label), PUB_LABEL);
        snprintf(r->note, sizeof(r->note),
                 PUB_LABEL ": TP 8 + EP, MTP n=1, max_tokens 128, not streamed, README 056e0502 "
                           "(spec/formats.md 3.1)");
        r->reference = r->has[M_TOK] = true;
        r->n = 4;
        for (int i = 0; i < 4; i++) {
            r->x[i] = PUB_X[i];
            r->v[M_TOK][0][i] = PUB_TOK[i];
            r->v[M_TOK][1][i] = r->v[M_TOK][2][i] = NAN;
            for (int q = 0; q < 3; q++)
                r->v[M_TTFT][q][i] = r->v[M_ITL][q][i] = NAN;
            xmin = DSV4_MIN(xmin, PUB_X[i]);
            xmax = DSV4_MAX(xmax, PUB_X[i]);
        }
    }
    if (rc) {
        fprintf(stderr, ME ": %s\n", dsv4_errmsg());
        free(ss);
        return 1;
    }
    double lx0 = floor(log2(xmin)), lx1 = ceil(log2(xmax));
    if (lx1 <= lx0)
        lx1 = lx0 + 1;
    const char *xlabel = n_rate ? "request rate (requests/s, log2)" : "concurrency (log2)";
    int n_panels = 1 + any[M_TTFT] + any[M_ITL];
    int height = TITLE_H + n_panels * PANEL_H + 20 + 16 * n_series;

    struct dsv4_strbuf b;
    dsv4_strbuf_init(&b);
    dsv4_strbuf_fmt(&b,
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
                    "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
                    "viewBox=\"0 0 %d %d\" font-family=\"DejaVu Sans, Helvetica, Arial, "
                    "sans-serif\">\n"
                    "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
                    WIDTH, height, WIDTH, height);
    dsv4_strbuf_fmt(&b, "<title>");
    xml_str(&b, title ? title : "dsv4 bench serve");
    dsv4_strbuf_str(&b, "</title>\n");
    dsv4_strbuf_fmt(&b,
                    "<text x=\"%d\" y=\"34\" font-size=\"20\" font-weight=\"bold\" "
                    "text-anchor=\"middle\">",
                    WIDTH / 2);
    xml_str(&b, title ? title
                      : (n_rate ? "Aggregate output tok/s vs request rate"
                                : "Aggregate output tok/s vs concurrency"));
    dsv4_strbuf_str(&b, "</text>\n");
    int y = TITLE_H;
    panel(&b, y, "Aggregate output throughput (completion tokens / wall time)", "tok/s", xlabel,
          M_TOK, ss, n_series, lx0, lx1);
    y += PANEL_H;
    if (any[M_TTFT]) {
        panel(&b, y, "Time to first token", "TTFT (ms)", xlabel, M_TTFT, ss, n_series, lx0, lx1);
        y += PANEL_H;
    }
    if (any[M_ITL]) {
        panel(&b, y, "Inter-token latency (gaps between streamed chunks)", "ITL (ms)", xlabel,
              M_ITL, ss, n_series, lx0, lx1);
        y += PANEL_H;
    }
    for (int f = 0; f < n_series; f++) {
        dsv4_strbuf_fmt(&b,
                        "<text class=\"note\" x=\"%d\" y=\"%d\" font-size=\"11\" fill=\"#555\">",
                        LEFT, y + 10 + 16 * f);
        xml_str(&b, ss[f].note);
        dsv4_strbuf_str(&b, "</text>\n");
    }
    dsv4_strbuf_str(&b, "</svg>\n");
    free(ss);
    if (b.oom) {
        fprintf(stderr, ME ": out of memory\n");
        dsv4_strbuf_free(&b);
        return 1;
    }
    FILE *f = fopen(out, "wb");
    bool ok = f && fwrite(b.p, 1, b.len, f) == b.len;
    if (f && fclose(f))
        ok = false;
    if (!ok) {
        fprintf(stderr, ME ": %s: %s\n", out, errno ? strerror(errno) : "write failed");
        dsv4_strbuf_free(&b);
        return 1;
    }
    dsv4_strbuf_free(&b);
    printf("wrote %s (%d file%s, %d panel%s)\n", out, n_files, n_files > 1 ? "s" : "", n_panels,
           n_panels > 1 ? "s" : "");
    return 0;
}
