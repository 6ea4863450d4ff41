"""The protocol's JSON codec (on CPython's _json, to keep `import json` out of every login).

It must agree with the json package both ways, since keyinit, other clients and the
service may use either.
"""

from __future__ import annotations

import json

import pytest

from pam_keyinit_py import protocol as P

SAMPLES = [
    {"op": "auth", "user": "ann", "uid": 1001, "gid": 1001, "password": 'p"w\\\n\u00e9\u2603\x00'},
    {"ok": True, "tickets": [{"endtime": 1764201234.5, "renewable": False, "principal": None}], "n": -3},
    {"nested": {"a": [[], {}, [1, 2.25e-7, 10**20]]}, "empty": ""},
]


@pytest.mark.parametrize("message", SAMPLES)
def test_round_trip_agrees_with_json(message: dict) -> None:
    frame = P.encode(message, limit=1 << 20)
    body = frame[4:]
    assert int.from_bytes(frame[:4], "big") == len(body)
    assert json.loads(body) == {"v": P.VERSION, **message}  # json reads what we write
    assert P.decode(json.dumps({"v": P.VERSION, **message}, indent=1).encode()) == {"v": 1, **message}
    assert body.isascii()


@pytest.mark.parametrize("text", ["{", '{"v":1} x', '{"v": NaN}', "", "[1]", '{"v":1,}', "'v'"])
def test_malformed_bodies_are_protocol_errors(text: str) -> None:
    with pytest.raises(P.ProtocolError) as info:
        P.decode(text.encode())
    assert info.value.code == P.BAD_REQUEST


def test_values_json_cannot_carry_are_refused() -> None:
    for bad in ({"x": float("nan")}, {"x": object()}, {1: "x"}):
        with pytest.raises((TypeError, ValueError)):
            P.encode(bad)


def test_account_and_chpass_schema_types() -> None:
    """The account check's switches are JSON booleans; a uid must never be one (bool is an int)."""
    ok = {"v": 1, "op": "account", "user": "ann", "uid": 1001, "kuserok": False, "kdc": True}
    assert P.validate_request(ok) is ok
    for bad in ({**ok, "kdc": 1}, {**ok, "uid": True}, {**ok, "kuserok": "no"},
                {"v": 1, "op": "chpass", "user": "ann", "uid": 1, "new_password": "x"},  # no old one
                {"v": 1, "op": "chpass", "user": "ann", "uid": 1, "old_password": "o", "new": "x"}):
        with pytest.raises(P.ProtocolError) as info:
            P.validate_request(bad)
        assert info.value.code == P.BAD_REQUEST
    assert {"account", "chpass"} <= P.ROOT_OPS


def test_nesting_is_bounded_before_parsing_and_brackets_in_strings_do_not_count() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(P.ProtocolError, match="nested deeper"):
        P.decode(deep)
    # Without the pre-scan (a reply), the C scanner's RecursionError is still a ProtocolError.
    with pytest.raises(P.ProtocolError, match="RecursionError"):
        P.decode(deep, max_depth=None)
    password = "[{" * 500 + '\\"]' * 10
    ok = P.decode(json.dumps({"v": 1, "op": "status", "p": password, "l": [[[1]]]}).encode())
    assert ok["p"] == password
    assert P._too_deep(b"[" * 33) and not P._too_deep(b"[" * 32)


def test_version_is_exact_and_client_values_are_clipped() -> None:
    for version in ("true", "1.0", '"1"', "[1]"):
        with pytest.raises(P.ProtocolError, match="unsupported protocol version"):
            P.decode(f'{{"v": {version}, "op": "status"}}'.encode())
    with pytest.raises(P.ProtocolError) as err:
        P.validate_request({"v": 1, "op": "status", "x" * 60_000: 1})
    assert len(str(err.value)) < 120
    assert len(P.brief("y" * 10_000)) < 70 and len(P.brief({"a": 1})) < 20


def test_auth_answers_are_a_bounded_list_of_strings() -> None:
    """``auth``'s answers (the KDC's preauth questions, answered by the hook): strings only, at
    most MAX_ANSWERS of at most MAX_ANSWER characters, no NUL; the error never quotes them."""
    base = {"v": 1, "op": "auth", "user": "a", "uid": 1000, "gid": 1000, "password": "pw"}
    assert P.validate_request({**base, "answers": ["123456"]})["answers"] == ["123456"]
    assert P.validate_request({**base, "answers": ["x" * P.MAX_ANSWER] * P.MAX_ANSWERS})
    for bad in (["1"] * (P.MAX_ANSWERS + 1), ["x" * (P.MAX_ANSWER + 1)], [123456], ["12\x0034"],
                "123456", ["\ud800"], [["1"]]):
        with pytest.raises(P.ProtocolError) as err:
            P.validate_request({**base, "answers": bad})
        assert err.value.code == P.BAD_REQUEST and "123456" not in str(err.value)
    assert P.PROMPT in P.ERROR_CODES and P.PROMPT in P.OPS["auth"].errors
