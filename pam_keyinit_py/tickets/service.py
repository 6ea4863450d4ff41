"""The ticket service's logic: logins, sessions, tracked ccaches, renewal, clearing, recovery.

Every Kerberos operation goes through ``tickets.ccache`` (pykrb5, run with the
user's uid and gid so the keys are owned by and charged to the user).  This module
decides *when*: the TGT of a password login is acquired at ``auth``, kept as a
pending login until ``open`` (sshd may authenticate in another process than the one
that opens the session), renewed by the scheduler at a fraction of its lifetime
while any session of the uid is open, and destroyed at the uid's last ``close``
according to ``clear_on_logout``.

State changes are written to the state file before the reply leaves, so a ``kill -9``
loses nothing that a client was told had happened.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .. import protocol as P
from . import journal, kdclimit, metrics, quota
from . import state as statefile
from .accounts import primary_gid
from .config import Config
from .ratelimit import RateLimitedLog
from .scheduler import Scheduler, backoff, renew_due
from .sessions import Reaper, Session, SessionTable

log = logging.getLogger("keyinit-ticketd")

LOGIN, ADOPTED, KEYTAB = "login", "adopted", "keytab"
#: A TGT forwarded by the client (GSSAPI delegation) that sshd wrote to a FILE cache; the service
#: moved it into the persistent collection at ``open``.  Cleared at the last logout like LOGIN.
DELEGATED = "delegated"
#: Origins the service brought in for a login: "own" clears these at the last logout.
LOGIN_ORIGINS = frozenset({LOGIN, DELEGATED})
#: What _renew returns when another thread is renewing the same cache right now.
RENEWING = "renewal already in progress"
#: A request waits at most this long for its change to reach the state file.
COMMIT_TIMEOUT = 5.0
#: A failed state write is retried after this long, doubling up to the max (or at the next change).
WRITE_RETRY_MIN = 0.25
WRITE_RETRY_MAX = 5.0
#: While writes keep failing, the error is logged again this often.
WRITE_ERROR_LOG_INTERVAL = 60.0


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

    def to_json(self) -> dict[str, Any]:
        return {"ccache": self.ccache, "uid": self.uid, "gid": self.gid, "principal": self.principal,
                "origin": self.origin, "starttime": self.starttime, "endtime": self.endtime,
                "renew_till": self.renew_till, "renewable": self.renewable, "renewed": self.renewed}


@dataclass(slots=True)
class Pending:
    """Caches acquired at ``auth`` for a uid that no session has claimed yet.

    ``logins`` counts the auths not yet followed by an ``open``: with two logins of one user in
    flight, the first open must not take the entry (and the first logout then clear the second
    login's cache before its session opens; the 100-login load test hit it).
    """

    gid: int
    deadline: float
    ccaches: set[str] = field(default_factory=set)
    logins: int = 0


def _ccache_api():  # imported late: the daemon starts and answers before libkrb5 is loaded
    from . import ccache

    return ccache


def _errors():
    from . import errors

    return errors


def _principals():  # kuserok, the KDC's account view and kpasswd (krb5 loaded late, as above)
    from . import principals

    return principals


class Service:
    """All state of the ticket service, guarded by one lock; krb5 calls run outside it."""

    def __init__(self, config: Config) -> None:
        self.config = config
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
        # Group commit of the state file (see save/commit).
        self._written_cv = threading.Condition(self.lock)
        self._dirty = 0
        self._written = 0  # the last generation that reached the file
        self._attempted = 0  # the last generation the writer tried to write (written or not)
        self.write_error: str | None = None  # why the last write failed; None once one succeeds
        self.write_failing_since = 0.0
        self.write_failures = 0
        self._stopping = False
        self._writer_alive = True
        self._writer_thread = threading.Thread(target=self._writer, name="state-writer", daemon=True)
        # The /proc/key-users watch (tickets/keywatch.py), made at start when adopt_watch_interval > 0.
        self._keywatch_state: Any = None

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Restore the saved state, start the reaper and the scheduler, and the keytab entries."""
        self.reaper = Reaper(self._reaped)
        kdclimit.SLOTS.configure(self.config.max_kdc_calls)
        statefile.remove_leftovers(self.config.state_file)
        self._writer_thread.start()
        self.restore()
        for index, _entry in enumerate(self.config.keytabs):
            self.scheduler.schedule(("keytab", index), time.time(), lambda i=index: self._keytab_job(i))
        self._start_keywatch()
        self.scheduler.start()

    def stop(self) -> None:
        """Stop renewing and flush the state file (tickets stay in the kernel for the next start)."""
        self.scheduler.stop()
        with self.lock:
            self._stopping = True
            self._written_cv.notify_all()
        self._writer_thread.join(10)

    def save(self) -> None:
        """Mark the state changed (caller holds the lock); the writer thread persists it soon.

        Request handlers call :meth:`commit` before they reply, so what a client was told
        survives a kill -9; concurrent requests share one write (group commit), which keeps a
        host with thousands of sessions from rewriting the file once per login.
        """
        self._dirty += 1
        self._written_cv.notify_all()

    def commit(self) -> bool:
        """Block until every change made so far is in the state file; False if it is not.

        False when the write attempt that covered these changes failed (the writer keeps
        retrying in the background), when the writer thread is gone, or after
        :data:`COMMIT_TIMEOUT`.  A request is acknowledged only when this returned True.
        """
        with self.lock:
            target = self._dirty
            deadline = time.monotonic() + COMMIT_TIMEOUT
            while self._written < target and self._writer_alive:
                if self._attempted >= target and self.write_error is not None:
                    return False  # the attempt that included this change failed
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._written_cv.wait(left)
            return self._written >= target

    def _snapshot(self) -> tuple[dict[str, Any], dict[str, list[str]]]:
        data = {
            "tickets": [t.to_json() for t in self.tickets.values() if t.origin != KEYTAB],
            "pending": [{"uid": u, "gid": p.gid, "deadline": p.deadline, "ccaches": sorted(p.ccaches),
                         "logins": p.logins}
                        for u, p in self.pending.items()],
        }
        return data, {"sessions": [s.json_text() for s in self.sessions.by_sid.values()]}

    def _writer(self) -> None:
        """The state-file writer: snapshot under the lock, write (atomically) outside it.

        A failed write is retried: at once when another change comes, else after a back-off
        (WRITE_RETRY_MIN doubling to WRITE_RETRY_MAX).  The first failure and the recovery are
        logged, and a reminder every WRITE_ERROR_LOG_INTERVAL while it lasts.  Whatever ends
        this thread, waiters in commit() are woken and see it gone: a request must never hang
        on a writer that died.
        """
        delay = WRITE_RETRY_MIN
        last_logged = 0.0
        try:
            while True:
                with self.lock:
                    while self._written >= self._dirty and not self._stopping:
                        self._written_cv.wait()
                    if self._stopping and self._written >= self._dirty:
                        return
                    generation = self._dirty
                    data, raw = self._snapshot()
                error = None
                try:
                    statefile.save(self.config.state_file, data, raw)
                except OSError as exc:
                    error = exc.strerror or exc.__class__.__name__
                except Exception as exc:  # the state holds no secret; only the class is logged anyway
                    error = exc.__class__.__name__
                with self.lock:
                    self._attempted = max(self._attempted, generation)
                    if error is None:
                        self._written = max(self._written, generation)
                        if self.write_error is not None:
                            log.warning("state file %s written again after %d failed attempt(s) since %s",
                                        self.config.state_file, self.write_failures,
                                        _fmt(self.write_failing_since))
                        self.write_error, self.write_failures, self.write_failing_since = None, 0, 0.0
                        delay = WRITE_RETRY_MIN
                    else:
                        now = time.time()
                        if self.write_error is None:
                            self.write_failing_since = now
                        self.write_failures += 1
                        metrics.STATE_WRITE_FAILURES.inc()
                        if self.write_error != error or now - last_logged >= WRITE_ERROR_LOG_INTERVAL:
                            last_logged = now
                            log.error("cannot write state file %s: %s; changes since %s are not "
                                      "acknowledged to clients; retrying (%d failed attempt(s))",
                                      self.config.state_file, error, _fmt(self.write_failing_since),
                                      self.write_failures)
                        self.write_error = error
                    self._written_cv.notify_all()
                    if error is not None:
                        if self._stopping:
                            log.error("stopping with changes not in the state file: %s", error)
                            return
                        # A new change (save() notifies) cuts the wait short: its request waits.
                        self._written_cv.wait(delay)
                        delay = min(WRITE_RETRY_MAX, delay * 2)
        except Exception as exc:
            log.critical("state writer stopped: %s; changes are no longer saved", exc.__class__.__name__)
        finally:
            with self.lock:
                self._writer_alive = False
                self._written_cv.notify_all()

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
                    p = Pending(int(raw["gid"]), float(raw["deadline"]), set(raw["ccaches"]),
                                int(raw.get("logins", 1)))
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
                if not self.reaper.watch(session.sid, pid, pid_start):
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
            self.scheduler.schedule(("pending", uid), p.deadline, lambda u=uid: self._pending_expired(u))
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
        api = _ccache_api()
        with self.lock:
            uids = {t.uid for t in self.tickets.values()} | set(self.sessions.uids()) | set(self.pending)
        for uid in sorted(uids):
            try:
                swept = api.sweep_retired(uid)
            except Exception as exc:
                log.warning("looking for retired caches of uid %d: %s", uid, exc)
                continue
            if not swept:
                continue
            log.info("destroyed %d cache(s) of uid %d retired by a renewal before the restart: %s",
                     len(swept), uid, ", ".join(swept))
            try:
                infos = api.list_caches(uid)
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
                        _update(t, heir)
                        self.tickets[heir.ccache] = t
                    for p in self.pending.values():
                        if name in p.ccaches:
                            p.ccaches.discard(name)
                            if heirs:
                                p.ccaches.add(t.ccache)
                self.save()

    # ---------------------------------------------------------------- requests

    def auth(self, user: str, uid: int, gid: int, password: str, principal: str | None,
             kuserok: bool = False) -> dict[str, Any]:
        """Acquire a TGT for ``principal`` (default user@default_realm) into KEYRING:persistent:<uid>.

        With ``kuserok`` the success reply also carries krb5_kuserok(principal, user), which
        saves the hook's acct_mgmt a request (absent when krb5_kuserok fails: acct_mgmt asks then).
        """
        with self.lock:
            self._authing[uid] = self._authing.get(uid, 0) + 1
        try:
            reply = self._auth(user, uid, gid, password, principal)
            metrics.AUTHS.labels(reply.get("code", P.OK)).inc()
            if kuserok and reply.get("ok"):
                try:
                    reply["kuserok"] = _principals().kuserok(reply["principal"], user)
                except _errors().TicketError as exc:
                    log.warning("auth %s (uid %d): krb5_kuserok: %s", user, uid, exc)
            return reply
        finally:
            del password
            with self.lock:
                # Only now: a successful auth has put its cache on the pending list.
                left = self._authing.get(uid, 1) - 1
                if left:
                    self._authing[uid] = left
                else:
                    self._authing.pop(uid, None)

    def _auth(self, user: str, uid: int, gid: int, password: str, principal: str | None) -> dict[str, Any]:
        ccache = _ccache_api()
        errors = _errors()
        cfg = self.config
        if not principal:
            principal = cfg.principal_name.replace("{user}", user)
            if "@" not in principal:
                principal = f"{principal}@{default_realm()}"
        try:
            info = ccache.acquire_password(
                principal, password, uid, gid,
                lifetime=cfg.lifetime or None, renew_lifetime=cfg.renew_lifetime or None,
                forwardable=cfg.forwardable, timeout=cfg.kdc_timeout,
                validate=cfg.validate, validate_keytab=cfg.validate_keytab or None,
                validate_principal=cfg.validate_principal or None, fast=cfg.fast,
                fast_principal=cfg.fast_principal or None, canonicalize=cfg.canonicalize,
            )
        except errors.BadPassword:
            log.info("auth %s (uid %d): wrong password", principal, uid,
                     extra=journal.fields(event="auth", uid=uid, principal=principal, code=P.BAD_PASSWORD))
            return P.reply_error(P.BAD_PASSWORD, "wrong password")
        except errors.UnknownPrincipal:
            log.info("auth %s (uid %d): unknown principal", principal, uid)
            return P.reply_error(P.UNKNOWN_PRINCIPAL, f"principal {principal} unknown to the KDC")
        except errors.KdcUnreachable as exc:
            log.warning("auth %s (uid %d): no KDC answered: %s", principal, uid, exc,
                        extra=journal.fields(event="auth", uid=uid, principal=principal,
                                             code=P.KDC_UNREACHABLE))
            return P.reply_error(P.KDC_UNREACHABLE, "no KDC answered")
        except errors.QuotaExceeded as exc:
            log.error("auth %s (uid %d): key quota exceeded, no ticket stored: %s", principal, uid, exc,
                      extra=journal.fields(event="auth", uid=uid, principal=principal, code=P.QUOTA))
            return P.reply_error(P.QUOTA, "key quota of the user exceeded")
        except errors.PasswordExpired:
            # MIT answers KEY_EXP before it looks at the password: prove it before saying so.
            return self._expired(principal, uid, password)
        except (errors.ValidationFailed, errors.NoValidationKey) as exc:
            # A TGT that cannot be proven to come from the realm's KDC: a possible impostor.
            # The message names the keytab and the principal; it holds no secret.
            log.error("auth %s (uid %d): TGT validation failed (validate=%s), login refused: %s",
                      principal, uid, cfg.validate, exc)
            why = ("the host keytab has no key to validate the ticket with"
                   if isinstance(exc, errors.NoValidationKey) else
                   "the ticket did not validate against the host keytab")
            return P.reply_error(P.VALIDATION_FAILED, why)
        except errors.FastUnavailable as exc:
            log.error("auth %s (uid %d): fast = \"require\" and %s; login refused", principal, uid, exc)
            return P.reply_error(P.FAST_UNAVAILABLE, "no FAST armor for the password exchange")
        except errors.AccessDenied:
            log.info("auth %s (uid %d): principal disabled or locked out", principal, uid)
            return P.reply_error(P.DENIED, f"principal {principal} is disabled or locked out")
        except errors.TicketError as exc:
            # krb5's message names the principal and the reason, never the password.
            log.warning("auth %s (uid %d): %s: %s", principal, uid, exc.__class__.__name__, exc)
            return P.reply_error(P.KDC_ERROR, f"no ticket: {exc.__class__.__name__}")
        finally:
            del password  # the only reference the service held
        if info.principal != principal:
            log.info("auth %s (uid %d): the KDC's name for it is %s", principal, uid, info.principal)
            principal = info.principal
        for warning in info.warnings:
            log.warning("auth %s (uid %d): %s", principal, uid, warning)
        with self.lock:
            t = self._track(info, gid, LOGIN)
            p = self.pending.get(uid)
            if p is None:
                p = self.pending[uid] = Pending(gid, 0.0)
            p.deadline = time.time() + cfg.pending_auth_timeout
            p.ccaches.add(t.ccache)
            p.logins += 1
            self.save()
        self.scheduler.schedule(("pending", uid), p.deadline, lambda: self._pending_expired(uid))
        self._schedule_renewal(t)
        log.info("auth %s (uid %d): TGT in %s until %s%s", principal, uid, t.ccache, _fmt(t.endtime),
                 f" (validated with {info.validated})" if info.validated else "",
                 extra=journal.ticket("auth", t, P.OK))
        return P.reply_ok(principal=principal, ccache=t.ccache, endtime=t.endtime)

    def _expired(self, principal: str, uid: int, password: str) -> dict[str, Any]:
        """auth got KDC_ERR_KEY_EXP: answer PASSWORD_EXPIRED only if the password is the right one.

        The KDC checks the expiry before the preauthentication, so KEY_EXP comes for any
        password; a ticket for kadmin/changepw (which the KDC grants to an expired password)
        proves it, as pam_krb5 does.  Only then may the hook let the login go on to the change.
        """
        errors = _errors()
        try:
            _principals().verify_changepw(principal, password, timeout=self.config.kdc_timeout,
                                          **self._fast_args())
        except errors.BadPassword:
            log.info("auth %s (uid %d): wrong password (password expired)", principal, uid)
            return P.reply_error(P.BAD_PASSWORD, "wrong password")
        except errors.KdcUnreachable:
            log.warning("auth %s (uid %d): password expired; no KDC answered the check", principal, uid)
            return P.reply_error(P.KDC_UNREACHABLE, "no KDC answered")
        except errors.FastUnavailable as exc:
            log.error("auth %s (uid %d): fast = \"require\" and %s; login refused", principal, uid, exc)
            return P.reply_error(P.FAST_UNAVAILABLE, "no FAST armor for the password exchange")
        except errors.TicketError as exc:
            log.warning("auth %s (uid %d): password expired; check failed: %s", principal, uid,
                        exc.__class__.__name__)
            return P.reply_error(P.KDC_ERROR, f"no ticket: {exc.__class__.__name__}")
        finally:
            del password
        log.info("auth %s (uid %d): password expired (the password itself is right): it must be changed",
                 principal, uid)
        return P.reply_error(P.PASSWORD_EXPIRED, "password expired: it must be changed first")

    def _fast_args(self) -> dict[str, Any]:
        """The login's FAST policy for the kadmin/changepw exchanges (same keytab and host principal)."""
        cfg = self.config
        return {"fast": cfg.fast, "armor_keytab": cfg.validate_keytab or None,
                "armor_principal": cfg.validate_principal or None,
                "fast_principal": cfg.fast_principal or None}

    def account(self, user: str, uid: int, principal: str | None, kuserok: bool = True,
                kdc: bool = True) -> dict[str, Any]:
        """pam_sm_acct_mgmt's checks: krb5_kuserok(principal, user), then the KDC's view of the principal.

        The KDC probe sends no password (see principals.account_state), so it never counts
        towards a lockout.
        """
        errors = _errors()
        principals = _principals()
        if not principal:
            principal = f"{user}@{default_realm()}"
        if kuserok:
            try:
                allowed = principals.kuserok_account(principal, user, uid)
            except errors.TicketError as exc:
                log.warning("account %s (uid %d): %s", user, uid, exc)
                return P.reply_error(P.BAD_REQUEST, f"bad principal name {principal!r}")
            if not allowed:
                log.info("account %s (uid %d): %s may not log in to it (krb5_kuserok: .k5login, "
                         "auth_to_local)", user, uid, principal)
                if not kdc:
                    # The hook's own login, refused after its auth: no session will claim its TGT.
                    self._abandon_login(uid)
                return P.reply_error(P.DENIED, f"{principal} is not authorized to log in as {user}")
        if kdc:
            try:
                principals.account_state(principal, timeout=self.config.kdc_timeout)
            except errors.UnknownPrincipal:
                return P.reply_error(P.UNKNOWN_PRINCIPAL, f"principal {principal} unknown to the KDC")
            except errors.AccountExpired:
                log.info("account %s (uid %d): principal %s has expired", user, uid, principal)
                return P.reply_error(P.ACCOUNT_EXPIRED, f"the account of {principal} has expired")
            except errors.AccessDenied:
                log.info("account %s (uid %d): principal %s is disabled or locked out", user, uid, principal)
                return P.reply_error(P.DENIED, f"principal {principal} is disabled or locked out")
            except errors.PasswordExpired:
                log.info("account %s (uid %d): the password of %s has expired", user, uid, principal)
                return P.reply_error(P.PASSWORD_EXPIRED, "password expired: it must be changed")
            except errors.KdcUnreachable:
                log.warning("account %s (uid %d): no KDC answered", user, uid)
                return P.reply_error(P.KDC_UNREACHABLE, "no KDC answered")
            except errors.TicketError as exc:
                log.warning("account %s (uid %d): %s", user, uid, exc)
                return P.reply_error(P.KDC_ERROR, f"account check failed: {exc.__class__.__name__}")
        return P.reply_ok(principal=principal)

    def _abandon_login(self, uid: int) -> None:
        """One pending login of ``uid`` will never open a session (its account check refused it).

        It stops counting at once: otherwise it would keep the uid's login caches held until
        pending_auth_timeout, and a later login's ticket would outlive that login's logout.  When
        it was the last pending login and no session is open, its TGT is destroyed now.
        """
        with self.lock:
            p = self.pending.get(uid)
            if p is None:
                return
            p.logins -= 1
            if p.logins > 0:
                self.save()
                return
            p.deadline = time.time()
            self.save()
        self._pending_expired(uid)

    def chpass(self, user: str, uid: int, principal: str | None, old_password: str,
               new_password: str | None) -> dict[str, Any]:
        """pam_sm_chauthtok through kpasswd: check ``old_password`` (kadmin/changepw ticket), and
        with ``new_password`` change it.  Neither password reaches a log line or a reply."""
        errors = _errors()
        principals = _principals()
        if not principal:
            principal = f"{user}@{default_realm()}"
        timeout = self.config.kdc_timeout
        changing = new_password is not None
        try:
            if new_password is None:
                principals.verify_changepw(principal, old_password, timeout=timeout, **self._fast_args())
            else:
                principals.change_password(principal, old_password, new_password,
                                           timeout=max(timeout, 5.0), **self._fast_args())
        except errors.BadPassword:
            log.info("chpass %s (uid %d): wrong current password", principal, uid)
            return P.reply_error(P.BAD_PASSWORD, "wrong current password")
        except errors.UnknownPrincipal:
            return P.reply_error(P.UNKNOWN_PRINCIPAL, f"principal {principal} unknown to the KDC")
        except errors.PasswordRejected as exc:
            # The kpasswd server's own words (length, classes, history): what the user must read.
            log.info("chpass %s (uid %d): new password rejected: %s", principal, uid, exc)
            return P.reply_error(P.PASSWORD_REJECTED, str(exc))
        except errors.AccountExpired:
            return P.reply_error(P.ACCOUNT_EXPIRED, f"the account of {principal} has expired")
        except errors.AccessDenied as exc:
            log.info("chpass %s (uid %d): refused: %s", principal, uid, exc)
            return P.reply_error(P.DENIED, f"password change of {principal} refused")
        except errors.FastUnavailable as exc:
            log.error("chpass %s (uid %d): fast = \"require\" and %s; refused", principal, uid, exc)
            return P.reply_error(P.FAST_UNAVAILABLE, "no FAST armor for the password exchange")
        except errors.KdcUnreachable:
            log.warning("chpass %s (uid %d): no KDC or kpasswd server answered", principal, uid)
            return P.reply_error(P.KDC_UNREACHABLE, "no KDC or kpasswd server answered")
        except errors.TicketError as exc:
            log.warning("chpass %s (uid %d): %s", principal, uid, exc.__class__.__name__)
            return P.reply_error(P.KDC_ERROR, f"password change failed: {exc.__class__.__name__}")
        finally:
            del old_password, new_password
        if changing:
            log.info("chpass %s (uid %d): password changed through kpasswd", principal, uid)
        return P.reply_ok(principal=principal, changed=changing)

    def open(self, user: str, uid: int, gid: int, pid: int, ccache: str | None = None) -> dict[str, Any]:
        """Register a session opened by process ``pid`` (SO_PEERCRED of the caller).

        ``ccache``: a FILE cache of the uid holding a delegated TGT (sshd's GSSAPI
        ``KRB5CCNAME``); it is moved into KEYRING:persistent:<uid> once the session is counted
        (see :meth:`_take_delegated`), and the reply then carries the new cache and the
        ``krb5ccname`` the session should use.
        """
        pid_start = statefile.process_start_time(pid) or 0
        with self.lock:
            first = self.sessions.count(uid) == 0
            session = self.sessions.add(uid, gid, user, pid, pid_start, time.time())
            p = self.pending.get(uid)
            if p is not None:
                p.logins -= 1
                if p.logins > 0:
                    p = None  # another login of the uid is between auth and open: its caches stay held
                else:
                    del self.pending[uid]
            self.save()
        if p is not None:
            self.scheduler.cancel(("pending", uid))
        assert self.reaper is not None
        if not self.reaper.watch(session.sid, pid, pid_start):
            # Nothing would ever end this session (no close can come from a dead opener, and the
            # reaper cannot watch it): end it now, which clears as at any logout.
            log.warning("session %d of uid %d: opener %d already gone", session.sid, uid, pid)
            self._end_session(session, f"ended at once (opener {pid} already gone)")
            return P.reply_error(P.NOT_FOUND, f"process {pid} that opened the session is gone")
        if self._keywatch_state is not None:
            self._keywatch_state.forget(uid)
        extra: dict[str, Any] = {}
        if ccache:
            extra = self._take_delegated(session, ccache)
        if first:
            self._refresh_uid(uid)
        else:
            self._adopt_soon(uid)
        log.info("open session %d for %s (uid %d, pid %d): %d open", session.sid, user, uid, pid,
                 self.sessions.count(uid), extra=journal.fields(event="open", uid=uid, user=user,
                                                                sid=session.sid))
        return P.reply_ok(sid=session.sid, sessions=self.sessions.count(uid), **extra)

    def close(self, uid: int, sid: int | None, pid: int) -> dict[str, Any]:
        """Unregister a session; at the uid's last one, clear its caches per clear_on_logout."""
        with self.lock:
            session = self.sessions.find(uid, pid, sid)
            if session is None:
                return P.reply_error(P.NOT_FOUND, f"no open session of uid {uid} for this caller")
        cleared = self._end_session(session, "closed")
        return P.reply_ok(sessions=self.sessions.count(uid), cleared=cleared)

    def status(self, peer_uid: int) -> dict[str, Any]:
        """Root sees the whole service; any other uid only its own sessions and tickets.

        A user's reply holds no pid and no global count: how many others are logged in, or
        which process to aim at, is not theirs to know.
        """
        with self.lock:
            mine = [s.to_json() for s in self.sessions.by_sid.values() if peer_uid in (0, s.uid)]
            tickets = [self._row(t) for t in self.tickets.values() if peer_uid in (0, t.uid)]
            service: dict[str, Any] = {"clear_on_logout": self.config.clear_on_logout}
            if peer_uid == 0:
                service.update({
                    "pid": os.getpid(), "started": self.started, "sessions": len(self.sessions),
                    "tickets": len(self.tickets), "users": len(self.sessions.by_uid),
                    "renewals": self.renewals, "renew_failures": self.renew_failures,
                    "timers": len(self.scheduler), "jobs_running": self.scheduler.running,
                    "renew_threads": self.scheduler.threads,
                    "kdc_calls": kdclimit.SLOTS.snapshot(),
                    "state_file": {"path": self.config.state_file, "saved": self.write_error is None,
                                   "error": self.write_error, "failing_since": self.write_failing_since,
                                   "failed_attempts": self.write_failures,
                                   "unsaved_changes": self._dirty - self._written},
                })
        if peer_uid != 0:
            mine = [{k: v for k, v in s.items() if k != "pid_start"} for s in mine]
        return P.reply_ok(service=service, sessions=mine, tickets=tickets)

    def list_tickets(self, uid: int | None) -> dict[str, Any]:
        with self.lock:
            rows = [self._row(t) for t in self.tickets.values() if uid is None or t.uid == uid]
        return P.reply_ok(tickets=rows)

    def _row(self, t: Tracked) -> dict[str, Any]:
        """A ticket as ``status``/``tickets`` show it: Tracked.to_json plus ``next_renewal``.

        ``next_renewal`` is the wall-clock time of the scheduled renewal (for a [[keytab]]
        entry, its next re-acquisition), 0 when none is scheduled (not renewable, past
        renew_till, or renewing right now).
        """
        key = ("keytab", t.keytab) if t.origin == KEYTAB else ("renew", t.ccache)
        return {**t.to_json(), "next_renewal": self.scheduler.due(key) or 0.0}

    def renew_now(self, uid: int | None) -> dict[str, Any]:
        """Renew the uid's (or, for root without uid, every) tracked ticket now."""
        if uid is not None and self.sessions.count(uid):
            self._scan(uid, reschedule=False)
        with self.lock:
            targets = [t.ccache for t in self.tickets.values() if uid is None or t.uid == uid]
        errors: list[dict[str, str]] = []
        for name in targets:
            err = self._renew(name)
            if err and err != RENEWING:  # already being renewed: its result shows in the rows
                errors.append({"ccache": name, "error": err})
        with self.lock:
            rows = [t.to_json() for t in self.tickets.values() if uid is None or t.uid == uid]
        return P.reply_ok(tickets=rows, errors=errors)

    def destroy(self, name: str, peer_uid: int) -> dict[str, Any]:
        """Destroy a ccache: its owner (or root) only."""
        with self.lock:
            t = self.tickets.get(name)
        owner = t.uid if t else _ccache_uid(name)
        if owner is None:
            return P.reply_error(P.NOT_FOUND, f"{P.brief(name, 120)}: not a tracked cache nor a "
                                              "KEYRING:persistent one")
        if peer_uid not in (0, owner):
            self.ratelimited(("destroy-denied", peer_uid), logging.WARNING,
                             "uid %d tried to destroy %s of uid %d: refused", peer_uid, P.brief(name, 120),
                             owner)
            return P.reply_error(P.DENIED, f"{P.brief(name, 120)} belongs to uid {owner}")
        gid = t.gid if t else primary_gid(owner)
        if t is not None:
            t.cleared = True  # a renewal in flight must not put it back
        self._untrack(name)
        try:
            _ccache_api().destroy(name, owner, gid)
        except Exception as exc:
            return P.reply_error(P.NOT_FOUND, f"{P.brief(name, 120)}: {P.brief(str(exc), 200)}")
        log.info("destroyed %s (uid %d) at the request of uid %d", P.brief(name, 120), owner, peer_uid)
        return P.reply_ok(destroyed=name)

    # ---------------------------------------------------------------- internals

    def _track(self, info: Any, gid: int, origin: str, keytab: int = -1) -> Tracked:
        """Record (or refresh) a ccache from a TicketInfo (caller holds the lock)."""
        t = self.tickets.get(info.ccache)
        if t is None:
            t = Tracked(info.ccache, info.uid, gid, str(info.principal), origin, keytab=keytab)
            self.tickets[info.ccache] = t
        elif origin == LOGIN and t.origin == ADOPTED:
            t.origin = LOGIN  # the service wrote this cache now: it is the service's to clear
        _update(t, info)
        return t

    def _untrack(self, name: str) -> None:
        with self.lock:
            t = self.tickets.pop(name, None)
            for p in self.pending.values():
                p.ccaches.discard(name)
            if t is not None:
                self.save()
        self.scheduler.cancel(("renew", name))

    def _schedule_renewal(self, t: Tracked) -> None:
        """Put the ticket's next renewal on the heap, or log once why there is none."""
        now = time.time()
        if t.origin == KEYTAB:
            return  # keytab entries re-acquire on their own timer
        if not t.renewable:
            if not t.warned:
                t.warned = True
                log.warning("%s (%s, uid %d) is not renewable: it will not be renewed and expires at %s",
                            t.ccache, t.principal, t.uid, _fmt(t.endtime))
            return
        if t.renew_till <= t.endtime + 1 or t.renew_till <= now:
            if not t.warned:
                t.warned = True
                log.warning("%s (%s, uid %d) reached its renew_till %s: "
                            "it will not be renewed and expires at %s",
                            t.ccache, t.principal, t.uid, _fmt(t.renew_till), _fmt(t.endtime))
            return
        due = renew_due(t.starttime, t.endtime, self.config.renew_fraction, now)
        name = t.ccache
        self.scheduler.schedule(("renew", name), due, lambda: self._renew(name))

    def _renew(self, name: str) -> str | None:
        """Renew one ccache with ccache.renew (no empty-cache window); None on success, else why not."""
        with self.lock:
            t = self.tickets.get(name)
            if t is None:
                return "not tracked"
        if t.origin == KEYTAB:
            self._keytab_job(t.keytab)
            return None
        with self.lock:
            if name in self._renewing:
                return RENEWING
            self._renewing.add(name)
        try:
            return self._renew_tracked(name, t)
        finally:
            with self.lock:
                self._renewing.discard(name)

    def _renew_tracked(self, name: str, t: Tracked) -> str | None:
        errors = _errors()
        try:
            api = _ccache_api()
            in_place = quota.no_room(name, t.uid, api.retiring(t.uid))
            info = api.renew(name, t.uid, t.gid, timeout=self.config.kdc_timeout,
                             grace=self.config.renew_grace, in_place=in_place)
        except errors.KdcUnreachable:
            t.attempts += 1
            self.renew_failures += 1
            delay = backoff(t.attempts, self.config.retry_min, self.config.retry_max, t.endtime)
            metrics.RENEWALS.labels(P.KDC_UNREACHABLE).inc()
            log.warning("renewing %s (uid %d): no KDC answered (attempt %d); retry in %.1fs, ticket ends %s",
                        name, t.uid, t.attempts, delay, _fmt(t.endtime),
                        extra=journal.ticket("renew", t, P.KDC_UNREACHABLE, name))
            self.scheduler.schedule(("renew", name), time.time() + delay, lambda: self._renew(name))
            return "no KDC answered"
        except errors.NotRenewable as exc:
            t.renewable = False
            metrics.RENEWALS.labels(P.NOT_RENEWABLE).inc()
            self._schedule_renewal(t)  # logs once
            return f"not renewable: {exc}"
        except errors.QuotaExceeded as exc:
            self.renew_failures += 1
            metrics.RENEWALS.labels(P.QUOTA).inc()
            log.error("renewing %s (uid %d): key quota exceeded; old ticket kept: %s", name, t.uid, exc,
                      extra=journal.ticket("renew", t, P.QUOTA, name))
            delay = backoff(t.attempts + 1, self.config.retry_min, self.config.retry_max, t.endtime)
            self.scheduler.schedule(("renew", name), time.time() + delay, lambda: self._renew(name))
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
                # Untracked while the KDC answered (logout, expired auth, a destroy request):
                # what the renewal wrote must not bring the ticket back.
                stale = t.cleared and self.sessions.count(t.uid) == 0
                if stale:
                    self._destroy_locked(info.ccache, t.uid, t.gid)
                log.info("renewed %s (uid %d) after it stopped being tracked: %s", name, t.uid,
                         f"destroyed {info.ccache}" if stale else "not tracked again")
                return "no longer tracked"
            if info.ccache != name:
                # The renewal switched the collection to a new cache: follow it.
                self.tickets.pop(name, None)
                t.ccache = info.ccache
                self.tickets[info.ccache] = t
                for p in self.pending.values():
                    if name in p.ccaches:
                        p.ccaches.discard(name)
                        p.ccaches.add(info.ccache)
            _update(t, info)
            t.attempts = 0
            t.renewed += 1
            self.renewals += 1
            self.save()
        if info.ccache != name:
            self.scheduler.cancel(("renew", name))
        metrics.RENEWALS.labels(P.OK).inc()
        log.info("renewed %s (uid %d) until %s", t.ccache, t.uid, _fmt(t.endtime),
                 extra=journal.ticket("renew", t, P.OK))
        self._schedule_renewal(t)
        return None

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

    def _reaped(self, sid: int) -> None:
        with self.lock:
            session = self.sessions.by_sid.get(sid)
        if session is not None:
            self._end_session(session, f"reaped (process {session.pid} exited without close_session)")

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
        gid_default = primary_gid(uid)
        with self.lock:
            if self.sessions.count(uid):
                return []  # a login opened a session since the last close: its tickets stay
            mine = [t for t in self.tickets.values() if t.uid == uid and t.origin != KEYTAB
                    and not self._held(uid, t.ccache)]
            for t in mine:
                self.tickets.pop(t.ccache, None)
            if policy == "own":
                names = [t.ccache for t in mine if t.origin in LOGIN_ORIGINS]
            elif policy == "all":
                names = [t.ccache for t in mine]
            else:
                names = []
            for t in mine:
                t.cleared = t.ccache in names
            self.save()
            for key in (("scan", uid), ("touch", uid), *(("renew", t.ccache) for t in mine)):
                self.scheduler.cancel(key)
        listed: list[str] = []
        if policy == "all":
            try:
                listed = [i.ccache for i in _ccache_api().list_caches(uid) if i.ccache not in names]
            except Exception as exc:
                log.warning("listing caches of uid %d: %s", uid, exc)
        gid = mine[0].gid if mine else gid_default
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
            _ccache_api().destroy(name, uid, gid)
        except Exception as exc:
            log.warning("destroying %s (uid %d): %s", name, uid, exc)

    def _refresh_uid(self, uid: int) -> None:
        """On a uid's first session: touch its persistent keyring and adopt its own caches.

        Both run on the scheduler thread, so a login does not wait for them.
        """
        now = time.time()
        self.scheduler.schedule(("touch", uid), now, lambda: self._touch(uid))
        self.scheduler.schedule(("scan", uid), now, lambda: self._scan(uid))

    def _touch(self, uid: int) -> None:
        """keyctl_get_persistent(uid): resets the kernel's 3-day expiry of the persistent keyring."""
        from .. import keyutils

        try:
            ring = keyutils.get_persistent(uid, keyutils.KEY_SPEC_THREAD_KEYRING)
            keyutils.unlink(ring, keyutils.KEY_SPEC_THREAD_KEYRING)
            log.debug("get_persistent(%d): keyring %d, expiry timer reset", uid, ring)
        except OSError as exc:
            log.warning("get_persistent(%d): %s", uid, exc)
        interval = self.config.persistent_touch_interval
        if self.sessions.count(uid) or any(k.uid == uid for k in self.config.keytabs):
            self.scheduler.schedule(("touch", uid), time.time() + interval, lambda: self._touch(uid))

    def _scan(self, uid: int, reschedule: bool = True) -> None:
        """Adopt caches the user made in their persistent collection (their own kinit) while logged in."""
        if not self.sessions.count(uid):
            return
        try:
            infos = _ccache_api().list_caches(uid)
        except Exception as exc:
            log.warning("listing caches of uid %d: %s", uid, exc)
            infos = []
        adopted: list[Tracked] = []
        with self.lock:
            if not self.sessions.count(uid):
                return  # the last session closed while the collection was listed: adopt nothing
            gid = next((s.gid for s in self.sessions.by_sid.values() if s.uid == uid), primary_gid(uid))
            for info in infos:
                if info.ccache not in self.tickets:
                    # A cache this service made (its name says so) is the service's even when it was
                    # not tracked (a restart lost it); anything else is the user's own kinit.
                    origin = LOGIN if getattr(info, "service", False) else ADOPTED
                    t = self._track(info, gid, origin)
                    adopted.append(t)
            if adopted:
                self.save()
        for t in adopted:
            log.info("adopted %s (%s) of uid %d: renewed while the user is logged in", t.ccache,
                     t.principal, uid, extra=journal.ticket("adopted", t))
            self._schedule_renewal(t)
        if reschedule:
            self.scheduler.schedule(("scan", uid), time.time() + self.config.adopt_scan_interval,
                                    lambda: self._scan(uid))

    def _keytab_job(self, index: int) -> None:
        """Re-acquire a [[keytab]] principal's TGT (as k5start -f), then schedule the next run."""
        entry = self.config.keytabs[index]
        errors = _errors()
        key = ("keytab", index)
        try:
            info = _ccache_api().acquire_keytab(entry.principal, entry.keytab, entry.uid, entry.gid,
                                                ccache=entry.ccache)
        except errors.KdcUnreachable:
            delay = self.config.retry_min
            log.warning("keytab %s: no KDC answered; retry in %.0fs", entry.principal, delay)
            self.scheduler.schedule(key, time.time() + delay, lambda: self._keytab_job(index))
            return
        except Exception as exc:
            log.error("keytab %s from %s: %s; retry in %.0fs", entry.principal, entry.keytab, exc,
                      self.config.retry_max)
            self.scheduler.schedule(key, time.time() + self.config.retry_max, lambda: self._keytab_job(index))
            return
        with self.lock:
            # The new TGT lives in a new cache (the old one is retired): carry the entry over.
            old = [x for x in self.tickets.values() if x.origin == KEYTAB and x.keytab == index]
            for x in old:
                if x.ccache != info.ccache:
                    del self.tickets[x.ccache]
            t = self._track(info, entry.gid, KEYTAB, keytab=index)
            t.renewed = max([x.renewed for x in old], default=-1) + 1
        due = renew_due(t.starttime, t.endtime, self.config.renew_fraction)
        self.scheduler.schedule(key, due, lambda: self._keytab_job(index))
        if self.scheduler.due(("touch", entry.uid)) is None:
            self._touch(entry.uid)
        log.info("keytab %s: TGT in %s until %s", entry.principal, t.ccache, _fmt(t.endtime))

    # ---------------------------------------------------------------- passwordless logins

    def _take_delegated(self, session: Session, source: str) -> dict[str, Any]:
        """Move a delegated FILE cache into KEYRING:persistent:<uid> and track it (origin DELEGATED).

        Runs after the session is counted, so a last close of another session cannot clear
        the copy; if this session itself ended meanwhile (its opener died) and no other is
        open, the copy is destroyed again.  Failures leave the file where it was and the
        session open: the reply says why in ``delegation_error``.
        """
        uid, gid = session.uid, session.gid
        if not P.is_delegated_ccache(source, uid):
            log.warning("session %d of uid %d: %s is not a delegated cache of that uid; left alone",
                        session.sid, uid, source)
            return {"delegation_error": f"not a per-login cache of uid {uid}"}
        try:
            info = _ccache_api().import_file(source, uid, gid)
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
        log.info("session %d of uid %d: delegated TGT of %s moved from %s into %s until %s", session.sid, uid,
                 t.principal, source, t.ccache, _fmt(t.endtime),
                 extra=journal.ticket("delegated", t))
        return {"ccache": t.ccache, "krb5ccname": f"KEYRING:persistent:{uid}"}

    def _adopt_soon(self, uid: int) -> None:
        """Scan the uid's collection for caches to adopt now (on the scheduler thread)."""
        self.scheduler.schedule(("scan", uid), time.time(), lambda: self._scan(uid))

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


# -------------------------------------------------------------------- helpers

def _update(t: Tracked, info: Any) -> None:
    t.principal = str(info.principal)
    t.starttime = float(info.starttime or 0)
    t.endtime = float(info.endtime or 0)
    t.renew_till = float(info.renew_till or 0)
    t.renewable = bool(info.renewable)
    t.warned = False


_REALM: list[str] = []


def default_realm() -> str:
    """krb5_get_default_realm() of the service's context (KRB5_CONFIG honoured)."""
    if not _REALM:
        import krb5

        ctx = krb5.init_context()
        realm = krb5.get_default_realm(ctx)
        _REALM.append(realm.decode() if isinstance(realm, bytes) else str(realm))
    return _REALM[0]


def _ccache_uid(name: str) -> int | None:
    """The uid in a ``KEYRING:persistent:<uid>[:...]`` name, else None."""
    parts = name.split(":")
    if len(parts) >= 3 and parts[0] == "KEYRING" and parts[1] == "persistent" and parts[2].isdigit():
        return int(parts[2])
    return None


def _fmt(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"
