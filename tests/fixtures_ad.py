"""pytest fixtures around the throwaway Active Directory realm (krb5/ad-realm.sh via lab.adrealm).

``ad_realm``: one Samba AD DC per test session (KDC on 127.0.0.1:88), with a 1 h user ticket life
and a 2 h renewal limit (Samba's limits are whole hours; AD's defaults are 10 h and 7 days).
``host_state``: /etc/pam.d, /etc/nsswitch.conf and /etc/samba/smb.conf as the session found them,
taken before the AD realm starts; the realm's teardown fails if any of them changed.
``ad_user``: a fresh local user whose name is also an AD sAMAccountName (the default mapping),
with a random AD password; its AD account, groups and persistent-keyring caches go afterwards.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pam_keyinit_py.lab.adrealm import AdRealm, available
from pam_keyinit_py.lab.realm import Realm
from pam_keyinit_py.lab.users import clear_persistent
from tests.conftest import delete_user, make_user, require, require_root
from tests.fixtures_krb5 import KdcUser, impostor

AD_LIFE_HOURS = 1
AD_RENEW_HOURS = 2

#: What installing samba may change on the host, and what the lab must leave as it found it.
HOST_FILES = (Path("/etc/pam.d"), Path("/etc/nsswitch.conf"), Path("/etc/samba/smb.conf"))


def host_snapshot() -> dict[str, str | None]:
    """sha256 of each file under HOST_FILES (None for a missing one)."""
    out: dict[str, str | None] = {}
    for top in HOST_FILES:
        files = sorted(p for p in top.rglob("*") if p.is_file()) if top.is_dir() else [top]
        for path in files:
            try:
                out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
            except FileNotFoundError:
                out[str(path)] = None
    return out


@pytest.fixture(scope="session")
def host_state() -> dict[str, str | None]:
    """The host's PAM stacks, nsswitch.conf and smb.conf before any AD fixture ran."""
    return host_snapshot()


@pytest.fixture(scope="session")
def ad_realm(host_state: dict[str, str | None]) -> Iterator[AdRealm]:
    """A running Samba AD DC on loopback for the whole session (missing samba fails in CI)."""
    require_root()
    missing = available()
    require(missing is None, missing or "")
    r = AdRealm.start(None, "AD.PKK.TEST", life_hours=AD_LIFE_HOURS, renew_hours=AD_RENEW_HOURS)
    try:
        yield r
    finally:
        r.stop()
        after = host_snapshot()
        changed = set(after.items()) ^ set(host_state.items())
        assert after == host_state, f"the AD lab changed the host: {changed}"


@pytest.fixture
def rogue_ad(ad_realm: AdRealm) -> Iterator[Realm]:
    """An impostor: an MIT KDC (realm.sh) for the AD realm's name, with its own database."""
    yield from impostor(ad_realm.realm)


@dataclass
class AdUser(KdcUser):
    """A local user with an AD account of the same sAMAccountName (password only in test memory)."""

    groups: int = 0


def make_ad_user(ad: AdRealm, groups: int = 0, prefix: str = "pka") -> AdUser:
    """A local user plus its AD account (in ``groups`` groups); the caller must remove_ad_user() it."""
    user = make_user(prefix)
    try:
        password = secrets.token_urlsafe(12)
        principal = ad.add_user(user.name, password, groups=groups)
    except BaseException:
        delete_user(user)
        raise
    return AdUser(user, principal, password, groups)


def remove_ad_user(ad: AdRealm, u: AdUser) -> None:
    """Drop the AD account, its groups, the local user, its caches and its user keyring's keys.

    The user keyring (@u) outlives userdel and its keys stay charged to the uid: the next
    useradd that reuses the uid would start with them (a quota test fills @u).
    """
    clear_persistent(u.uid)
    u.user.run(["keyctl", "clear", "@u"])
    try:
        ad.delete_user(u.name)
    finally:
        delete_user(u.user)


@pytest.fixture
def ad_user(ad_realm: AdRealm) -> Iterator[AdUser]:
    """A fresh "pka" user with an AD account of the same name."""
    require_root()
    u = make_ad_user(ad_realm)
    try:
        yield u
    finally:
        remove_ad_user(ad_realm, u)
