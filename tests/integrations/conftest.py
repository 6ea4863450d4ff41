"""Fixtures of the integration tests: "pki" test users, running commands as them in a fresh
session keyring, and cleanup of root's own stores."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator

import pytest

from pam_keyinit_py import keyutils
from pam_keyinit_py.integrations.store import KeyStore
from tests.conftest import VENV_BIN, TestUser, require, temporary_user

PREFIX = "pki"
BIN = VENV_BIN


@pytest.fixture
def pki_user() -> Iterator[TestUser]:
    """A fresh non-root user: its persistent keyring (the default store) starts empty.

    delete_user clears and unlinks the user's persistent keyring.
    """
    require(shutil.which("keyctl"), "keyctl (keyutils) not installed")
    with temporary_user(PREFIX) as user:
        yield user


@pytest.fixture(scope="module")
def pki_module_user() -> Iterator[TestUser]:
    """One non-root user for a module whose tests each use a fresh *session* store."""
    require(shutil.which("keyctl"), "keyctl (keyutils) not installed")
    with temporary_user(PREFIX) as user:
        yield user


def run_fresh(user: TestUser, argv: list[str], **kw: object) -> subprocess.CompletedProcess:
    """Run ``argv`` as ``user`` in a new anonymous session keyring (``keyctl session -``).

    The "Joined session keyring" line keyctl prints on stderr is removed.
    """
    proc = user.run(["keyctl", "session", "-", *argv], **kw)
    err = proc.stderr
    if isinstance(err, bytes):
        proc.stderr = b"".join(ln for ln in err.splitlines(True) if not ln.startswith(b"Joined session"))
    elif err:
        proc.stderr = "".join(ln for ln in err.splitlines(True) if not ln.startswith("Joined session"))
    return proc


@pytest.fixture
def root_stores() -> Iterator[None]:
    """Undo what an in-process (root) test adds to root's persistent and user keyrings.

    Keys present before the test are left alone; a store keyring the test
    created is unlinked; keys the test added to a pre-existing one are invalidated.
    """
    locations = {"persistent": KeyStore("persistent"), "user": KeyStore("user")}
    before: dict[str, tuple[int | None, set[int]]] = {}
    for name, store in locations.items():
        ring = store.ring()
        before[name] = (ring, set(keyutils.keyring_ids(ring)) if ring else set())
    yield
    for name, store in locations.items():
        old_ring, old_keys = before[name]
        ring = store.ring()
        if ring is None:
            continue
        if ring != old_ring:
            keyutils.clear(ring)
            keyutils.unlink(ring, store._parent())
            continue
        for kid in set(keyutils.keyring_ids(ring)) - old_keys:
            keyutils.invalidate(kid)
