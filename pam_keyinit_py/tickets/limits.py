"""The server's limits on connections and workers, and its bounded worker pool.

Connections are capped per uid and in total (some slots only for uid 0), and complete
requests run on a bounded pool of worker threads of which some serve only uid 0, so users
keeping every other worker busy cannot delay a login (see server.py for the whole picture).
"""

from __future__ import annotations

import collections
import logging
import resource
import threading
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("keyinit-ticketd")

#: Descriptors the service keeps for itself beyond connections (state file, pidfds, KDC sockets).
FD_HEADROOM = 64


@dataclass(frozen=True, slots=True)
class Limits:
    """The connection and worker limits the server enforces, from the config (config.py holds
    their defaults and meaning; none are repeated here)."""

    max_connections: int
    max_connections_per_uid: int
    root_reserved_connections: int
    workers: int
    root_reserved_workers: int
    request_timeout: float

    @classmethod
    def from_config(cls, config: Any) -> Limits:
        return cls(config.max_connections, config.max_connections_per_uid,
                   config.root_reserved_connections, config.workers, config.root_reserved_workers,
                   config.request_timeout)

    def fitted_to_rlimit(self) -> Limits:
        """These limits, with the total cap lowered to fit RLIMIT_NOFILE (each connection is an fd)."""
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return self
        room = max(4, (soft - FD_HEADROOM) // 2)  # half: pidfds of sessions and KDC sockets need fds too
        if self.max_connections <= room:
            return self
        reserved = min(self.root_reserved_connections, max(1, room // 4))
        log.warning("max_connections %d does not fit RLIMIT_NOFILE %d: using %d (%d for root only)",
                    self.max_connections, soft, room, reserved)
        return Limits(room, min(self.max_connections_per_uid, room - reserved), reserved, self.workers,
                      self.root_reserved_workers, self.request_timeout)


class WorkerPool:
    """A bounded pool of worker threads, started on demand; uid 0's jobs go first.

    Jobs of other uids run on at most ``size - root_reserved`` workers at once, so the
    reserved workers are always free for root's requests (logins).
    """

    def __init__(self, size: int, root_reserved: int, run: Any) -> None:
        self.size = size
        self.user_max = max(1, size - root_reserved)
        self._run = run
        self._cond = threading.Condition()
        self._root: collections.deque[Any] = collections.deque()
        self._user: collections.deque[Any] = collections.deque()
        self._threads = 0
        self._idle = 0
        self._user_busy = 0

    def submit(self, job: Any, root: bool) -> bool:
        """Queue ``job``; False (job not queued) when no worker exists and none can be started."""
        with self._cond:
            queue = self._root if root else self._user
            queue.append(job)
            # More queued than idle workers to take them (an idle one may be woken already): grow.
            if len(self._root) + len(self._user) > self._idle and self._threads < self.size:
                try:
                    threading.Thread(target=self._worker, name=f"worker-{self._threads + 1}",
                                     daemon=True).start()
                    self._threads += 1
                except RuntimeError:  # out of tasks (TasksMax, pids cgroup): the workers there are do it
                    if self._threads == 0:
                        queue.pop()
                        return False
            # One job, one worker: notify_all woke every idle worker (up to 31) to fight over
            # this job and the GIL, which starved the accept loop with 20 logins at once.
            self._cond.notify()
            return True

    def _take(self) -> tuple[Any, bool]:
        with self._cond:
            while True:
                if self._root:
                    return self._root.popleft(), True
                if self._user and self._user_busy < self.user_max:
                    self._user_busy += 1
                    return self._user.popleft(), False
                self._idle += 1
                self._cond.wait()
                self._idle -= 1

    def _worker(self) -> None:
        while True:
            job, root = self._take()
            try:
                self._run(job)
            except Exception:  # a request handler must never take a worker down with it
                log.exception("request handler failed")
            finally:
                if not root:
                    with self._cond:
                        self._user_busy -= 1
                        if self._user:
                            self._cond.notify_all()

    @property
    def threads(self) -> int:
        return self._threads
