"""WorkerPool shutdown: each policy, deadlines, reports, signals, and a stress test."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from concurrent.futures import Future, wait
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from poolsim import (
    Backpressure,
    ConfigError,
    JobCancelled,
    JobReturned,
    PoolClosed,
    PoolsimError,
    QueueFull,
    ShutdownPolicy,
    WorkerPool,
    current_job,
    install_signal_handlers,
)

from .conftest import Gate


def busy_pool(gate: Gate, running: int = 2, queued: int = 3, **options: object
              ) -> tuple[WorkerPool, list[Future[object]], list[Future[object]]]:
    pool = WorkerPool(workers=running, queue_size=queued, record=True, **options)  # type: ignore[arg-type]
    on_workers = [pool.submit(gate.job, f"run{i}") for i in range(running)]
    gate.wait_entered(running)
    in_queue = [pool.submit(gate.job, f"queued{i}") for i in range(queued)]
    return pool, on_workers, in_queue


def test_drain_finishes_running_and_queued_jobs(gate: Gate) -> None:
    pool, running, queued = busy_pool(gate)
    threading.Timer(0.02, gate.opened.set).start()
    report = pool.shutdown("drain")
    assert report.policy is ShutdownPolicy.DRAIN
    assert sorted(report.completed) == [0, 1, 2, 3, 4]
    assert (report.returned, report.cancelled, report.still_running) == ((), (), ())
    assert report.clean
    assert [f.result(timeout=5) for f in running + queued] == [
        "run0", "run1", "queued0", "queued1", "queued2"]
    with pytest.raises(PoolClosed):
        pool.submit(gate.job)


def test_finish_in_flight_hands_queued_jobs_back(gate: Gate) -> None:
    pool, running, queued = busy_pool(gate)
    threading.Timer(0.02, gate.opened.set).start()
    report = pool.shutdown("finish_in_flight")
    assert sorted(report.completed) == [0, 1]
    assert [job.job_id for job in report.returned] == [2, 3, 4]
    assert [job() for job in report.returned] == ["queued0", "queued1", "queued2"]
    assert report.returned[0].task_type == "default"
    for future in queued:
        with pytest.raises(JobReturned):
            future.result(timeout=5)
    assert [f.result(timeout=5) for f in running] == ["run0", "run1"]
    assert pool.stats().counts["returned"] == 3
    assert pool.records()["status"].tolist() == ["completed"] * 2 + ["returned"] * 3


def test_immediate_cancels_queued_and_asks_running_jobs_to_stop() -> None:
    stopped: list[bool] = []

    def cooperative() -> None:
        stopped.append(current_job().cancelled.wait(10))

    pool = WorkerPool(workers=2, queue_size=3, record=True)
    started = [pool.submit(cooperative) for _ in range(2)]
    while pool.stats().running < 2:
        time.sleep(0.001)
    queued = [pool.submit(cooperative) for _ in range(3)]
    report = pool.shutdown("immediate", timeout=10)
    assert sorted(report.cancelled) == [0, 1, 2, 3, 4]
    assert report.clean and stopped == [True, True]
    for future in started + queued:
        with pytest.raises(JobCancelled):
            future.result(timeout=5)
    assert pool.stats().counts["cancelled"] == 5


def test_deadline_reports_what_is_still_running_and_returns_the_queue(gate: Gate) -> None:
    pool, running, _queued = busy_pool(gate, running=1, queued=2)
    report = pool.shutdown("drain", timeout=0.05)
    assert report.still_running == (0,) and not report.clean
    assert [job.job_id for job in report.returned] == [1, 2]
    assert not running[0].done()
    gate.opened.set()
    assert running[0].result(timeout=5) == "run0"
    second = pool.shutdown("immediate", timeout=5)  # reports on the same jobs, now settled
    assert second.clean and second.completed == (0,) and second.cancelled == ()
    assert [job.job_id for job in second.returned] == [1, 2]


def test_a_second_shutdown_can_escalate() -> None:
    pool = WorkerPool(workers=1, queue_size=1)
    future = pool.submit(lambda: current_job().cancelled.wait(10))
    while pool.stats().running < 1:
        time.sleep(0.001)
    first = pool.shutdown("drain", timeout=0.01)
    assert first.still_running == (0,)
    second = pool.shutdown("immediate", timeout=10)
    assert second.cancelled == (0,) and second.clean
    with pytest.raises(JobCancelled):
        future.result(timeout=5)


def test_shutdown_defaults_come_from_the_config(gate: Gate) -> None:
    pool, _, _queued = busy_pool(gate, running=1, queued=1, shutdown="finish_in_flight",
                                shutdown_timeout=0.02)
    report = pool.shutdown()
    assert report.policy is ShutdownPolicy.FINISH_IN_FLIGHT
    assert report.still_running == (0,)
    assert [job.job_id for job in report.returned] == [1]
    gate.opened.set()


def test_a_job_may_shut_down_its_own_pool() -> None:
    pool = WorkerPool(workers=1)
    report = pool.submit(lambda: pool.shutdown("drain")).result(timeout=5)
    assert report.still_running == (0,)  # itself: it cannot wait for itself
    with pytest.raises(PoolClosed):
        pool.submit(print)


def test_unknown_shutdown_policy_is_a_clear_error() -> None:
    pool = WorkerPool(workers=1)
    with pytest.raises(ConfigError, match="later") as info:
        pool.shutdown("later")
    assert info.value.field == "policy"
    pool.shutdown()


def test_signal_handlers_need_the_main_thread() -> None:
    pool = WorkerPool(workers=1)
    errors: list[BaseException] = []

    def install() -> None:
        try:
            install_signal_handlers(pool)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=install)
    thread.start()
    thread.join()
    assert len(errors) == 1 and isinstance(errors[0], PoolsimError)
    assert "main thread" in str(errors[0])
    pool.shutdown()


CHILD = textwrap.dedent("""
    import sys, time
    from poolsim import WorkerPool, current_job, install_signal_handlers

    policy, stubborn = sys.argv[1], sys.argv[2] == "stubborn"
    pool = WorkerPool(workers=2, queue_size=10, shutdown=policy)

    def say(*words):  # one write per line: lines from threads never interleave
        sys.stdout.write(" ".join(map(str, words)) + "\\n")
        sys.stdout.flush()

    def job(i):
        say("start", i)
        if stubborn:
            current_job().cancelled.wait(60)
        else:
            time.sleep(0.3)
        say("done", i)

    handle = install_signal_handlers(pool)
    for i in range(6):
        pool.submit(job, i)
    report = handle.wait()
    say("completed", *sorted(report.completed))
    say("returned", *[job.job_id for job in report.returned])
    say("cancelled", *sorted(report.cancelled))
    say("exit")
""")


def run_child(tmp_path: Path, policy: str, signals: list[int], stubborn: bool = False
              ) -> tuple[list[str], int]:
    """Start a real process under load, signal it once two jobs run; its output lines."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    child = subprocess.Popen([sys.executable, str(script), policy,
                              "stubborn" if stubborn else "plain"],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    lines = [child.stdout.readline().strip() for _ in range(2)]
    assert sorted(lines) == ["start 0", "start 1"]
    for signum in signals:
        child.send_signal(signum)
    try:
        out, _ = child.communicate(timeout=60)
    finally:
        child.kill()  # never leave a stuck child behind (a no-op once it has exited)
    return lines + out.split("\n")[:-1], child.returncode


def field(lines: list[str], name: str) -> list[int]:
    [line] = [line for line in lines if line.split()[0] == name]
    return [int(x) for x in line.split()[1:]]


@pytest.mark.slow
def test_sigterm_drain_exits_after_every_job_completes(tmp_path: Path) -> None:
    lines, code = run_child(tmp_path, "drain", [signal.SIGTERM])
    assert code == 0
    done = [line for line in lines if line.startswith("done")]
    assert sorted(done) == [f"done {i}" for i in range(6)]
    assert lines.index("exit") > max(lines.index(line) for line in done)
    assert field(lines, "completed") == list(range(6))


@pytest.mark.slow
def test_sigterm_finish_in_flight_completes_running_jobs_and_returns_the_rest(
        tmp_path: Path) -> None:
    lines, code = run_child(tmp_path, "finish_in_flight", [signal.SIGTERM])
    assert code == 0
    started = {int(line.split()[1]) for line in lines if line.startswith("start")}
    finished = {int(line.split()[1]) for line in lines if line.startswith("done")}
    assert started == finished == set(field(lines, "completed"))
    assert started | set(field(lines, "returned")) == set(range(6))
    assert lines[-1] == "exit"


@pytest.mark.slow
def test_a_second_signal_escalates_to_immediate(tmp_path: Path) -> None:
    lines, code = run_child(tmp_path, "drain", [signal.SIGTERM, signal.SIGINT], stubborn=True)
    assert code == 0
    assert field(lines, "cancelled") == list(range(6))
    assert "exit" in lines  # cancelled jobs may print "done" after it: told to stop, not killed
    assert sorted(line for line in lines if line.startswith("done")) == ["done 0", "done 1"]


@pytest.mark.slow
@pytest.mark.parametrize("policy", list(ShutdownPolicy))
@pytest.mark.parametrize("backpressure", list(Backpressure))
def test_stress_every_future_resolves_exactly_once(backpressure: Backpressure,
                                                   policy: ShutdownPolicy) -> None:
    """8 producers, tens of thousands of submissions, shutdown at a random moment."""
    rng = random.Random(f"{backpressure}/{policy}")
    registry = CollectorRegistry()
    pool = WorkerPool(workers=4, queue_size=64, backpressure=backpressure, block_timeout=0.002,
                      job_timeout=0.2, registry=registry, record=True)
    futures: list[Future[object]] = []
    resolved: Counter[int] = Counter()
    refused = Counter[str]()

    def job(kind: int) -> None:
        if kind == 0:
            raise RuntimeError("job failed")
        if kind == 1:
            current_job().cancelled.wait(1)  # times out (0.2 s) or is cancelled

    def produce(seed: int) -> None:
        local = random.Random(seed)
        for _ in range(2_500):
            try:
                future = pool.submit(job, local.choice([0, 1] + [2] * 400))
            except QueueFull:
                refused["rejected"] += 1
            except PoolClosed:
                refused["closed"] += 1
            else:
                future.add_done_callback(lambda f: resolved.update([id(f)]))
                futures.append(future)

    producers = [threading.Thread(target=produce, args=(rng.random(),)) for _ in range(8)]
    for thread in producers:
        thread.start()
    time.sleep(rng.uniform(0.0, 0.3))
    pool.shutdown(policy, timeout=10)
    for thread in producers:
        thread.join(30)
    _done, not_done = wait(futures, timeout=30)
    assert not not_done
    assert all(resolved[id(f)] == 1 for f in futures)

    counts = pool.stats().counts
    submitted = len(futures) + refused["rejected"]
    assert len(futures) + sum(refused.values()) == 8 * 2_500
    assert submitted == sum(counts.values())
    assert counts["rejected"] == refused["rejected"]
    assert counts["retried"] == 0
    frame = pool.records()
    assert len(frame) == submitted and frame["job_id"].is_unique
    assert frame["status"].value_counts().to_dict() == {k: v for k, v in counts.items()}
    for status, n in counts.items():
        sample = registry.get_sample_value("worker_jobs_total",
                                           {"queue": "default", "status": status})
        assert sample == n, status
