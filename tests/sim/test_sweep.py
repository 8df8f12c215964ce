"""Sweeps: one row per configuration in grid order, validated before anything runs, the same
rows inline, on threads and in processes; and the cheapest configuration that meets an SLO."""

from __future__ import annotations

import importlib
import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings

from poolsim import ConfigError, PoolConfig, poisson
from poolsim.sim.model import simulate
from poolsim.sim.sweep import CONFIG_FIELDS, recommend, sweep
from tests.strategies import sweep_tables, trace_frames

# `poolsim.sim.sweep` the attribute is the function (poolsim.sim re-exports it); the module:
sweep_module = importlib.import_module("poolsim.sim.sweep")
NAN = math.nan


def trace(*jobs: tuple[float, float]) -> pd.DataFrame:
    """A trace from (arrival_s, service_s) pairs."""
    return pd.DataFrame(jobs, columns=["arrival_s", "service_s"])


THREE_AT_ONCE = trace((0, 1), (0, 1), (0, 1))
POISSON = poisson(2.0, n=60, service=("exponential", 1.0), seed=3)
GRID: dict[str, Any] = {"workers": [1, 2, 3], "queue_size": [0, 2, None],
                        "backpressure": ["reject", "drop_oldest"]}


def plain(value: Any) -> Any:
    """NaN as None, numpy scalars as Python ones: a table cell as the config held it."""
    if isinstance(value, float | np.floating) and math.isnan(value):
        return None
    return value.item() if isinstance(value, np.generic) else value


def config_of(row: pd.Series | dict[str, Any]) -> PoolConfig:
    """The PoolConfig a table row was simulated with (a NaN-holed queue column is float)."""
    values = {name: plain(row[name]) for name in CONFIG_FIELDS}
    if values["queue_size"] is not None:
        values["queue_size"] = int(values["queue_size"])
    return PoolConfig(**values)


def cells(grid: pd.DataFrame, *columns: str) -> list[tuple[Any, ...]]:
    return [tuple(plain(v) for v in row) for row in grid[list(columns)].itertuples(index=False)]


# -- the table -------------------------------------------------------------------------


def test_one_row_per_configuration_in_grid_order() -> None:
    grid = sweep(THREE_AT_ONCE, workers=[1, 3], queue_size=[0, 1, None])
    summary_columns = list(simulate(THREE_AT_ONCE, PoolConfig()).summary.as_dict())
    assert list(grid.columns) == [*CONFIG_FIELDS, *summary_columns, "engine"]
    assert cells(grid, "workers", "queue_size", "n_completed", "n_rejected", "engine") == [
        (1, 0, 1, 2, "fast"), (1, 1, 2, 1, "fast"), (1, None, 3, 0, "fast"),
        (3, 0, 3, 0, "fast"), (3, 1, 3, 0, "fast"), (3, None, 3, 0, "fast")]


def test_each_row_is_that_configurations_simulated_summary() -> None:
    grid = sweep(POISSON, seed=5, **GRID)
    for row in grid.to_dict("records"):
        config = config_of(row)
        result = simulate(POISSON, config, seed=5)
        expected = {**result.summary.as_dict(), "engine": result.engine}
        assert {k: plain(row[k]) for k in expected} == {k: plain(v) for k, v in expected.items()}


def test_scalars_are_held_and_any_iterable_is_an_axis() -> None:
    grid = sweep(THREE_AT_ONCE, workers=np.array([1, 2]), queue_size=(0, 5),
                 backpressure="drop_oldest", job_timeout=None, block_timeout=2)
    assert cells(grid, "workers", "queue_size", "backpressure", "job_timeout",
                 "block_timeout") == [(1, 0, "drop_oldest", None, 2.0),
                                      (1, 5, "drop_oldest", None, 2.0),
                                      (2, 0, "drop_oldest", None, 2.0),
                                      (2, 5, "drop_oldest", None, 2.0)]
    one = sweep(THREE_AT_ONCE, workers=range(2, 3), queue_size=None)
    assert cells(one, "workers", "queue_size") == [(2, None)]


def test_base_fields_are_carried_and_the_grid_overrides_them() -> None:
    base = PoolConfig(workers=7, queue_size=3, backpressure="drop_oldest", block_timeout=2.5,
                      job_timeout=0.5, shutdown="immediate", shutdown_timeout=4.0)
    grid = sweep(THREE_AT_ONCE, base=base, workers=[1, 2])
    assert cells(grid, *CONFIG_FIELDS) == [
        (1, 3, "drop_oldest", 2.5, 0.5, "immediate", 4.0),
        (2, 3, "drop_oldest", 2.5, 0.5, "immediate", 4.0)]


def test_a_sweep_with_no_grid_is_the_base_alone() -> None:
    grid = sweep(THREE_AT_ONCE, base=PoolConfig(workers=2, queue_size=0))
    assert cells(grid, "workers", "queue_size", "n_rejected") == [(2, 0, 1)]


def test_options_reach_every_simulation() -> None:
    grid = sweep(THREE_AT_ONCE, shutdown_at=0.5, runtime="asyncio",
                 base=PoolConfig(shutdown="finish_in_flight"), workers=[1, 2], queue_size=5)
    assert cells(grid, "workers", "n_completed", "n_returned", "engine") == [
        (1, 1, 2, "simpy"), (2, 2, 1, "simpy")]


# -- validation first ------------------------------------------------------------------


@pytest.fixture
def simulated(monkeypatch: pytest.MonkeyPatch) -> list[PoolConfig]:
    """The configurations the sweep simulates (it simulates them for real)."""
    calls: list[PoolConfig] = []

    def recording(trace: pd.DataFrame, config: PoolConfig, **options: Any) -> Any:
        calls.append(config)
        return simulate(trace, config, **options)

    monkeypatch.setattr(sweep_module, "simulate", recording)
    return calls


BAD_GRIDS = [
    ({"workers": [1, 2, 0]}, "workers"),
    ({"workers": range(1, 40), "queue_size": [0, 10, -1]}, "queue_size"),
    ({"workers": [*range(1, 40), 0], "queue_size": [0, 10, 100]}, "workers"),
    ({"queue_size": [0, 1.5]}, "queue_size"),
    ({"backpressure": ["reject", "sideways"]}, "backpressure"),
    ({"block_timeout": [1.0, 0]}, "block_timeout"),
    ({"job_timeout": [None, NAN]}, "job_timeout"),
    ({"shutdown": ["drain", "later"]}, "shutdown"),
    ({"shutdown_timeout": -1.0}, "shutdown_timeout"),
    ({"workers": [1, 2], "queue_size": []}, "queue_size"),
    ({"workers": [1, 2], "colour": ["red"]}, "colour"),
]


@pytest.mark.parametrize(("grid", "field"), BAD_GRIDS)
@pytest.mark.parametrize("threads", [False, True])
def test_a_bad_value_anywhere_is_refused_before_anything_runs(
        grid: dict[str, Any], field: str, threads: bool, simulated: list[PoolConfig]) -> None:
    with ThreadPoolExecutor(2) as executor, pytest.raises(ConfigError) as info:
        sweep(POISSON, executor=executor if threads else None, **grid)
    assert (info.value.field, simulated) == (field, [])


def test_an_unknown_grid_key_says_what_the_fields_are() -> None:
    with pytest.raises(ConfigError, match=r"colour.*workers, queue_size, backpressure"):
        sweep(THREE_AT_ONCE, colour=["red"])


def test_bad_options_are_config_errors() -> None:
    for options, field in [({"runtime": "fibers"}, "runtime"), ({"shutdown_at": -1.0},
                                                                "shutdown_at")]:
        with pytest.raises(ConfigError) as info:
            sweep(THREE_AT_ONCE, workers=[1, 2], **options)
        assert info.value.field == field


# -- inline, threads, processes ---------------------------------------------------------


@pytest.fixture
def process_pools(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many process pools the sweep starts (each one real)."""
    started: list[int] = []

    class Counting(ProcessPoolExecutor):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            started.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(sweep_module, "ProcessPoolExecutor", Counting)
    return started


@pytest.fixture(scope="module")
def inline_rows() -> pd.DataFrame:
    return sweep(POISSON, seed=1, **GRID)


def test_a_small_sweep_runs_inline(process_pools: list[int]) -> None:
    sweep(POISSON, **GRID)
    assert process_pools == []


def test_the_same_rows_on_a_thread_pool(inline_rows: pd.DataFrame,
                                        process_pools: list[int]) -> None:
    with ThreadPoolExecutor(max_workers=2) as executor:
        rows = sweep(POISSON, seed=1, executor=executor, **GRID)
    pd.testing.assert_frame_equal(rows, inline_rows)
    assert process_pools == []


def test_the_same_rows_in_worker_processes(inline_rows: pd.DataFrame,
                                           process_pools: list[int],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sweep_module, "_INLINE_JOBS", 0)
    rows = sweep(POISSON, seed=1, **GRID)
    pd.testing.assert_frame_equal(rows, inline_rows)
    assert process_pools == [1]


def test_the_same_rows_on_a_process_pool_passed_in(inline_rows: pd.DataFrame) -> None:
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with ProcessPoolExecutor(max_workers=2, mp_context=context) as executor:
        rows = sweep(POISSON, seed=1, executor=executor, **GRID)
    pd.testing.assert_frame_equal(rows, inline_rows)


# -- recommend ---------------------------------------------------------------------------


def table(*rows: tuple[int, int | None, float, int]) -> pd.DataFrame:
    """A made-up sweep: (workers, queue_size, latency_p99, jobs refused of 1000) per row."""
    return pd.DataFrame([
        {**{name: getattr(PoolConfig(workers=w, queue_size=q), name) for name in CONFIG_FIELDS},
         "jobs": 1000, "n_rejected": refused, "n_dropped": 0, "n_timeout": 0, "latency_p99": p99}
        for w, q, p99, refused in rows]).assign(
        backpressure="reject", shutdown="drain")


def cheapest(grid: pd.DataFrame, **slo: float) -> tuple[int, int | None]:
    chosen = recommend(grid, **slo)
    assert chosen.met
    return chosen.config.workers, chosen.config.queue_size


def test_cheapest_is_fewest_workers_then_smallest_queue_unbounded_last() -> None:
    rows = [(4, 0, 1.0, 0), (2, None, 1.0, 0), (3, 0, 1.0, 0), (2, 100, 1.0, 0),
            (2, 10, 1.0, 0)]
    assert cheapest(table(*rows), p99=2.0, max_reject=0.0) == (2, 10)
    assert cheapest(table(*rows[:-1]), p99=2.0, max_reject=0.0) == (2, 100)
    assert cheapest(table(*rows[:-2]), p99=2.0, max_reject=0.0) == (2, None)
    assert cheapest(table(*rows[:1], *rows[2:3]), p99=2.0, max_reject=0.0) == (3, 0)


def test_limits_are_inclusive_and_failing_rows_are_skipped() -> None:
    grid = table((1, 0, 2.0, 3), (1, 10, 2.5, 0), (2, 0, 2.0, 1), (2, 10, 1.0, 0))
    assert cheapest(grid, p99=2.0, max_reject=0.001) == (2, 0)
    assert cheapest(grid, p99=2.0, max_reject=0.003) == (1, 0)
    assert cheapest(grid, p99=2.5, max_reject=0.0) == (1, 10)


def test_a_met_slo_says_so_with_the_numbers() -> None:
    chosen = recommend(table((1, 0, 9.0, 0), (2, 10, 1.5, 1), (3, 10, 1.0, 0)),
                       p99=2.0, max_reject=0.005)
    assert (chosen.met, chosen.binding, chosen.row["latency_p99"]) == (True, (), 1.5)
    assert chosen.reason == (
        "workers=2 with queue_size=10 (reject) is the cheapest configuration with p99 latency "
        "1.5 s <= 2 s and 0.100% refused <= 0.500%.")


@pytest.mark.parametrize(("rows", "binding"), [
    ([(1, 0, 3.0, 0), (2, 0, 2.5, 0)], ("p99",)),
    ([(1, 0, 1.0, 50), (2, 0, 1.5, 20)], ("max_reject",)),
    ([(1, 0, 3.0, 50), (2, 0, 2.5, 20)], ("p99", "max_reject")),
    ([(1, 0, 1.0, 50), (2, None, 3.0, 0)], ("p99", "max_reject")),  # each alone, never both
])
def test_an_unmet_slo_names_the_binding_constraint(rows: list[tuple[int, int | None, float, int]],
                                                   binding: tuple[str, ...]) -> None:
    chosen = recommend(table(*rows), p99=2.0, max_reject=0.01)
    assert (chosen.met, chosen.binding) == (False, binding)
    best_p99 = min(row[2] for row in rows)
    best_refused = min(row[3] for row in rows) / 1000
    assert chosen.reason.startswith(
        f"No configuration meets the SLO: the lowest p99 latency in the sweep is {best_p99:g} s "
        f"(limit 2 s) and the lowest refused share is {best_refused:.3%} (limit 1.000%); "
        f"{' and '.join(binding)} bind")


def test_an_unmet_slo_still_offers_the_closest_configuration() -> None:
    chosen = recommend(table((1, 0, 10.0, 500), (2, 0, 2.2, 12), (3, 0, 1.0, 300)),
                       p99=2.0, max_reject=0.01)
    assert (chosen.met, chosen.config.workers) == (False, 2)
    assert "Closest: workers=2 with queue_size=0 (reject)" in chosen.reason


def test_with_no_refusals_allowed_the_closest_is_one_that_refuses_none() -> None:
    # Both rows miss p99 by the same factor; only the second meets max_reject=0.
    chosen = recommend(table((1, 0, 4.0, 400), (2, None, 4.0, 0)), p99=2.0, max_reject=0.0)
    assert (chosen.met, chosen.binding, chosen.config.workers) == (False, ("p99",), 2)


def test_a_table_row_comes_back_as_its_valid_config(tmp_path: Path) -> None:
    base = PoolConfig(backpressure="drop_oldest", block_timeout=0.25, shutdown="immediate")
    grid = sweep(POISSON, base=base, workers=[1, 2], queue_size=[0, None],
                 job_timeout=[None, 1.5])
    configs = [base.replace(workers=w, queue_size=q, job_timeout=t)
               for w in (1, 2) for q in (0, None) for t in (None, 1.5)]
    grid.to_csv(tmp_path / "sweep.csv", index=False)
    read_back = pd.read_csv(tmp_path / "sweep.csv")
    assert read_back["queue_size"].isna().sum() == 4  # unbounded, stored as NaN
    for table_ in (grid, read_back):
        back = [recommend(table_.iloc[[i]], p99=1e9, max_reject=1.0).config
                for i in range(len(table_))]
        assert back == configs
        assert all(type(c.workers) is int and type(c.block_timeout) is float for c in back)


def test_an_unbounded_queue_from_a_csv_is_recommended_as_none(tmp_path: Path) -> None:
    grid = sweep(THREE_AT_ONCE, workers=1, queue_size=[0, None])
    grid.to_csv(tmp_path / "sweep.csv", index=False)
    chosen = recommend(pd.read_csv(tmp_path / "sweep.csv"), p99=5.0, max_reject=0.0)
    assert chosen.config == PoolConfig(workers=1, queue_size=None)
    assert "workers=1 with an unbounded queue (reject)" in chosen.reason


@pytest.mark.parametrize(("field", "value"), [
    ("p99", -1.0), ("p99", NAN), ("p99", math.inf), ("p99", "2s"), ("p99", None),
    ("max_reject", -0.001), ("max_reject", NAN), ("max_reject", "0.1%"),
])
def test_bad_limits_are_config_errors(field: str, value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        recommend(table((1, 0, 1.0, 0)), **{"p99": 2.0, "max_reject": 0.01, field: value})
    assert info.value.field == field


@pytest.mark.parametrize(("field", "value"), [("p99", True), ("max_reject", 1.5),
                                              ("max_reject", 5)])  # 5 meant as 5 %?
def test_bools_and_shares_above_one_are_config_errors(field: str, value: Any) -> None:
    # PoolConfig refuses bools as numbers, and parse_fraction (the CLI) refuses shares > 1.
    with pytest.raises(ConfigError) as info:
        recommend(table((1, 0, 1.0, 0)), **{"p99": 2.0, "max_reject": 0.01, field: value})
    assert info.value.field == field


@pytest.mark.parametrize(("p99", "max_reject"), [(np.int64(2), 0.01), (2.0, np.float32(0.01)),
                                                 (np.float32(2.0), 0)])
def test_numpy_numbers_are_fine_limits(p99: Any, max_reject: Any) -> None:
    assert recommend(table((1, 0, 1.0, 0)), p99=p99, max_reject=max_reject).met


def test_an_empty_sweep_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        recommend(sweep(THREE_AT_ONCE, workers=1).iloc[:0], p99=1.0, max_reject=0.0)
    assert info.value.field == "grid"


# -- properties --------------------------------------------------------------------------


def cost(row: pd.Series | dict[str, Any]) -> tuple[int, float]:
    queue = row["queue_size"]
    return int(row["workers"]), math.inf if plain(queue) is None else float(queue)


def check_recommendation(grid: pd.DataFrame, p99: float, max_reject: float) -> None:
    """The recommended row meets both limits and no cheaper row does; or none meets them
    and ``binding`` names the limits no row meets (both when only their combination fails)."""
    refused = (grid["n_rejected"] + grid["n_dropped"] + grid["n_timeout"]) / grid["jobs"]
    fast, kept = grid["latency_p99"] <= p99, refused <= max_reject
    chosen = recommend(grid, p99=p99, max_reject=max_reject)
    assert chosen.met == bool((fast & kept).any())
    if chosen.met:
        row = grid.loc[chosen.row.name]
        assert fast[chosen.row.name] and kept[chosen.row.name]
        cheaper = [cost(r) < cost(row) for _, r in grid.iterrows()]
        assert not (fast & kept & pd.Series(cheaper, index=grid.index)).any()
        assert chosen.binding == ()
    else:
        alone = tuple(name for name, ok in (("p99", fast), ("max_reject", kept)) if not ok.any())
        assert chosen.binding == (alone or ("p99", "max_reject"))
        row = grid.loc[chosen.row.name]
    assert chosen.config == config_of(row)


@settings(max_examples=300, deadline=None)
@given(sweep_tables(), st.data())
def test_the_recommendation_is_the_cheapest_row_that_meets_both(grid: pd.DataFrame,
                                                               data: st.DataObject) -> None:
    latencies = [x for x in grid["latency_p99"] if not math.isnan(x)]
    shares = ((grid["n_rejected"] + grid["n_dropped"] + grid["n_timeout"]) / grid["jobs"]).tolist()
    p99 = data.draw(st.sampled_from([*latencies, 0.0, 0.75, 3.0, 100.0]), label="p99")
    max_reject = data.draw(st.sampled_from([*shares, 0.0, 0.1, 1.0]), label="max_reject")
    check_recommendation(grid, p99, max_reject)


@settings(max_examples=60, deadline=None)
@given(trace_frames(max_rows=25, extras=False),
       st.lists(st.integers(1, 4), min_size=1, max_size=3, unique=True),
       st.lists(st.sampled_from([0, 1, 3, None]), min_size=1, max_size=3, unique=True),
       st.sampled_from([1e3, 1e4, 1e5]), st.sampled_from([0.0, 0.1, 0.5]))
def test_on_real_sweeps_the_recommendation_is_the_cheapest_that_meets_both(
        frame: pd.DataFrame, workers: list[int], queues: list[int | None], p99: float,
        max_reject: float) -> None:
    grid = sweep(frame, workers=workers, queue_size=queues,
                 backpressure=["reject", "drop_oldest"])
    assert len(grid) == len(workers) * len(queues) * 2
    check_recommendation(grid, p99, max_reject)
