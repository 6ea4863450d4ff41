"""Run a private ``keyinit-ticketd`` (socket, state and config in one directory) until stopped.

Used by the demo and the tests.  The daemon is the real console script; readiness is its
own sd_notify ``READY=1``, received on a datagram socket bound as ``$NOTIFY_SOCKET``, as
systemd would receive it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .. import protocol

TICKETD = Path(sys.executable).with_name("keyinit-ticketd")


def render_toml(settings: dict[str, Any]) -> str:
    """Flat keys plus ``[[keytab]]`` tables, the subset of TOML the service's config uses."""
    settings = dict(settings)
    tables = settings.pop("keytab", [])
    lines = [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    for table in tables:
        lines.append("[[keytab]]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


class TicketD:
    """One keyinit-ticketd process (restartable with the same config and state file)."""

    def __init__(self, directory: Path, krb5_env: dict[str, str] | None = None, **config: Any) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket = str(self.dir / "ticketd.sock")
        self.config_path = self.dir / "ticketd.toml"
        self.log_path = self.dir / "ticketd.log"
        self.krb5_env = dict(krb5_env or {})
        settings: dict[str, Any] = {"socket": self.socket, "state_file": str(self.dir / "state.json")}
        settings.update(config)
        self.config_path.write_text(render_toml(settings))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> float:
        """Start the daemon and wait for its READY=1; return the seconds it took."""
        notify_path = str(self.dir / "notify.sock")
        try:
            os.unlink(notify_path)
        except FileNotFoundError:
            pass
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(notify_path)
        notify.settimeout(timeout)
        env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "LANG": "C", "NOTIFY_SOCKET": notify_path,
               **self.krb5_env}
        t0 = time.monotonic()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([str(TICKETD), "--config", str(self.config_path)], env=env,
                                         stdout=log, stderr=log, start_new_session=True)
        try:
            while b"READY=1" not in notify.recv(4096).split(b"\n"):
                pass
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"keyinit-ticketd sent no READY=1 in {timeout}s:\n{self.log()}") from None
        finally:
            notify.close()
        return time.monotonic() - t0

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 10 s; return the exit status."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.terminate()
        try:
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def alive(self) -> bool:
        """True while the daemon process runs."""
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        """What the daemon wrote to stderr."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def request(self, message: dict[str, Any], timeout: float = 15.0) -> dict[str, Any]:
        """Send one protocol request from this (root) process."""
        return protocol.request(message, self.socket, timeout=timeout)
