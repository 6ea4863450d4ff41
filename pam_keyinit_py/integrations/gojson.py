"""Go's ``encoding/json`` decoding of one value, with Go's error texts, for the Docker helper.

docker-credential-helpers decode the ``store`` input with
``json.NewDecoder(buf).Decode(&creds)`` and print the error verbatim, and
Docker shows that text to the user.  This module gives the same outcome for
the same bytes:

- syntax errors: ``invalid character 'x' looking for beginning of value`` and
  the scanner's other contexts (after object key, in string literal, ...);
  the character is quoted as Go's ``quoteChar`` does (one byte taken as a
  rune, so ``\\xff`` is ``'ÿ'``);
- end of input: ``EOF`` before any value, ``unexpected EOF`` inside one;
- only the first value counts; whatever follows it is never read;
- type errors: ``json: cannot unmarshal number into Go struct field
  Credentials.ServerURL of type string``, the first one in input order;
  ``null`` leaves a field unset;
- lone UTF-16 surrogate escapes (``\\ud800``) become U+FFFD, as Go does.

Raw bytes that are not UTF-8 in a field's value are refused (:class:`NotUTF8`); Go would turn
them into U+FFFD, silently changing a secret.
"""

from __future__ import annotations

import json
import re

_WS = b" \t\r\n"
_ESCAPES = b'"\\/bfnrt'
_HEX = b"0123456789abcdefABCDEF"
_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


class GoJSONError(ValueError):
    """Decoding failed; ``str()`` is Go's error text (never holds input beyond one character)."""


class NotUTF8(GoJSONError):
    """The value holds bytes that are not UTF-8."""


def quote_char(c: int) -> str:
    """Go's quoteChar: the byte as a rune in single quotes, escaped as strconv.Quote does."""
    if c == 0x27:
        return "'\\''"
    if c == 0x22:
        return "'\"'"
    named = {7: "\\a", 8: "\\b", 9: "\\t", 10: "\\n", 11: "\\v", 12: "\\f", 13: "\\r", 0x5C: "\\\\"}
    if c in named:
        return f"'{named[c]}'"
    if c < 0x20 or c == 0x7F:
        return f"'\\x{c:02x}'"
    ch = chr(c)
    if c < 0x80 or ch.isprintable():
        return f"'{ch}'"
    return f"'\\u{c:04x}'"


def _bad(c: int, context: str) -> GoJSONError:
    return GoJSONError(f"invalid character {quote_char(c)} {context}")


class _Eof(Exception):
    pass


class _Scanner:
    """A byte-level check of one JSON value in Go's scanner order (recursive descent)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.i = 0

    def peek(self) -> int:
        if self.i >= len(self.data):
            raise _Eof
        return self.data[self.i]

    def skip_ws(self) -> int:
        while self.peek() in _WS:
            self.i += 1
        return self.peek()

    def value(self) -> None:
        c = self.skip_ws()
        self.i += 1
        if c == 0x7B:
            self.obj()
        elif c == 0x5B:
            self.array()
        elif c == 0x22:
            self.string()
        elif c == 0x2D or 0x30 <= c <= 0x39:
            self.number(c)
        elif c in b"tfn":
            word = {0x74: b"true", 0x66: b"false", 0x6E: b"null"}[c]
            for expect in word[1:]:
                got = self.peek()
                if got != expect:
                    raise _bad(got, f"in literal {word.decode()} (expecting {quote_char(expect)})")
                self.i += 1
        else:
            raise _bad(c, "looking for beginning of value")

    def obj(self) -> None:
        c = self.skip_ws()
        if c == 0x7D:
            self.i += 1
            return
        while True:
            if c != 0x22:
                raise _bad(c, "looking for beginning of object key string")
            self.i += 1
            self.string()
            c = self.skip_ws()
            if c != 0x3A:
                raise _bad(c, "after object key")
            self.i += 1
            self.value()
            c = self.skip_ws()
            self.i += 1
            if c == 0x7D:
                return
            if c != 0x2C:
                raise _bad(c, "after object key:value pair")
            c = self.skip_ws()

    def array(self) -> None:
        if self.skip_ws() == 0x5D:
            self.i += 1
            return
        while True:
            self.value()
            c = self.skip_ws()
            self.i += 1
            if c == 0x5D:
                return
            if c != 0x2C:
                raise _bad(c, "after array element")

    def string(self) -> None:
        while True:
            c = self.peek()
            self.i += 1
            if c == 0x22:
                return
            if c == 0x5C:
                e = self.peek()
                self.i += 1
                if e == 0x75:
                    for _ in range(4):
                        h = self.peek()
                        if h not in _HEX:
                            raise _bad(h, "in \\u hexadecimal character escape")
                        self.i += 1
                elif e not in _ESCAPES:
                    raise _bad(e, "in string escape code")
            elif c < 0x20:
                raise _bad(c, "in string literal")

    def digits(self) -> None:
        while self.i < len(self.data) and 0x30 <= self.data[self.i] <= 0x39:
            self.i += 1

    def number(self, first: int) -> None:
        if first == 0x2D:
            c = self.peek()
            if not 0x30 <= c <= 0x39:
                raise _bad(c, "in numeric literal")
            self.i += 1
            first = c
        if first != 0x30:
            self.digits()
        # A number ends at any other byte; at the end of input Go still needs one more byte
        # to know the number is complete, except at top level (checked by the caller).
        if self.i < len(self.data) and self.data[self.i] == 0x2E:
            self.i += 1
            c = self.peek()
            if not 0x30 <= c <= 0x39:
                raise _bad(c, "after decimal point in numeric literal")
            self.digits()
        if self.i < len(self.data) and self.data[self.i] in b"eE":
            self.i += 1
            c = self.peek()
            if c in b"+-":
                self.i += 1
                c = self.peek()
            if not 0x30 <= c <= 0x39:
                raise _bad(c, "in exponent of numeric literal")
            self.digits()


def first_value(data: bytes) -> bytes:
    """The bytes of the first JSON value, checked as Go's Decoder reads it; GoJSONError if bad."""
    scanner = _Scanner(data)
    try:
        scanner.skip_ws()
    except _Eof:
        raise GoJSONError("EOF") from None
    start = scanner.i
    try:
        scanner.value()
    except _Eof:
        raise GoJSONError("unexpected EOF") from None
    return data[start : scanner.i]


class _Object(list):
    """A JSON object as its (key, value) pairs in input order (Go visits keys in that order)."""


def _go_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "object" if isinstance(value, _Object) else "array"


def _fold(key: str) -> str:
    # Go's field matching folds ASCII case, plus the two non-ASCII runes that fold to ASCII.
    return key.replace("\u017f", "s").replace("\u212a", "k").lower()


def decode_struct(data: bytes, fields: tuple[str, ...], struct: str, package: str) -> dict[str, str]:
    """Decode the first value into a Go struct of string ``fields``, as Decoder.Decode does.

    Returns every field ("" when absent or null).  Raises GoJSONError with Go's text.
    """
    raw = first_value(data)
    # Undecodable bytes become U+DC80..U+DCFF here; Go makes them U+FFFD.  In a key they
    # just fail to match (as in Go); in a field's value they are refused below.
    text = raw.decode(errors="surrogateescape")
    raw_invalid = text != raw.decode(errors="replace")
    try:
        value = json.loads(text, object_pairs_hook=_Object)
    except ValueError:  # not reached for input Go's scanner accepts; never echo the input
        raise GoJSONError("invalid credentials JSON") from None
    kind = _go_kind(value)
    if kind == "null":
        return dict.fromkeys(fields, "")
    if kind != "object":
        raise GoJSONError(f"json: cannot unmarshal {kind} into Go value of type {package}.{struct}")
    out = dict.fromkeys(fields, "")
    folded = {_fold(f): f for f in fields}
    error: str | None = None
    for key, item in value:
        field = key if key in out else folded.get(_fold(key))
        if field is None or item is None:
            continue
        if isinstance(item, str):
            if raw_invalid and _ESCAPED_BYTE.search(item):
                raise NotUTF8("invalid credentials: not valid UTF-8")
            out[field] = _SURROGATE.sub("\ufffd", item)
        elif error is None:
            error = (f"json: cannot unmarshal {_go_kind(item)} into Go struct field "
                     f"{struct}.{field} of type string")
    if error is not None:
        raise GoJSONError(error)
    return out
