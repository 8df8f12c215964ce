"""Reshape a trace: cut a time window, compress time, scale the load, convert timestamps.

Each function takes a trace (see :mod:`poolsim.traces`), checks it, and returns
a new validated trace; the input is never changed. Random choices come from
``numpy.random.default_rng(seed)`` only, so the same seed gives the same trace.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from poolsim.errors import ConfigError, TraceError
from poolsim.traces import (
    Seed,
    ServiceModel,
    Where,
    column_of,
    finite,
    load_trace,
    plain,
    positive,
    validated,
)

__all__ = ["compress", "from_timestamps", "scale_load", "window"]

_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


def window(trace: pd.DataFrame, start_s: float, end_s: float | None = None, *,
           rebase: bool = True) -> pd.DataFrame:
    """The jobs arriving in ``[start_s, end_s)`` (``end_s=None``: to the end).

    With ``rebase`` (the default) ``start_s`` is subtracted, so the window starts at 0.

    >>> trace = load_trace(pd.DataFrame({"arrival_s": [0, 5, 10, 15], "service_s": 1}))
    >>> window(trace, 5, 15)["arrival_s"].tolist()
    [0.0, 5.0]
    """
    frame = validated(trace)
    finite("start_s", start_s)
    if end_s is not None:
        finite("end_s", end_s)
        if end_s <= start_s:
            raise ConfigError("end_s", end_s, f"None or a number > start_s={start_s!r}")
    end = math.inf if end_s is None else float(end_s)
    arrival = frame["arrival_s"]
    kept = frame[(arrival >= start_s) & (arrival < end)].reset_index(drop=True)
    if kept.empty:
        raise TraceError(f"{Where(frame.attrs.get('name', '')).prefix}no job arrives in "
                         f"[{start_s!r}, {end_s!r}); arrivals span {plain(arrival.iloc[0])!r} to "
                         f"{plain(arrival.iloc[-1])!r} s")
    if rebase:
        kept["arrival_s"] = kept["arrival_s"] - float(start_s)
    return validated(kept)


def compress(trace: pd.DataFrame, factor: float) -> pd.DataFrame:
    """Time compression: divide every arrival time by ``factor``; service times stay real.

    The same jobs arrive ``factor`` times as fast: a quiet trace (the Alibaba
    one, 0.3 busy workers on average) becomes one that stresses a small pool.

    >>> trace = load_trace(pd.DataFrame({"arrival_s": [0, 60, 120], "service_s": 5}))
    >>> compress(trace, 10)["arrival_s"].tolist()
    [0.0, 6.0, 12.0]
    """
    frame = validated(trace)
    factor = positive("factor", factor)
    return validated(frame.assign(arrival_s=frame["arrival_s"] / factor))


def scale_load(trace: pd.DataFrame, factor: float, *, seed: Seed) -> pd.DataFrame:
    """About ``factor`` times the jobs, with the same shape of bursts over time.

    ``floor(factor)`` whole copies of the trace plus one copy thinned to the
    fractional part (each job kept with that probability), superposed. Copy 0
    is the trace itself; each further copy is shifted later by one random
    offset drawn uniformly from ``[0, mean inter-arrival)``, so its jobs do not
    land on exactly the same instants. The copies stay *coherent*: the busy
    hours and bursts of the original are ``factor`` times as busy and the
    peak-to-mean ratio is kept (independent random shifts would smooth bursts
    out and misalign day and night). ``factor < 1`` thins only. Extra columns
    are copied with their jobs; rows are renumbered in arrival order (stable).

    >>> trace = load_trace(pd.DataFrame({"arrival_s": [0.0, 10.0], "service_s": 1}))
    >>> len(scale_load(trace, 3, seed=1))
    6
    """
    frame = validated(trace)
    factor = positive("factor", factor)
    rng = np.random.default_rng(seed)
    arrival = frame["arrival_s"].to_numpy()
    n = len(frame)
    spacing = (arrival[-1] - arrival[0]) / (n - 1) if n > 1 else 0.0
    whole, part = divmod(factor, 1.0)
    copies = [frame.assign(arrival_s=arrival + (rng.uniform(0.0, spacing) if copy else 0.0))
              for copy in range(int(whole))]
    if part > 0:
        keep = rng.random(n) < part
        offset = rng.uniform(0.0, spacing) if copies else 0.0
        copies.append(frame[keep].assign(arrival_s=arrival[keep] + offset))
    scaled = pd.concat(copies, ignore_index=True)
    scaled = scaled.sort_values("arrival_s", kind="stable", ignore_index=True)
    scaled.attrs = frame.attrs
    if scaled.empty:
        raise TraceError(f"{Where(frame.attrs.get('name', '')).prefix}scale_load(factor="
                         f"{factor!r}) kept none of the {n} jobs; use a larger factor")
    return validated(scaled)


def from_timestamps(frame: pd.DataFrame, column: str, *, unit: str | None = None,
                    service: ServiceModel | None = None, name: str | None = None) -> pd.DataFrame:
    """A trace whose ``arrival_s`` is seconds since the earliest timestamp of ``column``.

    ``column`` holds datetimes (``datetime64``, or strings such as
    ``"2023-11-16 18:15:46.6805900"``; time zones are honoured), or epoch
    numbers with ``unit`` one of ``"s"``, ``"ms"``, ``"us"``, ``"ns"``. The
    timestamp column is kept (unless it is ``arrival_s``); ``service`` and
    ``name`` are passed to :func:`load_trace`.

    >>> raw = pd.DataFrame({"ts": ["2024-01-01 00:00:00", "2024-01-01 00:00:01.5"],
    ...                     "service_s": [1, 1]})
    >>> from_timestamps(raw, "ts")["arrival_s"].tolist()
    [0.0, 1.5]
    """
    label = name or frame.attrs.get("name") or ""
    where = Where(label)
    values = column_of(frame, column, " of timestamps", where).reset_index(drop=True)
    if unit is not None and unit not in _UNITS:
        raise ConfigError("unit", unit, "None or one of " + ", ".join(map(repr, _UNITS)))
    if unit is not None:
        seconds = _epoch_seconds(values, column, _UNITS[unit], where)
    else:
        seconds = _datetime_seconds(values, column, where)
    earlier = np.flatnonzero(np.diff(seconds) < 0)
    if earlier.size:  # refused as load_trace does, but naming the column the user has
        i = int(earlier[0]) + 1
        raise TraceError(f"{where.prefix}{column} is not sorted: {where.row(i)} "
                         f"({plain(values.iloc[i])!r}) is earlier than row {i - 1} "
                         f"({plain(values.iloc[i - 1])!r}); sort first, e.g. "
                         f"frame.sort_values(\"{column}\", kind=\"stable\")",
                         column=column, row=i, value=plain(values.iloc[i]))
    converted = frame.reset_index(drop=True)
    if column == "arrival_s":
        converted = converted.drop(columns="arrival_s")
    converted.insert(0, "arrival_s", seconds)
    return load_trace(converted, service=service, name=label or None)


def _first_bad(values: pd.Series, bad: np.ndarray, column: str, what: str,
               where: Where) -> TraceError:
    i = int(np.argmax(bad))
    value = plain(values.iloc[i])
    return TraceError(f"{where.prefix}{column} at {where.row(i)} is {what}: {value!r}",
                      column=column, row=i, value=value)


def _epoch_seconds(values: pd.Series, column: str, scale: float, where: Where) -> np.ndarray:
    if pd.api.types.is_integer_dtype(values.dtype) and not values.isna().any():
        ints = np.asarray(values.to_numpy(dtype=np.int64), dtype=np.int64)
        offsets: np.ndarray = (ints - ints.min()).astype(np.float64)  # exact before scaling
        return offsets * scale
    numeric = pd.to_numeric(values, errors="coerce")
    floats = np.asarray(numeric.to_numpy(dtype="float64", na_value=np.nan), dtype=np.float64)
    bad = ~np.isfinite(floats)
    if bad.any():
        raise _first_bad(values, bad, column, "not a finite epoch number", where)
    seconds: np.ndarray = (floats - floats.min()) * scale
    return seconds


def _datetime_seconds(values: pd.Series, column: str, where: Where) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(values.dtype):
        raise TraceError(f"{where.prefix}{column} holds numbers, not datetimes; for epoch "
                         f"numbers pass unit='s' (or 'ms', 'us', 'ns')", column=column, row=0,
                         value=plain(values.iloc[0]))
    stamps = pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns, UTC]")
    for style in ("ISO8601", "mixed"):  # fast and strict first; per element only if needed
        try:
            stamps = pd.to_datetime(values, errors="coerce", utc=True, format=style)
        except (TypeError, ValueError):
            continue
        if not (stamps.isna() & values.notna()).any():
            break
    bad = stamps.isna().to_numpy()
    if bad.any():
        what = "missing" if values.isna().iloc[int(np.argmax(bad))] else "not a timestamp"
        raise _first_bad(values, bad, column, what, where)
    return np.asarray((stamps - stamps.min()).dt.total_seconds().to_numpy(), dtype=np.float64)
