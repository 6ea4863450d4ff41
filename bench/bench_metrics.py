"""What the fleet telemetry costs, each beside the operation it rides on, in one run.

1. One scrape (``metrics.exposition()``: the counters, the histogram, the live gauges walking every
   tracked ticket under the service lock, and one read of /proc/key-users) with 10 and 10,000
   tracked tickets, beside the root ``status`` request's own work (``Service.status(0)``, which
   also walks every ticket and session).  In-process CPU ms per call.
2. The quota guard's look before a renewal (``quota.no_room``: /proc/key-users plus a walk of the
   uid's persistent keyring) beside the renewal it guards (``ccache.renew``: a TGS exchange with a
   loopback MIT KDC, a new cache, the switch).  Wall ms per renewal, 50 renewals.

Run: ``sudo .venv/bin/python bench/bench_metrics.py`` or ``make bench ONLY=metrics``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pam_keyinit_py.lab.realm import Realm, available  # noqa: E402
from pam_keyinit_py.lab.users import clear_persistent  # noqa: E402
from pam_keyinit_py.tickets import ccache, metrics, quota  # noqa: E402
from pam_keyinit_py.tickets.config import Config  # noqa: E402
from pam_keyinit_py.tickets.service import LOGIN, Service, Tracked  # noqa: E402

UID = 3_200_000  # a uid without a passwd entry: its persistent keyring exists all the same


def _cpu_ms(func, n: int) -> float:  # noqa: ANN001
    t = time.process_time()
    for _ in range(n):
        func()
    return (time.process_time() - t) / n * 1000


def bench_scrape() -> None:
    for tickets in (10, 10_000):
        with tempfile.TemporaryDirectory() as tmp:
            svc = Service(Config(state_file=f"{tmp}/state"))
            now = time.time()
            for i in range(tickets):
                name = f"KEYRING:persistent:{UID + i}:keyinit_{i:010x}"
                svc.tickets[name] = Tracked(name, UID + i, UID + i, f"u{i}@BENCH", LOGIN,
                                            starttime=now, endtime=now + 36000 + i)
            metrics.bind(svc)
            n = 200 if tickets < 1000 else 20
            ours = _cpu_ms(metrics.exposition, n)
            anchor = _cpu_ms(lambda s=svc: s.status(0), n)
            print(f"  scrape, {tickets:>6} tickets: exposition {ours:7.2f} ms CPU   "
                  f"status(0) {anchor:7.2f} ms CPU   ratio {ours / anchor:5.2f}")


def bench_guard() -> None:
    if not available():
        print("  quota guard: skipped (no MIT KDC tools)")
        return
    realm = Realm.start(None, "BENCH.TEST", maxlife="1h", maxrenew="7d")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            keytab = Path(tmp) / "u.keytab"
            principal = realm.add_principal("pkkguard", "bench-password-1")
            realm.keytab(principal, keytab)
            conf = str(realm.krb5_conf)
            name = ccache.acquire_keytab(principal, str(keytab), UID, UID, krb5_config=conf,
                                         timeout=None).ccache
            time.sleep(1.0)
            n, guard, renew = 50, 0.0, 0.0
            for _ in range(n):
                t = time.perf_counter()
                assert not quota.no_room(name, UID, ccache.retiring(UID))
                guard += time.perf_counter() - t
                t = time.perf_counter()
                name = ccache.renew(name, UID, UID, krb5_config=conf, grace=0).ccache
                renew += time.perf_counter() - t
            print(f"  quota guard look {guard / n * 1000:6.2f} ms wall   "
                  f"ccache.renew {renew / n * 1000:6.2f} ms wall   guard/renew {guard / renew:5.2f}")
    finally:
        ccache.flush_deferred()
        clear_persistent(UID)
        realm.stop()


def main() -> None:
    bench_scrape()
    bench_guard()


if __name__ == "__main__":
    main()
