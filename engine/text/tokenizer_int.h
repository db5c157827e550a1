/*
 * tokenizer_int.h - the tokenizer's internal layout, shared by
 * engine/text/tokenizer.c (loading, decoding) and engine/text/tokenizer_encode.c
 * (added-token split, pre-tokenizer, BPE).  Not a public header.
 *
 * Invariants after a successful load: every id in [0, vocab_size) either
 * has bytes (tok_len[id] != TOK_NONE) or is a hole; byte_id[b] is the
 * model token of the single byte b (or -1 when the vocabulary lacks it);
 * every merge maps a pair of ids to a strictly ranked merged id.
 */
#ifndef DSV4_TOKENIZER_INT_H
#define DSV4_TOKENIZER_INT_H

#include "engine/text/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <pthread.h>

#define TOK_NONE        UINT32_MAX
#define TOK_MAX_PRETOK  16
#define TOK_MAX_NORM    16
#define TOK_CACHE_SLOTS (1u << 14)
#define TOK_CACHE_KEY   46
#define TOK_CACHE_IDS   16

struct tok_added {
    char *content;
    size_t len;
    int32_t id;
    bool special, lstrip, rstrip, single_word, normalized;
};

/* Byte trie over added-token contents, children as sibling lists. */
struct tok_trie_node {
    int32_t child;   /* first child or -1 */
    int32_t sibling; /* next sibling or -1 */
    int32_t added;   /* index into tok->added ending here, or -1 */
    uint8_t byte;
};

struct tok_trie {
    struct tok_trie_node *nodes;
    size_t count, cap;
    bool first[256]; /* bytes that start some token */
};

enum tok_split_behavior {
    TOK_SPLIT_ISOLATED,
    TOK_SPLIT_REMOVED,
    TOK_SPLIT_MERGED_PREV,
    TOK_SPLIT_MERGED_NEXT,
    TOK_SPLIT_CONTIGUOUS
};

struct tok_pretok {
    bool byte_level;       /* else a Split */
    pcre2_code *re;        /* Split regex, or the GPT-2 regex of ByteLevel(use_regex) */
    int behavior;          /* enum tok_split_behavior (Split) */
    bool invert;           /* Split */
    bool add_prefix_space; /* ByteLevel */
};

enum tok_norm_kind { TOK_NORM_PREPEND, TOK_NORM_REPLACE };

struct tok_norm {
    int kind;
    pcre2_code *re; /* Replace: the pattern (literal strings compiled as PCRE2_LITERAL) */
    char *text;     /* Prepend: prefix; Replace: replacement */
    size_t text_len;
};

/* Open-addressing hash of model-vocabulary bytes -> id. */
struct tok_vmap {
    uint64_t *hash;
    int32_t *id;
    size_t mask;
};

/* Open-addressing hash of merge pairs (a << 32 | b) -> rank, merged id. */
struct tok_mmap {
    uint64_t *key; /* UINT64_MAX = empty */
    int32_t *rank;
    int32_t *merged;
    size_t mask;
};

struct tok_cache_entry {
    uint64_t hash;
    uint8_t key_len; /* 0 = empty */
    uint8_t n_ids;
    char key[TOK_CACHE_KEY];
    int32_t ids[TOK_CACHE_IDS];
};

struct dsv4_tokenizer {
    int32_t vocab_size;
    uint32_t *tok_off, *tok_len; /* decode bytes of each id in tok_data */
    char *tok_data;
    uint8_t *is_special;
    size_t max_token_bytes;

    struct tok_vmap vmap;
    struct tok_mmap mmap;
    int32_t byte_id[256];
    int16_t char_byte[324]; /* ByteLevel character -> byte, -1 outside the alphabet */
    int32_t unk_id;         /* -1 if none */
    bool byte_fallback, fuse_unk, ignore_merges;

    struct tok_added *added;
    size_t n_added;
    struct tok_trie trie_raw;  /* normalized == false */
    struct tok_trie trie_norm; /* normalized == true */

    struct tok_norm norm[TOK_MAX_NORM];
    int n_norm;
    struct tok_pretok pretok[TOK_MAX_PRETOK];
    int n_pretok;

    pthread_mutex_t cache_lock;
    struct tok_cache_entry *cache;
};

uint64_t dsv4_tokenizer_hash(const void *p, size_t n);
int32_t dsv4_tokenizer_vmap_get(const struct dsv4_tokenizer *tok, const char *s, size_t n);
/* The byte -> printable code point map of ByteLevel (GPT-2's alphabet). */
uint32_t dsv4_tokenizer_byte_char(uint8_t b);
/* Length of the well-formed UTF-8 sequence at s (1..4), or 0 if the bytes
 * at s do not start one (maximal-subpart rule; n bytes available). */
size_t dsv4_tokenizer_utf8_len(const uint8_t *s, size_t n);

/* Applies the normalizers to well-formed UTF-8: *out is s itself when
 * nothing changes it, else the malloc'd *owned (caller frees *owned). */
int dsv4_tokenizer_normalize(const struct dsv4_tokenizer *tok, const char *s, size_t n, char **out,
                             size_t *out_len, char **owned);

#endif
