"""vagrant/ provisioning, the parts that run on one machine, so the lab cannot rot unnoticed.

kdc.sh runs for real on loopback (the same krb5/realm.sh as the demo and the tests), and its
output is used as the other boxes use it: kinit with the lab password, kinit -k with each
keytab.  client.sh and nfs.sh stage their configuration under ROOT.
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
