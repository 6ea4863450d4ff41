"""The shared store against the real kernel, in-process (root) in the test's fresh session keyring."""

from __future__ import annotations

import pytest

from pam_keyinit_py import keyutils
from pam_keyinit_py.integrations.secret_store import SecretStore
from pam_keyinit_py.integrations.store import (
    MAX_CHUNKS,
    MAX_USER_PAYLOAD,
    PAYLOAD_NAME,
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


def _payload_ring(item: int) -> int:
    (version,) = keyutils.keyring_ids(item)
    assert keyutils.describe(version).endswith(f";{PAYLOAD_NAME}".encode())
    return version


def test_payload_over_one_user_key_is_a_possessor_only_item_keyring(fresh_session_keyring: int) -> None:
    store = KeyStore("session")
    big = bytes(range(256)) * 280  # 71,680 bytes: three user keys
    key = store.put('{"a":"b"}', big)
    ring = store.ring()
    assert key in keyutils.keyring_ids(ring)
    assert keyutils.describe(key).startswith(b"keyring;") and _perm(key) == POS_ONLY
    version = _payload_ring(key)
    assert _perm(version) == POS_ONLY
    assert _chunks(version) == [(b"0/3 user", 32767), (b"1/3 user", 32767), (b"2/3 user", 71680 - 2 * 32767)]
    assert all(_perm(k) == POS_ONLY for k in keyutils.keyring_ids(version))
    assert store.read(key) == big and store.find('{"a":"b"}') == key
    assert list(store.entries()) == [(key, '{"a":"b"}')]
    # Nothing is left held (or half-built) in the thread keyring.
    assert keyutils.keyring_ids(keyutils.KEY_SPEC_THREAD_KEYRING) == []
    # A new version: the same item keyring, a new payload keyring in it.
    again = store.put('{"a":"b"}', big[:40000])
    assert again == key and _payload_ring(key) != version
    assert list(store.entries()) == [(key, '{"a":"b"}')] and store.read(key) == big[:40000]
    # Shrinking: still an item keyring (a payload of one chunk).  An item never turns back
    # into a user key, so a reader that misses its user key always finds the keyring.
    assert store.put('{"a":"b"}', b"small") == key
    assert _chunks(_payload_ring(key)) == [(b"0/1 user", 5)]
    assert list(store.entries()) == [(key, '{"a":"b"}')] and store.get('{"a":"b"}') == (key, b"small")
    store.remove(key)
    assert list(store.entries()) == [] and store.find('{"a":"b"}') is None
    # Growing: the user key is removed after the item keyring is published.
    plain = store.put('{"a":"b"}', b"small")
    assert keyutils.describe(plain).startswith(b"user;")
    grown = store.put('{"a":"b"}', big[:40000])
    assert keyutils.describe(grown).startswith(b"keyring;")
    assert list(store.entries()) == [(grown, '{"a":"b"}')] and store.get('{"a":"b"}') == (grown, big[:40000])


def test_an_incomplete_payload_keyring_reads_as_absent(fresh_session_keyring: int) -> None:
    store = KeyStore("session")
    key = store.put('{"a":"b"}', b"x" * 70000)
    version = _payload_ring(key)
    keyutils.unlink(keyutils.keyring_ids(version)[0], version)  # one chunk lost: never a partial secret
    assert store.read(key) is None
    assert SecretStore("session").lookup({"a": "b"}) is None


def _earlier_format_item(store: KeyStore, reverse: bool = False) -> int:
    """Item {"a": "b"} as stores written before item keyrings hold it: a chunk keyring with the
    chunks ``0/2`` (32,767 x) and ``1/2`` (7,000 y) directly inside (added last first with ``reverse``)."""
    old = keyutils.add_key("keyring", '{"a":"b"}', None, store.ring(create=True))
    keyutils.setperm(old, POS_ONLY)
    chunks = [("0/2", b"x" * 32767), ("1/2", b"y" * 7000)]
    for name, data in reversed(chunks) if reverse else chunks:
        keyutils.add_key("user", name, data, old)
    return old


def test_an_earlier_format_chunk_keyring_is_read_and_then_replaced(fresh_session_keyring: int) -> None:
    """Stores written before item keyrings hold the chunks directly in the item's keyring."""
    store = KeyStore("session")
    old = _earlier_format_item(store, reverse=True)
    assert store.get('{"a":"b"}') == (old, b"x" * 32767 + b"y" * 7000)
    assert SecretStore("session").lookup_item({"a": "b"}) is None  # not an item's JSON payload
    # Converted in place (an item keyring is never displaced): its payload keyring is linked in,
    # then the old chunks go.
    key = store.put('{"a":"b"}', b"z" * 40000)
    assert key == old and list(store.entries()) == [(key, '{"a":"b"}')]
    _payload_ring(key)
    assert store.get('{"a":"b"}') == (key, b"z" * 40000)


def test_a_reader_of_an_earlier_format_chunk_keyring_converted_under_it_reads_a_whole_secret(
    fresh_session_keyring: int, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Between the reader's KEYCTL_READ of the first chunk and the second, a writer converts the
    chunk keyring in place: the second chunk is gone, and the reader reads the new payload keyring."""
    import threading

    store = KeyStore("session")
    old = _earlier_format_item(store)
    real_read = keyutils.read
    reads: list[int] = []

    def read(key_id: int) -> bytes:
        reads.append(key_id)
        if len(reads) == 2:
            thread = threading.Thread(target=store.put, args=('{"a":"b"}', b"z" * 40000))
            thread.start()
            thread.join()
        return real_read(key_id)

    monkeypatch.setattr(keyutils, "read", read)
    assert store.get('{"a":"b"}') == (old, b"z" * 40000)
    assert len(reads) > 2  # the conversion really happened inside the read


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


def _replace_before_every(monkeypatch: pytest.MonkeyPatch, call: str, attributes: dict[str, str],
                          secrets: list[str]) -> list[str]:
    """Put a writer in the reader's window: before each layer-0 ``call`` (``read``: KEYCTL_READ
    of a payload, ``describe``: KEYCTL_DESCRIBE), a writer thread replaces the item with the
    next of ``secrets`` (on the real keyring) and the reader goes on only when it is done.

    Returns the list of values written, in order.  The writer's own calls go straight through.
    """
    import threading

    from pam_keyinit_py.keyutils import calls

    # The store reads payloads through the package (keyutils.read); KeyInfo.of describes
    # through keyutils.calls.
    module = keyutils if call == "read" else calls
    real = getattr(module, call)
    written: list[str] = []
    writer = threading.local()  # a thread of its own: it has its own thread keyring, as any writer
    failed: list[BaseException] = []

    def replace() -> None:
        writer.busy = True
        value = secrets[len(written) % len(secrets)]
        try:
            SecretStore("session").store(attributes, "L", value)
        except BaseException as exc:  # noqa: BLE001 - handed to the reader's thread below
            failed.append(exc)
            return
        written.append(value)

    def interposed(key_id: int) -> bytes:
        if not getattr(writer, "busy", False):
            thread = threading.Thread(target=replace)
            thread.start()
            thread.join()
            if failed:
                raise failed[0]
        return real(key_id)

    monkeypatch.setattr(module, call, interposed)
    return written


def test_a_chunked_secret_replaced_between_find_and_every_read_is_still_read_whole(
    fresh_session_keyring: int, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each chunk read comes after a newer chunk keyring displaced the one the reader found."""
    secrets = ["A" * 40000, "B" * 65000, "C" * 33000]
    store = SecretStore("session")
    store.store({"k": "v"}, "L", "Z" * 50000)
    written = _replace_before_every(monkeypatch, "read", {"k": "v"}, secrets)
    for _ in range(6):
        before = len(written)
        value = store.lookup({"k": "v"})
        assert value is not None, "a reader saw no secret while a large one was being replaced"
        assert value in [*secrets, "Z" * 50000], (len(value), value[:1], value[-1:])
        assert len(written) > before  # the swap really happened inside the read


def test_a_secret_growing_into_chunks_between_find_and_read_is_still_read_whole(
    fresh_session_keyring: int, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The reader found a plain user key; before its KEYCTL_READ the item became a chunk keyring."""
    store = SecretStore("session")
    store.store({"k": "v"}, "L", "small")
    secrets = ["G" * 40000, "s", "H" * 70000, "t"]
    _replace_before_every(monkeypatch, "read", {"k": "v"}, secrets)
    for _ in range(8):
        value = store.lookup({"k": "v"})
        assert value is not None, "a reader saw no secret while it grew into a chunk keyring"
        assert value in [*secrets, "small"], (len(value), value[:1], value[-1:])


def test_a_partial_query_reads_a_chunked_secret_replaced_under_it(
    fresh_session_keyring: int, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No exact item: the listed chunk keyring is displaced before it is read, and still found."""
    attributes = {"k": "v", "user": "u"}
    store = SecretStore("session")
    store.store(attributes, "L", "Z" * 50000)
    secrets = ["A" * 40000, "B" * 65000]
    _replace_before_every(monkeypatch, "read", attributes, secrets)
    for _ in range(4):
        item = store.lookup_item({"k": "v"})
        assert item is not None, "a partial query found nothing while the item was being replaced"
        assert item.attributes == attributes and item.secret in [*secrets, "Z" * 50000]


def test_a_small_write_racing_a_large_one_leaves_one_item_keyring(
    fresh_session_keyring: int, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another writer makes the item a chunk keyring just before a small write's add_key.

    The item must keep its item keyring (readers rely on it never turning back), and hold the
    small write's secret: that writer finished last.
    """
    import threading

    store = KeyStore("session")
    store.put('{"a":"b"}', b"first")
    real_add_key = keyutils.add_key
    raced: list[bytes] = []

    def large_write() -> None:
        raced.append(keyutils.describe(store.put('{"a":"b"}', b"L" * 40000)))

    def add_key(type_: str, description: str, payload: bytes | None, ring: int) -> int:
        if type_ == "user" and description == '{"a":"b"}' and not raced:
            thread = threading.Thread(target=large_write)
            thread.start()
            thread.join()
        return real_add_key(type_, description, payload, ring)

    monkeypatch.setattr(keyutils, "add_key", add_key)
    key = store.put('{"a":"b"}', b"small")
    assert raced and raced[0].startswith(b"keyring;")
    assert keyutils.describe(key).startswith(b"keyring;")
    assert list(store.entries()) == [(key, '{"a":"b"}')]
    assert store.get('{"a":"b"}') == (key, b"small")


def test_a_partial_query_names_a_chunked_secret_replaced_before_it_is_described(
    fresh_session_keyring: int, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Docker helper's get: no exact item, so the store is listed; each listed item is
    replaced before its KEYCTL_DESCRIBE."""
    attributes = {"k": "v", "user": "u"}
    store = SecretStore("session")
    store.store(attributes, "L", "Z" * 50000)
    secrets = ["A" * 40000, "B" * 65000, "c"]
    written = _replace_before_every(monkeypatch, "describe", attributes, secrets)
    for _ in range(4):
        item = store.lookup_item({"k": "v"})
        assert item is not None, "a partial query found nothing while the item was being replaced"
        assert item.attributes == attributes and item.secret in [*secrets, "Z" * 50000]
    assert written


def test_a_small_write_whose_user_key_a_large_one_removes_still_lands(
    fresh_session_keyring: int, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Between a small write's add_key and its KEYCTL_SETPERM, another writer gives the item an
    item keyring and invalidates that user key: the small write is published there instead."""
    import threading

    store = KeyStore("session")
    store.put('{"a":"b"}', b"first")
    real_setperm = keyutils.setperm
    raced: list[int] = []

    def setperm(key_id: int, perm: int) -> None:
        if not raced and keyutils.describe(key_id).startswith(b"user;0;0;") and \
                keyutils.describe(key_id).endswith(b';{"a":"b"}'):
            thread = threading.Thread(target=lambda: raced.append(store.put('{"a":"b"}', b"L" * 40000)))
            thread.start()
            thread.join()
        real_setperm(key_id, perm)

    monkeypatch.setattr(keyutils, "setperm", setperm)
    key = store.put('{"a":"b"}', b"small")
    assert raced == [key] and list(store.entries()) == [(key, '{"a":"b"}')]
    assert store.get('{"a":"b"}') == (key, b"small")


def _is_keyring_named(key_id: int, description: str) -> bool:
    try:
        raw = keyutils.describe(key_id)
    except keyutils.KeyutilsError:
        return False
    return raw.startswith(b"keyring;") and raw.split(b";", 4)[4] == description.encode()


def test_three_writers_creating_a_large_item_at_once_lose_no_write(
    fresh_session_keyring: int, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Writers A, B and C store the same new large item, as the keyring backend does (``replace``).

    B and A both find no item and each build an item keyring; A publishes its own first, C finds
    A's and publishes its version there; only then does B publish.  Before, B's KEYCTL_LINK
    displaced A's item keyring (C's write with it) and C's put() returned that dead keyring, so C's
    ``replace`` pass took B's live item for another matching one and removed it: three writes
    that reported success, and no item.  A writer's put() must return the item as it stands, and
    the item must hold the write published last.
    """
    import threading

    attributes = {"service": "s", "user": "u"}
    description = '{"service":"s","user":"u"}'
    secrets = {name: name * 40000 for name in "ABC"}
    real_setperm, real_link = keyutils.setperm, keyutils.link
    b_paused, b_go = threading.Event(), threading.Event()
    b_thread: list[threading.Thread] = []
    results: dict[str, object] = {}

    def write(name: str) -> None:
        try:
            item = SecretStore("session").store(attributes, "L", secrets[name], replace={"service": "s"})
            results[name] = item.key
        except BaseException as exc:  # noqa: BLE001 - checked by the test below
            results[name] = exc

    def setperm(key_id: int, perm: int) -> None:
        # B stops right after making its own item keyring, before it publishes it.
        if threading.current_thread() is b_thread[0] and not b_paused.is_set() and \
                _is_keyring_named(key_id, description):
            b_paused.set()
            b_go.wait()
        real_setperm(key_id, perm)

    def link(key_id: int, ringid: int) -> None:
        real_link(key_id, ringid)
        # C has just published its version in the item keyring that A made: now B goes on.
        if threading.current_thread() is threading.main_thread() and not b_go.is_set() and \
                _is_keyring_named(ringid, description):
            b_go.set()
            b_thread[0].join()

    monkeypatch.setattr(keyutils, "setperm", setperm)
    monkeypatch.setattr(keyutils, "link", link)
    b_thread.append(threading.Thread(target=write, args=("B",)))
    b_thread[0].start()
    assert b_paused.wait(30)
    a_thread = threading.Thread(target=write, args=("A",))
    a_thread.start()
    a_thread.join()
    write("C")
    b_go.set()
    b_thread[0].join()

    assert b_go.is_set() and all(isinstance(results[n], int) for n in "ABC"), results
    store = KeyStore("session")
    found = store.get(description)
    assert found is not None, "three writes reported success and the item is gone"
    key, payload = found
    assert [(k, d) for k, d in store.entries()] == [(key, description)]
    # C's put() and B's put() returned the item as it stands (Item.key, used by replace).
    assert results["C"] == key and results["B"] == key
    # B published last (after C), so its secret is the item's.
    assert SecretStore("session").lookup(attributes) == secrets["B"]


def test_a_write_whose_item_keyring_is_displaced_under_a_reader_does_not_fail(
    fresh_session_keyring: int, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """C found the item keyring A made; before C's KEYCTL_LINK into it, B (which had found no item)
    publishes an item keyring of its own.  A reader still holds A's keyring in its thread keyring,
    so the kernel refused C's link with EACCES (no longer possessed by C): a write that failed only
    because others wrote at the same time.  It must land, and be the item's value (it is last)."""
    import threading

    description = '{"a":"b"}'
    store = KeyStore("session")
    real_setperm, real_link, real_read = keyutils.setperm, keyutils.link, keyutils.read
    b_paused, b_go, r_paused, r_go = (threading.Event() for _ in range(4))
    threads: dict[str, threading.Thread] = {}
    results: dict[str, object] = {}

    def run(name: str, call) -> None:  # noqa: ANN001 - a no-argument callable
        try:
            results[name] = call()
        except BaseException as exc:  # noqa: BLE001 - checked by the test below
            results[name] = exc

    def setperm(key_id: int, perm: int) -> None:
        if threading.current_thread() is threads["B"] and not b_paused.is_set() and \
                _is_keyring_named(key_id, description):
            b_paused.set()  # B made its item keyring and has not published it
            b_go.wait()
        real_setperm(key_id, perm)

    def read(key_id: int) -> bytes:
        if threading.current_thread() is threads.get("R") and not r_paused.is_set():
            r_paused.set()  # the reader holds A's item keyring (and its payload keyring) in @t
            r_go.wait()
        return real_read(key_id)

    def link(key_id: int, ringid: int) -> None:
        if threading.current_thread() is threads.get("C") and not b_go.is_set() and \
                _is_keyring_named(ringid, description):
            b_go.set()  # C is about to publish in A's item keyring: B publishes its own first
            threads["B"].join()
        real_link(key_id, ringid)

    monkeypatch.setattr(keyutils, "setperm", setperm)
    monkeypatch.setattr(keyutils, "link", link)
    monkeypatch.setattr(keyutils, "read", read)
    threads["B"] = threading.Thread(target=run, args=("B", lambda: store.put(description, b"B" * 40000)))
    threads["B"].start()
    assert b_paused.wait(30)
    run("A", lambda: store.put(description, b"A" * 40000))
    threads["R"] = threading.Thread(target=run, args=("R", lambda: store.get(description)))
    threads["R"].start()
    assert r_paused.wait(30)
    threads["C"] = threading.main_thread()
    try:
        run("C", lambda: store.put(description, b"C" * 40000))
    finally:
        b_go.set()
        r_go.set()
        threads["B"].join()
        threads["R"].join()

    assert isinstance(results["C"], int), results["C"]
    assert b_go.is_set() and isinstance(results["B"], int), results["B"]
    read_value = results["R"]
    assert isinstance(read_value, tuple) and read_value[1] in (b"A" * 40000, b"B" * 40000), read_value
    assert store.get(description) == (results["C"], b"C" * 40000)
    assert list(store.entries()) == [(results["C"], description)]


@pytest.mark.parametrize("point", ["add_key", "setperm"])
def test_two_threads_creating_the_store_keyring_at_once_keep_both_items(
    fresh_session_keyring: int, monkeypatch: pytest.MonkeyPatch, point: str,
) -> None:
    """Thread 1 found no store keyring and is creating one (at its add_key, or at its KEYCTL_SETPERM
    of the new keyring); meanwhile thread 2 creates one and writes an item into it.

    Before, each made its keyring in @p, which threads share: at ``setperm``, thread 2's add_key
    there had displaced thread 1's new keyring (EACCES: a write that failed); at ``add_key``,
    thread 1 then linked its own keyring into @s, displacing thread 2's with the item thread 2
    had reported stored.  There must be one store keyring, holding both items.
    """
    import threading

    store = KeyStore("session")
    real = getattr(keyutils, point)
    other: list[object] = []

    def write_other() -> None:
        try:
            other.append(KeyStore("session").put('{"t":"2"}', b"two"))
        except BaseException as exc:  # noqa: BLE001 - checked by the test below
            other.append(exc)

    def is_new_store_ring(args: tuple) -> bool:
        if point == "add_key":
            return args[:2] == ("keyring", RING_NAME)
        return _is_keyring_named(args[0], RING_NAME)

    def interposed(*args: object) -> object:
        if threading.current_thread() is threading.main_thread() and not other and is_new_store_ring(args):
            thread = threading.Thread(target=write_other)
            thread.start()
            thread.join()
        return real(*args)

    monkeypatch.setattr(keyutils, point, interposed)
    key = store.put('{"t":"1"}', b"one")
    assert other and isinstance(other[0], int), other
    rings = [k for k in keyutils.keyring_ids(fresh_session_keyring) if _is_keyring_named(k, RING_NAME)]
    assert rings == [store.ring()]
    assert store.get('{"t":"2"}') == (other[0], b"two"), "thread 2's item was lost with its keyring"
    assert store.get('{"t":"1"}') == (key, b"one")
    assert sorted(d for _k, d in store.entries()) == ['{"t":"1"}', '{"t":"2"}']


def test_a_revoked_store_keyring_or_item_keyring_gives_an_error_saying_how_to_remove_it(
    fresh_session_keyring: int,
) -> None:
    """A revoked key stays linked until the kernel collects it (key_gc_delay, 5 minutes) and refuses
    KEYCTL_MOVE_EXCL meanwhile.  The store must not KEYCTL_UNLINK it itself (that removes whichever
    key has its description, perhaps another writer's live one): a write that needs a new one fails
    with a message naming the dead key and the ``keyctl unlink`` that removes it, other items keep
    working, and once it is unlinked writes work again."""
    store = KeyStore("session")
    item = store.put('{"a":"b"}', b"x" * 40000)
    ring = store.ring()
    assert ring is not None
    keyutils.revoke(item)
    with pytest.raises(StoreError, match=f"keyctl unlink {item} {ring}$"):
        store.put('{"a":"b"}', b"y" * 40000)
    other = store.put('{"c":"d"}', b"o" * 40000)
    assert store.get('{"c":"d"}') == (other, b"o" * 40000)
    keyutils.unlink(item, ring)
    again = store.put('{"a":"b"}', b"y" * 40000)
    assert again != item and store.get('{"a":"b"}') == (again, b"y" * 40000)

    keyutils.revoke(ring)
    with pytest.raises(StoreError, match=f"keyctl unlink {ring} {fresh_session_keyring}$"):
        store.put('{"a":"b"}', b"z" * 40000)
    keyutils.unlink(ring, fresh_session_keyring)
    key = store.put('{"a":"b"}', b"z" * 40000)
    assert store.ring() not in (None, ring) and store.get('{"a":"b"}') == (key, b"z" * 40000)


def test_two_writers_meeting_a_revoked_store_keyring_lose_no_reported_write(
    fresh_session_keyring: int, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The store keyring is revoked but still linked; two writers find none and both get EEXIST from
    KEYCTL_MOVE_EXCL.  Before, each then KEYCTL_UNLINKed the dead one by its serial: writer 2 did so
    first, moved its new keyring in and wrote its item; writer 1's unlink then removed writer 2's live
    keyring (same description), item included.  A write that reports success must be found."""
    import threading

    dead = KeyStore("session").ring(create=True)
    assert dead is not None
    keyutils.revoke(dead)
    real_unlink = keyutils.unlink
    results: dict[str, object] = {}

    def write(name: str) -> None:
        try:
            results[name] = KeyStore("session").put(f'{{"t":"{name}"}}', name.encode())
        except StoreError as exc:
            results[name] = exc

    def unlink(key_id: int, keyring: int) -> None:
        if threading.current_thread() is threading.main_thread() and key_id == dead and "2" not in results:
            thread = threading.Thread(target=write, args=("2",))
            thread.start()
            thread.join()
        real_unlink(key_id, keyring)

    monkeypatch.setattr(keyutils, "unlink", unlink)
    write("1")
    if "2" not in results:
        write("2")
    monkeypatch.undo()
    for name in ("1", "2"):
        if isinstance(results[name], int):
            assert KeyStore("session").get(f'{{"t":"{name}"}}') == (results[name], name.encode()), \
                f"writer {name}'s reported write was lost"
        else:
            assert f"keyctl unlink {dead} {fresh_session_keyring}" in str(results[name])


def test_a_write_that_replaces_an_item_keyring_being_removed_is_kept(
    fresh_session_keyring: int, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """remove() invalidates an item keyring; right then a writer of the same item finds none, gets
    EEXIST (the invalidated one is not collected yet) and puts a new item keyring in.  Before,
    remove() then KEYCTL_UNLINKed its serial from the store, which removed the writer's new item
    keyring (same description): a write that reported success was gone."""
    store = KeyStore("session")
    old = store.put('{"a":"b"}', b"o" * 40000)
    real_invalidate = keyutils.invalidate
    written: list[int] = []

    def invalidate(key_id: int) -> None:
        real_invalidate(key_id)
        if key_id == old and not written:
            written.append(KeyStore("session").put('{"a":"b"}', b"n" * 40000))

    monkeypatch.setattr(keyutils, "invalidate", invalidate)
    store.remove(old)
    monkeypatch.undo()
    assert written and written[0] != old
    assert store.get('{"a":"b"}') == (written[0], b"n" * 40000), "the write after the removal was lost"


def test_a_replacing_store_keeps_its_item_turned_into_an_item_keyring_meanwhile(
    fresh_session_keyring: int, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """store(replace=...) writes a small secret (a user key U); before its replace pass, a concurrent
    large store of the same attributes turns the item into an item keyring K and removes U.  Before,
    the replace pass removed K (its serial is not U): two stores succeeded and no item was left."""
    attributes = {"service": "s", "username": "u"}
    secrets = SecretStore("session")
    secrets.store(attributes, "label", "old")
    real_put = secrets.keys.put
    large = "L" * 40000

    def put(description: str, payload: bytes) -> int:
        key = real_put(description, payload)
        SecretStore("session").store(attributes, "label", large, replace=dict(attributes))
        return key

    monkeypatch.setattr(secrets.keys, "put", put)
    secrets.store(attributes, "label", "small", replace=dict(attributes))
    monkeypatch.undo()
    item = secrets.lookup_item(attributes)
    assert item is not None, "both stores succeeded but the item is gone"
    assert item.secret in ("small", large)


def test_a_small_write_to_an_item_keyring_that_fails_leaves_the_old_value(
    fresh_session_keyring: int, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A small payload for an item that has an item keyring goes into a payload keyring there; if
    publishing it fails (EDQUOT), readers still get the old value, not the failed write's."""
    import errno

    store = KeyStore("session")
    big = b"B" * 40000
    item = store.put('{"a":"b"}', big)

    def link(key_id: int, keyring: int) -> None:
        raise keyutils.QuotaExceededError(errno.EDQUOT, "keyctl_link")

    monkeypatch.setattr(keyutils, "link", link)
    with pytest.raises(StoreError):
        store.put('{"a":"b"}', b"failed write")
    monkeypatch.undo()
    assert store.get('{"a":"b"}') == (item, big)
    assert list(store.entries()) == [(item, '{"a":"b"}')]


def test_a_foreign_member_the_store_cannot_view_does_not_make_a_search_list_it_again(
    fresh_session_keyring: int, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A member this process may not view (EACCES at KEYCTL_DESCRIBE) stays where it is: listing
    the store again finds it again, so a search lists the store once (one KEYCTL_READ of it)."""
    secrets = SecretStore("session")
    secrets.store({"k": "v"}, "label", "secret")
    ring = secrets.keys.ring()
    assert ring is not None
    foreign = keyutils.add_key("user", "not-ours", b"x", ring)
    keyutils.setperm(foreign, 0)  # nobody may view it, possessor included
    with pytest.raises(keyutils.KeyPermissionError):
        keyutils.describe(foreign)
    real_ids = keyutils.keyring_ids
    listings: list[int] = []

    def keyring_ids(keyring: int) -> list[int]:
        if keyring == ring:
            listings.append(keyring)
        return real_ids(keyring)

    monkeypatch.setattr(keyutils, "keyring_ids", keyring_ids)
    try:
        assert [i.secret for i in secrets.search({"k": "v"})] == ["secret"]
        assert len(listings) == 1
        listings.clear()
        assert [i.attributes for i in secrets.search({}, load=False)] == [{"k": "v"}]
        assert len(listings) == 1
    finally:
        monkeypatch.undo()
        keyutils.unlink(foreign, ring)
