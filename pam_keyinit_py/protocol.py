"""The one definition of the messages between the PAM hook, the ticket service and ``keyinit``.

Transport: a Unix stream socket (``/run/keyinit/ticketd.sock`` by default, mode 0666), and
beside it a root-only one (``ticketd.root.sock``, mode 0600) that root's clients try first
(:func:`root_socket`), so users flooding the public socket cannot delay a login's connect.
Framing: each message is a 4-byte big-endian length followed by that many
bytes of UTF-8 JSON holding one object.  Every message carries ``"v": 1``.
A connection carries one request after another, each answered before the next is read.  A
client with nothing more to send shuts down its sending side (``shutdown(SHUT_WR)``) after its
last request, as :func:`request` does: the service then closes the connection as soon as that
request is answered (the worker that answered it does, instead of handing it back to the event
loop only to read the end of stream).  Nothing else changes: a service older than this reads
the end of stream after the reply and closes too, and a client that keeps the connection open
may send its next request after each reply.

``auth`` with ``kuserok`` true also answers krb5_kuserok(principal, user) in its success reply
(``kuserok``: bool), so the hook's acct_mgmt needs no request of its own after the hook's auth.

``auth`` may answer :data:`PROMPT` (``ok`` false): the KDC's preauth asked a question the
password does not answer (an OTP token value).  The reply's ``prompts`` lists the questions of
that step ({``text``: str, ``hidden``: bool}, at most :data:`MAX_PROMPTS`, each text at most
:data:`MAX_PROMPT_TEXT` characters), ``banner`` the KDC's text shown before them (may be empty)
and ``answered`` how many of the request's ``answers`` the exchange used before it.  The hook
asks them through the PAM conversation and sends ``auth`` again with the password and
``answers`` (the first ``answered`` ones, then the new ones; at most :data:`MAX_ANSWERS`, each
at most :data:`MAX_ANSWER` bytes in UTF-8); the service runs a fresh AS exchange answering the
questions in order.  Answers are secrets like the password: never logged by either side.

``account`` is pam_sm_acct_mgmt's question: with ``kuserok`` (default true) may ``principal``
(default: the user's principal, ticketd.toml's ``principal_name``, as for ``auth`` and
``chpass``) log in to ``user`` (krb5_kuserok: ~/.k5login, auth_to_local), and
with ``kdc`` (default true) does the KDC still issue tickets to it (not locked, not expired,
password not expired)?  ``chpass`` without ``new_password`` only checks ``old_password`` (an
initial ticket for kadmin/changepw, pam_sm_chauthtok's PAM_PRELIM_CHECK); with it, the password
is changed through the kpasswd service.  Passwords are never logged by either side.

Requests carry ``"op"``; replies carry ``"ok"`` and, on failure, a machine
``"code"`` (one of :data:`ERROR_CODES`) and a human ``"error"``.  The server
identifies the caller with SO_PEERCRED, never with a field of the message.  :data:`OPS` is the
one table of the operations: each one's fields, who may send it, whether it changes state, the
service method that answers it and the codes it may fail with.

``open``'s ``ccache`` is a delegated TGT that the host wrote to a FILE cache of the user (sshd
with GSSAPI delegation: ``FILE:/tmp/krb5cc_<uid>_XXXXXXXXXX``, see :data:`DELEGATED_CCACHE_PREFIX`).
The service copies it into KEYRING:persistent:<uid> as the user, tracks the copy (origin
``delegated``) and answers with the copy's name in ``ccache`` and the name the session's
``KRB5CCNAME`` should hold in ``krb5ccname``; if it could not, the session is still opened and
``delegation_error`` says why.  The service never removes the file: only the hook, once it has
the reply and has pointed KRB5CCNAME at the keyring, does (a hook that stopped waiting keeps the
file's name, which must still lead to the ticket).

This module is imported by the PAM hook inside sshd, so it uses only the
standard library and costs little to import: it talks through CPython's C modules
``_socket`` and ``_json`` directly.  ``import socket`` and ``import json`` (enum,
re, the pure-Python decoder) cost ~19 ms in pam_python's fresh interpreter, paid by
every login, twice under sshd's keyboard-interactive split.
"""

import _socket
import posix as _posix  # not os: os costs ~0.7 ms of every `keyinit status`
import sys
import time

from .errors import KeyinitError
from .jsonwire import MAX_DEPTH as _MAX_DEPTH
from .jsonwire import dumps as _dumps
from .jsonwire import loads as _loads
from .jsonwire import too_deep as _too_deep

if False:  # typing.TYPE_CHECKING, without importing typing (17 ms) into every login
    from typing import Any

    from .ccname import DELEGATED_CCACHE_PREFIX as DELEGATED_CCACHE_PREFIX
    from .ccname import is_delegated_ccache as is_delegated_ccache

#: The delegated-cache rule the hook applies to KRB5CCNAME before ``open`` (one definition,
#: ccname), served on first use (PEP 562, :func:`__getattr__`): a login whose PAM environment
#: names no FILE cache (password, keyboard-interactive, publickey) never loads ccname, one
#: module less (~0.45 M instructions) in each interpreter that loads the protocol.
_CCNAME = frozenset({"DELEGATED_CCACHE_PREFIX", "is_delegated_ccache"})


def __getattr__(name: str) -> object:
    """PEP 562: ccname's names, imported when first asked for."""
    if name in _CCNAME:
        from . import ccname

        return getattr(ccname, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

VERSION = 1
#: Largest request the service accepts (a password plus a few names fit many times over).
MAX_MESSAGE = 64 * 1024
#: Largest reply a client accepts: root's ``status``/``tickets`` list every session and ticket.
MAX_REPLY = 16 * 1024 * 1024
DEFAULT_SOCKET = "/run/keyinit/ticketd.sock"

_HEADER_SIZE = 4  # the body's length, big-endian (int.to_bytes: no struct import on the hook path)

# Reply codes, shared by the service (which sets them) and the hook (which maps them to PAM codes).
OK = "ok"
BAD_PASSWORD = "bad_password"
UNKNOWN_PRINCIPAL = "unknown_principal"
KDC_UNREACHABLE = "kdc_unreachable"
QUOTA = "quota_exceeded"
PASSWORD_EXPIRED = "password_expired"  # the KDC wants the password changed (KDC_ERR_KEY_EXP)
KDC_ERROR = "kdc_error"  # the KDC or libkrb5 refused for another reason (clock skew, policy...)
ACCOUNT_EXPIRED = "account_expired"  # the principal's expiry date passed (KDC_ERR_NAME_EXP)
PASSWORD_REJECTED = "password_rejected"  # kpasswd refused the new password (quality, history)
VALIDATION_FAILED = "validation_failed"  # the TGT did not validate against the host keytab
FAST_UNAVAILABLE = "fast_unavailable"  # fast = "require" and no FAST armor could be had
PROMPT = "prompt"  # the KDC's preauth asks more than the password: ask ``prompts``, send ``answers``
DENIED = "denied"
BAD_REQUEST = "bad_request"
TOO_LARGE = "too_large"
NOT_FOUND = "not_found"
UNAVAILABLE = "service_unavailable"  # set by clients only: the service did not answer
INTERNAL = "internal_error"
BUSY = "busy"  # the connection was refused by a limit (per uid or in total): try again later
# The change was made in memory but the state file could not be written, so a kill -9 would lose
# it: the request is not acknowledged (the service keeps retrying the write in the background).
STATE_NOT_SAVED = "state_not_saved"
ERROR_CODES = frozenset(
    {BAD_PASSWORD, UNKNOWN_PRINCIPAL, KDC_UNREACHABLE, QUOTA, PASSWORD_EXPIRED, KDC_ERROR,
     ACCOUNT_EXPIRED, PASSWORD_REJECTED, VALIDATION_FAILED, FAST_UNAVAILABLE, PROMPT, DENIED, BAD_REQUEST,
     TOO_LARGE, NOT_FOUND, UNAVAILABLE, INTERNAL, BUSY, STATE_NOT_SAVED}
)
#: Bounds of a ``prompt`` reply and of ``auth``'s ``answers`` (MIT's OTP client reads answers
#: into 1024-byte buffers; a login asks a handful of questions at most).
MAX_PROMPTS = 4
MAX_PROMPT_TEXT = 256
MAX_ANSWERS = 8
MAX_ANSWER = 1023


_ID = (int, True)
_OPT_ID = (int, False)
_STR = (str, True)
_OPT_STR = (str, False)
_OPT_BOOL = (bool, False)
_OPT_STRS = (list, False)  # a list of at most MAX_ANSWERS strings (``auth``'s answers)


class Op:
    """One operation: its request ``fields`` ({name: (type, required)}; unknown fields are refused,
    so a typo never silently changes meaning) and how the service treats it.

    ``root``: only uid 0 may send it (it creates tickets and sessions for other users).
    ``mutating``: a success is acknowledged only once the state file holds it.
    ``own_uid``: a non-root caller's ``uid`` must be its own, and defaults to it.
    ``throttled``: a non-root caller may send it only every so often (each is KDC traffic).
    ``handler``: the ``Service`` method called with a ``Peer(pid, uid)`` and the fields as keywords.
    ``errors``: the codes a failure may answer with (besides the server's own ones).
    """

    __slots__ = ("name", "fields", "root", "mutating", "own_uid", "throttled", "handler", "errors")

    def __init__(self, name: str, fields: dict[str, tuple[type, bool]], handler: str, *, root: bool = False,
                 mutating: bool = False, own_uid: bool = False, throttled: bool = False,
                 errors: tuple[str, ...] = ()) -> None:
        self.name, self.fields, self.handler, self.errors = name, fields, handler, frozenset(errors)
        self.root, self.mutating, self.own_uid, self.throttled = root, mutating, own_uid, throttled


_KDC = (KDC_UNREACHABLE, KDC_ERROR, UNKNOWN_PRINCIPAL, DENIED)
#: The operations.  Replies (besides ``ok``) are in each line's comment.
OPS: dict[str, Op] = {op.name: op for op in (
    # -> principal, ccache, endtime
    # -> principal, ccache, endtime, and with the request's kuserok true krb5_kuserok's answer in
    # ``kuserok`` (so the hook's acct_mgmt after its own auth needs no request).
    # -> (code prompt) prompts, banner, answered: ask them and send auth again with ``answers``.
    Op("auth", {"user": _STR, "uid": _ID, "gid": _ID, "password": _STR, "principal": _OPT_STR,
                "kuserok": _OPT_BOOL, "answers": _OPT_STRS}, "auth",
       root=True, mutating=True, errors=(*_KDC, BAD_PASSWORD, QUOTA, PASSWORD_EXPIRED, VALIDATION_FAILED,
                                         FAST_UNAVAILABLE, PROMPT)),
    # -> principal.  kuserok and kdc default to true.
    Op("account", {"user": _STR, "uid": _ID, "principal": _OPT_STR, "kuserok": _OPT_BOOL, "kdc": _OPT_BOOL},
       "account", root=True, errors=(*_KDC, BAD_REQUEST, ACCOUNT_EXPIRED, PASSWORD_EXPIRED)),
    # -> principal, changed
    Op("chpass", {"user": _STR, "uid": _ID, "principal": _OPT_STR, "old_password": _STR,
                  "new_password": _OPT_STR}, "chpass", root=True, mutating=True,
       errors=(*_KDC, BAD_PASSWORD, PASSWORD_REJECTED, ACCOUNT_EXPIRED, FAST_UNAVAILABLE)),
    # -> sid, sessions, [ccache, krb5ccname], [delegation_error]
    Op("open", {"user": _STR, "uid": _ID, "gid": _ID, "ccache": _OPT_STR}, "open", root=True, mutating=True,
       errors=(NOT_FOUND,)),
    # -> sessions, cleared
    Op("close", {"uid": _ID, "sid": _OPT_ID}, "close", root=True, mutating=True, errors=(NOT_FOUND,)),
    # -> service, sessions, tickets (a non-root caller's own only)
    Op("status", {}, "status"),
    # -> tickets
    Op("tickets", {"uid": _OPT_ID}, "list_tickets", own_uid=True),
    # -> tickets, errors
    Op("renew", {"uid": _OPT_ID}, "renew_now", mutating=True, own_uid=True, throttled=True),
    # -> destroyed.  The caller's own caches unless root.
    Op("destroy", {"ccache": _STR}, "destroy", mutating=True, errors=(NOT_FOUND, DENIED)),
    # -> text (the Prometheus text exposition)
    Op("metrics", {}, "metrics", root=True),
)}
#: Operations only uid 0 may send.
ROOT_OPS = frozenset(name for name, op in OPS.items() if op.root)
_MAX_STR = 4096
#: Deepest nesting of arrays/objects a message may have (requests have none; replies two or three).
MAX_DEPTH = _MAX_DEPTH
#: Longest excerpt of a client-supplied value quoted in an error text or a log line.
BRIEF = 40


def brief(value: object, limit: int = BRIEF) -> str:
    """``repr(value)`` cut to about ``limit`` characters: client values never go unbounded into a log."""
    if isinstance(value, (dict, list, tuple)):
        return f"<{type(value).__name__} of {len(value)}>"
    if isinstance(value, str) and len(value) > limit:
        return repr(value[:limit]) + f"...({len(value)} chars)"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


class ProtocolError(KeyinitError):
    """A message broke the framing, size limit or schema; ``code`` is the reply code to send."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def encode(message: "dict[str, Any]", limit: int = MAX_MESSAGE) -> bytes:
    """Frame one message: length prefix + compact JSON (``v`` is added if missing)."""
    if "v" not in message:
        message = {"v": VERSION, **message}
    body = _dumps(message).encode()
    if len(body) > limit:
        raise ProtocolError(TOO_LARGE, f"message of {len(body)} bytes exceeds {limit}")
    return len(body).to_bytes(_HEADER_SIZE, "big") + body


def decode(body: bytes, max_depth: int | None = MAX_DEPTH) -> "dict[str, Any]":
    """Parse one frame body into a dict with a supported ``v``; no schema check.

    Nesting deeper than ``max_depth`` is refused before parsing (the C scanner recurses); with
    None (a reply of the service, which may be megabytes) only the scanner's own RecursionError
    guards, and becomes a ProtocolError like any bad input.
    """
    if max_depth is not None and _too_deep(body, max_depth):
        raise ProtocolError(BAD_REQUEST, f"not JSON: nested deeper than {max_depth}")
    try:
        message = _loads(body.decode())
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(BAD_REQUEST, f"not JSON: {exc.__class__.__name__}") from None
    if not isinstance(message, dict):
        raise ProtocolError(BAD_REQUEST, "message is not a JSON object")
    version = message.get("v")
    # Exact: true == 1 and 1.0 == 1 in Python, and neither is version 1.
    if type(version) is not int or version != VERSION:
        raise ProtocolError(BAD_REQUEST, f"unsupported protocol version {brief(version)}")
    return message


def validate_request(message: "dict[str, Any]") -> "dict[str, Any]":
    """Check a request against its :data:`OPS` fields; return it or raise ProtocolError(BAD_REQUEST)."""
    op = message.get("op")
    if not isinstance(op, str) or op not in OPS:
        raise ProtocolError(BAD_REQUEST, f"unknown op {brief(op)}")
    fields = OPS[op].fields
    for key in message:
        if key not in ("v", "op") and key not in fields:
            raise ProtocolError(BAD_REQUEST, f"{op}: unknown field {brief(key)}")
    for key, (kind, required) in fields.items():
        if key not in message or message[key] is None:
            if required:
                raise ProtocolError(BAD_REQUEST, f"{op}: missing field {key!r}")
            continue
        value = message[key]
        # bool is an int subclass; a uid of `true` is a malformed message, not uid 1.
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise ProtocolError(BAD_REQUEST, f"{op}: field {key!r} must be {kind.__name__}")
        if kind is int and not 0 <= value < 2**32 - 1:
            raise ProtocolError(BAD_REQUEST, f"{op}: field {key!r} out of range")
        if kind is str:
            _check_str(op, key, value, _MAX_STR)
        if kind is list:
            if len(value) > MAX_ANSWERS:
                raise ProtocolError(BAD_REQUEST, f"{op}: field {key!r} has more than {MAX_ANSWERS} items")
            for item in value:
                if not isinstance(item, str):
                    raise ProtocolError(BAD_REQUEST, f"{op}: field {key!r} must hold strings")
                _check_str(op, key, item, MAX_ANSWER)
    return message


def _check_str(op: str, key: str, value: str, limit: int) -> None:
    """A string field (or item) of a request: bounded, no NUL, encodable; the error never quotes it."""
    if len(value) > limit or "\0" in value:
        raise ProtocolError(BAD_REQUEST, f"{op}: field {key!r} too long or holds NUL")
    if not value.isascii():
        # JSON may carry an unpaired surrogate ("\ud800"), which no UTF-8 encoder takes:
        # refuse it here, where the error names the field and never the value.
        try:
            encoded = value.encode()
        except UnicodeEncodeError:
            raise ProtocolError(BAD_REQUEST, f"{op}: field {key!r} is not valid Unicode") from None
        if len(encoded) > limit:  # the limits are libkrb5's buffers, in bytes (an OTP answer: 1024)
            raise ProtocolError(BAD_REQUEST, f"{op}: field {key!r} too long or holds NUL")


def _recv_exact(sock: _socket.socket, n: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < n:
        chunk = sock.recv(n - len(chunks))
        if not chunk:
            if chunks:
                raise ProtocolError(BAD_REQUEST, "connection closed mid-message")
            raise EOFError
        chunks += chunk
    return bytes(chunks)


def recv_message(sock: _socket.socket, limit: int = MAX_MESSAGE) -> "dict[str, Any]":
    """Read one framed message; EOFError at a clean end of stream, ProtocolError on bad input.

    The length is checked before any body is read, so an oversized frame costs
    the reader nothing.  Servers read requests with the default limit; clients
    read replies with :data:`MAX_REPLY`.
    """
    length = int.from_bytes(_recv_exact(sock, _HEADER_SIZE), "big")
    if length > limit:
        raise ProtocolError(TOO_LARGE, f"message of {length} bytes exceeds {limit}")
    # Requests (untrusted, at most MAX_MESSAGE) get the nesting pre-scan; large replies do not.
    return decode(_recv_exact(sock, length), MAX_DEPTH if limit <= MAX_MESSAGE else None)


def send_message(sock: _socket.socket, message: "dict[str, Any]", limit: int = MAX_MESSAGE) -> None:
    """Write one framed message."""
    sock.sendall(encode(message, limit))


def reply_ok(**fields: "Any") -> "dict[str, Any]":
    """A success reply."""
    return {"v": VERSION, "ok": True, **fields}


def reply_error(code: str, error: str) -> "dict[str, Any]":
    """A failure reply with a machine code and a human message (never a secret)."""
    return {"v": VERSION, "ok": False, "code": code, "error": error}


def root_socket(path: str) -> str:
    """The root-only socket beside the public one: ``ticketd.sock`` -> ``ticketd.root.sock``."""
    return (path[:-5] if path.endswith(".sock") else path) + ".root.sock"


#: sizeof(long) on Linux (LP64 or ILP32): a timeval is two longs.
_LONG = (sys.maxsize.bit_length() + 1) // 8


def _timeval(seconds: float) -> bytes:
    """A struct timeval for SO_SNDTIMEO/SO_RCVTIMEO."""
    whole = int(seconds)
    usec = int((seconds - whole) * 1_000_000)
    return b"".join(n.to_bytes(_LONG, sys.byteorder, signed=True) for n in (whole, usec))


def request(
    message: "dict[str, Any]",
    path: str = DEFAULT_SOCKET,
    *,
    connect_timeout: float = 1.0,
    timeout: float = 10.0,
) -> "dict[str, Any]":
    """Send one request to the service and return its reply.

    Never raises for a missing or silent service: that becomes a reply with
    code :data:`UNAVAILABLE`, so a PAM hook can map it to a return code.
    ``connect_timeout`` bounds connect(); ``timeout`` bounds the whole
    exchange after it.
    """
    validate_request({"v": VERSION, **message})
    sock = None
    # Root (the PAM stack of a login) goes through the root-only socket, whose backlog no user
    # can fill; a service without one (older, or not running) is tried on the public path.
    for candidate in ((root_socket(path), path) if _posix.geteuid() == 0 else (path,)):
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
        # A blocking connect with SO_SNDTIMEO: when the listen backlog is full, Linux queues the
        # connector and wakes it when there is room, up to the timeout.  A socket with a Python
        # timeout is non-blocking underneath and fails at once (EAGAIN).
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_SNDTIMEO, _timeval(connect_timeout))
        try:
            sock.connect(candidate)
            break
        except OSError as exc:
            sock.close()
            sock = None
            if candidate == path:
                return reply_error(UNAVAILABLE, f"cannot connect to {path}: {exc.strerror or exc}")
    assert sock is not None
    try:
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_SNDTIMEO, _timeval(0))
        deadline = time.monotonic() + timeout
        try:
            sock.settimeout(timeout)
            try:
                send_message(sock, message)
                sock.shutdown(_socket.SHUT_WR)  # the only request: the service closes after its reply
            except (BrokenPipeError, ConnectionResetError):
                pass  # a refusing service replies (busy) and closes before reading: read its reply
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            reply = recv_message(sock, MAX_REPLY)
        except (OSError, EOFError) as exc:
            what = "timed out" if isinstance(exc, TimeoutError) else "closed the connection"
            return reply_error(UNAVAILABLE, f"service at {path} {what}")
        except ProtocolError as exc:
            return reply_error(exc.code, f"bad reply from service: {exc}")
        if not isinstance(reply.get("ok"), bool):
            return reply_error(BAD_REQUEST, "bad reply from service: no 'ok'")
        return reply
    finally:
        sock.close()
