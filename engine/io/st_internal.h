/*
 * st_internal.h - helpers private to the safetensors module (safetensors.c,
 * st_writer.c): a name hash table and a UTF-8 check.  Not a public API.
 *
 * The hash is open addressing with linear probing over FNV-1a, at most half
 * full, holding indices into a caller-owned array of records whose first
 * member is the name pointer (so one table type serves tensors of a file,
 * tensors of a checkpoint and declarations of a writer).
 */
#ifndef DSV4_ST_INTERNAL_H
#define DSV4_ST_INTERNAL_H

#include "base/dsv4.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct name_hash {
    uint32_t *slot; /* index + 1, 0 = empty */
    size_t mask;
};

static inline uint64_t st_fnv1a(const char *s)
{
    uint64_t h = 1469598103934665603ull;

    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

/* Allocates room for n names; 0 or DSV4_ENOMEM. */
static inline int hash_init(struct name_hash *h, size_t n)
{
    size_t cap = 16;

    while (cap < 2 * n + 1)
        cap <<= 1;
    free(h->slot);
    h->slot = calloc(cap, sizeof(*h->slot));
    h->mask = cap - 1;
    return h->slot ? 0 : DSV4_ENOMEM;
}

/* Name of record i of an array of `stride`-byte records starting at `base`. */
static inline const char *hash_name(const void *base, size_t stride, size_t i)
{
    return *(const char *const *)((const char *)base + stride * i);
}

/* Inserts record i; returns the index of a record with an equal name already
 * present (nothing inserted), or -1. */
static inline long hash_insert(struct name_hash *h, const void *base, size_t stride, uint32_t i)
{
    const char *name = hash_name(base, stride, i);
    size_t p = (size_t)st_fnv1a(name) & h->mask;

    for (;;) {
        uint32_t s = h->slot[p];
        if (!s) {
            h->slot[p] = i + 1;
            return -1;
        }
        if (!strcmp(hash_name(base, stride, s - 1), name))
            return (long)(s - 1);
        p = (p + 1) & h->mask;
    }
}

/* Index of the record named `name`, or -1. */
static inline long hash_find(const struct name_hash *h, const void *base, size_t stride,
                             const char *name)
{
    size_t p;

    if (!h->slot)
        return -1;
    p = (size_t)st_fnv1a(name) & h->mask;
    for (;;) {
        uint32_t s = h->slot[p];
        if (!s)
            return -1;
        if (!strcmp(hash_name(base, stride, s - 1), name))
            return (long)(s - 1);
        p = (p + 1) & h->mask;
    }
}

/* Length (1-4) of the UTF-8 sequence starting at s (avail > 0 bytes
 * readable), or 0 when it is invalid: overlongs, surrogates and code points
 * past U+10FFFF included. */
static inline size_t st_utf8_seq(const uint8_t *s, size_t avail)
{
    uint8_t c = s[0];
    size_t k;
    uint32_t cp, min;

    if (c < 0x80)
        return 1;
    if ((c & 0xe0) == 0xc0)
        k = 1, cp = c & 0x1f, min = 0x80;
    else if ((c & 0xf0) == 0xe0)
        k = 2, cp = c & 0x0f, min = 0x800;
    else if ((c & 0xf8) == 0xf0)
        k = 3, cp = c & 0x07, min = 0x10000;
    else
        return 0;
    if (avail <= k)
        return 0;
    for (size_t j = 1; j <= k; j++) {
        if ((s[j] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[j] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return k + 1;
}

/* Offset of the first byte that breaks UTF-8, or len when s is valid. */
static inline size_t st_utf8_check(const uint8_t *s, size_t len)
{
    size_t i = 0;

    while (i < len) {
        size_t k = st_utf8_seq(s + i, len - i);
        if (!k)
            return i;
        i += k;
    }
    return len;
}

#endif
