"""OTP preauth relayed through the PAM conversation, against a real MIT KDC and a RADIUS server.

The realm (krb5/realm.sh start -O) has kdc.conf's ``[otp]`` DEFAULT token type pointing at
lab/radius.py's responder on a UNIX socket; krb5kdc's otp module (krb5-otp) sends it an
Access-Request with the token value, inside the FAST armor the service takes from the host
keytab (``fast = "try"``, the default).  The OTP user is an OTP-only principal (no key: no
password can log it in, ``+requires_preauth``, string attribute ``otp = []``): MIT's OTP
replaces the password, as kinit shows (it asks only "Enter OTP Token Value").

Through the service's ``auth`` op directly and through pamtester (which answers the
conversation's prompts from stdin, one line each) with the hook:
- the first ``auth`` answers ``prompt`` with the KDC's question, sends nothing to RADIUS, stores
  nothing; the second, with ``answers``, gets the TGT into KEYRING:persistent:<uid>;
- a wrong token is refused (bad_password / PAM_AUTH_ERR) and nothing is stored;
- a user without OTP gets the TGT in one round, and RADIUS is never asked;
- an answer equal to the password (what sshd's PasswordAuthentication conversation gives every
  echo-off prompt) is never sent, and the login is refused.

Before this change the first ``auth`` of an OTP user killed keyinit-ticketd: krb5 1.20.1 calls
the NULL prompter pykrb5 was given (``test_otp_user_is_asked...`` then saw service_unavailable).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pam_keyinit_py import protocol as P
from pam_keyinit_py.lab.radius import Responder
from pam_keyinit_py.lab.realm import Realm, available
from tests.conftest import delete_user, make_user, require, require_root
from tests.fixtures_krb5 import add_user_principal, clear_persistent_caches
from tests.fixtures_pam import STRERROR
from tests.kdc.ticketd import TEST_CONFIG, TicketD, persistent_caches, public_tmpdir, readable_krb5_env

OTP_PROMPT = "Enter OTP Token Value"


class OtpRealm:
    """A realm whose KDC asks ``radius`` about OTP tokens."""

    def __init__(self, realm: Realm, radius: Responder) -> None:
        self.realm, self.radius = realm, radius


@pytest.fixture(scope="module")
def otp_realm() -> Iterator[OtpRealm]:
    require_root()
    require(available(), "MIT KDC tools (krb5kdc, kdb5_util, kadmin.local) not installed")
    require(Path("/usr/lib/x86_64-linux-gnu/krb5/plugins/preauth/otp.so").exists()
            or any(Path("/usr/lib").glob("*/krb5/plugins/preauth/otp.so")),
            "the KDC's OTP preauth module is not installed (apt-get install krb5-otp)")
    sockdir = Path(tempfile.mkdtemp(prefix="pko-radius-"))
    radius = Responder(sockdir / "otp.sock").start()
    try:
        realm = Realm.start(None, "PKO.TEST", maxlife="60s", maxrenew="10m", otp_server=radius.path)
        try:
            yield OtpRealm(realm, radius)
        finally:
            realm.stop()
    finally:
        radius.stop()
        shutil.rmtree(sockdir, ignore_errors=True)


@pytest.fixture
def otp_ticketd(otp_realm: OtpRealm) -> Iterator[TicketD]:
    directory = public_tmpdir("pko-ticketd-")
    daemon = TicketD(directory, otp_realm.realm.env, **TEST_CONFIG)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()
        print(daemon.log())
        shutil.rmtree(directory, ignore_errors=True)


class OtpUser:
    """A local "pko" user whose principal logs in with an OTP token only (``token``)."""

    def __init__(self, otp: OtpRealm, user) -> None:  # noqa: ANN001 - a tests.conftest.TestUser
        self.user, self.name, self.uid, self.gid = user, user.name, user.uid, user.gid
        self.principal = otp.realm.add_principal(user.name, nokey=True)
        otp.realm.modify_principal(user.name, "+requires_preauth")
        otp.realm.set_string(user.name, "otp", "[]")
        self.password = secrets.token_urlsafe(12)  # what the user types at "Password:"; no key has it
        # Long and random, so "not in the log" cannot pass or fail by chance (the responder
        # compares any bytes; a real token is 6 digits).
        self.token = secrets.token_hex(16)
        otp.radius.expect(user.name, self.token)

    def auth(self, daemon: TicketD, **extra: object) -> dict:
        return daemon.request({"op": "auth", "user": self.name, "uid": self.uid, "gid": self.gid,
                               "password": self.password, **extra})


@pytest.fixture
def otp_user(otp_realm: OtpRealm) -> Iterator[OtpUser]:
    user = make_user("pko")
    try:
        u = OtpUser(otp_realm, user)
        yield u
    finally:
        otp_realm.radius.expect(user.name, None)
        clear_persistent_caches(user.uid)
        delete_user(user)


@pytest.fixture
def plain_user(otp_realm: OtpRealm):
    made = add_user_principal(otp_realm.realm, make_user("pko"))
    try:
        yield made
    finally:
        clear_persistent_caches(made.uid)
        delete_user(made.user)


# ------------------------------------------------------------------ the service's auth op


def test_otp_user_is_asked_then_gets_tgt_with_the_token(otp_realm, otp_ticketd, otp_user):
    first = otp_user.auth(otp_ticketd)
    assert first.get("code") == P.PROMPT, first
    assert first["prompts"] == [{"text": OTP_PROMPT, "hidden": True}], first
    assert first["answered"] == 0 and first["principal"] == otp_user.principal
    # Nothing was sent for the question, nothing stored, and the service lives on.
    assert otp_realm.radius.requests(otp_user.name) == []
    assert persistent_caches(otp_user.uid) == {}
    second = otp_user.auth(otp_ticketd, answers=[otp_user.token])
    assert second.get("ok") is True, (second, otp_ticketd.log())
    assert second["principal"] == otp_user.principal
    assert second["ccache"].startswith(f"KEYRING:persistent:{otp_user.uid}:")
    assert otp_realm.radius.requests(otp_user.name) == [True]
    caches = persistent_caches(otp_user.uid)
    assert len(caches) == 1 and all(owner == otp_user.uid for keys in caches.values() for owner, _ in keys)
    log = otp_ticketd.log()
    assert otp_user.token not in log and otp_user.password not in log


def test_wrong_token_is_refused_and_stores_nothing(otp_realm, otp_ticketd, otp_user):
    wrong = secrets.token_hex(16)  # never the token (a 2**-128 chance)
    reply = otp_user.auth(otp_ticketd, answers=[wrong])
    assert reply.get("code") == P.BAD_PASSWORD, reply
    assert otp_realm.radius.requests(otp_user.name) == [False]
    assert persistent_caches(otp_user.uid) == {}
    assert wrong not in otp_ticketd.log()


def test_user_without_otp_gets_tgt_in_one_round(otp_realm, otp_ticketd, plain_user):
    reply = otp_ticketd.request({"op": "auth", "user": plain_user.name, "uid": plain_user.uid,
                                 "gid": plain_user.gid, "password": plain_user.password})
    assert reply.get("ok") is True, (reply, otp_ticketd.log())
    assert otp_realm.radius.requests(plain_user.name) == []
    assert len(persistent_caches(plain_user.uid)) == 1


def test_answers_are_bounded_by_the_protocol(otp_realm, otp_ticketd, otp_user):
    """Too many, too long or non-string answers are refused by the service (sent raw: the
    client library refuses them before sending), and no KDC exchange is made for them."""
    for answers in (["1"] * (P.MAX_ANSWERS + 1), ["x" * (P.MAX_ANSWER + 1)], [7], "123456"):
        message = {"v": P.VERSION, "op": "auth", "user": otp_user.name, "uid": otp_user.uid,
                   "gid": otp_user.gid, "password": otp_user.password, "answers": answers}
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(otp_ticketd.socket)
            P.send_message(sock, message)
            reply = P.recv_message(sock, P.MAX_REPLY)
        assert reply.get("code") == P.BAD_REQUEST, reply
    assert otp_ticketd.alive()
    assert otp_realm.radius.requests(otp_user.name) == []


def test_password_check_and_change_of_an_otp_user_keep_the_service_alive(otp_realm, otp_ticketd, otp_user):
    """chpass's kadmin/changepw exchange (pam_sm_chauthtok) meets the same OTP question: it is
    declined (chpass relays nothing) instead of libkrb5 calling a NULL prompter (a segfault)."""
    base = {"op": "chpass", "user": otp_user.name, "uid": otp_user.uid, "old_password": otp_user.password}
    for message in (base, {**base, "new_password": "N3w-" + secrets.token_urlsafe(12)}):
        reply = otp_ticketd.request(message)
        assert reply.get("code") == P.KDC_ERROR, (reply, otp_ticketd.log())
        assert otp_ticketd.alive()
    assert otp_realm.radius.requests(otp_user.name) == []


# ------------------------------------------------------------------ the hook through real libpam


def _service(pamwrap, sock: str) -> str:
    return pamwrap.service("pko-login", [
        pamwrap.hook_line("auth", "required", f"socket={sock}"),
        "account required pam_permit.so",
        pamwrap.hook_line("session", "required", f"force revoke tickets socket={sock}"),
    ])


#: pam_wrapper's message when all 62 of its per-process /tmp/pam.X directories are taken (other
#: suites running pamtester in parallel): pamtester never reached libpam, so it is run again.
PWRAP_FULL = "pwrap_init: Failed to find a possible path"


def _pamtester(pamwrap, service: str, user: str, lines: list[str], *ops: str):
    """pamtester answers each conversation prompt with the next line of its stdin (pam_misc's misc_conv)."""
    for _attempt in range(60):
        read_fd, write_fd = os.pipe()
        os.write(write_fd, "".join(f"{line}\n" for line in lines).encode())
        os.close(write_fd)
        try:
            res = pamwrap.run(service, user, *ops, stdin=read_fd)
        finally:
            os.close(read_fd)
        if PWRAP_FULL not in res.stderr:
            return res
        time.sleep(0.5)
    return res


@pytest.fixture
def otp_krb5(otp_realm: OtpRealm) -> Iterator[dict[str, str]]:
    directory = public_tmpdir("pko-krb5-")
    try:
        yield readable_krb5_env(otp_realm.realm.env, directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_pam_login_asks_the_token_and_stores_the_tgt(pamwrap, otp_realm, otp_ticketd, otp_user, otp_krb5):
    service = _service(pamwrap, otp_ticketd.socket)
    # authenticate only: the TGT stays as the service's pending login (a session's end would clear it).
    res = _pamtester(pamwrap, service, otp_user.name, [otp_user.password, otp_user.token], "authenticate")
    out = res.stdout + res.stderr
    assert res.returncode == 0, out + otp_ticketd.log()
    assert f"{OTP_PROMPT}: " in out, out  # the KDC's question, asked by the hook through the conversation
    assert otp_realm.radius.requests(otp_user.name) == [True]
    klist = otp_user.user.run(["klist"], env=otp_krb5)
    assert f"Default principal: {otp_user.principal}" in klist.stdout, klist.stdout + klist.stderr
    assert f"KEYRING:persistent:{otp_user.uid}:" in klist.stdout


def test_pam_wrong_token_is_auth_err(pamwrap, otp_realm, otp_ticketd, otp_user):
    service = _service(pamwrap, otp_ticketd.socket)
    wrong = secrets.token_hex(16)  # never the token (a 2**-128 chance)
    res = _pamtester(pamwrap, service, otp_user.name, [otp_user.password, wrong], "authenticate")
    assert res.returncode != 0 and STRERROR["auth_err"] in res.stderr, res.stdout + res.stderr
    assert otp_realm.radius.requests(otp_user.name) == [False]
    assert persistent_caches(otp_user.uid) == {}


def test_pam_plain_user_is_not_asked(pamwrap, otp_realm, otp_ticketd, plain_user):
    service = _service(pamwrap, otp_ticketd.socket)
    res = _pamtester(pamwrap, service, plain_user.name, [plain_user.password], "authenticate")
    assert res.returncode == 0, res.stdout + res.stderr + otp_ticketd.log()
    assert OTP_PROMPT not in res.stdout + res.stderr
    assert otp_realm.radius.requests(plain_user.name) == []


def test_pam_answer_equal_to_the_password_is_never_sent(pamwrap, otp_realm, otp_ticketd, otp_user):
    """sshd's PasswordAuthentication conversation answers every echo-off prompt with the password."""
    service = _service(pamwrap, otp_ticketd.socket)
    res = _pamtester(pamwrap, service, otp_user.name, [otp_user.password, otp_user.password], "authenticate")
    out = res.stdout + res.stderr
    assert res.returncode != 0 and STRERROR["auth_err"] in res.stderr, out
    assert "keyboard-interactive" in out, out  # the hook's message says why and what to use
    assert otp_realm.radius.requests(otp_user.name) == []  # the password never reached the OTP server
    assert persistent_caches(otp_user.uid) == {}


@pytest.mark.parametrize("silent", [False, True], ids=["flags-0", "PAM_SILENT"])
def test_pam_silent_asks_the_token_but_drops_the_message(pamwrap, otp_realm, otp_ticketd, otp_user, silent):
    """pam_authenticate(PAM_SILENT): the password and the KDC's question are still asked (prompts),
    the hook's PAM_ERROR_MSG about the unusable answer is not shown (as pam_krb5's pamk5_conv)."""
    service = _service(pamwrap, otp_ticketd.socket)
    op = "authenticate(PAM_SILENT)" if silent else "authenticate"
    res = _pamtester(pamwrap, service, otp_user.name, [otp_user.password, otp_user.password], op)
    out = res.stdout + res.stderr
    assert res.returncode != 0 and STRERROR["auth_err"] in res.stderr, out
    assert "Password: " in out and f"{OTP_PROMPT}: " in out, out
    assert ("keyboard-interactive" in out) is not silent, out
    assert otp_realm.radius.requests(otp_user.name) == []
