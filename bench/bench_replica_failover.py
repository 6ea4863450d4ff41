"""Login delay with the primary KDC down, through a replica (realm.sh replica), in one run.

A realm with a replica fed by kprop.  For each state of the primary (up, SIGKILLed, SIGSTOPped)
the median of ROUNDS:
- ours: the service's ``auth`` (AS exchange, preauth, TGT validated against the host keytab:
  3 KDC exchanges), the service configured with kdc_timeout = 6;
- anchor: MIT ``kinit`` with the same password and the same krb5.conf (2 exchanges).
Both with the realm's krb5.conf (UDP first, as realm.sh writes it for a replicated realm) and,
for the anchor, with ``udp_preference_limit = 1`` (TCP only): MIT keeps waiting up to 10 s on
an accepted TCP connection, which a SIGSTOPped krb5kdc's listen queue still gives.

Run: ``make bench ONLY=replica`` (root).
"""

from __future__ import annotations

import os
import shutil
import signal
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

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))


def _kinit(conf: Path, principal: str, password: str, cc: str) -> float:
    t0 = time.perf_counter()
    env = {"PATH": "/usr/bin:/bin", "KRB5_CONFIG": str(conf), "KRB5CCNAME": cc}
    res = subprocess.run(["kinit", principal], input=password + "\n", capture_output=True, text=True, env=env,
                         check=False)
    took = time.perf_counter() - t0
    if res.returncode:
        raise RuntimeError(f"kinit failed: {res.stderr.strip()}")
    return took


def main() -> None:
    if os.geteuid() != 0 or not available() or not os.access("/usr/sbin/kpropd", os.X_OK):
        print("replica failover: skipped (needs root, the MIT KDC tools and kpropd)")
        return
    work = Path(tempfile.mkdtemp(prefix="bench-replica-"))
    os.chmod(work, 0o755)
    realm = Realm.start(None, "BENCH.REPLICA.TEST", maxlife="10m", maxrenew="1h")
    user = lab_users.create("brf")
    password = os.urandom(9).hex()
    daemon = TicketD(work / "ticketd", realm.env, kdc_timeout=6)
    rows: dict[str, tuple[float, float, float]] = {}
    stopped = 0
    try:
        principal = realm.add_principal(user.name, password)
        realm.start_replica()  # kprop carries the principal
        tcp = work / "krb5-tcp.conf"
        tcp.write_text(realm.krb5_conf.read_text().replace(
            "[libdefaults]\n", "[libdefaults]\n    udp_preference_limit = 1\n", 1))
        os.chmod(daemon.dir, 0o755)
        daemon.start()
        cc = f"FILE:{work}/cc"
        msg = {"op": "auth", "user": user.name, "uid": user.uid, "gid": user.gid, "password": password}

        def ours() -> float:
            t0 = time.perf_counter()
            reply = P.request(msg, daemon.socket, timeout=30)
            took = time.perf_counter() - t0
            if not reply.get("ok"):
                raise RuntimeError(f"auth failed: {reply}")
            return took

        for state in ("up", "killed", "sigstopped"):
            if state == "killed":
                os.kill(realm.kdc_pid(), signal.SIGKILL)
                realm.wait_stopped()
            elif state == "sigstopped":
                realm.start_kdc()
                stopped = realm.kdc_pid()
                os.kill(stopped, signal.SIGSTOP)
            rows[state] = tuple(statistics.median(f() for _ in range(ROUNDS)) for f in (  # type: ignore[assignment]
                ours,
                lambda: _kinit(realm.krb5_conf, principal, password, cc),
                lambda: _kinit(tcp, principal, password, cc)))
    finally:
        if stopped:
            os.kill(stopped, signal.SIGCONT)
        daemon.stop()
        clear_persistent(user.uid)
        lab_users.remove(user)
        realm.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"login with the primary KDC down, through the replica: median of {ROUNDS} (s)")
    print(f"{'primary':12} {'ours: auth (3 exch.)':>21} {'kinit, UDP':>11} {'kinit, TCP only':>16}")
    for state, (o, k, t) in rows.items():
        print(f"{state:12} {o:21.2f} {k:11.2f} {t:16.2f}")


if __name__ == "__main__":
    main()
