"""``pykeyctl show --krb5``: MIT KEYRING ccaches decoded inline in the keyring tree (issue 6).

A keyring is taken for a ccache when it sits in an MIT collection keyring (the names are
:func:`pam_keyinit_py.ccname.from_keyring`'s): ``_persistent.<uid>`` → ``_krb`` → ``<name>`` is
``KEYRING:persistent:<uid>:<name>``, and ``_krb_<coll>`` → ``<name>`` in the session or user
keyring is ``KEYRING:session|user:<coll>:<name>``.  The ccache is then read with the service's
own reader, :mod:`pam_keyinit_py.ccread` (pykrb5: krb5_cc_resolve, krb5_cc_get_principal, the
credential cursor), imported only inside these functions so plain ``pykeyctl`` never loads libkrb5.
"""

from __future__ import annotations

from ..ccname import from_keyring as ccache_name
from ..timefmt import when

__all__ = ["ccache_name", "describe_ccache", "lines"]


def describe_ccache(name: str) -> dict[str, object]:
    """Read ccache ``name``: default principal and each credential's server and times."""
    from .. import ccread

    try:
        seen = ccread.read_name(name)
    except ccread.NoPrincipal as exc:
        return {"ccache": name, "error": str(exc.error)}
    return {"ccache": name, "principal": seen.principal.decode("utf-8", "replace"), "credentials": [
        {"server": c.server.decode("utf-8", "replace"), "starttime": c.starttime, "endtime": c.endtime,
         "renew_till": c.renew_till} for c in seen.creds]}


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
        out.append(pad + f"[krb5]   {cred['server']}  ends {when(cred['endtime'])}".encode()
                   + (f"  renew until {when(cred['renew_till'])}".encode() if cred["renew_till"] else b"")
                   + b"\n")
    return b"".join(out)
