"""A bound on KDC exchanges in flight, and one exchange per cache at a time.

MIT libkrb5 (1.20) has no timeout of its own, so ``plumbing.bounded`` runs each exchange in a
helper thread and stops waiting after ``timeout``; the helper itself cannot be cancelled and
stays until the KDC answers or libkrb5 gives up.  A KDC that accepts and never answers would
then pile up one blocked thread per login attempt and per renewal retry.  Here each helper
takes a slot first: at most ``limit`` exist at once, and while an exchange for a key (a
ccache being renewed) is still in flight, no second one starts for the same key.  When every
slot is taken, the caller waits for one within its own bound (the exchange's ``timeout``), in
its own thread, which the request or renewal pool already bounds: a burst of logins queues
instead of failing (measured: 25 concurrent ssh logins against the limit of 16 lost 1-49 of
them when the refusal was immediate).  An exchange refused after that, or one for a key still
in flight, fails as "no KDC answered", which callers already handle (login: the KDC's fault,
not the user's; renewal: retry with back-off).

While the CPUs are saturated, fewer exchanges start side by side: beyond ``soft`` active
(one per CPU this process may run on; an exchange whose caller gave up on a silent KDC is not
active), a new one waits for a running one to end, at most :data:`GATE_MAX` seconds and a
quarter of its own bound, while the kernel's CPU pressure (:class:`CpuPressure`, PSI "some")
says tasks are waiting for a CPU.  An exchange is mostly CPU (string-to-key, the KDC's reply)
when the KDC is near; sixteen of them sharing two cores all end late together, where a few at
a time end one after another (measured on 2 cores, 20 logins at once: median 47 -> 30-38 ms,
the last login unchanged).  When the exchanges wait on the network (a remote or silent KDC)
the CPUs are idle and nothing waits (unless other work keeps them busy: then an exchange
starts at most GATE_MAX later).  Without PSI (``/proc/pressure/cpu`` missing) it is off, and
on a host with at least max_kdc_calls CPUs it never engages.

No krb5 import here: the service configures the limit before libkrb5 is loaded.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Hashable

#: Default bound on KDC exchanges in flight (config key ``max_kdc_calls``).
DEFAULT_LIMIT = 16
#: Longest an exchange waits at the CPU gate (then it starts, within ``limit``).
GATE_MAX = 0.25
#: The gate re-reads the CPU pressure at least this often while an exchange waits at it.
GATE_POLL = 0.02


class CpuPressure:
    """Whether tasks are waiting for a CPU now: the growth of ``/proc/pressure/cpu``'s "some
    total" (microseconds during which at least one runnable task had no CPU, PSI) over the
    time since the previous reading, read at most every ``interval`` seconds.  A reading more
    than ``window`` seconds after the previous one (the service was idle) or after a failed one
    only starts a new window: it says nothing about now.  Without the file (no PSI) it is never
    saturated and stops looking.  Not thread-safe: KdcSlots calls it under its lock (one
    open/read/close of a /proc file, at most every ``interval``)."""

    PATH = "/proc/pressure/cpu"
    #: Saturated: tasks waited for a CPU during at least this share of the interval.
    THRESHOLD = 0.3

    def __init__(self, path: str = PATH, interval: float = 0.01, window: float = 0.5,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.interval = interval
        self.window = window
        self._clock = clock
        self._absent = False
        self._at = 0.0  # when _total was read; 0: no baseline
        self._total = 0.0
        self._checked = -interval  # when the answer below was last worked out
        self._saturated = False

    def read_total(self) -> float | None:
        """The "some" line's stall total in seconds; None when it cannot be read."""
        try:
            with open(self.path, "rb") as f:
                return int(f.readline().rsplit(b"total=", 1)[1]) / 1e6
        except FileNotFoundError:
            self._absent = True
            return None
        except (OSError, IndexError, ValueError):
            return None

    def saturated(self) -> bool:
        if self._absent:
            return False
        now = self._clock()
        if now - self._checked < self.interval:
            return self._saturated
        self._checked = now
        total = self.read_total()
        if total is None:
            self._at, self._saturated = 0.0, False
            return False
        fresh = self._at and now - self._at <= self.window
        self._saturated = bool(fresh) and (total - self._total) >= self.THRESHOLD * (now - self._at)
        self._at, self._total = now, total
        return self._saturated


def cpus() -> int:
    """CPUs this process may run on (sched_getaffinity), at least 1.  A cgroup CPU quota is not
    counted: under one, the gate lets as many exchanges run as there are CPUs in the set."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except OSError:
        return max(1, os.cpu_count() or 1)


class KdcSlots:
    """Counting slots with a per-key exclusion and the CPU gate; thread-safe."""

    def __init__(self, limit: int = DEFAULT_LIMIT, soft: int | None = None,
                 saturated: Callable[[], bool] | None = None, gate_max: float = GATE_MAX) -> None:
        self._lock = threading.Lock()
        self._slot = threading.Condition(self._lock)  # waiting for in_flight < limit
        self._gate = threading.Condition(self._lock)  # waiting at the CPU gate (polls, see acquire)
        self._slot_waiters = 0
        self.limit = limit
        self.soft = soft if soft is not None else cpus()
        self._saturated = saturated or CpuPressure().saturated
        self.gate_max = gate_max
        self.in_flight = 0
        #: Exchanges in flight whose caller still waits for them (bounded's abandon(): a helper
        #: left on a silent KDC is in flight, but uses no CPU and is no reason to gate).
        self.active = 0
        self.peak = 0
        self.refused = 0
        self.gated = 0  # exchanges that waited at the CPU gate
        self._keys: set[Hashable] = set()

    def configure(self, limit: int) -> None:
        with self._lock:
            self.limit = max(1, int(limit))
            self._slot.notify_all()
            self._gate.notify_all()

    def acquire(self, key: Hashable | None = None, wait: float = 0.0) -> str | None:
        """Take a slot, waiting up to ``wait`` seconds for one; None when taken, else why not
        (the caller raises KdcUnreachable).  A key in flight is refused, at once or when its
        turn comes.  While the CPUs are saturated and ``soft`` exchanges are active, wait at the
        gate for one to end, at most GATE_MAX and a quarter of ``wait`` (so a short budget
        keeps most of itself for the exchange)."""
        start = time.monotonic()
        deadline = start + wait
        gate_end = start + min(self.gate_max, wait / 4)
        waited_at_gate = woken = False
        with self._lock:
            while True:
                if key is not None and key in self._keys:
                    self.refused += 1
                    if woken:  # the slot this waiter was woken for goes to the next one
                        self._wake_next()
                    return "the previous exchange for it is still waiting for the KDC"
                now = time.monotonic()
                if self.in_flight >= self.limit:
                    if now >= deadline:
                        self.refused += 1
                        return f"{self.in_flight} exchanges are already waiting for the KDC (max_kdc_calls)"
                    self._slot_waiters += 1
                    try:
                        woken = self._slot.wait(deadline - now)
                    finally:
                        self._slot_waiters -= 1
                    continue
                if self.active >= self.soft and now < gate_end and self._saturated():
                    # The pressure changes without any release: look again every GATE_POLL.
                    if not waited_at_gate:
                        waited_at_gate = True
                        self.gated += 1
                    woken = self._gate.wait(min(gate_end - now, GATE_POLL))
                    continue
                break
            self.in_flight += 1
            self.active += 1
            self.peak = max(self.peak, self.in_flight)
            if key is not None:
                self._keys.add(key)
            return None

    def abandon(self, exchange: dict[str, bool]) -> None:
        """The caller stopped waiting for the exchange (``exchange``: bounded's record of it,
        shared with its release): it stays in flight, holding its slot and key, but no longer
        counts as active for the gate.  Exactly one of abandon and release lowers ``active``."""
        with self._lock:
            if not exchange.get("released") and not exchange.get("abandoned"):
                exchange["abandoned"] = True
                self.active -= 1

    def release(self, key: Hashable | None = None, exchange: dict[str, bool] | None = None) -> None:
        with self._lock:
            self.in_flight -= 1
            if exchange is None or not exchange.get("abandoned"):
                self.active -= 1
            if exchange is not None:
                exchange["released"] = True
            if key is not None:
                self._keys.discard(key)
            self._wake_next()

    def _wake_next(self) -> None:
        """Hand a free slot on (lock held): to a caller at max_kdc_calls first (it has no gate to
        poll), else to one at the gate."""
        (self._slot if self._slot_waiters else self._gate).notify()

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {"in_flight": self.in_flight, "active": self.active, "limit": self.limit,
                    "peak": self.peak, "refused": self.refused, "gated": self.gated}


SLOTS = KdcSlots()
