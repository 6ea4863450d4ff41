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
The process keyring vanishes with the process; nothing else is touched.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from pam_keyinit_py import keyutils

LOCATIONS = ("persistent", "user", "session")
DEFAULT_LOCATION = "persistent"
LOCATION_ENV = "KEYINIT_STORE_LOCATION"
RING_NAME = "keyinit:secrets"
# No user/group/other bits: reading needs possession, not only the uid.
POSSESSOR_ONLY = keyutils.KEY_POS_ALL
MAX_DESCRIPTION = 4095  # the kernel refuses longer key descriptions (EINVAL)


class StoreError(Exception):
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


def explain(exc: keyutils.KeyutilsError) -> StoreError:
    """A readable StoreError for a failed keyctl call (errno text only, never payloads)."""
    if isinstance(exc, keyutils.QuotaExceededError):
        return StoreError(
            "key quota exceeded: a non-root user may own 200 keys and 20000 bytes "
            "(see /proc/key-users and /proc/sys/kernel/keys/maxkeys, maxbytes)"
        )
    if isinstance(exc, keyutils.KeyNotSupportedError) and exc.operation == "keyctl_get_persistent":
        return StoreError(
            "persistent keyrings are not supported by this kernel; "
            f"set {LOCATION_ENV}=user or session"
        )
    return StoreError(f"kernel keyring error: {exc}")


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

    def find(self, description: str) -> int | None:
        """KEYCTL_SEARCH for the ``user`` key ``description`` in our keyring; None if absent."""
        ring = self.ring()
        if ring is None:
            return None
        try:
            return keyutils.search(ring, "user", description)
        except (keyutils.NoKeyError, keyutils.KeyExpiredError, keyutils.KeyRevokedError):
            return None
        except keyutils.KeyutilsError as exc:
            raise explain(exc) from None

    def put(self, description: str, payload: bytes) -> int:
        """add_key(2) ``user`` key: create, or atomically replace the payload of, ``description``.

        add_key on an existing (type, description) updates that key in place, so
        readers never see a missing item.  KEYCTL_SETPERM then makes it
        possessor-only (a new key starts with the kernel's default mask, which
        lets the owner *view* the description, never read the payload).
        """
        if not description or len(description.encode()) > MAX_DESCRIPTION:
            raise StoreError(f"item attributes too long: at most {MAX_DESCRIPTION} bytes once encoded")
        ring = self.ring(create=True)
        try:
            key = keyutils.add_key("user", description, payload, ring)  # type: ignore[arg-type]
            keyutils.setperm(key, POSSESSOR_ONLY)
            return key
        except keyutils.KeyutilsError as exc:
            raise explain(exc) from None

    def read(self, key: int) -> bytes | None:
        """KEYCTL_READ a key's payload; None if it vanished meanwhile."""
        try:
            return keyutils.read(key)
        except (keyutils.NoKeyError, keyutils.KeyExpiredError, keyutils.KeyRevokedError):
            return None
        except keyutils.KeyutilsError as exc:
            raise explain(exc) from None

    def remove(self, key: int) -> None:
        """KEYCTL_INVALIDATE: drop the key from every keyring and free its payload now."""
        try:
            keyutils.invalidate(key)
        except (keyutils.NoKeyError, keyutils.KeyExpiredError, keyutils.KeyRevokedError):
            pass
        except keyutils.KeyutilsError as exc:
            raise explain(exc) from None

    def entries(self) -> Iterator[tuple[int, str]]:
        """(serial, description) of each ``user`` key in our keyring (KEYCTL_READ + DESCRIBE)."""
        ring = self.ring()
        if ring is None:
            return
        try:
            members = keyutils.keyring_ids(ring)
        except keyutils.KeyutilsError as exc:
            raise explain(exc) from None
        for key in members:
            try:
                raw = keyutils.describe(key)
            except keyutils.KeyutilsError:
                continue  # gone meanwhile, or a foreign key we may not view
            type_, _uid, _gid, _perm, description = raw.decode(errors="surrogateescape").split(";", 4)
            if type_ == "user":
                yield key, description
