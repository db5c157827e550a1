#!/usr/bin/env python3
"""dsv4_ref: independent numpy reference of the DeepSeek-V4 forward pass (the executable spec).

Written from ../shared/spec/model.md §3-§5 and §8 and ../shared/spec/formats.md §2 (NVFP4 W4A4),
not from the C engine. It loads a checkpoint directory (config.json + safetensors shards, via
model.safetensors.index.json when present) in any of the three expert layouts -- upstream MXFP4
(I8 + E8M0 `.scale` per 32), the NVFP4 artifact (U8/I8 + E4M3 per 16 under `.weight_scale` or
`.scale`, F32 `weight_scale_2` / `input_scale` of shape [1] or []; experts without weight_scale_2,
e.g. MTP, stay MXFP4) and FP8 experts (E4M3 + 128x128 block scales, E8M0 or F32) -- and runs a full
prefill of ids at positions 0..T-1, giving logits at every position, the per-layer residual
streams, and the MTP block's logits (model.md §4).

Conventions shared with the C engine (keep exactly):
  --dump-logits FILE  float32 [T, vocab_size], row-major, no header
  --dump-layers DIR   DIR/layer_%02d.f32 = the 4 residual streams after trunk layer l, float32
                      [T, 4, hidden], row-major, no header
  --mtp-logits FILE   float32 [T-1, vocab_size]; row t = MTP logits for token t+2 from the
                      pre-hc_head streams at t and ids[t+1]
  --next-ids A,B,..   recursive MTP drafting after the prompt (see below); --draft-logits FILE
                      writes float32 [len(next_ids), vocab_size]
  --layer-inputs DIR  diagnostic teacher forcing: trunk layer l >= 1 (and the head / MTP) start
                      from DIR/layer_(l-1).f32 (another engine's --dump-layers) instead of this
                      reference's own streams, so per-layer differences do not accumulate

Comparing with another engine: the tiny random checkpoints are numerically chaotic. A 1-ulp FP32
difference can flip one BF16 rounding (e.g. of an attention probability) and change a layer's
output at that position by ~1%, and the flips compound over layers and positions: this reference
run with FP32 instead of float64 accumulation differs from itself by ~0.2% (layer 0) to ~7%
(logits, 88% argmax agreement) on the 4-layer tiny preset over 300 tokens. Compare per layer with
--layer-inputs and with tolerances, not bit for bit.

Numerics: every value lives in float32; "bf16(...)" marks the places where the reference stores
BF16 (model.md §3.7). Quantised GEMMs are evaluated as matmuls of the exactly dequantised operands
(see dsv4_ref_numerics), accumulated in float64 and rounded to FP32 once (choice 15), so only the
accumulation rounding differs from fused block-scaled FP32-accumulating kernels.

Choices the spec leaves open (written down here, the C engine should make the same ones):
 1. RMSNorm: y = bf16(w * (x * (1/sqrt(mean(x^2) + eps)))) in FP32; the per-head q norm is the same
    without w. Compressor entries are normed from their FP32 pooled value.
 2. HC_PRE: m = (x . fn^T) * rho (matmul first, then the 1/rms factor); Sinkhorn exactly as §3.2.
    HC_POST and HC_HEAD sums in FP32, one BF16 rounding of the result.
 3. FP8 act quant: scale = 2^ceil_log2(amax * fl32(1/448)); FP4 simulation likewise with
    amax * fl32(1/6). A partial last group (K not a multiple of the group) uses the amax of the
    channels it has. FP8 GEMM output rounded to BF16 once.
 4. RoPE/YaRN: omega_i = fl32(1/theta^(2i/d_rope)) (float64 then rounded); YaRN in FP32 as the
    official code does it: ramp = fl32(clamp((i-lo)/(hi-lo), 0, 1)) (if hi == lo, hi += 0.001),
    smooth = 1 - ramp, omega' = omega/factor*(1-smooth) + omega*smooth (FP32 ops, left to right);
    angle = fl32(p) * omega' (FP32), cos/sin of that FP32 angle evaluated in float64 and rounded to
    FP32 (numpy's FP32 cos/sin are not correctly rounded); a*c - b*s, a*s + b*c in FP32; the
    rotated vector is rounded to BF16 once. Indexer q/keys use the layer's table.
 5. Attention: scores z = (q.k) * d_h^-0.5 in FP32; M = max over the selected keys (sink excluded);
    numerator uses P = bf16(exp(z - M)), denominator sum(exp(z - M)) (unrounded) + exp(sink - M);
    o = bf16((P . V) / den), then inverse RoPE at the query position and bf16. Window keys are
    positions p-127..p (sliding_window entries including the query).
 6. Grouped wo_a: the FP8 weight dequantised (exact in BF16), o_g . W_oa[g]^T in FP32, bf16 output,
    no activation quantisation (reference BF16 einsum).
 7. Compressor: per-channel softmax over the block's candidates in FP32, weighted sum in FP32; for
    r = 4 block 0's missing previous-block candidates have weight 0. Entry b rotated at b*r.
    Indexer keys and queries: bf16 after RoPE, Hadamard in FP32 then bf16, FP4 simulation then bf16.
 8. Indexer: w = bf16(x . weights_proj^T) * (d_idx^-0.5 * H_idx^-0.5) in FP32; score_b =
    sum_h w_h * relu(q_h . k_b) in FP32. Top-k = min(index_topk, #visible) highest scores; TIES
    are broken by the LOWER entry index (stable sort on -score).
 9. Router: logits x . W_gate^T in FP32, sigma = sqrt(softplus(l)) with softplus = logaddexp(0, l)
    in FP32; top-k of sigma + bias with ties to the LOWER expert index; weights sigma / sum(sigma)
    * routed_scaling_factor in FP32.
10. Expert: g = bf16(GEMM), u = bf16(GEMM); g = min(g, limit), u = clamp(u, +-limit);
    h = bf16(((g * (1 / (1 + exp(-g)))) * u) * weight) in FP32 (no weight for the shared expert);
    y = bf16(GEMM(h)).
    F = bf16(sum_i y_i + y_shared), routed sum in FP32 in ascending expert order.
11. NVFP4 experts (W4A4, formats.md §2.1/§8): the activation global scale of a layer is shared by
    all its experts: a13 = max over experts of input_scale(w1), input_scale(w3); a2 = max over
    experts of input_scale(w2) (1.0 when a checkpoint has none). x and the BF16 intermediate h are
    quantised per 16: SF = e4m3_rne_sat((amax * fl32(1/6)) * (1/a)), q = e2m1_rne_sat(x * ((1/a) / SF))
    (q = 0 when SF = 0); each GEMM accumulates (q_a SF_a)(q_w SF_w) and then
    multiplies by alpha = fl32(input_scale_global * weight_scale_2) of its own weight tensor. The
    routing weight multiplies h before requantisation (model.md §3.5 step 4).
12. MTP: e = RMSNorm_enorm(embed[y]), h_j = RMSNorm_hnorm(X_j); X0_j = bf16(Lin(h_j; h_proj) +
    Lin(e; e_proj)) (two BF16 GEMM outputs added in FP32). The MTP layer is forced window-only
    (theta = rope_theta, no YaRN) whatever compress_ratios[L] says, and never hash-routed. Its RoPE
    position is the position t of the hidden state it consumes. No zeroing at position 0.
13. Drafting: step 0 consumes the main streams at T-1 and next_ids[0] at position T-1; step k
    consumes the MTP output streams of step k-1 and next_ids[k] at position T-1+k. The MTP block's
    window holds the MTP kv of the prompt positions 0..T-2 (ids[t+1]) and of the earlier steps.
14. Linears stored as BF16 (no scale) run as BF16 GEMMs without activation quantisation.
15. Every dot product / reduction over a long axis (GEMMs, attention, pooled sums, mean of squares)
    is accumulated in float64 and rounded to float32 once: this stands for an ideal FP32
    accumulator and makes each row independent of the batch size, so prefill is exactly causal
    (BLAS FP32 results change with the number of rows, and a 1-ulp change can flip a BF16 rounding
    or a top-k choice). An engine that accumulates in FP32 differs from this at the FP32-ulp level.
"""

import argparse
import glob
import json
import os
import sys
import time

# one BLAS thread: the reference is meant to run on one core next to other tests (must precede numpy)
for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dsv4_ref_numerics as nx  # noqa: E402
from dsv4_ref_numerics import F32, bf16  # noqa: E402


F64 = np.float64


def mm(a, b_t):
    """a [..., K] . b_t [N, K]^T accumulated in float64 and rounded to float32 once (choice 15)."""
    return np.matmul(np.asarray(a, F64), np.asarray(b_t, F64).T).astype(F32)


def ein(spec, *ops):
    """einsum accumulated in float64, rounded to float32 once (choice 15)."""
    return np.einsum(spec, *[np.asarray(o, F64) for o in ops]).astype(F32)


def mean_sq(x):
    """mean(x^2) over the last axis, accumulated in float64, as float32."""
    return np.mean(np.asarray(x, F64) ** 2, axis=-1, keepdims=True).astype(F32)


def sigmoid(x):
    return (F32(1.0) / (F32(1.0) + np.exp(-x))).astype(F32)


def softmax(x, axis):
    m = np.max(x, axis=axis, keepdims=True)
    e = np.exp(x - m)
    return (e / e.sum(axis=axis, keepdims=True, dtype=F64).astype(F32)).astype(F32)


def sinkhorn(c, iters, eps):
    """model.md §3.2 HC_PRE step 5 on [..., 4, 4] (rows j, columns k)."""
    c = softmax(c, axis=-1) + F32(eps)
    c = c / (c.sum(axis=-2, keepdims=True) + F32(eps))
    for _ in range(iters - 1):
        c = c / (c.sum(axis=-1, keepdims=True) + F32(eps))
        c = c / (c.sum(axis=-2, keepdims=True) + F32(eps))
    return c.astype(F32)


def rope_freqs(d_rope, theta, yarn):
    """§3.4: omega_i = theta^(-2i/d), i < d/2; YaRN (factor, beta_fast, beta_slow, L0) when given."""
    i = np.arange(d_rope // 2, dtype=np.float64)
    omega = (1.0 / theta ** (2.0 * i / d_rope)).astype(F32)
    if yarn is not None:
        factor, beta_fast, beta_slow, l0 = yarn

        def corr(n):
            return d_rope * np.log(l0 / (2 * np.pi * n)) / (2 * np.log(theta))

        lo = max(np.floor(corr(beta_fast)), 0)
        hi = min(np.ceil(corr(beta_slow)), d_rope - 1)
        if hi == lo:
            hi += 0.001
        ramp = np.clip((i - lo) / (hi - lo), 0, 1).astype(F32)
        smooth = F32(1.0) - ramp
        omega = (omega / F32(factor) * (F32(1.0) - smooth) + omega * smooth).astype(F32)
    return omega


def rope_apply(x, pos, omega, inverse=False):
    """Interleaved RoPE on the last 2*len(omega) dims of x [N, ..., d] at positions pos [N];
    (a, b) -> (a cos - b sin, a sin + b cos), inverse uses -phi. Returns bf16 values."""
    ang = pos.astype(F32)[:, None] * omega[None, :]
    c, s = np.cos(ang.astype(F64)).astype(F32), np.sin(ang.astype(F64)).astype(F32)
    if inverse:
        s = -s
    extra = x.ndim - 2
    c = c.reshape(c.shape[:1] + (1,) * extra + c.shape[1:])
    s = s.reshape(s.shape[:1] + (1,) * extra + s.shape[1:])
    dr = 2 * omega.shape[0]
    y = x.astype(F32).copy()
    a = x[..., -dr::2]
    b = x[..., -dr + 1 :: 2]
    y[..., -dr::2] = a * c - b * s
    y[..., -dr + 1 :: 2] = a * s + b * c
    return bf16(y)


class Config:
    """The config.json fields the forward pass needs (model.md §1.1), with the stated defaults."""

    def __init__(self, path):
        with open(path) as f:
            c = json.load(f)
        self.raw = c

        def need(k):
            if k not in c:
                raise ValueError("%s: missing key %s" % (path, k))
            return c[k]

        self.vocab = need("vocab_size")
        self.dim = need("hidden_size")
        self.n_layers = need("num_hidden_layers")
        self.n_heads = need("num_attention_heads")
        self.head_dim = c.get("head_dim", 512)
        self.rope_dim = c.get("qk_rope_head_dim", 64)
        self.nope_dim = self.head_dim - self.rope_dim
        self.q_lora = need("q_lora_rank")
        self.o_groups = need("o_groups")
        self.o_lora = need("o_lora_rank")
        self.inter = need("moe_intermediate_size")
        self.n_experts = need("n_routed_experts")
        self.topk = need("num_experts_per_tok")
        self.n_hash = c.get("num_hash_layers", 0)
        self.n_mtp = c.get("num_nextn_predict_layers", 0)
        self.idx_heads = c.get("index_n_heads", 64)
        self.idx_dim = c.get("index_head_dim", 128)
        self.idx_topk = c.get("index_topk", 512)
        self.window = c.get("sliding_window", 128)
        self.hc = c.get("hc_mult", 4)
        self.sinkhorn_iters = c.get("hc_sinkhorn_iters", 20)
        self.hc_eps = c.get("hc_eps", 1e-6)
        self.eps = c.get("rms_norm_eps", 1e-6)
        self.rope_theta = c.get("rope_theta", 10000.0)
        self.compress_rope_theta = need("compress_rope_theta")
        self.route_scale = c.get("routed_scaling_factor", 1.0)
        self.swiglu_limit = c.get("swiglu_limit", 0.0)
        self.norm_topk = c.get("norm_topk_prob", True)
        self.scoring = c.get("scoring_func", "sqrtsoftplus")
        rs = c.get("rope_scaling")
        self.yarn = None
        if rs and rs.get("type", rs.get("rope_type")) == "yarn":
            self.yarn = (
                float(rs["factor"]),
                float(rs.get("beta_fast", 32)),
                float(rs.get("beta_slow", 1)),
                float(rs["original_max_position_embeddings"]),
            )
        cr = list(c.get("compress_ratios", [0] * self.n_layers))
        if len(cr) < self.n_layers:
            raise ValueError("%s: compress_ratios has %d entries for %d layers" % (path, len(cr), self.n_layers))
        for r in cr:
            if r not in (0, 4, 128):
                raise ValueError("%s: compress ratio %r is not 0, 4 or 128" % (path, r))
        self.ratios = cr[: self.n_layers]
        if self.scoring != "sqrtsoftplus":
            raise ValueError("%s: scoring_func %s not supported" % (path, self.scoring))
        if self.n_heads % self.o_groups:
            raise ValueError("%s: num_attention_heads %% o_groups != 0" % path)


class Checkpoint:
    """Tensor access by name over all shards; decoded weights are cached."""

    def __init__(self, d):
        self.dir = d
        idx = os.path.join(d, "model.safetensors.index.json")
        files = {}
        self.where = {}
        if os.path.exists(idx):
            with open(idx) as f:
                wm = json.load(f)["weight_map"]
            for name, fn in wm.items():
                if fn not in files:
                    files[fn] = nx.SafetensorsFile(os.path.join(d, fn))
                if name not in files[fn].entries:
                    raise ValueError("index maps %s to %s, which lacks it" % (name, fn))
                self.where[name] = files[fn]
        else:
            paths = sorted(glob.glob(os.path.join(d, "*.safetensors")))
            if not paths:
                raise ValueError("%s: no safetensors files" % d)
            for p in paths:
                f = nx.SafetensorsFile(p)
                for name in f.entries:
                    self.where[name] = f
        self.cache = {}

    def has(self, name):
        return name in self.where

    def raw(self, name):
        if name not in self.where:
            raise KeyError("checkpoint %s lacks tensor %s" % (self.dir, name))
        return self.where[name].raw(name)

    def f32(self, name):
        key = ("f32", name)
        if key not in self.cache:
            dt, r = self.raw(name)
            self.cache[key] = nx.to_f32(dt, r)
        return self.cache[key]

    def scalar(self, name):
        v = self.f32(name).reshape(-1)
        if v.size != 1:
            raise ValueError("%s: expected a scalar ([] or [1]), got %d values" % (name, v.size))
        return F32(v[0])

    def linear(self, prefix):
        """Dense linear `prefix.weight` ([out, in]) -> (dequantised W (exact, kept as float64 for the
        float64-accumulated GEMMs), act_quant flag)."""
        key = ("lin", prefix)
        if key not in self.cache:
            dt, w = self.raw(prefix + ".weight")
            if dt == "F8_E4M3":
                sdt, s = self.raw(prefix + ".scale")
                if sdt not in ("F8_E8M0", "F32"):
                    raise ValueError("%s.scale: dtype %s, expected F8_E8M0 or F32" % (prefix, sdt))
                W = nx.dequant_fp8_block(nx.decode_e4m3(w), nx.to_f32(sdt, s))
                if not np.all(np.isfinite(W)):
                    raise ValueError("%s: NaN E4M3 code or E8M0 scale 255" % prefix)
                self.cache[key] = (W.astype(F64), True)
            elif dt in ("BF16", "F32"):
                self.cache[key] = (nx.to_f32(dt, w).astype(F64), False)
            else:
                raise ValueError("%s.weight: unsupported linear dtype %s" % (prefix, dt))
        return self.cache[key]

    def expert_proj(self, name):
        """Routed/shared expert projection `name` (e.g. layers.3.ffn.experts.5.w1) ->
        (format, W [out, in] as float64, weight_scale_2 or None). For NVFP4, W = e2m1 * E4M3 block
        scale (exact) and weight_scale_2 is applied after the accumulation, as the GEMM alpha
        (formats.md §2.1); otherwise W is the complete dequantised weight."""
        key = ("exp", name)
        if key not in self.cache:
            dt, w = self.raw(name + ".weight")
            if self.has(name + ".weight_scale_2"):
                sname = name + ".weight_scale" if self.has(name + ".weight_scale") else name + ".scale"
                sdt, s = self.raw(sname)
                if sdt not in ("F8_E4M3", "U8") or dt not in ("U8", "I8"):
                    raise ValueError("%s: NVFP4 expects U8/I8 weight + F8_E4M3 scale, got %s + %s" % (name, dt, sdt))
                ws2 = self.scalar(name + ".weight_scale_2")
                W = nx.dequant_nvfp4(w, s, 1.0)
                if not np.all(np.isfinite(W)) or not (np.isfinite(ws2) and ws2 > 0):
                    raise ValueError("%s: NaN E4M3 block scale or bad weight_scale_2" % name)
                self.cache[key] = ("nvfp4", W.astype(F64), ws2)
            elif dt in ("I8", "U8"):
                sdt, s = self.raw(name + ".scale")
                if sdt not in ("F8_E8M0", "U8"):
                    raise ValueError("%s.scale: MXFP4 expects F8_E8M0, got %s" % (name, sdt))
                W = nx.dequant_mxfp4(w, s)
                if not np.all(np.isfinite(W)):
                    raise ValueError("%s: E8M0 scale 255 (NaN)" % name)
                self.cache[key] = ("mxfp4", W.astype(F64), None)
            else:
                W, _ = self.linear(name)
                self.cache[key] = ("fp8" if dt == "F8_E4M3" else "bf16", W, None)
        return self.cache[key]

    def expert_dequant(self, name):
        """(format, complete dequantised weight [out, in] float32) of an expert projection."""
        fmt, W, ws2 = self.expert_proj(name)
        W = W.astype(F32)
        return fmt, (W * ws2).astype(F32) if ws2 is not None else W


class Model:
    def __init__(self, model_dir):
        self.cfg = Config(os.path.join(model_dir, "config.json"))
        self.ck = Checkpoint(model_dir)
        c = self.cfg
        self.had = nx.hadamard_matrix(c.idx_dim) if any(r == 4 for r in c.ratios) else None
        self.omega_plain = rope_freqs(c.rope_dim, c.rope_theta, None)
        self.omega_comp = rope_freqs(c.rope_dim, c.compress_rope_theta, c.yarn)
        self._embed = None
        self._head = None
        self._act_scales = {}

    # -- basic ops ------------------------------------------------------------------------------

    def rmsnorm(self, x, wname):
        w = self.ck.f32(wname)
        x = x.astype(F32)
        r = F32(1.0) / np.sqrt(mean_sq(x) + F32(self.cfg.eps))
        return bf16(w * (x * r))

    def lin(self, x, prefix):
        """Lin(x; W) of §3.7: FP8 act quant per 128, FP32 GEMM, BF16 output. x [N, in]."""
        W, q = self.ck.linear(prefix)
        xa = nx.fp8_quant_dequant(x, 128) if q else x
        return bf16(mm(xa, W))

    def embed(self, ids):
        if self._embed is None:
            self._embed = self.ck.f32("embed.weight")
        if np.any(ids < 0) or np.any(ids >= self._embed.shape[0]):
            raise ValueError("token id out of range [0, %d)" % self._embed.shape[0])
        return self._embed[ids]

    # -- mHC (§3.2) -----------------------------------------------------------------------------

    def hc_pre(self, X, p, trace=None):
        c = self.cfg
        T, n, D = X.shape
        fn, sc, base = self.ck.f32(p + "fn"), self.ck.f32(p + "scale"), self.ck.f32(p + "base")
        x = X.reshape(T, n * D)
        rho = F32(1.0) / np.sqrt(mean_sq(x) + F32(c.eps))
        m = mm(x, fn) * rho
        pre = sigmoid(m[:, :n] * sc[0] + base[:n]) + F32(c.hc_eps)
        post = F32(2.0) * sigmoid(m[:, n : 2 * n] * sc[1] + base[n : 2 * n])
        comb = m[:, 2 * n :] * sc[2] + base[2 * n :]
        comb = sinkhorn(comb.reshape(T, n, n), c.sinkhorn_iters, c.hc_eps)
        if trace is not None:
            trace.setdefault("comb", []).append(comb)
        Y = bf16(ein("tj,tjd->td", pre, X))
        return Y, post, comb

    @staticmethod
    def hc_post(A, X, post, comb):
        """X'[k] = post_k * A + sum_j comb[j, k] * X[j]."""
        return bf16(np.asarray(post[:, :, None], F64) * A[:, None, :] + np.einsum("tjk,tjd->tkd", np.asarray(comb, F64), np.asarray(X, F64)))

    def hc_head(self, X, p):
        c = self.cfg
        T, n, D = X.shape
        fn, sc, base = self.ck.f32(p + "hc_head_fn"), self.ck.f32(p + "hc_head_scale"), self.ck.f32(p + "hc_head_base")
        x = X.reshape(T, n * D)
        rho = F32(1.0) / np.sqrt(mean_sq(x) + F32(c.eps))
        m = mm(x, fn) * rho
        pre = sigmoid(m * sc.reshape(-1)[0] + base) + F32(c.hc_eps)
        return bf16(ein("tj,tjd->td", pre, X))

    def logits(self, X, p=""):
        """§3.6: hc_head -> RMSNorm -> head in FP32. p = "" (trunk) or "mtp.0." (shared head)."""
        if self._head is None:
            self._head = self.ck.f32("head.weight").astype(F64)
        Z = self.rmsnorm(self.hc_head(X, p), p + "norm.weight")
        return mm(Z, self._head)

    # -- KV compressor and indexer (§3.3) --------------------------------------------------------

    def compress(self, x, p, r, d, omega, kind):
        """Compressed entries of a prefill x [T, D] at positions 0..T-1 -> [T // r, d] (bf16)."""
        c = self.cfg
        T = x.shape[0]
        nb = T // r
        if nb == 0:
            return np.zeros((0, d), F32)
        coff = 2 if r == 4 else 1
        Wkv, Wg, ape = self.ck.f32(p + "wkv.weight"), self.ck.f32(p + "wgate.weight"), self.ck.f32(p + "ape")
        if Wkv.shape[0] != coff * d or ape.shape != (r, coff * d):
            raise ValueError("%s: compressor shapes %s / ape %s do not match ratio %d, d %d" % (p, Wkv.shape, ape.shape, r, d))
        xb = x[: nb * r]
        k = mm(xb, Wkv).reshape(nb, r, coff * d)
        g = mm(xb, Wg).reshape(nb, r, coff * d) + ape[None]
        if coff == 2:
            pk = np.zeros((nb, r, d), F32)
            pg = np.full((nb, r, d), -np.inf, F32)
            pk[1:] = k[:-1, :, :d]
            pg[1:] = g[:-1, :, :d]
            k = np.concatenate([pk, k[:, :, d:]], axis=1)
            g = np.concatenate([pg, g[:, :, d:]], axis=1)
        entry = (softmax(g, axis=1) * k).sum(axis=1, dtype=F64).astype(F32)
        entry = self.rmsnorm(entry, p + "norm.weight")
        entry = rope_apply(entry, np.arange(nb) * r, omega)
        if kind == "main":
            entry[:, : c.nope_dim] = bf16(nx.fp8_quant_dequant(entry[:, : c.nope_dim], 64))
        else:
            entry = bf16(nx.fp4_quant_dequant(bf16(mm(entry, self.had)), 32))
        return entry

    def indexer(self, x, cq, p, pos, omega, vis, trace):
        """Top-k mask [T, nC] of main-compressor entries for each query (§3.3 lightning indexer)."""
        c = self.cfg
        T = x.shape[0]
        qi = self.lin(cq, p + "wq_b").reshape(T, c.idx_heads, c.idx_dim)
        qi = rope_apply(qi, pos, omega)
        qi = bf16(nx.fp4_quant_dequant(bf16(mm(qi, self.had)), 32))
        w = bf16(mm(x, self.ck.f32(p + "weights_proj.weight"))) * F32(c.idx_dim**-0.5 * c.idx_heads**-0.5)
        K = self.compress(x, p + "compressor.", 4, c.idx_dim, omega, "index")
        score = ein("th,thc->tc", w, np.maximum(ein("thd,cd->thc", qi, K), 0))
        score = np.where(vis, score, -np.inf)
        order = np.argsort(-score, axis=1, kind="stable")
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.arange(order.shape[1])[None, :].repeat(T, 0), axis=1)
        kq = np.minimum(c.idx_topk, vis.sum(axis=1))
        sel = (rank < kq[:, None]) & vis
        if trace is not None:
            trace["index_score"] = score
        return sel

    # -- attention (§3.2 ATTN) -------------------------------------------------------------------

    def attention(self, x, p, r, pos, trace=None):
        c = self.cfg
        T = x.shape[0]
        H, dh, dn = c.n_heads, c.head_dim, c.nope_dim
        omega = self.omega_comp if r > 0 else self.omega_plain
        cq = self.rmsnorm(self.lin(x, p + "wq_a"), p + "q_norm.weight")
        q = self.lin(cq, p + "wq_b").reshape(T, H, dh)
        q = bf16(q * (F32(1.0) / np.sqrt(mean_sq(q) + F32(c.eps))))
        q = rope_apply(q, pos, omega)
        kv = self.rmsnorm(self.lin(x, p + "wkv"), p + "kv_norm.weight")
        kv = rope_apply(kv, pos, omega)
        kv[:, :dn] = bf16(nx.fp8_quant_dequant(kv[:, :dn], 64))

        if r > 0:
            if not np.array_equal(pos, np.arange(T)):
                raise ValueError("compressed layers need a prefill from position 0")
            C = self.compress(x, p + "compressor.", r, dh, omega, "main")
            vis = np.arange(C.shape[0])[None, :] < ((pos + 1) // r)[:, None]
            sel = self.indexer(x, cq, p + "indexer.", pos, omega, vis, trace) if r == 4 else vis
        else:
            C = np.zeros((0, dh), F32)
            vis = sel = np.zeros((T, 0), bool)
        if trace is not None:
            trace.update(kv=kv, comp=C, vis=vis, sel=sel)
        win = (pos[None, :] <= pos[:, None]) & (pos[None, :] > pos[:, None] - c.window)
        mask = np.concatenate([win, sel], axis=1)
        V = np.concatenate([kv, C], axis=0)
        sink = self.ck.f32(p + "attn_sink")
        scale = F32(dh**-0.5)
        o = np.empty((T, H, dh), F32)
        for t0 in range(0, T, 128):
            t1 = min(T, t0 + 128)
            z = ein("thd,sd->ths", q[t0:t1], V) * scale
            mk = mask[t0:t1, None, :]
            z = np.where(mk, z, -np.inf)
            M = z.max(axis=-1, keepdims=True)
            e = np.where(mk, np.exp(z - M), F32(0.0))
            den = e.sum(axis=-1, dtype=F64).astype(F32) + np.exp(sink[None, :] - M[..., 0])
            o[t0:t1] = ein("ths,sd->thd", bf16(e), V) / den[..., None]
        o = rope_apply(bf16(o), pos, omega, inverse=True)

        G = c.o_groups
        Woa, _ = self.ck.linear(p + "wo_a")
        Woa = bf16(Woa).reshape(G, c.o_lora, (H // G) * dh)
        z = bf16(ein("tgi,gri->tgr", o.reshape(T, G, (H // G) * dh), Woa))
        return self.lin(z.reshape(T, G * c.o_lora), p + "wo_b")

    # -- MoE (§3.5) ------------------------------------------------------------------------------

    def act_scales(self, p):
        """NVFP4 layer-wide activation global scales (a13, a2), choice 11."""
        if p not in self._act_scales:
            a13, a2 = F32(0.0), F32(0.0)
            for e in range(self.cfg.n_experts):
                for w in ("w1", "w3", "w2"):
                    name = "%sexperts.%d.%s.input_scale" % (p, e, w)
                    if self.ck.has(name):
                        v = self.ck.scalar(name)
                        if w == "w2":
                            a2 = max(a2, v)
                        else:
                            a13 = max(a13, v)
            self._act_scales[p] = (a13 if a13 > 0 else F32(1.0), a2 if a2 > 0 else F32(1.0))
        return self._act_scales[p]

    def expert(self, x, p, weight, act):
        lim = F32(self.cfg.swiglu_limit)
        f1, W1, s1 = self.ck.expert_proj(p + "w1")
        f3, W3, s3 = self.ck.expert_proj(p + "w3")
        f2, W2, s2 = self.ck.expert_proj(p + "w2")

        def quant(v, a, fmt):
            if fmt == "nvfp4":  # q * SF; the global 1/gs = input_scale goes into alpha
                return nx.nvfp4_act_quant_dequant(v, a, 16, with_global=False)
            if fmt == "bf16":
                return v
            return nx.fp8_quant_dequant(v, 128)

        def gemm(va, W, ws2, a):
            acc = mm(va, W)
            return acc if ws2 is None else acc * (F32(a) * F32(ws2))

        if f1 != f3:
            raise ValueError("%s: w1 is %s but w3 is %s" % (p, f1, f3))
        xa = quant(x, act[0], f1)
        g = bf16(gemm(xa, W1, s1, act[0]))
        u = bf16(gemm(xa, W3, s3, act[0]))
        if lim > 0:
            g = np.minimum(g, lim)
            u = np.clip(u, -lim, lim)
        with np.errstate(over="ignore"):
            h = g * (F32(1.0) / (F32(1.0) + np.exp(-g))) * u
        if weight is not None:
            h = h * weight[:, None]
        h = bf16(h)
        return bf16(gemm(quant(h, act[1], f2), W2, s2, act[1]))

    def moe(self, x, ids, p, is_hash, trace=None):
        c = self.cfg
        T = x.shape[0]
        l = mm(x, self.ck.f32(p + "gate.weight"))
        sc = np.sqrt(np.logaddexp(F32(0.0), l)).astype(F32)
        if is_hash:
            dt, tab = self.ck.raw(p + "gate.tid2eid")
            sel = np.asarray(tab[ids], dtype=np.int64)
            if sel.shape[1] != c.topk or np.any(sel < 0) or np.any(sel >= c.n_experts):
                raise ValueError("%sgate.tid2eid: bad shape or expert id" % p)
        else:
            biased = sc + self.ck.f32(p + "gate.bias")[None, :]
            sel = np.argsort(-biased, axis=1, kind="stable")[:, : c.topk]
        ws = np.take_along_axis(sc, sel, axis=1)
        if c.norm_topk:
            ws = ws / ws.sum(axis=1, keepdims=True)
        ws = (ws * F32(c.route_scale)).astype(F32)
        if trace is not None:
            trace.update(experts=sel, weights=ws, scores=sc)
        act = self.act_scales(p)
        out = np.zeros((T, c.dim), F64)
        for e in np.unique(sel):
            tok, slot = np.nonzero(sel == e)
            y = self.expert(x[tok], "%sexperts.%d." % (p, e), ws[tok, slot], act)
            np.add.at(out, tok, y)
        ys = self.expert(x, p + "shared_experts.", None, (F32(1.0), F32(1.0)))
        return bf16(out + ys)  # float64 sum, one rounding

    # -- blocks ----------------------------------------------------------------------------------

    def block(self, X, ids, p, r, is_hash, pos, trace=None):
        """One layer (§3.2). X [T, 4, D] bf16 values."""
        Y, post, comb = self.hc_pre(X, p + "hc_attn_", trace)
        A = self.attention(self.rmsnorm(Y, p + "attn_norm.weight"), p + "attn.", r, pos, trace)
        X = self.hc_post(A, X, post, comb)
        Y, post, comb = self.hc_pre(X, p + "hc_ffn_", trace)
        F = self.moe(self.rmsnorm(Y, p + "ffn_norm.weight"), ids, p + "ffn.", is_hash, trace)
        return self.hc_post(F, X, post, comb)

    def forward(self, ids, traces=None, layer_cb=None, layer_inputs=None):
        """Prefill ids at positions 0..T-1 -> (logits [T, V], pre-hc_head streams [T, 4, D]).

        layer_inputs(l) -> [T, 4, D] or None: diagnostic teacher forcing; layer l >= 1 (and the
        head, as l = n_layers) then starts from the given streams (e.g. another engine's dump of
        layer l-1) instead of this reference's own, so each layer's difference is measured alone."""
        c = self.cfg
        ids = np.asarray(ids, dtype=np.int64)
        T = ids.shape[0]
        pos = np.arange(T)
        e = self.embed(ids)
        X = np.repeat(e[:, None, :], c.hc, axis=1)

        def forced(li, X):
            if layer_inputs is None or li == 0:
                return X
            Xi = layer_inputs(li)
            if Xi.shape != X.shape:
                raise ValueError("layer input %d has shape %s, expected %s" % (li, Xi.shape, X.shape))
            return bf16(Xi)

        for li in range(c.n_layers):
            X = forced(li, X)
            tr = {} if traces is not None else None
            X = self.block(X, ids, "layers.%d." % li, c.ratios[li], li < c.n_hash, pos, tr)
            if traces is not None:
                traces.append(tr)
            if layer_cb is not None:
                layer_cb(li, X)
        X = forced(c.n_layers, X)
        return self.logits(X), X

    def mtp_block(self, XL, next_ids, pos, trace=None):
        """§4.1 over a run of positions: XL [N, 4, D] pre-hc_head streams, next_ids [N] (token at
        pos+1), pos [N] consecutive from 0 (window-only layer) -> (logits [N, V], X1 [N, 4, D])."""
        c = self.cfg
        p = "mtp.0."
        N = XL.shape[0]
        e = self.rmsnorm(self.embed(np.asarray(next_ids, np.int64)), p + "enorm.weight")
        h = self.rmsnorm(XL, p + "hnorm.weight")
        X0 = self.lin(h.reshape(N * c.hc, c.dim), p + "h_proj").reshape(N, c.hc, c.dim)
        X0 = bf16(X0 + self.lin(e, p + "e_proj")[:, None, :])
        X1 = self.block(X0, next_ids, p, 0, False, pos, trace)
        return self.logits(X1, p), X1

    def mtp_prefill(self, XL, ids):
        """MTP logits [T-1, V]: row t predicts token t+2 from XL[t] and ids[t+1]."""
        T = XL.shape[0]
        if T < 2:
            return np.zeros((0, self.cfg.vocab), F32), None
        return self.mtp_block(XL[:-1], ids[1:], np.arange(T - 1))

    def mtp_draft(self, XL, ids, next_ids):
        """Recursive drafting (choice 13) -> logits [len(next_ids), V]."""
        T = XL.shape[0]
        ins = list(XL)
        toks = list(np.asarray(ids[1:], np.int64))
        out = []
        for k, y in enumerate(next_ids):
            pos = np.arange(T + k)
            lg, X1 = self.mtp_block(np.stack(ins), np.array(toks + [y], np.int64), pos)
            out.append(lg[-1])
            ins.append(X1[-1])
            toks.append(y)
        return np.stack(out)


def parse_ids(s):
    """"1,2,3" or "@FILE" (ids separated by commas and/or whitespace)."""
    if s.startswith("@"):
        with open(s[1:]) as f:
            s = f.read()
    return np.array([int(v) for v in s.replace(",", " ").split()], dtype=np.int64)


def main(argv=None):
    ap = argparse.ArgumentParser(description="numpy reference forward pass of DeepSeek-V4")
    ap.add_argument("--model", required=True, help="checkpoint directory (config.json + safetensors)")
    ap.add_argument("--ids", required=True, help="comma-separated token ids (prefill at 0..T-1), or @FILE")
    ap.add_argument("--dump-logits", help="float32 [T, vocab] file")
    ap.add_argument("--dump-layers", help="directory for layer_%%02d.f32 = streams [T, 4, hidden]")
    ap.add_argument("--mtp-logits", help="float32 [T-1, vocab] file of MTP logits for t+2")
    ap.add_argument("--next-ids", help="comma-separated tokens for recursive MTP drafting")
    ap.add_argument("--draft-logits", help="float32 [len(next-ids), vocab] file of draft logits")
    ap.add_argument(
        "--layer-inputs",
        help="diagnostic: directory of layer_%%02d.f32 dumps (e.g. the C engine's); trunk layer l >= 1, "
        "the head and MTP start from DIR/layer_(l-1) instead of this reference's own streams",
    )
    a = ap.parse_args(argv)
    t0 = time.time()
    m = Model(a.model)
    ids = parse_ids(a.ids)
    if ids.size == 0:
        ap.error("--ids is empty")
    cb = None
    if a.dump_layers:
        os.makedirs(a.dump_layers, exist_ok=True)

        def cb(li, X):
            X.astype(np.float32).tofile(os.path.join(a.dump_layers, "layer_%02d.f32" % li))

    li = None
    if a.layer_inputs:
        shape = (len(ids), m.cfg.hc, m.cfg.dim)

        def li(layer):
            path = os.path.join(a.layer_inputs, "layer_%02d.f32" % (layer - 1))
            x = np.fromfile(path, np.float32)
            if x.size != np.prod(shape):
                raise ValueError("%s: %d floats, expected %d" % (path, x.size, np.prod(shape)))
            return x.reshape(shape)

    logits, XL = m.forward(ids, layer_cb=cb, layer_inputs=li)
    if a.dump_logits:
        logits.astype(np.float32).tofile(a.dump_logits)
    print("positions %d, last argmax %d, logits finite %s" % (len(ids), int(np.argmax(logits[-1])), bool(np.isfinite(logits).all())))
    if a.mtp_logits or a.next_ids:
        if not m.ck.has("mtp.0.e_proj.weight"):
            print("error: checkpoint has no MTP block", file=sys.stderr)
            return 1
    if a.mtp_logits:
        ml, _ = m.mtp_prefill(XL, ids)
        ml.astype(np.float32).tofile(a.mtp_logits)
        print("mtp rows %d" % ml.shape[0])
    if a.next_ids:
        nids = parse_ids(a.next_ids)
        dl = m.mtp_draft(XL, ids, nids)
        if a.draft_logits:
            dl.astype(np.float32).tofile(a.draft_logits)
        print("draft argmax %s" % ",".join(str(int(v)) for v in dl.argmax(axis=1)))
    print("time %.2fs" % (time.time() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
