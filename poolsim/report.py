"""The capacity plan: sweep a trace, pick the cheapest pool that meets the SLO, show why.

:func:`plan` writes a self-contained folder: ``report.html`` (charts embedded
as PNG), ``sweep.csv`` (one row per configuration) and ``charts/*.png``. The
recommendation sentence and every number in it come from the data.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from poolsim import plot
from poolsim.config import Backpressure, PoolConfig, ShutdownPolicy
from poolsim.records import Summary
from poolsim.sim.model import Runtime, SimResult, simulate
from poolsim.sim.sweep import Recommendation, recommend, sweep
from poolsim.sim.theory import littles_law, mmc, mmck_for

__all__ = ["Plan", "plan"]


@dataclasses.dataclass(frozen=True)
class Plan:
    """What :func:`plan` found and where it wrote it."""

    recommendation: Recommendation
    grid: pd.DataFrame
    folder: Path
    html: Path


@dataclasses.dataclass(frozen=True)
class _Load:
    """The trace's load, as the plan describes it."""

    jobs: int
    span_s: float
    rate: float
    mean_service: float
    offered: float  # busy workers needed on average
    peak_offered: float  # the same in the busiest minute


def _load(trace: pd.DataFrame) -> _Load:
    arrival = trace["arrival_s"].to_numpy(float)
    service = trace["service_s"].to_numpy(float)
    span = float(arrival[-1] - arrival[0]) if len(arrival) > 1 else 0.0
    rate = (len(arrival) - 1) / span if span > 0 else math.nan
    minute = np.floor((arrival - arrival[0]) / 60.0).astype(np.int64)
    work_per_minute = np.bincount(minute, weights=service)
    return _Load(len(arrival), span, rate, float(service.mean()),
                 rate * float(service.mean()) if span > 0 else math.nan,
                 float(work_per_minute.max()) / 60.0)


def default_workers(load: _Load) -> list[int]:
    """Worker counts worth sweeping: from the average load to twice the busiest minute's,
    every count for the first 16, then about 12 % apart."""
    low = max(1, math.floor(load.offered) if math.isfinite(load.offered) else 1)
    high = max(low + 4, math.ceil(2 * load.peak_offered) + 1)
    counts = list(range(low, min(high, low + 15) + 1))
    while counts[-1] < high:
        counts.append(min(high, max(counts[-1] + 1, round(counts[-1] * 1.12))))
    return counts


def plan(
    trace: pd.DataFrame,
    *,
    p99: float,
    max_reject: float,
    out: Path,
    base: PoolConfig | None = None,
    workers: Sequence[int] | None = None,
    queue_sizes: Sequence[int | None] = (0, 10, 100, 1000, None),
    backpressure: Sequence[str] = ("reject", "drop_oldest"),
    grace_s: float = 30.0,
    runtime: Runtime = "threads",
    seed: int | None = 1,
    title: str = "trace",
) -> Plan:
    """Sweep ``trace``, recommend a configuration for the SLO, and write the report.

    The SLO: p99 latency of completed jobs at most ``p99`` seconds, and at
    most ``max_reject`` of the jobs refused or timed out (rejected, dropped, timeout).
    """
    from poolsim.sim.sweep import check_slo
    from poolsim.traces import load_trace

    p99, max_reject = check_slo(p99, max_reject)
    trace = load_trace(trace)
    base = base or PoolConfig()
    load = _load(trace)
    workers = list(workers) if workers is not None else default_workers(load)
    grid = sweep(trace, base=base, seed=seed, runtime=runtime, workers=workers,
                 queue_size=list(queue_sizes), backpressure=list(backpressure))
    chosen = recommend(grid, p99=p99, max_reject=max_reject)
    config = chosen.config
    out.mkdir(parents=True, exist_ok=True)
    (out / "charts").mkdir(exist_ok=True)
    grid.to_csv(out / "sweep.csv", index=False)

    best = simulate(trace, config, seed=seed, runtime=runtime)
    sizes = sorted({max(1, config.workers - _step(workers)), config.workers,
                    config.workers + _step(workers)})
    by_size = {f"{w} workers": best if w == config.workers
               else simulate(trace, config.replace(workers=w), seed=seed, runtime=runtime)
               for w in sizes}
    policies = {policy.value: simulate(trace, config.replace(backpressure=policy), seed=seed,
                                       runtime=runtime).summary
                for policy in Backpressure}
    depth = best.queue_depth()
    busiest = float(depth.index[int(np.argmax(depth.to_numpy()))]) if len(depth) else 0.0
    shutdowns = {policy: simulate(trace, config.replace(shutdown=policy), seed=seed,
                                  runtime=runtime, shutdown_at=busiest)
                 for policy in ShutdownPolicy}  # with base's shutdown_timeout; kills at grace_s

    charts = {
        "sweep": ("Sweep: p99 latency and rejection rate over workers x queue size",
                  plot.sweep_heatmaps(grid, backpressure=config.backpressure.value)),
        "utilisation": ("Utilisation against workers (the 70-80 % band is the usual target)",
                        plot.utilisation_chart(grid[grid["backpressure"]
                                                    == config.backpressure.value])),
        "queue_depth": ("Queue depth over time for three pool sizes",
                        plot.queue_depth_chart({k: r.jobs for k, r in by_size.items()})),
        "latency_histogram": ("Latency of the recommended pool, with the SLO and the "
                              "Prometheus bucket edges",
                              plot.latency_histogram(best.jobs, slo=p99)),
        "latency_cdf": ("Latency distribution for three pool sizes",
                        plot.latency_cdf({k: r.jobs for k, r in by_size.items()}, slo=p99)),
        "policies": ("Back-pressure policies at the recommended size",
                     plot.policy_bars(policies)),
        "shutdown": (f"A drain shutdown at the busiest moment ({busiest:.4g} s) against a "
                     f"{grace_s:g} s grace period",
                     plot.shutdown_timeline(shutdowns[ShutdownPolicy.DRAIN].jobs,
                                            shutdown_at=busiest, grace_s=grace_s)),
    }
    images = {name: _png(figure, out / "charts" / f"{name}.png")
              for name, (_, figure) in charts.items()}
    page = _page(title, load, p99, max_reject, chosen, best, by_size, policies, shutdowns,
                 grace_s, busiest, grid, {name: (caption, images[name])
                                 for name, (caption, _) in charts.items()})
    (out / "report.html").write_text(page, encoding="utf-8")
    return Plan(chosen, grid, out, out / "report.html")


def _step(workers: Sequence[int]) -> int:
    ordered = sorted(set(workers))
    return max(1, (ordered[-1] - ordered[0]) // 8) if len(ordered) > 1 else 1


def _png(figure: Figure, path: Path) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    path.write_bytes(buffer.getvalue())
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _secs(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g} s"


def _checks(trace_jobs: int, best: SimResult, load: _Load) -> list[str]:
    """Printed sanity checks: reconciliation, Little's law, a queueing-theory cross-check."""
    s = best.summary
    counted = sum(s.counts.values())
    in_system = trace_jobs - counted
    lines = [f"Arrivals reconcile: {trace_jobs:,} arrived = "
             + " + ".join(f"{n:,} {k}" for k, n in s.counts.items() if n)
             + f" + {in_system:,} still in the system at the end."]
    span = (float(best.jobs["arrival_s"].min()), float(best.jobs["end_s"].max()))
    trim = 0.1 * (span[1] - span[0])  # the run starts empty and ends draining: skip both
    if trim > 0:
        little = littles_law(best.jobs, window=(span[0] + trim, span[1] - trim))
        lines.append(f"{little} (the middle 80 % of the run, accepted throughput).")
    config = best.config
    if not (math.isfinite(load.rate) and load.rate > 0 and load.mean_service > 0):
        lines.append("Queueing-theory cross-check: not defined for this trace (it needs "
                     "arrivals spread over time and jobs that take time).")
    elif config.queue_size is not None and config.backpressure is Backpressure.REJECT:
        finite = mmck_for(config, load.rate, load.mean_service)
        lines.append(
            f"M/M/c/K cross-check (c={config.workers}, K={config.capacity}, the trace's mean "
            f"rate {load.rate:.4g}/s and mean service {load.mean_service:.4g} s): a Poisson "
            f"load would be refused {finite.blocking:.3%} and wait {finite.mean_wait:.4g} s on "
            f"average; this trace: {s.rejection_rate:.3%} and {s.wait_mean:.4g} s. A burstier "
            f"load is refused more.")
    elif load.rate * load.mean_service < config.workers:
        theory = mmc(load.rate, load.mean_service, config.workers)
        lines.append(
            f"Erlang C cross-check (M/M/{config.workers} with the trace's mean rate "
            f"{load.rate:.4g}/s and mean service {load.mean_service:.4g} s): utilisation "
            f"{theory.rho:.1%}, P(wait) {theory.p_wait:.3f}, mean wait {theory.mean_wait:.4g} s; "
            f"simulated mean wait {s.wait_mean:.4g} s (a burstier load waits longer).")
    else:
        lines.append(f"Erlang C cross-check: at the mean rate, {config.workers} workers are "
                     f"overloaded (utilisation >= 100 %); only the queue limit bounds the pool.")
    return lines


def _table(rows: Sequence[tuple[str, ...]], header: tuple[str, ...]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _summary_row(label: str, s: Summary) -> tuple[str, ...]:
    refused = (s.counts["rejected"] + s.counts["dropped"] + s.counts["timeout"]) / s.jobs
    return (label, _secs(s.latency_p50), _secs(s.latency_p95), _secs(s.latency_p99),
            _secs(s.wait_p99), f"{refused:.3%}", f"{s.utilisation:.1%}")


def _page(title: str, load: _Load, p99: float, max_reject: float, chosen: Recommendation,
          best: SimResult, by_size: dict[str, SimResult], policies: dict[str, Summary],
          shutdowns: dict[Any, SimResult],
          grace_s: float, busiest: float, grid: pd.DataFrame,
          charts: dict[str, tuple[str, str]]) -> str:
    config = chosen.config
    verdict = "meets" if chosen.met else "cannot meet"
    header = ("", "latency p50", "p95", "p99", "wait p99", "refused", "utilisation")
    by_type = best.jobs.assign(wait=best.jobs["start_s"] - best.jobs["arrival_s"]).groupby(
        "task_type", observed=True)["wait"]
    type_rows = [(str(name), f"{len(group):,}", _secs(float(group.median())),
                  _secs(float(group.quantile(0.99)))) for name, group in by_type]
    shutdown_rows = []
    for policy, result in shutdowns.items():
        d = result.shutdown
        assert d is not None
        shutdown_rows.append((str(policy), _secs(d.duration_s), str(len(d.completed)),
                              str(len(d.returned)), str(len(d.cancelled)),
                              str(len(d.still_running)), str(len(d.killed(grace_s)))))
    figures = "".join(
        f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        for caption, data in charts.values())
    checks = "".join(f"<li>{html.escape(line)}</li>" for line in _checks(load.jobs, best, load))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>poolsim capacity plan: {html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
.verdict {{ font-size: 1.2em; padding: 0.8em; background: {'#e8f5e9' if chosen.met
                                                         else '#fff3e0'}; }}
figure {{ margin: 1.5em 0; }} img {{ max-width: 100%; }}
figcaption {{ color: #555; font-style: italic; }}
</style></head><body>
<h1>Capacity plan: {html.escape(title)}</h1>
<p class="verdict">{html.escape(chosen.reason)}</p>
<p>SLO: p99 latency &le; {p99:g} s and at most {max_reject:.3%} of jobs refused or timed out
(rejected, dropped or timeout). The recommended configuration {verdict} it:
<code>{html.escape(repr(config))}</code>.</p>
<h2>The load</h2>
<p>{load.jobs:,} jobs over {load.span_s:,.0f} s: {load.rate:.4g} jobs/s on average, mean
service {load.mean_service:.4g} s, so {load.offered:.3g} busy workers on average and
{load.peak_offered:.3g} in the busiest minute. {len(grid)} configurations simulated.</p>
<h2>The recommended pool, and its neighbours</h2>
{_table([_summary_row(label + (" (recommended)" if result is best else ""), result.summary)
         for label, result in by_size.items()], header)}
<h2>Back-pressure policies at {config.workers} workers</h2>
{_table([_summary_row(name, s) for name, s in policies.items()], header)}
<h2>Wait by task type (no starvation)</h2>
{_table(type_rows, ("task type", "jobs", "wait p50", "wait p99"))}
<h2>Shutdown at the busiest moment ({busiest:.4g} s), {grace_s:g} s grace period</h2>
{_table(shutdown_rows, ("policy", "exit after", "completed", "returned", "cancelled",
                        "still running", f"killed at {grace_s:g} s"))}
<h2>Sanity checks</h2><ul>{checks}</ul>
<h2>Charts</h2>{figures}
<p><small>Written by poolsim. The sweep is in sweep.csv, one row per configuration.</small></p>
</body></html>
"""
