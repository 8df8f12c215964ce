"""fit(): service times learned from records, per task type, and traces rebuilt from them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from poolsim import ConfigError, PoolConfig, TraceError, simulate
from poolsim.calibrate import fit


def records(seed: int = 1, n: int = 4000) -> pd.DataFrame:
    """A run's records: two task types with lognormal service times of known parameters."""
    rng = np.random.default_rng(seed)
    task = np.where(rng.random(n) < 0.7, "small", "big")
    service = np.where(task == "small", rng.lognormal(-1.0, 0.5, n), rng.lognormal(0.5, 0.25, n))
    trace = pd.DataFrame({"arrival_s": np.cumsum(rng.exponential(0.2, n)), "service_s": service,
                          "task_type": task})
    return simulate(trace, PoolConfig(workers=8, queue_size=4)).jobs


def test_fit_learns_each_task_types_service_times() -> None:
    jobs = records()
    model = fit(jobs, parametric="lognormal")
    summary = model.summary()
    assert list(summary.index) == ["big", "small"]
    assert summary.loc["small", "jobs"] == ((jobs["task_type"] == "small")
                                            & (jobs["status"] == "completed")).sum()
    assert model.params["small"]["mu"] == pytest.approx(-1.0, abs=0.05)
    assert model.params["big"]["sigma"] == pytest.approx(0.25, abs=0.03)


@pytest.mark.parametrize("parametric", [None, "exponential", "lognormal", "gamma"])
def test_a_fitted_trace_keeps_arrivals_and_service_means(parametric: str | None) -> None:
    jobs = records()
    model = fit(jobs, parametric=parametric)  # type: ignore[arg-type]
    trace = model.trace(seed=3)
    assert trace["arrival_s"].tolist() == sorted(jobs["arrival_s"].tolist())
    for task in ("small", "big"):
        fitted = trace.loc[trace["task_type"] == task, "service_s"].mean()
        assert fitted == pytest.approx(model.observed[task].mean(), rel=0.1)
    pd.testing.assert_frame_equal(trace, model.trace(seed=3))


def test_records_scaled_to_twice_the_load_in_two_calls() -> None:
    trace = fit(records()).trace(seed=1)
    once = simulate(trace, PoolConfig(workers=8, queue_size=4), seed=1).summary
    twice = simulate(trace, PoolConfig(workers=8, queue_size=4), load=2.0, seed=1).summary
    assert twice.jobs == 2 * once.jobs
    assert twice.rejection_rate > once.rejection_rate


def test_rare_task_types_borrow_everyones_service_times() -> None:
    jobs = records()
    rare = jobs.copy()
    rare.loc[rare.index[:3], "task_type"] = "rare"
    model = fit(rare, min_jobs=10)
    done = rare["status"] == "completed"
    everyone = (rare.loc[done, "end_s"] - rare.loc[done, "start_s"]).to_numpy()
    assert model.observed["rare"] == pytest.approx(np.sort(everyone))


def test_bad_input_is_a_clear_error() -> None:
    with pytest.raises(TraceError) as missing:
        fit(pd.DataFrame({"arrival_s": [0.0]}))
    assert missing.value.column == "task_type"
    nothing_done = records().assign(status="rejected")
    with pytest.raises(TraceError, match="no completed or timed-out job"):
        fit(nothing_done)
    with pytest.raises(ConfigError):
        fit(records(), parametric="weibull")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        fit(records()).sample("unknown", 1, np.random.default_rng(0))


def test_timed_out_jobs_count_so_a_resimulation_times_them_out_again() -> None:
    trace = pd.DataFrame({"arrival_s": np.arange(200.0), "service_s": [0.5, 3.0] * 100})
    config = PoolConfig(workers=4, queue_size=None, job_timeout=1.0)
    original = simulate(trace, config).summary
    again = simulate(fit(simulate(trace, config).jobs).trace(seed=1), config).summary
    assert original.counts["timeout"] == 100
    assert again.counts["timeout"] == pytest.approx(100, abs=30)  # resampled, not lost
