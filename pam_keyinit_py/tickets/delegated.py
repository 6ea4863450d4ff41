"""Delegated credentials: sshd's FILE cache of a GSSAPI login copied into the user's collection.

sshd (``GSSAPIAuthentication yes`` with a delegating client) writes the forwarded TGT to
``FILE:/tmp/krb5cc_<uid>_XXXXXX``; :func:`import_file` copies it, as the user, into a new primary
cache of ``KEYRING:persistent:<uid>`` (krb5_cc_initialize, krb5_cc_store_cred, krb5_cc_switch).
The file is left where it is: the session's KRB5CCNAME names it until the PAM hook has the
service's reply and points KRB5CCNAME at the keyring, and only then does the hook remove it
(pam/client.py).  A hook that gave up waiting keeps sshd's name, so the file must still be there.
"""

from __future__ import annotations

import os
import stat

import krb5

from ..ccname import SERVICE_PREFIX, collection_name
from ..ccread import is_config
from . import errors, plumbing
from .cachestore import DEFERRED, TicketInfo, tgt_info, write_new_freeing
from .errors import TicketError, from_krb5
from .plumbing import as_user, discarded_on_failure
from .reaper import Reaper

#: Largest FILE cache import_file accepts (a forwarded TGT is ~1-5 KB; AD PACs stay far below).
MAX_IMPORT_BYTES = 1024 * 1024


def _open_users_file(path: str, uid: int) -> int:
    """open(2) ``path`` with O_NOFOLLOW as the caller (run under as_user) and check it is ``uid``'s.

    Refused: a symlink (ELOOP), anything but a regular file, a file owned by another uid, one
    that group or others may write, one with other hard links, or one over MAX_IMPORT_BYTES.
    The checks are made on the open descriptor (fstat), so a later rename cannot swap the file.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError:
        raise errors.CacheNotFound(f"{path}: no such file", errors.KRB5_FCC_NOFILE) from None
    except OSError as exc:
        raise TicketError(f"{path}: {exc.strerror}", exc.errno or 0) from None
    try:
        st = os.fstat(fd)
        why = ""
        if not stat.S_ISREG(st.st_mode):
            why = "not a regular file"
        elif st.st_uid != uid:
            why = f"owned by uid {st.st_uid}, not {uid}"
        elif st.st_mode & 0o022:
            why = f"writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
        elif st.st_nlink != 1:
            why = f"{st.st_nlink} hard links"
        elif st.st_size > MAX_IMPORT_BYTES:
            why = f"{st.st_size} bytes (limit {MAX_IMPORT_BYTES})"
        if why:
            raise TicketError(f"{path}: refused: {why}")
    except BaseException:
        os.close(fd)
        raise
    return fd


def import_file(
    source: str,
    uid: int,
    gid: int,
    *,
    krb5_config: str | None = None,
    context: krb5.Context | None = None,
    reaper: Reaper | None = None,
) -> TicketInfo:
    """Copy a FILE ccache of ``uid`` (sshd's delegated ``FILE:/tmp/krb5cc_<uid>_XXXXXX``) into
    ``KEYRING:persistent:<uid>``: a new subsidiary cache, made primary (krb5_cc_switch).

    Everything runs as the user (per-thread setresuid), so the service reads only what the
    user may read and the keys are owned by and charged to the user.  The file is opened
    once, with O_NOFOLLOW, and checked on its descriptor (regular, owned by ``uid``, not
    group/other-writable, one link); libkrb5 then reads it through ``/proc/self/fd/N``, the
    same open file, so no rename or symlink between the check and the read changes what is
    read.  Every credential of the file goes into the new cache; the file is not touched (see
    the module's docstring for who removes it, and when).  ``reaper`` (default the
    process-wide one) holds the uid's caches in their grace period, freed on EDQUOT.
    Raises CacheNotFound (no file, or no principal in it), TicketError (refused, unreadable),
    QuotaExceeded.
    """
    path = source.removeprefix("FILE:")
    if not path.startswith("/") or source.startswith(("KEYRING:", "MEMORY:", "DIR:", "KCM:", "API:")):
        raise TicketError(f"{source}: only FILE caches with an absolute path can be imported")
    ctx = context or plumbing.context(krb5_config)
    collection = collection_name(uid)
    with as_user(uid, gid):
        fd = _open_users_file(path, uid)
        try:
            try:
                src = krb5.cc_resolve(ctx, f"FILE:/proc/self/fd/{fd}".encode())
                princ = krb5.cc_get_principal(ctx, src)
                creds = list(src)
            except krb5.Krb5Error as exc:
                raise from_krb5(exc, f"reading {source}") from None
            if not any(not is_config(c) for c in creds):
                raise errors.CacheNotFound(f"{source}: holds no ticket")
            cc = write_new_freeing(ctx, collection, princ, creds[0], SERVICE_PREFIX, uid, reaper or DEFERRED)
            with discarded_on_failure(ctx, cc, f"copying {source} into {collection}"):
                for more in creds[1:]:
                    krb5.cc_store_cred(ctx, cc, more)
                krb5.cc_switch(ctx, cc)
                info = tgt_info(ctx, cc, uid, primary=True)
        finally:
            os.close(fd)
    return info
