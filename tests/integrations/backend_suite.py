"""keyring's own BackendBasicTests for the backend keyring.get_keyring() picks.

Not collected by the normal run (no ``test_`` prefix): test_keyring_backend.py
runs this file with pytest as a non-root user, in a fresh session keyring and
without D-Bus, so the backend under test is the one a headless host gets.
"""

from __future__ import annotations

import keyring
from keyring.testing.backend import BackendBasicTests

from pam_keyinit_py.integrations.keyring_backend import KernelKeyring


class TestKernelKeyringAsPickedByKeyring(BackendBasicTests):
    """The full suite against keyring.get_keyring() (default location: persistent)."""

    def init_keyring(self) -> KernelKeyring:
        backend = keyring.get_keyring()
        assert isinstance(backend, KernelKeyring), backend
        return backend
