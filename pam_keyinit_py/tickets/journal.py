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
that is how :func:`under_journald` knows to switch.  A record too large for one datagram (EMSGSIZE)
is sent again with each field cut to :data:`MAX_FIELD` bytes and a marker saying how many were
cut; a record the socket still refuses (journald restarting) is written to stderr instead, never
raised.

No log call waits for journald (but for the bounded :data:`FINISH_WAIT` below): its event loop
logs too, so a stalled journald (its socket's queue full) must not stall the service.  Both the
datagram and the stderr stream are written with MSG_DONTWAIT; a line neither takes at once is
dropped and counted, and the next line that gets through is preceded by "N log lines dropped".
Memory stays one counter.

A stderr line is never left unterminated, which would glue the next line onto it and make
journald merge two records: a line is cut to :data:`MAX_LINE` bytes (with a marker), so one
send(2) takes it whole on an idle stream; a send that takes only part of it (a nearly full
stream) is finished within :data:`FINISH_WAIT` seconds, polling for POLLOUT, or else cut short
and ended with "\\n" as soon as the stream takes one byte (before any other line).  Lines cut
short are counted like dropped ones and reported as "N log lines cut short".

On stderr (:class:`LineFormatter`) a record is one line: control characters in its message are
escaped, and a traceback's lines are indented.  Messages quote what users chose (a principal
in a cache they made, a cache name they sent), and a newline there would start a line that
reads as the service's own.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import stat
import struct
import sys
import time
from typing import Any

JOURNAL_SOCKET = "/run/systemd/journal/socket"
IDENTIFIER = "keyinit-ticketd"
#: Python level -> syslog priority (syslog(3): 2 crit, 3 err, 4 warning, 6 info, 7 debug).
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}
#: The structured fields the service's log calls may pass (see :func:`fields`).
FIELDS = ("event", "uid", "user", "principal", "ccache", "code", "sid")
#: A field's value in the datagram sent again after EMSGSIZE (the default datagram limit is the
#: socket's send buffer, ~208 KiB): MESSAGE is the one that grows (a traceback, a quoted input).
MAX_FIELD = 64 * 1024
#: A line on journald's stderr stream, newline included: journald's own LineMax is 48K, and a
#: unix stream takes this much in one send(2) on an idle socket (one skb of at most ~36 KiB).
MAX_LINE = 32 * 1024
#: How long a partly sent stderr line may wait for the rest (POLLOUT), per record.
FINISH_WAIT = 0.1


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


def _cut(data: bytes, limit: int) -> bytes:
    """``data`` cut to at most ``limit`` bytes, at a UTF-8 character boundary, ending in a marker
    saying how many bytes were cut; ``data`` itself if it fits."""
    if len(data) <= limit:
        return data
    end = max(limit - 40, 0)  # room for the marker
    while 0 < end < len(data) and data[end] & 0xC0 == 0x80:  # not inside a UTF-8 sequence
        end -= 1
    return data[:end] + f" [... {len(data) - end} bytes cut]".encode()


def _field(name: str, value: object, limit: int | None = None) -> bytes:
    data = str(value).encode("utf-8", "replace")
    if limit is not None:
        data = _cut(data, limit)
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
        #: stderr lines cut short (only part of them was taken in time), not yet reported.
        self.truncated = 0
        #: A line on the stderr stream was cut short and still lacks its "\n".
        self.unterminated = False

    def encode(self, record: logging.LogRecord, limit: int | None = None) -> bytes:
        """The datagram for ``record``: MESSAGE, PRIORITY, SYSLOG_IDENTIFIER, CODE_*, KEYINIT_*;
        with ``limit``, each value cut to that many bytes (see :func:`_cut`)."""
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
        parts = [
            _field("MESSAGE", message, limit),
            _field("PRIORITY", _PRIORITY.get(record.levelno, 6 if record.levelno < logging.WARNING else 3)),
            _field("SYSLOG_IDENTIFIER", self.identifier),
            _field("CODE_FILE", record.pathname),
            _field("CODE_LINE", record.lineno),
            _field("CODE_FUNC", record.funcName),
            _field("LOGGER", record.name),
        ]
        for name, value in vars(record).items():
            if name.startswith("keyinit_") and value is not None:
                parts.append(_field(name.upper(), value, limit))
        return b"".join(parts)

    def emit(self, record: logging.LogRecord) -> None:
        """Send ``record`` (after the count of dropped ones, if any); drop and count it if it would wait.

        logging.Handler.handle holds the handler's lock around this, so the count is exact.
        """
        try:
            if self._report() and not self._deliver(record):
                self.dropped += 1
        except Exception:  # noqa: BLE001 - logging must never take the service down
            self.handleError(record)

    def _report(self) -> bool:
        """Deliver the counts of dropped and cut-short lines, if any; False (and the report
        counted as dropped) if one was not taken."""
        if self.dropped:
            if not self._deliver(self._count_record(
                    "%d log lines dropped: journald did not take them at once", self.dropped, "log_dropped")):
                self.dropped += 1
                return False
            self.dropped = 0
        if self.truncated:
            count, self.truncated = self.truncated, 0
            if not self._deliver(self._count_record(
                    "%d log lines cut short: journald did not take them whole", count, "log_truncated")):
                self.truncated += count
                self.dropped += 1
                return False
        return True

    def _count_record(self, msg: str, count: int, event: str) -> logging.LogRecord:
        record = logging.LogRecord(self.name or "keyinit-ticketd", logging.WARNING, __file__, 0,
                                   msg, (count,), None, "emit")
        record.keyinit_event = event
        return record

    def _deliver(self, record: logging.LogRecord) -> bool:
        """One datagram to journald (sendto, MSG_DONTWAIT; cut down after EMSGSIZE), else a line on
        stderr; False if none was taken."""
        data = self.encode(record)
        for _attempt in range(2):
            try:
                self.sock.sendto(data, socket.MSG_DONTWAIT, self.address)
                return True
            except BlockingIOError:  # the queue is full: waiting is what must not happen
                return False
            except OSError as exc:  # too large for a datagram, or no journald listening (restarting)
                if exc.errno != errno.EMSGSIZE or len(data) <= MAX_FIELD:
                    break
                data = self.encode(record, MAX_FIELD)
        if self.stream is None:  # stderr is no journal stream: a file or terminal does not stall on journald
            self.fallback.handle(record)
            return True
        line = _cut(self.fallback.format(record).encode("utf-8", "backslashreplace"), MAX_LINE - 1) + b"\n"
        return self._send_line(self.stream, line)

    def _send_line(self, stream: socket.socket, line: bytes) -> bool:
        """send(2) ``line`` to the stderr stream with MSG_DONTWAIT; False if none of it was taken.

        A line cut short before is first ended with "\\n" (else this one is not sent).  A line
        taken only in part is finished within :data:`FINISH_WAIT` seconds or cut short: counted
        in :attr:`truncated`, and ended with "\\n" as soon as the stream takes a byte.
        """
        if self.unterminated and not self._terminate(stream):
            return False
        try:
            sent = stream.send(line, socket.MSG_DONTWAIT)
        except OSError:  # BlockingIOError: nothing of it was written
            return False
        if sent < len(line):
            sent += self._finish(stream, memoryview(line)[sent:])
        if sent < len(line):
            self.truncated += 1
            self.unterminated = True
            self._terminate(stream)
        return True

    @staticmethod
    def _finish(stream: socket.socket, rest: memoryview) -> int:
        """send(2) what is left of a line, polling for POLLOUT for at most :data:`FINISH_WAIT`
        seconds in all; how many bytes of ``rest`` were sent."""
        done = 0
        deadline = time.monotonic() + FINISH_WAIT
        poller = select.poll()
        poller.register(stream.fileno(), select.POLLOUT)
        while done < len(rest):
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(left * 1000):
                break
            try:
                done += stream.send(rest[done:], socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
            except OSError:  # journald went away
                break
        return done

    def _terminate(self, stream: socket.socket) -> bool:
        """send(2) the "\\n" a cut-short line lacks (MSG_DONTWAIT); True once it is sent."""
        try:
            if stream.send(b"\n", socket.MSG_DONTWAIT) == 1:
                self.unterminated = False
        except OSError:
            pass
        return not self.unterminated

    def close(self) -> None:
        """Report lines still counted as dropped or cut short (if journald takes it at once), end a
        line cut short (waiting at most :data:`FINISH_WAIT`), then close."""
        self.acquire()
        try:
            self._report()
            if self.unterminated and self.stream is not None:
                self.unterminated = self._finish(self.stream, memoryview(b"\n")) != 1
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
