"""The pam_python hook (session keyrings as pam_keyinit makes them) and its ticket-service client.

The package's own module holds only the hook's logging, which every entry point may need:
each module is a file lookup and ~0.3 M instructions of importlib in every login's fresh
interpreter, so the rest is imported on demand (see hook.py).

Logging from inside a PAM module: libpam's pam_syslog(3), which adds LOG_AUTHPRIV.

pam_python exposes no pam_syslog, but it does expose the raw handle
(``pamh.pamh``), so the call goes through ctypes, imported only when there is
something to log (ctypes costs a few ms, which the login path must not pay).
pam_syslog prefixes ``pam_python(<service>:<type>): `` and, under
pam_wrapper, is captured on the host's stderr, which is what the tests read.
Python's own ``syslog`` module is only the fallback: it would call openlog()
and change the host process's ident.

Messages never carry secrets: callers pass user names, ids and errno texts only.
"""

LOG_ERR = 3
LOG_WARNING = 4
LOG_NOTICE = 5
LOG_DEBUG = 7

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .pamh import PamHandle

_PREFIX = "pam_keyinit_py: "
_pam_syslog: object = None


def _load() -> object:
    global _pam_syslog
    if _pam_syslog is None:
        import ctypes

        lib = ctypes.CDLL("libpam.so.0")
        fn = lib.pam_syslog
        fn.restype = None
        _pam_syslog = (ctypes.c_void_p, fn)
    return _pam_syslog


def syslog(pamh: "PamHandle", priority: int, message: str) -> None:
    """pam_syslog(pamh, priority, "%s", message); never raises."""
    text = (_PREFIX + message).encode("utf-8", "replace").replace(b"\0", b"?")
    try:
        c_void_p, fn = _load()  # type: ignore[misc]
        fn(c_void_p(pamh.pamh), priority, b"%s", text)
        return
    except Exception:  # noqa: BLE001 - logging must never fail a login
        pass
    try:
        import syslog as _syslog

        _syslog.syslog(_syslog.LOG_AUTHPRIV | priority, text.decode("utf-8", "replace"))
    except Exception:  # noqa: BLE001
        pass
