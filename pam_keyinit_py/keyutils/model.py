"""A small object model above layer 0: keys, keyrings, permissions and tree walks.

``Key(id).info`` is the parsed KEYCTL_DESCRIBE; ``Keyring(id).children()``
reads a keyring's members with KEYCTL_READ; :func:`walk` yields the tree that
``keyctl show`` prints.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass

from . import calls
from .constants import KEY_SPEC_SESSION_KEYRING
from .errors import KeyutilsError


class Perm(enum.IntFlag):
    """The 32-bit key permission mask (possessor, user, group, other)."""

    POS_VIEW = 0x01000000
    POS_READ = 0x02000000
    POS_WRITE = 0x04000000
    POS_SEARCH = 0x08000000
    POS_LINK = 0x10000000
    POS_SETATTR = 0x20000000
    POS_ALL = 0x3F000000
    USR_VIEW = 0x00010000
    USR_READ = 0x00020000
    USR_WRITE = 0x00040000
    USR_SEARCH = 0x00080000
    USR_LINK = 0x00100000
    USR_SETATTR = 0x00200000
    USR_ALL = 0x003F0000
    GRP_VIEW = 0x00000100
    GRP_READ = 0x00000200
    GRP_WRITE = 0x00000400
    GRP_SEARCH = 0x00000800
    GRP_LINK = 0x00001000
    GRP_SETATTR = 0x00002000
    GRP_ALL = 0x00003F00
    OTH_VIEW = 0x00000001
    OTH_READ = 0x00000002
    OTH_WRITE = 0x00000004
    OTH_SEARCH = 0x00000008
    OTH_LINK = 0x00000010
    OTH_SETATTR = 0x00000020
    OTH_ALL = 0x0000003F

    def letters(self, shift: int) -> str:
        """``alswrv``-style letters for one 8-bit class (shift 24, 16, 8 or 0)."""
        bits = (int(self) >> shift) & 0x3F
        return "".join(c if bits & b else "-" for c, b in zip("alswrv", (32, 16, 8, 4, 2, 1), strict=True))


@dataclass(frozen=True)
class KeyInfo:
    """A parsed ``type;uid;gid;perm;description`` from KEYCTL_DESCRIBE."""

    type: str
    uid: int
    gid: int
    perm: Perm
    description: str

    @classmethod
    def parse(cls, raw: bytes) -> KeyInfo:
        """Split a KEYCTL_DESCRIBE string; the description may itself contain ';'."""
        type_, uid, gid, perm, desc = raw.decode(errors="surrogateescape").split(";", 4)
        return cls(type_, int(uid), int(gid), Perm(int(perm, 16)), desc)


class Key:
    """A key by serial number (or special id); every property is a live keyctl call."""

    def __init__(self, key_id: int) -> None:
        self.id = key_id

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.id})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Key) and self.serial == other.serial

    def __hash__(self) -> int:
        return hash(self.serial)

    @property
    def serial(self) -> int:
        """The real serial: special ids are resolved with KEYCTL_GET_KEYRING_ID."""
        return self.id if self.id > 0 else calls.get_keyring_id(self.id, False)

    @property
    def info(self) -> KeyInfo:
        """KEYCTL_DESCRIBE, parsed."""
        return KeyInfo.parse(calls.describe(self.id))

    def read(self) -> bytes:
        """KEYCTL_READ: the payload."""
        return calls.read(self.id)

    def update(self, payload: bytes | str) -> None:
        """KEYCTL_UPDATE."""
        calls.update(self.id, payload)

    def revoke(self) -> None:
        """KEYCTL_REVOKE."""
        calls.revoke(self.id)

    def invalidate(self) -> None:
        """KEYCTL_INVALIDATE."""
        calls.invalidate(self.id)

    def set_timeout(self, seconds: int) -> None:
        """KEYCTL_SET_TIMEOUT."""
        calls.set_timeout(self.id, seconds)

    def setperm(self, perm: int) -> None:
        """KEYCTL_SETPERM."""
        calls.setperm(self.id, int(perm))

    def chown(self, uid: int = -1, gid: int = -1) -> None:
        """KEYCTL_CHOWN."""
        calls.chown(self.id, uid, gid)


class Keyring(Key):
    """A keyring: a key whose payload is a list of member serials."""

    def children(self) -> list[Key]:
        """KEYCTL_READ on the keyring: its members, keyrings as :class:`Keyring`."""
        out: list[Key] = []
        for kid in calls.keyring_ids(self.id):
            try:
                is_ring = calls.describe(kid).startswith(b"keyring;")
            except KeyutilsError:
                is_ring = False
            out.append(Keyring(kid) if is_ring else Key(kid))
        return out

    def add(self, type: str, description: str, payload: bytes | str | None) -> Key:
        """add_key(2) into this keyring."""
        return Key(calls.add_key(type, description, payload, self.id))

    def add_keyring(self, name: str) -> Keyring:
        """add_key(2) of a new keyring named ``name`` into this keyring."""
        return Keyring(calls.add_key("keyring", name, None, self.id))

    def search(self, type: str, description: str, dest: int = 0) -> Key:
        """KEYCTL_SEARCH in this keyring's tree."""
        return Key(calls.search(self.id, type, description, dest))

    def link(self, key: Key | int) -> None:
        """KEYCTL_LINK ``key`` into this keyring."""
        calls.link(key.id if isinstance(key, Key) else key, self.id)

    def unlink(self, key: Key | int) -> None:
        """KEYCTL_UNLINK ``key`` from this keyring."""
        calls.unlink(key.id if isinstance(key, Key) else key, self.id)

    def clear(self) -> None:
        """KEYCTL_CLEAR."""
        calls.clear(self.id)


@dataclass(frozen=True)
class TreeEntry:
    """One line of a keyring walk: depth, the key, and its info (None if not viewable)."""

    depth: int
    key: Key
    info: KeyInfo | None
    error: KeyutilsError | None = None


def walk(root: int = KEY_SPEC_SESSION_KEYRING) -> Iterator[TreeEntry]:
    """Depth-first walk of a keyring tree, as ``keyctl show`` prints it.

    A keyring already on the current path is not descended into again, so
    cycles terminate.
    """

    def visit(key: Key, depth: int, path: frozenset[int]) -> Iterator[TreeEntry]:
        try:
            info = key.info
        except KeyutilsError as exc:
            yield TreeEntry(depth, key, None, exc)
            return
        yield TreeEntry(depth, key, info)
        if info.type != "keyring" or key.id in path:
            return
        try:
            members = calls.keyring_ids(key.id)
        except KeyutilsError:
            return
        for kid in members:
            try:
                child: Key = Keyring(kid) if calls.describe(kid).startswith(b"keyring;") else Key(kid)
            except KeyutilsError:
                child = Key(kid)
            yield from visit(child, depth + 1, path | {key.id})

    start = Keyring(root)
    yield from visit(Keyring(start.serial) if root < 0 else start, 0, frozenset())
