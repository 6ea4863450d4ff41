"""Ticket errors: krb5 error codes (krb5.Krb5Error.err_code) and kernel errnos mapped to classes.

Each class declares what the service answers when a request fails with it, as python-gssapi's
``GSSErrorRegistry`` classes declare their GSS codes: ``reply`` (a protocol reply code),
``reason`` (the reply's text), ``logged`` and ``level`` (the service's log line).  One function,
:func:`refusal`, turns an exception into the reply; there is no per-handler except ladder.

Messages name the principal and the krb5/kernel reason, never a password.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Collection
from typing import Any

from .. import protocol as P
from ..errors import KeyinitError
from . import journal

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


#: krb5 code or errno -> the class that means it; filled from each class's ``codes``.
_BY_CODE: dict[int, type[TicketError]] = {}


class TicketError(KeyinitError):
    """Base class: a ticket operation failed.  ``code`` is the krb5 code or errno (0 if none).

    ``codes``: the krb5 codes and errnos that mean this class (:func:`from_krb5`).  The other
    class attributes say how the service answers it (see :func:`refusal`); ``{failed}`` is the
    request's own words for a failure ("no ticket", "account check failed", ...).
    """

    codes: tuple[int, ...] = ()
    reply = P.KDC_ERROR
    reason = "{failed}: {cls}"
    logged = "{cls}: {exc}"
    level = logging.WARNING

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for code in cls.__dict__.get("codes", ()):  # its own, not its base class's
            assert code not in _BY_CODE, f"{code} means both {_BY_CODE[code].__name__} and {cls.__name__}"
            _BY_CODE[code] = cls


class BadPassword(TicketError):
    """The KDC rejected the password (KRB5KDC_ERR_PREAUTH_FAILED / KRB5KRB_AP_ERR_BAD_INTEGRITY)."""

    codes = (KRB5KDC_ERR_PREAUTH_FAILED, KRB5KRB_AP_ERR_BAD_INTEGRITY)
    reply, reason, logged, level = P.BAD_PASSWORD, "wrong password", "wrong password", logging.INFO


class UnknownPrincipal(TicketError):
    """The KDC does not know the client principal (KRB5KDC_ERR_C_PRINCIPAL_UNKNOWN)."""

    codes = (KRB5KDC_ERR_C_PRINCIPAL_UNKNOWN,)
    reply, reason = P.UNKNOWN_PRINCIPAL, "principal {principal} unknown to the KDC"
    logged, level = "unknown principal", logging.INFO


class KdcUnreachable(TicketError):
    """No KDC answered (KRB5_KDC_UNREACH), or none answered within the caller's bound."""

    codes = (KRB5_KDC_UNREACH, KRB5_REALM_CANT_RESOLVE)
    reply, reason, logged = P.KDC_UNREACHABLE, "no KDC answered", "no KDC answered: {exc}"


class NotRenewable(TicketError):
    """The ticket is not renewable, or its renew_till has passed (KDC_ERR_BADOPTION, TKT_EXPIRED)."""

    codes = (KRB5KDC_ERR_BADOPTION,)


class TicketExpired(NotRenewable):
    """The ticket in the cache expired before it could be renewed."""

    codes = (KRB5KRB_AP_ERR_TKT_EXPIRED, errno.EKEYEXPIRED)


class CacheNotFound(TicketError):
    """The credential cache does not exist or holds no principal (KRB5_CC_NOTFOUND, ENOKEY)."""

    codes = (KRB5_CC_NOTFOUND, KRB5_FCC_NOFILE, errno.ENOKEY)


class QuotaExceeded(TicketError):
    """The kernel refused to store the keys: the user's key quota is full (EDQUOT)."""

    codes = (errno.EDQUOT,)
    reply, reason = P.QUOTA, "key quota of the user exceeded"
    logged, level = "key quota exceeded, no ticket stored: {exc}", logging.ERROR


class PasswordExpired(TicketError):
    """The password must be changed before a ticket is issued (KRB5KDC_ERR_KEY_EXP)."""

    codes = (KRB5KDC_ERR_KEY_EXP,)
    reply, reason = P.PASSWORD_EXPIRED, "password expired: it must be changed"
    logged, level = "the password of {principal} has expired", logging.INFO


class AccessDenied(TicketError):
    """The principal is locked out or disabled (KRB5KDC_ERR_CLIENT_REVOKED)."""

    codes = (KRB5KDC_ERR_CLIENT_REVOKED,)
    reply, reason = P.DENIED, "principal {principal} is disabled or locked out"
    logged, level = "principal {principal} is disabled or locked out", logging.INFO


class AccountExpired(AccessDenied):
    """The principal's account expiry date has passed (KRB5KDC_ERR_NAME_EXP)."""

    codes = (KRB5KDC_ERR_NAME_EXP,)
    reply, reason = P.ACCOUNT_EXPIRED, "the account of {principal} has expired"
    logged = "principal {principal} has expired"


class PasswordRejected(TicketError):
    """kpasswd refused the new password (KRB5_KPASSWD_SOFTERROR: too short, too recent...)."""

    # The kpasswd server's own words (length, classes, history): what the user must read.
    reply, reason, logged, level = P.PASSWORD_REJECTED, "{exc}", "new password rejected: {exc}", logging.INFO


class ValidationFailed(TicketError):
    """The TGT did not validate against the host keytab: it may come from a KDC impostor.

    krb5_verify_init_creds failed after the keytab key was found (the host principal unknown
    to the KDC that issued the TGT, a ticket that does not decrypt with the keytab key, ...).
    """

    reply, reason = P.VALIDATION_FAILED, "the ticket did not validate against the host keytab"
    # A TGT that cannot be proven to come from the realm's KDC: a possible impostor.  The
    # message names the keytab and the principal; it holds no secret.
    logged, level = "TGT validation failed (validate={validate}), login refused: {exc}", logging.ERROR


class NoValidationKey(TicketError):
    """The host keytab is missing or holds no key for the validation principal (ENOENT,
    KRB5_KT_NOTFOUND): the TGT could not be checked at all."""

    reply, reason = P.VALIDATION_FAILED, "the host keytab has no key to validate the ticket with"
    logged, level = ValidationFailed.logged, logging.ERROR


class FastUnavailable(TicketError):
    """No FAST armor could be had (no host keytab, or the KDC refused the host's TGT) and
    ``fast = "require"`` forbids an unarmored password exchange."""

    reply, reason = P.FAST_UNAVAILABLE, "no FAST armor for the password exchange"
    logged, level = 'fast = "require" and {exc}; refused', logging.ERROR




class PromptNeeded(TicketError):
    """The KDC's preauth asked a question the request did not answer (an OTP token value).

    ``prompts``: the step's questions as (text, hidden); ``banner``: the KDC's text before
    them; ``answered``: how many of the request's answers the exchange used first.  The texts
    come from the KDC and libkrb5, never from the user: no answer is ever in them.
    """

    reply, reason = P.PROMPT, "the KDC asks for more than the password"
    logged, level = "{exc}", logging.INFO

    def __init__(self, message: str, prompts: list[tuple[str, bool]], banner: str = "",
                 answered: int = 0) -> None:
        super().__init__(message, KRB5_PREAUTH_FAILED)
        self.prompts, self.banner, self.answered = prompts, banner, answered


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


class _Fields(dict):
    """format_map() fields: a field the call site did not give reads as "?" (never a KeyError)."""

    def __missing__(self, key: str) -> str:
        return "?"


def refusal(exc: TicketError, allowed: Collection[str], log: logging.Logger, what: str, subject: str,
            uid: int, suffix: str = "", *, event: str | None = None, **fields: Any) -> dict[str, Any]:
    """Log ``exc`` and build the failure reply for it, from the attributes its class declares.

    The reply code is the nearest one in the class's MRO that the request may answer with
    (``allowed``: the op's ``errors`` in :data:`protocol.OPS`): an ``account_expired`` during
    ``auth`` answers as its base class, ``denied``.  ``fields`` fill the texts' ``{...}``
    (``principal``, ``failed``, ``validate``...); they must not hold a secret.  The log line
    reads ``<what> <subject> (uid <uid>): <logged><suffix>``; with ``event`` it carries the
    journal fields KEYINIT_EVENT, _UID, _PRINCIPAL and _CODE (journal.fields).
    """
    cls = next((c for c in type(exc).__mro__ if c.__dict__.get("reply") in allowed), TicketError)
    values = _Fields(fields, exc=exc, cls=type(exc).__name__)
    code = cls.reply if cls.reply in allowed else P.KDC_ERROR
    extra = journal.fields(event=event, uid=uid, principal=fields.get("principal"), code=code) \
        if event else None
    log.log(cls.level, "%s %s (uid %d): %s%s", what, subject, uid, cls.logged.format_map(values), suffix,
            extra=extra)
    return P.reply_error(code, cls.reason.format_map(values))
