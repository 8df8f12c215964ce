"""Enqueue and drain rates of the durable queue's SQLite store against Huey, persist-queue
and a raw sqlite3 floor.

Every system gets a fresh file in a temporary directory, WAL mode and the same
``synchronous`` setting (``--synchronous``, default NORMAL: poolsim's default, which
survives a process crash — kill -9 included — but may lose the last commits on power
loss; FULL fsyncs every commit and survives power loss too).

1. Enqueue: ``--jobs`` (20,000) no-op tasks, one producer thread, one transaction
   (one durable ``enqueue``) per task; rate = tasks / wall time.
2. Drain (end to end): ``--workers`` (2 and 4) worker *threads* in one process, each
   looping "take a task, run the no-op, acknowledge it" until the queue is empty;
   rate = tasks / wall time from the first take to the last acknowledgement.

   * poolsim Server (what the floors are checked on): the real ``Server`` with
     ``concurrency`` = workers and its defaults (acknowledgements batched every 5 ms or
     64 outcomes), a no-op handler; rate = tasks / wall time from ``start()`` until its
     statistics count every task completed (acknowledged in the store). End to end: the
     fetcher's leased claims (no more than the free places), the pool hand-off, the lease
     keeper, the acker's ``finish_many`` with a history row per attempt. A second row
     sets ``prefetch=concurrency`` (claims may run ahead of free threads by that many,
     so claims are bigger and a thread never waits for one); floors are printed for it
     too, but the exit status follows the default row.
   * poolsim backend (orientation): the store's calls alone, on bench threads —
     ``claim`` (limit ``--batch``) then ``finish`` per task, or ``finish_many`` per claim.
   * Huey (``SqliteStorage``): ``dequeue`` deletes the task as it takes it — no lease,
     no acknowledgement (a killed worker loses its task), so it does less work.
   * persist-queue (``SQLiteAckQueue``): ``get`` then ``ack``.
   * raw floor: per task one ``BEGIN IMMEDIATE`` transaction that claims the oldest
     pending row (``UPDATE … RETURNING``) and acknowledges it — the least any durable
     claim+ack can do, one WAL commit per job; threads serialised by a lock in-process
     as poolsim's are (without it they sleep in SQLite's busy handler), and the WAL
     checkpointed as rarely as poolsim's (``wal_autocheckpoint``), so neither trick
     counts in poolsim's favour.

Huey runs twice: at its own default (``synchronous=FULL``: an fsync per commit, as the
issue measured it) and at the bench's setting. Floors (exit 1 if one fails; run by hand
or via ``./dev bench``), for poolsim with claims of ``--batch`` and one acknowledgement
per task, at each worker count: drain >= 2x Huey's (at Huey's default) and >= half the
raw floor (at the same setting), for the poolsim Server row.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import persistqueue
from huey.storage import SqliteStorage  # type: ignore[import-untyped]

from poolsim.queue import Client, Outcome, Server, State, Task
from poolsim.queue.backends.sqlite import WAL_CHECKPOINT_PAGES, SQLiteBackend

DONE = Outcome(state=State.COMPLETED, status="completed")
FLOOR_HUEY, FLOOR_RAW = 2.0, 0.5
HUEY = "huey SqliteStorage, its default (FULL)"
HUEY_SAME = "huey SqliteStorage, same setting"
RAW = "raw sqlite3 floor"
SERVER = "poolsim Server (end to end)"
PREFETCH = "poolsim Server, prefetch=concurrency"


def noop() -> None:
    pass


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


def repeat(n: int, fn: Callable[[], object]) -> None:
    for _ in range(n):
        fn()


def timed(fn: Callable[[], None]) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


# -- the systems: each returns (enqueue seconds, drain seconds) ------------------------

def run_poolsim(path: Path, args: argparse.Namespace, workers: int, batch: int,
                batched_acks: bool) -> tuple[float, float]:
    url = f"sqlite:///{path}?synchronous={args.synchronous}"
    with Client(url) as client:
        task = Task("noop", {})
        enq = timed(lambda: repeat(args.jobs, lambda: client.enqueue(task)))
    db = SQLiteBackend(url)

    def work(n: int) -> int:
        name, done = f"bench:{n}", 0
        while tasks := db.claim(["default"], worker=name, now=time.time(), lease_s=60,
                                limit=batch):
            for _ in tasks:
                noop()
            if batched_acks:
                assert all(db.finish_many([(t.id, DONE) for t in tasks], worker=name,
                                          now=time.time()))
            else:
                for t in tasks:
                    assert db.finish(t.id, worker=name, now=time.time(), outcome=DONE)
            done += len(tasks)
        return done

    wall, total = drain(workers, work)
    db.close()
    assert total == args.jobs, total
    return enq, wall


def run_server(path: Path, args: argparse.Namespace, workers: int,
               prefetch: int = 0) -> tuple[float, float]:
    url = f"sqlite:///{path}?synchronous={args.synchronous}"
    with Client(url) as client:
        task = Task("noop", {})
        enq = timed(lambda: repeat(args.jobs, lambda: client.enqueue(task)))
    server = Server(url, concurrency=workers, prefetch=prefetch, name="bench")
    server.handler("noop")(lambda task: noop())
    began = time.perf_counter()
    server.start()
    while server.statistics().counts.get("completed", 0) < args.jobs:
        time.sleep(0.001)
    wall = time.perf_counter() - began
    stats = server.statistics()
    server.stop()
    print(f"    server: {stats.claims:,} claims, {stats.ack_flushes:,} ack flushes "
          f"({args.jobs / max(stats.claims, 1):.1f} and {args.jobs / max(stats.ack_flushes, 1):.1f}"
          " tasks each)", file=sys.stderr)
    return enq, wall


class HueyStorage(SqliteStorage):  # type: ignore[misc]
    """Huey's SQLite storage, at its default ``synchronous`` (FULL) or a given one."""

    synchronous: str | None = None

    def _create_connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection = super()._create_connection()
        if self.synchronous is not None:
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
        return conn


def run_huey(path: Path, args: argparse.Namespace, workers: int,
             synchronous: str | None) -> tuple[float, float]:
    HueyStorage.synchronous = synchronous
    storage = HueyStorage(name="bench", filename=str(path))
    data = b"\x80\x04N."  # a pickled None: the size of a tiny task message
    enq = timed(lambda: repeat(args.jobs, lambda: storage.enqueue(data)))

    def work(n: int) -> int:
        done = 0
        while storage.dequeue() is not None:
            noop()
            done += 1
        return done

    wall, total = drain(workers, work)
    storage.close()
    assert total == args.jobs, total
    return enq, wall


def run_persist_queue(path: Path, args: argparse.Namespace, workers: int) -> tuple[float, float]:
    class AckQueue(persistqueue.SQLiteAckQueue):
        def _new_db_connection(self, *a: Any, **k: Any) -> sqlite3.Connection:
            conn: sqlite3.Connection = super()._new_db_connection(*a, **k)
            conn.execute(f"PRAGMA synchronous={args.synchronous}")
            return conn

    queue = AckQueue(str(path), multithreading=True, auto_commit=True)
    enq = timed(lambda: repeat(args.jobs, lambda: queue.put({})))

    def work(n: int) -> int:
        done = 0
        while True:
            try:
                item = queue.get(block=False)
            except persistqueue.Empty:
                return done
            noop()
            queue.ack(item)
            done += 1

    wall, total = drain(workers, work)
    assert total == args.jobs, total
    return enq, wall


RAW_SCHEMA = ("CREATE TABLE jobs (id INTEGER PRIMARY KEY, state INTEGER NOT NULL, "
              "payload TEXT NOT NULL, worker TEXT); CREATE INDEX jobs_state ON jobs (state, id)")


def run_raw(path: Path, args: argparse.Namespace, workers: int) -> tuple[float, float]:
    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={args.synchronous}")
        conn.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")  # as poolsim's
        return conn

    conn = connect()
    conn.executescript(RAW_SCHEMA)

    def put() -> None:
        for _ in range(args.jobs):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO jobs (state, payload) VALUES (0, '{}')")
            conn.execute("COMMIT")

    enq = timed(put)
    lock = threading.Lock()

    def work(n: int) -> int:
        own, done = connect(), 0
        while True:
            with lock:
                own.execute("BEGIN IMMEDIATE")
                row = own.execute("UPDATE jobs SET state = 1, worker = ? WHERE id = (SELECT id "
                                  "FROM jobs WHERE state = 0 ORDER BY id LIMIT 1) RETURNING id",
                                  (f"w{n}",)).fetchone()
                if row is not None:
                    noop()
                    own.execute("UPDATE jobs SET state = 2 WHERE id = ?", row)
                own.execute("COMMIT")
            if row is None:
                own.close()
                return done
            done += 1

    wall, total = drain(workers, work)
    conn.close()
    assert total == args.jobs, total
    return enq, wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--batch", type=int, default=10, help="poolsim's claim limit")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--synchronous", default="NORMAL", choices=["NORMAL", "FULL"])
    args = parser.parse_args()
    systems: dict[str, Callable[[Path, int], tuple[float, float]]] = {
        SERVER: lambda p, w: run_server(p, args, w),
        PREFETCH: lambda p, w: run_server(p, args, w, prefetch=w),
        "poolsim backend, batch 1": lambda p, w: run_poolsim(p, args, w, 1, False),
        f"poolsim backend, batch {args.batch}": lambda p, w: run_poolsim(
            p, args, w, args.batch, False),
        f"poolsim backend, batch {args.batch}, acks batched": lambda p, w: run_poolsim(
            p, args, w, args.batch, True),
        HUEY: lambda p, w: run_huey(p, args, w, None),
        HUEY_SAME: lambda p, w: run_huey(p, args, w, args.synchronous),
        "persist-queue SQLiteAckQueue": lambda p, w: run_persist_queue(p, args, w),
        RAW: lambda p, w: run_raw(p, args, w),
    }
    began = time.perf_counter()
    enq: dict[str, list[float]] = {name: [] for name in systems}
    rate: dict[tuple[str, int], list[float]] = {}
    for r in range(args.rounds):
        for workers in args.workers:
            for name, run in systems.items():
                with tempfile.TemporaryDirectory() as tmp:
                    e, d = run(Path(tmp) / "jobs.db", workers)
                enq[name].append(args.jobs / e)
                rate.setdefault((name, workers), []).append(args.jobs / d)
                print(f"  round {r + 1}, {workers} workers, {name}: enqueue "
                      f"{args.jobs / e:,.0f}/s, drain {args.jobs / d:,.0f}/s", file=sys.stderr)
    med = {key: statistics.median(v) for key, v in rate.items()}
    print(f"\n{args.jobs:,} no-op tasks, synchronous={args.synchronous}, WAL, worker threads; "
          f"median of {args.rounds} round(s); rates in tasks/s")
    heads = "".join(f"{f'drain {w}w':>11}{'/huey':>7}{'/raw':>6}" for w in args.workers)
    print(f"{'system':40} {'enqueue':>9}{heads}")
    for name in systems:
        cells = "".join(f"{med[name, w]:11,.0f}{med[name, w] / med[HUEY, w]:7.2f}"
                        f"{med[name, w] / med[RAW, w]:6.2f}" for w in args.workers)
        print(f"{name:40} {statistics.median(enq[name]):9,.0f}{cells}")
    checks: list[tuple[str, bool, bool]] = []  # text, passed, counts for the exit status
    for row in (SERVER, PREFETCH):
        for w in args.workers:
            huey, raw = med[row, w] / med[HUEY, w], med[row, w] / med[RAW, w]
            checks += [(f"{w} workers: {row}/huey drain {huey:.2f} >= {FLOOR_HUEY}",
                        huey >= FLOOR_HUEY, row == SERVER),
                       (f"{w} workers: {row}/raw floor drain {raw:.2f} >= {FLOOR_RAW}",
                        raw >= FLOOR_RAW, row == SERVER)]
    print(f"\n({time.perf_counter() - began:.0f} s)")
    for text, ok, _ in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    return 0 if all(ok for _, ok, counts in checks if counts) else 1


if __name__ == "__main__":
    sys.exit(main())
