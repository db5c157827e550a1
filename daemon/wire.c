/*
 * wire.c - protobuf-c encoding of the supervisor <-> worker messages (see
 * daemon/wire.h and proto/worker.proto).  The only file that knows
 * protobuf-c's generated types for the worker protocol.
 *
 * Decoding checks every field a consumer indexes with: result arrays
 * consistent (tokens <= 1 + DSV4_STEP_MAX_DRAFTS, logprob / top arrays of
 * the sizes their counts say), strings bounded.  Anything else is a
 * malformed message (DSV4_EFORMAT), never a crash.
 */
#include "daemon/wire.h"

#include "base/dsv4.h"
#include "proto/worker.pb-c.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef Dsv4__Worker__Msg Msg;

/* Packs a Msg into a malloc'ed buffer. */
static int pack(const Msg *m, void **buf, size_t *len)
{
    size_t n = dsv4__worker__msg__get_packed_size(m);
    uint8_t *b = malloc(n ? n : 1);
    if (!b)
        return dsv4_error(DSV4_ENOMEM, "wire: out of memory for a %zu-byte message", n);
    *len = dsv4__worker__msg__pack(m, b);
    *buf = b;
    return 0;
}

int dsv4d_wire_hello(const struct dsv4d_hello *h, void **buf, size_t *len)
{
    Dsv4__Worker__Hello x = DSV4__WORKER__HELLO__INIT;
    Msg m = DSV4__WORKER__MSG__INIT;
    x.version = h->version;
    x.rank = h->rank;
    x.nranks = h->nranks;
    x.pid = h->pid;
    x.generation = h->generation;
    m.m_case = DSV4__WORKER__MSG__M_HELLO;
    m.hello = &x;
    return pack(&m, buf, len);
}

int dsv4d_wire_progress(const struct dsv4d_progress *p, void **buf, size_t *len)
{
    Dsv4__Worker__Progress x = DSV4__WORKER__PROGRESS__INIT;
    Msg m = DSV4__WORKER__MSG__INIT;
    x.phase = (char *)p->phase;
    x.bytes_done = p->bytes_done;
    x.bytes_total = p->bytes_total;
    x.shards_done = p->shards_done;
    x.shards_total = p->shards_total;
    m.m_case = DSV4__WORKER__MSG__M_PROGRESS;
    m.progress = &x;
    return pack(&m, buf, len);
}

int dsv4d_wire_ready(const struct dsv4d_ready *r, void **buf, size_t *len)
{
    Dsv4__Worker__Ready x = DSV4__WORKER__READY__INIT;
    Msg m = DSV4__WORKER__MSG__INIT;
    x.total_blocks = r->total_blocks;
    x.block_tokens = r->block_tokens;
    x.max_seqs = r->max_seqs;
    x.state_bytes = r->state_bytes;
    x.load_seconds = r->load_seconds;
    x.from_image = r->from_image;
    x.image_bytes = r->image_bytes;
    x.vocab_size = r->vocab_size;
    x.max_context = r->max_context;
    x.mtp_depth = r->mtp_depth;
    x.device_weights = r->device_weights;
    m.m_case = DSV4__WORKER__MSG__M_READY;
    m.ready = &x;
    return pack(&m, buf, len);
}

int dsv4d_wire_plan(const struct dsv4d_plan *p, void **buf, size_t *len)
{
    Dsv4__Worker__Plan x = DSV4__WORKER__PLAN__INIT;
    Msg m = DSV4__WORKER__MSG__INIT;
    int n = p->n_entries, rc;
    Dsv4__Worker__Entry *e = calloc(n ? n : 1, sizeof *e);
    Dsv4__Worker__Entry **ep = calloc(n ? n : 1, sizeof *ep);
    Dsv4__Worker__Sampling *s = calloc(n ? n : 1, sizeof *s);
    if (!e || !ep || !s) {
        rc = dsv4_error(DSV4_ENOMEM, "wire: out of memory for a plan of %d entries", n);
        goto out;
    }
    for (int i = 0; i < n; i++) {
        const struct dsv4_step_entry *q = &p->entries[i];
        Dsv4__Worker__Entry z = DSV4__WORKER__ENTRY__INIT;
        Dsv4__Worker__Sampling sz = DSV4__WORKER__SAMPLING__INIT;
        e[i] = z;
        s[i] = sz;
        e[i].id = q->id;
        e[i].start = q->start;
        e[i].n_tokens = (size_t)q->n;
        e[i].tokens = (int32_t *)q->tokens;
        e[i].n_drafts = (size_t)q->n_drafts;
        e[i].drafts = (int32_t *)q->drafts;
        e[i].sample = q->sample;
        e[i].max_emit = q->max_emit;
        e[i].n_prompt = q->n_prompt;
        e[i].n_stop_ids = (size_t)q->n_stop;
        e[i].stop_ids = (int32_t *)q->stop_ids;
        s[i].temperature = q->params.temperature;
        s[i].top_k = q->params.top_k;
        s[i].top_p = q->params.top_p;
        s[i].min_p = q->params.min_p;
        s[i].repetition_penalty = q->params.repetition_penalty;
        s[i].presence_penalty = q->params.presence_penalty;
        s[i].frequency_penalty = q->params.frequency_penalty;
        s[i].seed = q->params.seed;
        s[i].logprobs = q->params.logprobs;
        s[i].top_logprobs = q->params.n_top_logprobs;
        e[i].sampling = &s[i];
        ep[i] = &e[i];
    }
    x.step = p->step;
    x.n_add = (size_t)p->n_add;
    x.add = (uint64_t *)p->add;
    x.n_free = (size_t)p->n_free;
    x.free = (uint64_t *)p->free;
    x.n_drop = (size_t)p->n_drop;
    x.drop = (uint64_t *)p->drop;
    x.n_swap_out = (size_t)p->n_swap_out;
    x.swap_out = (uint64_t *)p->swap_out;
    x.n_swap_in = (size_t)p->n_swap_in;
    x.swap_in = (uint64_t *)p->swap_in;
    x.n_entries = (size_t)n;
    x.entries = ep;
    x.follow = p->follow;
    m.m_case = DSV4__WORKER__MSG__M_PLAN;
    m.plan = &x;
    rc = pack(&m, buf, len);
out:
    free(e);
    free(ep);
    free(s);
    return rc;
}

int dsv4d_wire_result(const struct dsv4d_result *r, void **buf, size_t *len)
{
    Dsv4__Worker__Result x = DSV4__WORKER__RESULT__INIT;
    Msg m = DSV4__WORKER__MSG__INIT;
    int n = r->n_results, rc;
    Dsv4__Worker__EntryResult *e = calloc(n ? n : 1, sizeof *e);
    Dsv4__Worker__EntryResult **ep = calloc(n ? n : 1, sizeof *ep);
    int32_t *top_ids = NULL;
    float *top_lp = NULL;
    size_t tops = 0;
    for (int i = 0; i < n; i++)
        tops += (size_t)r->results[i].n_tokens * (size_t)r->results[i].n_top;
    top_ids = malloc(sizeof(int32_t) * (tops ? tops : 1));
    top_lp = malloc(sizeof(float) * (tops ? tops : 1));
    if (!e || !ep || !top_ids || !top_lp) {
        rc = dsv4_error(DSV4_ENOMEM, "wire: out of memory for a result of %d entries", n);
        goto out;
    }
    size_t k = 0;
    for (int i = 0; i < n; i++) {
        const struct dsv4_step_result *q = &r->results[i];
        Dsv4__Worker__EntryResult z = DSV4__WORKER__ENTRY_RESULT__INIT;
        e[i] = z;
        e[i].id = q->id;
        e[i].n_tokens = (size_t)q->n_tokens;
        e[i].tokens = (int32_t *)q->tokens;
        e[i].n_logprobs = (size_t)q->n_tokens;
        e[i].logprobs = (float *)q->logprobs;
        e[i].n_top = q->n_top;
        e[i].top_ids = top_ids + k;
        e[i].top_logprobs = top_lp + k;
        for (int t = 0; t < q->n_tokens; t++)
            for (int j = 0; j < q->n_top; j++, k++) {
                top_ids[k] = q->top_ids[t][j];
                top_lp[k] = q->top_logprobs[t][j];
            }
        e[i].n_top_ids = e[i].n_top_logprobs = (size_t)q->n_tokens * (size_t)q->n_top;
        e[i].n_drafts = (size_t)q->n_drafts;
        e[i].drafts = (int32_t *)q->drafts;
        e[i].drafted = q->drafted;
        e[i].accepted = q->accepted;
        e[i].finish = (int32_t)q->finish;
        ep[i] = &e[i];
    }
    x.step = r->step;
    x.status = r->status;
    x.message = (char *)r->message;
    x.n_results = (size_t)n;
    x.results = ep;
    x.free_blocks = r->free_blocks;
    x.rank = r->rank;
    x.n_lost = (size_t)r->n_lost;
    x.lost = (uint64_t *)r->lost;
    m.m_case = DSV4__WORKER__MSG__M_RESULT;
    m.result = &x;
    rc = pack(&m, buf, len);
out:
    free(e);
    free(ep);
    free(top_ids);
    free(top_lp);
    return rc;
}

int dsv4d_wire_heartbeat(const struct dsv4d_heartbeat *h, void **buf, size_t *len)
{
    Dsv4__Worker__Heartbeat x = DSV4__WORKER__HEARTBEAT__INIT;
    Msg m = DSV4__WORKER__MSG__INIT;
    x.seq = h->seq;
    x.step = h->step;
    x.rank = h->rank;
    m.m_case = DSV4__WORKER__MSG__M_HEARTBEAT;
    m.heartbeat = &x;
    return pack(&m, buf, len);
}

int dsv4d_wire_shutdown(void **buf, size_t *len)
{
    Dsv4__Worker__Shutdown x = DSV4__WORKER__SHUTDOWN__INIT;
    Msg m = DSV4__WORKER__MSG__INIT;
    m.m_case = DSV4__WORKER__MSG__M_SHUTDOWN;
    m.shutdown = &x;
    return pack(&m, buf, len);
}

/* ------------------------------------------------------------ decoding */

static int decode_plan(struct dsv4d_msg *out, const Dsv4__Worker__Plan *p)
{
    struct dsv4d_plan *q = &out->u.plan;
    int n = (int)p->n_entries;
    if (p->n_entries > (1u << 20) || p->n_add > (1u << 20) || p->n_free > (1u << 20) ||
        p->n_drop > (1u << 20) || p->n_swap_out > (1u << 20) || p->n_swap_in > (1u << 20))
        return dsv4_error(DSV4_EFORMAT, "wire: plan with too many entries");
    out->ents = calloc(n ? n : 1, sizeof *out->ents);
    if (!out->ents)
        return dsv4_error(DSV4_ENOMEM, "wire: out of memory");
    q->step = p->step;
    q->add = p->add;
    q->n_add = (int)p->n_add;
    q->free = p->free;
    q->n_free = (int)p->n_free;
    q->drop = p->drop;
    q->n_drop = (int)p->n_drop;
    q->swap_out = p->swap_out;
    q->n_swap_out = (int)p->n_swap_out;
    q->swap_in = p->swap_in;
    q->n_swap_in = (int)p->n_swap_in;
    q->follow = p->follow;
    for (int i = 0; i < n; i++) {
        const Dsv4__Worker__Entry *e = p->entries[i];
        struct dsv4_step_entry *d = &out->ents[i];
        if (e->n_tokens > INT32_MAX || e->n_drafts > DSV4_STEP_MAX_DRAFTS || e->n_stop_ids > 1024)
            return dsv4_error(DSV4_EFORMAT, "wire: plan entry %d: bad sizes", i);
        d->id = e->id;
        d->start = e->start;
        d->n = (int32_t)e->n_tokens;
        d->tokens = e->tokens;
        d->n_drafts = (int32_t)e->n_drafts;
        d->drafts = e->drafts;
        d->sample = e->sample;
        d->max_emit = e->max_emit;
        d->n_prompt = e->n_prompt;
        d->n_stop = (int32_t)e->n_stop_ids;
        d->stop_ids = e->stop_ids;
        d->params = dsv4_sample_params_default();
        if (e->sampling) {
            const Dsv4__Worker__Sampling *s = e->sampling;
            d->params.temperature = s->temperature;
            d->params.top_k = s->top_k;
            d->params.top_p = s->top_p;
            d->params.min_p = s->min_p;
            d->params.repetition_penalty = s->repetition_penalty;
            d->params.presence_penalty = s->presence_penalty;
            d->params.frequency_penalty = s->frequency_penalty;
            d->params.seed = s->seed;
            d->params.logprobs = s->logprobs;
            d->params.n_top_logprobs = s->top_logprobs;
        }
    }
    q->entries = out->ents;
    q->n_entries = n;
    return 0;
}

static int decode_result(struct dsv4d_msg *out, const Dsv4__Worker__Result *r)
{
    struct dsv4d_result *q = &out->u.result;
    int n = (int)r->n_results;
    if (r->n_results > (1u << 20) || r->n_lost > (1u << 20))
        return dsv4_error(DSV4_EFORMAT, "wire: result with too many entries");
    out->res = calloc(n ? n : 1, sizeof *out->res);
    if (!out->res)
        return dsv4_error(DSV4_ENOMEM, "wire: out of memory");
    q->step = r->step;
    q->status = r->status;
    snprintf(q->message, sizeof q->message, "%s", r->message ? r->message : "");
    q->rank = r->rank;
    q->free_blocks = r->free_blocks;
    q->lost = r->lost;
    q->n_lost = (int)r->n_lost;
    for (int i = 0; i < n; i++) {
        const Dsv4__Worker__EntryResult *e = r->results[i];
        struct dsv4_step_result *d = &out->res[i];
        size_t nt = e->n_tokens;
        if (nt > 1 + DSV4_STEP_MAX_DRAFTS || e->n_drafts > DSV4_STEP_MAX_DRAFTS || e->n_top < 0 ||
            e->n_top > DSV4_SAMPLE_MAX_TOP_LOGPROBS || (e->n_logprobs && e->n_logprobs != nt) ||
            e->n_top_ids != nt * (size_t)e->n_top || e->n_top_logprobs != e->n_top_ids)
            return dsv4_error(DSV4_EFORMAT, "wire: result entry %d: inconsistent sizes", i);
        d->id = e->id;
        d->n_tokens = (int32_t)nt;
        if (nt) /* protobuf-c leaves empty arrays NULL */
            memcpy(d->tokens, e->tokens, sizeof(int32_t) * nt);
        for (size_t t = 0; t < nt; t++)
            d->logprobs[t] = e->n_logprobs ? e->logprobs[t] : 0.0f;
        d->n_top = e->n_top;
        for (size_t t = 0; t < nt; t++)
            for (int j = 0; j < e->n_top; j++) {
                d->top_ids[t][j] = e->top_ids[t * e->n_top + j];
                d->top_logprobs[t][j] = e->top_logprobs[t * e->n_top + j];
            }
        d->n_drafts = (int32_t)e->n_drafts;
        if (e->n_drafts)
            memcpy(d->drafts, e->drafts, sizeof(int32_t) * e->n_drafts);
        d->drafted = e->drafted;
        d->accepted = e->accepted;
        d->finish = e->finish == DSV4_FINISH_STOP     ? DSV4_FINISH_STOP
                    : e->finish == DSV4_FINISH_LENGTH ? DSV4_FINISH_LENGTH
                                                      : DSV4_FINISH_NONE;
    }
    q->results = out->res;
    q->n_results = n;
    return 0;
}

int dsv4d_wire_decode(const void *buf, size_t len, struct dsv4d_msg *out)
{
    memset(out, 0, sizeof *out);
    Msg *m = dsv4__worker__msg__unpack(NULL, len, buf);
    if (!m)
        return dsv4_error(DSV4_EFORMAT, "wire: malformed message of %zu bytes", len);
    out->pb = m;
    int rc = 0;
    switch (m->m_case) {
    case DSV4__WORKER__MSG__M_HELLO:
        out->kind = DSV4D_MSG_HELLO;
        out->u.hello = (struct dsv4d_hello){m->hello->version, m->hello->rank, m->hello->nranks,
                                            m->hello->pid, m->hello->generation};
        break;
    case DSV4__WORKER__MSG__M_PROGRESS:
        out->kind = DSV4D_MSG_PROGRESS;
        snprintf(out->u.progress.phase, sizeof out->u.progress.phase, "%s",
                 m->progress->phase ? m->progress->phase : "");
        out->u.progress.bytes_done = m->progress->bytes_done;
        out->u.progress.bytes_total = m->progress->bytes_total;
        out->u.progress.shards_done = m->progress->shards_done;
        out->u.progress.shards_total = m->progress->shards_total;
        break;
    case DSV4__WORKER__MSG__M_READY: {
        const Dsv4__Worker__Ready *r = m->ready;
        out->kind = DSV4D_MSG_READY;
        out->u.ready = (struct dsv4d_ready){.total_blocks = r->total_blocks,
                                            .state_bytes = r->state_bytes,
                                            .image_bytes = r->image_bytes,
                                            .block_tokens = r->block_tokens,
                                            .max_seqs = r->max_seqs,
                                            .vocab_size = r->vocab_size,
                                            .mtp_depth = r->mtp_depth,
                                            .max_context = r->max_context,
                                            .load_seconds = r->load_seconds,
                                            .from_image = r->from_image,
                                            .device_weights = r->device_weights};
        break;
    }
    case DSV4__WORKER__MSG__M_PLAN:
        out->kind = DSV4D_MSG_PLAN;
        rc = decode_plan(out, m->plan);
        break;
    case DSV4__WORKER__MSG__M_RESULT:
        out->kind = DSV4D_MSG_RESULT;
        rc = decode_result(out, m->result);
        break;
    case DSV4__WORKER__MSG__M_HEARTBEAT:
        out->kind = DSV4D_MSG_HEARTBEAT;
        out->u.heartbeat =
                (struct dsv4d_heartbeat){m->heartbeat->seq, m->heartbeat->step, m->heartbeat->rank};
        break;
    case DSV4__WORKER__MSG__M_SHUTDOWN:
        out->kind = DSV4D_MSG_SHUTDOWN;
        break;
    default:
        rc = dsv4_error(DSV4_EFORMAT, "wire: message of unknown kind %d", (int)m->m_case);
    }
    if (rc)
        dsv4d_msg_free(out);
    return rc;
}

void dsv4d_msg_free(struct dsv4d_msg *m)
{
    if (m->pb)
        dsv4__worker__msg__free_unpacked(m->pb, NULL);
    free(m->ents);
    free(m->res);
    memset(m, 0, sizeof *m);
}
