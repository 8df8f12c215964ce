"""The Grafana dashboard in docs/ queries only metrics and labels the library exports.

Every PromQL expression in ``docs/grafana/poolsim-dashboard.json`` (panel targets and the
template variables' ``label_values`` queries) is tokenized; each metric it selects must be a
sample name that a real ``WorkerPool`` writes into a ``CollectorRegistry`` (so
``worker_jobs_total`` for the counter ``worker_jobs``, ``worker_job_duration_seconds_bucket``
for the histogram), and each label it matches on, groups by (``by (...)``) or reads with
``label_values`` must be on that sample. Renaming a metric or a label in ``poolsim.metrics``
without updating the dashboard fails here.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from poolsim import Status, WorkerPool

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "docs" / "grafana" / "poolsim-dashboard.json"
DATASOURCE_UID = "${DS_PROMETHEUS}"
FAMILIES = {"worker_jobs", "worker_job_duration_seconds", "worker_job_wait_seconds",
            "worker_queue_depth", "worker_busy_workers"}

# -- what the library exports ----------------------------------------------------------


@dataclass(frozen=True)
class Exported:
    """Sample name -> family, family type, and label name -> values seen."""

    family: dict[str, str]
    kind: dict[str, str]
    labels: dict[str, dict[str, set[str]]]


def collect(registry: CollectorRegistry) -> Exported:
    family: dict[str, str] = {}
    kind: dict[str, str] = {}
    labels: dict[str, dict[str, set[str]]] = {}
    for metric in registry.collect():
        for sample in metric.samples:
            family[sample.name] = metric.name
            kind[sample.name] = metric.type
            seen = labels.setdefault(sample.name, {})
            for label, value in sample.labels.items():
                seen.setdefault(label, set()).add(value)
    return Exported(family, kind, labels)


@pytest.fixture(scope="module")
def exported() -> Exported:
    """What a pool that ran, failed and timed out jobs exports into its own registry."""
    registry = CollectorRegistry()
    pool = WorkerPool(workers=2, queue_size=4, name="grafana", registry=registry)
    try:
        assert pool.submit(pow, 2, 3, task_type="probe").result(timeout=10) == 8
        assert isinstance(pool.submit(int, "x", task_type="probe").exception(timeout=10),
                          ValueError)
    finally:
        pool.shutdown("drain", timeout=10)
    found = collect(registry)  # the pool is still referenced: its scrape-time gauges are there
    return found


def test_the_registry_holds_every_poolsim_family(exported: Exported) -> None:
    assert set(exported.family.values()) >= FAMILIES
    assert exported.labels["worker_jobs_total"]["status"] == {s.value for s in Status}


# -- PromQL, as far as the dashboard needs it ------------------------------------------

TOKEN = re.compile(r"""
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<var>\$\{\w+(?::\w+)?\}|\$\w+|\[\[\w+\]\])
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?:ms|[smhdwy])?)
  | (?P<ident>[A-Za-z_:][\w:]*)
  | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^=<>,(){}\[\]@])
  | (?P<space>\s+)
  | (?P<other>.)
""", re.X)

GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}
COUNTER_FUNCTIONS = {"rate", "irate", "increase", "resets"}


@dataclass
class Selector:
    metric: str
    matchers: list[tuple[str, str, str]] = field(default_factory=list)  # (label, op, value)


@dataclass
class Query:
    """What one PromQL expression selects, and the labels it groups by over which metrics."""

    expr: str
    selectors: list[Selector] = field(default_factory=list)
    grouped: list[tuple[str, list[str], set[str]]] = field(default_factory=list)
    counter_args: list[tuple[str, set[str]]] = field(default_factory=list)  # (function, metrics)
    errors: list[str] = field(default_factory=list)


def tokenize(expr: str) -> list[tuple[str, str]]:
    tokens = []
    for match in TOKEN.finditer(expr):
        kind = match.lastgroup
        assert kind is not None
        if kind == "space":
            continue
        tokens.append((kind, match.group()))
    return tokens


def unquote(literal: str) -> str:
    body = literal[1:-1]
    return body if literal[0] == "`" else re.sub(r"\\(.)", r"\1", body)


def parse(expr: str) -> Query:
    """Selectors, grouping clauses and counter-function arguments of ``expr``.

    A small scanner, not a full PromQL parser: it tracks parenthesised groups so that
    ``sum by (le) (...)`` and ``sum (...) by (le)`` know which metrics they aggregate.
    """
    query = Query(expr)
    tokens = tokenize(expr)
    # one frame per open "(": the call it belongs to and the metrics selected inside it
    frames: list[tuple[str | None, set[str]]] = [(None, set())]
    pending: list[str] | None = None  # labels of a "by (...)" waiting for its argument
    pending_for: list[list[str] | None] = []  # per open frame: its prefix "by" labels
    last_closed: set[str] = set()
    i = 0

    def labels_list(start: int) -> tuple[list[str], int]:
        """Label names in the "(...)" at ``start``; returns them and the index after ")"."""
        if start >= len(tokens) or tokens[start][1] != "(":
            query.errors.append(f"expected '(' after a grouping keyword in {expr!r}")
            return [], start
        names: list[str] = []
        j = start + 1
        while j < len(tokens) and tokens[j][1] != ")":
            if tokens[j][0] == "ident":
                names.append(tokens[j][1])
            elif tokens[j][1] != ",":
                query.errors.append(f"unexpected {tokens[j][1]!r} in a label list of {expr!r}")
            j += 1
        return names, j + 1

    def matchers(start: int, selector: Selector) -> int:
        """Parse ``{label op "value", ...}`` from the "{" at ``start``; index after "}"."""
        j = start + 1
        while j < len(tokens) and tokens[j][1] != "}":
            if tokens[j][1] == ",":
                j += 1
                continue
            label, op, value = tokens[j:j + 3] if j + 3 <= len(tokens) else [("", "")] * 3
            if label[0] != "ident" or op[1] not in ("=", "!=", "=~", "!~") or value[0] != "string":
                query.errors.append(f"cannot read the label matchers of {expr!r}")
                return len(tokens)
            selector.matchers.append((label[1], op[1], unquote(value[1])))
            j += 3
        return j + 1

    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1][1] if i + 1 < len(tokens) else None
        previous = tokens[i - 1][1] if i > 0 else None
        if kind == "ident" and text in GROUPING:
            if following != "(":  # "group_left" may stand without a label list
                i += 1
                continue
            names, i = labels_list(i + 1)
            if text in ("by", "without"):
                if previous == ")":  # sum (...) by (...)
                    query.grouped.append((text, names, set(last_closed)))
                else:  # sum by (...) (...): applies to the next group
                    pending = names
            continue
        if kind == "ident" and following in ("by", "without"):  # an aggregation: sum by (...)
            i += 1
            continue
        if text == "(" or (kind == "ident" and following == "("):  # a call or a bare group
            frames.append((text if kind == "ident" else None, set()))
            pending_for.append(pending)
            pending = None
            i += 2 if kind == "ident" else 1
            continue
        if text == ")":
            if len(frames) == 1:
                query.errors.append(f"unbalanced ')' in {expr!r}")
                break
            function, metrics = frames.pop()
            prefix = pending_for.pop()
            if prefix is not None:
                query.grouped.append(("by", prefix, set(metrics)))
            if function in COUNTER_FUNCTIONS:
                query.counter_args.append((function, set(metrics)))
            last_closed = metrics
            i += 1
            continue
        if text == "[":  # a range or subquery: durations and variables only
            while i < len(tokens) and tokens[i][1] != "]":
                i += 1
            i += 1
            continue
        if text == "{" or (kind == "ident" and text not in KEYWORDS):  # a selector
            selector = Selector(text if kind == "ident" else "")
            if text == "{":
                i = matchers(i, selector)
            elif following == "{":
                i = matchers(i + 1, selector)
            else:
                i += 1
            if not selector.metric:
                names = [v for label, _, v in selector.matchers if label == "__name__"]
                selector.metric = names[0] if names else ""
            query.selectors.append(selector)
            for _, metrics in frames:  # every enclosing group selects it
                metrics.add(selector.metric)
            continue
        if kind == "other":
            query.errors.append(f"unexpected {text!r} in {expr!r}")
        i += 1
    if len(frames) != 1:
        query.errors.append(f"unbalanced '(' in {expr!r}")
    return query


LABEL_VALUES = re.compile(
    r"^\s*label_values\(\s*(?P<metric>[^,()]+?)\s*,\s*(?P<label>\w+)\s*\)\s*$")


def problems(query: Query, exported: Exported) -> list[str]:
    """Everything in ``query`` that names a metric or label the library does not export."""
    found = list(query.errors)  # a query may select nothing: vector($workers) is a constant
    for selector in query.selectors:
        if selector.metric not in exported.family:
            found.append(f"{selector.metric!r} is not exported (exported: "
                         f"{sorted(exported.family)}) in {query.expr!r}")
            continue
        on_metric = exported.labels[selector.metric]
        for label, op, value in selector.matchers:
            if label == "__name__":
                continue
            if label not in on_metric:
                found.append(f"{selector.metric} has no label {label!r} "
                             f"(it has {sorted(on_metric)}) in {query.expr!r}")
            elif label == "status" and "$" not in value:  # a closed set: check the values
                wanted = value.split("|") if op in ("=~", "!~") else [value]
                unknown = sorted(set(wanted) - on_metric["status"])
                if unknown:
                    found.append(f"status values {unknown} are not statuses in {query.expr!r}")
    for keyword, labels, metrics in query.grouped:
        for metric in sorted(metrics & exported.family.keys()):
            missing = [label for label in labels if label not in exported.labels[metric]]
            if missing:
                found.append(f"{keyword} ({', '.join(labels)}): {metric} has no label(s) "
                             f"{missing} in {query.expr!r}")
    for function, metrics in query.counter_args:
        for metric in sorted(metrics & exported.family.keys()):
            if exported.kind[metric] not in ("counter", "histogram"):
                found.append(f"{function}() of {exported.kind[metric]} {metric} "
                             f"in {query.expr!r}")
    return found


def variable_problems(query: str, exported: Exported) -> list[str]:
    match = LABEL_VALUES.match(query)
    if not match:
        return [f"template query {query!r} is not label_values(metric, label)"]
    metric, label = match["metric"], match["label"]
    selectors = parse(metric).selectors
    name = selectors[0].metric if selectors else metric
    if name not in exported.family:
        return [f"template query {query!r}: {name!r} is not exported"]
    if label not in exported.labels[name]:
        return [f"template query {query!r}: {name} has no label {label!r}"]
    return []


# -- the dashboard ---------------------------------------------------------------------


def load() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return dashboard


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # panels inside collapsed rows


def targets(dashboard: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(panel.get("title", ""), target) for panel in panels(dashboard)
            for target in panel.get("targets", [])]


def variable_query(variable: dict[str, Any]) -> str:
    query = variable.get("query", "")
    return str(query.get("query", "") if isinstance(query, dict) else query)


def dashboard_problems(dashboard: dict[str, Any], exported: Exported) -> list[str]:
    found: list[str] = []
    for title, target in targets(dashboard):
        expr = target.get("expr")
        if not expr:
            found.append(f"panel {title!r}: a target without expr")
            continue
        found += [f"panel {title!r}: {p}" for p in problems(parse(expr), exported)]
    for variable in dashboard["templating"]["list"]:
        if variable.get("type") == "query":
            found += [f"variable {variable['name']!r}: {p}"
                      for p in variable_problems(variable_query(variable), exported)]
    return found


def test_every_query_names_an_exported_metric_and_its_labels(exported: Exported) -> None:
    dashboard = load()
    assert len(targets(dashboard)) >= 10
    assert dashboard_problems(dashboard, exported) == []


def test_every_poolsim_family_has_a_panel(exported: Exported) -> None:
    used = {exported.family.get(selector.metric) for _, target in targets(load())
            for selector in parse(target["expr"]).selectors}
    assert used >= FAMILIES


def test_renamed_metric_or_label_is_caught(exported: Exported) -> None:
    dashboard = load()
    text = json.dumps(dashboard)
    for old, new in (("worker_queue_depth", "worker_queue_length"),  # metric renamed
                     ("worker_jobs_total", "worker_jobs_count"),
                     ("worker_job_wait_seconds_bucket", "worker_job_wait_seconds"),
                     ('status=~\\"failed|timeout\\"', 'status=~\\"failed|timedout\\"'),
                     ("sum by (le) (", "sum by (le, queue) (")):  # duration has no queue
        assert old in text, old
        assert dashboard_problems(json.loads(text.replace(old, new)), exported), (old, new)
    # ... and the same when the library renames instead of the dashboard
    renamed = copy.deepcopy(exported)
    for name in [n for n in renamed.family if n.startswith("worker_busy_workers")]:
        renamed.family["worker_busy_workers_now"] = renamed.family.pop(name)
    renamed.labels["worker_jobs_total"]["outcome"] = renamed.labels["worker_jobs_total"].pop(
        "status")
    found = "\n".join(dashboard_problems(dashboard, renamed))
    assert "'worker_busy_workers' is not exported" in found
    assert "worker_jobs_total has no label 'status'" in found


@pytest.mark.parametrize(("expr", "expected"), [
    ('sum by (status) (rate(worker_jobs_total{queue=~"$queue"}[$__rate_interval]))',
     (["worker_jobs_total"], [("by", ["status"], {"worker_jobs_total"})])),
    ("sum(rate(worker_job_wait_seconds_bucket[5m])) by (le)",
     (["worker_job_wait_seconds_bucket"], [("by", ["le"], {"worker_job_wait_seconds_bucket"})])),
    ('histogram_quantile(0.99, sum by (le) (rate(x_bucket{a="1"}[1m]))) / on() vector($w)',
     (["x_bucket"], [("by", ["le"], {"x_bucket"})])),
    ("worker_queue_depth > 0 and worker_busy_workers", (
        ["worker_queue_depth", "worker_busy_workers"], [])),
    ('{__name__="worker_queue_depth"}', (["worker_queue_depth"], [])),
])
def test_parse(expr: str, expected: tuple[list[str], list[tuple[str, list[str], set[str]]]]
               ) -> None:
    query = parse(expr)
    assert query.errors == []
    assert ([s.metric for s in query.selectors], query.grouped) == expected


def test_rate_of_a_gauge_is_caught(exported: Exported) -> None:
    found = problems(parse("rate(worker_queue_depth[5m])"), exported)
    assert found and "rate() of gauge" in found[0]


def test_dashboard_shape() -> None:
    dashboard = load()
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    source = variables["DS_PROMETHEUS"]
    assert (source["type"], source["query"]) == ("datasource", "prometheus")
    assert variable_query(variables["queue"]) == "label_values(worker_queue_depth, queue)"
    assert variables["queue"]["includeAll"] and variables["queue"]["multi"]
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == DATASOURCE_UID, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == DATASOURCE_UID, panel["title"]
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids))


def test_duration_heatmap_reads_the_histogram_buckets() -> None:
    heatmaps = [p for p in panels(load()) if p["type"] == "heatmap"]
    assert heatmaps
    for panel in heatmaps:
        (target,) = panel["targets"]
        assert target["format"] == "heatmap"
        query = parse(target["expr"])
        assert [s.metric for s in query.selectors] == ["worker_job_duration_seconds_bucket"]
        assert [labels for _, labels, _ in query.grouped] == [["le"]]
        assert panel["options"]["calculate"] is False  # buckets come from Prometheus


def test_required_panels_are_there() -> None:
    exprs = {p["title"]: " ".join(t["expr"] for t in p.get("targets", []))
             for p in panels(load())}
    joined = "\n".join(exprs.values())
    assert ('sum by (status) (rate(worker_jobs_total{queue=~"$queue"}[$__rate_interval]))'
            in joined)
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}, sum by (le) (rate(worker_job_duration" in joined
    assert "histogram_quantile(0.99, sum by (le, queue) (rate(worker_job_wait_seconds" in joined
    assert any("worker_busy_workers" in e and "$workers" in e for e in exprs.values())
    assert any("worker_queue_depth" in e for e in exprs.values())
