"""The demo job: a bursty load through a real WorkerPool, then its summary and metrics.

Bursts alternate with quiet spells, so a small pool meets back-pressure and
shows what it costs. Seeded: the same seed submits the same load.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest

from poolsim.config import PoolConfig
from poolsim.errors import QueueFull
from poolsim.pool import WorkerPool
from poolsim.records import Summary, summarize
from poolsim.shutdown import ShutdownReport

__all__ = ["DemoResult", "bursty_load", "run_demo"]


@dataclass(frozen=True)
class DemoResult:
    """What the demo measured: the summary, the shutdown report and the metrics text."""

    config: PoolConfig
    summary: Summary
    report: ShutdownReport
    metrics: str


def bursty_load(seconds: float, *, burst_rate: float, quiet_rate: float, period: float,
                mean_service: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """On/off Poisson arrivals (burst for half of each period) and exponential service times."""
    rng = np.random.default_rng(seed)
    arrivals = []
    t = 0.0
    while t < seconds:
        rate = burst_rate if (t % period) < period / 2 else quiet_rate
        t += rng.exponential(1.0 / rate)
        arrivals.append(t)
    arrival = np.array(arrivals[:-1])
    return arrival, rng.exponential(mean_service, arrival.size)


def run_demo(config: PoolConfig, *, seconds: float = 4.0, seed: int = 1) -> DemoResult:
    """Replay a bursty load in real time through ``WorkerPool(config)`` and measure it."""
    arrival, service = bursty_load(seconds, burst_rate=400.0, quiet_rate=40.0, period=1.0,
                                   mean_service=0.02, seed=seed)
    registry = CollectorRegistry()
    pool = WorkerPool(config, name="demo", record=True, registry=registry)
    began = time.monotonic()
    for at, work in zip(arrival, service, strict=True):
        delay = began + at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        with contextlib.suppress(QueueFull):  # an HTTP server would answer 503; the pool counts it
            pool.submit(time.sleep, float(work), task_type="sleep")
    report = pool.shutdown("drain")
    metrics = "\n".join(line for line in generate_latest(registry).decode().splitlines()
                        if line.startswith("worker_") and "_created" not in line)
    return DemoResult(config, summarize(pool.records(), workers=config.workers), report, metrics)
