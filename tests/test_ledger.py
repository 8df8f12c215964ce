"""Ledger: decisions happen once, and a failing observer never breaks a pool."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future

import pytest

from poolsim.errors import JobDropped
from poolsim.jobs import Job
from poolsim.ledger import COMPLETED, DROPPED, Ledger


class Broken:
    def job_started(self, job: Job) -> None:
        raise RuntimeError("started")

    def job_resolved(self, job: Job) -> None:
        raise RuntimeError("resolved")

    def job_released(self, job: Job, duration: float) -> None:
        raise RuntimeError("released")


def admitted(ledger: Ledger, job_id: int = 0) -> Job:
    job = Job(job_id, "default", print, (), {}, Future(), 0.0)
    ledger.undecided[job_id] = job
    ledger.running[job_id] = job
    return job


def test_a_job_is_decided_exactly_once() -> None:
    ledger = Ledger("q", record=True, workers=1, idle=threading.Event())
    job = admitted(ledger)
    assert ledger.decide(job, DROPPED, JobDropped(0))
    assert not ledger.decide(job, DROPPED, JobDropped(0))
    ledger.release(job, COMPLETED, "late", 0)
    assert job.status == DROPPED and job.released and job.cancelled.is_set()
    with pytest.raises(JobDropped):
        job.handle.result(timeout=0)
    assert ledger.counts()["dropped"] == 1 and ledger.counts()["completed"] == 0
    assert ledger.records()["status"].tolist() == ["dropped"]


def test_a_failing_observer_is_logged_and_the_job_still_settles(
        caplog: pytest.LogCaptureFixture) -> None:
    ledger = Ledger("q", record=False, workers=1, idle=threading.Event(), observers=[Broken()])
    job = admitted(ledger)
    job.start = 1.0
    with caplog.at_level(logging.ERROR, logger="poolsim"):
        ledger.notify_started(job)
        ledger.release(job, COMPLETED, "value", 0)
    assert ledger.counts()["completed"] == 1
    assert job.handle.result(timeout=0) == "value"
    assert [r.getMessage().split(" failed in ")[1] for r in caplog.records] == [
        "job_started", "job_resolved", "job_released"]


def test_idle_is_signalled_once_closed_and_empty() -> None:
    idle = threading.Event()
    ledger = Ledger("q", record=False, workers=1, idle=idle)
    job = admitted(ledger)
    assert ledger.close() and not ledger.close()
    ledger.check_idle()
    assert not idle.is_set()
    ledger.release(job, COMPLETED, None, 0)
    assert idle.is_set()
    assert [j.job_id for j in ledger.at_close] == [0]
