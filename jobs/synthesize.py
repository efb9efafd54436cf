"""``fastgen synthesize --config YAML``: run the Ray Data synthesis pipeline over a manifest into a dataset version."""

from __future__ import annotations

import argparse
import json

from pipelines.config import load_config
from pipelines.ray_utils import ensure_ray
from pipelines.synthesize import SynthesizeConfig, run_synthesis


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``fastgen synthesize``."""
    p = subparsers.add_parser(
        "synthesize",
        help="synthesize the pairs of a manifest into a sharded dataset version (Ray Data)",
        description="Read MANIFEST/manifest.parquet, synthesize each row with the FAST model on an actor pool and "
        "write OUT/data/part-*.parquet, images/, masks/, rejected/, stats.json, preview.png (contact sheet), "
        "README.md (dataset card), report.html and _SUCCESS. Rerunning "
        "the same command resumes an interrupted run (committed shards are skipped) and leaves a finished one as it "
        "is. Connects to RAY_ADDRESS when set, else starts a local Ray.",
    )
    p.add_argument(
        "--config", metavar="YAML", help="a SynthesizeConfig YAML file (e.g. jobs/configs/synthesize-cpu.yaml)"
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. sampler.nfe=12")
    p.add_argument("--manifest", metavar="URI", help="manifest directory; overrides the config's manifest")
    p.add_argument("--out", metavar="URI", help="output dataset URI; overrides the config's out")
    p.add_argument("--num-cpus", type=int, metavar="N", help="logical CPUs of a local Ray (ignored with RAY_ADDRESS)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the config (before Ray starts: config errors cost nothing), connect to Ray, synthesize, summarise."""
    overrides = list(args.set)
    for key in ("manifest", "out"):
        if getattr(args, key) is not None:
            overrides.append(f"{key}={json.dumps(getattr(args, key))}")  # quoted: YAML keeps it a string
    cfg = load_config(SynthesizeConfig, args.config, overrides)
    print(ensure_ray(args.num_cpus))
    print(run_synthesis(cfg).format())
    return 0
