"""``pam_sm_acct_mgmt`` and ``pam_sm_chauthtok`` for Kerberos users: clients of the ticket service.

Account (pam_krb5's rules, plus the KDC's view of the principal):

* the password was right but has expired (``authenticate`` remembered it in this handle)
  -> PAM_NEW_AUTHTOK_REQD, so sshd (keyboard-interactive) and login run pam_chauthtok;
* the user authenticated through the hook in this handle -> krb5_kuserok(principal, user)
  in the service (~/.k5login, auth_to_local): PAM_PERM_DENIED if it says no.  The service
  answered it in the auth reply, so no request is needed unless it said no (then ``account``
  tells the service to drop the refused login's TGT at once) or gave no answer;
* any other login (public key, GSSAPI, another module's password) -> the service asks the
  KDC, without a password, whether the user's principal (the service's ``principal_name``) is
  locked (PAM_PERM_DENIED), expired (PAM_ACCT_EXPIRED) or must change its password
  (PAM_NEW_AUTHTOK_REQD).  A user without a principal, or a KDC/service that does not answer,
  is not this module's to judge: PAM_IGNORE.

Password change (PAM's two passes, as pam_krb5):

* PAM_PRELIM_CHECK: the current password (PAM_OLDAUTHTOK, else a prompt) must get a
  kadmin/changepw ticket; it is kept in PAM_OLDAUTHTOK for the second pass.
* PAM_UPDATE_AUTHTOK: the new password (PAM_AUTHTOK with ``use_authtok``, else asked twice)
  goes to kpasswd through the service; the server's refusal (too short, reused...) is shown
  with PAM_ERROR_MSG.  At a login whose password had expired, the TGT is then acquired with
  the new password (the service's ``auth``), so it lands in KEYRING:persistent:<uid>.
* With PAM_CHANGE_EXPIRED_AUTHTOK nothing happens unless the password has expired.
* With ``try_first_pass``, a PAM_OLDAUTHTOK from an earlier module that the KDC calls wrong is
  followed by one prompt for the current password.
* Users below ``minimum_uid`` (the hook tells, as ``ours``) are ignored; in the update pass the
  new password is still asked for and stored, so a later module with ``use_authtok`` (pam_unix)
  can use it.
* Under PAM_SILENT the PAM_TEXT_INFO and PAM_ERROR_MSG messages are not sent (pam_krb5's
  pamk5_conv); the password prompts still are.

The hook has looked the user up; its never-raise wrapper catches what escapes.  stdlib and
``protocol`` (through ``client``) only; no password reaches a log line.
"""

import pwd

from .. import protocol as P
from . import LOG_NOTICE, LOG_WARNING, syslog
from .client import LoginState, fits, get_item, pam_code, prompt, request, set_item
from .client import say as _say

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .options import Options
    from .pamh import PamHandle

ACCOUNT_TIMEOUT = 8.0  # kuserok is local; the KDC probe is bounded by the service's kdc_timeout (6 s)
CHPASS_TIMEOUT = 14.0  # the changepw AS exchange plus the kpasswd exchange (each bounded by the service)

EXPIRED_TEXT = "Password expired.  You must change it now."
CURRENT_PROMPT = "Current Kerberos password: "
NEW_PROMPT = "Enter new Kerberos password: "
RETYPE_PROMPT = "Retype new Kerberos password: "
PLAIN_NEW_PROMPT = "Enter new password: "
PLAIN_RETYPE_PROMPT = "Retype new password: "


# ------------------------------------------------------------------ pam_sm_acct_mgmt

def acct_mgmt(pamh: "PamHandle", opts: "Options", user: str, pw: pwd.struct_passwd, login: LoginState) -> int:
    """pam_sm_acct_mgmt for a user at or above minimum_uid."""
    if login.user == user and (login.principal or login.expired):
        # Authenticated through the hook in this handle: the KDC answered moments ago; only
        # the authorization (.k5login / auth_to_local) is left, and the auth reply carried it.
        if login.kuserok:
            reply = P.reply_ok(principal=login.principal)
        else:
            # No (the service drops the refused login's TGT now) or no answer: ask.
            reply = request(opts, {"op": "account", "user": user, "uid": pw.pw_uid,
                                   "principal": login.principal, "kuserok": True, "kdc": False},
                            ACCOUNT_TIMEOUT)
        if not reply.get("ok"):
            syslog(pamh, LOG_WARNING, f"account {user}: {reply.get('error', reply.get('code'))}")
        elif login.expired:
            syslog(pamh, LOG_NOTICE, f"account {user}: Kerberos password expired, change required")
            return int(pamh.PAM_NEW_AUTHTOK_REQD)
        return pam_code(pamh, "kuserok", reply)
    # Another module authenticated: is the user's principal still allowed tickets?
    reply = request(opts, {"op": "account", "user": user, "uid": pw.pw_uid, "kuserok": False, "kdc": True},
                    ACCOUNT_TIMEOUT)
    code = reply.get("code")
    if code == P.PASSWORD_EXPIRED:
        login.authenticated(user, reply.get("principal"), expired=True)
        syslog(pamh, LOG_NOTICE, f"account {user}: Kerberos password expired, change required")
    elif code in (P.ACCOUNT_EXPIRED, P.DENIED):
        syslog(pamh, LOG_NOTICE, f"account {user}: {reply.get('error')}")
    elif not reply.get("ok") and code != P.UNKNOWN_PRINCIPAL:
        # The KDC or the service did not answer: the login was not ours, so do not block it.
        syslog(pamh, LOG_WARNING, f"account {user}: not checked: {reply.get('error', code)}")
    return pam_code(pamh, "account", reply)


# ------------------------------------------------------------------ pam_sm_chauthtok

def _new_password(pamh: "PamHandle", flags: int, opts: "Options", kerberos: bool = True) -> str | None:
    """PAM_AUTHTOK with use_authtok; else asked twice and stored in PAM_AUTHTOK (pam_krb5's prompts).

    For a user that is not ours (``kerberos`` false) the prompts do not say Kerberos: the
    password is asked only for the module after this one.
    """
    if opts.use_authtok:
        stored = get_item(pamh, "authtok")
        return stored if stored and fits(stored) else None
    first = prompt(pamh, NEW_PROMPT if kerberos else PLAIN_NEW_PROMPT)
    if not first or (kerberos and not fits(first)):  # as pam_krb5: over 511 bytes is PAM_AUTHTOK_ERR
        return None
    second = prompt(pamh, RETYPE_PROMPT if kerberos else PLAIN_RETYPE_PROMPT)
    if first != second:
        _say(pamh, flags, pamh.PAM_ERROR_MSG, "Passwords don't match")
        return None
    set_item(pamh, "authtok", first)  # for a later module stacked with use_authtok
    return first


def chauthtok(pamh: "PamHandle", flags: int, opts: "Options", user: str, pw: pwd.struct_passwd, ours: bool,
              login: LoginState) -> int:
    """pam_sm_chauthtok; ``ours`` is false for a user below minimum_uid."""
    prelim = bool(flags & pamh.PAM_PRELIM_CHECK)
    update = bool(flags & pamh.PAM_UPDATE_AUTHTOK)
    if flags & pamh.PAM_CHANGE_EXPIRED_AUTHTOK and not (login.expired and login.user == user):
        return int(pamh.PAM_IGNORE)  # only an expired password is changed this way
    if not ours or (login.not_ours and login.user == user):
        if update and not opts.use_authtok and not get_item(pamh, "authtok"):
            _new_password(pamh, flags, opts, kerberos=False)
        return int(pamh.PAM_IGNORE)
    principal = login.principal if login.user == user else None
    base = {"op": "chpass", "user": user, "uid": pw.pw_uid, "principal": principal}
    if prelim:
        return _check_current(pamh, flags, opts, user, pw, login, base)
    if not update:
        return int(pamh.PAM_IGNORE)
    old = get_item(pamh, "oldauthtok")
    if not old:  # PAM_PRELIM_CHECK did not run or did not succeed: nothing proves the old one
        return int(pamh.PAM_AUTHTOK_RECOVERY_ERR)
    new = _new_password(pamh, flags, opts)
    if not new:
        return int(pamh.PAM_AUTHTOK_ERR)
    reply = request(opts, {**base, "old_password": old, "new_password": new}, CHPASS_TIMEOUT)
    del old
    if not reply.get("ok"):
        code = reply.get("code")
        syslog(pamh, LOG_NOTICE, f"chauthtok {user}: {reply.get('error', code)}")
        if code == P.PASSWORD_REJECTED:
            _say(pamh, flags, pamh.PAM_ERROR_MSG, str(reply.get("error") or "Password change rejected"))
        elif code not in (P.BAD_PASSWORD, P.DENIED, P.ACCOUNT_EXPIRED):
            _say(pamh, flags, pamh.PAM_ERROR_MSG, "Kerberos password change failed; try again later")
        return pam_code(pamh, "chpass", reply)
    syslog(pamh, LOG_NOTICE, f"chauthtok {user}: Kerberos password of {reply.get('principal')} changed")
    if not login.expired:
        return int(pamh.PAM_SUCCESS)
    # The change was part of a login: get the TGT with the new password now, so the session
    # starts with it in KEYRING:persistent:<uid> (and the login fails if the KDC will not issue it).
    auth = request(opts, {"op": "auth", "user": user, "uid": pw.pw_uid, "gid": pw.pw_gid, "password": new,
                          "principal": reply.get("principal"), "kuserok": True}, opts.auth_timeout)
    del new
    if not auth.get("ok"):
        syslog(pamh, LOG_WARNING, f"chauthtok {user}: no TGT with the new password: "
                                  f"{auth.get('error', auth.get('code'))}")
        return int(pamh.PAM_AUTHTOK_ERR)
    kuserok = auth.get("kuserok")
    login.authenticated(user, auth.get("principal"), expired=False,
                        kuserok=kuserok if isinstance(kuserok, bool) else None)
    return int(pamh.PAM_SUCCESS)


def _check_current(pamh: "PamHandle", flags: int, opts: "Options", user: str, pw: pwd.struct_passwd,
                   login: LoginState, base: dict[str, object]) -> int:
    """PAM_PRELIM_CHECK: the current password must get a kadmin/changepw ticket; kept in PAM_OLDAUTHTOK."""
    old = stored = get_item(pamh, "oldauthtok")
    if not old and not (login.user == user and (login.principal or login.expired)):
        # Before asking for a Kerberos password: does the user have a principal at all?
        probe = request(opts, {"op": "account", "user": user, "uid": pw.pw_uid, "kuserok": False,
                               "kdc": True}, ACCOUNT_TIMEOUT)
        if probe.get("code") == P.UNKNOWN_PRINCIPAL:
            login.user, login.not_ours = user, True
            return int(pamh.PAM_USER_UNKNOWN)
    if not old:
        if login.expired:
            _say(pamh, flags, pamh.PAM_TEXT_INFO, EXPIRED_TEXT)
        old = prompt(pamh, CURRENT_PROMPT)
    if not old or not fits(old):  # longer than 511 bytes: pam_krb5's AUTH_ERR, RECOVER_ERR here
        return int(pamh.PAM_AUTHTOK_RECOVERY_ERR)
    reply = request(opts, {**base, "old_password": old}, CHPASS_TIMEOUT)
    if stored and opts.try_first_pass and reply.get("code") == P.BAD_PASSWORD:
        # pam_krb5's try_first_pass: an earlier module's old password is not the Kerberos one.
        old = prompt(pamh, CURRENT_PROMPT)
        if not old or not fits(old):
            return int(pamh.PAM_AUTHTOK_RECOVERY_ERR)
        reply = request(opts, {**base, "old_password": old}, CHPASS_TIMEOUT)
    if reply.get("ok"):
        # Kept for the update pass, which has nothing to prove the change with otherwise.
        return int(pamh.PAM_SUCCESS if set_item(pamh, "oldauthtok", old) else pamh.PAM_AUTHTOK_ERR)
    del old
    code = reply.get("code")
    if code == P.UNKNOWN_PRINCIPAL:
        login.user, login.not_ours = user, True
        return pam_code(pamh, "chpass_check", reply)
    syslog(pamh, LOG_NOTICE if code == P.BAD_PASSWORD else LOG_WARNING,
           f"chauthtok {user}: {reply.get('error', code)}")
    if code == P.BAD_PASSWORD:
        _say(pamh, flags, pamh.PAM_ERROR_MSG, "Current Kerberos password incorrect")
    elif code in (P.KDC_UNREACHABLE, P.UNAVAILABLE):
        _say(pamh, flags, pamh.PAM_ERROR_MSG, "Kerberos password service unavailable; try again later")
    return pam_code(pamh, "chpass_check", reply)
