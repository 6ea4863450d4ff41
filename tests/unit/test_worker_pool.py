"""The server's WorkerPool: one queued request wakes one idle worker, and every job still runs
(real threads; no timing asserted)."""

from __future__ import annotations

import threading

from pam_keyinit_py.tickets.limits import WorkerPool


class CountingCondition(threading.Condition):
    """Counts how many waiting workers each notify call may wake."""

    def __init__(self) -> None:
        super().__init__()
        self.woken = 0

    def notify(self, n: int = 1) -> None:
        self.woken += min(n, len(self._waiters))  # type: ignore[attr-defined]
        super().notify(n)

    def notify_all(self) -> None:
        self.woken += len(self._waiters)  # type: ignore[attr-defined]
        super().notify_all()


def test_a_job_wakes_one_idle_worker_and_every_job_runs() -> None:
    done: list[int] = []
    release = threading.Event()
    all_done = threading.Semaphore(0)

    def run(job: int) -> None:
        if job < 8:
            release.wait()
        done.append(job)
        all_done.release()

    pool = WorkerPool(8, 2, run)
    pool._cond = CountingCondition()  # before any worker exists
    for job in range(8):  # eight busy workers, then eight idle ones
        assert pool.submit(job, root=job % 2 == 0)
    release.set()
    for _ in range(8):
        assert all_done.acquire(timeout=10), "a job was never run (a lost wake-up)"
    for _ in range(1000):  # until all eight wait for work again (bounded: a hang fails the test)
        with pool._cond:
            if pool._idle == 8:
                break
        threading.Event().wait(0.01)
    assert pool._idle == 8
    pool._cond.woken = 0
    for job in range(8, 12):
        assert pool.submit(job, root=True)
        assert all_done.acquire(timeout=10), "a job was never run (a lost wake-up)"
    assert sorted(done) == list(range(12))
    # notify_all woke all eight idle workers for each job (32 wake-ups for 4 jobs).
    assert pool._cond.woken == 4
