"""test_systemd.py - dsv4d as systemd sees it, with a fake NOTIFY_SOCKET.

- STATUS= lines while it loads, READY=1 only after the warm-up, WATCHDOG=1 at
  the rate WATCHDOG_USEC asks for, STOPPING=1 on SIGTERM, exit 0 after a drain;
- no orphans: SIGKILL of dsv4d takes its workers down (PR_SET_PDEATHSIG), and
  no socket or shared memory is left behind;
- the configuration: --check-config on good and bad files (exit 2 naming the
  key), a configuration without a model, --version, unknown flags.
Bounded in time; the daemon listens on nothing (front ends off).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

BUILD = os.environ.get("DSV4_BUILDDIR", ".")
TMP = os.environ.get("DSV4_TMP", "/tmp")
DSV4 = os.path.join(BUILD, "dsv4")
DSV4D = os.path.join(BUILD, "dsv4d")
failures = 0


def check(cond, what):
    global failures
    if not cond:
        failures += 1
        print("FAIL:", what)
    else:
        print("ok:", what)


def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read()
        except OSError:
            continue
        ppid = int(st[st.rindex(")") + 2:].split()[1])
        if ppid == pid:
            out.append(int(d))
    return out


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            st = f.read()
        return st[st.rindex(")") + 2] != "Z"
    except OSError:
        return False


def start(model, run, notify, extra=()):
    env = dict(os.environ)
    env["NOTIFY_SOCKET"] = notify
    env["WATCHDOG_USEC"] = "400000"
    env.pop("WATCHDOG_PID", None)
    args = [DSV4D, "--model", model, "--workers", "2", "--runtime-dir", run,
            "--threads-per-worker", "1", "--max-model-len", "512", "--max-seqs", "4",
            "--max-batch-tokens", "64", "--grpc-listen", "off", "--http-listen", "off"]
    return subprocess.Popen(args + list(extra), env=env, stderr=subprocess.PIPE, text=True)


def collect(sock, until, stop=None):
    msgs = []
    while time.time() < until:
        sock.settimeout(max(0.01, until - time.time()))
        try:
            data = sock.recv(4096).decode()
        except socket.timeout:
            break
        t = time.time()
        for line in data.split("\n"):
            if line:
                msgs.append((t, line))
        if stop and any(stop(l) for _, l in msgs):
            break
    return msgs


def main():
    model = os.path.join(TMP, "tiny")
    tok = os.path.join(os.environ.get("DSV4_SHARED_DATA", "../shared/data"), "tokenizer",
                       "deepseek-v3-tokenizer.json")
    subprocess.run([DSV4, "mkmodel", "--preset", "tiny", "--format", "nvfp4", "--tokenizer", tok,
                    "--out", model], check=True, stdout=subprocess.DEVNULL)
    run = os.path.join(TMP, "run")
    os.makedirs(run, exist_ok=True)
    notify = os.path.join(TMP, "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(notify)
    shm0 = set(os.listdir("/dev/shm"))

    # 1. notifications: STATUS while loading, READY after warm-up, watchdog, STOPPING
    p = start(model, run, notify)
    msgs = collect(sock, time.time() + 60, stop=lambda l: l == "READY=1")
    lines = [l for _, l in msgs]
    check("READY=1" in lines, "READY=1 sent")
    ready_at = lines.index("READY=1") if "READY=1" in lines else len(lines)
    statuses = [l for l in lines[:ready_at] if l.startswith("STATUS=")]
    check(any("loading" in l for l in statuses), f"STATUS= while loading: {statuses[:4]}")
    check(any(l.startswith("EXTEND_TIMEOUT_USEC=") for l in lines),
          "EXTEND_TIMEOUT_USEC while loading or warming")
    msgs = collect(sock, time.time() + 2.0)
    pings = [t for t, l in msgs if l == "WATCHDOG=1"]
    check(len(pings) >= 5, f"watchdog pings every <= 0.2 s (WATCHDOG_USEC 0.4 s): {len(pings)} in 2 s")
    workers = children(p.pid)
    check(len(workers) == 2, f"2 worker processes: {workers}")
    p.send_signal(signal.SIGTERM)
    msgs = collect(sock, time.time() + 20, stop=lambda l: l == "STOPPING=1")
    check(any(l == "STOPPING=1" for _, l in msgs), "STOPPING=1 on SIGTERM")
    try:
        rc = p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        rc = p.wait()
    err = p.stderr.read()
    check(rc == 0, f"exit 0 after the drain (got {rc})")
    check("<6>dsv4d: ready" in err, "journald priority prefixes on stderr")
    check(not any(alive(w) for w in workers), "workers gone after the drain")

    # 2. no orphans: SIGKILL of the supervisor takes the workers down
    p = start(model, run, notify)
    collect(sock, time.time() + 60, stop=lambda l: l == "READY=1")
    workers = children(p.pid)
    check(len(workers) == 2, "2 workers again")
    p.kill()
    p.wait()
    p.stderr.read()
    end = time.time() + 5
    while time.time() < end and any(alive(w) for w in workers):
        time.sleep(0.05)
    check(not any(alive(w) for w in workers), "workers exit when the supervisor is killed")
    check(os.listdir(run) == [], f"no socket left in the runtime directory: {os.listdir(run)}")
    check(set(os.listdir("/dev/shm")) <= shm0, "no shared memory left in /dev/shm")

    # 3. configuration
    good = os.path.join(TMP, "good.json")
    with open(good, "w") as f:
        json.dump({"model": model, "workers": 2, "max_seqs": 8, "state_mem": "64MiB",
                   "log_level": "debug"}, f)
    r = subprocess.run([DSV4D, "--check-config", "--config", good], capture_output=True, text=True)
    check(r.returncode == 0, f"--check-config on a good file: {r.stderr.strip()}")
    cfg = json.loads(r.stdout)
    check(cfg["workers"] == 2 and cfg["state_mem"] == 64 << 20, "effective configuration printed")
    r = subprocess.run([DSV4D, "--check-config", "--config", good, "--workers", "3"],
                       capture_output=True, text=True)
    check(r.returncode == 0 and json.loads(r.stdout)["workers"] == 3, "a flag overrides the file")
    bad = os.path.join(TMP, "bad.json")
    for content, word in [({"model": model, "wrokers": 2}, "wrokers"),
                          ({"workers": "two"}, "workers"),
                          ({"max_seqs": 0}, "max_seqs"),
                          ({"log_level": "loud"}, "log_level"),
                          ({"grpc_listen": "nowhere"}, "grpc_listen")]:
        with open(bad, "w") as f:
            json.dump(content, f)
        r = subprocess.run([DSV4D, "--check-config", "--config", bad], capture_output=True,
                           text=True)
        check(r.returncode == 2 and word in r.stderr, f"bad key {word}: exit 2 naming it ({r.stderr.strip()})")
    with open(bad, "w") as f:
        f.write("{not json")
    r = subprocess.run([DSV4D, "--check-config", "--config", bad], capture_output=True, text=True)
    check(r.returncode == 2 and "JSON" in r.stderr, "malformed file: exit 2")
    empty = os.path.join(TMP, "empty.json")
    with open(empty, "w") as f:
        f.write("{}\n")
    r = subprocess.run([DSV4D, "--check-config", "--config", empty], capture_output=True, text=True)
    check(r.returncode == 0 and "no model" in r.stderr, "no model: valid, and says so")
    r = subprocess.run([DSV4D, "--config", empty], capture_output=True, text=True, timeout=10)
    check(r.returncode == 2 and "model" in r.stderr, "running without a model: exit 2")
    r = subprocess.run([DSV4D, "--bogus"], capture_output=True, text=True)
    check(r.returncode == 2 and "--bogus" in r.stderr, "unknown flag: exit 2")
    r = subprocess.run([DSV4D, "--version"], capture_output=True, text=True)
    check(r.returncode == 0 and r.stdout.startswith("dsv4d "), "--version")
    r = subprocess.run([DSV4D, "--worker"], capture_output=True, text=True)
    check(r.returncode == 2, "--worker by hand is refused")
    sock.close()
    print(f"{failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
