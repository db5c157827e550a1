"""test_deb.py - the Debian packages, built, linted, installed, run, purged.

1. scripts/build-packages deb (dpkg-buildpackage -us -uc -b in a copy of the
   tree); lintian on the .changes must report nothing (every tag is fixed
   or overridden with a reason in packaging/debian/*.lintian-overrides);
   the packages' version is configure.ac's; the file lists are as expected.
2. dpkg -i: the dsv4d user, /run/dsv4d and /var/lib/dsv4d exist (sysusers,
   tmpfiles); the service is enabled, the sockets are not; the config is a
   conffile; systemd-analyze verify passes on the installed units; the
   installed dsv4d --version and dsv4 --version print configure.ac's
   version; dsv4d --check-config accepts the installed configuration, which
   names no model, and the unit's ExecCondition then skips the start.
3. With "model" set in /etc/dsv4d/dsv4d.json the ExecCondition lets the
   start through; the installed dsv4d runs as the dsv4d user (setpriv, as
   the unit would) in the foreground on the tiny checkpoint (written by the
   installed dsv4) with a fake NOTIFY_SOCKET: READY=1, one chat answer
   (dsv4ctl when installed, else curl), SIGTERM, STOPPING=1, exit 0.
4. dpkg --purge (also in a finally, whatever failed): nothing left but the
   dsv4d user and group, which Debian policy keeps.

Needs root and dpkg (skips, 77, on a machine without dpkg-buildpackage, or
that is not root, or where a dsv4d package is already installed: it would
not touch that).  Serialised with other runs by a lock file.
"""
import fcntl
import glob
import json
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pkgcommon as pc  # noqa: E402
from pkgcommon import check  # noqa: E402

PKGS = ["dsv4d", "dsv4-tools", "dsv4ctl"]
LOCK = "/run/lock/dsv4d-packaging-test.lock"
# where the build put the units (Debian 12: /lib/systemd/system)
UNITDIR = subprocess.run(["pkg-config", "--variable=systemdsystemunitdir", "systemd"],
                         capture_output=True, text=True).stdout.strip() or "/lib/systemd/system"
UNITS = ["dsv4d.service", "dsv4d-grpc.socket", "dsv4d-http.socket"]
DSV4D_FILES = {
    "/etc/dsv4d/dsv4d.json", "/usr/bin/dsv4d", f"{UNITDIR}/dsv4d.service",
    f"{UNITDIR}/dsv4d-grpc.socket", f"{UNITDIR}/dsv4d-http.socket",
    "/usr/lib/sysusers.d/dsv4d.conf", "/usr/lib/tmpfiles.d/dsv4d.conf",
    "/usr/share/man/man8/dsv4d.8.gz", "/usr/share/man/man5/dsv4d.json.5.gz",
    "/usr/share/doc/dsv4d/examples/haproxy.cfg",
    "/usr/share/lintian/overrides/dsv4d",
}
# as the unit runs it: the dsv4d user and its groups, by exec (no
# intermediate process, so signals and the exit status are dsv4d's own)
AS_DSV4D = ["setpriv", "--reuid=dsv4d", "--regid=dsv4d", "--init-groups", "--"]
TOOLS_FILES = {"/usr/bin/dsv4", "/usr/share/man/man1/dsv4.1.gz"}


def skip(why):
    print(f"skipped: {why}")
    sys.exit(77)


def installed(pkg):
    r = subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Status}", pkg],
                       capture_output=True, text=True)
    return r.returncode == 0 and r.stdout.strip() not in ("", "not-installed")


def dpkg(args):
    """dpkg, waiting up to 5 minutes while another dpkg/apt holds its lock."""
    end = time.time() + 300
    while True:
        r = subprocess.run(["dpkg"] + args, capture_output=True, text=True,
                           env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        if r.returncode == 0 or "lock" not in r.stderr or time.time() > end:
            if r.returncode:
                print(f"$ dpkg {' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}")
            return r
        time.sleep(3)


def deb_files(path):
    tar = subprocess.run(["dpkg-deb", "--fsys-tarfile", path], capture_output=True).stdout
    out = subprocess.run(["tar", "-tf", "-"], input=tar, capture_output=True).stdout.decode()
    return {p[1:].rstrip("/") for p in out.split("\n") if p not in ("", "./")}


def leftovers():
    """Files of ours that a purge must remove (the user and group stay)."""
    paths = ["/etc/dsv4d", "/usr/bin/dsv4d", "/usr/bin/dsv4", "/usr/bin/dsv4ctl",
             "/run/dsv4d", "/var/lib/dsv4d", "/var/cache/dsv4d", "/usr/share/doc/dsv4d",
             "/usr/lib/sysusers.d/dsv4d.conf", "/usr/lib/tmpfiles.d/dsv4d.conf"]
    paths += [f"{UNITDIR}/{u}" for u in UNITS]
    left = [p for p in paths if os.path.lexists(p)]
    for pat in ["/etc/systemd/system/*/dsv4d*", "/var/lib/systemd/deb-systemd-helper-*/*dsv4d*",
                "/var/lib/systemd/deb-systemd-helper-*/*/dsv4d*"]:
        left += glob.glob(pat)
    return left


def run_daemon(model_parent):
    """The installed dsv4d as the dsv4d user, in the foreground, on tiny."""
    notify = pc.Notify(os.path.join(model_parent, "notify"))
    gp, hp = pc.free_port(), pc.free_port()
    env = dict(os.environ, NOTIFY_SOCKET=notify.path)
    p = subprocess.Popen(AS_DSV4D + ["/usr/bin/dsv4d", "--workers", "1",
                          "--threads-per-worker", "1", "--max-model-len", "512", "--max-seqs",
                          "4", "--max-batch-tokens", "64", "--grpc-listen", f"127.0.0.1:{gp}",
                          "--http-listen", f"127.0.0.1:{hp}"],
                         env=env, stderr=subprocess.PIPE, text=True)
    try:
        ready = notify.wait_for("READY=1", 90)
        check(ready, "the installed dsv4d, run as dsv4d from the packaged config, sends READY=1")
        if ready:
            ctl = shutil.which("dsv4ctl")
            if ctl:
                r = pc.run([ctl, "--target", f"127.0.0.1:{gp}", "chat", "Hello", "--max-tokens",
                            "8"], timeout=60)
                check(r.returncode == 0 and r.stdout.strip() != "",
                      f"dsv4ctl chat through gRPC answers: {r.stdout.strip()[:60]!r}")
            else:
                body = json.dumps({"messages": [{"role": "user", "content": "Hello"}],
                                   "max_tokens": 8, "temperature": 0})
                r = pc.run(["curl", "-sS", "-f", "-m", "60", "-H", "Content-Type: application/json",
                            "-d", body, f"http://127.0.0.1:{hp}/v1/chat/completions"])
                ok = r.returncode == 0
                if ok:
                    ans = json.loads(r.stdout)
                    ok = ans["choices"][0]["message"] is not None and ans["usage"][
                        "completion_tokens"] > 0
                check(ok, "a chat completion over HTTP (curl; dsv4ctl is not installed)")
        p.send_signal(signal.SIGTERM)
        check(notify.wait_for("STOPPING=1", 30), "STOPPING=1 on SIGTERM")
        try:
            rc = p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            rc = None
        check(rc == 0, f"exit 0 after the drain (got {rc})")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        err = p.stderr.read()
        if failures_now():
            print("dsv4d stderr (tail):\n" + "\n".join(err.splitlines()[-20:]))
        notify.close()


def failures_now():
    return pc.failures


def main():
    if not shutil.which("dpkg"):
        skip("not a Debian system (no dpkg): the .deb cannot be installed here")
    if os.geteuid() != 0:
        skip("installing a package needs root")
    for tool in ["dpkg-buildpackage", "dh", "lintian", "systemd-analyze", "curl", "setpriv"]:
        if not shutil.which(tool):
            print(f"FAIL: {tool} is missing (scripts/install-deps installs it)")
            return 1
    os.makedirs(os.path.dirname(LOCK), exist_ok=True)
    lockf = open(LOCK, "w")
    fcntl.flock(lockf, fcntl.LOCK_EX)
    if any(installed(p) for p in PKGS):
        skip("a dsv4d package is already installed on this machine; not touching it")

    out = os.path.join(pc.TMP, "debs")
    t0 = time.time()
    r = pc.run([os.path.join(pc.SRC, "scripts", "build-packages"), "deb", "--out", out])
    if not check(r.returncode == 0, f"scripts/build-packages deb ({time.time() - t0:.0f} s)"):
        return 1
    ver = pc.version()
    debs = {os.path.basename(d).split("_")[0]: d for d in glob.glob(os.path.join(out, "*.deb"))
            if "-dbgsym_" not in d}
    check({"dsv4d", "dsv4-tools"} <= set(debs), f"packages built: {sorted(debs)}")
    for name, path in debs.items():
        v = pc.run(["dpkg-deb", "-f", path, "Version"]).stdout.strip()
        check(v == f"{ver}-1", f"{name} version {v} follows configure.ac ({ver})")
    changes = glob.glob(os.path.join(out, "*.changes"))
    r = pc.run(["lintian", "--pedantic", "-I", "--fail-on", "error,warning,info,pedantic"] + changes)
    tags = [l for l in r.stdout.splitlines() if l[:2] in ("E:", "W:", "I:", "P:", "X:")]
    check(r.returncode == 0 and not tags, f"lintian --pedantic -I: no tags {tags}")

    files = deb_files(debs["dsv4d"])
    check(DSV4D_FILES <= files, f"dsv4d ships {sorted(DSV4D_FILES - files)} too")
    check(any(f.startswith("/usr/share/doc/dsv4d/README.systemd.md") for f in files),
          "dsv4d ships systemd/README.md as README.systemd.md")
    check(not any(f.startswith("/usr/bin/") and f != "/usr/bin/dsv4d" for f in files),
          "dsv4d ships only the daemon in /usr/bin")
    check(TOOLS_FILES <= deb_files(debs["dsv4-tools"]), "dsv4-tools ships dsv4 and its manual")
    if "dsv4ctl" in debs:
        check("/usr/bin/dsv4ctl" in deb_files(debs["dsv4ctl"]), "dsv4ctl ships the client")
    ctrl = subprocess.run(["dpkg-deb", "--ctrl-tarfile", debs["dsv4d"]], capture_output=True).stdout
    conff = subprocess.run(["tar", "-xOf", "-", "./conffiles"], input=ctrl,
                           capture_output=True).stdout.decode().split()
    check(conff == ["/etc/dsv4d/dsv4d.json"], f"conffiles: {conff}")

    model_parent = tempfile.mkdtemp(prefix="dsv4-deb-test-", dir="/tmp")
    try:
        r = dpkg(["-i"] + sorted(debs.values()))
        if not check(r.returncode == 0, "dpkg -i"):
            return 1
        check(all(installed(p) for p in debs), "installed")
        try:
            pw = pwd.getpwnam("dsv4d")
            check(pw.pw_dir == "/var/lib/dsv4d" and pw.pw_uid < 1000,
                  f"the dsv4d system user: uid {pw.pw_uid}, home {pw.pw_dir}, shell {pw.pw_shell}")
        except KeyError:
            check(False, "the dsv4d system user exists")
            return 1
        for d in ["/run/dsv4d", "/var/lib/dsv4d"]:
            st = os.stat(d) if os.path.isdir(d) else None
            check(st is not None and st.st_uid == pw.pw_uid and (st.st_mode & 0o777) == 0o750,
                  f"{d}: 0750 dsv4d (tmpfiles.d)")
        check(os.path.islink("/etc/systemd/system/multi-user.target.wants/dsv4d.service"),
              "dsv4d.service enabled at install")
        check(not glob.glob("/etc/systemd/system/sockets.target.wants/dsv4d*"),
              "the socket units are not enabled")
        r = pc.run(["systemd-analyze", "verify", "--man=no"] + [f"{UNITDIR}/{u}" for u in UNITS])
        check(r.returncode == 0 and not (r.stdout + r.stderr).strip(),
              f"systemd-analyze verify on the installed units {(r.stdout + r.stderr).strip()!r}")

        r = pc.run(["/usr/bin/dsv4d", "--version"])
        check(r.returncode == 0 and r.stdout.split("\n")[0] == f"dsv4d {ver}",
              f"installed dsv4d --version: {r.stdout.splitlines()[:1]}")
        r = pc.run(["/usr/bin/dsv4", "--version"])
        check(r.returncode == 0 and r.stdout.split("\n")[0] == f"dsv4 {ver}",
              f"installed dsv4 --version: {r.stdout.splitlines()[:1]}")
        if os.path.exists("/usr/bin/dsv4ctl"):
            r = pc.run(["/usr/bin/dsv4ctl", "--version"])
            check(r.returncode == 0 and f"{ver}" in r.stdout.split("\n")[0],
                  f"installed dsv4ctl --version: {r.stdout.splitlines()[:1]}")
        r = pc.run(AS_DSV4D + ["/usr/bin/dsv4d", "--check-config"])
        check(r.returncode == 0 and "no model is set" in r.stderr,
              "dsv4d --check-config (as dsv4d) accepts the installed configuration: no model")

        with open(f"{UNITDIR}/dsv4d.service") as f:
            cond = [l.split("=", 1)[1] for l in f.read().splitlines()
                    if l.startswith("ExecCondition=")]
        check(len(cond) == 1, "the unit has one ExecCondition")
        cond_cmd = AS_DSV4D + shlex.split(cond[0])
        r = subprocess.run(cond_cmd, capture_output=True)
        check(r.returncode == 1, f"no model: the ExecCondition skips the start (exit {r.returncode})")

        model = pc.make_tiny("/usr/bin/dsv4", model_parent)
        with open("/etc/dsv4d/dsv4d.json") as f:
            cfg = json.load(f)
        cfg["model"] = model
        with open("/etc/dsv4d/dsv4d.json", "w") as f:
            json.dump(cfg, f, indent=2)
        r = subprocess.run(cond_cmd, capture_output=True)
        check(r.returncode == 0, f"model set: the ExecCondition lets it start (exit {r.returncode})")
        cfg["wrokers"] = 2
        with open("/etc/dsv4d/dsv4d.json", "w") as f:
            json.dump(cfg, f, indent=2)
        r = subprocess.run(cond_cmd, capture_output=True)
        check(r.returncode == 0, "a bad configuration is not skipped: dsv4d itself reports it")
        del cfg["wrokers"]
        with open("/etc/dsv4d/dsv4d.json", "w") as f:
            json.dump(cfg, f, indent=2)
        run_daemon(model_parent)
    finally:
        r = dpkg(["--purge"] + [p for p in PKGS if installed(p)])
        check(r.returncode == 0, "dpkg --purge")
        shutil.rmtree(model_parent, ignore_errors=True)
    check(not any(installed(p) for p in PKGS), "nothing installed after the purge")
    left = leftovers()
    check(not left, f"nothing left after the purge: {left}")
    try:
        pwd.getpwnam("dsv4d")
        print("note: the dsv4d user and group stay after the purge (Debian policy)")
    except KeyError:
        pass
    print(f"{pc.failures} failed")
    return 1 if pc.failures else 0


if __name__ == "__main__":
    sys.exit(main())
