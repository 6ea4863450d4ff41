"""The hook side of the ticket service: a tiny client run inside the PAM stack (sshd, login, su).

* ``authenticate`` gets the password (PAM_AUTHTOK from an earlier module, or a prompt
  through the application's conversation) and sends it to the service, which acquires
  the TGT for user@default_realm into KEYRING:persistent:<uid> with the user's uid.
* ``open_session`` registers the session; ``close_session`` unregisters it.  The service
  keeps the TGT of an auth as a *pending login* keyed by uid, so it does not matter that
  sshd (KbdInteractiveAuthentication) authenticates in a child that is gone by open_session.

No Kerberos library is loaded here, only the stdlib and ``protocol``.  Nothing raises into
libpam: every path returns a PAM code.  The password never reaches a log line.
"""

from __future__ import annotations

import pwd

from .log import LOG_DEBUG, LOG_ERR, LOG_NOTICE, LOG_WARNING, syslog

if False:  # typing.TYPE_CHECKING, without importing typing (17 ms) into every login
    from typing import Any

#: Bound on connect(): a service that is not there costs a login at most this long.
CONNECT_TIMEOUT = 1.0
#: Bound on the whole password exchange (the service itself gives the KDC kdc_timeout ≤ 2 s).
AUTH_TIMEOUT = 2.0
#: open/close only touch the service's table and state file.
SESSION_TIMEOUT = 1.0

def _request(opts: Any, message: dict[str, Any], timeout: float) -> dict[str, Any]:
    from .. import protocol

    return protocol.request(message, opts.socket, connect_timeout=CONNECT_TIMEOUT, timeout=timeout)


def _get_password(pamh: Any, opts: Any) -> str | None:
    """PAM_AUTHTOK if an earlier module set it; else (unless use_first_pass) prompt with echo off."""
    try:
        token = pamh.authtok
    except Exception:
        token = None
    if token:
        return token
    if opts.use_first_pass:
        return None
    try:
        reply = pamh.conversation(pamh.Message(pamh.PAM_PROMPT_ECHO_OFF, "Password: "))
    except Exception:
        return None
    token = getattr(reply, "resp", None)
    if token:
        try:
            pamh.authtok = token  # as pam_krb5 does: later modules (try_first_pass) may reuse it
        except Exception:
            pass
    return token or None


def authenticate(pamh: Any, opts: Any) -> int:
    """pam_sm_authenticate: get a TGT for the user through the service; map the outcome to a PAM code."""
    try:
        return _authenticate(pamh, opts)
    except Exception as exc:  # never raise into libpam; the class name is safe to log, the text may not be
        syslog(pamh, LOG_ERR, f"tickets: authenticate failed: {exc.__class__.__name__}")
        return pamh.PAM_AUTHINFO_UNAVAIL


def _authenticate(pamh: Any, opts: Any) -> int:
    try:
        user = pamh.get_user(None)
    except Exception:
        return pamh.PAM_USER_UNKNOWN
    if not user:
        return pamh.PAM_USER_UNKNOWN
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return pamh.PAM_USER_UNKNOWN
    if pw.pw_uid < opts.minimum_uid:
        return pamh.PAM_IGNORE
    password = _get_password(pamh, opts)
    if not password:
        return pamh.PAM_AUTH_ERR if opts.use_first_pass else pamh.PAM_CONV_ERR
    from .. import protocol as P

    reply = _request(opts, {"op": "auth", "user": user, "uid": pw.pw_uid, "gid": pw.pw_gid,
                            "password": password}, AUTH_TIMEOUT)
    del password
    if reply.get("ok"):
        if opts.debug:
            syslog(pamh, LOG_DEBUG, f"tickets: TGT for {reply.get('principal')} in {reply.get('ccache')}")
        return pamh.PAM_SUCCESS
    code = reply.get("code")
    syslog(pamh, LOG_NOTICE if code == P.BAD_PASSWORD else LOG_WARNING,
           f"tickets: no TGT for {user}: {reply.get('error', code)}")
    return {
        P.BAD_PASSWORD: pamh.PAM_AUTH_ERR,
        P.UNKNOWN_PRINCIPAL: pamh.PAM_USER_UNKNOWN,
        P.KDC_UNREACHABLE: pamh.PAM_AUTHINFO_UNAVAIL,
        P.UNAVAILABLE: pamh.PAM_AUTHINFO_UNAVAIL,
        P.QUOTA: pamh.PAM_AUTHINFO_UNAVAIL,
        # The KDC wants a new password: no TGT can be had with this one.
        P.PASSWORD_EXPIRED: pamh.PAM_AUTH_ERR,
        # Clock skew, policy and other KDC/library refusals: the infrastructure, not the user.
        P.KDC_ERROR: pamh.PAM_AUTHINFO_UNAVAIL,
        # The service refused the connection (a limit) or could not save the login: the service's
        # trouble, not the user's; the login goes on without a ticket, as with the KDC down.
        P.BUSY: pamh.PAM_AUTHINFO_UNAVAIL,
        P.STATE_NOT_SAVED: pamh.PAM_AUTHINFO_UNAVAIL,
    }.get(code, pamh.PAM_AUTH_ERR if code == P.DENIED else pamh.PAM_SERVICE_ERR)


def open_session(pamh: Any, opts: Any, pw: pwd.struct_passwd, sids: list[int]) -> int:
    """Register the session with the service (the caller's pid is the session's anchor).

    ``sids`` belongs to this PAM handle: the service's session id is kept there for the
    close on the same handle (sshd's monitor), never shared with other handles.
    """
    try:
        if pw.pw_uid < opts.minimum_uid:
            return pamh.PAM_IGNORE
        reply = _request(opts, {"op": "open", "user": pw.pw_name, "uid": pw.pw_uid, "gid": pw.pw_gid},
                         SESSION_TIMEOUT)
        if not reply.get("ok"):
            syslog(pamh, LOG_WARNING,
                   f"tickets: session of {pw.pw_name} not registered: {reply.get('error')}")
            return pamh.PAM_IGNORE
        sids.append(int(reply["sid"]))
        return pamh.PAM_SUCCESS
    except Exception as exc:
        syslog(pamh, LOG_ERR, f"tickets: open_session failed: {exc.__class__.__name__}")
        return pamh.PAM_IGNORE


def close_session(pamh: Any, opts: Any, pw: pwd.struct_passwd, sids: list[int]) -> int:
    """Unregister the session this handle opened; the service clears the tickets at the uid's last one.

    A handle that registered nothing sends nothing: a close without a sid would close
    whichever session of the uid this process had opened.
    """
    try:
        if pw.pw_uid < opts.minimum_uid:
            return pamh.PAM_IGNORE
        if not sids:
            return pamh.PAM_IGNORE
        reply = _request(opts, {"op": "close", "uid": pw.pw_uid, "sid": sids.pop()}, SESSION_TIMEOUT)
        if not reply.get("ok"):
            syslog(pamh, LOG_WARNING, f"tickets: close of {pw.pw_name}'s session: {reply.get('error')}")
            return pamh.PAM_IGNORE
        return pamh.PAM_SUCCESS
    except Exception as exc:
        syslog(pamh, LOG_ERR, f"tickets: close_session failed: {exc.__class__.__name__}")
        return pamh.PAM_IGNORE
