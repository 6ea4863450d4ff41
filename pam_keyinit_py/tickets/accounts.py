"""Account look-ups the service and the ccache layer share."""

from __future__ import annotations

import pwd


def primary_gid(uid: int) -> int:
    """getpwuid(uid)->pw_gid; a uid without a passwd entry (keytab-only, tests) uses gid = uid."""
    try:
        return pwd.getpwuid(uid).pw_gid
    except KeyError:
        return uid
