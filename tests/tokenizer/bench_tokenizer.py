#!/usr/bin/env python3
"""bench_tokenizer.py - encode speed of the C tokenizer next to HF
`tokenizers` on the same English prose, one core each, and a check that
both give the same ids on it.

The text: the English licence texts of /usr/share/common-licenses (real
prose, ~250 KB), repeated to at least 4 MB.  C: tests/tokenizer/tok_bench
(best of 5 whole-text encodes).  HF: Tokenizer.encode(text,
add_special_tokens=False) on the same string, best of 5, with
RAYON_NUM_THREADS=1; also per paragraph
(encode_batch, one thread), where HF is faster.  Not part of `make check` (timings are not tests).

usage: bench_tokenizer.py [BUILDDIR] [TOKENIZER.json]
"""
import glob
import os
import subprocess
import sys
import tempfile
import time

os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
from tokenizers import Tokenizer  # noqa: E402

here = os.path.dirname(os.path.abspath(__file__))
build = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("DSV4_BUILDDIR", ".")
tok_path = sys.argv[2] if len(sys.argv) > 2 else os.path.join(
    here, "..", "..", "..", "shared", "data", "tokenizer", "deepseek-v3-tokenizer.json")

parts = []
for p in sorted(glob.glob("/usr/share/common-licenses/*")):
    if os.path.isfile(p):
        try:
            parts.append(open(p, encoding="utf-8").read())
        except UnicodeDecodeError:
            pass
base = "\n\n".join(parts)
text = base
while len(text.encode()) < 4_000_000:
    text += "\n\n" + base
data = text.encode()
with tempfile.NamedTemporaryFile("wb", suffix=".txt", delete=False) as f:
    f.write(data)
    path = f.name

hf = Tokenizer.from_file(tok_path)
best = 1e30
for _ in range(5):
    t0 = time.perf_counter()
    enc = hf.encode(text, add_special_tokens=False)
    best = min(best, time.perf_counter() - t0)
hf_mb_s = len(data) / best / 1e6
# HF is much slower on one huge string than on many short ones; also time
# it on the paragraphs (encode_batch, still one thread).
paras = text.split("\n\n")
best_p = 1e30
for _ in range(3):
    t0 = time.perf_counter()
    hf.encode_batch(paras, add_special_tokens=False)
    best_p = min(best_p, time.perf_counter() - t0)
hf_para_mb_s = len(data) / best_p / 1e6

r = subprocess.run([os.path.join(build, "tests", "tokenizer", "tok_bench"), tok_path, path, "5",
                    "--ids"], capture_output=True, text=True, check=True)
os.unlink(path)
lines = r.stdout.split("\n")
c_mb_s = float(lines[0].split()[1])
same = [int(x) for x in lines[1].split()] == enc.ids
sys.stderr.write(r.stderr)
print(f"text: {len(data)} bytes of English prose (licence texts), {len(enc.ids)} ids")
print(f"| encoder | MB/s (1 core) |\n|---|---|\n| dsv4 C | {c_mb_s:.2f} |\n"
      f"| HF tokenizers {__import__('tokenizers').__version__}, whole text | {hf_mb_s:.2f} |\n"
      f"| HF tokenizers, per paragraph (encode_batch) | {hf_para_mb_s:.2f} |")
print("ids identical:", same)
sys.exit(0 if same else 1)
