"""Key quota of one ticket cache generation against a Samba AD DC: ours beside kinit, same run.

For a plain AD user and a user in 300 groups (the PAC grows with each), on the lab's DC
(krb5/ad-realm.sh): the bytes the kernel charges the uid for one cache (key descriptions plus
payloads, read by ``keyinit doctor``'s walk of KEYRING:persistent:<uid>):
- ours: the cache keyinit-ticketd writes at login (auth, validated with the AD host keytab);
- anchor: MIT ``kinit`` run as the user into the same collection;
and what one service ticket (``kvno host/localhost``) adds, and how many generations fit the
default 20,000-byte quota.  Needs root, samba (``make setup``) and port 88 free.
Run: ``make bench ONLY=ad_pac``.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from pathlib import Path

from pam_keyinit_py.commands import doctor
from pam_keyinit_py.lab import users
from pam_keyinit_py.lab.adrealm import AdRealm, available
from pam_keyinit_py.lab.ticketd import TicketD

DEFAULT_MAXBYTES = 20000


def _ours(daemon: TicketD, user: users.LabUser, password: str) -> int:
    reply = daemon.request({"op": "auth", "user": user.name, "uid": user.uid, "gid": user.gid,
                            "password": password})
    assert reply["ok"], reply
    size = doctor._generation_bytes(user.uid)
    users.clear_persistent(user.uid)
    return size


def _kinit(ad: AdRealm, user: users.LabUser, password: str) -> tuple[int, int]:
    res = user.run(["kinit", user.name], env=ad.env, input=password + "\n")
    assert res.returncode == 0, res.stderr
    size = doctor._generation_bytes(user.uid)
    res = user.run(["kvno", f"host/localhost@{ad.realm}"], env=ad.env)
    assert res.returncode == 0, res.stderr
    return size, doctor._generation_bytes(user.uid) - size


def main() -> None:
    missing = available()
    if missing:
        print(f"skipped: {missing}")
        return
    ad = AdRealm.start(None, life_hours=1, renew_hours=2)
    workdir = Path(tempfile.mkdtemp(prefix="pkb-adpac-"))
    workdir.chmod(0o755)
    daemon = TicketD(workdir, ad.env, validate="require", validate_keytab=str(ad.keytab_path))
    daemon.start()
    try:
        print(f"{'user':<12} {'ours B':>8} {'kinit B':>8} {'+svc tkt B':>11} {'ours/20000':>11}")
        for groups in (0, 300):
            user = users.create("pkbad")
            password = secrets.token_urlsafe(12)
            try:
                ad.add_user(user.name, password, groups=groups)
                ours = _ours(daemon, user, password)
                kinit, service = _kinit(ad, user, password)
                print(f"{f'{groups} groups':<12} {ours:>8} {kinit:>8} {service:>11} "
                      f"{DEFAULT_MAXBYTES // ours:>11}")
            finally:
                users.remove(user)
                ad.delete_user(user.name)
    finally:
        daemon.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        ad.stop()
