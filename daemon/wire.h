/*
 * wire.h - the supervisor <-> worker messages (proto/worker.proto) as plain
 * structs, and their protobuf encoding (protobuf-c is confined to wire.c).
 *
 * A decoded message owns its storage: a plan's entries point into it (token,
 * draft and stop-id arrays), valid until dsv4d_msg_free().  Encoders return
 * a malloc'ed buffer.  Decoding untrusted bytes never crashes: a malformed
 * message is DSV4_EFORMAT with a message.
 */
#ifndef DSV4D_WIRE_H
#define DSV4D_WIRE_H

#include "engine/model/step.h"

#include <stddef.h>
#include <stdint.h>

/* Bumped whenever a message changes meaning; a worker of another version is refused. */
#define DSV4D_PROTOCOL_VERSION 1u

enum dsv4d_msg_kind {
    DSV4D_MSG_NONE = 0,
    DSV4D_MSG_HELLO,
    DSV4D_MSG_PROGRESS,
    DSV4D_MSG_READY,
    DSV4D_MSG_PLAN,
    DSV4D_MSG_RESULT,
    DSV4D_MSG_HEARTBEAT,
    DSV4D_MSG_SHUTDOWN
};

struct dsv4d_hello {
    uint32_t version;
    int rank, nranks, pid;
    uint64_t generation;
};

struct dsv4d_progress {
    char phase[16];
    uint64_t bytes_done, bytes_total;
    uint32_t shards_done, shards_total;
};

struct dsv4d_ready {
    uint64_t total_blocks, state_bytes, image_bytes;
    int block_tokens, max_seqs, vocab_size, mtp_depth;
    int64_t max_context;
    double load_seconds;
    bool from_image;
    int device_weights; /* DSV4D_DEVW_* */
};

/* Where a device backend's weights came from (Ready.device_weights). */
enum { DSV4D_DEVW_HOST = 0, DSV4D_DEVW_UPLOADED = 1, DSV4D_DEVW_MAPPED = 2 };

/* A plan: lifecycle lists, then entries (their arrays point into the message's storage when
 * decoded, into the caller's when encoded). */
struct dsv4d_plan {
    uint64_t step;
    const uint64_t *add, *free, *drop, *swap_out, *swap_in;
    int n_add, n_free, n_drop, n_swap_out, n_swap_in;
    const struct dsv4_step_entry *entries;
    int n_entries;
    bool follow; /* continue each entry from the previous plan's result (proto Plan.follow) */
};

struct dsv4d_result {
    uint64_t step;
    int status;
    char message[512];
    int rank;
    uint64_t free_blocks;
    const struct dsv4_step_result *results; /* rank 0 */
    int n_results;
    const uint64_t *lost; /* swapped sequences whose state was dropped (proto Result.lost) */
    int n_lost;
};

struct dsv4d_heartbeat {
    uint64_t seq, step;
    int rank;
};

/* A decoded message; free with dsv4d_msg_free. */
struct dsv4d_msg {
    enum dsv4d_msg_kind kind;
    union {
        struct dsv4d_hello hello;
        struct dsv4d_progress progress;
        struct dsv4d_ready ready;
        struct dsv4d_plan plan;
        struct dsv4d_result result;
        struct dsv4d_heartbeat heartbeat;
    } u;
    void *pb;                     /* the unpacked protobuf message */
    struct dsv4_step_entry *ents; /* decoded plan entries */
    struct dsv4_step_result *res; /* decoded results */
};

int dsv4d_wire_decode(const void *buf, size_t len, struct dsv4d_msg *out);
void dsv4d_msg_free(struct dsv4d_msg *m);

/* Encoders: *buf malloc'ed (free()), *len bytes. */
int dsv4d_wire_hello(const struct dsv4d_hello *h, void **buf, size_t *len);
int dsv4d_wire_progress(const struct dsv4d_progress *p, void **buf, size_t *len);
int dsv4d_wire_ready(const struct dsv4d_ready *r, void **buf, size_t *len);
int dsv4d_wire_plan(const struct dsv4d_plan *p, void **buf, size_t *len);
int dsv4d_wire_result(const struct dsv4d_result *r, void **buf, size_t *len);
int dsv4d_wire_heartbeat(const struct dsv4d_heartbeat *h, void **buf, size_t *len);
int dsv4d_wire_shutdown(void **buf, size_t *len);

#endif
