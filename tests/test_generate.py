"""Generated traces: seeded, valid, and at the rates they promise.

Statistical checks use fixed seeds and long runs, with tolerances of several
standard errors that a wrong formula (a rate off by a state, a missing factor)
would still break; they never depend on luck.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from poolsim import (
    TRACE_COLUMNS,
    ConfigError,
    ServiceTime,
    TraceError,
    bursty,
    diurnal,
    from_counts,
    load_trace,
    poisson,
)

GENERATORS: dict[str, Callable[..., pd.DataFrame]] = {
    "poisson": lambda **kw: poisson(2.0, 300, **kw),
    "poisson-n": lambda **kw: poisson(2.0, n=500, **kw),
    "bursty": lambda **kw: bursty(300, rate_on=10, mean_on_s=5, mean_off_s=20, **kw),
    "diurnal": lambda **kw: diurnal(3_600, mean_rate=1, period_s=600, **kw),
    "from_counts": lambda **kw: from_counts([5, 0, 12, 3], **kw),
}


@pytest.mark.parametrize("make", GENERATORS.values(), ids=GENERATORS.keys())
def test_same_seed_same_trace_other_seed_other_trace(make: Callable[..., pd.DataFrame]) -> None:
    service = ("lognormal", 2.0, 0.5)
    first = make(service=service, seed=42)
    pd.testing.assert_frame_equal(first, make(service=service, seed=42))
    pd.testing.assert_frame_equal(first, make(service=service, seed=np.random.default_rng(42)))
    other = make(service=service, seed=43)
    assert not (len(other) == len(first) and np.array_equal(other["arrival_s"],
                                                            first["arrival_s"]))


@pytest.mark.parametrize("make", GENERATORS.values(), ids=GENERATORS.keys())
def test_generated_traces_are_valid_traces(make: Callable[..., pd.DataFrame]) -> None:
    trace = make(service=1.5, seed=1, task_type="render", queue="gpu")
    assert list(trace.columns) == list(TRACE_COLUMNS)
    pd.testing.assert_frame_equal(load_trace(trace), trace)
    assert (trace["service_s"] == 1.5).all()
    assert set(trace["task_type"]) == {"render"} and set(trace["queue"]) == {"gpu"}


def test_generators_do_not_touch_the_global_rng() -> None:
    np.random.seed(0)
    expected = np.random.random()
    np.random.seed(0)
    poisson(1.0, 100, service=("exponential", 1.0), seed=1)
    assert np.random.random() == expected


# -- poisson ----------------------------------------------------------------------------


def test_poisson_mean_rate_over_a_long_run() -> None:
    trace = poisson(5.0, 20_000, service=1.0, seed=2)  # 100 000 expected, sd 316 (0.3 %)
    assert len(trace) / 20_000 == pytest.approx(5.0, rel=0.02)
    assert trace["arrival_s"].max() < 20_000


def test_poisson_with_n_gives_exactly_n_jobs_with_exponential_gaps() -> None:
    trace = poisson(4.0, n=50_000, service=1.0, seed=3)
    gaps = np.diff(trace["arrival_s"], prepend=0.0)
    assert len(trace) == 50_000 and (gaps >= 0).all()
    assert gaps.mean() == pytest.approx(0.25, rel=0.02)  # sd of the mean: 0.45 %
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.03)  # exponential: cv 1


@pytest.mark.parametrize(("args", "kwargs", "field"), [
    ((0, 10), {}, "rate"),
    ((-1, 10), {}, "rate"),
    ((math.inf, 10), {}, "rate"),
    ((1, None), {}, "duration_s"),
    ((1, 10), {"n": 5}, "duration_s"),
    ((1, 0), {}, "duration_s"),
    ((1,), {"n": 0}, "n"),
    ((1,), {"n": 2.0}, "n"),
])
def test_poisson_checks_its_arguments(args: tuple[Any, ...], kwargs: dict[str, Any],
                                      field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        poisson(*args, **kwargs, service=1.0, seed=0)
    assert caught.value.field == field


def test_a_run_without_arrivals_is_a_trace_error() -> None:
    with pytest.raises(TraceError, match="poisson: no job arrived"):
        poisson(1e-9, 1, service=1.0, seed=0)


# -- bursty -----------------------------------------------------------------------------


def test_bursty_mean_rate_over_a_long_run() -> None:
    # about 25 000 on/off cycles: the share of time "on" has a sd of about 1 %
    trace = bursty(1_000_000, rate_on=2.0, mean_on_s=10, mean_off_s=30, rate_off=0.1,
                   service=1.0, seed=4)
    expected = (2.0 * 10 + 0.1 * 30) / (10 + 30)
    assert len(trace) / 1_000_000 == pytest.approx(expected, rel=0.05)


def test_bursty_is_burstier_than_poisson_at_the_same_rate() -> None:
    def dispersion(trace: pd.DataFrame) -> float:
        counts = np.bincount(trace["arrival_s"].astype(int))
        return float(counts.var() / counts.mean())

    bursts = bursty(20_000, rate_on=8, mean_on_s=5, mean_off_s=35, service=1.0, seed=5)
    steady = poisson(1.0, 20_000, service=1.0, seed=5)
    assert dispersion(steady) == pytest.approx(1.0, abs=0.1)
    assert dispersion(bursts) > 5  # about 1 + 2 * 8^2 * 5 * 35^2 / 40^3 / 1 = 13 in theory


def test_bursty_starts_in_either_state_from_the_seed() -> None:
    # "on" 1 % of the time: most seeds start off, so the first arrival comes late
    firsts = [bursty(1_000, rate_on=100, mean_on_s=1, mean_off_s=99, service=1.0,
                     seed=seed)["arrival_s"].iloc[0] for seed in range(40)]
    assert min(firsts) < 1 < 10 < max(firsts)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"rate_on": 0, "rate_off": 0}, "rate_on"),
    ({"rate_on": -1}, "rate_on"),
    ({"rate_off": math.nan}, "rate_off"),
    ({"mean_on_s": 0}, "mean_on_s"),
    ({"mean_off_s": -3}, "mean_off_s"),
])
def test_bursty_checks_its_arguments(kwargs: dict[str, Any], field: str) -> None:
    options = {"rate_on": 1.0, "mean_on_s": 1.0, "mean_off_s": 1.0, **kwargs}
    with pytest.raises(ConfigError) as caught:
        bursty(100, **options, service=1.0, seed=0)
    assert caught.value.field == field


# -- diurnal ----------------------------------------------------------------------------


def test_diurnal_follows_its_rate_curve_hour_by_hour() -> None:
    days, rate, amplitude = 10, 0.5, 0.8
    trace = diurnal(days * 86_400, mean_rate=rate, amplitude=amplitude, service=1.0, seed=6)
    assert len(trace) / (days * 86_400) == pytest.approx(rate, rel=0.02)
    hour = ((trace["arrival_s"] % 86_400) // 3_600).astype(int)
    counts = np.bincount(hour, minlength=24) / days
    edges = np.arange(25) * 3_600.0
    phase = 2 * np.pi * (edges - 43_200) / 86_400
    expected = rate * (np.diff(edges) + amplitude * 86_400 / (2 * np.pi) * np.diff(np.sin(phase)))
    # the quietest hour holds ~3 700 jobs over 10 days: sd 1.6 %
    np.testing.assert_allclose(counts, expected, rtol=0.08)
    assert counts.argmax() in (11, 12) and counts.argmin() in (23, 0)


def test_diurnal_peak_moves_with_peak_s() -> None:
    trace = diurnal(10 * 3_600, mean_rate=1, amplitude=1, period_s=3_600, peak_s=900,
                    service=1.0, seed=7)
    angle = 2 * np.pi * trace["arrival_s"] / 3_600
    # the arrivals' mean direction on the hour's clock face is the peak; ~36 000 jobs pin
    # it to well under a degree (10 s), so 20 s is a generous bound
    peak = np.arctan2(np.sin(angle).sum(), np.cos(angle).sum()) * 3_600 / (2 * np.pi)
    assert peak == pytest.approx(900, abs=20)
    minute = ((trace["arrival_s"] % 3_600) // 60).astype(int)
    assert minute.between(44, 46).sum() < 0.001 * len(trace)  # silent at the trough (45)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"mean_rate": 0}, "mean_rate"),
    ({"amplitude": 1.5}, "amplitude"),
    ({"amplitude": -0.1}, "amplitude"),
    ({"period_s": 0}, "period_s"),
    ({"peak_s": math.inf}, "peak_s"),
])
def test_diurnal_checks_its_arguments(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        diurnal(100, **{"mean_rate": 1.0, **kwargs}, service=1.0, seed=0)
    assert caught.value.field == field


# -- from_counts ------------------------------------------------------------------------


@given(st.lists(st.integers(0, 30), min_size=1, max_size=30).filter(any),
       st.sampled_from([1.0, 60.0, 3_600.0]), st.integers(0, 2**32 - 1))
def test_from_counts_puts_each_count_in_its_bin(counts: list[int], bin_s: float,
                                               seed: int) -> None:
    trace = from_counts(counts, bin_s=bin_s, service=1.0, seed=seed)
    bins = (trace["arrival_s"] // bin_s).astype(int)
    assert np.bincount(bins, minlength=len(counts)).tolist() == counts
    assert trace["arrival_s"].is_monotonic_increasing


def test_from_counts_takes_a_series_and_ignores_its_index() -> None:
    per_minute = pd.Series([2, 1], index=pd.to_datetime(["2024-01-01 00:05", "2024-01-01 00:06"]))
    trace = from_counts(per_minute, service=1.0, seed=0)
    assert ((trace["arrival_s"] // 60).astype(int)).tolist() == [0, 0, 1]


@pytest.mark.parametrize(("counts", "row", "value", "words"), [
    ([3, -1], 1, -1, "negative"),
    ([3, 2.5], 1, 2.5, "not a whole number"),
    ([1, math.nan, 2], 1, math.nan, "missing"),
    (["2", "many"], 1, "many", "not a number"),
    ([1, math.inf], 1, math.inf, "infinite"),
])
def test_bad_counts_name_row_and_value(counts: list[Any], row: int, value: Any,
                                       words: str) -> None:
    with pytest.raises(TraceError, match=words) as caught:
        from_counts(counts, service=1.0, seed=0)
    assert (caught.value.column, caught.value.row) == ("counts", row)
    assert caught.value.value == value or (math.isnan(value) and math.isnan(caught.value.value))


def test_all_zero_counts_are_an_empty_trace() -> None:
    with pytest.raises(TraceError, match="no job arrived"):
        from_counts([0, 0, 0], service=1.0, seed=0)


# -- service times ----------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "cv"), [
    (ServiceTime("fixed", mean=3.0), 0.0),
    (ServiceTime("exponential", mean=3.0), 1.0),
    (ServiceTime("lognormal", mean=3.0, cv=0.6), 0.6),
    (ServiceTime("gamma", mean=3.0, cv=2.0), 2.0),
])
def test_service_times_have_their_mean_and_cv(spec: ServiceTime, cv: float) -> None:
    drawn = spec.sample(np.random.default_rng(8), 400_000)
    assert (drawn >= 0).all() and spec.cv == cv
    # sd of the sample mean: cv / sqrt(n) <= 0.32 %; of the sample cv: a few times that
    assert drawn.mean() == pytest.approx(3.0, rel=0.02)
    assert drawn.std() / drawn.mean() == pytest.approx(cv, rel=0.05, abs=1e-12)


@pytest.mark.parametrize(("service", "mean", "cv"), [
    (2, 2.0, 0.0),
    (0.0, 0.0, 0.0),
    (("exponential", 2.0), 2.0, 1.0),
    (("gamma", 2.0, 0.5), 2.0, 0.5),
    (("fixed", 4.0), 4.0, 0.0),
])
def test_service_shorthands(service: Any, mean: float, cv: float) -> None:
    trace = poisson(1.0, n=100_000, service=service, seed=9)
    drawn = trace["service_s"]
    assert drawn.mean() == pytest.approx(mean, rel=0.02, abs=1e-12)
    assert drawn.std() / max(drawn.mean(), 1e-12) == pytest.approx(cv, rel=0.05, abs=1e-12)


def test_a_callable_service_gets_the_rng_and_the_count() -> None:
    calls: list[int] = []

    def uniform(rng: np.random.Generator, n: int) -> np.ndarray:
        calls.append(n)
        return rng.uniform(1.0, 2.0, n)

    trace = poisson(1.0, n=7, service=uniform, seed=1)
    assert calls == [7] and trace["service_s"].between(1.0, 2.0).all()


@pytest.mark.parametrize(("service", "error", "words"), [
    (lambda rng, n: np.ones(n + 1), TraceError, "one value per job"),
    (lambda rng, n: -np.ones(n), TraceError, "service_s at row 0 is negative"),
    (("weibull", 1.0), ConfigError, "distribution"),
    (("lognormal", 1.0), ConfigError, "cv"),
    (("exponential", 1.0, 0.5), ConfigError, "cv"),
    (("fixed", 1.0, 0.1), ConfigError, "cv"),
    (("gamma", 1.0, 0.0), ConfigError, "cv"),
    (("exponential", 0.0), ConfigError, "mean"),
    (-1.0, ConfigError, "mean"),
    (True, ConfigError, "service"),
    ("2", ConfigError, "service"),
    ((1.0,), ConfigError, "service"),
])
def test_bad_service_specs_are_refused(service: Any, error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words):
        poisson(1.0, n=3, service=service, seed=0)
