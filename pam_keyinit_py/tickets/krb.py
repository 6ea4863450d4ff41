"""The service's Kerberos side, as one injectable object: ``Service(config, krb=...)``.

:class:`KrbSide` lists every krb5 (and krb5-through-the-kernel) operation the service logic
makes; :class:`Krb5` performs them with pykrb5 through ``tickets.ccache`` (the ccache API:
krb5_get_init_creds_*, krb5_get_renewed_creds, krb5_cc_* run with the user's uid) and
``tickets.principals`` (krb5_kuserok, the KDC's account view, kpasswd).  Those modules are
imported at the first call, so the daemon starts and answers before libkrb5 is loaded.

Unit tests give the service a fake with the same methods (tests/unit/fakekrb.py); the
real-KDC tests (tests/kdc) use this one.  Errors are ``tickets.errors`` classes either way.
"""

from __future__ import annotations

from typing import Any, Protocol


class KrbSide(Protocol):
    """The Kerberos operations the service logic calls (see :class:`Krb5` for what each does)."""

    def default_realm(self) -> str: ...
    def acquire_password(self, principal: str, password: str, uid: int, gid: int, **options: Any) -> Any: ...
    def acquire_keytab(self, principal: str, keytab: str, uid: int, gid: int, ccache: str | None) -> Any: ...
    def renew(self, ccache: str, uid: int, gid: int, *, timeout: float, grace: float) -> Any: ...
    def destroy(self, ccache: str, uid: int, gid: int) -> None: ...
    def list_caches(self, uid: int) -> list[Any]: ...
    def cache_names(self, uid: int) -> set[str]: ...
    def sweep_retired(self, uid: int) -> list[str]: ...
    def import_file(self, source: str, uid: int, gid: int) -> Any: ...
    def kuserok(self, principal: str, user: str, uid: int, *, enterprise: bool = False) -> bool: ...
    def account_state(self, principal: str, *, timeout: float, enterprise: bool = False) -> None: ...
    def verify_changepw(self, principal: str, password: str, *, timeout: float, enterprise: bool = False,
                        **fast: Any) -> str: ...
    def change_password(self, principal: str, old: str, new: str, *, timeout: float, enterprise: bool = False,
                        **fast: Any) -> None: ...


class Krb5:
    """The real krb side: pykrb5 through ``tickets.ccache`` and ``tickets.principals``."""

    def __init__(self) -> None:
        self._realm = ""

    @staticmethod
    def _ccache() -> Any:
        from . import ccache

        return ccache

    @staticmethod
    def _principals() -> Any:
        from . import principals

        return principals

    def default_realm(self) -> str:
        """krb5_get_default_realm() of the service's context (KRB5_CONFIG honoured), read once."""
        if not self._realm:
            import krb5

            realm = krb5.get_default_realm(krb5.init_context())
            self._realm = realm.decode() if isinstance(realm, bytes) else str(realm)
        return self._realm

    def acquire_password(self, principal: str, password: str, uid: int, gid: int, **options: Any) -> Any:
        """krb5_get_init_creds_password into a new primary cache of KEYRING:persistent:<uid>, as the user."""
        return self._ccache().acquire_password(principal, password, uid, gid, **options)

    def acquire_keytab(self, principal: str, keytab: str, uid: int, gid: int, ccache: str | None) -> Any:
        """krb5_get_init_creds_keytab into ``ccache`` (a [[keytab]] entry), as ``uid``."""
        return self._ccache().acquire_keytab(principal, keytab, uid, gid, ccache=ccache)

    def renew(self, ccache: str, uid: int, gid: int, *, timeout: float, grace: float) -> Any:
        """krb5_get_renewed_creds into a new subsidiary cache, then cc_switch (no empty window).

        The quota guard first (tickets/quota.py, /proc/key-users): when the uid's key quota has
        no room for a second cache generation, it warns and the ticket is renewed in place
        (krb5_cc_store_cred into the same cache) instead.
        """
        from . import quota

        api = self._ccache()
        in_place = quota.no_room(ccache, uid, api.retiring(uid))
        return api.renew(ccache, uid, gid, timeout=timeout, grace=grace, in_place=in_place)

    def destroy(self, ccache: str, uid: int, gid: int) -> None:
        """krb5_cc_destroy, as the user."""
        self._ccache().destroy(ccache, uid, gid)

    def list_caches(self, uid: int) -> list[Any]:
        """krb5_cccol_cursor over KEYRING:persistent:<uid>: one TicketInfo per cache with a TGT."""
        return self._ccache().list_caches(uid)

    def cache_names(self, uid: int) -> set[str]:
        """Names of the caches in KEYRING:persistent:<uid> as the kernel lists them (keyctl reads,
        no libkrb5: tickets/collection.py), less those waiting out their grace period to be
        destroyed, as :meth:`list_caches` leaves them out.  OSError when the collection cannot be read.
        """
        from . import collection

        return collection.cache_names(uid) - self._ccache().retiring(uid)

    def sweep_retired(self, uid: int) -> list[str]:
        """Destroy the uid's caches a renewal retired before a restart (their RETIRED mark)."""
        return self._ccache().sweep_retired(uid)

    def import_file(self, source: str, uid: int, gid: int) -> Any:
        """Copy a delegated FILE cache of the uid into its persistent collection, as the user."""
        return self._ccache().import_file(source, uid, gid)

    def kuserok(self, principal: str, user: str, uid: int, *, enterprise: bool = False) -> bool:
        """krb5_kuserok(principal, user), else as the uid's own name: ~/.k5login and auth_to_local.

        ``enterprise`` (here and below): ``principal`` is a UPN, parsed as an enterprise name
        (tickets/names.py).
        """
        return bool(self._principals().kuserok_account(principal, user, uid, enterprise=enterprise))

    def account_state(self, principal: str, *, timeout: float, enterprise: bool = False) -> None:
        """The KDC's view of the principal (locked, expired, password expired), sending no password."""
        self._principals().account_state(principal, timeout=timeout, enterprise=enterprise)

    def verify_changepw(self, principal: str, password: str, *, timeout: float, enterprise: bool = False,
                        **fast: Any) -> str:
        """An initial ticket for kadmin/changepw: proves a password, even an expired one; returns
        the ticket's client (the KDC's name for a UPN)."""
        return str(self._principals().verify_changepw(principal, password, timeout=timeout,
                                                      enterprise=enterprise, **fast))

    def change_password(self, principal: str, old: str, new: str, *, timeout: float, enterprise: bool = False,
                        **fast: Any) -> None:
        """krb5_set_password through kpasswd with a kadmin/changepw ticket."""
        self._principals().change_password(principal, old, new, timeout=timeout, enterprise=enterprise,
                                           **fast)
