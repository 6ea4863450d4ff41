"""``keyinit demo``: the full login story on a throwaway realm (what ``make demo`` runs)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``keyinit demo``."""
    p = sub.add_parser("demo", help="realm, ssh login, ticket shown, renewed and cleared (root)")
    p.set_defaults(func=lambda args: __import__("pam_keyinit_py.demo", fromlist=["run"]).run())
