"""The simulator: a SimPy model of WorkerPool, a fast exact kernel, sweeps, queueing theory."""

from poolsim.sim.model import Runtime, SimResult, SimShutdown, simulate
from poolsim.sim.sweep import Recommendation, recommend, sweep
from poolsim.sim.theory import (
    LittlesLaw,
    MMc,
    MMcK,
    erlang_b,
    erlang_c,
    kingman,
    littles_law,
    mmc,
    mmck,
    mmck_for,
)

__all__ = [
    "LittlesLaw",
    "MMc",
    "MMcK",
    "Recommendation",
    "Runtime",
    "SimResult",
    "SimShutdown",
    "erlang_b",
    "erlang_c",
    "kingman",
    "littles_law",
    "mmc",
    "mmck",
    "mmck_for",
    "recommend",
    "simulate",
    "sweep",
]
