"""``Client.enqueue``: every option checked up front, the info it returns, duplicates refused."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import poolsim.queue
from poolsim.errors import ConfigError, PayloadError, TaskAlreadyExists
from poolsim.queue import Client, State, Task
from tests.queue.conftest import T0, tasks_in


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def client(queue_url: str, clock: Clock) -> Iterator[Client]:
    with Client(queue_url, clock=clock) as c:
        yield c


TASK = Task("email:welcome", {"user_id": "42"})


def test_enqueue_returns_the_stored_task(client: Client) -> None:
    info = client.enqueue(TASK, queue="critical", max_retry=3, timeout=30)
    assert (info.type, info.data(), info.queue, info.state) == (
        "email:welcome", {"user_id": "42"}, "critical", State.PENDING)
    assert (info.max_retry, info.timeout, info.retried, info.attempt) == (3, 30.0, 0, 1)
    assert (info.created_at, info.process_at, info.deadline, info.unique_key) == (
        T0, T0, None, None)
    assert len(info.id) == 32
    assert client.backend.get(info.id) == info


def test_defaults(client: Client) -> None:
    info = client.enqueue(TASK)
    assert (info.queue, info.max_retry, info.timeout, info.deadline, info.retention) == (
        "default", 25, None, None, 0.0)


@pytest.mark.parametrize(("options", "state", "process_at"), [
    ({"process_in": 60}, State.SCHEDULED, T0 + 60),
    ({"process_in": 0}, State.PENDING, T0),
    ({"process_at": T0 + 5.5}, State.SCHEDULED, T0 + 5.5),
    ({"process_at": T0 - 100}, State.PENDING, T0 - 100),
    ({"process_at": np.float64(T0 + 1)}, State.SCHEDULED, T0 + 1),
])
def test_schedule(client: Client, options: dict[str, Any], state: State,
                  process_at: float) -> None:
    info = client.enqueue(TASK, **options)
    assert (info.state, info.process_at) == (state, process_at)
    assert tasks_in(client.backend, state) == [info.id]


def test_options_are_stored(client: Client) -> None:
    info = client.enqueue(TASK, deadline=T0 + 600, retention=3600, task_id="welcome-42",
                          unique_for=60, max_retry=np.int64(0))  # type: ignore[arg-type]
    assert (info.id, info.deadline, info.retention, info.max_retry) == (
        "welcome-42", T0 + 600, 3600.0, 0)
    assert info.unique_until == T0 + 60
    assert info.unique_key is not None and info.unique_key.startswith("default:email:welcome:")


BAD = [
    ("task", {"task": "email:welcome"}),
    ("queue", {"queue": ""}),
    ("queue", {"queue": "{braces}"}),
    ("queue", {"queue": "a b"}),
    ("queue", {"queue": 3}),
    ("queue", {"queue": "x" * 101}),
    ("max_retry", {"max_retry": -1}),
    ("max_retry", {"max_retry": 2.0}),
    ("max_retry", {"max_retry": True}),
    ("max_retry", {"max_retry": "3"}),
    ("timeout", {"timeout": 0}),
    ("timeout", {"timeout": -1}),
    ("timeout", {"timeout": math.nan}),
    ("timeout", {"timeout": math.inf}),
    ("timeout", {"timeout": "30"}),
    ("deadline", {"deadline": T0}),  # already passed
    ("deadline", {"deadline": T0 + 10, "process_in": 10}),  # never runs
    ("deadline", {"deadline": False}),
    ("process_at", {"process_at": -1}),
    ("process_at", {"process_at": math.nan}),
    ("process_at", {"process_at": "tomorrow"}),
    ("process_in", {"process_in": -0.1}),
    ("process_in", {"process_in": math.inf}),
    ("process_in", {"process_at": T0 + 1, "process_in": 1}),
    ("unique_for", {"unique_for": 0}),
    ("unique_for", {"unique_for": -5}),
    ("unique_for", {"unique_for": math.nan}),
    ("retention", {"retention": -1}),
    ("retention", {"retention": math.inf}),
    ("task_id", {"task_id": ""}),
    ("task_id", {"task_id": "has space"}),
    ("task_id", {"task_id": 42}),
    ("task_id", {"task_id": "x" * 201}),
]


@pytest.mark.parametrize(("field", "options"), BAD, ids=[f"{f}-{i}" for i, (f, _) in
                                                          enumerate(BAD)])
def test_a_bad_option_is_refused_by_name(client: Client, field: str,
                                         options: dict[str, Any]) -> None:
    options = dict(options)  # BAD's dicts are shared by every backend's run: pop a copy
    task = options.pop("task", TASK)
    with pytest.raises(ConfigError) as caught:
        client.enqueue(task, **options)
    assert caught.value.field == field
    assert field in str(caught.value)
    assert all(not tasks_in(client.backend, s) for s in State)  # nothing stored


def test_a_duplicate_unique_task_is_refused_until_the_key_expires(client: Client,
                                                                 clock: Clock) -> None:
    first = client.enqueue(TASK, unique_for=60)
    with pytest.raises(TaskAlreadyExists) as caught:
        client.enqueue(Task("email:welcome", {"user_id": "42"}), unique_for=60)
    assert (caught.value.key, caught.value.queue) == (first.unique_key, "default")
    client.enqueue(TASK, unique_for=60, queue="low")  # another queue: another key
    client.enqueue(Task("email:welcome", {"user_id": "43"}), unique_for=60)  # another payload
    client.enqueue(TASK)  # not unique itself
    clock.now += 60
    client.enqueue(TASK, unique_for=60)
    assert len(tasks_in(client.backend, State.PENDING)) == 5


def test_a_reused_task_id_is_refused(client: Client) -> None:
    client.enqueue(TASK, task_id="welcome-42")
    with pytest.raises(TaskAlreadyExists):
        client.enqueue(Task("other"), task_id="welcome-42")


def test_a_payload_that_is_not_json_never_reaches_the_client() -> None:
    with pytest.raises(PayloadError, match="JSON"):
        Task("t", {"when": object()})


def test_bad_url_and_clock() -> None:
    with pytest.raises(ConfigError) as caught:
        Client("postgres://localhost/jobs")
    assert caught.value.field == "url"
    with pytest.raises(ConfigError) as caught:
        Client("sqlite:///x.db", clock=123)  # type: ignore[arg-type]
    assert caught.value.field == "clock"


def test_exports() -> None:
    assert poolsim.queue.__all__ == sorted(poolsim.queue.__all__)
    for name in ("Client", "Task", "TaskInfo", "State", "SkipRetry", "Retry",
                 "TaskAlreadyExists", "TaskNotFound", "PayloadError", "BackendUnavailable"):
        assert name in poolsim.queue.__all__ and hasattr(poolsim.queue, name)
