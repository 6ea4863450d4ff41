"""Against Active Directory: the service's logins on a Samba AD DC (krb5/ad-realm.sh) on loopback.

The AD realm is the session's ``ad_realm`` (tests/fixtures_ad.py): user tickets live 1 h and
renew for 2 h at most (the KDC's policy, whatever the client asks), the host keytab holds the
AES keys of the host's computer account ``NAME$`` and its ``host/`` SPNs, exported by samba-tool
(``NAME$`` gets the FAST armor TGT, the SPNs validate).
"""

from __future__ import annotations

import secrets
import shutil
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from pam_keyinit_py import protocol as P
from pam_keyinit_py.commands import doctor
from pam_keyinit_py.keyutils import proc
from pam_keyinit_py.lab.adrealm import AdRealm, AdRealmError
from pam_keyinit_py.lab.users import clear_persistent, settle
from pam_keyinit_py.tickets import ccache
from tests.conftest import delete_user, make_user
from tests.fixtures_ad import (
    AD_LIFE_HOURS,
    AD_RENEW_HOURS,
    AdUser,
    host_snapshot,
    make_ad_user,
    remove_ad_user,
)
from tests.kdc import test_account_password as ap
from tests.kdc.ticketd import TEST_CONFIG, TicketD, persistent_caches, public_tmpdir

#: The kernel's default per-uid quota for non-root users (kernel.keys.maxbytes).
DEFAULT_MAXBYTES = 20000


@pytest.fixture
def daemons() -> Iterator[Callable[..., TicketD]]:
    """``start(krb5_env, **config)``: keyinit-ticketd processes, stopped and removed after the test."""
    started: list[TicketD] = []

    def start(env: dict[str, str], **config: object) -> TicketD:
        daemon = TicketD(public_tmpdir("pkd-ad-"), env, **{**TEST_CONFIG, **config})
        started.append(daemon)
        daemon.start()
        return daemon

    try:
        yield start
    finally:
        for daemon in started:
            tracked = daemon.request({"op": "tickets"}).get("tickets", []) if daemon.alive() else []
            daemon.stop()
            for uid in {t["uid"] for t in tracked}:
                from pam_keyinit_py.lab.users import clear_persistent

                clear_persistent(uid)
            print(daemon.log())
            shutil.rmtree(daemon.dir, ignore_errors=True)


def _auth(daemon: TicketD, u: AdUser, principal: str | None = None, password: str | None = None) -> dict:
    msg = {"op": "auth", "user": u.name, "uid": u.uid, "gid": u.gid,
           "password": u.password if password is None else password}
    if principal is not None:
        msg["principal"] = principal
    return daemon.request(msg)


def _ad_daemon(daemons, ad: AdRealm, **config: object) -> TicketD:  # noqa: ANN001
    return daemons(ad.env, **{"validate": "require", "validate_keytab": str(ad.keytab_path), **config})


def _caches(uid: int) -> list[ccache.TicketInfo]:
    return ccache.list_caches(uid)


# ------------------------------------------------------------------ the realm itself

def test_ad_dc_serves_only_kerberos_on_loopback_with_its_own_smb_conf(ad_realm, host_state):
    assert ad_realm.running()
    for family, addr in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect((addr, 88))  # the KDC answers on both loopbacks
    # No DNS server (dns-backend NONE, server services = kdc): port 53 stays the host's.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        assert s.connect_ex(("127.0.0.1", 53)) != 0
    conf = ad_realm.smb_conf.read_text()
    assert "server services = kdc" in conf and str(ad_realm.dir) in conf
    # Provisioning and adding users left the host's stacks, nsswitch and smb.conf alone.
    assert host_snapshot() == host_state


def test_installing_samba_left_no_winbind_in_the_hosts_stacks_or_nsswitch(ad_realm):
    """What make setup undoes after samba's packages (pam-auth-update --disable winbind krb5, nsswitch)."""
    from pathlib import Path

    for kind in ("auth", "account", "password", "session", "session-noninteractive"):
        text = Path(f"/etc/pam.d/common-{kind}").read_text()
        active = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        assert not [line for line in active if "pam_winbind" in line or "pam_krb5" in line], (kind, active)
    for line in Path("/etc/nsswitch.conf").read_text().splitlines():
        if line.split(":")[0].strip() in ("passwd", "group", "shadow"):
            assert "winbind" not in line, line


def test_a_second_dc_is_refused_while_port_88_is_taken(ad_realm):
    """Samba's KDC has no port setting: ad-realm.sh names who holds 88 instead of half-starting."""
    with pytest.raises(AdRealmError, match=r"cannot start the AD KDC: 127\.0\.0\.1 port 88/tcp"):
        AdRealm.start(None, "OTHER.PKK.TEST")
    assert ad_realm.running()  # the session's DC is untouched


def test_stop_and_start_again_keep_the_domain(ad_realm, ad_user):
    """``stop`` takes samba down (status says so, exit 3); ``start`` brings it back on the same database."""
    import subprocess

    from pam_keyinit_py.lab.adrealm import AD_REALM_SH

    env_lines = subprocess.run(["/bin/bash", str(AD_REALM_SH), "env", str(ad_realm.dir)], capture_output=True,
                               text=True, check=True).stdout
    assert f"export KRB5_CONFIG={ad_realm.krb5_conf}" in env_lines and "export KDC_PORT=88" in env_lines
    kinit = ["kinit", "-c", "MEMORY:t", ad_user.name]
    env = {**ad_realm.env, "PATH": "/usr/bin:/bin"}
    ad_realm.stop_kdc()
    try:
        assert not ad_realm.running()
        status = subprocess.run(["/bin/bash", str(AD_REALM_SH), "status", str(ad_realm.dir)],
                                capture_output=True, text=True, check=False)
        assert status.returncode == 3 and "stopped" in status.stdout
        down = subprocess.run(kinit, input=ad_user.password + "\n", env=env, capture_output=True, text=True,
                              check=False)
        assert down.returncode != 0
    finally:
        ad_realm.start_kdc()
    assert ad_realm.running()
    up = subprocess.run(kinit, input=ad_user.password + "\n", env=env, capture_output=True, text=True,
                        check=False)
    assert up.returncode == 0, up.stderr  # the user made before the restart is still there


def test_host_keytab_holds_only_aes_keys_of_host_spns(ad_realm):
    import krb5

    ctx = krb5.init_context()
    kt = krb5.kt_resolve(ctx, f"FILE:{ad_realm.keytab_path}".encode())
    entries = [(str(e.principal), int(e.key.enctype)) for e in kt]
    assert entries, "exportkeytab wrote no keys"
    assert {enc for _p, enc in entries} == {17, 18}  # aes128/aes256-cts-hmac-sha1-96, no RC4
    assert f"host/localhost@{ad_realm.realm}" in {p for p, _e in entries}
    assert (ad_realm.keytab_path.stat().st_mode & 0o777) == 0o600


# ------------------------------------------------------------------ logins, validation, limits

def test_ad_login_is_validated_with_the_exported_host_keytab(daemons, ad_realm, ad_user):
    daemon = _ad_daemon(daemons, ad_realm)
    reply = _auth(daemon, ad_user)
    assert reply["ok"], f"{reply}\n{daemon.log()}"
    assert reply["principal"] == ad_user.principal
    assert reply["ccache"].startswith(f"KEYRING:persistent:{ad_user.uid}:")
    assert "(validated with host/" in daemon.log()
    assert ad_user.password not in daemon.log()


def test_rogue_kdc_for_the_ad_realm_is_refused(daemons, ad_realm, rogue_ad, ad_user):
    rogue_ad.add_principal(ad_user.name, "attacker-chosen-1")
    daemon = daemons(rogue_ad.env, validate="require", validate_keytab=str(ad_realm.keytab_path))
    reply = _auth(daemon, ad_user, password="attacker-chosen-1")
    assert not reply["ok"] and reply["code"] == P.VALIDATION_FAILED, reply
    line = next(x for x in daemon.log().splitlines() if "TGT validation failed" in x)
    assert str(ad_realm.keytab_path) in line
    assert persistent_caches(ad_user.uid) == {}
    # The same keytab validates the real DC's ticket: the refusal is the impostor's.
    good = _ad_daemon(daemons, ad_realm)
    assert _auth(good, ad_user)["ok"]


def test_renewal_stays_within_the_ad_policy(daemons, ad_realm, ad_user):
    # The service asks for 7 days of renewal (its default); the DC grants its own limits.
    daemon = _ad_daemon(daemons, ad_realm)
    t0 = int(time.time())
    assert _auth(daemon, ad_user)["ok"]
    (first,) = _caches(ad_user.uid)
    assert first.renewable
    assert first.endtime - first.starttime <= AD_LIFE_HOURS * 3600
    assert first.renew_till <= t0 + AD_RENEW_HOURS * 3600 + 5
    reply = daemon.request({"op": "renew", "uid": ad_user.uid})
    assert reply["ok"] and not reply["errors"], reply
    daemon.wait_for(lambda: len(_caches(ad_user.uid)) == 1, 10, "the old generation retired")
    (second,) = _caches(ad_user.uid)
    assert second.ccache != first.ccache and second.starttime >= first.starttime
    assert second.renew_till == first.renew_till  # a renewal never extends the DC's limit


# ------------------------------------------------------------------ FAST armor

def test_host_keytab_holds_the_computer_account_that_gets_the_armor_tgt(ad_realm):
    """Samba issues a TGT to the computer account NAME$, not to its host/ SPNs (they only serve)."""
    import subprocess

    import krb5

    ctx = krb5.init_context()
    armor = ccache.machine_account(ctx, f"FILE:{ad_realm.keytab_path}")
    short = socket.gethostname().split(".")[0].upper()[:15]
    assert armor == f"{short}$@{ad_realm.realm}"
    env = {**ad_realm.env, "PATH": "/usr/bin:/bin"}
    kinit = ["kinit", "-k", "-t", str(ad_realm.keytab_path), "-c", "MEMORY:armor"]
    account = subprocess.run([*kinit, armor], env=env, capture_output=True, text=True, check=False)
    assert account.returncode == 0, account.stderr
    spn = subprocess.run([*kinit, f"host/localhost@{ad_realm.realm}"], env=env, capture_output=True,
                         text=True, check=False)
    assert spn.returncode != 0 and "not found in Kerberos database" in spn.stderr, spn.stderr


@pytest.mark.parametrize("fast", ["try", "require"])
def test_ad_login_is_armored_with_the_computer_accounts_tgt(daemons, ad_realm, ad_user, fast):
    """fast = "try" (the default) and "require" against Samba: armored, no per-login warning.

    With "require" libkrb5 sets KRB5_FAST_REQUIRED: the login succeeds only if the AS exchange
    really went through FAST (an armor TGT and a KDC that answers FAST).
    """
    daemon = _ad_daemon(daemons, ad_realm, fast=fast)
    for _ in range(2):
        reply = _auth(daemon, ad_user)
        assert reply["ok"], f"{reply}\n{daemon.log()}"
        assert reply["principal"] == ad_user.principal
    log = daemon.log()
    assert "not armored" not in log and "FAST" not in log and "WARNING auth" not in log, log
    assert "(validated with host/" in log
    assert ad_user.password not in log


def test_ad_login_with_fast_require_fails_closed_when_no_armor_can_be_had(daemons, ad_realm, ad_user,
                                                                         tmp_path):
    """A keytab with only the host/ SPNs (no NAME$): validation works, armor cannot be had."""
    spn_only = ad_realm.keytab(f"host/localhost@{ad_realm.realm}", tmp_path / "spn-only.keytab")
    strict = _ad_daemon(daemons, ad_realm, fast="require", validate_keytab=str(spn_only),
                        validate_principal=f"host/localhost@{ad_realm.realm}")
    reply = _auth(strict, ad_user)
    assert not reply["ok"] and reply["code"] == P.FAST_UNAVAILABLE, reply
    line = next(x for x in strict.log().splitlines() if 'fast = "require"' in x and x.endswith("refused"))
    assert "no FAST armor TGT for host/localhost" in line and str(spn_only) in line, line
    assert persistent_caches(ad_user.uid) == {}  # the password was never sent unarmored
    # "try" on that keytab: the login goes on unarmored, validated, with the warning.
    loose = _ad_daemon(daemons, ad_realm, fast="try", validate_keytab=str(spn_only),
                       validate_principal=f"host/localhost@{ad_realm.realm}")
    assert _auth(loose, ad_user)["ok"]
    assert "password exchange not armored" in loose.log()
    # fast_principal names the armor client outright: an account the keytab has no key for
    # fails closed the same way.
    named = _ad_daemon(daemons, ad_realm, fast="require", fast_principal=f"NOSUCH$@{ad_realm.realm}")
    reply = _auth(named, ad_user)
    assert reply["code"] == P.FAST_UNAVAILABLE, reply
    assert "no FAST armor TGT for NOSUCH$" in named.log()


# ------------------------------------------------------------------ principal names

def test_every_spelling_of_the_user_gives_one_canonical_cache(daemons, ad_realm, ad_user):
    daemon = _ad_daemon(daemons, ad_realm)
    spellings = [ad_user.name, ad_user.name.upper(), ad_realm.upn(ad_user.name),
                 f"{ad_user.name.upper()}@{ad_realm.realm}"]
    for spelling in spellings:
        reply = _auth(daemon, ad_user, principal=spelling)
        assert reply["ok"], f"{spelling}: {reply}\n{daemon.log()}"
        assert reply["principal"] == ad_user.principal, spelling
    daemon.wait_for(lambda: len(_caches(ad_user.uid)) == 1, 10, "one cache for all spellings")
    (only,) = _caches(ad_user.uid)
    assert only.principal == ad_user.principal
    # The user's own kinit of its sAMAccountName picks that same cache (libkrb5 matches caches of
    # a collection by principal): still one cache, not a second one for another spelling.
    res = ad_user.user.run(["kinit", ad_user.name], env=ad_realm.env, input=ad_user.password + "\n")
    assert res.returncode == 0, res.stderr
    assert [c.principal for c in _caches(ad_user.uid)] == [ad_user.principal]


def test_without_canonicalize_each_spelling_is_a_name_of_its_own(daemons, ad_realm, ad_user):
    """What the canonicalize setting prevents: the name as typed, and no UPN at all."""
    daemon = _ad_daemon(daemons, ad_realm, canonicalize=False)
    reply = _auth(daemon, ad_user, principal=ad_user.name.upper())
    assert reply["ok"] and reply["principal"] == f"{ad_user.name.upper()}@{ad_realm.realm}", reply
    # Parsed as an ordinary name, the UPN's suffix is a realm no KDC serves.
    reply = _auth(daemon, ad_user, principal=ad_realm.upn(ad_user.name))
    assert not reply["ok"], reply


def test_principal_name_maps_the_local_account_to_its_upn(daemons, ad_realm, ad_user):
    daemon = _ad_daemon(daemons, ad_realm, principal_name="{user}@" + ad_realm.dns_domain)
    reply = _auth(daemon, ad_user)
    assert reply["ok"], f"{reply}\n{daemon.log()}"
    assert reply["principal"] == ad_user.principal
    assert f"auth {ad_realm.upn(ad_user.name)} (uid {ad_user.uid}): the KDC's name for it is" in daemon.log()


#: A UPN suffix other than the domain's DNS name (AD's "alternative UPN suffixes").
UPN_SUFFIX = "upn.example"


@pytest.fixture
def upn_user(ad_realm) -> Iterator[AdUser]:  # noqa: ANN001
    """A local user ``L`` whose AD account has another sAMAccountName (``pkz...``) and the UPN
    ``L@`` :data:`UPN_SUFFIX` (an alternative UPN suffix): L@REALM names no account, only the UPN
    leads from L to it.  (With the domain's own suffix, Samba's KDC would take L@REALM as the UPN.)"""
    user = make_user("pku")
    account = f"pkz{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(12)
    try:
        principal = ad_realm.add_user(account, password, upn=f"{user.name}@{UPN_SUFFIX}")
    except BaseException:
        delete_user(user)
        raise
    u = AdUser(user, principal, password)
    try:
        yield u
    finally:
        clear_persistent(u.uid)
        try:
            ad_realm.delete_user(account)
        finally:
            delete_user(user)


def test_account_and_passwd_of_a_upn_mapping_are_the_accounts_it_names(daemons, ad_realm, upn_user, pamwrap):
    """principal_name = "{user}@upn.example" (a UPN, an enterprise name): the account check of a
    publickey login and the user's own passwd name no principal, and must reach the account the
    UPN names, as the login does, not L@REALM (no such account)."""
    daemon = _ad_daemon(daemons, ad_realm, principal_name="{user}@" + UPN_SUFFIX)
    assert _auth(daemon, upn_user)["principal"] == upn_user.principal  # the login's mapping, for comparison
    u = upn_user
    reply = daemon.request({"op": "account", "user": u.name, "uid": u.uid, "kuserok": False, "kdc": True})
    assert reply["ok"], f"{reply}\n{daemon.log()}"
    reply = daemon.request({"op": "chpass", "user": u.name, "uid": u.uid, "old_password": u.password})
    assert reply["ok"] and reply["principal"] == u.principal, f"{reply}\n{daemon.log()}"
    # Through the hook: passwd's account probe, the current password's check, the change.
    service = pamwrap.service("pka-passwd-upn", ap.stack(pamwrap, daemon.socket))
    new = "N3w-" + secrets.token_urlsafe(12)
    res = ap.pamtester(pamwrap, service, u.name, [u.password, new, new], "chauthtok")
    assert res.returncode == 0, res.stdout + res.stderr + daemon.log()
    assert _auth(daemon, u, password=new)["ok"]
    assert not _auth(daemon, u)["ok"]
    assert u.password not in daemon.log() and new not in daemon.log()


# ------------------------------------------------------------------ large PACs and the key quota

@pytest.fixture
def big_user(ad_realm) -> Iterator[AdUser]:  # noqa: ANN001
    u = make_ad_user(ad_realm, groups=300, prefix="pkb")
    try:
        yield u
    finally:
        remove_ad_user(ad_realm, u)


def _bytes(uid: int) -> int:
    user = proc.key_user(uid)
    return user.qnbytes if user else 0


def _generation_bytes(daemon: TicketD, u: AdUser) -> int:
    """Quota bytes of one cache generation, summed over its keys (descriptions + payloads).

    Read from the kernel (doctor's walk of the persistent keyring): the uid's total charge
    (/proc/key-users) is no measure on a busy machine, where the keys of a deleted user with the
    same uid are uncharged whenever the kernel's key GC runs.
    """
    assert _auth(daemon, u)["ok"]
    daemon.wait_for(lambda: len(_caches(u.uid)) == 1 and len(persistent_caches(u.uid)) == 1, 10, "one cache")
    size = doctor._generation_bytes(u.uid)
    assert 0 < size <= _bytes(u.uid)  # the kernel charges the uid at least that
    return size


def test_per_generation_key_bytes_plain_and_300_groups(daemons, ad_realm, ad_user, big_user):
    daemon = _ad_daemon(daemons, ad_realm)
    plain = _generation_bytes(daemon, ad_user)
    big = _generation_bytes(daemon, big_user)
    print(f"per-generation key bytes: plain {plain}, 300 groups {big}")
    assert big > plain + 300 * 4  # the PAC grows with each group (its SIDs: several bytes each)
    assert 2 * big < DEFAULT_MAXBYTES  # two generations at once (a renewal) fit the default quota


def test_300_group_user_renews_for_hours_under_the_default_quota(daemons, ad_realm, big_user):
    assert proc.read_quotas().maxbytes == DEFAULT_MAXBYTES, "the test is about the default quota"
    daemon = _ad_daemon(daemons, ad_realm)
    assert _auth(daemon, big_user)["ok"]
    assert daemon.request({"op": "open", "user": big_user.name, "uid": big_user.uid,
                           "gid": big_user.gid})["ok"]
    # Each forced renewal stands for one half-life of simulated time: 12 renewals of a 1 h
    # ticket at half-life are six hours, back to back (the worst case for the quota: every
    # old generation is still waiting for its grace period when the next one is written).
    for _ in range(12):
        reply = daemon.request({"op": "renew", "uid": big_user.uid})
        assert reply["ok"] and not reply["errors"], f"{reply}\n{daemon.log()}"
    daemon.wait_for(lambda: len(_caches(big_user.uid)) == 1, 10, "old generations retired")
    assert "quota" not in daemon.log()
    assert _bytes(big_user.uid) <= DEFAULT_MAXBYTES


def test_own_keys_leaving_no_room_renew_in_place_with_a_clear_warning(daemons, ad_realm, big_user):
    daemon = _ad_daemon(daemons, ad_realm)
    assert _auth(daemon, big_user)["ok"]
    assert daemon.request({"op": "open", "user": big_user.name, "uid": big_user.uid,
                           "gid": big_user.gid})["ok"]
    check = doctor.check_quota_headroom(daemon.socket)
    assert check.ok, check
    free = DEFAULT_MAXBYTES - _bytes(big_user.uid)
    assert f"{big_user.name}: {free} of {DEFAULT_MAXBYTES} bytes" in check.detail, check
    gen = int(check.detail.split("a ticket cache takes ")[1].split()[0])
    assert 3000 < gen < free  # a 300-group TGT's cache, and room for the next generation
    (before,) = _caches(big_user.uid)
    settle(big_user.uid)  # a reused uid's leftovers, freed by the collector later, would make room
    # The user's own keys fill the quota (add_key until EDQUOT, in smaller and smaller keys):
    # less room is left than one generation needs.
    code = ("from pam_keyinit_py import keyutils as k\n"
            "n = 0\n"
            "for size in (4000, 1000, 200, 50):\n"
            "    while True:\n"
            "        try:\n"
            "            k.add_key(b'user', b'fill%d' % n, b'x' * size, k.KEY_SPEC_USER_KEYRING)\n"
            "        except OSError:\n"
            "            break\n"
            "        n += 1\n")
    res = big_user.user.run([str(TEST_PYTHON), "-c", code])
    assert res.returncode == 0, res.stderr
    assert DEFAULT_MAXBYTES - _bytes(big_user.uid) < 1000
    # keyinit doctor sees it: no room for the generation a renewal writes.
    check = doctor.check_quota_headroom(daemon.socket)
    assert not check.ok and f"no room to renew for {big_user.name}" in check.detail, check
    reply = daemon.request({"op": "renew", "uid": big_user.uid})
    # No room for a second generation: the quota guard renews in place (the renewed TGT replaces
    # the old one's key in one add_key update) and names the sysctl to raise.
    assert reply["ok"] and not reply["errors"], f"{reply}\n{daemon.log()}"
    assert [t["renewed"] for t in reply["tickets"]] == [1], reply
    line = next(x for x in daemon.log().splitlines() if "renewing in place" in x)
    assert "kernel.keys.maxbytes" in line, line
    (still,) = _caches(big_user.uid)
    assert still.ccache == before.ccache and still.endtime >= before.endtime > time.time()


from tests.conftest import VENV_BIN  # noqa: E402

TEST_PYTHON = VENV_BIN / "python"
