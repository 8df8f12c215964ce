"""Charts: what each draws, read back from the returned artists (never from pixels).

Every test also checks that no pyplot figure was left open: plot functions
build ``Figure()`` objects and never touch pyplot's global state.
"""

from __future__ import annotations

import dataclasses
import io
import math
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt  # only to check that no pyplot figure is left open
import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.colors import to_rgba
from matplotlib.container import BarContainer
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from poolsim import (
    Backpressure,
    ConfigError,
    JobRecord,
    PoolConfig,
    Status,
    jobs_frame,
    plot,
    queue_depth,
)
from poolsim.metrics import DURATION_BUCKETS
from poolsim.records import summarize

NAN = math.nan


@pytest.fixture(autouse=True)
def no_pyplot_figures() -> Iterator[None]:
    assert plt.get_fignums() == []
    yield
    assert plt.get_fignums() == [], "a plot function left a pyplot figure open"


def rec(job_id: int, arrival: float, start: float, end: float, status: str,
        worker: int | None = 0) -> JobRecord:
    return JobRecord(job_id, "t", "q", arrival, start, end, status, worker, 1)


def frame_of(latencies: list[float], *, extra: Sequence[JobRecord] = ()) -> pd.DataFrame:
    """Completed jobs with the given latencies (no waiting), plus ``extra`` rows."""
    rows = [rec(i, float(i), float(i), i + lat, "completed") for i, lat in enumerate(latencies)]
    return jobs_frame([*rows, *extra])


def mixed() -> pd.DataFrame:
    """Two workers; job 2 waits 1 s; a failure, a rejection and a drop have no latency."""
    return jobs_frame([
        rec(0, 0.0, 0.0, 2.0, "completed", 0),
        rec(1, 0.0, 0.0, 1.0, "completed", 1),
        rec(2, 0.5, 1.0, 1.5, "completed", 1),
        rec(3, 1.0, 2.0, 2.2, "failed", 0),
        rec(4, 1.2, NAN, 1.2, "rejected", None),
        rec(5, 1.3, NAN, 1.8, "dropped", None),
    ])


def xs(line: Line2D) -> list[float]:
    return [float(x) for x in np.asarray(line.get_xdata(), dtype=float)]


def ys(line: Line2D) -> list[float]:
    return [float(y) for y in np.asarray(line.get_ydata(), dtype=float)]


def bars(ax: Axes) -> list[Rectangle]:
    """The axes' bar rectangles (histogram or bar chart patches)."""
    found = [patch for patch in ax.patches if isinstance(patch, Rectangle)]
    assert len(found) == len(ax.patches)
    return found


def vlines_at(ax: Axes) -> list[float]:
    """x of every vertical line (axvline) on the axes."""
    found = []
    for line in ax.lines:
        x = np.asarray(line.get_xdata(), dtype=float)
        if x.size == 2 and x[0] == x[1]:
            found.append(float(x[0]))
    return found


def texts(ax: Axes) -> list[str]:
    return [t.get_text() for t in ax.texts]


def legend_texts(ax: Axes) -> list[str]:
    legend = ax.get_legend()
    assert legend is not None
    return [t.get_text() for t in legend.get_texts()]


def only_axes(fig: Figure) -> Axes:
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 1
    return fig.axes[0]


# -- colours and headless use -------------------------------------------------------------


def test_every_status_has_its_own_colour() -> None:
    assert set(plot.STATUS_COLORS) == set(Status)
    assert len(set(plot.STATUS_COLORS.values())) == len(Status)


def test_all_lists_the_public_charts() -> None:
    assert plot.__all__ == sorted(plot.__all__)
    for name in plot.__all__:
        assert hasattr(plot, name)


def test_importing_and_drawing_never_imports_pyplot() -> None:
    code = ("import sys, poolsim.plot as p, poolsim as q; "
            "p.queue_depth_chart(q.jobs_frame([])).savefig(__import__('io').BytesIO()); "
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_figure_renders_to_png(tmp_path: Path) -> None:
    path = tmp_path / "latency.png"
    plot.latency_histogram(mixed(), slo=1.0).savefig(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 1000


# -- queue depth ----------------------------------------------------------------------------


def test_queue_depth_chart_steps_through_records_queue_depth() -> None:
    frame = mixed()
    ax = only_axes(plot.queue_depth_chart(frame))
    (line,) = ax.lines
    depth = queue_depth(frame)
    assert xs(line) == list(depth.index)
    assert ys(line) == list(depth)
    assert line.get_drawstyle() == "steps-post"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("time (s)", "jobs waiting in queue")
    assert ax.get_title() == "Queue depth over time"


def test_queue_depth_chart_compares_labelled_frames_on_a_given_axes() -> None:
    fig = Figure()
    ax = fig.add_subplot()
    frames = {"1 worker": mixed(), "empty": jobs_frame([]), "2 workers": frame_of([1.0])}
    assert plot.queue_depth_chart(frames, ax=ax) is ax
    assert len(ax.lines) == 2  # the empty frame draws nothing
    labels = legend_texts(ax)
    assert [label.split(" (")[0] for label in labels] == ["1 worker", "2 workers"]
    assert f"max {queue_depth(mixed()).max()}" in labels[0]


# -- latency histogram ---------------------------------------------------------------------


def test_queue_depth_chart_of_days_reads_in_days() -> None:
    day = 86_400.0
    frame = jobs_frame([rec(0, 0.0, 0.0, 1.0, "completed"), rec(1, 0.5, 1.0, 2.0, "completed"),
                        rec(2, 4 * day, 4 * day + 60, 4 * day + 61, "completed")])
    ax = only_axes(plot.queue_depth_chart(frame))
    assert ax.get_xlabel() == "time (days)"
    assert xs(ax.lines[0]) == pytest.approx(list(queue_depth(frame).index / day))


def test_latency_histogram_counts_completed_jobs_in_log_bins() -> None:
    latencies = [0.05, 0.2, 0.3, 0.7, 2.0, 2.5, 40.0]
    extra = [rec(99, 0.0, 0.0, 500.0, "failed"), rec(98, 0.0, NAN, 0.0, "rejected", None)]
    ax = only_axes(plot.latency_histogram(frame_of(latencies, extra=extra), bins=12))
    assert ax.get_xscale() == "log"
    histogram = bars(ax)
    assert len(histogram) == 12
    assert sum(p.get_height() for p in histogram) == len(latencies)  # failed/rejected excluded
    lefts = np.array([p.get_x() for p in histogram])
    rights = lefts + np.array([p.get_width() for p in histogram])
    assert np.allclose(rights / lefts, rights[0] / lefts[0])  # log-spaced
    assert lefts[0] == pytest.approx(0.05) and rights[-1] == pytest.approx(40.0)
    assert ax.get_xlabel() == "latency, arrival to end (s)"
    assert ax.get_title() == "Latency of completed jobs (n=7)"


def test_latency_histogram_marks_the_bucket_edges_around_the_data_and_the_slo() -> None:
    ax = only_axes(plot.latency_histogram(frame_of([0.2, 0.3, 0.8, 1.5, 3.0]), slo=2.0))
    # data 0.2 .. 3.0: the edges bracketing it are 0.1 and 5 (60 s would squash the view)
    edges = [b for b in DURATION_BUCKETS if 0.1 <= b <= 5.0]
    assert vlines_at(ax) == [*edges, 2.0]
    slo = ax.lines[-1]
    assert slo.get_label() == "SLO 2 s, 20.0% over SLO"
    (top,) = ax.child_axes  # the secondary x axis that names the buckets
    assert [t.get_text() for t in top.get_xticklabels()] == ["0.1", "0.5", "1", "5"]
    left, right = ax.get_xlim()
    assert left < 0.1 and right > 5.0


def test_latency_histogram_buckets_are_configurable_and_zero_latency_counts() -> None:
    ax = only_axes(plot.latency_histogram(frame_of([0.0, 0.01, 0.02]), buckets=(0.005, 0.05)))
    assert sum(p.get_height() for p in bars(ax)) == 3
    assert vlines_at(ax) == [0.005, 0.05]


def test_latency_histogram_rejects_bad_bins() -> None:
    with pytest.raises(ConfigError, match="bins"):
        plot.latency_histogram(mixed(), bins=0)


# -- latency CDF -----------------------------------------------------------------------------


def test_latency_cdf_compares_configs_with_p99_in_the_legend() -> None:
    frames = {"fast": frame_of([0.1, 0.2, 0.3, 0.4]), "slow": frame_of([1.0, 2.0])}
    ax = only_axes(plot.latency_cdf(frames, slo=1.5))
    assert ax.get_xscale() == "log"
    fast, slow = ax.lines[:2]
    assert xs(fast) == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert ys(fast) == [0.25, 0.5, 0.75, 1.0]
    assert ys(slow) == [0.5, 1.0]
    assert 1.5 in vlines_at(ax)
    labels = legend_texts(ax)
    assert labels[0] == "fast (p99 0.397 s, 0.0% over SLO)"
    assert labels[1] == "slow (p99 1.99 s, 50.0% over SLO)"
    assert labels[-1] == "SLO 1.5 s"


@pytest.mark.filterwarnings("error")
def test_zero_latencies_sit_at_the_left_edge_of_a_log_axis_without_warnings() -> None:
    instant = {"instant": frame_of([0.0, 0.0, 0.0])}
    ax = only_axes(plot.latency_cdf(instant, slo=1.0))
    assert ys(ax.lines[0]) == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert 0 < ax.get_xlim()[0] <= min(xs(ax.lines[0]))
    mixed_zero = only_axes(plot.latency_cdf(frame_of([0.0, 0.5, 2.0])))
    assert xs(mixed_zero.lines[0]) == [0.25, 0.5, 2.0]
    fig = plot.latency_histogram(instant["instant"], slo=1.0)
    assert sum(p.get_height() for p in bars(only_axes(fig))) == 3
    fig.savefig(io.BytesIO(), format="png")


def test_latency_cdf_of_one_frame_on_a_given_axes() -> None:
    ax = Figure().add_subplot()
    assert plot.latency_cdf(mixed(), ax=ax) is ax
    assert ys(ax.lines[0]) == pytest.approx([1 / 3, 2 / 3, 1.0])


# -- sweep grids -----------------------------------------------------------------------------


def grid_row(workers: int, queue_size: int | None, backpressure: str = "reject",
             **summary: float) -> dict[str, Any]:
    """One sweep-grid row: the PoolConfig fields plus every Summary.as_dict() key."""
    config = PoolConfig(workers=workers, queue_size=queue_size,
                        backpressure=Backpressure(backpressure))
    row: dict[str, Any] = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    row.update(summarize(jobs_frame([])).as_dict())
    row.update(summary)
    return row


def small_grid(policies: tuple[str, ...] = ("reject",)) -> pd.DataFrame:
    """workers 2, 4 x queue_size 0, 10, None; p99 falls with workers, rejections with queue."""
    rows = []
    for policy in policies:
        for workers in (2, 4):
            for queue in (0, 10, None):
                q = math.inf if queue is None else queue
                rows.append(grid_row(workers, queue, policy, latency_p99=10.0 / workers + q / 10,
                                     rejection_rate=0.0 if queue is None else 0.2 / workers,
                                     utilisation=0.9 if workers == 2 else 0.75, drop_rate=0.0))
    return pd.DataFrame(rows)


def test_sweep_heatmap_lays_workers_by_queue_size_with_unbounded_on_top() -> None:
    grid = small_grid()
    ax = plot.sweep_heatmap(grid).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["2", "4"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "10", "∞"]
    (image,) = ax.images
    cells = image.get_array()
    assert cells is not None
    assert np.ma.getdata(cells).tolist()[:2] == [[5.0, 2.5], [6.0, 3.5]]
    assert bool(np.ma.getmaskarray(cells)[2].all())  # infinite latency: no colour
    assert texts(ax) == ["5", "2.5", "6", "3.5", "∞", "∞"]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("workers", "queue size (waiting places)")
    assert ax.get_title().startswith("p99 latency by workers")
    assert "backpressure=reject" in ax.get_title()


def test_sweep_heatmap_of_a_rate_shows_percentages() -> None:
    ax = Figure().add_subplot()
    assert plot.sweep_heatmap(small_grid(), value="rejection_rate", ax=ax) is ax
    assert texts(ax) == ["10%", "5.0%", "10%", "5.0%", "0%", "0%"]
    colorbar = ax.figure.axes[-1]
    assert colorbar.get_ylabel() == "rejection rate (%)"


def test_sweep_heatmap_needs_a_policy_when_the_grid_has_several() -> None:
    grid = small_grid(("reject", "drop_oldest"))
    with pytest.raises(ConfigError, match="'drop_oldest', 'reject'") as info:
        plot.sweep_heatmap(grid)
    assert info.value.field == "backpressure"
    ax = plot.sweep_heatmap(grid, backpressure="drop_oldest").axes[0]
    assert len(ax.texts) == 6 and "backpressure=drop_oldest" in ax.get_title()
    with pytest.raises(ConfigError, match="one of the grid's policies"):
        plot.sweep_heatmap(grid, backpressure="block")


def test_sweep_heatmap_refuses_two_rows_for_one_cell_naming_what_varies() -> None:
    grid = small_grid()
    twin = grid.assign(job_timeout=5.0)
    with pytest.raises(ConfigError, match="job_timeout"):
        plot.sweep_heatmap(pd.concat([grid, twin], ignore_index=True))


def test_sweep_heatmap_names_a_missing_column() -> None:
    with pytest.raises(ConfigError, match="latency_p42") as info:
        plot.sweep_heatmap(small_grid(), value="latency_p42")
    assert info.value.field == "grid"


def test_sweep_heatmaps_puts_p99_and_rejection_side_by_side() -> None:
    fig = plot.sweep_heatmaps(small_grid(("reject", "block")), backpressure="block")
    heatmaps = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title().split(" by")[0] for ax in heatmaps] == ["p99 latency", "rejection rate"]
    assert len(fig.axes) == 4  # two heatmaps and their colour bars
    top, bottom = heatmaps
    assert top.get_position().y0 == bottom.get_position().y0  # side by side


def test_sweep_heatmaps_of_many_worker_counts_are_stacked_and_compact() -> None:
    grid = pd.DataFrame([grid_row(w, q, latency_p99=1234.5 * w, rejection_rate=0.00063)
                         for w in range(1, 19) for q in (0, None)])
    fig = plot.sweep_heatmaps(grid)
    top, bottom = [ax for ax in fig.axes if ax.images]
    assert top.get_position().y0 > bottom.get_position().y0  # one above the other
    assert texts(top)[:3] == ["1.23k", "2.47k", "3.7k"]
    assert texts(bottom)[0] == "0.063%"


def test_policy_bars_compare_policies_one_panel_per_metric() -> None:
    grid = small_grid(("reject", "drop_oldest", "block"))
    picked = grid[(grid["workers"] == 2) & (grid["queue_size"] == 10)]
    fig = plot.policy_bars(picked)
    assert len(fig.axes) == 3
    p99, reject, drop = fig.axes
    for ax in fig.axes:
        (container,) = ax.containers
        assert isinstance(container, BarContainer) and len(container) == 3
        assert [t.get_text() for t in ax.get_xticklabels()] == ["reject", "drop_oldest", "block"]
    assert [b.get_height() for b in bars(p99)] == [6.0, 6.0, 6.0]
    assert texts(reject) == ["10%", "10%", "10%"]
    assert drop.get_ylim() == (0.0, 0.01)  # all zero: a 0..1 % scale, not a negative one
    assert fig.get_suptitle() == "Comparison by backpressure"
    assert plot.policy_bars(picked, title="At 2 workers").get_suptitle() == "At 2 workers"


def test_policy_bars_take_labelled_summaries() -> None:
    summaries = {"a": summarize(mixed()), "b": summarize(frame_of([3.0]))}
    fig = plot.policy_bars(summaries, metrics=("latency_max", "throughput"))
    latency, throughput = fig.axes
    assert [b.get_height() for b in bars(latency)] == [2.0, 3.0]
    assert latency.get_ylabel() == "max latency (s)"
    assert throughput.get_ylabel() == "throughput (jobs/s)"
    with pytest.raises(ConfigError, match="metrics"):
        plot.policy_bars(summaries, metrics=("p99",))


def test_policy_bars_refuse_a_whole_sweep() -> None:
    grid = pd.DataFrame([grid_row(w, 10) for w in range(1, 14)])
    with pytest.raises(ConfigError, match="at most 12"):
        plot.policy_bars(grid)


def test_utilisation_chart_shades_the_target_band_with_a_line_per_queue_size() -> None:
    ax = only_axes(plot.utilisation_chart(small_grid()))
    (band,) = ax.patches
    corners = band.get_patch_transform().transform(band.get_path().vertices)  # Rectangle or Polygon
    assert sorted({round(float(y), 6) for y in corners[:, 1]}) == [0.7, 0.8]
    assert len(ax.lines) == 3
    assert xs(ax.lines[0]) == [2.0, 4.0]
    assert ys(ax.lines[0]) == [0.9, 0.75]
    legend = ax.get_legend()
    assert legend is not None and legend.get_title().get_text() == "queue_size"
    assert legend_texts(ax) == ["target 70%\u201380%", "0", "10", "∞"]  # an en dash
    with pytest.raises(ConfigError, match="band"):
        plot.utilisation_chart(small_grid(), band=(0.8, 0.7))


# -- shutdown timeline -------------------------------------------------------------------------


def shutdown_frame() -> pd.DataFrame:
    """Shutdown at 10 s with 5 s grace: three jobs running, two queued, others not in it."""
    return jobs_frame([
        rec(0, 0.0, 0.0, 4.0, "completed", 0),  # done before the shutdown: not shown
        rec(1, 6.0, 6.0, 12.0, "completed", 0),  # running, finishes within the grace period
        rec(2, 7.0, 8.0, 20.0, "completed", 1),  # running past the deadline: would be killed
        rec(3, 9.0, 9.5, 10.5, "cancelled", 2),  # running, cancelled
        rec(4, 9.0, NAN, 10.0, "returned", None),  # queued, handed back
        rec(5, 9.5, NAN, 10.0, "returned", None),
        rec(6, 9.8, NAN, 9.8, "rejected", None),  # never in the system
        rec(7, 11.0, NAN, 11.0, "rejected", None),  # arrived after the shutdown
    ])


def test_shutdown_timeline_shows_jobs_in_the_system_at_shutdown() -> None:
    ax = only_axes(plot.shutdown_timeline(shutdown_frame(), shutdown_at=10.0, grace_s=5.0))
    queued, running, beyond = ax.containers
    assert len(queued) == len(running) == 5
    # running jobs first by start, then queued ones by arrival
    assert [t.get_text() for t in ax.get_yticklabels()] == ["1", "2", "3", "4", "5"]
    # times are seconds since the shutdown: SIGTERM at 0, SIGKILL at +5
    assert [(p.get_x(), p.get_width()) for p in queued] == [
        (-4.0, 0.0), (-3.0, 1.0), (-1.0, 0.5), (-1.0, 1.0), (-0.5, 0.5)]
    assert [(p.get_x(), p.get_width()) for p in running][:3] == [(-4.0, 6.0), (-2.0, 7.0),
                                                                  (-0.5, 1.0)]  # 2 is cut at 5
    assert [p.get_width() for p in beyond] == [0.0, 5.0, 0.0, 0.0, 0.0]
    assert running[0].get_facecolor() == to_rgba(
        plot.STATUS_COLORS[Status.COMPLETED])
    assert vlines_at(ax) == [0.0, 5.0]
    assert ax.get_xlabel() == "time since shutdown (s; SIGTERM at 10 s)"
    killed = [line for line in ax.lines if line.get_marker() == "x"]
    assert len(killed) == 1 and ys(killed[0]) == [1]
    assert ax.get_title() == "Shutdown at 10 s, 5 s grace: 5 jobs in the system"
    assert legend_texts(ax) == [
        "shutdown (SIGTERM)", "grace deadline +5 s (SIGKILL)", "killed at deadline (1)",
        "completed (2)", "cancelled (1)", "returned (2)", "queued (light)"]


def test_shutdown_timeline_marks_when_the_last_job_left_if_none_is_killed() -> None:
    ax = Figure().add_subplot()
    assert plot.shutdown_timeline(shutdown_frame(), shutdown_at=10.0, ax=ax) is ax  # 30 s grace
    assert vlines_at(ax) == [0.0, 30.0, 10.0]
    assert "last job out: 10 s after SIGTERM" in legend_texts(ax)
    assert not [line for line in ax.lines if isinstance(line, Line2D) and line.get_marker() == "x"]


def test_shutdown_timeline_caps_the_rows_and_says_so() -> None:
    rows = [rec(i, 0.01 * i, NAN, 5.0, "returned", None) for i in range(500)]
    ax = only_axes(plot.shutdown_timeline(jobs_frame(rows), shutdown_at=5.0, max_jobs=40))
    assert all(len(bars) == 40 for bars in ax.containers)
    assert ax.get_title().endswith("500 jobs in the system (first 40 shown)")
    assert len(ax.get_yticklabels()) <= 30
    assert "returned (500)" in legend_texts(ax)


def test_shutdown_timeline_refuses_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="grace_s"):
        plot.shutdown_timeline(shutdown_frame(), shutdown_at=1.0, grace_s=-1.0)
    with pytest.raises(ConfigError, match="job_id"):
        plot.shutdown_timeline(shutdown_frame().drop(columns="job_id"), shutdown_at=1.0)


# -- empty input ---------------------------------------------------------------------------------


EMPTY = jobs_frame([])


@pytest.mark.parametrize(("name", "draw", "message"), [
    ("queue_depth", lambda: plot.queue_depth_chart(EMPTY), "no jobs"),
    ("histogram", lambda: plot.latency_histogram(EMPTY, slo=1.0), "no completed jobs"),
    ("histogram_failed_only",
     lambda: plot.latency_histogram(jobs_frame([rec(0, 0, 0, 1, "failed")])), "no completed jobs"),
    ("cdf", lambda: plot.latency_cdf({"a": EMPTY}), "no completed jobs"),
    ("shutdown", lambda: plot.shutdown_timeline(EMPTY, shutdown_at=3.0),
     "no jobs running or queued at 3 s"),
    ("heatmap", lambda: plot.sweep_heatmap(small_grid().iloc[:0]), "empty sweep grid"),
    ("utilisation", lambda: plot.utilisation_chart(small_grid().iloc[:0]), "empty sweep grid"),
    ("bars", lambda: plot.policy_bars({}), "nothing to compare"),
])
def test_empty_input_gives_a_labelled_chart_with_a_note(name: str, draw: Any,
                                                        message: str) -> None:
    fig = draw()
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert message in texts(ax)
    assert ax.get_xlabel() and ax.get_title()
    fig.savefig(io.BytesIO(), format="png")  # and it still renders


def test_a_frame_without_the_jobs_columns_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="status") as info:
        plot.queue_depth_chart({"a": EMPTY.drop(columns="status")})
    assert info.value.field == "frames['a']"


def test_comparison_draws_both_runs_on_one_figure() -> None:
    from poolsim import JobRecord, jobs_frame

    real = jobs_frame([JobRecord(0, "t", "q", 0.0, 0.1, 1.1, "completed", 0, 1),
                       JobRecord(1, "t", "q", 0.5, 1.1, 2.0, "completed", 0, 1)])
    model = jobs_frame([JobRecord(0, "t", "q", 0.0, 0.0, 1.0, "completed", 0, 1),
                        JobRecord(1, "t", "q", 0.5, 1.0, 2.0, "completed", 0, 1)])
    figure = plot.comparison(real, model)
    cdf, depth = figure.axes[:2]
    assert [line.get_label().split(" (")[0] for line in cdf.get_lines()[:2]] == [
        "real pool", "model"]
    assert len([line for line in depth.get_lines() if line.get_label()[0] != "_"]) == 2
