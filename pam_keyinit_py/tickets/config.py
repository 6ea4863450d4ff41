"""Configuration of ``keyinit-ticketd``: one TOML file (tomllib), default ``/etc/keyinit/ticketd.toml``.

Every key is optional; the defaults below are documented in ``etc/keyinit/ticketd.toml``.
The Kerberos library configuration is not here: the service honours ``KRB5_CONFIG``
like any krb5 program (libkrb5 reads it when the context is made).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..ccname import collection_name
from ..errors import KeyinitError
from ..protocol import DEFAULT_SOCKET
from .accounts import primary_gid

DEFAULT_CONFIG = "/etc/keyinit/ticketd.toml"
CLEAR_POLICIES = ("own", "all", "none")
#: ``validate``: refuse a TGT that cannot be checked / check it when the keytab has the key / never.
VALIDATE_MODES = ("require", "if-keytab", "never")
#: ``fast``: armor the password exchange when possible / always (else refuse) / never.
FAST_MODES = ("try", "require", "never")


class ConfigError(KeyinitError):
    """The configuration file is missing a required part or holds a bad value."""


@dataclass(frozen=True, slots=True)
class KeytabEntry:
    """One ``[[keytab]]`` table: keep ``principal``'s TGT fresh from ``keytab`` in ``ccache`` as ``uid``."""

    principal: str
    keytab: str
    uid: int
    gid: int
    ccache: str


@dataclass(frozen=True, slots=True)
class Config:
    """The service's settings (times in seconds)."""

    socket: str = DEFAULT_SOCKET
    state_file: str = "/run/keyinit/ticketd.state"
    #: Ticket lifetime and renewable lifetime requested at login (0: the KDC's/krb5.conf default).
    lifetime: int = 0
    renew_lifetime: int = 7 * 24 * 3600
    forwardable: bool = True
    #: Renew when this fraction of a ticket's lifetime has passed.
    renew_fraction: float = 0.5
    clear_on_logout: str = "own"
    #: Destroy the TGT of an authentication that no session follows within this time.
    pending_auth_timeout: float = 120.0
    #: Re-scan each logged-in user's persistent collection for caches they made with kinit.
    adopt_scan_interval: float = 300.0
    #: Look at /proc/key-users this often and scan the collections of logged-in uids whose keys
    #: changed (a kinit inside a session is adopted within about this long); 0 turns it off.
    adopt_watch_interval: float = 10.0
    #: keyctl_get_persistent for each tracked uid this often (the kernel expires them after 3 days).
    persistent_touch_interval: float = 86400.0
    #: Retry a renewal the KDC did not answer after this long, doubling up to retry_max.
    retry_min: float = 1.0
    retry_max: float = 60.0
    #: A cache replaced by a renewal stays this long for readers that resolved it just before.
    renew_grace: float = 2.0
    #: Bound on one login's (or renewal's) KDC exchanges, queueing for a KDC slot included.
    #: 6 s as SSSD's krb5_auth_timeout: a burst of logins on a small host, or a silent primary
    #: KDC before a replica, fits.
    kdc_timeout: float = 6.0
    log_level: str = "INFO"
    #: Check each login's TGT against the host keytab (krb5_verify_init_creds): a TGT from a KDC
    #: impostor fails.  "if-keytab" skips (with a warning) where the host has no key.
    validate: str = "require"
    #: The host keytab; "" is libkrb5's default (KRB5_KTNAME, default_keytab_name, /etc/krb5.keytab).
    validate_keytab: str = ""
    #: The principal validated with; "" is host/<this host's canonical name>.
    validate_principal: str = ""
    #: Armor the password exchange (FAST) with a TGT of fast_principal from validate_keytab.
    fast: str = "try"
    #: The armor TGT's client; "" is the keytab's computer account NAME$ (AD), else
    #: validate_principal, else host/<this host's canonical name>.
    fast_principal: str = ""
    #: Ask the KDC for the canonical client name (AD: ``ALICE`` or a UPN -> ``alice@REALM``) and
    #: store the cache under it: one cache per user, not one per spelling.
    canonicalize: bool = True
    #: The principal of a local user when the PAM hook names none: ``{user}`` is the local name
    #: (AD: local name == sAMAccountName); without ``@`` the default realm is appended; a
    #: lower-case domain ("{user}@example.com") is a UPN, sent as an enterprise name.
    principal_name: str = "{user}"
    #: Connections open at once, in total; the last root_reserved_connections are for uid 0 only.
    max_connections: int = 256
    root_reserved_connections: int = 32
    #: Connections one non-root uid may hold open at once.
    max_connections_per_uid: int = 8
    #: Threads that run requests; root_reserved_workers of them run only uid 0's (logins).
    workers: int = 32
    root_reserved_workers: int = 8
    #: Renewals (and other timed jobs) running at once; a silent KDC holds one each at most.
    renew_workers: int = 4
    #: KDC exchanges waiting at once (each is a thread libkrb5 blocks); more fail as "no KDC answered".
    max_kdc_calls: int = 16
    #: A client has this long for each whole request (connect or last reply to the last byte).
    request_timeout: float = 10.0
    #: Write the Prometheus exposition to this file (node_exporter's textfile collector) every
    #: metrics_interval seconds; "" (default) writes none.
    metrics_textfile: str = ""
    metrics_interval: float = 60.0
    keytabs: tuple[KeytabEntry, ...] = field(default_factory=tuple)


#: TOML types each key accepts, from Config's own annotations (one declaration per key): a
#: float setting also takes a TOML integer; ``keytab`` tables are parsed apart.
_TOML_TYPES: dict[str, type | tuple[type, ...]] = {
    "str": str, "int": int, "bool": bool, "float": (int, float)}
_FIELDS: dict[str, type | tuple[type, ...]] = {
    f.name: _TOML_TYPES[str(f.type)] for f in fields(Config) if str(f.type) in _TOML_TYPES
}


def _keytab_entry(index: int, table: object) -> KeytabEntry:
    if not isinstance(table, dict):
        raise ConfigError(f"keytab[{index}]: must be a table")
    missing = [k for k in ("principal", "keytab", "uid") if k not in table]
    if missing:
        raise ConfigError(f"keytab[{index}]: missing {', '.join(missing)}")
    unknown = set(table) - {"principal", "keytab", "uid", "gid", "ccache"}
    if unknown:
        raise ConfigError(f"keytab[{index}]: unknown key(s) {', '.join(sorted(unknown))}")
    uid = table["uid"]
    if not isinstance(uid, int) or isinstance(uid, bool) or uid < 0:
        raise ConfigError(f"keytab[{index}]: uid must be a non-negative integer")
    gid = table.get("gid")
    if gid is None:
        gid = primary_gid(uid)
    ccache = table.get("ccache", collection_name(uid))
    for key in ("principal", "keytab"):
        if not isinstance(table[key], str) or not table[key]:
            raise ConfigError(f"keytab[{index}]: {key} must be a non-empty string")
    return KeytabEntry(table["principal"], table["keytab"], uid, int(gid), str(ccache))


def parse(data: dict[str, object]) -> Config:
    """Build a Config from a parsed TOML document; ConfigError names the bad key."""
    values: dict[str, object] = {}
    for key, value in data.items():
        if key == "keytab":
            continue
        if key not in _FIELDS:
            raise ConfigError(f"unknown key {key!r}")
        kind = _FIELDS[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise ConfigError(f"{key}: wrong type {type(value).__name__}")
        values[key] = value
    keytabs = data.get("keytab", [])
    if not isinstance(keytabs, list):
        raise ConfigError("keytab: use [[keytab]] tables")
    values["keytabs"] = tuple(_keytab_entry(i, t) for i, t in enumerate(keytabs))
    config = Config(**values)  # type: ignore[arg-type]
    if config.clear_on_logout not in CLEAR_POLICIES:
        raise ConfigError(f"clear_on_logout must be one of {', '.join(CLEAR_POLICIES)}")
    if config.validate not in VALIDATE_MODES:
        raise ConfigError(f"validate must be one of {', '.join(VALIDATE_MODES)}")
    if config.fast not in FAST_MODES:
        raise ConfigError(f"fast must be one of {', '.join(FAST_MODES)}")
    if config.principal_name.count("{user}") != 1 or config.principal_name.replace("{user}", "").count("{"):
        raise ConfigError("principal_name must hold {user} once and no other {field}")
    if not 0.05 <= config.renew_fraction <= 0.95:
        raise ConfigError("renew_fraction must be between 0.05 and 0.95")
    if config.retry_min <= 0 or config.retry_max < config.retry_min:
        raise ConfigError("need 0 < retry_min <= retry_max")
    for key in ("pending_auth_timeout", "adopt_scan_interval", "persistent_touch_interval", "kdc_timeout",
                "request_timeout", "max_connections_per_uid", "renew_workers", "max_kdc_calls"):
        if getattr(config, key) <= 0:
            raise ConfigError(f"{key} must be positive")
    if config.metrics_textfile and not config.metrics_textfile.startswith("/"):
        raise ConfigError("metrics_textfile must be an absolute path")
    if config.metrics_interval <= 0:
        raise ConfigError("metrics_interval must be positive")
    if config.adopt_watch_interval < 0:
        raise ConfigError("adopt_watch_interval must be 0 (off) or positive")
    if config.renew_grace < 0:
        raise ConfigError("renew_grace must not be negative")
    if not 0 <= config.root_reserved_connections < config.max_connections:
        raise ConfigError("need 0 <= root_reserved_connections < max_connections")
    if not 0 <= config.root_reserved_workers < config.workers:
        raise ConfigError("need 0 <= root_reserved_workers < workers")
    return config


def load(path: str | None = None) -> Config:
    """Read the TOML file; a missing default file means all defaults, a missing explicit one is an error."""
    explicit = path is not None
    file = Path(path or DEFAULT_CONFIG)
    try:
        with file.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"{file}: no such file") from None
        return Config()
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: {exc}") from None
    try:
        return parse(data)
    except ConfigError as exc:
        raise ConfigError(f"{file}: {exc}") from None
