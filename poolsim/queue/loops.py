"""The queue server's background duties, one small loop each (as Asynq's forwarder.go,
recoverer.go, heartbeat.go): the fetcher, the lease keeper, the watchdog, the recoverer
and the forwarder.

A :class:`Loop` is a daemon thread calling :meth:`Loop.tick` every ``interval`` seconds
(or sooner: ``tick`` may ask for its next call, and :meth:`Loop.wake` calls it at once).
``tick`` may also be called directly — tests drive a loop one step at a time with an
injected clock instead of sleeping. A failing tick is logged and retried after a back-off
that a ``wake()`` does not cut short: a background duty never dies of a transient error (a
locked database, a lost connection), nor hammers a store that is away.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from poolsim.errors import ConfigError
from poolsim.queue.attempts import Attempt, Attempts, lease_args
from poolsim.queue.backends.base import Backend
from poolsim.queue.task import TaskInfo

__all__ = ["Fetcher", "Forwarder", "LeaseKeeper", "Loop", "Recoverer", "Watchdog", "claim_plan",
           "queue_order", "queue_weights"]

_log = logging.getLogger("poolsim.queue")

Clock = Callable[[], float]


class Loop:
    """A background duty: ``tick()`` every ``interval`` seconds on a daemon thread."""

    name = "loop"
    # A failed tick is retried after ``retry_after_error`` seconds (None: ``interval``),
    # doubling with each failure in a row up to ``retry_cap`` (never below the first wait),
    # less up to 20 % jitter so that many workers do not all retry an outage in step.
    retry_after_error: float | None = None
    retry_cap = 5.0

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._last_error = -float("inf")

    def tick(self) -> float | None:
        """Do the duty once; return seconds until the next tick (None: ``interval``)."""
        raise NotImplementedError

    def start(self) -> None:
        """Start the thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"poolsim-{self.name}",
                                            daemon=True)
            self._thread.start()

    def wake(self) -> None:
        """Tick as soon as possible — but not before the back-off after a failed tick ends."""
        self._wake.set()

    def stop(self, timeout: float | None = None) -> None:
        """Ask the thread to end after its current tick, and wait up to ``timeout`` for it."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        """Whether the loop's thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def retry_wait(self, failures: int) -> float:
        """Seconds until a tick that failed ``failures`` times in a row is tried again."""
        first = self.interval if self.retry_after_error is None else self.retry_after_error
        wait = min(max(first, self.retry_cap), first * 2.0 ** min(failures - 1, 30))
        return wait * random.uniform(0.8, 1.0)

    def _run(self) -> None:
        failures = 0  # failed ticks in a row
        while not self._stopping:
            self._wake.clear()  # before the tick: a wake() during the tick is not lost
            retry_at = None  # after a failed tick: the earliest next try (monotonic)
            try:
                wait = self.tick()
                failures = 0
            except Exception:  # logged at most every 5 s; retried with back-off
                failures += 1
                wait = self.retry_wait(failures)
                now = time.monotonic()
                retry_at = now + wait
                if now - self._last_error >= 5.0:
                    self._last_error = now
                    _log.exception("poolsim queue %s failed; retrying", self.name)
            if retry_at is not None:
                self._back_off(retry_at)
            elif not self._stopping:
                self._wake.wait(self.interval if wait is None else max(wait, 0.0))

    def _back_off(self, retry_at: float) -> None:
        """Wait until ``retry_at``: a wake() does not cut a back-off short (during an outage,
        each freed place would otherwise retry at once); only stop() does."""
        while True:
            self._wake.clear()  # before the check: a stop() after it still wakes the wait
            left = retry_at - time.monotonic()
            if self._stopping or left <= 0:
                return
            self._wake.wait(left)


class Recoverer(Loop):
    """Every ``interval``: tasks whose lease lapsed (their worker died) go back to be retried."""

    name = "recoverer"

    def __init__(self, backend: Backend, clock: Clock, interval: float) -> None:
        super().__init__(interval)
        self.backend = backend
        self.clock = clock
        self.recovered = 0

    def tick(self) -> float | None:
        n = self.backend.recover(now=self.clock())
        if n:
            self.recovered += n
            _log.warning("recovered %d task(s) whose lease lapsed", n)
        return None


class Forwarder(Loop):
    """Every ``interval``: due scheduled and retry tasks become pending; completed tasks past
    their retention are deleted (the janitor's duty, in the same atomic step)."""

    name = "forwarder"

    def __init__(self, backend: Backend, clock: Clock, interval: float) -> None:
        super().__init__(interval)
        self.backend = backend
        self.clock = clock
        self.forwarded = 0

    def tick(self) -> float | None:
        self.forwarded += self.backend.forward(now=self.clock())
        return None


def queue_order(weights: Mapping[str, int], rng: np.random.Generator) -> list[str]:
    """One fetch's queue order by weight: each queue repeated by its weight, shuffled,
    then de-duplicated keeping first places (Asynq's processor). The first queue is
    ``q`` with probability ``weights[q] / sum(weights)``; every queue appears, so a
    busy heavy queue never starves a light one for good.
    """
    names = [queue for queue, weight in weights.items() for _ in range(weight)]
    shuffled = [names[i] for i in rng.permutation(len(names))]
    return list(dict.fromkeys(shuffled))


def queue_weights(queues: Mapping[str, int] | Sequence[str] | None,
            strict: bool) -> tuple[dict[str, int], list[str] | None]:
    """Validate ``queues``: (weights, strict order or None)."""
    if queues is None:
        queues = {"default": 1}
    if isinstance(queues, str):
        raise ConfigError("queues", queues, "a mapping of queue -> weight or a list of queues")
    if isinstance(queues, Mapping):
        weights = dict(queues)
        for queue, weight in weights.items():
            if not isinstance(queue, str) or not queue:
                raise ConfigError("queues", queue, "non-empty queue names")
            if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
                raise ConfigError(f"queues[{queue!r}]", weight, "an integer weight >= 1")
        order = sorted(weights, key=lambda q: -weights[q]) if strict else None
    else:
        order = list(queues)
        if any(not isinstance(q, str) or not q for q in order) or len(set(order)) != len(order):
            raise ConfigError("queues", queues, "distinct, non-empty queue names")
        weights = dict.fromkeys(order, 1)
    if not weights:
        raise ConfigError("queues", queues, "at least one queue")
    return weights, order


def claim_plan(weights: Mapping[str, int], strict: Sequence[str] | None, free: int,
               rng: np.random.Generator) -> list[tuple[list[str], int]]:
    """How to fill ``free`` places: a list of (queue order, how many) claims.

    Strict priority is one claim in the fixed order. By weight, each free place
    draws its own order and places whose orders start with the same queue share one
    claim — so shares follow the weights per task, not per batch, in at most one
    claim per queue.
    """
    if strict is not None or len(weights) == 1:
        return [(list(strict or weights), free)] if free > 0 else []
    plan: dict[str, tuple[list[str], int]] = {}
    for _ in range(free):
        order = queue_order(weights, rng)
        first, count = plan.get(order[0], (order, 0))
        plan[order[0]] = (first, count + 1)
    return list(plan.values())




class LeaseKeeper(Loop):
    """Every ``interval`` (the server's default: ``lease_s / 3``), renew the lease of every
    held attempt. An attempt whose lease is gone (it lapsed and was recovered) is settled
    as ``lost`` and its handler told to stop: its result must not be acknowledged, the
    task may be running elsewhere (or here again, under a new claim: leases are renewed by
    token, so an old claim of a task this server re-claimed is found lost too). A failed
    renewal (a locked database) is retried within ``min(1 s, interval / 3)``, not a whole
    ``interval`` later: the lease must not lapse while the store is briefly unavailable."""

    name = "lease-keeper"

    def __init__(self, backend: Backend, clock: Clock, attempts: Attempts, *, worker: str,
                 lease_s: float, interval: float, on_lost: Callable[[Attempt], None]) -> None:
        super().__init__(interval)
        self.backend = backend
        self.clock = clock
        self.attempts = attempts
        self.worker = worker
        self.lease_s = lease_s
        self.on_lost = on_lost
        self.retry_after_error = self.retry_cap = min(1.0, interval / 3)  # no growth: the
        # leases must be renewed as soon as the store is back

    def tick(self) -> float | None:
        held = self.attempts.held()
        if not held:
            return None
        ids, leases = lease_args(held)
        kept = set(self.backend.renew(ids, worker=self.worker,
                                      until=self.clock() + self.lease_s, leases=leases))
        for attempt in held:
            still = attempt.info.id if leases is None else attempt.key
            if still not in kept and self.attempts.decide(attempt, "lost"):
                attempt.cancel()
                self.attempts.remove(attempt)
                self.on_lost(attempt)
        return None


class Watchdog(Loop):
    """Times out attempts past their deadline (on the server's clock): sleeps until the
    earliest one, never longer than ``interval`` (so an injected clock is seen moving)."""

    name = "watchdog"

    def __init__(self, clock: Clock, attempts: Attempts, interval: float,
                 on_timeout: Callable[[Attempt], None]) -> None:
        super().__init__(interval)
        self.clock = clock
        self.attempts = attempts
        self.on_timeout = on_timeout

    def tick(self) -> float | None:
        now = self.clock()
        wait = self.interval
        for attempt in self.attempts.undecided():
            if attempt.deadline is None:
                continue
            if attempt.deadline <= now:
                if self.attempts.decide(attempt, "timeout"):
                    attempt.cancel()
                    self.on_timeout(attempt)
            else:
                wait = min(wait, attempt.deadline - now)
        return wait


class Fetcher(Loop):
    """Claims no more tasks than there are free places (back-pressure), in weighted or
    strict queue order, and dispatches each claim's tasks together; polls every
    ``interval`` when idle and is woken when places free.

    ``batch`` is the fewest free places worth a claim: fewer are left until more free up
    (the server wakes the fetcher once ``batch`` are free), so a busy server refills its
    prefetched places in one claim instead of one claim per finished task. The server's
    ``free()`` must count ``batch`` places free before any thread can go idle.
    """

    name = "fetcher"

    def __init__(self, backend: Backend, clock: Clock, *, worker: str, lease_s: float,
                 weights: Mapping[str, int], strict: Sequence[str] | None,
                 rng: np.random.Generator, free: Callable[[], int],
                 dispatch: Callable[[Sequence[TaskInfo]], None], interval: float,
                 batch: int = 1) -> None:
        super().__init__(interval)
        self.backend = backend
        self.clock = clock
        self.worker = worker
        self.lease_s = lease_s
        self.weights = dict(weights)
        self.strict = None if strict is None else list(strict)
        self.rng = rng
        self.free = free
        self.dispatch = dispatch
        self.batch = max(1, batch)
        self.claims = 0  # claim calls made, for tests and statistics

    def tick(self) -> float | None:
        free = self.free()
        if free < self.batch:
            return None  # a place release wakes us once enough are free
        got = 0
        for order, limit in claim_plan(self.weights, self.strict, free, self.rng):
            if self._stopping:
                break
            self.claims += 1
            infos = self.backend.claim(order, worker=self.worker, now=self.clock(),
                                       lease_s=self.lease_s, limit=limit)
            if infos:
                got += len(infos)
                self.dispatch(infos)
        return 0.0 if got and got == free else None
