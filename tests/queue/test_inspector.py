"""The inspector over a real store: stats, listing, the fixes, and the history as a jobs frame."""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import pytest

from poolsim import summarize
from poolsim.errors import ConfigError, TaskNotFound
from poolsim.queue import Client, Inspector, SkipRetry, State, Task
from poolsim.queue.backends.base import Backend, HistoryRow, Outcome
from poolsim.queue.inspector import history_frame
from poolsim.queue.server import Server
from poolsim.records import JOBS_COLUMNS
from tests.queue.conftest import T0, make_task, seed_tasks


@pytest.fixture
def inspector(backend: Backend) -> Inspector:
    return Inspector(backend, clock=lambda: T0 + 30)


def test_stats_counts_every_state_per_queue(backend: Backend, inspector: Inspector) -> None:
    seed_tasks(backend, list(State))
    seed_tasks(backend, ["pending", "pending"], queue="critical", now=T0 + 10)
    by_queue = {q.queue: q for q in inspector.stats()}
    assert sorted(by_queue) == ["critical", "default"]
    assert dict(by_queue["default"].counts) == {state: 1 for state in State}
    assert by_queue["critical"].counts[State.PENDING] == 2
    assert by_queue["critical"].oldest_pending_age_s == pytest.approx(20.0)  # latency
    assert by_queue["default"].processed_today == 3  # retry, archived, completed attempts
    assert by_queue["default"].failed_today == 2
    assert not by_queue["critical"].paused


def test_pause_and_unpause(backend: Backend, inspector: Inspector) -> None:
    seed_tasks(backend, ["pending"], queue="low")
    inspector.pause("low")
    assert [q.paused for q in inspector.stats()] == [True]
    assert backend.claim(["low"], worker="w", now=T0, lease_s=10, limit=1) == []
    inspector.unpause("low")
    assert [q.paused for q in inspector.stats()] == [False]


def test_list_by_state_and_queue_with_paging(backend: Backend, inspector: Inspector) -> None:
    a = seed_tasks(backend, ["archived", "archived", "archived"], queue="a")
    b = seed_tasks(backend, ["archived"], queue="b")
    assert [i.id for i in inspector.list("archived", queue="a")] == [t.id for t in a]
    assert [i.id for i in inspector.list(State.ARCHIVED, queue="a", limit=1, offset=1)] == [
        a[1].id]
    assert {i.id for i in inspector.list("archived")} == {t.id for t in a + b}
    assert inspector.list("pending") == []
    with pytest.raises(ConfigError, match="state='lost'"):
        inspector.list("lost")
    with pytest.raises(ConfigError, match="limit"):
        inspector.list("pending", limit=-1)


def test_requeue_archive_delete(backend: Backend, inspector: Inspector) -> None:
    archived, pending = seed_tasks(backend, ["archived", "pending"])
    info = inspector.requeue(archived.id)
    assert (info.state, info.retried) == (State.PENDING, 0)
    assert inspector.archive(pending.id).state == State.ARCHIVED
    inspector.delete(pending.id)
    assert [i.id for i in inspector.list("archived")] == []
    for act in (inspector.requeue, inspector.archive, inspector.delete):
        with pytest.raises(TaskNotFound, match="no task with id 'nope'"):
            act("nope")


def test_history_frame_is_the_jobs_frame(backend: Backend) -> None:
    for k, type_ in enumerate(["a", "b", "c"]):
        backend.enqueue(make_task(type=type_, id=type_, max_retry=1), now=T0 + k)
    first = backend.claim(["default"], worker="w1", now=T0 + 3, lease_s=60, limit=2)
    [third] = backend.claim(["default"], worker="w2", now=T0 + 4, lease_s=60, limit=1)
    assert [t.id for t in first] == ["a", "b"] and third.id == "c"
    done = Outcome(state=State.COMPLETED, status="completed")
    again = Outcome(state=State.RETRY, status="retried", error="boom", retry_at=T0 + 10)
    dead = Outcome(state=State.ARCHIVED, status="failed", error="bad payload")
    backend.finish("a", worker="w1", now=T0 + 5, outcome=done)
    backend.finish("b", worker="w1", now=T0 + 6, outcome=again)
    backend.finish("c", worker="w2", now=T0 + 7, outcome=dead)
    backend.forward(now=T0 + 10)
    [_b] = backend.claim(["default"], worker="w2", now=T0 + 11, lease_s=60, limit=1)
    backend.finish("b", worker="w2", now=T0 + 12, outcome=done)

    frame = Inspector(backend).history_frame()
    assert list(frame.columns) == list(JOBS_COLUMNS)
    assert frame["job_id"].tolist() == [0, 1, 2, 3]
    assert frame["task_type"].tolist() == ["a", "b", "c", "b"]
    assert frame["status"].astype(str).tolist() == ["completed", "retried", "failed",
                                                    "completed"]
    assert frame["arrival_s"].tolist() == [0.0, 1.0, 2.0, 10.0]  # the retry was ready at +10
    assert frame["start_s"].tolist() == [3.0, 3.0, 4.0, 11.0]
    assert frame["end_s"].tolist() == [5.0, 6.0, 7.0, 12.0]
    assert frame["worker"].tolist() == [0, 0, 1, 1]
    assert frame["attempt"].tolist() == [1, 1, 1, 2]
    assert frame.attrs["origin_epoch_s"] == T0

    summary = summarize(frame)
    assert summary.counts["completed"] == 2 and summary.counts["failed"] == 1
    assert summary.latency_max == pytest.approx(5.0)  # a: 0 -> 5
    assert summary.wait_mean == pytest.approx((3 + 2 + 2 + 1) / 4)
    since = Inspector(backend).history_frame(since=T0 + 7)
    assert since["task_type"].tolist() == ["c", "b"]
    assert since["arrival_s"].tolist() == [0.0, 8.0]  # relative to its own earliest row


def test_history_frame_maps_unknown_statuses_and_missing_workers() -> None:
    rows = [HistoryRow(task_id="x", type="t", queue="q", enqueued_at=100.0, started_at=None,
                       ended_at=101.0, status=status, worker=None, attempt=1)
            for status in ("archived", "returned", "weird")]
    frame = history_frame(rows)
    assert frame["status"].astype(str).tolist() == ["failed", "returned", "failed"]
    assert frame["worker"].isna().all()
    assert np.isnan(frame["start_s"]).all()
    empty = history_frame([])
    assert list(empty.columns) == list(JOBS_COLUMNS) and len(empty) == 0
    assert isinstance(summarize(empty).jobs, int)


@pytest.mark.slow
def test_a_real_queue_runs_through_summarize(queue_url: str) -> None:
    url = queue_url
    with Client(url) as client:
        for n in range(20):
            client.enqueue(Task("work", {"n": n}), queue="default" if n % 2 else "critical",
                           max_retry=0)
    server = Server(url, concurrency=4, queues={"critical": 2, "default": 1},
                    poll_interval=0.01)
    seen: list[int] = []

    @server.handler("work")
    def work(task: Task) -> None:
        seen.append(task.payload["n"])
        if task.payload["n"] == 7:
            raise SkipRetry("seven is unlucky")

    server.start()
    try:
        with Inspector(url) as inspector:
            deadline = time.monotonic() + 20
            while len(inspector.history_frame()) < 20 and time.monotonic() < deadline:
                time.sleep(0.02)
            frame = inspector.history_frame()
            stats = {q.queue: q for q in inspector.stats()}
    finally:
        server.stop()
    summary = summarize(frame)
    assert summary.jobs == 20
    assert summary.counts["completed"] == 19 and summary.counts["failed"] == 1
    assert set(frame["queue"]) == {"critical", "default"}
    assert frame["worker"].nunique() >= 1 and frame["worker"].notna().all()
    assert math.isfinite(summary.latency_p99) and summary.throughput > 0
    assert stats["default"].counts[State.ARCHIVED] == 1
    assert stats["default"].processed_today + stats["critical"].processed_today == 20
    assert isinstance(frame["status"].dtype, pd.CategoricalDtype)
