"""The service's state and the few operations every part of it shares.

``Core`` holds, under one lock: the session table, the tracked ccaches (:class:`Tracked`),
the logins between ``auth`` and ``open`` (:class:`Pending`), the scheduler and the state
writer (``state.StateWriter``).  The parts of the service build on it, each calling only
down this chain (never back up through a callback of its own):

    core  <-  renewal  <-  adoption  <-  recovery  <-  service (the request handlers)
    core  <-  clearing  <-----------------'

All Kerberos work goes through ``self.krb`` (``tickets.krb.KrbSide``); krb5 calls run
outside the lock, except destroying a KEYRING cache (a few local keyctl calls).
"""

from __future__ import annotations

import json
import logging
import operator
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from . import metrics
from .config import Config
from .krb import Krb5, KrbSide
from .ratelimit import RateLimitedLog
from .scheduler import Scheduler
from .sessions import Reaper, SessionTable
from .state import StateWriter

log = logging.getLogger("keyinit-ticketd")

LOGIN, ADOPTED, KEYTAB = "login", "adopted", "keytab"
#: A TGT forwarded by the client (GSSAPI delegation) that sshd wrote to a FILE cache; the service
#: moved it into the persistent collection at ``open``.  Cleared at the last logout like LOGIN.
DELEGATED = "delegated"
#: Origins the service brought in for a login: "own" clears these at the last logout.
LOGIN_ORIGINS = frozenset({LOGIN, DELEGATED})


class Peer(NamedTuple):
    """The caller of a request, from SO_PEERCRED (never from a field of the message)."""

    pid: int
    uid: int


@dataclass(slots=True)
class Tracked:
    """A ccache the service keeps fresh."""

    ccache: str
    uid: int
    gid: int
    principal: str
    origin: str  # LOGIN (acquired at a login), DELEGATED (forwarded by ssh), ADOPTED (the user's own kinit),
    # KEYTAB ([[keytab]])
    starttime: float = 0.0
    endtime: float = 0.0
    renew_till: float = 0.0
    renewable: bool = False
    attempts: int = 0  # consecutive renewals the KDC did not answer
    warned: bool = False  # the "cannot renew further" line was logged
    keytab: int = -1  # index into config.keytabs for KEYTAB entries
    renewed: int = 0
    # The service destroyed this cache (logout, expired auth, destroy request): a renewal that
    # was in flight meanwhile must destroy what it wrote instead of bringing the ticket back.
    cleared: bool = False
    # A login's newer TGT of the same principal retired this cache (TicketInfo.replaced): a
    # renewal that was in flight meanwhile wrote a copy that nothing needs (see Renewal).
    superseded: bool = False

    def to_json(self) -> dict[str, Any]:
        return dict(zip(_JSON_FIELDS, _json_values(self), strict=True))

    def update(self, info: Any) -> None:
        """Take the principal and times of a TicketInfo (a new or renewed TGT)."""
        self.principal = str(info.principal)
        self.starttime = float(info.starttime or 0)
        self.endtime = float(info.endtime or 0)
        self.renew_till = float(info.renew_till or 0)
        self.renewable = bool(info.renewable)
        self.warned = False


#: What a Tracked shows of itself (status rows, the state file), in this order.
_JSON_FIELDS = ("ccache", "uid", "gid", "principal", "origin", "starttime", "endtime", "renew_till",
                "renewable", "renewed")
_json_values = operator.attrgetter(*_JSON_FIELDS)


@dataclass(slots=True)
class Pending:
    """Caches acquired at ``auth`` for a uid that no session has claimed yet.

    ``auths`` holds one (pid, parent pid, cache) per auth not yet followed by an ``open``: with
    two logins of one user in flight, the first open must not take the entry (and the first
    logout then clear the second login's cache before its session opens; the 100-login load test
    hit it).  Only an open from the process that sent the auth (sshd's monitor with password
    authentication, pamtester, su), from its parent (the monitor, when keyboard-interactive
    authentication ran PAM in a child) or from a child of it claims a login: a session no auth
    of this service preceded (an ssh key, GSSAPI) claims none, or its logout cleared a login's
    cache before that login's session opened.  Pid 0 (a state file without pids) is claimed by
    any open.

    ``ccaches`` are the caches held until a session claims them or the deadline passes.  An
    open that claims one auth while others wait releases that auth's own cache (:meth:`release`):
    the session now holds it, and its logout clears it even while another auth of the uid (an
    ssh client gone after authenticating, an auth-only PAM check) still waits.
    """

    gid: int
    deadline: float
    ccaches: set[str] = field(default_factory=set)
    auths: list[tuple[int, int, str]] = field(default_factory=list)

    @property
    def logins(self) -> int:
        """The auths not yet followed by an open."""
        return len(self.auths)

    def claim(self, pid: int, parent: Callable[[], int] = lambda: 0) -> tuple[int, int, str] | None:
        """Take an auth that process ``pid`` may claim: one it sent, its child sent, or its parent
        sent (``parent()`` gives its parent pid, read only when nothing else matched); None if none."""
        for i, auth in enumerate(self.auths):
            if auth[0] in (0, pid) or auth[1] == pid:
                return self.auths.pop(i)
        if self.auths:
            ppid = parent()
            for i, auth in enumerate(self.auths):
                if auth[0] == ppid != 0:
                    return self.auths.pop(i)
        return None

    def release(self, name: str) -> None:
        """A claimed auth's cache is its session's now: held no longer, unless a waiting auth names it."""
        if all(auth[2] != name for auth in self.auths):
            self.ccaches.discard(name)

    def rename(self, old: str, new: str | None) -> None:
        """A held cache was replaced by ``new`` (a renewal's new cache; None: by nothing)."""
        if old in self.ccaches:
            self.ccaches.discard(old)
            if new is not None:
                self.ccaches.add(new)
        self.auths = [(pid, ppid, (new or "") if name == old else name) for pid, ppid, name in self.auths]


class Core:
    """All state of the ticket service, guarded by one lock; krb5 calls run outside it."""

    def __init__(self, config: Config, krb: KrbSide | None = None) -> None:
        self.config = config
        self.krb: KrbSide = krb if krb is not None else Krb5()
        self.lock = threading.RLock()
        self.sessions = SessionTable()
        self.tickets: dict[str, Tracked] = {}
        self.pending: dict[int, Pending] = {}
        self.scheduler = Scheduler(workers=config.renew_workers)
        self.reaper: Reaper | None = None
        self.started = time.time()
        self.renewals = 0
        self.renew_failures = 0
        self.ratelimited = RateLimitedLog()  # for lines any user's request can cause
        # Caches whose renewal is in flight (a renew request and the scheduler must not both
        # renew one cache: two new caches, one of them never tracked).
        self._renewing: set[str] = set()
        # auth requests between acquire_password and the pending entry, per uid: a cache
        # listed in that window is a login's and must not be cleared (clear_on_logout=all).
        self._authing: dict[int, int] = {}
        # Read at each write: the current config's path and state (a test swaps both).
        self.writer = StateWriter(self.lock, lambda: self.config.state_file, lambda: self._snapshot(),
                                  on_failure=metrics.STATE_WRITE_FAILURES.inc)
        # The /proc/key-users watch (tickets/keywatch.py), made at start when adopt_watch_interval > 0.
        self._keywatch_state: Any = None
        # Each tracked ticket's state-file JSON and the values it was made from (see _snapshot).
        self._ticket_texts: dict[str, tuple[tuple[Any, ...], str]] = {}

    @property
    def _writer_thread(self) -> threading.Thread:
        return self.writer.thread

    def save(self) -> None:
        """Mark the state changed (caller holds the lock); the writer thread persists it soon.

        Request handlers' changes are acknowledged only after :meth:`commit` (the server calls
        it for every mutating op), so what a client was told survives a kill -9.
        """
        self.writer.mark()

    def commit(self) -> bool:
        """Block until every change so far is in the state file; False if it is not (see StateWriter)."""
        return self.writer.commit()

    def _snapshot(self) -> tuple[dict[str, Any], dict[str, list[str]]]:
        """The state file's content (caller holds the lock): sessions and tickets as JSON texts.

        A ticket's text is encoded again only when one of its values changed: every mutating
        request rewrites the file, and encoding every ticket each time cost ~1.7 us per ticket
        (0.17 ms a login with 100 users logged in) on the request path.
        """
        old, texts = self._ticket_texts, {}
        tickets = []
        for t in self.tickets.values():
            if t.origin == KEYTAB:
                continue
            values = _json_values(t)
            hit = old.get(t.ccache)
            if hit is not None and hit[0] == values:
                text = hit[1]
            else:
                text = json.dumps(dict(zip(_JSON_FIELDS, values, strict=True)), separators=(",", ":"))
            texts[t.ccache] = (values, text)
            tickets.append(text)
        self._ticket_texts = texts
        data = {
            "pending": [{"uid": u, "gid": p.gid, "deadline": p.deadline, "ccaches": sorted(p.ccaches),
                         "logins": p.logins, "auths": p.auths}
                        for u, p in self.pending.items()],
        }
        return data, {"tickets": tickets, "sessions": [s.json_text() for s in self.sessions.by_sid.values()]}

    def _track(self, info: Any, gid: int, origin: str, keytab: int = -1) -> Tracked:
        """Record (or refresh) a ccache from a TicketInfo (caller holds the lock)."""
        t = self.tickets.get(info.ccache)
        if t is None:
            t = Tracked(info.ccache, info.uid, gid, str(info.principal), origin, keytab=keytab)
            self.tickets[info.ccache] = t
        elif origin == LOGIN and t.origin == ADOPTED:
            t.origin = LOGIN  # the service wrote this cache now: it is the service's to clear
        t.update(info)
        return t

    def _untrack(self, name: str) -> None:
        with self.lock:
            t = self.tickets.pop(name, None)
            for p in self.pending.values():
                p.rename(name, None)
            if t is not None:
                self.save()
        self.scheduler.cancel(("renew", name))

    def _cleared_at_logout(self, origin: str) -> bool:
        """Whether ``clear_on_logout`` destroys a tracked cache of ``origin`` at its uid's last
        logout: "all" every one, "own" a login's (and a delegated one's), "none" none."""
        policy = self.config.clear_on_logout
        return policy == "all" or (policy == "own" and origin in LOGIN_ORIGINS)

    def _held(self, uid: int, name: str) -> bool:
        """Whether ``name`` is a login's cache waiting for its session (caller holds the lock)."""
        p = self.pending.get(uid)
        return p is not None and name in p.ccaches

    def _destroy_locked(self, name: str, uid: int, gid: int) -> None:
        """Untrack and krb5_cc_destroy a cache, holding the lock so no open/renewal interleaves.

        Destroying a KEYRING cache is a few local keyctl calls (no KDC), so holding the lock
        costs little.
        """
        t = self.tickets.get(name)
        if t is not None:
            t.cleared = True
        self._untrack(name)
        try:
            self.krb.destroy(name, uid, gid)
        except Exception as exc:
            log.warning("destroying %s (uid %d): %s", name, uid, exc)
