/*
 * tokenizer.c - loading a Hugging Face byte-level BPE tokenizer.json into
 * flat tables, decoding (whole sequence and streaming), token lookups.
 * Encoding lives in tokenizer_encode.c.  See tokenizer.h for the contract
 * and tokenizer_int.h for the layout and its invariants.
 *
 * Why flat tables: decode needs id -> bytes in O(1) and the BPE inner loop
 * needs (id, id) -> (rank, merged) in O(1); both are open-addressing hashes
 * or arrays built once here, so encode/decode never touch cJSON.
 */
#include "engine/text/tokenizer_int.h"
#include "base/dsv4.h"
#include "engine/io/fileio.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* a tokenizer.json larger than this is refused (real ones are ~10 MB) */
#define MAX_TOKENIZER_FILE ((size_t)1 << 30)

/* ------------------------------------------------------------ small helpers */

uint64_t dsv4_tokenizer_hash(const void *p, size_t n)
{
    const uint8_t *s = p;
    uint64_t h = 0x9e3779b97f4a7c15ull ^ (n * 0xff51afd7ed558ccdull);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = (h ^ w) * 0xbf58476d1ce4e5b9ull;
        h ^= h >> 29;
        s += 8;
        n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, s, n);
    h = (h ^ w) * 0x94d049bb133111ebull;
    h ^= h >> 31;
    return h | 1; /* never 0: 0 marks an empty slot */
}

uint32_t dsv4_tokenizer_byte_char(uint8_t b)
{
    /* GPT-2's alphabet: printable Latin-1 bytes stand for themselves, the
     * other 68 bytes map in order to U+0100.. */
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174)
        return b;
    uint32_t k = 0;
    for (uint32_t c = 0; c < b; c++)
        if (!((c >= 33 && c <= 126) || (c >= 161 && c <= 172) || c >= 174))
            k++;
    return 256 + k;
}

size_t dsv4_tokenizer_utf8_len(const uint8_t *s, size_t n)
{
    if (n == 0)
        return 0;
    uint8_t c = s[0];
    if (c < 0x80)
        return 1;
    size_t need;
    uint8_t lo = 0x80, hi = 0xbf;
    if (c >= 0xc2 && c <= 0xdf)
        need = 2;
    else if (c >= 0xe0 && c <= 0xef) {
        need = 3;
        if (c == 0xe0)
            lo = 0xa0;
        if (c == 0xed)
            hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        need = 4;
        if (c == 0xf0)
            lo = 0x90;
        if (c == 0xf4)
            hi = 0x8f;
    } else
        return 0;
    if (n < need || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < need; i++)
        if (s[i] < 0x80 || s[i] > 0xbf)
            return 0;
    return need;
}

/* Decodes one UTF-8 code point (well-formed input assumed by callers). */
static size_t utf8_decode(const uint8_t *s, size_t n, uint32_t *cp)
{
    size_t l = dsv4_tokenizer_utf8_len(s, n);
    if (l == 0) {
        *cp = 0xfffd;
        return 1;
    }
    if (l == 1)
        *cp = s[0];
    else if (l == 2)
        *cp = ((uint32_t)(s[0] & 0x1f) << 6) | (s[1] & 0x3f);
    else if (l == 3)
        *cp = ((uint32_t)(s[0] & 0x0f) << 12) | ((uint32_t)(s[1] & 0x3f) << 6) | (s[2] & 0x3f);
    else
        *cp = ((uint32_t)(s[0] & 0x07) << 18) | ((uint32_t)(s[1] & 0x3f) << 12) |
              ((uint32_t)(s[2] & 0x3f) << 6) | (s[3] & 0x3f);
    return l;
}

/* Byte-level spelling -> raw bytes.  Returns false when some character is
 * outside the alphabet (then the token decodes to its own UTF-8, as HF's
 * ByteLevel decoder does).  out must hold n bytes. */
static bool spelling_to_bytes(const int16_t *char_byte, const char *s, size_t n, char *out,
                              size_t *out_len)
{
    size_t i = 0, o = 0;
    while (i < n) {
        uint32_t cp;
        size_t l = utf8_decode((const uint8_t *)s + i, n - i, &cp);
        if (cp >= 324 || char_byte[cp] < 0)
            return false;
        out[o++] = (char)char_byte[cp];
        i += l;
    }
    *out_len = o;
    return true;
}

/* ------------------------------------------------------------ hash tables */

static int vmap_init(struct tok_vmap *m, size_t n)
{
    size_t cap = 16;
    while (cap < n * 2)
        cap <<= 1;
    m->hash = calloc(cap, sizeof(*m->hash));
    m->id = malloc(cap * sizeof(*m->id));
    if (!m->hash || !m->id)
        return dsv4_error(DSV4_ENOMEM, "tokenizer: out of memory for the vocabulary map");
    m->mask = cap - 1;
    return 0;
}

int32_t dsv4_tokenizer_vmap_get(const struct dsv4_tokenizer *tok, const char *s, size_t n)
{
    const struct tok_vmap *m = &tok->vmap;
    uint64_t h = dsv4_tokenizer_hash(s, n);
    for (size_t i = h & m->mask;; i = (i + 1) & m->mask) {
        if (m->hash[i] == 0)
            return -1;
        if (m->hash[i] == h) {
            int32_t id = m->id[i];
            if (tok->tok_len[id] == n && !memcmp(tok->tok_data + tok->tok_off[id], s, n))
                return id;
        }
    }
}

/* Inserts id under its decode bytes; keeps the first of equal keys. */
static void vmap_put(struct dsv4_tokenizer *tok, int32_t id)
{
    struct tok_vmap *m = &tok->vmap;
    const char *s = tok->tok_data + tok->tok_off[id];
    size_t n = tok->tok_len[id];
    if (dsv4_tokenizer_vmap_get(tok, s, n) >= 0)
        return;
    uint64_t h = dsv4_tokenizer_hash(s, n);
    size_t i = h & m->mask;
    while (m->hash[i] != 0)
        i = (i + 1) & m->mask;
    m->hash[i] = h;
    m->id[i] = id;
}

static int mmap_init(struct tok_mmap *m, size_t n)
{
    size_t cap = 16;
    while (cap < n * 2)
        cap <<= 1;
    m->key = malloc(cap * sizeof(*m->key));
    m->rank = malloc(cap * sizeof(*m->rank));
    m->merged = malloc(cap * sizeof(*m->merged));
    if (!m->key || !m->rank || !m->merged)
        return dsv4_error(DSV4_ENOMEM, "tokenizer: out of memory for the merge map");
    memset(m->key, 0xff, cap * sizeof(*m->key));
    m->mask = cap - 1;
    return 0;
}

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return x;
}

/* Keeps the first (lowest-rank) merge of a pair, as HF does. */
static void mmap_put(struct tok_mmap *m, int32_t a, int32_t b, int32_t rank, int32_t merged)
{
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    size_t i = mix64(key) & m->mask;
    while (m->key[i] != UINT64_MAX) {
        if (m->key[i] == key)
            return;
        i = (i + 1) & m->mask;
    }
    m->key[i] = key;
    m->rank[i] = rank;
    m->merged[i] = merged;
}

/* ------------------------------------------------------------ JSON helpers */

static bool json_bool(const cJSON *obj, const char *key, bool dflt)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (cJSON_IsBool(v))
        return cJSON_IsTrue(v);
    return dflt;
}

static const char *json_type(const cJSON *obj)
{
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(obj, "type");
    return cJSON_IsString(t) ? t->valuestring : NULL;
}

/* HF runs its regexes with Oniguruma, whose \s is exactly the Unicode
 * White_Space property; PCRE2's \s in UCP mode also takes U+180E.  So \s
 * and \S are spelled out as explicit classes before compiling (\S inside a
 * bracket class is left to PCRE2).  Returns a malloc'd pattern. */
#define WS_RANGES                                                                         \
    "\\t-\\r\\x{20}\\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}\\x{202f}" \
    "\\x{205f}\\x{3000}"

static char *rewrite_ws(const char *src)
{
    size_t n = strlen(src), w = 0;
    char *out = malloc(n * (sizeof(WS_RANGES) + 4) + 1);
    if (!out)
        return NULL;
    bool in_class = false;
    for (size_t i = 0; i < n;) {
        char c = src[i];
        if (c == '\\' && i + 1 < n) {
            char e = src[i + 1];
            const char *rep = NULL;
            if (e == 's')
                rep = in_class ? WS_RANGES : "[" WS_RANGES "]";
            else if (e == 'S' && !in_class)
                rep = "[^" WS_RANGES "]";
            if (rep) {
                memcpy(out + w, rep, strlen(rep));
                w += strlen(rep);
            } else {
                out[w++] = c;
                out[w++] = e;
            }
            i += 2;
            continue;
        }
        if (!in_class && c == '[') {
            in_class = true;
            out[w++] = src[i++];
            if (i < n && src[i] == '^')
                out[w++] = src[i++];
            if (i < n && src[i] == ']')
                out[w++] = src[i++];
            continue;
        }
        if (in_class && c == '[' && i + 1 < n && src[i + 1] == ':') {
            const char *end = strstr(src + i + 2, ":]");
            size_t l = end ? (size_t)(end - (src + i)) + 2 : n - i;
            memcpy(out + w, src + i, l);
            w += l;
            i += l;
            continue;
        }
        if (in_class && c == ']')
            in_class = false;
        out[w++] = src[i++];
    }
    out[w] = 0;
    return out;
}

/* A Split/Replace pattern: {"String": s} (literal) or {"Regex": r}. */
static int compile_pattern(const cJSON *pat, const char *where, pcre2_code **out)
{
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(pat, "String");
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(pat, "Regex");
    const char *src;
    uint32_t opts = PCRE2_UTF | PCRE2_UCP;
    if (cJSON_IsString(s)) {
        src = s->valuestring;
        opts = PCRE2_UTF | PCRE2_LITERAL; /* UCP is not allowed with LITERAL */
    } else if (cJSON_IsString(r))
        src = r->valuestring;
    else
        return dsv4_error(DSV4_EFORMAT, "tokenizer: %s: pattern needs String or Regex", where);
    char *rw = NULL;
    if (!(opts & PCRE2_LITERAL)) {
        rw = rewrite_ws(src);
        if (!rw)
            return dsv4_error(DSV4_ENOMEM, "tokenizer: out of memory");
        src = rw;
    }
    int err;
    PCRE2_SIZE off;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)src, PCRE2_ZERO_TERMINATED, opts, &err, &off, NULL);
    free(rw);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof(msg));
        return dsv4_error(DSV4_ENOTSUP, "tokenizer: %s: regex not accepted by PCRE2 at %zu: %s",
                          where, (size_t)off, (const char *)msg);
    }
    /* JIT is an optimisation only: interpreted matching gives equal results. */
    (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
    *out = re;
    return 0;
}

/* The GPT-2 split of ByteLevel(use_regex=true). */
static const char gpt2_regex[] =
        "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static int load_normalizer(struct dsv4_tokenizer *tok, const cJSON *n)
{
    if (!n || cJSON_IsNull(n))
        return 0;
    const char *type = json_type(n);
    if (!type)
        return dsv4_error(DSV4_EFORMAT, "tokenizer: normalizer without type");
    if (!strcmp(type, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(n, "normalizers");
        if (!cJSON_IsArray(list))
            return dsv4_error(DSV4_EFORMAT, "tokenizer: normalizer Sequence without a list");
        const cJSON *e;
        cJSON_ArrayForEach(e, list)
        {
            int rc = load_normalizer(tok, e);
            if (rc)
                return rc;
        }
        return 0;
    }
    if (tok->n_norm >= TOK_MAX_NORM)
        return dsv4_error(DSV4_ENOTSUP, "tokenizer: more than %d normalizers", TOK_MAX_NORM);
    struct tok_norm *nm = &tok->norm[tok->n_norm];
    if (!strcmp(type, "Prepend")) {
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(n, "prepend");
        if (!cJSON_IsString(p))
            return dsv4_error(DSV4_EFORMAT, "tokenizer: Prepend normalizer without prepend");
        nm->kind = TOK_NORM_PREPEND;
        nm->text = strdup(p->valuestring);
    } else if (!strcmp(type, "Replace")) {
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(n, "content");
        if (!cJSON_IsString(c))
            return dsv4_error(DSV4_EFORMAT, "tokenizer: Replace normalizer without content");
        int rc = compile_pattern(cJSON_GetObjectItemCaseSensitive(n, "pattern"),
                                 "Replace normalizer", &nm->re);
        if (rc)
            return rc;
        nm->kind = TOK_NORM_REPLACE;
        nm->text = strdup(c->valuestring);
    } else
        return dsv4_error(DSV4_ENOTSUP, "tokenizer: normalizer type '%s' is not supported", type);
    if (!nm->text)
        return dsv4_error(DSV4_ENOMEM, "tokenizer: out of memory");
    nm->text_len = strlen(nm->text);
    tok->n_norm++;
    return 0;
}

static int load_pretok(struct dsv4_tokenizer *tok, const cJSON *p)
{
    const char *type = json_type(p);
    if (!type)
        return dsv4_error(DSV4_EFORMAT, "tokenizer: pre_tokenizer without type");
    if (!strcmp(type, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(p, "pretokenizers");
        if (!cJSON_IsArray(list))
            return dsv4_error(DSV4_EFORMAT, "tokenizer: pre_tokenizer Sequence without a list");
        const cJSON *e;
        cJSON_ArrayForEach(e, list)
        {
            int rc = load_pretok(tok, e);
            if (rc)
                return rc;
        }
        return 0;
    }
    if (tok->n_pretok > 0 && tok->pretok[tok->n_pretok - 1].byte_level)
        return dsv4_error(DSV4_ENOTSUP,
                          "tokenizer: pre_tokenizer '%s' after ByteLevel is not supported", type);
    if (tok->n_pretok >= TOK_MAX_PRETOK)
        return dsv4_error(DSV4_ENOTSUP, "tokenizer: more than %d pre-tokenizers", TOK_MAX_PRETOK);
    struct tok_pretok *pt = &tok->pretok[tok->n_pretok];
    if (!strcmp(type, "Split")) {
        static const char *const names[] = {"Isolated", "Removed", "MergedWithPrevious",
                                            "MergedWithNext", "Contiguous"};
        const cJSON *b = cJSON_GetObjectItemCaseSensitive(p, "behavior");
        pt->behavior = -1;
        for (int i = 0; cJSON_IsString(b) && i < (int)DSV4_ARRAY_LEN(names); i++)
            if (!strcmp(b->valuestring, names[i]))
                pt->behavior = i;
        if (pt->behavior < 0)
            return dsv4_error(DSV4_ENOTSUP, "tokenizer: Split behavior '%s' is not supported",
                              cJSON_IsString(b) ? b->valuestring : "(missing)");
        pt->invert = json_bool(p, "invert", false);
        int rc = compile_pattern(cJSON_GetObjectItemCaseSensitive(p, "pattern"), "Split", &pt->re);
        if (rc)
            return rc;
    } else if (!strcmp(type, "ByteLevel")) {
        pt->byte_level = true;
        pt->add_prefix_space = json_bool(p, "add_prefix_space", false);
        if (json_bool(p, "use_regex", true)) {
            cJSON *pat = cJSON_CreateObject();
            if (!pat || !cJSON_AddStringToObject(pat, "Regex", gpt2_regex)) {
                cJSON_Delete(pat);
                return dsv4_error(DSV4_ENOMEM, "tokenizer: out of memory");
            }
            int rc = compile_pattern(pat, "ByteLevel", &pt->re);
            cJSON_Delete(pat);
            if (rc)
                return rc;
        }
    } else
        return dsv4_error(DSV4_ENOTSUP, "tokenizer: pre_tokenizer type '%s' is not supported",
                          type);
    tok->n_pretok++;
    return 0;
}

static int check_decoder(const cJSON *d)
{
    const char *type = d ? json_type(d) : NULL;
    if (!type)
        return dsv4_error(DSV4_ENOTSUP, "tokenizer: a ByteLevel decoder is required");
    if (!strcmp(type, "ByteLevel"))
        return 0;
    if (!strcmp(type, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(d, "decoders");
        const cJSON *e;
        int n = 0;
        cJSON_ArrayForEach(e, list)
        {
            int rc = check_decoder(e);
            if (rc)
                return rc;
            n++;
        }
        if (n > 0)
            return 0;
    }
    return dsv4_error(DSV4_ENOTSUP, "tokenizer: decoder type '%s' is not supported", type);
}

/* ------------------------------------------------------------ tries */

static int trie_add(struct tok_trie *t, const char *s, size_t n, int32_t added)
{
    if (t->count == 0) {
        t->cap = 64;
        t->nodes = malloc(t->cap * sizeof(*t->nodes));
        if (!t->nodes)
            return DSV4_ENOMEM;
        t->nodes[0] = (struct tok_trie_node){-1, -1, -1, 0};
        t->count = 1;
    }
    t->first[(uint8_t)s[0]] = true;
    int32_t node = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t b = (uint8_t)s[i];
        int32_t c = t->nodes[node].child;
        while (c >= 0 && t->nodes[c].byte != b)
            c = t->nodes[c].sibling;
        if (c < 0) {
            if (t->count == t->cap) {
                size_t cap = t->cap * 2;
                struct tok_trie_node *nn = realloc(t->nodes, cap * sizeof(*nn));
                if (!nn)
                    return DSV4_ENOMEM;
                t->nodes = nn;
                t->cap = cap;
            }
            c = (int32_t)t->count++;
            t->nodes[c] = (struct tok_trie_node){-1, t->nodes[node].child, -1, b};
            t->nodes[node].child = c;
        }
        node = c;
    }
    if (t->nodes[node].added < 0)
        t->nodes[node].added = added;
    return 0;
}

/* ------------------------------------------------------------ loading */

/* Added tokens: their content decodes through the ByteLevel decoder too
 * and overrides a model token of the same id (HF looks them up first).
 * The tries are built later, once the normalizer is known. */
static int load_added(struct dsv4_tokenizer *tok, const cJSON *added, const int16_t *char_byte,
                      const uint8_t *kind, size_t used)
{
    size_t k = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, added)
    {
        struct tok_added *at = &tok->added[k];
        const char *c = cJSON_GetObjectItemCaseSensitive(e, "content")->valuestring;
        at->id = (int32_t)cJSON_GetObjectItemCaseSensitive(e, "id")->valuedouble;
        at->len = strlen(c);
        at->content = strdup(c);
        if (!at->content)
            return dsv4_error(DSV4_ENOMEM, "tokenizer: out of memory");
        at->special = json_bool(e, "special", false);
        at->lstrip = json_bool(e, "lstrip", false);
        at->rstrip = json_bool(e, "rstrip", false);
        at->single_word = json_bool(e, "single_word", false);
        at->normalized = json_bool(e, "normalized", !at->special);
        char *dst = tok->tok_data + used;
        size_t blen;
        bool mapped = spelling_to_bytes(char_byte, c, at->len, dst, &blen);
        if (!mapped) {
            memcpy(dst, c, at->len);
            blen = at->len;
        }
        /* HF gives an added token that the model already spells the same
         * way the model's id (the id written in the file is then unused). */
        int32_t same = dsv4_tokenizer_vmap_get(tok, dst, blen);
        if (same >= 0 && kind[same] == (mapped ? 1 : 2))
            at->id = same;
        else {
            tok->tok_off[at->id] = (uint32_t)used;
            tok->tok_len[at->id] = (uint32_t)blen;
            used += blen;
        }
        tok->is_special[at->id] = at->special;
        k++;
    }
    return 0;
}

/* Tries of the added tokens; normalized ones are matched in their
 * normalized form, as HF does. */
static int build_tries(struct dsv4_tokenizer *tok)
{
    for (size_t k = 0; k < tok->n_added; k++) {
        const struct tok_added *at = &tok->added[k];
        char *c = at->content, *owned = NULL;
        size_t n = at->len;
        int rc = 0;
        if (at->normalized && tok->n_norm > 0)
            rc = dsv4_tokenizer_normalize(tok, at->content, at->len, &c, &n, &owned);
        if (!rc && n > 0)
            rc = trie_add(at->normalized ? &tok->trie_norm : &tok->trie_raw, c, n, (int32_t)k);
        free(owned);
        if (rc)
            return rc == DSV4_ENOMEM ? dsv4_error(DSV4_ENOMEM, "tokenizer: out of memory") : rc;
    }
    return 0;
}

/* Refuses what this BPE does not implement; reads the model's flags. */
static int load_model_kind(struct dsv4_tokenizer *tok, const cJSON *model)
{
    const char *type = json_type(model);
    if (type && strcmp(type, "BPE"))
        return dsv4_error(DSV4_ENOTSUP, "tokenizer: model type '%s' is not supported (BPE only)",
                          type);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (cJSON_IsNumber(v) && v->valuedouble > 0)
        return dsv4_error(DSV4_ENOTSUP, "tokenizer: BPE dropout is not supported");
    static const char *const affixes[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (size_t i = 0; i < DSV4_ARRAY_LEN(affixes); i++) {
        v = cJSON_GetObjectItemCaseSensitive(model, affixes[i]);
        if (cJSON_IsString(v) && v->valuestring[0])
            return dsv4_error(DSV4_ENOTSUP, "tokenizer: BPE %s is not supported with ByteLevel",
                              affixes[i]);
    }
    tok->byte_fallback = json_bool(model, "byte_fallback", false);
    tok->fuse_unk = json_bool(model, "fuse_unk", false);
    tok->ignore_merges = json_bool(model, "ignore_merges", false);
    return 0;
}

/* an integer id in [0, 2^24): ids index flat arrays */
static bool good_id(const cJSON *v)
{
    return cJSON_IsNumber(v) && v->valuedouble >= 0 && v->valuedouble < (1 << 24) &&
           v->valuedouble == (double)(int32_t)v->valuedouble;
}

/* Validates every id, then sizes and allocates the id-indexed tables, the
 * token bytes and the vocab map.  Ids must be dense enough to index arrays. */
static int alloc_tables(struct dsv4_tokenizer *tok, const cJSON *vocab, const cJSON *added)
{
    int64_t max_id = -1;
    size_t n_vocab = 0, bytes = 0, longest = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, vocab)
    {
        if (!good_id(e))
            return dsv4_error(DSV4_EFORMAT, "tokenizer: vocab entry '%s' has a bad id", e->string);
        max_id = DSV4_MAX(max_id, (int64_t)e->valuedouble);
        bytes += strlen(e->string);
        longest = DSV4_MAX(longest, strlen(e->string));
        n_vocab++;
    }
    cJSON_ArrayForEach(e, added)
    {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(e, "id");
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(e, "content");
        if (!good_id(id) || !cJSON_IsString(c) || !c->valuestring[0])
            return dsv4_error(DSV4_EFORMAT, "tokenizer: added token without id or content");
        max_id = DSV4_MAX(max_id, (int64_t)id->valuedouble);
        bytes += strlen(c->valuestring);
        longest = DSV4_MAX(longest, strlen(c->valuestring));
        tok->n_added++;
    }
    if (max_id < 0)
        return dsv4_error(DSV4_EFORMAT, "tokenizer: empty vocabulary");
    tok->vocab_size = (int32_t)max_id + 1;
    tok->tok_off = malloc((size_t)tok->vocab_size * sizeof(uint32_t));
    tok->tok_len = malloc((size_t)tok->vocab_size * sizeof(uint32_t));
    tok->is_special = calloc((size_t)tok->vocab_size, 1);
    /* + longest: conversions are tried in place at the end of the used part
     * before it is known whether they are kept */
    tok->tok_data = malloc(bytes + longest + 1);
    tok->added = calloc(tok->n_added + 1, sizeof(*tok->added));
    if (!tok->tok_off || !tok->tok_len || !tok->is_special || !tok->tok_data || !tok->added)
        return dsv4_error(DSV4_ENOMEM, "tokenizer: out of memory for %d tokens", tok->vocab_size);
    memset(tok->tok_len, 0xff, (size_t)tok->vocab_size * sizeof(uint32_t));
    return vmap_init(&tok->vmap, n_vocab);
}

/* Model tokens: decode bytes, then the bytes -> id map.  Byte-mappable
 * spellings first so that they win over raw-UTF-8 spellings.  kind[id]:
 * 1 the model spells id as byte-level characters, 2 as raw UTF-8.  *used:
 * bytes of tok_data filled. */
static int load_vocab(struct dsv4_tokenizer *tok, const cJSON *vocab, const int16_t *char_byte,
                      uint8_t *kind, size_t *used)
{
    const cJSON *e;
    *used = 0;
    for (int pass = 0; pass < 2; pass++) {
        cJSON_ArrayForEach(e, vocab)
        {
            int32_t id = (int32_t)e->valuedouble;
            size_t n = strlen(e->string), blen;
            char *dst = tok->tok_data + *used;
            bool mapped = spelling_to_bytes(char_byte, e->string, n, dst, &blen);
            if (mapped != (pass == 0))
                continue;
            if (!mapped) {
                memcpy(dst, e->string, n);
                blen = n;
            }
            if (tok->tok_len[id] != TOK_NONE)
                return dsv4_error(DSV4_EFORMAT, "tokenizer: id %d appears twice in vocab", id);
            kind[id] = mapped ? 1 : 2;
            tok->tok_off[id] = (uint32_t)*used;
            tok->tok_len[id] = (uint32_t)blen;
            *used += blen;
            vmap_put(tok, id);
        }
    }
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        tok->byte_id[b] = dsv4_tokenizer_vmap_get(tok, &c, 1);
    }
    return 0;
}

/* The unknown-token id, -1 without one; it must be in vocab. */
static int load_unk(struct dsv4_tokenizer *tok, const cJSON *model, const cJSON *vocab)
{
    tok->unk_id = -1;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(model, "unk_token");
    if (!cJSON_IsString(v))
        return 0;
    const cJSON *u = cJSON_GetObjectItemCaseSensitive(vocab, v->valuestring);
    if (!cJSON_IsNumber(u))
        return dsv4_error(DSV4_EFORMAT, "tokenizer: unk_token '%s' is not in vocab",
                          v->valuestring);
    tok->unk_id = (int32_t)u->valuedouble;
    return 0;
}

/* Merges: "a b" or ["a", "b"]; rank = position; both parts and the merged
 * token must be in vocab. */
static int load_merges(struct dsv4_tokenizer *tok, const cJSON *merges, const int16_t *char_byte)
{
    int rc = mmap_init(&tok->mmap, (size_t)cJSON_GetArraySize(merges));
    if (rc)
        return rc;
    const cJSON *e;
    char *buf = NULL;
    size_t buf_cap = 0;
    int32_t rank = 0;
    rc = 0;
    cJSON_ArrayForEach(e, merges)
    {
        const char *a, *b;
        size_t la, lb;
        if (cJSON_IsString(e)) {
            const char *sp = strchr(e->valuestring, ' ');
            if (!sp || strchr(sp + 1, ' ')) {
                rc = dsv4_error(DSV4_EFORMAT, "tokenizer: merge %d '%s' is not 'a b'", rank,
                                e->valuestring);
                break;
            }
            a = e->valuestring;
            la = (size_t)(sp - a);
            b = sp + 1;
            lb = strlen(b);
        } else if (cJSON_IsArray(e) && cJSON_GetArraySize(e) == 2 &&
                   cJSON_IsString(cJSON_GetArrayItem(e, 0)) &&
                   cJSON_IsString(cJSON_GetArrayItem(e, 1))) {
            a = cJSON_GetArrayItem(e, 0)->valuestring;
            b = cJSON_GetArrayItem(e, 1)->valuestring;
            la = strlen(a);
            lb = strlen(b);
        } else {
            rc = dsv4_error(DSV4_EFORMAT, "tokenizer: merge %d is neither 'a b' nor [a, b]", rank);
            break;
        }
        if (la + lb > buf_cap) {
            buf_cap = 2 * (la + lb) + 64;
            free(buf);
            buf = malloc(buf_cap);
            if (!buf) {
                rc = dsv4_error(DSV4_ENOMEM, "tokenizer: out of memory");
                break;
            }
        }
        size_t ba, bb;
        if (!spelling_to_bytes(char_byte, a, la, buf, &ba) ||
            !spelling_to_bytes(char_byte, b, lb, buf + ba, &bb)) {
            rc = dsv4_error(DSV4_EFORMAT,
                            "tokenizer: merge %d has a token outside the byte alphabet", rank);
            break;
        }
        int32_t ia = dsv4_tokenizer_vmap_get(tok, buf, ba);
        int32_t ib = dsv4_tokenizer_vmap_get(tok, buf + ba, bb);
        int32_t im = dsv4_tokenizer_vmap_get(tok, buf, ba + bb);
        if (ia < 0 || ib < 0 || im < 0) {
            rc = dsv4_error(DSV4_EFORMAT,
                            "tokenizer: merge %d (%.*s %.*s) uses a token not in vocab", rank,
                            (int)la, a, (int)lb, b);
            break;
        }
        mmap_put(&tok->mmap, ia, ib, rank, im);
        rank++;
    }
    free(buf);
    return rc;
}

static int load_model(struct dsv4_tokenizer *tok, const cJSON *model, const cJSON *added,
                      const int16_t *char_byte)
{
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    uint8_t *kind = NULL; /* load_vocab's, per id */
    size_t used;
    int rc = load_model_kind(tok, model);
    if (rc)
        return rc;
    if (!cJSON_IsObject(vocab) || !cJSON_IsArray(merges))
        return dsv4_error(DSV4_EFORMAT, "tokenizer: BPE model needs a vocab object and merges");
    if ((rc = alloc_tables(tok, vocab, added)))
        return rc;
    kind = calloc((size_t)tok->vocab_size, 1);
    if (!kind)
        return dsv4_error(DSV4_ENOMEM, "tokenizer: out of memory");
    if ((rc = load_vocab(tok, vocab, char_byte, kind, &used)) ||
        (rc = load_unk(tok, model, vocab)) || (rc = load_merges(tok, merges, char_byte)) ||
        (rc = load_added(tok, added, char_byte, kind, used)))
        goto fail;
    for (int32_t id = 0; id < tok->vocab_size; id++)
        if (tok->tok_len[id] != TOK_NONE)
            tok->max_token_bytes = DSV4_MAX(tok->max_token_bytes, tok->tok_len[id]);
fail:
    free(kind);
    return rc;
}

int dsv4_tokenizer_load_json(const char *json, size_t len, struct dsv4_tokenizer **out)
{
    *out = NULL;
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root)
        return dsv4_error(DSV4_EFORMAT, "tokenizer: not valid JSON (near byte %zu)",
                          (size_t)(cJSON_GetErrorPtr() ? cJSON_GetErrorPtr() - json : 0));
    int rc;
    struct dsv4_tokenizer *tok = calloc(1, sizeof(*tok));
    if (!tok) {
        rc = dsv4_error(DSV4_ENOMEM, "tokenizer: out of memory");
        goto fail;
    }
    pthread_mutex_init(&tok->cache_lock, NULL);
    int16_t *char_byte = tok->char_byte;
    memset(tok->char_byte, 0xff, sizeof(tok->char_byte));
    for (int b = 0; b < 256; b++)
        char_byte[dsv4_tokenizer_byte_char((uint8_t)b)] = (int16_t)b;

    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    if (!cJSON_IsObject(model)) {
        rc = dsv4_error(DSV4_EFORMAT, "tokenizer: no model object");
        goto fail;
    }
    if (added && !cJSON_IsArray(added) && !cJSON_IsNull(added)) {
        rc = dsv4_error(DSV4_EFORMAT, "tokenizer: added_tokens is not an array");
        goto fail;
    }
    if ((rc = load_model(tok, model, cJSON_IsArray(added) ? added : NULL, char_byte)))
        goto fail;
    if ((rc = load_normalizer(tok, cJSON_GetObjectItemCaseSensitive(root, "normalizer"))))
        goto fail;
    if ((rc = build_tries(tok)))
        goto fail;
    const cJSON *pre = cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer");
    if (!pre || cJSON_IsNull(pre)) {
        rc = dsv4_error(DSV4_ENOTSUP, "tokenizer: no pre_tokenizer (a byte-level one is required)");
        goto fail;
    }
    if ((rc = load_pretok(tok, pre)))
        goto fail;
    if (tok->n_pretok == 0 || !tok->pretok[tok->n_pretok - 1].byte_level) {
        rc = dsv4_error(DSV4_ENOTSUP, "tokenizer: pre_tokenizer must end with ByteLevel");
        goto fail;
    }
    if ((rc = check_decoder(cJSON_GetObjectItemCaseSensitive(root, "decoder"))))
        goto fail;
    tok->cache = calloc(TOK_CACHE_SLOTS, sizeof(*tok->cache));
    if (!tok->cache) {
        rc = dsv4_error(DSV4_ENOMEM, "tokenizer: out of memory for the cache");
        goto fail;
    }
    cJSON_Delete(root);
    *out = tok;
    return 0;
fail:
    cJSON_Delete(root);
    dsv4_tokenizer_free(tok);
    return rc;
}

int dsv4_tokenizer_load(const char *path, struct dsv4_tokenizer **out)
{
    *out = NULL;
    char *buf = NULL;
    size_t len = 0;
    int rc = dsv4_file_read(path, MAX_TOKENIZER_FILE, &buf, &len);
    if (rc)
        return dsv4_error_ctx(rc, "tokenizer");
    rc = dsv4_tokenizer_load_json(buf, len, out);
    if (rc)
        dsv4_error_ctx(rc, "%s", path);
    free(buf);
    return rc;
}

void dsv4_tokenizer_free(struct dsv4_tokenizer *tok)
{
    if (!tok)
        return;
    free(tok->tok_off);
    free(tok->tok_len);
    free(tok->tok_data);
    free(tok->is_special);
    free(tok->vmap.hash);
    free(tok->vmap.id);
    free(tok->mmap.key);
    free(tok->mmap.rank);
    free(tok->mmap.merged);
    for (size_t i = 0; tok->added && i < tok->n_added; i++)
        free(tok->added[i].content);
    free(tok->added);
    free(tok->trie_raw.nodes);
    free(tok->trie_norm.nodes);
    for (int i = 0; i < tok->n_norm; i++) {
        pcre2_code_free(tok->norm[i].re);
        free(tok->norm[i].text);
    }
    for (int i = 0; i < tok->n_pretok; i++)
        pcre2_code_free(tok->pretok[i].re);
    pthread_mutex_destroy(&tok->cache_lock);
    free(tok->cache);
    free(tok);
}

/* ------------------------------------------------------------ lookups */

int32_t dsv4_tokenizer_vocab_size(const struct dsv4_tokenizer *tok)
{
    return tok->vocab_size;
}

size_t dsv4_tokenizer_max_token_bytes(const struct dsv4_tokenizer *tok)
{
    return tok->max_token_bytes;
}

int32_t dsv4_tokenizer_token_id(const struct dsv4_tokenizer *tok, const char *token)
{
    size_t n = strlen(token);
    for (size_t i = 0; i < tok->n_added; i++)
        if (tok->added[i].len == n && !memcmp(tok->added[i].content, token, n))
            return tok->added[i].id;
    char small[256];
    char *buf = n <= sizeof(small) ? small : malloc(n);
    if (!buf)
        return -1;
    size_t blen;
    int32_t id = -1;
    if (spelling_to_bytes(tok->char_byte, token, n, buf, &blen))
        id = dsv4_tokenizer_vmap_get(tok, buf, blen);
    else
        id = dsv4_tokenizer_vmap_get(tok, token, n);
    if (buf != small)
        free(buf);
    return id;
}

const char *dsv4_tokenizer_token_bytes(const struct dsv4_tokenizer *tok, int32_t id, size_t *len,
                                       bool *special)
{
    if (id < 0 || id >= tok->vocab_size || tok->tok_len[id] == TOK_NONE)
        return NULL;
    *len = tok->tok_len[id];
    if (special)
        *special = tok->is_special[id];
    return tok->tok_data + tok->tok_off[id];
}

/* ------------------------------------------------------------ decoding */

static size_t put_fffd(char *o)
{
    o[0] = (char)0xef;
    o[1] = (char)0xbf;
    o[2] = (char)0xbd;
    return 3;
}

/* Lossy UTF-8 conversion, one byte at a time (Rust from_utf8_lossy
 * semantics): a valid prefix waits in d->pending; a byte that cannot
 * continue it turns the prefix into one U+FFFD and is then re-examined.
 * Writes at most 6 bytes into o: a U+FFFD for an abandoned prefix, then
 * the byte's own output (a U+FFFD, itself, or a completed sequence).  A
 * token of n bytes thus never needs more than 3 * n + 8 bytes. */
static size_t detok_byte(struct dsv4_detok *d, uint8_t b, char *o)
{
    size_t w = 0;
    if (d->npending > 0) {
        uint8_t lead = d->pending[0];
        uint8_t lo = 0x80, hi = 0xbf;
        if (d->npending == 1) {
            if (lead == 0xe0)
                lo = 0xa0;
            else if (lead == 0xed)
                hi = 0x9f;
            else if (lead == 0xf0)
                lo = 0x90;
            else if (lead == 0xf4)
                hi = 0x8f;
        }
        if (b >= lo && b <= hi) {
            d->pending[d->npending++] = b;
            if (d->npending == d->need) {
                memcpy(o, d->pending, (size_t)d->need);
                w = (size_t)d->need;
                d->npending = 0;
            }
            return w;
        }
        w += put_fffd(o);
        d->npending = 0;
    }
    if (b < 0x80)
        o[w++] = (char)b;
    else if (b >= 0xc2 && b <= 0xdf) {
        d->pending[0] = b;
        d->npending = 1;
        d->need = 2;
    } else if (b >= 0xe0 && b <= 0xef) {
        d->pending[0] = b;
        d->npending = 1;
        d->need = 3;
    } else if (b >= 0xf0 && b <= 0xf4) {
        d->pending[0] = b;
        d->npending = 1;
        d->need = 4;
    } else
        w += put_fffd(o + w);
    return w;
}

void dsv4_detok_init(struct dsv4_detok *d, const struct dsv4_tokenizer *tok, unsigned flags)
{
    memset(d, 0, sizeof(*d));
    d->tok = tok;
    d->flags = flags;
}

int dsv4_detok_feed(struct dsv4_detok *d, int32_t id, char *buf, size_t cap, size_t *n)
{
    *n = 0;
    size_t len;
    bool special;
    const char *s = dsv4_tokenizer_token_bytes(d->tok, id, &len, &special);
    if (!s)
        return dsv4_error(DSV4_ERANGE, "detokenize: id %d has no token", id);
    if (special && !(d->flags & DSV4_TOKENIZER_RENDER_SPECIAL))
        return 0;
    if (cap < 3 * len + 8)
        return dsv4_error(DSV4_ENOSPC, "detokenize: buffer of %zu bytes too small for %zu", cap,
                          3 * len + 8);
    size_t w = 0;
    for (size_t i = 0; i < len; i++)
        w += detok_byte(d, (uint8_t)s[i], buf + w);
    *n = w;
    return 0;
}

int dsv4_detok_flush(struct dsv4_detok *d, char *buf, size_t cap, size_t *n)
{
    *n = 0;
    if (d->npending == 0)
        return 0;
    if (cap < 3)
        return dsv4_error(DSV4_ENOSPC, "detokenize: flush needs 3 bytes");
    *n = put_fffd(buf);
    d->npending = 0;
    return 0;
}

int dsv4_tokenizer_decode(const struct dsv4_tokenizer *tok, const int32_t *ids, size_t n,
                          unsigned flags, char **text, size_t *text_len)
{
    *text = NULL;
    *text_len = 0;
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        size_t len;
        if (!dsv4_tokenizer_token_bytes(tok, ids[i], &len, NULL))
            return dsv4_error(DSV4_ERANGE, "decode: id %d at position %zu has no token", ids[i], i);
        total += len;
    }
    /* Worst case every byte becomes U+FFFD (3 bytes). */
    char *out = malloc(3 * total + 4);
    if (!out)
        return dsv4_error(DSV4_ENOMEM, "decode: out of memory for %zu bytes", 3 * total + 4);
    struct dsv4_detok d;
    dsv4_detok_init(&d, tok, flags);
    size_t w = 0;
    for (size_t i = 0; i < n; i++) {
        size_t len = 0;
        bool special = false;
        const char *s = dsv4_tokenizer_token_bytes(tok, ids[i], &len, &special);
        if (special && !(flags & DSV4_TOKENIZER_RENDER_SPECIAL))
            continue;
        for (size_t k = 0; k < len; k++)
            w += detok_byte(&d, (uint8_t)s[k], out + w);
    }
    if (d.npending)
        w += put_fffd(out + w);
    out[w] = 0;
    *text = out;
    *text_len = w;
    return 0;
}

/* ------------------------------------------------------------ id buffers */

void dsv4_tokens_free(struct dsv4_tokens *t)
{
    free(t->ids);
    t->ids = NULL;
    t->len = t->cap = 0;
}

int dsv4_tokens_reserve(struct dsv4_tokens *t, size_t extra)
{
    if (t->cap - t->len >= extra)
        return 0;
    size_t cap = t->cap ? t->cap : 64;
    while (cap - t->len < extra)
        cap *= 2;
    int32_t *ni = realloc(t->ids, cap * sizeof(*ni));
    if (!ni)
        return dsv4_error(DSV4_ENOMEM, "tokens: out of memory for %zu ids", cap);
    t->ids = ni;
    t->cap = cap;
    return 0;
}

int dsv4_tokens_push(struct dsv4_tokens *t, int32_t id)
{
    if (t->len == t->cap) {
        int rc = dsv4_tokens_reserve(t, 1);
        if (rc)
            return rc;
    }
    t->ids[t->len++] = id;
    return 0;
}
