"""The background loops' shared behaviour: a failing duty is retried with back-off."""

from __future__ import annotations

import threading

from poolsim.queue.loops import Loop


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
