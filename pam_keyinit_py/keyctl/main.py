"""pykeyctl's entry point: keyctl's command lookup and exit codes.

``pykeyctl --json <show|list|describe|rdescribe> ...`` (or ``--json`` after
the command name) prints JSON instead of keyctl's text; without it the
output is byte-for-byte keyctl's.
"""

from __future__ import annotations

# posix, not os: os brings _collections_abc, stat and posixpath, ~0.7 ms of every pykeyctl run.
import posix
import sys

from . import cli

# Names for annotations only; importing typing/collections at run time slows every invocation.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

_JSON_COMMANDS = frozenset({"show", "list", "describe", "rdescribe"})


def _actions() -> dict[str, Callable[..., int]]:
    from . import commands as c

    table: dict[str, Callable[..., int]] = {
        "--version": c.act_version,
        "add": c.act_add,
        "chgrp": c.act_chgrp,
        "chown": c.act_chown,
        "clear": c.act_clear,
        "describe": c.act_describe,
        "get_persistent": c.act_get_persistent,
        "id": c.act_id,
        "instantiate": c.act_instantiate,
        "invalidate": c.act_invalidate,
        "link": c.act_link,
        "list": c.act_list,
        "move": c.act_move,
        "negate": c.act_negate,
        "new_session": c.act_new_session,
        "newring": c.act_newring,
        "padd": c.act_padd,
        "pinstantiate": c.act_pinstantiate,
        "pipe": c.act_pipe,
        "prequest2": c.act_prequest2,
        "print": c.act_print,
        "pupdate": c.act_pupdate,
        "purge": c.act_purge,
        "rdescribe": c.act_rdescribe,
        "read": c.act_read,
        "reap": c.act_reap,
        "reject": c.act_reject,
        "request": c.act_request,
        "request2": c.act_request2,
        "restrict_keyring": c.act_restrict_keyring,
        "revoke": c.act_revoke,
        "rlist": c.act_rlist,
        "search": c.act_search,
        "security": c.act_security,
        "session": c.act_session,
        "setperm": c.act_setperm,
        "show": c.act_show,
        "supports": c.act_supports,
        "timeout": c.act_timeout,
        "unlink": c.act_unlink,
        "update": c.act_update,
        "--test": c.act_test,
        "watch": c.act_watch,
        "watch_add": c.act_watch_add,
        "watch_rm": c.act_watch_rm,
        "watch_session": c.act_watch_session,
        "watch_sync": c.act_watch_sync,
    }
    return table


def lookup(word: bytes) -> str:
    """keyctl's do_command(): the command named exactly ``word``.

    keyctl's loop looks like prefix matching, but it skips names longer than
    the word and compares with the terminating NUL, so only exact names match.
    """
    for name, _ in cli.FORMATS:
        if name.encode() == word:
            return name
    raise cli.die("Unknown command\n", 2)


def run(argv: list[bytes]) -> int:
    """Run one keyctl command line (without the program name); return the exit status."""
    as_json = False
    if argv and argv[0] == b"--json":
        as_json, argv = True, argv[1:]
    if not argv:
        raise cli.usage()
    name = lookup(argv[0])
    if name in _JSON_COMMANDS and b"--json" in argv[1:]:
        as_json = True
        argv = [argv[0]] + [a for a in argv[1:] if a != b"--json"]
    elif as_json and name not in _JSON_COMMANDS:
        raise cli.die("--json is supported by show, list, describe and rdescribe only\n", 2)
    action = _actions().get(name)
    if action is None:
        from .commands import act_unsupported

        return act_unsupported(argv)
    if as_json:
        return action(argv, as_json=True)
    return action(argv)


def main(argv: list[str] | None = None) -> int:
    """Console script ``pykeyctl``: exit with keyctl's status after flushing stdout."""
    args = [cli.fsencode(a) for a in (sys.argv[1:] if argv is None else argv)]
    try:
        code = run(args)
    except cli.Exit as exc:
        code = exc.code
    except KeyboardInterrupt:
        code = 130
    try:
        cli.flush()
    except BrokenPipeError:
        pass
    except OSError as exc:
        cli.err(f"write: {posix.strerror(exc.errno or 0)}\n".encode())
        code = 1
    sys.exit(code)
