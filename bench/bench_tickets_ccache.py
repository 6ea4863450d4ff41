"""tickets.ccache against the MIT CLI, side by side in one run, against one throwaway realm.

1. Initial TGT into KEYRING:persistent:<uid> (wall ms per ticket): ``ccache.acquire_password``
   (with the service's 2 s KDC bound, which adds a helper thread, and without) vs ``kinit``
   run as the user with the password on stdin.  Target: ours <= 1.0x kinit.
2. CPU per renewal for 100 and 1,000 distinct uids (no passwd entries needed as root), each with
   a TGT in its persistent collection: ``ccache.renew`` (new cache, switch, destroy; all in this
   process) vs ``kinit -R`` in a subprocess per user (CPU of the children plus the fork/exec cost
   in this process).  KDC CPU is left out of both.  Target: ours <= 1/5 of kinit -R.

Run: ``sudo .venv/bin/python bench/bench_tickets_ccache.py`` or ``make bench ONLY=tickets_ccache``.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pam_keyinit_py.lab.realm import Realm, available  # noqa: E402
from pam_keyinit_py.lab.users import become, clear_persistent  # noqa: E402
from pam_keyinit_py.tickets import ccache  # noqa: E402

UID_BASE = 3_100_000  # uids without passwd entries: persistent keyrings exist for any uid
PASSWORD = "bench-password-1"


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _kadmin_batch(realm: Realm, lines: list[str]) -> None:
    """Many kadmin.local requests in one process (realm.sh runs one per principal: too slow here)."""
    env = {**os.environ, **realm.env}
    subprocess.run(["kadmin.local", "-r", realm.realm], input="\n".join(lines) + "\n", env=env,
                   capture_output=True, text=True, check=True)


def bench_initial(realm: Realm, n: int = 40) -> list[tuple[str, float]]:
    conf = str(realm.krb5_conf)
    uid = UID_BASE
    principal = realm.add_principal("pkkbench0", PASSWORD)
    env = {"PATH": "/usr/bin:/bin", **realm.env}
    rows = []
    try:
        for label, kw in (("ccache.acquire_password (timeout=2 s)", {"timeout": 2.0}),
                          ("ccache.acquire_password (no bound)", {"timeout": None})):
            ccache.acquire_password(principal, PASSWORD, uid, uid, krb5_config=conf, **kw)  # warm
            t = time.perf_counter()
            for _ in range(n):
                ccache.acquire_password(principal, PASSWORD, uid, uid, krb5_config=conf, grace=0, **kw)
            rows.append((label, (time.perf_counter() - t) / n * 1000))
        clear_persistent(uid)
        t = time.perf_counter()
        for _ in range(n):
            subprocess.run(["kinit", principal], input=PASSWORD + "\n", env=env, preexec_fn=become(uid, uid),
                           capture_output=True, text=True, check=True)
        rows.append(("kinit (CLI, as the user)", (time.perf_counter() - t) / n * 1000))
    finally:
        ccache.flush_deferred()
        clear_persistent(uid)
    return rows


def bench_renew(realm: Realm, users: int, keytab: Path) -> list[tuple[str, float, float]]:
    conf = str(realm.krb5_conf)
    uids = [UID_BASE + 1 + i for i in range(users)]
    names: dict[int, str] = {}
    try:
        for i, uid in enumerate(uids):
            names[uid] = ccache.acquire_keytab(f"pkkbench{i + 1}@{realm.realm}", str(keytab), uid, uid,
                                               krb5_config=conf, timeout=None).ccache
        time.sleep(1.0)  # so renewed end times really move
        # ours: every renewal in this process (KDC exchange, new cache, switch, destroy old).
        wall, cpu = time.perf_counter(), time.process_time()
        for uid in uids:
            names[uid] = ccache.renew(names[uid], uid, uid, krb5_config=conf, grace=0).ccache
        ours_cpu = (time.process_time() - cpu) / users * 1000
        ours_wall = (time.perf_counter() - wall) / users * 1000
        # anchor: kinit -R as each user, on the primary cache of KEYRING:persistent:<uid>.
        env = {"PATH": "/usr/bin:/bin", **realm.env}
        wall, cpu, child = time.perf_counter(), time.process_time(), _children_cpu()
        for uid in uids:
            subprocess.run(["kinit", "-R"], env=env, preexec_fn=become(uid, uid), capture_output=True,
                           check=True)
        k_cpu = ((time.process_time() - cpu) + (_children_cpu() - child)) / users * 1000
        k_wall = (time.perf_counter() - wall) / users * 1000
    finally:
        ccache.flush_deferred()
        for uid in uids:
            clear_persistent(uid)
    return [(f"ccache.renew, {users} uids", ours_cpu, ours_wall),
            (f"kinit -R subprocess, {users} uids", k_cpu, k_wall)]


def main() -> None:
    if os.geteuid() != 0 or not available():
        print("needs root and the MIT KDC tools (krb5kdc, kdb5_util, kadmin.local); skipped")
        return
    realm = Realm.start(None, "PKKBENCH.TEST", maxlife="1h", maxrenew="1d")
    try:
        top = 1000
        with tempfile.TemporaryDirectory() as tmp:
            keytab = Path(tmp) / "bench.keytab"
            _kadmin_batch(realm, [f"addprinc -randkey pkkbench{i}" for i in range(1, top + 1)]
                          + [f"ktadd -k {keytab} pkkbench{i}" for i in range(1, top + 1)])
            init = bench_initial(realm)
            renew = bench_renew(realm, 100, keytab) + bench_renew(realm, top, keytab)
    finally:
        realm.stop()
    kinit_ms = init[-1][1]
    print(f"{'initial TGT into KEYRING:persistent':45} {'wall ms':>9} {'vs kinit':>9}")
    for label, ms in init:
        print(f"{label:45} {ms:9.2f} {ms / kinit_ms:8.2f}x")
    print()
    print(f"{'renewal':45} {'CPU ms':>9} {'wall ms':>9} {'CPU vs kinit -R':>16}")
    for k in range(0, len(renew), 2):
        anchor = renew[k + 1][1]
        for label, cpu, wall in renew[k:k + 2]:
            print(f"{label:45} {cpu:9.3f} {wall:9.2f} {cpu / anchor:15.3f}x")


if __name__ == "__main__":
    main()
