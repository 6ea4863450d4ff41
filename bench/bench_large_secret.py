"""A 64 KiB secret's round trip (store, then read back), ours beside keyctl(1) in the same run.

- ours, library: SecretStore.store + lookup (three user keys in a payload keyring, published in
  the item keyring by one KEYCTL_LINK), in-process;
- ours, CLI: ``docker-credential-keyctl store`` then ``get`` with the largest line Docker's
  protocol allows (65,535 bytes), two processes as Docker runs them;
- anchor: keyutils' C ``keyctl``: the same bytes need two ``user`` keys there (32,767 bytes
  each at most): ``padd`` twice, ``pipe`` twice, four processes.

All in one fresh session keyring (store location ``session``), as root.
Run: ``make bench ONLY=large_secret``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from pathlib import Path

from pam_keyinit_py import keyutils
from pam_keyinit_py.integrations.secret_store import SecretStore

REPO = Path(__file__).resolve().parent.parent
HELPER = str(REPO / ".venv" / "bin" / "docker-credential-keyctl")
ROUNDS = 15


def _median_ms(fn) -> float:  # noqa: ANN001
    times = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    keyutils.join_session_keyring(None)
    env = dict(os.environ, KEYINIT_STORE_LOCATION="session")
    empty = json.dumps({"ServerURL": "https://b.example", "Username": "u", "Secret": ""},
                       separators=(",", ":"))
    secret = "s" * (65535 - len(empty))
    line = (empty[:-2] + secret + '"}').encode() + b"\n"
    assert len(line) == 65536

    store = SecretStore("session")

    def library() -> None:
        store.store({"bench": "1"}, "L", secret)
        assert store.lookup({"bench": "1"}) == secret

    def cli() -> None:
        subprocess.run([HELPER, "store"], input=line, check=True, env=env, capture_output=True)
        got = subprocess.run([HELPER, "get"], input=b"https://b.example\n", check=True, env=env,
                             capture_output=True)
        assert len(got.stdout) == len(line)

    halves = [secret[:32767].encode(), secret[32767:].encode()]

    def anchor() -> None:
        keys = [subprocess.run(["keyctl", "padd", "user", f"bench:{i}", "@s"], input=half, check=True,
                               capture_output=True).stdout.strip() for i, half in enumerate(halves)]
        data = b"".join(subprocess.run(["keyctl", "pipe", k], check=True, capture_output=True).stdout
                        for k in keys)
        assert len(data) == len(secret)

    results = {"ours (library, in-process)": _median_ms(library),
               "ours (docker-credential-keyctl store+get)": _median_ms(cli),
               "anchor (keyctl padd x2 + pipe x2)": _median_ms(anchor)}
    for name, ms in results.items():
        print(f"  {name:45s} {ms:8.2f} ms (median of {ROUNDS})")
    ours, anchor_ms = results["ours (docker-credential-keyctl store+get)"], results[
        "anchor (keyctl padd x2 + pipe x2)"]
    ratio = ours / anchor_ms
    print(f"  CLI round trip / keyctl anchor: {ratio:.2f}x")


if __name__ == "__main__":
    main()
