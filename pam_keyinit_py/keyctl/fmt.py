"""keyctl's text formats: the caller's permission string, hex dumps, printf %d.

Descriptions are parsed by :class:`pam_keyinit_py.keyutils.model.KeyInfo`, the one parser.
"""

from __future__ import annotations

# posix, not os: os brings _collections_abc, stat and posixpath, ~0.7 ms of every pykeyctl run.
import posix

from pam_keyinit_py.keyutils.model import letters

_PRINTABLE = frozenset(range(0x20, 0x7F))  # isprint() in the C locale keyctl runs in

_CREDS: list[tuple[int, int, frozenset[int]]] = []


def _creds() -> tuple[int, int, frozenset[int]]:
    # keyctl's grab_creds(), once: effective ids and the supplementary groups.
    if not _CREDS:
        _CREDS.append((posix.geteuid(), posix.getegid(), frozenset(posix.getgroups())))
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


def calc_perms(perm: int, uid: int, gid: int) -> str:
    """keyctl's calc_perms(): ``--alswrv`` of what the caller has actually been granted."""
    return "--" + letters(granted(perm, uid, gid))


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
