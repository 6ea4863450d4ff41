"""``keyinit metrics``: print keyinit-ticketd's Prometheus text exposition (root only).

One ``metrics`` request on the service's socket (a root-only op: the counts cover every user).
Exit codes as the other service commands: 0 printed, 1 refused (not root) or failed, 3 the
service is not running.
"""

from __future__ import annotations

import argparse
import sys

from .. import protocol as P
from .tickets import EXIT_UNAVAILABLE


def register(subparsers: argparse._SubParsersAction) -> None:
    text = ("print the ticket service's Prometheus metrics (sessions, tickets, renewals and auths by "
            "code, KDC latency, key quota use); root only")
    p = subparsers.add_parser("metrics", help=text, description=text)
    p.add_argument("--socket", default=P.DEFAULT_SOCKET, help=f"service socket (default {P.DEFAULT_SOCKET})")
    p.set_defaults(func=_metrics)


def _metrics(args: argparse.Namespace) -> int:
    reply = P.request({"op": "metrics"}, args.socket, timeout=30.0)
    if not reply.get("ok"):
        print(f"keyinit metrics: {reply.get('error', reply.get('code'))}", file=sys.stderr)
        return EXIT_UNAVAILABLE if reply.get("code") == P.UNAVAILABLE else 1
    sys.stdout.write(reply["text"])
    return 0
