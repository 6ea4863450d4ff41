"""Prometheus metrics of ``keyinit-ticketd``, built with ``prometheus_client`` (never by hand).

One private :class:`~prometheus_client.CollectorRegistry` holds:

* counters the service moves as things happen (one-line calls at the event):
  ``keyinit_auths_total{code}`` and ``keyinit_renewals_total{code}`` (the protocol's reply codes,
  ``ok`` for success), ``keyinit_state_write_failures_total``,
  ``keyinit_quota_guard_total`` (renewals that found no room for a new cache generation in the
  uid's key quota and renewed in place, see :mod:`.quota`);
* ``keyinit_kdc_request_seconds``: a histogram of each KDC exchange (AS, TGS renewal, kpasswd),
  timed around the libkrb5 call in ``plumbing.bounded``;
* gauges read from the live service when scraped (:class:`ServiceCollector`): sessions, users,
  tickets by origin, seconds until the soonest tracked ticket ends, refused connections, and the
  highest per-uid key count and byte use of ``/proc/key-users`` as a fraction of the uid's quota
  (``kernel.keys.maxkeys``/``maxbytes``; root's own ``root_max*`` for uid 0).

:func:`exposition` is the text format (``prometheus_client.generate_latest``).  It reaches
``keyinit metrics`` through the root-only ``metrics`` op, and node_exporter's textfile collector
through :class:`TextfileWriter` (``metrics_textfile``, rewritten atomically every
``metrics_interval`` seconds).  Nothing here holds a secret: labels are reply codes and origins,
never principals or uids (a fleet-wide series per user would not scale).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .. import protocol as P
from ..keyutils import proc
from .state import remove_leftovers, replace_file

log = logging.getLogger("keyinit-ticketd")

# No ``*_created`` series: one per label value doubles the exposition and no dashboard reads them.
disable_created_metrics()
REGISTRY = CollectorRegistry(auto_describe=True)

AUTHS = Counter("keyinit_auths", "Password logins (auth requests) by reply code", ["code"],
                registry=REGISTRY)
RENEWALS = Counter("keyinit_renewals", "Ticket renewals by outcome code", ["code"], registry=REGISTRY)
STATE_WRITE_FAILURES = Counter("keyinit_state_write_failures",
                               "Failed writes of the state file (each retry counts)", registry=REGISTRY)
QUOTA_GUARD = Counter("keyinit_quota_guard",
                      "Renewals whose uid had no key quota left for a new cache generation "
                      "(renewed in place instead; raise kernel.keys.maxbytes)", registry=REGISTRY)
#: KDC exchanges take ~1-10 ms on a LAN; a silent KDC costs kdc_timeout (seconds) and libkrb5's
#: UDP (1 s) and TCP (10 s) waits per KDC tried.
KDC_SECONDS = Histogram("keyinit_kdc_request_seconds", "Duration of one KDC exchange (libkrb5 call)",
                        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
                        registry=REGISTRY)

# Series exist (at 0) before the first event, so rate() and alerts see them from the start.
for _code in (P.OK, P.BAD_PASSWORD, P.KDC_UNREACHABLE, P.QUOTA):
    AUTHS.labels(_code)
for _code in (P.OK, P.KDC_UNREACHABLE, P.NOT_RENEWABLE, P.QUOTA, P.KDC_ERROR):
    RENEWALS.labels(_code)

#: Origins ``keyinit_tickets`` always reports (0 when none), as the service names them.
ORIGINS = ("login", "delegated", "adopted", "keytab")


def quota_use(users: list[proc.KeyUser] | None = None) -> tuple[float, float]:
    """(highest qnkeys/maxkeys, highest qnbytes/maxbytes) over the uids of /proc/key-users."""
    if users is None:
        try:
            users = proc.read_key_users()
        except OSError:
            return 0.0, 0.0
    keys = max((u.qnkeys / u.maxkeys for u in users if u.maxkeys > 0), default=0.0)
    data = max((u.qnbytes / u.maxbytes for u in users if u.maxbytes > 0), default=0.0)
    return keys, data


class ServiceCollector(Collector):
    """Gauges read from a running Service (and its Server) at each scrape, under the service lock."""

    def __init__(self, service: Any, server: Any = None) -> None:
        self.service = service
        self.server = server

    def describe(self) -> list[Any]:
        return []  # families depend on the live state; nothing to check at registration

    def collect(self) -> Iterator[Any]:
        svc = self.service
        now = time.time()
        with svc.lock:
            sessions = len(svc.sessions)
            users = len(svc.sessions.by_uid)
            origins = dict.fromkeys(ORIGINS, 0)
            soonest = None
            for t in svc.tickets.values():
                origins[t.origin] = origins.get(t.origin, 0) + 1
                if t.endtime and (soonest is None or t.endtime < soonest):
                    soonest = t.endtime
        yield GaugeMetricFamily("keyinit_sessions", "Open login sessions", value=sessions)
        yield GaugeMetricFamily("keyinit_users", "Users with at least one open session", value=users)
        tickets = GaugeMetricFamily("keyinit_tickets", "Tracked tickets by origin", labels=["origin"])
        for origin, count in sorted(origins.items()):
            tickets.add_metric([origin], count)
        yield tickets
        if soonest is not None:
            yield GaugeMetricFamily("keyinit_ticket_soonest_expiry_seconds",
                                    "Seconds until the soonest tracked ticket ends (negative: ended)",
                                    value=soonest - now)
        if self.server is not None:
            yield CounterMetricFamily("keyinit_refused_connections",
                                      "Connections refused by a limit (busy), since start",
                                      value=self.server.refused)
        keys, data = quota_use()
        yield GaugeMetricFamily("keyinit_key_quota_keys_ratio",
                                "Highest per-uid key count as a fraction of its quota (kernel.keys.maxkeys)",
                                value=keys)
        yield GaugeMetricFamily("keyinit_key_quota_bytes_ratio",
                                "Highest per-uid key bytes as a fraction of its quota (kernel.keys.maxbytes)",
                                value=data)


_bound: ServiceCollector | None = None


def bind(service: Any, server: Any = None) -> None:
    """Register the live service's gauges (once per process; a second bind replaces the first)."""
    global _bound
    if _bound is not None:
        REGISTRY.unregister(_bound)
    _bound = ServiceCollector(service, server)
    REGISTRY.register(_bound)


def exposition() -> str:
    """The Prometheus text exposition (format 0.0.4) of every metric."""
    return generate_latest(REGISTRY).decode()


def reply() -> dict[str, Any]:
    """The ``metrics`` op's reply: ``text`` holds the exposition."""
    return P.reply_ok(text=exposition())


def write_textfile(path: str) -> None:
    """Write the exposition to ``path`` atomically (state.replace_file: a temporary file beside it,
    then rename(2)): node_exporter's textfile collector reads only ``*.prom`` and never sees half
    a file."""
    replace_file(Path(path), exposition().encode(), 0o644)


class TextfileWriter:
    """A thread that rewrites ``metrics_textfile`` every ``metrics_interval`` seconds until stopped."""

    def __init__(self, path: str, interval: float) -> None:
        self.path = path
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-textfile", daemon=True)
        self._failing = False

    def start(self) -> None:
        remove_leftovers(self.path)  # temporary files of a process killed mid-write
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread after a last write (the file then holds the final counts)."""
        self._stop.set()
        self._thread.join(5)

    def _write(self) -> None:
        try:
            write_textfile(self.path)
        except Exception as exc:  # noqa: BLE001 - the metrics file must never stop the service
            if not self._failing:  # one line per outage, not one per interval
                why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc.__class__.__name__
                log.warning("cannot write metrics_textfile %s: %s", self.path, why)
            self._failing = True
            return
        if self._failing:
            log.info("metrics_textfile %s written again", self.path)
        self._failing = False

    def _run(self) -> None:
        while not self._stop.is_set():
            self._write()
            self._stop.wait(self.interval)
        self._write()
