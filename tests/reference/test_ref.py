#!/usr/bin/env python3
"""test_ref: self-tests of the numpy reference (tests/reference/dsv4_ref.py).

Checks invariants of the reference itself, each of which fails when the reference is wrong:
format roundings and quantisers, Sinkhorn (approximately doubly stochastic), RoPE (inverse(rope(x))
== x, YaRN band edges of model.md §3.4), Hadamard orthonormality, compressed-entry visibility and
causality of the compressor, prefill causality (logits at t from T tokens == from t+1 tokens),
hash routing from tid2eid, top-k routing elsewhere, MTP drafting == MTP prefill, finite logits, and
MXFP4 vs losslessly converted NVFP4 dequant equality (plus an NVFP4 W4A4 forward on the converted
checkpoint, and a cross-check against mkmodel's own NVFP4 checkpoint when it carries the same
weights).

Checkpoints come from `$DSV4_BIN mkmodel --preset tiny` (written into $DSV4_TMP); exit 77 when the
binary or the subcommand is missing. DSV4_REF_MODEL=DIR uses an existing MXFP4 checkpoint instead.
"""

import json
import os
import shutil
import subprocess
import sys
import time

# one BLAS thread: the reference is meant to run on one core next to other tests (must precede numpy)
for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dsv4_ref as R  # noqa: E402
import dsv4_ref_numerics as nx  # noqa: E402

F32 = np.float32
failures = []
checks = 0


def check(cond, what):
    global checks
    checks += 1
    if not cond:
        failures.append(what)
        print("FAIL: " + what)


def tmpdir():
    return os.environ.get("DSV4_TMP") or os.getcwd()


def mkmodel(fmt):
    """Path of a tiny checkpoint in format fmt, or None when it cannot be made."""
    if fmt == "mxfp4" and os.environ.get("DSV4_REF_MODEL"):
        return os.environ["DSV4_REF_MODEL"]
    binp = os.environ.get("DSV4_BIN", "")
    if not binp or not os.access(binp, os.X_OK):
        return None
    out = os.path.join(tmpdir(), "tiny-" + fmt)
    if os.path.exists(os.path.join(out, "config.json")):
        return out
    tok = os.path.join(os.environ.get("DSV4_SHARED_DATA", ""), "tokenizer", "deepseek-v3-tokenizer.json")
    cmd = [binp, "mkmodel", "--preset", "tiny", "--format", fmt, "--tokenizer", tok, "--seed", "1", "--out", out]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        print("mkmodel --format %s failed (%d): %s" % (fmt, r.returncode, r.stdout.strip()[-300:]))
        return None
    return out


# ---------------------------------------------------------------------------------------------
# unit checks that need no checkpoint


def test_formats():
    x = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.0, -0.25, -5.0], F32)
    want = np.array([0, 1, 1, 2, 2, 4, 4, 6, 0, -4], F32)
    check(np.array_equal(nx.e2m1(x), want), "e2m1 RNE ties / saturation")
    check(nx.bf16(np.array([1 + 2.0**-8], F32))[0] == 1.0, "bf16 tie to even (down)")
    check(nx.bf16(np.array([1 + 3 * 2.0**-8], F32))[0] == 1 + 2.0**-6, "bf16 tie to even (up)")
    check(nx.e4m3(np.array([17.0], F32))[0] == 16.0 and nx.e4m3(np.array([19.0], F32))[0] == 20.0, "e4m3 RNE")
    check(np.array_equal(nx.ceil_log2(np.array([1.0, 1.5, 0.25, 3.0, 2.0**-130], F32)), [0, 1, -2, 2, -130]), "ceil_log2")
    check(np.array_equal(nx.decode_e8m0(np.array([127, 120, 255], np.uint8))[:2], [1.0, 2.0**-7]), "e8m0 decode")
    check(np.isnan(nx.decode_e8m0(np.array([255], np.uint8))[0]), "e8m0 255 is NaN")
    packed = np.array([[0x21, 0xF8]], np.uint8)
    check(np.array_equal(nx.unpack_e2m1(packed)[0], [0.5, 1.0, -0.0, -6.0]), "e2m1 nibble order (low = even)")


def test_quantisers():
    rng = np.random.default_rng(3)
    x = nx.bf16(rng.standard_normal((7, 300)).astype(F32) * 3)
    q = nx.fp8_quant_dequant(x, 128)
    for g0 in range(0, 300, 128):
        blk, xb = q[:, g0 : g0 + 128], x[:, g0 : g0 + 128]
        amax = np.maximum(np.abs(xb).max(axis=1), 1e-4)
        s = 2.0 ** np.ceil(np.log2(amax / 448.0))
        check(np.all(np.abs(blk / s[:, None]) <= 448), "fp8 act quant stays in range")
        check(np.all(np.abs(blk - xb) <= s[:, None] * 16 + 1e-30), "fp8 act quant error bound")
        ratio = blk / s[:, None]
        check(np.array_equal(ratio, nx.e4m3(ratio)), "fp8 act quant values are e4m3 * 2^k")
    # the exact power of two: amax = 448 * 2^k gives scale 2^k (no spurious +1 from fl32(1/448))
    y = np.zeros((1, 128), F32)
    y[0, 5] = 448.0 * 2.0**-3
    check(nx.fp8_quant_dequant(y)[0, 5] == y[0, 5], "fp8 act quant exact at amax = 448*2^k")
    f = nx.fp4_quant_dequant(x, 32)
    check(np.all(np.isfinite(f)) and np.abs(f - x).max() < 0.35 * np.abs(x).max(), "fp4 simulation error bound")
    # NVFP4 act quant: with input_scale 1 a block whose amax is 6 * SF (SF an e4m3 value) is exact
    z = np.zeros((1, 16), F32)
    z[0, :4] = [6 * 0.5, -3 * 0.5, 1 * 0.5, 0.5 * 0.5]
    check(np.array_equal(nx.nvfp4_act_quant_dequant(z, 1.0), z), "nvfp4 act quant exact on grid")
    w = nx.nvfp4_act_quant_dequant(x, 0.5)
    check(np.abs(w - x).max() <= 0.3 * np.abs(x).max(), "nvfp4 act quant error bound")
    Hd = nx.hadamard_matrix(128)
    check(np.allclose(Hd @ Hd.T, np.eye(128), atol=1e-6), "Hadamard orthonormal")
    check(np.allclose(Hd[1], np.where(np.arange(128) % 2, -1, 1) / np.sqrt(128)), "Hadamard natural order")


def test_sinkhorn_rope():
    rng = np.random.default_rng(4)
    c = rng.standard_normal((50, 4, 4)).astype(F32)
    s = R.sinkhorn(c, 20, 1e-6)
    check(np.all(s > 0), "sinkhorn positive")
    check(np.abs(s.sum(axis=-2) - 1).max() < 1e-4, "sinkhorn columns sum to 1")
    check(np.abs(s.sum(axis=-1) - 1).max() < 1e-4, "sinkhorn rows sum to ~1")
    om = R.rope_freqs(64, 160000.0, (16.0, 32.0, 1.0, 65536.0))
    base = (160000.0 ** (-np.arange(32) * 2 / 64)).astype(F32)
    check(np.allclose(om[:16], base[:16], rtol=1e-6), "yarn keeps omega for i <= 15")
    check(np.allclose(om[25:], base[25:] / 16, rtol=1e-6), "yarn divides omega by 16 for i >= 25")
    check(np.all(om[16:25] < base[16:25]) and np.all(om[16:25] > base[16:25] / 16), "yarn ramp between 15 and 25")
    x = nx.bf16(rng.standard_normal((40, 3, 128)).astype(F32))
    pos = np.arange(1000, 1040)
    y = R.rope_apply(x, pos, om)
    check(np.array_equal(y[..., :64], x[..., :64]), "rope leaves the nope dims")
    back = R.rope_apply(y, pos, om, inverse=True)
    check(np.abs(back - x).max() <= 2.0**-6 * np.abs(x).max(), "inverse(rope(x)) == x (to bf16 rounding)")
    n0 = x[..., 64::2] ** 2 + x[..., 65::2] ** 2
    n1 = y[..., 64::2] ** 2 + y[..., 65::2] ** 2
    check(np.abs(n0 - n1).max() <= 2.0**-6 * n0.max(), "rope rotates interleaved pairs")


# ---------------------------------------------------------------------------------------------
# checks on a tiny checkpoint


def test_model(d, ids):
    m = R.Model(d)
    c = m.cfg
    T = len(ids)
    tr = []
    t0 = time.time()
    lg, XL = m.forward(ids, traces=tr)
    print("prefill of %d tokens: %.2fs" % (T, time.time() - t0))
    check(lg.shape == (T, c.vocab) and np.all(np.isfinite(lg)), "finite logits at every position")
    check(np.std(lg[-1]) > 0, "logits not constant")
    for li, t in enumerate(tr):
        r = c.ratios[li]
        for comb in t["comb"]:
            check(np.abs(comb.sum(axis=1) - 1).max() < 1e-4, "layer %d comb columns stochastic" % li)
        if r > 0:
            nb = T // r
            want = np.arange(nb)[None, :] < ((np.arange(T) + 1) // r)[:, None]
            check(t["comp"].shape[0] == nb and np.array_equal(t["vis"], want), "layer %d: entry b visible iff t >= (b+1)r-1" % li)
            check(not np.any(t["sel"] & ~t["vis"]), "layer %d: no invisible entry selected" % li)
            if r == 4:
                k = np.minimum(c.idx_topk, t["vis"].sum(axis=1))
                check(np.array_equal(t["sel"].sum(axis=1), k), "layer %d: indexer keeps min(topk, visible)" % li)
                sc = t["index_score"]
                ok = True
                for q in range(T):
                    if k[q] and k[q] < t["vis"][q].sum():
                        ok &= sc[q][t["sel"][q]].min() >= sc[q][t["vis"][q] & ~t["sel"][q]].max()
                check(ok, "layer %d: indexer keeps the highest scores" % li)
            else:
                check(np.array_equal(t["sel"], t["vis"]), "layer %d: ratio 128 attends to all visible" % li)
        if li < c.n_hash:
            _, tab = m.ck.raw("layers.%d.ffn.gate.tid2eid" % li)
            check(np.array_equal(t["experts"], np.asarray(tab)[ids]), "layer %d routes by tid2eid" % li)
        else:
            b = m.ck.f32("layers.%d.ffn.gate.bias" % li)
            v = t["scores"] + b
            top = np.sort(v, axis=1)[:, -c.topk :]
            got = np.sort(np.take_along_axis(v, t["experts"], axis=1), axis=1)
            check(np.array_equal(top, got), "layer %d routes by top-k of score + bias" % li)
        check(np.allclose(t["weights"].sum(axis=1), c.route_scale, rtol=1e-5), "layer %d weights sum to the scale" % li)

    # bad input: precise errors, no crash
    try:
        m.forward(np.array([0, c.vocab], np.int64))
        check(False, "token id >= vocab rejected")
    except ValueError as e:
        check("out of range" in str(e), "token id >= vocab rejected")
    try:
        m.ck.raw("layers.0.attn.no_such_tensor")
        check(False, "missing tensor reported")
    except KeyError as e:
        check("no_such_tensor" in str(e), "missing tensor reported by name")

    # compressor causality: entry b depends only on tokens < (b+1) r
    rng = np.random.default_rng(7)
    x = nx.bf16(rng.standard_normal((T, c.dim)).astype(F32))
    for li, r in enumerate(c.ratios):
        if r == 0 or T < 2 * r:
            continue
        p = "layers.%d.attn.compressor." % li
        full = m.compress(x, p, r, c.head_dim, m.omega_comp, "main")
        x2 = x.copy()
        x2[r:] = nx.bf16(rng.standard_normal((T - r, c.dim)).astype(F32))
        part = m.compress(x2, p, r, c.head_dim, m.omega_comp, "main")
        check(np.array_equal(full[:1], part[:1]), "layer %d: entry 0 ignores tokens >= r" % li)
        check(not np.array_equal(full[1:2], part[1:2]), "layer %d: entry 1 depends on block 1" % li)

    # causality of the whole prefill
    for t in sorted({0, min(4, T - 1), min(130, T - 1)}):
        lt, _ = m.forward(ids[: t + 1])
        diff = np.abs(lt[t] - lg[t]).max()
        check(diff <= 1e-4 * max(1.0, np.abs(lg[t]).max()), "causality at t=%d (max diff %g)" % (t, diff))

    # MTP: prefill rows, and drafting step 0 == prefill row of the extended sequence
    if m.ck.has("mtp.0.e_proj.weight"):
        ml, _ = m.mtp_prefill(XL, ids)
        check(ml.shape == (T - 1, c.vocab) and np.all(np.isfinite(ml)), "finite MTP logits")
        tr = {}
        m.mtp_block(XL[:8], ids[1:9], np.arange(8), tr)
        v = tr["scores"] + m.ck.f32("mtp.0.ffn.gate.bias")
        got = np.sort(np.take_along_axis(v, tr["experts"], axis=1), axis=1)
        check(np.array_equal(np.sort(v, axis=1)[:, -c.topk :], got), "MTP layer routes by score + bias (never hash)")
        check(tr["comp"].shape[0] == 0 and tr["sel"].shape[1] == 0, "MTP layer is window-only")
        n = min(T, 140)
        y = np.array([int(np.argmax(lg[n - 1])), 17], np.int64)
        dl = m.mtp_draft(XL[:n], ids[:n], y)
        check(np.all(np.isfinite(dl)), "finite draft logits")
        ext = np.concatenate([ids[:n], y[:1]])
        lg2, XL2 = m.forward(ext)
        ml2, _ = m.mtp_prefill(XL2, ext)
        diff = np.abs(ml2[n - 1] - dl[0]).max()
        check(diff <= 1e-4 * max(1.0, np.abs(dl[0]).max()), "draft step 0 == MTP prefill row (diff %g)" % diff)
        check(np.abs(ml2[: n - 1] - ml[: n - 1]).max() <= 1e-4 * max(1.0, np.abs(ml).max()), "MTP prefill causal")
    return m, lg


def test_cli(d, ids, lg):
    """The file conventions shared with the C engine: float32, row-major, no header."""
    tdir = os.path.join(tmpdir(), "cli")
    os.makedirs(tdir, exist_ok=True)
    T = 20
    idf = os.path.join(tdir, "ids.txt")
    with open(idf, "w") as f:
        f.write(",".join(str(int(v)) for v in ids[:T]))
    lf, mf, df, ld = (os.path.join(tdir, n) for n in ("logits.f32", "mtp.f32", "draft.f32", "layers"))
    args = ["--model", d, "--ids", "@" + idf, "--dump-logits", lf, "--dump-layers", ld, "--mtp-logits", mf]
    args += ["--next-ids", "5,6", "--draft-logits", df]
    rc = R.main(args)
    check(rc == 0, "CLI exit status")
    c = R.Config(os.path.join(d, "config.json"))
    got = np.fromfile(lf, np.float32)
    check(got.size == T * c.vocab and np.array_equal(got.reshape(T, c.vocab), lg[:T]), "--dump-logits [T, vocab] == prefill logits")
    for li in range(c.n_layers):
        x = np.fromfile(os.path.join(ld, "layer_%02d.f32" % li), np.float32)
        check(x.size == T * c.hc * c.dim, "--dump-layers layer_%02d is [T, 4, hidden]" % li)
    check(np.fromfile(mf, np.float32).size == (T - 1) * c.vocab, "--mtp-logits is [T-1, vocab]")
    check(np.fromfile(df, np.float32).size == 2 * c.vocab, "--draft-logits is [n, vocab]")
    shutil.rmtree(tdir, ignore_errors=True)


def convert_to_nvfp4(src, dst, naming="nvidia"):
    """Lossless MXFP4 -> NVFP4 copy of a checkpoint's trunk experts (formats.md §1.6); MTP stays
    MXFP4. naming "nvidia": .weight U8, .weight_scale E4M3, 0-d weight_scale_2 / input_scale;
    "canada": .weight I8, .scale E4M3, [1]-shaped scalars (formats.md §1.2, §1.4).
    Returns the number of converted projections, or -1 when some block is out of range."""
    nv = naming == "nvidia"
    ck = R.Checkpoint(src)
    cfg = R.Config(os.path.join(src, "config.json"))
    os.makedirs(dst, exist_ok=True)
    new = {}
    for li in range(cfg.n_layers):
        for e in range(cfg.n_experts):
            p = "layers.%d.ffn.experts.%d." % (li, e)
            for group in (("w1", "w3"), ("w2",)):
                scales = [np.asarray(ck.raw(p + w + ".scale")[1]).view(np.uint8) for w in group]
                res = nx.mxfp4_to_nvfp4_lossless(scales)
                if res is None:
                    return -1
                codes, ws2 = res
                shape = () if nv else (1,)
                for w, code in zip(group, codes):
                    packed = np.asarray(ck.raw(p + w + ".weight")[1])
                    new[p + w + ".weight"] = ("U8", packed.view(np.uint8)) if nv else ("I8", packed.view(np.int8))
                    new[p + w + (".weight_scale" if nv else ".scale")] = ("F8_E4M3", code)
                    new[p + w + ".weight_scale_2"] = ("F32", np.array(ws2, F32).reshape(shape))
                    new[p + w + ".input_scale"] = ("F32", np.array(1.0, F32).reshape(shape))
    wm = {}
    for name, f in ck.where.items():
        if name.startswith("layers.") and ".ffn.experts." in name:
            continue
        fn = os.path.basename(f.path)
        wm[name] = fn
        if not os.path.exists(os.path.join(dst, fn)):
            os.symlink(os.path.abspath(f.path), os.path.join(dst, fn))
    nx.write_safetensors(os.path.join(dst, "experts-nvfp4.safetensors"), new)
    for name in new:
        wm[name] = "experts-nvfp4.safetensors"
    with open(os.path.join(dst, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": wm}, f)
    with open(os.path.join(src, "config.json")) as f:
        conf = json.load(f)
    conf.setdefault("quantization_config", {})["moe_quant_algo"] = "NVFP4"
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(conf, f, indent=2)
    return len(new) // 4


def expert_dequants(m):
    out = {}
    for li in range(m.cfg.n_layers):
        for e in range(m.cfg.n_experts):
            for w in ("w1", "w2", "w3"):
                name = "layers.%d.ffn.experts.%d.%s" % (li, e, w)
                out[name] = m.ck.expert_dequant(name)
    return out


def test_nvfp4(m_mx, lg_mx, d_mx, ids):
    d_nv = os.path.join(tmpdir(), "converted-nvfp4")
    n = convert_to_nvfp4(d_mx, d_nv)
    check(n > 0, "lossless MXFP4 -> NVFP4 cast in range")
    if n <= 0:
        return
    m_nv = R.Model(d_nv)
    a, b = expert_dequants(m_mx), expert_dequants(m_nv)
    check(all(b[k][0] == "nvfp4" for k in b), "converted experts load as NVFP4")
    check(all(np.array_equal(a[k][1], b[k][1]) for k in a), "MXFP4 == converted NVFP4 dequant (bit-exact)")
    check(m_nv.ck.expert_proj("mtp.0.ffn.experts.0.w1")[0] == "mxfp4", "MTP experts stay MXFP4")
    d_cq = os.path.join(tmpdir(), "converted-canada")
    check(convert_to_nvfp4(d_mx, d_cq, "canada") == n, "canada-quant naming cast")
    m_cq = R.Model(d_cq)
    cq = expert_dequants(m_cq)
    check(all(cq[k][0] == "nvfp4" and np.array_equal(cq[k][1], b[k][1]) for k in b), "canada-quant naming (.scale E4M3, I8, [1]) loads the same NVFP4 weights")
    shutil.rmtree(d_cq, ignore_errors=True)
    T = min(len(ids), 64)
    lg_nv, _ = m_nv.forward(ids[:T])
    check(np.all(np.isfinite(lg_nv)), "finite NVFP4 (W4A4) logits")
    ref = lg_mx[:T]
    rel = np.linalg.norm(lg_nv - ref) / np.linalg.norm(ref)
    print("NVFP4 W4A4 vs MXFP4 W4A8 logits: relative L2 difference %.4f" % rel)
    check(0 < rel < 0.5, "W4A4 logits differ from W4A8 but stay close (rel %.4f)" % rel)

    # mkmodel's own NVFP4 checkpoint of the same seed: same weights when it is a lossless cast
    d_mk = mkmodel("nvfp4")
    if d_mk is None:
        print("no mkmodel NVFP4 checkpoint: skipping that comparison")
        return
    m_mk = R.Model(d_mk)
    c = expert_dequants(m_mk)
    fmts = {k: c[k][0] for k in c}
    check(all(f == "nvfp4" for f in fmts.values()), "mkmodel nvfp4: trunk experts are NVFP4")
    same = sum(np.array_equal(a[k][1], c[k][1]) for k in a)
    print("mkmodel nvfp4 experts equal to the mxfp4 dequant: %d of %d" % (same, len(a)))
    if same:
        check(same == len(a), "mkmodel nvfp4 is a lossless cast of the mxfp4 experts")
    lg_mk, _ = m_mk.forward(ids[:T])
    check(np.all(np.isfinite(lg_mk)), "finite logits on mkmodel's NVFP4 checkpoint")


def main():
    t0 = time.time()
    test_formats()
    test_quantisers()
    test_sinkhorn_rope()
    d = mkmodel("mxfp4")
    if d is None:
        print("no tiny checkpoint (needs $DSV4_BIN mkmodel); unit checks: %d, failures: %d" % (checks, len(failures)))
        if failures:
            return 1
        print("skip: dsv4 mkmodel not available")
        return 77
    rng = np.random.default_rng(11)
    vocab = R.Config(os.path.join(d, "config.json")).vocab
    ids = rng.integers(0, vocab, 300).astype(np.int64)
    m, lg = test_model(d, ids)
    test_cli(d, ids, lg)
    test_nvfp4(m, lg, d, ids)
    d8 = mkmodel("fp8")
    if d8 is not None:
        m8 = R.Model(d8)
        check(m8.ck.expert_proj("layers.0.ffn.experts.0.w1")[0] == "fp8", "fp8 checkpoint experts load as FP8")
        a, b = expert_dequants(m), expert_dequants(m8)
        same = sum(np.array_equal(a[k][1], b[k][1]) for k in a)
        print("mkmodel fp8 experts equal to the mxfp4 dequant: %d of %d" % (same, len(a)))
        if same:
            check(same == len(a), "mkmodel fp8 experts are a lossless cast of the mxfp4 experts")
        lg8, _ = m8.forward(ids[:64])
        check(np.all(np.isfinite(lg8)), "finite logits on the FP8-expert checkpoint")
        if same == len(a):
            # same weights, same FP8 activation path: the logits must be identical
            check(np.array_equal(lg8, lg[:64]), "FP8-expert logits == MXFP4 logits (lossless cast)")
    for sub in ("converted-nvfp4",):
        shutil.rmtree(os.path.join(tmpdir(), sub), ignore_errors=True)
    print("%d checks, %d failures, %.1fs" % (checks, len(failures), time.time() - t0))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
