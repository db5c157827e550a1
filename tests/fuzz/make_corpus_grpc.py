"""Writes the seed corpus of the gRPC fuzz target (committed; rerun after edits).

tests/fuzz/corpus/grpc/: inputs of tests/fuzz/fuzz_grpc.c: byte 0 the method
(the order of rpc/grpc_engine.c's table), byte 1 the piece size, byte 2 the
message size limit, then a request body: valid requests of every method
(hand-encoded protobuf, so that no protobuf package is needed) and one input
per rule of the framing and of request checking.
Inputs found by libFuzzer runs are added next to these as crash-* / found-*.

usage: python3 tests/fuzz/make_corpus_grpc.py
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus", "grpc")

GENERATE, ABORT, MODEL, SERVER, LOADS, TOKENIZE, DETOKENIZE, CHECK, WATCH = range(9)


def varint(v):
    out = b""
    while True:
        b = v & 0x7F
        v >>= 7
        out += bytes([b | (0x80 if v else 0)])
        if not v:
            return out


def key(field, wt):
    return varint(field << 3 | wt)


def ln(field, data):
    data = data.encode() if isinstance(data, str) else data
    return key(field, 2) + varint(len(data)) + data


def u(field, v):
    return key(field, 0) + varint(v)


def f32(field, v):
    return key(field, 5) + struct.pack("<f", v)


def frame(msg, flag=0, length=None):
    return bytes([flag]) + struct.pack(">I", len(msg) if length is None else length) + msg


def packed(ids):
    return b"".join(varint(i) for i in ids)


def sampling(**kw):
    m = b""
    if "temperature" in kw:
        m += f32(1, kw["temperature"])
    if "top_p" in kw:
        m += f32(2, kw["top_p"])
    if "top_k" in kw:
        m += u(3, kw["top_k"])
    if "seed" in kw:
        m += u(8, kw["seed"])
    if "max_new_tokens" in kw:
        m += u(9, kw["max_new_tokens"])
    for s in kw.get("stop", []):
        m += ln(10, s)
    if "stop_ids" in kw:
        m += ln(11, packed(kw["stop_ids"]))
    if "skip" in kw:
        m += u(13, kw["skip"])
    return m


def seed(method, body, piece=7, limit=7):
    return bytes([method, piece, limit]) + body


def main():
    os.makedirs(OUT, exist_ok=True)
    gen_full = (ln(1, "req-1") + ln(2, "Hello, world \u00e9") +
                ln(4, sampling(temperature=0.7, top_p=0.9, top_k=40, seed=42,
                               max_new_tokens=64, stop=["\n\n", "END"], stop_ids=[1, 2],
                               skip=0)) + u(5, 1) + u(6, 5) + u(7, 1))
    gen_ids = ln(3, ln(1, "orig") + ln(2, packed([104, 105, 106]))) + ln(4, sampling(
        max_new_tokens=8))
    seeds = {
        "generate-text": seed(GENERATE, frame(gen_full)),
        "generate-ids": seed(GENERATE, frame(gen_ids), piece=0),
        "generate-unknown-fields": seed(GENERATE, frame(ln(2, "p") + u(1000, 5) +
                                                        key(1001, 1) + b"\0" * 8 +
                                                        ln(4, sampling(max_new_tokens=2) +
                                                           ln(99, "x")))),
        "generate-bad-utf8": seed(GENERATE, frame(ln(2, b"a\xff"))),
        "generate-nul": seed(GENERATE, frame(ln(2, b"a\x00b"))),
        "generate-stop-bad-utf8": seed(GENERATE, frame(ln(2, "p") + ln(4, ln(10, b"\xc0\xaf")))),
        "generate-17-stops": seed(GENERATE, frame(ln(2, "p") + ln(4, sampling(stop=["s"] * 17)))),
        "generate-id-too-big": seed(GENERATE, frame(ln(3, ln(2, packed([2**31]))))),
        "generate-empty": seed(GENERATE, frame(b"")),
        "generate-bad-varint": seed(GENERATE, frame(b"\x28\xff\xff")),
        "generate-bad-length": seed(GENERATE, frame(b"\x12\x05a")),
        "generate-group": seed(GENERATE, frame(b"\x0b\x0c")),
        "generate-two-messages": seed(GENERATE, frame(ln(2, "a")) + frame(ln(2, "b"))),
        "abort": seed(ABORT, frame(ln(1, "req-1") + ln(2, "client gone"))),
        "model-info": seed(MODEL, frame(b"")),
        "server-info": seed(SERVER, frame(b"")),
        "loads": seed(LOADS, frame(b"")),
        "tokenize": seed(TOKENIZE, frame(ln(1, "tokens, please"))),
        "detokenize": seed(DETOKENIZE, frame(ln(1, packed([107, 108, 1])) + u(2, 1))),
        "detokenize-unpacked": seed(DETOKENIZE, frame(u(1, 107) + u(1, 0xFFFFFFFF))),
        "health-check": seed(CHECK, frame(ln(1, "dsv4.Engine"))),
        "health-watch": seed(WATCH, frame(ln(1, ""))),
        "frame-compressed": seed(TOKENIZE, frame(ln(1, "x"), flag=1)),
        "frame-bad-flag": seed(TOKENIZE, frame(ln(1, "x"), flag=0x80)),
        "frame-huge-length": seed(TOKENIZE, frame(b"abc", length=0xFFFFFFFF)),
        "frame-over-limit": seed(TOKENIZE, frame(ln(1, "y" * 100)), limit=0),
        "frame-truncated": seed(TOKENIZE, frame(ln(1, "abcdef"))[:8]),
        "frame-prefix-only": seed(TOKENIZE, b"\x00\x00\x00"),
        "header-values": seed(CHECK, b"99999999n"),
    }
    for name, blob in seeds.items():
        with open(os.path.join(OUT, name), "wb") as fp:
            fp.write(blob)
    print(f"{len(seeds)} inputs in {OUT}")


if __name__ == "__main__":
    main()
