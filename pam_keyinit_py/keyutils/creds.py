"""Per-thread credential switching through raw syscalls.

glibc's setresuid()/setreuid() (and so ``os.setreuid``) change the
credentials of *every* thread of the process.  The raw syscalls here change
only the calling thread, which is what a module inside a multi-threaded host
(sshd's monitor, the ticket service's worker pool) needs.
"""

# posix, not os: os brings _collections_abc, stat and posixpath, ~0.7 ms of each pykeyctl run.
import posix

from ._keyutils import ffi as _ffi
from ._keyutils import lib as _lib
from .calls import failure

_KEEP = 0xFFFFFFFF  # (uid_t)-1: leave this id unchanged


def _id(value: int) -> int:
    return value & 0xFFFFFFFF


def _check(ret: int, operation: str) -> None:
    if ret < 0:
        raise failure(operation)


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
