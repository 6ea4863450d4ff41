"""Real sshd logins on a private loopback port: the session keyring a user's command sees.

A private /usr/sbin/sshd (own config, host key, port) reads its ``sshd`` PAM
service from pam_wrapper's private directory; the client logs in with a
password through sshpass in both of sshd's PAM layouts (PasswordAuthentication:
everything in the monitor; KbdInteractiveAuthentication: auth in a separate
child) and prints ``keyctl rdescribe @s`` and ``keyctl show @s``.
"""

from __future__ import annotations

import re
import time

import pytest

from pam_keyinit_py.lab.sshd import KBDINT, PASSWORD

COMMAND = "keyctl rdescribe @s; keyctl show @s"


def stack(which: str, options: str = "force revoke"):
    def build(pamwrap) -> list[str]:
        if which == "hook":
            session = pamwrap.hook_line("session", "required", options)
            auth_cred = pamwrap.hook_line("auth", "optional", options)
        else:
            session = f"session required pam_keyinit.so {options}"
            auth_cred = f"auth optional pam_keyinit.so {options}"
        return [
            "auth required pam_unix.so",
            auth_cred,  # sshd calls setcred(ESTABLISH) in the monitor and again in the session child
            "account required pam_unix.so",
            session,
            "session required pam_unix.so",
        ]
    return build


def wait_revoked(user, serial: int, timeout: float = 10) -> str:
    """sshd closes the PAM session after the client has gone: poll what the user sees of ``serial``."""
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        res = user.run(["keyctl", "rdescribe", str(serial)])
        seen = (res.stdout + res.stderr).strip()
        if "revoked" in seen:
            return seen
        time.sleep(0.1)
    return seen


@pytest.mark.parametrize("mode", [PASSWORD, KBDINT])
def test_ssh_login_gets_a_session_keyring_like_pam_keyinit(sshd_factory, pam_user, mode) -> None:
    outputs = {}
    for which in ("hook", "pam_keyinit.so"):
        server = sshd_factory(stack(which), mode=mode)
        res = server.login(pam_user.name, pam_user.password, COMMAND)
        assert res.returncode == 0, f"{res.stderr}\n--- sshd log ---\n{server.log()[-3000:]}"
        lines = res.stdout.splitlines()
        assert lines[0] == f"keyring;{pam_user.uid};{pam_user.gid};3f030000;_ses", res.stdout
        assert lines[1] == "Keyring"
        serial = int(lines[2].split()[0])
        mine = rf"\s*{serial} --alswrv\s+{pam_user.uid}\s+{pam_user.gid}  keyring: _ses"
        assert re.fullmatch(mine, lines[2])
        assert lines[3].endswith(f"\\_ keyring: _uid.{pam_user.uid}"), res.stdout
        # logout: sshd's close_session (and setcred DELETE) revoke the keyring with `revoke`
        assert "Key has been revoked" in wait_revoked(pam_user, serial), server.log()[-3000:]
        outputs[which] = [re.sub(r"^\s*\d+ ", "N ", line) for line in lines]
        server.close()
    assert outputs["hook"] == outputs["pam_keyinit.so"]


def test_ssh_login_link_persistent(sshd_factory, pam_user) -> None:
    from pam_keyinit_py import keyutils

    server = sshd_factory(stack("hook", "force revoke link_persistent"), mode=PASSWORD)
    res = server.login(pam_user.name, pam_user.password, COMMAND)
    assert res.returncode == 0, f"{res.stderr}\n{server.log()[-3000:]}"
    assert res.stdout.splitlines()[0] == f"keyring;{pam_user.uid};{pam_user.gid};3f030000;_ses"
    assert f"\\_ keyring: _persistent.{pam_user.uid}" in res.stdout
    persistent = keyutils.get_persistent(pam_user.uid, keyutils.KEY_SPEC_SESSION_KEYRING)
    keyutils.unlink(persistent, keyutils.KEY_SPEC_SESSION_KEYRING)
