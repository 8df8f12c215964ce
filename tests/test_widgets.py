"""The dashboard, driven headlessly: set a control's value, read what it shows.

No kernel and no front end: outside a kernel a widget's observers run at once
when ``.value`` is set, so each test moves a control and asserts on the
returned objects (the ``SimResult``, the summary HTML, the figure's artists,
the PNG), never on captured output. Speed is measured in
``bench/widget_latency.py``, not here.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import ipywidgets  # type: ignore[import-untyped]
import matplotlib.pyplot as plt  # only to check that no pyplot figure is left open
import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes

from poolsim import (
    ConfigError,
    PoolConfig,
    ShutdownPolicy,
    TraceError,
    poisson,
    queue_depth,
    simulate,
)
from poolsim.widgets import CacheInfo, Dashboard, _decimate, dashboard

SLO = 1.0


@pytest.fixture(scope="module")
def trace() -> pd.DataFrame:
    """5,000 jobs at 20/s, 0.3 s each on average: about 6 busy workers."""
    return poisson(20.0, n=5_000, service=("exponential", 0.3), seed=7)


@pytest.fixture
def dash(trace: pd.DataFrame) -> Dashboard:
    return dashboard(trace, config=PoolConfig(workers=4, queue_size=10), slo=SLO)


@pytest.fixture(autouse=True)
def no_pyplot_figures() -> Iterator[None]:
    before = plt.get_fignums()
    yield
    assert plt.get_fignums() == before, "the dashboard must not use pyplot"


def depth_axes(dash: Dashboard) -> Axes:
    return dash.figure.axes[0]


def latency_axes(dash: Dashboard) -> Axes:
    return dash.figure.axes[1]


def depth_line(dash: Dashboard) -> np.ndarray:
    return np.asarray(depth_axes(dash).lines[0].get_ydata(), dtype=float)


def labels(ax: Axes) -> list[str]:
    return ax.get_legend_handles_labels()[1]


# -- what it is -------------------------------------------------------------------------


def test_is_a_widget_with_controls_charts_and_summary(dash: Dashboard) -> None:
    assert isinstance(dash, ipywidgets.VBox)
    assert set(dash.controls) == {"workers", "queue_size", "load", "job_timeout",
                                  "backpressure", "shutdown", "shutdown_at"}
    for name in ("workers", "queue_size", "load", "job_timeout", "shutdown_at"):
        assert dash.controls[name].continuous_update is False, name
    assert dash.controls["workers"].value == 4
    assert dash.controls["queue_size"].value == 10
    assert dash.controls["load"].value == 1.0
    assert dash.controls["job_timeout"].value == math.inf  # off
    assert dash.controls["shutdown_at"].value == math.inf  # off by default...
    assert dash.controls["shutdown"].disabled  # ...so the shutdown policy does nothing yet
    assert list(dash.controls["backpressure"].options) == [
        "reject", "block", "drop_oldest", "caller_runs"]
    assert list(dash.controls["shutdown"].options) == ["drain", "finish_in_flight", "immediate"]
    queue_values = [value for _, value in dash.controls["queue_size"].options]
    assert queue_values[0] == 0 and queue_values[-1] == math.inf
    assert dash.controls["queue_size"].options[-1][0] == "\u221e"
    # the layout holds every control, the chart image and the summary
    shown = set()
    stack: list[ipywidgets.Widget] = [dash]
    while stack:
        widget = stack.pop()
        shown.add(widget)
        stack.extend(getattr(widget, "children", ()))
    assert {*dash.controls.values(), dash.image, dash.summary_widget, dash.status} <= shown
    assert bytes(dash.image.value).startswith(b"\x89PNG")
    assert dash.summary_widget.value == dash.summary_html
    assert "<table" in dash.summary_html
    assert dash.error is None
    assert dash.last_result.engine == "fast"
    assert depth_axes(dash).get_title() == "Queue depth over time"
    assert latency_axes(dash).get_title().startswith("Latency of completed jobs")


def test_shows_what_simulate_returns(trace: pd.DataFrame, dash: Dashboard) -> None:
    expected = simulate(trace, PoolConfig(workers=4, queue_size=10), seed=1)
    pd.testing.assert_frame_equal(dash.last_result.jobs, expected.jobs)
    assert dash.config == PoolConfig(workers=4, queue_size=10)
    assert f"{expected.summary.counts['rejected']:,}" in dash.summary_html


def test_displays_in_a_notebook(dash: Dashboard) -> None:
    bundle = dash._repr_mimebundle_()
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == dash.model_id
    assert repr(dash).startswith("Dashboard(5,000 jobs, PoolConfig(workers=4, queue_size=10")


# -- moving the controls ----------------------------------------------------------------


def test_more_workers_fewer_rejections_lower_p99(dash: Dashboard) -> None:
    before, line, html = dash.last_result, depth_line(dash), dash.summary_html
    png = bytes(dash.image.value)
    dash.controls["workers"].value = 8
    after = dash.last_result
    assert after is not before
    assert after.config.workers == 8
    assert after.summary.counts["rejected"] < before.summary.counts["rejected"]
    assert after.summary.latency_p99 < before.summary.latency_p99
    assert not np.array_equal(depth_line(dash), line)
    assert dash.summary_html != html
    assert f"{after.summary.counts['completed']:,}" in dash.summary_html
    assert bytes(dash.image.value) != png
    assert dash.figure.get_suptitle().startswith("8 workers, queue 10, reject")
    assert latency_axes(dash).get_title() == (
        f"Latency of completed jobs (n={after.summary.counts['completed']:,})")


def test_a_repeated_setting_is_a_cache_hit(dash: Dashboard) -> None:
    assert dash.cache_info() == CacheInfo(hits=0, misses=1, maxsize=8, currsize=1)
    dash.controls["workers"].value = 8
    eight, line, png = dash.last_result, depth_line(dash), bytes(dash.image.value)
    dash.controls["workers"].value = 5
    assert dash.last_result is not eight
    dash.controls["workers"].value = 8
    assert dash.last_result is eight  # the same SimResult object, not an equal one
    assert dash.cache_info() == CacheInfo(hits=1, misses=3, maxsize=8, currsize=3)
    assert dash.timings["simulate"] == 0.0 and dash.timings["render"] == 0.0
    np.testing.assert_array_equal(depth_line(dash), line)  # the figure shows it again
    assert bytes(dash.image.value) == png
    assert "cached result" in dash.status.value


def test_the_cache_is_a_bounded_lru(trace: pd.DataFrame) -> None:
    dash = dashboard(trace, config=PoolConfig(workers=4, queue_size=10), cache_size=2)
    four = dash.last_result
    dash.controls["workers"].value = 5
    dash.controls["workers"].value = 4  # a hit: 4 is now the most recent
    assert dash.last_result is four
    dash.controls["workers"].value = 6  # evicts 5, the least recently used
    assert dash.cache_info() == CacheInfo(hits=1, misses=3, maxsize=2, currsize=2)
    dash.controls["workers"].value = 4
    assert dash.last_result is four
    dash.controls["workers"].value = 5
    assert dash.cache_info().misses == 4


def test_queue_size_zero_and_unbounded(dash: Dashboard) -> None:
    dash.controls["queue_size"].value = math.inf
    assert dash.last_result.config.queue_size is None
    assert dash.summary.counts["rejected"] == 0
    assert "queue \u221e" in dash.figure.get_suptitle()
    dash.controls["queue_size"].value = 0
    assert dash.last_result.config.queue_size == 0
    assert depth_line(dash).max() == 0  # hand-off only: nobody waits
    with pytest.raises(Exception, match="Invalid selection"):
        dash.controls["queue_size"].value = 7  # not on the slider


def test_load_factor_is_passed_to_simulate(trace: pd.DataFrame, dash: Dashboard) -> None:
    dash.controls["load"].value = 2.0
    expected = simulate(trace, PoolConfig(workers=4, queue_size=10), seed=1, load=2.0)
    pd.testing.assert_frame_equal(dash.last_result.jobs, expected.jobs)
    assert len(dash.last_result.trace) == 2 * len(trace)
    assert "load \u00d72" in dash.figure.get_suptitle()


def test_job_timeout_off_or_a_percentile_of_service(dash: Dashboard) -> None:
    options = dash.controls["job_timeout"].options
    assert options[0] == ("off", math.inf)
    seconds = next(value for label, value in options if label.endswith("(p90)"))
    dash.controls["job_timeout"].value = seconds
    assert dash.last_result.config.job_timeout == seconds
    timeouts = dash.summary.counts["timeout"]
    assert 0.05 * 5_000 < timeouts < 0.15 * 5_000  # about 10% of started jobs run past p90
    assert "timeout" in dash.summary_html
    dash.controls["job_timeout"].value = math.inf
    assert dash.last_result.config.job_timeout is None
    assert dash.summary.counts["timeout"] == 0


def test_block_uses_the_simpy_engine(dash: Dashboard) -> None:
    dash.controls["backpressure"].value = "block"
    assert dash.last_result.engine == "simpy"
    assert dash.last_result.config.backpressure == "block"
    assert "<b>simpy</b> engine" in dash.status.value
    dash.controls["backpressure"].value = "drop_oldest"
    assert dash.last_result.engine == "fast"
    assert dash.summary.counts["dropped"] > 0


def test_shutdown_at_a_time_in_the_trace(trace: pd.DataFrame, dash: Dashboard) -> None:
    misses = dash.cache_info().misses
    dash.controls["shutdown"].value = "immediate"  # shutdown at is off: nothing to simulate
    assert dash.cache_info().misses == misses
    assert dash.last_result.shutdown is None
    options = dash.controls["shutdown_at"].options
    arrival = trace["arrival_s"]
    assert options[1][1] == arrival.iloc[0] and options[-1][1] == arrival.iloc[-1]
    at = options[len(options) // 2][1]
    dash.controls["shutdown_at"].value = at
    result = dash.last_result
    assert not dash.controls["shutdown"].disabled
    assert result.engine == "simpy"
    assert result.shutdown is not None
    assert (result.shutdown.at, result.shutdown.policy) == (at, "immediate")
    config = PoolConfig(workers=4, queue_size=10, shutdown=ShutdownPolicy.IMMEDIATE)
    expected = simulate(trace, config, seed=1, shutdown_at=at)
    pd.testing.assert_frame_equal(result.jobs, expected.jobs)
    assert result.summary.counts["rejected"] > len(trace) // 3  # later arrivals are refused
    assert "immediate at" in dash.summary_html
    vertical = [label for label in labels(depth_axes(dash)) if "shutdown at" in label]
    assert vertical == [f"immediate shutdown at {at:.4g} s"]
    dash.controls["shutdown_at"].value = math.inf
    assert dash.last_result.shutdown is None and dash.last_result.engine == "fast"


def test_slo_line_and_share_over_it(dash: Dashboard) -> None:
    assert any(label.startswith(f"SLO {SLO:g} s") for label in labels(latency_axes(dash)))
    jobs = dash.last_result.jobs
    done = jobs[jobs["status"] == "completed"]
    over = float(((done["end_s"] - done["arrival_s"]) > SLO).mean())
    assert f"over SLO 1 s</th><td style='text-align:right;padding:0'>{over:.2%}</td>" \
        in dash.summary_html


def test_queue_depth_line_is_decimated_but_keeps_its_peak(trace: pd.DataFrame) -> None:
    dash = dashboard(trace, config=PoolConfig(workers=5, queue_size=None), max_points=200)
    full = queue_depth(dash.last_result.jobs)
    assert len(full) > 1_000
    drawn = depth_line(dash)
    assert len(drawn) <= 200
    assert drawn.max() == full.max()
    times = np.asarray(depth_axes(dash).lines[0].get_xdata(), dtype=float)
    assert times[0] == full.index[0] and times[-1] == full.index[-1]
    assert labels(depth_axes(dash))[0].endswith(f"max {full.max():g})")


def test_decimate_keeps_ends_and_extremes() -> None:
    rng = np.random.default_rng(3)
    times = np.cumsum(rng.exponential(1.0, 50_000))
    values = np.cumsum(rng.choice([-1.0, 1.0], 50_000))
    kept_t, kept_v = _decimate(times, values, 400)
    assert len(kept_t) <= 400
    assert np.all(np.diff(kept_t) > 0)
    assert (kept_t[0], kept_t[-1]) == (times[0], times[-1])
    assert (kept_v.max(), kept_v.min()) == (values.max(), values.min())
    assert set(kept_t) <= set(times)
    short_t, short_v = _decimate(times[:100], values[:100], 400)  # short enough already
    np.testing.assert_array_equal(short_t, times[:100])
    np.testing.assert_array_equal(short_v, values[:100])


# -- errors and manners -----------------------------------------------------------------


def test_an_empty_trace_is_a_trace_error() -> None:
    with pytest.raises(TraceError, match="the trace is empty"):
        dashboard(pd.DataFrame({"arrival_s": [], "service_s": []}))


@pytest.mark.parametrize(("options", "field"), [
    ({"config": {"workers": 4}}, "config"),
    ({"slo": 0}, "slo"),
    ({"slo": math.nan}, "slo"),
    ({"cache_size": 0}, "cache_size"),
    ({"max_points": 2}, "max_points"),
])
def test_bad_arguments_are_config_errors(trace: pd.DataFrame, options: dict[str, object],
                                         field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        dashboard(trace, **options)  # type: ignore[arg-type]
    assert caught.value.field == field


def test_a_setting_that_fails_is_shown_not_raised() -> None:
    tiny = pd.DataFrame({"arrival_s": [0.0, 1.0, 2.0], "service_s": [0.5, 0.5, 0.5]})
    dash = dashboard(tiny)
    shown = dash.last_result
    dash.controls["load"].value = 0.1  # thinning keeps none of the 3 jobs
    assert isinstance(dash.error, TraceError)
    assert "kept none of the 3 jobs" in dash.status.value
    assert dash.last_result is shown  # the charts still show the last good result
    dash.controls["load"].value = 1.0
    assert dash.error is None and dash.last_result is shown


def test_callbacks_never_print(dash: Dashboard, capsys: pytest.CaptureFixture[str]) -> None:
    dash.controls["workers"].value = 6
    dash.controls["backpressure"].value = "caller_runs"
    dash.controls["load"].value = 0.5
    dash.controls["workers"].value = 4
    assert capsys.readouterr() == ("", "")


def test_close_closes_every_widget_and_drops_the_cache(dash: Dashboard) -> None:
    dash.controls["workers"].value = 6
    parts = [*dash.controls.values(), dash.image, dash.summary_widget, dash.status]
    parts += [part.layout for part in parts]
    assert all(part.comm is not None for part in [dash, *parts])
    dash.close()
    assert all(part.comm is None for part in [dash, *parts])
    assert dash.cache_info().currsize == 0
    dash.controls["workers"].value = 7  # a closed dashboard no longer follows its controls
    assert dash.cache_info().misses == 2


def test_timings_add_up(dash: Dashboard) -> None:
    dash.controls["workers"].value = 7
    timings = dash.timings
    assert set(timings) == {"simulate", "draw", "render", "total"}
    assert all(value >= 0 for value in timings.values())
    assert timings["total"] >= timings["draw"] + timings["render"]
