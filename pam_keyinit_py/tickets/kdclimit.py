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

No krb5 import here: the service configures the limit before libkrb5 is loaded.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable

#: Default bound on KDC exchanges in flight (config key ``max_kdc_calls``).
DEFAULT_LIMIT = 16


class KdcSlots:
    """Counting slots with a per-key exclusion; thread-safe."""

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self._lock = threading.Condition()
        self.limit = limit
        self.in_flight = 0
        self.peak = 0
        self.refused = 0
        self._keys: set[Hashable] = set()

    def configure(self, limit: int) -> None:
        with self._lock:
            self.limit = max(1, int(limit))
            self._lock.notify_all()

    def acquire(self, key: Hashable | None = None, wait: float = 0.0) -> str | None:
        """Take a slot, waiting up to ``wait`` seconds for one; None when taken, else why not
        (the caller raises KdcUnreachable).  A key already in flight is refused at once."""
        deadline = time.monotonic() + wait
        with self._lock:
            if key is not None and key in self._keys:
                self.refused += 1
                return "the previous exchange for it is still waiting for the KDC"
            while self.in_flight >= self.limit:
                left = deadline - time.monotonic()
                if left <= 0 or not self._lock.wait(left) and self.in_flight >= self.limit:
                    self.refused += 1
                    return f"{self.in_flight} exchanges are already waiting for the KDC (max_kdc_calls)"
                if key is not None and key in self._keys:
                    self.refused += 1
                    return "the previous exchange for it is still waiting for the KDC"
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            if key is not None:
                self._keys.add(key)
            return None

    def release(self, key: Hashable | None = None) -> None:
        with self._lock:
            self.in_flight -= 1
            if key is not None:
                self._keys.discard(key)
            self._lock.notify()

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {"in_flight": self.in_flight, "limit": self.limit, "peak": self.peak,
                    "refused": self.refused}


SLOTS = KdcSlots()
