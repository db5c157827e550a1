/*
 * fuzz_chat.c - fuzz target of the chat format: the completion parser (any
 * text, both modes) and the prompt encoder (any JSON).  The parser must
 * give the same reasoning, content and tool calls whether the text arrives
 * whole or in two pieces split anywhere; the encoder must render or fail
 * with a message, never crash.
 */
#include "engine/text/chat.h"
#include "base/dsv4.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int run(const char *s, size_t n, int mode, size_t split, struct dsv4_chat_parser **out)
{
    int rc = dsv4_chat_parser_new(mode, out);
    if (rc)
        return rc;
    if ((rc = dsv4_chat_parser_feed(*out, s, split)))
        return rc;
    if ((rc = dsv4_chat_parser_feed(*out, s + split, n - split)))
        return rc;
    return dsv4_chat_parser_finish(*out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    for (int mode = 0; mode < 2; mode++) {
        struct dsv4_chat_parser *a = NULL, *b = NULL;
        size_t split = size ? data[0] % (size + 1) : 0;
        int ra = run(s, size, mode, 0, &a);
        int rb = run(s, size, mode, split, &b);
        DSV4_ASSERT((ra == 0) == (rb == 0));
        if (ra == 0) {
            size_t la, lb;
            const char *x = dsv4_chat_parser_reasoning(a, &la),
                       *y = dsv4_chat_parser_reasoning(b, &lb);
            DSV4_ASSERT(la == lb && !memcmp(x, y, la));
            x = dsv4_chat_parser_content(a, &la);
            y = dsv4_chat_parser_content(b, &lb);
            DSV4_ASSERT(la == lb && !memcmp(x, y, la));
            DSV4_ASSERT(dsv4_chat_parser_n_calls(a) == dsv4_chat_parser_n_calls(b));
            for (size_t i = 0; i < dsv4_chat_parser_n_calls(a); i++) {
                const char *na, *aa, *nb, *ab;
                dsv4_chat_parser_call(a, i, &na, &aa);
                dsv4_chat_parser_call(b, i, &nb, &ab);
                DSV4_ASSERT(!strcmp(na, nb) && !strcmp(aa, ab));
            }
            DSV4_ASSERT(dsv4_chat_parser_done(a) == dsv4_chat_parser_done(b));
        }
        dsv4_chat_parser_free(a);
        dsv4_chat_parser_free(b);
        struct dsv4_chat_opts o = {mode, size ? data[size - 1] % 3 : 0, size > 1 && (data[1] & 1),
                                   false};
        char *text;
        size_t tl;
        if (dsv4_chat_encode_json(s, size, &o, &text, &tl) == 0) {
            DSV4_ASSERT(strlen(text) <= tl);
            free(text);
        }
    }
    return 0;
}
