/*
 * fake_svc.h - a deterministic stand-in for the engine behind rpc/service.h,
 * for the front ends' tests: no model, predictable output, real threading.
 *
 * Tokenizer: one token per byte, id = byte value + 3 (ids 0..2 are special:
 * 0 bos "<s>", 1 eos "</s>", 2 pad); detokenize maps back (special ids to
 * their names unless skip_special).
 * Generation: output token j of a request is the byte "abcdefghij "[j % 11]
 * (id = byte + 3), so the text is "abcdefghij abcdefghij ..."; a prompt
 * containing "EOS" ends after 5 tokens with eos (id 1, text "" and finish
 * STOP); stop strings and stop ids apply as the real service applies them
 * (stop strings excluded from the text, ids included).  One token is emitted
 * every `delay_ms` milliseconds by the service's thread (so cancellation
 * mid-stream and deadlines are observable).  With sample.logprobs, each token
 * gets logprob -0.5 and top logprobs (the token, then id 3..).
 * Limits: max_context 4096 (prompt + max_tokens beyond it: DSV4_ERANGE),
 * queue of 64 running requests (beyond: DSV4_ENOSPC, retryable).
 * State: READY after start; fake_svc_set_state changes it (DRAINING refuses
 * new requests with DSV4_ENOTSUP; the drain op sets it, with the reason
 * "drain requested").  API keys: fake_svc_set_keys.
 */
#ifndef DSV4_TESTS_FAKE_SVC_H
#define DSV4_TESTS_FAKE_SVC_H

#include "rpc/service.h"

struct dsv4_svc *fake_svc_create(int delay_ms);
void fake_svc_destroy(struct dsv4_svc *s);
void fake_svc_set_state(struct dsv4_svc *s, enum dsv4_svc_state st, const char *why);
/* Comma-separated keys ("" or NULL: no keys, everything authorized). */
void fake_svc_set_keys(struct dsv4_svc *s, const char *keys);
/* Requests currently running (tests check that cancellation frees them). */
int fake_svc_running(struct dsv4_svc *s);
/* Requests submitted so far. */
uint64_t fake_svc_submitted(struct dsv4_svc *s);

#endif
