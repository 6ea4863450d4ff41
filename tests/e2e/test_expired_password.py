"""An expired Kerberos password (kadmin modprinc +needchange) is changed in the login itself.

Real hosts on a pty (pexpect): a private sshd in KbdInteractiveAuthentication mode and
/bin/login, both reading from a pam_wrapper service directory the stack that
``pam-auth-update --enable keyinit-krb5`` writes (lab/pamconfigs.py: the hook first in
common-auth, its account line, first in common-password), a real keyinit-ticketd, a real MIT
KDC and a real kadmind (kpasswd).  Where the client cannot be asked (sshd
PasswordAuthentication: sshpass, no tty), the login is refused with sshd's message and the
command never runs.
"""

from __future__ import annotations

import secrets
import shutil

import pytest

from pam_keyinit_py.lab import pamconfigs
from pam_keyinit_py.lab.sshd import KBDINT, PASSWORD
from tests.conftest import require
from tests.e2e import test_sshd_krb5_login as krb5_login
from tests.kdc import ticketd as td
from tests.kdc.test_account_password import kinit_ok

svc_user, ticketd, user_krb5 = td.svc_user, td.ticketd, td.user_krb5
primary_stacks = krb5_login.primary_stacks


def _profile(stacks: dict[str, list[str]], sock: str):
    return lambda pamwrap: pamconfigs.service_lines(stacks, pamwrap, f"socket={sock}")

MARK = "pkb-session-ran"


def _pexpect():
    try:
        import pexpect
    except ImportError:
        require(False, "pexpect is not installed (test extra)")
        raise
    return pexpect


def session_ran(child, server, daemon) -> str:  # noqa: ANN001
    """The transcript of a closed ssh pty client whose login succeeded and whose command ran
    (exit 0, :data:`MARK` printed); else fail with the transcript, sshd's and the service's logs."""
    transcript = child.before or ""
    assert child.exitstatus == 0, f"{transcript}\n--- sshd ---\n{server.log()[-3000:]}\n{daemon.log()}"
    assert MARK in transcript
    return transcript


def _change_dialogue(child, old: str, new: str) -> None:
    """Answer the hook's prompts: the password, then the current one again and the new one twice."""
    child.expect("Password: ")
    child.sendline(old)
    child.expect("Password expired.  You must change it now.")
    child.expect("Current Kerberos password: ")
    child.sendline(old)
    child.expect("Enter new Kerberos password: ")
    child.sendline(new)
    child.expect("Retype new Kerberos password: ")
    child.sendline(new)


def _assert_changed(realm, svc_user, new: str, transcript: str) -> None:
    assert f"Default principal: {svc_user.principal}" in transcript, transcript
    assert f"Ticket cache: KEYRING:persistent:{svc_user.uid}:" in transcript, transcript
    assert kinit_ok(realm, svc_user.principal, new)
    assert not kinit_ok(realm, svc_user.principal, svc_user.password)


def test_ssh_keyboard_interactive_changes_an_expired_password(sshd_factory, primary_stacks, kadmind, ticketd,
                                                              svc_user, user_krb5):
    pexpect = _pexpect()
    kadmind.modify_principal(svc_user.principal, "+needchange")
    server = sshd_factory(_profile(primary_stacks, ticketd.socket), mode=KBDINT)
    new = "N3w-" + secrets.token_urlsafe(12)
    # Four keyboard-interactive rounds (password, current, new, retype): allow them.
    child = server.pty_client(pexpect, svc_user.name,
                              f"echo {MARK}; KRB5_CONFIG={user_krb5['KRB5_CONFIG']} klist", prompts=6)
    try:
        _change_dialogue(child, svc_user.password, new)
        child.expect(pexpect.EOF)
    finally:
        child.close()
    transcript = session_ran(child, server, ticketd)
    _assert_changed(kadmind, svc_user, new, transcript)
    log = ticketd.log()
    assert "password changed through kpasswd" in log
    assert svc_user.password not in log and new not in log and new not in server.log()


def test_login_on_a_pty_changes_an_expired_password(pamwrap, primary_stacks, kadmind, ticketd, svc_user,
                                                     user_krb5):
    pexpect = _pexpect()
    kadmind.modify_principal(svc_user.principal, "+needchange")
    pamwrap.service("login", _profile(primary_stacks, ticketd.socket)(pamwrap))
    new = "N3w-" + secrets.token_urlsafe(12)
    child = pexpect.spawn("/bin/login", [svc_user.name], encoding="utf-8", timeout=30, env=pamwrap.env())
    try:
        _change_dialogue(child, svc_user.password, new)
        child.expect(r"\$ ")
        child.sendline(f"echo {MARK}; KRB5_CONFIG={user_krb5['KRB5_CONFIG']} klist; exit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    transcript = child.before or ""
    assert MARK in transcript, transcript + ticketd.log()
    _assert_changed(kadmind, svc_user, new, transcript)


def test_ssh_password_mode_refuses_an_expired_password_with_a_message(sshd_factory, primary_stacks, kadmind,
                                                                       ticketd, svc_user):
    kadmind.modify_principal(svc_user.principal, "+needchange")
    server = sshd_factory(_profile(primary_stacks, ticketd.socket), mode=PASSWORD)
    res = server.login(svc_user.name, svc_user.password, f"echo {MARK}")
    assert res.returncode != 0, res.stdout + res.stderr
    assert MARK not in res.stdout
    # sshd's own words (session.c do_pwchange) when acct_mgmt said PAM_NEW_AUTHTOK_REQD without a tty.
    assert "Your password has expired" in res.stderr, res.stderr + server.log()[-2000:]
    assert "Password change required but no TTY available" in res.stderr, res.stderr
    assert "password expired (the password itself is right)" in ticketd.log()


@pytest.mark.parametrize("mode", [PASSWORD, KBDINT])
def test_ssh_wrong_password_for_an_expired_principal_is_refused(sshd_factory, primary_stacks, kadmind,
                                                                ticketd, svc_user, mode):
    kadmind.modify_principal(svc_user.principal, "+needchange")
    server = sshd_factory(_profile(primary_stacks, ticketd.socket), mode=mode)
    res = server.login(svc_user.name, "wrong-" + svc_user.password, f"echo {MARK}")
    assert res.returncode != 0 and MARK not in res.stdout, res.stdout + res.stderr
    assert "Permission denied" in res.stderr, res.stderr


def test_rogue_kdc_with_an_expired_password_cannot_log_in(sshd_factory, primary_stacks, realm, rogue_realm,
                                                          svc_user):
    """An impostor KDC that says "expired" for the attacker's password: the change dialogue runs
    (its kadmin/changepw ticket cannot be validated), but the TGT of the new password is, and
    fails: the login is refused and nothing lands in the user's keyring."""
    from tests.kdc.ticketd import TEST_CONFIG, TicketD, persistent_caches, public_tmpdir

    pexpect = _pexpect()
    daemon = None
    try:
        rogue_realm.start_kadmind()
        attacker = "chosen-by-the-attacker-2"
        rogue_realm.add_principal(svc_user.name, attacker)
        rogue_realm.modify_principal(svc_user.name, "+needchange")
        daemon = TicketD(public_tmpdir("pkd-rogue-exp-"), rogue_realm.env, **TEST_CONFIG,
                         validate_keytab=str(realm.keytab_path))
        daemon.start()
        server = sshd_factory(_profile(primary_stacks, daemon.socket), mode=KBDINT)
        child = server.pty_client(pexpect, svc_user.name, f"echo {MARK}", prompts=6)
        try:
            _change_dialogue(child, attacker, "N3w-" + secrets.token_urlsafe(12))
            # Refused: sshd asks again (keyboard-interactive allows more rounds) or hangs up.
            seen = child.expect(["Password: ", pexpect.EOF])
            transcript = (child.before or "") + (child.after if isinstance(child.after, str) else "")
        finally:
            child.close(force=True)
        assert seen == 0 or child.exitstatus != 0, transcript
        assert MARK not in transcript, transcript
        log = daemon.log()
        assert "TGT validation failed (validate=require), login refused" in log, log
        assert persistent_caches(svc_user.uid) == {}
    finally:
        if daemon is not None:
            daemon.stop()
            shutil.rmtree(daemon.dir, ignore_errors=True)
