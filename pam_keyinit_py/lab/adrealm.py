"""A throwaway Active Directory realm (a Samba AD DC) on loopback, through ``krb5/ad-realm.sh``.

The AD counterpart of :mod:`.realm`: the script provisions the domain into a private directory
with a private smb.conf, starts samba's KDC on 127.0.0.1:88 and ::1:88, and manages users
(sAMAccountName, UPN, group memberships that grow the PAC) and the host's computer account
(``NAME$`` with ``host/`` SPNs, as a join makes it) whose AES keys it exports to a keytab.
This class only runs it and remembers where things are.
Passwords go to the script on stdin, never on a command line.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .scriptrealm import ScriptRealm

#: krb5/ad-realm.sh in a source checkout (the package is installed editable).
AD_REALM_SH = Path(__file__).resolve().parents[2] / "krb5" / "ad-realm.sh"


class AdRealmError(RuntimeError):
    """ad-realm.sh failed; the message is its stderr (which never holds a password)."""


def available() -> str | None:
    """None when a Samba AD DC can run here, else what is missing."""
    if not AD_REALM_SH.exists():
        return f"{AD_REALM_SH} missing"
    if not (shutil.which("samba-tool") and os.access("/usr/sbin/samba", os.X_OK)):
        return "samba AD DC not installed (make setup: samba samba-ad-dc samba-ad-provision)"
    if not Path("/usr/share/samba/setup/ad-schema").is_dir():
        return "samba-ad-provision not installed"
    return None


class AdRealm(ScriptRealm):
    """A provisioned (running or stopped) Samba AD domain whose files live in :attr:`dir`."""

    SCRIPT = AD_REALM_SH
    ERROR = AdRealmError
    TEMP_PREFIX = "pkk-ad-"
    #: Samba's KDC listens on the well-known port; it has no setting for another.
    kdc_port = 88

    def __init__(self, directory: str | os.PathLike[str], *, owns_dir: bool = False) -> None:
        super().__init__(directory, owns_dir=owns_dir)
        self.realm = ""
        self.dns_domain = ""
        self.life_hours = 0
        self.renew_hours = 0

    @classmethod
    def _script_env(cls) -> dict[str, str]:
        # A fixed PATH: samba-tool and the script's python are Debian's, never a venv's or pyenv's.
        return {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "LANG": "C"}

    def _load(self) -> None:
        values = self._env_file()
        self.realm = values["REALM"]
        self.dns_domain = values["DNSDOMAIN"]
        self.life_hours = int(values["LIFE_HOURS"])
        self.renew_hours = int(values["RENEW_HOURS"])

    @classmethod
    def start(cls, directory: str | os.PathLike[str] | None = None, realm: str = "AD.PKK.TEST", *,
              life_hours: int = 10, renew_hours: int = 168) -> AdRealm:
        """Provision (if needed) and start the domain in ``directory`` (a new 0755 temp dir when None).

        ``life_hours``/``renew_hours`` are the KDC's user ticket life and renewal limit
        (AD's defaults: 10 h and 7 days).
        """
        return cls._started(directory, "-r", realm, "-l", str(life_hours), "-R", str(renew_hours))

    # -- users and keytabs -------------------------------------------------------------------
    def principal(self, name: str) -> str:
        """``name@REALM`` unless ``name`` already names a realm."""
        return name if "@" in name else f"{name}@{self.realm}"

    def upn(self, name: str) -> str:
        """The default userPrincipalName of ``name``: ``name@<dns domain>``."""
        return f"{name}@{self.dns_domain}"

    def add_user(self, name: str, password: str, *, groups: int = 0, upn: str | None = None) -> str:
        """samba: create (or re-password) user ``name`` in ``groups`` new groups; return its principal."""
        args = ["adduser", str(self.dir), name, "-pw-stdin", "-groups", str(groups)]
        if upn:
            args += ["-upn", upn]
        self._run(*args, stdin=password + "\n")
        return self.principal(name)

    def delete_user(self, name: str) -> None:
        """Remove the user and the groups add_user made for it."""
        self._run("deluser", str(self.dir), name)

    def host_keytab(self, *hosts: str) -> Path:
        """``ad-realm.sh hostkeytab``: new password for the host's computer account, keys re-exported."""
        return Path(self._run("hostkeytab", str(self.dir), *hosts).strip().splitlines()[-1])

    @property
    def keytab_path(self) -> Path:
        """The computer account's AES keytab (0600: ``NAME$`` and ``host/`` SPNs), krb5.conf's
        ``default_keytab_name``."""
        return self.dir / "krb5.keytab"

    @property
    def krb5_conf(self) -> Path:
        """The generated krb5.conf (KDC 127.0.0.1:88, KEYRING:persistent default ccache)."""
        return self.dir / "krb5.conf"

    @property
    def smb_conf(self) -> Path:
        """The domain's private smb.conf (never /etc/samba/smb.conf)."""
        return self.dir / "etc" / "smb.conf"

    @property
    def env(self) -> dict[str, str]:
        """Environment for krb5 programs and libraries that should use this realm."""
        return {"KRB5_CONFIG": str(self.krb5_conf)}
