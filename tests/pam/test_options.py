"""The module-argument parser (pure Python: the PAM paths are tested through pamtester)."""

from __future__ import annotations

import pytest

from pam_keyinit_py.pam.client import socket_path
from pam_keyinit_py.pam.options import DEFAULT_MINIMUM_UID, Options, parse, parse_cached
from pam_keyinit_py.protocol import DEFAULT_SOCKET


def test_defaults() -> None:
    opts = parse([])
    assert opts == Options()
    assert (opts.force, opts.revoke, opts.debug, opts.link_persistent, opts.tickets) == (False,) * 5
    assert opts.socket == ""  # unset: the client reads protocol's default when it first connects
    assert socket_path(opts) == DEFAULT_SOCKET == "/run/keyinit/ticketd.sock"
    assert opts.minimum_uid == DEFAULT_MINIMUM_UID == 1000
    assert opts.unknown == ()


def test_every_known_option() -> None:
    opts = parse(["force", "revoke", "debug", "link_persistent", "tickets", "use_first_pass",
                  "try_first_pass", "socket=/tmp/x.sock", "minimum_uid=500"])
    assert opts.force and opts.revoke and opts.debug and opts.link_persistent and opts.tickets
    assert opts.use_first_pass and opts.try_first_pass
    assert opts.socket == "/tmp/x.sock" and opts.minimum_uid == 500 and opts.unknown == ()
    assert socket_path(opts) == "/tmp/x.sock"


@pytest.mark.parametrize("bad", ["forc", "revoke=yes", "FORCE", "force ", "minimum_uid=abc", "minimum_uid=",
                                 "minimum_uid=-1", "minimum_uid=+5", "minimum_uid=4294967295",
                                 "socket=", "socket=relative.sock", "socket", "=", ""])
def test_unknown_and_malformed_are_collected_not_applied(bad: str) -> None:
    opts = parse(["revoke", bad])
    assert opts.unknown == (bad,)
    assert opts.revoke and not opts.force
    assert socket_path(opts) == DEFAULT_SOCKET and opts.minimum_uid == DEFAULT_MINIMUM_UID


def test_frozen() -> None:
    opts = parse(["force"])
    with pytest.raises(AttributeError):
        opts.force = False  # type: ignore[misc]
    assert hash(opts) == hash(parse(["force"]))


def test_parse_cached_reports_first_time_once() -> None:
    args = ["force", "pkp-test-only-unknown"]
    first = parse_cached(args)
    again = parse_cached(list(args))
    assert first[1] is True and again[1] is False
    assert first[0] is again[0] and first[0].unknown == ("pkp-test-only-unknown",)
