"""What only the SQLite store promises: its URL, file mode, locking, and real crashes.
An enqueuer SIGKILLed mid-burst, in both ``synchronous`` modes, is in test_crash.py (with
the other stores)."""

from __future__ import annotations

import contextlib
import gc
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from poolsim.errors import BackendUnavailable, ConfigError
from poolsim.queue.backends.base import Outcome
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
    caught: list[BackendUnavailable] = []

    def enqueue() -> None:
        with pytest.raises(BackendUnavailable) as error:
            db.enqueue(make_task(), now=T0)
        caught.append(error.value)

    attempt = threading.Thread(target=enqueue)
    attempt.start()
    attempt.join(60)  # it gives up on its own while the other writer still holds the lock
    assert not attempt.is_alive() and len(caught) == 1
    assert caught[0].url == url and "locked" in caught[0].reason
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


# -- review fixes: busy codes, connections, deadlines, indexes --------------------------


def busy_then_ok(code: int, failures: int = 2) -> tuple[list[int], Any]:
    """A transaction body that fails ``failures`` times with ``code``, then returns."""
    calls: list[int] = []

    def body(conn: sqlite3.Connection) -> str:
        calls.append(1)
        if len(calls) <= failures:
            exc = sqlite3.OperationalError("database is locked (extended)")
            exc.sqlite_errorcode = code
            raise exc
        return "ok"

    return calls, body


@pytest.mark.parametrize("code", [
    sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED,
    517,  # SQLITE_BUSY_SNAPSHOT: a WAL reader's snapshot went stale
    261,  # SQLITE_BUSY_RECOVERY: another connection is recovering the WAL
    773,  # SQLITE_BUSY_TIMEOUT
    262,  # SQLITE_LOCKED_SHAREDCACHE
])
def test_extended_busy_codes_are_retried(tmp_path: Path, code: int) -> None:
    db = SQLiteBackend(f"sqlite:///{tmp_path}/jobs.db")
    calls, body = busy_then_ok(code)
    assert db._run(body) == "ok"
    assert len(calls) == 3
    db.close()


def test_other_errors_are_not_retried(tmp_path: Path) -> None:
    db = SQLiteBackend(f"sqlite:///{tmp_path}/jobs.db")
    calls, body = busy_then_ok(sqlite3.SQLITE_IOERR | (3 << 8))  # SQLITE_IOERR_WRITE
    with pytest.raises(BackendUnavailable):
        db._run(body)
    assert len(calls) == 1
    db.close()


def open_fds(path: Path) -> int:
    """This process's file descriptors open on ``path`` (the database file itself)."""
    count = 0
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            if os.readlink(fd) == str(path):
                count += 1
    return count


def test_short_lived_threads_leave_no_connections_behind(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/jobs.db"
    with Client(url) as client:
        client.enqueue(Task("t"))  # this thread's connection: the one that stays
        before = open_fds(tmp_path / "jobs.db")
        for i in range(300):
            thread = threading.Thread(target=client.enqueue, args=(Task("t", {"i": i}),))
            thread.start()
            thread.join()
        backend = client.backend
        assert isinstance(backend, SQLiteBackend)
        deadline = time.monotonic() + 5
        while len(backend._conns) > 1 and time.monotonic() < deadline:
            gc.collect()
            time.sleep(0.01)
        assert len(backend._conns) == 1
        # SQLite may defer closing one descriptor while this thread's connection holds a
        # POSIX lock on the file (closing it would drop that lock); it reuses it, no more.
        assert open_fds(tmp_path / "jobs.db") <= before + 1
        assert len(backend.list_tasks(state=State.PENDING, limit=1000)) == 301


def test_close_closes_the_connections_of_live_threads(tmp_path: Path) -> None:
    db = SQLiteBackend(f"sqlite:///{tmp_path}/jobs.db")
    opened, release = threading.Event(), threading.Event()

    def hold() -> None:
        db.list_tasks(state=State.PENDING)
        opened.set()
        release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    assert opened.wait(10)
    assert len(db._conns) == 2
    db.close()
    assert len(db._conns) == 0 and open_fds(tmp_path / "jobs.db") == 0
    release.set()
    thread.join()


FORKED = """
    import os, sys, threading
    from poolsim.queue import Client, Task, State
    client = Client(sys.argv[1])
    client.enqueue(Task("parent"))
    # Another thread holds the write lock at the moment of the fork.
    held, release = threading.Event(), threading.Event()
    def hold():
        with client.backend._write_lock:
            held.set()
            release.wait(10)
    threading.Thread(target=hold).start()
    held.wait(10)
    pid = os.fork()
    if pid == 0:  # the child: its own connection, a fresh lock, the parent's untouched
        import signal
        signal.alarm(10)  # an inherited, held lock would hang it for ever
        client.enqueue(Task("child"))
        os._exit(0 if len(client.backend.list_tasks(state=State.PENDING)) == 2 else 3)
    _, status = os.waitpid(pid, 0)
    release.set()
    client.enqueue(Task("parent again"))  # the parent's connection still works
    print(os.waitstatus_to_exitcode(status),
          len(client.backend.list_tasks(state=State.PENDING)), flush=True)
"""


def test_a_forked_child_opens_its_own_connection_and_lock(tmp_path: Path) -> None:
    proc = run(FORKED, f"sqlite:///{tmp_path}/jobs.db")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.split() == ["0", "3"]


def test_waiting_for_the_write_lock_counts_against_the_same_timeout(tmp_path: Path) -> None:
    """Five threads, one deadline each: a thread that waited for this process's write lock
    has only what is left of its deadline to wait for SQLite's lock — never a fresh full
    timeout (which would stack: the last thread giving up after 5x timeout). Seen without
    a clock: of the five, only the first to take the write lock lets SQLite's busy handler
    wait the full timeout; every other one gives up at the write lock (no connection
    opened) or with its busy wait lowered to the remainder."""
    url = f"sqlite:///{tmp_path}/jobs.db?timeout=0.4"
    db = SQLiteBackend(url)
    other = sqlite3.connect(tmp_path / "jobs.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process's writer that never lets go
    failed: list[tuple[int | None, BackendUnavailable]] = []  # (busy wait in ms, error)
    start = threading.Barrier(5)

    def write() -> None:
        start.wait()
        try:
            db.enqueue(make_task(), now=T0)
        except BackendUnavailable as exc:
            holder = getattr(db._local, "holder", None)  # None: never reached SQLite
            failed.append((None if holder is None else holder.busy_ms, exc))

    threads = [threading.Thread(target=write) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)  # all gave up, lock still held
    other.execute("ROLLBACK")
    other.close()
    assert len(failed) == 5
    waits = sorted((ms for ms, _ in failed), key=lambda ms: -1 if ms is None else ms)
    assert [ms for ms in waits if ms == 400] == [400], waits  # one full wait, no more
    assert all(exc.url == url and "locked" in exc.reason for _, exc in failed)
    db.enqueue(make_task(), now=T0)  # and afterwards it works, with the full busy timeout
    assert db._holder(time.monotonic() + 1).busy_ms == 400
    db.close()


def test_a_connection_is_cached_only_once_configured(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path}/jobs.db"
    SQLiteBackend(url).close()  # the schema exists
    made: list[sqlite3.Connection] = []
    fail = [True]

    class Flaky(sqlite3.Connection):
        def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
            if sql.startswith("PRAGMA synchronous") and fail[0]:
                fail[0] = False
                raise sqlite3.OperationalError("disk I/O error")
            return super().execute(sql, *args)

    real = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = real(*args, factory=Flaky, **kwargs)
        made.append(conn)
        return conn

    monkeypatch.setattr("poolsim.queue.backends.sqlite.sqlite3.connect", connect)
    with pytest.raises(BackendUnavailable, match="disk I/O"):
        SQLiteBackend(url)  # its first connection failed half-configured
    db = SQLiteBackend(url)
    assert len(made) == 2
    with pytest.raises(sqlite3.ProgrammingError):  # the half-configured one was closed
        made[0].execute("SELECT 1")
    conn = db._conn()
    assert conn is made[1]
    assert conn.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL, as configured
    assert conn.execute("PRAGMA wal_autocheckpoint").fetchone() == (10_000,)
    db.close()


def plans(db: SQLiteBackend, sql: str, *args: object) -> list[str]:
    return [row[3] for row in db._conn().execute(f"EXPLAIN QUERY PLAN {sql}", args)]


def test_stats_and_listing_a_state_search_an_index(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The inspector's queries must not scan the whole table: the archive and the completed
    tasks kept for retention grow without bound."""
    db = SQLiteBackend(f"sqlite:///{tmp_path}/jobs.db")
    seen: list[str] = []
    real_run = db._run

    def spy(body: Any, *, write: bool = True) -> Any:
        def traced(conn: sqlite3.Connection) -> Any:
            conn.set_trace_callback(seen.append)
            try:
                return body(conn)
            finally:
                conn.set_trace_callback(None)
        return real_run(traced, write=write)

    monkeypatch.setattr(db, "_run", spy)
    db.enqueue(make_task(queue="q"), now=T0)
    db.stats(now=T0)
    for state in State:
        db.list_tasks(state=state)
        db.list_tasks(state=state, queue="q", limit=5, offset=1)
    monkeypatch.undo()
    queries = [q for q in seen if "FROM tasks" in q and q.lstrip().startswith("SELECT")]
    assert len(queries) >= 2 + 2 * len(State)
    for sql in queries:
        plan = plans(db, sql)
        assert not any(step.startswith("SCAN tasks") for step in plan), (sql, plan)
    db.close()


def test_history_retention_is_an_option(tmp_path: Path) -> None:
    db = SQLiteBackend(f"sqlite:///{tmp_path}/a.db?history_retention=3600")
    assert db.history_retention == 3600
    db.close()
    db = SQLiteBackend(f"sqlite:///{tmp_path}/b.db?history_retention=3600",
                       history_retention=60)
    assert db.history_retention == 60  # the argument wins
    db.close()
    db = SQLiteBackend(f"sqlite:///{tmp_path}/c.db?history_retention=inf")
    db.enqueue(make_task(), now=T0)
    [task] = db.claim(["default"], worker="w", now=T0, lease_s=5, limit=1)
    assert db.hand_back([task.id], worker="w", now=T0)
    db.forward(now=T0 + 10**9)
    assert len(db.history()) == 1  # inf: never pruned
    db.close()
    for bad in ("0", "-1", "soon", "nan"):
        with pytest.raises(ConfigError) as caught:
            SQLiteBackend(f"sqlite:///{tmp_path}/d.db?history_retention={bad}")
        assert caught.value.field == "history_retention"
    with pytest.raises(ConfigError) as caught:
        SQLiteBackend(f"sqlite:///{tmp_path}/d.db", history_retention=0)
    assert caught.value.field == "history_retention"


def test_a_file_made_before_lease_tokens_gains_the_column(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = SQLiteBackend(f"sqlite:///{path}")
    db.enqueue(make_task(id="old"), now=T0)
    db.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:  # as an older poolsim made it
        conn.execute("ALTER TABLE tasks DROP COLUMN lease")
        conn.commit()
    db = SQLiteBackend(f"sqlite:///{path}")
    try:
        [info] = db.claim(["default"], worker="w", now=T0, lease_s=30, limit=1)
        assert info.id == "old" and info.lease
        assert db.finish("old", worker="w", now=T0 + 1, lease=info.lease,
                         outcome=Outcome(state=State.COMPLETED, status="completed"))
    finally:
        db.close()
