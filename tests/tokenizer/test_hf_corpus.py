#!/usr/bin/env python3
"""test_hf_corpus.py - the C tokenizer equals Hugging Face `tokenizers` on
the committed corpus (tests/tokenizer/corpus.jsonl): same ids for every
string, same decode (special tokens skipped); tok_dump itself checks the
round trip and the streaming decoder.  Expected ids are computed here, at
test time, by HF from the committed corpus.  Skips (77) without the
`tokenizers` package or the shared tokenizer.json.
"""
import json
import os
import subprocess
import sys

src = os.environ.get("DSV4_SRCDIR", ".")
build = os.environ.get("DSV4_BUILDDIR", ".")
data = os.environ.get("DSV4_SHARED_DATA", os.path.join(src, "..", "shared", "data"))
tok_path = os.path.join(data, "tokenizer", "deepseek-v3-tokenizer.json")
corpus = os.path.join(src, "tests", "tokenizer", "corpus.jsonl")

try:
    from tokenizers import Tokenizer
except ImportError:
    print("skip: python package tokenizers not installed")
    sys.exit(77)
if not os.path.exists(tok_path):
    print("skip: no shared tokenizer.json")
    sys.exit(77)

hf = Tokenizer.from_file(tok_path)
texts = [json.loads(line) for line in open(corpus, encoding="utf-8")]
assert len(texts) >= 2000, len(texts)
p = subprocess.run([os.path.join(build, "tests", "tokenizer", "tok_dump"), tok_path, corpus],
                   capture_output=True)
sys.stderr.write(p.stderr.decode("utf-8", "replace")[-3000:])
lines = p.stdout.decode("utf-8").split("\n")
fails = 0 if p.returncode == 0 else 1
if len(lines) < 2 * len(texts):
    print(f"tok_dump printed {len(lines)} lines for {len(texts)} texts")
    sys.exit(1)
hf_ids = [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]
for i, t in enumerate(texts):
    c_ids = [int(x) for x in lines[2 * i].split()]
    if c_ids != hf_ids[i]:
        fails += 1
        if fails < 15:
            k = next((j for j in range(min(len(c_ids), len(hf_ids[i])))
                      if c_ids[j] != hf_ids[i][j]), min(len(c_ids), len(hf_ids[i])))
            print(f"ids differ on line {i + 1} at {k}: {t[:80]!r}\n  C : {c_ids[max(0, k - 3):k + 5]}"
                  f"\n  HF: {hf_ids[i][max(0, k - 3):k + 5]}")
        continue
    c_dec = json.loads(lines[2 * i + 1])
    hf_dec = hf.decode(hf_ids[i], skip_special_tokens=True)
    if c_dec != hf_dec:
        fails += 1
        if fails < 15:
            print(f"decode differs on line {i + 1}: {c_dec[:60]!r} vs {hf_dec[:60]!r}")
print(f"{len(texts)} strings, {fails} failures")
sys.exit(1 if fails else 0)
