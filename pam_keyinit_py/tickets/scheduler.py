"""The renewal scheduler: one timer heap and one thread that sleeps until the next due time.

Entries are keyed by wall-clock due time (ticket times are wall-clock).  Nothing
polls: the thread waits on a condition until the earliest entry is due, and
``schedule`` wakes it only when a new entry becomes the earliest.  A job is
cancelled by replacing the key's entry (the old heap item is skipped when it
surfaces), which keeps cancellation O(1).

Due jobs run on a small pool of worker threads (``workers``), so a renewal waiting on a
silent KDC does not hold every other renewal behind it.  One key never runs twice at once:
a job that falls due while its key's previous job still runs waits for that one to end.

``renew_due`` computes when a ticket should be renewed: at ``fraction`` of its
lifetime, as SSSD's krb5_renew_tgt does at half-life.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Hashable

log = logging.getLogger("keyinit-ticketd")


def renew_due(starttime: float, endtime: float, fraction: float, now: float | None = None) -> float:
    """When to renew a ticket valid from ``starttime`` to ``endtime``: at ``fraction`` of its life.

    Never earlier than now + 1 s (a ticket renewed by the KDC keeps its start time
    on some KDCs, so the computed point may already be past).
    """
    now = time.time() if now is None else now
    due = starttime + fraction * (endtime - starttime)
    if due <= now:
        # Past the planned point: renew soon, but leave half of what is left as margin.
        due = now + min(1.0, max(0.0, (endtime - now) / 2))
    return due


def backoff(attempt: int, lo: float, hi: float, endtime: float, now: float | None = None) -> float:
    """Delay before retry ``attempt`` (1-based) of a failed renewal: doubling from ``lo`` up to ``hi``,
    and never so long that the next try would land after a quarter of the time left before expiry.
    """
    now = time.time() if now is None else now
    delay = min(hi, lo * (2 ** max(0, attempt - 1)))
    left = endtime - now
    if left > 0:
        delay = min(delay, max(lo, left / 4))
    return delay


class Scheduler:
    """A timer heap run by one thread, jobs run by up to ``workers`` threads; one job per key."""

    def __init__(self, workers: int = 1) -> None:
        self._heap: list[tuple[float, int, Hashable]] = []
        self._jobs: dict[Hashable, tuple[int, float, Callable[[], None]]] = {}
        self._seq = itertools.count()
        lock = threading.Lock()
        self._cond = threading.Condition(lock)  # the timer thread waits here
        self._work = threading.Condition(lock)  # the workers wait here
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="scheduler", daemon=True)
        self.wakeups = 0  # how often the timer thread woke: proves it does not poll
        self.workers = max(1, int(workers))
        self._ready: collections.deque[tuple[Hashable, Callable[[], None]]] = collections.deque()
        self._running: set[Hashable] = set()
        self._waiting: dict[Hashable, tuple[int, float, Callable[[], None]]] = {}
        self._threads = 0
        self._idle = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
            self._work.notify_all()

    def schedule(self, key: Hashable, due: float, job: Callable[[], None]) -> None:
        """Run ``job`` at wall-clock time ``due``, replacing any job already under ``key``."""
        with self._cond:
            seq = next(self._seq)
            self._jobs[key] = (seq, due, job)
            self._waiting.pop(key, None)
            earliest = not self._heap or due < self._heap[0][0]
            heapq.heappush(self._heap, (due, seq, key))
            if earliest:
                self._cond.notify()

    def cancel(self, key: Hashable) -> None:
        with self._cond:
            self._jobs.pop(key, None)
            self._waiting.pop(key, None)

    def due(self, key: Hashable) -> float | None:
        with self._cond:
            entry = self._jobs.get(key) or self._waiting.get(key)
            return entry[1] if entry else None

    def __len__(self) -> int:
        return len(self._jobs) + len(self._waiting)

    @property
    def running(self) -> int:
        """Jobs running now."""
        return len(self._running)

    @property
    def threads(self) -> int:
        """Renewal workers started so far (the pool grows on demand up to ``workers`` and keeps them)."""
        return self._threads

    def _next(self) -> tuple[Hashable, Callable[[], None]] | None:
        with self._cond:
            while not self._stopped:
                # Drop heap items whose job was replaced or cancelled.
                while self._heap:
                    due, seq, key = self._heap[0]
                    entry = self._jobs.get(key)
                    if entry is not None and entry[0] == seq:
                        break
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                else:
                    wait = self._heap[0][0] - time.time()
                    if wait <= 0:
                        _, _, key = heapq.heappop(self._heap)
                        entry = self._jobs.pop(key)
                        if key in self._running:
                            self._waiting[key] = entry  # runs when the key's current job ends
                            continue
                        return key, entry[2]
                    self._cond.wait(wait)
                self.wakeups += 1
            return None

    def _run(self) -> None:
        while True:
            item = self._next()
            if item is None:
                return
            inline = False
            with self._cond:
                self._running.add(item[0])
                self._ready.append(item)
                if len(self._ready) > self._idle and self._threads < self.workers:
                    try:
                        name = f"renewer-{self._threads + 1}"
                        threading.Thread(target=self._worker, name=name, daemon=True).start()
                        self._threads += 1
                    except RuntimeError:  # out of tasks (TasksMax): no pool, the timer thread runs it
                        inline = self._threads == 0
                        if inline:
                            self._ready.remove(item)
                self._work.notify()
            if inline:
                log.error("cannot start a renewal worker (out of tasks): running %r on the timer thread",
                          item[0])
                self._run_job(*item)

    def _worker(self) -> None:
        while True:
            with self._cond:
                while not self._ready and not self._stopped:
                    self._idle += 1
                    self._work.wait()
                    self._idle -= 1
                if self._stopped:
                    return
                key, job = self._ready.popleft()
            self._run_job(key, job)

    def _run_job(self, key: Hashable, job: Callable[[], None]) -> None:
        try:
            job()
        except Exception:  # one failing job must not stop the others' renewals
            log.exception("scheduled job failed")
        finally:
            with self._cond:
                self._running.discard(key)
                entry = self._waiting.pop(key, None)
                if entry is not None and key not in self._jobs:
                    seq, due, _job = entry
                    self._jobs[key] = entry
                    heapq.heappush(self._heap, (due, seq, key))
                    self._cond.notify()
