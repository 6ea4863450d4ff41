"""The credential plumbing under the ccache API: krb5 contexts, the per-thread switch to the
user's uid, KDC exchanges bounded in time, and the zeroable password buffer.

- :func:`context`: one krb5_context per thread and profile path (contexts are not thread-safe).
- :class:`as_user`: the thread's real and effective uid/gid switched to the user
  (``keyutils.thread_credentials(uid, gid, effective=True)``: raw per-thread setresuid), so the
  keys a ccache operation writes are owned by and charged to the user, never root.
- :func:`bounded`: MIT krb5 1.20 has no kdc_timeout setting, so a KDC exchange runs in a helper
  thread and the caller gets :class:`~.errors.KdcUnreachable` when it takes longer (its late
  result is discarded); helpers hold a slot of ``kdclimit.SLOTS``, and idle ones are reused.
- :func:`renewed_creds`: krb5_get_renewed_creds with the GIL released (the C helper).
- :func:`cc_destroy`, :func:`discarded_on_failure`, :func:`gic_options`: krb5 calls made safe or
  short for the ccache modules.
- :func:`secret_buffer`, :func:`wipe`: the password as a NUL-terminated bytearray, zeroed as soon
  as the TGT exists; it never appears in a log line or an exception message.
"""

from __future__ import annotations

import _thread
import os
import queue
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import krb5

from .. import keyutils
from . import errors
from .accounts import primary_gid
from .errors import KdcUnreachable, from_krb5
from .kdclimit import SLOTS
from .metrics import KDC_SECONDS

_T = TypeVar("_T")

_local = threading.local()
_env_lock = threading.Lock()


def context(krb5_config: str | None = None) -> krb5.Context:
    """A krb5 context for this thread (contexts are not thread-safe), one per profile path.

    krb5_init_context reads KRB5_CONFIG from the environment; pykrb5 has no
    krb5_init_context_profile, so a specific profile is selected by setting it around the call.
    """
    cache: dict[str | None, krb5.Context] | None = getattr(_local, "contexts", None)
    if cache is None:
        cache = _local.contexts = {}
    ctx = cache.get(krb5_config)
    if ctx is None:
        if krb5_config is None:
            ctx = krb5.init_context()
        else:
            with _env_lock:
                old = os.environ.get("KRB5_CONFIG")
                os.environ["KRB5_CONFIG"] = krb5_config
                try:
                    ctx = krb5.init_context()
                finally:
                    if old is None:
                        del os.environ["KRB5_CONFIG"]
                    else:
                        os.environ["KRB5_CONFIG"] = old
        cache[krb5_config] = ctx
    return ctx


def _root_process_keyring() -> None:
    """Make sure this thread's process keyring exists and belongs to the caller (root).

    MIT's cc_keyring links KEYRING:persistent:<uid> into the process keyring
    (keyctl_get_persistent(uid, KEY_SPEC_PROCESS_KEYRING)).  Created lazily under a user's
    credentials, that keyring would be owned by and charged to the first user served.
    """
    if getattr(_local, "proc_ring", False):
        return
    if os.geteuid() == 0:
        keyutils.get_keyring_id(keyutils.KEY_SPEC_PROCESS_KEYRING, True)
    _local.proc_ring = True


_inflight: dict[int, int] = {}
_inflight_lock = threading.Lock()


class as_user:  # noqa: N801 - used like a function
    """Per-thread switch to the user's real+effective uid/gid (no-op when already that user);
    ``gid`` None is the uid's primary group (getpwuid).

    On the way out, the user's persistent keyring is unlinked from the process keyring that
    MIT linked it into, once no other thread is working for that uid: otherwise the process
    keyring collects every user's tree, and the kernel's possession search on each keyctl
    walks all of it (measured: renewal CPU x6 at 1,000 uids).
    """

    def __init__(self, uid: int, gid: int | None) -> None:
        self.uid, self.gid = uid, primary_gid(uid) if gid is None else gid
        self._creds: keyutils.thread_credentials | None = None

    def __enter__(self) -> None:
        _root_process_keyring()
        with _inflight_lock:
            _inflight[self.uid] = _inflight.get(self.uid, 0) + 1
        if os.geteuid() == self.uid and os.getegid() == self.gid:
            return
        self._creds = keyutils.thread_credentials(self.uid, self.gid, effective=True)
        try:
            self._creds.__enter__()
        except BaseException:
            self._release()
            raise

    def __exit__(self, *exc: object) -> None:
        try:
            if self._creds is not None:
                self._creds.__exit__(*exc)
        finally:
            self._release()

    def _release(self) -> None:
        with _inflight_lock:
            left = _inflight[self.uid] = _inflight[self.uid] - 1
            if left:
                return
            del _inflight[self.uid]
            if os.geteuid() != 0:
                return
            try:
                ring = keyutils.get_persistent(self.uid, keyutils.KEY_SPEC_PROCESS_KEYRING)
                keyutils.unlink(ring, keyutils.KEY_SPEC_PROCESS_KEYRING)
            except OSError:
                pass


class _Helper:
    """One KDC helper thread: runs the exchanges handed to it, then waits idle for the next.

    Reused (not one thread per exchange) so a login pays neither a thread start nor a new
    krb5_context (``context()`` is per thread and reads the profile), and so the caller's
    wait hands over to a thread that is already running.  It leaves after
    :data:`HELPER_IDLE_EXIT` seconds without work.
    """

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[Callable[[_Helper], None]] = queue.SimpleQueue()

    def loop(self) -> None:
        while True:
            try:
                job = self.jobs.get(timeout=HELPER_IDLE_EXIT)
            except queue.Empty:
                with _helpers_lock:
                    if self in _idle_helpers:
                        _idle_helpers.remove(self)
                        return
                continue  # taken at the last moment: its job is on the way
            job(self)


#: Seconds an idle KDC helper thread waits for another exchange before it ends.
HELPER_IDLE_EXIT = 5.0
_idle_helpers: list[_Helper] = []
_helpers_lock = threading.Lock()


def _hand_to_helper(job: Callable[[_Helper], None]) -> None:
    """Run ``job`` on an idle helper thread, or on a new one (RuntimeError: none can start).

    A helper is created only when none is idle, and every busy one holds a KDC slot, so
    there are never more helpers than max_kdc_calls.
    """
    with _helpers_lock:
        helper = _idle_helpers.pop() if _idle_helpers else None
    if helper is not None:
        helper.jobs.put(job)
        return
    helper = _Helper()
    helper.jobs.put(job)
    threading.Thread(target=helper.loop, name="krb5-kdc", daemon=True).start()


def _park(helper: _Helper) -> None:
    """Make the calling helper idle again (before it frees its slot, so the next exchange finds it)."""
    with _helpers_lock:
        _idle_helpers.append(helper)


def bounded(func: Callable[[], _T], timeout: float | None, what: str, key: Hashable | None = None,
            meanwhile: Callable[[], object] | None = None) -> _T:
    """Run a KDC exchange, giving up after ``timeout`` seconds (None: wait as long as libkrb5 does).

    The exchange runs on a helper thread (reused, see :class:`_Helper`) that cannot be
    cancelled; when it finishes late its result is dropped.  It holds a slot of
    ``kdclimit.SLOTS`` until it ends, so blocked helpers are bounded in number
    (max_kdc_calls) and one ``key`` (a cache) has at most one exchange in flight.  Waiting
    for a free slot counts against ``timeout``; without one by then, or with ``key`` in flight,
    the exchange fails with KdcUnreachable.

    ``meanwhile`` is local work of the caller that needs no KDC (krb5_kuserok for a login): it
    runs in the calling thread once the exchange is under way, instead of after it; its time
    counts against ``timeout``, so it must be short.  (Without a timeout it runs first.)
    """
    if timeout is None:
        if meanwhile is not None:
            meanwhile()
        with KDC_SECONDS.time():
            return func()
    start = time.monotonic()
    why = SLOTS.acquire(key, wait=timeout)  # a burst of logins queues for a slot within the bound
    if why is not None:
        raise KdcUnreachable(f"{what}: not started: {why}", errors.KRB5_KDC_UNREACH)
    timeout = max(0.0, timeout - (time.monotonic() - start))
    box: dict[str, object] = {}
    exchange: dict[str, bool] = {}  # SLOTS' record of it: released by the helper, or abandoned here
    # A bare lock, held until the helper is done: the caller's wait and the helper's wake-up are
    # one futex each (threading.Event adds a Condition, a waiter lock and a deque per exchange).
    done = _thread.allocate_lock()
    done.acquire()

    def run(helper: _Helper) -> None:
        try:
            with KDC_SECONDS.time():
                box["result"] = func()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            box["error"] = exc
        finally:
            _park(helper)
            SLOTS.release(key, exchange)
            done.release()

    try:
        _hand_to_helper(run)
    except RuntimeError:  # out of tasks (TasksMax): a failed attempt, not a broken cache
        SLOTS.release(key, exchange)
        raise KdcUnreachable(f"{what}: not started: cannot start a thread", errors.KRB5_KDC_UNREACH) from None
    if meanwhile is not None:
        waited = time.monotonic()
        meanwhile()
        timeout = max(0.0, timeout - (time.monotonic() - waited))
    if not done.acquire(timeout=timeout):
        SLOTS.abandon(exchange)  # still in flight (slot and key held), but no longer one to gate on
        raise KdcUnreachable(f"{what}: no KDC answered within {timeout:g} s", errors.KRB5_KDC_UNREACH)
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]


#: CCache objects whose krb5_cc_destroy failed.  libkrb5 frees the handle even then, but pykrb5
#: (0.10) clears its pointer only on success and would krb5_cc_close it again at dealloc (a
#: double free that killed the service on EDQUOT); keeping the object alive avoids that.
_DESTROY_FAILED: list[krb5.CCache] = []


def cc_destroy(ctx: krb5.Context, cc: krb5.CCache) -> None:
    """krb5_cc_destroy, safe against pykrb5's double free when it fails."""
    try:
        krb5.cc_destroy(ctx, cc)
    except krb5.Krb5Error:
        _DESTROY_FAILED.append(cc)
        raise


@contextmanager
def discarded_on_failure(ctx: krb5.Context, cc: krb5.CCache, what: str) -> Iterator[None]:
    """If the block fails, krb5_cc_destroy the half-made ``cc``; a krb5 error becomes a
    TicketError about ``what`` (from_krb5), anything else goes on as it was."""
    try:
        yield
    except BaseException as exc:
        try:
            cc_destroy(ctx, cc)
        except krb5.Krb5Error:
            pass
        if isinstance(exc, krb5.Krb5Error):
            raise from_krb5(exc, what) from None
        raise


def gic_options(ctx: krb5.Context, lifetime: int | None, renew_lifetime: int | None,
                forwardable: bool | None, renewable: bool) -> krb5.GetInitCredsOpt:
    """krb5_get_init_creds_opt_alloc with the ticket lifetime, renewable life and forwardable flag set."""
    opt = krb5.get_init_creds_opt_alloc(ctx)
    if lifetime:
        krb5.get_init_creds_opt_set_tkt_life(opt, int(lifetime))
    if renewable and renew_lifetime:
        krb5.get_init_creds_opt_set_renew_life(opt, int(renew_lifetime))
    elif not renewable:
        krb5.get_init_creds_opt_set_renew_life(opt, 0)
    if forwardable is not None:
        krb5.get_init_creds_opt_set_forwardable(opt, bool(forwardable))
    return opt


class Krb5Failure(Exception):
    """A libkrb5 error code from the GIL-free C helper (tickets/_renew_build.py), for errors.from_krb5."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.err_code = code


def renewed_creds(ctx: krb5.Context, ccache_name: str, krb5_config: str | None, what: str) -> krb5.Creds:
    """krb5_get_renewed_creds on ``ccache_name`` with the GIL released (see tickets/_renew_build.py).

    pykrb5's get_renewed_creds holds the GIL for the whole KDC exchange, which libkrb5 does
    not bound: a silent KDC froze every thread of the service.  The C side returns the
    credential marshalled; krb5.unmarshal_credentials makes it a pykrb5 Creds again.
    """
    from ._krb5_renew import ffi, lib

    out = ffi.new("unsigned char **")
    outlen = ffi.new("size_t *")
    err = ffi.new("char[]", 512)
    profile = krb5_config.encode() if krb5_config else ffi.NULL
    code = lib.pk_renew_marshalled(ccache_name.encode(), profile, out, outlen, err, 512)
    if code:
        raise from_krb5(Krb5Failure(code, ffi.string(err).decode(errors="replace")), what)
    try:
        data = ffi.buffer(out[0], outlen[0])[:]
    finally:
        lib.pk_free(out[0], outlen[0])
    return krb5.unmarshal_credentials(ctx, data)


def secret_buffer(password: str | bytes | bytearray) -> bytearray:
    """The password as UTF-8 in a new NUL-terminated ``bytearray`` that :func:`wipe` zeroes.

    The buffer is sized first and filled in place, one character at a time, so no full-length
    ``bytes`` copy is made here (``str.encode`` would make one that cannot be zeroed, and a
    growing bytearray leaves its old allocations behind).  For ASCII, ``c.encode()`` returns
    CPython's cached one-byte objects; other characters leave 2-4 byte fragments.  What the
    caller passed (a ``str`` from the JSON request) cannot be zeroed: it is only dropped.
    """
    if not isinstance(password, str):
        buf = bytearray(len(password) + 1)
        buf[:len(password)] = password
        return buf
    size = sum(1 if ord(ch) < 0x80 else len(ch.encode()) for ch in password)
    buf = bytearray(size + 1)
    i = 0
    for ch in password:
        piece = ch.encode()
        buf[i:i + len(piece)] = piece
        i += len(piece)
    return buf


def wipe(buf: bytearray) -> None:
    """Overwrite ``buf`` with zeros in place (its length, and so its allocation, stays)."""
    for i in range(len(buf)):
        buf[i] = 0
