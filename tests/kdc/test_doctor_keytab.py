"""``keyinit doctor``'s host keytab checks against a real KDC: the key is there, its kvno is the
KDC's, and a test principal's TGT validates (its password read from stdin, never argv)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from pam_keyinit_py.lab.realm import Realm, available
from tests.conftest import require, require_root


@pytest.fixture
def own_realm() -> Iterator[Realm]:
    """A realm of this test's own: its host key is changed below, which would break the shared one."""
    require_root()
    require(available(), "MIT KDC tools not installed")
    r = Realm.start(None, "DOC.TEST")
    try:
        yield r
    finally:
        r.stop()


def _doctor(realm: Realm, *args: str, stdin: str = "") -> list[str]:
    proc = subprocess.run([sys.executable, "-m", "pam_keyinit_py.cli", "doctor", "--socket", "/nonexistent",
                           "--config", os.devnull, *args],
                          env={"PATH": "/usr/bin:/bin", **realm.env}, input=stdin, capture_output=True,
                          text=True, timeout=60)
    return [line for line in proc.stdout.splitlines() if "host keytab" in line or "validation of" in line]


def test_doctor_checks_key_kvno_and_a_test_principal(own_realm):
    own_realm.add_principal("alice", "alice-pw-1")
    good = _doctor(own_realm, "--test-principal", "alice", stdin="alice-pw-1\n")
    assert good[0].startswith("[ OK ] host keytab: host/") and "matches the KDC" in good[0], good
    assert good[1].startswith("[ OK ] validation of alice's TGT: validated with host/"), good

    wrong = _doctor(own_realm, "--test-principal", "alice", stdin="not-her-password\n")
    assert wrong[1].startswith("[FAIL] validation of alice's TGT: no TGT for alice"), wrong

    # The KDC's key changes (an admin re-keyed the host), the keytab stays: the classic mismatch.
    rekeyed = 0
    for host in {"localhost", socket.gethostname().lower()}:
        proc = subprocess.run(["kadmin.local", "-r", own_realm.realm, "-q", f"cpw -randkey host/{host}"],
                              env={**os.environ, **own_realm.env}, capture_output=True, text=True)
        rekeyed += f'Key for "host/{host}@{own_realm.realm}" randomized' in proc.stdout + proc.stderr
    assert rekeyed
    stale = _doctor(own_realm)
    assert stale[0].startswith("[FAIL] host keytab:") and "does not match the KDC" in stale[0], stale


def test_doctor_without_keytab_names_the_fix(own_realm, tmp_path):
    conf = tmp_path / "ticketd.toml"
    conf.write_text(f'validate_keytab = "{tmp_path / "missing.keytab"}"\n')
    lines = subprocess.run([sys.executable, "-m", "pam_keyinit_py.cli", "doctor", "--socket", "/nonexistent",
                            "--config", str(conf)], env={"PATH": "/usr/bin:/bin", **own_realm.env},
                           capture_output=True, text=True, timeout=60).stdout.splitlines()
    i = next(i for i, line in enumerate(lines) if "host keytab" in line)
    assert lines[i].startswith("[FAIL] host keytab: no key for host/"), lines[i]
    assert "ktadd" in lines[i + 1] and "ipa-getkeytab" in lines[i + 1]
