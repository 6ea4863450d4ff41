"""Log lines a client can trigger, rate-limited: no local user can flood the service's log.

Every line a request from any user causes (a refused connection, a malformed message, a
denied operation) goes through one of these: at most one line per key (typically the reason
and the uid) every ``interval`` seconds, and the next line says how many were left out.
The keys' lines together are bounded too (``max_lines`` per ``interval``): a user holding a
subordinate uid range (/etc/subuid, newuidmap: 65,536 uids on Debian 12) connects from a
user namespace under as many uids as it likes, one key each.
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

    At most ``max_lines`` lines of all keys together are logged in any ``interval`` (a window
    starting at the first line after the last one ended); the first line logged after a full
    window says how many others were dropped.  The key table is bounded: it is cleared when it
    grows past ``max_keys``.
    """

    #: Lines of all keys together per interval (see the class doc).
    MAX_LINES = 100

    def __init__(self, interval: float = INTERVAL, max_keys: int = 4096, max_lines: int = MAX_LINES) -> None:
        self.interval = interval
        self.max_keys = max_keys
        self.max_lines = max_lines
        self._last: dict[object, tuple[float, int]] = {}
        self._window = -interval  # when the current window of max_lines lines began
        self._in_window = 0
        self._overflow = 0  # lines dropped because the window was full, not yet reported
        self._lock = threading.Lock()

    def __call__(self, key: object, level: int, msg: str, *args: object) -> bool:
        """Log ``msg % args`` unless a line with this key was logged less than ``interval`` ago,
        or ``max_lines`` lines were logged in the current window."""
        now = time.monotonic()
        with self._lock:
            last, dropped = self._last.get(key, (-self.interval, 0))
            if now - last < self.interval:
                self._last[key] = (last, dropped + 1)
                return False
            if now - self._window >= self.interval:
                self._window, self._in_window = now, 0
            if self._in_window >= self.max_lines:
                self._overflow += 1
                return False
            self._in_window += 1
            overflow, self._overflow = self._overflow, 0
            if len(self._last) >= self.max_keys:
                self._last.clear()
            self._last[key] = (now, 0)
        if dropped:
            msg += f" ({dropped} more like it since the last such line, not logged)"
        if overflow:
            msg += f" ({overflow} other lines not logged: more than {self.max_lines} in {self.interval:g} s)"
        log.log(level, msg, *args)
        return True
