"""What the benchmarks share: time spent in gc, and the PASS/FAIL verdict on their floors."""

from __future__ import annotations

import gc
import time
from typing import Any


class GcTimer:
    """Seconds spent in the garbage collector, summed over collections."""

    def __init__(self) -> None:
        self.total, self._began = 0.0, 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            self.total += time.perf_counter() - self._began


def verdict(checks: list[tuple[str, bool]], began: float) -> int:
    """Print how long the run took and a PASS/FAIL line per floor; the exit status."""
    print(f"\n({time.perf_counter() - began:.0f} s)")
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    return 0 if all(ok for _, ok in checks) else 1
