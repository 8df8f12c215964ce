"""Load traces: read, validate and normalise them, and list the shipped ones.

A trace is a DataFrame with one row per job, row ``i`` being job ``i``:

===========  =======  ==========================================================
column       dtype    meaning
===========  =======  ==========================================================
arrival_s    float64  when the job is submitted, seconds >= 0, non-decreasing
service_s    float64  how long the job runs on a worker, seconds >= 0
task_type    str      what kind of job (``"default"`` if the source has none)
queue        str      which queue it goes to (``"default"`` if none)
...                   any other columns of the source, kept in their order
===========  =======  ==========================================================

Everything returns a *new* validated trace and never changes its input.
Bad input raises :class:`~poolsim.errors.TraceError` naming the column, the
first bad row (0-based position in the input) and its value, because a
simulator fed a silently "fixed" trace answers a different question.
Unsorted arrivals are refused, not sorted: a reordered trace renumbers jobs.
Reshaping (windows, time compression, load scaling, timestamps) lives in
:mod:`poolsim.reshape`, synthetic traces in :mod:`poolsim.generate`.
"""

from __future__ import annotations

import dataclasses
import difflib
import gzip
import importlib
import math
import numbers
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import pandas as pd

from poolsim.errors import ConfigError, TraceError

__all__ = ["TRACE_COLUMNS", "LinearService", "list_traces", "load_trace"]

TRACE_COLUMNS: tuple[str, ...] = ("arrival_s", "service_s", "task_type", "queue")
ServiceModel: TypeAlias = Callable[[pd.DataFrame], Any]
Seed: TypeAlias = int | np.random.Generator | np.random.SeedSequence | None
_CSV = (".csv", ".csv.gz")
_PARQUET = (".parquet", ".pq")
_SHIPPED = (".csv.gz", ".csv")  # file kinds list_traces() looks for in the data folder


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class LinearService:
    """Service time as ``intercept + sum(coefficient * column)``: for traces without durations.

    The Azure LLM trace records token counts, not durations; a per-request cost
    fitted to your own worker turns it into a trace the simulator can replay.
    Each column must hold finite numbers >= 0.

    >>> import pandas as pd
    >>> model = LinearService(intercept=0.1, per_column={"tokens": 0.01})
    >>> model(pd.DataFrame({"tokens": [0, 100]})).tolist()
    [0.1, 1.1]
    """

    intercept: float = 0.0
    per_column: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        finite("intercept", self.intercept)
        coefficients = dict(self.per_column)  # a copy: later changes by the caller do not leak in
        for column, coefficient in coefficients.items():
            finite(f"per_column[{column!r}]", coefficient)
        object.__setattr__(self, "intercept", float(self.intercept))
        object.__setattr__(self, "per_column", {c: float(v) for c, v in coefficients.items()})

    def __call__(self, frame: pd.DataFrame) -> np.ndarray:
        """The service time of every row of ``frame``, in seconds."""
        total = np.full(len(frame), self.intercept)
        for column, coefficient in self.per_column.items():
            values = column_of(frame, column, " (the LinearService needs it)")
            total += coefficient * non_negative(values, column, Where(""))
        return total


# The helpers below are shared with poolsim.reshape and poolsim.generate; they are not
# part of the public API (poolsim/__init__.py is).


def finite(field: str, value: Any) -> None:
    """Refuse anything but a finite real number (booleans too) with a ConfigError."""
    if (not isinstance(value, numbers.Real) or isinstance(value, bool)
            or not math.isfinite(value)):
        raise ConfigError(field, value, "a finite number")


def positive(field: str, value: Any) -> float:
    """``value`` as a float if it is a finite number > 0, else a ConfigError."""
    finite(field, value)
    if value <= 0:
        raise ConfigError(field, value, "a finite number > 0")
    return float(value)


# -- validation -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Where:
    """How errors name a trace and its rows: ``"label: "`` and, for CSV, the file line."""

    label: str
    first_line: int | None = None  # the file line of row 0 (2 for a CSV with a header)

    def row(self, i: int) -> str:
        line = "" if self.first_line is None else f" (line {i + self.first_line})"
        return f"row {i}{line}"

    @property
    def prefix(self) -> str:
        return f"{self.label}: " if self.label else ""


def column_of(frame: pd.DataFrame, column: str, what: str, where: Where | None = None) -> pd.Series:
    """``frame[column]``, or a TraceError listing the columns there are (``what`` says why)."""
    if column in frame.columns:
        return frame[column]
    where = where or Where("")
    columns = ", ".join(map(str, frame.columns)) or "none"
    close = difflib.get_close_matches(column, [str(c) for c in frame.columns], n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise TraceError(f"{where.prefix}no {column} column{what}; the columns are: {columns}{hint}",
                     column=column)


def non_negative(values: pd.Series, column: str, where: Where) -> np.ndarray:
    """``values`` as float64, or a TraceError at the first that is not a finite number >= 0."""
    dtype = values.dtype
    if (pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_datetime64_any_dtype(dtype)
            or pd.api.types.is_timedelta64_dtype(dtype)):
        hint = ("; convert timestamps with poolsim.from_timestamps()"
                if not pd.api.types.is_bool_dtype(dtype) else "")
        raise TraceError(f"{where.prefix}{column} at {where.row(0)} is not a number: "
                         f"{plain(values.iloc[0])!r} ({dtype}){hint}",
                         column=column, row=0, value=plain(values.iloc[0]))
    try:
        numeric = pd.to_numeric(values, errors="coerce")
    except (TypeError, ValueError):  # objects to_numeric cannot even look at (lists, dicts)
        numeric = pd.Series([_float_or_nan(v) for v in values], dtype="float64")
    floats = np.asarray(numeric.to_numpy(dtype="float64", na_value=np.nan), dtype=np.float64)
    missing = values.isna().to_numpy()
    problems = (
        ("missing (NaN)", missing),
        ("not a number", np.isnan(floats) & ~missing),
        ("infinite", np.isinf(floats)),
        ("negative", floats < 0),
    )
    bad = np.logical_or.reduce([mask for _, mask in problems])
    if bad.any():
        i = int(np.argmax(bad))
        kind = next(kind for kind, mask in problems if mask[i])
        value = plain(values.iloc[i])
        raise TraceError(f"{where.prefix}{column} at {where.row(i)} is {kind}: {value!r} "
                         f"(it must be a finite number >= 0)",
                         column=column, row=i, value=value)
    return floats


def plain(value: Any) -> Any:
    """A numpy scalar as the Python one (``-1.0``, not ``np.float64(-1.0)``), for messages."""
    return value.item() if isinstance(value, np.generic) else value


def _float_or_nan(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _labels(frame: pd.DataFrame, column: str, where: Where) -> pd.Series:
    if column not in frame.columns:
        return pd.Series("default", index=pd.RangeIndex(len(frame)), dtype="str")
    values = frame[column].reset_index(drop=True)
    missing = values.isna().to_numpy()
    if missing.any():
        i = int(np.argmax(missing))
        value = plain(values.iloc[i])
        raise TraceError(f"{where.prefix}{column} at {where.row(i)} is missing: {value!r}",
                         column=column, row=i, value=value)
    return values.astype("str")


def _service_example(frame: pd.DataFrame) -> str:
    numeric = [str(c) for c in frame.columns if c not in TRACE_COLUMNS
               and pd.api.types.is_numeric_dtype(frame[c].dtype)
               and not pd.api.types.is_bool_dtype(frame[c].dtype)] or ["<column>"]
    per_column = ", ".join(f"{c!r}: 0.001" for c in numeric)
    return f"service=LinearService(intercept=0.05, per_column={{{per_column}}})"


def normalise(frame: pd.DataFrame, *, service: ServiceModel | None, where: Where,
               name: str | None) -> pd.DataFrame:
    """The validated, normalised copy of ``frame`` (see the module docstring)."""
    duplicated = frame.columns[frame.columns.duplicated()]
    if len(duplicated):
        raise TraceError(f"{where.prefix}column {duplicated[0]!r} appears more than once",
                         column=str(duplicated[0]))
    if len(frame) == 0:
        raise TraceError(f"{where.prefix}the trace is empty: it has no rows (columns: "
                         f"{', '.join(map(str, frame.columns)) or 'none'})")
    arrival = non_negative(column_of(frame, "arrival_s", "", where), "arrival_s", where)
    earlier = np.flatnonzero(np.diff(arrival) < 0)
    if earlier.size:
        i = int(earlier[0]) + 1
        now, before = plain(arrival[i]), plain(arrival[i - 1])
        raise TraceError(
            f"{where.prefix}arrival_s is not sorted: {where.row(i)} arrives at {now!r} s, before "
            f"row {i - 1} at {before!r} s. poolsim refuses unsorted traces rather than renumber "
            f"jobs silently; sort it yourself, e.g. "
            f"frame.sort_values(\"arrival_s\", kind=\"stable\")",
            column="arrival_s", row=i, value=now)
    if service is not None:
        service_s = _service_values(frame, service, where)
    elif "service_s" not in frame.columns:
        raise TraceError(
            f"{where.prefix}no service_s column (the columns are: "
            f"{', '.join(map(str, frame.columns))}) and no service= model to compute it; map "
            f"columns to seconds with, e.g., {_service_example(frame)}, or any callable "
            f"frame -> array", column="service_s")
    else:
        service_s = non_negative(frame["service_s"], "service_s", where)
    core = pd.DataFrame({
        "arrival_s": arrival,
        "service_s": service_s,
        "task_type": _labels(frame, "task_type", where),
        "queue": _labels(frame, "queue", where),
    })
    extras = [c for c in frame.columns if c not in TRACE_COLUMNS]
    trace = pd.concat([core, frame[extras].reset_index(drop=True)], axis=1) if extras else core
    trace.attrs = {"name": name} if name else {}
    return trace


def _service_values(frame: pd.DataFrame, service: ServiceModel, where: Where) -> np.ndarray:
    if not callable(service):
        raise TraceError(f"{where.prefix}service= must be a LinearService or a callable "
                         f"frame -> array of seconds, not {service!r}", column="service_s")
    result = np.asarray(service(frame.copy()))
    if result.ndim != 1 or len(result) != len(frame):
        raise TraceError(f"{where.prefix}service= returned an array of shape {result.shape} "
                         f"for {len(frame)} rows; it must return one number per row",
                         column="service_s")
    return non_negative(pd.Series(result), "service_s", Where(f"{where.prefix}service= model"))


# -- reading ----------------------------------------------------------------------------


def load_trace(source: str | os.PathLike[str] | pd.DataFrame, *,
               service: ServiceModel | None = None, name: str | None = None) -> pd.DataFrame:
    """Read and validate a trace: a CSV / gzip CSV / Parquet path, a DataFrame, or a shipped name.

    ``service`` computes ``service_s`` from the other columns (a
    :class:`LinearService` or any callable ``frame -> array``); it replaces a
    ``service_s`` column if there is one (the callable sees the original).
    ``name`` labels the trace in error messages and in ``trace.attrs["name"]``
    (default: the shipped name or the file name).

    >>> trace = load_trace(pd.DataFrame({"arrival_s": [0, 1.5], "service_s": [2, 3]}))
    >>> trace
       arrival_s  service_s task_type    queue
    0        0.0        2.0   default  default
    1        1.5        3.0   default  default
    """
    if isinstance(source, pd.DataFrame):
        label = name or source.attrs.get("name")
        return normalise(source, service=service, where=Where(label or ""), name=label)
    if not isinstance(source, str | os.PathLike):
        raise TraceError(f"a trace is a path, a DataFrame or a shipped trace name, "
                         f"not {type(source).__name__}: {source!r}", value=source)
    path, shipped = _resolve(source)
    label = name or shipped or path.name
    where = Where(label, first_line=2 if _suffix(path) in _CSV else None)
    return normalise(_read(path, label), service=service, where=where, name=label)


def _suffix(path: Path) -> str:
    return "".join(path.suffixes[-2:]).lower() if path.suffix.lower() == ".gz" else \
        path.suffix.lower()


def _looks_like_name(text: str) -> bool:
    return "/" not in text and os.sep not in text and not text.lower().endswith(
        _CSV + _PARQUET)


def _resolve(source: str | os.PathLike[str]) -> tuple[Path, str | None]:
    """The file to read and, for a shipped trace, its name."""
    text = os.fspath(source)
    if isinstance(source, str) and _looks_like_name(text):
        shipped = _shipped()
        if text in shipped:
            return shipped[text], text
    path = Path(text)
    if not path.exists():
        message = f"no trace file {text!r}"
        if _looks_like_name(text):
            names = sorted(_shipped())
            close = ([n for n in names if n.startswith(text)]
                     or difflib.get_close_matches(text, names, n=1))
            message += (f" and no shipped trace of that name; did you mean {close[0]!r}?" if close
                        else "; the shipped traces are: " + (", ".join(names) or
                                                            f"none (in {_data_dir()})"))
        raise TraceError(message, value=text)
    if _suffix(path) not in _CSV + _PARQUET:
        raise TraceError(f"cannot tell the format of {text!r} from its suffix; use "
                         f"{', '.join(_CSV + _PARQUET)}", value=text)
    return path, None


def _read(path: Path, label: str) -> pd.DataFrame:
    if _suffix(path) in _PARQUET:
        try:
            importlib.import_module("pyarrow")
        except ImportError:
            raise TraceError(f"{label}: reading Parquet needs pyarrow: "
                             f"pip install poolsim[parquet]", value=str(path)) from None
    try:
        if _suffix(path) in _PARQUET:
            return pd.read_parquet(path)
        return pd.read_csv(path, dtype={"task_type": str, "queue": str})
    except pd.errors.EmptyDataError:
        raise TraceError(f"{label}: the trace is empty: the file has no header and no rows",
                         value=str(path)) from None
    except (ValueError, OSError, EOFError) as exc:  # parse errors, bad gzip, bad Parquet
        raise TraceError(f"{label}: cannot read {path}: {exc}", value=str(path)) from exc


# -- shipped traces -----------------------------------------------------------------------


def _data_dir() -> Path:
    """The folder of shipped traces: ``$POOLSIM_DATA``, else ``<repo>/data``, else ``./data``."""
    if os.environ.get("POOLSIM_DATA"):
        return Path(os.environ["POOLSIM_DATA"])
    beside = Path(__file__).resolve().parents[1] / "data"
    return beside if beside.is_dir() else Path.cwd() / "data"


def _shipped() -> dict[str, Path]:
    folder = _data_dir()
    found: dict[str, Path] = {}
    for suffix in _SHIPPED:
        for path in sorted(folder.glob(f"*{suffix}")) if folder.is_dir() else []:
            found.setdefault(path.name[: -len(suffix)], path)
    return found


def list_traces() -> pd.DataFrame:
    """The shipped traces: ``name``, ``rows``, ``description`` (from the note beside it), ``path``.

    >>> list_traces()["name"].tolist()
    ['alibaba_genai_lora_2024-11', 'azure_llm_2023_code_conv']
    """
    rows = []
    for name, path in sorted(_shipped().items()):
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt") as lines:
            count = sum(1 for _ in lines) - 1  # minus the header
        rows.append({"name": name, "rows": count, "description": _description(path, name),
                     "path": str(path)})
    return pd.DataFrame(rows, columns=["name", "rows", "description", "path"])


def _description(path: Path, name: str) -> str:
    """The first paragraph of the provenance note ``<name>.md`` beside the trace."""
    note = path.with_name(f"{name}.md")
    if not note.is_file():
        return ""
    paragraph: list[str] = []
    for line in note.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") or not line.strip():
            if paragraph:
                break
            continue
        paragraph.append(line.strip())
    return " ".join(paragraph).replace("**", "").replace("`", "")


def validated(trace: pd.DataFrame) -> pd.DataFrame:
    """``trace`` validated and normalised again, keeping its name: what every reshaper returns."""
    label = trace.attrs.get("name")
    return normalise(trace, service=None, where=Where(label or ""), name=label)
