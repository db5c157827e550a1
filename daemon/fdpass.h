/*
 * fdpass.h - passing file descriptors between the supervisor and its workers
 * over an AF_UNIX socket (SCM_RIGHTS): a worker hands the memfd image of its
 * weights (and, on a device backend, the descriptor of its device weights) to
 * the supervisor, which keeps them for the worker's successors.
 */
#ifndef DSV4D_FDPASS_H
#define DSV4D_FDPASS_H

#include <stdint.h>

/* What a passed descriptor is (bits 16-23 of its tag). */
enum { DSV4D_FD_IMAGE = 0, DSV4D_FD_DEVICE = 1 };

/* The tag of a worker's descriptor: its generation, kind (the host weights image, or the
 * device backend's shareable weights) and rank. */
static inline uint64_t dsv4d_fd_tag(uint64_t generation, int kind, int rank)
{
    return generation << 24 | (uint64_t)(kind & 0xff) << 16 | (uint64_t)(rank & 0xffff);
}

/* Sends fd with an 8-byte tag (the sender's rank, generation, ...). */
int dsv4d_fd_send(int sock, int fd, uint64_t tag);
/* Receives one fd and its tag (blocks; the socket may be made non-blocking by the caller).
 * DSV4_EIO on a closed socket or an error, DSV4_EFORMAT when no fd came. */
int dsv4d_fd_recv(int sock, int *fd, uint64_t *tag);

#endif
