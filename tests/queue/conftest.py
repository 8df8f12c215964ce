"""The ``backend`` and ``queue_url`` fixtures, run over every store, and symmetric
seed/inspect helpers.

Adding a store is one line in ``URLS``: a function that gives a fresh, empty store's URL
for one test (SQLite: a new file in ``tmp_path``; Redis: a flushed database on the
session's own ``redis-server``, started on a free loopback port).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest

from poolsim.queue.backends.base import Backend, Outcome, open_backend
from poolsim.queue.task import State, TaskInfo, new_task_id
from tests.queue.redis_server import RedisServer, redis_server

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z: every test's "now" starts here
SEEDER = "seeder:1:abc"


@pytest.fixture(scope="session")
def redis_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One ``redis-server`` for the session (no persistence), on a free loopback port."""
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


def sqlite_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/jobs.db"


def redis_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    server: RedisServer = request.getfixturevalue("redis_session")
    import redis

    with redis.Redis(port=server.port) as client:
        client.flushall()
    return server.url


URLS: dict[str, Callable[[pytest.FixtureRequest, Path], str]] = {
    "sqlite": sqlite_url,
    "redis": redis_url,
}


@pytest.fixture(params=sorted(URLS))
def queue_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty store's URL, once per backend."""
    return URLS[request.param](request, tmp_path)


@pytest.fixture
def backend(queue_url: str) -> Iterator[Backend]:
    """A fresh, empty store, once per backend."""
    store = open_backend(queue_url)
    yield store
    store.close()


@pytest.fixture
def url(queue_url: str) -> str:
    """``queue_url`` under the name the server-level tests use."""
    return queue_url


@pytest.fixture
def store(backend: Backend) -> Backend:
    """``backend`` under the name the server-level tests use: a view on the same store."""
    return backend


def wait_until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    """Poll ``condition``: a guard against hangs, not a timing check."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("the condition never became true")
        time.sleep(0.005)


def make_task(*, type: str = "t", payload: str = "{}", queue: str = "default",
              max_retry: int = 3, process_at: float = 0.0, retention: float = 0.0,
              id: str | None = None, unique_key: str | None = None,
              unique_until: float | None = None, created_at: float = 0.0) -> TaskInfo:
    """A task as the client would hand it to a backend (state decided by the backend)."""
    return TaskInfo(id=id or new_task_id(), type=type, payload=payload, queue=queue,
                    state=State.PENDING, max_retry=max_retry, process_at=process_at,
                    retention=retention, unique_key=unique_key, unique_until=unique_until,
                    created_at=created_at)


def seed_tasks(backend: Backend, states: Iterable[State | str], *, now: float = T0,
               queue: str = "default", worker: str = SEEDER, lease_s: float = 60.0,
               **fields: object) -> list[TaskInfo]:
    """One task per state given, in ``queue``, put there through the protocol only.

    ``scheduled`` tasks are due an hour after ``now``; ``active`` ones are leased by
    ``worker`` until ``now + lease_s``; ``retry`` ones are due at ``now + 60``;
    ``completed`` ones are kept for a day. Tasks that pass through ``active`` are seeded
    first (a claim takes the oldest pending task), so call this before seeding pending
    tasks of the same queue by other means. Returns the tasks as stored, in input order.
    """
    wanted = [State(s) for s in states]
    order = sorted(range(len(wanted)), key=lambda i: wanted[i] in (State.PENDING,
                                                                   State.SCHEDULED))
    made: dict[int, TaskInfo] = {}
    for i in order:
        state = wanted[i]
        task = make_task(queue=queue,
                         process_at=now + 3600 if state == State.SCHEDULED else now,
                         retention=86400 if state == State.COMPLETED else 0.0,
                         **fields)  # type: ignore[arg-type]
        info = backend.enqueue(task, now=now)
        if state not in (State.PENDING, State.SCHEDULED):
            [info] = backend.claim([queue], worker=worker, now=now, lease_s=lease_s, limit=1)
            assert info.id == task.id
            outcome = {
                State.RETRY: Outcome(state=State.RETRY, status="retried", error="seeded",
                                     retry_at=now + 60),
                State.ARCHIVED: Outcome(state=State.ARCHIVED, status="failed", error="seeded"),
                State.COMPLETED: Outcome(state=State.COMPLETED, status="completed"),
            }.get(state)
            if outcome is not None:
                assert backend.finish(info.id, worker=worker, now=now, outcome=outcome)
            info = backend.get(info.id)
        assert info.state == state
        made[i] = info
    return [made[i] for i in range(len(wanted))]


def tasks_in(backend: Backend, state: State | str, queue: str | None = None) -> list[str]:
    """Ids of the tasks in ``state`` (of ``queue``, or all), in the backend's order."""
    return [t.id for t in backend.list_tasks(state=State(state), queue=queue, limit=10**6)]


def corrupt_payload(url: str, task_id: str, payload: str) -> None:
    """Overwrite a stored task's payload behind the backend's back (bit rot, a buggy
    writer), in whichever store ``url`` names: one branch per backend."""
    if url.startswith("sqlite://"):
        import contextlib
        import sqlite3

        from poolsim.queue.backends.sqlite import parse_url

        with contextlib.closing(sqlite3.connect(parse_url(url)[0])) as db, db:
            changed = db.execute("UPDATE tasks SET payload = ? WHERE id = ?",
                                 (payload, task_id)).rowcount
        assert changed == 1, f"no task {task_id} to corrupt"
    elif url.startswith(("redis://", "rediss://")):
        import redis

        from poolsim.queue.backends.redis import RedisBackend

        store = RedisBackend(url)
        try:  # the task's hash, per the key layout in the module's docstring
            key = f"{store._base(store.get(task_id).queue)}t:{task_id}"
        finally:
            store.close()
        with redis.Redis.from_url(url) as client:
            assert client.exists(key), f"no task {task_id} to corrupt"
            client.hset(key, "payload", payload)
    else:
        raise NotImplementedError(f"corrupt_payload knows no store for {url!r}")
