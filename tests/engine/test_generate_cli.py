#!/usr/bin/env python3
"""test_generate_cli: `dsv4 generate` on bad input gives a clear message and a non-zero exit,
never a crash (no signal, no sanitizer report), on the tiny synthetic checkpoint.

Cases: missing/unknown/garbage options, --model pointing to a missing dir, a dir without
config.json, a garbage config.json, a truncated shard, a garbage shard, a checkpoint missing
a tensor (also one that only rank 1 of 2 binds: no hang, rank 1's message), prompt ids
>= vocab / negative / non-numeric / empty, an empty text prompt, --max-tokens negative /
non-numeric / beyond the context, --mtp negative / huge, --ranks 0 / beyond the communicator,
--threads 0, --chunk 0 / huge, a prompt longer than the context (a config with
max_position_embeddings 12), unwritable --dump-logits / --dump-layers.  Each must exit
with 1 or 2 and print a message containing the expected words.  Valid edge cases must
succeed: --max-tokens 0, --mtp 0, --chunk 1, a context filled exactly, and --ranks larger
than the heads (4) or experts (16) of the model, which must give the same tokens as one rank
(forward.h: outputs are identical for any N).
"""

import json
import os
import shutil
import struct
import subprocess
import sys

SRC = os.environ.get("DSV4_SRCDIR", os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("DSV4_BIN", "dsv4")
DATA = os.environ.get("DSV4_SHARED_DATA", os.path.join(SRC, "..", "shared", "data"))
TMP = os.environ.get("DSV4_TMP", "/tmp")
TOK = os.path.join(DATA, "tokenizer", "deepseek-v3-tokenizer.json")

failures = 0


def check(cond, msg):
    global failures
    if not cond:
        failures += 1
        print("FAIL:", msg)
    else:
        print("ok:", msg)


def gen(*args):
    r = subprocess.run([BIN, "generate"] + list(args), capture_output=True, text=True, timeout=300)
    return r.returncode, r.stdout, r.stderr


CRASH_MARKS = ("AddressSanitizer", "runtime error:", "LeakSanitizer", "Segmentation", "Aborted")


def bad(name, words, *args):
    rc, out, err = gen(*args)
    crashed = rc < 0 or rc > 2 or any(m in err for m in CRASH_MARKS)
    ok = rc in (1, 2) and not crashed and all(w in err for w in words)
    if not ok:
        print("  rc", rc, "stderr:", err[-1500:])
    check(ok, "%s: exit %d, message names %s" % (name, rc, words))


def good(name, *args):
    rc, out, err = gen(*args)
    ok = rc == 0 and not any(m in err for m in CRASH_MARKS)
    if not ok:
        print("  rc", rc, "stderr:", err[-1500:])
    check(ok, "%s: succeeds" % name)
    return out


def main():
    if not os.path.exists(TOK):
        print("tokenizer missing:", TOK)
        return 77
    root = os.path.join(TMP, "gen_cli")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    m = os.path.join(root, "tiny")
    r = subprocess.run([BIN, "mkmodel", "--preset", "tiny", "--format", "fp8", "--tokenizer", TOK,
                        "--out", m, "--seed", "5"], capture_output=True, text=True)
    if r.returncode != 0:
        print("mkmodel failed:", r.stderr)
        return 1
    cfg = json.load(open(os.path.join(m, "config.json")))
    V = cfg["vocab_size"]
    shard = "model-00001-of-00001.safetensors"
    blob = open(os.path.join(m, shard), "rb").read()

    def variant(name, files):
        d = os.path.join(root, name)
        os.makedirs(d)
        for f in os.listdir(m):
            if f not in files:
                os.symlink(os.path.join(m, f), os.path.join(d, f))
        for f, data in files.items():
            if data is not None:
                open(os.path.join(d, f), "wb").write(data)
        return d

    noconf = variant("noconf", {"config.json": None})
    garbconf = variant("garbconf", {"config.json": b"{\"vocab_size\": [1, 2"})
    trunc = variant("trunc", {shard: blob[: len(blob) // 3]})
    garb = variant("garb", {shard: os.urandom(65536)})
    small = dict(cfg, max_position_embeddings=12)
    shortctx = variant("shortctx", {"config.json": json.dumps(small).encode()})
    # a missing tensor: rename it in the shard header and the index (same length)
    n = struct.unpack("<Q", blob[:8])[0]
    old, new = b'"layers.1.attn.wq_a.weight"', b'"layers.1.attn.wq_a.weighX"'
    head = blob[8 : 8 + n]
    assert old in head
    idx = open(os.path.join(m, "model.safetensors.index.json"), "rb").read().replace(old, new)
    miss = variant("miss", {shard: blob[:8] + head.replace(old, new) + blob[8 + n :],
                            "model.safetensors.index.json": idx})

    # a tensor only the last of 2 ranks binds: rank 0 must not hang in a collective
    old, new = b'"layers.2.ffn.experts.15.w2.weight"', b'"layers.2.ffn.experts.15.w2.weighX"'
    assert old in head
    idx = open(os.path.join(m, "model.safetensors.index.json"), "rb").read().replace(old, new)
    miss15 = variant("miss15", {shard: blob[:8] + head.replace(old, new) + blob[8 + n :],
                                "model.safetensors.index.json": idx})

    P = ["--prompt-ids", "5,17,300"]
    bad("no arguments", ["--model"])
    bad("unknown option", ["--bogus"], "--model", m, *P, "--bogus")
    bad("option without value", ["--max-tokens"], "--model", m, *P, "--max-tokens")
    bad("both prompts", ["exactly one"], "--model", m, *P, "--prompt", "hi")
    bad("missing model dir", ["config.json", "No such file"], "--model", os.path.join(root, "nope"), *P)
    bad("dir without config.json", ["config.json"], "--model", noconf, *P)
    bad("garbage config.json", ["config.json"], "--model", garbconf, *P)
    bad("truncated shard", ["truncated"], "--model", trunc, *P)
    bad("garbage shard", [shard], "--model", garb, *P)
    bad("missing tensor", ["layers.1.attn.wq_a.weight", "missing"], "--model", miss, *P)
    bad("expert missing on rank 1 of 2", ["experts.15.w2.weight", "missing"], "--model", miss15,
        *P, "--ranks", "2", "--threads", "2")
    bad("prompt id = vocab", ["outside vocab"], "--model", m, "--prompt-ids", "1,%d" % V)
    bad("negative prompt id", ["--prompt-ids"], "--model", m, "--prompt-ids", "-1")
    bad("non-numeric prompt id", ["--prompt-ids"], "--model", m, "--prompt-ids", "3,x")
    bad("empty prompt ids", ["--prompt-ids"], "--model", m, "--prompt-ids", "")
    bad("double comma", ["--prompt-ids"], "--model", m, "--prompt-ids", "3,,4")
    bad("empty text prompt", ["empty prompt"], "--model", m, "--prompt", "")
    bad("negative max-tokens", ["--max-tokens"], "--model", m, *P, "--max-tokens", "-1")
    bad("non-numeric max-tokens", ["--max-tokens"], "--model", m, *P, "--max-tokens", "1e9")
    bad("max-tokens beyond context", ["context limit"], "--model", m, *P, "--max-tokens", "2000000000")
    bad("max-tokens just beyond context", ["context limit"], "--model", m, *P, "--max-tokens",
        str(cfg["max_position_embeddings"] - 4))
    bad("prompt longer than the context", ["context limit", "12"], "--model", shortctx,
        "--prompt-ids", ",".join(str(i) for i in range(12)), "--max-tokens", "0")
    bad("prompt + output + drafts beyond the context", ["context limit"], "--model", shortctx,
        "--prompt-ids", "1,2,3,4,5,6", "--max-tokens", "3", "--mtp", "2")
    good("prompt + output + 2 fill the context", "--model", shortctx, "--prompt-ids",
         "1,2,3,4,5,6", "--max-tokens", "4", "--threads", "2")
    bad("negative mtp", ["--mtp"], "--model", m, *P, "--mtp", "-1")
    bad("huge mtp", ["--mtp"], "--model", m, *P, "--mtp", "1000")
    bad("zero ranks", ["--ranks"], "--model", m, *P, "--ranks", "0")
    bad("too many ranks", ["--ranks"], "--model", m, *P, "--ranks", "100000")
    bad("zero threads", ["--threads"], "--model", m, *P, "--threads", "0")
    bad("garbage threads", ["--threads"], "--model", m, *P, "--threads", "4x")
    bad("zero chunk", ["--chunk"], "--model", m, *P, "--chunk", "0")
    bad("huge chunk", ["--chunk"], "--model", m, *P, "--chunk", "2000000000")
    bad("nan temperature", ["--temperature"], "--model", m, *P, "--temperature", "nan")
    bad("garbage seed", ["--seed"], "--model", m, *P, "--seed", "12a")
    bad("unknown backend", ["--backend", "tpu"], "--model", m, *P, "--backend", "tpu")
    # without a GPU (or without CUDA in the build) a clear error; on a GPU machine it runs
    # (2 ranks share the GPU, their exchanges staged through host memory)
    for ranks in ("1", "2"):
        rc, out, err = gen("--model", m, *P, "--max-tokens", "2", "--backend", "cuda",
                           "--ranks", ranks)
        ok = (rc == 0 or (rc == 1 and "CUDA" in err)) and not any(x in err for x in CRASH_MARKS)
        if not ok:
            print("  rc", rc, "stderr:", err[-1500:])
        check(ok, "backend cuda, %s rank(s): runs, or exit 1 naming CUDA (exit %d)" % (ranks, rc))
    bad("unwritable --dump-logits", ["cannot create"], "--model", m, *P, "--dump-logits",
        os.path.join(root, "nope", "x.f32"))
    bad("unwritable --dump-layers", ["cannot create"], "--model", m, *P, "--dump-layers",
        os.path.join(root, "nope"))

    good("max-tokens 0", "--model", m, *P, "--max-tokens", "0", "--threads", "2")
    good("chunk 1", "--model", m, *P, "--max-tokens", "1", "--chunk", "1", "--threads", "2")
    ref = json.loads(good("one rank", "--model", m, *P, "--max-tokens", "3", "--mtp", "0",
                          "--threads", "2", "--json"))["tokens"]
    for ranks in ("5", "17"):
        out = good("ranks " + ranks, "--model", m, *P, "--max-tokens", "3", "--mtp", "1",
                   "--ranks", ranks, "--threads", "2", "--json")
        toks = json.loads(out)["tokens"] if out else None
        check(toks == ref, "ranks %s (> heads, > experts for 17): tokens %s == %s" % (ranks, toks, ref))
    # the device paths on the CPU: weights uploaded, exchanges staged through host memory
    out = good("devsim, 3 ranks", "--model", m, *P, "--max-tokens", "3", "--mtp", "1",
               "--ranks", "3", "--threads", "2", "--backend", "devsim", "--json")
    toks = json.loads(out)["tokens"] if out else None
    check(toks == ref, "devsim, 3 ranks: tokens %s == %s" % (toks, ref))
    # dsv4 bench forward through the step API: prefill, preemption by swap, decode, JSON
    r = subprocess.run([BIN, "bench", "forward", "--model", m, "--threads", "1", "--prompt",
                        "40,70", "--batch", "1,2", "--steps", "2", "--mtp", "1", "--rounds", "2",
                        "--json"],
                       capture_output=True, text=True, timeout=300)
    try:
        bj = json.loads(r.stdout)
    except ValueError:
        bj = None
        print("  rc", r.returncode, "stdout:", r.stdout[-800:], "stderr:", r.stderr[-800:])
    check(r.returncode == 0 and bj is not None, "bench forward --json: exit 0, one JSON object")
    if bj:
        check([d["batch"] for d in bj["decode"]] == [1, 2] and
              all(d["decode_tok_s"] > 0 for d in bj["decode"]), "bench forward: decode levels")
        check([p["prompt"] for p in bj["prefill"]] == [40, 70] and
              all(p["prefill_tok_s"] > 0 for p in bj["prefill"]), "bench forward: prefill levels")
        pre = bj["preempt"]
        check(len(pre) == 2 and all(0 < p["packed_bytes"] <= p["raw_bytes"] + 1024 and
                                    p["swap_out_s"] > 0 and p["swap_in_s"] > 0 and
                                    p["reprefill_s"] > 0 and
                                    sum(v[0] for v in p["kinds"].values()) == p["raw_bytes"]
                                    for p in pre),
              "bench forward: swap bytes and times per prompt, kinds summing to the total")
        tb = pre[1]["kinds"]["tokens"][0]
        check(tb >= 4 * 70 and tb % 1024 == 0, "bench forward: the token ids' blocks swapped (%d B)" % tb)
        check(bj["roofline_tok_s"] > 0 and bj["mtp"] == 1, "bench forward: roofline, mtp")
        # each batch size against its own roofline: max(bytes / bandwidth, FLOP / FMA peak);
        # batch 1 of a model this small reads more than it computes, and the batched
        # roofline can only rise with the batch (the weights are read once per step)
        dec = bj["decode"]
        check(bj["fma_peak_GFLOPs"] > 0 and bj["decode_flop_per_token"] > 0 and
              all(d["roofline_tok_s"] > 0 and d["bound"] in ("memory", "compute") for d in dec) and
              dec[0]["roofline_tok_s"] <= dec[1]["roofline_tok_s"] and
              abs(dec[0]["roofline_tok_s"] - bj["roofline_tok_s"]) < 0.01 * bj["roofline_tok_s"],
              "bench forward: per-batch rooflines %s" % [(d["roofline_tok_s"], d["bound"]) for d in dec])
        # two rounds, each with its own bandwidth reading: per batch the rounds' rates, their
        # median, the median ratio to the round's roofline and to batch 1 of the same round
        rb = bj.get("read_bandwidth_GBps_rounds", [])
        check(bj["rounds"] == 2 and len(rb) == 2 and all(x > 0 for x in rb) and
              min(rb) - 1e-3 <= bj["read_bandwidth_GBps"] <= max(rb) + 1e-3,
              "bench forward: a bandwidth reading per round %s" % rb)
        check(all(len(d["decode_tok_s_rounds"]) == 2 and
                  abs(d["decode_tok_s"] - sum(d["decode_tok_s_rounds"]) / 2) <=
                  0.01 * d["decode_tok_s"] + 0.01 and d["x_roofline"] > 0 for d in dec) and
              dec[0]["x_first_batch"] == 1.0 and dec[1]["x_first_batch"] > 0,
              "bench forward: per-round rates and their medians %s" %
              [(d["decode_tok_s"], d["decode_tok_s_rounds"], d["x_first_batch"]) for d in dec])
    shutil.rmtree(root, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
