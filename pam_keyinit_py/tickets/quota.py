"""The key-quota guard of a renewal: is there room in the uid's quota for a new cache generation?

A renewal normally writes the renewed TGT into a *new* cache of ``KEYRING:persistent:<uid>``,
switches the primary to it and retires the old one after a grace period (no empty-cache
window).  For that moment the uid holds two generations, and the kernel charges both to its
quota (``kernel.keys.maxkeys``/``maxbytes``; each key costs its description + NUL + payload).
A user with large tickets (AD PACs) or keys of their own may have room for one generation but
not two.

:func:`no_room` answers before the write, from ``/proc/key-users`` (the uid's charged keys and
bytes) and the size of the current generation (walked in the kernel, :func:`cache_sizes`); the
caches already waiting out their grace period count as room, since the renewal destroys them at
once on EDQUOT.  When there is no room it logs a warning naming the sysctl to raise, counts it
(``keyinit_quota_guard_total``), and the caller renews **in place**: krb5_cc_store_cred of the
renewed TGT into the existing cache.  The KEYRING ccache names each credential's key after its
server principal, so the store is one add_key(2) that *updates* the old TGT's key atomically
(the kernel swaps the payload; only the size difference is charged).  Readers see the old
ticket or the new one, never none.  The trade-off: the cache is changed under readers instead
of replaced whole (a renewal that fails half-way cannot be thrown away unseen; with one TGT
there is nothing half-way), and the cache keeps its name.
"""

from __future__ import annotations

import logging
import time

from .. import keyutils
from .. import protocol as P
from ..ccname import subsidiary
from ..keyutils import proc
from . import journal, metrics
from .collection import cache_keyrings, describe

log = logging.getLogger("keyinit-ticketd")

#: The sysctls named in the warning (etc/sysctl.d/60-keyinit-keys.conf sets both).
SYSCTLS = "kernel.keys.maxbytes (and kernel.keys.maxkeys)"


def cache_sizes(uid: int) -> dict[str, tuple[int, int]]:
    """{subsidiary name: (quota bytes, keys)} of each KEYRING cache in ``uid``'s persistent collection.

    Walks ``_persistent.<uid>`` -> ``_krb`` -> each cache keyring (:func:`.collection.cache_keyrings`:
    possessed, so keyctl_read may read them) and counts what the kernel charges: description +
    NUL (+ payload) for the cache keyring and each key.  Empty when the collection cannot be read.
    """
    sizes: dict[str, tuple[int, int]] = {}
    try:
        with cache_keyrings(uid) as caches:
            for cdesc, cache in caches:
                try:
                    size, count = len(cdesc) + 1, 1
                    for key in keyutils.keyring_ids(cache):
                        size += len(describe(key)[1]) + 1 + len(keyutils.read(key))
                        count += 1
                except OSError:
                    continue  # a cache retired under us
                sizes[cdesc.decode(errors="replace")] = (size, count)
    except OSError:
        return {}
    return sizes


#: A first look that finds no room waits this long at most for the kernel's key garbage collector:
#: caches destroyed a moment ago (a previous renewal's flush) stay charged until it has run.
GC_WAIT = 1.0
#: ...and stops waiting once the uid's /proc/key-users line held still for this many looks.
GC_STILL_LOOKS = 5
GC_LOOK_INTERVAL = 0.02


def _room(ccache_name: str, uid: int, retiring: set[str] | frozenset[str],
          user: proc.KeyUser | None) -> tuple[bool, str] | None:
    """(fits, what to log) for one look at ``user`` (uid's /proc/key-users line); None when there is
    nothing to judge (see :func:`no_room`)."""
    if user is not None and user.bytes_left >= user.qnbytes and user.keys_left >= user.qnkeys:
        return True, ""  # more is free than the uid holds in all: one cache of it fits, no walk needed
    sub = subsidiary(ccache_name)
    sizes = cache_sizes(uid)
    if user is None or sub not in sizes:
        return None
    need_bytes, need_keys = sizes[sub]
    freed = [sizes[s] for s in map(subsidiary, retiring) if s in sizes and s != sub]
    free_bytes = user.bytes_left + sum(b for b, _ in freed)
    free_keys = user.keys_left + sum(k for _, k in freed)
    detail = (f"a new cache generation takes {need_bytes} bytes and {need_keys} keys of key quota, "
              f"{free_bytes} bytes and {free_keys} keys are free ({user.qnbytes}/{user.maxbytes} bytes used)")
    return free_bytes >= need_bytes and free_keys >= need_keys, detail


def no_room(ccache_name: str, uid: int, retiring: set[str] | frozenset[str] = frozenset()) -> bool:
    """True when a new generation of ``ccache_name`` would not fit ``uid``'s key quota (see module).

    ``retiring``: names of the uid's caches in their grace period (destroyed on EDQUOT, so
    their bytes count as room).  A look that finds no room is repeated while the uid's charge is
    still falling (the collector uncharging keys destroyed just before), :data:`GC_WAIT` at most.
    Logs the warning and counts it when True; False when in doubt (no KEYRING cache, nothing
    readable): the normal renewal then meets EDQUOT as before.
    """
    if not ccache_name.startswith("KEYRING:persistent:") or not subsidiary(ccache_name):
        return False
    deadline = time.monotonic() + GC_WAIT
    last, still = None, 0
    while True:
        try:
            now = proc.key_user(uid)
        except OSError:
            return False
        look = _room(ccache_name, uid, retiring, now)
        if look is None or look[0]:
            return False
        still, last = (still + 1, last) if now == last else (0, now)
        if still >= GC_STILL_LOOKS or time.monotonic() >= deadline:
            break
        time.sleep(GC_LOOK_INTERVAL)
    metrics.QUOTA_GUARD.inc()
    log.warning("renewing %s (uid %d): %s: renewing in place instead; raise %s", ccache_name, uid, look[1],
                SYSCTLS, extra=journal.fields(event="quota_guard", uid=uid, ccache=ccache_name, code=P.QUOTA))
    return True
