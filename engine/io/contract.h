/*
 * contract.h - the model contract: one table-driven description of every
 * tensor a DeepSeek-V4 checkpoint holds, as a function of its config.
 *
 * For a config, dsv4_contract_build() expands the table into "specs": one per
 * tensor, except that the routed experts of a layer are collapsed into one
 * spec per tensor kind with n_experts instances (name holds "*" where the
 * expert index goes, e.g. "layers.3.ffn.experts.*.w1.weight").  Spec order is
 * the order of ../shared/data/v4-*-tensor-inventory.tsv (embed, head, norm,
 * hc_head, then each trunk layer, then each MTP block).
 *
 * Layouts covered (../shared/spec/model.md §2, §5; formats.md §1.2-1.4, §8):
 *   expert_fmt MXFP4  upstream: experts I8 [out, in/2] + E8M0 .scale [out, in/32]
 *   expert_fmt NVFP4  artifact: trunk experts U8|I8 [out, in/2] + E4M3 .scale
 *                     or .weight_scale [out, in/16] + F32 weight_scale_2 and
 *                     input_scale as [1] or []; MTP experts stay MXFP4 unless
 *                     the checkpoint carries NVFP4 ones (detected by binding)
 *   expert_fmt FP8    base models: experts E4M3 [out, in] + F32 .scale
 *                     [ceil(out/128), ceil(in/128)] (power-of-two values), MTP too
 * Everything else is identical in all three: FP8 linears E4M3 + E8M0 .scale
 * per 128x128 block, BF16 norms/embeddings/compressors, F32 hc_*, attn_sink,
 * ape, gate.bias, I64 tid2eid.
 *
 * Each spec carries a category (for byte accounting) and its tensor-parallel
 * split (DESIGN.md §2, model.md §7.3) so that `dsv4 plan` and the engine's
 * loader shard identically.  A split divides `split_units` parallel units
 * along dimension 0 (ROWS, VOCAB, EXPERT) or 1 (COLS):
 *   attention  wq_b rows, attn_sink, wo_a rows, wo_b cols: by output group
 *              (o_groups units; a group's H/G heads stay on one rank)
 *   indexer    wq_b rows, weights_proj rows: by indexer head
 *   experts    whole routed experts
 *   vocab      embed/head rows
 *   replicated everything else (wq_a, wkv, norms, compressors, router,
 *              hc_*, shared expert, MTP e_proj/h_proj)
 * Rank r of N owns units [r*U/N, (r+1)*U/N) (dsv4_contract_split_range), except the
 * vocabulary: chunks of ceil(V/N) rows (dsv4_contract_split_range_vocab).
 *
 * Binding checks a checkpoint's tensors against the contract and reports all
 * mismatches at once (missing, unexpected, wrong dtype, wrong shape).
 *
 * Ownership: a contract owns its specs; a binding owns its contract and the
 * problem list, and points at (does not own) the caller's tensor views, which
 * must outlive it.
 */
#ifndef DSV4_CONTRACT_H
#define DSV4_CONTRACT_H

#include "engine/io/config.h"
#include "base/tensor.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define DSV4_CONTRACT_NAME_MAX 96

/* Byte-accounting category; every MTP tensor is DSV4_CAT_MTP. */
enum dsv4_cat {
    DSV4_CAT_ATTN = 0,   /* attn.* (core, compressor, indexer) */
    DSV4_CAT_SHARED = 1, /* ffn.shared_experts.* */
    DSV4_CAT_ROUTED = 2, /* ffn.experts.* */
    DSV4_CAT_EMBED = 3,  /* embed.weight, head.weight */
    DSV4_CAT_MTP = 4,    /* mtp.* */
    DSV4_CAT_OTHER = 5,  /* hc_*, layer norms, router, final norm */
    DSV4_CAT_COUNT
};

/* Tensor-parallel split of one tensor. */
enum dsv4_split {
    DSV4_SPLIT_REPLICATED = 0, /* every rank holds all of it */
    DSV4_SPLIT_ROWS = 1,       /* dimension 0 divided into split_units */
    DSV4_SPLIT_COLS = 2,       /* dimension 1 divided into split_units */
    DSV4_SPLIT_EXPERT = 3,     /* whole experts, contiguous ranges */
    DSV4_SPLIT_VOCAB = 4       /* vocabulary rows (embedding, head) */
};

/* What a tensor is inside its module. */
enum dsv4_role {
    DSV4_ROLE_PLAIN = 0,      /* norm, bias, hc_*, embedding, ... */
    DSV4_ROLE_WEIGHT = 1,     /* quantised matrix payload (.weight) */
    DSV4_ROLE_SCALE = 2,      /* its block scales (.scale / .weight_scale) */
    DSV4_ROLE_SCALE2 = 3,     /* NVFP4 weight_scale_2 */
    DSV4_ROLE_INPUT_SCALE = 4 /* NVFP4 input_scale */
};

struct dsv4_tspec {
    char name[DSV4_CONTRACT_NAME_MAX]; /* canonical name; "*" = expert index */
    char alt[DSV4_CONTRACT_NAME_MAX];  /* accepted other name, "" if none */
    int layer;                         /* -1 global, 0..L-1 trunk, L.. MTP blocks */
    int n_experts;                     /* 0: one tensor; E: one per routed expert */
    enum dsv4_dtype dtype;             /* canonical dtype (what mkmodel writes) */
    uint32_t dtypes;                   /* accepted dtypes, bit (1u << dtype) */
    int ndim;
    int64_t shape[2];
    bool scalar_any;      /* shape [1] and [] both accepted */
    int64_t logical_cols; /* for WEIGHT: unpacked input width (K); else 0 */
    enum dsv4_cat cat;    /* DSV4_CAT_MTP for mtp.* */
    enum dsv4_cat part;   /* category ignoring MTP (ATTN..OTHER, never MTP) */
    enum dsv4_split split;
    int64_t split_units;
    enum dsv4_role role;
    enum dsv4_expert_fmt expert_fmt; /* for routed-expert specs: their format */
    uint64_t nbytes;                 /* bytes of one instance */
    uint64_t params;                 /* parameters of one instance (scales: 0, FP4: 2/byte) */
};

struct dsv4_contract;

/*
 * Builds the contract of `cfg`.  mtp_expert_fmt: format of the MTP blocks'
 * routed experts, or -1 for the default (MXFP4 when the trunk is NVFP4, else
 * the trunk's format).  The config must have passed dsv4_config_validate().
 * DSV4_EINVAL when a layer's FP4 experts (MTP ones included) would not hold
 * whole blocks: hidden_size and moe_intermediate_size multiples of 32
 * (MXFP4) or 16 (NVFP4).  DSV4_ERANGE above 2^60 bytes in all.
 */
int dsv4_contract_build(const struct dsv4_config *cfg, int mtp_expert_fmt,
                        struct dsv4_contract **out);
void dsv4_contract_free(struct dsv4_contract *c);

const struct dsv4_config *dsv4_contract_config(const struct dsv4_contract *c);
/* Number of specs (experts collapsed) and the i-th one. */
size_t dsv4_contract_count(const struct dsv4_contract *c);
const struct dsv4_tspec *dsv4_contract_spec(const struct dsv4_contract *c, size_t i);
/* Number of tensors with experts expanded, and their total bytes. */
uint64_t dsv4_contract_tensor_count(const struct dsv4_contract *c);
uint64_t dsv4_contract_total_bytes(const struct dsv4_contract *c);
/* Format of the routed experts of `layer` (trunk or MTP). */
enum dsv4_expert_fmt dsv4_contract_expert_fmt(const struct dsv4_contract *c, int layer);

/*
 * Resolves a tensor name (canonical or alternative spelling) to its spec
 * index and expert number (-1 for non-expert tensors).  DSV4_ENOENT if the
 * name is not in the contract (no message recorded: callers decide).
 */
int dsv4_contract_lookup(const struct dsv4_contract *c, const char *name, size_t *spec,
                         int *expert);

/* Writes the name of instance `expert` of spec i into buf ("*" replaced). */
char *dsv4_tspec_name(const struct dsv4_tspec *s, int expert, char *buf, size_t len);

/*
 * Writes the inventory in the format of shared/data/v4-*-tensor-inventory.tsv
 * (without its comment lines): name TAB dtype TAB [shape] TAB multiplicity,
 * experts collapsed as "{0..E-1}".
 */
int dsv4_contract_write_inventory(const struct dsv4_contract *c, FILE *f);

/*
 * Rank r of n: its part of `whole` (bytes or parameters of one instance of
 * spec s) under s's ROWS/COLS/VOCAB split, floor(whole*end/U) -
 * floor(whole*begin/U), so that the parts of all ranks sum to `whole`;
 * `whole` itself for replicated and per-expert specs.
 */
uint64_t dsv4_tspec_split_part(const struct dsv4_tspec *s, uint64_t whole, int rank, int nranks);

/*
 * Rank r of n: the part of a spec (all its instances) that rank holds, in
 * bytes and parameters.  Sums over r equal the whole exactly, except that
 * a replicated spec is whole on every rank.
 */
void dsv4_tspec_rank_share(const struct dsv4_tspec *s, int rank, int nranks, uint64_t *bytes,
                           uint64_t *params);
/* Units [*begin, *end) of split_units (experts for EXPERT) that rank holds. */
void dsv4_contract_split_range(int64_t units, int rank, int nranks, int64_t *begin, int64_t *end);
/* Vocabulary rows of a rank: [min(V, r*c), min(V, r*c + c)), c = ceil(V/N). */
void dsv4_contract_split_range_vocab(int64_t rows, int rank, int nranks, int64_t *begin,
                                     int64_t *end);

const char *dsv4_contract_cat_name(enum dsv4_cat c);
const char *dsv4_contract_split_name(enum dsv4_split s);

/* ---------------------------------------------------------------- binding */

enum dsv4_problem {
    DSV4_PROBLEM_MISSING = 0,
    DSV4_PROBLEM_UNEXPECTED = 1,
    DSV4_PROBLEM_DTYPE = 2,
    DSV4_PROBLEM_SHAPE = 3,
    DSV4_PROBLEM_DUPLICATE = 4 /* both spellings of one tensor present */
};

struct dsv4_binding;

/*
 * Binds tensors (views; names must be set) to the contract of cfg.  The MTP
 * experts' format is detected from the names (NVFP4 when weight_scale_2 is
 * present, as in NVIDIA's exports).  Every problem is recorded; when there
 * is any, *out is still set (so all can be listed) and DSV4_EMISMATCH is
 * returned with a message giving the counts and the first problems.
 */
int dsv4_bind(const struct dsv4_config *cfg, const struct dsv4_tensor *const *tensors, size_t n,
              struct dsv4_binding **out);
void dsv4_binding_free(struct dsv4_binding *b);

const struct dsv4_contract *dsv4_binding_contract(const struct dsv4_binding *b);
size_t dsv4_binding_problem_count(const struct dsv4_binding *b);
/* i-th problem: its kind, and a line "missing tensor layers.0.attn.wkv.weight (F8_E4M3 [512, 7168])". */
enum dsv4_problem dsv4_binding_problem(const struct dsv4_binding *b, size_t i, const char **line);
/* Tensor bound to spec i, instance `expert` (0 for non-expert specs); NULL if missing. */
const struct dsv4_tensor *dsv4_binding_get(const struct dsv4_binding *b, size_t spec, int expert);
/* Tensor bound to a canonical or alternative name; NULL if absent. */
const struct dsv4_tensor *dsv4_binding_find(const struct dsv4_binding *b, const char *name);

#endif
