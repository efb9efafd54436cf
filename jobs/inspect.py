"""``fastgen inspect DATASET_ROOT``: print counts, split sizes, image modes/sizes and every problem of a dataset."""

from __future__ import annotations

import argparse

from pipelines.inspect import InspectConfig, inspect_dataset, write_report_json

EPILOG = """exit status:
  0  no problems (warnings such as unexpected files, or soft masks accepted by --binarize-threshold, are printed)
  1  problems found (unreadable or truncated files, missing/stray/empty/non-binary masks, size or mode problems)
  2  bad arguments (e.g. the folder does not exist)"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``fastgen inspect``."""
    p = subparsers.add_parser(
        "inspect",
        help="check a dataset folder: counts, the floor(n/3) split, problems",
        description="Decode every image and mask of a local dataset folder and report counts per category and "
        "defect, the floor(n/3) generator/test split sizes, image modes and size ranges, and every problem found.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("root", metavar="DATASET_ROOT", help="a category folder (train/, test/) or a folder of them")
    p.add_argument("--layout", choices=("mvtec", "btad"), default="mvtec", help="folder layout (default: mvtec)")
    p.add_argument("--category", action="append", dest="categories", metavar="NAME", help="only this category")
    p.add_argument(
        "--binarize-threshold",
        type=int,
        metavar="N",
        help="accept non-binary masks, to be binarized at value >= N (reported as warnings)",
    )
    p.add_argument("--json", metavar="OUT", help="also write the report as JSON to this file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Inspect, print the report, optionally write JSON; 0 when no error was found, else 1."""
    cfg = InspectConfig(
        root=args.root,
        layout=args.layout,
        categories=tuple(args.categories) if args.categories else None,
        binarize_threshold=args.binarize_threshold,
    )
    report = inspect_dataset(cfg)
    print(report.format())
    if args.json:
        print(f"report written to {write_report_json(report, args.json)}")
    return 0 if report.ok else 1
