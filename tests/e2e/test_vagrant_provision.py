"""vagrant/ provisioning, the parts that run on one machine, so the lab cannot rot unnoticed.

kdc.sh runs for real on loopback, in both of its kinds: the MIT realm (the same krb5/realm.sh as
the demo and the tests) and, with KDC_KIND=ad, the Samba AD DC (the same krb5/ad-realm.sh as the
AD tests).  Its output is used as the other boxes use it: kinit with the lab password, kinit -k
with each keytab.  client.sh and nfs.sh stage their configuration under ROOT.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, require, require_root

VAGRANT = REPO / "vagrant"
PROVISION = VAGRANT / "provision"


def free_port() -> int:
    """A port free on 127.0.0.1 for TCP and UDP (the KDC serves both)."""
    import socket

    while True:
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def test_vagrantfile_provisions_each_box_with_its_script() -> None:
    text = (VAGRANT / "Vagrantfile").read_text()
    boxes = re.findall(r'"(\w+)"\s*=>\s*"192\.168\.56\.\d+"', text)
    assert sorted(boxes) == ["client", "kdc", "nfs"]
    assert 'path: "provision/#{name}.sh"' in text
    # KEYINIT_LAB_KDC=ad puts a Samba AD DC on the kdc box through the AD tests' bootstrap.
    assert 'KDC_KIND = ENV.fetch("KEYINIT_LAB_KDC", "mit")' in text and '"KDC_KIND" => KDC_KIND' in text
    kdc = (PROVISION / "kdc.sh").read_text()
    assert 'REALM_SH="$SRC/krb5/realm.sh"' in kdc and 'AD_REALM_SH="$SRC/krb5/ad-realm.sh"' in kdc
    for box in boxes:
        script = PROVISION / f"{box}.sh"
        assert script.exists(), script
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0


@pytest.fixture
def lab(tmp_path: Path):
    require_root()
    require(shutil.which("krb5kdc") or Path("/usr/sbin/krb5kdc").exists(), "krb5kdc not installed")
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SRC": str(REPO), "SHARED": str(tmp_path / "shared"),
        "STATE": str(tmp_path / "state"), "REALM": "LAB.KEYINIT.TEST", "KDC_ADDR": "127.0.0.1",
        "KDC_PORT": str(free_port()), "CLIENT_HOST": "client.lab.keyinit.test",
        "NFS_HOST": "nfs.lab.keyinit.test", "SKIP_APT": "1",
    }
    try:
        yield env
    finally:
        subprocess.run(["bash", str(REPO / "krb5/realm.sh"), "destroy", env["STATE"]], check=False)


def kinit(env: dict[str, str], *args: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
    """kinit into a MEMORY cache against the lab's krb5.conf, as the boxes would use it."""
    return subprocess.run(["kinit", "-c", "MEMORY:lab", *args], input=password, capture_output=True,
                          text=True, timeout=30,
                          env={"PATH": env["PATH"], "KRB5_CONFIG": f"{env['SHARED']}/krb5.conf"})


def test_kdc_provisioning_serves_the_lab_realm(lab: dict[str, str], tmp_path: Path) -> None:
    res = subprocess.run(["bash", str(PROVISION / "kdc.sh")], env=lab, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    shared = Path(lab["SHARED"])
    conf = (shared / "krb5.conf").read_text()
    assert f"kdc = 127.0.0.1:{lab['KDC_PORT']}" in conf
    assert "default_ccache_name = KEYRING:persistent:%{uid}" in conf
    # Where client.sh and nfs.sh install the keytab (not the kdc box's realm directory).
    assert "default_keytab_name = FILE:/etc/krb5.keytab" in conf
    assert oct((shared / "client.keytab").stat().st_mode & 0o777) == "0o600"

    password = (shared / "alice.password").read_text().strip()
    assert password and password not in res.stdout + res.stderr
    assert kinit(lab, "alice", password=password + "\n").returncode == 0
    assert kinit(lab, "alice", password="wrong\n").returncode != 0
    for keytab, princ in (("client.keytab", "host/client.lab.keyinit.test"),
                          ("nfs.keytab", "nfs/nfs.lab.keyinit.test")):
        got = kinit(lab, "-k", "-t", str(shared / keytab), princ)
        assert got.returncode == 0, got.stderr

    # Provisioning twice (vagrant provision) keeps the realm and the password.
    again = subprocess.run(["bash", str(PROVISION / "kdc.sh")], env=lab, capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0, again.stderr
    assert (shared / "alice.password").read_text().strip() == password

    # The other boxes' files, staged under ROOT exactly as they would land on the box.
    for box in ("client", "nfs"):
        root = tmp_path / f"root-{box}"
        staged = subprocess.run(["bash", str(PROVISION / f"{box}.sh")], env={**lab, "ROOT": str(root)},
                                capture_output=True, text=True, timeout=60)
        assert staged.returncode == 0, staged.stdout + staged.stderr
        assert (root / "etc/krb5.conf").read_text() == conf
        assert oct(os.stat(root / "etc/krb5.keytab").st_mode & 0o777) == "0o600"
    sshd_conf = tmp_path / "root-client/etc/ssh/sshd_config.d/keyinit-lab.conf"
    assert "PasswordAuthentication yes" in sshd_conf.read_text()
    assert "sec=krb5" in (tmp_path / "root-nfs/etc/exports.d/keyinit-lab.exports").read_text()


# ------------------------------------------------------------------ KDC_KIND=ad

CLIENT_HOST = "client.lab.keyinit.test"
NFS_HOST = "nfs.lab.keyinit.test"


def _run(argv: list[str], env: dict[str, str],
         password: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, input=password, capture_output=True, text=True, timeout=60, env=env,
                          check=False)


def test_kdc_provisioning_serves_an_ad_realm(ad_realm, tmp_path: Path) -> None:  # noqa: ANN001
    """kdc.sh with KDC_KIND=ad: a Samba AD DC from krb5/ad-realm.sh, an AD user, and the client's
    and nfs's computer accounts, whose keytabs give the armor TGT (NAME$) and serve their SPNs.

    Samba's KDC has no port but 88, so the session's AD DC (ad_realm) steps aside meanwhile.
    """
    from pam_keyinit_py.lab.adrealm import AD_REALM_SH
    from pam_keyinit_py.lab.users import clear_persistent
    from tests.conftest import delete_user, make_user
    from tests.kdc.ticketd import TEST_CONFIG, TicketD, public_tmpdir

    base = public_tmpdir("pkv-ad-")  # test users' krb5 reads krb5.conf from it
    user = make_user("pkv")
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SRC": str(REPO), "SHARED": str(base / "shared"),
        "STATE": str(base / "state"), "REALM": "LAB.KEYINIT.TEST", "KDC_ADDR": "127.0.0.1",
        "KDC_PORT": "88", "CLIENT_HOST": CLIENT_HOST, "NFS_HOST": NFS_HOST, "LAB_USER": user.name,
        "KDC_KIND": "ad", "SKIP_APT": "1",
    }
    shared = Path(env["SHARED"])
    ad_realm.stop_kdc()
    try:
        res = _run(["bash", str(PROVISION / "kdc.sh")], env)
        assert res.returncode == 0, res.stdout + res.stderr
        status = _run(["bash", str(AD_REALM_SH), "status", env["STATE"]], env)
        assert status.returncode == 0 and "realm LAB.KEYINIT.TEST kdc 127.0.0.1:88" in status.stdout
        conf = (shared / "krb5.conf").read_text()
        assert "kdc = 127.0.0.1:88" in conf and "default_realm = LAB.KEYINIT.TEST" in conf
        assert "default_ccache_name = KEYRING:persistent:%{uid}" in conf
        assert "default_keytab_name = FILE:/etc/krb5.keytab" in conf
        password = (shared / f"{user.name}.password").read_text().strip()
        assert password and password not in res.stdout + res.stderr

        krb = {"PATH": env["PATH"], "KRB5_CONFIG": str(shared / "krb5.conf"),
               "KRB5CCNAME": f"FILE:{tmp_path}/cc"}
        assert _run(["kinit", user.name], krb, password + "\n").returncode == 0
        assert _run(["kinit", "-c", "MEMORY:x", user.name], krb, "wrong\n").returncode != 0
        boxes = (("client.keytab", "CLIENT$", [f"host/{CLIENT_HOST}", f"nfs/{CLIENT_HOST}"]),
                 ("nfs.keytab", "NFS$", [f"nfs/{NFS_HOST}", f"host/{NFS_HOST}"]))
        for keytab, account, spns in boxes:
            path = shared / keytab
            assert oct(path.stat().st_mode & 0o777) == "0o600"
            # The computer account gets a TGT from its keys (the FAST armor) ...
            got = _run(["kinit", "-k", "-t", str(path), "-c", "MEMORY:k", account], krb)
            assert got.returncode == 0, got.stderr
            # ... and each SPN's service ticket (asked with the user's TGT) decrypts with the keytab.
            for spn in spns:
                got = _run(["kvno", "-k", str(path), f"{spn}@LAB.KEYINIT.TEST"], krb)
                assert got.returncode == 0 and "keytab entry valid" in got.stdout, got.stdout + got.stderr

        # The client box's keyinit-ticketd, as client.sh configures it: validated with its host/
        # key, armored (fast = "require") with CLIENT$ from the same keytab.
        daemon = TicketD(public_tmpdir("pkv-ticketd-"), {"KRB5_CONFIG": str(shared / "krb5.conf")},
                         **TEST_CONFIG, validate="require", validate_keytab=str(shared / "client.keytab"),
                         validate_principal=f"host/{CLIENT_HOST}@LAB.KEYINIT.TEST", fast="require")
        daemon.start()
        try:
            reply = daemon.request({"op": "auth", "user": user.name, "uid": user.uid, "gid": user.gid,
                                    "password": password})
            log = daemon.log()
        finally:
            daemon.stop()
            shutil.rmtree(daemon.dir, ignore_errors=True)
            clear_persistent(user.uid)
        assert reply["ok"], f"{reply}\n{log}"
        assert reply["principal"] == f"{user.name}@LAB.KEYINIT.TEST"
        assert f"(validated with host/{CLIENT_HOST}@LAB.KEYINIT.TEST)" in log and "not armored" not in log

        # Provisioning twice (vagrant provision) keeps the domain and the password.
        again = _run(["bash", str(PROVISION / "kdc.sh")], env)
        assert again.returncode == 0, again.stderr
        assert (shared / f"{user.name}.password").read_text().strip() == password
        assert _run(["kinit", "-c", "MEMORY:y", user.name], krb, password + "\n").returncode == 0

        # The client box's files, staged under ROOT as they would land on it.
        root = tmp_path / "root-client"
        staged = _run(["bash", str(PROVISION / "client.sh")], {**env, "ROOT": str(root)})
        assert staged.returncode == 0, staged.stdout + staged.stderr
        assert (root / "etc/krb5.conf").read_text() == (shared / "krb5.conf").read_text()
        assert oct(os.stat(root / "etc/krb5.keytab").st_mode & 0o777) == "0o600"
    finally:
        subprocess.run(["bash", str(AD_REALM_SH), "destroy", env["STATE"]], check=False)
        shutil.rmtree(base, ignore_errors=True)
        delete_user(user)
        ad_realm.start_kdc()
