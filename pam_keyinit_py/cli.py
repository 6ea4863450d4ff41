"""``keyinit``: the admin and user CLI.

One argparse parser; each subcommand lives in ``pam_keyinit_py.commands.<name>``
and exposes ``register(subparsers)``, which adds its parser and sets
``func`` (called with the parsed namespace, returning the exit code).
Modules are imported only when the CLI runs, never by the PAM hook.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Subcommand modules, in the order `keyinit --help` lists them.
COMMAND_MODULES = ("tickets", "metrics", "secret", "doctor", "demo", "install")


def build_parser() -> argparse.ArgumentParser:
    """The one parser of ``keyinit`` and all its subcommands."""
    parser = argparse.ArgumentParser(
        prog="keyinit", description="the admin and user CLI of pam-keyinit-py: tickets, secrets, set-up")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"pam_keyinit_py.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"pam_keyinit_py.commands.{name}":
                raise
            continue  # not built yet
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``keyinit`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
