"""The embedded task store: one SQLite file in WAL mode, shared by threads and processes.

``SQLiteBackend("sqlite:///jobs.db")`` (relative path; ``sqlite:////var/lib/app/jobs.db``
is absolute). Query options: ``synchronous``, ``timeout`` and ``history_retention``.

Durability. The default, ``synchronous=NORMAL``, fsyncs the WAL only at checkpoints: every
committed call survives a crash of the *process* (kill -9 included), but a power loss or
an OS crash may lose the last commits (never corrupt the file). ``?synchronous=FULL``
fsyncs every commit, so a call that returned survives power loss too, at roughly a tenth
of the throughput on ordinary disks.

Concurrency. Each thread gets its own connection (``threading.local``), so reads run in
parallel with a write; a thread's connection is closed when the thread ends (a process
whose short-lived threads enqueue keeps no more connections than it has live threads).
Writes are serialised inside the process by a lock (a handoff between threads costs
microseconds, where SQLite's own busy handler would sleep for milliseconds) and across
processes by SQLite's lock, which ``busy_timeout`` waits for. A ``SQLITE_BUSY`` or
``SQLITE_LOCKED`` the busy handler does not cover (WAL recovery, a stale snapshot: the
extended codes, compared by their primary code) is retried by :meth:`SQLiteBackend._run`
with a short back-off. One deadline, ``timeout`` seconds (default 5) from the start of a
call, bounds all of its waiting — for the in-process lock, SQLite's lock and the retries
— and raises :class:`~poolsim.errors.BackendUnavailable` naming the URL when it passes.
``sqlite:///:memory:`` is refused: each connection would see its own empty database.
After ``fork`` the child opens its own connections (SQLite connections must not cross a
fork; the inherited ones are dropped unclosed, so the parent's locks stay intact).

Retries after a crash. A task whose worker died (its lease lapsed) goes to ``retry`` due
:func:`~poolsim.queue.backends.base.recover_backoff` seconds later (1 s, 2 s, 4 s ... at
most 60 s), so a "poison" task that kills its worker does not crash-loop through the
fleet at full speed before it runs out of retries.

History. The ``history`` table (one row per ended attempt: the jobs frame) is pruned by
:meth:`SQLiteBackend.forward` (the janitor): rows that ended more than
``history_retention`` seconds ago are deleted (default 7 days; ``?history_retention=inf``
keeps them for ever). Keep at least a day for the inspector's daily counts.

Every method is one transaction (``BEGIN IMMEDIATE`` for writes). The file (and its
``-wal``/``-shm`` companions, which SQLite creates with the file's mode) is created
owner-only (0600).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import sqlite3
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from poolsim.errors import BackendUnavailable, ConfigError, TaskAlreadyExists, TaskNotFound
from poolsim.queue.backends.base import (
    HistoryRow,
    Outcome,
    QueueStats,
    as_stored,
    recover_backoff,
)
from poolsim.queue.task import State, TaskInfo

__all__ = ["SQLiteBackend"]

T = TypeVar("T")
_BUSY = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}  # primary codes: compare code & 0xFF
_SYNC = ("NORMAL", "FULL", "EXTRA")
_FIELDS = tuple(f.name for f in dataclasses.fields(TaskInfo))
_COLS = ", ".join(_FIELDS)
_AT = 1 + _FIELDS.index("process_at")  # in a claimed row, which starts with seq
_STATES = ", ".join(f"'{state.value}'" for state in State)
_FAILED = ("completed", "returned")  # statuses that are not failures
# Checkpoint the WAL every ~40 MB instead of SQLite's 4 MB: each checkpoint fsyncs twice
# even at synchronous=NORMAL, and a longer WAL writes each hot page back once, not ten
# times (bench/queue_throughput.py: drain ~1.6x faster). The file shrinks back to 64 MB.
WAL_CHECKPOINT_PAGES, WAL_SIZE_LIMIT = 10_000, 64 * 2**20
HISTORY_RETENTION_S = 7 * 86400.0  # history rows older than this are pruned by forward()
_OPTIONS = ("synchronous", "timeout", "history_retention")
# Connections inherited across a fork: never closed in the child (closing would touch the
# parent's file state), only kept referenced so that Python does not close them either.
_ORPHANS: list[sqlite3.Connection] = []

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    seq INTEGER PRIMARY KEY,            -- insertion order: the tie-break of "oldest first"
    id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    payload TEXT NOT NULL,              -- canonical JSON, never pickle
    queue TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN
        ('scheduled', 'pending', 'active', 'retry', 'archived', 'completed')),
    max_retry INTEGER NOT NULL,
    retried INTEGER NOT NULL DEFAULT 0,
    timeout REAL, deadline REAL,
    process_at REAL NOT NULL,           -- when it is (or became) ready to run
    unique_key TEXT, unique_until REAL,
    retention REAL NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    last_error TEXT, last_failed_at REAL,
    lease_until REAL, worker TEXT,      -- the lease: who runs it, until when
    completed_at REAL, started_at REAL,
    expire_at REAL,                     -- completed tasks are deleted after this
    lease TEXT                          -- the claim's token: a fresh one per claim
) STRICT;
-- Partial indexes: a task is in an index only while a loop looks for it there, so a
-- state change touches few index pages (each dirty page is written to the WAL).
CREATE INDEX IF NOT EXISTS tasks_claim ON tasks (queue, process_at) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS tasks_due ON tasks (process_at)
    WHERE state IN ('scheduled', 'retry');
CREATE INDEX IF NOT EXISTS tasks_lease ON tasks (lease_until) WHERE state = 'active';
CREATE INDEX IF NOT EXISTS tasks_expire ON tasks (expire_at) WHERE state = 'completed';
-- The inspector's: counts by state and queue, and listing a state, without a table scan.
-- The hot paths name their partial index (INDEXED BY): this one would match them too.
CREATE INDEX IF NOT EXISTS tasks_state ON tasks (state, queue, process_at);
CREATE TABLE IF NOT EXISTS uniques (    -- unique locks live unique_for seconds, whatever
    key TEXT PRIMARY KEY,               -- becomes of the task (a cron tick stays once)
    until REAL NOT NULL,
    task_id TEXT NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS uniques_until ON uniques (until);
CREATE TABLE IF NOT EXISTS queues (
    name TEXT PRIMARY KEY,
    paused INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE TABLE IF NOT EXISTS history (    -- one row per ended attempt: the jobs frame
    id INTEGER PRIMARY KEY,
    task_id TEXT NOT NULL, type TEXT NOT NULL, queue TEXT NOT NULL,
    enqueued_at REAL NOT NULL, started_at REAL, ended_at REAL NOT NULL,
    status TEXT NOT NULL, worker TEXT, attempt INTEGER NOT NULL, error TEXT
) STRICT;
CREATE INDEX IF NOT EXISTS history_ended ON history (ended_at, queue);
"""

_CLAIM = f"""
UPDATE tasks SET state = 'active', worker = ?, lease_until = ?, started_at = ?,
                 lease = lower(hex(randomblob(16)))  -- evaluated per row: one token per claim
WHERE seq IN (SELECT seq FROM tasks INDEXED BY tasks_claim
              WHERE queue = ? AND state = 'pending' ORDER BY process_at, seq LIMIT ?)
RETURNING seq, {_COLS}"""
_INSERT = f"INSERT INTO tasks ({_COLS}) VALUES ({', '.join('?' * len(_FIELDS))})"
_HISTORY = """INSERT INTO history (task_id, type, queue, enqueued_at, started_at, ended_at,
                                   status, worker, attempt, error)
              VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""
# An attempt's lease: matched on (id, lease token) — a re-claim of the same task, even by the
# same worker, has a new token, so a stale attempt never acknowledges it. Callers without a
# token (tests, tools) match on (id, worker).
_HELD_BY_LEASE = "WHERE id = ? AND state = 'active' AND lease = ?"
_HELD_BY_WORKER = "WHERE id = ? AND state = 'active' AND worker = ?"
_RECORD = """INSERT INTO history (task_id, type, queue, enqueued_at, started_at, ended_at,
                                   status, worker, attempt, error)
             SELECT id, type, queue, process_at, started_at, ?, ?, worker, retried + 1, ?
             FROM tasks """  # + the held clause: the attempt's history row, if it is held
_ENDING = """SELECT seq, id, type, queue, process_at, started_at, retried, max_retry,
                    retention, worker, lease_until FROM tasks"""


def parse_url(url: str) -> tuple[Path, str, float]:
    """``sqlite:///rel.db`` or ``sqlite:////abs.db?synchronous=FULL&timeout=5`` → parts."""
    path, sync, timeout, _ = parse_url_options(url)
    return path, sync, timeout


def parse_url_options(url: str) -> tuple[Path, str, float, float]:
    """:func:`parse_url`'s parts and ``history_retention`` (seconds, may be ``inf``)."""
    if not isinstance(url, str) or not url.startswith("sqlite:///"):
        raise ConfigError("url", url, "sqlite:///relative/path.db or sqlite:////absolute.db")
    path, _, query = url[len("sqlite:///"):].partition("?")
    if path in ("", ":memory:") or path.startswith("file:"):
        raise ConfigError("url", url, "a database file: an in-memory database is private to "
                          "one connection and the queue uses one per thread and process")
    options = dict(urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=False))
    unknown = set(options) - set(_OPTIONS)
    if unknown:
        raise ConfigError("url", url, f"known options are {', '.join(_OPTIONS)} "
                          f"(not {unknown})")
    sync = options.get("synchronous", "NORMAL").upper()
    if sync not in _SYNC:
        raise ConfigError("synchronous", options["synchronous"], f"one of {', '.join(_SYNC)}")
    timeout = _float(options.get("timeout", "5"))
    if not (math.isfinite(timeout) and timeout > 0):
        raise ConfigError("timeout", options.get("timeout"), "seconds > 0")
    keep = _float(options.get("history_retention", repr(HISTORY_RETENTION_S)))
    if not keep > 0:  # NaN fails too; inf keeps history for ever
        raise ConfigError("history_retention", options.get("history_retention"),
                          "seconds > 0 (inf: never pruned)")
    return Path(urllib.parse.unquote(path)), sync, timeout, keep


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


class _Holder:
    """One thread's connection, in that thread's ``threading.local``: when the thread ends
    the holder is freed, and its finalizer closes the connection."""

    __slots__ = ("__weakref__", "busy_ms", "conn")

    def __init__(self, conn: sqlite3.Connection, busy_ms: int) -> None:
        self.conn = conn
        self.busy_ms = busy_ms  # the connection's busy_timeout, in ms


def _release(conn: sqlite3.Connection, pid: int, conns: set[sqlite3.Connection],
             lock: threading.RLock) -> None:
    """Close a connection whose thread ended — unless this is a forked child: there it is
    the parent's, and is kept referenced, unclosed (closing it could run a checkpoint or
    drop locks on the parent's behalf)."""
    if os.getpid() != pid:
        _ORPHANS.append(conn)
        return
    with lock:
        conns.discard(conn)
    with contextlib.suppress(sqlite3.Error):  # closing is best effort
        conn.close()


def _ms(seconds: float) -> int:
    return max(0, int(seconds * 1000))


class SQLiteBackend:
    """The :class:`~poolsim.queue.backends.base.Backend` on one SQLite file (see module doc).

    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> db = SQLiteBackend(f"sqlite:///{d}/jobs.db")
    >>> oct(os.stat(f"{d}/jobs.db").st_mode & 0o777)
    '0o600'
    >>> db.close()
    """

    def __init__(self, url: str, *, history_retention: float | None = None) -> None:
        self.url = url
        self.path, self.synchronous, self.timeout, keep = parse_url_options(url)
        if history_retention is not None:  # the argument wins over the URL's option
            ok = isinstance(history_retention, int | float) and not isinstance(
                history_retention, bool)
            if not (ok and history_retention > 0):
                raise ConfigError("history_retention", history_retention,
                                  "seconds > 0 (inf: never pruned)")
            keep = float(history_retention)
        self.history_retention = keep
        self._closed = False
        self._after_fork()  # the connection state: empty
        _LIVE.add(self)
        self._create_file()
        self._run(self._create_schema)

    # -- connections and transactions -------------------------------------------------

    def _after_fork(self) -> None:
        """Start with no connections and fresh locks (at start-up, and in a forked child:
        the parent's connections are never closed here, see :func:`_release`, and a lock
        another thread held at the fork would never be released)."""
        self._local = threading.local()
        self._conns: set[sqlite3.Connection] = set()
        self._conns_lock = threading.RLock()  # RLock: a finalizer may run while it is held
        self._write_lock = threading.Lock()
        self._pid = os.getpid()

    def _create_file(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)  # no-op if it exists
            os.close(fd)
        except OSError as exc:
            raise BackendUnavailable(self.url, f"cannot create {self.path}: {exc}") from None

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection (opened and configured on first use)."""
        return self._holder(time.monotonic() + self.timeout).conn

    def _holder(self, deadline: float) -> _Holder:
        if self._closed:
            raise BackendUnavailable(self.url, "the backend is closed")
        if os.getpid() != self._pid:  # forked without the at-fork hook (it resets this too)
            self._after_fork()
        holder: _Holder | None = getattr(self._local, "holder", None)
        if holder is None:
            holder = self._open(deadline)
            self._local.holder = holder
        return holder

    def _open(self, deadline: float) -> _Holder:
        """A configured connection, owned by a holder that closes it when the thread (and
        so the thread-local holder) goes; nothing is cached unless every pragma took."""
        conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None,
                               check_same_thread=False, cached_statements=64)
        try:
            self._retry(lambda: conn.execute("PRAGMA journal_mode=WAL"), deadline)
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            conn.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
            conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
            raise
        holder = _Holder(conn, _ms(self.timeout))
        with self._conns_lock:
            if self._closed:  # close() ran meanwhile: do not leave this one behind
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
                raise BackendUnavailable(self.url, "the backend is closed")
            self._conns.add(conn)
        finalizer = weakref.finalize(holder, _release, conn, self._pid, self._conns,
                                     self._conns_lock)
        finalizer.atexit = False
        return holder

    def _run(self, body: Callable[[sqlite3.Connection], T], *, write: bool = True) -> T:
        """``body`` in one transaction (``BEGIN IMMEDIATE`` when it writes), retried on BUSY;
        all the waiting (this process's write lock, SQLite's lock) within ``timeout``."""
        deadline = time.monotonic() + self.timeout

        def once() -> T:
            holder = self._holder(deadline)
            conn = holder.conn
            self._bound_busy_wait(holder, deadline)
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                result = body(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return result

        if not write:
            return self._retry(once, deadline)
        lock = self._write_lock
        if not lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise BackendUnavailable(
                self.url, f"the database stayed locked for {self.timeout:g} s (this "
                "process's other writers held it, waiting for SQLite's lock)")
        try:
            return self._retry(once, deadline)
        finally:
            lock.release()

    def _bound_busy_wait(self, holder: _Holder, deadline: float) -> None:
        """SQLite's busy handler waits at most what is left of ``deadline``: lowered only
        when a call has already waited (for the write lock, or retrying), else the full
        ``timeout``, so an uncontended call issues no extra statement."""
        full, left = _ms(self.timeout), _ms(deadline - time.monotonic())
        want = full if left >= full * 0.95 else max(1, left)
        if want != holder.busy_ms:
            holder.conn.execute(f"PRAGMA busy_timeout = {want}")
            holder.busy_ms = want

    def _retry(self, step: Callable[[], T], deadline: float) -> T:
        pause = 0.0005
        while True:
            try:
                return step()
            except sqlite3.OperationalError as exc:
                code = getattr(exc, "sqlite_errorcode", None)
                # Extended codes (SQLITE_BUSY_SNAPSHOT 517, BUSY_RECOVERY 261...) carry the
                # primary code in their low byte.
                if not isinstance(code, int) or code & 0xFF not in _BUSY:
                    raise BackendUnavailable(self.url, str(exc)) from exc
                if time.monotonic() >= deadline:
                    raise BackendUnavailable(
                        self.url, f"the database stayed locked for {self.timeout:g} s "
                        "(another process holds a write transaction)") from exc
                time.sleep(min(pause * (0.5 + random.random()),
                               max(0.0, deadline - time.monotonic())))
                pause = min(pause * 2, 0.05)
            except sqlite3.IntegrityError:
                raise
            except sqlite3.DatabaseError as exc:  # "file is not a database", I/O errors
                raise BackendUnavailable(self.url, str(exc)) from exc

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        for statement in SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        columns = {row[1] for row in conn.execute("PRAGMA table_info(tasks)")}
        if "lease" not in columns:  # a file made before claims had tokens
            conn.execute("ALTER TABLE tasks ADD COLUMN lease TEXT")
        for suffix in ("-wal", "-shm"):  # SQLite gives them the file's mode; make sure
            companion = self.path.with_name(self.path.name + suffix)
            try:
                if companion.exists() and companion.stat().st_mode & 0o077:
                    companion.chmod(0o600)
            except OSError:
                pass

    def close(self) -> None:
        """Close every thread's connection; later calls raise ``BackendUnavailable``."""
        self._closed = True
        with self._conns_lock:
            conns = list(self._conns)
            self._conns.clear()
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):  # closing is best effort
                conn.close()

    # -- the protocol -----------------------------------------------------------------

    def enqueue(self, task: TaskInfo, *, now: float) -> TaskInfo:
        """Insert ``task`` as scheduled or pending; a live unique key or a reused id raises
        :class:`TaskAlreadyExists` in the same transaction."""
        stored = as_stored(task, now=now)

        def body(conn: sqlite3.Connection) -> None:
            if stored.unique_key is not None:
                row = conn.execute("SELECT until FROM uniques WHERE key = ?",
                                   (stored.unique_key,)).fetchone()
                if row is not None and row[0] > now:
                    raise TaskAlreadyExists(stored.unique_key, stored.queue)
                conn.execute("INSERT OR REPLACE INTO uniques VALUES (?, ?, ?)",
                             (stored.unique_key, stored.unique_until or now, stored.id))
            try:
                conn.execute(_INSERT, [getattr(stored, f) for f in _FIELDS])
            except sqlite3.IntegrityError:
                raise TaskAlreadyExists(stored.id, stored.queue) from None
            conn.execute("INSERT OR IGNORE INTO queues (name) VALUES (?)", (stored.queue,))

        self._run(body)
        return stored

    def claim(self, queues: Sequence[str], *, worker: str, now: float, lease_s: float,
              limit: int) -> list[TaskInfo]:
        """Lease up to ``limit`` pending tasks from ``queues`` in order (paused ones
        skipped), oldest first; one transaction, one ``UPDATE … RETURNING`` per queue."""
        if limit <= 0 or not queues:
            return []

        def body(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            paused = {r[0] for r in conn.execute("SELECT name FROM queues WHERE paused")}
            taken: list[tuple[Any, ...]] = []
            for queue in dict.fromkeys(queues):
                if queue in paused:
                    continue
                rows = conn.execute(_CLAIM, (worker, now + lease_s, now, queue,
                                             limit - len(taken))).fetchall()
                taken += sorted(rows, key=lambda r: (r[_AT], r[0]))  # process_at, seq
                if len(taken) >= limit:
                    break
            return taken

        return [_info(row[1:]) for row in self._run(body)]

    def renew(self, ids: Sequence[str], *, worker: str, until: float,
              leases: Sequence[str] | None = None) -> list[str]:
        """Extend leases (even lapsed ones nobody has recovered yet): with ``leases`` (one
        token per id) those claims, returning the tokens still held; else ``worker``'s
        leases of ``ids``, returning the ids."""
        if not ids:
            return []
        marks = ", ".join("?" * len(ids))
        if leases is not None:
            tokens = _tokens(ids, leases)
            return self._run(lambda conn: [r[0] for r in conn.execute(
                f"UPDATE tasks SET lease_until = ? WHERE state = 'active' AND id IN ({marks}) "
                f"AND lease IN ({marks}) RETURNING lease", (until, *ids, *tokens))])
        return self._run(lambda conn: [r[0] for r in conn.execute(
            f"UPDATE tasks SET lease_until = ? WHERE state = 'active' AND worker = ? "
            f"AND id IN ({marks}) RETURNING id", (until, worker, *ids))])

    def finish(self, task_id: str, *, worker: str, now: float, outcome: Outcome,
               lease: str | None = None) -> bool:
        """Acknowledge one attempt and write its history row; False if the claim ``lease``
        (or, without a token, ``worker``) no longer holds the task.

        ``RETRY`` counts the attempt and archives the task instead once ``retried``
        exceeds ``max_retry``; ``ARCHIVED`` counts it too. ``COMPLETED`` with no
        retention deletes the task (its history row remains)."""
        return self.finish_many([(task_id, outcome)], worker=worker, now=now,
                                leases=None if lease is None else [lease])[0]

    def finish_many(self, outcomes: Sequence[tuple[str, Outcome]], *, worker: str,
                    now: float, leases: Sequence[str] | None = None) -> list[bool]:
        """:meth:`finish` for several tasks in one transaction (a batched acknowledgement);
        ``leases``: one claim token per pair."""
        tokens: Sequence[str | None] = (
            [None] * len(outcomes) if leases is None
            else _tokens([task_id for task_id, _ in outcomes], leases))

        def body(conn: sqlite3.Connection) -> list[bool]:
            return [self._finish(conn, task_id, worker, token, now, outcome)
                    for (task_id, outcome), token in zip(outcomes, tokens, strict=True)]

        return self._run(body) if outcomes else []

    @staticmethod
    def _finish(conn: sqlite3.Connection, task_id: str, worker: str, lease: str | None,
                now: float, outcome: Outcome) -> bool:
        if lease is None:
            where, held = _HELD_BY_WORKER, (task_id, worker)
        else:
            where, held = _HELD_BY_LEASE, (task_id, lease)
        if not conn.execute(_RECORD + where, (now, outcome.status, outcome.error,
                                              *held)).rowcount:
            return False  # not (or no longer) this claim's: nothing changes
        if outcome.state == State.COMPLETED:
            if not conn.execute(f"DELETE FROM tasks {where} AND retention <= 0",
                                held).rowcount:
                conn.execute("UPDATE tasks SET state = 'completed', completed_at = ?, "
                             "expire_at = ? + retention, lease_until = NULL, worker = NULL, "
                             f"lease = NULL {where}", (now, now, *held))
        else:
            retry = "? = 'retry' AND retried < max_retry"
            conn.execute(
                f"UPDATE tasks SET state = CASE WHEN {retry} THEN 'retry' ELSE 'archived' END, "
                f"process_at = CASE WHEN {retry} THEN ? ELSE process_at END, "
                "retried = retried + 1, last_error = ?, last_failed_at = ?, "
                f"lease_until = NULL, worker = NULL, lease = NULL {where}",
                (outcome.state.value, outcome.state.value,
                 outcome.retry_at if outcome.retry_at is not None else now, outcome.error, now,
                 *held))
        return True

    def hand_back(self, ids: Sequence[str], *, worker: str, now: float,
                  leases: Sequence[str] | None = None) -> int:
        """Return active tasks to pending, attempt not counted (history: ``returned``): the
        claims ``leases`` (one token per id), or without tokens ``worker``'s; they keep
        their place at the front of the queue."""
        if not ids:
            return 0
        marks = ", ".join("?" * len(ids))
        if leases is not None:
            held, args = f"lease IN ({marks})", (*_tokens(ids, leases),)
        else:
            held, args = "worker = ?", (worker,)

        def body(conn: sqlite3.Connection) -> int:
            rows = conn.execute(f"{_ENDING} WHERE state = 'active' AND {held} "
                                f"AND id IN ({marks})", (*args, *ids)).fetchall()
            conn.executemany("UPDATE tasks SET state = 'pending', lease_until = NULL, "
                             "worker = NULL, lease = NULL WHERE seq = ?",
                             [(r[0],) for r in rows])
            conn.executemany(_HISTORY, [(r[1], r[2], r[3], r[4], r[5], now, "returned",
                                         r[9], r[6] + 1, None) for r in rows])
            return len(rows)

        return self._run(body)

    def recover(self, *, now: float) -> int:
        """Tasks whose lease lapsed before ``now`` go to retry or, out of retries, to the
        archive; the attempt counts. A live lease is never touched. A retry is due after
        :func:`~poolsim.queue.backends.base.recover_backoff` (1 s, 2 s, 4 s ... at most
        60 s): a task that kills its worker must not crash-loop through the fleet."""
        def body(conn: sqlite3.Connection) -> int:
            rows = conn.execute(f"{_ENDING} INDEXED BY tasks_lease WHERE state = 'active' "
                                "AND lease_until < ?",
                                (now,)).fetchall()
            for seq, task_id, type_, queue, ready, started, retried, max_retry, _, worker, \
                    until in rows:
                error = (f"lease lapsed: worker {worker} presumed dead (its lease ended at "
                         f"{until:.3f}, recovered at {now:.3f})")
                retry = retried + 1 <= max_retry
                conn.execute(
                    "UPDATE tasks SET state = ?, retried = retried + 1, process_at = ?, "
                    "last_error = ?, last_failed_at = ?, lease_until = NULL, worker = NULL, "
                    "lease = NULL WHERE seq = ?",
                    ("retry" if retry else "archived",
                     now + recover_backoff(retried) if retry else ready, error, now, seq))
                conn.execute(_HISTORY, (task_id, type_, queue, ready, started, now,
                                        "retried" if retry else "failed", worker, retried + 1,
                                        error))
            return len(rows)

        return self._run(body)

    def forward(self, *, now: float) -> int:
        """Due scheduled/retry tasks → pending; delete completed tasks past retention,
        expired unique locks and history rows older than ``history_retention`` (the
        janitor). Returns how many tasks moved."""
        def body(conn: sqlite3.Connection) -> int:
            moved = conn.execute("UPDATE tasks INDEXED BY tasks_due SET state = 'pending' "
                                 "WHERE state IN "
                                 "('scheduled', 'retry') AND process_at <= ?", (now,)).rowcount
            conn.execute("DELETE FROM tasks INDEXED BY tasks_expire WHERE state = 'completed' "
                         "AND expire_at <= ?", (now,))
            conn.execute("DELETE FROM uniques WHERE until <= ?", (now,))
            if math.isfinite(self.history_retention):
                conn.execute("DELETE FROM history WHERE ended_at < ?",
                             (now - self.history_retention,))
            return moved

        return self._run(body)

    def stats(self, *, now: float) -> list[QueueStats]:
        """Every queue ever enqueued to or paused, sorted by name."""
        midnight = math.floor(now / 86400) * 86400  # UTC

        def body(conn: sqlite3.Connection) -> list[QueueStats]:
            paused = dict(conn.execute("SELECT name, paused FROM queues").fetchall())
            counts: dict[str, dict[State, int]] = {}
            for queue, state, n in conn.execute(  # by state: index searches, not a scan
                    f"SELECT queue, state, count(*) FROM tasks WHERE state IN ({_STATES}) "
                    "GROUP BY state, queue"):
                counts.setdefault(queue, {})[State(state)] = n
            oldest = dict(conn.execute("SELECT queue, min(process_at) FROM tasks "
                                       "WHERE state = 'pending' GROUP BY queue").fetchall())
            daily = {q: (p, f) for q, p, f in conn.execute(
                "SELECT queue, sum(status != 'returned'), sum(status NOT IN (?, ?)) "
                "FROM history WHERE ended_at >= ? GROUP BY queue", (*_FAILED, midnight))}
            return [QueueStats(
                queue=q, counts={s: counts.get(q, {}).get(s, 0) for s in State},
                paused=bool(paused.get(q, 0)),
                oldest_pending_age_s=max(0.0, now - oldest[q]) if q in oldest else None,
                processed_today=daily.get(q, (0, 0))[0], failed_today=daily.get(q, (0, 0))[1],
            ) for q in sorted(set(paused) | set(counts))]

        return self._run(body, write=False)

    def list_tasks(self, *, state: State, queue: str | None = None, limit: int = 100,
                   offset: int = 0) -> list[TaskInfo]:
        """Tasks in ``state`` (of ``queue``, or all), by readiness then insertion order."""
        where, args = "state = ?", [State(state).value]
        if queue is not None:
            where, args = where + " AND queue = ?", [*args, queue]
        return self._run(lambda conn: [_info(r) for r in conn.execute(
            f"SELECT {_COLS} FROM tasks WHERE {where} ORDER BY process_at, seq "
            "LIMIT ? OFFSET ?", (*args, limit, offset))], write=False)

    def get(self, task_id: str) -> TaskInfo:
        """One task by id, or :class:`TaskNotFound`."""
        row = self._run(lambda conn: conn.execute(
            f"SELECT {_COLS} FROM tasks WHERE id = ?", (task_id,)).fetchone(), write=False)
        if row is None:
            raise TaskNotFound(task_id)
        return _info(row)

    def act(self, task_id: str, action: Literal["requeue", "delete", "archive"], *,
            now: float) -> TaskInfo | None:
        """``requeue`` (pending now, retries reset), ``delete`` (its unique lock too) or
        ``archive``; an active task only once its lease lapsed (else ``ConfigError``)."""
        if action not in ("requeue", "delete", "archive"):
            raise ConfigError("action", action, "requeue, delete or archive")

        def body(conn: sqlite3.Connection) -> TaskInfo | None:
            row = conn.execute("SELECT seq, state, worker, lease_until, unique_key FROM tasks "
                               "WHERE id = ?", (task_id,)).fetchone()
            if row is None:
                raise TaskNotFound(task_id)
            seq, state, worker, until, key = row
            if state == "active" and until is not None and until >= now:
                raise ConfigError("task_id", task_id, f"a task not held by a live worker "
                                  f"({worker} holds its lease until {until:.3f}); "
                                  "wait until the lease lapses")
            if action == "delete":
                conn.execute("DELETE FROM tasks WHERE seq = ?", (seq,))
                conn.execute("DELETE FROM uniques WHERE key = ? AND task_id = ?", (key, task_id))
                return None
            if action == "requeue":
                conn.execute("UPDATE tasks SET state = 'pending', retried = 0, process_at = ?, "
                             "lease_until = NULL, worker = NULL, lease = NULL, "
                             "completed_at = NULL, expire_at = NULL WHERE seq = ?", (now, seq))
            else:
                conn.execute("UPDATE tasks SET state = 'archived', lease_until = NULL, "
                             "worker = NULL, lease = NULL, expire_at = NULL WHERE seq = ?", (seq,))
            return _info(conn.execute(f"SELECT {_COLS} FROM tasks WHERE seq = ?",
                                      (seq,)).fetchone())

        return self._run(body)

    def pause(self, queue: str, paused: bool) -> None:
        """Pause or unpause ``queue`` (a queue not yet seen is remembered)."""
        self._run(lambda conn: conn.execute(
            "INSERT INTO queues (name, paused) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET paused = excluded.paused", (queue, int(paused))))

    def history(self, *, since: float = 0.0) -> list[HistoryRow]:
        """Attempts ended at or after ``since``, in the order they ended."""
        rows = self._run(lambda conn: conn.execute(
            "SELECT task_id, type, queue, enqueued_at, started_at, ended_at, status, worker, "
            "attempt, error FROM history WHERE ended_at >= ? ORDER BY id", (since,)).fetchall(),
            write=False)
        return [HistoryRow(task_id=r[0], type=r[1], queue=r[2], enqueued_at=r[3],
                           started_at=r[4], ended_at=r[5], status=r[6], worker=r[7],
                           attempt=r[8], error=r[9]) for r in rows]


def _tokens(ids: Sequence[str], leases: Sequence[str]) -> Sequence[str]:
    """``leases`` checked: one claim token (a string) per id."""
    if len(leases) != len(ids) or not all(isinstance(t, str) for t in leases):
        raise ConfigError("leases", leases, f"one lease token (str) per task id ({len(ids)})")
    return leases


_REALS = ("process_at", "retention", "created_at")  # SQLite may hand back 0.0 as 0


def _info(row: Sequence[Any]) -> TaskInfo:
    values = dict(zip(_FIELDS, row, strict=True))
    values["state"] = State(values["state"])
    for name in _REALS:
        values[name] = float(values[name])
    return TaskInfo(**values)


_LIVE: weakref.WeakSet[SQLiteBackend] = weakref.WeakSet()


def _reset_after_fork() -> None:
    for backend in list(_LIVE):
        backend._after_fork()


os.register_at_fork(after_in_child=_reset_after_fork)
