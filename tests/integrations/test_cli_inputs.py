"""Every integration CLI answers any bytes on argv and stdin with a clear error, never a traceback.

The Docker helper is compared with upstream's Go helper built from
docker-credential-helpers (Debian's docker-credential-secretservice): its
``store`` decodes stdin with encoding/json before any D-Bus call, so for input
that fails to decode both must print the same line on stdout and exit 1.

The fuzz cases are seeded (reproducible) and bounded (200 per CLI).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess

import pytest

from tests.conftest import require

from .conftest import BIN

HELPER = str(BIN / "docker-credential-keyctl")
ANCHOR = "docker-credential-secretservice"
CASES = 200
# Errors the anchor prints while decoding (before it would reach D-Bus).
DECODE_ERRORS = ("invalid character ", "unexpected EOF", "EOF", "json: cannot unmarshal",
                 "bufio.Scanner: token too long", "no credentials server URL", "no credentials username")


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, KEYINIT_STORE_LOCATION="session",
               DBUS_SESSION_BUS_ADDRESS="unix:path=/nonexistent/bus")
    env.update(extra)
    return env


def helper(argv: list[bytes], stdin: bytes, exe: str = HELPER) -> subprocess.CompletedProcess:
    """Run a credential helper with raw bytes (the test's fresh session keyring is inherited)."""
    return subprocess.run([exe.encode(), *argv], input=stdin, capture_output=True, env=_env(), timeout=60)


def assert_clean(proc: subprocess.CompletedProcess, what: object) -> None:
    """No traceback, nothing on stderr (the protocol has only stdout), no internal-error fallback."""
    assert b"Traceback" not in proc.stdout + proc.stderr, (what, proc.stdout, proc.stderr)
    assert b"internal error" not in proc.stdout, (what, proc.stdout)
    assert proc.stderr == b"", (what, proc.stderr)


@pytest.fixture
def anchor() -> str:
    exe = shutil.which(ANCHOR)
    require(exe, f"{ANCHOR} (golang-docker-credential-helpers) not installed")
    return exe  # type: ignore[return-value]


# Inputs and the texts encoding/json gives them (checked against the anchor below).
MALFORMED = [
    (b"", "EOF"),
    (b"  \n\t", "EOF"),
    (b"{", "unexpected EOF"),
    (b'{"ServerURL":"x","Username":"u","Secret":"s3cr3t"', "unexpected EOF"),
    (b"x", "invalid character 'x' looking for beginning of value"),
    (b"not json s3cr3t", "invalid character 'o' in literal null (expecting 'u')"),
    (b'{"a" 1}', "invalid character '1' after object key"),
    (b'{"a":1 "b":2}', "invalid character '\"' after object key:value pair"),
    (b"{,}", "invalid character ',' looking for beginning of object key string"),
    (b'{"a":[1,]}', "invalid character ']' looking for beginning of value"),
    (b'{"a":[1 2]}', "invalid character '2' after array element"),
    (b'{"a":"\\q"}', "invalid character 'q' in string escape code"),
    (b'{"a":"\\u12x4"}', "invalid character 'x' in \\u hexadecimal character escape"),
    (b'{"a":"\x01"}', "invalid character '\\x01' in string literal"),
    (b'{"a":"\t"}', "invalid character '\\t' in string literal"),
    (b'{"a":tru}', "invalid character '}' in literal true (expecting 'e')"),
    (b'{"a":01}', "invalid character '1' after object key:value pair"),
    (b'{"a":-}', "invalid character '}' in numeric literal"),
    (b'{"a":1.}', "invalid character '}' after decimal point in numeric literal"),
    (b'{"a":1e}', "invalid character '}' in exponent of numeric literal"),
    (b"\xff", "invalid character '\u00ff' looking for beginning of value"),
    (b"\x00", "invalid character '\\x00' looking for beginning of value"),
    (b"'", "invalid character '\\'' looking for beginning of value"),
    (b"\\", "invalid character '\\\\' looking for beginning of value"),
    (b"\xa0", "invalid character '\\u00a0' looking for beginning of value"),
    (b"\xc3\xa9", "invalid character '\u00c3' looking for beginning of value"),
    (b'["x","u","s3cr3t"]', "json: cannot unmarshal array into Go value of type credentials.Credentials"),
    (b'"x"', "json: cannot unmarshal string into Go value of type credentials.Credentials"),
    (b"5 junk", "json: cannot unmarshal number into Go value of type credentials.Credentials"),
    (b"true", "json: cannot unmarshal bool into Go value of type credentials.Credentials"),
    (b'{"ServerURL":"x","Username":"u","Secret":12345}',
     "json: cannot unmarshal number into Go struct field Credentials.Secret of type string"),
    (b'{"serverurl":true,"Username":"a"}',
     "json: cannot unmarshal bool into Go struct field Credentials.ServerURL of type string"),
    (b'{"ServerURL":{"x":1},"Username":[1]}',
     "json: cannot unmarshal object into Go struct field Credentials.ServerURL of type string"),
    (b'{"Username":[],"ServerURL":{}}',
     "json: cannot unmarshal array into Go struct field Credentials.Username of type string"),
    (b"null", "no credentials server URL"),
    (b'{"ServerURL":"x"} {', "no credentials username"),
    (b'{"ServerURL":"x","Username":null}', "no credentials username"),
    (b'{"\xc5\xbferverURL":"x"}', "no credentials username"),  # U+017F folds to s, as in Go
    (b"x" * 65535 + b"\n", "invalid character 'x' looking for beginning of value"),
    (b"x" * 65536, "bufio.Scanner: token too long"),
    (b"x" * 65535 + b"\r\n", "bufio.Scanner: token too long"),
]


@pytest.mark.parametrize(("stdin", "message"), MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_store_input_gets_encoding_json_text_like_the_go_helper(
    anchor: str, stdin: bytes, message: str
) -> None:
    ours = helper([b"store"], stdin)
    theirs = helper([b"store"], stdin, exe=anchor)
    assert (theirs.returncode, theirs.stdout.decode()) == (1, message + "\n")
    assert (ours.returncode, ours.stdout) == (1, theirs.stdout)
    assert_clean(ours, stdin)
    assert b"s3cr3t" not in ours.stdout and b"12345" not in ours.stdout


def test_get_with_non_utf8_after_the_store_exists_is_not_found() -> None:
    # The reported bug: a UnicodeEncodeError traceback from layer 0 once the store keyring existed.
    stored = helper([b"store"], b'{"ServerURL":"https://r.example","Username":"u","Secret":"pw"}')
    assert stored.returncode == 0, stored.stdout
    for action in (b"get", b"erase"):
        for stdin in (b"ab\xff\n", b"\xed\xa0\x80", b"\xff" * 70, b"https://r.example\xff"):
            out = helper([action], stdin)
            assert (out.returncode, out.stdout) == (1, b"credentials not found in native keychain\n"), stdin
            assert_clean(out, stdin)
    # A NUL is part of the URL: no match, not a truncated look-up of "https://r.example".
    out = helper([b"get"], b"https://r.example\x00junk")
    assert (out.returncode, out.stdout) == (1, b"credentials not found in native keychain\n")
    assert helper([b"get"], b"https://r.example").returncode == 0


def test_store_refuses_raw_non_utf8_and_maps_lone_surrogates_as_go() -> None:
    out = helper([b"store"], b'{"ServerURL":"x","Username":"u","Secret":"\xff"}')
    assert (out.returncode, out.stdout) == (1, b"invalid credentials: not valid UTF-8\n")
    assert_clean(out, "raw")
    stored = helper([b"store"], b'{"ServerURL":"sur","Username":"u","Secret":"a\\ud800b"}')
    assert stored.returncode == 0, stored.stdout
    got = helper([b"get"], b"sur")
    assert json.loads(got.stdout)["Secret"] == "a\ufffdb"


def _mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(3)
        pos = rng.randrange(len(buf) + 1)
        if op == 0:
            buf.insert(pos, rng.choice(b'{}[]",:\\ \x00\xff\x01tfnu0-.eE'))
        elif op == 1 and buf:
            del buf[min(pos, len(buf) - 1)]
        elif buf:
            buf[min(pos, len(buf) - 1)] = rng.randrange(256)
    return bytes(buf)


def test_fuzz_docker_helper(anchor: str) -> None:
    """Random bytes, non-UTF-8 and NUL on stdin and argv: no traceback, exit 1, one line on stdout.

    Where the Go helper fails while decoding, the two texts must be identical.
    """
    rng = random.Random(15)
    helper([b"store"], b'{"ServerURL":"https://seed.example","Username":"u","Secret":"pw"}')
    valid = b'{"ServerURL":"https://r.example","Username":"ann","Secret":"pa55"}'
    compared = 0
    for n in range(CASES):
        kind = n % 4
        if kind == 0:
            argv, stdin = [b"store"], _mutate(rng, valid)
        elif kind == 1:
            argv, stdin = [rng.choice([b"get", b"erase", b"store"])], rng.randbytes(rng.randrange(0, 200))
        elif kind == 2:
            argv = [rng.choice([b"get", b"erase"])]
            stdin = b"https://seed.example" + rng.choice([b"\x00", b"\xff", b"\xc3", b"\xed\xa0\x80"])
        else:
            argv = [rng.randbytes(rng.randrange(1, 12)).replace(b"\x00", b"\x01")]
            argv += [b"x"] * rng.randrange(0, 2)
            stdin = rng.randbytes(rng.randrange(0, 50))
        ours = helper(argv, stdin)
        assert_clean(ours, (argv, stdin))
        if argv == [b"store"]:
            theirs = helper(argv, stdin, exe=anchor)
            if theirs.stdout.decode(errors="replace").startswith(DECODE_ERRORS):
                assert (ours.returncode, ours.stdout) == (1, theirs.stdout), (stdin, ours.stdout)
                compared += 1
                continue
            if ours.returncode == 0:  # a mutation that is still valid credentials: stored
                assert ours.stdout == b"" and b"Could not connect" in theirs.stdout, stdin
                continue
        assert ours.returncode == 1, (argv, stdin, ours.stdout)
        assert ours.stdout.endswith(b"\n") and ours.stdout.count(b"\n") == 1, (argv, stdin, ours.stdout)
    assert compared > CASES // 5, compared  # the parity part really ran


# --- keyinit secret and the keyring CLI -------------------------------------------------------

KEYINIT = str(BIN / "keyinit")
KEYRING = str(BIN / "keyring")
BACKEND = "pam_keyinit_py.integrations.keyring_backend.KernelKeyring"


def run_cli(argv: list[bytes], stdin: bytes) -> subprocess.CompletedProcess:
    env = _env(PYTHON_KEYRING_BACKEND=BACKEND, LANG="C.UTF-8")
    return subprocess.run(argv, input=stdin, capture_output=True, env=env, timeout=60)


def _junk(rng: random.Random, n: int = 12) -> bytes:
    """Random argv bytes (execve cannot carry NUL) with at least one byte that is not UTF-8."""
    raw = bytearray(rng.randbytes(rng.randrange(0, n)).replace(b"\x00", b"\x01"))
    raw.insert(rng.randrange(len(raw) + 1), rng.choice(b"\xfe\xff"))  # never valid in UTF-8
    return bytes(raw)


def _word(rng: random.Random) -> bytes:
    return rng.choice([b"svc", b"user", b"a", b"imap", b"x y", b"\xc3\xa9t\xc3\xa9"])


def test_fuzz_keyinit_secret() -> None:
    """Every case holds one invalid ingredient: exit non-zero, a message on stderr, no traceback."""
    rng = random.Random(1515)
    for n in range(CASES):
        action = rng.choice([b"store", b"lookup", b"clear", b"search"])
        pairs = [_word(rng) for _ in range(2 * rng.randrange(1, 3))]
        stdin = rng.randbytes(rng.randrange(0, 80))
        kind = n % 6
        label = [b"--label=L"] if action == b"store" else []
        if kind == 0:  # an attribute or value that is not UTF-8
            pairs[rng.randrange(len(pairs))] = _junk(rng)
            expect = 2
        elif kind == 1:  # an attribute without a value
            pairs.append(_word(rng))
            expect = 2
        elif kind == 2:  # an unknown action
            action = _junk(rng)
            expect = 2
        elif kind == 3:  # an unknown option
            label.append(b"--" + _junk(rng).lstrip(b"-"))
            expect = 2
        elif kind == 4:  # a location that is not one
            label.append(b"--location=" + _junk(rng))
            expect = 1
        else:  # store: a secret or a label that is not UTF-8 (NUL bytes too)
            action = b"store"
            if rng.randrange(2):
                stdin = stdin + b"\x00" + rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80"])
                label = [b"--label=L"]
            else:
                label = [b"--label=" + _junk(rng)]
            expect = 1
        argv = [KEYINIT.encode(), b"secret", action, *label, *pairs]
        out = run_cli(argv, stdin)
        assert b"Traceback" not in out.stdout + out.stderr, (argv, out.stderr)
        assert out.returncode == expect, (argv, stdin, out.returncode, out.stderr)
        assert out.stdout == b"" and out.stderr.endswith(b"\n") and len(out.stderr) > 10, (argv, out)


def test_keyinit_secret_keeps_nul_bytes_verbatim() -> None:
    secret = b"a\x00b\x00\n"
    stored = run_cli([KEYINIT.encode(), b"secret", b"store", b"--label=L", b"nul", b"1"], secret)
    assert stored.returncode == 0, stored.stderr
    got = run_cli([KEYINIT.encode(), b"secret", b"lookup", b"nul", b"1"], b"")
    assert (got.returncode, got.stdout) == (0, secret)


def test_fuzz_keyring_cli() -> None:
    """keyring's CLI on the kernel backend: invalid input exits non-zero without a traceback.

    keyring's CLI itself catches no backend error; this backend makes its errors one line
    on stderr there.  ``get`` of something absent exits 1 silently, as keyring's CLI does.
    """
    rng = random.Random(2525)
    for n in range(CASES):
        kind = n % 5
        service, user = _word(rng), _word(rng)
        stdin = rng.randbytes(rng.randrange(0, 60)).replace(b"\n", b"")
        if kind == 0:  # set: a password that is not UTF-8 (NUL too)
            argv, stdin = [b"set", service, user], stdin + b"\x00\xff\n"
            expect, says = 1, b"keyring: PasswordSetError: secret must be valid UTF-8 text"
        elif kind == 1:  # set: a service or user name that is not UTF-8
            argv = [b"set", _junk(rng), user] if n % 2 else [b"set", service, _junk(rng)]
            stdin = b"pw\n"
            expect, says = 1, b"keyring: PasswordSetError: attributes and label must be valid UTF-8 text"
        elif kind == 2:  # del: nothing stored under a name that is not UTF-8
            argv = [b"del", _junk(rng), user]
            expect, says = 1, b"keyring: PasswordDeleteError: Password not found"
        elif kind == 3:  # get: nothing stored: exit 1, silently (keyring's CLI)
            argv = [b"get", _junk(rng), _junk(rng)]
            expect, says = 1, b""
        else:  # an operation that is not one
            argv = [_junk(rng), service, user]
            expect, says = 2, b"error: argument operation: invalid choice"
        out = run_cli([KEYRING.encode(), *argv], stdin)
        assert b"Traceback" not in out.stdout + out.stderr, (argv, out.stderr)
        assert out.returncode == expect and out.stdout == b"", (argv, stdin, out.returncode, out.stdout)
        assert says in out.stderr and (says or out.stderr == b""), (argv, out.stderr)
