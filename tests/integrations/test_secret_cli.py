"""``keyinit secret`` against secret-tool's semantics, case by case.

Most cases run the real console script as root in the test's fresh session
keyring (KEYINIT_STORE_LOCATION=session, inherited by the child); the default
(persistent) store and the quota are exercised as a non-root "pki" user.
"""

from __future__ import annotations

import os
import pty
import select
import subprocess

import pytest

from pam_keyinit_py import keyutils

from .conftest import BIN, run_fresh

KEYINIT = str(BIN / "keyinit")


def secret(*args: str, input: bytes | None = b"", env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``keyinit secret ARGS`` as root, in this test's session keyring, stdin from ``input``."""
    environ = {**os.environ, "KEYINIT_STORE_LOCATION": "session", **(env or {})}
    return subprocess.run([KEYINIT, "secret", *args], input=input, capture_output=True, env=environ,
                          timeout=60)


def test_store_then_lookup_prints_the_secret_without_newline_when_not_a_tty() -> None:
    assert secret("store", "--label=Mail", "service", "imap", "user", "ann", input=b"pa ss").returncode == 0
    out = secret("lookup", "service", "imap", "user", "ann")
    assert (out.returncode, out.stdout, out.stderr) == (0, b"pa ss", b"")


def test_stdin_is_stored_verbatim_including_trailing_newline() -> None:
    secret("store", "--label=x", "k", "v", input=b"line\n")
    assert secret("lookup", "k", "v").stdout == b"line\n"


def test_lookup_without_match_exits_1_silently() -> None:
    secret("store", "--label=x", "service", "imap", input=b"s")
    out = secret("lookup", "service", "pop")
    assert (out.returncode, out.stdout, out.stderr) == (1, b"", b"")


def test_attributes_match_by_exact_equality_only() -> None:
    secret("store", "--label=x", "service", "imap", input=b"s")
    for value in ("ima", "IMAP", "imap ", "imapx", ""):
        assert secret("lookup", "service", value).returncode == 1, value
    assert secret("lookup", "Service", "imap").returncode == 1
    assert secret("lookup", "service", "imap").stdout == b"s"


def test_a_query_matches_items_with_more_attributes() -> None:
    secret("store", "--label=x", "service", "imap", "user", "ann", input=b"ann-pw")
    assert secret("lookup", "user", "ann").stdout == b"ann-pw"
    # ...but not when a queried attribute is missing from the item.
    assert secret("lookup", "user", "ann", "host", "h").returncode == 1


def test_same_attribute_set_replaces_and_different_set_adds() -> None:
    secret("store", "--label=one", "service", "imap", "user", "ann", input=b"first")
    secret("store", "--label=two", "user", "ann", "service", "imap", input=b"second")  # same set, other order
    out = secret("search", "--all", "service", "imap")
    assert out.stdout.count(b"label = ") == 1
    assert b"label = two" in out.stdout and b"secret = second" in out.stdout
    secret("store", "--label=three", "service", "imap", "user", "bob", input=b"bob-pw")
    out = secret("search", "--all", "service", "imap")
    assert out.stdout.count(b"label = ") == 2
    assert secret("lookup", "service", "imap", "user", "bob").stdout == b"bob-pw"
    assert secret("lookup", "service", "imap", "user", "ann").stdout == b"second"


def test_clear_removes_every_match_and_exits_1_when_none() -> None:
    secret("store", "--label=a", "app", "x", "user", "a", input=b"1")
    secret("store", "--label=b", "app", "x", "user", "b", input=b"2")
    secret("store", "--label=c", "app", "y", input=b"3")
    assert secret("clear", "app", "x").returncode == 0
    assert secret("lookup", "app", "x").returncode == 1
    assert secret("lookup", "app", "y").stdout == b"3"
    out = secret("clear", "app", "x")
    assert (out.returncode, out.stdout, out.stderr) == (1, b"", b"")


def test_search_prints_first_match_or_all_in_secret_tool_format() -> None:
    secret("store", "--label=First", "kind", "db", "name", "a", input=b"pa")
    secret("store", "--label=Second", "kind", "db", "name", "b", input=b"pb")
    one = secret("search", "kind", "db")
    assert one.returncode == 0
    lines = one.stdout.decode().splitlines()
    assert lines[0].startswith("[") and lines[0].endswith("]") and lines[0][1:-1].isdigit()
    assert [line.split(" = ")[0] for line in lines[1:]] == [
        "label", "secret", "created", "modified", "attribute.kind", "attribute.name"]
    assert "attribute.kind = db" in lines
    every = secret("search", "--all", "--unlock", "kind", "db").stdout.decode()
    assert every.count("label = ") == 2
    assert "secret = pa" in every and "secret = pb" in every
    none = secret("search", "kind", "nothing")
    assert (none.returncode, none.stdout) == (0, b"")


def test_usage_errors_exit_2_with_secret_tool_messages() -> None:
    out = secret("store", "--label=x", "service", input=b"top-secret")
    assert out.returncode == 2 and b"must specify attributes and values in pairs" in out.stderr
    assert b"top-secret" not in out.stderr + out.stdout
    out = secret("lookup")
    assert out.returncode == 2 and b"must specify attribute and value pairs" in out.stderr
    out = secret("store", "service", "x", input=b"top-secret")
    assert out.returncode == 2 and b"must specify a label for the new item" in out.stderr
    assert secret().returncode == 2


def test_unknown_location_and_bad_utf8_exit_1_with_a_clear_message() -> None:
    out = secret("lookup", "--location", "attic", "a", "b")
    assert out.returncode == 1 and b"unknown keyring location 'attic'" in out.stderr
    out = secret("lookup", "a", "b", env={"KEYINIT_STORE_LOCATION": "cloud"})
    assert out.returncode == 1 and b"unknown keyring location 'cloud'" in out.stderr
    out = secret("store", "--label=x", "a", "b", input=b"\xff\xfe")
    assert out.returncode == 1 and b"password not valid UTF-8" in out.stderr
    assert secret("lookup", "a", "b").returncode == 1


def _in_pty(argv: list[str], typed: bytes = b"") -> tuple[int, bytes]:
    """Run argv with a pseudo-terminal as controlling tty, stdin and stdout; type ``typed``."""
    env = dict(os.environ, KEYINIT_STORE_LOCATION="session")
    pid, fd = pty.fork()
    if pid == 0:  # child: the pty is its controlling terminal (/dev/tty for getpass)
        os.execve(argv[0], argv, env)
    out = b""
    sent = False
    while True:
        ready, _, _ = select.select([fd], [], [], 30)
        if not ready:
            break
        try:
            chunk = os.read(fd, 1024)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
        if typed and not sent and b"Password: " in out:
            os.write(fd, typed)
            sent = True
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), out


def test_tty_prompt_does_not_echo_and_lookup_adds_newline_on_a_tty() -> None:
    rc, out = _in_pty([KEYINIT, "secret", "store", "--label=tty", "via", "tty"], b"typed-pw\n")
    assert rc == 0
    assert b"Password: " in out
    assert b"typed-pw" not in out  # no echo
    # getpass strips the newline the user typed
    assert secret("lookup", "via", "tty").stdout == b"typed-pw"
    rc, out = _in_pty([KEYINIT, "secret", "lookup", "via", "tty"])
    assert rc == 0 and out == b"typed-pw\r\n"


def test_items_are_possessor_only_user_keys(fresh_session_keyring: int) -> None:
    secret("store", "--label=x", "perm", "check", input=b"v")
    ring = next(k for k in keyutils.keyring_ids(fresh_session_keyring)
                if keyutils.describe(k).endswith(b";keyinit:secrets"))
    (key,) = keyutils.keyring_ids(ring)
    kind, _uid, _gid, perm, desc = keyutils.describe(key).decode().split(";", 4)
    assert (kind, int(perm, 16), desc) == ("user", keyutils.KEY_POS_ALL, '{"perm":"check"}')
    assert int(keyutils.describe(ring).decode().split(";")[3], 16) == keyutils.KEY_POS_ALL


# --- as a non-root user, default (persistent) location ---------------------------------------

def test_as_user_default_store_survives_the_session(pki_user) -> None:
    env = {"KEYINIT_STORE_LOCATION": ""}
    stored = run_fresh(pki_user, ["keyinit", "secret", "store", "--label=L", "svc", "x"], input="pw-user",
                       env=env)
    assert stored.returncode == 0, stored.stderr
    # A second, unrelated session (a new login) finds it: it lives in the persistent keyring.
    got = run_fresh(pki_user, ["keyinit", "secret", "lookup", "svc", "x"], env=env)
    assert (got.returncode, got.stdout) == (0, "pw-user")
    # ...whose owner is the user and whose permissions grant nothing beyond possession.
    script = "p=$(keyctl get_persistent @s) && keyctl rdescribe $(keyctl search $p keyring keyinit:secrets)"
    desc = run_fresh(pki_user, ["sh", "-c", script])
    assert desc.stdout.strip() == f"keyring;{pki_user.uid};{pki_user.gid};3f000000;keyinit:secrets"
    # A session-location lookup does not see the persistent item.
    assert run_fresh(pki_user, ["keyinit", "secret", "lookup", "--location=session", "svc", "x"]
                     ).returncode == 1
    assert run_fresh(pki_user, ["keyinit", "secret", "clear", "svc", "x"], env=env).returncode == 0
    assert run_fresh(pki_user, ["keyinit", "secret", "lookup", "svc", "x"], env=env).returncode == 1


def test_as_user_quota_exhaustion_is_reported_without_the_secret(pki_user) -> None:
    # 20000 bytes per uid: three 8000-byte secrets cannot all fit.
    results = []
    for n in range(3):
        results.append(run_fresh(pki_user, ["keyinit", "secret", "store", "--label=big", "n", str(n)],
                                 input="Q" * 8000))
    failed = [r for r in results if r.returncode != 0]
    assert failed, "the 20000-byte quota should have been hit"
    assert failed[0].returncode == 1
    assert "quota exceeded" in failed[0].stderr
    assert "QQQQ" not in failed[0].stderr + failed[0].stdout


@pytest.mark.parametrize("location", ["user", "session"])
def test_as_user_other_locations_work(pki_module_user, location: str) -> None:
    script = ("printf %s v1 | keyinit secret store --label=L k v && keyinit secret lookup k v && "
              "keyinit secret search k v")
    out = run_fresh(pki_module_user, ["sh", "-c", script], env={"KEYINIT_STORE_LOCATION": location})
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("v1[")
    run_fresh(pki_module_user, ["keyinit", "secret", "clear", "k", "v"],
              env={"KEYINIT_STORE_LOCATION": location})
