"""`keyinit` must start where layer 0 cannot load: `keyinit install` runs from a checkout under the
bare /usr/bin/python3, which may have no cffi (pykrb5 neither), and argparse imports every verb."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

BLOCKED = ("_cffi_backend", "cffi", "krb5", "gssapi")

CODE = f"""
import sys
sys.path.insert(0, {str(REPO)!r})

class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)

sys.meta_path.insert(0, Blocked())
sys.argv = ["keyinit", *sys.argv[1:]]
from pam_keyinit_py.cli import main
sys.exit(main())
"""


def _keyinit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-I", "-c", CODE, *args], capture_output=True, text=True,
                          timeout=60)


def test_every_verb_registers_without_cffi_or_krb5() -> None:
    res = _keyinit("--help")
    assert res.returncode == 0, res.stderr
    for verb in ("status", "renew", "tickets", "secret", "doctor", "demo", "install"):
        assert f"    {verb} " in res.stdout, (verb, res.stdout)


def test_install_help_and_the_quick_status_path_without_cffi() -> None:
    assert _keyinit("install", "--help").returncode == 0
    res = _keyinit("status", "--socket", "/nonexistent/ticketd.sock")
    assert res.returncode == 3, res.stderr  # not running: systemctl's 3, not an ImportError's 1
    assert "not running" in res.stdout
