"""Learn service times from a real run, to simulate it under other loads and configs.

``fit(records)`` reads a jobs frame — a real pool's ``records()``, a replay, or
a durable queue's history — and learns, per task type, how long jobs ran
(``end_s - start_s`` of completed jobs; timed-out ones count as just over
their timeout): their empirical distribution, and
optionally a parametric fit. ``.trace(seed=)`` then rebuilds a trace from the
same arrivals, so last week's records become a what-if in two calls::

    trace = fit(pool.records()).trace(seed=1)
    simulate(trace, PoolConfig(workers=16), load=2.0, seed=1)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Literal

import numpy as np
import pandas as pd

from poolsim.errors import ConfigError, TraceError
from poolsim.records import Status

__all__ = ["ServiceFit", "fit"]

Parametric = Literal["exponential", "lognormal", "gamma"]
PARAMETRIC: tuple[str, ...] = ("exponential", "lognormal", "gamma")


@dataclasses.dataclass(frozen=True)
class ServiceFit:
    """Service times learned per task type; ``sample`` and ``trace`` draw from them.

    ``observed`` holds each task type's measured service times (sorted);
    ``params`` the parametric fit's parameters when one was asked for
    (exponential: ``mean``; lognormal: ``mu``, ``sigma`` of the log; gamma:
    ``shape``, ``scale``). ``arrivals`` is the frame's arrival times and task
    types, in job order, for :meth:`trace`.
    """

    observed: Mapping[str, np.ndarray]
    parametric: Parametric | None
    params: Mapping[str, Mapping[str, float]]
    arrivals: pd.DataFrame

    def summary(self) -> pd.DataFrame:
        """Per task type: jobs measured, mean, p50, p99 and max service time."""
        rows = {task: {"jobs": len(v), "mean_s": v.mean(), "p50_s": np.percentile(v, 50),
                       "p99_s": np.percentile(v, 99), "max_s": v.max()}
                for task, v in self.observed.items()}
        return pd.DataFrame.from_dict(rows, orient="index")

    def sample(self, task_type: str, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` service times for ``task_type``: from the parametric fit, or resampled."""
        if task_type not in self.observed:
            raise ConfigError("task_type", task_type,
                              "one of the fitted task types: " + ", ".join(self.observed))
        if self.parametric is None:
            return rng.choice(self.observed[task_type], size=n, replace=True)
        p = self.params[task_type]
        if self.parametric == "exponential":
            return rng.exponential(p["mean"], n)
        if self.parametric == "lognormal":
            return rng.lognormal(p["mu"], p["sigma"], n)
        return rng.gamma(p["shape"], p["scale"], n)

    def trace(self, *, seed: int | None) -> pd.DataFrame:
        """A trace with the fitted arrivals and a service time drawn for every job."""
        from poolsim.traces import load_trace

        rng = np.random.default_rng(seed)
        service = np.empty(len(self.arrivals))
        task_type = self.arrivals["task_type"].to_numpy()
        for task in self.observed:
            rows = task_type == task
            service[rows] = self.sample(task, int(rows.sum()), rng)
        return load_trace(self.arrivals.assign(service_s=service))


def fit(frame: pd.DataFrame, *, parametric: Parametric | None = None,
        min_jobs: int = 10) -> ServiceFit:
    """Learn per-task-type service times from a jobs frame's completed and timed-out jobs.

    A timed-out job's service time is censored — it ran at least its timeout
    — so it counts as just over its timeout: the tail beyond a timeout cannot
    be seen. A task type with fewer than ``min_jobs`` measured jobs borrows
    the service times of all task types together. Raises :class:`TraceError`
    if the frame has no job that ran to learn from.
    """
    if parametric is not None and parametric not in PARAMETRIC:
        raise ConfigError("parametric", parametric,
                          "None or one of " + ", ".join(map(repr, PARAMETRIC)))
    missing = [c for c in ("task_type", "arrival_s", "start_s", "end_s", "status")
               if c not in frame.columns]
    if missing:
        raise TraceError(f"not a jobs frame: missing columns {missing}", column=missing[0])
    status = frame["status"].astype(str)
    done = frame[status.isin([Status.COMPLETED.value, Status.TIMEOUT.value])]
    service = np.array(done["end_s"] - done["start_s"], dtype=float)  # a copy we may change
    # a timed-out job ran at least its timeout, how much longer is unknown: count it as just
    # over, so a simulation with the same timeout times it out again
    late = (done["status"].astype(str) == Status.TIMEOUT.value).to_numpy()
    service[late] = np.nextafter(service[late], np.inf)
    if not len(service):
        raise TraceError("no completed or timed-out job to learn service times from",
                         column="status")
    everyone = np.sort(service)
    observed: dict[str, np.ndarray] = {}
    types = done["task_type"].astype(str).to_numpy()
    for task in sorted(set(frame["task_type"].astype(str))):
        mine = np.sort(service[types == task])
        observed[task] = mine if len(mine) >= min_jobs else everyone
    params = ({task: _fit(values, parametric) for task, values in observed.items()}
              if parametric else {})
    arrivals = frame[["arrival_s", "task_type"]].sort_values("arrival_s", kind="stable")
    arrivals = arrivals.assign(task_type=arrivals["task_type"].astype(str)).reset_index(drop=True)
    return ServiceFit(observed, parametric, params, arrivals)


def _fit(values: np.ndarray, parametric: Parametric) -> dict[str, float]:
    """Moment (exponential, gamma) or log-moment (lognormal) estimates."""
    mean = float(values.mean())
    if parametric == "exponential":
        return {"mean": mean}
    if parametric == "lognormal":
        logs = np.log(np.maximum(values, 1e-12))
        return {"mu": float(logs.mean()), "sigma": float(logs.std())}
    variance = float(values.var())
    if mean <= 0:
        return {"shape": 1.0, "scale": 0.0}
    if variance <= 0:  # every job took the same time: a gamma as narrow as a float allows
        return {"shape": 1e12, "scale": mean / 1e12}
    return {"shape": mean * mean / variance, "scale": variance / mean}
