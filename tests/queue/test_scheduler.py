"""The scheduler: cron (with time zones across DST) and intervals, each tick exactly once.

Time is injected: each test moves a fake clock and calls ``tick(now)``; the
store is a real one, once per backend (conftest's ``queue_url``). Two schedulers
(threads, then processes) race on the same ticks and the store holds each tick once.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from poolsim.errors import ConfigError
from poolsim.queue import Inspector, Scheduler, State, Task
from poolsim.queue.scheduler import SKEW_MARGIN_S


def utc(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()  # type: ignore[arg-type, misc]


def stamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%m-%d %H:%M")


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def run_ticks(scheduler: Scheduler, clock: Clock, until: float, step: float) -> list[str]:
    """Tick every ``step`` seconds up to ``until``; the UTC times of the ticks enqueued."""
    enqueued = []
    while clock.t < until:
        clock.t += step
        enqueued += [stamp(info.created_at) for info in scheduler.tick()]
    return enqueued


def test_cron_every_five_minutes_enqueues_each_tick_once(url: str) -> None:
    clock = Clock(utc(2026, 1, 1, 0, 1))
    scheduler = Scheduler(url, clock=clock)
    entry = scheduler.cron("*/5 * * * *", Task("poll", {"n": 1}), queue="low", max_retry=2,
                           name="poll")
    assert run_ticks(scheduler, clock, utc(2026, 1, 1, 0, 21), step=60) == [
        "01-01 00:05", "01-01 00:10", "01-01 00:15", "01-01 00:20"]
    pending = Inspector(url).list(State.PENDING)
    assert [info.id for info in pending] == [
        "poll@2026-01-01T00:05:00Z", "poll@2026-01-01T00:10:00Z",
        "poll@2026-01-01T00:15:00Z", "poll@2026-01-01T00:20:00Z"]
    assert {(i.queue, i.max_retry, i.data()["n"]) for i in pending} == {("low", 2, 1)}
    assert entry.task_id(utc(2026, 1, 1, 0, 5)) == pending[0].id
    assert scheduler.statistics().enqueued == 4
    scheduler.close()


def test_a_tick_exactly_at_now_is_due_and_not_enqueued_twice(url: str) -> None:
    clock = Clock(utc(2026, 1, 1, 0, 4, 59))
    scheduler = Scheduler(url, clock=clock)
    scheduler.cron("*/5 * * * *", Task("poll"))
    assert scheduler.tick(now=utc(2026, 1, 1, 0, 5) - 0.001) == []
    assert len(scheduler.tick(now=utc(2026, 1, 1, 0, 5))) == 1
    assert scheduler.tick(now=utc(2026, 1, 1, 0, 5)) == []
    assert scheduler.tick(now=utc(2026, 1, 1, 0, 9, 59)) == []
    scheduler.close()


def test_cron_in_berlin_across_the_spring_change(url: str) -> None:
    # 2026-03-29 02:00 CET -> 03:00 CEST: 02:30 does not exist that night.
    clock = Clock(utc(2026, 3, 28, 0, 0))
    scheduler = Scheduler(url, clock=clock, tz="Europe/Berlin")
    scheduler.cron("30 2 * * *", Task("daily"))
    hourly = Scheduler(url, clock=clock, tz="UTC")
    hourly.cron("0 * * * *", Task("hourly"), tz="Europe/Berlin")
    daily, hours = [], []
    while clock.t < utc(2026, 3, 31, 0, 0):
        clock.t += 600
        daily += [stamp(i.created_at) for i in scheduler.tick()]
        hours += [i.created_at for i in hourly.tick()]
    # 02:30 CET = 01:30Z; on the 29th the skipped time runs once at 03:00 CEST = 01:00Z;
    # from the 30th 02:30 CEST = 00:30Z.
    assert daily == ["03-28 01:30", "03-29 01:00", "03-30 00:30"]
    # the local day of the change has 23 hours, so 23 hourly ticks
    day = [t for t in hours if utc(2026, 3, 28, 23) <= t < utc(2026, 3, 29, 22)]
    assert len(day) == 23
    scheduler.close()
    hourly.close()


def test_cron_in_berlin_across_the_autumn_change(url: str) -> None:
    # 2026-10-25 03:00 CEST -> 02:00 CET: 02:00-02:59 happens twice that night.
    clock = Clock(utc(2026, 10, 24, 0, 0))
    fixed = Scheduler(url, clock=clock, tz="Europe/Berlin")
    fixed.cron("30 2 * * *", Task("daily"))
    wild = Scheduler(url, clock=clock, tz="Europe/Berlin")
    wild.cron("*/30 * * * *", Task("half-hourly"))
    daily, halves = [], []
    while clock.t < utc(2026, 10, 26, 0, 0):
        clock.t += 300
        daily += [stamp(i.created_at) for i in fixed.tick()]
        halves += [i.created_at for i in wild.tick()]
    # a fixed-hour job runs once, on the first pass (02:30 CEST = 00:30Z)
    assert daily == ["10-24 00:30", "10-25 00:30"]
    # a wildcard-hour job runs every real half hour: 50 in the 25-hour local day
    day = [t for t in halves if utc(2026, 10, 24, 22) <= t < utc(2026, 10, 25, 23)]
    assert len(day) == 50
    assert all(b - a == 1800 for a, b in itertools.pairwise(halves))
    fixed.close()
    wild.close()


def test_hourly_alias_runs_every_real_hour_across_the_autumn_change(url: str) -> None:
    clock = Clock(utc(2026, 10, 24, 22, 0))  # local midnight; the 25th has 25 hours
    scheduler = Scheduler(url, clock=clock, tz="Europe/Berlin")
    scheduler.cron("@hourly", Task("hourly"))
    scheduler.cron("@daily", Task("daily"))
    enqueued = run_ticks(scheduler, clock, utc(2026, 10, 25, 23, 0), step=600)
    assert enqueued.count("10-25 23:00") == 2  # the next local midnight: both fire
    assert len(enqueued) == 25 + 1
    scheduler.close()


def test_every_ticks_at_multiples_of_the_interval_since_the_epoch(url: str) -> None:
    clock = Clock(1_000_003.0)
    scheduler = Scheduler(url, clock=clock)
    scheduler.every(10, Task("beat"), name="beat")
    got = []
    for now in (1_000_005.0, 1_000_010.0, 1_000_019.9, 1_000_020.5, 1_000_031.0):
        got += [info.id for info in scheduler.tick(now)]
    assert got == ["beat@1970-01-12T13:46:50Z", "beat@1970-01-12T13:47:00Z",
                   "beat@1970-01-12T13:47:10Z"]
    assert scheduler.next_due() == 1_000_040.0
    scheduler.close()


def test_sub_second_intervals_get_distinct_ids(url: str) -> None:
    clock = Clock(100.0)
    scheduler = Scheduler(url, clock=clock)
    scheduler.every(0.25, Task("fast"), name="fast")
    ids = [info.id for now in (100.25, 100.5, 100.75) for info in scheduler.tick(now)]
    assert ids == ["fast@1970-01-01T00:01:40.25Z", "fast@1970-01-01T00:01:40.5Z",
                   "fast@1970-01-01T00:01:40.75Z"]
    scheduler.close()


def test_missed_ticks_after_downtime_coalesce_into_the_latest(url: str) -> None:
    clock = Clock(utc(2026, 1, 1, 0, 0, 30))
    scheduler = Scheduler(url, clock=clock)
    scheduler.cron("*/5 * * * *", Task("poll"), name="poll")
    infos = scheduler.tick(now=utc(2026, 1, 1, 1, 2))  # an hour late: 12 ticks were due
    assert [info.id for info in infos] == ["poll@2026-01-01T01:00:00Z"]
    assert scheduler.statistics().missed == 11
    assert [i.id for i in scheduler.tick(now=utc(2026, 1, 1, 1, 5))] == [
        "poll@2026-01-01T01:05:00Z"]
    scheduler.close()


def test_a_tick_before_the_entry_was_added_is_not_enqueued_unless_caught_up(url: str) -> None:
    clock = Clock(utc(2026, 1, 1, 0, 5, 20))  # 20 s after a tick
    plain = Scheduler(url, clock=clock)
    plain.cron("*/5 * * * *", Task("poll"), name="poll")
    assert plain.tick() == []
    restarted = Scheduler(url, clock=clock, catch_up=60)
    restarted.cron("*/5 * * * *", Task("poll"), name="poll")
    assert [i.id for i in restarted.tick()] == ["poll@2026-01-01T00:05:00Z"]
    again = Scheduler(url, clock=clock, catch_up=60)  # restarted once more: not run twice
    again.cron("*/5 * * * *", Task("poll"), name="poll")
    assert again.tick() == []
    assert again.statistics().duplicates == 1
    for s in (plain, restarted, again):
        s.close()


def test_tick_tasks_are_kept_until_no_scheduler_can_enqueue_them_again(url: str) -> None:
    clock = Clock(utc(2026, 1, 1, 0, 0, 30))
    scheduler = Scheduler(url, clock=clock)
    scheduler.cron("*/5 * * * *", Task("a"))
    scheduler.every(60, Task("b"), retention=86400)
    infos = scheduler.tick(now=utc(2026, 1, 1, 0, 5))
    assert sorted(i.retention for i in infos) == [300 + SKEW_MARGIN_S, 86400]
    scheduler.close()


def test_entry_ids_are_derived_so_that_identical_schedulers_agree(url: str) -> None:
    clock = Clock(0.0)
    a, b = Scheduler(url, clock=clock), Scheduler(url, clock=clock)
    ea = a.cron("0 * * * *", Task("t", {"x": 1}), queue="q", timeout=5)
    eb = b.cron("0 * * * *", Task("t", {"x": 1}), queue="q", timeout=5)
    ec = b.cron("0 * * * *", Task("t", {"x": 2}), queue="q", timeout=5)
    assert ea.id == eb.id != ec.id
    assert ea.id.startswith("t:")
    assert [e.spec for e in b.entries()] == ["cron 0 * * * * (UTC)"] * 2
    a.close()
    b.close()


@pytest.mark.parametrize(("call", "field"), [
    (lambda s: s.cron("61 * * * *", Task("t")), "cron"),
    (lambda s: s.cron("0 0 30 2 *", Task("t")), "cron"),
    (lambda s: s.cron("* * * * *", Task("t"), tz="Mars/Olympus"), "tz"),
    (lambda s: s.every(0, Task("t")), "seconds"),
    (lambda s: s.every(float("nan"), Task("t")), "seconds"),
    (lambda s: s.every(5, "t"), "task"),
    (lambda s: s.every(5, Task("t"), queue="no spaces"), "queue"),
    (lambda s: s.every(5, Task("t"), process_in=3), "process_in"),
    (lambda s: s.every(5, Task("t"), task_id="x"), "task_id"),
    (lambda s: s.every(5, Task("t"), deadline=2e9), "deadline"),
    (lambda s: s.every(5, Task("t"), retention="1d"), "retention"),
    (lambda s: s.every(5, Task("t"), max_retry=-1), "max_retry"),
    # What Client.enqueue refuses is refused here, not at every tick:
    (lambda s: s.every(5, Task("t"), timeout=0), "timeout"),
    (lambda s: s.every(5, Task("t"), unique_for=0), "unique_for"),
    (lambda s: s.every(5, Task("t"), max_retry=2.5), "max_retry"),
    (lambda s: s.every(5, Task("t"), max_retry=None), "max_retry"),
    (lambda s: s.every(5, Task("t"), max_retry=True), "max_retry"),
    (lambda s: s.cron("* * * * *", Task("t"), timeout=math.inf), "timeout"),
    (lambda s: s.cron("* * * * *", Task("t"), retention=-1), "retention"),
    (lambda s: s.every(5, Task("t"), name="a@b"), "name"),
    (lambda s: [s.every(5, Task("t"), name="x"), s.every(9, Task("u"), name="x")], "name"),
    (lambda s: [s.every(5, Task("t")), s.every(5, Task("t"))], "name"),
])
def test_bad_entries_are_refused_when_added(url: str, call: object, field: str) -> None:
    scheduler = Scheduler(url, clock=Clock(0.0))
    with pytest.raises(ConfigError) as info:
        call(scheduler)  # type: ignore[operator]
    assert info.value.field == field
    scheduler.close()


def test_bad_scheduler_options_are_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="tz="):
        Scheduler(url, tz="Nowhere/Special")
    with pytest.raises(ConfigError, match="catch_up="):
        Scheduler(url, catch_up=-1)


def expected_ids(name: str, start: float, stop: float, every: float) -> list[str]:
    ticks = [start + every * k for k in range(1, int((stop - start) // every) + 1)]
    return [f"{name}@{datetime.fromtimestamp(t, UTC).strftime('%Y-%m-%dT%H:%M:%S')}Z"
            for t in ticks]


def test_two_schedulers_in_threads_enqueue_each_tick_once(url: str) -> None:
    start = utc(2026, 1, 1)
    steps = [start + 20 * k for k in range(1, 181)]  # an hour in 20 s steps
    barrier = threading.Barrier(2)
    results: dict[int, list[str]] = {}
    schedulers = []
    for _n in range(2):
        s = Scheduler(url, clock=Clock(start))
        s.cron("* * * * *", Task("minutely"), name="minutely")
        s.every(40, Task("forty"), name="forty")
        schedulers.append(s)

    def race(n: int) -> None:
        got = []
        for now in steps:
            barrier.wait(10)  # both tick the same moment, for every step
            got += [info.id for info in schedulers[n].tick(now)]
        results[n] = got

    threads = [threading.Thread(target=race, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    wanted = sorted(expected_ids("minutely", start, steps[-1], 60)
                    + expected_ids("forty", start, steps[-1], 40))
    assert sorted(results[0] + results[1]) == wanted  # each tick by exactly one of them
    assert sorted(i.id for i in Inspector(url).list(State.PENDING, limit=1000)) == wanted
    stats = [s.statistics() for s in schedulers]
    assert sum(s.enqueued for s in stats) == len(wanted)
    assert sum(s.duplicates for s in stats) == len(wanted)  # the loser of each race
    for s in schedulers:
        s.close()


RACER = textwrap.dedent("""
    import json, sys
    from poolsim.queue import Scheduler, Task
    url, start, step, count = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    scheduler = Scheduler(url, clock=lambda: start)
    scheduler.cron("* * * * *", Task("minutely"), name="minutely")
    scheduler.every(30, Task("thirty"), name="thirty")
    print("ready", flush=True)
    sys.stdin.readline()  # the go signal: both processes start together
    got = [i.id for k in range(1, count + 1) for i in scheduler.tick(start + step * k)]
    print(json.dumps(got))
""")


@pytest.mark.slow
def test_two_scheduler_processes_enqueue_each_tick_once(url: str, tmp_path: Path) -> None:
    start, step, count = utc(2026, 1, 1), 10.0, 360  # an hour in 10 s steps
    script = tmp_path / "racer.py"
    script.write_text(RACER)
    procs = [subprocess.Popen([sys.executable, str(script), url, str(start), str(step),
                               str(count)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True) for _ in range(2)]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    outputs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    got = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
    stop = start + step * count
    wanted = sorted(expected_ids("minutely", start, stop, 60)
                    + expected_ids("thirty", start, stop, 30))
    assert sorted(got[0] + got[1]) == wanted
    assert sorted(i.id for i in Inspector(url).list(State.PENDING, limit=1000)) == wanted


def test_start_and_stop_run_the_loop_on_a_thread(url: str) -> None:
    scheduler = Scheduler(url)  # the real clock: ticks every 50 ms
    scheduler.every(0.05, Task("beat"), name="beat")
    scheduler.start()
    deadline = time.monotonic() + 10
    while scheduler.statistics().enqueued < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    scheduler.stop(timeout=5)
    stats = scheduler.statistics()
    assert stats.enqueued >= 3 and stats.errors == 0
    ids = [i.id for i in Inspector(url).list(State.PENDING, limit=1000)]
    assert len(ids) == len(set(ids)) == stats.enqueued
    scheduler.close()


def test_good_entry_options_are_accepted(url: str) -> None:
    clock = Clock(utc(2026, 1, 1))
    scheduler = Scheduler(url, clock=clock)
    scheduler.every(60, Task("t"), max_retry=0, timeout=0.5, unique_for=None, retention=0)
    scheduler.every(60, Task("u"), max_retry=3, timeout=None, unique_for=30, retention=None)
    clock.t += 60
    assert len(scheduler.tick()) == 2
    scheduler.close()


def test_a_failing_entry_does_not_silence_the_others(
        url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock(utc(2026, 1, 1))
    scheduler = Scheduler(url, clock=clock)
    scheduler.every(60, Task("broken"), name="broken")
    scheduler.every(60, Task("fine"), name="fine")
    real = scheduler._client.enqueue
    broken = [True]

    def enqueue(task: Task, **options: object) -> object:
        if task.type == "broken" and broken[0]:
            raise OSError("the store is on fire")
        return real(task, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(scheduler._client, "enqueue", enqueue)
    got = []
    with caplog.at_level(logging.ERROR, logger="poolsim.queue.scheduler"):
        for _ in range(3):
            clock.t += 60
            got.append([info.id.split("@")[0] for info in scheduler.tick()])
    assert got == [["fine"], ["fine"], ["fine"]]  # every tick of the good entry ran
    stats = scheduler.statistics()
    assert (stats.enqueued, stats.errors) == (3, 3)
    failures = [r for r in caplog.records if "broken" in r.getMessage()]
    assert failures and failures[0].exc_info is not None  # logged, with its traceback
    assert len(failures) == 1  # at most every 5 s per entry, not at every tick
    broken[0] = False  # the store recovers: the entry's tick was kept due, it runs now
    clock.t += 1
    assert [info.id for info in scheduler.tick()] == [
        f"broken@{datetime.fromtimestamp(clock.t - 1, UTC):%Y-%m-%dT%H:%M:%S}Z"]
    scheduler.close()
