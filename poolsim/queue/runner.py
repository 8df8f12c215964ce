"""Running claimed tasks: the hand-off to the pool's threads, and one attempt, on a pool
thread or the server's event loop — begin it (deadline, ``current_job()``), decode the
task, call its handler, decide the outcome and settle it (hand it to the acker, show a
failure to the error handler).

Hand-off: claimed attempts wait in the runner's own queue; up to ``concurrency`` pool
calls (*lanes*) each run waiting attempts one after another until none is left, so a busy
server's thread goes from one task to the next without a pool submission and a wake-up per
task. Each attempt still gets its own ``current_job()`` context (its own ``cancelled``).

The server gives the runner the registered handlers, the held
:class:`~poolsim.queue.attempts.Attempts`, ``settle`` (the acker's ``add``) and
``release`` (frees the attempt's place). Every attempt is decided exactly once
(``Attempts.decide``), whatever escapes its handler.

This is the hot path of a busy server: a completed attempt takes no more calls than it
needs (no payload re-encoding, one shared ``completed`` outcome).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from poolsim.errors import ConfigError, PayloadError, QueueError
from poolsim.jobs import CancelEvent, JobContext, _current
from poolsim.queue.acker import Settled
from poolsim.queue.attempts import (
    Attempt,
    Attempts,
    archive,
    attempt_deadline,
    failure,
    handler_outcome,
    timeout_outcome,
)
from poolsim.queue.backends.base import Outcome
from poolsim.queue.task import State, Task, TaskInfo, decode_payload

__all__ = ["ErrorHandler", "Runner"]

_log = logging.getLogger("poolsim.queue")
_COMPLETED = Outcome(state=State.COMPLETED, status="completed")
_TASK = TaskInfo.task

ErrorHandler = Callable[[TaskInfo, BaseException], Any]


class Runner:
    """Runs attempts: :meth:`run` on a pool thread, :meth:`run_coroutine` on the event loop,
    :meth:`timed_out` for an attempt the watchdog decided."""

    def __init__(self, handlers: Mapping[str, Callable[[Task], Any]], attempts: Attempts, *,
                 clock: Callable[[], float], retry_delay: Callable[[int], float],
                 error_handler: ErrorHandler | None, settle: Callable[[Settled], None],
                 release: Callable[[], None], lanes: int = 1,
                 submit: Callable[[Callable[[], None]], object] | None = None,
                 refuse: Callable[[Attempt], None] | None = None) -> None:
        self.handlers = handlers
        self.attempts = attempts
        self.clock = clock
        self.retry_delay = retry_delay
        self.error_handler = error_handler
        self.settle_outcome = settle
        self.release = release
        self.lanes = lanes  # at most this many pool calls run attempts at once
        self._submit = submit
        self._refuse = refuse
        self._waiting: deque[Attempt] = deque()  # claimed, not yet taken by a lane
        self._open = 0  # lanes submitted and not yet ended
        self._running: dict[int, Attempt | None] = {}  # by lane: the attempt it runs
        self._lanes = itertools.count()
        self._lock = threading.Lock()
        self._ids = itertools.count()

    # -- the hand-off -------------------------------------------------------------------

    def start(self, attempts: Iterable[Attempt]) -> None:
        """Queue claimed attempts for the thread pool, opening lanes (pool calls) for them
        up to ``lanes``."""
        with self._lock:
            self._waiting.extend(attempts)
            opening = min(self.lanes - self._open, len(self._waiting))
            self._open += max(opening, 0)
        for _ in range(opening):
            self._open_lane()

    def take_waiting(self) -> list[Attempt]:
        """Take back the attempts no lane has started (a shutdown hands them back)."""
        with self._lock:
            taken = list(self._waiting)
            self._waiting.clear()
        return taken

    def stuck(self) -> int:
        """Threads whose handler still runs an attempt someone else already decided (timed
        out, lease lost, handed back): Python cannot stop a thread, so each may stay busy
        for good, and a waiting attempt cannot count on it."""
        with self._lock:
            running = list(self._running.values())
        return sum(1 for attempt in running if attempt is not None
                   and attempt.decided is not None and attempt.decided != "handler")

    def _open_lane(self) -> None:
        assert self._submit is not None
        try:
            self._submit(self._lane)
        except Exception:  # the pool refused (cannot happen while running)
            _log.exception("could not start a pool call for waiting tasks")
            with self._lock:
                self._open -= 1
                stranded = list(self._waiting) if self._open == 0 else []
                if stranded:
                    self._waiting.clear()
            for attempt in stranded:  # no lane left to run them: hand them back
                if self._refuse is not None:
                    try:  # each one: a failure must not strand the rest
                        self._refuse(attempt)
                    except Exception:
                        _log.exception("could not hand back task %s", attempt.info.id)

    def _lane(self) -> None:
        """A pool call: run waiting attempts one after another until none is left. If a
        handler's ``BaseException`` ends it, another lane takes over the waiting ones."""
        waiting, lock, run, running = self._waiting, self._lock, self.run, self._running
        lane = next(self._lanes)
        try:
            while True:
                with lock:
                    if not waiting:
                        self._open -= 1
                        running.pop(lane, None)
                        return
                    attempt = running[lane] = waiting.popleft()
                run(attempt, lane)
        except BaseException:
            with lock:
                self._open -= 1
                running.pop(lane, None)
                again = bool(waiting) and self._open < self.lanes
                if again:
                    self._open += 1
            if again:
                self._open_lane()
            raise

    # -- running ------------------------------------------------------------------------

    def run(self, attempt: Attempt, lane: int | None = None) -> None:
        """A pool thread runs a plain handler. Whatever escapes — a ``BaseException`` that is
        not an ``Exception`` (``SystemExit``, ``KeyboardInterrupt``), an error preparing the
        call — the attempt is decided (failed: retried or archived per its budget) before
        the place is freed; a non-``Exception`` is then re-raised (it ends this lane only:
        the pool's future carries it, and another lane takes over the waiting attempts).
        ``lane`` is the lane running it: once the handler returns, it no longer counts in
        :meth:`stuck`."""
        started: float | None = None
        job = JobContext()  # this attempt's current_job(), not the lane's
        job.job_id, job.task_type, job.deadline = next(self._ids), attempt.info.type, None
        job.cancelled = CancelEvent()
        token = _current.set(job)
        try:
            begun = self._begin(attempt, job)
            if begun is None:
                return
            call, started = begun
            result = call()
            if result is not None and inspect.isawaitable(result):  # an async handler
                asyncio.run(_awaited(result))  # registered after start()
        except BaseException as exc:
            self._ended(attempt, exc, started)
            if not isinstance(exc, Exception | asyncio.CancelledError):
                raise
        else:
            self._ended(attempt, None, started)
        finally:
            try:
                if attempt.decided is None:
                    self._undecided(attempt, started)
            finally:
                _current.reset(token)
                if lane is not None:  # the handler returned: this thread is not stuck
                    self._running[lane] = None  # (an existing key: no size change)
                self.release()

    async def run_coroutine(self, attempt: Attempt) -> None:
        """The coroutine pool runs a coroutine handler; a timeout, lost lease or hand-back
        cancels it (``CancelledError`` inside the handler)."""
        started: float | None = None
        try:
            begun = self._begin(attempt, _current.get())  # the coroutine pool's context
            if begun is None:
                return
            call, started = begun
            await call()
        except (Exception, asyncio.CancelledError) as exc:  # cancelled: already decided
            self._ended(attempt, exc, started)
        except BaseException as exc:  # SystemExit, KeyboardInterrupt: settled, and not
            # re-raised — it would stop the event loop every coroutine handler shares
            _log.error("task %s: handler raised %r; the attempt failed", attempt.info.id, exc)
            self._ended(attempt, exc, started)
        else:
            self._ended(attempt, None, started)
        finally:
            if attempt.decided is None:
                self._undecided(attempt, started)

    def _begin(self, attempt: Attempt, job: JobContext
               ) -> tuple[Callable[[], Any], float] | None:
        """Start an attempt: the handler call to make and its start time, or None when the
        attempt was settled before it began or ends without running a handler."""
        info = attempt.info
        job.attempt = info.retried + 1
        started = self.clock()
        if info.timeout is None and info.deadline is None:
            deadline, by_task = None, False
        else:
            deadline, by_task = attempt_deadline(info, started)
        if not self.attempts.start(attempt, job, deadline, by_task):
            return None  # settled before it began (lease lost, or shutdown)
        if deadline is not None:
            job.deadline = time.monotonic() + (deadline - started)
        ready = self._prepare(info, started)
        if isinstance(ready, tuple):
            self._decided(attempt, *ready, started)
            return None
        return ready, started

    def _prepare(self, info: TaskInfo, started: float
                 ) -> Callable[[], Any] | tuple[Outcome, BaseException]:
        """The handler call to make, or why the attempt ends without one."""
        if info.deadline is not None and started >= info.deadline:
            return archive("failed", error := QueueError(
                f"the task's deadline passed before it ran ({info.deadline:.3f})")), error
        fn = self.handlers.get(info.type)
        if fn is None:
            return archive("failed", error := QueueError(
                f"no handler for task type {info.type!r}; registered types: "
                f"{sorted(self.handlers)}")), error
        try:
            return functools.partial(fn, _task(info))
        except (PayloadError, ConfigError) as exc:  # a corrupt stored task: retrying cannot help
            return archive("failed", exc), exc

    # -- deciding -----------------------------------------------------------------------

    def _ended(self, attempt: Attempt, error: BaseException | None,
               started: float | None) -> None:
        """The handler returned (``error`` None) or raised: decide and settle the attempt.
        An error deciding it is logged (the caller then settles the attempt as failed)."""
        try:
            if error is None:
                outcome = _COMPLETED
            else:
                outcome = handler_outcome(attempt.info, error, clock=self.clock,
                                          retry_delay=self.retry_delay)
            self._decided(attempt, outcome, error, started)
        except Exception:
            _log.exception("could not settle task %s", attempt.info.id)

    def _undecided(self, attempt: Attempt, started: float | None) -> None:
        """Last resort: an attempt still undecided when its handler call ends is failed
        (retried or archived per its budget), never left active until shutdown."""
        if attempt.decided is not None:
            return
        error = QueueError(f"task {attempt.info.id}: the attempt ended without an outcome")
        try:
            outcome = failure(attempt.info, error, status="retried", now=self.clock(),
                              retry_delay=self.retry_delay)
        except Exception:
            outcome = Outcome(state=State.RETRY, status="retried", retry_at=self.clock() + 1.0,
                              error=f"QueueError: {error}")
        self._decided(attempt, outcome, error, started)

    def _decided(self, attempt: Attempt, outcome: Outcome, error: BaseException | None,
                 started: float | None) -> None:
        if self.attempts.decide(attempt, "handler"):
            self.settle(attempt, outcome, error, started)

    def timed_out(self, attempt: Attempt) -> None:
        """The watchdog decided an attempt past its deadline (its handler was told to stop)."""
        outcome, error = timeout_outcome(attempt, clock=self.clock,
                                         retry_delay=self.retry_delay)
        self.settle(attempt, outcome, error, None)

    def settle(self, attempt: Attempt, outcome: Outcome, error: BaseException | None,
               started: float | None) -> None:
        """Hand the decided outcome to the acker (which writes it within ``ack_interval``)
        and show a failure to the error handler. Until it is written the lease is held and
        renewed; if the worker dies first, the lease lapses and the task is retried."""
        try:
            self.settle_outcome(Settled(attempt, outcome, started))
        finally:
            if error is not None and self.error_handler is not None:
                try:
                    self.error_handler(attempt.info, error)
                except Exception:
                    _log.exception("error_handler failed on task %s", attempt.info.id)


def _task(info: TaskInfo) -> Task:
    """The :class:`Task` a stored task holds: as ``info.task()``, but a payload read from
    the store is not encoded again to be checked (the store holds canonical JSON, which
    decodes to a serialisable payload); a corrupt one raises :class:`PayloadError`."""
    if type(info).task is not _TASK:  # replaced (a subclass, a test): it decides
        return info.task()
    payload = decode_payload(info.payload)
    if not isinstance(info.type, str) or not info.type or not _plain(payload):
        return Task(info.type, payload)  # validates: ConfigError / PayloadError
    task = object.__new__(Task)
    object.__setattr__(task, "type", info.type)
    object.__setattr__(task, "payload", payload)
    return task


def _plain(payload: Any) -> bool:
    """Whether a decoded payload is trivially serialisable (skips the re-encoding check)."""
    return isinstance(payload, dict) and all(
        isinstance(v, str | int | bool) or v is None for v in payload.values())


async def _awaited(awaitable: Awaitable[Any]) -> None:
    await awaitable
