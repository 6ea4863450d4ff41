"""The hook's ticket client through real libpam: pamtester under pam_wrapper, the real pam_python.so,
a real keyinit-ticketd and a real MIT KDC.

PAM return codes are read from pamtester's own messages (pam_strerror texts).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import time

from tests.conftest import delete_user, make_user
from tests.fixtures_pam import STRERROR
from tests.kdc import ticketd as td
from tests.kdc.ticketd import klist_ok, persistent_caches

svc_user, ticketd, user_krb5 = td.svc_user, td.ticketd, td.user_krb5



def _service(pamwrap, name: str, sock: str, krb5_conf: str, auth_opts: str = "", probe_tail: str = "") -> str:
    """auth: the hook alone (it prompts); session: keyring + tickets, then print what the user holds
    (and run ``probe_tail``, shell lines, in the open session)."""
    # PAM splits module arguments on blanks: the probe is a script file (pam_exec sets PAM_USER/PAM_TYPE).
    probe = pamwrap.dir / f"{name}-probe.sh"
    probe.write_text("#!/bin/sh\n[ \"$PAM_TYPE\" = open_session ] || exit 0\nkeyctl rdescribe @s\n"
                     'setpriv --reuid="$(id -u "$PAM_USER")" --regid="$(id -g "$PAM_USER")" --clear-groups '
                     f"env KRB5_CONFIG={krb5_conf} klist 2>&1 | head -3\n{probe_tail}")
    probe.chmod(0o755)
    return pamwrap.service(name, [
        pamwrap.hook_line("auth", "required", f"{auth_opts} socket={sock}".strip()),
        "account required pam_permit.so",
        pamwrap.hook_line("session", "required", f"force revoke tickets socket={sock}"),
        f"session optional pam_exec.so stdout {probe}",
    ])


def _pamtester(pamwrap, service: str, user: str, password: str | None, *ops: str, timeout: float = 60):
    read_fd, write_fd = os.pipe()
    os.write(write_fd, (password or "") .encode() + b"\n")
    os.close(write_fd)
    try:
        t0 = time.monotonic()
        res = pamwrap.run(service, user, *ops, stdin=read_fd, timeout=timeout)
        return res, time.monotonic() - t0
    finally:
        os.close(read_fd)


def test_pam_login_gets_user_owned_ticket_cleared_at_logout(pamwrap, ticketd, svc_user, user_krb5):
    service = _service(pamwrap, "pkd-login", ticketd.socket, user_krb5["KRB5_CONFIG"])
    res, _ = _pamtester(pamwrap, service, svc_user.name, svc_user.password,
                        "authenticate", "open_session", "close_session")
    assert res.returncode == 0, res.stdout + res.stderr + ticketd.log()
    # Inside the session: a _ses keyring owned by the user, and klist (as the user) finds the TGT.
    assert f"keyring;{svc_user.uid};{svc_user.gid};3f030000;_ses" in res.stdout, res.stdout
    assert f"Ticket cache: KEYRING:persistent:{svc_user.uid}:" in res.stdout, res.stdout
    assert f"Default principal: {svc_user.principal}" in res.stdout
    log = ticketd.log()
    assert f"auth {svc_user.principal} (uid {svc_user.uid}): TGT in" in log
    assert "1 open" in log and "cleared 1 cache(s)" in log
    assert persistent_caches(svc_user.uid) == {}
    assert svc_user.password not in log and svc_user.password not in res.stderr


def test_pam_auth_failures_map_to_pam_codes(pamwrap, ticketd, svc_user, realm):
    service = _service(pamwrap, "pkd-auth", ticketd.socket, "/dev/null")
    res, _ = _pamtester(pamwrap, service, svc_user.name, "wrong-" + svc_user.password, "authenticate")
    assert res.returncode != 0 and STRERROR["auth_err"] in res.stderr, res.stderr
    stranger = make_user("pkd")  # a local user without a principal
    try:
        res, _ = _pamtester(pamwrap, service, stranger.name, "anything-1", "authenticate")
        assert res.returncode != 0 and STRERROR["user_unknown"] in res.stderr, res.stderr
    finally:
        delete_user(stranger)
    realm.stop_kdc()
    try:
        res, elapsed = _pamtester(pamwrap, service, svc_user.name, svc_user.password, "authenticate")
    finally:
        realm.start_kdc()
    assert res.returncode != 0 and STRERROR["authinfo_unavail"] in res.stderr, res.stderr
    assert elapsed < 4, f"KDC-down login took {elapsed:.1f}s"  # kdc bound 2 s + pamtester/python start
    assert persistent_caches(svc_user.uid) == {}


def test_service_absent_login_still_gets_session_keyring(pamwrap, svc_user, tmp_path):
    absent = str(tmp_path / "no-such" / "ticketd.sock")
    service = _service(pamwrap, "pkd-absent", absent, "/dev/null")
    res, _ = _pamtester(pamwrap, service, svc_user.name, None, "open_session", "close_session")
    assert res.returncode == 0, res.stderr
    assert f"keyring;{svc_user.uid};{svc_user.gid};3f030000;_ses" in res.stdout, res.stdout
    res, _ = _pamtester(pamwrap, service, svc_user.name, svc_user.password, "authenticate")
    assert STRERROR["authinfo_unavail"] in res.stderr, res.stderr


def test_service_hung_costs_at_most_about_a_second(pamwrap, svc_user):
    """A service that accepts but never answers: open_session gives up after its 1 s bound."""
    directory = td.public_tmpdir("pkd-hung-")
    path = str(directory / "ticketd.sock")
    hung = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    hung.bind(path)
    hung.listen(16)
    try:
        service = _service(pamwrap, "pkd-hung", path, "/dev/null")
        res, elapsed = _pamtester(pamwrap, service, svc_user.name, None, "open_session")
        assert res.returncode == 0, res.stderr
        assert f"keyring;{svc_user.uid};{svc_user.gid};3f030000;_ses" in res.stdout
        assert elapsed < 3, f"open_session against a hung service took {elapsed:.1f}s"
    finally:
        hung.close()
        shutil.rmtree(directory, ignore_errors=True)


def test_use_first_pass_takes_the_earlier_modules_password(pamwrap, ticketd, svc_user, user_krb5):
    """pam_unix verifies the local password; the hook hands the same PAM_AUTHTOK to the service."""
    from pam_keyinit_py.lab.users import set_local_password

    set_local_password(svc_user.name, svc_user.password)
    sock = ticketd.socket
    service = pamwrap.service("pkd-first", [
        "auth required pam_unix.so",
        pamwrap.hook_line("auth", "required", f"use_first_pass socket={sock}"),
        "account required pam_permit.so",
        pamwrap.hook_line("session", "required", f"force revoke tickets socket={sock}"),
    ])
    res, _ = _pamtester(pamwrap, service, svc_user.name, svc_user.password, "authenticate", "open_session")
    assert res.returncode == 0, res.stderr + ticketd.log()
    # One prompt, pam_unix's (misc_conv writes it to the terminal streams); the hook did not ask again.
    assert (res.stdout + res.stderr).count("Password: ") == 1, res.stdout + res.stderr
    log = ticketd.log()
    assert f"auth {svc_user.principal} (uid {svc_user.uid}): TGT in" in log
    # pamtester exits without close_session: the service reaps the session and clears its ticket.
    ticketd.wait_for(lambda: "exited without close_session" in ticketd.log(), 5, "the session reaped")
    ticketd.wait_for(lambda: not klist_ok(svc_user.user, user_krb5), 5, "the ticket cleared")


def test_a_session_whose_keyring_cannot_be_made_still_counts_for_the_ticket(pamwrap, ticketd, svc_user):
    """The user's key quota is full: pam_keyinit's part fails (EDQUOT from JOIN_SESSION_KEYRING:
    PAM_SESSION_ERR) and, the line being optional, the login goes on.  The ticket service must count
    that session all the same: uncounted, the user's TGT is cleared at the logout of another session
    while this one runs, and nothing renews it for this one."""
    from pam_keyinit_py.keyutils import proc
    from pam_keyinit_py.lab.users import settle

    sock = ticketd.socket
    services = {control: pamwrap.service(f"pkd-quota-{control}", [
        pamwrap.hook_line("session", control, f"force revoke tickets socket={sock}"),
        "session required pam_permit.so",
    ]) for control in ("required", "optional")}
    user = svc_user.user
    # Fill the user's key quota with keys in their user keyring: big payloads, then one-byte ones,
    # then one-letter names, until less is left than a "_ses" keyring costs (5 bytes).
    fill = ("i=0; while head -c 1000 /dev/zero | keyctl padd user pkd-big-$i @u >/dev/null 2>&1; "
            "do i=$((i+1)); done; j=0; while keyctl add user pkd-small-$j x @u >/dev/null 2>&1; "
            "do j=$((j+1)); done; for c in a b c d e f g h i j k l m n o p q r s t u v w x y z; "
            "do keyctl add user $c x @u >/dev/null 2>&1; done; echo $i $j")
    settle(svc_user.uid)
    before = proc.key_user(svc_user.uid)
    try:
        filled = user.run(["sh", "-c", fill])
        assert filled.returncode == 0 and int(filled.stdout.split()[0]) > 0, filled
        failed, _ = _pamtester(pamwrap, services["required"], svc_user.name, None, "open_session")
        res, _ = _pamtester(pamwrap, services["optional"], svc_user.name, None, "open_session")
    finally:
        user.run(["keyctl", "clear", "@u"])
    # The keyring step does fail (a required line fails the open with PAM_SESSION_ERR) ...
    assert failed.returncode != 0 and "Cannot make/remove an entry" in failed.stderr, failed.stderr
    # ... and with an optional line the session opens, and the service counts it (its opener's pid).
    assert res.returncode == 0, res.stderr
    pid = re.search(r"^PWRAP_\w+\[.*? \((\d+)\)\]", res.stderr, re.M)
    assert pid is not None, res.stderr
    assert f"for {svc_user.name} (uid {svc_user.uid}, pid {pid[1]})" in ticketd.log(), ticketd.log()
    baseline = before.qnbytes if before is not None else 0
    ticketd.wait_for(lambda: (proc.key_user(svc_user.uid) or proc.KeyUser(0, 0, 0, 0, 0, 1, 0, 1)).qnbytes
                     < baseline + 1000, 10, "the kernel to release the filled quota")
