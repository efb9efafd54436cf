"""``fastgen masks --config YAML``: make N masks per defect type from real training masks, filter, write shards."""

from __future__ import annotations

import argparse
import json

from pipelines.config import load_config
from pipelines.masks import MasksConfig, run_masks
from pipelines.ray_utils import ensure_ray


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``fastgen masks``."""
    p = subparsers.add_parser(
        "masks",
        help="generate and filter anomaly masks per defect type into mask shards (Ray Data)",
        description="Read the generator-training third of the real masks under dataset.root, make counts.default "
        "masks per defect type from the configured source mix (augment, diffusion, real), filter them and write "
        "OUT/data/part-*.parquet, masks/, rejected/ (with reasons), stats.json, contact_sheet.png and _SUCCESS. "
        "Rerunning the same command resumes an interrupted run. Connects to RAY_ADDRESS when set, else starts a "
        "local Ray.",
    )
    p.add_argument("--config", metavar="YAML", help="a MasksConfig YAML file (e.g. jobs/configs/masks-cpu.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. counts.default=50")
    p.add_argument("--out", metavar="URI", help="output URI; overrides the config's out")
    p.add_argument("--num-cpus", type=int, metavar="N", help="logical CPUs of a local Ray (ignored with RAY_ADDRESS)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the config (before Ray starts: config errors cost nothing), connect to Ray, make masks, summarise."""
    overrides = list(args.set)
    if args.out is not None:
        overrides.append(f"out={json.dumps(args.out)}")
    cfg = load_config(MasksConfig, args.config, overrides)
    print(ensure_ray(args.num_cpus))
    print(run_masks(cfg).format())
    return 0
