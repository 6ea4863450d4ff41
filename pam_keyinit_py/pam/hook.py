"""The pam_python entry points: ``pam_sm_authenticate``, ``pam_sm_acct_mgmt``, ``pam_sm_chauthtok``,
``pam_sm_setcred``, ``pam_sm_open_session``, ``pam_sm_close_session``.

pam_python executes the shim (/lib/security/pam_keyinit_py.py) afresh for each PAM handle,
while this module stays in ``sys.modules`` for the life of the interpreter.  So the per-handle
state lives in a :class:`Hook` instance that the shim creates and binds the ``pam_sm_*`` names to.

Return codes: setcred and the session calls are pam_keyinit's (open_session PAM_SESSION_ERR,
setcred PAM_CRED_ERR and PAM_IGNORE for flags other than ESTABLISH/DELETE, close_session
PAM_SUCCESS, an unknown user PAM_USER_UNKNOWN); the ticket service's part of a session never
fails it.  authenticate, acct_mgmt and chauthtok are pam_krb5's, through ``client.PAM_CODES``;
users below ``minimum_uid`` get PAM_IGNORE from them.  No exception leaves an entry point
(:func:`_never_raises`): an unexpected one is logged (its class and where it was raised, never
its text or locals, which may hold a password) and becomes that entry point's error code.

Imports at load: stdlib, the package's logging and ``options``; not ``protocol``, which only the ticket
client needs (a ``force revoke`` session line never loads it).  The pam_keyinit logic
(``keyinit``, layer 0's cffi module) is loaded by the first session or setcred call, the
ticket client (``client``, ``account``) by the first auth, account or password call, so
sshd's keyboard-interactive auth child loads no keyring code.  Nothing here loads Kerberos:
the service does that work.  No module on these paths has ``from __future__ import
annotations``: the future statement is a real import of ``__future__`` in every login's fresh
interpreter, so annotations naming TYPE_CHECKING-only names are quoted instead
(tests/unit/test_hook_imports.py pins it).
"""

import pwd

from . import LOG_DEBUG, LOG_ERR, syslog
from .options import Options, parse_cached

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from .client import LoginState
    from .keyinit import KeyinitState
    from .pamh import PamHandle

    Entry = Callable[["Hook", PamHandle, int, list[str]], int]


def _options(pamh: "PamHandle", argv: list[str]) -> Options:
    # argv[0] is the script path pam_python was given; the options follow.
    opts, first = parse_cached(argv[1:] if argv else ())
    if first and opts.unknown:
        # pam_keyinit ignores unknown options silently; say so once per process.
        syslog(pamh, LOG_ERR, "ignoring unknown or malformed option(s): " + " ".join(opts.unknown))
    return opts


def _crash(pamh: "PamHandle", where: str, exc: BaseException) -> None:
    """Log an unexpected exception: its class and the innermost file:line, no text, no locals."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    at = f" at {tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else ""
    syslog(pamh, LOG_ERR, f"{where}: unexpected {type(exc).__name__}{at}")


def _never_raises(error: str) -> "Callable[[Entry], Entry]":
    """Wrap an entry point so nothing reaches libpam: an exception is logged and becomes ``error``.

    pam_python would turn it into PAM_SERVICE_ERR with a traceback (locals and all) in syslog.
    """
    def wrap(entry: "Entry") -> "Entry":
        def guarded(self: "Hook", pamh: "PamHandle", flags: int, argv: list[str]) -> int:
            try:
                return entry(self, pamh, flags, argv)
            except BaseException as exc:  # noqa: BLE001 - nothing may reach libpam
                try:
                    _crash(pamh, entry.__name__, exc)
                    return int(getattr(pamh, error))
                except BaseException:  # noqa: BLE001 - a broken handle: libpam's own failure code
                    return 3  # PAM_SERVICE_ERR in <security/_pam_types.h>
        guarded.__name__, guarded.__doc__ = entry.__name__, entry.__doc__
        return guarded
    return wrap


def _user(pamh: "PamHandle", prompt: str | None) -> tuple[str, pwd.struct_passwd] | None:
    """pam_get_user(3) and getpwnam(3); None for no user, or one the system does not know."""
    try:
        user = pamh.get_user(prompt)
        return (user, pwd.getpwnam(user)) if user else None
    except Exception:  # noqa: BLE001 - pamh.exception, KeyError, ValueError (NUL): no such user
        return None


def _ours(opts: Options, pw: pwd.struct_passwd) -> bool:
    """The one minimum_uid check: whether the user's Kerberos side is this module's business."""
    return pw.pw_uid >= opts.minimum_uid


def _kerberos_user(pamh: "PamHandle", argv: list[str], below_minimum: bool = False,
                   ) -> tuple[Options, str, pwd.struct_passwd, bool] | int:
    """The auth/account/password calls' start: (options, user, passwd entry, ours), or the PAM code
    to return now: PAM_USER_UNKNOWN, or PAM_IGNORE below minimum_uid unless ``below_minimum``."""
    opts = _options(pamh, argv)
    found = _user(pamh, None)
    if found is None:
        return int(pamh.PAM_USER_UNKNOWN)
    ours = _ours(opts, found[1])
    if not ours and not below_minimum:
        return int(pamh.PAM_IGNORE)
    return opts, found[0], found[1], ours


class Hook:
    """The entry points bound to the state of one PAM handle."""

    def __init__(self) -> None:
        self._state: KeyinitState | None = None  # pam_keyinit's statics, made at the first session call
        self._login: LoginState | None = None  # what authenticate learned, for acct_mgmt and chauthtok
        self.ticket_sids: list[int] = []  # the service's ids of the sessions this handle opened

    @property
    def state(self) -> "KeyinitState":
        """pam_keyinit's state for this handle (loads the keyring code on first use)."""
        if self._state is None:
            from .keyinit import KeyinitState

            self._state = KeyinitState()
        return self._state

    @property
    def login(self) -> "LoginState":
        """What authenticate learned in this handle."""
        if self._login is None:
            from .client import LoginState

            self._login = LoginState()
        return self._login

    @_never_raises("PAM_AUTHINFO_UNAVAIL")
    def authenticate(self, pamh: "PamHandle", flags: int, argv: list[str]) -> int:
        """pam_sm_authenticate: the service gets a TGT with the password (pam_keyinit has no auth part)."""
        found = _kerberos_user(pamh, argv)
        if isinstance(found, int):
            return found
        from . import client

        opts, user, pw, _ = found
        return client.authenticate(pamh, flags, opts, user, pw, self.login)

    @_never_raises("PAM_SERVICE_ERR")
    def acct_mgmt(self, pamh: "PamHandle", flags: int, argv: list[str]) -> int:
        """pam_sm_acct_mgmt: expired password, krb5_kuserok, and the KDC's view of the principal."""
        found = _kerberos_user(pamh, argv)
        if isinstance(found, int):
            return found
        from . import account

        opts, user, pw, _ = found
        return account.acct_mgmt(pamh, opts, user, pw, self.login)

    @_never_raises("PAM_AUTHTOK_ERR")
    def chauthtok(self, pamh: "PamHandle", flags: int, argv: list[str]) -> int:
        """pam_sm_chauthtok: change the Kerberos password through kpasswd (PRELIM_CHECK, UPDATE_AUTHTOK)."""
        # Users below minimum_uid come too: the new password is still asked for the next module.
        found = _kerberos_user(pamh, argv, below_minimum=True)
        if isinstance(found, int):
            return found
        from . import account

        opts, user, pw, ours = found
        return account.chauthtok(pamh, flags, opts, user, pw, ours, self.login)

    @_never_raises("PAM_CRED_ERR")
    def setcred(self, pamh: "PamHandle", flags: int, argv: list[str]) -> int:
        """pam_sm_setcred: ESTABLISH_CRED creates the keyring, DELETE_CRED revokes it with ``revoke``.

        Hosts call setcred and open_session in either order; whichever comes first makes the keyring.
        """
        from .keyinit import debug, do_keyinit, kill_keyrings, note_options

        opts = _options(pamh, argv)
        state = self.state
        note_options(state, opts)
        if flags & pamh.PAM_ESTABLISH_CRED:
            debug(state, pamh, "ESTABLISH_CRED")
            return do_keyinit(state, pamh, opts, pamh.PAM_CRED_ERR)
        if flags & pamh.PAM_DELETE_CRED and state.my_session_keyring > 0 and state.do_revoke:
            debug(state, pamh, "DELETE_CRED")
            return kill_keyrings(state, pamh, pamh.PAM_CRED_ERR)
        return int(pamh.PAM_IGNORE)

    @_never_raises("PAM_SESSION_ERR")
    def open_session(self, pamh: "PamHandle", flags: int, argv: list[str]) -> int:
        """pam_sm_open_session: count the session, make the keyring, register with the ticket service."""
        from .keyinit import debug, do_keyinit

        opts = _options(pamh, argv)
        state = self.state
        state.session_counter += 1
        debug(state, pamh, f"OPEN {state.session_counter}")
        ret = do_keyinit(state, pamh, opts, pamh.PAM_SESSION_ERR)
        # Also when the keyring step failed (EDQUOT at a full key quota): on an optional line the
        # session goes on, and an uncounted session loses its ticket at another one's logout.
        if opts.tickets and state.pw is not None:
            self._tickets("open_session", pamh, opts)
        return ret

    @_never_raises("PAM_SESSION_ERR")
    def close_session(self, pamh: "PamHandle", flags: int, argv: list[str]) -> int:
        """pam_sm_close_session: the last close revokes the keyring this handle made, with ``revoke``."""
        from .keyinit import debug, kill_keyrings

        opts = _options(pamh, argv)
        state = self.state
        debug(state, pamh, f"CLOSE {state.session_counter},{state.my_session_keyring},{int(state.do_revoke)}")
        state.session_counter -= 1
        if opts.tickets:
            self._tickets("close_session", pamh, opts)
        if state.session_counter <= 0 and state.my_session_keyring > 0 and state.do_revoke:
            kill_keyrings(state, pamh, pamh.PAM_SESSION_ERR)
        return int(pamh.PAM_SUCCESS)

    def end(self, pamh: "PamHandle") -> None:
        """pam_sm_end: pam_end() drops this handle's state with the shim's namespace."""

    def _tickets(self, call: str, pamh: "PamHandle", opts: Options) -> None:
        """The session's ticket part, ``client.open_session`` or ``client.close_session``.

        Its PAM code is logged with ``debug`` and not returned: the session's code is
        pam_keyinit's, and a service that is down must not fail a login's session.
        """
        pw = self.state.pw
        if pw is None:
            found = _user(pamh, "key user")
            if found is None:
                return  # no user, no ticket session
            pw = found[1]
        if not _ours(opts, pw):
            return
        from . import client

        try:
            if call == "open_session":
                code = client.open_session(pamh, opts, pw, self.ticket_sids)
            else:
                code = client.close_session(pamh, opts, pw, self.ticket_sids)
        except Exception as exc:  # noqa: BLE001 - the keyring session must not fail for the service
            _crash(pamh, f"tickets {call}", exc)
            return
        if opts.debug:
            syslog(pamh, LOG_DEBUG, f"tickets {call}: PAM code {code}")
