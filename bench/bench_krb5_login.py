"""The Kerberos login as the Primary authenticator (issue 9): pamtester
``authenticate acct_mgmt open_session close_session``, four stacks side by side in one run.

Every stack is what the real ``pam-auth-update`` writes for it (lab/pamconfigs.py: private
mount namespace, the host untouched), run under pam_wrapper by pamtester, the password on stdin:
- ours: ``--enable keyinit-krb5`` (the hook first, validating the TGT against the realm's host
  keytab through keyinit-ticketd; pam_unix behind it);
- pam_krb5: libpam-krb5's own ``krb5`` profile (pam_krb5 validating against the same keytab),
  plus ``session optional pam_keyinit.so force revoke``;
- empty pam_python: ours with every hook line replaced by an empty pam_python module (the floor
  that pam_python's interpreter costs);
- pam_permit in pam_krb5's place: the pam_krb5 stack with every pam_krb5 line replaced by
  pam_permit.so (the same control flow, no Kerberos work): the anchor's floor, as the empty
  module is ours'.

Target: ours − empty pam_python ≤ pam_krb5 − pam_permit in its place (the hook's own cost is at
most pam_krb5's own cost).  Not ``pam_unix alone``, the floor this bench used before 2026-12-02:
when pam_krb5 (or the hook) succeeds, pam_unix's auth line is jumped over, so its password hash
(yescrypt, ~4 ms of CPU here) runs in neither Kerberos stack; subtracting it made pam_krb5's own
cost look ~4 ms smaller than it is (CPU, one run: pam_krb5 stack 9.3 ms, pam_unix alone 6.4,
pam_permit in pam_krb5's place 2.5).  CPU = pamtester's user+sys (wait4), plus for ours the service's CPU per
login (its CPU-time clock, phases.ServiceCpu), because the hook's Kerberos work happens there; the
service's share is also printed by thread (the event loop, the workers, the KDC helper...).

Beside the totals, where ours' time goes (bench/phases.py): each hook phase from a timed copy of
the shim run interleaved with the others (not in the totals), and the service's auth, open and
close timed from outside as bench-only requests.

Run: ``make bench ONLY=krb5_login`` (root; BENCH_ROUNDS=N, default 24).
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from anchors import ensure_pam_krb5  # noqa: E402
from phases import NamedTicketD, ServiceCpu, print_table, read_phases, service_ops, timed_shim  # noqa: E402

from pam_keyinit_py.lab import pamconfigs  # noqa: E402
from pam_keyinit_py.lab import users as lab_users  # noqa: E402
from pam_keyinit_py.lab.pamwrap import PAM_PYTHON, PamWrapper  # noqa: E402
from pam_keyinit_py.lab.realm import Realm  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "24"))
OPS = ("authenticate", "acct_mgmt", "open_session", "close_session")
EMPTY = "".join(f"def pam_sm_{op}(pamh, flags, argv):\n    return pamh.PAM_SUCCESS\n"
                for op in ("authenticate", "setcred", "acct_mgmt", "open_session", "close_session",
                           "chauthtok"))
KRB5_PROFILE = Path("/usr/share/pam-configs/krb5")


def _login(pw: PamWrapper, service: str, user: str, password: str,
           env: dict[str, str]) -> tuple[float, float]:
    """One pamtester run: (wall ms, cpu ms of pamtester and its children)."""
    read_fd, write_fd = os.pipe()
    os.write(write_fd, password.encode() + b"\n")
    os.close(write_fd)
    t0 = time.perf_counter()
    proc = subprocess.Popen(["pamtester", service, user, *OPS], env=env, stdin=read_fd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    os.close(read_fd)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = (time.perf_counter() - t0) * 1000
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"pamtester {service} failed: {proc.stderr.read().decode()[-800:]}")  # type: ignore[union-attr]
    return wall, (usage.ru_utime + usage.ru_stime) * 1000


def main() -> None:
    if os.geteuid() != 0:
        print("skipped: needs root")
        return
    missing = pamconfigs.available() or ensure_pam_krb5()
    if missing:
        print(f"skipped: {missing}")
        return
    # The state file on a tmpfs, as deployed (/run/keyinit): no disk flush on the login path.
    work = Path("/dev/shm") / f"pkk-bench-krb5-{os.getpid()}"
    work.mkdir(mode=0o755)
    realm = Realm.start(None, "BENCH.TEST", maxlife="1h", maxrenew="1d")
    user = lab_users.create("pkb")
    daemon = NamedTicketD(work / "ticketd", realm.env, log_level="WARNING")
    pw = PamWrapper()
    try:
        password = "bench-" + os.urandom(6).hex()
        realm.add_principal(user.name, password)
        daemon.start()
        empty = pw.dir / "empty_module.py"
        empty.write_text(EMPTY)
        ours = pamconfigs.render_stacks(("keyinit-krb5",))
        anchor = pamconfigs.render_stacks(("krb5",), extra=(KRB5_PROFILE,))
        anchor["session"].append("session optional pam_keyinit.so force revoke")
        services = {
            "ours (keyinit-krb5 profile)": pamconfigs.service_lines(ours, pw, f"socket={daemon.socket}"),
            "pam_krb5 (krb5 profile) + pam_keyinit.so": pamconfigs.service_lines(anchor, pw),
            "empty pam_python in ours' place": [
                line.replace(f"{PAM_PYTHON} {pw.shim()} ", f"{PAM_PYTHON} {empty} ")
                for line in pamconfigs.service_lines(ours, pw)],
            "pam_permit in pam_krb5's place": [re.sub(r"\bpam_krb5\.so\b.*$", "pam_permit.so", line)
                                               for line in pamconfigs.service_lines(anchor, pw)],
        }
        phase_log = work / "phases.log"
        timed = timed_shim(work, phase_log)
        pw.service("krb5benchtimed", [line.replace(str(pw.shim()), str(timed))
                                      for line in services["ours (keyinit-krb5 profile)"]])
        env = {**pw.env(), **realm.env}
        for i, lines in enumerate(services.values()):
            pw.service(f"krb5bench{i}", lines)
            _login(pw, f"krb5bench{i}", user.name, password, env)  # warm up
        _login(pw, "krb5benchtimed", user.name, password, env)
        phase_log.write_text("")
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in services}
        assert daemon.proc is not None
        service = ServiceCpu(daemon.proc.pid)
        for _ in range(ROUNDS):  # interleaved, so load from other jobs hits all stacks alike
            for i, name in enumerate(services):
                if i == 0:
                    service.before()
                samples[name].append(_login(pw, f"krb5bench{i}", user.name, password, env))
                if i == 0:
                    service.after()
            _login(pw, "krb5benchtimed", user.name, password, env)  # phases only
        phases = read_phases(phase_log)
        phases.update(service_ops(daemon.socket, user.name, user.uid, user.gid, password, ROUNDS))
        print(f"pamtester {' '.join(OPS)}, {ROUNDS} runs each, medians (ms)")
        print(f"{'stack':45s} {'wall':>8s} {'cpu':>8s}")
        med = {}
        for name, vals in samples.items():
            med[name] = (statistics.median(w for w, _ in vals), statistics.median(c for _, c in vals))
            print(f"{name:45s} {med[name][0]:8.2f} {med[name][1]:8.2f}")
        svc = service.total / ROUNDS
        print(f"{'  + keyinit-ticketd CPU per login (mean)':45s} {'':8s} {svc:8.2f}")
        print(f"    the service's by thread: {service.line(ROUNDS)}")
        o, k, e, p = (med[name] for name in services)
        for label, idx in (("wall", 0), ("cpu", 1)):
            own = o[idx] - e[idx] + (svc if idx == 1 else 0.0)
            krb = k[idx] - p[idx]
            verdict = "met" if own <= krb else "MISSED"
            print(f"{label}: ours - empty = {own:.2f} ms; "
                  f"pam_krb5 stack - pam_permit in its place = {krb:.2f} ms "
                  f"(target ours' own cost <= pam_krb5's own cost: {verdict})")
        print_table("where ours' time goes (hook phases from the timed shim; service ops as round trips)",
                    phases)
    finally:
        daemon.stop()
        pw.close()
        lab_users.remove(user)
        realm.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
