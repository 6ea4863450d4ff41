"""pykeyctl show --krb5 on a real TGT from the test realm's KDC, in the user's persistent keyring."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
PYKEYCTL = str(REPO / ".venv" / "bin" / "pykeyctl")


def _kinit(realm: Any, kdc_user: Any) -> None:
    # The realm's krb5.conf makes KEYRING:persistent:<uid> the default ccache.
    proc = kdc_user.user.run(["kinit", kdc_user.principal], input=kdc_user.password + "\n", env=realm.env)
    assert proc.returncode == 0, proc.stderr


def _ccache_nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    found = [node] if "krb5" in node else []
    for child in node.get("children", []):
        found += _ccache_nodes(child)
    return found


def test_show_krb5_decodes_the_persistent_ccache(realm: Any, kdc_user: Any) -> None:
    _kinit(realm, kdc_user)
    started = time.time()
    # Link the user's persistent keyring into this test's session keyring (root may, by uid).
    subprocess.run(["keyctl", "get_persistent", "@s", str(kdc_user.uid)], check=True, capture_output=True)
    env = {"PATH": "/usr/bin:/bin", **realm.env}
    proc = subprocess.run([PYKEYCTL, "show", "--krb5", "--json"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    nodes = _ccache_nodes(json.loads(proc.stdout)["tree"])
    assert len(nodes) == 1, nodes
    info = nodes[0]["krb5"]
    assert info["ccache"] == f"KEYRING:persistent:{kdc_user.uid}:{nodes[0]['description']}"
    assert info["principal"] == kdc_user.principal
    tgt = f"krbtgt/{realm.realm}@{realm.realm}"
    assert [c["server"] for c in info["credentials"]] == [tgt]
    # The realm issues 60 s tickets: the end time is the KDC's, not a made-up value.
    assert started - 5 < info["credentials"][0]["endtime"] <= started + 65

    text = subprocess.run([PYKEYCTL, "show", "--krb5"], capture_output=True, text=True, env=env)
    assert text.returncode == 0, text.stderr
    assert f"[krb5] {info['ccache']}  default principal: {kdc_user.principal}\n" in text.stdout
    assert f"[krb5]   {tgt}  ends " in text.stdout
    # Without --krb5 the tree is keyctl's, byte for byte.
    plain = subprocess.run([PYKEYCTL, "show"], capture_output=True, text=True)
    assert plain.stdout == subprocess.run(["keyctl", "show"], capture_output=True, text=True).stdout
    assert "[krb5]" not in plain.stdout


def test_show_krb5_as_the_user_in_a_fresh_session(realm: Any, kdc_user: Any) -> None:
    _kinit(realm, kdc_user)
    script = f"keyctl get_persistent @s >/dev/null && {PYKEYCTL} show --krb5"
    proc = kdc_user.user.run(["keyctl", "session", "-", "sh", "-c", script], env=realm.env)
    assert proc.returncode == 0, proc.stderr
    assert f"_persistent.{kdc_user.uid}" in proc.stdout
    assert f"default principal: {kdc_user.principal}" in proc.stdout
    assert f"krbtgt/{realm.realm}@{realm.realm}  ends " in proc.stdout


def _show_in_child(*args: bytes) -> tuple[str, bool]:
    """Run pykeyctl's ``show`` in a child interpreter; (stdout, whether it loaded pykrb5)."""
    code = ("import sys; from pam_keyinit_py.keyctl import cli, main; "
            "main.run([a.encode() for a in sys.argv[1:]]); "
            "cli.flush(); sys.stderr.write('KRB5=%s' % ('krb5' in sys.modules))")
    proc = subprocess.run([str(REPO / ".venv" / "bin" / "python"), "-c", code, *map(bytes.decode, args)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, proc.stderr.endswith("KRB5=True")


def test_plain_show_never_loads_krb5_and_show_krb5_does(realm: Any, kdc_user: Any) -> None:
    """pykrb5 (libkrb5) is loaded only when --krb5 asks for it and a ccache keyring is in the tree."""
    _kinit(realm, kdc_user)
    ring = subprocess.run(["keyctl", "get_persistent", "@s", str(kdc_user.uid)], check=True,
                          capture_output=True, text=True).stdout.strip()
    try:
        plain, loaded = _show_in_child(b"show")
        assert f"_persistent.{kdc_user.uid}" in plain and not loaded
        decoded, loaded = _show_in_child(b"show", b"--krb5")
        assert f"default principal: {kdc_user.principal}" in decoded and loaded
    finally:
        subprocess.run(["keyctl", "unlink", ring, "@s"], capture_output=True)


def test_pykeyctl_and_the_service_read_one_cache_alike(realm: Any, kdc_user: Any) -> None:
    """``show --krb5 --json`` and the service's ccache.list_caches read through the one reader."""
    from pam_keyinit_py.tickets import ccache

    _kinit(realm, kdc_user)
    ring = subprocess.run(["keyctl", "get_persistent", "@s", str(kdc_user.uid)], check=True,
                          capture_output=True, text=True).stdout.strip()
    try:
        env = {"PATH": "/usr/bin:/bin", **realm.env}
        proc = subprocess.run([PYKEYCTL, "show", "--krb5", "--json"], capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stderr
    finally:
        subprocess.run(["keyctl", "unlink", ring, "@s"], capture_output=True)
    [node] = _ccache_nodes(json.loads(proc.stdout)["tree"])
    shown = node["krb5"]
    [info] = ccache.list_caches(kdc_user.uid, kdc_user.gid, krb5_config=realm.env["KRB5_CONFIG"])
    assert info.ccache == shown["ccache"] and info.principal == shown["principal"] == kdc_user.principal
    [cred] = shown["credentials"]
    assert (info.server, info.starttime, info.endtime) == (cred["server"], cred["starttime"], cred["endtime"])
    assert info.endtime > 0 and info.renew_till == (cred["renew_till"] if info.renewable else 0)
