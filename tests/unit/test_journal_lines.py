"""The service's stderr log: one line per record, whatever a client put in the message.

Log lines quote values users choose: the principal of a cache a user made (the adoption line),
a cache name sent with ``destroy``, an exception's text.  Outside systemd these go to stderr as
``keyinit-ticketd[pid]: LEVEL message`` lines, and a newline or carriage return in such a value
would start a line that reads as the service's own.
"""

from __future__ import annotations

import io
import logging

import pytest

from pam_keyinit_py.tickets import journal

FORGED = "alice@EXAMPLE.COM\nkeyinit-ticketd[1]: INFO auth root (uid 0): TGT in KEYRING:persistent:0"


def _logger(stream: io.StringIO) -> logging.Logger:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(journal.LineFormatter())
    log = logging.getLogger(f"test-journal-lines-{id(stream)}")
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.DEBUG)
    return log


@pytest.mark.parametrize("forged", [
    FORGED,
    FORGED.replace("\n", "\r"),
    FORGED.replace("\n", "\r\n"),
    FORGED.replace("\n", "\x85"),
    FORGED.replace("\n", "\u2028"),
    FORGED.replace("\n", "\x1b[2K\r"),
])
def test_a_value_with_a_line_break_stays_on_its_record_line(forged: str) -> None:
    out = io.StringIO()
    _logger(out).info("adopted %s (%s) of uid %d", "KEYRING:persistent:1000:krb_ccache_x", forged, 1000)
    text = out.getvalue()
    assert text.endswith("\n") and len(text.splitlines()) == 1, text
    assert text.startswith("keyinit-ticketd[") and "auth root (uid 0)" in text  # kept, escaped


def test_a_traceback_is_indented_so_its_text_starts_no_line() -> None:
    out = io.StringIO()
    log = _logger(out)
    try:
        raise ValueError(FORGED)
    except ValueError:
        log.exception("scheduled job failed")
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("keyinit-ticketd[") and lines[0].endswith("ERROR scheduled job failed")
    assert len(lines) > 2 and all(line.startswith("  ") for line in lines[1:]), lines
    assert "  ValueError: alice@EXAMPLE.COM" in lines
    # the forged record line is indented like the rest of the traceback
    assert sum(line.startswith("keyinit-ticketd[") for line in lines) == 1, lines


def test_stderr_and_journald_fallback_use_the_one_line_format(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    try:
        journal.setup(logging.INFO)
        (handler,) = root.handlers
        assert isinstance(handler.formatter, journal.LineFormatter)
    finally:
        root.handlers[:] = saved
        root.setLevel(level)
    handler = journal.JournalHandler(address="/nonexistent/journal/socket")
    try:
        assert isinstance(handler.fallback.formatter, journal.LineFormatter)
    finally:
        handler.close()
