"""The state file skips fsync(2) on a tmpfs (as deployed in /run) and keeps it elsewhere.

Counted with strace on a real save() into /dev/shm (tmpfs) and into a directory on disk.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from pam_keyinit_py.tickets import state

REPO = Path(__file__).resolve().parents[2]


def _fsyncs(directory: Path) -> int:
    """fsync calls made by one state.save() into ``directory`` (strace -f -e fsync)."""
    out = directory / "strace.out"
    code = ("import sys; from pam_keyinit_py.tickets import state; "
            "state.save(sys.argv[1], {'tickets': []})")
    subprocess.run(["strace", "-f", "-qq", "-e", "trace=fsync", "-o", str(out), sys.executable, "-c", code,
                    str(directory / "state.json")], check=True, cwd=REPO, timeout=60)
    assert (directory / "state.json").read_text().startswith('{"format":1')
    return sum(1 for line in out.read_text().splitlines() if "fsync(" in line)


def test_no_fsync_on_tmpfs_and_file_plus_directory_fsync_on_disk() -> None:
    assert shutil.which("strace"), "strace is needed to count the fsync calls"
    shm = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="pkk-state-"))
    disk = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="pkk-state-"))
    try:
        assert state.on_tmpfs(shm)
        assert not state.on_tmpfs(disk), "/var/tmp is expected on a disk file system here"
        assert _fsyncs(shm) == 0
        assert _fsyncs(disk) == 2  # the temporary file before the rename, then the directory
    finally:
        shutil.rmtree(shm, ignore_errors=True)
        shutil.rmtree(disk, ignore_errors=True)
