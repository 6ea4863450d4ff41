"""Kerberos as the login's authenticator, over a real ssh login, through the Primary profile.

The sshd's PAM service is what ``pam-auth-update --enable keyinit-krb5`` writes (Debian's real
pam-auth-update, run over private copies: lab/pamconfigs.py): the hook first in common-auth,
pam_unix behind it.  The test users have a locked local password (shadow ``!``), so only the
Kerberos password can let them in, and only when the service validated the TGT against the
host keytab (the realm's, krb5.conf's default_keytab_name).  A second KDC for the same realm
name (an impostor holding a password the attacker chose) must not get the attacker in.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from pam_keyinit_py.lab import pamconfigs
from pam_keyinit_py.lab.sshd import KBDINT, PASSWORD
from tests.conftest import require
from tests.kdc import ticketd as td
from tests.kdc.ticketd import TEST_CONFIG, TicketD, persistent_caches, public_tmpdir

svc_user, ticketd, user_krb5 = td.svc_user, td.ticketd, td.user_krb5


@pytest.fixture(scope="module")
def primary_stacks() -> dict[str, list[str]]:
    """The common-* stacks of ``pam-auth-update --enable keyinit-krb5`` (host untouched)."""
    missing = pamconfigs.available()
    require(missing is None, missing or "")
    return pamconfigs.render_stacks(("keyinit-krb5",))


def _stack(stacks: dict[str, list[str]], sock: str):
    return lambda pamwrap: pamconfigs.service_lines(stacks, pamwrap, f"socket={sock}")


def _locked(name: str) -> bool:
    """passwd -S: the local password is locked (L) — pam_unix cannot let this user in."""
    out = subprocess.run(["passwd", "-S", name], capture_output=True, text=True, check=True).stdout
    return out.split()[1] == "L"


def test_profile_puts_the_hook_first_and_pam_unix_behind_it(primary_stacks):
    auth = primary_stacks["auth"]
    assert "pam_python.so pam_keyinit_py.py" in auth[0] and auth[0].startswith("auth [success=2 ")
    assert "pam_unix.so" in auth[1] and "try_first_pass" in auth[1]
    assert any("pam_python.so pam_keyinit_py.py" in line for line in primary_stacks["account"])
    assert "pam_python.so pam_keyinit_py.py" in primary_stacks["password"][0]
    assert any("pam_python.so pam_keyinit_py.py force revoke tickets" in line
               for line in primary_stacks["session"])


@pytest.mark.parametrize("mode", [PASSWORD, KBDINT])
def test_kerberos_only_user_logs_in_and_wrong_password_is_refused(sshd_factory, primary_stacks, ticketd,
                                                                 svc_user, user_krb5, mode):
    assert _locked(svc_user.name)
    server = sshd_factory(_stack(primary_stacks, ticketd.socket), mode=mode)
    res = server.login(svc_user.name, svc_user.password, f"KRB5_CONFIG={user_krb5['KRB5_CONFIG']} klist")
    assert res.returncode == 0, f"{res.stderr}\n--- sshd ---\n{server.log()[-3000:]}\n{ticketd.log()}"
    assert f"Ticket cache: KEYRING:persistent:{svc_user.uid}:" in res.stdout, res.stdout
    assert f"Default principal: {svc_user.principal}" in res.stdout
    assert "(validated with host/" in ticketd.log()
    ticketd.wait_for(lambda: persistent_caches(svc_user.uid) == {}, 10, "the ticket cleared at logout")

    bad = server.login(svc_user.name, svc_user.password + "x", "true")
    assert bad.returncode == 255 and "Permission denied" in bad.stderr, bad.stderr
    assert "wrong password" in ticketd.log()
    assert persistent_caches(svc_user.uid) == {}
    assert svc_user.password not in ticketd.log() and svc_user.password not in server.log()


def test_rogue_kdc_cannot_log_the_attacker_in(sshd_factory, primary_stacks, realm, rogue_realm, svc_user):
    """The host's krb5.conf points at the impostor; the host keytab is still the real realm's."""
    attacker_pw = "chosen-by-the-attacker-1"
    rogue_realm.add_principal(svc_user.name, attacker_pw)
    refused, allowed = [], []
    for validate, outcome in (("require", refused), ("never", allowed)):
        daemon = TicketD(public_tmpdir("pkd-rogue-"), rogue_realm.env, **TEST_CONFIG, validate=validate,
                         validate_keytab=str(realm.keytab_path))
        daemon.start()
        try:
            server = sshd_factory(_stack(primary_stacks, daemon.socket), mode=PASSWORD)
            outcome.append((server.login(svc_user.name, attacker_pw, "true"), daemon.log()))
        finally:
            daemon.stop()
            shutil.rmtree(daemon.dir, ignore_errors=True)
    res, log = refused[0]
    assert res.returncode == 255 and "Permission denied" in res.stderr, res.stderr
    assert "TGT validation failed (validate=require), login refused" in log, log
    assert f"from {realm.keytab_path}" in log and "host/" in log
    # The same login with validation off gets in: the refusal above is the validation's doing.
    res, log = allowed[0]
    assert res.returncode == 0, f"{res.stderr}\n{log}"
