"""``keyinit status``, ``keyinit renew`` and ``keyinit tickets``: the user's view of the ticket service.

Each is one request on the service's socket; the service answers by the caller's
SO_PEERCRED uid (root sees everyone, a user sees their own sessions and tickets).
Exit codes: 0 done, 1 the service refused or failed, 3 the service is not running
(as ``systemctl status`` uses 3 for an inactive unit).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .. import protocol as P
from .. import timefmt

EXIT_UNAVAILABLE = 3


def register(subparsers: argparse._SubParsersAction) -> None:
    for name, func, text in (
        ("status", _status, "show the ticket service, my sessions and my tickets (origin: login, "
                            "delegated, kinit or keytab; expiry; next renewal)"),
        ("renew", _renew, "renew my tracked tickets now"),
        ("tickets", _tickets, "list the tickets the service tracks (root sees all)"),
    ):
        p = subparsers.add_parser(name, help=text, description=text)
        p.add_argument("--socket", default=P.DEFAULT_SOCKET,
                       help=f"service socket (default {P.DEFAULT_SOCKET})")
        p.add_argument("--json", action="store_true", help="print the service's reply as JSON")
        if name != "status":
            p.add_argument("--uid", type=int, help="(root) only this uid's tickets")
        p.set_defaults(func=func)


def _call(args: argparse.Namespace, message: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    reply = P.request(message, args.socket, timeout=30.0)
    if reply.get("ok"):
        return 0, reply
    code = EXIT_UNAVAILABLE if reply.get("code") == P.UNAVAILABLE else 1
    print(f"keyinit {args.command}: {reply.get('error', reply.get('code'))}", file=sys.stderr)
    return code, reply


def _when(ts: float) -> str:
    return timefmt.when(ts, timefmt.KLIST)


#: How each origin the service reports is shown: "adopted" is a cache the user made with kinit.
ORIGINS = {"login": "login", "delegated": "delegated", "adopted": "kinit", "keytab": "keytab"}


def _next_renewal(t: dict[str, Any]) -> str:
    when = t.get("next_renewal") or 0
    if when:
        return _when(when)
    return "-" if t["renewable"] else "never"


def _print_tickets(rows: list[dict[str, Any]]) -> None:
    if not rows:
        print("No tracked tickets.")
        return
    # Date format and the order of the times follow klist: expires, then renew until.
    print(f"{'uid':>6}  {'origin':9} {'expires':17}  {'next renewal':17}  {'renew until':17}  "
          "principal / cache")
    for t in sorted(rows, key=lambda r: (r["uid"], r["ccache"])):
        renew = _when(t["renew_till"]) if t["renewable"] else "not renewable"
        origin = ORIGINS.get(t["origin"], t["origin"])
        print(f"{t['uid']:>6}  {origin:9} {_when(t['endtime']):17}  {_next_renewal(t):17}  "
              f"{renew:17}  {t['principal']}  {t['ccache']}")


def _status(args: argparse.Namespace) -> int:
    rc, reply = _call(args, {"op": "status"})
    if rc:
        if rc == EXIT_UNAVAILABLE:
            print(f"keyinit-ticketd: not running (no answer on {args.socket})")
        return rc
    if args.json:
        print(json.dumps(reply, indent=2))
        return 0
    s = reply["service"]
    if "pid" in s:  # root's view: the whole service
        print(f"keyinit-ticketd: running (pid {s['pid']}, since {_when(s['started'])}), socket {args.socket}")
        print(f"  {s['sessions']} session(s) of {s['users']} user(s), {s['tickets']} tracked ticket(s), "
              f"{s['renewals']} renewal(s), {s['renew_failures']} failed; "
              f"clear_on_logout={s['clear_on_logout']}")
        state = s.get("state_file") or {}
        if state and not state.get("saved", True):
            print(f"  STATE FILE NOT WRITTEN since {_when(state['failing_since'])}: {state['error']} "
                  f"({state['failed_attempts']} failed attempts; retrying)")
    else:  # a user's view: only their own sessions and tickets
        print(f"keyinit-ticketd: running, socket {args.socket}; clear_on_logout={s.get('clear_on_logout')}")
    sessions = reply["sessions"]
    print(f"Sessions ({len(sessions)}):")
    for x in sessions:
        print(f"  session {x['sid']}: {x['user']} (uid {x['uid']}), pid {x['pid']}, "
              f"since {_when(x['opened'])}")
    print("Tickets:")
    _print_tickets(reply["tickets"])
    return 0


def _for_uid(op: str, args: argparse.Namespace) -> dict[str, Any]:
    """A ``tickets``/``renew`` request, for --uid when given (root only) or the caller."""
    return {"op": op} if args.uid is None else {"op": op, "uid": args.uid}


def _tickets(args: argparse.Namespace) -> int:
    rc, reply = _call(args, _for_uid("tickets", args))
    if rc:
        return rc
    if args.json:
        print(json.dumps(reply["tickets"], indent=2))
    else:
        _print_tickets(reply["tickets"])
    return 0


def _renew(args: argparse.Namespace) -> int:
    rc, reply = _call(args, _for_uid("renew", args))
    if rc:
        return rc
    if args.json:
        print(json.dumps(reply, indent=2))
        return 0
    for err in reply["errors"]:
        print(f"keyinit renew: {err['ccache']}: {err['error']}", file=sys.stderr)
    _print_tickets(reply["tickets"])
    return 1 if reply["errors"] else 0
