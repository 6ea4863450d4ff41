"""A bound on KDC exchanges in flight, and one exchange per cache at a time.

MIT libkrb5 (1.20) has no timeout of its own, so ``ccache._bounded`` runs each exchange in a
helper thread and stops waiting after ``timeout``; the helper itself cannot be cancelled and
stays until the KDC answers or libkrb5 gives up.  A KDC that accepts and never answers would
then pile up one blocked thread per login attempt and per renewal retry.  Here each helper
takes a slot first: at most ``limit`` exist at once, and while an exchange for a key (a
ccache being renewed) is still in flight, no second one starts for the same key.  A refused
exchange fails at once as "no KDC answered", which callers already handle (login: the KDC's
fault, not the user's; renewal: retry with back-off).

No krb5 import here: the service configures the limit before libkrb5 is loaded.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable

#: Default bound on KDC exchanges in flight (config key ``max_kdc_calls``).
DEFAULT_LIMIT = 16


class KdcSlots:
    """Counting slots with a per-key exclusion; thread-safe."""

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self._lock = threading.Lock()
        self.limit = limit
        self.in_flight = 0
        self.peak = 0
        self.refused = 0
        self._keys: set[Hashable] = set()

    def configure(self, limit: int) -> None:
        with self._lock:
            self.limit = max(1, int(limit))

    def acquire(self, key: Hashable | None = None) -> str | None:
        """Take a slot; None when taken, else why not (the caller raises KdcUnreachable)."""
        with self._lock:
            if key is not None and key in self._keys:
                self.refused += 1
                return "the previous exchange for it is still waiting for the KDC"
            if self.in_flight >= self.limit:
                self.refused += 1
                return f"{self.in_flight} exchanges are already waiting for the KDC (max_kdc_calls)"
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

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {"in_flight": self.in_flight, "limit": self.limit, "peak": self.peak,
                    "refused": self.refused}


SLOTS = KdcSlots()
