"""Bit-exact interoperability with Python's `safetensors` package.

Python writes a file with every dtype we support (scalars, empty tensors,
odd names); our reader must report the same names, dtypes, shapes,
metadata and bytes.  Our writer re-writes it; Python must read back the
same bytes, and with a single metadata key the file must equal Python's
own serialisation byte for byte.  Files Python rejects (holes) we reject.
The index writer must produce what json.dumps(indent=2, sorted) gives.
Drives tests/io/st_tool (build tree).  Skips (77) without the package.
"""
import json
import os
import subprocess
import sys

try:
    import numpy as np
    from safetensors import TensorSpec, deserialize, safe_open, serialize
except ImportError as e:  # pragma: no cover
    print("python safetensors/numpy not available: %s" % e)
    sys.exit(77)

BUILD = os.environ.get("DSV4_BUILDDIR", ".")
TOOL = os.path.join(BUILD, "tests", "io", "st_tool")
TMP = os.environ.get("DSV4_TMP", "/tmp")

# safetensors header name -> (TensorSpec dtype, element size)
DTYPES = {
    "BOOL": ("bool", 1), "U8": ("uint8", 1), "I8": ("int8", 1), "I16": ("int16", 2),
    "U16": ("uint16", 2), "F16": ("float16", 2), "BF16": ("bfloat16", 2),
    "I32": ("int32", 4), "U32": ("uint32", 4), "F32": ("float32", 4),
    "I64": ("int64", 8), "U64": ("uint64", 8), "F64": ("float64", 8),
    "F8_E4M3": ("float8_e4m3fn", 1), "F8_E5M2": ("float8_e5m2", 1),
    "F8_E8M0": ("float8_e8m0fnu", 1),
}

failures = 0


def check(cond, what):
    global failures
    if not cond:
        failures += 1
        print("FAIL:", what)


def tool(*args):
    r = subprocess.run([TOOL] + list(args), capture_output=True, text=True)
    return r.returncode, r.stdout, r.stderr


def py_serialize(tensors, metadata):
    """tensors: name -> (dtype, shape, bytes)."""
    keep = {}
    specs = {}
    for name, (dt, shape, data) in tensors.items():
        buf = np.frombuffer(data, dtype=np.uint8).copy() if data else np.zeros(1, np.uint8)
        keep[name] = buf
        specs[name] = TensorSpec(dtype=DTYPES[dt][0], shape=list(shape),
                                 data_ptr=buf.ctypes.data, data_len=len(data))
    return serialize(specs, metadata=metadata)


def parse_dump(text):
    meta, tens = {}, {}
    for line in text.splitlines():
        f = line.split(" ")
        if f[0] == "M":
            meta[bytes.fromhex(f[1]).decode()] = bytes.fromhex(f[2]).decode()
        elif f[0] == "T":
            shape = tuple(int(x) for x in f[3].split(",") if x)
            tens[bytes.fromhex(f[1]).decode()] = (f[2], shape, bytes.fromhex(f[4]))
    return meta, tens


def make_tensors(rng):
    t = {}
    for i, (dt, (_, size)) in enumerate(DTYPES.items()):
        shape = (3, 1 + i % 4, 5)
        n = int(np.prod(shape)) * size
        data = rng.integers(0, 256, n, dtype=np.uint8)
        if dt == "BOOL":
            data &= 1
        t["layers.%d.%s.weight" % (i, dt.lower())] = (dt, shape, data.tobytes())
    t["scalar"] = ("F32", (), np.float32(3.25).tobytes())
    t["empty"] = ("BF16", (0, 7), b"")
    t['we"ird\\name ü €'] = ("U8", (2,), b"\x01\x02")
    return t


def main():
    if not os.path.exists(TOOL):
        print("st_tool not built: %s" % TOOL)
        return 77
    rng = np.random.default_rng(1234)
    tensors = make_tensors(rng)
    meta = {"format": "pt", "note": 'quote " and ü'}

    # Python -> C
    a = os.path.join(TMP, "py.safetensors")
    with open(a, "wb") as fp:
        fp.write(py_serialize(tensors, meta))
    rc, out, err = tool("dump", a)
    check(rc == 0, "C reads the Python file: " + err)
    cmeta, ctens = parse_dump(out)
    check(cmeta == meta, "metadata %r vs %r" % (cmeta, meta))
    check(set(ctens) == set(tensors), "names")
    for name, want in tensors.items():
        check(ctens.get(name) == want, "tensor %r as read by C" % name)

    # C -> Python
    b = os.path.join(TMP, "c.safetensors")
    rc, out, err = tool("copy", a, b)
    check(rc == 0, "C copies the Python file: " + err)
    with open(b, "rb") as fp:
        blob = fp.read()
    hlen = int.from_bytes(blob[:8], "little")
    check(hlen % 8 == 0, "header padded to 8 bytes")
    back = dict(deserialize(blob))
    check(set(back) == set(tensors), "Python reads every tensor of the C file")
    for name, (dt, shape, data) in tensors.items():
        got = back.get(name)
        check(got is not None and got["dtype"] == dt and tuple(got["shape"]) == shape
              and bytes(got["data"]) == data, "tensor %r as read by Python" % name)
    with safe_open(b, framework="numpy") as f:
        check(f.metadata() == meta, "metadata through safe_open")
        x = f.get_tensor("scalar")
        check(x.shape == () and float(x) == 3.25, "scalar through safe_open")
        name = "layers.9.f32.weight"
        check(f.get_tensor(name).tobytes() == tensors[name][2], "F32 through safe_open")

    # byte-identical files with one metadata key (Python orders a HashMap)
    one = {"format": "pt"}
    with open(a, "wb") as fp:
        fp.write(py_serialize(tensors, one))
    rc, _, err = tool("copy", a, b)
    check(rc == 0, err)
    with open(a, "rb") as fa, open(b, "rb") as fb:
        check(fa.read() == fb.read(), "C file == Python file byte for byte")

    # edge cases: we accept exactly what Python accepts
    u8 = '"dtype":"U8","shape":[%s],"data_offsets":[%s]'
    edges = {
        "hole": ('{"a":{%s}}' % (u8 % ("2", "2,4")), 4, "hole of 2 bytes"),
        "exponent": ('{"a":{%s}}' % (u8 % ("1", "0,1e0")), 1, "plain non-negative integer"),
        "fraction": ('{"a":{%s}}' % (u8 % ("1.0", "0,1")), 1, "plain non-negative integer"),
        "trailing": ('{"a":{%s}}' % (u8 % ("1", "0,1")), 2, "trailing bytes"),
        "dup-name": ('{"a":{%s},"a":{%s}}' % (u8 % ("1", "0,1"), u8 % ("1", "1,2")), 2,
                     "duplicate tensor name"),
        "overlap": ('{"a":{%s},"b":{%s}}' % (u8 % ("2", "0,2"), u8 % ("2", "1,3")), 3, "overlap"),
        "extra-key": ('{"a":{%s,"x":[1]}}' % (u8 % ("1", "0,1")), 1, None),
        "null-meta": ('{"__metadata__":null,"a":{%s}}' % (u8 % ("1", "0,1")), 1, None),
        "zero-size": ('{"a":{%s},"b":{%s}}' % (u8 % ("0", "0,0"), u8 % ("0", "0,0")), 0, None),
    }
    for name, (h, dlen, phrase) in edges.items():
        hb = h.encode() + b" " * (-len(h) % 8)
        blob = len(hb).to_bytes(8, "little") + hb + b"\0" * dlen
        with open(a, "wb") as fp:
            fp.write(blob)
        rc, _, err = tool("dump", a)
        try:
            deserialize(blob)
            py_ok = True
        except Exception:
            py_ok = False
        check(py_ok == (phrase is None), "%s: Python %s" % (name, py_ok))
        if phrase is None:
            check(rc == 0, "%s: C rejects what Python accepts: %s" % (name, err))
        else:
            check(rc == 1 and phrase in err, "%s: C: %s" % (name, err))

    # index writer vs json.dumps, and the checkpoint reader
    d = os.path.join(TMP, "ckpt")
    os.makedirs(d)
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2],
              "model-00002-of-00002.safetensors": names[1::2]}
    for file, part in shards.items():
        with open(os.path.join(d, file), "wb") as fp:
            fp.write(py_serialize({n: tensors[n] for n in part}, None))
    rc, _, err = tool("index", d, *shards)
    check(rc == 0, "index: " + err)
    wmap = {n: f for f, part in shards.items() for n in part}
    total = sum(len(t[2]) for t in tensors.values())
    want = json.dumps({"metadata": {"total_size": total},
                       "weight_map": dict(sorted(wmap.items()))}, indent=2) + "\n"
    with open(os.path.join(d, "model.safetensors.index.json")) as fp:
        got = fp.read()
    check(got == want, "index text:\n%s\nwant:\n%s" % (got, want))
    rc, out, err = tool("ckpt", d)
    check(rc == 0, "ckpt: " + err)
    seen = {bytes.fromhex(line.split(" ")[1]).decode(): line.split(" ")[2]
            for line in out.splitlines()}
    check(seen == wmap, "checkpoint map")

    print("%d failures" % failures)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
