"""A stalled journald cannot stall the service: its log calls never wait on journald's socket.

The "journald" here is a real unix datagram socket the test binds and does not read, so the
kernel's queue for it fills (net.unix.max_dgram_qlen datagrams) as a stalled journald's does.
"""

from __future__ import annotations

import logging
import socket
import threading
from pathlib import Path

import pytest

from pam_keyinit_py.tickets import journal

LINES = 2000  # far more than any unix datagram queue holds


def _report(count: int) -> str:
    return f"{count} log lines dropped: journald did not take them at once"


def _fields(datagram: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in datagram.decode().splitlines() if "=" in line)


def _drain(sock: socket.socket) -> list[dict[str, str]]:
    records = []
    while True:
        try:
            records.append(_fields(sock.recv(1 << 20, socket.MSG_DONTWAIT)))
        except BlockingIOError:
            return records


@pytest.fixture
def stalled(tmp_path: Path):  # noqa: ANN201
    """A bound datagram socket nobody reads, and a logger whose JournalHandler sends to it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "journal.sock"))
    handler = journal.JournalHandler(address=str(tmp_path / "journal.sock"))
    log = logging.getLogger(f"test-journal-stall-{id(sock)}")
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.INFO)
    yield sock, handler, log
    _drain(sock)  # lets a log call that did block (the bug) return, so its thread ends
    log.handlers[:] = []
    handler.close()
    sock.close()


def test_log_calls_return_while_journald_does_not_read_and_the_drops_are_reported(stalled, capfd) -> None:
    sock, handler, log = stalled

    def flood() -> None:
        for i in range(LINES):
            log.info("renewed ticket %d", i, extra=journal.fields(event="renew", uid=1000 + i))

    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    flooder.join(60)  # a hang detector, not a speed limit: a blocking send never returns here
    assert not flooder.is_alive(), "a log call waited for journald's full socket"

    # What journald's queue held was delivered whole and in order; the rest was counted, and
    # neither written to stderr (under systemd, the same stalled journald) nor raised.
    delivered = _drain(sock)
    assert 0 < len(delivered) < LINES
    assert [r["MESSAGE"] for r in delivered] == [f"renewed ticket {i}" for i in range(len(delivered))]
    assert handler.dropped == LINES - len(delivered)
    assert capfd.readouterr().err == ""

    # journald reads again: the next line is preceded by the count of the lines it missed.
    log.warning("after the stall", extra=journal.fields(event="ready"))
    report, after = _drain(sock)
    assert report["MESSAGE"] == _report(LINES - len(delivered))
    assert report["PRIORITY"] == "4" and report["KEYINIT_EVENT"] == "log_dropped"
    assert "KEYINIT_UID" not in report  # only a count: nothing of the dropped lines themselves
    assert after["MESSAGE"] == "after the stall"
    assert handler.dropped == 0


def test_with_journald_restarting_a_stalled_stderr_stream_does_not_block_either(tmp_path: Path) -> None:
    # journald's socket is gone (it restarts), so lines go to stderr: under systemd its stream
    # to the same journald, here a real unix stream socket whose reader never reads.
    handler, log, ours, theirs = _stderr_handler(tmp_path, "stall-stream")

    def flood() -> None:
        for i in range(20_000):  # ~1.5 MB of lines: more than the stream's buffers hold
            log.warning("renewal of uid %d failed: KDC unreachable", 1000 + i)

    flooder = threading.Thread(target=flood, daemon=True)
    try:
        flooder.start()
        flooder.join(60)  # a hang detector, not a speed limit
        assert not flooder.is_alive(), "a log call waited for a full stderr stream"
        assert handler.dropped > 0
        received = b""
        while True:
            try:
                received += theirs.recv(1 << 20, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
        lines = received.decode().splitlines()
        assert len(lines) + handler.dropped == 20_000, (len(lines), handler.dropped)
        log.warning("after the stall")
        tail = theirs.recv(1 << 16).decode().splitlines()
        assert tail[0].endswith("WARNING " + _report(20_000 - len(lines))), tail
        assert tail[1].endswith("WARNING after the stall") and handler.dropped == 0
    finally:
        theirs.close()  # a log call that did block (the bug) fails and returns
        flooder.join(10)
        log.handlers[:] = []
        handler.close()


def _stderr_handler(tmp_path: Path, name: str) -> tuple[journal.JournalHandler, logging.Logger, socket.socket,
                                                        socket.socket]:
    """A handler whose journald socket is gone (restarting) and whose stderr is a real unix stream
    socket (journald's stream under systemd); the test reads the other end (or does not)."""
    handler = journal.JournalHandler(address=str(tmp_path / "no-journald.sock"))
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    if handler.stream is not None:
        handler.stream.close()
    handler.stream = ours
    log = logging.getLogger(f"test-journal-{name}-{id(handler)}")
    log.handlers[:] = [handler]
    log.propagate = False
    return handler, log, ours, theirs


def _read_all(sock: socket.socket) -> bytes:
    received = b""
    while True:
        try:
            received += sock.recv(1 << 20, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return received


def test_a_record_larger_than_the_stream_takes_at_once_is_one_whole_line(tmp_path: Path) -> None:
    handler, log, _ours, theirs = _stderr_handler(tmp_path, "huge-line")
    try:
        log.warning("quoted input: %s", "x" * 300_000)
        received = _read_all(theirs)
        assert received.count(b"\n") == 1 and received.endswith(b"\n")
        assert received.startswith(b"keyinit-ticketd[") and b"WARNING quoted input: xxx" in received
        assert received.rstrip(b"\n").endswith(b" bytes cut]")
        assert handler.dropped == 0 and handler.truncated == 0
    finally:
        log.handlers[:] = []
        handler.close()
        theirs.close()


def test_a_line_the_stalled_stream_takes_only_part_of_is_ended_before_the_next(tmp_path: Path) -> None:
    handler, log, ours, theirs = _stderr_handler(tmp_path, "part-line")
    # A stream buffer smaller than one record: send(2) takes only its first part.
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    try:
        log.warning("big: %s", "y" * 20_000)
        assert handler.truncated == 1 and handler.dropped == 0
        for i in range(5):  # journald still stalled: these are dropped, not glued on
            log.warning("while stalled %d", i)
        assert handler.dropped == 5
        received = b""
        for i in range(20):  # journald reads again, between our lines
            received += _read_all(theirs)
            log.warning("after the stall %d", i)
        received += _read_all(theirs)
        assert received.endswith(b"\n")
        lines = received.decode().splitlines()
        # Every line is one record: none was written onto the end of a line left unfinished.
        assert all(line.startswith("keyinit-ticketd[") and line.count("keyinit-ticketd[") == 1
                   for line in lines), [line[:80] + " ... " + line[-80:] for line in lines]
        assert lines[0].split(": ", 1)[1].startswith("WARNING big: yyy")
        assert lines[1].endswith("WARNING " + _report(5))
        assert lines[2].endswith("WARNING 1 log lines cut short: journald did not take them whole")
        assert lines[3].endswith("WARNING after the stall 0") and lines[-1].endswith("after the stall 19")
        assert handler.dropped == 0 and handler.truncated == 0
    finally:
        log.handlers[:] = []
        handler.close()
        theirs.close()


def test_a_record_too_large_for_one_datagram_is_sent_cut_down_to_journald(stalled, capfd) -> None:
    sock, handler, log = stalled
    log.error("quoted input: %s", "z" * 300_000, extra=journal.fields(event="auth"))
    (record,) = _drain(sock)
    assert record["MESSAGE"].startswith("quoted input: zzz") and record["MESSAGE"].endswith(" bytes cut]")
    assert len(record["MESSAGE"]) <= journal.MAX_FIELD
    assert record["PRIORITY"] == "3" and record["KEYINIT_EVENT"] == "auth"
    assert handler.dropped == 0 and capfd.readouterr().err == ""
