"""ccname: the one place ccache names are built and taken apart (pure strings, no kernel, no KDC)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from pam_keyinit_py import ccname


def test_collection_and_its_subsidiaries() -> None:
    coll = ccname.collection_name(1000)
    assert coll == "KEYRING:persistent:1000"
    new = ccname.new_subsidiary(coll, ccname.SERVICE_PREFIX)
    assert re.fullmatch(r"KEYRING:persistent:1000:keyinit_[0-9a-f]{10}", new), new
    assert new != ccname.new_subsidiary(coll, ccname.SERVICE_PREFIX)
    assert ccname.subsidiary(new) == new.rsplit(":", 1)[1]
    assert ccname.subsidiary(coll) == "" and ccname.subsidiary("FILE:/tmp/krb5cc_1000") == ""
    assert ccname.collection_of(new) == coll and ccname.collection_of(coll) == coll
    assert ccname.collection_of("FILE:/tmp/x") == "FILE:/tmp/x"
    assert ccname.uid_of(new) == 1000 and ccname.uid_of(coll) == 1000
    assert ccname.uid_of("KEYRING:session:foo") is None and ccname.uid_of("FILE:/tmp/krb5cc_0") is None
    # Only a uid libkrb5 would read there: ASCII digits, within uid_t, not (uid_t)-1.
    assert ccname.uid_of("KEYRING:persistent:4294967294") == 4294967294
    assert ccname.uid_of("KEYRING:persistent:" + "0" * 5000 + "1000") == 1000
    for digits in ("4294967295", "9" * 4000, "9" * 5000, "\u0661\u0660\u0660\u0660", "", "-1", " 1"):
        assert ccname.uid_of(f"KEYRING:persistent:{digits}") is None, digits


def test_only_the_service_prefix_marks_a_service_cache() -> None:
    coll = ccname.collection_name(7)
    assert ccname.is_service_cache(ccname.new_subsidiary(coll, ccname.SERVICE_PREFIX))
    assert not ccname.is_service_cache(ccname.new_subsidiary(coll, ccname.ADOPTED_PREFIX))
    assert not ccname.is_service_cache(f"{coll}:krb_ccache_AbCdEf1")  # kinit's own
    assert not ccname.is_service_cache(coll)


@pytest.mark.parametrize(("desc", "parents", "name"), [
    (b"krb_ccache_x", [b"_ses", b"_persistent.1000", b"_krb"], "KEYRING:persistent:1000:krb_ccache_x"),
    (b"keyinit_ab", [b"_persistent.0042", b"_krb"], "KEYRING:persistent:42:keyinit_ab"),
    (b"n", [b"_uid.5", b"_krb_c"], "KEYRING:user:c:n"),
    (b"n", [b"_ses", b"_krb_c"], "KEYRING:session:c:n"),
    (b"n", [b"_krb_c"], "KEYRING:session:c:n"),
    (b"n", [b"_persistent.x", b"_krb"], None),
    (b"n", [b"_persistent.", b"_krb"], None),
    (b"n", [b"_persistent.1000x", b"_krb"], None),
    (b"n", [b"_persistent.1000"], None),
    (b"_krb", [b"_persistent.1000"], None),
    (b"n", [], None),
])
def test_keyring_to_ccache_name(desc: bytes, parents: list[bytes], name: str | None) -> None:
    assert ccname.from_keyring(desc, parents) == name


def test_delegated_rule_and_protocol_share_it() -> None:
    from pam_keyinit_py import protocol as P

    assert P.is_delegated_ccache is ccname.is_delegated_ccache
    assert ccname.is_delegated_ccache("FILE:/tmp/krb5cc_1000_Ab12", 1000)
    assert not ccname.is_delegated_ccache("FILE:/tmp/krb5cc_1000_", 1000)
    assert not ccname.is_delegated_ccache("FILE:/tmp/krb5cc_10000_x", 1000)
    assert not ccname.is_delegated_ccache("FILE:/tmp/krb5cc_1000_x/y", 1000)


def test_ccname_and_timefmt_import_nothing_of_the_package() -> None:
    """Every layer (the hook through protocol, pykeyctl) imports them: they must stay stdlib-only."""
    code = ("import sys; import pam_keyinit_py.ccname, pam_keyinit_py.timefmt; "
            "print(sorted(m for m in sys.modules if m.startswith('pam_keyinit_py') or m == 'krb5'))")
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['pam_keyinit_py', 'pam_keyinit_py.ccname', 'pam_keyinit_py.timefmt']"
