"""Charts of a sweep grid: one row per configuration, PoolConfig fields plus summary columns.

Private: :mod:`poolsim.plot` re-exports ``sweep_heatmap``, ``sweep_heatmaps``,
``policy_bars`` and ``utilisation_chart``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, overload

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator, PercentFormatter

from poolsim._plotbase import DASH, STATUS_COLORS, TIMES, legend_outside, note, require, target
from poolsim.config import PoolConfig
from poolsim.errors import ConfigError
from poolsim.records import Status, Summary

__all__ = ["policy_bars", "sweep_heatmap", "sweep_heatmaps", "utilisation_chart"]

_CONFIG_COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(PoolConfig))
_MAX_BARS = 12


def _describe(column: str) -> tuple[str, str]:
    """A readable name and a unit for a summary column (``"%"`` marks a fraction)."""
    if column.startswith(("latency_", "wait_")):
        kind, stat = column.split("_", 1)
        return f"{stat} {kind}", "s"
    if column.endswith("_rate") or column == "utilisation":
        return column.replace("_", " "), "%"
    if column == "throughput":
        return "throughput", "jobs/s"
    if column == "jobs" or column.startswith("n_"):
        return column.replace("n_", "") + " jobs", "jobs"
    return column.replace("_", " "), "s" if column.endswith("_s") else ""


def _axis_label(column: str) -> str:
    name, unit = _describe(column)
    return f"{name} ({unit})" if unit else name


def _format(column: str, value: float) -> str:
    if not math.isfinite(value):
        return DASH if math.isnan(value) else "∞"
    if _describe(column)[1] != "%":  # compact, to fit a heatmap cell: 88.4, 485, 26k
        size = abs(value)
        return f"{value / 1000:.3g}k" if size >= 1000 else f"{value:.0f}" if size >= 100 \
            else f"{value:.3g}"
    pct = value * 100
    if pct == 0:
        return "0%"
    return f"{pct:.0f}%" if pct >= 10 else f"{pct:.1f}%" if pct >= 1 else f"{pct:.2g}%"


def _one_policy(grid: pd.DataFrame, backpressure: str | None) -> pd.DataFrame:
    """The grid's rows for one back-pressure policy; several policies need a choice."""
    if "backpressure" not in grid.columns:
        if backpressure is not None:
            raise ConfigError("backpressure", backpressure, "None: the grid has no backpressure")
        return grid
    policies = grid["backpressure"].astype(str)
    choices = sorted(policies.unique())
    if backpressure is None:
        if len(choices) > 1:
            raise ConfigError("backpressure", None, "the grid has several policies; pass "
                              "backpressure= one of " + ", ".join(map(repr, choices)))
        return grid
    if str(backpressure) not in choices:
        raise ConfigError("backpressure", backpressure,
                          "one of the grid's policies: " + ", ".join(map(repr, choices)))
    return grid[policies == str(backpressure)]


def _queue_key(value: Any) -> float:
    """``queue_size`` as a sortable number: ``None``/NaN (unbounded) is infinite."""
    return math.inf if value is None or pd.isna(value) else float(value)


def _queue_label(size: float) -> str:
    return "∞" if math.isinf(size) else f"{size:g}"


@overload
def sweep_heatmap(grid: pd.DataFrame, *, value: str = ..., backpressure: str | None = ...,
                  ax: None = None) -> Figure: ...
@overload
def sweep_heatmap(grid: pd.DataFrame, *, value: str = ..., backpressure: str | None = ...,
                  ax: Axes) -> Axes: ...
def sweep_heatmap(grid: pd.DataFrame, *, value: str = "latency_p99",
                  backpressure: str | None = None, ax: Axes | None = None) -> Figure | Axes:
    """Heatmap of one summary column over workers (x) and queue size (y), cells annotated.

    ``queue_size`` ``None`` (unbounded) is the top row, shown as "∞". Latency
    spanning more than a decade uses a log colour scale; rates are shown in %.
    A grid of several back-pressure policies needs ``backpressure=``; a grid
    with other columns varying (two rows for one cell) must be filtered first.
    Both raise :class:`~poolsim.errors.ConfigError` naming the choices.
    """
    require(grid, "grid", "workers", "queue_size", value)
    rows = _one_policy(grid, backpressure)
    table = _table(rows, value)
    axes, result = target(ax, figsize=_heatmap_size(table))
    name, unit = _describe(value)
    title = f"{name} by workers {TIMES} queue size"
    if "backpressure" in rows.columns and len(rows):
        title += f"\nbackpressure={rows['backpressure'].astype(str).iloc[0]}"
    axes.set(xlabel="workers", ylabel="queue size (waiting places)", title=title)
    if rows.empty:
        note(axes, "empty sweep grid")
        return result
    matrix = table.to_numpy(dtype=float)
    finite = matrix[np.isfinite(matrix)]
    norm: Normalize
    if unit == "s" and finite.size and finite.min() > 0 and finite.max() / finite.min() > 10:
        norm = LogNorm(finite.min(), finite.max())
    elif finite.size:
        norm = Normalize(min(0.0, finite.min()) if unit == "%" else finite.min(),
                         max(finite.max(), 1e-12))
    else:
        norm = Normalize(0, 1)
    cmap = colormaps["YlOrRd"].with_extremes(bad="#DDDDDD")
    image = axes.imshow(np.ma.masked_invalid(matrix), cmap=cmap, norm=norm, origin="lower",
                        aspect="auto")
    axes.set_xticks(range(table.shape[1]), [str(w) for w in table.columns])
    axes.set_yticks(range(table.shape[0]), [_queue_label(q) for q in table.index])
    cell_in = axes.get_window_extent().width / axes.figure.dpi / table.shape[1]  # before layout
    small = "small" if cell_in >= 0.55 else "x-small" if cell_in >= 0.4 else "xx-small"
    for (i, j), cell in np.ndenumerate(matrix):
        shade = cmap(norm(cell)) if math.isfinite(cell) else (0.87, 0.87, 0.87, 1.0)
        dark = 0.299 * shade[0] + 0.587 * shade[1] + 0.114 * shade[2] < 0.5
        axes.text(j, i, _format(value, cell), ha="center", va="center", fontsize=small,
                  color="white" if dark else "black")
    bar = axes.figure.colorbar(image, ax=axes, label=_axis_label(value))
    if unit == "%":
        bar.ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    elif isinstance(norm, LogNorm):
        bar.ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        bar.ax.yaxis.set_minor_locator(NullLocator())
    return result


def _table(rows: pd.DataFrame, value: str) -> pd.DataFrame:
    """``value`` pivoted to queue size (index, unbounded last) x workers (columns)."""
    cells = pd.DataFrame({"workers": rows["workers"].astype(int),
                          "queue": [_queue_key(q) for q in rows["queue_size"]],
                          "value": rows[value].astype(float)})
    if cells.duplicated(["workers", "queue"]).any():
        varying = _varying(rows, besides=("workers", "queue_size"))
        raise ConfigError("grid", varying, "one row per (workers, queue_size); filter the "
                          "grid on " + (", ".join(varying) or "its duplicate rows") + " first")
    return cells.pivot(index="queue", columns="workers", values="value").sort_index()


def _heatmap_size(table: pd.DataFrame) -> tuple[float, float]:
    """Inches for one heatmap: room for each cell's label."""
    return max(7.0, 0.6 * table.shape[1] + 3.0), max(4.5, 0.5 * table.shape[0] + 2.5)


def sweep_heatmaps(grid: pd.DataFrame, *, backpressure: str | None = None) -> Figure:
    """The p99 latency and rejection-rate heatmaps of a sweep grid, side by side.

    With more than 10 worker counts the two panels are stacked instead, so
    each cell keeps room for its label.
    """
    require(grid, "grid", "workers", "queue_size", "latency_p99", "rejection_rate")
    width, height = _heatmap_size(_table(_one_policy(grid, backpressure), "latency_p99"))
    wide = width > 0.6 * 10 + 3.0
    fig = Figure(figsize=(width, 2 * height) if wide else (2 * width, height),
                 layout="constrained")
    left, right = fig.subplots(2, 1) if wide else fig.subplots(1, 2)
    sweep_heatmap(grid, value="latency_p99", backpressure=backpressure, ax=left)
    sweep_heatmap(grid, value="rejection_rate", backpressure=backpressure, ax=right)
    return fig


def _config_text(column: str, value: Any) -> str:
    """A config value as people write it: ``queue_size`` None is "∞", 10.0 is "10"."""
    if column == "queue_size":
        return _queue_label(_queue_key(value))
    if isinstance(value, float) and value.is_integer():
        return f"{value:g}"
    return str(value)


def _varying(grid: pd.DataFrame, *, besides: Sequence[str] = ()) -> list[str]:
    """The config columns that take more than one value in the grid."""
    return [c for c in _CONFIG_COLUMNS if c in grid.columns and c not in besides
            and grid[c].astype(str).nunique(dropna=False) > 1]  # None (unbounded) counts


def _row_labels(grid: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    """Name each row by ``columns`` (just the value when there is one column)."""
    if len(columns) == 1:
        return [_config_text(columns[0], v) for v in grid[columns[0]]]
    return [", ".join(f"{c}={_config_text(c, row[c])}" for c in columns)
            for _, row in grid.iterrows()]


def policy_bars(grid_or_summaries: pd.DataFrame | Mapping[str, Summary | Mapping[str, Any]], *,
                metrics: Sequence[str] = ("latency_p99", "rejection_rate", "drop_rate"),
                title: str | None = None) -> Figure:
    """Bars comparing a few configurations (say one per back-pressure policy), a panel per metric.

    Give a sweep grid filtered to the rows to compare (each labelled by the
    config columns that differ), or ``{label: Summary}``. At most 12. The
    figure's title defaults to "Comparison by <the columns that differ>".
    """
    default_title, xlabel = "Comparison", "configuration"
    if isinstance(grid_or_summaries, pd.DataFrame):
        grid, varying = grid_or_summaries, _varying(grid_or_summaries)
        names = _row_labels(grid, varying) if varying else [str(i) for i in grid.index]
        rows = [(name, dict(row)) for name, (_, row) in zip(names, grid.iterrows(), strict=True)]
        if varying:
            xlabel = ", ".join(varying)
            default_title += f" by {xlabel}"
    else:
        rows = [(str(k), v.as_dict() if isinstance(v, Summary) else dict(v))
                for k, v in grid_or_summaries.items()]
    if len(rows) > _MAX_BARS:
        raise ConfigError("grid_or_summaries", f"{len(rows)} configurations",
                          f"at most {_MAX_BARS}; filter the grid to the ones to compare")
    if isinstance(metrics, str) or not metrics:
        raise ConfigError("metrics", metrics, "a non-empty sequence of summary column names")
    for metric in metrics:
        for _, row in rows:
            if metric not in row:
                raise ConfigError("metrics", metric, "a summary column: " + ", ".join(row))
    fig = Figure(figsize=(max(4.0, 3.6 * len(metrics)), 4.2), layout="constrained")
    panels = fig.subplots(1, len(metrics), squeeze=False)[0]
    labels, slanted = [name for name, _ in rows], len(rows) > 3
    colors = [f"C{i % 10}" for i in range(len(rows))]
    for axes, metric in zip(panels, metrics, strict=False):
        heights = [float(row[metric]) for _, row in rows]
        bars = axes.bar(range(len(rows)), [0.0 if math.isnan(h) else h for h in heights],
                        color=colors)
        axes.bar_label(bars, [_format(metric, h) for h in heights], fontsize="small", padding=2)
        axes.set_xticks(range(len(rows)), labels, rotation=30 if slanted else 0,
                        ha="right" if slanted else "center")
        axes.set(title=_describe(metric)[0], ylabel=_axis_label(metric), xlabel=xlabel)
        axes.set_ylim(bottom=0)
        axes.margins(y=0.15)
        percent = _describe(metric)[1] == "%"
        if not any(h > 0 for h in heights):  # all zero: a sensible scale, not -0.06..0.06
            axes.set_ylim(0, 0.01 if percent else 1.0)
        if percent:
            axes.yaxis.set_major_formatter(PercentFormatter(1.0))
        if not rows:
            note(axes, "nothing to compare")
    fig.suptitle(default_title if title is None else title)
    return fig


@overload
def utilisation_chart(grid: pd.DataFrame, *, band: tuple[float, float] = ...,
                      ax: None = None) -> Figure: ...
@overload
def utilisation_chart(grid: pd.DataFrame, *, band: tuple[float, float] = ...,
                      ax: Axes) -> Axes: ...
def utilisation_chart(grid: pd.DataFrame, *, band: tuple[float, float] = (0.7, 0.8),
                      ax: Axes | None = None) -> Figure | Axes:
    """Worker utilisation against workers, one line per other varying config, target band shaded.

    The band (70-80 % by default) is where a pool is busy enough to be worth
    its cost yet keeps headroom for bursts.
    """
    require(grid, "grid", "workers", "utilisation")
    if not 0 <= band[0] < band[1]:
        raise ConfigError("band", band, "(low, high) fractions with 0 <= low < high")
    axes, result = target(ax)
    axes.axhspan(*band, color=STATUS_COLORS[Status.COMPLETED], alpha=0.15,
                 label=f"target {band[0]:.0%}{DASH}{band[1]:.0%}")
    axes.set(xlabel="workers", ylabel="utilisation (% of worker time busy)",
             title="Utilisation by workers", ylim=(0, 1.05))
    axes.yaxis.set_major_formatter(PercentFormatter(1.0))
    others = _varying(grid, besides=("workers",))
    labels = _row_labels(grid, others) if others else [""] * len(grid)
    for label in dict.fromkeys(labels):
        rows = grid[[name == label for name in labels]].sort_values("workers")
        axes.plot(rows["workers"].to_numpy(dtype=float),
                  rows["utilisation"].to_numpy(dtype=float), marker="o", label=label or None)
    if grid.empty:
        note(axes, "empty sweep grid")
    legend_outside(axes, title=", ".join(others) or None)
    return result
