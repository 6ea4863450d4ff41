"""The KDC slots' CPU gate (tickets/kdclimit.py): beyond ``soft`` exchanges in flight, a new one
waits for a running one to end while the CPUs are saturated, at most ``gate_max`` seconds."""

from __future__ import annotations

import multiprocessing
import threading
import time

from pam_keyinit_py.tickets.kdclimit import CpuPressure, KdcSlots, cpus
from tests.conftest import require


def _until(check, timeout: float = 5.0) -> bool:  # noqa: ANN001 - check() -> bool
    """Poll ``check`` until it holds (True) or ``timeout`` passes (False)."""
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            return False
        time.sleep(0.005)
    return True


def _start(slots: KdcSlots, key: object = None, wait: float = 10.0) -> tuple[threading.Thread, list[object]]:
    """acquire() in a thread; its result lands in the returned list."""
    out: list[object] = []
    thread = threading.Thread(target=lambda: out.append(slots.acquire(key, wait=wait)), daemon=True)
    thread.start()
    return thread, out


def test_a_saturated_cpu_makes_the_next_exchange_wait_for_a_running_one() -> None:
    slots = KdcSlots(limit=16, soft=2, saturated=lambda: True, gate_max=30.0)
    assert slots.acquire() is None and slots.acquire() is None  # up to soft: no wait
    thread, out = _start(slots)
    assert _until(lambda: slots.gated == 1)
    thread.join(0.2)
    assert thread.is_alive() and out == []  # waiting at the gate, though 14 slots are free
    slots.release()
    thread.join(5)
    assert out == [None]
    assert slots.snapshot() == {"in_flight": 2, "active": 2, "limit": 16, "peak": 2, "refused": 0,
                                "gated": 1}


def test_idle_cpus_open_the_gate() -> None:
    slots = KdcSlots(limit=16, soft=2, saturated=lambda: False, gate_max=30.0)
    for _ in range(5):
        assert slots.acquire(wait=0.0) is None
    assert slots.snapshot()["in_flight"] == 5 and slots.gated == 0


def test_the_gate_takes_at_most_a_quarter_of_the_callers_bound() -> None:
    slots = KdcSlots(limit=16, soft=1, saturated=lambda: True, gate_max=30.0)
    assert slots.acquire() is None
    t = time.monotonic()
    assert slots.acquire(wait=2.0) is None  # nothing ends: starts after 0.5 s, not after 2 s
    assert time.monotonic() - t < 1.5 and slots.gated == 1


def test_an_exchange_its_caller_gave_up_on_is_no_reason_to_gate() -> None:
    slots = KdcSlots(limit=16, soft=1, saturated=lambda: True, gate_max=30.0)
    stuck: dict[str, bool] = {}
    assert slots.acquire() is None
    slots.abandon(stuck)  # bounded's timeout: the helper still waits on a silent KDC
    assert slots.snapshot()["in_flight"] == 1 and slots.active == 0
    assert slots.acquire(wait=5.0) is None and slots.gated == 0  # not held behind it
    slots.release(None, stuck)  # the silent KDC answers at last
    slots.abandon(stuck)  # too late: a no-op
    assert slots.in_flight == 1 and slots.active == 1
    done: dict[str, bool] = {}
    slots.release(None, done)
    slots.abandon(done)  # released first: abandon changes nothing
    assert slots.in_flight == 0 and slots.active == 0


def test_the_gate_is_bounded_and_never_refuses() -> None:
    slots = KdcSlots(limit=16, soft=1, saturated=lambda: True, gate_max=0.2)
    assert slots.acquire() is None
    thread, out = _start(slots)  # nothing ends: after gate_max it starts anyway
    thread.join(5)
    assert out == [None] and slots.in_flight == 2 and slots.gated == 1
    # A caller that cannot wait is not held at the gate at all.
    assert slots.acquire(wait=0.0) is None and slots.gated == 1


def test_the_hard_limit_still_refuses_and_the_gate_keeps_one_exchange_per_key() -> None:
    slots = KdcSlots(limit=3, soft=2, saturated=lambda: True, gate_max=30.0)
    assert slots.acquire() is None and slots.acquire() is None
    a, out_a = _start(slots, key="cache")
    b, out_b = _start(slots, key="cache")
    assert _until(lambda: slots.gated == 2)
    slots.release()  # one slot: one of the two takes it; the other must not start a second exchange
    a.join(5)
    b.join(5)
    results = sorted(map(str, out_a + out_b))
    assert results == ["None", "the previous exchange for it is still waiting for the KDC"]
    assert slots.in_flight == 2  # two held, one released, one taken
    assert slots.acquire("other", wait=0.0) is None  # the third slot
    assert "max_kdc_calls" in str(slots.acquire(wait=0.1))  # limit 3 reached: refused as before


def test_cpu_pressure_without_psi_is_never_saturated(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "pressure"
    pressure = CpuPressure(str(path), interval=0.0)
    assert pressure.read_total() is None
    assert not pressure.saturated() and not pressure.saturated()
    path.write_text("some avg10=99.00 avg60=99.00 avg300=99.00 total=999999999\n")
    assert not pressure.saturated()  # no PSI at the first look: it stops looking


def test_cpu_pressure_reads_the_some_line_over_fresh_windows(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "pressure"
    now = [100.0]

    def psi(some_us: int) -> None:
        path.write_text(f"some avg10=1.00 avg60=1.00 avg300=1.00 total={some_us}\n"
                        f"full avg10=0.00 avg60=0.00 avg300=0.00 total=7\n")

    pressure = CpuPressure(str(path), interval=0.01, window=0.5, clock=lambda: now[0])
    psi(1_000_000)
    assert not pressure.saturated()  # the first reading is only a baseline
    now[0] += 0.1
    psi(1_050_000)  # 50 ms of stall in 100 ms
    assert pressure.saturated()
    psi(1_000)
    assert pressure.saturated()  # within `interval`: the last answer, the file not read
    now[0] += 0.1
    psi(1_060_000)  # 10 ms in 100 ms
    assert not pressure.saturated()
    now[0] += 2.0
    psi(19_000_000)  # after an idle while: the past, not now; a new baseline
    assert not pressure.saturated()
    now[0] += 0.1
    path.write_text("garbage\n")
    assert not pressure.saturated()  # unreadable: no answer, and no baseline kept
    now[0] += 0.1
    psi(99_000_000)
    assert not pressure.saturated()  # a baseline again, not a jump from 19 s to 99 s
    now[0] += 0.1
    psi(99_040_000)
    assert pressure.saturated()


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_cpu_pressure_sees_more_runnable_tasks_than_cpus() -> None:
    pressure = CpuPressure(interval=0.02)
    # Without PSI the gate is off by design; in CI that must not pass unseen.
    require(pressure.read_total() is not None, "this kernel has no PSI (/proc/pressure/cpu)")
    spinners = [multiprocessing.Process(target=_spin, args=(3.0,)) for _ in range(2 * cpus() + 1)]
    for p in spinners:
        p.start()
    try:
        seen = False
        end = time.monotonic() + 2.5
        while not seen and time.monotonic() < end:
            seen = pressure.saturated()
            time.sleep(0.03)
        assert seen
    finally:
        for p in spinners:
            p.terminate()
            p.join()


def test_waiters_at_the_gate_and_at_the_limit_never_exceed_the_limit() -> None:
    busy = [True]
    slots = KdcSlots(limit=2, soft=1, saturated=lambda: busy[0], gate_max=30.0)
    assert slots.acquire() is None  # A
    b, out_b = _start(slots, wait=1.5)  # at the gate: one in flight, CPUs busy
    assert _until(lambda: slots.gated == 1)
    assert out_b == []
    busy[0] = False
    assert slots.acquire(wait=0.0) is None  # C: CPUs idle, the second slot
    d, out_d = _start(slots, wait=1.5)  # at max_kdc_calls, and so is B now
    assert _until(lambda: slots._slot_waiters == 2)
    assert out_b == [] and out_d == [] and slots.in_flight == 2
    slots.release()  # A ends: one of B and D gets its slot, the other is refused at its deadline
    b.join(5)
    d.join(5)
    results = sorted(map(str, out_b + out_d))
    assert results == ["2 exchanges are already waiting for the KDC (max_kdc_calls)", "None"]
    assert slots.in_flight == 2 and slots.peak == 2
