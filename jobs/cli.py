"""The ``fastgen`` entry point: one sub-module of ``jobs`` per subcommand, each exposing ``add_parser``.

A subcommand module defines ``add_parser(subparsers)`` that registers its parser and sets ``func`` to a callable
``(args) -> int`` (the process exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from pipelines import console

# Subcommand modules, in the order `fastgen --help` lists them.
SUBCOMMANDS = (
    "dataset",
    "demo",
    "evaluate",
    "inspect",
    "manifest",
    "masks",
    "refresh",
    "s3_server",
    "synthesize",
    "train",
)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand registered."""
    parser = argparse.ArgumentParser(prog="fastgen", description="Synthesize industrial anomaly image/mask pairs.")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="debug logging, with Ray's logs and workers' output live"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"jobs.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``fastgen`` with ``argv``; returns the exit code.

    Config errors, missing files and storage errors exit 2 with one clear line (``-v`` shows the traceback).
    """
    args = build_parser().parse_args(argv)
    console.configure(args.command, verbose=args.verbose)  # the log file's path is printed when Ray starts
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as exc:  # config errors, missing files, unreachable storage (StorageError)
        if args.verbose:
            raise
        print(f"fastgen {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
