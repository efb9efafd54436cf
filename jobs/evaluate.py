"""``fastgen evaluate --config YAML``: train the downstream segmenter on one training set and test it (FAST_SPEC §8)."""

from __future__ import annotations

import argparse
import json
import math

from pipelines.config import load_config
from pipelines.evaluate import EvaluateConfig, run_evaluation


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``fastgen evaluate``."""
    p = subparsers.add_parser(
        "evaluate",
        help="train the segmenter on a training set and test it on the real held-out test set",
        description="Train a U-Net/FPN (ResNet-18, no pretrained weights) with Ray Train on the configured training "
        "sources (synthesized dataset versions and/or the real training third) plus normal images with empty masks, "
        "test it on the last 2/3 of each defect type and all test/good images, and write OUT/metrics.json, "
        "OUT/predictions.png and OUT/config.resolved.yaml.",
    )
    p.add_argument(
        "--config", metavar="YAML", help="an EvaluateConfig YAML (e.g. jobs/configs/evaluate-real-third.yaml)"
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. steps=200")
    p.add_argument("--out", metavar="URI", help="output folder (local or s3://); overrides the config's out")
    p.set_defaults(func=run)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def format_summary(report: dict) -> str:
    """The table printed after a run: overall, then per category and per defect type (values in %)."""
    cols = ("miou", "anomaly_iou", "background_iou", "aacc", "macc")
    lines = [f"{'group':<40} " + " ".join(f"{c:>14}" for c in cols)]
    rows = [("overall", report["overall"])]
    rows += [(f"category {k}", v) for k, v in report["per_category"].items()]
    rows += [(f"defect {k}", v) for k, v in report["per_defect_type"].items()]
    rows += [("mean over defect types", report["mean_over_defect_types"])]
    for name, m in rows:
        lines.append(f"{name:<40} " + " ".join(f"{_fmt(m.get(c)):>14}" for c in cols))
    o = report["overall"]
    lines.append(
        f"pixel AUROC {_fmt(o['pixel_auroc'])}  pixel AP {_fmt(o['pixel_ap'])}  (threshold {report['threshold']})"
    )
    lines.append(f"train: {report['train']['pairs']}, {len(report['skipped'])} row(s) skipped (see metrics.json)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Load the config, run the evaluation (it checks the inputs, then connects to Ray), print the summary."""
    overrides = [*args.set, *([f"out={json.dumps(args.out)}"] if args.out is not None else [])]
    cfg = load_config(EvaluateConfig, args.config, overrides)
    report = run_evaluation(cfg)
    print(format_summary(report))
    print(f"metrics: {cfg.out.rstrip('/')}/metrics.json")
    return 0
