"""A real ssh password login gets a user-owned TGT in KEYRING:persistent:<uid>, renewed while a session
stays open, kept while another is open, and gone after the last logout.

Private sshd on loopback (pam_wrapper service dir), the hook through pam_python, a real
keyinit-ticketd and a real MIT KDC.  The hook authenticates against the KDC itself (no local
password: the test users have none), in both of sshd's PAM layouts: PasswordAuthentication
(everything in the monitor) and KbdInteractiveAuthentication (auth in a child that is gone by
open_session, so the TGT waits in the service as a pending login).
"""

from __future__ import annotations

import time

import pytest

from pam_keyinit_py.lab.sshd import KBDINT, PASSWORD
from tests.kdc import ticketd as td
from tests.kdc.ticketd import klist_ok, persistent_caches

svc_user, ticketd, user_krb5 = td.svc_user, td.ticketd, td.user_krb5


def _stack(sock: str, auth_opts: str = ""):
    def build(pamwrap) -> list[str]:
        return [
            pamwrap.hook_line("auth", "required", f"try_first_pass {auth_opts}".rstrip() + f" socket={sock}"),
            "account required pam_permit.so",
            pamwrap.hook_line("session", "required", f"force revoke tickets socket={sock}"),
        ]
    return build


def _command(krb5_conf: str) -> str:
    return f"keyctl rdescribe @s; KRB5_CONFIG={krb5_conf} klist"


def _sessions(daemon) -> int:
    return daemon.request({"op": "status"})["service"]["sessions"]


@pytest.mark.parametrize("mode", [PASSWORD, KBDINT])
def test_ssh_login_gets_user_owned_tgt_cleared_at_logout(sshd_factory, ticketd, svc_user, user_krb5, mode):
    server = sshd_factory(_stack(ticketd.socket), mode=mode)
    res = server.login(svc_user.name, svc_user.password, _command(user_krb5["KRB5_CONFIG"]))
    assert res.returncode == 0, f"{res.stderr}\n--- sshd ---\n{server.log()[-3000:]}\n{ticketd.log()}"
    lines = res.stdout.splitlines()
    assert lines[0] == f"keyring;{svc_user.uid};{svc_user.gid};3f030000;_ses", res.stdout
    assert f"Ticket cache: KEYRING:persistent:{svc_user.uid}:" in res.stdout, res.stdout
    assert f"Default principal: {svc_user.principal}" in res.stdout
    assert f"krbtgt/{svc_user.principal.split('@')[1]}@" in res.stdout
    log = ticketd.log()
    assert f"auth {svc_user.principal} (uid {svc_user.uid}): TGT in" in log
    assert "1 open" in log
    # After logout sshd's monitor closes the session: the last close clears the ticket.
    ticketd.wait_for(lambda: "cleared 1 cache(s)" in ticketd.log(), 10, "the last close to clear")
    assert _sessions(ticketd) == 0
    assert persistent_caches(svc_user.uid) == {}
    assert svc_user.password not in ticketd.log() and svc_user.password not in server.log()


def test_ssh_ticket_renewed_while_open_and_kept_for_second_session(sshd_factory, ticketd, svc_user,
                                                                    user_krb5):
    server = sshd_factory(_stack(ticketd.socket), mode=KBDINT)
    # A long session in the background: its ticket must be renewed (20% of 30 s) while it lasts.
    long = server.spawn(svc_user.name, svc_user.password, "sleep 14")
    try:
        ticketd.wait_for(lambda: _sessions(ticketd) == 1, 15, "the long session to open")
        rows = ticketd.wait_for(
            lambda: [t for t in ticketd.request({"op": "tickets", "uid": svc_user.uid})["tickets"]
                     if t["renewed"] >= 1], 15, "a renewal during the session")
        assert rows[0]["origin"] == "login"
        # A second, short login while the first is open: at its logout the ticket stays.
        check = f"KRB5_CONFIG={user_krb5['KRB5_CONFIG']} klist -s"
        res = server.login(svc_user.name, svc_user.password, check)
        assert res.returncode == 0, res.stderr
        ticketd.wait_for(lambda: _sessions(ticketd) == 1, 10, "the short session to close")
        time.sleep(0.5)
        assert klist_ok(svc_user.user, user_krb5)
        assert persistent_caches(svc_user.uid)
    finally:
        long.wait(30)
    ticketd.wait_for(lambda: _sessions(ticketd) == 0, 10, "the long session to close")
    ticketd.wait_for(lambda: persistent_caches(svc_user.uid) == {}, 10, "the ticket cleared at last logout")
