"""A real ssh login to its first command, this project's stack against pam_krb5 + pam_keyinit.so.

Same KDC, same user, same sshd binary, one run: N logins of ``ssh user@127.0.0.1 true`` with
a password, through
- ours: pam_unix, then the hook (auth: use_first_pass -> keyinit-ticketd gets the TGT into
  KEYRING:persistent; session: force revoke tickets);
- anchor: pam_unix, then pam_krb5.so use_first_pass with ccache=KEYRING:persistent:%u, and
  pam_keyinit.so force revoke.
In both sshd modes: password (all PAM calls in the monitor: one interpreter) and
keyboard-interactive (authenticate in a separate child: pam_python starts a second
interpreter there).  Target (issue 5): ours ≤ 1.10× the anchor.

Run: ``make bench ONLY=ssh_login`` (root; BENCH_LOGINS=N to change the count).
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from anchors import PAM_KRB5, ensure_pam_krb5  # noqa: E402

from pam_keyinit_py.lab import users as lab_users  # noqa: E402
from pam_keyinit_py.lab.pamwrap import PAM_PYTHON, PamWrapper  # noqa: E402
from pam_keyinit_py.lab.realm import Realm  # noqa: E402
from pam_keyinit_py.lab.sshd import KBDINT, PASSWORD, Sshd  # noqa: E402
from pam_keyinit_py.lab.ticketd import TicketD  # noqa: E402

LOGINS = int(os.environ.get("BENCH_LOGINS", "25"))


def ours(pam: PamWrapper, sock: str) -> list[str]:
    """This project's stack (what etc/pam-configs/keyinit adds to Debian's)."""
    return ["auth required pam_unix.so",
            pam.hook_line("auth", "optional", f"use_first_pass socket={sock}"),
            "account required pam_unix.so",
            pam.hook_line("session", "optional", f"force revoke tickets socket={sock}"),
            "session required pam_unix.so"]


def anchor(_pam: PamWrapper, _sock: str) -> list[str]:
    """pam_krb5 + pam_keyinit.so doing the same job in C."""
    krb5 = f"{PAM_KRB5} minimum_uid=1000 ccache=KEYRING:persistent:%u"
    return ["auth required pam_unix.so",
            f"auth optional {krb5} use_first_pass",
            "account required pam_unix.so",
            "session optional pam_keyinit.so force revoke",
            f"session optional {krb5}",
            "session required pam_unix.so"]


def floor(pam: PamWrapper, _sock: str) -> list[str]:
    """pam_python with an empty module in the same two places: the interpreter's own cost."""
    empty = pam.dir / "empty_module.py"
    empty.write_text("".join(f"def pam_sm_{name}(pamh, flags, argv):\n    return pamh.PAM_SUCCESS\n"
                             for name in ("authenticate", "setcred", "open_session", "close_session")))
    return ["auth required pam_unix.so",
            f"auth optional {PAM_PYTHON} {empty}",
            "account required pam_unix.so",
            f"session optional {PAM_PYTHON} {empty}",
            "session required pam_unix.so"]


STACKS = (("anchor", anchor), ("floor", floor), ("ours", ours))


def time_logins(server: Sshd, user: str, password: str, n: int) -> list[float]:
    """Wall-clock seconds of n complete logins running `true`."""
    out = []
    for _ in range(n):
        t = time.perf_counter()
        res = server.login(user, password, "true")
        out.append(time.perf_counter() - t)
        if res.returncode != 0:
            raise RuntimeError(f"login failed: {res.stderr.strip()}\n{server.log()[-2000:]}")
    return out


def main() -> None:
    if os.geteuid() != 0:
        print("ssh login: skipped (needs root)")
        return
    missing = ensure_pam_krb5()
    if missing:
        print(f"ssh login: skipped ({missing})")
        return
    work = Path(tempfile.mkdtemp(prefix="bench-ssh-"))
    os.chmod(work, 0o755)
    realm = Realm.start(None, "BENCH.KEYINIT.TEST", maxlife="10m", maxrenew="1h")
    lab_user = lab_users.create("bsl", password=True)
    user, password = lab_user.name, lab_user.password or ""
    realm.add_principal(user, password)
    # sshd (and so pam_krb5 in it) reads the realm through KRB5_CONFIG, like the service.
    os.environ.update(realm.env)
    daemon = TicketD(work / "ticketd", realm.env)
    os.chmod(daemon.dir, 0o755)
    daemon.start()
    results: dict[tuple[str, str], float] = {}
    try:
        for mode in (PASSWORD, KBDINT):
            servers = {}
            try:
                for name, stack in STACKS:
                    pam = PamWrapper(work / f"pam-{name}-{mode}")
                    servers[name] = Sshd(pam).start(stack(pam, daemon.socket), mode=mode)
                    time_logins(servers[name], user, password, 3)  # warm caches
                # Interleaved, one login each in turn, so drift in the machine's load hits all alike.
                times: dict[str, list[float]] = {name: [] for name in servers}
                for _ in range(LOGINS):
                    for name, server in servers.items():
                        times[name] += time_logins(server, user, password, 1)
                for name in servers:
                    results[(mode, name)] = statistics.median(times[name])
            finally:
                for server in servers.values():
                    server.close()
    finally:
        daemon.stop()
        realm.stop()
        lab_users.remove(lab_user)
        shutil.rmtree(work, ignore_errors=True)
        for key in realm.env:
            os.environ.pop(key, None)
    print(f"ssh login to `true`, median of {LOGINS} interleaved logins (ms)")
    print(f"{'sshd mode':22} {'pam_krb5+pam_keyinit':>21} {'empty pam_python':>17} {'this project':>13} "
          f"{'ratio':>6} {'ours-floor':>11}")
    for mode in (PASSWORD, KBDINT):
        a, f, o = (results[(mode, name)] for name in ("anchor", "floor", "ours"))
        print(f"{mode:22} {a * 1e3:21.1f} {f * 1e3:17.1f} {o * 1e3:13.1f} {o / a:6.2f} {(o - f) * 1e3:9.1f}")
    print("target: ours ≤ 1.10× the anchor; 'empty pam_python' is the same stack with empty modules,")
    print("the cost of pam_python's interpreter itself (one in the monitor, one more in the")
    print("keyboard-interactive auth child)")


if __name__ == "__main__":
    main()
