"""The capacity plan: a self-contained folder whose sentences and checks come from the data."""

from __future__ import annotations

import base64
import html
import math
import re
from pathlib import Path

import pandas as pd
import pytest

from poolsim import PoolConfig, compress, load_trace, recommend, window
from poolsim.report import Plan, plan

PNG = b"\x89PNG\r\n\x1a\n"
CHARTS = {"sweep", "utilisation", "queue_depth", "latency_histogram", "latency_cdf", "policies",
          "shutdown"}
QUEUES = (0, 10, None)
WORKERS = [2, 4, 6, 8]


@pytest.fixture(scope="module")
def day() -> pd.DataFrame:
    """The first day of the Alibaba trace (106 jobs), 50 times as fast: a pool of a few
    workers is busy, and bursts make queues."""
    return compress(window(load_trace("alibaba_genai_lora_2024-11"), 0, 86_400), 50)


def make_plan(trace: pd.DataFrame, out: Path, p99: float) -> Plan:
    return plan(trace, p99=p99, max_reject=0.001, out=out, workers=WORKERS, queue_sizes=QUEUES,
                title="alibaba day 1 <x50>")


@pytest.fixture(scope="module")
def met(day: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Plan:
    return make_plan(day, tmp_path_factory.mktemp("met") / "report", p99=150.0)


@pytest.fixture(scope="module")
def unmet(day: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Plan:
    return make_plan(day, tmp_path_factory.mktemp("unmet") / "report", p99=10.0)


def page(outcome: Plan) -> str:
    return outcome.html.read_text(encoding="utf-8")


def text(outcome: Plan) -> str:
    """The page's text: tags dropped, entities decoded, whitespace collapsed."""
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", page(outcome))))


def section(outcome: Plan, heading: str) -> str:
    """The HTML from the <h2> starting with ``heading`` to the next <h2>."""
    after = page(outcome).split(f"<h2>{heading}", 1)[1]
    return after.split("<h2>", 1)[0]


def table_rows(fragment: str) -> list[list[str]]:
    return [[html.unescape(cell) for cell in re.findall(r"<t[hd]>(.*?)</t[hd]>", row)]
            for row in re.findall(r"<tr>(.*?)</tr>", fragment)]


def test_the_folder_holds_the_page_the_table_and_the_charts(met: Plan) -> None:
    assert met.html == met.folder / "report.html"
    assert sorted(p.name for p in met.folder.iterdir()) == ["charts", "report.html", "sweep.csv"]
    charts = met.folder / "charts"
    assert {p.stem for p in charts.glob("*.png")} == CHARTS
    assert all(p.read_bytes().startswith(PNG) for p in charts.glob("*.png"))


def test_the_page_is_self_contained_its_images_are_the_charts(met: Plan) -> None:
    source = page(met)
    sources = re.findall(r"""src=['"]([^'"]*)['"]""", source)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    embedded = {base64.b64decode(s.split(",", 1)[1]) for s in sources}
    assert embedded == {p.read_bytes() for p in (met.folder / "charts").glob("*.png")}
    assert re.findall(r"https?://|<link|<script|@import|url\(", source) == []


def test_the_csv_has_one_row_per_configuration_and_reads_back(met: Plan) -> None:
    table = pd.read_csv(met.folder / "sweep.csv")
    assert len(table) == len(met.grid) == len(WORKERS) * len(QUEUES) * 2
    configs = [(int(w), None if math.isnan(q) else int(q), b) for w, q, b in
               zip(table["workers"], table["queue_size"], table["backpressure"], strict=True)]
    assert configs == [(w, q, b) for w in WORKERS for q in QUEUES
                       for b in ("reject", "drop_oldest")]
    pd.testing.assert_series_equal(table["latency_p99"], met.grid["latency_p99"])
    again = recommend(table, p99=150.0, max_reject=0.001)
    assert (again.config, again.reason) == (met.recommendation.config, met.recommendation.reason)


def test_the_page_states_the_recommendation_and_the_slo(met: Plan) -> None:
    chosen = met.recommendation
    assert chosen.met
    assert chosen.config == PoolConfig(workers=6, queue_size=None)
    assert chosen.reason.startswith("workers=6 with an unbounded queue (reject) is the cheapest")
    words = text(met)
    assert chosen.reason in words
    assert "SLO: p99 latency ≤ 150 s and at most 0.100% of jobs refused" in words
    assert f"The recommended configuration meets it: {chosen.config!r} ." in words
    assert "Capacity plan: alibaba day 1 <x50>" in words  # the title, escaped in the page
    assert "106 jobs over 1,690 s" in words and "24 configurations simulated" in words


def test_the_sanity_checks_are_printed(met: Plan) -> None:
    checks = [html.unescape(item) for item in re.findall(r"<li>(.*?)</li>",
                                                         section(met, "Sanity checks"))]
    assert len(checks) == 3
    assert checks[0] == ("Arrivals reconcile: 106 arrived = 106 completed + 0 still in the "
                         "system at the end.")
    assert checks[1].startswith("Little's law over ")
    assert checks[1].endswith("(the middle 80 % of the run, accepted throughput).")
    assert checks[2].startswith(("Erlang C cross-check (M/M/6 with the trace's mean rate ",
                                 "M/M/c/K cross-check (c=6, "))


def test_the_shutdown_table_has_one_row_per_policy(met: Plan) -> None:
    rows = table_rows(section(met, "Shutdown at the busiest moment"))
    assert rows[0] == ["policy", "exit after", "completed", "returned", "cancelled",
                       "still running", "killed at 30 s"]
    assert [row[0] for row in rows[1:]] == ["drain", "finish_in_flight", "immediate"]
    assert all(re.fullmatch(r"[0-9.e+-]+ s", row[1]) and all(c.isdigit() for c in row[2:])
               for row in rows[1:])


def test_the_neighbours_and_the_policies_are_tabulated(met: Plan) -> None:
    neighbours = table_rows(section(met, "The recommended pool"))
    assert [row[0] for row in neighbours[1:]] == ["5 workers", "6 workers (recommended)",
                                                  "7 workers"]
    policies = table_rows(section(met, "Back-pressure policies at 6 workers"))
    assert [row[0] for row in policies[1:]] == ["reject", "block", "drop_oldest", "caller_runs"]


def test_an_unmeetable_slo_still_writes_the_report(unmet: Plan) -> None:
    chosen = unmet.recommendation
    assert (chosen.met, chosen.binding) == (False, ("p99",))
    assert chosen.reason.startswith("No configuration meets the SLO: the lowest p99 latency in "
                                    "the sweep is ")
    assert {p.name for p in unmet.folder.iterdir()} == {"charts", "report.html", "sweep.csv"}
    words = text(unmet)
    assert chosen.reason in words
    assert "The recommended configuration cannot meet it" in words


def test_a_trace_of_instant_jobs_gets_a_report(tmp_path: Path) -> None:
    instant = pd.DataFrame({"arrival_s": [0.0, 1.0, 2.0], "service_s": [0.0, 0.0, 0.0]})
    outcome = plan(instant, p99=1.0, max_reject=0.0, out=tmp_path, workers=[1, 2])
    assert outcome.recommendation.met and outcome.html.is_file()


def test_one_short_job_is_not_called_an_overload(tmp_path: Path) -> None:
    one = pd.DataFrame({"arrival_s": [0.0], "service_s": [1.0]})
    outcome = plan(one, p99=2.0, max_reject=0.0, out=tmp_path, workers=[1, 2])
    checks = re.findall(r"<li>(.*?)</li>", section(outcome, "Sanity checks"))
    assert not any("overloaded" in check for check in checks), checks[-1]
