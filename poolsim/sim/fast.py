"""The fast exact kernel: the SimPy model's results for its common subset, without SimPy.

The subset is a FIFO pool under ``reject`` or ``drop_oldest`` with any
``queue_size`` (unbounded too), any ``job_timeout`` and no shutdown. Both
engines give a job to the worker idle longest (as ``WorkerPool``'s workers
queue for work), and release workers before same-instant arrivals, so they
agree float for float on every start and end time (a property test checks it).

Under ``reject`` each job, in arrival order, simply takes the worker that
frees first (the Kiefer-Wolfowitz recursion); a second heap of the admitted
jobs' release times counts who is in the pool when the queue is bounded.
``drop_oldest`` can evict a job that already has a start planned, so it walks
events instead: a heap of busy workers and a deque of waiting jobs.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable

import numpy as np

from poolsim.config import Backpressure, PoolConfig
from poolsim.records import STATUSES

__all__ = ["NEVER_RAN", "STATUS_CODES", "Outcome", "in_fast_subset", "run_fast"]

STATUS_CODES = {status: code for code, status in enumerate(STATUSES)}  # what engines emit
_COMPLETED, _TIMEOUT, _REJECTED, _DROPPED = (STATUS_CODES[s] for s in
                                             ("completed", "timeout", "rejected", "dropped"))
NEVER_RAN = -2  # the worker of a job that never ran (-1 is the caller, under caller_runs)

# start, end, status and worker per job; the worker list may come as a function that makes it
Outcome = tuple[list[float], list[float], list[int], list[int] | Callable[[], list[int]]]


def in_fast_subset(config: PoolConfig, shutdown_at: float | None) -> bool:
    """Whether the kernel can run ``config`` exactly."""
    return shutdown_at is None and config.backpressure in (Backpressure.REJECT,
                                                           Backpressure.DROP_OLDEST)


def run_fast(arrival: list[float], service: list[float], config: PoolConfig,
             runtime: str) -> Outcome:
    """Per-job start, end, status code and worker."""
    if config.backpressure is Backpressure.DROP_OLDEST:
        return _events(arrival, service, config, runtime)
    return _recursion(arrival, service, config, runtime)


def _holds(service: list[float], config: PoolConfig, runtime: str
           ) -> tuple[list[float], list[float], list[int]]:
    """Per job: how long it keeps its worker, when after its start it is decided, and how."""
    timeout = config.job_timeout
    s = np.asarray(service, dtype=float)
    if timeout is None:
        return service, service, [_COMPLETED] * len(service)
    late = s > timeout
    decided = np.where(late, timeout, s)
    hold = decided if runtime == "asyncio" else s
    status = np.where(late, _TIMEOUT, _COMPLETED)
    return hold.tolist(), decided.tolist(), status.tolist()


def _recursion(arrival: list[float], service: list[float], config: PoolConfig,
               runtime: str) -> Outcome:
    n = len(arrival)
    hold, decided, status = _holds(service, config, runtime)
    free = [(0.0, -1, w) for w in range(config.workers)]  # (free from, last job, worker)
    replace = heapq.heapreplace
    if config.capacity is None:  # the hot case, so only times here; workers when asked
        start: list[float] = []
        end: list[float] = []
        started, ended = start.append, end.append
        free_at = [0.0] * config.workers
        for now, h, d in zip(arrival, hold, decided, strict=True):
            at = free_at[0]
            if at < now:
                at = now
            started(at)
            ended(at + d)
            replace(free_at, at + h)
        return start, end, status, lambda: _first_free(start, hold, config.workers)
    start = [math.nan] * n
    end = list(arrival)  # a rejected job ends at its arrival
    worker = [NEVER_RAN] * n
    capacity = config.capacity
    in_pool: list[float] = []  # release times of admitted jobs still in the pool
    pop, push = heapq.heappop, heapq.heappush
    for job in range(n):
        now = arrival[job]
        while in_pool and in_pool[0] <= now:
            pop(in_pool)
        if len(in_pool) >= capacity:
            status[job] = _REJECTED
            continue
        at, _, w = free[0]
        if at < now:
            at = now
        release = at + hold[job]
        start[job] = at
        end[job] = at + decided[job]
        worker[job] = w
        replace(free, (release, job, w))
        push(in_pool, release)
    return start, end, status, worker


def _first_free(start: list[float], hold: list[float], workers: int) -> list[int]:
    """Which worker ran each job when every job took the worker that freed first (ties:
    the one whose last job came first, as the SimPy engine orders them): the
    recursion's own choice, replayed from its times."""
    free = [(0.0, -1, w) for w in range(workers)]
    replace = heapq.heapreplace
    worker = []
    for job, (at, h) in enumerate(zip(start, hold, strict=True)):
        w = free[0][2]
        worker.append(w)
        replace(free, (at + h, job, w))
    return worker


def _events(arrival: list[float], service: list[float], config: PoolConfig,
            runtime: str) -> Outcome:
    n = len(arrival)
    hold, decided, status = _holds(service, config, runtime)
    start = [math.nan] * n
    end = list(arrival)
    worker = [NEVER_RAN] * n
    capacity = math.inf if config.capacity is None else config.capacity
    idle: deque[int] = deque(range(config.workers))  # longest idle first
    busy: list[tuple[float, int, int]] = []  # (release time, job, worker)
    queue: deque[int] = deque()
    in_pool = 0
    pop, push = heapq.heappop, heapq.heappush

    def begin(job: int, at: float, w: int) -> None:
        start[job] = at
        end[job] = at + decided[job]
        worker[job] = w
        push(busy, (at + hold[job], job, w))

    for job in range(n):
        now = arrival[job]
        while busy and busy[0][0] <= now:  # workers due by now finish first
            released, _, w = pop(busy)
            in_pool -= 1
            if queue:
                begin(queue.popleft(), released, w)
            else:
                idle.append(w)
        if in_pool < capacity:
            in_pool += 1
            if idle:
                begin(job, now, idle.popleft())
            else:
                queue.append(job)
        elif queue:
            victim = queue.popleft()
            status[victim] = _DROPPED
            end[victim] = now
            queue.append(job)
        else:
            status[job] = _REJECTED
    while busy:
        released, _, w = pop(busy)
        if queue:
            begin(queue.popleft(), released, w)
    return start, end, status, worker
