"""The hook's relay of the KDC's preauth questions (pam/client.py ``_relay_prompts``, the
``search_k5login`` search) with a scripted conversation and a scripted service, and the
service's cleaning of a question's text (tickets/preauth.py).

The real path (an MIT KDC with the otp module and a RADIUS responder, pamtester and ssh) is
tests/kdc/test_otp.py and tests/e2e/test_otp_ssh.py; these cover the branches a KDC does not
reach there: a visible question, no answer, an answer equal to the password, one too long, a
KDC that asks again, a malformed reply, and an OTP principal ahead of the right one in
~/.k5login.
"""

from __future__ import annotations

from typing import Any

import pytest

from pam_keyinit_py import protocol as P
from pam_keyinit_py.pam import client
from pam_keyinit_py.pam.options import Options

USER, PASSWORD, UID, GID = "alice", "pa55-word", 1234, 1234
ECHO_OFF, ECHO_ON, ERROR_MSG, TEXT_INFO = 1, 2, 3, 4


class _Msg:
    def __init__(self, style: int, text: str) -> None:
        self.msg_style, self.msg = style, text


class _Resp:
    def __init__(self, resp: str | None) -> None:
        self.resp, self.resp_retcode = resp, 0


class FakePamh:
    """pam_python's handle, as far as the relay uses it: a conversation that answers from a list."""

    PAM_PROMPT_ECHO_OFF, PAM_PROMPT_ECHO_ON = ECHO_OFF, ECHO_ON
    PAM_ERROR_MSG, PAM_TEXT_INFO = ERROR_MSG, TEXT_INFO
    PAM_SILENT = 0x8000
    Message = _Msg

    def __init__(self, answers: list[str | None]) -> None:
        self.answers = list(answers)
        self.shown: list[tuple[int, str]] = []

    def conversation(self, message: _Msg) -> _Resp:
        self.shown.append((message.msg_style, message.msg))
        if message.msg_style in (ECHO_OFF, ECHO_ON):
            return _Resp(self.answers.pop(0))
        return _Resp(None)


class FakeService:
    """The service's side of ``client.request``: records each request, answers from a list."""

    def __init__(self, replies: list[dict[str, Any]]) -> None:
        self.replies = list(replies)
        self.sent: list[dict[str, Any]] = []

    def __call__(self, opts: Options, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        self.sent.append(dict(message))
        return self.replies.pop(0)


def _prompt(*questions: tuple[str, bool], principal: str = f"{USER}@EXAMPLE.TEST") -> dict[str, Any]:
    return {**P.reply_error(P.PROMPT, "the KDC's preauth asks"), "banner": "",
            "prompts": [{"text": t, "hidden": h} for t, h in questions], "answered": 0,
            "principal": principal}


def _relay(monkeypatch: pytest.MonkeyPatch, pamh: FakePamh, service: FakeService, first: dict[str, Any],
           flags: int = 0, **opts: object) -> dict[str, Any]:
    monkeypatch.setattr(client, "request", service)
    pw = type("Pw", (), {"pw_uid": UID, "pw_gid": GID})()
    return client._relay_prompts(pamh, flags, Options(**opts), USER, pw, PASSWORD, first)  # type: ignore[arg-type]


def test_a_hidden_question_is_asked_echo_off_and_auth_is_sent_again_with_the_answer(monkeypatch):
    pamh, service = FakePamh(["123456"]), FakeService([P.reply_ok(principal="alice@EXAMPLE.TEST")])
    reply = _relay(monkeypatch, pamh, service, _prompt(("Enter OTP Token Value", True)))
    assert reply["ok"]
    assert pamh.shown == [(ECHO_OFF, "Enter OTP Token Value: ")]
    [again] = service.sent
    assert again["answers"] == ["123456"] and again["password"] == PASSWORD
    assert again["principal"] == "alice@EXAMPLE.TEST" and again["op"] == "auth"


def test_under_pam_silent_the_banner_is_dropped_and_the_question_still_asked(monkeypatch):
    asks = {**_prompt(("Enter OTP Token Value", True)), "banner": "Use your token"}
    for flags, shown in ((0, [(TEXT_INFO, "Use your token")]), (FakePamh.PAM_SILENT, [])):
        pamh, service = FakePamh(["123456"]), FakeService([P.reply_ok(principal="alice@EXAMPLE.TEST")])
        assert _relay(monkeypatch, pamh, service, asks, flags)["ok"]
        assert pamh.shown == [*shown, (ECHO_OFF, "Enter OTP Token Value: ")]


def test_a_visible_question_is_asked_echo_on(monkeypatch):
    pamh, service = FakePamh(["blue"]), FakeService([P.reply_ok(principal="alice@EXAMPLE.TEST")])
    _relay(monkeypatch, pamh, service, _prompt(("Favourite colour", False)))
    assert pamh.shown == [(ECHO_ON, "Favourite colour: ")]


@pytest.mark.parametrize(("answer", "why"), [
    (None, "no answer"),
    (PASSWORD, "answered it with the password"),
    ("é" * 600, "too long"),  # 600 characters but 1200 bytes: libkrb5's buffer is in bytes
])
def test_an_answer_that_cannot_be_sent_refuses_without_asking_the_service(monkeypatch, answer, why):
    pamh, service = FakePamh([answer]), FakeService([])
    reply = _relay(monkeypatch, pamh, service, _prompt(("Enter OTP Token Value", True)))
    assert client.reply_code(reply) == P.PROMPT
    assert why in reply["error"]
    assert service.sent == []  # the password (or nothing) never reaches the KDC's OTP server
    assert pamh.shown[-1][0] == ERROR_MSG and why in pamh.shown[-1][1]


def test_a_kdc_that_asks_again_is_refused_after_one_round(monkeypatch):
    # A second round would send the first token again, which an OTP server refuses as a replay.
    pamh = FakePamh(["111111", "222222"])
    service = FakeService([_prompt(("Enter OTP Token Value", True)), P.reply_ok(principal="x")])
    reply = _relay(monkeypatch, pamh, service, _prompt(("Enter OTP Token Value", True)))
    assert client.reply_code(reply) == P.PROMPT
    assert len(service.sent) == 1 and pamh.answers == ["222222"]


def test_a_malformed_question_is_a_bad_reply_not_a_crash(monkeypatch):
    pamh, service = FakePamh(["x"]), FakeService([])
    first = {**_prompt(), "prompts": ["not a question"]}
    reply = _relay(monkeypatch, pamh, service, first)
    assert client.reply_code(reply) == P.BAD_REQUEST and service.sent == [] and pamh.shown == []


def test_search_k5login_tries_the_next_principal_before_relaying_a_question(monkeypatch):
    """An OTP principal asks its token whatever the password: a later principal that takes the
    password wins, and the question is relayed only when none does (naming its principal)."""
    pw = type("Pw", (), {"pw_uid": UID, "pw_gid": GID})()
    monkeypatch.setattr(client, "k5login_principals", lambda _pw: ["otp@EXAMPLE.TEST", "alice@EXAMPLE.TEST"])
    opts = Options(search_k5login=True)

    service = FakeService([_prompt(("Enter OTP Token Value", True), principal="otp@EXAMPLE.TEST"),
                           P.reply_ok(principal="alice@EXAMPLE.TEST")])
    monkeypatch.setattr(client, "request", service)
    reply = client._auth_request(opts, USER, pw, PASSWORD)  # type: ignore[arg-type]
    assert reply["ok"]
    assert [m["principal"] for m in service.sent] == ["otp@EXAMPLE.TEST", "alice@EXAMPLE.TEST"]

    asks = _prompt(("Enter OTP Token Value", True), principal="otp@EXAMPLE.TEST")
    service = FakeService([asks, P.reply_error(P.BAD_PASSWORD, "wrong")])
    monkeypatch.setattr(client, "request", service)
    assert client._auth_request(opts, USER, pw, PASSWORD) is asks  # type: ignore[arg-type]
    pamh = FakePamh(["123456"])
    service = FakeService([P.reply_ok(principal="otp@EXAMPLE.TEST")])
    monkeypatch.setattr(client, "request", service)
    client._relay_prompts(pamh, 0, opts, USER, pw, PASSWORD, asks)  # type: ignore[arg-type]
    assert (TEXT_INFO, "Kerberos asks for otp@EXAMPLE.TEST:") in pamh.shown
    assert service.sent[0]["principal"] == "otp@EXAMPLE.TEST"


def test_the_service_shows_a_kdc_question_without_control_characters():
    from pam_keyinit_py.tickets import preauth

    # ESC, BEL, CR/LF and the C1 CSI (U+009B, UTF-8 c2 9b) that a terminal would obey.
    raw = b"Enter \x1b[2J\x1b]0;owned\x07OTP\r\nValue\xc2\x9b"
    assert preauth._text(raw) == "Enter [2J]0;ownedOTP  Value"
    assert preauth._text(b"\xff" * 10) == "\ufffd" * 10
    assert len(preauth._text(b"a" * 10_000)) == P.MAX_PROMPT_TEXT
