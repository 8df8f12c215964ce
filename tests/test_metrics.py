"""Prometheus metrics: counters agree with stats(), histograms, scrape-time gauges, /metrics.

Every test uses a fresh ``CollectorRegistry`` and reads it with ``get_sample_value``.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
import urllib.request
from typing import Any

import pytest
from prometheus_client import REGISTRY, CollectorRegistry

import poolsim.metrics
from poolsim import (
    AsyncWorkerPool,
    ConfigError,
    JobTimeout,
    PoolStats,
    QueueFull,
    Status,
    WorkerPool,
    current_job,
)
from poolsim.metrics import DURATION_BUCKETS, WAIT_BUCKETS, PoolMetrics

from .conftest import Gate

STATUSES = [s.value for s in Status]


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def jobs_total(registry: CollectorRegistry, queue: str, status: str) -> float | None:
    return registry.get_sample_value("worker_jobs_total", {"queue": queue, "status": status})


def duration_count(registry: CollectorRegistry, task_type: str) -> float | None:
    return registry.get_sample_value("worker_job_duration_seconds_count", {"task_type": task_type})


def wait_count(registry: CollectorRegistry, queue: str) -> float | None:
    return registry.get_sample_value("worker_job_wait_seconds_count", {"queue": queue})


def gauges(registry: CollectorRegistry, queue: str) -> tuple[float | None, float | None]:
    return (registry.get_sample_value("worker_queue_depth", {"queue": queue}),
            registry.get_sample_value("worker_busy_workers", {"queue": queue}))


def bucket_bounds(registry: CollectorRegistry, metric: str, labels: dict[str, str]) -> list[float]:
    """The ``le`` bounds of one histogram child, as floats, in order."""
    bounds = []
    for family in registry.collect():
        for sample in family.samples:
            if sample.name != f"{metric}_bucket":
                continue
            if {k: v for k, v in sample.labels.items() if k != "le"} == labels:
                bounds.append(float(sample.labels["le"]))
    return bounds


def assert_counters_match(registry: CollectorRegistry, stats: PoolStats) -> None:
    for status in STATUSES:
        assert jobs_total(registry, stats.queue, status) == stats.counts[status], status


def boom() -> None:
    raise RuntimeError("boom")


def overstay(leave: threading.Event) -> None:
    """Outlive the job timeout, then hold the worker until the test lets go."""
    assert current_job().cancelled.wait(10)
    assert leave.wait(10)


# -- counters and histograms after a mixed workload ---------------------------------------


def thread_workload(pool: WorkerPool) -> None:
    """3 completed, 2 failed, 1 timeout, 1 rejected on a one-worker hand-off pool."""
    for i in range(3):
        assert pool.submit(lambda i=i: i, task_type="ok").result(timeout=10) == i
    for _ in range(2):
        assert isinstance(pool.submit(boom, task_type="bad").exception(timeout=10), RuntimeError)
    leave = threading.Event()
    slow = pool.submit(overstay, leave, task_type="slow")
    assert isinstance(slow.exception(timeout=10), JobTimeout)
    with pytest.raises(QueueFull):  # a timed-out thread keeps its place until it returns
        pool.submit(lambda: None, task_type="late")
    leave.set()
    pool.shutdown()


async def async_workload(pool: AsyncWorkerPool) -> None:
    """The same mix on the asyncio pool."""

    async def ok(i: int) -> int:
        await asyncio.sleep(0)
        return i

    async def bad() -> None:
        raise RuntimeError("boom")

    async def stuck() -> None:
        await asyncio.Event().wait()

    for i in range(3):
        assert await (await pool.submit(ok, i, task_type="ok")) == i
    for _ in range(2):
        with pytest.raises(RuntimeError):
            await (await pool.submit(bad, task_type="bad"))
    slow = await pool.submit(stuck, task_type="slow")
    with pytest.raises(QueueFull):
        await pool.submit(ok, 9, task_type="late")
    with pytest.raises(JobTimeout):
        await slow
    await pool.shutdown()


def run_workload(kind: str, registry: CollectorRegistry | PoolMetrics, name: str) -> PoolStats:
    if kind == "thread":
        pool = WorkerPool(workers=1, queue_size=0, job_timeout=0.1, name=name,
                          registry=registry)
        thread_workload(pool)
        return pool.stats()
    apool = AsyncWorkerPool(workers=1, queue_size=0, job_timeout=0.05, name=name,
                            registry=registry)
    asyncio.run(async_workload(apool))
    return apool.stats()


@pytest.mark.parametrize("kind", ["thread", "async"])
def test_jobs_total_equals_stats_counts(kind: str, registry: CollectorRegistry) -> None:
    stats = run_workload(kind, registry, "mixed")
    assert {k: v for k, v in stats.counts.items() if v} == {
        "completed": 3, "failed": 2, "timeout": 1, "rejected": 1}
    assert_counters_match(registry, stats)


@pytest.mark.parametrize("kind", ["thread", "async"])
def test_duration_histogram_counts_jobs_that_ran_per_task_type(
        kind: str, registry: CollectorRegistry) -> None:
    run_workload(kind, registry, "mixed")
    assert duration_count(registry, "ok") == 3
    assert duration_count(registry, "bad") == 2
    assert duration_count(registry, "slow") == 1  # a timed-out job ran too
    assert duration_count(registry, "late") is None  # rejected: never ran
    assert bucket_bounds(registry, "worker_job_duration_seconds", {"task_type": "ok"}) == [
        0.1, 0.5, 1.0, 5.0, 30.0, 60.0, math.inf]
    inf_bucket = registry.get_sample_value("worker_job_duration_seconds_bucket",
                                           {"task_type": "ok", "le": "+Inf"})
    assert inf_bucket == 3


@pytest.mark.parametrize("kind", ["thread", "async"])
def test_wait_histogram_counts_jobs_that_started(kind: str, registry: CollectorRegistry) -> None:
    run_workload(kind, registry, "mixed")
    assert wait_count(registry, "mixed") == 6  # 3 ok + 2 bad + 1 slow; the rejected never waited
    assert bucket_bounds(registry, "worker_job_wait_seconds", {"queue": "mixed"}) == [
        *WAIT_BUCKETS, math.inf]
    total = registry.get_sample_value("worker_job_wait_seconds_sum", {"queue": "mixed"})
    assert total is not None and total >= 0


def test_default_buckets_are_the_documented_ones() -> None:
    assert DURATION_BUCKETS == (0.1, 0.5, 1.0, 5.0, 30.0, 60.0)
    assert list(WAIT_BUCKETS) == sorted(WAIT_BUCKETS)


@pytest.mark.parametrize("attach", ["metrics", "registry"])
def test_custom_buckets(attach: str, registry: CollectorRegistry) -> None:
    metrics = PoolMetrics(registry, duration_buckets=(0.25, 2.0, 7.5), wait_buckets=[0.001, 10])
    # a pool given the registry itself reuses the PoolMetrics already made for it
    pool = WorkerPool(workers=1, name="c", registry=metrics if attach == "metrics" else registry)
    pool.submit(lambda: None, task_type="t").result(timeout=10)
    pool.shutdown()
    assert bucket_bounds(registry, "worker_job_duration_seconds", {"task_type": "t"}) == [
        0.25, 2.0, 7.5, math.inf]
    assert bucket_bounds(registry, "worker_job_wait_seconds", {"queue": "c"}) == [
        0.001, 10.0, math.inf]
    assert duration_count(registry, "t") == 1
    assert jobs_total(registry, "c", "completed") == 1


# -- observers and shutdown ---------------------------------------------------------------


class SlowObserver:
    """A legitimate observer that takes a moment to handle each outcome."""

    def job_started(self, job: Any) -> None:
        pass

    def job_resolved(self, job: Any) -> None:
        time.sleep(0.05)

    def job_released(self, job: Any, duration: float) -> None:
        pass


def test_metrics_are_complete_when_shutdown_returns(registry: CollectorRegistry) -> None:
    # shutdown() reports what became of every job; by then every observer,
    # the metrics among them, must have been told too.
    pool = WorkerPool(workers=1, name="s", registry=registry, observers=[SlowObserver()])
    pool.submit(lambda: 1, task_type="last")
    pool.shutdown()
    assert pool.stats().counts["completed"] == 1
    assert jobs_total(registry, "s", "completed") == 1
    assert duration_count(registry, "last") == 1


# -- scrape-time gauges -------------------------------------------------------------------


def test_thread_pool_gauges_are_read_at_scrape_time(registry: CollectorRegistry,
                                                    gate: Gate) -> None:
    pool = WorkerPool(workers=2, queue_size=5, name="g", registry=registry)
    assert gauges(registry, "g") == (0, 0)
    handles = [pool.submit(gate.job, i) for i in range(5)]
    gate.wait_entered(2)
    assert gauges(registry, "g") == (3, 2)
    stats = pool.stats()
    assert gauges(registry, "g") == (stats.queued, stats.busy_workers)
    gate.opened.set()
    assert [h.result(timeout=10) for h in handles] == list(range(5))
    pool.shutdown()
    assert gauges(registry, "g") == (0, 0)


def test_async_pool_gauges_are_read_at_scrape_time(registry: CollectorRegistry) -> None:
    async def scenario() -> None:
        opened = asyncio.Event()
        entered: list[int] = []

        async def held(i: int) -> int:
            entered.append(i)
            await opened.wait()
            return i

        pool = AsyncWorkerPool(workers=3, queue_size=10, name="ag", registry=registry)
        assert gauges(registry, "ag") == (0, 0)
        handles = [await pool.submit(held, i) for i in range(7)]
        for _ in range(1000):
            if len(entered) == 3:
                break
            await asyncio.sleep(0)
        assert gauges(registry, "ag") == (4, 3)
        opened.set()
        assert [await h for h in handles] == list(range(7))
        await pool.shutdown()
        assert gauges(registry, "ag") == (0, 0)

    asyncio.run(scenario())


def test_caller_run_jobs_are_not_busy_workers(registry: CollectorRegistry,
                                              gate: Gate) -> None:
    pool = WorkerPool(workers=1, queue_size=0, backpressure="caller_runs", name="cr",
                      registry=registry)
    handle = pool.submit(gate.job, "worker")
    gate.wait_entered(1)
    seen: list[tuple[float | None, float | None]] = []
    pool.submit(lambda: seen.append(gauges(registry, "cr")))  # runs in this thread
    assert seen == [(0, 1)]
    gate.opened.set()
    handle.result(timeout=10)
    pool.shutdown()


# -- several pools, one registry ----------------------------------------------------------


def test_two_pools_in_one_registry_get_separate_queue_labels(
        registry: CollectorRegistry, gate: Gate) -> None:
    a = WorkerPool(workers=1, queue_size=4, name="a", registry=registry)
    b = WorkerPool(workers=2, queue_size=4, name="b", registry=registry)
    for _ in range(2):
        a.submit(lambda: None).result(timeout=10)
    b.submit(lambda: None).result(timeout=10)
    b.submit(boom).exception(timeout=10)
    held = [a.submit(gate.job), a.submit(gate.job)]
    gate.wait_entered(1)
    assert gauges(registry, "a") == (1, 1)
    assert gauges(registry, "b") == (0, 0)
    gate.opened.set()
    for h in held:
        h.result(timeout=10)
    a.shutdown()
    b.shutdown()
    assert jobs_total(registry, "a", "completed") == 4
    assert jobs_total(registry, "a", "failed") == 0
    assert jobs_total(registry, "b", "completed") == 1
    assert jobs_total(registry, "b", "failed") == 1
    assert wait_count(registry, "a") == 4
    assert wait_count(registry, "b") == 2
    assert_counters_match(registry, a.stats())
    assert_counters_match(registry, b.stats())


def test_a_thread_pool_and_an_async_pool_share_a_registry(registry: CollectorRegistry) -> None:
    threads = WorkerPool(workers=1, name="threads", registry=registry)
    threads.submit(lambda: None).result(timeout=10)
    threads.shutdown()

    async def scenario() -> AsyncWorkerPool:
        async def ok() -> None:
            return None

        async with AsyncWorkerPool(workers=1, name="tasks", registry=registry) as pool:
            for _ in range(3):
                await (await pool.submit(ok))
        return pool

    tasks = asyncio.run(scenario())
    assert jobs_total(registry, "threads", "completed") == 1
    assert jobs_total(registry, "tasks", "completed") == 3
    assert_counters_match(registry, tasks.stats())


# -- registry rules -----------------------------------------------------------------------


def test_pool_metrics_twice_on_one_registry_is_a_config_error(
        registry: CollectorRegistry) -> None:
    PoolMetrics(registry)
    with pytest.raises(ConfigError) as info:
        PoolMetrics(registry)
    assert info.value.field == "registry"
    assert info.value.value is registry
    assert PoolMetrics.for_registry(registry) is PoolMetrics.for_registry(registry)


def test_pool_metrics_after_a_pool_made_them_is_a_config_error(
        registry: CollectorRegistry) -> None:
    WorkerPool(workers=1, registry=registry).shutdown()
    with pytest.raises(ConfigError):
        PoolMetrics(registry, duration_buckets=(1.0,))


@pytest.mark.parametrize("field", ["duration_buckets", "wait_buckets"])
@pytest.mark.parametrize(
    "buckets",
    [(), (1.0, 0.5), (0.5, 0.5), (0.0, 1.0), (-1.0, 1.0), (math.nan,), (0.5, math.nan),
     ("a", "b")],
    ids=["empty", "decreasing", "duplicate", "zero", "negative", "nan", "trailing-nan",
         "strings"],
)
def test_bad_buckets_are_a_config_error(field: str, buckets: tuple[Any, ...],
                                        registry: CollectorRegistry) -> None:
    with pytest.raises(ConfigError) as info:
        PoolMetrics(registry, **{field: buckets})
    assert info.value.field == field
    PoolMetrics(registry)  # the failed attempt left the registry usable


def test_a_pool_without_registry_registers_nothing_globally() -> None:
    def names() -> set[str]:
        return {family.name for family in REGISTRY.collect()}

    before = names()
    pool = WorkerPool(workers=1, name="unmetered")
    pool.submit(lambda: None).result(timeout=10)
    pool.shutdown()

    async def scenario() -> None:
        async def ok() -> None:
            return None

        async with AsyncWorkerPool(workers=1, name="unmetered-async") as apool:
            await (await apool.submit(ok))

    asyncio.run(scenario())
    assert names() == before
    for queue in ("unmetered", "unmetered-async"):
        assert REGISTRY.get_sample_value(
            "worker_jobs_total", {"queue": queue, "status": "completed"}) is None


# -- /metrics over HTTP -------------------------------------------------------------------


def test_serve_exposes_metrics_over_http_on_loopback(registry: CollectorRegistry) -> None:
    pool = WorkerPool(workers=1, name="web", registry=registry)
    for _ in range(3):
        pool.submit(lambda: None, task_type="page").result(timeout=10)
    server, thread = poolsim.metrics.serve(0, registry=registry)
    try:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1"
        assert port == server.server_port != 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            assert response.status == 200
            body = response.read().decode()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
    pool.shutdown()
    assert not thread.is_alive()
    lines = body.splitlines()
    assert 'worker_jobs_total{queue="web",status="completed"} 3.0' in lines
    assert 'worker_job_duration_seconds_count{task_type="page"} 3.0' in lines
    assert 'worker_queue_depth{queue="web"} 0.0' in lines
    assert 'worker_busy_workers{queue="web"} 0.0' in lines


@pytest.mark.parametrize("port", [-1, 65536, True, "9100", 80.0])
def test_serve_rejects_bad_ports(port: Any) -> None:
    with pytest.raises(ConfigError) as info:
        poolsim.metrics.serve(port, registry=CollectorRegistry())
    assert info.value.field == "port"


def test_pools_created_at_once_on_a_fresh_registry_share_its_metrics() -> None:
    registry = CollectorRegistry()
    errors: list[BaseException] = []
    pools: list[WorkerPool] = []

    def create(i: int) -> None:
        try:
            pools.append(WorkerPool(workers=1, name=f"p{i}", registry=registry))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(pools) == 8
    assert len({PoolMetrics.for_registry(registry)._pools_lock for _ in range(2)}) == 1
    for pool in pools:
        pool.submit(int).result(timeout=5)
        pool.shutdown()
        assert jobs_total(registry, pool.name, "completed") == 1
