"""The pam_python hook against pam_keyinit.so, both in real libpam driven by pamtester under pam_wrapper.

Every case runs the same PAM stack twice, once with the hook and once with
pam_keyinit.so, and compares what a program in the session sees
(pam_exec runs ``keyctl rdescribe @s`` / ``keyctl show @s`` after the module
at each open and close) plus pamtester's verdict.  pam_wrapper's private
service directory keeps /etc/pam.d untouched.
"""

from __future__ import annotations

import re
import subprocess
import uuid
from pathlib import Path

import pytest

from pam_keyinit_py.lab.pamwrap import SETCRED_DELETE, SETCRED_ESTABLISH, PamWrapper, syslog_lines

SHOW = """#!/bin/sh
echo "== $PAM_TYPE"
keyctl rdescribe @s 2>&1
keyctl show @s 2>&1
exit 0
"""
C_MODULE = "pam_keyinit.so"
HOOK = "hook"


def _show_script(pamwrap: PamWrapper) -> Path:
    path = pamwrap.dir / "show.sh"
    if not path.exists():
        path.write_text(SHOW)
        path.chmod(0o755)
    return path


def module_line(pamwrap: PamWrapper, which: str, kind: str, options: str, control: str = "required") -> str:
    """A stack line for the hook (through pam_python) or for the C pam_keyinit.so."""
    if which == HOOK:
        return pamwrap.hook_line(kind, control, options)
    return f"{kind} {control} {C_MODULE} {options}".rstrip()


def run(pamwrap: PamWrapper, lines: list[str], user: str, *ops: str,
        wrap: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    """Write a one-off service with ``lines`` + the show step and run pamtester on it."""
    name = f"pkp-{uuid.uuid4().hex[:10]}"
    pamwrap.service(name, [*lines, f"session optional pam_exec.so stdout {_show_script(pamwrap)}"])
    if wrap:  # run pamtester inside e.g. `keyctl session NAME` to choose its starting session keyring
        env = pamwrap.env()
        argv = [*wrap, "pamtester", "-v", name, user, *ops]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)
    return pamwrap.run(name, user, *ops)


def blocks(out: str) -> list[tuple[str, list[str]]]:
    """The show step's output, one (PAM_TYPE, lines) per call, ids replaced by N."""
    result: list[tuple[str, list[str]]] = []
    for line in out.splitlines():
        if line.startswith("== "):
            result.append((line[3:].strip(), []))
        elif result and not line.startswith("pamtester:"):
            result[-1][1].append(re.sub(r"^\s*\d+ ", "N ", line))
    return result


def ids(out: str) -> list[int]:
    """Session keyring serials seen by the show step (first line of each `keyctl show @s`)."""
    return [int(m) for m in re.findall(r"^Keyring\n\s*(\d+) ", out, re.M)]


def expected_tree(uid: int, gid: int, ugid: int) -> list[str]:
    return [
        f"keyring;{uid};{gid};3f030000;_ses",
        "Keyring",
        f"N --alswrv  {uid:5d} {gid:5d}  keyring: _ses",
        f"N ---lswrv  {uid:5d} {ugid:5d}   \\_ keyring: _uid.{uid}",
    ]


def state_as_user(user, serial: int) -> str:
    """What the user sees of ``serial`` after the host exited: its description or the kernel's error."""
    res = user.run(["keyctl", "rdescribe", str(serial)])
    return (res.stdout + res.stderr).strip()


@pytest.fixture(autouse=True)
def _hosts(pamwrap: PamWrapper) -> None:
    """Every test here needs root, pamtester, pam_wrapper and pam_python (skip or CI-fail otherwise)."""


@pytest.mark.parametrize("which", [HOOK, C_MODULE])
def test_session_keyring_parity_and_revoked_after_close(pamwrap, pam_user, which) -> None:
    res = run(pamwrap, [module_line(pamwrap, which, "session", "force revoke")], pam_user.name,
              "open_session", "close_session")
    assert res.returncode == 0, res.stderr
    got = blocks(res.stdout)
    assert [kind for kind, _ in got] == ["open_session", "close_session"]
    opened = got[0][1]
    # rdescribe exactly as pam_keyinit makes it; the user keyring hangs under it.
    assert opened[0] == f"keyring;{pam_user.uid};{pam_user.gid};3f030000;_ses"
    assert opened[1] == "Keyring"
    assert re.fullmatch(rf"N --alswrv\s+{pam_user.uid}\s+{pam_user.gid}  keyring: _ses", opened[2])
    assert re.fullmatch(rf"N ---lswrv\s+{pam_user.uid}\s+\d+   \\_ keyring: _uid\.{pam_user.uid}", opened[3])
    # (deeper lines, if any, are keys other tests left in _uid.<uid>: the kernel keeps it per uid)
    # revoke: the program after the module at close sees the keyring revoked
    assert "Key has been revoked" in "\n".join(got[1][1])
    serial = ids(res.stdout)[0]
    assert "Key has been revoked" in state_as_user(pam_user, serial)


def test_hook_tree_identical_to_pam_keyinit(pamwrap, pam_user) -> None:
    outs = {}
    for which in (HOOK, C_MODULE):
        res = run(pamwrap, [module_line(pamwrap, which, "session", "force")], pam_user.name,
                  "open_session", "close_session")
        assert res.returncode == 0, res.stderr
        outs[which] = blocks(res.stdout)
    assert outs[HOOK] == outs[C_MODULE]
    assert outs[HOOK][0][1][0] == f"keyring;{pam_user.uid};{pam_user.gid};3f030000;_ses"


@pytest.mark.parametrize("which", [HOOK, C_MODULE])
def test_without_revoke_the_keyring_is_not_revoked(pamwrap, pam_user, which) -> None:
    res = run(pamwrap, [module_line(pamwrap, which, "session", "force")], pam_user.name,
              "open_session", "close_session")
    assert res.returncode == 0, res.stderr
    got = blocks(res.stdout)
    assert got[1][1][0] == f"keyring;{pam_user.uid};{pam_user.gid};3f030000;_ses"
    assert "revoked" not in state_as_user(pam_user, ids(res.stdout)[0])


@pytest.mark.parametrize("which", [HOOK, C_MODULE])
def test_no_force_leaves_an_existing_session_keyring(pamwrap, pam_user, fresh_session_keyring, which) -> None:
    # pamtester inherits this test's anonymous session keyring, so @s != @us: without force, nothing.
    res = run(pamwrap, [module_line(pamwrap, which, "session", "revoke")], pam_user.name,
              "open_session", "close_session")
    assert res.returncode == 0, res.stderr
    got = blocks(res.stdout)
    assert got[0][1][0] == "keyring;0;0;3f030000;_ses"  # still root's, made by the fixture
    assert ids(res.stdout)[0] == fresh_session_keyring
    assert "revoked" not in "\n".join(got[1][1])

    # with force, a new keyring for the user replaces it
    res = run(pamwrap, [module_line(pamwrap, which, "session", "force revoke")], pam_user.name,
              "open_session", "close_session")
    assert res.returncode == 0, res.stderr
    assert blocks(res.stdout)[0][1][0] == f"keyring;{pam_user.uid};{pam_user.gid};3f030000;_ses"
    assert ids(res.stdout)[0] != fresh_session_keyring


@pytest.mark.parametrize("which", [HOOK, C_MODULE])
def test_no_force_acts_when_session_is_the_user_session_keyring(pamwrap, which) -> None:
    # For root, `keyctl session _uid_ses.0` makes @s == @us: then no-force pam_keyinit acts.
    res = run(pamwrap, [module_line(pamwrap, which, "session", "revoke")], "root",
              "open_session", "close_session", wrap=["keyctl", "session", "_uid_ses.0"])
    assert res.returncode == 0, res.stderr
    got = blocks(res.stdout)
    assert got[0][1][0] == "keyring;0;0;3f030000;_ses"
    assert got[0][1][3].endswith("\\_ keyring: _uid.0")
    assert "Key has been revoked" in "\n".join(got[1][1])


@pytest.mark.parametrize("which", [HOOK, C_MODULE])
def test_nested_open_open_close_close(pamwrap, pam_user, which) -> None:
    res = run(pamwrap, [module_line(pamwrap, which, "session", "force revoke")], pam_user.name,
              "open_session", "open_session", "close_session", "close_session")
    assert res.returncode == 0, res.stderr
    got = blocks(res.stdout)
    assert [k for k, _ in got] == ["open_session", "open_session", "close_session", "close_session"]
    first, second = ids(res.stdout)[:2]
    assert first == second  # the second open keeps the keyring of the first
    want = f"keyring;{pam_user.uid};{pam_user.gid};3f030000;_ses"
    assert got[2][1][0] == want  # still alive after the inner close
    assert "Key has been revoked" in "\n".join(got[3][1])  # revoked at the outer close


@pytest.mark.parametrize("which", [HOOK, C_MODULE])
def test_setcred_before_open_session_creates_the_keyring(pamwrap, pam_user, which) -> None:
    # Only the auth line carries the module: the keyring seen at open_session came from setcred.
    res = run(pamwrap, [module_line(pamwrap, which, "auth", "force revoke", control="optional")],
              pam_user.name, SETCRED_ESTABLISH, "open_session", SETCRED_DELETE)
    assert res.returncode == 0, res.stderr
    got = blocks(res.stdout)
    assert got[0][1][0] == f"keyring;{pam_user.uid};{pam_user.gid};3f030000;_ses"
    # setcred(DELETE_CRED) with revoke revokes it
    assert "Key has been revoked" in state_as_user(pam_user, ids(res.stdout)[0])


@pytest.mark.parametrize("which", [HOOK, C_MODULE])
def test_setcred_then_open_session_makes_one_keyring(pamwrap, pam_user, which) -> None:
    lines = [module_line(pamwrap, which, "auth", "force", control="optional"),
             module_line(pamwrap, which, "session", "force revoke")]
    res = run(pamwrap, lines, pam_user.name, SETCRED_ESTABLISH, "open_session", "close_session")
    assert res.returncode == 0, res.stderr
    got = blocks(res.stdout)
    assert got[0][1][0] == f"keyring;{pam_user.uid};{pam_user.gid};3f030000;_ses"
    assert "Key has been revoked" in "\n".join(got[1][1])


def test_link_persistent_shows_the_persistent_keyring(pamwrap, pam_user) -> None:

    res = run(pamwrap, [pamwrap.hook_line("session", "required", "force revoke link_persistent")],
              pam_user.name, "open_session", "close_session")
    assert res.returncode == 0, res.stderr
    opened = blocks(res.stdout)[0][1]
    assert opened[0] == f"keyring;{pam_user.uid};{pam_user.gid};3f030000;_ses"
    assert any(line.endswith(f"\\_ keyring: _persistent.{pam_user.uid}") for line in opened), opened
    assert any(line.endswith(f"\\_ keyring: _uid.{pam_user.uid}") for line in opened), opened


def test_link_persistent_when_the_auth_line_made_the_keyring(pamwrap, pam_user) -> None:
    """The deployed shape (etc/pam-configs/keyinit): the hook on the auth line carries only ticket
    options.  In a host with no session keyring of its own (sshd started from a shell or sysvinit),
    @s == @us, so the auth line's no-force setcred(ESTABLISH) makes the keyring first; the session
    line's open_session must still link the persistent keyring."""
    from pam_keyinit_py import keyutils

    uid, gid = pam_user.uid, pam_user.gid

    def at_user_session_keyring() -> None:
        # What a process without a session keyring sees once its real uid is the user's:
        # @s is the user's own user-session keyring.  Joined by name with the user's euid
        # (root may not search it), then back to root through the saved uid.
        with keyutils.thread_credentials(uid, gid, effective=True):
            keyutils.get_keyring_id(keyutils.KEY_SPEC_USER_SESSION_KEYRING, True)
            keyutils.join_session_keyring(f"_uid_ses.{uid}")

    name = f"pkp-{uuid.uuid4().hex[:10]}"
    pamwrap.service(name, [pamwrap.hook_line("auth", "optional", "use_first_pass"),
                           pamwrap.hook_line("session", "required", "force revoke link_persistent"),
                           f"session optional pam_exec.so stdout {_show_script(pamwrap)}"])
    res = subprocess.run(["pamtester", "-v", name, pam_user.name, SETCRED_ESTABLISH, "open_session",
                          "close_session"], env=pamwrap.env(), capture_output=True, text=True, timeout=60,
                         stdin=subprocess.DEVNULL, preexec_fn=at_user_session_keyring)
    assert res.returncode == 0, res.stderr
    opened = blocks(res.stdout)[0][1]
    assert opened[0] == f"keyring;{uid};{gid};3f030000;_ses"
    assert any(line.endswith(f"\\_ keyring: _persistent.{uid}") for line in opened), opened
    assert "Key has been revoked" in "\n".join(blocks(res.stdout)[1][1])


@pytest.mark.parametrize("which", [HOOK, C_MODULE])
def test_unknown_user(pamwrap, which) -> None:
    res = run(pamwrap, [module_line(pamwrap, which, "session", "force revoke")], "pkp-no-such-user",
              "open_session")
    assert res.returncode != 0
    assert "User not known to the underlying authentication module" in res.stderr
    assert "unexpected" not in res.stderr


def test_unknown_options_are_logged_once_and_ignored(pamwrap, pam_user) -> None:
    res = run(pamwrap, [pamwrap.hook_line("session", "required", "force forc revoke=yes minimum_uid=x")],
              pam_user.name, "open_session", "close_session")
    assert res.returncode == 0, res.stderr
    got = blocks(res.stdout)
    assert got[0][1][0] == f"keyring;{pam_user.uid};{pam_user.gid};3f030000;_ses"  # force applied
    assert "revoked" not in "\n".join(got[1][1])  # revoke=yes is not revoke
    logged = [m for m in syslog_lines(res.stderr) if "unknown or malformed" in m]
    want = "pam_keyinit_py: ignoring unknown or malformed option(s): forc revoke=yes minimum_uid=x"
    assert logged == [want]


CLEAR_USER = """
def pam_sm_open_session(pamh, flags, argv):
    pamh.user = None
    return pamh.PAM_SUCCESS
def pam_sm_close_session(pamh, flags, argv):
    return pamh.PAM_SUCCESS
"""


def test_missing_pam_user(pamwrap) -> None:
    # A module before ours unsets PAM_USER; pam_get_user then asks the conversation, which has no
    # terminal: both modules must fail the open with pam_get_user's own code, and make no keyring.
    clear = pamwrap.dir / "clear_user.py"
    clear.write_text(CLEAR_USER)
    verdicts = {}
    for which in (HOOK, C_MODULE):
        lines = [f"session required /lib/security/pam_python.so {clear}",
                 module_line(pamwrap, which, "session", "force revoke")]
        res = run(pamwrap, lines, "root", "open_session")
        assert res.returncode != 0
        assert "successfully opened" not in res.stdout + res.stderr
        assert "unexpected" not in res.stderr
        verdicts[which] = [line for line in res.stderr.splitlines() if line.startswith("pamtester: ")][-1]
    assert verdicts[HOOK] == verdicts[C_MODULE], verdicts
