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

Configure Docker with ``{"credsStore": "keyctl"}`` in ``~/.docker/config.json``.
"""

from __future__ import annotations

import json
import sys
from typing import IO

from .secret_store import SecretStore
from .store import StoreError

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


def parse_credentials(data: str) -> dict[str, str]:
    """Decode a Credentials object as Go does: case-insensitive keys, unknown keys ignored.

    Only the first JSON value counts (Go's Decoder.Decode).  Messages carry
    positions, never the input (it holds the secret).
    """
    # bufio.Scanner drops the line breaks between lines before decoding.
    data = data.replace("\r\n", "").replace("\n", "")
    try:
        value, _end = json.JSONDecoder().raw_decode(data.lstrip(" \t"))
    except json.JSONDecodeError as exc:
        if not data.strip():
            raise HelperError("invalid credentials: empty input, expected a JSON object") from None
        raise HelperError(f"invalid credentials JSON: {exc.msg} at offset {exc.pos}") from None
    if not isinstance(value, dict):
        raise HelperError(
            f"invalid credentials JSON: expected an object, got {type(value).__name__}"
        )
    creds = {"ServerURL": "", "Username": "", "Secret": ""}
    for key, item in value.items():
        for field in creds:
            if key.lower() == field.lower():
                if item is None:
                    continue
                if not isinstance(item, str):
                    raise HelperError(
                        f"invalid credentials JSON: {field} must be a string, got {type(item).__name__}"
                    )
                creds[field] = item
    return creds


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


def handle(action: str, stdin: IO[str], stdout: IO[str]) -> None:
    """Run one action of the protocol (HandleCommand in credentials.go)."""
    if action == "version":
        stdout.write(f"{NAME} ({PACKAGE}) {_version()}\n")
        return
    if action not in ("store", "get", "erase", "list"):
        raise HelperError(f"{NAME}: unknown action: {action}")
    helper = KeyctlHelper()
    if action == "list":
        stdout.write(go_json(helper.list()))
        return
    data = stdin.read()
    if action == "store":
        creds = parse_credentials(data)
        if not creds["ServerURL"]:
            raise HelperError(ERR_MISSING_URL)
        if not creds["Username"]:
            raise HelperError(ERR_MISSING_USERNAME)
        helper.add(creds)
        return
    server_url = data.strip()
    if not server_url:
        raise HelperError(ERR_MISSING_URL)
    if action == "get":
        username, secret = helper.get(server_url)
        stdout.write(go_json({"ServerURL": server_url, "Username": username, "Secret": secret}))
    else:
        helper.delete(server_url)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``docker-credential-keyctl`` (credentials.Serve)."""
    args = sys.argv[1:] if argv is None else argv
    usage = f"Usage: {NAME} <store|get|erase|list|version>"
    if len(args) != 1:
        print(usage)
        return 1
    if args[0] in ("--version", "-v"):
        args = ["version"]
    elif args[0] in ("--help", "-h"):
        print(usage)
        return 0
    try:
        handle(args[0], sys.stdin, sys.stdout)
    except (HelperError, StoreError) as exc:
        print(exc)
        return 1
    except UnicodeDecodeError:
        print("invalid input: not valid UTF-8")
        return 1
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
