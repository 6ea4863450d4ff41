"""Whole-process CPU of ``pykeyctl show @s`` and ``keyinit status`` beside the interpreter's floor.

Each command runs as its own process; its CPU is the kernel's accounting of the finished child
(user + system, ``wait4``), so start-up, imports and teardown are all in.  The rounds are
interleaved (floor, then each command, round after round), so a noisy moment hits every column,
and each ratio is the median of the per-round ratios to the floor of the same round.

Columns:
- ``/usr/bin/python3 -I -S -c pass``: the anchor, an interpreter that does nothing;
- ``keyctl show @s``: keyutils' C tool, for scale;
- ``pykeyctl show @s`` and ``keyinit status`` through the installed launchers (``python -I -S``,
  see pam_keyinit_py/commands/launchers.py), the latter against a private keyinit-ticketd;
- the same two started as pip's launcher starts them (plain ``python``: site, .pth files,
  ``_distutils_hack``), to show what the launcher saves.
Target (issue #14): each ≤ 1.5× the floor.

Run: ``make bench ONLY=cli_startup``.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROUNDS = 25
TARGET = 1.5
BIN = Path(sys.executable).parent
FLOOR = ["/usr/bin/python3", "-I", "-S", "-c", "pass"]


def cpu_ms(argv: list[str]) -> float:
    """User + system CPU of one run of ``argv`` (output discarded), in ms."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return (usage.ru_utime + usage.ru_stime) * 1000


def _pip_style(module: str, args: list[str]) -> list[str]:
    """The command as pip's launcher runs it: plain python, so site runs first."""
    code = f"import sys; sys.argv[1:] = {args!r}; from {module} import main; sys.exit(main())"
    return [str(BIN / "python"), "-c", code]


def main() -> None:
    from pam_keyinit_py.lab.ticketd import TicketD

    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        daemon = TicketD(Path(tmp) / "ticketd")
        daemon.start()
        try:
            status = ["status", "--socket", daemon.socket]
            check = subprocess.run([str(BIN / "keyinit"), *status], capture_output=True, text=True)
            assert check.returncode == 0, check.stdout + check.stderr
            commands = {
                "floor": FLOOR,
                "keyctl show @s (C)": ["keyctl", "show", "@s"],
                "pykeyctl show @s": [str(BIN / "pykeyctl"), "show", "@s"],
                "keyinit status": [str(BIN / "keyinit"), *status],
                "pykeyctl show @s, pip launcher": _pip_style("pam_keyinit_py.keyctl.main", ["show", "@s"]),
                "keyinit status, pip launcher": _pip_style("pam_keyinit_py.cli", status),
            }
            for argv in commands.values():  # warm the page cache and the .pyc files
                cpu_ms(argv)
            runs: dict[str, list[float]] = {name: [] for name in commands}
            for _ in range(ROUNDS):
                for name, argv in commands.items():
                    runs[name].append(cpu_ms(argv))
        finally:
            daemon.stop()
    floor = runs["floor"]
    print(f"whole-process CPU, {ROUNDS} interleaved rounds: ms min / median / max, and × the floor "
          "(median of per-round ratios)")
    print(f"{'':34} {'min':>6} {'median':>6} {'max':>6} {'× floor':>8}")
    verdicts = []
    for name, values in runs.items():
        ratio = statistics.median(v / f for v, f in zip(values, floor, strict=True))
        label = "python3 -I -S -c pass (anchor)" if name == "floor" else name
        print(f"{label:34} {min(values):6.1f} {statistics.median(values):6.1f} {max(values):6.1f} "
              f"{ratio:8.2f}")
        if name in ("pykeyctl show @s", "keyinit status"):
            verdicts.append(f"target: {name} ≤ {TARGET}× the floor: {ratio:.2f}× -> "
                            f"{'met' if ratio <= TARGET else 'MISSED'}")
    print("\n".join(verdicts))


if __name__ == "__main__":
    main()
