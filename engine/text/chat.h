/*
 * chat.h - the DeepSeek-V4 chat format (spec/model.md section 6.2): turning
 * an OpenAI-style messages array into the prompt text, and parsing the
 * model's completion text back into reasoning, content and tool calls.
 *
 * Encoding reproduces the official encoder (encoding_dsv4.py) byte for byte
 * on its four test vectors: BOS once, system/developer/user/assistant/
 * latest_reminder turns, `tool` messages merged into user turns as
 * <tool_result> blocks (ordered as the assistant's tool_calls), thinking
 * and chat modes, dropping of old reasoning (off when any message carries
 * tools), the "max" reasoning-effort preamble, tool definitions and DSML
 * tool calls, quick-instruction `task` tokens, `wo_eos`.  JSON values are
 * rendered as Python's json.dumps(ensure_ascii=False) does, with one
 * documented difference: cJSON keeps numbers as doubles, so an integral
 * number written "2.0" renders as "2" (Python would keep "2.0"), and
 * integers beyond 2^53 lose precision.  Message content may also be a list
 * of OpenAI content parts: their text is joined with "\n" ("\n\n" for
 * tool results).  The prompt is text with special tokens spelled out:
 * tokenize it with special tokens parsed (dsv4_tokenizer_encode flags 0).
 *
 * Parsing is incremental: feed completion text in any pieces (down to one
 * byte); reasoning and content only ever grow, text that might be the start
 * of a marker ("</thi", "\n\n<｜DSML｜tool_c") is held back until resolved,
 * a tool call appears once its invoke element is closed.  The result of
 * feeding a text in pieces equals feeding it whole, and the work is linear
 * in the text however small the pieces.  A streaming server remembers the
 * lengths it has sent and, after each feed, sends the new tails of
 * reasoning and content and any new tool calls.
 */
#ifndef DSV4_CHAT_H
#define DSV4_CHAT_H

#include <stddef.h>
#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

struct cJSON;

enum dsv4_chat_mode {
    DSV4_CHAT_MODE_CHAT = 0,    /* `</think>` right after <｜Assistant｜> */
    DSV4_CHAT_MODE_THINKING = 1 /* `<think>` after the last user turn */
};

enum dsv4_chat_effort {
    DSV4_CHAT_EFFORT_NONE = 0,
    DSV4_CHAT_EFFORT_HIGH = 1, /* renders as NONE */
    DSV4_CHAT_EFFORT_MAX = 2   /* fixed preamble after BOS (thinking mode only) */
};

struct dsv4_chat_opts {
    int mode;           /* enum dsv4_chat_mode */
    int effort;         /* enum dsv4_chat_effort */
    bool keep_thinking; /* never drop reasoning of earlier turns */
    bool no_bos;        /* leave out <｜begin▁of▁sentence｜> */
};

/* Renders `messages` (a cJSON array of message objects; not modified).
 * `tools` (may be NULL) is attached to the first message, as the official
 * test 1 does.  On success *text is a malloc'd NUL-terminated string owned
 * by the caller, *len its length.  Malformed messages give DSV4_EINVAL with
 * the offending path in the message. */
int dsv4_chat_encode(const struct cJSON *messages, const struct cJSON *tools,
                     const struct dsv4_chat_opts *opts, char **text, size_t *len);

/* Same from JSON text: an array of messages, or an object
 * {"messages": [...], "tools": [...]}. */
int dsv4_chat_encode_json(const char *json, size_t json_len, const struct dsv4_chat_opts *opts,
                          char **text, size_t *len);

/* ---------------------------------------------------------------- parsing */

struct dsv4_chat_parser;

int dsv4_chat_parser_new(int mode, struct dsv4_chat_parser **out);
void dsv4_chat_parser_free(struct dsv4_chat_parser *p);

/* Consumes len bytes of completion text.  DSV4_EFORMAT when the text breaks
 * the DSML grammar (the parser then refuses further input). */
int dsv4_chat_parser_feed(struct dsv4_chat_parser *p, const char *text, size_t len);

/* End of the completion: held-back text is released; an unfinished tool
 * call is DSV4_EFORMAT. */
int dsv4_chat_parser_finish(struct dsv4_chat_parser *p);

/* Views of the parse so far (valid until the next feed/finish/free; the
 * strings are NUL-terminated). */
const char *dsv4_chat_parser_reasoning(const struct dsv4_chat_parser *p, size_t *len);
const char *dsv4_chat_parser_content(const struct dsv4_chat_parser *p, size_t *len);
size_t dsv4_chat_parser_n_calls(const struct dsv4_chat_parser *p);
/* Tool call i: its name and its arguments as a JSON object text, rebuilt as
 * the official parser does ({"k": "string value", "n": 3}). */
void dsv4_chat_parser_call(const struct dsv4_chat_parser *p, size_t i, const char **name,
                           const char **arguments);
/* True once <｜end▁of▁sentence｜> was seen. */
bool dsv4_chat_parser_done(const struct dsv4_chat_parser *p);

/* Convenience: parses a whole completion into a cJSON object
 * {"role": "assistant", "reasoning_content", "content", "tool_calls": [
 * {"type": "function", "function": {"name", "arguments"}}]} (reasoning_content
 * only in thinking mode), owned by the caller (cJSON_Delete). */
int dsv4_chat_parse(const char *text, size_t len, int mode, struct cJSON **message);

#ifdef __cplusplus
}
#endif

#endif
