"""Compact JSON for the hook <-> service messages, on CPython's C module ``_json`` directly.

``import json`` (re, the pure-Python decoder and encoder) costs milliseconds in pam_python's
fresh interpreter, paid by every login; ``_json``'s scanner and ASCII quoting are all the
protocol needs.  :func:`too_deep` bounds nesting before the (recursive) C scanner sees a body.
"""

try:
    import _json
except ImportError:  # an interpreter without the C accelerator: the json package works too
    _json = None  # type: ignore[assignment]

if False:  # typing.TYPE_CHECKING: re is imported on first need (see _string_literal)
    import re

#: Deepest nesting of arrays/objects a message may have (requests have none; replies two or three).
MAX_DEPTH = 32


def too_deep(body: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether ``body``'s arrays/objects nest deeper than ``limit`` (>= 0), found before any parsing.

    Brackets inside strings do not count (a string runs from a quote to the next quote that no
    backslash escapes, or to the end).  The depth is the highest running count of openers minus
    closers from the start, so unbalanced closers lower it.  Ordinary messages cost one
    bytes.count each; a body with more openers than the limit costs a few linear passes in C
    (replace, split, translate, int arithmetic), never a Python step per byte: any local user
    may send one to the root service.
    """
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    walk = _brackets_outside_strings(body).translate(_FOLD, _NOT_BRACKETS)
    if walk.count(b"[") <= limit:
        return False
    return _rises_above(walk, limit)


def _brackets_outside_strings(body: bytes) -> bytes:
    """``body`` without its string literals: the bytes outside strings, joined.

    Inside a string a backslash escapes the next byte, so escaped backslashes are dropped
    first, and then the quote of each backslash-quote: every quote left opens or closes a
    string, and split() hands back the outside pieces at even places.  That reading is wrong
    only where a backslash-quote stood outside a string (not JSON: there the quote opens one),
    and then a backslash is left in an outside piece: such a body is read again exactly, by
    :func:`_exact_outside`.
    """
    plain = body.replace(b"\\\\", b"")
    outside = b"".join(plain.replace(b'\\"', b"\\").split(b'"')[::2])
    if b"\\" not in outside:
        return outside
    return _exact_outside(plain)


def _exact_outside(plain: bytes) -> bytes:
    """The bytes outside strings of a body whose escaped backslashes are already dropped.

    Each backslash left escapes the byte after it, and only an escaped quote matters (it does
    not end a string; outside one, its quote still opens one), so each becomes a NUL (NULs
    already there become SOH).  One pattern then removes the strings: an opening quote or NUL,
    anything but a quote, the closing quote if any.
    """
    marked = plain.translate(_NUL_TO_SOH).replace(b'\\"', b"\x00")
    return _string_literal().sub(b"", marked)


#: Running sums are computed CHUNK steps at a time, as 16-bit digits of one integer.
_CHUNK = 4096
_DIGIT = 16
_ONES = int.from_bytes(b"\x01\x00" * _CHUNK, "little")  # a 1 in each of CHUNK digits


def _rises_above(walk: bytes, limit: int) -> bool:
    """Whether the running sum of ``walk`` (``[`` is +1, ``]`` is -1, from 0) exceeds ``limit``.

    In a chunk of n steps, with base ``B`` = 2**16, openers ``A`` = the sum of ``B**i`` over the
    openers' places i, and c openers, ``((2c - n) * B**n + ones - 2A) // (B - 1)`` holds in digit
    i the climb after step i (``ones``: a 1 in every digit).  Adding ``2**15 - room - 1`` to
    every digit, where room is the limit less the height the chunk starts at, sets a digit's
    top bit exactly where the walk is above the limit; digits stay in 0..2**16 - 1, so none
    borrows from another.  A chunk with no more openers than the room left is skipped.
    """
    height = 0
    for start in range(0, len(walk), _CHUNK):
        part = walk[start:start + _CHUNK]
        steps, openers = len(part), part.count(b"[")
        room = limit - height  # 0 <= room < openers <= steps <= _CHUNK when the chunk is scanned
        if openers > room:
            digits = bytearray(2 * steps)
            digits[::2] = part.translate(_OPENER_IS_1)
            ones = _ONES >> (_DIGIT * (_CHUNK - steps))
            climbs = (((2 * openers - steps) << (_DIGIT * steps)) + ones
                      - 2 * int.from_bytes(digits, "little")) // ((1 << _DIGIT) - 1)
            top = 1 << (_DIGIT - 1)
            if (climbs + (top - room - 1) * ones) & (ones * top):
                return True
        height += 2 * openers - steps
    return False


#: {-> [ and }-> ], every other byte deleted: what is left of a body is one walk of "[" and "]".
_FOLD = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(range(256)).translate(None, b"[]{}")  # built in C: the hook imports this
_OPENER_IS_1 = bytes.maketrans(b"[]", b"\x01\x00")
_NUL_TO_SOH = bytes.maketrans(b"\x00", b"\x01")
_STRING_LITERAL: "re.Pattern[bytes] | None" = None


def _string_literal() -> "re.Pattern[bytes]":
    """The pattern of one string in :func:`_exact_outside`, whose escaped quotes are NULs.

    ``re`` is imported here, for the odd body with a backslash outside strings, not with the
    module: the PAM hook reads replies through this module and pays for every import per login.
    """
    global _STRING_LITERAL
    if _STRING_LITERAL is None:
        import re

        _STRING_LITERAL = re.compile(b'[\x00"][^"]*+"?')
    return _STRING_LITERAL


def dumps(value: object) -> str:
    """Compact ASCII JSON of dicts (str keys), lists, str, int, float, bool and None."""
    if isinstance(value, str):
        return _quote(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("NaN and infinities are not JSON")
        return float.__repr__(value)
    if isinstance(value, dict):
        items = []
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"JSON object keys must be str, not {type(key).__name__}")
            items.append(f"{_quote(key)}:{dumps(item)}")
        return "{" + ",".join(items) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(dumps(item) for item in value) + "]"
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class _ScanContext:
    """What _json.make_scanner reads from a decoder: plain JSON, strict strings."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int

    @staticmethod
    def parse_constant(name: str) -> object:
        raise ValueError(f"{name} is not allowed")


def loads(text: str) -> object:
    """Parse one JSON document (the whole of ``text``, JSON whitespace around it allowed)."""
    if _json is None:
        import json

        return json.loads(text)
    body = text.strip(" \t\n\r")
    try:
        value, end = _SCANNER(body, 0)
    except StopIteration as stop:
        raise ValueError(f"invalid JSON at offset {stop.value}") from None
    if end != len(body):
        raise ValueError(f"extra data at offset {end}")
    return value


if _json is not None:
    _quote = _json.encode_basestring_ascii
    _SCANNER = _json.make_scanner(_ScanContext)
else:  # pragma: no cover - CPython always has _json
    import json as _json_module

    _quote = _json_module.encoder.encode_basestring_ascii  # type: ignore[assignment]
