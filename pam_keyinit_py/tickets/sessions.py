"""The session table: open login sessions per uid, and the reaper of sessions whose process died.

A session is registered by the process that called ``pam_open_session`` (found with
SO_PEERCRED: in sshd that is the per-connection monitor, under pamtester pamtester
itself).  That process lives as long as the login, so its death without a
close_session means the session is gone: the reaper watches it through a pidfd
(pidfd_open(2)) in one epoll set, so the service learns of the exit at once without
polling.  The (pid, start time) pair guards against pid reuse across restarts.  A process
that cannot get a pidfd (the service is out of descriptors) is looked at on a timer instead,
until it exits or a pidfd can be made.
"""

from __future__ import annotations

import itertools
import logging
import os
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .state import start_time_of

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

    encoded: str = ""  # to_json() as JSON text, made once (reset when a start time unknown at open is read)

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


#: Seconds between looks at the sessions whose process could not be watched (see :class:`Reaper`).
UNWATCHED_RETRY = 5.0

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def boot_ticks(at: float | None = None) -> int:
    """CLOCK_BOOTTIME now (or at wall-clock time ``at``) in clock ticks: the clock of the start
    times in /proc/<pid>/stat.  A process with pid P whose start time is at most this value,
    taken while the opener with pid P was alive, is that opener (two live processes never share
    a pid)."""
    now = time.clock_gettime(time.CLOCK_BOOTTIME)
    if at is not None:
        now -= time.time() - at
    return int(now * _CLK_TCK)


def _pid_used(pid: int) -> bool:
    """Whether some process has ``pid`` (kill(2) with signal 0: needs no descriptor)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


class Reaper:
    """Calls ``on_exit(sid)`` when the process that opened session ``sid`` exits.

    One daemon thread waits in epoll on pidfds (a pidfd becomes readable when its
    process exits).  Registration from other threads is safe: epoll_ctl(2) is.

    A process that cannot be watched when its session opens (pidfd_open(2) or the read of
    /proc/<pid>/stat fails with EMFILE, ENFILE or ENOMEM: the service is out of descriptors or
    memory; or epoll_ctl(2) fails with ENOMEM, or ENOSPC at fs.epoll.max_user_watches) is
    looked at again every :data:`UNWATCHED_RETRY` seconds by the same thread: it is
    reaped as soon as kill(pid, 0) (no descriptor needed) says ESRCH or /proc shows another
    process under its pid, and watched through a pidfd once one can be made.  It used to be left
    unwatched, so a crashed login's ticket was renewed forever.  A session whose start time the
    service could not read either (``pid_start`` 0) is named by ``alive_at`` instead (see
    :func:`boot_ticks`); ``on_start(sid, start)`` reports its start time once read.
    """

    def __init__(self, on_exit: Callable[[int], None],
                 on_start: Callable[[int, int], None] | None = None) -> None:
        self._on_exit = on_exit
        self._on_start = on_start
        self._epoll = select.epoll()
        self._fds: dict[int, int] = {}  # pidfd -> sid
        self._by_sid: dict[int, int] = {}  # sid -> pidfd
        self._unwatched: dict[int, tuple[int, int, int]] = {}  # sid -> (pid, pid_start, alive_at)
        self.looks = 0  # rounds of looks at the unwatched sessions
        # Sessions whose process is gone, taken off the watch lists, to report (thread's own).
        self._gone: list[int] = []
        self._lock = threading.Lock()
        self._raise_fd_limit()
        # Wakes the thread when a session joins _unwatched (its poll then gets a timeout).
        self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._epoll.register(self._wake, select.EPOLLIN)
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

    def watch(self, sid: int, pid: int, pid_start: int, alive_at: int = 0) -> bool:
        """Start watching; False (and on_exit is not called) if the process is already gone.

        ``pid_start`` 0 means its start time is unknown: then the process under ``pid`` is the
        session's if it started no later than ``alive_at`` (:func:`boot_ticks` while it was alive).
        """
        try:
            found = self._attach(pid, pid_start, alive_at)
        except OSError as exc:
            log.warning("session %d: cannot watch pid %d now (%s); looking at it every %gs until it can",
                        sid, pid, exc.strerror, UNWATCHED_RETRY)
            with self._lock:
                self._unwatched[sid] = (pid, pid_start, alive_at)
            os.eventfd_write(self._wake, 1)
            return True
        if found is None:
            return False
        with self._lock:
            watched = self._register(found[0], sid, pid, pid_start, alive_at)
        if not watched:
            os.eventfd_write(self._wake, 1)
        self._started(sid, pid_start, found[1])
        return True

    def _attach(self, pid: int, pid_start: int, alive_at: int) -> tuple[int, int] | None:
        """A pidfd of the session's process (pidfd_open(2)) and its start time; None if that
        process is gone (its pid is empty, or names a process that is not the session's).

        Raises OSError when there is no pidfd to be had now (out of descriptors or memory), or
        the start time cannot be read to check the pidfd's process.
        """
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return None
        except OSError as exc:
            unwatchable = exc
            fd = -1
        try:
            # A pidfd pins the process: if its start time matches, the pidfd is the session's.
            start = start_time_of(pid)
        except OSError:
            if fd >= 0:
                os.close(fd)
            elif not _pid_used(pid):
                return None
            raise
        same = start == pid_start if pid_start else start is not None and start <= alive_at
        if not same:
            if fd >= 0:
                os.close(fd)
            return None
        if fd < 0:
            raise unwatchable
        assert start is not None
        return fd, start

    def _started(self, sid: int, pid_start: int, start: int) -> None:
        """Report the start time of a session that had none (read while its pidfd pinned the pid)."""
        if not pid_start and self._on_start is not None:
            try:
                self._on_start(sid, start)
            except Exception:  # only the state file misses it; the watch stands
                log.exception("recording the start time of session %d failed", sid)

    def _register(self, fd: int, sid: int, pid: int, pid_start: int, alive_at: int) -> bool:
        """Add the pidfd ``fd`` of session ``sid``'s process to the epoll set (epoll_ctl(2)
        EPOLL_CTL_ADD); False if that failed (ENOMEM, or ENOSPC at fs.epoll.max_user_watches):
        then ``fd`` is closed and the session is on the unwatched list, looked at again later.
        Caller holds self._lock.

        The dicts are filled only after the add: filled first, a failed add left the session
        off every list (never reaped) and its pidfd open.
        """
        try:
            self._epoll.register(fd, select.EPOLLIN)
        except OSError as exc:
            os.close(fd)
            log.warning("session %d: cannot watch pid %d now (epoll: %s); looking at it every %gs "
                        "until it can", sid, pid, exc.strerror, UNWATCHED_RETRY)
            self._unwatched[sid] = (pid, pid_start, alive_at)
            return False
        self._fds[fd] = sid
        self._by_sid[sid] = fd
        return True

    def unwatch(self, sid: int) -> None:
        """Stop watching ``sid``; its pidfd is closed under the lock (see :meth:`_exited`)."""
        with self._lock:
            self._unwatched.pop(sid, None)
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

    def _look_again(self) -> None:
        """One look at the unwatched sessions: watch those that can be now; those whose process
        is gone are taken off the list and put on ``_gone``."""
        with self._lock:
            todo = list(self._unwatched.items())
        for sid, (pid, pid_start, alive_at) in todo:
            try:
                found = self._attach(pid, pid_start, alive_at)
            except OSError:
                continue
            with self._lock:
                if self._unwatched.pop(sid, None) is None:  # unwatched meanwhile (closed)
                    if found is not None:
                        os.close(found[0])
                    continue
                if found is None:
                    self._gone.append(sid)
                    continue
                if not self._register(found[0], sid, pid, pid_start, alive_at):
                    continue  # back on the unwatched list
            log.info("session %d: pid %d is watched now", sid, pid)
            self._started(sid, pid_start, found[1])
        self.looks += 1

    def _run(self) -> None:
        """The thread: rounds of epoll_wait(2) and looks, for ever.  A round that raises is logged
        and the next one comes after :data:`UNWATCHED_RETRY` seconds (a fault that repeats must not
        spin): one escaped exception used to end the thread, and no session was reaped again."""
        look_at = 0.0  # monotonic time of the next look at the unwatched sessions
        while True:
            try:
                look_at = self._round(look_at)
            except Exception:
                log.exception("reaper: watching sessions failed; trying again in %gs", UNWATCHED_RETRY)
                look_at = 0.0
                time.sleep(UNWATCHED_RETRY)
            self._report_gone()

    def _round(self, look_at: float) -> float:
        """Wait for pidfd events (until the next look, if any session is unwatched); put the
        sessions whose process exited on ``_gone``; return the time of the next look."""
        timeout = -1.0
        if self._unwatched:
            now = time.monotonic()
            if not look_at:
                look_at = now + UNWATCHED_RETRY
            timeout = max(0.0, look_at - now)
        try:
            events = self._epoll.poll(timeout)
        except InterruptedError:
            return look_at
        for fd, _mask in events:
            if fd == self._wake:
                os.eventfd_read(self._wake)
                continue
            sid = self._exited(fd)
            if sid is not None:
                self._gone.append(sid)
        if look_at and time.monotonic() >= look_at:
            look_at = 0.0
            self._look_again()
        return look_at

    def _report_gone(self) -> None:
        """Call ``on_exit`` for each session on ``_gone``: kept there across a failed round, so a
        session taken off the watch lists is reported all the same."""
        while self._gone:
            sid = self._gone.pop(0)
            try:
                self._on_exit(sid)
            except Exception:  # the reaper must outlive any one bad callback
                log.exception("reaping session %d failed", sid)
