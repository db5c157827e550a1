/*
 * grpc_test_pb.h - a tiny protobuf writer for the gRPC tests' hand-made
 * messages (valid, odd and malformed ones that no generated encoder would
 * produce).  Header-only: static functions, one fixed buffer per message.
 */
#ifndef DSV4_TESTS_GRPC_TEST_PB_H
#define DSV4_TESTS_GRPC_TEST_PB_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

struct pb {
    uint8_t b[8192];
    size_t n;
};

static inline void pb_varint(struct pb *p, uint64_t v)
{
    do {
        uint8_t byte = v & 0x7f;
        v >>= 7;
        p->b[p->n++] = byte | (v ? 0x80 : 0);
    } while (v);
}

static inline void pb_key(struct pb *p, uint32_t field, int wt)
{
    pb_varint(p, (uint64_t)field << 3 | (uint64_t)wt);
}

static inline void pb_bytes(struct pb *p, uint32_t field, const void *s, size_t n)
{
    pb_key(p, field, 2);
    pb_varint(p, n);
    memcpy(p->b + p->n, s, n);
    p->n += n;
}

static inline void pb_str(struct pb *p, uint32_t field, const char *s)
{
    pb_bytes(p, field, s, strlen(s));
}

static inline void pb_uint(struct pb *p, uint32_t field, uint64_t v)
{
    pb_key(p, field, 0);
    pb_varint(p, v);
}

static inline void pb_float(struct pb *p, uint32_t field, float f)
{
    pb_key(p, field, 5);
    memcpy(p->b + p->n, &f, 4);
    p->n += 4;
}

static inline void pb_msg(struct pb *p, uint32_t field, const struct pb *m)
{
    pb_bytes(p, field, m->b, m->n);
}

#endif
