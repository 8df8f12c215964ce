"""The real pool against the model on the same trace: the fidelity the project promises."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from poolsim import ConfigError, LinearService, PoolConfig, load_trace, simulate
from poolsim.replay import compare, ks_distance, replay

# The Azure LLM trace's first 5,000 requests, with a service time made from their token
# counts. With 18 workers and 10 waiting places the pool runs at utilisation ~0.8 and
# refuses ~13 % of this bursty load; 0.03 real s per trace s replays it in ~21 s
# (slower is steadier when the machine is busy).
SERVICE = LinearService(intercept=0.05,
                        per_column={"context_tokens": 0.0002, "generated_tokens": 0.01})
SCALE = 0.03


@pytest.fixture(scope="module")
def trace() -> pd.DataFrame:
    return load_trace("azure_llm_2023_code_conv", service=SERVICE).iloc[:5000]


def check_fidelity(trace: pd.DataFrame, config: PoolConfig, runtime: str = "threads",
                   shutdown_at: float | None = None) -> pd.DataFrame:
    real = replay(trace, config, time_scale=SCALE, runtime=runtime,  # type: ignore[arg-type]
                  shutdown_at=shutdown_at)
    model = simulate(trace, config, shutdown_at=shutdown_at)
    table = compare(real, model)
    assert set(real.jobs["status"].astype(str)) == set(model.jobs["status"].astype(str))
    assert len(real.jobs) == len(model.jobs) == len(trace)
    assert real.summary.utilisation == pytest.approx(model.summary.utilisation, abs=0.05)
    assert table.loc["latency_ks_distance", "difference"] <= 0.05
    for rate in ("rejection_rate", "drop_rate"):
        assert abs(table.loc[rate, "difference"]) <= 0.01
    return table


@pytest.mark.slow
@pytest.mark.parametrize("backpressure", ["reject", "drop_oldest"])
def test_the_real_pool_agrees_with_the_model(trace: pd.DataFrame, backpressure: str) -> None:
    config = PoolConfig(workers=18, queue_size=10, backpressure=backpressure)
    check_fidelity(trace, config)
    assert 0.7 <= simulate(trace, config).summary.utilisation <= 0.9


@pytest.mark.slow
def test_a_drain_shutdown_mid_trace_agrees_with_the_model(trace: pd.DataFrame) -> None:
    table = check_fidelity(trace, PoolConfig(workers=18, queue_size=10, shutdown="drain"),
                           shutdown_at=347.0)
    assert table.loc["n_rejected", "real"] > 2000  # everything after the shutdown is refused


@pytest.mark.slow
def test_the_asyncio_pool_agrees_with_the_model(trace: pd.DataFrame) -> None:
    check_fidelity(trace, PoolConfig(workers=18, queue_size=10), runtime="asyncio")


def test_replay_times_are_trace_seconds_and_jobs_keep_their_order() -> None:
    trace = pd.DataFrame({"arrival_s": [0.0, 1.0, 2.0], "service_s": [5.0, 1.0, 1.0]})
    result = replay(trace, PoolConfig(workers=1, queue_size=1), time_scale=0.02)
    jobs = result.jobs
    assert jobs["status"].tolist() == ["completed", "completed", "rejected"]
    assert jobs["start_s"].iloc[1] == pytest.approx(5.0, abs=0.5)
    assert jobs["end_s"].iloc[1] == pytest.approx(6.0, abs=0.5)
    assert math.isnan(jobs["start_s"].iloc[2])
    assert jobs["arrival_s"].iloc[2] == pytest.approx(2.0, abs=0.2)  # when it was really submitted


@pytest.mark.parametrize("backpressure", ["block", "caller_runs"])
def test_block_and_caller_runs_hold_only_their_own_submitter(backpressure: str) -> None:
    trace = pd.DataFrame({"arrival_s": [0.0, 0.5, 1.0], "service_s": [2.0, 1.0, 1.0]})
    config = PoolConfig(workers=1, queue_size=0, backpressure=backpressure, block_timeout=10.0)
    real = replay(trace, config, time_scale=0.05).jobs
    model = simulate(trace, config).jobs
    assert real["status"].tolist() == model["status"].tolist() == ["completed"] * 3
    assert real["start_s"].to_numpy() == pytest.approx(model["start_s"].to_numpy(), abs=0.3)


def test_arrivals_after_shutdown_are_recorded_as_rejected() -> None:
    trace = pd.DataFrame({"arrival_s": [0.0, 0.5, 3.0], "service_s": [1.0, 1.0, 1.0]})
    config = PoolConfig(workers=1, queue_size=5, shutdown="finish_in_flight")
    real = replay(trace, config, time_scale=0.05, shutdown_at=0.6)
    assert real.jobs["status"].tolist() == ["completed", "returned", "rejected"]
    assert real.shutdown is not None and [j.job_id for j in real.shutdown.returned] == [1]


def test_bad_replay_arguments_are_config_errors() -> None:
    trace = pd.DataFrame({"arrival_s": [0.0], "service_s": [1.0]})
    for field, value in [("time_scale", 0), ("work", "spin"), ("runtime", "fibers")]:
        with pytest.raises(ConfigError) as info:
            replay(trace, PoolConfig(), **{field: value})  # type: ignore[arg-type]
        assert info.value.field == field


def test_ks_distance() -> None:
    assert ks_distance([1, 2, 3], [1, 2, 3]) == 0
    assert ks_distance([1, 2], [3, 4]) == 1
    assert ks_distance([1, 2, 3, 4], [3, 4, 5, 6]) == 0.5
    assert math.isnan(ks_distance([], [1]))
