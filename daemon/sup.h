/*
 * sup.h - the dsv4d supervisor (DESIGN.md §1, §4): the worker processes,
 * their weights images, the control plane, the scheduler, readiness, and the
 * service the front ends serve (rpc/service.h).  It creates no CUDA context
 * and never touches weights: it keeps the workers' memfd images as file
 * descriptors and hands them to restarted workers.
 *
 * One thread (the loop) owns the workers and the scheduler.  Failure
 * handling: a worker that exits or stops answering (no heartbeat within
 * heartbeat_timeout) takes the whole rank group down (its collective would
 * hang the others, and tensor-parallel state is useless without every rank's
 * share): the supervisor goes degraded, kills the group, starts a fresh one
 * from the images after a back-off (0.1 s doubling, at most 5 s), warms it
 * up and comes back ready; running requests are re-prefilled from their
 * history and continue.  After more than max_restarts crashes within
 * restart_window it stays degraded, refuses work, keeps answering probes
 * and says why.
 *
 * Detection bounds: a dead worker within one loop tick (50 ms); a hung one
 * within heartbeat_timeout (+ one tick).
 */
#ifndef DSV4D_SUP_H
#define DSV4D_SUP_H

#include "daemon/config.h"
#include "rpc/service.h"

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

struct dsv4d_sup;

struct dsv4_metrics;

/* Starts the supervisor (loop thread, workers).  c is copied; the model's config.json and
 * tokenizer.json are read here.  m (may be NULL, borrowed) receives the engine's series:
 * preemptions, MTP drafts and acceptances per position, worker restarts. */
int dsv4d_sup_start(const struct dsv4d_config *c, struct dsv4_metrics *m, struct dsv4d_sup **out);
/* The service for the front ends (valid until dsv4d_sup_free). */
struct dsv4_svc *dsv4d_sup_svc(struct dsv4d_sup *s);
/* SIGTERM: readiness goes draining at once, new requests are refused, running ones get
 * drain_timeout seconds, then the workers stop and the state becomes stopped. */
void dsv4d_sup_drain(struct dsv4d_sup *s);
/* true once a drain began, by dsv4d_sup_drain or by a client (the service's drain op). */
bool dsv4d_sup_drain_requested(struct dsv4d_sup *s);
/* SIGHUP: the reloadable keys of c (API keys, log level, queue, timeouts). */
void dsv4d_sup_reload(struct dsv4d_sup *s, const struct dsv4d_config *c, char *changed, size_t len);
/* The readiness state and its reason. */
enum dsv4_svc_state dsv4d_sup_state(struct dsv4d_sup *s, char *why, size_t len);
/* A counter the loop advances every tick (the watchdog pings only while it moves). */
uint64_t dsv4d_sup_ticks(struct dsv4d_sup *s);
/* Load progress for systemd's STATUS= (a line; "" when not loading). */
void dsv4d_sup_progress(struct dsv4d_sup *s, char *line, size_t len);
/* Worker pids (tests, diagnostics): up to n, 0 for a rank not running. */
int dsv4d_sup_worker_pids(struct dsv4d_sup *s, pid_t *pids, int n);
/* Worker restarts so far. */
uint64_t dsv4d_sup_restarts(struct dsv4d_sup *s);
/* The scheduler's counters (running, queued, preemptions, ...). */
struct dsv4d_sched_counts;
void dsv4d_sup_counts(struct dsv4d_sup *s, struct dsv4d_sched_counts *c);
/* The last load of a rank: seconds, and whether it mapped the supervisor's weights image. */
int dsv4d_sup_rank_info(struct dsv4d_sup *s, int rank, double *load_seconds, bool *from_image);
/* Where the last load of a rank put a device backend's weights: DSV4D_DEVW_* (daemon/wire.h). */
int dsv4d_sup_rank_device_weights(struct dsv4d_sup *s, int rank);
/* Stops everything (workers killed if still running) and frees. */
void dsv4d_sup_free(struct dsv4d_sup *s);

#endif
