"""keyinit-ticketd under a connection flood: how many connections local users hold, and what
root's logins cost meanwhile, beside the same logins on an idle service (the anchor), in one run.

The attacker is one root process that switches its effective uid before each connect(2)
(SO_PEERCRED records the connecting credentials), so it acts as USERS distinct non-root uids;
each keeps trying to hold TRIES connections, reconnecting whatever the service refuses or
closes (the request deadline closes idle ones).  The service runs with the shipped defaults
(ticketd.toml: 256 connections, the last 32 for root, 8 per uid).

First one uid alone tries 1,000 connections for 5 s (what it holds is reported), then the
flood of USERS uids runs while root logs in.

A root "login" here is what the PAM hook sends: ``auth`` (a real AS exchange with the lab KDC),
``open``, ``close``.  Reported: connections held by the users, connections refused, failed
logins, and the median / worst login time, idle vs flooded.

Run: ``sudo .venv/bin/python bench/bench_tickets_hostile.py`` or ``make bench ONLY=tickets_hostile``.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pam_keyinit_py import protocol as P  # noqa: E402
from pam_keyinit_py.lab import users as lab_users  # noqa: E402
from pam_keyinit_py.lab.realm import Realm, available  # noqa: E402
from pam_keyinit_py.lab.ticketd import TicketD  # noqa: E402
from pam_keyinit_py.lab.users import clear_persistent  # noqa: E402

UID_BASE = 3_300_000  # uids without passwd entries (distinct from the other benches' ranges)
USERS = 40
TRIES = 25
LOGINS = 25

FLOOD = r"""
import os, select, socket, sys, time
path, base, users, tries = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
held = {}                                   # socket -> uid
count = {base + i: 0 for i in range(users)}
while not select.select([sys.stdin], [], [], 0)[0]:
    for uid in count:
        while count[uid] < tries:
            os.seteuid(uid)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
            except OSError:
                s.close(); break
            finally:
                os.seteuid(0)
            held[s] = uid; count[uid] += 1
    readable, _, _ = select.select(list(held), [], [], 0.5)
    for s in readable:                      # a "busy" reply, or closed at the request deadline
        try:
            s.recv(4096)
        except OSError:
            pass
        count[held.pop(s)] -= 1; s.close()
"""


def _login(sock: str, user: lab_users.LabUser, password: str) -> tuple[float, bool]:
    t0 = time.perf_counter()
    ids = {"user": user.name, "uid": user.uid, "gid": user.gid}
    auth = P.request({"op": "auth", **ids, "password": password}, sock, timeout=30)
    opened = P.request({"op": "open", **ids}, sock, timeout=30)
    closed = P.request({"op": "close", "uid": user.uid, "sid": opened.get("sid")}, sock, timeout=30) \
        if opened.get("ok") else {"ok": False}
    return time.perf_counter() - t0, bool(auth.get("ok") and opened.get("ok") and closed.get("ok"))


def _logins(sock: str, user: lab_users.LabUser, password: str) -> tuple[list[float], int]:
    times, failed = [], 0
    for _ in range(LOGINS):
        elapsed, ok = _login(sock, user, password)
        times.append(elapsed)
        failed += not ok
    return times, failed


def _one_user(sock: str) -> int:
    """Connections one uid holds when it tries 1,000 (status counts its own request's, less one)."""
    proc = subprocess.Popen([sys.executable, "-c", FLOOD, sock, str(UID_BASE - 1), "1", "1000"],
                            stdin=subprocess.PIPE)
    try:
        held = 0
        for _ in range(50):
            time.sleep(0.1)
            held = max(held, P.request({"op": "status"}, sock)["service"]["connections"]["open"] - 1)
    finally:
        proc.stdin.close()  # type: ignore[union-attr]
        proc.wait(30)
    return held


def main() -> None:
    if os.geteuid() != 0 or not available():
        print("skipped: needs root and the MIT KDC tools")
        return
    realm = Realm.start(None, "PKD.BENCH", maxlife="10m", maxrenew="1h")
    user = lab_users.create("pkd", password=True)
    password = user.password or ""
    directory = Path(tempfile.mkdtemp(prefix="pkd-bench-hostile-"))
    os.chmod(directory, 0o755)
    daemon = TicketD(directory, realm.env, log_level="ERROR")
    flood = None
    try:
        realm.add_principal(user.name, password)
        daemon.start()
        sock = daemon.socket
        _logins(sock, user, password)  # warm up (libkrb5 loaded, pyc files read)
        idle, idle_failed = _logins(sock, user, password)
        single = _one_user(sock)
        flood = subprocess.Popen([sys.executable, "-c", FLOOD, sock, str(UID_BASE), str(USERS), str(TRIES)],
                                 stdin=subprocess.PIPE)
        deadline = time.monotonic() + 60
        conns: dict = {}
        while time.monotonic() < deadline:
            reply = P.request({"op": "status"}, sock)
            if not reply.get("ok"):
                raise RuntimeError(f"status under the flood: {reply}\n{daemon.log()[-2000:]}")
            conns = reply["service"]["connections"]
            if conns["open"] >= conns["max_connections"] - 32:
                break
            time.sleep(0.2)
        flooded, flooded_failed = _logins(sock, user, password)
        reply = P.request({"op": "status"}, sock)
        if not reply.get("ok"):
            raise RuntimeError(f"status after the logins: {reply}\n{daemon.log()[-2000:]}")
        conns = reply["service"]["connections"]
        alive = daemon.alive()
    finally:
        if flood is not None:
            flood.stdin.close()  # type: ignore[union-attr]
            flood.wait(30)
        daemon.stop()
        clear_persistent(user.uid)
        lab_users.remove(user)
        realm.stop()
        shutil.rmtree(directory, ignore_errors=True)
    held = conns["open"] - 1  # the status request's own connection
    print(f"one uid trying 1,000 connections holds: {single} (max_connections_per_uid 8)")
    print(f"connection flood: {USERS} uids x {TRIES} connections each, reconnecting "
          "(defaults: max_connections 256, 32 for root, 8 per uid)")
    print(f"  held by the users at once      : {held}  (refused since start: {conns['refused']}, "
          f"accept errors: {conns['accept_errors']})")
    print(f"  root logins (auth+open+close)  : {LOGINS} idle, {LOGINS} flooded; failed: "
          f"{idle_failed} idle, {flooded_failed} flooded; daemon alive: {alive}")
    idle_ms, flood_ms = statistics.median(idle) * 1000, statistics.median(flooded) * 1000
    print(f"  anchor idle service   median {idle_ms:7.1f} ms   worst {max(idle) * 1000:7.1f} ms")
    print(f"  ours flooded service  median {flood_ms:7.1f} ms   worst {max(flooded) * 1000:7.1f} ms")
    print(f"  ratio flooded/idle (median): {flood_ms / idle_ms:.2f}x")


if __name__ == "__main__":
    main()
