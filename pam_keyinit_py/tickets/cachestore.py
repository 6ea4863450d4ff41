"""One cache in the kernel, as the user: read its TGT, write a new one with no empty-cache
window, retire and destroy the old one.

- :func:`tgt_info`: a :class:`TicketInfo` from :mod:`pam_keyinit_py.ccread` (the one reader).
- :func:`install`: write the new cache completely (krb5_cc_initialize, krb5_cc_store_cred),
  switch primary to it (krb5_cc_switch), and only then retire the one it replaces: marked with
  :data:`RETIRED_MARK` (krb5_cc_set_config) and handed to a :class:`~.reaper.Reaper`.
- :func:`destroy`: krb5_cc_destroy as the user.

Every call that touches a cache runs under :class:`~.plumbing.as_user`.  The caller chooses the
:class:`~.reaper.Reaper`; :data:`DEFERRED` is the process-wide one for callers that bring none.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import secrets
import time
from collections.abc import Callable

import krb5

from .. import ccread
from ..ccname import collection_of, is_service_cache, new_subsidiary, subsidiary
from . import errors, plumbing
from .errors import TicketError, from_krb5
from .plumbing import as_user, cc_destroy, discarded_on_failure
from .reaper import Reaper

#: Cache config entry (krb5_cc_set_config) written into a cache when a renewal or login replaces
#: it: the deferred destroy lives in memory, the mark in the kernel, so a service killed during
#: the grace period recognises the cache after a restart (``sweep_retired``) and never adopts it.
RETIRED_MARK = b"keyinit-retired"


@dataclasses.dataclass(frozen=True)
class TicketInfo:
    """One credential cache and its TGT (times are seconds since the epoch, 0 when unknown)."""

    uid: int
    ccache: str
    principal: str
    server: str
    starttime: int
    endtime: int
    renew_till: int
    renewable: bool
    primary: bool = False
    service: bool = False  # created by this service (see is_service_cache)
    retired: bool = False  # replaced by a newer cache, to be destroyed (carries RETIRED_MARK)
    #: The host principal the TGT was validated with ("" when validation did not run).
    validated: str = ""
    #: What the caller should log as a warning (validation skipped, FAST armor unavailable).
    warnings: tuple[str, ...] = ()
    #: The cache this one replaced as primary and retired (to be destroyed after the grace), or "".
    replaced: str = ""


# ------------------------------------------------------------------ reading

def tgt_info(ctx: krb5.Context, cc: krb5.CCache, uid: int, primary: bool = False) -> TicketInfo:
    """Principal and TGT times of an open cache (ccread.read: krb5_cc_get_principal, the cursor)."""
    name = ccread.full_name(cc)
    try:
        seen = ccread.read(ctx, cc)
    except ccread.NoPrincipal as exc:
        raise from_krb5(exc.error, f"reading {name}") from None
    return _info(uid, name, seen.principal.decode(), seen.tgt(), primary, RETIRED_MARK in seen.config)


def written_info(cc: krb5.CCache, princ: krb5.Principal, creds: krb5.Creds, uid: int,
                 primary: bool) -> TicketInfo:
    """:func:`tgt_info` of a cache just written with krb5_cc_initialize(``princ``) +
    krb5_cc_store_cred(``creds``), from those values: reading it back through the cursor is
    keyctl reads of what was just written (a login's auth did that on its reply path)."""
    return _info(uid, ccread.full_name(cc), (princ.name or b"").decode(), ccread.cred(creds), primary, False)


def _info(uid: int, name: str, client: str, tgt: ccread.Cred | None, primary: bool,
          retired: bool) -> TicketInfo:
    if tgt is None:
        return TicketInfo(uid, name, client, "", 0, 0, 0, False, primary, is_service_cache(name), retired)
    return TicketInfo(uid, name, client, tgt.server.decode(), tgt.starttime, tgt.endtime,
                      tgt.renew_till if tgt.renewable else 0, tgt.renewable, primary, is_service_cache(name),
                      retired)


def primary_name(ctx: krb5.Context, collection: str) -> str:
    """The cache a reader of the collection name gets (krb_ccache:primary)."""
    return ccread.full_name(krb5.cc_resolve(ctx, collection.encode()))


def is_primary(ctx: krb5.Context, name: str) -> bool:
    """True when ``name`` is a KEYRING cache and the primary of its collection."""
    return name.startswith("KEYRING:") and primary_name(ctx, collection_of(name)) == name


def _service_primary(ctx: krb5.Context, collection: str, princ: krb5.Principal) -> str | None:
    """The current primary cache of the collection if this service made it for ``princ`` (an earlier
    generation of the same ticket, to retire it); the caller runs as the user.

    A service-made cache of another principal is another ticket the service keeps (a second
    ``[[keytab]]`` entry of the uid, or the login's beside a keytab entry): not this one's to retire.
    """
    try:
        cc = krb5.cc_resolve(ctx, collection.encode())
        holder = krb5.cc_get_principal(ctx, cc)
    except krb5.Krb5Error:
        return None
    name = ccread.full_name(cc)
    return name if is_service_cache(name) and holder.name == princ.name else None


# ------------------------------------------------------------------ destroying

def destroy(ccache_name: str, uid: int, gid: int | None = None, *, krb5_config: str | None = None,
            context: krb5.Context | None = None) -> None:
    """krb5_cc_destroy as the user (a KEYRING cache: clear and unlink its keyring).

    Raises CacheNotFound when there is no such cache.
    """
    ctx = context or plumbing.context(krb5_config)
    with as_user(uid, gid):
        try:
            cc = krb5.cc_resolve(ctx, ccache_name.encode())
            if ccache_name.startswith("KEYRING:") and subsidiary(ccache_name):
                krb5.cc_get_principal(ctx, cc)  # resolve does not fail for a missing keyring
            cc_destroy(ctx, cc)
        except krb5.Krb5Error as exc:
            raise from_krb5(exc, f"destroying {ccache_name}") from None


def destroy_quiet(name: str, uid: int, gid: int, krb5_config: str | None) -> None:
    """:func:`destroy`, ignoring a TicketError (the cache is gone already, or cannot be)."""
    try:
        destroy(name, uid, gid, krb5_config=krb5_config)
    except TicketError:
        pass


#: The destroy-later thread of callers that bring no Reaper of their own; flushed at exit.
DEFERRED = Reaper(destroy_quiet)
atexit.register(DEFERRED.flush)


# ------------------------------------------------------------------ writing

def _write_new(ctx: krb5.Context, target: str, princ: krb5.Principal, creds: krb5.Creds,
               prefix: str) -> krb5.CCache:
    """Write ``creds`` into a new cache beside ``target``; caller runs as the user.

    KEYRING: a new subsidiary of the collection (krb5_cc_resolve of a fresh name, then
    krb5_cc_initialize creates the keyring).  FILE: a fresh file that the caller renames.
    On failure the half-written cache is destroyed.
    """
    if target.startswith("KEYRING:"):
        name = new_subsidiary(collection_of(target), prefix)
    elif target.startswith(("FILE:", "/")):
        path = target.removeprefix("FILE:")
        name = f"FILE:{path}.new.{secrets.token_hex(4)}"
    else:
        raise TicketError(f"{target}: only KEYRING and FILE caches are supported")
    try:
        # Resolving a KEYRING:persistent name already creates keyrings (_krb): EDQUOT can come here.
        cc = krb5.cc_resolve(ctx, name.encode())
    except krb5.Krb5Error as exc:
        raise from_krb5(exc, f"opening {name}") from None
    with discarded_on_failure(ctx, cc, f"storing the ticket of {princ} in {name}"):
        krb5.cc_initialize(ctx, cc, princ)
        krb5.cc_store_cred(ctx, cc, creds)
    return cc


def write_new_freeing(ctx: krb5.Context, target: str, princ: krb5.Principal, creds: krb5.Creds,
                      prefix: str, uid: int, reaper: Reaper) -> krb5.CCache:
    """Write ``creds`` into a new cache beside ``target`` (caller runs as the user); on EDQUOT,
    destroy now the uid's old caches still in ``reaper``'s grace period (they hold quota) and
    write again once the kernel has given their quota back."""
    try:
        return _write_new(ctx, target, princ, creds, prefix)
    except errors.QuotaExceeded:
        if not reaper.pending(uid):
            raise
        reaper.flush(uid)
        return _retry_after_key_gc(lambda: _write_new(ctx, target, princ, creds, prefix))


def _retry_after_key_gc(write: Callable[[], krb5.CCache], timeout: float = 1.0) -> krb5.CCache:
    """Call ``write`` until the kernel has uncharged destroyed keys (EDQUOT till then), ``timeout`` s at most.

    keyctl_clear/unlink of a cache only drops references: the kernel's key garbage collector
    (a workqueue, key_gc_unused_keys) frees the keys and uncharges the quota a moment later.
    A write retried at once after destroying old generations still gets EDQUOT (measured with
    a 300-group AD user under the default 20,000-byte quota).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return write()
        except errors.QuotaExceeded:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def install(ctx: krb5.Context, target: str, princ: krb5.Principal, creds: krb5.Creds, uid: int,
            gid: int, *, prefix: str, make_primary: bool, replace: str | None,
            krb5_config: str | None, grace: float, reaper: Reaper,
            retire_service_primary: bool = False) -> TicketInfo:
    """Store ``creds`` as the new cache for ``target`` with no moment where readers find none.

    Order: write the new cache completely, switch primary to it (one atomic add_key of
    krb_ccache:primary), and only then retire ``replace`` (handed to ``reaper`` for ``grace``
    seconds; destroyed at once when ``grace`` is 0).  With ``retire_service_primary``,
    ``replace`` is the collection's primary if this service made it for ``princ``
    (:func:`_service_primary`), looked up in the same switch to the user.  Otherwise, when
    ``replace`` is a KEYRING cache, the new cache becomes primary exactly when ``replace`` is the
    primary at the switch (``make_primary`` is then decided there).  ``TicketInfo.replaced``
    names what was retired.
    """
    with as_user(uid, gid):
        if retire_service_primary:
            replace = _service_primary(ctx, target, princ)
        cc = write_new_freeing(ctx, target, princ, creds, prefix, uid, reaper)
        new_name = ccread.full_name(cc)
        what = f"installing the ticket of {princ} in {new_name}"
        if new_name.startswith("FILE:"):
            final = target if target.startswith("FILE:") else f"FILE:{target}"
            with discarded_on_failure(ctx, cc, what):
                os.rename(new_name.removeprefix("FILE:"), final.removeprefix("FILE:"))
                cc = krb5.cc_resolve(ctx, final.encode())
            with discarded_on_failure(ctx, cc, what):
                return tgt_info(ctx, cc, uid)
        with discarded_on_failure(ctx, cc, what):
            if replace and not retire_service_primary and replace.startswith("KEYRING:"):
                # The caller looked before its KDC exchange; a login or the user's kswitch may have
                # moved the primary since, to ``replace`` or away from it.  Switching on that old
                # look took the primary from a newer login, or left it naming ``replace``, which
                # is destroyed after the grace (klist: no credentials cache found).
                make_primary = is_primary(ctx, replace)
            if make_primary:
                krb5.cc_switch(ctx, cc)  # writes krb_ccache:primary: EDQUOT can strike here too
            info = written_info(cc, princ, creds, uid, make_primary)
            if replace and replace != new_name and replace.startswith("KEYRING:"):
                _mark_retired(ctx, replace)
    if replace and replace != new_name:
        if grace > 0:
            reaper.add(replace, uid, gid, krb5_config, grace)
        else:
            destroy_quiet(replace, uid, gid, krb5_config)
        return dataclasses.replace(info, replaced=replace)
    return info


def _mark_retired(ctx: krb5.Context, name: str) -> None:
    """krb5_cc_set_config(RETIRED_MARK) on a replaced cache; caller runs as the user.

    Best effort: without the mark (EDQUOT, the cache already gone) a crash during the grace
    period leaves the cache to be adopted as before, which costs KDC traffic, not a ticket.
    """
    try:
        krb5.cc_set_config(ctx, krb5.cc_resolve(ctx, name.encode()), None, RETIRED_MARK, b"1")
    except krb5.Krb5Error:
        pass
