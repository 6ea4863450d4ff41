"""Helpers for the ticket-service tests: run the real ``keyinit-ticketd`` as a subprocess.

The daemon is started from ``.venv/bin/keyinit-ticketd --config <tmp toml>`` with its socket and
state file in a temporary directory and ``KRB5_CONFIG`` pointing at the test realm.  Readiness is
the daemon's own sd_notify ``READY=1`` datagram, received on a socket the test binds as
$NOTIFY_SOCKET, as systemd would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pam_keyinit_py import keyutils
from pam_keyinit_py.lab import ticketd as lab_ticketd
from tests.conftest import VENV_BIN, TestUser


class TicketD(lab_ticketd.TicketD):
    """lab's daemon runner (DEBUG logging) plus what the tests need: kill -9, peers of other uids."""

    def __init__(self, directory: Path, krb5_env: dict[str, str] | None = None, **config: Any) -> None:
        super().__init__(directory, krb5_env, **{"log_level": "DEBUG", **config})

    def start(self, timeout: float = 15.0) -> float:
        """Start and wait for READY=1; a daemon that never gets ready fails the test with its log."""
        try:
            return super().start(timeout)
        except RuntimeError as exc:
            raise AssertionError(str(exc)) from None

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def request_as(self, user: TestUser, message: dict[str, Any]) -> dict[str, Any]:
        """Send a request from a process running as ``user`` (SO_PEERCRED then says that uid)."""
        # The message goes on stdin: an auth message holds a password, which argv would expose.
        code = ("import json,sys; from pam_keyinit_py import protocol as P; "
                "print(json.dumps(P.request(json.loads(sys.stdin.read()), sys.argv[1])))")
        proc = user.run([str(VENV_BIN / "python"), "-c", code, self.socket], input=json.dumps(message))
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    def wait_for(self, predicate, timeout: float, what: str, interval: float = 0.2) -> Any:  # noqa: ANN001
        """Poll ``predicate`` (the test's side, not the daemon's) until truthy or fail with the log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}\n"
                             f"--- daemon log ---\n{self.log()}")


def persistent_caches(uid: int) -> dict[str, list[tuple[int, str]]]:
    """The MIT keyring ccaches in ``uid``'s persistent keyring, read from the kernel.

    Returns {ccache keyring description: [(owner uid, key description), ...]} for every key
    in each ``krb_ccache_*`` keyring under ``_persistent.<uid>`` -> ``_krb``.
    """
    out: dict[str, list[tuple[int, str]]] = {}
    try:
        ring = keyutils.get_persistent(uid, keyutils.KEY_SPEC_THREAD_KEYRING)
    except OSError:
        return out
    for krb in _children(ring, b"keyring", b"_krb"):
        for cache_id in keyutils.keyring_ids(krb):
            # A cache being destroyed at this moment (revoked, then unlinked) is not a cache.
            try:
                ktype, kuid, _gid, _perm, desc = _describe(cache_id)
                if ktype != "keyring":
                    continue
                keys = []
                for key in keyutils.keyring_ids(cache_id):
                    _t, owner, _g, _p, kdesc = _describe(key)
                    keys.append((owner, kdesc))
            except OSError:
                continue
            out[desc] = [(kuid, "<keyring>"), *keys]
    return out


def _describe(key: int) -> tuple[str, int, int, str, str]:
    text = keyutils.describe(key).decode()
    ktype, uid, gid, perm, desc = text.split(";", 4)
    return ktype, int(uid), int(gid), perm, desc


def _children(ring: int, ktype: bytes, desc: bytes) -> list[int]:
    found = []
    for key in keyutils.keyring_ids(ring):
        try:
            t, _u, _g, _p, d = _describe(key)
        except OSError:
            continue
        if t.encode() == ktype and d.encode() == desc:
            found.append(key)
    return found


def klist_ok(user: TestUser, env: dict[str, str]) -> bool:
    """``klist -s`` as the user against the realm's krb5.conf (default ccache KEYRING:persistent)."""
    return user.run(["klist", "-s"], env=env).returncode == 0


# ------------------------------------------------------------------ fixtures and session holders

HOLDER = r"""
import json, sys
from pam_keyinit_py import protocol as P
sock, msg = sys.argv[1], json.loads(sys.argv[2])
print(json.dumps(P.request(msg, sock)), flush=True)
for line in sys.stdin:
    if line.strip() == "close":
        print(json.dumps(P.request({"op": "close", "uid": msg["uid"]}, sock)), flush=True)
        break
"""


class SessionHolder:
    """A separate root process that opens a session (as sshd's monitor would) and stays alive.

    Its pid is the session's anchor (SO_PEERCRED): ``close()`` sends close_session from it,
    ``kill()`` makes it die without one, which the service must notice and reap.
    """

    def __init__(self, daemon: TicketD, user: TestUser) -> None:
        msg = {"op": "open", "user": user.name, "uid": user.uid, "gid": user.gid}
        self.proc = subprocess.Popen([str(VENV_BIN / "python"), "-c", HOLDER, daemon.socket, json.dumps(msg)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.opened = json.loads(self.proc.stdout.readline())

    @property
    def pid(self) -> int:
        return self.proc.pid

    def close(self) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("close\n")
        self.proc.stdin.flush()
        reply = json.loads(self.proc.stdout.readline())
        self.proc.wait(10)
        return reply

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def readable_krb5_env(realm_env: dict[str, str], directory: Path) -> dict[str, str]:
    """A copy of the realm's krb5.conf that non-root users can read (the realm dir is 0700)."""
    import shutil

    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o755)
    conf = directory / "krb5.conf"
    shutil.copy(realm_env["KRB5_CONFIG"], conf)
    os.chmod(conf, 0o644)
    return {"KRB5_CONFIG": str(conf)}


def public_tmpdir(prefix: str) -> Path:
    """A 0755 temp dir, so test users can reach a socket or config in it."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(path, 0o755)
    return path


# ------------------------------------------------------------------ pytest fixtures (import them)

import shutil  # noqa: E402

import pytest  # noqa: E402

from tests.conftest import delete_user, make_user, require_root  # noqa: E402
from tests.fixtures_krb5 import KdcUser, add_user_principal, clear_persistent_caches  # noqa: E402

#: Ticket life of the test principals: renewals happen within seconds at renew_fraction 0.2.
TICKET_LIFE = "30s"


class SvcUser(KdcUser):
    """A "pkd" local user with a principal of the same name (30 s tickets, renewable 10 min)."""

    def __init__(self, realm, maxlife: str = TICKET_LIFE, maxrenew: str | None = None) -> None:  # noqa: ANN001
        made = add_user_principal(realm, make_user("pkd"), maxlife=maxlife, maxrenew=maxrenew)
        super().__init__(made.user, made.principal, made.password)

    def auth(self, daemon: TicketD, password: str | None = None) -> dict[str, Any]:
        return daemon.request({"op": "auth", "user": self.name, "uid": self.uid, "gid": self.gid,
                               "password": self.password if password is None else password})

    def cleanup(self) -> None:
        clear_persistent_caches(self.uid)
        delete_user(self.user)


@pytest.fixture
def svc_user(realm) -> Iterator[SvcUser]:  # noqa: ANN001
    require_root()
    u = SvcUser(realm)
    try:
        yield u
    finally:
        u.cleanup()


@pytest.fixture(scope="session")
def user_krb5(realm) -> Iterator[dict[str, str]]:  # noqa: ANN001
    """KRB5_CONFIG for commands run as test users (a world-readable copy of the realm's krb5.conf)."""
    directory = public_tmpdir("pkd-krb5-")
    try:
        yield readable_krb5_env(realm.env, directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


#: Settings for tests: fast renewals and retries, short pending-auth and adoption scans.
TEST_CONFIG = {"renew_fraction": 0.2, "retry_min": 0.5, "retry_max": 2.0, "pending_auth_timeout": 30.0,
               "adopt_scan_interval": 2.0}


@pytest.fixture
def ticketd(realm) -> Iterator[TicketD]:  # noqa: ANN001
    """A running keyinit-ticketd for this test (socket and state in a fresh 0755 directory)."""
    yield from serve(realm, **TEST_CONFIG)


def serve(realm, **config: Any) -> Iterator[TicketD]:  # noqa: ANN001
    """The body of :func:`ticketd` with ``config``: a fixture yields from it for other settings."""
    require_root()
    directory = public_tmpdir("pkd-ticketd-")
    daemon = TicketD(directory, realm.env, **config)
    daemon.start()
    try:
        yield daemon
    finally:
        # The users' fixtures are torn down first, while this daemon may still renew their
        # caches: clear every uid it tracked once it has stopped.
        tracked = daemon.request({"op": "tickets"}).get("tickets", []) if daemon.alive() else []
        daemon.stop()
        for uid in {t["uid"] for t in tracked}:
            clear_persistent_caches(uid)
        print(daemon.log())  # shown by pytest when the test failed
        shutil.rmtree(directory, ignore_errors=True)
