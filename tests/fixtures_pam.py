"""pytest fixtures for real PAM hosts: pam_wrapper + pamtester, and a private sshd on loopback.

Fixtures:
- ``pamwrap``: a :class:`~pam_keyinit_py.lab.pamwrap.PamWrapper` (private service dir, shim pointing
  at this checkout, pamtester runner), removed after the test session.
- ``pam_user``: a local user ("pkp" prefix) with a random password (``.password``), deleted afterwards.
- ``sshd_factory``: ``start(stack, mode)`` with ``stack(pamwrap) -> PAM lines`` (so hook lines can use
  that server's own pam_wrapper dir via ``pamwrap.hook_line()``) gives a started private sshd; all
  are stopped and removed at the end of the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.conftest import TestUser, require, require_root, temporary_user

#: pam_strerror() texts, as pamtester prints them: how the tests read a PAM return code.
STRERROR = {
    "success": "successfully",
    "auth_err": "Authentication failure",
    "user_unknown": "User not known to the underlying authentication module",
    "authinfo_unavail": "Authentication service cannot retrieve authentication info",
    "perm_denied": "Permission denied",
    "acct_expired": "User account has expired",
    "new_authtok_reqd": "Authentication token is no longer valid; new one required",
    "authtok_err": "Authentication token manipulation error",
    "authtok_recovery_err": "Authentication information cannot be recovered",
}


@pytest.fixture(scope="session")
def pamwrap() -> Iterator[object]:
    """A private PAM service directory driven by pamtester under pam_wrapper."""
    from pam_keyinit_py.lab import pamwrap as pw

    require_root()
    missing = pw.available()
    require(missing is None, missing or "")
    wrapper = pw.PamWrapper()
    try:
        yield wrapper
    finally:
        wrapper.close()


@pytest.fixture(scope="session")
def pam_user() -> Iterator[TestUser]:
    """A "pkp" user with a random password in /etc/shadow (set with chpasswd, never in argv)."""
    with temporary_user("pkp", password=True) as user:
        yield user


@pytest.fixture
def sshd_factory() -> Iterator[Callable[..., object]]:
    """``start(pam_stack_lines, mode="password"|"keyboard-interactive") -> Sshd``; stopped after the test.

    Each server gets its own pam_wrapper directory: sshd reads its ``sshd`` service at every login.
    """
    from pam_keyinit_py.lab import pamwrap as pw
    from pam_keyinit_py.lab import sshd as lab_sshd

    require_root()
    missing = pw.available() or lab_sshd.available()
    require(missing is None, missing or "")
    started: list[lab_sshd.Sshd] = []

    def start(stack: Callable[[pw.PamWrapper], list[str]], mode: str = lab_sshd.PASSWORD,
              **kw: object) -> lab_sshd.Sshd:
        server = lab_sshd.Sshd()
        started.append(server)
        return server.start(stack(server.pamwrap), mode=mode, **kw)  # type: ignore[arg-type]

    try:
        yield start
    finally:
        for server in started:
            server.close()
