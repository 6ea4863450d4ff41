"""pykeyctl --json on show, list, describe and rdescribe, checked against the real keyctl's text."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PYKEYCTL = str(REPO / ".venv" / "bin" / "pykeyctl")


def sh(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def keyctl(*argv: str) -> str:
    proc = sh("keyctl", *argv)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def pyjson(*argv: str) -> object:
    proc = sh(PYKEYCTL, *argv)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _tree() -> dict[str, str]:
    ring = keyctl("newring", "pkc:json", "@s").strip()
    key = keyctl("add", "user", "pkc:j;semi", "v", ring).strip()
    sub = keyctl("newring", "pkc:jsub", ring).strip()
    leaf = keyctl("add", "logon", "pkc:leaf", "secret", sub).strip()
    keyctl("setperm", leaf, "0x3f010101")
    return {"ring": ring, "key": key, "sub": sub, "leaf": leaf}


def test_describe_and_rdescribe_json_match_keyctl() -> None:
    ids = _tree()
    for name, kid in ids.items():
        raw = keyctl("rdescribe", kid).rstrip("\n")
        ktype, uid, gid, perm, desc = raw.split(";", 4)
        text = keyctl("describe", kid)
        for argv in (("--json", "describe", kid), ("describe", kid, "--json"), ("rdescribe", "--json", kid)):
            obj = pyjson(*argv)
            assert obj["id"] == int(kid), name
            assert (obj["type"], obj["uid"], obj["gid"], obj["perm_hex"], obj["description"]) == (
                ktype, int(uid), int(gid), perm, desc)
            assert obj["perm"] == int(perm, 16)
            assert f" {obj['permissions']} " in text  # the same 24 letters keyctl describe prints
        assert pyjson("rdescribe", kid, "--json")["raw"] == raw


def test_list_json_matches_keyctl_list() -> None:
    ids = _tree()
    obj = pyjson("list", "--json", ids["ring"])
    assert obj["keyring"] == int(ids["ring"])
    text = keyctl("list", ids["ring"]).splitlines()[1:]
    assert [k["id"] for k in obj["keys"]] == [int(line.split(":")[0]) for line in text]
    for k, line in zip(obj["keys"], text, strict=True):
        assert line.split()[1] == k["granted"]  # the caller's letters, as keyctl list shows them


def test_show_json_is_the_same_tree_as_keyctl_show() -> None:
    ids = _tree()
    obj = pyjson("show", "--json")
    assert obj["name"] == "Session Keyring"

    def flatten(node: dict, depth: int = 0) -> list[tuple[int, str, str, int]]:
        rows = [(node["id"], node["type"], node["description"], depth)]
        for child in node.get("children", []):
            rows += flatten(child, depth + 1)
        return rows

    rows = flatten(obj["tree"])
    lines = keyctl("show").splitlines()[1:]
    assert [r[0] for r in rows] == [int(line.split()[0]) for line in lines]
    assert [f"{r[1]}: {r[2]}" for r in rows] == [line.split("  ")[-1].lstrip(" |\\_") for line in lines]
    assert int(ids["leaf"]) in [r[0] for r in rows]
    keyed = pyjson("show", ids["sub"], "--json")
    assert keyed["name"] == "Keyring" and [c["id"] for c in keyed["tree"]["children"]] == [int(ids["leaf"])]


def test_json_errors_keep_keyctl_messages_and_codes() -> None:
    cases = (("describe", "123456789"), ("list", "123456789"), ("show", "123456789"), ("rdescribe", "@zz"))
    for argv in cases:
        real = sh("keyctl", *argv)
        ours = sh(PYKEYCTL, "--json", *argv)
        assert (ours.stdout if argv[0] != "show" else "", ours.stderr, ours.returncode) == (
            real.stdout if argv[0] != "show" else "", real.stderr, real.returncode)
    # --json belongs to the four commands only: elsewhere it is a usage error.
    bad = sh(PYKEYCTL, "--json", "read", "@s")
    assert bad.returncode == 2 and "--json" in bad.stderr
    # Without --json the output stays keyctl's text.
    assert sh(PYKEYCTL, "show").stdout == sh("keyctl", "show").stdout
