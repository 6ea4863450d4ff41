"""StateWriter's request path: a request's own changes are written by its commit, in its own
thread, without waking the writer thread; what a request leaves unwritten, and every failed
write, is still the writer thread's to write (real files, real threads; no timing asserted)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from pam_keyinit_py.tickets.state import StateWriter


class CountingCondition(threading.Condition):
    """A Condition that counts its notify() calls: each one may wake the writer thread."""

    def __init__(self, lock: threading.RLock) -> None:
        super().__init__(lock)
        self.notified = 0

    def notify(self, n: int = 1) -> None:
        self.notified += 1
        super().notify(n)


@pytest.fixture
def writer(tmp_path: Path):
    lock = threading.RLock()
    state = {"n": 0}
    target = {"path": str(tmp_path / "state.json")}
    w = StateWriter(lock, lambda: target["path"], lambda: ({"n": state["n"]}, {}))
    w._work = CountingCondition(lock)  # the writer thread's condition, counted
    w.state, w.target = state, target  # type: ignore[attr-defined]
    w.start()
    yield w
    w.stop()


def _written(w: StateWriter) -> int:
    try:
        return json.loads(Path(w.target["path"]).read_text())["n"]  # type: ignore[attr-defined]
    except (FileNotFoundError, ValueError):
        return -1


def _change(w: StateWriter, n: int) -> None:
    with w.lock:
        w.state["n"] = n  # type: ignore[attr-defined]
        w.mark()


def _wait(predicate, what: str, timeout: float = 10.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_a_held_change_is_committed_by_its_request_and_wakes_no_writer_thread(writer) -> None:
    with writer.held():
        _change(writer, 1)
        assert writer.commit()
    assert _written(writer) == 1
    assert writer._work.notified == 0
    # A change outside a request (the scheduler's) still goes to the writer thread.
    _change(writer, 2)
    assert writer._work.notified == 1
    _wait(lambda: _written(writer) == 2, "the writer thread to write an uncommitted change")


def test_what_a_held_block_leaves_unwritten_goes_to_the_writer_thread(writer) -> None:
    with writer.held():
        _change(writer, 3)  # the request failed: no commit
    _wait(lambda: _written(writer) == 3, "the writer thread to write what the request left")


def test_a_held_commit_that_fails_is_retried_by_the_writer_thread(writer, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    writer.target["path"] = str(blocker / "state.json")  # mkdir fails: ENOTDIR
    with writer.held():
        _change(writer, 4)
        assert not writer.commit()
    assert writer.error is not None
    blocker.unlink()
    _wait(lambda: writer.error is None and _written(writer) == 4, "the writer thread's retry")


def test_save_makes_a_missing_state_directory(tmp_path: Path) -> None:
    """save() no longer mkdirs before every write; a directory that is not there is still made."""
    from pam_keyinit_py.tickets import state

    target = tmp_path / "gone" / "deeper" / "state.json"
    state.save(str(target), {"tickets": []})
    assert state.load(str(target)) == {"format": state.FORMAT, "tickets": []}
