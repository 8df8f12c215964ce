"""Shared fixtures: jobs that hold their worker until the test lets them go."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest


class Gate:
    """Jobs that hold their worker until the test opens the gate."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.entered = threading.Semaphore(0)

    def job(self, value: object = None) -> object:
        self.entered.release()
        assert self.opened.wait(10), "gate never opened"
        return value

    def wait_entered(self, n: int = 1) -> None:
        for _ in range(n):
            assert self.entered.acquire(timeout=10), "job never started"


@pytest.fixture
def gate() -> Iterator[Gate]:
    g = Gate()
    yield g
    g.opened.set()
