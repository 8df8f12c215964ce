"""The SimPy model of :class:`~poolsim.WorkerPool`, and :func:`simulate`.

It models the real pool's semantics, not a textbook queue: the same
``PoolConfig``, back-pressure and shutdown policies, statuses and jobs frame.

- ``queue_size`` counts waiting places; the pool holds ``workers + queue_size``.
- ``block`` and ``caller_runs`` hold the *submitter*: every arrival is its own
  submitter, as HTTP handler threads are, so a blocked arrival delays only itself.
- A job that outlives ``job_timeout`` is decided ``timeout`` at its deadline;
  with ``runtime="threads"`` its worker stays busy until the function returns
  (Python cannot kill a thread), with ``runtime="asyncio"`` it frees at once.
- Events at the same instant happen in this order: workers finishing (and
  taking the next queued job), then arrivals and ``block`` give-ups, then a
  shutdown. An arriving job goes at once to the worker idle longest, as
  ``WorkerPool``'s idle workers queue for work.
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import math
import numbers
from collections import deque
from collections.abc import Generator
from functools import cached_property
from typing import Any, Literal

import numpy as np
import pandas as pd
import simpy
from simpy.events import NORMAL, Event

from poolsim.config import Backpressure, PoolConfig, ShutdownPolicy
from poolsim.errors import ConfigError
from poolsim.records import STATUS_DTYPE, Status, Summary, jobs_frame, queue_depth, summarize
from poolsim.sim.fast import NEVER_RAN, STATUS_CODES, Outcome, in_fast_subset, run_fast

__all__ = ["Runtime", "SimResult", "SimShutdown", "simulate"]

Runtime = Literal["threads", "asyncio"]
RUNTIMES: tuple[str, ...] = ("threads", "asyncio")
ENGINES: tuple[str, ...] = ("auto", "simpy", "fast")
_ARRIVAL = NORMAL + 1  # after same-instant releases
_SHUTDOWN = NORMAL + 2  # after same-instant arrivals
COMPLETED, FAILED, TIMEOUT, REJECTED, DROPPED, CANCELLED, RETURNED = (
    Status.COMPLETED.value, Status.FAILED.value, Status.TIMEOUT.value, Status.REJECTED.value,
    Status.DROPPED.value, Status.CANCELLED.value, Status.RETURNED.value)


@dataclasses.dataclass(frozen=True)
class SimShutdown:
    """What a shutdown at ``at`` did to the jobs in the pool, and when the pool exited.

    ``completed``, ``returned``, ``cancelled`` and ``still_running`` list job
    ids as :class:`~poolsim.ShutdownReport` does; ``exit_s`` is when
    ``shutdown()`` returned (the pool idle, or the deadline). ``released``
    maps every job in the pool to when its function returned (NaN if never ran).
    """

    at: float
    policy: ShutdownPolicy
    timeout: float | None
    exit_s: float
    completed: tuple[int, ...]
    returned: tuple[int, ...]
    cancelled: tuple[int, ...]
    still_running: tuple[int, ...]
    released: dict[int, float]

    @property
    def duration_s(self) -> float:
        """Seconds from the shutdown signal until ``shutdown()`` returned."""
        return self.exit_s - self.at

    def killed(self, grace_s: float = 30.0) -> tuple[int, ...]:
        """Jobs whose function would still run when a SIGKILL comes ``grace_s`` after the
        signal (Kubernetes' default grace period is 30 s): their work is lost."""
        kill = self.at + grace_s
        return tuple(job for job, done in self.released.items() if done > kill)


@dataclasses.dataclass(frozen=True, eq=False)
class SimResult:
    """One simulated run: the jobs frame and what it adds up to.

    The jobs frame is built when first read, so a sweep that needs only the
    summary pays for the simulation, not for a frame it never shows.
    """

    config: PoolConfig
    engine: str
    runtime: str
    seed: int | None
    shutdown: SimShutdown | None
    trace: pd.DataFrame = dataclasses.field(repr=False)
    outcome: Outcome = dataclasses.field(repr=False)

    @cached_property
    def jobs(self) -> pd.DataFrame:
        """The jobs frame: one row per job of the trace, in trace order."""
        start, end, status, worker = self.outcome
        trace, n = self.trace, len(self.trace)
        codes = np.asarray(worker() if callable(worker) else worker, dtype=np.int64)
        return jobs_frame({
            "job_id": np.arange(n), "task_type": trace["task_type"].array,
            "queue": trace["queue"].array, "arrival_s": trace["arrival_s"].to_numpy(),
            "start_s": np.asarray(start, dtype=float), "end_s": np.asarray(end, dtype=float),
            "status": pd.Categorical.from_codes(np.asarray(status, dtype=np.int8),
                                                dtype=STATUS_DTYPE),
            "worker": pd.arrays.IntegerArray(codes, codes == NEVER_RAN),
            "attempt": np.ones(n, dtype=np.int64)})

    @cached_property
    def summary(self) -> Summary:
        """:func:`poolsim.summarize` of :attr:`jobs`, for ``config.workers`` workers."""
        return summarize(self.jobs, workers=self.config.workers)

    def queue_depth(self) -> pd.Series:
        """Queue length over time (:func:`poolsim.queue_depth` of :attr:`jobs`)."""
        return queue_depth(self.jobs)

    def _repr_html_(self) -> str:
        s = self.summary
        rows = [("jobs", f"{s.jobs:,}")]
        rows += [(status, f"{n:,}") for status, n in s.counts.items() if n]
        rows += [("throughput", f"{s.throughput:.4g} jobs/s"),
                 ("rejection rate", f"{s.rejection_rate:.3%}"),
                 ("utilisation", f"{s.utilisation:.1%}"),
                 ("wait p50 / p99", f"{s.wait_p50:.4g} / {s.wait_p99:.4g} s"),
                 ("latency p50 / p95 / p99",
                  f"{s.latency_p50:.4g} / {s.latency_p95:.4g} / {s.latency_p99:.4g} s")]
        if self.shutdown is not None:
            d = self.shutdown
            rows.append(("shutdown", f"{d.policy} at {d.at:g} s: exit after {d.duration_s:.4g} s, "
                         f"{len(d.completed)} completed, {len(d.returned)} returned, "
                         f"{len(d.cancelled)} cancelled, {len(d.still_running)} still running"))
        body = "".join(f"<tr><th style='text-align:left'>{k}</th><td>{v}</td></tr>"
                       for k, v in rows)
        return (f"<div><b>SimResult</b> ({self.engine} engine, {self.runtime}): "
                f"<code>{self.config!r}</code><table>{body}</table></div>")


def simulate(
    trace: pd.DataFrame,
    config: PoolConfig,
    *,
    seed: int | None = None,
    load: float = 1.0,
    shutdown_at: float | None = None,
    runtime: Runtime = "threads",
    engine: Literal["auto", "simpy", "fast"] = "auto",
) -> SimResult:
    """Replay ``trace`` through a model of ``WorkerPool(config)``; every job appears once.

    ``load`` rescales the trace first (:func:`poolsim.scale_load`, seeded by
    ``seed``: thinning or superposing arrivals keeps their burstiness; the
    model itself draws no random numbers). ``shutdown_at`` starts
    ``config.shutdown`` (with ``config.shutdown_timeout``) at that instant;
    later arrivals are rejected, as ``PoolClosed`` would. ``engine="auto"``
    uses the fast exact kernel when the config is in its subset (``reject``
    or ``drop_oldest``, no shutdown) and SimPy otherwise.

    >>> import pandas as pd
    >>> from poolsim import PoolConfig
    >>> trace = pd.DataFrame({"arrival_s": [0.0, 0.0, 0.0], "service_s": [1.0, 1.0, 1.0]})
    >>> simulate(trace, PoolConfig(workers=1, queue_size=1)).jobs["status"].tolist()
    ['completed', 'completed', 'rejected']
    """
    from poolsim.reshape import scale_load
    from poolsim.traces import load_trace

    trace = load_trace(trace)
    if load != 1.0:
        trace = scale_load(trace, load, seed=seed)
    if runtime not in RUNTIMES:
        raise ConfigError("runtime", runtime, "one of " + ", ".join(map(repr, RUNTIMES)))
    if engine not in ENGINES:
        raise ConfigError("engine", engine, "one of " + ", ".join(map(repr, ENGINES)))
    if shutdown_at is not None and (isinstance(shutdown_at, bool)
                                    or not isinstance(shutdown_at, numbers.Real)
                                    or not (math.isfinite(shutdown_at) and shutdown_at >= 0)):
        raise ConfigError("shutdown_at", shutdown_at, "None or a finite time >= 0 in seconds")
    fast_ok = in_fast_subset(config, shutdown_at)
    if engine == "fast" and not fast_ok:
        raise ConfigError("engine", engine, "'fast' covers only reject and drop_oldest "
                          "without shutdown_at; use engine='simpy' or 'auto'")
    arrival = trace["arrival_s"].to_numpy(dtype=float).tolist()
    service = trace["service_s"].to_numpy(dtype=float).tolist()
    if engine == "fast" or (engine == "auto" and fast_ok):
        return SimResult(config, "fast", runtime, seed, None, trace,
                         run_fast(arrival, service, config, runtime))
    model = _Model(arrival, service, config, runtime, shutdown_at)
    outcome = model.run()
    return SimResult(config, "simpy", runtime, seed, model.shutdown_outcome(), trace, outcome)


class _Model:
    """The pool on a ``simpy.Environment``: one arrival process, ``workers`` long-lived
    worker processes pulling from a deque, and a shutdown process."""

    def __init__(self, arrival: list[float], service: list[float], config: PoolConfig,
                 runtime: str, shutdown_at: float | None) -> None:
        self.env = env = simpy.Environment()
        self.config = config
        self.arrival = arrival
        self.service = service
        n = len(arrival)
        self.start = [math.nan] * n
        self.end = [math.nan] * n
        self.status: list[str | None] = [None] * n
        self.worker: list[int | None] = [None] * n
        self.released = [math.nan] * n  # when each function returned
        self.capacity = math.inf if config.capacity is None else config.capacity
        self.timeout = config.job_timeout
        self.preemptive = runtime == "asyncio"  # a timeout or cancel frees the worker at once
        self.in_pool = 0  # queued + held by a worker: what capacity limits
        self.queue: deque[int] = deque()
        self.idle: deque[int] = deque()  # longest idle first; each worker joins as it starts
        self.wake: list[Event | None] = [None] * config.workers
        self.running: dict[int, int] = {}  # job -> worker, functions executing on workers
        self.procs = [env.process(self._work(w)) for w in range(config.workers)]
        self.callers: dict[int, simpy.Process] = {}  # caller_runs jobs executing
        self.blocked: deque[int] = deque()  # submitters waiting for a place, in order...
        self.waiting: set[int] = set()  # ...of which these still wait (the rest gave up)
        self.closed = False
        self.shutdown_at = shutdown_at
        self.at_close: list[int] = []
        self.exit_s = math.nan
        self.deadline = math.inf
        env.process(self._arrivals())
        if shutdown_at is not None:
            env.process(self._shutdown(shutdown_at))

    def run(self) -> Outcome:
        self.env.run()
        assert None not in self.status, "every job is decided"
        return (self.start, self.end, [STATUS_CODES[s] for s in self.status],  # type: ignore[index]
                [NEVER_RAN if w is None else w for w in self.worker])

    # -- time ---------------------------------------------------------------

    def _alarm(self, at: float, priority: int) -> Event:
        """An event at exactly ``at``: ``now + (at - now)`` may round to another float, and
        the kernel must see the trace's own times. (SimPy schedules only by delay, so this
        pushes onto its queue as ``Environment.schedule`` does.)"""
        event = Event(self.env)
        event._ok = True
        event._value = None
        heapq.heappush(self.env._queue,  # type: ignore[misc]
                       (at, priority, next(self.env._eid), event))
        return event

    def _decide(self, job: int, status: str, at: float) -> None:
        if self.status[job] is None:
            self.status[job] = status
            self.end[job] = at

    def _due(self, job: int) -> tuple[str, float]:
        """How a started job ends if nothing intervenes: its status and decision time."""
        start, service = self.start[job], self.service[job]
        if self.timeout is not None and service > self.timeout:
            return TIMEOUT, start + self.timeout
        return COMPLETED, start + service

    # -- arrivals ---------------------------------------------------------------

    def _arrivals(self) -> Generator[Event, Any, None]:
        policy = self.config.backpressure
        for job, at in enumerate(self.arrival):
            yield self._alarm(at, _ARRIVAL)
            if self.closed:
                self._decide(job, REJECTED, at)
            elif self.in_pool < self.capacity:
                self._admit(job)
            elif policy is Backpressure.DROP_OLDEST and self.queue:
                self._decide(self.queue.popleft(), DROPPED, at)
                self.queue.append(job)
            elif policy is Backpressure.CALLER_RUNS:
                self.callers[job] = self.env.process(self._caller_runs(job))
            elif policy is Backpressure.BLOCK:
                self._block(job)
            else:
                self._decide(job, REJECTED, at)

    def _admit(self, job: int) -> None:
        self.in_pool += 1
        if not self.idle:
            self.queue.append(job)
            return
        worker = self.idle.popleft()
        self._begin(job, worker)
        wake = self.wake[worker]
        assert wake is not None
        wake.succeed(job)

    def _block(self, job: int) -> None:
        self.blocked.append(job)
        self.waiting.add(job)
        if self.config.block_timeout is not None:
            give_up = self._alarm(self.arrival[job] + self.config.block_timeout, _ARRIVAL)
            give_up.callbacks.append(lambda _: self._give_up(job))

    def _give_up(self, job: int) -> None:
        if job in self.waiting:
            self.waiting.remove(job)
            self._decide(job, REJECTED, self.env.now)

    def _next_blocked(self) -> int | None:
        """The longest-waiting blocked submitter still waiting, taken off the line."""
        while self.blocked:
            job = self.blocked.popleft()
            if job in self.waiting:
                self.waiting.remove(job)
                return job
        return None

    def _caller_runs(self, job: int) -> Generator[Event, Any, None]:
        """The submitter runs the job itself: outside the pool, but shutdown waits for it."""
        self.worker[job] = -1
        self.start[job] = self.env.now
        with contextlib.suppress(simpy.Interrupt):  # asyncio: an immediate shutdown's cancel
            yield self.env.timeout(self._hold(job))
        del self.callers[job]
        self._finish(job)

    # -- workers ----------------------------------------------------------------

    def _begin(self, job: int, worker: int) -> None:
        self.start[job] = self.env.now
        self.worker[job] = worker
        self.running[job] = worker

    def _hold(self, job: int) -> float:
        """How long the job's function keeps its worker."""
        service = self.service[job]
        if self.preemptive and self.timeout is not None:
            return min(service, self.timeout)
        return service

    def _work(self, worker: int) -> Generator[Event, Any, None]:
        env = self.env
        while True:
            if self.queue:
                job = self.queue.popleft()
                self._begin(job, worker)
            else:
                if self.closed:
                    return
                self.idle.append(worker)
                self.wake[worker] = wake = env.event()
                job = yield wake
                self.wake[worker] = None
                if job is None:  # the pool closed while this worker was idle
                    return
            with contextlib.suppress(simpy.Interrupt):  # asyncio: an immediate shutdown's cancel
                yield env.timeout(self._hold(job))
            del self.running[job]
            self.in_pool -= 1
            self._finish(job)
            if self.waiting and not self.closed:
                blocked = self._next_blocked()
                if blocked is not None:
                    self._admit(blocked)

    def _finish(self, job: int) -> None:
        """The job's function returned now: decide it if still open; maybe the pool is idle."""
        now = self.env.now
        self.released[job] = now
        status, at = self._due(job)
        self._decide(job, status, min(at, now))
        if self.closed and math.isnan(self.exit_s) and not self.in_pool and not self.callers:
            self.exit_s = min(now, self.deadline)

    # -- shutdown -----------------------------------------------------------------

    def _shutdown(self, at: float) -> Generator[Event, Any, None]:
        yield self._alarm(at, _SHUTDOWN)
        config, now = self.config, at
        self.closed = True
        self.at_close = sorted([*self.queue, *self.running, *self.callers])
        while (blocked := self._next_blocked()) is not None:
            self._decide(blocked, REJECTED, now)  # PoolClosed
        self.idle.clear()  # every idle worker is woken to exit
        for wake in self.wake:
            if wake is not None:
                wake.succeed(None)
        if config.shutdown_timeout is not None:
            self.deadline = at + config.shutdown_timeout
        if config.shutdown is ShutdownPolicy.IMMEDIATE:
            self._take_queued(CANCELLED)
            for job in [*self.running, *self.callers]:
                if self._due(job)[1] > now:
                    self._decide(job, CANCELLED, now)
                    if self.preemptive:
                        proc = (self.procs[self.running[job]] if job in self.running
                                else self.callers[job])
                        proc.interrupt("shutdown")
        elif config.shutdown is ShutdownPolicy.FINISH_IN_FLIGHT:
            self._take_queued(RETURNED)
        if not self.in_pool and not self.callers:
            self.exit_s = now
        if self.deadline < math.inf:
            yield self._alarm(self.deadline, _SHUTDOWN)
            self._take_queued(RETURNED)
            if math.isnan(self.exit_s):
                self.exit_s = self.deadline

    def _take_queued(self, status: str) -> None:
        while self.queue:
            self._decide(self.queue.popleft(), status, self.env.now)
            self.in_pool -= 1

    def shutdown_outcome(self) -> SimShutdown | None:
        """What the shutdown did; None if the run had none."""
        if self.shutdown_at is None:
            return None
        exit_s = self.exit_s
        ran = [job for job in self.at_close if not math.isnan(self.start[job])]
        return SimShutdown(
            at=self.shutdown_at,
            policy=self.config.shutdown,
            timeout=self.config.shutdown_timeout,
            exit_s=exit_s,
            completed=tuple(j for j in ran if self.released[j] <= exit_s
                            and self.status[j] not in (CANCELLED, RETURNED)),
            returned=tuple(j for j in self.at_close if self.status[j] == RETURNED),
            cancelled=tuple(j for j in self.at_close if self.status[j] == CANCELLED),
            still_running=tuple(j for j in ran if self.released[j] > exit_s
                                and self.status[j] not in (CANCELLED, RETURNED)),
            released={j: self.released[j] for j in self.at_close},
        )
