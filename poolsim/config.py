"""PoolConfig: the one validated description of a pool, shared by pool, simulator and report.

A policy name means the same thing everywhere poolsim uses it, so a config
simulated yesterday configures the real pool today.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from enum import StrEnum
from typing import Any

from poolsim.errors import ConfigError

__all__ = ["Backpressure", "PoolConfig", "ShutdownPolicy"]


class Backpressure(StrEnum):
    """What ``submit`` does when the pool is full (``workers + queue_size`` jobs in it)."""

    REJECT = "reject"  # raise QueueFull at once: the HTTP 503 case
    BLOCK = "block"  # wait up to block_timeout for room, then QueueFull
    DROP_OLDEST = "drop_oldest"  # evict the oldest queued job (JobDropped), admit the new one
    CALLER_RUNS = "caller_runs"  # the submitter runs the job itself


class ShutdownPolicy(StrEnum):
    """What ``shutdown`` does with queued and running jobs."""

    DRAIN = "drain"  # finish queued and running jobs
    FINISH_IN_FLIGHT = "finish_in_flight"  # finish running jobs, hand queued ones back
    IMMEDIATE = "immediate"  # cancel running jobs cooperatively, drop queued ones


def _choices(enum: type[StrEnum]) -> str:
    return "one of " + ", ".join(repr(m.value) for m in enum)


def _policy(field: str, value: Any, enum: type[StrEnum]) -> Any:
    try:
        return enum(value)
    except ValueError:
        raise ConfigError(field, value, _choices(enum)) from None


def _integer(field: str, value: Any, minimum: int) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise ConfigError(field, value, f"an integer >= {minimum}")
    return int(value)


def _seconds(field: str, value: Any) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError, OverflowError):
        seconds = math.nan
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not (
            math.isfinite(seconds) and seconds > 0):
        raise ConfigError(field, value, "None or a finite number of seconds > 0")
    return seconds


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True, repr=False)
class PoolConfig:
    """How big a pool is and how it behaves when full and when shut down.

    ``queue_size`` counts waiting places only: a pool holds at most
    ``workers + queue_size`` jobs (0 means hand-off only; ``None`` means
    unbounded, for comparisons with unbounded executors and textbook queues).

    >>> PoolConfig(workers=8, queue_size=100, backpressure="drop_oldest").capacity
    108
    """

    workers: int = 4
    queue_size: int | None = 100
    backpressure: Backpressure = Backpressure.REJECT
    block_timeout: float | None = 1.0
    job_timeout: float | None = None
    shutdown: ShutdownPolicy = ShutdownPolicy.DRAIN
    shutdown_timeout: float | None = None

    def __post_init__(self) -> None:
        normalised = {
            "workers": _integer("workers", self.workers, 1),
            "queue_size": None
            if self.queue_size is None
            else _integer("queue_size", self.queue_size, 0),
            "backpressure": _policy("backpressure", self.backpressure, Backpressure),
            "shutdown": _policy("shutdown", self.shutdown, ShutdownPolicy),
        }
        for field in ("block_timeout", "job_timeout", "shutdown_timeout"):
            normalised[field] = _seconds(field, getattr(self, field))
        for field, value in normalised.items():
            object.__setattr__(self, field, value)

    @property
    def capacity(self) -> int | None:
        """The most jobs the pool holds at once (running + queued); ``None`` if unbounded."""
        return None if self.queue_size is None else self.workers + self.queue_size

    def __repr__(self) -> str:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        shown = (f"{k}={str(v) if isinstance(v, StrEnum) else v!r}" for k, v in values.items())
        return f"PoolConfig({', '.join(shown)})"

    def replace(self, **changes: Any) -> PoolConfig:
        """A copy with some fields changed, validated again."""
        return dataclasses.replace(self, **changes)


def config_from(config: PoolConfig | None, options: dict[str, Any]) -> PoolConfig:
    """What a pool's ``config`` and keyword ``options`` mean together: the config with
    those fields replaced, or a new config of the options alone."""
    fields = [field.name for field in dataclasses.fields(PoolConfig)]
    for name, value in options.items():
        if name not in fields:
            raise ConfigError(name, value, "not an option; options are " + ", ".join(fields))
    return PoolConfig(**options) if config is None else config.replace(**options)


def shutdown_args(config: PoolConfig, policy: ShutdownPolicy | str | None,
                  timeout: float | None) -> tuple[ShutdownPolicy, float]:
    """A ``shutdown()`` call's policy and deadline, checked before anything closes:
    ``None`` means the config's, and no deadline at all is ``math.inf``."""
    chosen = _policy("policy", config.shutdown if policy is None else policy, ShutdownPolicy)
    if timeout is None:
        timeout = config.shutdown_timeout
    if timeout is None or timeout == math.inf:
        return chosen, math.inf
    if (not isinstance(timeout, numbers.Real) or isinstance(timeout, bool)
            or not math.isfinite(timeout) or timeout < 0):
        raise ConfigError("timeout", timeout, "None, math.inf or a number of seconds >= 0")
    return chosen, float(timeout)
