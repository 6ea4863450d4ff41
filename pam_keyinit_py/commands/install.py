"""``keyinit install`` / ``keyinit uninstall``: what ``make install`` / ``make uninstall`` do.

install:
  1. ``/usr/bin/python3 -m venv PREFIX`` (pam_python.so embeds /usr/bin/python3, so the package and
     its cffi extension must be built for that interpreter);
  2. a normal (non-editable) ``pip install`` of the source tree into it;
  3. an import check of the hook with that venv's interpreter;
  4. the pam_python shim ``/lib/security/pam_keyinit_py.py``, which puts PREFIX's site-packages
     first on sys.path and exposes the hook's ``pam_sm_*``.

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
    if not quiet:
        print(f"installed {prefix} (python {site}) and {shim_path}")
        print(f"PAM line: session optional pam_python.so {shim_path.name} force revoke")
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
        ("install", _install, "install the PAM hook: a /usr/bin/python3 venv + the pam_python shim"),
        ("uninstall", _uninstall, "remove the PAM shim and the venv made by install"),
    ):
        p = subparsers.add_parser(name, help=text, description=text)
        p.add_argument("--prefix", default=DEFAULT_PREFIX, help=f"venv location (default {DEFAULT_PREFIX})")
        p.add_argument("--root", default="", help="stage under this directory (like DESTDIR)")
        p.add_argument("-q", "--quiet", action="store_true", help="only errors")
        if name == "install":
            p.add_argument("--source", help="source tree to install (default: this checkout)")
        p.set_defaults(func=func)
