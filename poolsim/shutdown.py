"""What a shutdown did, and SIGTERM/SIGINT handlers that start one.

Kubernetes sends SIGTERM, waits ``terminationGracePeriodSeconds`` (30 s by
default), then SIGKILLs: :func:`install_signal_handlers` turns the first signal
into the pool's configured shutdown, so in-flight jobs finish inside that window.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from poolsim.config import ShutdownPolicy
from poolsim.errors import PoolsimError

if TYPE_CHECKING:
    from poolsim.pool import WorkerPool

__all__ = ["ReturnedJob", "ShutdownReport", "SignalShutdown", "install_signal_handlers"]

_SLICE = 0.05  # seconds the main thread may sleep before it runs pending signal handlers


@dataclasses.dataclass(frozen=True, slots=True)
class ReturnedJob:
    """A job handed back unstarted at shutdown: call it, or persist its parts and run it later."""

    job_id: int
    task_type: str
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    def __call__(self) -> Any:
        """Run the job now, in this thread."""
        return self.fn(*self.args, **self.kwargs)


@dataclasses.dataclass(frozen=True, slots=True)
class ShutdownReport:
    """What became of every job that was in the pool when shutdown started.

    Each job is in exactly one field. ``completed``: ids whose function
    returned (successfully or raising) before the deadline. ``returned``:
    jobs handed back unstarted. ``cancelled``: ids cancelled (dropped from
    the queue, or running and asked to stop — such a thread may still be
    running). ``still_running``: ids whose function was still executing when
    shutdown returned, timed-out ones included.
    """

    policy: ShutdownPolicy
    completed: tuple[int, ...]
    returned: tuple[ReturnedJob, ...]
    cancelled: tuple[int, ...]
    still_running: tuple[int, ...]
    elapsed_s: float

    @property
    def clean(self) -> bool:
        """True when no function was left running at the deadline."""
        return not self.still_running


class SignalShutdown:
    """The handle :func:`install_signal_handlers` returns: wait on it for the report.

    The first signal starts the shutdown in a non-daemon thread, so the
    process stays alive until it ends; a second escalates to ``immediate``
    and ends :meth:`wait` with its report; if a job ignores cancellation and
    keeps the process alive, a third signal stops it at once. The handler
    itself only counts the signal and starts a thread.
    """

    def __init__(self, pool: WorkerPool, policy: ShutdownPolicy | str | None,
                 timeout: float | None) -> None:
        self._pool = pool
        self._policy = policy
        self._timeout = timeout
        self._report: ShutdownReport | None = None
        self._signals = 0
        self.received = threading.Event()
        self._done = threading.Event()

    def _handle(self, signum: int, frame: object) -> None:
        self._signals += 1
        self.received.set()
        if self._signals == 1:
            threading.Thread(target=self._shut, args=(self._policy, self._timeout),
                             name="poolsim-shutdown").start()  # not a daemon: see the class
        elif self._signals == 2:
            threading.Thread(target=self._shut, args=(ShutdownPolicy.IMMEDIATE, 0.0),
                             name="poolsim-shutdown-now", daemon=True).start()
        else:  # a third: stop now, as if no handler were installed
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)

    def _shut(self, policy: ShutdownPolicy | str | None, timeout: float | None) -> None:
        try:
            report = self._pool.shutdown(policy, timeout)
            if not self._done.is_set():
                self._report = report
        finally:
            self._done.set()

    def wait(self, timeout: float | None = None) -> ShutdownReport | None:
        """Wait for a signal and its shutdown to finish; the report, or None on timeout.

        Waits in short slices: the OS may deliver a signal to any thread, and
        Python runs the handler only when the main thread next wakes up.
        """
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        while not self._done.wait(min(_SLICE, max(deadline - time.monotonic(), 0.0))):
            if time.monotonic() >= deadline:
                break
        return self._report


def install_signal_handlers(
    pool: WorkerPool,
    policy: ShutdownPolicy | str | None = None,
    timeout: float | None = None,
    signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT),
) -> SignalShutdown:
    """Make SIGTERM/SIGINT start ``pool.shutdown(policy, timeout)``; main thread only.

    ``policy`` and ``timeout`` default to the pool's config. Returns a handle
    whose ``wait()`` gives the :class:`ShutdownReport`.
    """
    if threading.current_thread() is not threading.main_thread():
        raise PoolsimError(
            "install_signal_handlers() must be called from the main thread: "
            "Python delivers signals only there"
        )
    handle = SignalShutdown(pool, policy, timeout)
    for signum in signals:
        signal.signal(signum, handle._handle)
    return handle
