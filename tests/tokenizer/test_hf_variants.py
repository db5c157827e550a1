#!/usr/bin/env python3
"""test_hf_variants.py - the loader is general, not DeepSeek-only: variants
of the DeepSeek tokenizer.json (added tokens with lstrip/rstrip/
single_word/normalized/special, ByteLevel with the GPT-2 regex and
add_prefix_space, every Split behaviour and invert, String and Regex
patterns, Prepend/Replace normalizers, ignore_merges, merges written as
pairs, byte_fallback, unk_token with and without fuse_unk) must encode exactly as HF `tokenizers` does, on a sample of the
committed corpus plus edge cases.  Skips (77) without `tokenizers`.
"""
import copy
import json
import os
import subprocess
import sys
import tempfile

src = os.environ.get("DSV4_SRCDIR", ".")
build = os.environ.get("DSV4_BUILDDIR", ".")
data = os.environ.get("DSV4_SHARED_DATA", os.path.join(src, "..", "shared", "data"))
tok_path = os.path.join(data, "tokenizer", "deepseek-v3-tokenizer.json")
try:
    from tokenizers import Tokenizer
except ImportError:
    print("skip: python package tokenizers not installed")
    sys.exit(77)
if not os.path.exists(tok_path):
    print("skip: no shared tokenizer.json")
    sys.exit(77)

base = json.load(open(tok_path, encoding="utf-8"))
corpus = [json.loads(line) for line in open(os.path.join(src, "tests", "tokenizer", "corpus.jsonl"),
                                            encoding="utf-8")]
texts = corpus[::9] + [
    "a <mask> b", "a<mask>b", "  <mask>  x", "[SEP] y", "x [SEP]   y", "word words sword word_ word",
    "(word) 1word word1 wordy", "ab cab abab", "1,234,567.89 and 12,3", "aeiou xyz", "a\tb\n\nc  d",
    "hello world", " leading", "acccb  cc c", "ccc", "\u00e4\u00e4 c", "cafe\u0301 ca\u00e7a", "trailing ", "", " ", "x--y---z", "ＡＢＣ ｗｏｒｄ", "<mask><mask>",
]
N = 128815


def added(content, **kw):
    d = {"id": None, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": False}
    d.update(kw)
    return d


def variant(name, **changes):
    t = copy.deepcopy(base)
    extra = changes.pop("added", [])
    nxt = N
    for a in extra:
        # consistent ids, as HF writes them: a token the model already has
        # keeps the model's id, the others are numbered on
        if a["content"] in t["model"]["vocab"]:
            a["id"] = t["model"]["vocab"][a["content"]]
        else:
            a["id"] = nxt
            nxt += 1
        t["added_tokens"].append(a)
    if changes.pop("merges_pairs", False):
        t["model"]["merges"] = [m.split(" ") for m in t["model"]["merges"]]
    for k, v in changes.items():
        if k in ("ignore_merges",):
            t["model"][k] = v
        else:
            t[k] = v
    return name, t


def without(chars, byte_fallback=False, unk=None, fuse_unk=False):
    """The base tokenizer minus the byte tokens of `chars`, with
    byte_fallback / unk_token / fuse_unk.  Ids stay dense (HF renumbers
    added tokens otherwise): the removed characters and the last 257 model
    tokens give their ids to placeholders, <0xXX> tokens and <unk>; merges
    that use or make a removed token are dropped."""
    t = copy.deepcopy(base)
    v = t["model"]["vocab"]
    by_id = sorted(v.items(), key=lambda kv: kv[1])
    removed = set(chars) | set(k for k, _ in by_id[-257:])
    free_ids = sorted(v[k] for k in removed)
    for k in removed:
        del v[k]
    t["model"]["merges"] = [m for m in t["model"]["merges"]
                            if not ({m.split(" ")[0], m.split(" ")[1], m.replace(" ", "")} & removed)]
    new = ["<0x%02X>" % b for b in range(256)] if byte_fallback else []
    new += [unk] if unk else []
    new += ["<unused%d>" % i for i in range(len(free_ids) - len(new))]
    for name, i in zip(new, free_ids):
        v[name] = i
    t["model"]["byte_fallback"] = byte_fallback
    t["model"]["unk_token"] = unk
    t["model"]["fuse_unk"] = fuse_unk
    return t


BL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
variants = [
    variant("added tokens", added=[
        added("<mask>", lstrip=True, special=True), added("[SEP]", rstrip=True, special=True),
        added("word", single_word=True, normalized=True), added("ab", normalized=True),
        added("ＡＢＣ", lstrip=True, rstrip=True, normalized=True)]),
    variant("gpt2 bytelevel", pre_tokenizer={"type": "ByteLevel", "add_prefix_space": False,
                                              "trim_offsets": True, "use_regex": True}),
    variant("prefix space", pre_tokenizer={"type": "ByteLevel", "add_prefix_space": True,
                                            "trim_offsets": True, "use_regex": True}),
    variant("split behaviours", pre_tokenizer={"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "\\p{N}+"}, "behavior": "MergedWithPrevious",
         "invert": False},
        {"type": "Split", "pattern": {"String": ","}, "behavior": "MergedWithNext", "invert": False},
        {"type": "Split", "pattern": {"Regex": "[aeiou]"}, "behavior": "Removed", "invert": False},
        {"type": "Split", "pattern": {"Regex": "\\s+"}, "behavior": "Contiguous", "invert": True},
        {"type": "Split", "pattern": {"String": "-"}, "behavior": "Isolated", "invert": True},
        BL]}),
    variant("normalizers", normalizer={"type": "Sequence", "normalizers": [
        {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
        {"type": "Replace", "pattern": {"String": "o"}, "content": "0"},
        {"type": "Prepend", "prepend": "\u2581"}]}),
    variant("ignore_merges", ignore_merges=True),
    variant("merges as pairs", merges_pairs=True),
    ("byte_fallback", without(["c", "\u0120", "\u00e4"], byte_fallback=True)),
    ("unk", without(["c", "\u0120"], unk="<unk>")),
    ("fuse_unk", without(["c", "\u0120"], unk="<unk>", fuse_unk=True)),
]

fails = 0
with tempfile.TemporaryDirectory() as tmp:
    cpath = os.path.join(tmp, "corpus.jsonl")
    with open(cpath, "w", encoding="utf-8") as f:
        for s in texts:
            f.write(json.dumps(s) + "\n")
    for name, t in variants:
        tpath = os.path.join(tmp, "tokenizer.json")
        json.dump(t, open(tpath, "w", encoding="utf-8"), ensure_ascii=False)
        hf = Tokenizer.from_file(tpath)
        p = subprocess.run([os.path.join(build, "tests", "tokenizer", "tok_dump"), tpath, cpath,
                            "lossy"], capture_output=True)
        if p.returncode != 0:
            print(f"{name}: tok_dump failed: {p.stderr.decode()[-500:]}")
            fails += 1
            continue
        lines = p.stdout.decode().split("\n")
        bad = 0
        for i, s in enumerate(texts):
            want = hf.encode(s, add_special_tokens=False).ids
            got = [int(x) for x in lines[2 * i].split()]
            if got != want:
                bad += 1
                if bad <= 3:
                    print(f"{name}: {s[:50]!r}\n  C : {got[:12]}\n  HF: {want[:12]}")
        print(f"{name}: {len(texts) - bad}/{len(texts)} equal")
        fails += bad
sys.exit(1 if fails else 0)
