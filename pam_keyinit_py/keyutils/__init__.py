"""Layer 0: the kernel key management facility through libkeyutils (cffi, API mode).

``from pam_keyinit_py import keyutils`` gives the raw calls (named after
libkeyutils without the ``keyctl_`` prefix), the ``KEY_*`` constants, the
errno exception classes and per-thread credential switching.  The object
model (``keyutils.model``: the one parser of KEYCTL_DESCRIBE, keys, keyrings,
tree walks) and the /proc readers (``keyutils.proc``) are imported on demand
so that the PAM hook's import stays small; so are the exception classes (below).
"""

from .calls import (
    add_key,
    assume_authority,
    capabilities,
    chown,
    clear,
    describe,
    get_keyring_id,
    get_persistent,
    get_security,
    instantiate,
    invalidate,
    join_session_keyring,
    keyring_ids,
    link,
    move,
    negate,
    read,
    reject,
    request_key,
    restrict_keyring,
    revoke,
    search,
    session_to_parent,
    set_reqkey_keyring,
    set_timeout,
    setperm,
    unlink,
    update,
    version,
    watch_key,
)
from .constants import *  # noqa: F403
from .creds import (
    thread_credentials,
    thread_setgroups,
    thread_setregid,
    thread_setresgid,
    thread_setresuid,
    thread_setreuid,
)

#: The exception classes of ``errors``, loaded on first use (``ku.NoKeyError``, ``from
#: pam_keyinit_py.keyutils import NoKeyError``) or by the first failed call: building a dozen
#: exception classes costs a login's interpreter as much as the rest of layer 0's Python.
_ERRORS = frozenset({
    "KeyBusyError", "KeyExistsError", "KeyExpiredError", "KeyInvalidArgumentError",
    "KeyNotSupportedError", "KeyPermissionError", "KeyRejectedError", "KeyRevokedError",
    "KeyutilsError", "KeyWrongTypeError", "NoKeyError", "QuotaExceededError", "error_for",
})


def __getattr__(name: str) -> object:
    """PEP 562: the names of ``errors``, imported when first asked for."""
    if name in _ERRORS:
        from . import errors

        return getattr(errors, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _ERRORS)
