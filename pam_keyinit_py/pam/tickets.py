"""The hook side of the ticket service: a tiny client run inside the PAM stack (sshd, login, su).

* ``authenticate`` gets the password (PAM_AUTHTOK from an earlier module, or a prompt
  through the application's conversation) and sends it to the service, which acquires
  the TGT for user@default_realm into KEYRING:persistent:<uid> with the user's uid.
* ``open_session`` registers the session, with a password or without (GSSAPI, publickey), and
  hands over a delegated FILE cache of the user (sshd's GSSAPI KRB5CCNAME) to be moved into
  the keyring; ``close_session`` unregisters it.  The service
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


def authenticate(pamh: Any, opts: Any, login: Any = None) -> int:
    """pam_sm_authenticate: get a TGT for the user through the service; map the outcome to a PAM code.

    ``login`` (the handle's :class:`~.account.LoginState`) learns the principal, or that the
    password was right but has expired: then this returns PAM_SUCCESS and the account check
    returns PAM_NEW_AUTHTOK_REQD, so the host runs the password change (pam_krb5's
    defer_pwchange).  Without ``login`` an expired password is PAM_AUTH_ERR.
    """
    try:
        return _authenticate(pamh, opts, login)
    except Exception as exc:  # never raise into libpam; the class name is safe to log, the text may not be
        syslog(pamh, LOG_ERR, f"tickets: authenticate failed: {exc.__class__.__name__}")
        return pamh.PAM_AUTHINFO_UNAVAIL


#: At most this many principals of a ~/.k5login are tried with one password (search_k5login).
K5LOGIN_MAX = 32


def k5login_principals(pw: pwd.struct_passwd) -> list[str] | None:
    """The principals in ``~user/.k5login``, or None when it does not exist (search_k5login).

    Read as MIT's k5login module would accept it: a regular file (no symlink followed) owned by
    the user or root; anything else yields no principal at all (fail closed).
    """
    import os
    import stat

    path = os.path.join(pw.pw_dir or "/nonexistent", ".k5login")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError:
        return []
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid not in (0, pw.pw_uid):
            return []
        data = os.read(fd, 64 * 1024)
    finally:
        os.close(fd)
    names = [line.strip() for line in data.decode("utf-8", "replace").splitlines()]
    return [n for n in names if n and not any(c.isspace() for c in n)][:K5LOGIN_MAX]


def _auth_request(opts: Any, user: str, pw: pwd.struct_passwd, password: str) -> dict[str, Any]:
    """The service's ``auth``: as user@REALM, or with search_k5login each ~/.k5login principal in turn."""
    from .. import protocol as P

    base = {"op": "auth", "user": user, "uid": pw.pw_uid, "gid": pw.pw_gid, "password": password}
    names = k5login_principals(pw) if opts.search_k5login else None
    if names is None:
        return _request(opts, base, opts.auth_timeout)
    reply = P.reply_error(P.BAD_PASSWORD, "no principal of ~/.k5login takes this password")
    for name in names:
        reply = _request(opts, {**base, "principal": name}, opts.auth_timeout)
        # A right password (even expired), the infrastructure failing, or a TGT that did not
        # validate (a possible impostor) ends the search; a wrong password tries the next one.
        if reply.get("ok") or reply.get("code") in (P.PASSWORD_EXPIRED, P.KDC_UNREACHABLE, P.UNAVAILABLE,
                                                   P.QUOTA, P.VALIDATION_FAILED, P.FAST_UNAVAILABLE):
            return reply
    if not reply.get("ok"):
        reply = P.reply_error(P.BAD_PASSWORD, "no principal of ~/.k5login takes this password")
    return reply


def _authenticate(pamh: Any, opts: Any, login: Any = None) -> int:
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

    reply = _auth_request(opts, user, pw, password)
    del password
    if login is not None and (reply.get("ok") or reply.get("code") == P.PASSWORD_EXPIRED):
        login.authenticated(user, reply.get("principal"), expired=not reply.get("ok"))
        if not reply.get("ok"):
            # The service proved the password (a kadmin/changepw ticket); acct_mgmt asks for a change.
            syslog(pamh, LOG_NOTICE, f"tickets: password of {user} expired: deferring to the change")
            return pamh.PAM_SUCCESS
    if reply.get("ok"):
        if opts.debug:
            syslog(pamh, LOG_DEBUG, f"tickets: TGT for {reply.get('principal')} in {reply.get('ccache')}")
        return pamh.PAM_SUCCESS
    code = reply.get("code")
    # A TGT that does not validate may come from a KDC impostor: an error, not a warning.
    level = {P.BAD_PASSWORD: LOG_NOTICE, P.VALIDATION_FAILED: LOG_ERR, P.FAST_UNAVAILABLE: LOG_ERR}
    syslog(pamh, level.get(code, LOG_WARNING), f"tickets: no TGT for {user}: {reply.get('error', code)}")
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
        # As pam_krb5 when krb5_verify_init_creds fails: the TGT may come from an impostor.
        P.VALIDATION_FAILED: pamh.PAM_AUTH_ERR,
        P.FAST_UNAVAILABLE: pamh.PAM_AUTHINFO_UNAVAIL,
        # The service refused the connection (a limit) or could not save the login: the service's
        # trouble, not the user's; the login goes on without a ticket, as with the KDC down.
        P.BUSY: pamh.PAM_AUTHINFO_UNAVAIL,
        P.STATE_NOT_SAVED: pamh.PAM_AUTHINFO_UNAVAIL,
    }.get(code, pamh.PAM_AUTH_ERR if code == P.DENIED else pamh.PAM_SERVICE_ERR)


def _pam_getenv(pamh: Any, name: str) -> str | None:
    """pam_getenv(3) through pam_python's ``pamh.env`` mapping; None when unset."""
    try:
        value = pamh.env[name]
    except Exception:
        return None
    return value if isinstance(value, str) and value else None


def open_session(pamh: Any, opts: Any, pw: pwd.struct_passwd, sids: list[int]) -> int:
    """Register the session with the service (the caller's pid is the session's anchor).

    ``sids`` belongs to this PAM handle: the service's session id is kept there for the
    close on the same handle (sshd's monitor), never shared with other handles.

    A login without a password registers too.  If the PAM environment's KRB5CCNAME names a
    per-login FILE cache of the user (sshd's delegated GSSAPI credentials), the service moves
    it into KEYRING:persistent:<uid> and the hook points KRB5CCNAME (pam_putenv) at the
    keyring.  Measured order in Debian 12's sshd (OpenSSH 9.2, sshd.c after authentication,
    all in the monitor): ssh_gssapi_storecreds() writes FILE:/tmp/krb5cc_<uid>_XXXXXXXXXX as the
    user and pam_putenv()s KRB5CCNAME, then pam_setcred(ESTABLISH), then pam_open_session (here:
    file and variable are both there).  The session child's environment gets sshd's own
    KRB5CCNAME (ssh_gssapi_do_child) *before* the PAM environment (session.c do_setup_env), so
    the PAM value wins; removing the variable from the PAM environment would leave sshd's FILE
    name in place, hence it is set to the keyring, never unset.
    """
    try:
        if pw.pw_uid < opts.minimum_uid:
            return pamh.PAM_IGNORE
        from .. import protocol as P

        message = {"op": "open", "user": pw.pw_name, "uid": pw.pw_uid, "gid": pw.pw_gid}
        delegated = _pam_getenv(pamh, "KRB5CCNAME")
        if delegated is not None and P.is_delegated_ccache(delegated, pw.pw_uid):
            message["ccache"] = delegated
        reply = _request(opts, message, SESSION_TIMEOUT)
        if not reply.get("ok"):
            syslog(pamh, LOG_WARNING,
                   f"tickets: session of {pw.pw_name} not registered: {reply.get('error')}")
            return pamh.PAM_IGNORE
        sids.append(int(reply["sid"]))
        name = reply.get("krb5ccname")
        if isinstance(name, str) and name:
            try:
                pamh.env["KRB5CCNAME"] = name
            except Exception as exc:
                syslog(pamh, LOG_WARNING, f"tickets: cannot set KRB5CCNAME={name}: {exc.__class__.__name__}")
            if opts.debug:
                syslog(pamh, LOG_DEBUG,
                       f"tickets: delegated TGT of {pw.pw_name} now in {reply.get('ccache')}")
        elif "ccache" in message:
            syslog(pamh, LOG_WARNING, f"tickets: delegated cache of {pw.pw_name} stays in {delegated}: "
                                      f"{reply.get('delegation_error')}")
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
