"""Ticket errors: krb5 error codes (krb5.Krb5Error.err_code) and kernel errnos mapped to classes.

Messages name the principal and the krb5/kernel reason, never a password.
"""

from __future__ import annotations

import errno

# MIT com_err codes (krb5.h, ERROR_TABLE_BASE_krb5 = -1765328384).
KRB5KDC_ERR_NAME_EXP = -1765328383
KRB5KDC_ERR_C_PRINCIPAL_UNKNOWN = -1765328378
KRB5KDC_ERR_S_PRINCIPAL_UNKNOWN = -1765328377
KRB5KDC_ERR_BADOPTION = -1765328371
KRB5KDC_ERR_CLIENT_REVOKED = -1765328366
KRB5KDC_ERR_KEY_EXP = -1765328361
KRB5KDC_ERR_PREAUTH_FAILED = -1765328360
KRB5KRB_AP_ERR_BAD_INTEGRITY = -1765328353
KRB5KRB_AP_ERR_TKT_EXPIRED = -1765328352
KRB5KRB_AP_ERR_MODIFIED = -1765328343
KRB5_CC_NOTFOUND = -1765328243
KRB5_KDC_UNREACH = -1765328228
KRB5_CC_IO = -1765328191
KRB5_FCC_NOFILE = -1765328189
KRB5_KT_NOTFOUND = -1765328203
KRB5_KT_END = -1765328202
KRB5_REALM_CANT_RESOLVE = -1765328164
KRB5_CC_NOSUPP = -1765328137
KRB5_PREAUTH_FAILED = -1765328174


class TicketError(Exception):
    """Base class: a ticket operation failed.  ``code`` is the krb5 code or errno (0 if none)."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class BadPassword(TicketError):
    """The KDC rejected the password (KRB5KDC_ERR_PREAUTH_FAILED / KRB5KRB_AP_ERR_BAD_INTEGRITY)."""


class UnknownPrincipal(TicketError):
    """The KDC does not know the client principal (KRB5KDC_ERR_C_PRINCIPAL_UNKNOWN)."""


class KdcUnreachable(TicketError):
    """No KDC answered (KRB5_KDC_UNREACH), or none answered within the caller's bound."""


class NotRenewable(TicketError):
    """The ticket is not renewable, or its renew_till has passed (KDC_ERR_BADOPTION, TKT_EXPIRED)."""


class TicketExpired(NotRenewable):
    """The ticket in the cache expired before it could be renewed."""


class CacheNotFound(TicketError):
    """The credential cache does not exist or holds no principal (KRB5_CC_NOTFOUND, ENOKEY)."""


class QuotaExceeded(TicketError):
    """The kernel refused to store the keys: the user's key quota is full (EDQUOT)."""


class PasswordExpired(TicketError):
    """The password must be changed before a ticket is issued (KRB5KDC_ERR_KEY_EXP)."""


class AccessDenied(TicketError):
    """The principal is locked out or disabled (KRB5KDC_ERR_CLIENT_REVOKED)."""


class AccountExpired(AccessDenied):
    """The principal's account expiry date has passed (KRB5KDC_ERR_NAME_EXP)."""


class PasswordRejected(TicketError):
    """kpasswd refused the new password (KRB5_KPASSWD_SOFTERROR: too short, too recent...)."""


class ValidationFailed(TicketError):
    """The TGT did not validate against the host keytab: it may come from a KDC impostor.

    krb5_verify_init_creds failed after the keytab key was found (the host principal unknown
    to the KDC that issued the TGT, a ticket that does not decrypt with the keytab key, ...).
    """


class NoValidationKey(TicketError):
    """The host keytab is missing or holds no key for the validation principal (ENOENT,
    KRB5_KT_NOTFOUND): the TGT could not be checked at all."""


class FastUnavailable(TicketError):
    """No FAST armor could be had (no host keytab, or the KDC refused the host's TGT) and
    ``fast = "require"`` forbids an unarmored password exchange."""


_BY_CODE: dict[int, type[TicketError]] = {
    KRB5KDC_ERR_PREAUTH_FAILED: BadPassword,
    KRB5KRB_AP_ERR_BAD_INTEGRITY: BadPassword,
    KRB5KDC_ERR_C_PRINCIPAL_UNKNOWN: UnknownPrincipal,
    KRB5_KDC_UNREACH: KdcUnreachable,
    KRB5_REALM_CANT_RESOLVE: KdcUnreachable,
    KRB5KDC_ERR_BADOPTION: NotRenewable,
    KRB5KRB_AP_ERR_TKT_EXPIRED: TicketExpired,
    KRB5_CC_NOTFOUND: CacheNotFound,
    KRB5_FCC_NOFILE: CacheNotFound,
    KRB5KDC_ERR_KEY_EXP: PasswordExpired,
    KRB5KDC_ERR_CLIENT_REVOKED: AccessDenied,
    KRB5KDC_ERR_NAME_EXP: AccountExpired,
    errno.EDQUOT: QuotaExceeded,
    errno.ENOKEY: CacheNotFound,
    errno.EKEYEXPIRED: TicketExpired,
}


def from_krb5(exc: BaseException, what: str) -> TicketError:
    """Map a krb5.Krb5Error (or OSError) to a :class:`TicketError` subclass.

    ``what`` says what was being done ("get_init_creds_password for alice@R"); it must not
    hold a secret.  The krb5 message text is kept: MIT never puts a password in it.
    """
    code = getattr(exc, "err_code", None)
    if code is None:
        code = getattr(exc, "errno", 0) or 0
    cls = _BY_CODE.get(code, TicketError)
    reason = str(exc) or exc.__class__.__name__
    if cls is QuotaExceeded:
        reason = "key quota exceeded (EDQUOT): raise kernel.keys.maxkeys/maxbytes"
    return cls(f"{what}: {reason}", code)
