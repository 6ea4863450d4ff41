"""The one object model above layer 0: parsed descriptions, permissions, keys, keyrings, tree walks.

:meth:`KeyInfo.parse` is the project's only parser of the KEYCTL_DESCRIBE
string ``type;uid;gid;perm;description``: pykeyctl's text and ``--json``
output, the secret store and ``keyinit doctor`` all use it.  Keyring members
are read with :func:`~.calls.keyring_ids` (KEYCTL_READ on a keyring).
``Key(id).info`` is a live KEYCTL_DESCRIBE; ``Keyring(id).children()`` its
members; :func:`walk` yields the tree that ``keyctl show`` prints.

Plain classes with ``__slots__``, no enum or dataclasses: pykeyctl imports
this module on every run, and those imports cost more than its whole run.
"""

from __future__ import annotations

from . import KEY_SPEC_SESSION_KEYRING, calls
from .errors import KeyutilsError

# Names for annotations only; importing typing/collections at run time slows every pykeyctl run.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

_SPACE = b" \t\n\v\f\r"
_LETTERS = tuple(zip("alswrv", (32, 16, 8, 4, 2, 1), strict=True))


def letters(bits: int) -> str:
    """``alswrv`` letters for 6 permission bits (setattr link search write read view)."""
    return "".join(c if bits & m else "-" for c, m in _LETTERS)


class Perm(int):
    """The 32-bit key permission mask (possessor, user, group, other), as <keyutils.h>'s KEY_*_* bits."""

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

    __slots__ = ()

    def letters(self, shift: int) -> str:
        """``alswrv``-style letters for one 8-bit class (shift 24, 16, 8 or 0)."""
        return letters((self >> shift) & 0x3F)

    def full(self) -> str:
        """``keyctl describe``'s 24 letters: possessor, user, group, other."""
        return letters((self >> 24) & 0x3F) + letters((self >> 16) & 0x3F) + letters(
            (self >> 8) & 0x3F) + letters(self & 0x3F)


def _c_int(field: bytes) -> int | None:
    """sscanf %d: an optional sign and decimal digits, wrapped to int32 as key_serial_t/uid_t are."""
    s = field.lstrip(_SPACE)
    digits = s[1:] if s[:1] in (b"+", b"-") else s
    if not digits.isdigit():
        return None
    value = int(s) & 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


class KeyInfo:
    """A KEYCTL_DESCRIBE string ``type;uid;gid;perm;description``, split as keyctl's sscanf does.

    ``type_bytes``/``description_bytes`` are the kernel's bytes (pykeyctl prints
    them as they are); ``type``/``description`` are the same decoded as UTF-8
    with surrogate escapes, so nothing is lost.  ``uid`` and ``gid`` are
    int32 (-1 for "none").
    """

    __slots__ = ("type_bytes", "uid", "gid", "perm", "description_bytes", "raw")

    def __init__(self, type_: bytes, uid: int, gid: int, perm: int, description: bytes, raw: bytes) -> None:
        self.type_bytes = type_
        self.uid = uid
        self.gid = gid
        self.perm = Perm(perm)
        self.description_bytes = description
        self.raw = raw

    def __repr__(self) -> str:
        return f"KeyInfo({self.raw!r})"

    @property
    def type(self) -> str:
        """The key type's name (``user``, ``keyring``, ``logon`` ...)."""
        return self.type_bytes.decode("utf-8", "surrogateescape")

    @property
    def description(self) -> str:
        """The key's description."""
        return self.description_bytes.decode("utf-8", "surrogateescape")

    @property
    def is_keyring(self) -> bool:
        """True for a keyring, whose KEYCTL_READ payload is its members' serials."""
        return self.type_bytes == b"keyring"

    @classmethod
    def parse(cls, raw: bytes) -> KeyInfo | None:
        """Parse ``"%[^;];%d;%d;%x;%n"`` as keyctl does; None where keyctl says "Unparsable".

        The description (after the fourth ';') may itself contain ';'; it ends at a NUL.
        """
        parts = raw.split(b";", 4)
        if len(parts) < 5 or not parts[0]:
            return None
        uid, gid = _c_int(parts[1]), _c_int(parts[2])
        try:
            perm = int(parts[3], 16) & 0xFFFFFFFF
        except ValueError:
            return None
        if uid is None or gid is None:
            return None
        return cls(parts[0], uid, gid, perm, parts[4].split(b"\0", 1)[0], raw)

    @classmethod
    def of(cls, key_id: int) -> KeyInfo:
        """KEYCTL_DESCRIBE ``key_id``, parsed; ValueError if the kernel's string does not parse."""
        raw = calls.describe(key_id)
        info = cls.parse(raw)
        if info is None:
            raise ValueError(f"unparsable description of key {key_id}: {raw!r}")
        return info


class Key:
    """A key by serial number (or special id); every property is a live keyctl call."""

    __slots__ = ("id",)

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
        return KeyInfo.of(self.id)

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


def _member(kid: int) -> tuple[Key, KeyInfo | None, KeyutilsError | None]:
    """One KEYCTL_DESCRIBE of a keyring member: the key as Keyring or Key, its info or the error."""
    try:
        info = KeyInfo.of(kid)
    except KeyutilsError as exc:
        return Key(kid), None, exc
    return (Keyring(kid) if info.is_keyring else Key(kid)), info, None


class Keyring(Key):
    """A keyring: a key whose payload is a list of member serials."""

    __slots__ = ()

    def ids(self) -> list[int]:
        """KEYCTL_READ on the keyring: its members' serials."""
        return calls.keyring_ids(self.id)

    def children(self) -> list[Key]:
        """KEYCTL_READ on the keyring, KEYCTL_DESCRIBE each member: keyrings as :class:`Keyring`."""
        return [_member(kid)[0] for kid in calls.keyring_ids(self.id)]

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


class TreeEntry:
    """One line of a keyring walk: depth, the key, and its info (None and the error if not viewable)."""

    __slots__ = ("depth", "key", "info", "error")

    def __init__(
        self, depth: int, key: Key, info: KeyInfo | None, error: KeyutilsError | None = None,
    ) -> None:
        self.depth = depth
        self.key = key
        self.info = info
        self.error = error

    def __repr__(self) -> str:
        return f"TreeEntry({self.depth}, {self.key!r}, {self.info!r})"


def walk(root: int = KEY_SPEC_SESSION_KEYRING) -> Iterator[TreeEntry]:
    """Depth-first walk of a keyring tree, as ``keyctl show`` prints it.

    One KEYCTL_DESCRIBE per key and one KEYCTL_READ per keyring.  A keyring
    already on the current path is not descended into again, so cycles terminate.
    """

    def visit(kid: int, depth: int, path: frozenset[int]) -> Iterator[TreeEntry]:
        key, info, error = _member(kid)
        yield TreeEntry(depth, key, info, error)
        if info is None or not info.is_keyring or kid in path:
            return
        try:
            members = calls.keyring_ids(kid)
        except KeyutilsError:
            return
        for child in members:
            yield from visit(child, depth + 1, path | {kid})

    yield from visit(calls.get_keyring_id(root, False) if root < 0 else root, 0, frozenset())
