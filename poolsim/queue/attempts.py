"""One attempt of a claimed task, from claim to settlement, and how its outcome is decided.

An attempt is settled exactly once — by its handler, its timeout, a lost lease or a
graceful shutdown — under one lock, so a late result after a timeout or a hand-back is
discarded instead of acknowledged twice. The store adds a second guard: it accepts an
acknowledgement only under the claim's lease token, and attempts are keyed by that token —
if a lease lapses and this same server claims the task again, the re-claim is a different
attempt, and the first one's late outcome finds its token gone.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
from collections.abc import Callable, Sequence

import numpy as np

from poolsim.errors import ConfigError, JobTimeout
from poolsim.jobs import JobContext
from poolsim.queue.backends.base import Outcome
from poolsim.queue.task import Retry, SkipRetry, State, TaskInfo

_log = logging.getLogger("poolsim.queue")

__all__ = ["Attempt", "Attempts", "ExponentialBackoff", "archive", "attempt_deadline",
           "error_text", "failure", "handler_outcome", "lease_args", "timeout_outcome"]


class ExponentialBackoff:
    """The default retry delay: full jitter, ``uniform(0, min(cap, base * 2**retried))``.

    Full jitter spreads a burst of failures out instead of retrying them in
    lock-step. ``seed`` makes the delays reproducible.
    """

    def __init__(self, base: float = 1.0, cap: float = 3600.0, seed: int | None = None) -> None:
        for field, value in (("base", base), ("cap", cap)):
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ConfigError(field, value, "a finite number of seconds > 0")
        self.base = float(base)
        self.cap = float(cap)
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()

    def __call__(self, retried: int) -> float:
        ceiling = self.cap if retried >= 64 else min(self.cap, self.base * 2.0 ** retried)
        with self._lock:
            return float(self._rng.uniform(0.0, ceiling))


@dataclasses.dataclass(eq=False)
class Attempt:
    """One claimed task in this worker, from claim until its lease is settled.

    ``decided`` says who settled the attempt, exactly once: ``"handler"`` (it
    returned or raised), ``"timeout"`` (the watchdog), ``"lost"`` (a renewal found
    the lease gone) or ``"handed_back"`` (a graceful shutdown). ``deadline`` is on
    the server's clock; ``archive_at_deadline`` when it is the task's own deadline
    (archive) rather than its ``timeout`` (retry within the budget).
    """

    info: TaskInfo
    deadline: float | None = None
    archive_at_deadline: bool = False
    job: JobContext | None = None
    decided: str | None = None
    on_cancel: Callable[[], None] | None = None  # cancels a coroutine handler for real

    @property
    def key(self) -> str:
        """The claim's lease token (the task id for a store that gave none): an attempt's
        identity, since the same task may be claimed again while an old attempt lingers."""
        return self.info.lease or self.info.id

    def cancel(self) -> None:
        """Tell the running handler to stop (cooperatively; a coroutine for real)."""
        if self.job is not None:
            self.job.cancelled.set()
        if self.on_cancel is not None:
            self.on_cancel()


class Attempts:
    """The attempts a server holds leases for; deciding one is atomic under one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, Attempt] = {}
        self._empty = threading.Condition(self._lock)

    def add(self, attempt: Attempt) -> None:
        with self._lock:
            self._held[attempt.key] = attempt

    def add_many(self, attempts: Sequence[Attempt]) -> None:
        """:meth:`add` for a claim's attempts, under one lock."""
        with self._lock:
            for attempt in attempts:
                self._held[attempt.key] = attempt

    def decide(self, attempt: Attempt, by: str) -> bool:
        """Settle ``attempt`` as ``by``; False if someone settled it first."""
        with self._lock:
            if attempt.decided is not None:
                return False
            attempt.decided = by
            return True

    def start(self, attempt: Attempt, job: JobContext, deadline: float | None,
              archive_at_deadline: bool) -> bool:
        """The handler is about to run; False if the attempt was settled before it began."""
        with self._lock:
            attempt.job = job
            attempt.deadline = deadline
            attempt.archive_at_deadline = archive_at_deadline
            return attempt.decided is None

    def remove(self, attempt: Attempt) -> None:
        """The lease is settled in the store (or given up): stop renewing it."""
        with self._lock:
            if self._held.get(attempt.key) is attempt:
                del self._held[attempt.key]
            if not self._held:
                self._empty.notify_all()

    def remove_many(self, attempts: Sequence[Attempt]) -> None:
        """:meth:`remove` for an acknowledged batch, under one lock."""
        with self._lock:
            held = self._held
            for attempt in attempts:
                if held.get(attempt.key) is attempt:
                    del held[attempt.key]
            if not held:
                self._empty.notify_all()

    def held(self) -> list[Attempt]:
        """Every attempt whose lease is still held (decided ones may be finishing)."""
        with self._lock:
            return list(self._held.values())

    def undecided(self) -> list[Attempt]:
        with self._lock:
            return [a for a in self._held.values() if a.decided is None]

    def decide_all(self, by: str) -> list[Attempt]:
        """Settle every undecided attempt as ``by``; returns them."""
        with self._lock:
            taken = [a for a in self._held.values() if a.decided is None]
            for attempt in taken:
                attempt.decided = by
            return taken

    def wait_empty(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for no lease to be held."""
        with self._lock:
            return self._empty.wait_for(lambda: not self._held, timeout)

    def __len__(self) -> int:
        return len(self._held)


def lease_args(attempts: Sequence[Attempt]) -> tuple[list[str], list[str] | None]:
    """The task ids and lease tokens of ``attempts``, for the store's ``ids``/``leases``
    arguments (tokens None if the store gave any attempt none: then matched by worker)."""
    ids = [a.info.id for a in attempts]
    tokens = [a.info.lease for a in attempts]
    if any(t is None for t in tokens):
        return ids, None
    return ids, [t for t in tokens if t is not None]


def attempt_deadline(info: TaskInfo, now: float) -> tuple[float | None, bool]:
    """When this attempt must end on the server's clock, and whether that is the task's own
    deadline (archive) rather than its timeout (a failed attempt)."""
    by_timeout = None if info.timeout is None else now + info.timeout
    if info.deadline is not None and (by_timeout is None or info.deadline < by_timeout):
        return info.deadline, True
    return by_timeout, False


def archive(status: str, error: BaseException, text: str | None = None) -> Outcome:
    return Outcome(state=State.ARCHIVED, status=status, error=text or error_text(error))


def error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def failure(info: TaskInfo, error: BaseException, *, status: str, now: float,
            retry_delay: Callable[[int], float], delay: float | None = None,
            text: str | None = None) -> Outcome:
    """A failed attempt: retry at ``now`` + ``delay`` (or the back-off for ``info.retried``)
    while the budget lasts, else archive; ``status`` is ``retried`` or ``timeout``."""
    if info.retried >= info.max_retry:
        return archive("failed" if status == "retried" else status, error, text)
    if delay is None:
        try:
            delay = float(retry_delay(info.retried))
        except Exception:
            _log.exception("retry_delay failed; retrying task %s in 1 s", info.id)
            delay = 1.0
    return Outcome(state=State.RETRY, status=status, error=text or error_text(error),
                   retry_at=now + max(delay, 0.0))


def handler_outcome(info: TaskInfo, error: BaseException | None, *, clock: Callable[[], float],
                    retry_delay: Callable[[int], float]) -> Outcome:
    """The outcome of a handler that returned (``error`` None: completed) or raised:
    :class:`SkipRetry` archives at once, :class:`Retry` retries after its ``delay``, any
    other error retries after the back-off — while the budget lasts (see :func:`failure`)."""
    if error is None:
        return Outcome(state=State.COMPLETED, status="completed")
    if isinstance(error, SkipRetry):
        return archive("failed", error)
    delay = error.delay if isinstance(error, Retry) else None
    return failure(info, error, status="retried", now=clock(), delay=delay,
                   retry_delay=retry_delay)


def timeout_outcome(attempt: Attempt, *, clock: Callable[[], float],
                    retry_delay: Callable[[int], float]) -> tuple[Outcome, JobTimeout]:
    """The outcome of an attempt still running at its deadline, and the error to report:
    archived (``timeout``) at the task's own deadline, else a failed attempt (retried
    within the budget) at its ``timeout``."""
    info, job = attempt.info, attempt.job
    assert job is not None
    if attempt.archive_at_deadline:
        error = JobTimeout(job.job_id, 0.0)
        text = f"JobTimeout: task {info.id} was still running at its deadline"
        return archive("timeout", error, text), error
    error = JobTimeout(job.job_id, info.timeout or 0.0)
    text = f"JobTimeout: task {info.id} timed out after {info.timeout or 0.0:g} s"
    return failure(info, error, status="timeout", now=clock(), retry_delay=retry_delay,
                   text=text), error
