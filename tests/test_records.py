"""The jobs frame: schema, summarize() and queue_depth() on frames whose answers are known."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from hypothesis import given

from poolsim import JOBS_COLUMNS, JobRecord, Status, Summary, jobs_frame, queue_depth, summarize
from tests import strategies as s

NAN = math.nan


def row(job_id: int, arrival: float, start: float, end: float, status: str,
        worker: int | None, task_type: str = "default") -> JobRecord:
    return JobRecord(job_id, task_type, "q", arrival, start, end, status, worker, 1)


def mixed_frame() -> pd.DataFrame:
    """Nine jobs on workers 0 and 1 (and one run by its caller), worked out by hand below."""
    return jobs_frame([
        row(0, 0.0, 0.0, 2.0, "completed", 0),  # wait 0, latency 2, busy 2
        row(1, 0.0, 0.0, 1.0, "completed", 1),  # wait 0, latency 1, busy 1
        row(2, 1.0, 1.0, 4.0, "failed", 1),  # wait 0, busy 3
        row(3, 1.0, 2.0, 3.0, "completed", 0),  # wait 1, latency 2, busy 1
        row(4, 1.5, NAN, 1.5, "rejected", None),
        row(5, 2.0, NAN, 3.0, "dropped", None),  # queued 2 -> 3, never ran
        row(6, 2.5, 2.5, 3.5, "completed", -1),  # caller ran it: wait 0, latency 1, not busy
        row(7, 3.0, 4.0, 5.0, "timeout", 1),  # wait 1, busy 1
        row(8, 3.0, NAN, 5.0, "returned", None),  # queued 3 -> 5, handed back
    ])


# -- jobs_frame -------------------------------------------------------------------------


@pytest.mark.parametrize("records", [[], "mixed"])
def test_jobs_frame_columns_and_dtypes(records: object) -> None:
    frame = mixed_frame() if records == "mixed" else jobs_frame([])
    assert tuple(frame.columns) == JOBS_COLUMNS
    assert JOBS_COLUMNS == ("job_id", "task_type", "queue", "arrival_s", "start_s", "end_s",
                            "status", "worker", "attempt")
    dtypes = frame.dtypes
    assert dtypes["job_id"] == "int64"
    assert dtypes["attempt"] == "int64"
    for column in ("arrival_s", "start_s", "end_s"):
        assert dtypes[column] == "float64"
    for column in ("task_type", "queue"):
        assert pd.api.types.is_string_dtype(dtypes[column])
    assert isinstance(dtypes["status"], pd.CategoricalDtype)
    assert list(dtypes["status"].categories) == [s.value for s in Status]
    assert dtypes["worker"] == pd.Int64Dtype()


def test_jobs_frame_values() -> None:
    frame = mixed_frame()
    assert list(frame["job_id"]) == list(range(9))
    assert frame["worker"].isna().tolist() == [False] * 4 + [True, True, False, False, True]
    assert frame["worker"].iloc[6] == -1
    assert frame["status"].iloc[4] == "rejected"
    assert math.isnan(frame["start_s"].iloc[5])
    assert set(frame["queue"]) == {"q"}


def test_jobs_frame_accepts_plain_tuples_and_status_enums() -> None:
    frame = jobs_frame([(0, "a", "q", 0.0, 0.5, 1.0, Status.COMPLETED, 2, 1)])
    assert frame["status"].iloc[0] == "completed"
    assert frame["worker"].iloc[0] == 2
    assert isinstance(frame["status"].dtype, pd.CategoricalDtype)


def test_status_is_the_closed_set_of_the_design() -> None:
    assert [s.value for s in Status] == ["completed", "failed", "timeout", "rejected",
                                         "dropped", "cancelled", "returned", "retried"]


# -- summarize ---------------------------------------------------------------------------


def test_summarize_counts_rates_and_utilisation() -> None:
    summary = summarize(mixed_frame())
    assert summary.jobs == 9
    assert dict(summary.counts) == {"completed": 4, "failed": 1, "timeout": 1, "rejected": 1,
                                    "dropped": 1, "cancelled": 0, "returned": 1, "retried": 0}
    assert summary.span_s == 5.0  # first arrival 0 to last end 5
    assert summary.throughput == pytest.approx(4 / 5)
    assert summary.rejection_rate == pytest.approx(1 / 9)
    assert summary.drop_rate == pytest.approx(1 / 9)
    # busy 2 + 1 + 3 + 1 + 1 = 8 on 2 distinct workers over 5 s; the caller's job is not a worker's
    assert summary.utilisation == pytest.approx(8 / (2 * 5))


def test_summarize_utilisation_with_workers_given() -> None:
    assert summarize(mixed_frame(), workers=4).utilisation == pytest.approx(8 / (4 * 5))
    assert summarize(mixed_frame(), workers=1).utilisation == pytest.approx(8 / 5)


def test_summarize_wait_and_latency_of_mixed_frame() -> None:
    summary = summarize(mixed_frame())
    # waits over started jobs 0,1,2,3,6,7: [0, 0, 0, 1, 0, 1]
    assert summary.wait_mean == pytest.approx(2 / 6)
    assert summary.wait_max == 1.0
    assert summary.wait_p50 == 0.0
    # latencies over completed jobs 0,1,3,6: [2, 1, 2, 1]
    assert summary.latency_mean == pytest.approx(1.5)
    assert summary.latency_max == 2.0
    assert summary.latency_p50 == pytest.approx(1.5)


def test_summarize_percentiles_interpolate_linearly() -> None:
    # five completed jobs arriving at 0..4 with waits 0, .5, 1, 1.5, 2 and latencies 1..5;
    # numpy's default (linear) percentile: p95 of 1..5 is 4 + 0.8 * (5 - 4) = 4.8
    waits = [0.0, 0.5, 1.0, 1.5, 2.0]
    latencies = [1.0, 2.0, 3.0, 4.0, 5.0]
    frame = jobs_frame(
        row(i, float(i), i + w, i + lat, "completed", i % 2)
        for i, (w, lat) in enumerate(zip(waits, latencies, strict=True)))
    summary = summarize(frame)
    assert (summary.wait_mean, summary.wait_p50, summary.wait_max) == (1.0, 1.0, 2.0)
    assert summary.wait_p95 == pytest.approx(1.9)
    assert summary.wait_p99 == pytest.approx(1.98)
    assert (summary.latency_mean, summary.latency_p50, summary.latency_max) == (3.0, 3.0, 5.0)
    assert summary.latency_p95 == pytest.approx(4.8)
    assert summary.latency_p99 == pytest.approx(4.96)
    assert summary.span_s == 9.0  # arrival 0 to the last end, 4 + 5
    assert summary.throughput == pytest.approx(5 / 9)


def test_summarize_latency_counts_completed_jobs_only() -> None:
    frame = jobs_frame([
        row(0, 0.0, 0.0, 1.0, "completed", 0),
        row(1, 0.0, 0.0, 100.0, "failed", 0),
        row(2, 0.0, 0.0, 50.0, "timeout", 1),
    ])
    summary = summarize(frame)
    assert summary.latency_max == 1.0
    assert summary.latency_mean == 1.0


def test_summarize_empty_frame_is_nans_not_a_crash() -> None:
    summary = summarize(jobs_frame([]))
    assert summary.jobs == 0
    assert set(summary.counts.values()) == {0}
    assert set(summary.counts) == {s.value for s in Status}
    for name in ("throughput", "rejection_rate", "drop_rate", "utilisation", "wait_mean",
                 "wait_p50", "wait_p95", "wait_p99", "wait_max", "latency_mean", "latency_p50",
                 "latency_p95", "latency_p99", "latency_max"):
        assert math.isnan(getattr(summary, name)), name
    str(summary)  # printable


def test_summarize_all_rejected_has_no_waits_or_latency() -> None:
    frame = jobs_frame([row(i, float(i), NAN, float(i), "rejected", None) for i in range(4)])
    summary = summarize(frame)
    assert summary.counts["rejected"] == 4
    assert summary.rejection_rate == 1.0
    assert summary.drop_rate == 0.0
    assert math.isnan(summary.wait_mean)
    assert math.isnan(summary.latency_p99)
    assert math.isnan(summary.utilisation)  # no worker ever ran anything


def test_summary_as_dict_is_flat() -> None:
    summary = summarize(mixed_frame(), workers=2)
    flat = summary.as_dict()
    assert flat["jobs"] == 9
    assert flat["n_completed"] == 4
    assert flat["n_rejected"] == 1
    assert flat["n_cancelled"] == 0
    assert "counts" not in flat
    status_keys = [f"n_{s.value}" for s in Status]
    other = ["span_s", "throughput", "rejection_rate", "drop_rate", "utilisation",
             "wait_mean", "wait_p50", "wait_p95", "wait_p99", "wait_max",
             "latency_mean", "latency_p50", "latency_p95", "latency_p99", "latency_max"]
    assert list(flat) == ["jobs", *status_keys, *other]
    for name in other:
        assert flat[name] == getattr(summary, name)
    assert all(isinstance(v, int | float) for v in flat.values())
    pd.DataFrame([flat])  # one row of a sweep table


def test_summary_is_frozen() -> None:
    summary = summarize(mixed_frame())
    with pytest.raises(AttributeError):
        summary.jobs = 3  # type: ignore[misc]
    assert isinstance(summary, Summary)


# -- queue_depth --------------------------------------------------------------------------


def test_queue_depth_of_mixed_frame() -> None:
    depth = queue_depth(mixed_frame())
    # queued: 0,1 at 0 (start 0); 2 at 1 (start 1); 3 at 1 (start 2); 5 at 2 (dropped, leaves 3);
    # 7 at 3 (starts 4); 8 at 3 (returned, leaves 5). Rejected 4 and caller-run 6 never queue.
    assert depth.to_dict() == {0.0: 0, 1.0: 1, 2.0: 1, 3.0: 2, 4.0: 1, 5.0: 0}
    assert depth.name == "queue_depth"
    assert depth.index.name == "time_s"


def test_queue_depth_ignores_rejected_and_caller_run_jobs() -> None:
    frame = jobs_frame([
        row(0, 1.0, NAN, 1.0, "rejected", None),
        row(1, 2.0, 2.0, 3.0, "completed", -1),
        row(2, 2.5, 2.5, 4.0, "failed", -1),
    ])
    assert queue_depth(frame).empty


def test_queue_depth_dropped_and_returned_leave_at_end() -> None:
    frame = jobs_frame([
        row(0, 0.0, 0.0, 10.0, "completed", 0),  # holds the only worker
        row(1, 1.0, NAN, 4.0, "dropped", None),
        row(2, 2.0, NAN, 6.0, "returned", None),
        row(3, 3.0, NAN, 8.0, "cancelled", None),
    ])
    assert queue_depth(frame).to_dict() == {0.0: 0, 1.0: 1, 2.0: 2, 3.0: 3, 4.0: 2, 6.0: 1,
                                             8.0: 0}


def test_queue_depth_empty_frame() -> None:
    depth = queue_depth(jobs_frame([]))
    assert depth.empty


@given(s.jobs_record_lists())
def test_random_frames_depth_never_negative_and_ends_at_zero(records: list[JobRecord]) -> None:
    frame = jobs_frame(records)
    depth = queue_depth(frame)
    assert depth.index.is_monotonic_increasing
    assert depth.index.is_unique
    if not depth.empty:
        assert (depth >= 0).all()
        assert depth.iloc[-1] == 0
    queued = [r for r in records if r.status != "rejected" and r.worker != -1]
    if queued:  # the deepest the queue got is at most the jobs that queued
        assert depth.max() <= len(queued)
    else:
        assert depth.empty


@given(s.jobs_record_lists())
def test_random_frames_summary_counts_sum_to_jobs(records: list[JobRecord]) -> None:
    frame = jobs_frame(records)
    summary = summarize(frame)
    assert summary.jobs == len(frame)
    assert sum(summary.counts.values()) == len(frame)
    for status in Status:
        assert summary.counts[status.value] == sum(r.status == status for r in records)
    if len(frame):
        assert summary.rejection_rate == summary.counts["rejected"] / len(frame)
        if not math.isnan(summary.utilisation):
            assert summary.utilisation >= 0.0
