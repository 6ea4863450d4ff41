"""One request, from its bytes to its reply: decode, authorise, run, commit, send.

Runs on the server's worker threads.  What a caller may send comes from
:data:`protocol.OPS` (root-only ops, the per-uid rule of ``tickets``/``renew``, the user's
renew throttle); the op's handler is the ``Service`` method the table names, called with the
caller's SO_PEERCRED ``Peer`` and the message's fields.  A mutating op's success is sent only
once the state file holds it (``state_not_saved`` otherwise).  Nothing here raises.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from .. import protocol as P
from .core import Peer
from .ratelimit import RateLimitedLog
from .service import Service

log = logging.getLogger("keyinit-ticketd")

#: A user may ask for a renewal pass of their tickets at most this often (each one is KDC traffic).
USER_RENEW_INTERVAL = 5.0


class Dispatcher:
    """Serves one decoded request at a time per worker; shared by all workers."""

    def __init__(self, service: Service, timeout: float, refusals: RateLimitedLog,
                 connections: Callable[[], dict[str, Any]]) -> None:
        self.service = service
        self.timeout = timeout  # for sending a reply (a client that does not read is dropped)
        self._refusals = refusals
        self._connections = connections  # the server's figures, for root's status
        self._user_renewed: dict[int, float] = {}  # uid -> when its last renew request ran
        self._renew_lock = threading.Lock()

    def serve(self, sock: socket.socket, pid: int, uid: int, body: bytes) -> bool:
        """Answer one request body from (pid, uid); True when the connection may carry another."""
        try:
            message = P.decode(body)
            P.validate_request(message)
        except P.ProtocolError as exc:
            self._refusals(("bad", uid), logging.WARNING, "bad message from pid %d uid %d: %s; "
                           "connection closed", pid, uid, exc)
            self.send(sock, P.reply_error(exc.code, str(exc)))
            return False
        op = message["op"]
        if not P.OPS[op].mutating:
            reply = self.dispatch(message, pid, uid)
            del message
            return self.send(sock, reply)
        # What the handler changes, this thread writes in commit() below: no writer-thread wake-up.
        with self.service.writer.held():
            reply = self.dispatch(message, pid, uid)
            del message  # may hold a password
            if reply.get("ok") and not self.service.commit():
                # A success reply promises the change survives a kill -9: without the write, it may not.
                log.error("%s from pid %d uid %d: done in memory, but the state file was not written: "
                          "answered %s", op, pid, uid, P.STATE_NOT_SAVED)
                reply = P.reply_error(P.STATE_NOT_SAVED, f"{op}: the service could not save its state "
                                                         "(it keeps retrying); not acknowledged")
        return self.send(sock, reply)

    def send(self, sock: socket.socket, reply: dict[str, Any]) -> bool:
        """Send a reply within request_timeout (a client that does not read is dropped)."""
        try:
            data = P.encode(reply, P.MAX_REPLY)
        except P.ProtocolError:
            data = P.encode(P.reply_error(P.TOO_LARGE, "reply too large"))
        try:
            sock.settimeout(self.timeout)
            sock.sendall(data)
            sock.setblocking(False)
            return True
        except OSError:
            return False

    def _user_renew_allowed(self, uid: int) -> bool:
        """At most one renewal pass per user every USER_RENEW_INTERVAL: each is KDC traffic and log."""
        now = time.monotonic()
        with self._renew_lock:
            if now - self._user_renewed.get(uid, -USER_RENEW_INTERVAL) < USER_RENEW_INTERVAL:
                return False
            if len(self._user_renewed) > 4096:
                self._user_renewed = {u: t for u, t in self._user_renewed.items()
                                      if now - t < USER_RENEW_INTERVAL}
            self._user_renewed[uid] = now
            return True

    def dispatch(self, m: dict[str, Any], pid: int, uid: int) -> dict[str, Any]:
        """Authorise by peer uid as :data:`protocol.OPS` says, then run the op's handler.  Never raises."""
        op = P.OPS[m["op"]]
        if op.root and uid != 0:
            self._refusals(("denied", uid), logging.WARNING,
                           "uid %d (pid %d) sent %r, which only root may send: refused", uid, pid, op.name)
            return P.reply_error(P.DENIED, f"only root may send {op.name!r}")
        args = {key: m[key] for key in op.fields if m.get(key) is not None}
        if op.own_uid and uid != 0:
            target = args.get("uid", uid)
            if target != uid:
                verb = "list" if op.name == "tickets" else op.name
                return P.reply_error(P.DENIED, f"uid {uid} may not {verb} the tickets of uid {target}")
            args["uid"] = uid
        if op.throttled and uid != 0 and not self._user_renew_allowed(uid):
            return P.reply_error(P.BUSY, f"renewed less than {USER_RENEW_INTERVAL:g} s ago; try again later")
        try:
            reply = getattr(self.service, op.handler)(Peer(pid, uid), **args)
        except Exception as exc:
            # Only the exception's class and text are logged, and for requests carrying a password
            # the class alone: the text of an error raised while handling it may quote part of it.
            secret = any("password" in key for key in op.fields)
            detail = "" if secret else f": {P.brief(str(exc))}"
            log.error("%s from pid %d uid %d failed: %s%s", op.name, pid, uid, exc.__class__.__name__, detail)
            return P.reply_error(P.INTERNAL, f"{op.name} failed: {exc.__class__.__name__}")
        finally:
            del args  # may hold a password
        if op.name == "status" and uid == 0:
            reply["service"]["connections"] = self._connections()
        return reply
