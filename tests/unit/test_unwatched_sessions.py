"""Sessions whose process the service cannot watch when they open (out of descriptors or memory).

The reaper watches each session's opener through a pidfd; pidfd_open(2) and the open of
/proc/<pid>/stat both need a descriptor.  Here they fail with EMFILE, as in a service that ran
out of descriptors, injected at those two calls (os.pidfd_open, and open() as tickets/state.py
calls it); the service is started as keyinit-ticketd starts it, and the processes, kill(2), the
reaper's thread and the session bookkeeping are real; the Kerberos side is tests/unit/fakekrb.py.
Such a session used to stay registered, unwatched, for ever: a crashed login's ticket was
renewed and never cleared.
"""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pam_keyinit_py.tickets import sessions
from pam_keyinit_py.tickets import state as statefile
from pam_keyinit_py.tickets.config import Config
from pam_keyinit_py.tickets.core import Peer
from pam_keyinit_py.tickets.service import Service
from tests.unit.fakekrb import FakeKrb

UID = 4_100_000  # no passwd entry: primary_gid() answers the uid itself


class OutOfDescriptors:
    """pidfd_open(2) and/or the open of /proc/<pid>/stat fail with EMFILE while switched on."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.pidfd = self.proc = False
        #: /proc/<pid>/stat texts to answer instead of the kernel's (a later process under a pid).
        self.stat: dict[str, bytes] = {}
        real_pidfd = os.pidfd_open

        def pidfd_open(pid: int, flags: int = 0) -> int:
            if self.pidfd:
                raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
            return real_pidfd(pid, flags)

        def proc_open(path: Any, *args: Any, **kwargs: Any) -> Any:
            if str(path).startswith("/proc/"):
                if self.proc:
                    raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
                if str(path) in self.stat:
                    return io.BytesIO(self.stat[str(path)])
            return open(path, *args, **kwargs)

        monkeypatch.setattr(os, "pidfd_open", pidfd_open)
        monkeypatch.setattr(statefile, "open", proc_open, raising=False)  # found before the builtin

    def set(self, on: bool) -> None:
        self.pidfd = self.proc = on


class FailingEpoll:
    """The reaper's epoll set, whose next ``fail`` adds (epoll_ctl(2) EPOLL_CTL_ADD) fail with
    ENOMEM, as out of kernel memory (ENOSPC at fs.epoll.max_user_watches is alike); everything
    else is the real epoll set."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.fail = 0
        self.failed: list[int] = []  # the fds whose add failed
        self.poll_fail = 0  # the next waits that raise something no code path expects
        self.poll_failed = 0

    def register(self, fd: int, mask: int) -> None:
        if self.fail:
            self.fail -= 1
            self.failed.append(fd)
            raise OSError(errno.ENOMEM, os.strerror(errno.ENOMEM))
        self.real.register(fd, mask)

    def poll(self, timeout: float = -1) -> list[tuple[int, int]]:
        if self.poll_fail:
            self.poll_fail -= 1
            self.poll_failed += 1
            raise RuntimeError("an unexpected fault in the reaper's round")
        return self.real.poll(timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def _pidfds_of(pid: int) -> int:
    """How many of this process's descriptors are pidfds of ``pid`` (/proc/self/fdinfo's Pid line)."""
    count = 0
    for fd in os.listdir("/proc/self/fdinfo"):
        try:
            with open(f"/proc/self/fdinfo/{fd}") as fh:
                text = fh.read()
        except OSError:
            continue
        count += f"\nPid:\t{pid}\n" in text
    return count


@pytest.fixture
def krb() -> FakeKrb:
    return FakeKrb()


@pytest.fixture
def svc(tmp_path, krb, monkeypatch) -> Iterator[Service]:  # noqa: ANN001
    monkeypatch.setattr(sessions, "UNWATCHED_RETRY", 0.05, raising=False)
    service = Service(Config(state_file=str(tmp_path / "state.json")), krb=krb)
    service.start()
    yield service
    service.stop()


@pytest.fixture
def fds(monkeypatch) -> OutOfDescriptors:  # noqa: ANN001
    return OutOfDescriptors(monkeypatch)


@pytest.fixture
def opener() -> Iterator[subprocess.Popen[bytes]]:
    """The session's opener (sshd's monitor): a live root process of its own."""
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


def _until(predicate: Callable[[], Any], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"never happened within {timeout}s: {what}")
        time.sleep(0.01)


def _looked(svc: Service, rounds: int) -> None:
    """Wait until the reaper has looked at its unwatched sessions ``rounds`` more times."""
    assert svc.reaper is not None
    start = svc.reaper.looks
    _until(lambda: svc.reaper.looks >= start + rounds, f"{rounds} looks at the unwatched sessions")


def _login(svc: Service, opener: subprocess.Popen[bytes]) -> tuple[Peer, str, int]:
    peer = Peer(opener.pid, 0)
    name = svc.auth(peer, "u", UID, UID, "pw")["ccache"]
    opened = svc.open(peer, "u", UID, UID)
    assert opened["ok"], opened
    return peer, name, opened["sid"]


def test_an_unwatchable_session_is_reaped_when_its_process_dies_without_close(svc, krb, fds, opener) -> None:
    """Out of descriptors at the open and after: the crashed login's ticket is still cleared
    (kill(pid, 0) needs no descriptor).  It was renewed for ever."""
    fds.set(True)
    _peer, name, sid = _login(svc, opener)
    assert sid in svc.sessions.by_sid and krb.destroyed == []
    opener.kill()
    opener.wait()
    _until(lambda: krb.destroyed == [name], "the dead login's ticket cleared")
    assert svc.sessions.count(UID) == 0 and svc.tickets == {}


def test_an_unwatchable_session_is_watched_once_descriptors_are_free_again(svc, krb, fds, opener) -> None:
    """A live unwatched session keeps its ticket through the reaper's looks; descriptors free
    again, it gets its pidfd, its start time (unknown at the open) is recorded for a restart, and
    its process's exit is noticed through the pidfd."""
    fds.set(True)
    _peer, name, sid = _login(svc, opener)
    assert svc.sessions.by_sid[sid].pid_start == 0
    _looked(svc, 3)
    assert sid in svc.sessions.by_sid and krb.destroyed == []  # alive: kept
    fds.set(False)
    assert svc.reaper is not None
    _until(lambda: sid in svc.reaper._by_sid, "a pidfd watch of the session")
    assert svc.sessions.by_sid[sid].pid_start == statefile.process_start_time(opener.pid)
    assert f'"pid_start":{statefile.process_start_time(opener.pid)}' in svc.sessions.by_sid[sid].json_text()
    assert krb.destroyed == []
    opener.kill()
    opener.wait()
    _until(lambda: krb.destroyed == [name], "the dead login's ticket cleared")


def test_a_start_time_unreadable_after_the_pidfd_does_not_end_a_live_session(svc, krb, fds, opener) -> None:
    """pidfd_open takes the last descriptor and /proc/<pid>/stat cannot be opened: the opener is
    alive, so its session must open and keep its ticket.  It was ended at once as "already gone"."""
    fds.proc = True
    _peer, name, sid = _login(svc, opener)
    assert sid in svc.sessions.by_sid and krb.destroyed == [] and name in svc.tickets
    fds.proc = False
    assert svc.reaper is not None
    _until(lambda: sid in svc.reaper._by_sid, "a pidfd watch of the session")


@pytest.mark.parametrize("start_known", [True, False])
def test_a_later_process_under_the_pid_of_an_unwatched_session_does_not_keep_it(svc, krb, fds, opener,
                                                                                start_known) -> None:
    """The opener died and its pid went to a process started after the open (pid reuse): kill(pid, 0)
    succeeds, but /proc shows a later start time, so the session is reaped all the same.  With the
    start time unknown at the open, "later" means after the open."""
    fds.pidfd, fds.proc = True, not start_known
    _peer, name, sid = _login(svc, opener)
    assert sid in svc.sessions.by_sid
    path = f"/proc/{opener.pid}/stat"
    with open(path, "rb") as fh:
        head, _, rest = fh.read().rpartition(b") ")
    fields = rest.split(b" ")
    fields[22 - 3] = str(int(fields[22 - 3]) + 1000 * os.sysconf("SC_CLK_TCK")).encode()  # +1000 s
    fds.stat[path] = head + b") " + b" ".join(fields)
    fds.set(False)  # descriptors free again: pidfd_open works, /proc shows the later process
    _until(lambda: krb.destroyed == [name], "the session of the reused pid reaped")
    assert svc.sessions.count(UID) == 0


def test_a_restart_keeps_a_live_session_whose_start_time_the_open_could_not_read(svc, krb, fds,
                                                                                opener) -> None:
    """The state file says pid_start 0 (unknown at the open, and no pidfd since): a restarted
    service must keep the live session, its opener having run since before the open.  It reaped
    it (0 is no process's start time) and cleared its ticket."""
    fds.set(True)
    _peer, name, sid = _login(svc, opener)
    with svc.lock:
        statefile.save(svc.config.state_file, *svc._snapshot())
    with open(svc.config.state_file) as fh:
        assert json.load(fh)["sessions"][0]["pid_start"] == 0
    svc.stop()
    fds.set(False)
    restored = Service(Config(state_file=svc.config.state_file), krb=krb)
    restored.start()
    try:
        assert sid in restored.sessions.by_sid and name in restored.tickets and krb.destroyed == []
        assert restored.sessions.by_sid[sid].pid_start == statefile.process_start_time(opener.pid)
    finally:
        restored.stop()


@pytest.mark.parametrize("at", ["open", "look"])
def test_a_failed_epoll_add_neither_loses_the_session_nor_ends_the_reaper(svc, krb, fds, opener, at) -> None:
    """epoll_ctl(2) fails once (ENOMEM) to add the session's pidfd, at the open (``open``) or at a
    later look at an unwatched session (``look``): the pidfd is closed, the session is looked at
    again and watched, and its process's death is still noticed.  The failed add used to escape:
    at a look it ended the reaper's thread (no session was reaped again until a restart), and
    both ways it left the session on no list, its pidfd open."""
    assert svc.reaper is not None
    epoll = svc.reaper._epoll = FailingEpoll(svc.reaper._epoll)
    fds.set(at == "look")
    epoll.fail = 1
    _peer, name, sid = _login(svc, opener)
    fds.set(False)
    _until(lambda: epoll.failed, "the failed add")
    _until(lambda: sid in svc.reaper._by_sid and not svc.reaper._unwatched, "a pidfd watch of the session")
    assert _pidfds_of(opener.pid) == 1, "the pidfd of the failed add was left open"
    assert svc.reaper._thread.is_alive() and krb.destroyed == []
    opener.kill()
    opener.wait()
    _until(lambda: krb.destroyed == [name], "the dead login's ticket cleared")
    assert svc.sessions.count(UID) == 0 and svc.reaper._thread.is_alive()


def test_an_unexpected_fault_in_a_reaper_round_does_not_end_its_thread(svc, krb, opener) -> None:
    """Anything a round of the reaper's thread raises is logged and the next round comes: the
    thread used to end at the first escaped exception, and no session was reaped again."""
    assert svc.reaper is not None
    epoll = svc.reaper._epoll = FailingEpoll(svc.reaper._epoll)
    _peer, name, sid = _login(svc, opener)
    assert sid in svc.reaper._by_sid
    epoll.poll_fail = 1
    os.eventfd_write(svc.reaper._wake, 1)  # the thread's next wait is the failing one
    _until(lambda: epoll.poll_failed, "the failed round")
    opener.kill()
    opener.wait()
    _until(lambda: krb.destroyed == [name], "the dead login's ticket cleared")
    assert svc.reaper._thread.is_alive()
