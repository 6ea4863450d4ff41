"""``pam_sm_acct_mgmt`` and ``pam_sm_chauthtok`` for Kerberos users: clients of the ticket service.

Account (pam_krb5's rules, plus the KDC's view of the principal):

* the password was right but has expired (``authenticate`` remembered it in this handle)
  -> PAM_NEW_AUTHTOK_REQD, so sshd (keyboard-interactive) and login run pam_chauthtok;
* the user authenticated through the hook in this handle -> krb5_kuserok(principal, user)
  in the service (~/.k5login, auth_to_local): PAM_PERM_DENIED if it says no;
* any other login (public key, GSSAPI, another module's password) -> the service asks the
  KDC, without a password, whether user@REALM is locked (PAM_PERM_DENIED), expired
  (PAM_ACCT_EXPIRED) or must change its password (PAM_NEW_AUTHTOK_REQD).  A user without a
  principal, or a KDC/service that does not answer, is not this module's to judge: PAM_IGNORE.

Password change (PAM's two passes, as pam_krb5):

* PAM_PRELIM_CHECK: the current password (PAM_OLDAUTHTOK, else a prompt) must get a
  kadmin/changepw ticket; it is kept in PAM_OLDAUTHTOK for the second pass.
* PAM_UPDATE_AUTHTOK: the new password (PAM_AUTHTOK with ``use_authtok``, else asked twice)
  goes to kpasswd through the service; the server's refusal (too short, reused...) is shown
  with PAM_ERROR_MSG.  At a login whose password had expired, the TGT is then acquired with
  the new password (the service's ``auth``), so it lands in KEYRING:persistent:<uid>.
* With PAM_CHANGE_EXPIRED_AUTHTOK nothing happens unless the password has expired.
* Users below ``minimum_uid`` are ignored; in the update pass the new password is still asked
  for and stored, so a later module with ``use_authtok`` (pam_unix) can use it.

stdlib and ``protocol`` only; nothing raises into libpam; no password reaches a log line.
"""

from __future__ import annotations

import pwd

from .log import LOG_ERR, LOG_NOTICE, LOG_WARNING, syslog

if False:  # typing.TYPE_CHECKING without importing typing into every login
    from typing import Any

ACCOUNT_TIMEOUT = 8.0  # kuserok is local; the KDC probe is bounded by the service's kdc_timeout (6 s)
CHPASS_TIMEOUT = 14.0  # the changepw AS exchange plus the kpasswd exchange (each bounded by the service)

EXPIRED_TEXT = "Password expired.  You must change it now."
CURRENT_PROMPT = "Current Kerberos password: "
NEW_PROMPT = "Enter new Kerberos password: "
RETYPE_PROMPT = "Retype new Kerberos password: "
PLAIN_NEW_PROMPT = "Enter new password: "
PLAIN_RETYPE_PROMPT = "Retype new password: "


class LoginState:
    """What one PAM handle learned at authenticate, for acct_mgmt and chauthtok.

    sshd runs authenticate, acct_mgmt and (for an expired password) chauthtok in one process
    with one handle in both of its PAM layouts, as /bin/login does, so the handle's Hook
    instance is enough to carry it.
    """

    __slots__ = ("user", "principal", "expired", "not_ours")

    def __init__(self) -> None:
        self.user: str | None = None
        self.principal: str | None = None  # who the service got a TGT (or changepw ticket) for
        self.expired = False  # the password was right but the KDC wants it changed
        self.not_ours = False  # chauthtok found no principal for this user

    def authenticated(self, user: str, principal: str | None, expired: bool = False) -> None:
        self.user, self.principal, self.expired = user, principal, expired


def _request(opts: Any, message: dict[str, Any], timeout: float) -> dict[str, Any]:
    from .. import protocol

    return protocol.request(message, opts.socket, connect_timeout=1.0, timeout=timeout)


def _user(pamh: Any) -> tuple[str, pwd.struct_passwd] | None:
    try:
        user = pamh.get_user(None)
        return (user, pwd.getpwnam(user)) if user else None
    except Exception:
        return None


def _say(pamh: Any, style: int, text: str) -> None:
    """One message through the application's conversation (its answer is ignored)."""
    try:
        pamh.conversation(pamh.Message(style, text))
    except Exception:
        pass


def _ask(pamh: Any, prompt: str) -> str | None:
    try:
        reply = pamh.conversation(pamh.Message(pamh.PAM_PROMPT_ECHO_OFF, prompt))
    except Exception:
        return None
    return getattr(reply, "resp", None) or None


# ------------------------------------------------------------------ pam_sm_acct_mgmt

def acct_mgmt(pamh: Any, opts: Any, login: LoginState) -> int:
    """pam_sm_acct_mgmt; never raises."""
    try:
        return _acct_mgmt(pamh, opts, login)
    except Exception as exc:
        syslog(pamh, LOG_ERR, f"acct_mgmt failed: {exc.__class__.__name__}")
        return pamh.PAM_SERVICE_ERR


def _acct_mgmt(pamh: Any, opts: Any, login: LoginState) -> int:
    from .. import protocol as P

    found = _user(pamh)
    if found is None:
        return pamh.PAM_USER_UNKNOWN
    user, pw = found
    if pw.pw_uid < opts.minimum_uid:
        return pamh.PAM_IGNORE
    if login.user == user and (login.principal or login.expired):
        # Authenticated through the hook in this handle: the KDC answered moments ago; only
        # the authorization (.k5login / auth_to_local) is left to check.
        reply = _request(opts, {"op": "account", "user": user, "uid": pw.pw_uid, "principal": login.principal,
                                "kuserok": True, "kdc": False}, ACCOUNT_TIMEOUT)
        if reply.get("ok"):
            if login.expired:
                syslog(pamh, LOG_NOTICE, f"account {user}: Kerberos password expired, change required")
                return pamh.PAM_NEW_AUTHTOK_REQD
            return pamh.PAM_SUCCESS
        syslog(pamh, LOG_WARNING, f"account {user}: {reply.get('error', reply.get('code'))}")
        if reply.get("code") in (P.DENIED, P.BAD_REQUEST):
            return pamh.PAM_PERM_DENIED
        return pamh.PAM_AUTHINFO_UNAVAIL  # authorization unknown: fail closed
    # Another module authenticated: is the user's principal still allowed tickets?
    reply = _request(opts, {"op": "account", "user": user, "uid": pw.pw_uid, "kuserok": False, "kdc": True},
                     ACCOUNT_TIMEOUT)
    if reply.get("ok"):
        return pamh.PAM_SUCCESS
    code = reply.get("code")
    if code == P.UNKNOWN_PRINCIPAL:
        return pamh.PAM_IGNORE  # a local user without a principal: not ours to judge
    if code == P.PASSWORD_EXPIRED:
        login.authenticated(user, reply.get("principal"), expired=True)
        syslog(pamh, LOG_NOTICE, f"account {user}: Kerberos password expired, change required")
        return pamh.PAM_NEW_AUTHTOK_REQD
    if code == P.ACCOUNT_EXPIRED:
        syslog(pamh, LOG_NOTICE, f"account {user}: {reply.get('error')}")
        return pamh.PAM_ACCT_EXPIRED
    if code == P.DENIED:
        syslog(pamh, LOG_NOTICE, f"account {user}: {reply.get('error')}")
        return pamh.PAM_PERM_DENIED
    # The KDC or the service did not answer: the login was not ours, so do not block it.
    syslog(pamh, LOG_WARNING, f"account {user}: not checked: {reply.get('error', code)}")
    return pamh.PAM_IGNORE


# ------------------------------------------------------------------ pam_sm_chauthtok

def chauthtok(pamh: Any, flags: int, opts: Any, login: LoginState) -> int:
    """pam_sm_chauthtok; never raises."""
    try:
        return _chauthtok(pamh, flags, opts, login)
    except Exception as exc:
        syslog(pamh, LOG_ERR, f"chauthtok failed: {exc.__class__.__name__}")
        return pamh.PAM_AUTHTOK_ERR


def _new_password(pamh: Any, opts: Any, kerberos: bool = True) -> str | None:
    """PAM_AUTHTOK with use_authtok; else asked twice and stored in PAM_AUTHTOK (pam_krb5's prompts).

    For a user that is not ours (``kerberos`` false) the prompts do not say Kerberos: the
    password is asked only for the module after this one.
    """
    if opts.use_authtok:
        try:
            return pamh.authtok or None
        except Exception:
            return None
    first = _ask(pamh, NEW_PROMPT if kerberos else PLAIN_NEW_PROMPT)
    if not first:
        return None
    second = _ask(pamh, RETYPE_PROMPT if kerberos else PLAIN_RETYPE_PROMPT)
    if first != second:
        _say(pamh, pamh.PAM_ERROR_MSG, "Passwords don't match")
        return None
    try:
        pamh.authtok = first  # for a later module stacked with use_authtok
    except Exception:
        pass
    return first


def _chauthtok(pamh: Any, flags: int, opts: Any, login: LoginState) -> int:
    from .. import protocol as P

    prelim = bool(flags & pamh.PAM_PRELIM_CHECK)
    update = bool(flags & pamh.PAM_UPDATE_AUTHTOK)
    found = _user(pamh)
    if found is None:
        return pamh.PAM_USER_UNKNOWN
    user, pw = found
    if flags & pamh.PAM_CHANGE_EXPIRED_AUTHTOK and not (login.expired and login.user == user):
        return pamh.PAM_IGNORE  # only an expired password is changed this way
    if pw.pw_uid < opts.minimum_uid or (login.not_ours and login.user == user):
        if update and not opts.use_authtok:
            try:
                have = pamh.authtok
            except Exception:
                have = None
            if not have:
                _new_password(pamh, opts, kerberos=False)
        return pamh.PAM_IGNORE
    principal = login.principal if login.user == user else None
    base = {"op": "chpass", "user": user, "uid": pw.pw_uid, "principal": principal}
    if prelim:
        try:
            old = pamh.oldauthtok
        except Exception:
            old = None
        if not old and not (login.user == user and (login.principal or login.expired)):
            # Before asking for a Kerberos password: does the user have a principal at all?
            probe = _request(opts, {"op": "account", "user": user, "uid": pw.pw_uid, "kuserok": False,
                                    "kdc": True}, ACCOUNT_TIMEOUT)
            if probe.get("code") == P.UNKNOWN_PRINCIPAL:
                login.user, login.not_ours = user, True
                return pamh.PAM_USER_UNKNOWN
        if not old:
            if login.expired:
                _say(pamh, pamh.PAM_TEXT_INFO, EXPIRED_TEXT)
            old = _ask(pamh, CURRENT_PROMPT)
        if not old:
            return pamh.PAM_AUTHTOK_RECOVERY_ERR
        reply = _request(opts, {**base, "old_password": old}, CHPASS_TIMEOUT)
        if reply.get("ok"):
            try:
                pamh.oldauthtok = old
            except Exception:
                return pamh.PAM_AUTHTOK_ERR
            return pamh.PAM_SUCCESS
        del old
        code = reply.get("code")
        if code == P.UNKNOWN_PRINCIPAL:
            login.user, login.not_ours = user, True
            return pamh.PAM_USER_UNKNOWN
        syslog(pamh, LOG_NOTICE if code == P.BAD_PASSWORD else LOG_WARNING,
               f"chauthtok {user}: {reply.get('error', code)}")
        if code == P.BAD_PASSWORD:
            _say(pamh, pamh.PAM_ERROR_MSG, "Current Kerberos password incorrect")
            return pamh.PAM_AUTHTOK_RECOVERY_ERR
        if code in (P.DENIED, P.ACCOUNT_EXPIRED):
            return pamh.PAM_PERM_DENIED
        if code in (P.KDC_UNREACHABLE, P.UNAVAILABLE):
            _say(pamh, pamh.PAM_ERROR_MSG, "Kerberos password service unavailable; try again later")
            return pamh.PAM_TRY_AGAIN
        return pamh.PAM_AUTHTOK_ERR
    if not update:
        return pamh.PAM_IGNORE
    try:
        old = pamh.oldauthtok
    except Exception:
        old = None
    if not old:  # PAM_PRELIM_CHECK did not run or did not succeed: nothing proves the old one
        return pamh.PAM_AUTHTOK_RECOVERY_ERR
    new = _new_password(pamh, opts)
    if not new:
        return pamh.PAM_AUTHTOK_ERR
    reply = _request(opts, {**base, "old_password": old, "new_password": new}, CHPASS_TIMEOUT)
    del old
    if not reply.get("ok"):
        code = reply.get("code")
        syslog(pamh, LOG_NOTICE, f"chauthtok {user}: {reply.get('error', code)}")
        if code == P.PASSWORD_REJECTED:
            _say(pamh, pamh.PAM_ERROR_MSG, str(reply.get("error") or "Password change rejected"))
            return pamh.PAM_AUTHTOK_ERR
        if code == P.BAD_PASSWORD:
            return pamh.PAM_AUTHTOK_RECOVERY_ERR
        if code in (P.DENIED, P.ACCOUNT_EXPIRED):
            return pamh.PAM_PERM_DENIED
        _say(pamh, pamh.PAM_ERROR_MSG, "Kerberos password change failed; try again later")
        return pamh.PAM_AUTHTOK_ERR
    syslog(pamh, LOG_NOTICE, f"chauthtok {user}: Kerberos password of {reply.get('principal')} changed")
    if not login.expired:
        return pamh.PAM_SUCCESS
    # The change was part of a login: get the TGT with the new password now, so the session
    # starts with it in KEYRING:persistent:<uid> (and the login fails if the KDC will not issue it).
    auth = _request(opts, {"op": "auth", "user": user, "uid": pw.pw_uid, "gid": pw.pw_gid, "password": new,
                           "principal": reply.get("principal")}, 4.0)
    del new
    if not auth.get("ok"):
        syslog(pamh, LOG_WARNING, f"chauthtok {user}: no TGT with the new password: "
                                  f"{auth.get('error', auth.get('code'))}")
        return pamh.PAM_AUTHTOK_ERR
    login.authenticated(user, auth.get("principal"), expired=False)
    return pamh.PAM_SUCCESS
