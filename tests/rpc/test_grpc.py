"""The gRPC front end through a real gRPC client (grpcio), against
tests/rpc/grpc_test_server (the server over the deterministic fake engine of
tests/rpc/fake_svc.h, on 127.0.0.1 and a free port).

Stubs are generated from proto/*.proto at test time (grpc_tools.protoc) into
the test's scratch directory.  Covers every method of dsv4.Engine and
grpc.health.v1.Health: exact streamed text, logprobs, stop strings and stop
ids, errors and their codes, deadlines, cancellation (the fake's running
count goes back to 0), Abort, many concurrent streams on one channel, a full
queue, health Check / Watch across READY -> DRAINING -> READY, API keys, Drain,
oversized and malformed messages, and a graceful stop with calls running.
Every call has a timeout; the whole test takes seconds.  Skips (77) without
grpcio / grpcio-tools.
"""
import concurrent.futures
import os
import subprocess
import sys
import threading
import time

try:
    import grpc
    from grpc_tools import protoc
except ImportError as e:  # pragma: no cover
    print(f"grpcio / grpcio-tools not installed: {e}")
    sys.exit(77)

SRC = os.environ.get("DSV4_SRCDIR", os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("DSV4_BUILDDIR", os.getcwd())
TMP = os.environ.get("DSV4_TMP", "/tmp")
SERVER = os.path.join(BUILD, "tests", "rpc", "grpc_test_server")
T = 10  # seconds: the timeout of every call

failures = 0
checks = 0


def check(cond, what):
    global failures, checks
    checks += 1
    if not cond:
        failures += 1
        print(f"FAILED: {what}", flush=True)


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

PATTERN = "abcdefghij "
SERVING = hpb.HealthCheckResponse.SERVING
NOT_SERVING = hpb.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = hpb.HealthCheckResponse.SERVICE_UNKNOWN


def expected(n):
    return "".join(PATTERN[j % 11] for j in range(n))


class Server:
    def __init__(self, *args):
        self.p = subprocess.Popen([SERVER, "--lifetime", "120", *args], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        line = self.p.stdout.readline().split()
        if len(line) != 2 or line[0] != "port":
            raise RuntimeError(f"grpc_test_server did not start: {line}")
        self.port = int(line[1])
        self.lock = threading.Lock()

    def cmd(self, line):
        with self.lock:
            self.p.stdin.write(line + "\n")
            self.p.stdin.flush()
            return self.p.stdout.readline().strip()

    def running(self):
        return int(self.cmd("running").split()[1])

    def submitted(self):
        return int(self.cmd("submitted").split()[1])

    def wait_idle(self, limit=3.0):
        end = time.time() + limit
        while time.time() < end:
            if self.running() == 0:
                return True
            time.sleep(0.02)
        return False

    def stop(self):
        out = self.cmd("stop")
        rc = self.p.wait(30)
        return out, rc


def code_of(fn):
    try:
        fn()
        return grpc.StatusCode.OK
    except grpc.RpcError as e:
        return e.code()


def collect(stream):
    """(text, chunks, complete) of a Generate stream."""
    text, chunks, complete = "", [], None
    for r in stream:
        if r.HasField("chunk"):
            text += r.chunk.text
            chunks.append(r.chunk)
        else:
            complete = r.complete
    return text, chunks, complete


def sp(**kw):
    return pb.SamplingParams(**kw)


# ---------------------------------------------------------------- tests

def t_info(st, srv):
    m = st.GetModelInfo(pb.GetModelInfoRequest(), timeout=T)
    check(m.served_model_name == "fake-model", "model name")
    check(m.vocab_size == 259 and m.max_context_length == 4096, "model sizes")
    check(list(m.eos_token_ids) == [1] and m.bos_token_id == 0, "special ids")
    check(list(m.architectures) == ["FakeForTests"] and m.mtp_depth == 1, "architecture")
    s = st.GetServerInfo(pb.GetServerInfoRequest(), timeout=T)
    check(s.state == "ready" and s.server_type == "grpc", f"server info {s}")
    check(s.version != "" and s.uptime_seconds >= 0, "version, uptime")
    check(s.max_running_requests == 64 and s.max_message_bytes == 65536, "server limits")
    ld = st.GetLoads(pb.GetLoadsRequest(), timeout=T)
    check(ld.max_running_requests == 64 and ld.total_blocks == 1024, f"loads {ld}")
    check(ld.num_running_reqs == 0 and ld.token_usage == 0.0, "idle loads")


def t_tokenizer(st, srv):
    r = st.Tokenize(pb.TokenizeRequest(text="hi é"), timeout=T)
    want = [b + 3 for b in "hi é".encode()]
    check(list(r.token_ids) == want and r.count == len(want), f"tokenize {r}")
    check(st.Detokenize(pb.DetokenizeRequest(token_ids=want), timeout=T).text == "hi é",
          "detokenize")
    d = st.Detokenize(pb.DetokenizeRequest(token_ids=[0, 107, 1]), timeout=T)
    check(d.text == "<s>h</s>", f"specials kept: {d.text!r}")
    d = st.Detokenize(pb.DetokenizeRequest(token_ids=[0, 107, 1], skip_special_tokens=True),
                      timeout=T)
    check(d.text == "h", "specials skipped")
    # a lone byte 0xff and a NUL: no proto3 string, sent as U+FFFD
    d = st.Detokenize(pb.DetokenizeRequest(token_ids=[0xFF + 3, 3, 107]), timeout=T)
    check(d.text == "\ufffd\ufffdh", f"repaired text {d.text!r}")
    c = code_of(lambda: st.Detokenize(pb.DetokenizeRequest(token_ids=[1000]), timeout=T))
    check(c == grpc.StatusCode.OUT_OF_RANGE, f"detokenize out of vocab: {c}")
    check(st.Tokenize(pb.TokenizeRequest(text=""), timeout=T).count == 0, "empty tokenize")


def t_generate(st, srv):
    text, chunks, done = collect(st.Generate(pb.GenerateRequest(
        request_id="g1", text="hello", sampling_params=sp(max_new_tokens=23)), timeout=T))
    check(text == expected(23), f"text {text!r}")
    check(done is not None and done.finish_reason == "length", f"finish {done}")
    check(done.usage.prompt_tokens == 5 and done.usage.completion_tokens == 23, "usage")
    ids = [i for c in chunks for i in c.token_ids]
    check(ids == [ord(ch) + 3 for ch in expected(23)], "token ids")
    check(chunks[-1].completion_tokens == 23 and chunks[0].prompt_tokens == 5, "counts")
    # token ids in
    text, chunks, done = collect(st.Generate(pb.GenerateRequest(
        tokenized=pb.TokenizedInput(input_ids=[104, 105, 106]),
        sampling_params=sp(max_new_tokens=4)), timeout=T))
    check(text == "abcd" and done.usage.prompt_tokens == 3, "ids prompt")
    # default max tokens (--default-max-tokens 12)
    text, _, done = collect(st.Generate(pb.GenerateRequest(text="x"), timeout=T))
    check(text == expected(12) and done.usage.completion_tokens == 12, "default max tokens")
    # eos: the fake ends prompts with "EOS" after 5 tokens
    text, chunks, done = collect(st.Generate(pb.GenerateRequest(
        text="say EOS", sampling_params=sp(max_new_tokens=50)), timeout=T))
    check(text == "abcde" and done.finish_reason == "stop", f"eos {text!r} {done}")
    check(done.WhichOneof("matched_stop") == "matched_token_id" and done.matched_token_id == 1,
          "eos matched")
    text, _, done = collect(st.Generate(pb.GenerateRequest(
        text="say EOS", sampling_params=sp(max_new_tokens=8, ignore_eos=True)), timeout=T))
    check(text == expected(8) and done.finish_reason == "length", "ignore_eos")
    # stop strings (excluded) and stop ids (included)
    text, _, done = collect(st.Generate(pb.GenerateRequest(
        text="p", sampling_params=sp(max_new_tokens=30, stop=["zz", "fgh"])), timeout=T))
    check(text == "abcde" and done.finish_reason == "stop", f"stop string {text!r}")
    check(done.matched_stop_str == "fgh", "matched stop string")
    text, _, done = collect(st.Generate(pb.GenerateRequest(
        text="p", sampling_params=sp(max_new_tokens=30, stop_token_ids=[ord("c") + 3])),
        timeout=T))
    check(text == "abc" and done.matched_token_id == ord("c") + 3, f"stop id {text!r}")
    # logprobs and top logprobs
    _, chunks, done = collect(st.Generate(pb.GenerateRequest(
        text="p", return_logprob=True, top_logprobs_num=3,
        sampling_params=sp(max_new_tokens=4, temperature=0.0, seed=7)), timeout=T))
    ok = len(chunks) == 4
    for c in chunks:
        lp = c.output_logprobs
        ok = ok and list(lp.token_logprobs) == [-0.5] and list(lp.token_ids) == list(c.token_ids)
        ok = ok and len(lp.top_logprobs) == 1
        ok = ok and list(lp.top_logprobs[0].token_ids) == [c.token_ids[0], 4, 5]
        ok = ok and list(lp.top_logprobs[0].values) == [-0.5, -1.5, -2.5]
    check(ok, "logprobs")
    _, chunks, _ = collect(st.Generate(pb.GenerateRequest(
        text="p", sampling_params=sp(max_new_tokens=2)), timeout=T))
    check(not chunks[0].HasField("output_logprobs"), "no logprobs unless asked")


def t_generate_errors(st, srv):
    bad = {
        "empty prompt": pb.GenerateRequest(),
        "empty text": pb.GenerateRequest(text=""),
        "temperature": pb.GenerateRequest(text="p", sampling_params=sp(temperature=-1)),
        "top_p": pb.GenerateRequest(text="p", sampling_params=sp(top_p=0)),
        "max_new_tokens 0": pb.GenerateRequest(text="p", sampling_params=sp(max_new_tokens=0)),
        "top logprobs": pb.GenerateRequest(text="p", top_logprobs_num=21),
        "17 stops": pb.GenerateRequest(text="p", sampling_params=sp(stop=["s"] * 17)),
        "empty stop": pb.GenerateRequest(text="p", sampling_params=sp(stop=[""])),
        "id outside vocab": pb.GenerateRequest(tokenized=pb.TokenizedInput(input_ids=[9999])),
        "id > int32": pb.GenerateRequest(tokenized=pb.TokenizedInput(input_ids=[2**31])),
    }
    for what, req in bad.items():
        c = code_of(lambda: collect(st.Generate(req, timeout=T)))
        check(c == grpc.StatusCode.INVALID_ARGUMENT, f"{what}: {c}")
    c = code_of(lambda: collect(st.Generate(pb.GenerateRequest(
        text="p", sampling_params=sp(max_new_tokens=5000)), timeout=T)))
    check(c == grpc.StatusCode.OUT_OF_RANGE, f"beyond the context: {c}")


def t_deadline(st, srv):
    t0 = time.time()
    c = code_of(lambda: collect(st.Generate(pb.GenerateRequest(
        text="p", sampling_params=sp(max_new_tokens=4000)), timeout=0.3)))
    check(c == grpc.StatusCode.DEADLINE_EXCEEDED, f"deadline: {c}")
    check(time.time() - t0 < 3, "deadline on time")
    check(srv.wait_idle(), "deadline frees the request")


def t_cancel(st, srv):
    call = st.Generate(pb.GenerateRequest(text="p", sampling_params=sp(max_new_tokens=4000)),
                       timeout=T)
    got = 0
    for r in call:
        got += 1
        if got == 5:
            break
    check(srv.running() == 1, "running before the cancel")
    call.cancel()
    check(srv.wait_idle(), "cancel frees the request")
    check(call.code() == grpc.StatusCode.CANCELLED, f"cancelled: {call.code()}")


def t_abort(st, srv):
    call = st.Generate(pb.GenerateRequest(request_id="to-abort", text="p",
                                          sampling_params=sp(max_new_tokens=4000)), timeout=T)
    it = iter(call)
    next(it)
    r = st.Abort(pb.AbortRequest(request_id="to-abort"), timeout=T)
    check(r.success, f"abort: {r}")
    last = None
    for last in it:
        pass
    check(last is not None and last.HasField("complete") and
          last.complete.finish_reason == "abort", f"aborted stream ends: {last}")
    check(last.request_id == "to-abort", "request id echoed")
    r = st.Abort(pb.AbortRequest(request_id="nobody"), timeout=T)
    check(not r.success and r.message != "", f"abort unknown: {r}")
    c = code_of(lambda: st.Abort(pb.AbortRequest(), timeout=T))
    check(c == grpc.StatusCode.INVALID_ARGUMENT, f"abort without id: {c}")
    check(srv.wait_idle(), "abort frees the request")


def t_concurrent(st, srv):
    n = 48

    def one(i):
        k = 5 + i % 20
        text, _, done = collect(st.Generate(pb.GenerateRequest(
            request_id=f"c{i}", text="p" * (1 + i), sampling_params=sp(max_new_tokens=k)),
            timeout=T))
        return text == expected(k) and done.usage.prompt_tokens == 1 + i

    with concurrent.futures.ThreadPoolExecutor(n) as ex:
        results = list(ex.map(one, range(n)))
    check(all(results), f"concurrent streams: {results.count(False)} wrong")
    check(srv.wait_idle(), "concurrent streams end")


def t_queue_full(st, srv):
    calls = [st.Generate(pb.GenerateRequest(text="p", sampling_params=sp(max_new_tokens=4000)),
                         timeout=T) for _ in range(64)]
    for c in calls:
        next(iter(c))
    extra = st.Generate(pb.GenerateRequest(text="p", sampling_params=sp(max_new_tokens=5)),
                        timeout=T)
    c = code_of(lambda: collect(extra))
    check(c == grpc.StatusCode.RESOURCE_EXHAUSTED, f"queue full: {c}")
    md = dict(extra.trailing_metadata() or ())
    check(md.get("dsv4-retryable") == "1", f"retryable trailer: {md}")
    for c in calls:
        c.cancel()
    check(srv.wait_idle(), "queue drains")


def t_health(st, srv, ch):
    h = hpbg.HealthStub(ch)
    check(h.Check(hpb.HealthCheckRequest(service=""), timeout=T).status == SERVING, "live")
    check(h.Check(hpb.HealthCheckRequest(service="dsv4.Engine"), timeout=T).status == SERVING,
          "ready")
    c = code_of(lambda: h.Check(hpb.HealthCheckRequest(service="nope"), timeout=T))
    check(c == grpc.StatusCode.NOT_FOUND, f"unknown service: {c}")
    w = h.Watch(hpb.HealthCheckRequest(service="dsv4.Engine"), timeout=T)
    wl = h.Watch(hpb.HealthCheckRequest(service=""), timeout=T)
    wu = h.Watch(hpb.HealthCheckRequest(service="nope"), timeout=T)
    it, itl = iter(w), iter(wl)
    check(next(it).status == SERVING, "watch starts SERVING")
    check(next(itl).status == SERVING, "watch live starts SERVING")
    check(next(iter(wu)).status == SERVICE_UNKNOWN, "watch unknown")
    srv.cmd("state draining shutting down")
    check(next(it).status == NOT_SERVING, "watch sees DRAINING")
    check(h.Check(hpb.HealthCheckRequest(service="dsv4.Engine"), timeout=T).status ==
          NOT_SERVING, "not ready while draining")
    check(h.Check(hpb.HealthCheckRequest(service=""), timeout=T).status == SERVING,
          "alive while draining")
    c = code_of(lambda: collect(st.Generate(pb.GenerateRequest(text="p"), timeout=T)))
    check(c == grpc.StatusCode.UNAVAILABLE, f"generate while draining: {c}")
    s = st.GetServerInfo(pb.GetServerInfoRequest(), timeout=T)
    check(s.state == "draining" and s.state_reason == "shutting down", f"state {s.state}")
    srv.cmd("state loading")
    srv.cmd("state ready")
    st2 = next(it).status
    if st2 == NOT_SERVING:  # a poll may fall between the two commands: nothing changed
        st2 = next(it).status
    check(st2 == SERVING, "watch sees READY again")
    for x in (w, wl, wu):
        x.cancel()


def t_keys(st, srv, ch):
    h = hpbg.HealthStub(ch)
    srv.cmd("keys k1,k2")
    before = srv.submitted()
    req = pb.GenerateRequest(text="p", sampling_params=sp(max_new_tokens=3))
    c = code_of(lambda: collect(st.Generate(req, timeout=T)))
    check(c == grpc.StatusCode.UNAUTHENTICATED, f"no key: {c}")
    c = code_of(lambda: collect(st.Generate(req, timeout=T,
                                            metadata=[("authorization", "Bearer k3")])))
    check(c == grpc.StatusCode.UNAUTHENTICATED, f"wrong key: {c}")
    c = code_of(lambda: st.GetModelInfo(pb.GetModelInfoRequest(), timeout=T,
                                        metadata=[("authorization", "k1")]))
    check(c == grpc.StatusCode.UNAUTHENTICATED, f"not a bearer: {c}")
    check(srv.submitted() == before, "unauthenticated calls do no work")
    text, _, _ = collect(st.Generate(req, timeout=T, metadata=[("authorization", "Bearer k2")]))
    check(text == "abc", "right key")
    check(h.Check(hpb.HealthCheckRequest(service=""), timeout=T).status == SERVING,
          "health open without a key")
    srv.cmd("keys")
    check(st.GetLoads(pb.GetLoadsRequest(), timeout=T).max_running_requests == 64, "keys off")


def t_drain(st, srv, ch):
    """Drain: needs the key when keys are set; readiness goes NOT_SERVING at once, new
    requests are refused, a running one finishes; a second Drain changes nothing."""
    h = hpbg.HealthStub(ch)
    key = [("authorization", "Bearer k1")]
    engine = hpb.HealthCheckRequest(service="dsv4.Engine")
    srv.cmd("keys k1")
    c = code_of(lambda: st.Drain(pb.DrainRequest(), timeout=T))
    check(c == grpc.StatusCode.UNAUTHENTICATED, f"drain without a key: {c}")
    c = code_of(lambda: st.Drain(pb.DrainRequest(), timeout=T,
                                 metadata=[("authorization", "Bearer nope")]))
    check(c == grpc.StatusCode.UNAUTHENTICATED, f"drain with a wrong key: {c}")
    check(h.Check(engine, timeout=T).status == SERVING, "a refused drain changes nothing")
    running = st.Generate(pb.GenerateRequest(text="p", sampling_params=sp(max_new_tokens=300)),
                          timeout=T, metadata=key)
    it = iter(running)
    first = next(it)
    r = st.Drain(pb.DrainRequest(), timeout=T, metadata=key)
    check(r.state == "draining", f"drain answers the state: {r.state!r}")
    check(h.Check(engine, timeout=T).status == NOT_SERVING, "not ready once draining")
    check(h.Check(hpb.HealthCheckRequest(service=""), timeout=T).status == SERVING,
          "alive while draining")
    c = code_of(lambda: collect(st.Generate(pb.GenerateRequest(text="p"), timeout=T,
                                            metadata=key)))
    check(c == grpc.StatusCode.UNAVAILABLE, f"generate refused while draining: {c}")
    text = first.chunk.text
    done = None
    for m in it:
        if m.HasField("chunk"):
            text += m.chunk.text
        else:
            done = m.complete
    check(text == expected(300) and done is not None and done.finish_reason == "length",
          f"a running request finishes during the drain: {len(text)} chars")
    s = st.GetServerInfo(pb.GetServerInfoRequest(), timeout=T, metadata=key)
    check(s.state == "draining" and s.state_reason == "drain requested", f"state {s.state}")
    r = st.Drain(pb.DrainRequest(), timeout=T, metadata=key)
    check(r.state == "draining", f"a second drain: {r.state!r}")
    c = code_of(lambda: ch.unary_unary("/dsv4.Engine/Drain")(b"\x0a\x01\xff", timeout=T,
                                                             metadata=key))
    check(c == grpc.StatusCode.OK, f"unknown fields of DrainRequest are ignored: {c}")
    c = code_of(lambda: ch.unary_unary("/dsv4.Engine/Drain")(b"\xff", timeout=T, metadata=key))
    check(c == grpc.StatusCode.INVALID_ARGUMENT, f"malformed DrainRequest: {c}")
    srv.cmd("state ready")
    srv.cmd("keys")


def t_malformed(st, srv, ch):
    raw = lambda path: ch.unary_unary(path, request_serializer=None,  # noqa: E731
                                      response_deserializer=None)
    # bytes straight onto the wire
    gen = ch.unary_stream("/dsv4.Engine/Generate")
    c = code_of(lambda: list(gen(b"\xff\xff\xff", timeout=T)))
    check(c == grpc.StatusCode.INVALID_ARGUMENT, f"bad protobuf: {c}")
    c = code_of(lambda: list(gen(b"\x12\x02\xff\xfe", timeout=T)))
    check(c == grpc.StatusCode.INVALID_ARGUMENT, f"text not UTF-8: {c}")
    c = code_of(lambda: list(gen(b"\x12\x03a\x00b", timeout=T)))
    check(c == grpc.StatusCode.INVALID_ARGUMENT, f"text with NUL: {c}")
    # unknown fields are ignored (proto3)
    ok = pb.GenerateRequest(text="p", sampling_params=sp(max_new_tokens=2)).SerializeToString()
    out = list(gen(ok + b"\xf8\x06\x01" + b"\xa2\x06\x03xyz", timeout=T))
    check(len(out) == 3, f"unknown fields ignored: {len(out)} responses")
    c = code_of(lambda: raw("/dsv4.Engine/Nope")(b"", timeout=T))
    check(c == grpc.StatusCode.UNIMPLEMENTED, f"unknown method: {c}")
    c = code_of(lambda: raw("/other.Service/Generate")(b"", timeout=T))
    check(c == grpc.StatusCode.UNIMPLEMENTED, f"unknown service: {c}")
    # 64 KiB limit of this server
    c = code_of(lambda: st.Tokenize(pb.TokenizeRequest(text="x" * 70000), timeout=T))
    check(c == grpc.StatusCode.RESOURCE_EXHAUSTED, f"oversized message: {c}")
    check(st.Tokenize(pb.TokenizeRequest(text="x" * 60000), timeout=T).count == 60000,
          "large message under the limit")


def t_stop():
    """Graceful stop: a short call finishes, a long one ends UNAVAILABLE at the drain
    timeout, a Watch gets NOT_SERVING and ends, new calls are refused."""
    srv = Server("--delay-ms", "1", "--drain", "2")
    ch = grpc.insecure_channel(f"127.0.0.1:{srv.port}")
    st = pbg.EngineStub(ch)
    h = hpbg.HealthStub(ch)
    short = st.Generate(pb.GenerateRequest(text="p", sampling_params=sp(max_new_tokens=100)),
                        timeout=T)
    long = st.Generate(pb.GenerateRequest(text="p", sampling_params=sp(max_new_tokens=4000)),
                       timeout=T)
    watch = h.Watch(hpb.HealthCheckRequest(service=""), timeout=T)
    witer = iter(watch)
    check(next(witer).status == SERVING, "watch before stop")
    next(iter(short))
    next(iter(long))
    res = {}

    def drain(name, call):
        res[name] = code_of(lambda: collect(call))

    th = [threading.Thread(target=drain, args=(n, c)) for n, c in
          (("short", short), ("long", long))]
    for t in th:
        t.start()
    t0 = time.time()
    out, rc = srv.stop()
    for t in th:
        t.join(T)
    check(out == "stopped" and rc == 0, f"stop: {out} {rc}")
    check(time.time() - t0 < 8, f"stop took {time.time() - t0:.1f} s")
    check(res.get("short") == grpc.StatusCode.OK, f"short call during drain: {res}")
    check(res.get("long") == grpc.StatusCode.UNAVAILABLE, f"long call at drain end: {res}")
    wl = []
    try:
        for m in witer:
            wl.append(m)
    except grpc.RpcError:
        pass
    check(bool(wl) and wl[-1].status == NOT_SERVING, f"watch NOT_SERVING at stop: {wl}")
    check(watch.code() == grpc.StatusCode.UNAVAILABLE, f"watch ends: {watch.code()}")
    c = code_of(lambda: st.GetLoads(pb.GetLoadsRequest(), timeout=2))
    check(c == grpc.StatusCode.UNAVAILABLE, f"after stop: {c}")
    ch.close()


def main():
    srv = Server("--delay-ms", "1", "--max-message", "65536", "--default-max-tokens", "12")
    ch = grpc.insecure_channel(f"127.0.0.1:{srv.port}")
    st = pbg.EngineStub(ch)
    tests = [("info", lambda: t_info(st, srv)), ("tokenizer", lambda: t_tokenizer(st, srv)),
             ("generate", lambda: t_generate(st, srv)),
             ("generate errors", lambda: t_generate_errors(st, srv)),
             ("deadline", lambda: t_deadline(st, srv)), ("cancel", lambda: t_cancel(st, srv)),
             ("abort", lambda: t_abort(st, srv)), ("concurrent", lambda: t_concurrent(st, srv)),
             ("queue full", lambda: t_queue_full(st, srv)),
             ("health", lambda: t_health(st, srv, ch)), ("keys", lambda: t_keys(st, srv, ch)),
             ("drain", lambda: t_drain(st, srv, ch)),
             ("malformed", lambda: t_malformed(st, srv, ch))]
    for name, fn in tests:
        t0 = time.time()
        before = failures
        try:
            fn()
        except Exception as e:  # a broken test must not hide the others
            check(False, f"{name}: {type(e).__name__}: {e}")
        print(f"{name}: {'ok' if failures == before else 'FAILED'} ({time.time() - t0:.2f} s)",
              flush=True)
    check(srv.wait_idle(), "nothing left running")
    ch.close()
    out, rc = srv.stop()
    check(out == "stopped" and rc == 0, "clean stop")
    t0 = time.time()
    before = failures
    try:
        t_stop()
    except Exception as e:
        check(False, f"stop: {type(e).__name__}: {e}")
    print(f"stop: {'ok' if failures == before else 'FAILED'} ({time.time() - t0:.2f} s)")
    print(f"{checks} checks, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
