"""keyinit-ticketd as a whole, side by side with its anchors in one run, against one throwaway realm.

1. RSS of the service with 10,000 tracked sessions (10,000 distinct uids, each session anchored
   to a live process, so each holds a pidfd, a touch timer and an adoption-scan timer).
   Target: <= 64 MiB.  Also: the rate at which it registers and closes sessions (32 clients).
2. A full PAM login, ``pamtester authenticate open_session close_session`` under pam_wrapper,
   password on stdin: our hook (pam_python.so) + keyinit-ticketd vs Debian's pam_krb5.so +
   pam_keyinit.so, both storing the TGT in KEYRING:persistent:<uid>.  Reported: median wall ms
   per login and the ratio.  Needs libpam-krb5 (``apt-get install libpam-krb5`` and then
   ``pam-auth-update --remove krb5`` so the global stacks stay as they were).

Run: ``sudo .venv/bin/python bench/bench_tickets_service.py`` or ``make bench ONLY=tickets_service``.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from anchors import PAM_KRB5, ensure_pam_krb5  # noqa: E402

from pam_keyinit_py import keyutils  # noqa: E402
from pam_keyinit_py import protocol as P  # noqa: E402
from pam_keyinit_py.lab import pamwrap as lab_pamwrap  # noqa: E402
from pam_keyinit_py.lab import users as lab_users  # noqa: E402
from pam_keyinit_py.lab.realm import Realm, available  # noqa: E402
from pam_keyinit_py.lab.ticketd import TicketD  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
UID_BASE = 3_200_000  # uids without passwd entries (distinct from the other benches' range)
SESSIONS = 10_000
CLIENTS = 32
LOGINS = 15


def _start_daemon(directory: Path, env: dict[str, str]) -> TicketD:
    """The real daemon through lab's runner (readiness is its own sd_notify READY=1)."""
    daemon = TicketD(directory, env, log_level="WARNING")
    daemon.start()
    return daemon


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _run_clients(sock: str, messages: list[dict]) -> float:
    """Send ``messages`` over CLIENTS persistent connections; returns seconds taken."""
    import socket as s

    chunks = [messages[i::CLIENTS] for i in range(CLIENTS)]
    errors: list[dict] = []

    def client(chunk: list[dict]) -> None:
        with s.socket(s.AF_UNIX, s.SOCK_STREAM) as conn:
            conn.connect(sock)
            for m in chunk:
                P.send_message(conn, m)
                reply = P.recv_message(conn, P.MAX_REPLY)
                if not reply["ok"]:
                    errors.append(reply)

    t0 = time.monotonic()
    threads = [threading.Thread(target=client, args=(c,)) for c in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} failed, first: {errors[0]}")
    return time.monotonic() - t0


def _drop_persistent(uids: Iterable[int]) -> None:
    """KEYCTL_GET_PERSISTENT + KEYCTL_INVALIDATE for each uid: the persistent keyrings a bench made
    (or the service touched) for its fake uids go, not just their contents."""
    for uid in uids:
        try:
            keyutils.invalidate(keyutils.get_persistent(uid, keyutils.KEY_SPEC_THREAD_KEYRING))
        except OSError:
            pass


def bench_rss(realm: Realm) -> None:
    directory = Path(tempfile.mkdtemp(prefix="pkd-bench-"))
    daemon = _start_daemon(directory, realm.env)
    sock = daemon.socket
    try:
        assert daemon.proc is not None
        idle = _rss_kib(daemon.proc.pid)
        opens = [{"op": "open", "user": f"u{i}", "uid": UID_BASE + i, "gid": UID_BASE + i}
                 for i in range(SESSIONS)]
        t_open = _run_clients(sock, opens)
        # Let the scheduler run every uid's first keyring touch and adoption scan.
        while P.request({"op": "status"}, sock, timeout=60).get("service", {}).get("sessions", 0) < SESSIONS:
            time.sleep(0.1)
        time.sleep(2)
        status = P.request({"op": "status"}, sock, timeout=60)["service"]
        full = _rss_kib(daemon.proc.pid)
        closes = [{"op": "close", "uid": UID_BASE + i} for i in range(SESSIONS)]
        t_close = _run_clients(sock, closes)
        print(f"RSS with {status['sessions']:,} tracked sessions of {status['users']:,} uids "
              f"({status['timers']:,} timers): {full / 1024:.1f} MiB (idle {idle / 1024:.1f} MiB; "
              f"target <= 64 MiB)")
        print(f"  open {SESSIONS:,} sessions: {SESSIONS / t_open:,.0f}/s; close: {SESSIONS / t_close:,.0f}/s "
              f"({CLIENTS} clients, state file committed before each reply)")
    finally:
        daemon.stop()
        _drop_persistent(range(UID_BASE, UID_BASE + SESSIONS))  # the keyrings the service touched
        shutil.rmtree(directory, ignore_errors=True)


def _login(wrapper: lab_pamwrap.PamWrapper, service: str, user: str, password: str) -> float:
    read_fd, write_fd = os.pipe()
    os.write(write_fd, password.encode() + b"\n")
    os.close(write_fd)
    try:
        t0 = time.perf_counter()
        res = wrapper.run(service, user, "authenticate", "open_session", "close_session", stdin=read_fd)
        elapsed = time.perf_counter() - t0
    finally:
        os.close(read_fd)
    if res.returncode != 0:
        raise RuntimeError(f"{service}: {res.stderr[-800:]}")
    return elapsed


def bench_pam_login(realm: Realm) -> None:
    missing = lab_pamwrap.available() or ensure_pam_krb5()
    if missing:
        print(f"PAM login: skipped ({missing})")
        return
    user = lab_users.create("pkd", password=True)
    name, password = user.name, user.password or ""
    directory = Path(tempfile.mkdtemp(prefix="pkd-bench-pam-"))
    os.chmod(directory, 0o755)
    wrapper = lab_pamwrap.PamWrapper()
    daemon = None
    try:
        realm.add_principal(name, password)
        daemon = _start_daemon(directory, realm.env)
        sock = daemon.socket
        ours = wrapper.service("pkd-bench-ours", [
            wrapper.hook_line("auth", "required", f"socket={sock}"),
            "account required pam_permit.so",
            wrapper.hook_line("session", "required", f"force revoke tickets socket={sock}"),
        ])
        anchor = wrapper.service("pkd-bench-anchor", [
            f"auth required {PAM_KRB5} minimum_uid=1000 ccache=KEYRING:persistent:%u",
            "account required pam_permit.so",
            "session required pam_keyinit.so force revoke",
            f"session required {PAM_KRB5} minimum_uid=1000 ccache=KEYRING:persistent:%u",
        ])
        os.environ.update(realm.env)  # pamtester (and pam_krb5 in it) read KRB5_CONFIG
        times: dict[str, list[float]] = {"ours": [], "anchor": []}
        for _ in range(2):  # warm caches (page cache, pyc files) for both
            _login(wrapper, ours, name, password)
            _login(wrapper, anchor, name, password)
        for _ in range(LOGINS):
            times["ours"].append(_login(wrapper, ours, name, password))
            times["anchor"].append(_login(wrapper, anchor, name, password))
        ours_ms = statistics.median(times["ours"]) * 1000
        anchor_ms = statistics.median(times["anchor"]) * 1000
        print(f"full PAM login (pamtester authenticate open_session close_session, median of {LOGINS}):")
        print(f"  ours   pam_python hook + keyinit-ticketd : {ours_ms:7.1f} ms")
        print(f"  anchor pam_krb5.so + pam_keyinit.so      : {anchor_ms:7.1f} ms")
        print(f"  ratio ours/anchor: {ours_ms / anchor_ms:.2f}x")
    finally:
        if daemon is not None:
            daemon.stop()
        wrapper.close()
        shutil.rmtree(directory, ignore_errors=True)
        lab_users.remove(user)


def main() -> None:
    if os.geteuid() != 0 or not available():
        print("skipped: needs root and the MIT KDC tools")
        return
    realm = Realm.start(None, "PKD.BENCH", maxlife="10m", maxrenew="1h")
    try:
        bench_rss(realm)
        bench_pam_login(realm)
    finally:
        realm.stop()


if __name__ == "__main__":
    main()
