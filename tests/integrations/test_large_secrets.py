"""Secrets up to the Docker protocol's 64 KiB line, larger than one ``user`` key (32,767 bytes).

Through the real CLIs (docker-credential-keyctl, the ``keyring`` CLI on the
``kernel`` backend), as root and as a non-root user.  A non-root uid's default
quota (20000 bytes) cannot hold such a secret: the error must say which
sysctl to raise; with kernel.keys.maxbytes raised (restored afterwards) the
round trip must succeed.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pam_keyinit_py.integrations.docker_credential import MAX_LINE
from tests.conftest import require_root

from .conftest import BIN, run_fresh

HELPER = str(BIN / "docker-credential-keyctl")
KEYRING = str(BIN / "keyring")
BACKEND = {"PYTHON_KEYRING_BACKEND": "pam_keyinit_py.integrations.keyring_backend.KernelKeyring"}
MAXBYTES = Path("/proc/sys/kernel/keys/maxbytes")


def largest_credentials(url: str = "https://big.example") -> tuple[str, str]:
    """(the JSON line, its secret) with the line exactly MAX_LINE - 1 bytes, the most Go reads."""
    empty = json.dumps({"ServerURL": url, "Username": "ann", "Secret": ""}, separators=(",", ":"))
    # No character JSON escapes (Go's encoder also escapes < > &): the line's length is exact.
    alphabet = "".join(c for c in map(chr, range(0x21, 0x7F)) if c not in '"\\<>&')
    secret = "".join(alphabet[i % len(alphabet)] for i in range(MAX_LINE - 1 - len(empty)))
    line = json.dumps({"ServerURL": url, "Username": "ann", "Secret": secret}, separators=(",", ":"))
    assert len(line.encode()) == MAX_LINE - 1
    return line, secret


@pytest.fixture
def raised_quota() -> Iterator[None]:
    """kernel.keys.maxbytes raised for the test (a 64 KiB secret needs ~70 KB, twice while replaced)."""
    require_root()
    old = MAXBYTES.read_text()
    MAXBYTES.write_text("300000\n")
    try:
        yield
    finally:
        MAXBYTES.write_text(old)


def _docker_round_trip(run) -> None:  # noqa: ANN001 - run(argv, stdin) -> CompletedProcess
    line, secret = largest_credentials()
    stored = run([HELPER, "store"], line + "\n")
    assert (stored.returncode, stored.stdout) == (0, ""), stored.stdout[:300]
    got = run([HELPER, "get"], "https://big.example\n")
    assert got.returncode == 0, got.stdout[:300]
    same = got.stdout == line + "\n"  # Go's encoding of the same struct: byte for byte
    assert same, f"get returned {len(got.stdout)} bytes, not the {len(line) + 1} stored"
    assert json.loads(run([HELPER, "list"], "").stdout) == {"https://big.example": "ann"}
    # One byte more than bufio.Scanner takes: refused as the Go helpers refuse it.
    longer = line.replace('"Secret":"', '"Secret":"x', 1)
    too_long = run([HELPER, "store"], longer + "\n")
    assert (too_long.returncode, too_long.stdout) == (1, "bufio.Scanner: token too long\n")
    assert run([HELPER, "erase"], "https://big.example").returncode == 0
    assert run([HELPER, "get"], "https://big.example").stdout == "credentials not found in native keychain\n"
    assert len(secret) > 32767  # more than one user key holds


def _keyring_round_trip(run) -> None:  # noqa: ANN001
    password = "p" * 65536
    stored = run([KEYRING, "set", "big-svc", "ann"], password + "\n")
    assert stored.returncode == 0, stored.stderr[-500:]
    got = run([KEYRING, "get", "big-svc", "ann"], "")
    same = got.stdout == password + "\n"
    assert got.returncode == 0 and same, (got.returncode, len(got.stdout), got.stderr[-500:])
    assert run([KEYRING, "del", "big-svc", "ann"], "").returncode == 0
    assert run([KEYRING, "get", "big-svc", "ann"], "").returncode == 1


def test_64k_round_trip_as_root() -> None:
    require_root()
    env = dict(os.environ, KEYINIT_STORE_LOCATION="session", **BACKEND)

    def run(argv: list[str], stdin: str) -> subprocess.CompletedProcess:
        return subprocess.run(argv, input=stdin, capture_output=True, text=True, env=env, timeout=120)

    _docker_round_trip(run)
    _keyring_round_trip(run)


def test_64k_round_trip_as_user_with_raised_quota(pki_user, raised_quota: None) -> None:  # noqa: ANN001
    def run(argv: list[str], stdin: str) -> subprocess.CompletedProcess:
        return run_fresh(pki_user, argv, input=stdin, env=BACKEND, timeout=120)

    _docker_round_trip(run)
    _keyring_round_trip(run)


def test_64k_at_the_default_quota_names_the_sysctl(pki_user) -> None:  # noqa: ANN001
    assert int(MAXBYTES.read_text()) <= 20000, "the host's default non-root quota was raised"
    line, secret = largest_credentials()
    out = run_fresh(pki_user, [HELPER, "store"], input=line + "\n")
    assert out.returncode == 1
    assert out.stdout.startswith(f"key quota exceeded for uid {pki_user.uid} ("), out.stdout
    assert "raise kernel.keys.maxbytes (e.g. in /etc/sysctl.d/60-keyinit-keys.conf" in out.stdout
    assert secret[:40] not in out.stdout + out.stderr
    # Nothing half-stored: no item, no chunk keyring left behind.
    assert run_fresh(pki_user, [HELPER, "list"]).stdout == "{}\n"
    kr = run_fresh(pki_user, [KEYRING, "set", "big-svc", "ann"], input="p" * 65536 + "\n", env=BACKEND)
    assert kr.returncode != 0
    assert "raise kernel.keys.maxbytes" in kr.stderr and "Traceback" not in kr.stderr, kr.stderr[-800:]
