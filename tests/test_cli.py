"""The ``poolsim`` command: readable output, exit codes (0, 2 for bad input, 3 for an unmet SLO),
errors that name the problem; and the duration and percentage parsers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from poolsim import ConfigError
from poolsim.cli import main, parse_fraction, parse_seconds

ALIBABA = "alibaba_genai_lora_2024-11"
# the first day of the Alibaba trace, 50 times as fast: 106 jobs; the plan sweeps 24 configs
DAY = [ALIBABA, "--end", "24h", "--compress", "50", "--workers", "2:8:2",
       "--queue-sizes", "0,10,inf"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``poolsim ARGV``: the exit status, stdout and stderr."""
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def refused_by_argparse(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run a command line argparse refuses: it exits 2; returns the last line of stderr."""
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    assert info.value.code == 2
    return capsys.readouterr().err.splitlines()[-1]


@pytest.fixture
def three_at_once(tmp_path: Path) -> Path:
    path = tmp_path / "three.csv"
    path.write_text("arrival_s,service_s\n0,1\n0,1\n0,1\n")
    return path


# -- simulate ------------------------------------------------------------------------------


def test_simulate_prints_a_summary_table(capsys: pytest.CaptureFixture[str],
                                         three_at_once: Path) -> None:
    status, out, err = run(capsys, "simulate", str(three_at_once), "--workers", "1",
                           "--queue-size", "1")
    assert (status, err) == (0, "")
    assert out.splitlines() == [
        f"poolsim simulate: 3 jobs of {three_at_once} through PoolConfig(workers=1, "
        "queue_size=1, backpressure='reject', block_timeout=1.0, job_timeout=None, "
        "shutdown='drain', shutdown_timeout=None) (fast engine, threads)",
        "",
        "  jobs                     3",
        "  completed                2  (66.667%)",
        "  rejected                 1  (33.333%)",
        "  throughput               1 jobs/s",
        "  utilisation         100.0%",
        "  wait          mean 0.5 s   p50 0.5 s   p95 0.95 s   p99 0.99 s   max 1 s",
        "  latency       mean 1.5 s   p50 1.5 s   p95 1.95 s   p99 1.99 s   max 2 s",
    ]


def test_simulate_with_a_shutdown_prints_what_it_did(capsys: pytest.CaptureFixture[str],
                                                     three_at_once: Path) -> None:
    status, out, _ = run(capsys, "simulate", str(three_at_once), "--workers", "1",
                         "--queue-size", "1", "--shutdown-at", "500ms",
                         "--shutdown", "finish_in_flight")
    assert status == 0
    assert "(simpy engine, threads)" in out.splitlines()[0]
    assert "  returned                 1  (33.333%)" in out.splitlines()
    assert out.splitlines()[-1] == (
        "  shutdown (finish_in_flight) at 0.5 s: returned after 0.5 s; 1 completed, "
        "1 returned, 0 cancelled, 0 still running, 0 killed by a SIGKILL 30 s after the signal")


def test_simulate_takes_a_shipped_trace_by_name_and_an_unbounded_queue(
        capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "simulate", ALIBABA, "--end", "2h", "--queue-size", "inf",
                         "--engine", "simpy", "--runtime", "asyncio")
    assert status == 0
    assert out.splitlines()[0].startswith(f"poolsim simulate: 22 jobs of {ALIBABA} through "
                                          "PoolConfig(workers=4, queue_size=None,")
    assert out.splitlines()[0].endswith("(simpy engine, asyncio)")
    assert "  completed               22  (100.000%)" in out.splitlines()


@pytest.mark.slow
def test_the_module_runs_as_a_program(three_at_once: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "poolsim.cli", "simulate", str(three_at_once),
                           "--workers", "1", "--queue-size", "1"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stderr) == (0, "")
    assert "  rejected                 1  (33.333%)" in done.stdout.splitlines()


# -- plan and traces -------------------------------------------------------------------------


def test_plan_prints_the_recommendation_and_where_the_report_is(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, out, err = run(capsys, "plan", *DAY, "--p99", "2.5m", "--max-reject", "0.1%",
                           "--out", str(tmp_path / "plan"))
    assert (status, err) == (0, "")
    assert out.splitlines() == [
        "workers=6 with an unbounded queue (reject) is the cheapest configuration with p99 "
        "latency 120.5 s <= 150 s and 0.000% refused <= 0.100%.",
        "",
        f"report: {tmp_path / 'plan' / 'report.html'}",
    ]
    assert (tmp_path / "plan" / "report.html").is_file()


def test_plan_exits_3_when_no_configuration_meets_the_slo(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, out, _ = run(capsys, "plan", *DAY, "--p99", "10s", "--max-reject", "0.1%",
                         "--out", str(tmp_path / "plan"))
    assert status == 3
    assert out.startswith("No configuration meets the SLO: the lowest p99 latency in the sweep "
                          "is ")
    assert "(limit 10 s)" in out and "p99 binds" in out
    assert out.splitlines()[-1] == f"report: {tmp_path / 'plan' / 'report.html'}"
    assert (tmp_path / "plan" / "report.html").is_file()


def test_traces_lists_the_shipped_traces(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "traces")
    assert status == 0
    assert [(line.split()[0], line.split()[1]) for line in out.splitlines()] == [
        (ALIBABA, "14,266"), ("azure_llm_2023_code_conv", "28,185")]


@pytest.mark.parametrize("command", [[], ["simulate"], ["plan"], ["traces"], ["demo"]])
def test_every_command_has_help(capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([*command, "--help"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: poolsim")


# -- errors ----------------------------------------------------------------------------------


def test_a_missing_trace_file_is_named(capsys: pytest.CaptureFixture[str],
                                       tmp_path: Path) -> None:
    missing = tmp_path / "missing.csv"
    assert run(capsys, "simulate", str(missing)) == (
        2, "", f"poolsim: error: no trace file '{missing}'\n")


def test_a_misspelt_shipped_trace_gets_a_suggestion(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "plan", "alibaba", "--p99", "2m", "--max-reject", "1%")
    assert (status, err) == (2, "poolsim: error: no trace file 'alibaba' and no shipped trace "
                                f"of that name; did you mean '{ALIBABA}'?\n")


def test_a_malformed_csv_names_the_row_and_column(capsys: pytest.CaptureFixture[str],
                                                  tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("arrival_s,service_s\n0,1\n0.5,1\n1,-2\n")
    assert run(capsys, "simulate", str(bad)) == (
        2, "", "poolsim: error: bad.csv: service_s at row 2 (line 4) is negative: -2 "
               "(it must be a finite number >= 0)\n")


@pytest.mark.parametrize(("argv", "message"), [
    (["simulate", "{trace}", "--workers", "0"], "workers=0 is invalid: an integer >= 1"),
    (["simulate", "{trace}", "--queue-size", "-1"], "queue_size=-1 is invalid: an integer >= 0"),
    (["simulate", "{trace}", "--compress", "0"], "factor=0.0 is invalid: a finite number > 0"),
    (["plan", "{trace}", "--p99", "1s", "--max-reject", "0", "--workers", "0:2"],
     "workers=0 is invalid: an integer >= 1"),
    (["plan", "{trace}", "--p99", "1s", "--max-reject", "0", "--backpressure", "sideways"],
     "backpressure='sideways' is invalid: one of 'reject', 'block', 'drop_oldest', "
     "'caller_runs'"),
])
def test_an_invalid_config_value_is_named(capsys: pytest.CaptureFixture[str], three_at_once: Path,
                                          tmp_path: Path, argv: list[str], message: str) -> None:
    argv = [str(three_at_once) if a == "{trace}" else a for a in argv]
    assert run(capsys, *argv, *(["--out", str(tmp_path / "plan")] if argv[0] == "plan" else [])
               ) == (2, "", f"poolsim: error: {message}\n")
    assert not (tmp_path / "plan").exists()  # refused before anything ran


def test_an_unknown_option_exits_2(capsys: pytest.CaptureFixture[str],
                                   three_at_once: Path) -> None:
    assert refused_by_argparse(capsys, "simulate", str(three_at_once), "--wrokers", "3") == (
        "poolsim: error: unrecognized arguments: --wrokers 3")


def test_no_command_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert refused_by_argparse(capsys).startswith("poolsim: error: the following arguments are "
                                                  "required: COMMAND")


def test_a_bad_duration_is_named(capsys: pytest.CaptureFixture[str], three_at_once: Path) -> None:
    assert refused_by_argparse(capsys, "plan", str(three_at_once), "--p99", "soon",
                               "--max-reject", "1%") == (
        "poolsim plan: error: argument --p99: duration='soon' is invalid: a finite number of "
        "seconds, or with a unit: ms, s, m, h")


def test_a_bad_percentage_is_named(capsys: pytest.CaptureFixture[str],
                                   three_at_once: Path) -> None:
    assert refused_by_argparse(capsys, "plan", str(three_at_once), "--p99", "2s",
                               "--max-reject", "150%") == (
        "poolsim plan: error: argument --max-reject: fraction='150%' is invalid: between 0 and 1 "
        "(0% to 100%)")


# -- parse_seconds and parse_fraction -----------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("120s", 120.0), ("2m", 120.0), ("2min", 120.0), ("500ms", 0.5), ("1.5h", 5400.0),
    ("90", 90.0), (" 3 S ", 3.0), ("1e3ms", 1.0), (".5s", 0.5), ("0", 0.0), ("2.5E1s", 25.0),
])
def test_durations_take_units(text: str, seconds: float) -> None:
    assert parse_seconds(text) == seconds


@pytest.mark.parametrize("text", ["soon", "", "s", "-5s", "5 sec", "5d", "1.2.3", "nan", "inf",
                                  "5s5", "1e999"])
def test_bad_durations_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_seconds(text)
    assert (info.value.field, info.value.value) == ("duration", text)


@pytest.mark.parametrize(("text", "fraction"), [
    ("0.1%", 0.001), ("0.001", 0.001), ("100%", 1.0), ("0", 0.0), ("1", 1.0), (" 5 % ", 0.05),
    ("1e-3", 0.001), ("0%", 0.0),
])
def test_fractions_take_percentages(text: str, fraction: float) -> None:
    assert parse_fraction(text) == pytest.approx(fraction, rel=1e-15)


@pytest.mark.parametrize("text", ["150%", "1.5", "-1%", "-0.1", "abc", "", "%", "nan", "inf",
                                  "1e999%"])
def test_bad_fractions_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_fraction(text)
    assert (info.value.field, info.value.value) == ("fraction", text)


UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


@settings(max_examples=300)
@given(st.floats(min_value=0, max_value=1e12), st.sampled_from([None, *UNITS]),
       st.sampled_from(["", " "]), st.booleans())
def test_a_written_duration_reads_back(value: float, unit: str | None, space: str,
                                       upper: bool) -> None:
    text = repr(value) + ("" if unit is None else space + unit)
    assert parse_seconds(text.upper() if upper else text) == value * UNITS[unit or "s"]


@settings(max_examples=300)
@given(st.floats(min_value=0, max_value=1))
def test_a_written_fraction_reads_back(value: float) -> None:
    assert parse_fraction(repr(value)) == value


@settings(max_examples=300)
@given(st.floats(min_value=0, max_value=100))
def test_a_written_percentage_reads_back(value: float) -> None:
    assert parse_fraction(f"{value!r}%") == value / 100
