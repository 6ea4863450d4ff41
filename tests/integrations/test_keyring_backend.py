"""The ``kernel`` keyring backend: keyring's own test suite, selection, locations, as root and as a user."""

from __future__ import annotations

import os
import sys

import pytest
from keyring import errors
from keyring.testing.backend import BackendBasicTests

from pam_keyinit_py import keyutils
from pam_keyinit_py.integrations.keyring_backend import KernelKeyring
from pam_keyinit_py.integrations.secret_store import SecretStore
from tests.conftest import REPO

from .conftest import BIN, run_fresh

PY = str(BIN / "python")


class TestSessionLocation(BackendBasicTests):
    """keyring's suite in-process (root), store in the test's fresh session keyring."""

    def init_keyring(self) -> KernelKeyring:
        return KernelKeyring().with_properties(location="session")


class TestPersistentLocation(BackendBasicTests):
    """keyring's suite in-process (root) on the default location, root's persistent keyring."""

    @pytest.fixture(autouse=True)
    def _init_properties(self, request: pytest.FixtureRequest, root_stores: None) -> None:
        # keyring's fixture, made to depend on root_stores so its own cleanup runs first.
        self.keyring = self.init_keyring()
        self.credentials_created: set[tuple[str, str]] = set()
        request.addfinalizer(self.cleanup)

    def init_keyring(self) -> KernelKeyring:
        backend = KernelKeyring()
        assert backend.location is None  # default: $KEYINIT_STORE_LOCATION or persistent
        return backend.with_properties(location=None)


def test_entry_point_is_declared_and_loads_the_backend() -> None:
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points(group="keyring.backends") if e.name == "kernel"]
    module = ep.load()
    assert module.KernelKeyring is KernelKeyring


def test_priority_viable_here_and_not_with_a_bad_location(monkeypatch: pytest.MonkeyPatch) -> None:
    assert KernelKeyring.viable
    assert KernelKeyring.priority == 2
    monkeypatch.setenv("KEYINIT_STORE_LOCATION", "cloud")
    assert not KernelKeyring.viable
    with pytest.raises(RuntimeError, match="unknown keyring location 'cloud'"):
        KernelKeyring.priority  # noqa: B018


def test_location_property_from_keyring_env_and_bad_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYRING_PROPERTY_LOCATION", "session")
    backend = KernelKeyring()
    assert backend.location == "session"
    backend.set_password("pki-svc", "ann", "pw")
    assert SecretStore("session").lookup({"service": "pki-svc", "username": "ann"}) == "pw"
    bad = backend.with_properties(location="attic")
    with pytest.raises(errors.PasswordSetError, match="unknown keyring location 'attic'"):
        bad.set_password("pki-svc", "ann", "pw2")
    with pytest.raises(errors.KeyringError, match="unknown keyring location"):
        bad.get_password("pki-svc", "ann")


def test_set_replaces_items_of_other_shapes_and_delete_removes_all() -> None:
    backend = KernelKeyring().with_properties(location="session")
    store = SecretStore("session")
    # An item stored by `keyinit secret` for the same service/user, without "application".
    store.store({"service": "s", "username": "u"}, "by hand", "old")
    assert backend.get_password("s", "u") == "old"
    backend.set_password("s", "u", "new")
    assert [i.secret for i in store.search({"service": "s", "username": "u"})] == ["new"]
    cred = backend.get_credential("s", None)
    assert (cred.username, cred.password) == ("u", "new")
    backend.delete_password("s", "u")
    assert backend.get_password("s", "u") is None
    with pytest.raises(errors.PasswordDeleteError):
        backend.delete_password("s", "u")


def test_keys_are_possessor_only() -> None:
    backend = KernelKeyring().with_properties(location="session")
    backend.set_password("perm", "u", "pw")
    ring = SecretStore("session").keys.ring()
    for key in [ring, *keyutils.keyring_ids(ring)]:
        assert int(keyutils.describe(key).split(b";")[3], 16) == keyutils.KEY_POS_ALL


# --- as a non-root user on a host without D-Bus --------------------------------------------

def test_keyring_backend_suite_as_user_without_dbus(pki_user) -> None:
    """keyring's BackendBasicTests, as a non-root user, against the backend keyring picks."""
    proc = run_fresh(
        pki_user,
        [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
         "tests/integrations/backend_suite.py"],
        cwd=REPO, env={"PYTHONDONTWRITEBYTECODE": "1"}, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout


def test_get_keyring_picks_kernel_without_secret_service(pki_user) -> None:
    code = ("import os, keyring; print(os.environ.get('DBUS_SESSION_BUS_ADDRESS'), "
            "type(keyring.get_keyring()).__name__)")
    proc = run_fresh(pki_user, [PY, "-c", code])
    assert (proc.returncode, proc.stdout.strip()) == (0, "None KernelKeyring"), proc.stderr


def test_keyring_cli_password_outlives_the_session(pki_user) -> None:
    """`keyring set` in one session, `keyring get` in a later one: the persistent store."""
    kr = str(BIN / "keyring")
    stored = run_fresh(pki_user, [kr, "set", "pki-api", "ann"], input="tok-123\n")
    assert stored.returncode == 0, stored.stderr
    got = run_fresh(pki_user, [kr, "get", "pki-api", "ann"])
    assert (got.returncode, got.stdout) == (0, "tok-123\n"), got.stderr
    # The same item is a secret-tool item: keyinit secret finds it by its attributes.
    hand = run_fresh(pki_user, ["keyinit", "secret", "lookup", "service", "pki-api", "username", "ann"])
    assert hand.stdout == "tok-123"
    # Session location: gone with the session that stored it.
    env = {"KEYRING_PROPERTY_LOCATION": "session"}
    run_fresh(pki_user, [kr, "set", "pki-tmp", "ann"], input="short\n", env=env)
    assert run_fresh(pki_user, [kr, "get", "pki-tmp", "ann"], env=env).returncode == 1
    deleted = run_fresh(pki_user, [kr, "del", "pki-api", "ann"])
    assert deleted.returncode == 0, deleted.stderr
    assert run_fresh(pki_user, [kr, "get", "pki-api", "ann"]).returncode == 1


def test_the_interpreter_is_the_system_one() -> None:
    # pam_python embeds /usr/bin/python3; the venv must be built from it (see DESIGN.md).
    assert os.path.realpath(sys.executable).startswith("/usr/bin/python3")
