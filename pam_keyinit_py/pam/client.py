"""The hook's client of keyinit-ticketd: one request per connection, and the one table that turns
the service's reply codes into PAM return codes.

* :func:`authenticate` gets the password (PAM_AUTHTOK from an earlier module, or a prompt
  through the application's conversation) and sends it in the service's ``auth``; the service
  acquires the TGT for the user's principal (its ``principal_name``, default user@default_realm)
  into KEYRING:persistent:<uid> with the user's uid,
  and answers krb5_kuserok for the principal in the same reply, so acct_mgmt needs no request.
* A question of the KDC's preauth (an OTP token value) comes back as a ``prompt`` reply: it is
  asked through the conversation (PAM_PROMPT_ECHO_OFF, or ECHO_ON for a visible one) and the
  ``auth`` is sent again with ``answers`` (:func:`_relay_prompts`).
* :func:`open_session` registers the session, with a password or without (GSSAPI, publickey),
  and hands over a delegated FILE cache of the user (sshd's GSSAPI KRB5CCNAME) to be copied into
  the keyring, then removes the file once KRB5CCNAME names the keyring; :func:`close_session`
  unregisters it.  The service keeps the TGT of an auth as a
  *pending login* keyed by uid, so it does not matter that sshd (KbdInteractiveAuthentication)
  authenticates in a child that is gone by open_session.

The caller (``hook``) has looked the user up and checked ``minimum_uid``.  No Kerberos
library is loaded here, only the stdlib and ``protocol``.  The functions return PAM codes;
an unexpected exception is the caller's to catch.  The password never reaches a log line.
"""

import pwd

from .. import protocol as P
from . import LOG_DEBUG, LOG_ERR, LOG_NOTICE, LOG_WARNING, syslog

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .options import Options
    from .pamh import PamHandle

#: Bound on connect(): a service that is not there costs a login at most this long.
CONNECT_TIMEOUT = 1.0
#: open/close only touch the service's table and state file.
SESSION_TIMEOUT = 1.0
#: At most this many principals of a ~/.k5login are tried with one password (search_k5login).
K5LOGIN_MAX = 32
PASSWORD_PROMPT = "Password: "
#: Longest password sent to the service, in bytes: PAM_MAX_RESP_SIZE - 1, where pam_krb5 stops
#: (``rejecting password longer than 511``, PAM_AUTH_ERR).  The protocol would refuse a longer
#: one (4096) with an exception, which the hook would report as its own bug.
MAX_PASSWORD = 511
#: Rounds of the KDC's preauth questions per login.  Each round is a fresh AS exchange that sends
#: the earlier answers again, and an OTP server refuses a token value it has seen: so one round
#: (MIT's otp asks one question), and a KDC that asks again is refused.
PROMPT_ROUNDS = 1

class LoginState:
    """What one PAM handle learned at authenticate, for acct_mgmt and chauthtok.

    sshd runs authenticate, acct_mgmt and (for an expired password) chauthtok in one process
    with one handle in both of its PAM layouts, as /bin/login does, so the handle's Hook
    instance is enough to carry it.
    """

    __slots__ = ("user", "principal", "expired", "not_ours", "kuserok")

    def __init__(self) -> None:
        self.user: str | None = None
        self.principal: str | None = None  # who the service got a TGT (or changepw ticket) for
        self.expired = False  # the password was right but the KDC wants it changed
        self.not_ours = False  # chauthtok found no principal for this user
        self.kuserok: bool | None = None  # krb5_kuserok(principal, user) from the auth reply

    def authenticated(self, user: str, principal: str | None, expired: bool = False,
                      kuserok: bool | None = None) -> None:
        """Remember a proven password of ``user`` (``expired``: right, but must be changed)."""
        self.user, self.principal, self.expired, self.kuserok = user, principal, expired, kuserok


#: The one mapping of the service's reply codes to PAM return codes, per PAM call (pam_krb5's
#: codes).  ``P.OK`` is a successful reply; ``""`` is the code for any reply code not listed.
PAM_CODES: dict[str, dict[str, str]] = {
    # pam_sm_authenticate.
    "auth": {
        P.OK: "PAM_SUCCESS",
        P.BAD_PASSWORD: "PAM_AUTH_ERR",
        P.UNKNOWN_PRINCIPAL: "PAM_USER_UNKNOWN",
        P.KDC_UNREACHABLE: "PAM_AUTHINFO_UNAVAIL",
        P.UNAVAILABLE: "PAM_AUTHINFO_UNAVAIL",
        P.QUOTA: "PAM_AUTHINFO_UNAVAIL",
        # The KDC wants a new password: no TGT can be had with this one (without a LoginState
        # to defer the change to acct_mgmt).
        P.PASSWORD_EXPIRED: "PAM_AUTH_ERR",
        # Clock skew, policy and other KDC/library refusals: the infrastructure, not the user.
        P.KDC_ERROR: "PAM_AUTHINFO_UNAVAIL",
        # As pam_krb5 when krb5_verify_init_creds fails: the TGT may come from an impostor.
        P.VALIDATION_FAILED: "PAM_AUTH_ERR",
        P.FAST_UNAVAILABLE: "PAM_AUTHINFO_UNAVAIL",
        # A question of the KDC (OTP) this client could not be asked, or that kept coming.
        P.PROMPT: "PAM_AUTH_ERR",
        # Disabled or locked out.
        P.DENIED: "PAM_AUTH_ERR",
        # The service refused the connection (a limit) or could not save the login: the service's
        # trouble, not the user's; the login goes on without a ticket, as with the KDC down.
        P.BUSY: "PAM_AUTHINFO_UNAVAIL",
        P.STATE_NOT_SAVED: "PAM_AUTHINFO_UNAVAIL",
        "": "PAM_SERVICE_ERR",
    },
    # pam_sm_acct_mgmt after the hook's own authentication: krb5_kuserok only.  Not knowing the
    # answer fails closed.
    "kuserok": {P.OK: "PAM_SUCCESS", P.DENIED: "PAM_PERM_DENIED", P.BAD_REQUEST: "PAM_PERM_DENIED",
                "": "PAM_AUTHINFO_UNAVAIL"},
    # pam_sm_acct_mgmt after another module's authentication: the KDC's view of the user's
    # principal (the service's principal_name).  A user without a principal, or no answer, is
    # not this module's to judge.
    "account": {P.OK: "PAM_SUCCESS", P.UNKNOWN_PRINCIPAL: "PAM_IGNORE",
                P.PASSWORD_EXPIRED: "PAM_NEW_AUTHTOK_REQD", P.ACCOUNT_EXPIRED: "PAM_ACCT_EXPIRED",
                P.DENIED: "PAM_PERM_DENIED", "": "PAM_IGNORE"},
    # pam_sm_chauthtok, PAM_PRELIM_CHECK: the current password against kadmin/changepw.
    "chpass_check": {P.OK: "PAM_SUCCESS", P.UNKNOWN_PRINCIPAL: "PAM_USER_UNKNOWN",
                     P.BAD_PASSWORD: "PAM_AUTHTOK_RECOVERY_ERR", P.DENIED: "PAM_PERM_DENIED",
                     P.ACCOUNT_EXPIRED: "PAM_PERM_DENIED", P.KDC_UNREACHABLE: "PAM_TRY_AGAIN",
                     P.UNAVAILABLE: "PAM_TRY_AGAIN", "": "PAM_AUTHTOK_ERR"},
    # pam_sm_chauthtok, PAM_UPDATE_AUTHTOK: the change through kpasswd.
    "chpass": {P.OK: "PAM_SUCCESS", P.PASSWORD_REJECTED: "PAM_AUTHTOK_ERR",
               P.BAD_PASSWORD: "PAM_AUTHTOK_RECOVERY_ERR", P.DENIED: "PAM_PERM_DENIED",
               P.ACCOUNT_EXPIRED: "PAM_PERM_DENIED", "": "PAM_AUTHTOK_ERR"},
    # open_session/close_session: a session the service did not register must not fail the login.
    "session": {P.OK: "PAM_SUCCESS", "": "PAM_IGNORE"},
}


def reply_code(reply: "dict[str, Any]") -> str:
    """The reply's code: ``P.OK`` for a success, else its ``code`` (``""`` when it has none)."""
    return P.OK if reply.get("ok") else str(reply.get("code") or "")


def pam_code(pamh: "PamHandle", call: str, reply: "dict[str, Any]") -> int:
    """The PAM return code of ``reply`` to ``call`` (a key of :data:`PAM_CODES`)."""
    table = PAM_CODES[call]
    return int(getattr(pamh, table.get(reply_code(reply), table[""])))


def socket_path(opts: "Options") -> str:
    """The service's socket: ``socket=`` of the PAM line, else :data:`protocol.DEFAULT_SOCKET`."""
    return opts.socket or P.DEFAULT_SOCKET


def request(opts: "Options", message: "dict[str, Any]", timeout: float) -> "dict[str, Any]":
    """One request to the service at :func:`socket_path`; a missing or silent service is a reply too."""
    return P.request(message, socket_path(opts), connect_timeout=CONNECT_TIMEOUT, timeout=timeout)


def prompt(pamh: "PamHandle", text: str, hidden: bool = True) -> str | None:
    """One question (echo off unless ``hidden`` is false) through the application's conversation;
    None for no answer."""
    try:
        style = pamh.PAM_PROMPT_ECHO_OFF if hidden else pamh.PAM_PROMPT_ECHO_ON
        reply = pamh.conversation(pamh.Message(style, text))
    except Exception:  # noqa: BLE001 - a conversation that fails is no answer
        return None
    return getattr(reply, "resp", None) or None


def get_item(pamh: "PamHandle", item: str) -> str | None:
    """pam_get_item of PAM_AUTHTOK (``authtok``) or PAM_OLDAUTHTOK (``oldauthtok``); None if unset."""
    try:
        return getattr(pamh, item) or None
    except Exception:  # noqa: BLE001 - pam_get_item failing is no password
        return None


def set_item(pamh: "PamHandle", item: str, value: str) -> bool:
    """pam_set_item of PAM_AUTHTOK or PAM_OLDAUTHTOK, for the modules after this one."""
    try:
        setattr(pamh, item, value)
        return True
    except Exception:  # noqa: BLE001 - the caller decides whether that matters
        return False


def _ask_password(pamh: "PamHandle") -> str | None:
    """Prompt, and keep the answer in PAM_AUTHTOK as pam_krb5 does, for later modules (try_first_pass)."""
    token = prompt(pamh, PASSWORD_PROMPT)
    if token:
        set_item(pamh, "authtok", token)
    return token


def fits(password: str) -> bool:
    """Whether ``password`` is at most :data:`MAX_PASSWORD` bytes (pam_krb5 refuses a longer one)."""
    return len(password.encode(errors="replace")) <= MAX_PASSWORD


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


#: Reply codes that end a search_k5login search: a right password (even expired), the
#: infrastructure failing, or a TGT that did not validate (a possible impostor).
#: A ``prompt`` (an OTP principal asks its token whatever the password) does not end it: the
#: search goes on, and the first such question is relayed only if no principal takes the password.
_SEARCH_ENDS = frozenset({P.OK, P.PASSWORD_EXPIRED, P.KDC_UNREACHABLE, P.UNAVAILABLE, P.QUOTA,
                          P.VALIDATION_FAILED, P.FAST_UNAVAILABLE})


def _auth_request(opts: "Options", user: str, pw: pwd.struct_passwd, password: str) -> "dict[str, Any]":
    """The service's ``auth``: as user@REALM, or with search_k5login each ~/.k5login principal in turn.

    ``kuserok`` asks the service for krb5_kuserok(principal, user) in the same reply.
    """
    if not fits(password):
        return P.reply_error(P.BAD_PASSWORD, f"password longer than {MAX_PASSWORD} bytes")
    base = {"op": "auth", "user": user, "uid": pw.pw_uid, "gid": pw.pw_gid, "password": password,
            "kuserok": True}
    names = k5login_principals(pw) if opts.search_k5login else None
    if names is None:
        return request(opts, base, opts.auth_timeout)
    asks: dict[str, Any] | None = None
    for name in names:
        reply = request(opts, {**base, "principal": name}, opts.auth_timeout)
        code = reply_code(reply)
        if code == P.PROMPT:
            asks = asks or reply
        elif code in _SEARCH_ENDS:
            return reply
    return asks or P.reply_error(P.BAD_PASSWORD, "no principal of ~/.k5login takes this password")


def _relay_prompts(pamh: "PamHandle", flags: int, opts: "Options", user: str, pw: pwd.struct_passwd,
                   password: str, reply: "dict[str, Any]") -> "dict[str, Any]":
    """Ask the KDC's preauth questions of a ``prompt`` reply through the conversation and send
    ``auth`` again with the answers (the first ``answered`` ones kept), up to PROMPT_ROUNDS.

    An answer equal to the password is never sent: sshd's PasswordAuthentication conversation
    answers every echo-off question with the password (auth-pam.c sshpam_passwd_conv), so that
    client cannot be asked, and the password must not reach the KDC's OTP server.  The banner
    and the messages are dropped under PAM_SILENT in ``flags``; the questions are still asked.
    """
    answers: list[str] = []
    for _ in range(PROMPT_ROUNDS):
        prompts, answered = reply.get("prompts"), reply.get("answered")
        if reply_code(reply) != P.PROMPT or not isinstance(prompts, list) or not prompts:
            return reply
        answers = answers[:answered] if isinstance(answered, int) and answered >= 0 else []
        banner = reply.get("banner")
        if isinstance(banner, str) and banner:
            say(pamh, flags, pamh.PAM_TEXT_INFO, banner[:P.MAX_PROMPT_TEXT])
        asker = reply.get("principal")
        if opts.search_k5login and isinstance(asker, str) and asker.isprintable():
            say(pamh, flags, pamh.PAM_TEXT_INFO, f"Kerberos asks for {asker[:P.MAX_PROMPT_TEXT]}:")
        for question in prompts[:P.MAX_PROMPTS]:
            if not isinstance(question, dict):
                return P.reply_error(P.BAD_REQUEST, "bad prompt from the service")
            text = str(question.get("text") or "")[:P.MAX_PROMPT_TEXT].rstrip(": ") + ": "
            answer = prompt(pamh, text, question.get("hidden") is not False)
            why = ("no answer" if answer is None else
                   "this client answered it with the password (sshd PasswordAuthentication cannot ask it: "
                   "use keyboard-interactive)" if answer == password else
                   "the answer is too long" if len(answer.encode(errors="replace")) > P.MAX_ANSWER else "")
            if why:
                asked = text.strip()
                say(pamh, flags, pamh.PAM_ERROR_MSG, f"Kerberos needs an answer to \"{asked}\"; {why}")
                return P.reply_error(P.PROMPT, f"the KDC's question \"{asked}\" was not answered: {why}")
            answers.append(answer)
        principal = reply.get("principal")
        message = {"op": "auth", "user": user, "uid": pw.pw_uid, "gid": pw.pw_gid, "password": password,
                   "kuserok": True, "answers": answers[:P.MAX_ANSWERS],
                   **({"principal": principal} if isinstance(principal, str) and principal else {})}
        reply = request(opts, message, opts.auth_timeout)
        del message
    if reply_code(reply) == P.PROMPT:
        return P.reply_error(P.PROMPT, f"the KDC still asks after {PROMPT_ROUNDS} rounds of answers")
    return reply


def say(pamh: "PamHandle", flags: int, style: int, text: str) -> None:
    """One PAM_TEXT_INFO or PAM_ERROR_MSG through the application's conversation (its answer is
    ignored); nothing when the application passed PAM_SILENT in the call's ``flags``.

    As pam_krb5's pamk5_conv and pam_unix: PAM_SILENT silences the module's messages, never
    its questions (:func:`prompt` asks whatever the flags).
    """
    if flags & pamh.PAM_SILENT:
        return
    try:
        pamh.conversation(pamh.Message(style, text))
    except Exception:  # noqa: BLE001 - an application that cannot show it
        pass


def authenticate(pamh: "PamHandle", flags: int, opts: "Options", user: str, pw: pwd.struct_passwd,
                 login: "LoginState | None" = None) -> int:
    """pam_sm_authenticate: get a TGT for the user through the service; map the outcome to a PAM code.

    ``login`` (the handle's :class:`LoginState`) learns the principal and the
    kuserok answer, or that the password was right but has expired: then this returns
    PAM_SUCCESS and the account check returns PAM_NEW_AUTHTOK_REQD, so the host runs the
    password change (pam_krb5's defer_pwchange).  Without ``login`` an expired password is
    PAM_AUTH_ERR.
    """
    stored = get_item(pamh, "authtok")
    if stored:
        password: str | None = stored
    elif opts.use_first_pass:
        return int(pamh.PAM_AUTH_ERR)
    else:
        password = _ask_password(pamh)
    if not password:
        # No answer, or an empty one: pam_krb5's prompt_password calls both an authentication failure.
        return int(pamh.PAM_AUTH_ERR)
    reply = _auth_request(opts, user, pw, password)
    if (stored and opts.try_first_pass and not opts.use_first_pass
            and reply_code(reply) == P.BAD_PASSWORD):
        # pam_krb5's try_first_pass: the earlier module's password is not the Kerberos one.
        password = _ask_password(pamh)
        if not password:
            return int(pamh.PAM_AUTH_ERR)
        reply = _auth_request(opts, user, pw, password)
    if reply_code(reply) == P.PROMPT:
        reply = _relay_prompts(pamh, flags, opts, user, pw, password, reply)
    del password
    code = reply_code(reply)
    if login is not None and code in (P.OK, P.PASSWORD_EXPIRED):
        kuserok = reply.get("kuserok")
        login.authenticated(user, reply.get("principal"), expired=code != P.OK,
                            kuserok=kuserok if isinstance(kuserok, bool) else None)
        if code != P.OK:
            # The service proved the password (a kadmin/changepw ticket); acct_mgmt asks for a change.
            syslog(pamh, LOG_NOTICE, f"tickets: password of {user} expired: deferring to the change")
            return int(pamh.PAM_SUCCESS)
    if code == P.OK:
        if opts.debug:
            syslog(pamh, LOG_DEBUG, f"tickets: TGT for {reply.get('principal')} in {reply.get('ccache')}")
        return int(pamh.PAM_SUCCESS)
    # A TGT that does not validate may come from a KDC impostor: an error, not a warning.
    level = {P.BAD_PASSWORD: LOG_NOTICE, P.VALIDATION_FAILED: LOG_ERR, P.FAST_UNAVAILABLE: LOG_ERR}
    syslog(pamh, level.get(code, LOG_WARNING), f"tickets: no TGT for {user}: {reply.get('error', code)}")
    return pam_code(pamh, "auth", reply)


def _pam_getenv(pamh: "PamHandle", name: str) -> str | None:
    """pam_getenv(3) through pam_python's ``pamh.env`` mapping; None when unset."""
    try:
        value = pamh.env[name]
    except Exception:  # noqa: BLE001 - unset
        return None
    return value if isinstance(value, str) and value else None


def open_session(pamh: "PamHandle", opts: "Options", pw: pwd.struct_passwd, sids: list[int]) -> int:
    """Register the session with the service (the caller's pid is the session's anchor).

    ``sids`` belongs to this PAM handle: the service's session id is kept there for the
    close on the same handle (sshd's monitor), never shared with other handles.

    A login without a password registers too.  If the PAM environment's KRB5CCNAME names a
    per-login FILE cache of the user (sshd's delegated GSSAPI credentials), the service copies
    it into KEYRING:persistent:<uid>, and the hook points KRB5CCNAME (pam_putenv) at the
    keyring and only then removes the file (:func:`_remove_delegated`).  The service never
    removes it: a reply that comes after SESSION_TIMEOUT finds no one listening, and the
    session then keeps sshd's name, which must still lead to the ticket.  Measured order in
    Debian 12's sshd (OpenSSH 9.2, sshd.c after authentication, all in the monitor):
    ssh_gssapi_storecreds() writes FILE:/tmp/krb5cc_<uid>_XXXXXXXXXX as the user and
    pam_putenv()s KRB5CCNAME, then pam_setcred(ESTABLISH), then pam_open_session (here: file and
    variable are both there).  The session child's environment gets sshd's own
    KRB5CCNAME (ssh_gssapi_do_child) *before* the PAM environment (session.c do_setup_env), so
    the PAM value wins; removing the variable from the PAM environment would leave sshd's FILE
    name in place, hence it is set to the keyring, never unset.
    """
    message: dict[str, Any] = {"op": "open", "user": pw.pw_name, "uid": pw.pw_uid, "gid": pw.pw_gid}
    delegated = _pam_getenv(pamh, "KRB5CCNAME")
    if delegated is not None and P.is_delegated_ccache(delegated, pw.pw_uid):
        message["ccache"] = delegated
    else:
        delegated = None  # not a per-login cache: not sent, never removed
    reply = request(opts, message, SESSION_TIMEOUT)
    if not reply.get("ok"):
        syslog(pamh, LOG_WARNING, f"tickets: session of {pw.pw_name} not registered: {reply.get('error')}")
        return pam_code(pamh, "session", reply)
    sids.append(int(reply["sid"]))
    name = reply.get("krb5ccname")
    if isinstance(name, str) and name and delegated is not None:
        try:
            pamh.env["KRB5CCNAME"] = name
        except Exception as exc:  # noqa: BLE001 - the session goes on with sshd's name (and file)
            syslog(pamh, LOG_WARNING, f"tickets: cannot set KRB5CCNAME={name}: {exc.__class__.__name__}")
        else:
            _remove_delegated(pamh, delegated, pw.pw_uid)
        if opts.debug:
            syslog(pamh, LOG_DEBUG, f"tickets: delegated TGT of {pw.pw_name} now in {reply.get('ccache')}")
    elif delegated is not None:
        syslog(pamh, LOG_WARNING, f"tickets: delegated cache of {pw.pw_name} stays in {delegated}: "
                                  f"{reply.get('delegation_error')}")
    return pam_code(pamh, "session", reply)


def _remove_delegated(pamh: "PamHandle", source: str, uid: int) -> None:
    """unlink(2) sshd's delegated FILE cache, now copied into the keyring and no longer named by
    the session's KRB5CCNAME, as sshd's own cleanup (ssh_gssapi_cleanup_creds, as root in the
    monitor) would at logout: the forwarded TGT does not wait out the session in /tmp.

    Only a regular file owned by ``uid`` (lstat(2): a symlink is not followed) is removed.  In
    sticky /tmp nobody but that user (and root) can replace the name between the lstat and the
    unlink, and unlinking removes a name, never what a link points to.
    """
    import os
    import stat

    path = source.removeprefix("FILE:")
    try:
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode) and st.st_uid == uid:
            os.unlink(path)
    except FileNotFoundError:
        pass  # gone already (a service that removed it itself): KRB5CCNAME names the keyring anyway
    except OSError as exc:
        syslog(pamh, LOG_WARNING, f"tickets: cannot remove {path}: {exc.strerror or exc.__class__.__name__}")


def close_session(pamh: "PamHandle", opts: "Options", pw: pwd.struct_passwd, sids: list[int]) -> int:
    """Unregister the session this handle opened; the service clears the tickets at the uid's last one.

    A handle that registered nothing sends nothing: a close without a sid would close
    whichever session of the uid this process had opened.
    """
    if not sids:
        return int(pamh.PAM_IGNORE)
    reply = request(opts, {"op": "close", "uid": pw.pw_uid, "sid": sids.pop()}, SESSION_TIMEOUT)
    if not reply.get("ok"):
        syslog(pamh, LOG_WARNING, f"tickets: close of {pw.pw_name}'s session: {reply.get('error')}")
    return pam_code(pamh, "session", reply)
