"""search_k5login's reader: only a regular ~/.k5login owned by the user or root is read.

A symlink (to /etc/shadow, say) must not turn a root-run PAM module into a reader of files the
user cannot read: its lines would be sent to the KDC as principal names.
"""

from __future__ import annotations

import os
import pwd

from pam_keyinit_py.pam.client import K5LOGIN_MAX, k5login_principals
from tests.conftest import require_root


def _pw(home: str, uid: int) -> pwd.struct_passwd:
    return pwd.struct_passwd(("bob", "x", uid, uid, "", home, "/bin/sh"))


def test_missing_k5login_means_the_default_principal(tmp_path) -> None:
    assert k5login_principals(_pw(str(tmp_path), os.getuid())) is None


def test_principals_are_the_lines_without_blanks(tmp_path) -> None:
    many = "".join(f"p{i}@R\n" for i in range(K5LOGIN_MAX + 5))
    (tmp_path / ".k5login").write_text("alice@R\n\n  carol@R  \nnot a principal\n" + many)
    names = k5login_principals(_pw(str(tmp_path), os.getuid()))
    assert names is not None and names[:3] == ["alice@R", "carol@R", "p0@R"]
    assert len(names) == K5LOGIN_MAX


def test_symlinked_or_foreign_k5login_yields_no_principal(tmp_path) -> None:
    require_root()
    secret = tmp_path / "secret"
    secret.write_text("root:$6$hash\n")
    (tmp_path / ".k5login").symlink_to(secret)
    assert k5login_principals(_pw(str(tmp_path), 4242)) == []
    (tmp_path / ".k5login").unlink()
    (tmp_path / ".k5login").write_text("alice@R\n")
    os.chown(tmp_path / ".k5login", 4343, 4343)  # neither the user (4242) nor root
    assert k5login_principals(_pw(str(tmp_path), 4242)) == []
    os.chown(tmp_path / ".k5login", 0, 0)
    assert k5login_principals(_pw(str(tmp_path), 4242)) == ["alice@R"]
