/*
 * fdpass.h - passing file descriptors between the supervisor and its workers
 * over an AF_UNIX socket (SCM_RIGHTS): a worker hands the memfd image of its
 * weights to the supervisor, which keeps it for the worker's successors.
 */
#ifndef DSV4D_FDPASS_H
#define DSV4D_FDPASS_H

#include <stdint.h>

/* Sends fd with an 8-byte tag (the sender's rank, generation, ...). */
int dsv4d_fd_send(int sock, int fd, uint64_t tag);
/* Receives one fd and its tag (blocks; the socket may be made non-blocking by the caller).
 * DSV4_EIO on a closed socket or an error, DSV4_EFORMAT when no fd came. */
int dsv4d_fd_recv(int sock, int *fd, uint64_t *tag);

#endif
