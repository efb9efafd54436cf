"""``fastgen dataset resolve|list``: the published (LATEST) version of a dataset, and all its versions."""

from __future__ import annotations

import argparse
import json

from pipelines.storage import StorageConfig
from pipelines.versions import list_versions, read_latest, resolve


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``fastgen dataset``."""
    p = subparsers.add_parser(
        "dataset",
        help="resolve a dataset's LATEST version, or list its versions",
        description="Read <prefix>/<name>/LATEST and print the URI of the published version (resolve), or list "
        "every version with its state (list). S3 endpoint and keys come from AWS_ENDPOINT_URL / AWS_* variables.",
    )
    p.add_argument("action", choices=("resolve", "list"))
    p.add_argument("prefix", metavar="PREFIX", help="datasets prefix (local folder or s3://bucket/path)")
    p.add_argument("name", metavar="NAME", help="dataset name")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the resolved URI (exit 2 when nothing is published) or the version list."""
    storage = StorageConfig()
    if args.action == "resolve":
        uri = resolve(args.prefix, args.name, storage)
        pointer = read_latest(args.prefix, args.name, storage)
        print(json.dumps({"uri": uri, "version": pointer.version if pointer else None}) if args.json else uri)
        return 0
    latest = read_latest(args.prefix, args.name, storage)
    rows = [
        {
            "version": v.version,
            "complete": v.complete,
            "created": v.created.isoformat() if v.created else None,
            "latest": latest is not None and v.version == latest.version,
        }
        for v in list_versions(args.prefix, args.name, storage)
    ]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for r in rows:
        state = "complete" if r["complete"] else "incomplete"
        print(f"{r['version']:<40} {state:<10} {r['created'] or '-':<27} {'LATEST' if r['latest'] else ''}")
    return 0
