"""Periodic tasks: cron expressions (in a time zone) and fixed intervals, each tick once.

Each tick of an entry is enqueued with a task id made of the entry's id and the
tick's time (``report:daily@2026-03-29T01:00:00Z``), so two schedulers running
the same entries — for availability — enqueue every tick once: the store
refuses the second with ``TaskAlreadyExists``, which the scheduler expects and
counts as a duplicate::

    scheduler = Scheduler("sqlite:///jobs.db", tz="Europe/Berlin")
    scheduler.cron("30 2 * * *", Task("report:daily"), queue="low", max_retry=5)
    scheduler.every(60, Task("cache:refresh"))
    scheduler.run()   # until SIGTERM/SIGINT

**Missed ticks coalesce.** After downtime (the process stopped, the machine
slept, ``tick()`` was called late) only the *latest* missed tick of each entry
is enqueued — a job that runs every five minutes runs once after an hour's
outage, not twelve times in a burst. This also makes the de-duplication sound:
a scheduler only ever enqueues an entry's latest due tick, so tick ``T`` can
only be enqueued before the entry's next tick, and the scheduler keeps each
tick's task (``retention``) at least that long after it completes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import numbers
import signal
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from types import FrameType
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter

from poolsim.errors import ConfigError, TaskAlreadyExists
from poolsim.queue.client import QUEUE_NAME, TASK_ID, Client, _seconds
from poolsim.queue.task import Task, TaskInfo

__all__ = ["Entry", "Scheduler", "SchedulerStatistics"]

_log = logging.getLogger("poolsim.queue.scheduler")

Clock = Callable[[], float]

SKEW_MARGIN_S = 60.0  # extra retention of a tick's task: schedulers' clocks may disagree this much
_POLL_S = 0.25  # longest sleep between checks of the stop flags (SIGTERM is seen this fast)
_MISSED_CAP = 1000  # missed ticks counted per entry and tick, at most (the count is only reported)
_OPTIONS = ("max_retry", "timeout", "unique_for", "retention")  # of Client.enqueue, per entry


def _check_option(key: str, value: Any) -> None:
    """``Client.enqueue``'s rule for one option, applied when the entry is added: an entry
    the client would refuse would otherwise fail at every tick."""
    if key == "max_retry":
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise ConfigError("max_retry", value, "an integer >= 0")
    else:  # timeout and unique_for > 0 (or None); retention >= 0
        _seconds(key, value, positive=key in ("timeout", "unique_for"))


class _Schedule(Protocol):
    def latest(self, now: float) -> float:
        """The latest tick at or before ``now``."""
        ...

    def following(self, t: float) -> float:
        """The first tick strictly after ``t``."""
        ...


class _Every:
    """Ticks at whole multiples of ``seconds`` since the epoch, so every scheduler agrees."""

    def __init__(self, seconds: float) -> None:
        if isinstance(seconds, bool) or not (isinstance(seconds, int | float)
                                             and math.isfinite(seconds) and seconds > 0):
            raise ConfigError("seconds", seconds, "a finite number of seconds > 0")
        self.seconds = float(seconds)

    def latest(self, now: float) -> float:
        k = math.floor(now / self.seconds)
        if (k + 1) * self.seconds <= now:  # float rounding
            k += 1
        return k * self.seconds

    def following(self, t: float) -> float:
        nxt = self.latest(t) + self.seconds
        return nxt if nxt > t else nxt + self.seconds


class _Cron:
    """A croniter expression read in a time zone.

    Across a DST change it behaves as Vixie cron does: a time skipped by the
    spring change runs once at the first instant after it (``30 2 * * *`` at
    03:00); a time repeated by the autumn change runs once for an expression
    with a fixed hour (the first pass), and on both passes when the hour field
    is ``*`` (``0 * * * *`` runs every real hour).
    """

    def __init__(self, expr: str, tz: str) -> None:
        if not isinstance(expr, str) or not croniter.is_valid(expr):
            raise ConfigError("cron", expr, "a cron expression such as '*/5 * * * *' "
                              "(minute hour day-of-month month day-of-week), or '@hourly'")
        try:
            self.zone = ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            raise ConfigError("tz", tz, "an IANA time zone such as 'UTC' or "
                              "'Europe/Berlin'") from None
        self.expr = expr
        fields = expr.split()
        self._every_hour = (fields[1] == "*" if len(fields) >= 5
                            else expr.strip().lower() == "@hourly")
        try:
            self.following(time.time())
        except CroniterBadDateError:
            raise ConfigError("cron", expr, "an expression that matches some date "
                              "(this one never fires)") from None

    def _repeated(self, dt: datetime) -> bool:
        """Whether ``dt`` is the second pass of a wall time the autumn change repeats."""
        if self._every_hour:
            return False
        wall = dt.replace(tzinfo=None)
        first = wall.replace(tzinfo=self.zone, fold=0)
        second = wall.replace(tzinfo=self.zone, fold=1)
        return (first.utcoffset() != second.utcoffset()
                and dt.timestamp() == second.timestamp() != first.timestamp())

    def latest(self, now: float) -> float:
        # Cron ticks fall on whole seconds: the latest <= now is the latest < floor(now) + 1.
        it = croniter(self.expr, datetime.fromtimestamp(math.floor(now) + 1, self.zone))
        while True:
            dt: datetime = it.get_prev(datetime)
            if not self._repeated(dt):
                return dt.timestamp()

    def following(self, t: float) -> float:
        it = croniter(self.expr, datetime.fromtimestamp(t, self.zone))
        while True:
            dt: datetime = it.get_next(datetime)
            if not self._repeated(dt) and dt.timestamp() > t:
                return dt.timestamp()


@dataclasses.dataclass(frozen=True, kw_only=True)
class Entry:
    """One periodic task of a :class:`Scheduler`; ``spec`` says when, for people."""

    id: str
    spec: str
    task: Task
    queue: str
    options: Mapping[str, Any]
    schedule: _Schedule = dataclasses.field(repr=False, compare=False)

    def task_id(self, tick: float) -> str:
        """The id of this entry's task for ``tick``: the same in every scheduler."""
        stamp = datetime.fromtimestamp(tick, UTC)
        text = stamp.strftime("%Y-%m-%dT%H:%M:%S")
        if stamp.microsecond:
            text += f".{stamp.microsecond:06d}".rstrip("0")
        return f"{self.id}@{text}Z"

    def next_tick(self, after: float) -> float:
        """The first tick strictly after ``after`` (epoch seconds)."""
        return self.schedule.following(after)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class SchedulerStatistics:
    """What a scheduler has done so far."""

    entries: int
    enqueued: int  # ticks this scheduler enqueued
    duplicates: int  # ticks another scheduler had enqueued first (TaskAlreadyExists)
    missed: int  # ticks skipped because a later one was due too (coalesced)
    errors: int  # entries' ticks that failed to enqueue (each retried on the next tick)
    last_tick: float | None  # the ``now`` of the last tick() that ran


class Scheduler:
    """Enqueue tasks from cron expressions and fixed intervals, each tick once.

    ``clock`` gives epoch seconds (inject one in tests); ``tz`` is the default
    time zone of cron entries. ``catch_up`` seconds: a tick at most this old
    when an entry is added is still enqueued — a scheduler restarted within a
    minute with ``catch_up=60`` does not lose the tick that fell during the
    restart (and does not run it twice: its task id is the same).
    """

    def __init__(self, url: str, *, clock: Clock = time.time, tz: str = "UTC",
                 catch_up: float = 0.0) -> None:
        _Cron("* * * * *", tz)  # checks tz up front
        if isinstance(catch_up, bool) or not (isinstance(catch_up, int | float)
                                              and math.isfinite(catch_up) and catch_up >= 0):
            raise ConfigError("catch_up", catch_up, "a finite number of seconds >= 0")
        self.tz = tz
        self.catch_up = float(catch_up)
        self._clock = clock
        self._client = Client(url, clock=clock)
        self.url = self._client.url  # any password redacted
        self._entries: dict[str, Entry] = {}
        self._watermark: dict[str, float] = {}  # ticks up to here are handled, per entry
        self._lock = threading.Lock()
        self._enqueued = self._duplicates = self._missed = self._errors = 0
        self._failed_at: dict[str, float] = {}  # entry id -> when its failure was last logged
        self._last_tick: float | None = None
        self._stop = threading.Event()
        self._signalled = False  # set by the signal handlers, and only that
        self._thread: threading.Thread | None = None

    # -- entries -------------------------------------------------------------------------------

    def cron(self, expr: str, task: Task, *, queue: str = "default", tz: str | None = None,
             name: str | None = None, **enqueue_options: Any) -> Entry:
        """Enqueue ``task`` at every tick of the cron expression ``expr``, read in ``tz``
        (default: the scheduler's). ``name`` is the entry id (default: derived from the
        expression, zone, task and options, so identical schedulers agree); the other
        options are :meth:`Client.enqueue`'s ``max_retry``, ``timeout``, ``retention``
        and ``unique_for`` (a tick enqueued while an equal task's unique lock lives is
        refused, and counted as a duplicate)."""
        zone = self.tz if tz is None else tz
        schedule = _Cron(expr, zone)
        return self._add(f"cron {expr} ({zone})", schedule, task, queue, name, enqueue_options)

    def every(self, seconds: float, task: Task, *, queue: str = "default",
              name: str | None = None, **enqueue_options: Any) -> Entry:
        """Enqueue ``task`` every ``seconds``, at whole multiples of ``seconds`` since the
        epoch (so every scheduler picks the same ticks); options as :meth:`cron`."""
        schedule = _Every(seconds)
        return self._add(f"every {schedule.seconds:g} s", schedule, task, queue, name,
                         enqueue_options)

    def _add(self, spec: str, schedule: _Schedule, task: Task, queue: str, name: str | None,
             options: dict[str, Any]) -> Entry:
        if not isinstance(task, Task):
            raise ConfigError("task", task, "a poolsim.queue.Task")
        if not (isinstance(queue, str) and QUEUE_NAME.fullmatch(queue)):
            raise ConfigError("queue", queue, "1-100 characters of A-Z a-z 0-9 _ . : -")
        for key, value in options.items():
            if key not in _OPTIONS:
                raise ConfigError(key, value, "not an option of a periodic task (the tick sets "
                                  "its id and time; a fixed deadline would fail every later "
                                  "tick): one of " + ", ".join(_OPTIONS))
            _check_option(key, value)
        if name is None:
            digest = hashlib.sha256(json.dumps(
                [spec, task.type, task.encoded(), queue, options], sort_keys=True, default=repr,
            ).encode()).hexdigest()[:12]
            name = f"{task.type}:{digest}"
        elif not (isinstance(name, str) and "@" not in name
                  and TASK_ID.fullmatch(f"{name}@2000-01-01T00:00:00.000001Z")):
            raise ConfigError("name", name, "1-160 printable ASCII characters, no spaces "
                              "and no '@'")
        entry = Entry(id=name, spec=spec, task=task, queue=queue, options=dict(options),
                      schedule=schedule)
        with self._lock:
            if name in self._entries:
                raise ConfigError("name", name, "unique among this scheduler's entries "
                                  "(pass name= to tell identical entries apart)")
            self._entries[name] = entry
            self._watermark[name] = self._clock() - self.catch_up
        return entry

    def entries(self) -> list[Entry]:
        """The entries, in the order they were added."""
        with self._lock:
            return list(self._entries.values())

    # -- ticking -------------------------------------------------------------------------------

    def tick(self, now: float | None = None) -> list[TaskInfo]:
        """Enqueue every entry due since the last tick; returns the tasks this call enqueued
        (a tick another scheduler enqueued first is left out). Of several due ticks of one
        entry only the latest is enqueued. An entry that fails (an error other than
        ``TaskAlreadyExists``: the store unreachable...) is logged and counted in
        ``statistics().errors``, and its tick stays due, so the next call retries it; the
        other entries go on regardless."""
        with self._lock:
            now = self._clock() if now is None else now
            self._last_tick = now
            infos: list[TaskInfo] = []
            for entry in self._entries.values():
                since = self._watermark[entry.id]
                if now <= since:
                    continue
                try:
                    due = entry.schedule.latest(now)
                    if due > since:
                        missed = self._count_missed(entry, since, due)
                        info = self._enqueue(entry, due)
                        self._missed += missed
                        if missed:
                            _log.warning("entry %s: %d missed tick(s) before %s skipped; only "
                                         "the latest runs", entry.id, missed,
                                         entry.task_id(due))
                        if info is not None:
                            infos.append(info)
                except Exception:
                    self._errors += 1
                    self._log_failure(entry)
                    continue  # its watermark stays: the tick is retried next time
                self._failed_at.pop(entry.id, None)
                self._watermark[entry.id] = now
            return infos

    def _log_failure(self, entry: Entry) -> None:
        """Log an entry's failure with its traceback, at most every 5 s per entry."""
        last = self._failed_at.get(entry.id, -math.inf)
        if time.monotonic() - last >= 5.0:
            self._failed_at[entry.id] = time.monotonic()
            _log.exception("entry %s (%s, task %s) failed to enqueue its tick; retrying on "
                           "the next tick", entry.id, entry.spec, entry.task.type)

    def _count_missed(self, entry: Entry, since: float, due: float) -> int:
        n, t = 0, entry.schedule.following(since)
        while t < due and n < _MISSED_CAP:
            n += 1
            t = entry.schedule.following(t)
        return n

    def _enqueue(self, entry: Entry, tick: float) -> TaskInfo | None:
        options = dict(entry.options)
        # Keep the tick's task until no scheduler can enqueue this tick again (see module doc).
        period = entry.schedule.following(tick) - tick
        options["retention"] = max(float(options.get("retention") or 0.0),
                                   period + SKEW_MARGIN_S)
        try:
            info = self._client.enqueue(entry.task, queue=entry.queue,
                                        task_id=entry.task_id(tick), **options)
        except TaskAlreadyExists:
            self._duplicates += 1
            return None
        self._enqueued += 1
        return info

    def next_due(self) -> float | None:
        """When the next tick of any entry falls (epoch seconds); None without entries."""
        with self._lock:
            ticks = [entry.schedule.following(self._watermark[entry.id])
                     for entry in self._entries.values()]
        return min(ticks) if ticks else None

    def statistics(self) -> SchedulerStatistics:
        """A snapshot of what this scheduler has done."""
        with self._lock:
            return SchedulerStatistics(entries=len(self._entries), enqueued=self._enqueued,
                                       duplicates=self._duplicates, missed=self._missed,
                                       errors=self._errors, last_tick=self._last_tick)

    # -- running -------------------------------------------------------------------------------

    def run(self) -> None:
        """Tick until SIGTERM or SIGINT (in the main thread; the handlers only set a flag) or
        :meth:`stop`, then close. A failing tick is logged and retried."""
        previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                previous[signum] = signal.signal(signum, self._on_signal)
        try:
            self._loop()
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
            self.close()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signalled = True

    def _loop(self) -> None:
        failed_at = -math.inf
        while not (self._signalled or self._stop.is_set()):
            try:
                self.tick()
            except Exception:
                if time.monotonic() - failed_at >= 5.0:  # log at most every 5 s
                    failed_at = time.monotonic()
                    _log.exception("scheduler tick failed; retrying")
            due = self.next_due()
            wait = _POLL_S if due is None else due - self._clock()
            self._stop.wait(min(max(wait, 0.001), _POLL_S))

    def start(self) -> None:
        """Run the loop on a background thread (no signal handlers): :meth:`stop` ends it."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="poolsim-scheduler",
                                            daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """End :meth:`run` or the :meth:`start` thread after its current tick."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def close(self) -> None:
        """Stop, and release the store's connection."""
        self.stop()
        self._client.close()

    def __repr__(self) -> str:
        return f"Scheduler({self.url!r}, entries={len(self._entries)})"
