"""`make install` for real: venv in /opt/pam-keyinit-py, /lib/security/pam_keyinit_py.py and the service
files; a real sshd login through the installed shim (named relative to /lib/security, as users write
it); `keyinit doctor` on the configured host and on a broken one; then uninstall.

Skipped (or failed in CI) when an install is already there: the test never clobbers one.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from pam_keyinit_py.commands.install import DEFAULT_PREFIX
from pam_keyinit_py.lab.sshd import PASSWORD
from pam_keyinit_py.pam.shim import SHIM_PATH
from tests.conftest import REPO, require

pytestmark = pytest.mark.timeout(600)


def test_make_install_login_uninstall(sshd_factory, pam_user, realm, kdc_user, tmp_path) -> None:
    require(not SHIM_PATH.exists() and not Path(DEFAULT_PREFIX).exists(),
            f"{SHIM_PATH} or {DEFAULT_PREFIX} already present; not touching an existing install")
    try:
        res = subprocess.run(["make", "-C", str(REPO), "install"], capture_output=True, text=True,
                             timeout=540)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        assert SHIM_PATH.exists()
        assert str(Path(DEFAULT_PREFIX) / "lib") in SHIM_PATH.read_text()
        assert not (Path(DEFAULT_PREFIX) / "lib/python3.11/site-packages/__editable__").exists()

        def stack(_pamwrap) -> list[str]:
            return ["auth required pam_unix.so", "account required pam_unix.so",
                    "session required pam_python.so pam_keyinit_py.py force revoke",
                    "session required pam_unix.so"]

        server = sshd_factory(stack, mode=PASSWORD)
        login = server.login(pam_user.name, pam_user.password, "keyctl rdescribe @s; keyctl show @s")
        assert login.returncode == 0, login.stderr + server.log()[-3000:]
        lines = login.stdout.splitlines()
        assert lines[0] == f"keyring;{pam_user.uid};{pam_user.gid};3f030000;_ses"
        assert lines[3].endswith(f"\\_ keyring: _uid.{pam_user.uid}")

        # The service side of the install: unit pointing into the venv, scripts on PATH, config.
        unit = Path("/etc/systemd/system/keyinit-ticketd.service").read_text()
        assert f"ExecStart={DEFAULT_PREFIX}/bin/keyinit-ticketd --config /etc/keyinit/ticketd.toml" in unit
        assert Path("/etc/keyinit/ticketd.toml").exists()
        assert Path("/usr/share/pam-configs/keyinit").exists()
        assert "Auth-Type: Primary" in Path("/usr/share/pam-configs/keyinit-krb5").read_text()
        helper = subprocess.run(["/usr/local/bin/keyinit-ticketd", "--help"], capture_output=True, text=True)
        assert helper.returncode == 0 and "--config" in helper.stdout
        if shutil.which("man"):  # `man keyinit-ticketd` on the live system, through the default manpath
            where = subprocess.run(["man", "-w", "keyinit-ticketd"], capture_output=True, text=True)
            found = Path(where.stdout.strip()).resolve()  # /usr/local/man -> share/man on Debian
            assert found == Path("/usr/local/share/man/man8/keyinit-ticketd.8").resolve(), where

        check_doctor(realm, kdc_user, tmp_path)
    finally:
        res = subprocess.run(["make", "-C", str(REPO), "uninstall"], capture_output=True, text=True,
                             timeout=120)
    assert res.returncode == 0, res.stderr
    assert not SHIM_PATH.exists() and not Path(DEFAULT_PREFIX).exists()
    for gone in ("/etc/systemd/system/keyinit-ticketd.service", "/usr/local/bin/keyinit-ticketd",
                 "/etc/keyinit/ticketd.toml", "/usr/share/pam-configs/keyinit",
                 "/usr/share/pam-configs/keyinit-krb5", "/usr/share/pam-keyinit-py",
                 "/usr/local/share/man/man8/keyinit-ticketd.8", "/usr/local/share/man/man1/keyinit.1"):
        assert not Path(gone).exists(), gone


def doctor(args: list[str], krb5_conf: Path) -> subprocess.CompletedProcess[str]:
    """The installed `keyinit doctor`, with the test realm as the host's Kerberos configuration."""
    return subprocess.run(["/usr/local/bin/keyinit", "doctor", *args], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "KRB5_CONFIG": str(krb5_conf)}, timeout=60)


def check_doctor(realm, kdc_user, tmp_path: Path) -> None:
    """doctor passes on a configured host and names the broken link on a misconfigured one."""
    from pam_keyinit_py.lab.ticketd import TicketD

    pam_dir = tmp_path / "pam.d"
    pam_dir.mkdir()
    for service in ("sshd", "login"):  # the shipped examples are what a configured host has
        (pam_dir / service).write_text((REPO / "etc/pam.d" / f"{service}.example").read_text())
    sysctl = Path("/proc/sys/kernel/keys")
    saved = {name: (sysctl / name).read_text() for name in ("maxkeys", "maxbytes")}
    daemon = TicketD(tmp_path / "ticketd", realm.env)
    try:
        # etc/sysctl.d/60-keyinit-keys.conf, applied for the test and restored below
        for line in (REPO / "etc/sysctl.d/60-keyinit-keys.conf").read_text().splitlines():
            if line.startswith("kernel.keys."):
                key, _, value = line.partition("=")
                (sysctl / key.strip().removeprefix("kernel.keys.")).write_text(value.strip())
        daemon.start()
        user = {"user": kdc_user.name, "uid": kdc_user.uid, "gid": kdc_user.gid}
        assert daemon.request({"op": "auth", **user, "password": kdc_user.password})["ok"]
        assert daemon.request({"op": "open", **user})["ok"]
        args = ["--user", kdc_user.name, "--socket", daemon.socket, "--pam-dir", str(pam_dir)]
        good = doctor(args, realm.krb5_conf)
        assert good.returncode == 0, good.stdout + good.stderr
        assert "[FAIL]" not in good.stdout and "checks passed" in good.stdout
        assert f"ticket of '{kdc_user.name}' as rpc.gssd sees it: KEYRING:persistent:{kdc_user.uid}" \
            in good.stdout

        # Break two links: the service is gone, and the login stack lacks the hook.
        daemon.stop()
        (pam_dir / "login").write_text("auth required pam_unix.so\nsession required pam_unix.so\n")
        bad = doctor(args, realm.krb5_conf)
        assert bad.returncode == 1, bad.stdout
        assert "[FAIL] keyinit-ticketd" in bad.stdout
        assert "[FAIL] PAM stack 'login'" in bad.stdout and "pam-auth-update --enable keyinit" in bad.stdout
        assert "[ OK ] PAM stack 'sshd'" in bad.stdout
    finally:
        daemon.stop()
        for name, value in saved.items():
            (sysctl / name).write_text(value)


def test_make_install_destdir_man_pages(tmp_path: Path) -> None:
    """``make install DESTDIR=...``: the five manual pages land under usr/local/share/man, where
    ``man`` finds them by name (MANPATH pointed at the staged tree); the prefix venv has the
    metrics library; ``make uninstall`` takes the pages away again."""
    from pam_keyinit_py.commands.install import MAN_PAGES

    require(shutil.which("man"), "man-db is not installed")
    dest, prefix = tmp_path / "root", "/opt/pam-keyinit-py-destdir-test"
    make = ["make", "-C", str(REPO), f"DESTDIR={dest}", f"PREFIX={prefix}"]
    res = subprocess.run([*make, "install"], capture_output=True, text=True, timeout=540)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    try:
        env = {"PATH": "/usr/bin:/bin", "MANPATH": str(dest / "usr/local/share/man"), "MANPAGER": "cat",
               "MANWIDTH": "80", "LC_ALL": "C.UTF-8"}
        for page in MAN_PAGES:
            name, section = page.rsplit(".", 1)
            where = subprocess.run(["man", "-w", section, name], capture_output=True, text=True, env=env)
            assert where.stdout.strip() == str(dest / f"usr/local/share/man/man{section}/{page}"), where
        shown = subprocess.run(["man", "keyinit-ticketd"], capture_output=True, text=True, env=env)
        assert shown.returncode == 0, shown.stderr
        assert "keyinit-ticketd - keep users' Kerberos TGTs" in shown.stdout
        assert "KEYINIT_UID" in shown.stdout and "keyinit_renewals_total" in shown.stdout
        venv_python = dest / prefix.lstrip("/") / "bin/python"
        imported = subprocess.run([str(venv_python), "-I", "-c", "import prometheus_client"],
                                  capture_output=True, text=True)
        assert imported.returncode == 0, imported.stderr
    finally:
        res = subprocess.run([*make, "uninstall"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert not any((dest / "usr/local/share/man").rglob("*.[158]"))
