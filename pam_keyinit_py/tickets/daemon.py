"""``keyinit-ticketd [--config PATH]``: the ticket service, in the foreground, logging to stderr.

Under systemd (Type=notify) it sends ``READY=1`` on $NOTIFY_SOCKET once its socket
listens, so units ordered after it (sshd) find it answering.  SIGTERM/SIGINT stop it
after writing the state file; the tickets stay in the kernel for the next start.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys

from . import journal
from .config import DEFAULT_CONFIG, ConfigError, load

log = logging.getLogger("keyinit-ticketd")


def sd_notify(state: str) -> bool:
    """Send one sd_notify(3) datagram to $NOTIFY_SOCKET ('@' means the abstract namespace)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
        return True
    except OSError as exc:
        log.warning("sd_notify to %s failed: %s", os.environ.get("NOTIFY_SOCKET"), exc.strerror)
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="keyinit-ticketd",
        description="Keep users' Kerberos TGTs in KEYRING:persistent:<uid> renewed while they are logged in.",
    )
    parser.add_argument("--config", metavar="PATH", help=f"TOML configuration (default {DEFAULT_CONFIG})")
    args = parser.parse_args(argv)
    try:
        config = load(args.config)
    except ConfigError as exc:
        print(f"keyinit-ticketd: {exc}", file=sys.stderr)
        return 78  # EX_CONFIG, as systemd's exit status table names it
    # Under systemd: journald's native protocol with PRIORITY and KEYINIT_* fields; else stderr lines.
    journal.setup(getattr(logging, config.log_level.upper(), logging.INFO))
    if os.geteuid() != 0:
        log.warning("not running as root: logins and other users' tickets will fail")

    from .server import Server
    from .service import Service

    service = Service(config)
    server = Server(service, config.socket)
    from . import metrics

    metrics.bind(service, server)
    try:
        server.listen()
    except OSError as exc:
        log.error("cannot listen on %s: %s", config.socket, exc.strerror or exc)
        return 1

    def stop(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping", signum, extra=journal.fields(event="stopping"))
        sd_notify("STOPPING=1")
        server.shutdown()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    service.start()
    textfile = None
    if config.metrics_textfile:
        textfile = metrics.TextfileWriter(config.metrics_textfile, config.metrics_interval)
        textfile.start()
    log.info("listening on %s (KRB5_CONFIG=%s)", config.socket, os.environ.get("KRB5_CONFIG", "default"),
             extra=journal.fields(event="ready"))
    sd_notify("READY=1")
    try:
        server.serve_forever()
    finally:
        if textfile is not None:
            textfile.stop()
        service.stop()
        server.remove_sockets()
    return 0


if __name__ == "__main__":
    sys.exit(main())
