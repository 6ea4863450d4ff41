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

After its reply, the worker closes the connection itself when the client has sent its end of
stream (a one-request client shuts down its sending side: see protocol.py), and otherwise hands
it back to the loop for the next request.  The connection counts are kept under a lock for that.

A malformed, oversized or unauthorised message gets an error reply; a malformed or
oversized one also closes the connection.  The service carries on either way.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import selectors
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .. import protocol as P
from .dispatch import Dispatcher
from .limits import Limits
from .limits import WorkerPool as _Pool
from .ratelimit import RateLimitedLog
from .service import Service

log = logging.getLogger("keyinit-ticketd")

_UCRED = struct.Struct("3i")
_HEADER = struct.Struct(">I")
#: Back-off of the accept loop after an accept() failure: doubling from MIN to MAX seconds.
ACCEPT_BACKOFF_MIN = 0.05
ACCEPT_BACKOFF_MAX = 1.0
#: The reply to a refused connection, framed once: refusing is what a flood makes the loop do most.
_BUSY_FRAME = P.encode(P.reply_error(P.BUSY, "too many connections; try again later"))


def peer_credentials(conn: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the peer from SO_PEERCRED."""
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    return _UCRED.unpack(raw)


def _ended(sock: socket.socket) -> bool:
    """True when the client sent its end of stream (shutdown(SHUT_WR) or close) and nothing
    before it: recv(MSG_PEEK | MSG_DONTWAIT) reads 0 bytes.  A reset counts as ended; bytes of a
    next request, or nothing yet, do not."""
    try:
        return not sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True


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
    watched: bool = False  # registered with the selector (only while its request is incomplete)


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
        self._done: collections.deque[_Conn] = collections.deque()  # answered, may send more
        # The loop adds connections; the loop or, after its reply, a worker removes them.
        self._lock = threading.Lock()  # guards _conns, _per_uid and _root_held
        self._conns: set[_Conn] = set()
        self._per_uid: collections.Counter[int] = collections.Counter()
        self._root_held = False  # the root listener is unwatched at max_connections: a close wakes the loop
        self._pool = _Pool(self.limits.workers, self.limits.root_reserved_workers, self._handle)
        self._accept_paused_until = 0.0
        self._accept_backoff = 0.0
        self._refusals = RateLimitedLog()
        self.requests = Dispatcher(service, self.limits.request_timeout, self._refusals, self._connections)
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
            # Finished requests first, listeners last: a client that got its reply, closed and
            # connected again (keyinit in a loop) finds its old connection already closed, not
            # counted against max_connections_per_uid.
            events.sort(key=lambda event: 0 if event[0].data is self._wake_r else
                        2 if event[0].data in listeners else 1)
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
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
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
        with self._lock:  # a worker closing a connection after this sees _root_held and wakes the loop
            full = self._root_held = len(self._conns) >= self.limits.max_connections
        for listener in (self.sock, self.root_sock):
            want = not paused and (listener is self.sock or not full)
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
        with self._lock:
            deadlines = [conn.deadline for conn in self._conns if conn.deadline]
        if deadlines:
            timeout = min(timeout, max(0.0, min(deadlines) - now))
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
            conn = self._done.popleft()
            if not self._stopping:
                conn.deadline = time.monotonic() + self.limits.request_timeout
                try:
                    self._read(conn)  # its next request, or its end of stream
                except OSError:  # epoll_ctl ENOMEM: this connection's failure, not the loop's
                    self._close(conn)
            else:
                self._close(conn)

    def _accept(self, listener: socket.socket) -> None:
        """Accept the waiting connections; an accept() failure pauses accepting (see _sync_listeners)."""
        for _ in range(256):  # bounded, so reads and deadlines are not starved by a connect storm
            if listener is self.root_sock and len(self._conns) >= self.limits.max_connections:
                return  # the rest wait in the root backlog
            try:
                # accept4 itself: socket.accept() would build the socket through the listener's
                # family/type properties (two IntEnum conversions per connection).
                fd, _addr = listener._accept()  # type: ignore[attr-defined]
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
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, fd)
            if sock.gettimeout() is not None:
                # A process-wide socket.setdefaulttimeout() (a library's) would make CPython poll
                # for that long before each recv(MSG_DONTWAIT): one silent client, a stalled loop.
                sock.settimeout(None)
            self._admit(sock)

    def _admit(self, sock: socket.socket) -> None:
        try:
            pid, uid, _gid = peer_credentials(sock)
        except OSError:
            sock.close()
            return
        lim = self.limits
        if self._done and (len(self._conns) >= lim.max_connections - lim.root_reserved_connections
                           or self._per_uid[uid] >= lim.max_connections_per_uid):
            self._drain_wakeups()  # answered connections may be closed by now: count them out first
        # Checked and counted in under one lock: a worker closing a connection meanwhile cannot
        # make either wrong.
        why = None
        with self._lock:
            total, mine = len(self._conns), self._per_uid[uid]
            if total >= lim.max_connections:
                why = f"{total} connections open (max_connections={lim.max_connections})"
            elif uid != 0 and total >= lim.max_connections - lim.root_reserved_connections:
                why = f"{total} connections open, the last {lim.root_reserved_connections} are for root"
            elif uid != 0 and mine >= lim.max_connections_per_uid:
                why = f"{mine} connections of this uid open (max_connections_per_uid=" \
                      f"{lim.max_connections_per_uid})"
            else:
                conn = _Conn(sock, pid, uid, time.monotonic() + lim.request_timeout)
                self._conns.add(conn)
                self._per_uid[uid] += 1
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
        # The socket stays in blocking mode: the loop reads it with MSG_DONTWAIT and sends to it
        # only with MSG_DONTWAIT, and a worker sends with its own timeout (Dispatcher.send).
        # A client sends its request right after connect(2): it is usually there already, and
        # reading it now saves the epoll_wait round (and, under load, a wake-up of this thread),
        # and the register/unregister pair of a connection watched only to be read at once.
        try:
            self._read(conn)
        except OSError:  # epoll_ctl's ENOMEM: this connection's failure, not the loop's
            self._close(conn)

    def _read(self, conn: _Conn) -> None:
        """Read what the frame still needs (never more: a request costs at most MAX_MESSAGE).

        The body is read right after its header when it is there already (a client sends both
        at once), not at the next pass of the loop: one epoll_wait less per request.  The
        connection is watched (epoll) only while its request is incomplete.
        """
        while True:
            try:
                chunk = conn.sock.recv(conn.want, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                if not conn.watched:
                    assert self._sel is not None
                    self._sel.register(conn.sock, selectors.EVENT_READ, conn)
                    conn.watched = True
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
                if conn.watched:
                    return  # short read: the buffer is empty now, and epoll says when more comes
                continue  # not watched yet: recv again, whose EAGAIN registers it
            if conn.in_body:
                break
            (length,) = _HEADER.unpack(conn.buf)
            if length > P.MAX_MESSAGE:
                self._reject(conn, P.ProtocolError(P.TOO_LARGE, f"message of {length} bytes exceeds "
                                                                f"{P.MAX_MESSAGE}"))
                return
            conn.buf.clear()
            conn.in_body, conn.want = True, length
            if not length:
                break
        body = bytes(conn.buf)
        conn.buf.clear()
        conn.in_body, conn.want = False, _HEADER.size
        conn.deadline = 0.0  # the service's own time does not count against the client
        self._unwatch(conn)
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
            conn.sock.send(P.encode(P.reply_error(exc.code, str(exc))), socket.MSG_DONTWAIT)
        except OSError:
            pass
        self._close(conn)

    def _expire(self, now: float) -> None:
        with self._lock:
            expired = [c for c in self._conns if c.deadline and c.deadline <= now]
        for conn in expired:
            if conn.buf or conn.in_body:
                self._refusals(("slow", conn.uid), logging.WARNING,
                               "pid %d uid %d did not send its request within %.0fs: connection closed",
                               conn.pid, conn.uid, self.limits.request_timeout)
            self._close(conn)

    def _close(self, conn: _Conn) -> bool:
        """Count the connection out and close it (on the loop, or on the worker that answered it:
        then it is not watched, and the selector is not touched).  True when the loop must wake to
        watch the root listener again (it was full)."""
        with self._lock:
            if conn not in self._conns:
                return False
            self._conns.discard(conn)
            self._per_uid[conn.uid] -= 1
            if self._per_uid[conn.uid] <= 0:
                del self._per_uid[conn.uid]
            wake = self._root_held
        try:
            self._unwatch(conn)
        except OSError:
            pass
        conn.sock.close()
        return wake

    def _unwatch(self, conn: _Conn) -> None:
        if conn.watched and self._sel is not None:
            conn.watched = False
            try:
                self._sel.unregister(conn.sock)
            except (KeyError, ValueError):
                pass

    # ------------------------------------------------------------------ workers

    def _handle(self, job: tuple[_Conn, bytes]) -> None:
        """Run one request on a worker thread and reply; then close the connection here when it is
        done (a failed reply, a bad request, or the client's end of stream already there: a
        one-request client shuts down its sending side, see protocol.request), else hand it back
        to the loop for its next request."""
        conn, body = job
        keep = False
        try:
            keep = self.requests.serve(conn.sock, conn.pid, conn.uid, body) and not _ended(conn.sock)
        finally:
            del body  # may hold a password
            if keep:
                self._done.append(conn)
                self._wake()
            elif self._close(conn):
                self._wake()

    def _connections(self) -> dict[str, Any]:
        """The connection figures root's ``status`` shows."""
        return {"open": len(self._conns), "refused": self.refused, "accept_errors": self.accept_errors,
                "workers": self._pool.threads, "max_connections": self.limits.max_connections,
                "max_connections_per_uid": self.limits.max_connections_per_uid}
