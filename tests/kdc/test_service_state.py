"""Durable acknowledgements: a session is acknowledged only once the state file holds it.

The state directory is a real tmpfs mounted by the test (64 KiB), filled up or remounted
read-only while a real keyinit-ticketd runs; a kill -9 then shows that every session a client
was told about survives, and none it was not told about is invented.  The temporary file's
name and open flags are tested against planted symlinks.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from pam_keyinit_py import protocol as P
from pam_keyinit_py.tickets import state as statefile
from tests.conftest import VENV_BIN, require_root
from tests.kdc import ticketd as td
from tests.kdc.ticketd import SessionHolder, TicketD, public_tmpdir

svc_user, user_krb5 = td.svc_user, td.user_krb5


@pytest.fixture
def small_tmpfs():
    """A 64 KiB tmpfs mounted for the test (unmounted and removed after it)."""
    require_root()
    mnt = public_tmpdir("pkd-statefs-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "pkd-statefs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
        os.rmdir(mnt)


def _fill(directory: Path) -> Path:
    """Write a file until the filesystem says ENOSPC (unbuffered: nothing is left to flush)."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    return filler


def _state(daemon: TicketD) -> dict:
    return daemon.request({"op": "status"})["service"]["state_file"]


def _temp_files(directory: Path) -> list[str]:
    return [n for n in os.listdir(directory) if n.endswith(".tmp")]


def test_open_is_not_acknowledged_when_the_state_cannot_be_written(realm, svc_user, small_tmpfs):
    """Full filesystem: open answers state_not_saved, status and the log say so, no .tmp is left;
    kill -9 while still full: after a restart the acknowledged session is back and the refused
    one is not.  Freed space: the writer's retry succeeds on its own.  Read-only: the same."""
    directory = public_tmpdir("pkd-ticketd-")
    daemon = TicketD(directory, realm.env, **td.TEST_CONFIG, state_file=str(small_tmpfs / "state.json"))
    daemon.start()
    holders: list[SessionHolder] = []
    try:
        holders.append(SessionHolder(daemon, svc_user.user))
        acked = holders[0].opened
        assert acked["ok"], acked
        filler = _fill(small_tmpfs)
        holders.append(SessionHolder(daemon, svc_user.user))
        refused = holders[1].opened
        assert not refused["ok"] and refused["code"] == P.STATE_NOT_SAVED, refused
        state = _state(daemon)
        assert state["saved"] is False and state["error"] == os.strerror(errno.ENOSPC), state
        assert state["unsaved_changes"] >= 1 and state["failed_attempts"] >= 1, state
        assert "cannot write state file" in daemon.log()
        cli = subprocess.run([str(VENV_BIN / "keyinit"), "status", "--socket", daemon.socket],
                             capture_output=True, text=True)
        assert cli.returncode == 0 and "STATE FILE NOT WRITTEN" in cli.stdout, (cli.stdout, cli.stderr)
        assert _temp_files(small_tmpfs) == []  # the partial temporary file was removed
        daemon.kill9()
        filler.unlink()
        daemon.start()
        status = daemon.request({"op": "status"})
        assert [s["sid"] for s in status["sessions"]] == [acked["sid"]], status
        assert _state(daemon)["saved"] is True

        # Read-only: refused again; writable again: the writer recovers by itself.
        subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
        holders.append(SessionHolder(daemon, svc_user.user))
        assert holders[2].opened.get("code") == P.STATE_NOT_SAVED, holders[2].opened
        assert _state(daemon)["error"] == os.strerror(errno.EROFS)
        subprocess.run(["mount", "-o", "remount,rw", str(small_tmpfs)], check=True)
        daemon.wait_for(lambda: _state(daemon)["saved"], 15, "the writer to retry and succeed")
        assert "written again after" in daemon.log()
        holders.append(SessionHolder(daemon, svc_user.user))
        assert holders[3].opened["ok"], holders[3].opened
        daemon.kill9()
        daemon.start()
        # The session the client was refused on (read-only) was saved by the retry, with its opener
        # alive: it is tracked (and ends when its opener does).  The acknowledged ones are there.
        sids = {s["sid"] for s in daemon.request({"op": "status"})["sessions"]}
        assert {acked["sid"], holders[3].opened["sid"]} <= sids, sids
        assert refused.get("sid") is None
    finally:
        for h in holders:
            h.kill()
        daemon.stop()
        print(daemon.log())
        import shutil

        shutil.rmtree(directory, ignore_errors=True)


def test_temp_file_does_not_follow_a_planted_symlink(tmp_path, monkeypatch):
    """A symlink at the temporary name is refused (O_EXCL|O_NOFOLLOW), not written through; the
    old predictable name (.state.json.<pid>.tmp) is not used; leftovers are unlinked, not followed."""
    victim = tmp_path / "victim"
    victim.write_text("precious")
    target = tmp_path / "state.json"
    old_name = tmp_path / f".state.json.{os.getpid()}.tmp"
    old_name.symlink_to(victim)
    statefile.save(str(target), {"tickets": []})
    assert victim.read_text() == "precious"
    assert statefile.load(str(target))["tickets"] == []

    monkeypatch.setattr(statefile, "_suffix", lambda: "guessed")
    planted = tmp_path / ".state.json.guessed.tmp"
    planted.symlink_to(victim)
    with pytest.raises(FileExistsError):
        statefile.save(str(target), {"tickets": [1]})
    assert victim.read_text() == "precious"
    assert statefile.load(str(target))["tickets"] == []  # the old state stays whole

    assert statefile.remove_leftovers(str(target)) == 2
    assert not planted.is_symlink() and not old_name.is_symlink()
    assert victim.read_text() == "precious" and target.exists()


def test_kill9_during_the_renewal_grace_leaves_one_cache_per_user(realm, user_krb5):
    """A renewal retires each user's old cache with a grace period (here 120 s); kill -9 inside it;
    after the restart each user has exactly one cache, the new one, tracked once and renewed once
    (the old daemon adopted the retired caches as extra tickets and renewed both)."""
    require_root()
    from tests.kdc.ticketd import SvcUser, klist_ok, persistent_caches

    directory = public_tmpdir("pkd-grace-")
    daemon = TicketD(directory, realm.env, **{**td.TEST_CONFIG, "renew_grace": 120})
    # 10-minute tickets: no scheduled renewal (at 0.2 of the life) interferes with the test's own.
    users = [SvcUser(realm, maxlife="10m") for _ in range(2)]
    holders: list[SessionHolder] = []
    daemon.start()
    try:
        for u in users:
            assert u.auth(daemon)["ok"]
            holders.append(SessionHolder(daemon, u.user))
            assert holders[-1].opened["ok"]
        before = {u.uid: set(persistent_caches(u.uid)) for u in users}
        assert all(len(c) == 1 for c in before.values()), before
        renewed = daemon.request({"op": "renew"})
        assert renewed["ok"] and renewed["errors"] == [], renewed
        during = {u.uid: set(persistent_caches(u.uid)) for u in users}
        assert all(len(c) == 2 and before[uid] < c for uid, c in during.items()), during  # in grace
        daemon.kill9()
        daemon.start()
        after = {u.uid: set(persistent_caches(u.uid)) for u in users}
        assert after == {uid: during[uid] - before[uid] for uid in during}, (before, during, after)
        assert "retired by a renewal before the restart" in daemon.log()
        tracked = daemon.request({"op": "tickets"})["tickets"]
        assert sorted(t["uid"] for t in tracked) == sorted(u.uid for u in users), tracked
        for u in users:
            # `renew` for one uid first scans the collection (adoption), then renews what is tracked.
            reply = daemon.request({"op": "renew", "uid": u.uid})
            assert reply["ok"] and reply["errors"] == [] and len(reply["tickets"]) == 1, reply
            assert klist_ok(u.user, user_krb5)
    finally:
        for h in holders:
            h.kill()
        daemon.stop()
        print(daemon.log())
        for u in users:
            u.cleanup()
        import shutil

        shutil.rmtree(directory, ignore_errors=True)


def test_the_hook_maps_state_not_saved_to_authinfo_unavail(pamwrap, realm, svc_user, small_tmpfs):
    """Through real libpam (pamtester, pam_python): a login whose TGT the service got but could
    not record is not reported as a success: PAM_AUTHINFO_UNAVAIL, as with the KDC down."""
    from tests.kdc.test_service_pam import STRERROR, _pamtester, _service

    directory = public_tmpdir("pkd-ticketd-")
    daemon = TicketD(directory, realm.env, **td.TEST_CONFIG, state_file=str(small_tmpfs / "state.json"))
    daemon.start()
    try:
        _fill(small_tmpfs)
        service = _service(pamwrap, "pkd-unsaved", daemon.socket, "/dev/null")
        res, _ = _pamtester(pamwrap, service, svc_user.name, svc_user.password, "authenticate")
        assert res.returncode != 0 and STRERROR["authinfo_unavail"] in res.stderr, res.stderr
        assert f"answered {P.STATE_NOT_SAVED}" in daemon.log()
        assert svc_user.password not in daemon.log()
    finally:
        daemon.stop()
        print(daemon.log())
        import shutil

        shutil.rmtree(directory, ignore_errors=True)
