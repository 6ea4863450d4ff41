"""The pam_python entry points: ``pam_sm_authenticate``, ``pam_sm_acct_mgmt``, ``pam_sm_chauthtok``,
``pam_sm_setcred``, ``pam_sm_open_session``, ``pam_sm_close_session``.

pam_python executes the shim (/lib/security/pam_keyinit_py.py) afresh for each
PAM handle, while this module stays in ``sys.modules`` for the life of the
interpreter.  So the per-handle state lives in a :class:`Hook` instance that
the shim creates; the module-level ``pam_sm_*`` functions use one default
instance for hosts that import this module directly.

Return codes are pam_keyinit's: open_session PAM_SESSION_ERR, setcred
PAM_CRED_ERR (PAM_IGNORE for flags other than ESTABLISH/DELETE), close_session
PAM_SUCCESS, authenticate PAM_IGNORE unless the ticket service answers, an
unknown user PAM_USER_UNKNOWN.  acct_mgmt and chauthtok are pam_krb5's (see ``account``):
an unexpected error there is PAM_SERVICE_ERR and PAM_AUTHTOK_ERR.  No exception leaves an entry point: an
unexpected one is logged (type and text, no secrets) and mapped to that code.

Imports: stdlib and layer 0 only; ``pam_keyinit_py.pam.tickets`` (krb5, IPC) is
imported only when the ``tickets`` option or the auth phase needs it.
"""

from __future__ import annotations

from .account import LoginState
from .keyinit import KeyinitState, debug, do_keyinit, kill_keyrings, note_options
from .log import LOG_ERR, syslog
from .options import Options, parse_cached


def _options(pamh: object, argv: list[str]) -> Options:
    # argv[0] is the script path pam_python was given; the options follow.
    opts, first = parse_cached(argv[1:] if argv else ())
    if first and opts.unknown:
        # pam_keyinit ignores unknown options silently; say so once per process.
        syslog(pamh, LOG_ERR, "ignoring unknown or malformed option(s): " + " ".join(opts.unknown))
    return opts


def _crash(pamh: object, where: str, exc: BaseException) -> None:
    # Type and message only: a traceback could show locals, and locals may hold a password.
    syslog(pamh, LOG_ERR, f"{where}: unexpected {type(exc).__name__}: {exc}")


def _tickets() -> object | None:
    try:
        from . import tickets
    except ModuleNotFoundError as exc:
        if exc.name == "pam_keyinit_py.pam.tickets":
            return None  # the ticket client is not installed: keyrings only
        raise
    return tickets


class Hook:
    """The entry points bound to the state of one PAM handle."""

    def __init__(self) -> None:
        self.state = KeyinitState()
        self.ticket_sids: list[int] = []  # the service's ids of the sessions this handle opened
        self.login = LoginState()  # what authenticate learned, for acct_mgmt and chauthtok

    def authenticate(self, pamh: object, flags: int, argv: list[str]) -> int:
        """pam_sm_authenticate: pam_keyinit ignores auth; the ticket client may take the password."""
        try:
            opts = _options(pamh, argv)
            note_options(self.state, opts)
            tickets = _tickets()
            if tickets is None:
                return pamh.PAM_IGNORE  # type: ignore[attr-defined]
            return int(tickets.authenticate(pamh, opts, self.login))  # type: ignore[attr-defined]
        except BaseException as exc:  # noqa: BLE001 - nothing may reach libpam
            _crash(pamh, "authenticate", exc)
            return pamh.PAM_IGNORE  # type: ignore[attr-defined]

    def acct_mgmt(self, pamh: object, flags: int, argv: list[str]) -> int:
        """pam_sm_acct_mgmt: expired password, krb5_kuserok, and the KDC's view of the principal."""
        try:
            from . import account

            return account.acct_mgmt(pamh, _options(pamh, argv), self.login)
        except BaseException as exc:  # noqa: BLE001
            _crash(pamh, "acct_mgmt", exc)
            return pamh.PAM_SERVICE_ERR  # type: ignore[attr-defined]

    def chauthtok(self, pamh: object, flags: int, argv: list[str]) -> int:
        """pam_sm_chauthtok: change the Kerberos password through kpasswd (PRELIM_CHECK, UPDATE_AUTHTOK)."""
        try:
            from . import account

            return account.chauthtok(pamh, flags, _options(pamh, argv), self.login)
        except BaseException as exc:  # noqa: BLE001
            _crash(pamh, "chauthtok", exc)
            return pamh.PAM_AUTHTOK_ERR  # type: ignore[attr-defined]

    def setcred(self, pamh: object, flags: int, argv: list[str]) -> int:
        """pam_sm_setcred: ESTABLISH_CRED creates the keyring, DELETE_CRED revokes it with ``revoke``.

        Hosts call setcred and open_session in either order; whichever comes
        first makes the keyring.
        """
        try:
            opts = _options(pamh, argv)
            state = self.state
            note_options(state, opts)
            if flags & pamh.PAM_ESTABLISH_CRED:  # type: ignore[attr-defined]
                debug(state, pamh, "ESTABLISH_CRED")
                return do_keyinit(state, pamh, opts, pamh.PAM_CRED_ERR)  # type: ignore[attr-defined]
            if flags & pamh.PAM_DELETE_CRED and state.my_session_keyring > 0 and state.do_revoke:  # type: ignore[attr-defined]
                debug(state, pamh, "DELETE_CRED")
                return kill_keyrings(state, pamh, pamh.PAM_CRED_ERR)  # type: ignore[attr-defined]
            return pamh.PAM_IGNORE  # type: ignore[attr-defined]
        except BaseException as exc:  # noqa: BLE001
            _crash(pamh, "setcred", exc)
            return pamh.PAM_CRED_ERR  # type: ignore[attr-defined]

    def open_session(self, pamh: object, flags: int, argv: list[str]) -> int:
        """pam_sm_open_session: count the session, make the keyring, register with the ticket service."""
        try:
            opts = _options(pamh, argv)
            state = self.state
            note_options(state, opts)
            state.session_counter += 1
            debug(state, pamh, f"OPEN {state.session_counter}")
            ret = do_keyinit(state, pamh, opts, pamh.PAM_SESSION_ERR)  # type: ignore[attr-defined]
            if ret == pamh.PAM_SUCCESS and opts.tickets and state.pw is not None:  # type: ignore[attr-defined]
                self._ticket_call("open_session", pamh, opts)
            return ret
        except BaseException as exc:  # noqa: BLE001
            _crash(pamh, "open_session", exc)
            return pamh.PAM_SESSION_ERR  # type: ignore[attr-defined]

    def close_session(self, pamh: object, flags: int, argv: list[str]) -> int:
        """pam_sm_close_session: the last close revokes the keyring this handle made, with ``revoke``."""
        try:
            opts = _options(pamh, argv)
            state = self.state
            debug(state, pamh, f"CLOSE {state.session_counter},{state.my_session_keyring},"
                               f"{int(state.do_revoke)}")
            state.session_counter -= 1
            if opts.tickets:
                self._ticket_call("close_session", pamh, opts)
            if state.session_counter <= 0 and state.my_session_keyring > 0 and state.do_revoke:
                kill_keyrings(state, pamh, pamh.PAM_SESSION_ERR)  # type: ignore[attr-defined]
            return pamh.PAM_SUCCESS  # type: ignore[attr-defined]
        except BaseException as exc:  # noqa: BLE001
            _crash(pamh, "close_session", exc)
            return pamh.PAM_SESSION_ERR  # type: ignore[attr-defined]

    def end(self, pamh: object) -> None:
        """pam_sm_end: pam_end() drops this handle's state with the shim's namespace."""

    def _ticket_call(self, name: str, pamh: object, opts: Options) -> None:
        # The ticket client never raises by contract; a session must not fail if it does.
        pw = self.state.pw
        if pw is None:
            import pwd

            try:
                pw = pwd.getpwnam(pamh.get_user("key user"))  # type: ignore[attr-defined]
            except Exception:  # noqa: BLE001 - no user, no ticket session
                return
        try:
            tickets = _tickets()
            if tickets is not None:
                getattr(tickets, name)(pamh, opts, pw, self.ticket_sids)
        except BaseException as exc:  # noqa: BLE001
            _crash(pamh, f"tickets.{name}", exc)


_default = Hook()
pam_sm_authenticate = _default.authenticate
pam_sm_acct_mgmt = _default.acct_mgmt
pam_sm_chauthtok = _default.chauthtok
pam_sm_setcred = _default.setcred
pam_sm_open_session = _default.open_session
pam_sm_close_session = _default.close_session
pam_sm_end = _default.end
