"""Anchors the benchmarks compare against, installed on demand without changing the host's stacks."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

PAM_KRB5 = Path("/lib/x86_64-linux-gnu/security/pam_krb5.so")


def ensure_pam_krb5() -> str | None:
    """Install Debian's libpam-krb5 if missing; None when pam_krb5.so is usable, else why not.

    Installing it runs pam-auth-update, which puts pam_krb5 into common-auth and
    common-session; ``pam-auth-update --disable krb5`` takes it out again at once, so the
    host's global stacks stay as they were (``--remove`` would forget the profile, and the next
    PAM-related apt install would enable it again).  The benchmarks use private stacks only.
    """
    if PAM_KRB5.exists():
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "libpam-krb5 is not installed (apt-get install libpam-krb5)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    res = subprocess.run(["apt-get", "install", "-y", "-qq", "libpam-krb5"], env=env,
                         capture_output=True, text=True)
    subprocess.run(["pam-auth-update", "--disable", "krb5"], env=env, capture_output=True)
    if res.returncode != 0 or not PAM_KRB5.exists():
        return f"apt-get install libpam-krb5 failed: {res.stderr.strip()[-300:]}"
    return None
