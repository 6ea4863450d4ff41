"""Other ways into an account: ``su -`` and ``sudo -i`` with the hook in their PAM stacks, and a cron-like
process of the user outside any session.

The real setuid binaries run as root under pam_wrapper, which points their libpam at a private
service directory (``su-l`` and ``sudo-i``: the services util-linux su and sudo use for a login
shell); a real keyinit-ticketd and MIT KDC hold the user's TGT.  The user logged in once (the
service's ``auth`` plus a session held by another process), as on a host where the user has an
ssh session and then switches with su or sudo.

The cron-like process is what cron or a ``systemd --user`` unit gives: the uid, a clean
environment (only KRB5_CONFIG, as /etc/krb5.conf would be on a real host), and a fresh session
keyring of its own (``keyctl session -``), not the login's.  It finds the TGT through the
default ccache, KEYRING:persistent:<uid>, while a session is open, and not after the last logout.
"""

from __future__ import annotations

import subprocess

import pytest

from tests.kdc import ticketd as td
from tests.kdc.ticketd import SessionHolder, persistent_caches

svc_user, ticketd, user_krb5 = td.svc_user, td.ticketd, td.user_krb5


@pytest.fixture
def services(pamwrap, ticketd):  # noqa: ANN001
    stack = ["auth sufficient pam_rootok.so", "account required pam_permit.so",
             pamwrap.hook_line("session", "required", f"force revoke tickets socket={ticketd.socket}")]
    for name in ("su-l", "sudo-i"):
        pamwrap.service(name, stack)
    yield pamwrap
    for name in ("su-l", "sudo-i"):
        (pamwrap.services / name).unlink(missing_ok=True)


def _sessions(daemon) -> int:  # noqa: ANN001
    return daemon.request({"op": "status"})["service"]["sessions"]


def _logged_in(daemon, user) -> SessionHolder:  # noqa: ANN001
    reply = user.auth(daemon)
    assert reply["ok"], reply
    holder = SessionHolder(daemon, user.user)
    assert holder.opened["ok"], holder.opened
    return holder


def _check(user, krb5_conf: str) -> str:  # noqa: ANN001
    # The environment is rebuilt by su -/sudo -i: the realm's krb5.conf is named in the command.
    return f"keyctl rdescribe @s; KRB5_CONFIG={krb5_conf} klist -s && echo klist-ok"


@pytest.mark.parametrize("argv", [["su", "-", "{user}", "-c"], ["sudo", "-i", "-u", "{user}", "sh", "-c"]],
                         ids=["su -", "sudo -i"])
def test_su_and_sudo_give_a_session_keyring_and_the_ticket(services, ticketd, svc_user, user_krb5, argv):
    holder = _logged_in(ticketd, svc_user)
    try:
        command = [a.format(user=svc_user.name) for a in argv] + [_check(svc_user, user_krb5["KRB5_CONFIG"])]
        res = subprocess.run(command, env=services.env(), capture_output=True, text=True, timeout=60,
                             stdin=subprocess.DEVNULL, check=False)
        assert res.returncode == 0, res.stderr
        lines = res.stdout.splitlines()
        # A session keyring of the user's own, as pam_keyinit gives, and the TGT through klist.
        assert lines[0] == f"keyring;{svc_user.uid};{svc_user.gid};3f030000;_ses", res.stdout
        assert lines[1] == "klist-ok", res.stdout + res.stderr
        # su/sudo registered their session and closed it; the login's ticket stays for its session.
        assert "2 open" in ticketd.log()
        ticketd.wait_for(lambda: _sessions(ticketd) == 1, 10, "the su/sudo session to close")
        assert persistent_caches(svc_user.uid)
    finally:
        holder.close()
    ticketd.wait_for(lambda: persistent_caches(svc_user.uid) == {}, 10, "the ticket cleared at logout")


def _cron_like(user, krb5_env: dict[str, str]) -> subprocess.CompletedProcess[str]:  # noqa: ANN001
    """A process of the uid outside any session: clean environment, a new session keyring of its own."""
    return user.user.run(["keyctl", "session", "-", "sh", "-c",
                          "keyctl rdescribe @s; klist -s && echo klist-ok"], env=krb5_env)


def test_a_cron_like_process_sees_the_ticket_only_while_a_session_is_open(ticketd, svc_user, user_krb5):
    holder = _logged_in(ticketd, svc_user)
    try:
        res = _cron_like(svc_user, user_krb5)
        assert res.returncode == 0, res.stderr
        ring = res.stdout.splitlines()[0]
        assert ring.startswith(f"keyring;{svc_user.uid};{svc_user.gid};"), res.stdout
        assert ring.endswith(";_ses"), res.stdout
        assert res.stdout.splitlines()[1] == "klist-ok", res.stdout
    finally:
        holder.close()
    ticketd.wait_for(lambda: persistent_caches(svc_user.uid) == {}, 10, "the ticket cleared at logout")
    res = _cron_like(svc_user, user_krb5)
    assert "klist-ok" not in res.stdout and res.returncode != 0, res.stdout
