/*
 * comm.c - the backend-independent face of comm.h: accessors and dispatch
 * through the handle's ops table.
 *
 * Argument checking is deliberately left to the backends: a collective must
 * still be entered by a rank whose own arguments are bad, so that the other
 * ranks learn about it instead of waiting forever (see comm.h).  Only a
 * missing handle is refused here, since then there is no group to tell.
 */
#include "engine/model/comm_int.h"
#include "base/dsv4.h"

#define NEED_HANDLE(c)                                                             \
    do {                                                                           \
        if (!(c) || !(c)->ops)                                                     \
            return dsv4_error(DSV4_EINVAL, "comm: %s without a handle", __func__); \
    } while (0)

int dsv4_comm_rank(const struct dsv4_comm *c)
{
    return c ? c->rank : -1;
}

int dsv4_comm_size(const struct dsv4_comm *c)
{
    return c ? c->size : 0;
}

const char *dsv4_comm_backend(const struct dsv4_comm *c)
{
    return c && c->ops ? c->ops->name : "none";
}

int dsv4_comm_barrier(struct dsv4_comm *c)
{
    NEED_HANDLE(c);
    return c->ops->barrier(c);
}

int dsv4_comm_all_reduce_sum_f32(struct dsv4_comm *c, float *buf, size_t n)
{
    NEED_HANDLE(c);
    return c->ops->all_reduce_sum_f32(c, buf, n);
}

int dsv4_comm_all_gather(struct dsv4_comm *c, const void *send, void *recv, size_t bytes)
{
    NEED_HANDLE(c);
    return c->ops->all_gather(c, send, recv, bytes);
}

int dsv4_comm_all_to_all(struct dsv4_comm *c, const void *send, void *recv, size_t bytes)
{
    NEED_HANDLE(c);
    return c->ops->all_to_all(c, send, recv, bytes);
}

int dsv4_comm_all_to_allv(struct dsv4_comm *c, const void *send, const size_t *send_bytes,
                          const size_t *send_offs, void *recv, const size_t *recv_bytes,
                          const size_t *recv_offs)
{
    NEED_HANDLE(c);
    return c->ops->all_to_allv(c, send, send_bytes, send_offs, recv, recv_bytes, recv_offs);
}

int dsv4_comm_broadcast(struct dsv4_comm *c, void *buf, size_t bytes, int root)
{
    NEED_HANDLE(c);
    return c->ops->broadcast(c, buf, bytes, root);
}

int dsv4_comm_drain(struct dsv4_comm *c)
{
    NEED_HANDLE(c);
    return c->ops->drain ? c->ops->drain(c) : 0;
}

void dsv4_comm_free(struct dsv4_comm *c)
{
    if (c && c->ops)
        c->ops->free(c);
}
