"""Two KDCs: a replica fed by kprop/kpropd (krb5/realm.sh replica), and the service failing over.

The realm here is its own (module scope): its krb5.conf lists the primary, then the replica, with
primary_kdc, and lets libkrb5 use UDP.  With the primary killed or SIGSTOPped, a login (the
service's auth, and pamtester through the hook) still gets a TGT, renewals go on, and the user's
klist, polled as the user during the whole outage, never finds an empty cache.  When the primary
is back nothing is duplicated: one cache per user in the kernel, one tracked ticket per uid.
No timing is asserted; the failover delay is printed (pytest -s) and measured in bench/.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pam_keyinit_py.lab.realm import Realm, available
from tests.conftest import require, require_root
from tests.kdc import ticketd as td
from tests.kdc.test_service_pam import STRERROR, _pamtester, _service
from tests.kdc.ticketd import SessionHolder, TicketD, persistent_caches

#: The service's bound on one KDC call.  MIT moves on from a silent KDC after 1 s per exchange over
#: UDP, and a validated password login is three exchanges (AS, AS with preauth, TGS for host/).
KDC_TIMEOUT = 6.0


@pytest.fixture(scope="module")
def replicated() -> Iterator[Realm]:
    """A realm of its own with a replica KDC (kprop'd from the primary); destroyed afterwards."""
    require(available(), "MIT KDC tools (krb5kdc, kdb5_util, kadmin.local) not installed")
    require(os.access("/usr/sbin/kpropd", os.X_OK), "kpropd not installed (krb5-kpropd)")
    require_root()
    realm = Realm.start(None, "PKR.TEST", maxlife="60s", maxrenew="10m")
    try:
        realm.start_replica()
        yield realm
    finally:
        realm.stop()


def _replica_only_conf(realm: Realm, path: Path) -> Path:
    """A krb5.conf naming only the replica (no primary_kdc to fall back on)."""
    primary = f"127.0.0.1:{realm.kdc_port}"
    lines = [line for line in realm.krb5_conf.read_text().splitlines() if not line.strip().endswith(primary)]
    path.write_text("\n".join(lines) + "\n")
    os.chmod(path, 0o644)
    return path


def _kinit(conf: Path, principal: str, password: str, ccache: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "KRB5_CONFIG": str(conf), "KRB5CCNAME": ccache}
    return subprocess.run(["kinit", principal], input=password + "\n", env=env, capture_output=True,
                          text=True, check=False)


def test_realm_lists_both_kdcs_primary_first(replicated: Realm) -> None:
    text = replicated.krb5_conf.read_text()
    primary, replica = f"kdc = 127.0.0.1:{replicated.kdc_port}", f"kdc = 127.0.0.1:{replicated.replica_port}"
    assert replicated.replica_port and replicated.replica_port != replicated.kdc_port
    assert primary in text and replica in text and text.index(primary) < text.index(replica)
    assert f"primary_kdc = 127.0.0.1:{replicated.kdc_port}" in text
    assert "udp_preference_limit = 1" not in text  # TCP-only would hold 10 s on a SIGSTOPped primary
    assert replicated.kdc_pid() and replicated.replica_pid()


def test_kprop_carries_a_new_principal_to_the_replica(replicated: Realm, tmp_path: Path) -> None:
    """addprinc on the primary: the replica does not know it until kdb5_util dump + kprop."""
    conf = _replica_only_conf(replicated, tmp_path / "krb5.conf")
    password = "pw-" + os.urandom(6).hex()
    principal = replicated.add_principal("pkrprop", password)
    before = _kinit(conf, principal, password, f"FILE:{tmp_path}/cc0")
    assert before.returncode != 0 and "not found" in before.stderr, before.stderr
    replicated.propagate()
    after = _kinit(conf, principal, password, f"FILE:{tmp_path}/cc1")
    assert after.returncode == 0, after.stderr
    # and the ticket came from the replica's krb5kdc (its own log), not the primary's
    replica_log = (replicated.dir / "replica" / "kdc.log").read_text()
    assert f"{principal} for krbtgt/{replicated.realm}" in replica_log


class KlistPoller:
    """``klist -s`` as the user, in a loop, until stopped: counts polls and failures."""

    def __init__(self, user: td.SvcUser, env: dict[str, str]) -> None:
        self.user, self.env = user, env
        self.polls = self.failures = 0
        #: When each failed poll ran and what klist then listed (which cache, or why none).
        self.seen: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            ok = self.user.user.run(["klist", "-s"], env=self.env).returncode == 0
            self.polls += 1
            self.failures += not ok
            if not ok and len(self.seen) < 5:
                out = self.user.user.run(["klist"], env=self.env)
                self.seen.append(f"{time.strftime('%H:%M:%S')}: {(out.stdout + out.stderr)[-300:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def _renewals(daemon: TicketD) -> int:
    return int(daemon.request({"op": "status"})["service"]["renewals"])


@pytest.mark.parametrize("outage", ["killed", "sigstopped"])
def test_primary_down_logins_and_renewals_fail_over(replicated: Realm, pamwrap, outage: str) -> None:  # noqa: ANN001
    require_root()
    directory = td.public_tmpdir("pkr-ticketd-")
    daemon = TicketD(directory, replicated.env, **{**td.TEST_CONFIG, "kdc_timeout": KDC_TIMEOUT})
    users = [td.SvcUser(replicated) for _ in range(3)]
    replicated.propagate()  # the replica must know the new principals
    holders: list[SessionHolder] = []
    poller: KlistPoller | None = None
    stopped = 0
    user_env = {"KRB5_CONFIG": str(replicated.krb5_conf)}
    try:
        daemon.start()
        early, late, pam_user = users
        # Before the outage: a login with a session, whose cache the service keeps renewing.
        assert early.auth(daemon)["ok"], daemon.log()
        holders.append(SessionHolder(daemon, early.user))
        assert holders[-1].opened["ok"], holders[-1].opened
        poller = KlistPoller(early, user_env)
        daemon.wait_for(lambda: poller.polls >= 3, 10, "klist polls")

        if outage == "killed":
            os.kill(replicated.kdc_pid(), signal.SIGKILL)
            replicated.wait_stopped()
        else:
            stopped = replicated.kdc_pid()
            os.kill(stopped, signal.SIGSTOP)
        renewals_at_outage = _renewals(daemon)

        # A login during the outage: the service's auth (validated against the host keytab) ...
        t0 = time.monotonic()
        reply = late.auth(daemon)
        auth_delay = time.monotonic() - t0
        assert reply["ok"], f"{reply}\n{daemon.log()}"
        holders.append(SessionHolder(daemon, late.user))
        # ... and a real login through the hook (pamtester under pam_wrapper).
        service = _service(pamwrap, f"pkr-{outage}", daemon.socket, str(replicated.krb5_conf),
                           auth_opts=f"auth_timeout={int(KDC_TIMEOUT) + 2}")
        res, pam_delay = _pamtester(pamwrap, service, pam_user.name, pam_user.password,
                                    "authenticate", "open_session", "close_session")
        assert res.returncode == 0, res.stderr + daemon.log()
        assert STRERROR["success"] in res.stdout + res.stderr
        assert f"Default principal: {pam_user.principal}" in res.stdout, res.stdout
        print(f"primary {outage}: service auth {auth_delay:.2f} s, pamtester login {pam_delay:.2f} s")

        # Renewals go on through the replica (30 s tickets, renewed at 20 % of their life).
        daemon.wait_for(lambda: _renewals(daemon) >= renewals_at_outage + 2, 40, "renewals during the outage")
        # The answers came from the replica's krb5kdc.
        assert "TGS_REQ" in (replicated.dir / "replica" / "kdc.log").read_text()

        # The primary comes back; renewals go on and nothing is duplicated.
        if outage == "killed":
            replicated.start_kdc()
        else:
            os.kill(stopped, signal.SIGCONT)
            stopped = 0
        back = _renewals(daemon)
        daemon.wait_for(lambda: _renewals(daemon) >= back + 2, 40, "renewals after the primary came back")
        poller.stop()
        assert poller.failures == 0, (f"klist found no ticket {poller.failures} of {poller.polls} times: "
                                      f"{poller.seen}\n{daemon.log()[-3000:]}")
        assert poller.polls >= 20, poller.polls
        tracked = daemon.request({"op": "tickets"})["tickets"]
        for u in (early, late):
            mine = [t for t in tracked if t["uid"] == u.uid]
            assert len(mine) == 1, mine  # one tracked ticket per uid, never a second adoption
            live = [name for name, keys in persistent_caches(u.uid).items()
                    if not any("keyinit-retired" in desc for _o, desc in keys)]
            assert len(live) == 1, persistent_caches(u.uid)
            # A generation retired by a renewal is destroyed after renew_grace (2 s).
            daemon.wait_for(lambda uid=u.uid: len(persistent_caches(uid)) == 1, 10, "one cache per user")
        assert not [t for t in tracked if t["uid"] == pam_user.uid]  # its session closed: cleared
        assert persistent_caches(pam_user.uid) == {}
        for u in users:
            assert u.password not in daemon.log()
    finally:
        if poller is not None:
            poller.stop()
        if stopped:
            os.kill(stopped, signal.SIGCONT)
        if not replicated.running():
            replicated.start_kdc()
        for h in holders:
            h.kill()
        daemon.stop()
        print(daemon.log()[-4000:])
        for u in users:
            u.cleanup()
        import shutil

        shutil.rmtree(directory, ignore_errors=True)
