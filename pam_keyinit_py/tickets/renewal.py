"""Renewal: when each tracked TGT is renewed, the renewal itself, and its retries.

A ticket is renewed at ``renew_fraction`` of its life (scheduler.renew_due) with
krb5_get_renewed_creds through ``krb.renew``, which writes the new TGT into a new subsidiary
cache and then switches the collection's primary to it: no moment where klist, rpc.gssd or
cifs.upcall find the collection empty (MIT, SSSD and krenew cc_initialize then store).  The
service follows the ticket to its new cache.  A KDC that does not answer is retried with a
back-off bounded by the ticket's end; a full key quota keeps the old ticket and retries; a
ticket that cannot be renewed further is left to expire, logged once.  ``[[keytab]]`` entries
are re-acquired instead (adoption.py).
"""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Any

from .. import protocol as P
from . import errors, journal, metrics
from .core import KEYTAB, Core, Tracked
from .scheduler import backoff, renew_due
from .state import fmt

log = logging.getLogger("keyinit-ticketd")

#: What _renew returns when another thread is renewing the same cache right now.
RENEWING = "renewal already in progress"


class Renewal(Core):
    """Schedules and runs the renewals of the tracked tickets."""

    def _schedule_renewal(self, t: Tracked) -> None:
        """Put the ticket's next renewal on the heap, or log once why there is none."""
        now = time.time()
        if t.origin == KEYTAB:
            return  # keytab entries re-acquire on their own timer
        if not t.renewable:
            if not t.warned:
                t.warned = True
                log.warning("%s (%s, uid %d) is not renewable: it will not be renewed and expires at %s",
                            t.ccache, t.principal, t.uid, fmt(t.endtime))
            return
        if t.renew_till <= t.endtime + 1 or t.renew_till <= now:
            if not t.warned:
                t.warned = True
                log.warning("%s (%s, uid %d) reached its renew_till %s: "
                            "it will not be renewed and expires at %s",
                            t.ccache, t.principal, t.uid, fmt(t.renew_till), fmt(t.endtime))
            return
        due = renew_due(t.starttime, t.endtime, self.config.renew_fraction, now)
        self.scheduler.schedule(("renew", t.ccache), due, partial(self._renew, t.ccache))

    def _retry(self, name: str, delay: float) -> None:
        self.scheduler.schedule(("renew", name), time.time() + delay, partial(self._renew, name))

    def _renew(self, name: str) -> str | None:
        """Renew one tracked (non-keytab) ccache; None on success, else why not.

        One renewal per cache at a time: a renew request and the scheduler must not both
        renew it (two new caches, one of them never tracked).
        """
        with self.lock:
            t = self.tickets.get(name)
            if t is None:
                return "not tracked"
            if name in self._renewing:
                return RENEWING
            self._renewing.add(name)
        try:
            return self._renew_tracked(name, t)
        finally:
            with self.lock:
                self._renewing.discard(name)

    def _renewed_untracked(self, name: str, t: Tracked, info: Any) -> str:
        """The KDC renewed ``name`` into ``info.ccache`` after the service stopped tracking ``name``
        (caller holds the lock).

        Cleared meanwhile (logout, expired auth, a destroy request): what the renewal wrote must
        not bring the ticket back.  Superseded meanwhile (a login of the same principal retired
        ``name``; its TGT is the collection's primary): the renewal's copy, which install did not
        make primary since ``name`` was primary no more, duplicates the login's ticket.  It was
        left untracked: renewed by nobody until a scan adopted it as a second ticket (then renewed
        beside the login's all session long), and left behind by a last logout before that scan.
        A copy install did switch to (the login's switch came first, between install's look and
        its switch) is the primary: it is tracked, to be renewed and cleared with the login's.

        Cleared with the login's means held as the login's is: while the uid has a pending entry
        (a login between auth and open), the copy is one of its caches, so the entry's expiry
        destroys it when no session opened (the entry held the login's cache only, and the copy
        was renewed until its renew_till); a session that opens meanwhile keeps it, as it keeps
        every held cache, and its last logout clears it.  With neither a session nor a pending
        entry (the logins ended while the renewal was at the KDC) nothing holds it: destroyed if
        clear_on_logout would have destroyed it at that logout, else left untracked as the
        logout left the uid's other tickets (destroying the primary would leave
        krb_ccache:primary naming no cache while a ticket the policy kept is there).
        """
        superseded = t.superseded and info.ccache != name
        if superseded and getattr(info, "primary", False):
            p = self.pending.get(t.uid)
            if p is None and self.sessions.count(t.uid) == 0:
                # As the uid's last logout treats its tickets (clear_on_logout): a copy it would
                # have kept is left, untracked, for the primary not to name a destroyed cache.
                cleared = self._cleared_at_logout(t.origin)
                if cleared:
                    self._destroy_locked(info.ccache, t.uid, t.gid)
                log.info("renewed %s (uid %d) after a login retired it and the uid's logins ended: "
                         "%s its copy %s", name, t.uid, "destroyed" if cleared else "left", info.ccache)
                return "no longer tracked"
            copy = self._track(info, t.gid, t.origin)
            if p is not None:
                p.ccaches.add(copy.ccache)
            self.save()
            log.info("renewed %s (uid %d) after a login retired it: its copy %s is the primary, tracked%s",
                     name, t.uid, copy.ccache, " and held with the pending login" if p is not None else "")
            self._schedule_renewal(copy)
            return "no longer tracked"
        stale = superseded or (t.cleared and self.sessions.count(t.uid) == 0)
        if stale:
            self._destroy_locked(info.ccache, t.uid, t.gid)
        log.info("renewed %s (uid %d) after it stopped being tracked%s: %s", name, t.uid,
                 " (a login retired it)" if superseded else "",
                 f"destroyed {info.ccache}" if stale else "not tracked again")
        return "no longer tracked"

    def _renew_tracked(self, name: str, t: Tracked) -> str | None:
        cfg = self.config
        try:
            info = self.krb.renew(name, t.uid, t.gid, timeout=cfg.kdc_timeout, grace=cfg.renew_grace)
        except errors.KdcUnreachable:
            t.attempts += 1
            self.renew_failures += 1
            delay = backoff(t.attempts, cfg.retry_min, cfg.retry_max, t.endtime)
            metrics.RENEWALS.labels(P.KDC_UNREACHABLE).inc()
            log.warning("renewing %s (uid %d): no KDC answered (attempt %d); retry in %.1fs, ticket ends %s",
                        name, t.uid, t.attempts, delay, fmt(t.endtime),
                        extra=journal.ticket("renew", t, P.KDC_UNREACHABLE, name))
            self._retry(name, delay)
            return "no KDC answered"
        except errors.NotRenewable as exc:
            t.renewable = False
            metrics.RENEWALS.labels(metrics.NOT_RENEWABLE).inc()
            self._schedule_renewal(t)  # logs once
            return f"not renewable: {exc}"
        except errors.QuotaExceeded as exc:
            self.renew_failures += 1
            metrics.RENEWALS.labels(P.QUOTA).inc()
            log.error("renewing %s (uid %d): key quota exceeded; old ticket kept: %s", name, t.uid, exc,
                      extra=journal.ticket("renew", t, P.QUOTA, name))
            self._retry(name, backoff(t.attempts + 1, cfg.retry_min, cfg.retry_max, t.endtime))
            return "key quota exceeded"
        except Exception as exc:
            # The cache is gone (the user ran kdestroy) or unreadable: stop tracking it.
            self.renew_failures += 1
            metrics.RENEWALS.labels(P.KDC_ERROR).inc()
            log.warning("renewing %s (uid %d) failed: %s; no longer tracked", name, t.uid, exc,
                        extra=journal.ticket("renew", t, P.KDC_ERROR, name))
            self._untrack(name)
            return str(exc)
        with self.lock:
            if self.tickets.get(name) is not t:
                return self._renewed_untracked(name, t, info)
            if info.ccache != name:
                # The renewal switched the collection to a new cache: follow it.
                self.tickets.pop(name, None)
                t.ccache = info.ccache
                self.tickets[info.ccache] = t
                for p in self.pending.values():
                    p.rename(name, info.ccache)
            t.update(info)
            t.attempts = 0
            t.renewed += 1
            self.renewals += 1
            self.save()
        if info.ccache != name:
            self.scheduler.cancel(("renew", name))
        metrics.RENEWALS.labels(P.OK).inc()
        log.info("renewed %s (uid %d) until %s", t.ccache, t.uid, fmt(t.endtime),
                 extra=journal.ticket("renew", t, P.OK))
        self._schedule_renewal(t)
        return None
