"""Interactive dashboards: a pool's settings on sliders, re-simulated and redrawn as they move.

:func:`dashboard` takes a trace and returns a :class:`Dashboard`, an
``ipywidgets.VBox`` (so a notebook shows it when it is a cell's last
expression, and it nests in other layouts) with

- sliders for ``workers``, ``queue size`` (0 ... 1000 or unbounded), ``load``
  (the factor passed as ``simulate(..., load=)``) and ``job timeout`` (off, or
  a percentile of the trace's service times), and ``shutdown at`` (off, or a
  time within the trace; off by default);
- dropdowns for the back-pressure and shutdown policies;
- a chart of queue depth over time above a latency histogram (one matplotlib
  ``Figure``, reused and shown as a PNG in an ``ipywidgets.Image``), and a
  summary table (an ``ipywidgets.HTML``).

Every change re-simulates with :func:`poolsim.simulate` (its fast exact kernel
when it applies: ``reject`` or ``drop_oldest`` with ``shutdown at`` off; SimPy
otherwise) and redraws. Sliders send their value on release
(``continuous_update=False``), and results are cached by the parameter tuple
in a small LRU, so sliding back to a setting costs only a redraw. Callbacks
never print; a :class:`~poolsim.errors.PoolsimError` raised by a setting
(e.g. a load factor that keeps no job) is shown in the status line and kept
in :attr:`Dashboard.error`.

Everything a test needs is on the object, with no kernel and no front end:
set ``dash.controls["workers"].value = 8`` and the callback runs at once;
read :attr:`Dashboard.last_result`, :attr:`Dashboard.summary_html`, the
figure's artists (``dash.figure.axes[0].lines[0].get_ydata()``) or
:meth:`Dashboard.cache_info`.
"""

from __future__ import annotations

import dataclasses
import html
import io
import math
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from poolsim import plot
from poolsim._plotbase import SLO_COLOR, legend_outside, note
from poolsim.config import Backpressure, PoolConfig, ShutdownPolicy
from poolsim.errors import ConfigError, PoolsimError
from poolsim.metrics import DURATION_BUCKETS
from poolsim.plot import _time_unit
from poolsim.records import Status, Summary
from poolsim.sim.model import SimResult, simulate
from poolsim.traces import load_trace

try:
    import ipywidgets as widgets  # type: ignore[import-untyped]
except ImportError as exc:  # pragma: no cover - the notebooks extra is missing
    raise ImportError("poolsim.widgets needs ipywidgets 8: "
                      "pip install 'poolsim[notebooks]'") from exc

__all__ = ["CacheInfo", "Dashboard", "dashboard"]

INF = math.inf  # the "no limit" value of the queue-size, job-timeout and shutdown-at sliders
QUEUE_SIZES: tuple[float, ...] = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, INF)
TIMEOUT_PERCENTILES: tuple[float, ...] = (50, 75, 90, 95, 99, 99.9)
SHUTDOWN_STEPS = 20  # "shutdown at" offers off and 21 instants from first to last arrival
_OFF, _INFINITY, _TIMES, _DOT = "off", "\u221e", "\u00d7", "\u00b7"
_DEPTH_COLOR = "#0072B2"
_CONTROL_LAYOUT = {"width": "330px"}
_CONTROL_STYLE = {"description_width": "95px"}


class CacheInfo(NamedTuple):
    """Hits and misses of a dashboard's result cache, as ``functools.lru_cache`` reports them."""

    hits: int
    misses: int
    maxsize: int
    currsize: int


class _Params(NamedTuple):
    """One simulation's settings: the cache key. ``shutdown`` is None when ``shutdown_at`` is."""

    workers: int
    queue_size: int | None
    backpressure: str
    job_timeout: float | None
    load: float
    shutdown_at: float | None
    shutdown: str | None


@dataclasses.dataclass(eq=False)
class _Entry:
    """A cached simulation, with what its charts need: the drawn (decimated) queue-depth
    steps, the time-weighted mean and the peak of the full series, the rendered PNG and
    the summary table (both made on first show)."""

    result: SimResult
    seconds: float
    times: np.ndarray
    depths: np.ndarray
    mean: float
    peak: float
    png: bytes | None = None
    summary_html: str = ""


def _decimate(times: np.ndarray, values: np.ndarray,
              max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` points of a step series that look the same when drawn.

    The time axis is cut into ``max_points // 4`` equal bins; each bin keeps its
    first and last point and the first points of its minimum and maximum (M4
    decimation), so every peak and trough survives.
    """
    n = times.size
    if n <= max_points:
        return times, values
    bins = max(1, max_points // 4)
    t0, t1 = float(times[0]), float(times[-1])
    width = (t1 - t0) / bins if t1 > t0 else 1.0
    which = np.minimum(((times - t0) / width).astype(np.int64), bins - 1)
    starts = np.flatnonzero(np.r_[True, which[1:] != which[:-1]])
    lengths = np.diff(np.r_[starts, n])
    ends = starts + lengths - 1
    segment = np.repeat(np.arange(starts.size), lengths)
    keep = [starts, ends]
    for reduce in (np.maximum, np.minimum):
        extreme = reduce.reduceat(values, starts)
        hits = np.flatnonzero(values == extreme[segment])
        _, first = np.unique(segment[hits], return_index=True)
        keep.append(hits[first])
    chosen = np.unique(np.concatenate(keep))
    return times[chosen], values[chosen]


def _wipe(ax: Axes) -> None:
    """Remove what a chart drew on ``ax`` but keep its axes and ticks: much cheaper to render
    again than ``ax.clear()``, which makes every tick anew."""
    for container in list(ax.containers):
        container.remove()
    for artist in [*ax.lines, *ax.patches, *ax.texts, *ax.collections, *ax.images]:
        artist.remove()
    for child in list(ax.child_axes):
        child.remove()
    if ax.legend_ is not None:
        ax.legend_.remove()
    ax.relim()
    ax.autoscale(True)


def _seconds_label(value: float) -> str:
    return f"{value:.2g} s" if value < 100 else f"{value:,.0f} s"


def _nan(value: float, fmt: str) -> str:
    return "\u2013" if math.isnan(value) else format(value, fmt)


class Dashboard(widgets.VBox):  # type: ignore[misc]  # ipywidgets is untyped
    """A pool's settings on sliders over one trace, with charts and a summary that follow them.

    Build it with :func:`dashboard`. It *is* an ``ipywidgets.VBox``: show it,
    or put it in another layout. Attributes:

    - ``controls``: ``{"workers", "queue_size", "load", "job_timeout",
      "backpressure", "shutdown", "shutdown_at"}`` -> the widget; set a
      widget's ``value`` and the dashboard re-simulates and redraws at once.
      ``queue_size``, ``job_timeout`` and ``shutdown_at`` use ``math.inf`` for
      unbounded / off.
    - ``trace``: the validated trace; ``seed`` and ``slo`` as given.
    - ``last_result``: the :class:`~poolsim.SimResult` on show.
    - ``figure``: the one matplotlib ``Figure`` (queue depth above, latency
      histogram below), redrawn in place; ``image`` shows it as a PNG.
    - ``summary_html``: the summary table's HTML (``summary_widget`` shows it).
    - ``status``: an ``ipywidgets.HTML`` line: engine, jobs, timings or the error.
    - ``error``: the ``PoolsimError`` the current settings raised, else None
      (the charts then still show ``last_result``).
    - ``timings``: seconds spent by the last update in ``simulate``, ``draw``,
      ``render`` and ``total`` (0 for steps a cache hit skipped).
    """

    def __init__(self, trace: pd.DataFrame | str, *, config: PoolConfig | None = None,
                 seed: int = 1, slo: float | None = None, cache_size: int = 8,
                 max_points: int = 2000) -> None:
        trace = load_trace(trace)
        if config is None:
            config = PoolConfig()
        if not isinstance(config, PoolConfig):
            raise ConfigError("config", config, "None or a PoolConfig")
        if slo is not None and not (isinstance(slo, int | float) and not isinstance(slo, bool)
                                    and math.isfinite(slo) and slo > 0):
            raise ConfigError("slo", slo, "None or a finite number of seconds > 0")
        for name, value, least in (("cache_size", cache_size, 1), ("max_points", max_points, 8)):
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ConfigError(name, value, f"an integer >= {least}")
        controls = self._controls(trace, config)
        figure = Figure(figsize=(9.0, 6.6), dpi=80)
        figure.subplots_adjust(left=0.08, right=0.70, top=0.90, bottom=0.09, hspace=0.62)
        figure.subplots(2, 1)
        # the chart below the controls and table, scaled down (never cropped) when narrow
        image = widgets.Image(format="png", layout=widgets.Layout(
            max_width="100%", height="auto", object_fit="contain"))
        summary = widgets.HTML(layout=widgets.Layout(margin="0 0 0 24px"))
        status = widgets.HTML()
        panel = widgets.HBox([widgets.VBox([*controls.values()]), summary],
                             layout=widgets.Layout(flex_flow="row wrap"))
        super().__init__(children=[status, panel, image])

        self.trace: pd.DataFrame = trace
        self.seed = seed
        self.slo = None if slo is None else float(slo)
        self.base_config = config
        self.controls: dict[str, Any] = controls
        self.figure = figure
        self.image = image
        self.summary_widget = summary
        self.status = status
        self.summary_html = ""
        self.error: PoolsimError | None = None
        self.timings: dict[str, float] = {}
        self.max_points = max_points
        self._cache: OrderedDict[_Params, _Entry] = OrderedDict()
        self._cache_size = cache_size
        self._hits = self._misses = 0
        self._entry: _Entry | None = None
        self._closed = False
        arrival = trace["arrival_s"].to_numpy(dtype=float)
        self._time_unit = _time_unit(float(arrival[-1] - arrival[0]))
        try:
            self._update(raising=True)
        except BaseException:
            self.close()  # nothing half-built stays registered with ipywidgets
            raise
        for control in controls.values():
            control.observe(self._on_change, names="value")

    # -- building -------------------------------------------------------------------

    @staticmethod
    def _controls(trace: pd.DataFrame, config: PoolConfig) -> dict[str, Any]:
        """The widgets, set to ``config``; their option lists fitted to the trace."""
        arrival = trace["arrival_s"].to_numpy(dtype=float)
        service = trace["service_s"].to_numpy(dtype=float)
        span = float(arrival[-1] - arrival[0])
        offered = float(service.sum()) / span if span > 0 else float(len(service))
        workers_max = max(16, 2 * config.workers, math.ceil(3 * offered))

        queue = INF if config.queue_size is None else config.queue_size
        sizes = sorted({*QUEUE_SIZES, queue})
        queue_options = [(_INFINITY if s == INF else f"{s:g}", s) for s in sizes]

        timeouts: dict[float, str] = {}
        positive = service[service > 0]
        if positive.size:
            for q, value in zip(TIMEOUT_PERCENTILES,
                                np.percentile(positive, TIMEOUT_PERCENTILES), strict=True):
                rounded = float(f"{value:.2g}")
                timeouts.setdefault(rounded, f"{_seconds_label(rounded)} (p{q:g})")
        if config.job_timeout is not None:
            timeouts.setdefault(config.job_timeout, _seconds_label(config.job_timeout))
        timeout_options = [(_OFF, INF), *((timeouts[v], v) for v in sorted(timeouts))]

        unit, scale = _time_unit(span)
        instants = [float(arrival[0]) + span * k / SHUTDOWN_STEPS
                    for k in range(SHUTDOWN_STEPS + 1)] if span > 0 else [float(arrival[0])]
        at_options = [(_OFF, INF), *((f"{t / scale:.4g} {unit}", t) for t in instants)]

        def slider(kind: Any, description: str, **options: Any) -> Any:
            return kind(description=description, continuous_update=False,
                        layout=widgets.Layout(**_CONTROL_LAYOUT), style=_CONTROL_STYLE,
                        **options)

        def dropdown(description: str, options: Sequence[str], value: str) -> Any:
            return widgets.Dropdown(description=description, options=list(options), value=value,
                                    layout=widgets.Layout(**_CONTROL_LAYOUT),
                                    style=_CONTROL_STYLE)

        return {
            "workers": slider(widgets.IntSlider, "workers", value=config.workers, min=1,
                              max=workers_max, step=1),
            "queue_size": slider(widgets.SelectionSlider, "queue size",
                                 options=queue_options, value=queue),
            "load": slider(widgets.FloatSlider, f"load {_TIMES}", value=1.0, min=0.1, max=4.0,
                           step=0.1, readout_format=".1f"),
            "job_timeout": slider(widgets.SelectionSlider, "job timeout",
                                  options=timeout_options,
                                  value=INF if config.job_timeout is None else config.job_timeout),
            "backpressure": dropdown("back-pressure", [b.value for b in Backpressure],
                                     config.backpressure.value),
            "shutdown": dropdown("shutdown", [s.value for s in ShutdownPolicy],
                                 config.shutdown.value),
            "shutdown_at": slider(widgets.SelectionSlider, "shutdown at",
                                  options=at_options, value=INF),
        }

    # -- state ----------------------------------------------------------------------

    def _params(self) -> _Params:
        c = self.controls
        queue, timeout, at = c["queue_size"].value, c["job_timeout"].value, c["shutdown_at"].value
        return _Params(
            workers=int(c["workers"].value),
            queue_size=None if queue == INF else int(queue),
            backpressure=str(c["backpressure"].value),
            job_timeout=None if timeout == INF else float(timeout),
            load=round(float(c["load"].value), 6),  # a browser's 0.1 steps add float noise
            shutdown_at=None if at == INF else float(at),
            shutdown=None if at == INF else str(c["shutdown"].value))

    @property
    def config(self) -> PoolConfig:
        """The :class:`~poolsim.PoolConfig` the controls describe now."""
        p = self._params()
        return self.base_config.replace(
            workers=p.workers, queue_size=p.queue_size, backpressure=p.backpressure,
            job_timeout=p.job_timeout, shutdown=self.controls["shutdown"].value)

    @property
    def last_result(self) -> SimResult:
        """The simulation on show (the last one that succeeded)."""
        assert self._entry is not None, "the constructor draws once"
        return self._entry.result

    @property
    def summary(self) -> Summary:
        """``last_result.summary``: what the table shows."""
        return self.last_result.summary

    def __repr__(self) -> str:  # the widget's own repr would list every child's state
        if getattr(self, "_entry", None) is None:
            return "Dashboard(not built)"
        return f"Dashboard({len(self.trace):,} jobs, {self.config!r})"

    def close(self) -> None:
        """Close the dashboard and every widget in it (their layouts and styles too), and drop
        the cached results. ipywidgets keeps every widget until it is closed, so a notebook
        that builds dashboards again and again should close the ones it is done with."""
        self._closed = True
        cache = getattr(self, "_cache", None)  # ipywidgets closes half-built widgets too
        if cache is not None:
            cache.clear()
        found: dict[int, Any] = {}
        stack: list[Any] = [self]
        while stack:
            widget = stack.pop()
            if id(widget) in found:
                continue
            found[id(widget)] = widget
            for name in widget.keys:
                value = getattr(widget, name, None)
                values = value if isinstance(value, list | tuple) else (value,)
                stack.extend(v for v in values if isinstance(v, widgets.Widget))
        for widget in found.values():
            if widget is not self:
                widget.close()
        super().close()

    def cache_info(self) -> CacheInfo:
        """Hits and misses of the result cache since the dashboard was built."""
        return CacheInfo(self._hits, self._misses, self._cache_size, len(self._cache))

    # -- updating -------------------------------------------------------------------

    def _on_change(self, change: Any) -> None:
        if not self._closed:
            self._update(raising=False)

    def _result(self, params: _Params) -> _Entry:
        """The cached simulation for ``params``, or a new one (evicting the least recent)."""
        entry = self._cache.get(params)
        if entry is not None:
            self._hits += 1
            self._cache.move_to_end(params)
            return entry
        began = time.perf_counter()
        config = self.config
        result = simulate(self.trace, config, seed=self.seed, load=params.load,
                          shutdown_at=params.shutdown_at)
        depth = result.queue_depth()
        times, values = depth.index.to_numpy(dtype=float), depth.to_numpy(dtype=float)
        length = float(times[-1] - times[0]) if times.size else 0.0
        mean = float(np.sum(values[:-1] * np.diff(times)) / length) if length > 0 else 0.0
        peak = float(values.max()) if values.size else 0.0
        drawn_t, drawn_v = _decimate(times, values, self.max_points)
        _ = result.summary  # computed here, so "simulate" covers everything cached
        entry = _Entry(result, time.perf_counter() - began, drawn_t, drawn_v, mean, peak)
        self._misses += 1
        self._cache[params] = entry
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return entry

    def _update(self, *, raising: bool) -> None:
        began = time.perf_counter()
        params = self._params()
        self.controls["shutdown"].disabled = params.shutdown_at is None
        misses = self._misses
        try:
            entry = self._result(params)
        except PoolsimError as exc:
            if raising:
                raise
            self.error = exc
            self.status.value = (f"<span style='color:{SLO_COLOR}'><b>{type(exc).__name__}</b>: "
                                 f"{html.escape(str(exc))}</span> (charts show the last result)")
            return
        simulated = time.perf_counter()
        self.error = None
        self._entry = entry
        top, bottom = self.figure.axes[:2]
        self._draw_depth(top, entry, params)
        _wipe(bottom)
        plot.latency_histogram(entry.result.jobs, ax=bottom, slo=self.slo,
                               buckets=_buckets_with(self.slo))
        self.figure.suptitle(self._title(params), fontsize="medium")
        drawn = time.perf_counter()
        fresh = entry.png is None
        if entry.png is None:
            buffer = io.BytesIO()
            self.figure.savefig(buffer, format="png")
            entry.png = buffer.getvalue()
        rendered = time.perf_counter()
        self.image.value = entry.png
        if not entry.summary_html:
            entry.summary_html = self._summary_html(entry.result, params)
        self.summary_html = entry.summary_html
        self.summary_widget.value = self.summary_html
        done = time.perf_counter()
        missed = self._misses > misses
        self.timings = {"simulate": entry.seconds if missed else 0.0,
                        "draw": drawn - simulated, "render": rendered - drawn if fresh else 0.0,
                        "total": done - began}
        result = entry.result
        self.status.value = (
            f"<b>{result.engine}</b> engine {_DOT} {len(result.trace):,} "
            f"job{'' if len(result.trace) == 1 else 's'} {_DOT} "
            + (f"simulated in {entry.seconds * 1e3:.0f} ms" if missed else "cached result")
            + f" {_DOT} updated in {(done - began) * 1e3:.0f} ms")

    # -- drawing --------------------------------------------------------------------

    def _title(self, p: _Params) -> str:
        queue = _INFINITY if p.queue_size is None else f"{p.queue_size}"
        timeout = _OFF if p.job_timeout is None else _seconds_label(p.job_timeout)
        text = (f"{p.workers} workers, queue {queue}, {p.backpressure}, "
                f"load {_TIMES}{p.load:g}, job timeout {timeout}")
        if p.shutdown_at is not None:
            text += f", {p.shutdown} shutdown"
        return text

    def _draw_depth(self, ax: Axes, entry: _Entry, p: _Params) -> None:
        _wipe(ax)
        unit, scale = self._time_unit
        if entry.times.size:
            ax.step(entry.times / scale, entry.depths, where="post", linewidth=1,
                    color=_DEPTH_COLOR,
                    label=f"queue depth (mean {entry.mean:.3g}, max {entry.peak:g})")
        else:
            note(ax, "no jobs")
        if p.queue_size is not None and 0 < p.queue_size <= 2 * max(entry.peak, 1.0):
            ax.axhline(p.queue_size, color="0.35", linestyle=":", linewidth=1,
                       label=f"queue size {p.queue_size}")
        if p.shutdown_at is not None:
            ax.axvline(p.shutdown_at / scale, color="black", linestyle="--", linewidth=1.5,
                       label=f"{p.shutdown} shutdown at {p.shutdown_at / scale:.4g} {unit}")
        ax.set(xlabel=f"time ({unit})", ylabel="jobs waiting in queue",
               title="Queue depth over time")
        ax.set_ylim(bottom=0)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        legend_outside(ax)

    def _summary_html(self, result: SimResult, p: _Params) -> str:
        s = result.summary
        rows = [("engine", result.engine), ("jobs", f"{s.jobs:,}")]
        rows += [(status, f"{n:,} ({n / s.jobs:.1%})") for status, n in s.counts.items() if n]
        rows += [("throughput", f"{_nan(s.throughput, '.4g')} jobs/s"),
                 ("rejection rate", _nan(s.rejection_rate, ".2%")),
                 ("drop rate", _nan(s.drop_rate, ".2%")),
                 ("utilisation", _nan(s.utilisation, ".1%")),
                 ("wait p50 / p99",
                  f"{_nan(s.wait_p50, '.3g')} / {_nan(s.wait_p99, '.3g')} s"),
                 ("latency p50 / p95 / p99",
                  f"{_nan(s.latency_p50, '.3g')} / {_nan(s.latency_p95, '.3g')} / "
                  f"{_nan(s.latency_p99, '.3g')} s")]
        if self.slo is not None:
            jobs = result.jobs
            done = (jobs["status"] == Status.COMPLETED.value).to_numpy(dtype=bool)
            latency = (jobs["end_s"].to_numpy(dtype=float)
                       - jobs["arrival_s"].to_numpy(dtype=float))[done]
            share = float(np.mean(latency > self.slo)) if latency.size else math.nan
            rows.append((f"over SLO {self.slo:g} s", _nan(share, ".2%")))
        if result.shutdown is not None:
            d = result.shutdown
            rows.append(("shutdown", f"{d.policy} at {d.at:.4g} s: exit after "
                         f"{d.duration_s:.3g} s; {len(d.completed):,} completed, "
                         f"{len(d.returned):,} returned, {len(d.cancelled):,} cancelled"))
        body = "".join(f"<tr><th style='text-align:left;padding:0 1em 0 0'>{html.escape(k)}</th>"
                       f"<td style='text-align:right;padding:0'>{html.escape(v)}</td></tr>"
                       for k, v in rows)
        return f"<table style='font-size:smaller;line-height:1.35'>{body}</table>"


def dashboard(trace: pd.DataFrame | str, *, config: PoolConfig | None = None, seed: int = 1,
              slo: float | None = None, cache_size: int = 8,
              max_points: int = 2000) -> Dashboard:
    """A :class:`Dashboard` over ``trace``: sliders and dropdowns for the pool's settings,
    starting from ``config`` (default ``PoolConfig()``), with charts and a summary that
    re-simulate on every change.

    ``trace`` is anything :func:`poolsim.load_trace` takes (a DataFrame, a path
    or a shipped trace's name) and is validated first: an empty or malformed
    trace raises its :class:`~poolsim.TraceError` here. ``seed`` seeds the load
    scaling (``simulate(..., seed=)``); ``slo`` (seconds) draws a line on the
    latency histogram and adds the share of completed jobs slower than it to
    the summary. ``cache_size`` results are kept (least recently used evicted;
    each holds its jobs frame, about 14 MB for 100,000 jobs);
    the queue-depth line is decimated to at most ``max_points`` points.
    """
    return Dashboard(trace, config=config, seed=seed, slo=slo, cache_size=cache_size,
                     max_points=max_points)


def _buckets_with(slo: float | None) -> tuple[float, ...]:
    """The default Prometheus buckets, plus an edge at the SLO: the histogram an operator
    should export shows exactly how many jobs miss it."""
    return DURATION_BUCKETS if slo is None else tuple(sorted({*DURATION_BUCKETS, slo}))
