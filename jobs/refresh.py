"""``fastgen refresh --config YAML``: make, validate and publish a new version of a dataset (LATEST moves on pass)."""

from __future__ import annotations

import argparse
import sys

from pipelines.config import load_config
from pipelines.ray_utils import ensure_ray
from pipelines.refresh import RefreshConfig, run_refresh
from pipelines.versions import ValidationFailedError

EPILOG = """exit status:
  0  the new version passed validation and LATEST points to it
  1  the version was written but failed validation; LATEST is unchanged
  2  bad config, missing files or unreachable storage (nothing was published)"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``fastgen refresh``."""
    p = subparsers.add_parser(
        "refresh",
        help="one dataset spec -> masks -> manifest -> synthesize -> validate -> publish LATEST",
        description="Write a new version <prefix>/<name>/versions/<version>/ of a dataset from its spec, validate its "
        "counts and rejections, then atomically point <prefix>/<name>/LATEST at it and apply retention. Rerunning "
        "the same spec after an interruption resumes the unfinished version. Connects to RAY_ADDRESS when set.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="YAML", required=True, help="a RefreshConfig YAML (jobs/configs/refresh-*.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. job_seed=3")
    p.add_argument("--num-cpus", type=int, metavar="N", help="logical CPUs of a local Ray (ignored with RAY_ADDRESS)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the spec (every stage section is checked before Ray starts), connect to Ray, refresh, summarise."""
    cfg = load_config(RefreshConfig, args.config, args.set)
    print(ensure_ray(args.num_cpus))
    try:
        summary = run_refresh(cfg)
    except ValidationFailedError as exc:
        print(f"fastgen refresh: {exc}", file=sys.stderr)
        return 1
    print(summary.format())
    return 0
