"""AsyncWorkerPool: back-pressure, real cancellation on timeout, current_job, shutdown policies.

Each test runs one scenario with ``asyncio.run``; jobs wait on ``asyncio.Event``s the test
sets, and "wait until" loops spin the event loop with ``sleep(0)``, so nothing depends on
how fast the machine is.
"""

from __future__ import annotations

import asyncio
import collections
import random
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import pytest

from poolsim import (
    AsyncWorkerPool,
    Backpressure,
    ConfigError,
    JobCancelled,
    JobDropped,
    JobReturned,
    JobTimeout,
    PoolClosed,
    QueueFull,
    ShutdownPolicy,
    Status,
    current_job,
)

T = TypeVar("T")


def run(scenario: Coroutine[Any, Any, T]) -> T:
    """Run one test scenario on a fresh loop; fail (not hang) if it deadlocks."""

    async def guarded() -> T:
        async with asyncio.timeout(10):  # same task: the scenario's current_task() is this one
            return await scenario

    return asyncio.run(guarded())


async def until(condition: Callable[[], bool], spins: int = 10_000) -> None:
    """Let other tasks run until ``condition()`` holds (no wall-clock waiting)."""
    for _ in range(spins):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never became true")


async def spin(n: int = 50) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


class Gate:
    """Coroutine jobs that hold their worker until the test opens the gate."""

    def __init__(self) -> None:
        self.opened = asyncio.Event()
        self.entered: list[object] = []
        self.cancelled: list[object] = []

    async def job(self, value: object = None) -> object:
        self.entered.append(value)
        try:
            await self.opened.wait()
        except asyncio.CancelledError:
            self.cancelled.append(value)
            raise
        return value


async def outcome(handle: Awaitable[object]) -> object:
    """The handle's result, or the exception it raises."""
    try:
        return await handle
    except Exception as exc:
        return exc


def statuses(pool: AsyncWorkerPool) -> dict[str, int]:
    return {k: v for k, v in pool.stats().counts.items() if v}


# -- basics -------------------------------------------------------------------------------


def test_submit_returns_a_future_of_the_result() -> None:
    async def scenario() -> None:
        async def add(a: int, b: int, *, c: int = 0) -> int:
            await asyncio.sleep(0)
            return a + b + c

        async with AsyncWorkerPool(workers=2, queue_size=10) as pool:
            handle = await pool.submit(add, 1, 2, c=3)
            assert isinstance(handle, asyncio.Future)
            assert await handle == 6
        assert statuses(pool) == {"completed": 1}

    run(scenario())


def test_a_failing_coroutine_fails_its_future() -> None:
    async def scenario() -> None:
        async def boom() -> None:
            raise KeyError("x")

        async with AsyncWorkerPool(workers=1) as pool:
            handle = await pool.submit(boom)
            with pytest.raises(KeyError):
                await handle
        assert statuses(pool) == {"failed": 1}

    run(scenario())


# -- back-pressure ------------------------------------------------------------------------


def test_reject_raises_queue_full_at_once() -> None:
    async def scenario() -> None:
        gate = Gate()
        pool = AsyncWorkerPool(workers=1, queue_size=1, name="web", record=True)
        running = await pool.submit(gate.job, "running")
        await until(lambda: gate.entered == ["running"])
        queued = await pool.submit(gate.job, "queued")
        with pytest.raises(QueueFull) as info:
            await pool.submit(gate.job, "third")
        assert (info.value.queue, info.value.capacity, info.value.policy) == ("web", 2, "reject")
        stats = pool.stats()
        assert (stats.queued, stats.running, stats.busy_workers) == (1, 1, 1)
        assert stats.counts["rejected"] == 1
        gate.opened.set()
        assert [await running, await queued] == ["running", "queued"]
        await pool.shutdown()
        assert gate.entered == ["running", "queued"]
        assert list(pool.records()["status"]) == ["completed", "completed", "rejected"]

    run(scenario())


def test_unbounded_queue_never_rejects() -> None:
    async def scenario() -> None:
        gate = Gate()
        pool = AsyncWorkerPool(workers=1, queue_size=None)
        handles = [await pool.submit(gate.job, i) for i in range(500)]
        assert pool.stats().counts["rejected"] == 0
        gate.opened.set()
        assert [await h for h in handles] == list(range(500))
        await pool.shutdown()

    run(scenario())


@pytest.mark.parametrize("block_timeout", [None, 60.0])
def test_block_waits_then_admits_when_room_frees(block_timeout: float | None) -> None:
    async def scenario() -> None:
        gate = Gate()
        pool = AsyncWorkerPool(workers=1, queue_size=0, backpressure="block",
                               block_timeout=block_timeout, record=True)
        first = await pool.submit(gate.job, "first")
        await until(lambda: gate.entered == ["first"])
        blocked = asyncio.create_task(pool.submit(gate.job, "second"))
        await spin()
        assert not blocked.done()  # waiting for room, not rejected
        assert gate.entered == ["first"]
        assert pool.stats().counts["rejected"] == 0
        gate.opened.set()
        second = await blocked
        assert [await first, await second] == ["first", "second"]
        await pool.shutdown()
        assert list(pool.records()["status"]) == ["completed", "completed"]

    run(scenario())


def test_block_raises_queue_full_after_block_timeout() -> None:
    async def scenario() -> None:
        gate = Gate()
        pool = AsyncWorkerPool(workers=1, queue_size=0, backpressure="block",
                               block_timeout=0.01, record=True)
        first = await pool.submit(gate.job, "first")
        with pytest.raises(QueueFull) as info:
            await pool.submit(gate.job, "second")
        assert info.value.policy == "block"
        assert pool.stats().counts["rejected"] == 1
        gate.opened.set()
        assert await first == "first"
        await pool.shutdown()
        assert gate.entered == ["first"]
        records = pool.records()
        assert list(records["status"]) == ["completed", "rejected"]
        assert records["start_s"].isna().tolist() == [False, True]

    run(scenario())


def test_blocked_submitter_gets_pool_closed_at_shutdown() -> None:
    async def scenario() -> None:
        gate = Gate()
        pool = AsyncWorkerPool(workers=1, queue_size=0, backpressure="block",
                               block_timeout=None)
        first = await pool.submit(gate.job, "first")
        blocked = asyncio.create_task(pool.submit(gate.job, "second"))
        await spin()
        closing = asyncio.create_task(pool.shutdown("drain"))
        with pytest.raises(PoolClosed):
            await blocked
        gate.opened.set()
        report = await closing
        assert await first == "first"
        assert report.completed == (0,)
        assert gate.entered == ["first"]
        assert sum(pool.stats().counts.values()) == 1  # the refused submit is no job

    run(scenario())


def test_drop_oldest_fails_the_oldest_queued_future() -> None:
    async def scenario() -> None:
        gate = Gate()
        pool = AsyncWorkerPool(workers=1, queue_size=2, backpressure="drop_oldest", record=True)
        running = await pool.submit(gate.job, "running")
        await until(lambda: gate.entered == ["running"])
        oldest = await pool.submit(gate.job, "oldest")
        middle = await pool.submit(gate.job, "middle")
        newest = await pool.submit(gate.job, "newest")  # evicts "oldest"
        assert oldest.done()
        with pytest.raises(JobDropped) as info:
            await oldest
        assert info.value.job_id == 1
        assert pool.stats().queued == 2
        gate.opened.set()
        assert [await running, await middle, await newest] == ["running", "middle", "newest"]
        await pool.shutdown()
        assert gate.entered == ["running", "middle", "newest"]  # the dropped job never ran
        assert statuses(pool) == {"completed": 3, "dropped": 1}
        records = pool.records().set_index("job_id")
        assert records.loc[1, "status"] == "dropped"
        assert records["start_s"].isna().tolist() == [False, True, False, False]

    run(scenario())


def test_drop_oldest_with_nothing_queued_rejects() -> None:
    async def scenario() -> None:
        gate = Gate()
        pool = AsyncWorkerPool(workers=1, queue_size=0, backpressure="drop_oldest")
        running = await pool.submit(gate.job, "running")
        await until(lambda: gate.entered == ["running"])
        with pytest.raises(QueueFull) as info:
            await pool.submit(gate.job, "next")
        assert info.value.policy == "drop_oldest"
        gate.opened.set()
        assert await running == "running"
        await pool.shutdown()
        assert statuses(pool) == {"completed": 1, "rejected": 1}

    run(scenario())


def test_caller_runs_runs_the_job_in_the_submitting_task() -> None:
    async def scenario() -> None:
        gate = Gate()
        pool = AsyncWorkerPool(workers=1, queue_size=0, backpressure="caller_runs",
                               record=True)

        async def where() -> tuple[asyncio.Task[Any] | None, str]:
            await asyncio.sleep(0)
            return asyncio.current_task(), current_job().task_type

        async def boom() -> None:
            raise ValueError("in the caller")

        running = await pool.submit(gate.job, "running")
        await until(lambda: gate.entered == ["running"])
        handle = await pool.submit(where, task_type="inline")
        assert handle.done()  # it ran before submit returned
        assert handle.result() == (asyncio.current_task(), "inline")
        failed = await pool.submit(boom)  # the job's error goes to its future, not submit
        assert isinstance(failed.exception(), ValueError)
        gate.opened.set()
        await running
        await pool.shutdown()
        records = pool.records().set_index("job_id")
        assert records["worker"].tolist() == [0, -1, -1]
        assert records["status"].tolist() == ["completed", "completed", "failed"]

    run(scenario())


# -- timeouts and current_job -------------------------------------------------------------


def test_timeout_cancels_the_coroutine_and_frees_its_worker_at_once() -> None:
    async def scenario() -> None:
        seen: list[str] = []

        async def stuck() -> None:
            try:
                await asyncio.Event().wait()  # never set: only cancellation ends it
            except asyncio.CancelledError:
                seen.append("cancelled")
                raise
            seen.append("returned")

        async def after() -> str:
            return "next"

        pool = AsyncWorkerPool(workers=1, queue_size=5, job_timeout=0.02, record=True)
        timed_out = await pool.submit(stuck, task_type="stuck")
        following = await pool.submit(after)
        with pytest.raises(JobTimeout) as info:
            await timed_out
        assert isinstance(info.value, TimeoutError)
        assert (info.value.job_id, info.value.timeout) == (0, 0.02)
        assert seen == ["cancelled"]
        stats = pool.stats()
        assert stats.overdue == 0  # unlike a thread, nothing keeps running after a timeout
        assert stats.counts["timeout"] == 1
        assert await following == "next"  # the one worker was free for it
        report = await pool.shutdown()
        assert report.clean
        records = pool.records().set_index("job_id")
        assert records.loc[0, "status"] == "timeout"
        assert records.loc[1, "status"] == "completed"
        assert records.loc[1, "worker"] == 0
        assert records.loc[1, "start_s"] >= records.loc[0, "end_s"]

    run(scenario())


def test_timed_out_coroutine_sees_its_cancelled_flag() -> None:
    async def scenario() -> None:
        flags: list[bool] = []

        async def stuck() -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                flags.append(current_job().cancelled.is_set())
                raise

        async with AsyncWorkerPool(workers=1, job_timeout=0.01) as pool:
            handle = await pool.submit(stuck)
            assert isinstance(await outcome(handle), JobTimeout)
        # JobContext: "cancelled is set when the job times out", as it is for a shutdown
        assert flags == [True]

    run(scenario())


def test_timeout_applies_to_every_job() -> None:
    async def scenario() -> None:
        async def stuck() -> None:
            await asyncio.Event().wait()

        async with AsyncWorkerPool(workers=2, queue_size=10, job_timeout=0.01) as pool:
            handles = [await pool.submit(stuck) for _ in range(5)]
            results = [await outcome(h) for h in handles]
        assert all(isinstance(r, JobTimeout) for r in results)
        assert statuses(pool) == {"timeout": 5}
        assert pool.stats().running == 0

    run(scenario())


def test_a_job_raising_its_own_timeout_error_failed_not_timed_out() -> None:
    async def scenario() -> None:
        async def own() -> None:
            raise TimeoutError("upstream")

        async def quick() -> str:
            return "ok"

        async with AsyncWorkerPool(workers=1, job_timeout=60) as pool:
            failed = await pool.submit(own)
            done = await pool.submit(quick)
            result = await outcome(failed)
            assert type(result) is TimeoutError
            assert await done == "ok"
        assert statuses(pool) == {"failed": 1, "completed": 1}

    run(scenario())


def test_current_job_inside_a_coroutine() -> None:
    async def scenario() -> None:
        async def whoami() -> tuple[int, str, int, bool]:
            ctx = current_job()
            for _ in range(3):
                await asyncio.sleep(0)  # interleave with the other jobs
                assert current_job() is ctx
            assert ctx.deadline is not None
            assert ctx.remaining(ctx.deadline - 1.5) == 1.5
            return ctx.job_id, ctx.task_type, ctx.attempt, ctx.cancelled.is_set()

        with pytest.raises(LookupError):
            current_job()
        async with AsyncWorkerPool(workers=3, job_timeout=30) as pool:
            handles = [await pool.submit(whoami, task_type=f"t{i}") for i in range(6)]
            results = [await h for h in handles]
        assert results == [(i, f"t{i}", 1, False) for i in range(6)]
        with pytest.raises(LookupError):
            current_job()

    run(scenario())


def test_current_job_has_no_deadline_without_timeout() -> None:
    async def scenario() -> None:
        async def deadline() -> float | None:
            return current_job().deadline

        async with AsyncWorkerPool(workers=1) as pool:
            assert await (await pool.submit(deadline)) is None

    run(scenario())


# -- shutdown -----------------------------------------------------------------------------


def test_drain_finishes_queued_and_running_jobs() -> None:
    async def scenario() -> None:
        gate = Gate()
        pool = AsyncWorkerPool(workers=2, queue_size=10, record=True)
        handles = [await pool.submit(gate.job, i) for i in range(6)]
        await until(lambda: len(gate.entered) == 2)
        closing = asyncio.create_task(pool.shutdown("drain"))
        await spin()
        assert not closing.done()  # waits for the work
        assert pool.stats().closed
        gate.opened.set()
        report = await closing
        assert [await h for h in handles] == list(range(6))
        assert report.policy is ShutdownPolicy.DRAIN
        assert sorted(report.completed) == list(range(6))
        assert (report.returned, report.cancelled, report.still_running) == ((), (), ())
        assert report.clean
        assert statuses(pool) == {"completed": 6}

    run(scenario())


def test_finish_in_flight_returns_queued_jobs_and_completes_running_ones() -> None:
    async def scenario() -> None:
        gate = Gate()
        pool = AsyncWorkerPool(workers=2, queue_size=10, record=True)
        handles = [await pool.submit(gate.job, i, task_type="gated") for i in range(5)]
        await until(lambda: len(gate.entered) == 2)
        closing = asyncio.create_task(pool.shutdown("finish_in_flight"))
        await spin()
        for i, handle in enumerate(handles[2:], start=2):  # handed back at once
            assert handle.done()
            exc = handle.exception()
            assert isinstance(exc, JobReturned)
            assert exc.job_id == i
        assert not closing.done()  # the running two still finish
        gate.opened.set()
        report = await closing
        assert [await h for h in handles[:2]] == [0, 1]
        assert report.policy is ShutdownPolicy.FINISH_IN_FLIGHT
        assert sorted(report.completed) == [0, 1]
        assert [r.job_id for r in report.returned] == [2, 3, 4]
        assert [(r.task_type, r.args, r.kwargs) for r in report.returned] == [
            ("gated", (i,), {}) for i in (2, 3, 4)]
        assert report.cancelled == ()
        assert report.clean
        assert gate.entered == [0, 1]  # returned jobs never started
        assert await report.returned[0]() == 2  # the caller can still run a returned job
        assert statuses(pool) == {"completed": 2, "returned": 3}
        records = pool.records().set_index("job_id")
        assert records["status"].tolist() == ["completed"] * 2 + ["returned"] * 3
        assert records["start_s"].isna().tolist() == [False, False, True, True, True]

    run(scenario())


def test_immediate_cancels_running_coroutines_and_queued_jobs() -> None:
    async def scenario() -> None:
        gate = Gate()  # never opened: only cancellation ends these jobs
        pool = AsyncWorkerPool(workers=2, queue_size=10, record=True)
        handles = [await pool.submit(gate.job, i) for i in range(5)]
        await until(lambda: len(gate.entered) == 2)
        report = await pool.shutdown("immediate")
        assert report.policy is ShutdownPolicy.IMMEDIATE
        assert sorted(report.cancelled) == [0, 1, 2, 3, 4]
        assert sorted(gate.cancelled) == [0, 1]  # running coroutines saw CancelledError
        assert gate.entered == [0, 1]  # queued ones never started
        assert report.returned == ()
        assert report.completed == ()
        assert report.clean  # a cancelled coroutine stops at once
        for i, handle in enumerate(handles):
            assert handle.done()
            with pytest.raises(JobCancelled) as info:
                await handle
            assert info.value.job_id == i
        stats = pool.stats()
        assert (stats.running, stats.queued, stats.busy_workers) == (0, 0, 0)
        assert statuses(pool) == {"cancelled": 5}
        assert pool.records()["status"].tolist() == ["cancelled"] * 5

    run(scenario())


def test_immediate_cancels_a_job_run_by_its_caller() -> None:
    async def scenario() -> None:
        gate = Gate()
        pool = AsyncWorkerPool(workers=1, queue_size=0, backpressure="caller_runs")
        await pool.submit(gate.job, "worker")
        await until(lambda: gate.entered == ["worker"])
        caller = asyncio.create_task(pool.submit(gate.job, "caller"))
        await until(lambda: gate.entered == ["worker", "caller"])
        report = await pool.shutdown("immediate")
        handle = await caller  # the submitting task itself is not cancelled
        assert isinstance(handle.exception(), JobCancelled)
        assert sorted(report.cancelled) == [0, 1]
        assert sorted(gate.cancelled) == ["caller", "worker"]
        assert statuses(pool) == {"cancelled": 2}

    run(scenario())


def test_drain_with_deadline_hands_back_what_is_still_queued() -> None:
    async def scenario() -> None:
        gate = Gate()
        pool = AsyncWorkerPool(workers=1, queue_size=5)
        handles = [await pool.submit(gate.job, i) for i in range(3)]
        await until(lambda: gate.entered == [0])
        report = await pool.shutdown("drain", timeout=0.01)
        assert [r.job_id for r in report.returned] == [1, 2]
        assert report.still_running == (0,)
        assert not report.clean
        assert all(isinstance(h.exception(), JobReturned) for h in handles[1:])
        gate.opened.set()
        assert await handles[0] == 0  # the running job still finishes
        assert statuses(pool) == {"completed": 1, "returned": 2}

    run(scenario())


def test_shutdown_from_inside_a_job_does_not_wait_for_itself() -> None:
    """As WorkerPool does: a job shutting down its own pool cannot wait for itself."""

    async def scenario() -> None:
        pool = AsyncWorkerPool(workers=1, queue_size=5)

        async def stop_the_pool() -> str:
            report = await pool.shutdown("finish_in_flight")
            return "stopped" if pool.stats().closed and report.returned else "?"

        gate = Gate()
        handle = await pool.submit(stop_the_pool)
        queued = await pool.submit(gate.job, "queued")
        await until(handle.done)  # a deadlock never gets here
        assert handle.result() == "stopped"
        assert isinstance(queued.exception(), JobReturned)

    run(scenario())


@pytest.mark.parametrize("policy", list(ShutdownPolicy))
def test_submit_after_shutdown_raises_pool_closed(policy: ShutdownPolicy) -> None:
    async def scenario() -> None:
        async def quick() -> int:
            return 1

        pool = AsyncWorkerPool(workers=2, name="jobs")
        await (await pool.submit(quick))
        await pool.shutdown(policy)
        with pytest.raises(PoolClosed) as info:
            await pool.submit(quick)
        assert isinstance(info.value, RuntimeError)
        assert info.value.queue == "jobs"
        assert pool.stats().closed
        assert sum(pool.stats().counts.values()) == 1
        second = await pool.shutdown(policy)  # shutting down again is harmless
        assert second.clean

    run(scenario())


def test_shutdown_of_a_pool_that_never_ran() -> None:
    async def scenario() -> None:
        pool = AsyncWorkerPool(workers=3)
        report = await pool.shutdown()
        assert report.clean
        assert report.completed == ()

    run(scenario())


def test_shutdown_policy_defaults_to_config() -> None:
    async def scenario() -> None:
        gate = Gate()
        pool = AsyncWorkerPool(workers=1, shutdown="finish_in_flight")
        running = await pool.submit(gate.job, 0)
        queued = await pool.submit(gate.job, 1)
        await until(lambda: gate.entered == [0])
        closing = asyncio.create_task(pool.shutdown())
        await spin()
        gate.opened.set()
        report = await closing
        assert report.policy is ShutdownPolicy.FINISH_IN_FLIGHT
        assert await running == 0
        assert isinstance(queued.exception(), JobReturned)

    run(scenario())


# -- records and stats --------------------------------------------------------------------


def test_records_reconcile_with_stats_counts() -> None:
    async def scenario() -> None:
        gate = Gate()

        async def ok() -> int:
            return 1

        async def bad() -> None:
            raise RuntimeError

        async def stuck() -> None:
            await asyncio.Event().wait()

        pool = AsyncWorkerPool(workers=1, queue_size=1, job_timeout=0.05,
                               backpressure="drop_oldest", record=True, name="mix")
        await outcome(await pool.submit(ok))
        await outcome(await pool.submit(bad))
        await outcome(await pool.submit(stuck))  # timeout
        blocker = await pool.submit(gate.job, "blocker")
        await until(lambda: gate.entered == ["blocker"])
        dropped = await pool.submit(ok)
        await pool.submit(ok)  # drops the one before
        assert isinstance(dropped.exception(), JobDropped)
        await pool.submit(ok)  # drops again
        gate.opened.set()
        await outcome(blocker)
        await pool.shutdown()
        counts = pool.stats().counts
        records = pool.records()
        assert set(counts) == {s.value for s in Status}
        by_status = records["status"].value_counts()
        for status, n in counts.items():
            assert by_status.get(status, 0) == n, status
        assert len(records) == sum(counts.values())
        assert records["job_id"].tolist() == sorted(records["job_id"])
        assert set(records["queue"]) == {"mix"}
        assert counts["timeout"] == 1 and counts["failed"] == 1 and counts["dropped"] == 2

    run(scenario())


def test_records_need_record_true() -> None:
    pool = AsyncWorkerPool(workers=1)
    with pytest.raises(ConfigError) as info:
        pool.records()
    assert info.value.field == "record"


# -- randomized stress --------------------------------------------------------------------

OUTCOME_STATUS = {
    JobTimeout: "timeout",
    JobDropped: "dropped",
    JobReturned: "returned",
    JobCancelled: "cancelled",
    ValueError: "failed",
}


@pytest.mark.parametrize("seed", range(12))
def test_stress_every_handle_resolves_exactly_once(seed: int) -> None:
    rng = random.Random(seed)
    backpressure = list(Backpressure)[seed % len(Backpressure)]
    shutdown = list(ShutdownPolicy)[rng.randrange(len(ShutdownPolicy))]
    workers = rng.randint(1, 4)
    queue_size = rng.choice([0, 1, 4, 16, None])
    job_timeout = rng.choice([None, 0.002])
    producers, per_producer = 4, 700
    shutdown_after = rng.randint(0, 4 * per_producer)

    async def job(kind: int, rounds: int) -> int:
        if kind == 0:
            return rounds
        if kind == 1:
            raise ValueError(rounds)
        if kind == 2:
            for _ in range(rounds):
                await asyncio.sleep(0)
            return rounds
        await asyncio.sleep(0.001 * rounds)  # may outlive job_timeout
        return rounds

    async def scenario() -> None:
        loop_errors: list[dict[str, Any]] = []
        asyncio.get_running_loop().set_exception_handler(lambda _l, ctx: loop_errors.append(ctx))
        pool = AsyncWorkerPool(workers=workers, queue_size=queue_size, backpressure=backpressure,
                               block_timeout=0.001, job_timeout=job_timeout, record=True)
        handles: list[asyncio.Future[int]] = []
        resolved: collections.Counter[int] = collections.Counter()
        refused = collections.Counter[str]()

        async def produce(me: int) -> None:
            local = random.Random(seed * 100 + me)
            for _ in range(per_producer):
                kind = local.choices([0, 1, 2, 3], weights=[5, 2, 4, 1])[0]
                try:
                    handle = await pool.submit(job, kind, local.randint(0, 3))
                except QueueFull:
                    refused["rejected"] += 1
                    await asyncio.sleep(0)  # back off: let the workers catch up
                except PoolClosed:
                    refused["closed"] += 1
                    return
                else:
                    index = len(handles)
                    handles.append(handle)
                    handle.add_done_callback(lambda _f, i=index: resolved.update([i]))
                if local.random() < 0.3:
                    await asyncio.sleep(0)

        async def stop() -> Any:
            await until(lambda: len(handles) + refused["rejected"] >= shutdown_after
                        or all(t.done() for t in tasks), spins=10**7)
            return await pool.shutdown(shutdown)

        tasks = [asyncio.create_task(produce(i)) for i in range(producers)]
        stopper = asyncio.create_task(stop())
        await asyncio.gather(*tasks)
        report = await stopper
        await spin(5)  # done-callbacks run soon after the future resolves

        # every handle resolved, and exactly once
        assert all(h.done() for h in handles)
        assert resolved == collections.Counter(range(len(handles)))
        # every submission has exactly one outcome, and the outcomes add up
        counts = pool.stats().counts
        submitted = len(handles) + refused["rejected"]
        assert sum(counts.values()) == submitted
        assert counts["rejected"] == refused["rejected"]
        seen = collections.Counter[str]()
        for h in handles:
            exc = h.exception()
            seen[OUTCOME_STATUS[type(exc)] if exc is not None else "completed"] += 1
        assert {k: v for k, v in counts.items() if k != "rejected" and v} == dict(seen)
        records = pool.records()
        assert len(records) == submitted
        assert records["job_id"].is_unique
        assert records["status"].value_counts().to_dict() == {k: v for k, v in counts.items()}
        # the pool is empty, and the report accounts for what was returned and cancelled
        stats = pool.stats()
        assert (stats.queued, stats.running, stats.overdue) == (0, 0, 0)
        # only shutdown returns or cancels jobs here, so the report names every one of them
        assert len(report.returned) == counts["returned"]
        assert len(report.cancelled) == counts["cancelled"]
        assert report.clean
        # the workers ended cleanly, and the loop saw no stray errors
        others = asyncio.all_tasks() - {asyncio.current_task()}
        if others:
            done, pending = await asyncio.wait(others, timeout=5)
            assert not pending
            assert all(t.exception() is None for t in done)
        assert loop_errors == []

    run(scenario())


# -- regressions from review ----------------------------------------------------------------


def test_a_cancelled_error_raised_inside_a_job_fails_it_and_the_worker_lives_on() -> None:
    async def scenario() -> None:
        async def awaits_a_cancelled_future() -> None:
            future = asyncio.get_running_loop().create_future()
            future.cancel()
            await future  # raises CancelledError, though nobody cancelled this task

        pool = AsyncWorkerPool(workers=1)
        first = await pool.submit(awaits_a_cancelled_future)
        with pytest.raises(asyncio.CancelledError):
            await first
        assert await (await pool.submit(asyncio.sleep, 0, "next")) == "next"
        report = await pool.shutdown("drain")
        assert report.clean and statuses(pool) == {"failed": 1, "completed": 1}

    run(scenario())


def test_a_caller_cancelled_while_running_its_job_leaves_nothing_running() -> None:
    async def scenario() -> None:
        gate = Gate()
        pool = AsyncWorkerPool(workers=1, queue_size=0, backpressure="caller_runs")
        await pool.submit(gate.job, "worker")
        await until(lambda: len(gate.entered) == 1)
        caller = asyncio.create_task(pool.submit(gate.job, "caller"))
        await until(lambda: len(gate.entered) == 2)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        assert pool.stats().running == 1  # only the worker's job
        gate.opened.set()
        report = await pool.shutdown("drain")
        assert report.clean and statuses(pool) == {"completed": 1, "cancelled": 1}

    run(scenario())


def test_cancelling_a_running_jobs_future_cancels_the_job() -> None:
    async def scenario() -> None:
        gate = Gate()
        pool = AsyncWorkerPool(workers=1)
        handle = await pool.submit(gate.job, "x")
        await until(lambda: gate.entered == ["x"])
        handle.cancel()
        await until(lambda: gate.cancelled == ["x"])
        await pool.shutdown()
        assert statuses(pool) == {"cancelled": 1}

    run(scenario())


def test_shutdown_from_a_caller_run_job_does_not_wait_for_itself() -> None:
    async def scenario() -> None:
        gate = Gate()
        pool = AsyncWorkerPool(workers=1, queue_size=0, backpressure="caller_runs")
        await pool.submit(gate.job)
        await until(lambda: len(gate.entered) == 1)
        handle = await pool.submit(pool.shutdown, "finish_in_flight")
        report = await handle
        assert 1 in report.still_running
        gate.opened.set()

    run(scenario())


def test_bad_shutdown_arguments_are_refused_before_anything_closes() -> None:
    async def scenario() -> None:
        pool = AsyncWorkerPool(workers=1)
        for policy, timeout in [("later", None), (None, -1.0)]:
            with pytest.raises(ConfigError):
                await pool.shutdown(policy, timeout)
        assert not pool.stats().closed
        await pool.shutdown()

    run(scenario())
