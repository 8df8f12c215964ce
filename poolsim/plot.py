"""Charts of jobs frames and sweep grids, for notebooks, widgets and the capacity-plan report.

Every chart reads only a jobs frame (``poolsim.records``) or a sweep grid (one
row per configuration: the ``PoolConfig`` fields plus ``Summary.as_dict()``).
A function given ``ax=`` draws into it and returns it; without one it builds a
new :class:`~matplotlib.figure.Figure` and returns that. Nothing here touches
pyplot's global state or calls ``plt.show()``: figures are made with
``Figure()``, so they work headless and in a server without choosing a
backend, and a notebook displays the returned Figure.

Statuses have one colour everywhere (:data:`STATUS_COLORS`); an empty frame
or grid gives an empty, labelled chart with a note instead of an exception.

>>> from poolsim import JobRecord, jobs_frame, plot
>>> frame = jobs_frame([JobRecord(0, "t", "q", 0.0, 0.0, 0.4, "completed", 0, 1),
...                     JobRecord(1, "t", "q", 0.1, 0.4, 1.5, "completed", 0, 1)])
>>> fig = plot.latency_histogram(frame, slo=1.0)
>>> fig.axes[0].get_xscale()
'log'
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import overload

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator, NullLocator, PercentFormatter

from poolsim._plotbase import SLO_COLOR, STATUS_COLORS, legend_outside, note, require, target
from poolsim._plotsweep import policy_bars, sweep_heatmap, sweep_heatmaps, utilisation_chart
from poolsim.errors import ConfigError
from poolsim.metrics import DURATION_BUCKETS
from poolsim.records import Status, queue_depth

__all__ = [
    "STATUS_COLORS",
    "comparison",
    "latency_cdf",
    "latency_histogram",
    "policy_bars",
    "queue_depth_chart",
    "shutdown_timeline",
    "sweep_heatmap",
    "sweep_heatmaps",
    "utilisation_chart",
]

Frames = Mapping[str, pd.DataFrame] | pd.DataFrame


_NEEDS = ("arrival_s", "start_s", "end_s", "status", "worker")


def _labelled(frames: Frames) -> dict[str | None, pd.DataFrame]:
    """``{label: jobs frame}``, label None for a lone frame; each checked for its columns."""
    labelled: dict[str | None, pd.DataFrame] = {None: frames} if isinstance(
        frames, pd.DataFrame) else {str(label): frame for label, frame in frames.items()}
    for label, frame in labelled.items():
        require(frame, "frames" if label is None else f"frames[{label!r}]", *_NEEDS)
    return labelled


def _latency(frame: pd.DataFrame) -> np.ndarray:
    """``end_s - arrival_s`` of completed jobs, in seconds (NaNs dropped)."""
    done = (frame["status"].astype(str) == Status.COMPLETED).to_numpy()
    values = (frame["end_s"].to_numpy(dtype=float) - frame["arrival_s"].to_numpy(dtype=float))
    values = values[done]
    return np.asarray(values[~np.isnan(values)], dtype=float)


def _slo_line(ax: Axes, slo: float | None, extra: str = "") -> None:
    if slo is not None:
        ax.axvline(slo, color=SLO_COLOR, linewidth=2, label=f"SLO {slo:g} s{extra}")


def _over(latency: np.ndarray, slo: float | None) -> str:
    """", 1.2% over SLO": the share of jobs slower than the SLO, for a legend label."""
    return "" if slo is None or latency.size == 0 else f", {np.mean(latency > slo):.1%} over SLO"


def _time_unit(span_s: float) -> tuple[str, float]:
    """A readable unit for a time axis spanning ``span_s`` seconds, and its size in seconds."""
    if span_s > 3 * 86_400:
        return "days", 86_400.0
    if span_s > 3 * 3_600:
        return "h", 3_600.0
    return "s", 1.0


# -- charts of jobs frames ------------------------------------------------------------


@overload
def queue_depth_chart(frames: Frames, *, ax: None = None) -> Figure: ...
@overload
def queue_depth_chart(frames: Frames, *, ax: Axes) -> Axes: ...
def queue_depth_chart(frames: Frames, *, ax: Axes | None = None) -> Figure | Axes:
    """Queue depth over time, one step line per labelled jobs frame.

    Pass one frame, or ``{"4 workers": f4, "8 workers": f8}`` to compare 2-3
    configurations on one time axis (the line is ``poolsim.records.queue_depth``).
    """
    axes, result = target(ax)
    depths = {label: queue_depth(frame) for label, frame in _labelled(frames).items()}
    depths = {label: depth for label, depth in depths.items() if not depth.empty}
    span = max((float(d.index[-1]) for d in depths.values()), default=0.0) - min(
        (float(d.index[0]) for d in depths.values()), default=0.0)
    unit, scale = _time_unit(span)
    for label, depth in depths.items():
        times, values = depth.index.to_numpy(dtype=float), depth.to_numpy(dtype=float)
        length = times[-1] - times[0]
        mean = float(np.sum(values[:-1] * np.diff(times)) / length) if length > 0 else 0.0
        axes.step(times / scale, values, where="post", linewidth=1, alpha=0.85,
                  label=f"{label or 'queue depth'} (mean {mean:.3g}, max {values.max():g})")
    axes.set(xlabel=f"time ({unit})", ylabel="jobs waiting in queue",
             title="Queue depth over time")
    if not depths:
        note(axes, "no jobs")
    axes.set_ylim(bottom=0)
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    legend_outside(axes)
    return result


@overload
def latency_histogram(frame: pd.DataFrame, *, ax: None = None,
                      buckets: Sequence[float] = ..., slo: float | None = ...,
                      bins: int = ...) -> Figure: ...
@overload
def latency_histogram(frame: pd.DataFrame, *, ax: Axes, buckets: Sequence[float] = ...,
                      slo: float | None = ..., bins: int = ...) -> Axes: ...
def latency_histogram(frame: pd.DataFrame, *, ax: Axes | None = None,
                      buckets: Sequence[float] = DURATION_BUCKETS, slo: float | None = None,
                      bins: int = 40) -> Figure | Axes:
    """Histogram of completed jobs' latency on a log axis, with bucket edges and the SLO.

    Bins are log-spaced over the observed range; a latency of 0 is counted in
    the first bin. Dotted lines mark the Prometheus histogram ``buckets``
    (``le=`` edges, ``DURATION_BUCKETS`` by default) around the data, so one
    sees what the metric can resolve; a red line marks ``slo`` seconds.
    """
    require(frame, "frame", *_NEEDS)
    if bins < 1:
        raise ConfigError("bins", bins, "an integer >= 1")
    axes, result = target(ax)
    latency = _latency(frame)
    axes.set_xscale("log")
    axes.set(xlabel="latency, arrival to end (s)", ylabel="completed jobs",
             title=f"Latency of completed jobs (n={latency.size:,})")
    if latency.size == 0:
        note(axes, "no completed jobs")
        _slo_line(axes, slo)
        legend_outside(axes)
        return result
    positive = latency[latency > 0]
    low = float(positive.min()) if positive.size else 1e-3
    high = max(float(latency.max()), low)
    if high <= low * 1.01:
        low, high = low / 1.5, high * 1.5
    edges = np.geomspace(low, high, bins + 1).tolist()
    axes.hist(np.clip(latency, low, high), bins=edges, color=STATUS_COLORS[Status.COMPLETED],
              alpha=0.85, label="completed jobs")
    # the bucket edges that bracket the data, labelled le=...
    shown = sorted(float(b) for b in buckets if math.isfinite(b) and b > 0)
    below = [b for b in shown if b <= low]
    above = [b for b in shown if b >= high]
    lo_edge = below[-1] if below else low
    hi_edge = above[0] if above else high
    visible = [b for b in shown if lo_edge <= b <= hi_edge]
    for i, edge in enumerate(visible):
        axes.axvline(edge, color="0.35", linestyle=":", linewidth=1,
                     label="Prometheus bucket edges" if i == 0 else None)
    top = axes.secondary_xaxis("top")
    top.set_xticks(visible, [f"{edge:g}" for edge in visible], fontsize="small", color="0.35")
    top.xaxis.set_minor_locator(NullLocator())
    top.set_xlabel("bucket edges, le= (s)", fontsize="small", color="0.35")
    left, right = min(lo_edge, low), max(hi_edge, high)
    if slo is not None and slo > 0:
        left, right = min(left, slo), max(right, slo)
    axes.set_xlim(left / 1.2, right * 1.2)
    _slo_line(axes, slo, _over(latency, slo))
    legend_outside(axes)
    return result


@overload
def latency_cdf(frames: Frames, *, ax: None = None, slo: float | None = ...) -> Figure: ...
@overload
def latency_cdf(frames: Frames, *, ax: Axes, slo: float | None = ...) -> Axes: ...
def latency_cdf(frames: Frames, *, ax: Axes | None = None,
                slo: float | None = None) -> Figure | Axes:
    """Empirical CDFs of completed jobs' latency, one line per labelled frame, log x.

    Read a percentile off the dotted p99 line; the red line is the ``slo``. The
    legend gives each configuration's p99. A latency of 0 (which a log axis
    cannot show) is drawn at the left edge.
    """
    axes, result = target(ax)
    axes.set_xscale("log")
    axes.set(xlabel="latency, arrival to end (s)", ylabel="fraction of completed jobs",
             title="Latency CDF of completed jobs")
    latencies = {label: np.sort(_latency(frame)) for label, frame in _labelled(frames).items()}
    latencies = {label: latency for label, latency in latencies.items() if latency.size}
    pooled = np.concatenate(list(latencies.values())) if latencies else np.empty(0)
    positive = pooled[pooled > 0]
    # a log axis cannot show 0: zero latencies sit at the left edge, below every other
    floor = float(positive.min()) / 2 if positive.size else 1e-3
    for label, latency in latencies.items():
        p99 = float(np.percentile(latency, 99))
        fraction = np.arange(1, latency.size + 1) / latency.size
        axes.step(np.maximum(latency, floor), fraction, where="post", linewidth=1.5,
                  label=f"{label or 'latency'} (p99 {p99:.3g} s{_over(latency, slo)})")
    axes.set_ylim(0, 1.02)
    axes.yaxis.set_major_formatter(PercentFormatter(1.0))
    if not latencies:
        note(axes, "no completed jobs")
    else:
        axes.axhline(0.99, color="0.5", linestyle=":", linewidth=1, label="p99")
        low = max(float(np.percentile(pooled, 1)), floor)  # below p1 only squeezes the plot
        if slo is not None and slo > 0:
            low = min(low, slo)
        axes.set_xlim(left=low / 2)
    _slo_line(axes, slo)
    legend_outside(axes)
    return result


def comparison(real: pd.DataFrame, simulated: pd.DataFrame, *,
               labels: tuple[str, str] = ("real pool", "model")) -> Figure:
    """Two runs of one trace on one figure: latency CDFs, then queue depth over time
    (what :func:`poolsim.replay.compare` tabulates, drawn)."""
    figure = Figure(figsize=(11.0, 7.5), layout="constrained")
    top, bottom = figure.subplots(2, 1)
    frames = dict(zip(labels, (real, simulated), strict=True))
    latency_cdf(frames, ax=top)
    queue_depth_chart(frames, ax=bottom)
    return figure


@overload
def shutdown_timeline(frame: pd.DataFrame, *, shutdown_at: float, grace_s: float = ...,
                      max_jobs: int = ..., ax: None = None) -> Figure: ...
@overload
def shutdown_timeline(frame: pd.DataFrame, *, shutdown_at: float, grace_s: float = ...,
                      max_jobs: int = ..., ax: Axes) -> Axes: ...
def shutdown_timeline(frame: pd.DataFrame, *, shutdown_at: float, grace_s: float = 30.0,
                      max_jobs: int = 60, ax: Axes | None = None) -> Figure | Axes:
    """What a shutdown at ``shutdown_at`` completes, hands back, cancels and loses.

    One row per job in the system at ``shutdown_at`` (running first, by start,
    then queued, by arrival; at most ``max_jobs``, the title says how many were
    left out): a light bar while queued, a solid bar while running, coloured by
    final status, on a time axis in seconds since the shutdown. Lines mark the
    shutdown (SIGTERM, at 0) and the end of the grace period (SIGKILL, at
    ``grace_s``; Kubernetes' default ``terminationGracePeriodSeconds`` is 30 s).
    A job still in the system at the deadline (``end_s`` later, or unknown)
    would be killed: it is marked x, and its time past the deadline is hatched.
    """
    require(frame, "frame", "job_id", *_NEEDS)
    if not grace_s >= 0:
        raise ConfigError("grace_s", grace_s, "a number of seconds >= 0")
    if max_jobs < 1:
        raise ConfigError("max_jobs", max_jobs, "an integer >= 1")
    axes, result = target(ax, figsize=(10.0, 6.0))
    # times relative to the shutdown: SIGTERM at 0, SIGKILL at grace_s
    deadline = grace_s
    status = frame["status"].astype(str).to_numpy()
    arrival = frame["arrival_s"].to_numpy(dtype=float) - shutdown_at
    start = frame["start_s"].to_numpy(dtype=float) - shutdown_at
    end = frame["end_s"].to_numpy(dtype=float) - shutdown_at
    open_end = np.where(np.isnan(end), np.inf, end)
    inside = (status != Status.REJECTED) & (arrival <= 0) & (open_end >= 0)
    running = inside & (start <= 0)
    order = np.concatenate([
        np.flatnonzero(running)[np.argsort(start[running], kind="stable")],
        np.flatnonzero(inside & ~running)[np.argsort(arrival[inside & ~running], kind="stable")],
    ])
    total, shown = order.size, order[:max_jobs]
    killed_all = open_end[order] > deadline
    title = f"Shutdown at {shutdown_at:g} s, {grace_s:g} s grace: {total:,} jobs in the system"
    if total > shown.size:
        title += f" (first {shown.size} shown)"
    axes.set(xlabel=f"time since shutdown (s; SIGTERM at {shutdown_at:g} s)",
             ylabel="job id (running first, then queued)", title=title)
    axes.axvline(0.0, color="black", linewidth=1.5, label="shutdown (SIGTERM)")
    axes.axvline(deadline, color=SLO_COLOR, linewidth=1.5, linestyle="--",
                 label=f"grace deadline +{grace_s:g} s (SIGKILL)")
    if total == 0:
        note(axes, f"no jobs running or queued at {shutdown_at:g} s")
        legend_outside(axes)
        return result

    rows = np.arange(shown.size)
    first = arrival[shown]
    # long waits before the shutdown run off the left edge rather than squeeze the view
    left = max(float(first.min()), -2 * max(grace_s, 1.0))
    window = max(deadline - left, 1e-9)
    right = deadline + 0.15 * window
    s, e = start[shown], np.minimum(open_end[shown], right + window)  # open ends run off the edge
    began = ~np.isnan(s)
    queued_until = np.where(began, s, e)
    colors = [STATUS_COLORS[Status(x)] for x in status[shown]]
    height = 0.7
    axes.barh(rows, queued_until - first, left=first, height=height, color=colors, alpha=0.3)
    run_end = np.minimum(e, deadline)
    axes.barh(rows, np.where(began, run_end - s, 0.0), left=np.where(began, s, 0.0),
              height=height, color=colors)
    unstarted = ~began & (e <= deadline)  # a dot where a queued job was decided
    axes.scatter(e[unstarted], rows[unstarted], s=18, marker="D", zorder=3,
                 c=[c for c, u in zip(colors, unstarted, strict=True) if u])
    killed = killed_all[: shown.size]
    past = np.where(killed, e - deadline, 0.0)
    axes.barh(rows, past, left=deadline, height=height, color="none", edgecolor=colors,
              hatch="///", linewidth=0)
    if killed.any():
        axes.plot(np.full(int(killed.sum()), deadline), rows[killed], "x", color=SLO_COLOR,
                  markersize=7, markeredgewidth=2,
                  label=f"killed at deadline ({int(killed_all.sum()):,})")
    else:
        exit_s = float(open_end[order].max())
        axes.axvline(exit_s, color="0.3", linestyle=":", linewidth=1.5,
                     label=f"last job out: {exit_s:.3g} s after SIGTERM")
    axes.set_xlim(left - 0.03 * window, right)
    axes.set_ylim(shown.size - 0.5, -0.5)  # first row on top
    stride = max(1, math.ceil(shown.size / 30))
    axes.set_yticks(rows[::stride], [str(j) for j in frame["job_id"].to_numpy()[shown][::stride]],
                    fontsize="small")
    counts = pd.Series(status[order]).value_counts()
    handles = [Patch(color=color, label=f"{name} ({counts[name]:,})")
               for name, color in STATUS_COLORS.items() if name in counts.index]
    handles.append(Patch(color="0.6", alpha=0.3, label="queued (light)"))
    line_handles, _ = axes.get_legend_handles_labels()
    axes.legend(handles=[*line_handles, *handles], loc="upper left", bbox_to_anchor=(1.01, 1.0),
                fontsize="small", frameon=False)
    return result
