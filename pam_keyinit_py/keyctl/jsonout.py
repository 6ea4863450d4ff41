"""``--json`` renderings of show, list, describe and rdescribe.

Key fields: ``id``, ``type``, ``uid``, ``gid``, ``perm`` (the mask as an
int), ``perm_hex`` (as /proc/keys and describe print it), ``permissions`` (the
24 letters of ``keyctl describe``), ``granted`` (keyctl list/show's letters
for the caller) and ``description``.  Bytes that are not UTF-8 are kept with
surrogate escapes so nothing is lost.  Errors keep keyctl's stderr text and
exit codes.
"""

from __future__ import annotations

import json
from typing import Any

from pam_keyinit_py import keyutils as ku
from pam_keyinit_py.keyutils.model import KeyInfo

from .cli import fail, out
from .fmt import calc_perms


def _s(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _key(key: int, desc: KeyInfo) -> dict[str, Any]:
    return {
        "id": key,
        "type": desc.type,
        "uid": desc.uid,
        "gid": desc.gid,
        "perm": int(desc.perm),
        "perm_hex": f"{desc.perm:08x}",
        "permissions": desc.perm.full(),
        "granted": calc_perms(desc.perm, desc.uid, desc.gid),
        "description": desc.description,
    }


def _inaccessible(key: int, exc: OSError) -> dict[str, Any]:
    import errno as E

    code = exc.errno or 0
    return {"id": key, "error": exc.strerror, "errno": E.errorcode.get(code, str(code))}


def _emit(obj: object) -> int:
    out(json.dumps(obj, indent=2).encode("utf-8", "surrogateescape") + b"\n")
    return 0


def describe_json(key: int, desc: KeyInfo | None, raw: bytes | None = None) -> int:
    """describe/rdescribe --json: one key object (rdescribe adds ``raw``)."""
    obj: dict[str, Any] = _key(key, desc) if desc is not None else {"id": key}
    if raw is not None:
        obj["raw"] = _s(raw)
    return _emit(obj)


def _describe(key: int) -> dict[str, Any]:
    try:
        raw = ku.describe(key)
    except OSError as exc:
        return _inaccessible(key, exc)
    desc = KeyInfo.parse(raw)
    return _key(key, desc) if desc else {"id": key, "raw": _s(raw)}


def list_json(keyring: int, ids: list[int]) -> int:
    """list --json: ``{"keyring": id, "keys": [...]}``; unreadable members carry ``error``."""
    return _emit({"keyring": keyring, "keys": [_describe(k) for k in ids]})


def _tree(key: int, depth: int, parents: list[bytes] | None = None) -> dict[str, Any]:
    node = _describe(key)
    if depth > 8 * 4 or node.get("type") != "keyring":
        return node
    description = node["description"].encode("utf-8", "surrogateescape")
    if parents is not None:
        from .krb5view import ccache_name, describe_ccache

        name = ccache_name(description, parents)
        if name:
            try:
                node["krb5"] = describe_ccache(name)
            except Exception as exc:  # shown, not fatal, as in the text form
                node["krb5"] = {"ccache": name, "error": str(exc)}
    try:
        children = ku.keyring_ids(key)
    except OSError as exc:
        raise fail("keyctl_read_alloc", exc.errno or 0) from None
    below = None if parents is None else [*parents, description]
    node["children"] = [_tree(child, depth + 4, below) for child in children]
    return node


def show_json(keyring: int, name: str, krb5: bool = False) -> int:
    """show --json: ``{"name": "Session Keyring", "tree": {... "children": [...]}}``."""
    try:
        ring = ku.get_keyring_id(keyring, False)
    except OSError as exc:
        raise fail("Unable to dump key", exc.errno or 0) from None
    return _emit({"name": name, "tree": _tree(ring, 0, [] if krb5 else None)})
