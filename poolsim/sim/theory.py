"""Queueing theory to check the simulator and the real pool against: M/M/c, M/M/c/K, G/G/c.

The formulas are the textbook ones, computed so that they stay accurate for
thousands of servers (Erlang B recursion and log-space weights, never
factorials). poolsim's ``queue_size`` counts *waiting* places only, so the
finite M/M/c/K system is ``PoolConfig(workers=c, queue_size=K - c)``
(:func:`mmck_for` does the translation), and an unbounded pool
(``queue_size=None``) is M/M/c.

Rates are per second, times in seconds. Invalid inputs raise
:class:`~poolsim.errors.ConfigError` naming the argument.

>>> round(mmc(10.0, 1 / 3, 4).mean_response, 3)     # lambda = 10/s, 1/3 s each, 4 workers
0.662
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

import numpy as np
import pandas as pd

from poolsim.config import Backpressure, PoolConfig
from poolsim.errors import ConfigError

__all__ = [
    "LittlesLaw",
    "MMc",
    "MMcK",
    "erlang_b",
    "erlang_c",
    "kingman",
    "littles_law",
    "mmc",
    "mmck",
    "mmck_for",
]

# -- argument checks -------------------------------------------------------------------


def _real(value: Any) -> float:
    """``value`` as a float if it is a real number (not a bool), else NaN."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except OverflowError:  # an int beyond float range
        return math.inf


def _positive(field: str, value: Any) -> float:
    """A finite real number > 0 (booleans refused), as a float."""
    number = _real(value)
    if not (math.isfinite(number) and number > 0):
        raise ConfigError(field, value, "a finite number > 0")
    return number


def _non_negative(field: str, value: Any) -> float:
    number = _real(value)
    if not (math.isfinite(number) and number >= 0):
        raise ConfigError(field, value, "a finite number >= 0")
    return number


def _count(field: str, value: Any, minimum: int) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise ConfigError(field, value, f"an integer >= {minimum}")
    return int(value)


def _probability(value: Any) -> float:
    number = _real(value)
    if not 0.0 <= number < 1.0:
        raise ConfigError("p", value, "a probability in [0, 1)")
    return number


def _stable(arrival_rate: float, service_rate: float, servers: int) -> None:
    """Infinite-queue results exist only for rho = lambda / (c mu) < 1."""
    rho = arrival_rate / (servers * service_rate)
    if not rho < 1.0:
        raise ConfigError(
            "arrival_rate", arrival_rate,
            f"below servers x service rate = {servers * service_rate:g}/s (rho = {rho:.4g} >= 1: "
            "an unbounded queue grows without limit; use mmck for a finite queue)")


# -- Erlang B and C ---------------------------------------------------------------------


def _erlang_b(load: float, servers: int) -> float:
    blocking = 1.0  # B(0)
    for k in range(1, servers + 1):
        blocking = load * blocking / (k + load * blocking)
    return blocking


def erlang_b(arrival_rate: float, service_rate: float, servers: int) -> float:
    """Probability that an arrival finds all ``servers`` busy in M/M/c/c (no queue): it is lost.

    Uses the recursion B(k) = a B(k-1) / (k + a B(k-1)) with a = lambda / mu, which is
    stable for any number of servers. Valid for any load.

    >>> round(erlang_b(2.0, 1.0, 2), 4)      # a = 2 Erlang on 2 servers: 2 / 5
    0.4
    """
    lam = _positive("arrival_rate", arrival_rate)
    mu = _positive("service_rate", service_rate)
    return _erlang_b(lam / mu, _count("servers", servers, 1))


def erlang_c(arrival_rate: float, service_rate: float, servers: int) -> float:
    """Probability that an arrival has to wait in M/M/c (unbounded FIFO queue).

    Computed from Erlang B as C = B / (1 - rho (1 - B)), so it is accurate for
    c up to thousands. Raises ``ConfigError`` unless rho = lambda / (c mu) < 1.

    >>> round(erlang_c(10.0, 3.0, 4), 4)
    0.6577
    """
    lam = _positive("arrival_rate", arrival_rate)
    mu = _positive("service_rate", service_rate)
    c = _count("servers", servers, 1)
    _stable(lam, mu, c)
    rho = lam / (c * mu)
    blocking = _erlang_b(lam / mu, c)
    return blocking / (1.0 - rho * (1.0 - blocking))


# -- M/M/c -------------------------------------------------------------------------------


def _sum_of_exponentials_survival(theta: float, mu: float, t: float) -> float:
    """P(X + Y > t) for independent X ~ Exp(theta), Y ~ Exp(mu), without cancellation."""
    d = theta - mu
    if abs(d * t) < 1.0:  # e^{-mu t} (1 + mu t (1 - e^{-d t}) / (d t)); the ratio -> 1
        x = d * t
        ratio = 1.0 if x == 0.0 else -math.expm1(-x) / x
        return math.exp(-mu * t) * (1.0 + mu * t * ratio)
    return (theta * math.exp(-mu * t) - mu * math.exp(-theta * t)) / d


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class MMc:
    """Steady state of M/M/c: Poisson arrivals, exponential service, c servers, FIFO, no limit.

    ``rho`` is the utilisation lambda / (c mu); ``p_wait`` the Erlang C
    probability of waiting; ``mean_wait`` (Wq) is time in queue,
    ``mean_response`` (W) time in system; ``mean_queue_length`` (Lq) and
    ``mean_in_system`` (L) are time averages. Little: L = lambda W.
    """

    arrival_rate: float
    mean_service: float
    servers: int
    rho: float
    p_wait: float
    mean_wait: float
    mean_response: float
    mean_queue_length: float
    mean_in_system: float

    @property
    def _drain_rate(self) -> float:
        """c mu - lambda: the rate of the exponential wait of a job that waits."""
        return self.servers / self.mean_service - self.arrival_rate

    def wait_cdf(self, t: float) -> float:
        """P(wait <= t) = 1 - C e^{-(c mu - lambda) t} for t >= 0 (0 for t < 0). Exact."""
        if t < 0:
            return 0.0
        return 1.0 - self.p_wait * math.exp(-self._drain_rate * t)

    def wait_quantile(self, p: float) -> float:
        """The smallest t with P(wait <= t) >= p (0 when p <= 1 - C). Exact.

        >>> round(mmc(10.0, 1 / 3, 4).wait_quantile(0.9), 4)
        0.9418
        """
        p = _probability(p)
        if p <= 1.0 - self.p_wait:
            return 0.0
        return math.log(self.p_wait / (1.0 - p)) / self._drain_rate

    def response_cdf(self, t: float) -> float:
        """P(time in system <= t). Exact: FIFO wait plus an independent Exp(mu) service."""
        if t < 0:
            return 0.0
        mu = 1.0 / self.mean_service
        served_at_once = math.exp(-mu * t)
        waited = _sum_of_exponentials_survival(self._drain_rate, mu, t)
        return 1.0 - ((1.0 - self.p_wait) * served_at_once + self.p_wait * waited)

    def response_quantile(self, p: float) -> float:
        """The t with P(time in system <= t) = p, found by bisection on the exact CDF.

        Exact to about 1e-12 relative: the CDF is closed-form, only its inverse is numeric.
        """
        p = _probability(p)
        if p == 0.0:
            return 0.0
        low, high = 0.0, self.mean_response
        while self.response_cdf(high) < p:
            low, high = high, 2.0 * high
        for _ in range(200):
            middle = 0.5 * (low + high)
            if middle in (low, high) or high - low <= 1e-13 * high:
                break
            if self.response_cdf(middle) < p:
                low = middle
            else:
                high = middle
        return high


def mmc(arrival_rate: float, mean_service: float, servers: int) -> MMc:
    """M/M/c results for ``servers`` workers, Poisson arrivals and exponential service.

    Raises ``ConfigError`` for non-positive rates, ``servers < 1`` or rho >= 1.

    >>> result = mmc(10.0, 1 / 3, 4)
    >>> round(result.rho, 3), round(result.p_wait, 3), round(result.mean_response, 3)
    (0.833, 0.658, 0.662)
    """
    lam = _positive("arrival_rate", arrival_rate)
    service = _positive("mean_service", mean_service)
    c = _count("servers", servers, 1)
    mu = 1.0 / service
    _stable(lam, mu, c)
    p_wait = erlang_c(lam, mu, c)
    mean_wait = p_wait / (c * mu - lam)
    mean_response = mean_wait + service
    return MMc(
        arrival_rate=lam,
        mean_service=service,
        servers=c,
        rho=lam / (c * mu),
        p_wait=p_wait,
        mean_wait=mean_wait,
        mean_response=mean_response,
        mean_queue_length=lam * mean_wait,
        mean_in_system=lam * mean_response,
    )


# -- M/M/c/K ------------------------------------------------------------------------------


def _logsumexp(values: np.ndarray) -> float:
    top = float(values.max())
    return top + math.log(float(np.exp(values - top).sum()))


def _geometric_block(x: float, m: int) -> tuple[float, float, float]:
    """For weights e^{x j}, j = 1..m: log of their sum, their weighted mean index, and
    the last weight's share of the sum.

    These are the m waiting states of M/M/c/K relative to state c, with
    x = log rho. Closed forms with expm1 avoid overflow for rho > 1 and
    cancellation for rho near 1 (where the mean index is (m + 1) / 2).
    """
    a = abs(x)
    ratio = float(m) if a == 0.0 else math.expm1(-a * m) / math.expm1(-a)
    log_sum = max(x, x * m) + math.log(ratio)
    last_share = (1.0 if x > 0 else math.exp(x * (m - 1))) / ratio
    if a * m < 1e-4:  # mean + x Var of the uniform on 1..m; next term is O((x m)^3)
        mean = (m + 1) / 2 + x * (m * m - 1) / 12
    else:  # for decreasing weights 1/(1-r) - m r^m / (1 - r^m); mirror for increasing
        falling = -1.0 / math.expm1(-a) - m * math.exp(-a * m) / -math.expm1(-a * m)
        mean = falling if x < 0 else m + 1 - falling
    return log_sum, mean, last_share


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class MMcK:
    """Steady state of M/M/c/K: c servers and room for ``capacity`` = K jobs in all.

    An arrival that finds K jobs is lost (``blocking``, by PASTA also the
    fraction of arrivals lost); ``throughput`` is the accepted rate
    lambda (1 - blocking); ``utilisation`` is throughput x mean service / c.
    ``p_wait``, ``mean_wait`` and ``mean_response`` are over *accepted* jobs;
    ``mean_queue_length`` (Lq) and ``mean_in_system`` (L) are time averages,
    and L = throughput x mean_response. ``rho`` is the offered lambda / (c mu),
    which may be >= 1. ``capacity`` is ``None`` for an unbounded queue (M/M/c,
    from :func:`mmck_for`).
    """

    arrival_rate: float
    mean_service: float
    servers: int
    capacity: int | None
    rho: float
    blocking: float
    throughput: float
    utilisation: float
    p_wait: float
    mean_wait: float
    mean_response: float
    mean_queue_length: float
    mean_in_system: float


def mmck(arrival_rate: float, mean_service: float, servers: int, capacity: int) -> MMcK:
    """M/M/c/K results, for any load (also rho >= 1): ``capacity`` = K places in all.

    poolsim's ``queue_size`` counts waiting places only, so this is
    ``PoolConfig(workers=c, queue_size=K - c)`` under ``reject``; see
    :func:`mmck_for`. K = c is the Erlang loss system (blocking = Erlang B).

    >>> result = mmck(10.0, 1 / 3, 4, 10)     # 4 workers, queue_size=6
    >>> round(result.blocking, 4), round(result.throughput, 3)
    (0.045, 9.55)
    """
    lam = _positive("arrival_rate", arrival_rate)
    service = _positive("mean_service", mean_service)
    c = _count("servers", servers, 1)
    k = _count("capacity", capacity, c)
    load = lam * service  # a = lambda / mu, in Erlang
    n = np.arange(c + 1)
    log_weight = n * math.log(load) - np.concatenate([[0.0], np.cumsum(np.log(n[1:]))])
    log_c = float(log_weight[-1])  # state c; states c + j weigh e^{log_c + j log rho}
    x = math.log(load / c)
    m = k - c
    if m:
        log_block, mean_j, last_share = _geometric_block(x, m)
        log_z = _logsumexp(np.append(log_weight, log_c + log_block))
        p_block = math.exp(log_c + log_block - log_z)  # P(c < N <= K)
    else:
        log_z, p_block, mean_j = _logsumexp(log_weight), 0.0, 0.0
    p = np.exp(log_weight - log_z)
    p_full = p_block * last_share if m else float(p[-1])  # P(N = K)
    throughput = lam * (1.0 - p_full)
    queue_length = p_block * mean_j
    in_system = float((n * p).sum()) + p_block * (c + mean_j)
    return MMcK(
        arrival_rate=lam,
        mean_service=service,
        servers=c,
        capacity=k,
        rho=load / c,
        blocking=p_full,
        throughput=throughput,
        utilisation=throughput * service / c,
        p_wait=min(1.0, max(0.0, (float(p[-1]) + p_block - p_full) / (1.0 - p_full))),
        mean_wait=queue_length / throughput,
        mean_response=in_system / throughput,
        mean_queue_length=queue_length,
        mean_in_system=in_system,
    )


def mmck_for(config: PoolConfig, arrival_rate: float, mean_service: float) -> MMcK:
    """Theory for a pool config: M/M/c/K with c = ``workers``, K = ``workers + queue_size``.

    Under ``reject`` every result applies. Under ``drop_oldest`` the number in
    the pool follows the same process, so ``blocking`` is the fraction of jobs
    dropped and L, Lq, throughput are the same, but the wait of jobs that
    complete differs. ``queue_size=None`` gives M/M/c as an ``MMcK`` with
    ``capacity=None`` and no blocking (``ConfigError`` if rho >= 1). Other
    policies and ``job_timeout`` are not M/M/c/K: ``ConfigError``.
    """
    if config.backpressure not in (Backpressure.REJECT, Backpressure.DROP_OLDEST):
        raise ConfigError("backpressure", str(config.backpressure),
                          "'reject' or 'drop_oldest' (others hold the submitter: not M/M/c/K)")
    if config.job_timeout is not None:
        raise ConfigError("job_timeout", config.job_timeout,
                          "None (queueing theory has no job timeouts)")
    if config.capacity is not None:
        return mmck(arrival_rate, mean_service, config.workers, config.capacity)
    base = mmc(arrival_rate, mean_service, config.workers)
    return MMcK(
        arrival_rate=base.arrival_rate,
        mean_service=base.mean_service,
        servers=base.servers,
        capacity=None,
        rho=base.rho,
        blocking=0.0,
        throughput=base.arrival_rate,
        utilisation=base.rho,
        p_wait=base.p_wait,
        mean_wait=base.mean_wait,
        mean_response=base.mean_response,
        mean_queue_length=base.mean_queue_length,
        mean_in_system=base.mean_in_system,
    )


# -- G/G/c ---------------------------------------------------------------------------------


def kingman(arrival_rate: float, mean_service: float, servers: int, ca2: float,
            cs2: float) -> float:
    """Approximate mean wait in G/G/c (Allen-Cunneen; Kingman's formula for c = 1).

    Wq ~ C(c, a) / (c mu - lambda) x (ca2 + cs2) / 2, where ``ca2`` and ``cs2``
    are the squared coefficients of variation of inter-arrival and service
    times (1 and 1 give the exact M/M/c wait). An approximation: good in heavy
    traffic, rough at low load. Raises ``ConfigError`` unless rho < 1.

    >>> round(kingman(0.9, 1.0, 1, 1.0, 0.0), 2)     # M/D/1 at rho = 0.9: exact too
    4.5
    """
    lam = _positive("arrival_rate", arrival_rate)
    service = _positive("mean_service", mean_service)
    c = _count("servers", servers, 1)
    variability = (_non_negative("ca2", ca2) + _non_negative("cs2", cs2)) / 2.0
    return mmc(lam, service, c).mean_wait * variability


# -- Little's law --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class LittlesLaw:
    """L measured as a time average vs lambda x W, over completed jobs in a window.

    ``mean_in_system`` (L) is the time-average number of completed jobs in the
    system during [``start_s``, ``end_s``]; ``throughput`` (lambda) is completed
    jobs that left in the window per second (the *accepted* rate: rejected jobs
    never enter); ``mean_time_in_system`` (W) is their mean end - arrival.
    """

    start_s: float
    end_s: float
    jobs: int
    mean_in_system: float
    throughput: float
    mean_time_in_system: float

    @property
    def lambda_w(self) -> float:
        """throughput x mean time in system: what L should be."""
        return self.throughput * self.mean_time_in_system

    @property
    def relative_error(self) -> float:
        """(L - lambda W) / L; NaN when L is 0 or NaN."""
        if not self.mean_in_system:
            return math.nan
        return (self.mean_in_system - self.lambda_w) / self.mean_in_system

    def __str__(self) -> str:
        return (f"Little's law over {self.start_s:.4g}..{self.end_s:.4g} s: "
                f"L = {self.mean_in_system:.4g} jobs (time average) vs "
                f"lambda W = {self.throughput:.4g}/s x {self.mean_time_in_system:.4g} s = "
                f"{self.lambda_w:.4g} jobs ({self.relative_error:+.2%})")


_LITTLE_COLUMNS = ("arrival_s", "end_s", "status")


def littles_law(jobs: pd.DataFrame, *, window: tuple[float, float] | None = None) -> LittlesLaw:
    """Check L = lambda W on a jobs frame, using completed jobs and the accepted throughput.

    Over the whole run (``window=None``: first arrival to last end, the span of
    :func:`~poolsim.summarize`) every counted job lies inside, so L = lambda W
    holds exactly and a difference means a broken frame. Over a ``window``
    (e.g. after a warm-up) jobs straddle its edges and it holds approximately:
    a steady-state check. Statistics of an empty selection are NaN.
    """
    missing = [column for column in _LITTLE_COLUMNS if column not in jobs.columns]
    if missing:
        raise ConfigError("jobs", missing, "a jobs frame with columns "
                          + ", ".join(_LITTLE_COLUMNS))
    done = (jobs["status"].astype(str) == "completed").to_numpy()
    arrival = jobs["arrival_s"].to_numpy(dtype=float)
    end = jobs["end_s"].to_numpy(dtype=float)
    if window is None:
        ends = end[~np.isnan(end)]
        low = float(arrival.min()) if arrival.size else math.nan
        high = float(ends.max()) if ends.size else math.nan
    else:
        low, high = (float(t) for t in window)
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ConfigError("window", window, "(start_s, end_s) with finite start_s < end_s")
    arrival, end = arrival[done], end[done]
    length = high - low
    if not length > 0:
        nan = math.nan
        return LittlesLaw(start_s=low, end_s=high, jobs=0, mean_in_system=nan, throughput=nan,
                          mean_time_in_system=nan)
    overlap = np.clip(np.minimum(end, high) - np.maximum(arrival, low), 0.0, None)
    left = (end > low) & (end <= high) if window is not None else np.ones(end.size, bool)
    sojourn = end[left] - arrival[left]
    return LittlesLaw(
        start_s=low,
        end_s=high,
        jobs=int(left.sum()),
        mean_in_system=float(overlap.sum()) / length,
        throughput=float(left.sum()) / length,
        mean_time_in_system=float(sojourn.mean()) if sojourn.size else math.nan,
    )
