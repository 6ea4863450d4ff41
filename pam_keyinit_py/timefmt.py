"""The one formatter of ticket and key times (seconds since the epoch) for people to read.

Stdlib only and tiny: ``pykeyctl``, ``keyinit`` and the service's log lines all use it.
"""

from __future__ import annotations

import time

#: Log lines and ``pykeyctl show --krb5``: ``2026-12-01 19:30:00``.
LONG = "%Y-%m-%d %H:%M:%S"
#: The form klist prints in the C locale: ``12/01/26 19:30:00``.
KLIST = "%m/%d/%y %H:%M:%S"


def when(stamp: float, fmt: str = LONG, *, empty: str = "-", utc: bool = False) -> str:
    """``stamp`` as local time (UTC with ``utc``) in ``fmt`` (strftime); ``empty`` for 0 (unknown)."""
    if not stamp:
        return empty
    return time.strftime(fmt, time.gmtime(stamp) if utc else time.localtime(stamp))
