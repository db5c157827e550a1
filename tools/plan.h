/*
 * plan.h - the memory and parallel plan of a checkpoint on N ranks
 * (../shared/DESIGN.md §2, ../shared/spec/model.md §7).
 *
 * Weight bytes per rank and category follow the contract's split of every
 * tensor (contract.h), so the plan and the engine's loader agree by
 * construction.  Bytes come from the contract (a config alone) or from the
 * bound tensors of a real checkpoint.  Parameters count one per stored
 * value, two per packed FP4 byte, none for scale tensors.
 *
 * KV/state per sequence (single KV head, so every rank holds the full state
 * of its sequences under head-parallel attention):
 *   main entry  = nope FP8 + rope BF16 + one UE8M0 scale per 64 nope dims,
 *                 padded to 8 bytes (584 B for head_dim 512, rope 64)
 *   index entry = index_head_dim FP8 + one FP32 scale (132 B for 128)
 *   per token   = sum over ratio-4 layers of (main + index)/4
 *               + sum over ratio-128 layers of main/128
 *   fixed       = layers * sliding_window * main (the windows)
 *               + FP32 compressor state: per ratio>0 layer coff*r slots of
 *                 kv and gate, coff*d wide (d = head_dim, and index_head_dim
 *                 for the indexer's compressor), coff = 2 for ratio 4.
 *
 * The engine's own pool (engine/model/state.h) stores window kv, entries and
 * indexer keys in BF16 (the reference cache's precision) and is printed
 * next to the FP8 figures as "engine pool" (dsv4_state_sizes: the same
 * function the pool allocates with).
 *
 * Ownership: a plan owns its per-rank array.
 */
#ifndef DSV4_PLAN_H
#define DSV4_PLAN_H

#include "engine/io/contract.h"
#include "engine/model/state.h"

#include <stdint.h>
#include <stdio.h>

struct dsv4_plan_rank {
    uint64_t bytes[DSV4_CAT_COUNT];      /* held by this rank */
    uint64_t replicated[DSV4_CAT_COUNT]; /* of which replicated (whole on every rank) */
    uint64_t total;
    int64_t experts_begin, experts_end; /* routed experts held */
    int64_t kv_tokens;                  /* tokens of KV that fit, -1 without --device-mem */
};

struct dsv4_plan {
    struct dsv4_config cfg;
    int nranks;
    int from_checkpoint; /* 1: bytes from tensors, 0: from the contract */
    uint64_t tensor_count;
    uint64_t total_bytes;
    uint64_t bytes[DSV4_CAT_COUNT];
    uint64_t params[DSV4_CAT_COUNT];
    uint64_t total_params;        /* everything, MTP included */
    uint64_t total_params_no_mtp; /* main model */
    /* per token, main model: all non-routed tensors + k/E of the routed experts */
    double active_params;
    double active_routed; /* the routed-expert part of it */
    double active_embed;  /* embedding + head, counted whole */
    /* KV / state */
    int n_csa, n_hca, n_swa; /* layers (trunk + MTP) with ratio 4, 128, 0 */
    uint64_t main_entry_bytes, index_entry_bytes;
    double kv_bytes_per_token;
    uint64_t window_bytes;     /* fixed per sequence */
    uint64_t compressor_bytes; /* fixed per sequence */
    /* the engine's state pool layout today (engine/model/state.h: BF16 window, entries and
     * indexer keys, FP32 compressor partial blocks), MTP depth 1 */
    struct dsv4_state_sizes pool;
    /* device fit (dsv4_plan_fit) */
    uint64_t device_mem, reserve;
    int64_t kv_tokens; /* min over ranks; -1 when not computed */
    struct dsv4_plan_rank *ranks;
};

/* Plan from the contract alone (bytes as the contract says). */
int dsv4_plan_from_contract(const struct dsv4_contract *c, int nranks, struct dsv4_plan **out);
/* Plan from a bound checkpoint: bytes of the actual tensors, split as the contract says. */
int dsv4_plan_from_binding(const struct dsv4_binding *b, int nranks, struct dsv4_plan **out);
void dsv4_plan_free(struct dsv4_plan *p);

/*
 * Tokens of KV that fit on each rank of `device_mem` bytes after its weights,
 * `reserve` bytes of workspace and one sequence's fixed state (sums
 * saturate; INT64_MAX when nothing grows per token, e.g. a window-only model).
 */
void dsv4_plan_fit(struct dsv4_plan *p, uint64_t device_mem, uint64_t reserve);

/* Human-readable report (layout, per-rank bytes, params, KV). */
void dsv4_plan_print(const struct dsv4_plan *p, FILE *f);
/* The same as one JSON object. */
void dsv4_plan_print_json(const struct dsv4_plan *p, FILE *f);

/* Parses "288GiB", "141GB", "4096MiB", "1e9" into bytes; DSV4_EINVAL on junk. */
int dsv4_plan_parse_size(const char *s, uint64_t *out);

#endif
