"""Tasks, their states, and the control flow a handler may raise.

A task is a type and a JSON payload (never pickle: a payload is data, not
code). Stored, it carries what the queue needs to run it at least once:
its queue, retry budget, timeout, deadline, schedule, uniqueness and lease.
"""

from __future__ import annotations

import dataclasses
import json
import math
import uuid
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from poolsim.errors import ConfigError, PayloadError

__all__ = ["Retry", "SkipRetry", "State", "Task", "TaskInfo", "new_task_id"]


class State(StrEnum):
    """Where a task is in its life; the same names in every backend."""

    SCHEDULED = "scheduled"  # waits for its process_at
    PENDING = "pending"  # ready for a worker
    ACTIVE = "active"  # leased by a worker, running
    RETRY = "retry"  # failed, waits for its back-off
    ARCHIVED = "archived"  # dead-lettered: out of retries, SkipRetry, or unprocessable
    COMPLETED = "completed"  # done; kept for its retention, then deleted


class SkipRetry(Exception):
    """Raise in a handler to archive the task at once: retrying cannot help.

    Deliberately not a ``PoolsimError``: ``except PoolsimError`` never swallows it.
    """


class Retry(Exception):
    """Raise in a handler to retry after ``delay`` seconds (counts an attempt)."""

    def __init__(self, delay: float, reason: str = "") -> None:
        if not (isinstance(delay, int | float) and math.isfinite(delay) and delay >= 0):
            raise ConfigError("delay", delay, "a finite number of seconds >= 0")
        self.delay = float(delay)
        super().__init__(reason or f"retry in {delay:g} s")


def new_task_id() -> str:
    """A fresh, unique task id."""
    return uuid.uuid4().hex


@dataclasses.dataclass(frozen=True)
class Task:
    """A unit of work: ``Task("email:welcome", {"user_id": "42"})``.

    The payload must be JSON-serialisable; anything else is refused with
    :class:`~poolsim.errors.PayloadError` when the task is made.
    """

    type: str
    payload: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.type, str) or not self.type:
            raise ConfigError("type", self.type, "a non-empty task type string")
        encode_payload(self.payload)

    def encoded(self) -> str:
        """The payload as stored: canonical JSON."""
        return encode_payload(self.payload)


def encode_payload(payload: Any) -> str:
    """Canonical JSON for a payload, or :class:`PayloadError` naming what cannot be stored."""
    try:
        return json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise PayloadError(f"the payload is not JSON-serialisable: {exc}", value=payload) from None


def decode_payload(text: str) -> Any:
    """A stored payload back as data, or :class:`PayloadError` if it is corrupt (not JSON,
    or nested too deeply for the decoder: ``RecursionError``)."""
    try:
        return json.loads(text)
    except (TypeError, ValueError, RecursionError) as exc:
        raise PayloadError(f"the stored payload is corrupt: {exc}", value=text) from None


@dataclasses.dataclass(frozen=True, kw_only=True)
class TaskInfo:
    """A stored task as a backend reports it; times are epoch seconds.

    ``retried`` counts failed attempts so far, so a handler's attempt is
    ``retried + 1``. ``payload`` is the stored JSON text (decode it with
    :meth:`data`; a corrupt one raises :class:`PayloadError`).
    """

    id: str
    type: str
    payload: str
    queue: str
    state: State
    max_retry: int
    retried: int = 0
    timeout: float | None = None
    deadline: float | None = None
    process_at: float = 0.0
    unique_key: str | None = None
    unique_until: float | None = None
    retention: float = 0.0
    created_at: float = 0.0
    last_error: str | None = None
    last_failed_at: float | None = None
    lease_until: float | None = None
    worker: str | None = None
    completed_at: float | None = None
    started_at: float | None = None  # when the current (or last) attempt was claimed
    lease: str | None = None  # the current claim's token: fresh per claim, None unless active

    @property
    def attempt(self) -> int:
        """Which attempt this is (1 for the first run)."""
        return self.retried + 1

    def data(self) -> Any:
        """The payload, decoded."""
        return decode_payload(self.payload)

    def task(self) -> Task:
        """The :class:`Task` this info stores (decodes the payload)."""
        return Task(self.type, self.data())
