"""Per-phase timing for the login benchmarks (issue 14): where the hook's time goes.

- In the hook: a bench-only pam_python shim (:func:`timed_shim`) that imports the hook and
  binds each ``pam_sm_*`` through a timer, appending ``phase ms`` lines to a file: ``import``
  (once per interpreter: twice per keyboard-interactive ssh login), ``authenticate``,
  ``acct_mgmt``, ``setcred``, ``open_session``, ``close_session``, and inside authenticate the
  request to the service alone (``authenticate: service request``: the rest of authenticate is
  the hook's own work).  Each hook phase is also noted as the CPU time its thread spent
  (``<phase> CPU``, CLOCK_THREAD_CPUTIME_ID): the wall time of a phase that waits for the
  service (authenticate, open_session, close_session) is mostly that wait, which the CPU row
  leaves out.  The shim loads the protocol itself, before any phase (to time the service request),
  so its import is a row of its own (``protocol import CPU``), which the plain hook pays inside
  authenticate (keyboard-interactive: again inside the monitor's open_session).  The timed stack
  runs beside the plain one and is never part of a total or a ratio.
- In the service, from outside: bench-only requests on its socket (:func:`service_ops`), the
  same ``auth``/``open``/``close`` a login sends, timed as round trips (IPC included), so
  service.py is not touched.
"""

from __future__ import annotations

import os
import re
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

from pam_keyinit_py import protocol as P
from pam_keyinit_py.lab import ticketd as lab_ticketd
from pam_keyinit_py.lab.ticketd import TicketD
from pam_keyinit_py.pam.shim import repo_paths

#: Table order: each hook phase's wall time, then its thread's CPU time.  sshd calls setcred three
#: times a login: ESTABLISH in the monitor (which makes the keyring), ESTABLISH again in the forked
#: session child, DELETE in the monitor after close_session.
PHASES = ("import", "import CPU", "protocol import CPU", "authenticate", "authenticate CPU",
          "authenticate: service request",
          "acct_mgmt", "acct_mgmt CPU", "setcred ESTABLISH", "setcred ESTABLISH CPU",
          "setcred ESTABLISH (forked child)", "setcred ESTABLISH (forked child) CPU", "setcred DELETE",
          "setcred DELETE CPU", "open_session", "open_session CPU", "close_session", "close_session CPU")

_SHIM = '''\
import os, sys, time
_t0, _c0 = time.perf_counter(), time.thread_time()
for _p in reversed({paths!r}):
    if _p not in sys.path:
        sys.path.insert(0, _p)
_fresh = "pam_keyinit_py.pam.hook" not in sys.modules
from pam_keyinit_py.pam.hook import Hook as _Hook
_t1, _c1 = time.perf_counter(), time.thread_time()


def _note(phase, ms):
    try:
        fd = os.open({log!r}, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        os.write(fd, ("%s %.3f\\n" % (phase, ms)).encode())
        os.close(fd)
    except OSError:
        pass


if _fresh:
    _note("import", (_t1 - _t0) * 1000)
    _note("import CPU", (_c1 - _c0) * 1000)
_hook = _Hook()


_pid = os.getpid()  # the process that loaded the hook (sshd's monitor, or its kbd-int auth child)


def _timed(name, fn):
    def call(pamh, flags, argv):
        label = name
        if name == "setcred":
            label += (" ESTABLISH" if flags & pamh.PAM_ESTABLISH_CRED else
                      " DELETE" if flags & pamh.PAM_DELETE_CRED else " other")
            label += "" if os.getpid() == _pid else " (forked child)"
        t, c = time.perf_counter(), time.thread_time()
        try:
            return fn(pamh, flags, argv)
        finally:
            wall, cpu = time.perf_counter() - t, time.thread_time() - c
            _note(label, wall * 1000)
            _note(label + " CPU", cpu * 1000)
    return call


# The plain hook loads the protocol in authenticate (or the first open_session): the shim loads it
# here, so that cost shows in its own row instead of in neither phase.
_fresh_p = "pam_keyinit_py.protocol" not in sys.modules
_c2 = time.thread_time()
import pam_keyinit_py.protocol as _P
if _fresh_p:
    _note("protocol import CPU", (time.thread_time() - _c2) * 1000)

if not hasattr(_P, "_bench_request"):  # once per interpreter: the shim runs once per PAM handle
    _P._bench_request, _P._bench_in_auth = _P.request, [False]

    def _service_request(*args, **kwargs):
        # Inside authenticate: the request to keyinit-ticketd alone (the rest is the hook's own work).
        t = time.perf_counter()
        try:
            return _P._bench_request(*args, **kwargs)
        finally:
            if _P._bench_in_auth[0]:
                _note("authenticate: service request", (time.perf_counter() - t) * 1000)

    _P.request = _service_request


def _authenticate(pamh, flags, argv):
    _P._bench_in_auth[0] = True
    try:
        return _hook.authenticate(pamh, flags, argv)
    finally:
        _P._bench_in_auth[0] = False


pam_sm_authenticate = _timed("authenticate", _authenticate)
pam_sm_acct_mgmt = _timed("acct_mgmt", _hook.acct_mgmt)
pam_sm_chauthtok = _hook.chauthtok
pam_sm_setcred = _timed("setcred", _hook.setcred)
pam_sm_open_session = _timed("open_session", _hook.open_session)
pam_sm_close_session = _timed("close_session", _hook.close_session)
pam_sm_end = _hook.end
'''


def timed_shim(directory: Path, log: Path) -> Path:
    """Write the timing shim into ``directory`` (world-readable, like the lab's own shim)."""
    path = directory / "pam_keyinit_py_timed.py"
    path.write_text(_SHIM.format(paths=tuple(repo_paths()), log=str(log)))
    path.chmod(0o644)
    log.touch()
    log.chmod(0o666)
    return path


def read_phases(log: Path) -> dict[str, list[float]]:
    """The ms samples per phase written by the timing shim."""
    out: dict[str, list[float]] = defaultdict(list)
    for line in log.read_text().splitlines():
        phase, _, ms = line.rpartition(" ")
        try:
            out[phase].append(float(ms))
        except ValueError:
            continue
    return out


def service_ops(sock: str, user: str, uid: int, gid: int, password: str,
                rounds: int) -> dict[str, list[float]]:
    """Round-trip ms of the service's auth, open and close (a login's three requests), ``rounds`` each.

    Sent as root, as the hook sends them; each open is closed, so the service ends as it began
    (the auth's TGT is cleared at that close, as at a login's logout).
    """
    out: dict[str, list[float]] = defaultdict(list)
    for _ in range(rounds):
        auth = {"op": "auth", "user": user, "uid": uid, "gid": gid, "password": password}
        # As the hook asks (a service before issue 14 has no such field; one before #12 no OPS table).
        fields = P.OPS["auth"].fields if hasattr(P, "OPS") else P.SCHEMA["auth"]  # type: ignore[attr-defined]
        if "kuserok" in fields:
            auth["kuserok"] = True
        for op, message in (("auth", auth), ("open", {"op": "open", "user": user, "uid": uid, "gid": gid})):
            t = time.perf_counter()
            reply = P.request(message, sock, timeout=10.0)
            out[f"service {op}"].append((time.perf_counter() - t) * 1000)
            if not reply.get("ok"):
                raise RuntimeError(f"service {op} failed: {reply.get('code')}: {reply.get('error')}")
            if op == "open":
                t = time.perf_counter()
                closed = P.request({"op": "close", "uid": uid, "sid": reply["sid"]}, sock, timeout=10.0)
                out["service close"].append((time.perf_counter() - t) * 1000)
                if not closed.get("ok"):
                    raise RuntimeError(f"service close failed: {closed.get('error')}")
    return out


def process_cpu_ms(pid: int) -> float:
    """CPU time of process ``pid`` so far, all its threads (ended ones too), in ms at ns resolution.

    clock_gettime(2) on the process's CPU-time clock: the kernel's MAKE_PROCESS_CPUCLOCK(pid,
    CPUCLOCK_SCHED), ``(~pid << 3) | 2`` (what clock_getcpuclockid(3) returns).
    /proc/<pid>/stat counts in 10 ms clock ticks: a per-login difference of those is off by up to
    a tick, more than the service's whole share of a login.
    """
    return time.clock_gettime((~pid << 3) | 2) * 1000


#: Launcher lines that give each of the service's threads its Python name as its kernel name
#: (prctl PR_SET_NAME: /proc/PID/task/TID/comm), so a bench can tell its CPU by thread
#: (:func:`thread_cpu_ms`).  Bench-only: the service itself does not name its threads.
NAME_THREADS = '''\
import ctypes as _ctypes, threading as _threading
_prctl = _ctypes.CDLL(None).prctl
_thread_run = _threading.Thread.run


def _named_run(self):
    _prctl(15, self.name.encode()[:15], 0, 0, 0)
    return _thread_run(self)


_threading.Thread.run = _named_run
'''

_NAMED_LAUNCHER = '''\
#!{python}
import sys
sys.path.insert(0, {repo!r})
{name_threads}
from pam_keyinit_py.tickets.daemon import main
sys.exit(main())
'''


class NamedTicketD(TicketD):
    """lab's TicketD started through a launcher that names its threads (same config, same readiness)."""

    #: The launcher script, formatted with ``python``, ``repo`` and ``name_threads`` (a subclass's
    #: template may run more before the daemon's main).
    LAUNCHER = _NAMED_LAUNCHER

    def __init__(self, directory: Path, krb5_env: dict[str, str] | None = None, **config: object) -> None:
        super().__init__(directory, krb5_env, **config)
        self.launcher = self.dir / "named-ticketd"
        self.launcher.write_text(self.LAUNCHER.format(python=sys.executable, name_threads=NAME_THREADS,
                                                      repo=str(Path(__file__).resolve().parent.parent)))
        self.launcher.chmod(0o755)

    def start(self, timeout: float = 15.0) -> float:
        saved = lab_ticketd.TICKETD
        lab_ticketd.TICKETD = self.launcher
        try:
            return super().start(timeout)
        finally:
            lab_ticketd.TICKETD = saved


def thread_cpu_ms(pid: int) -> dict[int, tuple[str, float]]:
    """{tid: (kind, CPU ms so far)} of each live thread of ``pid`` (``/proc/PID/task/TID/schedstat``,
    ns).  The kind is its kernel name (:data:`NAME_THREADS`) without a trailing ``-N``; the main
    thread (the event loop) is ``loop``.  Threads that ended are not in it (see :func:`process_cpu_ms`)."""
    out: dict[int, tuple[str, float]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            comm = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            ns = int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):  # the thread ended meanwhile
            continue
        out[int(tid)] = ("loop" if tid == str(pid) else re.sub(r"-\d+$", "", comm), ns / 1e6)
    return out


class ServiceCpu:
    """The service's CPU over a bench's own logins: in total (:func:`process_cpu_ms`, ended threads
    included) and by kind of thread (:func:`thread_cpu_ms`, each thread's own difference), summed
    between each :meth:`before` and :meth:`after`."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.total = 0.0
        self.by_thread: dict[str, float] = defaultdict(float)
        self._t0 = 0.0
        self._threads0: dict[int, tuple[str, float]] = {}

    def before(self) -> None:
        self._threads0, self._t0 = thread_cpu_ms(self.pid), process_cpu_ms(self.pid)

    def after(self) -> float:
        """Add what the service spent since :meth:`before`; return that (ms).  A thread that
        started meanwhile counts whole; one that ended meanwhile only in the total."""
        spent = process_cpu_ms(self.pid) - self._t0
        for tid, (kind, ms) in thread_cpu_ms(self.pid).items():
            self.by_thread[kind] += ms - self._threads0.get(tid, (kind, 0.0))[1]
        self.total += spent
        return spent

    def line(self, logins: int) -> str:
        """``krb5-kdc 5.51, worker 2.02, ... ms`` per login, and what threads that ended took."""
        ranked = sorted(self.by_thread.items(), key=lambda kv: -kv[1])
        shown = ", ".join(f"{thread} {ms / logins:.2f}" for thread, ms in ranked if ms >= 0.005 * logins)
        ended = (self.total - sum(self.by_thread.values())) / logins
        return f"{shown} ms" + (f"; threads that ended meanwhile {ended:.2f} ms" if ended >= 0.01 else "")


def print_table(title: str, samples: dict[str, list[float]]) -> None:
    """min / median / max per phase, in PHASES order then the rest."""
    print(title)
    print(f"  {'phase':28s} {'n':>4s} {'min':>8s} {'median':>8s} {'max':>8s}   (ms)")
    names = [p for p in PHASES if p in samples] + sorted(k for k in samples if k not in PHASES)
    for name in names:
        vals = samples[name]
        if vals:
            print(f"  {name:28s} {len(vals):4d} {min(vals):8.2f} {statistics.median(vals):8.2f} "
                  f"{max(vals):8.2f}")


def verdict(ok: bool) -> str:
    """The word every target line ends with."""
    return "met" if ok else "MISSED"


def paired(ours: list[float], base: list[float], resamples: int = 2000) -> tuple[float, float, float]:
    """Median of the per-round differences ``ours[i] - base[i]``, and its 95% bootstrap interval.

    Rounds are interleaved, so a drift in the machine's load moves both members of a pair
    alike and cancels in their difference (the difference of two medians does not cancel it).
    The interval says how well the run resolves the figure: on a shared 2-core machine one
    login to another swings by tens of ms, so a 25-login difference of medians could not
    tell 5 ms apart.
    """
    import random

    diffs = [a - b for a, b in zip(ours, base, strict=True)]
    rng = random.Random(0)  # the same interval for the same samples
    meds = sorted(statistics.median(rng.choices(diffs, k=len(diffs))) for _ in range(resamples))
    return statistics.median(diffs), meds[int(0.025 * resamples)], meds[int(0.975 * resamples) - 1]


def spread(vals: list[float]) -> str:
    """``min/median/max`` of ``vals``."""
    return f"{min(vals):.1f}/{statistics.median(vals):.1f}/{max(vals):.1f}"

