"""Kerberos credential-cache names as this project uses them: pure strings, stdlib only.

The one place that knows how a ccache name is built and taken apart, so that the hook, pykeyctl
and the ticket service agree.  It imports nothing of the package and no krb5, so every layer may
import it (the PAM hook through ``protocol``, ``keyctl/`` beside layer 0, ``tickets/``).

MIT's KEYRING ccache type (krb5 ``src/lib/krb5/ccache/cc_keyring.c``):

- ``KEYRING:persistent:<uid>`` names the user's collection: the keyring that
  keyctl_get_persistent(uid) returns, ``_persistent.<uid>``, holds ``_krb``, whose member
  keyrings are the caches; ``krb_ccache:primary`` in ``_krb`` names the primary one.
- ``KEYRING:persistent:<uid>:<subsidiary>`` names one cache of that collection.
- ``KEYRING:session:<coll>[:<subsidiary>]`` and ``KEYRING:user:<coll>[:…]`` live in a keyring
  ``_krb_<coll>`` linked into the session or user keyring.

sshd's delegated GSSAPI credentials arrive as ``FILE:/tmp/krb5cc_<uid>_XXXXXXXXXX``.
"""

import posix  # not os: os costs ~0.7 ms of every `keyinit status` (protocol imports this)

#: Subsidiary-name prefix of caches the ticket service creates ("KEYRING:persistent:1000:keyinit_3f2a…").
SERVICE_PREFIX = "keyinit_"
#: Prefix of the replacement of a cache the user made with their own kinit, renewed by the service.
ADOPTED_PREFIX = "keyinit-adopted_"
#: Delegated caches the hook hands to ``open``: ``FILE:/tmp/krb5cc_<uid>_<suffix>``, the per-login name
#: sshd (ssh_krb5_cc_gen) and pam_krb5 give the caches they write and remove themselves.  Other
#: FILE caches in KRB5CCNAME (one a user set through pam_env) are the user's and are left alone.
DELEGATED_CCACHE_PREFIX = "FILE:/tmp/krb5cc_"

_PERSISTENT = b"_persistent."
_USER_RING = b"_uid."


def collection_name(uid: int) -> str:
    """The user's persistent collection: ``KEYRING:persistent:<uid>``."""
    return f"KEYRING:persistent:{int(uid)}"


def subsidiary(name: str) -> str:
    """``keyinit_ab12`` of ``KEYRING:persistent:1000:keyinit_ab12`` ('' for a collection name)."""
    parts = name.split(":")
    return parts[3] if len(parts) >= 4 and parts[0] == "KEYRING" else ""


def collection_of(name: str) -> str:
    """The collection a KEYRING cache belongs to (``KEYRING:persistent:1000`` of its subsidiaries);
    any other name is returned as it is."""
    parts = name.split(":")
    if parts[0] == "KEYRING" and len(parts) >= 3:
        return ":".join(parts[:3])
    return name


def uid_of(name: str) -> int | None:
    """The uid in a ``KEYRING:persistent:<uid>[:...]`` name, else None.

    Only what libkrb5 reads as a uid (cc_keyring.c: strtol) counts: ASCII digits (str.isdigit
    also takes other scripts' digits) of a value a uid_t can hold, (uid_t)-1 excepted.
    """
    parts = name.split(":")
    if len(parts) >= 3 and parts[0] == "KEYRING" and parts[1] == "persistent":
        digits = parts[2]
        # int() refuses over 4,300 digits (ValueError): leading zeros aside, a uid has at most 10.
        significant = digits.lstrip("0") or "0"
        if digits.isascii() and digits.isdigit() and len(significant) <= 10:
            uid = int(significant)
            return uid if uid < 2**32 - 1 else None
    return None


def new_subsidiary(collection: str, prefix: str) -> str:
    """A fresh cache name in ``collection``: ``<collection>:<prefix><10 random hex digits>``."""
    return f"{collection}:{prefix}{posix.urandom(5).hex()}"


def is_service_cache(name: str) -> bool:
    """True when the ticket service created the cache (its subsidiary name carries SERVICE_PREFIX)."""
    return subsidiary(name).startswith(SERVICE_PREFIX)


def is_delegated_ccache(name: str, uid: int) -> bool:
    """True when ``name`` has the form of a per-login FILE cache of ``uid`` (see DELEGATED_CCACHE_PREFIX)."""
    head = f"{DELEGATED_CCACHE_PREFIX}{uid}_"
    rest = name[len(head):]
    return name.startswith(head) and bool(rest) and "/" not in rest


def join(cache_type: bytes | None, residual: bytes | None) -> str:
    """``TYPE:residual`` from krb5_cc_get_type and krb5_cc_get_name (no type: FILE, libkrb5's default)."""
    return f"{(cache_type or b'FILE').decode()}:{(residual or b'').decode()}"


def _number_after(prefix: bytes, desc: bytes) -> bytes | None:
    rest = desc[len(prefix):] if desc.startswith(prefix) else b""
    return rest if rest.isdigit() else None


def from_keyring(desc: bytes, parents: list[bytes]) -> str | None:
    """The KEYRING: ccache name of a keyring described ``desc`` under ``parents`` (nearest last).

    ``_persistent.<uid>`` → ``_krb`` → ``<name>`` is ``KEYRING:persistent:<uid>:<name>``;
    ``_krb_<coll>`` → ``<name>`` in the user keyring (``_uid.<uid>``) or elsewhere (the session)
    is ``KEYRING:user|session:<coll>:<name>``.  None for any other keyring.
    """
    if not parents:
        return None
    parent = parents[-1]
    grand = parents[-2] if len(parents) > 1 else b""
    name = desc.decode("utf-8", "surrogateescape")
    if parent == b"_krb":
        uid = _number_after(_PERSISTENT, grand)
        if uid is not None:
            return f"KEYRING:persistent:{int(uid)}:{name}"
        return None
    if parent.startswith(b"_krb_"):
        coll = parent[5:].decode("utf-8", "surrogateescape")
        anchor = "user" if _number_after(_USER_RING, grand) is not None else "session"
        return f"KEYRING:{anchor}:{coll}:{name}"
    return None
