"""What only the SQLite store promises: its URL, file mode, locking, and real crashes."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from poolsim.errors import BackendUnavailable, ConfigError
from poolsim.queue.backends.sqlite import SQLiteBackend, parse_url
from poolsim.queue.client import Client
from poolsim.queue.task import State, Task
from tests.queue.conftest import T0, make_task

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("url", "path", "sync", "timeout"), [
    ("sqlite:///jobs.db", "jobs.db", "NORMAL", 5.0),
    ("sqlite:////var/lib/app/jobs.db", "/var/lib/app/jobs.db", "NORMAL", 5.0),
    ("sqlite:///jobs.db?synchronous=FULL", "jobs.db", "FULL", 5.0),
    ("sqlite:///jobs.db?synchronous=normal&timeout=0.5", "jobs.db", "NORMAL", 0.5),
    ("sqlite:///my%20jobs.db", "my jobs.db", "NORMAL", 5.0),
])
def test_url(url: str, path: str, sync: str, timeout: float) -> None:
    assert parse_url(url) == (Path(path), sync, timeout)


@pytest.mark.parametrize(("url", "field"), [
    ("sqlite://", "url"),
    ("sqlite:///", "url"),
    ("sqlite:///:memory:", "url"),
    ("sqlite:///file::memory:?cache=shared", "url"),
    ("sqlite:///jobs.db?synchronous=OFF", "synchronous"),
    ("sqlite:///jobs.db?timeout=0", "timeout"),
    ("sqlite:///jobs.db?timeout=soon", "timeout"),
    ("sqlite:///jobs.db?journal=delete", "url"),
])
def test_bad_url(url: str, field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        SQLiteBackend(url)
    assert caught.value.field == field


def test_the_file_is_owner_only(tmp_path: Path) -> None:
    db = SQLiteBackend(f"sqlite:///{tmp_path}/sub/dir/jobs.db?synchronous=FULL")
    db.enqueue(make_task(), now=T0)
    files = sorted(p.name for p in (tmp_path / "sub" / "dir").iterdir())
    assert files == ["jobs.db", "jobs.db-shm", "jobs.db-wal"]
    for name in files:
        assert (tmp_path / "sub" / "dir" / name).stat().st_mode & 0o777 == 0o600, name
    assert db.synchronous == "FULL"
    conn = db._conn()
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
    db.close()
    with pytest.raises(BackendUnavailable, match="closed"):
        db.enqueue(make_task(), now=T0)


def test_a_lock_held_too_long_is_backend_unavailable(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/jobs.db?timeout=0.2"
    db = SQLiteBackend(url)
    other = sqlite3.connect(tmp_path / "jobs.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process's writer that never lets go
    began = time.monotonic()
    with pytest.raises(BackendUnavailable) as caught:
        db.enqueue(make_task(), now=T0)
    assert caught.value.url == url and "locked" in caught.value.reason
    assert time.monotonic() - began < 2
    assert db.list_tasks(state=State.PENDING) == []  # readers are not blocked in WAL
    other.execute("ROLLBACK")
    db.enqueue(make_task(), now=T0)  # and it works again
    other.close()
    db.close()


def test_not_a_database_is_backend_unavailable(tmp_path: Path) -> None:
    (tmp_path / "jobs.db").write_bytes(b"this is not a database, it is a text file" * 100)
    with pytest.raises(BackendUnavailable, match="not a database"):
        SQLiteBackend(f"sqlite:///{tmp_path}/jobs.db")


def run(script: str, *args: object) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


PRODUCE_AND_CONSUME = """
    import sys, time
    from poolsim.queue import Client, Task, Outcome, State
    url, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    client = Client(url)
    done = Outcome(state=State.COMPLETED, status="completed")
    for i in range(n):
        client.enqueue(Task("t", {"i": i, "by": name}), queue=("a", "b")[i % 2])
        if i % 3 == 0:  # claim while the others still enqueue
            for t in client.backend.claim(["a", "b"], worker=name, now=time.time(),
                                          lease_s=60, limit=2):
                assert client.backend.finish(t.id, worker=name, now=time.time(), outcome=done)
                print(t.id, flush=True)
    while tasks := client.backend.claim(["a", "b"], worker=name, now=time.time(), lease_s=60,
                                        limit=5):
        for t in tasks:
            assert client.backend.finish(t.id, worker=name, now=time.time(), outcome=done)
            print(t.id, flush=True)
"""


@pytest.mark.slow
def test_several_processes_share_one_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/jobs.db"
    SQLiteBackend(url).close()  # schema made once, so the race is only over tasks
    procs = [run(PRODUCE_AND_CONSUME, url, f"p{n}", 300) for n in range(4)]
    outs = [p.communicate(timeout=60) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert "locked" not in err
    claimed = [line for out, _ in outs for line in out.split()]
    assert len(claimed) == len(set(claimed)) == 1200  # every task, none twice
    db = SQLiteBackend(url)
    assert all(not db.list_tasks(state=s) for s in State)
    assert len(db.history()) == 1200
    db.close()


ENQUEUE_FOREVER = """
    import sys
    from poolsim.queue import Client, Task
    client = Client(sys.argv[1])
    i = 0
    while True:
        info = client.enqueue(Task("burst", {"i": i}))
        print(info.id, flush=True)  # printed only after enqueue returned
        i += 1
"""


@pytest.mark.slow
@pytest.mark.parametrize("sync", ["NORMAL", "FULL"])
def test_sigkill_mid_burst_loses_no_returned_enqueue(tmp_path: Path, sync: str) -> None:
    url = f"sqlite:///{tmp_path}/jobs.db?synchronous={sync}"
    proc = run(ENQUEUE_FOREVER, url)
    assert proc.stdout is not None
    printed = [proc.stdout.readline().strip() for _ in range(200)]
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=10) == -signal.SIGKILL
    printed += proc.stdout.read().split()  # from the pipe *and* what readline buffered
    proc.stdout.close()
    assert proc.stderr is not None
    proc.stderr.close()
    with Client(url) as client:
        stored = {t.id for t in client.backend.list_tasks(state=State.PENDING, limit=10**6)}
        assert set(printed) <= stored
        assert len(stored) - len(printed) <= 1  # at most the one it was writing
        client.enqueue(Task("after", {}))  # the file is healthy after the kill
