"""The one mapping of a local account to its Kerberos principal, and how such a name is parsed.

Every op that names no principal (``auth``, ``account``, ``chpass``) asks :func:`principal_of`,
so a publickey login's account check and a user's own ``passwd`` are about the same principal
as a password login: ``principal_name`` (ticketd.toml, checked by ``config.load``) with
``{user}`` replaced, the default realm appended when it has no ``@``.

A UPN (``alice@example.com``, :func:`is_enterprise_name`) is no principal of realm
``example.com``: with ``canonicalize`` it is parsed with KRB5_PRINCIPAL_PARSE_ENTERPRISE and
the KDC (AD) resolves it to the account (:func:`parse_as_enterprise`), for the login's TGT, the
account probe, the kadmin/changepw ticket and krb5_kuserok alike.  No krb5 import here: the
daemon decides names before libkrb5 is loaded.
"""

from __future__ import annotations

from collections.abc import Callable

USER_FIELD = "{user}"


def principal_of(template: str, user: str, default_realm: Callable[[], str]) -> str:
    """``template`` (principal_name) for local ``user``; ``default_realm()`` appended without ``@``.

    ``default_realm`` is called only when needed (krb5_get_default_realm loads libkrb5).
    """
    name = template.replace(USER_FIELD, user)
    return name if "@" in name else f"{name}@{default_realm()}"


def is_enterprise_name(name: str) -> bool:
    """True for a UPN-style name (``alice@example.com``): its realm part has a lower-case letter.

    Realm names are upper case (AD's is its DNS domain upper-cased), a UPN suffix is a DNS
    name as the user types it; ``alice@EXAMPLE.COM`` stays an ordinary principal.
    """
    _user, at, domain = name.rpartition("@")
    return bool(at) and domain != domain.upper()


def parse_as_enterprise(name: str, canonicalize: bool) -> bool:
    """Whether ``name`` is parsed with KRB5_PRINCIPAL_PARSE_ENTERPRISE (and the request asks the
    KDC to canonicalize): a UPN, when the service canonicalizes names (``canonicalize = true``)."""
    return canonicalize and is_enterprise_name(name)
