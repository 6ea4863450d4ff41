"""``keyinit secret``: secret-tool's store/lookup/clear/search on the kernel keyring.

Semantics are libsecret's ``secret-tool`` (tool/secret-tool.c), item for item:

- ``store --label=L attr val ...``: the secret is read with a no-echo
  ``Password: `` prompt when stdin is a tty, else *all* of stdin, verbatim (a
  trailing newline is kept, as secret-tool keeps it: use ``printf %s``); it
  must be UTF-8.  The same attribute set again replaces secret and label.
- ``lookup attr val ...``: writes the secret of the best match, with a newline
  only when stdout is a tty; exit 1, silently, when nothing matches.
- ``clear attr val ...``: removes every match; exit 1 when nothing was removed.
- ``search [--all] [--unlock] attr val ...``: prints the first match (every
  match with ``--all``) as ``[serial]``, ``label``, ``secret``, ``created``,
  ``modified`` and ``attribute.NAME`` lines; exit 0 even with no match.
  Like secret-tool, it prints the secret: an item here is never locked, so
  ``--unlock`` is accepted and does nothing.  Unlike secret-tool, the
  ``attribute.*`` lines go to stdout, not stderr.

Attributes match by exact equality; a query matches items carrying at least
those pairs.  Usage errors exit 2 (secret-tool's ``usage()``), store and
keyring errors exit 1.  ``--location`` (or ``$KEYINIT_STORE_LOCATION``)
chooses the keyring: persistent (default), user or session.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys

from .. import timefmt

PROG = "keyinit secret"


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``keyinit secret`` and its actions store, lookup, clear and search."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--location", metavar="WHERE",
        help="keyring holding the items: persistent (default), user or session "
             "(default: $KEYINIT_STORE_LOCATION)",
    )
    common.add_argument("attributes", nargs="*", metavar="attribute value",
                        help="attribute and value pairs (use -- before values starting with -)")

    p = sub.add_parser("secret", help="store and look up secrets as secret-tool does, in the kernel keyring",
                       description=__doc__.splitlines()[0])
    actions = p.add_subparsers(dest="secret_action", metavar="ACTION")
    store = actions.add_parser("store", parents=[common], help="store a secret (from stdin or a prompt)")
    store.add_argument("-l", "--label", help="the label for the new stored item")
    store.set_defaults(func=run_store)
    actions.add_parser("lookup", parents=[common], help="print the secret of the matching item"
                       ).set_defaults(func=run_lookup)
    actions.add_parser("clear", parents=[common], help="remove every matching item"
                       ).set_defaults(func=run_clear)
    search = actions.add_parser("search", parents=[common], help="print matching items")
    search.add_argument("-a", "--all", action="store_true", help="print every match, not only the first")
    search.add_argument("--unlock", action="store_true", help="accepted for secret-tool compatibility")
    search.set_defaults(func=run_search)
    p.set_defaults(func=lambda args: _usage(p))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_usage(sys.stderr)
    return 2


class UsageError(Exception):
    """Bad command line: exit 2."""


def _pairs(args: list[str]) -> dict[str, str]:
    """attribute value ... -> dict, as secret-tool's attributes_from_arguments."""
    if not args:
        raise UsageError("must specify attribute and value pairs")
    if len(args) % 2:
        raise UsageError(f"must specify attributes and values in pairs (attribute {args[-1]!r} has no value)")
    for arg in args:
        try:
            arg.encode()
        except UnicodeEncodeError:  # undecodable argv bytes (surrogateescape): no item can match
            raise UsageError("attributes and values must be valid UTF-8") from None
    return dict(zip(args[::2], args[1::2], strict=True))


def _run(args: argparse.Namespace, action) -> int:  # noqa: ANN001 - action(store, attrs) -> int
    from ..integrations.secret_store import SecretStore
    from ..integrations.store import StoreError

    try:
        attributes = _pairs(args.attributes)
        store = SecretStore(args.location)
        return action(args, store, attributes)
    except UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1


def _read_secret() -> str:
    """The secret: getpass on a tty (no echo), else all of stdin as bytes, which must be UTF-8."""
    if os.isatty(0):
        return getpass.getpass("Password: ")
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise _Fail("password not valid UTF-8") from None


class _Fail(Exception):
    """A runtime failure with a message: exit 1."""


def _store(args: argparse.Namespace, store, attributes: dict[str, str]) -> int:  # noqa: ANN001
    if args.label is None:
        raise UsageError("must specify a label for the new item")
    try:
        secret = _read_secret()
    except _Fail as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    store.store(attributes, args.label, secret)
    return 0


def _lookup(args: argparse.Namespace, store, attributes: dict[str, str]) -> int:  # noqa: ANN001
    secret = store.lookup(attributes)
    if secret is None:
        return 1
    out = sys.stdout.buffer
    out.write(secret.encode())
    if os.isatty(1):  # secret-tool adds a newline only for a terminal
        out.write(b"\n")
    out.flush()
    return 0


def _clear(args: argparse.Namespace, store, attributes: dict[str, str]) -> int:  # noqa: ANN001
    return 0 if store.clear(attributes) else 1


def _when(stamp: int) -> str:
    return timefmt.when(stamp, empty="", utc=True)


def _search(args: argparse.Namespace, store, attributes: dict[str, str]) -> int:  # noqa: ANN001
    items = store.search(attributes)
    if not args.all:
        items = items[:1]
    lines: list[str] = []
    for item in items:
        lines += [f"[{item.key}]", f"label = {item.label}", f"secret = {item.secret}",
                  f"created = {_when(item.created)}", f"modified = {_when(item.modified)}"]
        lines += [f"attribute.{k} = {v}" for k, v in sorted(item.attributes.items())]
    if lines:
        sys.stdout.write("\n".join(lines) + "\n")
    return 0


def run_store(args: argparse.Namespace) -> int:
    """keyinit secret store."""
    return _run(args, _store)


def run_lookup(args: argparse.Namespace) -> int:
    """keyinit secret lookup."""
    return _run(args, _lookup)


def run_clear(args: argparse.Namespace) -> int:
    """keyinit secret clear."""
    return _run(args, _clear)


def run_search(args: argparse.Namespace) -> int:
    """keyinit secret search."""
    return _run(args, _search)
