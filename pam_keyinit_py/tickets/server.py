"""The service's Unix stream socket: framing, SO_PEERCRED authorisation, limits, dispatch.

The caller is identified by SO_PEERCRED (pid, uid, gid as the kernel saw them at connect),
never by a field of the message:

* uid 0 may send everything, including the login and session messages
  (``auth``, ``open``, ``close``), which only a PAM stack running as root sends;
* any other uid may query (``status``, ``tickets``), ``renew`` and ``destroy`` its own tickets.

The socket is open to every local user, so nothing a client does may stop the service or
keep root's logins waiting:

* one thread runs a ``selectors`` event loop: it accepts, reads requests without blocking
  and closes connections whose request is not complete by its deadline (the deadline is
  for the whole request, so a client trickling one byte a second holds nothing for long);
* complete requests go to a bounded pool of worker threads (a login's auth may wait on the
  KDC); some workers serve only uid 0, so users keeping every other worker busy cannot
  delay a login;
* connections are capped per uid (``max_connections_per_uid``) and in total
  (``max_connections``, of which ``root_reserved_connections`` only uid 0 may use).  A
  refused connection gets a ``busy`` reply and is closed; refusals are logged by one
  rate-limited line per uid;
* ``accept()`` failures (EMFILE, ENFILE, ENOBUFS, ENOMEM: the process or the system is out of
  something) pause accepting with a short back-off instead of ending the service;
* root's clients connect through a second, root-only socket (mode 0600, ``ticketd.root.sock``)
  whose listen backlog no user can fill.

A malformed, oversized or unauthorised message gets an error reply; a malformed or
oversized one also closes the connection.  The service carries on either way.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import resource
import selectors
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .. import protocol as P
from . import metrics
from .ratelimit import RateLimitedLog
from .service import Service

log = logging.getLogger("keyinit-ticketd")

_UCRED = struct.Struct("3i")
_HEADER = struct.Struct(">I")
_MUTATING = frozenset({"auth", "open", "close", "renew", "destroy", "chpass"})
#: Descriptors the service keeps for itself beyond connections (state file, pidfds, KDC sockets).
FD_HEADROOM = 64
#: Back-off of the accept loop after an accept() failure: doubling from MIN to MAX seconds.
ACCEPT_BACKOFF_MIN = 0.05
ACCEPT_BACKOFF_MAX = 1.0
#: The reply to a refused connection, framed once: refusing is what a flood makes the loop do most.
_BUSY_FRAME = P.encode(P.reply_error(P.BUSY, "too many connections; try again later"))
#: A user may ask for a renewal pass of their tickets at most this often (each one is KDC traffic).
USER_RENEW_INTERVAL = 5.0


def peer_credentials(conn: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the peer from SO_PEERCRED."""
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    return _UCRED.unpack(raw)


@dataclass(eq=False)
class _Conn:
    """One client connection, owned by the loop thread except while a worker runs its request."""

    sock: socket.socket
    pid: int
    uid: int
    deadline: float
    buf: bytearray = field(default_factory=bytearray)
    want: int = _HEADER.size  # bytes the current frame part still needs
    in_body: bool = False


@dataclass(frozen=True, slots=True)
class Limits:
    """The connection and worker limits the server enforces (see config.py for their meaning)."""

    max_connections: int = 256
    max_connections_per_uid: int = 8
    root_reserved_connections: int = 32
    workers: int = 32
    root_reserved_workers: int = 8
    request_timeout: float = 10.0

    @classmethod
    def from_config(cls, config: Any) -> Limits:
        return cls(config.max_connections, config.max_connections_per_uid,
                   config.root_reserved_connections, config.workers, config.root_reserved_workers,
                   config.request_timeout)

    def fitted_to_rlimit(self) -> Limits:
        """These limits, with the total cap lowered to fit RLIMIT_NOFILE (each connection is an fd)."""
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return self
        room = max(4, (soft - FD_HEADROOM) // 2)  # half: pidfds of sessions and KDC sockets need fds too
        if self.max_connections <= room:
            return self
        reserved = min(self.root_reserved_connections, max(1, room // 4))
        log.warning("max_connections %d does not fit RLIMIT_NOFILE %d: using %d (%d for root only)",
                    self.max_connections, soft, room, reserved)
        return Limits(room, min(self.max_connections_per_uid, room - reserved), reserved, self.workers,
                      self.root_reserved_workers, self.request_timeout)


class _Pool:
    """A bounded pool of worker threads, started on demand; uid 0's jobs go first.

    Jobs of other uids run on at most ``size - root_reserved`` workers at once, so the
    reserved workers are always free for root's requests (logins).
    """

    def __init__(self, size: int, root_reserved: int, run: Any) -> None:
        self.size = size
        self.user_max = max(1, size - root_reserved)
        self._run = run
        self._cond = threading.Condition()
        self._root: collections.deque[Any] = collections.deque()
        self._user: collections.deque[Any] = collections.deque()
        self._threads = 0
        self._idle = 0
        self._user_busy = 0

    def submit(self, job: Any, root: bool) -> bool:
        """Queue ``job``; False (job not queued) when no worker exists and none can be started."""
        with self._cond:
            queue = self._root if root else self._user
            queue.append(job)
            # More queued than idle workers to take them (an idle one may be woken already): grow.
            if len(self._root) + len(self._user) > self._idle and self._threads < self.size:
                try:
                    threading.Thread(target=self._worker, name=f"worker-{self._threads + 1}",
                                     daemon=True).start()
                    self._threads += 1
                except RuntimeError:  # out of tasks (TasksMax, pids cgroup): the workers there are do it
                    if self._threads == 0:
                        queue.pop()
                        return False
            self._cond.notify_all()
            return True

    def _take(self) -> tuple[Any, bool]:
        with self._cond:
            while True:
                if self._root:
                    return self._root.popleft(), True
                if self._user and self._user_busy < self.user_max:
                    self._user_busy += 1
                    return self._user.popleft(), False
                self._idle += 1
                self._cond.wait()
                self._idle -= 1

    def _worker(self) -> None:
        while True:
            job, root = self._take()
            try:
                self._run(job)
            except Exception:  # a request handler must never take a worker down with it
                log.exception("request handler failed")
            finally:
                if not root:
                    with self._cond:
                        self._user_busy -= 1
                        if self._user:
                            self._cond.notify_all()

    @property
    def threads(self) -> int:
        return self._threads


class Server:
    """Listens on the configured socket path and serves requests with a Service."""

    def __init__(self, service: Service, path: str, limits: Limits | None = None) -> None:
        self.service = service
        self.path = path
        self.limits = (limits or Limits.from_config(service.config)).fitted_to_rlimit()
        self.root_path = P.root_socket(path)
        self.sock: socket.socket | None = None
        self.root_sock: socket.socket | None = None
        self._stopping = False
        self._sel: selectors.BaseSelector | None = None
        self._wake_r, self._wake_w = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._done: collections.deque[tuple[_Conn, bool]] = collections.deque()
        self._conns: set[_Conn] = set()
        self._per_uid: collections.Counter[int] = collections.Counter()
        self._pool = _Pool(self.limits.workers, self.limits.root_reserved_workers, self._handle)
        self._accept_paused_until = 0.0
        self._accept_backoff = 0.0
        self._refusals = RateLimitedLog()
        self._user_renewed: dict[int, float] = {}  # uid -> when its last renew request ran
        self._renew_lock = threading.Lock()
        self.refused = 0  # connections refused by a limit, since start
        self.accept_errors = 0

    def listen(self) -> None:
        """Create the socket directory and bind both sockets.

        The public socket is 0666: SO_PEERCRED decides what a caller may do, not the mode.  The
        root socket (:func:`protocol.root_socket`) is 0600, so only root can connect(2) to it:
        however fast users connect to the public one, they cannot fill the backlog that the
        logins' PAM stacks (root) connect through.
        """
        directory = os.path.dirname(self.path) or "."
        os.makedirs(directory, mode=0o755, exist_ok=True)
        self.sock = self._bind(self.path, 0o666)
        self.root_sock = self._bind(self.root_path, 0o600)

    @staticmethod
    def _bind(path: str, mode: int) -> socket.socket:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        # Bound under umask 0777 (no window where the root socket is reachable), then chmod.
        old = os.umask(0o777)
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, mode)
        # The kernel caps it at net.core.somaxconn: a flood of connects must fill a deep queue
        # before a connect(2) has to wait for room (see protocol.request).
        sock.listen(socket.SOMAXCONN)
        sock.setblocking(False)
        return sock

    def remove_sockets(self) -> None:
        """Unlink both socket paths (at exit)."""
        for path in (self.path, self.root_path):
            try:
                os.unlink(path)
            except OSError:
                pass

    # ------------------------------------------------------------------ the event loop

    def serve_forever(self) -> None:
        """Run the event loop until shutdown(); no client behaviour and no accept() error ends it."""
        assert self.sock is not None and self.root_sock is not None
        listeners = (self.sock, self.root_sock)
        sel = self._sel = selectors.DefaultSelector()
        sel.register(self._wake_r, selectors.EVENT_READ, self._wake_r)
        registered: set[socket.socket] = set()
        while not self._stopping:
            now = time.monotonic()
            self._sync_listeners(registered, now)
            try:
                events = sel.select(self._next_timeout(now))
            except OSError as exc:  # ENOMEM from epoll_wait: wait and go on
                log.error("select: %s", exc.strerror or exc)
                time.sleep(ACCEPT_BACKOFF_MAX)
                continue
            for key, _mask in events:
                try:
                    if key.data in listeners:
                        if key.data in registered and time.monotonic() >= self._accept_paused_until:
                            self._accept(key.data)
                    elif key.data is self._wake_r:
                        self._drain_wakeups()
                    else:
                        self._read(key.data)
                except Exception as exc:  # e.g. epoll_ctl's ENOMEM: drop that connection, never the loop
                    self._refusals(("loop", exc.__class__), logging.ERROR, "event loop: %s: %s",
                                   exc.__class__.__name__, P.brief(str(exc), 200))
                    if isinstance(key.data, _Conn):
                        self._close(key.data)
            self._expire(time.monotonic())
        for conn in list(self._conns):
            self._close(conn)
        for listener in listeners:
            listener.close()

    def _sync_listeners(self, registered: set[socket.socket], now: float) -> None:
        """Watch each listener when it may accept: neither paused after an accept() failure (that
        is the process's state: both pause) nor, for the root socket, at max_connections.

        A full service leaves root's connections in the root socket's backlog, where connect(2)
        waits for room (protocol.request), rather than answering them "busy".
        """
        assert self._sel is not None and self.sock is not None and self.root_sock is not None
        paused = now < self._accept_paused_until
        for listener in (self.sock, self.root_sock):
            want = not paused and (listener is self.sock or len(self._conns) < self.limits.max_connections)
            if want and listener not in registered:
                self._sel.register(listener, selectors.EVENT_READ, listener)
                registered.add(listener)
            elif not want and listener in registered:
                self._sel.unregister(listener)
                registered.discard(listener)

    def _next_timeout(self, now: float) -> float:
        timeout = 1.0
        if now < self._accept_paused_until:
            timeout = min(timeout, self._accept_paused_until - now)
        for conn in self._conns:
            if conn.deadline:
                timeout = min(timeout, max(0.0, conn.deadline - now))
        return timeout

    def shutdown(self) -> None:
        """Stop the loop (safe from a signal handler: it only sets a flag and wakes the loop)."""
        self._stopping = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except (BlockingIOError, InterruptedError):
            pass  # the loop has wake-ups pending already
        except OSError:
            pass

    def _drain_wakeups(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        while self._done:
            conn, keep = self._done.popleft()
            if keep and not self._stopping:
                conn.deadline = time.monotonic() + self.limits.request_timeout
                assert self._sel is not None
                self._sel.register(conn.sock, selectors.EVENT_READ, conn)
            else:
                self._close(conn)

    def _accept(self, listener: socket.socket) -> None:
        """Accept the waiting connections; an accept() failure pauses accepting (see _sync_listeners)."""
        for _ in range(256):  # bounded, so reads and deadlines are not starved by a connect storm
            if listener is self.root_sock and len(self._conns) >= self.limits.max_connections:
                return  # the rest wait in the root backlog
            try:
                sock, _addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if self._stopping:
                    return
                # EMFILE/ENFILE (out of descriptors), ENOBUFS/ENOMEM (out of memory), ECONNABORTED...:
                # the connection stays in the backlog (or is gone); try again after a back-off.
                self.accept_errors += 1
                if exc.errno == errno.ECONNABORTED:
                    continue
                backoff = max(ACCEPT_BACKOFF_MIN, self._accept_backoff * 2)
                self._accept_backoff = min(ACCEPT_BACKOFF_MAX, backoff)
                self._accept_paused_until = time.monotonic() + self._accept_backoff
                self._refusals(("accept", exc.errno), logging.ERROR,
                               "accept() failed: %s; pausing %.2fs (%d connections open)",
                               os.strerror(exc.errno or 0), self._accept_backoff, len(self._conns))
                return
            self._accept_backoff = 0.0
            self._admit(sock)

    def _admit(self, sock: socket.socket) -> None:
        try:
            pid, uid, _gid = peer_credentials(sock)
        except OSError:
            sock.close()
            return
        lim = self.limits
        why = None
        if len(self._conns) >= lim.max_connections:
            why = f"{len(self._conns)} connections open (max_connections={lim.max_connections})"
        elif uid != 0 and len(self._conns) >= lim.max_connections - lim.root_reserved_connections:
            why = (f"{len(self._conns)} connections open, the last {lim.root_reserved_connections} "
                   "are for root")
        elif uid != 0 and self._per_uid[uid] >= lim.max_connections_per_uid:
            why = f"{self._per_uid[uid]} connections of this uid open (max_connections_per_uid=" \
                  f"{lim.max_connections_per_uid})"
        if why is not None:
            self.refused += 1
            self._refusals(("refuse", uid), logging.WARNING,
                           "refused a connection of uid %d (pid %d): %s", uid, pid, why)
            try:  # a small reply fits the empty socket buffer: never blocks
                sock.send(_BUSY_FRAME, socket.MSG_DONTWAIT)
            except OSError:
                pass
            sock.close()
            return
        sock.setblocking(False)
        conn = _Conn(sock, pid, uid, time.monotonic() + lim.request_timeout)
        self._conns.add(conn)
        self._per_uid[uid] += 1
        assert self._sel is not None
        self._sel.register(sock, selectors.EVENT_READ, conn)

    def _read(self, conn: _Conn) -> None:
        """Read what the frame still needs (never more: a request costs at most MAX_MESSAGE)."""
        try:
            chunk = conn.sock.recv(conn.want)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not chunk:
            self._close(conn)
            return
        conn.buf += chunk
        conn.want -= len(chunk)
        if conn.want:
            return
        if not conn.in_body:
            (length,) = _HEADER.unpack(conn.buf)
            if length > P.MAX_MESSAGE:
                self._reject(conn, P.ProtocolError(P.TOO_LARGE, f"message of {length} bytes exceeds "
                                                                f"{P.MAX_MESSAGE}"))
                return
            conn.buf.clear()
            conn.in_body, conn.want = True, length
            if length:
                return
        body = bytes(conn.buf)
        conn.buf.clear()
        conn.in_body, conn.want = False, _HEADER.size
        conn.deadline = 0.0  # the service's own time does not count against the client
        assert self._sel is not None
        self._sel.unregister(conn.sock)
        if not self._pool.submit((conn, body), conn.uid == 0):
            self._refusals(("no-worker",), logging.ERROR, "cannot start a worker thread (out of tasks): "
                           "request of pid %d uid %d answered busy", conn.pid, conn.uid)
            try:
                conn.sock.send(_BUSY_FRAME, socket.MSG_DONTWAIT)
            except OSError:
                pass
            self._close(conn)

    def _reject(self, conn: _Conn, exc: P.ProtocolError) -> None:
        self._refusals(("bad", conn.uid), logging.WARNING, "bad message from pid %d uid %d: %s; connection "
                       "closed", conn.pid, conn.uid, exc)
        try:
            conn.sock.send(P.encode(P.reply_error(exc.code, str(exc))))
        except OSError:
            pass
        self._close(conn)

    def _expire(self, now: float) -> None:
        for conn in [c for c in self._conns if c.deadline and c.deadline <= now]:
            if conn.buf or conn.in_body:
                self._refusals(("slow", conn.uid), logging.WARNING,
                               "pid %d uid %d did not send its request within %.0fs: connection closed",
                               conn.pid, conn.uid, self.limits.request_timeout)
            self._close(conn)

    def _close(self, conn: _Conn) -> None:
        if conn not in self._conns:
            return
        self._conns.discard(conn)
        self._per_uid[conn.uid] -= 1
        if self._per_uid[conn.uid] <= 0:
            del self._per_uid[conn.uid]
        if self._sel is not None:
            try:
                self._sel.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
        conn.sock.close()

    # ------------------------------------------------------------------ workers

    def _handle(self, job: tuple[_Conn, bytes]) -> None:
        """Run one request on a worker thread, reply, and hand the connection back to the loop."""
        conn, body = job
        keep = False
        try:
            keep = self._serve_request(conn, body)
        finally:
            del body  # may hold a password
            self._done.append((conn, keep))
            self._wake()

    def _serve_request(self, conn: _Conn, body: bytes) -> bool:
        try:
            message = P.decode(body)
            P.validate_request(message)
        except P.ProtocolError as exc:
            self._refusals(("bad", conn.uid), logging.WARNING, "bad message from pid %d uid %d: %s; "
                           "connection closed", conn.pid, conn.uid, exc)
            self._send(conn, P.reply_error(exc.code, str(exc)))
            return False
        op = message["op"]
        reply = self.dispatch(message, conn.pid, conn.uid)
        del message  # may hold a password
        if op in _MUTATING and reply.get("ok") and not self.service.commit():
            # A success reply promises the change survives a kill -9: without the write, it may not.
            log.error("%s from pid %d uid %d: done in memory, but the state file was not written: "
                      "answered %s", op, conn.pid, conn.uid, P.STATE_NOT_SAVED)
            reply = P.reply_error(P.STATE_NOT_SAVED, f"{op}: the service could not save its state "
                                                     "(it keeps retrying); not acknowledged")
        return self._send(conn, reply)

    def _send(self, conn: _Conn, reply: dict[str, Any]) -> bool:
        """Send a reply within request_timeout (a client that does not read is dropped)."""
        try:
            data = P.encode(reply, P.MAX_REPLY)
        except P.ProtocolError:
            data = P.encode(P.reply_error(P.TOO_LARGE, "reply too large"))
        try:
            conn.sock.settimeout(self.limits.request_timeout)
            conn.sock.sendall(data)
            conn.sock.setblocking(False)
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
        """Authorise by peer uid, then run the op.  Never raises."""
        op = m["op"]
        if op in P.ROOT_OPS and uid != 0:
            self._refusals(("denied", uid), logging.WARNING,
                           "uid %d (pid %d) sent %r, which only root may send: refused", uid, pid, op)
            return P.reply_error(P.DENIED, f"only root may send {op!r}")
        target = m.get("uid")
        if op in ("tickets", "renew") and uid != 0 and target not in (None, uid):
            verb = "list" if op == "tickets" else "renew"
            return P.reply_error(P.DENIED, f"uid {uid} may not {verb} the tickets of uid {target}")
        if op in ("tickets", "renew") and uid != 0:
            target = uid
        if op == "renew" and uid != 0 and not self._user_renew_allowed(uid):
            return P.reply_error(P.BUSY, f"renewed less than {USER_RENEW_INTERVAL:g} s ago; try again later")
        svc = self.service
        try:
            if op == "auth":
                password = m.pop("password")
                return svc.auth(m["user"], m["uid"], m["gid"], password, m.get("principal"),
                                m.get("kuserok") is True)
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
                reply = svc.status(uid)
                if uid == 0:
                    reply["service"]["connections"] = {
                        "open": len(self._conns), "refused": self.refused,
                        "accept_errors": self.accept_errors,
                        "workers": self._pool.threads, "max_connections": self.limits.max_connections,
                        "max_connections_per_uid": self.limits.max_connections_per_uid}
                return reply
            if op == "tickets":
                return svc.list_tickets(target)
            if op == "renew":
                return svc.renew_now(target)
            if op == "destroy":
                return svc.destroy(m["ccache"], uid)
            if op == "metrics":
                return metrics.reply()
        except Exception as exc:
            # Only the exception's class and text are logged, and for auth the class alone: the
            # text of an error raised while handling the password may quote part of it.
            detail = "" if op in ("auth", "chpass") else f": {P.brief(str(exc))}"
            log.error("%s from pid %d uid %d failed: %s%s", op, pid, uid, exc.__class__.__name__, detail)
            return P.reply_error(P.INTERNAL, f"{op} failed: {exc.__class__.__name__}")
        return P.reply_error(P.BAD_REQUEST, f"unknown op {P.brief(op)}")
