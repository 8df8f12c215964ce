"""The small protocol every task store implements, and how a URL picks one.

Each method is one atomic state change (one transaction in SQLite, one Lua
script in Redis), so a crash between two calls loses nothing: a task is
always in exactly one state. Times are epoch seconds from the caller's
clock, passed in, so tests move time instead of sleeping. ``worker`` names
the lease holder (``host:pid:uuid``), kept for history and inspection.

Lease tokens. Every claim gives the task a fresh, unique token (``TaskInfo.lease``; SQLite:
the ``lease`` column, Redis: a field of the task's hash, set in the claim script). A call
about an active task — :meth:`Backend.renew`, :meth:`Backend.finish`,
:meth:`Backend.finish_many`, :meth:`Backend.hand_back` — given ``lease``/``leases``
succeeds only while *that claim* still holds the task, i.e. matches on (id, token), never on
(id, worker): if a lease lapses while its worker lives and the same worker claims the task
again, the first attempt's late acknowledgement finds its token gone and changes nothing.
Without tokens (tests, tools) those calls match on (id, ``worker``).
"""

from __future__ import annotations

import dataclasses
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Literal, Protocol

from poolsim.errors import ConfigError
from poolsim.queue.task import State, TaskInfo

__all__ = ["Backend", "HistoryRow", "Outcome", "QueueStats", "as_stored", "open_backend",
           "recover_backoff", "redact_url", "split_userinfo"]

# A task recovered from a dead worker is due after min(cap, base * 2**retried) seconds.
RECOVER_BACKOFF_BASE_S, RECOVER_BACKOFF_CAP_S = 1.0, 60.0


def recover_backoff(retried: int) -> float:
    """Seconds until a task recovered from a dead worker runs again, ``retried`` being its
    failed attempts before the one that died: ``min(60, 1 * 2**retried)`` — 1 s, 2 s,
    4 s ... 60 s. Immediate retries would let a "poison" task that kills its worker
    crash-loop through the whole fleet; every backend applies this in :meth:`Backend.recover`.
    """
    return min(RECOVER_BACKOFF_CAP_S, RECOVER_BACKOFF_BASE_S * 2.0 ** min(max(retried, 0), 64))


def as_stored(task: TaskInfo, *, now: float) -> TaskInfo:
    """``task`` as :meth:`Backend.enqueue` stores it: ``scheduled`` if due later than ``now``,
    else ``pending``; a ``process_at`` or ``created_at`` of 0 means ``now``; no lease."""
    process_at = task.process_at if task.process_at > 0 else now
    return dataclasses.replace(task, state=State.SCHEDULED if process_at > now else State.PENDING,
                               process_at=process_at, created_at=task.created_at or now,
                               lease_until=None, worker=None, completed_at=None,
                               started_at=None, lease=None)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Outcome:
    """How an attempt ended, for :meth:`Backend.finish`.

    ``state`` is ``COMPLETED`` (kept ``retention`` seconds), ``RETRY`` (run
    again at ``retry_at``, counting the attempt) or ``ARCHIVED`` (dead-lettered
    with ``error``). ``status`` is the jobs-frame status recorded in history
    (``completed``, ``failed``, ``timeout``, ``retried``, ``cancelled``...).
    """

    state: Literal[State.COMPLETED, State.RETRY, State.ARCHIVED]
    status: str
    error: str | None = None
    retry_at: float | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class QueueStats:
    """One queue at one moment: tasks by state, and what an operator asks first."""

    queue: str
    counts: Mapping[State, int]
    paused: bool
    oldest_pending_age_s: float | None  # queue latency: how long the oldest pending task waited
    processed_today: int  # attempts that ended since UTC midnight
    failed_today: int  # of which failed (retried, archived, timed out)


@dataclasses.dataclass(frozen=True, kw_only=True)
class HistoryRow:
    """One attempt of one task, as the jobs frame records it (times in epoch seconds).

    ``enqueued_at`` is when this attempt became ready to run (created, due, or its
    retry time), so ``started_at - enqueued_at`` is the attempt's wait in the queue.
    ``status`` ``returned`` marks an attempt handed back at shutdown (not counted).
    """

    task_id: str
    type: str
    queue: str
    enqueued_at: float
    started_at: float | None
    ended_at: float
    status: str
    worker: str | None
    attempt: int
    error: str | None = None


class Backend(Protocol):
    """A task store. ``open_backend(url)`` makes one; both backends pass one contract suite."""

    url: str

    def enqueue(self, task: TaskInfo, *, now: float) -> TaskInfo:
        """Store a new task: ``scheduled`` if its ``process_at`` is later than ``now``, else
        ``pending``. A live ``unique_key`` (or a reused id) raises ``TaskAlreadyExists``,
        decided in the same atomic step as the insert. A unique key stays locked until
        ``unique_until`` whatever becomes of the task (so a cron tick runs once even if it
        completes at once); only ``act(..., "delete")`` releases it early. A ``process_at``
        or ``created_at`` of 0 means ``now``."""
        ...

    def claim(self, queues: Sequence[str], *, worker: str, now: float, lease_s: float,
              limit: int) -> list[TaskInfo]:
        """Lease up to ``limit`` pending tasks, taking from ``queues`` in the order given
        (the server orders them by weight or priority), skipping paused queues, oldest
        first within a queue: each becomes ``active`` under ``worker`` until
        ``now + lease_s``, with a fresh lease token (``TaskInfo.lease``, unique per claim,
        never reused). One atomic step: two workers never get the same task."""
        ...

    def renew(self, ids: Sequence[str], *, worker: str, until: float,
              leases: Sequence[str] | None = None) -> list[str]:
        """Extend leases to ``until``. With ``leases`` (one claim token per id; the same id
        may appear twice, under an old and a new claim) the claims matched on (id, token),
        returning the tokens still held; without, ``worker``'s leases of ``ids``, returning
        the ids it still holds."""
        ...

    def finish(self, task_id: str, *, worker: str, now: float, outcome: Outcome,
               lease: str | None = None) -> bool:
        """Acknowledge an attempt, atomically with its history row: the task leaves
        ``active`` for ``outcome.state``. False (and nothing changes) if the claim ``lease``
        no longer holds the task (without a token: if ``worker`` does not) — the task was
        recovered and may be running elsewhere, or again here under a new claim. ``RETRY`` and
        ``ARCHIVED`` count the attempt (``retried += 1``); a ``RETRY`` beyond ``max_retry``
        archives instead. ``COMPLETED`` with ``retention`` 0 deletes the task at once (its
        history row remains). A lease that lapsed but was not yet recovered still counts
        as held, here and in :meth:`renew`."""
        ...

    def finish_many(self, outcomes: Sequence[tuple[str, Outcome]], *, worker: str,
                    now: float, leases: Sequence[str] | None = None) -> list[bool]:
        """:meth:`finish` for several ``(task_id, outcome)`` in one atomic step (a batched
        acknowledgement: one commit instead of one per task), ``leases`` giving each pair's
        claim token; one bool per pair, in order."""
        ...

    def hand_back(self, ids: Sequence[str], *, worker: str, now: float,
                  leases: Sequence[str] | None = None) -> int:
        """Return active tasks to ``pending`` without counting an attempt (a graceful
        shutdown hands back what it could not finish): the claims ``leases`` (one token per
        id), or without tokens ``worker``'s; returns how many. Each leaves a history row
        with status ``returned``."""
        ...

    def recover(self, *, now: float) -> int:
        """Tasks whose lease lapsed before ``now`` (their worker died) go to ``retry`` with
        the attempt counted (due at ``now + recover_backoff(retried)``, ``last_error``
        "lease lapsed: worker ... presumed dead"), or to ``archived`` when out of retries.
        Only lapsed leases: a live worker's task is never taken. The token is cleared, so the
        lapsed claim can no longer renew, finish or hand back the task. Returns how many."""
        ...

    def forward(self, *, now: float) -> int:
        """Move ``scheduled`` and ``retry`` tasks due by ``now`` to ``pending``; delete
        ``completed`` tasks past their retention, and history rows that ended more than the
        store's ``history_retention`` before ``now``. Returns how many moved."""
        ...

    def stats(self, *, now: float) -> list[QueueStats]:
        """Every known queue's counts by state, pause flag, latency and daily totals."""
        ...

    def get(self, task_id: str) -> TaskInfo:
        """One task by id, in whatever state; raises ``TaskNotFound``."""
        ...

    def list_tasks(self, *, state: State, queue: str | None = None, limit: int = 100,
                   offset: int = 0) -> list[TaskInfo]:
        """Tasks in ``state`` (of ``queue``, or all), oldest first."""
        ...

    def act(self, task_id: str, action: Literal["requeue", "delete", "archive"], *,
            now: float) -> TaskInfo | None:
        """The inspector's verbs: ``requeue`` (to pending, retries reset), ``delete``, or
        ``archive``. Raises ``TaskNotFound``; returns the task after the action (None
        once deleted). An active task may only be archived or deleted after its lease lapses."""
        ...

    def pause(self, queue: str, paused: bool) -> None:
        """Pause (no task of ``queue`` is claimed) or unpause a queue."""
        ...

    def history(self, *, since: float = 0.0) -> list[HistoryRow]:
        """Every attempt ended since ``since``, oldest first: the jobs frame's rows."""
        ...

    def close(self) -> None:
        """Release connections and files."""
        ...


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_PATH_SCHEMES = frozenset({"sqlite", "file"})  # URLs naming a file: no userinfo, nothing hidden
_SECRET_OPTION = re.compile(r"pass|pwd|secret|token|auth|credential", re.IGNORECASE)


def split_userinfo(url: str) -> tuple[str, str | None, str]:
    """``url`` as (``scheme://`` or '', userinfo or None, the rest), worked out on the raw
    text: the userinfo is everything between ``://`` and the **last** ``@``, so a password
    holding an unencoded ``/``, ``?``, ``#``, ``@`` or ``:`` stays in it (urllib would cut it
    at the first ``/``, ``?`` or ``#``). An ``@`` after the host must be percent-encoded
    (``%40``), or all before it counts as userinfo. Text without a valid ``scheme://`` is
    all "rest" (its userinfo, if any, ends at its last ``@`` all the same)."""
    scheme, sep, rest = url.partition("://")
    if not sep or not _SCHEME.fullmatch(scheme):
        scheme, sep, rest = "", "", url
    userinfo, at, after = rest.rpartition("@")
    head = f"{scheme}{sep}"
    return (head, userinfo, after) if at else (head, None, rest)


def redact_url(url: object) -> str:
    """``url`` (any URL; its ``str``) with its password replaced by ``***``, safe to show.

    Works on the raw text (see :func:`split_userinfo`), never on urllib's split: the user
    name stays when it is plain (``redis://me:***@host/0``), else the whole userinfo is
    ``***``; query options named like a secret (``password=``, ``token=``...) show
    ``***`` as their value. File URLs (``sqlite://``, ``file://``) come back unchanged."""
    text = str(url)
    head, userinfo, rest = split_userinfo(text)
    if head[:-3].lower() in _PATH_SCHEMES:
        return text
    shown = ""
    if userinfo is not None:
        user, colon, _ = userinfo.partition(":")
        plain = not any(c in user for c in "/?#")  # else maybe part of a password
        shown = (f"{user}:***@" if colon else f"{user}@") if plain else "***@"
    before, question, query = rest.partition("?")
    if question:
        query, hash_, fragment = query.partition("#")
        pairs = []
        for pair in query.split("&"):
            name, eq, _ = pair.partition("=")
            secret = eq and _SECRET_OPTION.search(urllib.parse.unquote_plus(name))
            pairs.append(f"{name}=***" if secret else pair)
        rest = f"{before}?{'&'.join(pairs)}{hash_}{fragment}"
    return f"{head}{shown}{rest}"


def open_backend(url: str) -> Backend:
    """The backend a URL names: ``sqlite:///path/to/jobs.db`` (embedded; the default) or
    ``redis://host:6379/0`` (many machines)."""
    if url.startswith("sqlite://"):
        from poolsim.queue.backends.sqlite import SQLiteBackend

        return SQLiteBackend(url)
    if url.startswith(("redis://", "rediss://")):
        try:
            from poolsim.queue.backends.redis import RedisBackend
        except ImportError as exc:
            raise ConfigError("url", redact_url(url), f"a backend poolsim has ({exc})") from None
        return RedisBackend(url)
    raise ConfigError("url", redact_url(url), "sqlite:///path/to/file.db or "
                      "redis://host:port/db")
