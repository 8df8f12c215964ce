"""The jobs frame: one row per job, the data contract between every producer and consumer.

The real pool, the simulator and the durable queue all emit :class:`JobRecord`
rows; summaries, plots and reports read only the resulting DataFrame. Its
columns, in order, are the fields of :class:`JobRecord`:

=========  =======  ============================================================
column     dtype    meaning
=========  =======  ============================================================
job_id     int64    unique within one run
task_type  str      what kind of job (``submit(..., task_type=)``)
queue      str      the pool's or queue's name
arrival_s  float64  submitted, seconds since the pool started
start_s    float64  began running; NaN if it never started
end_s      float64  its outcome was decided (the future resolved); NaN if never
status     category one of :class:`Status`
worker     Int64    worker index; -1 when the caller ran it; <NA> if never run
attempt    int64    1 for a first try; the durable queue counts retries
=========  =======  ============================================================

For a ``timeout`` or ``cancelled`` job ``end_s`` is when the caller was told,
not when the function finally returned: a thread cannot be killed, so its
worker stays busy a little longer (see ``PoolStats.overdue``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from poolsim.errors import TraceError

__all__ = [
    "JOBS_COLUMNS",
    "STATUSES",
    "JobRecord",
    "Status",
    "Summary",
    "jobs_frame",
    "queue_depth",
    "summarize",
]


class Status(StrEnum):
    """The closed set of job outcomes shared by pool, queue, model and metrics."""

    COMPLETED = "completed"
    FAILED = "failed"
    TIMEOUT = "timeout"
    REJECTED = "rejected"
    DROPPED = "dropped"
    CANCELLED = "cancelled"
    RETURNED = "returned"
    RETRIED = "retried"


class JobRecord(NamedTuple):
    """One row of the jobs frame; field order is the column order."""

    job_id: int
    task_type: str
    queue: str
    arrival_s: float
    start_s: float
    end_s: float
    status: str
    worker: int | None
    attempt: int


JOBS_COLUMNS: tuple[str, ...] = JobRecord._fields
STATUSES: tuple[str, ...] = tuple(s.value for s in Status)  # plain str: fast dict keys
STATUS_DTYPE = pd.CategoricalDtype([s.value for s in Status])
_PERCENTILES = (50, 95, 99)


_DTYPES: dict[str, Any] = {
    "job_id": "int64",
    "task_type": "str",
    "queue": "str",
    "arrival_s": "float64",
    "start_s": "float64",
    "end_s": "float64",
    "status": STATUS_DTYPE,
    "worker": "Int64",
    "attempt": "int64",
}


def jobs_frame(records: Iterable[JobRecord | tuple[Any, ...]] | Mapping[str, Any]) -> pd.DataFrame:
    """Build the jobs frame, with its exact columns and dtypes, from record rows, or from
    a mapping of column name to values (much faster for a simulator's arrays)."""
    if isinstance(records, Mapping):
        missing = set(JOBS_COLUMNS) - set(records)
        if missing:
            raise ValueError(f"jobs_frame: missing columns {sorted(missing)}")
        frame = pd.DataFrame({column: records[column] for column in JOBS_COLUMNS})
    else:
        frame = pd.DataFrame.from_records(list(records), columns=list(JOBS_COLUMNS))
    return frame.astype(_DTYPES)


@dataclasses.dataclass(frozen=True, slots=True)
class Summary:
    """What happened to a run's jobs: counts, rates and wait/latency percentiles.

    ``wait`` is start - arrival over jobs that started; ``latency`` is
    end - arrival over completed jobs; times in seconds. ``throughput`` is
    completed jobs per second over the span from first arrival to last end.
    ``utilisation`` is worker busy time over ``workers x span``.
    """

    jobs: int
    counts: Mapping[str, int]
    span_s: float
    throughput: float
    rejection_rate: float
    drop_rate: float
    utilisation: float
    wait_mean: float
    wait_p50: float
    wait_p95: float
    wait_p99: float
    wait_max: float
    latency_mean: float
    latency_p50: float
    latency_p95: float
    latency_p99: float
    latency_max: float

    def as_dict(self) -> dict[str, float | int]:
        """Flat mapping (``counts`` become ``n_<status>`` keys), one row of a sweep table."""
        flat: dict[str, float | int] = {"jobs": self.jobs}
        flat.update({f"n_{status}": n for status, n in self.counts.items()})
        for field in dataclasses.fields(self)[2:]:
            flat[field.name] = getattr(self, field.name)
        return flat

    def __str__(self) -> str:
        lines = [f"{'jobs':<16}{self.jobs}"]
        lines += [f"  {status:<14}{n}" for status, n in self.counts.items() if n]
        for field in dataclasses.fields(self)[2:]:
            lines.append(f"{field.name:<16}{getattr(self, field.name):.4g}")
        return "\n".join(lines)


def _stats(values: np.ndarray, prefix: str) -> dict[str, float]:
    if values.size == 0:
        return {f"{prefix}_{name}": math.nan for name in ("mean", "p50", "p95", "p99", "max")}
    p50, p95, p99 = np.percentile(values, _PERCENTILES)
    return {
        f"{prefix}_mean": float(values.mean()),
        f"{prefix}_p50": float(p50),
        f"{prefix}_p95": float(p95),
        f"{prefix}_p99": float(p99),
        f"{prefix}_max": float(values.max()),
    }


def _status_codes(frame: pd.DataFrame) -> np.ndarray:
    """The status column as indices into STATUSES, cheaply when it is already categorical."""
    status = frame["status"]
    if isinstance(status.dtype, pd.CategoricalDtype) and tuple(status.cat.categories) == STATUSES:
        return status.cat.codes.to_numpy()
    codes = pd.Categorical(status.astype(str), categories=STATUSES).codes
    if (codes < 0).any():
        row = int(np.argmax(codes < 0))
        raise TraceError(f"status {status.iloc[row]!r} at row {row} is not one of "
                         + ", ".join(STATUSES), column="status", row=row,
                         value=status.iloc[row])
    return codes


def summarize(frame: pd.DataFrame, *, workers: int | None = None) -> Summary:
    """Summarise a jobs frame; reads only the frame.

    ``workers`` (for utilisation) defaults to the number of distinct worker
    indices seen in the frame.
    """
    status = _status_codes(frame)
    counts = {s: int(n) for s, n in zip(STATUSES, np.bincount(status, minlength=len(STATUSES)),
                                         strict=True)}
    arrival = frame["arrival_s"].to_numpy(dtype=float)
    start = frame["start_s"].to_numpy(dtype=float)
    end = frame["end_s"].to_numpy(dtype=float)
    n = len(frame)
    span = float(np.nanmax(end) - arrival.min()) if n and not np.isnan(end).all() else 0.0

    started = ~np.isnan(start)
    completed = status == STATUSES.index(Status.COMPLETED.value)
    worker = frame["worker"].to_numpy(dtype=float, na_value=np.nan)
    on_worker = started & (worker >= 0)
    if workers is None:
        workers = len(np.unique(worker[on_worker]))
    busy = float(np.nansum(end[on_worker] - start[on_worker]))
    return Summary(
        jobs=n,
        counts=counts,
        span_s=span,
        throughput=counts["completed"] / span if span > 0 else math.nan,
        rejection_rate=counts["rejected"] / n if n else math.nan,
        drop_rate=counts["dropped"] / n if n else math.nan,
        utilisation=busy / (workers * span) if workers and span > 0 else math.nan,
        **_stats(start[started] - arrival[started], "wait"),
        **_stats(end[completed] - arrival[completed], "latency"),
    )


def queue_depth(frame: pd.DataFrame) -> pd.Series:
    """Step series of how many jobs wait for a worker, indexed by time in seconds.

    A job waits from its arrival until it starts or, if it never starts
    (dropped, returned, cancelled while queued), until its end — in the
    queue, or under ``block`` in ``submit`` for a place, so under ``block``
    the depth can exceed ``queue_size``. Rejected jobs and jobs the caller
    ran itself never wait.
    """
    status = _status_codes(frame)
    worker = frame["worker"].to_numpy(dtype=float, na_value=np.nan)
    queued = (status != STATUSES.index(Status.REJECTED.value)) & (worker != -1)
    arrive = frame["arrival_s"].to_numpy(dtype=float)[queued]
    start = frame["start_s"].to_numpy(dtype=float)[queued]
    leave = np.where(np.isnan(start), frame["end_s"].to_numpy(dtype=float)[queued], start)
    leave = leave[~np.isnan(leave)]
    times = np.concatenate([arrive, leave])
    steps = np.concatenate([np.ones(arrive.size, dtype=np.int64), -np.ones(leave.size, np.int64)])
    depth = pd.Series(steps, index=times).groupby(level=0).sum().cumsum()
    depth.index.name = "time_s"
    return depth.rename("queue_depth")
