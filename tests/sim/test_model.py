"""The SimPy model: each policy's timeline checked in one equality, and the fast kernel's
identity with it."""

from __future__ import annotations

import math

import hypothesis.strategies as st
import pandas as pd
import pytest
from hypothesis import given, settings

from poolsim import ConfigError, PoolConfig
from poolsim.sim.model import simulate

NAN = math.nan


def trace(*jobs: tuple[float, float]) -> pd.DataFrame:
    """A trace from (arrival_s, service_s) pairs."""
    return pd.DataFrame(jobs, columns=["arrival_s", "service_s"])


def timeline(result: object) -> list[tuple[object, ...]]:
    """(status, start, end, worker) per job, NaN and <NA> as None: one comparable log."""
    frame = result.jobs  # type: ignore[attr-defined]

    def clean(x: object) -> object:
        return None if x is pd.NA or (isinstance(x, float) and math.isnan(x)) else x

    return [tuple(clean(v) for v in row) for row in
            frame[["status", "start_s", "end_s", "worker"]].itertuples(index=False)]


def test_reject_refuses_at_once_when_workers_and_queue_are_full() -> None:
    result = simulate(trace((0, 1), (0, 1), (0, 1)), PoolConfig(workers=1, queue_size=1))
    assert timeline(result) == [("completed", 0, 1, 0), ("completed", 1, 2, 0),
                                ("rejected", None, 0, None)]
    assert result.engine == "fast"


def test_drop_oldest_evicts_the_oldest_waiting_job() -> None:
    result = simulate(trace((0, 1), (0, 1), (0, 1), (0.5, 1)),
                      PoolConfig(workers=1, queue_size=2, backpressure="drop_oldest"))
    assert timeline(result) == [("completed", 0, 1, 0), ("dropped", None, 0.5, None),
                                ("completed", 1, 2, 0), ("completed", 2, 3, 0)]


def test_drop_oldest_with_nothing_waiting_rejects() -> None:
    result = simulate(trace((0, 1), (0, 1)),
                      PoolConfig(workers=1, queue_size=0, backpressure="drop_oldest"))
    assert timeline(result) == [("completed", 0, 1, 0), ("rejected", None, 0, None)]


def test_block_holds_its_submitter_until_a_place_frees() -> None:
    config = PoolConfig(workers=1, queue_size=0, backpressure="block", block_timeout=1.0)
    result = simulate(trace((0, 1), (0.2, 1), (0.4, 1)), config)
    assert timeline(result) == [("completed", 0, 1, 0), ("completed", 1, 2, 0),
                                ("rejected", None, 1.4, None)]  # gave up after 1 s
    assert result.engine == "simpy"


def test_block_releases_submitters_in_arrival_order() -> None:
    config = PoolConfig(workers=1, queue_size=0, backpressure="block", block_timeout=None)
    result = simulate(trace((0, 1), (0.1, 1), (0.2, 1)), config)
    assert [row[1] for row in timeline(result)] == [0, 1, 2]


def test_caller_runs_runs_the_job_at_its_arrival_outside_the_pool() -> None:
    config = PoolConfig(workers=1, queue_size=0, backpressure="caller_runs")
    result = simulate(trace((0, 1), (0.5, 1), (1.5, 1)), config)
    assert timeline(result) == [("completed", 0, 1, 0), ("completed", 0.5, 1.5, -1),
                                ("completed", 1.5, 2.5, 0)]


@pytest.mark.parametrize(("runtime", "follower"), [("threads", (3.0, 4.0)),
                                                   ("asyncio", (1.0, 2.0))])
def test_a_timeout_frees_the_worker_only_in_asyncio(runtime: str,
                                                    follower: tuple[float, float]) -> None:
    config = PoolConfig(workers=1, queue_size=5, job_timeout=1.0)
    result = simulate(trace((0, 3), (0.5, 1)), config, runtime=runtime)  # type: ignore[arg-type]
    assert timeline(result) == [("timeout", 0, 1, 0), ("completed", *follower, 0)]


def jobs_at_zero(n: int, service: float = 1.0) -> pd.DataFrame:
    return trace(*[(0.0, service)] * n)


def test_drain_finishes_everything_and_refuses_later_arrivals() -> None:
    config = PoolConfig(workers=1, queue_size=5, shutdown="drain")
    result = simulate(pd.concat([jobs_at_zero(3), trace((2.0, 1))], ignore_index=True),
                      config, shutdown_at=0.5)
    assert [row[0] for row in timeline(result)] == ["completed"] * 3 + ["rejected"]
    shutdown = result.shutdown
    assert shutdown is not None
    assert (shutdown.completed, shutdown.returned, shutdown.cancelled, shutdown.still_running,
            shutdown.exit_s) == ((0, 1, 2), (), (), (), 3.0)
    assert shutdown.duration_s == 2.5 and shutdown.killed(grace_s=2.0) == (2,)


def test_finish_in_flight_returns_the_queue_at_once() -> None:
    config = PoolConfig(workers=1, queue_size=5, shutdown="finish_in_flight")
    result = simulate(jobs_at_zero(3), config, shutdown_at=0.5)
    assert timeline(result) == [("completed", 0, 1, 0), ("returned", None, 0.5, None),
                                ("returned", None, 0.5, None)]
    assert result.shutdown is not None
    assert (result.shutdown.returned, result.shutdown.exit_s) == ((1, 2), 1.0)


@pytest.mark.parametrize(("runtime", "exit_s"), [("threads", 1.0), ("asyncio", 0.5)])
def test_immediate_cancels_everything_but_a_thread_runs_on(runtime: str, exit_s: float) -> None:
    config = PoolConfig(workers=1, queue_size=5, shutdown="immediate")
    result = simulate(jobs_at_zero(2), config, shutdown_at=0.5,
                      runtime=runtime)  # type: ignore[arg-type]
    assert timeline(result) == [("cancelled", 0, 0.5, 0), ("cancelled", None, 0.5, None)]
    assert result.shutdown is not None
    assert (result.shutdown.cancelled, result.shutdown.exit_s) == ((0, 1), exit_s)


def test_a_drain_deadline_returns_the_queue_and_reports_what_still_runs() -> None:
    config = PoolConfig(workers=1, queue_size=5, shutdown="drain", shutdown_timeout=1.2)
    result = simulate(jobs_at_zero(4), config, shutdown_at=0.5)
    assert [row[0] for row in timeline(result)] == [
        "completed", "completed", "returned", "returned"]
    shutdown = result.shutdown
    assert shutdown is not None
    assert (shutdown.completed, shutdown.returned, shutdown.still_running, shutdown.exit_s) == (
        (0,), (2, 3), (1,), 1.7)


def test_blocked_submitters_are_refused_at_shutdown() -> None:
    config = PoolConfig(workers=1, queue_size=0, backpressure="block", block_timeout=None)
    result = simulate(trace((0, 1), (0.1, 1)), config, shutdown_at=0.5)
    assert timeline(result)[1] == ("rejected", None, 0.5, None)


def test_engines_are_chosen_and_forced() -> None:
    jobs = jobs_at_zero(3)
    assert simulate(jobs, PoolConfig(workers=1), engine="simpy").engine == "simpy"
    assert simulate(jobs, PoolConfig(workers=1), shutdown_at=1.0).engine == "simpy"
    with pytest.raises(ConfigError) as info:
        simulate(jobs, PoolConfig(workers=1, backpressure="block"), engine="fast")
    assert info.value.field == "engine"
    for field, value in [("engine", "turbo"), ("runtime", "fibers"), ("shutdown_at", -1.0)]:
        with pytest.raises(ConfigError) as bad:
            simulate(jobs, PoolConfig(workers=1), **{field: value})  # type: ignore[arg-type]
        assert bad.value.field == field


def test_the_summary_and_queue_depth_come_from_the_jobs_frame() -> None:
    result = simulate(jobs_at_zero(4), PoolConfig(workers=2, queue_size=1))
    assert result.summary.counts["completed"] == 3 and result.summary.counts["rejected"] == 1
    assert result.summary.utilisation == pytest.approx(3 / 4)
    assert result.queue_depth().iloc[-1] == 0
    assert "SimResult" in result._repr_html_()


times = st.floats(min_value=0, max_value=20, allow_nan=False).map(lambda x: round(x, 1))


@st.composite
def traces_and_configs(draw: st.DrawFn) -> tuple[pd.DataFrame, PoolConfig, str]:
    """Random small traces, with ties and zero-length jobs, and fast-subset configs."""
    arrivals = sorted(draw(st.lists(times, min_size=1, max_size=40)))
    services = draw(st.lists(st.sampled_from([0.0, 0.1, 0.5, 1.0, 2.5, 7.0]),
                             min_size=len(arrivals), max_size=len(arrivals)))
    config = PoolConfig(workers=draw(st.integers(1, 4)),
                        queue_size=draw(st.sampled_from([None, 0, 1, 2, 5])),
                        backpressure=draw(st.sampled_from(["reject", "drop_oldest"])),
                        job_timeout=draw(st.sampled_from([None, 0.5, 2.0])))
    frame = pd.DataFrame({"arrival_s": arrivals, "service_s": services}, dtype=float)
    return frame, config, draw(st.sampled_from(["threads", "asyncio"]))


@settings(max_examples=300, deadline=None)
@given(traces_and_configs(), st.integers(0, 3))
def test_the_fast_kernel_gives_identical_times(case: tuple[pd.DataFrame, PoolConfig, str],
                                               seed: int) -> None:
    frame, config, runtime = case
    fast = simulate(frame, config, runtime=runtime, engine="fast",  # type: ignore[arg-type]
                    seed=seed).jobs
    model = simulate(frame, config, runtime=runtime, engine="simpy",  # type: ignore[arg-type]
                     seed=seed).jobs
    columns = ["job_id", "arrival_s", "start_s", "end_s", "status", "worker"]
    pd.testing.assert_frame_equal(fast[columns], model[columns])


@settings(max_examples=100, deadline=None)
@given(traces_and_configs(),
       st.sampled_from(["reject", "block", "drop_oldest", "caller_runs"]),
       st.sampled_from(["drain", "finish_in_flight", "immediate"]),
       st.sampled_from([None, 0.0, 1.0, 5.0]), st.sampled_from([None, 0.0, 3.0, 10.0]))
def test_every_job_appears_once_and_statuses_reconcile(
        case: tuple[pd.DataFrame, PoolConfig, str], backpressure: str, policy: str,
        shutdown_timeout: float | None, shutdown_at: float | None) -> None:
    frame, config, runtime = case
    config = config.replace(backpressure=backpressure, shutdown=policy, block_timeout=0.5,
                            shutdown_timeout=shutdown_timeout or None)
    result = simulate(frame, config, runtime=runtime,  # type: ignore[arg-type]
                      shutdown_at=shutdown_at)
    jobs = result.jobs
    assert jobs["job_id"].tolist() == list(range(len(frame)))
    assert sum(result.summary.counts.values()) == len(frame)
    started = jobs["start_s"].notna()
    assert (jobs.loc[started, "start_s"] >= jobs.loc[started, "arrival_s"]).all()
    assert (jobs["end_s"] >= jobs["arrival_s"]).all()
    assert jobs.loc[~started, "status"].isin(["rejected", "dropped", "returned",
                                              "cancelled"]).all()
    if result.shutdown is not None:
        d = result.shutdown
        assert d.exit_s >= d.at
        assert set(d.completed) | set(d.returned) | set(d.cancelled) | set(d.still_running) <= set(
            d.released)
