"""Real service files in the host's /etc/pam.d, for C hosts run without pam_wrapper.

pam_wrapper (:mod:`.pamwrap`) gives each process a private copy of its service directory
under one of only 62 names (``/tmp/pam.<c>``, as long as ``/etc/pam.d``), and concurrent
processes race on them: with a hundred pamtester or sshd processes alive at once some lose
their configuration.  :class:`HostPam` has the same interface, but libpam reads its services
from ``/etc/pam.d`` itself: each file gets a unique random name (``<name>-<8 hex>``), is
created ``O_EXCL|O_NOFOLLOW`` (a file of that name is never overwritten), and is removed by
:meth:`HostPam.close`.  The hook's shim and any probe scripts still live in the private
directory, so only the service files touch the host.  Each file's first line names the process
that wrote it; a file left by a process that is gone (a killed test run skips ``close``) is
removed by the next :class:`HostPam`.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

from .pamwrap import PamWrapper

PAM_DIR = Path("/etc/pam.d")
#: The first line of every service file written here; ``{pid}`` is the writer's.
MARK = "# written by the pam-keyinit-py lab (HostPam) of pid {pid}; removed when it closes"
_MARKED = re.compile(r"# written by the pam-keyinit-py lab \(HostPam\) of pid (\d+);")
_UNIQUE = re.compile(r".+-[0-9a-f]{8}")


def sweep(pam_dir: Path = PAM_DIR) -> list[Path]:
    """Remove the service files a HostPam of a process that no longer exists left in ``pam_dir``.

    Only files named ``<name>-<8 hex>`` whose first line is :data:`MARK` are candidates, and only
    when /proc has no such pid (a reused pid keeps a file: the safe side).  Returns what went.
    """
    gone = []
    for path in pam_dir.iterdir():
        if not _UNIQUE.fullmatch(path.name) or path.is_symlink() or not path.is_file():
            continue
        try:
            with path.open() as f:
                found = _MARKED.match(f.readline())
        except (OSError, UnicodeDecodeError):
            continue
        if found and not Path(f"/proc/{found.group(1)}").exists():
            path.unlink(missing_ok=True)
            gone.append(path)
    return gone


class HostPam(PamWrapper):
    """:class:`PamWrapper`'s interface over the real ``/etc/pam.d`` (no LD_PRELOAD).

    ``service(name, lines)`` writes ``/etc/pam.d/<name>-<random>`` and returns that unique
    name, which is what ``pam_start`` (pamtester's argument, sshd's ``__progname``) must get;
    ``run()`` calls pamtester with the real libpam; ``close()`` removes every service file
    written and the private directory.
    """

    def __init__(self, directory: str | Path | None = None, pam_dir: Path = PAM_DIR) -> None:
        sweep(pam_dir)
        super().__init__(directory)
        self.pam_dir = pam_dir
        self.written: list[Path] = []

    def service(self, name: str, lines: list[str]) -> str:
        """Create ``<pam_dir>/<name>-<8 random hex>`` (mode 0644) holding ``lines``; return its name."""
        if "/" in name or not name:
            raise ValueError(f"bad PAM service name {name!r}")
        unique = f"{name}-{secrets.token_hex(4)}"
        path = self.pam_dir / unique
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        self.written.append(path)  # before the write: a failed write still leaves nothing behind
        with os.fdopen(fd, "w") as out:  # owns fd from here: closed whatever fails below
            os.fchmod(fd, 0o644)  # whatever the umask: libpam and admins read it like its neighbours
            out.write("\n".join([MARK.format(pid=os.getpid()), *lines]) + "\n")
        return unique

    def env(self) -> dict[str, str]:
        """This process's environment without pam_wrapper's variables: the real libpam reads /etc/pam.d."""
        env = super().env()
        for name in ("LD_PRELOAD", "PAM_WRAPPER", "PAM_WRAPPER_SERVICE_DIR"):
            del env[name]
        return env

    def close(self) -> None:
        """Remove every service file this object wrote, then the private directory."""
        while self.written:
            self.written.pop().unlink(missing_ok=True)
        super().close()
