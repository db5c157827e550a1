"""test_convert_tool.py - `dsv4 convert` end to end on `dsv4 mkmodel --format mxfp4`
checkpoints.

Checks: lossless mode is bit-exact on every tensor (its own --verify, and an
independent numpy dequantization here), passes the model contract (part of
--verify), keeps shard names and key sets plus the sidecars, leaves mtp.*
and every other tensor byte-identical, writes config/index/other files;
amax mode equals tests/convert/nvfp4_recipe.py byte for byte (on the mkmodel
checkpoint and on adversarial expert bytes); resume, mode mismatch, leftover
temporary files, SIGKILL mid-run, --sample, --naming nvidia; errors: already NVFP4, missing shard, config vs tensors,
NaN scale, full disk (tmpfs when mountable, else a file-size limit); --verify
fails on corrupted output.
"""
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nvfp4_recipe as ref  # noqa: E402

BIN = os.environ.get("DSV4_BIN", "")
TMP = os.environ.get("DSV4_TMP", "/tmp")
DATA = os.environ.get("DSV4_SHARED_DATA", "")
TOK = os.path.join(DATA, "tokenizer", "deepseek-v3-tokenizer.json")
failures = 0


def check(cond, what):
    global failures
    if not cond:
        failures += 1
        print("FAIL:", what)


def run(*args, limit=None):
    pre = []
    if limit is not None:
        pre = ["sh", "-c", 'ulimit -f %d; exec "$0" "$@"' % limit]
    p = subprocess.run(pre + [BIN] + list(args), capture_output=True, text=True)
    return p.returncode, p.stdout, p.stderr


def mkmodel(out, fmt="mxfp4", shards=3):
    rc, so, se = run("mkmodel", "--preset", "tiny", "--format", fmt, "--tokenizer", TOK,
                     "--shards", str(shards), "--out", out)
    if rc:
        sys.exit("mkmodel failed: " + se)


def shards_of(d):
    return sorted(f for f in os.listdir(d) if f.endswith(".safetensors"))


def stat_line(out, key):
    m = re.search(key, out)
    return m.groups() if m else None


def copy_ckpt(src, dst):
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)


def rewrite_experts(d, fn):
    """Applies fn(name, dtype, shape, bytes) -> bytes to trunk expert tensors of d."""
    for s in shards_of(d):
        meta, t = ref.read_st(os.path.join(d, s))
        for name, (dt, shape, b) in list(t.items()):
            if ref.EXPERT.match(name):
                t[name] = (dt, shape, fn(name, dt, shape, b))
        ref.write_st(os.path.join(d, s), meta, t)


def nvfp4_dequant(wb, sb, s2, rows, cols):
    w = np.frombuffer(wb, dtype=np.uint8).reshape(rows, cols // 2)
    nib = np.stack([w & 0x0F, w >> 4], axis=-1).reshape(rows, cols)
    val = ref.GRID[nib & 7]
    val = np.where(nib & 8, -val, val).astype(np.float32)
    sc = np.frombuffer(sb, dtype=np.uint8).reshape(rows, cols // 16)
    import ml_dtypes
    scf = sc.view(ml_dtypes.float8_e4m3fn).astype(np.float32)
    return (val * np.repeat(scf, 16, axis=1)) * np.float32(s2)


def load_all(d):
    out = {}
    for s in shards_of(d):
        out[s] = ref.read_st(os.path.join(d, s))
    return out


def test_lossless(src, dst):
    rc, so, se = run("convert", "--quiet", "--verify", src, dst)
    check(rc == 0, "lossless convert rc %d: %s" % (rc, se))
    conv = stat_line(so, r"tensors: (\d+) converted, (\d+) passed")
    ver = stat_line(so, r"verify: (\d+) converted tensors, (\d+) bit-exact")
    oth = stat_line(so, r"verify: (\d+) other tensors, (\d+) byte-identical")
    cfg = json.load(open(os.path.join(src, "config.json")))
    n_conv = cfg["num_hidden_layers"] * cfg["n_routed_experts"] * 3
    check(conv and int(conv[0]) == n_conv, "converted count %s, want %d" % (conv, n_conv))
    check(ver and ver[0] == ver[1] == str(n_conv), "bit-exact %s" % (ver,))
    check(oth and oth[0] == oth[1], "passthrough %s" % (oth,))
    check("out of range 0," in so, "no out-of-range blocks: " + so)

    # layout: same shard names, same keys plus sidecars, mtp.* and the rest identical
    check(shards_of(src) == shards_of(dst), "shard names")
    S, T = load_all(src), load_all(dst)
    total = 0
    wm = json.load(open(os.path.join(dst, "model.safetensors.index.json")))
    for s in shards_of(src):
        st, dt = S[s][1], T[s][1]
        want = set(st)
        for k in st:
            m = ref.EXPERT.match(k)
            if m and m[4] == "weight":
                p = k[: -len(".weight")]
                want |= {p + ".weight_scale_2", p + ".input_scale"}
        check(set(dt) == want, "%s key set" % s)
        for k, (dty, shape, b) in dt.items():
            total += len(b)
            check(wm["weight_map"].get(k) == s, "index entry of %s" % k)
        for k, v in st.items():
            if not ref.EXPERT.match(k):
                check(dt.get(k) == v, "passthrough %s byte-identical" % k)
        mtp = [k for k in st if k.startswith("mtp.")]
        check(all(dt[k] == st[k] for k in mtp), "%s: mtp.* byte-identical" % s)
    check(wm["metadata"]["total_size"] == total, "index total_size")
    check(len(wm["weight_map"]) == sum(len(T[s][1]) for s in T), "index covers every key")
    check(any(k.startswith("mtp.0.ffn.experts.") for s in S for k in S[s][1]), "source has mtp")

    # an independent dequantization: NVFP4 == MXFP4 exactly, w1/w3 share scale2
    allsrc = {k: v for s in S for k, v in S[s][1].items()}
    alldst = {k: v for s in T for k, v in T[s][1].items()}
    D, I = cfg["hidden_size"], cfg["moe_intermediate_size"]
    for layer in range(cfg["num_hidden_layers"]):
        for e in (0, cfg["n_routed_experts"] - 1):
            s2 = {}
            for z in (1, 2, 3):
                p = "layers.%d.ffn.experts.%d.w%d" % (layer, e, z)
                rows, cols = (D, I) if z == 2 else (I, D)
                a = ref.dequant_mxfp4(allsrc[p + ".weight"][2], allsrc[p + ".scale"][2], rows, cols)
                s2[z] = np.frombuffer(alldst[p + ".weight_scale_2"][2], dtype=np.float32)[0]
                b = nvfp4_dequant(alldst[p + ".weight"][2], alldst[p + ".scale"][2], s2[z],
                                  rows, cols)
                check(np.array_equal(a.view(np.uint32), b.view(np.uint32)), p + " bit-exact")
                check(alldst[p + ".weight"][0] == "U8" and alldst[p + ".scale"][0] == "F8_E4M3",
                      p + " dtypes")
                check(alldst[p + ".input_scale"][2] == np.float32(1).tobytes(), p + " input_scale")
                check(float(s2[z]) == 2.0 ** round(np.log2(s2[z])), p + " scale2 power of two")
            check(s2[1] == s2[3], "w1/w3 share weight_scale_2 (layer %d expert %d)" % (layer, e))

    c2 = json.load(open(os.path.join(dst, "config.json")))
    q = c2["quantization_config"]
    check(q["moe_quant_algo"] == "NVFP4" and q["quant_method"] == "fp8", "config quant")
    check(c2["expert_dtype"] == "fp4", "config expert_dtype")
    check(c2["hidden_size"] == cfg["hidden_size"], "config keeps the rest")
    for f in ("tokenizer.json", "generation_config.json", "encoding/README.md"):
        if os.path.exists(os.path.join(src, f)):
            check(open(os.path.join(src, f), "rb").read() == open(os.path.join(dst, f), "rb").read(),
                  f + " copied")


def test_amax(src, work, tag, max_rel=0.2):
    out, exp = os.path.join(work, "amax-" + tag), os.path.join(work, "ref-" + tag)
    rc, so, se = run("convert", "--quiet", "--mode", "amax", "--verify", "--threads", "2", src, out)
    check(rc == 0, "amax convert (%s) rc %d: %s" % (tag, rc, se))
    ref.convert(src, exp)
    for s in shards_of(src):
        a = open(os.path.join(out, s), "rb").read()
        b = open(os.path.join(exp, s), "rb").read()
        check(a == b, "amax %s: %s byte-equal to the numpy recipe" % (tag, s))
    rel = stat_line(so, r"mean rel err ([0-9.e+-]+)")
    check(rel and 0.0 < float(rel[0]) < max_rel, "amax is lossy but close: %s" % (rel,))
    return so


def test_resume(src, dst):
    before = {s: open(os.path.join(dst, s), "rb").read() for s in shards_of(dst)}
    rc, so, se = run("convert", "--quiet", src, dst)
    check(rc == 0 and "(0 written, 3 already complete)" in so, "resume skips: " + so + se)
    victim = shards_of(dst)[1]
    os.remove(os.path.join(dst, victim))
    with open(os.path.join(dst, victim + ".tmp"), "wb") as f:
        f.write(b"half-written garbage")
    rc, so, se = run("convert", "--quiet", src, dst)
    check(rc == 0 and "(1 written, 2 already complete)" in so, "resume redoes one: " + so + se)
    check(open(os.path.join(dst, victim), "rb").read() == before[victim], "rewritten shard equal")
    check(not [f for f in os.listdir(dst) if f.endswith(".tmp")], "no temporary files left")
    rc, so, se = run("convert", "--quiet", "--mode", "amax", src, dst)
    check(rc == 1 and "converted with --mode lossless" in se, "mode mismatch refused: " + se)


def test_kill(src, dst, work):
    """SIGKILL at various moments: a final name only ever holds a complete
    shard, and a rerun finishes with the same bytes as an uninterrupted run."""
    import time
    good = {s: open(os.path.join(dst, s), "rb").read() for s in shards_of(dst)}
    for i, delay in enumerate((0.05, 0.15, 0.3)):
        out = os.path.join(work, "killed%d" % i)
        p = subprocess.Popen([BIN, "convert", "--quiet", "--threads", "1", src, out],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        p.kill()
        p.wait()
        for f in (shards_of(out) if os.path.isdir(out) else []):
            meta, t = ref.read_st(os.path.join(out, f))
            check(open(os.path.join(out, f), "rb").read() == good[f],
                  "killed run %d: %s complete" % (i, f))
        rc, so, se = run("convert", "--quiet", src, out)
        check(rc == 0, "rerun after kill: " + se)
        for f in good:
            check(open(os.path.join(out, f), "rb").read() == good[f], "rerun %d: %s" % (i, f))
        check(not [f for f in os.listdir(out) if f.endswith(".tmp")], "no .tmp after rerun")


def test_naming(src, dst, work):
    """--naming nvidia: .weight_scale and 0-d scalars, the same bytes, the
    contract accepts it (part of --verify); mixing namings in one DST fails."""
    nv = os.path.join(work, "nvidia")
    rc, so, se = run("convert", "--quiet", "--naming", "nvidia", "--verify", src, nv)
    check(rc == 0 and "naming: nvidia" in so, "nvidia naming rc %d: %s" % (rc, se))
    A, B = load_all(dst), load_all(nv)
    for s in A:
        ta, tb = A[s][1], B[s][1]
        check(len(ta) == len(tb), s + " same tensor count")
        for k, (dt, shape, b) in ta.items():
            m = ref.EXPERT.match(k)
            kb = k[: -len(".scale")] + ".weight_scale" if m and m[4] == "scale" else k
            if k.endswith((".weight_scale_2", ".input_scale")):
                check(tb[k][1] == [] and tb[k][2] == b, k + " 0-d, same value")
            else:
                check(kb in tb and tb[kb][2] == b, k + " same bytes as " + kb)
    rc, so, se = run("convert", "--quiet", "--naming", "nvidia", src, dst)
    check(rc == 1 and "remove it" in se, "mixed naming refused: " + se)
    # the engine loads both spellings and computes the same greedy tokens
    if run("generate", "--help")[0] == 0:
        toks = []
        for d in (dst, nv):
            rc, so, se = run("generate", "--model", d, "--prompt-ids", "0,15,27", "--max-tokens",
                             "4", "--no-stop", "--threads", "1")
            m = re.search(r"^tokens: ([0-9 ]+)$", so + se, re.M)
            check(rc == 0 and m, "generate on %s: %s" % (d, se[-300:]))
            toks.append(m[1] if m else None)
        check(toks[0] == toks[1], "same tokens with both namings: %s" % toks)


def test_errors(src, work):
    nv = os.path.join(work, "nvfp4")
    mkmodel(nv, "nvfp4", 2)
    rc, so, se = run("convert", "--quiet", nv, os.path.join(work, "o1"))
    check(rc == 1 and "already NVFP4" in se, "already NVFP4: " + se)

    miss = os.path.join(work, "missing")
    copy_ckpt(src, miss)
    gone = shards_of(miss)[1]
    os.remove(os.path.join(miss, gone))
    rc, so, se = run("convert", "--quiet", miss, os.path.join(work, "o2"))
    check(rc == 1 and gone in se, "missing shard named: " + se)

    bad = os.path.join(work, "badcfg")
    copy_ckpt(src, bad)
    cfg = json.load(open(os.path.join(bad, "config.json")))
    cfg["moe_intermediate_size"] = cfg["moe_intermediate_size"] // 2
    json.dump(cfg, open(os.path.join(bad, "config.json"), "w"), indent=2)
    rc, so, se = run("convert", "--quiet", bad, os.path.join(work, "o3"))
    check(rc == 1 and "config.json" in se and "shape" in se, "config vs tensors: " + se)
    check(not os.path.exists(os.path.join(work, "o3", shards_of(src)[0])), "nothing written")

    few = os.path.join(work, "fewexperts")
    copy_ckpt(src, few)
    cfg = json.load(open(os.path.join(few, "config.json")))
    cfg["n_routed_experts"] = cfg["n_routed_experts"] + 2
    json.dump(cfg, open(os.path.join(few, "config.json"), "w"), indent=2)
    rc, so, se = run("convert", "--quiet", few, os.path.join(work, "o4"))
    check(rc == 1 and "missing" in se, "expert missing for the config: " + se)

    nan = os.path.join(work, "nan")
    copy_ckpt(src, nan)
    hit = []

    def poison(name, dt, shape, b):
        if name.endswith(".scale") and not hit:
            hit.append(name)
            return b"\xff" + b[1:]
        return b

    rewrite_experts(nan, poison)
    rc, so, se = run("convert", "--quiet", nan, os.path.join(work, "o5"))
    check(rc == 1 and "0xFF" in se and hit[0] in se, "NaN scale: " + se)


def test_full_disk(src, work):
    small = os.path.join(work, "small")
    os.makedirs(small)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=100m", "tmpfs", small],
                             capture_output=True).returncode == 0
    try:
        dst = os.path.join(small, "out")
        if mounted:
            rc, so, se = run("convert", "--quiet", src, dst)
        else:
            rc, so, se = run("convert", "--quiet", src, dst, limit=40 * 1024 * 2)
        check(rc == 1, "full disk fails (%s)" % ("tmpfs" if mounted else "ulimit -f"))
        check("no space" in se.lower() or "too large" in se.lower(), "full disk message: " + se)
        left = os.listdir(dst) if os.path.isdir(dst) else []
        check(not [f for f in left if f.endswith(".tmp")], "no temporary file left: %s" % left)
        done = [f for f in left if f.endswith(".safetensors")]
        for f in done:  # whatever is under a final name is a complete shard
            meta, t = ref.read_st(os.path.join(dst, f))
            check(meta.get("dsv4_convert") == "lossless", f + " complete")
        check(len(done) < 3, "stopped early: %s" % done)
    finally:
        if mounted:
            subprocess.run(["umount", small])


def test_oor_and_corruption(src, work):
    adv = os.path.join(work, "adversarial")
    copy_ckpt(src, adv)
    rng = np.random.default_rng(7)

    def scramble(name, dt, shape, b):
        n = len(b)
        if name.endswith(".weight"):
            return rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        s = rng.integers(127 - 30, 127 + 3, n, dtype=np.uint8)
        s[rng.integers(0, n, 3)] = 0  # the all-zero-block sentinel
        return s.tobytes()

    rewrite_experts(adv, scramble)
    dst = os.path.join(work, "adv-lossless")
    rc, so, se = run("convert", "--quiet", "--verify", adv, dst)
    check(rc == 0, "adversarial lossless rc %d: %s" % (rc, se))
    oor = stat_line(so, r"out of range (\d+)")
    ver = stat_line(so, r"verify: (\d+) converted tensors, (\d+) bit-exact")
    check(oor and int(oor[0]) > 0, "out-of-range blocks counted: %s" % (oor,))
    check(ver and int(ver[1]) < int(ver[0]), "not every tensor bit-exact: %s" % (ver,))
    test_amax(adv, work, "adversarial", max_rel=1.0)

    # --verify notices a changed byte in a passthrough tensor
    s = shards_of(dst)[0]
    meta, t = ref.read_st(os.path.join(dst, s))
    k = next(k for k in t if k.endswith("attn_norm.weight"))
    dt, shape, b = t[k]
    t[k] = (dt, shape, bytes([b[0] ^ 1]) + b[1:])
    ref.write_st(os.path.join(dst, s), meta, t)
    rc, so, se = run("convert", "--quiet", "--verify", adv, dst)
    check(rc == 1 and "verification failed" in se, "corruption detected: " + so + se)


def main():
    if not BIN or not os.path.exists(BIN) or not os.path.exists(TOK):
        print("skip: no dsv4 binary or tokenizer")
        return 77
    rc, so, se = run("mkmodel", "--help")
    if rc != 0:
        print("skip: dsv4 mkmodel unavailable")
        return 77
    work = os.path.join(TMP, "convert")
    os.makedirs(work, exist_ok=True)
    src, dst = os.path.join(work, "src"), os.path.join(work, "dst")
    mkmodel(src)
    os.makedirs(os.path.join(src, "encoding"))
    with open(os.path.join(src, "encoding", "README.md"), "w") as f:
        f.write("other files and folders are copied verbatim\n")
    test_lossless(src, dst)
    test_amax(src, work, "mkmodel")
    test_resume(src, dst)
    test_kill(src, dst, work)
    test_naming(src, dst, work)
    rc, so, se = run("convert", "--quiet", "--sample", "5", src, dst)
    check(rc == 0 and "verify: 5 converted tensors, 5 bit-exact" in so, "--sample 5: " + so + se)
    test_errors(src, work)
    test_full_disk(src, work)
    test_oor_and_corruption(src, work)
    print("%d failures" % failures)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
