/*
 * bench_serve.c - `dsv4 bench serve`: the serving benchmark of a running
 * OpenAI-compatible server (dsv4d, vLLM, SGLang, ...; --openai URL) or of
 * dsv4d over gRPC (--target HOST:PORT), reproducing the published harness
 * (spec/formats.md §3): a sweep of concurrency levels, and the MTP
 * acceptance probe.  Both transports run the same sweep with the same
 * prompts and definitions (the clients: tools/bench_serve_openai.c and
 * tools/bench_serve_grpc.c), so that one tool compares them; the JSON
 * records which ran ("transport").
 *
 * The throughput sweep, as published (§3.1): for each concurrency c,
 * n = 4 x c requests (--requests-per-level), the five published short
 * prompts cycled in order, POST /v1/chat/completions with one user message,
 * temperature 0, max_tokens 128, not streamed; at most c requests in flight
 * (c client threads, each with its own keep-alive connection, each taking
 * the next request as soon as its previous one is answered).
 *
 *   tok_s (aggregate) = sum of usage.completion_tokens over the good
 *                       requests / wall_s,
 *   wall_s            = from the first request dispatched to the last
 *                       response received,
 *
 * a good request being HTTP 200, finish_reason stop or length and more than
 * 0 completion tokens (the published harness drops the others; here they
 * count as errors, by kind).  Only output tokens count; prompt tokens do
 * not; prefill and queueing time are inside wall_s.  Per request (as
 * published): req_tok_s = completion_tokens / e2e, e2e = the request's wall
 * time from sending to its last byte.
 *
 * Streaming (--stream) adds: TTFT = first output event - send; ITL = the
 * gaps between consecutive output events of a request, pooled over all
 * requests of the level (a chunk that carries several tokens is one gap;
 * over gRPC an event is a Generate chunk with tokens);
 * TPOT = (e2e - TTFT) / (completion_tokens - 1).  Percentiles are linear
 * interpolations between order statistics (numpy's default).
 *
 * --rate R (Poisson arrivals, exponential gaps of mean 1/R from --seed)
 * replaces fixed concurrency; --concurrency then caps the requests in
 * flight (one value).  --duration S stops dispatching after S seconds.
 *
 * The MTP probe (§3.2, --mtp-probe): 20 requests (the four published
 * prompts cycled), sequential, max_tokens 512, temperature 0; acceptance =
 * delta accepted tokens / delta draft tokens of the server's /metrics
 * counters scraped before and after, overall and per draft position (over
 * gRPC the scrape URL must be given: --metrics, dsv4d's HTTP /metrics).
 *
 * Invariants: the client never crashes on what a server sends (counted as
 * errors by kind, by the clients); options are strict (exit 2);
 * exit 1 when the server cannot be used at all (no model, no metrics, every
 * request of a level failed); the JSON is written even then.
 */
#include "tools/bench_serve.h"

#include "base/dsv4.h"
#include "engine/io/strbuf.h"
#include "tools/grpc_client.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define ME          "dsv4 bench serve"
#define MAX_LEVELS  32
#define MAX_THREADS 4096

static const char *const PUBLISHED_PROMPTS[5] = {
        "Briefly explain what a black hole is.",
        "Translate 'good morning' into Japanese and Spanish.",
        "What is 12345 * 678? Show the multiplication step by step.",
        "List five common Python data structures.",
        "Compose a haiku about autumn.",
};

static const char *const MTP_PROMPTS[4] = {
        "Write a Python function that returns the nth Fibonacci number using memoization.",
        "What is the time complexity of binary search and why?",
        "Solve: x^2 - 5x + 6 = 0. Show your work.",
        "Explain how merge sort works in a paragraph.",
};

struct opts {
    const char *url, *target, *model, *api_key, *json_path, *prompt_file, *metrics_url, *label;
    int conc[MAX_LEVELS], n_conc;
    double rates[MAX_LEVELS];
    int n_rates;
    long requests;  /* -1: the default */
    int max_tokens; /* -1: the default (128, probe 512) */
    int warmup, probe_prompts;
    int plen_lo, plen_hi; /* --prompt-len; 0: not given */
    bool stream, chat, ignore_eos, mtp_probe, progress;
    double temperature, duration, timeout;
    unsigned long long seed;
};

static void usage(FILE *f)
{
    fprintf(f, "usage: dsv4 bench serve (--openai URL | --target HOST:PORT) [--model NAME]\n"
               "         [--concurrency 1,16,64,128] [--requests-per-level N] [--max-tokens 128]\n"
               "         [--stream] [--temperature 0] [--prompt-len A[-B] | --prompt-file F]\n"
               "         [--rate R[,R...]] [--duration S] [--warmup N] [--json FILE]\n"
               "         [--api-key K] [--label L] [--endpoint chat|completions] [--ignore-eos]\n"
               "         [--timeout S] [--seed N] [--no-progress]\n"
               "       dsv4 bench serve --mtp-probe (--openai URL [--metrics URL] |\n"
               "         --target HOST:PORT --metrics URL)\n"
               "         [--probe-prompts 20] [--max-tokens 512] [--json FILE] ...\n"
               "\n"
               "The published throughput sweep (default: concurrency 1,16,64,128, 4 x c requests\n"
               "per level, the 5 published prompts, chat, temperature 0, max_tokens 128, not\n"
               "streamed): tok/s = completion tokens of the good requests / wall time from the\n"
               "first request sent to the last response received.\n"
               "  --openai URL            server base URL (http://HOST:PORT, /v1 optional)\n"
               "  --target HOST:PORT      dsv4d's gRPC address instead (Generate streams; chat is\n"
               "                          encoded here as dsv4d's chat endpoint does)\n"
               "  --model NAME            model to request (default: the first of /v1/models;\n"
               "                          gRPC: GetModelInfo's, and --model only names the run)\n"
               "  --concurrency LIST      requests in flight per level (with --rate: one cap, 64)\n"
               "  --requests-per-level N  requests per level (default 4 x concurrency; rate: 100)\n"
               "  --max-tokens N          max_tokens of each request (128; probe 512)\n"
               "  --stream                stream (SSE; gRPC streams either way) and time the\n"
               "                          output: adds TTFT, ITL and TPOT percentiles\n"
               "  --temperature T         sampling temperature (0)\n"
               "  --prompt-len A[-B]      random prompts of A to B words (about a token each)\n"
               "  --prompt-file F         prompts, one per line (a JSON string line is decoded)\n"
               "  --rate LIST             Poisson arrivals at R requests/s, one level per rate\n"
               "  --duration S            stop sending after S seconds per level\n"
               "  --warmup N              N requests before the first level, not counted (0)\n"
               "  --json FILE             write the results as JSON\n"
               "  --api-key K             bearer token (gRPC: authorization metadata; also for\n"
               "                          --metrics)\n"
               "  --label L               legend of this run in `dsv4 bench plot`\n"
               "  --endpoint E            chat (published) or completions\n"
               "  --ignore-eos            ask the server to ignore EOS (ignore_eos: true)\n"
               "  --timeout S             per-request limit in seconds (600)\n"
               "  --seed N                seed of --prompt-len prompts and --rate arrivals (0)\n"
               "  --no-progress           no progress bar (it is drawn only on a terminal)\n"
               "The MTP acceptance probe (published: 20 requests, sequential, max_tokens 512):\n"
               "  --mtp-probe             run the probe instead of the sweep\n"
               "  --metrics URL           the server's Prometheus endpoint (default URL/metrics;\n"
               "                          required with --target: dsv4d's HTTP /metrics)\n"
               "  --probe-prompts N       requests of the probe (20)\n");
}

/* ------------------------------------------------------------ options */

static int bad(const char *opt, const char *v)
{
    fprintf(stderr, ME ": bad %s '%s'\n", opt, v);
    return 2;
}

static bool parse_long(const char *v, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (end == v || *end || errno || x < lo || x > hi || (*v < '0' || *v > '9'))
        return false;
    *out = x;
    return true;
}

static bool parse_double(const char *v, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (end == v || *end || errno || !isfinite(x) || x < lo || x > hi ||
        (*v != '.' && (*v < '0' || *v > '9')))
        return false;
    *out = x;
    return true;
}

/* "1,16,64": ints in [1, MAX_THREADS], at most MAX_LEVELS */
static bool parse_int_list(const char *v, int *out, int *n)
{
    char buf[512];
    if (!*v || strlen(v) >= sizeof(buf))
        return false;
    strcpy(buf, v);
    *n = 0;
    for (char *s = buf;;) {
        char *comma = strchr(s, ',');
        if (comma)
            *comma = 0;
        long x;
        if (*n >= MAX_LEVELS || !parse_long(s, 1, MAX_THREADS, &x))
            return false;
        out[(*n)++] = (int)x;
        if (!comma)
            return true;
        s = comma + 1;
    }
}

static bool parse_rate_list(const char *v, double *out, int *n)
{
    char buf[512];
    if (!*v || strlen(v) >= sizeof(buf))
        return false;
    strcpy(buf, v);
    *n = 0;
    for (char *s = buf;;) {
        char *comma = strchr(s, ',');
        if (comma)
            *comma = 0;
        double x;
        if (*n >= MAX_LEVELS || !parse_double(s, 1e-6, 1e6, &x) || x <= 0)
            return false;
        out[(*n)++] = x;
        if (!comma)
            return true;
        s = comma + 1;
    }
}

static int parse_opts(int argc, char **argv, struct opts *o)
{
    memset(o, 0, sizeof(*o));
    o->requests = -1;
    o->max_tokens = -1;
    o->probe_prompts = 20;
    o->chat = true;
    o->progress = true;
    o->timeout = 600;
    static const int def_conc[] = {1, 16, 64, 128};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return -1;
        }
        if (!strcmp(a, "--stream")) {
            o->stream = true;
            continue;
        }
        if (!strcmp(a, "--ignore-eos")) {
            o->ignore_eos = true;
            continue;
        }
        if (!strcmp(a, "--mtp-probe")) {
            o->mtp_probe = true;
            continue;
        }
        if (!strcmp(a, "--no-progress")) {
            o->progress = false;
            continue;
        }
        static const char *const with_value[] = {
                "--openai",     "--model",       "--concurrency",   "--requests-per-level",
                "--max-tokens", "--temperature", "--prompt-len",    "--prompt-file",
                "--rate",       "--duration",    "--warmup",        "--json",
                "--api-key",    "--metrics",     "--probe-prompts", "--endpoint",
                "--timeout",    "--seed",        "--label",         "--target"};
        bool known = false;
        for (size_t k = 0; k < DSV4_ARRAY_LEN(with_value); k++)
            known |= !strcmp(a, with_value[k]);
        if (!known) {
            fprintf(stderr, ME ": unknown option '%s'\n", a);
            return 2;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, ME ": %s needs a value\n", a);
            return 2;
        }
        const char *v = argv[++i];
        long l;
        double d;
        if (!strcmp(a, "--openai")) {
            struct dsv4_bench_url u;
            if (dsv4_bench_url_parse(v, &u)) {
                fprintf(stderr, ME ": bad --openai '%s': %s\n", v, dsv4_errmsg());
                return 2;
            }
            o->url = v;
        } else if (!strcmp(a, "--target")) {
            if (dsv4_gc_target_check(v)) {
                fprintf(stderr, ME ": bad --target '%s': %s\n", v, dsv4_errmsg());
                return 2;
            }
            o->target = v;
        } else if (!strcmp(a, "--metrics")) {
            struct dsv4_bench_url u;
            if (dsv4_bench_url_parse(v, &u)) {
                fprintf(stderr, ME ": bad --metrics '%s': %s\n", v, dsv4_errmsg());
                return 2;
            }
            o->metrics_url = v;
        } else if (!strcmp(a, "--model")) {
            if (!*v)
                return bad(a, v);
            o->model = v;
        } else if (!strcmp(a, "--api-key")) {
            o->api_key = v;
        } else if (!strcmp(a, "--json")) {
            if (!*v)
                return bad(a, v);
            o->json_path = v;
        } else if (!strcmp(a, "--label")) {
            o->label = v;
        } else if (!strcmp(a, "--prompt-file")) {
            if (!*v)
                return bad(a, v);
            o->prompt_file = v;
        } else if (!strcmp(a, "--concurrency")) {
            if (!parse_int_list(v, o->conc, &o->n_conc))
                return bad(a, v);
        } else if (!strcmp(a, "--rate")) {
            if (!parse_rate_list(v, o->rates, &o->n_rates))
                return bad(a, v);
        } else if (!strcmp(a, "--requests-per-level")) {
            if (!parse_long(v, 1, 10000000, &l))
                return bad(a, v);
            o->requests = l;
        } else if (!strcmp(a, "--max-tokens")) {
            if (!parse_long(v, 1, 1000000, &l))
                return bad(a, v);
            o->max_tokens = (int)l;
        } else if (!strcmp(a, "--warmup")) {
            if (!parse_long(v, 0, 1000000, &l))
                return bad(a, v);
            o->warmup = (int)l;
        } else if (!strcmp(a, "--probe-prompts")) {
            if (!parse_long(v, 1, 1000000, &l))
                return bad(a, v);
            o->probe_prompts = (int)l;
        } else if (!strcmp(a, "--seed")) {
            if (!parse_long(v, 0, 2147483647L, &l))
                return bad(a, v);
            o->seed = (unsigned long long)l;
        } else if (!strcmp(a, "--temperature")) {
            if (!parse_double(v, 0, 100, &d))
                return bad(a, v);
            o->temperature = d;
        } else if (!strcmp(a, "--duration")) {
            if (!parse_double(v, 0.001, 1e7, &d))
                return bad(a, v);
            o->duration = d;
        } else if (!strcmp(a, "--timeout")) {
            if (!parse_double(v, 0.001, 1e7, &d))
                return bad(a, v);
            o->timeout = d;
        } else if (!strcmp(a, "--endpoint")) {
            if (!strcmp(v, "chat"))
                o->chat = true;
            else if (!strcmp(v, "completions"))
                o->chat = false;
            else
                return bad(a, v);
        } else if (!strcmp(a, "--prompt-len")) {
            char buf[64];
            if (strlen(v) >= sizeof(buf))
                return bad(a, v);
            strcpy(buf, v);
            char *dash = strchr(buf, '-');
            if (dash)
                *dash = 0;
            long lo, hi;
            if (!parse_long(buf, 1, 1000000, &lo))
                return bad(a, v);
            hi = lo;
            if (dash && !parse_long(dash + 1, lo, 1000000, &hi))
                return bad(a, v);
            o->plen_lo = (int)lo;
            o->plen_hi = (int)hi;
        }
    }
    if (!o->url == !o->target) {
        fprintf(stderr, ME ": %s\n",
                o->url ? "--openai and --target exclude each other"
                       : "--openai URL or --target HOST:PORT is required");
        return 2;
    }
    if (o->mtp_probe && o->target && !o->metrics_url) {
        fprintf(stderr, ME ": --mtp-probe over gRPC needs --metrics URL (dsv4d's HTTP /metrics)\n");
        return 2;
    }
    if (o->prompt_file && o->plen_lo) {
        fprintf(stderr, ME ": --prompt-len and --prompt-file exclude each other\n");
        return 2;
    }
    if (o->n_rates && o->n_conc > 1) {
        fprintf(stderr, ME ": with --rate, --concurrency is one cap on requests in flight\n");
        return 2;
    }
    if (o->mtp_probe && (o->n_rates || o->duration > 0)) {
        fprintf(stderr, ME ": --mtp-probe is sequential: no --rate or --duration\n");
        return 2;
    }
    if (!o->n_conc) {
        if (o->n_rates) {
            o->conc[0] = 64;
            o->n_conc = 1;
        } else {
            memcpy(o->conc, def_conc, sizeof(def_conc));
            o->n_conc = (int)DSV4_ARRAY_LEN(def_conc);
        }
    }
    if (o->max_tokens < 0)
        o->max_tokens = o->mtp_probe ? 512 : 128;
    return 0;
}

/* ------------------------------------------------------------ prompts */

struct prompts {
    char **list; /* fixed prompts, cycled; NULL for random ones */
    int n;
    int lo, hi; /* random: words per prompt */
    unsigned long long seed;
};

/* Common English words, each one token in the usual BPE vocabularies (with its space). */
static const char *const WORDS[] = {
        "the",   "of",   "and",  "to",   "in",     "is",    "that",    "for",     "it",
        "as",    "was",  "with", "on",   "be",     "at",    "by",      "this",    "had",
        "not",   "are",  "but",  "from", "or",     "have",  "an",      "they",    "which",
        "one",   "you",  "were", "all",  "we",     "her",   "she",     "there",   "would",
        "their", "will", "when", "who",  "him",    "been",  "has",     "more",    "if",
        "no",    "out",  "so",   "said", "what",   "up",    "its",     "about",   "into",
        "than",  "them", "can",  "only", "other",  "new",   "some",    "could",   "time",
        "these", "two",  "may",  "then", "do",     "first", "any",     "my",      "now",
        "such",  "like", "our",  "over", "man",    "me",    "even",    "most",    "made",
        "after", "also", "did",  "many", "before", "must",  "through", "back",    "years",
        "where", "much", "your", "way",  "well",   "down",  "should",  "because", "each",
        "just"};

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* The prompt of request idx: malloc'ed, or NULL when out of memory. */
static char *prompt_for(const struct prompts *p, long idx)
{
    if (p->list)
        return strdup(p->list[idx % p->n]);
    uint64_t s = p->seed * 0x100000001b3ull + (uint64_t)idx;
    int words = p->lo + (int)(splitmix(&s) % (uint64_t)(p->hi - p->lo + 1));
    struct dsv4_strbuf b;
    dsv4_strbuf_init(&b);
    dsv4_strbuf_fmt(&b, "%ld", idx); /* distinct from the first token: no shared prefix */
    for (int i = 1; i < words; i++)
        dsv4_strbuf_fmt(&b, " %s", WORDS[splitmix(&s) % DSV4_ARRAY_LEN(WORDS)]);
    if (b.oom) {
        dsv4_strbuf_free(&b);
        return NULL;
    }
    return b.p;
}

static void prompts_free(struct prompts *p)
{
    for (int i = 0; p->list && i < p->n; i++)
        free(p->list[i]);
    free(p->list);
    memset(p, 0, sizeof(*p));
}

static int prompts_fixed(struct prompts *p, const char *const *list, int n)
{
    p->list = calloc((size_t)n, sizeof(char *));
    if (!p->list)
        return dsv4_error(DSV4_ENOMEM, "out of memory");
    p->n = n;
    for (int i = 0; i < n; i++)
        if (!(p->list[i] = strdup(list[i])))
            return dsv4_error(DSV4_ENOMEM, "out of memory");
    return 0;
}

static int prompts_file(struct prompts *p, const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return dsv4_error(DSV4_EIO, "%s: %s", path, strerror(errno));
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int cap_list = 0, rc = 0;
    while ((len = getline(&line, &cap, f)) >= 0) {
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = 0;
        if (!len)
            continue;
        char *text = NULL;
        if (line[0] == '"') { /* a JSON string: prompts with newlines */
            cJSON *j = cJSON_Parse(line);
            if (!cJSON_IsString(j)) {
                cJSON_Delete(j);
                rc = dsv4_error(DSV4_EFORMAT, "%s: line %d is not a valid JSON string", path,
                                p->n + 1);
                break;
            }
            text = strdup(j->valuestring);
            cJSON_Delete(j);
        } else {
            text = strdup(line);
        }
        if (p->n == cap_list) {
            cap_list = cap_list ? 2 * cap_list : 64;
            char **nl = realloc(p->list, (size_t)cap_list * sizeof(char *));
            if (!nl) {
                free(text);
                rc = dsv4_error(DSV4_ENOMEM, "out of memory");
                break;
            }
            p->list = nl;
        }
        if (!text) {
            rc = dsv4_error(DSV4_ENOMEM, "out of memory");
            break;
        }
        p->list[p->n++] = text;
    }
    if (!rc && ferror(f))
        rc = dsv4_error(DSV4_EIO, "%s: read error", path);
    free(line);
    fclose(f);
    if (!rc && !p->n)
        rc = dsv4_error(DSV4_EFORMAT, "%s: no prompts", path);
    return rc;
}

/* ------------------------------------------------------------ one level */

struct row {
    long idx;
    double t_send, t_first, t_last, t_end; /* t_first = 0: no output event */
    struct dsv4_bench_outcome o;
    double *gaps; /* inter-event gaps (s), owned */
    int n_gaps, cap_gaps;
};

struct level {
    /* setup */
    const struct dsv4_bench_client *cli;
    const struct dsv4_bench_client_cfg *cfg;
    const struct prompts *prompts;
    int conc;        /* threads = requests in flight at most */
    double rate;     /* 0: fixed concurrency */
    long n_req;      /* -1: until the duration is over */
    double duration; /* 0: none */
    uint64_t rng;
    const char *tag; /* progress: "c=16" */
    bool progress;
    /* shared, under mu */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    long next, done, errors, threads_left;
    int64_t tokens;
    double t0, next_arrival;
    /* results, after the join */
    struct row *rows;
    long n_rows;
};

struct worker {
    struct level *lv;
    pthread_t tid;
    struct row *rows;
    long n, cap;
    int rc; /* local failure (out of memory) */
};

static void on_output(void *ctx, double t)
{
    struct row *r = ctx;
    if (r->t_first == 0) {
        r->t_first = r->t_last = t;
        return;
    }
    if (r->n_gaps == r->cap_gaps) {
        int cap = r->cap_gaps ? 2 * r->cap_gaps : 64;
        double *g = realloc(r->gaps, (size_t)cap * sizeof(double));
        if (!g)
            return; /* a lost gap only thins the ITL sample */
        r->gaps = g;
        r->cap_gaps = cap;
    }
    r->gaps[r->n_gaps++] = t - r->t_last;
    r->t_last = t;
}

static double exp_draw(uint64_t *s, double rate)
{
    double u = (double)((splitmix(s) >> 11) + 1) / 9007199254740993.0; /* (0, 1] */
    return -log(u) / rate;
}

static void sleep_until(double t)
{
    for (;;) {
        double d = t - dsv4_now();
        if (d <= 0)
            return;
        struct timespec ts = {(time_t)d, (long)((d - (double)(time_t)d) * 1e9)};
        nanosleep(&ts, NULL);
    }
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct level *lv = w->lv;
    void *conn = NULL;
    w->rc = lv->cli->open(lv->cfg, &conn);
    while (!w->rc) {
        pthread_mutex_lock(&lv->mu);
        double now = dsv4_now();
        bool stop = (lv->n_req >= 0 && lv->next >= lv->n_req) ||
                    (lv->duration > 0 && now - lv->t0 >= lv->duration);
        long idx = lv->next;
        double arrival = 0;
        if (!stop) {
            lv->next++;
            if (lv->rate > 0) {
                arrival = lv->t0 + lv->next_arrival;
                lv->next_arrival += exp_draw(&lv->rng, lv->rate);
            }
        }
        pthread_mutex_unlock(&lv->mu);
        if (stop)
            break;
        if (lv->rate > 0) {
            if (lv->duration > 0 && arrival - lv->t0 >= lv->duration)
                break;
            sleep_until(arrival);
        }
        if (w->n == w->cap) {
            long cap = w->cap ? 2 * w->cap : 16;
            struct row *nr = realloc(w->rows, (size_t)cap * sizeof(*nr));
            if (!nr) {
                w->rc = dsv4_error(DSV4_ENOMEM, "out of memory");
                break;
            }
            w->rows = nr;
            w->cap = cap;
        }
        struct row *r = &w->rows[w->n++];
        memset(r, 0, sizeof(*r));
        r->idx = idx;
        char *prompt = prompt_for(lv->prompts, idx);
        r->t_send = dsv4_now();
        int rc = prompt ? lv->cli->generate(conn, prompt, on_output, r, &r->o) : DSV4_ENOMEM;
        r->t_end = dsv4_now();
        free(prompt);
        if (rc) {
            r->o.err = DSV4_BENCH_EIO;
            snprintf(r->o.msg, sizeof(r->o.msg), "client: %s", dsv4_strerror(rc));
        }
        pthread_mutex_lock(&lv->mu);
        lv->done++;
        if (r->o.err)
            lv->errors++;
        else
            lv->tokens += r->o.completion_tokens;
        pthread_cond_signal(&lv->cv);
        pthread_mutex_unlock(&lv->mu);
    }
    if (conn)
        lv->cli->close(conn);
    pthread_mutex_lock(&lv->mu);
    lv->threads_left--;
    pthread_cond_signal(&lv->cv);
    pthread_mutex_unlock(&lv->mu);
    return NULL;
}

static void draw_progress(struct level *lv, bool final)
{
    double el = dsv4_now() - lv->t0;
    char bar[32];
    double frac = lv->n_req > 0      ? (double)lv->done / (double)lv->n_req
                  : lv->duration > 0 ? el / lv->duration
                                     : 0;
    frac = DSV4_MIN(DSV4_MAX(frac, 0.0), 1.0);
    int w = (int)sizeof(bar) - 1, k = (int)(frac * w + 0.5);
    for (int i = 0; i < w; i++)
        bar[i] = i < k ? '#' : '.';
    bar[w] = 0;
    char total[32] = "?";
    if (lv->n_req > 0)
        snprintf(total, sizeof(total), "%ld", lv->n_req);
    fprintf(stderr, "\r\033[K  %-8s [%s] %ld/%s  err %ld  %lld tok  %.1f s", lv->tag, bar, lv->done,
            total, lv->errors, (long long)lv->tokens, el);
    if (final)
        fprintf(stderr, "\r\033[K");
    fflush(stderr);
}

static int row_cmp(const void *a, const void *b)
{
    const struct row *x = a, *y = b;
    return x->idx < y->idx ? -1 : x->idx > y->idx;
}

/* Runs one level: lv's setup filled in; results in lv->rows. */
static int run_level(struct level *lv)
{
    long threads = lv->conc;
    if (lv->n_req >= 0 && lv->n_req < threads)
        threads = lv->n_req;
    struct worker *ws = calloc((size_t)DSV4_MAX(threads, 1), sizeof(*ws));
    if (!ws)
        return dsv4_error(DSV4_ENOMEM, "out of memory");
    pthread_mutex_init(&lv->mu, NULL);
    pthread_cond_init(&lv->cv, NULL);
    lv->next = lv->done = lv->errors = lv->tokens = 0;
    lv->next_arrival = 0;
    lv->t0 = dsv4_now();
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 1u << 20);
    long started = 0;
    int rc = 0;
    pthread_mutex_lock(&lv->mu);
    lv->threads_left = 0;
    pthread_mutex_unlock(&lv->mu);
    for (long i = 0; i < threads; i++) {
        ws[i].lv = lv;
        pthread_mutex_lock(&lv->mu);
        lv->threads_left++;
        pthread_mutex_unlock(&lv->mu);
        if (pthread_create(&ws[i].tid, &attr, worker_main, &ws[i])) {
            pthread_mutex_lock(&lv->mu);
            lv->threads_left--;
            pthread_mutex_unlock(&lv->mu);
            rc = dsv4_error(DSV4_ENOMEM, "could not start client thread %ld of %ld", i + 1,
                            threads);
            /* the started ones run the level on their own; the error is reported */
            break;
        }
        started++;
    }
    pthread_attr_destroy(&attr);
    pthread_mutex_lock(&lv->mu);
    while (lv->threads_left > 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 200 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&lv->cv, &lv->mu, &ts);
        if (lv->progress)
            draw_progress(lv, false);
    }
    if (lv->progress)
        draw_progress(lv, true);
    pthread_mutex_unlock(&lv->mu);
    long n = 0;
    for (long i = 0; i < started; i++) {
        pthread_join(ws[i].tid, NULL);
        n += ws[i].n;
        if (ws[i].rc && !rc)
            rc = ws[i].rc;
    }
    lv->rows = calloc((size_t)DSV4_MAX(n, 1), sizeof(struct row));
    lv->n_rows = 0;
    for (long i = 0; i < started; i++) {
        for (long k = 0; k < ws[i].n; k++) {
            if (lv->rows)
                lv->rows[lv->n_rows++] = ws[i].rows[k];
            else
                free(ws[i].rows[k].gaps);
        }
        free(ws[i].rows);
    }
    free(ws);
    pthread_cond_destroy(&lv->cv);
    pthread_mutex_destroy(&lv->mu);
    if (!lv->rows)
        return dsv4_error(DSV4_ENOMEM, "out of memory");
    qsort(lv->rows, (size_t)lv->n_rows, sizeof(struct row), row_cmp);
    return rc;
}

static void level_free(struct level *lv)
{
    for (long i = 0; i < lv->n_rows; i++)
        free(lv->rows[i].gaps);
    free(lv->rows);
    lv->rows = NULL;
    lv->n_rows = 0;
}

/* ------------------------------------------------------------ statistics */

struct pct {
    long n;
    double p50, p90, p95, p99, mean;
};

static int dbl_cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double quantile(const double *sorted, long n, double q)
{
    double pos = q * (double)(n - 1);
    long i = (long)pos;
    if (i >= n - 1)
        return sorted[n - 1];
    return sorted[i] + (sorted[i + 1] - sorted[i]) * (pos - (double)i);
}

/* Percentiles of v (sorted in place). */
static struct pct percentiles(double *v, long n)
{
    struct pct p = {.n = n};
    if (n <= 0)
        return p;
    qsort(v, (size_t)n, sizeof(double), dbl_cmp);
    double s = 0;
    for (long i = 0; i < n; i++)
        s += v[i];
    p.mean = s / (double)n;
    p.p50 = quantile(v, n, 0.50);
    p.p90 = quantile(v, n, 0.90);
    p.p95 = quantile(v, n, 0.95);
    p.p99 = quantile(v, n, 0.99);
    return p;
}

struct summary {
    long requests, ok, errors, kinds[DSV4_BENCH_ERR_COUNT];
    const char *first_error;
    int64_t completion_tokens, prompt_tokens;
    double wall_s, tok_s, req_per_s;
    struct pct e2e_ms, req_tok_s, ttft_ms, itl_ms, tpot_ms;
};

static int summarize(const struct level *lv, struct summary *s)
{
    memset(s, 0, sizeof(*s));
    long n = lv->n_rows, n_gaps = 0;
    for (long i = 0; i < n; i++)
        n_gaps += lv->rows[i].n_gaps;
    double *buf = malloc((size_t)DSV4_MAX(n, 1) * 4 * sizeof(double));
    double *gaps = malloc((size_t)DSV4_MAX(n_gaps, 1) * sizeof(double));
    if (!buf || !gaps) {
        free(buf);
        free(gaps);
        return dsv4_error(DSV4_ENOMEM, "out of memory");
    }
    double *e2e = buf, *rts = buf + n, *ttft = buf + 2 * n, *tpot = buf + 3 * n;
    long ne = 0, nt = 0, np = 0, ng = 0;
    double first = 0, last = 0;
    s->requests = n;
    for (long i = 0; i < n; i++) {
        const struct row *r = &lv->rows[i];
        if (i == 0 || r->t_send < first)
            first = r->t_send;
        if (i == 0 || r->t_end > last)
            last = r->t_end;
        if (r->o.err) {
            s->errors++;
            s->kinds[r->o.err]++;
            if (!s->first_error)
                s->first_error = r->o.msg;
            continue;
        }
        s->ok++;
        s->completion_tokens += r->o.completion_tokens;
        if (r->o.prompt_tokens > 0)
            s->prompt_tokens += r->o.prompt_tokens;
        double el = r->t_end - r->t_send;
        e2e[ne] = el * 1e3;
        rts[ne++] = el > 0 ? (double)r->o.completion_tokens / el : 0;
        if (lv->cfg->stream && r->t_first > 0) {
            ttft[nt++] = (r->t_first - r->t_send) * 1e3;
            if (r->o.completion_tokens > 1)
                tpot[np++] = (r->t_end - r->t_first) * 1e3 / (double)(r->o.completion_tokens - 1);
            for (int k = 0; k < r->n_gaps; k++)
                gaps[ng++] = r->gaps[k] * 1e3;
        }
    }
    s->wall_s = n ? last - first : 0;
    s->tok_s = s->wall_s > 0 ? (double)s->completion_tokens / s->wall_s : 0;
    s->req_per_s = s->wall_s > 0 ? (double)s->ok / s->wall_s : 0;
    s->e2e_ms = percentiles(e2e, ne);
    s->req_tok_s = percentiles(rts, ne);
    s->ttft_ms = percentiles(ttft, nt);
    s->tpot_ms = percentiles(tpot, np);
    s->itl_ms = percentiles(gaps, ng);
    free(buf);
    free(gaps);
    return 0;
}

/* ------------------------------------------------------------ output */

static cJSON *pct_json(const struct pct *p)
{
    if (!p->n)
        return cJSON_CreateNull();
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "p50", p->p50);
    cJSON_AddNumberToObject(o, "p90", p->p90);
    cJSON_AddNumberToObject(o, "p95", p->p95);
    cJSON_AddNumberToObject(o, "p99", p->p99);
    cJSON_AddNumberToObject(o, "mean", p->mean);
    cJSON_AddNumberToObject(o, "n", (double)p->n);
    return o;
}

static cJSON *level_json(const struct level *lv, const struct summary *s)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "concurrency", lv->conc);
    if (lv->rate > 0)
        cJSON_AddNumberToObject(o, "rate", lv->rate);
    cJSON_AddNumberToObject(o, "requests", (double)s->requests);
    cJSON_AddNumberToObject(o, "ok", (double)s->ok);
    cJSON_AddNumberToObject(o, "errors", (double)s->errors);
    cJSON *kinds = cJSON_AddObjectToObject(o, "error_kinds");
    for (int k = 1; k < DSV4_BENCH_ERR_COUNT; k++)
        cJSON_AddNumberToObject(kinds, dsv4_bench_err_name((enum dsv4_bench_err)k),
                                (double)s->kinds[k]);
    if (s->first_error)
        cJSON_AddStringToObject(o, "first_error", s->first_error);
    else
        cJSON_AddNullToObject(o, "first_error");
    cJSON_AddNumberToObject(o, "completion_tokens", (double)s->completion_tokens);
    cJSON_AddNumberToObject(o, "prompt_tokens", (double)s->prompt_tokens);
    cJSON_AddNumberToObject(o, "wall_s", s->wall_s);
    cJSON_AddNumberToObject(o, "tok_s", s->tok_s);
    cJSON_AddNumberToObject(o, "req_per_s", s->req_per_s);
    cJSON_AddItemToObject(o, "e2e_ms", pct_json(&s->e2e_ms));
    cJSON_AddItemToObject(o, "req_tok_s", pct_json(&s->req_tok_s));
    cJSON_AddItemToObject(o, "ttft_ms", pct_json(&s->ttft_ms));
    cJSON_AddItemToObject(o, "itl_ms", pct_json(&s->itl_ms));
    cJSON_AddItemToObject(o, "tpot_ms", pct_json(&s->tpot_ms));
    cJSON *rows = cJSON_AddArrayToObject(o, "rows");
    double t0 = lv->t0;
    for (long i = 0; i < lv->n_rows; i++) {
        const struct row *r = &lv->rows[i];
        cJSON *j = cJSON_CreateObject();
        cJSON_AddNumberToObject(j, "i", (double)r->idx);
        cJSON_AddNumberToObject(j, "start_s", r->t_send - t0);
        cJSON_AddNumberToObject(j, "e2e_ms", (r->t_end - r->t_send) * 1e3);
        if (r->t_first > 0)
            cJSON_AddNumberToObject(j, "ttft_ms", (r->t_first - r->t_send) * 1e3);
        cJSON_AddNumberToObject(j, "prompt_tokens", (double)r->o.prompt_tokens);
        cJSON_AddNumberToObject(j, "completion_tokens", (double)r->o.completion_tokens);
        cJSON_AddStringToObject(j, "finish_reason", r->o.finish);
        if (lv->cfg->stream)
            cJSON_AddNumberToObject(j, "events", r->o.events);
        if (lv->cli == &dsv4_bench_grpc)
            cJSON_AddNumberToObject(j, "grpc_status", r->o.grpc_status);
        else
            cJSON_AddNumberToObject(j, "http_status", r->o.http_status);
        if (r->o.err) {
            cJSON_AddStringToObject(j, "error", dsv4_bench_err_name(r->o.err));
            cJSON_AddStringToObject(j, "message", r->o.msg);
        }
        cJSON_AddItemToArray(rows, j);
    }
    return o;
}

static void fmt_pct3(char *buf, size_t n, const struct pct *p)
{
    if (!p->n)
        snprintf(buf, n, "-");
    else
        snprintf(buf, n, "%.1f/%.1f/%.1f", p->p50, p->p90, p->p99);
}

static void table_head(struct dsv4_strbuf *t, bool rate)
{
    dsv4_strbuf_fmt(t, "%9s %6s %5s %9s %8s %9s %9s %22s %22s\n", rate ? "rate/s" : "conc", "reqs",
                    "err", "tokens", "wall_s", "tok/s", "req_tok/s", "TTFT p50/p90/p99 ms",
                    "ITL p50/p90/p99 ms");
}

static void table_row(struct dsv4_strbuf *t, const struct level *lv, const struct summary *s)
{
    char key[16], ttft[48], itl[48];
    if (lv->rate > 0)
        snprintf(key, sizeof(key), "%.3g", lv->rate);
    else
        snprintf(key, sizeof(key), "%d", lv->conc);
    fmt_pct3(ttft, sizeof(ttft), &s->ttft_ms);
    fmt_pct3(itl, sizeof(itl), &s->itl_ms);
    dsv4_strbuf_fmt(t, "%9s %6ld %5ld %9lld %8.2f %9.1f %9.1f %22s %22s\n", key, s->requests,
                    s->errors, (long long)s->completion_tokens, s->wall_s, s->tok_s,
                    s->req_tok_s.p50, ttft, itl);
}

/* "model name" of /proc/cpuinfo (x86), or the first of a few other keys. */
static void cpu_model(char *buf, size_t size)
{
    snprintf(buf, size, "unknown");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f)
        return;
    char line[512];
    static const char *const keys[] = {"model name", "Model", "cpu model", "Hardware"};
    int best = (int)DSV4_ARRAY_LEN(keys);
    while (fgets(line, sizeof(line), f)) {
        char *colon = strchr(line, ':');
        if (!colon)
            continue;
        for (int k = 0; k < best; k++) {
            size_t kn = strlen(keys[k]);
            if (strncmp(line, keys[k], kn) ||
                (line[kn] != ' ' && line[kn] != '\t' && line[kn] != ':'))
                continue;
            char *v = colon + 1;
            while (*v == ' ' || *v == '\t')
                v++;
            v[strcspn(v, "\n")] = 0;
            if (*v) {
                snprintf(buf, size, "%s", v);
                best = k;
            }
            break;
        }
    }
    fclose(f);
}

static int write_json(const char *path, cJSON *root)
{
    struct dsv4_strbuf b;
    dsv4_strbuf_init(&b);
    dsv4_strbuf_json_tree(&b, root, 0);
    dsv4_strbuf_str(&b, "\n");
    if (b.oom) {
        dsv4_strbuf_free(&b);
        return dsv4_error(DSV4_ENOMEM, "out of memory");
    }
    FILE *f = fopen(path, "wb");
    int rc = 0;
    if (!f)
        rc = dsv4_error(DSV4_EIO, "%s: %s", path, strerror(errno));
    else if (fwrite(b.p, 1, b.len, f) != b.len || fclose(f))
        rc = dsv4_error(DSV4_EIO, "%s: write failed", path);
    else
        f = NULL;
    if (rc && f)
        fclose(f);
    dsv4_strbuf_free(&b);
    return rc;
}

static cJSON *header_json(const struct opts *o, const struct dsv4_bench_client_cfg *cfg,
                          const char *transport, const struct prompts *pr)
{
    cJSON *root = cJSON_CreateObject();
    char date[32], cpu[256];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%SZ", &tm);
    cpu_model(cpu, sizeof(cpu));
    cJSON_AddStringToObject(root, "tool", "dsv4 bench serve");
    cJSON_AddStringToObject(root, "version", dsv4_version());
    cJSON_AddStringToObject(root, "date", date);
    cJSON_AddStringToObject(root, "target", o->url ? o->url : o->target);
    cJSON_AddStringToObject(root, "transport", transport);
    cJSON_AddStringToObject(root, "model", cfg->model);
    if (o->label)
        cJSON_AddStringToObject(root, "label", o->label);
    cJSON_AddStringToObject(root, "client_cpu", cpu);
    cJSON_AddNumberToObject(root, "client_cpus", (double)sysconf(_SC_NPROCESSORS_ONLN));
    cJSON *st = cJSON_AddObjectToObject(root, "settings");
    cJSON_AddStringToObject(st, "mode",
                            o->mtp_probe ? "mtp-probe"
                            : o->n_rates ? "rate"
                                         : "concurrency");
    cJSON_AddStringToObject(st, "endpoint", cfg->chat ? "chat" : "completions");
    cJSON_AddBoolToObject(st, "stream", cfg->stream);
    cJSON_AddNumberToObject(st, "max_tokens", cfg->max_tokens);
    cJSON_AddNumberToObject(st, "temperature", cfg->temperature);
    cJSON_AddBoolToObject(st, "ignore_eos", cfg->ignore_eos);
    char ps[128];
    if (o->mtp_probe)
        snprintf(ps, sizeof(ps), "published-mtp-4");
    else if (o->prompt_file)
        snprintf(ps, sizeof(ps), "file (%d)", pr->n);
    else if (o->plen_lo)
        snprintf(ps, sizeof(ps), "random %d-%d words", o->plen_lo, o->plen_hi);
    else
        snprintf(ps, sizeof(ps), "published-5");
    cJSON_AddStringToObject(st, "prompts", ps);
    if (o->prompt_file)
        cJSON_AddStringToObject(st, "prompt_file", o->prompt_file);
    if (o->requests > 0)
        cJSON_AddNumberToObject(st, "requests_per_level", (double)o->requests);
    else
        cJSON_AddStringToObject(st, "requests_per_level",
                                o->mtp_probe ? "probe"
                                : o->n_rates ? "100"
                                             : "4 x concurrency");
    if (o->duration > 0)
        cJSON_AddNumberToObject(st, "duration_s", o->duration);
    cJSON_AddNumberToObject(st, "warmup", o->warmup);
    cJSON_AddNumberToObject(st, "timeout_s", o->timeout);
    cJSON_AddNumberToObject(st, "seed", (double)o->seed);
    return root;
}

/* ------------------------------------------------------------ the MTP probe */

/* Scrapes the counters; exits the probe with a message when it cannot. */
static int scrape(const char *url, const char *key, double timeout, struct dsv4_bench_spec *sp)
{
    struct dsv4_strbuf b;
    dsv4_strbuf_init(&b);
    int status = 0;
    int rc = dsv4_bench_http_get(url, key, timeout, &b, &status);
    if (!rc && status != 200)
        rc = dsv4_error(DSV4_EIO, "GET %s: HTTP %d", url, status);
    if (!rc) {
        dsv4_bench_spec_read(b.p ? b.p : "", sp);
        if (!sp->found)
            rc = dsv4_error(DSV4_ENOENT,
                            "%s has no spec_decode_num_accepted_tokens_total / "
                            "spec_decode_num_draft_tokens_total counters (is MTP on?)",
                            url);
    }
    dsv4_strbuf_free(&b);
    return rc;
}

static cJSON *mtp_json(const struct dsv4_bench_spec *a, const struct dsv4_bench_spec *b,
                       const char *metrics_url, FILE *out)
{
    cJSON *o = cJSON_CreateObject();
    double drafts = b->drafts - a->drafts;
    double dtok = b->draft_tokens - a->draft_tokens;
    double acc = b->accepted - a->accepted;
    cJSON_AddStringToObject(o, "metrics_url", metrics_url);
    if (b->has_drafts)
        cJSON_AddNumberToObject(o, "drafts", drafts);
    else
        cJSON_AddNullToObject(o, "drafts");
    cJSON_AddNumberToObject(o, "draft_tokens", dtok);
    cJSON_AddNumberToObject(o, "accepted_tokens", acc);
    if (dtok > 0)
        cJSON_AddNumberToObject(o, "acceptance", acc / dtok);
    else
        cJSON_AddNullToObject(o, "acceptance");
    if (b->has_drafts && drafts > 0)
        cJSON_AddNumberToObject(o, "accept_length", 1 + acc / drafts);
    else
        cJSON_AddNullToObject(o, "accept_length");
    fprintf(out, "MTP: drafts %.0f, draft tokens %.0f, accepted %.0f", b->has_drafts ? drafts : -1,
            dtok, acc);
    if (dtok > 0)
        fprintf(out, ": acceptance %.2f%%", 100 * acc / dtok);
    else
        fprintf(out, ": no draft tokens (is MTP on?)");
    if (b->has_drafts && drafts > 0)
        fprintf(out, ", accept length %.3f", 1 + acc / drafts);
    fprintf(out, "\n");
    cJSON *pos = cJSON_AddArrayToObject(o, "per_position");
    int n = DSV4_MAX(a->n_pos, b->n_pos), last = -1;
    for (int k = 0; k < n; k++)
        if (b->pos_drafted[k] - a->pos_drafted[k] > 0 ||
            b->pos_accepted[k] - a->pos_accepted[k] > 0)
            last = k;
    for (int k = 0; k <= last; k++) {
        double pa = b->pos_accepted[k] - a->pos_accepted[k];
        /* vLLM has no per-position draft counter: each draft proposes every position */
        double pd = b->has_pos_drafted ? b->pos_drafted[k] - a->pos_drafted[k] : drafts;
        cJSON *j = cJSON_CreateObject();
        cJSON_AddNumberToObject(j, "position", k);
        cJSON_AddNumberToObject(j, "drafted", pd);
        cJSON_AddNumberToObject(j, "accepted", pa);
        if (pd > 0)
            cJSON_AddNumberToObject(j, "acceptance", pa / pd);
        else
            cJSON_AddNullToObject(j, "acceptance");
        cJSON_AddItemToArray(pos, j);
        fprintf(out, "  position %d: %.0f / %.0f", k, pa, pd);
        if (pd > 0)
            fprintf(out, " = %.2f%%", 100 * pa / pd);
        fprintf(out, "\n");
    }
    return o;
}

/* ------------------------------------------------------------ the command */

static void print_level_line(const struct level *lv, const struct summary *s)
{
    fprintf(stderr, "%s: %ld requests, %ld errors, %lld tokens in %.2f s: %.1f tok/s\n", lv->tag,
            s->requests, s->errors, (long long)s->completion_tokens, s->wall_s, s->tok_s);
    if (s->first_error)
        fprintf(stderr, "%s: first error: %s\n", lv->tag, s->first_error);
}

int dsv4_bench_serve(int argc, char **argv)
{
    struct opts o;
    int prc = parse_opts(argc, argv, &o);
    if (prc)
        return prc < 0 ? 0 : prc;
    const struct dsv4_bench_client *cli = o.target ? &dsv4_bench_grpc : &dsv4_bench_openai;
    struct dsv4_bench_client_cfg cfg = {.url = o.url,
                                        .target = o.target,
                                        .api_key = o.api_key,
                                        .chat = o.chat,
                                        .stream = o.stream,
                                        .ignore_eos = o.ignore_eos,
                                        .max_tokens = o.max_tokens,
                                        .temperature = o.temperature,
                                        .timeout_s = o.timeout};
    struct prompts pr = {0};
    char model[512] = "";
    char metrics[1200] = "";
    cJSON *root = NULL;
    struct dsv4_bench_spec before = {0}, after = {0};
    struct dsv4_strbuf table;
    dsv4_strbuf_init(&table);
    int exit_rc = 1, rc;
    bool tty = o.progress && isatty(STDERR_FILENO);

    if (o.mtp_probe)
        rc = prompts_fixed(&pr, MTP_PROMPTS, 4);
    else if (o.prompt_file)
        rc = prompts_file(&pr, o.prompt_file);
    else if (o.plen_lo) {
        pr.lo = o.plen_lo;
        pr.hi = o.plen_hi;
        pr.seed = o.seed;
        rc = 0;
    } else
        rc = prompts_fixed(&pr, PUBLISHED_PROMPTS, 5);
    if (rc) {
        fprintf(stderr, ME ": %s\n", dsv4_errmsg());
        goto out;
    }
    if (o.model) {
        snprintf(model, sizeof(model), "%s", o.model);
    } else {
        void *conn;
        if (!(rc = cli->open(&cfg, &conn))) {
            rc = cli->model(conn, model, sizeof(model));
            cli->close(conn);
        }
        if (rc) {
            fprintf(stderr, ME ": no model name from the server (give --model): %s\n",
                    dsv4_errmsg());
            goto out;
        }
    }
    cfg.model = model;
    root = header_json(&o, &cfg, cli->name, &pr);
    if (!root) {
        fprintf(stderr, ME ": out of memory\n");
        goto out;
    }
    printf(ME ": %s (%s), model %s, %s, %s, max_tokens %d, temperature %g\n",
           o.url ? o.url : o.target, cli->name, model, o.chat ? "chat" : "completions",
           o.stream ? "streaming" : "non-streaming", o.max_tokens, o.temperature);
    fflush(stdout);

    if (o.warmup > 0) {
        int wc = 1;
        for (int i = 0; i < o.n_conc; i++)
            wc = DSV4_MAX(wc, o.conc[i]);
        struct level w = {.cli = cli,
                          .cfg = &cfg,
                          .prompts = &pr,
                          .conc = DSV4_MIN(wc, o.warmup),
                          .n_req = o.warmup,
                          .tag = "warmup",
                          .progress = tty};
        rc = run_level(&w);
        struct summary s;
        if (!rc && !(rc = summarize(&w, &s)))
            fprintf(stderr, "warmup: %ld requests, %ld errors\n", s.requests, s.errors);
        level_free(&w);
        if (rc) {
            fprintf(stderr, ME ": warmup: %s\n", dsv4_errmsg());
            goto out;
        }
    }

    if (o.mtp_probe) {
        if (o.metrics_url) {
            snprintf(metrics, sizeof(metrics), "%s", o.metrics_url);
        } else {
            struct dsv4_bench_url u;
            dsv4_bench_url_parse(o.url, &u);
            size_t n = strlen(u.path);
            if (n >= 3 && !strcmp(u.path + n - 3, "/v1"))
                u.path[n - 3] = 0;
            snprintf(metrics, sizeof(metrics), "http://%s%s%s:%s%s/metrics",
                     strchr(u.host, ':') ? "[" : "", u.host, strchr(u.host, ':') ? "]" : "", u.port,
                     u.path);
        }
        if ((rc = scrape(metrics, o.api_key, DSV4_MIN(o.timeout, 60.0), &before))) {
            fprintf(stderr, ME ": %s\n", dsv4_errmsg());
            goto out;
        }
    }

    cJSON *levels = cJSON_AddArrayToObject(root, "levels");
    int n_levels = o.mtp_probe ? 1 : o.n_rates ? o.n_rates : o.n_conc;
    bool all_failed = false;
    exit_rc = 0;
    if (!o.mtp_probe)
        table_head(&table, o.n_rates > 0);
    for (int li = 0; li < n_levels; li++) {
        char tag[32];
        struct level lv = {.cli = cli, .cfg = &cfg, .prompts = &pr, .tag = tag, .progress = tty};
        lv.rng = o.seed * 0x9e3779b97f4a7c15ull + (uint64_t)li + 1;
        if (o.mtp_probe) {
            lv.conc = 1;
            lv.n_req = o.probe_prompts;
            snprintf(tag, sizeof(tag), "probe");
        } else if (o.n_rates) {
            lv.conc = o.conc[0];
            lv.rate = o.rates[li];
            lv.n_req = o.requests > 0 ? o.requests : o.duration > 0 ? -1 : 100;
            lv.duration = o.duration;
            snprintf(tag, sizeof(tag), "r=%g", lv.rate);
        } else {
            lv.conc = o.conc[li];
            lv.n_req = o.requests > 0 ? o.requests : o.duration > 0 ? -1 : 4L * lv.conc;
            lv.duration = o.duration;
            snprintf(tag, sizeof(tag), "c=%d", lv.conc);
        }
        rc = run_level(&lv);
        struct summary s;
        if (!rc)
            rc = summarize(&lv, &s);
        if (rc) {
            fprintf(stderr, ME ": %s: %s\n", tag, dsv4_errmsg());
            level_free(&lv);
            exit_rc = 1;
            break;
        }
        print_level_line(&lv, &s);
        if (s.requests > 0 && s.ok == 0)
            all_failed = true;
        cJSON *lj = level_json(&lv, &s);
        if (o.mtp_probe) {
            if ((rc = scrape(metrics, o.api_key, DSV4_MIN(o.timeout, 60.0), &after))) {
                fprintf(stderr, ME ": %s\n", dsv4_errmsg());
                exit_rc = 1;
            } else {
                printf("probe: %ld requests (sequential), %ld errors, %lld completion tokens in "
                       "%.2f s: %.1f tok/s\n",
                       s.requests, s.errors, (long long)s.completion_tokens, s.wall_s, s.tok_s);
                cJSON *m = mtp_json(&before, &after, metrics, stdout);
                cJSON_AddItemToObject(m, "level", lj);
                lj = NULL;
                cJSON_AddItemToObject(root, "mtp", m);
            }
            cJSON_Delete(lj);
        } else {
            cJSON_AddItemToArray(levels, lj);
            table_row(&table, &lv, &s);
        }
        level_free(&lv);
    }
    if (!o.mtp_probe && table.p) {
        fputs(table.p, stdout);
        fflush(stdout);
    }
    if (o.json_path) {
        if ((rc = write_json(o.json_path, root))) {
            fprintf(stderr, ME ": %s\n", dsv4_errmsg());
            exit_rc = 1;
        }
    }
    if (all_failed) {
        fprintf(stderr, ME ": every request of a level failed\n");
        exit_rc = 1;
    }
out:
    dsv4_strbuf_free(&table);
    cJSON_Delete(root);
    prompts_free(&pr);
    return exit_rc;
}
