"""The one parser of the module arguments on a ``pam_python.so pam_keyinit_py.py ...`` line.

pam_keyinit.c compares each argument with ``strcmp`` and silently skips the rest.  Here the
options are one declarative table, as pam-krb5's ``options.c``: the annotated class attributes
of :class:`Options` give each option's name, type and default, written once.  A ``bool`` is a
bare word (``force``); any other type is ``name=value``, read by that type's parser in
:data:`_PARSERS`.  Anything unknown or malformed (``forc``, ``revoke=yes``, ``minimum_uid=abc``)
lands in ``Options.unknown`` so the hook can log it once to syslog and carry on, as
pam_keyinit carries on.

Stdlib only and no regular expressions, dataclasses or typing: this runs inside every login.
Nor the service's ``protocol``: a session-only line (``force revoke``) never talks to the
service, and ``protocol`` with its JSON and socket modules is a third of the hook's import.
"""

DEFAULT_MINIMUM_UID = 1000
#: Seconds the hook waits for the service's answer to a password (``auth_timeout=``).  The
#: service bounds a login's KDC exchanges by its kdc_timeout (6 s default); the hook waits a
#: little longer so that the service's own answer (kdc_unreachable, or the TGT) reaches it.
DEFAULT_AUTH_TIMEOUT = 8.0


class Options:
    """Parsed module arguments (pam_keyinit's three plus this project's own), immutable.

    The class attributes are the table: name, type, default.  An instance holds only the
    options its line set; the rest read through to the defaults here.
    """

    # pam_keyinit's own.
    force: bool = False
    revoke: bool = False
    debug: bool = False
    #: session: link KEYCTL_GET_PERSISTENT's keyring (the ccaches) into the session keyring.
    link_persistent: bool = False
    #: session: register the session with keyinit-ticketd (renewal, clearing at the last logout).
    tickets: bool = False
    #: auth: only PAM_AUTHTOK set by an earlier module; never prompt.
    use_first_pass: bool = False
    #: auth, password: PAM_AUTHTOK (PAM_OLDAUTHTOK) first; when the service calls it wrong, prompt
    #: once and try the answer (pam_krb5's try_first_pass).  Without either option an earlier
    #: module's password is used and the prompt comes only when there is none.
    try_first_pass: bool = False
    #: password (chauthtok): take the new password from PAM_AUTHTOK (set by an earlier module).
    use_authtok: bool = False
    #: auth: try the password with each principal of the user's ~/.k5login (pam_krb5's option).
    search_k5login: bool = False
    #: the service's socket (an absolute path); empty: ``protocol.DEFAULT_SOCKET``, which
    #: :func:`pam_keyinit_py.pam.client.socket_path` reads when the hook first talks to the service.
    socket: str = ""
    #: users with a smaller uid are not Kerberos users: auth, account, password and the
    #: session's tickets return PAM_IGNORE for them (the session keyring is still made).
    minimum_uid: int = DEFAULT_MINIMUM_UID
    #: auth: bound on the password exchange with the service, in seconds (1-60).
    auth_timeout: float = DEFAULT_AUTH_TIMEOUT
    #: what the line held that is none of the above (not an option: filled by :func:`parse`).
    unknown: tuple[str, ...] = ()

    def __init__(self, **values: object) -> None:
        for name, value in values.items():
            if name not in FIELDS:
                raise TypeError(f"Options has no option {name!r}")
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Options is frozen: cannot assign to {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Options is frozen: cannot delete {name!r}")

    def _astuple(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in FIELDS)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Options):
            return NotImplemented
        return self._astuple() == other._astuple()

    def __hash__(self) -> int:
        return hash(self._astuple())

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in FIELDS)
        return f"Options({inner})"


#: Every field of :class:`Options`, in table order; (name, type) of the options proper.
FIELDS: tuple[str, ...] = tuple(Options.__annotations__)
_TABLE: dict[str, type] = {name: kind for name, kind in Options.__annotations__.items() if name != "unknown"}


def _parse_path(text: str) -> str | None:
    return text if text.startswith("/") and "\0" not in text else None


def _parse_uid(text: str) -> int | None:
    # Decimal digits only: int() would also take "+5", " 5" and "1_000".
    if not text or not text.isascii() or not text.isdigit() or len(text) > 10:
        return None
    value = int(text)
    return value if value <= 0xFFFFFFFE else None  # (uid_t)-1 is never a uid


def _parse_seconds(text: str) -> float | None:
    # Whole seconds 1-60 only: a login waits this long at most for a silent KDC.
    if not text or not text.isascii() or not text.isdigit() or len(text) > 2:
        return None
    value = int(text)
    return float(value) if 1 <= value <= 60 else None


#: The parser of each value type in the table.
_PARSERS = {str: _parse_path, int: _parse_uid, float: _parse_seconds}


def parse(args: list[str] | tuple[str, ...]) -> Options:
    """Parse the module arguments (without pam_python's leading script path).

    Later arguments win, as with pam_keyinit's loop.  Never raises.
    """
    fields: dict[str, object] = {}
    unknown: list[str] = []
    for arg in args:
        if not isinstance(arg, str):
            unknown.append(repr(arg))
            continue
        name, sep, text = arg.partition("=")
        kind = _TABLE.get(name)
        value: object = None
        if kind is bool:
            value = True if not sep else None
        elif kind is not None and sep:
            value = _PARSERS[kind](text)
        if value is None:
            unknown.append(arg)
        else:
            fields[name] = value
    return Options(unknown=tuple(unknown), **fields)


_cache: dict[tuple[str, ...], Options] = {}


def parse_cached(args: list[str] | tuple[str, ...]) -> tuple[Options, bool]:
    """:func:`parse`, memoised per process: returns ``(options, first_time)``.

    pam_python re-executes the shim for each PAM handle but this module stays
    imported, so ``first_time`` lets the hook log bad arguments once per
    process instead of at every open/close/setcred call.
    """
    key = tuple(args)
    opts = _cache.get(key)
    if opts is not None:
        return opts, False
    opts = parse(key)
    if len(_cache) < 64:  # a host process sees a handful of distinct lines
        _cache[key] = opts
    return opts, True
