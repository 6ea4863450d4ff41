"""The ``keyring.backends`` entry point ``kernel``: Python ``keyring`` on the kernel keyring.

Passwords are possessor-only ``user`` keys in the ``keyinit:secrets`` keyring
(see :mod:`pam_keyinit_py.integrations`), by default inside the user's
**persistent** keyring, so they survive logout and ``pam_keyinit force
revoke``.  Each one is an item with the attributes ``service``, ``username``
and ``application`` (``Python keyring library``), as keyring's SecretService
backend writes them, so ``keyinit secret lookup service S username U`` reads
them back.

Choosing the location (persistent, user or session), most specific first:

- ``keyring.get_keyring().with_properties(location="session")``;
- ``KEYRING_PROPERTY_LOCATION=user`` (keyring's own per-backend property mechanism);
- ``KEYINIT_STORE_LOCATION=user`` (shared with ``keyinit secret`` and the Docker helper).

To force this backend: ``PYTHON_KEYRING_BACKEND=pam_keyinit_py.integrations.keyring_backend.KernelKeyring``
or ``default-keyring`` in ``keyringrc.cfg``.

Its priority is 2: it is chosen on a host where no Secret Service or KWallet
answers (a headless server), and stays behind them (priority 5 and 4.9)
where they do.  It is not viable when keyctl fails (no CONFIG_KEYS, or a
seccomp filter as in Docker's default profile), nor when the configured
location is persistent and the kernel lacks persistent keyrings.

Limits: kernel keys live in RAM (lost at reboot); the persistent keyring
expires after 3 days without use; a non-root uid may own 200 keys / 20000 bytes.
"""

from __future__ import annotations

from keyring import credentials, errors
from keyring.backend import KeyringBackend
from keyring.compat import properties

from pam_keyinit_py import keyutils

from .secret_store import SecretStore
from .store import StoreError, resolve_location

APPLICATION = "Python keyring library"


def _under_keyring_cli() -> bool:
    """True inside keyring's own command-line tool (``keyring ...`` or ``python -m keyring``)."""
    import os
    import sys

    main = getattr(sys.modules.get("__main__"), "__file__", None) or ""
    return os.path.basename(sys.argv[0] if sys.argv else "") == "keyring" or main.endswith(
        os.path.join("keyring", "__main__.py"))


def _report_keyring_errors() -> None:
    """Make keyring's CLI print this backend's errors as one line, not a traceback.

    keyring's CommandLineTool catches no backend error (a failed set or del is
    an uncaught PasswordSetError/PasswordDeleteError), so every message here,
    the quota hint included, would reach the user inside a traceback.  Only
    KeyringError raised *by this backend* is shortened; anything else, and any
    program other than keyring's CLI, keeps Python's default handling.
    """
    import sys

    previous = sys.excepthook

    def hook(kind, value, tb):  # noqa: ANN001, ANN202 - sys.excepthook's signature
        if isinstance(value, errors.KeyringError) and getattr(value, "_keyinit", False):
            sys.stderr.write(f"keyring: {kind.__name__}: {value}\n")
            return
        previous(kind, value, tb)

    sys.excepthook = hook


def _error(kind: type[errors.KeyringError], message: str) -> errors.KeyringError:
    exc = kind(message)
    exc._keyinit = True  # type: ignore[attr-defined]
    return exc


if _under_keyring_cli():
    _report_keyring_errors()


class KernelKeyring(KeyringBackend):
    """Python keyring backend storing passwords as possessor-only ``user`` keys in the kernel."""

    #: persistent (default), user or session; None means ``$KEYINIT_STORE_LOCATION`` or persistent.
    location: str | None = None

    @properties.classproperty
    def priority(cls) -> float:
        """2 where kernel keyrings work; RuntimeError (not viable) where they do not."""
        try:
            # KEYCTL_GET_KEYRING_ID on @u: fails with ENOSYS/EPERM without usable keyrings.
            keyutils.get_keyring_id(keyutils.KEY_SPEC_USER_KEYRING, False)
        except OSError as exc:
            raise RuntimeError(f"kernel keyrings unavailable: {exc}") from None
        try:
            location = resolve_location(None)
        except StoreError as exc:
            raise RuntimeError(str(exc)) from None
        if location == "persistent":
            try:
                keyutils.get_persistent(-1, keyutils.KEY_SPEC_PROCESS_KEYRING)
            except OSError as exc:
                raise RuntimeError(f"persistent keyring unavailable: {exc}") from None
        return 2

    @properties.classproperty
    def name(cls) -> str:
        """Display name."""
        return "kernel keyring (keyinit)"

    def _store(self, failure: type[errors.KeyringError]) -> SecretStore:
        try:
            return SecretStore(self.location)
        except StoreError as exc:
            raise _error(failure, str(exc)) from None

    @staticmethod
    def _query(service: str, username: str | None = None) -> dict[str, str]:
        if username is None:
            return {"service": service}
        return {"service": service, "username": username}

    @staticmethod
    def _attributes(service: str, username: str) -> dict[str, str]:
        """The attributes set_password writes (those of keyring's SecretService backend)."""
        return {"application": APPLICATION, "service": service, "username": username}

    def get_password(self, service: str, username: str) -> str | None:
        """The password stored for (service, username), or None."""
        try:
            store = self._store(errors.KeyringError)
            return store.lookup(self._query(service, username), self._attributes(service, username))
        except StoreError as exc:
            raise _error(errors.KeyringError, str(exc)) from None

    def set_password(self, service: str, username: str, password: str) -> None:
        """Store the password; any older item for (service, username) is replaced."""
        attributes = self._attributes(service, username)
        label = f"Password for '{username}' on '{service}'"
        try:
            self._store(errors.PasswordSetError).store(
                attributes, label, password, replace=self._query(service, username)
            )
        except StoreError as exc:
            raise _error(errors.PasswordSetError, str(exc)) from None

    def delete_password(self, service: str, username: str) -> None:
        """Delete the password; PasswordDeleteError if there is none."""
        try:
            removed = self._store(errors.PasswordDeleteError).clear(self._query(service, username))
        except StoreError as exc:
            raise _error(errors.PasswordDeleteError, str(exc)) from None
        if not removed:
            raise _error(errors.PasswordDeleteError, "Password not found")

    def get_credential(self, service: str, username: str | None) -> credentials.Credential | None:
        """(username, password) for the service; with username None, the most recent one."""
        try:
            store = self._store(errors.KeyringError)
            if username is not None:
                password = store.lookup(self._query(service, username), self._attributes(service, username))
                return None if password is None else credentials.SimpleCredential(username, password)
            for item in store.search(self._query(service)):
                if "username" in item.attributes:
                    return credentials.SimpleCredential(item.attributes["username"], item.secret)
        except StoreError as exc:
            raise _error(errors.KeyringError, str(exc)) from None
        return None
