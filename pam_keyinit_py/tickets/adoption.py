"""Tickets the service did not acquire at a login: the user's own kinit, delegated GSSAPI
tickets, ``[[keytab]]`` entries; and the daily touch of the persistent keyring.

* **Adoption.**  While a uid is logged in, caches it makes in its persistent collection
  (``kinit`` in a session) are tracked (origin ``adopted``) and renewed.  They are found by a
  scan of the collection at the first session, by rescans every ``adopt_scan_interval``, and
  soon after the uid's keys change (``/proc/key-users``, polled every ``adopt_watch_interval``:
  this kernel has no key notifications).  A scan first reads the collection's member names
  from the kernel (a few keyctl calls, :mod:`.collection`) and lists the collection with libkrb5
  only when one of them is not tracked yet: at most scans nothing is new.
* **Delegation.**  A delegated TGT that sshd wrote to ``FILE:/tmp/krb5cc_<uid>_*`` is copied
  into ``KEYRING:persistent:<uid>`` at ``open`` (origin ``delegated``); the hook removes the file
  once it has the reply.
* **Keytab entries.**  Each ``[[keytab]]`` principal's TGT is re-acquired from its keytab at
  ``renew_fraction`` of its life (as k5start -f does), whether or not anyone is logged in.
* **Touch.**  keyctl_get_persistent resets the kernel's 3-day expiry of the persistent keyring.
"""

from __future__ import annotations

import logging
import os
import time
from functools import partial
from typing import Any

from .. import keyutils
from .. import protocol as P
from ..ccname import collection_name
from . import errors, journal
from .accounts import primary_gid
from .core import ADOPTED, DELEGATED, KEYTAB, LOGIN, Tracked
from .renewal import Renewal
from .scheduler import renew_due
from .sessions import Session
from .state import fmt

log = logging.getLogger("keyinit-ticketd")


#: Seconds after an ``open`` that the scan it asks for starts: by then the open's reply has
#: gone out.  Started at once, the scan ran beside the reply path and held the GIL it needed
#: (open's median at the service in pamtester logins: 0.83 ms at once, 0.64 ms after 50 ms).
SCAN_AFTER_OPEN = 0.05


class Adoption(Renewal):
    """Finds, imports and re-acquires the tickets that no password login brought."""

    def _refresh_uid(self, uid: int) -> None:
        """On a uid's first session: adopt its own caches soon, touch its persistent keyring on its timer.

        The scan runs on the scheduler thread :data:`SCAN_AFTER_OPEN` later, so a login does not
        wait for it, nor share the GIL with it while the open is answered; its look at the
        collection (keyctl_get_persistent) resets the keyring's expiry as a touch does, so the
        first touch comes one ``persistent_touch_interval`` later (one job per login, not two).
        """
        now = time.time()
        self.scheduler.schedule(("touch", uid), now + self.config.persistent_touch_interval,
                                partial(self._touch, uid))
        self.scheduler.schedule(("scan", uid), now + SCAN_AFTER_OPEN, partial(self._scan, uid))

    def _adopt_soon(self, uid: int) -> None:
        """Scan the uid's collection for caches to adopt soon (the scheduler thread, SCAN_AFTER_OPEN on)."""
        self.scheduler.schedule(("scan", uid), time.time() + SCAN_AFTER_OPEN, partial(self._scan, uid))

    def _touch(self, uid: int) -> None:
        """keyctl_get_persistent(uid): resets the kernel's 3-day expiry of the persistent keyring."""
        try:
            ring = keyutils.get_persistent(uid, keyutils.KEY_SPEC_THREAD_KEYRING)
            keyutils.unlink(ring, keyutils.KEY_SPEC_THREAD_KEYRING)
            log.debug("get_persistent(%d): keyring %d, expiry timer reset", uid, ring)
        except OSError as exc:
            log.warning("get_persistent(%d): %s", uid, exc)
        interval = self.config.persistent_touch_interval
        if self.sessions.count(uid) or any(k.uid == uid for k in self.config.keytabs):
            self.scheduler.schedule(("touch", uid), time.time() + interval, partial(self._touch, uid))

    def _scan(self, uid: int, reschedule: bool = True) -> None:
        """Adopt caches the user made in their persistent collection (their own kinit) while logged in."""
        if not self.sessions.count(uid):
            return
        if self._nothing_new(uid):
            infos = []
        else:
            try:
                infos = self.krb.list_caches(uid)
            except Exception as exc:
                log.warning("listing caches of uid %d: %s", uid, exc)
                infos = []
        adopted: list[Tracked] = []
        with self.lock:
            if not self.sessions.count(uid):
                return  # the last session closed while the collection was listed: adopt nothing
            # The uid's oldest session (counted above, so there is one; sids increase): its gid,
            # without the passwd look-up (NSS) that next()'s default ran under the lock at every scan.
            sids = self.sessions.by_uid.get(uid)
            gid = self.sessions.by_sid[min(sids)].gid if sids else primary_gid(uid)
            for info in infos:
                if info.ccache not in self.tickets:
                    # A cache this service made (its name says so) is the service's even when it was
                    # not tracked (a restart lost it); anything else is the user's own kinit.
                    origin = LOGIN if getattr(info, "service", False) else ADOPTED
                    adopted.append(self._track(info, gid, origin))
            if adopted:
                self.save()
        for t in adopted:
            log.info("adopted %s (%s) of uid %d: renewed while the user is logged in", t.ccache,
                     t.principal, uid, extra=journal.ticket("adopted", t))
            self._schedule_renewal(t)
        if reschedule:
            self.scheduler.schedule(("scan", uid), time.time() + self.config.adopt_scan_interval,
                                    partial(self._scan, uid))

    def _nothing_new(self, uid: int) -> bool:
        """Whether every cache the kernel lists in the uid's collection is tracked already.

        Then the scan adopts nothing and libkrb5 need not list the collection (the kernel's
        list is a few keyctl calls: krb.cache_names).  A collection that cannot be read this way
        is listed with libkrb5 as before.
        """
        try:
            names = self.krb.cache_names(uid)
        except Exception:  # noqa: BLE001 - unknown, not empty: libkrb5 lists it (and logs why not)
            return False
        with self.lock:
            return all(name in self.tickets for name in names)

    def _keytab_job(self, index: int) -> None:
        """Re-acquire a [[keytab]] principal's TGT (as k5start -f), then schedule the next run."""
        entry = self.config.keytabs[index]
        key = ("keytab", index)
        again = partial(self._keytab_job, index)
        target = entry.ccache
        if target == collection_name(entry.uid):
            with self.lock:
                own = [x.ccache for x in self.tickets.values() if x.origin == KEYTAB and x.keytab == index]
            if own:
                # Replace this entry's own earlier cache (primary only if that one is): the
                # collection's primary may be another entry's or a login's, and retiring
                # nothing left the earlier generation behind, untracked, until its ticket ended.
                target = own[0]
        try:
            info = self.krb.acquire_keytab(entry.principal, entry.keytab, entry.uid, entry.gid, target)
        except errors.KdcUnreachable:
            delay = self.config.retry_min
            log.warning("keytab %s: no KDC answered; retry in %.0fs", entry.principal, delay)
            self.scheduler.schedule(key, time.time() + delay, again)
            return
        except Exception as exc:
            log.error("keytab %s from %s: %s; retry in %.0fs", entry.principal, entry.keytab, exc,
                      self.config.retry_max)
            self.scheduler.schedule(key, time.time() + self.config.retry_max, again)
            return
        with self.lock:
            # The new TGT lives in a new cache (the old one is retired): carry the entry over.
            old = [x for x in self.tickets.values() if x.origin == KEYTAB and x.keytab == index]
            for x in old:
                if x.ccache != info.ccache:
                    del self.tickets[x.ccache]
            t = self._track(info, entry.gid, KEYTAB, keytab=index)
            t.renewed = max([x.renewed for x in old], default=-1) + 1
        self.scheduler.schedule(key, renew_due(t.starttime, t.endtime, self.config.renew_fraction), again)
        if self.scheduler.due(("touch", entry.uid)) is None:
            self._touch(entry.uid)
        log.info("keytab %s: TGT in %s until %s", entry.principal, t.ccache, fmt(t.endtime))

    def _take_delegated(self, session: Session, source: str) -> dict[str, Any]:
        """Copy a delegated FILE cache into KEYRING:persistent:<uid> and track it (origin DELEGATED).

        Runs after the session is counted, so a last close of another session cannot clear
        the copy; if this session itself ended meanwhile (its opener died) and no other is
        open, the copy is destroyed again.  The file is never removed here: the hook may have
        stopped waiting for this reply (SESSION_TIMEOUT), and then the session's KRB5CCNAME
        still names the file; a hook that gets the reply removes it itself.  Failures leave the
        session open: the reply says why in ``delegation_error``.
        """
        uid, gid = session.uid, session.gid
        if not P.is_delegated_ccache(source, uid):
            log.warning("session %d of uid %d: %s is not a delegated cache of that uid; left alone",
                        session.sid, uid, source)
            return {"delegation_error": f"not a per-login cache of uid {uid}"}
        try:
            info = self.krb.import_file(source, uid, gid)
        except Exception as exc:
            log.warning("session %d of uid %d: delegated cache %s not taken: %s", session.sid, uid, source,
                        exc)
            return {"delegation_error": f"{exc.__class__.__name__}: {exc}"}
        with self.lock:
            if not self.sessions.count(uid):
                log.info("session %d of uid %d ended while its delegated ticket was copied: destroying %s",
                         session.sid, uid, info.ccache)
                self._destroy_locked(info.ccache, uid, gid)
                return {"delegation_error": "the session ended"}
            t = self._track(info, gid, DELEGATED)
            self.save()
        self._schedule_renewal(t)
        log.info("session %d of uid %d: delegated TGT of %s copied from %s into %s until %s", session.sid,
                 uid, t.principal, source, t.ccache, fmt(t.endtime), extra=journal.ticket("delegated", t))
        return {"ccache": t.ccache, "krb5ccname": collection_name(uid)}

    def _start_keywatch(self) -> None:
        """Say how the user's own kinit is noticed, and start the /proc/key-users watch."""
        from . import keywatch

        err = keywatch.notifications_errno()
        interval = self.config.adopt_watch_interval
        if err == 0:
            why = "available but not used"
        else:
            why = f"unavailable: pipe2(O_NOTIFICATION_PIPE): {os.strerror(err)}"
        if interval > 0:
            self._keywatch_state = keywatch.KeyUsersWatch()
            try:
                # The baseline: the restored uids (each is scanned at restore); any uid whose
                # session opens later is scanned at the first look that sees it.
                with self.lock:
                    self._keywatch_state.changed(list(self.sessions.by_uid))
            except OSError as exc:
                log.warning("reading /proc/key-users: %s", exc.strerror)
            self.scheduler.schedule(("keywatch",), time.time() + interval, self._keywatch)
            log.info("kernel key notifications %s; a user's own kinit is noticed through "
                     "/proc/key-users every %gs (full rescans every %gs)", why, interval,
                     self.config.adopt_scan_interval)
        else:
            log.info("kernel key notifications %s; a user's own kinit is adopted by rescans every %gs",
                     why, self.config.adopt_scan_interval)

    def _keywatch(self) -> None:
        """One look at /proc/key-users: scan now the logged-in uids whose keys changed."""
        with self.lock:
            uids = list(self.sessions.by_uid)
        try:
            changed = self._keywatch_state.changed(uids)
        except OSError as exc:
            log.warning("reading /proc/key-users: %s", exc.strerror)
            changed = []
        for uid in changed:
            log.debug("keys of uid %d changed: scanning its collection", uid)
            self._adopt_soon(uid)
        self.scheduler.schedule(("keywatch",), time.time() + self.config.adopt_watch_interval, self._keywatch)
