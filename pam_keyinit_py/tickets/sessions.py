"""The session table: open login sessions per uid, and the reaper of sessions whose process died.

A session is registered by the process that called ``pam_open_session`` (found with
SO_PEERCRED: in sshd that is the per-connection monitor, under pamtester pamtester
itself).  That process lives as long as the login, so its death without a
close_session means the session is gone: the reaper watches it through a pidfd
(pidfd_open(2)) in one epoll set, so the service learns of the exit at once without
polling.  The (pid, start time) pair guards against pid reuse across restarts.
"""

from __future__ import annotations

import itertools
import logging
import os
import select
import threading
from collections.abc import Callable
from dataclasses import dataclass

from .state import process_start_time

log = logging.getLogger("keyinit-ticketd")


@dataclass(slots=True)
class Session:
    """One open login session."""

    sid: int
    uid: int
    gid: int
    user: str
    pid: int
    pid_start: int
    opened: float

    encoded: str = ""  # to_json() as JSON text, made once: a session never changes

    def to_json(self) -> dict[str, object]:
        return {"sid": self.sid, "uid": self.uid, "gid": self.gid, "user": self.user, "pid": self.pid,
                "pid_start": self.pid_start, "opened": self.opened}

    def json_text(self) -> str:
        if not self.encoded:
            import json

            self.encoded = json.dumps(self.to_json(), separators=(",", ":"))
        return self.encoded


class SessionTable:
    """Sessions by id and by uid.  Not thread-safe: the service holds its lock around every call."""

    def __init__(self) -> None:
        self.by_sid: dict[int, Session] = {}
        self.by_uid: dict[int, set[int]] = {}
        self._ids = itertools.count(1)

    def add(self, uid: int, gid: int, user: str, pid: int, pid_start: int, opened: float,
            sid: int | None = None) -> Session:
        """Register a session; returns it with a fresh sid (or the given one when restoring)."""
        if sid is None:
            sid = next(self._ids)
        else:
            # Restored ids must never be handed out again.
            self._ids = itertools.count(max(sid + 1, next(self._ids)))
        session = Session(sid, uid, gid, user, pid, pid_start, opened)
        self.by_sid[sid] = session
        self.by_uid.setdefault(uid, set()).add(sid)
        return session

    def remove(self, sid: int) -> Session | None:
        """Forget a session; returns it, or None if it was not open."""
        session = self.by_sid.pop(sid, None)
        if session is not None:
            sids = self.by_uid.get(session.uid)
            if sids is not None:
                sids.discard(sid)
                if not sids:
                    del self.by_uid[session.uid]
        return session

    def find(self, uid: int, pid: int, sid: int | None) -> Session | None:
        """The session to close: by sid if given and it matches the uid, else the uid's one from ``pid``."""
        if sid is not None:
            session = self.by_sid.get(sid)
            if session is not None and session.uid == uid:
                return session
        candidates = [self.by_sid[s] for s in self.by_uid.get(uid, ())]
        same_pid = [s for s in candidates if s.pid == pid]
        if same_pid:
            return max(same_pid, key=lambda s: s.sid)
        return None

    def count(self, uid: int) -> int:
        return len(self.by_uid.get(uid, ()))

    def uids(self) -> list[int]:
        return list(self.by_uid)

    def __len__(self) -> int:
        return len(self.by_sid)


class Reaper:
    """Calls ``on_exit(sid)`` when the process that opened session ``sid`` exits.

    One daemon thread waits in epoll on pidfds (a pidfd becomes readable when its
    process exits).  Registration from other threads is safe: epoll_ctl(2) is.
    """

    def __init__(self, on_exit: Callable[[int], None]) -> None:
        self._on_exit = on_exit
        self._epoll = select.epoll()
        self._fds: dict[int, int] = {}  # pidfd -> sid
        self._by_sid: dict[int, int] = {}  # sid -> pidfd
        self._lock = threading.Lock()
        self._raise_fd_limit()
        self._thread = threading.Thread(target=self._run, name="reaper", daemon=True)
        self._thread.start()

    @staticmethod
    def _raise_fd_limit() -> None:
        # One pidfd per session: lift the soft RLIMIT_NOFILE to the hard limit.
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            except (ValueError, OSError):
                pass

    def watch(self, sid: int, pid: int, pid_start: int) -> bool:
        """Start watching; False (and on_exit is not called) if the process is already gone."""
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return False
        except OSError as exc:
            log.warning("session %d: cannot watch pid %d (%s); it is reaped only at close", sid, pid,
                        exc.strerror)
            return True
        # The pidfd pins this pid: if the start time still matches, it is the same process.
        if process_start_time(pid) != pid_start:
            os.close(fd)
            return False
        with self._lock:
            self._fds[fd] = sid
            self._by_sid[sid] = fd
            self._epoll.register(fd, select.EPOLLIN)
        return True

    def unwatch(self, sid: int) -> None:
        """Stop watching ``sid``; its pidfd is closed under the lock (see :meth:`_exited`)."""
        with self._lock:
            fd = self._by_sid.pop(sid, None)
            if fd is None:
                return
            self._drop(fd)

    def _drop(self, fd: int) -> None:
        # Caller holds self._lock.
        self._fds.pop(fd, None)
        try:
            self._epoll.unregister(fd)
        except OSError:
            pass
        os.close(fd)

    def _exited(self, fd: int) -> int | None:
        """The session whose process exited, for an epoll event on ``fd``; None for a stale event.

        epoll reports fd numbers, and between epoll_wait returning and this call, unwatch()
        may have closed that fd and watch() reused its number for a new, live session.  So
        the pidfd now behind ``fd`` is polled, under the lock that watch/unwatch hold: only
        a pidfd whose process really exited is readable.
        """
        with self._lock:
            sid = self._fds.get(fd)
            if sid is None:
                return None
            ready = select.poll()
            ready.register(fd, select.POLLIN)
            if not ready.poll(0):
                return None
            self._by_sid.pop(sid, None)
            self._drop(fd)
            return sid

    def _run(self) -> None:
        while True:
            try:
                events = self._epoll.poll()
            except InterruptedError:
                continue
            for fd, _mask in events:
                sid = self._exited(fd)
                if sid is None:
                    continue
                try:
                    self._on_exit(sid)
                except Exception:  # the reaper must outlive any one bad callback
                    log.exception("reaping session %d failed", sid)
