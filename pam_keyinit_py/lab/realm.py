"""A throwaway MIT Kerberos realm on loopback, driven through the one bootstrap ``krb5/realm.sh``.

The tests, ``make demo`` and the benchmarks use :class:`Realm`; vagrant provisioning calls the
shell script directly.  The script creates the database (kdb5_util), runs krb5kdc on a free
127.0.0.1 port and adds principals with kadmin.local; this class only runs it and remembers
where things are.  Passwords go to the script on stdin, never on a command line.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from .scriptrealm import ScriptRealm

#: krb5/realm.sh in a source checkout (the package is installed editable).
REALM_SH = Path(__file__).resolve().parents[2] / "krb5" / "realm.sh"


class RealmError(RuntimeError):
    """realm.sh failed; the message is its stderr (which never holds a password)."""


def available() -> bool:
    """True when the MIT KDC tools the bootstrap needs are installed."""
    return REALM_SH.exists() and all(
        shutil.which(tool) or os.access(f"/usr/sbin/{tool}", os.X_OK)
        for tool in ("krb5kdc", "kdb5_util", "kadmin.local")
    )


def _pid(pidfile: Path, comm: str) -> int:
    """The pid in ``pidfile`` if that process lives and is ``comm`` (never a recycled pid), else 0."""
    try:
        pid = int(pidfile.read_text().strip())
        if Path(f"/proc/{pid}/comm").read_text().strip() == comm:
            return pid
    except (OSError, ValueError):
        pass
    return 0


class Realm(ScriptRealm):
    """A running (or stopped) throwaway realm whose files live in :attr:`dir`.

    ``Realm.start(dir)`` creates the database on first use and starts the KDC; ``stop_kdc()`` and
    ``start_kdc()`` take only the KDC down and up again (same port, same database); ``stop()``
    removes everything.
    """

    SCRIPT = REALM_SH
    ERROR = RealmError
    TEMP_PREFIX = "pkk-realm-"

    def __init__(self, directory: str | os.PathLike[str], *, owns_dir: bool = False) -> None:
        super().__init__(directory, owns_dir=owns_dir)
        self.realm = ""
        self.kdc_port = 0
        self.maxlife = ""
        self.maxrenew = ""
        self.replica_port = 0

    def _load(self) -> None:
        values = self._env_file()
        self.realm = values["REALM"]
        self.kdc_port = int(values["PORT"])
        self.maxlife = values.get("MAXLIFE", "")
        self.maxrenew = values.get("MAXRENEW", "")
        self.replica_port = int(values.get("REPLICA_PORT") or 0)

    # -- lifecycle ---------------------------------------------------------------------------
    @classmethod
    def start(
        cls,
        directory: str | os.PathLike[str] | None = None,
        realm: str = "PKK.TEST",
        *,
        maxlife: str = "10m",
        maxrenew: str = "1h",
        kdc_relations: tuple[str, ...] = (),
        otp_server: str | os.PathLike[str] | None = None,
    ) -> Realm:
        """Create (if needed) and start a realm in ``directory`` (a new 0755 temp dir when None).

        Other users can read krb5.conf only if every parent of ``directory`` lets them in;
        pass None for a realm that test users' programs (klist, kinit) use.

        ``maxlife``/``maxrenew`` are the realm caps, which also bound the krbtgt principal,
        in kadmin duration syntax ("60s", "10m").  ``kdc_relations`` go into the realm's
        kdc.conf stanza (``"disable_encrypted_timestamp = true"``).  ``otp_server`` (a UNIX
        socket path, see lab/radius.py) gives kdc.conf an ``[otp]`` DEFAULT token type whose
        RADIUS server it is: the KDC's otp preauth asks it about principals with the ``otp``
        string attribute.
        """
        relations = [arg for rel in kdc_relations for arg in ("-x", rel)]
        if otp_server is not None:
            relations += ["-O", str(otp_server)]
        return cls._started(directory, "-r", realm, "-l", maxlife, "-R", maxrenew, *relations)

    def kdc_pid(self) -> int:
        """The primary krb5kdc's pid (0 when it does not run): for SIGSTOP/SIGKILL in failover tests."""
        return _pid(self.dir / "krb5kdc.pid", "krb5kdc")

    def wait_stopped(self, timeout: float = 10.0) -> None:
        """Wait until the primary krb5kdc has exited (after a signal sent by the caller)."""
        deadline = time.monotonic() + timeout
        while self.kdc_pid() and time.monotonic() < deadline:
            time.sleep(0.02)

    # -- the replica -------------------------------------------------------------------------
    def start_replica(self) -> None:
        """``realm.sh replica DIR``: a second krb5kdc fed by kprop/kpropd from the primary.

        krb5.conf then lists both KDCs (primary first) and ``primary_kdc``; :attr:`replica_port`
        is the replica's port.  A second call restarts a stopped replica with its database.
        """
        self._run("replica", str(self.dir), "start")
        self._load()

    def stop_replica(self) -> None:
        """Stop the replica's krb5kdc and kpropd (its database stays)."""
        self._run("replica", str(self.dir), "stop")

    def propagate(self) -> None:
        """``kdb5_util dump`` on the primary, then ``kprop`` to the replica's kpropd."""
        self._run("replica", str(self.dir), "kprop")

    def replica_pid(self) -> int:
        """The replica krb5kdc's pid (0 when it does not run)."""
        return _pid(self.dir / "replica" / "krb5kdc.pid", "krb5kdc")

    # -- principals and keytabs --------------------------------------------------------------
    def principal(self, name: str) -> str:
        """``name@REALM`` unless ``name`` already names a realm."""
        return name if "@" in name else f"{name}@{self.realm}"

    def add_principal(
        self,
        name: str,
        password: str | None = None,
        maxlife: str | int | None = None,
        maxrenew: str | int | None = None,
        *,
        nokey: bool = False,
    ) -> str:
        """kadmin addprinc (or modprinc if it exists); random key when ``password`` is None, no
        key at all with ``nokey`` (an OTP-only principal: no password can log it in).

        ``maxlife``/``maxrenew`` are kadmin durations or seconds.  Returns the full principal.
        """
        args = ["addprinc", str(self.dir), name]
        if maxlife is not None:
            args += ["-maxlife", f"{maxlife}s" if isinstance(maxlife, int) else maxlife]
        if maxrenew is not None:
            args += ["-maxrenewlife", f"{maxrenew}s" if isinstance(maxrenew, int) else maxrenew]
        if password is None:
            self._run(*args, "-nokey" if nokey else "-randkey")
        else:
            self._run(*args, "-pw-stdin", stdin=password + "\n")
        return self.principal(name)

    def modify_principal(self, name: str, *args: str) -> None:
        """kadmin modprinc ARGS NAME: ``+requires_preauth``, ``+needchange``, ``-allow_tix``..."""
        self._run("modprinc", str(self.dir), name, *args)

    def set_string(self, name: str, key: str, value: str) -> None:
        """kadmin setstr NAME KEY VALUE (``require_auth fast``: tickets for NAME need that indicator)."""
        self._run("setstr", str(self.dir), name, key, value)

    def host_keytab(self, *hosts: str) -> Path:
        """``realm.sh hostkeytab``: new random-key ``host/<HOST>`` principals in :attr:`keytab_path`.

        A new realm already has one for localhost and this machine's names (``realm.sh start``),
        so ``validate_principal``'s default and sshd's GSSAPI acceptor find their key; call
        this to replace it (new keys, new kvno).
        """
        return Path(self._run("hostkeytab", str(self.dir), *hosts).strip().splitlines()[-1])

    @property
    def keytab_path(self) -> Path:
        """The realm's host keytab (0600), krb5.conf's ``default_keytab_name``."""
        return self.dir / "krb5.keytab"

    def add_policy(self, name: str, *options: str) -> None:
        """kadmin addpol OPTIONS NAME (e.g. ``-minlength``, ``12``); an existing policy is kept."""
        self._run("addpol", str(self.dir), name, *options)

    # -- kadmind: the kpasswd service --------------------------------------------------------
    def start_kadmind(self) -> None:
        """``realm.sh kadmind DIR``: kadmind on the realm's loopback kadmin and kpasswd ports."""
        self._run("kadmind", str(self.dir), "start")

    def stop_kadmind(self) -> None:
        """Stop kadmind (``stop()`` does it too)."""
        self._run("kadmind", str(self.dir), "stop")

    # -- where things are --------------------------------------------------------------------
    @property
    def krb5_conf(self) -> Path:
        """The generated krb5.conf (default_realm, KDC on loopback, KEYRING:persistent default)."""
        return self.dir / "krb5.conf"

    @property
    def kdc_conf(self) -> Path:
        """The generated kdc.conf."""
        return self.dir / "kdc.conf"

    @property
    def env(self) -> dict[str, str]:
        """Environment for krb5 programs and libraries that should use this realm."""
        return {"KRB5_CONFIG": str(self.krb5_conf), "KRB5_KDC_PROFILE": str(self.kdc_conf)}
