"""What the two lab realms share: a bootstrap script with the same verbs, driven from Python.

``krb5/realm.sh`` (MIT) and ``krb5/ad-realm.sh`` (Samba AD DC) both take ``start DIR``,
``stop DIR``, ``destroy DIR`` and ``status DIR`` and leave ``DIR/realm.env``; :class:`ScriptRealm`
runs one of them and owns the realm's lifecycle (create in a fresh 0755 directory, start and
stop the KDC, tear down, context manager).  :class:`~.realm.Realm` and
:class:`~.adrealm.AdRealm` add what each realm has of its own.  Passwords go to a script on
stdin, never on a command line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import ClassVar, TypeVar

_R = TypeVar("_R", bound="ScriptRealm")


class ScriptRealm:
    """A realm (running or stopped) made by :attr:`SCRIPT`, whose files live in :attr:`dir`."""

    #: The bootstrap script, its error class and the prefix of the directories it gets.
    SCRIPT: ClassVar[Path]
    ERROR: ClassVar[type[RuntimeError]]
    TEMP_PREFIX: ClassVar[str]

    def __init__(self, directory: str | os.PathLike[str], *, owns_dir: bool = False) -> None:
        self.dir = Path(directory).resolve()
        self._owns_dir = owns_dir

    @classmethod
    def _script_env(cls) -> dict[str, str]:
        """The script's environment: PATH with the sbin directories, the C locale, nothing else."""
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin") + ":/usr/sbin:/sbin", "LANG": "C"}

    def _run(self, *args: str, stdin: str | None = None) -> str:
        """Run ``SCRIPT args...``; its stdout, or :attr:`ERROR` with its stderr (never a password)."""
        proc = subprocess.run(["/bin/bash", str(self.SCRIPT), *args], input=stdin, capture_output=True,
                              text=True, env=self._script_env(), check=False)
        if proc.returncode != 0:
            raise self.ERROR(f"{self.SCRIPT.name} {args[0]}: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc.stdout

    def _env_file(self) -> dict[str, str]:
        """``DIR/realm.env`` (NAME='value' lines the script wrote) as a dict."""
        values: dict[str, str] = {}
        for line in (self.dir / "realm.env").read_text().splitlines():
            name, _, value = line.partition("=")
            values[name] = value.strip("'\"")
        return values

    def _load(self) -> None:
        """Read what the script wrote into ``realm.env`` (each realm its own fields)."""
        raise NotImplementedError

    @classmethod
    def _started(cls: type[_R], directory: str | os.PathLike[str] | None, *start_args: str) -> _R:
        """``SCRIPT start DIR start_args...`` in ``directory`` (a new 0755 temp dir when None: test
        users' programs must read its krb5.conf), then its realm.env; a realm half made (files,
        or a KDC that never answered) is destroyed before the error goes up."""
        owns = directory is None
        if directory is None:
            directory = tempfile.mkdtemp(prefix=cls.TEMP_PREFIX)
            os.chmod(directory, 0o755)
        self = cls(directory, owns_dir=owns)
        try:
            self._run("start", str(self.dir), *start_args)
            self._load()
        except BaseException:
            subprocess.run(["/bin/bash", str(cls.SCRIPT), "destroy", str(self.dir)], capture_output=True,
                           check=False)
            if owns:
                shutil.rmtree(self.dir, ignore_errors=True)
            raise
        return self

    def keytab(self, principals: list[str] | str, path: str | os.PathLike[str]) -> Path:
        """``SCRIPT ktadd DIR PATH PRINC...``: the principals' current keys into the keytab at
        ``path`` (MIT: kadmin ktadd -norandkey; AD: samba-tool domain exportkeytab)."""
        if isinstance(principals, str):
            principals = [principals]
        self._run("ktadd", str(self.dir), str(path), *principals)
        return Path(path)

    def start_kdc(self) -> None:
        """Start the KDC again with the same database ("KDC back")."""
        self._run("start", str(self.dir))

    def stop_kdc(self) -> None:
        """Stop the KDC; the database stays ("KDC down")."""
        self._run("stop", str(self.dir))

    def running(self) -> bool:
        """True when the script's ``status`` finds its KDC process alive."""
        return subprocess.run(["/bin/bash", str(self.SCRIPT), "status", str(self.dir)],
                              capture_output=True, check=False).returncode == 0

    def stop(self) -> None:
        """Stop the KDC and remove the realm's files (and its directory, when it made it)."""
        self._run("destroy", str(self.dir))
        if self._owns_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self: _R) -> _R:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
