"""Pieces of the passwordless-login support that need no KDC: the protocol's delegated-cache names and the
/proc/key-users watch (against the real kernel file)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pam_keyinit_py import protocol as P
from pam_keyinit_py.lab.users import become
from pam_keyinit_py.tickets import config as cfg
from pam_keyinit_py.tickets import keywatch


@pytest.mark.parametrize(("name", "ok"), [
    ("FILE:/tmp/krb5cc_1000_AbCdEf0123", True),
    ("FILE:/tmp/krb5cc_1000_", False),  # no suffix
    ("FILE:/tmp/krb5cc_10000_AbCdEf0123", False),  # another uid
    ("FILE:/tmp/krb5cc_1000_x/../../etc/shadow", False),
    ("/tmp/krb5cc_1000_AbCdEf0123", False),  # sshd always writes the FILE: prefix
    ("KEYRING:persistent:1000", False),
    ("FILE:/home/ann/krb5cc", False),
])
def test_delegated_cache_names(name: str, ok: bool) -> None:
    assert P.is_delegated_ccache(name, 1000) is ok


def test_open_schema_takes_an_optional_ccache() -> None:
    base = {"v": 1, "op": "open", "user": "ann", "uid": 1000, "gid": 1000}
    assert P.validate_request(dict(base))
    assert P.validate_request({**base, "ccache": "FILE:/tmp/krb5cc_1000_x"})
    with pytest.raises(P.ProtocolError):
        P.validate_request({**base, "ccache": 7})


def test_key_users_watch_sees_a_new_key_of_a_watched_uid(test_user) -> None:  # noqa: ANN001
    watch = keywatch.KeyUsersWatch()
    assert watch.changed([test_user.uid]) == []  # the first look is the baseline
    assert watch.changed([test_user.uid]) == []  # nothing happened
    # What a kinit does to the counts: the user adds keys of its own.  The process stays alive
    # while the watch looks: once the uid's last process exits, the kernel may already have
    # collected its user keyring (and the key) by the time /proc/key-users is read.
    add = 'keyctl add user "pkw-probe-$$" "$1" @u >/dev/null && echo added && exec sleep 30'
    holder = subprocess.Popen(["sh", "-c", add, "sh", "x" * 100],
                              preexec_fn=become(test_user.uid, test_user.gid),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "added"
        assert watch.changed([test_user.uid]) == [test_user.uid]
        assert watch.changed([test_user.uid]) == []
    finally:
        holder.kill()
        holder.wait()


def test_key_users_watch_reports_a_uid_it_had_not_seen(tmp_path) -> None:  # noqa: ANN001
    fake = tmp_path / "key-users"
    fake.write_text("    0:    13 12/12 5/1000000 77/25000000\n 1000:     2 2/2 2/200 40/20000\n")
    watch = keywatch.KeyUsersWatch(str(fake))
    assert watch.changed([0]) == []
    assert watch.changed([0, 1000]) == [1000]  # a session opened since: scanned once
    fake.write_text("    0:    13 12/12 5/1000000 77/25000000\n 1000:     5 5/5 5/200 1990/20000\n")
    assert watch.changed([0, 1000]) == [1000]
    assert watch.changed([0, 1000]) == []



def test_key_users_watch_rescans_a_uid_that_logged_in_again(tmp_path) -> None:  # noqa: ANN001
    # Logout, cache cleared, login, kinit of the same size between two looks: the line is the
    # same as before, but the new session makes the uid count as changed once.
    fake = tmp_path / "key-users"
    fake.write_text(" 1000:     5 5/5 5/200 1990/20000\n")
    watch = keywatch.KeyUsersWatch(str(fake))
    assert watch.changed([1000]) == []
    watch.forget(1000)
    assert watch.changed([1000]) == [1000]
    assert watch.changed([1000]) == []


def test_adopt_watch_interval_config(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "t.toml"
    path.write_text("")
    assert cfg.load(str(path)).adopt_watch_interval == 10.0
    path.write_text("adopt_watch_interval = 0\n")
    assert cfg.load(str(path)).adopt_watch_interval == 0
    path.write_text("adopt_watch_interval = -1\n")
    with pytest.raises(cfg.ConfigError, match="adopt_watch_interval"):
        cfg.load(str(path))
    # The shipped file documents the defaults.
    shipped = cfg.load(str(Path(__file__).resolve().parents[2] / "etc" / "keyinit" / "ticketd.toml"))
    assert shipped.adopt_watch_interval == cfg.Config().adopt_watch_interval
