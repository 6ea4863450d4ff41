"""The hook's ticket client and entry points through real libpam (pamtester under pam_wrapper, the
real pam_python.so), a real keyinit-ticketd and a real MIT KDC: what issues 12 and 14 changed.

- ``try_first_pass``: an earlier module's PAM_AUTHTOK that is not the Kerberos password is
  followed by one prompt (pam_krb5's option), where before the option was parsed and never read;
- the auth reply carries krb5_kuserok, so acct_mgmt after the hook's own auth sends no request:
  shown by stopping the service (SIGSTOP) between the two calls;
- the never-raise wrapper: an exception inside each entry point becomes that call's code and one
  log line with its class and place, never its text.
"""

from __future__ import annotations

import os
import signal
import uuid

import pytest

from pam_keyinit_py import protocol as P
from pam_keyinit_py.lab.pamwrap import PAM_PYTHON, PamWrapper, syslog_lines
from tests.fixtures_pam import STRERROR
from tests.kdc import test_account_password as tap
from tests.kdc import ticketd as td
from tests.kdc.ticketd import persistent_caches

svc_user, ticketd, bob = td.svc_user, td.ticketd, tap.bob
pamtester = tap.pamtester

#: An earlier auth module that sets PAM_AUTHTOK to a password the KDC does not know.
WRONG_FIRST = """def pam_sm_authenticate(pamh, flags, argv):
    pamh.authtok = "not-the-kerberos-password"
    return pamh.PAM_SUCCESS
def pam_sm_setcred(pamh, flags, argv):
    return pamh.PAM_SUCCESS
"""


def _first_module(pamwrap: PamWrapper) -> str:
    path = pamwrap.dir / "wrong_first.py"
    path.write_text(WRONG_FIRST)
    path.chmod(0o644)
    return f"auth required {PAM_PYTHON} {path}"


def _service(pamwrap: PamWrapper, lines: list[str]) -> str:
    return pamwrap.service(f"pkt-{uuid.uuid4().hex[:10]}", lines)


def test_try_first_pass_prompts_after_a_wrong_earlier_password(pamwrap, ticketd, svc_user) -> None:
    sock = ticketd.socket
    tried = _service(pamwrap, [_first_module(pamwrap),
                               pamwrap.hook_line("auth", "required", f"try_first_pass socket={sock}")])
    res = pamtester(pamwrap, tried, svc_user.name, [svc_user.password], "authenticate")
    assert res.returncode == 0, res.stderr + ticketd.log()
    assert "Password: " in res.stdout + res.stderr  # the hook asked, once the earlier password failed
    caches = persistent_caches(svc_user.uid)
    assert any(owner == svc_user.uid for keys in caches.values() for owner, _ in keys), caches
    assert svc_user.password not in ticketd.log()


def test_without_try_first_pass_the_earlier_password_is_final(pamwrap, ticketd, svc_user) -> None:
    sock = ticketd.socket
    for options in (f"socket={sock}", f"use_first_pass try_first_pass socket={sock}"):
        service = _service(pamwrap, [_first_module(pamwrap), pamwrap.hook_line("auth", "required", options)])
        res = pamtester(pamwrap, service, svc_user.name, [svc_user.password], "authenticate")
        assert res.returncode != 0 and STRERROR["auth_err"] in res.stderr, (options, res.stderr)
        assert "Password: " not in res.stdout + res.stderr, options


def test_auth_reply_answers_kuserok(ticketd, realm, bob) -> None:
    """auth with kuserok: krb5_kuserok(principal, user) of the service, in the success reply."""
    ask = {"op": "auth", "user": bob.name, "uid": bob.uid, "gid": bob.gid, "kuserok": True}
    reply = ticketd.request({**ask, "principal": bob.alice, "password": bob.passwords["alice"]})
    assert reply["ok"] and reply["kuserok"] is True, reply
    reply = ticketd.request({**ask, "principal": bob.carol, "password": bob.passwords["carol"]})
    assert reply["ok"] and reply["kuserok"] is False, reply
    # Without the field the reply is as before.
    reply = ticketd.request({**ask, "kuserok": False, "principal": bob.alice,
                             "password": bob.passwords["alice"]})
    assert reply["ok"] and "kuserok" not in reply, reply
    with pytest.raises(P.ProtocolError, match="kuserok"):
        P.validate_request({"v": 1, **ask, "kuserok": 1, "password": "x"})


def test_acct_mgmt_after_the_hooks_auth_sends_no_request(pamwrap, ticketd, svc_user) -> None:
    """The service is stopped after the auth: acct_mgmt still succeeds, from the auth reply alone."""
    sock = ticketd.socket
    assert ticketd.proc is not None
    pid = ticketd.proc.pid
    stop = pamwrap.dir / "stop_ticketd.sh"
    stop.write_text(f"#!/bin/sh\nkill -STOP {pid}\n")
    stop.chmod(0o755)
    service = _service(pamwrap, [pamwrap.hook_line("auth", "required", f"socket={sock}"),
                                 f"auth required pam_exec.so {stop}",
                                 pamwrap.hook_line("account", "required", f"socket={sock}")])
    try:
        res = pamtester(pamwrap, service, svc_user.name, [svc_user.password], "authenticate", "acct_mgmt")
    finally:
        os.kill(pid, signal.SIGCONT)
    assert res.returncode == 0 and "account management done" in res.stdout + res.stderr, \
        res.stdout + res.stderr + ticketd.log()


#: Appended to the real shim: the hook fails inside every entry point (its option parser raises).
BREAK_HOOK = """
import pam_keyinit_py.pam.hook as _h

def _broken(pamh, argv):
    raise RuntimeError("s3cr3t-in-the-message")

_h._options = _broken
"""


def test_an_exception_in_an_entry_point_becomes_its_code_and_a_log_line_without_its_text(pamwrap) -> None:
    """The never-raise wrapper, through real libpam: each call's documented code, no traceback."""
    from pam_keyinit_py.pam.shim import render, repo_paths

    shim = pamwrap.dir / "broken_shim.py"
    shim.write_text(render(repo_paths()) + BREAK_HOOK)
    shim.chmod(0o644)
    lines = shim.read_text().splitlines()
    raise_line = 1 + next(i for i, line in enumerate(lines) if "raise RuntimeError" in line)
    expect = {"authenticate": STRERROR["authinfo_unavail"], "acct_mgmt": "Error in service module",
              "open_session": "Cannot make/remove an entry for the specified session",
              "chauthtok": STRERROR["authtok_err"]}
    for kind, op in (("auth", "authenticate"), ("account", "acct_mgmt"), ("session", "open_session"),
                     ("password", "chauthtok")):
        service = _service(pamwrap, [f"{kind} required {PAM_PYTHON} {shim}"])
        res = pamwrap.run(service, "root", op)
        assert res.returncode != 0 and expect[op] in res.stderr, (op, res.stderr)
        logged = [m for m in syslog_lines(res.stderr) if "unexpected" in m]
        assert len(logged) == 1 and f"{op}: unexpected RuntimeError at " in logged[0], (op, res.stderr)
        assert logged[0].endswith(f"broken_shim.py:{raise_line}"), logged  # where it was raised
        assert "s3cr3t" not in res.stderr and "Traceback" not in res.stderr, res.stderr


def test_an_empty_password_is_auth_err_and_sends_nothing(pamwrap, tmp_path) -> None:
    """An empty answer to the hook's own prompt is a wrong password: PAM_AUTH_ERR, as pam_krb5's
    prompt_password gives ("rejecting empty password"), not PAM_CONV_ERR, which the manual does
    not list and on which login(1) stops instead of asking again.  The socket does not exist, so
    a request would have been PAM_AUTHINFO_UNAVAIL."""
    absent = tmp_path / "absent.sock"
    service = _service(pamwrap, [pamwrap.hook_line("auth", "required", f"minimum_uid=0 socket={absent}")])
    res = pamtester(pamwrap, service, "root", [""], "authenticate")
    assert "Password: " in res.stdout + res.stderr  # the hook asked
    assert res.returncode != 0 and STRERROR["auth_err"] in res.stderr, res.stderr
    assert "unexpected" not in res.stderr, res.stderr


#: An earlier auth module that sets PAM_AUTHTOK to a password longer than PAM_MAX_RESP_SIZE - 1.
LONG_FIRST = """def pam_sm_authenticate(pamh, flags, argv):
    pamh.authtok = "x" * 5000
    return pamh.PAM_SUCCESS
def pam_sm_setcred(pamh, flags, argv):
    return pamh.PAM_SUCCESS
"""


def test_an_over_long_password_is_auth_err_not_an_unexpected_error(pamwrap, tmp_path) -> None:
    """A password longer than 511 bytes is refused as pam_krb5 refuses it (PAM_AUTH_ERR), before
    any request: it was an "unexpected ProtocolError" (the protocol carries 4096 characters) and
    PAM_AUTHINFO_UNAVAIL, a log line that says the hook has a bug and a code that blames the KDC."""
    first = pamwrap.dir / "long_first.py"
    first.write_text(LONG_FIRST)
    first.chmod(0o644)
    absent = tmp_path / "absent.sock"
    for options in ("use_first_pass", "try_first_pass"):
        service = _service(pamwrap, [f"auth required {PAM_PYTHON} {first}",
                                     pamwrap.hook_line("auth", "required",
                                                       f"{options} minimum_uid=0 socket={absent}")])
        # try_first_pass prompts once after the refused earlier password: answer it with nothing.
        res = pamtester(pamwrap, service, "root", [""], "authenticate")
        assert res.returncode != 0 and STRERROR["auth_err"] in res.stderr, (options, res.stderr)
        assert "unexpected" not in res.stderr, (options, res.stderr)


#: An earlier password module that sets PAM_OLDAUTHTOK to a password longer than 511 bytes.
LONG_OLD = """def pam_sm_chauthtok(pamh, flags, argv):
    pamh.oldauthtok = "x" * 5000
    return pamh.PAM_SUCCESS
"""


def test_an_over_long_current_password_is_not_an_unexpected_error(pamwrap, tmp_path) -> None:
    """passwd: a current password longer than 511 bytes is refused as pam_krb5 refuses it
    (PAM_AUTHTOK_RECOVERY_ERR), before any request; it was an "unexpected ProtocolError" and
    PAM_AUTHTOK_ERR."""
    first = pamwrap.dir / "long_old.py"
    first.write_text(LONG_OLD)
    first.chmod(0o644)
    absent = tmp_path / "absent.sock"
    service = _service(pamwrap, [f"password required {PAM_PYTHON} {first}",
                                 pamwrap.hook_line("password", "required", f"minimum_uid=0 socket={absent}")])
    res = pamtester(pamwrap, service, "root", [], "chauthtok")
    assert res.returncode != 0 and STRERROR["authtok_recovery_err"] in res.stderr, res.stderr
    assert "unexpected" not in res.stderr, res.stderr
