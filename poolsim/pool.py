"""WorkerPool: a bounded thread pool with back-pressure, job timeouts and graceful shutdown.

Workers start up front and pull from one deque. The hot path takes no lock a
worker could hold: a ``SimpleQueue`` of wake-up tokens (one per queued job)
lets idle workers sleep in C, a second ``SimpleQueue`` of free places bounds
the pool, and a job's outcome is decided by one atomic ``dict.pop``. That keeps
the per-job cost at ``ThreadPoolExecutor``'s (``bench/pool_overhead.py``).
"""

from __future__ import annotations

import atexit
import itertools
import logging
import math
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from queue import Empty, SimpleQueue
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import pandas as pd

from poolsim.config import Backpressure, PoolConfig, ShutdownPolicy, config_from, shutdown_args
from poolsim.errors import JobDropped, JobTimeout, PoolClosed, QueueFull
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

__all__ = ["WorkerPool"]

T = TypeVar("T")
_log = logging.getLogger("poolsim")


class WorkerPool:
    """A fixed set of worker threads behind a bounded queue.

    >>> from poolsim import WorkerPool
    >>> with WorkerPool(workers=2, queue_size=10) as pool:
    ...     pool.submit(pow, 2, 10).result()
    1024

    Configure it with a :class:`PoolConfig` or the same fields as keywords.
    ``name`` labels its metrics and records (the ``queue`` column);
    ``record=True`` keeps one row per job for :meth:`records`; ``registry``
    (a prometheus ``CollectorRegistry`` or :class:`~poolsim.metrics.PoolMetrics`)
    turns metrics on — off by default, at no cost.
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
        self._idle = threading.Event()  # set once closed with nothing open or running
        self._ledger = ledger = Ledger(name, record=record, workers=config.workers,
                                       idle=self._idle,
                                       observers=observers_for(self, registry, observers))
        self._undecided = ledger.undecided
        self._running = ledger.running
        self._lock = threading.Lock()  # admission against shutdown; never taken by workers
        self._queue: deque[Job] = deque()
        self._tokens: SimpleQueue[None] = SimpleQueue()  # one per queued job, + exit tokens
        self._places: SimpleQueue[None] | None = None  # free places; None when unbounded
        if config.capacity is not None:
            self._places = SimpleQueue()
            for _ in range(config.capacity):
                self._places.put(None)
        self._ids = itertools.count()
        self._cancel_all = False  # an immediate shutdown has begun
        self._threads = [
            threading.Thread(target=self._work, args=(i,), name=f"poolsim-{name}-{i}", daemon=True)
            for i in range(config.workers)
        ]
        for thread in self._threads:
            thread.start()
        if config.job_timeout is not None:
            threading.Thread(target=self._watch, args=(config.job_timeout,),
                             name=f"poolsim-{name}-watchdog", daemon=True).start()
        _live_pools.add(self)

    # -- submitting ---------------------------------------------------------

    def submit(self, fn: Callable[..., T], /, *args: Any, task_type: str = "default",
               **kwargs: Any) -> Future[T]:
        """Run ``fn(*args, **kwargs)`` on a worker; return its ``Future``.

        When the pool is full the back-pressure policy decides: ``reject``
        raises :class:`QueueFull`, ``block`` waits up to ``block_timeout``,
        ``drop_oldest`` evicts the oldest queued job (its future fails with
        :class:`JobDropped`), ``caller_runs`` runs the job in this thread.
        Raises :class:`PoolClosed` once shutdown has started.
        """
        handle: Future[T] = Future()
        job = Job(next(self._ids), task_type, fn, args, kwargs, handle, time.monotonic())
        places = self._places
        with self._lock:
            if self._ledger.closed:
                raise PoolClosed(self.name)
            if places is None or _take(places):
                self._admit(job)
                return handle
            policy = self.config.backpressure
            caller_runs = policy is Backpressure.CALLER_RUNS
            victim = None
            if caller_runs:
                job.worker = -1
                self._undecided[job.job_id] = job
                self._running[job.job_id] = job
            elif policy is Backpressure.DROP_OLDEST:
                victim = self._swap_oldest_waiting(job)
        if policy is Backpressure.BLOCK:
            self._submit_blocking(job)
        elif caller_runs:
            self._run(job, None)
        elif victim is not None:  # claimed under the lock, so no shutdown report misses it
            self._ledger.conclude(victim, DROPPED, JobDropped(victim.job_id))
        else:
            self._ledger.reject(job)
            raise QueueFull(self.name, self.config.capacity, policy.value)
        return handle

    def _admit(self, job: Job) -> None:
        """Under the lock, holding a place: queue the job and wake a worker for it."""
        self._undecided[job.job_id] = job
        self._queue.append(job)
        self._tokens.put(None)

    def _swap_oldest_waiting(self, job: Job) -> Job | None:
        """Under the lock, which ``drop_oldest`` workers also take to pop: put ``job`` in the
        place of the oldest job still waiting, and claim that job (None if none waits).

        The jobs at the head that idle workers are about to take are not waiting:
        with every place taken there are ``len(queue) - queue_size`` of them.
        """
        assert self.config.queue_size is not None
        handed_off = len(self._queue) - self.config.queue_size
        if not 0 <= handed_off < len(self._queue):
            return None
        victim = self._queue[handed_off]
        del self._queue[handed_off]
        self._ledger.claim(victim)
        self._undecided[job.job_id] = job
        self._queue.append(job)  # the victim's place and wake-up token pass to the job
        return victim

    def _submit_blocking(self, job: Job) -> None:
        """``block``: wait up to ``block_timeout`` for a free place, else reject."""
        assert self._places is not None
        try:
            self._places.get(timeout=self.config.block_timeout)
        except Empty:
            self._ledger.reject(job)
            raise QueueFull(self.name, self.config.capacity, "block") from None
        with self._lock:
            if self._ledger.closed:
                self._places.put(None)  # pass the wake-up on to the next blocked submitter
                raise PoolClosed(self.name)
            self._admit(job)

    # -- running --------------------------------------------------------------

    def _work(self, index: int) -> None:
        """A worker thread: take a job per token until the pool closes and the queue is empty."""
        take, pop, running = self._tokens.get, self._queue.popleft, self._running
        # drop_oldest picks its victim by position, so its workers pop under the admission
        # lock; every other policy pops lock-free (this private lock is never contended).
        pop_lock = (self._lock if self.config.backpressure is Backpressure.DROP_OLDEST
                    else threading.Lock())
        while True:
            take()
            try:
                with pop_lock:
                    job = pop()
            except IndexError:  # its job was taken by shutdown, or this is an exit token
                if self._ledger.closed:
                    return
                continue
            job.worker = index
            if not job.handle.set_running_or_notify_cancel():  # the caller cancelled it
                running[job.job_id] = job
                self._release(job, CANCELLED, None, index)
                continue
            running[job.job_id] = job
            self._run(job, index)

    def _run(self, job: Job, index: int | None) -> None:
        """Run a job whose future is running, in this thread (worker ``index``, or the
        caller when None)."""
        if index is None and not job.handle.set_running_or_notify_cancel():
            self._release(job, CANCELLED, None, index)
            return
        job.start = time.monotonic()
        if self._cancel_all:  # an immediate shutdown began before this job could start
            self._release(job, CANCELLED, None, index)
            return
        if self.config.job_timeout is not None:
            job.deadline = job.start + self.config.job_timeout
        self._ledger.notify_started(job)
        token = _current.set(job)
        try:
            result = job.fn(*job.args, **job.kwargs)
        except BaseException as exc:  # the future carries it, as executors do
            self._release(job, FAILED, exc, index)
            if index is None and not isinstance(exc, Exception):
                raise  # Ctrl-C in a caller running a job still stops the caller
        else:
            self._release(job, COMPLETED, result, index)
        finally:
            _current.reset(token)

    def _release(self, job: Job, status: str, value: Any, index: int | None) -> None:
        """The job's function returned (or never ran): free its place, settle it."""
        if index is not None and self._places is not None:
            self._places.put(None)
        self._ledger.release(job, status, value, index)

    def _watch(self, timeout: float) -> None:
        """Time out overdue jobs. Sleeps until the earliest deadline, never longer than
        ``timeout``: a job that starts meanwhile is due no sooner than that."""
        while not (self._ledger.closed and self._idle.is_set()):
            now = time.monotonic()
            due = now + timeout
            for job in self._running.copy().values():
                if job.status is not None or job.deadline is None:
                    continue
                if job.deadline > now:
                    due = min(due, job.deadline)
                else:
                    self._ledger.decide(job, TIMEOUT, JobTimeout(job.job_id, timeout))
            self._idle.wait(max(due - time.monotonic(), 0.001))

    # -- observing ----------------------------------------------------------------

    def stats(self) -> PoolStats:
        """A snapshot: queued, running (and how many are overdue), counts by status."""
        return self._ledger.stats(self.config.workers, len(self._queue))

    def records(self) -> pd.DataFrame:
        """The jobs frame of every decided job (needs ``record=True``)."""
        return self._ledger.records()

    # -- shutting down ------------------------------------------------------------

    def shutdown(self, policy: ShutdownPolicy | str | None = None,
                 timeout: float | None = None) -> ShutdownReport:
        """Stop accepting jobs and wind down; return what became of the jobs in the pool.

        ``policy`` and ``timeout`` default to the config's ``shutdown`` and
        ``shutdown_timeout``; pass ``math.inf`` to wait without a deadline.
        ``drain`` finishes queued and running jobs; ``finish_in_flight`` hands
        queued jobs back (in ``report.returned``) and finishes running ones;
        ``immediate`` cancels queued jobs and asks running ones to stop. Jobs
        still queued at the deadline are handed back. Calling it again, e.g.
        with a stronger policy, acts on what is left; every report accounts
        for the jobs that were in the pool when it first closed.
        """
        policy, timeout = shutdown_args(self.config, policy, timeout)
        began = time.monotonic()
        inside = self._ledger.inside()
        with self._lock:
            if self._ledger.close():
                _live_pools.discard(self)
                for _ in self._threads:
                    self._tokens.put(None)
                if self._places is not None:
                    self._places.put(None)  # wakes blocked submitters, one after another
        if policy is ShutdownPolicy.IMMEDIATE:
            self._cancel_all = True  # before looking at _running: see _run
            started = [job for job in self._running.copy().values()
                       if job.start == job.start and job.status is None]
            self._ledger.settle(self._take_queued() + started, CANCELLED)
        elif policy is ShutdownPolicy.FINISH_IN_FLIGHT:
            self._ledger.settle(self._take_queued(), RETURNED)
        self._ledger.check_idle()
        if not inside:  # a job shutting down its own pool cannot wait for itself
            self._idle.wait(None if timeout == math.inf else timeout)
            self._ledger.settle(self._take_queued(), RETURNED)  # queued at the deadline
        return self._ledger.report(policy, began)

    def _take_queued(self) -> list[Job]:
        """Empty the queue (jobs a worker has not taken yet)."""
        taken = []
        while True:
            try:
                taken.append(self._queue.popleft())
            except IndexError:
                return taken

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.shutdown(ShutdownPolicy.DRAIN)

    def __repr__(self) -> str:
        s = self.stats()
        return (f"<WorkerPool {self.name!r} workers={s.workers} queued={s.queued} "
                f"running={s.running} closed={s.closed}>")


def _take(places: SimpleQueue[None]) -> bool:
    """Take a free place if there is one."""
    try:
        places.get_nowait()
    except Empty:
        return False
    return True


_live_pools: weakref.WeakSet[WorkerPool] = weakref.WeakSet()


@atexit.register
def _shutdown_at_exit() -> None:
    """At interpreter exit, give each live pool its configured shutdown, and say what it
    could not finish: no job is lost silently."""
    for pool in list(_live_pools):
        report = pool.shutdown()
        if report.returned or report.cancelled or report.still_running:
            _log.warning("pool %r at exit: %d jobs returned %s, %d cancelled %s, %d still "
                         "running %s", pool.name, len(report.returned),
                         [job.job_id for job in report.returned], len(report.cancelled),
                         list(report.cancelled), len(report.still_running),
                         list(report.still_running))
