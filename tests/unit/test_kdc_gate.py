"""The KDC slots' CPU gate (tickets/kdclimit.py): beyond ``soft`` exchanges in flight, a new one
waits for a running one to end while the CPUs are saturated, at most ``gate_max`` seconds."""

from __future__ import annotations

import multiprocessing
import threading
import time

import pytest

from pam_keyinit_py.tickets.kdclimit import CpuPressure, KdcSlots, cpus


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
    thread.join(0.3)
    assert thread.is_alive() and out == []  # waiting at the gate, though 14 slots are free
    slots.release()
    thread.join(5)
    assert out == [None]
    assert slots.snapshot() == {"in_flight": 2, "limit": 16, "peak": 2, "refused": 0, "gated": 1}


def test_idle_cpus_open_the_gate() -> None:
    slots = KdcSlots(limit=16, soft=2, saturated=lambda: False, gate_max=30.0)
    for _ in range(5):
        assert slots.acquire(wait=0.0) is None
    assert slots.snapshot()["in_flight"] == 5 and slots.gated == 0


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
    time.sleep(0.1)
    slots.release()  # one slot: one of the two takes it; the other must not start a second exchange
    a.join(5)
    b.join(5)
    results = sorted(map(str, out_a + out_b))
    assert results == ["None", "the previous exchange for it is still waiting for the KDC"]
    assert slots.in_flight == 2  # two held, one released, one taken
    assert slots.acquire("other", wait=0.0) is None  # the third slot
    assert "max_kdc_calls" in str(slots.acquire(wait=0.1))  # limit 3 reached: refused as before


def test_cpu_pressure_without_psi_is_never_saturated(tmp_path) -> None:  # noqa: ANN001
    pressure = CpuPressure(str(tmp_path / "missing"), interval=0.0)
    assert pressure.read_total() is None
    assert not pressure.saturated() and not pressure.saturated()


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_cpu_pressure_sees_more_runnable_tasks_than_cpus() -> None:
    pressure = CpuPressure(interval=0.02)
    if pressure.read_total() is None:
        pytest.skip("this kernel has no PSI (/proc/pressure/cpu): the gate is off there")
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
    time.sleep(0.1)
    assert out_b == [] and slots.gated == 1
    busy[0] = False
    assert slots.acquire(wait=0.0) is None  # C: CPUs idle, the second slot
    d, out_d = _start(slots, wait=1.5)  # at max_kdc_calls, and so is B now
    time.sleep(0.1)
    assert out_b == [] and out_d == [] and slots.in_flight == 2
    slots.release()  # A ends: one of B and D gets its slot, the other is refused at its deadline
    b.join(5)
    d.join(5)
    results = sorted(map(str, out_b + out_d))
    assert results == ["2 exchanges are already waiting for the KDC (max_kdc_calls)", "None"]
    assert slots.in_flight == 2 and slots.peak == 2
