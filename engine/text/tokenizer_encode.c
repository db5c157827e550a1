/*
 * tokenizer_encode.c - text -> ids, in the order Hugging Face `tokenizers`
 * applies its stages, so that the ids are equal:
 *
 *   1. added tokens with normalized=false are split off the raw text
 *      (leftmost-longest, honouring special/lstrip/rstrip/single_word);
 *   2. each remaining gap is cut into well-formed UTF-8 runs and stray
 *      bytes (a stray byte encodes to its byte token: our definition for
 *      invalid input, see tokenizer.h);
 *   3. each run is normalized, then added tokens with normalized=true are
 *      split off it;
 *   4. the pre-tokenizer stages (Split regexes, ByteLevel) cut the rest into
 *      pieces, each stage working on the pieces of the previous one;
 *   5. each piece is merged by BPE (lowest rank first, leftmost on ties,
 *      exactly HF's priority-queue order), through a word cache.
 *
 * No quadratic behaviour: regex scans advance monotonically, the BPE of an
 * n-byte piece is O(n log n) with a heap over a linked list of symbols.
 */
#include "engine/text/tokenizer_int.h"
#include "base/dsv4.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct seg {
    size_t s, e;
    bool m;
};

struct enc {
    const struct dsv4_tokenizer *tok;
    unsigned flags;
    struct dsv4_tokens *out;
    pcre2_match_data *md;
    struct tok_cache_entry *cache; /* NULL when another thread holds it */
    /* BPE workspace, grown on demand */
    int32_t *sym, *prev, *next;
    uint64_t *heap;
    size_t ws_cap;
    /* segments of each pre-tokenizer stage */
    struct seg *seg[TOK_MAX_PRETOK];
    size_t seg_cap[TOK_MAX_PRETOK];
};

/* ------------------------------------------------------------ BPE */

static int ws_reserve(struct enc *e, size_t n)
{
    if (n <= e->ws_cap)
        return 0;
    size_t cap = DSV4_MAX(n, 2 * e->ws_cap);
    cap = DSV4_MAX(cap, (size_t)256);
    int32_t *a = realloc(e->sym, cap * sizeof(int32_t));
    if (a)
        e->sym = a;
    int32_t *b = realloc(e->prev, cap * sizeof(int32_t));
    if (b)
        e->prev = b;
    int32_t *c = realloc(e->next, cap * sizeof(int32_t));
    if (c)
        e->next = c;
    /* each merge pops one entry and pushes up to two: 3n bounds the heap */
    uint64_t *h = realloc(e->heap, 3 * cap * sizeof(uint64_t));
    if (h)
        e->heap = h;
    if (!a || !b || !c || !h)
        return dsv4_error(DSV4_ENOMEM, "encode: out of memory for a %zu-byte piece", n);
    e->ws_cap = cap;
    return 0;
}

static bool merge_lookup(const struct tok_mmap *m, int32_t a, int32_t b, int32_t *rank,
                         int32_t *merged)
{
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    uint64_t x = key;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    for (size_t i = x & m->mask;; i = (i + 1) & m->mask) {
        if (m->key[i] == UINT64_MAX)
            return false;
        if (m->key[i] == key) {
            *rank = m->rank[i];
            *merged = m->merged[i];
            return true;
        }
    }
}

static void heap_push(uint64_t *h, size_t *n, uint64_t v)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (h[p] <= v)
            break;
        h[i] = h[p];
        i = p;
    }
    h[i] = v;
}

static uint64_t heap_pop(uint64_t *h, size_t *n)
{
    uint64_t top = h[0], v = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n)
            break;
        if (c + 1 < *n && h[c + 1] < h[c])
            c++;
        if (h[c] >= v)
            break;
        h[i] = h[c];
        i = c;
    }
    if (*n > 0)
        h[i] = v;
    return top;
}

/* Appends the symbols a byte starts as: its token; else, with
 * byte_fallback, the <0xXX> tokens of the UTF-8 of its byte-level character
 * (HF falls back on the characters it sees, which are the mapped ones);
 * else -1, "unknown", emitted as unk_token. */
static int byte_symbols(const struct dsv4_tokenizer *tok, uint8_t b, int32_t *sym, size_t *m)
{
    int32_t id = tok->byte_id[b];
    if (id >= 0) {
        sym[(*m)++] = id;
        return 0;
    }
    if (tok->byte_fallback) {
        uint32_t c = dsv4_tokenizer_byte_char(b);
        uint8_t u[2];
        size_t k = 0;
        if (c < 0x80)
            u[k++] = (uint8_t)c;
        else {
            u[k++] = (uint8_t)(0xc0 | (c >> 6));
            u[k++] = (uint8_t)(0x80 | (c & 0x3f));
        }
        int32_t ids[2];
        size_t found = 0;
        for (size_t i = 0; i < k; i++) {
            char name[8];
            snprintf(name, sizeof(name), "<0x%02X>", u[i]);
            ids[i] = dsv4_tokenizer_vmap_get(tok, name, 6);
            found += ids[i] >= 0;
        }
        if (found == k) {
            for (size_t i = 0; i < k; i++)
                sym[(*m)++] = ids[i];
            return 0;
        }
    }
    if (tok->unk_id >= 0) {
        sym[(*m)++] = -1;
        return 0;
    }
    return dsv4_error(DSV4_EFORMAT, "encode: byte 0x%02x has no token and there is no unk_token",
                      b);
}

static int bpe(struct enc *e, const char *s, size_t n)
{
    const struct dsv4_tokenizer *tok = e->tok;
    int rc;
    uint64_t h = 0;
    struct tok_cache_entry *ce = NULL;
    if (e->cache && n <= TOK_CACHE_KEY) {
        h = dsv4_tokenizer_hash(s, n);
        ce = &e->cache[h & (TOK_CACHE_SLOTS - 1)];
        if (ce->hash == h && ce->key_len == n && !memcmp(ce->key, s, n)) {
            if ((rc = dsv4_tokens_reserve(e->out, ce->n_ids)))
                return rc;
            memcpy(e->out->ids + e->out->len, ce->ids, ce->n_ids * sizeof(int32_t));
            e->out->len += ce->n_ids;
            return 0;
        }
    }
    if (tok->ignore_merges) {
        int32_t id = dsv4_tokenizer_vmap_get(tok, s, n);
        if (id >= 0)
            return dsv4_tokens_push(e->out, id);
    }
    if ((rc = ws_reserve(e, 2 * n)))
        return rc;
    int32_t *sym = e->sym, *prev = e->prev, *next = e->next;
    uint64_t *heap = e->heap;
    size_t nh = 0, m = 0;
    for (size_t i = 0; i < n; i++)
        if ((rc = byte_symbols(tok, (uint8_t)s[i], sym, &m)))
            return rc;
    for (size_t i = 0; i < m; i++) {
        prev[i] = (int32_t)i - 1;
        next[i] = i + 1 < m ? (int32_t)i + 1 : -1;
    }
    int32_t rank, merged;
    for (size_t i = 0; i + 1 < m; i++)
        if (sym[i] >= 0 && sym[i + 1] >= 0 &&
            merge_lookup(&tok->mmap, sym[i], sym[i + 1], &rank, &merged))
            heap_push(heap, &nh, (uint64_t)rank << 32 | i);
    while (nh > 0) {
        uint64_t top = heap_pop(heap, &nh);
        int32_t pos = (int32_t)(uint32_t)top, want = (int32_t)(top >> 32);
        /* Stale entries: the left symbol was absorbed, has no right
         * neighbour any more, or the pair changed since the push. */
        if (sym[pos] < 0 || next[pos] < 0)
            continue;
        int32_t r = next[pos];
        if (sym[r] < 0 || !merge_lookup(&tok->mmap, sym[pos], sym[r], &rank, &merged) ||
            rank != want)
            continue;
        sym[pos] = merged;
        sym[r] = -2; /* absorbed */
        next[pos] = next[r];
        if (next[r] >= 0)
            prev[next[r]] = pos;
        if (prev[pos] >= 0 && sym[prev[pos]] >= 0 &&
            merge_lookup(&tok->mmap, sym[prev[pos]], sym[pos], &rank, &merged))
            heap_push(heap, &nh, (uint64_t)rank << 32 | (uint32_t)prev[pos]);
        if (next[pos] >= 0 && sym[next[pos]] >= 0 &&
            merge_lookup(&tok->mmap, sym[pos], sym[next[pos]], &rank, &merged))
            heap_push(heap, &nh, (uint64_t)rank << 32 | (uint32_t)pos);
    }
    size_t start = e->out->len;
    bool last_unk = false;
    for (int32_t i = 0; i >= 0; i = next[i]) {
        int32_t id = sym[i];
        if (id == -1) { /* unknown byte */
            if (tok->fuse_unk && last_unk)
                continue;
            id = tok->unk_id;
            last_unk = true;
        } else
            last_unk = false;
        if ((rc = dsv4_tokens_push(e->out, id)))
            return rc;
    }
    size_t made = e->out->len - start;
    if (ce && made <= TOK_CACHE_IDS) {
        ce->hash = h;
        ce->key_len = (uint8_t)n;
        ce->n_ids = (uint8_t)made;
        memcpy(ce->key, s, n);
        memcpy(ce->ids, e->out->ids + start, made * sizeof(int32_t));
    }
    return 0;
}

/* ------------------------------------------------------------ pre-tokenizer */

static int seg_push(struct enc *e, int k, size_t *cnt, size_t s, size_t end, bool m)
{
    if (*cnt == e->seg_cap[k]) {
        size_t cap = e->seg_cap[k] ? 2 * e->seg_cap[k] : 64;
        struct seg *ns = realloc(e->seg[k], cap * sizeof(*ns));
        if (!ns)
            return dsv4_error(DSV4_ENOMEM, "encode: out of memory for pre-tokenizer splits");
        e->seg[k] = ns;
        e->seg_cap[k] = cap;
    }
    e->seg[k][(*cnt)++] = (struct seg){s, end, m};
    return 0;
}

static int stage(struct enc *e, int k, const char *s, size_t n);

/* Runs regex `re` over s and records matches and gaps as segments of
 * stage k (HF's Pattern::find_matches for a regex). */
static int find_segments(struct enc *e, int k, const pcre2_code *re, const char *s, size_t n,
                         size_t *cnt)
{
    *cnt = 0;
    size_t pos = 0, prev = 0;
    int rc;
    while (pos <= n) {
        int m = pcre2_match(re, (PCRE2_SPTR)s, n, pos, PCRE2_NO_UTF_CHECK, e->md, NULL);
        if (m == PCRE2_ERROR_NOMATCH)
            break;
        if (m < 0) {
            PCRE2_UCHAR msg[128];
            pcre2_get_error_message(m, msg, sizeof(msg));
            return dsv4_error(DSV4_EINTERNAL, "encode: regex match failed: %s", (char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(e->md);
        size_t ms = ov[0], me = ov[1];
        if (ms != prev && (rc = seg_push(e, k, cnt, prev, ms, false)))
            return rc;
        if ((rc = seg_push(e, k, cnt, ms, me, true)))
            return rc;
        prev = me;
        if (me == ms) {
            if (me >= n)
                break;
            size_t l = dsv4_tokenizer_utf8_len((const uint8_t *)s + me, n - me);
            pos = me + (l ? l : 1);
        } else
            pos = me;
    }
    if (prev != n && (rc = seg_push(e, k, cnt, prev, n, false)))
        return rc;
    return 0;
}

static int stage_split(struct enc *e, int k, const struct tok_pretok *pt, const char *s, size_t n)
{
    size_t cnt;
    int rc = find_segments(e, k, pt->re, s, n, &cnt);
    if (rc)
        return rc;
    struct seg *g = e->seg[k];
    if (pt->invert)
        for (size_t i = 0; i < cnt; i++)
            g[i].m = !g[i].m;
    size_t first = 0, last = cnt; /* pieces are g[first..last) */
    bool pm = false;
    size_t w = 0;
    switch (pt->behavior) {
    case TOK_SPLIT_ISOLATED:
        break;
    case TOK_SPLIT_REMOVED:
        for (size_t r = 0; r < cnt; r++)
            if (!g[r].m)
                g[w++] = g[r];
        last = w;
        break;
    case TOK_SPLIT_MERGED_PREV:
        for (size_t r = 0; r < cnt; r++) {
            bool m = g[r].m;
            if (m && !pm && w > 0)
                g[w - 1].e = g[r].e;
            else
                g[w++] = g[r];
            pm = m;
        }
        last = w;
        break;
    case TOK_SPLIT_MERGED_NEXT:
        w = cnt;
        for (size_t r = cnt; r-- > 0;) {
            bool m = g[r].m;
            if (m && !pm && w < cnt)
                g[w].s = g[r].s;
            else
                g[--w] = g[r];
            pm = m;
        }
        first = w;
        break;
    case TOK_SPLIT_CONTIGUOUS:
        for (size_t r = 0; r < cnt; r++) {
            bool m = g[r].m;
            if (m == pm && w > 0)
                g[w - 1].e = g[r].e;
            else
                g[w++] = g[r];
            pm = m;
        }
        last = w;
        break;
    default:
        DSV4_ASSERT(0);
    }
    for (size_t i = first; i < last; i++) {
        /* e->seg[k] may move while deeper stages run: reload each time. */
        struct seg p = e->seg[k][i];
        if (p.e > p.s && (rc = stage(e, k + 1, s + p.s, p.e - p.s)))
            return rc;
    }
    return 0;
}

static int stage(struct enc *e, int k, const char *s, size_t n)
{
    if (n == 0)
        return 0;
    const struct dsv4_tokenizer *tok = e->tok;
    if (k == tok->n_pretok)
        return bpe(e, s, n);
    const struct tok_pretok *pt = &tok->pretok[k];
    if (!pt->byte_level)
        return stage_split(e, k, pt, s, n);
    /* ByteLevel: bytes -> alphabet is implicit (BPE works on raw bytes). */
    if (pt->add_prefix_space && s[0] != ' ') {
        char *t = malloc(n + 1);
        if (!t)
            return dsv4_error(DSV4_ENOMEM, "encode: out of memory");
        t[0] = ' ';
        memcpy(t + 1, s, n);
        int rc = pt->re ? stage_split(e, k, pt, t, n + 1) : stage(e, k + 1, t, n + 1);
        free(t);
        return rc;
    }
    return pt->re ? stage_split(e, k, pt, s, n) : stage(e, k + 1, s, n);
}

/* ------------------------------------------------------------ added tokens */

static bool is_ws(uint32_t c)
{
    return (c >= 9 && c <= 13) || c == 0x20 || c == 0x85 || c == 0xa0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f ||
           c == 0x205f || c == 0x3000;
}

static uint32_t cp_at(const uint8_t *s, size_t n, size_t *len)
{
    size_t l = dsv4_tokenizer_utf8_len(s, n);
    *len = l ? l : 1;
    if (l == 0)
        return 0xfffd;
    if (l == 1)
        return s[0];
    if (l == 2)
        return ((uint32_t)(s[0] & 0x1f) << 6) | (s[1] & 0x3f);
    if (l == 3)
        return ((uint32_t)(s[0] & 0x0f) << 12) | ((uint32_t)(s[1] & 0x3f) << 6) | (s[2] & 0x3f);
    return ((uint32_t)(s[0] & 0x07) << 18) | ((uint32_t)(s[1] & 0x3f) << 12) |
           ((uint32_t)(s[2] & 0x3f) << 6) | (s[3] & 0x3f);
}

/* Start of the code point that ends at s[end) (walks back over at most 3
 * continuation bytes). */
static size_t cp_start_before(const uint8_t *s, size_t lo, size_t end)
{
    size_t i = end - 1;
    while (i > lo && end - i < 4 && (s[i] & 0xc0) == 0x80)
        i--;
    size_t l = dsv4_tokenizer_utf8_len(s + i, end - i);
    return l == end - i ? i : end - 1;
}

static bool is_word_cp(uint32_t c)
{
    /* Letters/digits/underscore; non-ASCII counted as word characters
     * unless whitespace or in the general punctuation/CJK symbol blocks. */
    if (c < 0x80)
        return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
               c == '_';
    return !is_ws(c) && !(c >= 0x2000 && c <= 0x206f) && !(c >= 0x3000 && c <= 0x303f) &&
           !(c >= 0xff00 && c <= 0xff0f);
}

typedef int (*gap_fn)(struct enc *e, const char *s, size_t n);

/* Splits s on the added tokens of trie t, HF's AddedVocabulary order:
 * leftmost-longest matches, gaps to `gap`, matches emitted as their id. */
static int split_added(struct enc *e, const struct tok_trie *t, const char *s, size_t n, gap_fn gap)
{
    const struct dsv4_tokenizer *tok = e->tok;
    const uint8_t *u = (const uint8_t *)s;
    size_t done = 0, i = 0;
    int rc;
    if (t->count == 0)
        return gap(e, s, n);
    while (i < n) {
        if (!t->first[u[i]]) {
            i++;
            continue;
        }
        int32_t node = 0, best = -1;
        size_t best_end = 0;
        for (size_t j = i; j < n; j++) {
            int32_t c = t->nodes[node].child;
            while (c >= 0 && t->nodes[c].byte != u[j])
                c = t->nodes[c].sibling;
            if (c < 0)
                break;
            node = c;
            if (t->nodes[c].added >= 0) {
                best = t->nodes[c].added;
                best_end = j + 1;
            }
        }
        if (best < 0) {
            i++;
            continue;
        }
        const struct tok_added *at = &tok->added[best];
        size_t ms = i, me = best_end;
        i = best_end;
        if (at->special && (e->flags & DSV4_TOKENIZER_SPECIAL_AS_TEXT))
            continue;
        if (at->single_word) {
            size_t l;
            bool before = ms > 0 && is_word_cp(cp_at(u + cp_start_before(u, 0, ms),
                                                     ms - cp_start_before(u, 0, ms), &l));
            bool after = me < n && is_word_cp(cp_at(u + me, n - me, &l));
            if (before || after)
                continue;
        }
        if (at->lstrip) {
            while (ms > done) {
                size_t st = cp_start_before(u, done, ms), l;
                if (!is_ws(cp_at(u + st, ms - st, &l)) || l != ms - st)
                    break;
                ms = st;
            }
        }
        if (at->rstrip) {
            while (me < n) {
                size_t l;
                uint32_t c = cp_at(u + me, n - me, &l);
                if (!is_ws(c) || dsv4_tokenizer_utf8_len(u + me, n - me) == 0)
                    break;
                me += l;
            }
            i = me;
        }
        if (ms > done && (rc = gap(e, s + done, ms - done)))
            return rc;
        if ((rc = dsv4_tokens_push(e->out, at->id)))
            return rc;
        done = me;
    }
    if (done < n)
        return gap(e, s + done, n - done);
    return 0;
}

static int pretok_gap(struct enc *e, const char *s, size_t n)
{
    return stage(e, 0, s, n);
}

/* Applies the normalizers to a well-formed run; *out is s itself when
 * there are none, else a malloc'd copy for the caller to free. */
int dsv4_tokenizer_normalize(const struct dsv4_tokenizer *tok, const char *s, size_t n, char **out,
                             size_t *out_len, char **owned)
{
    *out = (char *)s;
    *out_len = n;
    *owned = NULL;
    for (int i = 0; i < tok->n_norm; i++) {
        const struct tok_norm *nm = &tok->norm[i];
        const char *cur = *out;
        size_t cur_len = *out_len;
        char *res;
        size_t res_len;
        if (nm->kind == TOK_NORM_PREPEND) {
            if (cur_len == 0)
                continue;
            res_len = nm->text_len + cur_len;
            res = malloc(res_len + 1);
            if (!res)
                return dsv4_error(DSV4_ENOMEM, "encode: out of memory normalizing");
            memcpy(res, nm->text, nm->text_len);
            memcpy(res + nm->text_len, cur, cur_len);
        } else {
            PCRE2_SIZE cap = cur_len * 2 + nm->text_len + 64;
            for (;;) {
                res = malloc(cap + 1);
                if (!res)
                    return dsv4_error(DSV4_ENOMEM, "encode: out of memory normalizing");
                PCRE2_SIZE olen = cap;
                int rc = pcre2_substitute(
                        nm->re, (PCRE2_SPTR)cur, cur_len, 0,
                        PCRE2_SUBSTITUTE_GLOBAL | PCRE2_SUBSTITUTE_LITERAL |
                                PCRE2_SUBSTITUTE_OVERFLOW_LENGTH | PCRE2_NO_UTF_CHECK,
                        NULL, NULL, (PCRE2_SPTR)nm->text, nm->text_len, (PCRE2_UCHAR *)res, &olen);
                if (rc == PCRE2_ERROR_NOMEMORY) {
                    free(res);
                    cap = olen;
                    continue;
                }
                if (rc < 0) {
                    free(res);
                    return dsv4_error(DSV4_EINTERNAL, "encode: Replace normalizer failed (%d)", rc);
                }
                res_len = olen;
                break;
            }
        }
        free(*owned);
        *owned = res;
        *out = res;
        *out_len = res_len;
    }
    return 0;
}

static int valid_run(struct enc *e, const char *s, size_t n)
{
    char *ns, *owned;
    size_t nn;
    int rc = dsv4_tokenizer_normalize(e->tok, s, n, &ns, &nn, &owned);
    if (!rc)
        rc = split_added(e, &e->tok->trie_norm, ns, nn, pretok_gap);
    free(owned);
    return rc;
}

/* A gap between raw added tokens: well-formed runs go through the
 * normalizer and pre-tokenizer, stray bytes become byte tokens. */
static int raw_gap(struct enc *e, const char *s, size_t n)
{
    const uint8_t *u = (const uint8_t *)s;
    size_t i = 0, run = 0;
    int rc;
    while (i < n) {
        if (u[i] < 0x80) {
            i++;
            continue;
        }
        size_t l = dsv4_tokenizer_utf8_len(u + i, n - i);
        if (l) {
            i += l;
            continue;
        }
        if (i > run && (rc = valid_run(e, s + run, i - run)))
            return rc;
        if ((rc = bpe(e, s + i, 1)))
            return rc;
        run = ++i;
    }
    if (n > run)
        return valid_run(e, s + run, n - run);
    return 0;
}

int dsv4_tokenizer_encode(const struct dsv4_tokenizer *tok, const char *text, size_t len,
                          unsigned flags, struct dsv4_tokens *out)
{
    struct enc e;
    memset(&e, 0, sizeof(e));
    e.tok = tok;
    e.flags = flags;
    e.out = out;
    if (len == 0)
        return 0;
    /* symbol positions are int32 (and byte_fallback may double them) */
    if (len > (size_t)INT32_MAX / 2)
        return dsv4_error(DSV4_ERANGE, "encode: %zu bytes is more than one call accepts (%d)", len,
                          INT32_MAX / 2);
    e.md = pcre2_match_data_create(1, NULL);
    if (!e.md)
        return dsv4_error(DSV4_ENOMEM, "encode: out of memory");
    /* The cache is a pure speed-up: take it only if nobody else has it. */
    struct dsv4_tokenizer *mut = (struct dsv4_tokenizer *)tok;
    bool locked = pthread_mutex_trylock(&mut->cache_lock) == 0;
    if (locked)
        e.cache = mut->cache;
    size_t before = out->len;
    int rc = dsv4_tokens_reserve(out, len / 4 + 16);
    if (!rc)
        rc = split_added(&e, &tok->trie_raw, text, len, raw_gap);
    if (locked)
        pthread_mutex_unlock(&mut->cache_lock);
    if (rc)
        out->len = before;
    pcre2_match_data_free(e.md);
    free(e.sym);
    free(e.prev);
    free(e.next);
    free(e.heap);
    for (int k = 0; k < TOK_MAX_PRETOK; k++)
        free(e.seg[k]);
    return rc;
}
