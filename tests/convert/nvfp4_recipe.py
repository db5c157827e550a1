"""nvfp4_recipe.py - an independent numpy re-implementation of the published
MXFP4 -> NVFP4 recipe (../shared/spec/formats.md §1.2-1.4) that writes the
shards `dsv4 convert --mode amax` must reproduce byte for byte.

It shares no code with the C converter: safetensors files are parsed and
written here with struct/json, E4M3 values come from ml_dtypes, the E4M3
scale is found by a table search and the E2M1 value by an argmin over the
grid (first minimum = the lower value on exact ties), as the recipe does.

Rules (all arithmetic in float32, in this order):
  src      = e2m1(nibble) * 2^(e8m0 - 127)          (low nibble = even column)
  S_g      = max(amax(w1), amax(w3)) / 2688  (w2: its own amax; 1.0 if 0)
  raw      = (amax16 / 6) / S_g, clipped to [0, 448]
  code     = nearest positive E4M3, exact ties to the lower value
  x        = src / (S_g * s), s = e4m3(code), or 1.0 when code == 0
  nibble   = argmin |x| over {0,.5,1,1.5,2,3,4,6} (ties lower, > 6 -> 6),
             sign bit when the quantized value is negative (never -0)
Layout of an output shard (what `dsv4 convert` documents): the source
shard's tensors, trunk experts converted (`.weight` U8, `.scale` F8_E4M3
[rows, cols/16]) plus `.weight_scale_2` and `.input_scale` F32 [1]; sorted
like the safetensors package (dtype rank descending, then name); metadata =
source metadata (format forced to "pt"), then dsv4_convert = the mode and
dsv4_convert_version = "1"; compact JSON header padded with spaces to a
multiple of 8 bytes.

Usage: python3 nvfp4_recipe.py SRC_DIR OUT_DIR   (writes OUT_DIR/<shard>).
"""
import json
import os
import re
import struct
import sys

import ml_dtypes
import numpy as np

EXPERT = re.compile(r"^layers\.(\d+)\.ffn\.experts\.(\d+)\.w([123])\.(weight|scale)$")
GRID = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], dtype=np.float32)
# positive E4M3 values, codes 0..126 (127 is NaN)
E4M3 = np.arange(127, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float32)
# safetensors' Dtype enum order (serialization sorts by it, descending)
RANK = ["BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0", "I16", "U16", "F16", "BF16",
        "I32", "U32", "F32", "F64", "I64", "U64"]
SIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "I16": 2,
        "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "F64": 8, "I64": 8,
        "U64": 8}


def read_st(path):
    """(metadata dict in file order, {name: (dtype, shape, bytes)})."""
    with open(path, "rb") as f:
        blob = f.read()
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    data = blob[8 + n:]
    meta = header.pop("__metadata__", {}) or {}
    tensors = {}
    for name, e in header.items():
        b, end = e["data_offsets"]
        tensors[name] = (e["dtype"], list(e["shape"]), data[b:end])
    return meta, tensors


def write_st(path, meta, tensors):
    order = sorted(tensors, key=lambda k: (-RANK.index(tensors[k][0]), k.encode()))
    header = {}
    if meta:
        header["__metadata__"] = meta
    off = 0
    for k in order:
        dt, shape, b = tensors[k]
        header[k] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(b)]}
        off += len(b)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for k in order:
            f.write(tensors[k][2])


def dequant_mxfp4(wb, sb, rows, cols):
    w = np.frombuffer(wb, dtype=np.uint8).reshape(rows, cols // 2)
    s = np.frombuffer(sb, dtype=np.uint8).reshape(rows, cols // 32)
    nib = np.stack([w & 0x0F, w >> 4], axis=-1).reshape(rows, cols)
    val = GRID[nib & 7]
    val = np.where(nib & 8, -val, val).astype(np.float32)
    scale = np.ldexp(np.float32(1.0), s.astype(np.int32) - 127).astype(np.float32)
    return (val * np.repeat(scale, 32, axis=1)).astype(np.float32)


def global_scale(amax):
    if amax == 0:
        return np.float32(1.0)
    return np.float32(np.float32(amax) / np.float32(6 * 448))


def e4m3_ties_lower(raw):
    lo = np.searchsorted(E4M3, raw, side="right") - 1
    lo = np.clip(lo, 0, 126)
    hi = np.minimum(lo + 1, 126)
    dl = raw.astype(np.float64) - E4M3[lo]
    du = E4M3[hi].astype(np.float64) - raw
    return np.where(du < dl, hi, lo).astype(np.uint8)


def quantize(src, sg):
    rows, cols = src.shape
    blocks = src.reshape(rows, cols // 16, 16)
    amax16 = np.abs(blocks).max(axis=-1)
    raw = (amax16 / np.float32(6.0)).astype(np.float32) / sg
    raw = np.clip(raw.astype(np.float32), np.float32(0.0), np.float32(448.0))
    code = e4m3_ties_lower(raw)
    s = np.where(code == 0, np.float32(1.0), E4M3[code]).astype(np.float32)
    x = (blocks / (sg * s)[..., None]).astype(np.float32)
    dist = np.abs(np.abs(x)[..., None] - GRID)
    idx = np.argmin(dist, axis=-1).astype(np.uint8)
    nib = idx | np.where((x < 0) & (idx > 0), 8, 0).astype(np.uint8)
    nib = nib.reshape(rows, cols)
    packed = (nib[:, 0::2] | (nib[:, 1::2] << 4)).astype(np.uint8)
    return packed.tobytes(), code.tobytes()


def convert(src_dir, out_dir):
    with open(os.path.join(src_dir, "config.json")) as f:
        cfg = json.load(f)
    idx_path = os.path.join(src_dir, "model.safetensors.index.json")
    with open(idx_path) as f:
        weight_map = json.load(f)["weight_map"]
    shards = sorted(set(weight_map.values()))
    loaded = {s: read_st(os.path.join(src_dir, s)) for s in shards}
    everything = {}
    for s in shards:
        everything.update(loaded[s][1])
    D, I = cfg["hidden_size"], cfg["moe_intermediate_size"]
    amax_cache = {}

    def amax(prefix, rows, cols):
        if prefix not in amax_cache:
            src = dequant_mxfp4(everything[prefix + ".weight"][2],
                                everything[prefix + ".scale"][2], rows, cols)
            amax_cache[prefix] = np.float32(np.abs(src).max())
        return amax_cache[prefix]

    os.makedirs(out_dir, exist_ok=True)
    for s in shards:
        meta, tensors = loaded[s]
        out = {}
        for name, (dt, shape, b) in tensors.items():
            m = EXPERT.match(name)
            if not m:
                out[name] = (dt, shape, b)
                continue
            layer, expert, z, kind = int(m[1]), int(m[2]), int(m[3]), m[4]
            rows, cols = (D, I) if z == 2 else (I, D)
            prefix = "layers.%d.ffn.experts.%d.w%d" % (layer, expert, z)
            a = amax(prefix, rows, cols)
            if z != 2:
                partner = "layers.%d.ffn.experts.%d.w%d" % (layer, expert, 4 - z)
                a = max(a, amax(partner, rows, cols))
            sg = global_scale(a)
            src = dequant_mxfp4(everything[prefix + ".weight"][2],
                                everything[prefix + ".scale"][2], rows, cols)
            packed, codes = quantize(src, sg)
            if kind == "weight":
                out[name] = ("U8", [rows, cols // 2], packed)
                out[prefix + ".weight_scale_2"] = ("F32", [1], np.float32(sg).tobytes())
                out[prefix + ".input_scale"] = ("F32", [1], np.float32(1.0).tobytes())
            else:
                out[name] = ("F8_E4M3", [rows, cols // 16], codes)
        meta = {k: v for k, v in meta.items() if k not in ("dsv4_convert", "dsv4_convert_version")}
        meta["format"] = "pt"
        meta["dsv4_convert"] = "amax"
        meta["dsv4_convert_version"] = "1"
        write_st(os.path.join(out_dir, s), meta, out)
    return shards


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: nvfp4_recipe.py SRC_DIR OUT_DIR")
    for s in convert(sys.argv[1], sys.argv[2]):
        print(s)
