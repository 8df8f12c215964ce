"""Queue sizes are read from the store at scrape time, into the registry given."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from poolsim.queue import State
from poolsim.queue.backends.base import Backend
from poolsim.queue.metrics import QueueCollector
from tests.queue.conftest import T0, seed_tasks


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def test_every_state_of_every_queue_is_exported(backend: Backend,
                                                registry: CollectorRegistry) -> None:
    QueueCollector(backend, registry=registry, clock=lambda: T0 + 12)
    seed_tasks(backend, list(State))
    seed_tasks(backend, ["pending", "pending", "archived"], queue="critical")
    value = registry.get_sample_value
    assert value("poolsim_queue_depth", {"queue": "default"}) == 1
    assert value("poolsim_queue_depth", {"queue": "critical"}) == 2
    for state in State:
        assert value("poolsim_queue_tasks", {"queue": "default", "state": state.value}) == 1
    assert value("poolsim_queue_tasks", {"queue": "critical", "state": "archived"}) == 1
    assert value("poolsim_queue_tasks", {"queue": "critical", "state": "retry"}) == 0
    assert value("poolsim_queue_latency_seconds", {"queue": "critical"}) == pytest.approx(12)
    assert value("poolsim_queue_paused", {"queue": "critical"}) == 0


def test_values_are_read_at_scrape_time(backend: Backend, registry: CollectorRegistry) -> None:
    QueueCollector(backend, registry=registry, clock=lambda: T0)
    assert registry.get_sample_value("poolsim_queue_depth", {"queue": "low"}) is None
    seed_tasks(backend, ["pending"], queue="low")
    assert registry.get_sample_value("poolsim_queue_depth", {"queue": "low"}) == 1
    seed_tasks(backend, ["pending", "pending"], queue="low")
    backend.pause("low", True)
    assert registry.get_sample_value("poolsim_queue_depth", {"queue": "low"}) == 3
    assert registry.get_sample_value("poolsim_queue_paused", {"queue": "low"}) == 1
    backend.claim(["low"], worker="w", now=T0, lease_s=5, limit=3)  # paused: takes none
    backend.pause("low", False)
    backend.claim(["low"], worker="w", now=T0, lease_s=5, limit=2)
    assert registry.get_sample_value("poolsim_queue_depth", {"queue": "low"}) == 1
    assert registry.get_sample_value("poolsim_queue_tasks",
                                     {"queue": "low", "state": "active"}) == 2
    assert registry.get_sample_value("poolsim_queue_latency_seconds", {"queue": "low"}) == 0


def test_exposition_and_registration(queue_url: str, registry: CollectorRegistry) -> None:
    url = queue_url
    collector = QueueCollector(url, registry=registry)
    text = generate_latest(registry).decode()
    assert "# TYPE poolsim_queue_depth gauge" in text
    assert "# TYPE poolsim_queue_tasks gauge" in text
    assert [m.name for m in collector.describe()] == [
        "poolsim_queue_depth", "poolsim_queue_tasks", "poolsim_queue_latency_seconds",
        "poolsim_queue_paused"]
    with pytest.raises(ValueError, match="Duplicated"):  # describe() lets a registry check
        QueueCollector(url, registry=registry)
    unregistered = QueueCollector(url, registry=None)
    assert unregistered.backend.url == url
    collector.backend.close()
    unregistered.backend.close()
