"""``fastgen train --config CONFIG``: train VAE → base LDM → FAST with Ray Train, checkpoint, publish the model."""

from __future__ import annotations

import argparse
import sys

from pipelines.config import load_config
from pipelines.ray_utils import ensure_ray
from pipelines.train import TrainConfig, TrainingFailed, run_training

EPILOG = """A rerun with the same run_name and storage_path resumes from the latest checkpoint and skips finished
stages. exit status: 0 trained (or already finished), 1 training failed (e.g. a NaN loss; checkpoints are kept),
2 bad config, dataset or checkpoint."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``fastgen train``."""
    p = subparsers.add_parser(
        "train",
        help="train the VAE, the base LDM and the FAST modules with Ray Train; publish the model",
        description="Train every configured stage with a Ray Train TorchTrainer, checkpointing to storage_path "
        "(local or s3://), and publish the final model to publish_uri (default <storage_path>/<run_name>/model).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True, metavar="YAML", help="a TrainConfig YAML file (see jobs/configs/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. stage.fast.steps=50")
    p.add_argument("--resume", action="store_true", help="continue an existing run (error if there is none)")
    p.add_argument("--num-cpus", type=int, metavar="N", help="logical CPUs of a local Ray (ignored with RAY_ADDRESS)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the config, connect to Ray, train, print the summary."""
    cfg = load_config(TrainConfig, args.config, args.set)
    print(ensure_ray(args.num_cpus))
    try:
        summary = run_training(cfg, resume=args.resume)
    except TrainingFailed as exc:
        print(f"fastgen train: {exc}", file=sys.stderr)
        return 1
    print(summary.format())
    return 0
