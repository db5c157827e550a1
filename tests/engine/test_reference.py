#!/usr/bin/env python3
"""test_reference: the C forward pass against the independent numpy reference
(tests/reference/dsv4_ref.py) on the tiny synthetic checkpoint, in all three expert formats.

A prompt of 140 tokens crosses ratio-4 blocks, the first ratio-128 block (entry 0 usable from
position 127) and the 128-token window.  The tiny random model is chaotic: FP32-ulp differences
(the engine's GEMMs accumulate in FP32, the reference in float64) flip a BF16 rounding now and
then and grow over layers to a few percent of the logits.  So each layer is checked on its own:
`dsv4 generate --force-layers` replaces every layer's output by the reference's after dumping the
computed one, so layer l's error is that layer's alone.  Tolerances (normalised L2 error
||c - r|| / ||r||):
  per layer, all positions:        < 5e-3   (measured 1e-8 .. 2e-3)
  per layer, worst position:       < 5e-2   (a flipped router/indexer choice or BF16 rounding)
  per layer, bitwise equal rows:   >= 85% of the positions (measured 92-98%)
  logits from the forced streams:  < 1e-5   (hc_head, norm, FP32 head)
  MTP logits (forced trunk):       < 1e-3
  recursive MTP draft logits:      < 1e-3, same argmax (3 drafting steps after the prompt)
The free-running error is printed for information.
"""

import json
import os
import subprocess
import sys

try:
    import numpy as np
except ImportError:
    print("numpy missing")
    sys.exit(77)

SRC = os.environ.get("DSV4_SRCDIR", os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("DSV4_BIN", "dsv4")
DATA = os.environ.get("DSV4_SHARED_DATA", os.path.join(SRC, "..", "shared", "data"))
TMP = os.environ.get("DSV4_TMP", "/tmp")
REF = os.path.join(SRC, "tests", "reference", "dsv4_ref.py")
TOK = os.path.join(DATA, "tokenizer", "deepseek-v3-tokenizer.json")

failures = 0


def check(cond, msg):
    global failures
    if not cond:
        failures += 1
        print("FAIL:", msg)
    else:
        print("ok:", msg)


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        print("command failed:", " ".join(cmd), r.stdout[-2000:], r.stderr[-2000:])
        raise SystemExit(1)
    return r.stdout


def ne(a, b):
    d = np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / (d if d > 0 else 1.0))


def write_variant(src, dst):
    """The NVFP4 checkpoint in its other accepted spelling: block scales under .weight_scale,
    global scales as shape [] and packed weights as I8 (same bytes)."""
    import struct

    os.makedirs(dst, exist_ok=True)
    for fn in os.listdir(src):
        data = open(os.path.join(src, fn), "rb").read()
        if fn.endswith(".safetensors"):
            n = struct.unpack("<Q", data[:8])[0]
            hdr = json.loads(data[8:8 + n])
            out = {}
            for k, v in hdr.items():
                if ".ffn.experts." in k and k.startswith("layers.") and "dtype" in v:
                    if k.endswith(".scale") and v["dtype"] == "F8_E4M3":
                        k = k[: -len(".scale")] + ".weight_scale"
                    elif k.endswith(("weight_scale_2", "input_scale")) and v["shape"] == [1]:
                        v = dict(v, shape=[])
                    elif k.endswith(".weight") and v["dtype"] == "U8":
                        v = dict(v, dtype="I8")
                out[k] = v
            h = json.dumps(out).encode()
            h += b" " * ((8 - len(h) % 8) % 8)
            data = struct.pack("<Q", len(h)) + h + data[8 + n:]
        elif fn == "model.safetensors.index.json":
            idx = json.loads(data)
            wm = {}
            for k, v in idx["weight_map"].items():
                if ".ffn.experts." in k and k.startswith("layers.") and k.endswith(".scale"):
                    k = k[: -len(".scale")] + ".weight_scale"
                wm[k] = v
            idx["weight_map"] = wm
            data = json.dumps(idx).encode()
        open(os.path.join(dst, fn), "wb").write(data)


def main():
    if not os.path.exists(BIN) or not os.path.exists(TOK):
        print("dsv4 binary or tokenizer missing")
        return 77
    try:
        import ml_dtypes  # noqa: F401  (the reference needs it)
    except ImportError:
        print("ml_dtypes missing")
        return 77
    rng = np.random.default_rng(3)
    T = 140
    results = {}
    for fmt in ("mxfp4", "nvfp4", "fp8"):
        d = os.path.join(TMP, "tiny-" + fmt)
        run([BIN, "mkmodel", "--preset", "tiny", "--format", fmt, "--tokenizer", TOK, "--out", d, "--seed", "5"])
        cfg = json.load(open(os.path.join(d, "config.json")))
        V, D, L = cfg["vocab_size"], cfg["hidden_size"], cfg["num_hidden_layers"]
        ids = ",".join(str(x) for x in rng.integers(0, V, T)) if fmt == "mxfp4" else results["ids"]
        results["ids"] = ids
        rl, cl, cu = (os.path.join(TMP, fmt + s) for s in ("-ref", "-forced", "-free"))
        for x in (rl, cl, cu):
            os.makedirs(x, exist_ok=True)
        run([sys.executable, REF, "--model", d, "--ids", ids, "--dump-logits", rl + "/logits.f32",
             "--dump-layers", rl, "--mtp-logits", rl + "/mtp.f32"])
        run([BIN, "generate", "--model", d, "--prompt-ids", ids, "--max-tokens", "0", "--mtp", "1",
             "--threads", "2", "--dump-logits", cl + "/logits.f32", "--dump-layers", cl,
             "--force-layers", rl, "--dump-mtp-logits", cl + "/mtp.f32"])
        run([BIN, "generate", "--model", d, "--prompt-ids", ids, "--max-tokens", "0", "--threads", "2",
             "--dump-logits", cu + "/logits.f32", "--dump-layers", cu])
        for l in range(L):
            x = np.fromfile("%s/layer_%02d.f32" % (cl, l), np.float32).reshape(T, -1)
            y = np.fromfile("%s/layer_%02d.f32" % (rl, l), np.float32).reshape(T, -1)
            per = [ne(x[t], y[t]) for t in range(T)]
            exact = sum(v == 0 for v in per)
            check(ne(x, y) < 5e-3 and max(per) < 5e-2 and exact >= 0.85 * T,
                  "%s layer %d: error %.2e, worst position %.2e (exact at %d of %d positions)"
                  % (fmt, l, ne(x, y), max(per), exact, T))
        lc = np.fromfile(cl + "/logits.f32", np.float32).reshape(T, V)
        lr = np.fromfile(rl + "/logits.f32", np.float32).reshape(T, V)
        check(ne(lc, lr) < 1e-5, "%s logits from the reference's final streams: error %.2e" % (fmt, ne(lc, lr)))
        mc = np.fromfile(cl + "/mtp.f32", np.float32).reshape(T - 1, V)
        mr = np.fromfile(rl + "/mtp.f32", np.float32).reshape(T - 1, V)
        check(ne(mc, mr) < 1e-3, "%s MTP logits: error %.2e" % (fmt, ne(mc, mr)))
        if fmt == "mxfp4":
            # recursive MTP drafting (3 drafts after the prompt) on the reference's trunk streams
            out = json.loads(run([BIN, "generate", "--model", d, "--prompt-ids", ids, "--max-tokens", "2",
                                  "--mtp", "3", "--threads", "2", "--json", "--force-layers", rl,
                                  "--dump-draft-logits", cl + "/draft.f32"]))
            dc = np.fromfile(cl + "/draft.f32", np.float32).reshape(3, V)
            nxt = [out["tokens"][0]] + [int(np.argmax(dc[i])) for i in range(2)]
            run([sys.executable, REF, "--model", d, "--ids", ids, "--next-ids", ",".join(map(str, nxt)),
                 "--draft-logits", rl + "/draft.f32"])
            dr = np.fromfile(rl + "/draft.f32", np.float32).reshape(3, V)
            check(ne(dc, dr) < 1e-3 and all(np.argmax(dc[i]) == np.argmax(dr[i]) for i in range(3)),
                  "%s recursive MTP draft logits (3 steps): error %.2e" % (fmt, ne(dc, dr)))
        lu = np.fromfile(cu + "/logits.f32", np.float32).reshape(T, V)
        results[fmt] = lu
        results[fmt + "-ref"] = lr
        print("info: %s free-running logits error %.3e, argmax agreement %.3f"
              % (fmt, ne(lu, lr), float(np.mean(lu.argmax(1) == lr.argmax(1)))))
    # the other NVFP4 spelling (.weight_scale, [] scalars, I8) binds to the same weights
    var = os.path.join(TMP, "tiny-nvfp4-variant")
    write_variant(os.path.join(TMP, "tiny-nvfp4"), var)
    run([BIN, "generate", "--model", var, "--prompt-ids", results["ids"], "--max-tokens", "0", "--threads", "2",
         "--dump-logits", var + "/logits.f32"])
    lv = np.fromfile(var + "/logits.f32", np.float32).reshape(results["nvfp4"].shape)
    check(np.array_equal(lv, results["nvfp4"]), "NVFP4 with .weight_scale / [] scalars / I8 gives the same logits")
    # the NVFP4 checkpoint holds the MXFP4 values losslessly; it differs only by W4A4 activations
    print("info: nvfp4 vs mxfp4 logits (C): %.3e; (reference): %.3e"
          % (ne(results["nvfp4"], results["mxfp4"]), ne(results["nvfp4-ref"], results["mxfp4-ref"])))
    print("info: fp8 vs mxfp4 logits (C): %.3e; (reference): %.3e"
          % (ne(results["fp8"], results["mxfp4"]), ne(results["fp8-ref"], results["mxfp4-ref"])))
    print("%d failures" % failures)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
