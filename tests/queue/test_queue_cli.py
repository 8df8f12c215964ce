"""``poolsim queue ...``, ``poolsim worker`` and ``poolsim scheduler`` on real stores, once per
backend (conftest's ``queue_url``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from poolsim.cli import main
from poolsim.queue import Client, Inspector, State, Task
from poolsim.queue.backends.base import Outcome


@pytest.fixture
def url(queue_url: str) -> Iterator[str]:
    """A store with 3 pending tasks in ``critical``, 1 scheduled in ``low``, 1 archived."""
    url = queue_url
    with Client(url) as client:
        for n in range(4):
            client.enqueue(Task("email:welcome", {"user_id": str(n)}), queue="critical",
                           task_id=f"welcome-{n}")
        client.enqueue(Task("report:daily"), queue="low", process_in=3600, task_id="report")
        now = time.time()
        [info] = client.backend.claim(["critical"], worker="w", now=now, lease_s=30, limit=1)
        client.backend.finish(info.id, worker="w", now=now, outcome=Outcome(
            state=State.ARCHIVED, status="failed", error="KeyError: 'email'\nmore lines"))
    yield url


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_stats_prints_an_aligned_table(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "queue", "--url", url, "stats")
    assert status == 0
    header, critical, low = out.splitlines()
    assert header.split() == ["queue", "scheduled", "pending", "active", "retry", "archived",
                              "completed", "latency", "paused", "processed", "today",
                              "failed", "today"]
    assert critical.split()[:7] == ["critical", "0", "3", "0", "0", "1", "0"]
    assert low.split()[:3] == ["low", "1", "0"]
    assert critical.split()[-3:] == ["no", "1", "1"]
    # numbers are right-aligned under their headers
    assert header.index("pending") + len("pending") == critical.index("3") + 1
    assert len({len(line.rstrip()) for line in (header, critical)}) == 1


def test_url_from_the_environment(url: str, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POOLSIM_QUEUE_URL", url)
    status, out, _ = run(capsys, "queue", "stats")
    assert status == 0 and out.startswith("queue")


def test_default_url_is_jobs_db_in_the_current_directory(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # SQLite only: the default store is a SQLite file, and the message names that file.
    monkeypatch.delenv("POOLSIM_QUEUE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    status, _, err = run(capsys, "queue", "stats")
    assert status == 2
    assert err == ("poolsim: error: url='sqlite:///jobs.db' is invalid: an existing queue "
                   "database (no file 'jobs.db'; pass --url or set POOLSIM_QUEUE_URL)\n")
    assert not (tmp_path / "jobs.db").exists()  # a mistyped URL creates nothing
    with Client("sqlite:///jobs.db"):
        pass
    status, out, _ = run(capsys, "queue", "stats")
    assert (status, out) == (0, "no queues yet\n")


def test_ls_lists_a_state(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "queue", "--url", url, "ls", "pending", "--queue", "critical")
    lines = out.splitlines()
    assert status == 0 and lines[0].split() == ["id", "type", "queue", "retried", "process",
                                                 "at", "last", "error"]
    assert [line.split()[0] for line in lines[1:]] == ["welcome-1", "welcome-2", "welcome-3"]
    _, out, _ = run(capsys, "queue", "--url", url, "ls", "archived")
    [row] = out.splitlines()[1:]
    assert row.split()[:4] == ["welcome-0", "email:welcome", "critical", "1/25"]
    assert row.endswith("KeyError: 'email' more lines")
    _, out, _ = run(capsys, "queue", "--url", url, "ls", "pending", "--limit", "1",
                    "--offset", "2")
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["welcome-3"]
    _, out, _ = run(capsys, "queue", "--url", url, "ls", "retry", "--queue", "low")
    assert out == "no retry tasks in queue 'low'\n"


def test_ls_refuses_an_unknown_state(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["queue", "--url", url, "ls", "dead"])
    assert exit_.value.code == 2
    assert "invalid choice: 'dead'" in capsys.readouterr().err


def test_requeue_archive_delete_pause(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "queue", "--url", url, "requeue", "welcome-0")[1] == (
        "requeued welcome-0 (email:welcome) in queue 'critical': pending\n")
    assert run(capsys, "queue", "--url", url, "archive", "report")[1] == (
        "archived report (report:daily) in queue 'low'\n")
    assert run(capsys, "queue", "--url", url, "delete", "welcome-1")[1] == (
        "deleted welcome-1\n")
    assert run(capsys, "queue", "--url", url, "pause", "critical")[0] == 0
    with Inspector(url) as inspector:
        stats = {q.queue: q for q in inspector.stats()}
        assert stats["critical"].paused
        assert stats["critical"].counts[State.PENDING] == 3
        assert [i.id for i in inspector.list("archived")] == ["report"]
    assert run(capsys, "queue", "--url", url, "unpause", "critical")[1] == (
        "unpaused queue 'critical'\n")
    with Inspector(url) as inspector:
        assert not {q.queue: q for q in inspector.stats()}["critical"].paused


@pytest.mark.parametrize("verb", ["requeue", "delete", "archive"])
def test_an_unknown_id_is_an_error(url: str, capsys: pytest.CaptureFixture[str],
                                   verb: str) -> None:
    assert run(capsys, "queue", "--url", url, verb, "nope") == (
        2, "", "poolsim: error: no task with id 'nope'\n")


@pytest.mark.parametrize(("argv", "message"), [
    (["worker", "tasks"], "server='tasks' is invalid: MODULE:ATTR naming a Server, "
                          "e.g. myapp.tasks:server"),
    (["worker", "no_such_module_here:server"], "server='no_such_module_here:server' is "
     "invalid: an importable module (importing 'no_such_module_here' failed: No module "
     "named 'no_such_module_here')"),
    (["worker", "json:server"], "server='json:server' is invalid: an attribute of module "
                                "'json' (it has no 'server')"),
    (["worker", "json:dumps"], "server='json:dumps' is invalid: a "
                               "poolsim.queue.server.Server, not function"),
    (["scheduler", "json:JSONDecoder"], "scheduler='json:JSONDecoder' is invalid: a "
                                        "poolsim.queue.scheduler.Scheduler, not type"),
])
def test_a_bad_target_is_a_clear_error(capsys: pytest.CaptureFixture[str], argv: list[str],
                                       message: str) -> None:
    assert run(capsys, *argv) == (2, "", f"poolsim: error: {message}\n")


APP = textwrap.dedent("""
    import os

    from poolsim.queue import Scheduler, Task
    from poolsim.queue.server import Server

    URL = os.environ["TEST_QUEUE_URL"]
    server = Server(URL, concurrency=2, poll_interval=0.02)
    scheduler = Scheduler(URL)
    scheduler.every(0.05, Task("beat"), name="beat")


    @server.handler("hello")
    def hello(task: Task) -> None:
        pass
""")


def start(tmp_path: Path, url: str, *argv: str) -> subprocess.Popen[str]:
    (tmp_path / "myapp.py").write_text(APP)
    env = {**os.environ, "TEST_QUEUE_URL": url}
    return subprocess.Popen([sys.executable, "-m", "poolsim.cli", *argv], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition: Callable[[], bool], process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 20
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"exited early: {process.communicate()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"condition never met: {process.communicate()}")
        time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_worker_runs_a_server_until_signalled(tmp_path: Path, queue_url: str,
                                              signum: int) -> None:
    url = queue_url
    with Client(url) as client:
        client.enqueue(Task("hello"), task_id="first")
    process = start(tmp_path, url, "worker", "myapp:server")
    with Inspector(url) as inspector:
        wait_for(lambda: len(inspector.history_frame()) == 1, process)
        assert inspector.history_frame()["status"].astype(str).tolist() == ["completed"]
    process.send_signal(signum)
    _out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "Traceback" not in err
    assert "poolsim worker: running myapp:server" in err


@pytest.mark.slow
def test_scheduler_runs_until_sigterm(tmp_path: Path, queue_url: str) -> None:
    url = queue_url
    with Client(url):  # create the store first, so the inspector may open it
        pass
    process = start(tmp_path, url, "scheduler", "myapp:scheduler")
    with Inspector(url) as inspector:
        wait_for(lambda: len(inspector.list("pending")) >= 3, process)
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=30)
        assert process.returncode == 0, err
        assert "Traceback" not in err
        ids = [i.id for i in inspector.list("pending", limit=1000)]
    assert len(ids) == len(set(ids)) >= 3
    assert all(i.startswith("beat@") for i in ids)
