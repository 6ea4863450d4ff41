"""Keyring tree walks: libkeyutils' recursive_key_scan() and keyctl show's dump_key_tree()."""

from __future__ import annotations

# posix, not os: os brings _collections_abc, stat and posixpath, ~0.7 ms of every pykeyctl run.
import posix

from pam_keyinit_py import keyutils
from pam_keyinit_py.keyutils.model import KeyInfo

from .cli import die, fail, out
from .fmt import calc_perms, d

# Names for annotations only; importing typing/collections at run time slows every invocation.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    # func(parent, key, raw description or None, errno of the failed describe) -> keys counted
    Scanner = Callable[[int, int, bytes | None, int], int]

_EINVAL_NEG = -22  # libkeyutils sets errno = -EINVAL for an unparsable description


def recursive_key_scan(parent: int, key: int, func: Scanner, depth: int = 0) -> int:
    """Depth first over a keyring tree (children before the keyring), as recursive_key_scan_aux().

    KEYCTL_DESCRIBE each key, KEYCTL_READ each keyring, and call ``func`` on every key.
    """
    if depth > 800:
        return 0
    count = 0
    try:
        raw: bytes | None = keyutils.describe(key)
        errno = 0
    except OSError as exc:
        raw, errno = None, exc.errno or 0
    if raw is not None:
        desc = KeyInfo.parse(raw)
        if desc is None:
            raw, errno = None, _EINVAL_NEG
        elif desc.is_keyring:
            try:
                children = keyutils.keyring_ids(key)
            except OSError:
                children = []
            for child in children:
                count += recursive_key_scan(key, child, func, depth + 1)
    return count + func(parent, key, raw, errno)


def recursive_session_key_scan(func: Scanner) -> int:
    """recursive_key_scan() from the session keyring (KEYCTL_GET_KEYRING_ID of @s, no create)."""
    try:
        session = keyutils.get_keyring_id(keyutils.KEY_SPEC_SESSION_KEYRING, False)
    except OSError:
        return 0
    return recursive_key_scan(0, session, func) if session > 0 else 0


class TreeDumper:
    """keyctl show's dump_key_tree_aux(), including its static indent buffer and its quirks."""

    def __init__(self, hex_ids: bool, krb5: bool = False) -> None:
        self.hex_ids = hex_ids
        self.krb5 = krb5  # show --krb5: decode MIT ccache keyrings inline
        self.indent = bytearray(64)  # the static dumpindent[64], NUL-terminated
        self.parents: list[bytes] = []  # descriptions of the keyrings above the current key

    def _indent(self) -> bytes:
        end = self.indent.find(0)
        return bytes(self.indent[: end if end >= 0 else 64])

    def dump(self, key: int, depth: int = 0, more: bool = False) -> int:
        """Print one line per key and recurse into keyrings (KEYCTL_DESCRIBE, KEYCTL_READ)."""
        if depth > 8 * 4:
            return 0
        try:
            raw = keyutils.describe(key)
        except OSError as exc:
            out(d(key) + b": key inaccessible (" + posix.strerror(exc.errno or 0).encode() + b")\n")
            return 0
        desc = KeyInfo.parse(raw)
        if desc is None:
            raise die(f"Unparsable description obtained for key {key}\n", 3)
        keyid = f"0x{key & 0xFFFFFFFF:08x}".encode() if self.hex_ids else d(key, 10)
        out(
            keyid + b" " + calc_perms(desc.perm, desc.uid, desc.gid).encode() + b"  "
            + d(desc.uid, 5) + b" " + d(desc.gid, 5) + b"  " + self._indent()
            + (b"\\_ " if depth > 0 else b"") + desc.type_bytes + b": " + desc.description_bytes + b"\n"
        )
        if not desc.is_keyring:
            return 0
        if self.krb5:
            from .krb5view import ccache_name, lines

            name = ccache_name(desc.description_bytes, self.parents)
            if name:
                out(lines(name, b" " * 34 + self._indent() + (b"    " if depth > 0 else b" ")))
        try:
            children = keyutils.keyring_ids(key)
        except OSError as exc:
            raise fail("keyctl_read_alloc", exc.errno or 0) from None
        kcount = len(children)
        self.parents.append(desc.description_bytes)
        for i, child in enumerate(children):
            if depth == 0:
                rdepth = 1
                self.indent[0] = 0x20
            else:
                self.indent[depth : depth + 4] = b"    "
                rdepth = depth + 4
            self.indent[rdepth] = 0
            if more:
                self.indent[depth] = 0x7C  # '|'
            kcount += self.dump(child, rdepth, i + 1 < len(children))
        self.parents.pop()
        return kcount
