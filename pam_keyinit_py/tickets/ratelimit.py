"""Log lines a client can trigger, rate-limited: no local user can flood the service's log.

Every line a request from any user causes (a refused connection, a malformed message, a
denied operation) goes through one of these: at most one line per key (typically the reason
and the uid) every ``interval`` seconds, and the next line says how many were left out.
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger("keyinit-ticketd")

#: One line per key at most this often (the rest are counted into the next one).
INTERVAL = 10.0


class RateLimitedLog:
    """At most one line per key every ``interval`` seconds; the next line says how many were dropped.

    The key table is bounded: it is cleared when it grows past ``max_keys`` (an attacker with
    many uids then gets at most one extra line each).
    """

    def __init__(self, interval: float = INTERVAL, max_keys: int = 4096) -> None:
        self.interval = interval
        self.max_keys = max_keys
        self._last: dict[object, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def __call__(self, key: object, level: int, msg: str, *args: object) -> bool:
        """Log ``msg % args`` unless a line with this key was logged less than ``interval`` ago."""
        now = time.monotonic()
        with self._lock:
            last, dropped = self._last.get(key, (-self.interval, 0))
            if now - last < self.interval:
                self._last[key] = (last, dropped + 1)
                return False
            if len(self._last) >= self.max_keys:
                self._last.clear()
            self._last[key] = (now, 0)
        if dropped:
            msg += f" ({dropped} more like it since the last such line, not logged)"
        log.log(level, msg, *args)
        return True
