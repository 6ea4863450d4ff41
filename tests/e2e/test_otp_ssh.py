"""OTP over real ssh: a private sshd reading the ``keyinit-krb5`` stacks (lab/pamconfigs.py), a
real keyinit-ticketd, an MIT KDC whose otp preauth asks lab/radius.py (tests/kdc/test_otp.py's
realm and users).

- Keyboard-interactive on a pty (pexpect): the hook's "Password: ", then the KDC's own question
  "Enter OTP Token Value: " relayed through sshd's conversation; the session's klist shows the
  TGT in KEYRING:persistent:<uid>.
- PasswordAuthentication: sshd cannot ask a second question (its conversation answers every
  echo-off prompt with the password); the hook never sends that answer, so the OTP server is not
  asked and the login is refused.
"""

from __future__ import annotations

from pam_keyinit_py.lab import pamconfigs
from pam_keyinit_py.lab.sshd import KBDINT, PASSWORD
from tests.e2e import test_sshd_krb5_login as krb5_login
from tests.e2e.test_expired_password import MARK, _pexpect, session_ran
from tests.kdc import test_otp as otp
from tests.kdc.ticketd import persistent_caches

otp_realm, otp_ticketd, otp_user, otp_krb5 = otp.otp_realm, otp.otp_ticketd, otp.otp_user, otp.otp_krb5
primary_stacks = krb5_login.primary_stacks


def _profile(stacks: dict[str, list[str]], sock: str):
    return lambda pamwrap: pamconfigs.service_lines(stacks, pamwrap, f"socket={sock}")


def test_ssh_keyboard_interactive_asks_the_token(sshd_factory, primary_stacks, otp_realm, otp_ticketd,
                                                 otp_user, otp_krb5):
    pexpect = _pexpect()
    server = sshd_factory(_profile(primary_stacks, otp_ticketd.socket), mode=KBDINT)
    # Two keyboard-interactive rounds (password, token), and one to spare.
    child = server.pty_client(pexpect, otp_user.name,
                              f"echo {MARK}; KRB5_CONFIG={otp_krb5['KRB5_CONFIG']} klist", prompts=3)
    try:
        child.expect("Password: ")
        child.sendline(otp_user.password)
        child.expect(f"{otp.OTP_PROMPT}: ")
        child.sendline(otp_user.token)
        child.expect(pexpect.EOF)
    finally:
        child.close()
    transcript = session_ran(child, server, otp_ticketd)
    assert f"Default principal: {otp_user.principal}" in transcript, transcript
    assert f"Ticket cache: KEYRING:persistent:{otp_user.uid}:" in transcript, transcript
    assert otp_realm.radius.requests(otp_user.name) == [True]
    log = otp_ticketd.log()
    assert otp_user.token not in log and otp_user.token not in server.log()


def test_ssh_password_mode_cannot_be_asked_and_is_refused(sshd_factory, primary_stacks, otp_realm,
                                                          otp_ticketd, otp_user):
    server = sshd_factory(_profile(primary_stacks, otp_ticketd.socket), mode=PASSWORD)
    res = server.login(otp_user.name, otp_user.password, f"echo {MARK}")
    assert res.returncode != 0 and MARK not in res.stdout, res.stdout + res.stderr
    assert "Permission denied" in res.stderr, res.stderr
    assert otp_realm.radius.requests(otp_user.name) == []  # the password never reached the OTP server
    assert "the KDC's preauth asks 1 question(s)" in otp_ticketd.log()
    assert persistent_caches(otp_user.uid) == {}
