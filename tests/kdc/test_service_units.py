"""The service's pure parts: the timer heap sleeps instead of polling, config and schema checks.

No KDC needed; these run in-process against the real modules (the scheduler's thread is real).
"""

from __future__ import annotations

import threading
import time

import pytest

from pam_keyinit_py import protocol as P
from pam_keyinit_py.tickets import config as cfg
from pam_keyinit_py.tickets.scheduler import Scheduler, backoff, renew_due


def test_scheduler_sleeps_until_due_without_polling():
    sched = Scheduler()
    sched.start()
    try:
        time.sleep(0.5)
        assert sched.wakeups == 0  # nothing due: the thread waits on its condition, untouched
        fired = threading.Event()
        t0 = time.time()
        sched.schedule("a", t0 + 0.8, fired.set)
        assert fired.wait(3)
        assert time.time() - t0 >= 0.75
        # One wake to pick up the new earliest entry, one when it fell due (plus spurious slack).
        assert sched.wakeups <= 3, sched.wakeups
    finally:
        sched.stop()


def test_scheduler_replace_and_cancel_and_order():
    sched = Scheduler()
    ran: list[str] = []
    now = time.time()
    sched.schedule("x", now + 0.3, lambda: ran.append("x-old"))
    sched.schedule("x", now + 0.1, lambda: ran.append("x"))  # replaces the first
    sched.schedule("y", now + 0.05, lambda: ran.append("y"))
    sched.schedule("z", now + 0.02, lambda: ran.append("z"))
    sched.cancel("z")
    sched.start()
    try:
        time.sleep(0.6)
    finally:
        sched.stop()
    assert ran == ["y", "x"]


def test_renew_due_and_backoff():
    assert renew_due(1000, 1030, 0.5, now=1000) == 1015
    assert renew_due(1000, 1030, 0.2, now=1000) == 1006
    # Past the planned point (a late start): soon, inside the remaining life.
    assert 1020 < renew_due(1000, 1030, 0.5, now=1020) <= 1021
    # Back-off doubles, capped by retry_max and by a quarter of what is left.
    assert [backoff(n, 1, 60, endtime=10_000, now=0) for n in (1, 2, 3, 4)] == [1, 2, 4, 8]
    assert backoff(10, 1, 60, endtime=10_000, now=0) == 60
    assert backoff(10, 1, 60, endtime=20, now=0) == 5


def test_config_defaults_and_errors(tmp_path):
    assert cfg.load(str(_write(tmp_path, ""))) == cfg.Config()
    c = cfg.load(str(_write(tmp_path, 'clear_on_logout = "all"\nrenew_fraction = 0.3\n'
                                      '[[keytab]]\nprincipal = "a@R"\nkeytab = "/k"\nuid = 0\n')))
    assert c.clear_on_logout == "all" and c.renew_fraction == 0.3
    assert c.keytabs[0].ccache == "KEYRING:persistent:0" and c.keytabs[0].gid == 0
    cases = [('clear_on_logout = "some"', "clear_on_logout"), ("renew_fraction = 2", "renew_fraction"),
             ("sockett = 1", "sockett"), ("socket = 1", "socket"), ("[[keytab]]\nuid = 0", "missing"),
             ("x = [", "t.toml")]
    for text, word in cases:
        with pytest.raises(cfg.ConfigError, match=word):
            cfg.load(str(_write(tmp_path, text)))
    with pytest.raises(cfg.ConfigError, match="no such file"):
        cfg.load(str(tmp_path / "absent.toml"))


def _write(tmp_path, text: str):
    path = tmp_path / "t.toml"
    path.write_text(text + "\n")
    return path


def test_request_schema():
    P.validate_request({"v": 1, "op": "close", "uid": 5})
    for bad in ({"v": 1, "op": "close"}, {"v": 1, "op": "close", "uid": -1},
                {"v": 1, "op": "destroy", "ccache": "a\0b"}, {"v": 1, "op": "auth", "user": "u", "uid": 1,
                                                              "gid": 1, "password": "x" * 5000}):
        with pytest.raises(P.ProtocolError):
            P.validate_request(bad)
    # A client never sends what the service would refuse.
    with pytest.raises(P.ProtocolError):
        P.request({"op": "nope"}, "/nonexistent")
    assert P.request({"op": "status"}, "/nonexistent/sock")["code"] == P.UNAVAILABLE


def test_scheduler_pool_runs_other_keys_while_one_blocks_and_never_one_key_twice():
    """A job blocked (as on a silent KDC) does not hold the others; a job due while its key's
    previous one still runs waits for it instead of running beside it."""
    sched = Scheduler(workers=2)
    release = threading.Event()
    other_ran = threading.Event()
    running: list[str] = []
    overlap: list[str] = []
    lock = threading.Lock()

    def blocked(tag: str) -> None:
        with lock:
            if "a" in running:
                overlap.append(tag)
            running.append("a")
        release.wait(5)
        with lock:
            running.remove("a")

    sched.start()
    try:
        now = time.time()
        sched.schedule("a", now, lambda: blocked("first"))
        time.sleep(0.2)
        sched.schedule("a", now, lambda: blocked("second"))  # due at once, while "a" runs
        sched.schedule("b", now, other_ran.set)
        assert other_ran.wait(3), "a blocked job held the other key's job"
        time.sleep(0.3)
        assert running == ["a"] and sched.due("a") is not None  # the second waits, not beside it
        release.set()
        deadline = time.time() + 3
        while (sched.due("a") is not None or running) and time.time() < deadline:
            time.sleep(0.05)
        assert sched.due("a") is None and running == []  # and ran after the first ended
        assert overlap == []
    finally:
        release.set()
        sched.stop()


def test_kdc_slots_bound_helpers_and_one_per_key():
    from pam_keyinit_py.tickets import errors, plumbing
    from pam_keyinit_py.tickets.kdclimit import SLOTS

    SLOTS.configure(2)
    release = threading.Event()
    results: list[object] = []

    def call(key: object) -> None:
        try:
            results.append(plumbing.bounded(lambda: release.wait(10), 0.2, "test", key=key))
        except errors.KdcUnreachable as exc:
            results.append(str(exc))

    try:
        call(("renew", "x"))  # gives up after 0.2 s; its helper still blocks, holding the key
        assert "no KDC answered" in str(results[-1])
        call(("renew", "x"))
        assert "previous exchange for it is still waiting" in str(results[-1])
        call(None)  # the second slot; the helper blocks too
        call(None)
        assert "already waiting for the KDC" in str(results[-1])
        assert SLOTS.snapshot()["in_flight"] == 2
    finally:
        release.set()
        SLOTS.configure(16)
    deadline = time.time() + 3
    while SLOTS.snapshot()["in_flight"] and time.time() < deadline:
        time.sleep(0.05)
    assert SLOTS.snapshot()["in_flight"] == 0


def test_kdc_slots_a_burst_queues_for_a_free_slot_within_its_bound():
    """All slots taken: the next exchange waits for one (within its timeout) instead of failing.

    25 concurrent ssh logins against max_kdc_calls = 16 lost 1-49 of 100 logins when the
    refusal was immediate.
    """
    from pam_keyinit_py.tickets import plumbing
    from pam_keyinit_py.tickets.kdclimit import SLOTS

    SLOTS.configure(1)
    release = threading.Event()
    try:
        first = threading.Thread(target=lambda: plumbing.bounded(lambda: release.wait(10), 5.0, "first"))
        first.start()
        deadline = time.time() + 3
        while SLOTS.snapshot()["in_flight"] == 0 and time.time() < deadline:
            time.sleep(0.01)
        threading.Timer(0.3, release.set).start()
        assert plumbing.bounded(lambda: "answered", 5.0, "second") == "answered"
        first.join(5)
    finally:
        release.set()
        SLOTS.configure(16)
