"""Proving a TGT came from the realm's real KDC, and armoring the password exchange (FAST).

- :func:`verify_creds`: krb5_verify_init_creds against the host keytab (pam_krb5's
  ``validate``), run without the GIL in the C helper (tickets/_renew_build.py).
- :func:`fast_armor`: a MEMORY ccache with a TGT of the host principal from the keytab
  (krb5_get_init_creds_keytab), as SSSD's krb5_use_fast does; reused until near its end.
- :func:`validated`: the ``validate`` policy ("require" / "if-keytab" / "never") on a fresh TGT.
"""

from __future__ import annotations

import errno
import socket
import threading
import time

import krb5

from ..ccread import full_name
from . import errors
from .errors import KdcUnreachable, TicketError
from .plumbing import cc_destroy


def host_principal(krb5_config: str | None = None) -> str:
    """krb5_sname_to_principal(NULL, "host", KRB5_NT_SRV_HST): ``host/<canonical name>@REALM``."""
    from ._krb5_renew import ffi, lib

    out = ffi.new("char[]", 512)
    code = lib.pk_host_principal(krb5_config.encode() if krb5_config else ffi.NULL, out, 512)
    if code:
        raise TicketError(f"krb5_sname_to_principal(host): error {code}", code)
    return ffi.string(out).decode(errors="replace")


def keytab_name(ctx: krb5.Context, keytab: str | None) -> str:
    """``keytab``, or the name of libkrb5's default keytab (krb5_kt_default_name)."""
    if keytab:
        return keytab
    try:
        name = krb5.kt_default_name(ctx)
        return name.decode(errors="replace") if isinstance(name, bytes) else str(name)
    except krb5.Krb5Error:
        return "the default keytab"


def verify_creds(ctx: krb5.Context, creds: krb5.Creds, *, keytab: str | None = None,
                 principal: str | None = None, krb5_config: str | None = None) -> str:
    """krb5_verify_init_creds with ap_req_nofail: prove the TGT came from the realm's real KDC.

    A ticket for ``principal`` (default: this host's ``host/`` principal) is requested with the
    TGT and decrypted with that principal's key from ``keytab`` (default: libkrb5's default
    keytab, /etc/krb5.keytab unless KRB5_KTNAME or default_keytab_name say otherwise).  An
    impostor KDC does not hold the host key, so its TGT fails here.  Runs as the caller
    (root reads the keytab), without the GIL (tickets/_renew_build.py).  Returns the principal
    validated with; raises NoValidationKey (no keytab or no such key), ValidationFailed,
    KdcUnreachable.
    """
    from ._krb5_renew import ffi, lib

    data = krb5.marshal_credentials(ctx, creds)
    server = ffi.new("char[]", 512)
    err = ffi.new("char[]", 512)
    code = lib.pk_verify_marshalled(data, len(data), principal.encode() if principal else ffi.NULL,
                                    keytab.encode() if keytab else ffi.NULL,
                                    krb5_config.encode() if krb5_config else ffi.NULL,
                                    server, 512, err, 512)
    name = ffi.string(server).decode(errors="replace") or principal or "host/<this host>"
    if name.endswith("@"):  # krb5_sname_to_principal's referral realm: any realm in the keytab
        name = name[:-1]
    if code == 0:
        return name
    where = keytab_name(ctx, keytab)
    reason = ffi.string(err).decode(errors="replace") or f"error {code}"
    if code in (errno.ENOENT, errors.KRB5_KT_NOTFOUND, errors.KRB5_KT_END):
        raise errors.NoValidationKey(f"no key for {name} in {where} to validate with: {reason}", code)
    if code in (errors.KRB5_KDC_UNREACH, errors.KRB5_REALM_CANT_RESOLVE):
        raise KdcUnreachable(f"validating with {name}: {reason}", code)
    raise errors.ValidationFailed(f"TGT did not validate with {name} from {where}: {reason}", code)


#: (keytab, armor client or its default, krb5_config) -> MEMORY ccache names of armor TGTs, newest
#: last, and when to get the next one (:func:`armor_renew_at`).  Older generations are destroyed
#: once two newer ones exist, so a login still using the previous one is never pulled from under.
_armor: dict[tuple[str | None, str | None, str | None], tuple[list[str], float]] = {}
_armor_lock = threading.Lock()
#: Get a new armor TGT this long before the current one ends (at most half its life: see below).
ARMOR_MARGIN = 300.0


def armor_renew_at(received: float, starttime: float, endtime: float) -> float:
    """When (this host's clock) to replace an armor TGT received at ``received`` and valid from
    ``starttime`` to ``endtime`` (the KDC's clock): ARMOR_MARGIN before it ends, or at half its
    life when that is shorter.  Counted from the local receive time, so a skewed clock cannot
    keep an expired armor TGT in use.

    A fixed margin alone fetched a new armor TGT (one more AS exchange, from the keytab) for
    every login in a realm whose tickets live under ARMOR_MARGIN (max_life = 60 s in the FAST
    tests: with the primary KDC stopped, a login then waited for three failovers, not two).
    """
    life = max(0.0, endtime - starttime)
    return received + life - min(ARMOR_MARGIN, life / 2)


def machine_account(ctx: krb5.Context, keytab: str | None) -> str | None:
    """The keytab's computer-account principal (``NAME$@REALM``), the FAST armor client on AD.

    krb5_kt_start_seq_get/next_entry over ``keytab`` (default: krb5_kt_default), as SSSD's
    select_principal_from_keytab: this host's NetBIOS name first (its short name, upper case, at
    most 15 characters; compared without case, as joins write it either way), else the first
    other ``*$`` entry.  An AD or Samba KDC issues a TGT to that name, not to the account's
    ``host/`` SPNs.  None when the keytab holds no such entry (MIT realms) or cannot be read.
    """
    short = socket.gethostname().split(".")[0].upper()[:15] + "$"
    first: str | None = None
    try:
        kt = krb5.kt_resolve(ctx, keytab.encode()) if keytab else krb5.kt_default(ctx)
        for entry in kt:
            name = str(entry.principal)
            account = name.rpartition("@")[0]
            if "/" in account or not account.endswith("$"):
                continue
            if account.upper() == short:
                return name
            first = first or name
    except krb5.Krb5Error:
        return None
    return first


def fast_armor(ctx: krb5.Context, *, keytab: str | None = None, principal: str | None = None,
               krb5_config: str | None = None, fallback: str | None = None) -> krb5.CCache:
    """A MEMORY ccache with a TGT of the armor client from the keytab, as FAST armor.

    krb5_get_init_creds_keytab (as the caller: root reads the keytab), as SSSD's krb5_use_fast
    does with the host keytab; the TGT is reused until :func:`armor_renew_at`.
    The client is ``principal`` (ticketd.toml's fast_principal) when given, else the keytab's
    computer account (:func:`machine_account`: AD), else ``fallback`` (validate_principal), else
    this host's ``host/`` principal (:func:`host_principal`: MIT).
    Raises FastUnavailable when no armor can be had.
    """
    key = (keytab, principal or f"default:{fallback}", krb5_config)
    with _armor_lock:
        names, renew_at = _armor.get(key, ([], 0.0))
        if names and renew_at > time.time():
            return krb5.cc_resolve(ctx, names[-1].encode())
    name = principal or machine_account(ctx, keytab) or fallback or host_principal(krb5_config)
    try:
        princ = krb5.parse_name_flags(ctx, name.encode())
        kt = krb5.kt_resolve(ctx, keytab.encode()) if keytab else krb5.kt_default(ctx)
        creds = krb5.get_init_creds_keytab(ctx, princ, krb5.get_init_creds_opt_alloc(ctx), kt)
        received = time.time()
        cc = krb5.cc_new_unique(ctx, b"MEMORY", None)
        krb5.cc_initialize(ctx, cc, princ)
        krb5.cc_store_cred(ctx, cc, creds)
    except krb5.Krb5Error as exc:
        raise errors.FastUnavailable(f"no FAST armor TGT for {name} from {keytab_name(ctx, keytab)}: {exc}",
                                     getattr(exc, "err_code", 0)) from None
    with _armor_lock:
        names, _ = _armor.get(key, ([], 0.0))
        names = [*names, full_name(cc)]
        stale, names = names[:-2], names[-2:]
        times = creds.times
        _armor[key] = (names, armor_renew_at(received, float(times.starttime or times.authtime),
                                             float(times.endtime)))
    for old in stale:
        try:
            cc_destroy(ctx, krb5.cc_resolve(ctx, old.encode()))
        except krb5.Krb5Error:
            pass
    return cc


def validated(ctx: krb5.Context, creds: krb5.Creds, mode: str, keytab: str | None, principal: str | None,
               krb5_config: str | None) -> tuple[str, tuple[str, ...]]:
    """Apply ``validate`` to a fresh TGT: (principal validated with, warnings)."""
    if mode == "never":
        return "", ()
    try:
        return verify_creds(ctx, creds, keytab=keytab, principal=principal, krb5_config=krb5_config), ()
    except errors.NoValidationKey as exc:
        if mode == "if-keytab":
            return "", (f"TGT not validated (validate = \"if-keytab\"): {exc}",)
        raise
