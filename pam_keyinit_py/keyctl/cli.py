"""Output and exit helpers that reproduce keyctl(1)'s streams and exit codes.

keyctl writes stdout through stdio (flushed at exit, even on error paths)
and reports failures with perror(3) followed by exit(1); usage errors print
the command table and exit 2.
"""

from __future__ import annotations

# posix, not os: os brings _collections_abc, stat and posixpath, ~0.7 ms of every pykeyctl run.
import posix
import sys


class Exit(Exception):
    """Raised to leave a command with keyctl's exit status (like exit(3) in keyctl.c)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


_out = bytearray()


def fsencode(text: str) -> bytes:
    """os.fsencode() without importing os: the filesystem encoding, surrogate escapes back to bytes."""
    return text.encode(sys.getfilesystemencoding(), sys.getfilesystemencodeerrors())


def out(data: bytes) -> None:
    """Append to stdout (stdio-buffered in keyctl; flushed by :func:`flush`)."""
    _out.extend(data)


def flush() -> None:
    """Write the buffered stdout, as exit(3) flushes stdio."""
    if _out:
        data = bytes(_out)
        _out.clear()
        write_all(sys.stdout.fileno() if sys.stdout is not None else 1, data)


def write_all(fd: int, data: bytes) -> None:
    """write(2) until all of ``data`` is out, as stdio does for a flush."""
    view = memoryview(data)
    while view:
        view = view[posix.write(fd, view):]


def err(data: bytes) -> None:
    """Write to stderr unbuffered, as fprintf(stderr) does."""
    write_all(2, data)


def fail(msg: str | bytes, errno: int) -> Exit:
    """perror(msg) then exit(1): ``msg: strerror(errno)``."""
    if isinstance(msg, str):
        msg = msg.encode()
    err(msg + b": " + posix.strerror(errno).encode() + b"\n")
    return Exit(1)


def die(msg: str | bytes, code: int) -> Exit:
    """fprintf(stderr, msg) then exit(code)."""
    if isinstance(msg, str):
        msg = fsencode(msg)
    err(msg)
    return Exit(code)


# keyctl 1.6.3's command table in its own order: (name, argument format).
# The order is that of the usage text.
FORMATS: list[tuple[str, str]] = [
    ("--version", ""),
    ("add", "[-x] <type> <desc> <data> <keyring>"),
    ("chgrp", "<key> <gid>"),
    ("chown", "<key> <uid>"),
    ("clear", "<keyring>"),
    ("describe", "<keyring>"),
    ("dh_compute", "<private> <prime> <base>"),
    ("dh_compute_kdf", "<private> <prime> <base> <len> <hash_name>"),
    ("dh_compute_kdf_oi", "[-x] <private> <prime> <base> <len> <hash_name>"),
    ("get_persistent", "<keyring> [<uid>]"),
    ("id", "<key>"),
    ("instantiate", "[-x] <key> <data> <keyring>"),
    ("invalidate", "<key>"),
    ("link", "<key> <keyring>"),
    ("list", "<keyring>"),
    ("move", "[-f] <key> <from_keyring> <to_keyring>"),
    ("negate", "<key> <timeout> <keyring>"),
    ("new_session", "[<name>]"),
    ("newring", "<name> <keyring>"),
    ("padd", "[-x] <type> <desc> <keyring>"),
    ("pinstantiate", "[-x] <key> <keyring>"),
    ("pipe", "<key>"),
    ("pkey_query", "<key> <pass> [k=v]*"),
    ("pkey_encrypt", "<key> <pass> <datafile> [k=v]*"),
    ("pkey_decrypt", "<key> <pass> <datafile> [k=v]*"),
    ("pkey_sign", "<key> <pass> <datafile> [k=v]*"),
    ("pkey_verify", "<key> <pass> <datafile> <sigfile> [k=v]*"),
    ("prequest2", "<type> <desc> [<dest_keyring>]"),
    ("print", "<key>"),
    ("pupdate", "[-x] <key>"),
    ("purge", "<type>"),
    ("purge", "[-p] [-i] <type> <desc>"),
    ("purge", "-s <type> <desc>"),
    ("rdescribe", "<keyring> [sep]"),
    ("read", "<key>"),
    ("reap", "[-v]"),
    ("reject", "<key> <timeout> <error> <keyring>"),
    ("request", "<type> <desc> [<dest_keyring>]"),
    ("request2", "<type> <desc> <info> [<dest_keyring>]"),
    ("restrict_keyring", "<keyring> [<type> [<restriction>]]"),
    ("revoke", "<key>"),
    ("rlist", "<keyring>"),
    ("search", "<keyring> <type> <desc> [<dest_keyring>]"),
    ("security", "<key>"),
    ("session", ""),
    ("session", "- [<prog> <arg1> <arg2> ...]"),
    ("session", "<name> [<prog> <arg1> <arg2> ...]"),
    ("setperm", "<key> <mask>"),
    ("show", "[-x] [<keyring>]"),
    ("supports", "[<cap> | --raw]"),
    ("timeout", "<key> <timeout>"),
    ("unlink", "<key> [<keyring>]"),
    ("update", "[-x] <key> <data>"),
    ("watch", "[-f<filters>] <key>"),
    ("watch_add", "<fd> <key>"),
    ("watch_rm", "<fd> <key>"),
    ("watch_session", "[-f<filters>] [-n <name>] <notifylog> <gclog> <fd> <prog> [<arg1> <arg2> ...]"),
    ("watch_sync", "<fd>"),
    ("--test", "..."),
]

# The key-specifier help after the command table, shared with ``--test``'s own table.
TRAILER = (
    "\n"
    "Key/keyring ID:\n"
    "  <nnn>   numeric keyring ID\n"
    "  @t      thread keyring\n"
    "  @p      process keyring\n"
    "  @s      session keyring\n"
    "  @u      user keyring\n"
    "  @us     user default session keyring\n"
    "  @g      group keyring\n"
    "  @a      assumed request_key authorisation key\n"
    "\n"
    '<type> can be "user" for a user-defined keyring\n'
    'If you do this, prefix the description with "<subtype>:"\n'
)


def usage() -> Exit:
    """keyctl's format(): the command table on stderr, exit status 2."""
    text = "Format:\n" + "".join(f"  keyctl {name} {fmt}\n" for name, fmt in FORMATS) + TRAILER
    err(text.encode())
    return Exit(2)
