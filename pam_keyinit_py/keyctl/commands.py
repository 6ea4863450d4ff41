"""One function per keyctl command, in keyutils 1.6.3's order of checks and messages.

Each ``act_<name>(argv)`` gets the arguments from the command name on (as
keyctl's act_keyctl_*() do), performs the kernel operations through layer 0
and returns the exit status or raises :class:`~.cli.Exit`.  The order in which
arguments are parsed and the kernel called is keyctl's, because it decides
which error a bad command line reports first.
"""

from __future__ import annotations

import errno as E

# posix, not os: os brings _collections_abc, stat and posixpath, ~0.7 ms of every pykeyctl run.
import posix

from pam_keyinit_py import keyutils as ku
from pam_keyinit_py.keyutils.model import KeyInfo

from .cli import die, fail, out, usage
from .fmt import calc_perms, d, hexdump, printable
from .scan import TreeDumper, recursive_session_key_scan
from .spec import get_key_id, strtoul

# Names for annotations only; importing typing/collections at run time slows every invocation.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

Argv = list[bytes]
_STDIN_MAX = 1024 * 1024 + 1  # keyctl's static input[1024 * 1024 + 1]
_SPACE = b" \t\n\v\f\r"
_HEX = b"0123456789abcdefABCDEF"


def _call(msg: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Run a layer-0 call; on failure behave like keyctl's error(msg): perror and exit 1."""
    try:
        return fn(*args)
    except OSError as exc:
        raise fail(msg, exc.errno or 0) from None


def _grab_stdin() -> bytes:
    """keyctl's grab_stdin(): stdin up to 1 MiB.

    keyctl reads into a 1 MiB + 1 buffer but never asks for its last byte, so
    its "Too much data" branch is unreachable and longer input is cut at 1 MiB.
    """
    chunks: list[bytes] = []
    n = 0
    while n < _STDIN_MAX - 1:
        try:
            chunk = posix.read(0, _STDIN_MAX - 1 - n)
        except OSError as exc:
            raise fail("stdin", exc.errno or 0) from None
        if not chunk:
            break
        chunks.append(chunk)
        n += len(chunk)
    return b"".join(chunks)


def _hex2bin(data: bytes, as_hex: bool) -> bytes:
    """keyctl's hex2bin(): hex pairs, whitespace between pairs ignored."""
    if not as_hex or not data:
        return data
    result = bytearray()
    i, end = 0, len(data)
    while i < end:
        if data[i] in _SPACE:
            i += 1
            continue
        if end - i < 2:
            raise die("Short hex doublet\n", 1)
        if data[i] not in _HEX or data[i + 1] not in _HEX:
            raise die("Bad hex doublet\n", 1)
        result.append(int(data[i : i + 2], 16))
        i += 2
    return bytes(result)


def _opt_x(argv: Argv) -> tuple[bool, Argv]:
    if len(argv) > 1 and argv[1] == b"-x":
        return True, argv[1:]
    return False, argv


def _unsigned(arg: bytes, what: str, base: int, bits: int = 32) -> int:
    """strtoul with keyctl's "Unparsable <what>: '<arg>'" (exit 2), truncated to ``bits``."""
    value, rest = strtoul(arg, base)
    if rest:
        raise die(f"Unparsable {what}: '".encode() + arg + b"'\n", 2)
    return value & ((1 << bits) - 1)


def act_version(argv: Argv) -> int:
    """--version: the libkeyutils version and build strings."""
    import ctypes

    lib = ctypes.CDLL("libkeyutils.so.1")
    version = ctypes.c_char_p.in_dll(lib, "keyutils_version_string")
    build = ctypes.c_char_p.in_dll(lib, "keyutils_build_string")
    # Both are char arrays, not pointers: take their addresses.
    ver = ctypes.string_at(ctypes.addressof(version))
    bld = ctypes.string_at(ctypes.addressof(build))
    out(b"keyctl from " + ver + b" (Built " + bld + b")\n")
    return 0


def act_id(argv: Argv) -> int:
    """id: KEYCTL_GET_KEYRING_ID (no create) of a specifier."""
    if len(argv) != 2:
        raise usage()
    key = get_key_id(argv[1])
    key = _call("keyctl_get_keyring_ID", ku.get_keyring_id, key, False)
    out(d(key) + b"\n")
    return 0


def act_show(argv: Argv, as_json: bool = False) -> int:
    """show [-x] [--krb5] [keyring]: the keyring tree, permissions computed against the caller.

    ``--krb5`` (pykeyctl only) decodes MIT KEYRING ccaches inline with pykrb5.
    """
    krb5 = b"--krb5" in argv[1:]
    if krb5:
        argv = [a for a in argv if a != b"--krb5"]
    hex_ids = False
    if len(argv) >= 2 and argv[1] == b"-x":
        hex_ids, argv = True, argv[1:]
    if len(argv) > 2:
        raise usage()
    keyring = ku.KEY_SPEC_SESSION_KEYRING
    if len(argv) == 2:
        keyring = get_key_id(argv[1])
    name = b"Keyring" if len(argv) == 2 else b"Session Keyring"
    if as_json:
        from .jsonout import show_json

        return show_json(keyring, name.decode(), krb5)
    out(name + b"\n")
    keyring = _call("Unable to dump key", ku.get_keyring_id, keyring, False)
    TreeDumper(hex_ids, krb5).dump(keyring)
    return 0


def _add(type_: bytes, desc: bytes, data: bytes | None, dest: int) -> int:
    key = _call("add_key", ku.add_key, type_, desc, data, dest)
    out(d(key) + b"\n")
    return 0


def act_add(argv: Argv) -> int:
    """add [-x] type desc data keyring: add_key(2)."""
    as_hex, argv = _opt_x(argv)
    if len(argv) != 5:
        raise usage()
    data = _hex2bin(argv[3], as_hex)
    dest = get_key_id(argv[4])
    return _add(argv[1], argv[2], data, dest)


def act_padd(argv: Argv) -> int:
    """padd [-x] type desc keyring: add_key(2) with the payload from stdin."""
    as_hex, argv = _opt_x(argv)
    if len(argv) != 4:
        raise usage()
    data = _hex2bin(_grab_stdin(), as_hex)
    dest = get_key_id(argv[3])
    return _add(argv[1], argv[2], data, dest)


def act_request(argv: Argv) -> int:
    """request type desc [dest]: request_key(2) without a callout."""
    if len(argv) not in (3, 4):
        raise usage()
    dest = get_key_id(argv[3]) if len(argv) == 4 else 0
    key = _call("request_key", ku.request_key, argv[1], argv[2], None, dest)
    out(d(key) + b"\n")
    return 0


def act_request2(argv: Argv) -> int:
    """request2 type desc info [dest]: request_key(2) with callout info for /sbin/request-key."""
    if len(argv) not in (4, 5):
        raise usage()
    dest = get_key_id(argv[4]) if len(argv) == 5 else 0
    key = _call("request_key", ku.request_key, argv[1], argv[2], argv[3], dest)
    out(d(key) + b"\n")
    return 0


def act_prequest2(argv: Argv) -> int:
    """prequest2 type desc [dest]: request2 with the callout info read from stdin."""
    if len(argv) not in (3, 4):
        raise usage()
    info = _grab_stdin().split(b"\0", 1)[0]  # keyctl passes it on as a C string
    return act_request2([*argv[:3], info, *argv[3:]])


def act_update(argv: Argv) -> int:
    """update [-x] key data: KEYCTL_UPDATE."""
    as_hex, argv = _opt_x(argv)
    if len(argv) != 3:
        raise usage()
    data = _hex2bin(argv[2], as_hex)
    key = get_key_id(argv[1])
    _call("keyctl_update", ku.update, key, data)
    return 0


def act_pupdate(argv: Argv) -> int:
    """pupdate [-x] key: KEYCTL_UPDATE with the payload from stdin."""
    as_hex, argv = _opt_x(argv)
    if len(argv) != 2:
        raise usage()
    key = get_key_id(argv[1])
    data = _hex2bin(_grab_stdin(), as_hex)
    _call("keyctl_update", ku.update, key, data)
    return 0


def act_newring(argv: Argv) -> int:
    """newring name keyring: add_key(2) of a keyring."""
    if len(argv) != 3:
        raise usage()
    dest = get_key_id(argv[2])
    return _add(b"keyring", argv[1], None, dest)


def _one_key(argv: Argv, msg: str, fn: Callable[[int], Any]) -> int:
    if len(argv) != 2:
        raise usage()
    key = get_key_id(argv[1])
    _call(msg, fn, key)
    return 0


def act_revoke(argv: Argv) -> int:
    """revoke key: KEYCTL_REVOKE."""
    return _one_key(argv, "keyctl_revoke", ku.revoke)


def act_clear(argv: Argv) -> int:
    """clear keyring: KEYCTL_CLEAR."""
    return _one_key(argv, "keyctl_clear", ku.clear)


def act_invalidate(argv: Argv) -> int:
    """invalidate key: KEYCTL_INVALIDATE."""
    return _one_key(argv, "keyctl_invalidate", ku.invalidate)


def act_link(argv: Argv) -> int:
    """link key keyring: KEYCTL_LINK."""
    if len(argv) != 3:
        raise usage()
    key = get_key_id(argv[1])
    keyring = get_key_id(argv[2])
    _call("keyctl_link", ku.link, key, keyring)
    return 0


def act_unlink(argv: Argv) -> int:
    """unlink key [keyring]: KEYCTL_UNLINK, or from every keyring in the session tree."""
    if len(argv) not in (2, 3):
        raise usage()
    key = get_key_id(argv[1])
    if len(argv) == 3:
        keyring = get_key_id(argv[2])
        _call("keyctl_unlink", ku.unlink, key, keyring)
        return 0

    def func(parent: int, k: int, raw: bytes | None, errno: int) -> int:
        if k != key:
            return 0
        try:
            ku.unlink(k, parent)
        except OSError:
            return 0
        return 1

    n = recursive_session_key_scan(func)
    out(d(n) + b" links removed\n")
    return 0


def act_move(argv: Argv) -> int:
    """move [-f] key from to: KEYCTL_MOVE (KEYCTL_MOVE_EXCL unless -f)."""
    flags = ku.KEYCTL_MOVE_EXCL
    if len(argv) > 4 and argv[1] == b"-f":
        flags, argv = 0, argv[1:]
    if len(argv) != 4:
        raise usage()
    key = get_key_id(argv[1])
    src = get_key_id(argv[2])
    dst = get_key_id(argv[3])
    _call("keyctl_move", ku.move, key, src, dst, flags)
    return 0


def act_search(argv: Argv) -> int:
    """search keyring type desc [dest]: KEYCTL_SEARCH."""
    if len(argv) not in (4, 5):
        raise usage()
    keyring = get_key_id(argv[1])
    dest = get_key_id(argv[4]) if len(argv) == 5 else 0
    key = _call("keyctl_search", ku.search, keyring, argv[2], argv[3], dest)
    out(d(key) + b"\n")
    return 0


def _read(argv: Argv) -> bytes:
    if len(argv) != 2:
        raise usage()
    key = get_key_id(argv[1])
    return _call("keyctl_read_alloc", ku.read, key)


def act_read(argv: Argv) -> int:
    """read key: KEYCTL_READ, hex dumped."""
    data = _read(argv)
    if not data:
        out(b"No data in key\n")
        return 0
    out(d(len(data)) + b" bytes of data in key:\n" + hexdump(data))
    return 0


def act_pipe(argv: Argv) -> int:
    """pipe key: KEYCTL_READ, raw to stdout."""
    data = _read(argv)
    if data:
        try:
            from .cli import flush

            out(data)
            flush()
        except OSError as exc:
            raise fail("write", exc.errno or 0) from None
    return 0


def act_print(argv: Argv) -> int:
    """print key: KEYCTL_READ, as text if printable, else ``:hex:``."""
    out(printable(_read(argv)))
    return 0


def _keyring_ids(argv: Argv) -> tuple[int, list[int]]:
    if len(argv) != 2:
        raise usage()
    keyring = get_key_id(argv[1])
    return keyring, _call("keyctl_read_alloc", ku.keyring_ids, keyring)


def act_list(argv: Argv, as_json: bool = False) -> int:
    """list keyring: KEYCTL_READ the keyring, KEYCTL_DESCRIBE each member."""
    keyring, ids = _keyring_ids(argv)
    if as_json:
        from .jsonout import list_json

        return list_json(keyring, ids)
    if not ids:
        out(b"keyring is empty\n")
        return 0
    out(b"1 key in keyring:\n" if len(ids) == 1 else d(len(ids)) + b" keys in keyring:\n")
    for key in ids:
        try:
            raw = ku.describe(key)
        except OSError as exc:
            out(d(key, 9) + b": key inaccessible (" + posix.strerror(exc.errno or 0).encode() + b")\n")
            continue
        desc = KeyInfo.parse(raw)
        if desc is None:
            raise die(f"Unparsable description obtained for key {key}\n", 3)
        out(
            d(key, 9) + b": " + calc_perms(desc.perm, desc.uid, desc.gid).encode() + b" "
            + d(desc.uid, 5) + b" " + d(desc.gid, 5) + b" " + desc.type_bytes + b": "
            + desc.description_bytes + b"\n"
        )
    return 0


def act_rlist(argv: Argv) -> int:
    """rlist keyring: the member serials on one line."""
    _, ids = _keyring_ids(argv)
    out(b" ".join(d(k) for k in ids) + b"\n")
    return 0


def act_describe(argv: Argv, as_json: bool = False) -> int:
    """describe key: KEYCTL_DESCRIBE with the full permission mask spelled out."""
    if len(argv) != 2:
        raise usage()
    key = get_key_id(argv[1])
    raw = _call("keyctl_describe_alloc", ku.describe, key)
    desc = KeyInfo.parse(raw)
    if desc is None:
        raise die(f"Unparsable description obtained for key {key}\n", 3)
    if as_json:
        from .jsonout import describe_json

        return describe_json(key, desc)
    out(
        d(key, 9) + b": " + desc.perm.full().encode() + b" " + d(desc.uid, 5) + b" "
        + d(desc.gid, 5) + b" " + desc.type_bytes + b": " + desc.description_bytes + b"\n"
    )
    return 0


def act_rdescribe(argv: Argv, as_json: bool = False) -> int:
    """rdescribe key [sep]: the raw KEYCTL_DESCRIBE string, ';' optionally replaced."""
    if len(argv) not in (2, 3) or (len(argv) == 3 and not argv[2]):
        raise usage()
    key = get_key_id(argv[1])
    raw = _call("keyctl_describe", ku.describe, key).split(b"\0", 1)[0]
    if as_json:
        from .jsonout import describe_json

        return describe_json(key, KeyInfo.parse(raw), raw)
    if len(argv) == 3:
        raw = raw.replace(b";", argv[2][:1])
    out(raw + b"\n")
    return 0


def act_chown(argv: Argv) -> int:
    """chown key uid: KEYCTL_CHOWN (group unchanged)."""
    if len(argv) != 3:
        raise usage()
    key = get_key_id(argv[1])
    uid = _unsigned(argv[2], "uid", 0)
    _call("keyctl_chown", ku.chown, key, uid, -1)
    return 0


def act_chgrp(argv: Argv) -> int:
    """chgrp key gid: KEYCTL_CHOWN (owner unchanged)."""
    if len(argv) != 3:
        raise usage()
    key = get_key_id(argv[1])
    gid = _unsigned(argv[2], "gid", 0)
    _call("keyctl_chown", ku.chown, key, -1, gid)
    return 0


def act_setperm(argv: Argv) -> int:
    """setperm key mask: KEYCTL_SETPERM."""
    if len(argv) != 3:
        raise usage()
    key = get_key_id(argv[1])
    perm = _unsigned(argv[2], "permissions", 0)
    _call("keyctl_setperm", ku.setperm, key, perm)
    return 0


def act_session(argv: Argv) -> int:
    """session [-|name] [prog args...]: KEYCTL_JOIN_SESSION_KEYRING, then exec."""
    args = argv[1:]
    name: bytes | None = None
    if args:
        name = None if args[0] == b"-" else args[0]
        args = args[1:]
    ring = _call("keyctl_join_session_keyring", ku.join_session_keyring, name)
    from .cli import err, flush

    err(f"Joined session keyring: {ring}\n".encode())
    flush()
    import os

    if not args:
        shell = os.environb.get(b"SHELL", b"/bin/sh")
        try:
            os.execv(shell, [shell])
        except OSError as exc:
            raise fail(shell, exc.errno or 0) from None
    try:
        os.execvp(args[0], args)
    except OSError as exc:
        raise fail(args[0], exc.errno or 0) from None
    return 1  # not reached


def act_new_session(argv: Argv) -> int:
    """new_session [name]: join a new session keyring and give it to the parent process."""
    if len(argv) not in (1, 2):
        raise usage()
    _call("keyctl_join_session_keyring", ku.join_session_keyring, argv[1] if len(argv) == 2 else None)
    _call("keyctl_session_to_parent", ku.session_to_parent)
    ring = _call("keyctl_get_keyring_ID", ku.get_keyring_id, ku.KEY_SPEC_SESSION_KEYRING, False)
    out(d(ring) + b"\n")
    return 0


def act_instantiate(argv: Argv) -> int:
    """instantiate [-x] key data keyring: KEYCTL_INSTANTIATE (needs the request's authority)."""
    as_hex, argv = _opt_x(argv)
    if len(argv) != 4:
        raise usage()
    key = get_key_id(argv[1])
    dest = get_key_id(argv[3])
    data = _hex2bin(argv[2], as_hex)
    _call("keyctl_instantiate", ku.instantiate, key, data, dest)
    return 0


def act_pinstantiate(argv: Argv) -> int:
    """pinstantiate [-x] key keyring: KEYCTL_INSTANTIATE with the payload from stdin."""
    as_hex, argv = _opt_x(argv)
    if len(argv) != 3:
        raise usage()
    key = get_key_id(argv[1])
    dest = get_key_id(argv[2])
    data = _hex2bin(_grab_stdin(), as_hex)
    _call("keyctl_instantiate", ku.instantiate, key, data, dest)
    return 0


def act_negate(argv: Argv) -> int:
    """negate key timeout keyring: KEYCTL_NEGATE."""
    if len(argv) != 4:
        raise usage()
    key = get_key_id(argv[1])
    timeout = _unsigned(argv[2], "timeout", 10)
    dest = get_key_id(argv[3])
    _call("keyctl_negate", ku.negate, key, timeout, dest)
    return 0


def act_timeout(argv: Argv) -> int:
    """timeout key seconds: KEYCTL_SET_TIMEOUT."""
    if len(argv) != 3:
        raise usage()
    key = get_key_id(argv[1])
    timeout = _unsigned(argv[2], "timeout", 10)
    _call("keyctl_set_timeout", ku.set_timeout, key, timeout)
    return 0


def act_security(argv: Argv) -> int:
    """security key: KEYCTL_GET_SECURITY (the LSM label)."""
    if len(argv) != 2:
        raise usage()
    key = get_key_id(argv[1])
    label = _call("keyctl_getsecurity", ku.get_security, key)
    out(label.split(b"\0", 1)[0] + b"\n")
    return 0


_REJECT_NAMES = {b"rejected": E.EKEYREJECTED, b"revoked": E.EKEYREVOKED, b"expired": E.EKEYEXPIRED}


def act_reject(argv: Argv) -> int:
    """reject key timeout error keyring: KEYCTL_REJECT."""
    if len(argv) != 5:
        raise usage()
    key = get_key_id(argv[1])
    timeout = _unsigned(argv[2], "timeout", 10)
    rejerr = _REJECT_NAMES.get(argv[3])
    if rejerr is None:
        rejerr = _unsigned(argv[3], "error", 10)
    dest = get_key_id(argv[4])
    _call("keyctl_negate", ku.reject, key, timeout, rejerr, dest)  # keyctl's own message
    return 0


def act_reap(argv: Argv) -> int:
    """reap [-v]: unlink keys in the session tree that cannot be described (dead), except EACCES."""
    verbose = False
    if len(argv) > 1 and argv[1] == b"-v":
        verbose, argv = True, argv[1:]
    if len(argv) != 1:
        raise usage()

    def func(parent: int, key: int, raw: bytes | None, errno: int) -> int:
        if raw is not None or errno == E.EACCES:
            return 0
        if verbose:
            out(b"Reap " + d(key))
        try:
            ku.unlink(key, parent)
        except OSError as exc:
            if verbose:
                out(b"... failed " + posix.strerror(exc.errno or 0).encode() + b"\n")
            return 0
        if verbose:
            out(b"\n")
        return 1

    n = recursive_session_key_scan(func)
    out(d(n) + b" keys reaped\n")
    return 0


def act_purge(argv: Argv) -> int:
    """purge [-s|-p|-i] type [desc]: unlink matching keys throughout the session tree."""
    args = argv[1:]
    search_mode = prefix = icase = False
    while args and args[0][:1] == b"-":
        flag = args[0][1:2]
        if flag == b"s":
            search_mode = True
        elif flag == b"p":
            prefix = True
        elif flag == b"i":
            icase = True
        else:
            raise usage()
        args = args[1:]
    if len(args) < 1:
        raise usage()
    type_ = args[0]
    desc = args[1] if len(args) > 1 else None

    def by_type(parent: int, key: int, raw: bytes | None, errno: int) -> int:
        if parent == 0 or raw is None or b";" not in raw:
            return 0
        if raw.split(b";", 1)[0].split(b"\0", 1)[0] != type_:
            return 0
        return _unlinked(key, parent)

    def literal(parent: int, key: int, raw: bytes | None, errno: int) -> int:
        assert desc is not None
        if parent == 0 or raw is None or b";" not in raw:
            return 0
        ktype, _, rest = raw.partition(b";")
        if ktype != type_ or b";" not in rest:
            return 0
        kdesc = rest.rpartition(b";")[2]
        if (len(kdesc) < len(desc)) if prefix else (len(kdesc) != len(desc)):
            return 0
        head = kdesc[: len(desc)]
        if (head.lower() != desc.lower()) if icase else (head != desc):
            return 0
        out(ktype + b" '" + kdesc.split(b"\0", 1)[0] + b"'\n")
        return _unlinked(key, parent)

    def search(parent: int, keyring: int, raw: bytes | None, errno: int) -> int:
        assert desc is not None
        if raw is None or not raw.startswith(b"keyring;"):
            return 0
        count = 0
        while True:
            try:
                key = ku.search(keyring, type_, desc, 0)
            except OSError:
                key = -1  # keyctl passes the failed search's -1 on to unlink
            try:
                ku.unlink(key, keyring)
            except OSError:
                return count
            count += 1

    func: Callable[[int, int, bytes | None, int], int]
    if search_mode:
        if len(args) != 2 or prefix or icase:
            raise usage()
        func = search
    elif len(args) == 1:
        if prefix or icase:
            raise usage()
        func = by_type
    elif len(args) == 2:
        func = literal
    else:
        raise usage()
    n = recursive_session_key_scan(func)
    out(b"purged " + d(n) + b" keys\n")
    return 0


def _unlinked(key: int, parent: int) -> int:
    try:
        ku.unlink(key, parent)
    except OSError:
        return 0
    return 1


def act_get_persistent(argv: Argv) -> int:
    """get_persistent keyring [uid]: KEYCTL_GET_PERSISTENT, linked into keyring."""
    if len(argv) not in (2, 3):
        raise usage()
    dest = get_key_id(argv[1])
    uid = _unsigned(argv[2], "uid", 0) if len(argv) > 2 else 0xFFFFFFFF
    ring = _call("keyctl_get_persistent", ku.get_persistent, uid, dest)
    out(d(ring) + b"\n")
    return 0


def act_restrict_keyring(argv: Argv) -> int:
    """restrict_keyring keyring [type [restriction]]: KEYCTL_RESTRICT_KEYRING."""
    if len(argv) < 2 or len(argv) > 4:
        raise usage()
    keyring = get_key_id(argv[1])
    type_ = argv[2] if len(argv) > 2 else None
    restriction = argv[3] if len(argv) == 4 else None
    _call("keyctl_restrict_keyring", ku.restrict_keyring, keyring, type_, restriction)
    return 0


_CAPS = [
    (b"capabilities", 0, 0x01),
    (b"persistent_keyrings", 0, 0x02),
    (b"dh_compute", 0, 0x04),
    (b"public_key", 0, 0x08),
    (b"big_key_type", 0, 0x10),
    (b"key_invalidate", 0, 0x20),
    (b"restrict_keyring", 0, 0x40),
    (b"move_key", 0, 0x80),
    (b"ns_keyring_name", 1, 0x01),
    (b"ns_key_tag", 1, 0x02),
    (b"notify", 1, 0x04),
]


def act_supports(argv: Argv) -> int:
    """supports [cap | --raw]: KEYCTL_CAPABILITIES; exit 0/1 for one capability, 3 if unknown."""
    if len(argv) > 2:
        raise usage()
    raw = ku.capabilities()
    caps = raw.ljust(256, b"\0")
    if len(argv) == 1:
        for name, index, mask in _CAPS:
            out(b"have_" + name + b"=" + (b"1" if caps[index] & mask else b"0") + b"\n")
        return 0
    if argv[1] == b"--raw":
        out(raw.hex().encode() + b"\n")
    for name, index, mask in _CAPS:
        if argv[1] == name:
            return 0 if caps[index] & mask else 1
    return 3


def act_unsupported(argv: Argv) -> int:
    """dh_compute*, pkey_*: recognised (keyctl's command table) but not provided."""
    raise die(b"pykeyctl: " + argv[0] + b": not supported; use keyctl(1)\n", 1)



def _lazy(module: str, name: str, doc: str) -> Callable[[Argv], int]:
    """A command whose code is imported only when it runs (keeps every other command's start fast)."""

    def run(argv: Argv) -> int:
        from importlib import import_module

        return getattr(import_module(module, __package__), name)(argv)

    run.__doc__ = doc
    return run


act_test = _lazy(".testing", "act_test", "--test limits|limits2: keyctl's built-in limit tests.")
act_watch = _lazy(".watch", "act_watch", "watch [-f<filters>] key: print the key's notifications.")
act_watch_add = _lazy(".watch", "act_watch_add", "watch_add fd key: KEYCTL_WATCH_KEY onto a queue.")
act_watch_rm = _lazy(".watch", "act_watch_rm", "watch_rm fd key: KEYCTL_WATCH_KEY removal.")
act_watch_session = _lazy(".watch", "act_watch_session", "watch_session ...: a watched new session.")
act_watch_sync = _lazy(".watch", "act_watch_sync", "watch_sync fd: wait for the monitor to drain.")
