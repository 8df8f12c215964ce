"""The books of one pool: open and running jobs, outcomes, records, and lifecycle hooks.

The core never imports its observers: ``metrics.py`` subscribes through the
:class:`PoolObserver` hooks.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import InvalidStateError
from typing import Any, Protocol

import pandas as pd

from poolsim.config import ShutdownPolicy
from poolsim.errors import ConfigError, JobCancelled, JobDropped, JobReturned
from poolsim.jobs import Job, _current
from poolsim.records import STATUSES, Status, jobs_frame
from poolsim.shutdown import ReturnedJob, ShutdownReport

__all__ = ["Ledger", "PoolObserver", "PoolStats"]

COMPLETED, FAILED, TIMEOUT, REJECTED, DROPPED, CANCELLED, RETURNED = (
    Status.COMPLETED.value, Status.FAILED.value, Status.TIMEOUT.value, Status.REJECTED.value,
    Status.DROPPED.value, Status.CANCELLED.value, Status.RETURNED.value)
_ERROR_FOR = {DROPPED: JobDropped, RETURNED: JobReturned, CANCELLED: JobCancelled}
_log = logging.getLogger("poolsim")


@dataclasses.dataclass(frozen=True, slots=True)
class PoolStats:
    """A snapshot of a pool at one moment.

    ``running`` counts functions still executing, including ``overdue`` ones:
    jobs already resolved as ``timeout`` or ``cancelled`` whose function has
    not returned yet and so still holds a worker. ``counts`` are decided
    outcomes by status.
    """

    queue: str
    workers: int
    queued: int
    running: int
    busy_workers: int
    overdue: int
    counts: Mapping[str, int]
    closed: bool


class PoolObserver(Protocol):
    """Hooks a pool calls as jobs move; ``metrics.py`` implements them."""

    def job_started(self, job: Job) -> None:
        """The job's function is about to run (``job.start`` is set)."""

    def job_resolved(self, job: Job) -> None:
        """The job's outcome is decided (``job.status`` and ``job.end`` are set)."""

    def job_released(self, job: Job, duration: float) -> None:
        """The job's function returned after ``duration`` seconds, freeing its worker."""


class Idle(Protocol):
    """The event a pool's shutdown waits on: ``threading.Event`` or ``asyncio.Event``."""

    def set(self) -> None: ...


class Ledger:
    """The books of one pool: which jobs are open or running, their outcomes, and who is told.

    Shared by the thread and asyncio pools so both count, record, notify and
    report identically. Built for threads without a hot lock: deciding a job
    is one atomic ``dict.pop`` on ``undecided`` (exactly one caller wins), and
    each worker thread counts into its own dict; every other writer shares one
    under a lock.
    """

    def __init__(self, queue: str, *, record: bool, workers: int, idle: Idle,
                 observers: Iterable[PoolObserver] = ()) -> None:
        self.queue = queue
        self.t0 = time.monotonic()
        self.observers = list(observers)  # empty when metrics are off: no hook is called
        self.undecided: dict[int, Job] = {}  # admitted jobs whose outcome is open
        self.running: dict[int, Job] = {}  # functions executing, on workers or callers
        self.closed = False
        self.at_close: list[Job] = []  # what was in the pool when shutdown began
        self._idle = idle
        self._per_worker = [dict.fromkeys(STATUSES, 0) for _ in range(workers)]
        self._shared = dict.fromkeys(STATUSES, 0)
        self._shared_lock = threading.Lock()
        self._deciding = 0  # claimed decisions not yet concluded
        self._rows: list[tuple[object, ...]] | None = [] if record else None

    # -- deciding ---------------------------------------------------------------

    def resolve(self, job: Job, status: str, now: float, worker: int | None = None) -> bool:
        """Decide a job's outcome once; False if it was already decided.

        ``worker`` is the index of the calling worker thread, if it is one.
        """
        if self.undecided.pop(job.job_id, None) is None:
            return False
        self._book(job, status, now, worker)
        return True

    def release(self, job: Job, status: str, value: Any, worker: int | None) -> None:
        """The job's function returned ``value`` (or raised it, or never ran): resolve the
        job as ``status`` if it is still open, settle its handle, then free it.

        Everyone is told before the job leaves ``running``, so when shutdown
        wakes, every handle, count and metric is already final.
        """
        now = time.monotonic()
        if self.resolve(job, status, now, worker):
            with contextlib.suppress(InvalidStateError, asyncio.InvalidStateError):
                if status is COMPLETED:
                    job.handle.set_result(value)
                elif status is FAILED:
                    job.handle.set_exception(value)
                else:  # cancelled, and not by the caller's own future.cancel()
                    job.handle.set_exception(JobCancelled(job.job_id))
            self.notify_resolved(job)
        if self.observers and job.start == job.start:  # not NaN: the function ran
            self._tell("job_released", job, now - job.start)
        del self.running[job.job_id]  # after resolve: a job is always undecided or running
        job.released = True
        self.check_idle()

    def claim(self, job: Job) -> bool:
        """Take the right to decide a job from outside its function; False if it is decided.

        Until :meth:`conclude`, the pool does not count as idle, so a shutdown
        never returns while a decision is half made.
        """
        with self._shared_lock:
            self._deciding += 1
        if self.undecided.pop(job.job_id, None) is not None:
            return True
        with self._shared_lock:
            self._deciding -= 1
        return False

    def conclude(self, job: Job, status: str, error: BaseException) -> None:
        """Finish a claimed decision: record it, ask the job to stop, fail its handle."""
        if status is not TIMEOUT and job.handle.cancelled():
            status = CANCELLED  # the caller cancelled it first
        self._book(job, status, time.monotonic(), None)
        job.cancelled.set()
        fail(job, error)
        self.notify_resolved(job)
        with self._shared_lock:
            self._deciding -= 1
        self.check_idle()

    def decide(self, job: Job, status: str, error: BaseException) -> bool:
        """Resolve a job from outside its function (timeout, shutdown): claim, conclude."""
        if not self.claim(job):
            return False
        self.conclude(job, status, error)
        return True

    def settle(self, jobs: Iterable[Job], status: str) -> None:
        """Decide jobs the pool takes away (dropped, returned, cancelled)."""
        for job in jobs:
            self.decide(job, status, _ERROR_FOR[status](job.job_id))

    def reject(self, job: Job) -> None:
        """Record a job refused at the door: it was never admitted."""
        self._book(job, REJECTED, time.monotonic(), None)
        self.notify_resolved(job)
        self.check_idle()

    def _book(self, job: Job, status: str, now: float, worker: int | None) -> None:
        job.status = status
        job.end = now
        if worker is None:
            with self._shared_lock:
                self._shared[status] += 1
        else:
            self._per_worker[worker][status] += 1
        if self._rows is not None:
            self._rows.append((job.job_id, job.task_type, self.queue, job.arrival, job.start,
                               now, status, job.worker, job.attempt))

    def notify_started(self, job: Job) -> None:
        """Tell observers a job's function is about to run."""
        if self.observers:
            self._tell("job_started", job)

    def notify_resolved(self, job: Job) -> None:
        """Tell observers a job's outcome is decided."""
        if self.observers:
            self._tell("job_resolved", job)

    def _tell(self, hook: str, *args: object) -> None:
        """Call one hook on every observer; a failing observer is logged, never fatal."""
        for observer in self.observers:
            try:
                getattr(observer, hook)(*args)
            except Exception:
                _log.exception("poolsim observer %r failed in %s", observer, hook)

    def check_idle(self) -> None:
        """After a job left ``undecided`` or ``running``: signal shutdown if nothing is left.

        Shutdown sets ``closed`` before it looks; we removed before we look at
        ``closed``: one of the two sees the other, so the signal is never missed.
        """
        if self.closed and not self.undecided and not self.running and not self._deciding:
            self._idle.set()

    # -- reading ----------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Decided jobs by status, every status present."""
        with self._shared_lock:
            total = dict(self._shared)
        for counts in self._per_worker:
            for status, n in counts.items():
                total[status] += n
        return total

    def stats(self, workers: int, queued: int) -> PoolStats:
        """A snapshot of the pool for ``stats()``."""
        running = list(self.running.copy().values())
        return PoolStats(
            queue=self.queue,
            workers=workers,
            queued=queued,
            running=len(running),
            busy_workers=sum(1 for job in running if job.worker != -1),
            overdue=sum(1 for job in running if job.status in (TIMEOUT, CANCELLED)),
            counts=self.counts(),
            closed=self.closed,
        )

    def inside(self) -> bool:
        """Whether this thread or task is running one of the pool's jobs right now."""
        job = _current.get(None)
        return job is not None and self.running.get(job.job_id) is job

    def close(self) -> bool:
        """Close the pool (callers hold their admission lock); False if it was closed already.

        Remembers every job open or running: after closing that set only
        shrinks, so every shutdown report accounts for it.
        """
        if self.closed:
            return False
        self.closed = True
        self.at_close = list({**self.undecided, **self.running}.values())
        return True

    def report(self, policy: ShutdownPolicy, began: float) -> ShutdownReport:
        """What became of the jobs that were in the pool when it closed.

        Read from the jobs' outcomes, so it is true whoever decided them (a
        second, stronger shutdown; a caller cancelling a future).
        """
        buckets: dict[str, list[Job]] = {"completed": [], "returned": [], "cancelled": [],
                                          "still_running": []}
        for job in self.at_close:  # status read before released: each job in one bucket
            status = job.status
            if status == RETURNED:
                buckets["returned"].append(job)
            elif status == CANCELLED:
                buckets["cancelled"].append(job)
            elif status in (COMPLETED, FAILED) or (status == TIMEOUT and job.released):
                buckets["completed"].append(job)  # its function returned
            else:  # running (perhaps overdue), or taken by a worker and about to start
                buckets["still_running"].append(job)
        return ShutdownReport(
            policy=policy,
            completed=tuple(job.job_id for job in buckets["completed"]),
            returned=tuple(ReturnedJob(job.job_id, job.task_type, job.fn, job.args, job.kwargs)
                           for job in buckets["returned"]),
            cancelled=tuple(job.job_id for job in buckets["cancelled"]),
            still_running=tuple(job.job_id for job in buckets["still_running"]),
            elapsed_s=time.monotonic() - began,
        )

    def records(self) -> pd.DataFrame:
        """The jobs frame of every decided job, times in seconds since the pool started."""
        if self._rows is None:
            raise ConfigError("record", False, "create the pool with record=True to keep records")
        frame = jobs_frame(sorted(self._rows))  # by job_id: submission order
        for column in ("arrival_s", "start_s", "end_s"):
            frame[column] -= self.t0
        return frame


def observers_for(pool: object, registry: object | None,
                  observers: Iterable[PoolObserver]) -> list[PoolObserver]:
    """A pool's observers: the given ones, plus its metrics if ``registry`` is given
    (``poolsim.metrics`` is imported only then)."""
    observers = list(observers)
    if registry is not None:
        from poolsim.metrics import PoolMetrics

        if not isinstance(registry, PoolMetrics):
            registry = PoolMetrics.for_registry(registry)  # type: ignore[arg-type]
        observers.append(registry.attach(pool))  # type: ignore[arg-type]
    return observers


def fail(job: Job, exc: BaseException) -> None:
    """Fail a job's handle unless the caller cancelled it first."""
    with contextlib.suppress(InvalidStateError, asyncio.InvalidStateError):
        job.handle.set_exception(exc)
