"""poolsim: size, run and simulate bounded worker pools and durable job queues.

The public API is what this module exports; see ``docs/reference/``.
"""

from poolsim.aio import AsyncWorkerPool
from poolsim.config import Backpressure, PoolConfig, ShutdownPolicy
from poolsim.errors import (
    ConfigError,
    JobCancelled,
    JobDropped,
    JobError,
    JobReturned,
    JobTimeout,
    PoolClosed,
    PoolsimError,
    QueueFull,
    TraceError,
)
from poolsim.jobs import CancelEvent, JobContext, current_job
from poolsim.ledger import PoolObserver, PoolStats
from poolsim.pool import WorkerPool
from poolsim.records import (
    JOBS_COLUMNS,
    JobRecord,
    Status,
    Summary,
    jobs_frame,
    queue_depth,
    summarize,
)
from poolsim.shutdown import ReturnedJob, ShutdownReport, SignalShutdown, install_signal_handlers

__all__ = [
    "AsyncWorkerPool",
    "Backpressure",
    "CancelEvent",
    "ConfigError",
    "JOBS_COLUMNS",
    "JobCancelled",
    "JobContext",
    "JobDropped",
    "JobError",
    "JobRecord",
    "JobReturned",
    "JobTimeout",
    "PoolClosed",
    "PoolConfig",
    "PoolObserver",
    "PoolStats",
    "PoolsimError",
    "QueueFull",
    "ReturnedJob",
    "ShutdownPolicy",
    "ShutdownReport",
    "SignalShutdown",
    "Status",
    "Summary",
    "TraceError",
    "WorkerPool",
    "current_job",
    "install_signal_handlers",
    "jobs_frame",
    "queue_depth",
    "summarize",
]

__version__ = "0.1.0"
