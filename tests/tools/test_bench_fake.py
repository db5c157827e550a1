"""test_bench_fake.py - `dsv4 bench serve` and `dsv4 bench plot` against a fake
OpenAI-compatible server (http.server) whose answers and timings are known.

- the published sweep's requests, byte for byte in content: {model, messages:
  [one user message], max_tokens 128, temperature 0}, the 5 published prompts
  cycled, the model from GET /v1/models, at most c requests in flight;
- the published tok/s: sum of usage.completion_tokens of the good requests /
  wall time (first request sent -> last response), on a server that takes a
  known 0.1 s per request; only good requests count;
- errors counted by kind and never fatal: HTTP 500, a body that is not JSON,
  finish_reason abort, zero tokens, no usage, a connection closed without an
  answer, a request past --timeout; a chunked non-streamed answer is good;
- streaming: TTFT and ITL on a server that waits 0.2 s then sends a chunk every
  0.05 s; tokens from the usage chunk, not from the chunk count; a stream
  without [DONE] and an error event are errors;
- --rate, --duration, the MTP probe from vllm:-prefixed counters split over two
  engine labels (summed), and strict options (exit 2), --target (gRPC) ones too;
- the plot of the results: well-formed SVG with the panels, series and legend,
  the published reference line, bad input refused.
Bounded in time (about 20 s).
"""

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BUILD = os.environ.get("DSV4_BUILDDIR", ".")
TMP = os.environ.get("DSV4_TMP", "/tmp")
DSV4 = os.path.join(BUILD, "dsv4")
failures = 0

PUBLISHED = [
    "Briefly explain what a black hole is.",
    "Translate 'good morning' into Japanese and Spanish.",
    "What is 12345 * 678? Show the multiplication step by step.",
    "List five common Python data structures.",
    "Compose a haiku about autumn.",
]
MTP = [
    "Write a Python function that returns the nth Fibonacci number using memoization.",
    "What is the time complexity of binary search and why?",
    "Solve: x^2 - 5x + 6 = 0. Show your work.",
    "Explain how merge sort works in a paragraph.",
]


def check(cond, what):
    global failures
    if not cond:
        failures += 1
        print("FAIL:", what)
    else:
        print("ok:", what)


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.bodies = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.delay = 0.1
        self.spec = [0, 0, 0]  # drafts, draft tokens, accepted (per engine, 2 engines)


S = State()


def tokens_for(prompt):
    return 10 + PUBLISHED.index(prompt) if prompt in PUBLISHED else 12


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def setup(self):
        super().setup()
        # headers and body go out in separate writes: without this, Nagle + delayed ACK
        # add ~40 ms to each answer and blur the timings the test checks
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send_json(self, code, obj, chunked=False, raw=None):
        body = raw if raw is not None else json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(body), 7):
                part = body[i:i + 7]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def do_GET(self):
        if self.path == "/v1/models":
            self.send_json(200, {"object": "list", "data": [{"id": "fake-model"}]})
        elif self.path == "/metrics":
            d, t, a = S.spec
            lines = ["# HELP vllm:spec_decode_num_drafts_total drafts",
                     "# TYPE vllm:spec_decode_num_drafts_total counter"]
            for e in ("0", "1"):
                lines += [f'vllm:spec_decode_num_drafts_total{{engine="{e}",model_name="m"}} {d}',
                          f'vllm:spec_decode_num_draft_tokens_total{{engine="{e}"}} {t}',
                          f'vllm:spec_decode_num_accepted_tokens_total{{engine="{e}"}} {a}',
                          f'vllm:spec_decode_num_accepted_tokens_per_pos_total{{engine="{e}",position="0"}} {a}']
            body = ("\n".join(lines) + "\n").encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_json(404, {"error": {"message": "no such path"}})

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(n))
        with S.lock:
            S.bodies.append(body)
            S.in_flight += 1
            S.max_in_flight = max(S.max_in_flight, S.in_flight)
        try:
            self.answer(body)
        finally:
            with S.lock:
                S.in_flight -= 1

    def answer(self, body):
        msgs = body.get("messages") or [{}]
        prompt = msgs[0].get("content", "")
        if body.get("stream"):
            return self.answer_stream(prompt)
        if prompt in MTP:
            with S.lock:
                S.spec = [S.spec[0] + 5, S.spec[1] + 5, S.spec[2] + 3]  # x2 engines
        time.sleep(S.delay)
        usage = {"prompt_tokens": 9, "completion_tokens": tokens_for(prompt), "total_tokens": 0}
        ok = {"id": "x", "object": "chat.completion", "model": "fake-model",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                           "finish_reason": "length"}], "usage": usage}
        if prompt == "case-500":
            return self.send_json(500, {"error": {"message": "boom"}})
        if prompt == "case-badjson":
            return self.send_json(200, None, raw=b"{not json")
        if prompt == "case-abort":
            ok["choices"][0]["finish_reason"] = "abort"
        if prompt == "case-zero":
            ok["usage"]["completion_tokens"] = 0
            ok["choices"][0]["finish_reason"] = "stop"
        if prompt == "case-nousage":
            del ok["usage"]
        if prompt == "case-close":
            self.close_connection = True
            return
        if prompt == "case-slow":
            time.sleep(1.5)
        self.send_json(200, ok, chunked=prompt == "case-chunked")

    def answer_stream(self, prompt):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def ev(obj):
            data = b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        def chunk(delta, finish=None):
            return {"object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                    "usage": None}

        ev(chunk({"role": "assistant", "content": ""}))
        time.sleep(0.2)
        for i in range(5):
            if i:
                time.sleep(0.05)
            ev(chunk({"content": f"w{i} "}))
            if prompt == "case-errevent" and i == 2:
                ev({"error": {"message": "engine died"}})
        ev(chunk({}, "length"))
        ev({"object": "chat.completion.chunk", "choices": [],
            "usage": {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16}})
        if prompt != "case-nodone":
            ev(b"[DONE]")
        self.wfile.write(b"0\r\n\r\n")


def run(args, want_rc=0):
    p = subprocess.run([DSV4, "bench", "serve"] + args + ["--no-progress"], capture_output=True,
                       text=True, timeout=120)
    if p.returncode != want_rc:
        print(p.stdout, p.stderr)
    check(p.returncode == want_rc, f"bench serve {' '.join(args[:6])}... exit {p.returncode}")
    return p


def load(path):
    with open(path) as f:
        return json.load(f)


def reset():
    with S.lock:
        S.bodies = []
        S.max_in_flight = 0


def main():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    srv.handle_error = lambda *a: None  # answers to clients that timed out: broken pipes
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}"

    # 1. the published sweep on known timings
    reset()
    j1 = os.path.join(TMP, "pub.json")
    p = run(["--openai", url, "--concurrency", "2,4", "--requests-per-level", "10",
             "--json", j1])
    d = load(j1)
    check(d["model"] == "fake-model" and d["target"] == url, "model from /v1/models, target")
    check(all(k in d for k in ("date", "client_cpu", "settings", "levels")), "header fields")
    check(d["settings"]["max_tokens"] == 128 and d["settings"]["stream"] is False,
          "published defaults: max_tokens 128, not streamed")
    want = {"model", "messages", "max_tokens", "temperature"}
    check(all(set(b) == want for b in S.bodies), f"request keys exactly {sorted(want)}")
    check(all(b["max_tokens"] == 128 and b["temperature"] == 0 and b["model"] == "fake-model"
              and b["messages"][0]["role"] == "user" and len(b["messages"]) == 1
              for b in S.bodies), "max_tokens 128, temperature 0, one user message")
    got = sorted(b["messages"][0]["content"] for b in S.bodies)
    check(got == sorted((PUBLISHED * 4)[:10] * 2), "the 5 published prompts cycled")
    check(S.max_in_flight <= 4, f"at most c in flight ({S.max_in_flight})")
    for lv, c in zip(d["levels"], (2, 4)):
        tokens = sum(tokens_for(PUBLISHED[i % 5]) for i in range(10))
        check(lv["concurrency"] == c and lv["requests"] == 10 and lv["errors"] == 0,
              f"c={c}: 10 requests, no errors")
        check(lv["completion_tokens"] == tokens, f"c={c}: completion tokens {tokens}")
        check(abs(lv["tok_s"] - lv["completion_tokens"] / lv["wall_s"]) < 1e-6 * lv["tok_s"],
              f"c={c}: tok_s = completion_tokens / wall_s")
        ideal = 0.1 * (-(-10 // c))  # ceil(10 / c) rounds of 0.1 s
        check(ideal <= lv["wall_s"] < ideal + 0.3, f"c={c}: wall {lv['wall_s']:.3f} s ~ {ideal:.2f} s")
        check(tokens / (ideal + 0.3) < lv["tok_s"] <= tokens / ideal,
              f"c={c}: tok/s {lv['tok_s']:.1f} ~ {tokens / ideal:.1f}")
        rows = lv["rows"]
        check(len(rows) == 10 and sum(r["completion_tokens"] for r in rows) == tokens,
              f"c={c}: rows sum to the level's tokens")
        per = sorted(r["completion_tokens"] / (r["e2e_ms"] / 1e3) for r in rows)
        check(abs(lv["req_tok_s"]["p50"] - (per[4] + per[5]) / 2) < 1e-6 * per[5],
              f"c={c}: per-request tok/s p50 = median of completion_tokens / e2e")
        check(lv["ttft_ms"] is None and lv["itl_ms"] is None, f"c={c}: no TTFT/ITL unstreamed")
    check("tok/s" in p.stdout and re.search(r"^\s+2\s+10\s+0\s", p.stdout, re.M)
          and re.search(r"^\s+4\s+10\s+0\s", p.stdout, re.M), "summary table printed")

    # 2. errors by kind, never fatal
    reset()
    pf = os.path.join(TMP, "cases.txt")
    cases = ["case-ok", "case-500", "case-badjson", "case-abort", "case-zero", "case-nousage",
             "case-close", "case-chunked", "case-slow"]
    with open(pf, "w") as f:
        f.write("\n".join(cases) + "\n")
    j2 = os.path.join(TMP, "err.json")
    run(["--openai", url, "--concurrency", "3", "--requests-per-level", "18",
         "--prompt-file", pf, "--timeout", "0.8", "--json", j2])
    lv = load(j2)["levels"][0]
    k = lv["error_kinds"]
    check(lv["requests"] == 18 and lv["ok"] == 4 and lv["errors"] == 14,
          f"18 requests: 4 good, 14 errors ({lv['ok']}, {lv['errors']})")
    check(k == {"connect": 0, "timeout": 2, "io": 2, "protocol": 0, "http": 2, "api": 4,
                "finish": 4}, f"error kinds {k}")
    check(lv["completion_tokens"] == 4 * 12, "only good requests' tokens count")
    check(isinstance(lv["first_error"], str), "first error message")
    msgs = {r["message"] for r in lv["rows"] if "message" in r}
    check(any("boom" in m for m in msgs) and any("abort" in m for m in msgs),
          "error messages name the cause")

    # 3. streaming: TTFT, ITL, tokens from usage
    reset()
    j3 = os.path.join(TMP, "stream.json")
    run(["--openai", url + "/v1", "--concurrency", "1,2", "--requests-per-level", "4",
         "--stream", "--json", j3])
    d3 = load(j3)
    check(all(b.get("stream") is True and b.get("stream_options") == {"include_usage": True}
              for b in S.bodies), "stream with stream_options.include_usage")
    for lv in d3["levels"]:
        c = lv["concurrency"]
        check(lv["errors"] == 0 and lv["completion_tokens"] == 4 * 7,
              f"c={c}: tokens from usage (7 each, not 5 chunks)")
        check(all(r["events"] == 5 for r in lv["rows"]), f"c={c}: 5 output events each")
        t, i = lv["ttft_ms"], lv["itl_ms"]
        check(190 <= t["p50"] < 450 and t["p50"] <= t["p90"] <= t["p99"],
              f"c={c}: TTFT p50 {t['p50']:.1f} ms ~ 200")
        check(45 <= i["p50"] < 150 and i["n"] == 4 * 4, f"c={c}: ITL p50 {i['p50']:.1f} ms ~ 50")
        check(lv["tpot_ms"] is not None, f"c={c}: TPOT")
    reset()
    with open(pf, "w") as f:
        f.write("case-ok\ncase-nodone\ncase-errevent\n")
    j4 = os.path.join(TMP, "stream_err.json")
    run(["--openai", url, "--concurrency", "3", "--requests-per-level", "3", "--stream",
         "--prompt-file", pf, "--json", j4])
    lv = load(j4)["levels"][0]
    check(lv["ok"] == 1 and lv["error_kinds"]["protocol"] == 1 and lv["error_kinds"]["api"] == 1,
          f"stream without [DONE]: protocol; error event: api ({lv['error_kinds']})")

    # 4. --rate, --duration
    S.delay = 0.02
    j5 = os.path.join(TMP, "rate.json")
    run(["--openai", url, "--rate", "50,100", "--requests-per-level", "10", "--json", j5])
    d5 = load(j5)
    check([lv["rate"] for lv in d5["levels"]] == [50, 100] and
          all(lv["requests"] == 10 and lv["errors"] == 0 for lv in d5["levels"]),
          "--rate: one level per rate, 10 requests each")
    check(d5["settings"]["mode"] == "rate", "rate mode recorded")
    j6 = os.path.join(TMP, "dur.json")
    S.delay = 0.1
    run(["--openai", url, "--concurrency", "2", "--duration", "0.45", "--json", j6])
    lv = load(j6)["levels"][0]
    check(8 <= lv["requests"] <= 12, f"--duration 0.45 at c=2, 0.1 s each: {lv['requests']} requests")

    # 5. the MTP probe: vllm: counters over two engines, summed
    reset()
    S.delay = 0.01
    j7 = os.path.join(TMP, "mtp.json")
    p = run(["--mtp-probe", "--openai", url, "--probe-prompts", "6", "--json", j7])
    m = load(j7)["mtp"]
    got = [b["messages"][0]["content"] for b in S.bodies]
    check(got == (MTP * 2)[:6], "probe: the 4 published prompts in order, sequential")
    check(S.max_in_flight == 1 and all(b["max_tokens"] == 512 for b in S.bodies),
          "probe: one at a time, max_tokens 512")
    check(m["draft_tokens"] == 60 and m["accepted_tokens"] == 36 and m["drafts"] == 60,
          f"probe: deltas summed over engines ({m['draft_tokens']}, {m['accepted_tokens']})")
    check(abs(m["acceptance"] - 0.6) < 1e-12 and abs(m["accept_length"] - 1.6) < 1e-12,
          "probe: acceptance 0.6, accept length 1.6")
    pp = m["per_position"]
    check(len(pp) == 1 and pp[0]["drafted"] == 60 and abs(pp[0]["acceptance"] - 0.6) < 1e-12,
          "probe: per position (vLLM: drafts as denominator)")
    check(m["level"]["requests"] == 6 and m["level"]["errors"] == 0, "probe: its requests")
    check("acceptance 60.00%" in p.stdout, "probe: printed")
    run(["--mtp-probe", "--openai", url, "--metrics", url + "/nothing", "--probe-prompts", "1"], 1)

    # 6. strict options
    for args, msg in [([], "--openai URL or --target HOST:PORT is required"),
                      (["--openai", url, "--concurrency", "0"], "bad --concurrency '0'"),
                      (["--openai", url, "--concurrency", "1,,2"], "bad --concurrency"),
                      (["--openai", url, "--max-tokens", "x"], "bad --max-tokens 'x'"),
                      (["--openai", url, "--rate", "-1"], "bad --rate"),
                      (["--openai", url, "--rate", "1", "--concurrency", "1,2"], "one cap"),
                      (["--openai", url, "--prompt-len", "5-2"], "bad --prompt-len"),
                      (["--openai", url, "--prompt-len", "2", "--prompt-file", pf], "exclude"),
                      (["--openai", "https://x", "--model", "m"], "only http://"),
                      (["--openai", url, "--temperature", "nan"], "bad --temperature"),
                      (["--openai", url, "--bogus"], "unknown option '--bogus'"),
                      (["--openai", url, "--json"], "--json needs a value"),
                      (["--openai", url, "--target", "127.0.0.1:1"], "exclude each other"),
                      (["--target", "127.0.0.1"], "bad --target '127.0.0.1'"),
                      (["--mtp-probe", "--target", "127.0.0.1:1"], "needs --metrics URL")]:
        p = subprocess.run([DSV4, "bench", "serve"] + args, capture_output=True, text=True,
                           timeout=30)
        check(p.returncode == 2 and msg in p.stderr, f"usage error {args[-2:]}: {p.stderr.strip()}")
    p = subprocess.run([DSV4, "bench", "serve", "--openai", "http://127.0.0.1:1", "--model", "m",
                        "--concurrency", "2", "--requests-per-level", "2", "--no-progress"],
                       capture_output=True, text=True, timeout=30)
    check(p.returncode == 1 and "every request" in p.stderr, "nothing listening: exit 1, counted")
    j8 = os.path.join(TMP, "grpc_refused.json")
    p = subprocess.run([DSV4, "bench", "serve", "--target", "127.0.0.1:1", "--model", "m",
                        "--concurrency", "2", "--requests-per-level", "2", "--no-progress",
                        "--json", j8], capture_output=True, text=True, timeout=30)
    d8 = load(j8)
    check(p.returncode == 1 and d8["transport"] == "grpc"
          and d8["levels"][0]["error_kinds"]["connect"] == 2,
          "gRPC, nothing listening: exit 1, connect errors")
    p = subprocess.run([DSV4, "bench", "serve", "--help"], capture_output=True, text=True)
    opts = sorted(set(o for o in p.stdout.split() if o.startswith("--")))
    check(p.returncode == 0 and len(opts) >= 20, f"--help lists {len(opts)} options")

    # 7. the plot
    svg = os.path.join(TMP, "out.svg")
    p = subprocess.run([DSV4, "bench", "plot", "--out", svg, "--label", "pub & <x>", j1, j3],
                       capture_output=True, text=True, timeout=30)
    check(p.returncode == 0, f"plot exit {p.returncode} {p.stderr}")
    ns = "{http://www.w3.org/2000/svg}"
    root = ET.parse(svg).getroot()
    check(root.tag == ns + "svg", "SVG root element")
    ids = [g.get("id") for g in root.iter(ns + "g")]
    check(ids == ["panel-tok_s", "panel-ttft", "panel-itl"], f"panels {ids}")
    lines = list(root.iter(ns + "polyline"))
    check(len(lines) == 2 + 3 + 3, f"2 tok/s lines + 3 TTFT + 3 ITL ({len(lines)})")
    texts = "".join(t.text or "" for t in root.iter(ns + "text"))
    check("pub & <x>" in texts and "concurrency (log2)" in texts and "tok/s" in texts,
          "legend, axis labels")
    for t in ("1", "2", "4"):
        check(any((x.text or "") == t for x in root.iter(ns + "text")), f"x tick {t}")
    p = subprocess.run([DSV4, "bench", "plot", "--out", svg, "--published", j1, "--label", "s", j3],
                       capture_output=True, text=True, timeout=30)
    root = ET.parse(svg).getroot()
    legend = [t.text for t in root.iter(ns + "text") if t.get("class") == "legend"]
    check(p.returncode == 0 and len(list(root.iter(ns + "polyline"))) == 9
          and legend[:3] == ["fake-model @ 127.0.0.1:%d" % srv.server_address[1], "s",
                             "published (vLLM, 8x B300)"],
          f"--published adds the reference line; --label names the file after it ({legend[:3]})")
    ticks = [t.text for t in root.iter(ns + "text")]
    check("128" in ticks and "16" in ticks, "x axis widened to the published c = 1..128")
    p = subprocess.run([DSV4, "bench", "plot", "--out", svg, j1, "--label", "x"],
                       capture_output=True, text=True)
    check(p.returncode == 2 and "not followed by a file" in p.stderr, "a dangling --label")
    p = subprocess.run([DSV4, "bench", "plot", "--out", svg, j7], capture_output=True, text=True)
    check(p.returncode == 1 and "no \"levels\"" in p.stderr, "plot refuses a probe-only file")
    p = subprocess.run([DSV4, "bench", "plot", "--out", svg, pf], capture_output=True, text=True)
    check(p.returncode == 1 and "not a JSON object" in p.stderr, "plot refuses a non-JSON file")
    p = subprocess.run([DSV4, "bench", "plot", j1], capture_output=True, text=True)
    check(p.returncode == 2 and "--out" in p.stderr, "plot needs --out")

    srv.shutdown()
    print(f"{failures} failures")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
