"""What the KDC, kpasswd and krb5_kuserok say about a principal: the account and password checks.

- :func:`kuserok`: krb5_kuserok(principal, local user) -- ``~luser/.k5login`` when it exists,
  else the realm's auth_to_local rules (a tiny cffi call: pykrb5 0.10 has no kuserok);
  :func:`kuserok_account` also asks it for the uid's own name (another spelling of an AD user).
- :func:`account_state`: an AS request for the principal **without a password**.  The MIT KDC
  checks the client entry before any preauthentication (measured on krb5 1.20): a locked or
  disabled principal gets KDC_ERR_CLIENT_REVOKED, an expired account KDC_ERR_NAME_EXP, an
  expired password KDC_ERR_KEY_EXP, whatever password is sent.  A usable principal makes libkrb5
  ask for the password, which it cannot do here (no prompter: EIO), so the probe never sends a
  guess and never counts towards a lockout.
- :func:`verify_changepw`: krb5_get_init_creds_password for ``kadmin/changepw``, the service
  the KDC issues tickets for even when the password has expired.  It is what proves that a
  password is right when the KDC answers KEY_EXP: that error comes before the password is
  checked, so it says nothing about the password.
- :func:`change_password`: the same initial ticket, then krb5_set_password (RFC 3244) to the
  realm's kpasswd service.

They run as the service (root): no credential cache is written.  Passwords are bytes only for
the exchange and never appear in a message.  ``timeout`` bounds each KDC/kpasswd exchange as for
the ccaches (``plumbing.bounded``: a helper thread; the caller gets KdcUnreachable).
"""

from __future__ import annotations

import pwd

import krb5

from ..ccread import full_name
from . import errors
from .errors import TicketError, from_krb5
from .plumbing import Krb5Failure, bounded, context
from .preauth import Decline
from .validation import fast_armor

CHANGEPW_SERVICE = b"kadmin/changepw"
#: errno libkrb5 returns when it needs the password and has no prompter (gic_pwd.c).
_EIO = 5

# krb5_set_password result codes (RFC 3244 and Microsoft's extensions).
_KPASSWD_SOFTERROR = 4
_KPASSWD_AUTHERROR = 3
_KPASSWD_ACCESSDENIED = 5


def kuserok(principal: str, user: str, krb5_config: str | None = None, *, enterprise: bool = False) -> bool:
    """krb5_kuserok: may ``principal`` log in as local ``user`` (.k5login / auth_to_local)?

    ``enterprise``: ``principal`` is a UPN, parsed with KRB5_PRINCIPAL_PARSE_ENTERPRISE
    (names.parse_as_enterprise), as the KDC sees it.  Raises TicketError when it does not parse.
    """
    from ._krb5_renew import ffi, lib

    err = ffi.new("char[]", 256)
    profile = krb5_config.encode() if krb5_config else ffi.NULL
    ok = lib.pk_kuserok(profile, principal.encode(), int(enterprise), user.encode(), err, 256)
    if ok < 0:
        raise TicketError(f"krb5_kuserok for {principal}: {ffi.string(err).decode(errors='replace')}")
    return ok == 1


def kuserok_account(principal: str, user: str, uid: int, krb5_config: str | None = None, *,
                    enterprise: bool = False) -> bool:
    """krb5_kuserok for the account ``uid``: as ``user`` (the login's name), else as the account's
    own name (getpwuid(uid)->pw_name).

    An AD NSS provider (SSSD, winbind) answers getpwnam("ALICE") and getpwnam("alice@example.com")
    with alice's entry, so the login's name may be another spelling of the account, while the
    canonical principal maps (auth_to_local) to the account's own name: ``alice@REALM`` may log in
    to uid 1000 whatever the spelling, as SSSD's localauth plugin lets a principal in whose local
    name has the same uid.  ``uid`` comes from the PAM hook's getpwnam (a root-only request).
    """
    if kuserok(principal, user, krb5_config, enterprise=enterprise):
        return True
    try:
        own = pwd.getpwuid(uid).pw_name
    except KeyError:
        return False
    return own != user and kuserok(principal, own, krb5_config, enterprise=enterprise)


def account_state(principal: str, *, timeout: float | None = 2.0, krb5_config: str | None = None,
                  enterprise: bool = False) -> None:
    """Ask the KDC whether it would issue ``principal`` a ticket, without a password.

    ``enterprise``: a UPN, sent as an enterprise name with the canonicalize flag (AD resolves it).

    Returns when it would (libkrb5 stopped for the password).  Raises UnknownPrincipal,
    AccessDenied (locked/disabled), AccountExpired, PasswordExpired, KdcUnreachable, or
    TicketError for anything else the KDC or libkrb5 said.
    """
    what = f"account check of {principal}"

    def exchange() -> None:
        ctx = context(krb5_config)
        princ, opt = _client(ctx, principal, enterprise)
        try:
            krb5.get_init_creds_password(ctx, princ, opt, None)
        except krb5.Krb5Error as exc:
            code = getattr(exc, "err_code", 0)
            # EIO: the AS-REP needs the password to decrypt; PREAUTH_FAILED around EIO: the KDC
            # wants preauthentication, which needs the password.  Either way: the KDC said yes.
            if code == _EIO or (code == errors.KRB5_PREAUTH_FAILED and "Input/output" in str(exc)):
                return
            raise from_krb5(exc, what) from None
        raise TicketError(f"{what}: the KDC issued a ticket without any key")

    bounded(exchange, timeout, what)


def _armor(ctx: krb5.Context, fast: str, keytab: str | None, host: str | None,
           krb5_config: str | None, client: str | None = None) -> krb5.CCache | None:
    """The FAST armor cache as the login's ``auth`` uses it (validation.fast_armor), per ``fast``.

    None when ``fast`` is "never", or "try" and no armor could be had; FastUnavailable when
    "require" and none could be had: the password is then never sent unarmored.
    """
    if fast == "never":
        return None
    try:
        return fast_armor(ctx, keytab=keytab or None, principal=client or None, fallback=host or None,
                          krb5_config=krb5_config)
    except errors.FastUnavailable:
        if fast == "require":
            raise
        return None


def _client(ctx: krb5.Context, principal: str, enterprise: bool,
            ) -> tuple[krb5.Principal, krb5.GetInitCredsOpt]:
    """The AS request's client and options: a UPN (``enterprise``) is parsed with
    KRB5_PRINCIPAL_PARSE_ENTERPRISE and the KDC asked to canonicalize it, as the login's auth does."""
    flags = krb5.PrincipalParseFlags.enterprise if enterprise else krb5.PrincipalParseFlags.none
    princ = krb5.parse_name_flags(ctx, principal.encode(), flags)
    opt = krb5.get_init_creds_opt_alloc(ctx)
    if enterprise:
        krb5.get_init_creds_opt_set_canonicalize(opt, True)
    return princ, opt


def _changepw_creds(ctx: krb5.Context, principal: str, password: bytes, armor: krb5.CCache | None = None,
                    fast_required: bool = False, enterprise: bool = False) -> krb5.Creds:
    princ, opt = _client(ctx, principal, enterprise)
    # A kadmin/changepw ticket is used once, here: nothing to forward, proxy or renew.
    krb5.get_init_creds_opt_set_forwardable(opt, False)
    krb5.get_init_creds_opt_set_proxiable(opt, False)
    krb5.get_init_creds_opt_set_renew_life(opt, 0)
    if armor is not None:
        krb5.get_init_creds_opt_set_fast_ccache(ctx, opt, armor)
        if fast_required:
            krb5.get_init_creds_opt_set_fast_flags(ctx, opt, krb5.FastFlags.required)
    # A prompter that answers nothing (preauth.Decline): krb5 1.20 calls a NULL one when the KDC
    # offers OTP, which killed the service (measured); the login's auth relays such questions.
    return krb5.get_init_creds_password(ctx, princ, opt, password, in_tkt_service=CHANGEPW_SERVICE,
                                        prompter=Decline())


def verify_changepw(principal: str, password: str, *, timeout: float | None = 2.0,
                    krb5_config: str | None = None, fast: str = "never", armor_keytab: str | None = None,
                    armor_principal: str | None = None, fast_principal: str | None = None,
                    enterprise: bool = False) -> str:
    """Prove ``password`` by getting a kadmin/changepw ticket (allowed for an expired password).

    Returns the ticket's client: the KDC's name for an ``enterprise`` name (a UPN), else
    ``principal``.

    ``fast`` ("try", "require", "never") armors the exchange as the login's ``auth`` does, with
    the host principal's TGT from ``armor_keytab``.  Raises BadPassword, UnknownPrincipal,
    AccessDenied, AccountExpired, KdcUnreachable, FastUnavailable, TicketError.
    """
    secret = [password.encode()]
    del password
    what = f"password check of {principal} (kadmin/changepw)"

    def exchange() -> str:
        ctx = context(krb5_config)
        armor = _armor(ctx, fast, armor_keytab, armor_principal, krb5_config, fast_principal)
        try:
            creds = _changepw_creds(ctx, principal, secret[0], armor, fast == "require", enterprise)
        except krb5.Krb5Error as exc:
            raise from_krb5(exc, what) from None
        if not enterprise:
            return principal
        client = krb5.unparse_name_flags(ctx, creds.client)
        return client.decode("utf-8", "replace") if isinstance(client, bytes) else str(client)

    try:
        return bounded(exchange, timeout, what)
    finally:
        secret.clear()


def change_password(principal: str, old_password: str, new_password: str, *,
                    timeout: float | None = 5.0, krb5_config: str | None = None, fast: str = "never",
                    armor_keytab: str | None = None, armor_principal: str | None = None,
                    fast_principal: str | None = None, enterprise: bool = False) -> None:
    """Change ``principal``'s password through kpasswd (a kadmin/changepw ticket, krb5_set_password).

    Runs in the GIL-free C helper (tickets/_renew_build.py: pykrb5's set_password holds the
    GIL for the whole kpasswd exchange); ``fast`` armors the AS exchange as in
    :func:`verify_changepw`, and an ``enterprise`` name is resolved by the KDC as there.  Raises
    BadPassword (old password wrong), FastUnavailable, PasswordRejected (the server's
    quality/history message, safe to show the user), AccessDenied, KdcUnreachable, TicketError.
    """
    from ._krb5_renew import ffi, lib

    secret = [old_password.encode(), new_password.encode()]
    del old_password, new_password
    what = f"password change of {principal}"
    profile = krb5_config.encode() if krb5_config else ffi.NULL

    def exchange() -> tuple[int, str]:
        armor = _armor(context(krb5_config), fast, armor_keytab, armor_principal, krb5_config,
                       fast_principal)
        armor_name = full_name(armor).encode() if armor is not None else ffi.NULL
        result = ffi.new("int *")
        msg = ffi.new("char[]", 1024)
        err = ffi.new("char[]", 512)
        code = lib.pk_set_password(profile, principal.encode(), int(enterprise), secret[0], secret[1],
                                   armor_name, int(fast == "require"), result, msg, 1024, err, 512)
        if code:
            text = ffi.string(err).decode("utf-8", "replace")
            raise from_krb5(Krb5Failure(code, text), what)
        return int(result[0]), ffi.string(msg).decode("utf-8", "replace").strip()

    try:
        code, message = bounded(exchange, timeout, what)
    finally:
        secret.clear()
    if code == 0:
        return
    if code == _KPASSWD_SOFTERROR:
        raise errors.PasswordRejected(message or "password change rejected", code)
    if code in (_KPASSWD_AUTHERROR, _KPASSWD_ACCESSDENIED):
        raise errors.AccessDenied(f"{what}: {message or 'not authorized'}", code)
    raise TicketError(f"{what}: {message or f'kpasswd result {code}'}", code)

