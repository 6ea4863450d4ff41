"""The service's small state file: open sessions, pending logins and tracked ccaches.

Written atomically (write a temporary file in the same directory, fsync, rename(2)) by
:class:`StateWriter` after every change that a ``kill -9`` must not lose, so a
restarted service picks up exactly where the dead one stopped.  It holds no secret: names,
ids and times only.

On a tmpfs (``/run/keyinit`` as deployed; statfs(2) f_type TMPFS_MAGIC) the fsyncs are
skipped: a process crash loses nothing written and renamed, and a reboot drops the state
together with the keys it describes, so a login would wait on fsync for nothing.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..timefmt import when

FORMAT = 1

log = logging.getLogger("keyinit-ticketd")


def encode(data: dict[str, Any], raw: dict[str, list[str]] | None = None) -> bytes:
    """The file body: ``data`` as JSON, plus lists given as already-encoded JSON items in ``raw``.

    Sessions never change once opened, so the service encodes each one once and the
    file is rebuilt by joining strings: cheap even with tens of thousands of sessions.
    """
    parts = [json.dumps({"format": FORMAT, **data}, separators=(",", ":"))[:-1]]
    for key, items in (raw or {}).items():
        parts.append(f',"{key}":[{",".join(items)}]')
    parts.append("}")
    return "".join(parts).encode()


def _suffix() -> str:
    """64 random bits (getrandom(2)); not ``secrets``, whose hmac import loads libcrypto (~3 MiB)."""
    return os.urandom(8).hex()


def _temp_name(target: str) -> str:
    """``.<name>.<random>.tmp`` beside the target: nobody can guess it to plant a link there."""
    directory, name = os.path.split(target)
    return os.path.join(directory, f".{name}.{_suffix()}.tmp")


TMPFS_MAGIC = 0x01021994  # <linux/magic.h>
_libc: Any = None


def on_tmpfs(directory: str | Path) -> bool:
    """Whether ``directory`` is on a tmpfs: statfs(2)'s f_type (False when statfs fails).

    Asked at every save (one syscall): a file system mounted over the directory later counts.
    """
    global _libc
    import ctypes
    import struct

    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on x86_64
    if _libc.statfs(str(directory).encode(), buf) != 0:
        return False
    return struct.unpack_from("@l", buf.raw)[0] == TMPFS_MAGIC


#: (st_dev, st_ino) of a directory saves go to -> on_tmpfs: a file system is asked once (statfs
#: through ctypes cost 0.04 ms a save in the daemon); one mounted over the directory later has
#: another st_dev or root inode, so it is asked again (st_dev alone: anonymous device numbers
#: are reused after an unmount).
_tmpfs_dirs: dict[tuple[int, int], bool] = {}


def _durable(directory: str) -> bool:
    """Whether writes into ``directory`` need fsync(2): not on a tmpfs (see :func:`on_tmpfs`)."""
    st = os.stat(directory)
    key = (st.st_dev, st.st_ino)
    tmpfs = _tmpfs_dirs.get(key)
    if tmpfs is None:
        tmpfs = _tmpfs_dirs[key] = on_tmpfs(directory)
    return not tmpfs


def save(path: str, data: dict[str, Any], raw: dict[str, list[str]] | None = None) -> None:
    """Replace ``path`` with the state as JSON in one rename(2); mode 0600, owned by root.

    The temporary file is created with O_CREAT|O_EXCL|O_NOFOLLOW at an unpredictable name, so
    a file or symlink planted in the directory is never opened, let alone written through.
    A failed write (ENOSPC, EROFS, EIO...) removes the temporary file and raises OSError: the
    old state file stays whole.  fsync(2) of the file and its directory only off a tmpfs.
    """
    body = encode(data, raw)
    try:
        replace_file(path, body, 0o600)
    except FileNotFoundError:
        # The directory is missing (the first save, or removed since).  Not made before every
        # save: mkdir(2) of an existing directory takes its parent's lock, and /run (or
        # /dev/shm) is busy with every other process's files (measured 0.1 ms a request there).
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        replace_file(path, body, 0o600)


def replace_file(target: str | Path, body: bytes, mode: int) -> None:
    """Replace ``target`` with ``body`` in one rename(2) (see :func:`save`); the file gets ``mode``.

    Also the metrics textfile's writer: node_exporter never reads half a file.
    """
    target = os.fspath(target)
    directory = os.path.dirname(target) or "."
    durable = _durable(directory)
    tmp = _temp_name(target)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)  # whatever the umask took away
            view = memoryview(body)
            while view:  # write(2) may write less than asked
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if not durable:
        return
    # The rename is durable only once the directory entry is on disk.
    dirfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


def remove_leftovers(path: str) -> int:
    """Unlink temporary files of earlier runs (``.<name>.*.tmp`` beside ``path``); return how many.

    A process killed between creating its temporary file and the rename leaves one behind.
    Only the directory entries are removed (unlink never follows a symlink).
    """
    target = Path(path)
    removed = 0
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return 0
    prefix = f".{target.name}."
    for entry in entries:
        if entry.name.startswith(prefix) and entry.name.endswith(".tmp"):
            try:
                os.unlink(entry.path)
                removed += 1
            except OSError as exc:
                log.warning("cannot remove leftover %s: %s", entry.path, exc.strerror)
    if removed:
        log.info("removed %d leftover temporary state file(s) beside %s", removed, path)
    return removed


def load(path: str) -> dict[str, Any]:
    """The saved state, or an empty one when there is no file or it is unreadable."""
    try:
        with open(path, "rb") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        log.error("cannot read state file %s: %s; starting without saved state", path, exc.strerror)
        return {}
    except ValueError as exc:
        log.error("state file %s is corrupt (%s); starting without saved state", path,
                  exc.__class__.__name__)
        return {}
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        log.error("state file %s is not in format %d; starting without saved state", path, FORMAT)
        return {}
    return data


def process_start_time(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot (/proc/<pid>/stat field 22), or None.

    Together with the pid it names one process across pid reuse.  None also when /proc cannot
    be read now (EMFILE): a caller that must tell "gone" from "unknown" uses :func:`start_time_of`.
    """
    try:
        return start_time_of(pid)
    except OSError:
        return None


def start_time_of(pid: int) -> int | None:
    """:func:`process_start_time`, None only when no process has that pid (ENOENT, ESRCH).

    Raises OSError when the answer is unknown: opening /proc/<pid>/stat needs a descriptor
    (EMFILE, ENFILE) and memory (ENOMEM), and a service out of them must not take a live
    process for a dead one.
    """
    try:
        stat = _read_stat(pid)
    except (FileNotFoundError, ProcessLookupError):
        return None
    return _field(stat, 22)


def process_parent(pid: int) -> int:
    """The parent pid of ``pid`` (/proc/<pid>/stat field 4), or 0 when it cannot be read."""
    try:
        return _field(_read_stat(pid), 4) or 0
    except OSError:
        return 0


def _read_stat(pid: int) -> bytes:
    """The bytes of /proc/<pid>/stat (open(2) and read(2): OSError as they fail)."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        return fh.read()


def _field(stat: bytes, number: int) -> int | None:
    """Field ``number`` (1-based, as proc(5) counts, from 3 on) of a /proc/<pid>/stat text, or None."""
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rfind(b")") + 2 :].split()
    try:
        return int(fields[number - 3])
    except (IndexError, ValueError):
        return None


#: A request waits at most this long for its change to reach the state file.
COMMIT_TIMEOUT = 5.0
#: A failed state write is retried after this long, doubling up to the max (or at the next change).
WRITE_RETRY_MIN = 0.25
WRITE_RETRY_MAX = 5.0
#: While writes keep failing, the error is logged again this often.
WRITE_ERROR_LOG_INTERVAL = 60.0
#: The writer thread leaves a new change this long to the request that will commit it (a change
#: nobody commits, such as a renewal's, reaches the file this much later; none was acknowledged).
WRITER_LINGER = 0.01


class StateWriter:
    """The durable group-commit writer of the state file: many waiting requests, one write at a time.

    :meth:`mark` (under the owner's lock) says the state changed.  :meth:`commit` waits until
    every change marked so far is in the file; concurrent requests share one write (group
    commit), which keeps a host with thousands of sessions from rewriting the file once per
    login.  While writes succeed, a committing request thread that finds no write in progress
    writes the file itself (snapshot under the lock, :func:`save` outside it): the reply
    waits for no hand-over to another thread and back, which under load (2 cores, 20 logins
    at once) cost milliseconds per request.  The writer thread writes what no request commits
    (the scheduler's changes) and owns the retries after a failure.  A request that will commit
    what it changes marks inside :meth:`held`: the writer thread is then not woken for it at all
    (each wake-up was two thread switches and a GIL hand-over on every auth, open and close,
    racing the request's own write for the CPU).  ``path`` and ``snapshot``
    are read at each write (the owner's current config and state); ``on_failure`` is called
    after each failed write (the metrics' counter).
    """

    def __init__(self, lock: threading.RLock, path: Callable[[], str],
                 snapshot: Callable[[], tuple[dict[str, Any], dict[str, list[str]]]],
                 on_failure: Callable[[], object] = lambda: None) -> None:
        self.lock = lock
        self.path = path
        self.snapshot = snapshot
        self.on_failure = on_failure
        self._cv = threading.Condition(lock)  # commit() waiters: a write's outcome
        self._work = threading.Condition(lock)  # the writer thread: there is something for it to do
        self._held = threading.local()  # .on: this thread's marks wake nobody (see held)
        self.dirty = 0
        self.written = 0  # the last generation that reached the file
        self._attempted = 0  # the last generation the writer tried to write (written or not)
        self._writing = False  # a write (by the thread or a committing request) is in progress
        self.error: str | None = None  # why the last write failed; None once one succeeds
        self.failing_since = 0.0
        self.failures = 0
        self._stopping = False
        self._alive = True
        self._last_logged = 0.0
        self.thread = threading.Thread(target=self._run, name="state-writer", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is left and end the thread (waits at most ``timeout``)."""
        with self.lock:
            self._stopping = True
            self._cv.notify_all()
            self._work.notify()
        self.thread.join(timeout)

    def mark(self) -> None:
        """The state changed (caller holds the lock): the thread writes it soon, or, inside
        :meth:`held`, the caller's :meth:`commit` does (while writes fail the thread is woken
        anyway: it owns the retries, and a new change cuts its back-off short)."""
        self.dirty += 1
        if self.error is not None or not getattr(self._held, "on", False):
            self._work.notify()

    @contextmanager
    def held(self) -> Iterator[None]:
        """A block whose marks (this thread's) the caller commits itself before it ends: a request
        handler and the dispatcher's commit.  Whatever the block leaves unwritten (the request
        failed and committed nothing) goes to the writer thread at its end."""
        self._held.on = True
        try:
            yield
        finally:
            self._held.on = False
            with self.lock:
                if self.written < self.dirty:
                    self._work.notify()

    def commit(self) -> bool:
        """Block until every change marked so far is in the state file; False if it is not.

        False when the write attempt that covered these changes failed (the writer keeps
        retrying in the background), when the writer thread is gone, or after
        :data:`COMMIT_TIMEOUT`.  A request is acknowledged only when this returned True.
        """
        with self.lock:
            target = self.dirty
            deadline = time.monotonic() + COMMIT_TIMEOUT
            lead = True
            while self.written < target and self._alive:
                if self._attempted >= target and self.error is not None:
                    return False  # the attempt that included this change failed
                if lead and not self._writing and self.error is None and not self._stopping:
                    # No write in progress and none failing: write it here (see the class doc).
                    lead = self._write_once()
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(left)
            return self.written >= target

    def _write_once(self) -> bool:
        """Snapshot (caller holds the lock), save outside the lock, record the outcome.

        False when the snapshot itself raised: that is left to the writer thread (which stops,
        see :meth:`_run`), so a broken snapshot ends in one place.
        """
        generation = self.dirty
        try:
            data, raw = self.snapshot()
            path = self.path()
        except Exception:
            self._cv.notify_all()
            self._work.notify()
            return False
        self._writing = True
        self.lock.release()
        try:
            error = _save_error(path, data, raw)
        finally:
            self.lock.acquire()
            self._writing = False
        self._record(generation, error, path)
        return True

    def _record(self, generation: int, error: str | None, path: str) -> None:
        """The outcome of one write attempt (caller holds the lock); logs the first failure and the
        recovery, and a reminder every WRITE_ERROR_LOG_INTERVAL while it lasts."""
        self._attempted = max(self._attempted, generation)
        if error is None:
            self.written = max(self.written, generation)
            if self.error is not None:
                log.warning("state file %s written again after %d failed attempt(s) since %s",
                            path, self.failures, fmt(self.failing_since))
            self.error, self.failures, self.failing_since = None, 0, 0.0
        else:
            now = time.time()
            if self.error is None:
                self.failing_since = now
            self.failures += 1
            self.on_failure()
            if self.error != error or now - self._last_logged >= WRITE_ERROR_LOG_INTERVAL:
                self._last_logged = now
                log.error("cannot write state file %s: %s; changes since %s are not "
                          "acknowledged to clients; retrying (%d failed attempt(s))",
                          path, error, fmt(self.failing_since), self.failures)
            self.error = error
        self._cv.notify_all()
        if error is not None or self._stopping or self.written < self.dirty:
            self._work.notify()  # a retry to make, a stop to finish, or changes to write

    def _wait_for_work(self) -> None:
        """Return (lock held) when the thread should write: a change is unwritten and no request
        took it within :data:`WRITER_LINGER` (a request's commit writes it without a hand-over),
        a failed write is due for its retry, or the writer is stopping (after any write in progress)."""
        linger_until = 0.0
        while not self._stopping:
            if self._writing or self.written >= self.dirty:
                linger_until = 0.0
                self._work.wait()
                continue
            if self.error is not None:
                return  # retrying: requests do not write while writes fail
            now = time.monotonic()
            if not linger_until:
                linger_until = now + WRITER_LINGER
            elif now >= linger_until:
                return
            self._work.wait(linger_until - now)
        while self._writing:
            self._work.wait()

    def _run(self) -> None:
        """Write what no request committed; retry failures with a back-off.

        A failed write is retried at once when another change comes, else after WRITE_RETRY_MIN
        doubling to WRITE_RETRY_MAX.  Whatever ends this thread, waiters in commit() are woken
        and see it gone: a request must never hang on a dead writer.
        """
        delay = WRITE_RETRY_MIN
        try:
            while True:
                with self.lock:
                    self._wait_for_work()
                    if self._stopping and self.written >= self.dirty:
                        return
                    generation = self.dirty
                    data, raw = self.snapshot()
                    path = self.path()
                    self._writing = True
                try:
                    error = _save_error(path, data, raw)
                finally:
                    with self.lock:
                        self._writing = False
                with self.lock:
                    self._record(generation, error, path)
                    if error is None:
                        delay = WRITE_RETRY_MIN
                    else:
                        if self._stopping:
                            log.error("stopping with changes not in the state file: %s", error)
                            return
                        # A new change (mark() notifies) cuts the wait short: its request waits.
                        self._work.wait(delay)
                        delay = min(WRITE_RETRY_MAX, delay * 2)
        except Exception as exc:
            log.critical("state writer stopped: %s; changes are no longer saved", exc.__class__.__name__)
        finally:
            with self.lock:
                self._alive = False
                self._cv.notify_all()


def _save_error(path: str, data: dict[str, Any], raw: dict[str, list[str]]) -> str | None:
    """:func:`save`; None on success, else why not (the state holds no secret; only the class is
    kept for errors other than OSError anyway)."""
    try:
        save(path, data, raw)
    except OSError as exc:
        return exc.strerror or exc.__class__.__name__
    except Exception as exc:
        return exc.__class__.__name__
    return None


#: A wall-clock time for log lines, "-" for none (the one formatter, timefmt.when).
fmt = when
