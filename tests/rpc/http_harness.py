"""http_harness.py - starts tests/rpc/http_test_server (the HTTP front end
over the fake service) for the Python tests, and gives them small raw-socket
helpers.  Everything is bounded in time: every read has a deadline, and the
server is killed if it does not stop within ten seconds.

The server prints "PORT <n>" once listening and answers one line per
command written to its stdin (see the head of http_test_server.c).
"""

import os
import select
import socket
import subprocess
import sys
import time

BUILDDIR = os.environ.get("DSV4_BUILDDIR", ".")
SERVER = os.path.join(BUILDDIR, "tests", "rpc", "http_test_server")


class Server:
    def __init__(self, *args, timeout=10.0, pass_fds=()):
        if not os.access(SERVER, os.X_OK):
            print(f"{SERVER} not built", file=sys.stderr)
            sys.exit(1)
        self.proc = subprocess.Popen(
            [SERVER, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,
            text=True,
            bufsize=1,
            pass_fds=pass_fds,
        )
        line = self._readline(timeout)
        if not line.startswith("PORT "):
            self.kill()
            raise RuntimeError(f"server did not start: {line!r}")
        self.port = int(line.split()[1])
        self.base = f"http://127.0.0.1:{self.port}"

    def _readline(self, timeout):
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from the test server")
            r, _, _ = select.select([self.proc.stdout], [], [], left)
            if r:
                line = self.proc.stdout.readline()
                if not line:
                    raise RuntimeError("the test server exited")
                return line.strip()

    def cmd(self, line, timeout=10.0):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self._readline(timeout)

    def running(self):
        return int(self.cmd("running").split()[1])

    def wait_running(self, n, timeout=10.0):
        """Waits until the fake runs exactly n requests; returns the last count."""
        end = time.monotonic() + timeout
        count = self.running()
        while count != n and time.monotonic() < end:
            time.sleep(0.05)
            count = self.running()
        return count

    def close(self):
        """Stops the server; returns its exit status."""
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        try:
            return self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9

    def kill(self):
        self.proc.kill()
        self.proc.wait(timeout=10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        rc = self.close()
        if exc[0] is None and rc != 0:
            raise RuntimeError(f"the test server exited with {rc}")


def connect(port, timeout=5.0):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.settimeout(timeout)
    return s


def recv_all(s, timeout=5.0, limit=1 << 24):
    """Reads until the peer closes (or the deadline); returns the bytes."""
    end = time.monotonic() + timeout
    data = b""
    while len(data) < limit:
        left = end - time.monotonic()
        if left <= 0:
            break
        s.settimeout(left)
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


def recv_response(s, timeout=5.0, buf=b""):
    """Reads one response with a Content-Length body (buf: bytes already read);
    returns (status, headers, body, the bytes read past it)."""
    end = time.monotonic() + timeout
    data = buf
    while b"\r\n\r\n" not in data:
        left = end - time.monotonic()
        if left <= 0:
            raise TimeoutError("no response head")
        s.settimeout(left)
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response: {data!r}")
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for ln in lines[1:]:
        k, v = ln.split(":", 1)
        headers[k.strip().lower()] = v.strip()
    n = int(headers.get("content-length", "0"))
    while len(rest) < n:
        left = end - time.monotonic()
        if left <= 0:
            raise TimeoutError("no response body")
        s.settimeout(left)
        chunk = s.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, headers, rest[:n], rest[n:]


class Checks:
    """Counts checks and failures; ends the test with the right exit status."""

    def __init__(self):
        self.n = 0
        self.failed = 0

    def check(self, cond, what):
        self.n += 1
        if not cond:
            self.failed += 1
            print(f"FAIL: {what}", file=sys.stderr)
        return cond

    def done(self):
        print(f"{self.n} checks, {self.failed} failed", file=sys.stderr)
        sys.exit(1 if self.failed else 0)
