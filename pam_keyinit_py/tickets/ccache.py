"""The ccache API: the credential-cache operations the ticket service performs with the user's
credentials (pykrb5).  It starts no thread of its own: a replaced cache goes to the
:class:`~.reaper.Reaper` passed as ``reaper=`` (so its owner drives it; default :data:`DEFERRED`,
process-wide), which also tells list_caches and sweep_retired which caches are retiring.

API (names are stable; the service, CLI and tests import them):

- ``acquire_password(principal, password, uid, gid, *, ...) -> TicketInfo``:
  krb5_get_init_creds_password (validated and FAST-armored as asked, :mod:`.validation`), then
  the TGT goes into a NEW cache of the user's ``KEYRING:persistent:<uid>`` collection, made
  primary (krb5_cc_switch); the previous primary is retired if this service created it for the
  same principal (``TicketInfo.replaced`` names it).
- ``acquire_keytab(principal, keytab, uid, gid, ccache=None, ...) -> TicketInfo``:
  krb5_get_init_creds_keytab into ``ccache`` (default the persistent collection), as ``k5start -f``.
- ``renew(ccache_name, uid, gid, *, timeout, ...) -> TicketInfo``: krb5_get_renewed_creds, written
  into a new cache that replaces the old one (switch primary first, destroy the old one after a
  short grace), so a reader never finds the collection empty.  ``TicketInfo.ccache`` is the NEW name.
- ``list_caches(uid) -> list[TicketInfo]``: every cache of the persistent collection.
- ``import_file(source, uid, gid) -> TicketInfo``: a FILE cache of the user (sshd's delegated
  ``FILE:/tmp/krb5cc_<uid>_XXXXXX``) copied into a new primary cache of the collection, as the
  user; the file stays for the PAM hook to remove (:mod:`.delegated`).
- ``destroy(ccache_name, uid, gid)``: krb5_cc_destroy.
- ``is_service_cache(name)``: True for caches this service created (their subsidiary name starts
  with :data:`SERVICE_PREFIX`; the mark survives a restart of the service).
- ``flush_deferred()``: destroy now the old caches of :data:`DEFERRED` still in their grace period.
- ``sweep_retired(uid)``: destroy the caches an earlier process retired (marked with the
  :data:`RETIRED_MARK` cache config entry) but died before destroying; returns their names.

Every ccache operation runs with the thread's real and effective uid/gid switched to the user
(:class:`~.plumbing.as_user`), so the keys are owned by and charged to the user, never root.
KDC exchanges for new tickets run as the caller (root can read keytabs), bounded by ``timeout``
(:func:`~.plumbing.bounded`: KdcUnreachable when it takes longer).  The password is held as
bytes only until the TGT exists and never appears in a log line or an exception message.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import krb5

from ..ccname import (
    ADOPTED_PREFIX,
    SERVICE_PREFIX,
    collection_name,
    collection_of,
    is_service_cache,
    subsidiary,
)
from ..ccread import full_name
from . import errors, plumbing, preauth
from .cachestore import (
    DEFERRED,
    RETIRED_MARK,
    TicketInfo,
    destroy,
    destroy_quiet,
    install,
    is_primary,
    primary_name,
    tgt_info,
)
from .config import FAST_MODES, VALIDATE_MODES
from .delegated import MAX_IMPORT_BYTES, import_file
from .errors import TicketError, from_krb5
from .names import is_enterprise_name, parse_as_enterprise
from .plumbing import as_user, bounded, cc_destroy, gic_options, renewed_creds, secret_buffer, wipe
from .reaper import DEFAULT_GRACE, Reaper
from .validation import fast_armor, host_principal, keytab_name, machine_account, validated, verify_creds

__all__ = [
    "ADOPTED_PREFIX", "DEFAULT_GRACE", "DEFERRED", "MAX_IMPORT_BYTES", "RETIRED_MARK", "SERVICE_PREFIX",
    "Reaper", "TicketInfo", "acquire_keytab", "acquire_password", "collection_name", "destroy",
    "destroy_quiet", "fast_armor", "flush_deferred", "host_principal", "import_file", "info",
    "is_enterprise_name", "is_service_cache", "keytab_name", "list_caches", "machine_account",
    "renew", "retiring", "secret_buffer", "sweep_retired", "verify_creds", "wipe",
]


def flush_deferred(uid: int | None = None) -> int:
    """Destroy now the replaced caches :data:`DEFERRED` holds in their grace period; return how many."""
    return DEFERRED.flush(uid)


def retiring(uid: int, reaper: Reaper | None = None) -> set[str]:
    """Names of ``uid``'s replaced caches still in their grace period (destroyed at once on EDQUOT)."""
    return (reaper or DEFERRED).pending(uid)


def acquire_password(
    principal: str,
    password: str | bytes | bytearray,
    uid: int,
    gid: int,
    *,
    lifetime: int | None = None,
    renew_lifetime: int | None = None,
    forwardable: bool | None = True,
    renewable: bool = True,
    timeout: float | None = 2.0,
    krb5_config: str | None = None,
    context: krb5.Context | None = None,
    grace: float = DEFAULT_GRACE,
    validate: str = "never",
    validate_keytab: str | None = None,
    validate_principal: str | None = None,
    fast: str = "never",
    fast_principal: str | None = None,
    canonicalize: bool = False,
    reaper: Reaper | None = None,
    answers: list[str] | None = None,
    meanwhile: Callable[[], object] | None = None,
) -> TicketInfo:
    """krb5_get_init_creds_password, then store the TGT as the user's new primary persistent cache.

    A question of the KDC's preauth that the password does not answer (an OTP token value)
    ends the exchange with PromptNeeded (:mod:`.preauth`); ``answers`` answer such questions,
    in order, in a fresh exchange.

    With ``canonicalize`` the request carries the canonicalize flag
    (krb5_get_init_creds_opt_set_canonicalize) and the cache is made for the client name the KDC
    answers with, so ``alice``, ``ALICE`` and the UPN ``alice@example.com`` (parsed with
    KRB5_PRINCIPAL_PARSE_ENTERPRISE when :func:`.names.parse_as_enterprise`, by the C helper of
    :mod:`.preauth`) all give one ``alice@REALM`` cache.

    ``validate`` ("require", "if-keytab", "never") checks the TGT with :func:`verify_creds`
    against ``validate_keytab``/``validate_principal`` before anything is stored; ``fast``
    ("try", "require", "never") armors the exchange with :func:`fast_armor` from the same keytab
    (client ``fast_principal``, by default the keytab's computer account or the validation
    principal).  The previous primary cache is destroyed after the switch only if this service created it
    for the same principal (a cache the user made with kinit, or a ``[[keytab]]`` entry's, is left
    alone).  ``meanwhile`` runs in the calling thread while the KDC exchange does (see
    :func:`~.plumbing.bounded`).  Raises BadPassword, UnknownPrincipal,
    KdcUnreachable (also after ``timeout`` seconds), PasswordExpired, QuotaExceeded,
    ValidationFailed, NoValidationKey (validate = "require"), FastUnavailable (fast = "require").
    """
    if validate not in VALIDATE_MODES:
        raise ValueError(f"validate must be one of {VALIDATE_MODES}")
    if fast not in FAST_MODES:
        raise ValueError(f"fast must be one of {FAST_MODES}")
    # One zeroable buffer for the secret, wiped as soon as the TGT exists (or cannot), and again in
    # ``finally``: no other copy made here outlives the exchange.
    secret = secret_buffer(password)
    del password
    what = f"initial ticket for {principal}"
    try:
        def exchange() -> tuple[krb5.Principal, krb5.Creds, str, tuple[str, ...]]:
            c = context if (context is not None and timeout is None) else plumbing.context(krb5_config)
            notes: tuple[str, ...] = ()
            armor = None
            if fast != "never":
                try:
                    armor = fast_armor(c, keytab=validate_keytab, principal=fast_principal,
                                       fallback=validate_principal, krb5_config=krb5_config)
                except errors.FastUnavailable as exc:
                    if fast == "require":
                        raise
                    notes = (f"password exchange not armored (fast = \"try\"): {exc}",)
            try:
                # krb5_get_init_creds_password through the C helper's prompter (preauth.answered):
                # the KDC's preauth questions (OTP) are answered from ``answers`` or relayed, and
                # libkrb5's own password change after KEY_EXP is off (the service reports it).
                creds = preauth.answered(
                    principal, secret, answers or [], what=what, ctx=c,
                    enterprise=parse_as_enterprise(principal, canonicalize), lifetime=lifetime,
                    renew_lifetime=renew_lifetime, forwardable=forwardable, renewable=renewable,
                    canonicalize=canonicalize, armor=full_name(armor) if armor is not None else None,
                    fast_required=fast == "require", krb5_config=krb5_config)
            finally:
                wipe(secret)  # drop the password as soon as the TGT exists (or cannot)
            # With canonicalize, the KDC's name for the user: one cache, whatever was typed.
            princ = creds.client if canonicalize else krb5.parse_name_flags(c, principal.encode())
            checked, warned = validated(c, creds, validate, validate_keytab, validate_principal, krb5_config)
            return princ, creds, checked, notes + warned

        princ, creds, validated_with, notes = bounded(exchange, timeout, what, meanwhile=meanwhile)
    finally:
        wipe(secret)
    ctx = context or plumbing.context(krb5_config)
    info = install(ctx, collection_name(uid), princ, creds, uid, gid, prefix=SERVICE_PREFIX,
                   make_primary=True, replace=None, retire_service_primary=True, krb5_config=krb5_config,
                   grace=grace, reaper=reaper or DEFERRED)
    return dataclasses.replace(info, validated=validated_with, warnings=notes)


def acquire_keytab(
    principal: str,
    keytab: str,
    uid: int,
    gid: int,
    ccache: str | None = None,
    *,
    lifetime: int | None = None,
    renew_lifetime: int | None = None,
    forwardable: bool | None = None,
    renewable: bool = True,
    timeout: float | None = 2.0,
    krb5_config: str | None = None,
    context: krb5.Context | None = None,
    grace: float = DEFAULT_GRACE,
    reaper: Reaper | None = None,
) -> TicketInfo:
    """krb5_get_init_creds_keytab (read as the caller), stored as ``uid`` in ``ccache``, like k5start -f.

    ``ccache`` defaults to ``KEYRING:persistent:<uid>``.  For a KEYRING collection the TGT goes
    into a new primary cache and the previous service-made primary of ``principal`` is retired;
    a named KEYRING subsidiary is replaced by a new one; a FILE cache is written beside and
    renamed over.
    """
    target = ccache or collection_name(uid)
    what = f"initial ticket for {principal} from keytab {keytab}"

    def exchange() -> tuple[krb5.Principal, krb5.Creds]:
        c = context if (context is not None and timeout is None) else plumbing.context(krb5_config)
        princ = krb5.parse_name_flags(c, principal.encode())
        opt = gic_options(c, lifetime, renew_lifetime, forwardable, renewable)
        try:
            kt = krb5.kt_resolve(c, keytab.encode())
            return princ, krb5.get_init_creds_keytab(c, princ, opt, kt)
        except krb5.Krb5Error as exc:
            raise from_krb5(exc, what) from None

    princ, creds = bounded(exchange, timeout, what, key=("keytab", principal, target))
    ctx = context or plumbing.context(krb5_config)
    if target.startswith("KEYRING:"):
        if subsidiary(target):
            replace: str | None = target
            with as_user(uid, gid):
                make_primary = is_primary(ctx, target)
        else:
            replace, make_primary = None, True  # the collection's primary, if ours (install looks)
    else:
        replace, make_primary = None, False
    return install(ctx, target, princ, creds, uid, gid, prefix=SERVICE_PREFIX, make_primary=make_primary,
                   replace=replace, retire_service_primary=make_primary and replace is None,
                   krb5_config=krb5_config, grace=grace, reaper=reaper or DEFERRED)


def renew(
    ccache_name: str,
    uid: int,
    gid: int,
    *,
    timeout: float | None = None,
    krb5_config: str | None = None,
    context: krb5.Context | None = None,
    grace: float = DEFAULT_GRACE,
    reaper: Reaper | None = None,
    in_place: bool = False,
) -> TicketInfo:
    """krb5_get_renewed_creds for the cache's principal, with no empty-cache window.

    The renewed TGT is written into a new cache of the same collection; if the old one was the
    primary, the new one becomes primary; the old one is destroyed ``grace`` seconds later.
    The returned ``TicketInfo.ccache`` is the new name.  A cache the user made with kinit is
    replaced by one named ``ADOPTED_PREFIX…`` (so is_service_cache() stays False for it).
    With ``in_place`` (the uid's key quota has no room for a second generation, see
    ``tickets.quota``) a KEYRING cache is instead renewed where it is: krb5_cc_store_cred of the
    renewed TGT into it, which the KEYRING ccache does with one add_key(2) that updates the old
    TGT's key atomically; the name stays.
    Raises CacheNotFound, NotRenewable/TicketExpired, KdcUnreachable, QuotaExceeded.
    """
    what = f"renewing {ccache_name}"

    def exchange() -> tuple[krb5.Principal, krb5.Creds, bool]:
        c = context if (context is not None and timeout is None) else plumbing.context(krb5_config)
        with as_user(uid, gid):
            try:
                cc = krb5.cc_resolve(c, ccache_name.encode())
                princ = krb5.cc_get_principal(c, cc)
                primary = is_primary(c, ccache_name)
                return princ, renewed_creds(c, ccache_name, krb5_config, what), primary
            except krb5.Krb5Error as exc:
                raise from_krb5(exc, what) from None

    princ, creds, primary = bounded(exchange, timeout, what, key=("renew", ccache_name))
    ctx = context or plumbing.context(krb5_config)
    if in_place and ccache_name.startswith("KEYRING:"):
        with as_user(uid, gid):
            try:
                cc = krb5.cc_resolve(ctx, ccache_name.encode())
                krb5.cc_store_cred(ctx, cc, creds)
            except krb5.Krb5Error as exc:
                raise from_krb5(exc, what) from None
            return tgt_info(ctx, cc, uid, primary=primary)
    if not ccache_name.startswith("KEYRING:"):
        return install(ctx, ccache_name, princ, creds, uid, gid, prefix="", make_primary=False,
                       replace=None, krb5_config=krb5_config, grace=grace, reaper=reaper or DEFERRED)
    prefix = SERVICE_PREFIX if is_service_cache(ccache_name) else ADOPTED_PREFIX
    return install(ctx, ccache_name, princ, creds, uid, gid, prefix=prefix, make_primary=primary,
                   replace=ccache_name, krb5_config=krb5_config, grace=grace, reaper=reaper or DEFERRED)


def list_caches(uid: int, gid: int | None = None, *, krb5_config: str | None = None,
                context: krb5.Context | None = None, reaper: Reaper | None = None) -> list[TicketInfo]:
    """Every cache in ``KEYRING:persistent:<uid>`` with its principal and TGT times.

    Iterates the collection (krb5_cccol_cursor over the KEYRING type, with the context's default
    name set to the collection) as the user.  Caches waiting in ``reaper`` (default
    :data:`DEFERRED`) for deferred destruction, caches marked retired (RETIRED_MARK) and empty
    ones (no principal) are left out.
    """
    ctx = context or plumbing.context(krb5_config)
    out: list[TicketInfo] = []
    with _collection(ctx, uid, gid, reaper) as caches:
        primary = primary_name(ctx, collection_name(uid))
        for name, cc in caches:
            try:
                found = tgt_info(ctx, cc, uid, primary=(name == primary))
            except TicketError:
                continue
            if not found.retired:  # replaced, never to be adopted (see sweep_retired)
                out.append(found)
    return out


def info(ccache_name: str, uid: int, gid: int | None = None, *, krb5_config: str | None = None,
         context: krb5.Context | None = None) -> TicketInfo:
    """Principal and TGT times of one cache, read as the user."""
    ctx = context or plumbing.context(krb5_config)
    with as_user(uid, gid):
        try:
            cc = krb5.cc_resolve(ctx, ccache_name.encode())
            primary = is_primary(ctx, ccache_name)
        except krb5.Krb5Error as exc:
            raise from_krb5(exc, f"reading {ccache_name}") from None
        return tgt_info(ctx, cc, uid, primary=primary)


def sweep_retired(uid: int, gid: int | None = None, *, krb5_config: str | None = None,
                  context: krb5.Context | None = None, reaper: Reaper | None = None) -> list[str]:
    """Destroy the caches of ``uid``'s collection that carry RETIRED_MARK and that ``reaper``
    (default :data:`DEFERRED`) does not hold: leftovers of a service killed during their grace period.

    Returns the names destroyed.  Run at start, before anything adopts the collection's caches.
    """
    ctx = context or plumbing.context(krb5_config)
    swept: list[str] = []
    with _collection(ctx, uid, gid, reaper) as caches:
        for name, cc in caches:
            try:
                if not tgt_info(ctx, cc, uid).retired:
                    continue
                cc_destroy(ctx, cc)
            except (TicketError, krb5.Krb5Error):
                continue
            swept.append(name)
    return swept


@contextmanager
def _collection(ctx: krb5.Context, uid: int, gid: int | None,
                reaper: Reaper | None) -> Iterator[Iterator[tuple[str, krb5.CCache]]]:
    """As the user, with ``ctx``'s default name set to ``KEYRING:persistent:<uid>``: its caches
    (krb5_cccol_cursor over the KEYRING type) that ``reaper`` (default :data:`DEFERRED`) does
    not hold.  A krb5 error in the block becomes a TicketError about listing the collection."""
    collection = collection_name(uid)
    retiring = (reaper or DEFERRED).pending(uid)

    def caches() -> Iterator[tuple[str, krb5.CCache]]:
        for cc in krb5.cccol_iter(ctx):
            if cc.cache_type != b"KEYRING":
                continue
            name = full_name(cc)
            if collection_of(name) == collection and name not in retiring:
                yield name, cc

    with as_user(uid, gid):
        krb5.cc_set_default_name(ctx, collection.encode())
        try:
            yield caches()
        except krb5.Krb5Error as exc:
            raise from_krb5(exc, f"listing {collection}") from None
        finally:
            krb5.cc_set_default_name(ctx, None)
