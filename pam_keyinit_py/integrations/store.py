"""The dedicated keyring of the integrations and its possessor-only ``user`` keys.

:class:`KeyStore` finds (or creates) the keyring ``keyinit:secrets`` directly
inside the chosen location (persistent, user or session keyring) and reads and
writes ``user`` keys in it.  Every key and the keyring itself get the
permission mask ``KEY_POS_ALL``: only a process that *possesses* them (reaches
them from its own thread/process/session keyrings) can view, read or search
them; the owner's other processes, its group and others get nothing.

Possession is why the keyring is always reached through this process's own
process keyring: a key in ``@u`` or in the persistent keyring is not possessed
through its serial number alone (the kernel looks for it from @t/@p/@s), so
the found keyring is linked into ``@p`` (KEYCTL_SEARCH with a destination, or
KEYCTL_GET_PERSISTENT into @p), as MIT krb5's KEYRING ccache does.
The process keyring vanishes with the process, as does the thread keyring a
reader holds a chunk keyring in (below); nothing else is touched.

One ``user`` key holds at most 32,767 bytes and this kernel has no
``big_key`` type, so a larger payload is stored as a **chunk keyring**: a
possessor-only keyring with the item's description whose members are
``user`` keys named ``<index>/<count>``.  It is built in ``@p`` first and
linked into the store last (KEYCTL_LINK displaces an older keyring of the same
description in one step), so a chunk keyring in the store is always whole.

Readers never miss an item that is being replaced (:meth:`KeyStore.get`):

- a ``user`` key is replaced in place (add_key updates it), one KEYCTL_READ
  returns the old payload or the new one;
- a chunk keyring is found by KEYCTL_SEARCH *with a destination*: the same call
  links it into the reader's thread keyring, so it stays possessed and alive
  (with all its chunks) after a newer one displaces it from the store.  Not
  @p: the process's other threads share it, so another reader's unlink, or a
  writer building a chunk keyring of the same description there, would drop
  the hold;
- an item only ever turns from a ``user`` key into a chunk keyring, never back:
  a payload that shrinks is written as a one-chunk keyring.  put() links the
  chunk keyring before it removes the ``user`` key, so a reader that misses the
  ``user`` key (or loses it before its KEYCTL_READ) is sure to find the chunk
  keyring.  Were both directions allowed, a writer that changes shape in a loop
  could slip a change between each two searches of a reader, without bound.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from pam_keyinit_py import keyutils
from pam_keyinit_py.errors import KeyinitError
from pam_keyinit_py.keyutils.model import KeyInfo

LOCATIONS = ("persistent", "user", "session")
DEFAULT_LOCATION = "persistent"
LOCATION_ENV = "KEYINIT_STORE_LOCATION"
RING_NAME = "keyinit:secrets"
# No user/group/other bits: reading needs possession, not only the uid.
POSSESSOR_ONLY = keyutils.KEY_POS_ALL
MAX_DESCRIPTION = 4095  # the kernel refuses longer key descriptions (EINVAL)
MAX_USER_PAYLOAD = 32767  # user_preparse() refuses a larger payload (EINVAL); no big_key here
MAX_CHUNKS = 64  # ~2 MiB per item: far beyond any quota, but bounds a hostile chunk keyring
SYSCTL_FILE = "/etc/sysctl.d/60-keyinit-keys.conf"


class StoreError(KeyinitError):
    """The store cannot do what was asked; the message is safe to show (never holds a secret)."""


class LocationError(StoreError, ValueError):
    """An unknown keyring location was configured."""


def resolve_location(location: str | None = None) -> str:
    """The location to use: ``location``, else ``$KEYINIT_STORE_LOCATION``, else ``persistent``."""
    value = location if location is not None else os.environ.get(LOCATION_ENV) or DEFAULT_LOCATION
    value = value.strip().lower()
    if value not in LOCATIONS:
        raise LocationError(
            f"unknown keyring location {value!r}: expected one of {', '.join(LOCATIONS)}"
        )
    return value


def quota_hint() -> str:
    """Which kernel.keys sysctl stops the caller's uid, from /proc/key-users and the sysctls."""
    uid = os.geteuid()
    root = "root_" if uid == 0 else ""
    try:
        from pam_keyinit_py.keyutils.proc import key_user

        usage = key_user(uid)
    except (OSError, ValueError):
        usage = None
    if usage is not None and usage.qnkeys >= usage.maxkeys:
        limit = f"kernel.keys.{root}maxkeys"
        used = f"{usage.qnkeys}/{usage.maxkeys} keys in use"
    else:
        limit = f"kernel.keys.{root}maxbytes"
        used = "" if usage is None else f"{usage.qnbytes}/{usage.maxbytes} bytes in use"
    detail = f" ({used})" if used else ""
    return (f"key quota exceeded for uid {uid}{detail}: raise {limit} "
            f"(e.g. in {SYSCTL_FILE}, then sysctl --system)")


def explain(exc: keyutils.KeyutilsError) -> StoreError:
    """A readable StoreError for a failed keyctl call (errno text only, never payloads)."""
    if isinstance(exc, keyutils.QuotaExceededError):
        return StoreError(quota_hint())
    if isinstance(exc, keyutils.KeyNotSupportedError) and exc.operation == "keyctl_get_persistent":
        return StoreError(
            "persistent keyrings are not supported by this kernel; "
            f"set {LOCATION_ENV}=user or session"
        )
    return StoreError(f"kernel keyring error: {exc}")


_GONE = (keyutils.NoKeyError, keyutils.KeyExpiredError, keyutils.KeyRevokedError)


class KeyStore:
    """The ``keyinit:secrets`` keyring in one location, and its ``user`` keys.

    Every method resolves the keyring afresh (three or four keyctl calls), so a
    long-lived process never writes into a keyring that was unlinked meanwhile.
    Kernel failures are raised as :class:`StoreError`.
    """

    def __init__(self, location: str | None = None, name: str = RING_NAME) -> None:
        self.location = resolve_location(location)
        self.name = name

    def _parent(self) -> int:
        """The keyring that holds ours: a special id, or the persistent keyring linked into @p."""
        if self.location == "session":
            return keyutils.KEY_SPEC_SESSION_KEYRING
        if self.location == "user":
            return keyutils.KEY_SPEC_USER_KEYRING
        # KEYCTL_GET_PERSISTENT(-1, @p): the caller's own persistent keyring, now possessed
        # through @p; the call also resets its 3-day expiry timer.
        return keyutils.get_persistent(-1, keyutils.KEY_SPEC_PROCESS_KEYRING)

    def ring(self, create: bool = False) -> int | None:
        """The serial of our keyring (linked into @p so it is possessed); None if absent.

        KEYCTL_SEARCH looks at a keyring's own members before nested ones, so a
        hit that is not a direct member means there is no direct one: such a
        look-alike (e.g. the persistent store seen through @u inside @s) is
        unlinked from @p again and ignored.
        """
        try:
            parent = self._parent()
            try:
                ring = keyutils.search(parent, "keyring", self.name, keyutils.KEY_SPEC_PROCESS_KEYRING)
            except (keyutils.NoKeyError, keyutils.KeyExpiredError, keyutils.KeyRevokedError):
                ring = None
            if ring is not None and ring not in keyutils.keyring_ids(parent):
                keyutils.unlink(ring, keyutils.KEY_SPEC_PROCESS_KEYRING)
                ring = None
            if ring is not None or not create:
                return ring
            # Create it in @p first, so its permissions are possessor-only before anyone
            # else can reach it, then link it into the parent.
            ring = keyutils.add_key("keyring", self.name, None, keyutils.KEY_SPEC_PROCESS_KEYRING)
            keyutils.setperm(ring, POSSESSOR_ONLY)
            keyutils.link(ring, parent)
            return ring
        except keyutils.KeyutilsError as exc:
            raise explain(exc) from None

    def _search(self, ring: int, type_: str, description: str, dest: int = 0) -> int | None:
        try:
            return keyutils.search(ring, type_, description, dest)
        except _GONE:
            return None
        except keyutils.KeyutilsError as exc:
            raise explain(exc) from None

    def find(self, description: str) -> int | None:
        """KEYCTL_SEARCH for item ``description`` (a ``user`` key, else a chunk keyring); None if absent.

        Only the serial: a chunk keyring may be displaced before it is read; use :meth:`get`.
        """
        found = self.get(description)
        return None if found is None else found[0]

    def get(self, description: str) -> tuple[int, bytes] | None:
        """Item ``description`` and its payload, or None if there is no such item.

        KEYCTL_SEARCH for its ``user`` key and KEYCTL_READ; failing that,
        KEYCTL_SEARCH for its chunk keyring with the thread keyring as destination
        (see the module docstring: the reader holds the version it found), read its
        chunks, and KEYCTL_UNLINK it from the thread keyring again.
        """
        ring = self.ring()
        if ring is None:
            return None
        key = self._search(ring, "user", description)
        if key is not None:
            payload = self.read(key)
            if payload is not None:
                return key, payload
            # Removed since the search: put() published the chunk keyring before removing it.
        return self._get_chunked(ring, description)

    def _get_chunked(self, ring: int, description: str) -> tuple[int, bytes] | None:
        """KEYCTL_SEARCH item ``description``'s chunk keyring into @t and read it whole."""
        anchor = keyutils.KEY_SPEC_THREAD_KEYRING
        held: list[int] = []
        try:
            key = self._search(ring, "keyring", description, anchor)
            if key is None:
                return None
            held.append(key)
            if key not in self._members(ring):
                # KEYCTL_SEARCH prefers a direct member, so this one was displaced since the
                # search (a newer one is there now) or is a look-alike deeper down (found again).
                again = self._search(ring, "keyring", description, anchor)
                if again is None or again == key:
                    return None
                held.append(again)
                key = again
            payload = self.read(key)
            return None if payload is None else (key, payload)
        finally:
            for key in held:
                try:
                    keyutils.unlink(key, anchor)
                except keyutils.KeyutilsError:
                    pass  # displaced from @t by the second search, or gone

    @staticmethod
    def _members(ring: int) -> list[int]:
        try:
            return keyutils.keyring_ids(ring)
        except _GONE:
            return []
        except keyutils.KeyutilsError as exc:
            raise explain(exc) from None

    def put(self, description: str, payload: bytes) -> int:
        """Store ``payload`` under ``description``: one ``user`` key, or a chunk keyring if larger.

        add_key on an existing (type, description) updates that key in place, so
        readers never see a missing item.  KEYCTL_SETPERM then makes it
        possessor-only (a new key starts with the kernel's default mask, which
        lets the owner *view* the description, never read the payload).

        An item that is a chunk keyring stays one (see the module docstring): a
        small payload for it is a one-chunk keyring.  The ``user`` key of an item
        that became a chunk keyring is invalidated only after the chunk keyring is
        linked into the store.
        """
        if not description or len(description.encode()) > MAX_DESCRIPTION:
            raise StoreError(f"item attributes too long: at most {MAX_DESCRIPTION} bytes once encoded")
        if len(payload) > MAX_USER_PAYLOAD * MAX_CHUNKS:
            raise StoreError(f"item too large: at most {MAX_USER_PAYLOAD * MAX_CHUNKS} bytes")
        ring = self.ring(create=True)
        assert ring is not None
        try:
            if len(payload) <= MAX_USER_PAYLOAD:
                key = keyutils.add_key("user", description, payload, ring)
                keyutils.setperm(key, POSSESSOR_ONLY)
                if self._search(ring, "keyring", description) is None:
                    return key
                # Chunked already (or by a concurrent writer meanwhile): readers see our user
                # key until the chunk keyring holds our payload too.
            key = self._put_chunks(ring, description, payload)
            stale = self._search(ring, "user", description)
        except keyutils.KeyutilsError as exc:
            raise explain(exc) from None
        if stale is not None and stale in self._members(ring):
            self.remove(stale)  # the item's user key, now superseded by the chunk keyring
        return key

    def _put_chunks(self, ring: int, description: str, payload: bytes) -> int:
        """Build a chunk keyring in @p, then KEYCTL_LINK it into ``ring`` (the publishing step)."""
        spec = keyutils.KEY_SPEC_PROCESS_KEYRING
        pieces = [payload[i : i + MAX_USER_PAYLOAD] for i in range(0, len(payload), MAX_USER_PAYLOAD)]
        # A keyring has no update operation, so add_key always makes a new one here.
        chunks = keyutils.add_key("keyring", description, None, spec)
        try:
            keyutils.setperm(chunks, POSSESSOR_ONLY)
            for index, piece in enumerate(pieces):
                key = keyutils.add_key("user", f"{index}/{len(pieces)}", piece, chunks)
                keyutils.setperm(key, POSSESSOR_ONLY)
            keyutils.link(chunks, ring)  # displaces the previous chunk keyring of this item
        except BaseException:
            self._drop_chunks(chunks)
            raise
        finally:
            try:
                keyutils.unlink(chunks, spec)
            except keyutils.KeyutilsError:
                pass
        return chunks

    def _drop_chunks(self, chunks: int) -> None:
        """Invalidate the chunks first (their quota is freed at once), then the keyring."""
        try:
            for key in keyutils.keyring_ids(chunks):
                try:
                    keyutils.invalidate(key)
                except keyutils.KeyutilsError:
                    pass
            keyutils.invalidate(chunks)
        except keyutils.KeyutilsError:
            pass

    def read(self, key: int) -> bytes | None:
        """KEYCTL_READ an item's payload (joining a chunk keyring); None if gone or incomplete."""
        try:
            if not KeyInfo.of(key).is_keyring:
                return keyutils.read(key)
            parts: dict[int, bytes] = {}
            count = None
            for chunk in keyutils.keyring_ids(key):
                info = KeyInfo.of(chunk)
                index, _, total = info.description_bytes.partition(b"/")
                if info.type_bytes != b"user" or not index.isdigit() or not total.isdigit():
                    return None
                if count is None:
                    count = int(total)
                if int(total) != count:
                    return None
                parts[int(index)] = keyutils.read(chunk)
        except (*_GONE, keyutils.KeyPermissionError):
            # Replaced meanwhile: a displaced chunk keyring is no longer possessed (EACCES).
            return None
        except keyutils.KeyutilsError as exc:
            raise explain(exc) from None
        if count is None or count > MAX_CHUNKS or sorted(parts) != list(range(count)):
            return None
        return b"".join(parts[i] for i in range(count))

    def remove(self, key: int) -> None:
        """KEYCTL_INVALIDATE: drop the item from every keyring and free its payload now."""
        try:
            if KeyInfo.of(key).is_keyring:
                self._drop_chunks(key)
                return
            keyutils.invalidate(key)
        except _GONE:
            pass
        except keyutils.KeyutilsError as exc:
            raise explain(exc) from None

    def entries(self) -> Iterator[tuple[int, str]]:
        """(serial, description) of each item in our keyring: ``user`` keys and chunk keyrings."""
        ring = self.ring()
        if ring is None:
            return
        for key in self._members(ring):
            try:
                info = KeyInfo.of(key)
            except keyutils.KeyutilsError:
                continue  # gone meanwhile, or a foreign key we may not view
            if info.type in ("user", "keyring"):
                yield key, info.description
