"""The PAM stacks a host gets from this project's pam-auth-update profiles, made by the real tool.

``pam-auth-update --enable keyinit-krb5`` is how an administrator turns the Kerberos login on.
The tests and the benchmarks need exactly the lines it writes, without touching the host: so
Debian's own ``pam-auth-update`` runs in a private mount namespace, over copies of
/etc/pam.d, /var/lib/pam and the debconf database, with /usr/share/pam-configs holding only
``unix`` (libpam-runtime's) and the profiles of this checkout's ``etc/pam-configs``.  The
``common-*`` files it writes are returned; nothing on the host changes.

:func:`service_lines` turns them into one pam_wrapper service, as Debian's /etc/pam.d/sshd and
login ``@include`` them, with the hook's lines pointed at a test shim.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from .pamwrap import PAM_PYTHON, PamWrapper

PROFILES = Path(__file__).resolve().parents[2] / "etc" / "pam-configs"
UNIX_PROFILE = Path("/usr/share/pam-configs/unix")
KINDS = ("auth", "account", "password", "session")
#: How the profiles name the hook; rewritten to the test shim's path.
HOOK = "pam_python.so pam_keyinit_py.py"

_SCRIPT = """set -e
mount --bind "$1/pam.d" /etc/pam.d
mount --bind "$1/pam-configs" /usr/share/pam-configs
mount --bind "$1/var-lib-pam" /var/lib/pam
mount --bind "$1/debconf" /var/cache/debconf
shift
DEBIAN_FRONTEND=noninteractive exec pam-auth-update --force "$@"
"""


class PamAuthUpdateError(RuntimeError):
    """pam-auth-update (or the namespace around it) failed; the message is its output."""


def available() -> str | None:
    """None when pam-auth-update, unshare and the unix profile exist, else what is missing."""
    for tool in ("pam-auth-update", "unshare"):
        if not shutil.which(tool):
            return f"{tool} is not installed"
    if not UNIX_PROFILE.exists():
        return f"{UNIX_PROFILE} is missing (libpam-runtime)"
    return None


def render_stacks(enable: tuple[str, ...] = ("keyinit-krb5",), profiles: Path = PROFILES,
                  extra: tuple[Path, ...] = ()) -> dict[str, list[str]]:
    """``pam-auth-update --enable PROFILE...`` in a private mount namespace: the common-* lines.

    The profiles offered are libpam-runtime's ``unix``, those in ``profiles`` and the files in
    ``extra`` (libpam-krb5's /usr/share/pam-configs/krb5, for the benchmarks' anchor).
    Returns {"auth": [...], "account": [...], "password": [...], "session": [...]}, each line
    as pam-auth-update wrote it (``auth [success=2 default=ignore] pam_python.so ...``),
    comments and blank lines left out.
    """
    work = Path(tempfile.mkdtemp(prefix="pkp-pau-"))
    try:
        shutil.copytree("/etc/pam.d", work / "pam.d", symlinks=True)
        (work / "pam-configs").mkdir()
        shutil.copy(UNIX_PROFILE, work / "pam-configs" / "unix")
        for profile in [*profiles.iterdir(), *extra]:
            shutil.copy(profile, work / "pam-configs" / profile.name)
        (work / "var-lib-pam").mkdir()
        shutil.copytree("/var/cache/debconf", work / "debconf", symlinks=True)
        args = [arg for name in enable for arg in ("--enable", name)]
        proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", _SCRIPT,
                               "pam-auth-update", str(work), *args],
                              capture_output=True, text=True, timeout=60, check=False)
        if proc.returncode != 0:
            raise PamAuthUpdateError(f"pam-auth-update {' '.join(args)}: {proc.stderr or proc.stdout}")
        stacks = {}
        for kind in KINDS:
            text = (work / "pam.d" / f"common-{kind}").read_text()
            stacks[kind] = [" ".join(line.split()) for line in text.splitlines()
                            if line.strip() and not line.lstrip().startswith("#")]
        return stacks
    finally:
        shutil.rmtree(work, ignore_errors=True)


def service_lines(stacks: dict[str, list[str]], pamwrap: PamWrapper, options: str = "") -> list[str]:
    """One service from the common-* stacks (auth, account, password, session, as sshd includes them).

    Each hook line runs ``pamwrap``'s shim through the real pam_python.so, with ``options``
    (``socket=...``) appended to the options the profile gave it.
    """
    shim = pamwrap.shim()
    out = []
    for kind in KINDS:
        for line in stacks[kind]:
            if HOOK in line:
                line = line.replace(HOOK, f"{PAM_PYTHON} {shim}")
                line = f"{line} {options}".rstrip()
            out.append(line)
    return out
