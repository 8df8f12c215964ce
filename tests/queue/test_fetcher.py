"""The fetcher's claims and the runner's hand-off, against a real store (once per backend):
the default prefetch, back-pressure with prefetched tasks (never more held than
``concurrency + prefetch``), claims of half the prefetch rather than one per finished task,
prefetched tasks handed back at shutdown, each attempt its own ``current_job()``, and the
payload shortcut still refusing what the store should not hold. Waiting is on Events and
on conditions polled with a guard; no wall time is asserted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from poolsim.jobs import JobContext, current_job
from poolsim.pool import WorkerPool
from poolsim.queue import Client, Server, State, Task
from poolsim.queue.attempts import Attempt, Attempts
from poolsim.queue.backends.base import Backend
from poolsim.queue.coroutines import Coroutines
from poolsim.queue.loops import Fetcher
from poolsim.queue.runner import Runner
from poolsim.queue.task import TaskInfo
from tests.queue.conftest import corrupt_payload, wait_until

T0 = 1_700_000_000.0
FAST = {"poll_interval": 0.01, "forward_interval": 0.01, "recover_interval": 0.01,
        "renew_interval": 0.01}


@pytest.fixture
def client(url: str) -> Iterator[Client]:
    with Client(url, clock=lambda: T0) as c:
        yield c


@pytest.fixture
def servers(url: str) -> Iterator[Callable[..., Server]]:
    made: list[Server] = []

    def make(**options: Any) -> Server:
        server = Server(url, **{"clock": lambda: T0, "seed": 1, **FAST, **options})
        made.append(server)
        return server

    yield make
    for server in made:
        server.stop(timeout=5)


class Clock:
    """Epoch seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def active(store: Backend) -> int:
    return len(store.list_tasks(state=State.ACTIVE, limit=10**6))


def pending(store: Backend) -> int:
    return len(store.list_tasks(state=State.PENDING, limit=10**6))


def done(store: Backend) -> int:
    return len(store.history())


# -- defaults -------------------------------------------------------------------------------


def test_the_default_prefetch_is_four_tasks_per_thread_and_zero_claims_for_free_threads(
        url: str) -> None:
    assert Server(url, concurrency=3).prefetch == 12
    assert Server(url).prefetch == 40
    assert Server(url, concurrency=3, prefetch=0).prefetch == 0


# -- back-pressure and claim sizes ----------------------------------------------------------


def test_with_the_default_prefetch_never_more_held_than_concurrency_plus_prefetch(
        servers: Callable[..., Server], client: Client, store: Backend) -> None:
    lock, running, most = threading.Lock(), [0], [0]
    release = threading.Event()
    server = servers(concurrency=2)
    held = server.concurrency + server.prefetch  # 2 + 8

    @server.handler("t")
    def handler(task: Task) -> None:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        release.wait(10)
        with lock:
            running[0] -= 1

    for _ in range(held + 5):
        client.enqueue(Task("t"))
    server.start()
    wait_until(lambda: active(store) == held)
    time.sleep(0.05)  # a negative check: an over-eager fetcher would claim more
    assert active(store) == held
    assert server.statistics().active == held
    assert most[0] == 2  # prefetched tasks wait: never more running than threads
    release.set()
    wait_until(lambda: done(store) == held + 5)
    assert most[0] == 2


def test_a_claim_waits_for_half_the_prefetch_to_be_free(
        servers: Callable[..., Server], client: Client, store: Backend) -> None:
    """concurrency 1, prefetch 4: one claim of 5, then no claim while fewer than 2 places
    are free, then a claim of exactly 2 (not one claim per finished task)."""
    go, started = threading.Semaphore(0), threading.Semaphore(0)
    server = servers(concurrency=1, prefetch=4)

    @server.handler("t")
    def handler(task: Task) -> None:
        started.release()
        assert go.acquire(timeout=10)

    for _ in range(20):
        client.enqueue(Task("t"))
    server.start()
    assert started.acquire(timeout=10)
    wait_until(lambda: active(store) == 5)
    assert server.statistics().claims == 1
    go.release()  # one finishes: one place free, fewer than prefetch // 2
    wait_until(lambda: done(store) == 1)
    assert started.acquire(timeout=10)  # the next prefetched one runs
    time.sleep(0.05)  # a negative check: no claim for a single free place
    assert (server.statistics().claims, active(store)) == (1, 4)
    go.release()  # two free: worth a claim
    wait_until(lambda: done(store) == 2 and server.statistics().claims == 2)
    wait_until(lambda: active(store) == 5)  # refilled by a claim of 2
    for _ in range(18):
        go.release()
    wait_until(lambda: done(store) == 20)


def test_prefetch_zero_claims_for_each_free_thread(
        servers: Callable[..., Server], client: Client, store: Backend) -> None:
    go, started = threading.Semaphore(0), threading.Semaphore(0)
    server = servers(concurrency=2, prefetch=0)

    @server.handler("t")
    def handler(task: Task) -> None:
        started.release()
        assert go.acquire(timeout=10)

    for _ in range(6):
        client.enqueue(Task("t"))
    server.start()
    for _ in range(2):
        assert started.acquire(timeout=10)
    assert active(store) == 2
    go.release()  # one place frees: claimed at once, for that place only
    assert started.acquire(timeout=10)
    wait_until(lambda: done(store) == 1)
    assert active(store) == 2
    for _ in range(5):
        go.release()
    wait_until(lambda: done(store) == 6)


class FakeStore:
    """Records claims; gives ``limit`` tasks per claim."""

    def __init__(self) -> None:
        self.limits: list[int] = []

    def claim(self, queues: list[str], *, limit: int, **kwargs: Any) -> list[TaskInfo]:
        self.limits.append(limit)
        return [TaskInfo(id=f"t{len(self.limits)}-{n}", type="t", payload="{}",
                         queue=queues[0], state=State.ACTIVE, max_retry=1, lease="tok")
                for n in range(limit)]


@pytest.mark.parametrize(("free", "claimed"), [(0, []), (2, []), (3, [3]), (7, [7])])
def test_the_fetcher_claims_only_a_worthwhile_batch_and_dispatches_it_at_once(
        free: int, claimed: list[int]) -> None:
    fake, dispatched = FakeStore(), list[list[TaskInfo]]()
    fetcher = Fetcher(fake, lambda: T0, worker="w", lease_s=60.0,  # type: ignore[arg-type]
                      weights={"default": 1}, strict=None, rng=np.random.default_rng(1),
                      free=lambda: free, dispatch=lambda infos: dispatched.append(list(infos)),
                      interval=1.0, batch=3)
    fetcher.tick()
    assert fake.limits == claimed
    assert [len(infos) for infos in dispatched] == claimed  # one hand-off per claim


# -- threads stuck in handlers that were already decided ----------------------------------


def test_with_every_thread_stuck_in_a_timed_out_handler_the_waiting_tasks_are_handed_back(
        servers: Callable[..., Server], client: Client, store: Backend) -> None:
    """Python cannot stop a thread: a handler that ignores its timeout keeps its thread
    busy, maybe for good. The prefetched tasks waiting for that thread are handed back (for
    another worker to run) and nothing more is claimed until a thread is free again."""
    clock, ran = Clock(), list[str]()
    stuck_in, let_go = threading.Event(), threading.Event()
    server = servers(concurrency=1, lease_s=300, clock=clock,
                     retry_delay=lambda retried: 600.0)  # the default prefetch: 4

    @server.handler("stuck")
    def stuck(task: Task) -> None:
        stuck_in.set()
        let_go.wait(30)  # never looks at current_job().cancelled

    server.handler("t")(lambda task: ran.append(task.payload["n"]))
    stuck_id = client.enqueue(Task("stuck"), timeout=30, max_retry=1).id
    ids = [client.enqueue(Task("t", {"n": str(n)})).id for n in range(4)]
    try:
        server.start()
        assert stuck_in.wait(10)
        wait_until(lambda: active(store) == 5)  # one running, four prefetched
        clock.now += 31  # the stuck attempt times out; its thread stays busy
        wait_until(lambda: (active(store), pending(store)) == (0, 4))  # the four handed
        # back: no longer held and renewed; the stuck one's timeout acknowledged
        assert sorted((r.task_id, r.status) for r in store.history()) == sorted(
            [(stuck_id, "timeout")] + [(i, "returned") for i in ids])
        time.sleep(0.05)  # a negative check: a thread stuck, nothing is claimed
        assert (active(store), pending(store), ran) == (0, 4, [])
        other = servers(concurrency=1, clock=clock)  # another worker runs them
        other.handler("t")(lambda task: ran.append(task.payload["n"]))
        other.start()
        wait_until(lambda: sorted(ran) == ["0", "1", "2", "3"])
        other.stop(timeout=5)
    finally:
        let_go.set()
    wait_until(lambda: server.statistics().active == 0)  # the thread is free again:
    client.enqueue(Task("t", {"n": "4"}))  # the server claims again
    wait_until(lambda: "4" in ran)


def test_a_stuck_thread_shrinks_the_prefetch_in_proportion(
        servers: Callable[..., Server], client: Client, store: Backend) -> None:
    """concurrency 2, prefetch 8, one thread stuck in a timed-out handler: at most
    8 * 1 / 2 = 4 tasks wait for the one usable thread (not 8)."""
    clock = Clock()
    stuck_in, let_go, go = threading.Event(), threading.Event(), threading.Event()
    started = threading.Semaphore(0)
    server = servers(concurrency=2, lease_s=300, clock=clock,
                     retry_delay=lambda retried: 600.0)
    assert server.prefetch == 8

    @server.handler("stuck")
    def stuck(task: Task) -> None:
        stuck_in.set()
        let_go.wait(30)  # never looks at current_job().cancelled

    @server.handler("t")
    def handler(task: Task) -> None:
        started.release()
        assert go.wait(30)

    client.enqueue(Task("stuck"), timeout=30, max_retry=1)
    client.enqueue(Task("t"))
    try:
        server.start()
        assert stuck_in.wait(10) and started.acquire(timeout=10)
        clock.now += 31
        wait_until(lambda: done(store) == 1)  # the stuck one timed out
        for _ in range(20):
            client.enqueue(Task("t"))
        wait_until(lambda: active(store) == 5)  # the running "t" and 4 waiting
        time.sleep(0.05)  # a negative check: the whole prefetch would make it 9
        assert active(store) == 5
        go.set()
        wait_until(lambda: done(store) == 22)  # the one usable thread runs them all
    finally:
        go.set()
        let_go.set()


# -- shutdown ---------------------------------------------------------------------------


def test_shutdown_hands_back_prefetched_tasks_with_the_running_ones(
        servers: Callable[..., Server], client: Client, store: Backend) -> None:
    started = threading.Event()
    server = servers(concurrency=1, prefetch=3)

    @server.handler("t")
    def handler(task: Task) -> None:
        started.set()
        current_job().cancelled.wait(10)  # runs until the shutdown tells it to stop

    ids = [client.enqueue(Task("t")).id for _ in range(10)]
    server.start()
    assert started.wait(10)
    wait_until(lambda: active(store) == 4)
    handed_back = server.stop(timeout=0.2)
    assert sorted(handed_back) == sorted(ids[:4])  # the running one and 3 waiting
    assert active(store) == 0
    assert len(store.list_tasks(state=State.PENDING, limit=100)) == 10
    assert sorted(r.task_id for r in store.history()) == sorted(ids[:4])
    assert {r.status for r in store.history()} == {"returned"}
    assert server.statistics().counts == {"returned": 4}


# -- the runner ----------------------------------------------------------------------------


def test_each_attempt_on_a_thread_has_its_own_job_context(
        servers: Callable[..., Server], client: Client, store: Backend) -> None:
    """A pool thread runs attempt after attempt: each sees its own ``current_job()``, so a
    cancellation of one never reaches the next."""
    seen: list[JobContext] = []
    server = servers(concurrency=1)

    @server.handler("t")
    def handler(task: Task) -> None:
        job = current_job()
        assert not job.cancelled.is_set()
        assert (job.task_type, job.attempt) == ("t", 1)
        seen.append(job)
        job.cancelled.set()  # as a timeout would: must not leak into the next attempt

    for _ in range(6):
        client.enqueue(Task("t"))
    server.start()
    wait_until(lambda: done(store) == 6)
    assert len({id(job) for job in seen}) == 6
    assert len({job.job_id for job in seen}) == 6
    assert {r.status for r in store.history()} == {"completed"}


@pytest.mark.parametrize("payload", ['{"x": 1e999}', '{"x": NaN}', '{"x": [Infinity]}'])
def test_a_stored_payload_that_is_not_canonical_json_is_still_refused(
        servers: Callable[..., Server], client: Client, store: Backend, url: str,
        payload: str) -> None:
    """The runner skips re-encoding plain payloads; a decoded non-finite number is not
    plain and is still refused (archived with the ``PayloadError``), never handled."""
    ran: list[object] = []
    server = servers(concurrency=1)
    server.handler("t")(lambda task: ran.append(task.payload))
    task_id = client.enqueue(Task("t", {"x": 1})).id
    corrupt_payload(url, task_id, payload)
    server.start()
    wait_until(lambda: done(store) == 1)
    assert ran == []
    [info] = store.list_tasks(state=State.ARCHIVED, limit=10)
    assert (info.id, (info.last_error or "").split(":")[0]) == (task_id, "PayloadError")


def test_shutdown_hands_back_prefetched_tasks_at_once_and_waits_only_for_running_ones(
        servers: Callable[..., Server], client: Client, store: Backend) -> None:
    """The waiting ones are handed back at once (pending again, no attempt counted), not
    started during the shutdown's wait, in which the running handler finishes."""
    ran: list[str] = []
    started, finish = threading.Event(), threading.Event()
    server = servers(concurrency=1, prefetch=3)

    @server.handler("t")
    def handler(task: Task) -> None:
        ran.append(task.payload["n"])
        started.set()
        assert finish.wait(10)

    ids = [client.enqueue(Task("t", {"n": str(n)})).id for n in range(6)]
    server.start()
    assert started.wait(10)
    wait_until(lambda: active(store) == 4)
    handed_back: list[str] = []
    stopping = threading.Thread(target=lambda: handed_back.extend(server.stop(timeout=10)))
    stopping.start()
    wait_until(lambda: server.statistics().active == 1)  # the 3 waiting ones let go,
    # and back in the store while the running one still runs: another server may take them
    wait_until(lambda: len(store.list_tasks(state=State.PENDING, limit=100)) == 5)
    assert ran == ["0"] and not finish.is_set()
    finish.set()
    stopping.join(15)
    assert ran == ["0"]  # no prefetched task started during the shutdown
    assert sorted(handed_back) == sorted(ids[1:4])
    assert [r.status for r in store.history() if r.task_id == ids[0]] == ["completed"]
    assert server.statistics().counts == {"completed": 1, "returned": 3}
    assert len(store.list_tasks(state=State.PENDING, limit=100)) == 5


# -- refused attempts ------------------------------------------------------------------------


def _info(n: int) -> TaskInfo:
    return TaskInfo(id=f"t{n}", type="t", payload="{}", queue="default", state=State.ACTIVE,
                    max_retry=1, lease=f"tok{n}")


def test_one_failed_hand_back_does_not_strand_the_other_refused_attempts() -> None:
    """The pool refuses a lane: every waiting attempt is given back, even when giving back
    one of them fails."""
    refused: list[str] = []

    def refuse(attempt: Attempt) -> None:
        refused.append(attempt.info.id)
        if len(refused) == 1:
            raise ConnectionError("the store is away")

    def submit(fn: Callable[[], None]) -> object:
        raise RuntimeError("the pool is closed")

    runner = Runner({}, Attempts(), clock=lambda: T0, retry_delay=lambda retried: 1.0,
                    error_handler=None, settle=lambda settled: None, release=lambda: None,
                    lanes=1, submit=submit, refuse=refuse)
    runner.start([Attempt(_info(n)) for n in range(3)])
    assert refused == ["t0", "t1", "t2"]


@pytest.mark.parametrize("kind", ["thread", "coroutine"])
def test_refused_attempts_whose_hand_back_fails_are_let_go_for_the_recoverer(
        servers: Callable[..., Server], client: Client, store: Backend,
        monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """The pool (or the event loop) refuses the claimed tasks and the store refuses their
    hand-back: none is left held (renewed for ever, never run); their leases lapse and they
    are recovered."""
    clock = Clock()

    def closed(*args: Any, **kwargs: Any) -> object:
        raise RuntimeError("the pool is closed")

    def away(*args: Any, **kwargs: Any) -> int:
        raise ConnectionError("the store is away")

    monkeypatch.setattr(WorkerPool, "submit", closed)
    monkeypatch.setattr(Coroutines, "submit", closed)
    monkeypatch.setattr(type(store), "hand_back", away)
    server = servers(concurrency=1, prefetch=4, async_concurrency=5, lease_s=60, clock=clock)
    if kind == "thread":  # one claim of 5 either way
        server.handler("t")(lambda task: None)
    else:
        @server.handler("t")
        async def handler(task: Task) -> None:
            pass
    ids = [client.enqueue(Task("t")).id for _ in range(5)]
    server.start()
    wait_until(lambda: server.statistics().claims >= 1)
    assert server.statistics().claims == 1
    wait_until(lambda: server.statistics().active == 0)
    time.sleep(0.05)  # a negative check: none comes back to be held
    assert server.statistics().active == 0
    assert active(store) == 5  # their leases, not renewed, until they lapse
    clock.now += 61
    wait_until(lambda: sorted(t.id for t in store.list_tasks(state=State.RETRY, limit=100))
               == sorted(ids))
