"""dsv4_ref_numerics: number formats, quantisers and checkpoint I/O of the Python reference.

Part of the independent numpy reference of the DeepSeek-V4 forward pass (tests/reference/dsv4_ref.py).
Everything here is written from ../shared/spec/model.md §5 and ../shared/spec/formats.md §1-§2.

Conventions (invariants of this module):
* Every tensor handed around is a float32 numpy array. "Rounding to BF16 / E4M3 / E2M1" means the
  float32 value is replaced by the nearest value of that format (round-to-nearest-even via
  ml_dtypes casts) and kept in float32, so the arithmetic that follows is exact FP32 on values that
  the real storage format can hold.
* Quantise-then-dequantise helpers return the dequantised float32 values: a block-scaled GEMM
  sum_k (q_a s_a)(q_w s_w) equals a plain matmul of the dequantised operands (the scales are powers
  of two, or exact E4M3/F32 factors), up to the accumulation rounding, which is the only
  difference from the fused kernels.
* Safetensors files are read with a small raw header parser (np.memmap): the safetensors Python
  package's numpy backend cannot decode BF16 / F8_E4M3 / F8_E8M0, and E8M0 bytes must never go
  through a numeric cast (model.md §2.3).
"""

import json
import os
import struct

import ml_dtypes
import numpy as np

F32 = np.float32

# ---------------------------------------------------------------------------------------------
# Scalar format roundings (model.md §5, formats.md §2.1)


def bf16(x):
    """Round float32 values to BF16 (RNE) and return them as float32."""
    return np.asarray(x, dtype=F32).astype(ml_dtypes.bfloat16).astype(F32)


def e4m3(x):
    """Round to OCP E4M3 (e4m3fn, RNE). The caller keeps |x| <= 448 (e4m3fn has no inf)."""
    return np.asarray(x, dtype=F32).astype(ml_dtypes.float8_e4m3fn).astype(F32)


def e4m3_sat(x):
    """Round to E4M3 with saturation to +-448 (cvt.rn.satfinite)."""
    return e4m3(np.clip(np.asarray(x, dtype=F32), -448.0, 448.0))


def e2m1(x):
    """Round to E2M1 {0,.5,1,1.5,2,3,4,6} with sign, RNE, saturating at 6."""
    return np.clip(np.asarray(x, dtype=F32), -6.0, 6.0).astype(ml_dtypes.float4_e2m1fn).astype(F32)


def ceil_log2(v):
    """ceil(log2(v)) of positive float32 values, exactly as the kernels read it off the bits:
    the unbiased exponent, plus one when any mantissa bit is set (model.md §5.3). frexp gives
    v = m * 2^e with m in [0.5, 1): v is a power of two iff m == 0.5 (also for subnormals)."""
    m, e = np.frexp(np.asarray(v, dtype=F32))
    return np.where(m == 0.5, e - 1, e).astype(np.int32)


def pow2(k):
    return np.ldexp(F32(1.0), np.asarray(k, dtype=np.int32)).astype(F32)


def _grouped(x, group):
    """View the last axis of x as [..., ngroups, group], zero-padding a partial last group
    (zeros never change an amax)."""
    k = x.shape[-1]
    ng = -(-k // group)
    if ng * group != k:
        pad = np.zeros(x.shape[:-1] + (ng * group - k,), dtype=F32)
        x = np.concatenate([x, pad], axis=-1)
    return x.reshape(x.shape[:-1] + (ng, group)), k


# ---------------------------------------------------------------------------------------------
# Run-time activation quantisers (model.md §5.3, formats.md §2.1)

_INV448 = F32(1.0) / F32(448.0)
_INV6 = F32(1.0) / F32(6.0)


def fp8_quant_dequant(x, group=128):
    """FP8 act quant per `group` consecutive channels of the last axis, returned dequantised.

    amax = max(max|x|, 1e-4); s = 2^ceil_log2(amax * fl32(1/448)); q = e4m3(clamp(x/s, -448, 448));
    result q*s. Used before every FP8/FP4(W4A8) GEMM (group 128) and for the KV QAT simulation
    (group 64 over the nope dims)."""
    x = np.asarray(x, dtype=F32)
    g, k = _grouped(x, group)
    amax = np.maximum(np.abs(g).max(axis=-1, keepdims=True), F32(1e-4))
    s = pow2(ceil_log2(amax * _INV448))
    q = e4m3(np.clip(g / s, -448.0, 448.0))
    return (q * s).reshape(g.shape[:-2] + (-1,))[..., :k]


def fp4_quant_dequant(x, group=32):
    """FP4 QAT simulation (indexer q and keys): per 32, amax = max(max|x|, 6*2^-126),
    s = 2^ceil_log2(amax * fl32(1/6)), q = e2m1(clamp(x/s, -6, 6)), result q*s."""
    x = np.asarray(x, dtype=F32)
    g, k = _grouped(x, group)
    amax = np.maximum(np.abs(g).max(axis=-1, keepdims=True), F32(6.0 * 2.0**-126))
    s = pow2(ceil_log2(amax * _INV6))
    q = e2m1(np.clip(g / s, -6.0, 6.0))
    return (q * s).reshape(g.shape[:-2] + (-1,))[..., :k]


def nvfp4_act_quant_dequant(x, input_scale, group=16, with_global=True):
    """NVFP4 (W4A4) activation quantisation of formats.md §2.1, returned dequantised.

    gs = 1/input_scale (activation global scale); per 16 channels SF = e4m3_sat((amax * fl32(1/6)) * gs);
    out = gs / SF (0 when SF == 0); q = e2m1_rne_sat(x * out); dequantised value q * SF * input_scale,
    or q * SF (exact) with with_global=False, when the GEMM alpha carries input_scale."""
    x = np.asarray(x, dtype=F32)
    a = F32(input_scale)
    gs = F32(1.0) / a
    g, k = _grouped(x, group)
    amax = np.abs(g).max(axis=-1, keepdims=True)
    sf = e4m3_sat((amax * _INV6) * gs)
    with np.errstate(divide="ignore"):
        out = np.where(sf > 0, gs / np.where(sf > 0, sf, F32(1.0)), F32(0.0)).astype(F32)
    q = e2m1(g * out)
    v = (q * sf) * a if with_global else q * sf
    return v.reshape(g.shape[:-2] + (-1,))[..., :k]


# ---------------------------------------------------------------------------------------------
# Stored weight formats (model.md §5.1-§5.2, formats.md §1)

E2M1_TABLE = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], dtype=F32)


def decode_e8m0(b):
    """E8M0 byte b -> 2^(b-127); 255 is NaN."""
    b = np.asarray(b, dtype=np.uint8).astype(np.int32)
    v = np.ldexp(F32(1.0), np.minimum(b, 254) - 127).astype(F32)
    return np.where(b == 255, F32(np.nan), v).astype(F32)


def decode_e4m3(b):
    return np.asarray(b, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(F32)


def unpack_e2m1(packed):
    """[out, in/2] bytes -> [out, in] E2M1 values; low nibble = element 2c, high nibble = 2c+1."""
    p = np.asarray(packed).view(np.uint8)
    out = np.empty(p.shape[:-1] + (p.shape[-1] * 2,), dtype=F32)
    out[..., 0::2] = E2M1_TABLE[p & 0x0F]
    out[..., 1::2] = E2M1_TABLE[p >> 4]
    return out


def expand_blocks(scale, rows, cols, br, bc):
    """Broadcast a per-block scale [ceil(rows/br), ceil(cols/bc)] to [rows, cols]."""
    s = np.repeat(np.repeat(scale, br, axis=0), bc, axis=1)
    return s[:rows, :cols]


def dequant_fp8_block(w_e4m3, scale, block=128):
    """FP8 weight [out, in] (E4M3 values) times its per-128x128 scale -> float32."""
    r, c = w_e4m3.shape
    want = (-(-r // block), -(-c // block))
    if scale.shape != want:
        raise ValueError("fp8 block scale shape %s, expected %s" % (scale.shape, want))
    return (w_e4m3 * expand_blocks(scale, r, c, block, block)).astype(F32)


def dequant_mxfp4(packed, scale_e8m0_bytes):
    """MXFP4 [out, in/2] packed + E8M0 [out, in/32] -> float32 [out, in]."""
    w = unpack_e2m1(packed)
    r, c = w.shape
    if scale_e8m0_bytes.shape != (r, c // 32):
        raise ValueError("mxfp4 scale shape %s, expected %s" % (scale_e8m0_bytes.shape, (r, c // 32)))
    return (w * np.repeat(decode_e8m0(scale_e8m0_bytes), 32, axis=1)).astype(F32)


def dequant_nvfp4(packed, scale_e4m3_bytes, weight_scale_2):
    """NVFP4 [out, in/2] packed + E4M3 [out, in/16] + F32 global -> float32 [out, in];
    w = e2m1 * e4m3_scale * weight_scale_2 (formats.md §1.2 step 8)."""
    w = unpack_e2m1(packed)
    r, c = w.shape
    if scale_e4m3_bytes.shape != (r, c // 16):
        raise ValueError("nvfp4 scale shape %s, expected %s" % (scale_e4m3_bytes.shape, (r, c // 16)))
    s = np.repeat(decode_e4m3(scale_e4m3_bytes), 16, axis=1)
    return ((w * s) * F32(weight_scale_2)).astype(F32)


def mxfp4_to_nvfp4_lossless(scale_bytes_list):
    """Closed-form MXFP4 -> NVFP4 cast of formats.md §1.6 for a group of tensors that share one
    global scale (w1+w3 of an expert, or w2 alone). Packed E2M1 bytes are copied verbatim; this
    returns (list of E4M3 scale byte arrays [out, in/16], weight_scale_2) or None when some block is
    out of range (then the cast would not be lossless). k = E8M0 - 127 over non-zero bytes;
    m = k_max - 8; delta = k - m must lie in [-9, 8]; byte = (delta+7)<<3 (normal) or 1<<(delta+9)."""
    ks = [s.astype(np.int32)[s != 0] - 127 for s in scale_bytes_list]
    nz = [k for k in ks if k.size]
    kmax = max(int(k.max()) for k in nz) if nz else 0
    m = kmax - 8
    out = []
    for s in scale_bytes_list:
        d = s.astype(np.int32) - 127 - m
        zero = s == 0
        if np.any((~zero) & ((d < -9) | (d > 8))):
            return None
        code = np.where(d >= -6, (d + 7) << 3, 1 << np.clip(d + 9, 0, 7))
        code = np.where(zero, 0, code).astype(np.uint8)
        out.append(np.repeat(code, 2, axis=1))
    return out, float(2.0**m)


# ---------------------------------------------------------------------------------------------
# Hadamard (model.md §3.3): normalised Walsh-Hadamard, natural (Sylvester) order


def hadamard_matrix(n):
    if n & (n - 1):
        raise ValueError("Hadamard size %d is not a power of two" % n)
    i = np.arange(n)
    bits = np.bitwise_and(i[:, None], i[None, :])
    parity = np.zeros_like(bits)
    while bits.any():
        parity ^= bits & 1
        bits = bits >> 1
    return (np.where(parity == 1, -1.0, 1.0) / np.sqrt(n)).astype(F32)


# ---------------------------------------------------------------------------------------------
# Safetensors raw I/O

ST_DTYPES = {
    "F32": np.float32,
    "F64": np.float64,
    "F16": np.float16,
    "BF16": np.uint16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.uint8,
    "F8_E4M3": np.uint8,
    "F8_E5M2": np.uint8,
    "F8_E8M0": np.uint8,
}


class SafetensorsFile:
    """One .safetensors file: header parsed, tensors memory-mapped as raw arrays."""

    def __init__(self, path):
        self.path = path
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise ValueError("%s: truncated header length" % path)
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise ValueError("%s: header length %d exceeds file size" % (path, n))
            hdr = json.loads(f.read(n))
        self.base = 8 + n
        self.meta = hdr.pop("__metadata__", {})
        self.entries = hdr
        self.mm = np.memmap(path, dtype=np.uint8, mode="r") if size > 0 else np.zeros(0, np.uint8)
        for name, e in hdr.items():
            if e["dtype"] not in ST_DTYPES:
                raise ValueError("%s: tensor %s has unsupported dtype %s" % (path, name, e["dtype"]))
            a, b = e["data_offsets"]
            nel = int(np.prod(e["shape"], dtype=np.int64))
            if b - a != nel * np.dtype(ST_DTYPES[e["dtype"]]).itemsize or self.base + b > size:
                raise ValueError("%s: tensor %s has bad data_offsets" % (path, name))

    def raw(self, name):
        """(dtype string, raw array of the storage integer/float type with the tensor's shape)."""
        e = self.entries[name]
        a, b = e["data_offsets"]
        buf = self.mm[self.base + a : self.base + b]
        return e["dtype"], buf.view(ST_DTYPES[e["dtype"]]).reshape(e["shape"])


def write_safetensors(path, tensors, metadata=None):
    """tensors: name -> (dtype string, numpy array of the storage type). Used by the self-tests."""
    hdr = {}
    off = 0
    blobs = []
    for name in sorted(tensors):
        dt, arr = tensors[name]
        b = np.ascontiguousarray(arr).tobytes()
        hdr[name] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    if metadata:
        hdr["__metadata__"] = metadata
    h = json.dumps(hdr).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def to_f32(dtype, raw):
    """Decode a raw tensor of a plain numeric dtype to float32."""
    if dtype == "BF16":
        return raw.view(ml_dtypes.bfloat16).astype(F32)
    if dtype == "F8_E4M3":
        return decode_e4m3(raw)
    if dtype == "F8_E8M0":
        return decode_e8m0(raw)
    if dtype in ("F32", "F64", "F16"):
        return raw.astype(F32)
    raise ValueError("cannot decode dtype %s as float" % dtype)
