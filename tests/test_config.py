"""PoolConfig: every field validated up front, policies normalised, frozen, replace(), repr."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from poolsim import Backpressure, ConfigError, PoolConfig, PoolsimError, ShutdownPolicy
from tests import strategies as s

TIMEOUT_FIELDS = ("block_timeout", "job_timeout", "shutdown_timeout")


def config_error(field: str, value: Any) -> ConfigError:
    """Build a config with one bad field; return the ConfigError, checked to name it."""
    with pytest.raises(ConfigError) as info:
        PoolConfig(**{field: value})
    err = info.value
    assert err.field == field
    assert err.value is value  # the very object passed, so NaN and numpy values are visible
    assert isinstance(err, ValueError)
    assert isinstance(err, PoolsimError)
    assert field in str(err)
    assert err.allowed in str(err)
    return err


# -- defaults and one bad value per field -------------------------------------------------


def test_defaults() -> None:
    cfg = PoolConfig()
    assert (cfg.workers, cfg.queue_size, cfg.block_timeout, cfg.job_timeout,
            cfg.shutdown_timeout) == (4, 100, 1.0, None, None)
    assert cfg.backpressure is Backpressure.REJECT
    assert cfg.shutdown is ShutdownPolicy.DRAIN


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("workers", 0),
        ("workers", -3),
        ("workers", 2.0),
        ("workers", True),
        ("workers", "4"),
        ("workers", None),
        ("queue_size", -1),
        ("queue_size", 1.5),
        ("queue_size", False),
        ("queue_size", math.inf),
        ("backpressure", "drop-oldest"),
        ("backpressure", "REJECT"),
        ("backpressure", None),
        ("backpressure", ShutdownPolicy.DRAIN),  # an enum of the wrong kind
        ("shutdown", "graceful"),
        ("shutdown", Backpressure.REJECT),
        ("block_timeout", 0),
        ("block_timeout", -1.0),
        ("job_timeout", math.nan),
        ("job_timeout", math.inf),
        ("shutdown_timeout", "30"),
        ("shutdown_timeout", True),
    ],
)
def test_each_field_names_itself_and_the_value(field: str, value: Any) -> None:
    config_error(field, value)


def test_message_says_what_is_allowed() -> None:
    err = config_error("backpressure", "shed")
    for policy in Backpressure:
        assert repr(policy.value) in err.allowed
    err = config_error("shutdown", "later")
    for shutdown in ShutdownPolicy:
        assert repr(shutdown.value) in err.allowed
    assert "1" in config_error("workers", 0).allowed
    assert "0" in config_error("queue_size", -1).allowed


def test_first_bad_field_among_several_is_named() -> None:
    with pytest.raises(ConfigError) as info:
        PoolConfig(workers=0, job_timeout=-1)
    assert info.value.field in {"workers", "job_timeout"}


# -- ranges, with hypothesis --------------------------------------------------------------


@given(s.valid_workers)
def test_workers_accepts_integers_from_one(value: Any) -> None:
    cfg = PoolConfig(workers=value)
    assert cfg.workers == int(value)
    assert type(cfg.workers) is int  # numpy integers are normalised


@given(s.invalid_workers)
def test_workers_rejects_everything_else(value: Any) -> None:
    config_error("workers", value)


@given(s.valid_queue_sizes)
def test_queue_size_accepts_none_and_integers_from_zero(value: Any) -> None:
    cfg = PoolConfig(queue_size=value)
    if value is None:
        assert cfg.queue_size is None
    else:
        assert cfg.queue_size == int(value)
        assert type(cfg.queue_size) is int


@given(s.invalid_queue_sizes)
def test_queue_size_rejects_everything_else(value: Any) -> None:
    config_error("queue_size", value)


@pytest.mark.parametrize("field", TIMEOUT_FIELDS)
@given(value=s.valid_timeouts)
def test_timeouts_accept_none_or_finite_positive_seconds(field: str, value: Any) -> None:
    cfg = PoolConfig(**{field: value})
    got = getattr(cfg, field)
    if value is None:
        assert got is None
    else:
        assert type(got) is float
        assert got == float(value)
        assert got > 0


@pytest.mark.parametrize("field", TIMEOUT_FIELDS)
@given(value=s.invalid_timeouts)
def test_timeouts_reject_everything_else(field: str, value: Any) -> None:
    config_error(field, value)


@pytest.mark.parametrize("field", TIMEOUT_FIELDS)
def test_timeout_too_big_for_a_float_is_a_config_error(field: str) -> None:
    # An int beyond float range must not escape as a bare OverflowError.
    config_error(field, 10**400)


@pytest.mark.parametrize("np_type", s.NUMPY_INT_TYPES)
def test_numpy_integers_accepted_everywhere(np_type: type) -> None:
    cfg = PoolConfig(workers=np_type(3), queue_size=np_type(0), job_timeout=np_type(2),
                     block_timeout=np.float32(0.5))
    assert (cfg.workers, cfg.queue_size, cfg.job_timeout, cfg.block_timeout) == (3, 0, 2.0, 0.5)
    assert (type(cfg.workers), type(cfg.queue_size), type(cfg.job_timeout)) == (int, int, float)


# -- policies ---------------------------------------------------------------------------


@given(s.backpressures, s.shutdown_policies)
def test_policies_accepted_as_strings_or_enums_and_normalised(bp: Any, sd: Any) -> None:
    cfg = PoolConfig(backpressure=bp, shutdown=sd)
    assert type(cfg.backpressure) is Backpressure
    assert type(cfg.shutdown) is ShutdownPolicy
    assert cfg.backpressure == bp
    assert cfg.shutdown == sd


@given(s.bad_policy_names)
def test_unknown_policy_names_rejected(name: str) -> None:
    config_error("backpressure", name)
    config_error("shutdown", name)


def test_policy_values_are_the_documented_names() -> None:
    assert [b.value for b in Backpressure] == ["reject", "block", "drop_oldest", "caller_runs"]
    assert [p.value for p in ShutdownPolicy] == ["drain", "finish_in_flight", "immediate"]


# -- capacity, replace, frozen, repr ------------------------------------------------------


@given(st.integers(1, 1000), st.none() | st.integers(0, 1000))
def test_capacity_is_workers_plus_queue_places(workers: int, queue_size: int | None) -> None:
    cfg = PoolConfig(workers=workers, queue_size=queue_size)
    assert cfg.capacity == (None if queue_size is None else workers + queue_size)


def test_capacity_examples() -> None:
    assert PoolConfig(workers=8, queue_size=100).capacity == 108
    assert PoolConfig(workers=3, queue_size=0).capacity == 3  # hand-off only
    assert PoolConfig(workers=3, queue_size=None).capacity is None  # unbounded


def test_replace_changes_fields_and_normalises() -> None:
    cfg = PoolConfig(workers=2, backpressure="block")
    new = cfg.replace(workers=np.int64(5), shutdown="immediate", job_timeout=3)
    assert (new.workers, new.shutdown, new.job_timeout) == (5, ShutdownPolicy.IMMEDIATE, 3.0)
    assert type(new.workers) is int
    assert new.backpressure is Backpressure.BLOCK  # kept
    assert (cfg.workers, cfg.shutdown, cfg.job_timeout) == (2, ShutdownPolicy.DRAIN, None)


@pytest.mark.parametrize(
    ("field", "value"),
    [("workers", 0), ("queue_size", -2), ("backpressure", "nope"), ("shutdown", "nope"),
     ("block_timeout", -1), ("job_timeout", math.inf), ("shutdown_timeout", False)],
)
def test_replace_validates_again(field: str, value: Any) -> None:
    cfg = PoolConfig()
    with pytest.raises(ConfigError) as info:
        cfg.replace(**{field: value})
    assert (info.value.field, info.value.value) == (field, value)


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(PoolConfig)])
def test_frozen(field: str) -> None:
    cfg = PoolConfig()
    before = getattr(cfg, field)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(cfg, field, before)
    assert getattr(cfg, field) == before


def test_keyword_only_and_no_unknown_fields() -> None:
    with pytest.raises(TypeError):
        PoolConfig(4)  # type: ignore[misc]
    with pytest.raises(TypeError):
        PoolConfig(threads=4)  # type: ignore[call-arg]


def test_equal_configs_compare_and_hash_equal() -> None:
    a = PoolConfig(workers=np.int32(2), backpressure="caller_runs")
    b = PoolConfig(workers=2, backpressure=Backpressure.CALLER_RUNS)
    assert a == b
    assert hash(a) == hash(b)


def test_repr_shows_policy_values_and_round_trips() -> None:
    cfg = PoolConfig(workers=3, queue_size=None, backpressure="drop_oldest",
                     shutdown=ShutdownPolicy.FINISH_IN_FLIGHT, job_timeout=2)
    text = repr(cfg)
    assert text.startswith("PoolConfig(")
    assert "'drop_oldest'" in text
    assert "'finish_in_flight'" in text
    assert "Backpressure" not in text
    assert "ShutdownPolicy" not in text
    assert "job_timeout=2.0" in text
    assert "queue_size=None" in text
    assert eval(text, {"PoolConfig": PoolConfig}) == cfg
