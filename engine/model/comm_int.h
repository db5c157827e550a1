/*
 * comm_int.h - the backend side of the communicator (private to
 * engine/model/comm*.c): the op table a backend implements and the handle
 * header it embeds.  Callers see struct dsv4_comm as an opaque handle
 * (comm.h).
 */
#ifndef DSV4_COMM_INT_H
#define DSV4_COMM_INT_H

#include "engine/model/comm.h"

struct dsv4_comm_ops {
    const char *name;
    int (*barrier)(struct dsv4_comm *c);
    int (*all_reduce_sum_f32)(struct dsv4_comm *c, float *buf, size_t n);
    int (*all_gather)(struct dsv4_comm *c, const void *send, void *recv, size_t bytes);
    int (*all_to_all)(struct dsv4_comm *c, const void *send, void *recv, size_t bytes);
    int (*all_to_allv)(struct dsv4_comm *c, const void *send, const size_t *send_bytes,
                       const size_t *send_offs, void *recv, const size_t *recv_bytes,
                       const size_t *recv_offs);
    int (*broadcast)(struct dsv4_comm *c, void *buf, size_t bytes, int root);
    /* optional: waits, bounded, for collectives queued on a device stream (NULL: the
     * collectives above return complete) */
    int (*drain)(struct dsv4_comm *c);
    void (*free)(struct dsv4_comm *c);
};

/* Backends embed this as the first member of their handle. */
struct dsv4_comm {
    const struct dsv4_comm_ops *ops;
    int rank;
    int size;
};

#endif
