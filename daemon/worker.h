/*
 * worker.h - the worker process of dsv4d (daemon/worker.c): `dsv4d --worker`.
 */
#ifndef DSV4D_WORKER_H
#define DSV4D_WORKER_H

/* Milliseconds between a worker's heartbeats (the supervisor's hang detection counts on
 * them: heartbeat_timeout must be several of these). */
#define DSV4D_HEARTBEAT_MS 200

/* The worker's main: argv as the supervisor built it; returns the exit status. */
int dsv4d_worker_main(int argc, char **argv);

#endif
