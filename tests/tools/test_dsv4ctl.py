"""test_dsv4ctl.py - dsv4ctl, the command-line client, against a real dsv4d.

Makes a tiny random checkpoint (dsv4 mkmodel), starts dsv4d on it (2 workers,
loopback, free ports, gRPC and HTTP on, an API key file), waits for health,
then runs every command and checks its output and exit status:

- usage errors exit 2 without a server; an unreachable server exits 1 naming
  the cause; a missing or wrong key exits 1 with UNAUTHENTICATED (health is
  open without a key, as probes carry none);
- generate: two identical greedy runs give the same tokens, equal to those of
  `dsv4 generate` (offline) for the same prompt ids with --no-stop; the text
  streamed to stdout equals the --json text; logprobs; stop strings;
- chat: prints text; its prompt equals `dsv4 chat-encode`'s; --json parses;
- tokenize / detokenize round trip; stats; health (also --json); abort by
  request id; watch until SIGINT;
- drain: needs the key; a running request finishes; watch sees NOT_SERVING;
  dsv4d sends STOPPING=1 (to a fake NOTIFY_SOCKET) and exits 0; afterwards
  health exits 1 (unreachable).
Every subprocess has a timeout; the daemon is killed if anything fails.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

BUILD = os.environ.get("DSV4_BUILDDIR", ".")
TMP = os.environ.get("DSV4_TMP", "/tmp")
DATA = os.environ.get("DSV4_SHARED_DATA", "../shared/data")
DSV4 = os.path.join(BUILD, "dsv4")
DSV4D = os.path.join(BUILD, "dsv4d")
CTL = os.path.join(BUILD, "dsv4ctl")
KEY = "test-key-0123"
T = 60  # seconds: the limit of any one command

failures = 0
checks = 0


def check(cond, what):
    global failures, checks
    checks += 1
    print(("ok: " if cond else "FAIL: ") + what, flush=True)
    if not cond:
        failures += 1


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Ctl:
    def __init__(self, target):
        self.target = target

    def run(self, *args, key=KEY, target=None, timeout=T):
        env = dict(os.environ)
        env.pop("DSV4_API_KEY", None)
        if key is not None:
            env["DSV4_API_KEY"] = key
        cmd = [CTL, "--target", target or self.target, *args]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        print(f"$ dsv4ctl {' '.join(args)} -> {r.returncode}", flush=True)
        if r.stderr.strip():
            print("  stderr: " + r.stderr.strip().replace("\n", "\n  stderr: "), flush=True)
        return r

    def popen(self, *args, key=KEY):
        env = dict(os.environ)
        env.pop("DSV4_API_KEY", None)
        if key is not None:
            env["DSV4_API_KEY"] = key
        return subprocess.Popen([CTL, "--target", self.target, *args], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def json(self, *args, **kw):
        r = self.run("--json", *args, **kw)
        try:
            return r, json.loads(r.stdout)
        except ValueError:
            return r, None


def usage_errors(ctl):
    """Bad usage exits 2 before any connection (the target is unreachable anyway)."""
    dead = f"127.0.0.1:{free_port()}"
    cases = [(), ("nope",), ("--bogus", "health"), ("generate",), ("generate", "a", "b"),
             ("generate", "--ids", "1,x"), ("generate", "hi", "--max-tokens", "0"),
             ("generate", "hi", "--temperature", "abc"), ("generate", "hi", "--max-tokens"),
             ("chat",), ("chat", "hi", "--effort", "max"), ("watch", "--count", "0"),
             ("detokenize",), ("detokenize", "1,,2"), ("tokenize",), ("health", "extra"),
             ("--timeout", "-1", "health"), ("--target", "nocolon", "health"),
             ("--target", "127.0.0.1:99999", "health")]
    for args in cases:
        r = ctl.run(*args, target=dead)
        check(r.returncode == 2 and r.stderr.strip() != "",
              f"usage error exits 2 with a message: {args} -> {r.returncode}")
    for args in (("--help",), ("generate", "--help"), ("--version",)):
        r = ctl.run(*args, target=dead)
        check(r.returncode == 0 and "dsv4ctl" in r.stdout, f"{args} prints and exits 0")
    r = ctl.run("health", target=dead)
    check(r.returncode == 1 and "cannot connect" in r.stderr and dead in r.stderr,
          f"unreachable server: exit 1 naming the cause: {r.stderr.strip()!r}")
    r, j = ctl.json("stats", target=dead)
    check(r.returncode == 1 and j is not None and j["error"]["code"] == "UNAVAILABLE",
          f"unreachable with --json: an error object: {r.stdout.strip()!r}")


def wait_ready(ctl, daemon, limit=120):
    end = time.time() + limit
    seen = set()
    while time.time() < end and daemon.poll() is None:
        r = ctl.run("health", key=None)
        seen.add(r.returncode)
        if r.returncode == 0:
            return True, seen
        check(r.returncode == 1, f"health before ready exits 1: {r.returncode}")
        time.sleep(0.3)
    return False, seen


def t_keys(ctl):
    r = ctl.run("stats", key=None)
    check(r.returncode == 1 and "UNAUTHENTICATED" in r.stderr, "no key: UNAUTHENTICATED, exit 1")
    r = ctl.run("--api-key", "wrong", "stats", key=None)
    check(r.returncode == 1 and "UNAUTHENTICATED" in r.stderr, "wrong key: UNAUTHENTICATED, exit 1")
    r = ctl.run("generate", "hi", "--max-tokens", "2", key="wrong")
    check(r.returncode == 1 and "UNAUTHENTICATED" in r.stderr,
          "wrong key from $DSV4_API_KEY: UNAUTHENTICATED")
    r, j = ctl.json("tokenize", "x", key="wrong")
    check(r.returncode == 1 and j and j["error"]["code"] == "UNAUTHENTICATED",
          "wrong key with --json: an error object")
    r = ctl.run("--api-key", KEY, "stats", key=None)
    check(r.returncode == 0, "--api-key works")
    r = ctl.run("health", key=None)
    check(r.returncode == 0 and "ready: SERVING" in r.stdout, "health is open without a key")


def t_info(ctl):
    r, j = ctl.json("stats")
    check(r.returncode == 0 and j is not None, "stats --json parses")
    if j:
        check(j["server"]["state"] == "ready" and j["server"]["server_type"] == "grpc",
              f"stats: server {j['server']['state']}")
        check(j["model"]["vocab_size"] > 0 and j["model"]["max_context_length"] > 0,
              "stats: model sizes")
        check(j["loads"]["workers"] == 2 and j["loads"]["workers_ready"] == 2,
              f"stats: workers {j['loads']['workers_ready']}/{j['loads']['workers']}")
    r = ctl.run("stats")
    check(r.returncode == 0 and "server:" in r.stdout and "model:" in r.stdout and
          "loads:" in r.stdout, "stats prints the three sections")
    r, j = ctl.json("health")
    check(r.returncode == 0 and j == {"target": ctl.target, "alive": "SERVING",
                                      "ready": "SERVING", "serving": True},
          f"health --json: {j}")
    r = ctl.run("health", "--service", "nope")
    check(r.returncode == 1 and "NOT_FOUND" in r.stderr, "health of an unknown service")
    r = ctl.run("watch", "--count", "1")
    check(r.returncode == 0 and r.stdout.strip().endswith("dsv4.Engine SERVING"),
          f"watch --count 1: {r.stdout.strip()!r}")
    return j


def t_tokenizer(ctl):
    text = "Hello, world! 123 <｜User｜>ok"
    r, j = ctl.json("tokenize", text)
    check(r.returncode == 0 and j and j["count"] == len(j["token_ids"]) > 0, "tokenize --json")
    r = ctl.run("tokenize", text)
    check(r.returncode == 0 and j and r.stdout.strip() == ",".join(map(str, j["token_ids"])),
          "tokenize prints the ids as a list")
    r = ctl.run("detokenize", r.stdout.strip())
    check(r.returncode == 0 and r.stdout == text + "\n", f"round trip: {r.stdout!r}")
    r2, j2 = ctl.json("detokenize", ",".join(map(str, j["token_ids"])))
    check(r2.returncode == 0 and j2 == {"text": text}, "detokenize --json")
    bos = "<｜begin▁of▁sentence｜>"
    r3 = ctl.run("tokenize", bos + "Hi there")
    r3 = ctl.run("detokenize", r3.stdout.strip(), "--skip-special")
    check(r3.returncode == 0 and r3.stdout == "Hi there\n",
          f"detokenize --skip-special: {r3.stdout!r}")
    r = ctl.run("detokenize", "2000000000")
    check(r.returncode == 1 and "2000000000" in r.stderr, "detokenize of a bad id: exit 1")
    return j["token_ids"]


def t_generate(ctl, model, ids):
    n = 12
    sids = ",".join(map(str, ids))
    args = ("generate", "--ids", sids, "--max-tokens", str(n), "--temperature", "0",
            "--ignore-eos")
    r1, j1 = ctl.json(*args)
    r2, j2 = ctl.json(*args)
    check(r1.returncode == 0 and r2.returncode == 0 and j1 and j2, "greedy generate --json")
    if not (j1 and j2):
        return
    check(j1["token_ids"] == j2["token_ids"] and len(j1["token_ids"]) == n,
          f"two greedy runs agree: {j1['token_ids']} / {j2['token_ids']}")
    check(j1["finish_reason"] == "length" and j1["usage"] == {
        "prompt_tokens": len(ids), "completion_tokens": n}, f"finish and usage: {j1}")
    off = subprocess.run([DSV4, "generate", "--model", model, "--prompt-ids", sids,
                          "--max-tokens", str(n), "--no-stop", "--temperature", "0", "--json"],
                         capture_output=True, text=True, timeout=T)
    try:
        ref = json.loads(off.stdout)["tokens"]
    except (ValueError, KeyError):
        ref = None
        print(off.stdout, off.stderr)
    check(ref == j1["token_ids"], f"the tokens of dsv4 generate: {ref}")
    r = ctl.run(*args)
    want = j1["text"] + ("\n" if j1["text"] and not j1["text"].endswith("\n") else "")
    check(r.returncode == 0 and r.stdout == want and "finish length" in r.stderr,
          f"streamed text equals the --json text: {r.stdout!r} / {want!r}")
    # logprobs and a stop string
    r, j = ctl.json(*args, "--logprobs", "3")
    ok = r.returncode == 0 and j and len(j["logprobs"]) == n and len(j["top_logprobs"]) == n
    check(ok and all(len(t) == 3 for t in j["top_logprobs"]) and
          all(t[0]["token_id"] == i for t, i in zip(j["top_logprobs"], j["token_ids"])),
          "logprobs: one per token, 3 alternatives, the greedy token first")
    r = ctl.run(*args, "--logprobs", "1")
    check(r.returncode == 0 and "logprobs:" in r.stdout, "logprobs in the human output")
    stop = j1["text"][2:6] if len(j1["text"]) >= 8 else None
    if stop:
        r, j = ctl.json(*args, "--stop", stop)
        # the text up to the stop string, not a byte of it (nor of a prefix of it, which
        # the server holds back while it may still grow into the stop string)
        want = j1["text"][:j1["text"].index(stop)]
        check(r.returncode == 0 and j and j["finish_reason"] == "stop" and
              j.get("matched_stop_str") == stop and j["text"] == want,
              f"stop string {stop!r}: {j and j['text']!r}, want {want!r}")
        r = ctl.run(*args, "--stop", stop)
        check(r.returncode == 0 and r.stdout.rstrip("\n") == want,
              f"stop string {stop!r}, streamed: {r.stdout!r}, want {want!r}")
    # stop strings starting at every character of the first 12: some start inside a token's
    # text or at its last character, so that a prefix of the stop string ends a streamed
    # chunk; the server must hold it back until it knows whether the stop string completes
    text, bad = j1["text"], []
    for i in range(1, min(len(text) - 3, 13)):
        stop = text[i:i + 3]
        if not stop.strip() or "\n" in stop:
            continue
        want = text[:text.index(stop)]
        r, j = ctl.json(*args, "--stop", stop)
        if not (r.returncode == 0 and j and j["finish_reason"] == "stop" and j["text"] == want):
            bad.append((stop, j and j["text"], want))
    check(not bad, f"stop strings at every offset: text up to the stop string only: {bad}")
    # a text prompt (tokenized by the server) and a seeded sample
    r, j = ctl.json("generate", "Hello", "--max-tokens", "4", "--seed", "7", "--top-k", "5")
    r2, j2 = ctl.json("generate", "Hello", "--max-tokens", "4", "--seed", "7", "--top-k", "5")
    check(r.returncode == 0 and j and j2 and j["token_ids"] == j2["token_ids"],
          "seeded sampling repeats")
    r = ctl.run("generate", "--ids", "1", "--max-tokens", "100000000")
    check(r.returncode == 1 and "OUT_OF_RANGE" in r.stderr, "beyond the context: OUT_OF_RANGE")
    r = ctl.run("--timeout", "0.001", "generate", "--ids", sids, "--max-tokens", "200",
                "--ignore-eos")
    check(r.returncode == 1 and "DEADLINE_EXCEEDED" in r.stderr, "a deadline: DEADLINE_EXCEEDED")


def t_chat(ctl):
    r, j = ctl.json("chat", "Hello", "--max-tokens", "10", "--temperature", "0",
                    "--show-prompt")
    check(r.returncode == 0 and j is not None, "chat --json")
    if not j:
        return
    for k in ("text", "content", "token_ids", "finish_reason", "usage", "tool_calls", "prompt"):
        check(k in j, f"chat --json has {k}")
    enc = subprocess.run([DSV4, "chat-encode", "--mode", "chat"],
                         input=json.dumps([{"role": "user", "content": "Hello"}]),
                         capture_output=True, text=True, timeout=T)
    check(enc.returncode == 0 and j["prompt"] == enc.stdout,
          f"the prompt is the project's chat encoding: {j['prompt']!r} / {enc.stdout!r}")
    r = ctl.run("chat", "Hello", "--max-tokens", "10", "--temperature", "0")
    check(r.returncode == 0 and "finish" in r.stderr, "chat prints text")
    if "grammar" not in r.stderr and not j["tool_calls"]:
        want = j["content"] + ("" if j["content"].endswith("\n") or not j["content"] else "\n")
        check(r.stdout == want, f"chat prints the content: {r.stdout!r} / {want!r}")
    r, j = ctl.json("chat", "Hello", "--thinking", "--system", "Be brief.", "--max-tokens", "10")
    check(r.returncode == 0 and j and "reasoning" in j, "chat --thinking --json has reasoning")
    r = ctl.run("chat", "Hello", "--thinking", "--max-tokens", "10", "--temperature", "0")
    check(r.returncode == 0, "chat --thinking")


def wait_running(ctl, limit=20):
    end = time.time() + limit
    while time.time() < end:
        _, j = ctl.json("stats")
        if j and j["loads"]["num_running_reqs"] + j["loads"]["num_waiting_reqs"] > 0:
            return True
        time.sleep(0.05)
    return False


def t_abort_watch(ctl):
    gen = ctl.popen("--json", "generate", "--ids", "1,2,3", "--max-tokens", "400",
                    "--ignore-eos", "--request-id", "job-1")
    check(wait_running(ctl), "a request is running")
    r = ctl.run("abort", "job-1")
    check(r.returncode == 0, "abort by the client's request id")
    try:
        out, _ = gen.communicate(timeout=30)
        g = json.loads(out)
        check(gen.returncode == 0 and g["finish_reason"] == "abort" and
              g["request_id"] == "job-1" and len(g["token_ids"]) < 400,
              f"the aborted request ends 'abort': {g['finish_reason']}")
    except (ValueError, subprocess.TimeoutExpired) as e:
        gen.kill()
        check(False, f"the aborted request: {e}")
    r = ctl.run("abort", "job-1")
    check(r.returncode == 1 and "abort" in r.stderr, "abort of no running request: exit 1")
    w = ctl.popen("watch", "--service", "")
    first = w.stdout.readline()
    w.send_signal(signal.SIGINT)
    try:
        w.communicate(timeout=10)
        check(first.strip().endswith('"" SERVING') and w.returncode == 0,
              f"watch until interrupted: exit 0 ({first.strip()!r})")
    except subprocess.TimeoutExpired:
        w.kill()
        check(False, "watch ends on SIGINT")


def t_drain(ctl, daemon):
    r = ctl.run("drain", key=None)
    check(r.returncode == 1 and "UNAUTHENTICATED" in r.stderr, "drain without a key refused")
    r = ctl.run("health")
    check(r.returncode == 0, "a refused drain changes nothing")
    watch = ctl.popen("watch", "--count", "2")
    first = watch.stdout.readline()
    check(first.strip().endswith("dsv4.Engine SERVING"), f"watch: {first.strip()!r}")
    gen = ctl.popen("--json", "generate", "--ids", "1,2,3", "--max-tokens", "48",
                    "--temperature", "0", "--ignore-eos")
    check(wait_running(ctl), "a request is running before the drain")
    r, j = ctl.json("drain", "--wait")
    check(r.returncode == 0 and j and j["state"] in ("draining", "stopped") and j["stopped"],
          f"drain --wait: {r.stdout.strip()!r}")
    try:
        rc = daemon.wait(30)
    except subprocess.TimeoutExpired:
        rc = None
    check(rc == 0, f"dsv4d exits 0 after a client's drain: {rc}")
    try:
        out, err = gen.communicate(timeout=30)
        g = json.loads(out)
        check(gen.returncode == 0 and g["finish_reason"] == "length" and
              len(g["token_ids"]) == 48, "the running request finished during the drain")
    except (ValueError, subprocess.TimeoutExpired) as e:
        check(False, f"the running request: {e}")
    try:
        out, err = watch.communicate(timeout=10)
        check(watch.returncode == 0 and out.strip().endswith("dsv4.Engine NOT_SERVING"),
              f"watch sees NOT_SERVING: {out.strip()!r} {err.strip()!r}")
    except subprocess.TimeoutExpired:
        watch.kill()
        check(False, "watch ended")
    r = ctl.run("health")
    check(r.returncode == 1 and "cannot connect" in r.stderr, "after the drain: unreachable")


class Notify:
    """A fake NOTIFY_SOCKET, read by a thread (a full socket would block dsv4d)."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)
        self.lines = []
        self.stop = False
        self.th = threading.Thread(target=self.loop, daemon=True)
        self.th.start()

    def loop(self):
        while not self.stop:
            try:
                data = self.sock.recv(4096).decode()
            except socket.timeout:
                continue
            except OSError:
                return
            self.lines += [l for l in data.split("\n") if l]

    def close(self):
        self.stop = True
        self.th.join(2)
        self.sock.close()


def main():
    for exe in (DSV4, DSV4D, CTL):
        if not os.path.exists(exe):
            print(f"{exe} not built")
            return 1
    model = os.path.join(TMP, "tiny")
    tok = os.path.join(DATA, "tokenizer", "deepseek-v3-tokenizer.json")
    subprocess.run([DSV4, "mkmodel", "--preset", "tiny", "--format", "nvfp4", "--tokenizer", tok,
                    "--out", model], check=True, stdout=subprocess.DEVNULL, timeout=120)
    run = os.path.join(TMP, "run")
    os.makedirs(run, exist_ok=True)
    keys = os.path.join(TMP, "keys")
    with open(keys, "w") as f:
        f.write("# test keys\n" + KEY + "\n")
    gport, hport = free_port(), free_port()
    ctl = Ctl(f"127.0.0.1:{gport}")
    usage_errors(ctl)
    log = open(os.path.join(TMP, "dsv4d.log"), "w")
    notify = Notify(os.path.join(TMP, "notify.sock"))
    env = dict(os.environ, NOTIFY_SOCKET=notify.path)
    env.pop("WATCHDOG_USEC", None)
    daemon = subprocess.Popen([DSV4D, "--model", model, "--workers", "2", "--runtime-dir", run,
                               "--threads-per-worker", "1", "--max-model-len", "512",
                               "--max-seqs", "4", "--max-batch-tokens", "64",
                               "--grpc-listen", ctl.target, "--http-listen",
                               f"127.0.0.1:{hport}", "--api-key-file", keys],
                              stderr=log, stdout=log, env=env)
    try:
        ready, seen = wait_ready(ctl, daemon)
        check(ready, f"dsv4d ready (health exit codes seen: {sorted(seen)})")
        if not ready:
            return 1
        for name, fn in (("keys", lambda: t_keys(ctl)), ("info", lambda: t_info(ctl))):
            before = failures
            fn()
            print(f"-- {name}: {'ok' if failures == before else 'FAILED'}", flush=True)
        ids = t_tokenizer(ctl)
        t_generate(ctl, model, ids)
        t_chat(ctl)
        t_abort_watch(ctl)
        t_drain(ctl, daemon)
        time.sleep(0.3)
        if "READY=1" in notify.lines:  # a build with systemd notifications
            check("STOPPING=1" in notify.lines,
                  f"STOPPING=1 on a client's drain: {notify.lines[-4:]}")
    except Exception as e:  # a broken step must not leave the daemon behind
        check(False, f"{type(e).__name__}: {e}")
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGKILL)
            daemon.wait(10)
        log.close()
        notify.close()
        if failures:
            with open(os.path.join(TMP, "dsv4d.log")) as f:
                print("---- dsv4d log (tail)\n" + "".join(f.readlines()[-40:]))
    print(f"{checks} checks, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
