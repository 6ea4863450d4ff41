"""Active Directory users log in over a real ssh, through both pam-auth-update profiles.

The DC is the session's Samba AD DC on loopback (tests/fixtures_ad.py).  The sshd's PAM service
is what Debian's real pam-auth-update writes (lab/pamconfigs.py, over private copies):
* ``keyinit`` (Additional): pam_unix verifies the local password, which the site keeps equal to
  the AD password, and the hook hands it (use_first_pass) to the service;
* ``keyinit-krb5`` (Primary): the local password is locked, so only the AD password lets the
  user in, and only with a TGT that validated against the host keytab exported from AD.
In both the TGT lands in KEYRING:persistent:<uid> and is gone after the last logout.
The user may also type ``ALICE`` or the UPN at ssh: sshd then runs under nss_wrapper with a
private passwd that gives the account those names too, as an AD NSS provider would (the host's
nsswitch.conf is never touched).  A delegated GSSAPI login against the DC is tested as well.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pam_keyinit_py.lab import pamconfigs
from pam_keyinit_py.lab.sshd import KBDINT, PASSWORD
from pam_keyinit_py.lab.users import set_local_password
from tests.conftest import require
from tests.fixtures_ad import AD_RENEW_HOURS
from tests.kdc.ticketd import TEST_CONFIG, TicketD, persistent_caches, public_tmpdir

PROFILES = ("keyinit", "keyinit-krb5")


@pytest.fixture(scope="module")
def stacks() -> dict[str, dict[str, list[str]]]:
    """The common-* stacks of ``pam-auth-update --enable P`` for each profile (host untouched)."""
    missing = pamconfigs.available()
    require(missing is None, missing or "")
    return {p: pamconfigs.render_stacks((p,)) for p in PROFILES}


def _daemon(env: dict[str, str], keytab: str) -> TicketD:
    daemon = TicketD(public_tmpdir("pkd-adssh-"), env, **TEST_CONFIG, validate="require",
                     validate_keytab=keytab)
    daemon.start()
    return daemon


@pytest.fixture
def ad_ticketd(ad_realm) -> Iterator[TicketD]:  # noqa: ANN001
    """keyinit-ticketd for the AD realm, validating with the AD-exported host keytab."""
    daemon = _daemon(ad_realm.env, str(ad_realm.keytab_path))
    try:
        yield daemon
    finally:
        daemon.stop()
        print(daemon.log())
        shutil.rmtree(daemon.dir, ignore_errors=True)


def _stack(stacks, profile: str, sock: str):  # noqa: ANN001
    return lambda pamwrap: pamconfigs.service_lines(stacks[profile], pamwrap, f"socket={sock}")


def _locked(name: str) -> bool:
    out = subprocess.run(["passwd", "-S", name], capture_output=True, text=True, check=True).stdout
    return out.split()[1] == "L"


def _prepare(profile: str, ad_user) -> None:  # noqa: ANN001
    if profile == "keyinit":
        set_local_password(ad_user.name, ad_user.password)  # the site keeps it equal to AD's
    assert _locked(ad_user.name) == (profile == "keyinit-krb5")


@pytest.mark.parametrize("mode", [PASSWORD, KBDINT])
@pytest.mark.parametrize("profile", PROFILES)
def test_ad_user_logs_in_validated_and_is_cleared_at_logout(sshd_factory, stacks, ad_realm, ad_ticketd,
                                                            ad_user, profile, mode):
    _prepare(profile, ad_user)
    server = sshd_factory(_stack(stacks, profile, ad_ticketd.socket), mode=mode)
    res = server.login(ad_user.name, ad_user.password, f"KRB5_CONFIG={ad_realm.krb5_conf} klist")
    assert res.returncode == 0, f"{res.stderr}\n--- sshd ---\n{server.log()[-3000:]}\n{ad_ticketd.log()}"
    assert f"Ticket cache: KEYRING:persistent:{ad_user.uid}:" in res.stdout, res.stdout
    assert f"Default principal: {ad_user.principal}" in res.stdout
    assert f"krbtgt/{ad_realm.realm}@{ad_realm.realm}" in res.stdout
    assert "(validated with host/" in ad_ticketd.log()
    ad_ticketd.wait_for(lambda: persistent_caches(ad_user.uid) == {}, 10, "the ticket cleared at logout")
    assert ad_user.password not in ad_ticketd.log() and ad_user.password not in server.log()


def test_primary_profile_refuses_a_wrong_ad_password(sshd_factory, stacks, ad_ticketd, ad_user):
    _prepare("keyinit-krb5", ad_user)
    server = sshd_factory(_stack(stacks, "keyinit-krb5", ad_ticketd.socket), mode=PASSWORD)
    bad = server.login(ad_user.name, ad_user.password + "x", "true")
    assert bad.returncode == 255 and "Permission denied" in bad.stderr, bad.stderr
    assert "wrong password" in ad_ticketd.log()
    assert persistent_caches(ad_user.uid) == {}


def test_rogue_kdc_for_the_ad_realm_cannot_log_the_attacker_in(sshd_factory, stacks, ad_realm, rogue_ad,
                                                              ad_user):
    """The host's krb5.conf points at the impostor; the host keytab is still AD's."""
    _prepare("keyinit-krb5", ad_user)
    rogue_ad.add_principal(ad_user.name, "attacker-chosen-1")
    daemon = _daemon(rogue_ad.env, str(ad_realm.keytab_path))
    try:
        server = sshd_factory(_stack(stacks, "keyinit-krb5", daemon.socket), mode=PASSWORD)
        res = server.login(ad_user.name, "attacker-chosen-1", "true")
        log = daemon.log()
    finally:
        daemon.stop()
        shutil.rmtree(daemon.dir, ignore_errors=True)
    assert res.returncode == 255 and "Permission denied" in res.stderr, res.stderr
    assert "TGT validation failed (validate=require), login refused" in log, log
    assert str(ad_realm.keytab_path) in log
    assert persistent_caches(ad_user.uid) == {}


def test_ad_ticket_renewed_in_the_session_within_the_dc_limit(sshd_factory, stacks, ad_realm, ad_ticketd,
                                                             ad_user):
    _prepare("keyinit", ad_user)
    server = sshd_factory(_stack(stacks, "keyinit", ad_ticketd.socket), mode=PASSWORD)
    t0 = time.time()
    long = server.spawn(ad_user.name, ad_user.password, "sleep 6")
    try:
        ad_ticketd.wait_for(lambda: ad_ticketd.request({"op": "status"})["service"]["sessions"] == 1, 20,
                            "the session to open")
        reply = ad_ticketd.request({"op": "renew", "uid": ad_user.uid})
        assert reply["ok"] and not reply["errors"], reply
        (row,) = reply["tickets"]
        assert row["renewed"] >= 1 and row["principal"] == ad_user.principal
        assert row["renew_till"] <= t0 + AD_RENEW_HOURS * 3600 + 5  # the DC's limit, not the 7 days asked
        assert persistent_caches(ad_user.uid)
    finally:
        long.wait(30)
    ad_ticketd.wait_for(lambda: persistent_caches(ad_user.uid) == {}, 10, "the ticket cleared at last logout")


def test_delegated_ad_ticket_lands_in_the_persistent_keyring_and_is_cleared(sshd_factory, ad_realm,
                                                                           ad_user, tmp_path):
    """GSSAPI ssh with a forwarded AD TGT (sshd accepting with the AD-exported host keytab)."""
    from pam_keyinit_py.lab.sshd import GSSAPI

    daemon = _daemon(ad_realm.env, str(ad_realm.keytab_path))
    try:
        sock = daemon.socket

        def stack(pamwrap) -> list[str]:  # noqa: ANN001
            return [pamwrap.hook_line("auth", "optional", f"use_first_pass socket={sock}"),
                    "account required pam_permit.so",
                    pamwrap.hook_line("session", "required", f"force revoke tickets socket={sock}")]

        server = sshd_factory(stack, mode=GSSAPI, keytab=ad_realm.keytab_path, krb5_config=ad_realm.krb5_conf)
        cc = f"FILE:{tmp_path}/client-cc"
        kinit = subprocess.run(["kinit", "-f", ad_user.principal], input=ad_user.password + "\n",
                               env={**ad_realm.env, "KRB5CCNAME": cc, "PATH": "/usr/bin:/bin"},
                               capture_output=True, text=True, check=False)
        assert kinit.returncode == 0, kinit.stderr
        res = server.gss_login(ad_user.name, f"KRB5_CONFIG={ad_realm.krb5_conf} klist", cc)
        assert res.returncode == 0, f"{res.stderr}\n{server.log()[-3000:]}\n{daemon.log()}"
        assert f"Ticket cache: KEYRING:persistent:{ad_user.uid}:" in res.stdout, res.stdout
        assert f"Default principal: {ad_user.principal}" in res.stdout
        assert "delegated" in daemon.log()
        daemon.wait_for(lambda: persistent_caches(ad_user.uid) == {}, 15, "the ticket cleared at logout")
    finally:
        daemon.stop()
        print(daemon.log())
        shutil.rmtree(daemon.dir, ignore_errors=True)


# ------------------------------------------------------------------ other spellings over ssh

NSS_WRAPPER = "/usr/lib/x86_64-linux-gnu/libnss_wrapper.so"


def _mapped_sshd_factory(passwd: Path, group: Path):  # noqa: ANN202
    """The lab sshd, plus nss_wrapper over a private passwd/group (the host's nsswitch untouched).

    The private passwd gives one account more names, as an AD NSS provider (SSSD, winbind)
    answers getpwnam("ALICE") and getpwnam("alice@example.com") with alice's entry.
    """
    from pam_keyinit_py.lab.sshd import Sshd

    class MappedSshd(Sshd):
        def _server_env(self) -> dict[str, str]:
            env = super()._server_env()
            env["LD_PRELOAD"] = f"{env['LD_PRELOAD']} {NSS_WRAPPER}"
            env["NSS_WRAPPER_PASSWD"] = str(passwd)
            env["NSS_WRAPPER_GROUP"] = str(group)
            return env

    return MappedSshd


@pytest.mark.parametrize("spelling", ["upper", "upn"])
def test_ad_user_logs_in_over_ssh_as_another_spelling_into_the_one_cache(stacks, ad_realm, ad_ticketd,
                                                                         ad_user, tmp_path, spelling):
    import pwd

    require(Path(NSS_WRAPPER).exists(), "libnss-wrapper not installed (make setup)")
    typed = ad_user.name.upper() if spelling == "upper" else ad_realm.upn(ad_user.name)
    pw = pwd.getpwnam(ad_user.name)
    passwd, group = tmp_path / "passwd", tmp_path / "group"
    # The password field "!" (locked, as the Primary profile has it) and not "x": pam_unix reads
    # shadow entries with getspnam_r, which nss_wrapper 1.1.12 does not provide.
    passwd.write_text(Path("/etc/passwd").read_text()
                      + f"{typed}:!:{pw.pw_uid}:{pw.pw_gid}::{pw.pw_dir}:{pw.pw_shell}\n")
    group.write_text(Path("/etc/group").read_text())
    _prepare("keyinit-krb5", ad_user)
    server = _mapped_sshd_factory(passwd, group)()
    try:
        server.start(_stack(stacks, "keyinit-krb5", ad_ticketd.socket)(server.pamwrap), mode=PASSWORD)
        res = server.login(typed, ad_user.password, f"KRB5_CONFIG={ad_realm.krb5_conf} klist")
        log = server.log()
    finally:
        server.close()
    assert res.returncode == 0, f"{res.stderr}\n--- sshd ---\n{log[-3000:]}\n{ad_ticketd.log()}"
    assert f"Ticket cache: KEYRING:persistent:{ad_user.uid}:" in res.stdout, res.stdout
    assert f"Default principal: {ad_user.principal}" in res.stdout  # the canonical name, not as typed
    ad_ticketd.wait_for(lambda: persistent_caches(ad_user.uid) == {}, 10, "the ticket cleared at logout")
    # What let it in: krb5_kuserok as the typed name refuses (auth_to_local maps the canonical
    # principal to the account's own name); as the uid's own name it allows.  Another principal
    # gets in under neither.
    from pam_keyinit_py.tickets import principals

    conf = str(ad_realm.krb5_conf)
    assert not principals.kuserok(ad_user.principal, typed, conf)
    assert principals.kuserok_account(ad_user.principal, typed, ad_user.uid, conf)
    assert not principals.kuserok_account(f"someoneelse@{ad_realm.realm}", typed, ad_user.uid, conf)
