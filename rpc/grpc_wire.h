/*
 * grpc_wire.h - the gRPC layer between HTTP/2 and protobuf, as pure
 * functions (no I/O, no threads, no library) shared by the transport
 * (rpc/grpc.c), the methods (rpc/grpc_engine.c), the tests and the fuzz
 * target: status codes, the length-prefixed message framing, grpc-timeout,
 * the percent-encoding of grpc-message, bearer keys, and the UTF-8 rules of
 * proto3 strings.
 *
 * Framing (gRPC over HTTP/2): each message is a 1-byte compressed flag, a
 * 4-byte big-endian length, and that many bytes of protobuf.  Only flag 0
 * (identity) is accepted: this server advertises no compression.
 *
 * Functions that return a gRPC code (0 = OK) record a message for the
 * failure with dsv4_error(), readable with dsv4_errmsg().
 */
#ifndef DSV4_RPC_GRPC_WIRE_H
#define DSV4_RPC_GRPC_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The gRPC status codes (grpc/doc/statuscodes.md). */
enum dsv4_grpc_code {
    DSV4_GRPC_OK = 0,
    DSV4_GRPC_CANCELLED = 1,
    DSV4_GRPC_UNKNOWN = 2,
    DSV4_GRPC_INVALID_ARGUMENT = 3,
    DSV4_GRPC_DEADLINE_EXCEEDED = 4,
    DSV4_GRPC_NOT_FOUND = 5,
    DSV4_GRPC_ALREADY_EXISTS = 6,
    DSV4_GRPC_PERMISSION_DENIED = 7,
    DSV4_GRPC_RESOURCE_EXHAUSTED = 8,
    DSV4_GRPC_FAILED_PRECONDITION = 9,
    DSV4_GRPC_ABORTED = 10,
    DSV4_GRPC_OUT_OF_RANGE = 11,
    DSV4_GRPC_UNIMPLEMENTED = 12,
    DSV4_GRPC_INTERNAL = 13,
    DSV4_GRPC_UNAVAILABLE = 14,
    DSV4_GRPC_DATA_LOSS = 15,
    DSV4_GRPC_UNAUTHENTICATED = 16,
    DSV4_GRPC_CODE_COUNT
};

/* "OK", "CANCELLED", ... ("?" outside the range; never NULL). */
const char *dsv4_grpc_code_name(int code);

/* Bytes of the message prefix (flag + length). */
#define DSV4_GRPC_PREFIX 5

/* Writes the prefix of an uncompressed message of `len` bytes (len < 2^32). */
void dsv4_grpc_prefix(uint8_t out[DSV4_GRPC_PREFIX], uint32_t len);

/*
 * An incremental reader of the messages of one request body, fed the DATA
 * bytes as they come.  A message is buffered until complete, growing with
 * the bytes that arrive (a large length prefix reserves nothing up front),
 * never beyond `max` bytes.  Fields are private.
 */
struct dsv4_grpc_reader {
    size_t max;
    uint8_t hdr[DSV4_GRPC_PREFIX];
    size_t hdr_n;
    uint8_t *buf;
    size_t cap, len, got;
    bool in_body, failed;
};

/* Called with each complete message (valid during the call); returns 0 to go on or a gRPC
 * code (with dsv4_error) that ends the feed with that code. */
typedef int (*dsv4_grpc_msg_fn)(void *arg, const uint8_t *msg, size_t len);

void dsv4_grpc_reader_init(struct dsv4_grpc_reader *r, size_t max);
void dsv4_grpc_reader_free(struct dsv4_grpc_reader *r);

/*
 * Feeds n bytes.  Returns 0, or the code that ends the call: RESOURCE_EXHAUSTED (a length
 * beyond max, or out of memory), UNIMPLEMENTED (a compressed message), INTERNAL (a flag byte
 * other than 0/1), or the code `fn` returned.  After a failure every feed fails the same way.
 */
int dsv4_grpc_reader_feed(struct dsv4_grpc_reader *r, const uint8_t *p, size_t n,
                          dsv4_grpc_msg_fn fn, void *arg);

/* At the end of the body: 0, or INTERNAL when a message was cut short. */
int dsv4_grpc_reader_end(const struct dsv4_grpc_reader *r);

/*
 * Parses a grpc-timeout value: 1 to 8 ASCII digits and one unit of H, M, S, m
 * (milli), u (micro), n (nano).  Returns 0 and the timeout in *seconds, or
 * DSV4_EINVAL with a message.
 */
int dsv4_grpc_timeout_parse(const char *s, size_t n, double *seconds);

/*
 * Percent-encodes a grpc-message: bytes outside 0x20..0x7E, and '%', become
 * "%XX".  Writes at most outlen - 1 characters and a NUL to out (outlen >= 1),
 * never cutting an escape in half; returns the length written.
 */
size_t dsv4_grpc_percent_encode(const char *in, size_t n, char *out, size_t outlen);

/* The inverse, in place; malformed escapes are kept as they are.  Returns the new length. */
size_t dsv4_grpc_percent_decode(char *s, size_t n);

/*
 * The key of an "authorization: Bearer KEY" value (scheme case-insensitive, blanks
 * around the key trimmed): true with *key and *klen pointing into v, false when v is not
 * a bearer credential.
 */
bool dsv4_grpc_bearer(const char *v, size_t n, const char **key, size_t *klen);

/* true when s[0..n) is well-formed UTF-8 (no overlong forms, surrogates, or code points past
 * U+10FFFF) without NUL bytes: what a proto3 string may hold here. */
bool dsv4_grpc_utf8_ok(const char *s, size_t n);

/*
 * A NUL-terminated copy of s[0..n) in which every ill-formed UTF-8 sequence and every NUL
 * is replaced by U+FFFD (malloc'ed; NULL when out of memory), its length in *outlen.
 */
char *dsv4_grpc_utf8_sanitize(const char *s, size_t n, size_t *outlen);

#endif
