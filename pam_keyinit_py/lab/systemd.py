"""A real systemd (Debian 12's, 252) as PID 1 of its own PID and mount namespace, for the tests and the demo.

These machines do not boot systemd, and systemd-nspawn fails on their cgroup layout, so a container
is put together from the pieces that do work (DESIGN.md, "Booting a real systemd here"):

1. a minbase Debian root filesystem from ``debootstrap``, built once by ``scripts/systemd-rootfs.sh``
   and cached under ``/var/cache/pam-keyinit-py``;
2. a throwaway overlay on top of it (``mount -t overlay``), so every container starts from the same
   clean tree and the cache is never written to;
3. ``unshare --pid --mount --uts --ipc --fork``; inside, the overlay is mounted and ``pivot_root``
   makes it the root of the new mount namespace.  A plain chroot is not enough: the root must be
   a mount point of its own or every sandboxed unit (ProtectSystem=, PrivateTmp=, ...) fails with
   226/NAMESPACE when systemd builds its per-unit mount namespace;
4. ``exec /lib/systemd/systemd --system`` with ``container=other`` as PID 1;
5. commands run inside through ``nsenter -t PID -m -p -u -i -r -w``.

Everything the container mounts lives in its private mount namespace, so it vanishes with its last
process: :meth:`SystemdContainer.stop` powers systemd off (SIGRTMIN+4), kills the namespace's init
if it does not go, and removes the overlay's directories.  Kernel keyrings are not namespaced (a
uid's keys are the same inside and out) and the network namespace is the host's, so a KDC on
127.0.0.1 is reachable from inside.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROOTFS_SH = REPO / "scripts" / "systemd-rootfs.sh"
CACHE = Path(os.environ.get("PKK_SYSTEMD_CACHE", "/var/cache/pam-keyinit-py"))
#: Where the container sees this checkout (read-only) and the wheelhouse for an offline pip.
SRC_IN = "/mnt/pkk-src"
WHEELS_IN = "/mnt/pkk-wheels"
PATH_IN = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class SystemdError(RuntimeError):
    """The container could not be built, booted or entered; the message says which step."""


def available() -> str | None:
    """None when this host can build and boot the container, else what is missing."""
    if os.geteuid() != 0:
        return "needs root (namespaces, mounts)"
    for tool in ("debootstrap", "unshare", "nsenter", "pivot_root"):
        if not shutil.which(tool) and not os.access(f"/usr/sbin/{tool}", os.X_OK):
            return f"{tool} is not installed (make setup)"
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "the kernel has no overlay filesystem"
    return None


def rootfs(cache: Path = CACHE) -> Path:
    """The cached debootstrap tree (built on first use, about a minute); see scripts/systemd-rootfs.sh."""
    proc = subprocess.run(["/bin/bash", str(ROOTFS_SH), str(cache)], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise SystemdError(f"systemd-rootfs.sh: {proc.stderr.strip()}")
    return Path(proc.stdout.strip().splitlines()[-1])


def wheelhouse(cache: Path = CACHE, source: Path = REPO) -> Path:
    """Wheels of the package's build and run dependencies, made on this host with pip (cached).

    The container is offline as far as pip is concerned (``PIP_NO_INDEX``): ``keyinit install``
    inside builds the package itself from source, and takes cffi, pykrb5, python-gssapi, keyring
    and setuptools from here.  Host and container are both Debian 12 with the same
    /usr/bin/python3 and libkrb5, so wheels built here fit there.
    """
    meta = tomllib.loads((source / "pyproject.toml").read_text())
    reqs = sorted(set(meta["build-system"]["requires"]) | set(meta["project"]["dependencies"]))
    key = hashlib.sha256(f"{sys.version_info[:2]} {reqs}".encode()).hexdigest()[:12]
    out = cache / f"wheels-{key}"
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "wheels.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / ".complete").exists():
            tmp = cache / f"wheels-{key}.building"
            shutil.rmtree(tmp, ignore_errors=True)
            proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check",
                                   "--wheel-dir", str(tmp), "pip", *reqs],
                                  capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                shutil.rmtree(tmp, ignore_errors=True)
                raise SystemdError(f"pip wheel: {proc.stderr.strip()[-2000:]}")
            (tmp / ".complete").touch()
            shutil.rmtree(out, ignore_errors=True)
            tmp.rename(out)
    return out


# Each hierarchy the caller belongs to (also v1 ones this host does not mount, which systemd
# mounts inside) gets a child cgroup PKK_NAME that this shell joins before the cgroup namespace is
# made: systemd then sees it as its root, builds init.scope and system.slice below it, and neither
# leaves its caller's cgroups nor collides with another container.  `clean` removes those trees.
_CGROUPS = r"""
set -eu
mkdir -p "$PKK_CG"
while IFS=: read -r id ctrl path; do
    d=$PKK_CG/$id
    mkdir -p "$d"
    if [ -z "$ctrl" ]; then mount -t cgroup2 none "$d"
    elif [ "${ctrl#name=}" != "$ctrl" ]; then mount -t cgroup -o "none,$ctrl" cgroup "$d"
    else mount -t cgroup -o "$ctrl" cgroup "$d"; fi
    sub=$d${path%/}/$PKK_NAME
    if [ "$1" = join ]; then
        mkdir -p "$sub"
        # A new v1 cpuset starts with no CPUs and no memory nodes; give it its parent's.
        for f in cpuset.cpus cpuset.mems; do
            [ ! -f "$sub/$f" ] || cat "$sub/../$f" > "$sub/$f"
        done
        echo $$ > "$sub/cgroup.procs"
    elif [ -d "$sub" ]; then
        find "$sub" -depth -type d -exec rmdir {} + 2>/dev/null || true
    fi
    umount "$d"
done < /proc/self/cgroup
"""

_BOOT = r"""
set -eu
mount -t overlay overlay -o "lowerdir=$PKK_LOWER,upperdir=$PKK_UPPER,workdir=$PKK_WORK" "$PKK_MERGED"
while read -r src dst; do
    [ -n "$src" ] || continue
    mkdir -p "$PKK_MERGED$dst"
    mount --bind "$src" "$PKK_MERGED$dst"
    mount -o remount,bind,ro "$PKK_MERGED$dst"
done <<EOF
$PKK_BINDS
EOF
cd "$PKK_MERGED"
mkdir -p .pkk-oldroot
pivot_root . .pkk-oldroot
exec chroot . /bin/sh -c 'mount -t proc proc /proc && umount -l /.pkk-oldroot && rmdir /.pkk-oldroot &&
    exec env -i container=other /lib/systemd/systemd --system'
"""


class SystemdContainer:
    """One booted systemd; ``with SystemdContainer() as c: c.run([...])``.

    ``binds`` maps host directories to paths inside (mounted read-only before pivot_root).
    """

    def __init__(self, binds: dict[str, str] | None = None, cache: Path = CACHE) -> None:
        self.cache = cache
        self.binds = dict(binds or {})
        self.dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid = 0
        self.boot_seconds = 0.0
        self.state = ""
        self._env: dict[str, str] = {}

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self, timeout: float = 120.0) -> float:
        """Boot systemd and wait until ``systemctl is-system-running --wait`` returns; the seconds it took."""
        lower = rootfs(self.cache)
        self.dir = Path(tempfile.mkdtemp(prefix="pkk-systemd-", dir="/var/tmp"))
        for sub in ("upper", "work", "merged"):
            (self.dir / sub).mkdir()
        upper = self.dir / "upper"
        (upper / "etc").mkdir()
        # The host's names, so host/<canonical name> (TGT validation) resolves the same inside.
        for name in ("hostname", "hosts"):
            if Path("/etc", name).exists():
                shutil.copy2(Path("/etc", name), upper / "etc" / name)
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "PKK_LOWER": str(lower), "PKK_UPPER": str(upper), "PKK_WORK": str(self.dir / "work"),
            "PKK_MERGED": str(self.dir / "merged"),
            "PKK_BINDS": "\n".join(f"{src} {dst}" for src, dst in self.binds.items()),
            "PKK_BOOT": _BOOT, "PKK_CG": str(self.dir / "cg"), "PKK_NAME": self.dir.name,
        }
        self._env = env
        console = open(self.dir / "console.log", "wb")
        t0 = time.monotonic()
        try:
            # --kill-child: should this process die, the namespace's init gets SIGKILL, and with it
            # every process and mount of the container.
            self.proc = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c",
                 _CGROUPS + 'exec unshare --cgroup --pid --uts --ipc --kill-child=SIGKILL'
                 ' /bin/sh -c "$PKK_BOOT"',
                 "cgroups", "join"],
                env=env, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT)
        finally:
            console.close()
        try:
            self.pid = self._init_pid(timeout=10)
            deadline = t0 + timeout
            while True:
                res = self.run(["systemctl", "is-system-running", "--wait"], check=False,
                               timeout=max(1.0, deadline - time.monotonic()))
                self.state = res.stdout.strip()
                if self.state in ("running", "degraded"):
                    break
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise SystemdError(f"systemd did not boot (state {self.state!r}): "
                                       f"{self.console()[-2000:]}")
                time.sleep(0.2)
        except BaseException:
            self.stop()
            raise
        self.boot_seconds = time.monotonic() - t0
        return self.boot_seconds

    def _init_pid(self, timeout: float) -> int:
        """The host pid of the namespace's PID 1 (unshare's child), once it runs systemd."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemdError(f"container exited ({self.proc.returncode}): {self.console()[-2000:]}")
            try:
                kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
                if kids and os.readlink(f"/proc/{kids[0]}/exe").endswith("/systemd"):
                    return int(kids[0])
            except OSError:
                pass
            time.sleep(0.05)
        raise SystemdError(f"systemd did not start: {self.console()[-2000:]}")

    def stop(self, timeout: float = 30.0) -> None:
        """Power systemd off (SIGRTMIN+4), SIGKILL the namespace's init if it lingers, remove the overlay."""
        if self.proc is not None and self.proc.poll() is None:
            if self.pid:
                try:
                    os.kill(self.pid, signal.SIGRTMIN + 4)  # systemd: start poweroff.target
                except ProcessLookupError:
                    pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                if self.pid:
                    try:
                        os.kill(self.pid, signal.SIGKILL)  # takes the whole PID namespace with it
                    except ProcessLookupError:
                        pass
                self.proc.kill()
                self.proc.wait(10)
        if self.dir is not None:
            # systemd leaves its (empty) cgroups behind when it exits; remove the whole subtree.
            subprocess.run(["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", _CGROUPS,
                            "cgroups", "clean"], env=self._env, capture_output=True, check=False)
            # The mounts were private to the namespace, which is gone with its last process.
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
        self.pid = 0

    def __enter__(self) -> SystemdContainer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- inside ----------------------------------------------------------------------------------
    def run(self, argv: list[str], *, input: str | None = None, check: bool = True,
            timeout: float | None = 120,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside (all of the container's namespaces, its root) with a clean environment."""
        if not self.pid:
            raise SystemdError("container not running")
        base = {"PATH": PATH_IN, "LANG": "C.UTF-8", "HOME": "/root"}
        base.update(env or {})
        cmd = ["nsenter", "-t", str(self.pid), "-m", "-p", "-u", "-i", "-r", "-w",
               "env", "-i", *(f"{k}={v}" for k, v in base.items()), *argv]
        res = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False)
        if check and res.returncode != 0:
            raise SystemdError(f"{shlex.join(argv)} exited {res.returncode}:\n"
                               f"{res.stdout[-3000:]}{res.stderr[-3000:]}")
        return res

    def path(self, inside: str) -> Path:
        """The host's view of a path inside the container (through /proc/PID/root)."""
        return Path(f"/proc/{self.pid}/root") / inside.lstrip("/")

    def write(self, inside: str, data: str | bytes, mode: int = 0o644) -> None:
        """Create ``inside`` (and its directories) with ``data`` and ``mode``, owned by root."""
        target = self.path(inside)
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, str):
            data = data.encode()
        target.write_bytes(data)
        os.chmod(target, mode)

    def console(self) -> str:
        """What systemd printed on its console (boot messages, failures)."""
        try:
            return (self.dir / "console.log").read_text(errors="replace") if self.dir else ""
        except OSError:
            return ""

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """``systemctl show -p ...`` as a dict."""
        out = self.run(["systemctl", "show", unit, *(f"-p{p}" for p in props)]).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def install_project(self, source_in: str = SRC_IN, wheels_in: str = WHEELS_IN,
                        prefix: str = "/opt/pam-keyinit-py") -> subprocess.CompletedProcess[str]:
        """``keyinit install`` inside, as a user runs it from a checkout (pip offline: wheels bound in)."""
        return self.run(["/usr/bin/python3", "-B", "-m", "pam_keyinit_py.cli", "install", "--prefix", prefix,
                         "--source", source_in, "-q"],
                        env={"PYTHONPATH": source_in, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": wheels_in,
                             "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_CACHE_DIR": "1"},
                        timeout=600)
