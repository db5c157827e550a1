"""Checks the scalar encoders of kernels/ref/formats.c against ml_dtypes.

Millions of FP32 inputs (random bit patterns, log-uniform values over each
format's range, every midpoint between neighbouring codes and its two FP32
neighbours, subnormals, saturation, inf, NaN) are encoded by the C helper
tests/kernels/fmt_encode and compared code by code with ml_dtypes casts
(round-to-nearest-even), and with a table search written here for the
ties-to-lower mode of the conversion recipe (formats.md §1.2).
"""
import os
import subprocess
import sys

import numpy as np

try:
    import ml_dtypes
except ImportError:
    print("ml_dtypes not installed")
    sys.exit(77)

BUILD = os.environ.get("DSV4_BUILDDIR", ".")
HELPER = os.path.join(BUILD, "tests/kernels/fmt_encode")
TMP = os.environ.get("DSV4_TMP", ".")
rng = np.random.default_rng(1234)
np.seterr(invalid="ignore")  # casts of NaN/inf are part of the test
failures = 0


def encode(fmt, x):
    src = os.path.join(TMP, "in.bin")
    dst = os.path.join(TMP, "out.bin")
    x.astype(np.float32).tofile(src)
    subprocess.run([HELPER, fmt, src, dst], check=True)
    return np.fromfile(dst, dtype=np.uint16 if fmt == "bf16" else np.uint8)


def midpoints(grid):
    g = np.sort(np.unique(grid[np.isfinite(grid)]).astype(np.float64))
    mid = ((g[1:] + g[:-1]) / 2).astype(np.float32)
    return np.concatenate([mid, np.nextafter(mid, np.float32(-np.inf)),
                           np.nextafter(mid, np.float32(np.inf)), g.astype(np.float32)])


def inputs(lo_exp, hi_exp, grid):
    bits = rng.integers(0, 2**32, size=1_000_000, dtype=np.uint64).astype(np.uint32)
    rand_bits = bits.view(np.float32)
    mag = np.exp2(rng.uniform(lo_exp, hi_exp, size=1_000_000)).astype(np.float32)
    logu = mag * rng.choice([-1, 1], size=mag.size).astype(np.float32)
    mids = midpoints(grid)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1e-45, -1e-45,
                        1.17549435e-38, 3.4028235e38, -3.4028235e38], dtype=np.float32)
    x = np.concatenate([rand_bits, logu, mids, -mids, special])
    return x.astype(np.float32)


def check(name, got, want, x, mask=None):
    global failures
    bad = got != want
    if mask is not None:
        bad &= mask
    n = int(bad.sum())
    print(f"{name}: {x.size} values, {n} mismatches")
    if n:
        i = np.flatnonzero(bad)[:5]
        for j in i:
            print(f"  x={x[j]!r} ({x.view(np.uint32)[j]:#010x}) got {got[j]:#x} want {want[j]:#x}")
        failures += 1


def ties_lower(x, grid_pos, max_code):
    """Nearest magnitude in grid_pos, exact ties to the lower one; sign kept unless zero."""
    a = np.minimum(np.abs(x.astype(np.float64)), grid_pos[max_code])
    g = grid_pos[: max_code + 1]
    idx = np.searchsorted(g, a, side="left")  # g[idx-1] < a <= g[idx]
    idx = np.clip(idx, 1, len(g) - 1)
    lo, hi = g[idx - 1], g[idx]
    code = np.where(hi - a < a - lo, idx, idx - 1)
    code = np.where(a == g[0], 0, code)
    sign = np.where((x < 0) & (code != 0), 0x80 if max_code > 7 else 0x8, 0)
    return (code | sign).astype(np.uint8)


# ---- BF16 (plus exact halfway points between BF16 neighbours and their FP32 neighbours)
hi = rng.integers(0, 2**16, size=200_000, dtype=np.uint64).astype(np.uint32) << 16
half = np.concatenate([hi | 0x8000, hi | 0x7FFF, hi | 0x8001]).view(np.float32)
x = np.concatenate([inputs(-140, 128, np.array([1.0], dtype=np.float32)), half])
got = encode("bf16", x)
want = x.astype(ml_dtypes.bfloat16).view(np.uint16)
nan = np.isnan(x)
check("bf16", got, want, x, ~nan)
check("bf16 nan", ((got & 0x7f80) == 0x7f80) & ((got & 0x7f) != 0), np.ones_like(nan), x, nan)

# ---- E4M3
codes = np.arange(256, dtype=np.uint8)
e4m3 = codes.view(ml_dtypes.float8_e4m3fn).astype(np.float32)
x = inputs(-14, 10, e4m3)
nan = np.isnan(x)
got = encode("e4m3", x)
want = x.astype(ml_dtypes.float8_e4m3fn).view(np.uint8)
check("e4m3 rne", got, want, x, ~nan)
check("e4m3 rne nan", (got & 0x7f) == 0x7f, np.ones_like(nan), x, nan)
got = encode("e4m3sat", x)
want = np.clip(x, -448, 448).astype(ml_dtypes.float8_e4m3fn).view(np.uint8)
check("e4m3 rne saturating", got, want, x, ~nan)
got = encode("e4m3lower", x)
pos = e4m3[:127].astype(np.float64)
check("e4m3 ties-lower saturating", got, ties_lower(x, pos, 126), x, ~nan)

# ---- E2M1
e2m1 = np.arange(16, dtype=np.uint8).view(ml_dtypes.float4_e2m1fn).astype(np.float32)
x = inputs(-6, 5, e2m1)
nan = np.isnan(x)
got = encode("e2m1", x)
want = x.astype(ml_dtypes.float4_e2m1fn).view(np.uint8)
check("e2m1 rne", got, want, x, ~nan)
got = encode("e2m1lower", x)
check("e2m1 ties-lower", got, ties_lower(x, e2m1[:8].astype(np.float64), 7), x, ~nan)

sys.exit(1 if failures else 0)
