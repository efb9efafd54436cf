"""The ``output`` part of :mod:`benchmarks.speed`: :mod:`benchmarks.output_path` with this run's options."""

from __future__ import annotations

import argparse
from typing import Any

from benchmarks import output_path
from benchmarks.speed_common import say


def run_output(args: argparse.Namespace) -> dict[str, Any]:
    """:func:`benchmarks.output_path.run_output_bench` with this run's options."""
    out_args = output_path.build_parser().parse_args(
        ["--pairs", str(args.pairs), "--repeats", str(args.repeats), "--seed", str(args.seed)]
        + ["--targets", *args.targets]
        + (["--local-dir", args.local_dir] if args.local_dir else [])
    )
    return output_path.run_output_bench(out_args, progress=say)


def md_output(o: dict[str, Any]) -> str:
    """The output part as markdown."""
    text = output_path.markdown_table(o)
    for fmt, fractions in o.get("encode_fraction_of_aias10", {}).items():
        for label, frac in fractions.items():
            text += f"\nPNG encode of a {fmt} pair = {100 * frac:.2f} % of AIAS-10 per image ({label})."
    return text
