"""lab/radius.py, the tests' RADIUS responder, against RFC 2865's arithmetic.

The real check is tests/kdc/test_otp.py, where MIT's libkrad (inside krb5kdc) talks to it;
these pin the parts a KDC test cannot tell apart (which side of the XOR went wrong).
"""

from __future__ import annotations

import hashlib
import os
import struct

from pam_keyinit_py.lab import radius as R


def _request(user: bytes, token: bytes, secret: bytes = b"", ident: int = 7) -> bytes:
    auth = os.urandom(16)
    hidden = R.hide_password(token, secret, auth)
    attrs = bytes([R.USER_NAME, 2 + len(user)]) + user + bytes([R.USER_PASSWORD, 2 + len(hidden)]) + hidden
    return struct.pack(">BBH16s", R.ACCESS_REQUEST, ident, 20 + len(attrs), auth) + attrs


def test_password_hiding_round_trips_over_several_blocks() -> None:
    auth = os.urandom(16)
    for clear in (b"1", b"123456", b"x" * 16, b"y" * 40):
        for secret in (b"", b"s3cret"):
            hidden = R.hide_password(clear, secret, auth)
            assert len(hidden) % 16 == 0 and hidden[:len(clear)] != clear
            assert R.unhide_password(hidden, secret, auth) == clear


def test_accepts_only_the_expected_token_with_a_valid_response_authenticator(tmp_path) -> None:
    responder = R.Responder(tmp_path / "s.sock")
    responder.expect("alice", "123456")
    for token, code in ((b"123456", R.ACCESS_ACCEPT), (b"123457", R.ACCESS_REJECT)):
        request = _request(b"alice", token)
        reply = responder.answer(request)
        assert reply is not None and reply[0] == code and reply[1] == request[1]
        expected = hashlib.md5(reply[:4] + request[4:20] + reply[20:] + b"").digest()
        assert reply[4:20] == expected
    assert responder.requests("alice") == [True, False]
    assert responder.answer(_request(b"bob", b"123456"))[0] == R.ACCESS_REJECT  # type: ignore[index]


def test_malformed_and_other_packets_are_dropped(tmp_path) -> None:
    responder = R.Responder(tmp_path / "s.sock")
    good = _request(b"alice", b"1")
    assert responder.answer(bytes([R.ACCESS_ACCEPT]) + good[1:]) is None
    assert responder.answer(good[:20] + bytes([R.USER_NAME, 40]) + b"short") is None
    assert responder.requests("alice") == []
