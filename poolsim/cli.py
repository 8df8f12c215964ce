"""The ``poolsim`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from poolsim import __version__
from poolsim.config import Backpressure, PoolConfig
from poolsim.errors import PoolsimError

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    from poolsim.demo import run_demo

    config = PoolConfig(workers=args.workers, queue_size=args.queue_size,
                        backpressure=args.backpressure)
    print(f"poolsim demo: {args.seconds:g} s of bursty load (400 jobs/s bursts, 40 jobs/s "
          f"lulls, 20 ms jobs) through {config}\n")
    result = run_demo(config, seconds=args.seconds, seed=args.seed)
    print(result.summary)
    print(f"\nshutdown ({result.report.policy}): {len(result.report.completed)} in-flight jobs "
          f"completed, {len(result.report.still_running)} left running, "
          f"{result.report.elapsed_s:.3f} s")
    print("\nPrometheus metrics (/metrics):")
    print(result.metrics)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``poolsim``."""
    parser = argparse.ArgumentParser(prog="poolsim", description=__doc__)
    parser.add_argument("--version", action="version", version=f"poolsim {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="drive a real pool with a bursty load")
    demo.add_argument("--workers", type=int, default=4)
    demo.add_argument("--queue-size", type=int, default=20)
    demo.add_argument("--backpressure", default="reject",
                      choices=[policy.value for policy in Backpressure])
    demo.add_argument("--seconds", type=float, default=4.0)
    demo.add_argument("--seed", type=int, default=1)
    demo.set_defaults(run=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except PoolsimError as exc:
        print(f"poolsim: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
