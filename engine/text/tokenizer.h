/*
 * tokenizer.h - byte-level BPE tokenizer loaded from a Hugging Face
 * tokenizer.json (the DeepSeek-V3/V4 kind): added/special tokens, a
 * normalizer, a pre-tokenizer made of `Split` regexes (PCRE2, Unicode, JIT)
 * and `ByteLevel`, BPE merges by rank, and the ByteLevel decoder.
 *
 * Encoding equals Hugging Face `tokenizers` token for token on valid UTF-8
 * (tests/tokenizer/ checks a committed corpus).  The C API takes bytes, so
 * invalid UTF-8 needs a definition, which is this one: every byte that is
 * not part of a well-formed UTF-8 sequence (Unicode "maximal subpart" rule)
 * is a piece of its own and encodes to its single-byte token; the valid runs
 * between such bytes are pre-tokenized as if they were separate texts.  So
 * the ids always carry every input byte: concatenating the
 * dsv4_tokenizer_token_bytes of encode(x) gives x back for any bytes x, and
 * decode(encode(x)) == x for valid UTF-8 x (decode itself always returns
 * valid UTF-8, see below).
 *
 * Decoding concatenates the bytes of the tokens and converts them to UTF-8
 * the way Rust's String::from_utf8_lossy does (one U+FFFD per maximal
 * invalid subpart, as HF does).  The streaming decoder produces the same
 * text in pieces and never emits a broken UTF-8 sequence.
 *
 * Thread safety: a loaded tokenizer is immutable except for an internal
 * word cache guarded by a mutex that encode only try-locks (a busy cache is
 * bypassed, never waited for), so any number of threads may encode/decode
 * with one tokenizer.  Ownership: the caller owns what it passes in; results
 * go into caller-owned dsv4_tokens buffers or malloc'd strings as noted.
 */
#ifndef DSV4_TOKENIZER_H
#define DSV4_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

struct dsv4_tokenizer;

/* A growable array of token ids; zero-initialise, reuse across calls, free
 * with dsv4_tokens_free.  Encoders append to it. */
struct dsv4_tokens {
    int32_t *ids;
    size_t len;
    size_t cap;
};

void dsv4_tokens_free(struct dsv4_tokens *t);
/* Makes room for `extra` more ids; DSV4_ENOMEM on failure. */
int dsv4_tokens_reserve(struct dsv4_tokens *t, size_t extra);
int dsv4_tokens_push(struct dsv4_tokens *t, int32_t id);

/* Loads a tokenizer.json.  Unsupported kinds (non-BPE model, normalizers or
 * pre-tokenizers other than those listed above, dropout) are rejected with
 * DSV4_ENOTSUP and a message naming the field.  The file is read with
 * dsv4_file_read (fileio.h): DSV4_ENOENT when missing, DSV4_ERANGE past
 * 1 GiB, DSV4_EIO for a directory, FIFO or unreadable file. */
int dsv4_tokenizer_load(const char *path, struct dsv4_tokenizer **out);
/* Same from the JSON text in memory (len bytes, need not be terminated). */
int dsv4_tokenizer_load_json(const char *json, size_t len, struct dsv4_tokenizer **out);
void dsv4_tokenizer_free(struct dsv4_tokenizer *tok);

enum dsv4_tokenizer_flags {
    /* encode: special added tokens (special=true) are plain text, as HF's
     * encode_special_tokens; use it for untrusted user text. */
    DSV4_TOKENIZER_SPECIAL_AS_TEXT = 1u << 0,
    /* decode: render special added tokens (skipped by default, as HF's
     * skip_special_tokens=True). */
    DSV4_TOKENIZER_RENDER_SPECIAL = 1u << 1
};

/* Encodes `len` bytes of `text` (any bytes; see the header comment) and
 * appends the ids to `out`. */
int dsv4_tokenizer_encode(const struct dsv4_tokenizer *tok, const char *text, size_t len,
                          unsigned flags, struct dsv4_tokens *out);

/* Decodes `n` ids into a malloc'd NUL-terminated UTF-8 string (*text, its
 * length in *text_len, both owned by the caller).  Ids without a token give
 * DSV4_ERANGE. */
int dsv4_tokenizer_decode(const struct dsv4_tokenizer *tok, const int32_t *ids, size_t n,
                          unsigned flags, char **text, size_t *text_len);

/* One past the largest id; ids below it may still be unassigned holes. */
int32_t dsv4_tokenizer_vocab_size(const struct dsv4_tokenizer *tok);
/* The id of an exact token string (added tokens first, then the model's
 * vocabulary in its byte-level spelling), or -1. */
int32_t dsv4_tokenizer_token_id(const struct dsv4_tokenizer *tok, const char *token);
/* The raw bytes an id decodes to (*len of them; not terminated), or NULL
 * for an unassigned id.  `special` (may be NULL) tells whether it is a
 * special added token. */
const char *dsv4_tokenizer_token_bytes(const struct dsv4_tokenizer *tok, int32_t id, size_t *len,
                                       bool *special);

/* Streaming detokeniser: feed ids one at a time, get text that is always
 * valid UTF-8; the concatenation of all pieces plus the final flush equals
 * dsv4_tokenizer_decode of the whole sequence.  No allocation after init. */
struct dsv4_detok {
    const struct dsv4_tokenizer *tok;
    unsigned flags;
    uint8_t pending[4]; /* a valid but incomplete UTF-8 prefix */
    int npending;
    int need; /* total length of the pending sequence */
};

void dsv4_detok_init(struct dsv4_detok *d, const struct dsv4_tokenizer *tok, unsigned flags);
/* Writes the text completed by `id` into buf (cap bytes; 4 * token length +
 * 8 always suffices, DSV4_ENOSPC otherwise) and its length to *n. */
int dsv4_detok_feed(struct dsv4_detok *d, int32_t id, char *buf, size_t cap, size_t *n);
/* Ends the stream: an incomplete trailing sequence becomes U+FFFD (cap >= 3). */
int dsv4_detok_flush(struct dsv4_detok *d, char *buf, size_t cap, size_t *n);
/* Largest byte length of any token (for sizing feed buffers). */
size_t dsv4_tokenizer_max_token_bytes(const struct dsv4_tokenizer *tok);

#ifdef __cplusplus
}
#endif

#endif
