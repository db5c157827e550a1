/*
 * strbuf.h - a growable, always NUL-terminated string builder and the JSON
 * pieces the writers share: a quoted string with escapes, a number printed
 * as Python prints it, and a cJSON tree laid out like Python's
 * json.dump(indent=2).  Used for config.json, the safetensors header and the
 * checkpoint index, whose bytes tests compare against Python's.
 *
 * Invariants: after any call `p` is NULL (nothing appended yet) or holds
 * `len` bytes plus a NUL.  An allocation failure sets `oom`; later calls do
 * nothing, so a caller appends freely and checks `oom` once at the end.
 * Not for per-token paths (it allocates).
 */
#ifndef DSV4_STRBUF_H
#define DSV4_STRBUF_H

#include <stdbool.h>
#include <stddef.h>

#include <cjson/cJSON.h>

struct dsv4_strbuf {
    char *p; /* malloc'ed text, owned; the caller may take it and free() it */
    size_t len, cap;
    bool oom;
};

/* Empties b (no allocation). */
void dsv4_strbuf_init(struct dsv4_strbuf *b);
/* Frees the text and empties b. */
void dsv4_strbuf_free(struct dsv4_strbuf *b);
/* Appends n bytes of s. */
void dsv4_strbuf_put(struct dsv4_strbuf *b, const char *s, size_t n);
/* Appends the NUL-terminated s. */
void dsv4_strbuf_str(struct dsv4_strbuf *b, const char *s);
/* Appends printf-formatted text. */
void dsv4_strbuf_fmt(struct dsv4_strbuf *b, const char *fmt, ...)
        __attribute__((format(printf, 2, 3)));

/*
 * Appends s (UTF-8) as a JSON string the way Python's json.dumps escapes it:
 * '"' and '\\' backslashed, \b \f \n \r \t by name, other bytes below 0x20
 * as \u00xx.  `ascii` (ensure_ascii=True) also escapes DEL and every non-ASCII
 * code point as \uXXXX (a surrogate pair above U+FFFF); without it those
 * bytes pass through (as serde_json / ensure_ascii=False write them).  A
 * malformed UTF-8 sequence under `ascii` escapes its lead byte as \u00xx and
 * goes on with the next byte (never reads past the NUL).
 */
void dsv4_strbuf_json_str(struct dsv4_strbuf *b, const char *s, bool ascii);

/*
 * Appends v as Python's json.dumps writes a float (repr): the shortest
 * decimal that reads back as v, in exponent form below 1e-4 and from 1e16
 * ("1e-06", "1e+16"), otherwise positional with at least one decimal
 * ("10.0"); NaN, Infinity, -Infinity for the non-finite.  An integral v with
 * |v| < int_below is written as an int (no ".0"): cJSON keeps no int/float
 * distinction, so callers pick the range in which their integers live
 * (config.json: 1e15; chat: 2^53; 0: always a float).
 */
void dsv4_strbuf_json_num(struct dsv4_strbuf *b, double v, double int_below);
/* The same into buf (size >= 32 always suffices). */
void dsv4_strbuf_format_num(char *buf, size_t size, double v, double int_below);

/*
 * Appends the cJSON tree j as json.dump(j, indent=2) lays it out: one member
 * or element per line, 2 spaces per level starting from `depth`, ": " after
 * keys, "{}"/"[]" when empty, no trailing newline.  Numbers go through
 * dsv4_strbuf_json_num(int_below 1e15) (cJSON keeps no int/float distinction),
 * strings through dsv4_strbuf_json_str(ascii=false).
 */
void dsv4_strbuf_json_tree(struct dsv4_strbuf *b, const cJSON *j, int depth);

#endif
