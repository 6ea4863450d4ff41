"""`make install` for real: venv in /opt/pam-keyinit-py + /lib/security/pam_keyinit_py.py, a real sshd
login through the installed shim (named relative to /lib/security, as users write it), then uninstall.

Skipped (or failed in CI) when an install is already there: the test never clobbers one.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pam_keyinit_py.commands.install import DEFAULT_PREFIX
from pam_keyinit_py.lab.sshd import PASSWORD
from pam_keyinit_py.pam.shim import SHIM_PATH
from tests.conftest import REPO, require

pytestmark = pytest.mark.timeout(600)


def test_make_install_login_uninstall(sshd_factory, pam_user) -> None:
    require(not SHIM_PATH.exists() and not Path(DEFAULT_PREFIX).exists(),
            f"{SHIM_PATH} or {DEFAULT_PREFIX} already present; not touching an existing install")
    try:
        res = subprocess.run(["make", "-C", str(REPO), "install"], capture_output=True, text=True,
                             timeout=540)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        assert SHIM_PATH.exists()
        assert str(Path(DEFAULT_PREFIX) / "lib") in SHIM_PATH.read_text()
        assert not (Path(DEFAULT_PREFIX) / "lib/python3.11/site-packages/__editable__").exists()

        def stack(_pamwrap) -> list[str]:
            return ["auth required pam_unix.so", "account required pam_unix.so",
                    "session required pam_python.so pam_keyinit_py.py force revoke",
                    "session required pam_unix.so"]

        server = sshd_factory(stack, mode=PASSWORD)
        login = server.login(pam_user.name, pam_user.password, "keyctl rdescribe @s; keyctl show @s")
        assert login.returncode == 0, login.stderr + server.log()[-3000:]
        lines = login.stdout.splitlines()
        assert lines[0] == f"keyring;{pam_user.uid};{pam_user.gid};3f030000;_ses"
        assert lines[3].endswith(f"\\_ keyring: _uid.{pam_user.uid}")
    finally:
        res = subprocess.run(["make", "-C", str(REPO), "uninstall"], capture_output=True, text=True,
                             timeout=120)
    assert res.returncode == 0, res.stderr
    assert not SHIM_PATH.exists() and not Path(DEFAULT_PREFIX).exists()
