"""Credential-cache operations the ticket service performs with the user's credentials (pykrb5).

API (names are stable; the service, CLI and tests import them):

- ``acquire_password(principal, password, uid, gid, *, lifetime, renew_lifetime, forwardable,
  renewable, timeout, krb5_config, context) -> TicketInfo``:
  krb5_get_init_creds_password, then the TGT goes into a NEW cache of the user's
  ``KEYRING:persistent:<uid>`` collection, which is made primary (krb5_cc_switch); the previous
  primary is destroyed after the switch if this service created it.
  With ``validate`` ("require" / "if-keytab" / "never") the TGT is first checked against the host
  keytab (krb5_verify_init_creds, see :func:`verify_creds`) and nothing is stored when it fails;
  with ``fast`` ("try" / "require" / "never") the AS exchange is armored with a TGT of the host
  principal from the same keytab (:func:`fast_armor`).
- ``acquire_keytab(principal, keytab, uid, gid, ccache=None, ...) -> TicketInfo``:
  krb5_get_init_creds_keytab into ``ccache`` (default the persistent collection), as ``k5start -f``.
- ``renew(ccache_name, uid, gid, *, timeout, ...) -> TicketInfo``: krb5_get_renewed_creds, written
  into a new cache that replaces the old one (switch primary first, destroy the old one after a
  short grace), so a reader never finds the collection empty.  ``TicketInfo.ccache`` is the NEW name.
- ``list_caches(uid) -> list[TicketInfo]``: every cache of the persistent collection.
- ``import_file(source, uid, gid, *, remove=True) -> TicketInfo``: a FILE cache of the user (sshd's
  delegated ``FILE:/tmp/krb5cc_<uid>_XXXXXX``) copied into a new primary cache of the collection,
  as the user, then the file removed.
- ``destroy(ccache_name, uid, gid)``: krb5_cc_destroy.
- ``is_service_cache(name)``: True for caches this service created (their subsidiary name starts
  with :data:`SERVICE_PREFIX`; the mark survives a restart of the service).
- ``flush_deferred()``: destroy now the old caches still waiting for their grace period.
- ``sweep_retired(uid)``: destroy the caches an earlier process retired (marked with the
  :data:`RETIRED_MARK` cache config entry) but died before destroying; returns their names.

Every ccache operation runs with the thread's real and effective uid/gid switched to the user
(``keyutils.thread_credentials(uid, gid, effective=True)``: raw per-thread setresuid), so the
keys are owned by and charged to the user, never root.  KDC exchanges for new tickets run as
the caller (root can read keytabs).  The password is held as bytes only until the TGT exists and
never appears in a log line or an exception message.  ``timeout`` bounds a KDC exchange: MIT
krb5 1.20 has no kdc_timeout setting, so the exchange runs in a helper thread and the caller
gets :class:`~.errors.KdcUnreachable` when it takes longer (its late result is discarded).
"""

from __future__ import annotations

import atexit
import dataclasses
import errno
import heapq
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import krb5

from .. import keyutils
from . import errors
from .accounts import primary_gid
from .config import FAST_MODES, VALIDATE_MODES
from .errors import KdcUnreachable, TicketError, from_krb5
from .kdclimit import SLOTS
from .metrics import KDC_SECONDS

#: Subsidiary-name prefix of caches this service creates ("KEYRING:persistent:1000:keyinit_3f2a…").
SERVICE_PREFIX = "keyinit_"
#: Prefix of the replacement of a cache the user made with their own kinit, renewed by us.
ADOPTED_PREFIX = "keyinit-adopted_"
#: Seconds an old cache stays after the switch, for readers that resolved the old primary name.
DEFAULT_GRACE = 2.0
_CONF_REALM = "X-CACHECONF:"
#: Cache config entry (krb5_cc_set_config) written into a cache when a renewal or login replaces
#: it: the deferred destroy lives in memory, the mark in the kernel, so a service killed during
#: the grace period recognises the cache after a restart (``sweep_retired``) and never adopts it.
RETIRED_MARK = b"keyinit-retired"
_T = TypeVar("_T")


@dataclass(frozen=True)
class TicketInfo:
    """One credential cache and its TGT (times are seconds since the epoch, 0 when unknown)."""

    uid: int
    ccache: str
    principal: str
    server: str
    starttime: int
    endtime: int
    renew_till: int
    renewable: bool
    primary: bool = False
    service: bool = False  # created by this service (see is_service_cache)
    retired: bool = False  # replaced by a newer cache, to be destroyed (carries RETIRED_MARK)
    #: The host principal the TGT was validated with ("" when validation did not run).
    validated: str = ""
    #: What the caller should log as a warning (validation skipped, FAST armor unavailable).
    warnings: tuple[str, ...] = ()



# ------------------------------------------------------------------ contexts and credentials

_local = threading.local()
_env_lock = threading.Lock()


def _context(krb5_config: str | None = None) -> krb5.Context:
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


class _as_user:  # noqa: N801 - used like a function
    """Per-thread switch to the user's real+effective uid/gid (no-op when already that user).

    On the way out, the user's persistent keyring is unlinked from the process keyring that
    MIT linked it into, once no other thread is working for that uid: otherwise the process
    keyring collects every user's tree, and the kernel's possession search on each keyctl
    walks all of it (measured: renewal CPU x6 at 1,000 uids).
    """

    def __init__(self, uid: int, gid: int) -> None:
        self.uid, self.gid = uid, gid
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


def _bounded(func: Callable[[], _T], timeout: float | None, what: str, key: Hashable | None = None) -> _T:
    """Run a KDC exchange, giving up after ``timeout`` seconds (None: wait as long as libkrb5 does).

    The helper thread cannot be cancelled; when it finishes late its result is dropped.  It
    holds a slot of ``kdclimit.SLOTS`` until it ends, so blocked helpers are bounded in number
    (max_kdc_calls) and one ``key`` (a cache) has at most one exchange in flight.  Waiting
    for a free slot counts against ``timeout``; without one by then, or with ``key`` in flight,
    the exchange fails with KdcUnreachable.
    """
    if timeout is None:
        with KDC_SECONDS.time():
            return func()
    start = time.monotonic()
    why = SLOTS.acquire(key, wait=timeout)  # a burst of logins queues for a slot within the bound
    if why is not None:
        raise KdcUnreachable(f"{what}: not started: {why}", errors.KRB5_KDC_UNREACH)
    timeout = max(0.0, timeout - (time.monotonic() - start))
    box: dict[str, object] = {}
    done = threading.Event()

    def run() -> None:
        try:
            with KDC_SECONDS.time():
                box["result"] = func()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            box["error"] = exc
        finally:
            SLOTS.release(key)
            done.set()

    try:
        threading.Thread(target=run, name="krb5-kdc", daemon=True).start()
    except RuntimeError:  # out of tasks (TasksMax): a failed attempt, not a broken cache
        SLOTS.release(key)
        raise KdcUnreachable(f"{what}: not started: cannot start a thread", errors.KRB5_KDC_UNREACH) from None
    if not done.wait(timeout):
        raise KdcUnreachable(f"{what}: no KDC answered within {timeout:g} s", errors.KRB5_KDC_UNREACH)
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]


# ------------------------------------------------------------------ names

def collection_name(uid: int) -> str:
    """The user's persistent collection: ``KEYRING:persistent:<uid>``."""
    return f"KEYRING:persistent:{int(uid)}"


def _full_name(cc: krb5.CCache) -> str:
    return f"{(cc.cache_type or b'FILE').decode()}:{(cc.name or b'').decode()}"


def _subsidiary(name: str) -> str:
    """``keyinit_ab12`` of ``KEYRING:persistent:1000:keyinit_ab12`` ('' for a collection name)."""
    parts = name.split(":")
    return parts[3] if len(parts) >= 4 and parts[0] == "KEYRING" else ""


def is_service_cache(name: str) -> bool:
    """True when this service created the cache (its subsidiary name carries SERVICE_PREFIX)."""
    return _subsidiary(name).startswith(SERVICE_PREFIX)


#: CCache objects whose krb5_cc_destroy failed.  libkrb5 frees the handle even then, but pykrb5
#: (0.10) clears its pointer only on success and would krb5_cc_close it again at dealloc (a
#: double free that killed the service on EDQUOT); keeping the object alive avoids that.
_DESTROY_FAILED: list[krb5.CCache] = []


def _cc_destroy(ctx: krb5.Context, cc: krb5.CCache) -> None:
    """krb5_cc_destroy, safe against pykrb5's double free when it fails."""
    try:
        krb5.cc_destroy(ctx, cc)
    except krb5.Krb5Error:
        _DESTROY_FAILED.append(cc)
        raise


def _new_name(collection: str, prefix: str) -> str:
    return f"{collection}:{prefix}{secrets.token_hex(5)}"


def _collection_of(name: str) -> str:
    parts = name.split(":")
    if parts[0] == "KEYRING" and len(parts) >= 3:
        return ":".join(parts[:3])
    return name


# ------------------------------------------------------------------ reading caches

def _is_config(creds: krb5.Creds) -> bool:
    return creds.server.realm == _CONF_REALM.encode()


def _tgt_info(ctx: krb5.Context, cc: krb5.CCache, uid: int, primary: bool = False) -> TicketInfo:
    """Principal and TGT times of an open cache (krb5_cc_get_principal, krb5_cc_next_cred)."""
    name = _full_name(cc)
    try:
        princ = krb5.cc_get_principal(ctx, cc)
    except krb5.Krb5Error as exc:
        raise from_krb5(exc, f"reading {name}") from None
    client = str(princ)
    chosen: krb5.Creds | None = None
    retired = False
    for creds in cc:  # all of them: the keyring's order is not the order of writing
        if _is_config(creds):
            comps = creds.server.components
            retired = retired or (len(comps) >= 2 and comps[1] == RETIRED_MARK)
            continue
        server = creds.server
        if server.components and server.components[0] == b"krbtgt":
            if chosen is None or not (chosen.server.components and chosen.server.components[0] == b"krbtgt"):
                chosen = creds
        elif chosen is None:
            chosen = creds
    if chosen is None:
        return TicketInfo(uid, name, client, "", 0, 0, 0, False, primary, is_service_cache(name), retired)
    t = chosen.times
    renewable = bool(chosen.ticket_flags & krb5.TicketFlags.renewable)
    return TicketInfo(uid, name, client, str(chosen.server), t.starttime or t.authtime, t.endtime,
                      t.renew_till if renewable else 0, renewable, primary, is_service_cache(name),
                      retired)


def _primary_name(ctx: krb5.Context, collection: str) -> str:
    """The cache a reader of the collection name gets (krb_ccache:primary)."""
    return _full_name(krb5.cc_resolve(ctx, collection.encode()))


# ------------------------------------------------------------------ deferred destruction

class _Reaper:
    """Destroys replaced caches after a grace period, from one background thread.

    A reader such as klist resolves the primary name and then reads that cache; destroying the
    old cache at the instant of the switch could pull it from under such a reader.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, str, int, int, str | None]] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def add(self, name: str, uid: int, gid: int, krb5_config: str | None, delay: float) -> None:
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + delay, name, uid, gid, krb5_config))
            if self._thread is None or not self._thread.is_alive():
                thread = threading.Thread(target=self._run, name="ccache-reaper", daemon=True)
                try:
                    thread.start()
                    self._thread = thread
                except RuntimeError:
                    # Out of tasks: the entry waits for the next add() that can start the thread
                    # (or flush() at exit); it is never adopted meanwhile (pending, RETIRED_MARK).
                    pass
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap:
                    if not self._cond.wait(30.0):
                        self._thread = None
                        return
                due = self._heap[0][0]
                now = time.monotonic()
                if due > now:
                    self._cond.wait(due - now)
                    continue
                _, name, uid, gid, conf = heapq.heappop(self._heap)
            _destroy_quiet(name, uid, gid, conf)

    def flush(self, uid: int | None = None) -> int:
        """Destroy pending caches now (of ``uid`` only, when given); return how many."""
        with self._cond:
            mine = [e for e in self._heap if uid is None or e[2] == uid]
            self._heap = [e for e in self._heap if e not in mine]
            heapq.heapify(self._heap)
        for _, name, u, g, conf in mine:
            _destroy_quiet(name, u, g, conf)
        return len(mine)

    def pending(self, uid: int) -> set[str]:
        with self._cond:
            return {e[1] for e in self._heap if e[2] == uid}


_reaper = _Reaper()


def retiring(uid: int) -> set[str]:
    """Names of ``uid``'s replaced caches still in their grace period (destroyed at once on EDQUOT)."""
    return _reaper.pending(uid)


def flush_deferred(uid: int | None = None) -> int:
    """Destroy now the replaced caches still in their grace period; return how many."""
    return _reaper.flush(uid)


atexit.register(flush_deferred)


def _destroy_quiet(name: str, uid: int, gid: int, krb5_config: str | None) -> None:
    try:
        destroy(name, uid, gid, krb5_config=krb5_config)
    except TicketError:
        pass


# ------------------------------------------------------------------ writing caches

@contextmanager
def _discarded_on_failure(ctx: krb5.Context, cc: krb5.CCache, what: str) -> Iterator[None]:
    """If the block fails, krb5_cc_destroy the half-made ``cc``; a krb5 error becomes a
    TicketError about ``what`` (from_krb5), anything else goes on as it was."""
    try:
        yield
    except BaseException as exc:
        try:
            _cc_destroy(ctx, cc)
        except krb5.Krb5Error:
            pass
        if isinstance(exc, krb5.Krb5Error):
            raise from_krb5(exc, what) from None
        raise


def _write_new(ctx: krb5.Context, target: str, princ: krb5.Principal, creds: krb5.Creds,
               prefix: str) -> krb5.CCache:
    """Write ``creds`` into a new cache beside ``target``; caller runs as the user.

    KEYRING: a new subsidiary of the collection (krb5_cc_resolve of a fresh name, then
    krb5_cc_initialize creates the keyring).  FILE: a fresh file that the caller renames.
    On failure the half-written cache is destroyed.
    """
    if target.startswith("KEYRING:"):
        name = _new_name(_collection_of(target), prefix)
    elif target.startswith(("FILE:", "/")):
        path = target.removeprefix("FILE:")
        name = f"FILE:{path}.new.{secrets.token_hex(4)}"
    else:
        raise TicketError(f"{target}: only KEYRING and FILE caches are supported")
    try:
        # Resolving a KEYRING:persistent name already creates keyrings (_krb): EDQUOT can come here.
        cc = krb5.cc_resolve(ctx, name.encode())
    except krb5.Krb5Error as exc:
        raise from_krb5(exc, f"opening {name}") from None
    with _discarded_on_failure(ctx, cc, f"storing the ticket of {princ} in {name}"):
        krb5.cc_initialize(ctx, cc, princ)
        krb5.cc_store_cred(ctx, cc, creds)
    return cc


def _write_new_freeing(ctx: krb5.Context, target: str, princ: krb5.Principal, creds: krb5.Creds,
                       prefix: str, uid: int) -> krb5.CCache:
    """:func:`_write_new`; on EDQUOT, destroy now the uid's old caches still in their grace
    period (they hold quota) and write again once the kernel has given their quota back."""
    try:
        return _write_new(ctx, target, princ, creds, prefix)
    except errors.QuotaExceeded:
        if not _reaper.pending(uid):
            raise
        _reaper.flush(uid)
        return _retry_after_key_gc(lambda: _write_new(ctx, target, princ, creds, prefix))


def _retry_after_key_gc(write: Callable[[], krb5.CCache], timeout: float = 1.0) -> krb5.CCache:
    """Call ``write`` until the kernel has uncharged destroyed keys (EDQUOT till then), ``timeout`` s at most.

    keyctl_clear/unlink of a cache only drops references: the kernel's key garbage collector
    (a workqueue, key_gc_unused_keys) frees the keys and uncharges the quota a moment later.
    A write retried at once after destroying old generations still gets EDQUOT (measured with
    a 300-group AD user under the default 20,000-byte quota).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return write()
        except errors.QuotaExceeded:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def _install(ctx: krb5.Context, target: str, princ: krb5.Principal, creds: krb5.Creds, uid: int,
             gid: int, *, prefix: str, make_primary: bool, replace: str | None,
             krb5_config: str | None, grace: float) -> TicketInfo:
    """Store ``creds`` as the new cache for ``target`` with no moment where readers find none.

    Order: write the new cache completely, switch primary to it (one atomic add_key of
    krb_ccache:primary), and only then retire ``replace`` (deferred by ``grace`` seconds).
    """
    with _as_user(uid, gid):
        cc = _write_new_freeing(ctx, target, princ, creds, prefix, uid)
        new_name = _full_name(cc)
        what = f"installing the ticket of {princ} in {new_name}"
        if new_name.startswith("FILE:"):
            final = target if target.startswith("FILE:") else f"FILE:{target}"
            with _discarded_on_failure(ctx, cc, what):
                os.rename(new_name.removeprefix("FILE:"), final.removeprefix("FILE:"))
                cc = krb5.cc_resolve(ctx, final.encode())
            with _discarded_on_failure(ctx, cc, what):
                return _tgt_info(ctx, cc, uid)
        with _discarded_on_failure(ctx, cc, what):
            if make_primary:
                krb5.cc_switch(ctx, cc)  # writes krb_ccache:primary: EDQUOT can strike here too
            info = _tgt_info(ctx, cc, uid, primary=make_primary)
            if replace and replace != new_name and replace.startswith("KEYRING:"):
                _mark_retired(ctx, replace)
    if replace and replace != new_name:
        if grace > 0:
            _reaper.add(replace, uid, gid, krb5_config, grace)
        else:
            _destroy_quiet(replace, uid, gid, krb5_config)
    return info


def _mark_retired(ctx: krb5.Context, name: str) -> None:
    """krb5_cc_set_config(RETIRED_MARK) on a replaced cache; caller runs as the user.

    Best effort: without the mark (EDQUOT, the cache already gone) a crash during the grace
    period leaves the cache to be adopted as before, which costs KDC traffic, not a ticket.
    """
    try:
        krb5.cc_set_config(ctx, krb5.cc_resolve(ctx, name.encode()), None, RETIRED_MARK, b"1")
    except krb5.Krb5Error:
        pass


def sweep_retired(uid: int, gid: int | None = None, *, krb5_config: str | None = None,
                  context: krb5.Context | None = None) -> list[str]:
    """Destroy the caches of ``uid``'s collection that carry RETIRED_MARK and that no deferred
    destroy of this process holds: leftovers of a service killed during their grace period.

    Returns the names destroyed.  Run at start, before anything adopts the collection's caches.
    """
    ctx = context or _context(krb5_config)
    if gid is None:
        gid = primary_gid(uid)
    collection = collection_name(uid)
    retiring = _reaper.pending(uid)
    swept: list[str] = []
    with _as_user(uid, gid):
        krb5.cc_set_default_name(ctx, collection.encode())
        try:
            for cc in krb5.cccol_iter(ctx):
                name = _full_name(cc)
                if cc.cache_type != b"KEYRING" or _collection_of(name) != collection or name in retiring:
                    continue
                try:
                    if not _tgt_info(ctx, cc, uid).retired:
                        continue
                    _cc_destroy(ctx, cc)
                except (TicketError, krb5.Krb5Error):
                    continue
                swept.append(name)
        except krb5.Krb5Error as exc:
            raise from_krb5(exc, f"listing {collection}") from None
        finally:
            krb5.cc_set_default_name(ctx, None)
    return swept


def _gic_options(ctx: krb5.Context, lifetime: int | None, renew_lifetime: int | None,
                 forwardable: bool | None, renewable: bool) -> krb5.GetInitCredsOpt:
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


def _old_primary(ctx: krb5.Context, collection: str, uid: int, gid: int) -> str | None:
    """The current primary cache of the collection if this service made it (to retire it)."""
    with _as_user(uid, gid):
        try:
            cc = krb5.cc_resolve(ctx, collection.encode())
            krb5.cc_get_principal(ctx, cc)
        except krb5.Krb5Error:
            return None
        name = _full_name(cc)
    return name if is_service_cache(name) else None


# ------------------------------------------------------------------ validation and FAST armor

def host_principal(krb5_config: str | None = None) -> str:
    """krb5_sname_to_principal(NULL, "host", KRB5_NT_SRV_HST): ``host/<canonical name>@REALM``."""
    from ._krb5_renew import ffi, lib

    out = ffi.new("char[]", 512)
    code = lib.pk_host_principal(krb5_config.encode() if krb5_config else ffi.NULL, out, 512)
    if code:
        raise TicketError(f"krb5_sname_to_principal(host): error {code}", code)
    return ffi.string(out).decode(errors="replace")


def keytab_name(ctx: krb5.Context, keytab: str | None) -> str:
    """``keytab``, or the name of libkrb5's default keytab (krb5_kt_default_name)."""
    if keytab:
        return keytab
    try:
        name = krb5.kt_default_name(ctx)
        return name.decode(errors="replace") if isinstance(name, bytes) else str(name)
    except krb5.Krb5Error:
        return "the default keytab"


def verify_creds(ctx: krb5.Context, creds: krb5.Creds, *, keytab: str | None = None,
                 principal: str | None = None, krb5_config: str | None = None) -> str:
    """krb5_verify_init_creds with ap_req_nofail: prove the TGT came from the realm's real KDC.

    A ticket for ``principal`` (default: this host's ``host/`` principal) is requested with the
    TGT and decrypted with that principal's key from ``keytab`` (default: libkrb5's default
    keytab, /etc/krb5.keytab unless KRB5_KTNAME or default_keytab_name say otherwise).  An
    impostor KDC does not hold the host key, so its TGT fails here.  Runs as the caller
    (root reads the keytab), without the GIL (tickets/_renew_build.py).  Returns the principal
    validated with; raises NoValidationKey (no keytab or no such key), ValidationFailed,
    KdcUnreachable.
    """
    from ._krb5_renew import ffi, lib

    data = krb5.marshal_credentials(ctx, creds)
    server = ffi.new("char[]", 512)
    err = ffi.new("char[]", 512)
    code = lib.pk_verify_marshalled(data, len(data), principal.encode() if principal else ffi.NULL,
                                    keytab.encode() if keytab else ffi.NULL,
                                    krb5_config.encode() if krb5_config else ffi.NULL,
                                    server, 512, err, 512)
    name = ffi.string(server).decode(errors="replace") or principal or "host/<this host>"
    if name.endswith("@"):  # krb5_sname_to_principal's referral realm: any realm in the keytab
        name = name[:-1]
    if code == 0:
        return name
    where = keytab_name(ctx, keytab)
    reason = ffi.string(err).decode(errors="replace") or f"error {code}"
    if code in (errno.ENOENT, errors.KRB5_KT_NOTFOUND, errors.KRB5_KT_END):
        raise errors.NoValidationKey(f"no key for {name} in {where} to validate with: {reason}", code)
    if code in (errors.KRB5_KDC_UNREACH, errors.KRB5_REALM_CANT_RESOLVE):
        raise KdcUnreachable(f"validating with {name}: {reason}", code)
    raise errors.ValidationFailed(f"TGT did not validate with {name} from {where}: {reason}", code)


#: (keytab, armor client or its default, krb5_config) -> MEMORY ccache names of armor TGTs, newest
#: last, and the newest one's end time.  Older generations are destroyed once two newer ones
#: exist, so a login still using the previous one is never pulled from under.
_armor: dict[tuple[str | None, str | None, str | None], tuple[list[str], float]] = {}
_armor_lock = threading.Lock()
#: Get a new armor TGT this long before the current one ends.
ARMOR_MARGIN = 300.0


def machine_account(ctx: krb5.Context, keytab: str | None) -> str | None:
    """The keytab's computer-account principal (``NAME$@REALM``), the FAST armor client on AD.

    krb5_kt_start_seq_get/next_entry over ``keytab`` (default: krb5_kt_default), as SSSD's
    select_principal_from_keytab: this host's NetBIOS name first (its short name, upper case, at
    most 15 characters; compared without case, as joins write it either way), else the first
    other ``*$`` entry.  An AD or Samba KDC issues a TGT to that name, not to the account's
    ``host/`` SPNs.  None when the keytab holds no such entry (MIT realms) or cannot be read.
    """
    short = socket.gethostname().split(".")[0].upper()[:15] + "$"
    first: str | None = None
    try:
        kt = krb5.kt_resolve(ctx, keytab.encode()) if keytab else krb5.kt_default(ctx)
        for entry in kt:
            name = str(entry.principal)
            account = name.rpartition("@")[0]
            if "/" in account or not account.endswith("$"):
                continue
            if account.upper() == short:
                return name
            first = first or name
    except krb5.Krb5Error:
        return None
    return first


def fast_armor(ctx: krb5.Context, *, keytab: str | None = None, principal: str | None = None,
               krb5_config: str | None = None, fallback: str | None = None) -> krb5.CCache:
    """A MEMORY ccache with a TGT of the armor client from the keytab, as FAST armor.

    krb5_get_init_creds_keytab (as the caller: root reads the keytab), as SSSD's krb5_use_fast
    does with the host keytab; the TGT is reused until :data:`ARMOR_MARGIN` before it ends.
    The client is ``principal`` (ticketd.toml's fast_principal) when given, else the keytab's
    computer account (:func:`machine_account`: AD), else ``fallback`` (validate_principal), else
    this host's ``host/`` principal (:func:`host_principal`: MIT).
    Raises FastUnavailable when no armor can be had.
    """
    key = (keytab, principal or f"default:{fallback}", krb5_config)
    with _armor_lock:
        names, endtime = _armor.get(key, ([], 0.0))
        if names and endtime - ARMOR_MARGIN > time.time():
            return krb5.cc_resolve(ctx, names[-1].encode())
    name = principal or machine_account(ctx, keytab) or fallback or host_principal(krb5_config)
    try:
        princ = krb5.parse_name_flags(ctx, name.encode())
        kt = krb5.kt_resolve(ctx, keytab.encode()) if keytab else krb5.kt_default(ctx)
        creds = krb5.get_init_creds_keytab(ctx, princ, krb5.get_init_creds_opt_alloc(ctx), kt)
        cc = krb5.cc_new_unique(ctx, b"MEMORY", None)
        krb5.cc_initialize(ctx, cc, princ)
        krb5.cc_store_cred(ctx, cc, creds)
    except krb5.Krb5Error as exc:
        raise errors.FastUnavailable(f"no FAST armor TGT for {name} from {keytab_name(ctx, keytab)}: {exc}",
                                     getattr(exc, "err_code", 0)) from None
    with _armor_lock:
        names, _ = _armor.get(key, ([], 0.0))
        names = [*names, _full_name(cc)]
        stale, names = names[:-2], names[-2:]
        _armor[key] = (names, float(creds.times.endtime))
    for old in stale:
        try:
            _cc_destroy(ctx, krb5.cc_resolve(ctx, old.encode()))
        except krb5.Krb5Error:
            pass
    return cc


def _validated(ctx: krb5.Context, creds: krb5.Creds, mode: str, keytab: str | None, principal: str | None,
               krb5_config: str | None) -> tuple[str, tuple[str, ...]]:
    """Apply ``validate`` to a fresh TGT: (principal validated with, warnings)."""
    if mode == "never":
        return "", ()
    try:
        return verify_creds(ctx, creds, keytab=keytab, principal=principal, krb5_config=krb5_config), ()
    except errors.NoValidationKey as exc:
        if mode == "if-keytab":
            return "", (f"TGT not validated (validate = \"if-keytab\"): {exc}",)
        raise


# ------------------------------------------------------------------ the password buffer

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


# ------------------------------------------------------------------ the API

def acquire_password(
    principal: str,
    password: str | bytes | bytearray,
    uid: int,
    gid: int,
    *,
    lifetime: int | None = None,
    renew_lifetime: int | None = None,
    forwardable: bool | None = True,
    renewable: bool = True,
    timeout: float | None = 2.0,
    krb5_config: str | None = None,
    context: krb5.Context | None = None,
    grace: float = DEFAULT_GRACE,
    validate: str = "never",
    validate_keytab: str | None = None,
    validate_principal: str | None = None,
    fast: str = "never",
    fast_principal: str | None = None,
    canonicalize: bool = False,
) -> TicketInfo:
    """krb5_get_init_creds_password, then store the TGT as the user's new primary persistent cache.

    With ``canonicalize`` the request carries the canonicalize flag
    (krb5_get_init_creds_opt_set_canonicalize) and the cache is made for the client name the KDC
    answers with, so ``alice``, ``ALICE`` and the UPN ``alice@example.com`` (parsed as an
    enterprise name, see :func:`parse_login_name`) all give one ``alice@REALM`` cache.

    ``validate`` ("require", "if-keytab", "never") checks the TGT with :func:`verify_creds`
    against ``validate_keytab``/``validate_principal`` before anything is stored; ``fast``
    ("try", "require", "never") armors the exchange with :func:`fast_armor` from the same keytab
    (client ``fast_principal``, by default the keytab's computer account or the validation
    principal).  The previous primary cache is destroyed after the switch only if this service created it
    (a cache the user made with kinit is left alone).  Raises BadPassword, UnknownPrincipal,
    KdcUnreachable (also after ``timeout`` seconds), PasswordExpired, QuotaExceeded,
    ValidationFailed, NoValidationKey (validate = "require"), FastUnavailable (fast = "require").
    """
    if validate not in VALIDATE_MODES:
        raise ValueError(f"validate must be one of {VALIDATE_MODES}")
    if fast not in FAST_MODES:
        raise ValueError(f"fast must be one of {FAST_MODES}")
    # One zeroable buffer for the secret, wiped as soon as the TGT exists (or cannot), and again in
    # ``finally``: no other copy made here outlives the exchange.
    secret = secret_buffer(password)
    del password
    what = f"initial ticket for {principal}"
    try:
        def exchange() -> tuple[krb5.Principal, krb5.Creds, str, tuple[str, ...]]:
            c = context if (context is not None and timeout is None) else _context(krb5_config)
            princ = parse_login_name(c, principal) if canonicalize else krb5.parse_name_flags(
                c, principal.encode())
            opt = _gic_options(c, lifetime, renew_lifetime, forwardable, renewable)
            if canonicalize:
                krb5.get_init_creds_opt_set_canonicalize(opt, True)
            notes: tuple[str, ...] = ()
            if fast != "never":
                try:
                    armor = fast_armor(c, keytab=validate_keytab, principal=fast_principal,
                                       fallback=validate_principal, krb5_config=krb5_config)
                except errors.FastUnavailable as exc:
                    if fast == "require":
                        raise
                    notes = (f"password exchange not armored (fast = \"try\"): {exc}",)
                else:
                    krb5.get_init_creds_opt_set_fast_ccache(c, opt, armor)
                    if fast == "require":
                        krb5.get_init_creds_opt_set_fast_flags(c, opt, krb5.FastFlags.required)
            try:
                # pykrb5 takes any buffer (``const unsigned char[:]``) and hands libkrb5 a pointer
                # to its first byte as a C string: the buffer ends in NUL (secret_buffer).
                creds = krb5.get_init_creds_password(c, princ, opt, secret)
            except krb5.Krb5Error as exc:
                raise from_krb5(exc, what) from None
            finally:
                wipe(secret)  # drop the password as soon as the TGT exists (or cannot)
            if canonicalize:
                princ = creds.client  # the KDC's name for the user: one cache, whatever was typed
            validated, warned = _validated(c, creds, validate, validate_keytab, validate_principal,
                                           krb5_config)
            return princ, creds, validated, notes + warned

        princ, creds, validated, notes = _bounded(exchange, timeout, what)
    finally:
        wipe(secret)
    ctx = context or _context(krb5_config)
    collection = collection_name(uid)
    old = _old_primary(ctx, collection, uid, gid)
    info = _install(ctx, collection, princ, creds, uid, gid, prefix=SERVICE_PREFIX, make_primary=True,
                    replace=old, krb5_config=krb5_config, grace=grace)
    return dataclasses.replace(info, validated=validated, warnings=notes)


def is_enterprise_name(name: str) -> bool:
    """True for a UPN-style name (``alice@example.com``): its realm part has a lower-case letter.

    Realm names are upper case (AD's is its DNS domain upper-cased), a UPN suffix is a DNS
    name as the user types it; ``alice@EXAMPLE.COM`` stays an ordinary principal.
    """
    _user, at, domain = name.rpartition("@")
    return bool(at) and domain != domain.upper()


def parse_login_name(ctx: krb5.Context, name: str) -> krb5.Principal:
    """krb5_parse_name_flags, with KRB5_PRINCIPAL_PARSE_ENTERPRISE for a UPN (NT-ENTERPRISE, RFC 6806)."""
    flags = krb5.PrincipalParseFlags.enterprise if is_enterprise_name(name) else krb5.PrincipalParseFlags.none
    return krb5.parse_name_flags(ctx, name.encode(), flags)


def acquire_keytab(
    principal: str,
    keytab: str,
    uid: int,
    gid: int,
    ccache: str | None = None,
    *,
    lifetime: int | None = None,
    renew_lifetime: int | None = None,
    forwardable: bool | None = None,
    renewable: bool = True,
    timeout: float | None = 2.0,
    krb5_config: str | None = None,
    context: krb5.Context | None = None,
    grace: float = DEFAULT_GRACE,
) -> TicketInfo:
    """krb5_get_init_creds_keytab (read as the caller), stored as ``uid`` in ``ccache``, like k5start -f.

    ``ccache`` defaults to ``KEYRING:persistent:<uid>``.  For a KEYRING collection the TGT goes
    into a new primary cache and the previous service-made primary is retired; a named KEYRING
    subsidiary is replaced by a new one; a FILE cache is written beside and renamed over.
    """
    target = ccache or collection_name(uid)
    what = f"initial ticket for {principal} from keytab {keytab}"

    def exchange() -> tuple[krb5.Principal, krb5.Creds]:
        c = context if (context is not None and timeout is None) else _context(krb5_config)
        princ = krb5.parse_name_flags(c, principal.encode())
        opt = _gic_options(c, lifetime, renew_lifetime, forwardable, renewable)
        try:
            kt = krb5.kt_resolve(c, keytab.encode())
            return princ, krb5.get_init_creds_keytab(c, princ, opt, kt)
        except krb5.Krb5Error as exc:
            raise from_krb5(exc, what) from None

    princ, creds = _bounded(exchange, timeout, what, key=("keytab", principal, target))
    ctx = context or _context(krb5_config)
    if target.startswith("KEYRING:"):
        if _subsidiary(target):
            replace: str | None = target
            with _as_user(uid, gid):
                make_primary = _primary_name(ctx, _collection_of(target)) == target
        else:
            replace = _old_primary(ctx, target, uid, gid)
            make_primary = True
    else:
        replace, make_primary = None, False
    return _install(ctx, target, princ, creds, uid, gid, prefix=SERVICE_PREFIX, make_primary=make_primary,
                    replace=replace, krb5_config=krb5_config, grace=grace)


def renew(
    ccache_name: str,
    uid: int,
    gid: int,
    *,
    timeout: float | None = None,
    krb5_config: str | None = None,
    context: krb5.Context | None = None,
    grace: float = DEFAULT_GRACE,
    in_place: bool = False,
) -> TicketInfo:
    """krb5_get_renewed_creds for the cache's principal, with no empty-cache window.

    The renewed TGT is written into a new cache of the same collection; if the old one was the
    primary, the new one becomes primary; the old one is destroyed ``grace`` seconds later.
    The returned ``TicketInfo.ccache`` is the new name.  A cache the user made with kinit is
    replaced by one named ``ADOPTED_PREFIX…`` (so is_service_cache() stays False for it).
    With ``in_place`` (the uid's key quota has no room for a second generation, see
    ``tickets.quota``) a KEYRING cache is instead renewed where it is: krb5_cc_store_cred of the
    renewed TGT into it, which the KEYRING ccache does with one add_key(2) that updates the old
    TGT's key atomically; the name stays.
    Raises CacheNotFound, NotRenewable/TicketExpired, KdcUnreachable, QuotaExceeded.
    """
    what = f"renewing {ccache_name}"

    def exchange() -> tuple[krb5.Principal, krb5.Creds, bool]:
        c = context if (context is not None and timeout is None) else _context(krb5_config)
        with _as_user(uid, gid):
            try:
                cc = krb5.cc_resolve(c, ccache_name.encode())
                princ = krb5.cc_get_principal(c, cc)
                primary = (ccache_name.startswith("KEYRING:")
                           and _primary_name(c, _collection_of(ccache_name)) == ccache_name)
                return princ, _renewed_creds(c, ccache_name, krb5_config, what), primary
            except krb5.Krb5Error as exc:
                raise from_krb5(exc, what) from None

    princ, creds, primary = _bounded(exchange, timeout, what, key=("renew", ccache_name))
    ctx = context or _context(krb5_config)
    if in_place and ccache_name.startswith("KEYRING:"):
        with _as_user(uid, gid):
            try:
                cc = krb5.cc_resolve(ctx, ccache_name.encode())
                krb5.cc_store_cred(ctx, cc, creds)
            except krb5.Krb5Error as exc:
                raise from_krb5(exc, what) from None
            return _tgt_info(ctx, cc, uid, primary=primary)
    if not ccache_name.startswith("KEYRING:"):
        return _install(ctx, ccache_name, princ, creds, uid, gid, prefix="", make_primary=False,
                        replace=None, krb5_config=krb5_config, grace=grace)
    prefix = SERVICE_PREFIX if is_service_cache(ccache_name) else ADOPTED_PREFIX
    return _install(ctx, ccache_name, princ, creds, uid, gid, prefix=prefix, make_primary=primary,
                    replace=ccache_name, krb5_config=krb5_config, grace=grace)


class _Krb5Failure(Exception):
    """A libkrb5 error code from the GIL-free renewal, shaped for errors.from_krb5."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.err_code = code


def _renewed_creds(ctx: krb5.Context, ccache_name: str, krb5_config: str | None, what: str) -> krb5.Creds:
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
        raise from_krb5(_Krb5Failure(code, ffi.string(err).decode(errors="replace")), what)
    try:
        data = ffi.buffer(out[0], outlen[0])[:]
    finally:
        lib.pk_free(out[0])
    return krb5.unmarshal_credentials(ctx, data)


def list_caches(uid: int, gid: int | None = None, *, krb5_config: str | None = None,
                context: krb5.Context | None = None) -> list[TicketInfo]:
    """Every cache in ``KEYRING:persistent:<uid>`` with its principal and TGT times.

    Iterates the collection (krb5_cccol_cursor over the KEYRING type, with the context's default
    name set to the collection) as the user.  Caches waiting for deferred destruction, caches
    marked retired (RETIRED_MARK) and empty ones (no principal) are left out.
    """
    ctx = context or _context(krb5_config)
    collection = collection_name(uid)
    if gid is None:
        gid = primary_gid(uid)
    out: list[TicketInfo] = []
    retiring = _reaper.pending(uid)
    with _as_user(uid, gid):
        krb5.cc_set_default_name(ctx, collection.encode())
        try:
            primary = _primary_name(ctx, collection)
            for cc in krb5.cccol_iter(ctx):
                if cc.cache_type != b"KEYRING":
                    continue
                name = _full_name(cc)
                if _collection_of(name) != collection or name in retiring:
                    continue
                try:
                    found = _tgt_info(ctx, cc, uid, primary=(name == primary))
                except TicketError:
                    continue
                if not found.retired:  # replaced, never to be adopted (see sweep_retired)
                    out.append(found)
        except krb5.Krb5Error as exc:
            raise from_krb5(exc, f"listing {collection}") from None
        finally:
            krb5.cc_set_default_name(ctx, None)
    return out


def info(ccache_name: str, uid: int, gid: int | None = None, *, krb5_config: str | None = None,
         context: krb5.Context | None = None) -> TicketInfo:
    """Principal and TGT times of one cache, read as the user."""
    ctx = context or _context(krb5_config)
    if gid is None:
        gid = primary_gid(uid)
    with _as_user(uid, gid):
        try:
            cc = krb5.cc_resolve(ctx, ccache_name.encode())
            primary = (ccache_name.startswith("KEYRING:")
                       and _primary_name(ctx, _collection_of(ccache_name)) == ccache_name)
        except krb5.Krb5Error as exc:
            raise from_krb5(exc, f"reading {ccache_name}") from None
        return _tgt_info(ctx, cc, uid, primary=primary)


def destroy(ccache_name: str, uid: int, gid: int | None = None, *, krb5_config: str | None = None,
            context: krb5.Context | None = None) -> None:
    """krb5_cc_destroy as the user (a KEYRING cache: clear and unlink its keyring).

    Raises CacheNotFound when there is no such cache.
    """
    ctx = context or _context(krb5_config)
    if gid is None:
        gid = primary_gid(uid)
    with _as_user(uid, gid):
        try:
            cc = krb5.cc_resolve(ctx, ccache_name.encode())
            if ccache_name.startswith("KEYRING:") and _subsidiary(ccache_name):
                krb5.cc_get_principal(ctx, cc)  # resolve does not fail for a missing keyring
            _cc_destroy(ctx, cc)
        except krb5.Krb5Error as exc:
            raise from_krb5(exc, f"destroying {ccache_name}") from None


# ------------------------------------------------------------------ delegated credentials

#: Largest FILE cache import_file accepts (a forwarded TGT is ~1-5 KB; AD PACs stay far below).
MAX_IMPORT_BYTES = 1024 * 1024


def _open_users_file(path: str, uid: int) -> int:
    """open(2) ``path`` with O_NOFOLLOW as the caller (run under _as_user) and check it is ``uid``'s.

    Refused: a symlink (ELOOP), anything but a regular file, a file owned by another uid, one
    that group or others may write, one with other hard links, or one over MAX_IMPORT_BYTES.
    The checks are made on the open descriptor (fstat), so a later rename cannot swap the file.
    """
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError:
        raise errors.CacheNotFound(f"{path}: no such file", errors.KRB5_FCC_NOFILE) from None
    except OSError as exc:
        raise TicketError(f"{path}: {exc.strerror}", exc.errno or 0) from None
    try:
        st = os.fstat(fd)
        why = ""
        if not stat.S_ISREG(st.st_mode):
            why = "not a regular file"
        elif st.st_uid != uid:
            why = f"owned by uid {st.st_uid}, not {uid}"
        elif st.st_mode & 0o022:
            why = f"writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
        elif st.st_nlink != 1:
            why = f"{st.st_nlink} hard links"
        elif st.st_size > MAX_IMPORT_BYTES:
            why = f"{st.st_size} bytes (limit {MAX_IMPORT_BYTES})"
        if why:
            raise TicketError(f"{path}: refused: {why}")
    except BaseException:
        os.close(fd)
        raise
    return fd


def import_file(
    source: str,
    uid: int,
    gid: int,
    *,
    remove: bool = True,
    krb5_config: str | None = None,
    context: krb5.Context | None = None,
) -> TicketInfo:
    """Move a FILE ccache of ``uid`` (sshd's delegated ``FILE:/tmp/krb5cc_<uid>_XXXXXX``) into
    ``KEYRING:persistent:<uid>``: a new subsidiary cache, made primary (krb5_cc_switch).

    Everything runs as the user (per-thread setresuid), so the service reads only what the
    user may read and the keys are owned by and charged to the user.  The file is opened
    once, with O_NOFOLLOW, and checked on its descriptor (regular, owned by ``uid``, not
    group/other-writable, one link); libkrb5 then reads it through ``/proc/self/fd/N``, the
    same open file, so no rename or symlink between the check and the read changes what is
    read.  Every credential of the file goes into the new cache.  With ``remove`` the file is
    unlinked afterwards, if its name still leads to the same inode.
    Raises CacheNotFound (no file, or no principal in it), TicketError (refused, unreadable),
    QuotaExceeded.
    """
    path = source.removeprefix("FILE:")
    if not path.startswith("/") or source.startswith(("KEYRING:", "MEMORY:", "DIR:", "KCM:", "API:")):
        raise TicketError(f"{source}: only FILE caches with an absolute path can be imported")
    ctx = context or _context(krb5_config)
    collection = collection_name(uid)
    with _as_user(uid, gid):
        fd = _open_users_file(path, uid)
        try:
            st = os.fstat(fd)
            try:
                src = krb5.cc_resolve(ctx, f"FILE:/proc/self/fd/{fd}".encode())
                princ = krb5.cc_get_principal(ctx, src)
                creds = list(src)
            except krb5.Krb5Error as exc:
                raise from_krb5(exc, f"reading {source}") from None
            if not any(not _is_config(c) for c in creds):
                raise errors.CacheNotFound(f"{source}: holds no ticket")
            cc = _write_new_freeing(ctx, collection, princ, creds[0], SERVICE_PREFIX, uid)
            with _discarded_on_failure(ctx, cc, f"copying {source} into {collection}"):
                for more in creds[1:]:
                    krb5.cc_store_cred(ctx, cc, more)
                krb5.cc_switch(ctx, cc)
                info = _tgt_info(ctx, cc, uid, primary=True)
            if remove:
                try:
                    now = os.stat(path, follow_symlinks=False)
                    if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
                        os.unlink(path)
                except OSError:
                    pass  # gone already (sshd's GSSAPICleanupCredentials) or not ours to remove
        finally:
            os.close(fd)
    return info
