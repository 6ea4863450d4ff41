"""`make demo` end to end: the six steps over real ssh, KDC, service and sshd, as CI runs them."""

from __future__ import annotations

import pwd
import subprocess

from tests.conftest import VENV_BIN, require_root


def test_make_demo_runs_all_six_steps() -> None:
    require_root()
    res = subprocess.run([str(VENV_BIN / "keyinit"), "demo"], capture_output=True, text=True, timeout=240)
    out = res.stdout
    assert res.returncode == 0, f"{out}\n{res.stderr}"
    for step in range(1, 7):
        assert f"[{step}/6]" in out
    assert "\\_ keyring: _persistent." in out  # step 3: persistent keyring linked into _ses
    assert "krbtgt/DEMO.KEYINIT.TEST@DEMO.KEYINIT.TEST" in out  # step 4
    assert "renewed: new end time" in out  # step 5
    assert "demo passed" in out
    # torn down: no demo user left behind
    assert not [p.pw_name for p in pwd.getpwall() if p.pw_name.startswith("kidemo")]
