"""Synthetic traces from a seed: Poisson, bursty (on/off MMPP), diurnal, and per-minute counts.

Real traces show one day of one service; generated ones let you ask "what
if": a steady load, bursts, a daily swell, or a trace published only as
counts per minute. Every generator takes ``seed`` (passed to
``numpy.random.default_rng``, never a global RNG), so the same seed gives the
same trace, and a ``service`` time spec (see :class:`ServiceTime`). Each
returns a validated trace (see :mod:`poolsim.traces`); a run that draws no
arrival at all raises :class:`~poolsim.errors.TraceError`, as an empty trace does.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeAlias

import numpy as np
import pandas as pd

from poolsim.errors import ConfigError, TraceError
from poolsim.traces import Seed, Where, finite, non_negative, normalise, plain, positive

__all__ = ["ServiceTime", "bursty", "diurnal", "from_counts", "poisson"]


@dataclasses.dataclass(frozen=True, slots=True)
class ServiceTime:
    """A service-time distribution given by its mean and coefficient of variation (sd / mean).

    ============  =========================  ====================================
    distribution  cv                         use it for
    ============  =========================  ====================================
    fixed         0 (may be omitted)         identical jobs (M/D/c)
    exponential   1 (may be omitted)         textbook M/M/c comparisons
    lognormal     required, > 0              real job durations (right-skewed)
    gamma         required, > 0              shapes between fixed and exponential
    ============  =========================  ====================================

    >>> import numpy as np
    >>> ServiceTime("lognormal", mean=20.0, cv=0.7).sample(np.random.default_rng(1), 3).round(2)
    array([20.38, 27.53, 20.19])
    """

    distribution: str
    _: dataclasses.KW_ONLY
    mean: float
    cv: float | None = None

    DISTRIBUTIONS: ClassVar[tuple[str, ...]] = ("fixed", "exponential", "lognormal", "gamma")

    def __post_init__(self) -> None:
        if self.distribution not in self.DISTRIBUTIONS:
            raise ConfigError("distribution", self.distribution,
                              "one of " + ", ".join(map(repr, self.DISTRIBUTIONS)))
        finite("mean", self.mean)
        if self.mean < 0 or (self.mean == 0 and self.distribution != "fixed"):
            raise ConfigError("mean", self.mean, "seconds > 0 (>= 0 for 'fixed')")
        implied = {"fixed": 0.0, "exponential": 1.0}.get(self.distribution)
        cv = implied if self.cv is None else self.cv
        if cv is None:
            raise ConfigError("cv", None, f"a number > 0 for {self.distribution!r}")
        finite("cv", cv)
        if (implied is not None and cv != implied) or (implied is None and cv <= 0):
            allowed = f"{implied} for {self.distribution!r}" if implied is not None else "> 0"
            raise ConfigError("cv", cv, allowed)
        object.__setattr__(self, "mean", float(self.mean))
        object.__setattr__(self, "cv", float(cv))

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` service times in seconds, drawn from ``rng``."""
        cv = float(self.cv or 0.0)
        if self.distribution == "fixed":
            return np.full(n, self.mean)
        if self.distribution == "exponential":
            return rng.exponential(self.mean, n)
        if self.distribution == "lognormal":
            sigma2 = math.log1p(cv * cv)
            return rng.lognormal(math.log(self.mean) - sigma2 / 2, math.sqrt(sigma2), n)
        return rng.gamma(1 / (cv * cv), self.mean * cv * cv, n)


ServiceSpec: TypeAlias = (float | ServiceTime | tuple[Any, ...]
                          | Callable[[np.random.Generator, int], Any])


def _sampler(service: ServiceSpec) -> Callable[[np.random.Generator, int], Any]:
    """What ``service=`` means: seconds (fixed), a ServiceTime, a tuple of its fields, or a
    callable ``(rng, n) -> array``."""
    if isinstance(service, ServiceTime):
        return service.sample
    if isinstance(service, numbers.Real) and not isinstance(service, bool):
        return ServiceTime("fixed", mean=float(service)).sample
    if isinstance(service, tuple) and len(service) in (2, 3):
        return ServiceTime(service[0], mean=service[1],
                           cv=service[2] if len(service) == 3 else None).sample
    if callable(service):
        return service
    raise ConfigError("service", service, "seconds, a ServiceTime, a tuple like "
                      "('lognormal', mean, cv), or a callable (rng, n) -> array")


def _trace(arrival: np.ndarray, rng: np.random.Generator, service: ServiceSpec, task_type: str,
           queue: str, name: str) -> pd.DataFrame:
    where = Where(name)
    if arrival.size == 0:
        raise TraceError(f"{name}: no job arrived; raise the rate or the duration")
    sample = _sampler(service)
    drawn = np.asarray(sample(rng, arrival.size))
    if drawn.shape != arrival.shape:
        raise TraceError(f"{name}: service= returned shape {drawn.shape} for {arrival.size} "
                         f"jobs; it must return one value per job", column="service_s")
    frame = pd.DataFrame({"arrival_s": arrival,
                          "service_s": non_negative(pd.Series(drawn), "service_s", where),
                          "task_type": task_type, "queue": queue})
    return normalise(frame, service=None, where=where, name=name)


def _count(field: str, value: Any) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ConfigError(field, value, "an integer >= 1")
    return int(value)


def poisson(rate: float, duration_s: float | None = None, *, n: int | None = None,
            service: ServiceSpec, seed: Seed, task_type: str = "default",
            queue: str = "default") -> pd.DataFrame:
    """Poisson arrivals at ``rate`` per second, for ``duration_s`` seconds or ``n`` jobs.

    Give exactly one of ``duration_s`` (a Poisson number of jobs, spread
    uniformly over ``[0, duration_s)``) and ``n`` (exactly ``n`` jobs, the first
    one exponential time after 0).

    >>> trace = poisson(2.0, 60, service=("exponential", 0.5), seed=1)
    >>> len(trace), trace["arrival_s"].is_monotonic_increasing
    (120, True)
    """
    rate = positive("rate", rate)
    rng = np.random.default_rng(seed)
    if (duration_s is None) == (n is None):
        raise ConfigError("duration_s", duration_s, f"given exactly when n is not (n={n!r})")
    if n is not None:
        arrival = np.cumsum(rng.exponential(1 / rate, _count("n", n)))
    else:
        duration = positive("duration_s", duration_s)
        arrival = np.sort(rng.uniform(0.0, duration, rng.poisson(rate * duration)))
    return _trace(arrival, rng, service, task_type, queue, "poisson")


def bursty(duration_s: float, *, rate_on: float, mean_on_s: float, mean_off_s: float,
           rate_off: float = 0.0, service: ServiceSpec, seed: Seed,
           task_type: str = "default", queue: str = "default") -> pd.DataFrame:
    """On/off bursts: a two-state Markov-modulated Poisson process (MMPP).

    The source stays "on" for exponential times of mean ``mean_on_s``,
    sending Poisson arrivals at ``rate_on``, then "off" for mean
    ``mean_off_s`` at ``rate_off`` (0: silent), and so on. It starts in a state
    drawn from the long-run shares, so the mean rate over any duration is
    ``(rate_on * mean_on_s + rate_off * mean_off_s) / (mean_on_s + mean_off_s)``.

    >>> trace = bursty(36_000, rate_on=10, mean_on_s=5, mean_off_s=45, service=0.1, seed=1)
    >>> round(len(trace) / 36_000, 2)  # 10 * 5 / (5 + 45) = 1 per second on average...
    1.03
    >>> per_second = trace["arrival_s"].astype(int).value_counts()
    >>> len(per_second) / 36_000 < 0.15, int(per_second.max())  # ...but silent most seconds
    (True, 24)
    """
    duration = positive("duration_s", duration_s)
    means = (positive("mean_on_s", mean_on_s), positive("mean_off_s", mean_off_s))
    rates = (_rate("rate_on", rate_on), _rate("rate_off", rate_off))
    if rates == (0.0, 0.0):
        raise ConfigError("rate_on", rate_on, "> 0 when rate_off is 0")
    rng = np.random.default_rng(seed)
    first = 0 if rng.random() < means[0] / sum(means) else 1  # 0 = on, 1 = off
    chunks, total = [], 0.0
    while total < duration:  # sojourns in (first, other) pairs, so states alternate
        pairs = int((duration - total) / sum(means)) + 16
        chunk = np.column_stack([rng.exponential(means[first], pairs),
                                 rng.exponential(means[1 - first], pairs)]).ravel()
        chunks.append(chunk)
        total += float(chunk.sum())
    lengths = np.concatenate(chunks)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    inside = starts < duration
    starts, lengths = starts[inside], np.minimum(ends[inside], duration) - starts[inside]
    state_rate = np.resize([rates[first], rates[1 - first]], starts.size)
    counts = rng.poisson(state_rate * lengths)
    arrival = np.repeat(starts, counts) + rng.random(int(counts.sum())) * np.repeat(lengths, counts)
    return _trace(np.sort(arrival), rng, service, task_type, queue, "bursty")


def _rate(field: str, value: Any) -> float:
    finite(field, value)
    if value < 0:
        raise ConfigError(field, value, "a finite rate >= 0 per second")
    return float(value)


def diurnal(duration_s: float, *, mean_rate: float, amplitude: float = 0.5,
            period_s: float = 86_400.0, peak_s: float | None = None, service: ServiceSpec,
            seed: Seed, task_type: str = "default", queue: str = "default") -> pd.DataFrame:
    """A rate that swells and ebbs over ``period_s`` (a day by default), peaking at ``peak_s``.

    The rate is ``mean_rate * (1 + amplitude * cos(2 pi (t - peak_s) / period_s))``.
    Drawn by thinning: Poisson candidates at the peak rate, each kept with
    probability rate(t) / peak rate. ``amplitude`` is in ``[0, 1]`` (0 is plain
    Poisson, 1 falls silent at the trough); ``peak_s`` defaults to half a period,
    so the trace starts at the quietest moment ("midnight").

    >>> trace = diurnal(86_400, mean_rate=0.05, amplitude=0.8, service=20, seed=1)
    >>> night = (trace["arrival_s"] < 3 * 3600).sum()
    >>> noon = trace["arrival_s"].between(10.5 * 3600, 13.5 * 3600).sum()
    >>> int(night), int(noon)
    (149, 970)
    """
    duration = positive("duration_s", duration_s)
    rate = positive("mean_rate", mean_rate)
    finite("amplitude", amplitude)
    if not 0 <= amplitude <= 1:
        raise ConfigError("amplitude", amplitude, "a number in [0, 1]")
    period = positive("period_s", period_s)
    peak = period / 2 if peak_s is None else float(peak_s)
    finite("peak_s", peak)
    rng = np.random.default_rng(seed)
    top = rate * (1 + amplitude)
    candidates = np.sort(rng.uniform(0.0, duration, rng.poisson(top * duration)))
    swell = rate * (1 + amplitude * np.cos(2 * np.pi * (candidates - peak) / period))
    arrival = candidates[rng.random(candidates.size) * top < swell]
    return _trace(arrival, rng, service, task_type, queue, "diurnal")


def from_counts(counts: Sequence[int] | np.ndarray | pd.Series, *, bin_s: float = 60.0,
                service: ServiceSpec, seed: Seed, task_type: str = "default",
                queue: str = "default") -> pd.DataFrame:
    """Arrivals from counts per minute (per ``bin_s`` seconds), for traces published as counts.

    Bin ``i`` covers ``[i * bin_s, (i + 1) * bin_s)``; its jobs arrive at
    independent uniform times within it (Poisson-like inside a bin, which is
    all a count can say). Counts must be whole numbers >= 0; a pandas Series'
    index is ignored, only its order counts.

    >>> trace = from_counts([3, 0, 2], service=1.0, seed=1)
    >>> (trace["arrival_s"] // 60).astype(int).tolist()
    [0, 0, 0, 2, 2]
    """
    bin_width = positive("bin_s", bin_s)
    values = pd.Series(np.asarray(counts, dtype=object) if not isinstance(counts, pd.Series)
                       else counts.to_numpy(dtype=object))
    floats = non_negative(values, "counts", Where("from_counts"))
    fractional = np.flatnonzero(floats != np.floor(floats))
    if fractional.size:
        i = int(fractional[0])
        value = plain(values.iloc[i])
        raise TraceError(f"from_counts: counts at row {i} is not a whole number: {value!r}",
                         column="counts", row=i, value=value)
    whole = floats.astype(np.int64)
    rng = np.random.default_rng(seed)
    starts = np.repeat(np.arange(whole.size) * bin_width, whole)
    arrival = np.sort(starts + rng.random(starts.size) * bin_width)
    return _trace(arrival, rng, service, task_type, queue, "from_counts")
