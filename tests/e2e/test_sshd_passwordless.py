"""Logins without a password: GSSAPI ssh with a forwarded TGT, and GSSAPI without one followed by the
user's own kinit.

Private sshd on loopback with ``GSSAPIAuthentication yes`` and the realm's host keytab
(``realm.sh hostkeytab``), the hook through pam_python, a real keyinit-ticketd, a real MIT KDC.
The client is this (root) process with the user's TGT in its own FILE cache, so the only copy
that can reach the user's ``KEYRING:persistent:<uid>`` is the one sshd received.

What the session sees is read inside it by pykrb5 (``krb5.cc_default``: KRB5CCNAME, else
krb5.conf's default_ccache_name), run as the user by sshd; the key owners are read from the
kernel by the test.
"""

from __future__ import annotations

import glob
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pam_keyinit_py.commands.tickets import _when
from pam_keyinit_py.lab.sshd import GSSAPI, PUBKEY
from tests.conftest import VENV_BIN
from tests.kdc import ticketd as td
from tests.kdc.ticketd import TicketD, klist_ok, persistent_caches, public_tmpdir

svc_user, user_krb5 = td.svc_user, td.user_krb5

#: Run by sshd as the user: what the session's default ccache holds, as JSON on one line.
REPORT = """\
import json, os, krb5
ctx = krb5.init_context()
out = {"KRB5CCNAME": os.environ.get("KRB5CCNAME"), "uid": os.getuid()}
try:
    cc = krb5.cc_default(ctx)
    out["ccache"] = cc.cache_type.decode() + ":" + cc.name.decode()
    out["principal"] = str(krb5.cc_get_principal(ctx, cc))
    out["servers"] = [str(c.server) for c in cc if not c.server.realm.startswith(b"X-CACHECONF")]
except krb5.Krb5Error as exc:
    out["error"] = str(exc)
print(json.dumps(out), flush=True)
"""


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A 0755 directory for the session's report script and the client's ccache."""
    path = public_tmpdir("pkd-gss-")
    (path / "report.py").write_text(REPORT)
    os.chmod(path / "report.py", 0o644)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _daemon(realm, **config) -> TicketD:  # noqa: ANN001
    directory = public_tmpdir("pkd-ticketd-")
    daemon = TicketD(directory, realm.env, **{**td.TEST_CONFIG, **config})
    daemon.start()
    return daemon


def _stop(daemon: TicketD) -> None:
    tracked = daemon.request({"op": "tickets"}).get("tickets", []) if daemon.alive() else []
    daemon.stop()
    for uid in {t["uid"] for t in tracked}:
        td.clear_persistent_caches(uid)
    print(daemon.log())
    shutil.rmtree(daemon.dir, ignore_errors=True)


def _client_ccache(realm, user, directory: Path) -> str:  # noqa: ANN001
    """kinit (forwardable, renewable) as the client, into a FILE cache of this root process."""
    cc = f"FILE:{directory}/client-cc"
    env = {**realm.env, "KRB5CCNAME": cc, "PATH": "/usr/bin:/bin"}
    res = subprocess.run(["kinit", "-f", "-r", "5m", user.principal], input=user.password + "\n", env=env,
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    return cc


def _stack(sock: str):
    def build(pamwrap) -> list[str]:  # noqa: ANN001
        return [
            pamwrap.hook_line("auth", "optional", f"use_first_pass socket={sock}"),
            "account required pam_permit.so",
            pamwrap.hook_line("session", "required", f"force revoke tickets socket={sock}"),
        ]
    return build


class Session:
    """A running ssh session whose stdout lines are read with a bound (a hung sshd fails the test)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def line(self, timeout: float = 30) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line from the session in {timeout}s") from None
        assert line is not None, f"session ended: {self.proc.stderr.read() if self.proc.stderr else ''}"
        return line

    def report(self) -> dict:
        return json.loads(self.line())

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def end(self) -> int:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        return self.proc.wait(30)


def _spawn(server, user, command: str, cc: str, delegate: bool) -> Session:  # noqa: ANN001
    return Session(server.gss_spawn(user.name, command, cc, delegate=delegate, stdin=subprocess.PIPE))


def _rows(daemon: TicketD, uid: int) -> list[dict]:
    return daemon.request({"op": "tickets", "uid": uid})["tickets"]


def _sessions(daemon: TicketD) -> int:
    return daemon.request({"op": "status"})["service"]["sessions"]


def _keyinit(daemon: TicketD, user, *args: str) -> str:  # noqa: ANN001
    out = user.user.run([str(VENV_BIN / "keyinit"), "status", "--socket", daemon.socket, *args])
    assert out.returncode == 0, out.stderr
    return out.stdout


def _status(daemon: TicketD, user) -> tuple[dict, str]:  # noqa: ANN001
    """The user's one ticket in ``keyinit status --json`` and its line in ``keyinit status``.

    Read JSON, text, JSON until both JSON reads agree: a renewal between the calls would
    change the cache name and the times.
    """
    for _ in range(5):
        before = json.loads(_keyinit(daemon, user, "--json"))["tickets"]
        text = _keyinit(daemon, user)
        after = json.loads(_keyinit(daemon, user, "--json"))["tickets"]
        if len(before) == 1 and before == after:
            row = before[0]
            return row, next(line for line in text.splitlines() if line.rstrip().endswith(row["ccache"]))
    raise AssertionError(f"keyinit status kept changing: {before} / {after}")


def _file_caches(uid: int) -> list[str]:
    return glob.glob(f"/tmp/krb5cc_{uid}_*")


def test_delegated_tgt_lands_in_the_persistent_keyring_renewed_and_cleared(
        realm, host_keytab, sshd_factory, svc_user, user_krb5, workdir):
    daemon = _daemon(realm)
    try:
        server = sshd_factory(_stack(daemon.socket), mode=GSSAPI, keytab=host_keytab,
                              krb5_config=realm.krb5_conf)
        cc = _client_ccache(realm, svc_user, workdir)
        conf, py = user_krb5["KRB5_CONFIG"], VENV_BIN / "python"
        report = f"KRB5_CONFIG={conf} {py} {workdir / 'report.py'}"
        long = _spawn(server, svc_user, f"{report}; read go; {report}; read done || true", cc, delegate=True)
        try:
            seen = long.report()
            uid = svc_user.uid
            assert seen["uid"] == uid
            # The session's KRB5CCNAME was moved from sshd's FILE cache to the keyring collection.
            assert seen["KRB5CCNAME"] == f"KEYRING:persistent:{uid}", (seen, server.log()[-2000:])
            assert seen["ccache"].startswith(f"KEYRING:persistent:{uid}:"), seen
            assert seen["principal"] == svc_user.principal
            assert seen["servers"] == [f"krbtgt/{realm.realm}@{realm.realm}"]
            # Written as the user: every key of every cache is owned by the uid, and no FILE cache is left.
            caches = persistent_caches(uid)
            assert caches and all(owner == uid for keys in caches.values() for owner, _ in keys), caches
            assert _file_caches(uid) == []
            rows = _rows(daemon, uid)
            assert [r["origin"] for r in rows] == ["delegated"], rows
            assert f"KEYRING:persistent:{uid}:{rows[0]['ccache'].split(':')[3]}" == seen["ccache"]
            # keyinit status, as the user: the origin, the expiry and the next renewal of the ticket.
            status, line = _status(daemon, svc_user)
            assert status["origin"] == "delegated" and status["next_renewal"] > status["starttime"]
            assert line.split()[1] == "delegated", line
            assert _when(status["endtime"]) in line and _when(status["next_renewal"]) in line, line
            # Renewed while the session stays open (30 s tickets, renewal at 20% of the life).
            daemon.wait_for(lambda: [r for r in _rows(daemon, uid) if r["renewed"] >= 1], 30,
                            "a renewal of the delegated ticket")
            long.send("go")
            after = long.report()
            # The session follows the renewal (a new cache, made primary) through the collection name.
            assert after["ccache"].startswith(f"KEYRING:persistent:{uid}:")
            assert after["ccache"] != seen["ccache"]
            assert after["principal"] == svc_user.principal
            # A second delegated login while the first is open: at its logout the tickets stay.
            short = server.gss_login(svc_user.name, f"KRB5_CONFIG={conf} klist -s", cc)
            assert short.returncode == 0, short.stderr
            daemon.wait_for(lambda: _sessions(daemon) == 1, 15, "the short session to close")
            assert klist_ok(svc_user.user, user_krb5)
            assert any(r["origin"] == "delegated" for r in _rows(daemon, uid))
            assert _file_caches(uid) == []
        finally:
            assert long.end() == 0
        daemon.wait_for(lambda: _sessions(daemon) == 0, 15, "the long session to close")
        daemon.wait_for(lambda: persistent_caches(svc_user.uid) == {}, 15, "the tickets cleared at the end")
        assert _rows(daemon, svc_user.uid) == []
        assert _file_caches(svc_user.uid) == []
        assert svc_user.password not in daemon.log() and svc_user.password not in server.log()
    finally:
        _stop(daemon)


def test_gssapi_login_without_delegation_then_kinit_is_adopted_within_30s(
        realm, host_keytab, sshd_factory, svc_user, user_krb5, workdir):
    # Full rescans only hourly: adoption within the 30 s bound must come from the key watch.
    daemon = _daemon(realm, adopt_scan_interval=3600.0, adopt_watch_interval=10.0, clear_on_logout="all")
    try:
        server = sshd_factory(_stack(daemon.socket), mode=GSSAPI, keytab=host_keytab,
                              krb5_config=realm.krb5_conf)
        cc = _client_ccache(realm, svc_user, workdir)
        conf, py = user_krb5["KRB5_CONFIG"], VENV_BIN / "python"
        report = f"KRB5_CONFIG={conf} {py} {workdir / 'report.py'}"
        kinit = f"KRB5_CONFIG={conf} kinit -r 5m {svc_user.principal} >/dev/null && echo kinit-ok"
        session = _spawn(server, svc_user, f"{report}; {kinit}; read done || true", cc, delegate=False)
        uid = svc_user.uid
        try:
            seen = session.report()
            # No delegation: no ticket anywhere, and the session registered all the same.
            assert seen["KRB5CCNAME"] is None and "principal" not in seen, seen
            assert persistent_caches(uid) == {}
            assert _sessions(daemon) == 1
            assert _rows(daemon, uid) == []
            session.send(svc_user.password)
            assert session.line() == "kinit-ok"
            rows = daemon.wait_for(lambda: _rows(daemon, uid), 30, "the user's own kinit to be adopted")
            assert [r["origin"] for r in rows] == ["adopted"] and rows[0]["principal"] == svc_user.principal
            assert _status(daemon, svc_user)[1].split()[1] == "kinit"
            daemon.wait_for(lambda: [r for r in _rows(daemon, uid) if r["renewed"] >= 1], 30,
                            "a renewal of the adopted ticket")
            assert klist_ok(svc_user.user, user_krb5)
        finally:
            assert session.end() == 0
        daemon.wait_for(lambda: _sessions(daemon) == 0, 15, "the session to close")
        # clear_on_logout = "all": the user's own cache goes too.
        daemon.wait_for(lambda: persistent_caches(uid) == {}, 15, "the adopted ticket cleared at logout")
        assert svc_user.password not in daemon.log() and svc_user.password not in server.log()
    finally:
        _stop(daemon)


def test_publickey_login_then_kinit_is_adopted_renewed_and_cleared(realm, sshd_factory, svc_user, user_krb5,
                                                                    workdir):
    """The issue's own case: a public-key login (no password, no ticket), then kinit inside it."""
    daemon = _daemon(realm, adopt_scan_interval=3600.0, adopt_watch_interval=10.0, clear_on_logout="all")
    try:
        server = sshd_factory(_stack(daemon.socket), mode=PUBKEY)
        server.authorize(svc_user.name)
        conf, py = user_krb5["KRB5_CONFIG"], VENV_BIN / "python"
        report = f"KRB5_CONFIG={conf} {py} {workdir / 'report.py'}"
        kinit = f"KRB5_CONFIG={conf} kinit -r 5m {svc_user.principal} >/dev/null && echo kinit-ok"
        session = Session(server.pubkey_spawn(svc_user.name, f"{report}; {kinit}; read done || true",
                                              stdin=subprocess.PIPE))
        uid = svc_user.uid
        try:
            seen = session.report()
            assert seen["uid"] == uid and "principal" not in seen, seen
            assert _sessions(daemon) == 1 and _rows(daemon, uid) == []
            session.send(svc_user.password)
            assert session.line() == "kinit-ok"
            rows = daemon.wait_for(lambda: _rows(daemon, uid), 30, "the user's own kinit to be adopted")
            assert [r["origin"] for r in rows] == ["adopted"]
            daemon.wait_for(lambda: [r for r in _rows(daemon, uid) if r["renewed"] >= 1], 30,
                            "a renewal of the adopted ticket")
        finally:
            assert session.end() == 0
        daemon.wait_for(lambda: _sessions(daemon) == 0, 15, "the session to close")
        daemon.wait_for(lambda: persistent_caches(uid) == {}, 15, "the adopted ticket cleared at logout")
    finally:
        _stop(daemon)


def test_without_the_service_sshd_keeps_its_file_cache_and_cleans_it_up(
        realm, host_keytab, sshd_factory, svc_user, user_krb5, workdir):
    # The hook cannot reach the service: the login works as without it (sshd's FILE cache and
    # KRB5CCNAME), and GSSAPICleanupCredentials still removes the file at logout.
    server = sshd_factory(_stack(str(workdir / "no-such.sock")), mode=GSSAPI, keytab=host_keytab,
                          krb5_config=realm.krb5_conf)
    cc = _client_ccache(realm, svc_user, workdir)
    conf, py = user_krb5["KRB5_CONFIG"], VENV_BIN / "python"
    session = _spawn(server, svc_user, f"KRB5_CONFIG={conf} {py} {workdir / 'report.py'}; read done || true",
                     cc, delegate=True)
    try:
        seen = session.report()
        assert seen["KRB5CCNAME"].startswith(f"FILE:/tmp/krb5cc_{svc_user.uid}_"), seen
        assert seen["principal"] == svc_user.principal
        assert _file_caches(svc_user.uid) == [seen["KRB5CCNAME"].removeprefix("FILE:")]
        assert persistent_caches(svc_user.uid) == {}
    finally:
        assert session.end() == 0
    deadline = time.monotonic() + 15
    while _file_caches(svc_user.uid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _file_caches(svc_user.uid) == [], "sshd's GSSAPICleanupCredentials left its FILE cache"
