"""test_fleet.py - two dsv4d behind the example HAProxy configuration.

packaging/haproxy/haproxy.cfg, with only its addresses, the stats socket
and the global section's host paths rewritten for loopback (plus a
response header naming the server, to attribute each answer), runs a real
haproxy in front of two dsv4d on the tiny checkpoint.  Clients keep a
steady stream of requests going through the balancer: OpenAI completions
over HTTP/1.1, and dsv4.Engine/Generate streams over gRPC (HTTP/2 to
haproxy, proto h2 to the servers) when grpcio is installed.

SIGTERM to one instance: its /ready turns 503, haproxy takes it out of
rotation and new requests go to the other; the requests running on it
finish; it exits 0.  No client request may fail.  The drained instance runs
with drain_grace 4 s, longer than haproxy needs to notice, so it refuses
nothing and no request needs a retry (asserted).  Without a grace, a
request refused before haproxy notices would be retried elsewhere: haproxy
does that for HTTP (retry-on 503), the gRPC client for UNAVAILABLE before
any token (gRPC's retryable status; haproxy cannot read a gRPC status); the
test counts both.  Then the instance restarts and must
get requests again only after it has sent READY=1.

Prints the failed requests (must be 0), the time from SIGTERM to the last
request that instance received, and the retries.  Loopback only, bounded
in time (about a minute), every process ended in a finally.
"""
import csv
import http.client
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pkgcommon as pc  # noqa: E402
from pkgcommon import check  # noqa: E402

try:
    import grpc
    from grpc_tools import protoc
except ImportError:
    grpc = None

DSV4 = os.path.join(pc.BUILD, "dsv4")
DSV4D = os.path.join(pc.BUILD, "dsv4d")
MAX_TOKENS = 8


class Instance:
    def __init__(self, name, model, extra=()):
        self.name, self.model, self.extra = name, model, list(extra)
        self.http, self.grpc = pc.free_port(), pc.free_port()
        self.run = os.path.join(pc.TMP, f"run-{name}")
        os.makedirs(self.run, exist_ok=True)
        self.p = None
        self.notify = None
        self.log = None

    def start(self):
        self.notify = pc.Notify(os.path.join(pc.TMP, f"notify-{self.name}"))
        self.log = open(os.path.join(pc.TMP, f"{self.name}.log"), "a")
        env = dict(os.environ, NOTIFY_SOCKET=self.notify.path)
        self.p = subprocess.Popen(
            [DSV4D, "--model", self.model, "--workers", "1", "--threads-per-worker", "1",
             "--max-model-len", "512", "--max-seqs", "8", "--max-batch-tokens", "128",
             "--drain-timeout", "30", "--runtime-dir", self.run,
             "--grpc-listen", f"127.0.0.1:{self.grpc}", "--http-listen", f"127.0.0.1:{self.http}",
             *self.extra],
            env=env, stdout=self.log, stderr=self.log)

    def stop(self, sig=signal.SIGTERM):
        if self.p and self.p.poll() is None:
            self.p.send_signal(sig)

    def cleanup(self):
        if self.p and self.p.poll() is None:
            self.p.kill()
            self.p.wait()
        if self.notify:
            self.notify.close()
        if self.log:
            self.log.close()


def haproxy_config(a, b, http_port, grpc_port, stats):
    with open(os.path.join(pc.SRC, "packaging", "haproxy", "haproxy.cfg")) as f:
        cfg = f.read()
    subs = [
        (r"\n\s*chroot .*", ""), (r"\n\s*user haproxy", ""), (r"\n\s*group haproxy", ""),
        (r"\n\s*log /dev/log .*", ""),
        (r"stats socket \S+", f"stats socket {stats}"),
        (r"maxconn \d+", "maxconn 1000"),  # the production value needs 40k descriptors
        (r"bind :8080\b", f"bind 127.0.0.1:{http_port}"),
        (r"bind :50051 proto h2", f"bind 127.0.0.1:{grpc_port} proto h2"),
        (r"10\.0\.0\.11:8080", f"127.0.0.1:{a.http}"), (r"10\.0\.0\.11:50051", f"127.0.0.1:{a.grpc}"),
        (r"10\.0\.0\.12:8080", f"127.0.0.1:{b.http}"), (r"10\.0\.0\.12:50051", f"127.0.0.1:{b.grpc}"),
        # test only: name the server that answered
        (r"(\n(\s*)balance leastconn)", r"\1\n\2http-response set-header x-dsv4d-server %s"),
    ]
    for pat, rep in subs:
        cfg, n = re.subn(pat, rep, cfg)
        if n == 0:
            raise RuntimeError(f"the example haproxy.cfg no longer has {pat!r}: update the test")
    return cfg


def haproxy_stats(path):
    """{(proxy, server): row} from 'show stat' on the stats socket."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(2)
    s.connect(path)
    s.sendall(b"show stat\n")
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    text = data.decode().lstrip("# ")
    return {(r["pxname"], r["svname"]): r for r in csv.DictReader(io.StringIO(text))}


class Load:
    """Client threads through the balancer; each request: (start, end, server, ok, what)."""

    def __init__(self, http_port, grpc_port, n_http=3, n_grpc=2):
        self.http_port, self.grpc_port = http_port, grpc_port
        self.results = []
        self.mu = threading.Lock()
        self.stop = threading.Event()
        self.grpc_retries = 0
        self.threads = [threading.Thread(target=self.http_loop, daemon=True) for _ in range(n_http)]
        if grpc:
            self.threads += [threading.Thread(target=self.grpc_loop, daemon=True)
                             for _ in range(n_grpc)]

    def record(self, *row):
        with self.mu:
            self.results.append(row)

    def burst(self, n):
        """n one-off HTTP requests at once (some reach a server before its check fails)."""
        for _ in range(n):
            t = threading.Thread(target=self.http_loop, args=(True,), daemon=True)
            self.threads.append(t)
            t.start()

    def http_loop(self, once=False):
        conn = None
        body = json.dumps({"prompt": "Hello", "max_tokens": MAX_TOKENS, "temperature": 0})
        first = True
        while not self.stop.is_set() and (first or not once):
            first = False
            t0 = time.time()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=60)
                conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
                r = conn.getresponse()
                data = r.read()
                srv = r.getheader("x-dsv4d-server", "?")
                ok = r.status == 200
                if ok:
                    ans = json.loads(data)
                    ok = ans["choices"][0]["finish_reason"] in ("length", "stop")
                self.record(t0, time.time(), srv, ok, f"http {r.status} {data[:120]!r}")
                if r.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except Exception as e:  # noqa: BLE001 - every error is a failed request
                self.record(t0, time.time(), "?", False, f"http {type(e).__name__}: {e}")
                if conn:
                    conn.close()
                conn = None

    def grpc_loop(self):
        import dsv4_pb2 as pb
        import dsv4_pb2_grpc as pbg
        ch = grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}",
                                   options=[("grpc.enable_retries", 0)])
        stub = pbg.EngineStub(ch)
        req = pb.GenerateRequest(text="Hello", sampling_params=pb.SamplingParams(
            temperature=0, max_new_tokens=MAX_TOKENS))
        while not self.stop.is_set():
            t0 = time.time()
            for attempt in range(5):
                tokens, srv, done = 0, "?", None
                try:
                    call = stub.Generate(req, timeout=60)
                    for resp in call:
                        if resp.HasField("chunk"):
                            tokens += len(resp.chunk.token_ids)
                        elif resp.HasField("complete"):
                            done = resp.complete.finish_reason
                    srv = dict(call.initial_metadata()).get("x-dsv4d-server", "?")
                    ok = done in ("length", "stop") and tokens > 0
                    self.record(t0, time.time(), srv, ok, f"grpc finish {done} tokens {tokens}")
                    break
                except grpc.RpcError as e:
                    if e.code() == grpc.StatusCode.UNAVAILABLE and tokens == 0 and attempt < 4:
                        with self.mu:
                            self.grpc_retries += 1
                        # refused before it started: safe to retry, after a
                        # backoff that outlasts the balancer's check (3.75 s)
                        time.sleep(0.25 * 2 ** attempt)
                        continue
                    self.record(t0, time.time(), srv, False, f"grpc {e.code()}: {e.details()}")
                    break
        ch.close()

    def start(self):
        for t in self.threads:
            t.start()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=70)


def gen_protos():
    out = os.path.join(pc.TMP, "stubs")
    os.makedirs(out, exist_ok=True)
    rc = protoc.main(["protoc", f"-I{os.path.join(pc.SRC, 'proto')}", f"--python_out={out}",
                      f"--grpc_python_out={out}", "dsv4.proto"])
    if rc != 0:
        raise RuntimeError("grpc_tools.protoc failed")
    sys.path.insert(0, out)


def wait_status(stats, server, want, timeout):
    """Waits until haproxy shows `server` of dsv4d_http in state `want`; the time or None."""
    end = time.time() + timeout
    while time.time() < end:
        try:
            st = haproxy_stats(stats)[("dsv4d_http", server)]["status"]
            if st.startswith(want):
                return time.time()
        except (OSError, KeyError):
            pass
        time.sleep(0.1)
    return None


def main():
    import shutil
    hap = shutil.which("haproxy")
    if not hap:
        print("FAIL: haproxy is missing (scripts/install-deps installs it)")
        return 1
    if grpc:
        gen_protos()
    else:
        print("note: grpcio / grpcio-tools not installed: HTTP clients only")
    model = pc.make_tiny(DSV4, os.path.join(pc.TMP, "model"))
    # dsv4d-1 is the one drained: with a grace, so that the balancer takes it out before it
    # refuses anything
    a = Instance("dsv4d-1", model, ("--drain-grace", "4"))
    b = Instance("dsv4d-2", model)
    http_port, grpc_port = pc.free_port(), pc.free_port()
    stats = os.path.join(pc.TMP, "haproxy.sock")
    cfgpath = os.path.join(pc.TMP, "haproxy.cfg")
    with open(cfgpath, "w") as f:
        f.write(haproxy_config(a, b, http_port, grpc_port, stats))
    r = pc.run([hap, "-c", "-f", cfgpath])
    check(r.returncode == 0, "haproxy -c accepts the example configuration")
    hlog = open(os.path.join(pc.TMP, "haproxy.log"), "w")
    hp = None
    load = None
    try:
        for inst in (a, b):
            inst.start()
        for inst in (a, b):
            check(inst.notify.wait_for("READY=1", 90), f"{inst.name} READY=1")
        # started once both are ready, so that slowstart (which never applies
        # at haproxy's own start) does not favour the first one up
        hp = subprocess.Popen([hap, "-db", "-f", cfgpath], stdout=hlog, stderr=hlog)
        time.sleep(1)
        if not check(hp.poll() is None, "haproxy runs"):
            return 1
        for inst in (a, b):
            check(wait_status(stats, inst.name, "UP", 30) is not None,
                  f"haproxy marks {inst.name} UP (GET /ready 200)")

        load = Load(http_port, grpc_port)
        load.start()
        end = time.time() + 30
        while time.time() < end:
            served = {s for _, _, s, ok, _ in list(load.results) if ok}
            if len(served) >= 2 and len(load.results) >= 10:
                break
            time.sleep(0.2)
        check({"dsv4d-1", "dsv4d-2"} <= served, f"both instances serve: {sorted(served)}")

        t_term = time.time()
        a.stop()
        load.burst(6)
        t_down = wait_status(stats, "dsv4d-1", "DOWN", 20)
        check(t_down is not None,
              f"haproxy marks dsv4d-1 DOWN {t_down - t_term if t_down else -1:.2f} s after SIGTERM")
        try:
            rc = a.p.wait(timeout=45)
        except subprocess.TimeoutExpired:
            rc = None
        t_exit = time.time()
        check(rc == 0, f"dsv4d-1 drains and exits 0 ({t_exit - t_term:.1f} s after SIGTERM)")
        end = time.time() + 30
        while time.time() < end and sum(1 for x in load.results if x[0] > t_down) < 6:
            time.sleep(0.2)
        res = list(load.results)
        on_a = [x for x in res if x[2] == "dsv4d-1"]
        inflight = [x for x in on_a if x[0] < t_term < x[1]]
        check(len(inflight) > 0 and all(x[3] for x in inflight),
              f"requests running on dsv4d-1 at SIGTERM finish: {sum(x[3] for x in inflight)}/"
              f"{len(inflight)}")
        last_start = max((x[0] for x in on_a), default=t_term)
        print(f"time from SIGTERM to the last new request on dsv4d-1: "
              f"{max(0.0, last_start - t_term):.2f} s (marked DOWN after "
              f"{(t_down or t_term) - t_term:.2f} s)")
        after = [x for x in res if x[0] > (t_down or t_exit)]
        check(after and all(x[2] == "dsv4d-2" for x in after if x[3]),
              f"once dsv4d-1 is DOWN every request goes to dsv4d-2 ({len(after)})")

        a.start()
        check(a.notify.wait_for("READY=1", 90), "dsv4d-1 restarted: READY=1")
        t_ready = a.notify.time_of("READY=1")
        t_up = wait_status(stats, "dsv4d-1", "UP", 30)
        check(t_up is not None, "haproxy marks the restarted dsv4d-1 UP")
        end = time.time() + 45
        while time.time() < end:
            back = [x for x in load.results if x[2] == "dsv4d-1" and x[0] > t_exit]
            if len(back) >= 3:
                break
            time.sleep(0.2)
        back = [x for x in load.results if x[2] == "dsv4d-1" and x[0] > t_exit]
        check(len(back) >= 3, f"the restarted dsv4d-1 gets requests again ({len(back)})")
        if back and t_ready:
            first = min(x[0] for x in back)
            check(first >= t_ready,
                  f"...only after its READY=1 (first request {first - t_ready:+.2f} s after it; "
                  f"UP {((t_up or t_ready) - t_ready):+.2f} s)")
        load.finish()
        res = list(load.results)
        failed = [x for x in res if not x[3]]
        st = haproxy_stats(stats)
        retr = int(st[("dsv4d_http", "BACKEND")]["wretr"] or 0)
        redis = int(st[("dsv4d_http", "BACKEND")]["wredis"] or 0)
        n_http = sum(1 for x in res if x[4].startswith("http"))
        lat = sorted(x[1] - x[0] for x in res)
        print(f"request time: median {lat[len(lat) // 2]:.2f} s, max {lat[-1]:.2f} s")
        print(f"requests: {len(res)} ({n_http} HTTP, {len(res) - n_http} gRPC); failed: "
              f"{len(failed)}; haproxy HTTP retries {retr}, redispatches {redis}; gRPC client "
              f"retries (UNAVAILABLE before any token) {load.grpc_retries}")
        for x in failed[:10]:
            print(f"  failed: +{x[0] - t_term:.2f} s on {x[2]}: {x[4]}")
        check(not failed, f"no client request failed ({len(failed)} failed)")
        # dsv4d-1 drains with a grace longer than haproxy's detection (fall 2 x fastinter):
        # it keeps admitting until it is out of rotation, so nothing needed a retry
        check(retr == 0 and load.grpc_retries == 0,
              f"with drain_grace nothing was refused: HTTP retries {retr}, gRPC retries "
              f"{load.grpc_retries}")
    finally:
        if load:
            load.stop.set()
        for inst in (a, b):
            inst.stop()
        for inst in (a, b):
            try:
                if inst.p:
                    inst.p.wait(timeout=40)
            except subprocess.TimeoutExpired:
                pass
            inst.cleanup()
        if hp:
            hp.terminate()
            try:
                hp.wait(timeout=10)
            except subprocess.TimeoutExpired:
                hp.kill()
                hp.wait()
        hlog.close()
        if pc.failures:
            for name in ("haproxy.log", "dsv4d-1.log", "dsv4d-2.log"):
                with open(os.path.join(pc.TMP, name)) as f:
                    print(f"--- {name} (tail)\n" + "".join(f.readlines()[-15:]))
    print(f"{pc.failures} failed")
    return 1 if pc.failures else 0


if __name__ == "__main__":
    sys.exit(main())
