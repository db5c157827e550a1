#!/usr/bin/env python3
"""test_mkmodel.py - `dsv4 mkmodel` and `dsv4 plan` end to end.

Checks: determinism (same seed -> identical bytes, another seed -> other
bytes); every format binds to the contract (`dsv4 plan DIR` succeeds) with
index totals equal to the plan's; shards (names, embedding first, MTP last,
same tensors as one shard); tokenizer files copied; config keys per format;
FP8 linears use the E4M3 range per 128x128 block; embed/head/linear spreads;
the NVFP4 and FP8 experts dequantise to exactly the MXFP4 values of the same
seed, w1/w3 share weight_scale_2, input_scale 1.0; values finite and in
range, tid2eid rows distinct; a checkpoint edited by header surgery reports
every mismatch at once; `dsv4 plan --json` parses and its per-rank bytes
add up for V4-Pro (1.6 T params, ~49.8 B active); bad arguments and configs
get a message and exit 1 or 2, never a crash.
"""
import hashlib
import json
import os
import struct
import subprocess
import sys

import ml_dtypes
import numpy as np

BIN = os.environ.get("DSV4_BIN", "./dsv4")
DATA = os.environ.get("DSV4_SHARED_DATA", "../shared/data")
TMP = os.environ.get("DSV4_TMP", "/tmp")
TOK = os.path.join(DATA, "tokenizer", "deepseek-v3-tokenizer.json")
TOK_CFG = os.path.join(DATA, "tokenizer", "deepseek-v3-tokenizer_config.json")

failures = 0
checks = 0


def check(cond, msg):
    global failures, checks
    checks += 1
    if not cond:
        failures += 1
        print("FAIL:", msg, file=sys.stderr)


def run(*args, ok=True):
    r = subprocess.run([BIN, *args], capture_output=True, text=True)
    if ok and r.returncode != 0:
        print(r.stderr, file=sys.stderr)
        raise SystemExit("command failed: dsv4 " + " ".join(args))
    return r


def mkmodel(out, fmt="nvfp4", seed=1, shards=1):
    path = os.path.join(TMP, out)
    run("mkmodel", "--preset", "tiny", "--format", fmt, "--tokenizer", TOK, "--seed",
        str(seed), "--shards", str(shards), "--out", path)
    return path


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def read_st(path):
    """Header dict and data bytes of a safetensors file (dtype-agnostic)."""
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


NP = {"BF16": ml_dtypes.bfloat16, "F32": np.float32, "I64": np.int64, "U8": np.uint8,
      "I8": np.uint8, "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E8M0": np.uint8}


class Ckpt:
    def __init__(self, d):
        self.dir = d
        self.index = json.load(open(os.path.join(d, "model.safetensors.index.json")))
        self.files = {}

    def get(self, name):
        shard = self.index["weight_map"][name]
        if shard not in self.files:
            self.files[shard] = read_st(os.path.join(self.dir, shard))
        hdr, data = self.files[shard]
        e = hdr[name]
        b, t = e["data_offsets"]
        return np.frombuffer(data[b:t], dtype=NP[e["dtype"]]).reshape(e["shape"]), e["dtype"]


E2M1 = np.array([0, .5, 1, 1.5, 2, 3, 4, 6, -0., -.5, -1, -1.5, -2, -3, -4, -6], np.float64)


def unpack(w):
    q = np.empty((w.shape[0], w.shape[1] * 2), np.uint8)
    q[:, 0::2] = w & 15
    q[:, 1::2] = w >> 4
    return E2M1[q]


def deq_mx(w, s):
    return unpack(w) * np.repeat(np.exp2(s.astype(np.float64) - 127), 32, axis=1)


def deq_nv(w, s, s2):
    return unpack(w) * np.repeat(s.astype(np.float64), 16, axis=1) * float(s2.reshape(-1)[0])


def deq_fp8(w, s):
    rows, cols = w.shape
    big = np.repeat(np.repeat(s.astype(np.float64), 128, 0), 128, 1)[:rows, :cols]
    return w.astype(np.float64) * big


def test_determinism():
    a = mkmodel("det-a", seed=7)
    b = mkmodel("det-b", seed=7)
    c = mkmodel("det-c", seed=8)
    names = sorted(os.listdir(a))
    check(names == sorted(os.listdir(b)), "same file set")
    for n in names:
        check(digest(os.path.join(a, n)) == digest(os.path.join(b, n)), "same seed, same " + n)
    shard = "model-00001-of-00001.safetensors"
    check(digest(os.path.join(a, shard)) != digest(os.path.join(c, shard)),
          "another seed changes the weights")
    check(digest(os.path.join(a, "tokenizer.json")) == digest(TOK), "tokenizer.json copied")
    check(digest(os.path.join(a, "tokenizer_config.json")) == digest(TOK_CFG),
          "tokenizer_config.json copied from beside the tokenizer")
    cfg = json.load(open(os.path.join(a, "config.json")))
    check(cfg["vocab_size"] == 129280, "vocab from the DeepSeek tokenizer = 129280")
    check(cfg["quantization_config"].get("moe_quant_algo") == "NVFP4", "nvfp4 config key")
    check(json.load(open(os.path.join(a, "generation_config.json")))["eos_token_id"] == 1,
          "generation_config.json")


def plan_json(*args):
    r = run("plan", *args, "--json")
    return json.loads(r.stdout)


def test_formats():
    dirs = {}
    for fmt in ("mxfp4", "nvfp4", "fp8"):
        d = mkmodel("fmt-" + fmt, fmt=fmt, seed=3)
        dirs[fmt] = d
        r = run("plan", d, "--ranks", "2", "--tensors", ok=False)
        check(r.returncode == 0, fmt + " checkpoint binds to the contract: " + r.stderr[-500:])
        check("L.attn.wq_b.weight" in r.stdout and "by expert" in r.stdout, "--tensors listing")
        p = plan_json(d, "--ranks", "2")
        idx = json.load(open(os.path.join(d, "model.safetensors.index.json")))
        check(p["tensor_count"] == len(idx["weight_map"]), fmt + " tensor count")
        check(p["total_bytes"] == idx["metadata"]["total_size"], fmt + " total_size")
        cfg = json.load(open(os.path.join(d, "config.json")))
        check(cfg["expert_dtype"] == ("fp8" if fmt == "fp8" else "fp4"), fmt + " expert_dtype")

    mx, nv, f8 = Ckpt(dirs["mxfp4"]), Ckpt(dirs["nvfp4"]), Ckpt(dirs["fp8"])
    for layer in ("layers.0", "layers.3"):
        for e in (0, 15):
            for k in ("w1", "w2", "w3"):
                p = "%s.ffn.experts.%d.%s" % (layer, e, k)
                w, dt = mx.get(p + ".weight")
                s, _ = mx.get(p + ".scale")
                ref = deq_mx(w, s)
                check(dt == "I8", p + " MXFP4 payload I8")
                nw, ndt = nv.get(p + ".weight")
                ns, nsdt = nv.get(p + ".scale")
                s2, _ = nv.get(p + ".weight_scale_2")
                ins, _ = nv.get(p + ".input_scale")
                check(ndt == "U8" and nsdt == "F8_E4M3", p + " NVFP4 dtypes")
                check(np.array_equal(deq_nv(nw, ns, s2), ref), p + " NVFP4 == MXFP4 values")
                check(float(ins.reshape(-1)[0]) == 1.0, p + " input_scale 1.0")
                fw, _ = f8.get(p + ".weight")
                fs, fsdt = f8.get(p + ".scale")
                check(fsdt == "F32", p + " FP8 expert scales F32")
                check(np.array_equal(deq_fp8(fw, fs), ref), p + " FP8 == MXFP4 values")
                amax = np.abs(ref).max()
                check(0.01 < amax < 1.0, p + " weights ~ N(0, 1/fan_in): amax %g" % amax)
            a, _ = nv.get("%s.ffn.experts.%d.w1.weight_scale_2" % (layer, e))
            b, _ = nv.get("%s.ffn.experts.%d.w3.weight_scale_2" % (layer, e))
            check(a.tobytes() == b.tobytes(), "w1/w3 share weight_scale_2")
    # MTP experts stay MXFP4 in the NVFP4 layout
    w, dt = nv.get("mtp.0.ffn.experts.2.w1.weight")
    s, sdt = nv.get("mtp.0.ffn.experts.2.w1.scale")
    check(dt == "I8" and sdt == "F8_E8M0", "MTP experts stay MXFP4")
    check("mtp.0.ffn.experts.2.w1.weight_scale_2" not in nv.index["weight_map"], "no MTP sidecars")
    # plain tensors
    cfg = json.load(open(os.path.join(dirs["mxfp4"], "config.json")))
    for name in mx.index["weight_map"]:
        v, dt = mx.get(name)
        if dt in ("BF16", "F32"):
            v = v.astype(np.float64)
            check(np.isfinite(v).all(), name + " finite")
            if name.endswith("norm.weight"):
                check(abs(v.mean() - 1) < 0.05, name + " near 1")
    # FP8 linears: E8M0 scale per 128x128 block = 2^ceil(log2(amax/448)), so
    # every block's amax / scale lies in (224, 448] and rounds to [224, 448]
    # in E4M3; values ~ N(0, 1/fan_in)
    for name in ("layers.0.attn.wq_a", "layers.2.attn.wo_b", "layers.1.ffn.shared_experts.w2",
                 "mtp.0.e_proj"):
        w, dt = mx.get(name + ".weight")
        sc, sdt = mx.get(name + ".scale")
        check(dt == "F8_E4M3" and sdt == "F8_E8M0", name + " FP8 dtypes")
        q = np.abs(w.astype(np.float64))
        rows, cols = q.shape
        check(sc.shape == ((rows + 127) // 128, (cols + 127) // 128), name + " scale shape")
        bmax = np.array([[q[i:i + 128, j:j + 128].max() for j in range(0, cols, 128)]
                         for i in range(0, rows, 128)])
        check(((bmax >= 224) & (bmax <= 448)).all(), name + " blocks use the E4M3 range: %s" %
              bmax.min())
        sd = deq_fp8(w, np.exp2(sc.astype(np.float64) - 127)).std()
        check(abs(sd * np.sqrt(cols) - 1) < 0.1, name + " sd %g ~ 1/sqrt(fan_in)" % sd)
    emb = mx.get("embed.weight")[0].astype(np.float64)
    head = mx.get("head.weight")[0].astype(np.float64)
    check(abs(emb.std() - 1) < 0.05, "embed ~ N(0, 1): sd %g" % emb.std())
    check(abs(head.std() * np.sqrt(cfg["hidden_size"]) - 1) < 0.05,
          "head ~ N(0, 1/D): sd %g" % head.std())
    t, dt = mx.get("layers.1.ffn.gate.tid2eid")
    check(dt == "I64" and t.shape == (129280, 6), "tid2eid shape")
    srt = np.sort(t, axis=1)
    check((srt[:, 1:] != srt[:, :-1]).all(), "tid2eid rows of distinct experts")
    check(t.min() >= 0 and t.max() < cfg["n_routed_experts"], "tid2eid ids < E")
    check(len(np.unique(t[:, 0])) == cfg["n_routed_experts"], "tid2eid uses every expert")
    return dirs


def test_shards(one):
    d = mkmodel("shards", fmt="mxfp4", seed=3, shards=3)
    names = sorted(f for f in os.listdir(d) if f.endswith(".safetensors"))
    check(names == ["model-0000%d-of-00003.safetensors" % i for i in (1, 2, 3)], str(names))
    wm = json.load(open(os.path.join(d, "model.safetensors.index.json")))["weight_map"]
    check(wm["embed.weight"] == names[0], "embedding in the first shard")
    mtp = {v for k, v in wm.items() if k.startswith("mtp.")}
    check(mtp == {names[2]}, "MTP alone in the last shard")
    check(all(v != names[2] for k, v in wm.items() if not k.startswith("mtp.")),
          "nothing else in the MTP shard")
    check(wm["layers.0.attn.wq_a.weight"] == wm["layers.0.ffn.experts.3.w2.scale"],
          "a layer stays in one shard")
    r = run("plan", d, "--ranks", "3", ok=False)
    check(r.returncode == 0, "sharded checkpoint binds: " + r.stderr[-300:])
    a, b = Ckpt(one), Ckpt(d)
    check(set(a.index["weight_map"]) == set(wm), "same tensors as one shard")
    for n in ("embed.weight", "layers.2.attn.wq_b.weight", "mtp.0.ffn.experts.1.w2.weight",
              "hc_head_fn"):
        check(a.get(n)[0].tobytes() == b.get(n)[0].tobytes(), n + " independent of sharding")
    r = run("mkmodel", "--preset", "tiny", "--tokenizer", TOK, "--shards", "50", "--out",
            os.path.join(TMP, "too-many"), ok=False)
    check(r.returncode != 0 and "shards" in r.stderr, "too many shards refused")
    # --config: any config file, format overridden, two shards (trunk | MTP)
    d2 = os.path.join(TMP, "from-config")
    run("mkmodel", "--config", os.path.join(one, "config.json"), "--format", "fp8", "--seed",
        "3", "--shards", "2", "--out", d2)
    r = run("plan", d2, "--ranks", "2", ok=False)
    check(r.returncode == 0, "--config checkpoint binds: " + r.stderr[-300:])
    cfg = json.load(open(os.path.join(d2, "config.json")))
    check(cfg["expert_dtype"] == "fp8", "--format overrides the config's")
    wm = json.load(open(os.path.join(d2, "model.safetensors.index.json")))["weight_map"]
    check({v for k, v in wm.items() if k.startswith("mtp.")} == {"model-00002-of-00002.safetensors"},
          "two shards: MTP in the second")
    check(not os.path.exists(os.path.join(d2, "tokenizer.json")), "no tokenizer without --tokenizer")
    small = json.load(open(os.path.join(one, "config.json")))
    small["vocab_size"] = 1000
    json.dump(small, open(os.path.join(TMP, "small-vocab.json"), "w"))
    r = run("mkmodel", "--config", os.path.join(TMP, "small-vocab.json"), "--tokenizer", TOK,
            "--out", os.path.join(TMP, "small-vocab"), ok=False)
    check(r.returncode != 0 and "vocab_size 1000" in r.stderr, "tokenizer larger than vocab refused")


def rewrite(path, hdr, data):
    meta = hdr.pop("__metadata__", None)
    out = {"__metadata__": meta} if meta else {}
    out.update(hdr)
    js = json.dumps(out, separators=(",", ":")).encode()
    js += b" " * (-len(js) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(js)) + js + data)


def test_mismatches(src):
    d = os.path.join(TMP, "broken")
    subprocess.run(["cp", "-r", src, d], check=True)
    shard = os.path.join(d, "model-00001-of-00001.safetensors")
    hdr, data = read_st(shard)
    # delete the tensor stored last (so the data section stays tiled)
    last = max((k for k in hdr if k != "__metadata__"), key=lambda k: hdr[k]["data_offsets"][1])
    data = data[:hdr[last]["data_offsets"][0]]
    del hdr[last]
    hdr["layers.2.attn.wkv.weigth"] = hdr.pop("layers.2.attn.wkv.weight")       # rename
    hdr["layers.0.attn.kv_norm.weight"]["dtype"] = "F16"                         # retype
    hdr["layers.3.ffn.gate.bias"]["shape"] = [4, 4]                              # reshape
    hdr["layers.1.attn.extra"] = {"dtype": "F32", "shape": [2],                  # unexpected
                                  "data_offsets": [len(data), len(data) + 8]}
    data += b"\0" * 8
    rewrite(shard, hdr, data)
    idx_path = os.path.join(d, "model.safetensors.index.json")
    idx = json.load(open(idx_path))
    wm = idx["weight_map"]
    del wm[last]
    wm["layers.2.attn.wkv.weigth"] = wm.pop("layers.2.attn.wkv.weight")
    wm["layers.1.attn.extra"] = wm["embed.weight"]
    json.dump(idx, open(idx_path, "w"))
    r = run("plan", d, "--ranks", "2", ok=False)
    err = r.stderr
    check(r.returncode == 1, "mismatching checkpoint refused")
    for needle in ("missing tensor " + last, "missing tensor layers.2.attn.wkv.weight",
                   "unexpected tensor layers.2.attn.wkv.weigth",
                   "unexpected tensor layers.1.attn.extra",
                   "wrong dtype for layers.0.attn.kv_norm.weight: F16",
                   "wrong shape for layers.3.ffn.gate.bias: [4, 4]", "6 problem(s)"):
        check(needle in err, "reported: " + needle + "\n" + err)


def test_nvfp4_variants(src):
    """NVIDIA's spellings: .weight_scale, [] scalars, I8 payloads; all bind."""
    d = os.path.join(TMP, "variants")
    subprocess.run(["cp", "-r", src, d], check=True)
    shard = os.path.join(d, "model-00001-of-00001.safetensors")
    hdr, data = read_st(shard)
    renames = {}
    for k in list(hdr):
        if not k.startswith("layers.") or ".experts." not in k:
            continue
        e = hdr[k]
        if k.endswith(".scale") and ".w2." not in k:
            renames[k] = k[:-len(".scale")] + ".weight_scale"
        if k.endswith("weight_scale_2") or k.endswith("input_scale"):
            e["shape"] = []
        if k.endswith(".w2.weight"):
            e["dtype"] = "I8"
    for old, new in renames.items():
        hdr[new] = hdr.pop(old)
    rewrite(shard, hdr, data)
    idx_path = os.path.join(d, "model.safetensors.index.json")
    idx = json.load(open(idx_path))
    for old, new in renames.items():
        idx["weight_map"][new] = idx["weight_map"].pop(old)
    json.dump(idx, open(idx_path, "w"))
    check(len(renames) > 0, "renamed some scales")
    r = run("plan", d, "--ranks", "2", ok=False)
    check(r.returncode == 0, "NVFP4 naming variants bind: " + r.stderr[-500:])


def all_tensors(d):
    ck = Ckpt(d)
    out = {}
    for k, f in ck.index["weight_map"].items():
        if f not in ck.files:
            ck.files[f] = read_st(os.path.join(d, f))
        hdr, data = ck.files[f]
        b, t = hdr[k]["data_offsets"]
        out[k] = (hdr[k]["dtype"], hdr[k]["shape"], data[b:t])
    return out


def test_convert_agrees(mx_dir, nv_dir):
    """`dsv4 convert` (lossless) of the MXFP4 checkpoint == mkmodel's NVFP4 one."""
    out = os.path.join(TMP, "converted")
    r = run("convert", mx_dir, out, ok=False)
    check(r.returncode == 0, "dsv4 convert of a mkmodel checkpoint: " + r.stderr[-300:])
    if r.returncode:
        return
    a, b = all_tensors(nv_dir), all_tensors(out)
    check(set(a) == set(b), "converted key set == mkmodel NVFP4 key set")
    diff = [k for k in a if k in b and a[k] != b[k]]
    check(not diff, "converted tensors bit-identical to mkmodel NVFP4: %s" % diff[:5])


def test_plan_json():
    for n in (3, 8):
        check_plan_json(n)
    r = run("plan", "--config", os.path.join(DATA, "v4-pro-config.json"), "--ranks", "0",
            ok=False)
    check(r.returncode == 2, "--ranks 0 refused")


def check_plan_json(n):
    p = plan_json("--config", os.path.join(DATA, "v4-pro-config.json"), "--ranks", str(n),
                  "--device-mem", "288GiB")
    for k in ("total_params", "active_params_per_token", "ranks", "kv_bytes_per_token"):
        check(k in p, "json key " + k)
    check(1.55e12 < p["total_params"] < 1.65e12, "1.6 T total params")
    check(49.0e9 < p["active_params_per_token"] < 50.0e9, "~49.x B active")
    check(len(p["ranks"]) == n, "%d ranks" % n)
    for cat, total in p["bytes"].items():
        split = sum(r[cat] - r["replicated"][cat] for r in p["ranks"])
        check(split + p["ranks"][0]["replicated"][cat] == total, "per-rank sums == total " + cat)
    for r in p["ranks"]:
        check(sum(r[c] for c in p["bytes"]) == r["total"], "rank total")
        check(r["kv_tokens"] > 0, "KV fits in 288 GiB")
    check(abs(p["kv_bytes_per_token"] - 5511.4375) < 1e-6, "KV bytes per token")
    check(sum(p["bytes"].values()) == 864704792696, "V4-Pro total_size")


def test_bad_input(one):
    """Every bad argument: a message naming the problem and exit 1 or 2, never a signal."""
    pro = os.path.join(DATA, "v4-pro-config.json")
    cfg = json.load(open(os.path.join(one, "config.json")))
    # NVFP4 trunk (blocks of 16) whose MTP experts stay MXFP4 (blocks of 32)
    cfg["hidden_size"] = 48
    cfg["quantization_config"]["moe_quant_algo"] = "NVFP4"
    h48 = os.path.join(TMP, "h48-nvfp4.json")
    json.dump(cfg, open(h48, "w"))
    cfg["quantization_config"].pop("moe_quant_algo")
    cfg["expert_dtype"] = "fp8"
    h48fp8 = os.path.join(TMP, "h48-fp8.json")
    json.dump(cfg, open(h48fp8, "w"))
    out = os.path.join(TMP, "bad-out")
    cases = [
        (("plan", "--config", pro, "--ranks"), 2, "'--ranks' needs a value"),
        (("plan", "--config"), 2, "'--config' needs a value"),
        (("plan", "--config", pro, "--device-mem", "12 parsecs"), 2, "bad size"),
        (("plan", "--config", pro, "--reserve", "-1G"), 2, "bad size"),
        (("plan", "--config", pro, "--ranks", "4097"), 2, "bad --ranks"),
        (("plan", "--config", os.path.join(TMP, "no-such.json")), 1, "no-such.json"),
        (("plan", os.path.join(TMP, "no-such-dir")), 1, "no-such-dir"),
        (("plan", "--config", h48), 1, "multiples of 32"),
        (("mkmodel", "--preset"), 2, "'--preset' needs a value"),
        (("mkmodel", "--preset", "tiny", "--tokenizer", TOK, "--out"), 2, "'--out' needs a value"),
        (("mkmodel", "--bogus"), 2, "unknown option '--bogus'"),
        (("mkmodel", "--preset", "tiny", "--bogus", "x"), 2, "unknown option '--bogus'"),
        (("mkmodel", "--preset", "tiny", "--tokenizer", TOK, "--seed", "x", "--out", out), 2,
         "bad --seed"),
        (("mkmodel", "--preset", "tiny", "--tokenizer", TOK, "--shards", "0", "--out", out), 2,
         "bad --shards"),
        (("mkmodel", "--preset", "nope", "--tokenizer", TOK, "--out", out), 2, "unknown --preset"),
        (("mkmodel", "--preset", "tiny", "--tokenizer", pro, "--out", out), 1, "model.vocab"),
        (("mkmodel", "--preset", "tiny", "--tokenizer", TOK, "--out",
          os.path.join(TMP, "no-such-dir", "x")), 1, "cannot create"),
        (("mkmodel", "--config", h48, "--out", out), 1, "multiples of 32"),
        (("mkmodel", "--config", h48fp8, "--out", out), 1, "multiples of 32"),
        (("mkmodel", "--config", h48fp8, "--format", "mxfp4", "--out", out), 1,
         "multiples of the mxfp4 block"),
    ]
    for args, code, needle in cases:
        r = run(*args, ok=False)
        check(r.returncode == code and needle in r.stderr,
              "dsv4 %s: exit %d (want %d), stderr %r" % (" ".join(args), r.returncode, code,
                                                         r.stderr[-300:]))


def main():
    if not os.path.exists(TOK):
        print("no tokenizer at " + TOK)
        return 77
    test_determinism()
    dirs = test_formats()
    test_shards(dirs["mxfp4"])
    test_mismatches(dirs["mxfp4"])
    test_nvfp4_variants(dirs["nvfp4"])
    test_convert_agrees(dirs["mxfp4"], dirs["nvfp4"])
    test_plan_json()
    test_bad_input(dirs["mxfp4"])
    print("%d checks, %d failed" % (checks, failures), file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
