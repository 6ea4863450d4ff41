"""The one parser of the module arguments on a ``pam_python.so pam_keyinit_py.py ...`` line.

pam_keyinit.c compares each argument with ``strcmp`` and silently skips the
rest.  Here the known words set fields of a frozen :class:`Options`; anything
unknown or malformed (``forc``, ``revoke=yes``, ``minimum_uid=abc``) lands in
``Options.unknown`` so the hook can log it once to syslog (LOG_AUTHPRIV) and
carry on, as pam_keyinit carries on.

Stdlib only and no regular expressions: this runs inside every login.
"""

from __future__ import annotations

from ..protocol import DEFAULT_SOCKET

DEFAULT_MINIMUM_UID = 1000

# Bare words and the Options field each one sets to True.
_FLAGS = {
    "force": "force",
    "revoke": "revoke",
    "debug": "debug",
    "link_persistent": "link_persistent",
    "tickets": "tickets",
    "use_first_pass": "use_first_pass",
    "try_first_pass": "try_first_pass",
    "use_authtok": "use_authtok",
    "search_k5login": "search_k5login",
}


_FIELDS = (
    "force", "revoke", "debug", "link_persistent", "tickets", "use_first_pass", "try_first_pass",
    "socket", "minimum_uid", "use_authtok", "search_k5login", "auth_timeout", "unknown",
)

#: Seconds the hook waits for the service's answer to a password (``auth_timeout=``).  The
#: service bounds a login's KDC exchanges by its kdc_timeout (6 s default); the hook waits a
#: little longer so that the service's own answer (kdc_unreachable, or the TGT) reaches it.
DEFAULT_AUTH_TIMEOUT = 8.0


class Options:
    """Parsed module arguments (pam_keyinit's three plus this project's own), immutable.

    A frozen dataclass in behaviour (keyword construction, defaults, equality,
    hash, repr, assignment raises) written by hand: ``import dataclasses``
    pulls in ``inspect`` and costs ~10-20 ms, more than the whole hook may add
    to a login.
    """

    __slots__ = _FIELDS
    force: bool
    revoke: bool
    debug: bool
    link_persistent: bool
    tickets: bool
    use_first_pass: bool
    try_first_pass: bool
    socket: str
    minimum_uid: int
    #: password (chauthtok): take the new password from PAM_AUTHTOK (set by an earlier module).
    use_authtok: bool
    #: auth: try the password with each principal of the user's ~/.k5login (pam_krb5's option).
    search_k5login: bool
    #: auth: bound on the password exchange with the service, in seconds (1-60).
    auth_timeout: float
    unknown: tuple[str, ...]

    def __init__(
        self, *, force: bool = False, revoke: bool = False, debug: bool = False,
        link_persistent: bool = False, tickets: bool = False, use_first_pass: bool = False,
        try_first_pass: bool = False, socket: str = DEFAULT_SOCKET,
        minimum_uid: int = DEFAULT_MINIMUM_UID, use_authtok: bool = False, search_k5login: bool = False,
        auth_timeout: float = DEFAULT_AUTH_TIMEOUT, unknown: tuple[str, ...] = (),
    ) -> None:
        values = (force, revoke, debug, link_persistent, tickets, use_first_pass, try_first_pass,
                  socket, minimum_uid, use_authtok, search_k5login, auth_timeout, tuple(unknown))
        for name, value in zip(_FIELDS, values, strict=True):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Options is frozen: cannot assign to {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Options is frozen: cannot delete {name!r}")

    def _astuple(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in _FIELDS)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._astuple() == other._astuple()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._astuple())

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in _FIELDS)
        return f"Options({inner})"


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
        name = _FLAGS.get(arg)
        if name is not None:
            fields[name] = True
            continue
        key, sep, value = arg.partition("=")
        if sep and key == "socket" and value.startswith("/") and "\0" not in value:
            fields["socket"] = value
        elif sep and key == "minimum_uid" and (uid := _parse_uid(value)) is not None:
            fields["minimum_uid"] = uid
        elif sep and key == "auth_timeout" and (seconds := _parse_seconds(value)) is not None:
            fields["auth_timeout"] = seconds
        else:
            unknown.append(arg)
    return Options(unknown=tuple(unknown), **fields)  # type: ignore[arg-type]


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
