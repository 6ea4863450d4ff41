"""pykeyctl beside keyutils 1.6.3's keyctl: the watch family, --test, and a seeded fuzz of every command.

Each case runs both tools as separate processes, each in a fresh session
keyring (``keyctl session -``), and compares exit codes and stderr bytes, and
stdout bytes with key serials masked.

This kernel has no key notifications (no CONFIG_WATCH_QUEUE: pipe2 with
O_NOTIFICATION_PIPE fails with ENOPKG, KEYCTL_WATCH_KEY with EOPNOTSUPP), so
only the argument handling and those errors can be compared with the kernel;
the consumer's decoding of notification records is checked on a plain pipe
carrying records in the kernel's layout.
"""

from __future__ import annotations

import json
import os
import random
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require, require_root, temporary_user

REPO = Path(__file__).resolve().parents[2]
PYKEYCTL = str(REPO / ".venv" / "bin" / "pykeyctl")
VENV_PY = str(REPO / ".venv" / "bin" / "python")
KEYCTL = "/usr/bin/keyctl"
CASES = 200

# Runs as the caller (root or a test user): each case through both tools, results as JSON.
RUNNER = r"""
import json, subprocess, sys
cases = json.load(sys.stdin)
out = []
for case in cases:
    runs = []
    for tool in (sys.argv[1], sys.argv[2]):
        argv = [b"/usr/bin/keyctl", b"session", b"-", tool.encode()]
        argv += [bytes.fromhex(a) for a in case["argv"]]
        env = dict(case.get("env", {}), PATH="/usr/bin:/bin")
        p = subprocess.run(argv, input=bytes.fromhex(case["stdin"]), capture_output=True, timeout=60, env=env)
        err = b"".join(l for l in p.stderr.splitlines(True) if not l.startswith(b"Joined session keyring: "))
        runs.append({"rc": p.returncode, "out": p.stdout.hex(), "err": err.hex()})
    out.append(runs)
json.dump(out, sys.stdout)
"""

_SERIAL = re.compile(
    rb"(?<![0-9A-Za-z])-?[0-9]{5,10}(?![0-9A-Za-z])|(?<![0-9A-Za-z])[0-9a-f]{8}(?![0-9A-Za-z])")


def _mask(data: bytes) -> bytes:
    return _SERIAL.sub(b"N", data)


def run_pairs(cases: list[dict], user=None) -> list[list[dict]]:  # noqa: ANN001
    """Run each case through keyctl and pykeyctl; [[keyctl's run, pykeyctl's run], ...]."""
    require(os.path.exists(KEYCTL), "keyctl (keyutils) not installed")
    payload = json.dumps([{"argv": [a.hex() for a in c["argv"]], "stdin": c.get("stdin", b"").hex(),
                           "env": c.get("env", {})} for c in cases])
    argv = [VENV_PY, "-c", RUNNER, KEYCTL, PYKEYCTL]
    if user is None:
        proc = subprocess.run(argv, input=payload, capture_output=True, text=True, timeout=900)
    else:
        proc = user.run(argv, input=payload, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout)
    return [[{"rc": r["rc"], "out": bytes.fromhex(r["out"]), "err": bytes.fromhex(r["err"])} for r in pair]
            for pair in results]


def assert_same(cases: list[dict], results: list[list[dict]], mask: bool = False) -> None:
    for case, (theirs, ours) in zip(cases, results, strict=True):
        assert b"Traceback" not in ours["err"], (case, ours["err"][-500:])
        outs = (_mask(theirs["out"]), _mask(ours["out"])) if mask else (theirs["out"], ours["out"])
        assert (theirs["rc"], theirs["err"], outs[0]) == (ours["rc"], ours["err"], outs[1]), case


def _c(*argv: str | bytes, stdin: bytes = b"", env: dict | None = None) -> dict:
    return {"argv": [a.encode() if isinstance(a, str) else a for a in argv], "stdin": stdin, "env": env or {}}


WATCH_CASES = [
    _c("watch"), _c("watch", "-x", "@s"), _c("watch", "-f"), _c("watch", "-fz", "@s"),
    _c("watch", "@s", "@s"),
    _c("watch", "bad"), _c("watch", "@s"), _c("watch", "@s", "-fi"), _c("watch", "-fi", "@s"),
    _c("watch", "-f", "iplncrvs", "@s"), _c("watch", "--", "-fi"), _c("watch", "--foo"), _c("watch", "-"),
    _c("watch", "-fi", "-fz", "@s"), _c("watch", "-fz", "-x"), _c("watch", "-x", "-fz"),
    _c("watch", "-f:", "@s"),
    _c("watch", "-:", "@s"), _c("watch", b"-f\xff", "@s"), _c("watch", b"\xff"), _c("watch", "%:nothing"),
    _c("watch", "@s", "-x", env={"POSIXLY_CORRECT": "1"}),
    _c("watch", "-fi", "@s", env={"POSIXLY_CORRECT": "1"}),
    _c("watch_add"), _c("watch_add", "3"), _c("watch_add", "x", "@s"), _c("watch_add", "3", "@s"),
    _c("watch_add", "3", "bad"), _c("watch_add", "3", "@s", "x"), _c("watch_add", " 3x", "@s"),
    _c("watch_rm", "3", "@s"), _c("watch_rm", "-1", "@s"), _c("watch_rm", "3"),
    _c("watch_sync"), _c("watch_sync", "3"), _c("watch_sync", "x"), _c("watch_sync", "0"),
    _c("watch_sync", "99999999999"), _c("watch_sync", "-5"), _c("watch_sync", "1", "2"),
    _c("watch_sync", "0", stdin=b""),
    _c("watch_session"), _c("watch_session", "a", "b", "3"), _c("watch_session", "a", "b", "2", "sh"),
    _c("watch_session", "a", "b", "10", "sh"), _c("watch_session", "/nonexistent/a", "b", "5", "true"),
    _c("watch_session", "-x"), _c("watch_session", "-n"), _c("watch_session", "-fq", "a", "b", "3", "c"),
    _c("watch_session", "a", "-x", "b", "c"), _c("watch_session", "-d", "a", "b", "3"),
    _c("watch_session", "--", "a", "b", "x", "y"), _c("watch_session", "a", "b", " 4x", "y"),
    _c("watch_session", "-n", "name", "-fi", "a", "b", "9", "true"),
]


def test_watch_family_matches_keyctl_byte_for_byte() -> None:
    require_root()
    results = run_pairs(WATCH_CASES)
    assert_same(WATCH_CASES, results)
    by_args = {tuple(c["argv"]): pair[0] for c, pair in zip(WATCH_CASES, results, strict=True)}
    # This kernel's answers, as keyctl gives them (what "no key notifications" looks like here).
    if not os.path.exists("/dev/watch_queue"):
        assert by_args[(b"watch", b"@s")]["err"] in (b"pipe2: Package not installed\n",)
        assert by_args[(b"watch_add", b"3", b"@s")]["err"] == b"keyctl_watch_key: Operation not supported\n"
    assert by_args[(b"watch",)]["rc"] == 2 and by_args[(b"watch",)]["err"].startswith(b"Format:\n")


TEST_CASES = [
    _c("--test"), _c("--test", "x"), _c("--test", "limits", "x"), _c("--test", "limit"),
    _c("--test", "limits2", "y"), _c("--test", "limits"), _c("--test", b"\xff"),
]


def test_hidden_test_command_matches_keyctl() -> None:
    """--test limits runs both tools' full 8192-step walk; usage and unknown names too."""
    require_root()
    assert_same(TEST_CASES, run_pairs(TEST_CASES))


def test_hidden_test_limits2_matches_keyctl() -> None:
    """--test limits2: a million add_key(2) calls each (about 20 s per tool here)."""
    require_root()
    cases = [_c("--test", "limits2")]
    results = run_pairs(cases)
    assert_same(cases, results)
    assert results[0][1]["rc"] == 0 and results[0][1]["out"].startswith(b"TEST SIZE       0 .")


def _pool(rng: random.Random) -> bytes:
    choices = [b"@s", b"@p", b"@t", b"@g", b"@a", b"@x", b"%user:pkf", b"%:pkf", b"%bad", b"0", b"-1",
               b"0x10", b"12345", b"user", b"keyring", b"logon", b"pkf:d", b"-x", b"-f", b"-v", b"-s",
               b"-p", b"-i", b"--raw", b"--json", b"", b"3", b"persistent_keyrings", b"0x3f3f0000",
               b"rejected", b";"]
    if rng.randrange(3) == 0:
        raw = rng.randbytes(rng.randrange(1, 10)).replace(b"\x00", b"\x01")
        return raw + rng.choice([b"\xff", b"\xc3", b""])
    return rng.choice(choices)


def test_fuzz_every_command_as_user_matches_keyctl() -> None:
    """200 seeded random command lines (non-UTF-8 and odd bytes in argv, NUL on stdin), as a user.

    Excluded: commands that start programs or the request-key upcall (session,
    new_session, watch_session, request2, prequest2), the ones that wait by
    design (watch; watch_sync on a stdin pipe still holding data, as keyctl
    does), --test (above), and the ones pykeyctl does not provide (dh_compute*, pkey_*).
    """
    require_root()
    from pam_keyinit_py.keyctl.cli import FORMATS

    skip = {"session", "new_session", "watch_session", "request2", "prequest2", "--test",
            "watch", "watch_sync"}
    names = sorted({n for n, _ in FORMATS if n not in skip and not n.startswith(("dh_", "pkey_"))})
    rng = random.Random(1563)
    cases = []
    for n in range(CASES):
        if n % 10 == 0:
            argv = [rng.randbytes(rng.randrange(1, 8)).replace(b"\x00", b"\x01")]
        else:
            argv = [rng.choice(names).encode()]
        argv += [_pool(rng) for _ in range(rng.randrange(0, 5))]
        stdin = rng.randbytes(rng.randrange(0, 64)) if rng.randrange(2) else b"\x00ab\xff"
        cases.append(_c(*argv, stdin=stdin))
    with temporary_user("pkf") as user:
        results = run_pairs(cases, user=user)
    assert_same(cases, results, mask=True)
    assert sum(pair[0]["rc"] != 0 for pair in results) > CASES // 2  # mostly invalid lines, as meant


# --- the consumer, on records in the kernel's layout -------------------------------------------


def _record(kind: int, subtype: int, body: bytes, watch_id: int = 0) -> bytes:
    length = 8 + len(body)
    return struct.pack("=II", kind | subtype << 24, length | watch_id << 8) + body


def test_consumer_decodes_notification_records() -> None:
    """keyctl's consumer() output for each record type, from a plain pipe (no watch queue needed)."""
    from pam_keyinit_py.keyctl import watch

    records = b"".join([
        _record(1, 0, struct.pack("=II", 100, 0)),  # instantiated
        _record(1, 2, struct.pack("=II", 101, 7)),  # linked 7
        _record(1, 3, struct.pack("=II", 101, 7)),  # unlinked 7
        _record(1, 6, struct.pack("=II", 102, 0)),  # invalidated
        _record(0, 1, b""),  # loss
        _record(1, 9, struct.pack("=II", 1, 1)),  # an unknown subtype: ignored
        _record(0, 0, struct.pack("=Q", 103), watch_id=2),  # removal of a watch_add watch
    ])
    rfd, wfd = os.pipe()
    log_r, log_w = os.pipe()
    os.write(wfd, records)
    os.close(wfd)
    log = watch._Log(log_w)
    assert watch.consumer(log, log, rfd) == 0  # end of the pipe: "-- END --"
    os.close(log_w)
    text = os.read(log_r, 4096).decode()
    assert text == "100 inst\n101 link 7\n101 unlk 7\n102 inv\n-- LOSS --\n103 gc\n-- END --\n"
    os.close(rfd)
    os.close(log_r)


def test_consumer_stops_at_the_removal_of_the_main_watch() -> None:
    from pam_keyinit_py.keyctl import watch

    rfd, wfd = os.pipe()
    os.write(wfd, _record(0, 0, struct.pack("=Q", 55), watch_id=1) + _record(1, 0, struct.pack("=II", 1, 0)))
    log_r, log_w = os.pipe()
    assert watch.consumer(watch._Log(log_w), watch._Log(log_w), rfd) == 0
    os.close(log_w)
    assert os.read(log_r, 100) == b"55 gc\n"  # keyctl exits at watch id 1's removal
    for fd in (rfd, wfd, log_r):
        os.close(fd)


def test_consumer_rejects_a_bad_record_length() -> None:
    rfd, wfd = os.pipe()
    os.write(wfd, struct.pack("=II", 1, 4))  # length 4 < header
    os.close(wfd)
    proc = subprocess.run([sys.executable, "-c", "import sys; from pam_keyinit_py.keyctl import watch; "
                           "sys.exit(watch.consumer(watch._Log(1), watch._Log(1), 0))"],
                          stdin=rfd, capture_output=True, cwd=REPO)
    os.close(rfd)
    assert (proc.returncode, proc.stderr) == (1, b"Bad message length: 4/8\n")


@pytest.mark.parametrize(("arg", "value"), [(b"3", 3), (b" 3x", 3), (b"x", 0), (b"-5", -5),
                                            (b"99999999999", 1215752191), (b"+7", 7), (b"", 0)])
def test_atoi_is_glibcs(arg: bytes, value: int) -> None:
    from pam_keyinit_py.keyctl.watch import atoi

    assert atoi(arg) == value
