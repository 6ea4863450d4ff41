"""What the PAM hook loads: it runs inside every login's interpreter, so each module is paid per login."""

from __future__ import annotations

import subprocess
import sys

from pam_keyinit_py.pam.shim import repo_paths


def _loaded(code: str) -> set[str]:
    """Modules of the package, and the heavy stdlib ones, that ``code`` loads in a fresh
    ``python3 -I`` whose path is the shim's (see pam/shim.py); not those the interpreter's own
    start (site) loaded before it."""
    probe = (f"import sys; before = set(sys.modules); sys.path[:0] = {repo_paths()!r}; {code}; "
             "print(' '.join(m for m in sys.modules if m not in before and (m.startswith('pam_keyinit_py') "
             "or m in ('json', '_json', 'socket', '_socket', 'krb5', 'struct', '__future__', 'errno'))))")
    out = subprocess.run([sys.executable, "-I", "-c", probe], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_a_session_only_line_loads_no_protocol_json_or_socket() -> None:
    # What ``session optional pam_python.so pam_keyinit_py.py force revoke`` loads: the hook,
    # its options, and at open_session the pam_keyinit logic (layer 0); no service client.
    loaded = _loaded("import pam_keyinit_py.pam.hook as h, pam_keyinit_py.pam.keyinit; "
                     "h.parse_cached(['force', 'revoke'])")
    assert "pam_keyinit_py.pam.keyinit" in loaded and "pam_keyinit_py.keyutils" in loaded
    assert not loaded & {"pam_keyinit_py.protocol", "pam_keyinit_py.pam.client", "json", "_json",
                         "socket", "_socket", "krb5"}, loaded
    # Each module is ~0.25 M instructions of importlib per login; layer 0's exception classes
    # are built on the first failed call, errno only on keyinit's ENOSYS path, and the hook's
    # modules evaluate their annotations instead of importing __future__.
    assert not loaded & {"pam_keyinit_py.keyutils.errors", "__future__", "errno"}, loaded


def test_the_ticket_client_still_reads_the_protocol() -> None:
    loaded = _loaded("import pam_keyinit_py.pam.hook, pam_keyinit_py.pam.client, pam_keyinit_py.pam.account")
    assert {"pam_keyinit_py.protocol", "pam_keyinit_py.pam.client"} <= loaded
    assert not loaded & {"krb5", "__future__", "pam_keyinit_py.keyutils.errors"}, loaded
    # The delegated-cache rule is loaded by the first open_session that finds a KRB5CCNAME to
    # check, not with the protocol: a password or keyboard-interactive login never needs it.
    assert "pam_keyinit_py.ccname" not in loaded, loaded


def test_the_protocol_serves_the_delegated_cache_rule_on_first_use() -> None:
    loaded = _loaded("import pam_keyinit_py.protocol as P; "
                     "assert P.is_delegated_ccache('FILE:/tmp/krb5cc_1000_Ab12', 1000); "
                     "assert P.DELEGATED_CCACHE_PREFIX == 'FILE:/tmp/krb5cc_'; "
                     "from pam_keyinit_py.protocol import is_delegated_ccache")
    assert "pam_keyinit_py.ccname" in loaded, loaded
