"""``keyinit doctor``: check every link from login to ticket; exit 1 if any is broken."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``keyinit doctor``."""
    p = sub.add_parser("doctor", help="check every link from login to a usable ticket")
    p.add_argument("--user", help="also check, as this user, that the ticket is found as rpc.gssd finds it")
    p.add_argument("--service", action="append", dest="services",
                   help="PAM service to check (repeatable; default: sshd and login)")
    p.add_argument("--socket", default=None,
                   help="keyinit-ticketd socket (default /run/keyinit/ticketd.sock)")
    p.add_argument("--config", default=None,
                   help="keyinit-ticketd's config, for the host keytab checks "
                        "(default /etc/keyinit/ticketd.toml)")
    p.add_argument("--test-principal", metavar="PRINCIPAL",
                   help="also validate this principal's TGT against the host keytab "
                        "(its password is read from stdin, or prompted for on a terminal)")
    p.add_argument("--pam-dir", default="/etc/pam.d", type=Path, help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def _read_password(principal: str) -> bytes:
    """The test principal's password: prompted for on a terminal, else the first line of stdin."""
    import getpass
    import sys

    if sys.stdin.isatty():
        return getpass.getpass(f"Password for {principal}: ").encode()
    return sys.stdin.buffer.readline().rstrip(b"\r\n")


def run(args: argparse.Namespace) -> int:
    """Print one line per check, with the fix under each failure."""
    from .. import doctor

    password = _read_password(args.test_principal) if args.test_principal else None
    checks = doctor.run_checks(
        user=args.user,
        services=tuple(args.services or ("sshd", "login")),
        sock_path=args.socket or doctor.DEFAULT_SOCKET,
        pam_dir=args.pam_dir,
        config_path=args.config,
        test_principal=args.test_principal,
        test_password=password,
    )
    for c in checks:
        print(f"[{' OK ' if c.ok else 'FAIL'}] {c.name}: {c.detail}")
        if not c.ok and c.fix:
            print(f"       fix: {c.fix}")
    failed = sum(not c.ok for c in checks)
    print(f"{len(checks) - failed} passed, {failed} failed" if failed else f"all {len(checks)} checks passed")
    return 1 if failed else 0
