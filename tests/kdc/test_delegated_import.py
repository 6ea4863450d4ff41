"""ccache.import_file and the service's ``open`` with a delegated cache: real KDC, real FILE caches made
by kinit as the user, real keyrings.

The service runs as root and is handed a file name by the hook, and the user controls /tmp:
what it copies must be the user's own cache (regular file, owned by the uid, not writable by
others, not a symlink), read as the user, and the copy's keys must be owned by the uid.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pam_keyinit_py.tickets import ccache, errors
from tests.kdc import ticketd as td
from tests.kdc.ticketd import klist_ok, persistent_caches

svc_user, ticketd, user_krb5 = td.svc_user, td.ticketd, td.user_krb5


@pytest.fixture(autouse=True)
def _flush_deferred():
    yield
    ccache.flush_deferred()


@pytest.fixture
def tmp_names(svc_user) -> Iterator[list[str]]:  # noqa: ANN001
    """Paths under /tmp the test creates (removed afterwards)."""
    made: list[str] = []
    yield made
    for path in made:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _name(uid: int, made: list[str]) -> str:
    path = f"/tmp/krb5cc_{uid}_{secrets.token_hex(5)}"
    made.append(path)
    return path


def _kinit_file(user, krb5_env: dict[str, str], path: str) -> None:  # noqa: ANN001
    """kinit as the user into FILE:path (the user owns the file, mode 0600, as sshd writes it)."""
    res = user.user.run(["kinit", user.principal], input=user.password + "\n",
                        env={**krb5_env, "KRB5CCNAME": f"FILE:{path}"})
    assert res.returncode == 0, res.stderr
    assert os.stat(path).st_uid == user.uid


def test_import_copies_the_users_file_into_the_keyring_as_the_user(svc_user, user_krb5, tmp_names):
    path = _name(svc_user.uid, tmp_names)
    _kinit_file(svc_user, user_krb5, path)
    info = ccache.import_file(f"FILE:{path}", svc_user.uid, svc_user.gid,
                              krb5_config=user_krb5["KRB5_CONFIG"])
    assert info.ccache.startswith(f"KEYRING:persistent:{svc_user.uid}:{ccache.SERVICE_PREFIX}")
    assert info.primary and info.principal == svc_user.principal and info.endtime > 0
    caches = persistent_caches(svc_user.uid)
    assert caches and all(owner == svc_user.uid for keys in caches.values() for owner, _ in keys), caches
    # Copied, not moved: the session may still name the file (a hook that stopped waiting).
    assert os.path.exists(path)
    assert klist_ok(svc_user.user, user_krb5)


def test_import_refuses_a_symlink_to_another_users_cache(svc_user, user_krb5, tmp_names, tmp_path):
    # Root's own cache, in a directory the user cannot enter: what an attacker would want copied.
    secret_dir = tmp_path / "root-only"
    secret_dir.mkdir(mode=0o700)
    victim = secret_dir / "cc"
    res = subprocess.run(["kinit", svc_user.principal], input=svc_user.password + "\n",
                         env={**user_krb5, "KRB5CCNAME": f"FILE:{victim}", "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    os.chmod(tmp_path, 0o755)
    link = _name(svc_user.uid, tmp_names)
    made = svc_user.user.run(["ln", "-s", str(victim), link])  # the user makes the link in /tmp
    assert made.returncode == 0, made.stderr
    with pytest.raises(errors.TicketError) as caught:
        ccache.import_file(f"FILE:{link}", svc_user.uid, svc_user.gid, krb5_config=user_krb5["KRB5_CONFIG"])
    assert "Too many levels of symbolic links" in str(caught.value)
    assert persistent_caches(svc_user.uid) == {}
    assert os.path.islink(link) and victim.exists()


def test_import_refuses_a_file_owned_by_another_uid(svc_user, user_krb5, tmp_names):
    path = _name(svc_user.uid, tmp_names)
    _kinit_file(svc_user, user_krb5, path)
    os.chown(path, 0, 0)  # what a cache of root's (or anyone's) under the user's name looks like
    with pytest.raises(errors.TicketError, match="Permission denied"):  # read as the user: 0600
        ccache.import_file(f"FILE:{path}", svc_user.uid, svc_user.gid, krb5_config=user_krb5["KRB5_CONFIG"])
    os.chmod(path, 0o644)  # readable by the user: only the owner check stands in the way
    with pytest.raises(errors.TicketError, match="owned by uid 0"):
        ccache.import_file(f"FILE:{path}", svc_user.uid, svc_user.gid, krb5_config=user_krb5["KRB5_CONFIG"])
    assert persistent_caches(svc_user.uid) == {}
    assert os.path.exists(path)


def test_import_refuses_a_file_others_may_write(svc_user, user_krb5, tmp_names):
    path = _name(svc_user.uid, tmp_names)
    _kinit_file(svc_user, user_krb5, path)
    os.chmod(path, 0o622)
    with pytest.raises(errors.TicketError, match="writable by group or others"):
        ccache.import_file(f"FILE:{path}", svc_user.uid, svc_user.gid, krb5_config=user_krb5["KRB5_CONFIG"])
    assert persistent_caches(svc_user.uid) == {}
    assert os.path.exists(path)


def test_import_of_a_missing_file_is_cache_not_found(svc_user, user_krb5, tmp_names):
    with pytest.raises(errors.CacheNotFound):
        ccache.import_file(f"FILE:{_name(svc_user.uid, tmp_names)}", svc_user.uid, svc_user.gid,
                           krb5_config=user_krb5["KRB5_CONFIG"])


def _open(daemon, user, ccache_name: str) -> dict:  # noqa: ANN001
    return daemon.request({"op": "open", "user": user.name, "uid": user.uid, "gid": user.gid,
                           "ccache": ccache_name})


def test_open_with_a_delegated_cache_tracks_it_and_clears_it_at_the_last_close(ticketd, svc_user, user_krb5,
                                                                                tmp_names):
    path = _name(svc_user.uid, tmp_names)
    _kinit_file(svc_user, user_krb5, path)
    opened = _open(ticketd, svc_user, f"FILE:{path}")
    assert opened["ok"] and opened["krb5ccname"] == f"KEYRING:persistent:{svc_user.uid}", opened
    assert opened["ccache"].startswith(f"KEYRING:persistent:{svc_user.uid}:")
    assert os.path.exists(path)  # the hook removes it once it has this reply (tests below)
    rows = ticketd.request({"op": "tickets", "uid": svc_user.uid})["tickets"]
    assert [(r["origin"], r["ccache"]) for r in rows] == [("delegated", opened["ccache"])]
    closed = ticketd.request({"op": "close", "uid": svc_user.uid, "sid": opened["sid"]})
    assert closed["ok"] and closed["cleared"] == [opened["ccache"]], closed
    assert persistent_caches(svc_user.uid) == {}


def test_open_leaves_a_cache_that_is_not_a_per_login_one_alone(ticketd, svc_user, user_krb5):
    # A FILE cache the user keeps elsewhere (say KRB5CCNAME from ~/.pam_environment): not moved, not removed.
    own = Path(svc_user.user.home) / "my-cache"
    _kinit_file(svc_user, user_krb5, str(own))
    opened = _open(ticketd, svc_user, f"FILE:{own}")
    try:
        assert opened["ok"] and "not a per-login cache" in opened["delegation_error"], opened
        assert "krb5ccname" not in opened and own.exists()
        assert ticketd.request({"op": "tickets", "uid": svc_user.uid})["tickets"] == []
    finally:
        ticketd.request({"op": "close", "uid": svc_user.uid, "sid": opened["sid"]})


def test_a_delegated_ticket_survives_a_kill_9_of_the_service(ticketd, svc_user, user_krb5, tmp_names):
    path = _name(svc_user.uid, tmp_names)
    _kinit_file(svc_user, user_krb5, path)
    opened = _open(ticketd, svc_user, f"FILE:{path}")
    assert opened["ok"] and "ccache" in opened, opened
    ticketd.kill9()
    ticketd.start()
    rows = ticketd.request({"op": "tickets", "uid": svc_user.uid})["tickets"]
    assert [r["origin"] for r in rows] == ["delegated"], rows
    closed = ticketd.request({"op": "close", "uid": svc_user.uid, "sid": opened["sid"]})
    assert closed["ok"] and len(closed["cleared"]) == 1, closed
    assert persistent_caches(svc_user.uid) == {}


# ------------------------------------------------------------------ the hook's side, through real libpam

#: A pam_python module that stands in for sshd around the hook's open_session (argv: step, path...).
#: ``hand-over``: what sshd does before pam_open_session, KRB5CCNAME=FILE:<path> in the PAM
#: environment; with ``locked`` it also holds a POSIX write lock on the file, which keeps the
#: service's libkrb5 read of it (a shared lock, krb5_lock_file) waiting until it is released.
#: ``report``: after the hook, write the session's KRB5CCNAME to <out>, release the lock, and keep
#: the session open until <go> exists.
SSHD_STANDIN = """import fcntl, os, time

def pam_sm_open_session(pamh, flags, argv):
    step, path = argv[1], argv[2]
    if step == "hand-over":
        pamh.env["KRB5CCNAME"] = "FILE:" + path
        if argv[3:] == ["locked"]:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)  # kept open: the lock lives while pamtester does
            fcntl.lockf(fd, fcntl.LOCK_EX)
        return pamh.PAM_SUCCESS
    out, go = argv[3], argv[4]
    try:
        name = pamh.env["KRB5CCNAME"]
    except KeyError:
        name = ""
    with open(out + ".new", "w") as f:
        f.write(name)
    os.rename(out + ".new", out)
    if argv[5:] == ["locked"]:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        fcntl.lockf(fd, fcntl.LOCK_UN)  # POSIX locks are the process's: this drops the hand-over's
        os.close(fd)
    deadline = time.monotonic() + 60
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.05)
    return pamh.PAM_SUCCESS

def pam_sm_close_session(pamh, flags, argv):
    return pamh.PAM_SUCCESS
"""

#: Run as the user: what the cache a name resolves to holds (krb5_cc_resolve, krb5_cc_get_principal,
#: the cursor), as a program of the session would read it.
READ_CACHE = """import json, sys, krb5
ctx = krb5.init_context()
cc = krb5.cc_resolve(ctx, sys.argv[1].encode())
name = lambda p: krb5.unparse_name_flags(ctx, p).decode()
print(json.dumps({"client": name(krb5.cc_get_principal(ctx, cc)), "servers": [name(c.server) for c in cc]}))
"""


def _cache_holds_tgt(user, krb5_env: dict[str, str], name: str) -> bool:  # noqa: ANN001
    """Whether ``name``, read as the user through pykrb5, is the user's cache with a TGT of the realm."""
    from tests.conftest import VENV_BIN

    res = user.user.run([str(VENV_BIN / "python"), "-c", READ_CACHE, name], env=krb5_env)
    assert res.returncode == 0, f"{name} unreadable by {user.name}: {res.stderr}"
    seen = json.loads(res.stdout)
    realm = user.principal.rpartition("@")[2]
    return seen["client"] == user.principal and f"krbtgt/{realm}@{realm}" in seen["servers"]


def _open_through_the_hook(pamwrap, daemon, user, path: str, locked: bool, tmp_path: Path,  # noqa: ANN001
                           ) -> tuple[subprocess.Popen[str], str, Path]:
    """pamtester open_session of [sshd stand-in, the hook with tickets, report] as ``user``; returns
    the running pamtester, the session's KRB5CCNAME once reported, and the file that lets it end."""
    module = pamwrap.dir / "sshd_standin.py"
    module.write_text(SSHD_STANDIN)
    module.chmod(0o644)
    out, go = tmp_path / "krb5ccname", tmp_path / "go"
    lock = " locked" if locked else ""
    from pam_keyinit_py.lab.pamwrap import PAM_PYTHON, PAMTESTER

    service = pamwrap.service(f"pkd-deleg-{secrets.token_hex(4)}", [
        f"session required {PAM_PYTHON} {module} hand-over {path}{lock}",
        pamwrap.hook_line("session", "required", f"force revoke tickets socket={daemon.socket}"),
        f"session required {PAM_PYTHON} {module} report {path} {out} {go}{lock}",
    ])
    # PAM_WRAPPER_DEBUGLEVEL 1: pam_wrapper copies the hook's LOG_WARNING lines to stderr too.
    proc = subprocess.Popen([PAMTESTER, "-v", service, user.name, "open_session"],
                            env={**pamwrap.env(), "PAM_WRAPPER_DEBUGLEVEL": "1"},
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        daemon.wait_for(lambda: out.exists() or proc.poll() is not None, 30, "the session's KRB5CCNAME")
        assert out.exists(), proc.communicate()
        return proc, out.read_text(), go
    except BaseException:
        go.touch()
        proc.kill()
        proc.wait(10)
        raise


def _end(proc: subprocess.Popen[str], go: Path) -> str:
    go.touch()
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stdout + stderr
    return stderr


def test_a_hook_that_gets_the_reply_points_the_session_at_the_keyring_and_removes_the_file(
        pamwrap, ticketd, svc_user, user_krb5, tmp_names, tmp_path):
    path = _name(svc_user.uid, tmp_names)
    _kinit_file(svc_user, user_krb5, path)
    proc, krb5ccname, go = _open_through_the_hook(pamwrap, ticketd, svc_user, path, False, tmp_path)
    try:
        assert krb5ccname == f"KEYRING:persistent:{svc_user.uid}", krb5ccname + ticketd.log()
        assert _cache_holds_tgt(svc_user, user_krb5, krb5ccname)
        assert not os.path.exists(path)  # moved: no second copy of the TGT left in /tmp
    finally:
        _end(proc, go)


def test_a_hook_that_times_out_leaves_the_session_a_cache_with_the_delegated_tgt(
        pamwrap, ticketd, svc_user, user_krb5, tmp_names, tmp_path):
    # The service's read of the file waits on a lock that is held until the hook has given up
    # (SESSION_TIMEOUT): the reply comes after the hook stopped listening, whatever the timings.
    path = _name(svc_user.uid, tmp_names)
    _kinit_file(svc_user, user_krb5, path)
    proc, krb5ccname, go = _open_through_the_hook(pamwrap, ticketd, svc_user, path, True, tmp_path)
    try:
        # The import goes on after the lock is released: wait until it is done.
        ticketd.wait_for(lambda: any(r["origin"] == "delegated" for r in
                                     ticketd.request({"op": "tickets", "uid": svc_user.uid})["tickets"]),
                         30, "the delegated import")
        assert krb5ccname, "the session has no KRB5CCNAME"
        assert _cache_holds_tgt(svc_user, user_krb5, krb5ccname), (krb5ccname, ticketd.log())
    finally:
        stderr = _end(proc, go)
    assert "timed out" in stderr, stderr  # what this test is about: the hook did give up
