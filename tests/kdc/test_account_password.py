"""Account checks (pam_sm_acct_mgmt) and Kerberos password changes (pam_sm_chauthtok) through real libpam.

pamtester under pam_wrapper drives the real pam_python.so and hook, a real keyinit-ticketd
does the Kerberos work against a real MIT KDC, and a real kadmind on loopback serves kpasswd.
Stacks are written as the Primary profile puts the hook: first, ``sufficient`` for auth.
PAM results are read from pamtester's pam_strerror texts; messages the hook sends through the
conversation (PAM_ERROR_MSG) are printed by pamtester's misc_conv.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import krb5
from pam_keyinit_py import protocol as P
from pam_keyinit_py.lab.pamwrap import PamWrapper
from pam_keyinit_py.lab.realm import Realm
from tests import conftest
from tests.conftest import delete_user, make_user
from tests.fixtures_pam import STRERROR
from tests.kdc import test_validation as tv
from tests.kdc import ticketd as td
from tests.kdc.ticketd import persistent_caches

svc_user, ticketd, user_krb5 = td.svc_user, td.ticketd, td.user_krb5
daemons, fast_realm, fast_user = tv.daemons, tv.fast_realm, tv.fast_user



def stack(pamwrap: PamWrapper, sock: str, auth_opts: str = "") -> list[str]:
    """The hook as a Primary authenticator: auth sufficient (then deny), account, password, session."""
    return [
        pamwrap.hook_line("auth", "sufficient", f"{auth_opts} socket={sock}".strip()),
        "auth requisite pam_deny.so",
        pamwrap.hook_line("account", "required", f"socket={sock}"),
        pamwrap.hook_line("password", "required", f"socket={sock}"),
        pamwrap.hook_line("session", "required", f"force revoke tickets socket={sock}"),
    ]


def pamtester(pamwrap: PamWrapper, service: str, user: str, answers: list[str], *ops: str):
    """pamtester with the conversation's answers on a pipe (never argv)."""
    read_fd, write_fd = os.pipe()
    os.write(write_fd, "".join(a + "\n" for a in answers).encode())
    os.close(write_fd)
    try:
        return pamwrap.run(service, user, *ops, stdin=read_fd)
    finally:
        os.close(read_fd)


def kinit_ok(realm: Realm, principal: str, password: str) -> bool:
    """krb5_get_init_creds_password in this process against the test realm (no cache written)."""
    old = os.environ.get("KRB5_CONFIG")
    os.environ["KRB5_CONFIG"] = str(realm.krb5_conf)
    try:
        ctx = krb5.init_context()
        princ = krb5.parse_name_flags(ctx, principal.encode())
        try:
            krb5.get_init_creds_password(ctx, princ, krb5.get_init_creds_opt_alloc(ctx), password.encode())
            return True
        except krb5.Krb5Error:
            return False
    finally:
        if old is None:
            del os.environ["KRB5_CONFIG"]
        else:
            os.environ["KRB5_CONFIG"] = old


def new_password() -> str:
    return "N3w-" + secrets.token_urlsafe(12)


# ------------------------------------------------------------------ passwd (pam_chauthtok)

def test_passwd_changes_the_kerberos_password(pamwrap, kadmind, ticketd, svc_user):
    service = pamwrap.service("pkb-passwd", stack(pamwrap, ticketd.socket))
    new = new_password()
    res = pamtester(pamwrap, service, svc_user.name, [svc_user.password, new, new], "chauthtok")
    out = res.stdout + res.stderr
    assert res.returncode == 0 and STRERROR["success"] in out, out + ticketd.log()
    assert "Current Kerberos password: " in out and "Retype new Kerberos password: " in out
    assert kinit_ok(kadmind, svc_user.principal, new)
    assert not kinit_ok(kadmind, svc_user.principal, svc_user.password)
    log = ticketd.log()
    assert f"chpass {svc_user.principal} (uid {svc_user.uid}): password changed through kpasswd" in log
    assert svc_user.password not in log and new not in log and new not in res.stderr


def test_passwd_with_a_wrong_current_password_changes_nothing(pamwrap, kadmind, ticketd, svc_user):
    service = pamwrap.service("pkb-passwd-wrong", stack(pamwrap, ticketd.socket))
    new = new_password()
    res = pamtester(pamwrap, service, svc_user.name, ["wrong-" + svc_user.password, new, new], "chauthtok")
    out = res.stdout + res.stderr
    assert res.returncode != 0 and STRERROR["authtok_recovery_err"] in out, out
    assert "Current Kerberos password incorrect" in out
    assert "Enter new Kerberos password" not in out  # the first pass stopped it
    assert kinit_ok(kadmind, svc_user.principal, svc_user.password)
    assert not kinit_ok(kadmind, svc_user.principal, new)


def test_passwd_relays_the_kpasswd_quality_refusal(pamwrap, kadmind, ticketd, svc_user):
    kadmind.add_policy("pkb-min12", "-minlength", "12")
    kadmind.modify_principal(svc_user.principal, "-policy", "pkb-min12")
    service = pamwrap.service("pkb-passwd-short", stack(pamwrap, ticketd.socket))
    res = pamtester(pamwrap, service, svc_user.name, [svc_user.password, "Sh0rt!", "Sh0rt!"], "chauthtok")
    out = res.stdout + res.stderr
    assert res.returncode != 0 and STRERROR["authtok_err"] in out, out
    # The kpasswd server's own words reach the user through PAM_ERROR_MSG.
    assert "too short" in out and "12 characters" in out, out
    assert kinit_ok(kadmind, svc_user.principal, svc_user.password)


def test_passwd_refuses_a_new_password_the_login_would_refuse(pamwrap, kadmind, ticketd, svc_user):
    """A new password over 511 bytes (PAM_MAX_RESP_SIZE - 1) is refused, as pam_krb5 refuses it
    (PAM_AUTHTOK_ERR): the hook's auth refuses such a password, so setting it would lock the user
    out of the very login that changed it."""
    service = pamwrap.service("pkb-passwd-long", stack(pamwrap, ticketd.socket))
    new = "N3w-" + "x" * 600
    res = pamtester(pamwrap, service, svc_user.name, [svc_user.password, new, new], "chauthtok")
    out = res.stdout + res.stderr
    assert res.returncode != 0 and STRERROR["authtok_err"] in out, out
    assert "unexpected" not in out, out
    assert kinit_ok(kadmind, svc_user.principal, svc_user.password)


def test_passwd_mismatched_retype_changes_nothing(pamwrap, kadmind, ticketd, svc_user):
    service = pamwrap.service("pkb-passwd-mismatch", stack(pamwrap, ticketd.socket))
    res = pamtester(pamwrap, service, svc_user.name, [svc_user.password, new_password(), new_password()],
                    "chauthtok")
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "Passwords don't match" in out, out
    assert kinit_ok(kadmind, svc_user.principal, svc_user.password)


@pytest.mark.parametrize("silent", [False, True], ids=["flags-0", "PAM_SILENT"])
def test_passwd_under_pam_silent_still_prompts_but_shows_no_message(pamwrap, kadmind, ticketd, svc_user,
                                                                     silent):
    """PAM_SILENT (passwd -q, or any application that asks for it) drops the hook's PAM_ERROR_MSG,
    as pam_krb5's pamk5_conv and pam_unix drop theirs; the prompts are questions, and still come."""
    service = pamwrap.service("pkb-passwd-silent", stack(pamwrap, ticketd.socket))
    op = "chauthtok(PAM_SILENT)" if silent else "chauthtok"
    res = pamtester(pamwrap, service, svc_user.name, ["wrong-" + svc_user.password], op)
    out = res.stdout + res.stderr
    assert res.returncode != 0 and STRERROR["authtok_recovery_err"] in out, out
    assert "Current Kerberos password: " in out, out
    assert ("Current Kerberos password incorrect" in out) is not silent, out


# ------------------------------------------------------------------ expired passwords

def test_expired_password_authenticates_then_account_requires_a_change(pamwrap, kadmind, ticketd, svc_user):
    kadmind.modify_principal(svc_user.principal, "+needchange")
    service = pamwrap.service("pkb-expired", stack(pamwrap, ticketd.socket))
    res = pamtester(pamwrap, service, svc_user.name, [svc_user.password], "authenticate", "acct_mgmt")
    out = res.stdout + res.stderr
    assert "successfully authenticated" in out, out
    assert res.returncode != 0 and STRERROR["new_authtok_reqd"] in out, out + ticketd.log()
    expected = (f"auth {svc_user.principal} (uid {svc_user.uid}): "
                "password expired (the password itself is right)")
    assert expected in ticketd.log()


@pytest.mark.parametrize("silent", [False, True], ids=["flags-0", "PAM_SILENT"])
def test_change_at_login_under_pam_silent_asks_without_the_expiry_notice(pamwrap, kadmind, ticketd,
                                                                         svc_user, silent):
    """The change of an expired password at login: its PAM_TEXT_INFO notice is dropped under
    PAM_SILENT, and the three prompts still come and change the password."""
    kadmind.modify_principal(svc_user.principal, "+needchange")
    service = pamwrap.service("pkb-expired-silent", stack(pamwrap, ticketd.socket))
    flags = "PAM_CHANGE_EXPIRED_AUTHTOK|PAM_SILENT" if silent else "PAM_CHANGE_EXPIRED_AUTHTOK"
    new = new_password()
    res = pamtester(pamwrap, service, svc_user.name, [svc_user.password, svc_user.password, new, new],
                    "authenticate", f"chauthtok({flags})")
    out = res.stdout + res.stderr
    assert res.returncode == 0, out + ticketd.log()
    assert "Current Kerberos password: " in out and "Retype new Kerberos password: " in out, out
    assert ("Password expired.  You must change it now." in out) is not silent, out
    assert kinit_ok(kadmind, svc_user.principal, new)


def test_expired_principal_with_a_wrong_password_is_refused(pamwrap, kadmind, ticketd, svc_user):
    """MIT answers KDC_ERR_KEY_EXP before it checks the password: the service must prove it first."""
    kadmind.modify_principal(svc_user.principal, "+needchange")
    service = pamwrap.service("pkb-expired-wrong", stack(pamwrap, ticketd.socket))
    res = pamtester(pamwrap, service, svc_user.name, ["wrong-" + svc_user.password], "authenticate")
    out = res.stdout + res.stderr
    assert res.returncode != 0 and STRERROR["auth_err"] in out, out
    assert "wrong password (password expired)" in ticketd.log()


def test_account_of_another_modules_login_requires_the_change(pamwrap, kadmind, ticketd, svc_user):
    """No authenticate through the hook (a public-key login): the KDC probe finds the expiry."""
    kadmind.modify_principal(svc_user.principal, "+needchange")
    service = pamwrap.service("pkb-expired-acct", stack(pamwrap, ticketd.socket))
    res = pamtester(pamwrap, service, svc_user.name, [], "acct_mgmt")
    assert res.returncode != 0 and STRERROR["new_authtok_reqd"] in res.stderr, res.stderr


# ------------------------------------------------------------------ locked and expired principals

@pytest.mark.parametrize("state, options, expected", [
    ("locked", ("-allow_tix",), "perm_denied"),
    ("expired", ("-expire", "yesterday"), "acct_expired"),
])
def test_acct_mgmt_refuses_a_locked_or_expired_principal(pamwrap, realm, ticketd, svc_user, state, options,
                                                         expected):
    service = pamwrap.service(f"pkb-acct-{state}", stack(pamwrap, ticketd.socket))
    res = pamtester(pamwrap, service, svc_user.name, [], "acct_mgmt")
    assert res.returncode == 0, res.stderr + ticketd.log()  # the same user before the change: allowed
    realm.modify_principal(svc_user.principal, *options)
    res = pamtester(pamwrap, service, svc_user.name, [], "acct_mgmt")
    assert res.returncode != 0 and STRERROR[expected] in res.stderr, res.stderr + ticketd.log()
    # And the password no longer opens a login either.
    res = pamtester(pamwrap, service, svc_user.name, [svc_user.password], "authenticate")
    assert res.returncode != 0 and STRERROR["auth_err"] in res.stderr, res.stderr


def test_acct_mgmt_ignores_a_local_user_without_a_principal(pamwrap, ticketd):
    stranger = make_user("pkb")
    try:
        service = pamwrap.service("pkb-acct-local", [
            pamwrap.hook_line("account", "required", f"socket={ticketd.socket}"),
            "account required pam_permit.so",
        ])
        res = pamtester(pamwrap, service, stranger.name, [], "acct_mgmt")
        assert res.returncode == 0, res.stderr + ticketd.log()
        # Without pam_permit the hook's PAM_IGNORE leaves libpam nothing to succeed with.
        only = pamwrap.service("pkb-acct-only", [pamwrap.hook_line("account", "required",
                                                                   f"socket={ticketd.socket}")])
        res = pamtester(pamwrap, only, stranger.name, [], "acct_mgmt")
        assert res.returncode != 0, res.stderr
    finally:
        delete_user(stranger)


# ------------------------------------------------------------------ .k5login (krb5_kuserok)

@pytest.fixture
def bob(realm) -> conftest.TestUser:
    """A local account "bob" whose ~/.k5login lets alice@REALM in; alice and carol are principals only."""
    user = make_user("pkbob")
    names = []
    try:
        passwords = {}
        for who in ("alice", "carol"):
            name = f"pkb{who}{secrets.token_hex(3)}"
            passwords[who] = secrets.token_urlsafe(12)
            names.append(realm.add_principal(name, passwords[who]))
        k5login = Path(user.home) / ".k5login"
        k5login.write_text(f"{names[0]}\n")
        os.chown(k5login, user.uid, user.gid)
        user.alice, user.carol = names  # type: ignore[attr-defined]
        user.passwords = passwords  # type: ignore[attr-defined]
        yield user
    finally:
        for name in names:
            subprocess.run(["kadmin.local", "-q", f"delprinc -force {name}"], env={**os.environ, **realm.env},
                           capture_output=True, check=False)
        td.clear_persistent_caches(user.uid)
        delete_user(user)


def test_k5login_lets_alice_into_bob_and_refuses_carol(pamwrap, ticketd, bob):
    service = pamwrap.service("pkb-k5login", stack(pamwrap, ticketd.socket, "search_k5login"))
    res = pamtester(pamwrap, service, bob.name, [bob.passwords["alice"]], "authenticate", "acct_mgmt")
    assert res.returncode == 0, res.stderr + ticketd.log()
    tickets = ticketd.request({"op": "tickets", "uid": bob.uid})["tickets"]
    assert [t["principal"] for t in tickets] == [bob.alice], tickets
    assert any(owner == bob.uid for keys in persistent_caches(bob.uid).values() for owner, _ in keys)
    res = pamtester(pamwrap, service, bob.name, [bob.passwords["carol"]], "authenticate")
    assert res.returncode != 0 and STRERROR["auth_err"] in res.stderr, res.stderr
    assert bob.passwords["alice"] not in ticketd.log() and bob.passwords["carol"] not in ticketd.log()


def test_kuserok_refuses_a_principal_the_k5login_does_not_name(ticketd, bob):
    """The service's account check: krb5_kuserok reads bob's ~/.k5login (MIT's k5login module)."""
    ask = {"op": "account", "user": bob.name, "uid": bob.uid, "kdc": False}
    assert ticketd.request({**ask, "principal": bob.alice})["ok"]
    reply = ticketd.request({**ask, "principal": bob.carol})
    assert reply["code"] == P.DENIED and bob.carol in reply["error"], reply
    # bob@REALM itself is not in bob's .k5login: with one there, it decides alone.
    reply = ticketd.request(ask)
    assert reply["code"] == P.DENIED, reply


def test_acct_mgmt_refuses_bob_own_principal_missing_from_his_k5login(pamwrap, realm, ticketd, bob):
    """Authenticated as bob@REALM with bob's password, but bob's .k5login names only alice."""
    password = secrets.token_urlsafe(12)
    realm.add_principal(bob.name, password)
    service = pamwrap.service("pkb-k5login-own", stack(pamwrap, ticketd.socket))
    res = pamtester(pamwrap, service, bob.name, [password], "authenticate", "acct_mgmt")
    assert "successfully authenticated" in res.stdout + res.stderr, res.stdout + res.stderr
    assert res.returncode != 0 and STRERROR["perm_denied"] in res.stderr, res.stderr + ticketd.log()
    # The refused login's TGT goes now (not at pending_auth_timeout), and it holds nothing back:
    ticketd.wait_for(lambda: persistent_caches(bob.uid) == {}, 5, "the refused login's TGT destroyed")
    (Path(bob.home) / ".k5login").unlink()  # no .k5login: auth_to_local maps bob@REALM to bob
    res = pamtester(pamwrap, service, bob.name, [password], "authenticate", "acct_mgmt", "open_session",
                    "close_session")
    assert res.returncode == 0, res.stderr + ticketd.log()
    # ... the next login's ticket is cleared at its own logout, as if the refused one never was.
    ticketd.wait_for(lambda: persistent_caches(bob.uid) == {}, 10, "the ticket cleared at logout")


def test_expired_k5login_principal_is_checked_and_changed_as_itself(pamwrap, kadmind, ticketd, bob):
    """search_k5login: alice@REALM, whom bob's ~/.k5login names, logs in to bob with her expired
    password.  The account check and the change are alice's.  The service's password_expired reply
    named no principal, so acct_mgmt asked krb5_kuserok for bob@REALM (absent from the .k5login:
    PAM_PERM_DENIED) and the change went to bob@REALM (no such principal: PAM_USER_UNKNOWN)."""
    kadmind.modify_principal(bob.alice, "+needchange")
    service = pamwrap.service("pkb-k5login-expired", stack(pamwrap, ticketd.socket, "search_k5login"))
    res = pamtester(pamwrap, service, bob.name, [bob.passwords["alice"]], "authenticate", "acct_mgmt")
    out = res.stdout + res.stderr
    assert "successfully authenticated" in out, out
    assert res.returncode != 0 and STRERROR["new_authtok_reqd"] in out, out + ticketd.log()
    # The change at login, as login(1) and sshd's keyboard-interactive run it: then acct_mgmt passes.
    new = new_password()
    res = pamtester(pamwrap, service, bob.name, [bob.passwords["alice"], bob.passwords["alice"], new, new],
                    "authenticate", "chauthtok(PAM_CHANGE_EXPIRED_AUTHTOK)", "acct_mgmt")
    out = res.stdout + res.stderr
    assert res.returncode == 0, out + ticketd.log()
    assert kinit_ok(kadmind, bob.alice, new) and not kinit_ok(kadmind, bob.alice, bob.passwords["alice"])
    tickets = ticketd.request({"op": "tickets", "uid": bob.uid})["tickets"]
    assert [t["principal"] for t in tickets] == [bob.alice], tickets
    assert new not in ticketd.log() and bob.passwords["alice"] not in ticketd.log()


def test_a_silent_kpasswd_server_does_not_freeze_the_service(realm, svc_user, tmp_path):
    """kpasswd accepts and never answers: the change fails after its bound, and meanwhile the
    service keeps answering (pykrb5's set_password held the GIL for all 24 s of libkrb5's retries)."""
    import re
    import socket
    import threading

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    directory = td.public_tmpdir("pkb-silent-")
    conf = directory / "krb5.conf"
    conf.write_text(re.sub(r"kpasswd_server = \S+", f"kpasswd_server = 127.0.0.1:{silent.getsockname()[1]}",
                           realm.krb5_conf.read_text()))
    daemon = td.TicketD(directory, {"KRB5_CONFIG": str(conf)}, **td.TEST_CONFIG)
    daemon.start()
    try:
        box: dict[str, dict] = {}
        change = threading.Thread(target=lambda: box.setdefault("reply", daemon.request(
            {"op": "chpass", "user": svc_user.name, "uid": svc_user.uid, "old_password": svc_user.password,
             "new_password": new_password()}, timeout=30)))
        change.start()
        silent.settimeout(15)
        held, _ = silent.accept()  # the service's kpasswd exchange is now waiting on us
        for _ in range(5):
            status = daemon.request({"op": "status"}, timeout=1.0)
            assert status["ok"], status  # answered while the kpasswd exchange hangs
        change.join(30)
        assert box["reply"]["code"] == P.KDC_UNREACHABLE, box
        assert kinit_ok(realm, svc_user.principal, svc_user.password)
        held.close()
    finally:
        daemon.stop()
        silent.close()
        import shutil

        shutil.rmtree(directory, ignore_errors=True)


def test_passwd_of_a_local_user_without_principal_is_left_to_pam_unix(pamwrap, ticketd):
    """No principal: the hook asks no Kerberos password, but hands the new one to pam_unix (use_authtok)."""
    local = make_user("pkb", password=True)
    try:
        before = subprocess.run(["getent", "shadow", local.name], capture_output=True, text=True).stdout
        service = pamwrap.service("pkb-passwd-local", [
            # Debian's common-password shape, as pam-auth-update writes it for a Primary module.
            pamwrap.hook_line("password", "[success=2 default=ignore]", f"socket={ticketd.socket}"),
            "password [success=1 default=ignore] pam_unix.so use_authtok yescrypt",
            "password requisite pam_deny.so",
            "password required pam_permit.so",
        ])
        new = new_password()
        res = pamtester(pamwrap, service, local.name, [new, new], "chauthtok")
        out = res.stdout + res.stderr
        assert res.returncode == 0, out + ticketd.log()
        assert "Kerberos" not in out and "Enter new password: " in out, out
        after = subprocess.run(["getent", "shadow", local.name], capture_output=True, text=True).stdout
        assert after.split(":")[1] != before.split(":")[1]  # pam_unix stored the new hash
    finally:
        delete_user(local)


def test_fast_armors_the_password_change(daemons, fast_realm, fast_user, tmp_path):
    """fast = "require" armors the kadmin/changepw exchange as it armors the login's.

    kadmin/changepw in this realm requires the KDC's FAST mark (require_auth fast, set by the
    encrypted-challenge preauth that only an armored exchange can use): an unarmored change is
    refused by the KDC, an armored one goes through kpasswd.
    """
    fast_realm.start_kadmind()
    fast_realm.set_string(f"kadmin/changepw@{fast_realm.realm}", "require_auth", "fast")
    ask = {"op": "chpass", "user": fast_user.name, "uid": fast_user.uid, "old_password": fast_user.password}

    unarmored = daemons(fast_realm.env, validate_principal=tv.FAST_HOST, fast="never")
    reply = unarmored.request(ask)
    assert not reply["ok"] and reply["code"] != P.BAD_PASSWORD, reply  # the KDC, not the password
    assert "Required auth indicators not present" in (fast_realm.dir / "kdc.log").read_text()

    armored = daemons(fast_realm.env, validate_principal=tv.FAST_HOST, fast="require")
    assert armored.request(ask)["ok"], armored.log()
    new = new_password()
    reply = armored.request({**ask, "new_password": new})
    assert reply["ok"] and reply["changed"], f"{reply}\n{armored.log()}"
    assert kinit_ok(fast_realm, fast_user.principal, new)

    # No host keytab and fast = "require": refused before any password leaves the host.
    bare = daemons(fast_realm.env, fast="require", validate="never", validate_keytab=str(tmp_path / "none"))
    reply = bare.request({**ask, "old_password": new})
    assert reply["code"] == P.FAST_UNAVAILABLE, reply


def test_passwd_through_the_keyinit_krb5_profile(pamwrap, kadmind, ticketd, svc_user):
    """The common-password that ``pam-auth-update --enable keyinit-krb5`` writes: the hook first."""
    from pam_keyinit_py.lab import pamconfigs
    from tests.conftest import require

    missing = pamconfigs.available()
    require(missing is None, missing or "")
    stacks = pamconfigs.render_stacks(("keyinit-krb5",))
    service = pamwrap.service("pkb-passwd-profile",
                              pamconfigs.service_lines(stacks, pamwrap, f"socket={ticketd.socket}"))
    new = new_password()
    res = pamtester(pamwrap, service, svc_user.name, [svc_user.password, new, new], "chauthtok")
    assert res.returncode == 0, res.stdout + res.stderr + ticketd.log()
    assert kinit_ok(kadmind, svc_user.principal, new)
    assert not kinit_ok(kadmind, svc_user.principal, svc_user.password)


def test_acct_mgmt_of_another_modules_login_with_the_kdc_down_is_not_blocked(pamwrap, realm, ticketd,
                                                                            svc_user):
    """The login was not Kerberos's (a public key): a silent KDC must not lock the user out."""
    service = pamwrap.service("pkb-acct-kdc-down", [
        pamwrap.hook_line("account", "required", f"socket={ticketd.socket}"),
        "account required pam_permit.so",
    ])
    realm.stop_kdc()
    try:
        res = pamtester(pamwrap, service, svc_user.name, [], "acct_mgmt")
    finally:
        realm.start_kdc()
    assert res.returncode == 0, res.stderr + ticketd.log()  # PAM_IGNORE, then pam_permit
    assert f"account {svc_user.name} (uid {svc_user.uid}): no KDC answered" in ticketd.log()


# ------------------------------------------------------------------ principal_name: account and password

#: ticketd.toml's principal_name of the mapped tests: the user's principal is not user@REALM.
MAPPED = "{user}.mapped"


@pytest.fixture
def mapped_ticketd(realm) -> Iterator[td.TicketD]:  # noqa: ANN001
    yield from td.serve(realm, **td.TEST_CONFIG, principal_name=MAPPED)


@pytest.fixture
def mapped_user(realm) -> Iterator[conftest.TestUser]:  # noqa: ANN001
    """A local "pkmap" user whose only principal is <user>.mapped@REALM (no <user>@REALM exists),
    named by the user's ~/.k5login, so krb5_kuserok lets it in and no other."""
    user = make_user("pkmap")
    name = MAPPED.replace("{user}", user.name)
    try:
        user.password = secrets.token_urlsafe(12)  # type: ignore[attr-defined]
        user.principal = realm.add_principal(name, user.password)  # type: ignore[attr-defined]
        k5login = Path(user.home) / ".k5login"
        k5login.write_text(f"{user.principal}\n")  # type: ignore[attr-defined]
        os.chown(k5login, user.uid, user.gid)
        yield user
    finally:
        subprocess.run(["kadmin.local", "-q", f"delprinc -force {name}"], env={**os.environ, **realm.env},
                       capture_output=True, check=False)
        td.clear_persistent_caches(user.uid)
        delete_user(user)


def test_account_of_a_publickey_login_asks_about_the_mapped_principal(pamwrap, realm, mapped_ticketd,
                                                                      mapped_user):
    """No authenticate through the hook (a public-key login): acct_mgmt's kuserok and KDC probe
    are about principal_name's principal, not user@default_realm (which does not exist here)."""
    ask = {"op": "account", "user": mapped_user.name, "uid": mapped_user.uid}
    reply = mapped_ticketd.request({**ask, "kuserok": True, "kdc": True})
    assert reply["ok"] and reply["principal"] == mapped_user.principal, reply
    service = pamwrap.service("pkb-acct-mapped", stack(pamwrap, mapped_ticketd.socket))
    res = pamtester(pamwrap, service, mapped_user.name, [], "acct_mgmt")
    assert res.returncode == 0, res.stderr + mapped_ticketd.log()
    realm.modify_principal(mapped_user.principal, "-allow_tix")
    res = pamtester(pamwrap, service, mapped_user.name, [], "acct_mgmt")
    assert res.returncode != 0 and STRERROR["perm_denied"] in res.stderr, res.stderr + mapped_ticketd.log()
    realm.modify_principal(mapped_user.principal, "+allow_tix", "+needchange")
    res = pamtester(pamwrap, service, mapped_user.name, [], "acct_mgmt")
    assert res.returncode != 0 and STRERROR["new_authtok_reqd"] in res.stderr, res.stderr


def test_passwd_changes_the_mapped_principals_password(pamwrap, kadmind, mapped_ticketd, mapped_user):
    """The user's own passwd (no authenticate in the handle): the change is principal_name's."""
    service = pamwrap.service("pkb-passwd-mapped", stack(pamwrap, mapped_ticketd.socket))
    new = new_password()
    res = pamtester(pamwrap, service, mapped_user.name, [mapped_user.password, new, new], "chauthtok")
    out = res.stdout + res.stderr
    assert res.returncode == 0 and STRERROR["success"] in out, out + mapped_ticketd.log()
    assert kinit_ok(kadmind, mapped_user.principal, new)
    assert not kinit_ok(kadmind, mapped_user.principal, mapped_user.password)
    assert f"chpass {mapped_user.principal} (uid {mapped_user.uid}): password changed" in mapped_ticketd.log()
