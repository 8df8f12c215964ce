"""What an operator asks of a queue: how full, how late, what failed — and the fixes.

``Inspector`` reads and changes the store directly (no server needs to run)::

    inspector = Inspector("sqlite:///jobs.db")
    for queue in inspector.stats():
        print(queue.queue, queue.counts[State.PENDING], queue.oldest_pending_age_s)
    for info in inspector.list("archived", queue="critical"):
        inspector.requeue(info.id)

:meth:`Inspector.history_frame` turns the queue's history into the jobs frame,
so :func:`poolsim.summarize`, the plots and ``compare`` read a real queue's
records as they read a simulation's.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Literal

import numpy as np
import pandas as pd

from poolsim.errors import ConfigError
from poolsim.queue.backends.base import Backend, HistoryRow, QueueStats, open_backend
from poolsim.queue.task import State, TaskInfo
from poolsim.records import STATUSES, Status, jobs_frame

__all__ = ["Inspector", "history_frame"]

Clock = Callable[[], float]

# History statuses that are not jobs-frame statuses, and the one each maps to.
_STATUS_ALIASES: dict[str, Status] = {
    "archived": Status.FAILED,
    "error": Status.FAILED,
    "skipped": Status.FAILED,
    "lost": Status.RETRIED,
    "recovered": Status.RETRIED,
    "handed_back": Status.RETURNED,
}


def _state(state: State | str) -> State:
    try:
        return State(state)
    except ValueError:
        raise ConfigError("state", state, "one of " + ", ".join(s.value for s in State)
                          ) from None


class Inspector:
    """Read and act on a store: ``Inspector("sqlite:///jobs.db")`` (or an open backend).

    ``clock`` gives the epoch seconds used for latency and today's counts.
    """

    def __init__(self, url: str | Backend, *, clock: Clock = time.time) -> None:
        self._own = isinstance(url, str)
        self.backend: Backend = open_backend(url) if isinstance(url, str) else url
        self.url = self.backend.url
        self._clock = clock

    def stats(self) -> list[QueueStats]:
        """Every queue's counts by state, pause flag, the age of its oldest pending task
        (queue latency) and today's processed and failed counts (since UTC midnight)."""
        return self.backend.stats(now=self._clock())

    def list(self, state: State | str, queue: str | None = None, limit: int = 100,
             offset: int = 0) -> list[TaskInfo]:
        """Tasks in ``state`` (``"archived"`` or ``State.ARCHIVED``), of ``queue`` or all,
        oldest first, ``limit`` of them from ``offset``."""
        for field, value in (("limit", limit), ("offset", offset)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(field, value, "an integer >= 0")
        return self.backend.list_tasks(state=_state(state), queue=queue, limit=limit,
                                       offset=offset)

    def _act(self, task_id: str,
             action: Literal["requeue", "delete", "archive"]) -> TaskInfo | None:
        return self.backend.act(task_id, action, now=self._clock())

    def requeue(self, task_id: str) -> TaskInfo:
        """Move a task (archived, retry, scheduled...) to pending with its retries reset;
        ``TaskNotFound`` if there is none with this id."""
        info = self._act(task_id, "requeue")
        assert info is not None
        return info

    def delete(self, task_id: str) -> None:
        """Delete a task for good; ``TaskNotFound`` if there is none with this id."""
        self._act(task_id, "delete")

    def archive(self, task_id: str) -> TaskInfo:
        """Archive a task so no worker runs it (until requeued)."""
        info = self._act(task_id, "archive")
        assert info is not None
        return info

    def pause(self, queue: str) -> None:
        """Stop workers claiming tasks of ``queue`` (running tasks finish; enqueue works)."""
        self.backend.pause(queue, True)

    def unpause(self, queue: str) -> None:
        """Let workers claim tasks of ``queue`` again."""
        self.backend.pause(queue, False)

    def history_frame(self, since: float = 0.0) -> pd.DataFrame:
        """Every attempt that ended since ``since`` (epoch seconds) as the jobs frame; see
        :func:`history_frame`."""
        return history_frame(self.backend.history(since=since))

    def close(self) -> None:
        """Release the store's connection (when the inspector opened it)."""
        if self._own:
            self.backend.close()

    def __enter__(self) -> Inspector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Inspector({self.url!r})"


def history_frame(rows: list[HistoryRow]) -> pd.DataFrame:
    """The jobs frame of a queue's history: one row per attempt, in history order.

    ``job_id`` is the row's position (0..n-1); ``arrival_s``, ``start_s`` and
    ``end_s`` are seconds since the earliest ``enqueued_at`` in the rows (that
    origin, in epoch seconds, is ``frame.attrs["origin_epoch_s"]``); ``worker``
    numbers the distinct workers in order of first appearance (``<NA>`` when no
    worker ran the attempt); ``attempt`` is the row's; ``status`` is the row's
    when it is a :class:`~poolsim.records.Status` value, else its nearest one
    (``archived`` -> ``failed``, a lapsed lease -> ``retried``, a hand-back ->
    ``returned``).
    """
    origin = min((row.enqueued_at for row in rows), default=0.0)
    workers: dict[str, int] = {}
    worker_index: list[int | None] = []
    for row in rows:
        worker_index.append(None if row.worker is None
                            else workers.setdefault(row.worker, len(workers)))
    frame = jobs_frame({
        "job_id": np.arange(len(rows), dtype=np.int64),
        "task_type": [row.type for row in rows],
        "queue": [row.queue for row in rows],
        "arrival_s": np.array([row.enqueued_at - origin for row in rows], dtype=float),
        "start_s": np.array([math.nan if row.started_at is None else row.started_at - origin
                             for row in rows], dtype=float),
        "end_s": np.array([row.ended_at - origin for row in rows], dtype=float),
        "status": [_status(row.status) for row in rows],
        "worker": pd.array(worker_index, dtype="Int64"),
        "attempt": np.array([row.attempt for row in rows], dtype=np.int64),
    })
    frame.attrs["origin_epoch_s"] = origin
    return frame


def _status(status: str) -> str:
    if status in STATUSES:
        return status
    return _STATUS_ALIASES.get(status, Status.FAILED).value
