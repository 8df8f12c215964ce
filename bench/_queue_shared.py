"""What the two queue columns share (``queue_throughput.py``'s SQLite column and
``_queue_redis.py``'s Redis column): the no-op, the threaded drain, the timers, and
poolsim's two rows that do not care which store the URL names — the backend alone and the
real ``Server``.

A helper module (``./dev bench`` does not run it on its own). Not named ``_queue``: the
script's directory comes first on ``sys.path``, so a ``bench/_queue.py`` would shadow
CPython's ``_queue`` extension and ``queue.SimpleQueue`` would fall back to pure Python.

Every ``run_*`` function returns ``(enqueue_seconds, drain_seconds)``: it enqueues ``jobs``
no-op tasks with ``Client.enqueue``, one call per task from one producer, on a store the
caller made fresh (a new SQLite file, a FLUSHALLed Redis), then drains them.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from poolsim.queue import Client, Outcome, Server, State, Task, open_backend

DONE = Outcome(state=State.COMPLETED, status="completed")


def noop() -> None:
    """The no-op every system runs (RQ imports it by name: ``<this module>.noop``)."""


def drain(workers: int, work: Callable[[int], int]) -> tuple[float, int]:
    """Run ``work(worker_number)`` (returns tasks done) on ``workers`` threads; wall, total."""
    start, done = threading.Barrier(workers + 1), [0] * workers

    def run(n: int) -> None:
        start.wait()
        done[n] = work(n)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(workers)]
    for t in threads:
        t.start()
    start.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - began, sum(done)


def timed(fn: Callable[[], object]) -> float:
    """Seconds ``fn()`` took."""
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def each(jobs: int, fn: Callable[[], object]) -> Callable[[], None]:
    """A function that calls ``fn()`` ``jobs`` times."""
    def run() -> None:
        for _ in range(jobs):
            fn()
    return run


def enqueue_noops(url: str, jobs: int) -> float:
    """Enqueue ``jobs`` no-op tasks, one ``Client.enqueue`` each; seconds taken."""
    with Client(url) as client:
        task = Task("noop", {})
        return timed(each(jobs, lambda: client.enqueue(task)))


def run_backend(url: str, jobs: int, workers: int, batch: int,
                batched_acks: bool) -> tuple[float, float]:
    """Orientation: the store's calls alone, on bench threads — ``claim`` (limit ``batch``,
    60 s lease) then ``finish`` per task, or one ``finish_many`` per claim when
    ``batched_acks``; each acknowledgement with its claim's lease token. No server, no
    pool, no lease keeper."""
    enq = enqueue_noops(url, jobs)
    store = open_backend(url)

    def work(n: int) -> int:
        name, done = f"bench:{n}", 0
        while tasks := store.claim(["default"], worker=name, now=time.time(), lease_s=60,
                                   limit=batch):
            for _ in tasks:
                noop()
            if batched_acks:
                assert all(store.finish_many([(t.id, DONE) for t in tasks], worker=name,
                                             now=time.time(),
                                             leases=[t.lease or "" for t in tasks]))
            else:
                for t in tasks:
                    assert store.finish(t.id, worker=name, now=time.time(), outcome=DONE,
                                        lease=t.lease)
            done += len(tasks)
        return done

    wall, total = drain(workers, work)
    store.close()
    assert total == jobs, total
    return enq, wall


def run_server(url: str, jobs: int, workers: int,
               prefetch: int | None = None) -> tuple[float, float]:
    """End to end, what the floors are checked on: the real ``Server(url,
    concurrency=workers)`` with its defaults (``prefetch`` None: the Server's default) and a
    no-op handler; rate = tasks / wall time from ``start()`` until its statistics count
    every task completed (acknowledged in the store). Leased claims with tokens, the
    hand-off to the pool's threads, the lease keeper, batched acknowledgements with a
    history row per attempt. Prints the claim and ack-flush counts to stderr."""
    enq = enqueue_noops(url, jobs)
    server = Server(url, concurrency=workers, prefetch=prefetch, name="bench")
    server.handler("noop")(lambda task: noop())
    began = time.perf_counter()
    server.start()
    while server.statistics().counts.get("completed", 0) < jobs:
        time.sleep(0.001)
    wall = time.perf_counter() - began
    stats = server.statistics()
    server.stop()
    assert stats.counts.get("completed", 0) == jobs, stats.counts
    print(f"    server: {stats.claims:,} claims, {stats.ack_flushes:,} ack flushes "
          f"({jobs / max(stats.claims, 1):.1f} and {jobs / max(stats.ack_flushes, 1):.1f}"
          " tasks each)", file=sys.stderr)
    return enq, wall


def drain_huey_storage(storage: Any, jobs: int, workers: int) -> tuple[float, float]:
    """Huey's storage alone (SQLite or Redis): ``jobs`` tiny messages enqueued one call
    each, then ``workers`` threads looping ``dequeue()`` until it is empty. A dequeue
    deletes the message: no lease, no acknowledgement (a killed worker loses its task)."""
    data = b"\x80\x04N."  # a pickled None: the size of a tiny task message
    enq = timed(each(jobs, lambda: storage.enqueue(data)))

    def work(n: int) -> int:
        done = 0
        while storage.dequeue() is not None:
            noop()
            done += 1
        return done

    wall, total = drain(workers, work)
    assert total == jobs, total
    return enq, wall
