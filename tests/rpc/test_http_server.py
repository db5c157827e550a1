"""test_http_server.py - the HTTP front end as operators and hostile clients
see it: curl for the probes, /metrics (checked by promtool), the SSE shape
and the error statuses; raw sockets for framing, keep-alive, pipelining,
chunked bodies, slowloris, connection floods and clients that go away.
The server is tests/rpc/http_test_server over the fake service; every wait
is bounded.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from http_harness import Checks, Server, connect, recv_all, recv_response  # noqa: E402

T = Checks()
check = T.check


def curl(url, *args, timeout=10):
    """Runs curl; returns (status, headers dict, body bytes)."""
    cmd = ["curl", "-sS", "-m", str(timeout), "-D", "-", "-o", "-", *args, url]
    p = subprocess.run(cmd, capture_output=True, timeout=timeout + 5)
    return parse_curl(p.stdout)


def post(url, body, *args, timeout=10):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    if isinstance(data, str):
        data = data.encode()
    return _post(url, data, args, timeout)


def _post(url, data, args, timeout):
    cmd = ["curl", "-sS", "-m", str(timeout), "-D", "-", "-o", "-", "-H",
           "Content-Type: application/json", "--data-binary", "@-", *args, url]
    p = subprocess.run(cmd, input=data, capture_output=True, timeout=timeout + 5)
    return parse_curl(p.stdout)


def parse_curl(out):
    """(status, headers, body) of curl -D - output, interim 100 responses skipped."""
    status, headers = 0, {}
    while out.startswith(b"HTTP/"):
        head, _, out = out.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for ln in lines[1:]:
            k, _, v = ln.partition(":")
            headers[k.strip().lower()] = v.strip()
        if status != 100:
            break
    return status, headers, out


def error_of(body):
    try:
        e = json.loads(body)["error"]
        return e if {"message", "type", "param", "code"} <= set(e) else None
    except (ValueError, KeyError, TypeError):
        return None


def test_probes(s):
    st, h, body = curl(s.base + "/health")
    check(st == 200 and json.loads(body)["status"] == "ok", f"/health 200: {st} {body!r}")
    st, h, body = curl(s.base + "/ready")
    check(st == 200 and json.loads(body)["status"] == "ready", f"/ready 200: {st} {body!r}")
    c = connect(s.port)
    c.sendall(b"HEAD /health HTTP/1.1\r\n\r\nGET /health HTTP/1.1\r\nConnection: close\r\n\r\n")
    data = recv_all(c, 5)
    head, _, rest = data.partition(b"\r\n\r\n")
    check(head.startswith(b"HTTP/1.1 200") and b"Content-Length: 31" in head and
          rest.startswith(b"HTTP/1.1 200"), f"HEAD /health: no body: {data[:200]!r}")
    c.close()
    for state, why in [("loading", "loading weights 3/64"), ("warming", "capturing graphs"),
                       ("draining", "SIGTERM"), ("degraded", "rank 3 restarts")]:
        check(s.cmd(f"state {state} {why}") == "ok", "state command")
        st, h, body = curl(s.base + "/ready")
        j = json.loads(body) if body else {}
        check(st == 503 and j.get("status") == state and j.get("reason") == why,
              f"/ready 503 in {state}: {st} {body!r}")
        st, _, body = curl(s.base + "/health")
        check(st == 200 and json.loads(body)["state"] == state, f"/health 200 in {state}")
    # draining: new work is refused with 503
    st, h, body = post(s.base + "/v1/completions", {"prompt": "x", "max_tokens": 2})
    check(st == 503 and error_of(body) is not None, f"draining: completion 503: {st} {body!r}")
    check(s.cmd("state ready") == "ok", "state ready")
    st, _, _ = curl(s.base + "/ready")
    check(st == 200, "/ready 200 again")


def test_metrics(s):
    # some traffic first, so that the histograms and counters have values
    post(s.base + "/v1/completions", {"prompt": "hello", "max_tokens": 4})
    post(s.base + "/v1/completions", {"prompt": "hello", "max_tokens": 3, "stop": "c"})
    post(s.base + "/v1/chat/completions",
         {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True})
    st, h, body = curl(s.base + "/metrics")
    check(st == 200 and h.get("content-type", "").startswith("text/plain; version=0.0.4"),
          f"/metrics content type: {h.get('content-type')}")
    text = body.decode()
    if shutil.which("promtool"):
        p = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True,
                           timeout=30)
        check(p.returncode == 0, f"promtool check metrics: {p.stdout!r} {p.stderr!r}")
    else:
        print("promtool not installed: exposition not linted", file=sys.stderr)
    values = {}
    for ln in text.splitlines():
        if ln and not ln.startswith("#"):
            name, _, v = ln.rpartition(" ")
            values[name] = float(v)
    need = [
        'dsv4_request_success_total{finished_reason="length"}',
        'dsv4_request_success_total{finished_reason="stop"}',
        "dsv4_time_to_first_token_seconds_count",
        "dsv4_inter_token_latency_seconds_count",
        "dsv4_e2e_request_latency_seconds_count",
        "dsv4_prompt_tokens_total",
        "dsv4_generation_tokens_total",
    ]
    for n in need:
        check(values.get(n, 0) > 0, f"metric {n} > 0: {values.get(n)}")
    for n in ["dsv4_num_requests_running", "dsv4_num_requests_waiting",
              "dsv4_kv_cache_usage_perc", "dsv4_kv_cache_free_blocks",
              "dsv4_kv_cache_total_blocks", "dsv4_num_preemptions_total",
              'dsv4_spec_decode_num_accepted_tokens_per_pos_total{position="0"}',
              "dsv4_worker_restarts_total", 'dsv4_server_state{state="ready"}',
              'dsv4_http_requests_total{code="200"}']:
        check(n in values, f"metric {n} exported")
    check(values.get("dsv4_kv_cache_total_blocks") == 1024, "kv total blocks from loads()")
    check(values.get('dsv4_server_state{state="ready"}') == 1 and
          values.get('dsv4_server_state{state="loading"}') == 0, "state gauge")
    check(any(k.startswith("dsv4_build_info{version=") for k in values), "build info")


def sse_events(body):
    """Splits an SSE body into its data payloads; checks the framing."""
    text = body.decode()
    ok = text.endswith("\n\n")
    events = []
    for block in text.split("\n\n"):
        if not block:
            continue
        ok &= block.startswith("data: ") and "\n" not in block
        events.append(block[len("data: "):])
    return ok, events


def test_sse(s):
    st, h, body = post(s.base + "/v1/completions",
                       {"prompt": "abc", "max_tokens": 12, "stream": True,
                        "stream_options": {"include_usage": True}}, "-N")
    check(st == 200 and h.get("content-type") == "text/event-stream", f"SSE head: {st} {h}")
    check(h.get("transfer-encoding") == "chunked", "SSE over chunked encoding")
    ok, events = sse_events(body)
    check(ok and events and events[-1] == "[DONE]", f"SSE framing: {body[:200]!r}")
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    check(text == "abcdefghij a", f"streamed text {text!r}")
    check(chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 12,
          f"usage chunk last: {chunks[-1]}")
    check(all(c["usage"] is None for c in chunks[:-1]), "usage null on the other chunks")
    fin = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    check(fin[-1] == "length" and all(f is None for f in fin[:-1]), f"finish reasons {fin}")
    # chat stream: the role first, the stop string never split or sent
    st, h, body = post(s.base + "/v1/chat/completions",
                       {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 30,
                        "stream": True, "stop": ["hij"]}, "-N")
    ok, events = sse_events(body)
    chunks = [json.loads(e) for e in events[:-1]]
    check(ok and chunks[0]["choices"][0]["delta"].get("role") == "assistant", "role chunk")
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    check(text == "abcdefg", f"chat stream with stop: {text!r}")
    check(chunks[-1]["choices"][0]["finish_reason"] == "stop" and
          chunks[-1]["choices"][0]["stop_reason"] == "hij", f"stop reason: {chunks[-1]}")


def test_errors(s):
    url = s.base
    cases = [
        ("GET", "/nope", None, 404),
        ("GET", "/v1/completions", None, 405),
        ("POST", "/health", "{}", 405),
        ("POST", "/v1/completions", "{not json", 400),
        ("POST", "/v1/completions", b'{"prompt": "\xff\xfe", "max_tokens": 2}', 400),
        ("POST", "/v1/completions", '[1, 2]', 400),
        ("POST", "/v1/completions", '{"prompt": "x", "n": 2}', 400),
        ("POST", "/v1/completions", '{"prompt": "x", "max_tokens": -1}', 400),
        ("POST", "/v1/completions", '{"prompt": "x", "max_tokens": 1e30}', 400),
        ("POST", "/v1/completions", '{"prompt": "x", "max_tokens": 5000}', 400),
        ("POST", "/v1/completions", '{"prompt": "x", "temperature": 1e400}', 400),
        ("POST", "/v1/completions", '{"prompt": "x", "temperature": -1}', 400),
        ("POST", "/v1/completions", '{"prompt": "x", "top_p": 0}', 400),
        ("POST", "/v1/completions", '{"prompt": "x", "stop": [1]}', 400),
        ("POST", "/v1/completions", '{"prompt": [1, 2, 99999]}', 400),
        ("POST", "/v1/completions", '{"prompt": ["a", "b"]}', 400),
        ("POST", "/v1/completions", '{"prompt": "", "max_tokens": 2}', 400),
        ("POST", "/v1/completions", '{"prompt": "x", "model": "other"}', 404),
        ("POST", "/v1/chat/completions", '{"messages": []}', 400),
        ("POST", "/v1/chat/completions", '{"messages": [{"role": "wizard"}]}', 400),
        ("POST", "/v1/chat/completions",
         '{"messages": [{"role": "user", "content": "x"}], "tool_choice": "required"}', 400),
        ("POST", "/v1/chat/completions",
         '{"messages": [{"role": "user", "content": "x"}], "reasoning_effort": "huge"}', 400),
        ("POST", "/v1/completions", '{"prompt": "x", "unknown_field": {"a": 1}, "max_tokens": 1}',
         200),
    ]
    for method, path, body, want in cases:
        args = ["-X", method]
        if body is not None:
            data = body if isinstance(body, bytes) else body.encode()
            st, h, out = _post(url + path, data, args, 10)
        else:
            st, h, out = curl(url + path, *args)
        check(st == want, f"{method} {path} {body!r}: {st}, expected {want}: {out[:200]!r}")
        if want != 200:
            check(error_of(out) is not None, f"OpenAI error shape for {path} {body!r}: {out!r}")
    st, h, out = curl(url + "/v1/completions", "-X", "GET")
    check(h.get("allow") == "POST", f"405 names the allowed method: {h}")


def test_keys(s):
    s.cmd("keys sk-one,sk-two")
    body = {"prompt": "x", "max_tokens": 2}
    st, _, out = post(s.base + "/v1/completions", body)
    check(st == 401 and error_of(out)["type"] == "authentication_error", f"no key: {st} {out!r}")
    st, _, _ = post(s.base + "/v1/completions", body, "-H", "Authorization: Bearer sk-bad")
    check(st == 401, f"wrong key: {st}")
    submitted = s.cmd("submitted")
    st, _, _ = post(s.base + "/v1/completions", body, "-H", "Authorization: Bearer sk-two")
    check(st == 200, f"good key: {st}")
    check(s.cmd("submitted") != submitted, "a good key does work")
    before = s.cmd("submitted")
    post(s.base + "/v1/completions", body, "-H", "Authorization: Basic sk-two")
    check(s.cmd("submitted") == before, "a refused key does no work")
    st, _, _ = curl(s.base + "/v1/models")
    check(st == 401, "models need the key")
    for p in ["/health", "/ready", "/metrics"]:
        st, _, _ = curl(s.base + p)
        check(st == 200, f"{p} open without a key: {st}")
    s.cmd("keys")


def test_oversize_and_headers(s):
    big = b'{"prompt": "' + b"x" * 70000 + b'"}'
    st, _, out = _post(s.base + "/v1/completions", big, [], 10)
    check(st == 413 and error_of(out) is not None, f"oversize body (curl): {st} {out[:100]!r}")
    # without Expect: the body is sent anyway; the answer still arrives
    c = connect(s.port)
    c.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
              % len(big))
    try:
        c.sendall(big)
    except OSError:
        pass
    data = recv_all(c, 5)
    check(data.startswith(b"HTTP/1.1 413"), f"oversize body (raw): {data[:60]!r}")
    c.close()
    c = connect(s.port)
    c.sendall(b"GET /health HTTP/1.1\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n")
    data = recv_all(c, 5)
    check(data.startswith(b"HTTP/1.1 431"), f"huge header: {data[:60]!r}")
    c.close()
    for bad in [b"GARBAGE\r\n\r\n", b"GET /health HTTP/2.0\r\n\r\n",
                b"GET /health HTTP/1.1\r\n folded\r\n\r\n",
                b"POST /v1/completions HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                b"POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
                b"GET /health HTTP/1.1\r\nBad Name: x\r\n\r\n"]:
        c = connect(s.port)
        c.sendall(bad)
        data = recv_all(c, 5)
        check(data[:12] in (b"HTTP/1.1 400", b"HTTP/1.1 501", b"HTTP/1.1 505"),
              f"malformed {bad[:40]!r}: {data[:40]!r}")
        c.close()
    st, _, _ = curl(s.base + "/health")
    check(st == 200, "still serving after bad input")


def test_keepalive_pipelining_chunked(s):
    c = connect(s.port)
    for _ in range(3):
        c.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        st, h, body, rest = recv_response(c)
        check(st == 200 and rest == b"", "keep-alive request")
    c.sendall(b"GET /health HTTP/1.1\r\n\r\nGET /ready HTTP/1.1\r\n\r\n")
    st1, _, b1, rest = recv_response(c)
    st2, _, b2, rest = recv_response(c, buf=rest)
    check(st1 == 200 and st2 == 200 and b"ready" in b2, "pipelined requests")
    body = b'{"prompt": "chunked", "max_tokens": 3}'
    req = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" +
           b"5;ext=1\r\n" + body[:5] + b"\r\n" + b"%x\r\n" % (len(body) - 5) + body[5:] +
           b"\r\n0\r\n\r\n")
    c.sendall(req)
    st, _, out, _ = recv_response(c)
    check(st == 200 and json.loads(out)["choices"][0]["text"] == "abc",
          f"chunked request body: {st} {out!r}")
    c.sendall(b"GET /health HTTP/1.0\r\n\r\n")
    st, h, out, _ = recv_response(c)
    check(st == 200 and h.get("connection") == "close", "HTTP/1.0 closes")
    check(recv_all(c, 2) == b"", "closed after the HTTP/1.0 response")
    c.close()
    # HTTP/1.0 streaming ends with the connection
    c = connect(s.port)
    body = b'{"prompt": "x", "max_tokens": 3, "stream": true}'
    c.sendall(b"POST /v1/completions HTTP/1.0\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    data = recv_all(c, 5)
    check(data.startswith(b"HTTP/1.1 200") and data.endswith(b"data: [DONE]\n\n") and
          b"chunked" not in data, f"HTTP/1.0 stream: {data[-40:]!r}")
    c.close()


def test_slow_clients(port):
    """Slowloris: partial heads, slow bodies and silent connections are cut off."""
    t0 = time.monotonic()
    c = connect(port, timeout=8)
    c.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    data = recv_all(c, 8)
    dt = time.monotonic() - t0
    check(data.startswith(b"HTTP/1.1 408") and dt < 5, f"slow head: 408 after {dt:.1f}s")
    c.close()
    t0 = time.monotonic()
    c = connect(port, timeout=8)
    c.sendall(b"POST /v1/completions HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"prompt\"")
    data = recv_all(c, 8)
    dt = time.monotonic() - t0
    check(data.startswith(b"HTTP/1.1 408") and dt < 5, f"slow body: 408 after {dt:.1f}s")
    c.close()
    t0 = time.monotonic()
    c = connect(port, timeout=8)
    data = recv_all(c, 8)
    dt = time.monotonic() - t0
    check(data == b"" and dt < 5, f"silent connection closed after {dt:.1f}s")
    c.close()
    # a byte at a time does not extend the deadline
    t0 = time.monotonic()
    c = connect(port, timeout=8)
    closed = False
    for ch in b"GET /health HTTP/1.1\r\nX-Slow: " + b"y" * 40:
        try:
            c.sendall(bytes([ch]))
        except OSError:
            closed = True
            break
        time.sleep(0.1)
        if time.monotonic() - t0 > 6:
            break
    data = recv_all(c, 3) if not closed else b""
    dt = time.monotonic() - t0
    check(dt < 6, f"byte-at-a-time head cut off within the deadline ({dt:.1f}s) {data[:20]!r}")
    c.close()


def test_flood(port, cap):
    held = [connect(port) for _ in range(cap)]
    time.sleep(0.3)
    extra = connect(port)
    data = recv_all(extra, 5)
    check(data == b"" or data.startswith(b"HTTP/1.1 503"), f"over the cap: {data[:40]!r}")
    extra.close()
    for c in held:
        c.close()
    time.sleep(0.3)
    st, _, _ = curl(f"http://127.0.0.1:{port}/health")
    check(st == 200, "serving again once the flood is gone")


def test_disconnect_cancels(s):
    body = json.dumps({"prompt": "x", "max_tokens": 3000, "stream": True}).encode()
    socks = []
    for _ in range(4):
        c = connect(s.port)
        c.sendall(b"POST /v1/completions HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) +
                  body)
        socks.append(c)
    check(s.wait_running(4) == 4, "four streams running")
    for c in socks:
        c.recv(100)
        c.close()
    check(s.wait_running(0) == 0, "closing the connections cancels the requests")
    # non-streaming requests are cancelled as well
    body = json.dumps({"prompt": "x", "max_tokens": 3000}).encode()
    c = connect(s.port)
    c.sendall(b"POST /v1/completions HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    check(s.wait_running(1) == 1, "one request running")
    c.close()
    check(s.wait_running(0) == 0, "a non-streaming request is cancelled too")


def test_queue_full(s):
    """The fake runs 64 requests at most: the 65th is a retryable 429."""
    body = json.dumps({"prompt": "x", "max_tokens": 3000, "stream": True}).encode()
    socks = []
    for _ in range(64):
        c = connect(s.port)
        c.sendall(b"POST /v1/completions HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) +
                  body)
        socks.append(c)
    check(s.wait_running(64) == 64, "64 requests running")
    st, h, out = post(s.base + "/v1/completions", {"prompt": "x", "max_tokens": 2})
    check(st == 429 and h.get("retry-after") == "1" and error_of(out) is not None,
          f"queue full: {st} {h} {out!r}")
    st, _, _ = curl(s.base + "/health")
    check(st == 200, "health answered while the queue is full")
    for c in socks:
        c.close()
    check(s.wait_running(0) == 0, "all cancelled")


def test_probe_latency(s):
    """Probes are answered while large requests are being parsed, rendered and tokenized
    (5 MB conversations: the fake's context refuses them afterwards, with a 400)."""
    big = json.dumps({"messages": [{"role": "user", "content": "word " * 1_000_000}],
                      "max_tokens": 1}).encode()
    results = []

    def send_big():
        st, _, out = _post(s.base + "/v1/chat/completions", big, [], 60)
        results.append((st, b"context" in out))

    threads = [threading.Thread(target=send_big) for _ in range(4)]
    for t in threads:
        t.start()
    worst = 0.0
    for _ in range(20):
        t0 = time.monotonic()
        st, _, _ = curl(s.base + "/health")
        worst = max(worst, time.monotonic() - t0)
        check(st == 200, "health during load")
    for t in threads:
        t.join(90)
    check(results == [(400, True)] * 4, f"big requests answered: {results}")
    check(worst < 2.0, f"slowest probe under load {worst:.2f}s")
    print(f"slowest probe while 4 x 5 MB requests were handled: {worst * 1000:.0f} ms",
          file=sys.stderr)


def test_socket_activation():
    """An inherited listening socket (as systemd passes one) is served as is."""
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.bind(("127.0.0.1", 0))
    ls.listen(16)
    port = ls.getsockname()[1]
    with Server("--listen-fd", str(ls.fileno()), pass_fds=(ls.fileno(),)) as s:
        check(s.port == port, f"the inherited socket's port: {s.port} vs {port}")
        st, _, _ = curl(f"http://127.0.0.1:{port}/health")
        check(st == 200, "served on the inherited socket")
    ls.close()
    r = subprocess.run([os.path.join(os.environ.get("DSV4_BUILDDIR", "."), "tests", "rpc",
                                     "http_test_server"), "--listen-fd", "2"],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
    check(r.returncode != 0 and b"not a listening socket" in r.stderr,
          f"stderr is not a listening socket: refused: {r.stderr!r}")


def test_listen_addresses():
    bad = [":", "127.0.0.1", "127.0.0.1:99999", "127.0.0.1:http", "[::1:80",
           "no.such.host.invalid:80"]
    for addr in bad:
        r = subprocess.run([os.path.join(os.environ.get("DSV4_BUILDDIR", "."), "tests", "rpc",
                                         "http_test_server"), "--listen", addr],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
        check(r.returncode != 0 and r.stderr, f"listen {addr!r} refused: {r.stderr!r}")
    if socket.has_ipv6:
        try:
            probe = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            probe.bind(("::1", 0))
            probe.close()
        except OSError:
            print("no IPv6 loopback: [::1] not tested", file=sys.stderr)
            return
        with Server("--listen", "[::1]:0") as s:
            st, _, _ = curl(f"http://[::1]:{s.port}/health")
            check(st == 200, "served on [::1]")


def test_buffer_budget():
    """Uploads in progress share a memory budget; beyond it, a 503, and others go on."""
    with Server("--max-body", str(1 << 20), "--max-buffered", str(1 << 20)) as s:
        a = connect(s.port)
        a.sendall(b"POST /v1/completions HTTP/1.1\r\nContent-Length: 900000\r\n\r\n" +
                  b"x" * 600000)
        time.sleep(0.3)
        b = connect(s.port)
        b.sendall(b"POST /v1/completions HTTP/1.1\r\nContent-Length: 500000\r\n\r\n")
        try:
            b.sendall(b"y" * 400000)
        except OSError:
            pass
        data = recv_all(b, 5)
        check(data.startswith(b"HTTP/1.1 503"), f"over the buffer budget: {data[:40]!r}")
        b.close()
        a.sendall(b"x" * 300000)
        st, _, out, _ = recv_response(a)
        check(st == 400 and error_of(out) is not None, f"the first upload completes: {st}")
        a.close()
        st, _, _ = curl(s.base + "/health")
        check(st == 200, "health after the budget test")


def main():
    if not shutil.which("curl"):
        print("curl not installed", file=sys.stderr)
        sys.exit(77)
    with Server("--max-body", "65536", "--max-header", "16384", "--delay-ms", "2") as s:
        test_probes(s)
        test_metrics(s)
        test_sse(s)
        test_errors(s)
        test_keys(s)
        test_oversize_and_headers(s)
        test_keepalive_pipelining_chunked(s)
        test_disconnect_cancels(s)
        test_queue_full(s)
    with Server("--max-body", str(64 << 20), "--delay-ms", "2") as s:
        test_probe_latency(s)
    with Server("--header-timeout", "1", "--body-timeout", "1", "--idle-timeout", "1") as s:
        test_slow_clients(s.port)
    with Server("--max-conns", "8", "--header-timeout", "5") as s:
        test_flood(s.port, 8)
    test_socket_activation()
    test_listen_addresses()
    test_buffer_budget()
    with Server("--keys", "k1", "--probes-need-key") as s:
        st, _, _ = curl(s.base + "/health")
        check(st == 401, f"probes behind the key when asked: {st}")
        st, _, _ = curl(s.base + "/health", "-H", "Authorization: Bearer k1")
        check(st == 200, "probe with the key")
    T.done()


if __name__ == "__main__":
    main()
