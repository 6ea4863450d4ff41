"""The -I -S console-script launchers (pam_keyinit_py.commands.launchers), run as real processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pam_keyinit_py.commands import launchers
from tests.conftest import REPO

TARGET = '''
import sys

def main():
    mode = sys.argv[1]
    print("out", end="")  # left in Python's buffer: the launcher must flush it
    sys.stderr.write("err")
    print(sorted(p for p in sys.path if p.endswith("-site")), file=sys.stderr)
    if mode == "raise":
        sys.exit(3)
    if mode == "message":
        sys.exit("bad input")
    return {"zero": 0, "none": None, "seven": 7}[mode]
'''


@pytest.mark.parametrize("exit_now", [False, True])
@pytest.mark.parametrize(("mode", "code"), [("zero", 0), ("none", 0), ("seven", 7), ("raise", 3),
                                            ("message", 1)])
def test_launcher_keeps_exit_status_and_output(tmp_path: Path, exit_now: bool, mode: str, code: int) -> None:
    site = tmp_path / "fake-site"
    site.mkdir()
    (site / "tgt.py").write_text(TARGET)
    script = tmp_path / "tool"
    script.write_text(launchers.render(sys.executable, [str(site)], "tgt:main", exit_now))
    script.chmod(0o755)
    res = subprocess.run([str(script), mode], capture_output=True, text=True,
                         env={"PYTHONPATH": "/nonexistent-site"})  # -I: the environment is ignored
    assert res.returncode == code, res.stderr
    assert res.stdout == "out"
    # Only the launcher's path: -I kept PYTHONPATH's out.
    assert res.stderr.startswith(f"err{[str(site)]!r}\n")
    if mode == "message":
        assert res.stderr.endswith("bad input\n")


def test_setup_wrote_the_venv_launchers() -> None:
    for name in launchers.FAST_SCRIPTS:
        first = (REPO / ".venv/bin" / name).read_text().splitlines()[0]
        assert first == f"#!{REPO}/.venv/bin/python -IS", (name, first)
    bare = subprocess.run([str(REPO / ".venv/bin/python"), "-I", "-S", "-c", "import sys; print(sys.path)"],
                          capture_output=True, text=True, check=True).stdout
    assert "site-packages" not in bare  # so the launcher's own sys.path line is what finds the package
