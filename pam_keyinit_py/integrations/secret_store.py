"""secret-tool's item model on the kernel keyring: attributes, a label and a text secret.

An item is one possessor-only ``user`` key in the ``keyinit:secrets`` keyring
(:mod:`.store`):

- its **description** is the attribute set as canonical JSON (keys sorted, no
  spaces), so one attribute set names exactly one key and an exact look-up is a
  single KEYCTL_SEARCH;
- its **payload** is JSON ``{"label", "secret", "created", "modified"}``.

Semantics follow libsecret's secret-tool:

- attributes match by exact string equality; a query matches every item whose
  attributes include all the queried pairs (the item may have more);
- storing the same attribute set again replaces the secret and label (add_key
  updates the key in place) and keeps ``created``;
- ``clear`` removes every matching item.

When several items match, the ones whose attribute set equals the query come
first, then the most recently modified.
"""

from __future__ import annotations

import json
import time

from .store import KeyStore, StoreError

__all__ = ["Item", "SecretStore", "StoreError"]


def is_text(*values: str) -> bool:
    """True when every value is valid Unicode (no lone surrogate, e.g. from undecodable argv bytes)."""
    try:
        for value in values:
            value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _storable(attributes: dict[str, str]) -> bool:
    return is_text(*attributes, *attributes.values())


def encode_attributes(attributes: dict[str, str]) -> str:
    """The key description for an attribute set: canonical, compact JSON (no NUL byte possible)."""
    return json.dumps(attributes, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def decode_attributes(description: str) -> dict[str, str] | None:
    """The attribute set of a key description, or None if it is not one of ours."""
    try:
        value = json.loads(description)
    except ValueError:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        return None
    return value


class Item:
    """One stored item; ``secret`` is loaded with it (reading it is one KEYCTL_READ).

    A plain class, not a dataclass: importing dataclasses (and with it inspect) cost
    the Docker helper about a third of its start-up.  repr() never shows the secret.
    """

    __slots__ = ("key", "attributes", "label", "secret", "created", "modified")

    def __init__(self, key: int, attributes: dict[str, str], label: str = "", secret: str = "",
                 created: int = 0, modified: int = 0) -> None:
        self.key = key
        self.attributes = attributes
        self.label = label
        self.secret = secret
        self.created = created
        self.modified = modified

    def __repr__(self) -> str:
        return (f"Item(key={self.key!r}, attributes={self.attributes!r}, label={self.label!r}, "
                f"created={self.created!r}, modified={self.modified!r})")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Item):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in self.__slots__)

    __hash__ = None  # type: ignore[assignment] - mutable, as the dataclass was


def _unpack(key: int, attributes: dict[str, str], payload: bytes | None) -> Item | None:
    if payload is None:
        return None
    try:
        data = json.loads(payload.decode())
        return Item(
            key, attributes, str(data["label"]), str(data["secret"]),
            int(data.get("created", 0)), int(data.get("modified", 0)),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None  # not written by us: skip rather than guess


class SecretStore:
    """Items in the ``keyinit:secrets`` keyring of one location (see :mod:`.store`)."""

    def __init__(self, location: str | None = None) -> None:
        self.keys = KeyStore(location)

    @property
    def location(self) -> str:
        """persistent, user or session."""
        return self.keys.location

    @staticmethod
    def _check(attributes: dict[str, str]) -> None:
        if not attributes:
            raise StoreError("must specify attribute and value pairs")

    def store(
        self, attributes: dict[str, str], label: str, secret: str,
        replace: dict[str, str] | None = None,
    ) -> Item:
        """Store (or replace) the item with exactly ``attributes``.

        ``replace``, if given, is a query: every *other* item matching it (other
        attribute sets; never this one, in whichever form it is by then) is
        removed after the new one is in place (a ``keyring`` backend or Docker
        helper keeps one secret per service/user or server, whatever extra
        attributes an older item had).
        """
        self._check(attributes)
        if not _storable(attributes) or not is_text(label):
            raise StoreError("attributes and label must be valid UTF-8 text")
        if not is_text(secret):
            raise StoreError("secret must be valid UTF-8 text")
        description = encode_attributes(attributes)
        now = int(time.time())
        created = now
        old = self.keys.get(description)
        if old is not None:
            previous = _unpack(old[0], attributes, old[1])
            if previous is not None and previous.created:
                created = previous.created
        payload = json.dumps(
            {"label": label, "secret": secret, "created": created, "modified": now},
            ensure_ascii=False, separators=(",", ":"),
        ).encode()
        key = self.keys.put(description, payload)
        if replace is not None:
            for item in self.search(replace, load=False):
                # Not the item itself, whatever its serial: a concurrent write of the same
                # attributes may have turned our user key into an item keyring (or made a new
                # one after a clear), and removing that would drop both writes.
                if encode_attributes(item.attributes) != description:
                    self.keys.remove(item.key)
        return Item(key, dict(attributes), label, secret, created, now)

    def search(self, query: dict[str, str], load: bool = True) -> list[Item]:
        """Every item whose attributes include all of ``query``, best match first.

        One listing of the store (:meth:`.KeyStore.items`, which lists once more only when an
        item left it meanwhile and finds its successor, see :mod:`.store`).
        """
        def wanted(description: str) -> bool:
            attributes = decode_attributes(description)
            return attributes is not None and all(attributes.get(k) == v for k, v in query.items())

        matches: list[Item] = []
        if not load:
            for key, description in self.keys.entries():
                if wanted(description):
                    matches.append(Item(key, decode_attributes(description) or {}))
        else:
            for key, description, payload in self.keys.items(wanted):
                item = _unpack(key, decode_attributes(description) or {}, payload)
                if item is not None:
                    matches.append(item)
        matches.sort(key=lambda i: (i.attributes != query, -i.modified, encode_attributes(i.attributes)))
        return matches

    def lookup_item(self, query: dict[str, str], likely: dict[str, str] | None = None) -> Item | None:
        """The best item matching ``query``, or None.

        Fast path: an item whose attribute set is exactly ``likely`` (default:
        the query itself; it must match the query) is one KEYCTL_SEARCH away;
        otherwise every item is described and matched.
        """
        self._check(query)
        guess = query if likely is None else likely
        if not _storable(query) or not _storable(guess):
            return None  # no item can carry such an attribute (store() refuses it)
        # KeyStore.get cannot miss an item that is being replaced (see .store), so one look
        # at the likely item and one search are enough.
        exact = self.keys.get(encode_attributes(guess))
        if exact is not None:
            item = _unpack(exact[0], dict(guess), exact[1])
            if item is not None:
                return item
        found = self.search(query)
        return found[0] if found else None

    def lookup(self, query: dict[str, str], likely: dict[str, str] | None = None) -> str | None:
        """The secret of the best item matching ``query``, or None."""
        item = self.lookup_item(query, likely)
        return None if item is None else item.secret

    def clear(self, query: dict[str, str]) -> int:
        """Remove every item matching ``query`` (KEYCTL_INVALIDATE); return how many."""
        self._check(query)
        items = self.search(query, load=False)
        for item in items:
            self.keys.remove(item.key)
        return len(items)
