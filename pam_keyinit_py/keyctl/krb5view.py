"""``pykeyctl show --krb5``: MIT KEYRING ccaches decoded inline in the keyring tree (issue 6).

A keyring is taken for a ccache when it sits in an MIT collection keyring:
``_persistent.<uid>`` → ``_krb`` → ``<name>`` is ``KEYRING:persistent:<uid>:<name>``, and
``_krb_<coll>`` → ``<name>`` in the session or user keyring is ``KEYRING:session|user:<coll>:<name>``.
The ccache is then opened with pykrb5 (``krb5.cc_resolve``; imported only here, so plain
``pykeyctl`` never loads it) and its default principal and credentials are listed.
"""

from __future__ import annotations

import re
import time

_PERSISTENT = re.compile(rb"_persistent\.(\d+)\Z")
_USER = re.compile(rb"_uid\.\d+\Z")


def ccache_name(desc: bytes, parents: list[bytes]) -> str | None:
    """The KEYRING: ccache name of a keyring described ``desc`` under ``parents`` (nearest last)."""
    if not parents:
        return None
    parent = parents[-1]
    grand = parents[-2] if len(parents) > 1 else b""
    name = desc.decode("utf-8", "surrogateescape")
    if parent == b"_krb":
        m = _PERSISTENT.match(grand)
        if m:
            return f"KEYRING:persistent:{int(m.group(1))}:{name}"
        return None
    if parent.startswith(b"_krb_"):
        coll = parent[5:].decode("utf-8", "surrogateescape")
        anchor = "user" if _USER.match(grand) else "session"
        return f"KEYRING:{anchor}:{coll}:{name}"
    return None


def _when(stamp: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) if stamp else "-"


def describe_ccache(name: str) -> dict[str, object]:
    """Open ccache ``name`` with pykrb5: default principal and each credential's server and times."""
    import krb5

    ctx = krb5.init_context()
    cc = krb5.cc_resolve(ctx, name.encode())
    info: dict[str, object] = {"ccache": name}
    try:
        principal = krb5.cc_get_principal(ctx, cc)
        info["principal"] = (principal.name or b"").decode("utf-8", "replace")
    except krb5.Krb5Error as exc:
        info["error"] = str(exc)
        return info
    creds = []
    for cred in cc:
        server = cred.server
        # MIT stores cache configuration as pseudo-credentials in the X-CACHECONF: realm.
        if server.realm == b"X-CACHECONF:":
            continue
        times = cred.times
        creds.append({
            "server": (server.name or b"").decode("utf-8", "replace"),
            "starttime": times.starttime or times.authtime,
            "endtime": times.endtime,
            "renew_till": times.renew_till,
        })
    info["credentials"] = creds
    return info


def lines(name: str, pad: bytes) -> bytes:
    """The text printed under a ccache keyring in ``show --krb5``."""
    try:
        info = describe_ccache(name)
    except Exception as exc:  # any pykrb5 failure is shown, not fatal: the tree goes on
        return pad + f"[krb5] {name}: cannot read: {exc}\n".encode()
    text = f"[krb5] {name}"
    if "error" in info:
        return pad + (text + f": {info['error']}\n").encode()
    out = [pad + (text + f"  default principal: {info['principal']}\n").encode()]
    for cred in info["credentials"]:  # type: ignore[union-attr]
        out.append(pad + f"[krb5]   {cred['server']}  ends {_when(cred['endtime'])}".encode()
                   + (f"  renew until {_when(cred['renew_till'])}".encode() if cred["renew_till"] else b"")
                   + b"\n")
    return b"".join(out)
