"""The ``sampler`` part of :mod:`benchmarks.speed`: :mod:`benchmarks.sampler_speed` with this run's options."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks import sampler_speed


def run_sampler(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """:func:`benchmarks.sampler_speed.main` with this run's options; its JSON report."""
    out = work / "sampler_speed.json"
    argv = ["--preset", args.sampler_preset, "--batch", str(args.batch), "--repeats", str(args.repeats)]
    argv += ["--samplers", *args.samplers, "--threads", str(args.threads), "--seed", str(args.seed)]
    if args.sampler_variants:
        argv += ["--variants", *args.sampler_variants]
    if args.sampler_frames:
        argv.append("--frames")
    sampler_speed.main([*argv, "--out", str(out)])
    return json.loads(out.read_text())
