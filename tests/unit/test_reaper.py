"""tickets.reaper: the destroy-later thread, driven through its own API with a recording destroy."""

from __future__ import annotations

import threading

from pam_keyinit_py.tickets.reaper import Reaper


class Recorder:
    def __init__(self) -> None:
        self.done: list[tuple[str, int, int, str | None]] = []
        self.event = threading.Event()

    def __call__(self, name: str, uid: int, gid: int, conf: str | None) -> None:
        self.done.append((name, uid, gid, conf))
        self.event.set()


def test_a_due_cache_is_destroyed_by_the_thread_and_leaves_pending() -> None:
    rec = Recorder()
    reaper = Reaper(rec)
    reaper.add("KEYRING:persistent:5:a", 5, 50, "/etc/k.conf", 0.0)
    assert rec.event.wait(10), "the reaper thread never destroyed the due cache"
    assert rec.done == [("KEYRING:persistent:5:a", 5, 50, "/etc/k.conf")]
    assert reaper.pending(5) == set()


def test_flush_destroys_one_uids_waiting_caches_now_and_keeps_the_others() -> None:
    rec = Recorder()
    reaper = Reaper(rec)
    reaper.add("KEYRING:persistent:5:a", 5, 5, None, 3600)
    reaper.add("KEYRING:persistent:5:b", 5, 5, None, 3600)
    reaper.add("KEYRING:persistent:6:c", 6, 6, None, 3600)
    assert reaper.pending(5) == {"KEYRING:persistent:5:a", "KEYRING:persistent:5:b"}
    assert rec.done == []  # an hour's grace: nothing destroyed yet
    assert reaper.flush(5) == 2
    assert sorted(n for n, *_ in rec.done) == ["KEYRING:persistent:5:a", "KEYRING:persistent:5:b"]
    assert reaper.pending(5) == set() and reaper.pending(6) == {"KEYRING:persistent:6:c"}
    assert reaper.flush() == 1 and reaper.pending(6) == set()
    assert len(rec.done) == 3


def test_two_reapers_are_independent() -> None:
    """The service owns its own Reaper: flushing it leaves the process-wide one alone."""
    mine, other = Recorder(), Recorder()
    a, b = Reaper(mine), Reaper(other)
    a.add("KEYRING:persistent:7:x", 7, 7, None, 3600)
    b.add("KEYRING:persistent:7:y", 7, 7, None, 3600)
    assert a.flush(7) == 1 and mine.done and not other.done
    assert b.pending(7) == {"KEYRING:persistent:7:y"}
    b.flush()
