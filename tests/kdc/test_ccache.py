"""tickets.ccache against the real KDC and the real kernel keyrings (run as root)."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from pam_keyinit_py import keyutils
from pam_keyinit_py.keyutils import proc
from pam_keyinit_py.lab.realm import Realm
from pam_keyinit_py.tickets import ccache, errors, plumbing
from tests.conftest import delete_user, make_user, require_root
from tests.fixtures_krb5 import KdcUser, add_user_principal, clear_persistent_caches


@pytest.fixture(autouse=True)
def _flush_deferred():
    yield
    ccache.flush_deferred()


def conf(realm: Realm) -> str:
    return str(realm.krb5_conf)


def persistent_tree(uid: int) -> list[tuple[int, str, int, int, str]]:
    """(depth, type, uid, gid, description) of every key under _persistent.<uid> (read as root)."""
    ring = keyutils.get_persistent(uid, keyutils.KEY_SPEC_THREAD_KEYRING)
    out: list[tuple[int, str, int, int, str]] = []

    def walk(key: int, depth: int) -> None:
        ktype, kuid, kgid, _perm, desc = keyutils.describe(key).decode().split(";", 4)
        out.append((depth, ktype, int(kuid), int(kgid), desc))
        if ktype == "keyring":
            for (child,) in struct.iter_unpack("i", keyutils.read(key)):
                walk(child, depth + 1)

    walk(ring, 0)
    return out


def caches_in_collection(uid: int) -> list[str]:
    return [d for depth, t, _u, _g, d in persistent_tree(uid) if depth == 2 and t == "keyring"]


def klist_s(ku: KdcUser, realm: Realm) -> int:
    return ku.user.run(["klist", "-s"], env=realm.env).returncode


def acquire(ku: KdcUser, realm: Realm, **kw: object) -> ccache.TicketInfo:
    return ccache.acquire_password(ku.principal, ku.password, ku.uid, ku.gid, krb5_config=conf(realm),
                                   **kw)  # type: ignore[arg-type]


def user_kinit(ku: KdcUser, realm: Realm) -> None:
    """The user's own kinit into a new cache of their persistent collection (kinit -c KEYRING:…)."""
    r = ku.user.run(["kinit", "-r", "5m", ku.principal],
                    env={**realm.env, "KRB5CCNAME": f"KEYRING:persistent:{ku.uid}:krb_ccache_mine"},
                    input=ku.password + "\n")
    assert r.returncode == 0, r.stderr


# ------------------------------------------------------------------ acquire

def test_acquire_stores_user_owned_primary_ticket(realm: Realm, kdc_user: KdcUser) -> None:
    info = acquire(kdc_user, realm, lifetime=45, renew_lifetime=300)
    assert info.ccache.startswith(f"KEYRING:persistent:{kdc_user.uid}:{ccache.SERVICE_PREFIX}")
    assert info.principal == kdc_user.principal
    assert info.server == f"krbtgt/{realm.realm}@{realm.realm}"
    assert info.renewable and info.primary and info.service and ccache.is_service_cache(info.ccache)
    assert 0 < info.endtime - info.starttime <= 45
    assert info.endtime < info.renew_till <= info.starttime + 300
    tree = persistent_tree(kdc_user.uid)
    below = [k for k in tree if k[0] >= 1]
    assert {"_krb", "krb_ccache:primary", "__krb5_princ__", info.server} <= {k[4] for k in below}
    # The ccache keys are owned by and charged to the user, never root.
    assert all(k[2] == kdc_user.uid for k in below), below
    assert all(k[3] == kdc_user.gid for k in below if k[4] != "_krb"), below
    # The user's own klist finds it through default_ccache_name = KEYRING:persistent:%{uid}.
    assert klist_s(kdc_user, realm) == 0
    r = kdc_user.user.run(["klist", "-l"], env=realm.env)
    assert info.ccache in r.stdout


def test_the_info_of_a_new_cache_is_what_the_cache_holds(realm: Realm, kdc_user: KdcUser) -> None:
    """install() describes the cache it wrote from the credentials in hand (no read-back): every
    field is what reading the cache through krb5_cc_get_principal and the cursor gives."""
    import dataclasses

    for kw in ({"lifetime": 45, "renew_lifetime": 300}, {"renewable": False}):
        info = acquire(kdc_user, realm, **kw)
        read = ccache.info(info.ccache, kdc_user.uid, kdc_user.gid, krb5_config=conf(realm))
        assert dataclasses.replace(info, validated="", warnings=(), replaced="") == read
    renewed = ccache.renew(acquire(kdc_user, realm, lifetime=45).ccache, kdc_user.uid, kdc_user.gid,
                           krb5_config=conf(realm))
    read = ccache.info(renewed.ccache, kdc_user.uid, kdc_user.gid, krb5_config=conf(realm))
    assert dataclasses.replace(renewed, replaced="") == read


def test_reacquire_retires_own_cache_but_keeps_users_kinit(realm: Realm, kdc_user: KdcUser) -> None:
    user_kinit(kdc_user, realm)
    first = acquire(kdc_user, realm)
    second = acquire(kdc_user, realm)
    assert second.ccache != first.ccache and second.primary
    ccache.flush_deferred()
    names = {i.ccache: i for i in ccache.list_caches(kdc_user.uid, kdc_user.gid, krb5_config=conf(realm))}
    mine = f"KEYRING:persistent:{kdc_user.uid}:krb_ccache_mine"
    assert set(names) == {second.ccache, mine}
    assert names[second.ccache].service and names[second.ccache].primary
    assert not names[mine].service and not names[mine].primary
    assert names[mine].principal == kdc_user.principal and names[mine].endtime > time.time()


def test_the_kernels_list_of_the_collection_names_what_libkrb5_lists(realm: Realm, kdc_user: KdcUser) -> None:
    """collection.cache_names (keyctl reads) against ccache.list_caches (krb5_cccol_cursor): the
    adoption scan trusts the first to skip the second."""
    from pam_keyinit_py.tickets import collection
    from pam_keyinit_py.tickets.krb import Krb5

    assert collection.cache_names(kdc_user.uid) == set()  # no _krb keyring yet
    user_kinit(kdc_user, realm)
    first = acquire(kdc_user, realm)
    # Retires the first, destroyed after its grace period: a long one, so the reaper cannot take
    # it before the asserts below (flush_deferred does, at the end).
    second = acquire(kdc_user, realm, grace=120)
    mine = f"KEYRING:persistent:{kdc_user.uid}:krb_ccache_mine"
    listed = {i.ccache for i in ccache.list_caches(kdc_user.uid, kdc_user.gid, krb5_config=conf(realm))}
    assert listed == {second.ccache, mine}
    assert collection.cache_names(kdc_user.uid) == {first.ccache, second.ccache, mine}
    assert Krb5().cache_names(kdc_user.uid) == listed  # the retiring one left out, as list_caches does
    ccache.flush_deferred()
    assert collection.cache_names(kdc_user.uid) == listed


def test_a_collection_root_may_not_describe_is_unknown_not_empty(realm: Realm, kdc_user: KdcUser) -> None:
    """A user may take the possessor's rights off their own cache keyring: root's kernel read then
    fails (EACCES) instead of leaving the cache out, so the adoption scan lists with libkrb5, as
    the user, who still sees it."""
    from pam_keyinit_py.tickets import collection

    user_kinit(kdc_user, realm)
    with collection.cache_keyrings(kdc_user.uid) as caches:
        [(_desc, serial)] = caches
    # As the user, possessing the collection (persistent keyring linked into a new session keyring):
    # user all, possessor none.
    r = kdc_user.user.run(["keyctl", "session", "-", "sh", "-c",
                           f"keyctl get_persistent @s >/dev/null && keyctl setperm {serial} 0x003f0000"])
    assert r.returncode == 0, r.stderr
    with pytest.raises(PermissionError):
        collection.cache_names(kdc_user.uid)
    listed = ccache.list_caches(kdc_user.uid, kdc_user.gid, krb5_config=conf(realm))
    assert [i.ccache for i in listed] == [f"KEYRING:persistent:{kdc_user.uid}:krb_ccache_mine"]


def test_bad_password_unknown_principal_and_no_secret_in_text(realm: Realm, kdc_user: KdcUser) -> None:
    wrong = "Wr0ng-" + kdc_user.password
    with pytest.raises(errors.BadPassword) as exc:
        ccache.acquire_password(kdc_user.principal, wrong, kdc_user.uid, kdc_user.gid,
                                krb5_config=conf(realm))
    assert wrong not in str(exc.value) and kdc_user.password not in str(exc.value)
    assert kdc_user.principal in str(exc.value)
    with pytest.raises(errors.UnknownPrincipal):
        ccache.acquire_password(f"pkknobody@{realm.realm}", wrong, kdc_user.uid, kdc_user.gid,
                                krb5_config=conf(realm))
    assert caches_in_collection(kdc_user.uid) == []


def test_kdc_down_fails_fast_then_back(realm: Realm, kdc_user: KdcUser) -> None:
    info = acquire(kdc_user, realm)
    realm.stop_kdc()
    try:
        t0 = time.monotonic()
        with pytest.raises(errors.KdcUnreachable):
            acquire(kdc_user, realm)
        with pytest.raises(errors.KdcUnreachable):
            ccache.renew(info.ccache, kdc_user.uid, kdc_user.gid, krb5_config=conf(realm))
        assert time.monotonic() - t0 < 2.0
        assert klist_s(kdc_user, realm) == 0  # the old ticket is untouched
    finally:
        realm.start_kdc()
    renewed = ccache.renew(info.ccache, kdc_user.uid, kdc_user.gid, krb5_config=conf(realm))
    assert renewed.principal == kdc_user.principal


def test_silent_kdc_is_bounded_by_timeout(realm: Realm, kdc_user: KdcUser, tmp_path: Path) -> None:
    """A KDC that accepts TCP but never answers: MIT 1.20 would wait; timeout= bounds the wait."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    port = silent.getsockname()[1]
    text = realm.krb5_conf.read_text().replace(f"127.0.0.1:{realm.kdc_port}", f"127.0.0.1:{port}")
    cfg = tmp_path / "krb5.conf"
    cfg.write_text(text)
    try:
        t0 = time.monotonic()
        with pytest.raises(errors.KdcUnreachable) as exc:
            ccache.acquire_password(kdc_user.principal, kdc_user.password, kdc_user.uid, kdc_user.gid,
                                    krb5_config=str(cfg), timeout=1.0)
        assert 0.9 < time.monotonic() - t0 < 2.0
        assert kdc_user.password not in str(exc.value)
    finally:
        silent.close()


def test_acquire_keytab_like_k5start(realm: Realm, kdc_user: KdcUser, tmp_path: Path) -> None:
    svc = realm.add_principal(f"host/{kdc_user.name}.pkk.test")
    kt = realm.keytab(svc, tmp_path / "svc.keytab")
    os.chmod(kt, 0o600)  # readable by root only: the exchange runs as the caller
    info = ccache.acquire_keytab(svc, str(kt), kdc_user.uid, kdc_user.gid, krb5_config=conf(realm))
    assert info.principal == svc and info.primary and info.ccache.startswith(
        f"KEYRING:persistent:{kdc_user.uid}:")
    again = ccache.acquire_keytab(svc, str(kt), kdc_user.uid, kdc_user.gid, info.ccache,
                                  krb5_config=conf(realm))
    assert again.ccache != info.ccache and again.primary
    ccache.flush_deferred()
    assert [i.ccache for i in ccache.list_caches(kdc_user.uid, krb5_config=conf(realm))] == [again.ccache]
    # A FILE target is written beside and renamed over, owned by the user.
    userdir = Path(tempfile.mkdtemp(prefix="pkk-cc-"))  # pytest's tmp_path is closed to users
    os.chown(userdir, kdc_user.uid, kdc_user.gid)
    fcc = userdir / "svc.ccache"
    finfo = ccache.acquire_keytab(svc, str(kt), kdc_user.uid, kdc_user.gid, f"FILE:{fcc}",
                                  krb5_config=conf(realm))
    try:
        assert finfo.ccache == f"FILE:{fcc}" and fcc.stat().st_uid == kdc_user.uid
        assert [p.name for p in userdir.iterdir()] == ["svc.ccache"]
    finally:
        shutil.rmtree(userdir)


# ------------------------------------------------------------------ renew

def test_renew_replaces_cache_and_extends_endtime(realm: Realm, kdc_user: KdcUser) -> None:
    info = acquire(kdc_user, realm, lifetime=30)
    time.sleep(1.1)
    new = ccache.renew(info.ccache, kdc_user.uid, kdc_user.gid, krb5_config=conf(realm))
    assert new.ccache != info.ccache and new.primary and new.service
    assert new.endtime > info.endtime and new.renew_till == info.renew_till
    assert klist_s(kdc_user, realm) == 0
    # The old cache waits out its grace period, then is gone; the keys are still the user's.
    ccache.flush_deferred()
    assert caches_in_collection(kdc_user.uid) == [new.ccache.rsplit(":", 1)[1]]
    assert all(k[2] == kdc_user.uid for k in persistent_tree(kdc_user.uid)[1:])


def test_renew_adopted_user_cache_stays_users(realm: Realm, kdc_user: KdcUser) -> None:
    user_kinit(kdc_user, realm)
    mine = f"KEYRING:persistent:{kdc_user.uid}:krb_ccache_mine"
    new = ccache.renew(mine, kdc_user.uid, kdc_user.gid, krb5_config=conf(realm))
    assert new.ccache.split(":")[3].startswith(ccache.ADOPTED_PREFIX)
    assert not new.service and not ccache.is_service_cache(new.ccache)


def test_renew_not_renewable_and_missing_cache(realm: Realm, kdc_user: KdcUser) -> None:
    info = acquire(kdc_user, realm, renewable=False)
    assert not info.renewable and info.renew_till == 0
    with pytest.raises(errors.NotRenewable):
        ccache.renew(info.ccache, kdc_user.uid, kdc_user.gid, krb5_config=conf(realm))
    ccache.destroy(info.ccache, kdc_user.uid, kdc_user.gid, krb5_config=conf(realm))
    assert caches_in_collection(kdc_user.uid) == []
    with pytest.raises(errors.CacheNotFound):
        ccache.renew(info.ccache, kdc_user.uid, kdc_user.gid, krb5_config=conf(realm))
    with pytest.raises(errors.CacheNotFound):
        ccache.destroy(info.ccache, kdc_user.uid, kdc_user.gid, krb5_config=conf(realm))


def _during_renewal_exchange(monkeypatch: pytest.MonkeyPatch, action) -> None:
    """Make ``action`` run (as root, on its own thread) while renew's KDC exchange is in flight.

    The exchange runs as the user, and a thread inherits its creator's per-thread credentials:
    the action's thread is started here, beforehand, and woken from inside the exchange.
    """
    real, go, done = ccache.renewed_creds, threading.Event(), threading.Event()
    failed: list[BaseException] = []

    def worker() -> None:
        go.wait(30)
        try:
            action()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            failed.append(exc)
        finally:
            done.set()

    def exchange_then_action(*args: object) -> object:
        creds = real(*args)  # the KDC has answered; the new cache is not written yet
        go.set()
        assert done.wait(30)
        if failed:
            raise failed[0]
        return creds

    threading.Thread(target=worker, daemon=True).start()
    monkeypatch.setattr(ccache, "renewed_creds", exchange_then_action)


def _primary(ku: KdcUser, realm: Realm) -> str:
    ctx = plumbing.context(conf(realm))
    with plumbing.as_user(ku.uid, ku.gid):
        return ccache.primary_name(ctx, ccache.collection_name(ku.uid))


def test_a_renewal_leaves_primary_to_a_login_made_during_its_exchange(realm, kdc_user, monkeypatch):
    """A new login's ticket becomes primary while the old one's renewal waits for the KDC: the
    renewal must not take the primary back for the ticket that login replaced."""
    old = acquire(kdc_user, realm, lifetime=45)
    login: list[ccache.TicketInfo] = []
    _during_renewal_exchange(monkeypatch, lambda: login.append(acquire(kdc_user, realm)))
    renewed = ccache.renew(old.ccache, kdc_user.uid, kdc_user.gid, krb5_config=conf(realm))
    assert login and login[0].replaced == old.ccache
    assert _primary(kdc_user, realm) == login[0].ccache != renewed.ccache
    assert not renewed.primary


def test_a_renewal_keeps_primary_on_its_cache_when_the_user_switched_to_it_meanwhile(
        realm, kdc_user, monkeypatch):
    """The user kswitches to a cache while its renewal waits for the KDC: the renewed cache must
    become primary, or the primary names the old one, destroyed after the grace (klist fails)."""
    old = acquire(kdc_user, realm, lifetime=45)
    user_kinit(kdc_user, realm)
    mine = f"KEYRING:persistent:{kdc_user.uid}:krb_ccache_mine"
    r = kdc_user.user.run(["kswitch", "-c", mine], env=realm.env)
    assert r.returncode == 0 and _primary(kdc_user, realm) == mine, r.stderr

    def switch_back() -> None:
        r = kdc_user.user.run(["kswitch", "-c", old.ccache], env=realm.env)
        assert r.returncode == 0, r.stderr

    _during_renewal_exchange(monkeypatch, switch_back)
    renewed = ccache.renew(old.ccache, kdc_user.uid, kdc_user.gid, krb5_config=conf(realm))
    ccache.flush_deferred()  # the grace is over: the old cache is destroyed
    assert _primary(kdc_user, realm) == renewed.ccache and renewed.primary
    assert klist_s(kdc_user, realm) == 0


def _reader(ku: KdcUser, realm: Realm) -> subprocess.Popen[str]:
    """`klist -s` as the user in a tight loop until SIGTERM; then prints "ok fail"."""
    script = ('ok=0; fail=0; trap \'echo "$ok $fail"; exit 0\' TERM; '
              'while :; do if klist -s; then ok=$((ok+1)); else fail=$((fail+1)); fi; done')
    uid, gid = ku.uid, ku.gid

    def drop() -> None:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)

    return subprocess.Popen(["bash", "-c", script], preexec_fn=drop, text=True,
                            stdout=subprocess.PIPE, env={"PATH": "/usr/bin:/bin", **realm.env})


def _run_reader_while(ku: KdcUser, realm: Realm, work) -> tuple[int, int]:
    reader = _reader(ku, realm)
    try:
        time.sleep(0.3)
        work()
        time.sleep(0.3)
    finally:
        reader.terminate()
        out, _ = reader.communicate(timeout=30)
    ok, fail = map(int, out.split())
    return ok, fail


def test_no_empty_cache_window_during_renewals(realm: Realm, kdc_user: KdcUser) -> None:
    info = acquire(kdc_user, realm)
    names = [info.ccache]

    def renewals() -> None:
        for _ in range(8):
            names.append(ccache.renew(names[-1], kdc_user.uid, kdc_user.gid, krb5_config=conf(realm),
                                      grace=0.5).ccache)
            time.sleep(0.4)  # old caches are destroyed by the reaper while the reader runs

    ok, fail = _run_reader_while(kdc_user, realm, renewals)
    assert len(set(names)) == 9
    assert ok > 50 and fail == 0, (ok, fail)


def test_reader_detects_cc_initialize_window(realm: Realm, kdc_user: KdcUser) -> None:
    """Control: MIT/SSSD/krenew's in-place cc_initialize + store is seen by the same reader."""
    import krb5

    info = acquire(kdc_user, realm)
    ctx = plumbing.context(conf(realm))

    def in_place() -> None:
        with keyutils.thread_credentials(kdc_user.uid, kdc_user.gid, effective=True):
            cc = krb5.cc_resolve(ctx, info.ccache.encode())
            princ = krb5.cc_get_principal(ctx, cc)
            creds = [c for c in cc if c.server.components[0] == b"krbtgt"][0]
            end = time.monotonic() + 3.0
            while time.monotonic() < end:
                krb5.cc_initialize(ctx, cc, princ)
                time.sleep(0.001)  # stands for the store that follows the KDC round trip
                krb5.cc_store_cred(ctx, cc, creds)
                # Cleared keys return their quota only when the kernel's GC runs: pace the loop.
                time.sleep(0.01)

    ok, fail = _run_reader_while(kdc_user, realm, in_place)
    assert fail > 0, (ok, fail)


# ------------------------------------------------------------------ quota

def test_quota_exceeded_leaves_no_half_written_cache(realm: Realm, kdc_user: KdcUser) -> None:
    """Fill the user's key quota (as the user) so the ticket key does not fit: EDQUOT, no cache."""
    uid, gid = kdc_user.uid, kdc_user.gid
    with keyutils.thread_credentials(uid, gid, effective=True):
        ring = keyutils.get_persistent(uid, keyutils.KEY_SPEC_THREAD_KEYRING)
        filler = keyutils.add_key("keyring", "pkkfill", None, ring)
        gap = keyutils.add_key("user", "pkkgap", b"g" * 400, filler)
        for size in (2000, 200, 20, 1):
            n = 0
            while True:
                try:
                    keyutils.add_key("user", f"f{size}-{n}", b"x" * size, filler)
                except keyutils.QuotaExceededError:
                    break
                n += 1
        keyutils.unlink(gap, filler)  # room for the cache keyring and principal, not the ticket
    for _ in range(100):  # the garbage collector returns the gap's bytes asynchronously
        ku = proc.key_user(uid)
        if ku and ku.maxbytes - ku.qnbytes >= 400:
            break
        time.sleep(0.02)
    try:
        with pytest.raises(errors.QuotaExceeded) as exc:
            acquire(kdc_user, realm)
        assert "EDQUOT" in str(exc.value)
        assert [c for c in caches_in_collection(uid) if c != "pkkfill"] == []
        assert ccache.list_caches(uid, gid, krb5_config=conf(realm)) == []
    finally:
        keyutils.unlink(filler, ring)
    for _ in range(100):
        ku = proc.key_user(uid)
        if ku and ku.qnbytes < 2000:
            break
        time.sleep(0.02)
    assert acquire(kdc_user, realm).primary  # with the quota back, it works


# ------------------------------------------------------------------ threads

def test_concurrent_users_on_threads(realm: Realm) -> None:
    """Per-thread credentials: two users served at once from two threads, each gets own keys."""
    require_root()
    users = [make_user("pkk") for _ in range(2)]
    try:
        kus = [add_user_principal(realm, u) for u in users]
        results: dict[int, ccache.TicketInfo] = {}

        def work(ku: KdcUser) -> None:
            for _ in range(5):
                results[ku.uid] = ccache.renew(acquire(ku, realm).ccache, ku.uid, ku.gid,
                                               krb5_config=conf(realm), grace=0)

        threads = [threading.Thread(target=work, args=(ku,)) for ku in kus]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert os.getresuid() == (0, 0, 0)
        ccache.flush_deferred()
        for ku in kus:
            assert results[ku.uid].principal == ku.principal
            assert all(k[2] == ku.uid for k in persistent_tree(ku.uid)[1:])
            assert len(caches_in_collection(ku.uid)) == 1
    finally:
        for u in users:
            clear_persistent_caches(u.uid)
            delete_user(u)


def test_password_is_a_zeroed_bytearray_once_the_tgt_exists(realm, kdc_user, monkeypatch):
    """libkrb5 gets the password from a NUL-terminated bytearray, zeroed when the TGT exists
    (krb5_get_init_creds_password runs in the C helper, tickets/preauth.answered)."""
    from pam_keyinit_py.tickets import preauth

    real = preauth.answered
    seen: list[object] = []

    def spy(principal, password, *args, **kw):  # noqa: ANN001, ANN002, ANN003
        seen.append(password)
        assert bytes(password) == kdc_user.password.encode() + b"\0"  # what libkrb5 reads
        return real(principal, password, *args, **kw)

    monkeypatch.setattr(preauth, "answered", spy)
    info = ccache.acquire_password(kdc_user.principal, kdc_user.password, kdc_user.uid, kdc_user.gid,
                                   krb5_config=conf(realm))
    assert info.principal == kdc_user.principal
    assert len(seen) == 1 and isinstance(seen[0], bytearray)
    assert seen[0] == bytearray(len(kdc_user.password) + 1)  # all zeros, same length


def test_secret_buffer_utf8_without_a_full_copy_and_wipe():
    buf = ccache.secret_buffer("pä$s€")
    assert buf == bytearray("pä$s€".encode() + b"\0")
    ccache.wipe(buf)
    assert buf == bytearray(len("pä$s€".encode()) + 1)
    assert ccache.secret_buffer(b"raw") == bytearray(b"raw\0")
