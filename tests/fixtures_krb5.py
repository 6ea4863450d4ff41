"""pytest fixtures around the throwaway MIT realm (krb5/ bootstrap via pam_keyinit_py.lab.realm).

``realm``: one realm per test session with short, renewable tickets (60 s life, 10 min renew).
``kdc_user``: a fresh local user ("pkk" prefix) with a principal of the same name and a random
password, whose persistent-keyring caches are removed after the test.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pam_keyinit_py.lab.realm import Realm, available
from pam_keyinit_py.lab.users import clear_persistent
from tests.conftest import TestUser, delete_user, make_user, require, require_root

#: Short default life so renewals happen inside a test; renewable for long enough.
REALM_MAXLIFE = "60s"
REALM_MAXRENEW = "10m"


@pytest.fixture(scope="session")
def realm() -> Iterator[Realm]:
    """A running MIT KDC on 127.0.0.1 for the whole test session (missing krb5kdc fails in CI).

    Its directory is a fresh 0755 temp dir, so test users' klist can read ``realm.krb5_conf``.
    """
    require(available(), "MIT KDC tools (krb5kdc, kdb5_util, kadmin.local) not installed")
    r = Realm.start(None, "PKK.TEST", maxlife=REALM_MAXLIFE, maxrenew=REALM_MAXRENEW)
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture(scope="session")
def host_keytab(realm: Realm) -> Path:
    """The realm's host keytab (``host/localhost`` and this host's names), as a login host has."""
    return realm.keytab_path


@pytest.fixture(scope="session")
def kadmind(realm: Realm) -> Iterator[Realm]:
    """The session realm with kadmind running: its kpasswd service takes password changes."""
    require(Path("/usr/sbin/kadmind").exists(), "kadmind not installed (krb5-admin-server)")
    realm.start_kadmind()
    try:
        yield realm
    finally:
        realm.stop_kadmind()


def impostor(realm_name: str) -> Iterator[Realm]:
    """A KDC impostor: an MIT realm (realm.sh) of the name ``realm_name``, with its own database
    and host keys; stopped and removed after the test."""
    rogue = Realm.start(None, realm_name, maxlife="60s", maxrenew="10m")
    try:
        yield rogue
    finally:
        rogue.stop()


@pytest.fixture
def rogue_realm(realm: Realm) -> Iterator[Realm]:
    """An impostor of the test realm: same name, its own database (its own host keys too)."""
    yield from impostor(realm.realm)


@dataclass
class KdcUser:
    """A local user with a principal in the test realm (password kept only in test memory)."""

    user: TestUser
    principal: str
    password: str

    @property
    def uid(self) -> int:
        return self.user.uid

    @property
    def gid(self) -> int:
        return self.user.gid

    @property
    def name(self) -> str:
        return self.user.name


def add_user_principal(realm: Realm, user: TestUser, *, maxlife: str | int | None = None,
                       maxrenew: str | int | None = None) -> KdcUser:
    """Create ``user.name@REALM`` with a random password; return it with the password."""
    password = secrets.token_urlsafe(12)
    principal = realm.add_principal(user.name, password, maxlife=maxlife, maxrenew=maxrenew)
    return KdcUser(user, principal, password)


#: KEYCTL_GET_PERSISTENT + CLEAR of a uid's persistent keyring (one implementation, in lab/).
clear_persistent_caches = clear_persistent


@pytest.fixture
def kdc_user(realm: Realm) -> Iterator[KdcUser]:
    """A fresh "pkk" user with a principal (default realm lifetimes); caches cleaned afterwards."""
    require_root()
    user = make_user("pkk")
    try:
        ku = add_user_principal(realm, user)
        yield ku
    finally:
        clear_persistent_caches(user.uid)
        delete_user(user)
