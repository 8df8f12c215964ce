"""One exception tree for all of poolsim.

Every error inherits :class:`PoolsimError` and, where one fits, the builtin
whose meaning matches, so callers may catch either::

    PoolsimError
    ├── ConfigError(ValueError)          an invalid configuration value
    ├── TraceError(ValueError)           a malformed load trace
    ├── QueueFull                        back-pressure: no room (HTTP 503)
    ├── PoolClosed(RuntimeError)         submit after shutdown started
    ├── QueueError                       the durable queue (poolsim.queue)
    │   ├── TaskAlreadyExists            a unique task is already queued
    │   ├── TaskNotFound(KeyError)       no task with that id
    │   ├── PayloadError(ValueError)     a payload that is not (or no longer) JSON
    │   └── BackendUnavailable(ConnectionError)  the store cannot be reached
    └── JobError                         a job's outcome other than success
        ├── JobTimeout(TimeoutError)     the job outlived ``job_timeout``
        ├── JobDropped                   evicted from the queue by ``drop_oldest``
        ├── JobReturned                  handed back unstarted at shutdown
        └── JobCancelled(CancelledError) cancelled by an ``immediate`` shutdown

Errors carry the facts as attributes (``field``, ``value``, ``capacity``,
``job_id``...), not only in their message.
"""

from __future__ import annotations

from concurrent.futures import CancelledError
from typing import Any

__all__ = [
    "BackendUnavailable",
    "ConfigError",
    "JobCancelled",
    "JobDropped",
    "JobError",
    "JobReturned",
    "JobTimeout",
    "PayloadError",
    "PoolClosed",
    "PoolsimError",
    "QueueError",
    "QueueFull",
    "TaskAlreadyExists",
    "TaskNotFound",
    "TraceError",
]


class PoolsimError(Exception):
    """Base class of every error poolsim raises."""


class ConfigError(PoolsimError, ValueError):
    """A configuration value is invalid; names the field, the value and what is allowed."""

    def __init__(self, field: str, value: Any, allowed: str) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"{field}={value!r} is invalid: {allowed}")


class TraceError(PoolsimError, ValueError):
    """A load trace is malformed; names the column, the first bad row and its value."""

    def __init__(
        self, message: str, *, column: str | None = None, row: int | None = None, value: Any = None
    ) -> None:
        self.column = column
        self.row = row
        self.value = value
        super().__init__(message)


class QueueFull(PoolsimError):
    """The pool has no room for another job: the caller should shed load (HTTP 503)."""

    def __init__(self, queue: str, capacity: int | None, policy: str) -> None:
        self.queue = queue
        self.capacity = capacity
        self.policy = policy
        super().__init__(f"pool {queue!r} is full ({capacity} jobs in system, policy {policy})")


class PoolClosed(PoolsimError, RuntimeError):
    """The pool is shutting down or shut down and accepts no more jobs."""

    def __init__(self, queue: str) -> None:
        self.queue = queue
        super().__init__(f"pool {queue!r} is closed: shutdown has started")


class QueueError(PoolsimError):
    """Something about the durable queue (``poolsim.queue``)."""


class TaskAlreadyExists(QueueError):
    """A task with the same unique key (or id) is already in the queue."""

    def __init__(self, key: str, queue: str) -> None:
        self.key = key
        self.queue = queue
        super().__init__(f"a task with unique key {key!r} is already in queue {queue!r}")


class TaskNotFound(QueueError, KeyError):
    """No task has this id."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        super().__init__(f"no task with id {task_id!r}")

    def __str__(self) -> str:
        return str(self.args[0])


class PayloadError(QueueError, ValueError):
    """A payload that is not JSON-serialisable, or a stored one that no longer decodes."""

    def __init__(self, message: str, *, value: object = None) -> None:
        self.value = value
        super().__init__(message)


class BackendUnavailable(QueueError, ConnectionError):
    """The task store cannot be reached (or stays locked) within the timeout."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"task store {url!r} is unavailable: {reason}")


class JobError(PoolsimError):
    """A job ended without running to completion; carries its ``job_id``."""

    def __init__(self, job_id: int, message: str) -> None:
        self.job_id = job_id
        super().__init__(f"job {job_id}: {message}")


class JobTimeout(JobError, TimeoutError):
    """The job ran longer than ``job_timeout``; it was asked to stop (cooperatively)."""

    def __init__(self, job_id: int, timeout: float) -> None:
        self.timeout = timeout
        super().__init__(job_id, f"timed out after {timeout:g} s")


class JobDropped(JobError):
    """The job was evicted from a full queue by the ``drop_oldest`` policy."""

    def __init__(self, job_id: int) -> None:
        super().__init__(job_id, "dropped from a full queue (drop_oldest)")


class JobReturned(JobError):
    """The job was handed back unstarted by a shutdown; it is in the ShutdownReport."""

    def __init__(self, job_id: int) -> None:
        super().__init__(job_id, "returned unstarted at shutdown")


class JobCancelled(JobError, CancelledError):
    """The job was cancelled by an ``immediate`` shutdown."""

    def __init__(self, job_id: int) -> None:
        super().__init__(job_id, "cancelled by shutdown")
