"""Per-job overhead and peak memory of ``poolsim.WorkerPool`` against ``ThreadPoolExecutor``.

1. Throughput: ``--jobs`` (200,000) no-op jobs through each pool with the same
   ``--workers`` (4); wall time from the first ``submit`` until every future is
   done, pool start-up and shutdown excluded. Variants: the executor, WorkerPool
   with metrics off (``registry=None``) and on (a fresh ``CollectorRegistry``),
   both unbounded (``queue_size=None``) so nothing is rejected, and, for
   information, bounded (``queue_size=1000``, ``block``, no block timeout).
   The variants run interleaved, in a rotating order, for ``--rounds`` (5)
   rounds; the table shows the median. gc stays enabled, as users run it, and it matters: 200k
   live futures trigger a dozen full collections, often half the wall time or
   more, and the same for both pools, which pulls ratios towards 1. ``gc s`` is
   the median time spent in gc during a run (from ``gc.callbacks``),
   ``wall-gc s`` the median of wall time minus it: the pools' own cost.
2. Memory: ``--memory-jobs`` (1,000,000) submissions of a job that blocks on a
   ``threading.Event`` until the end, futures discarded (a fire-and-forget
   submitter). WorkerPool with ``queue_size=1000, backpressure="reject"``
   (``QueueFull`` caught) against the executor's unbounded queue. Peak
   ``tracemalloc`` memory (MiB above the phase's start) is printed after 10%,
   50% and 100% of the submissions, with RSS growth (which includes
   tracemalloc's own bookkeeping).

Floors (the script exits 1 if one fails; it is no test, run it by hand or via
``./dev bench``):
  metrics off: poolsim/executor median time <= 1.1
  metrics on:  poolsim/executor median time <= 1.5
  memory:      the bounded pool's peak stays flat: growth from 10% to 100% of
               the submissions < 1 MiB
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from _common import GcTimer, verdict  # bench/ is the script directory
from prometheus_client import CollectorRegistry

from poolsim import QueueFull, WorkerPool

MiB = 2**20
FLOOR_OFF, FLOOR_ON, FLAT_MIB = 1.1, 1.5, 1.0


def noop() -> None:
    pass


def timed(submit: Callable[[], Future[None]], jobs: int, gc_timer: GcTimer) -> tuple[float, float]:
    """Wall and gc seconds from the first submit until all ``jobs`` futures are done."""
    gc.collect()  # every run starts from the same heap
    gc0, t0 = gc_timer.total, time.perf_counter()
    futures = [submit() for _ in range(jobs)]
    for future in futures:
        future.result()
    return time.perf_counter() - t0, gc_timer.total - gc0


def run_executor(workers: int, jobs: int, gc_timer: GcTimer) -> tuple[float, float]:
    with ThreadPoolExecutor(max_workers=workers) as executor:
        return timed(lambda: executor.submit(noop), jobs, gc_timer)


def run_pool(workers: int, jobs: int, gc_timer: GcTimer, **options: Any) -> tuple[float, float]:
    pool = WorkerPool(workers=workers, **options)
    try:
        return timed(lambda: pool.submit(noop), jobs, gc_timer)
    finally:
        pool.shutdown("drain")


def throughput(args: argparse.Namespace) -> dict[str, float]:
    variants: dict[str, Callable[[GcTimer], tuple[float, float]]] = {
        "executor": lambda g: run_executor(args.workers, args.jobs, g),
        "poolsim, metrics off": lambda g: run_pool(args.workers, args.jobs, g, queue_size=None),
        "poolsim, metrics on": lambda g: run_pool(args.workers, args.jobs, g, queue_size=None,
                                                  registry=CollectorRegistry()),
        "poolsim, block q=1000 (info)": lambda g: run_pool(
            args.workers, args.jobs, g, queue_size=1000, backpressure="block",
            block_timeout=None),
    }
    names, gc_timer = list(variants), GcTimer()
    times: dict[str, list[float]] = {name: [] for name in names}
    gcs: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotate the order
            wall, in_gc = variants[name](gc_timer)
            times[name].append(wall)
            gcs[name].append(in_gc)
        print(f"  round {r + 1}/{args.rounds}: "
              + "  ".join(f"{times[n][-1]:.2f}" for n in names), file=sys.stderr)
    base = statistics.median(times["executor"])
    print(f"\n{args.jobs:,} no-op jobs, {args.workers} workers, median of {args.rounds} rounds")
    print(f"{'variant':30} {'median s':>9} {'min s':>6} {'gc s':>5} {'wall-gc s':>9} "
          f"{'jobs/s':>8} {'/executor':>9}")
    medians = {}
    for name in names:
        medians[name] = median = statistics.median(times[name])
        in_gc = statistics.median(gcs[name])
        no_gc = statistics.median(t - g for t, g in zip(times[name], gcs[name], strict=True))
        print(f"{name:30} {median:9.2f} {min(times[name]):6.2f} {in_gc:5.2f} {no_gc:9.2f} "
              f"{args.jobs / median:8,.0f} {median / base:9.2f}")
    return {"off": medians["poolsim, metrics off"] / base,
            "on": medians["poolsim, metrics on"] / base}


def rss() -> int:
    """Resident set size now, in bytes (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def fill(submit: Callable[[], object], jobs: int) -> tuple[list[float], float, int]:
    """Submit ``jobs`` times; peak MiB at 10/50/100%, RSS MiB growth, and how many were refused."""
    peaks, refused, done = [], 0, 0
    rss0 = rss()
    tracemalloc.start()
    for mark in checkpoints(jobs):
        for _ in range(mark - done):
            try:
                submit()  # the future is dropped: a fire-and-forget submitter
            except QueueFull:
                refused += 1
        done = mark
        peaks.append(tracemalloc.get_traced_memory()[1] / MiB)
    tracemalloc.stop()
    return peaks, (rss() - rss0) / MiB, refused


def checkpoints(jobs: int) -> tuple[int, int, int]:
    return max(1, jobs // 10), max(1, jobs // 2), jobs


def memory(args: argparse.Namespace) -> float:
    n = args.memory_jobs
    release = threading.Event()
    pool = WorkerPool(workers=args.workers, queue_size=1000, backpressure="reject")
    try:
        pool_peaks, pool_rss, refused = fill(lambda: pool.submit(release.wait), n)
    finally:
        release.set()
        pool.shutdown("drain")
    gc.collect()
    release = threading.Event()
    executor = ThreadPoolExecutor(max_workers=args.workers)
    try:
        ex_peaks, ex_rss, _ = fill(lambda: executor.submit(release.wait), n)
    finally:
        release.set()
        executor.shutdown(wait=True, cancel_futures=True)
    print(f"\n{n:,} submissions of a blocking job, {args.workers} workers "
          f"(poolsim: queue_size=1000, reject; {refused:,} refused)")
    print(f"{'peak MiB after':30} " + " ".join(f"{m:>9,}" for m in checkpoints(n))
          + f" {'RSS +MiB':>9}")
    for name, peaks, grown in (("poolsim, reject q=1000", pool_peaks, pool_rss),
                               ("executor, unbounded", ex_peaks, ex_rss)):
        print(f"{name:30} " + " ".join(f"{p:9.2f}" for p in peaks) + f" {grown:9.1f}")
    print(f"{'poolsim/executor peak':30} {pool_peaks[-1] / ex_peaks[-1]:9.4f}")
    return pool_peaks[-1] - pool_peaks[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--memory-jobs", type=int, default=1_000_000)
    args = parser.parse_args()
    began = time.perf_counter()
    ratio = throughput(args)
    growth = memory(args)
    checks = [
        (f"metrics off: poolsim/executor {ratio['off']:.2f} <= {FLOOR_OFF}",
         ratio["off"] <= FLOOR_OFF),
        (f"metrics on:  poolsim/executor {ratio['on']:.2f} <= {FLOOR_ON}", ratio["on"] <= FLOOR_ON),
        (f"memory flat: poolsim peak grew {growth:.2f} MiB from 10% to 100% < {FLAT_MIB}",
         growth < FLAT_MIB),
    ]
    return verdict(checks, began)


if __name__ == "__main__":
    sys.exit(main())
