"""The durable job queue: tasks stored in SQLite (embedded) or Redis, run on the pool.

The public API is what this module exports; see ``docs/reference/queue.md``.
"""

from poolsim.errors import BackendUnavailable, PayloadError, TaskAlreadyExists, TaskNotFound
from poolsim.queue.backends.base import Backend, HistoryRow, Outcome, QueueStats, open_backend
from poolsim.queue.client import Client
from poolsim.queue.inspector import Inspector
from poolsim.queue.scheduler import Scheduler
from poolsim.queue.server import Server
from poolsim.queue.task import Retry, SkipRetry, State, Task, TaskInfo

__all__ = [
    "Backend",
    "BackendUnavailable",
    "Client",
    "HistoryRow",
    "Inspector",
    "Outcome",
    "PayloadError",
    "QueueStats",
    "Retry",
    "Scheduler",
    "Server",
    "SkipRetry",
    "State",
    "Task",
    "TaskAlreadyExists",
    "TaskInfo",
    "TaskNotFound",
    "open_backend",
]
