"""Recovery at start: the state file's sessions, tickets and pending logins, checked against
the kernel, after a restart or a kill -9.

Sessions whose process died while the service was down are reaped (and their uid's last
close runs); caches a renewal had retired when the last process died are destroyed and
their tickets follow the cache that replaced them; every live uid is touched and scanned,
and every ticket scheduled again.
"""

from __future__ import annotations

import logging
from functools import partial

from . import state as statefile
from .adoption import Adoption
from .clearing import Clearing
from .core import ADOPTED, Pending, Tracked
from .sessions import boot_ticks

log = logging.getLogger("keyinit-ticketd")


class Recovery(Adoption, Clearing):
    """Rebuilds the service's state at start."""

    def restore(self) -> None:
        """Rebuild from the state file: live sessions are tracked again, dead ones reaped."""
        data = statefile.load(self.config.state_file)
        if not data:
            return
        assert self.reaper is not None
        had_sessions: set[int] = set()
        with self.lock:
            for raw in data.get("tickets", []):
                try:
                    t = Tracked(raw["ccache"], int(raw["uid"]), int(raw["gid"]), raw["principal"],
                                raw["origin"], float(raw["starttime"]), float(raw["endtime"]),
                                float(raw["renew_till"]), bool(raw["renewable"]))
                except (KeyError, TypeError, ValueError):
                    continue
                self.tickets[t.ccache] = t
            for raw in data.get("pending", []):
                try:
                    auths = raw.get("auths")
                    p = Pending(int(raw["gid"]), float(raw["deadline"]), set(raw["ccaches"]),
                                [(int(a), int(b), str(c)) for a, b, c in auths] if auths is not None
                                else [(0, 0, "")] * int(raw.get("logins", 1)))
                    self.pending[int(raw["uid"])] = p
                except (KeyError, TypeError, ValueError):
                    continue
            live = 0
            for raw in data.get("sessions", []):
                try:
                    uid, pid, pid_start = int(raw["uid"]), int(raw["pid"]), int(raw["pid_start"])
                    had_sessions.add(uid)
                    session = self.sessions.add(uid, int(raw["gid"]), str(raw["user"]), pid, pid_start,
                                                float(raw["opened"]), sid=int(raw["sid"]))
                except (KeyError, TypeError, ValueError):
                    continue
                # A start time the open could not read: the session's opener is the process under
                # its pid that already ran at the open (wall clock taken back to the boot clock).
                alive_at = 0 if pid_start else boot_ticks(session.opened)
                if not self.reaper.watch(session.sid, pid, pid_start, alive_at):
                    log.info("session %d of uid %d: process %d died while the service was down; reaped",
                             session.sid, uid, pid)
                    self.sessions.remove(session.sid)
                else:
                    live += 1
            log.info("restored %d session(s), %d ticket(s), %d pending login(s) from %s", live,
                     len(self.tickets), len(self.pending), self.config.state_file)
        # Outside the lock: these talk to the kernel / KDC.
        self._sweep_retired()
        for uid, p in list(self.pending.items()):
            self.scheduler.schedule(("pending", uid), p.deadline, partial(self._pending_expired, uid))
        for uid in had_sessions:
            if self.sessions.count(uid) == 0:
                self._last_close(uid)
        for uid in self.sessions.uids():
            self._refresh_uid(uid)
        for t in list(self.tickets.values()):
            if t.ccache in self.tickets:
                self._schedule_renewal(t)
        with self.lock:
            self.save()

    def _sweep_retired(self) -> None:
        """Destroy the caches a renewal had retired when the last process died (kill -9 during the
        grace period), and follow a tracked one to the cache that replaced it.

        The deferred destroy lived in the dead process's memory; the RETIRED_MARK in the cache
        itself survives.  Without this the next scan adopted them as extra tickets.
        """
        with self.lock:
            uids = {t.uid for t in self.tickets.values()} | set(self.sessions.uids()) | set(self.pending)
        for uid in sorted(uids):
            try:
                swept = self.krb.sweep_retired(uid)
            except Exception as exc:
                log.warning("looking for retired caches of uid %d: %s", uid, exc)
                continue
            if not swept:
                continue
            log.info("destroyed %d cache(s) of uid %d retired by a renewal before the restart: %s",
                     len(swept), uid, ", ".join(swept))
            try:
                infos = self.krb.list_caches(uid)
            except Exception:
                infos = []
            with self.lock:
                for name in swept:
                    t = self.tickets.pop(name, None)
                    if t is None:
                        continue
                    # Its successor: a cache of the same principal, written by this service (or the
                    # adopted copy of the user's own), not tracked yet; the freshest one.
                    heirs = [i for i in infos if i.ccache not in self.tickets
                             and str(i.principal) == t.principal and (i.service or t.origin == ADOPTED)]
                    if heirs:
                        heir = max(heirs, key=lambda i: i.endtime)
                        t.ccache = heir.ccache
                        t.update(heir)
                        self.tickets[heir.ccache] = t
                    for p in self.pending.values():
                        p.rename(name, t.ccache if heirs else None)
                self.save()
