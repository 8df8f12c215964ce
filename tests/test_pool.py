"""WorkerPool: submission, every back-pressure policy, timeouts, job context, stats, records."""

from __future__ import annotations

import math
import threading
from concurrent.futures import CancelledError, Future

import pandas as pd
import pytest

from poolsim import (
    JOBS_COLUMNS,
    ConfigError,
    JobDropped,
    JobTimeout,
    PoolClosed,
    PoolConfig,
    QueueFull,
    WorkerPool,
    current_job,
)

from .conftest import Gate


def full_pool(gate: Gate, **options: object) -> tuple[WorkerPool, list[Future[object]]]:
    """A pool of one busy worker and a queue of one waiting job: full."""
    pool = WorkerPool(workers=1, queue_size=1, record=True, **options)  # type: ignore[arg-type]
    running = pool.submit(gate.job, "running")
    gate.wait_entered()
    queued = pool.submit(gate.job, "queued")
    return pool, [running, queued]


def test_submit_runs_the_function_with_its_arguments() -> None:
    with WorkerPool(workers=2) as pool:
        future = pool.submit(lambda a, b=0: a + b, 2, b=3)
        assert future.result(timeout=5) == 5


def test_task_type_is_not_passed_to_the_function() -> None:
    with WorkerPool(workers=1) as pool:
        future = pool.submit(lambda **kw: kw, task_type="email", user="42")
        assert future.result(timeout=5) == {"user": "42"}


def test_config_object_or_keywords_or_both() -> None:
    config = PoolConfig(workers=3, queue_size=7)
    for pool in (WorkerPool(config), WorkerPool(workers=3, queue_size=7)):
        assert pool.config == config
        pool.shutdown()
    overridden = WorkerPool(config, queue_size=0)
    assert overridden.config.queue_size == 0 and overridden.config.workers == 3
    overridden.shutdown()


def test_invalid_options_raise_config_error_naming_the_field() -> None:
    with pytest.raises(ConfigError) as info:
        WorkerPool(workers=0)
    assert info.value.field == "workers"


def test_a_failing_job_fails_its_future_and_counts_as_failed() -> None:
    def boom() -> None:
        raise KeyError("boom")

    with WorkerPool(workers=1, record=True) as pool, pytest.raises(KeyError):
        pool.submit(boom).result(timeout=5)
    assert pool.stats().counts["failed"] == 1
    assert list(pool.records()["status"]) == ["failed"]


def test_reject_raises_queue_full_at_once(gate: Gate) -> None:
    pool, accepted = full_pool(gate, backpressure="reject")
    with pytest.raises(QueueFull) as info:
        pool.submit(gate.job)
    assert (info.value.queue, info.value.capacity, info.value.policy) == ("default", 2, "reject")
    gate.opened.set()
    assert [f.result(timeout=5) for f in accepted] == ["running", "queued"]
    pool.shutdown()
    frame = pool.records()
    assert list(frame["status"]) == ["completed", "completed", "rejected"]
    rejected = frame.iloc[2]
    assert math.isnan(rejected["start_s"]) and rejected["worker"] is pd.NA


def test_queue_size_zero_is_hand_off_only(gate: Gate) -> None:
    pool = WorkerPool(workers=2, queue_size=0)
    pool.submit(gate.job)
    pool.submit(gate.job)  # both find a free worker
    with pytest.raises(QueueFull):
        pool.submit(gate.job)
    gate.opened.set()
    pool.shutdown()
    assert pool.stats().counts["completed"] == 2


def test_unbounded_queue_never_rejects(gate: Gate) -> None:
    pool = WorkerPool(workers=1, queue_size=None)
    futures = [pool.submit(gate.job, i) for i in range(500)]
    assert pool.stats().queued >= 499
    gate.opened.set()
    assert [f.result(timeout=10) for f in futures] == list(range(500))
    pool.shutdown()


def test_block_admits_when_a_place_frees(gate: Gate) -> None:
    pool, _accepted = full_pool(gate, backpressure="block", block_timeout=10.0)
    result: list[Future[object]] = []
    submitter = threading.Thread(target=lambda: result.append(pool.submit(lambda: "late")))
    submitter.start()
    submitter.join(0.05)
    assert submitter.is_alive(), "block must wait while the pool is full"
    gate.opened.set()
    submitter.join(10)
    assert result[0].result(timeout=5) == "late"
    pool.shutdown()
    assert pool.stats().counts["completed"] == 3


def test_block_gives_up_after_block_timeout(gate: Gate) -> None:
    pool, _ = full_pool(gate, backpressure="block", block_timeout=0.05)
    with pytest.raises(QueueFull) as info:
        pool.submit(gate.job)
    assert info.value.policy == "block"
    assert pool.stats().counts["rejected"] == 1
    gate.opened.set()
    pool.shutdown()


def test_blocked_submitters_get_pool_closed_at_shutdown(gate: Gate) -> None:
    pool, _ = full_pool(gate, backpressure="block", block_timeout=None)
    errors: list[BaseException] = []

    def submit() -> None:
        try:
            pool.submit(gate.job)
        except BaseException as exc:
            errors.append(exc)

    submitters = [threading.Thread(target=submit) for _ in range(3)]
    for t in submitters:
        t.start()
    gate.opened.set()  # frees places too: submitters may win one before shutdown
    pool.shutdown("finish_in_flight")
    for t in submitters:
        t.join(10)
        assert not t.is_alive()
    assert all(isinstance(e, PoolClosed) for e in errors)


def test_drop_oldest_evicts_the_oldest_queued_job(gate: Gate) -> None:
    pool = WorkerPool(workers=1, queue_size=2, backpressure="drop_oldest", record=True)
    running = pool.submit(gate.job, "running")
    gate.wait_entered()
    oldest = pool.submit(gate.job, "oldest")
    middle = pool.submit(gate.job, "middle")
    newest = pool.submit(gate.job, "newest")
    with pytest.raises(JobDropped) as info:
        oldest.result(timeout=5)
    assert info.value.job_id == 1
    gate.opened.set()
    assert [f.result(timeout=5) for f in (running, middle, newest)] == [
        "running", "middle", "newest"]
    pool.shutdown()
    assert list(pool.records()["status"]) == ["completed", "dropped", "completed", "completed"]


def test_drop_oldest_with_nothing_queued_rejects(gate: Gate) -> None:
    pool = WorkerPool(workers=1, queue_size=0, backpressure="drop_oldest")
    pool.submit(gate.job)
    gate.wait_entered()
    with pytest.raises(QueueFull):
        pool.submit(gate.job)
    gate.opened.set()
    pool.shutdown()


def test_caller_runs_runs_the_job_in_the_submitting_thread(gate: Gate) -> None:
    pool, _ = full_pool(gate, backpressure="caller_runs")
    future = pool.submit(threading.get_ident)
    assert future.done() and future.result() == threading.get_ident()
    gate.opened.set()
    pool.shutdown()
    frame = pool.records()
    assert frame["worker"].tolist() == [0, 0, -1]  # rows in submission order
    assert frame["status"].tolist() == ["completed"] * 3


def test_cancelled_future_never_runs(gate: Gate) -> None:
    pool = WorkerPool(workers=1, queue_size=1)
    pool.submit(gate.job)
    gate.wait_entered()
    ran = threading.Event()
    queued = pool.submit(ran.set)
    assert queued.cancel()
    gate.opened.set()
    pool.shutdown()
    assert not ran.is_set()
    with pytest.raises(CancelledError):
        queued.result()
    assert pool.stats().counts["cancelled"] == 1


def test_current_job_describes_the_running_job() -> None:
    with WorkerPool(workers=1) as pool:
        ctx = pool.submit(current_job, task_type="report").result(timeout=5)
    assert (ctx.job_id, ctx.task_type, ctx.attempt, ctx.deadline) == (0, "report", 1, None)
    assert not ctx.cancelled.is_set()
    with pytest.raises(LookupError):
        current_job()


def test_timeout_fails_the_future_and_cancels_the_job_cooperatively() -> None:
    seen: list[bool] = []

    def patient() -> str:
        ctx = current_job()
        assert ctx.deadline is not None
        seen.append(ctx.cancelled.wait(10))
        return "finished late"

    with WorkerPool(workers=1, job_timeout=0.05, record=True) as pool:
        future = pool.submit(patient)
        with pytest.raises(JobTimeout) as info:
            future.result(timeout=10)
        assert isinstance(info.value, TimeoutError) and info.value.timeout == 0.05
    assert seen == [True]
    frame = pool.records()
    assert frame["status"].tolist() == ["timeout"]
    row = frame.iloc[0]
    assert row["end_s"] - row["start_s"] == pytest.approx(0.05, abs=0.04)


def test_a_timed_out_thread_keeps_its_worker_until_it_returns(gate: Gate) -> None:
    pool = WorkerPool(workers=1, queue_size=5, job_timeout=0.02)
    stuck = pool.submit(gate.job)  # ignores cancellation
    gate.wait_entered()
    with pytest.raises(JobTimeout):
        stuck.result(timeout=10)
    follower = pool.submit(lambda: "next")
    stats = pool.stats()
    assert (stats.running, stats.busy_workers, stats.overdue) == (1, 1, 1)
    assert not follower.done()
    gate.opened.set()
    assert follower.result(timeout=10) == "next"
    pool.shutdown()
    stats = pool.stats()
    assert (stats.running, stats.overdue, stats.counts["timeout"]) == (0, 0, 1)


def test_timeouts_apply_to_every_job_not_only_the_first() -> None:
    def wait_for_cancel() -> bool:
        return current_job().cancelled.wait(10)

    with WorkerPool(workers=2, job_timeout=0.02) as pool:
        futures = [pool.submit(wait_for_cancel) for _ in range(6)]
        for future in futures:
            with pytest.raises(JobTimeout):
                future.result(timeout=10)
    assert pool.stats().counts["timeout"] == 6


def test_stats_counts_queued_and_running(gate: Gate) -> None:
    pool, _ = full_pool(gate)
    stats = pool.stats()
    assert (stats.queued, stats.running, stats.busy_workers, stats.closed) == (1, 1, 1, False)
    gate.opened.set()
    pool.shutdown()
    stats = pool.stats()
    assert (stats.queued, stats.running, stats.closed) == (0, 0, True)
    assert stats.counts["completed"] == 2


def test_records_are_the_jobs_frame_one_row_per_job() -> None:
    with WorkerPool(workers=2, queue_size=None, record=True) as pool:
        for i in range(50):
            pool.submit(lambda: None, task_type="even" if i % 2 == 0 else "odd")
    frame = pool.records()
    assert tuple(frame.columns) == JOBS_COLUMNS
    assert frame["job_id"].tolist() == list(range(50))
    assert (frame["arrival_s"] >= 0).all()
    assert (frame["arrival_s"] <= frame["start_s"]).all()
    assert (frame["start_s"] <= frame["end_s"]).all()
    assert set(frame["worker"]) <= {0, 1}
    assert frame["task_type"].value_counts().to_dict() == {"even": 25, "odd": 25}


def test_records_need_record_true() -> None:
    with WorkerPool(workers=1) as pool, pytest.raises(ConfigError) as info:
        pool.records()
    assert info.value.field == "record"


def test_context_manager_drains() -> None:
    done = []
    with WorkerPool(workers=1, queue_size=None) as pool:
        for i in range(20):
            pool.submit(done.append, i)
    assert done == list(range(20))
    with pytest.raises(PoolClosed):
        pool.submit(done.append, 99)


def test_drop_oldest_never_evicts_a_job_an_idle_worker_is_taking() -> None:
    for _ in range(50):  # the first job may not have started yet when the second arrives
        pool = WorkerPool(workers=1, queue_size=0, backpressure="drop_oldest")
        release = threading.Event()
        first = pool.submit(release.wait)
        with pytest.raises(QueueFull):
            pool.submit(int)
        release.set()
        pool.shutdown()
        assert first.result(timeout=5) is True


def test_an_unknown_option_is_a_config_error_listing_the_options() -> None:
    with pytest.raises(ConfigError, match="options are workers, queue_size") as info:
        WorkerPool(workrs=3)
    assert (info.value.field, info.value.value) == ("workrs", 3)


def test_shutdown_from_a_caller_run_job_does_not_wait_for_itself(gate: Gate) -> None:
    pool = WorkerPool(workers=1, queue_size=0, backpressure="caller_runs")
    pool.submit(gate.job)
    gate.wait_entered()
    report = pool.submit(pool.shutdown, "finish_in_flight").result(timeout=5)
    assert 1 in report.still_running  # itself
    gate.opened.set()


def test_ctrl_c_in_a_caller_running_a_job_still_stops_the_caller(gate: Gate) -> None:
    def interrupted() -> None:
        raise KeyboardInterrupt

    pool = WorkerPool(workers=1, queue_size=0, backpressure="caller_runs")
    pool.submit(gate.job)
    gate.wait_entered()
    with pytest.raises(KeyboardInterrupt):
        pool.submit(interrupted)
    gate.opened.set()
    pool.shutdown()
    assert pool.stats().counts["failed"] == 1


def test_bad_shutdown_arguments_are_refused_before_anything_closes() -> None:
    pool = WorkerPool(workers=1)
    for policy, timeout in [("later", None), (None, -1.0), (None, "soon")]:
        with pytest.raises(ConfigError):
            pool.shutdown(policy, timeout)  # type: ignore[arg-type]
    assert not pool.stats().closed
    pool.shutdown()


def test_a_cancel_event_set_twice_wakes_its_waiter_once() -> None:
    from poolsim import CancelEvent

    event = CancelEvent()
    woke: list[bool] = []
    waiter = threading.Thread(target=lambda: woke.append(event.wait(5)))
    waiter.start()
    while event._gate is None:  # the waiter is in place
        pass
    event.set()
    event.set()
    waiter.join(5)
    assert woke == [True] and event.wait(0)
