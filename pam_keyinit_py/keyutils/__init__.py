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
    thread_credentials,
    thread_setgroups,
    thread_setregid,
    thread_setresgid,
    thread_setresuid,
    thread_setreuid,
    unlink,
    update,
    version,
    watch_key,
)

# Constants of <keyutils.h> / <linux/keyctl.h>, as plain ints.  They live here, not in a module
# of their own: each module is a file lookup and ~0.3 M instructions of importlib in every login.
KEY_SPEC_THREAD_KEYRING = -1
KEY_SPEC_PROCESS_KEYRING = -2
KEY_SPEC_SESSION_KEYRING = -3
KEY_SPEC_USER_KEYRING = -4
KEY_SPEC_USER_SESSION_KEYRING = -5
KEY_SPEC_GROUP_KEYRING = -6
KEY_SPEC_REQKEY_AUTH_KEY = -7

KEY_REQKEY_DEFL_NO_CHANGE = -1
KEY_REQKEY_DEFL_DEFAULT = 0
KEY_REQKEY_DEFL_THREAD_KEYRING = 1
KEY_REQKEY_DEFL_PROCESS_KEYRING = 2
KEY_REQKEY_DEFL_SESSION_KEYRING = 3
KEY_REQKEY_DEFL_USER_KEYRING = 4
KEY_REQKEY_DEFL_USER_SESSION_KEYRING = 5
KEY_REQKEY_DEFL_GROUP_KEYRING = 6

KEY_POS_VIEW = 0x01000000
KEY_POS_READ = 0x02000000
KEY_POS_WRITE = 0x04000000
KEY_POS_SEARCH = 0x08000000
KEY_POS_LINK = 0x10000000
KEY_POS_SETATTR = 0x20000000
KEY_POS_ALL = 0x3F000000

KEY_USR_VIEW = 0x00010000
KEY_USR_READ = 0x00020000
KEY_USR_WRITE = 0x00040000
KEY_USR_SEARCH = 0x00080000
KEY_USR_LINK = 0x00100000
KEY_USR_SETATTR = 0x00200000
KEY_USR_ALL = 0x003F0000

KEY_GRP_VIEW = 0x00000100
KEY_GRP_READ = 0x00000200
KEY_GRP_WRITE = 0x00000400
KEY_GRP_SEARCH = 0x00000800
KEY_GRP_LINK = 0x00001000
KEY_GRP_SETATTR = 0x00002000
KEY_GRP_ALL = 0x00003F00

KEY_OTH_VIEW = 0x00000001
KEY_OTH_READ = 0x00000002
KEY_OTH_WRITE = 0x00000004
KEY_OTH_SEARCH = 0x00000008
KEY_OTH_LINK = 0x00000010
KEY_OTH_SETATTR = 0x00000020
KEY_OTH_ALL = 0x0000003F

KEYCTL_MOVE_EXCL = 0x00000001

KEYCTL_CAPS0_CAPABILITIES = 0x01
KEYCTL_CAPS0_PERSISTENT_KEYRINGS = 0x02
KEYCTL_CAPS0_DIFFIE_HELLMAN = 0x04
KEYCTL_CAPS0_PUBLIC_KEY = 0x08
KEYCTL_CAPS0_BIG_KEY = 0x10
KEYCTL_CAPS0_INVALIDATE = 0x20
KEYCTL_CAPS0_RESTRICT_KEYRING = 0x40
KEYCTL_CAPS0_MOVE = 0x80
KEYCTL_CAPS1_NS_KEYRING_NAME = 0x01
KEYCTL_CAPS1_NS_KEY_TAG = 0x02
KEYCTL_CAPS1_NOTIFICATIONS = 0x04


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
