"""Shared fixtures: a fresh session keyring per test, test users, and CI's fail-not-skip rule."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pam_keyinit_py.lab import users
from pam_keyinit_py.lab.users import LabUser

# Fixture modules, one per real component: the KDC realm and the PAM hosts.
pytest_plugins = ["tests.fixtures_krb5", "tests.fixtures_pam", "tests.fixtures_ad"]

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


@pytest.fixture(scope="session", autouse=True)
def checkout_reachable_by_test_users() -> Iterator[None]:
    """Let the throwaway users reach this checkout's venv and code for the session.

    Tests run console scripts and pam_python as non-root users; a checkout in a 0700
    directory (``mktemp -d``, a root-only CI workspace) would make each of them fail with
    EACCES.  The checkout itself gets o+rx (Python's import lists the directory), the
    directories above it o+x (search only); all get their modes back at the end.
    """
    changed: list[tuple[Path, int]] = []
    if os.geteuid() == 0:
        for directory in [REPO, *REPO.parents]:
            mode = directory.stat().st_mode & 0o7777
            need = 0o005 if directory == REPO else 0o001
            if mode & need != need:
                os.chmod(directory, mode | need)
                changed.append((directory, mode))
    try:
        yield
    finally:
        for directory, mode in changed:
            os.chmod(directory, mode)


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


class TestUser(LabUser):
    """A throwaway local user whose commands find this checkout's console scripts first."""

    def run(self, argv: list[str], env: dict[str, str] | None = None,
            **kw: object) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` as this user (real+effective ids, no supplementary groups)."""
        return super().run(argv, env={"PATH": f"{VENV_BIN}:/usr/bin:/bin", **(env or {})}, **kw)


def make_user(prefix: str = "pkt", password: bool = False) -> TestUser:
    """A fresh local user (lab.users.create); the caller must delete_user() it."""
    require_root()
    made = users.create(prefix, password)
    return TestUser(made.name, made.password)


def delete_user(user: LabUser) -> None:
    """Remove the user, its home, its processes and its keys in the persistent keyring."""
    users.remove(user)


@contextmanager
def temporary_user(prefix: str = "pkt", password: bool = False) -> Iterator[TestUser]:
    """A user made by make_user() for the ``with`` block, deleted (keys and all) after it."""
    user = make_user(prefix, password)
    try:
        yield user
    finally:
        delete_user(user)


@pytest.fixture
def test_user() -> Iterator[TestUser]:
    """A fresh non-root user for the test."""
    with temporary_user() as user:
        yield user


@pytest.fixture(scope="session")
def session_user() -> Iterator[TestUser]:
    """One non-root user shared by a whole test session (cheaper than one per test)."""
    with temporary_user() as user:
        yield user
