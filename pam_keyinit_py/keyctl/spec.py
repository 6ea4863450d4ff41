"""Key specifiers as keyctl's get_key_id() parses them, and C's strtoul().

``@t @p @s @u @us @g @a`` map to the ``KEY_SPEC_*`` ids; ``%type:desc`` and
``%:name`` (a keyring) are looked up with request_key(2) and then in
/proc/keys, as libkeyutils' find_key_by_type_and_desc() does; anything else
goes through strtoul(arg, &end, 0) and is truncated to a 32-bit serial.
"""

from __future__ import annotations

from .cli import die

ULONG_MAX = (1 << 64) - 1
_SPACE = b" \t\n\v\f\r"
_HEXDIGITS = b"0123456789abcdefABCDEF"
_SPECIAL = {
    b"@t": -1,  # KEY_SPEC_THREAD_KEYRING
    b"@p": -2,  # KEY_SPEC_PROCESS_KEYRING
    b"@s": -3,  # KEY_SPEC_SESSION_KEYRING
    b"@u": -4,  # KEY_SPEC_USER_KEYRING
    b"@us": -5,  # KEY_SPEC_USER_SESSION_KEYRING
    b"@g": -6,  # KEY_SPEC_GROUP_KEYRING
    b"@a": -7,  # KEY_SPEC_REQKEY_AUTH_KEY
}


def strtoul(s: bytes, base: int = 0) -> tuple[int, bytes]:
    """glibc strtoul(): (value, unparsed rest); no digits gives (0, s) like ``*end == s``."""
    i, n = 0, len(s)
    while i < n and s[i] in _SPACE:
        i += 1
    neg = False
    if i < n and s[i] in b"+-":
        neg = s[i] == 0x2D
        i += 1
    if base in (0, 16) and s[i : i + 2].lower() == b"0x" and i + 2 < n and s[i + 2] in _HEXDIGITS:
        base, i = 16, i + 2
    elif base == 0:
        base = 8 if s[i : i + 1] == b"0" else 10
    start = i
    value = 0
    while i < n:
        c = s[i]
        if 0x30 <= c <= 0x39:
            d = c - 0x30
        elif 0x61 <= c <= 0x7A:
            d = c - 0x61 + 10
        elif 0x41 <= c <= 0x5A:
            d = c - 0x41 + 10
        else:
            break
        if d >= base:
            break
        value = value * base + d
        i += 1
    if i == start:
        return 0, s
    if value > ULONG_MAX:
        return ULONG_MAX, s[i:]
    if neg:
        value = (-value) & ULONG_MAX
    return value, s[i:]


def to_s32(value: int) -> int:
    """Truncate like the C assignment to key_serial_t (int32_t)."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


# /proc/keys: "%x %*s %*u %*s %*x %*d %*d %s %n" then the description.
_PROC_KEYS = (
    rb"\s*([0-9a-fA-F]+)\s+\S+\s+[-+]?\d+\s+\S+\s+[0-9a-fA-F]+\s+[-+]?\d+\s+[-+]?\d+\s+(\S+)\s*"
)


def find_key_by_type_and_desc(type_: bytes, desc: bytes, destringid: int = 0) -> int:
    """libkeyutils' find_key_by_type_and_desc(): request_key(2), then a /proc/keys scan.

    Returns -1 when nothing matches, as the C function does.
    """
    from pam_keyinit_py import keyutils

    try:
        return keyutils.request_key(type_, desc, None, destringid)
    except OSError:
        pass
    try:
        with open("/proc/keys", "rb") as f:
            lines = f.read().split(b"\n")
    except OSError:
        return -1
    import re  # only here: re costs more to import than the rest of a typical run

    pattern = re.compile(_PROC_KEYS)
    dlen = len(desc)
    for line in lines:
        m = pattern.match(line)
        if not m or m.group(2) != type_:
            continue
        kdesc = line[m.end() :]
        if kdesc[:dlen] != desc or kdesc[dlen : dlen + 1] not in (b":", b"", b" "):
            continue
        key = to_s32(int(m.group(1), 16))
        # Types append extras after a colon in /proc/keys, yet colons are legal
        # in descriptions: confirm with the real description, as libkeyutils does.
        try:
            raw = keyutils.describe(key)
        except OSError:
            continue
        if len(raw) + 1 >= 1023:
            continue
        if raw.rpartition(b";")[2] != desc or b";" not in raw:
            continue
        if destringid:
            try:
                keyutils.link(key, destringid)
            except OSError:
                return -1
        return key
    return -1


def get_key_id(arg: bytes) -> int:
    """keyctl's get_key_id(): resolve a key specifier or exit as keyctl does."""
    if arg[:1] == b"@":
        special = _SPECIAL.get(arg)
        if special is None:
            raise die(b"Unknown special key: '" + arg + b"'\n", 2)
        return special
    if arg[:1] == b"%":
        rest = arg[1:]
        if not rest:
            raise die("Incorrect key-by-name spec\n", 2)
        if rest[:1] == b":":
            type_, desc = b"keyring", rest[1:]
        else:
            type_, colon, desc = rest.partition(b":")
            if not colon:
                raise die("Incorrect key-by-name spec\n", 2)
        if not desc:
            raise die("Incorrect key-by-name spec\n", 2)
        key = find_key_by_type_and_desc(type_, desc, 0)
        if key == -1:
            raise die(b"Can't find '" + type_ + b":" + desc + b"'\n", 1)
        return key
    value, rest = strtoul(arg, 0)
    if rest:
        raise die(b"Unparsable key: '" + arg + b"'\n", 2)
    return to_s32(value)
