"""A tiny RADIUS responder for the lab realm's OTP preauth (MIT krb5kdc's ``otp`` module).

MIT's KDC checks an OTP token value by sending a RADIUS Access-Request (RFC 2865) to the server
its ``[otp]`` token type names; on a UNIX domain stream socket the packets go back to back (the
length is in each header) and the shared secret is empty (doc/admin/otp.rst; otp_state.c).
The request carries User-Name (the principal, without realm under ``strip_realm = true``) and
User-Password: the token value, hidden as RFC 2865 section 5.2 says, with MD5(secret +
Request Authenticator) and then MD5(secret + previous block) per 16-byte block.  The answer is
Access-Accept or Access-Reject with the Response Authenticator, MD5(Code + Identifier + Length +
Request Authenticator + Attributes + secret), which libkrad checks.

:class:`Responder` accepts the token values the test sets per user (:meth:`Responder.expect`)
and rejects everything else.  It keeps a log of (user, accepted) per request, never the values.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import struct
import threading
from pathlib import Path

ACCESS_REQUEST, ACCESS_ACCEPT, ACCESS_REJECT = 1, 2, 3
USER_NAME, USER_PASSWORD = 1, 2
_HEADER = struct.Struct(">BBH16s")
#: RFC 2865 section 3: packets are 20 to 4096 bytes.
MIN_PACKET, MAX_PACKET = 20, 4096


def attributes(body: bytes) -> list[tuple[int, bytes]]:
    """The (type, value) pairs of a packet's attribute section; ValueError when malformed."""
    out, i = [], 0
    while i < len(body):
        if i + 2 > len(body) or body[i + 1] < 2 or i + body[i + 1] > len(body):
            raise ValueError("malformed RADIUS attribute")
        out.append((body[i], body[i + 2:i + body[i + 1]]))
        i += body[i + 1]
    return out


def unhide_password(hidden: bytes, secret: bytes, authenticator: bytes) -> bytes:
    """RFC 2865 section 5.2, reversed: the User-Password value in clear (NUL padding removed)."""
    if not hidden or len(hidden) % 16:
        raise ValueError("User-Password is not a multiple of 16 bytes")
    clear, previous = bytearray(), authenticator
    for i in range(0, len(hidden), 16):
        block = hidden[i:i + 16]
        pad = hashlib.md5(secret + previous).digest()
        clear += bytes(a ^ b for a, b in zip(block, pad, strict=True))
        previous = block
    return bytes(clear).rstrip(b"\0")


def hide_password(clear: bytes, secret: bytes, authenticator: bytes) -> bytes:
    """RFC 2865 section 5.2: the User-Password value a client sends (used by the tests' own client)."""
    padded = (clear + b"\0" * (-len(clear) % 16)) or b"\0" * 16
    out, previous = bytearray(), authenticator
    for i in range(0, len(padded), 16):
        pad = hashlib.md5(secret + previous).digest()
        block = bytes(a ^ b for a, b in zip(padded[i:i + 16], pad, strict=True))
        out += block
        previous = block
    return bytes(out)


def response(code: int, request: bytes, secret: bytes, attrs: bytes = b"") -> bytes:
    """A reply to ``request`` with its Response Authenticator (RFC 2865 section 3)."""
    ident, req_auth = request[1], request[4:20]
    length = MIN_PACKET + len(attrs)
    auth = hashlib.md5(struct.pack(">BBH", code, ident, length) + req_auth + attrs + secret).digest()
    return _HEADER.pack(code, ident, length, auth) + attrs


class Responder:
    """A RADIUS server on a UNIX stream socket at ``path`` that accepts the tokens it was told.

    ``with Responder(path) as radius: radius.expect("alice", "123456")``.  The socket is made
    mode 0600 (the KDC runs as root).  :attr:`log` lists ``(user, accepted)`` per request.
    """

    def __init__(self, path: str | os.PathLike[str], secret: bytes = b"") -> None:
        self.path = Path(path)
        self.secret = secret
        self.log: list[tuple[str, bool]] = []
        self._tokens: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def expect(self, user: str, token: str | None) -> None:
        """Accept ``token`` for ``user`` from now on (None: accept nothing for that user)."""
        with self._lock:
            if token is None:
                self._tokens.pop(user, None)
            else:
                self._tokens[user] = token.encode()

    def requests(self, user: str) -> list[bool]:
        """The outcomes (True = accepted) of the requests received for ``user``, in order."""
        with self._lock:
            return [ok for who, ok in self.log if who == user]

    def start(self) -> Responder:
        """Bind and listen; requests are answered on a daemon thread until :meth:`stop`."""
        self.path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(str(self.path))
        finally:
            os.umask(old)
        sock.listen(16)
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="radius", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and remove the socket."""
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
            self._sock = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> Responder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self) -> None:
        sock = self._sock
        while sock is not None:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(conn,), name="radius-conn", daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        with conn:
            while True:
                packet = _read_packet(conn)
                if packet is None:
                    return
                reply = self.answer(packet)
                if reply is not None:
                    conn.sendall(reply)

    def answer(self, packet: bytes) -> bytes | None:
        """The reply to one packet (None: not an Access-Request, or malformed, so it is dropped)."""
        code, _ident, _length, authenticator = _HEADER.unpack_from(packet)
        if code != ACCESS_REQUEST:
            return None
        try:
            attrs = attributes(packet[MIN_PACKET:])
            user = next(v for t, v in attrs if t == USER_NAME).decode(errors="replace")
            hidden = next(v for t, v in attrs if t == USER_PASSWORD)
            token = unhide_password(hidden, self.secret, authenticator)
        except (ValueError, StopIteration):
            return None
        with self._lock:
            expected = self._tokens.get(user)
            accepted = expected is not None and hmac.compare_digest(token, expected)
            self.log.append((user, accepted))
        return response(ACCESS_ACCEPT if accepted else ACCESS_REJECT, packet, self.secret)


def _read_packet(conn: socket.socket) -> bytes | None:
    """One RADIUS packet from a stream (None at end of stream or on a bad length)."""
    head = _recv(conn, 4)
    if head is None:
        return None
    length = struct.unpack(">H", head[2:4])[0]
    if not MIN_PACKET <= length <= MAX_PACKET:
        return None
    rest = _recv(conn, length - 4)
    return None if rest is None else head + rest


def _recv(conn: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        try:
            chunk = conn.recv(n - len(data))
        except OSError:
            return None
        if not chunk:
            return None
        data += chunk
    return data
