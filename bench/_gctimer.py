"""Seconds spent in the garbage collector, for the benchmarks that report it."""

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
