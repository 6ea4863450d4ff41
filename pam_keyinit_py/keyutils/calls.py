"""Layer 0: one Python function per libkeyutils call, ints and bytes in and out.

Each function is named after the libkeyutils call it wraps, without the
``keyctl_`` prefix, and raises an errno-specific :class:`KeyutilsError` when
the kernel refuses.  Strings are accepted where bytes are expected and are
encoded as UTF-8.

``read``, ``describe`` and ``get_security`` make one syscall for a result of up
to 512 bytes (into a pooled buffer, as C with a fixed buffer does) and a second,
sized one only for a larger result; ``keyring_ids`` is the project's one
decoder of a keyring's members.  The ``thread_*`` functions and
:class:`thread_credentials` switch the calling thread's ids only (raw
setres[ug]id/setre[ug]id/setgroups syscalls), as a module inside a
multi-threaded host must.
"""

# posix, not os: os brings _collections_abc, stat and posixpath, ~0.7 ms of each pykeyctl run.
import posix

from ._keyutils import ffi as _ffi
from ._keyutils import lib as _lib

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .errors import KeyutilsError

_NULL = _ffi.NULL
# Payload buffers are overwritten by the kernel; skip cffi's zero fill.
_alloc = _ffi.new_allocator(should_clear_after_alloc=False)
_unpack = _ffi.unpack
_READ_GUESS = 512
_pool: list[object] = []  # spare _READ_GUESS buffers for _fetch
_read = _lib.keyctl_read
_describe = _lib.keyctl_describe
_unlink = _lib.keyctl_unlink
_add_key = _lib.add_key


def _b(value: bytes | bytearray | memoryview | str | None) -> object:
    if value is None:
        return _NULL
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, (bytearray, memoryview)):
        return _ffi.from_buffer(value)  # no copy: a slice of a large buffer is passed as is
    return value


def failure(operation: str) -> "KeyutilsError":
    """The errno-specific exception for the libkeyutils call that just failed (cffi's saved errno).

    ``errors`` (a dozen exception classes, as much CPU as the rest of layer 0's Python) is
    imported here, on the first failure, not with layer 0: a login that fails no call never
    builds those classes.
    """
    err = _ffi.errno  # the failed call's, kept per thread by cffi: read it before anything else runs
    from .errors import error_for

    return error_for(err, operation)


def _check(ret: int, operation: str) -> int:
    if ret < 0:
        raise failure(operation)
    return ret


def add_key(
    type: bytes | str, description: bytes | str, payload: bytes | bytearray | memoryview | str | None,
    ringid: int,
) -> int:
    """add_key(2): create or update a key of ``type`` in keyring ``ringid``; return its id.

    A bytearray or memoryview payload is passed without a copy.
    """
    # bytes go to cffi as they are; only other types need _b()'s conversion.
    data = payload if payload.__class__ is bytes else _b(payload)
    ret = _add_key(
        type if type.__class__ is bytes else _b(type),
        description if description.__class__ is bytes else _b(description),
        data, 0 if data is _NULL else len(data), ringid,  # type: ignore[arg-type]
    )
    if ret < 0:
        raise failure("add_key")
    return ret


def request_key(
    type: bytes | str, description: bytes | str, callout_info: bytes | str | None = None,
    destringid: int = 0,
) -> int:
    """request_key(2): find a key, calling /sbin/request-key with ``callout_info`` if absent."""
    ret = _lib.request_key(_b(type), _b(description), _b(callout_info), destringid)
    if ret < 0:
        raise failure("request_key")
    return ret


def get_keyring_id(key_id: int, create: bool = False) -> int:
    """KEYCTL_GET_KEYRING_ID: resolve a special id (``KEY_SPEC_*``) to a serial."""
    return _check(_lib.keyctl_get_keyring_ID(key_id, int(create)), "keyctl_get_keyring_ID")


def join_session_keyring(name: bytes | str | None = None) -> int:
    """KEYCTL_JOIN_SESSION_KEYRING: join (or create) ``name``; None gives a new anonymous ``_ses``."""
    ret = _lib.keyctl_join_session_keyring(_b(name))
    return _check(ret, "keyctl_join_session_keyring")


def update(key_id: int, payload: bytes | str) -> None:
    """KEYCTL_UPDATE: replace a key's payload."""
    data = _b(payload)
    _check(_lib.keyctl_update(key_id, data, len(data)), "keyctl_update")  # type: ignore[arg-type]


def revoke(key_id: int) -> None:
    """KEYCTL_REVOKE: revoke a key; later access fails with EKEYREVOKED."""
    _check(_lib.keyctl_revoke(key_id), "keyctl_revoke")


def chown(key_id: int, uid: int, gid: int) -> None:
    """KEYCTL_CHOWN: change owner and group (-1 leaves one unchanged)."""
    _check(_lib.keyctl_chown(key_id, uid & 0xFFFFFFFF, gid & 0xFFFFFFFF), "keyctl_chown")


def setperm(key_id: int, perm: int) -> None:
    """KEYCTL_SETPERM: set the possessor/user/group/other permission mask."""
    _check(_lib.keyctl_setperm(key_id, perm), "keyctl_setperm")


def _fetch(call, key_id: int, operation: str, strip: int) -> bytes:
    """One KEYCTL_READ/DESCRIBE-style call into a pooled buffer; a second, sized call if it was short.

    The kernel returns the full size even when the buffer is too small, so a
    payload up to ``_READ_GUESS`` bytes costs exactly one syscall, as C with a
    fixed buffer does.  ``strip`` drops the trailing NUL that KEYCTL_DESCRIBE and
    KEYCTL_GET_SECURITY count.  Buffers are taken from and given back to a
    list (pop/append are atomic under the GIL), because the call itself runs
    with the GIL released and may overlap another thread's.
    """
    buf = _pool.pop() if _pool else _alloc("char[]", _READ_GUESS)
    ret = call(key_id, buf, _READ_GUESS)
    if 0 <= ret <= _READ_GUESS:
        data = _unpack(buf, ret - strip if ret else 0)
        _pool.append(buf)
        return data
    _pool.append(buf)
    while True:
        if ret < 0:
            raise failure(operation)
        # The payload is larger than the buffer: retry with the size the kernel gave.
        size = ret
        big = _alloc("char[]", size)
        ret = call(key_id, big, size)
        if 0 <= ret <= size:
            return _unpack(big, ret - strip if ret else 0)


def describe(key_id: int) -> bytes:
    """KEYCTL_DESCRIBE: ``type;uid;gid;perm;description`` (no trailing NUL)."""
    return _fetch(_describe, key_id, "keyctl_describe_alloc", 1)


def read(key_id: int) -> bytes:
    """KEYCTL_READ: a key's payload, or a keyring's list of 32-bit serials."""
    return _fetch(_read, key_id, "keyctl_read_alloc", 0)


def get_security(key_id: int) -> bytes:
    """KEYCTL_GET_SECURITY: the key's LSM label (empty without an LSM)."""
    return _fetch(_lib.keyctl_get_security, key_id, "keyctl_get_security_alloc", 1)


def clear(ringid: int) -> None:
    """KEYCTL_CLEAR: unlink every key from a keyring."""
    _check(_lib.keyctl_clear(ringid), "keyctl_clear")


def link(key_id: int, ringid: int) -> None:
    """KEYCTL_LINK: link a key into a keyring."""
    _check(_lib.keyctl_link(key_id, ringid), "keyctl_link")


def unlink(key_id: int, ringid: int) -> None:
    """KEYCTL_UNLINK: remove a key's link from a keyring."""
    if _unlink(key_id, ringid) < 0:
        raise failure("keyctl_unlink")


def search(ringid: int, type: bytes | str, description: bytes | str, destringid: int = 0) -> int:
    """KEYCTL_SEARCH: search a keyring tree; link the hit into ``destringid`` if non-zero."""
    ret = _lib.keyctl_search(ringid, _b(type), _b(description), destringid)
    return _check(ret, "keyctl_search")


def set_timeout(key_id: int, timeout: int) -> None:
    """KEYCTL_SET_TIMEOUT: expire the key ``timeout`` seconds from now (0 clears)."""
    _check(_lib.keyctl_set_timeout(key_id, timeout), "keyctl_set_timeout")


def invalidate(key_id: int) -> None:
    """KEYCTL_INVALIDATE: mark a key invalid; the garbage collector removes it."""
    _check(_lib.keyctl_invalidate(key_id), "keyctl_invalidate")


def watch_key(key_id: int, watch_queue_fd: int, watch_id: int) -> None:
    """KEYCTL_WATCH_KEY: post the key's changes to a notification pipe as ``watch_id`` (-1 removes).

    EOPNOTSUPP on a kernel without CONFIG_KEY_NOTIFICATIONS.
    """
    _check(_lib.keyctl_watch_key(key_id, watch_queue_fd, watch_id), "keyctl_watch_key")


def get_persistent(uid: int, destringid: int) -> int:
    """KEYCTL_GET_PERSISTENT: link ``uid``'s persistent keyring into ``destringid``.

    ``uid`` -1 means the caller's.  Each call resets the keyring's expiry timer.
    """
    ret = _lib.keyctl_get_persistent(uid & 0xFFFFFFFF, destringid)
    return _check(ret, "keyctl_get_persistent")


def session_to_parent() -> None:
    """KEYCTL_SESSION_TO_PARENT: give the parent process this session keyring."""
    _check(_lib.keyctl_session_to_parent(), "keyctl_session_to_parent")


def set_reqkey_keyring(reqkey_defl: int) -> int:
    """KEYCTL_SET_REQKEY_KEYRING: set the default request_key destination; return the old one."""
    return _check(_lib.keyctl_set_reqkey_keyring(reqkey_defl), "keyctl_set_reqkey_keyring")


def move(key_id: int, from_ringid: int, to_ringid: int, flags: int = 0) -> None:
    """KEYCTL_MOVE: move a link between keyrings (``KEYCTL_MOVE_EXCL`` refuses to displace)."""
    _check(_lib.keyctl_move(key_id, from_ringid, to_ringid, flags), "keyctl_move")


def capabilities() -> bytes:
    """KEYCTL_CAPABILITIES: the kernel's capability bytes (``KEYCTL_CAPS0_*``, ``KEYCTL_CAPS1_*``)."""
    buf = _ffi.new("unsigned char[]", 256)
    ret = _check(_lib.keyctl_capabilities(buf, 256), "keyctl_capabilities")
    return _ffi.buffer(buf, min(ret, 256))[:]


def instantiate(key_id: int, payload: bytes | str | None, ringid: int = 0) -> None:
    """KEYCTL_INSTANTIATE: complete a key under construction (needs its authority)."""
    data = _b(payload)
    size = 0 if data is _NULL else len(data)  # type: ignore[arg-type]
    _check(_lib.keyctl_instantiate(key_id, data, size, ringid), "keyctl_instantiate")


def negate(key_id: int, timeout: int, ringid: int = 0) -> None:
    """KEYCTL_NEGATE: negatively instantiate a key for ``timeout`` seconds."""
    _check(_lib.keyctl_negate(key_id, timeout, ringid), "keyctl_negate")


def reject(key_id: int, timeout: int, error: int, ringid: int = 0) -> None:
    """KEYCTL_REJECT: negatively instantiate a key, returning ``error`` to requesters."""
    _check(_lib.keyctl_reject(key_id, timeout, error, ringid), "keyctl_reject")


def assume_authority(key_id: int) -> None:
    """KEYCTL_ASSUME_AUTHORITY: take the authority to instantiate ``key_id`` (0 drops it)."""
    _check(_lib.keyctl_assume_authority(key_id), "keyctl_assume_authority")


def restrict_keyring(ringid: int, type: bytes | str | None, restriction: bytes | str | None) -> None:
    """KEYCTL_RESTRICT_KEYRING: restrict which keys may be linked into a keyring."""
    ret = _lib.keyctl_restrict_keyring(ringid, _b(type), _b(restriction))
    _check(ret, "keyctl_restrict_keyring")


def keyring_ids(ringid: int) -> list[int]:
    """KEYCTL_READ on a keyring, decoded into its member serials (the project's one such reader).

    As libkeyutils' callers do (``ret / sizeof(key_serial_t)``), a payload that
    is not a whole number of serials (KEYCTL_READ on a non-keyring key) is cut
    to the last whole one.
    """
    raw = read(ringid)
    usable = len(raw) - len(raw) % 4
    return list(memoryview(raw[:usable] if usable != len(raw) else raw).cast("i")) if usable else []


version: str = _ffi.string(_lib.keyutils_version_string).decode()


# Per-thread credential switching through raw syscalls (the extension's pk_thread_* helpers).
# glibc's setresuid()/setreuid() (and so ``os.setreuid``) change the credentials of *every* thread
# of the process; these change only the calling thread, which is what a module inside a
# multi-threaded host (sshd's monitor, the ticket service's worker pool) needs.  They share this
# module with the keyctl calls because pam_keyinit's logic needs both, and every module is a file
# lookup and ~0.3 M instructions of importlib in every login.
_KEEP = 0xFFFFFFFF  # (uid_t)-1: leave this id unchanged


def _id(value: int) -> int:
    return value & 0xFFFFFFFF


def thread_setresuid(ruid: int = -1, euid: int = -1, suid: int = -1) -> None:
    """setresuid(2) for the calling thread only (raw syscall)."""
    _check(_lib.pk_thread_setresuid(_id(ruid), _id(euid), _id(suid)), "setresuid")


def thread_setresgid(rgid: int = -1, egid: int = -1, sgid: int = -1) -> None:
    """setresgid(2) for the calling thread only (raw syscall)."""
    _check(_lib.pk_thread_setresgid(_id(rgid), _id(egid), _id(sgid)), "setresgid")


def thread_setreuid(ruid: int = -1, euid: int = -1) -> None:
    """setreuid(2) for the calling thread only (raw syscall)."""
    _check(_lib.pk_thread_setreuid(_id(ruid), _id(euid)), "setreuid")


def thread_setregid(rgid: int = -1, egid: int = -1) -> None:
    """setregid(2) for the calling thread only (raw syscall)."""
    _check(_lib.pk_thread_setregid(_id(rgid), _id(egid)), "setregid")


def thread_setgroups(groups: list[int]) -> None:
    """setgroups(2) for the calling thread only (raw syscall)."""
    arr = _ffi.new("gid_t[]", [_id(g) for g in groups])
    _check(_lib.pk_thread_setgroups(len(groups), arr), "setgroups")


class thread_credentials:  # noqa: N801 - used like a function: ``with thread_credentials(uid):``
    """Run a block with this thread's real (and optionally effective) uid/gid switched.

    With ``effective=False`` only the real ids change, as pam_keyinit's
    setreuid(uid, -1) does: the kernel owns a new session keyring by the real
    uid while the euid stays root.  With ``effective=True`` the real and
    effective ids become the user's while the saved ids keep the old euid/egid,
    so keys created in the block are owned by and charged to the user and the
    thread can switch back.  The old ids are restored on exit, uid first.

    A class rather than @contextmanager: contextlib costs milliseconds of
    import time on every login.
    """

    def __init__(self, uid: int | None = None, gid: int | None = None, *, effective: bool = False):
        self.uid = uid
        self.gid = gid
        self.effective = effective

    def __enter__(self) -> None:
        self._uids = old_uids = posix.getresuid()
        self._gids = old_gids = posix.getresgid()
        uid, gid, effective = self.uid, self.gid, self.effective
        self._gid_changed = gid is not None and (effective or gid != old_gids[0])
        self._uid_changed = uid is not None and (effective or uid != old_uids[0])
        if self._gid_changed:
            if effective:
                thread_setresgid(gid, gid, old_gids[1])  # type: ignore[arg-type]
            else:
                thread_setregid(gid, -1)  # type: ignore[arg-type]
        if self._uid_changed:
            try:
                if effective:
                    thread_setresuid(uid, uid, old_uids[1])  # type: ignore[arg-type]
                else:
                    thread_setreuid(uid, -1)  # type: ignore[arg-type]
            except BaseException:
                self._uid_changed = False
                self.__exit__(None, None, None)
                raise

    def __exit__(self, *exc: object) -> None:
        try:
            if self._uid_changed:
                thread_setresuid(*self._uids)
        finally:
            if self._gid_changed:
                thread_setresgid(*self._gids)
