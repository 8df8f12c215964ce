"""The ``poolsim`` command: simulate a trace, plan capacity, list traces, run the demo; run
and inspect a durable queue (``queue``, ``worker``, ``scheduler``)."""

from __future__ import annotations

import argparse
import importlib
import math
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from poolsim import __version__
from poolsim.config import Backpressure, PoolConfig, ShutdownPolicy
from poolsim.errors import ConfigError, PoolsimError
from poolsim.records import Summary

__all__ = ["build_parser", "main", "parse_fraction", "parse_seconds"]

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_seconds(text: str) -> float:
    """``"120s"``, ``"2m"``, ``"500ms"``, ``"1.5h"`` or a bare number of seconds."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*(ms|s|min|m|h)?\s*", text,
                         re.IGNORECASE)
    seconds = float(match[1]) * _UNITS[(match[2] or "s").lower()] if match else math.inf
    if not math.isfinite(seconds):
        raise ConfigError("duration", text, "a finite number of seconds, or with a unit: "
                          "ms, s, m, h")
    return seconds


def parse_fraction(text: str) -> float:
    """``"0.1%"`` or ``"0.001"``: a fraction between 0 and 1."""
    percent = text.strip().endswith("%")
    try:
        value = float(text.strip().rstrip("%")) / (100 if percent else 1)
    except ValueError:
        raise ConfigError("fraction", text, "a fraction like 0.001 or a percentage like 0.1%"
                          ) from None
    if not 0 <= value <= 1:
        raise ConfigError("fraction", text, "between 0 and 1 (0% to 100%)")
    return value


def _arg(parse: Any) -> Any:
    """An argparse ``type=`` that reports a ConfigError's own message."""
    def wrapped(text: str) -> Any:
        try:
            return parse(text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return wrapped


def _queue_size(text: str) -> int | None:
    if text.strip().lower() in ("inf", "none", "unbounded"):
        return None
    try:
        return int(text)
    except ValueError:
        raise ConfigError("queue_size", text, "an integer >= 0, or inf") from None


def _workers_range(text: str) -> list[int]:
    """``"8"``, ``"2:32"`` (every value) or ``"2:32:2"`` (a step), or ``"2,4,8"``."""
    try:
        if ":" in text:
            parts = [int(p) for p in text.split(":")]
            low, high, step = [*parts, 1] if len(parts) == 2 else parts
            return list(range(low, high + 1, step))
        return [int(p) for p in text.split(",")]
    except (ValueError, TypeError):
        raise ConfigError("workers", text, "N, LOW:HIGH, LOW:HIGH:STEP or a comma list"
                          ) from None


def _load(args: argparse.Namespace) -> Any:
    """The trace named on the command line, reshaped as asked."""
    from poolsim.reshape import compress, scale_load, window
    from poolsim.traces import LinearService, load_trace

    service = None
    if args.service or args.service_intercept is not None:
        per_column = {}
        for item in args.service or []:
            column, _, coefficient = item.partition("=")
            try:
                per_column[column] = float(coefficient)
            except ValueError:
                raise ConfigError("service", item, "COLUMN=SECONDS_PER_UNIT") from None
        service = LinearService(intercept=args.service_intercept or 0.0, per_column=per_column)
    trace = load_trace(args.trace, service=service)
    if args.start is not None or args.end is not None:
        trace = window(trace, args.start or 0.0, args.end)
    if args.compress != 1.0:
        trace = compress(trace, args.compress)
    if args.load != 1.0:
        trace = scale_load(trace, args.load, seed=args.seed)
    return trace


def _add_trace_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("trace", help="a CSV/Parquet path, or the name of a shipped trace "
                        "(see `poolsim traces`)")
    parser.add_argument("--start", type=_arg(parse_seconds), help="keep arrivals from this time")
    parser.add_argument("--end", type=_arg(parse_seconds), help="keep arrivals before this time")
    parser.add_argument("--compress", type=float, default=1.0, metavar="FACTOR",
                        help="divide arrival times by FACTOR: the same jobs, FACTOR x the rate")
    parser.add_argument("--service", action="append", metavar="COLUMN=SECONDS",
                        help="service time per unit of a column, for traces without "
                        "service_s (repeatable), e.g. generated_tokens=0.02")
    parser.add_argument("--service-intercept", type=_arg(parse_seconds), metavar="SECONDS",
                        help="fixed service time per job (plus any --service terms)")
    parser.add_argument("--load", type=float, default=1.0, metavar="FACTOR",
                        help="rescale the load: thin (< 1) or superpose (> 1) arrivals, "
                        "keeping their burstiness; seeded by --seed")
    parser.add_argument("--runtime", choices=["threads", "asyncio"], default="threads",
                        help="what a timeout frees: threads keep the worker until the job "
                        "returns, asyncio frees it at once")
    parser.add_argument("--seed", type=int, default=1)


def _add_config_options(parser: argparse.ArgumentParser, *, single: bool) -> None:
    if single:
        parser.add_argument("--workers", type=int, default=4)
        parser.add_argument("--queue-size", type=_arg(_queue_size), default=100,
                            help="waiting places, or inf")
        parser.add_argument("--backpressure", default="reject",
                            choices=[p.value for p in Backpressure])
        parser.add_argument("--shutdown-at", type=_arg(parse_seconds), metavar="TIME",
                            help="start a shutdown at this trace time")
        parser.add_argument("--engine", choices=["auto", "simpy", "fast"], default="auto")
    parser.add_argument("--block-timeout", type=_arg(parse_seconds), default=1.0)
    parser.add_argument("--job-timeout", type=_arg(parse_seconds))
    parser.add_argument("--shutdown", default="drain", choices=[p.value for p in ShutdownPolicy])
    parser.add_argument("--shutdown-timeout", type=_arg(parse_seconds))


def format_summary(summary: Summary) -> str:
    """A readable table of a run's summary, with units."""
    n = summary.jobs
    lines = [f"  {'jobs':<14}{n:>12,}"]
    lines += [f"  {status:<14}{count:>12,}  ({count / n:.3%})"
              for status, count in summary.counts.items() if count]

    def secs(x: float) -> str:
        return "-" if math.isnan(x) else f"{x:.4g} s"

    lines += [
        f"  {'throughput':<14}{summary.throughput:>12.4g} jobs/s",
        f"  {'utilisation':<14}{summary.utilisation:>12.1%}",
        f"  {'wait':<14}mean {secs(summary.wait_mean)}   p50 {secs(summary.wait_p50)}   "
        f"p95 {secs(summary.wait_p95)}   p99 {secs(summary.wait_p99)}   "
        f"max {secs(summary.wait_max)}",
        f"  {'latency':<14}mean {secs(summary.latency_mean)}   p50 {secs(summary.latency_p50)}   "
        f"p95 {secs(summary.latency_p95)}   p99 {secs(summary.latency_p99)}   "
        f"max {secs(summary.latency_max)}",
    ]
    return "\n".join(lines)


def _simulate(args: argparse.Namespace) -> int:
    from poolsim.sim.model import simulate

    trace = _load(args)
    config = PoolConfig(workers=args.workers, queue_size=args.queue_size,
                        backpressure=args.backpressure, block_timeout=args.block_timeout,
                        job_timeout=args.job_timeout, shutdown=args.shutdown,
                        shutdown_timeout=args.shutdown_timeout)
    result = simulate(trace, config, seed=args.seed, shutdown_at=args.shutdown_at,
                      runtime=args.runtime, engine=args.engine)
    print(f"poolsim simulate: {len(trace):,} jobs of {args.trace} through {config!r} "
          f"({result.engine} engine, {args.runtime})\n")
    print(format_summary(result.summary))
    if result.shutdown is not None:
        d = result.shutdown
        print(f"\n  shutdown ({d.policy}) at {d.at:g} s: returned after {d.duration_s:.4g} s; "
              f"{len(d.completed)} completed, {len(d.returned)} returned, "
              f"{len(d.cancelled)} cancelled, {len(d.still_running)} still running, "
              f"{len(d.killed(30.0))} killed by a SIGKILL 30 s after the signal")
    return 0


def _plan(args: argparse.Namespace) -> int:
    from poolsim.report import plan

    trace = _load(args)
    base = PoolConfig(block_timeout=args.block_timeout, job_timeout=args.job_timeout,
                      shutdown=args.shutdown, shutdown_timeout=args.shutdown_timeout)
    outcome = plan(trace, p99=args.p99, max_reject=args.max_reject, out=Path(args.out),
                   base=base, workers=args.workers, queue_sizes=args.queue_sizes,
                   backpressure=args.backpressure, grace_s=args.grace, runtime=args.runtime,
                   seed=args.seed, title=str(args.trace))
    print(outcome.recommendation.reason)
    print(f"\nreport: {outcome.html}")
    return 0 if outcome.recommendation.met else 3


def _traces(args: argparse.Namespace) -> int:
    from poolsim.traces import list_traces

    listing = list_traces()
    for row in listing.itertuples(index=False):
        print(f"{row.name:<32}{row.rows:>9,} jobs  {row.description}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from poolsim.demo import run_demo

    config = PoolConfig(workers=args.workers, queue_size=args.queue_size,
                        backpressure=args.backpressure)
    print(f"poolsim demo: {args.seconds:g} s of bursty load (400 jobs/s bursts, 40 jobs/s "
          f"lulls, 20 ms jobs) through {config!r}\n")
    result = run_demo(config, seconds=args.seconds, seed=args.seed)
    print(format_summary(result.summary))
    print(f"\nshutdown ({result.report.policy}): {len(result.report.completed)} in-flight jobs "
          f"completed, {len(result.report.still_running)} left running, "
          f"{result.report.elapsed_s:.3f} s")
    print("\nPrometheus metrics (/metrics):")
    print(result.metrics)
    return 0


# -- the durable queue: poolsim queue ..., poolsim worker, poolsim scheduler ----------------------

QUEUE_URL_ENV = "POOLSIM_QUEUE_URL"
DEFAULT_QUEUE_URL = "sqlite:///jobs.db"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()
           ) -> str:
    """Columns padded to their widest cell; columns in ``right`` aligned right (numbers)."""
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.rjust(w) if i in right else cell.ljust(w)
                         for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
                         ).rstrip()
    return "\n".join([line(headers), *(line(row) for row in rows)])


def _inspector(args: argparse.Namespace) -> Any:
    from poolsim.queue import Inspector

    url = args.url or os.environ.get(QUEUE_URL_ENV) or DEFAULT_QUEUE_URL
    if url.startswith("sqlite://"):
        from poolsim.queue.backends.sqlite import parse_url

        path = parse_url(url)[0]
        if not path.exists():  # do not create an empty store for a mistyped URL
            raise ConfigError("url", url, f"an existing queue database (no file {str(path)!r}; "
                              f"pass --url or set {QUEUE_URL_ENV})")
    return Inspector(url)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} s"


def _when(epoch: float | None) -> str:
    if not epoch:
        return "-"
    import datetime as dt

    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _queue_stats(args: argparse.Namespace) -> int:
    from poolsim.queue import State

    with _inspector(args) as inspector:
        stats = inspector.stats()
    states = list(State)
    headers = ["queue", *(s.value for s in states), "latency", "paused", "processed today",
               "failed today"]
    rows = [[q.queue, *(f"{q.counts.get(s, 0):,}" for s in states),
             _age(q.oldest_pending_age_s), "yes" if q.paused else "no",
             f"{q.processed_today:,}", f"{q.failed_today:,}"] for q in stats]
    if not rows:
        print("no queues yet")
        return 0
    print(_table(headers, rows, right=[*range(1, len(states) + 2), len(headers) - 2,
                                       len(headers) - 1]))
    return 0


def _queue_ls(args: argparse.Namespace) -> int:
    with _inspector(args) as inspector:
        infos = inspector.list(args.state, queue=args.queue, limit=args.limit,
                               offset=args.offset)
    if not infos:
        where = f" in queue {args.queue!r}" if args.queue else ""
        print(f"no {args.state} tasks{where}")
        return 0
    rows = []
    for info in infos:
        error = (info.last_error or "").replace("\n", " ")
        rows.append([info.id, info.type, info.queue, f"{info.retried}/{info.max_retry}",
                     _when(info.process_at), error[:60] + ("..." if len(error) > 60 else "")])
    print(_table(["id", "type", "queue", "retried", "process at", "last error"], rows,
                 right=[3]))
    return 0


def _queue_act(args: argparse.Namespace) -> int:
    with _inspector(args) as inspector:
        if args.verb == "requeue":
            info = inspector.requeue(args.id)
            print(f"requeued {info.id} ({info.type}) in queue {info.queue!r}: {info.state}")
        elif args.verb == "archive":
            info = inspector.archive(args.id)
            print(f"archived {info.id} ({info.type}) in queue {info.queue!r}")
        else:
            inspector.delete(args.id)
            print(f"deleted {args.id}")
    return 0


def _queue_pause(args: argparse.Namespace) -> int:
    with _inspector(args) as inspector:
        if args.verb == "pause":
            inspector.pause(args.name)
            print(f"paused queue {args.name!r}: workers claim none of its tasks until unpause")
        else:
            inspector.unpause(args.name)
            print(f"unpaused queue {args.name!r}")
    return 0


def import_target(text: str, kind: str, expected: type) -> Any:
    """The object ``MODULE:ATTR`` names (the current directory is importable), checked to be
    an ``expected``; a clear :class:`ConfigError` when it cannot be found."""
    module_name, _, attr = text.partition(":")
    if not module_name or not attr:
        raise ConfigError(kind, text, f"MODULE:ATTR naming a {expected.__name__}, "
                          f"e.g. myapp.tasks:{kind}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(kind, text, f"an importable module (importing {module_name!r} "
                          f"failed: {exc})") from None
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigError(kind, text, f"an attribute of module {module_name!r} (it has no "
                              f"{attr!r})") from None
    if not isinstance(target, expected):
        raise ConfigError(kind, text, f"a {expected.__module__}.{expected.__name__}, not "
                          f"{type(target).__name__}")
    return target


def _worker(args: argparse.Namespace) -> int:
    from poolsim.queue.server import Server

    server = import_target(args.target, "server", Server)
    print(f"poolsim worker: running {args.target} ({server!r}); SIGTERM or Ctrl-C stops it",
          file=sys.stderr, flush=True)
    server.run()
    return 0


def _scheduler(args: argparse.Namespace) -> int:
    from poolsim.queue.scheduler import Scheduler

    scheduler = import_target(args.target, "scheduler", Scheduler)
    print(f"poolsim scheduler: running {args.target} ({scheduler!r}); SIGTERM or Ctrl-C stops "
          "it", file=sys.stderr, flush=True)
    scheduler.run()
    return 0


def _add_queue_commands(commands: Any) -> None:
    from poolsim.queue.task import State

    queue = commands.add_parser("queue", help="inspect and fix a durable queue")
    queue.add_argument("--url", help=f"the task store (default: ${QUEUE_URL_ENV}, else "
                       f"{DEFAULT_QUEUE_URL})")
    verbs = queue.add_subparsers(dest="verb", required=True, metavar="VERB")
    stats = verbs.add_parser("stats", help="tasks by state, latency and today's counts, "
                             "per queue")
    stats.set_defaults(run=_queue_stats)
    ls = verbs.add_parser("ls", help="list the tasks in a state")
    ls.add_argument("state", choices=[state.value for state in State])
    ls.add_argument("--queue", help="only this queue")
    ls.add_argument("--limit", type=int, default=100)
    ls.add_argument("--offset", type=int, default=0)
    ls.set_defaults(run=_queue_ls)
    for verb, text in (("requeue", "move a task to pending, its retries reset"),
                       ("delete", "delete a task for good"),
                       ("archive", "archive a task so no worker runs it")):
        act = verbs.add_parser(verb, help=text)
        act.add_argument("id", help="the task id")
        act.set_defaults(run=_queue_act)
    for verb, text in (("pause", "stop workers claiming a queue's tasks"),
                       ("unpause", "let workers claim a queue's tasks again")):
        pause = verbs.add_parser(verb, help=text)
        pause.add_argument("name", metavar="QUEUE")
        pause.set_defaults(run=_queue_pause)

    worker = commands.add_parser("worker", help="run a queue Server: poolsim worker "
                                 "myapp.tasks:server")
    worker.add_argument("target", metavar="MODULE:ATTR", help="where the Server object is")
    worker.set_defaults(run=_worker)
    scheduler = commands.add_parser("scheduler", help="run a queue Scheduler: poolsim "
                                    "scheduler myapp.tasks:scheduler")
    scheduler.add_argument("target", metavar="MODULE:ATTR", help="where the Scheduler object is")
    scheduler.set_defaults(run=_scheduler)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``poolsim``."""
    parser = argparse.ArgumentParser(prog="poolsim", description=__doc__)
    parser.add_argument("--version", action="version", version=f"poolsim {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    simulate = commands.add_parser("simulate", help="replay a trace through one configuration")
    _add_trace_options(simulate)
    _add_config_options(simulate, single=True)
    simulate.set_defaults(run=_simulate)

    plan = commands.add_parser("plan", help="sweep configurations and write a capacity plan")
    _add_trace_options(plan)
    plan.add_argument("--p99", type=_arg(parse_seconds), required=True,
                      help="latency SLO: p99 of completed jobs, e.g. 120s")
    plan.add_argument("--max-reject", type=_arg(parse_fraction), required=True,
                      help="most jobs that may be refused or time out (rejected, dropped, "
                      "timeout), e.g. 0.1%%")
    plan.add_argument("--workers", type=_arg(_workers_range), help="worker counts to sweep, e.g. "
                      "1:32 (default: from the trace's load)")
    plan.add_argument("--queue-sizes", type=_arg(lambda t: [_queue_size(p) for p in t.split(",")]),
                      default=[0, 10, 100, 1000, None], help="e.g. 0,10,100,1000,inf")
    plan.add_argument("--backpressure", type=lambda t: t.split(","),
                      default=["reject", "drop_oldest"], help="policies to sweep, comma-separated")
    plan.add_argument("--grace", type=_arg(parse_seconds), default=30.0,
                      help="shutdown grace period before SIGKILL (Kubernetes: 30s)")
    plan.add_argument("--out", default="reports/plan", help="report folder")
    _add_config_options(plan, single=False)
    plan.set_defaults(run=_plan)

    traces = commands.add_parser("traces", help="list the shipped load traces")
    traces.set_defaults(run=_traces)

    demo = commands.add_parser("demo", help="drive a real pool with a bursty load")
    demo.add_argument("--workers", type=int, default=4)
    demo.add_argument("--queue-size", type=int, default=20)
    demo.add_argument("--backpressure", default="reject",
                      choices=[policy.value for policy in Backpressure])
    demo.add_argument("--seconds", type=float, default=4.0)
    demo.add_argument("--seed", type=int, default=1)
    demo.set_defaults(run=_demo)

    _add_queue_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for bad input, 3 for an unmet SLO)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return int(args.run(args))
    except PoolsimError as exc:
        print(f"poolsim: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a report folder that cannot be written, say
        print(f"poolsim: error: {exc.strerror or exc}: {exc.filename}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
