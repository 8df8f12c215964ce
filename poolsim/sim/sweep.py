"""Sweeps over configurations, and the recommendation an SLO picks from them.

A sweep runs :func:`~poolsim.sim.model.simulate` once per configuration of a
grid and returns one row per configuration: the ``PoolConfig`` fields, then
the summary columns (``Summary.as_dict()``). It runs in parallel worker
processes, or on any ``concurrent.futures.Executor`` you pass — a
``dask.distributed`` client's ``client.get_executor()`` works too, so a sweep
can leave one machine.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import multiprocessing
import numbers
import os
import sys
from collections.abc import Iterable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from poolsim.config import PoolConfig
from poolsim.errors import ConfigError
from poolsim.sim.model import Runtime, simulate

__all__ = ["Recommendation", "recommend", "sweep"]

CONFIG_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(PoolConfig))
_INLINE_JOBS = 300_000  # below this many simulated jobs in all, processes cost more than they save
# fork where there is one: workers start at once and scripts need no __main__ guard
# (on Linux only: elsewhere fork is unsafe, and the platform's default is used)
_FORK = multiprocessing.get_context("fork" if sys.platform == "linux" else None)


def sweep(
    trace: pd.DataFrame,
    *,
    base: PoolConfig | None = None,
    seed: int | None = None,
    load: float = 1.0,
    runtime: Runtime = "threads",
    shutdown_at: float | None = None,
    executor: Executor | None = None,
    progress: bool | None = None,
    **grid: Any,
) -> pd.DataFrame:
    """Simulate every combination of ``grid`` (PoolConfig fields -> values) on ``trace``.

    Fields not in the grid come from ``base``; ``load`` rescales the trace
    first (seeded by ``seed``), as in :func:`simulate`. ``executor=None`` runs small
    sweeps in this process and large ones on all cores; ``progress`` shows a
    (notebook-aware) bar, by default only on a terminal.

    >>> import pandas as pd
    >>> trace = pd.DataFrame({"arrival_s": [0.0, 0.0, 0.0], "service_s": [1.0, 1.0, 1.0]})
    >>> sweep(trace, workers=[1, 3], queue_size=[0])[["workers", "n_rejected", "latency_p99"]]
       workers  n_rejected  latency_p99
    0        1           2          1.0
    1        3           0          1.0
    """
    from poolsim.traces import load_trace

    trace = load_trace(trace)
    configs = _configs(base or PoolConfig(), grid)
    columns = {"arrival_s": trace["arrival_s"].to_numpy(float),
               "service_s": trace["service_s"].to_numpy(float)}
    if load != 1.0:  # rescale once here, not once per configuration
        from poolsim.reshape import scale_load

        trace = scale_load(trace, load, seed=seed)
    options = {"runtime": runtime, "shutdown_at": shutdown_at}
    inline = executor is None and len(configs) * len(trace) < _INLINE_JOBS
    chunks = _chunks(configs, 1 if inline else 4 * (os.cpu_count() or 1))
    bar = tqdm(total=len(configs), unit="config", disable=None if progress is None
               else not progress, desc="sweep")
    rows: list[dict[str, Any]] = []
    try:
        if inline:
            for chunk in chunks:
                rows += _run_chunk(columns, chunk, options)
                bar.update(len(chunk))
        else:
            own = executor is None
            pool = executor or ProcessPoolExecutor(
                min(len(chunks), os.cpu_count() or 1), mp_context=_FORK)
            try:
                futures = {pool.submit(_run_chunk, columns, chunk, options): i
                           for i, chunk in enumerate(chunks)}
                results: dict[int, list[dict[str, Any]]] = {}
                for future in as_completed(futures):
                    results[futures[future]] = future.result()
                    bar.update(len(chunks[futures[future]]))
                rows = [row for i in range(len(chunks)) for row in results[i]]
            finally:
                if own:
                    pool.shutdown()
    finally:
        bar.close()
    return pd.DataFrame(rows)


def _configs(base: PoolConfig, grid: dict[str, Any]) -> list[PoolConfig]:
    """Every combination of the grid, validated before anything runs."""
    for name in grid:
        if name not in CONFIG_FIELDS:
            raise ConfigError(name, grid[name], "a PoolConfig field: " + ", ".join(CONFIG_FIELDS))
    axes = {name: list(values) if _is_axis(values) else [values] for name, values in grid.items()}
    for name, values in axes.items():
        if not values:
            raise ConfigError(name, grid[name], "at least one value")
    return [base.replace(**dict(zip(axes, combo, strict=True)))
            for combo in itertools.product(*axes.values())]


def _is_axis(values: Any) -> bool:
    return isinstance(values, Iterable) and not isinstance(values, str | bytes)


def _chunks(configs: list[PoolConfig], n: int) -> list[list[PoolConfig]]:
    size = max(1, math.ceil(len(configs) / n))
    return [configs[i:i + size] for i in range(0, len(configs), size)]


def _run_chunk(columns: dict[str, np.ndarray], configs: Sequence[PoolConfig],
               options: dict[str, Any]) -> list[dict[str, Any]]:
    """Simulate some configurations on one trace: runs in a worker process."""
    trace = pd.DataFrame(columns)
    rows = []
    for config in configs:
        result = simulate(trace, config, **options)
        row: dict[str, Any] = {name: _plain(getattr(config, name)) for name in CONFIG_FIELDS}
        row.update(result.summary.as_dict())
        row["engine"] = result.engine
        rows.append(row)
    return rows


def _plain(value: Any) -> Any:
    """Policies as their string values, so the table reads (and pickles) simply."""
    return value.value if hasattr(value, "value") else value


@dataclasses.dataclass(frozen=True)
class Recommendation:
    """The cheapest configuration that meets an SLO, or why none does.

    ``met`` says whether one does; ``config`` and ``row`` are that
    configuration (or, when none meets the SLO, the one closest to it);
    ``binding`` names the constraint(s) no configuration could meet;
    ``reason`` says it in a sentence generated from the data.
    """

    met: bool
    config: PoolConfig
    row: pd.Series
    binding: tuple[str, ...]
    reason: str


def check_slo(p99: Any, max_reject: Any) -> tuple[float, float]:
    """An SLO's limits, checked: p99 latency in seconds >= 0, and a share from 0 to 1."""
    for name, value, top in (("p99", p99, math.inf), ("max_reject", max_reject, 1.0)):
        number = float(value) if isinstance(value, numbers.Real) else math.nan
        if isinstance(value, bool) or not (math.isfinite(number) and 0 <= number <= top):
            allowed = "a finite number of seconds >= 0" if name == "p99" else (
                "a share of jobs from 0 to 1 (0.001 is 0.1 %)")
            raise ConfigError(name, value, allowed)
    return float(p99), float(max_reject)


def recommend(grid: pd.DataFrame, *, p99: float, max_reject: float) -> Recommendation:
    """The cheapest row of a sweep with ``latency_p99 <= p99`` and at most ``max_reject``
    of the jobs refused or timed out (``n_rejected + n_dropped + n_timeout``).

    Cheapest means fewest workers, then the smallest queue (an unbounded queue
    last). When no row meets both limits the result says which one binds, and
    offers the row that misses them by the least (relative to each limit).
    """
    p99, max_reject = check_slo(p99, max_reject)
    if grid.empty:
        raise ConfigError("grid", "empty sweep", "a sweep with at least one row")
    refused = (grid["n_rejected"] + grid["n_dropped"] + grid["n_timeout"]) / grid["jobs"]
    ranked = grid.assign(_queue=grid["queue_size"].fillna(math.inf).astype(float),
                         refused=refused)
    ranked = ranked.sort_values(["workers", "_queue"], kind="stable")
    fast_enough = ranked["latency_p99"] <= p99
    kept = ranked["refused"] <= max_reject
    if (fast_enough & kept).any():
        best = ranked[fast_enough & kept].iloc[0]
        return Recommendation(True, _config(best), _public(best), (),
                              f"{_describe(best)} is the cheapest configuration with p99 "
                              f"latency {best['latency_p99']:.4g} s <= {p99:g} s and "
                              f"{best['refused']:.3%} refused <= {max_reject:.3%}.")
    binding = tuple(name for name, ok in (("p99", fast_enough), ("max_reject", kept))
                    if not ok.any()) or ("p99", "max_reject")
    tiny = 1e-9  # a limit of 0 makes any excess count a lot, not infinitely
    miss = (np.maximum(ranked["latency_p99"].fillna(math.inf) - p99, 0) / max(p99, tiny)
            + np.maximum(ranked["refused"] - max_reject, 0) / max(max_reject, tiny))
    closest = ranked.assign(_miss=miss).sort_values("_miss", kind="stable").iloc[0]
    verb = "binds" if len(binding) == 1 else "bind"
    return Recommendation(
        False, _config(closest), _public(closest), binding,
        f"No configuration meets the SLO: the lowest p99 latency in the sweep is "
        f"{ranked['latency_p99'].min():.4g} s (limit {p99:g} s) and the lowest refused share "
        f"is {ranked['refused'].min():.3%} (limit {max_reject:.3%}); "
        f"{' and '.join(binding)} {verb}. Closest: {_describe(closest)}. "
        + ("Sweep more workers: a larger queue only waits longer." if "max_reject" not in binding
           else "Sweep more workers or a larger queue."))


def _config(row: pd.Series) -> PoolConfig:
    values = {name: row[name] for name in CONFIG_FIELDS}
    for name, value in values.items():
        if isinstance(value, float) and math.isnan(value):
            values[name] = None
        elif isinstance(value, np.integer | np.floating):
            values[name] = value.item()
    if values["queue_size"] is not None:
        values["queue_size"] = int(values["queue_size"])
    return PoolConfig(**values)


def _public(row: pd.Series) -> pd.Series:
    return row.drop(labels=[label for label in row.index if str(label).startswith("_")])


def _describe(row: pd.Series) -> str:
    queue = "an unbounded queue" if _config(row).queue_size is None else (
        f"queue_size={int(row['queue_size'])}")
    return f"workers={int(row['workers'])} with {queue} ({row['backpressure']})"
