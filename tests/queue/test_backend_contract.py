"""The promises of ``Backend``, checked for every store (``backend`` runs over each).

Time is passed in (``now``), never slept through: leases lapse because a test says
the clock moved on. Cases are tables where the promise is a table.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from poolsim.errors import ConfigError, PayloadError, TaskAlreadyExists, TaskNotFound
from poolsim.queue.backends.base import Backend, Outcome, recover_backoff
from poolsim.queue.task import State, Task, TaskInfo, decode_payload, encode_payload
from tests.queue.conftest import SEEDER, T0, make_task, seed_tasks, tasks_in

W1, W2 = "host:1:aaa", "host:2:bbb"
DONE = Outcome(state=State.COMPLETED, status="completed")
FAIL = Outcome(state=State.RETRY, status="retried", error="boom", retry_at=T0 + 30)
DEAD = Outcome(state=State.ARCHIVED, status="failed", error="bad payload")


def claim(backend: Backend, queues: list[str] | str = "default", *, worker: str = W1,
          now: float = T0, lease_s: float = 30.0, limit: int = 100) -> list[str]:
    if isinstance(queues, str):
        queues = [queues]
    return [t.id for t in backend.claim(queues, worker=worker, now=now, lease_s=lease_s,
                                        limit=limit)]


def enqueue(backend: Backend, *, now: float = T0, **fields: Any) -> str:
    return backend.enqueue(make_task(**fields), now=now).id


# -- enqueue and schedule -------------------------------------------------------------

@pytest.mark.parametrize(("process_at", "state"), [
    (0.0, State.PENDING),  # 0 means now
    (T0 - 10, State.PENDING),  # late: ready at once
    (T0, State.PENDING),
    (T0 + 0.001, State.SCHEDULED),
    (T0 + 3600, State.SCHEDULED),
])
def test_enqueue_decides_the_state(backend: Backend, process_at: float, state: State) -> None:
    task = make_task(process_at=process_at)
    info = backend.enqueue(task, now=T0)
    assert info.state == state
    assert info.process_at == (process_at or T0)
    assert info.created_at == T0
    stored = backend.get(task.id)
    assert (stored.id, stored.state, stored.retried, stored.worker) == (task.id, state, 0, None)
    assert tasks_in(backend, state) == [task.id]


def test_forward_moves_scheduled_tasks_when_due(backend: Backend) -> None:
    soon = enqueue(backend, process_at=T0 + 10)
    later = enqueue(backend, process_at=T0 + 20)
    assert backend.forward(now=T0 + 9.999) == 0
    assert claim(backend) == []
    assert backend.forward(now=T0 + 10) == 1
    assert tasks_in(backend, State.PENDING) == [soon]
    assert tasks_in(backend, State.SCHEDULED) == [later]
    assert backend.forward(now=T0 + 100) == 1
    assert claim(backend, now=T0 + 100) == [soon, later]


# -- claim ----------------------------------------------------------------------------

QUEUES = {"critical": 2, "default": 3, "low": 1}


@pytest.mark.parametrize(("order", "limit", "paused", "expected"), [
    (["critical", "default", "low"], 10, [], ["critical"] * 2 + ["default"] * 3 + ["low"]),
    (["low", "default", "critical"], 10, [], ["low"] + ["default"] * 3 + ["critical"] * 2),
    (["critical", "default", "low"], 3, [], ["critical", "critical", "default"]),
    (["default", "critical"], 4, [], ["default"] * 3 + ["critical"]),
    (["critical", "default", "low"], 10, ["default"], ["critical"] * 2 + ["low"]),
    (["critical", "default", "low"], 10, ["critical", "default", "low"], []),
    (["nowhere", "low"], 10, [], ["low"]),
    (["low", "low"], 10, [], ["low"]),
    (["critical"], 0, [], []),
    ([], 10, [], []),
])
def test_claim_takes_queues_in_the_order_given(backend: Backend, order: list[str], limit: int,
                                               paused: list[str], expected: list[str]) -> None:
    for queue, n in QUEUES.items():
        for _ in range(n):
            enqueue(backend, queue=queue)
    for queue in paused:
        backend.pause(queue, True)
    got = backend.claim(order, worker=W1, now=T0, lease_s=30, limit=limit)
    assert [t.queue for t in got] == expected
    assert all(t.state == State.ACTIVE and t.worker == W1 and t.lease_until == T0 + 30
               and t.started_at == T0 for t in got)
    assert sorted(tasks_in(backend, State.ACTIVE)) == sorted(t.id for t in got)


def test_unpaused_queue_is_claimed_again(backend: Backend) -> None:
    task = enqueue(backend, queue="low")
    backend.pause("low", True)
    assert claim(backend, "low") == []
    backend.pause("low", False)
    assert claim(backend, "low") == [task]


def test_claim_takes_the_oldest_first(backend: Backend) -> None:
    late = enqueue(backend, process_at=T0 - 1)
    first, second = enqueue(backend, process_at=T0 - 5), enqueue(backend, process_at=T0 - 5)
    newest = enqueue(backend)
    assert claim(backend, limit=2) == [first, second]  # ties: the one enqueued first
    assert claim(backend, limit=5) == [late, newest]
    assert claim(backend) == []


def test_two_claimers_never_get_one_task(backend: Backend) -> None:
    ids = {enqueue(backend, queue=q) for q in ("a", "b") for _ in range(150)}
    got: list[list[str]] = [[] for _ in range(8)]
    start = threading.Barrier(8)

    def worker(n: int) -> None:
        start.wait()
        while taken := claim(backend, ["a", "b"], worker=f"w{n}", limit=3):
            got[n] += taken

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for ids_ in got for i in ids_]
    assert len(every) == len(set(every)) == len(ids)
    assert set(every) == ids


# -- leases ---------------------------------------------------------------------------

def test_only_the_holder_renews_and_finishes(backend: Backend) -> None:
    [a, b] = [enqueue(backend), enqueue(backend)]
    assert claim(backend, limit=1, worker=W1) == [a]
    assert claim(backend, limit=1, worker=W2) == [b]
    assert backend.renew([a, b, "missing"], worker=W1, until=T0 + 90) == [a]
    assert backend.get(a).lease_until == T0 + 90
    assert backend.get(b).lease_until == T0 + 30
    assert backend.finish(a, worker=W2, now=T0 + 1, outcome=DONE) is False
    assert backend.get(a).state == State.ACTIVE
    assert backend.finish(a, worker=W1, now=T0 + 1, outcome=DONE) is True
    assert backend.finish(a, worker=W1, now=T0 + 1, outcome=DONE) is False  # acked once
    assert backend.renew([a], worker=W1, until=T0 + 99) == []


def test_every_claim_gets_a_fresh_lease_token(backend: Backend) -> None:
    ids = [enqueue(backend) for _ in range(3)]
    infos = backend.claim(["default"], worker=W1, now=T0, lease_s=30, limit=3)
    tokens = [info.lease for info in infos]
    assert [info.id for info in infos] == ids
    assert all(isinstance(t, str) and t for t in tokens) and len(set(tokens)) == 3
    assert [backend.get(i).lease for i in ids] == tokens  # what the store holds
    assert backend.get(ids[0]).lease == tokens[0]
    assert backend.finish(ids[0], worker=W1, now=T0 + 1, outcome=FAIL, lease=tokens[0])
    assert backend.get(ids[0]).lease is None  # no lease outside active
    backend.forward(now=T0 + 30)
    [again] = backend.claim(["default"], worker=W1, now=T0 + 31, lease_s=30, limit=1)
    assert again.id == ids[0] and again.lease not in tokens  # a re-claim: a new token


def test_a_stale_claim_cannot_touch_the_same_workers_re_claim(backend: Backend) -> None:
    """The lease lapses while its worker lives; the task is recovered and the SAME worker
    claims it again: the first claim's token renews, finishes and hands back nothing."""
    task = enqueue(backend, max_retry=3)
    [first] = backend.claim(["default"], worker=W1, now=T0, lease_s=30, limit=1)
    assert backend.recover(now=T0 + 31) == 1
    backend.forward(now=T0 + 40)
    [second] = backend.claim(["default"], worker=W1, now=T0 + 40, lease_s=30, limit=1)
    assert second.id == first.id == task and first.lease and second.lease
    assert first.lease != second.lease
    old, new = first.lease, second.lease
    assert backend.renew([task, task], worker=W1, until=T0 + 99, leases=[old, new]) == [new]
    assert backend.get(task).lease_until == T0 + 99
    assert backend.finish(task, worker=W1, now=T0 + 41, outcome=FAIL, lease=old) is False
    assert backend.finish_many([(task, DONE)], worker=W1, now=T0 + 41,
                               leases=[old]) == [False]
    assert backend.hand_back([task], worker=W1, now=T0 + 41, leases=[old]) == 0
    assert backend.get(task).state == State.ACTIVE and backend.get(task).lease == new
    assert [r.status for r in backend.history()] == ["retried"]  # the recovery only
    assert backend.finish_many([(task, DONE)], worker=W1, now=T0 + 42, leases=[new]) == [True]
    rows = backend.history()
    assert [(r.status, r.attempt, r.worker) for r in rows] == [("retried", 1, W1),
                                                              ("completed", 2, W1)]


def test_hand_back_by_token_returns_only_that_claim(backend: Backend) -> None:
    [a, b] = [enqueue(backend), enqueue(backend)]
    infos = backend.claim(["default"], worker=W1, now=T0, lease_s=30, limit=2)
    tokens = {i.id: i.lease for i in infos}
    assert backend.hand_back([a], worker=W1, now=T0 + 1, leases=[str(tokens[a])]) == 1
    assert tasks_in(backend, State.PENDING) == [a]
    assert tasks_in(backend, State.ACTIVE) == [b]
    assert [(r.task_id, r.status, r.worker) for r in backend.history()] == [
        (a, "returned", W1)]


def test_lease_tokens_must_match_the_ids(backend: Backend) -> None:
    task = enqueue(backend)
    claim(backend)
    with pytest.raises(ConfigError):
        backend.renew([task], worker=W1, until=T0 + 60, leases=[])
    with pytest.raises(ConfigError):
        backend.finish_many([(task, DONE)], worker=W1, now=T0, leases=["a", "b"])


def test_recover_takes_only_lapsed_leases(backend: Backend) -> None:
    [short, long_] = [enqueue(backend), enqueue(backend)]
    claim(backend, limit=1, lease_s=10)
    claim(backend, limit=1, lease_s=60)
    assert backend.recover(now=T0 + 10) == 0  # lapses *after* lease_until
    assert backend.recover(now=T0 + 10.5) == 1
    assert tasks_in(backend, State.RETRY) == [short]
    assert tasks_in(backend, State.ACTIVE) == [long_]
    assert claim(backend, worker=W2, now=T0 + 11) == []  # a starting worker takes nothing live


def test_a_renewing_worker_is_never_recovered_however_long_it_runs(backend: Backend) -> None:
    task = enqueue(backend)
    claim(backend, lease_s=30)
    now = T0
    for _ in range(500):  # ~4 hours of a job that outlives any fixed visibility timeout
        now += 29
        assert backend.renew([task], worker=W1, until=now + 30) == [task]
        assert backend.recover(now=now) == 0
        assert backend.forward(now=now) == 0
    assert backend.finish(task, worker=W1, now=now, outcome=DONE)
    assert [h.status for h in backend.history()] == ["completed"]


@pytest.mark.parametrize(("max_retry", "retried_before", "state"), [
    (3, 0, State.RETRY), (3, 2, State.RETRY), (3, 3, State.ARCHIVED), (0, 0, State.ARCHIVED),
])
def test_a_lapsed_lease_counts_the_attempt(backend: Backend, max_retry: int,
                                           retried_before: int, state: State) -> None:
    task = enqueue(backend, max_retry=max_retry)
    now = T0
    for _ in range(retried_before):  # earlier attempts failed
        claim(backend, now=now)
        backend.finish(task, worker=W1, now=now, outcome=FAIL)
        now += 100
        backend.forward(now=now)
    claim(backend, now=now, lease_s=30, worker=W2)
    assert backend.recover(now=now + 31) == 1
    info = backend.get(task)
    assert (info.state, info.retried, info.worker, info.lease_until) == (
        state, retried_before + 1, None, None)
    assert info.last_error is not None and info.last_error.startswith("lease lapsed: worker ")
    assert W2 in info.last_error and "presumed dead" in info.last_error
    if state == State.RETRY:  # due after a back-off that doubles with each failed attempt
        due = now + 31 + recover_backoff(retried_before)
        assert info.process_at == due
        assert backend.forward(now=due - 0.001) == 0
        assert backend.forward(now=due) == 1
        assert claim(backend, now=due) == [task]
    assert backend.finish(task, worker=W2, now=now + 40, outcome=DONE) is False


def test_recover_backoff_doubles_up_to_a_cap() -> None:
    assert [recover_backoff(n) for n in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert recover_backoff(10**6) == 60


def test_a_task_that_keeps_killing_its_worker_backs_off(backend: Backend) -> None:
    """A poison task: every worker that takes it dies. Each recovery delays the next run
    longer, so it cannot crash-loop through the fleet; then it is archived."""
    task = enqueue(backend, max_retry=4)
    now, waits = T0, []
    for attempt in range(5):
        assert claim(backend, now=now, lease_s=10, worker=f"host:{attempt}:x") == [task]
        assert backend.recover(now=now + 11) == 1  # the worker died with it
        info = backend.get(task)
        if info.state == State.ARCHIVED:
            break
        waits.append(info.process_at - (now + 11))
        assert backend.forward(now=info.process_at - 0.5) == 0  # not at once
        assert backend.forward(now=info.process_at) == 1
        now = info.process_at
    assert waits == [1, 2, 4, 8]
    assert (info.state, info.retried) == (State.ARCHIVED, 5)


# -- outcomes -------------------------------------------------------------------------

def test_retry_waits_for_its_back_off_then_runs_again(backend: Backend) -> None:
    task = enqueue(backend)
    claim(backend)
    assert backend.finish(task, worker=W1, now=T0 + 1, outcome=FAIL)
    info = backend.get(task)
    assert (info.state, info.retried, info.attempt, info.last_error, info.last_failed_at) == (
        State.RETRY, 1, 2, "boom", T0 + 1)
    assert backend.forward(now=T0 + 29) == 0
    assert backend.forward(now=T0 + 30) == 1
    [again] = backend.claim(["default"], worker=W2, now=T0 + 31, lease_s=30, limit=1)
    assert (again.id, again.attempt) == (task, 2)


@pytest.mark.parametrize(("max_retry", "outcome", "state", "retried"), [
    (0, FAIL, State.ARCHIVED, 1),  # no retries: the first failure archives
    (1, FAIL, State.RETRY, 1),
    (5, DEAD, State.ARCHIVED, 1),  # SkipRetry, unknown type, corrupt payload
    (5, DONE, None, 0),  # completed, no retention: deleted
])
def test_finish_moves_the_task(backend: Backend, max_retry: int, outcome: Outcome,
                               state: State | None, retried: int) -> None:
    task = enqueue(backend, max_retry=max_retry)
    claim(backend)
    assert backend.finish(task, worker=W1, now=T0 + 2, outcome=outcome)
    if state is None:
        with pytest.raises(TaskNotFound):
            backend.get(task)
    else:
        info = backend.get(task)
        assert (info.state, info.retried, info.worker) == (state, retried, None)
        assert info.last_error == outcome.error
    [row] = backend.history()
    assert (row.task_id, row.status, row.attempt, row.worker, row.ended_at) == (
        task, outcome.status, 1, W1, T0 + 2)


def test_archived_after_the_last_retry(backend: Backend) -> None:
    task = enqueue(backend, max_retry=2)
    now = T0
    for attempt in (1, 2, 3):
        [info] = backend.claim(["default"], worker=W1, now=now, lease_s=30, limit=1)
        assert info.attempt == attempt
        backend.finish(task, worker=W1, now=now, outcome=Outcome(
            state=State.RETRY, status="retried", error=f"e{attempt}", retry_at=now + 1))
        now += 10
        backend.forward(now=now)
    info = backend.get(task)
    assert (info.state, info.retried, info.last_error) == (State.ARCHIVED, 3, "e3")
    assert [h.attempt for h in backend.history()] == [1, 2, 3]


def test_completed_tasks_are_kept_for_their_retention(backend: Backend) -> None:
    kept = enqueue(backend, retention=100)
    gone = enqueue(backend)
    claim(backend)
    for task in (kept, gone):
        assert backend.finish(task, worker=W1, now=T0 + 1, outcome=DONE)
    assert tasks_in(backend, State.COMPLETED) == [kept]
    assert backend.get(kept).completed_at == T0 + 1
    backend.forward(now=T0 + 100.9)
    assert tasks_in(backend, State.COMPLETED) == [kept]
    backend.forward(now=T0 + 101)  # the janitor
    assert tasks_in(backend, State.COMPLETED) == []
    assert [h.task_id for h in backend.history()] == [kept, gone]


def test_hand_back_does_not_count_an_attempt(backend: Backend) -> None:
    [a, b] = [enqueue(backend, process_at=T0 - 2), enqueue(backend)]
    claim(backend, worker=W1)
    assert backend.hand_back([a, b], worker=W2, now=T0 + 1) == 0  # not W2's
    assert backend.hand_back([a, b, "missing"], worker=W1, now=T0 + 1) == 2
    for task in (a, b):
        info = backend.get(task)
        assert (info.state, info.retried, info.worker, info.lease_until) == (
            State.PENDING, 0, None, None)
    assert claim(backend, worker=W2, now=T0 + 2) == [a, b]  # still the oldest
    assert [(h.status, h.attempt) for h in backend.history()] == [("returned", 1)] * 2


# -- uniqueness -----------------------------------------------------------------------

def test_a_unique_key_is_refused_while_it_lives(backend: Backend) -> None:
    first = enqueue(backend, unique_key="k", unique_until=T0 + 60)
    with pytest.raises(TaskAlreadyExists) as caught:
        enqueue(backend, now=T0 + 59, unique_key="k", unique_until=T0 + 119)
    assert (caught.value.key, caught.value.queue) == ("k", "default")
    claim(backend, now=T0 + 1)
    backend.finish(first, worker=W1, now=T0 + 2, outcome=DONE)
    with pytest.raises(TaskAlreadyExists):  # completion does not release the key
        enqueue(backend, now=T0 + 3, unique_key="k", unique_until=T0 + 63)
    backend.forward(now=T0 + 30)
    assert enqueue(backend, now=T0 + 60, unique_key="k", unique_until=T0 + 120)  # expired
    assert enqueue(backend, now=T0 + 60, unique_key="other", unique_until=T0 + 120)
    assert len(tasks_in(backend, State.PENDING)) == 2


def test_deleting_a_task_releases_its_unique_key(backend: Backend) -> None:
    task = enqueue(backend, unique_key="k", unique_until=T0 + 60)
    backend.act(task, "delete", now=T0 + 1)
    assert enqueue(backend, now=T0 + 2, unique_key="k", unique_until=T0 + 62)


def ids_are_per_queue(backend: Backend) -> bool:
    """Redis keeps task ids and unique keys unique per queue (a queue is one cluster slot),
    SQLite per store: the documented difference (poolsim/queue/backends/redis.py)."""
    return backend.url.startswith(("redis://", "rediss://"))


def test_a_reused_id_is_refused(backend: Backend) -> None:
    enqueue(backend, id="cron:report@1")
    with pytest.raises(TaskAlreadyExists) as caught:  # the same queue: refused by every store
        enqueue(backend, id="cron:report@1")
    assert (caught.value.key, caught.value.queue) == ("cron:report@1", "default")
    if ids_are_per_queue(backend):  # another queue: a second task there
        assert enqueue(backend, id="cron:report@1", queue="low") == "cron:report@1"
        assert tasks_in(backend, State.PENDING, "low") == ["cron:report@1"]
        assert tasks_in(backend, State.PENDING) == ["cron:report@1"] * 2
        return
    with pytest.raises(TaskAlreadyExists) as caught:
        enqueue(backend, id="cron:report@1", queue="low")
    assert caught.value.key == "cron:report@1"
    assert tasks_in(backend, State.PENDING) == ["cron:report@1"]
    assert backend.get("cron:report@1").queue == "default"


def test_a_refused_unique_task_leaves_no_trace(backend: Backend) -> None:
    enqueue(backend, id="a", unique_key="k", unique_until=T0 + 60)
    with pytest.raises(TaskAlreadyExists):
        enqueue(backend, id="b", unique_key="k", unique_until=T0 + 60)
    with pytest.raises(TaskNotFound):
        backend.get("b")
    with pytest.raises(TaskAlreadyExists):  # an id clash after a free key: key not taken
        enqueue(backend, id="a", unique_key="k2", unique_until=T0 + 60)
    assert enqueue(backend, id="c", unique_key="k2", unique_until=T0 + 60) == "c"


# -- the inspector's verbs ------------------------------------------------------------

@pytest.mark.parametrize("state", ["scheduled", "pending", "retry", "archived", "completed"])
@pytest.mark.parametrize("action", ["requeue", "delete", "archive"])
def test_act(backend: Backend, state: str, action: Any) -> None:
    [task] = seed_tasks(backend, [state], now=T0)
    after = backend.act(task.id, action, now=T0 + 5)
    if action == "delete":
        assert after is None
        with pytest.raises(TaskNotFound):
            backend.get(task.id)
        return
    assert after is not None and after == backend.get(task.id)
    if action == "requeue":
        assert (after.state, after.retried, after.process_at) == (State.PENDING, 0, T0 + 5)
        assert claim(backend, now=T0 + 5) == [task.id]
    else:
        assert after.state == State.ARCHIVED
        assert claim(backend, now=T0 + 5) == []


@pytest.mark.parametrize("action", ["requeue", "delete", "archive"])
def test_act_on_an_active_task_waits_for_its_lease(backend: Backend, action: Any) -> None:
    [task] = seed_tasks(backend, ["active"], now=T0, lease_s=60)
    with pytest.raises(ConfigError, match="lease"):
        backend.act(task.id, action, now=T0 + 59)
    assert backend.get(task.id).state == State.ACTIVE
    backend.act(task.id, action, now=T0 + 61)
    assert backend.finish(task.id, worker=SEEDER, now=T0 + 62, outcome=DONE) is False


def test_act_on_a_missing_task(backend: Backend) -> None:
    with pytest.raises(TaskNotFound) as caught:
        backend.act("nope", "requeue", now=T0)
    assert caught.value.task_id == "nope"
    with pytest.raises(KeyError):
        backend.get("nope")


# -- stats, listing, history ----------------------------------------------------------

def test_stats_count_states_and_measure_latency(backend: Backend) -> None:
    midnight = math.floor(T0 / 86400) * 86400
    seed_tasks(backend, ["pending", "pending", "active", "retry", "archived", "completed",
                         "scheduled"], now=T0 - 50, queue="critical")
    enqueue(backend, queue="critical", now=T0 - 10, process_at=T0 - 10)
    seed_tasks(backend, ["completed"], now=midnight - 1, queue="low")  # yesterday
    backend.pause("low", True)
    backend.pause("empty", False)
    stats = {s.queue: s for s in backend.stats(now=T0)}
    assert sorted(stats) == ["critical", "empty", "low"]
    crit = stats["critical"]
    assert dict(crit.counts) == {State.PENDING: 3, State.ACTIVE: 1, State.RETRY: 1,
                                 State.ARCHIVED: 1, State.COMPLETED: 1, State.SCHEDULED: 1}
    assert (crit.paused, crit.oldest_pending_age_s) == (False, 50.0)
    assert (crit.processed_today, crit.failed_today) == (3, 2)  # retry, archived, completed
    low = stats["low"]
    assert (low.paused, low.oldest_pending_age_s, low.processed_today) == (True, None, 0)
    assert low.counts[State.COMPLETED] == 1
    assert stats["empty"].counts == dict.fromkeys(State, 0)


def test_list_tasks_by_state_and_queue(backend: Backend) -> None:
    ids = [enqueue(backend, queue=q, process_at=T0 - i) for i, q in enumerate("abab")]
    assert tasks_in(backend, State.PENDING) == ids[::-1]  # oldest first
    assert tasks_in(backend, State.PENDING, "a") == [ids[2], ids[0]]
    page = backend.list_tasks(state=State.PENDING, limit=2, offset=1)
    assert [t.id for t in page] == [ids[2], ids[1]]
    assert tasks_in(backend, State.ARCHIVED) == []


def test_history_records_every_ended_attempt(backend: Backend) -> None:
    a = enqueue(backend, type="email", queue="q", now=T0 - 5, process_at=T0 - 5)
    b = enqueue(backend, type="sms", queue="q", now=T0 - 4, process_at=T0 - 4)
    claim(backend, "q", worker=W1, now=T0, lease_s=10)
    backend.finish(a, worker=W1, now=T0 + 1, outcome=DONE)
    assert backend.recover(now=T0 + 11) == 1  # b's worker died
    backend.forward(now=T0 + 12)  # due 1 s after the recovery (recover_backoff(0))
    claim(backend, "q", worker=W2, now=T0 + 12)
    backend.finish(b, worker=W2, now=T0 + 13, outcome=DEAD)
    rows = [(h.task_id, h.type, h.queue, h.enqueued_at, h.started_at, h.ended_at, h.status,
             h.worker, h.attempt) for h in backend.history()]
    assert rows == [
        (a, "email", "q", T0 - 5, T0, T0 + 1, "completed", W1, 1),
        (b, "sms", "q", T0 - 4, T0, T0 + 11, "retried", W1, 1),
        (b, "sms", "q", T0 + 12, T0 + 12, T0 + 13, "failed", W2, 2),
    ]
    assert [h.ended_at for h in backend.history(since=T0 + 11)] == [T0 + 11, T0 + 13]


def test_forward_prunes_history_past_its_retention(backend: Backend) -> None:
    keep = getattr(backend, "history_retention", 7 * 86400)
    assert keep == 7 * 86400  # the default: a week
    old, new = enqueue(backend), enqueue(backend)
    claim(backend, limit=1, now=T0)
    backend.finish(old, worker=W1, now=T0 + 1, outcome=DONE)
    claim(backend, limit=1, now=T0 + 100)
    backend.finish(new, worker=W1, now=T0 + 101, outcome=DONE)
    backend.forward(now=T0 + 1 + keep)  # "older than": a row exactly that old stays
    assert [h.task_id for h in backend.history()] == [old, new]
    backend.forward(now=T0 + 1.5 + keep)
    assert [h.task_id for h in backend.history()] == [new]
    backend.forward(now=T0 + 102 + keep)
    assert backend.history() == []


# -- payloads -------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.dictionaries(st.text(max_size=8), JSON, max_size=5))
def test_payloads_round_trip(backend: Backend, payload: dict[str, Any]) -> None:
    task = Task("t", payload)
    info = backend.enqueue(make_task(payload=task.encoded()), now=T0)
    [claimed] = backend.claim(["default"], worker=W1, now=T0, lease_s=30, limit=1)
    assert claimed.id == info.id
    assert claimed.data() == payload
    assert claimed.task() == task
    backend.finish(info.id, worker=W1, now=T0, outcome=DONE)


@pytest.mark.parametrize("bad", [
    {"x": math.nan}, {"x": math.inf}, {"x": {1, 2}}, {"x": b"bytes"}, {"x": object()},
    {"x": [1, 2, (lambda: 0)]}, {(1, 2): "tuple key"},
])
def test_a_payload_that_is_not_json_is_refused(bad: dict[Any, Any]) -> None:
    with pytest.raises(PayloadError) as caught:
        Task("t", bad)
    assert caught.value.value is bad
    with pytest.raises(PayloadError):
        encode_payload(bad)


@pytest.mark.parametrize("stored", ["[" * 100_000, "{\"a\":" * 100_000, '{"a": 1'])
def test_a_corrupt_or_too_deep_stored_payload_is_a_payload_error(stored: str) -> None:
    """A payload too deeply nested for the decoder (RecursionError) is corrupt too, so the
    server archives the task instead of crashing its worker thread."""
    with pytest.raises(PayloadError, match="corrupt"):
        decode_payload(stored)
    info = TaskInfo(id="x", type="t", payload=stored, queue="default", state=State.PENDING,
                    max_retry=0)
    with pytest.raises(PayloadError):
        info.data()
