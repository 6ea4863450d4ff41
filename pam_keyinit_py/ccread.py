"""The one reader of a Kerberos credential cache (pykrb5): its client principal and credentials.

Used by ``pykeyctl show --krb5`` (``keyctl/krb5view.py``, which imports this module only when
``--krb5`` is asked for, so plain pykeyctl never loads libkrb5) and by the ticket service
(``tickets/cachestore.py``).  It reads; it never writes, switches or destroys.

A cache is read with krb5_cc_get_principal and the krb5_cc_start_seq_get / krb5_cc_next_cred
cursor (iterating a pykrb5 ``CCache``).  MIT keeps cache configuration (krb5_cc_set_config) as
pseudo-credentials whose server is ``krb5_ccache_conf_data/<key>[/<principal>]@X-CACHECONF:``;
they are reported as config keys, not as credentials.
"""

from __future__ import annotations

from dataclasses import dataclass

import krb5

from .ccname import join

#: The realm of MIT's cache config pseudo-credentials.
CONFIG_REALM = b"X-CACHECONF:"


@dataclass(frozen=True)
class Cred:
    """One credential of a cache (times in seconds since the epoch, as the KDC issued them)."""

    server: bytes  #: the server principal, unparsed (krb5_unparse_name)
    tgt: bool  #: a ticket-granting ticket (first component ``krbtgt``)
    starttime: int  #: its start time, or its auth time when it carries none
    endtime: int
    renew_till: int  #: as stored, whatever the flags say
    renewable: bool  #: TKT_FLG_RENEWABLE


@dataclass(frozen=True)
class Contents:
    """What a cache holds: its full name, default principal, credentials and config keys."""

    name: str
    principal: bytes  #: krb5_cc_get_principal, unparsed
    creds: tuple[Cred, ...]
    config: frozenset[bytes]  #: the keys of its config entries (krb5_cc_set_config)

    def tgt(self) -> Cred | None:
        """The cache's TGT: its first krbtgt credential, else its first credential, else None.

        All credentials are looked at: a KEYRING cache's order is not the order of writing.
        """
        return next((c for c in self.creds if c.tgt), self.creds[0] if self.creds else None)


class NoPrincipal(Exception):
    """krb5_cc_get_principal failed (no such cache, or an empty one); ``error`` is pykrb5's."""

    def __init__(self, error: krb5.Krb5Error) -> None:
        super().__init__(str(error))
        self.error = error


def full_name(cc: krb5.CCache) -> str:
    """``TYPE:residual`` of an open cache (krb5_cc_get_type, krb5_cc_get_name)."""
    return join(cc.cache_type, cc.name)


def is_config(creds: krb5.Creds) -> bool:
    """True for a cache config pseudo-credential (realm ``X-CACHECONF:``)."""
    return creds.server.realm == CONFIG_REALM


def read(ctx: krb5.Context, cc: krb5.CCache) -> Contents:
    """Read an open cache: krb5_cc_get_principal, then every credential through the cursor.

    Raises NoPrincipal when the cache has no principal; a krb5.Krb5Error while iterating goes
    on as it is.
    """
    try:
        principal = krb5.cc_get_principal(ctx, cc)
    except krb5.Krb5Error as exc:
        raise NoPrincipal(exc) from None
    creds: list[Cred] = []
    config: set[bytes] = set()
    for item in cc:
        server = item.server
        if server.realm == CONFIG_REALM:
            comps = server.components
            if len(comps) >= 2:
                config.add(comps[1])
            continue
        creds.append(cred(item))
    return Contents(full_name(cc), principal.name or b"", tuple(creds), frozenset(config))


def cred(item: krb5.Creds) -> Cred:
    """One credential as :class:`Cred` (a cache's, or one in hand before it is stored)."""
    server = item.server
    comps = server.components
    t = item.times
    return Cred(server.name or b"", bool(comps) and comps[0] == b"krbtgt", t.starttime or t.authtime,
                t.endtime, t.renew_till, bool(item.ticket_flags & krb5.TicketFlags.renewable))


def read_name(name: str, ctx: krb5.Context | None = None) -> Contents:
    """krb5_cc_resolve ``name`` (in ``ctx``, default a fresh krb5_init_context) and :func:`read` it."""
    ctx = ctx or krb5.init_context()
    return read(ctx, krb5.cc_resolve(ctx, name.encode()))
