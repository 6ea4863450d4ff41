"""Layer 0 against the real kernel: each call, its errors, and per-thread credentials."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading

import pytest

from pam_keyinit_py import keyutils as k
from pam_keyinit_py.keyutils import model, proc

S = k.KEY_SPEC_SESSION_KEYRING


def test_add_read_describe_update_unlink(fresh_session_keyring: int) -> None:
    kid = k.add_key(b"user", b"layer0:a", b"payload", S)
    assert k.read(kid) == b"payload"
    assert k.describe(kid) == f"user;{os.getuid()};{os.getgid()};3f010000;layer0:a".encode()
    k.update(kid, "x" * 2000)
    assert k.read(kid) == b"x" * 2000  # larger than the first read buffer
    assert kid in k.keyring_ids(S)
    k.unlink(kid, S)
    assert kid not in k.keyring_ids(S)


@pytest.mark.parametrize("size", [1, 511, 512, 513, 32767])
def test_read_and_describe_at_the_first_buffer_edge(fresh_session_keyring: int, size: int) -> None:
    # read/describe try one 512-byte pooled buffer first and ask again with the kernel's size.
    payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    name = b"edge:" + b"d" * max(size % 600 - 5, 0)
    kid = k.add_key(b"user", name, payload, S)
    assert k.read(kid) == payload
    expected = f"user;{os.getuid()};{os.getgid()};3f010000;".encode() + name
    assert k.describe(kid) == expected
    assert k.describe(kid) == expected  # the pooled buffer, reused, holds no tail of the last call
    k.unlink(kid, S)


def test_pooled_read_buffers_are_not_shared_between_threads(fresh_session_keyring: int) -> None:
    keys = [k.add_key(b"user", f"pool:{i}".encode(), bytes([i]) * (100 + i), S) for i in range(8)]
    wrong: list[int] = []

    def reader(i: int) -> None:
        for _ in range(2000):
            if k.read(keys[i]) != bytes([i]) * (100 + i):
                wrong.append(i)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []


def test_errors_are_oserror_subclasses_by_errno() -> None:
    kid = k.add_key("user", "layer0:b", "v", S)
    k.revoke(kid)
    with pytest.raises(k.KeyRevokedError) as info:
        k.read(kid)
    assert info.value.errno == errno.EKEYREVOKED
    assert isinstance(info.value, OSError)
    assert str(info.value) == "keyctl_read_alloc: Key has been revoked"
    with pytest.raises(k.NoKeyError):
        k.search(S, "user", "layer0:absent")
    with pytest.raises(k.KeyInvalidArgumentError):
        k.add_key("user", "", "v", S)


def test_error_classes_load_on_the_first_failure_with_that_calls_errno() -> None:
    # Layer 0 imports errors.py only when a call fails (the PAM hook never pays for the classes);
    # the exception must still be errno-specific, with the failed call's errno, not one left
    # by the import's own file lookups (ENOENT).
    code = (
        "import sys\n"
        "from pam_keyinit_py import keyutils as k\n"
        "assert 'pam_keyinit_py.keyutils.errors' not in sys.modules\n"
        "try:\n"
        "    k.describe(0x7FFFFFF0)\n"
        "except OSError as exc:\n"
        "    print(type(exc).__name__, exc.errno, exc)\n"
        "from pam_keyinit_py.keyutils import KeyPermissionError\n"
        "print(issubclass(KeyPermissionError, PermissionError), 'NoKeyError' in dir(k),\n"
        "      k.NoKeyError.__name__)\n"
        "k.nonesuch\n"
    )
    proc_ = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    lines = proc_.stdout.splitlines()
    assert lines == [f"NoKeyError {errno.ENOKEY} keyctl_describe_alloc: Required key not available",
                     "True True NoKeyError"], proc_.stdout + proc_.stderr
    assert "AttributeError: module 'pam_keyinit_py.keyutils' has no attribute 'nonesuch'" in proc_.stderr
    # keyutils/__init__ names errors.py's public names without importing it: the list must follow it.
    from pam_keyinit_py.keyutils import errors

    public = {n for n in vars(errors) if not n.startswith("_")} - {"annotations", "posix"}
    assert k._ERRORS == public


def test_expired_key() -> None:
    kid = k.add_key("user", "layer0:c", "v", S)
    k.set_timeout(kid, 1)
    import time

    time.sleep(1.2)
    with pytest.raises(k.KeyExpiredError):
        k.read(kid)


def test_search_link_move_clear() -> None:
    ring = k.add_key("keyring", "layer0:ring", None, S)
    other = k.add_key("keyring", "layer0:other", None, S)
    kid = k.add_key("user", "layer0:d", "v", ring)
    assert k.search(S, "user", "layer0:d") == kid
    k.link(kid, other)
    with pytest.raises(k.KeyExistsError):
        k.move(kid, ring, other, k.KEYCTL_MOVE_EXCL)
    k.unlink(kid, other)
    k.move(kid, ring, other)
    assert k.keyring_ids(other) == [kid] and k.keyring_ids(ring) == []
    k.clear(other)
    assert k.keyring_ids(other) == []


def test_get_persistent_and_capabilities() -> None:
    from tests.conftest import require

    caps = k.capabilities()
    assert caps[0] & k.KEYCTL_CAPS0_CAPABILITIES
    require(caps[0] & k.KEYCTL_CAPS0_PERSISTENT_KEYRINGS, "kernel without persistent keyrings")
    pid = k.get_persistent(-1, S)
    assert model.Key(pid).info.description == f"_persistent.{os.getuid()}"
    k.unlink(pid, S)


def test_model_walk_and_perm_letters() -> None:
    ring = model.Keyring(S).add_keyring("layer0:tree")
    ring.add("user", "leaf", "v")
    entries = list(model.walk(S))
    names = [(e.depth, e.info.description) for e in entries if e.info]
    assert (1, "layer0:tree") in names and (2, "leaf") in names
    assert model.Perm(0x3F010000).letters(24) == "alswrv"
    assert model.Perm(0x3F010000).letters(16) == "-----v"


def test_proc_readers_agree_with_kernel() -> None:
    kid = k.add_key("user", "layer0:proc", "12345", S)
    line = next(p for p in proc.read_keys() if p.id == kid)
    assert (line.type, line.uid, line.perm) == ("user", os.getuid(), 0x3F010000)
    me = proc.key_user(os.getuid())
    assert me is not None and me.nkeys >= 1
    q = proc.read_quotas()
    assert q.maxkeys > 0 and q.maxbytes > 0


def test_thread_credentials_change_only_the_calling_thread(session_user) -> None:
    from tests.conftest import require_root

    require_root()
    seen: dict[str, tuple[int, int, int]] = {}
    inside = threading.Event()
    done = threading.Event()

    def worker() -> None:
        with k.thread_credentials(session_user.uid, session_user.gid):
            seen["worker"] = os.getresuid()
            inside.set()
            done.wait(5)
        seen["worker_after"] = os.getresuid()

    t = threading.Thread(target=worker)
    t.start()
    inside.wait(5)
    seen["main"] = os.getresuid()
    done.set()
    t.join()
    assert seen["worker"] == (session_user.uid, 0, 0)
    assert seen["main"] == (0, 0, 0)
    assert seen["worker_after"] == (0, 0, 0)


def test_thread_credentials_effective_owns_new_keys(session_user) -> None:
    from tests.conftest import require_root

    require_root()
    ring = k.add_key("keyring", "layer0:shared", None, S)
    k.setperm(ring, k.KEY_POS_ALL | k.KEY_USR_ALL | k.KEY_OTH_ALL)
    with k.thread_credentials(session_user.uid, session_user.gid, effective=True):
        kid = k.add_key("user", "layer0:as-user", "v", ring)
    info = model.Key(kid).info
    assert (info.uid, info.gid) == (session_user.uid, session_user.gid)
    assert os.getresuid() == (0, 0, 0)
