"""A fake Kerberos side for the service logic's unit tests (``Service(config, krb=FakeKrb())``).

It keeps caches in a dict instead of the kernel and answers like tickets.ccache /
tickets.principals do, raising their real error classes.  A test sets ``fail[name]`` to the
exception an operation must raise.  The paths through the real krb5 and kernel are tested
against a real KDC in tests/kdc; these tests cover the decisions the service makes around them.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Info:
    """What ccache.TicketInfo carries that the service reads."""

    ccache: str
    uid: int
    principal: str
    starttime: float
    endtime: float
    renew_till: float
    renewable: bool = True
    service: bool = True
    validated: str = ""
    warnings: tuple[str, ...] = ()
    #: The service-made cache of the same principal this one retired (cachestore.install).
    replaced: str = ""


@dataclass
class FakeKrb:
    realm: str = "UNIT.TEST"
    caches: dict[str, Info] = field(default_factory=dict)
    destroyed: list[str] = field(default_factory=list)
    calls: list[tuple[str, Any]] = field(default_factory=list)
    fail: dict[str, BaseException] = field(default_factory=dict)
    kuserok_answer: bool = True
    #: The client name the KDC answers with (canonicalize), when set; else the asked principal.
    kdc_name: str = ""
    #: acquire_password retires the uid's newest service cache of the same principal, as the real
    #: install does with the collection's primary (the cache stays until the service destroys it).
    retire: bool = False
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    def _maybe_fail(self, op: str) -> None:
        exc = self.fail.get(op)
        if exc is not None:
            raise exc

    def _new(self, uid: int, principal: str, service: bool = True, life: float = 600) -> Info:
        now = time.time()
        info = Info(f"KEYRING:persistent:{uid}:krb_ccache_{next(self._ids)}", uid, principal, now, now + life,
                    now + 10 * life, service=service)
        self.caches[info.ccache] = info
        return info

    def default_realm(self) -> str:
        return self.realm

    def acquire_password(self, principal: str, password: str, uid: int, gid: int, **options: Any) -> Info:
        self.calls.append(("acquire_password", (principal, uid, gid, options)))
        meanwhile = options.get("meanwhile")
        if meanwhile is not None:  # as plumbing.bounded: while the exchange is in flight
            meanwhile()
        self._maybe_fail("acquire_password")
        name = self.kdc_name or principal
        earlier = [i.ccache for i in self.caches.values()
                   if i.uid == uid and i.principal == name and i.service]
        info = self._new(uid, name)
        if self.retire and earlier:
            info.replaced = earlier[-1]
        return info

    def acquire_keytab(self, principal: str, keytab: str, uid: int, gid: int, ccache: str | None) -> Info:
        self._maybe_fail("acquire_keytab")
        return self._new(uid, principal)

    def renew(self, ccache: str, uid: int, gid: int, *, timeout: float, grace: float) -> Info:
        self.calls.append(("renew", ccache))
        self._maybe_fail("renew")
        old = self.caches.pop(ccache)
        return self._new(uid, old.principal, old.service)

    def destroy(self, ccache: str, uid: int, gid: int) -> None:
        self.destroyed.append(ccache)
        self.caches.pop(ccache, None)

    def list_caches(self, uid: int) -> list[Info]:
        self.calls.append(("list_caches", uid))
        self._maybe_fail("list_caches")
        return [i for i in self.caches.values() if i.uid == uid]

    def cache_names(self, uid: int) -> set[str]:
        self._maybe_fail("cache_names")
        return {i.ccache for i in self.caches.values() if i.uid == uid}

    def sweep_retired(self, uid: int) -> list[str]:
        return []

    def import_file(self, source: str, uid: int, gid: int) -> Info:
        self._maybe_fail("import_file")
        return self._new(uid, f"delegated@{self.realm}")

    def kuserok(self, principal: str, user: str, uid: int, *, enterprise: bool = False) -> bool:
        self.calls.append(("kuserok", principal))
        self._maybe_fail("kuserok")
        return self.kuserok_answer

    def account_state(self, principal: str, *, timeout: float, enterprise: bool = False) -> None:
        self.calls.append(("account_state", principal))
        self._maybe_fail("account_state")

    def verify_changepw(self, principal: str, password: str, *, timeout: float, enterprise: bool = False,
                        **fast: Any) -> str:
        self.calls.append(("verify_changepw", principal))
        self._maybe_fail("verify_changepw")
        return principal

    def change_password(self, principal: str, old: str, new: str, *, timeout: float, enterprise: bool = False,
                        **fast: Any) -> None:
        self.calls.append(("change_password", principal))
        self._maybe_fail("change_password")
