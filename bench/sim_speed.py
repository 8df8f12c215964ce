"""Simulation speed: poolsim's SimPy model and fast kernel against ``ciw`` on M/M/8, and a sweep.

1. Engines: an M/M/8 workload at rho = 0.9 (arrival rate 7.2/s, mean service
   1 s), ``--jobs`` (200,000) jobs, drawn once with
   ``numpy.random.default_rng(--seed)`` (inter-arrival gaps, then service
   times). The SAME times go to all three:
   - ``ciw`` (3.x, the ``bench`` extra): one node, 8 servers, infinite queue,
     FIFO; arrivals replay the gaps through ``ciw.dists.Sequential`` (then
     ``inf``, so no job follows the last), service times replay by customer id
     (ciw numbers customers 1, 2, ... in arrival order), and the run goes until
     every customer has completed (``simulate_until_max_customers(n,
     method="Complete")``). Timed: that call only; building the network and
     ``ciw.Simulation`` (which deep-copies the replayed lists) is left out, in
     ciw's favour. Arrival times are accumulated exactly as ciw does
     (``t + gap`` in Python floats), so every engine sees the same floats.
   - poolsim's SimPy model: ``simulate(trace, PoolConfig(workers=8,
     queue_size=None), engine="simpy")``;
   - poolsim's fast kernel: the same with ``engine="fast"``.
   The poolsim timings are whole ``simulate()`` calls: trace validation, the
   run, and building the jobs frame (``pandas``). For information, the table
   also times ``run_fast`` alone (the kernel's loop, no validation and no
   frame). Variants run interleaved in a rotating order for ``--rounds`` (3)
   rounds; the table shows the median. gc stays enabled, as users run it;
   ``gc s`` is the median time spent in gc during a run. ciw is first timed on
   a pilot of 10,000 jobs: if the full run would take longer than 3 minutes it
   is measured on the first 50,000 jobs instead (its jobs/s then extrapolated
   to the full trace; the output says so), and if all its rounds would take
   longer than that it runs once.
   Sanity: the three engines must agree. ciw customers are matched to trace
   jobs by id; the line prints every engine's mean wait (start - arrival over
   completed jobs), the largest per-job difference in wait from ciw, and the
   M/M/8 mean wait from Erlang C for reference (one 200,000-job run at
   rho = 0.9 has a ~7 % confidence half-width around it).
2. Sweep: ``sweep()`` of 100 configurations (workers 2..21 x queue_size 0, 10,
   100, 1000, unbounded; ``reject``) over a ``--sweep-jobs`` (100,000) job
   trace of the same workload, on the default executor (worker processes on
   all ``os.cpu_count()`` cores). Prints the median wall time over
   ``--rounds`` and the mean wall time per configuration. No floor.

Floors (the script exits 1 if one fails; it is no test, run it by hand or via
``./dev bench``):
  SimPy model: jobs/s >= 3 x ciw's jobs/s
  fast kernel: jobs/s >= 50 x ciw's jobs/s   (engine="fast", whole simulate() call)
  agreement:   mean waits within 1 % of ciw's (they should be identical)
"""

from __future__ import annotations

import argparse
import gc
import itertools
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import ciw
import numpy as np
import pandas as pd
from _common import GcTimer, verdict  # bench/ is the script directory

from poolsim import PoolConfig
from poolsim.sim.fast import run_fast
from poolsim.sim.model import simulate
from poolsim.sim.sweep import sweep
from poolsim.sim.theory import mmc

ARRIVAL_RATE, MEAN_SERVICE, WORKERS = 7.2, 1.0, 8
FLOOR_SIMPY, FLOOR_FAST, AGREE = 3.0, 50.0, 0.01
CIW_PILOT, CIW_FEWER, CIW_BUDGET_S = 10_000, 50_000, 180.0
SWEEP_WORKERS = range(2, 22)
SWEEP_QUEUES: list[int | None] = [0, 10, 100, 1000, None]


def workload(jobs: int, seed: int) -> tuple[list[float], list[float], list[float]]:
    """Inter-arrival gaps, arrival times (accumulated as ciw does) and service times."""
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / ARRIVAL_RATE, jobs).tolist()
    service = rng.exponential(MEAN_SERVICE, jobs).tolist()
    return gaps, list(itertools.accumulate(gaps)), service


class ReplayService(ciw.dists.Distribution):
    """Service times drawn in advance, looked up by ciw's customer id (1, 2, ... in arrival
    order), so each customer gets its own trace job's time whatever the order of service."""

    def __init__(self, values: list[float]) -> None:
        self.values = values

    def __repr__(self) -> str:
        return f"ReplayService({len(self.values)} values)"

    def sample(self, t: float | None = None, ind: Any = None) -> float:
        return float(self.values[ind.id_number - 1])


def run_ciw(gaps: list[float], service: list[float],
            gc_timer: GcTimer | None = None) -> tuple[float, float, Any]:
    """Seconds ciw takes to run every job of the trace to completion, seconds of that in gc
    (if timed), and the simulation."""
    network = ciw.create_network(
        arrival_distributions=[ciw.dists.Sequential([*gaps, math.inf])],
        service_distributions=[ReplayService(service)],
        number_of_servers=[WORKERS],  # queue capacity: infinite by default; FIFO by default
    )
    simulation = ciw.Simulation(network)
    gc.collect()  # every run starts from the same heap
    gc0 = gc_timer.total if gc_timer else 0.0
    t0 = time.perf_counter()
    simulation.simulate_until_max_customers(len(gaps), method="Complete")
    wall = time.perf_counter() - t0
    return wall, (gc_timer.total if gc_timer else 0.0) - gc0, simulation


def ciw_waits(simulation: Any, arrival: list[float]) -> tuple[np.ndarray, bool]:
    """Per-job wait from ciw's service records, indexed like the trace, and whether ciw's
    arrival dates equal the trace's float for float."""
    waits = np.full(len(arrival), np.nan)
    same_arrivals = True
    for record in simulation.get_all_records(only=["service"]):
        job = record.id_number - 1
        waits[job] = record.waiting_time
        same_arrivals &= record.arrival_date == arrival[job]
    return waits, same_arrivals


def engines(args: argparse.Namespace, gaps: list[float], arrival: list[float],
            service: list[float]) -> tuple[dict[str, float], bool]:
    """Time the engines; print the table and the sanity line. Returns the SimPy model's and
    the fast kernel's jobs/s as multiples of ciw's, and whether the engines agree."""
    n = args.jobs
    trace = pd.DataFrame({"arrival_s": arrival, "service_s": service})
    config = PoolConfig(workers=WORKERS, queue_size=None)
    notes = []

    pilot_n = min(n, CIW_PILOT)
    pilot_s, _, _ = run_ciw(gaps[:pilot_n], service[:pilot_n])
    estimate = pilot_s * n / pilot_n
    ciw_n = n if estimate <= CIW_BUDGET_S else min(n, CIW_FEWER)
    if ciw_n < n:
        notes.append(f"ciw: a full run would take ~{estimate:.0f} s (pilot {pilot_n:,} jobs in "
                     f"{pilot_s:.1f} s), so ciw ran the first {ciw_n:,} jobs only; its jobs/s "
                     f"is extrapolated to {n:,} jobs from that")
    ciw_rounds = args.rounds if estimate * ciw_n / n * args.rounds <= CIW_BUDGET_S else 1
    if ciw_rounds < args.rounds:
        notes.append(f"ciw: ran once (not {args.rounds} rounds): it is slow")

    gc_timer = GcTimer()
    last: dict[str, Any] = {}

    def timed(run: Callable[[], Any]) -> tuple[float, float, Any]:
        gc.collect()  # every run starts from the same heap
        gc0, t0 = gc_timer.total, time.perf_counter()
        result = run()
        return time.perf_counter() - t0, gc_timer.total - gc0, result

    def poolsim_run(engine: Any) -> Callable[[], tuple[float, float]]:
        def run() -> tuple[float, float]:
            wall, in_gc, last[engine] = timed(
                lambda: simulate(trace, config, seed=args.seed, engine=engine))
            return wall, in_gc
        return run

    def kernel_run() -> tuple[float, float]:
        wall, in_gc, _ = timed(lambda: run_fast(arrival, service, config, "threads"))
        return wall, in_gc

    def ciw_run() -> tuple[float, float]:
        last["ciw"] = None  # free the previous run's customers before timing the next
        wall, in_gc, last["ciw"] = run_ciw(gaps[:ciw_n], service[:ciw_n], gc_timer)
        return wall, in_gc

    variants: dict[str, Callable[[], tuple[float, float]]] = {
        "ciw": ciw_run,
        "poolsim SimPy model": poolsim_run("simpy"),
        "poolsim fast kernel": poolsim_run("fast"),
        "(info) run_fast loop only": kernel_run,
    }
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    gcs: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotate the order
            if name == "ciw" and r >= ciw_rounds:
                continue
            wall, in_gc = variants[name]()
            times[name].append(wall)
            gcs[name].append(in_gc)
        print(f"  round {r + 1}/{args.rounds}: "
              + "  ".join(f"{times[name][-1]:.2f}" for name in names), file=sys.stderr)

    rate = {name: (ciw_n if name == "ciw" else n) / statistics.median(times[name])
            for name in names}
    print(f"M/M/{WORKERS} at rho = {ARRIVAL_RATE * MEAN_SERVICE / WORKERS:g} "
          f"(arrivals {ARRIVAL_RATE:g}/s, mean service {MEAN_SERVICE:g} s), {n:,} jobs, "
          f"seed {args.seed}, median of {args.rounds} rounds"
          + (f" (ciw: {ciw_rounds})" if ciw_rounds < args.rounds else ""))
    print(f"{'engine':27} {'jobs':>8} {'median s':>9} {'min s':>6} {'gc s':>5} "
          f"{'jobs/s':>10} {'x ciw':>7}")
    for name in names:
        jobs = ciw_n if name == "ciw" else n
        print(f"{name:27} {jobs:8,} {statistics.median(times[name]):9.3f} "
              f"{min(times[name]):6.3f} {statistics.median(gcs[name]):5.2f} "
              f"{rate[name]:10,.0f} {rate[name] / rate['ciw']:7.1f}")
    for note in notes:
        print(f"note: {note}")

    # sanity: the same times in, the same waits out
    waits = {engine: (last[engine].jobs["start_s"] - last[engine].jobs["arrival_s"]).to_numpy(float)
             for engine in ("simpy", "fast")}
    completed = {engine: (last[engine].jobs["status"] == "completed").to_numpy()
                 for engine in ("simpy", "fast")}
    ciw_wait, same_arrivals = ciw_waits(last["ciw"], arrival[:ciw_n])
    means = {"ciw": float(np.nanmean(ciw_wait))}
    means.update({engine: float(waits[engine][:ciw_n][completed[engine][:ciw_n]].mean())
                  for engine in waits})
    diffs = {engine: float(np.nanmax(np.abs(waits[engine][:ciw_n] - ciw_wait)))
             for engine in waits}
    served = {"ciw": int(np.count_nonzero(~np.isnan(ciw_wait)))}
    served.update({engine: int(completed[engine][:ciw_n].sum()) for engine in waits})
    agree = all(abs(means[e] - means["ciw"]) <= AGREE * means["ciw"] for e in waits) and (
        served["simpy"] == served["fast"] == served["ciw"] == ciw_n)
    theory = mmc(ARRIVAL_RATE, MEAN_SERVICE, WORKERS).mean_wait
    scope = "all jobs" if ciw_n == n else f"the first {ciw_n:,} jobs (ciw's run)"
    print(f"sanity, {scope}: completed ciw/simpy/fast {served['ciw']:,}/{served['simpy']:,}/"
          f"{served['fast']:,}; mean wait ciw {means['ciw']:.6f} s, simpy {means['simpy']:.6f} s, "
          f"fast {means['fast']:.6f} s (Erlang C: {theory:.4f} s); max |wait - ciw wait| per job: "
          f"simpy {diffs['simpy']:.3g} s, fast {diffs['fast']:.3g} s; ciw arrival times "
          f"{'identical to' if same_arrivals else 'DIFFER from'} the trace's")
    return {"simpy": rate["poolsim SimPy model"] / rate["ciw"],
            "fast": rate["poolsim fast kernel"] / rate["ciw"]}, agree


def sweep_speed(args: argparse.Namespace) -> None:
    _, arrival, service = workload(args.sweep_jobs, args.seed)
    trace = pd.DataFrame({"arrival_s": arrival, "service_s": service})
    configs = len(SWEEP_WORKERS) * len(SWEEP_QUEUES)
    walls, grid = [], pd.DataFrame()
    for r in range(args.rounds):
        gc.collect()
        t0 = time.perf_counter()
        grid = sweep(trace, workers=SWEEP_WORKERS, queue_size=SWEEP_QUEUES, seed=args.seed,
                     progress=False)
        walls.append(time.perf_counter() - t0)
        print(f"  sweep round {r + 1}/{args.rounds}: {walls[-1]:.2f}", file=sys.stderr)
    wall = statistics.median(walls)
    cores = os.cpu_count() or 1
    engines_used = ", ".join(f"{engine} x{count}"
                             for engine, count in grid["engine"].value_counts().items())
    print(f"\nsweep: {len(grid)} configurations (workers {SWEEP_WORKERS.start}.."
          f"{SWEEP_WORKERS.stop - 1} x queue_size {SWEEP_QUEUES}, reject) over "
          f"{args.sweep_jobs:,} jobs, {cores} cores, median of {args.rounds} rounds")
    print(f"  wall {wall:.2f} s (min {min(walls):.2f} s); per configuration "
          f"{wall / configs * 1000:.0f} ms wall, {wall / configs * cores * 1000:.0f} ms core "
          f"time; {configs * args.sweep_jobs / wall:,.0f} simulated jobs/s; "
          f"engines: {engines_used}")
    if len(grid) != configs:
        raise SystemExit(f"sweep returned {len(grid)} rows, not {configs}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sweep-jobs", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    began = time.perf_counter()
    gaps, arrival, service = workload(args.jobs, args.seed)
    ratio, agree = engines(args, gaps, arrival, service)
    del gaps, arrival, service
    sweep_speed(args)
    checks = [
        (f"SimPy model: {ratio['simpy']:.1f}x ciw's jobs/s >= {FLOOR_SIMPY:g}x",
         ratio["simpy"] >= FLOOR_SIMPY),
        (f"fast kernel: {ratio['fast']:.1f}x ciw's jobs/s >= {FLOOR_FAST:g}x",
         ratio["fast"] >= FLOOR_FAST),
        (f"agreement:   every engine completes the same jobs, mean waits within "
         f"{AGREE:.0%} of ciw's", agree),
    ]
    return verdict(checks, began)


if __name__ == "__main__":
    sys.exit(main())
