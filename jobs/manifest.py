"""``fastgen manifest --config YAML``: write the immutable Parquet manifest of (normal image, mask, seed) pairs."""

from __future__ import annotations

import argparse
import json

from pipelines.config import load_config
from pipelines.manifest import ManifestResult, write_manifest
from pipelines.manifest_config import ManifestConfig


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``fastgen manifest``."""
    p = subparsers.add_parser(
        "manifest",
        help="pair normal images with masks into an immutable Parquet manifest",
        description="Build OUT/manifest.parquet (one row per pair to synthesize: normal image, mask, prompt, seed) "
        "and OUT/manifest.json from a dataset root, a mask source (real training-third masks or mask-stage shards) "
        "and counts per defect. Rerunning with the same config is a no-op; a different manifest needs a new OUT.",
    )
    p.add_argument("--config", metavar="YAML", help="a ManifestConfig YAML file (e.g. jobs/configs/manifest-real.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. counts.default=50")
    p.add_argument("--out", metavar="URI", help="manifest directory (local or s3://); overrides the config's out")
    p.set_defaults(func=run)


def format_result(result: ManifestResult) -> str:
    """The summary printed after a run: status, rows and per-key counts, skipped masks."""
    s = result.summary
    verb = "written" if result.status == "written" else "unchanged (this manifest is already there)"
    lines = [f"manifest {result.uri}: {verb}", f"rows: {result.rows}  job_seed: {s['job_seed']}"]
    lines.append(f"masks: {s['mask_source']['kind']}" + (" (embedded PNG)" if s["mask_source"]["embed_png"] else ""))
    lines.append(f"{'defect key':<40} {'rows':>7} {'masks':>6} {'skipped':>8} {'normals':>8}")
    for key, k in s["keys"].items():
        lines.append(f"{key:<40} {k['rows']:>7} {k['masks_used']:>6} {k['masks_skipped']:>8} {k['normal_images']:>8}")
    lines.append(f"masks skipped: {s['masks_skipped']}" + (" (see manifest.json)" if s["masks_skipped"] else ""))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Load the config, write the manifest, print the summary."""
    # --out wins over the file and --set; quoted so that YAML keeps it a string.
    overrides = [*args.set, *([f"out={json.dumps(args.out)}"] if args.out is not None else [])]
    cfg = load_config(ManifestConfig, args.config, overrides)
    print(format_result(write_manifest(cfg)))
    return 0
