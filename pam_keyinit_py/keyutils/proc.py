"""Readers for /proc/keys, /proc/key-users and the key quota sysctls."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SYSCTL_DIR = Path("/proc/sys/kernel/keys")


@dataclass(frozen=True)
class ProcKey:
    """One line of /proc/keys (only keys the reader may view are listed)."""

    id: int
    flags: str
    usage: int
    timeout: str
    perm: int
    uid: int
    gid: int
    type: str
    description: str

    @classmethod
    def parse(cls, line: str) -> ProcKey:
        """Parse ``"%08x %s %5d %4s %08x %5d %5d %-9.9s %s"``."""
        f = line.split(None, 8)
        return cls(int(f[0], 16), f[1], int(f[2]), f[3], int(f[4], 16), int(f[5]), int(f[6]), f[7],
                   f[8].rstrip("\n") if len(f) > 8 else "")


@dataclass(frozen=True)
class KeyUser:
    """One line of /proc/key-users: a uid's key counts and quota use."""

    uid: int
    usage: int
    nkeys: int
    nikeys: int
    qnkeys: int
    maxkeys: int
    qnbytes: int
    maxbytes: int

    @classmethod
    def parse(cls, line: str) -> KeyUser:
        """Parse ``"%5u: %5d %d/%d %d/%d %d/%d"``."""
        uid, rest = line.split(":", 1)
        usage, keys, qkeys, qbytes = rest.split()
        nk, nik = keys.split("/")
        qk, mk = qkeys.split("/")
        qb, mb = qbytes.split("/")
        return cls(int(uid), int(usage), int(nk), int(nik), int(qk), int(mk), int(qb), int(mb))

    @property
    def keys_left(self) -> int:
        """Keys this uid may still create before EDQUOT."""
        return self.maxkeys - self.qnkeys

    @property
    def bytes_left(self) -> int:
        """Payload bytes this uid may still allocate before EDQUOT."""
        return self.maxbytes - self.qnbytes


@dataclass(frozen=True)
class Quotas:
    """kernel.keys.* sysctls: per-uid limits for users and for root."""

    maxkeys: int
    maxbytes: int
    root_maxkeys: int
    root_maxbytes: int
    persistent_keyring_expiry: int
    gc_delay: int


def read_keys(path: str = "/proc/keys") -> list[ProcKey]:
    """All keys in /proc/keys that the caller may view."""
    with open(path) as f:
        return [ProcKey.parse(line) for line in f if line.strip()]


def read_key_users(path: str = "/proc/key-users") -> list[KeyUser]:
    """Every uid's line of /proc/key-users."""
    with open(path) as f:
        return [KeyUser.parse(line) for line in f if line.strip()]


def key_user(uid: int, path: str = "/proc/key-users") -> KeyUser | None:
    """The /proc/key-users line of ``uid``, or None when it owns no keys.

    Only that line is parsed: the file has one line per uid with keys (thousands on a busy login
    host), and the quota guard reads it before every renewal.
    """
    head = f"{uid}:"
    with open(path) as f:
        for line in f:
            if line.lstrip().startswith(head):
                return KeyUser.parse(line)
    return None


def read_quotas(directory: Path = SYSCTL_DIR) -> Quotas:
    """The kernel.keys sysctls that bound each uid's keys."""

    def get(name: str) -> int:
        return int((directory / name).read_text())

    return Quotas(get("maxkeys"), get("maxbytes"), get("root_maxkeys"), get("root_maxbytes"),
                  get("persistent_keyring_expiry"), get("gc_delay"))
