"""Clearing at logout: sessions that end, the uid's last one, and logins that never opened.

At the last session of a uid (closed, or reaped when its process died without a close)
its tickets stop being renewed and its caches are destroyed per ``clear_on_logout``: the
login's own (``own``), every cache in the collection (``all``) or none.  A login's TGT that
no session claimed within ``pending_auth_timeout`` (or whose account check refused it) is
destroyed too.  No cache is destroyed while a session of the uid is open, nor one held by a
login between its ``auth`` and its ``open``.
"""

from __future__ import annotations

import logging
import time

from . import journal
from .accounts import primary_gid
from .core import KEYTAB, Core
from .sessions import Session

log = logging.getLogger("keyinit-ticketd")


class Clearing(Core):
    """Ends sessions and destroys what their logins leave behind."""

    def _pending_expired(self, uid: int) -> None:
        """An auth no session followed in time: destroy its caches unless the uid is logged in."""
        with self.lock:
            p = self.pending.get(uid)
            if p is None or p.deadline > time.time() + 0.001:
                return
            del self.pending[uid]
            keep = self.sessions.count(uid) > 0
            names = [n for n in p.ccaches if n in self.tickets]
            self.save()
        if keep:
            return
        for name in names:
            with self.lock:
                # A session opened since (its open found no pending entry): the cache is its now.
                if self.sessions.count(uid) or self._held(uid, name):
                    log.info("uid %d logged in meanwhile: keeping %s", uid, name)
                    return
                log.info("auth of uid %d not followed by a session (refused, or none within %.0fs): "
                         "destroying %s", uid, self.config.pending_auth_timeout, name)
                self._destroy_locked(name, uid, p.gid)

    def _abandon_login(self, uid: int, sender: int) -> None:
        """The pending login of ``uid`` that process ``sender`` authenticated will never open a
        session (its account check refused it).

        It stops counting at once: otherwise it would keep the uid's login caches held until
        pending_auth_timeout, and a later login's ticket would outlive that login's logout.  When
        it was the last pending login and no session is open, its TGT is destroyed now.
        """
        with self.lock:
            p = self.pending.get(uid)
            if p is None or p.claim(sender) is None:
                return
            if p.logins > 0:
                self.save()
                return
            p.deadline = time.time()
            self.save()
        self._pending_expired(uid)

    def _reaped(self, sid: int) -> None:
        """The reaper saw the process of session ``sid`` exit (pidfd readable)."""
        with self.lock:
            session = self.sessions.by_sid.get(sid)
        if session is not None:
            self._end_session(session, f"reaped (process {session.pid} exited without close_session)")

    def _identified(self, sid: int, start: int) -> None:
        """The reaper read the start time of session ``sid``'s process, which its open could not
        (out of descriptors): recorded, so a restart tells that process from a later one of its pid."""
        with self.lock:
            session = self.sessions.by_sid.get(sid)
            if session is not None and not session.pid_start:
                session.pid_start = start
                session.encoded = ""
                self.save()

    def _end_session(self, session: Session, why: str) -> list[str]:
        with self.lock:
            if self.sessions.remove(session.sid) is None:
                return []
            left = self.sessions.count(session.uid)
            self.save()
        if self.reaper is not None:
            self.reaper.unwatch(session.sid)
        log.info("session %d of %s (uid %d) %s: %d left", session.sid, session.user, session.uid, why, left,
                 extra=journal.fields(event="close", uid=session.uid, user=session.user, sid=session.sid))
        if left:
            return []
        return self._last_close(session.uid)

    def _last_close(self, uid: int) -> list[str]:
        """The uid's last session ended: clear per clear_on_logout and stop renewing its tickets.

        No cache is destroyed while a session of the uid is open: the count is checked under
        the lock at the start and again before each destroy, which also runs under the lock, so
        an ``open`` (which takes the lock) comes either before the check or after the destroy.
        """
        policy = self.config.clear_on_logout
        with self.lock:
            if self.sessions.count(uid):
                return []  # a login opened a session since the last close: its tickets stay
            mine = [t for t in self.tickets.values() if t.uid == uid and t.origin != KEYTAB
                    and not self._held(uid, t.ccache)]
            for t in mine:
                self.tickets.pop(t.ccache, None)
            names = [t.ccache for t in mine if self._cleared_at_logout(t.origin)]
            for t in mine:
                t.cleared = t.ccache in names
            self.save()
            for key in (("scan", uid), ("touch", uid), *(("renew", t.ccache) for t in mine)):
                self.scheduler.cancel(key)
        listed: list[str] = []
        if policy == "all":
            try:
                listed = [i.ccache for i in self.krb.list_caches(uid) if i.ccache not in names]
            except Exception as exc:
                log.warning("listing caches of uid %d: %s", uid, exc)
        # The passwd look-up (NSS: files, sssd, systemd-userdb...) only when nothing tracked gives
        # the gid and there is something to destroy: not at every last close; outside the lock.
        gid = mine[0].gid if mine else primary_gid(uid) if names or listed else uid
        cleared: list[str] = []
        for name in names + listed:
            with self.lock:
                if self.sessions.count(uid):
                    log.info("uid %d logged in again: the rest of its caches stay", uid)
                    break
                # A login's cache (pending, or its auth still in flight), or one tracked again
                # (a keytab entry, a new login's): not this logout's to clear.
                if self._held(uid, name) or name in self.tickets or (
                        name in listed and self._authing.get(uid)):
                    continue
                self._destroy_locked(name, uid, gid)
                cleared.append(name)
        log.info("last session of uid %d closed: cleared %d cache(s) (clear_on_logout=%s)", uid,
                 len(cleared), policy, extra=journal.fields(event="cleared", uid=uid))
        return cleared
