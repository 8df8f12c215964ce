"""Server: runs a durable queue's tasks on a :class:`~poolsim.pool.WorkerPool`.

Small loops composed (``loops.py``): the fetcher claims no more tasks than the
server has free places (``concurrency`` threads + ``prefetch`` waiting), several at
once, the lease keeper renews the leases of held tasks, the
watchdog times out attempts, the recoverer returns tasks whose worker died, the
forwarder moves due scheduled/retry tasks to pending (and deletes expired
completed ones). Each attempt is settled exactly once — by its handler, its
timeout, a lost lease or a graceful shutdown — and the acker (``acker.py``)
writes settled outcomes in batches, each batch one atomic store call that
acknowledges only the attempts whose lease this worker still holds.

The runner (``runner.py``) runs one attempt, from decoding the task to settling its
outcome: plain handlers on a :class:`~poolsim.pool.WorkerPool` of ``concurrency``
threads; ``async def`` handlers on an :class:`~poolsim.aio.AsyncWorkerPool` of
``async_concurrency`` workers, on one event loop in a dedicated thread
(``coroutines.py``).
"""

from __future__ import annotations

import dataclasses
import functools
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

from poolsim.errors import ConfigError, QueueError
from poolsim.pool import WorkerPool
from poolsim.queue.acker import Acker, Settled
from poolsim.queue.attempts import Attempt, Attempts, ExponentialBackoff, lease_args
from poolsim.queue.backends.base import Backend, open_backend, redact_url
from poolsim.queue.coroutines import Coroutines
from poolsim.queue.loops import (
    Fetcher,
    Forwarder,
    LeaseKeeper,
    Loop,
    Recoverer,
    Watchdog,
    queue_weights,
)
from poolsim.queue.runner import ErrorHandler, Runner
from poolsim.queue.task import Task, TaskInfo

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from poolsim.metrics import PoolMetrics

__all__ = ["ExponentialBackoff", "Server", "ServerStatistics"]

_log = logging.getLogger("poolsim.queue")
_SLICE = 0.05  # how often run() looks at its signal flags
PREFETCH_PER_THREAD = 4  # the default prefetch is this many tasks per thread (as Celery's
# default prefetch multiplier): claims of many tasks, and a thread never waits for one
H = TypeVar("H", bound=Callable[..., Any])


@dataclasses.dataclass(frozen=True, slots=True)
class ServerStatistics:
    """A snapshot of a server: its lease-holder name, how busy it is, attempts by status."""

    worker: str
    concurrency: int
    active: int  # claimed tasks held: running, or waiting for a thread (threads + coroutines)
    counts: Mapping[str, int]  # settled attempts by jobs-frame status
    leases_lost: int
    recovered: int  # lapsed leases this server's recoverer returned (any worker's)
    claims: int  # claim calls made by the fetcher
    acks_waiting: int = 0  # settled outcomes not yet written to the store
    ack_flushes: int = 0  # batched acknowledgements (finish_many calls) made


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

    ``prefetch`` (default ``4 * concurrency``) claimed tasks may wait for a free thread,
    holding their leases (renewed): claims are bigger and a thread never waits for one.
    ``prefetch=0`` claims only for free threads — better when tasks are long and several
    servers share a queue (a waiting task cannot run elsewhere).

    Outcomes are acknowledged in batches: every ``ack_interval`` seconds or every
    ``ack_batch`` outcomes, whichever comes first (``ack_batch=1`` writes each at once).
    ``async def`` handlers run on one event loop, up to ``async_concurrency`` at a time
    (default ``concurrency``); see the reference for how the two budgets are shared.
    """

    def __init__(
        self,
        url: str,
        *,
        concurrency: int = 10,
        async_concurrency: int | None = None,
        prefetch: int | None = None,
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
        ack_interval: float = 0.005,
        ack_batch: int = 64,
    ) -> None:
        if async_concurrency is None:
            async_concurrency = concurrency
        for field, count in (("concurrency", concurrency),
                             ("async_concurrency", async_concurrency), ("ack_batch", ack_batch)):
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ConfigError(field, count, "an integer >= 1")
        if prefetch is None:
            prefetch = PREFETCH_PER_THREAD * concurrency
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0:
            raise ConfigError("prefetch", prefetch, "an integer >= 0")
        for field, value in (("lease_s", lease_s), ("shutdown_timeout", shutdown_timeout),
                             ("ack_interval", ack_interval),
                             ("poll_interval", poll_interval),
                             ("forward_interval", forward_interval),
                             ("recover_interval",
                              1.0 if recover_interval is None else recover_interval),
                             ("renew_interval", 1.0 if renew_interval is None else renew_interval)):
            if isinstance(value, bool) or not (isinstance(value, int | float)
                                               and math.isfinite(value) and value > 0):
                raise ConfigError(field, value, "a finite number of seconds > 0")
        if renew_interval is not None and renew_interval > lease_s / 2:
            raise ConfigError("renew_interval", renew_interval,
                              f"at most lease_s / 2 ({lease_s / 2:g} s): a lease must be "
                              "renewed at least twice before it lapses")
        self._url = url
        self.url = redact_url(url)  # shown in logs and repr: any password redacted
        self.concurrency = concurrency
        self.async_concurrency = async_concurrency
        self.prefetch = prefetch
        self.ack_interval = float(ack_interval)
        self.ack_batch = ack_batch
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
        self._busy_async = 0  # ... whose coroutine handler has not ended
        self._allowance = prefetch  # places for waiting tasks: prefetch, less while threads
        # are stuck in handlers whose attempt was already decided (see _free)
        self._batch_size = 1  # the fetcher's batch while no thread is stuck
        self._elsewhere = 0  # attempts decided by a timeout or a lost lease (a thread
        self._unstuck_at = 0  # may be stuck since); _elsewhere when none was stuck
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
        self._acker: Acker | None = None
        self._runner: Runner | None = None
        self._coroutines: Coroutines | None = None  # coroutine handlers run here

    # -- handlers -----------------------------------------------------------

    def handler(self, task_type: str) -> Callable[[H], H]:
        """Register ``fn(task) -> None`` for ``task_type``: a plain function runs on a pool
        thread, an ``async def`` on the server's event loop (register before :meth:`start`)."""
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
        self._backend = backend = open_backend(self._url)
        self._pool = pool = WorkerPool(workers=self.concurrency, queue_size=self.concurrency,
                                       name=f"queue-server-{self.worker}")
        self._acker = Acker(backend, self.clock, worker=self.worker,
                            interval=self.ack_interval, batch=self.ack_batch,
                            done=self._acknowledged)
        self._runner = runner = Runner(
            self._handlers, self._attempts, clock=self.clock, retry_delay=self.retry_delay,
            error_handler=self.error_handler, settle=self._acker.add,
            release=self._release_place, lanes=self.concurrency,
            submit=functools.partial(pool.submit, task_type="queue-tasks"),
            refuse=functools.partial(self._refused, coroutine=False))
        if any(inspect.iscoroutinefunction(fn) for fn in self._handlers.values()):
            coroutines = Coroutines(
                workers=self.async_concurrency, name=self.worker, run=runner.run_coroutine,
                release=functools.partial(self._release_place, True),
                refuse=functools.partial(self._refused, coroutine=True))
            coroutines.start()
            self._coroutines = coroutines
        self._acker.start()
        self._recoverer = Recoverer(backend, self.clock, self.recover_interval)
        self._batch_size = self._batch()
        self._fetcher = Fetcher(backend, self.clock, worker=self.worker, lease_s=self.lease_s,
                                weights=self.weights, strict=self.strict, rng=self._rng,
                                free=self._free, dispatch=self._dispatch,
                                interval=self.poll_interval, batch=self._batch_size)
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
        loops, backend, pool, acker = self._loops, self._backend, self._pool, self._acker
        assert backend is not None and pool is not None and acker is not None
        assert self._runner is not None
        loops["fetcher"].stop()
        taken = self._runner.take_waiting()  # prefetched, never started
        unstarted = [a for a in taken if self._attempts.decide(a, "handed_back")]
        for _ in taken:  # no lane will run them: their places are free
            self._release_place()
        ids = self._hand_back(backend, unstarted, "prefetched task(s) at shutdown")  # at once:
        # others may run them
        deadline = time.monotonic() + timeout
        while self._attempts.undecided() and self._signals < 2:  # a second signal: hurry
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._attempts.wait_empty(min(left, _SLICE))
        left_over = self._attempts.decide_all("handed_back")
        for attempt in left_over:
            attempt.cancel()  # tell the handler; its late result is discarded
        acker.stop(5.0)  # what finished is acknowledged before anything is handed back
        ids += self._hand_back(backend, left_over, "running task(s) at shutdown")
        self._attempts.wait_empty(5.0)  # settlements already in flight finish their call
        for name in ("watchdog", "lease_keeper", "recoverer", "forwarder"):
            loops[name].stop()
        pool.shutdown("immediate", 0.0)
        if self._coroutines is not None:
            self._coroutines.stop()
        backend.close()
        return ids

    def _hand_back(self, backend: Backend, attempts: list[Attempt], what: str) -> list[str]:
        """Return decided attempts' tasks to pending (no attempt counted); their ids."""
        ids, leases = lease_args(attempts)
        if ids:
            try:  # the lease is released first: a late ack of these finds it gone
                n = backend.hand_back(ids, worker=self.worker, now=self.clock(),
                                      leases=leases)
                _log.warning("handed back %d %s: %s", n, what, ids)
            except Exception:  # their leases lapse and the recoverer retries them
                _log.exception("could not hand back %s; they will be recovered", ids)
            for attempt in attempts:
                self._attempts.remove(attempt)
                self._count("returned", attempt.info, None)
        return ids

    # -- the fetcher's side ---------------------------------------------------

    def _batch(self) -> int:
        """The fewest free places worth a claim: half the prefetched places (so a claim
        refills several at once, not one per finished task, while the other half keeps
        the threads busy). Fewer are free only while every thread has a task. With
        coroutine handlers, and with ``prefetch`` 0 or 1, any free place is claimed for."""
        if self.prefetch == 0 or any(inspect.iscoroutinefunction(fn)
                                     for fn in self._handlers.values()):
            return 1
        return max(1, self.prefetch // 2)

    def _free(self) -> int:
        """Places to claim for: a claimed task may turn out to be of either kind, so no
        more than both the thread pool and the coroutine pool can still take.

        A thread still running a handler whose attempt was already decided (timed out,
        lease lost) is *stuck*: Python cannot stop it, and it may never return. Waiting
        tasks need a thread that will run them, so with ``stuck`` threads the prefetch
        allowance shrinks to ``prefetch * usable // concurrency`` (``usable = concurrency
        - stuck``; the batch worth a claim to half of that); with none usable, nothing is
        claimed and the waiting tasks are handed back, for another worker to run."""
        if self._state != "running":
            return 0
        runner, fetcher = self._runner, self._fetcher
        stuck, elsewhere = 0, self._elsewhere
        if elsewhere != self._unstuck_at and runner is not None:  # else none can be stuck
            stuck = runner.stuck()
            if not stuck:
                self._unstuck_at = elsewhere
        usable = self.concurrency - stuck
        if stuck:
            allowance = self.prefetch * max(usable, 0) // self.concurrency
            batch = max(1, min(self._batch_size, allowance // 2))
        else:
            allowance, batch = self.prefetch, self._batch_size
        if fetcher is not None:
            fetcher.batch = batch
        with self._lock:
            self._allowance = allowance
            free = self.concurrency + allowance - self._busy
            if self._coroutines is not None:
                free = min(free, self.async_concurrency - self._busy_async)
        if usable <= 0:
            self._hand_back_waiting()
            return 0
        return free

    def _hand_back_waiting(self) -> None:
        """Every thread is stuck: hand back the attempts waiting for one, at once."""
        assert self._runner is not None
        taken = self._runner.take_waiting()
        if not taken:
            return
        unstarted = [a for a in taken if self._attempts.decide(a, "handed_back")]
        with self._lock:  # no lane will run them: their places are free
            self._busy -= len(taken)
        self._hand_back(self._store(), unstarted,
                        "waiting task(s): every thread is stuck in a handler whose attempt "
                        "was already decided (timed out or lost its lease)")

    def _dispatch(self, infos: Sequence[TaskInfo]) -> None:
        """Claimed tasks: hold their leases, run each on the thread pool or the event loop."""
        coroutines = self._coroutines
        assert self._runner is not None
        attempts = [Attempt(info) for info in infos]
        self._attempts.add_many(attempts)
        kinds = [coroutines is not None and inspect.iscoroutinefunction(
            self._handlers.get(a.info.type)) for a in attempts]
        with self._lock:
            n = sum(kinds)
            self._busy_async += n
            self._busy += len(attempts) - n
        self._runner.start([a for a, coroutine in zip(attempts, kinds, strict=True)
                            if not coroutine])
        if coroutines is not None:
            for attempt, coroutine in zip(attempts, kinds, strict=True):
                if coroutine:
                    try:
                        coroutines.submit(attempt)
                    except Exception:  # the loop is gone (cannot happen while running)
                        _log.exception("could not run task %s; handing it back",
                                       attempt.info.id)
                        self._refused(attempt, True)

    def _refused(self, attempt: Attempt, coroutine: bool) -> None:
        self._release_place(coroutine)
        if self._attempts.decide(attempt, "handed_back"):
            ids, leases = lease_args([attempt])
            try:
                self._store().hand_back(ids, worker=self.worker, now=self.clock(),
                                        leases=leases)
            except Exception:  # not raised: the caller may have more attempts to give back
                # the lease stays in the store until it lapses (no longer renewed: removed
                # below); then the recoverer retries the task
                _log.exception("could not hand back task %s; it will be recovered once its "
                               "lease lapses", attempt.info.id)
            finally:
                self._attempts.remove(attempt)

    def _release_place(self, coroutine: bool = False) -> None:
        """A handler ended (or never ran): its place is free; the fetcher is woken once a
        claim is worth making (``Fetcher.batch`` places free), not for every place."""
        with self._lock:
            if coroutine:
                self._busy_async -= 1
            else:
                self._busy -= 1
            free = self.concurrency + self._allowance - self._busy
        fetcher = self._fetcher
        if fetcher is not None and (coroutine or free >= fetcher.batch):
            fetcher.wake()

    def _store(self) -> Backend:
        assert self._backend is not None
        return self._backend

    def _on_timeout(self, attempt: Attempt) -> None:
        """The watchdog settled an attempt past its deadline (its handler was told to stop)."""
        assert self._runner is not None
        with self._lock:
            self._elsewhere += 1  # its thread may be stuck
        self._runner.timed_out(attempt)

    def _on_lost(self, attempt: Attempt) -> None:
        with self._lock:
            self._leases_lost += 1
            self._elsewhere += 1  # its thread may be stuck
        _log.warning("lease of task %s was lost (recovered elsewhere); its result will be "
                     "discarded", attempt.info.id)

    def _acknowledged(self, items: Sequence[Settled], acked: Sequence[bool] | None) -> None:
        """The acker wrote ``items`` (``acked`` None: it could not reach the store)."""
        if acked is not None:
            written = [item for item, ok in zip(items, acked, strict=True) if ok]
            statuses = Counter(item.outcome.status for item in written)
            with self._lock:
                self._counts.update(statuses)
                self._leases_lost += len(items) - len(written)
            if self._metrics is not None:
                for item in written:
                    self._observe(item.outcome.status, item.attempt.info, item.started)
            for item, ok in zip(items, acked, strict=True):
                if not ok:
                    _log.warning("task %s: the lease was gone at acknowledgement (this claim "
                                 "lapsed and was recovered); its outcome was dropped and the "
                                 "task may run again", item.attempt.info.id)
        self._attempts.remove_many([item.attempt for item in items])

    def _count(self, status: str, info: TaskInfo, started: float | None) -> None:
        with self._lock:
            self._counts[status] += 1
        self._observe(status, info, started)

    def _observe(self, status: str, info: TaskInfo, started: float | None) -> None:
        """Metrics (when on) of one acknowledged or handed-back attempt."""
        metrics = self._metrics
        if metrics is not None:
            metrics.jobs.labels(info.queue, status).inc()
            if started is not None:
                metrics.duration.labels(info.type).observe(max(self.clock() - started, 0.0))
                ready = max(info.process_at, info.created_at)
                metrics.wait.labels(info.queue).observe(max(started - ready, 0.0))

    # -- observing --------------------------------------------------------------

    def statistics(self) -> ServerStatistics:
        """A snapshot: how busy the server is and what became of its attempts."""
        with self._lock:
            counts = dict(self._counts)
            busy, lost = self._busy + self._busy_async, self._leases_lost
        recoverer, fetcher, acker = self._recoverer, self._fetcher, self._acker
        return ServerStatistics(
            worker=self.worker, concurrency=self.concurrency, active=busy, counts=counts,
            leases_lost=lost, recovered=recoverer.recovered if recoverer else 0,
            claims=fetcher.claims if fetcher else 0,
            acks_waiting=acker.pending() if acker else 0,
            ack_flushes=acker.flushes if acker else 0)

    def __repr__(self) -> str:
        return f"<Server {self.worker} {self.url} {self._state} concurrency={self.concurrency}>"


def _metrics_for(registry: CollectorRegistry | PoolMetrics | None) -> PoolMetrics | None:
    if registry is None:
        return None
    from poolsim.metrics import PoolMetrics

    if isinstance(registry, PoolMetrics):
        return registry
    return PoolMetrics.for_registry(registry)
