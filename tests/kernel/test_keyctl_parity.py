"""Parity of pykeyctl with keyutils 1.6.3's /usr/bin/keyctl against the real kernel.

Both tools run as separate processes and their stdout bytes, stderr bytes and
exit codes are compared:

- ``same`` cases build the keys once (with the real keyctl) and run both tools,
  one after the other, on those very keys: outputs must be byte-identical.
- ``twice`` cases (mutating commands) build two identical set-ups, each in a
  fresh session keyring, run keyctl on one and pykeyctl on the other, and
  compare after replacing key serials by labels in order of appearance.  State
  checks (``oracle`` steps) run the real keyctl after the command.

The runner below also runs as a script (``--runner``) so that the same steps
can run as a non-root user, in that user's own fresh session keyring.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_PY = str(REPO / ".venv" / "bin" / "python")
PYKEYCTL = str(REPO / ".venv" / "bin" / "pykeyctl")
KEYCTL = "/usr/bin/keyctl"

# ---------------------------------------------------------------------------------------------
# The runner: executes steps, with real keyctl for set-up and the tool under test for commands.


def _sub(arg: str, env: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: env.get(m.group(1), m.group(0)), arg)


def _run(argv: list[str], stdin: str | None) -> dict[str, Any]:
    proc = subprocess.run(
        argv, input=None if stdin is None else stdin.encode("latin-1"), capture_output=True, timeout=30
    )
    return {"out": proc.stdout.decode("latin-1"), "err": proc.stderr.decode("latin-1"), "rc": proc.returncode}


def _fill_quota(ring: int) -> int:
    """Add user keys until add_key(2) fails with EDQUOT (bytes and then count)."""
    from pam_keyinit_py import keyutils
    from pam_keyinit_py.lab.users import settle

    settle(os.getuid())  # quota freed by the collector during the steps would let them succeed
    n = 0
    for size in (4000, 1000, 100, 10, 1):
        while True:
            try:
                keyutils.add_key("user", f"pkc:fill:{n}", b"x" * size, ring)
            except keyutils.QuotaExceededError:
                break
            n += 1
    # The descriptions count too: finish with the shortest ones, so that what is left is smaller
    # than any key the steps add (a newring of "pkc:more" fitted in the last ~12 bytes at times).
    m = 0
    while True:
        try:
            keyutils.add_key("user", format(m, "x"), b"x", ring)
        except keyutils.QuotaExceededError:
            break
        m += 1
    return n + m


def _steps(steps: list[dict[str, Any]], env: dict[str, str], tools: list[str]) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    for step in steps:
        if "sleep" in step:
            time.sleep(step["sleep"])
        elif "fill" in step:
            from pam_keyinit_py import keyutils

            _fill_quota(keyutils.KEY_SPEC_SESSION_KEYRING)
        elif "setup" in step:
            res = _run([KEYCTL, *(_sub(a, env) for a in step["setup"])], step.get("stdin"))
            if res["rc"] != 0:
                raise RuntimeError(f"set-up {step['setup']} failed: {res}")
            if "save" in step:
                env[step["save"]] = res["out"].strip()
        else:
            key = "cmd" if "cmd" in step else "oracle"
            argv = [_sub(a, env) for a in step[key]]
            stdin = None if step.get("stdin") is None else _sub(step["stdin"], env)
            use = tools if key == "cmd" else [KEYCTL]
            results.append({"argv": argv, "runs": [_run([t, *argv], stdin) for t in use]})
    return results


def _proc_key_ids() -> set[int]:
    ids = set()
    with open("/proc/keys") as f:
        for line in f:
            ids.add(int(line.split()[0], 16))
    return ids


def run_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Execute a case: ``same`` (both tools on one set-up) or ``twice`` (a set-up per tool)."""
    from pam_keyinit_py import keyutils

    env0 = {"PYKEYCTL": PYKEYCTL, "KEYCTL": KEYCTL, **spec.get("env", {})}
    if spec["mode"] == "single":
        keyutils.join_session_keyring(None)
        env = dict(env0, TOOL=spec["tool"], RUN=uuid.uuid4().hex[:8])
        return {"single": _steps(spec["steps"], env, [spec["tool"]])}
    if spec["mode"] == "same":
        keyutils.join_session_keyring(None)
        env = dict(env0, TOOL=KEYCTL, RUN=uuid.uuid4().hex[:8])
        return {"same": _steps(spec["steps"], env, [KEYCTL, PYKEYCTL])}
    runs = []
    for tool in (KEYCTL, PYKEYCTL):
        session = keyutils.join_session_keyring(None)
        env = dict(env0, TOOL=tool, RUN=uuid.uuid4().hex[:8])
        results = _steps(spec["steps"], env, [tool])
        ids = _proc_key_ids() | {session}
        ids |= {int(v) for v in env.values() if v.lstrip("-").isdigit()}
        runs.append({"results": results, "ids": sorted(ids), "env": env})
    return {"twice": runs}


def _runner_main() -> None:
    sys.path.insert(0, str(REPO))
    spec = json.loads(sys.stdin.read())
    json.dump(run_spec(spec), sys.stdout)


# ---------------------------------------------------------------------------------------------
# Comparison helpers.


def _normalise(results: list[dict[str, Any]], ids: set[int], env: dict[str, str]) -> list[Any]:
    labels: dict[int, str] = {}

    def label(m: re.Match[str]) -> str:
        tok = m.group(2)
        value = int(tok, 16) if tok.startswith("0x") else int(tok)
        if value not in ids:
            return m.group(0)
        return labels.setdefault(value, f"<K{len(labels)}>")

    def norm(text: str) -> str:
        text = text.replace(env["RUN"], "<RUN>").replace(env["TOOL"], "<TOOL>")
        return re.sub(r"( *)\b(0x[0-9a-f]{8}|\d+)\b", label, text)

    # Serials a command printed on their own (add, newring, ...) may be gone from /proc/keys by now.
    for r in results:
        for x in r["runs"]:
            if re.fullmatch(r"-?\d+\n", x["out"]):
                ids.add(int(x["out"]))
            ids.update(int(n) for n in re.findall(r"Joined session keyring: (\d+)", x["err"]))
            ids.update(int(n) for n in re.findall(r"^ *(\d+) ", x["out"], re.M))  # show/list columns
    return [
        [[norm(a) for a in r["argv"]], [(norm(x["out"]), norm(x["err"]), x["rc"]) for x in r["runs"]]]
        for r in results
    ]


def check(spec: dict[str, Any], user: Any = None) -> list[Any]:
    """Run ``spec`` (as ``user`` if given) and assert keyctl/pykeyctl parity; return the results."""
    payload = json.dumps(spec)
    if user is None:
        proc = subprocess.run(
            [VENV_PY, __file__, "--runner"], input=payload, capture_output=True, text=True, timeout=120
        )
    else:
        proc = user.run([VENV_PY, __file__, "--runner"], input=payload, timeout=120)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    if "single" in data:
        return data["single"]
    if "same" in data:
        for r in data["same"]:
            if len(r["runs"]) == 2:
                real, ours = r["runs"]
                assert ours == real, f"{r['argv']}: keyctl {real!r} != pykeyctl {ours!r}"
        return data["same"]
    a, b = data["twice"]
    na = _normalise(a["results"], set(a["ids"]), a["env"])
    nb = _normalise(b["results"], set(b["ids"]), b["env"])
    for ra, rb in zip(na, nb, strict=True):
        assert rb == ra, f"keyctl {ra!r} != pykeyctl {rb!r}"
    return [a["results"], b["results"]]


def S(*argv: str, save: str | None = None, stdin: str | None = None) -> dict[str, Any]:
    """A set-up step run with the real keyctl; ``save`` keeps its stdout as {save}."""
    step: dict[str, Any] = {"setup": list(argv), "stdin": stdin}
    if save:
        step["save"] = save
    return step


def C(*argv: str, stdin: str | None = None) -> dict[str, Any]:
    """A command run with the tool(s) under test."""
    return {"cmd": list(argv), "stdin": stdin}


def O(*argv: str) -> dict[str, Any]:  # noqa: E743
    """A state check run with the real keyctl after the command."""
    return {"oracle": list(argv)}


# ---------------------------------------------------------------------------------------------
# A tree of keys for the read-only commands, built once per case with the real keyctl.

TREE = [
    S("newring", "pkc:ring", "@s", save="r"),
    S("add", "user", "pkc:a", "hello world", "{r}", save="k"),
    S("add", "user", "pkc:bin", "\x01\x02abc\xff", "{r}", save="bin"),
    S("padd", "user", "pkc:big", "{r}", stdin="0123456789abcdef" * 40, save="big"),
    S("add", "logon", "pkc:logon", "secret", "{r}", save="logon"),
    S("add", "keyring", "pkc:empty", "", "{r}", save="empty"),
    S("newring", "pkc:sub", "{r}", save="sub"),
    S("add", "user", "pkc:x", "in sub", "{sub}", save="x"),
    S("newring", "pkc:sub2", "{sub}", save="sub2"),
    S("add", "user", "pkc:z", "zz", "{sub2}", save="z"),
    S("add", "user", "pkc:last", "l", "{r}", save="last"),
    S("add", "user", "pkc:rev", "v", "{r}", save="rev"),
    S("revoke", "{rev}"),
    S("add", "user", "pkc:exp", "v", "{r}", save="exp"),
    S("timeout", "{exp}", "1"),
    S("add", "user", "pkc:later", "v", "{r}", save="later"),
    S("timeout", "{later}", "3600"),
    S("add", "user", "pkc;semi;colon:x", "v", "{r}", save="semi"),
    S("setperm", "{last}", "0x3f3f0101"),
    {"sleep": 1.1},
]

KEY_ARGS = [
    "{r}", "{k}", "{bin}", "{big}", "{logon}", "{empty}", "{sub}", "{rev}", "{exp}", "{semi}", "{last}",
    "123456789", "0", "-3", "0x7fffffff", "4294967296", "@s", "@u", "@us", "@p", "@t", "@g", "@a", "@zz",
    "%:pkc:ring", "%:pkc:sub2", "%user:pkc:a", "%user:pkc:x", "%logon:pkc:logon", "%user:absent", "%:",
    "%", "%user", "%user:", "abc", "", "0x", "012", "08", " 12",
]
# Specifier parsing is shared by every command: the full list on the main readers, a sample on the rest.
SHORT_ARGS = ["{r}", "{k}", "{bin}", "{logon}", "{empty}", "{rev}", "{exp}", "123456789", "@s", "@zz",
              "%user:pkc:a", "abc"]
READ_ONLY = {"read": KEY_ARGS, "describe": KEY_ARGS, "list": SHORT_ARGS + ["{sub}", "{semi}", "{last}", "@u"],
             "rdescribe": SHORT_ARGS + ["{semi}", "{big}"],
             "pipe": SHORT_ARGS, "print": SHORT_ARGS, "rlist": SHORT_ARGS, "security": SHORT_ARGS,
             "id": SHORT_ARGS}


def test_read_only_commands_on_same_keys() -> None:
    """read pipe print describe rdescribe list rlist security id, on one tree, error paths included."""
    steps = TREE + [C(command, a) for command, args in READ_ONLY.items() for a in args]
    results = check({"mode": "same", "steps": steps})
    errs = {r["runs"][0]["err"] for r in results}
    assert "keyctl_read_alloc: Key has been revoked\n" in errs
    assert "keyctl_read_alloc: Key has expired\n" in errs
    assert "keyctl_read_alloc: Operation not supported\n" in errs  # logon keys cannot be read
    assert "keyctl_read_alloc: Required key not available\n" in errs
    assert "Can't find 'user:absent'\n" in errs and "Unparsable key: 'abc'\n" in errs
    outs = [r["runs"][0]["out"] for r in results]
    assert "11 bytes of data in key:\n68656c6c 6f20776f 726c64\n" in outs


def test_show_and_usage_on_same_keys() -> None:
    steps = TREE + [
        C("show"), C("show", "-x"), C("show", "{r}"), C("show", "-x", "{sub}"), C("show", "123456789"),
        C("show", "@t"), C("show", "a", "b"), C("show", "-x", "a", "b"), C("show", "@zz"),
        C("rdescribe", "{k}", ":"), C("rdescribe", "{k}", "--"), C("rdescribe", "{k}", ""),
        C("rdescribe", "{k}", "a", "b"), C(), C("sh"), C(""), C("showx"), C("--version"),
        C("supports"), C("supports", "--raw"), C("supports", "move_key"), C("supports", "notify"),
        C("supports", "nope"), C("supports", "a", "b"),
        C("search", "@s", "user", "pkc:z"), C("search", "@s", "user", "pkc:absent"),
        C("search", "{k}", "user", "pkc:z"), C("search", "{r}", "keyring", "pkc:sub2"),
        C("search", "@s", "user"), C("search", "@s", "logon", "pkc:logon"),
        C("request", "user", "pkc:z"), C("request", "user", "pkc:absent"), C("request", "user"),
        C("request", "keyring", "pkc:sub"), C("request2", "user", "pkc:absent", "info"),
        C("request2", "user"), C("prequest2", "user"),
        C("id", "@s", "x"), C("read"), C("list", "a", "b"), C("describe"),
    ]
    results = check({"mode": "same", "steps": steps})
    show = results[0]["runs"][0]["out"]
    assert show.startswith("Session Keyring\n") and "\\_ keyring: pkc:sub2" in show
    assert "key inaccessible (Key has expired)" in show


# Mutating commands: one set-up per tool, outputs compared with serials replaced by labels.
BASE = [
    S("newring", "pkc:ring", "@s", save="r"),
    S("add", "user", "pkc:a", "hello", "{r}", save="k"),
    S("newring", "pkc:other", "@s", save="o"),
    S("add", "user", "pkc:b", "bee", "{o}", save="b"),
    S("add", "logon", "pkc:logon", "secret", "{r}", save="logon"),
]
STATE = O("show")

MUTATING: dict[str, list[dict[str, Any]]] = {
    "add": [C("add", "user", "pkc:new", "data", "{r}"), C("add", "user", "pkc:a", "replaced", "{r}"),
            C("add", "-x", "user", "pkc:hex", "00 01\n0aff", "{r}"),
            C("add", "-x", "user", "pkc:h", "0g", "@s"),
            C("add", "-x", "user", "pkc:h", "012", "@s"), C("add", "user", "", "v", "@s"),
            C("add", "nosuchtype", "pkc:t", "v", "@s"), C("add", "user", "pkc:t", "v", "123456789"),
            C("add", "user", "pkc:t", "v"), C("add", "-x", "user", "pkc:t", "", "@s"),
            C("add", "user", "pkc:t", "v", "{k}"), C("add", "user", "pkc:t", "v", "@zz"),
            O("print", "%user:pkc:a"), O("print", "%user:pkc:hex"), STATE],
    "padd": [C("padd", "user", "pkc:p", "{r}", stdin="piped\x00data"),
             C("padd", "-x", "user", "pkc:px", "{r}", stdin="6869 0a\n"),
             C("padd", "-x", "user", "pkc:px", "{r}", stdin="6"), C("padd", "user", "pkc:p", stdin=""),
             C("padd", "user", "pkc:e", "{r}", stdin=""), O("read", "%user:pkc:p"), STATE],
    "newring": [C("newring", "pkc:nr", "{r}"), C("newring", "pkc:nr", "{r}"), C("newring", "pkc:nr"),
                C("newring", "pkc:nr", "{k}"), C("newring", "", "@s"), STATE],
    "update": [C("update", "{k}", "new"), C("update", "-x", "{k}", "4142"), C("update", "{logon}", "x"),
               C("update", "{r}", "x"), C("update", "123456789", "x"), C("update", "{k}"),
               C("update", "-x", "{k}", "zz"), O("print", "{k}")],
    "pupdate": [C("pupdate", "{k}", stdin="from stdin"), O("print", "{k}"),
                C("pupdate", "-x", "{k}", stdin="41 42"), O("print", "{k}"),
                C("pupdate", "123456789", stdin="x"), C("pupdate", stdin="x")],
    "revoke": [C("revoke", "{k}"), C("revoke", "{k}"), C("read", "{k}"), C("revoke", "123456789"),
               C("revoke"), STATE],
    "clear": [C("clear", "{k}"), C("clear", "{r}"), C("clear", "123456789"), C("list", "{r}"), STATE],
    "link": [C("link", "{k}", "{o}"), C("link", "{k}", "{o}"), C("link", "{k}", "{k}"),
             C("link", "{r}", "{r}"),
             C("link", "123456789", "@s"), C("link", "{k}"), STATE],
    "unlink": [C("link", "{k}", "{o}"), C("unlink", "{k}", "{o}"), C("unlink", "{k}", "{o}"),
               C("link", "{k}", "{o}"),
               C("unlink", "{k}"), C("unlink", "{k}"), C("unlink", "123456789"), C("unlink"), STATE],
    "move": [C("move", "{k}", "{r}", "{o}"), C("move", "{k}", "{r}", "{o}"), C("link", "{b}", "{r}"),
             C("move", "{b}", "{r}", "{o}"), C("move", "-f", "{b}", "{r}", "{o}"),
             C("move", "-f", "{k}", "{o}"),
             C("move", "{k}", "{o}"), STATE],
    "search": [C("search", "@s", "user", "pkc:b", "{r}"), C("search", "@s", "user", "pkc:zz", "{r}"),
               C("search", "@s", "user", "pkc:b", "{k}"), STATE],
    "request": [C("request", "user", "pkc:b", "{r}"), C("request", "user", "pkc:b", "@zz"),
                C("request2", "user", "pkc:b", "x", "{r}"), C("prequest2", "user", "pkc:b", "{o}", stdin="x"),
                STATE],
    "chown": [C("chown", "{k}", "0"), C("chown", "{k}", "65534"), C("chown", "{k}", "abc"), C("chown", "{k}"),
              C("chgrp", "{k}", "0x10"), C("chgrp", "{k}", "1z"), C("chgrp", "123456789", "0"),
              O("describe", "{k}")],
    "setperm": [C("setperm", "{k}", "0x3f3f0000"), O("describe", "{k}"), C("setperm", "{k}", "077"),
                O("describe", "{k}"), C("setperm", "{k}", "zz"), C("setperm", "{k}", "-1"),
                O("describe", "{k}"),
                C("setperm", "123456789", "0")],
    "timeout": [C("timeout", "{k}", "100"), C("timeout", "{k}", "x"), C("timeout", "{k}", "0x10"),
                C("timeout", "{b}", "1"), C("timeout", "123456789", "1"), {"sleep": 1.1}, C("read", "{b}"),
                C("describe", "{b}"), C("timeout", "{b}", "5"), STATE],
    "invalidate": [C("invalidate", "{k}"), C("invalidate", "123456789"), C("invalidate"), {"sleep": 0.3},
                   STATE],
    "purge_type": [C("purge", "user"), C("purge", "nosuchtype"), C("purge"), C("purge", "-x", "user"), STATE],
    "purge_literal": [S("add", "user", "pkc:A", "v", "{r}"), S("add", "user", "pkc:abc", "v", "{o}"),
                      C("purge", "user", "pkc:a"), C("purge", "-p", "user", "pkc:"), STATE],
    "purge_icase": [S("add", "user", "pkc:A", "v", "{r}"), C("purge", "-i", "user", "PKC:A"),
                    C("purge", "-p", "-i", "user", "PKC:B"), C("purge", "-p", "user"), STATE],
    "purge_search": [C("purge", "-s", "user", "pkc:b"), C("purge", "-s", "user"),
                     C("purge", "-s", "-p", "user", "pkc:a"), STATE],
    "reap": [S("add", "user", "pkc:dead", "v", "{r}", save="dead"), S("timeout", "{dead}", "1"),
             S("add", "user", "pkc:gone", "v", "{o}", save="gone"), S("revoke", "{gone}"), {"sleep": 1.1},
             C("reap", "-v"), C("reap"), C("reap", "-x"), STATE],
    "reap_quiet": [S("add", "user", "pkc:gone", "v", "{o}", save="gone"), S("revoke", "{gone}"), C("reap"),
                   STATE],
    "restrict": [C("restrict_keyring", "{r}", "asymmetric", "builtin_trusted"), C("restrict_keyring", "{o}"),
                 C("link", "{k}", "{o}"), C("restrict_keyring", "{k}"), C("restrict_keyring", "123456789"),
                 C("restrict_keyring", "{r}", "nosuch", "x"), C("restrict_keyring"), STATE],
    "persistent": [C("get_persistent", "@s"), C("get_persistent", "{r}", "0"),
                   C("get_persistent", "{r}", "x"),
                   C("get_persistent", "123456789"), C("get_persistent"), O("show", "{r}")],
    "session": [C("session", "-", "sh", "-c", "keyctl show; keyctl rdescribe @s"),
                C("session", "pkc:named{RUN}", "sh", "-c", "keyctl rdescribe @s"),
                C("session", "-", "/nonexistent/prog"), C("new_session", "a", "b"),
                C("session", stdin="keyctl rdescribe @s\n"),  # no program: $SHELL reads the script
                C("session", "pkc:shell{RUN}", stdin="keyctl id @s\n")],
    "new_session": [C("new_session")],
    "no_authority": [C("instantiate", "{k}", "x", "@s"), C("instantiate", "-x", "{k}", "4", "@s"),
                     C("pinstantiate", "{k}", "@s", stdin="x"), C("negate", "{k}", "10", "@s"),
                     C("negate", "{k}", "x", "@s"), C("reject", "{k}", "10", "rejected", "@s"),
                     C("reject", "{k}", "10", "bad", "@s"), C("reject", "{k}", "x", "revoked", "@s"),
                     C("reject", "{k}", "1", "13", "@s"), C("instantiate", "{k}", "x"), C("negate")],
    "unknown": [C("pkc-unknown"), C("unlinkx"), C("Show")],
}


@pytest.mark.parametrize("name", list(MUTATING))
def test_mutating_commands_twice(name: str) -> None:
    check({"mode": "twice", "steps": BASE + MUTATING[name]})


def test_new_session_replaces_the_parents_session() -> None:
    """new_session: KEYCTL_SESSION_TO_PARENT gives the calling shell the new keyring."""
    for tool in (KEYCTL, PYKEYCTL):
        script = f"before=$(keyctl id @s); new=$({tool} new_session pkc:ns); after=$(keyctl id @s); " \
                 '[ "$new" = "$after" ] && [ "$before" != "$after" ] && keyctl rdescribe @s'
        proc = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
        assert proc.returncode == 0, (tool, proc.stdout, proc.stderr)
        assert proc.stdout.endswith(";pkc:ns\n")


# ---------------------------------------------------------------------------------------------
# Non-root: permission denied and quota exhaustion, both tools in the user's fresh session.


def test_permission_denied_as_user(session_user: Any, fresh_session_keyring: int) -> None:
    from pam_keyinit_py import keyutils

    # A key of root's that the user may not even view (not possessed, no "other" bits).
    root_key = keyutils.add_key("user", "pkc:rootonly", b"secret", fresh_session_keyring)
    keyutils.setperm(root_key, 0x3F010000)
    steps = [
        S("newring", "pkc:ring", "@s", save="r"),
        S("add", "user", "pkc:viewonly", "hidden", "{r}", save="v"),
        S("setperm", "{v}", "0x01000000"),  # possessor may view; nobody may read or write
        S("add", "user", "pkc:none", "x", "{r}", save="n"),
        S("setperm", "{n}", "0"),
        S("newring", "pkc:closed", "{r}", save="c"),
        S("setperm", "{c}", "0x01010000"),
    ]
    cmds = [
        C("read", "{v}"), C("print", "{v}"), C("pipe", "{v}"), C("describe", "{v}"), C("update", "{v}", "x"),
        C("describe", "{n}"), C("rdescribe", "{n}"), C("list", "{r}"), C("show"), C("show", "-x", "{r}"),
        C("list", "{c}"), C("show", "{c}"), C("rlist", "{c}"),
        C("read", str(root_key)), C("describe", str(root_key)), C("setperm", str(root_key), "0"),
        C("link", str(root_key), "@s"), C("chown", "{v}", "0"), C("chgrp", "{v}", "0"),
        C("get_persistent", "@s", "0"), C("search", "@s", "user", "pkc:none"), C("timeout", "{n}", "5"),
        C("revoke", "{n}"), C("invalidate", "{n}"), C("clear", "{c}"), C("security", "{n}"),
        C("unlink", "{n}", "{c}"), C("id", "@u"),
    ]
    results = check({"mode": "same", "steps": steps + cmds}, user=session_user)
    errs = {r["runs"][0]["err"] for r in results}
    assert "keyctl_read_alloc: Permission denied\n" in errs
    assert "keyctl_describe_alloc: Permission denied\n" in errs
    outs = "".join(r["runs"][0]["out"] for r in results)
    assert "key inaccessible (Permission denied)" in outs


def test_quota_exhaustion_as_user(session_user: Any) -> None:
    steps = [
        S("newring", "pkc:ring", "@s", save="r"),
        S("add", "user", "pkc:small", "s", "{r}", save="k"),
        {"fill": True},
        C("add", "user", "pkc:more", "y" * 64, "@s"), C("padd", "user", "pkc:more", "@s", stdin="z" * 64),
        C("update", "{k}", "w" * 512), C("newring", "pkc:more", "@s"),
    ]
    results = check({"mode": "same", "steps": steps}, user=session_user)
    errs = [r["runs"][0]["err"] for r in results]
    assert errs[:2] == ["add_key: Disk quota exceeded\n"] * 2
    assert "keyctl_update: Disk quota exceeded\n" in errs


# ---------------------------------------------------------------------------------------------
# instantiate / pinstantiate / negate / reject with a real authority, from /sbin/request-key.


@pytest.fixture
def request_key_handler(tmp_path: Path):
    """A request-key.d rule for ``user pkctest:*`` running a handler that records its output."""
    from tests.conftest import require_root

    require_root()
    tmp_path.chmod(0o755)
    handler = tmp_path / "handler.sh"
    # $1 key, $2 description, $3 scenario name, $4 requester's session keyring; "tool" names the tool.
    handler.write_text(
        "#!/bin/sh\n"
        f"D={tmp_path}\n"
        'K=$1; S=$4; T=$(cat "$D/tool"); N=$3; export K S T\n'
        '. "$D/scenario.$N" >"$D/$2.out" 2>"$D/$2.err"; echo $? >"$D/$2.rc"\n'
    )
    conf = Path(f"/etc/request-key.d/pkc-{uuid.uuid4().hex[:8]}.conf")
    conf.write_text(f"create user pkctest:* * /bin/sh {handler} %k %d %c %S\n")
    try:
        yield tmp_path
    finally:
        conf.unlink()


SCENARIOS = {
    "inst": '$T instantiate $K "payload data" $S',
    "instx": "$T instantiate -x $K '01 02 ff' $S",
    "pinst": "printf 'piped' | $T pinstantiate $K $S",
    "pinstx": "printf '4142' | $T pinstantiate -x $K $S",
    "negate": "$T negate $K 30 $S",
    "reject": "$T reject $K 30 rejected $S",
    "reject_errno": "$T reject $K 30 13 $S",
    "authkey": '$T rdescribe @a; $T print @a; $T read @a; $T id @a | grep -c .; $T describe @a | cut -c 11-;'
               ' $T instantiate $K "x" 123456789; $T instantiate @s "x" $S; $T negate $K zz $S;'
               ' $T instantiate $K "done" 0',
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_instantiate_negate_reject_with_authority(request_key_handler: Path, scenario: str) -> None:
    (request_key_handler / f"scenario.{scenario}").write_text(SCENARIOS[scenario] + "\n")
    outcomes = []
    for tool in (KEYCTL, PYKEYCTL):
        desc = f"pkctest:{uuid.uuid4().hex[:8]}"
        (request_key_handler / "tool").write_text(tool)
        spec = {"mode": "single", "tool": tool, "steps": [
            C("request2", "user", desc, scenario, "@s"),
            O("print", f"%user:{desc}"),
        ]}
        # The same tool requests the key and, in the handler, instantiates or negates it.
        proc = subprocess.run(
            [VENV_PY, __file__, "--runner"], input=json.dumps(spec), capture_output=True, text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        first = json.loads(proc.stdout)["single"]
        handler = [(request_key_handler / f"{desc}.{ext}").read_text() for ext in ("out", "err", "rc")]
        requester = [(r["runs"][0]["err"], r["runs"][0]["rc"]) for r in first]
        printed = first[1]["runs"][0]["out"]
        outcomes.append((handler, requester, printed))
    (h1, r1, p1), (h2, r2, p2) = outcomes
    # Serials differ between the two requests: compare with them masked.
    mask = re.compile(r"\b\d{5,}\b|0x[0-9a-f]{8}|\b[0-9a-f]{5,8}\b")
    assert [mask.sub("N", x) for x in h2] == [mask.sub("N", x) for x in h1]
    assert r2 == r1 and p2 == p1
    if scenario == "inst":
        assert p1 == "payload data\n"
    if scenario == "negate":
        assert r1[0] == ("request_key: Required key not available\n", 1)


if __name__ == "__main__" and sys.argv[1:] == ["--runner"]:
    os.environ.setdefault("LANG", "C")
    _runner_main()
