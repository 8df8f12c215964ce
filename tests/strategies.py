"""Hypothesis strategies shared by the test suite: config values, jobs frames, load traces."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from hypothesis import strategies as st

from poolsim import Backpressure, JobRecord, ShutdownPolicy, Status

NUMPY_INT_TYPES = (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
                   np.uint64)

# -- PoolConfig values ----------------------------------------------------------------


def numpy_ints(min_value: int, max_value: int = 100) -> st.SearchStrategy[np.integer]:
    """Numpy integers of every width holding a value in ``[min_value, max_value]``."""
    return st.tuples(st.sampled_from(NUMPY_INT_TYPES), st.integers(min_value, max_value)).map(
        lambda tv: tv[0](tv[1]))


NOT_NUMBERS = st.one_of(
    st.text(max_size=5),
    st.none(),
    st.lists(st.integers(), max_size=2),
    st.just(b"4"),
)
BOOLS = st.sampled_from([True, False, np.True_, np.False_])
NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf, np.float64("nan"), np.inf])

valid_workers = st.integers(min_value=1, max_value=10**9) | numpy_ints(1)
invalid_workers = st.one_of(
    st.integers(max_value=0),
    st.floats(allow_nan=True, allow_infinity=True),  # floats, even whole ones, are not counts
    BOOLS,
    NON_FINITE,
    st.text(max_size=3),
    st.lists(st.integers(), max_size=2),
    numpy_ints(0, 0),
)

valid_queue_sizes = st.none() | st.integers(min_value=0, max_value=10**9) | numpy_ints(0)
invalid_queue_sizes = st.one_of(
    st.integers(max_value=-1),
    st.floats(allow_nan=True, allow_infinity=True),
    BOOLS,
    st.text(max_size=3),
)

valid_timeouts = st.one_of(
    st.none(),
    st.floats(min_value=0.0, exclude_min=True, allow_nan=False, allow_infinity=False),
    st.integers(min_value=1, max_value=10**12),
    st.floats(min_value=1e-6, max_value=1e6).map(np.float64),
    numpy_ints(1),
)
invalid_timeouts = st.one_of(
    st.floats(max_value=0.0),  # zero, negatives, -inf
    st.integers(max_value=0),
    NON_FINITE,
    BOOLS,
    st.text(max_size=3),
    st.lists(st.floats(), max_size=1),
)

backpressures = st.sampled_from(list(Backpressure)) | st.sampled_from(
    [b.value for b in Backpressure])
shutdown_policies = st.sampled_from(list(ShutdownPolicy)) | st.sampled_from(
    [s.value for s in ShutdownPolicy])
bad_policy_names = st.text(max_size=12).filter(
    lambda s: s not in {b.value for b in Backpressure} | {p.value for p in ShutdownPolicy})

# -- jobs frames ----------------------------------------------------------------------

_times = st.floats(min_value=0.0, max_value=100.0, allow_nan=False)
_durations = st.floats(min_value=0.0, max_value=10.0, allow_nan=False)

RAN = (Status.COMPLETED, Status.FAILED, Status.TIMEOUT, Status.CANCELLED, Status.RETRIED)
NEVER_RAN = (Status.DROPPED, Status.RETURNED, Status.CANCELLED)


@st.composite
def job_records(draw: st.DrawFn, job_id: int, workers: int = 4) -> JobRecord:
    """One consistent row: ``arrival <= start <= end``, a worker iff the job ran."""
    arrival = draw(_times)
    kind = draw(st.sampled_from(["ran", "caller", "rejected", "never_ran"]))
    task_type = draw(st.sampled_from(["email", "report", "default"]))
    nan = math.nan
    if kind == "ran":
        start = arrival + draw(_durations)
        end = start + draw(_durations)
        status = draw(st.sampled_from(RAN))
        worker: int | None = draw(st.integers(0, workers - 1))
    elif kind == "caller":  # caller_runs: starts at once in the submitting thread
        start = arrival
        end = start + draw(_durations)
        status = draw(st.sampled_from(RAN))
        worker = -1
    elif kind == "rejected":
        start, end, status, worker = nan, arrival, Status.REJECTED, None
    else:  # left the queue without running
        start, end = nan, arrival + draw(_durations)
        status, worker = draw(st.sampled_from(NEVER_RAN)), None
    return JobRecord(job_id, task_type, "q", arrival, start, end, status.value, worker, 1)


@st.composite
def jobs_record_lists(draw: st.DrawFn, max_jobs: int = 30) -> list[JobRecord]:
    """A list of consistent job rows with unique ids, as a pool or simulator emits."""
    n = draw(st.integers(0, max_jobs))
    return [draw(job_records(job_id)) for job_id in range(n)]

# -- load traces ----------------------------------------------------------------------

# labels that pandas' CSV reader would not take for missing values ("NA", "null", ...)
trace_labels = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_-",
                       min_size=1, max_size=8).filter(
    lambda s: s.lower() not in {"na", "nan", "null", "none", "n-a", "-nan", "-na"})
_gaps = st.floats(min_value=0.0, max_value=1e4, allow_nan=False, allow_infinity=False)
_services = st.floats(min_value=0.0, max_value=1e5, allow_nan=False, allow_infinity=False)


@st.composite
def trace_frames(draw: st.DrawFn, min_rows: int = 1, max_rows: int = 40,
                 extras: bool = True) -> pd.DataFrame:
    """A valid, normalised trace: the four trace columns with their dtypes, and maybe
    an integer ``tokens`` column after them."""
    n = draw(st.integers(min_rows, max_rows))
    gaps = draw(st.lists(_gaps, min_size=n, max_size=n))
    frame = pd.DataFrame({
        "arrival_s": np.cumsum(np.asarray(gaps, dtype=np.float64)),
        "service_s": np.asarray(draw(st.lists(_services, min_size=n, max_size=n)), np.float64),
        "task_type": pd.Series(draw(st.lists(trace_labels, min_size=n, max_size=n)), dtype="str"),
        "queue": pd.Series(draw(st.lists(trace_labels, min_size=n, max_size=n)), dtype="str"),
    })
    if extras and draw(st.booleans()):
        frame["tokens"] = np.asarray(
            draw(st.lists(st.integers(0, 10**6), min_size=n, max_size=n)), dtype=np.int64)
    return frame


@st.composite
def raw_trace_frames(draw: st.DrawFn, max_rows: int = 40) -> pd.DataFrame:
    """A valid trace as users write it: integer or float times, optional ``task_type`` and
    ``queue``, extra columns anywhere, and any index."""
    trace = draw(trace_frames(max_rows=max_rows))
    raw = trace.copy()
    if draw(st.booleans()):
        raw["arrival_s"] = np.floor(raw["arrival_s"]).astype(np.int64)
        raw["service_s"] = np.floor(raw["service_s"]).astype(np.int64)
    for column in ("task_type", "queue"):
        if draw(st.booleans()):
            raw = raw.drop(columns=column)
    if draw(st.booleans()):
        raw.insert(0, "note", "x")
    columns = list(raw.columns)
    order = draw(st.permutations(columns))
    raw = raw[list(order)]
    if draw(st.booleans()):
        raw.index = pd.Index(np.arange(len(raw)) * 3 + 7)
    return raw

# -- sweep tables ---------------------------------------------------------------------

SWEEP_JOBS = 20
sweep_queue_sizes = st.sampled_from([0, 1, 10, None])
_sweep_latencies = st.sampled_from([0.5, 1.0, 2.0, 5.0, 30.0, math.nan])


@st.composite
def sweep_tables(draw: st.DrawFn, max_rows: int = 16) -> pd.DataFrame:
    """A sweep result as :func:`poolsim.sweep` shapes it (the PoolConfig columns, ``jobs``,
    ``n_rejected``, ``n_dropped``, ``n_timeout``, ``latency_p99``), with made-up outcomes:
    repeated and shuffled configurations, unbounded queues as NaN, NaN latencies."""
    rows = []
    for _ in range(draw(st.integers(1, max_rows))):
        rejected = draw(st.integers(0, SWEEP_JOBS))
        dropped = draw(st.integers(0, SWEEP_JOBS - rejected))
        queue = draw(sweep_queue_sizes)
        rows.append({"workers": draw(st.integers(1, 6)),
                     "queue_size": math.nan if queue is None else queue,
                     "backpressure": draw(st.sampled_from(["reject", "drop_oldest"])),
                     "block_timeout": 1.0, "job_timeout": math.nan, "shutdown": "drain",
                     "shutdown_timeout": math.nan, "jobs": SWEEP_JOBS,
                     "n_rejected": rejected,
                     "n_dropped": dropped,
                     "n_timeout": draw(st.integers(0, SWEEP_JOBS - rejected - dropped)),
                     "latency_p99": draw(_sweep_latencies)})
    return pd.DataFrame(rows)
