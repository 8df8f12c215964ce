"""Queue sizes for Prometheus, read from the store when Prometheus scrapes.

The sizes of a durable queue are facts of the store, not of any one worker:
:class:`QueueCollector` asks the backend (``stats``: one ``COUNT`` per state in
SQLite) at scrape time, so workers on many machines never double count and
nothing updates a gauge on the hot path (as Asynq's ``x/metrics`` exporter)::

    registry = CollectorRegistry()
    QueueCollector("sqlite:///jobs.db", registry=registry)
    registry.get_sample_value("poolsim_queue_depth", {"queue": "default"})

Register one per store, in the process that serves ``/metrics`` for it. Its
names are its own (``poolsim_queue_*``), so it can share a registry with a
server's pool metrics, whose ``worker_queue_depth`` is that process's in-memory
queue, not the store's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric

from poolsim.queue.backends.base import Backend, open_backend
from poolsim.queue.task import State

__all__ = ["QueueCollector"]


class QueueCollector:
    """Exports, per queue, at scrape time:

    - ``poolsim_queue_depth{queue}``: pending tasks (ready, waiting for a worker);
    - ``poolsim_queue_tasks{queue,state}``: tasks in each :class:`State` (all six,
      zeros included);
    - ``poolsim_queue_latency_seconds{queue}``: age of the oldest pending task (0 if none);
    - ``poolsim_queue_paused{queue}``: 1 while the queue is paused.

    Registers itself on ``registry`` (pass ``None`` to register it yourself).
    """

    def __init__(self, url: str | Backend, *, registry: CollectorRegistry | None = REGISTRY,
                 clock: Callable[[], float] = time.time) -> None:
        self.backend: Backend = open_backend(url) if isinstance(url, str) else url
        self._clock = clock
        if registry is not None:
            try:
                registry.register(self)
            except ValueError:  # a name already there: do not leak the store we opened
                if isinstance(url, str):
                    self.backend.close()
                raise

    def describe(self) -> Iterator[Metric]:
        """The families, without reading the store (a registry checks names with this)."""
        return iter(self._families())

    def _families(self) -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily("poolsim_queue_depth", "Tasks pending in the queue (ready, "
                              "waiting for a worker), read from the store.", labels=["queue"]),
            GaugeMetricFamily("poolsim_queue_tasks", "Tasks in the queue by state, read from "
                              "the store.", labels=["queue", "state"]),
            GaugeMetricFamily("poolsim_queue_latency_seconds", "Age of the oldest pending "
                              "task (0 when none is pending).", labels=["queue"]),
            GaugeMetricFamily("poolsim_queue_paused", "1 while the queue is paused.",
                              labels=["queue"]),
        ]

    def collect(self) -> Iterator[Metric]:
        """Read every queue's counts from the store now."""
        depth, tasks, latency, paused = self._families()
        for stats in self.backend.stats(now=self._clock()):
            depth.add_metric([stats.queue], stats.counts.get(State.PENDING, 0))
            for state in State:
                tasks.add_metric([stats.queue, state.value], stats.counts.get(state, 0))
            latency.add_metric([stats.queue], stats.oldest_pending_age_s or 0.0)
            paused.add_metric([stats.queue], 1.0 if stats.paused else 0.0)
        yield depth
        yield tasks
        yield latency
        yield paused
