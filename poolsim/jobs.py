"""A job inside a pool, and ``current_job()``: what the running function may know about itself.

Cancellation is cooperative, as with Go's ``context``: Python cannot kill a
thread, so a timed-out or cancelled job is *told* (``cancelled`` is set) and
its worker stays busy until the function returns. Long jobs should check
``current_job().cancelled`` between steps.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

__all__ = ["CancelEvent", "JobContext", "current_job"]

_guard = threading.Lock()  # serialises the rare set()/wait() calls of every CancelEvent


class CancelEvent:
    """A ``threading.Event``-like flag that costs one attribute until someone waits on it.

    Every job gets one, so it must be cheap; ``wait`` builds its lock on first use.
    """

    __slots__ = ("_flag", "_gate")

    def __init__(self) -> None:
        self._flag = False
        self._gate: threading.Lock | None = None

    def is_set(self) -> bool:
        """True once the job has been asked to stop."""
        return self._flag

    def set(self) -> None:
        """Ask the job to stop and wake anyone waiting."""
        with _guard:
            if self._flag:
                return
            self._flag = True
            if self._gate is not None and self._gate.locked():
                self._gate.release()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until set or until ``timeout`` seconds pass; return whether it is set."""
        with _guard:
            if self._flag:
                return True
            if self._gate is None:
                self._gate = threading.Lock()
                self._gate.acquire()
            gate = self._gate
        if gate.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
            gate.release()  # let the next waiter through too
        return self._flag

    def __bool__(self) -> bool:
        return self._flag

    def __repr__(self) -> str:
        return f"CancelEvent(set={self._flag})"


class JobContext:
    """What a running job can learn about itself through :func:`current_job`.

    ``deadline`` is a ``time.monotonic()`` instant (``None`` without a
    ``job_timeout``); ``cancelled`` is set when the job times out or an
    ``immediate`` shutdown cancels it.
    """

    __slots__ = ("attempt", "cancelled", "deadline", "job_id", "task_type")

    job_id: int
    task_type: str
    attempt: int
    deadline: float | None
    cancelled: CancelEvent

    def remaining(self, now: float) -> float:
        """Seconds left before ``deadline`` at monotonic time ``now`` (inf without one)."""
        return math.inf if self.deadline is None else self.deadline - now

    def __repr__(self) -> str:
        return (
            f"JobContext(job_id={self.job_id}, task_type={self.task_type!r}, "
            f"attempt={self.attempt}, deadline={self.deadline}, "
            f"cancelled={self.cancelled.is_set()})"
        )


class Job(JobContext):
    """A submitted job: its call, its handle and its timeline (monotonic seconds)."""

    __slots__ = (
        "args", "arrival", "end", "fn", "handle", "kwargs", "released", "start", "status", "worker"
    )

    def __init__(
        self,
        job_id: int,
        task_type: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        handle: Any,
        arrival: float,
    ) -> None:
        self.job_id = job_id
        self.task_type = task_type
        self.attempt = 1
        self.deadline = None
        self.cancelled = CancelEvent()
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.handle = handle
        self.arrival = arrival
        self.start = math.nan
        self.end = math.nan
        self.status: str | None = None  # set exactly once, when the outcome is decided
        self.worker: int | None = None
        self.released = False  # the function has returned (or never ran)


_current: ContextVar[JobContext] = ContextVar("poolsim_current_job")


def current_job() -> JobContext:
    """The context of the job running in this thread or task.

    Raises ``LookupError`` outside a pool job.

    >>> from poolsim import WorkerPool, current_job
    >>> with WorkerPool(workers=1) as pool:
    ...     pool.submit(lambda: current_job().task_type, task_type="email").result()
    'email'
    """
    try:
        return _current.get()
    except LookupError:
        raise LookupError("current_job() called outside a poolsim job") from None
