"""The Redis column of ``queue_throughput.py``: enqueue and drain rates on one private Redis.

A helper module (``./dev bench`` does not run it on its own). :func:`private_redis` starts a
``redis-server`` on a free loopback port in a temporary directory — never the machine's Redis
on 6379 — and yields its URL. Config: ``--bind 127.0.0.1 --port <free> --save ""
--appendonly no`` (no persistence: no RDB snapshots, no AOF) unless ``appendfsync`` asks
for an AOF (``everysec`` or ``always``); ``--io-threads 1``, default ``maxmemory`` (none).

Every row of :func:`systems` has the shape ``(url, jobs, workers) -> (enqueue_seconds,
drain_seconds)``, starts from a FLUSHALLed server, enqueues ``jobs`` no-op tasks one call
per task from one producer, drains them with ``workers`` workers (threads in this process
unless a docstring says otherwise) until all are done, and asserts that every task was run
exactly as many times as there were tasks. This module holds the Redis-only parts — the
private server, the flush, the peers (raw floor, Huey, RQ, arq); poolsim's rows are
``_queue_shared``'s store-agnostic :func:`run_server` and :func:`run_backend`, given a
flushed URL.

What each keeps, so the rates are read right:

* raw redis-py floor: ``LMOVE pending → processing`` then ``LREM processing`` per job: the
  least a reliable list queue does (a crashed worker's job stays in ``processing``), but
  no lease expiry, no retry bookkeeping, no history.
* Huey ``RedisStorage``: ``RPOP`` deletes the job as it is taken — no lease, no
  acknowledgement (a killed worker loses its task).
* RQ (``SimpleWorker``, burst): the job's hash, the started/finished registries and a
  result per job; a worker that dies leaves its job in the started registry, later moved
  to *failed* (not retried) by maintenance. The default ``Worker`` forks a work horse per
  job; ``SimpleWorker`` runs jobs in-process.
* arq: the job stays in the queue's sorted set until finished; an ``in-progress`` key that
  expires (``job_timeout`` + 10 s) acts as its lease, and a result is kept (1 h).
* poolsim: leased claims with a per-claim token, lease renewal, acknowledgement with a
  history row per attempt (see ``queue_throughput.py``).

Floors (issue 6, requirement 7), for the poolsim Server row at each worker count: drain
>= 3x arq, >= Huey's Redis, >= half the raw floor — :func:`redis_checks`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis
from _queue_shared import drain, drain_huey_storage, each, noop, run_backend, run_server, timed
from arq.connections import RedisSettings, create_pool
from arq.worker import Worker as ArqWorker
from arq.worker import func as arq_func
from huey import RedisHuey  # type: ignore[import-untyped]
from huey.storage import RedisStorage  # type: ignore[import-untyped]
from rq import Queue, SimpleWorker
from rq.registry import FailedJobRegistry, FinishedJobRegistry

FLOOR_ARQ, FLOOR_HUEY, FLOOR_RAW = 3.0, 1.0, 0.5
RAW = "raw redis-py floor (LMOVE+LREM)"
HUEY = "huey RedisHuey tasks (no lease)"
HUEY_STORAGE = "huey RedisStorage alone (no lease)"
RQ = "rq SimpleWorker, burst (processes)"
ARQ = "arq Worker, burst, poll 50 ms"
SERVER = "poolsim Server on Redis (end to end)"
PREFETCH = "poolsim Server on Redis, prefetch=0"
BACKEND = "poolsim RedisBackend alone, batch {batch}"


async def arq_noop(ctx: dict[str, Any]) -> None:
    """arq's no-op job (arq jobs are coroutines taking the worker's context)."""


# -- the server ---------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def private_redis(appendfsync: str | None = None) -> Iterator[str]:
    """A fresh ``redis-server`` on a free loopback port, in a temporary directory; yields
    ``redis://127.0.0.1:<port>/0``. No persistence, unless ``appendfsync`` (``everysec``,
    ``always``) turns the AOF on with that fsync policy."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not on PATH (apt-get install redis-server)")
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as tmp:
        port = free_port()
        aof = (["--appendonly", "yes", "--appendfsync", appendfsync] if appendfsync
               else ["--appendonly", "no"])
        proc = subprocess.Popen(
            [exe, "--bind", "127.0.0.1", "--port", str(port), "--dir", tmp, "--save", "",
             *aof, "--io-threads", "1", "--daemonize", "no", "--loglevel", "warning",
             "--logfile", f"{tmp}/redis.log"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"redis://127.0.0.1:{port}/0"
        try:
            conn = redis.Redis.from_url(url)
            for _ in range(500):
                with contextlib.suppress(redis.ConnectionError):
                    if conn.ping():
                        break
                if proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {proc.returncode}")
                time.sleep(0.01)
            else:
                raise RuntimeError(f"redis-server on port {port} did not answer")
            conn.close()
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def flushed(url: str) -> redis.Redis:
    conn = redis.Redis.from_url(url)
    conn.flushall()
    return conn


# -- the systems: each returns (enqueue seconds, drain seconds) -----------------------------

def run_raw(url: str, jobs: int, workers: int) -> tuple[float, float]:
    """The floor: one ``LPUSH`` of a small JSON job per task; each worker thread loops
    ``LMOVE pending processing RIGHT LEFT`` (take the oldest, keep it where a crash would
    leave it) then ``LREM processing 1 <job>`` (acknowledge). Two round trips per job, no
    lease expiry or retry bookkeeping."""
    conn = flushed(url)
    blob = json.dumps({"type": "noop", "payload": {}})
    enq = timed(each(jobs, lambda: conn.lpush("pending", blob)))

    def work(n: int) -> int:
        done = 0
        while (job := conn.lmove("pending", "processing", "RIGHT", "LEFT")) is not None:
            noop()
            conn.lrem("processing", 1, job)  # type: ignore[arg-type]  # redis-py's sync|async
            done += 1
        return done

    wall, total = drain(workers, work)
    assert total == jobs and conn.llen("processing") == 0, total
    conn.close()
    return enq, wall


def run_huey(url: str, jobs: int, workers: int) -> tuple[float, float]:
    """Huey end to end (the floor's row): a ``RedisHuey`` task of :func:`noop` called once
    per task (serialises a ``Task`` message, ``LPUSH``); each thread loops what a Huey
    consumer worker does, ``huey.dequeue()`` (``RPOP``, deserialise; ``blocking=False``) then
    ``huey.execute(task)`` (revocation check, run, no result stored for ``None``). The pop
    deletes the job: no lease, no acknowledgement — a killed worker loses its task."""
    flushed(url).close()
    huey = RedisHuey(name="bench", url=url, blocking=False)
    task = huey.task()(noop)
    enq = timed(each(jobs, task))

    def work(n: int) -> int:
        done = 0
        while (message := huey.dequeue()) is not None:
            huey.execute(message)
            done += 1
        return done

    wall, total = drain(workers, work)
    assert total == jobs and len(huey) == 0, (total, len(huey))
    huey.storage.conn.close()
    return enq, wall


def run_huey_storage(url: str, jobs: int, workers: int) -> tuple[float, float]:
    """Orientation: Huey's ``RedisStorage`` alone (``RedisHuey``'s store), as the SQLite row drives
    ``SqliteStorage``: ``enqueue`` (``LPUSH``) of a tiny pickled message, ``dequeue``
    (``RPOP``; ``blocking=False`` so a worker stops at an empty queue instead of waiting
    ``read_timeout``) on each thread. The pop deletes the job: no lease, no acknowledgement
    — a killed worker loses its task."""
    flushed(url).close()
    storage = RedisStorage(name="bench", url=url, blocking=False)
    try:
        return drain_huey_storage(storage, jobs, workers)
    finally:
        storage.conn.close()


def _rq_worker(url: str, start: Any) -> None:
    """One RQ worker process: a ``SimpleWorker`` in burst mode on the ``bench`` queue."""
    conn = redis.Redis.from_url(url)
    worker = SimpleWorker([Queue("bench", connection=conn)], connection=conn)
    start.wait()
    worker.work(burst=True, logging_level="WARNING")


def run_rq(url: str, jobs: int, workers: int) -> tuple[float, float]:
    """RQ: ``Queue.enqueue(noop)`` per task (a job hash plus the queue list, pipelined);
    drain with ``workers`` ``SimpleWorker`` *processes* (spawned; RQ's workers install
    signal handlers and SIGALRM timeouts, so they cannot run on threads), burst mode,
    timed from a barrier after they are set up until the last exits. ``SimpleWorker``
    runs each job in its own process (the default ``Worker`` forks a work horse per job);
    every job gets the started/finished registries and a stored result (``result_ttl``
    500 s). Processes, not threads: on 2 cores RQ is spared sharing one GIL."""
    conn = flushed(url)
    queue = Queue("bench", connection=conn)
    enq = timed(each(jobs, lambda: queue.enqueue(noop)))
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(workers + 1)
    procs = [ctx.Process(target=_rq_worker, args=(url, start)) for _ in range(workers)]
    for p in procs:
        p.start()
    start.wait()
    began = time.perf_counter()
    for p in procs:
        p.join()
    wall = time.perf_counter() - began
    finished, failed = FinishedJobRegistry(queue=queue).count, FailedJobRegistry(queue=queue).count
    assert (finished, failed, queue.count) == (jobs, 0, 0), (finished, failed, queue.count)
    conn.close()
    return enq, wall


def run_arq(url: str, jobs: int, workers: int, *, max_jobs: int = 10,
            poll_delay: float = 0.05) -> tuple[float, float]:
    """arq: ``ArqRedis.enqueue_job`` per task (one MULTI/EXEC: the job key plus a ZADD to
    the queue); drain with ``workers`` arq ``Worker``s in burst mode, each on its own thread
    and event loop (as an arq deployment runs one per process; spawned processes measured
    no faster on 2 cores), ``max_jobs`` 10 coroutines in flight each (arq's default, so up
    to 10 x workers jobs in flight against poolsim's ``concurrency=workers``), polling every
    ``poll_delay`` 50 ms — arq's default 0.5 s idles a burst worker between polls (~0.2k
    jobs/s); max_jobs 100 measured the same. A poll reads up to ``max(5 * max_jobs, 100)``
    ids, which every worker reads alike, so more workers collide more (the losers' WATCH
    fails). Per job: a WATCH'd in-progress key (its lease), the job, a result kept an hour,
    the job removed from the queue."""
    settings = RedisSettings.from_dsn(url)
    flushed(url).close()

    async def enqueue() -> None:
        pool = await create_pool(settings)
        for _ in range(jobs):
            assert await pool.enqueue_job("arq_noop") is not None
        await pool.aclose()

    enq = timed(lambda: asyncio.run(enqueue()))

    def work(n: int) -> int:
        worker = ArqWorker([arq_func(arq_noop, name="arq_noop")], redis_settings=settings,
                           burst=True, max_jobs=max_jobs, poll_delay=poll_delay,
                           handle_signals=False)
        worker.run()  # on the event loop arq made for this thread; closes its connections
        worker.loop.close()
        assert worker.jobs_failed == 0, worker.jobs_failed
        return worker.jobs_complete

    wall, total = drain(workers, work)
    assert total == jobs, total
    return enq, wall


def fresh(url: str) -> str:
    """``url``, its server FLUSHALLed: poolsim's rows start from an empty store."""
    flushed(url).close()
    return url


def systems(batch: int = 10) -> dict[str, Callable[[str, int, int], tuple[float, float]]]:
    """The Redis column's rows, in print order (the floors use SERVER, ARQ, HUEY, RAW;
    PREFETCH may be checked too, for orientation, as the SQLite column does)."""
    return {
        SERVER: lambda u, j, w: run_server(fresh(u), j, w),
        PREFETCH: lambda u, j, w: run_server(fresh(u), j, w, prefetch=0),
        BACKEND.format(batch=batch): lambda u, j, w: run_backend(fresh(u), j, w, batch, True),
        HUEY: run_huey,
        HUEY_STORAGE: run_huey_storage,
        ARQ: run_arq,
        RQ: run_rq,
        RAW: run_raw,
    }


def redis_checks(med: dict[tuple[str, int], float], workers: list[int],
                 row: str = SERVER) -> list[tuple[str, bool]]:
    """The floors, from median drain rates keyed (row, workers): ``row`` (the poolsim Server
    row) >= 3x arq, >= 1x Huey's Redis, >= 0.5x the raw floor, at each worker count."""
    checks = []
    for w in workers:
        for other, floor in ((ARQ, FLOOR_ARQ), (HUEY, FLOOR_HUEY), (RAW, FLOOR_RAW)):
            ratio = med[row, w] / med[other, w]
            checks.append((f"{w} workers: {row} / {other} drain {ratio:.2f} >= {floor}",
                           ratio >= floor))
    return checks
