"""jsonwire.too_deep against a plain per-byte reading of the same rule, on generated and hostile bodies.

The service runs the check on every request body with more openers than the limit, from any
local user, so it must give the reference's answer on everything (JSON or not) and do no Python
step per byte (counted with sys.settrace: a 64 KB body runs a few lines per 4096-byte chunk).
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Callable

import pytest

from pam_keyinit_py.jsonwire import MAX_DEPTH, too_deep

SEED = 20261202


def reference(body: bytes, limit: int = MAX_DEPTH) -> bool:
    """The rule, one byte at a time: brackets in strings do not count; a backslash in a string
    escapes the next byte; a string with no closing quote runs to the end; closers that open
    nothing still lower the depth."""
    depth, in_string, escaped = 0, False, False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in b"[{":
            depth += 1
            if depth > limit:
                return True
        elif byte in b"]}":
            depth -= 1
    return False


def _nested(depth: int, inner: bytes = b"1") -> bytes:
    return b'{"a":' * (depth // 2) + b"[" * (depth % 2) + inner + b"]" * (depth % 2) + b"}" * (depth // 2)


ADVERSARIAL = [
    b"[" * 32, b"[" * 33, b"[" * 33 + b"]" * 33, b"[{" * 16 + b"}]" * 16, b"[{" * 16 + b"[" + b"]}" * 16,
    _nested(32), _nested(33), _nested(31, b'"' + b"[" * 100 + b'"'),
    b'["' + b"[" * 40 + b'"]', b'"\\"' + b"[" * 40, b'"\\\\"' + b"[" * 40, b'"\\\\\\"' + b"[" * 40,
    b"\\" + b'"' + b"[" * 40, b'\\\\"' + b"[" * 40, b"[" * 20 + b'"\\' + b"[" * 20,
    b'["\\u005b\\u007b' + b"[" * 40 + b'"]', b'"\\u0022' + b"[" * 40 + b'"', b'"\\' + b'"' * 2 + b"[" * 40,
    b"]" + b"[" * 33, b"]" + b"[" * 34, b"]]]" + b"[" * 35, b"]]]" + b"[" * 36, b"}" * 5000 + b"{" * 5032,
    b"}" * 5000 + b"{" * 5033, b"[" * 5000 + b"]" * 10000 + b"[" * 10032,
    b"[" * 5000 + b"]" * 10000 + b"[" * 10033, b"[]" * 40000, b"[" * 31 + b"[]" * 40000 + b"]" * 31,
    b"[" * 32 + b"[]" * 40000, b"\x00[" * 40, b"\xff{" * 40,
    (b"[" * 32 + b"]" * 32) * 300, b"]" + (b"[" * 33 + b"]" * 33) * 300, b"]" + (b"[" * 33 + b"]" * 32) * 300,
    b"[" * 4095 + b"]" * 4095 + b"[" * 33, b"]" * 4096 + b"[" * 4129, b"]" * 4096 + b"[" * 4128,
    b'"' + b"[" * 100, b'"' * 2 + b"[" * 33, b'"' * 3 + b"[" * 33, b"[" * 40 + b'"',
]


@pytest.mark.parametrize("body", ADVERSARIAL, ids=range(len(ADVERSARIAL)))
def test_hostile_bodies_get_the_reference_answer(body: bytes) -> None:
    assert too_deep(body) == reference(body)


def _random_body(rng: random.Random) -> bytes:
    alphabet = [b"[", b"]", b"{", b"}", b'"', b"\\", b"a", b":", b",", b"\x00", b"\xff", b"\\u005b", b'\\"']
    weights = [rng.randint(0, 12) for _ in alphabet]
    weights[0] += 1
    return b"".join(rng.choices(alphabet, weights=weights, k=rng.choice([10, 60, 300, 5000])))


def _json_body(rng: random.Random) -> bytes:
    def value(depth: int) -> object:
        kind = rng.randrange(6 if depth < 40 else 3)
        if kind == 0:
            return rng.randrange(100)
        if kind == 1:
            return "".join(rng.choices('ab[]{}"\\\u00e9\n', k=rng.randrange(6)))
        if kind == 2:
            return None
        if kind in (3, 4):
            return [value(depth + 1) for _ in range(rng.randrange(3))]
        return {str(i): value(depth + 1) for i in range(rng.randrange(3))}
    values = [value(0) for _ in range(rng.randrange(1, 4))]
    return json.dumps(values, ensure_ascii=rng.random() < 0.5).encode()


@pytest.mark.parametrize("make", [_random_body, _json_body], ids=["bytes", "json"])
def test_generated_bodies_get_the_reference_answer(make: Callable[[random.Random], bytes]) -> None:
    rng = random.Random(SEED)
    seen = set()
    for _ in range(1500):
        body = make(rng)
        for limit in (0, 1, 3, MAX_DEPTH):
            expected = reference(body, limit)
            seen.add(expected)
            assert too_deep(body, limit) == expected, (limit, body[:200])
    assert seen == {True, False}


def _traced_lines(body: bytes) -> int:
    lines = 0

    def tracer(frame, event, arg):  # type: ignore[no-untyped-def]
        nonlocal lines
        if event == "line":
            lines += 1
        return tracer

    sys.settrace(tracer)
    try:
        too_deep(body)
    finally:
        sys.settrace(None)
    return lines


@pytest.mark.parametrize("unit", [b"[]", b'"a[",', b'\\"[', b"[" * 32 + b"]" * 32],
                         ids=["brackets", "strings", "backslash-outside", "depth-32-blocks"])
def test_no_python_step_per_byte(unit: bytes) -> None:
    body = unit * (65536 // len(unit))
    assert too_deep(body) == reference(body)
    # A few lines per 4096-step chunk, never one per byte (the per-byte loop ran ~260,000).
    assert _traced_lines(body) < len(body) // 100, _traced_lines(body)
