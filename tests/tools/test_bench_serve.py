"""test_bench_serve.py - `dsv4 bench serve` and `dsv4 bench plot` against a real
dsv4d (tiny checkpoint, 2 workers, HTTP and gRPC on loopback, an API key).

- a bounded sweep (concurrency 1,4; 8 requests; max_tokens 8), non-streaming and
  streaming: no errors, every JSON field of the schema, rows that add up to the
  level, tok_s = completion_tokens / wall_s, and completion tokens equal to what
  the server itself counted (dsv4_generation_tokens_total before and after);
  streaming adds TTFT / ITL / TPOT percentiles in order and output events per row;
- --mtp-probe with 3 prompts and max_tokens 16: the draft / accepted deltas equal
  the test's own /metrics scrapes around the run, acceptance = accepted / drafted,
  per position too;
- the same sweeps over gRPC (--target): the same checks, transport "grpc", and
  per request the same prompt tokens as over HTTP (the chat turn is encoded on
  the client); with --ignore-eos at temperature 0, the same prompt and
  completion tokens over both transports (completions endpoint); a wrong API
  key is an api error (UNAUTHENTICATED); the probe over gRPC with --metrics;
- the plot of both sweeps is well-formed SVG with the three panels.
Bounded in time (about a minute on 2 cores).
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import xml.etree.ElementTree as ET

BUILD = os.environ.get("DSV4_BUILDDIR", ".")
TMP = os.environ.get("DSV4_TMP", "/tmp")
DSV4 = os.path.join(BUILD, "dsv4")
DSV4D = os.path.join(BUILD, "dsv4d")
KEY = "bench-key"
failures = 0


def check(cond, what):
    global failures
    if not cond:
        failures += 1
        print("FAIL:", what)
    else:
        print("ok:", what)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode()


def counter(text, name, label=None):
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)', line)
        if m and m.group(1) == name and (label is None or label in (m.group(2) or "")):
            total += float(m.group(3))
    return total


def metrics(base):
    return get(base + "/metrics")[1]


def bench(args, rc=0, shorthand=False):
    """`dsv4 bench serve ARGS`, or with shorthand the same as `dsv4 bench ARGS`"""
    cmd = [DSV4, "bench"] + ([] if shorthand else ["serve"])
    p = subprocess.run(cmd + args + ["--no-progress"], capture_output=True,
                       text=True, timeout=300)
    print(p.stdout, p.stderr)
    check(p.returncode == rc, f"bench serve {' '.join(args[:8])} exit {p.returncode}")
    return p


def all_rows(path):
    with open(path) as f:
        return [r for lv in json.load(f)["levels"] for r in lv["rows"]]


def check_pct(p, what):
    ok = isinstance(p, dict) and all(k in p for k in ("p50", "p90", "p99", "mean", "n"))
    ok = ok and 0 <= p["p50"] <= p["p90"] <= p["p99"] and p["n"] > 0
    check(ok, f"{what}: p50 <= p90 <= p99 ({p})")


def check_sweep(path, stream, gen_delta, transport="openai-http"):
    with open(path) as f:
        d = json.load(f)
    name = f"{transport} {'stream' if stream else 'plain'}"
    for k in ("target", "model", "date", "client_cpu", "settings", "levels", "transport"):
        check(k in d, f"{name}: top-level field {k}")
    check(d["model"] == "tiny" and d["settings"]["stream"] is stream, f"{name}: model and mode")
    check(d["transport"] == transport, f"{name}: transport {d['transport']}")
    status = "grpc_status" if transport == "grpc" else "http_status"
    total = 0
    for lv in d["levels"]:
        c = lv["concurrency"]
        tag = f"{name} c={c}"
        for k in ("concurrency", "requests", "completion_tokens", "wall_s", "tok_s", "ttft_ms",
                  "itl_ms", "errors", "error_kinds", "e2e_ms", "req_tok_s", "rows"):
            check(k in lv, f"{tag}: field {k}")
        check(lv["requests"] == 8 and lv["errors"] == 0 and lv["ok"] == 8,
              f"{tag}: 8 requests, no errors ({lv.get('first_error')})")
        rows = lv["rows"]
        check(sum(r["completion_tokens"] for r in rows) == lv["completion_tokens"],
              f"{tag}: rows add up to the level's completion tokens")
        check(all(0 < r["completion_tokens"] <= 8 and r["finish_reason"] in ("stop", "length")
                  for r in rows), f"{tag}: 1..max_tokens tokens, stop/length")
        check(all(r[status] == (0 if transport == "grpc" else 200) for r in rows),
              f"{tag}: {status} of each request")
        check(abs(lv["tok_s"] - lv["completion_tokens"] / lv["wall_s"]) <= 1e-9 * lv["tok_s"],
              f"{tag}: tok_s = completion_tokens / wall_s")
        check(max(r["start_s"] * 1e3 + r["e2e_ms"] for r in rows) / 1e3
              <= lv["wall_s"] + min(r["start_s"] for r in rows) + 1e-6, f"{tag}: wall covers rows")
        check_pct(lv["e2e_ms"], f"{tag}: e2e")
        if stream:
            check_pct(lv["ttft_ms"], f"{tag}: TTFT")
            check_pct(lv["itl_ms"], f"{tag}: ITL")
            check(lv["tpot_ms"] is not None, f"{tag}: TPOT")
            check(all(1 <= r["events"] <= r["completion_tokens"] for r in rows),
                  f"{tag}: 1..tokens output events per request")
        else:
            check(lv["ttft_ms"] is None and lv["itl_ms"] is None, f"{tag}: no TTFT/ITL")
        total += lv["completion_tokens"]
    if gen_delta is not None:
        check(total == gen_delta, f"{name}: tokens {total} = server's generation counter "
              f"{gen_delta}")


def grpc_checks(base, target, key, j_http):
    """The sweeps, a transport comparison, a wrong key and the probe over gRPC."""
    jg1 = os.path.join(TMP, "grpc_plain.json")
    g0 = counter(metrics(base), "dsv4_generation_tokens_total")
    p = bench(["--target", target, "--concurrency", "1,4", "--requests-per-level", "8",
               "--max-tokens", "8", "--json", jg1] + key, shorthand=True)
    g1 = counter(metrics(base), "dsv4_generation_tokens_total")
    check_sweep(jg1, False, g1 - g0, "grpc")
    check(re.search(r"^\s+4\s+8\s+0\s", p.stdout, re.M) is not None, "grpc: summary table")
    http, grpc = all_rows(j_http), all_rows(jg1)
    check([r["prompt_tokens"] for r in grpc] == [r["prompt_tokens"] for r in http],
          "grpc: the chat prompts' tokens equal the chat endpoint's "
          f"({[r['prompt_tokens'] for r in grpc]})")
    jg2 = os.path.join(TMP, "grpc_stream.json")
    bench(["--target", target, "--concurrency", "1,4", "--requests-per-level", "8",
           "--max-tokens", "8", "--stream", "--json", jg2] + key)
    g2 = counter(metrics(base), "dsv4_generation_tokens_total")
    check_sweep(jg2, True, g2 - g1, "grpc")
    svg = os.path.join(TMP, "grpc.svg")
    p = subprocess.run([DSV4, "bench", "--plot", svg, j_http, jg2], capture_output=True,
                       text=True, timeout=30)
    legend = [t.text for t in ET.parse(svg).getroot().iter("{http://www.w3.org/2000/svg}text")
              if t.get("class") == "legend"]
    check(p.returncode == 0 and legend[:2] == [f"tiny @ {base[7:]}", f"tiny @ gRPC {target}"],
          f"plot: the transports read apart in the legend {legend[:2]}")

    # greedy with ignore_eos: the same tokens in and out over both transports
    same = []
    for t in (["--openai", base], ["--target", target]):
        j = os.path.join(TMP, "same.json")
        bench(t + ["--endpoint", "completions", "--ignore-eos", "--concurrency", "2",
                   "--requests-per-level", "5", "--max-tokens", "6", "--json", j] + key)
        same.append([(r["prompt_tokens"], r["completion_tokens"]) for r in all_rows(j)])
    check(len(same[0]) == 5 and same[0] == same[1] and all(c == 6 for _, c in same[1]),
          f"completions, ignore_eos: the same tokens over HTTP and gRPC {same}")

    jk = os.path.join(TMP, "grpc_badkey.json")
    bench(["--target", target, "--model", "tiny", "--concurrency", "1", "--requests-per-level",
           "1", "--api-key", "wrong", "--json", jk], rc=1)
    with open(jk) as f:
        lv = json.load(f)["levels"][0]
    check(lv["error_kinds"]["api"] == 1 and "UNAUTHENTICATED" in lv["first_error"]
          and lv["rows"][0]["grpc_status"] == 16, f"grpc: a wrong key ({lv['first_error']})")

    jp = os.path.join(TMP, "grpc_mtp.json")
    m0 = metrics(base)
    bench(["--mtp-probe", "--target", target, "--metrics", base + "/metrics", "--probe-prompts",
           "2", "--max-tokens", "8", "--json", jp] + key)
    m1 = metrics(base)
    with open(jp) as f:
        d = json.load(f)
    m, pre = d["mtp"], "dsv4_spec_decode_num_"
    dt = counter(m1, pre + "draft_tokens_total") - counter(m0, pre + "draft_tokens_total")
    da = counter(m1, pre + "accepted_tokens_total") - counter(m0, pre + "accepted_tokens_total")
    check(d["transport"] == "grpc" and m["metrics_url"] == base + "/metrics"
          and m["draft_tokens"] == dt > 0 and m["accepted_tokens"] == da,
          f"grpc probe: deltas = /metrics deltas ({m['draft_tokens']}/{dt}, "
          f"{m['accepted_tokens']}/{da})")
    check(m["level"]["requests"] == 2 and m["level"]["errors"] == 0
          and m["level"]["completion_tokens"] > 0, "grpc probe: 2 requests, no errors")


def main():
    model = os.path.join(TMP, "tiny")
    tok = os.path.join(os.environ.get("DSV4_SHARED_DATA", "../shared/data"), "tokenizer",
                       "deepseek-v3-tokenizer.json")
    subprocess.run([DSV4, "mkmodel", "--preset", "tiny", "--format", "nvfp4", "--tokenizer", tok,
                    "--out", model], check=True, stdout=subprocess.DEVNULL)
    run = os.path.join(TMP, "run")
    os.makedirs(run, exist_ok=True)
    port, gport = free_port(), free_port()
    base, target = f"http://127.0.0.1:{port}", f"127.0.0.1:{gport}"
    keys = os.path.join(TMP, "keys")
    with open(keys, "w") as f:
        f.write(KEY + "\n")
    log = open(os.path.join(TMP, "dsv4d.log"), "w")
    # the probes and /metrics stay open: the test scrapes them without the key
    d = subprocess.Popen([DSV4D, "--model", model, "--workers", "2", "--runtime-dir", run,
                          "--threads-per-worker", "1", "--http-listen", f"127.0.0.1:{port}",
                          "--grpc-listen", target, "--api-key-file", keys, "--open-probes"],
                         stdout=log, stderr=subprocess.STDOUT)
    key = ["--api-key", KEY]
    try:
        end = time.time() + 120
        ready = False
        while time.time() < end and d.poll() is None:
            try:
                ready = get(base + "/ready", 2)[0] == 200
            except OSError:
                pass
            if ready:
                break
            time.sleep(0.2)
        check(ready, "dsv4d ready")
        if not ready:
            return

        j1 = os.path.join(TMP, "plain.json")
        g0 = counter(metrics(base), "dsv4_generation_tokens_total")
        p = bench(["--openai", base, "--concurrency", "1,4", "--requests-per-level", "8",
                   "--max-tokens", "8", "--json", j1] + key)
        g1 = counter(metrics(base), "dsv4_generation_tokens_total")
        check_sweep(j1, False, g1 - g0)
        check(re.search(r"^\s+1\s+8\s+0\s", p.stdout, re.M) is not None, "summary table row c=1")

        j2 = os.path.join(TMP, "stream.json")
        p = bench(["--openai", base + "/v1", "--concurrency", "1,4", "--requests-per-level", "8",
                   "--max-tokens", "8", "--stream", "--json", j2, "--warmup", "2"] + key)
        g2 = counter(metrics(base), "dsv4_generation_tokens_total")
        check_sweep(j2, True, None)
        with open(j2) as f:  # the server also generated the 2 warm-up requests' tokens
            total = sum(lv["completion_tokens"] for lv in json.load(f)["levels"])
        check(total < g2 - g1 <= total + 2 * 8,
              f"stream: tokens {total} + warm-up = server's counter {g2 - g1}")

        j3 = os.path.join(TMP, "mtp.json")
        m0 = metrics(base)
        p = bench(["--mtp-probe", "--openai", base, "--probe-prompts", "3", "--max-tokens", "16",
                   "--json", j3] + key)
        m1 = metrics(base)
        with open(j3) as f:
            m = json.load(f)["mtp"]
        pre = "dsv4_spec_decode_num_"
        dt = counter(m1, pre + "draft_tokens_total") - counter(m0, pre + "draft_tokens_total")
        da = counter(m1, pre + "accepted_tokens_total") - counter(m0, pre + "accepted_tokens_total")
        dd = counter(m1, pre + "drafts_total") - counter(m0, pre + "drafts_total")
        for k in ("drafts", "draft_tokens", "accepted_tokens", "acceptance", "accept_length",
                  "per_position", "metrics_url", "level"):
            check(k in m, f"probe: field {k}")
        check(m["draft_tokens"] == dt and m["accepted_tokens"] == da and m["drafts"] == dd,
              f"probe: deltas = /metrics deltas ({m['draft_tokens']}/{dt}, "
              f"{m['accepted_tokens']}/{da}, {m['drafts']}/{dd})")
        check(dt > 0 and abs(m["acceptance"] - da / dt) < 1e-12, "probe: acceptance = accepted / drafted")
        check(abs(m["accept_length"] - (1 + da / dd)) < 1e-12, "probe: accept length")
        pp = m["per_position"]
        check(len(pp) >= 1 and sum(x["drafted"] for x in pp) == dt
              and sum(x["accepted"] for x in pp) == da, "probe: positions add up")
        for x in pp:
            lab = f'position="{x["position"]}"'
            want = (counter(m1, pre + "draft_tokens_per_pos_total", lab)
                    - counter(m0, pre + "draft_tokens_per_pos_total", lab))
            check(x["drafted"] == want, f"probe: position {x['position']} drafted = /metrics")
        lv = m["level"]
        check(lv["requests"] == 3 and lv["errors"] == 0 and lv["concurrency"] == 1,
              "probe: 3 sequential requests, no errors")
        check("acceptance" in p.stdout and "position 0" in p.stdout, "probe: printed")

        grpc_checks(base, target, key, j1)

        svg = os.path.join(TMP, "serve.svg")
        p = subprocess.run([DSV4, "bench", "plot", "--out", svg, j1, j2], capture_output=True,
                           text=True, timeout=30)
        check(p.returncode == 0, f"plot exit {p.returncode}: {p.stderr}")
        ns = "{http://www.w3.org/2000/svg}"
        root = ET.parse(svg).getroot()
        ids = [g.get("id") for g in root.iter(ns + "g")]
        check(root.tag == ns + "svg" and ids == ["panel-tok_s", "panel-ttft", "panel-itl"],
              f"plot: well-formed SVG with 3 panels {ids}")
        check(len(list(root.iter(ns + "polyline"))) == 8, "plot: 2 + 3 + 3 lines")
    finally:
        d.send_signal(signal.SIGTERM)
        try:
            d.wait(timeout=30)
        except subprocess.TimeoutExpired:
            d.kill()
            d.wait()
        log.close()
    print(f"{failures} failures")


if __name__ == "__main__":
    main()
    sys.exit(1 if failures else 0)
