/*
 * openai_int.h - what openai.c (requests) and openai_resp.c (responses)
 * share and nobody else uses.
 */
#ifndef DSV4_RPC_OPENAI_INT_H
#define DSV4_RPC_OPENAI_INT_H

#include <stddef.h>

/* A malloc'ed, NUL-terminated copy of s[0..n) that is valid UTF-8: each byte of an
 * invalid sequence becomes U+FFFD and NUL bytes are dropped (cJSON strings end at
 * NUL).  NULL when out of memory. */
char *dsv4_openai_utf8_clean(const char *s, size_t n);

#endif
