"""Compact JSON for the hook <-> service messages, on CPython's C module ``_json`` directly.

``import json`` (re, the pure-Python decoder and encoder) costs milliseconds in pam_python's
fresh interpreter, paid by every login; ``_json``'s scanner and ASCII quoting are all the
protocol needs.  :func:`too_deep` bounds nesting before the (recursive) C scanner sees a body.
"""

try:
    import _json
except ImportError:  # an interpreter without the C accelerator: the json package works too
    _json = None  # type: ignore[assignment]

#: Deepest nesting of arrays/objects a message may have (requests have none; replies two or three).
MAX_DEPTH = 32


def too_deep(body: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether ``body``'s arrays/objects nest deeper than ``limit``, found before any parsing.

    Brackets inside strings do not count.  The exact scan runs only when the body holds more
    opening brackets than the limit at all, so ordinary messages cost one bytes.count each.
    """
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    depth = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return False


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
