"""Principal names for AD: the principal_name/canonicalize settings and how a typed name is parsed."""

from __future__ import annotations

from pathlib import Path

import pytest

import krb5
from pam_keyinit_py.tickets import ccache, names, validation
from pam_keyinit_py.tickets import config as cfg

SHIPPED = Path(__file__).resolve().parents[2] / "etc" / "keyinit" / "ticketd.toml"


def test_defaults_map_the_local_name_and_canonicalize(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "t.toml"
    path.write_text("")
    c = cfg.load(str(path))
    assert c.principal_name == "{user}" and c.canonicalize is True
    shipped = cfg.load(str(SHIPPED))  # the shipped file documents the defaults
    assert (shipped.principal_name, shipped.canonicalize) == (c.principal_name, c.canonicalize)


@pytest.mark.parametrize("bad", ["alice", "{user}{user}", "{user}@{domain}", ""])
def test_principal_name_needs_exactly_one_user_field(tmp_path, bad) -> None:  # noqa: ANN001
    path = tmp_path / "t.toml"
    path.write_text(f'principal_name = "{bad}"\n')
    with pytest.raises(cfg.ConfigError, match="principal_name"):
        cfg.load(str(path))


def test_principal_name_with_a_upn_suffix_is_accepted(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "t.toml"
    path.write_text('principal_name = "{user}@example.com"\ncanonicalize = false\n')
    c = cfg.load(str(path))
    assert c.principal_name == "{user}@example.com" and c.canonicalize is False


@pytest.mark.parametrize(("name", "enterprise"), [
    ("alice", False),
    ("alice@EXAMPLE.ORG", False),
    ("ALICE@EXAMPLE.ORG", False),
    ("alice@example.org", True),
    ("alice@Example.Org", True),
])
def test_a_lower_case_domain_is_a_upn(name: str, enterprise: bool) -> None:
    assert ccache.is_enterprise_name(name) is enterprise


@pytest.mark.parametrize(("template", "expected"), [
    ("{user}", "alice@DEFAULT.TEST"),
    ("{user}.mapped", "alice.mapped@DEFAULT.TEST"),
    ("{user}@OTHER.TEST", "alice@OTHER.TEST"),
    ("{user}@example.com", "alice@example.com"),
])
def test_principal_of_is_the_one_mapping_of_a_local_name(template: str, expected: str) -> None:
    asked: list[str] = []

    def realm() -> str:
        asked.append("realm")
        return "DEFAULT.TEST"

    assert names.principal_of(template, "alice", realm) == expected
    assert bool(asked) is ("@" not in template)  # libkrb5's default realm only when needed


def test_a_upn_is_parsed_as_an_enterprise_name_only_when_canonicalizing() -> None:
    assert names.parse_as_enterprise("alice@example.com", canonicalize=True)
    assert not names.parse_as_enterprise("alice@example.com", canonicalize=False)
    assert not names.parse_as_enterprise("alice@EXAMPLE.COM", canonicalize=True)


# ------------------------------------------------------------------ the FAST armor client

def _keytab(path: Path, *names: str) -> str:
    """A FILE keytab with one AES256 key for each of ``names`` (krb5_kt_add_entry)."""
    ctx = krb5.init_context()
    kt = krb5.kt_resolve(ctx, f"FILE:{path}".encode())
    for name in names:
        key = krb5.c_string_to_key(ctx, 18, b"not-a-real-key", name.encode())
        krb5.kt_add_entry(ctx, kt, krb5.parse_name_flags(ctx, name.encode()), 1, 0, key)
    return f"FILE:{path}"


def test_armor_client_is_this_hosts_computer_account_as_sssd_picks(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """An AD keytab: NAME$ (this host's NetBIOS name, any case) before other accounts and SPNs."""
    monkeypatch.setattr(validation.socket, "gethostname", lambda: "client7.example.org")
    ctx = krb5.init_context()
    kt = _keytab(tmp_path / "ad.kt", "host/client7.example.org@EX.ORG", "OTHER$@EX.ORG", "client7$@EX.ORG")
    assert ccache.machine_account(ctx, kt) == "client7$@EX.ORG"
    # Another host's account, when this host's is not there (a keytab joined under another name).
    kt = _keytab(tmp_path / "other.kt", "host/client7.example.org@EX.ORG", "OTHER$@EX.ORG")
    assert ccache.machine_account(ctx, kt) == "OTHER$@EX.ORG"
    # The NetBIOS name is at most 15 characters.
    monkeypatch.setattr(validation.socket, "gethostname", lambda: "averyveryverylonghostname")
    kt = _keytab(tmp_path / "long.kt", "OTHER$@EX.ORG", "AVERYVERYVERYLO$@EX.ORG")
    assert ccache.machine_account(ctx, kt) == "AVERYVERYVERYLO$@EX.ORG"


def test_an_mit_keytab_has_no_computer_account(tmp_path) -> None:  # noqa: ANN001
    """host/ SPNs only (an MIT realm): the armor client stays validate_principal / host/<name>."""
    ctx = krb5.init_context()
    kt = _keytab(tmp_path / "mit.kt", "host/client7.example.org@EX.ORG", "nfs/client7.example.org@EX.ORG",
                 "svc@EX.ORG")
    assert ccache.machine_account(ctx, kt) is None
    assert ccache.machine_account(ctx, f"FILE:{tmp_path}/missing.kt") is None


def test_fast_principal_is_a_documented_setting(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "t.toml"
    path.write_text("")
    assert cfg.load(str(path)).fast_principal == ""
    assert cfg.load(str(SHIPPED)).fast_principal == ""
    assert "\nfast_principal = " in SHIPPED.read_text()
    path.write_text('fast_principal = "CLIENT7$@EX.ORG"\n')
    assert cfg.load(str(path)).fast_principal == "CLIENT7$@EX.ORG"
