"""The ticket service at login and logout: a real keyinit-ticketd, a real MIT KDC, the real kernel.

The PAM side is played by root processes speaking the protocol (the hook's own path through
libpam is in test_service_pam.py and tests/e2e/).
"""

from __future__ import annotations

import re
import socket
import struct
import time

import pytest

from pam_keyinit_py import protocol as P
from pam_keyinit_py.keyutils import proc
from pam_keyinit_py.lab.users import settle
from pam_keyinit_py.tickets.config import Config
from tests.conftest import delete_user, make_user
from tests.kdc import ticketd as td
from tests.kdc.ticketd import SessionHolder, TicketD, klist_ok, persistent_caches

# The fixtures of tests/kdc/ticketd.py, made visible to pytest in this module.
svc_user, ticketd, user_krb5 = td.svc_user, td.ticketd, td.user_krb5


def _cache_keys(uid: int, ccache: str) -> list[tuple[int, str]]:
    return persistent_caches(uid).get(ccache.rsplit(":", 1)[-1], [])


def test_login_tgt_is_owned_by_user_and_cleared_at_logout(ticketd, svc_user, user_krb5):
    reply = svc_user.auth(ticketd)
    assert reply["ok"], reply
    assert reply["principal"] == svc_user.principal
    assert reply["ccache"].startswith(f"KEYRING:persistent:{svc_user.uid}:")
    keys = _cache_keys(svc_user.uid, reply["ccache"])
    # The cache keyring, the principal key and the krbtgt credential: all owned by the user.
    assert any(desc.startswith("krbtgt/") for _, desc in keys), keys
    assert {owner for owner, _ in keys} == {svc_user.uid}, keys
    holder = SessionHolder(ticketd, svc_user.user)
    assert holder.opened["ok"] and holder.opened["sessions"] == 1
    out = svc_user.user.run(["klist"], env=user_krb5)
    assert out.returncode == 0, out.stderr
    assert f"Ticket cache: KEYRING:persistent:{svc_user.uid}:" in out.stdout
    assert f"krbtgt/{svc_user.principal.split('@')[1]}@" in out.stdout
    closed = holder.close()
    assert closed["ok"] and closed["sessions"] == 0
    assert closed["cleared"] == [reply["ccache"]]
    assert persistent_caches(svc_user.uid) == {}
    assert not klist_ok(svc_user.user, user_krb5)
    # The password never reaches the log.
    assert svc_user.password not in ticketd.log()


def test_wrong_password_and_unknown_principal(ticketd, svc_user, realm):
    bad = svc_user.auth(ticketd, password="not-" + svc_user.password)
    assert not bad["ok"] and bad["code"] == P.BAD_PASSWORD, bad
    assert persistent_caches(svc_user.uid) == {}
    stranger = make_user("pkd")  # a local user without a principal
    try:
        reply = ticketd.request({"op": "auth", "user": stranger.name, "uid": stranger.uid,
                                 "gid": stranger.gid, "password": "whatever-123"})
        assert not reply["ok"] and reply["code"] == P.UNKNOWN_PRINCIPAL, reply
    finally:
        delete_user(stranger)
    assert "not-" + svc_user.password not in ticketd.log()
    assert ticketd.request({"op": "status"})["ok"]


def test_kdc_down_at_login_is_bounded_and_reported(ticketd, svc_user, realm):
    realm.stop_kdc()
    try:
        t0 = time.monotonic()
        reply = svc_user.auth(ticketd)
        elapsed = time.monotonic() - t0
    finally:
        realm.start_kdc()
    assert not reply["ok"] and reply["code"] == P.KDC_UNREACHABLE, reply
    # A bound, not a timing: the service gives up within its kdc_timeout (a stopped KDC refuses).
    bound = Config().kdc_timeout
    assert elapsed < bound + 1, f"auth with the KDC down took {elapsed:.2f}s (bound: kdc_timeout {bound:g} s)"
    assert "no KDC answered" in ticketd.log()
    assert persistent_caches(svc_user.uid) == {}


def test_an_edited_krb5_conf_reaches_the_next_auth(realm, svc_user, tmp_path):
    # The service keeps one krb5 context per thread (its C helper as pykrb5's side): an admin's
    # edit of krb5.conf, here the realm's KDC moved away and back, still reaches the next auth,
    # because libkrb5 re-reads a profile file whose mtime changed (at most once a second).
    original = realm.krb5_conf.read_text()
    moved = re.sub(rf"(\bkdc = \S+):{realm.kdc_port}\b", rf"\g<1>:{_closed_port()}", original)
    assert moved != original, "the realm's krb5.conf names no kdc = <address>:<port>"
    _each_edit_reaches_the_service(realm, tmp_path, lambda daemon: svc_user.auth(daemon),
                                   ((moved, P.KDC_UNREACHABLE), (original, None)), wait=1.1)


def test_a_default_realm_edited_in_krb5_conf_reaches_kuserok(realm, svc_user, tmp_path):
    # A context caches the default realm on first use, and krb5_kuserok's default auth_to_local
    # rule compares the principal's realm with it.  The service's kept contexts are at most
    # PK_KEPT_SECONDS old, so such an edit takes effect within that bound, without a restart.
    from pam_keyinit_py.tickets._krb5_renew import lib

    original = realm.krb5_conf.read_text()
    other = re.sub(r"(\bdefault_realm = )\S+", r"\g<1>OTHER.TEST", original)
    assert other != original, "the realm's krb5.conf names no default_realm"
    ask = {"op": "account", "user": svc_user.name, "uid": svc_user.uid, "principal": svc_user.principal,
           "kuserok": True, "kdc": False}
    _each_edit_reaches_the_service(realm, tmp_path, lambda daemon: daemon.request(ask),
                                   ((other, P.DENIED), (original, None)), wait=lib.PK_KEPT_SECONDS + 1.1)


def _each_edit_reaches_the_service(realm, tmp_path, ask, edits, wait: float) -> None:  # noqa: ANN001
    """A service whose KRB5_CONFIG is a copy of the realm's krb5.conf answers ``ask(daemon)`` with
    ok; then, for each (text, code) of ``edits``, the file is rewritten with ``text`` and after
    ``wait`` seconds (longer than the service keeps what it read before the edit) the answer is
    ``code`` (None: ok)."""
    conf = tmp_path / "krb5.conf"
    conf.write_text(realm.krb5_conf.read_text())
    daemon = TicketD(tmp_path / "d", {**realm.env, "KRB5_CONFIG": str(conf)})
    daemon.start()
    try:
        first = ask(daemon)
        assert first["ok"], (first, daemon.log())
        for text, code in edits:
            conf.write_text(text)
            time.sleep(wait)
            reply = ask(daemon)
            assert reply["ok"] is (code is None) and reply.get("code") == code, (code, reply)
    finally:
        daemon.stop()


def _closed_port() -> int:
    """A loopback UDP/TCP port nothing listens on (bound, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_sessions_closing_one_keeps_the_ticket(ticketd, svc_user, user_krb5):
    ccache = svc_user.auth(ticketd)["ccache"]
    first = SessionHolder(ticketd, svc_user.user)
    assert svc_user.auth(ticketd)["ok"]  # the second login authenticates again, as sshd would
    second = SessionHolder(ticketd, svc_user.user)
    assert second.opened["sessions"] == 2
    reply = first.close()
    assert reply["ok"] and reply["sessions"] == 1 and reply["cleared"] == []
    assert klist_ok(svc_user.user, user_krb5)
    tracked = ticketd.request({"op": "tickets", "uid": svc_user.uid})["tickets"]
    assert tracked and all(t["uid"] == svc_user.uid for t in tracked)
    reply = second.close()
    assert reply["ok"] and reply["sessions"] == 0 and reply["cleared"]
    # Both logins' caches are gone (the first one was retired when the second login switched primary).
    ticketd.wait_for(lambda: persistent_caches(svc_user.uid) == {}, 5, "all caches cleared")
    assert not klist_ok(svc_user.user, user_krb5)
    assert ccache not in str(ticketd.request({"op": "tickets"})["tickets"])


def test_a_login_that_retires_the_previous_cache_stops_tracking_it(ticketd, svc_user):
    """Two auths of one user before any open: the second switches primary and retires the first
    cache (destroyed after the grace), so only the second is tracked, renewed and in the state
    file.  (Before: every retired cache stayed tracked until its renewal failed, growing the state
    each request commits.)"""
    first = svc_user.auth(ticketd)["ccache"]
    second = svc_user.auth(ticketd)["ccache"]
    assert first != second
    tracked = [t["ccache"] for t in ticketd.request({"op": "tickets", "uid": svc_user.uid})["tickets"]]
    assert tracked == [second], tracked
    ticketd.wait_for(lambda: first.rsplit(":", 1)[-1] not in persistent_caches(svc_user.uid), 10,
                     "the retired cache to be destroyed after the grace")
    assert second.rsplit(":", 1)[-1] in persistent_caches(svc_user.uid)


def test_session_of_dead_leader_is_reaped(ticketd, svc_user):
    assert svc_user.auth(ticketd)["ok"]
    holder = SessionHolder(ticketd, svc_user.user)
    assert ticketd.request({"op": "status"})["service"]["sessions"] == 1
    holder.kill()  # like an sshd monitor killed with -9: no close_session ever comes
    ticketd.wait_for(lambda: ticketd.request({"op": "status"})["service"]["sessions"] == 0, 5,
                     "the session of the killed process to be reaped")
    ticketd.wait_for(lambda: persistent_caches(svc_user.uid) == {}, 5, "the reaped login's cache cleared")
    assert f"process {holder.pid} exited without close_session" in ticketd.log()


def test_auth_without_session_is_cleaned_up(realm, svc_user, tmp_path):
    daemon = TicketD(tmp_path / "d", realm.env, pending_auth_timeout=1.5)
    daemon.start()
    try:
        reply = svc_user.auth(daemon)
        assert reply["ok"]
        assert persistent_caches(svc_user.uid)
        daemon.wait_for(lambda: persistent_caches(svc_user.uid) == {}, 10,
                        "the TGT of an auth no session followed to be destroyed")
        assert "not followed by a session" in daemon.log()
    finally:
        daemon.stop()


def test_other_user_cannot_destroy_or_open(ticketd, svc_user, user_krb5):
    ccache = svc_user.auth(ticketd)["ccache"]
    holder = SessionHolder(ticketd, svc_user.user)
    other = make_user("pkd")
    try:
        reply = ticketd.request_as(other, {"op": "destroy", "ccache": ccache})
        assert not reply["ok"] and reply["code"] == P.DENIED, reply
        reply = ticketd.request_as(other, {"op": "tickets", "uid": svc_user.uid})
        assert not reply["ok"] and reply["code"] == P.DENIED, reply
        assert ticketd.request_as(other, {"op": "tickets"})["tickets"] == []
        for message in ({"op": "open", "user": other.name, "uid": other.uid, "gid": other.gid},
                        {"op": "close", "uid": svc_user.uid},
                        {"op": "auth", "user": other.name, "uid": other.uid, "gid": other.gid,
                         "password": "x"}):
            reply = ticketd.request_as(other, message)
            assert not reply["ok"] and reply["code"] == P.DENIED, (message["op"], reply)
        assert klist_ok(svc_user.user, user_krb5)
        assert ticketd.request({"op": "status"})["service"]["sessions"] == 1
        # The owner sees and may destroy their own ticket.
        mine = ticketd.request_as(svc_user.user, {"op": "tickets"})["tickets"]
        assert [t["ccache"] for t in mine] == [ccache]
        reply = ticketd.request_as(svc_user.user, {"op": "destroy", "ccache": ccache})
        assert reply["ok"], reply
        assert not klist_ok(svc_user.user, user_krb5)
    finally:
        delete_user(other)
        holder.close()


def _raw(path: str, payload: bytes) -> tuple[dict | None, bool]:
    """Send raw bytes; return (reply or None, whether the server closed the connection after it)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(path)
        sock.sendall(payload)
        try:
            reply = P.recv_message(sock)
        except (EOFError, P.ProtocolError):
            return None, True
        try:
            closed = sock.recv(1) == b""
        except OSError:
            closed = True
        return reply, closed


def _frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (_frame(b"{not json"), P.BAD_REQUEST),
        (_frame(b"[1, 2]"), P.BAD_REQUEST),
        (_frame(b'{"v": 2, "op": "status"}'), P.BAD_REQUEST),
        (_frame(b'{"v": 1, "op": "format_disk"}'), P.BAD_REQUEST),
        (_frame(b'{"v": 1, "op": "close", "uid": "0"}'), P.BAD_REQUEST),
        (_frame(b'{"v": 1, "op": "close", "uid": true}'), P.BAD_REQUEST),
        (_frame(b'{"v": 1, "op": "status", "extra": 1}'), P.BAD_REQUEST),
        (_frame(b"\xff\xfe"), P.BAD_REQUEST),
        (struct.pack(">I", 50 * 1024 * 1024) + b"{", P.TOO_LARGE),
        (struct.pack(">I", P.MAX_MESSAGE + 1) + b"x" * (P.MAX_MESSAGE + 1), P.TOO_LARGE),
    ],
    ids=["not-json", "not-object", "bad-version", "unknown-op", "uid-string", "uid-bool", "unknown-field",
         "not-utf8", "huge-length", "just-over-limit"],
)
def test_malformed_messages_get_error_and_close(ticketd, payload, code):
    reply, closed = _raw(ticketd.socket, payload)
    assert reply is not None and reply["ok"] is False and reply["code"] == code, reply
    assert closed
    # The service carries on.
    assert ticketd.alive()
    assert ticketd.request({"op": "status"})["ok"]


def test_valid_requests_share_a_connection(ticketd):
    body = P.encode({"op": "status"}) * 3
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(ticketd.socket)
        sock.sendall(body)
        replies = [P.recv_message(sock) for _ in range(3)]
    assert all(r["ok"] for r in replies)


def test_clear_on_logout_all_and_none(realm, svc_user, user_krb5):
    """"all" also clears the user's own kinit at the last logout; "none" leaves every cache in place.
    Either way the persistent keyring of a logged-in uid is touched on its timer (get_persistent)."""
    for policy in ("all", "none"):
        directory = td.public_tmpdir("pkd-policy-")
        daemon = TicketD(directory, realm.env, clear_on_logout=policy, persistent_touch_interval=0.5)
        daemon.start()
        try:
            # The user's own kinit, then a login (auth + session) whose TGT becomes the new primary.
            kinit = svc_user.user.run(["kinit", svc_user.principal], input=svc_user.password + "\n",
                                      env=user_krb5)
            assert kinit.returncode == 0, kinit.stderr
            assert svc_user.auth(daemon)["ok"]
            holder = SessionHolder(daemon, svc_user.user)
            daemon.wait_for(lambda d=daemon: d.log().count(f"get_persistent({svc_user.uid})") >= 3, 5,
                            "the persistent keyring touched on its timer")
            assert len(persistent_caches(svc_user.uid)) == 2
            reply = holder.close()
            if policy == "all":
                assert len(reply["cleared"]) == 2, reply
                daemon.wait_for(lambda: persistent_caches(svc_user.uid) == {}, 5, "every cache cleared")
                assert not klist_ok(svc_user.user, user_krb5)
            else:
                assert reply["cleared"] == []
                assert len(persistent_caches(svc_user.uid)) == 2
                assert daemon.request({"op": "tickets", "uid": svc_user.uid})["tickets"] == []
            # No touches once the uid has no session.
            touches = daemon.log().count(f"get_persistent({svc_user.uid})")
            time.sleep(1.2)
            assert daemon.log().count(f"get_persistent({svc_user.uid})") == touches
        finally:
            daemon.stop()
            print(daemon.log())
            td.clear_persistent_caches(svc_user.uid)
            import shutil

            shutil.rmtree(directory, ignore_errors=True)


def test_key_quota_full_gives_clear_error_and_no_half_cache(ticketd, svc_user):
    """EDQUOT while storing the TGT: a quota error reply, and no cache left behind in the collection."""
    user = svc_user.user
    # Fill the user's key quota (kernel.keys.maxbytes / maxkeys) with keys in their user keyring:
    # big payloads first, then one-byte ones until not even those fit.
    fill = ("i=0; while head -c 1000 /dev/zero | keyctl padd user pkd-big-$i @u >/dev/null 2>&1; "
            "do i=$((i+1)); done; j=0; while keyctl add user pkd-small-$j x @u >/dev/null 2>&1; "
            "do j=$((j+1)); done; echo $i $j")
    settle(svc_user.uid)  # a reused uid's leftovers, freed during the test, would make room
    before = proc.key_user(svc_user.uid)
    try:
        filled = user.run(["sh", "-c", fill])
        assert filled.returncode == 0 and int(filled.stdout.split()[0]) > 0, filled
        reply = svc_user.auth(ticketd)
        assert not reply["ok"] and reply["code"] == P.QUOTA, reply
        assert persistent_caches(svc_user.uid) == {}
        assert "quota" in ticketd.log()
    finally:
        user.run(["keyctl", "clear", "@u"])
    # With room again, the same login works.  The kernel gives the quota back when its key
    # garbage collector has destroyed the unlinked keys, a moment after the clear.
    baseline = before.qnbytes if before is not None else 0
    ticketd.wait_for(lambda: (proc.key_user(svc_user.uid) or proc.KeyUser(0, 0, 0, 0, 0, 1, 0, 1)).qnbytes
                     < baseline + 1000, 10,
                     f"the kernel to release the filled quota (before the fill: {before}, "
                     f"now: {proc.key_user(svc_user.uid)})")
    reply = svc_user.auth(ticketd)
    assert reply["ok"], reply
