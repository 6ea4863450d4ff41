"""The service's Unix stream socket: framing, SO_PEERCRED authorisation, dispatch.

Each connection gets a thread (a login's auth may wait on the KDC; others must not wait
behind it).  The caller is identified by SO_PEERCRED (pid, uid, gid as the kernel saw them
at connect), never by a field of the message:

* uid 0 may send everything, including the login and session messages
  (``auth``, ``open``, ``close``), which only a PAM stack running as root sends;
* any other uid may query (``status``, ``tickets``), ``renew`` and ``destroy`` its own tickets.

A malformed, oversized or unauthorised message gets an error reply; a malformed or
oversized one also closes the connection.  The service carries on either way.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import threading
from typing import Any

from .. import protocol as P
from .service import Service

log = logging.getLogger("keyinit-ticketd")

#: A client has this long to send a whole request (a stalled peer must not hold a thread forever).
READ_TIMEOUT = 10.0
_UCRED = struct.Struct("3i")
_MUTATING = frozenset({"auth", "open", "close", "renew", "destroy"})


def peer_credentials(conn: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the peer from SO_PEERCRED."""
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    return _UCRED.unpack(raw)


class Server:
    """Listens on the configured socket path and serves requests with a Service."""

    def __init__(self, service: Service, path: str) -> None:
        self.service = service
        self.path = path
        self.sock: socket.socket | None = None
        self._stopping = False

    def listen(self) -> None:
        """Create the socket directory and bind; the socket is 0666: SO_PEERCRED decides, not the mode."""
        directory = os.path.dirname(self.path) or "."
        os.makedirs(directory, mode=0o755, exist_ok=True)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.bind(self.path)
        os.chmod(self.path, 0o666)
        sock.listen(128)
        self.sock = sock

    def serve_forever(self) -> None:
        assert self.sock is not None
        while not self._stopping:
            try:
                conn, _ = self.sock.accept()
            except InterruptedError:
                continue
            except OSError:
                if self._stopping:
                    return
                raise
            threading.Thread(target=self._serve_conn, args=(conn,), daemon=True).start()

    def shutdown(self) -> None:
        self._stopping = True
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()

    def _serve_conn(self, conn: socket.socket) -> None:
        with conn:
            try:
                pid, uid, _gid = peer_credentials(conn)
            except OSError:
                return
            conn.settimeout(READ_TIMEOUT)
            while True:
                try:
                    message = P.recv_message(conn)
                    P.validate_request(message)
                except EOFError:
                    return
                except P.ProtocolError as exc:
                    log.warning("bad message from pid %d uid %d: %s; connection closed", pid, uid, exc)
                    self._send(conn, P.reply_error(exc.code, str(exc)))
                    return
                except OSError:  # timeout or reset
                    return
                reply = self.dispatch(message, pid, uid)
                if message["op"] in _MUTATING and not self.service.commit():
                    # A reply promises the change survives a kill -9; the writer is gone.
                    log.error("%s from pid %d uid %d: done, but the state file was not written",
                              message["op"], pid, uid)
                del message  # may hold a password
                if not self._send(conn, reply):
                    return

    @staticmethod
    def _send(conn: socket.socket, reply: dict[str, Any]) -> bool:
        try:
            P.send_message(conn, reply, P.MAX_REPLY)
            return True
        except (OSError, P.ProtocolError):
            return False

    def dispatch(self, m: dict[str, Any], pid: int, uid: int) -> dict[str, Any]:
        """Authorise by peer uid, then run the op.  Never raises."""
        op = m["op"]
        if op in P.ROOT_OPS and uid != 0:
            log.warning("uid %d (pid %d) sent %r, which only root may send: refused", uid, pid, op)
            return P.reply_error(P.DENIED, f"only root may send {op!r}")
        target = m.get("uid")
        if op in ("tickets", "renew") and uid != 0 and target not in (None, uid):
            return P.reply_error(P.DENIED, f"uid {uid} may not {op} tickets of uid {target}")
        if op in ("tickets", "renew") and uid != 0:
            target = uid
        svc = self.service
        try:
            if op == "auth":
                password = m.pop("password")
                return svc.auth(m["user"], m["uid"], m["gid"], password, m.get("principal"))
            if op == "account":
                return svc.account(m["user"], m["uid"], m.get("principal"),
                                   m.get("kuserok") is not False, m.get("kdc") is not False)
            if op == "chpass":
                old, new = m.pop("old_password"), m.pop("new_password", None)
                return svc.chpass(m["user"], m["uid"], m.get("principal"), old, new)
            if op == "open":
                return svc.open(m["user"], m["uid"], m["gid"], pid, m.get("ccache"))
            if op == "close":
                return svc.close(m["uid"], m.get("sid"), pid)
            if op == "status":
                return svc.status(uid)
            if op == "tickets":
                return svc.list_tickets(target)
            if op == "renew":
                return svc.renew_now(target)
            if op == "destroy":
                return svc.destroy(m["ccache"], uid)
        except Exception as exc:
            # Only the exception's class and text are logged, and for auth the class alone: the
            # text of an error raised while handling the password may quote part of it.
            detail = "" if op in ("auth", "chpass") else f": {exc}"
            log.error("%s from pid %d uid %d failed: %s%s", op, pid, uid, exc.__class__.__name__, detail)
            return P.reply_error(P.INTERNAL, f"{op} failed: {exc.__class__.__name__}")
        return P.reply_error(P.BAD_REQUEST, f"unknown op {op!r}")
