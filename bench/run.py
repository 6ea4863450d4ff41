"""Run every benchmark in bench/ (``make bench``), each printing ours beside its anchor.

A benchmark is a module ``bench/bench_*.py`` with a ``main() -> None``.
``make bench ONLY=keyutils`` runs the ones whose name contains the word.

The package is byte-compiled first for /usr/bin/python3: pam_python's interpreter never writes
bytecode (``sys.flags.dont_write_bytecode``), so a source newer than its .pyc (any edit, a
checkout) is compiled again in every login, which adds milliseconds to every PAM phase.  An
install (``keyinit install``: pip) compiles as well.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    only = os.environ.get("ONLY", "")
    sys.path.insert(0, str(HERE.parent))
    subprocess.run(["/usr/bin/python3", "-m", "compileall", "-q", str(HERE.parent / "pam_keyinit_py")],
                   stdout=subprocess.DEVNULL, check=False)
    for path in sorted(HERE.glob("bench_*.py")):
        if only and only not in path.stem:
            continue
        print(f"== {path.stem}", flush=True)
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.main()
        print(flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
