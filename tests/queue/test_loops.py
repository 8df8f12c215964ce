"""The background loops' shared behaviour: a failing duty is retried with back-off, which
nothing but a stop cuts short — not a wake-up (the fetcher's, as places free), not a new
outcome (the acker's) — so a store outage is not hammered by every finishing handler."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import numpy as np
import pytest

from poolsim.errors import BackendUnavailable
from poolsim.queue import acker as acker_module
from poolsim.queue.acker import Acker, Settled
from poolsim.queue.attempts import Attempt
from poolsim.queue.backends.base import Backend, Outcome
from poolsim.queue.loops import Fetcher, Loop
from poolsim.queue.task import State, TaskInfo
from tests.queue.conftest import T0, seed_tasks, wait_until


class Outage:
    """A real store whose ``claim`` and ``finish_many`` raise ``BackendUnavailable`` while
    ``down``; counts the calls of each."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.down = True
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        self.calls[name] += 1
        if self.down:
            raise BackendUnavailable("fault://", "injected outage")
        return getattr(self.backend, name)(*args, **kwargs)

    def claim(self, *args: Any, **kwargs: Any) -> list[TaskInfo]:
        return list(self._call("claim", *args, **kwargs))

    def finish_many(self, *args: Any, **kwargs: Any) -> list[bool]:
        return list(self._call("finish_many", *args, **kwargs))


class Failing(Loop):
    """Fails its first ``failures`` ticks, then succeeds; records each tick's failures so far."""

    name = "failing"

    def __init__(self, interval: float, failures: int) -> None:
        super().__init__(interval)
        self.left = failures
        self.ticks = 0
        self.recovered = threading.Event()

    def tick(self) -> float | None:
        self.ticks += 1
        if self.left:
            self.left -= 1
            raise ConnectionError("the store is away")
        self.recovered.set()
        return None


def test_a_failing_tick_backs_off_doubling_up_to_the_cap() -> None:
    loop = Failing(interval=0.5, failures=0)
    waits = [loop.retry_wait(n) for n in range(1, 10)]
    for n, wait in enumerate(waits, start=1):
        expected = min(5.0, 0.5 * 2 ** (n - 1))  # the cap: retry_cap, 5 s
        assert 0.8 * expected <= wait <= expected
    loop.retry_after_error, loop.retry_cap = 0.2, 0.2  # no growth (the lease keeper's)
    assert all(0.16 <= loop.retry_wait(n) <= 0.2 for n in range(1, 20))


def test_a_loop_survives_failures_and_resumes() -> None:
    loop = Failing(interval=0.05, failures=3)
    loop.retry_after_error = 0.01
    loop.start()
    try:
        assert loop.recovered.wait(10)
    finally:
        loop.stop(5)
    assert loop.ticks >= 4 and not loop.running


def test_a_wake_up_does_not_cut_the_fetchers_back_off_short(backend: Backend) -> None:
    """During an outage each freed place wakes the fetcher: it still waits out its
    back-off before the next claim; only stop() ends the wait."""
    outage = Outage(backend)
    fetcher = Fetcher(outage, lambda: T0, worker="w",
                      lease_s=60.0, weights={"default": 1}, strict=None,
                      rng=np.random.default_rng(1), free=lambda: 5,
                      dispatch=lambda infos: None, interval=0.01)
    fetcher.retry_after_error = fetcher.retry_cap = 60.0  # outlasts the test
    fetcher.start()
    try:
        wait_until(lambda: outage.calls["claim"] >= 1)  # failed: backing off
        for _ in range(5):
            fetcher.wake()  # as each finishing handler's freed place does
            time.sleep(0.01)
        assert outage.calls["claim"] == 1
    finally:
        fetcher.stop(10)
    assert not fetcher.running  # stop() ended the back-off


def test_new_outcomes_do_not_cut_the_ackers_back_off_short(
        backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """During an outage each finishing handler adds an outcome: the acker still waits out
    its back-off before writing again; stop() ends the wait and writes them all."""
    monkeypatch.setattr(acker_module, "RETRY_FIRST_S", 60.0)  # a back-off outlasting
    monkeypatch.setattr(acker_module, "RETRY_CAP_S", 60.0)  # the test
    infos = seed_tasks(backend, ["active"] * 6, worker="w")
    outage = Outage(backend)
    written: list[tuple[str, bool | None]] = []

    def done(items: Any, acked: Any) -> None:
        writer = threading.current_thread().name
        written.extend((writer, ok) for ok in (acked or [None] * len(items)))

    acker = Acker(outage, lambda: T0, worker="w",
                  interval=0.001, batch=1, done=done)
    completed = Outcome(state=State.COMPLETED, status="completed")
    acker.start()
    try:
        acker.add(Settled(Attempt(infos[0]), completed, None))
        wait_until(lambda: outage.calls["finish_many"] >= 1)  # failed: backing off
        for info in infos[1:]:
            acker.add(Settled(Attempt(info), completed, None))  # batch 1: each notifies
            time.sleep(0.01)
        assert (outage.calls["finish_many"], acker.pending()) == (1, 6)
        outage.down = False
    finally:
        acker.stop(10)
    assert written == [("poolsim-acker", True)] * 6  # by the acker, its back-off ended
    assert sorted((r.task_id, r.status) for r in backend.history()) == sorted(
        (info.id, "completed") for info in infos)
