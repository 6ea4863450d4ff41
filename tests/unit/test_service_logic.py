"""The ticket service's decisions, with its Kerberos side faked (tests/unit/fakekrb.py).

What a login, a logout, a renewal or a failed krb5 call makes the service do: which caches it
tracks, holds, renews and destroys, and which reply code each failure gets.  No KDC and no
kernel keys: the same paths against a real MIT KDC and the real kernel are in tests/kdc.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import subprocess
import time

import pytest

from pam_keyinit_py import protocol as P
from pam_keyinit_py.errors import KeyinitError
from pam_keyinit_py.tickets import errors
from pam_keyinit_py.tickets import state as statefile
from pam_keyinit_py.tickets.adoption import SCAN_AFTER_OPEN
from pam_keyinit_py.tickets.config import Config, ConfigError
from pam_keyinit_py.tickets.core import ADOPTED, LOGIN, Peer
from pam_keyinit_py.tickets.dispatch import Dispatcher
from pam_keyinit_py.tickets.ratelimit import RateLimitedLog
from pam_keyinit_py.tickets.service import Service
from pam_keyinit_py.tickets.sessions import Reaper
from tests.unit.fakekrb import FakeKrb

UID = 4_100_000  # no passwd entry: primary_gid() answers the uid itself
ROOT = Peer(os.getpid(), 0)  # open/close: the opener must be a live process the reaper can watch


@pytest.fixture
def krb() -> FakeKrb:
    return FakeKrb()


@pytest.fixture
def make(tmp_path, krb):  # noqa: ANN001, ANN201
    made: list[Service] = []

    def make(**config: object) -> Service:
        svc = Service(Config(state_file=str(tmp_path / "state.json"), **config), krb=krb)
        # The scheduler and the writer are not started: nothing runs behind.
        svc.reaper = Reaper(svc._reaped, svc._identified)
        made.append(svc)
        return svc

    yield make
    for svc in made:
        svc.scheduler.stop()


def _auth(svc: Service, user: str = "u") -> dict:
    return svc.auth(ROOT, user, UID, UID, "pw")


def test_a_login_is_held_until_open_renewed_and_cleared_at_its_logout(make, krb) -> None:
    svc = make()
    reply = _auth(svc)
    assert reply["ok"] and reply["principal"] == "u@UNIT.TEST", reply
    name = reply["ccache"]
    assert svc.tickets[name].origin == LOGIN and svc.pending[UID].ccaches == {name}
    assert svc.scheduler.due(("pending", UID)) is not None and svc.scheduler.due(("renew", name)) is not None
    opened = svc.open(ROOT, "u", UID, UID)
    assert opened["ok"] and opened["sessions"] == 1 and UID not in svc.pending
    assert svc.scheduler.due(("pending", UID)) is None
    closed = svc.close(ROOT, UID)
    assert closed == P.reply_ok(sessions=0, cleared=[name])
    assert krb.destroyed == [name] and svc.tickets == {}
    assert svc.scheduler.due(("renew", name)) is None


@pytest.mark.parametrize(("policy", "cleared"), [("own", {"login"}), ("all", {"login", "own kinit"}),
                                                 ("none", set())])
def test_clear_on_logout_decides_what_the_last_logout_destroys(make, krb, policy, cleared) -> None:
    svc = make(clear_on_logout=policy)
    login = _auth(svc)["ccache"]
    assert svc.open(ROOT, "u", UID, UID)["ok"]
    kinit = krb._new(UID, "u@UNIT.TEST", service=False).ccache  # the user's own, never tracked
    names = {"login": login, "own kinit": kinit}
    svc.close(ROOT, UID)
    assert set(krb.destroyed) == {names[c] for c in cleared}


def test_the_first_logout_keeps_a_second_login_still_between_auth_and_open(make, krb) -> None:
    """Two auths, one open: the open claims the first auth, whose cache its logout clears; the
    second login's cache stays held for that login's own open."""
    svc = make()
    first, second = _auth(svc)["ccache"], _auth(svc)["ccache"]
    assert svc.open(ROOT, "u", UID, UID)["ok"]
    assert svc.pending[UID].logins == 1  # the second login's open is still to come
    assert svc.pending[UID].ccaches == {second}
    assert svc.close(ROOT, UID)["cleared"] == [first]
    assert krb.destroyed == [first] and second in svc.tickets
    assert svc.open(ROOT, "u", UID, UID)["ok"] and UID not in svc.pending
    assert svc.close(ROOT, UID)["cleared"] == [second]


def test_a_logout_clears_its_own_login_while_an_auth_of_another_process_waits(make, krb) -> None:
    """An auth no session followed (an ssh client gone after authenticating, an auth-only PAM
    check) waits for pending_auth_timeout; a later login of the uid, from another process, opens
    and closes meanwhile: its logout clears its own cache, not the waiting auth's.  It cleared
    neither (the waiting auth held every cache of the uid until its deadline)."""
    svc = make()
    gone = subprocess.Popen(["true"])
    gone.wait()
    waiting = svc.auth(Peer(gone.pid, 0), "u", UID, UID, "pw")["ccache"]
    mine = _auth(svc)["ccache"]
    assert svc.open(ROOT, "u", UID, UID)["ok"] and svc.pending[UID].ccaches == {waiting}
    assert svc.close(ROOT, UID)["cleared"] == [mine]
    assert krb.destroyed == [mine] and waiting in svc.tickets and svc.pending[UID].logins == 1


def test_a_session_no_auth_preceded_claims_no_login_still_between_auth_and_open(make, krb) -> None:
    """auth (login A), then a session without auth (an ssh key login) opens and closes, then A's
    session opens: A's ticket must survive the other login's logout.  It was claimed by the keyless
    open, so that login's logout cleared it before A's session opened."""
    svc = make()
    # A's auth ran in a child of A's opener (this process), as sshd's keyboard-interactive PAM does;
    # the other login's opener is another child of it (sshd's listener forks every monitor).
    child, keyless = subprocess.Popen(["sleep", "60"]), subprocess.Popen(["sleep", "60"])
    try:
        name = svc.auth(Peer(child.pid, 0), "u", UID, UID, "pw")["ccache"]
        other = Peer(keyless.pid, 0)
        assert svc.open(other, "u", UID, UID)["ok"] and svc.pending[UID].logins == 1
        assert svc.close(other, UID) == P.reply_ok(sessions=0, cleared=[])
        assert krb.destroyed == [] and name in svc.tickets
    finally:
        for proc in (child, keyless):
            proc.kill()
            proc.wait()
    assert svc.open(ROOT, "u", UID, UID)["ok"] and UID not in svc.pending  # A's own open claims it
    assert svc.close(ROOT, UID)["cleared"] == [name]


def test_a_later_login_of_one_principal_leaves_its_cache_to_an_earlier_login_still_waiting(make, krb) -> None:
    """Two logins of one principal: the second auth retires the first's cache (the TGT of both is
    the new primary now).  The second login opens and closes before the first opens: its logout
    must leave that cache, which the first login's session, still to open, uses.  Releasing the
    second login's own cache at its open cleared it then, and the first login opened with none."""
    krb.retire = True
    svc = make()
    # The first login's process (another sshd monitor): neither this process's child nor parent.
    earlier = Peer(int(subprocess.run(["sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"], check=True,
                                      capture_output=True, text=True).stdout), 0)
    try:
        first = svc.auth(earlier, "u", UID, UID, "pw")["ccache"]
        second = _auth(svc)["ccache"]
        assert first not in svc.tickets and svc.pending[UID].ccaches == {second}  # retired
        assert svc.open(ROOT, "u", UID, UID)["ok"] and svc.pending[UID].logins == 1
        assert svc.close(ROOT, UID)["cleared"] == []
        assert second in svc.tickets and second not in krb.destroyed
        assert svc.open(earlier, "u", UID, UID)["ok"] and UID not in svc.pending
        assert svc.close(earlier, UID)["cleared"] == [second]
    finally:
        os.kill(earlier.pid, 9)


def test_an_open_from_the_parent_of_the_auths_sender_claims_the_login(make, krb, tmp_path) -> None:
    """sshd with keyboard-interactive authentication runs PAM's auth in a child of the monitor and
    opens the session in the monitor: the auth's sender's parent claims the login.  The pids are
    in the state file: a restarted service matches the same way."""
    svc = make()
    child = subprocess.Popen(["sleep", "60"])  # the auth child; this test process is its monitor
    try:
        assert svc.auth(Peer(child.pid, 0), "u", UID, UID, "pw")["ok"]
    finally:
        child.kill()
        child.wait()
    name = svc.pending[UID].auths[0][2]
    assert svc.pending[UID].auths == [(child.pid, os.getpid(), name)] and svc.pending[UID].ccaches == {name}
    with svc.lock:
        statefile.save(str(tmp_path / "state.json"), *svc._snapshot())
    restored = make()
    restored.restore()
    assert restored.pending[UID].auths == [(child.pid, os.getpid(), name)]
    assert restored.open(ROOT, "u", UID, UID)["ok"] and UID not in restored.pending


@pytest.mark.parametrize(("exc", "code", "text"), [
    (errors.BadPassword("x"), P.BAD_PASSWORD, "wrong password"),
    (errors.UnknownPrincipal("x"), P.UNKNOWN_PRINCIPAL, "principal u@UNIT.TEST unknown to the KDC"),
    (errors.KdcUnreachable("x"), P.KDC_UNREACHABLE, "no KDC answered"),
    (errors.QuotaExceeded("x"), P.QUOTA, "key quota of the user exceeded"),
    (errors.ValidationFailed("x"), P.VALIDATION_FAILED,
     "the ticket did not validate against the host keytab"),
    (errors.NoValidationKey("x"), P.VALIDATION_FAILED,
     "the host keytab has no key to validate the ticket with"),
    (errors.FastUnavailable("x"), P.FAST_UNAVAILABLE, "no FAST armor for the password exchange"),
    (errors.AccessDenied("x"), P.DENIED, "principal u@UNIT.TEST is disabled or locked out"),
    # auth answers no account_expired: its base class's code.
    (errors.AccountExpired("x"), P.DENIED, "principal u@UNIT.TEST is disabled or locked out"),
    (errors.NotRenewable("x"), P.KDC_ERROR, "no ticket: NotRenewable"),
    (errors.TicketError("x"), P.KDC_ERROR, "no ticket: TicketError"),
])
def test_an_auth_failure_answers_with_the_code_its_class_declares(make, krb, exc, code, text) -> None:
    svc = make()
    krb.fail["acquire_password"] = exc
    assert _auth(svc) == P.reply_error(code, text)
    assert svc.tickets == {} and svc.pending == {} and svc._authing == {}


def test_a_kdc_question_becomes_a_prompt_reply_and_answers_reach_the_krb_side(make, krb) -> None:
    svc = make()
    krb.fail["acquire_password"] = errors.PromptNeeded("asks", [("Enter OTP Token Value", True)], "Token", 0)
    reply = _auth(svc)
    assert reply["code"] == P.PROMPT and reply["ok"] is False
    assert reply["prompts"] == [{"text": "Enter OTP Token Value", "hidden": True}]
    assert (reply["banner"], reply["answered"], reply["principal"]) == ("Token", 0, "u@UNIT.TEST")
    assert svc.tickets == {} and svc.pending == {} and svc._authing == {}
    del krb.fail["acquire_password"]
    krb.calls.clear()
    assert svc.auth(ROOT, "u", UID, UID, "pw", answers=["123456"])["ok"] is True
    assert krb.calls[0][1][3]["answers"] == ["123456"]


def test_an_expired_password_is_said_so_only_when_it_is_the_right_one(make, krb, caplog) -> None:
    svc = make()
    krb.fail["acquire_password"] = errors.PasswordExpired("KEY_EXP")
    assert _auth(svc)["code"] == P.PASSWORD_EXPIRED
    krb.fail["verify_changepw"] = errors.BadPassword("preauth failed")
    with caplog.at_level(logging.INFO, logger="keyinit-ticketd"):
        assert _auth(svc) == P.reply_error(P.BAD_PASSWORD, "wrong password")
    assert f"auth u@UNIT.TEST (uid {UID}): wrong password (password expired)" in caplog.text
    krb.fail["verify_changepw"] = errors.AccessDenied("locked")  # not an answer of this check
    assert _auth(svc)["code"] == P.KDC_ERROR


@pytest.mark.parametrize(("exc", "code"), [
    (errors.AccountExpired("x"), P.ACCOUNT_EXPIRED), (errors.AccessDenied("x"), P.DENIED),
    (errors.PasswordExpired("x"), P.PASSWORD_EXPIRED), (errors.UnknownPrincipal("x"), P.UNKNOWN_PRINCIPAL),
    (errors.KdcUnreachable("x"), P.KDC_UNREACHABLE), (errors.QuotaExceeded("x"), P.KDC_ERROR),
])
def test_account_answers_the_kdcs_view_with_its_own_codes(make, krb, exc, code) -> None:
    svc = make()
    krb.fail["account_state"] = exc
    assert svc.account(ROOT, "u", UID)["code"] == code


def test_auth_answers_kuserok_asked_during_the_exchange_and_again_for_a_renamed_principal(make, krb) -> None:
    """krb5_kuserok is asked once, while the KDC exchange is in flight; when the KDC names the
    principal otherwise (canonicalize) it is asked again for that name; a failure leaves the
    answer out (acct_mgmt then asks), and the login stands."""
    svc = make()
    krb.kuserok_answer = False
    reply = svc.auth(ROOT, "u", UID, UID, "pw", kuserok=True)
    assert reply["ok"] and reply["kuserok"] is False, reply
    assert [name for op, name in krb.calls if op == "kuserok"] == ["u@UNIT.TEST"]
    krb.calls.clear()
    krb.kdc_name, krb.kuserok_answer = "U@UNIT.TEST", True
    reply = svc.auth(ROOT, "u", UID, UID, "pw", kuserok=True)
    assert reply["ok"] and reply["principal"] == "U@UNIT.TEST" and reply["kuserok"] is True, reply
    asked = [name for op, name in krb.calls if op == "kuserok"]
    assert asked == ["u@UNIT.TEST", "U@UNIT.TEST"]
    krb.fail["kuserok"] = errors.TicketError("bad name")
    reply = svc.auth(ROOT, "u", UID, UID, "pw", kuserok=True)
    assert reply["ok"] and "kuserok" not in reply, reply


def test_account_refused_by_kuserok_abandons_the_hooks_login_at_once(make, krb) -> None:
    svc = make()
    name = _auth(svc)["ccache"]
    krb.kuserok_answer = False
    reply = svc.account(ROOT, "u", UID, kdc=False)
    assert reply["code"] == P.DENIED and "not authorized" in reply["error"]
    assert krb.destroyed == [name] and svc.pending == {}
    krb.fail["kuserok"] = errors.TicketError("bad name")
    assert svc.account(ROOT, "u", UID)["code"] == P.BAD_REQUEST


def test_chpass_passes_kpasswds_words_on(make, krb) -> None:
    svc = make()
    assert svc.chpass(ROOT, "u", UID, "old", new_password="new") == P.reply_ok(principal="u@UNIT.TEST",
                                                                                 changed=True)
    krb.fail["change_password"] = errors.PasswordRejected("Password is too short")
    assert svc.chpass(ROOT, "u", UID, "old", new_password="n") == P.reply_error(P.PASSWORD_REJECTED,
                                                                                  "Password is too short")


def test_a_renewal_follows_the_ticket_into_its_new_cache(make, krb) -> None:
    svc = make()
    old = _auth(svc)["ccache"]
    assert svc._renew(old) is None
    (new,) = svc.tickets
    assert new != old and svc.pending[UID].ccaches == {new}
    assert svc.tickets[new].renewed == 1 and svc.renewals == 1
    assert svc.scheduler.due(("renew", new)) is not None and svc.scheduler.due(("renew", old)) is None


def test_the_state_file_shows_every_change_of_a_ticket(make, krb) -> None:
    """The snapshot reuses a ticket's JSON only while none of its values changed: a renewal (new
    name and times) and a change made in place both reach the file, the untouched ticket too."""
    svc = make()
    a = _auth(svc)["ccache"]
    b = svc.auth(ROOT, "v", UID + 1, UID + 1, "pw")["ccache"]

    def saved() -> list[dict]:
        with svc.lock:
            data, raw = svc._snapshot()
        return json.loads(statefile.encode(data, raw))["tickets"]

    assert saved() == [t.to_json() for t in svc.tickets.values()]
    with svc.lock:
        svc.tickets[b].endtime += 100.5
        svc.tickets[b].renewed += 1
    assert svc._renew(a) is None
    rows = saved()
    assert rows == [t.to_json() for t in svc.tickets.values()] and len(rows) == 2
    assert {r["ccache"] for r in rows} == set(svc.tickets) and a not in svc.tickets
    assert next(r for r in rows if r["ccache"] == b)["renewed"] == 1


def test_renewal_failures(make, krb) -> None:
    svc = make()
    name = _auth(svc)["ccache"]
    krb.fail["renew"] = errors.KdcUnreachable("silent")
    assert svc._renew(name) == "no KDC answered"
    assert svc.tickets[name].attempts == 1 and svc.scheduler.due(("renew", name)) is not None
    krb.fail["renew"] = errors.NotRenewable("renew_till passed")
    assert svc._renew(name).startswith("not renewable") and not svc.tickets[name].renewable
    krb.fail["renew"] = RuntimeError("the user ran kdestroy")
    assert svc._renew(name) == "the user ran kdestroy" and name not in svc.tickets
    assert svc._renew(name) == "not tracked"


def test_a_renewal_answered_after_the_logout_destroys_what_it_wrote(make, krb) -> None:
    """The logout comes while the KDC answers the renewal: the new cache must not outlive it."""
    svc = make()
    old = _auth(svc)["ccache"]
    assert svc.open(ROOT, "u", UID, UID)["ok"]
    renew = krb.renew

    def renew_during_logout(*args: object, **kwargs: object) -> object:
        written = renew(*args, **kwargs)  # the KDC answered and the new cache is written ...
        assert svc.close(ROOT, UID)["cleared"] == [old]  # ... when the last logout comes
        return written

    krb.renew = renew_during_logout  # type: ignore[method-assign]
    assert svc._renew(old) == "no longer tracked"
    (written,) = [c for c in krb.destroyed if c != old]
    assert svc.tickets == {} and written not in krb.caches


@pytest.mark.parametrize("switched", [False, True])
def test_a_login_during_a_renewals_kdc_exchange_leaves_no_untracked_copy_of_the_ticket(make, krb,
                                                                                      switched) -> None:
    """The renewal of A is at the KDC when a login of the same principal runs whole: its install
    retires A (the collection's primary) and its bookkeeping stops tracking A.  Then the renewal
    writes its new cache, which install no longer makes primary (A is not).  That copy was left
    untracked: renewed by nobody until a scan adopted it (then renewed beside the login's for the
    whole session), and never cleared by a last logout that came first.  It is destroyed now;
    one that install did switch to (``switched``: the login's switch came between install's look
    and its own) is the primary, and tracked."""
    krb.retire = True
    svc = make()
    old = _auth(svc)["ccache"]
    assert svc.open(ROOT, "u", UID, UID)["ok"]
    renew, logins = krb.renew, []

    def renew_after_a_login(*args: object, **kwargs: object) -> object:
        logins.append(_auth(svc)["ccache"])  # the login's install and bookkeeping come first ...
        info = renew(*args, **kwargs)  # ... then the renewal's new cache is written
        info.primary = switched  # type: ignore[attr-defined]  # as ccache.TicketInfo says
        return info

    krb.renew = renew_after_a_login  # type: ignore[method-assign]
    assert svc._renew(old) == "no longer tracked"
    (login,) = logins
    assert old not in svc.tickets and login in svc.tickets
    assert (len(svc.tickets) == 2) is switched
    untracked = {c for c, i in krb.caches.items() if i.uid == UID and c != old} - set(svc.tickets)
    assert untracked == set(), "the renewal's copy of the ticket was left untracked"
    assert svc.open(ROOT, "u", UID, UID)["ok"]  # the login's session; then both log out
    assert svc.close(ROOT, UID)["ok"] and svc.close(ROOT, UID)["ok"]
    assert {c for c, i in krb.caches.items() if i.uid == UID} <= {old}  # old: retired, the grace's to destroy


def _expire_pending(svc: Service) -> None:
    """The uid's pending logins reach their deadline (pending_auth_timeout) with no session open."""
    with svc.lock:
        svc.pending[UID].deadline = 0.0
    svc._pending_expired(UID)


@pytest.mark.parametrize("expired", ["after the renewal", "during the renewal"])
def test_a_renewals_primary_copy_does_not_outlive_a_login_that_never_opens(make, krb, expired) -> None:
    """No session of the uid is open.  The renewal of A (a login's, between auth and open) is at
    the KDC when a second auth of the same principal runs whole: its install retires A, its cache
    is held for its login.  Install makes the renewal's copy the primary (the login's switch came
    between install's look and its own), so the copy is tracked.  Then neither login opens a
    session: their pending entry expires (after the renewal, or while it is still at the KDC).
    The copy was held by no pending entry, so that expiry destroyed only the login's cache, and the
    copy (or, expiry first, the copy tracked with no login left) was renewed until renew_till."""
    krb.retire = True
    svc = make()
    old = _auth(svc)["ccache"]
    renew, logins = krb.renew, []

    def renew_after_a_login(*args: object, **kwargs: object) -> object:
        logins.append(_auth(svc)["ccache"])  # the login's install and bookkeeping come first ...
        if expired == "during the renewal":
            _expire_pending(svc)
        info = renew(*args, **kwargs)  # ... then the renewal's new cache is written, made primary
        info.primary = True  # type: ignore[attr-defined]  # as ccache.TicketInfo says
        return info

    krb.renew = renew_after_a_login  # type: ignore[method-assign]
    assert svc._renew(old) == "no longer tracked"
    (login,) = logins
    if expired == "after the renewal":
        assert len(svc.tickets) == 2 and login in svc.tickets  # the login's and the primary copy
        _expire_pending(svc)
    assert svc.sessions.count(UID) == 0 and UID not in svc.pending
    assert svc.tickets == {}, "a cache of the abandoned logins is still tracked (renewed)"
    assert {c for c, i in krb.caches.items() if i.uid == UID} <= {old}  # old: retired, the grace's to destroy


def test_a_renewals_primary_copy_is_kept_when_clear_on_logout_keeps_the_tickets(make, krb) -> None:
    """clear_on_logout = "none".  The renewal of A is at the KDC while a second login of the same
    principal authenticates and both sessions end: the last logout keeps every cache.  Then the
    renewal writes its copy, made primary.  Destroying it, as a stray copy, left
    krb_ccache:primary naming no cache while the logins' tickets the policy kept were there."""
    krb.retire = True
    svc = make(clear_on_logout="none")
    old = _auth(svc)["ccache"]
    assert svc.open(ROOT, "u", UID, UID)["ok"]
    renew, copies = krb.renew, []

    def renew_after_the_logins_ended(*args: object, **kwargs: object) -> object:
        _auth(svc)  # the second login retires A ...
        assert svc.open(ROOT, "u", UID, UID)["ok"]
        assert svc.close(ROOT, UID)["ok"] and svc.close(ROOT, UID)["ok"]  # ... and both log out
        info = renew(*args, **kwargs)
        info.primary = True  # type: ignore[attr-defined]  # install's switch landed
        copies.append(info.ccache)
        return info

    krb.renew = renew_after_the_logins_ended  # type: ignore[method-assign]
    assert svc._renew(old) == "no longer tracked"
    (copy,) = copies
    assert svc.sessions.count(UID) == 0 and UID not in svc.pending and svc.tickets == {}
    assert copy in krb.caches and copy not in krb.destroyed, "the primary copy was destroyed"


def test_a_renewals_primary_copy_held_with_a_pending_login_stays_under_an_open_session(make, krb) -> None:
    """As above, but the first login opens its session after the renewal while the second still
    waits: the second's expiry must clear nothing under that session (the copy and the login's
    cache stay tracked), and the session's logout clears them both."""
    krb.retire = True
    svc = make()
    old = _auth(svc)["ccache"]
    renew, logins = krb.renew, []

    def renew_after_a_login(*args: object, **kwargs: object) -> object:
        logins.append(_auth(svc)["ccache"])
        info = renew(*args, **kwargs)
        info.primary = True  # type: ignore[attr-defined]
        return info

    krb.renew = renew_after_a_login  # type: ignore[method-assign]
    assert svc._renew(old) == "no longer tracked"
    (login,) = logins
    kept = set(svc.tickets)
    assert len(kept) == 2 and login in kept
    assert svc.open(ROOT, "u", UID, UID)["ok"] and svc.pending[UID].logins == 1
    _expire_pending(svc)
    assert set(svc.tickets) == kept and krb.destroyed == [] and kept <= set(krb.caches)
    assert sorted(svc.close(ROOT, UID)["cleared"]) == sorted(kept)
    assert svc.tickets == {} and {c for c, i in krb.caches.items() if i.uid == UID} <= {old}


def test_a_scan_adopts_the_users_own_kinit_while_logged_in(make, krb) -> None:
    svc = make()
    assert svc.open(ROOT, "u", UID, UID)["ok"]
    kinit = krb._new(UID, "u@UNIT.TEST", service=False).ccache
    svc._scan(UID, reschedule=False)
    assert svc.tickets[kinit].origin == ADOPTED and svc.scheduler.due(("renew", kinit)) is not None


def test_a_first_open_schedules_its_scan_after_the_reply_and_its_touch_on_the_timer(make) -> None:
    svc = make(persistent_touch_interval=600)
    t0 = time.time()
    assert svc.open(ROOT, "u", UID, UID)["ok"]
    scan, touch = svc.scheduler.due(("scan", UID)), svc.scheduler.due(("touch", UID))
    assert scan is not None and t0 + SCAN_AFTER_OPEN <= scan <= time.time() + SCAN_AFTER_OPEN
    # The scan's keyctl_get_persistent resets the keyring's expiry now: the touch waits its interval.
    assert touch is not None and touch >= t0 + 600


def _listed(krb: FakeKrb) -> int:
    return sum(1 for call, _ in krb.calls if call == "list_caches")


def test_a_scan_lists_with_libkrb5_only_when_the_kernel_shows_an_untracked_cache(make, krb) -> None:
    svc = make()
    login = _auth(svc)["ccache"]
    assert svc.open(ROOT, "u", UID, UID)["ok"]
    svc._scan(UID, reschedule=False)
    assert _listed(krb) == 0 and set(svc.tickets) == {login}  # only the login's own cache: nothing new
    kinit = krb._new(UID, "u@UNIT.TEST", service=False).ccache
    svc._scan(UID, reschedule=False)
    assert _listed(krb) == 1 and svc.tickets[kinit].origin == ADOPTED
    svc._scan(UID, reschedule=False)
    assert _listed(krb) == 1  # adopted now: tracked, so not listed again


def test_a_scan_whose_kernel_read_fails_lists_with_libkrb5(make, krb) -> None:
    svc = make()
    assert svc.open(ROOT, "u", UID, UID)["ok"]
    kinit = krb._new(UID, "u@UNIT.TEST", service=False).ccache
    krb.fail["cache_names"] = PermissionError(13, "Permission denied")
    svc._scan(UID, reschedule=False)
    assert _listed(krb) == 1 and svc.tickets[kinit].origin == ADOPTED


def test_the_operations_table_and_the_service_agree() -> None:
    assert P.ROOT_OPS == {"auth", "account", "chpass", "open", "close", "metrics"}
    mutating = {n for n, op in P.OPS.items() if op.mutating}
    assert mutating == {"auth", "open", "close", "renew", "destroy", "chpass"}
    for op in P.OPS.values():
        params = dict(list(inspect.signature(getattr(Service, op.handler)).parameters.items())[1:])
        assert next(iter(params)) == "peer", op.name
        for name, (_kind, required) in op.fields.items():
            assert name in params, (op.name, name)
            assert (params[name].default is inspect.Parameter.empty) == required, (op.name, name)
        assert set(params) - {"peer"} == set(op.fields), op.name
        assert op.errors <= P.ERROR_CODES, op.name


def _subclasses(cls: type) -> list[type]:
    return [cls, *(s for sub in cls.__subclasses__() for s in _subclasses(sub))]


def test_every_ticket_error_declares_a_protocol_code_and_all_sit_under_one_root() -> None:
    for cls in _subclasses(errors.TicketError):
        assert cls.reply in P.ERROR_CODES, cls
    assert not hasattr(P, "NOT_RENEWABLE")
    for cls in (errors.TicketError, P.ProtocolError, ConfigError):
        assert issubclass(cls, KeyinitError)


def test_the_dispatcher_authorises_from_the_operations_table(make, krb) -> None:
    svc = make()
    _auth(svc)
    d = Dispatcher(svc, 1.0, RateLimitedLog(), lambda: {"open": 1})
    user = UID + 1  # another user
    msg = {"op": "auth", "user": "u", "uid": UID, "gid": UID, "password": "pw"}
    assert d.dispatch(msg, 1, UID) == P.reply_error(P.DENIED, "only root may send 'auth'")
    denied = d.dispatch({"op": "tickets", "uid": UID}, 1, user)
    assert denied["code"] == P.DENIED and "may not list the tickets of uid" in denied["error"]
    assert len(d.dispatch({"op": "tickets"}, 1, UID)["tickets"]) == 1
    assert d.dispatch({"op": "tickets"}, 1, user)["tickets"] == []
    assert len(d.dispatch({"op": "tickets"}, 1, 0)["tickets"]) == 1
    assert d.dispatch({"op": "renew"}, 1, user)["ok"]
    assert d.dispatch({"op": "renew"}, 1, user)["code"] == P.BUSY  # a user's second pass at once
    assert d.dispatch({"op": "status"}, 1, 0)["service"]["connections"] == {"open": 1}
    assert "connections" not in d.dispatch({"op": "status"}, 1, user)["service"]
