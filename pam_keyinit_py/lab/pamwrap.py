"""libpam from C hosts without touching /etc/pam.d: pam_wrapper's private service dir + pamtester.

``LD_PRELOAD=libpam_wrapper.so PAM_WRAPPER=1 PAM_WRAPPER_SERVICE_DIR=<dir>``
makes the real libpam read service files from ``<dir>`` (see pam_wrapper(1)).
Modules are the real ones (pam_python.so, pam_keyinit.so, pam_exec.so); only
the configuration directory is private.  pam_wrapper also routes pam_syslog()
to the host's stderr (``PWRAP_ERROR ... SYSLOG(<prio>): <text>``), which is how
tests read what a module logged.

python-pam cannot host pam_python.so in-process (it segfaults without the
GIL), hence pamtester, a C program.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..pam.shim import render, repo_paths

PAM_PYTHON = "/lib/security/pam_python.so"
PAMTESTER = "pamtester"
LIBPAM_WRAPPER = "libpam_wrapper.so"

# pamtester knows no PAM_DELETE_CRED; this expression has that bit (0x4) and not ESTABLISH.
SETCRED_DELETE = (
    "setcred(~PAM_ESTABLISH_CRED&~PAM_REINITIALIZE_CRED&~PAM_REFRESH_CRED&~PAM_SILENT"
    "&~PAM_DISALLOW_NULL_AUTHTOK&~PAM_CHANGE_EXPIRED_AUTHTOK)"
)
SETCRED_ESTABLISH = "setcred(PAM_ESTABLISH_CRED)"


def available() -> str | None:
    """None when pamtester, pam_wrapper and pam_python.so are all present, else what is missing."""
    if not shutil.which(PAMTESTER):
        return "pamtester is not installed"
    if not any(Path(d, LIBPAM_WRAPPER).exists() for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib", "/lib")):
        return "libpam_wrapper.so is not installed (libpam-wrapper)"
    if not Path(PAM_PYTHON).exists():
        return f"{PAM_PYTHON} is not installed (libpam-python)"
    return None


class PamWrapper:
    """A private PAM service directory and a pamtester runner over it.

    ``service(name, lines)`` writes a service file; ``shim()`` writes a pam_python
    shim that runs this checkout's hook; ``run()`` calls pamtester under
    pam_wrapper.  ``close()`` removes the directory.
    """

    def __init__(self, directory: str | Path | None = None) -> None:
        self._own = directory is None
        self.dir = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="pkp-pamwrap-"))
        self.services = self.dir / "pam.d"
        self.services.mkdir(parents=True, exist_ok=True)
        # pam_python and pam_exec children may run as the test user: let them read the shim.
        os.chmod(self.dir, 0o755)
        self._shim: Path | None = None

    def shim(self, paths: list[str] | None = None) -> Path:
        """Write (once) a pam_python shim whose sys.path starts with ``paths`` (default: this repo)."""
        if self._shim is None or paths is not None:
            path = self.dir / "pam_keyinit_py.py"
            path.write_text(render(paths or repo_paths(), generator="pam_keyinit_py.lab.pamwrap"))
            self._shim = path
        return self._shim

    def hook_line(self, kind: str, control: str = "required", options: str = "") -> str:
        """A stack line that runs the hook through pam_python, e.g. ``session required pam_python.so ...``."""
        return f"{kind} {control} {PAM_PYTHON} {self.shim()} {options}".rstrip()

    def service(self, name: str, lines: list[str]) -> str:
        """Write the service file ``name`` (one PAM rule per line) and return the name."""
        if "/" in name or not name:
            raise ValueError(f"bad PAM service name {name!r}")
        (self.services / name).write_text("\n".join(lines) + "\n")
        return name

    def env(self) -> dict[str, str]:
        """The environment that makes a C host read this directory's service files."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PAM_WRAPPER", "LD_PRELOAD"))}
        env.update(LD_PRELOAD=LIBPAM_WRAPPER, PAM_WRAPPER="1", PAM_WRAPPER_SERVICE_DIR=str(self.services))
        return env

    def run(
        self, service: str, user: str, *operations: str, items: dict[str, str] | None = None,
        timeout: float = 60, stdin: int | None = subprocess.DEVNULL,
    ) -> subprocess.CompletedProcess[str]:
        """pamtester -v <service> <user> <operations...> under pam_wrapper; never raises on failure."""
        argv = [PAMTESTER, "-v"]
        for key, value in (items or {}).items():
            argv.append(f"-I{key}={value}")
        argv += [service, user, *operations]
        return subprocess.run(argv, env=self.env(), capture_output=True, text=True, timeout=timeout,
                              stdin=stdin, check=False)

    def close(self) -> None:
        """Remove the private directory (only if this object created it)."""
        if self._own:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PamWrapper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def syslog_lines(stderr: str) -> list[str]:
    """The pam_syslog() messages pam_wrapper copied to a host's stderr, without its prefix."""
    out = []
    for line in stderr.splitlines():
        _, sep, text = line.partition("SYSLOG(")
        if sep and line.startswith("PWRAP_"):
            out.append(text.split("): ", 1)[-1])
    return out
