"""keyctl's text formats: parsed descriptions, permission strings, hex dumps, printf %d."""

from __future__ import annotations

import os

from .spec import to_s32

_PRINTABLE = frozenset(range(0x20, 0x7F))  # isprint() in the C locale keyctl runs in


class Desc:
    """A KEYCTL_DESCRIBE string ``type;uid;gid;perm;description`` split as keyctl's sscanf does.

    A plain class rather than a dataclass: importing dataclasses costs more than pykeyctl's whole run.
    """

    __slots__ = ("type", "uid", "gid", "perm", "description", "raw")

    def __init__(self, type_: bytes, uid: int, gid: int, perm: int, description: bytes, raw: bytes) -> None:
        self.type = type_
        self.uid = uid
        self.gid = gid
        self.perm = perm
        self.description = description
        self.raw = raw


def _c_int(field: bytes) -> int | None:
    """sscanf %d: an optional sign and decimal digits, wrapped to int32."""
    s = field.lstrip(b" \t\n\v\f\r")
    digits = s[1:] if s[:1] in (b"+", b"-") else s
    if not digits.isdigit():
        return None
    return to_s32(int(s))


def parse_desc(raw: bytes) -> Desc | None:
    """Parse ``"%[^;];%d;%d;%x;%n"``; None when keyctl would call it unparsable."""
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
    return Desc(parts[0], uid, gid, perm, parts[4].split(b"\0", 1)[0], raw)


_CREDS: list[tuple[int, int, frozenset[int]]] = []


def _creds() -> tuple[int, int, frozenset[int]]:
    # keyctl's grab_creds(), once: effective ids and the supplementary groups.
    if not _CREDS:
        _CREDS.append((os.geteuid(), os.getegid(), frozenset(os.getgroups())))
    return _CREDS[0]


def granted(perm: int, uid: int, gid: int) -> int:
    """The 6 permission bits the caller gets: possessor OR (user | group | other), as calc_perms()."""
    myuid, mygid, groups = _creds()
    perms = (perm >> 24) & 0x3F
    if uid & 0xFFFFFFFF == myuid:
        return perms | ((perm >> 16) & 0x3F)
    if gid != -1 and (gid & 0xFFFFFFFF == mygid or gid & 0xFFFFFFFF in groups):
        return perms | ((perm >> 8) & 0x3F)
    return perms | (perm & 0x3F)


def six(bits: int) -> str:
    """``alswrv`` letters for 6 permission bits (setattr link search write read view)."""
    return "".join(c if bits & m else "-" for c, m in zip("alswrv", (32, 16, 8, 4, 2, 1), strict=True))


def calc_perms(perm: int, uid: int, gid: int) -> str:
    """keyctl's calc_perms(): ``--alswrv`` of what the caller has actually been granted."""
    return "--" + six(granted(perm, uid, gid))


def full_perms(perm: int) -> str:
    """describe's 24 letters: possessor, user, group, other."""
    return "".join(six((perm >> shift) & 0x3F) for shift in (24, 16, 8, 0))


def hexdump(data: bytes) -> bytes:
    """keyctl read's body: %02hhx, a space every 4 bytes, a newline every 32."""
    lines = []
    for off in range(0, len(data), 32):
        chunk = data[off : off + 32]
        lines.append(" ".join(chunk[i : i + 4].hex() for i in range(0, len(chunk), 4)))
    return ("\n".join(lines) + "\n").encode()


def printable(data: bytes) -> bytes:
    """keyctl print: the text if every byte isprint(), else ``:hex:`` and the bytes in hex."""
    if all(b in _PRINTABLE for b in data):
        return data + b"\n"
    return b":hex:" + data.hex().encode() + b"\n"


def d(value: int, width: int = 0) -> bytes:
    """printf("%<width>d")."""
    return str(value).rjust(width).encode()
