"""Prometheus metrics for pools, and a ``/metrics`` endpoint.

Counters and histograms are fed by pool lifecycle hooks; gauges that describe
state (queue depth, busy workers) are read from ``pool.stats()`` at scrape time
by a custom collector, so nothing updates them on the hot path. Metrics live in
the registry you pass — never the global one unless you pass it::

    registry = CollectorRegistry()
    pool = WorkerPool(workers=4, registry=registry)
    registry.get_sample_value("worker_jobs_total", {"queue": "default", "status": "completed"})
"""

from __future__ import annotations

import itertools
import numbers
import threading
import weakref
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Protocol

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric

from poolsim.errors import ConfigError
from poolsim.jobs import Job
from poolsim.ledger import PoolStats
from poolsim.records import STATUSES

__all__ = ["DURATION_BUCKETS", "PoolMetrics", "WAIT_BUCKETS", "serve"]

DURATION_BUCKETS: tuple[float, ...] = (0.1, 0.5, 1.0, 5.0, 30.0, 60.0)
WAIT_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0)


class _Pool(Protocol):
    name: str

    def stats(self) -> PoolStats: ...


class PoolMetrics:
    """The poolsim metric families in one registry, shared by every pool attached to it.

    ``worker_jobs_total{queue,status}``, ``worker_job_duration_seconds{task_type}``,
    ``worker_job_wait_seconds{queue}``, and at scrape time
    ``worker_queue_depth{queue}`` and ``worker_busy_workers{queue}``. Make one
    with custom buckets before creating pools, or let a pool's ``registry=``
    make the default one via :meth:`for_registry`.
    """

    _by_registry: ClassVar[weakref.WeakKeyDictionary[CollectorRegistry, PoolMetrics]] = (
        weakref.WeakKeyDictionary())
    _lock: ClassVar[threading.RLock] = threading.RLock()  # for_registry holds it into __init__

    def __init__(self, registry: CollectorRegistry = REGISTRY, *,
                 duration_buckets: Sequence[float] = DURATION_BUCKETS,
                 wait_buckets: Sequence[float] = WAIT_BUCKETS) -> None:
        for name, buckets in (("duration_buckets", duration_buckets),
                              ("wait_buckets", wait_buckets)):
            _check_buckets(name, buckets)
        with PoolMetrics._lock:
            if registry in PoolMetrics._by_registry:
                raise ConfigError("registry", registry,
                                  "a registry without poolsim metrics; reuse them with "
                                  "PoolMetrics.for_registry(registry)")
            self._register(registry, duration_buckets, wait_buckets)
            PoolMetrics._by_registry[registry] = self  # published only once complete

    def _register(self, registry: CollectorRegistry, duration_buckets: Sequence[float],
                  wait_buckets: Sequence[float]) -> None:
        """Create the metric families in ``registry``."""
        self.jobs = Counter("worker_jobs", "Jobs by final status.", ["queue", "status"],
                            registry=registry)
        self.duration = Histogram(
            "worker_job_duration_seconds",
            "How long job functions ran (until they returned, even after a timeout).",
            ["task_type"], buckets=duration_buckets, registry=registry)
        self.wait = Histogram("worker_job_wait_seconds", "Time jobs waited in the queue.",
                              ["queue"], buckets=wait_buckets, registry=registry)
        self._pools: weakref.WeakSet[Any] = weakref.WeakSet()
        self._pools_lock = threading.Lock()
        registry.register(_StateCollector(self))

    @classmethod
    def for_registry(cls, registry: CollectorRegistry) -> PoolMetrics:
        """The registry's poolsim metrics, created with default buckets if it has none."""
        with cls._lock:
            existing = cls._by_registry.get(registry)
            return existing if existing is not None else cls(registry)

    def attach(self, pool: _Pool) -> _PoolRecorder:
        """Instrument ``pool``: returns the observer it must call (pools do this themselves)."""
        with self._pools_lock:
            self._pools.add(pool)
        return _PoolRecorder(self, pool.name)

    def pools(self) -> list[Any]:
        """The live pools attached, as a snapshot."""
        with self._pools_lock:
            return list(self._pools)


def _check_buckets(name: str, buckets: Sequence[float]) -> None:
    """Bucket bounds must be numbers > 0, strictly increasing (``inf`` only last)."""
    bounds = list(buckets)
    numeric = all(isinstance(b, numbers.Real) and not isinstance(b, bool) for b in bounds)
    if not (bounds and numeric and all(b > 0 for b in bounds)  # NaN fails every comparison
            and all(a < b for a, b in itertools.pairwise(bounds))):
        raise ConfigError(name, buckets, "a non-empty, strictly increasing sequence of "
                          "numbers > 0")


class _PoolRecorder:
    """The hooks of one pool, with its label children resolved once."""

    def __init__(self, metrics: PoolMetrics, queue: str) -> None:
        self._by_status = {status: metrics.jobs.labels(queue, status) for status in STATUSES}
        self._wait = metrics.wait.labels(queue)
        self._duration = metrics.duration
        self._by_task_type: dict[str, Any] = {}

    def job_started(self, job: Job) -> None:
        self._wait.observe(job.start - job.arrival)

    def job_resolved(self, job: Job) -> None:
        assert job.status is not None
        self._by_status[job.status].inc()

    def job_released(self, job: Job, duration: float) -> None:
        child = self._by_task_type.get(job.task_type)
        if child is None:
            child = self._by_task_type[job.task_type] = self._duration.labels(job.task_type)
        child.observe(duration)


class _StateCollector:
    """Reads queue depth and busy workers from each live pool when Prometheus scrapes."""

    def __init__(self, metrics: PoolMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("worker_queue_depth", "Jobs waiting in the queue.",
                                  labels=["queue"])
        busy = GaugeMetricFamily("worker_busy_workers",
                                 "Workers running a job, overdue ones included.",
                                 labels=["queue"])
        totals: dict[str, list[int]] = {}
        for pool in self._metrics.pools():
            stats = pool.stats()
            total = totals.setdefault(pool.name, [0, 0])
            total[0] += stats.queued
            total[1] += stats.busy_workers
        for queue, (queued, busy_workers) in sorted(totals.items()):
            depth.add_metric([queue], queued)
            busy.add_metric([queue], busy_workers)
        yield depth
        yield busy


def serve(port: int, addr: str = "127.0.0.1",
          registry: CollectorRegistry = REGISTRY) -> tuple[Any, threading.Thread]:
    """Expose ``registry`` on ``http://addr:port/metrics`` from a background thread.

    ``port=0`` picks a free port: read it from ``server.server_port``. Returns
    ``(server, thread)``; ``server.shutdown()`` stops it.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError("port", port, "an integer from 0 to 65535")
    return start_http_server(port, addr=addr, registry=registry)
