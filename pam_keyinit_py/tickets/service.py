"""The ticket service: its start and stop, and the request handlers (one per op of protocol.OPS).

A password login's TGT is acquired at ``auth`` (``krb.acquire_password``, run with the user's
uid and gid so the keys are owned by and charged to the user) and kept as a pending login
until ``open`` (sshd may authenticate in another process than the one that opens the
session); it is renewed while any session of the uid is open (renewal.py) and destroyed at
the uid's last ``close`` according to ``clear_on_logout`` (clearing.py).  The Kerberos side is
``self.krb`` (tickets/krb.py), injected for tests: ``Service(config, krb=...)``; no module of
the service logic calls krb5 itself (the default realm, too, comes from ``krb``).

A failed krb5 operation answers with the reply its error class declares (errors.refusal).
State changes are written to the state file before the reply leaves (the server commits
every mutating op), so a ``kill -9`` loses nothing that a client was told had happened.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from .. import protocol as P
from ..ccname import uid_of as ccache_uid
from . import errors, journal, kdclimit, metrics
from . import state as statefile
from .accounts import primary_gid
from .core import KEYTAB, LOGIN, Peer, Pending, Tracked
from .names import parse_as_enterprise, principal_of
from .recovery import Recovery
from .renewal import RENEWING
from .sessions import Reaper, boot_ticks
from .state import fmt

log = logging.getLogger("keyinit-ticketd")

#: What a request whose password expired may answer with while the password is checked.
_EXPIRED_ERRORS = frozenset({P.BAD_PASSWORD, P.KDC_UNREACHABLE, P.FAST_UNAVAILABLE, P.KDC_ERROR})


class Service(Recovery):
    """The ticket service: state and parts from core.py up the chain, request handlers here."""

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Restore the saved state, start the reaper and the scheduler, and the keytab entries."""
        self.reaper = Reaper(self._reaped, self._identified)
        kdclimit.SLOTS.configure(self.config.max_kdc_calls)
        statefile.remove_leftovers(self.config.state_file)
        self.writer.start()
        self.restore()
        for index, _entry in enumerate(self.config.keytabs):
            self.scheduler.schedule(("keytab", index), time.time(), partial(self._keytab_job, index))
        self._start_keywatch()
        self.scheduler.start()

    def stop(self) -> None:
        """Stop renewing and flush the state file (tickets stay in the kernel for the next start)."""
        self.scheduler.stop()
        self.writer.stop()

    # ---------------------------------------------------------------- logins

    def auth(self, peer: Peer, user: str, uid: int, gid: int, password: str,
             principal: str | None = None, kuserok: bool = False,
             answers: list[str] | None = None) -> dict[str, Any]:
        """Acquire a TGT for ``principal`` (default user@default_realm) into KEYRING:persistent:<uid>.

        With ``kuserok`` the success reply also carries krb5_kuserok(principal, user), which
        saves the hook's acct_mgmt a request (absent when krb5_kuserok fails: acct_mgmt asks then).
        It is asked while the KDC exchange runs (the request's thread only waits then), and again
        after it only when the KDC named the principal otherwise (canonicalize).
        A question of the KDC's preauth (OTP) is answered from ``answers``, or relayed in a
        ``prompt`` reply (protocol.PROMPT) for the hook to ask.
        """
        with self.lock:
            self._authing[uid] = self._authing.get(uid, 0) + 1
        early: dict[str, bool | Exception] = {}
        try:
            reply = self._auth(user, uid, gid, password, principal, answers,
                               partial(self._kuserok_into, early, user, uid) if kuserok is True else None,
                               sender=peer.pid)
            metrics.AUTHS.labels(reply.get("code", P.OK)).inc()
            if kuserok is True and reply.get("ok"):
                answer = early.get(reply["principal"])
                if answer is None:
                    self._kuserok_into(early, user, uid, reply["principal"])
                    answer = early[reply["principal"]]
                if isinstance(answer, errors.TicketError):
                    log.warning("auth %s (uid %d): krb5_kuserok: %s", user, uid, answer)
                elif isinstance(answer, Exception):  # acct_mgmt asks again (and fails closed)
                    log.error("auth %s (uid %d): krb5_kuserok failed: %s", user, uid,
                              answer.__class__.__name__)
                else:
                    reply["kuserok"] = answer
            return reply
        finally:
            del password, answers
            with self.lock:
                # Only now: a successful auth has put its cache on the pending list.
                left = self._authing.get(uid, 1) - 1
                if left:
                    self._authing[uid] = left
                else:
                    self._authing.pop(uid, None)

    def _kuserok_into(self, results: dict[str, bool | Exception], user: str, uid: int,
                      principal: str) -> None:
        """krb5_kuserok(principal, user) into ``results[principal]`` (the exception, if it fails:
        while the KDC exchange is in flight, nothing may be raised into it)."""
        try:
            results[principal] = self.krb.kuserok(principal, user, uid,
                                                  enterprise=self._enterprise(principal))
        except Exception as exc:  # noqa: BLE001 - kept, and judged by auth after the exchange
            results[principal] = exc

    def _auth(self, user: str, uid: int, gid: int, password: str, principal: str | None,
              answers: list[str] | None = None,
              meanwhile: Callable[[str], None] | None = None, sender: int = 0) -> dict[str, Any]:
        """The auth itself; ``answers`` answer the KDC's preauth questions (OTP);
        ``meanwhile(principal)`` runs in this thread while the KDC exchange does; ``sender`` is the
        requesting process: which opens may claim the login depends on it (see :class:`Pending`)."""
        cfg = self.config
        principal = principal or self.principal_of(user)
        options: dict[str, Any] = {} if meanwhile is None else {"meanwhile": partial(meanwhile, principal)}
        try:
            info = self.krb.acquire_password(
                principal, password, uid, gid, **options,
                lifetime=cfg.lifetime or None, renew_lifetime=cfg.renew_lifetime or None,
                forwardable=cfg.forwardable, timeout=cfg.kdc_timeout,
                validate=cfg.validate, validate_keytab=cfg.validate_keytab or None,
                validate_principal=cfg.validate_principal or None, fast=cfg.fast,
                fast_principal=cfg.fast_principal or None, canonicalize=cfg.canonicalize,
                answers=answers,
            )
        except errors.PromptNeeded as exc:
            reply = errors.refusal(exc, P.OPS["auth"].errors, log, "auth", principal, uid, event="auth",
                                   principal=principal)
            return {**reply, "prompts": [{"text": t, "hidden": h} for t, h in exc.prompts],
                    "banner": exc.banner, "answered": exc.answered, "principal": principal}
        except errors.PasswordExpired:
            # MIT answers KEY_EXP before it looks at the password: prove it before saying so.
            return self._expired(principal, uid, password)
        except errors.TicketError as exc:
            return errors.refusal(exc, P.OPS["auth"].errors, log, "auth", principal, uid, event="auth",
                                  principal=principal, failed="no ticket", validate=cfg.validate)
        finally:
            del password, answers  # the only references the service held
        if info.principal != principal:
            log.info("auth %s (uid %d): the KDC's name for it is %s", principal, uid, info.principal)
            principal = info.principal
        for warning in info.warnings:
            log.warning("auth %s (uid %d): %s", principal, uid, warning)
        parent = statefile.process_parent(sender) if sender else 0
        with self.lock:
            t = self._track(info, gid, LOGIN)
            replaced = getattr(info, "replaced", "")
            p = self.pending.get(uid)
            if replaced and replaced != t.ccache and replaced in self.tickets:
                # Retired by this switch and destroyed after the grace: tracking it would only
                # grow the state every request commits, and schedule a renewal that must fail.
                # A login still waiting for its session has its TGT in the new primary now.
                if p is not None:
                    p.rename(replaced, t.ccache)
                self.tickets[replaced].superseded = True
                self._untrack(replaced)
            if p is None:
                p = self.pending[uid] = Pending(gid, 0.0)
            p.deadline = time.time() + cfg.pending_auth_timeout
            p.ccaches.add(t.ccache)
            p.auths.append((sender, parent, t.ccache))
            self.save()
        self.scheduler.schedule(("pending", uid), p.deadline, partial(self._pending_expired, uid))
        self._schedule_renewal(t)
        log.info("auth %s (uid %d): TGT in %s until %s%s", principal, uid, t.ccache, fmt(t.endtime),
                 f" (validated with {info.validated})" if info.validated else "",
                 extra=journal.ticket("auth", t, P.OK))
        return P.reply_ok(principal=principal, ccache=t.ccache, endtime=t.endtime)

    def _expired(self, principal: str, uid: int, password: str) -> dict[str, Any]:
        """auth got KDC_ERR_KEY_EXP: answer PASSWORD_EXPIRED only if the password is the right one.

        The KDC checks the expiry before the preauthentication, so KEY_EXP comes for any
        password; a ticket for kadmin/changepw (which the KDC grants to an expired password)
        proves it, as pam_krb5 does.  Only then may the hook let the login go on to the change.
        """
        try:
            # A UPN's ticket names the account the KDC resolved it to: the name kuserok must judge.
            principal = self.krb.verify_changepw(principal, password, timeout=self.config.kdc_timeout,
                                                 enterprise=self._enterprise(principal),
                                                 **self._fast_args()) or principal
        except errors.TicketError as exc:
            return errors.refusal(exc, _EXPIRED_ERRORS, log, "auth", principal, uid, " (password expired)",
                                  principal=principal, failed="no ticket")
        finally:
            del password
        log.info("auth %s (uid %d): password expired (the password itself is right): it must be changed",
                 principal, uid)
        # The principal, as a success names it: the hook's acct_mgmt (krb5_kuserok) and the change
        # at login are about this one, which need not be user@REALM (search_k5login, principal_name).
        return {**P.reply_error(P.PASSWORD_EXPIRED, "password expired: it must be changed first"),
                "principal": principal}

    def principal_of(self, user: str) -> str:
        """The principal of local ``user`` when a request names none (auth, account, chpass alike):
        ``principal_name`` with ``{user}`` replaced, the default realm appended without ``@``."""
        return principal_of(self.config.principal_name, user, self.krb.default_realm)

    def _enterprise(self, principal: str) -> bool:
        """Whether ``principal`` is a UPN to parse as an enterprise name, as the login's auth parses it."""
        return parse_as_enterprise(principal, self.config.canonicalize)

    def _fast_args(self) -> dict[str, Any]:
        """The login's FAST policy for the kadmin/changepw exchanges (same keytab and host principal)."""
        cfg = self.config
        return {"fast": cfg.fast, "armor_keytab": cfg.validate_keytab or None,
                "armor_principal": cfg.validate_principal or None,
                "fast_principal": cfg.fast_principal or None}

    def account(self, peer: Peer, user: str, uid: int, principal: str | None = None, kuserok: bool = True,
                kdc: bool = True) -> dict[str, Any]:
        """pam_sm_acct_mgmt's checks: krb5_kuserok(principal, user), then the KDC's view of the principal.

        The KDC probe sends no password (see principals.account_state), so it never counts
        towards a lockout.  Without ``principal`` it is the user's own, :meth:`principal_of`
        (a publickey login, or an account check before a password change).
        """
        principal = principal or self.principal_of(user)
        enterprise = self._enterprise(principal)
        if kuserok:
            try:
                allowed = self.krb.kuserok(principal, user, uid, enterprise=enterprise)
            except errors.TicketError as exc:
                log.warning("account %s (uid %d): %s", user, uid, exc)
                return P.reply_error(P.BAD_REQUEST, f"bad principal name {principal!r}")
            if not allowed:
                log.info("account %s (uid %d): %s may not log in to it (krb5_kuserok: .k5login, "
                         "auth_to_local)", user, uid, principal)
                if not kdc:
                    # The hook's own login, refused after its auth: no session will claim its TGT.
                    self._abandon_login(uid, peer.pid)
                return P.reply_error(P.DENIED, f"{principal} is not authorized to log in as {user}")
        if kdc:
            try:
                self.krb.account_state(principal, timeout=self.config.kdc_timeout, enterprise=enterprise)
            except errors.TicketError as exc:
                return errors.refusal(exc, P.OPS["account"].errors, log, "account", user, uid,
                                      principal=principal, failed="account check failed")
        return P.reply_ok(principal=principal)

    def chpass(self, peer: Peer, user: str, uid: int, old_password: str, principal: str | None = None,
               new_password: str | None = None) -> dict[str, Any]:
        """pam_sm_chauthtok through kpasswd: check ``old_password`` (kadmin/changepw ticket), and
        with ``new_password`` change it.  Neither password reaches a log line or a reply.

        Without ``principal`` it is the user's own, :meth:`principal_of` (``passwd`` run by the
        user).  The check answers with the KDC's name for a UPN.
        """
        principal = principal or self.principal_of(user)
        enterprise = self._enterprise(principal)
        timeout = self.config.kdc_timeout
        changing = new_password is not None
        checked = ""
        try:
            if new_password is None:
                checked = self.krb.verify_changepw(principal, old_password, timeout=timeout,
                                                   enterprise=enterprise, **self._fast_args())
            else:
                self.krb.change_password(principal, old_password, new_password, timeout=max(timeout, 5.0),
                                         enterprise=enterprise, **self._fast_args())
        except errors.TicketError as exc:
            return errors.refusal(exc, P.OPS["chpass"].errors, log, "chpass", principal, uid,
                                  principal=principal, failed="password change failed")
        finally:
            del old_password, new_password
        if changing:
            log.info("chpass %s (uid %d): password changed through kpasswd", principal, uid)
        elif checked and checked != principal:
            log.info("chpass %s (uid %d): the KDC's name for it is %s", principal, uid, checked)
            principal = checked
        return P.reply_ok(principal=principal, changed=changing)

    # ---------------------------------------------------------------- sessions

    def open(self, peer: Peer, user: str, uid: int, gid: int, ccache: str | None = None) -> dict[str, Any]:
        """Register a session opened by process ``peer.pid`` (SO_PEERCRED of the caller).

        ``ccache``: a FILE cache of the uid holding a delegated TGT (sshd's GSSAPI
        ``KRB5CCNAME``); it is copied into KEYRING:persistent:<uid> once the session is counted
        (see :meth:`_take_delegated`), and the reply then carries the new cache and the
        ``krb5ccname`` the session should use (the hook that gets it removes the file).
        """
        pid = peer.pid
        alive_at = boot_ticks()  # the opener is alive now: names it when its start time cannot be read
        pid_start = statefile.process_start_time(pid) or 0
        with self.lock:
            first = self.sessions.count(uid) == 0
            session = self.sessions.add(uid, gid, user, pid, pid_start, time.time())
            p = self.pending.get(uid)
            if p is not None:
                claimed = p.claim(pid, partial(statefile.process_parent, pid))
                if claimed is None or p.logins > 0:
                    # No auth of this opener (an ssh key, GSSAPI), or another login of the uid is
                    # between auth and open: the caches of the waiting auths stay held, but not
                    # this login's own (this session's logout clears it).
                    if claimed is not None:
                        p.release(claimed[2])
                    p = None
                else:
                    del self.pending[uid]
            self.save()
        if p is not None:
            self.scheduler.cancel(("pending", uid))
        assert self.reaper is not None
        if not self.reaper.watch(session.sid, pid, pid_start, alive_at):
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

    def close(self, peer: Peer, uid: int, sid: int | None = None) -> dict[str, Any]:
        """Unregister a session; at the uid's last one, clear its caches per clear_on_logout."""
        with self.lock:
            session = self.sessions.find(uid, peer.pid, sid)
            if session is None:
                return P.reply_error(P.NOT_FOUND, f"no open session of uid {uid} for this caller")
        cleared = self._end_session(session, "closed")
        return P.reply_ok(sessions=self.sessions.count(uid), cleared=cleared)

    # ---------------------------------------------------------------- queries and user requests

    def status(self, peer: Peer) -> dict[str, Any]:
        """Root sees the whole service; any other uid only its own sessions and tickets.

        A user's reply holds no pid and no global count: how many others are logged in, or
        which process to aim at, is not theirs to know.
        """
        peer_uid = peer.uid
        with self.lock:
            mine = [s.to_json() for s in self.sessions.by_sid.values() if peer_uid in (0, s.uid)]
            tickets = [self._row(t) for t in self.tickets.values() if peer_uid in (0, t.uid)]
            service: dict[str, Any] = {"clear_on_logout": self.config.clear_on_logout}
            if peer_uid == 0:
                w = self.writer
                service.update({
                    "pid": os.getpid(), "started": self.started, "sessions": len(self.sessions),
                    "tickets": len(self.tickets), "users": len(self.sessions.by_uid),
                    "renewals": self.renewals, "renew_failures": self.renew_failures,
                    "timers": len(self.scheduler), "jobs_running": self.scheduler.running,
                    "renew_threads": self.scheduler.threads,
                    "kdc_calls": kdclimit.SLOTS.snapshot(),
                    "state_file": {"path": self.config.state_file, "saved": w.error is None,
                                   "error": w.error, "failing_since": w.failing_since,
                                   "failed_attempts": w.failures, "unsaved_changes": w.dirty - w.written},
                })
        if peer_uid != 0:
            mine = [{k: v for k, v in s.items() if k != "pid_start"} for s in mine]
        return P.reply_ok(service=service, sessions=mine, tickets=tickets)

    def list_tickets(self, peer: Peer, uid: int | None = None) -> dict[str, Any]:
        """The tracked tickets of ``uid`` (every one for root without a uid)."""
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

    def renew_now(self, peer: Peer, uid: int | None = None) -> dict[str, Any]:
        """Renew the uid's (or, for root without uid, every) tracked ticket now; keytab entries are
        re-acquired."""
        if uid is not None and self.sessions.count(uid):
            self._scan(uid, reschedule=False)
        with self.lock:
            targets = [t for t in self.tickets.values() if uid is None or t.uid == uid]
        failures: list[dict[str, str]] = []
        for t in targets:
            if t.origin == KEYTAB:
                self._keytab_job(t.keytab)
                continue
            err = self._renew(t.ccache)
            if err and err != RENEWING:  # already being renewed: its result shows in the rows
                failures.append({"ccache": t.ccache, "error": err})
        with self.lock:
            rows = [t.to_json() for t in self.tickets.values() if uid is None or t.uid == uid]
        return P.reply_ok(tickets=rows, errors=failures)

    def destroy(self, peer: Peer, ccache: str) -> dict[str, Any]:
        """krb5_cc_destroy a ccache: its owner (or root) only."""
        name, peer_uid = ccache, peer.uid
        with self.lock:
            t = self.tickets.get(name)
        owner = t.uid if t else ccache_uid(name)
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
            self.krb.destroy(name, owner, gid)
        except Exception as exc:
            return P.reply_error(P.NOT_FOUND, f"{P.brief(name, 120)}: {P.brief(str(exc), 200)}")
        line = ("destroyed %s (uid %d) at the request of uid %d", P.brief(name, 120), owner, peer_uid)
        if peer_uid == 0:
            log.info(*line)
        else:  # any user may send destroy after destroy (an empty collection's destroy succeeds)
            self.ratelimited(("destroyed", peer_uid), logging.INFO, *line)
        return P.reply_ok(destroyed=name)

    def metrics(self, peer: Peer) -> dict[str, Any]:
        """The Prometheus text exposition of this service (tickets/metrics.py), root only."""
        return metrics.reply()
