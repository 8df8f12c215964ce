"""Reshaping traces: windows, time compression, load scaling and timestamps keep their promises."""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from poolsim import (
    ConfigError,
    TraceError,
    compress,
    from_timestamps,
    load_trace,
    poisson,
    scale_load,
    window,
)
from tests.strategies import trace_frames

factors = st.floats(min_value=0.05, max_value=4.0, allow_nan=False)
seeds = st.integers(0, 2**32 - 1)


def trace_of(arrivals: list[float], **extra: Any) -> pd.DataFrame:
    return load_trace(pd.DataFrame({"arrival_s": arrivals, "service_s": 1.0, **extra}))


def unchanged(function: Any, trace: pd.DataFrame, *args: Any, **kwargs: Any) -> pd.DataFrame:
    """Call ``function(trace, ...)`` and check it left ``trace`` as it was."""
    before = trace.copy()
    result = function(trace, *args, **kwargs)
    pd.testing.assert_frame_equal(trace, before)
    assert result is not trace
    return result  # type: ignore[no-any-return]


# -- window -----------------------------------------------------------------------------


def test_window_keeps_start_drops_end_and_rebases() -> None:
    trace = trace_of([0, 5, 10, 15], tokens=[1, 2, 3, 4])
    cut = unchanged(window, trace, 5, 15)
    assert cut["arrival_s"].tolist() == [0.0, 5.0]
    assert cut["tokens"].tolist() == [2, 3]  # extra columns travel with their jobs
    assert window(trace, 5, 15, rebase=False)["arrival_s"].tolist() == [5.0, 10.0]
    assert window(trace, 10)["arrival_s"].tolist() == [0.0, 5.0]  # end_s=None: to the end


def test_an_empty_window_is_a_trace_error() -> None:
    with pytest.raises(TraceError, match=r"no job arrives in \[16, 20\); arrivals span 0.0 to 15"):
        window(trace_of([0, 5, 10, 15]), 16, 20)


@pytest.mark.parametrize(("start", "end", "field"), [
    (5, 5, "end_s"), (5, 1, "end_s"), (math.nan, 1, "start_s"), (0, math.inf, "end_s"),
    ("0", 1, "start_s"),
])
def test_window_bounds_are_checked(start: Any, end: Any, field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        window(trace_of([0, 1]), start, end)
    assert caught.value.field == field


@given(trace_frames(), st.floats(0, 1e5), st.floats(1e-3, 1e5))
def test_window_keeps_exactly_the_jobs_inside(trace: pd.DataFrame, start: float,
                                              width: float) -> None:
    inside = (trace["arrival_s"] >= start) & (trace["arrival_s"] < start + width)
    assume(inside.any())
    cut = window(trace, start, start + width, rebase=False)
    pd.testing.assert_frame_equal(cut, trace[inside].reset_index(drop=True))
    rebased = window(trace, start, start + width)
    np.testing.assert_array_equal(rebased["arrival_s"], cut["arrival_s"] - start)
    assert rebased["arrival_s"].min() >= 0 and rebased["arrival_s"].is_monotonic_increasing


# -- compress ---------------------------------------------------------------------------


@given(trace_frames(), st.floats(min_value=1e-3, max_value=1e3))
def test_compress_divides_arrivals_and_keeps_everything_else(trace: pd.DataFrame,
                                                             factor: float) -> None:
    squeezed = unchanged(compress, trace, factor)
    np.testing.assert_array_equal(squeezed["arrival_s"], trace["arrival_s"] / factor)
    pd.testing.assert_frame_equal(squeezed.drop(columns="arrival_s"),
                                  trace.drop(columns="arrival_s"))
    assert squeezed["arrival_s"].is_monotonic_increasing


@pytest.mark.parametrize("factor", [0, -2, math.nan, math.inf, "10", True])
def test_compress_factor_is_checked(factor: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        compress(trace_of([0, 1]), factor)
    assert caught.value.field == "factor"


def test_compress_makes_the_alibaba_trace_busier() -> None:
    trace = load_trace("alibaba_genai_lora_2024-11")
    squeezed = compress(trace, 20)
    assert len(squeezed) == len(trace)
    assert squeezed["arrival_s"].iloc[-1] == pytest.approx(1_320_314 / 20)
    offered = squeezed["service_s"].sum() / squeezed["arrival_s"].iloc[-1]
    assert offered == pytest.approx(20 * 0.29, rel=0.02)  # the note: 0.29 busy workers


# -- scale_load -------------------------------------------------------------------------


@given(trace_frames(min_rows=2), factors, seeds)
def test_scale_load_stays_sorted_within_hard_bounds(trace: pd.DataFrame, factor: float,
                                                    seed: int) -> None:
    try:
        scaled = unchanged(scale_load, trace, factor, seed=seed)
    except TraceError as error:  # thinning kept nothing: allowed, and said plainly
        assert "kept none" in str(error) and factor < 1
        return
    n, whole = len(trace), math.floor(factor)
    assert n * whole <= len(scaled) <= n * math.ceil(factor)
    assert scaled["arrival_s"].is_monotonic_increasing
    assert scaled["arrival_s"].min() >= trace["arrival_s"].min()
    spacing = (trace["arrival_s"].iloc[-1] - trace["arrival_s"].iloc[0]) / (n - 1)
    assert scaled["arrival_s"].max() <= trace["arrival_s"].max() + spacing
    assert list(scaled.columns) == list(trace.columns)
    pd.testing.assert_frame_equal(scale_load(trace, factor, seed=seed), scaled)


@given(trace_frames(), st.integers(1, 4), seeds)
def test_whole_factors_copy_every_job_exactly(trace: pd.DataFrame, factor: int,
                                              seed: int) -> None:
    scaled = scale_load(trace, factor, seed=seed)
    assert len(scaled) == factor * len(trace)
    key = ["service_s", "task_type", "queue"]
    copies = pd.concat([trace[key]] * factor).sort_values(key, ignore_index=True)
    pd.testing.assert_frame_equal(scaled[key].sort_values(key, ignore_index=True), copies)


def test_factor_one_is_the_trace_itself() -> None:
    trace = trace_of([0, 1, 1, 4], task_type=["a", "b", "c", "d"])
    pd.testing.assert_frame_equal(scale_load(trace, 1, seed=0), trace)


def test_copies_are_shifted_less_than_one_mean_gap() -> None:
    trace = trace_of([0.0, 100.0])  # mean inter-arrival 100 s
    scaled = scale_load(trace, 2, seed=7)
    assert scaled["arrival_s"].tolist()[0::2] == [0.0, 100.0]  # the original, unshifted
    shift = scaled["arrival_s"][1] - scaled["arrival_s"][0]
    assert 0 <= shift < 100 and scaled["arrival_s"][3] - scaled["arrival_s"][2] == shift


@pytest.mark.parametrize("factor", [0.3, 2.5])
def test_scale_load_gives_about_factor_times_the_jobs(factor: float) -> None:
    trace = poisson(10.0, n=20_000, service=1.0, seed=11)
    # fractional part: Binomial(20 000, p) jobs, sd <= 71 = 0.35 % of 20 000; fixed seed
    assert len(scale_load(trace, factor, seed=3)) == pytest.approx(factor * 20_000, rel=0.01)


def test_scale_load_keeps_the_shape_of_busy_hours() -> None:
    trace = load_trace("alibaba_genai_lora_2024-11")
    hourly = (trace["arrival_s"] // 3600).value_counts()
    scaled = scale_load(trace, 3, seed=5)
    scaled_hourly = (scaled["arrival_s"] // 3600).value_counts()
    assert len(scaled) == 3 * len(trace)
    # the busiest hour is 3x as busy (copies shift < 93 s, so a few jobs change hour)
    assert scaled_hourly.max() == pytest.approx(3 * hourly.max(), rel=0.05)
    assert scaled_hourly.idxmax() == hourly.idxmax()


def test_scale_load_thinning_draws_from_the_seed() -> None:
    trace = poisson(5.0, n=1_000, service=1.0, seed=1)
    a, b = scale_load(trace, 0.5, seed=1), scale_load(trace, 0.5, seed=2)
    pd.testing.assert_frame_equal(a, scale_load(trace, 0.5, seed=1))
    assert not a["arrival_s"].equals(b["arrival_s"])
    assert set(a["arrival_s"]) <= set(trace["arrival_s"])  # thinning moves no job


@pytest.mark.parametrize("factor", [0, -1, math.nan, math.inf])
def test_scale_load_factor_is_checked(factor: float) -> None:
    with pytest.raises(ConfigError):
        scale_load(trace_of([0, 1]), factor, seed=0)


def test_thinning_everything_away_is_a_trace_error() -> None:
    with pytest.raises(TraceError, match=r"kept none of the 2 jobs"):
        scale_load(trace_of([0, 1]), 1e-9, seed=0)


# -- from_timestamps --------------------------------------------------------------------


def test_azure_style_timestamp_strings_become_seconds() -> None:
    raw = pd.DataFrame({"TIMESTAMP": ["2023-11-16 18:15:46.6805900",
                                      "2023-11-16 18:15:50.9951690"], "service_s": [1, 2]})
    before = raw.copy()
    trace = from_timestamps(raw, "TIMESTAMP")
    pd.testing.assert_frame_equal(raw, before)
    assert trace["arrival_s"].tolist() == [0.0, 4.314579]
    assert list(trace.columns) == ["arrival_s", "service_s", "task_type", "queue", "TIMESTAMP"]


@pytest.mark.parametrize(("stamps", "unit", "seconds"), [
    (pd.to_datetime(["2024-01-01 00:00:00", "2024-01-01 00:01:30"]), None, [0.0, 90.0]),
    (pd.to_datetime(["2024-03-10 01:59", "2024-03-10 03:01"]).tz_localize("America/New_York"),
     None, [0.0, 120.0]),  # across a daylight-saving jump
    (["2024-03-10T01:59:00-05:00", "2024-03-10T03:01:00-04:00"], None, [0.0, 120.0]),
    (["03/10/2024 01:59", "03/10/2024 02:01"], None, [0.0, 120.0]),
    ([1_700_000_000, 1_700_000_003], "s", [0.0, 3.0]),
    ([1_700_000_000.25, 1_700_000_003.5], "s", [0.0, 3.25]),
    ([1_700_000_000_000, 1_700_000_003_500], "ms", [0.0, 3.5]),
    ([1_700_000_000_000_000_001, 1_700_000_000_000_000_101], "ns", [0.0, 1e-7]),
    (["1700000000", "1700000002"], "s", [0.0, 2.0]),
])
def test_timestamps_of_every_kind(stamps: Any, unit: str | None, seconds: list[float]) -> None:
    trace = from_timestamps(pd.DataFrame({"t": stamps, "service_s": 1}), "t", unit=unit)
    np.testing.assert_allclose(trace["arrival_s"], seconds, rtol=0, atol=1e-12)


def test_timestamps_in_arrival_s_are_replaced() -> None:
    raw = pd.DataFrame({"arrival_s": [10, 12], "service_s": 1})
    trace = from_timestamps(raw, "arrival_s", unit="s")
    assert trace["arrival_s"].tolist() == [0.0, 2.0]
    assert list(trace.columns) == ["arrival_s", "service_s", "task_type", "queue"]


def test_from_timestamps_passes_service_and_name_on() -> None:
    raw = pd.DataFrame({"t": ["2024-01-01 00:00:00", "2024-01-01 00:00:02"], "tokens": [1, 3]})
    trace = from_timestamps(raw, "t", service=lambda f: f["tokens"] * 0.5, name="api")
    assert trace["service_s"].tolist() == [0.5, 1.5] and trace.attrs["name"] == "api"


@given(trace_frames(), st.integers(0, 2_000_000_000))
def test_timestamps_round_trip_to_the_arrival_offsets(trace: pd.DataFrame, epoch: int) -> None:
    stamps = pd.Timestamp(epoch, unit="s") + pd.to_timedelta(trace["arrival_s"], unit="s")
    raw = trace.drop(columns="arrival_s").assign(when=stamps.astype(str))
    converted = from_timestamps(raw, "when")
    expected = trace["arrival_s"] - trace["arrival_s"].iloc[0]
    np.testing.assert_allclose(converted["arrival_s"], expected, rtol=0, atol=2e-6)


@pytest.mark.parametrize(("values", "unit", "row", "words"), [
    (["2024-01-01", "yesterday"], None, 1, "not a timestamp"),
    (["2024-01-01", None], None, 1, "missing"),
    ([1.0, 2.0], None, 0, "unit='s'"),
    ([1.0, math.nan], "s", 1, "not a finite epoch number"),
    (["1", "x"], "ms", 1, "not a finite epoch number"),
    (["2024-01-02", "2024-01-01"], None, 1, 'sort_values("t", kind="stable")'),
])
def test_bad_timestamps_name_column_row_and_value(values: list[Any], unit: str | None,
                                                  row: int, words: str) -> None:
    with pytest.raises(TraceError, match=re.escape(words)) as caught:
        from_timestamps(pd.DataFrame({"t": values, "service_s": 1}), "t", unit=unit)
    assert (caught.value.column, caught.value.row) == ("t", row)
    if pd.isna(values[row]):
        assert pd.isna(caught.value.value)
    else:
        assert caught.value.value == values[row]


def test_from_timestamps_checks_its_arguments() -> None:
    raw = pd.DataFrame({"t": [1, 2], "service_s": 1})
    with pytest.raises(TraceError, match="no when column of timestamps; the columns are: t"):
        from_timestamps(raw, "when")
    with pytest.raises(ConfigError) as caught:
        from_timestamps(raw, "t", unit="minutes")
    assert caught.value.field == "unit"


def test_reshapers_keep_the_trace_name() -> None:
    trace = load_trace(pd.DataFrame({"arrival_s": [0.0, 1, 2], "service_s": 1}), name="api")
    for reshaped in (window(trace, 1), compress(trace, 2), scale_load(trace, 1.5, seed=0)):
        assert reshaped.attrs["name"] == "api"
    with pytest.raises(TraceError, match=r"^api: no job arrives"):
        window(trace, 5)
