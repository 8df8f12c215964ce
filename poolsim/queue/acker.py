"""Batched acknowledgements: settled attempts are written to the store together.

A handler's outcome is decided at once (:class:`~poolsim.queue.attempts.Attempts`), but
acknowledging it costs a commit. The :class:`Acker` collects decided outcomes and writes
them with one :meth:`~poolsim.queue.backends.base.Backend.finish_many` — one transaction —
every ``interval`` seconds after the first one waiting, or as soon as ``batch`` are
waiting, whichever comes first. The handler's place is freed when its outcome is handed
over, so a handler thread never waits for a commit.

At least once, still: until its outcome is flushed an attempt keeps its lease (the lease
keeper renews it). If the worker dies in between, the lease lapses and the recoverer
retries the task, so a task whose handler had finished may run again — the window is
``interval`` seconds. If the store cannot be reached (``BackendUnavailable``), the outcomes
stay waiting and the write is retried with back-off (50 ms doubling to 2 s; new outcomes
do not cut it short, only :meth:`Acker.stop` does) until it succeeds: an outage shorter
than the lease costs no task a second run. Any other error is retried twice, then given
up: the leases lapse and the recoverer retries the tasks.
:meth:`Acker.stop` flushes everything waiting (retrying briefly, then giving up in the same
way); an outcome added after that is written at once, by the caller.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence

from poolsim.errors import BackendUnavailable
from poolsim.queue.attempts import Attempt, lease_args
from poolsim.queue.backends.base import Backend, Outcome

__all__ = ["Acker", "Settled"]

_log = logging.getLogger("poolsim.queue")
_RETRY_PAUSES = (0.05, 0.5)  # at stop(): a failing write is retried twice, then given up
RETRY_FIRST_S, RETRY_CAP_S = 0.05, 2.0  # while running: back-off between failed writes


@dataclasses.dataclass(frozen=True, slots=True)
class Settled:
    """An attempt's decided outcome, waiting to be acknowledged."""

    attempt: Attempt
    outcome: Outcome
    started: float | None  # on the server's clock; None if the handler never ran


class Acker:
    """Writes settled outcomes in batches on its own thread; ``done(items, acked)`` is called
    after each write with one bool per item (False: the lease was gone), or None for every
    item when the store stayed unreachable (their leases lapse; the recoverer retries them).
    """

    def __init__(self, backend: Backend, clock: Callable[[], float], *, worker: str,
                 interval: float, batch: int,
                 done: Callable[[Sequence[Settled], Sequence[bool] | None], None]) -> None:
        self.backend = backend
        self.clock = clock
        self.worker = worker
        self.interval = interval
        self.batch = batch
        self.done = done
        self.flushes = 0  # finish_many calls made, for tests and statistics
        self._waiting: list[Settled] = []
        self._first_at = 0.0  # monotonic time the oldest waiting outcome arrived
        self._cond = threading.Condition()
        self._stopping = False
        self._stopped = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="poolsim-acker",
                                            daemon=True)
            self._thread.start()

    def add(self, item: Settled) -> None:
        """Queue an outcome; written within ``interval`` seconds (at once after :meth:`stop`)."""
        with self._cond:
            if not self._stopped:
                if not self._waiting:
                    self._first_at = time.monotonic()
                self._waiting.append(item)
                if len(self._waiting) == 1 or len(self._waiting) >= self.batch:
                    self._cond.notify_all()
                return
        self.flush([item])  # stopped: nobody else will write it

    def pending(self) -> int:
        """Outcomes waiting to be written."""
        with self._cond:
            return len(self._waiting)

    def stop(self, timeout: float | None = None) -> None:
        """Write everything waiting, stop the thread; later outcomes are written by their
        caller."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        with self._cond:
            self._stopped = True
            left, self._waiting = self._waiting, []
        self.flush(left)  # nothing, unless the thread was never started or is stuck

    def _run(self) -> None:
        failures = 0  # failed writes in a row
        while True:
            with self._cond:
                while not self._waiting and not self._stopping:
                    self._cond.wait()
                while not self._stopping and len(self._waiting) < self.batch:
                    left = self._first_at + self.interval - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                items, self._waiting = self._waiting, []
                stopping = self._stopping
            if stopping:
                self.flush(items)  # retried briefly, then given up
                with self._cond:
                    if not self._waiting:
                        return
                continue
            try:
                acked = self._write(items)
            except BackendUnavailable as exc:  # kept, and written again after a back-off
                failures += 1
                if failures == 1 or failures % 20 == 0:
                    _log.warning("could not acknowledge %d task(s) (%s); retrying",
                                 len(items), exc)
                retry_at = time.monotonic() + min(RETRY_CAP_S,
                                                  RETRY_FIRST_S * 2 ** (failures - 1))
                with self._cond:
                    self._waiting[:0] = items
                    # the whole back-off: an add() (each finishing handler) must not cut it
                    # short and retry at once; only stop() does
                    while not self._stopping and (left := retry_at - time.monotonic()) > 0:
                        self._cond.wait(left)
                continue
            except Exception:  # not an outage (a bug?): retried briefly, then given up
                self.flush(items)
            else:
                self.done(items, acked)
            failures = 0

    def _write(self, items: Sequence[Settled]) -> list[bool]:
        """Acknowledge ``items`` in one ``finish_many``; one bool per item (False: lease gone)."""
        pairs = [(item.attempt.info.id, item.outcome) for item in items]
        _, leases = lease_args([item.attempt for item in items])
        acked = self.backend.finish_many(pairs, worker=self.worker, now=self.clock(),
                                         leases=leases)
        self.flushes += 1
        return acked

    def flush(self, items: Sequence[Settled]) -> None:
        """Write ``items`` now (retried twice on failure, then given up), then report."""
        if not items:
            return
        acked: list[bool] | None = None
        for pause in (*_RETRY_PAUSES, None):
            try:
                acked = self._write(items)
                break
            except Exception:
                if pause is None:
                    _log.exception("could not acknowledge %d task(s); their leases will lapse "
                                   "and the recoverer will retry them", len(items))
                    break
                time.sleep(pause)
        self.done(items, acked)
