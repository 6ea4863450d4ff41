"""Logging to journald with structured fields, when systemd started the service; plain stderr otherwise.

The handler speaks journald's native protocol (systemd.journal-fields(7), "Native Journal
Protocol"): one datagram per record to ``/run/systemd/journal/socket``, each field ``NAME=value\\n``,
or ``NAME\\n`` + 64-bit little-endian length + value + ``\\n`` when the value holds a newline.  It is
what sd_journal_send() does, in a few lines of stdlib, so the venv needs no libsystemd build
(python-systemd's wheel is built from source against libsystemd-dev).

Every record carries PRIORITY (syslog level of the Python level), SYSLOG_IDENTIFIER, CODE_FILE,
CODE_LINE, CODE_FUNC; journald adds the trusted _PID, _UID, _SYSTEMD_UNIT.  A record's
``keyinit_*`` attributes (``log.info(..., extra=fields(uid=1001, event="auth"))``) become
``KEYINIT_*`` fields, so ``journalctl KEYINIT_UID=1001`` finds a user's lines.

Under systemd, stderr is a stream to journald too (``$JOURNAL_STREAM`` names its device and inode);
that is how :func:`under_journald` knows to switch.  A record the socket refuses (too large for one
datagram, journald restarting) is written to stderr instead, never raised.

No log call waits for journald: its event loop logs too, so a stalled journald (its socket's
queue full) must not stall the service.  Both the datagram and the stderr stream are written
with MSG_DONTWAIT; a line neither takes at once is dropped and counted, and the next line that
gets through is preceded by "N log lines dropped".  Memory stays one counter.

On stderr (:class:`LineFormatter`) a record is one line: control characters in its message are
escaped, and a traceback's lines are indented.  Messages quote what users chose (a principal
in a cache they made, a cache name they sent), and a newline there would start a line that
reads as the service's own.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import struct
import sys
from typing import Any

JOURNAL_SOCKET = "/run/systemd/journal/socket"
IDENTIFIER = "keyinit-ticketd"
#: Python level -> syslog priority (syslog(3): 2 crit, 3 err, 4 warning, 6 info, 7 debug).
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}
#: The structured fields the service's log calls may pass (see :func:`fields`).
FIELDS = ("event", "uid", "user", "principal", "ccache", "code", "sid")


def fields(**values: Any) -> dict[str, Any]:
    """``extra=`` for a log call: ``fields(event="renew", uid=1001)`` -> KEYINIT_EVENT, KEYINIT_UID.

    Only the names in :data:`FIELDS`; None values are left out.  Never pass a secret.
    """
    unknown = set(values) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown journal field(s): {sorted(unknown)}")
    return {f"keyinit_{k}": v for k, v in values.items() if v is not None}


def ticket(event: str, t: Any, code: str | None = None, ccache: str | None = None) -> dict[str, Any]:
    """:func:`fields` of a log line about a tracked ticket ``t`` (uid, principal, ccache)."""
    return fields(event=event, uid=t.uid, principal=t.principal, ccache=ccache or t.ccache, code=code)


def under_journald(stream: Any = None) -> bool:
    """True when ``stream`` (stderr) is the journal stream systemd connected ($JOURNAL_STREAM dev:ino)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return st.st_dev == int(dev) and st.st_ino == int(ino)


#: Escaped on stderr (see :class:`LineFormatter`): C0 controls but tab, DEL, C1 controls (NEL
#: among them) and Unicode's line and paragraph separators, all that str.splitlines or a terminal
#: takes for a line break or an escape sequence.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(9), *range(11, 32), *range(127, 160))} | {
    10: "\\n", 0x2028: "\\u2028", 0x2029: "\\u2029"}


class LineFormatter(logging.Formatter):
    """``keyinit-ticketd[pid]: LEVEL message`` on stderr, one line per record.

    The message's control characters are escaped (``\\n``, ``\\x0d``), and each line of a
    traceback is indented and escaped alike, so no text a client chose begins a line.
    """

    def __init__(self, identifier: str = IDENTIFIER) -> None:
        super().__init__(f"{identifier}[%(process)d]: %(levelname)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = record.message.translate(_ESCAPES)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:  # noqa: N802 - logging's name
        return "\n".join("  " + line.translate(_ESCAPES) for line in super().formatException(ei).splitlines())


def _field(name: str, value: object) -> bytes:
    data = str(value).encode("utf-8", "replace")
    key = name.encode()
    if b"\n" in data:
        return key + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
    return key + b"=" + data + b"\n"


class JournalHandler(logging.Handler):
    """A logging handler that sends each record to journald as one native-protocol datagram.

    It never blocks: a record journald's socket does not take at once (its queue is full:
    journald is stalled or flooded) is counted in :attr:`dropped`, and the count is sent as its
    own WARNING line ("N log lines dropped", KEYINIT_EVENT=log_dropped) before the next record
    that gets through.
    """

    def __init__(self, address: str = JOURNAL_SOCKET, identifier: str = IDENTIFIER) -> None:
        super().__init__()
        self.address = address
        self.identifier = identifier
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.fallback = logging.StreamHandler(sys.stderr)
        self.fallback.setFormatter(LineFormatter(identifier))
        self.stream = _socket_of(sys.stderr)  # journald's stream, when stderr is one
        #: Records neither journald's socket nor stderr took, not yet reported.
        self.dropped = 0

    def encode(self, record: logging.LogRecord) -> bytes:
        """The datagram for ``record``: MESSAGE, PRIORITY, SYSLOG_IDENTIFIER, CODE_*, KEYINIT_*."""
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
        parts = [
            _field("MESSAGE", message),
            _field("PRIORITY", _PRIORITY.get(record.levelno, 6 if record.levelno < logging.WARNING else 3)),
            _field("SYSLOG_IDENTIFIER", self.identifier),
            _field("CODE_FILE", record.pathname),
            _field("CODE_LINE", record.lineno),
            _field("CODE_FUNC", record.funcName),
            _field("LOGGER", record.name),
        ]
        for name, value in vars(record).items():
            if name.startswith("keyinit_") and value is not None:
                parts.append(_field(name.upper(), value))
        return b"".join(parts)

    def emit(self, record: logging.LogRecord) -> None:
        """Send ``record`` (after the count of dropped ones, if any); drop and count it if it would wait.

        logging.Handler.handle holds the handler's lock around this, so the count is exact.
        """
        try:
            if self.dropped and not self._deliver(self._dropped_record(self.dropped)):
                self.dropped += 1
                return
            self.dropped = 0
            if not self._deliver(record):
                self.dropped += 1
        except Exception:  # noqa: BLE001 - logging must never take the service down
            self.handleError(record)

    def _dropped_record(self, count: int) -> logging.LogRecord:
        record = logging.LogRecord(self.name or "keyinit-ticketd", logging.WARNING, __file__, 0,
                                   "%d log lines dropped: journald did not take them at once", (count,), None,
                                   "emit")
        record.keyinit_event = "log_dropped"
        return record

    def _deliver(self, record: logging.LogRecord) -> bool:
        """One datagram to journald (sendto, MSG_DONTWAIT), else a line on stderr; False if none was taken."""
        try:
            self.sock.sendto(self.encode(record), socket.MSG_DONTWAIT, self.address)
            return True
        except BlockingIOError:  # the queue is full: waiting is what must not happen
            return False
        except OSError:  # too large for a datagram, or no journald listening (restarting)
            pass
        if self.stream is None:  # stderr is no journal stream: a file or terminal does not stall on journald
            self.fallback.handle(record)
            return True
        line = (self.fallback.format(record) + "\n").encode("utf-8", "backslashreplace")
        try:
            return self.stream.send(line, socket.MSG_DONTWAIT) == len(line)
        except OSError:
            return False

    def close(self) -> None:
        """Report lines still counted as dropped (if journald takes it at once), then close."""
        self.acquire()
        try:
            if self.dropped and self._deliver(self._dropped_record(self.dropped)):
                self.dropped = 0
        finally:
            self.release()
        self.sock.close()
        if self.stream is not None:
            self.stream.close()
        super().close()


def _socket_of(stream: Any) -> socket.socket | None:
    """A socket on a duplicate of ``stream``'s descriptor when it is one (journald's stdout/stderr
    stream under systemd), for send(MSG_DONTWAIT) without making the shared descriptor non-blocking."""
    try:
        fd = stream.fileno()
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            return None
        return socket.socket(fileno=os.dup(fd))
    except (OSError, ValueError, AttributeError):
        return None


def setup(level: int) -> None:
    """Root logging: journald with fields under systemd, else ``keyinit-ticketd[pid]:`` lines on stderr."""
    if under_journald() and os.path.exists(JOURNAL_SOCKET):
        handler: logging.Handler = JournalHandler()
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(LineFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
