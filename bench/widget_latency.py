"""Dashboard latency: from a control's new value to the finished redraw, on a 100,000-job trace.

Trace: ``poisson(40/s, n=--jobs (100,000))`` with lognormal service times (mean
0.2 s, cv 1.5, seed ``--seed``): 8 busy workers on average. The dashboard
(``poolsim.widgets.dashboard``, ``slo=1.0``) starts at ``PoolConfig(workers=10,
queue_size=100)``. Outside a kernel the callback is synchronous, so the time of
``control.value = new`` is the time from slider release to redraw finished:
simulate (``simulate()``, the jobs frame, the summary, the queue-depth series
and its decimation), redraw the figure's artists, render the PNG, and set the
image, summary and status widgets. What a browser then takes to show the
PNG is not included.

Each round builds a fresh dashboard (empty cache; its construction, the first
draw, is timed for information) and then moves one control at a time:

- misses: a sequence of new settings over every control (workers, queue size,
  job timeout, load 0.5-1.0, back-pressure ``drop_oldest``), all in the fast
  kernel's subset (``reject``/``drop_oldest``, shutdown off), so each
  simulates the 100,000 jobs or fewer;
- for information, no floor: load 1.2 and 1.5, which simulate 120,000 and
  150,000 jobs (row ``miss, > N jobs``);
- hits: the workers slider back and forth between two settings already seen;
- for information, no floor: settings that need the SimPy engine
  (``block``, ``caller_runs``, a ``drain`` shutdown mid-trace).

Each change is classified as a hit or a miss by the dashboard's own
``cache_info()``, not by assumption. ``--rounds`` (3) rounds; the table shows
median, p95 and max wall time per class; the median CPU time
(``time.process_time``); the median and largest time spent in the garbage
collector during a change (from ``gc.callbacks``; gc stays enabled, as users
run it: a full collection now and then is part of what they wait for); and
the median simulate / draw / render parts (``Dashboard.timings``). The floors
are on wall time, what a user waits for; the load average is printed,
because on a busy machine wall time includes waiting for a CPU.

Floors (the script exits 1 if one fails; it is no test, run it by hand or via
``./dev bench``):
  cache misses (fast kernel): median <= 0.5 s and p95 <= 0.5 s
  cache hits:                 median <= 0.5 s and p95 <= 0.5 s
  every change was redrawn:   the result on show has the controls' settings
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from typing import Any

import numpy as np
from _common import GcTimer, verdict  # bench/ is the script directory

from poolsim import PoolConfig, ServiceTime, poisson
from poolsim.widgets import Dashboard, dashboard

FLOOR_S = 0.5
Change = tuple[str, Any]
Samples = dict[str, list[dict[str, float]]]


def p95(values: list[float]) -> float:
    return float(np.percentile(values, 95))


def timeout_at(dash: Dashboard, percentile: str) -> float:
    """The job-timeout slider's value labelled with ``percentile`` ("p99")."""
    return float(next(v for label, v in dash.controls["job_timeout"].options
                      if label.endswith(f"({percentile})")))


def miss_sequence(dash: Dashboard) -> list[Change]:
    return [("workers", 8), ("workers", 9), ("workers", 12), ("workers", 16),
            ("queue_size", 0), ("queue_size", 10), ("queue_size", 1000),
            ("queue_size", math.inf),
            ("job_timeout", timeout_at(dash, "p99")), ("job_timeout", timeout_at(dash, "p95")),
            ("load", 0.5), ("load", 0.8), ("load", 1.0),
            ("backpressure", "drop_oldest"), ("workers", 10), ("workers", 14),
            ("queue_size", 100), ("job_timeout", math.inf),
            ("load", 1.2), ("load", 1.5), ("workers", 12), ("load", 1.0)]


def info_sequence(dash: Dashboard) -> list[Change]:
    options = dash.controls["shutdown_at"].options
    return [("backpressure", "block"), ("workers", 9), ("workers", 11),
            ("backpressure", "caller_runs"), ("backpressure", "reject"),
            ("shutdown", "drain"), ("shutdown_at", options[len(options) // 2][1]),
            ("workers", 12)]


class Timer:
    """Times changes on one dashboard and files each under its kind."""

    def __init__(self, dash: Dashboard, samples: Samples, jobs: int, gc_timer: GcTimer) -> None:
        self.dash, self.samples, self.jobs, self.gc, self.stale = dash, samples, jobs, gc_timer, 0

    def change(self, name: str, value: Any, info: bool = False) -> None:
        dash = self.dash
        misses, in_gc = dash.cache_info().misses, self.gc.total
        began, cpu = time.perf_counter(), time.process_time()
        dash.controls[name].value = value
        wall, cpu = time.perf_counter() - began, time.process_time() - cpu
        result = dash.last_result
        if info:
            kind = f"{result.engine} (info)"
        else:
            kind = "miss" if dash.cache_info().misses > misses else "hit"
            if len(result.trace) > self.jobs:
                kind += f", > {self.jobs:,} jobs (info)"
        self.samples.setdefault(kind, []).append(
            {**dash.timings, "wall": wall, "cpu": cpu, "gc": self.gc.total - in_gc})
        wanted = dash.config
        if dash.error is not None or result.config.replace(shutdown=wanted.shutdown) != wanted:
            self.stale += 1


def one_round(trace: Any, args: argparse.Namespace, samples: Samples,
              gc_timer: GcTimer) -> tuple[float, int]:
    began = time.perf_counter()
    dash = dashboard(trace, config=PoolConfig(workers=10, queue_size=100), seed=args.seed,
                     slo=1.0)
    built = time.perf_counter() - began
    timer = Timer(dash, samples, args.jobs, gc_timer)
    for name, value in miss_sequence(dash):
        timer.change(name, value)
    for i in range(args.hits):  # workers 14 and 12, the rest as last set: both cached
        timer.change("workers", 14 if i % 2 == 0 else 12)
    for name, value in info_sequence(dash):
        timer.change(name, value, info=True)
    dash.close()  # else ipywidgets keeps it, and its cache, alive
    return built, timer.stale


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hits", type=int, default=10, help="hit changes per round")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    began = time.perf_counter()
    trace = poisson(40.0, n=args.jobs, service=ServiceTime("lognormal", mean=0.2, cv=1.5),
                    seed=args.seed)
    samples: Samples = {}
    gc_timer = GcTimer()
    builds, stale = [], 0
    for r in range(args.rounds):
        built, not_shown = one_round(trace, args, samples, gc_timer)
        builds.append(built)
        stale += not_shown
        print(f"  round {r + 1}/{args.rounds}: built in {built:.2f} s, "
              + ", ".join(f"{len(v)} {k}" for k, v in samples.items()), file=sys.stderr)

    load, cpus = os.getloadavg()[0], os.cpu_count() or 1
    print(f"\n{args.jobs:,}-job trace, {args.rounds} rounds: seconds from setting a control's "
          "value until the redraw finished")
    print(f"load average {load:.1f} on {cpus} CPUs"
          + (": the machine is busy, wall times include waiting for a CPU" if load > cpus
             else ""))
    print(f"{'change':28} {'n':>3} {'median':>6} {'p95':>6} {'max':>6} | {'cpu':>5} "
          f"{'gc':>5} {'gc max':>6} | {'simulate':>8} {'draw':>5} {'render':>6}")
    print(f"{'build (info)':28} {len(builds):3} {statistics.median(builds):6.3f} "
          f"{p95(builds):6.3f} {max(builds):6.3f} |")
    order = ["miss", "hit", f"miss, > {args.jobs:,} jobs (info)", "fast (info)", "simpy (info)"]
    for kind in order + sorted(set(samples) - set(order)):
        rows = samples.get(kind, [])
        if not rows:
            continue
        wall = [row["wall"] for row in rows]
        med = {key: statistics.median(row[key] for row in rows)
               for key in ("cpu", "gc", "simulate", "draw", "render")}
        print(f"{kind:28} {len(rows):3} {statistics.median(wall):6.3f} {p95(wall):6.3f} "
              f"{max(wall):6.3f} | {med['cpu']:5.3f} {med['gc']:5.3f} "
              f"{max(row['gc'] for row in rows):6.3f} | {med['simulate']:8.3f} "
              f"{med['draw']:5.3f} {med['render']:6.3f}")

    checks = []
    for kind, label in (("miss", "cache misses (fast kernel)"), ("hit", "cache hits")):
        wall = [row["wall"] for row in samples.get(kind, [])]
        if not wall:
            checks.append((f"{label}: none measured", False))
            continue
        median, high = statistics.median(wall), p95(wall)
        checks.append((f"{label}: median {median:.3f} s, p95 {high:.3f} s <= {FLOOR_S} s "
                       f"({len(wall)} changes)", median <= FLOOR_S and high <= FLOOR_S))
    changes = sum(len(rows) for rows in samples.values())
    checks.append((f"every change was redrawn: {changes - stale}/{changes} show the controls' "
                   "settings", stale == 0))
    return verdict(checks, began)


if __name__ == "__main__":
    sys.exit(main())
