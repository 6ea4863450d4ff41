"""The shared store against the real kernel, in-process (root) in the test's fresh session keyring."""

from __future__ import annotations

import pytest

from pam_keyinit_py import keyutils
from pam_keyinit_py.integrations.secret_store import SecretStore
from pam_keyinit_py.integrations.store import RING_NAME, KeyStore, LocationError, StoreError, resolve_location

POS_ONLY = keyutils.KEY_POS_ALL


def _perm(key: int) -> int:
    return int(keyutils.describe(key).split(b";")[3], 16)


def test_location_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KEYINIT_STORE_LOCATION", raising=False)
    assert resolve_location(None) == "persistent"
    monkeypatch.setenv("KEYINIT_STORE_LOCATION", "Session")
    assert resolve_location(None) == "session"
    assert resolve_location("user") == "user"
    with pytest.raises(LocationError, match="unknown keyring location 'nowhere'.*persistent, user, session"):
        resolve_location("nowhere")
    monkeypatch.setenv("KEYINIT_STORE_LOCATION", "bogus")
    with pytest.raises(LocationError):
        SecretStore()


def test_session_store_is_a_direct_possessor_only_keyring(fresh_session_keyring: int) -> None:
    store = KeyStore("session")
    assert store.ring() is None  # nothing is created by a read
    ring = store.ring(create=True)
    assert ring in keyutils.keyring_ids(fresh_session_keyring)
    assert keyutils.describe(ring).endswith(f";{RING_NAME}".encode())
    assert _perm(ring) == POS_ONLY
    key = store.put('{"a":"b"}', b"payload")
    assert key in keyutils.keyring_ids(ring)
    assert keyutils.describe(key).startswith(b"user;")
    assert _perm(key) == POS_ONLY
    assert store.ring() == ring  # found again, not re-created
    # add_key on the same description updates the same key in place.
    assert store.put('{"a":"b"}', b"other") == key
    assert store.read(key) == b"other"
    assert list(store.entries()) == [(key, '{"a":"b"}')]
    store.remove(key)
    assert store.find('{"a":"b"}') is None
    assert list(store.entries()) == []


def test_nested_lookalike_is_not_taken_for_the_session_store(fresh_session_keyring: int) -> None:
    # A keyring of the same name one level down (as the user store seen through @u linked
    # into @s) must not be used as the session store.
    nested_parent = keyutils.add_key("keyring", "pki-nested", None, fresh_session_keyring)
    lookalike = keyutils.add_key("keyring", RING_NAME, None, nested_parent)
    ring = KeyStore("session").ring(create=True)
    assert ring != lookalike
    assert ring in keyutils.keyring_ids(fresh_session_keyring)
    assert lookalike not in keyutils.keyring_ids(keyutils.KEY_SPEC_PROCESS_KEYRING)


def test_persistent_is_the_default_and_lives_in_the_persistent_keyring(
    root_stores: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KEYINIT_STORE_LOCATION", raising=False)
    store = SecretStore()
    assert store.location == "persistent"
    item = store.store({"pki-test": "persistent"}, "label", "s3cret")
    persistent = keyutils.get_persistent(-1, keyutils.KEY_SPEC_PROCESS_KEYRING)
    ring = store.keys.ring()
    assert ring in keyutils.keyring_ids(persistent)
    assert item.key in keyutils.keyring_ids(ring)
    # Not in the session keyring: it outlives the session.
    assert ring not in keyutils.keyring_ids(keyutils.KEY_SPEC_SESSION_KEYRING)
    assert store.lookup({"pki-test": "persistent"}) == "s3cret"


def test_user_location_lives_in_the_user_keyring(root_stores: None) -> None:
    store = SecretStore("user")
    store.store({"pki-test": "user"}, "label", "u-secret")
    assert store.keys.ring() in keyutils.keyring_ids(keyutils.KEY_SPEC_USER_KEYRING)
    assert SecretStore("session").lookup({"pki-test": "user"}) is None
    assert store.lookup({"pki-test": "user"}) == "u-secret"


def test_too_long_attributes_are_refused_cleanly() -> None:
    store = SecretStore("session")
    with pytest.raises(StoreError, match="too long"):
        store.store({"a": "x" * 5000}, "label", "secret-value")


def test_oversized_secret_is_refused_without_echoing_it(fresh_session_keyring: int) -> None:
    # A payload over the 32767-byte user-key maximum is refused by the kernel (EINVAL).
    store = SecretStore("session")
    secret = "Z" * 40000
    with pytest.raises(StoreError) as info:
        store.store({"a": "b"}, "label", secret)
    assert "ZZZZ" not in str(info.value)
