"""The ticket service against hostile local users: connection floods, slow clients, descriptor
exhaustion, log floods, deeply nested JSON.  A real keyinit-ticketd, real users (SO_PEERCRED),
a real MIT KDC for root's logins, the real kernel's RLIMIT_NOFILE (prlimit).

Every limit is configured small, so the attack traffic in each test is a few dozen connections
and a few seconds.  What is asserted: the attacker gets exactly its share and then "busy", its
slow requests end at the request deadline, root's status/auth/open are answered meanwhile, and
the daemon never exits.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from pam_keyinit_py import protocol as P
from pam_keyinit_py.lab.users import become
from pam_keyinit_py.tickets.ratelimit import RateLimitedLog
from pam_keyinit_py.tickets.server import _Pool
from tests.conftest import VENV_BIN, delete_user, make_user, require, require_root
from tests.kdc import ticketd as td
from tests.kdc.ticketd import SessionHolder, TicketD, public_tmpdir

svc_user, user_krb5 = td.svc_user, td.user_krb5

#: Small limits: 3 connections per user, 5 for all users together, 3 more for root only.
LIMITS = {"max_connections": 8, "root_reserved_connections": 3, "max_connections_per_uid": 3,
          "workers": 3, "root_reserved_workers": 1, "request_timeout": 3}

# Run as a non-root user: open N connections, see which are refused ("busy"); then, with SECONDS
# > 0, trickle one byte a second into each held one (a request that never completes) for at
# most SECONDS and report how many the server closed; with SECONDS 0, hold them idle until told
# to stop.  Bounded: N connections, SECONDS seconds.
ATTACKER = r"""
import json, select, socket, struct, sys, time
path, n, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
held, codes = [], []
for _ in range(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    r, _, _ = select.select([s], [], [], 0.5)   # a refused connection is answered at once
    if r:
        data = s.recv(4096)
        codes.append(json.loads(data[4:]).get("code") if data else "closed")
        s.close()
    else:
        held.append(s)
print(json.dumps({"held": len(held), "codes": codes}), flush=True)
if seconds <= 0:
    sys.stdin.readline()                        # hold until the test says stop
    sys.exit(0)
frame = struct.pack(">I", 100) + b"x" * 100     # a valid-length request, sent one byte a second
closed, sent, t0 = set(), 0, time.monotonic()
while time.monotonic() - t0 < seconds and len(closed) < len(held):
    for i, s in enumerate(held):
        if i in closed:
            continue
        try:
            s.send(frame[sent:sent + 1])
            r, _, _ = select.select([s], [], [], 0)
            if r and s.recv(4096) == b"":
                closed.add(i)
        except OSError:
            closed.add(i)
    sent += 1
    time.sleep(1.0)
print(json.dumps({"closed_by_server": len(closed), "bytes_sent_each": sent,
                  "seconds": round(time.monotonic() - t0, 1)}), flush=True)
"""


class Attacker:
    """A process of ``user`` holding connections to the daemon (see ATTACKER)."""

    def __init__(self, daemon: TicketD, user, n: int, seconds: float) -> None:  # noqa: ANN001
        self.proc = subprocess.Popen([str(VENV_BIN / "python"), "-c", ATTACKER, daemon.socket, str(n),
                                      str(seconds)], preexec_fn=become(user.uid, user.gid),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.opened = json.loads(self.proc.stdout.readline())

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("stop\n")
        self.proc.stdin.flush()
        self.proc.wait(10)

    def result(self, timeout: float) -> dict:
        assert self.proc.stdout is not None
        out, _ = self.proc.communicate(timeout=timeout)
        return json.loads(out.strip().splitlines()[-1])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _start_limited(realm, **overrides):  # noqa: ANN001, ANN202
    require_root()
    directory = public_tmpdir("pkd-hostile-")
    daemon = TicketD(directory, realm.env, **{**td.TEST_CONFIG, **LIMITS, **overrides})
    try:
        daemon.start()
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return daemon


def _stop_limited(daemon: TicketD) -> None:
    from tests.fixtures_krb5 import clear_persistent_caches

    tracked = daemon.request({"op": "tickets"}).get("tickets", []) if daemon.alive() else []
    daemon.stop()
    for uid in {t["uid"] for t in tracked}:
        clear_persistent_caches(uid)
    print(daemon.log())
    shutil.rmtree(daemon.dir, ignore_errors=True)


@pytest.fixture
def limited(realm):  # noqa: ANN001
    """A keyinit-ticketd with the small LIMITS (request deadline 60 s: idle connections stay)."""
    daemon = _start_limited(realm, request_timeout=60)
    try:
        yield daemon
    finally:
        _stop_limited(daemon)


@pytest.fixture
def hasty(realm):  # noqa: ANN001
    """A keyinit-ticketd with the small LIMITS and a 2 s request deadline."""
    daemon = _start_limited(realm, request_timeout=2)
    try:
        yield daemon
    finally:
        _stop_limited(daemon)


def _root_connections(path: str, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        socks.append(s)
    return socks


def test_users_holding_their_maximum_do_not_stop_root_logins(limited, svc_user):
    """Two users try 20 and 3 connections: they get 3 and 2 (per-uid cap 3, the users' total 5),
    the rest "busy".  While they hold them, root's status, auth (real KDC) and open are answered,
    also on root-only slots with more root connections held; the 17 refusals of one uid log one
    line; once the users let go, they are served again."""
    daemon = limited
    other = make_user("pkd")
    first = second = None
    try:
        first = Attacker(daemon, other, 20, seconds=0)
        assert first.opened["held"] == 3, first.opened
        assert first.opened["codes"] == [P.BUSY] * 17, first.opened
        second = Attacker(daemon, svc_user.user, 3, seconds=0)
        # The users' share of the total (8 - 3 reserved for root) is 5: the third is refused.
        assert second.opened == {"held": 2, "codes": [P.BUSY]}, second.opened
        status = daemon.request({"op": "status"})
        assert status["ok"] and status["service"]["connections"]["open"] == 6, status
        assert status["service"]["connections"]["refused"] == 18, status
        # A user's request on a new connection is refused, root's is not (two more root ones held).
        assert daemon.request_as(other, {"op": "status"})["code"] == P.BUSY
        extra = _root_connections(daemon.socket, 2)
        try:
            assert svc_user.auth(daemon)["ok"]
            holder = SessionHolder(daemon, svc_user.user)
            assert holder.opened["ok"], holder.opened
            closed = holder.close()
            assert closed["ok"], closed
        finally:
            for s in extra:
                s.close()
        assert daemon.alive()
        first.stop()
        second.stop()
        daemon.wait_for(lambda: daemon.request_as(other, {"op": "status"})["ok"], 10,
                        "the user to be served again once its connections are closed")
        log = daemon.log()
        refusals = re.findall(rf"refused a connection of uid {other.uid} ", log)
        # 18 refusals of this uid: one line per 10 s (two if this machine took >10 s to get here).
        assert 1 <= len(refusals) <= 2, log
    finally:
        for a in (first, second):
            if a is not None:
                a.kill()
        delete_user(other)


def test_a_trickled_request_ends_at_its_deadline(hasty, svc_user):
    """A user sends one byte a second into each of 3 connections, for up to 12 s: the server closes
    them at the whole-request deadline (2 s), although bytes keep coming (a per-recv timeout would
    never fire); root is served meanwhile and the daemon lives."""
    daemon = hasty
    attacker = Attacker(daemon, svc_user.user, 3, seconds=12)
    try:
        assert attacker.opened == {"held": 3, "codes": []}, attacker.opened
        assert daemon.request({"op": "status"})["ok"]
        result = attacker.result(timeout=30)
        assert result["closed_by_server"] == 3, result
        assert result["bytes_sent_each"] < 12, result  # cut off before the attacker gave up
        assert daemon.alive()
        assert "did not send its request within 2s" in daemon.log()
        assert daemon.request_as(svc_user.user, {"op": "status"})["ok"]
    finally:
        attacker.kill()


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_out_of_descriptors_the_daemon_pauses_accepting_and_serves_again(limited):
    """RLIMIT_NOFILE of the running daemon lowered with prlimit(1) to 3 above what it uses: root's
    connections beyond that make accept() fail with EMFILE.  The daemon logs it, keeps running,
    and serves once descriptors are free again (the old daemon exited 1 here)."""
    require(shutil.which("prlimit"), "prlimit (util-linux) missing")
    daemon = limited
    assert daemon.proc is not None
    pid = daemon.proc.pid
    assert daemon.request({"op": "status"})["ok"]
    limit = _fds(pid) + 3
    subprocess.run(["prlimit", f"--pid={pid}", f"--nofile={limit}:{limit}"], check=True)
    socks = _root_connections(daemon.socket, 6)  # root: no per-uid cap; beyond the fds, the backlog
    try:
        daemon.wait_for(lambda: "accept() failed: Too many open files" in daemon.log(), 10,
                        "accept() to fail with EMFILE")
        assert daemon.alive()
    finally:
        for s in socks:
            s.close()
    # Descriptors free again (the limit stays low): the backlog drains and new requests are served.
    reply = daemon.wait_for(lambda: (r := daemon.request({"op": "status"}, timeout=5))["ok"] and r, 15,
                            "status to be answered after EMFILE")
    assert reply["service"]["connections"]["accept_errors"] >= 1
    assert daemon.alive()


def test_pool_keeps_workers_for_root():
    """Users' requests blocking every worker they may use do not delay root's (in-process, real threads)."""
    release = threading.Event()
    ran: list[str] = []
    root_done = threading.Event()

    def run(job: str) -> None:
        if job.startswith("user"):
            ran.append(job)
            release.wait(10)
        else:
            ran.append(job)
            root_done.set()

    pool = _Pool(3, 1, run)
    for i in range(5):
        pool.submit(f"user{i}", root=False)
    try:
        deadline = time.monotonic() + 5
        while len(ran) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)
        assert sorted(ran) == ["user0", "user1"], ran  # 3 workers - 1 for root: the rest queue
        pool.submit("root", root=True)
        assert root_done.wait(5), ran
        assert pool.threads == 3
    finally:
        release.set()


def _raw(path: str, payload: bytes) -> dict | None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(path)
        sock.sendall(payload)
        try:
            return P.recv_message(sock)
        except (EOFError, P.ProtocolError, OSError):
            return None


def _frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


_STATUS_X = b'{"v": 1, "op": "status", "x": '


@pytest.mark.parametrize(
    ("body", "error"),
    [(b"[" * 100_000 + b"]" * 100_000, "nested deeper"),
     (_STATUS_X + b'{"a":' * 5000 + b"1" + b"}" * 5000 + b"}", "nested deeper"),
     (b'{"v": true, "op": "status"}', "unsupported protocol version"),
     (b'{"v": 1.0, "op": "status"}', "unsupported protocol version"),
     # The depth limit is exact: 32 levels are parsed (and the stray field refused), 33 are not;
     # brackets in strings, escaped quotes and backslashes included, never count.
     (_STATUS_X + b"[" * 31 + b"]" * 31 + b"}", "unknown field"),
     (_STATUS_X + b"[" * 32 + b"]" * 32 + b"}", "nested deeper"),
     (_STATUS_X + b'["\\\\\\"' + b"[{" * 500 + b'\\\\",' + b"[" * 30 + b"]" * 31 + b"}", "unknown field"),
     (_STATUS_X + b'["\\\\\\"' + b"[{" * 500 + b'\\\\",' + b"[" * 31 + b"]" * 32 + b"}", "nested deeper"),
     # Not JSON: a backslash-quote outside any string opens one, so these brackets do not count.
     (b'{"v": 1, "op": "status"}\\"' + b"[" * 40, "not JSON: ValueError")],
    ids=["nested-arrays", "nested-objects", "version-true", "version-float", "depth-32", "depth-33",
         "strings-depth-32", "strings-depth-33", "quote-outside"],
)
def test_nested_json_and_inexact_versions_get_an_error_reply(limited, body, error):
    body = body[: P.MAX_MESSAGE]
    reply = _raw(limited.socket, _frame(body))
    assert reply is not None and reply["code"] == P.BAD_REQUEST, reply
    assert error in reply["error"], reply
    assert limited.alive()
    assert "RecursionError" not in limited.log() and "Traceback" not in limited.log()


def test_client_values_are_not_echoed_unbounded_into_the_log(limited, svc_user):
    """60 KB field names, op names and versions cost the log a bounded line each, and the repeats
    from one uid are rate-limited (the old daemon wrote ~65 KB per request)."""
    big = "A" * 60_000
    bodies = [json.dumps({"v": 1, "op": "status", big: 1}), json.dumps({"v": 1, "op": big}),
              json.dumps({"v": big, "op": "status"})]
    before = len(limited.log())
    code = ("import socket,struct,sys\n"
            "for body in sys.argv[2:]:\n"
            "    for _ in range(20):\n"
            "        s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); b=body.encode()\n"
            "        s.sendall(struct.pack('>I',len(b))+b); s.recv(65536); s.close()\n")
    proc = svc_user.user.run([str(VENV_BIN / "python"), "-c", code, limited.socket, *bodies], timeout=60)
    assert proc.returncode == 0, proc.stderr
    grown = len(limited.log()) - before
    assert grown < 2_000, limited.log()[before:][:3000]  # 60 requests, ~180 KB of values sent
    assert "AAAAAAAAAA" * 10 not in limited.log()
    assert limited.alive()


def test_a_users_status_shows_only_their_own(limited, svc_user):
    daemon = limited
    assert svc_user.auth(daemon)["ok"]
    holder = SessionHolder(daemon, svc_user.user)
    other = make_user("pkd")
    try:
        theirs = daemon.request_as(other, {"op": "status"})
        assert theirs["ok"] and theirs["sessions"] == [] and theirs["tickets"] == [], theirs
        assert set(theirs["service"]) == {"clear_on_logout"}, theirs  # no pid, no global counts
        mine = daemon.request_as(svc_user.user, {"op": "status"})
        assert [s["uid"] for s in mine["sessions"]] == [svc_user.uid], mine
        assert [t["uid"] for t in mine["tickets"]] == [svc_user.uid], mine
        assert "pid" not in mine["service"] and "sessions" not in mine["service"], mine
        root = daemon.request({"op": "status"})
        assert root["service"]["pid"] == daemon.proc.pid and root["service"]["sessions"] == 1
        denied = daemon.request_as(other, {"op": "tickets", "uid": svc_user.uid})
        assert denied["code"] == P.DENIED and "may not list the tickets of uid" in denied["error"], denied
        # The CLI prints a user's view without the root-only fields.
        cli = other.run([str(VENV_BIN / "keyinit"), "status", "--socket", daemon.socket])
        assert cli.returncode == 0 and "running" in cli.stdout, (cli.stdout, cli.stderr)
    finally:
        delete_user(other)
        holder.close()


def test_shipped_limits_fit_the_shipped_unit():
    """etc/keyinit/ticketd.toml documents the defaults, and they fit the unit's LimitNOFILE/TasksMax."""
    from pam_keyinit_py.tickets import config as cfg

    root = Path(__file__).resolve().parents[2]
    shipped = cfg.load(str(root / "etc/keyinit/ticketd.toml"))
    assert shipped == cfg.Config()
    unit = (root / "etc/systemd/keyinit-ticketd.service").read_text()
    nofile = int(re.search(r"^LimitNOFILE=(\d+)$", unit, re.M).group(1))
    tasks = int(re.search(r"^TasksMax=(\d+)$", unit, re.M).group(1))
    assert shipped.max_connections * 2 + 64 <= nofile
    # Workers, loop, scheduler, writer, reaper, deferred destroy, plus KDC exchanges in flight.
    assert 5 + shipped.workers + shipped.renew_workers + shipped.max_kdc_calls <= tasks // 2
    assert shipped.max_connections_per_uid <= shipped.max_connections - shipped.root_reserved_connections


def _threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("Threads:"))


def test_a_silent_kdc_does_not_pile_up_threads(realm, svc_user):
    """The KDC SIGSTOPped (it accepts TCP and never answers): 12 concurrent logins and the
    scheduled renewals keep failing for several seconds, yet the daemon's threads never exceed
    its fixed five (loop, scheduler, state writer, two reapers) plus its three bounded pools
    (request workers 3, renewal workers 2, KDC exchanges 3); refused exchanges fail at once as
    "no KDC answered".  Once the KDC answers again, logins and renewals work.  (The old daemon:
    one thread per connection plus one per blocked exchange, without bound.)"""
    import signal

    # kdc_timeout 2: 12 logins through 3 workers, each waiting out the bound, finish within the
    # clients' own 10 s (the default 6 s would make the later ones time out as service_unavailable).
    daemon = _start_limited(realm, request_timeout=30, renew_workers=2, max_kdc_calls=3, max_connections=32,
                            kdc_timeout=2)
    assert daemon.proc is not None
    pid = daemon.proc.pid
    bound = 5 + LIMITS["workers"] + 2 + 3
    kdc_pid = int((realm.dir / "krb5kdc.pid").read_text())
    holder = None
    try:
        assert svc_user.auth(daemon)["ok"]
        holder = SessionHolder(daemon, svc_user.user)
        replies: list[dict] = []
        os.kill(kdc_pid, signal.SIGSTOP)
        try:
            logins = [threading.Thread(target=lambda: replies.append(svc_user.auth(daemon)))
                      for _ in range(12)]
            for t in logins:
                t.start()
            peak = 0
            while any(t.is_alive() for t in logins):
                peak = max(peak, _threads(pid))
                threading.Event().wait(0.05)
            # The renewal scheduled at 0.2 of the 30 s life fails meanwhile, too (and retries).
            daemon.wait_for(lambda: "renewing" in daemon.log() and "no KDC answered" in daemon.log(), 20,
                            "a renewal attempt against the silent KDC")
            peak = max(peak, _threads(pid))
            kdc = daemon.request({"op": "status"})["service"]["kdc_calls"]
        finally:
            os.kill(kdc_pid, signal.SIGCONT)
        assert [r.get("code") for r in replies] == [P.KDC_UNREACHABLE] * 12, replies
        print(f"peak threads {peak} (bound {bound}), KDC slots {kdc}")
        assert peak <= bound, (peak, bound)
        assert kdc["peak"] <= 3 and kdc["refused"] >= 1, kdc
        assert "exchanges are already waiting for the KDC" in daemon.log()
        assert daemon.alive()
        # The KDC answers again: the blocked exchanges end, logins and renewals succeed.
        daemon.wait_for(lambda: svc_user.auth(daemon)["ok"], 30, "a login once the KDC answers")
        daemon.wait_for(lambda: daemon.request({"op": "renew", "uid": svc_user.uid})["errors"] == [], 30,
                        "a renewal once the KDC answers")
    finally:
        os.kill(kdc_pid, signal.SIGCONT)
        if holder is not None:
            holder.kill()
        _stop_limited(daemon)


def test_the_root_socket_is_root_only(limited, svc_user):
    """Root's clients connect through ticketd.root.sock (0600), which a user cannot even connect
    to, so a user flooding the public socket's backlog cannot make a login's connect wait."""
    root_path = P.root_socket(limited.socket)
    assert root_path.endswith(".root.sock") and os.stat(root_path).st_mode & 0o777 == 0o600
    code = ("import socket,sys\ns=socket.socket(socket.AF_UNIX)\n"
            "try:\n    s.connect(sys.argv[1]); print('connected')\n"
            "except PermissionError:\n    print('EACCES')\n")
    proc = svc_user.user.run([str(VENV_BIN / "python"), "-c", code, root_path])
    assert proc.stdout.strip() == "EACCES", (proc.stdout, proc.stderr)
    # Root's request is served there: the public socket's path is not even needed.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(root_path)
        P.send_message(sock, {"op": "status"})
        assert P.recv_message(sock, P.MAX_REPLY)["service"]["pid"] == limited.proc.pid


def _root_waits_for_room(daemon, free_one) -> None:  # noqa: ANN001
    """Hold max_connections (8) root connections: root's next client must wait in the root
    socket's backlog, not be refused "busy"; then ``free_one(held)`` ends one held connection,
    and the waiter must be served."""
    held = _root_connections(P.root_socket(daemon.socket), 8)
    replies: list[dict] = []
    try:
        waiter = threading.Thread(target=lambda: replies.append(
            P.request({"op": "status"}, daemon.socket, connect_timeout=20, timeout=20)))
        waiter.start()
        waiter.join(1.0)
        assert waiter.is_alive() and replies == [], replies  # not refused: waiting for room
        free_one(held)
        waiter.join(20)
        assert replies and replies[0]["ok"], replies
    finally:
        for s in held:
            s.close()


def test_root_waits_for_room_instead_of_being_refused(limited):
    """At max_connections (8), root's next connect waits in the root socket's backlog instead of
    getting "busy", and is served as soon as a connection closes."""
    _root_waits_for_room(limited, lambda held: held.pop().close())


def test_repeated_requests_of_a_user_cost_one_log_line_and_one_renewal(limited, svc_user):
    """30 refused destroys of another user's cache log one line; of 10 renew requests in a row
    only the first renews (each is KDC traffic), the others are answered busy."""
    ccache = svc_user.auth(limited)["ccache"]
    holder = SessionHolder(limited, svc_user.user)
    other = make_user("pkd")
    code = ("import json,sys\nfrom pam_keyinit_py import protocol as P\n"
            "msg=json.loads(sys.argv[2])\n"
            "print(json.dumps([P.request(msg, sys.argv[1]).get('code') for _ in range(int(sys.argv[3]))]))\n")
    try:
        proc = other.run([str(VENV_BIN / "python"), "-c", code, limited.socket,
                          json.dumps({"op": "destroy", "ccache": ccache}), "30"])
        assert json.loads(proc.stdout) == [P.DENIED] * 30, (proc.stdout, proc.stderr)
        assert limited.log().count(f"uid {other.uid} tried to destroy") == 1, limited.log()
        proc = svc_user.user.run([str(VENV_BIN / "python"), "-c", code, limited.socket,
                                  json.dumps({"op": "renew"}), "10"])
        assert json.loads(proc.stdout) == [None] + [P.BUSY] * 9, (proc.stdout, proc.stderr)
    finally:
        delete_user(other)
        holder.close()


def test_a_users_destroys_of_its_own_collection_cost_a_bounded_log(limited, svc_user):
    """krb5_cc_destroy of a user's own KEYRING:persistent:<uid> succeeds even when it is empty, so
    a user can send destroy after destroy, each answered ok: 200 of them must not log 200 lines
    (one user filling the log, and journald's per-unit rate limit then dropping the service's own
    lines), but one rate-limited line that counts the rest."""
    name = f"KEYRING:persistent:{svc_user.uid}"
    code = ("import json,sys\nfrom pam_keyinit_py import protocol as P\n"
            "msg, n = {'op': 'destroy', 'ccache': sys.argv[2]}, int(sys.argv[3])\n"
            "print(json.dumps([P.request(msg, sys.argv[1]).get('code', 'ok') for _ in range(n)]))\n")
    proc = svc_user.user.run([str(VENV_BIN / "python"), "-c", code, limited.socket, name, "200"], timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == ["ok"] * 200, proc.stdout
    lines = limited.log().count(f"at the request of uid {svc_user.uid}")
    assert 1 <= lines <= 2, limited.log()  # one line per 10 s (two if this took >10 s)
    assert limited.alive()


def test_a_destroy_naming_no_real_uid_is_not_found_and_logs_no_long_line(limited, svc_user):
    """A user's destroy of ``KEYRING:persistent:`` + 4,000 digits (or non-ASCII digits, which
    str.isdigit takes and libkrb5's strtol does not) names no uid: it is not a cache of anyone, and
    the 4,000 digits must not reach the log (they did, whole, in the "tried to destroy" line)."""
    for digits in ("9" * 4000, "\u0661\u0660\u0660\u0661"):
        reply = limited.request_as(svc_user.user, {"op": "destroy", "ccache": "KEYRING:persistent:" + digits})
        assert reply["code"] == P.NOT_FOUND, reply
    assert "9" * 200 not in limited.log()
    assert limited.alive()


# Run as root: for each of N uids (no account needed), connect with that effective uid (SO_PEERCRED
# records the euid at connect(2)), send a request with an unknown op and read the error reply.
# What a user with a subordinate uid range (/etc/subuid, newuidmap) can do from a user namespace.
MANY_UIDS = r"""
import os, socket, sys
from pam_keyinit_py import protocol as P
path, first, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
codes = set()
for uid in range(first, first + n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    os.seteuid(uid)
    try:
        s.connect(path)
    finally:
        os.seteuid(0)
    s.settimeout(10)
    P.send_message(s, {"op": "nonsense"})
    codes.add(P.recv_message(s, P.MAX_REPLY)["code"])
    s.close()
print(",".join(sorted(codes)))
"""


def test_many_uids_cannot_flood_the_log(limited):
    """300 uids, one malformed request each: one uid's lines are rate-limited per uid, but a user
    holding a subordinate uid range (65,536 uids on Debian 12) must not get one line per uid
    either: the lines any client can cause are bounded in total (RateLimitedLog.max_lines per
    interval; twice that if this took longer than one interval)."""
    n = 3 * RateLimitedLog.MAX_LINES
    first = 3_000_000 + (os.getpid() % 1000) * 1000
    proc = subprocess.run([str(VENV_BIN / "python"), "-c", MANY_UIDS, limited.socket, str(first), str(n)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == P.BAD_REQUEST, proc.stdout
    lines = limited.log().count("bad message from pid")
    assert 1 <= lines <= 2 * RateLimitedLog.MAX_LINES, lines
    assert limited.alive()
    assert limited.request({"op": "status"})["ok"]


FUZZ = r"""
import random, socket, struct, sys
path, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(11)
answered = 0
for i in range(n):
    kind = i % 5
    body = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
    if kind == 0:   # a frame of random bytes
        data = struct.pack(">I", len(body)) + body
    elif kind == 1:  # a length that lies (longer than what follows), then close
        data = struct.pack(">I", len(body) + 50) + body
    elif kind == 2:  # half a header
        data = body[:2]
    elif kind == 3:  # JSON-ish garbage
        data = b'{"v":1,"op":' + body
        data = struct.pack(">I", len(data)) + data
    else:            # a huge length
        data = struct.pack(">I", rng.randrange(1 << 17, 1 << 32)) + body
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(path)
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        if s.recv(4096):
            answered += 1
    except OSError:
        pass
    finally:
        s.close()
print(answered)
"""


def test_malformed_traffic_leaves_no_fd_or_thread_behind(limited, svc_user):
    """2,000 malformed messages of five kinds from a user: answered or closed, the daemon alive,
    its descriptors back to where they were, its threads within the pools."""
    assert limited.proc is not None
    pid = limited.proc.pid
    assert limited.request({"op": "status"})["ok"]
    before = _fds(pid)
    proc = svc_user.user.run([str(VENV_BIN / "python"), "-c", FUZZ, limited.socket, "2000"], timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) >= 1200, proc.stdout  # kinds 0, 3, 4 are answered with an error reply
    assert limited.alive()
    limited.wait_for(lambda: _fds(pid) <= before, 10, "the daemon's descriptors to return to their count")
    assert _threads(pid) <= 5 + LIMITS["workers"] + 4 + 16  # loop, writer, reapers, scheduler + pools
    assert limited.request({"op": "status"})["ok"]
    assert "Traceback" not in limited.log()


PIDS_CGROUP = Path("/sys/fs/cgroup/pids")


def test_out_of_tasks_the_daemon_answers_busy_and_serves_later(limited):
    """The daemon moved into a pids cgroup (what TasksMax= sets) with no room for one more thread:
    a request that needs a worker is answered busy instead of hanging, nothing exits; with room
    again, requests are served.  (The old daemon exited when thread creation failed.)"""
    require((PIDS_CGROUP / "cgroup.procs").exists(), "no cgroup v1 pids controller")
    assert limited.proc is not None
    pid = limited.proc.pid
    group = PIDS_CGROUP / f"pkd-test-{os.getpid()}-{pid}"
    group.mkdir()
    try:
        (group / "cgroup.procs").write_text(str(pid))
        (group / "pids.max").write_text(str(_threads(pid)))  # no room for one more task
        reply = limited.request({"op": "status"}, timeout=10)
        assert reply.get("code") == P.BUSY, reply  # the pool has no worker yet and cannot start one
        assert limited.alive()
        assert "cannot start a worker thread" in limited.log()
        (group / "pids.max").write_text("max")
        assert limited.request({"op": "status"})["ok"]
    finally:
        if limited.alive():
            (PIDS_CGROUP / "cgroup.procs").write_text(str(pid))
        group.rmdir()


def _frames(sock: socket.socket, count: int, *, then: bool = True) -> tuple[list[dict], bytes | None]:
    """Read ``count`` framed replies; with ``then``, also what follows until the server closes:
    b"" when it closed right after them, None when it reset the connection (closed with a
    request of ours unread)."""
    sock.settimeout(10)
    buf = b""
    replies = []
    while len(replies) < count:
        chunk = sock.recv(65536)
        assert chunk, f"closed after {len(replies)} of {count} replies"
        buf += chunk
        while len(buf) >= 4 and len(buf) >= 4 + struct.unpack(">I", buf[:4])[0]:
            length = struct.unpack(">I", buf[:4])[0]
            replies.append(json.loads(buf[4:4 + length]))
            buf = buf[4 + length:]
    if not then:
        return replies, buf
    try:
        while chunk := sock.recv(65536):
            buf += chunk
    except ConnectionResetError:
        return replies, None
    return replies, buf


def test_one_request_client_gets_its_reply_then_the_end_of_stream(limited):
    """A client that shuts down its sending side after its request (protocol.request does) gets
    the reply and then the end of stream: the service closed the connection and counted it out
    (root's next status sees only itself)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(limited.socket)
        s.sendall(P.encode({"op": "status"}))
        s.shutdown(socket.SHUT_WR)
        replies, rest = _frames(s, 1)
    finally:
        s.close()
    assert replies[0]["ok"], replies
    assert rest == b""
    status = limited.request({"op": "status"})
    assert status["service"]["connections"]["open"] == 1, status


def test_connection_carries_requests_one_after_another_and_pipelined(limited):
    """Without the end of stream a connection stays open for the next request: one sent after
    the reply, and two sent at once (the second is there when the first's worker looks for the
    end of stream) are answered in order; the end of stream after the last closes it.  A bad
    request among them is answered and closes the connection, unread requests after it or not."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(limited.socket)
        s.sendall(P.encode({"op": "tickets"}))
        (first,), rest = _frames(s, 1, then=False)
        assert rest == b""
        s.sendall(P.encode({"op": "status"}) + P.encode({"op": "tickets"}))
        s.shutdown(socket.SHUT_WR)
        replies, rest = _frames(s, 2)
    finally:
        s.close()
    assert first["ok"] and "tickets" in first, first
    assert replies[0]["ok"] and "service" in replies[0], replies
    assert replies[1]["ok"] and "tickets" in replies[1], replies
    assert rest == b""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(limited.socket)
        s.sendall(P.encode({"op": "status"}) + P.encode({"op": "nonsense"}) + P.encode({"op": "tickets"}))
        replies, rest = _frames(s, 2)
    finally:
        s.close()
    assert replies[0]["ok"] and "service" in replies[0], replies
    assert replies[1]["code"] == P.BAD_REQUEST, replies
    assert rest in (b"", None)  # closed; reset when the third request was still unread


LOOP = r"""
import json, sys
from pam_keyinit_py import protocol as P
replies = [P.request({"op": "status"}, sys.argv[1]) for _ in range(int(sys.argv[2]))]
print(json.dumps([reply.get("code", "ok") for reply in replies]))
"""


def test_user_connecting_in_a_loop_is_never_refused(limited, svc_user):
    """A user's one-request connections, one after another, four times its per-uid cap: each is
    counted out when its reply is sent, so none is refused "busy"."""
    n = 4 * LIMITS["max_connections_per_uid"]
    proc = svc_user.user.run([str(VENV_BIN / "python"), "-c", LOOP, limited.socket, str(n)], timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == ["ok"] * n


def _open_connections(daemon, settle: float = 10.0) -> int:  # noqa: ANN001
    """What root's status counts as open, this status's own connection included, once it reads 1
    or ``settle`` seconds have passed (the loop counts out a closed connection when it reads the
    end of stream, after the client's close returned)."""
    deadline = time.monotonic() + settle
    while True:
        count = daemon.request({"op": "status"})["service"]["connections"]["open"]
        if count == 1 or time.monotonic() >= deadline:
            return count
        time.sleep(0.05)


def test_at_max_connections_a_worker_closing_one_lets_root_in(limited):
    """At max_connections (8, all root), root's next client waits in the root backlog; when one
    held connection sends its request and half-closes, the worker that answers it closes it, and
    that close must bring the loop back to the root listener: the waiter is served."""
    def one_request_then_half_close(held: list[socket.socket]) -> None:
        one = held.pop()
        one.sendall(P.encode({"op": "tickets"}))
        one.shutdown(socket.SHUT_WR)
        answered, rest = _frames(one, 1)
        one.close()
        assert answered[0]["ok"] and rest == b"", (answered, rest)

    _root_waits_for_room(limited, one_request_then_half_close)
    assert _open_connections(limited) == 1


def test_half_a_header_then_the_end_of_stream_is_closed_and_counted_out(limited):
    """A client that sends two bytes of a header and half-closes gets the end of stream (no
    reply, no wait for the request deadline) and is no longer counted."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(limited.socket)
        s.sendall(b"\0\0")
        s.shutdown(socket.SHUT_WR)
        s.settimeout(10)
        assert s.recv(100) == b""
    finally:
        s.close()
    assert _open_connections(limited) == 1


def test_a_client_gone_with_requests_unread_is_counted_out(limited):
    """Two requests sent at once and the connection closed before any reply: the worker's reply
    or its look for the end of stream meets the reset, the connection is counted out, and the
    service goes on."""
    for _ in range(5):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(limited.socket)
        s.sendall(P.encode({"op": "status"}) + P.encode({"op": "tickets"}))
        s.close()
    assert _open_connections(limited) == 1
    assert limited.alive()
