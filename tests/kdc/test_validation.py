"""TGT validation and FAST armor in the service's ``auth``, against real MIT KDCs.

``validate`` checks each login's TGT with krb5_verify_init_creds against the host keytab:
a TGT from an impostor KDC (same realm name, its own database) fails, and nothing is stored.
``fast`` armors the password exchange with the host principal's TGT; the KDC proves the armor:
with ``encrypted_challenge_indicator = fast`` (kdc.conf) only an armored exchange
(encrypted challenge, a FAST-only preauth) gives the TGT the ``fast`` auth indicator, and the
host principal's ``require_auth = fast`` makes the KDC refuse validation tickets without it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pam_keyinit_py import protocol as P
from pam_keyinit_py.lab.realm import Realm
from pam_keyinit_py.tickets.validation import ARMOR_MARGIN, armor_renew_at
from tests.kdc import ticketd as td
from tests.kdc.ticketd import TEST_CONFIG, SvcUser, TicketD, persistent_caches, public_tmpdir

svc_user = td.svc_user
#: The validation (and armor) principal of the FAST tests.
FAST_HOST = "host/localhost@FAST.TEST"


@pytest.fixture
def daemons() -> Iterator[list[TicketD]]:
    """Start daemons with ``start(krb5_env, **config)``; all stopped and removed after the test."""
    import shutil

    started: list[TicketD] = []

    def start(env: dict[str, str], **config: object) -> TicketD:
        daemon = TicketD(public_tmpdir("pkd-validate-"), env, **{**TEST_CONFIG, **config})
        started.append(daemon)
        daemon.start()
        return daemon

    try:
        yield start  # type: ignore[misc]
    finally:
        for daemon in started:
            daemon.stop()
            print(daemon.log())
            shutil.rmtree(daemon.dir, ignore_errors=True)


def test_default_is_require_and_a_good_login_is_validated(daemons, realm, svc_user):
    daemon = daemons(realm.env)  # no validate key: the default, with krb5.conf's default keytab
    reply = svc_user.auth(daemon)
    assert reply["ok"], reply
    assert "(validated with host/" in daemon.log()
    assert len(persistent_caches(svc_user.uid)) == 1


def test_impostor_kdc_tgt_is_refused_and_not_stored(daemons, realm, rogue_realm, svc_user):
    rogue_realm.add_principal(svc_user.name, "attacker-password-1")
    daemon = daemons(rogue_realm.env, validate_keytab=str(realm.keytab_path))
    reply = svc_user.auth(daemon, "attacker-password-1")
    assert not reply["ok"] and reply["code"] == P.VALIDATION_FAILED, reply
    log = daemon.log()
    # One log line names the keytab and the principal the TGT failed against.
    line = next(x for x in log.splitlines() if "TGT validation failed" in x)
    assert str(realm.keytab_path) in line and "host/" in line, line
    assert "attacker-password-1" not in log
    assert persistent_caches(svc_user.uid) == {}  # nothing of the impostor's reached the keyring
    # The real KDC's TGT still validates with the same keytab (the check is not simply failing).
    good = daemons(realm.env, validate_keytab=str(realm.keytab_path))
    assert svc_user.auth(good)["ok"]


def test_pam_code_of_a_validation_failure_is_auth_err(pamwrap, daemons, realm, rogue_realm, svc_user):
    """Through real libpam: the hook maps validation_failed to PAM_AUTH_ERR, as pam_krb5 does."""
    from tests.kdc.test_service_pam import STRERROR, _pamtester, _service

    rogue_realm.add_principal(svc_user.name, "attacker-password-2")
    daemon = daemons(rogue_realm.env, validate_keytab=str(realm.keytab_path))
    service = _service(pamwrap, "pkd-validate", daemon.socket, "/dev/null")
    res, _ = _pamtester(pamwrap, service, svc_user.name, "attacker-password-2", "authenticate")
    assert res.returncode != 0 and STRERROR["auth_err"] in res.stderr, res.stderr
    # Logged at LOG_ERR (3): a TGT that does not validate may come from a KDC impostor.
    assert "SYSLOG(3): pam_keyinit_py: tickets: no TGT for" in res.stderr
    assert "did not validate against the host keytab" in res.stderr


@pytest.mark.parametrize("validate, ok", [("require", False), ("if-keytab", True), ("never", True)])
def test_host_without_keytab(daemons, realm, svc_user, tmp_path, validate, ok):
    missing = str(tmp_path / "no.keytab")
    daemon = daemons(realm.env, validate=validate, validate_keytab=missing, fast="never")
    reply = svc_user.auth(daemon)
    assert reply["ok"] is ok, reply
    log = daemon.log()
    if validate == "require":
        assert reply["code"] == P.VALIDATION_FAILED
        assert "no key" in reply["error"]
        assert "no key for host/" in log and missing in log
        assert persistent_caches(svc_user.uid) == {}
    elif validate == "if-keytab":
        # Accepted, with a warning at every such login.
        assert f"WARNING auth {svc_user.principal} (uid {svc_user.uid}): TGT not validated" in log
        svc_user.auth(daemon)
        assert log.count("TGT not validated") == 1 and daemon.log().count("TGT not validated") == 2
    else:
        assert "TGT not validated" not in log and "validated with" not in log


def test_wrong_key_in_keytab_is_a_validation_failure(daemons, realm, svc_user, tmp_path):
    """A stale host keytab (the classic kvno mismatch) refuses logins rather than passing them."""
    other = Realm.start(None, realm.realm)
    try:
        stale = tmp_path / "stale.keytab"
        other.keytab(f"host/localhost@{realm.realm}", stale)
    finally:
        other.stop()
    daemon = daemons(realm.env, validate_keytab=str(stale),
                     validate_principal=f"host/localhost@{realm.realm}")
    reply = svc_user.auth(daemon)
    assert reply["code"] == P.VALIDATION_FAILED, reply
    assert "TGT did not validate with host/localhost" in daemon.log()


def test_one_armor_tgt_serves_many_logins_in_a_realm_of_short_tickets(daemons, fast_realm, fast_user):
    """fast_realm's tickets live 60 s, under ARMOR_MARGIN (300 s): the armor TGT is still kept for
    half its life, not fetched from the keytab again for every login (one AS exchange less each)."""
    daemon = daemons(fast_realm.env, validate_principal=FAST_HOST, fast="require")
    kdc_log = fast_realm.dir / "kdc.log"

    def armor_tgts_issued() -> int:
        return sum("ISSUE" in line and f"{FAST_HOST} for krbtgt/FAST.TEST@FAST.TEST" in line
                   for line in kdc_log.read_text().splitlines())

    before = armor_tgts_issued()
    for _ in range(3):
        reply = fast_user.auth(daemon)
        assert reply["ok"], f"{reply}\n{daemon.log()}"
    assert armor_tgts_issued() - before == 1


def test_armor_renew_at() -> None:
    assert armor_renew_at(5000.0, 1000.0, 1000.0 + 36000) == 5000.0 + 36000 - ARMOR_MARGIN  # 10 h: margin
    assert armor_renew_at(5000.0, 1000.0, 1060.0) == 5030.0  # 60 s: half its life, from the local clock
    assert armor_renew_at(5000.0, 1000.0, 990.0) == 5000.0  # nonsense times: replaced at once


@pytest.fixture
def fast_realm() -> Iterator[Realm]:
    """A realm whose KDC marks FAST-armored (encrypted challenge) TGTs, and whose host principal
    requires that mark: validation succeeds only for a TGT from an armored exchange."""
    r = Realm.start(None, "FAST.TEST", maxlife="60s", maxrenew="10m",
                    kdc_relations=("encrypted_challenge_indicator = fast",))
    try:
        r.set_string(FAST_HOST, "require_auth", "fast")
        yield r
    finally:
        r.stop()


@pytest.fixture
def fast_user(fast_realm: Realm) -> Iterator[SvcUser]:
    u = SvcUser(fast_realm)
    fast_realm.modify_principal(u.name, "+requires_preauth")
    try:
        yield u
    finally:
        u.cleanup()


def test_fast_armors_the_password_exchange(daemons, fast_realm, fast_user, tmp_path):
    def start(**config: object) -> TicketD:
        return daemons(fast_realm.env, validate_principal=FAST_HOST, **config)

    unarmored = start(fast="never")
    reply = fast_user.auth(unarmored)
    assert reply["code"] == P.VALIDATION_FAILED, reply
    kdc_log = (fast_realm.dir / "kdc.log").read_text()
    assert "Required auth indicators not present in ticket" in kdc_log

    for mode in ("try", "require"):
        armored = start(fast=mode)
        reply = fast_user.auth(armored)
        assert reply["ok"], f"{reply}\n{armored.log()}"
        assert "not armored" not in armored.log()
    # The KDC issued the armor TGT to the host principal, from the keytab.
    after = (fast_realm.dir / "kdc.log").read_text().split("Required auth indicators")[-1]
    assert "ISSUE: authtime" in after and f"{FAST_HOST} for krbtgt/FAST.TEST@FAST.TEST" in after

    # fast = "require" on a host without a keytab: refused, never sent unarmored.
    bare = start(fast="require", validate="never", validate_keytab=str(tmp_path / "none"))
    reply = fast_user.auth(bare)
    assert reply["code"] == P.FAST_UNAVAILABLE, reply
    assert "no FAST armor TGT" in bare.log()
    # fast = "try" on that host: the login goes on unarmored (validation off here), with a warning.
    loose = start(fast="try", validate="never", validate_keytab=str(tmp_path / "none"))
    assert fast_user.auth(loose)["ok"]
    assert "password exchange not armored" in loose.log()
