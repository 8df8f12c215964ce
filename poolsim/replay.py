"""Replay a trace through the real pool, and compare it with the model on the same trace.

:func:`replay` drives a real :class:`~poolsim.WorkerPool` (or
:class:`~poolsim.AsyncWorkerPool`) in wall-clock time, ``time_scale`` real
seconds per trace second: each job is submitted at its arrival and sleeps (or
burns CPU) for its service time. The records come back as the jobs frame in
*trace* seconds, so :func:`compare` can set them beside :func:`poolsim.simulate`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import threading
import time
from collections.abc import Callable
from functools import cached_property
from typing import Any, Literal

import numpy as np
import pandas as pd

from poolsim.aio import AsyncWorkerPool
from poolsim.config import Backpressure, PoolConfig
from poolsim.errors import ConfigError, PoolClosed, QueueFull
from poolsim.pool import WorkerPool
from poolsim.records import JOBS_COLUMNS, Status, Summary, jobs_frame, queue_depth, summarize
from poolsim.shutdown import ShutdownReport

__all__ = ["ReplayResult", "compare", "ks_distance", "replay"]

Work = Literal["sleep", "cpu"]


@dataclasses.dataclass(frozen=True)
class ReplayResult:
    """A real pool's run of a trace: its jobs frame in trace seconds, and how it went."""

    config: PoolConfig
    jobs: pd.DataFrame
    time_scale: float
    wall_s: float
    runtime: str
    shutdown: ShutdownReport | None

    @cached_property
    def summary(self) -> Summary:
        """:func:`poolsim.summarize` of :attr:`jobs`."""
        return summarize(self.jobs, workers=self.config.workers)

    def queue_depth(self) -> pd.Series:
        """Queue length over (trace) time."""
        return queue_depth(self.jobs)


def _scaled(config: PoolConfig, scale: float) -> PoolConfig:
    """The config in real seconds: every timeout shrinks with the trace's time."""
    def real(seconds: float | None) -> float | None:
        return None if seconds is None else seconds * scale

    return config.replace(block_timeout=real(config.block_timeout),
                          job_timeout=real(config.job_timeout),
                          shutdown_timeout=real(config.shutdown_timeout))


def _sleeper(work: Work) -> Callable[[float], None]:
    if work == "sleep":
        return time.sleep

    def burn(seconds: float) -> None:  # holds the GIL, as CPU-bound Python does
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            pass

    return burn


def replay(
    trace: pd.DataFrame,
    config: PoolConfig,
    *,
    time_scale: float = 0.01,
    work: Work = "sleep",
    runtime: Literal["threads", "asyncio"] = "threads",
    shutdown_at: float | None = None,
) -> ReplayResult:
    """Run ``trace`` through a real pool of ``config``, ``time_scale`` real s per trace s.

    Timeouts in ``config`` are in trace seconds and are scaled too.
    ``block`` and ``caller_runs`` hold their submitter, so each arrival is
    submitted from its own thread (task), as in the model; otherwise one
    producer submits in trace order. ``shutdown_at`` calls
    ``shutdown(config.shutdown)`` at that trace time; later arrivals, refused
    with ``PoolClosed``, are recorded as ``rejected`` as the model does.
    """
    from poolsim.traces import load_trace

    trace = load_trace(trace)
    if not (isinstance(time_scale, int | float) and math.isfinite(time_scale) and time_scale > 0):
        raise ConfigError("time_scale", time_scale, "real seconds per trace second, > 0")
    if work not in ("sleep", "cpu"):
        raise ConfigError("work", work, "'sleep' or 'cpu'")
    if runtime not in ("threads", "asyncio"):
        raise ConfigError("runtime", runtime, "'threads' or 'asyncio'")
    real = _scaled(config, time_scale)
    arrival = trace["arrival_s"].to_numpy(float)
    service = (trace["service_s"].to_numpy(float) * time_scale).tolist()
    task_type = trace["task_type"].astype(str).tolist()
    drive = _drive_async if runtime == "asyncio" else _drive_threads
    began, closed, frame, report, wall = drive(real, arrival, service, task_type, time_scale,
                                               shutdown_at, work)
    for column in ("arrival_s", "start_s", "end_s"):
        frame[column] = (frame[column] - began) / time_scale
    closed = [(job, (when - began) / time_scale) for job, when in closed]
    frame = _in_trace_order(frame, trace, closed)
    return ReplayResult(config, frame, time_scale, wall, runtime, report)


def _in_trace_order(frame: pd.DataFrame, trace: pd.DataFrame,
                    closed: list[tuple[int, float]]) -> pd.DataFrame:
    """Rows renumbered as trace jobs (by arrival order), plus the arrivals that shutdown
    refused, which the pool never saw (``closed``: job, and when in trace seconds)."""
    jobs = [job for job, _ in closed]
    arrived = trace["arrival_s"].iloc[jobs].to_numpy()
    refused = pd.DataFrame({
        "job_id": -1, "task_type": trace["task_type"].iloc[jobs].astype(str).to_numpy(),
        "queue": "default", "arrival_s": arrived, "start_s": math.nan,
        "end_s": np.maximum(arrived, [when for _, when in closed]),
        "status": Status.REJECTED.value, "worker": None, "attempt": 1})
    rows = pd.concat([frame, refused[list(JOBS_COLUMNS)]], ignore_index=True)
    rows = rows.sort_values(["arrival_s", "job_id"], kind="stable", ignore_index=True)
    rows["job_id"] = np.arange(len(rows))
    rows["queue"] = trace["queue"].astype(str).to_numpy()
    return jobs_frame({column: rows[column] for column in JOBS_COLUMNS})


Driven = tuple[float, list[tuple[int, float]], pd.DataFrame, ShutdownReport | None, float]


def _drive_threads(config: PoolConfig, arrival: np.ndarray, service: list[float],
                   task_type: list[str], scale: float, shutdown_at: float | None,
                   work: Work) -> Driven:
    """Submit on schedule from this thread (or one thread per arrival); shut down on
    schedule from another, as a SIGTERM would, whatever the submitters are doing."""
    pool = WorkerPool(config, record=True)
    run = _sleeper(work)
    own_thread = config.backpressure in (Backpressure.BLOCK, Backpressure.CALLER_RUNS)
    closed: list[tuple[int, float]] = []  # (job, when PoolClosed refused it)
    submitters: list[threading.Thread] = []
    reports: list[ShutdownReport] = []

    def submit(job: int) -> None:
        try:
            pool.submit(run, service[job], task_type=task_type[job])
        except QueueFull:
            pass  # the pool recorded it
        except PoolClosed:
            closed.append((job, time.monotonic()))

    began = time.monotonic()
    stopper = None
    if shutdown_at is not None:
        def stop() -> None:
            _sleep_until(began + shutdown_at * scale)
            reports.append(pool.shutdown(config.shutdown))
        stopper = threading.Thread(target=stop, name="replay-shutdown")
        stopper.start()
    for job, at in enumerate(arrival):
        if not reports:  # once closed, the pool refuses at once: no need to wait for it
            _sleep_until(began + at * scale)
        if own_thread and not reports:
            thread = threading.Thread(target=submit, args=(job,), daemon=True)
            thread.start()
            submitters.append(thread)
        else:
            submit(job)
    for thread in submitters:
        thread.join()
    if stopper is not None:
        stopper.join()
    else:
        pool.shutdown("drain", math.inf)
    while pool.stats().running:  # jobs a deadline left running: let them end, then read
        time.sleep(0.001)
    wall = time.monotonic() - began
    return (began - pool._ledger.t0, [(j, t - pool._ledger.t0) for j, t in closed],
            pool.records(), reports[0] if reports else None, wall)


def _drive_async(config: PoolConfig, arrival: np.ndarray, service: list[float],
                 task_type: list[str], scale: float, shutdown_at: float | None,
                 work: Work) -> Driven:
    async def job(seconds: float) -> None:
        if work == "cpu":
            _sleeper("cpu")(seconds)
        else:
            await asyncio.sleep(seconds)

    async def main() -> Driven:
        pool = AsyncWorkerPool(config, record=True)
        own_task = config.backpressure in (Backpressure.BLOCK, Backpressure.CALLER_RUNS)
        closed: list[tuple[int, float]] = []
        pending: list[asyncio.Task[None]] = []
        reports: list[ShutdownReport] = []

        async def submit(i: int) -> None:
            try:
                handle = await pool.submit(job, service[i], task_type=task_type[i])
                handle.add_done_callback(_retrieved)  # the records keep the outcome
            except QueueFull:
                pass
            except PoolClosed:
                closed.append((i, time.monotonic()))

        async def stop(at: float) -> None:
            await asyncio.sleep(max(0.0, began + at * scale - time.monotonic()))
            reports.append(await pool.shutdown(config.shutdown))

        loop = asyncio.get_running_loop()
        began = time.monotonic()
        async with pool:
            stopper = None if shutdown_at is None else loop.create_task(stop(shutdown_at))
            for i, at in enumerate(arrival):
                if not reports:
                    await asyncio.sleep(max(0.0, began + at * scale - time.monotonic()))
                if own_task and not reports:
                    pending.append(loop.create_task(submit(i)))
                else:
                    await submit(i)
            if stopper is not None:
                await stopper
            await asyncio.gather(*pending)
            while pool.stats().running:
                await asyncio.sleep(0.001)
        wall = time.monotonic() - began
        t0 = pool._ledger.t0
        return (began - t0, [(j, t - t0) for j, t in closed], pool.records(),
                reports[0] if reports else None, wall)

    return asyncio.run(main())


def _retrieved(handle: asyncio.Future[Any]) -> None:
    """Mark a handle's outcome as seen: asyncio would log every unread dropped job."""
    if not handle.cancelled():
        handle.exception()


def _sleep_until(deadline: float) -> None:
    delay = deadline - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def ks_distance(a: np.ndarray | pd.Series, b: np.ndarray | pd.Series) -> float:
    """The Kolmogorov-Smirnov distance: the largest gap between two empirical CDFs."""
    x = np.sort(np.asarray(a, dtype=float))
    y = np.sort(np.asarray(b, dtype=float))
    if not x.size or not y.size:
        return math.nan
    points = np.concatenate([x, y])
    return float(np.max(np.abs(np.searchsorted(x, points, side="right") / x.size
                               - np.searchsorted(y, points, side="right") / y.size)))


def _latency(frame: pd.DataFrame) -> np.ndarray:
    done = frame["status"].astype(str) == Status.COMPLETED.value
    return (frame["end_s"] - frame["arrival_s"]).to_numpy(float)[done.to_numpy()]


def compare(real: Any, simulated: Any) -> pd.DataFrame:
    """A small table setting two runs of one trace side by side (a frame or a result each).

    Rows: counts by status, rejection rate, throughput, wait and latency
    p50/p95/p99, and the Kolmogorov-Smirnov distance of their latencies.
    """
    frames = [x.jobs if hasattr(x, "jobs") else x for x in (real, simulated)]
    summaries = [summarize(frame) for frame in frames]
    rows: dict[str, tuple[float, float]] = {}
    for status in Status:
        counts = [s.counts[status.value] for s in summaries]
        if any(counts):
            rows[f"n_{status.value}"] = (counts[0], counts[1])
    for name in ("rejection_rate", "drop_rate", "throughput", "wait_p50", "wait_p95", "wait_p99",
                 "latency_p50", "latency_p95", "latency_p99"):
        rows[name] = (getattr(summaries[0], name), getattr(summaries[1], name))
    table = pd.DataFrame.from_dict(rows, orient="index", columns=["real", "simulated"])
    table["difference"] = table["real"] - table["simulated"]
    ks = ks_distance(_latency(frames[0]), _latency(frames[1]))
    table.loc["latency_ks_distance"] = (math.nan, math.nan, ks)
    return table
