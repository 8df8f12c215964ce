"""Loading traces: validation names column, row and value; files round-trip; shipped traces load."""

from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import poolsim.traces
from poolsim import (
    TRACE_COLUMNS,
    ConfigError,
    LinearService,
    TraceError,
    list_traces,
    load_trace,
)
from tests.strategies import raw_trace_frames, trace_frames

ALIBABA, AZURE = "alibaba_genai_lora_2024-11", "azure_llm_2023_code_conv"
AZURE_MODEL = LinearService(intercept=0.05,
                            per_column={"context_tokens": 0.002, "generated_tokens": 0.03})


def frame(**columns: Any) -> pd.DataFrame:
    return pd.DataFrame(columns)


# -- normalising -----------------------------------------------------------------------


def test_normalises_columns_dtypes_defaults_and_index() -> None:
    raw = pd.DataFrame({"tokens": [5, 6], "service_s": [1, 2], "arrival_s": [0, 3]},
                       index=[10, 20])
    trace = load_trace(raw)
    assert list(trace.columns) == [*TRACE_COLUMNS, "tokens"]
    assert [str(t) for t in trace.dtypes] == ["float64", "float64", "str", "str", "int64"]
    assert trace["task_type"].tolist() == trace["queue"].tolist() == ["default", "default"]
    assert trace.index.tolist() == [0, 1]
    assert trace["arrival_s"].tolist() == [0.0, 3.0]  # values kept as given, not rebased


def test_labels_are_strings_and_times_are_kept_as_given() -> None:
    trace = load_trace(frame(arrival_s=[5, 5, 9.5], service_s=[0, 1, 2], task_type=[1, 2, 2],
                             queue=pd.Categorical(["a", "b", "a"])))
    assert trace["task_type"].tolist() == ["1", "2", "2"]
    assert trace["queue"].tolist() == ["a", "b", "a"]
    assert trace["arrival_s"].tolist() == [5.0, 5.0, 9.5]  # ties are allowed


def test_nullable_numbers_are_accepted() -> None:
    trace = load_trace(frame(arrival_s=pd.array([0, 2], dtype="Int64"),
                             service_s=pd.array([1.5, 2.0], dtype="Float64")))
    assert trace["arrival_s"].dtype == np.float64 and trace["service_s"].tolist() == [1.5, 2.0]


@given(trace_frames())
def test_a_normalised_trace_loads_unchanged(trace: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(load_trace(trace), trace)


@given(raw_trace_frames())
def test_loading_is_idempotent_and_keeps_every_value(raw: pd.DataFrame) -> None:
    before = raw.copy()
    trace = load_trace(raw)
    pd.testing.assert_frame_equal(raw, before)  # the input is not changed
    pd.testing.assert_frame_equal(load_trace(trace), trace)
    assert list(trace.columns[:4]) == list(TRACE_COLUMNS)
    assert list(trace.columns[4:]) == [c for c in raw.columns if c not in TRACE_COLUMNS]
    np.testing.assert_array_equal(trace["arrival_s"], raw["arrival_s"].to_numpy(float))
    np.testing.assert_array_equal(trace["service_s"], raw["service_s"].to_numpy(float))


def test_name_labels_errors_and_attrs() -> None:
    trace = load_trace(frame(arrival_s=[0], service_s=[1]), name="night shift")
    assert trace.attrs["name"] == "night shift"
    assert load_trace(trace).attrs["name"] == "night shift"  # a loaded frame keeps its name
    with pytest.raises(TraceError, match=r"^night shift: service_s at row 0 is negative"):
        load_trace(frame(arrival_s=[0], service_s=[-1]), name="night shift")


# -- validation errors -----------------------------------------------------------------

NAN = math.nan
BAD = [  # (id, frame, column, row, value, words in the message)
    ("arrival-text", frame(arrival_s=[0, 1, "x"], service_s=[1, 1, 1]),
     "arrival_s", 2, "x", "not a number"),
    ("arrival-nan", frame(arrival_s=[0, NAN, 2], service_s=[1, 1, 1]),
     "arrival_s", 1, NAN, "missing"),
    ("arrival-none", frame(arrival_s=[0, None], service_s=[1, 1]),
     "arrival_s", 1, NAN, "missing"),
    ("arrival-na", frame(arrival_s=pd.array([0, None], dtype="Int64"), service_s=[1, 1]),
     "arrival_s", 1, pd.NA, "missing"),
    ("arrival-negative", frame(arrival_s=[-1.0, 0], service_s=[1, 1]),
     "arrival_s", 0, -1.0, "negative"),
    ("arrival-inf", frame(arrival_s=[0, 1, math.inf], service_s=[1, 1, 1]),
     "arrival_s", 2, math.inf, "infinite"),
    ("arrival-bool", frame(arrival_s=[True, False], service_s=[1, 1]),
     "arrival_s", 0, True, "not a number"),
    ("arrival-datetime", frame(arrival_s=pd.to_datetime(["2024-01-01"]), service_s=[1]),
     "arrival_s", 0, pd.Timestamp("2024-01-01"), "from_timestamps"),
    ("arrival-list", frame(arrival_s=[[1], [2]], service_s=[1, 1]),
     "arrival_s", 0, [1], "not a number"),
    ("service-negative", frame(arrival_s=[0, 1, 2], service_s=[1, -0.5, -2]),
     "service_s", 1, -0.5, "negative"),
    ("service-minus-inf", frame(arrival_s=[0, 1], service_s=[1, -math.inf]),
     "service_s", 1, -math.inf, "infinite"),
    ("service-text", frame(arrival_s=[0, 1], service_s=["1", "two"]),
     "service_s", 1, "two", "not a number"),
    ("service-nan-before-negative", frame(arrival_s=[0, 1, 2], service_s=[1, NAN, -1]),
     "service_s", 1, NAN, "missing"),
    ("task-type-missing", frame(arrival_s=[0, 1], service_s=[1, 1], task_type=["a", None]),
     "task_type", 1, NAN, "missing"),
    ("queue-missing", frame(arrival_s=[0, 1], service_s=[1, 1], queue=[NAN, "q"]),
     "queue", 0, NAN, "missing"),
    ("unsorted", frame(arrival_s=[0, 5, 3, 1], service_s=[1, 1, 1, 1]),
     "arrival_s", 2, 3.0, "not sorted"),
]


def same(a: Any, b: Any) -> bool:
    """Equal, with NaN equal to NaN and pd.NA only to itself."""
    if a is pd.NA or b is pd.NA:
        return a is b
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


@pytest.mark.parametrize(("raw", "column", "row", "value", "words"),
                         [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_bad_values_name_column_first_row_and_value(raw: pd.DataFrame, column: str, row: int,
                                                    value: Any, words: str) -> None:
    before = raw.copy()
    with pytest.raises(TraceError) as caught:
        load_trace(raw)
    error = caught.value
    assert (error.column, error.row) == (column, row)
    assert same(error.value, value), error.value
    message = str(error)
    assert column in message and f"row {row}" in message and words in message
    pd.testing.assert_frame_equal(raw, before)


def test_row_is_the_position_in_the_input_not_its_index() -> None:
    raw = pd.DataFrame({"arrival_s": [0, 1, -1], "service_s": 1}, index=[50, 40, 30])
    with pytest.raises(TraceError, match="row 2 ") as caught:
        load_trace(raw)
    assert caught.value.row == 2


def test_unsorted_arrivals_are_refused_with_the_fix() -> None:
    with pytest.raises(TraceError) as caught:
        load_trace(frame(arrival_s=[0.0, 2.0, 1.0], service_s=[1, 1, 1]))
    assert 'sort_values("arrival_s", kind="stable")' in str(caught.value)
    assert "row 2 arrives at 1.0 s, before row 1 at 2.0 s" in str(caught.value)


@pytest.mark.parametrize("missing", ["arrival_s", "service_s"])
def test_a_missing_column_is_named_with_the_columns_there_are(missing: str) -> None:
    raw = frame(arrival_s=[0], service_s=[1], tokens=[3]).drop(columns=missing)
    with pytest.raises(TraceError) as caught:
        load_trace(raw)
    assert caught.value.column == missing and caught.value.row is None
    assert f"no {missing} column" in str(caught.value)
    assert ", ".join(raw.columns) in str(caught.value)


def test_a_misspelt_column_gets_a_suggestion() -> None:
    with pytest.raises(TraceError, match="did you mean 'Arrival_s'"):
        load_trace(frame(Arrival_s=[0], service_s=[1]))


def test_missing_service_shows_a_linear_service_example() -> None:
    with pytest.raises(TraceError) as caught:
        load_trace(frame(arrival_s=[0, 1], tokens=[10, 20]))
    assert "LinearService(intercept=0.05, per_column={'tokens': 0.001})" in str(caught.value)


@pytest.mark.parametrize("raw", [pd.DataFrame(), frame(arrival_s=[], service_s=[])],
                         ids=["no-columns", "no-rows"])
def test_an_empty_trace_is_refused(raw: pd.DataFrame) -> None:
    with pytest.raises(TraceError, match="empty"):
        load_trace(raw)


def test_duplicate_columns_are_refused() -> None:
    raw = pd.DataFrame([[0, 1, 2]], columns=["arrival_s", "service_s", "arrival_s"])
    with pytest.raises(TraceError, match="more than once") as caught:
        load_trace(raw)
    assert caught.value.column == "arrival_s"


@pytest.mark.parametrize("source", [5, None, b"trace.csv", ["a.csv"]])
def test_a_source_of_the_wrong_type_is_a_trace_error(source: Any) -> None:
    with pytest.raises(TraceError, match="a path, a DataFrame or a shipped trace name"):
        load_trace(source)


# -- service models ---------------------------------------------------------------------


def test_linear_service_maps_token_counts_to_seconds() -> None:
    raw = frame(arrival_s=[0, 1], context_tokens=[100, 1000], generated_tokens=[10, 0])
    trace = load_trace(raw, service=AZURE_MODEL)
    np.testing.assert_allclose(trace["service_s"], [0.05 + 0.2 + 0.3, 0.05 + 2.0])
    assert list(trace.columns[4:]) == ["context_tokens", "generated_tokens"]


def test_a_callable_service_sees_the_original_and_replaces_service_s() -> None:
    raw = frame(arrival_s=[0, 1], service_s=[2.0, 4.0])
    seen: list[list[float]] = []

    def twice_as_fast(f: pd.DataFrame) -> np.ndarray:
        seen.append(f["service_s"].tolist())
        halved = f["service_s"].to_numpy() / 2
        f["service_s"] = -1.0  # a careless model cannot change the caller's frame
        return halved

    assert load_trace(raw, service=twice_as_fast)["service_s"].tolist() == [1.0, 2.0]
    assert seen == [[2.0, 4.0]]
    assert raw["service_s"].tolist() == [2.0, 4.0]


def test_a_service_model_with_bad_output_is_a_trace_error() -> None:
    raw = frame(arrival_s=[0, 1], tokens=[1, 2])
    with pytest.raises(TraceError, match="shape") as caught:
        load_trace(raw, service=lambda f: [1.0])
    assert caught.value.column == "service_s"
    with pytest.raises(TraceError, match="service= model: service_s at row 1 is negative"):
        load_trace(raw, service=lambda f: f["tokens"] - 2 * f["tokens"] * (f.index == 1))
    with pytest.raises(TraceError, match="LinearService or a callable"):
        load_trace(raw, service=3.0)  # type: ignore[arg-type]


def test_linear_service_errors_name_the_token_column() -> None:
    with pytest.raises(TraceError) as caught:
        load_trace(frame(arrival_s=[0, 1], tokens=[5, -1]),
                   service=LinearService(per_column={"tokens": 0.1}))
    assert (caught.value.column, caught.value.row, caught.value.value) == ("tokens", 1, -1)
    with pytest.raises(TraceError, match=r"no words column .*the columns are: arrival_s, tokens"):
        load_trace(frame(arrival_s=[0], tokens=[5]),
                   service=LinearService(per_column={"words": 0.1}))


@pytest.mark.parametrize(("options", "field"), [
    ({"intercept": math.nan}, "intercept"),
    ({"intercept": "1"}, "intercept"),
    ({"per_column": {"tokens": math.inf}}, "per_column['tokens']"),
    ({"per_column": {"tokens": True}}, "per_column['tokens']"),
])
def test_linear_service_checks_its_numbers(options: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        LinearService(**options)
    assert caught.value.field == field


def test_linear_service_is_frozen_and_copies_its_mapping() -> None:
    coefficients = {"tokens": 0.5}
    model = LinearService(per_column=coefficients)
    coefficients["tokens"] = 99.0
    assert model.per_column == {"tokens": 0.5}
    with pytest.raises(AttributeError):
        model.intercept = 1.0  # type: ignore[misc]


# -- files ------------------------------------------------------------------------------


def write(trace: pd.DataFrame, path: Path) -> Path:
    if path.suffix.lower() in (".parquet", ".pq"):
        trace.to_parquet(path)
    else:
        trace.to_csv(path, index=False)
    return path


@settings(max_examples=40, deadline=None)
@given(trace_frames(), st.sampled_from(["t.csv", "t.csv.gz", "t.parquet", "T.PQ"]))
def test_files_round_trip_unchanged(trace: pd.DataFrame, file_name: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = write(trace, Path(folder) / file_name)
        loaded = load_trace(path)
        pd.testing.assert_frame_equal(loaded, trace)
        assert loaded.attrs["name"] == file_name
        pd.testing.assert_frame_equal(load_trace(str(path)), trace)


def test_gzip_csv_is_read_by_suffix(tmp_path: Path) -> None:
    trace = load_trace(frame(arrival_s=[0, 1.25], service_s=[3, 4], task_type=["a", "b"]))
    path = write(trace, tmp_path / "jobs.csv.gz")
    assert path.read_bytes()[:2] == b"\x1f\x8b"  # really gzip
    pd.testing.assert_frame_equal(load_trace(path), trace)


def test_csv_errors_give_the_file_line(tmp_path: Path) -> None:
    path = tmp_path / "jobs.csv"
    path.write_text("arrival_s,service_s\n0,1\n1,abc\n")
    with pytest.raises(TraceError) as caught:
        load_trace(path)
    assert (caught.value.column, caught.value.row, caught.value.value) == ("service_s", 1, "abc")
    assert str(caught.value).startswith("jobs.csv: service_s at row 1 (line 3) is not a number")


def test_csv_labels_stay_strings(tmp_path: Path) -> None:
    path = tmp_path / "jobs.csv"
    path.write_text("arrival_s,service_s,task_type,queue\n0,1,007,1\n")
    trace = load_trace(path)
    assert (trace["task_type"][0], trace["queue"][0]) == ("007", "1")


def test_parquet_without_pyarrow_says_what_to_install(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(load_trace(frame(arrival_s=[0], service_s=[1])), tmp_path / "jobs.parquet")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now fails
    with pytest.raises(TraceError, match=r"pip install poolsim\[parquet\]"):
        load_trace(path)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nope.csv"
    with pytest.raises(TraceError, match="no trace file") as caught:
        load_trace(path)
    assert caught.value.value == str(path)
    assert "shipped" not in str(caught.value)  # a path, not a name: no list of names


def test_a_missing_name_lists_the_shipped_traces() -> None:
    with pytest.raises(TraceError) as caught:
        load_trace("no_such_trace")
    assert f"the shipped traces are: {ALIBABA}, {AZURE}" in str(caught.value)
    with pytest.raises(TraceError, match=f"did you mean '{ALIBABA}'"):
        load_trace("alibaba")


@pytest.mark.parametrize(("content", "name", "words"), [
    (b"x", "jobs.txt", "cannot tell the format"),
    (b"", "jobs.csv", "empty"),
    (b"arrival_s,service_s\n", "jobs.csv", "empty"),
    (b"not gzip", "jobs.csv.gz", "cannot read"),
    (b"not parquet", "jobs.parquet", "cannot read"),
    (b'arrival_s,service_s\n0,"1\n', "jobs.csv", "cannot read"),
])
def test_unreadable_files_are_trace_errors(tmp_path: Path, content: bytes, name: str,
                                           words: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(TraceError, match=words):
        load_trace(path)


# -- shipped traces ---------------------------------------------------------------------


def test_list_traces_describes_the_shipped_traces() -> None:
    listed = list_traces()
    assert list(listed.columns) == ["name", "rows", "description", "path"]
    assert listed["name"].tolist() == [ALIBABA, AZURE]
    assert listed["rows"].tolist() == [14_266, 28_185]
    assert listed["description"][0].startswith("Real per-request trace of a production Stable")
    assert "**" not in listed["description"][0] and "`" not in listed["description"][1]
    assert all(Path(p).is_file() for p in listed["path"])


def test_the_alibaba_trace_loads_by_name_with_its_documented_stats() -> None:
    trace = load_trace(ALIBABA)
    assert len(trace) == 14_266 and trace.attrs["name"] == ALIBABA
    assert list(trace.columns) == [*TRACE_COLUMNS, "status"]
    service = trace["service_s"]
    assert service.median() == 22 and service.max() == 567
    assert round(service.mean(), 2) == 26.45
    assert round(float(np.percentile(service, 99)), 2) == 88.35
    assert trace["arrival_s"].iloc[-1] - trace["arrival_s"].iloc[0] == 1_320_314
    assert trace["task_type"].value_counts().to_dict() == {
        "TXT_2_IMG": 13_053, "IMG_2_IMG": 1_106, "INPAINTING": 107}
    assert trace["status"].value_counts().to_dict() == {"SUCCEED": 14_033, "FAILED": 233}


def test_the_azure_trace_needs_a_service_model() -> None:
    with pytest.raises(TraceError) as caught:
        load_trace(AZURE)
    message = str(caught.value)
    assert caught.value.column == "service_s"
    assert "arrival_s, task_type, context_tokens, generated_tokens" in message
    assert "LinearService(intercept=0.05, per_column={'context_tokens': 0.001, " \
           "'generated_tokens': 0.001})" in message


def test_the_azure_trace_loads_by_name_with_a_service_model() -> None:
    trace = load_trace(AZURE, service=AZURE_MODEL)
    assert len(trace) == 28_185
    assert trace["task_type"].value_counts().to_dict() == {"conv": 19_366, "code": 8_819}
    assert round(trace["arrival_s"].iloc[-1], 1) == 3_513.2
    assert round(trace["context_tokens"].mean()) == 1_434
    expected = 0.05 + 0.002 * trace["context_tokens"] + 0.03 * trace["generated_tokens"]
    np.testing.assert_allclose(trace["service_s"], expected)


def test_a_path_to_a_shipped_file_loads_too() -> None:
    path = Path(list_traces()["path"][0])
    pd.testing.assert_frame_equal(load_trace(path), load_trace(ALIBABA))


@pytest.fixture
def own_data(tmp_path: Path) -> Path:
    """A data folder with one small trace (and its note) and one trace without a note."""
    write(load_trace(frame(arrival_s=[0, 1, 2], service_s=[1, 1, 1])), tmp_path / "tiny.csv")
    (tmp_path / "tiny.md").write_text("# tiny.csv\n\nThree jobs,\none second apart.\n\nMore.\n")
    write(load_trace(frame(arrival_s=[0], service_s=[1])), tmp_path / "bare.csv.gz")
    (tmp_path / "ignored.parquet").write_bytes(b"")
    return tmp_path


def test_poolsim_data_points_at_another_folder(own_data: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POOLSIM_DATA", str(own_data))
    listed = list_traces()
    assert listed[["name", "rows", "description"]].values.tolist() == [
        ["bare", 1, ""], ["tiny", 3, "Three jobs, one second apart."]]
    assert len(load_trace("tiny")) == 3
    with pytest.raises(TraceError, match="the shipped traces are: bare, tiny"):
        load_trace(ALIBABA)


def test_without_a_data_folder_beside_the_package_dot_data_is_used(
        own_data: Path, tmp_path_factory: pytest.TempPathFactory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POOLSIM_DATA", raising=False)
    monkeypatch.setattr(poolsim.traces, "__file__",
                        str(tmp_path_factory.mktemp("site") / "poolsim" / "traces.py"))
    monkeypatch.chdir(own_data.parent)
    own_data.rename(own_data.parent / "data")
    assert list_traces()["name"].tolist() == ["bare", "tiny"]
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    assert list_traces().empty
    with pytest.raises(TraceError, match=r"the shipped traces are: none \(in "):
        load_trace("tiny")


def test_a_name_with_a_folder_is_a_path() -> None:
    with pytest.raises(TraceError, match=f"^no trace file './{ALIBABA}'$"):
        load_trace(f"./{ALIBABA}")
