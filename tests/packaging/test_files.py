"""test_files.py - the packaged files agree with the daemon they ship with.

Fast, no root, nothing installed:
- every key `dsv4d --help` lists is documented in dsv4d.json(5), and the
  manual documents no key the daemon lacks;
- packaging/dsv4d.json is valid (dsv4d --check-config), names no model, and
  sets every key it has to the daemon's default;
- dsv4d.service: TimeoutStopSec exceeds the default drain_timeout by 30 s or
  more; the ExecCondition, run against the build's dsv4d, skips (exit 1)
  without a model, passes with one and passes a broken file through to
  dsv4d; the socket units name their descriptors grpc and http;
- socket activation: dsv4d under systemd-socket-activate with two sockets
  named grpc and http (as the socket units pass them) serves on them, not
  on its configured addresses; the first connection waits for the daemon;
- the HAProxy example passes `haproxy -c` (when haproxy is installed) and
  does not cut sessions on mark-down.
"""
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pkgcommon as pc  # noqa: E402
from pkgcommon import check  # noqa: E402

DSV4D = os.path.join(pc.BUILD, "dsv4d")


def unit(name):
    with open(os.path.join(pc.SRC, "systemd", name)) as f:
        lines = [l.strip() for l in f if l.strip() and not l.startswith("#")]
    out = {}
    for l in lines:
        if "=" in l:
            k, v = l.split("=", 1)
            out.setdefault(k, []).append(v)
    return out


def seconds(v):
    m = re.fullmatch(r"(\d+)(min|s)?", v)
    return int(m.group(1)) * (60 if m.group(2) == "min" else 1)


def refused(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return False
    except OSError:
        return True


def socket_activation():
    sa = shutil.which("systemd-socket-activate")
    if not sa:
        print("note: systemd-socket-activate not installed: socket activation not tested")
        return
    model = pc.make_tiny(os.path.join(pc.BUILD, "dsv4"), os.path.join(pc.TMP, "model"))
    g, h, g2, h2 = (pc.free_port() for _ in range(4))
    run = os.path.join(pc.TMP, "run")
    os.makedirs(run, exist_ok=True)
    log = open(os.path.join(pc.TMP, "activated.log"), "w")
    p = subprocess.Popen([sa, "-l", f"127.0.0.1:{g}", "-l", f"127.0.0.1:{h}", "--fdname=grpc:http",
                          DSV4D, "--model", model, "--workers", "1", "--threads-per-worker", "1",
                          "--max-model-len", "512", "--max-seqs", "4", "--max-batch-tokens", "64",
                          "--runtime-dir", run, "--grpc-listen", f"127.0.0.1:{g2}",
                          "--http-listen", f"127.0.0.1:{h2}"], stdout=log, stderr=log)
    try:
        time.sleep(0.5)
        # the daemon starts on this first connection, which waits for it
        r = pc.run(["curl", "-sS", "-m", "60", "-o", "/dev/null", "-w", "%{http_code}",
                    f"http://127.0.0.1:{h}/health"])
        check(r.stdout == "200", f"socket-activated: the first connection waits and gets /health "
                                 f"200 ({r.stdout})")
        end = time.time() + 60
        code = ""
        while time.time() < end and code != "200":
            code = pc.run(["curl", "-sS", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}",
                           f"http://127.0.0.1:{h}/ready"]).stdout
            time.sleep(0.2)
        check(code == "200", "socket-activated: /ready 200 on the inherited HTTP socket")
        r = pc.run(["curl", "-sS", "-m", "10", "--http2-prior-knowledge", "-o", "/dev/null", "-w",
                    "%{http_code} %{http_version}", "-X", "POST", "-H",
                    "content-type: application/grpc", "--data-binary", "@/dev/null",
                    f"http://127.0.0.1:{g}/grpc.health.v1.Health/Check"])
        check(r.stdout == "200 2", f"socket-activated: gRPC (HTTP/2) on the inherited socket "
                                   f"({r.stdout})")
        check(refused(g2) and refused(h2), "the configured addresses are not bound")
        p.send_signal(signal.SIGTERM)
        try:
            rc = p.wait(timeout=40)
        except subprocess.TimeoutExpired:
            rc = None
        check(rc == 0, f"socket-activated dsv4d drains and exits 0 ({rc})")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        log.close()
        if pc.failures:
            with open(os.path.join(pc.TMP, "activated.log")) as f:
                print("--- activated dsv4d (tail)\n" + "".join(f.readlines()[-15:]))


def main():
    r = pc.run([DSV4D, "--help"])
    keys = set(re.findall(r"^\s+--([a-z0-9-]+)\s", r.stdout, re.M))
    keys = {k.replace("-", "_") for k in keys}
    check(len(keys) > 10, f"dsv4d --help lists {len(keys)} keys")
    with open(os.path.join(pc.SRC, "packaging", "man", "dsv4d.json.5")) as f:
        man = f.read()
    documented = set(re.findall(r"^\.BR (\w+) \"", man, re.M))
    check(keys <= documented, f"dsv4d.json(5) documents every key: missing {sorted(keys - documented)}")
    check(documented <= keys, f"dsv4d.json(5) documents no stale key: {sorted(documented - keys)}")

    shipped = os.path.join(pc.SRC, "packaging", "dsv4d.json")
    with open(shipped) as f:
        cfg = json.load(f)
    r = pc.run([DSV4D, "--check-config", "--config", shipped])
    check(r.returncode == 0 and "no model is set" in r.stderr,
          "the shipped dsv4d.json is valid and names no model")
    empty = os.path.join(pc.TMP, "empty.json")
    with open(empty, "w") as f:
        f.write("{}\n")
    defaults = json.loads(pc.run([DSV4D, "--check-config", "--config", empty]).stdout)
    differ = {k: v for k, v in cfg.items() if defaults.get(k) != v}
    check(not differ, f"the shipped dsv4d.json sets its keys to the defaults: {differ}")

    svc = unit("dsv4d.service")
    check(svc["Type"] == ["notify"] and svc["KillMode"] == ["mixed"], "Type=notify, KillMode=mixed")
    stop = seconds(svc["TimeoutStopSec"][0])
    check(stop >= defaults["drain_grace"] + defaults["drain_timeout"] + 30,
          f"TimeoutStopSec {stop} s >= drain_grace {defaults['drain_grace']} s + drain_timeout "
          f"{defaults['drain_timeout']} s + 30 s")
    cond = shlex.split(svc["ExecCondition"][0].replace("/usr/bin/dsv4d", DSV4D))
    check(cond[:2] == ["/bin/sh", "-c"] and "--check-config" in cond[2], "ExecCondition shape")
    # the condition reads the default config path; give it one through a
    # wrapper that adds --config
    wrapper = os.path.join(pc.TMP, "dsv4d-wrapper")
    for name, content, want in [("no model", {"model": ""}, 1),
                                ("a model", {"model": pc.TMP}, 0),
                                ("a broken file", {"wrokers": 1}, 0)]:
        path = os.path.join(pc.TMP, "cond.json")
        with open(path, "w") as f:
            json.dump(content, f)
        with open(wrapper, "w") as f:
            f.write(f"#!/bin/sh\nexec {DSV4D} --config {path} \"$@\"\n")
        os.chmod(wrapper, 0o755)
        c = [cond[0], cond[1], cond[2].replace(DSV4D, wrapper)]
        rc = subprocess.run(c, capture_output=True).returncode
        check(rc == want, f"ExecCondition with {name}: exit {rc} (want {want})")
    for name, fd in [("dsv4d-grpc.socket", "grpc"), ("dsv4d-http.socket", "http")]:
        s = unit(name)
        check(s.get("FileDescriptorName") == [fd] and s.get("Service") == ["dsv4d.service"] and
              len(s.get("ListenStream", [])) == 1, f"{name}: one ListenStream named {fd}")
    check(unit("dsv4d-grpc.socket")["ListenStream"][0] == defaults["grpc_listen"] and
          unit("dsv4d-http.socket")["ListenStream"][0] == defaults["http_listen"],
          "the socket units listen where the daemon would")

    socket_activation()

    hcfg = os.path.join(pc.SRC, "packaging", "haproxy", "haproxy.cfg")
    with open(hcfg) as f:
        text = "\n".join(l for l in f.read().splitlines() if not l.strip().startswith("#"))
    check("shutdown-sessions" not in text, "the HAProxy example keeps sessions on mark-down")
    check("/ready" in text and "proto h2" in text, "the HAProxy example checks /ready, speaks h2")
    if shutil.which("haproxy"):
        r = pc.run(["haproxy", "-c", "-f", hcfg])
        check(r.returncode == 0, "haproxy -c accepts the example")
    print(f"{pc.failures} failed")
    return 1 if pc.failures else 0


if __name__ == "__main__":
    sys.exit(main())
