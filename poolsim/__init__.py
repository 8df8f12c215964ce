"""poolsim: size, run and simulate bounded worker pools and durable job queues.

The public API is what this module exports; see ``docs/reference/``.
"""

from poolsim.aio import AsyncWorkerPool
from poolsim.calibrate import ServiceFit, fit
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
from poolsim.generate import ServiceTime, bursty, diurnal, from_counts, poisson
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
from poolsim.replay import ReplayResult, compare, replay
from poolsim.reshape import compress, from_timestamps, scale_load, window
from poolsim.shutdown import ReturnedJob, ShutdownReport, SignalShutdown, install_signal_handlers
from poolsim.sim import Recommendation, SimResult, SimShutdown, recommend, simulate, sweep
from poolsim.traces import TRACE_COLUMNS, LinearService, list_traces, load_trace

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
    "LinearService",
    "PoolClosed",
    "PoolConfig",
    "PoolObserver",
    "PoolStats",
    "PoolsimError",
    "QueueFull",
    "Recommendation",
    "ReplayResult",
    "ReturnedJob",
    "ServiceFit",
    "ServiceTime",
    "ShutdownPolicy",
    "ShutdownReport",
    "SignalShutdown",
    "SimResult",
    "SimShutdown",
    "Status",
    "Summary",
    "TRACE_COLUMNS",
    "TraceError",
    "WorkerPool",
    "bursty",
    "compare",
    "compress",
    "current_job",
    "diurnal",
    "fit",
    "from_counts",
    "from_timestamps",
    "install_signal_handlers",
    "jobs_frame",
    "list_traces",
    "load_trace",
    "plot",
    "poisson",
    "queue_depth",
    "recommend",
    "replay",
    "scale_load",
    "simulate",
    "summarize",
    "sweep",
    "window",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """``poolsim.plot`` on first use: it imports matplotlib, which most users of a pool
    (and every queue worker process) never need."""
    if name == "plot":
        import importlib

        return importlib.import_module("poolsim.plot")
    raise AttributeError(f"module 'poolsim' has no attribute {name!r}")
