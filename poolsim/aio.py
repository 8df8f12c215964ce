"""AsyncWorkerPool: the same bounded pool for coroutine functions, on one asyncio loop.

Same config, policies, statuses, records and metrics as :class:`WorkerPool`.
Unlike threads, a coroutine can be stopped: a job that outlives
``job_timeout`` is cancelled for real and frees its worker at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import pandas as pd

from poolsim.config import Backpressure, PoolConfig, ShutdownPolicy, config_from, shutdown_args
from poolsim.errors import JobCancelled, JobTimeout, PoolClosed, QueueFull
from poolsim.jobs import Job, _current
from poolsim.ledger import (
    CANCELLED,
    COMPLETED,
    DROPPED,
    FAILED,
    RETURNED,
    TIMEOUT,
    Ledger,
    PoolObserver,
    PoolStats,
    observers_for,
)
from poolsim.shutdown import ShutdownReport

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from poolsim.metrics import PoolMetrics

__all__ = ["AsyncWorkerPool"]

T = TypeVar("T")


class AsyncWorkerPool:
    """``workers`` asyncio tasks behind a bounded queue of coroutine jobs.

    >>> import asyncio
    >>> from poolsim import AsyncWorkerPool
    >>> async def main():
    ...     async with AsyncWorkerPool(workers=2, queue_size=10) as pool:
    ...         handle = await pool.submit(asyncio.sleep, 0, "done")
    ...         return await handle
    >>> asyncio.run(main())
    'done'

    ``submit`` is a coroutine because ``block`` and ``caller_runs`` make the
    submitter wait; it returns an ``asyncio.Future`` to await for the result.
    Workers start on the first ``submit`` (or ``async with``), on the running loop.
    """

    def __init__(
        self,
        config: PoolConfig | None = None,
        *,
        name: str = "default",
        record: bool = False,
        registry: CollectorRegistry | PoolMetrics | None = None,
        observers: Iterable[PoolObserver] = (),
        **options: Any,
    ) -> None:
        self.config = config = config_from(config, options)
        self.name = name
        self._idle = asyncio.Event()
        self._ledger = Ledger(name, record=record, workers=config.workers, idle=self._idle,
                              observers=observers_for(self, registry, observers))
        self._capacity = math.inf if config.capacity is None else config.capacity
        self._queue: deque[Job] = deque()
        self._tokens = asyncio.Semaphore(0)  # one per queued job, + exit tokens
        self._on_workers = 0  # queued + held by a worker: what capacity limits
        self._room_waiters: deque[asyncio.Future[None]] = deque()  # blocked submitters
        self._tasks: dict[int, asyncio.Task[Any]] = {}  # job id -> the task running it
        self._workers: list[asyncio.Task[None]] = []
        self._ids = itertools.count()

    # -- submitting ---------------------------------------------------------

    async def submit(self, fn: Callable[..., Awaitable[T]], /, *args: Any,
                     task_type: str = "default", **kwargs: Any) -> asyncio.Future[T]:
        """Queue ``fn(*args, **kwargs)``; return a future of its result.

        Back-pressure as in :meth:`WorkerPool.submit`: ``reject`` raises
        :class:`QueueFull`, ``block`` waits up to ``block_timeout``,
        ``drop_oldest`` evicts the oldest queued job, ``caller_runs`` awaits
        the job in the submitting task. :class:`PoolClosed` after shutdown.
        """
        if self._ledger.closed:
            raise PoolClosed(self.name)
        self._start()
        handle: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        job = Job(next(self._ids), task_type, fn, args, kwargs, handle, time.monotonic())
        policy = self.config.backpressure
        if self._on_workers < self._capacity or (
            policy is Backpressure.BLOCK and await self._wait_for_room()
        ):
            self._admit(job)
        elif policy is Backpressure.DROP_OLDEST and (victim := self._oldest_waiting()):
            self._queue.remove(victim)  # its place and wake-up token pass to the job
            self._ledger.undecided[job.job_id] = job
            self._queue.append(job)
            self._ledger.settle([victim], DROPPED)
        elif policy is Backpressure.CALLER_RUNS:
            job.worker = -1
            self._ledger.undecided[job.job_id] = job
            self._ledger.running[job.job_id] = job
            await self._run(job, None)
        else:
            self._ledger.reject(job)
            raise QueueFull(self.name, self.config.capacity, policy.value)
        return handle

    def _oldest_waiting(self) -> Job | None:
        """The oldest queued job no idle worker is about to take, when the pool is full."""
        assert self.config.queue_size is not None
        handed_off = len(self._queue) - self.config.queue_size
        return self._queue[handed_off] if 0 <= handed_off < len(self._queue) else None

    def _admit(self, job: Job) -> None:
        self._on_workers += 1
        self._ledger.undecided[job.job_id] = job
        self._queue.append(job)
        self._tokens.release()

    async def _wait_for_room(self) -> bool:
        """``block``: wait up to ``block_timeout`` for room; False if none came."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.config.block_timeout):
                while self._on_workers >= self._capacity:
                    waiter = loop.create_future()
                    self._room_waiters.append(waiter)
                    try:
                        await waiter
                    except BaseException:
                        if waiter.done() and not waiter.cancelled():
                            self._wake_one()  # woken for room it will not take: pass it on
                        elif waiter in self._room_waiters:
                            self._room_waiters.remove(waiter)
                        raise
                    if self._ledger.closed:
                        raise PoolClosed(self.name)
        except TimeoutError:
            return False
        return True

    def _wake_one(self) -> None:
        """Room freed: wake the longest-waiting blocked submitter."""
        while self._room_waiters:
            waiter = self._room_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    # -- running --------------------------------------------------------------

    def _start(self) -> None:
        if not self._workers:
            self._workers = [asyncio.create_task(self._work(i), name=f"poolsim-{self.name}-{i}")
                             for i in range(self.config.workers)]

    async def _work(self, index: int) -> None:
        """A worker task: take a job per token until the pool closes and the queue is empty."""
        while True:
            await self._tokens.acquire()
            if not self._queue:  # its job was taken by shutdown, or this is an exit token
                if self._ledger.closed:
                    return
                continue
            job = self._queue.popleft()
            job.worker = index
            self._ledger.running[job.job_id] = job
            await self._run(job, index)

    async def _run(self, job: Job, index: int | None) -> None:
        """Run a job in this task, with its timeout; settle its future."""
        if job.status is not None or job.handle.cancelled():  # cancelled while queued
            self._release(job, CANCELLED, None, index)
            return
        job.start = time.monotonic()
        task = asyncio.current_task()
        assert task is not None
        self._tasks[job.job_id] = task
        job.handle.add_done_callback(functools.partial(self._caller_cancelled, job))
        timer = None
        if self.config.job_timeout is not None:
            job.deadline = job.start + self.config.job_timeout
            timer = asyncio.get_running_loop().call_later(
                self.config.job_timeout, self._stop, job, TIMEOUT,
                JobTimeout(job.job_id, self.config.job_timeout))
        self._ledger.notify_started(job)
        token = _current.set(job)
        try:
            result = await job.fn(*job.args, **job.kwargs)
        except asyncio.CancelledError as exc:
            ours = job.cancelled.is_set()  # a timeout, a shutdown or the caller's cancel()
            if ours:
                task.uncancel()
            if task.cancelling():  # the task itself is being cancelled: record, then pass on
                self._release(job, CANCELLED, None, index)
                raise
            self._release(job, CANCELLED if ours else FAILED, exc, index)
        except BaseException as exc:  # the future carries it
            self._release(job, FAILED, exc, index)
            if not isinstance(exc, Exception):
                raise  # KeyboardInterrupt, SystemExit: recorded, and still stop the loop
        else:
            if job.cancelled.is_set() and task.cancelling():
                task.uncancel()  # the job swallowed our cancellation and returned
            self._release(job, COMPLETED, result, index)
        finally:
            _current.reset(token)
            del self._tasks[job.job_id]
            if timer is not None:
                timer.cancel()

    def _caller_cancelled(self, job: Job, handle: asyncio.Future[Any]) -> None:
        """The caller cancelled a running job's future: cancel the job itself."""
        if handle.cancelled():
            self._stop(job, CANCELLED, JobCancelled(job.job_id))

    def _stop(self, job: Job, status: str, error: BaseException) -> None:
        """Cancel a running job for real, and decide it (timeout, shutdown, caller's cancel).

        The task is cancelled first, which queues the coroutine's wake-up ahead
        of its caller's: by the time the caller sees the error the worker is free.
        """
        if job.status is None and job.job_id in self._tasks:
            self._tasks[job.job_id].cancel()
            self._ledger.decide(job, status, error)

    def _release(self, job: Job, status: str, value: Any, index: int | None) -> None:
        """The job's coroutine ended: free its place, settle it."""
        if index is not None:
            self._on_workers -= 1
            self._wake_one()
        self._ledger.release(job, status, value, index)

    # -- observing ----------------------------------------------------------------

    def stats(self) -> PoolStats:
        """A snapshot: queued, running, counts by status."""
        return self._ledger.stats(self.config.workers, len(self._queue))

    def records(self) -> pd.DataFrame:
        """The jobs frame of every decided job (needs ``record=True``)."""
        return self._ledger.records()

    # -- shutting down ------------------------------------------------------------

    async def shutdown(self, policy: ShutdownPolicy | str | None = None,
                       timeout: float | None = None) -> ShutdownReport:
        """Stop accepting jobs and wind down, as :meth:`WorkerPool.shutdown` does.

        ``immediate`` cancels running coroutines for real.
        """
        policy, timeout = shutdown_args(self.config, policy, timeout)
        began = time.monotonic()
        ledger = self._ledger
        inside = ledger.inside()
        if ledger.close():
            for _ in self._workers:
                self._tokens.release()
            for waiter in self._room_waiters:
                if not waiter.done():
                    waiter.set_result(None)
        if policy is ShutdownPolicy.IMMEDIATE:
            ledger.settle(self._take_queued(), CANCELLED)
            for job in list(ledger.running.values()):
                self._stop(job, CANCELLED, JobCancelled(job.job_id))
        elif policy is ShutdownPolicy.FINISH_IN_FLIGHT:
            ledger.settle(self._take_queued(), RETURNED)
        ledger.check_idle()
        if not inside:  # a job shutting down its own pool cannot wait for itself
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(None if timeout == math.inf else timeout):
                    await self._idle.wait()
            ledger.settle(self._take_queued(), RETURNED)  # still queued at the deadline
        return ledger.report(policy, began)

    def _take_queued(self) -> list[Job]:
        taken = list(self._queue)
        self._queue.clear()
        self._on_workers -= len(taken)
        return taken

    async def __aenter__(self) -> AsyncWorkerPool:
        self._start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.shutdown(ShutdownPolicy.DRAIN)

    def __repr__(self) -> str:
        s = self.stats()
        return (f"<AsyncWorkerPool {self.name!r} workers={s.workers} queued={s.queued} "
                f"running={s.running} closed={s.closed}>")
