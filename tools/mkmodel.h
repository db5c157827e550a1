/*
 * mkmodel.h - synthetic DeepSeek-V4 checkpoints for tests and benchmarks
 * (`dsv4 mkmodel`, ../shared/DESIGN.md §7).
 *
 * A written directory is a complete checkpoint: config.json,
 * model-0000i-of-0000N.safetensors shards, model.safetensors.index.json,
 * generation_config.json, and the tokenizer files copied from the given
 * tokenizer.json (plus tokenizer_config.json when one sits beside it, as
 * tokenizer_config.json or <stem>_config.json).  Every tensor is the
 * contract's (engine/io/contract.h): real names, dtypes, layouts and scale
 * formats, only smaller dimensions.
 *
 * Values (deterministic: every tensor instance draws from its own stream,
 * seeded by the seed and the tensor's name, so the same seed gives
 * byte-identical files and every format carries the same underlying
 * weights):
 *   linears          w ~ N(0, 1/fan_in), quantised with proper block scales
 *   FP8 linears      E4M3 RNE, E8M0 scale per 128x128 = 2^ceil(log2(amax/448))
 *   MXFP4 experts    E2M1 RNE, E8M0 per 32 = 2^ceil(log2(amax/6))
 *   NVFP4 experts    the lossless cast of those MXFP4 values (formats.md §1.6,
 *                    tools/convert.h): w1/w3 share weight_scale_2 = 2^m,
 *                    input_scale 1.0; MTP experts stay MXFP4
 *   FP8 experts      the lossless MXFP4 -> FP8 block cast of model.md §5.4:
 *                    per 128x128 tile S' = max per-32 scale / 2^6, stored as
 *                    an F32 power of two (the base models' F32 scales),
 *                    values e2m1 * s / S' exact in E4M3; MTP experts too
 *   norms            1 + N(0, 0.02^2) (BF16)
 *   embed            N(0, 1); head N(0, 1/D); router, compressors,
 *                    weights_proj N(0, 1/D) (BF16)
 *   hc_*_fn          N(0, 0.25/(hc*D)); hc_*_base N(0, 0.1^2); hc_*_scale
 *                    0.5 + N(0, 0.05^2)
 *   attn_sink, ape   N(0, 0.1^2); gate.bias N(0, 0.01^2) (F32)
 *   tid2eid          each row k distinct experts (I64)
 * Normal draws come from a fixed table of 65536 Box-Muller samples indexed
 * by 16 random bits (fast and exactly reproducible).
 *
 * Shards: tensors of one layer stay together; the embedding is in the
 * first shard, the MTP blocks alone in the last (when N >= 2 and there is
 * an MTP block), head/norm/hc_head at the end of the trunk, as upstream.
 * Within a shard tensors are laid out by dtype width (8, 4, 2, 1 bytes) so
 * that every view is naturally aligned.
 */
#ifndef DSV4_MKMODEL_H
#define DSV4_MKMODEL_H

#include "engine/io/config.h"

#include <stdint.h>

struct dsv4_mkmodel_opts {
    const struct dsv4_config *cfg; /* validated; expert_fmt selects the format */
    uint64_t seed;
    int shards;            /* >= 1 */
    const char *tokenizer; /* path of a tokenizer.json, or NULL (none copied) */
    const char *out_dir;   /* created if absent */
};

/*
 * Fills *cfg with the preset "tiny" or "small" for a vocabulary of `vocab`
 * rows and expert format `fmt` (sets expert_dtype / moe_quant_algo).
 *   tiny:  hidden 256, 4 layers (ratios 4,128,4,0) + 1 MTP, 4 heads of 512,
 *          2 output groups, 16 experts of 256 (top 6), 3 hash layers,
 *          4 indexer heads, index_topk 8.
 *   small: hidden 512, 8 layers + 1 MTP, 8 heads, 4 groups, 64 experts of
 *          384, index_topk 64 (a few hundred MB, for benchmarks).
 */
int dsv4_mkmodel_preset(const char *name, int vocab, enum dsv4_expert_fmt fmt,
                        struct dsv4_config *cfg);

/* Sets the expert format of a config (expert_fmt, moe_quant_algo). */
void dsv4_mkmodel_set_format(struct dsv4_config *cfg, enum dsv4_expert_fmt fmt);

/*
 * Token ids of a tokenizer.json (*ids = largest id + 1) and the vocabulary
 * rows a preset gets for it: *ids rounded up to a multiple of 1280 (the
 * DeepSeek tokenizer's 128815 ids -> 129280, the real vocab_size).
 */
int dsv4_mkmodel_tokenizer_vocab(const char *tokenizer_json, int *ids, int *vocab);

/* Writes the checkpoint directory. */
int dsv4_mkmodel_write(const struct dsv4_mkmodel_opts *o);

#endif
