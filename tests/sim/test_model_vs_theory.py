"""The simulator agrees with queueing theory: replications with confidence intervals.

Each replication replays its own Poisson trace (exponential inter-arrival and
service times from ``default_rng(seed)``) through :func:`poolsim.sim.simulate`.
Every run starts empty, so the first ``WARM_UP`` of each run's jobs (by
arrival) is discarded before estimating steady-state means; at rho = 0.9 the
M/M/8 queue forgets its start within a few hundred jobs, far fewer.

A replication's mean is one observation; the R observations give a 99 %
Student-t confidence interval. Theory must lie inside it, and the estimate
must also be within the issue's tolerance (5 % for the M/M/8 mean wait, 0.005
absolute for blocking). The sizes make that tolerance about four standard
errors: one 100,000-job run at rho = 0.9 has a ~9.5 % standard deviation on
its mean wait (measured over 100 runs), so R = 60 of them give ~1.2 %; the
blocking estimates have a standard error near 0.001. The seeds are fixed, so
the test is deterministic; they were not chosen to pass.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from poolsim import Backpressure, PoolConfig
from poolsim.sim import simulate
from poolsim.sim.theory import littles_law, mmc, mmck

pytestmark = pytest.mark.slow

WARM_UP = 0.05  # fraction of each run's jobs discarded: the run starts empty
T99 = {9: 3.2498, 59: 2.6618}  # Student t 0.995 quantiles by degrees of freedom


def poisson_trace(seed: int, jobs: int, arrival_rate: float, mean_service: float) -> pd.DataFrame:
    """An M/M trace: exponential inter-arrival and service times."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "arrival_s": np.cumsum(rng.exponential(1 / arrival_rate, jobs)),
        "service_s": rng.exponential(mean_service, jobs),
        "task_type": "default",
        "queue": "default",
    })


def steady(jobs: pd.DataFrame) -> pd.DataFrame:
    """The jobs after the warm-up prefix (by arrival order)."""
    return jobs.sort_values("arrival_s").iloc[int(len(jobs) * WARM_UP):]


@dataclasses.dataclass(frozen=True)
class Estimate:
    """The mean of R replications' values and its 99 % Student-t confidence interval."""

    values: np.ndarray

    @property
    def mean(self) -> float:
        return float(self.values.mean())

    @property
    def half_width(self) -> float:
        r = len(self.values)
        return T99[r - 1] * float(self.values.std(ddof=1)) / math.sqrt(r)

    def covers(self, value: float) -> bool:
        return abs(self.mean - value) <= self.half_width

    def versus(self, theory: float) -> str:
        return (f"simulated {self.mean:.5g} +- {self.half_width:.2g} (99 % CI, "
                f"R={len(self.values)}) vs theory {theory:.5g}: "
                f"error {self.mean - theory:+.3g} ({(self.mean - theory) / theory:+.2%})")


def replicate(runs: int, first_seed: int, measure: Callable[[int], dict[str, float]]
              ) -> dict[str, Estimate]:
    """``measure(seed)`` for ``runs`` consecutive seeds, gathered per statistic."""
    rows = [measure(seed) for seed in range(first_seed, first_seed + runs)]
    return {name: Estimate(np.array([row[name] for row in rows])) for name in rows[0]}


# -- M/M/8 at rho = 0.9 (unbounded queue) -------------------------------------------------

MM8_RATE, MM8_SERVICE, MM8_WORKERS = 7.2, 1.0, 8  # rho = 0.9
MM8_THEORY = mmc(MM8_RATE, MM8_SERVICE, MM8_WORKERS)
MM8_RUNS, MM8_JOBS = 60, 100_000


@pytest.fixture(scope="module")
def mm8() -> dict[str, Estimate]:
    config = PoolConfig(workers=MM8_WORKERS, queue_size=None, backpressure=Backpressure.REJECT)

    def measure(seed: int) -> dict[str, float]:
        trace = poisson_trace(seed, MM8_JOBS, MM8_RATE, MM8_SERVICE)
        jobs = simulate(trace, config, seed=seed).jobs
        kept = steady(jobs)
        wait = (kept["start_s"] - kept["arrival_s"]).to_numpy()
        window = (float(kept["arrival_s"].iloc[0]), float(kept["arrival_s"].iloc[-1]))
        little = littles_law(jobs, window=window)
        return {
            "mean_wait": float(wait.mean()),
            "p_wait": float((wait > 0).mean()),
            "mean_response": float((kept["end_s"] - kept["arrival_s"]).mean()),
            "mean_in_system": little.mean_in_system,
            "little_error": little.relative_error,
            "rejected": float((jobs["status"] == "rejected").sum()),
        }

    return replicate(MM8_RUNS, 1, measure)


def test_mm8_mean_wait_within_5_percent_and_inside_the_ci(mm8: dict[str, Estimate]) -> None:
    theory = MM8_THEORY.mean_wait
    estimate = mm8["mean_wait"]
    report = estimate.versus(theory)
    assert abs(estimate.mean - theory) <= 0.05 * theory, report
    assert estimate.covers(theory), report
    assert estimate.half_width <= 0.05 * theory, "too few replications to decide: " + report


def test_mm8_probability_of_waiting_and_time_in_system(mm8: dict[str, Estimate]) -> None:
    theory = MM8_THEORY
    for name in ("p_wait", "mean_response"):
        expected = getattr(theory, name)
        assert mm8[name].covers(expected), f"{name}: {mm8[name].versus(expected)}"


def test_mm8_littles_law_after_warm_up(mm8: dict[str, Estimate]) -> None:
    # an unbounded queue rejects nothing, so every accepted job completes
    assert mm8["rejected"].values.sum() == 0
    # in a window the identity holds up to jobs straddling its edges: tiny here
    assert np.abs(mm8["little_error"].values).max() < 0.005
    theory = MM8_THEORY.mean_in_system
    assert abs(mm8["mean_in_system"].mean - theory) <= 0.05 * theory, (
        mm8["mean_in_system"].versus(theory))


# -- M/M/4/10: workers=4, queue_size=6 ------------------------------------------------------

MMCK_RUNS, MMCK_JOBS = 10, 100_000
WORKERS, QUEUE_SIZE = 4, 6  # K = workers + queue_size = 10 places


def lost_fraction(rho: float, backpressure: str, status: str, first_seed: int) -> Estimate:
    """Per replication, the fraction of post-warm-up arrivals that ended as ``status``."""
    config = PoolConfig(workers=WORKERS, queue_size=QUEUE_SIZE,
                        backpressure=Backpressure(backpressure))

    def measure(seed: int) -> dict[str, float]:
        trace = poisson_trace(seed, MMCK_JOBS, rho * WORKERS, 1.0)
        kept = steady(simulate(trace, config, seed=seed).jobs)
        return {"lost": float((kept["status"] == status).mean())}

    return replicate(MMCK_RUNS, first_seed, measure)["lost"]


@pytest.mark.parametrize("rho", [0.7, 1.0, 1.5])
def test_blocking_of_a_bounded_pool_is_mmck(rho: float) -> None:
    theory = mmck(rho * WORKERS, 1.0, WORKERS, WORKERS + QUEUE_SIZE).blocking
    estimate = lost_fraction(rho, "reject", "rejected", first_seed=1000 + int(rho * 100))
    report = estimate.versus(theory)
    assert abs(estimate.mean - theory) <= 0.005, report
    assert estimate.covers(theory), report


def test_drop_oldest_drops_the_blocking_fraction() -> None:
    # the number in the pool evolves as under reject: a full pool stays full
    theory = mmck(1.2 * WORKERS, 1.0, WORKERS, WORKERS + QUEUE_SIZE).blocking
    estimate = lost_fraction(1.2, "drop_oldest", "dropped", first_seed=2000)
    report = estimate.versus(theory)
    assert abs(estimate.mean - theory) <= 0.005, report
    assert estimate.covers(theory), report
