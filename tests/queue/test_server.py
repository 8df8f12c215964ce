"""The queue server against a real store, once per backend (conftest's ``queue_url``):
outcomes, leases, back-pressure, queue order, graceful shutdown. Time that matters (back-off,
deadlines, timeouts, lapsed leases) is an injected clock the test moves; waiting is on Events
and on conditions polled with a guard.
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from poolsim.errors import ConfigError, PayloadError, QueueError
from poolsim.jobs import current_job
from poolsim.queue import Client, Server, SkipRetry, State, Task
from poolsim.queue.attempts import ExponentialBackoff
from poolsim.queue.backends.base import Backend, HistoryRow
from poolsim.queue.loops import claim_plan, queue_order
from poolsim.queue.task import Retry, TaskInfo
from tests.queue.conftest import corrupt_payload, wait_until

T0 = 1_700_000_000.0
FAST = {"poll_interval": 0.01, "forward_interval": 0.01, "recover_interval": 0.01,
        "renew_interval": 0.01}


class Clock:
    """Epoch seconds that move only when the test says so."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def client(url: str, clock: Clock) -> Iterator[Client]:
    with Client(url, clock=clock) as c:
        yield c


class Servers:
    """Servers made by a test, all stopped at its end."""

    def __init__(self, url: str, clock: Clock) -> None:
        self.url, self.clock = url, clock
        self.made: list[Server] = []

    def __call__(self, **options: Any) -> Server:
        options = {"clock": self.clock, "seed": 1, **FAST, **options}
        server = Server(self.url, **options)
        self.made.append(server)
        return server

    def stop_all(self) -> None:
        for server in self.made:
            server.stop(timeout=5)


@pytest.fixture
def servers(url: str, clock: Clock) -> Iterator[Servers]:
    made = Servers(url, clock)
    yield made
    made.stop_all()


def history(store: Backend, task_id: str | None = None) -> list[HistoryRow]:
    return [row for row in store.history() if task_id in (None, row.task_id)]


def ended(store: Backend, n: int) -> Callable[[], bool]:
    return lambda: len(store.history()) >= n


def get(store: Backend, task_id: str) -> TaskInfo:
    for state in State:
        for info in store.list_tasks(state=state, limit=10**6):
            if info.id == task_id:
                return info
    raise AssertionError(f"task {task_id} is gone")


# -- outcomes -------------------------------------------------------------------------


def test_success_is_completed_and_the_handler_knows_its_attempt(
        servers: Servers, client: Client, store: Backend) -> None:
    seen: list[tuple[str, int, str]] = []
    server = servers(concurrency=2)

    @server.handler("email")
    def email(task: Task) -> None:
        job = current_job()
        seen.append((task.payload["to"], job.attempt, job.task_type))

    ids = [client.enqueue(Task("email", {"to": f"u{i}"})).id for i in range(5)]
    server.start()
    wait_until(ended(store, 5))
    assert sorted(seen) == [(f"u{i}", 1, "email") for i in range(5)]
    assert {(row.task_id, row.status, row.attempt) for row in history(store)} == {
        (task_id, "completed", 1) for task_id in ids}
    assert store.list_tasks(state=State.ACTIVE) == []
    assert server.statistics().counts == {"completed": 5}


def test_an_exception_retries_with_back_off_then_archives(
        servers: Servers, client: Client, store: Backend, clock: Clock) -> None:
    attempts: list[int] = []
    failures: list[tuple[str, str]] = []
    server = servers(retry_delay=lambda retried: 10.0 * (retried + 1),
                     error_handler=lambda info, exc: failures.append((info.id, repr(exc))))

    @server.handler("flaky")
    def flaky(task: Task) -> None:
        attempts.append(current_job().attempt)
        raise ValueError(f"attempt {current_job().attempt} broke")

    task_id = client.enqueue(Task("flaky"), max_retry=2).id
    server.start()
    wait_until(ended(store, 1))
    info = get(store, task_id)
    assert (info.state, info.retried, info.process_at) == (State.RETRY, 1, T0 + 10)
    assert info.last_error == "ValueError: attempt 1 broke"
    clock.advance(10)  # due: the forwarder makes it pending, the fetcher runs it
    wait_until(ended(store, 2))
    assert get(store, task_id).process_at == T0 + 10 + 20
    clock.advance(20)
    wait_until(ended(store, 3))
    info = get(store, task_id)
    assert (info.state, info.last_error) == (State.ARCHIVED, "ValueError: attempt 3 broke")
    assert attempts == [1, 2, 3]
    assert [(r.status, r.attempt) for r in history(store)] == [
        ("retried", 1), ("retried", 2), ("failed", 3)]
    assert failures == [(task_id, f"ValueError('attempt {n} broke')") for n in (1, 2, 3)]


def test_skip_retry_archives_at_once(servers: Servers, client: Client, store: Backend) -> None:
    server = servers()
    server.handler("bad")(lambda task: (_ for _ in ()).throw(SkipRetry("payload is wrong")))
    task_id = client.enqueue(Task("bad"), max_retry=5).id
    server.start()
    wait_until(ended(store, 1))
    info = get(store, task_id)
    assert (info.state, info.last_error) == (State.ARCHIVED, "SkipRetry: payload is wrong")
    assert [r.status for r in history(store)] == ["failed"]


def test_retry_raised_by_the_handler_uses_its_delay(
        servers: Servers, client: Client, store: Backend) -> None:
    server = servers(retry_delay=lambda retried: 999.0)

    @server.handler("later")
    def later(task: Task) -> None:
        raise Retry(42, "rate limited")

    task_id = client.enqueue(Task("later"), max_retry=3).id
    server.start()
    wait_until(ended(store, 1))
    info = get(store, task_id)
    assert (info.state, info.process_at, info.retried) == (State.RETRY, T0 + 42, 1)
    assert info.last_error == "Retry: rate limited"
    assert [r.status for r in history(store)] == ["retried"]


def test_a_handler_past_its_timeout_fails_that_attempt_and_its_late_result_is_dropped(
        servers: Servers, client: Client, store: Backend, clock: Clock) -> None:
    entered, told, release = threading.Event(), threading.Event(), threading.Event()
    server = servers(retry_delay=lambda retried: 5.0, lease_s=300)

    @server.handler("slow")
    def slow(task: Task) -> None:
        entered.set()
        if current_job().cancelled.wait(10):
            told.set()
        release.wait(10)  # returns "successfully", too late

    task_id = client.enqueue(Task("slow"), timeout=30, max_retry=1).id
    server.start()
    assert entered.wait(10)
    clock.advance(31)
    assert told.wait(10), "the handler was never told it timed out"
    wait_until(ended(store, 1))
    release.set()
    wait_until(lambda: server.statistics().active == 0)
    info = get(store, task_id)
    assert (info.state, info.retried, info.process_at) == (State.RETRY, 1, T0 + 31 + 5)
    assert info.last_error == f"JobTimeout: task {task_id} timed out after 30 s"
    assert [r.status for r in history(store)] == ["timeout"]  # not also "completed"


def test_a_coroutine_handler_is_cancelled_for_real_at_its_timeout(
        servers: Servers, client: Client, store: Backend, clock: Clock) -> None:
    import asyncio

    entered, cancelled = threading.Event(), threading.Event()
    server = servers()

    @server.handler("async")
    async def handler(task: Task) -> None:
        entered.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    task_id = client.enqueue(Task("async"), timeout=5, max_retry=0).id
    server.start()
    assert entered.wait(10)
    clock.advance(6)
    assert cancelled.wait(10)
    wait_until(ended(store, 1))
    assert get(store, task_id).state == State.ARCHIVED
    assert [r.status for r in history(store)] == ["timeout"]


def test_a_coroutine_handler_runs_and_knows_its_attempt(
        servers: Servers, client: Client, store: Backend) -> None:
    seen: list[int] = []
    server = servers()

    @server.handler("async")
    async def handler(task: Task) -> None:
        seen.append(current_job().attempt)

    client.enqueue(Task("async"))
    server.start()
    wait_until(ended(store, 1))
    assert seen == [1]
    assert [r.status for r in history(store)] == ["completed"]


def test_a_task_past_its_deadline_is_archived_without_running(
        servers: Servers, client: Client, store: Backend, clock: Clock) -> None:
    ran: list[str] = []
    server = servers()
    server.handler("t")(lambda task: ran.append("ran"))
    task_id = client.enqueue(Task("t"), deadline=T0 + 5, max_retry=3).id
    clock.advance(10)
    server.start()
    wait_until(ended(store, 1))
    info = get(store, task_id)
    assert info.state == State.ARCHIVED and ran == []
    assert info.last_error is not None and "deadline passed" in info.last_error


def test_an_unknown_task_type_is_archived_naming_the_registered_types(
        servers: Servers, client: Client, store: Backend) -> None:
    errors: list[BaseException] = []
    server = servers(error_handler=lambda info, exc: errors.append(exc))
    server.handler("email")(lambda task: None)
    server.handler("sms")(lambda task: None)
    task_id = client.enqueue(Task("fax"), max_retry=5).id
    server.start()
    wait_until(ended(store, 1))
    info = get(store, task_id)
    assert info.state == State.ARCHIVED
    assert info.last_error == ("QueueError: no handler for task type 'fax'; registered types: "
                               "['email', 'sms']")
    assert [type(e) for e in errors] == [QueueError]


def test_a_corrupt_stored_payload_is_archived_not_retried(
        servers: Servers, client: Client, store: Backend, url: str) -> None:
    errors: list[BaseException] = []
    server = servers(error_handler=lambda info, exc: errors.append(exc))
    server.handler("t")(lambda task: None)
    task_id = client.enqueue(Task("t", {"a": 1}), max_retry=5).id
    corrupt_payload(url, task_id, '{"a": ')  # bit rot, or a buggy writer
    server.start()
    wait_until(ended(store, 1))
    info = get(store, task_id)
    assert info.state == State.ARCHIVED
    assert info.last_error is not None and info.last_error.startswith(
        "PayloadError: the stored payload is corrupt")
    assert [type(e) for e in errors] == [PayloadError]


def test_a_failing_error_handler_is_logged_not_fatal(
        servers: Servers, client: Client, store: Backend,
        caplog: pytest.LogCaptureFixture) -> None:
    def broken(info: TaskInfo, exc: BaseException) -> None:
        raise RuntimeError("the error tracker is down")

    server = servers(error_handler=broken)
    server.handler("bad")(lambda task: 1 / 0)
    server.handler("good")(lambda task: None)
    client.enqueue(Task("bad"), max_retry=0)
    client.enqueue(Task("good"))
    with caplog.at_level(logging.ERROR, logger="poolsim.queue"):
        server.start()
        wait_until(ended(store, 2))
    assert sorted(r.status for r in history(store)) == ["completed", "failed"]
    assert any("error_handler failed" in r.getMessage() for r in caplog.records)


# -- leases -----------------------------------------------------------------------------


def test_a_long_job_keeps_its_lease_and_never_runs_twice(
        url: str, client: Client, store: Backend) -> None:
    """Real time here: the job outlives many lease periods while a second server recovers
    lapsed leases every 10 ms; its lease is renewed, so it never runs twice."""
    runs: list[str] = []
    entered, release = threading.Event(), threading.Event()
    options: dict[str, Any] = {"lease_s": 0.3, "renew_interval": 0.05, "poll_interval": 0.01,
                               "recover_interval": 0.01}
    first, second = Server(url, **options), Server(url, **options)
    for server in (first, second):
        @server.handler("long")
        def long(task: Task) -> None:
            runs.append(f"{task.type} attempt {current_job().attempt}")
            entered.set()
            release.wait(20)

    client.enqueue(Task("long"), max_retry=5)
    try:
        first.start()
        assert entered.wait(10)
        second.start()
        [active] = store.list_tasks(state=State.ACTIVE)
        assert active.lease_until is not None
        claimed_until = active.lease_until
        wait_until(lambda: (store.list_tasks(state=State.ACTIVE)[0].lease_until or 0)
                   > claimed_until + 5 * 0.3)  # held for five more lease periods
        release.set()
        wait_until(ended(store, 1))
    finally:
        release.set()
        first.stop(5)
        second.stop(5)
    assert runs == ["long attempt 1"]
    assert [r.status for r in history(store)] == ["completed"]


def test_a_lost_lease_tells_the_handler_to_stop_and_its_result_is_not_acknowledged(
        servers: Servers, client: Client, store: Backend) -> None:
    entered, told = threading.Event(), threading.Event()
    server = servers(lease_s=30)

    @server.handler("t")
    def handler(task: Task) -> None:
        entered.set()
        if current_job().cancelled.wait(10):
            told.set()

    task_id = client.enqueue(Task("t"), max_retry=3).id
    server.start()
    assert entered.wait(10)
    # Another worker's recoverer, believing this worker dead, takes the task back.
    assert store.recover(now=T0 + 31) == 1
    assert told.wait(10), "the lease keeper never noticed the lost lease"
    wait_until(lambda: server.statistics().active == 0)
    assert [r.status for r in history(store, task_id)] == ["retried"]  # the recovery only
    assert server.statistics().leases_lost == 1


def test_a_stale_attempt_never_acknowledges_the_same_servers_re_claim(
        servers: Servers, client: Client, store: Backend, clock: Clock) -> None:
    """One server on one store: its lease lapses while its handler lives (renewals too
    slow), its own recoverer recovers the task and its own fetcher claims it again. The
    first attempt's late outcome must not be acknowledged against the new claim."""
    entered = {1: threading.Event(), 2: threading.Event()}
    release = {1: threading.Event(), 2: threading.Event()}
    # The lease keeper ticks at start and then only every 15 s (real time): in this test
    # it never renews after the clock moves, as if the process were paused.
    server = servers(lease_s=30, renew_interval=15)

    @server.handler("t")
    def handler(task: Task) -> None:
        attempt = current_job().attempt
        entered[attempt].set()
        release[attempt].wait(10)
        if attempt == 1:
            raise RuntimeError("the first attempt's late outcome")

    task_id = client.enqueue(Task("t"), max_retry=3).id
    server.start()
    try:
        assert entered[1].wait(10)
        clock.advance(31)  # the lease lapses; the server's recoverer takes the task back
        wait_until(lambda: get(store, task_id).state == State.RETRY)
        clock.advance(2)  # past recover_backoff(0): forwarded, and claimed by this server
        assert entered[2].wait(10)
        release[1].set()  # the stale attempt ends while the new claim runs
        wait_until(lambda: server.statistics().leases_lost == 1)
        wait_until(lambda: server.statistics().acks_waiting == 0)
        info = get(store, task_id)
        assert (info.state, info.retried) == (State.ACTIVE, 1)  # still the second claim's
        assert [r.status for r in history(store, task_id)] == ["retried"]  # the recovery
        release[2].set()
        wait_until(ended(store, 2))
    finally:
        release[1].set()
        release[2].set()
    rows = history(store, task_id)
    assert [(r.status, r.attempt) for r in rows] == [("retried", 1), ("completed", 2)]
    assert not any("late outcome" in (r.error or "") for r in rows)  # never written
    stats = server.statistics()
    assert stats.leases_lost == 1 and stats.counts == {"completed": 1}


# -- batched acknowledgements -------------------------------------------------------------


def test_outcomes_are_acknowledged_in_batches(
        servers: Servers, client: Client, store: Backend) -> None:
    """``ack_batch`` outcomes trigger a flush at once; the rest wait for ``ack_interval``."""
    gate = threading.Event()
    server = servers(concurrency=8, ack_batch=4, ack_interval=60.0)
    server.handler("t")(lambda task: gate.wait(10))
    for _ in range(8):
        client.enqueue(Task("t"))
    server.start()
    wait_until(lambda: server.statistics().active == 8)
    gate.set()
    wait_until(ended(store, 4))  # a full batch is written at once, not after 60 s
    server.stop()  # what still waits (fewer than a batch) is flushed by stop
    assert len(history(store)) == 8
    stats = server.statistics()
    assert 1 <= stats.ack_flushes <= 2 and stats.acks_waiting == 0  # not one per task
    assert stats.counts == {"completed": 8}

    lone = servers(ack_batch=1000, ack_interval=0.02)
    lone.handler("u")(lambda task: None)
    client.enqueue(Task("u"))
    lone.start()
    wait_until(ended(store, 9))  # one outcome, flushed by the interval
    lone.stop()  # the flush is counted just after its write: read the count once settled
    assert lone.statistics().ack_flushes == 1


def test_a_settled_unflushed_outcome_keeps_its_lease_and_stop_flushes_it_before_hand_back(
        servers: Servers, client: Client, store: Backend, clock: Clock) -> None:
    entered, release = threading.Event(), threading.Event()
    server = servers(concurrency=2, ack_batch=1000, ack_interval=60.0, shutdown_timeout=0.2)
    server.handler("quick")(lambda task: None)

    @server.handler("stuck")
    def stuck(task: Task) -> None:
        entered.set()
        release.wait(10)

    quick_id = client.enqueue(Task("quick")).id
    stuck_id = client.enqueue(Task("stuck")).id
    server.start()
    assert entered.wait(10)
    wait_until(lambda: server.statistics().acks_waiting == 1)  # quick: settled, not written
    assert history(store) == []
    assert {t.id for t in store.list_tasks(state=State.ACTIVE)} == {quick_id, stuck_id}
    held = get(store, quick_id).lease_until or 0
    clock.advance(1)  # the lease keeper renews the unflushed attempt's lease too
    wait_until(lambda: (get(store, quick_id).lease_until or 0) > held)
    assert server.stop() == [stuck_id]
    release.set()
    assert [r.status for r in history(store, quick_id)] == ["completed"]
    assert [r.status for r in history(store, stuck_id)] == ["returned"]
    assert store.list_tasks(state=State.ACTIVE) == []


def test_a_worker_that_dies_before_flushing_has_its_task_run_again(
        servers: Servers, client: Client, store: Backend, clock: Clock) -> None:
    """At least once: the handler finished, but its outcome was not written when the lease
    was recovered (as if the worker died); the late flush finds the lease gone, and the
    task is retried — it runs again."""
    runs: list[int] = []
    server = servers(ack_batch=1000, ack_interval=60.0, lease_s=30)
    server.handler("t")(lambda task: runs.append(current_job().attempt))
    task_id = client.enqueue(Task("t"), max_retry=3).id
    server.start()
    wait_until(lambda: server.statistics().acks_waiting == 1)
    assert store.recover(now=T0 + 31) == 1  # another worker's recoverer
    server.stop()  # the flush: the lease is gone, nothing is acknowledged
    assert server.statistics().counts == {}
    info = get(store, task_id)
    assert (info.state, info.retried) == (State.RETRY, 1)
    assert [r.status for r in history(store, task_id)] == ["retried"]
    clock.advance(120)  # past any back-off the store gives a recovered task
    again = servers()
    again.handler("t")(lambda task: runs.append(current_job().attempt))
    again.start()
    wait_until(ended(store, 2))
    assert runs == [1, 2]
    assert [r.status for r in history(store, task_id)] == ["retried", "completed"]


def test_prefetch_claims_ahead_of_free_threads_but_runs_no_more_than_concurrency(
        servers: Servers, client: Client, store: Backend) -> None:
    lock, running, most = threading.Lock(), [0], [0]
    two_in, release = threading.Semaphore(0), threading.Event()
    server = servers(concurrency=2, prefetch=3)

    @server.handler("t")
    def handler(task: Task) -> None:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        two_in.release()
        release.wait(10)
        with lock:
            running[0] -= 1

    for _ in range(10):
        client.enqueue(Task("t"))
    server.start()
    for _ in range(2):
        assert two_in.acquire(timeout=10)
    wait_until(lambda: len(store.list_tasks(state=State.ACTIVE)) == 5)
    time.sleep(0.05)  # a negative check: no more than concurrency + prefetch are claimed
    assert len(store.list_tasks(state=State.ACTIVE)) == 5
    release.set()
    wait_until(ended(store, 10))
    assert most[0] == 2


# -- coroutine handlers ------------------------------------------------------------------


def test_a_failing_coroutine_handler_is_retried(
        servers: Servers, client: Client, store: Backend) -> None:
    import asyncio

    seen: list[tuple[int, str]] = []
    server = servers(retry_delay=lambda retried: 0.0)

    @server.handler("async")
    async def handler(task: Task) -> None:
        await asyncio.sleep(0)
        seen.append((current_job().attempt, threading.current_thread().name))
        if current_job().attempt == 1:
            raise ValueError("first attempt fails")

    task_id = client.enqueue(Task("async"), max_retry=3).id
    server.start()
    wait_until(ended(store, 2))
    assert [attempt for attempt, _ in seen] == [1, 2]
    assert all(name.startswith("poolsim-queue-loop") for _, name in seen)  # the server's loop
    assert [(r.status, r.error) for r in history(store, task_id)] == [
        ("retried", "ValueError: first attempt fails"), ("completed", None)]


def test_many_coroutine_handlers_overlap_on_one_loop(
        servers: Servers, client: Client, store: Backend) -> None:
    """50 handlers that each await 50 ms on 2 threads' worth of ``concurrency``: overlap is
    measured by counting handlers running at once, not by wall time."""
    import asyncio

    running, most = [0], [0]  # touched only on the server's one event loop
    server = servers(concurrency=2, async_concurrency=64)

    @server.handler("nap")
    async def nap(task: Task) -> None:
        running[0] += 1
        most[0] = max(most[0], running[0])
        try:
            await asyncio.sleep(0.05)
        finally:
            running[0] -= 1

    for _ in range(50):
        client.enqueue(Task("nap"))
    server.start()
    wait_until(ended(store, 50))
    assert most[0] >= 20, most[0]  # far beyond the 2 threads; ideally all 50 at once
    assert server.statistics().active == 0
    assert Counter(r.status for r in history(store)) == {"completed": 50}


def test_graceful_stop_hands_back_running_coroutine_handlers_and_cancels_them(
        servers: Servers, client: Client, store: Backend) -> None:
    import asyncio

    entered, cancelled = threading.Semaphore(0), threading.Semaphore(0)
    server = servers(concurrency=4, shutdown_timeout=0.2)

    @server.handler("quick")
    async def quick(task: Task) -> None:
        await asyncio.sleep(0.01)

    @server.handler("stuck")
    async def stuck(task: Task) -> None:
        entered.release()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.release()
            raise

    quick_id = client.enqueue(Task("quick")).id
    stuck_ids = {client.enqueue(Task("stuck")).id for _ in range(2)}
    server.start()
    for _ in range(2):
        assert entered.acquire(timeout=10)
    wait_until(ended(store, 1))
    assert set(server.stop()) == stuck_ids
    for _ in range(2):
        assert cancelled.acquire(timeout=10)
    assert [r.status for r in history(store, quick_id)] == ["completed"]
    for task_id in stuck_ids:
        assert (get(store, task_id).state, [r.status for r in history(store, task_id)]) == (
            State.PENDING, ["returned"])


# -- fetching ---------------------------------------------------------------------------


def test_never_more_tasks_active_than_concurrency(
        servers: Servers, client: Client, store: Backend) -> None:
    lock, running, most = threading.Lock(), [0], [0]
    three_in, release = threading.Semaphore(0), threading.Event()
    server = servers(concurrency=3, prefetch=0)

    @server.handler("t")
    def handler(task: Task) -> None:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        three_in.release()
        release.wait(10)
        with lock:
            running[0] -= 1

    for _ in range(12):
        client.enqueue(Task("t"))
    server.start()
    for _ in range(3):
        assert three_in.acquire(timeout=10)
    time.sleep(0.1)  # give an over-eager fetcher every chance to claim more (a negative check)
    assert len(store.list_tasks(state=State.ACTIVE)) == 3  # claimed == held, not more
    assert len(store.list_tasks(state=State.PENDING)) == 9
    assert server.statistics().active == 3
    release.set()
    wait_until(ended(store, 12))
    assert most[0] == 3


def test_weighted_queues_share_claims_by_weight(
        servers: Servers, client: Client, store: Backend) -> None:
    """{critical: 6, default: 3, low: 1} with plenty of work everywhere: of 600 tasks
    claimed, each queue's share is within 0.06 of 0.6 / 0.3 / 0.1 (about 3 standard
    deviations of a binomial share at n = 600; seeded, so the run is repeatable)."""
    weights = {"critical": 6, "default": 3, "low": 1}
    done, counted = threading.Event(), Counter[str]()
    server = servers(concurrency=4, queues=weights)

    @server.handler("t")
    def handler(task: Task) -> None:
        counted[task.payload["q"]] += 1
        if sum(counted.values()) >= 600:
            done.set()

    for queue in weights:  # low's tasks are the oldest: order alone would favour it
        for _ in range(700):
            client.enqueue(Task("t", {"q": queue}), queue=queue)
    server.start()
    assert done.wait(60)
    server.stop()
    claimed = Counter(row.queue for row in history(store))
    total = sum(claimed.values())
    shares = {queue: claimed[queue] / total for queue in weights}
    assert total >= 600
    for queue, weight in weights.items():
        assert abs(shares[queue] - weight / 10) < 0.06, shares


def test_claim_plan_draws_an_order_per_free_place() -> None:
    rng = np.random.default_rng(7)
    weights = {"critical": 6, "default": 3, "low": 1}
    firsts = Counter(queue_order(weights, rng)[0] for _ in range(20_000))
    assert {q: round(n / 20_000, 2) for q, n in firsts.items()} == pytest.approx(
        {"critical": 0.6, "default": 0.3, "low": 0.1}, abs=0.015)
    assert sorted(queue_order(weights, rng)) == sorted(weights)  # every queue, once
    plan = claim_plan(weights, None, 50, rng)
    assert sum(n for _, n in plan) == 50 and len(plan) <= 3
    assert claim_plan(weights, ["low", "default"], 5, rng) == [(["low", "default"], 5)]


def test_strict_priority_empties_higher_queues_first(
        servers: Servers, client: Client, store: Backend) -> None:
    order: list[str] = []
    server = servers(concurrency=1, queues=["critical", "default", "low"])
    server.handler("t")(lambda task: order.append(task.payload["q"]))
    for queue in ("low", "default", "critical") * 4:
        client.enqueue(Task("t", {"q": queue}), queue=queue)
    server.start()
    wait_until(ended(store, 12))
    assert order == ["critical"] * 4 + ["default"] * 4 + ["low"] * 4


def test_strict_true_orders_a_dict_by_weight(servers: Servers) -> None:
    server = servers(queues={"low": 1, "critical": 6, "default": 3}, strict=True)
    assert server.strict == ["critical", "default", "low"]


def test_a_paused_queue_is_skipped_until_unpaused(
        servers: Servers, client: Client, store: Backend) -> None:
    seen: list[str] = []
    server = servers(queues={"default": 1, "low": 1})
    server.handler("t")(lambda task: seen.append(task.payload["q"]))
    store.pause("low", True)
    for queue in ("low", "default", "low", "default"):
        client.enqueue(Task("t", {"q": queue}), queue=queue)
    server.start()
    wait_until(ended(store, 2))
    time.sleep(0.05)  # a negative check: several polls pass without touching "low"
    assert seen == ["default", "default"]
    assert len(store.list_tasks(state=State.PENDING, queue="low")) == 2
    store.pause("low", False)
    wait_until(ended(store, 4))
    assert seen == ["default", "default", "low", "low"]


# -- shutting down ------------------------------------------------------------------------


def test_graceful_stop_waits_for_quick_handlers_and_hands_back_slow_ones(
        servers: Servers, client: Client, store: Backend) -> None:
    entered = threading.Semaphore(0)
    quick_may_finish, release = threading.Event(), threading.Event()
    acked_late: list[str] = []
    server = servers(concurrency=3, shutdown_timeout=0.3)

    @server.handler("quick")
    def quick(task: Task) -> None:
        entered.release()
        quick_may_finish.wait(10)

    @server.handler("stuck")
    def stuck(task: Task) -> None:
        entered.release()
        release.wait(10)
        acked_late.append(task.type)

    quick_id = client.enqueue(Task("quick")).id
    stuck_ids = {client.enqueue(Task("stuck")).id for _ in range(2)}
    server.start()
    for _ in range(3):
        assert entered.acquire(timeout=10)
    threading.Timer(0.05, quick_may_finish.set).start()  # finishes inside the window
    handed_back = server.stop()
    assert set(handed_back) == stuck_ids
    release.set()  # the stuck handlers return now: their results must not be acknowledged
    wait_until(lambda: len(acked_late) == 2)
    time.sleep(0.05)
    assert [r.status for r in history(store, quick_id)] == ["completed"]
    for task_id in stuck_ids:
        info = get(store, task_id)
        assert (info.state, info.retried, info.worker) == (State.PENDING, 0, None)
        assert [r.status for r in history(store, task_id)] == ["returned"]
    assert server.stop() == []  # stopping twice is harmless


def test_run_returns_after_sigterm_and_restores_the_handlers(
        servers: Servers, client: Client, store: Backend) -> None:
    entered = threading.Event()
    server = servers(shutdown_timeout=5)

    @server.handler("t")
    def handler(task: Task) -> None:
        entered.set()
        time.sleep(0.05)  # still running when the signal arrives: it finishes

    client.enqueue(Task("t"))
    before = signal.getsignal(signal.SIGTERM)

    def send() -> None:
        assert entered.wait(10)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=send, daemon=True).start()
    server.run()
    assert signal.getsignal(signal.SIGTERM) is before
    assert [r.status for r in history(store)] == ["completed"]


# -- whatever escapes a handler, the attempt is decided ------------------------------------


@pytest.mark.parametrize("error", [SystemExit(3), KeyboardInterrupt()])
def test_a_handler_raising_a_base_exception_is_failed_and_frees_its_place(
        servers: Servers, client: Client, store: Backend, error: BaseException) -> None:
    seen: list[BaseException] = []
    server = servers(concurrency=1, error_handler=lambda info, exc: seen.append(exc))

    def bad(task: Task) -> None:
        raise error

    server.handler("bad")(bad)
    server.handler("good")(lambda task: None)
    retried = client.enqueue(Task("bad"), max_retry=1).id
    archived = client.enqueue(Task("bad"), max_retry=0).id
    server.start()
    wait_until(ended(store, 2))
    info = get(store, retried)
    assert (info.state, info.retried) == (State.RETRY, 1)
    assert info.last_error is not None and info.last_error.startswith(type(error).__name__)
    assert get(store, archived).state == State.ARCHIVED
    assert [type(e) for e in seen] == [type(error)] * 2
    good = client.enqueue(Task("good")).id  # the only place was freed: it still runs
    wait_until(ended(store, 3))
    assert [r.status for r in history(store, good)] == ["completed"]
    assert server.statistics().active == 0 and store.list_tasks(state=State.ACTIVE) == []


def test_a_coroutine_handler_raising_a_base_exception_is_failed(
        servers: Servers, client: Client, store: Backend) -> None:
    server = servers()

    async def bad(task: Task) -> None:
        raise SystemExit(1)

    server.handler("bad")(bad)
    server.handler("good")(_async_noop)
    task_id = client.enqueue(Task("bad"), max_retry=0).id
    server.start()
    wait_until(ended(store, 1))
    info = get(store, task_id)
    assert info.state == State.ARCHIVED and (info.last_error or "").startswith("SystemExit")
    good = client.enqueue(Task("good")).id  # the event loop still runs coroutines
    wait_until(ended(store, 2))
    assert [r.status for r in history(store, good)] == ["completed"]


async def _async_noop(task: Task) -> None:
    return None


@pytest.mark.parametrize(("raised", "state", "retried"), [
    (RuntimeError("decoder bug"), State.RETRY, 1),  # unexpected: failed, per its budget
    (ConfigError("type", "", "a non-empty task type string"), State.ARCHIVED, 1),  # corrupt
])
def test_a_stored_task_that_cannot_be_made_is_decided_not_left_active(
        servers: Servers, client: Client, store: Backend, monkeypatch: pytest.MonkeyPatch,
        raised: Exception, state: State, retried: int) -> None:
    def task(self: TaskInfo) -> Task:
        raise raised

    server = servers()
    server.handler("t")(lambda task: None)
    task_id = client.enqueue(Task("t"), max_retry=3).id
    monkeypatch.setattr(TaskInfo, "task", task)
    server.start()
    wait_until(ended(store, 1))
    info = get(store, task_id)
    assert (info.state, info.retried) == (state, retried)
    assert (info.last_error or "").startswith(type(raised).__name__)
    assert server.statistics().active == 0


def test_a_failed_renewal_is_retried_soon_not_a_whole_interval_later() -> None:
    from poolsim.queue.attempts import Attempt, Attempts
    from poolsim.queue.loops import LeaseKeeper

    calls: list[float] = []

    class Flaky:
        def renew(self, ids: list[str], **kwargs: Any) -> list[str]:
            calls.append(time.monotonic())
            if len(calls) == 1:
                raise sqlite3.OperationalError("database is locked")
            return list(kwargs["leases"] or ids)

    attempts = Attempts()
    attempts.add(Attempt(TaskInfo(id="a", type="t", payload="{}", queue="q",
                                  state=State.ACTIVE, max_retry=1, lease="tok")))
    keeper = LeaseKeeper(Flaky(), lambda: T0, attempts, worker="w",  # type: ignore[arg-type]
                         lease_s=60.0, interval=20.0, on_lost=lambda a: None)
    assert keeper.retry_after_error == 1.0  # min(1 s, interval / 3)
    keeper.start()
    try:
        wait_until(lambda: len(calls) >= 2, timeout=5)  # not 20 s later
    finally:
        keeper.stop(1)
    assert calls[1] - calls[0] < 2.0
    assert LeaseKeeper(Flaky(), lambda: T0, attempts, worker="w",  # type: ignore[arg-type]
                       lease_s=0.3, interval=0.15, on_lost=lambda a: None
                       ).retry_after_error == pytest.approx(0.05)


# -- configuration and observability --------------------------------------------------------


@pytest.mark.parametrize(("options", "field"), [
    ({"concurrency": 0}, "concurrency"),
    ({"concurrency": True}, "concurrency"),
    ({"queues": {}}, "queues"),
    ({"queues": {"a": 0}}, "queues['a']"),
    ({"queues": ["a", "a"]}, "queues"),
    ({"queues": "default"}, "queues"),
    ({"lease_s": 0}, "lease_s"),
    ({"shutdown_timeout": float("nan")}, "shutdown_timeout"),
    ({"async_concurrency": 0}, "async_concurrency"),
    ({"ack_batch": 0}, "ack_batch"),
    ({"ack_interval": 0}, "ack_interval"),
    ({"prefetch": -1}, "prefetch"),
    ({"lease_s": 30, "renew_interval": 16}, "renew_interval"),
    ({"lease_s": 1, "renew_interval": 0.6}, "renew_interval"),
    ({"renew_interval": 0}, "renew_interval"),
    ({"recover_interval": -1}, "recover_interval"),
])
def test_bad_options_are_refused_up_front(url: str, options: dict[str, Any],
                                          field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Server(url, **options)
    assert caught.value.field == field


def test_a_task_type_has_one_handler(url: str) -> None:
    server = Server(url)
    server.handler("t")(lambda task: None)
    with pytest.raises(ConfigError):
        server.handler("t")(lambda task: None)


def test_exponential_back_off_with_full_jitter_is_seeded_and_capped() -> None:
    a, b = ExponentialBackoff(seed=3), ExponentialBackoff(seed=3)
    delays = [a(n) for n in range(20)]
    assert delays == [b(n) for n in range(20)]
    assert all(0 <= d <= min(3600, 2 ** n) for n, d in enumerate(delays))
    assert ExponentialBackoff(base=1, cap=5, seed=1)(1000) <= 5


def test_metrics_are_labelled_by_queue(servers: Servers, client: Client,
                                       store: Backend) -> None:
    registry = CollectorRegistry()
    server = servers(registry=registry, queues={"critical": 1, "low": 1})
    server.handler("t")(lambda task: None)
    client.enqueue(Task("t"), queue="critical")
    client.enqueue(Task("t"), queue="low")
    server.start()
    wait_until(ended(store, 2))
    wait_until(lambda: registry.get_sample_value(
        "worker_jobs_total", {"queue": "low", "status": "completed"}) == 1)
    assert registry.get_sample_value(
        "worker_jobs_total", {"queue": "critical", "status": "completed"}) == 1
