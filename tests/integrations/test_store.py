"""The shared store against the real kernel, in-process (root) in the test's fresh session keyring."""

from __future__ import annotations

import pytest

from pam_keyinit_py import keyutils
from pam_keyinit_py.integrations.secret_store import SecretStore
from pam_keyinit_py.integrations.store import (
    MAX_CHUNKS,
    MAX_USER_PAYLOAD,
    RING_NAME,
    KeyStore,
    LocationError,
    StoreError,
    resolve_location,
)

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


def test_store_errors_sit_under_the_root_error(fresh_session_keyring: int) -> None:
    from pam_keyinit_py.errors import KeyinitError

    # `except KeyinitError` catches every refusal the store reports on purpose.
    with pytest.raises(KeyinitError):
        KeyStore("session").put("x" * 5000, b"v")
    with pytest.raises(KeyinitError):
        resolve_location("nowhere")
    assert issubclass(StoreError, KeyinitError) and issubclass(LocationError, ValueError)


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
    # Over MAX_CHUNKS user keys' worth: refused before any key is written.
    store = SecretStore("session")
    secret = "Z" * (MAX_USER_PAYLOAD * MAX_CHUNKS + 1)
    with pytest.raises(StoreError, match="too large") as info:
        store.store({"a": "b"}, "label", secret)
    assert "ZZZZ" not in str(info.value)
    assert list(KeyStore("session").entries()) == []


def _chunks(ring: int) -> list[tuple[bytes, int]]:
    out = []
    for key in keyutils.keyring_ids(ring):
        raw = keyutils.describe(key)
        out.append((raw.split(b";", 4)[4] + b" " + raw.split(b";", 1)[0], len(keyutils.read(key))))
    return sorted(out)


def test_payload_over_one_user_key_is_a_possessor_only_chunk_keyring(fresh_session_keyring: int) -> None:
    store = KeyStore("session")
    big = bytes(range(256)) * 280  # 71,680 bytes: three user keys
    key = store.put('{"a":"b"}', big)
    ring = store.ring()
    assert key in keyutils.keyring_ids(ring)
    assert keyutils.describe(key).startswith(b"keyring;") and _perm(key) == POS_ONLY
    assert _chunks(key) == [(b"0/3 user", 32767), (b"1/3 user", 32767), (b"2/3 user", 71680 - 2 * 32767)]
    assert all(_perm(k) == POS_ONLY for k in keyutils.keyring_ids(key))
    assert store.read(key) == big and store.find('{"a":"b"}') == key
    assert list(store.entries()) == [(key, '{"a":"b"}')]
    # Shrinking back: one user key, and the chunk keyring is gone from the store.
    small = store.put('{"a":"b"}', b"small")
    assert keyutils.describe(small).startswith(b"user;")
    assert list(store.entries()) == [(small, '{"a":"b"}')] and store.read(small) == b"small"
    # Growing again: the user key is removed after the chunk keyring is published.
    again = store.put('{"a":"b"}', big[:40000])
    assert list(store.entries()) == [(again, '{"a":"b"}')] and store.read(again) == big[:40000]
    store.remove(again)
    assert list(store.entries()) == [] and store.find('{"a":"b"}') is None


def test_an_incomplete_chunk_keyring_reads_as_absent(fresh_session_keyring: int) -> None:
    store = KeyStore("session")
    key = store.put('{"a":"b"}', b"x" * 70000)
    keyutils.unlink(keyutils.keyring_ids(key)[0], key)  # one chunk lost: never a partial secret
    assert store.read(key) is None
    assert SecretStore("session").lookup({"a": "b"}) is None


def test_readers_see_the_old_or_the_new_large_secret_never_a_mix(fresh_session_keyring: int) -> None:
    """A writer replaces a chunked secret over and over; a reader must only ever see a whole one."""
    import threading

    secrets = ["A" * 40000, "B" * 65000, "C" * 33000, "D" * 100]
    store = SecretStore("session")
    store.store({"k": "v"}, "L", secrets[0])
    stop = threading.Event()

    def writer() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            SecretStore("session").store({"k": "v"}, "L", secrets[n % len(secrets)])

    thread = threading.Thread(target=writer)
    thread.start()
    seen: set[str] = set()
    try:
        for _ in range(2000):
            value = store.lookup({"k": "v"})
            assert value in secrets, None if value is None else (len(value), value[:1], value[-1:])
            seen.add(value[:1])
    finally:
        stop.set()
        thread.join()
    assert len(seen) > 1, seen  # the writer really replaced it while we read
