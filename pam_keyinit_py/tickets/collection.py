"""A uid's persistent ccache collection as the kernel holds it, read with keyctl alone (no libkrb5).

MIT's KEYRING layout (see :mod:`pam_keyinit_py.ccname`): keyctl_get_persistent(uid) returns
``_persistent.<uid>``, which holds the keyring ``_krb``; each keyring in ``_krb`` is one cache,
named by its description (``KEYRING:persistent:<uid>:<description>``).

- :func:`cache_keyrings`: each cache keyring's description and serial, the persistent keyring
  linked into this thread's keyring meanwhile (so the keys are possessed: keyctl_read and
  keyctl_describe work for root on a user's keys).
- :func:`cache_names`: the caches' full names.  The adoption scan asks this first: listing the
  collection with libkrb5 (krb5_cccol_cursor, then each cache's principal and credentials, as the
  user) costs about ten times as much, and at most logins finds nothing new.

Reading takes keyctl_get_persistent, which (like any look at the collection) resets the kernel's
expiry of the persistent keyring.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager

from .. import keyutils
from ..ccname import collection_name
from ..keyutils.model import KeyInfo

#: The keyring in ``_persistent.<uid>`` whose member keyrings are the caches (MIT's cc_keyring.c).
COLLECTION_KEYRING = b"_krb"
#: keyctl errnos of a key that went away between the keyring's read and the key's describe.
GONE = frozenset({errno.ENOKEY, errno.EKEYREVOKED, errno.EKEYEXPIRED})


def describe(key: int) -> tuple[bytes, bytes]:
    """KEYCTL_DESCRIBE through layer 0's one parser: (type, description)."""
    info = KeyInfo.of(key)
    return info.type_bytes, info.description_bytes


def _describe_live(key: int) -> tuple[bytes, bytes] | None:
    """:func:`describe`, or None for a key destroyed meanwhile (:data:`GONE`); other OSErrors propagate."""
    try:
        return describe(key)
    except OSError as exc:
        if exc.errno in GONE:
            return None
        raise


@contextmanager
def cache_keyrings(uid: int) -> Iterator[list[tuple[bytes, int]]]:
    """(description, serial) of each cache keyring in ``uid``'s persistent collection.

    keyctl_get_persistent(uid) into this thread's keyring (unlinked again at the end of the
    block), then keyctl_read of ``_persistent.<uid>`` and of ``_krb``, and keyctl_describe of each
    member.  A key destroyed while it is read (ENOKEY, EKEYREVOKED, EKEYEXPIRED) is left out; no
    ``_krb`` is an empty list.  Any other OSError (EACCES: a user may take the possessor's
    rights off their keys) propagates: the caller cannot tell what the collection holds.
    """
    thread = keyutils.KEY_SPEC_THREAD_KEYRING
    ring = keyutils.get_persistent(uid, thread)
    try:
        found: list[tuple[bytes, int]] = []
        for krb in keyutils.keyring_ids(ring):
            if _describe_live(krb) != (b"keyring", COLLECTION_KEYRING):
                continue
            for cache in keyutils.keyring_ids(krb):
                described = _describe_live(cache)
                if described is not None and described[0] == b"keyring":
                    found.append((described[1], cache))
        yield found
    finally:
        try:
            keyutils.unlink(ring, thread)
        except OSError:
            pass


def cache_names(uid: int) -> set[str]:
    """The names (``KEYRING:persistent:<uid>:<name>``) of the caches in ``uid``'s collection.

    OSError as :func:`cache_keyrings`: the answer is unknown, not empty.
    """
    collection = collection_name(uid)
    with cache_keyrings(uid) as caches:
        return {f"{collection}:{desc.decode('utf-8', 'surrogateescape')}" for desc, _ in caches}
