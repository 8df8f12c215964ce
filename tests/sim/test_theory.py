"""Queueing theory: textbook values, independent brute-force formulas, and properties."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from poolsim import Backpressure, ConfigError, JobRecord, PoolConfig, jobs_frame
from poolsim.sim.theory import (
    LittlesLaw,
    erlang_b,
    erlang_c,
    kingman,
    littles_law,
    mmc,
    mmck,
    mmck_for,
)

servers = st.integers(1, 60)
utilisations = st.floats(0.01, 0.99)
mean_services = st.floats(0.01, 100.0)

# -- independent formulas -------------------------------------------------------------


def erlang_c_direct(load: float, c: int) -> float:
    """Erlang C from its definition, in log space (lgamma, not the Erlang B recursion)."""
    terms = [k * math.log(load) - math.lgamma(k + 1) for k in range(c)]
    tail = c * math.log(load) - math.lgamma(c + 1) + math.log(c / (c - load))
    top = max(*terms, tail)
    total = sum(math.exp(t - top) for t in terms) + math.exp(tail - top)
    return math.exp(tail - top) / total


def mmck_direct(load: float, c: int, k: int) -> np.ndarray:
    """The M/M/c/K stationary distribution p_0..p_K, state by state."""
    log_w = np.array([i * math.log(load) - math.lgamma(min(i, c) + 1) - max(i - c, 0) * math.log(c)
                      for i in range(k + 1)])
    w = np.exp(log_w - log_w.max())
    distribution: np.ndarray = w / w.sum()
    return distribution


# -- reference values -------------------------------------------------------------------


@pytest.mark.parametrize(("c", "rho", "response"), [(4, 0.833, 0.662), (5, 0.667, 0.399),
                                                    (6, 0.556, 0.352)])
def test_reference_values_lambda_10_service_one_third(c: int, rho: float, response: float) -> None:
    result = mmc(10.0, 1 / 3, c)
    assert round(result.rho, 3) == rho
    assert round(result.mean_response, 3) == response


@given(utilisations, mean_services)
def test_mm1_textbook(rho: float, service: float) -> None:
    mu = 1 / service
    lam = rho * mu
    result = mmc(lam, service, 1)
    assert result.p_wait == pytest.approx(rho)
    assert result.mean_wait == pytest.approx(rho / (mu - lam))
    assert result.mean_response == pytest.approx(1 / (mu - lam))
    assert result.mean_in_system == pytest.approx(rho / (1 - rho))
    assert result.mean_queue_length == pytest.approx(rho**2 / (1 - rho))


@given(servers, utilisations, mean_services)
def test_erlang_c_matches_its_definition(c: int, rho: float, service: float) -> None:
    assert erlang_c(rho * c / service, 1 / service, c) == pytest.approx(
        erlang_c_direct(rho * c, c), rel=1e-9, abs=1e-300)


@pytest.mark.parametrize("c", [200, 1000, 2000])
@pytest.mark.parametrize("rho", [0.5, 0.95, 0.999])
def test_erlang_c_is_stable_for_many_servers(c: int, rho: float) -> None:
    value = erlang_c(rho * c, 1.0, c)
    assert 0.0 <= value <= 1.0
    assert value == pytest.approx(erlang_c_direct(rho * c, c), rel=1e-9, abs=1e-300)


def test_little_holds_in_mmc() -> None:
    result = mmc(7.2, 1.0, 8)
    assert result.mean_in_system == pytest.approx(7.2 * result.mean_response)
    assert result.mean_queue_length == pytest.approx(7.2 * result.mean_wait)
    assert result.mean_response == pytest.approx(result.mean_wait + 1.0)


# -- waiting and response time distributions -------------------------------------------


@given(servers, utilisations, st.floats(0.0, 0.999))
def test_wait_quantile_round_trips(c: int, rho: float, p: float) -> None:
    result = mmc(rho * c, 1.0, c)
    t = result.wait_quantile(p)
    if p <= 1 - result.p_wait:
        assert t == 0.0
        assert result.wait_cdf(0.0) >= p
    else:
        assert result.wait_cdf(t) == pytest.approx(p, abs=1e-12)


def test_wait_cdf_is_the_textbook_formula() -> None:
    result = mmc(10.0, 1 / 3, 4)
    assert result.wait_cdf(-1.0) == 0.0
    assert result.wait_cdf(0.0) == pytest.approx(1 - result.p_wait)
    assert result.wait_cdf(0.5) == pytest.approx(1 - result.p_wait * math.exp(-(12 - 10) * 0.5))


@given(servers, utilisations, st.floats(0.0, 0.999))
def test_response_quantile_round_trips(c: int, rho: float, p: float) -> None:
    result = mmc(rho * c, 0.5, c)
    t = result.response_quantile(p)
    assert result.response_cdf(t) == pytest.approx(p, abs=1e-10)
    assert t >= result.wait_quantile(p)  # service only adds time


@pytest.mark.parametrize(("lam", "c"), [(1.0, 2), (1.0 + 1e-9, 2), (0.3, 1), (7.2, 8), (3.9, 4)])
def test_response_cdf_integrates_to_mean_and_matches_a_convolution(lam: float, c: int) -> None:
    result = mmc(lam, 1.0, c)  # (1.0, 2): the wait and service rates are equal
    t = np.linspace(0.0, 80.0 * result.mean_response, 4001)
    survival = 1 - np.array([result.response_cdf(x) for x in t])
    mean = float(np.trapezoid(survival, t))
    assert mean == pytest.approx(result.mean_response, rel=1e-4)
    # P(W + S <= x) by numerical convolution of the wait CDF with the service density
    x = 2.0 * result.mean_response
    s = np.linspace(0.0, x, 20_001)
    wait_cdf = np.array([result.wait_cdf(x - v) for v in s])
    convolved = float(np.trapezoid(wait_cdf * np.exp(-s), s))
    assert result.response_cdf(x) == pytest.approx(convolved, abs=1e-6)


# -- M/M/c/K ----------------------------------------------------------------------------


@pytest.mark.parametrize("rho", [0.3, 0.9, 1.0, 1.0 + 1e-12, 1.5, 4.0])
@pytest.mark.parametrize("k", [1, 2, 10, 50])
def test_mm1k_blocking_formula(rho: float, k: int) -> None:
    expected = 1 / (k + 1) if rho == 1.0 else (1 - rho) * rho**k / (1 - rho ** (k + 1))
    assert mmck(rho, 1.0, 1, k).blocking == pytest.approx(expected, rel=1e-9)


@given(servers, st.floats(0.01, 5.0), mean_services)
def test_mmcc_is_erlang_b(c: int, rho: float, service: float) -> None:
    lam = rho * c / service
    result = mmck(lam, service, c, c)
    assert result.blocking == pytest.approx(erlang_b(lam, 1 / service, c), rel=1e-9)
    assert (result.p_wait, result.mean_wait, result.mean_queue_length) == (0.0, 0.0, 0.0)
    assert result.mean_response == pytest.approx(service)


def test_erlang_b_recursion_values() -> None:
    assert erlang_b(1.0, 1.0, 1) == pytest.approx(0.5)
    assert erlang_b(2.0, 1.0, 2) == pytest.approx(0.4)  # (a^2/2) / (1 + a + a^2/2)
    assert erlang_b(10.0, 1.0, 10) == pytest.approx(0.21458, abs=1e-5)


@given(st.integers(1, 20), st.integers(0, 200),
       st.one_of(st.floats(0.01, 5.0), st.sampled_from([1.0, 1 - 1e-9, 1 + 1e-9, 1 - 1e-6])))
def test_mmck_matches_the_state_by_state_distribution(c: int, m: int, rho: float) -> None:
    k = c + m
    p = mmck_direct(rho * c, c, k)
    n = np.arange(k + 1)
    result = mmck(rho * c, 1.0, c, k)
    assert result.blocking == pytest.approx(p[-1], rel=1e-8, abs=1e-15)
    assert result.mean_in_system == pytest.approx(float((n * p).sum()), rel=1e-8, abs=1e-12)
    assert result.mean_queue_length == pytest.approx(
        float((np.maximum(n - c, 0) * p).sum()), rel=1e-8, abs=1e-12)
    assert result.p_wait == pytest.approx(float(p[c:k].sum()) / (1 - p[-1]), rel=1e-8, abs=1e-12)


@given(servers, st.integers(0, 10**9), st.floats(0.01, 50.0))
def test_mmck_identities_hold_at_any_load(c: int, m: int, rho: float) -> None:
    result = mmck(rho * c / 2.0, 2.0, c, c + m)
    assert result.rho == pytest.approx(rho)
    assert 0.0 <= result.blocking <= 1.0
    assert result.utilisation <= 1.0 + 1e-12
    assert result.throughput == pytest.approx(rho * c / 2.0 * (1 - result.blocking))
    assert result.mean_in_system == pytest.approx(result.throughput * result.mean_response)
    assert result.mean_queue_length == pytest.approx(result.throughput * result.mean_wait)
    assert result.mean_response == pytest.approx(result.mean_wait + 2.0)


def test_mmck_overloaded_huge_queue_is_full_and_saturated() -> None:
    result = mmck(30.0, 1 / 3, 4, 10**9)  # rho = 2.5: the queue fills, workers saturate
    assert result.blocking == pytest.approx(1 - 1 / 2.5, rel=1e-12)
    assert result.throughput == pytest.approx(12.0, rel=1e-12)
    assert result.utilisation == pytest.approx(1.0, rel=1e-12)


# -- properties -------------------------------------------------------------------------


@given(st.integers(1, 1000), utilisations, st.floats(1e-3, 0.5))
def test_p_wait_is_a_probability_increasing_in_load(c: int, rho: float, step: float) -> None:
    assume(rho + step < 1)
    low, high = erlang_c(rho * c, 1.0, c), erlang_c((rho + step) * c, 1.0, c)
    assert 0.0 <= low <= 1.0 and 0.0 <= high <= 1.0
    assert high > low or low == 0.0


@given(servers, st.floats(0.01, 0.95), mean_services)
def test_mmck_tends_to_mmc_as_the_queue_grows(c: int, rho: float, service: float) -> None:
    lam = rho * c / service
    finite, infinite = mmck(lam, service, c, c + 5000), mmc(lam, service, c)
    assert finite.blocking < 1e-100
    for name in ("p_wait", "mean_wait", "mean_response", "mean_queue_length", "mean_in_system"):
        assert getattr(finite, name) == pytest.approx(getattr(infinite, name), rel=1e-9,
                                                      abs=1e-300), name


@given(servers, st.integers(0, 100), st.floats(0.01, 10.0))
def test_blocking_decreases_as_the_queue_grows(c: int, m: int, rho: float) -> None:
    smaller, larger = mmck(rho * c, 1.0, c, c + m), mmck(rho * c, 1.0, c, c + m + 1)
    assert larger.blocking <= smaller.blocking * (1 + 1e-12)  # strictly, up to rounding


# -- mmck_for ---------------------------------------------------------------------------


def test_mmck_for_counts_waiting_places_only() -> None:
    config = PoolConfig(workers=4, queue_size=6, backpressure=Backpressure.REJECT)
    assert mmck_for(config, 10.0, 1 / 3) == mmck(10.0, 1 / 3, 4, 10)
    dropping = config.replace(backpressure=Backpressure.DROP_OLDEST)
    assert mmck_for(dropping, 10.0, 1 / 3).capacity == 10


def test_mmck_for_unbounded_queue_is_mmc() -> None:
    result = mmck_for(PoolConfig(workers=4, queue_size=None), 10.0, 1 / 3)
    reference = mmc(10.0, 1 / 3, 4)
    assert result.capacity is None
    assert (result.blocking, result.throughput, result.utilisation) == (0.0, 10.0, reference.rho)
    assert result.mean_response == reference.mean_response
    with pytest.raises(ConfigError) as error:
        mmck_for(PoolConfig(workers=4, queue_size=None), 12.0, 1 / 3)
    assert error.value.field == "arrival_rate"


@pytest.mark.parametrize(("changes", "field"), [({"backpressure": "block"}, "backpressure"),
                                                ({"backpressure": "caller_runs"}, "backpressure"),
                                                ({"job_timeout": 5.0}, "job_timeout")])
def test_mmck_for_refuses_what_is_not_mmck(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as error:
        mmck_for(PoolConfig(workers=2, queue_size=3, **changes), 1.0, 1.0)  # type: ignore[arg-type]
    assert error.value.field == field


# -- G/G/c --------------------------------------------------------------------------------


@given(servers, utilisations, mean_services)
def test_kingman_with_exponential_times_is_exact_mmc(c: int, rho: float, service: float) -> None:
    lam = rho * c / service
    assert kingman(lam, service, c, 1.0, 1.0) == pytest.approx(mmc(lam, service, c).mean_wait)


@given(utilisations, mean_services, st.floats(0.0, 4.0), st.floats(0.0, 4.0))
def test_kingman_single_server_formula(rho: float, service: float, ca2: float,
                                       cs2: float) -> None:
    expected = rho / (1 - rho) * (ca2 + cs2) / 2 * service
    assert kingman(rho / service, service, 1, ca2, cs2) == pytest.approx(expected)


def test_kingman_md1_is_pollaczek_khinchine() -> None:
    rho, mu = 0.8, 2.0
    assert kingman(rho * mu, 1 / mu, 1, 1.0, 0.0) == pytest.approx(rho / (2 * mu * (1 - rho)))


# -- invalid input ----------------------------------------------------------------------

BAD_RATES = [0, -1.0, math.nan, math.inf, True, "1", None, 10**400]


@pytest.mark.parametrize("value", BAD_RATES)
def test_bad_rates_are_config_errors(value: object) -> None:
    bad: Any = value
    calls: list[tuple[Callable[[], object], str]] = [
        (lambda: erlang_c(bad, 1.0, 2), "arrival_rate"),
        (lambda: erlang_b(1.0, bad, 2), "service_rate"),
        (lambda: mmc(1.0, bad, 2), "mean_service"),
        (lambda: mmck(bad, 1.0, 2, 3), "arrival_rate"),
    ]
    for call, field in calls:
        with pytest.raises(ConfigError) as error:
            call()
        assert (error.value.field, error.value.value) == (field, value) or math.isnan(
            error.value.value)


@pytest.mark.parametrize("value", [0, -3, 2.0, True, np.float64(3.0), None])
def test_bad_server_counts_are_config_errors(value: object) -> None:
    with pytest.raises(ConfigError) as error:
        mmc(1.0, 0.1, value)  # type: ignore[arg-type]
    assert error.value.field == "servers"


def test_numpy_integers_are_server_counts() -> None:
    assert mmc(1.0, 1.0, np.int64(2)) == mmc(1.0, 1.0, 2)  # type: ignore[arg-type]


@pytest.mark.parametrize(("lam", "c"), [(4.0, 4), (5.0, 4), (1.0, 1)])
def test_unstable_infinite_queue_is_a_config_error(lam: float, c: int) -> None:
    for call in (lambda: mmc(lam, 1.0, c), lambda: erlang_c(lam, 1.0, c),
                 lambda: kingman(lam, 1.0, c, 1.0, 1.0)):
        with pytest.raises(ConfigError, match="rho") as error:
            call()
        assert error.value.field == "arrival_rate"
        assert isinstance(error.value, ValueError)


def test_other_bad_arguments() -> None:
    with pytest.raises(ConfigError) as error:
        mmck(1.0, 1.0, 4, 3)
    assert (error.value.field, error.value.allowed) == ("capacity", "an integer >= 4")
    with pytest.raises(ConfigError) as error:
        kingman(0.5, 1.0, 1, -1.0, 1.0)
    assert error.value.field == "ca2"
    for p in (1.0, -0.1, math.nan):
        with pytest.raises(ConfigError) as error:
            mmc(0.5, 1.0, 1).wait_quantile(p)
        assert error.value.field == "p"
        with pytest.raises(ConfigError):
            mmc(0.5, 1.0, 1).response_quantile(p)


# -- Little's law on a jobs frame ---------------------------------------------------------

FRAME = jobs_frame([
    JobRecord(0, "t", "q", 0.0, 0.0, 2.0, "completed", 0, 1),
    JobRecord(1, "t", "q", 1.0, 1.0, 2.0, "completed", 1, 1),
    JobRecord(2, "t", "q", 1.5, math.nan, 1.5, "rejected", None, 1),
    JobRecord(3, "t", "q", 3.0, 3.0, 4.0, "completed", 0, 1),
])


def test_littles_law_over_the_whole_run_is_exact() -> None:
    check = littles_law(FRAME)
    assert check == LittlesLaw(start_s=0.0, end_s=4.0, jobs=3, mean_in_system=1.0,
                               throughput=0.75, mean_time_in_system=4 / 3)
    assert check.lambda_w == pytest.approx(1.0)
    assert check.relative_error == pytest.approx(0.0, abs=1e-15)
    assert str(check) == ("Little's law over 0..4 s: L = 1 jobs (time average) vs "
                          "lambda W = 0.75/s x 1.333 s = 1 jobs (+0.00%)")


def test_littles_law_in_a_window_counts_overlap_and_departures() -> None:
    check = littles_law(FRAME, window=(1.0, 3.0))
    assert (check.mean_in_system, check.jobs, check.throughput) == (1.0, 2, 1.0)
    assert check.mean_time_in_system == pytest.approx(1.5)
    assert check.relative_error == pytest.approx(-0.5)


def test_littles_law_bad_input() -> None:
    with pytest.raises(ConfigError) as error:
        littles_law(FRAME.drop(columns=["end_s"]))
    assert (error.value.field, error.value.value) == ("jobs", ["end_s"])
    with pytest.raises(ConfigError) as error:
        littles_law(FRAME, window=(3.0, 1.0))
    assert error.value.field == "window"
    empty = littles_law(FRAME.iloc[:0])
    assert empty.jobs == 0 and math.isnan(empty.mean_in_system) and math.isnan(empty.relative_error)
