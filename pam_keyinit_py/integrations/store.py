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
A missing ``keyinit:secrets`` keyring is made in the thread keyring and
KEYCTL_MOVE'd into its location with KEYCTL_MOVE_EXCL, so threads or processes
that create it at once end up sharing one (:meth:`KeyStore.ring`).
The process keyring vanishes with the process, as does the thread keyring
where a reader holds what it reads and a writer builds what it publishes
(below); nothing else is touched.

One ``user`` key holds at most 32,767 bytes and this kernel has no
``big_key`` type, so a larger payload goes into an **item keyring**: a
possessor-only keyring with the item's description that holds one **payload
keyring** ``keyinit:payload`` whose members are ``user`` keys named
``<index>/<count>``.  A new version's payload keyring is built in the writer's
thread keyring and linked into the item keyring last (KEYCTL_LINK displaces the
previous one in one step), so the payload keyring an item holds is always
whole.  The item keyring itself stays: it is never displaced.  An item's
first one is built whole in the thread keyring and KEYCTL_MOVE'd into the
store with KEYCTL_MOVE_EXCL; a writer whose move is refused publishes its
payload keyring in the one that got there first.  So a write that landed in
an item keyring stays until a later write lands there, and put() returns the
item keyring that readers find.

Readers never miss an item that is being replaced (:meth:`KeyStore.get`):

- a ``user`` key is replaced in place (add_key updates it), one KEYCTL_READ
  returns the old payload or the new one;
- a payload keyring is found by KEYCTL_SEARCH *with a destination*: the same
  call links it into the reader's thread keyring, so it stays possessed and
  alive (with all its chunks) after a newer one displaces it.  Not @p: the
  process's other threads share it, so another reader's unlink, or a writer
  building a keyring of the same description there, would drop the hold;
- an item only ever turns from a ``user`` key into an item keyring, never back:
  a payload that shrinks is written as a one-chunk payload keyring.  put()
  links the item keyring before it removes the ``user`` key, so a reader that
  misses the ``user`` key (or loses it before its KEYCTL_READ) is sure to find
  the item keyring.  Were both directions allowed, a writer that changes shape
  in a loop could slip a change between each two searches of a reader, without
  bound;
- a listing of the store (a query that is not an exact attribute set) can lose
  a member between KEYCTL_READ of the store and KEYCTL_DESCRIBE or KEYCTL_READ
  of the member.  A member leaves only when it is deleted, when an item keyring
  linked before it takes over from a ``user`` key, or when ``replace`` removes
  it after its successor was linked (:mod:`.secret_store`); so one listing more
  finds what took its place, and an item keyring found there is not displaced.
  (Only a loop of ``replace`` writes that each change the attributes can outrun
  a listing; no loop of writes to the same item can.)

Nothing here KEYCTL_UNLINKs a member of the store (or the store from its
location) by a serial read earlier: KEYCTL_UNLINK removes whichever key has
that one's type and description (the keyring's index key), which by then may
be the live keyring another writer put in place of a dead one.  So removing an
item only invalidates it (the kernel's garbage collector unlinks it a moment
later), and a KEYCTL_MOVE_EXCL refused while no live keyring of the name is
found waits for that collection (:data:`RETRY_DELAYS`).  A *revoked* keyring
stays linked for key_gc_delay (5 minutes): a write that needs its place fails
with a message naming it and the ``keyctl unlink`` that removes it.

A store written before item keyrings may hold a bare chunk keyring (the chunks
directly inside, no payload keyring): it is read the same way, held in the
thread keyring, and the next write converts it in place: it links a payload
keyring into it and only then removes the chunks, so a reader whose chunk went
missing finds that payload keyring when it looks again (:meth:`KeyStore.read`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

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
PAYLOAD_NAME = "keyinit:payload"  # the one keyring in an item keyring: the current version's chunks
# The waits between the attempts of a write when KEYCTL_MOVE_EXCL was refused but no live keyring
# of that description is there (or what it found went away): the first retry is at once (another
# writer's keyring is found by the next search), later ones wait for the kernel's garbage collector,
# which removes an invalidated key from its keyrings a moment after KEYCTL_INVALIDATE.  About 1.3 s
# in all; a revoked key stays linked for key_gc_delay (300 s) and ends the write with an error.
RETRY_DELAYS = (0.0, 0.0, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64)
# Where a reader holds what it reads and a writer builds what it publishes: per thread, so
# neither meets another thread's keyring of the same description there.
HOLD = keyutils.KEY_SPEC_THREAD_KEYRING


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
# Also gone for this process: a displaced keyring is no longer possessed (EACCES).
_UNREACHABLE = (*_GONE, keyutils.KeyPermissionError)


def dead_members(keyring: int, type_: str, description: str) -> list[int]:
    """The members of ``keyring`` that are dead (KEYCTL_DESCRIBE says revoked, expired or gone):
    only those /proc/keys shows as ``type_`` ``description`` if it shows any (it lists only keys
    the caller may view), else all of them.  Best effort, for an error message: [] on failure."""
    try:
        dead = []
        for key in keyutils.keyring_ids(keyring):
            try:
                keyutils.describe(key)
            except _GONE:
                dead.append(key)
            except keyutils.KeyutilsError:
                pass
        if len(dead) > 1:
            from pam_keyinit_py.keyutils.proc import read_keys

            named = {k.id for k in read_keys()
                     if k.type == type_ and k.description.startswith(f"{description}: ")}
            dead = [key for key in dead if key in named] or dead
        return dead
    except (keyutils.KeyutilsError, OSError, ValueError):
        return []


def blocked(keyring: int, type_: str, description: str, what: str) -> StoreError:
    """The StoreError for a write whose KEYCTL_MOVE_EXCL into ``keyring`` stayed refused: a dead
    (revoked) key of that description is still linked there, named with how to remove it."""
    try:
        parent = keyring if keyring > 0 else keyutils.get_keyring_id(keyring)
    except keyutils.KeyutilsError:
        parent = keyring
    dead = dead_members(parent, type_, description)
    if not dead:
        return StoreError(f"{what} kept changing during the write; try again")
    serial = str(dead[0]) if len(dead) == 1 else "<serial>"
    which = "" if len(dead) == 1 else f" (one of {', '.join(map(str, dead))})"
    return StoreError(
        f"{what} is revoked (or expired) but still linked in keyring {parent}{which}, which "
        f"refuses a new one until the kernel drops it (key_gc_delay, 5 minutes later); "
        f"remove it now with: keyctl unlink {serial} {parent}"
    )


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

        With ``create``, a missing keyring is made in the calling thread's keyring
        and KEYCTL_MOVE'd into the parent with KEYCTL_MOVE_EXCL, which refuses
        (EEXIST) if another thread or process put one there first; then that one
        is used.  (Made in @p, which the process's threads share, a second
        thread's keyring displaced the first's there; linked into the parent
        without EXCL, it displaced the first's store keyring with the items just
        written into it.)

        A refused move with no live keyring found means a dead one (invalidated and not yet
        collected, or revoked) still holds the place: we wait for the kernel to collect it
        (:data:`RETRY_DELAYS`) and never KEYCTL_UNLINK it ourselves, since KEYCTL_UNLINK removes
        whichever key has that type and description, which may by then be another writer's
        live keyring with the items it reported stored.  A revoked one stays for minutes: then
        the error names it and how to remove it.
        """
        try:
            parent = self._parent()
            for delay in RETRY_DELAYS:
                if delay:
                    time.sleep(delay)
                ring = self._find_ring(parent)
                if ring is not None or not create:
                    return ring
                self._create_ring(parent)
            raise blocked(parent, "keyring", self.name, f"the {self.name} keyring")
        except keyutils.KeyutilsError as exc:
            raise explain(exc) from None

    def _find_ring(self, parent: int) -> int | None:
        """KEYCTL_SEARCH ``parent`` for our keyring, linking it into @p; None if no direct member."""
        try:
            ring = keyutils.search(parent, "keyring", self.name, keyutils.KEY_SPEC_PROCESS_KEYRING)
        except (keyutils.NoKeyError, keyutils.KeyExpiredError, keyutils.KeyRevokedError):
            return None
        if ring not in keyutils.keyring_ids(parent):
            keyutils.unlink(ring, keyutils.KEY_SPEC_PROCESS_KEYRING)
            return None
        return ring

    def _create_ring(self, parent: int) -> None:
        """add_key our keyring in @t, make it possessor-only (before anyone else can reach it), then
        KEYCTL_MOVE it into ``parent`` with KEYCTL_MOVE_EXCL; if one is there, ours is dropped."""
        made = keyutils.add_key("keyring", self.name, None, HOLD)
        try:
            keyutils.setperm(made, POSSESSOR_ONLY)
            keyutils.move(made, HOLD, parent, keyutils.KEYCTL_MOVE_EXCL)
        except keyutils.KeyExistsError:
            # Another thread's or process's, found by the next search; or a dead one that
            # KEYCTL_SEARCH skips but that refuses the move until the kernel collects it.
            pass
        finally:
            self._release([made])  # in @t only if it was not moved: then it goes

    def _search(self, ring: int, type_: str, description: str, dest: int = 0) -> int | None:
        """KEYCTL_SEARCH ``ring``'s tree, linking the hit into ``dest`` if non-zero; None if absent."""
        try:
            return keyutils.search(ring, type_, description, dest)
        except _UNREACHABLE:
            return None
        except keyutils.KeyutilsError as exc:
            raise explain(exc) from None

    @staticmethod
    def _release(keys: list[int]) -> None:
        """KEYCTL_UNLINK each of ``keys`` from the thread keyring, where it was held."""
        for key in keys:
            try:
                keyutils.unlink(key, HOLD)
            except keyutils.KeyutilsError:
                pass  # displaced there by a later hold of the same description, or gone

    def find(self, description: str) -> int | None:
        """The serial of item ``description`` (a ``user`` key or an item keyring); None if absent."""
        found = self.get(description)
        return None if found is None else found[0]

    def get(self, description: str) -> tuple[int, bytes] | None:
        """Item ``description`` (its serial) and its payload, or None if there is no such item.

        KEYCTL_SEARCH for its ``user`` key and KEYCTL_READ; failing that,
        KEYCTL_SEARCH for its item keyring, held in the thread keyring while
        :meth:`read` reads it (see the module docstring).
        """
        ring = self.ring()
        if ring is None:
            return None
        key = self._search(ring, "user", description)
        if key is not None:
            payload = self._read_user(key)
            if payload is not None:
                return key, payload
            # Removed since the search: put() linked the item keyring before removing it.
        held: list[int] = []
        try:
            key = self._search(ring, "keyring", description, HOLD)
            if key is None:
                return None
            held.append(key)
            if key not in self._members(ring):
                # KEYCTL_SEARCH prefers a direct member, so this one was removed since the
                # search or is a look-alike deeper down (found again).
                again = self._search(ring, "keyring", description, HOLD)
                if again is None or again == key:
                    return None
                held.append(again)
                key = again
            payload = self.read(key)
            return None if payload is None else (key, payload)
        finally:
            self._release(held)

    @staticmethod
    def _members(ring: int) -> list[int]:
        try:
            return keyutils.keyring_ids(ring)
        except _GONE:
            return []
        except keyutils.KeyutilsError as exc:
            raise explain(exc) from None

    def put(self, description: str, payload: bytes) -> int:
        """Store ``payload`` under ``description``: one ``user`` key, or an item keyring if larger.

        add_key on an existing (type, description) updates that key in place, so
        readers never see a missing item.  KEYCTL_SETPERM then makes it
        possessor-only (a new key starts with the kernel's default mask, which
        lets the owner *view* the description, never read the payload).

        An item that has an item keyring keeps it (see the module docstring): a
        small payload for it is a one-chunk payload keyring, also when a
        concurrent writer made the item keyring just before.  The ``user`` key of
        an item that got an item keyring is invalidated only after the item
        keyring is linked into the store.
        """
        if not description or len(description.encode()) > MAX_DESCRIPTION:
            raise StoreError(f"item attributes too long: at most {MAX_DESCRIPTION} bytes once encoded")
        if len(payload) > MAX_USER_PAYLOAD * MAX_CHUNKS:
            raise StoreError(f"item too large: at most {MAX_USER_PAYLOAD * MAX_CHUNKS} bytes")
        ring = self.ring(create=True)
        assert ring is not None
        written: int | None = None  # a user key holding this write's payload
        try:
            # An item that has an item keyring goes straight to it: a user key written first
            # would outlive a failed _put_large (EDQUOT, likely: it needs a second copy of the
            # value) and get(), which looks at user keys first, would return the failed write.
            if len(payload) <= MAX_USER_PAYLOAD and self._search(ring, "keyring", description) is None:
                key = keyutils.add_key("user", description, payload, ring)
                try:
                    keyutils.setperm(key, POSSESSOR_ONLY)
                except _GONE:
                    pass  # a concurrent writer gave the item an item keyring and removed this key
                else:
                    if self._search(ring, "keyring", description) is None:
                        return key
                    written = key
                # A concurrent writer made the item keyring meanwhile.  Readers see our user key
                # (if still there) until the item keyring holds our payload too.
            try:
                key = self._put_large(ring, description, payload)
            except BaseException:
                if written is not None:
                    self._forget(written)
                raise
            stale = self._search(ring, "user", description)
        except keyutils.KeyutilsError as exc:
            raise explain(exc) from None
        if stale is not None and stale in self._members(ring):
            self.remove(stale)  # the item's user key, now superseded by the item keyring
        return key

    @staticmethod
    def _forget(key: int) -> None:
        """KEYCTL_INVALIDATE the user key of a write that failed after its add_key: the item keyring
        (linked already, by the writer that made it) holds the value readers find instead."""
        try:
            keyutils.invalidate(key)
        except keyutils.KeyutilsError:
            pass  # removed already, by the writer that made the item keyring

    def _put_large(self, ring: int, description: str, payload: bytes) -> int:
        """Build a payload keyring in @t, then KEYCTL_LINK it into the item keyring (the publishing
        step) and return that item keyring.

        An item without one gets a new item keyring, built in @t with the payload keyring in it
        and KEYCTL_MOVE'd into ``ring`` with KEYCTL_MOVE_EXCL: if another writer's item keyring
        got there first, the move is refused (EEXIST) and the payload keyring is published in
        that one instead.  An item keyring is thus never displaced: a write that landed in it
        stays until a later one lands there too.  (A plain KEYCTL_LINK of a second new item
        keyring would drop whatever a third writer had published in the first, and that writer's
        put() would return a keyring no longer in the store.)
        """
        version = self._build_payload(payload)
        made: int | None = None
        published = False
        try:
            for delay in RETRY_DELAYS:
                if delay:
                    time.sleep(delay)
                item, legacy = self._item_keyring(ring, description)
                if item is not None:
                    try:
                        keyutils.link(version, item)  # displaces the item's previous payload keyring
                    except _UNREACHABLE:
                        # Removed (clear) since the search: the item gets a new item keyring once
                        # the kernel has collected the invalidated one.
                        continue
                    published = True
                    if legacy:
                        self._drop_chunks(item)
                    return item
                if made is None:
                    made = keyutils.add_key("keyring", description, None, HOLD)
                    keyutils.setperm(made, POSSESSOR_ONLY)
                    keyutils.link(version, made)
                try:
                    keyutils.move(made, HOLD, ring, keyutils.KEYCTL_MOVE_EXCL)
                except keyutils.KeyExistsError:
                    # Another writer's item keyring is in: publish there.  Or a dead one that
                    # KEYCTL_SEARCH skips: wait for the kernel to collect it (never KEYCTL_UNLINK
                    # it: that would remove whatever item keyring has this description by then).
                    continue
                published = True
                return made
            raise blocked(ring, "keyring", description, "the item's keyring")
        except BaseException:
            if not published:
                self._drop(version)
            raise
        finally:
            # An unpublished item keyring of ours goes with its hold (its payload keyring, if
            # published elsewhere, stays there).
            self._release([version] if made is None else [version, made])

    def _item_keyring(self, ring: int, description: str) -> tuple[int | None, bool]:
        """KEYCTL_SEARCH ``ring`` for item ``description``'s keyring: (its serial or None, whether
        it is an earlier-format chunk keyring, i.e. holds no payload keyring)."""
        item = self._search(ring, "keyring", description)
        if item is None or item not in self._members(ring):
            return None, False  # none, or only a look-alike deeper down
        return item, self._search(item, "keyring", PAYLOAD_NAME) is None

    def _drop_chunks(self, item: int) -> None:
        """KEYCTL_INVALIDATE and KEYCTL_UNLINK the ``user`` members of an earlier-format chunk
        keyring, once the payload keyring linked into it took over (see :meth:`read`); unlinked
        too, so that the item keyring holds only that at once (the kernel collects later)."""
        for key in self._members(item):
            try:
                if not KeyInfo.of(key).is_keyring:
                    keyutils.invalidate(key)
                    keyutils.unlink(key, item)
            except (keyutils.KeyutilsError, ValueError):
                pass  # gone already (a concurrent writer converting the same item)

    def _build_payload(self, payload: bytes) -> int:
        """A payload keyring in @t holding ``payload`` as ``<index>/<count>`` user keys (add_key)."""
        pieces = [payload[i : i + MAX_USER_PAYLOAD] for i in range(0, len(payload), MAX_USER_PAYLOAD)]
        # A keyring has no update operation, so add_key always makes a new one here.
        version = keyutils.add_key("keyring", PAYLOAD_NAME, None, HOLD)
        try:
            keyutils.setperm(version, POSSESSOR_ONLY)
            for index, piece in enumerate(pieces):
                key = keyutils.add_key("user", f"{index}/{len(pieces)}", piece, version)
                keyutils.setperm(key, POSSESSOR_ONLY)
        except BaseException:
            self._drop(version)
            self._release([version])
            raise
        return version

    def _drop(self, keyring: int, depth: int = 0) -> None:
        """KEYCTL_INVALIDATE a keyring's members first (their quota is freed at once; a payload
        keyring's chunks too), then the keyring."""
        try:
            for key in keyutils.keyring_ids(keyring):
                try:
                    if depth == 0 and KeyInfo.of(key).is_keyring:
                        self._drop(key, depth + 1)
                    else:
                        keyutils.invalidate(key)
                except (keyutils.KeyutilsError, ValueError):
                    pass
            keyutils.invalidate(keyring)
        except keyutils.KeyutilsError:
            pass

    @staticmethod
    def _read_user(key: int) -> bytes | None:
        """KEYCTL_READ a ``user`` key; None if it is gone."""
        try:
            return keyutils.read(key)
        except _UNREACHABLE:
            return None
        except keyutils.KeyutilsError as exc:
            raise explain(exc) from None

    def read(self, key: int) -> bytes | None:
        """An item's payload: KEYCTL_READ of its ``user`` key, or the chunks of its item keyring's
        payload keyring (held in @t while read); None if gone or incomplete."""
        try:
            is_keyring = KeyInfo.of(key).is_keyring
        except _UNREACHABLE:
            return None
        except keyutils.KeyutilsError as exc:
            raise explain(exc) from None
        if not is_keyring:
            return self._read_user(key)
        version = self._search(key, "keyring", PAYLOAD_NAME, HOLD)
        if version is None:
            chunks = self._read_chunks(key)  # an earlier-format chunk keyring (or none left)
            if chunks is not None:
                return chunks
            # A writer converts it in place: it links a payload keyring in before it removes the
            # chunks, so a chunk that went missing means the payload keyring is there now.
            version = self._search(key, "keyring", PAYLOAD_NAME, HOLD)
            if version is None:
                return None
        try:
            return self._read_chunks(version)
        finally:
            self._release([version])

    @staticmethod
    def _read_chunks(keyring: int) -> bytes | None:
        """KEYCTL_READ the ``<index>/<count>`` user keys of ``keyring`` and join them; None if any is
        missing or foreign."""
        try:
            parts: dict[int, bytes] = {}
            count = None
            for chunk in keyutils.keyring_ids(keyring):
                info = KeyInfo.of(chunk)
                index, _, total = info.description_bytes.partition(b"/")
                if info.type_bytes != b"user" or not index.isdigit() or not total.isdigit():
                    return None
                if count is None:
                    count = int(total)
                if int(total) != count:
                    return None
                parts[int(index)] = keyutils.read(chunk)
        except _UNREACHABLE:
            return None
        except keyutils.KeyutilsError as exc:
            raise explain(exc) from None
        if count is None or count > MAX_CHUNKS or sorted(parts) != list(range(count)):
            return None
        return b"".join(parts[i] for i in range(count))

    def remove(self, key: int) -> None:
        """KEYCTL_INVALIDATE: drop the item from every keyring and free its payload now.

        Only invalidated, never KEYCTL_UNLINKed from the store: KEYCTL_UNLINK removes whichever
        key has this one's type and description, which may by then be the live item keyring a
        writer put in after this one died.  The kernel collects an invalidated key a moment
        later; until then a new item keyring's KEYCTL_MOVE_EXCL waits (see :meth:`_put_large`).
        """
        try:
            if KeyInfo.of(key).is_keyring:
                self._drop(key)
                return
            keyutils.invalidate(key)
        except _GONE:
            pass
        except keyutils.KeyutilsError as exc:
            raise explain(exc) from None

    def entries(self, seen: set[int] | None = None) -> Iterator[tuple[int, str]]:
        """(serial, description) of each item in our keyring: ``user`` keys and item keyrings.

        KEYCTL_READ of our keyring, then KEYCTL_DESCRIBE of each member (see :meth:`items`).
        Serials in ``seen`` are skipped, and every listed serial is added to it.
        """
        for key, description, _payload in self._listing(seen, None, load=False):
            yield key, description

    def items(self, wanted: Callable[[str], bool], seen: set[int] | None = None,
              ) -> Iterator[tuple[int, str, bytes]]:
        """(serial, description, payload) of each item whose description ``wanted`` accepts.

        As :meth:`entries`, then :meth:`read` of each wanted item.  An item gone since the
        listing is looked up by its description (:meth:`get`: a ``user`` key that gave way to an
        item keyring is found there); one that is not found sends us to list once more.
        """
        for key, description, payload in self._listing(seen, wanted, load=True):
            assert payload is not None
            yield key, description, payload

    def _listing(self, seen: set[int] | None, wanted: Callable[[str], bool] | None, load: bool,
                 ) -> Iterator[tuple[int, str, bytes | None]]:
        """The one listing loop: KEYCTL_READ of our keyring, KEYCTL_DESCRIBE of each member, and
        KEYCTL_READ of each wanted one if ``load``.

        A member that left since the listing (ENOKEY, EKEYREVOKED, EKEYEXPIRED at its describe,
        or its read and its item gone by description too) makes one listing more, which finds
        what took its place (see the module docstring).  A member we may not view (EACCES: not
        ours) is only skipped: it does not go away by listing again.
        """
        ring = self.ring()
        if ring is None:
            return
        seen = set() if seen is None else seen
        given: set[int] = set()  # serials yielded: a get() may return a member listed later
        for _listing in range(2):
            lost = False
            for key in self._members(ring):
                if key in seen:
                    continue
                seen.add(key)
                try:
                    info = KeyInfo.of(key)
                except _GONE:
                    lost = True  # removed since the listing
                    continue
                except (keyutils.KeyutilsError, ValueError):
                    continue  # a foreign key we may not view
                if info.type not in ("user", "keyring"):
                    continue
                if wanted is not None and not wanted(info.description):
                    continue
                payload = None
                if load:
                    payload = self.read(key)
                    if payload is None:
                        current = self.get(info.description)
                        if current is None:
                            lost = True
                            continue
                        key, payload = current
                        seen.add(key)
                if key in given:
                    continue
                given.add(key)
                yield key, info.description, payload
            if not lost:
                return
