"""Noticing that a user's keys changed (a ``kinit`` inside a session), without key notifications.

Linux can report key changes itself: ``KEYCTL_WATCH_KEY`` on a watch queue made with
``pipe2(O_NOTIFICATION_PIPE)`` (what ``keyctl watch`` uses).  That needs CONFIG_WATCH_QUEUE;
the kernel measured here (6.18, ``# CONFIG_WATCH_QUEUE is not set``) fails the pipe2 with
ENOPKG, and ``keyctl watch @s`` prints ``pipe2: Package not installed``.
:func:`notifications_errno` probes for it; the service logs the result at start.

So the service polls ``/proc/key-users``: one world-readable file with a line per uid that owns
keys, ``uid: usage nkeys/nikeys qnkeys/maxkeys qnbytes/maxbytes``.  A kinit into the persistent
collection adds keys (a cache keyring, its principal, the TGT) and bytes, so that uid's line
changes.  :class:`KeyUsersWatch` compares each logged-in uid's line with the last look; only
the uids whose line changed get a krb5 scan of their collection.  One look costs one read of
the file and a split per line (measured in bench/bench_adoption.py at 10,000 uids).

A change that leaves every count equal (kdestroy and kinit between two looks, into a cache of
the same size) is not seen here; the full rescan every ``adopt_scan_interval`` catches it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable

#: include/uapi/linux/watch_queue.h: O_NOTIFICATION_PIPE is O_EXCL given to pipe2(2).
O_NOTIFICATION_PIPE = os.O_EXCL
KEY_USERS = "/proc/key-users"


def notifications_errno() -> int:
    """0 when this kernel makes watch-queue pipes (key notifications), else pipe2's errno."""
    try:
        r, w = os.pipe2(O_NOTIFICATION_PIPE | os.O_CLOEXEC)
    except OSError as exc:
        return exc.errno or -1
    os.close(r)
    os.close(w)
    return 0


def read_signatures(path: str = KEY_USERS) -> dict[int, bytes]:
    """{uid: the rest of its /proc/key-users line} for every uid that owns keys."""
    with open(path, "rb") as fh:
        data = fh.read()
    out: dict[int, bytes] = {}
    for line in data.splitlines():
        uid, sep, rest = line.partition(b":")
        if sep:
            out[int(uid)] = rest
    return out


class KeyUsersWatch:
    """Which of the given uids' key counts changed since the previous :meth:`changed`.

    A uid that was not in the previous look counts as changed: its session opened since, and
    a kinit may have followed the scan made at that open before this look saw the uid.  The
    first look of all is only a baseline (the service scans every restored uid itself).
    """

    def __init__(self, path: str = KEY_USERS) -> None:
        self.path = path
        self._last: dict[int, bytes | None] | None = None
        self._forgotten: set[int] = set()
        self._lock = threading.Lock()

    def forget(self, uid: int) -> None:
        """Treat ``uid`` as unseen at the next look (a session of it opened: whatever its keys did
        since the last look, logout and a new kinit of the same size included, it gets scanned)."""
        with self._lock:
            self._forgotten.add(uid)

    def changed(self, uids: Iterable[int]) -> list[int]:
        """The uids whose /proc/key-users line differs from the last look, or that it did not have."""
        now = read_signatures(self.path)
        with self._lock:
            forgotten, self._forgotten = self._forgotten, set()
            last = self._last
            current = {uid: now.get(uid) for uid in uids}
            self._last = current
        if last is None:
            return []
        return [uid for uid, sig in current.items()
                if uid in forgotten or uid not in last or last[uid] != sig]
