"""pkgcommon.py - helpers shared by the tests in tests/packaging/.

check() counts failures; free_port() picks a loopback port; the version
comes from AC_INIT in configure.ac; Notify is a fake NOTIFY_SOCKET (a unix
datagram socket that another user may write to); make_tiny() writes the
tiny checkpoint with dsv4 mkmodel into a directory every user can read.
"""
import os
import re
import socket
import stat
import subprocess
import time

SRC = os.environ.get("DSV4_SRCDIR", os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("DSV4_BUILDDIR", os.getcwd())
TMP = os.environ.get("DSV4_TMP", "/tmp")
SHARED = os.environ.get("DSV4_SHARED_DATA", os.path.join(SRC, "..", "shared", "data"))
TOKENIZER = os.path.join(SHARED, "tokenizer", "deepseek-v3-tokenizer.json")

failures = 0


def check(cond, what):
    global failures
    if cond:
        print("ok:", what, flush=True)
    else:
        failures += 1
        print("FAIL:", what, flush=True)
    return cond


def version():
    with open(os.path.join(SRC, "configure.ac")) as f:
        m = re.search(r"^AC_INIT\(\[dsv4d\],\s*\[([^\]]+)\]", f.read(), re.M)
    return m.group(1)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def run(cmd, **kw):
    """Runs cmd, prints it and its output when it fails; returns the CompletedProcess."""
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    r = subprocess.run(cmd, **kw)
    if r.returncode != 0:
        print(f"$ {' '.join(cmd)}  -> exit {r.returncode}")
        for stream in (r.stdout, r.stderr):
            if stream:
                print("\n".join(stream.splitlines()[-40:]))
    return r


def make_tiny(dsv4, parent):
    """The tiny NVFP4 checkpoint in parent/tiny; parent readable by everyone."""
    os.makedirs(parent, exist_ok=True)
    os.chmod(parent, 0o755)
    out = os.path.join(parent, "tiny")
    r = run([dsv4, "mkmodel", "--preset", "tiny", "--format", "nvfp4", "--tokenizer", TOKENIZER,
             "--out", out])
    if r.returncode != 0:
        raise RuntimeError("dsv4 mkmodel failed")
    for root, dirs, files in os.walk(parent):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)
        for f in files:
            os.chmod(os.path.join(root, f), 0o644)
    return out


class Notify:
    """A fake NOTIFY_SOCKET: collects (time, line) of every datagram."""

    def __init__(self, directory):
        os.makedirs(directory, exist_ok=True)
        os.chmod(directory, 0o755)
        self.path = os.path.join(directory, f"notify-{os.getpid()}-{id(self)}.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        os.chmod(self.path, stat.S_IRWXU | stat.S_IRWXG | stat.S_IRWXO)
        self.msgs = []

    def wait_for(self, line, timeout):
        """Reads until `line` arrives (True) or timeout (False)."""
        end = time.time() + timeout
        while time.time() < end:
            if any(l == line for _, l in self.msgs):
                return True
            self.sock.settimeout(max(0.01, end - time.time()))
            try:
                data = self.sock.recv(65536).decode()
            except socket.timeout:
                break
            now = time.time()
            self.msgs += [(now, l) for l in data.split("\n") if l]
        return any(l == line for _, l in self.msgs)

    def time_of(self, line):
        return next((t for t, l in self.msgs if l == line), None)

    def close(self):
        self.sock.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass
