"""Console-script launchers that start the interpreter with ``-I -S``: ``make setup`` and ``keyinit install``.

pip's launcher starts ``python`` plainly, so every ``pykeyctl`` run first pays for the
``site`` module: it scans site-packages' ``.pth`` files, runs setuptools'
``_distutils_hack`` from one of them and imports Debian's ``sitecustomize`` (about
2 ms, a fifth of a whole ``pykeyctl show @s``).  The launchers written here run
``python -I -S`` instead and put on ``sys.path`` the directories that ``site`` would
have added, measured once, when the launcher is written, by asking the venv's own
interpreter.  ``-I`` also keeps ``PYTHON*`` variables and the current directory out,
as a setuid-safe tool should.

``python -m pam_keyinit_py.commands.launchers VENV [--as PREFIX]`` rewrites VENV's
launchers of :data:`FAST_SCRIPTS` (``--as``: the path the venv will have at run time,
for a staged install).  keyinit-ticketd keeps pip's launcher: it starts once.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

#: Console scripts (name -> module:function) that people run in loops, so start-up matters.
FAST_SCRIPTS = {
    "pykeyctl": "pam_keyinit_py.keyctl.main:main",
    "keyinit": "pam_keyinit_py.cli:main",
    "docker-credential-keyctl": "pam_keyinit_py.integrations.docker_credential:main",
}
#: Scripts that end with _exit(2) once stdout and stderr are flushed, as keyctl's exit(3) does:
#: the interpreter's teardown (freeing every module) is ~1.4 ms, a seventh of ``pykeyctl show``.
#: Only pykeyctl: it registers no atexit work and leaves no threads; keyinit's verbs may.
EXIT_NOW = frozenset({"pykeyctl"})

_PROBE = "import json, sys; print(json.dumps(sys.path))"


def site_paths(python: Path) -> list[str]:
    """The sys.path entries ``site`` adds for ``python`` (site-packages and its .pth directories)."""
    def path(*flags: str) -> list[str]:
        out = subprocess.run([str(python), *flags, "-c", _PROBE], check=True, capture_output=True, text=True)
        return json.loads(out.stdout)

    bare = set(path("-I", "-S"))
    return [p for p in path("-I") if p not in bare]


def render(python: str, paths: list[str], target: str, exit_now: bool = False) -> str:
    """The launcher's text: ``#!python -IS``, the site paths, then ``target`` (``module:function``).

    ``exit_now``: end with ``posix._exit`` after flushing sys.stdout/sys.stderr, skipping the
    interpreter's teardown; the exit status is what ``sys.exit`` would have given.
    """
    module, func = target.split(":")
    head = (
        f"#!{python} -IS\n"
        "# Written by pam_keyinit_py.commands.launchers: -I -S skips site's .pth scan,\n"
        "# _distutils_hack and sitecustomize; these are the directories site would add.\n"
        "import sys\n"
        f"sys.path += {paths!r}\n"
        f"from {module} import {func}\n"
    )
    if not exit_now:
        return head + f"sys.exit({func}())\n"
    return head + (
        "try:\n"
        f"    code = {func}()\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "if code is not None and not isinstance(code, int):\n"
        "    sys.exit(code)  # a message: let the interpreter print it and exit 1\n"
        "# Flush what Python buffered, then exit without the interpreter's teardown.\n"
        "sys.stdout.flush()\n"
        "sys.stderr.flush()\n"
        "import posix\n"
        "posix._exit((code or 0) & 0xFF)\n"
    )


def write(venv: Path, run_as: str | None = None) -> list[Path]:
    """Rewrite ``venv``'s launchers in :data:`FAST_SCRIPTS`; ``run_as`` is the venv's run-time path."""
    paths = site_paths(venv / "bin" / "python")
    if run_as is not None:
        paths = [run_as + p[len(str(venv)):] if p.startswith(str(venv)) else p for p in paths]
    python = f"{run_as or venv}/bin/python"
    written = []
    for name, target in FAST_SCRIPTS.items():
        script = venv / "bin" / name
        if not script.exists():
            continue
        tmp = script.with_name(name + ".tmp")
        tmp.write_text(render(python, paths, target, name in EXIT_NOW))
        tmp.chmod(0o755)
        tmp.replace(script)
        written.append(script)
    return written


def main(argv: list[str] | None = None) -> int:
    """``python -m pam_keyinit_py.commands.launchers VENV [--as PREFIX]``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (1, 3) or (len(args) == 3 and args[1] != "--as"):
        print("usage: python -m pam_keyinit_py.commands.launchers VENV [--as PREFIX]", file=sys.stderr)
        return 2
    write(Path(args[0]).absolute(), args[2] if len(args) == 3 else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
