"""Shared fixtures: a fresh session keyring per test, test users, and CI's fail-not-skip rule."""

from __future__ import annotations

import os
import pwd
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# Fixture modules, one per real component: the KDC realm and the PAM hosts.
pytest_plugins = ["tests.fixtures_krb5", "tests.fixtures_pam"]

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"
IN_CI = os.environ.get("CI") == "true"


def require(condition: object, reason: str) -> None:
    """Skip locally when a real dependency is missing; in CI (CI=true) fail instead."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def require_root() -> None:
    """The test needs root (setuid, other users' keys, /etc)."""
    require(os.geteuid() == 0, "needs root")


@pytest.fixture(autouse=True)
def fresh_session_keyring() -> Iterator[int]:
    """Join a new anonymous session keyring for the test, so it never touches the caller's.

    KEYCTL_JOIN_SESSION_KEYRING(NULL) affects this thread's credentials only;
    subprocesses started by the test inherit it.
    """
    from pam_keyinit_py import keyutils

    try:
        ring = keyutils.join_session_keyring(None)
    except OSError as exc:  # no keyring support at all
        require(False, f"kernel keyrings unavailable: {exc}")
        raise
    yield ring
    try:
        keyutils.clear(ring)
    except OSError:
        pass


class TestUser:
    """A throwaway local user (created with useradd, removed with userdel)."""

    def __init__(self, name: str) -> None:
        self.name = name
        pw = pwd.getpwnam(name)
        self.uid = pw.pw_uid
        self.gid = pw.pw_gid
        self.home = pw.pw_dir

    def run(self, argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` as this user (real+effective ids, no supplementary groups)."""
        uid, gid = self.uid, self.gid

        def drop() -> None:
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)

        env = {"PATH": f"{VENV_BIN}:/usr/bin:/bin", "HOME": self.home, "USER": self.name, "LANG": "C"}
        env.update(kw.pop("env", {}) or {})  # type: ignore[arg-type]
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        return subprocess.run(argv, preexec_fn=drop, env=env, **kw)  # type: ignore[call-overload]


def make_user(prefix: str = "pkt") -> TestUser:
    """useradd a user with a home directory; the caller must delete_user() it."""
    require_root()
    name = f"{prefix}{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", name], check=True)
    return TestUser(name)


def delete_user(user: TestUser) -> None:
    """Remove the user, its home, and its keys in the persistent keyring."""
    from pam_keyinit_py import keyutils

    try:
        ring = keyutils.get_persistent(user.uid, keyutils.KEY_SPEC_SESSION_KEYRING)
        keyutils.clear(ring)
        keyutils.unlink(ring, keyutils.KEY_SPEC_SESSION_KEYRING)
    except OSError:
        pass
    subprocess.run(["pkill", "-KILL", "-u", user.name], check=False)
    subprocess.run(["userdel", "--remove", user.name], check=False, capture_output=True)


@pytest.fixture
def test_user() -> Iterator[TestUser]:
    """A fresh non-root user for the test."""
    user = make_user()
    try:
        yield user
    finally:
        delete_user(user)


@pytest.fixture(scope="session")
def session_user() -> Iterator[TestUser]:
    """One non-root user shared by a whole test session (cheaper than one per test)."""
    user = make_user()
    try:
        yield user
    finally:
        delete_user(user)
