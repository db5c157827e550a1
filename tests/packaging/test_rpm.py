"""test_rpm.py - the RPM packages: built with rpmbuild, contents and scriptlets.

scripts/build-packages rpm builds dsv4d, dsv4-tools (and dsv4ctl when the
tree builds it) from packaging/rpm/dsv4d.spec.  Checks: the version is
configure.ac's, in the package and in the packaged binaries' --version;
`rpm -qlp` lists the daemon, the units, the preset, sysusers.d and
tmpfiles.d files, the configuration (%config(noreplace)) and the manuals in
the right packages; `rpm -qp --scripts` has the user created before the
files (%pre), presets applied on first install (%post), units disabled and
stopped on removal only (%preun), and the service restarted after an
upgrade, the sockets not (%postun).

On Debian (rpm from Debian's package) there are no systemd RPM macros:
build-packages loads packaging/rpm/macros.systemd-standin, and these checks
read the scriptlets for what the macros do, not for their exact text.
"""
import glob
import os
import shutil
import subprocess
import sys
import tarfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pkgcommon as pc  # noqa: E402
from pkgcommon import check  # noqa: E402

STANDIN = os.path.join(pc.SRC, "packaging", "rpm", "macros.systemd-standin")


def rpm_eval(expr):
    args = ["rpm"]
    if not subprocess.run(["rpm", "--eval", "%{?systemd_post:yes}"], capture_output=True,
                          text=True).stdout.strip():
        args += ["--load", STANDIN]
    return subprocess.run(args + ["--eval", expr], capture_output=True, text=True).stdout.strip()


def q(path, *args):
    r = pc.run(["rpm", "-qp"] + list(args) + [path])
    return r.stdout


def main():
    if not shutil.which("rpmbuild"):
        print("FAIL: rpmbuild is missing (Debian: the rpm package; scripts/install-deps installs it)")
        return 1
    out = os.path.join(pc.TMP, "rpms")
    t0 = time.time()
    r = pc.run([os.path.join(pc.SRC, "scripts", "build-packages"), "rpm", "--out", out])
    if not check(r.returncode == 0, f"scripts/build-packages rpm ({time.time() - t0:.0f} s)"):
        return 1
    ver = pc.version()
    rpms = {}
    for path in glob.glob(os.path.join(out, "*.rpm")):
        rpms[q(path, "--qf", "%{NAME}").strip()] = path
    check({"dsv4d", "dsv4-tools"} <= set(rpms), f"packages: {sorted(rpms)}")
    for name, path in rpms.items():
        v = q(path, "--qf", "%{VERSION}-%{RELEASE}").strip()
        check(v.startswith(f"{ver}-1"), f"{name} version {v} follows configure.ac ({ver})")

    unitdir, presetdir = rpm_eval("%{_unitdir}"), rpm_eval("%{_presetdir}")
    sysusers, tmpfiles = rpm_eval("%{_sysusersdir}"), rpm_eval("%{_tmpfilesdir}")
    files = set(q(rpms["dsv4d"], "-l").split())
    want = {"/usr/bin/dsv4d", f"{unitdir}/dsv4d.service", f"{unitdir}/dsv4d-grpc.socket",
            f"{unitdir}/dsv4d-http.socket", f"{presetdir}/80-dsv4d.preset",
            f"{sysusers}/dsv4d.conf", f"{tmpfiles}/dsv4d.conf", "/etc/dsv4d/dsv4d.json"}
    check(want <= files, f"dsv4d has {sorted(want - files)} too")
    check(any(f.startswith("/usr/share/man/man8/dsv4d.8") for f in files) and
          any(f.startswith("/usr/share/man/man5/dsv4d.json.5") for f in files),
          "dsv4d has dsv4d(8) and dsv4d.json(5)")
    check(any(f.startswith("/usr/share/doc/dsv4d") and f.endswith("/haproxy/haproxy.cfg")
              for f in files), "dsv4d has the HAProxy example")
    check(not any(f.startswith("/usr/bin/") and f != "/usr/bin/dsv4d" for f in files),
          "dsv4d has only the daemon in /usr/bin")
    tools = set(q(rpms["dsv4-tools"], "-l").split())
    check("/usr/bin/dsv4" in tools and any(f.startswith("/usr/share/man/man1/dsv4.1")
                                           for f in tools), "dsv4-tools has dsv4 and dsv4(1)")
    if "dsv4ctl" in rpms:
        check("/usr/bin/dsv4ctl" in q(rpms["dsv4ctl"], "-l").split(), "dsv4ctl has the client")
    flags = dict(l.rsplit(" ", 1) for l in q(rpms["dsv4d"], "--qf",
                                              "[%{FILENAMES} %{FILEFLAGS:fflags}\n]").splitlines()
                 if " " in l)
    check(flags.get("/etc/dsv4d/dsv4d.json") == "cn",
          f"/etc/dsv4d/dsv4d.json is %config(noreplace): {flags.get('/etc/dsv4d/dsv4d.json')!r}")
    reqs = q(rpms["dsv4d"], "--requires").split("\n")
    check(any(x.strip().startswith("systemd") for x in reqs), "dsv4d requires systemd (scriptlets)")

    # scriptlets, by section
    text = q(rpms["dsv4d"], "--scripts")
    sect, cur = {}, None
    for line in text.splitlines():
        if line.endswith("scriptlet (using /bin/sh):"):
            cur = line.split()[0]
            sect[cur] = ""
        elif cur:
            sect[cur] += line + "\n"
    pre, post = sect.get("preinstall", ""), sect.get("postinstall", "")
    preun, postun = sect.get("preuninstall", ""), sect.get("postuninstall", "")
    check(("systemd-sysusers" in pre or "useradd" in pre) and "dsv4d" in pre,
          "%pre creates the dsv4d user before the files land")
    check("preset" in post and "dsv4d.service" in post and "$1 -eq 1" in post,
          "%post applies the presets on first install")
    check("tmpfiles" in post and "dsv4d.conf" in post, "%post creates the tmpfiles.d directories")
    check("disable --now" in preun and "$1 -eq 0" in preun and "dsv4d-http.socket" in preun,
          "%preun disables and stops the service and sockets on removal only")
    restart = [l for l in postun.splitlines() if "try-restart" in l or "needs-restart" in l]
    check(restart and all("dsv4d.service" in l and ".socket" not in l for l in restart),
          f"%postun restarts the service after an upgrade, not the sockets: {restart}")
    # unpack the payload (rpm2archive: no cpio needed)
    unpack = os.path.join(pc.TMP, "unpacked")
    os.makedirs(unpack)
    copy = os.path.join(pc.TMP, "dsv4d.rpm")
    shutil.copy(rpms["dsv4d"], copy)
    pc.run(["rpm2archive", copy])
    with tarfile.open(copy + ".tgz") as tf:
        tf.extractall(unpack)
    with open(os.path.join(unpack, presetdir.lstrip("/"), "80-dsv4d.preset")) as f:
        lines = [l for l in f.read().splitlines() if l and not l.startswith("#")]
    check(lines == ["enable dsv4d.service", "disable dsv4d-grpc.socket", "disable dsv4d-http.socket"],
          f"the preset enables the service, not the sockets: {lines}")
    r = pc.run([os.path.join(unpack, "usr", "bin", "dsv4d"), "--version"])
    check(r.returncode == 0 and r.stdout.split("\n")[0] == f"dsv4d {ver}",
          f"the packaged dsv4d --version: {r.stdout.splitlines()[:1]}")
    print(f"{pc.failures} failed")
    return 1 if pc.failures else 0


if __name__ == "__main__":
    sys.exit(main())
