"""Throwaway local users for the demo, the tests and the benchmarks (useradd/userdel, root only).

One place creates them, runs commands as them the way rpc.gssd or a login would (real and
effective ids switched, no supplementary groups), and removes them with everything they left
in the kernel: the persistent keyring's caches, and their processes.
"""

from __future__ import annotations

import os
import pwd
import secrets
import subprocess
import time
from collections.abc import Callable

from .. import keyutils


def become(uid: int, gid: int) -> Callable[[], None]:
    """A preexec_fn that switches a child to ``uid``/``gid`` for good (setresgid, setresuid)."""

    def drop() -> None:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)

    return drop


def clear_persistent(uid: int) -> None:
    """KEYCTL_GET_PERSISTENT(uid) + KEYCTL_CLEAR: empty the uid's persistent keyring (its ccaches).

    The keyring is linked into this thread's keyring only for the moment: a thread keyring
    holding many uids' trees makes every later keyctl of the thread slower.
    """
    try:
        ring = keyutils.get_persistent(uid, keyutils.KEY_SPEC_THREAD_KEYRING)
    except OSError:
        return
    try:
        keyutils.clear(ring)
        keyutils.unlink(ring, keyutils.KEY_SPEC_THREAD_KEYRING)
    except OSError:
        pass


def settle(uid: int, timeout: float = 5.0) -> None:
    """Wait until ``uid``'s line of /proc/key-users holds still (three looks, 0.1 s apart).

    The kernel's key garbage collector frees the keys of exited processes and deleted users
    (session keyrings, a reused uid's leftovers) a moment later.  A test that fills a uid's
    quota must start after that, or quota freed meanwhile lets a "quota exceeded" step succeed.
    """
    from ..keyutils import proc

    last, still, deadline = None, 0, time.monotonic() + timeout
    while still < 3 and time.monotonic() < deadline:
        now = proc.key_user(uid)
        still, last = (still + 1, last) if now == last else (0, now)
        time.sleep(0.1)


class LabUser:
    """A local user made by :func:`create`; ``password`` is kept only in this process's memory."""

    def __init__(self, name: str, password: str | None = None) -> None:
        self.name = name
        self.password = password
        pw = pwd.getpwnam(name)
        self.uid = pw.pw_uid
        self.gid = pw.pw_gid
        self.home = pw.pw_dir

    def run(self, argv: list[str], env: dict[str, str] | None = None,
            **kw: object) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` as this user with a small clean environment (plus ``env``)."""
        base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": self.home, "USER": self.name,
                "LANG": "C"}
        base.update(env or {})
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        return subprocess.run(argv, preexec_fn=become(self.uid, self.gid), env=base,  # type: ignore[call-overload]
                              **kw)


def set_local_password(name: str, password: str) -> None:
    """Put a SHA-512 crypt hash of ``password`` into /etc/shadow (``chpasswd -e``).

    The hash is made here and given to chpasswd on stdin (neither the password nor the hash
    is in argv).  With -e, chpasswd writes shadow directly instead of through the host's
    common-password stack, so it works whatever PAM modules the host has there (with pam_krb5
    first in common-password, a plain chpasswd fails for users without a principal).
    """
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # deprecated in 3.11, still the stdlib's crypt(3)

        hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_SHA512))
    subprocess.run(["chpasswd", "-e"], input=f"{name}:{hashed}\n", text=True, check=True)


def create(prefix: str, password: bool = False) -> LabUser:
    """useradd a user named ``<prefix><random>`` with a home; with ``password``, a random local one.

    Without ``password`` the account's local password stays locked (shadow ``!``).
    """
    name = f"{prefix}{secrets.token_hex(4)}"
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", name], check=True)
    secret = None
    try:
        if password:
            secret = secrets.token_urlsafe(12)
            set_local_password(name, secret)
        return LabUser(name, secret)
    except BaseException:
        subprocess.run(["userdel", "--remove", name], check=False, capture_output=True)
        raise


def remove(user: LabUser) -> None:
    """Kill the user's processes, clear its user and persistent keyrings, userdel --remove it.

    Cleared once more after userdel: anything that still wrote a ccache meanwhile (a service
    renewing it) must not leave keys charged to a uid the next useradd may reuse.
    """
    subprocess.run(["pkill", "-KILL", "-u", user.name], check=False)
    # The kernel keeps a uid's user and user-session keyrings after userdel: keys left there
    # would greet the next useradd that reuses the uid.  Only the uid itself may clear them.
    subprocess.run(["sh", "-c", "keyctl clear @u; keyctl clear @us"], preexec_fn=become(user.uid, user.gid),
                   check=False, capture_output=True)
    clear_persistent(user.uid)
    subprocess.run(["userdel", "--remove", user.name], check=False, capture_output=True)
    clear_persistent(user.uid)
