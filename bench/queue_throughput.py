"""Enqueue and drain rates of the durable queue's SQLite and Redis stores against peers.

SQLite against Huey, persist-queue and a raw sqlite3 floor; Redis against Huey, RQ, arq
and a raw redis-py floor. ``--stores`` picks the columns (default both). What both share
(the no-op, the threaded drain, poolsim's ``Server`` and backend-alone rows, which take
any store's URL) is in ``_queue_shared.py``; the Redis column's server and peers in
``_queue_redis.py``. In both columns:

1. Enqueue: ``--jobs`` (20,000) no-op tasks, one producer thread, one durable call (for
   SQLite one transaction) per task; rate = tasks / wall time.
2. Drain (end to end): ``--workers`` (2 and 4) worker *threads* in one process (RQ: worker
   processes), each looping "take a task, run the no-op, acknowledge it" until the queue
   is empty; rate = tasks / wall time from the first take to the last acknowledgement.

poolsim's rows, the same code on either store:

* poolsim Server (what the floors are checked on): the real ``Server`` with
  ``concurrency`` = workers and its defaults (``prefetch`` = 4 x concurrency: claims once
  half the prefetched places are free; acknowledgements batched every 5 ms or 64
  outcomes), a no-op handler; rate = tasks / wall time from ``start()`` until its
  statistics count every task completed (acknowledged in the store). End to end: the
  fetcher's leased claims (no more than the free places), the hand-off to the pool's
  threads, the lease keeper, the acker's ``finish_many`` with a history row per attempt.
  A second row sets ``prefetch=0`` (claims only for free threads, one claim per finished
  task when busy); floors are printed for it too, but the exit status follows the
  default row.
* poolsim backend (orientation): the store's calls alone, on bench threads — ``claim``
  (limit ``--batch``) then ``finish`` per task, or ``finish_many`` per claim.

SQLite column. Every system gets a fresh file in a temporary directory, WAL mode and the
same ``synchronous`` setting (``--synchronous``, default NORMAL: poolsim's default, which
survives a process crash — kill -9 included — but may lose the last commits on power
loss; FULL fsyncs every commit and survives power loss too).

* Huey (``SqliteStorage``): ``dequeue`` deletes the task as it takes it — no lease,
  no acknowledgement (a killed worker loses its task), so it does less work. It runs
  twice: at its own default (``synchronous=FULL``: an fsync per commit, as the issue
  measured it) and at the bench's setting.
* persist-queue (``SQLiteAckQueue``): ``get`` then ``ack``.
* raw floor: per task one ``BEGIN IMMEDIATE`` transaction that claims the oldest
  pending row (``UPDATE … RETURNING``) and acknowledges it — the least any durable
  claim+ack can do, one WAL commit per job; threads serialised by a lock in-process
  as poolsim's are (without it they sleep in SQLite's busy handler), and the WAL
  checkpointed as rarely as poolsim's (``wal_autocheckpoint``), so neither trick
  counts in poolsim's favour.

Redis column. One private ``redis-server`` for the whole column (a free loopback port, a
temporary directory, never the machine's Redis), no persistence (``--save ""
--appendonly no``), FLUSHALLed before every system. What each peer does not guarantee:

* Huey, ``RedisHuey`` tasks (the floor's row): Huey's task path — a task of the no-op
  enqueued per job, each thread looping ``dequeue`` (``RPOP``) then ``execute`` as its
  consumer does (the issue's ~3.8k/s orientation). The pop deletes the job: no lease, no
  acknowledgement (a killed worker loses its task).
* Huey ``RedisStorage`` alone: ``enqueue``/``dequeue`` of a tiny message — printed for
  orientation only: one round trip per job (an ``RPOP`` without lease) is faster than
  any leased queue's floor.
* RQ (``SimpleWorker``, burst, worker processes): the started/finished registries and a
  result per job; a worker that dies leaves its job to be moved to *failed*, not retried.
* arq (``Worker``, burst, polling every 50 ms, 10 jobs in flight each): an expiring
  in-progress key as its lease and a result kept an hour; workers polling the same ids
  collide.
* raw floor: ``LMOVE pending → processing`` then ``LREM processing`` per job — the least a
  reliable list queue does (two round trips), no lease expiry, retries or history.

Floors (exit 1 if one fails; run by hand or via ``./dev bench``), for the poolsim Server
row at its defaults, at each worker count: SQLite drain >= 2x Huey's (at Huey's default)
and >= half the raw floor (at the same setting); Redis drain >= 3x arq, >= 1x Huey's
Redis (the ``RedisHuey`` tasks row) and >= half the raw ``LMOVE``+``LREM`` floor.
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

import _queue_redis as qr  # the Redis column (bench/ is on sys.path when this runs)
import persistqueue
from _queue_shared import drain, drain_huey_storage, each, noop, run_backend, run_server, timed
from huey.storage import SqliteStorage  # type: ignore[import-untyped]

from poolsim.queue.backends.sqlite import WAL_CHECKPOINT_PAGES

FLOOR_HUEY, FLOOR_RAW = 2.0, 0.5
HUEY = "huey SqliteStorage, its default (FULL)"
HUEY_SAME = "huey SqliteStorage, same setting"
RAW = "raw sqlite3 floor"
SERVER = "poolsim Server (end to end)"
PREFETCH = "poolsim Server, prefetch=0"


# -- the systems: each returns (enqueue seconds, drain seconds) ------------------------

def sqlite_url(path: Path, args: argparse.Namespace) -> str:
    return f"sqlite:///{path}?synchronous={args.synchronous}"


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
    try:
        return drain_huey_storage(storage, args.jobs, workers)
    finally:
        storage.close()


def run_persist_queue(path: Path, args: argparse.Namespace, workers: int) -> tuple[float, float]:
    class AckQueue(persistqueue.SQLiteAckQueue):
        def _new_db_connection(self, *a: Any, **k: Any) -> sqlite3.Connection:
            conn: sqlite3.Connection = super()._new_db_connection(*a, **k)
            conn.execute(f"PRAGMA synchronous={args.synchronous}")
            return conn

    queue = AckQueue(str(path), multithreading=True, auto_commit=True)
    enq = timed(each(args.jobs, lambda: queue.put({})))

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


def measure(systems: dict[str, Callable[[int], tuple[float, float]]], args: argparse.Namespace,
            label: str) -> tuple[dict[str, float], dict[tuple[str, int], float]]:
    """Run every system ``--rounds`` times at each worker count: median enqueue rates by
    system, median drain rates by (system, workers)."""
    enq: dict[str, list[float]] = {name: [] for name in systems}
    rate: dict[tuple[str, int], list[float]] = {}
    for r in range(args.rounds):
        for workers in args.workers:
            for name, run in systems.items():
                e, d = run(workers)
                enq[name].append(args.jobs / e)
                rate.setdefault((name, workers), []).append(args.jobs / d)
                print(f"  {label}, round {r + 1}, {workers} workers, {name}: enqueue "
                      f"{args.jobs / e:,.0f}/s, drain {args.jobs / d:,.0f}/s", file=sys.stderr)
    return ({name: statistics.median(v) for name, v in enq.items()},
            {key: statistics.median(v) for key, v in rate.items()})


def table(title: str, enq: dict[str, float], med: dict[tuple[str, int], float],
          workers: list[int], peers: list[tuple[str, str]]) -> None:
    """Print one column's table: enqueue rate, then per worker count the drain rate and
    its ratio to each peer (``(heading, row)``)."""
    print(f"\n{title}")
    heads = "".join(f"{f'drain {w}w':>11}" + "".join(f"{h:>7}" for h, _ in peers)
                    for w in workers)
    print(f"{'system':44} {'enqueue':>9}{heads}")
    for name in enq:
        cells = "".join(f"{med[name, w]:11,.0f}" + "".join(
            f"{med[name, w] / med[row, w]:7.2f}" for _, row in peers) for w in workers)
        print(f"{name:44} {enq[name]:9,.0f}{cells}")


def in_tmp(run: Callable[[Path], tuple[float, float]]) -> tuple[float, float]:
    """Run a SQLite system on a fresh file in a temporary directory."""
    with tempfile.TemporaryDirectory() as tmp:
        return run(Path(tmp) / "jobs.db")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--batch", type=int, default=10, help="poolsim's claim limit")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--synchronous", default="NORMAL", choices=["NORMAL", "FULL"])
    parser.add_argument("--stores", nargs="+", default=["sqlite", "redis"],
                        choices=["sqlite", "redis"])
    args = parser.parse_args()
    sqlite_systems: dict[str, Callable[[Path, int], tuple[float, float]]] = {
        SERVER: lambda p, w: run_server(sqlite_url(p, args), args.jobs, w),
        PREFETCH: lambda p, w: run_server(sqlite_url(p, args), args.jobs, w, prefetch=0),
        "poolsim backend, batch 1": lambda p, w: run_backend(
            sqlite_url(p, args), args.jobs, w, 1, False),
        f"poolsim backend, batch {args.batch}": lambda p, w: run_backend(
            sqlite_url(p, args), args.jobs, w, args.batch, False),
        f"poolsim backend, batch {args.batch}, acks batched": lambda p, w: run_backend(
            sqlite_url(p, args), args.jobs, w, args.batch, True),
        HUEY: lambda p, w: run_huey(p, args, w, None),
        HUEY_SAME: lambda p, w: run_huey(p, args, w, args.synchronous),
        "persist-queue SQLiteAckQueue": lambda p, w: run_persist_queue(p, args, w),
        RAW: lambda p, w: run_raw(p, args, w),
    }
    began = time.perf_counter()
    checks: list[tuple[str, bool, bool]] = []  # text, passed, counts for the exit status
    if "sqlite" in args.stores:
        enq, med = measure({name: lambda w, run=run: in_tmp(lambda p: run(p, w))
                            for name, run in sqlite_systems.items()}, args, "sqlite")
        table(f"SQLite: {args.jobs:,} no-op tasks, synchronous={args.synchronous}, WAL, worker "
              f"threads; median of {args.rounds} round(s); rates in tasks/s",
              enq, med, args.workers, [("/huey", HUEY), ("/raw", RAW)])
        for row in (SERVER, PREFETCH):
            for w in args.workers:
                huey, raw = med[row, w] / med[HUEY, w], med[row, w] / med[RAW, w]
                checks += [(f"sqlite, {w} workers: {row}/huey drain {huey:.2f} >= {FLOOR_HUEY}",
                            huey >= FLOOR_HUEY, row == SERVER),
                           (f"sqlite, {w} workers: {row}/raw floor drain {raw:.2f} >= "
                            f"{FLOOR_RAW}", raw >= FLOOR_RAW, row == SERVER)]
    if "redis" in args.stores:
        with qr.private_redis() as url:
            enq, med = measure({name: lambda w, run=run: run(url, args.jobs, w)
                                for name, run in qr.systems(args.batch).items()}, args, "redis")
        table(f"Redis (a private redis-server, no persistence): {args.jobs:,} no-op tasks; "
              f"median of {args.rounds} round(s); rates in tasks/s", enq, med, args.workers,
              [("/arq", qr.ARQ), ("/huey", qr.HUEY), ("/raw", qr.RAW)])
        for row in (qr.SERVER, qr.PREFETCH):
            checks += [(f"redis, {text}", ok, row == qr.SERVER)
                       for text, ok in qr.redis_checks(med, args.workers, row)]
    print(f"\n({time.perf_counter() - began:.0f} s)")
    for text, ok, _ in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    return 0 if all(ok for _, ok, counts in checks if counts) else 1


if __name__ == "__main__":
    sys.exit(main())
