"""errno -> exception classes for failed keyctl calls.

Every failure of a keyutils call raises a :class:`KeyutilsError` (an
``OSError``) whose class is chosen by errno, so callers can write
``except KeyRevokedError`` instead of comparing errno values.
"""

from __future__ import annotations

import errno as _errno

# posix, not os: os brings _collections_abc, stat and posixpath, ~0.7 ms of each pykeyctl run.
import posix


class KeyutilsError(OSError):
    """A keyctl/add_key/request_key call failed; ``.errno`` says why.

    ``.operation`` names the libkeyutils call (``keyctl_read_alloc``, …), as
    keyctl(1) prefixes its error messages with it.
    """

    operation: str = ""

    def __init__(self, err: int, operation: str = "") -> None:
        super().__init__(err, posix.strerror(err))
        self.operation = operation

    def __str__(self) -> str:
        if self.operation:
            return f"{self.operation}: {self.strerror}"
        return str(self.strerror)


class NoKeyError(KeyutilsError):
    """ENOKEY: the key does not exist or is not visible."""


class KeyRevokedError(KeyutilsError):
    """EKEYREVOKED: the key has been revoked."""


class KeyExpiredError(KeyutilsError):
    """EKEYEXPIRED: the key has expired."""


class KeyRejectedError(KeyutilsError):
    """EKEYREJECTED: the key was rejected by its instantiator."""


class QuotaExceededError(KeyutilsError):
    """EDQUOT: the owner's key count or byte quota is exhausted."""


class KeyPermissionError(KeyutilsError, PermissionError):
    """EACCES/EPERM: the caller lacks the key permission or capability."""


class KeyNotSupportedError(KeyutilsError):
    """EOPNOTSUPP/ENOSYS: the kernel or key type lacks the operation."""


class KeyInvalidArgumentError(KeyutilsError):
    """EINVAL: a malformed argument (bad type, empty description, …)."""


class KeyExistsError(KeyutilsError, FileExistsError):
    """EEXIST: e.g. KEYCTL_MOVE with KEYCTL_MOVE_EXCL onto an existing key."""


class KeyBusyError(KeyutilsError):
    """EBUSY / EAGAIN: a transient state such as an uninstantiated key."""


class KeyWrongTypeError(KeyutilsError, NotADirectoryError):
    """ENOTDIR: a keyring operation on a key that is not a keyring."""


_BY_ERRNO: dict[int, type[KeyutilsError]] = {
    _errno.ENOKEY: NoKeyError,
    _errno.EKEYREVOKED: KeyRevokedError,
    _errno.EKEYEXPIRED: KeyExpiredError,
    _errno.EKEYREJECTED: KeyRejectedError,
    _errno.EDQUOT: QuotaExceededError,
    _errno.EACCES: KeyPermissionError,
    _errno.EPERM: KeyPermissionError,
    _errno.EOPNOTSUPP: KeyNotSupportedError,
    _errno.ENOSYS: KeyNotSupportedError,
    _errno.EINVAL: KeyInvalidArgumentError,
    _errno.EEXIST: KeyExistsError,
    _errno.EBUSY: KeyBusyError,
    _errno.EAGAIN: KeyBusyError,
    _errno.ENOTDIR: KeyWrongTypeError,
}


def error_for(err: int, operation: str = "") -> KeyutilsError:
    """Build the exception that matches ``err`` (an errno value)."""
    return _BY_ERRNO.get(err, KeyutilsError)(err, operation)
