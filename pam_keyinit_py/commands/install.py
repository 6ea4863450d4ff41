"""``keyinit install`` / ``keyinit uninstall``: what ``make install`` / ``make uninstall`` do.

install:
  1. ``/usr/bin/python3 -m venv PREFIX`` (pam_python.so embeds /usr/bin/python3, so the package and
     its cffi extension must be built for that interpreter);
  2. a normal (non-editable) ``pip install`` of the source tree into it;
  3. an import check of the hook with that venv's interpreter;
  4. the pam_python shim ``/lib/security/pam_keyinit_py.py``, which puts PREFIX's site-packages
     first on sys.path and exposes the hook's ``pam_sm_*``;
  5. the service and the files around it: the console scripts linked into /usr/local/bin, the
     manual pages (MAN_PAGES) into /usr/local/share/man, the
     systemd unit ``keyinit-ticketd.service`` (ExecStart pointing into PREFIX), tmpfiles for
     /run/keyinit, the pam-auth-update profiles ``keyinit`` (Additional: behind pam_unix) and
     ``keyinit-krb5`` (Primary: the Kerberos login; enable one with ``pam-auth-update --enable``),
     and ``/etc/keyinit/ticketd.toml`` with the documented
     defaults unless one is already there.  The sysctl and krb5.conf.d snippets are host policy:
     they are copied to /usr/share/pam-keyinit-py/ for the admin to adopt, not activated.

Every path written in step 5 is listed in PREFIX's marker file, so uninstall removes exactly
those (and the config only while it still equals the shipped default).

``--root DIR`` stages everything under DIR (like DESTDIR): the venv lands in DIR/PREFIX and the shim
in DIR/lib/security, while the shim still names PREFIX.  uninstall removes the shim and the venv, and
only a venv that install marked as its own.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ..pam.shim import SHIM_PATH, render, site_packages

DEFAULT_PREFIX = "/opt/pam-keyinit-py"
SYSTEM_PYTHON = "/usr/bin/python3"
MARKER = ".pam-keyinit-py-install"
SCRIPTS = ("keyinit", "keyinit-ticketd", "pykeyctl", "docker-credential-keyctl")
UNIT = "keyinit-ticketd.service"
CONFIG = Path("/etc/keyinit/ticketd.toml")
SHARE = Path("/usr/share/pam-keyinit-py")
#: The manual pages under man/ (keyinit.1 generated from the argparse parser, scripts/manpages.py),
#: installed where man-db looks for pages of programs in /usr/local/bin.
MAN_PAGES = ("keyinit.1", "pykeyctl.1", "ticketd.toml.5", "keyinit-ticketd.8", "pam_keyinit_py.8")
MAN_DIR = Path("/usr/local/share/man")


def system_files(prefix: str) -> list[tuple[str, Path, int]]:
    """(source under etc/, installed path, mode) of the files step 5 copies."""
    share = SHARE
    return [
        (f"systemd/{UNIT}", Path("/etc/systemd/system") / UNIT, 0o644),
        ("tmpfiles.d/keyinit.conf", Path("/usr/lib/tmpfiles.d/keyinit.conf"), 0o644),
        ("pam-configs/keyinit", Path("/usr/share/pam-configs/keyinit"), 0o644),
        ("pam-configs/keyinit-krb5", Path("/usr/share/pam-configs/keyinit-krb5"), 0o644),
        ("sysctl.d/60-keyinit-keys.conf", share / "sysctl.d/60-keyinit-keys.conf", 0o644),
        ("krb5.conf.d/keyinit-ccache.conf", share / "krb5.conf.d/keyinit-ccache.conf", 0o644),
        ("pam.d/sshd.example", share / "pam.d/sshd.example", 0o644),
        ("pam.d/login.example", share / "pam.d/login.example", 0o644),
    ]


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".keyinit-tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def install_system_files(prefix: str, root: str, source: Path) -> list[Path]:
    """Step 5: scripts, unit, tmpfiles, profile, config and reference snippets; return what was written."""
    etc = source / "etc"
    written: list[Path] = []
    for name in SCRIPTS:
        link = _under(root, Path("/usr/local/bin") / name)
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(Path(prefix) / "bin" / name)
        written.append(Path("/usr/local/bin") / name)
    for src, dest, mode in system_files(prefix):
        data = (etc / src).read_bytes()
        if src.endswith(UNIT):
            data = data.replace(b"/usr/local/bin/keyinit-ticketd", f"{prefix}/bin/keyinit-ticketd".encode())
        _write_atomic(_under(root, dest), data, mode)
        written.append(dest)
    for page in MAN_PAGES:
        dest = MAN_DIR / f"man{page.rsplit('.', 1)[1]}" / page
        _write_atomic(_under(root, dest), (source / "man" / page).read_bytes(), 0o644)
        written.append(dest)
    config = _under(root, CONFIG)
    if not config.exists():  # never overwrite an admin's configuration
        _write_atomic(config, (etc / "keyinit/ticketd.toml").read_bytes(), 0o644)
        written.append(CONFIG)
    if (not root or root == "/") and Path("/run/systemd/system").is_dir():
        subprocess.run(["systemctl", "daemon-reload"], check=False)
    return written


def _under(root: str, path: str | Path) -> Path:
    """``path`` (absolute) staged under ``root`` ("/" or "" means the live system)."""
    path = Path(path)
    if not root or root == "/":
        return path
    return Path(root) / path.relative_to("/")


def _source_default() -> Path:
    return Path(__file__).resolve().parents[2]


def _check_prefix(prefix: str) -> str | None:
    if not prefix.startswith("/") or prefix.rstrip("/") in ("", "/usr", "/usr/local", "/opt", "/etc", "/lib"):
        return f"refusing prefix {prefix!r}: give a dedicated absolute directory such as {DEFAULT_PREFIX}"
    return None


def install(prefix: str, root: str = "", source: Path | None = None, python: str = SYSTEM_PYTHON,
            shim_path: Path = SHIM_PATH, quiet: bool = False) -> int:
    """Create the venv, pip-install the package, write the shim.  Returns an exit code."""
    err = _check_prefix(prefix)
    if err:
        print(f"keyinit install: {err}", file=sys.stderr)
        return 2
    source = source or _source_default()
    if not (source / "pyproject.toml").exists():
        print(f"keyinit install: {source} is not a pam-keyinit-py source tree", file=sys.stderr)
        return 2
    venv = _under(root, prefix)
    marker = venv / MARKER
    if venv.exists() and any(venv.iterdir()) and not marker.exists():
        print(f"keyinit install: {venv} exists and was not made by keyinit install; not touching it",
              file=sys.stderr)
        return 1
    out = subprocess.DEVNULL if quiet else None

    def step(argv: list[str]) -> bool:
        res = subprocess.run(argv, stdout=out, check=False)
        if res.returncode != 0:
            print(f"keyinit install: failed ({res.returncode}): {' '.join(argv)}", file=sys.stderr)
        return res.returncode == 0

    if not (venv / "bin" / "python").exists():
        if not step([python, "-m", "venv", str(venv)]):
            return 1
    marker.write_text("made by `keyinit install`; `keyinit uninstall` removes this directory\n")
    vpy = str(venv / "bin" / "python")
    pip = [vpy, "-m", "pip", "install", "--disable-pip-version-check", "--no-warn-script-location"]
    if quiet:
        pip.append("-q")
    # Build from a copy of the tree: setuptools writes build/ and *.egg-info next to pyproject.toml,
    # and the shared checkout (with its editable dev install) must stay as it is.
    with tempfile.TemporaryDirectory(prefix="keyinit-install-") as tmp:
        copy = Path(tmp) / "src"
        shutil.copytree(source, copy, symlinks=True, ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "*.egg-info", "__pycache__", "*.so", "_keyutils.c", "*.o",
            ".pytest_cache", ".ruff_cache", "bench"))
        if not step([*pip, "--upgrade", "--force-reinstall", "--no-deps", str(copy)]):
            return 1
        if not step([*pip, str(copy)]):  # dependencies (cffi, krb5, gssapi, keyring)
            return 1
    # The hook must import with the venv's interpreter, as pam_python will (isolated mode).
    if not step([vpy, "-I", "-c", "import pam_keyinit_py.pam.hook"]):
        return 1

    site = str(site_packages(prefix))
    shim = _under(root, shim_path)
    shim.parent.mkdir(parents=True, exist_ok=True)
    tmp = shim.with_name(shim.name + ".tmp")
    tmp.write_text(render([site], generator="keyinit install"))
    os.chmod(tmp, 0o644)
    os.replace(tmp, shim)  # atomic: a login never sees half a shim
    written = install_system_files(prefix, root, source)
    marker.write_text("made by `keyinit install`; `keyinit uninstall` removes this directory and:\n"
                      + "".join(f"{p}\n" for p in written))
    if not quiet:
        print(f"installed {prefix} (python {site}) and {shim_path}")
        for path in written:
            print(f"installed {path}")
        print(f"PAM lines: pam-auth-update --enable keyinit, or see {system_files(prefix)[5][1]}")
        print(f"service:   systemctl enable --now {UNIT}")
    return 0


def uninstall(prefix: str, root: str = "", shim_path: Path = SHIM_PATH, quiet: bool = False) -> int:
    """Remove the shim and the venv made by :func:`install`.  Returns an exit code."""
    err = _check_prefix(prefix)
    if err:
        print(f"keyinit uninstall: {err}", file=sys.stderr)
        return 2
    status = 0
    shim = _under(root, shim_path)
    if shim.exists():
        shim.unlink()
        if not quiet:
            print(f"removed {shim}")
    venv = _under(root, prefix)
    if (venv / MARKER).exists():
        shipped = _source_default() / "etc/keyinit/ticketd.toml"
        for line in (venv / MARKER).read_text().splitlines()[1:]:
            path = _under(root, line)
            if Path(line) == CONFIG and shipped.exists() and path.exists() \
                    and path.read_bytes() != shipped.read_bytes():
                print(f"keyinit uninstall: {path} was changed; left in place", file=sys.stderr)
                continue
            if path.is_symlink() or path.exists():
                path.unlink()
                if not quiet:
                    print(f"removed {path}")
        ours = {p.parent for _s, p, _m in system_files(prefix) if SHARE in p.parents}
        for directory in (CONFIG.parent, *sorted(ours, reverse=True), SHARE):
            try:
                _under(root, directory).rmdir()  # only when empty
            except OSError:
                pass
    if venv.exists():
        if (venv / MARKER).exists():
            shutil.rmtree(venv)
            if not quiet:
                print(f"removed {venv}")
        else:
            print(f"keyinit uninstall: {venv} was not made by keyinit install; left in place",
                  file=sys.stderr)
            status = 1
    return status


def _install(args: argparse.Namespace) -> int:
    return install(args.prefix, args.root, Path(args.source) if args.source else None, quiet=args.quiet)


def _uninstall(args: argparse.Namespace) -> int:
    return uninstall(args.prefix, args.root, quiet=args.quiet)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``install`` and ``uninstall`` to the ``keyinit`` parser."""
    for name, func, text in (
        ("install", _install, "install the PAM hook (venv + pam_python shim), the service and its files"),
        ("uninstall", _uninstall, "remove everything install wrote"),
    ):
        p = subparsers.add_parser(name, help=text, description=text)
        p.add_argument("--prefix", default=DEFAULT_PREFIX, help=f"venv location (default {DEFAULT_PREFIX})")
        p.add_argument("--root", default="", help="stage under this directory (like DESTDIR)")
        p.add_argument("-q", "--quiet", action="store_true", help="only errors")
        if name == "install":
            p.add_argument("--source", help="source tree to install (default: this checkout)")
        p.set_defaults(func=func)
