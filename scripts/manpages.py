"""Write man/keyinit.1 from ``keyinit``'s argparse definition (argparse-manpage), plus the
hand-written sections in man/keyinit.1.include.

    .venv/bin/python scripts/manpages.py           # rewrite man/keyinit.1
    .venv/bin/python scripts/manpages.py --check   # exit 1 when man/keyinit.1 is stale

The generated page is committed, so ``make install`` needs no generator; tests/unit/test_manpages.py
fails when a command or option changed and the page was not regenerated.
"""

from __future__ import annotations

import sys
from pathlib import Path

from argparse_manpage.manpage import Manpage

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: The .TH date: fixed, so the page depends only on the parser (bump it with the version).
DATE = "2026-12"
VERSION = "0.1.0"


def keyinit_page() -> str:
    """keyinit(1) as troff, from pam_keyinit_py.cli.build_parser()."""
    from pam_keyinit_py.cli import build_parser

    data = {"project_name": "pam-keyinit-py", "version": VERSION, "date": DATE,
            "manual_title": "User Commands", "manual_section": "1",
            "description": "the admin and user CLI of pam-keyinit-py",
            "include": str(REPO / "man/keyinit.1.include")}
    return str(Manpage(build_parser(), _data=data, format="pretty"))


def main(argv: list[str]) -> int:
    target = REPO / "man/keyinit.1"
    page = keyinit_page()
    if "--check" in argv:
        if not target.exists() or target.read_text() != page:
            print(f"{target} is stale: run .venv/bin/python scripts/manpages.py", file=sys.stderr)
            return 1
        return 0
    target.write_text(page)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
