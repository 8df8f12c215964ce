"""The producer side: validate a task's options and store it durably.

>>> import tempfile
>>> from poolsim.queue import Client, Task
>>> with Client(f"sqlite:///{tempfile.mkdtemp()}/jobs.db") as client:
...     info = client.enqueue(Task("email:welcome", {"user_id": "42"}), queue="critical",
...                           max_retry=3, timeout=30)
>>> info.state, info.queue, info.max_retry
(<State.PENDING: 'pending'>, 'critical', 3)
"""

from __future__ import annotations

import hashlib
import math
import numbers
import re
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from poolsim.errors import ConfigError
from poolsim.queue.backends.base import Backend, open_backend
from poolsim.queue.task import State, Task, TaskInfo, new_task_id

__all__ = ["Client"]

QUEUE_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,100}")  # no braces: Redis hash tags stay ours
TASK_ID = re.compile(r"[\x21-\x7e]{1,200}")  # printable ASCII, no spaces


class Client:
    """Enqueue tasks into the store a URL names (``sqlite:///jobs.db``, ``redis://...``).

    ``clock`` gives epoch seconds (``time.time``); tests pass a fake one. A client is
    safe to share between threads.
    """

    def __init__(self, url: str = "sqlite:///jobs.db", *,
                 clock: Callable[[], float] = time.time) -> None:
        if not callable(clock):
            raise ConfigError("clock", clock, "a callable returning epoch seconds")
        self.backend: Backend = open_backend(url)
        self.url = self.backend.url  # as the store shows it: any password redacted
        self._clock = clock

    def enqueue(self, task: Task, *, queue: str = "default", max_retry: int = 25,
                timeout: float | None = None, deadline: float | None = None,
                process_at: float | None = None, process_in: float | None = None,
                unique_for: float | None = None, retention: float = 0.0,
                task_id: str | None = None) -> TaskInfo:
        """Store ``task``; returns its info (``pending``, or ``scheduled`` if it runs later).

        ``timeout``: seconds an attempt may run; ``deadline``: epoch seconds after which
        no attempt starts; ``process_at`` (epoch seconds) or ``process_in`` (seconds from
        now), not both: when it first runs; ``unique_for``: seconds during which an equal
        task (same type, payload and queue) is refused with ``TaskAlreadyExists``;
        ``retention``: seconds a completed task is kept; ``task_id``: your own id (a
        reused one raises ``TaskAlreadyExists``). Every option is checked first and a bad
        one raises ``ConfigError`` naming it.
        """
        if not isinstance(task, Task):
            raise ConfigError("task", task, "a poolsim.queue.Task")
        if not (isinstance(queue, str) and QUEUE_NAME.fullmatch(queue)):
            raise ConfigError("queue", queue, "1-100 characters of A-Z a-z 0-9 _ . : -")
        if isinstance(max_retry, bool) or not isinstance(max_retry, numbers.Integral) \
                or max_retry < 0:
            raise ConfigError("max_retry", max_retry, "an integer >= 0")
        now = self._clock()
        timeout = _seconds("timeout", timeout, positive=True)
        deadline = _seconds("deadline", deadline, positive=True)
        if deadline is not None and deadline <= now:
            raise ConfigError("deadline", deadline, f"epoch seconds in the future (now {now:.3f})")
        if process_at is not None and process_in is not None:
            raise ConfigError("process_in", process_in, "not given together with process_at")
        at = _seconds("process_at", process_at, positive=False)
        delay = _seconds("process_in", process_in, positive=False)
        when = at if at is not None else now + (delay or 0.0)
        if deadline is not None and when >= deadline:
            raise ConfigError("deadline", deadline, f"later than the first run at {when:.3f}")
        unique_for = _seconds("unique_for", unique_for, positive=True)
        kept = _seconds("retention", retention, positive=False)
        if task_id is not None and not (isinstance(task_id, str) and TASK_ID.fullmatch(task_id)):
            raise ConfigError("task_id", task_id, "1-200 printable ASCII characters, no spaces")
        payload = task.encoded()
        key = None if unique_for is None else unique_key(task.type, payload, queue)
        info = TaskInfo(
            id=task_id or new_task_id(), type=task.type, payload=payload, queue=queue,
            state=State.SCHEDULED if when > now else State.PENDING, max_retry=int(max_retry),
            timeout=timeout, deadline=deadline, process_at=when, unique_key=key,
            unique_until=None if unique_for is None else now + unique_for,
            retention=kept or 0.0, created_at=now)
        return self.backend.enqueue(info, now=now)

    def close(self) -> None:
        """Release the store's connections."""
        self.backend.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"


def unique_key(type_: str, payload: str, queue: str) -> str:
    """``queue:type:sha256(payload)`` — equal tasks in one queue share it."""
    digest = hashlib.sha256(f"{type_}\0{payload}".encode()).hexdigest()
    return f"{queue}:{type_}:{digest}"


def _seconds(field: str, value: Any, *, positive: bool) -> float | None:
    """``value`` as float seconds; None stays None; otherwise finite and >= 0 (> 0)."""
    if value is None:
        return None
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    number = float(value) if ok else math.nan
    if not math.isfinite(number) or number < 0 or (positive and number == 0):
        bound = "> 0" if positive else ">= 0"
        raise ConfigError(field, value, f"a finite number of seconds {bound}")
    return number
