"""test_serve.py - a real dsv4d on the tiny checkpoint, through real clients.

Makes a tiny random checkpoint with the DeepSeek tokenizer (dsv4 mkmodel),
starts dsv4d (2 CPU workers, gRPC and HTTP on loopback, free ports) and
drives it with the clients an operator would use:

- grpcio: every method of dsv4.Engine (Generate streamed, with logprobs, from
  text and from ids; Abort mid-stream; GetModelInfo / GetServerInfo /
  GetLoads; Tokenize / Detokenize), a deadline that expires mid-stream and a
  cancelled stream (both leave nothing running), grpc.health.v1 Check (alive,
  ready, unknown -> NOT_FOUND);
- the openai client: chat (plain and streamed with usage), completions from
  token ids;
- curl: /health, /ready, a chat completion;
- the bounded load test: 200 requests, 32 concurrent gRPC streams and 16
  concurrent SSE streams at once, every output checked (greedy ids equal to
  the single-process `dsv4 generate` of the same prompt; SSE text equal to
  the gRPC text of the same prompt); p50/p99 time to first token printed;
- promtool check metrics on the daemon's /metrics after the load, and the
  counters agree with the requests made;
- drain: a health Watch sees SERVING -> NOT_SERVING when SIGTERM arrives with
  a request running; the request finishes; dsv4d exits 0.

Every call has a timeout and the daemon is killed on any failure; the whole
test takes well under two minutes on 2 cores.
"""

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

try:
    import grpc
    from grpc_tools import protoc
    import openai
except ImportError as e:  # pragma: no cover
    print(f"grpcio / grpcio-tools / openai not installed: {e}")
    sys.exit(77)

SRC = os.environ.get("DSV4_SRCDIR", os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("DSV4_BUILDDIR", os.getcwd())
TMP = os.environ.get("DSV4_TMP", "/tmp")
DATA = os.environ.get("DSV4_SHARED_DATA", os.path.join(SRC, "..", "shared", "data"))
DSV4 = os.path.join(BUILD, "dsv4")
DSV4D = os.path.join(BUILD, "dsv4d")
TOKENIZER = os.path.join(DATA, "tokenizer", "deepseek-v3-tokenizer.json")
T = 30  # seconds: the limit of any one call

N_PROMPTS = 24      # distinct prompts of the load test
N_GRPC = 128        # load-test requests over gRPC ...
N_SSE = 72          # ... and over SSE: 200 in all
GRPC_STREAMS = 32
SSE_STREAMS = 16
GEN = 8             # tokens per load-test request

failures = 0
checks = 0


def check(cond, what):
    global failures, checks
    checks += 1
    if not cond:
        failures += 1
        print(f"FAILED: {what}", flush=True)
    return cond


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def gen_protos():
    out = os.path.join(TMP, "grpc_stubs")
    os.makedirs(out, exist_ok=True)
    rc = protoc.main(["protoc", f"-I{os.path.join(SRC, 'proto')}", f"--python_out={out}",
                      f"--grpc_python_out={out}", "dsv4.proto", "health.proto"])
    if rc != 0:
        print("grpc_tools.protoc failed")
        sys.exit(1)
    sys.path.insert(0, out)


gen_protos()
import dsv4_pb2 as pb  # noqa: E402
import dsv4_pb2_grpc as pbg  # noqa: E402
import health_pb2 as hpb  # noqa: E402
import health_pb2_grpc as hpbg  # noqa: E402

SERVING = hpb.HealthCheckResponse.SERVING
NOT_SERVING = hpb.HealthCheckResponse.NOT_SERVING


def prompt_ids(k):
    """Prompt k of the load test: 4..27 ids from the ordinary-token range."""
    n = 4 + (k * 23) % 24
    x = 1000 + k * 7919
    ids = []
    for _ in range(n):
        x = (x * 1103515245 + 12345) % (1 << 31)
        ids.append(100 + x % 100000)
    return ids


def reference(model, ids, n):
    r = subprocess.run([DSV4, "generate", "--model", model, "--prompt-ids",
                        ",".join(map(str, ids)), "--max-tokens", str(n), "--no-stop", "--json",
                        "--threads", "1"], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        print(r.stderr)
        return None
    return json.loads(r.stdout)["tokens"]


def http_get(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=T) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def sampling(n, **kw):
    return pb.SamplingParams(temperature=0.0, max_new_tokens=n, ignore_eos=True, **kw)


def generate(stub, ids=None, text=None, n=GEN, timeout=T, **kw):
    """(ids, text, complete, ttft seconds) of one streamed Generate."""
    req = pb.GenerateRequest(request_id=kw.pop("request_id", ""),
                             sampling_params=sampling(n), **kw)
    if ids is not None:
        req.tokenized.input_ids.extend(ids)
    else:
        req.text = text
    t0 = time.monotonic()
    out, txt, complete, ttft, lps = [], "", None, None, []
    for m in stub.Generate(req, timeout=timeout):
        if m.HasField("chunk"):
            if ttft is None and m.chunk.token_ids:
                ttft = time.monotonic() - t0
            out += list(m.chunk.token_ids)
            txt += m.chunk.text
            lps += list(m.chunk.output_logprobs.token_logprobs)
        else:
            complete = m.complete
    return out, txt, complete, ttft, lps


def sse_completion(port, ids, n=GEN):
    """(text, finish_reason, usage, ttft) of a streamed /v1/completions from ids, raw SSE."""
    body = json.dumps({"model": "tiny", "prompt": ids, "max_tokens": n, "temperature": 0,
                       "ignore_eos": True, "stream": True,
                       "stream_options": {"include_usage": True}}).encode()
    s = socket.create_connection(("127.0.0.1", port), timeout=T)
    t0 = time.monotonic()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" +
              body)
    buf, ttft = b"", None
    while True:
        d = s.recv(65536)
        if not d:
            break
        if ttft is None and b'"text":"' in buf + d and b'"text":""' not in buf + d:
            ttft = time.monotonic() - t0
        buf += d
    s.close()
    head, _, rest = buf.partition(b"\r\n\r\n")
    if b" 200 " not in head.split(b"\r\n")[0]:
        return None, None, None, None
    # chunked transfer: undo it, then read the SSE events
    data, p = b"", rest
    while p:
        line, _, p = p.partition(b"\r\n")
        size = int(line, 16)
        if size == 0:
            break
        data += p[:size]
        p = p[size + 2:]
    text, finish, usage, done = "", None, None, False
    for ev in data.decode().split("\n\n"):
        if not ev.startswith("data: "):
            continue
        payload = ev[6:]
        if payload == "[DONE]":
            done = True
            continue
        j = json.loads(payload)
        for c in j.get("choices", []):
            text += c.get("text", "")
            finish = c.get("finish_reason") or finish
        if j.get("usage"):
            usage = j["usage"]
    return (text if done else None), finish, usage, ttft


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


class Daemon:
    def __init__(self, model):
        self.grpc_port, self.http_port = free_port(), free_port()
        self.log = open(os.path.join(TMP, "dsv4d.log"), "w")
        run = os.path.join(TMP, "run")
        os.makedirs(run, exist_ok=True)
        self.p = subprocess.Popen(
            [DSV4D, "--model", model, "--served-model-name", "tiny", "--workers", "2",
             "--threads-per-worker", "1", "--max-seqs", "48", "--max-queue", "256",
             "--max-model-len", "1024", "--runtime-dir", run,
             "--grpc-listen", f"127.0.0.1:{self.grpc_port}",
             "--http-listen", f"127.0.0.1:{self.http_port}", "--drain-timeout", "60",
             "--log-level", "info"], stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, limit=120):
        end = time.time() + limit
        while time.time() < end and self.p.poll() is None:
            try:
                if http_get(self.http_port, "/ready")[0] == 200:
                    return True
            except OSError:
                pass
            time.sleep(0.1)
        return False

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(10)


def t_grpc(stub, health, model_refs):
    ids, ref = model_refs[0]
    out, txt, done, ttft, lps = generate(stub, ids=ids, return_logprob=True)
    check(out == ref, f"gRPC Generate (ids) equals dsv4 generate: {out} vs {ref}")
    check(done is not None and done.finish_reason == "length" and
          done.usage.completion_tokens == GEN and done.usage.prompt_tokens == len(ids),
          f"gRPC Generate complete: {done}")
    check(len(lps) == GEN and all(v <= 0 for v in lps), f"logprobs: {lps}")
    tok = stub.Tokenize(pb.TokenizeRequest(text="Hello, world!"), timeout=T)
    check(tok.count == len(tok.token_ids) > 0, "Tokenize")
    det = stub.Detokenize(pb.DetokenizeRequest(token_ids=tok.token_ids), timeout=T)
    check(det.text == "Hello, world!", f"Detokenize round trip: {det.text!r}")
    out2, txt2, done2, _, _ = generate(stub, text="Hello, world!", n=6)
    check(done2 is not None and done2.usage.prompt_tokens == tok.count and len(out2) == 6,
          "gRPC Generate from text: the server's tokenization")
    mi = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=T)
    check(mi.served_model_name == "tiny" and mi.vocab_size == 129280 and
          mi.max_context_length == 1024 and mi.is_generation, f"GetModelInfo: {mi}")
    si = stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=T)
    check(si.state == "ready" and si.server_type == "grpc" and si.version != "",
          f"GetServerInfo: {si}")
    lo = stub.GetLoads(pb.GetLoadsRequest(), timeout=T)
    check(lo.workers == 2 and lo.workers_ready == 2 and lo.total_blocks > 0 and
          lo.num_running_reqs == 0, f"GetLoads: {lo}")
    check(health.Check(hpb.HealthCheckRequest(service=""), timeout=T).status == SERVING,
          "health: alive")
    check(health.Check(hpb.HealthCheckRequest(service="dsv4.Engine"), timeout=T).status ==
          SERVING, "health: ready")
    try:
        health.Check(hpb.HealthCheckRequest(service="nope"), timeout=T)
        check(False, "health of an unknown service answered")
    except grpc.RpcError as e:
        check(e.code() == grpc.StatusCode.NOT_FOUND, f"unknown service: {e.code()}")

    def running():
        end = time.time() + 10
        while time.time() < end:
            if stub.GetLoads(pb.GetLoadsRequest(), timeout=T).num_running_reqs == 0:
                return 0
            time.sleep(0.05)
        return -1

    # a deadline that expires mid-stream
    try:
        generate(stub, ids=ids, n=900, timeout=0.5)
        check(False, "a 900-token request finished inside 0.5 s")
    except grpc.RpcError as e:
        check(e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, f"deadline: {e.code()}")
    check(running() == 0, "the expired request is gone")
    # cancellation mid-stream
    req = pb.GenerateRequest(sampling_params=sampling(900))
    req.tokenized.input_ids.extend(ids)
    call = stub.Generate(req, timeout=T)
    first = next(call)
    call.cancel()
    check(first.HasField("chunk"), "the cancelled stream had started")
    check(running() == 0, "the cancelled request is gone")
    # Abort by request id, from another call
    req = pb.GenerateRequest(request_id="to-abort", sampling_params=sampling(900))
    req.tokenized.input_ids.extend(ids)
    call = stub.Generate(req, timeout=T)
    next(call)
    ab = stub.Abort(pb.AbortRequest(request_id="to-abort"), timeout=T)
    check(ab.success, f"Abort: {ab}")
    finish = None
    try:
        for m in call:
            if m.HasField("complete"):
                finish = m.complete.finish_reason
    except grpc.RpcError as e:
        finish = str(e.code())
    check(finish == "abort", f"the aborted stream ends with finish 'abort': {finish}")
    check(not stub.Abort(pb.AbortRequest(request_id="no-such"), timeout=T).success,
          "Abort of an unknown id: success false")
    check(running() == 0, "nothing running after the abort")


def t_openai(port):
    c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", timeout=T,
                      max_retries=0)
    models = c.models.list()
    check([m.id for m in models.data] == ["tiny"], "openai: models.list")
    r = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}],
                                  max_tokens=8, temperature=0)
    check(r.choices[0].finish_reason in ("length", "stop") and r.usage.completion_tokens <= 8 and
          r.usage.prompt_tokens > 0, f"openai: chat {r.choices[0].finish_reason} {r.usage}")
    text = ""
    usage = None
    for ch in c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}],
                                        max_tokens=8, temperature=0, stream=True,
                                        stream_options={"include_usage": True}):
        if ch.choices and ch.choices[0].delta.content:
            text += ch.choices[0].delta.content
        if ch.usage:
            usage = ch.usage
    check(usage is not None and usage.completion_tokens == r.usage.completion_tokens,
          f"openai: streamed chat usage {usage}")
    check(text == (r.choices[0].message.content or ""),
          f"openai: streamed chat text equals the plain one: {text!r} vs "
          f"{r.choices[0].message.content!r}")
    ids = prompt_ids(1)
    cr = c.completions.create(model="tiny", prompt=ids, max_tokens=GEN, temperature=0,
                              extra_body={"ignore_eos": True})
    check(cr.choices[0].finish_reason == "length" and cr.usage.prompt_tokens == len(ids),
          f"openai: completions from ids {cr.usage}")
    try:
        c.chat.completions.create(model="tiny", messages=[], max_tokens=4)
        check(False, "an empty chat was accepted")
    except openai.BadRequestError as e:
        check(e.status_code == 400, "openai: an empty chat is a 400")
    return cr.choices[0].text


def t_curl(port):
    if not shutil.which("curl"):
        check(False, "curl is not installed (scripts/install-deps installs it)")
        return
    base = f"http://127.0.0.1:{port}"
    r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", base + "/health"],
                       capture_output=True, text=True, timeout=T)
    check(r.stdout == "200", f"curl /health: {r.stdout}")
    r = subprocess.run(["curl", "-sS", base + "/ready"], capture_output=True, text=True, timeout=T)
    check(r.returncode == 0 and json.loads(r.stdout).get("status") == "ready",
          f"curl /ready: {r.stdout}")
    body = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "What is 2+2?"}],
                       "max_tokens": 6})
    r = subprocess.run(["curl", "-sS", "-H", "Content-Type: application/json", "-d", body,
                        base + "/v1/chat/completions"], capture_output=True, text=True, timeout=T)
    try:
        j = json.loads(r.stdout)
        check(j["object"] == "chat.completion" and j["usage"]["completion_tokens"] <= 6,
              "curl: chat completion")
    except (ValueError, KeyError) as e:
        check(False, f"curl: chat completion: {e}: {r.stdout[:300]}")


def t_load(stub, port, refs):
    """200 requests: 32 gRPC streams and 16 SSE streams at once, outputs checked."""
    grpc_text = {}
    results = {"grpc": [], "sse": []}
    bad = []
    lock = threading.Lock()

    def grpc_worker(w):
        for i in range(w, N_GRPC, GRPC_STREAMS):
            k = i % N_PROMPTS
            try:
                out, txt, done, ttft, _ = generate(stub, ids=refs[k][0])
            except grpc.RpcError as e:
                with lock:
                    bad.append(f"gRPC request {i}: {e.code()}")
                continue
            with lock:
                if out != refs[k][1] or done is None or done.finish_reason != "length":
                    bad.append(f"gRPC request {i} (prompt {k}): {out} vs {refs[k][1]}")
                prev = grpc_text.setdefault(k, txt)
                if prev != txt:
                    bad.append(f"gRPC request {i}: text {txt!r} vs {prev!r}")
                results["grpc"].append(ttft)

    sse_out = []

    def sse_worker(w):
        for i in range(w, N_SSE, SSE_STREAMS):
            k = (i * 5) % N_PROMPTS
            try:
                text, finish, usage, ttft = sse_completion(port, refs[k][0])
            except OSError as e:
                with lock:
                    bad.append(f"SSE request {i}: {e}")
                continue
            with lock:
                if text is None or finish != "length" or not usage or \
                        usage["completion_tokens"] != GEN:
                    bad.append(f"SSE request {i}: {finish} {usage}")
                sse_out.append((k, text))
                results["sse"].append(ttft)

    threads = [threading.Thread(target=grpc_worker, args=(w,)) for w in range(GRPC_STREAMS)]
    threads += [threading.Thread(target=sse_worker, args=(w,)) for w in range(SSE_STREAMS)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    wall = time.monotonic() - t0
    check(not any(t.is_alive() for t in threads), "load: every client finished within 240 s")
    # every SSE text equals the gRPC text of the same prompt (greedy: one answer per prompt)
    for k, text in sse_out:
        if k in grpc_text and text != grpc_text[k]:
            bad.append(f"SSE prompt {k}: {text!r} vs gRPC {grpc_text[k]!r}")
        elif k not in grpc_text:
            bad.append(f"SSE prompt {k} has no gRPC twin")
    n = len(results["grpc"]) + len(results["sse"])
    check(n == N_GRPC + N_SSE, f"load: {n} of {N_GRPC + N_SSE} requests answered")
    check(not bad, f"load: {len(bad)} wrong outputs: {bad[:5]}")
    for name, xs in results.items():
        xs = [x for x in xs if x is not None]
        if xs:
            print(f"load: {name}: {len(xs)} requests, TTFT p50 {pct(xs, 50) * 1000:.0f} ms, "
                  f"p99 {pct(xs, 99) * 1000:.0f} ms", flush=True)
    allx = [x for xs in results.values() for x in xs if x is not None]
    if allx:
        print(f"load: {n} requests ({GRPC_STREAMS} gRPC + {SSE_STREAMS} SSE streams at once, "
              f"{GEN} tokens each) in {wall:.1f} s: TTFT p50 {pct(allx, 50) * 1000:.0f} ms, "
              f"p99 {pct(allx, 99) * 1000:.0f} ms, mean {statistics.mean(allx) * 1000:.0f} ms; "
              f"{n * GEN / wall:.0f} output tok/s", flush=True)
    return n


def metric_sum(text, name, **labels):
    total = None
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        key, _, val = line.rpartition(" ")
        base, _, lab = key.partition("{")
        if base != name:
            continue
        if all(f'{k}="{v}"' in lab for k, v in labels.items()):
            total = (total or 0) + float(val)
    return total


def t_metrics(port, n_load):
    st, text = http_get(port, "/metrics")
    check(st == 200, "/metrics: 200")
    path = os.path.join(TMP, "metrics.txt")
    with open(path, "w") as f:
        f.write(text)
    if shutil.which("promtool"):
        r = subprocess.run(["promtool", "check", "metrics"], stdin=open(path), capture_output=True,
                           text=True, timeout=T)
        check(r.returncode == 0, f"promtool check metrics: {r.stdout}{r.stderr}")
    else:
        check(False, "promtool is not installed (scripts/install-deps installs prometheus)")
    ok = metric_sum(text, "dsv4_request_success_total")
    check(ok is not None and ok >= n_load, f"dsv4_request_success_total {ok} >= {n_load}")
    gen = metric_sum(text, "dsv4_generation_tokens_total")
    check(gen is not None and gen >= n_load * GEN, f"dsv4_generation_tokens_total {gen}")
    ttft = metric_sum(text, "dsv4_time_to_first_token_seconds_count")
    check(ttft is not None and ttft >= n_load, f"TTFT histogram count {ttft}")
    for name in ("dsv4_num_requests_running", "dsv4_num_requests_waiting",
                 "dsv4_num_requests_swapped",
                 "dsv4_worker_restarts_total", "dsv4_server_state",
                 "dsv4_kv_cache_usage_perc", "dsv4_num_preemptions_total"):
        check(metric_sum(text, name) is not None, f"/metrics has {name}")


def t_drain(d, stub, ids):
    """SIGTERM with a request running: Watch sees NOT_SERVING, the request ends, exit 0."""
    ch = grpc.insecure_channel(f"127.0.0.1:{d.grpc_port}")
    health = hpbg.HealthStub(ch)
    seen = []

    def watch():
        try:
            for m in health.Watch(hpb.HealthCheckRequest(service="dsv4.Engine"), timeout=T):
                seen.append(m.status)
        except grpc.RpcError:
            pass

    wt = threading.Thread(target=watch)
    wt.start()
    res = {}

    def long_request():
        try:
            res["out"] = generate(stub, ids=ids, n=200, timeout=120)
        except grpc.RpcError as e:
            res["err"] = e.code()

    rt = threading.Thread(target=long_request)
    rt.start()
    end = time.time() + 10
    while time.time() < end and not (seen and stub.GetLoads(pb.GetLoadsRequest(),
                                                             timeout=T).num_running_reqs):
        time.sleep(0.02)
    d.p.send_signal(signal.SIGTERM)
    rt.join(120)
    wt.join(30)
    check("out" in res and len(res["out"][0]) == 200,
          f"drain: the running request finished ({res.get('err')})")
    check(seen[:1] == [SERVING] and NOT_SERVING in seen, f"drain: Watch saw {seen}")
    try:
        rc = d.p.wait(60)
    except subprocess.TimeoutExpired:
        rc = None
    check(rc == 0, f"drain: dsv4d exited {rc}")
    ch.close()


def main():
    model = os.path.join(TMP, "tiny")
    r = subprocess.run([DSV4, "mkmodel", "--preset", "tiny", "--format", "nvfp4", "--tokenizer",
                        TOKENIZER, "--out", model], capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        print(r.stderr)
        sys.exit(1)
    t0 = time.monotonic()
    refs = []
    for k in range(N_PROMPTS):
        ids = prompt_ids(k)
        refs.append((ids, reference(model, ids, GEN)))
        if refs[-1][1] is None:
            sys.exit(1)
    print(f"references: {N_PROMPTS} prompts through dsv4 generate in "
          f"{time.monotonic() - t0:.1f} s", flush=True)
    d = Daemon(model)
    try:
        if not check(d.wait_ready(), "dsv4d became ready"):
            raise SystemExit
        ch = grpc.insecure_channel(f"127.0.0.1:{d.grpc_port}")
        stub = pbg.EngineStub(ch)
        health = hpbg.HealthStub(ch)
        t_grpc(stub, health, refs)
        t_openai(d.http_port)
        t_curl(d.http_port)
        n = t_load(stub, d.http_port, refs)
        t_metrics(d.http_port, n)
        t_drain(d, stub, refs[0][0])
        ch.close()
    finally:
        d.kill()
        d.log.close()
        if failures:
            with open(os.path.join(TMP, "dsv4d.log")) as f:
                print("---- dsv4d log (tail)")
                print("".join(f.readlines()[-40:]))
    print(f"{checks} checks, {failures} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
