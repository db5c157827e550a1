"""Writes the seed corpora of the io fuzz targets (committed; rerun after edits).

tests/fuzz/corpus/st_header/: whole safetensors files (valid ones and one
per malformed-file rule of engine/io/safetensors.c) named *.st, and bare
headers describing a 64-byte data section named *.json.
tests/fuzz/corpus/config/: the real V4 configs, variants (NVFP4 artifact,
FP8 experts, defaults, tiny models) and malformed ones.
Inputs found by libFuzzer runs are added next to these as crash-* / found-*.

usage: python3 tests/fuzz/make_corpus.py [SHARED_DATA_DIR]
"""
import json
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ST = os.path.join(HERE, "corpus", "st_header")
CFG = os.path.join(HERE, "corpus", "config")


def st_file(header, data=b"", hlen=None, pad=True):
    h = header.encode() if isinstance(header, str) else header
    if pad:
        h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h) if hlen is None else hlen) + h + data


def ent(dtype, shape, b, e):
    return {"dtype": dtype, "shape": shape, "data_offsets": [b, e]}


def hdr(d):
    return json.dumps(d, separators=(",", ":"))


def write(dirname, name, blob):
    os.makedirs(dirname, exist_ok=True)
    with open(os.path.join(dirname, name), "wb") as fp:
        fp.write(blob if isinstance(blob, bytes) else blob.encode())


def st_corpus():
    u8 = lambda b, e: ent("U8", [e - b], b, e)
    valid = {
        "valid-empty": ("{}", b""),
        "valid-meta": (hdr({"__metadata__": {"format": "pt", "k": "ü"}}), b""),
        "valid-every-dtype": None,
        "valid-scalar-and-empty": (hdr({"s": ent("F32", [], 0, 4), "z": ent("BF16", [0, 3], 4, 4)}),
                                   b"\0\0\x80?"),
        "valid-v4-like": (hdr({
            "__metadata__": {"format": "pt"},
            "layers.0.ffn.experts.0.w1.weight": ent("I8", [4, 2], 0, 8),
            "layers.0.ffn.experts.0.w1.scale": ent("F8_E8M0", [4, 1], 8, 12),
            "layers.0.attn.wq_a.weight": ent("F8_E4M3", [2, 4], 12, 20),
            "layers.0.ffn.gate.tid2eid": ent("I64", [1, 2], 20, 36),
            "norm.weight": ent("BF16", [2], 36, 40)}), bytes(range(40))),
        "valid-null-meta-extra-keys": ('{"__metadata__":null,"a":{"dtype":"U8","shape":[1],'
                                       '"data_offsets":[0,1],"x":[1,2]}}', b"A"),
        "valid-escaped-names": ('{"a\\"b\\\\c\\u00fc\\ud83d\\ude00":{"dtype":"U8","shape":[1],'
                                '"data_offsets":[0,1]}}', b"A"),
    }
    sizes = {"BOOL": 1, "U8": 1, "I8": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4,
             "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "F8_E4M3": 1, "F8_E5M2": 1,
             "F8_E8M0": 1}
    d, off = {}, 0
    for name, s in sizes.items():
        d["t." + name] = ent(name, [2, 3], off, off + 6 * s)
        off += 6 * s
    valid["valid-every-dtype"] = (hdr(d), bytes(i & 0xff for i in range(off)))
    for name, (h, data) in valid.items():
        write(ST, name + ".st", st_file(h, data))

    bad = {
        "bad-short": b"\x05\0\0\0",
        "bad-hlen-past-eof": st_file("{}", hlen=1000),
        "bad-hlen-huge": st_file("{}", hlen=(100 << 20) + 1),
        "bad-hlen-max": st_file("{}", hlen=2 ** 64 - 1),
        "bad-not-object": st_file("[1,2]"),
        "bad-not-json": st_file('{"a": '),
        "bad-trailing": st_file('{"a":{}} x', pad=False),
        "bad-control-byte": st_file(b'{"a":\x01{}}'),
        "bad-utf8": st_file(b'{"\xff":{}}'),
        "bad-overlong-utf8": st_file(b'{"\xc0\xaf":{}}'),
        "bad-entry-not-object": st_file('{"a":5}'),
        "bad-missing-dtype": st_file('{"a":{"shape":[],"data_offsets":[0,1]}}', b"x"),
        "bad-dtype-type": st_file('{"a":{"dtype":5,"shape":[],"data_offsets":[0,1]}}', b"x"),
        "bad-dup-key": st_file('{"a":{"dtype":"U8","dtype":"U8","shape":[],"data_offsets":[0,1]}}',
                               b"x"),
        "bad-shape-type": st_file('{"a":{"dtype":"U8","shape":1,"data_offsets":[0,1]}}', b"x"),
        "bad-offsets-len": st_file('{"a":{"dtype":"U8","shape":[],"data_offsets":[0]}}', b"x"),
        "bad-offsets-string": st_file('{"a":{"dtype":"U8","shape":[],"data_offsets":["0",1]}}',
                                      b"x"),
        "bad-offsets-float": st_file('{"a":{"dtype":"U8","shape":[],"data_offsets":[0.5,1]}}',
                                     b"x"),
        "bad-offsets-negative": st_file('{"a":{"dtype":"U8","shape":[],"data_offsets":[-1,0]}}',
                                        b"x"),
        "bad-offsets-huge": st_file('{"a":{"dtype":"U8","shape":[],"data_offsets":[0,1e300]}}',
                                    b"x"),
        "bad-exponent": st_file('{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1e0]}}', b"x"),
        "bad-leading-zero": st_file('{"a":{"dtype":"U8","shape":[01],"data_offsets":[0,1]}}',
                                    b"x"),
        "bad-minus-zero": st_file('{"a":{"dtype":"U8","shape":[-0],"data_offsets":[0,0]}}'),
        "bad-offsets-reversed": st_file(hdr({"a": ent("U8", [4], 4, 0)}), b"xxxx"),
        "bad-dtype-unknown": st_file(hdr({"a": ent("F99", [], 0, 1)}), b"x"),
        "bad-size-mismatch": st_file(hdr({"a": ent("F32", [2], 0, 4)}), b"xxxx"),
        "bad-negative-dim": st_file(hdr({"a": ent("U8", [-1], 0, 1)}), b"x"),
        "bad-numel-overflow": st_file(hdr({"a": ent("U8", [2 ** 32, 2 ** 32], 0, 1)}), b"x"),
        "bad-bytes-overflow": st_file(hdr({"a": ent("F32", [2 ** 31, 2 ** 31, 2], 0, 1)}), b"x"),
        "bad-too-many-dims": st_file(hdr({"a": ent("U8", [1] * 9, 0, 1)}), b"x"),
        "bad-truncated-data": st_file(hdr({"a": ent("F32", [2], 0, 8)}), b"xxxx"),
        "bad-overlap": st_file(hdr({"a": u8(0, 4), "b": u8(2, 6)}), b"x" * 6),
        "bad-same-range": st_file(hdr({"a": u8(0, 4), "b": u8(0, 4)}), b"x" * 4),
        "bad-hole": st_file(hdr({"a": u8(0, 4), "b": u8(8, 12)}), b"x" * 12),
        "bad-leading-hole": st_file(hdr({"a": u8(2, 6)}), b"x" * 6),
        "bad-trailing-bytes": st_file(hdr({"a": u8(0, 4)}), b"x" * 9),
        "bad-dup-name": st_file('{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
                                '"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}', b"xx"),
        "bad-dup-metadata": st_file('{"__metadata__":{},"__metadata__":{}}'),
        "bad-metadata-type": st_file('{"__metadata__":[1]}'),
        "bad-metadata-value": st_file('{"__metadata__":{"k":1}}'),
        "bad-metadata-dup-key": st_file('{"__metadata__":{"k":"1","k":"2"}}'),
        "bad-deep-nesting": st_file("{\"a\":" + "[" * 2000 + "]" * 2000 + "}"),
    }
    for name, blob in bad.items():
        write(ST, name + ".st", blob)
    # bare headers describing a 64-byte data section
    write(ST, "bare-valid.json", hdr({"a": ent("F32", [4, 2], 0, 32), "b": ent("I64", [4], 32, 64)}))
    write(ST, "bare-meta.json", hdr({"__metadata__": {"k": "v"}, "a": ent("U8", [8, 8], 0, 64)}))
    write(ST, "bare-hole.json", hdr({"a": ent("U8", [8], 0, 8), "b": ent("U8", [8], 16, 24)}))


def cfg_corpus(shared):
    for name in ("v4-pro-config.json", "v4-flash-config.json"):
        with open(os.path.join(shared, name), "rb") as fp:
            write(CFG, name, fp.read())
    with open(os.path.join(shared, "v4-flash-config.json")) as fp:
        base = json.load(fp)

    def variant(name, **edits):
        c = json.loads(json.dumps(base))
        for k, v in edits.items():
            if v is None:
                c.pop(k, None)
            else:
                c[k] = v
        write(CFG, name + ".json", json.dumps(c, indent=2))

    q = dict(base["quantization_config"])
    nv = dict(q, moe_quant_algo="NVFP4",
              expert_format={"name": "nvfp4", "weight_dtype": "fp4_e2m1", "group_size": 16},
              mtp_e_proj_h_proj_dequant="bf16")
    variant("nvfp4-artifact", quantization_config=nv)
    variant("nvidia-export", expert_dtype=None,
            quantization_config=dict(q, moe_quant_algo="nvfp4", quant_algo="MIXED_PRECISION",
                                     kv_cache_quant_algo=None, group_size=16))
    variant("fp8-experts", expert_dtype="fp8")
    variant("defaults", expert_dtype=None, compress_rope_theta=None, rope_scaling=None,
            quantization_config=None, hc_mult=None, hc_eps=None, num_key_value_heads=None)
    variant("short-ratios", compress_ratios=base["compress_ratios"][:-1])
    variant("groups", n_group=8, topk_group=4)
    variant("tiny", hidden_size=256, num_hidden_layers=4, num_attention_heads=8, o_groups=2,
            q_lora_rank=64, o_lora_rank=64, moe_intermediate_size=64, n_routed_experts=8,
            num_experts_per_tok=2, num_hash_layers=1, index_topk=16, vocab_size=1024,
            compress_ratios=[0, 4, 8, 4, 0])
    variant("bad-type", hidden_size="4096")
    variant("bad-float", hidden_size=4096.5)
    variant("bad-missing", vocab_size=None)
    variant("bad-groups", num_attention_heads=63)
    variant("bad-ratio", compress_ratios=[3] * 44)
    variant("bad-yarn", rope_scaling={"type": "yarn", "factor": 16, "mscale": 1.0})
    variant("bad-quant", quantization_config=dict(q, moe_quant_algo="MXFP8"))
    variant("bad-contradiction", expert_dtype="fp8", quantization_config=nv)
    write(CFG, "bad-dup.json", '{"vocab_size": 1, "vocab_size": 2}')
    write(CFG, "bad-syntax.json", '{"vocab_size": ')
    write(CFG, "bad-array.json", "[1, 2, 3]")


if __name__ == "__main__":
    shared = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "..", "..",
                                                                 "shared", "data")
    st_corpus()
    cfg_corpus(shared)
