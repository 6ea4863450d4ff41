"""Renewal, recovery and adoption in the ticket service, with 30 s tickets renewed every ~6 s.

Real keyinit-ticketd subprocess, real MIT KDC (stopped and started for the outage tests), real
kernel keyrings read back with keyctl calls.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time

from tests.conftest import VENV_BIN, require_root
from tests.kdc import ticketd as td
from tests.kdc.ticketd import TEST_CONFIG, SessionHolder, SvcUser, TicketD, klist_ok, persistent_caches

svc_user, ticketd, user_krb5 = td.svc_user, td.ticketd, td.user_krb5


def _tickets(daemon: TicketD, uid: int) -> list[dict]:
    return daemon.request({"op": "tickets", "uid": uid})["tickets"]


def _renewed(daemon: TicketD, uid: int, at_least: int) -> list[dict] | None:
    rows = _tickets(daemon, uid)
    return rows if rows and all(t["renewed"] >= at_least for t in rows) else None


def test_renewal_has_no_empty_cache_window(ticketd, svc_user, user_krb5):
    """A reader running ``klist -s`` in a tight loop through three renewals never sees a failure."""
    first = svc_user.auth(ticketd)
    holder = SessionHolder(ticketd, svc_user.user)
    results = {"ok": 0, "fail": 0}
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            ok = klist_ok(svc_user.user, user_krb5)
            results["ok" if ok else "fail"] += 1

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        rows = ticketd.wait_for(lambda: _renewed(ticketd, svc_user.uid, 3), 30, "three renewals")
    finally:
        stop.set()
        thread.join()
    assert results["fail"] == 0, results
    assert results["ok"] > 20, results
    (row,) = rows
    assert row["endtime"] > first["endtime"]
    assert row["ccache"] != first["ccache"]  # renewed into a new cache, then switched
    # The renewed cache is still the user's: every key owned by the uid.
    keys = persistent_caches(svc_user.uid)[row["ccache"].rsplit(":", 1)[-1]]
    assert {owner for owner, _ in keys} == {svc_user.uid}
    holder.close()
    ticketd.wait_for(lambda: persistent_caches(svc_user.uid) == {}, 5, "caches cleared at logout")


def test_kdc_down_during_renewal_retries_then_renews(ticketd, svc_user, realm, user_krb5):
    first = svc_user.auth(ticketd)
    holder = SessionHolder(ticketd, svc_user.user)
    realm.stop_kdc()
    try:
        # Due at 20% of 30 s; with the KDC down it must retry with back-off instead of giving up.
        ticketd.wait_for(lambda: ticketd.log().count("no KDC answered (attempt") >= 2, 20,
                         "two failed renewal attempts")
        assert _tickets(ticketd, svc_user.uid)[0]["renewed"] == 0
    finally:
        realm.start_kdc()
    rows = ticketd.wait_for(lambda: _renewed(ticketd, svc_user.uid, 1), 15, "a renewal once the KDC is back")
    assert time.time() < first["endtime"], "renewed only after the first ticket had expired"
    assert rows[0]["endtime"] > first["endtime"]
    assert klist_ok(svc_user.user, user_krb5)
    assert "retry in" in ticketd.log()
    holder.close()


def test_kill9_and_restart_keeps_sessions(realm, tmp_path, user_krb5):
    """After kill -9 the restarted service tracks, renews and clears the sessions as before."""
    require_root()
    directory = td.public_tmpdir("pkd-restart-")
    daemon = TicketD(directory, realm.env, **TEST_CONFIG)
    user = SvcUser(realm)
    daemon.start()
    try:
        assert user.auth(daemon)["ok"]
        stays = SessionHolder(daemon, user.user)
        dies = SessionHolder(daemon, user.user)
        assert dies.opened["sessions"] == 2
        daemon.kill9()
        dies.kill()  # this login ends while the service is down: no close reaches anyone
        daemon.start()
        status = daemon.request({"op": "status"})
        assert status["service"]["sessions"] == 1, status
        assert [s["pid"] for s in status["sessions"]] == [stays.pid]
        assert "died while the service was down" in daemon.log()
        # The restarted service renews the ticket it never acquired itself...
        daemon.wait_for(lambda: _renewed(daemon, user.uid, 1), 20, "a renewal after the restart")
        assert klist_ok(user.user, user_krb5)
        # ...and clears it at the last logout.
        reply = stays.close()
        assert reply["ok"] and reply["sessions"] == 0 and reply["cleared"], reply
        daemon.wait_for(lambda: persistent_caches(user.uid) == {}, 5, "caches cleared after restart")
    finally:
        daemon.stop()
        print(daemon.log())
        user.cleanup()
        shutil.rmtree(directory, ignore_errors=True)


def test_users_own_kinit_is_adopted_and_renewed(ticketd, svc_user, user_krb5):
    holder = SessionHolder(ticketd, svc_user.user)  # logged in without a ticket from the service
    kinit = svc_user.user.run(["kinit", "-r", "5m", svc_user.principal], input=svc_user.password + "\n",
                              env=user_krb5)
    assert kinit.returncode == 0, kinit.stderr
    rows = ticketd.wait_for(lambda: _renewed(ticketd, svc_user.uid, 1), 25, "the user's cache renewed")
    assert [r["origin"] for r in rows] == ["adopted"]
    assert klist_ok(svc_user.user, user_krb5)
    # Not the service's cache: clear_on_logout=own leaves it in place at the last logout.
    reply = holder.close()
    assert reply["cleared"] == []
    assert klist_ok(svc_user.user, user_krb5)
    assert _tickets(ticketd, svc_user.uid) == []


def test_not_renewable_ticket_is_logged_once(ticketd, realm, user_krb5):
    require_root()
    user = SvcUser(realm, maxrenew="0s")
    try:
        reply = user.auth(ticketd)
        assert reply["ok"], reply
        holder = SessionHolder(ticketd, user.user)
        ticketd.wait_for(lambda: "will not be renewed" in ticketd.log(), 5, "the not-renewable warning")
        time.sleep(7)  # past the point a renewal would have been due
        assert ticketd.log().count("will not be renewed") == 1
        assert _tickets(ticketd, user.uid)[0]["renewed"] == 0
        holder.close()
    finally:
        user.cleanup()


def test_keytab_entry_is_kept_fresh_as_the_user(realm, svc_user, user_krb5):
    """A [[keytab]] principal's TGT lands in the uid's persistent collection, owned by the uid, and is
    re-acquired before it expires (like k5start -f)."""
    directory = td.public_tmpdir("pkd-keytab-")
    service = realm.add_principal(f"svc-{svc_user.name}/localhost", None, maxlife="30s")
    keytab = realm.keytab(service, directory / "svc.keytab")
    entry = {"principal": service, "keytab": str(keytab), "uid": svc_user.uid}
    daemon = TicketD(directory, realm.env, **TEST_CONFIG, keytab=[entry])
    daemon.start()
    try:
        rows = daemon.wait_for(lambda: _renewed(daemon, svc_user.uid, 2), 25, "two re-acquisitions")
        assert rows[0]["principal"] == service and rows[0]["origin"] == "keytab"
        caches = persistent_caches(svc_user.uid)
        assert caches and all(owner == svc_user.uid for keys in caches.values() for owner, _ in keys)
        out = svc_user.user.run(["klist"], env=user_krb5)
        assert service in out.stdout, out
    finally:
        daemon.stop()
        print(daemon.log())
        shutil.rmtree(directory, ignore_errors=True)


def test_keytab_entries_and_a_login_of_one_uid_keep_each_others_tickets(realm, svc_user):
    """Two [[keytab]] principals kept in one uid's collection, and a password login of that uid: each
    acquisition retires only its own earlier cache, never another one the service tracks (a keytab
    entry's cache was destroyed by the next entry's, or by the login's, after the grace)."""
    directory = td.public_tmpdir("pkd-keytabs-")
    services = [realm.add_principal(f"svc{i}-{svc_user.name}/localhost", None, maxlife="30s") for i in (1, 2)]
    entries = [{"principal": s, "keytab": str(realm.keytab(s, directory / f"svc{i}.keytab")),
                "uid": svc_user.uid} for i, s in enumerate(services)]
    daemon = TicketD(directory, realm.env, **{**TEST_CONFIG, "renew_grace": 0.2}, keytab=entries)
    daemon.start()
    try:
        daemon.wait_for(lambda: {t["principal"] for t in _tickets(daemon, svc_user.uid)} == set(services), 15,
                        "both keytab entries' first TGT")
        assert svc_user.auth(daemon)["ok"]
        time.sleep(1.0)  # past the grace of whatever the login retired
        from pam_keyinit_py.tickets import ccache  # krb5_cccol_cursor as the user (klist -l cuts names)

        def held() -> list[str]:
            caches = ccache.list_caches(svc_user.uid, krb5_config=str(realm.krb5_conf))
            return sorted(i.principal for i in caches)

        everyone = sorted([*services, svc_user.principal])
        assert held() == everyone, (held(), daemon.log())
        assert sorted(t["principal"] for t in _tickets(daemon, svc_user.uid)) == everyone
        # Each entry's next TGT replaces its own earlier cache, whichever cache is primary then
        # (the earlier generation was left behind, untracked, until its ticket ended).
        daemon.wait_for(lambda: all(t["renewed"] >= 1 for t in _tickets(daemon, svc_user.uid)
                                    if t["origin"] == "keytab"), 20, "each keytab entry's next TGT")
        time.sleep(1.0)
        assert held() == everyone, (held(), daemon.log())
    finally:
        daemon.stop()
        shutil.rmtree(directory, ignore_errors=True)


def test_user_cli_status_renew_tickets(ticketd, svc_user):
    svc_user.auth(ticketd)
    holder = SessionHolder(ticketd, svc_user.user)
    keyinit = str(VENV_BIN / "keyinit")
    out = svc_user.user.run([keyinit, "status", "--socket", ticketd.socket])
    assert out.returncode == 0, out.stderr
    assert "keyinit-ticketd: running" in out.stdout and svc_user.principal in out.stdout
    assert f"(uid {svc_user.uid})" in out.stdout
    out = svc_user.user.run([keyinit, "renew", "--socket", ticketd.socket])
    assert out.returncode == 0, out.stderr
    assert _tickets(ticketd, svc_user.uid)[0]["renewed"] >= 1
    out = svc_user.user.run([keyinit, "tickets", "--socket", ticketd.socket, "--uid", "0"])
    assert out.returncode == 1 and "may not" in out.stderr
    holder.close()
    out = subprocess.run([keyinit, "status", "--socket", ticketd.socket + ".absent"], capture_output=True,
                         text=True)
    assert out.returncode == 3 and "not running" in out.stdout


def test_a_silent_kdc_during_renewal_does_not_freeze_the_service(ticketd, svc_user, realm):
    """A KDC that accepts connections and never answers (here: SIGSTOPped) holds one renewal;
    libkrb5 has no timeout for it, so it must wait without the GIL: status, sessions and other
    requests keep being answered meanwhile, and the renewal completes once the KDC answers."""
    import os
    import signal

    assert svc_user.auth(ticketd)["ok"]
    holder = SessionHolder(ticketd, svc_user.user)
    kdc_pid = int((realm.dir / "krb5kdc.pid").read_text())
    renewed: dict = {}
    os.kill(kdc_pid, signal.SIGSTOP)
    try:
        worker = threading.Thread(
            target=lambda: renewed.update(ticketd.request({"op": "renew", "uid": svc_user.uid}, timeout=60)))
        worker.start()
        time.sleep(0.5)  # the renewal is now waiting on the frozen KDC
        assert worker.is_alive(), renewed
        for _ in range(3):
            t0 = time.monotonic()
            status = ticketd.request({"op": "status"}, timeout=5)
            assert status["ok"], status
            assert time.monotonic() - t0 < 1.0, "the service froze while a renewal waited on the KDC"
    finally:
        os.kill(kdc_pid, signal.SIGCONT)
    worker.join(60)
    assert renewed.get("ok"), renewed
    assert _renewed(ticketd, svc_user.uid, 1)
    holder.close()
