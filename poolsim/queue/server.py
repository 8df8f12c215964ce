"""Server: runs a durable queue's tasks on a :class:`~poolsim.pool.WorkerPool`.

Small loops composed (``loops.py``): the fetcher claims no more tasks than the
pool has free places, the lease keeper renews the leases of running tasks, the
watchdog times out attempts, the recoverer returns tasks whose worker died, the
forwarder moves due scheduled/retry tasks to pending (and deletes expired
completed ones). Each attempt is settled exactly once — by its handler, its
timeout, a lost lease or a graceful shutdown — and each settlement is one
atomic store call that succeeds only while this worker holds the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
import math
import os
import signal
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from poolsim.errors import ConfigError, JobTimeout, PayloadError, QueueError
from poolsim.jobs import current_job
from poolsim.pool import WorkerPool
from poolsim.queue.attempts import (
    Attempt,
    Attempts,
    ExponentialBackoff,
    archive,
    attempt_deadline,
    failure,
)
from poolsim.queue.backends.base import Backend, Outcome, open_backend
from poolsim.queue.loops import (
    Fetcher,
    Forwarder,
    LeaseKeeper,
    Loop,
    Recoverer,
    Watchdog,
    queue_weights,
)
from poolsim.queue.task import Retry, SkipRetry, State, Task, TaskInfo

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from poolsim.metrics import PoolMetrics

__all__ = ["ExponentialBackoff", "Server", "ServerStatistics"]

_log = logging.getLogger("poolsim.queue")
_SLICE = 0.05  # how often run() looks at its signal flags
H = TypeVar("H", bound=Callable[..., Any])
ErrorHandler = Callable[[TaskInfo, BaseException], Any]


@dataclasses.dataclass(frozen=True, slots=True)
class ServerStatistics:
    """A snapshot of a server: its lease-holder name, how busy it is, attempts by status."""

    worker: str
    concurrency: int
    active: int  # handlers running or about to (never more than concurrency)
    counts: Mapping[str, int]  # settled attempts by jobs-frame status
    leases_lost: int
    recovered: int  # lapsed leases this server's recoverer returned (any worker's)
    claims: int  # claim calls made by the fetcher


class Server:
    """Run the tasks of a durable queue with registered handlers::

        server = Server("sqlite:///jobs.db", concurrency=20,
                        queues={"critical": 6, "default": 3, "low": 1})

        @server.handler("email:welcome")
        def welcome(task: Task) -> None: ...

        server.run()  # until SIGTERM/SIGINT

    ``queues`` is a weight per queue (each fetch orders queues at random, a queue
    first with probability weight / total), or a list for strict priority in list
    order; ``strict=True`` makes a dict strict too, heaviest first.
    """

    def __init__(
        self,
        url: str,
        *,
        concurrency: int = 10,
        queues: Mapping[str, int] | Sequence[str] | None = None,
        strict: bool = False,
        lease_s: float = 30.0,
        shutdown_timeout: float = 25.0,
        retry_delay: Callable[[int], float] | None = None,
        error_handler: ErrorHandler | None = None,
        clock: Callable[[], float] = time.time,
        name: str | None = None,
        poll_interval: float = 0.5,
        recover_interval: float | None = None,
        renew_interval: float | None = None,
        forward_interval: float = 1.0,
        seed: int | None = None,
        registry: CollectorRegistry | PoolMetrics | None = None,
    ) -> None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigError("concurrency", concurrency, "an integer >= 1")
        for field, value in (("lease_s", lease_s), ("shutdown_timeout", shutdown_timeout),
                             ("poll_interval", poll_interval),
                             ("forward_interval", forward_interval),
                             ("recover_interval", recover_interval or 1.0),
                             ("renew_interval", renew_interval or 1.0)):
            if isinstance(value, bool) or not (isinstance(value, int | float)
                                               and math.isfinite(value) and value > 0):
                raise ConfigError(field, value, "a finite number of seconds > 0")
        self.url = url
        self.concurrency = concurrency
        self.weights, self.strict = queue_weights(queues, strict)
        self.lease_s = float(lease_s)
        self.shutdown_timeout = float(shutdown_timeout)
        self.retry_delay = retry_delay if retry_delay is not None else ExponentialBackoff(
            seed=seed)
        self.error_handler = error_handler
        self.clock = clock
        self.worker = f"{name or socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self.poll_interval = float(poll_interval)
        self.recover_interval = self.lease_s / 2 if recover_interval is None else float(
            recover_interval)
        self.renew_interval = self.lease_s / 3 if renew_interval is None else float(
            renew_interval)
        self.forward_interval = float(forward_interval)
        self._rng = np.random.default_rng(seed)
        self._metrics = _metrics_for(registry)
        self._handlers: dict[str, Callable[[Task], Any]] = {}
        self._attempts = Attempts()
        self._busy = 0  # claimed attempts whose handler thread has not returned
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._leases_lost = 0
        self._signals = 0
        self._state = "new"  # new -> running -> stopping -> stopped
        self._state_lock = threading.Lock()
        self._stopped = threading.Event()
        self._backend: Backend | None = None
        self._pool: WorkerPool | None = None
        self._loops: dict[str, Loop] = {}
        self._fetcher: Fetcher | None = None
        self._recoverer: Recoverer | None = None

    # -- handlers -----------------------------------------------------------

    def handler(self, task_type: str) -> Callable[[H], H]:
        """Register ``fn(task) -> None`` for ``task_type``: a plain function runs on a pool
        thread, an ``async def`` in its own event loop on a pool thread."""
        if not isinstance(task_type, str) or not task_type:
            raise ConfigError("task_type", task_type, "a non-empty task type string")

        def register(fn: H) -> H:
            if task_type in self._handlers:
                raise ConfigError("task_type", task_type, "a type without a handler yet")
            self._handlers[task_type] = fn
            return fn

        return register

    # -- running ------------------------------------------------------------

    def start(self) -> None:
        """Start fetching and running tasks in background threads; returns at once."""
        with self._state_lock:
            if self._state != "new":
                raise QueueError(f"server {self.worker} was already started")
            self._state = "running"
        self._backend = backend = open_backend(self.url)
        self._pool = WorkerPool(workers=self.concurrency, queue_size=self.concurrency,
                                name=f"queue-server-{self.worker}")
        self._recoverer = Recoverer(backend, self.clock, self.recover_interval)
        self._fetcher = Fetcher(backend, self.clock, worker=self.worker, lease_s=self.lease_s,
                                weights=self.weights, strict=self.strict, rng=self._rng,
                                free=self._free, dispatch=self._dispatch,
                                interval=self.poll_interval)
        self._loops = {
            "recoverer": self._recoverer,
            "forwarder": Forwarder(backend, self.clock, self.forward_interval),
            "lease_keeper": LeaseKeeper(backend, self.clock, self._attempts,
                                        worker=self.worker, lease_s=self.lease_s,
                                        interval=self.renew_interval, on_lost=self._on_lost),
            "watchdog": Watchdog(self.clock, self._attempts, self.poll_interval,
                                 self._on_timeout),
            "fetcher": self._fetcher,
        }
        for loop in self._loops.values():
            loop.start()

    def run(self) -> None:
        """Start, and block until SIGTERM/SIGINT (or :meth:`stop`); then shut down gracefully.

        A second signal cuts the wait for running handlers short: what still runs is
        handed back at once. Signal handlers are installed only in the main thread,
        and only set a flag.
        """
        previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                previous[signum] = signal.signal(signum, self._on_signal)
        try:
            self.start()
            while not self._signals and not self._stopped.is_set():
                time.sleep(_SLICE)
        finally:
            try:
                self.stop()
            finally:
                for number, handler in previous.items():
                    signal.signal(number, handler)

    def _on_signal(self, signum: int, frame: object) -> None:
        self._signals += 1

    def stop(self, timeout: float | None = None) -> list[str]:
        """Stop fetching, wait up to ``timeout`` (default ``shutdown_timeout``) for running
        handlers, then hand back what still runs (to pending, no attempt counted); returns
        the handed-back task ids. Safe to call twice; the second call waits for the first.
        """
        with self._state_lock:
            if self._state != "running":
                if self._state == "stopping":
                    self._stopped.wait()
                return []
            self._state = "stopping"
        try:
            return self._shut_down(self.shutdown_timeout if timeout is None else timeout)
        finally:
            self._stopped.set()
            with self._state_lock:
                self._state = "stopped"

    def _shut_down(self, timeout: float) -> list[str]:
        loops, backend, pool = self._loops, self._backend, self._pool
        assert backend is not None and pool is not None
        loops["fetcher"].stop()
        deadline = time.monotonic() + timeout
        while self._attempts.undecided() and self._signals < 2:  # a second signal: hurry
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._attempts.wait_empty(min(left, _SLICE))
        left_over = self._attempts.decide_all("handed_back")
        ids = [attempt.info.id for attempt in left_over]
        for attempt in left_over:
            attempt.cancel()  # tell the handler; its late result is discarded
        if ids:
            try:  # the lease is released first: a late ack of these finds it gone
                n = backend.hand_back(ids, worker=self.worker, now=self.clock())
                _log.warning("handed back %d running task(s) at shutdown: %s", n, ids)
            except Exception:  # their leases lapse and the recoverer retries them
                _log.exception("could not hand back %s; they will be recovered", ids)
            for attempt in left_over:
                self._attempts.remove(attempt)
                self._count("returned", attempt.info, None)
        self._attempts.wait_empty(5.0)  # settlements already in flight finish their call
        for name in ("watchdog", "lease_keeper", "recoverer", "forwarder"):
            loops[name].stop()
        pool.shutdown("immediate", 0.0)
        backend.close()
        return ids

    # -- the fetcher's side ---------------------------------------------------

    def _free(self) -> int:
        return 0 if self._state != "running" else self.concurrency - self._busy

    def _dispatch(self, info: TaskInfo) -> None:
        """A claimed task: hold its lease, run it on the pool."""
        assert self._pool is not None
        attempt = Attempt(info)
        self._attempts.add(attempt)
        with self._lock:
            self._busy += 1
        try:
            self._pool.submit(self._process, attempt, task_type=info.type)
        except Exception:  # the pool refused (cannot happen while running): hand it back
            _log.exception("could not run task %s; handing it back", info.id)
            self._release_place()
            if self._attempts.decide(attempt, "handed_back"):
                self._store().hand_back([info.id], worker=self.worker, now=self.clock())
                self._attempts.remove(attempt)

    def _release_place(self) -> None:
        with self._lock:
            self._busy -= 1
        if self._fetcher is not None:
            self._fetcher.wake()

    def _store(self) -> Backend:
        assert self._backend is not None
        return self._backend

    # -- one attempt, on a pool thread ------------------------------------------

    def _process(self, attempt: Attempt) -> None:
        info = attempt.info
        job = current_job()
        job.attempt = info.attempt
        try:
            started = self.clock()
            deadline, by_task = attempt_deadline(info, started)
            if not self._attempts.start(attempt, job, deadline, by_task):
                return  # settled before it began (lease lost, or shutdown)
            if deadline is not None:
                job.deadline = time.monotonic() + (deadline - started)
            outcome, error = self._run(attempt, started)
            if self._attempts.decide(attempt, "handler"):
                self._settle(attempt, outcome, error, started)
        finally:
            self._release_place()

    def _run(self, attempt: Attempt, started: float) -> tuple[Outcome, BaseException | None]:
        """Run the handler; the outcome of this attempt and the error, if it failed."""
        info = attempt.info
        if info.deadline is not None and started >= info.deadline:
            return archive("failed", error := QueueError(
                f"the task's deadline passed before it ran ({info.deadline:.3f})")), error
        fn = self._handlers.get(info.type)
        if fn is None:
            return archive("failed", error := QueueError(
                f"no handler for task type {info.type!r}; registered types: "
                f"{sorted(self._handlers)}")), error
        try:
            task = info.task()
        except PayloadError as exc:
            return archive("failed", exc), exc
        try:
            if inspect.iscoroutinefunction(fn):
                asyncio.run(self._await(fn, task, attempt))
            else:
                fn(task)
        except SkipRetry as exc:
            return archive("failed", exc), exc
        except Retry as exc:
            return self._failure(info, exc, status="retried", delay=exc.delay), exc
        except (Exception, asyncio.CancelledError) as exc:
            return self._failure(info, exc, status="retried"), exc
        return Outcome(state=State.COMPLETED, status="completed"), None

    async def _await(self, fn: Callable[[Task], Any], task: Task, attempt: Attempt) -> None:
        loop, me = asyncio.get_running_loop(), asyncio.current_task()
        assert me is not None

        def cancel() -> None:  # from another thread: a timeout, a lost lease, a shutdown
            with contextlib.suppress(RuntimeError):  # the loop has closed: nothing to stop
                loop.call_soon_threadsafe(me.cancel)

        attempt.on_cancel = cancel
        if attempt.decided is not None:  # settled while the loop started
            return
        await fn(task)

    def _failure(self, info: TaskInfo, error: BaseException, *, status: str,
                 delay: float | None = None, text: str | None = None) -> Outcome:
        return failure(info, error, status=status, now=self.clock(), delay=delay,
                       retry_delay=self.retry_delay, text=text)

    def _on_timeout(self, attempt: Attempt) -> None:
        """The watchdog settled an attempt past its deadline (its handler was told to stop)."""
        info, job = attempt.info, attempt.job
        assert job is not None
        if attempt.archive_at_deadline:
            error = JobTimeout(job.job_id, 0.0)
            text = f"JobTimeout: task {info.id} was still running at its deadline"
            outcome = archive("timeout", error, text)
        else:
            error = JobTimeout(job.job_id, info.timeout or 0.0)
            text = f"JobTimeout: task {info.id} timed out after {info.timeout or 0.0:g} s"
            outcome = self._failure(info, error, status="timeout", text=text)
        self._settle(attempt, outcome, error, None)

    def _on_lost(self, attempt: Attempt) -> None:
        with self._lock:
            self._leases_lost += 1
        _log.warning("lease of task %s was lost (recovered elsewhere); its result will be "
                     "discarded", attempt.info.id)

    def _settle(self, attempt: Attempt, outcome: Outcome, error: BaseException | None,
                started: float | None) -> None:
        """Acknowledge the attempt in the store (retrying a transient failure twice), count
        it, and show a failure to the error handler. If the store stays unreachable the
        lease lapses and the recoverer retries the task: at least once, never lost."""
        info = attempt.info
        try:
            for pause in (0.05, 0.5, None):
                try:
                    ok = self._store().finish(info.id, worker=self.worker, now=self.clock(),
                                              outcome=outcome)
                    break
                except Exception:
                    if pause is None:
                        _log.exception("could not settle task %s; its lease will lapse and "
                                       "the recoverer will retry it", info.id)
                        return
                    time.sleep(pause)
            if not ok:
                _log.warning("task %s: the lease was gone at acknowledgement; the task was "
                             "recovered and may run again", info.id)
                return
            self._count(outcome.status, info, started)
        finally:
            self._attempts.remove(attempt)
            if error is not None:
                self._report_error(info, error)

    def _count(self, status: str, info: TaskInfo, started: float | None) -> None:
        with self._lock:
            self._counts[status] += 1
        metrics = self._metrics
        if metrics is not None:
            metrics.jobs.labels(info.queue, status).inc()
            if started is not None:
                metrics.duration.labels(info.type).observe(max(self.clock() - started, 0.0))
                ready = max(info.process_at, info.created_at)
                metrics.wait.labels(info.queue).observe(max(started - ready, 0.0))

    def _report_error(self, info: TaskInfo, error: BaseException) -> None:
        if self.error_handler is None:
            return
        try:
            self.error_handler(info, error)
        except Exception:
            _log.exception("error_handler failed on task %s", info.id)

    # -- observing --------------------------------------------------------------

    def statistics(self) -> ServerStatistics:
        """A snapshot: how busy the server is and what became of its attempts."""
        with self._lock:
            counts = dict(self._counts)
            busy, lost = self._busy, self._leases_lost
        recoverer, fetcher = self._recoverer, self._fetcher
        return ServerStatistics(
            worker=self.worker, concurrency=self.concurrency, active=busy, counts=counts,
            leases_lost=lost, recovered=recoverer.recovered if recoverer else 0,
            claims=fetcher.claims if fetcher else 0)

    def __repr__(self) -> str:
        return f"<Server {self.worker} {self.url} {self._state} concurrency={self.concurrency}>"


def _metrics_for(registry: CollectorRegistry | PoolMetrics | None) -> PoolMetrics | None:
    if registry is None:
        return None
    from poolsim.metrics import PoolMetrics

    if isinstance(registry, PoolMetrics):
        return registry
    return PoolMetrics.for_registry(registry)
