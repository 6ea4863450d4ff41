"""krb5/realm.sh and lab.Realm: a real throwaway MIT realm on loopback."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from pam_keyinit_py.lab.realm import REALM_SH, Realm, RealmError, available
from tests.conftest import require


def _kinit(realm: Realm, principal: str, password: str, ccache: str, *extra: str) -> int:
    env = {**os.environ, **realm.env, "KRB5CCNAME": ccache}
    return subprocess.run(["kinit", *extra, principal], input=password + "\n", env=env,
                          capture_output=True, text=True).returncode


@pytest.fixture(scope="module")
def tool_kinit() -> None:
    require(shutil.which("kinit") is not None, "kinit (krb5-user) not installed")


def test_realm_sh_has_no_python_package() -> None:
    """krb5/ must never shadow pykrb5's `import krb5`."""
    here = REALM_SH.parent
    assert not list(here.glob("*.py")) and not (here / "__init__.py").exists()
    import krb5

    assert "site-packages" in krb5.__file__


def test_generated_krb5_conf(realm: Realm) -> None:
    text = realm.krb5_conf.read_text()
    assert f"default_realm = {realm.realm}" in text
    assert f"kdc = 127.0.0.1:{realm.kdc_port}" in text
    for line in ("dns_lookup_kdc = false", "dns_lookup_realm = false", "rdns = false",
                 "default_ccache_name = KEYRING:persistent:%{uid}"):
        assert line in text
    assert oct(realm.krb5_conf.stat().st_mode & 0o777) == "0o644"
    assert realm.env == {"KRB5_CONFIG": str(realm.krb5_conf), "KRB5_KDC_PROFILE": str(realm.kdc_conf)}


def test_password_principal_and_lifetimes(realm: Realm, tmp_path, tool_kinit) -> None:
    """addprinc -maxlife caps the ticket the KDC issues; the password reaches kadmin on stdin."""
    import krb5

    principal = realm.add_principal("pkkrealm1", "s3cret-pw", maxlife=30, maxrenew="2m")
    cc = f"FILE:{tmp_path}/cc"
    assert _kinit(realm, principal, "s3cret-pw", cc, "-r", "5m") == 0
    assert _kinit(realm, principal, "wrong", f"FILE:{tmp_path}/cc2") != 0
    ctx = krb5.init_context()  # a FILE cache needs no profile to be read
    cache = krb5.cc_resolve(ctx, cc.encode())
    creds = [c for c in cache if c.server.components[0] == b"krbtgt"][0]
    t = creds.times
    assert 0 < t.endtime - t.starttime <= 30
    assert 0 < t.renew_till - t.starttime <= 120
    assert creds.ticket_flags & krb5.TicketFlags.renewable


def test_addprinc_is_idempotent_and_keytab(realm: Realm, tmp_path, tool_kinit) -> None:
    realm.add_principal("host/pkk.test")
    realm.add_principal("host/pkk.test", maxlife="45s")  # exists: modprinc, no error
    kt = realm.keytab("host/pkk.test", tmp_path / "host.keytab")
    env = {**os.environ, **realm.env, "KRB5CCNAME": f"FILE:{tmp_path}/cc"}
    r = subprocess.run(["kinit", "-k", "-t", str(kt), realm.principal("host/pkk.test")], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    with pytest.raises(RealmError):
        realm.keytab("no/such-principal", tmp_path / "x.keytab")


def test_kdc_down_and_back_keeps_database(realm: Realm, tmp_path, tool_kinit) -> None:
    principal = realm.add_principal("pkkrealm2", "pw-two")
    port = realm.kdc_port
    realm.stop_kdc()
    try:
        assert not realm.running()
        assert _kinit(realm, principal, "pw-two", f"FILE:{tmp_path}/a") != 0
    finally:
        realm.start_kdc()
    assert realm.running() and realm.kdc_port == port
    assert _kinit(realm, principal, "pw-two", f"FILE:{tmp_path}/b") == 0


def test_two_realms_side_by_side_and_cleanup(tmp_path) -> None:
    """Each realm gets its own free port; stop() removes everything it wrote."""
    require(available(), "MIT KDC tools not installed")
    a = Realm.start(tmp_path / "a", "PKKA.TEST", maxlife="60s")
    try:
        b = Realm.start(None, "PKKB.TEST")
        try:
            assert a.kdc_port != b.kdc_port and a.running() and b.running()
        finally:
            bdir = b.dir
            b.stop()
        assert not bdir.exists()
    finally:
        a.stop()
    assert not (tmp_path / "a" / "principal").exists()


def test_realm_sh_bad_input(tmp_path) -> None:
    r = subprocess.run(["bash", str(REALM_SH), "frobnicate"], capture_output=True, text=True)
    assert r.returncode != 0 and "unknown command" in r.stderr
    r = subprocess.run(["bash", str(REALM_SH), "stop", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode != 0 and "no realm here" in r.stderr


def _script(path: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin") + ":/usr/sbin:/sbin", "LANG": "C"}
    return subprocess.run(["bash", str(path), *args], cwd=cwd, capture_output=True, text=True, env=env)


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie nobody has reaped yet counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_bootstraps_run_from_a_copy_of_krb5_and_any_cwd(tmp_path) -> None:
    """realm.sh and ad-realm.sh source common.sh from their own directory, not the cwd: a copy of
    krb5/ (vagrant syncs the tree to /src) run from an unrelated directory answers every shared
    verb as before -- usage (exit 2), unknown command, "no realm here", and, for the MIT realm,
    start, status, env, stop of a SIGSTOPped KDC (stop_pidfile's SIGCONT first), status 3, destroy."""
    copy = tmp_path / "copy" / "krb5"
    shutil.copytree(REALM_SH.parent, copy)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name, noun in (("realm.sh", "realm"), ("ad-realm.sh", "AD realm")):
        r = _script(copy / name, "help", cwd=elsewhere)
        assert r.returncode == 2 and f"{name} status DIR" in r.stderr and "#" not in r.stderr, r.stderr
        r = _script(copy / name, "frobnicate", cwd=elsewhere)
        assert r.returncode == 2 and r.stderr.startswith(f"{name}: unknown command frobnicate\n"), r.stderr
        r = _script(copy / name, "status", str(elsewhere), cwd=elsewhere)
        assert r.returncode == 1, r.stderr
        assert r.stderr == f"{name}: {elsewhere}: no {noun} here (run: {name} start {elsewhere})\n"

    require(available(), "MIT KDC tools not installed")
    rdir = tmp_path / "realm"
    sh = copy / "realm.sh"
    try:
        r = _script(sh, "start", str(rdir), "-r", "PKKCOPY.TEST", cwd=elsewhere)
        assert r.returncode == 0, r.stderr
        names = [line.split("=", 1)[0] for line in r.stdout.splitlines()]
        assert names == ["export KRB5_CONFIG", "export KRB5_KDC_PROFILE", "export REALM", "export KDC_PORT"]
        assert _script(sh, "env", str(rdir), cwd=elsewhere).stdout == r.stdout
        port = r.stdout.splitlines()[-1].split("=", 1)[1]
        status = _script(sh, "status", str(rdir), cwd=elsewhere)
        pid = int((rdir / "krb5kdc.pid").read_text())
        assert status.returncode == 0, status.stderr
        assert status.stdout == f"realm PKKCOPY.TEST kdc 127.0.0.1:{port} pid {pid}\n"
        os.kill(pid, signal.SIGSTOP)
        assert _script(sh, "stop", str(rdir), cwd=elsewhere).returncode == 0
        assert not _alive(pid) and not (rdir / "krb5kdc.pid").exists()
        # It exited on SIGTERM (continued first), not on the SIGKILL that ends a 5 s wait.
        assert f"krb5kdc[{pid}](info): shutting down" in (rdir / "kdc.log").read_text()
        status = _script(sh, "status", str(rdir), cwd=elsewhere)
        assert status.returncode == 3
        assert status.stdout == f"realm PKKCOPY.TEST kdc 127.0.0.1:{port} stopped\n"
    finally:
        _script(sh, "destroy", str(rdir), cwd=elsewhere)
    assert not rdir.exists()
