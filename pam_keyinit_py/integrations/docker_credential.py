"""``docker-credential-keyctl``: Docker's credential-helper protocol on the kernel keyring.

Docker runs ``docker-credential-keyctl <action>`` with the input on stdin:

- ``store``: JSON ``{"ServerURL", "Username", "Secret"}``; output nothing;
- ``get``: the server URL; output that JSON, one line;
- ``erase``: the server URL; output nothing;
- ``list``: no input; output ``{"<server URL>": "<username>", ...}``;
- ``version``: output ``docker-credential-keyctl (<package>) <version>``.

As docker-credential-helpers' ``credentials.Serve`` does, an error is one line
on **stdout** and exit status 1, with the standard texts Docker recognises:
``credentials not found in native keychain``, ``no credentials server URL``,
``no credentials username``.  The JSON written is byte-for-byte what Go's
``encoding/json`` writes (``<``, ``>``, ``&`` escaped), and input keys match
case-insensitively with unknown keys ignored, as Go decodes them.  An
identity token (Username ``<token>``) is stored like any other credential.

Each credential is an item of :mod:`.secret_store` with the attributes of the
secretservice helper (``label`` = ``Docker Credentials``, ``server``,
``username``, ``docker_cli`` = ``1``): one per server URL, a new store replaces
the old.  The keyring location is ``$KEYINIT_STORE_LOCATION`` (default
persistent); Docker passes the environment through.  Set it in the
environment of the docker client (e.g. ``~/.profile``).

Input is read as credentials.go reads it: bytes, split into lines by
``bufio.Scanner`` (a line of 65,536 bytes or more is ``bufio.Scanner: token
too long``), line breaks dropped, then decoded by Go's ``encoding/json`` rules
and texts (:mod:`.gojson`; the README lists which input gets which message).
A server URL that is not UTF-8 cannot have been stored, so ``get`` and
``erase`` answer ``credentials not found in native keychain``.  Secrets up to
the protocol's line limit (about 64 KiB) are stored, across several keys when
one ``user`` key (32,767 bytes) is too small.

Configure Docker with ``{"credsStore": "keyctl"}`` in ``~/.docker/config.json``.
"""

from __future__ import annotations

import json
import os
import sys

from .gojson import GoJSONError, decode_struct
from .secret_store import SecretStore
from .store import StoreError

# Names for annotations only: importing typing costs every helper start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import IO

NAME = "docker-credential-keyctl"
PACKAGE = "pam_keyinit_py"
CREDS_LABEL = "Docker Credentials"

ERR_NOT_FOUND = "credentials not found in native keychain"
ERR_MISSING_URL = "no credentials server URL"
ERR_MISSING_USERNAME = "no credentials username"


class HelperError(Exception):
    """A protocol error; its text is printed on stdout verbatim (never holds the secret)."""


def go_json(value: object) -> str:
    """JSON as Go's json.Encoder writes it: compact, HTML-escaped, raw UTF-8, newline-terminated."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    # Go escapes these for embedding in HTML; Docker does not care, but byte-identical is cheap.
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escape)
    return text + "\n"


MAX_LINE = 64 * 1024  # bufio.MaxScanTokenSize: a line (without its \n) must be shorter
ERR_TOO_LONG = "bufio.Scanner: token too long"
_GO_SPACE = " \t\n\v\f\r\x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008" \
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"  # unicode.IsSpace, as strings.TrimSpace


def read_input(stream: IO[bytes]) -> bytes:
    """stdin as credentials.go's bufio.Scanner loop sees it: lines joined, "\n" and a final "\r" dropped.

    Reading stops at the first line of MAX_LINE bytes or more (HelperError
    ``bufio.Scanner: token too long``), as the Go helpers stop.
    """
    lines: list[bytes] = []
    pending = b""
    while True:
        chunk = stream.read(MAX_LINE)
        if not chunk:
            break
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:
            if len(line) >= MAX_LINE:
                raise HelperError(ERR_TOO_LONG)
            lines.append(line[:-1] if line.endswith(b"\r") else line)
        if len(pending) >= MAX_LINE:
            raise HelperError(ERR_TOO_LONG)
    if pending:
        lines.append(pending[:-1] if pending.endswith(b"\r") else pending)
    return b"".join(lines)


def parse_credentials(data: bytes) -> dict[str, str]:
    """Decode a Credentials object as Go does: case-insensitive keys, unknown keys ignored.

    Only the first JSON value counts (Go's Decoder.Decode).  Error texts are
    encoding/json's; they never carry the input beyond one character.
    """
    try:
        return decode_struct(data, ("ServerURL", "Username", "Secret"), "Credentials", "credentials")
    except GoJSONError as exc:
        raise HelperError(str(exc)) from None


def server_url(data: bytes) -> str | None:
    """strings.TrimSpace of the input; None when it is not UTF-8 (no such URL can be stored)."""
    try:
        return data.decode().strip(_GO_SPACE)
    except UnicodeDecodeError:
        return None


class KeyctlHelper:
    """The Helper interface of docker-credential-helpers (Add, Delete, Get, List) on the keyring."""

    def __init__(self, location: str | None = None) -> None:
        self.store = SecretStore(location)

    @staticmethod
    def _query(server_url: str) -> dict[str, str]:
        return {"server": server_url, "docker_cli": "1"}

    def add(self, creds: dict[str, str]) -> None:
        """Store the credentials; the previous ones for that server URL are replaced."""
        url, username = creds["ServerURL"], creds["Username"]
        attributes = {"label": CREDS_LABEL, "server": url, "username": username, "docker_cli": "1"}
        self.store.store(attributes, f"Registry credentials for {url}", creds["Secret"],
                         replace=self._query(url))

    def get(self, server_url: str) -> tuple[str, str]:
        """(username, secret) for the server URL; HelperError(not found) if none."""
        item = self.store.lookup_item(self._query(server_url))
        if item is None:
            raise HelperError(ERR_NOT_FOUND)
        return item.attributes.get("username", ""), item.secret

    def delete(self, server_url: str) -> None:
        """Erase the server URL's credentials; HelperError(not found) if none."""
        if not self.store.clear(self._query(server_url)):
            raise HelperError(ERR_NOT_FOUND)

    def list(self) -> dict[str, str]:
        """{server URL: username} of every Docker credential."""
        out: dict[str, str] = {}
        for item in self.store.search({"label": CREDS_LABEL, "docker_cli": "1"}, load=False):
            out.setdefault(item.attributes.get("server", ""), item.attributes.get("username", ""))
        return dict(sorted(out.items()))  # Go's encoder sorts map keys


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("pam-keyinit-py")
    except Exception:  # noqa: BLE001 - not installed: still answer
        return "0.0.0+unknown"


def handle(action: bytes, stdin: IO[bytes], stdout: IO[bytes]) -> None:
    """Run one action of the protocol (HandleCommand in credentials.go)."""
    if action == b"version":
        stdout.write(f"{NAME} ({PACKAGE}) {_version()}\n".encode())
        return
    if action not in (b"store", b"get", b"erase", b"list"):
        raise HelperError(NAME.encode() + b": unknown action: " + action)
    helper = KeyctlHelper()
    if action == b"list":
        stdout.write(go_json(helper.list()).encode())
        return
    data = read_input(stdin)
    if action == b"store":
        creds = parse_credentials(data)
        if not creds["ServerURL"]:
            raise HelperError(ERR_MISSING_URL)
        if not creds["Username"]:
            raise HelperError(ERR_MISSING_USERNAME)
        helper.add(creds)
        return
    url = server_url(data)
    if url == "":
        raise HelperError(ERR_MISSING_URL)
    if url is None:
        raise HelperError(ERR_NOT_FOUND)
    if action == b"get":
        username, secret = helper.get(url)
        stdout.write(go_json({"ServerURL": url, "Username": username, "Secret": secret}).encode())
    else:
        helper.delete(url)


def _say(message: str | bytes) -> None:
    """One line on stdout, as credentials.Serve's fmt.Fprintln(os.Stdout, err)."""
    data = message if isinstance(message, bytes) else message.encode(errors="surrogateescape")
    sys.stdout.buffer.write(data + b"\n")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``docker-credential-keyctl`` (credentials.Serve): errors on stdout, exit 1."""
    args = [os.fsencode(a) for a in (sys.argv[1:] if argv is None else argv)]
    code = 0
    usage = f"Usage: {NAME} <store|get|erase|list|version>"
    if len(args) != 1:
        _say(usage)
        code = 1
    elif args[0] in (b"--help", b"-h"):
        _say(usage)
    else:
        if args[0] in (b"--version", b"-v"):
            args = [b"version"]
        try:
            handle(args[0], sys.stdin.buffer, sys.stdout.buffer)
        except HelperError as exc:
            _say(exc.args[0])
            code = 1
        except StoreError as exc:
            _say(str(exc))
            code = 1
        except Exception as exc:  # noqa: BLE001 - Docker shows stdout; never a traceback, never the input
            _say(f"{NAME}: internal error: {type(exc).__name__}")
            code = 1
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        code = 1
    return code


if __name__ == "__main__":
    sys.exit(main())
