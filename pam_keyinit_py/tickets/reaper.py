"""The destroy-later thread: replaced ccaches are destroyed after a grace period.

A reader such as klist resolves the primary name (``krb_ccache:primary``) and then reads that
cache; destroying the old cache at the instant of the switch could pull it from under such a
reader.  So the ccache API hands the replaced cache to a :class:`Reaper`, which destroys it
``grace`` seconds later from one background thread.

Whoever owns a Reaper drives it and passes it as ``reaper=`` to the ccache API: its ``pending``
keeps retiring caches out of list_caches and sweep_retired, its ``flush`` destroys them now (and
frees their quota on EDQUOT).  Callers that bring none (tests, benches, and the service until it
is given its own) share the process-wide :data:`.cachestore.DEFERRED`, flushed at exit.  The
ccache API itself starts no thread.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable

#: Seconds an old cache stays after the switch, for readers that resolved the old primary name.
DEFAULT_GRACE = 2.0

#: ``destroy(name, uid, gid, krb5_config)``: krb5_cc_destroy as the user, never raising.
Destroy = Callable[[str, int, int, str | None], None]


class Reaper:
    """Destroys replaced caches after a grace period, from one background thread.

    The thread starts with the first :meth:`add` and ends after 30 s with nothing to do.
    """

    def __init__(self, destroy: Destroy) -> None:
        self._destroy = destroy
        self._heap: list[tuple[float, str, int, int, str | None]] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def add(self, name: str, uid: int, gid: int, krb5_config: str | None, delay: float) -> None:
        """Destroy cache ``name`` of ``uid`` in ``delay`` seconds."""
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + delay, name, uid, gid, krb5_config))
            if self._thread is None or not self._thread.is_alive():
                thread = threading.Thread(target=self._run, name="ccache-reaper", daemon=True)
                try:
                    thread.start()
                    self._thread = thread
                except RuntimeError:
                    # Out of tasks: the entry waits for the next add() that can start the thread
                    # (or flush() at exit); it is never adopted meanwhile (pending, RETIRED_MARK).
                    pass
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap:
                    if not self._cond.wait(30.0):
                        self._thread = None
                        return
                due = self._heap[0][0]
                now = time.monotonic()
                if due > now:
                    self._cond.wait(due - now)
                    continue
                _, name, uid, gid, conf = heapq.heappop(self._heap)
            self._destroy(name, uid, gid, conf)

    def flush(self, uid: int | None = None) -> int:
        """Destroy pending caches now (of ``uid`` only, when given); return how many."""
        with self._cond:
            mine = [e for e in self._heap if uid is None or e[2] == uid]
            self._heap = [e for e in self._heap if e not in mine]
            heapq.heapify(self._heap)
        for _, name, u, g, conf in mine:
            self._destroy(name, u, g, conf)
        return len(mine)

    def pending(self, uid: int) -> set[str]:
        """Names of ``uid``'s caches waiting for their grace period to end."""
        with self._cond:
            return {e[1] for e in self._heap if e[2] == uid}
