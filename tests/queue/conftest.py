"""The ``backend`` fixture, run over every store, and symmetric seed/inspect helpers.

Adding a store is one line in ``FACTORIES``: a function that makes a fresh, empty
backend for one test (SQLite: a new file in ``tmp_path``; Redis: a flushed database
on the session's server).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest

from poolsim.queue.backends.base import Backend, Outcome, open_backend
from poolsim.queue.task import State, TaskInfo, new_task_id

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z: every test's "now" starts here
SEEDER = "seeder:1:abc"


def sqlite_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return open_backend(f"sqlite:///{tmp_path}/jobs.db")


FACTORIES: dict[str, Callable[[pytest.FixtureRequest, Path], Backend]] = {
    "sqlite": sqlite_backend,
}


@pytest.fixture(params=sorted(FACTORIES))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    store = FACTORIES[request.param](request, tmp_path)
    yield store
    store.close()


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
