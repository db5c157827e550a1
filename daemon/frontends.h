/*
 * frontends.h - the front ends dsv4d serves its supervisor through: gRPC
 * (rpc/grpc.h) and HTTP with the OpenAI API and metrics (rpc/http.h), each
 * on its configured HOST:PORT or on the socket systemd passed.
 */
#ifndef DSV4D_FRONTENDS_H
#define DSV4D_FRONTENDS_H

#include "daemon/config.h"
#include "rpc/service.h"

struct dsv4d_frontends;

struct dsv4_metrics;

/* grpc_fd / http_fd: listening sockets from socket activation, or -1 ("off" in the config and
 * no fd: that front end is not started).  m: the registry /metrics serves (borrowed). */
int dsv4d_frontends_start(const struct dsv4d_config *c, struct dsv4_svc *svc,
                          struct dsv4_metrics *m, int grpc_fd, int http_fd,
                          struct dsv4d_frontends **out);
void dsv4d_frontends_stop(struct dsv4d_frontends *f);

#endif
