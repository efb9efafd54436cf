"""``fastgen dataset resolve|list|export``: a dataset's published (LATEST) version, all its versions, and exports of
a version to the MVTec-AD or a flat folder layout (:mod:`pipelines.export`)."""

from __future__ import annotations

import argparse
import json

from pipelines.export import ExportConfig, export_version
from pipelines.storage import StorageConfig
from pipelines.versions import list_versions, read_latest, resolve

EXPORT_EPILOG = """layouts:
  mvtec   <out>/<category>/test/<defect>/<sample_id>.png, <out>/<category>/ground_truth/<defect>/<sample_id>_mask.png,
          <out>/<category>/train/good/ (the rows' source normal images where readable; see --no-normals)
  folder  <out>/images/<sample_id>.png, <out>/masks/<sample_id>.png
--out must be new or empty, or hold an export of the same version, layout and --no-normals choice (then identical
files are kept and the rest rewritten). export.json is written last: its presence means the export is complete.

exit status: 0 exported; 2 an incomplete version (no _SUCCESS), a non-empty --out of something else, a bad row"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``fastgen dataset`` and its actions."""
    p = subparsers.add_parser(
        "dataset",
        help="resolve a dataset's LATEST version, list its versions, export a version to folders",
        description="Read <prefix>/<name>/LATEST and print the URI of the published version (resolve), list "
        "every version with its state (list), or export a version to an MVTec-AD or flat folder layout (export). "
        "S3 endpoint and keys come from AWS_ENDPOINT_URL / AWS_* variables.",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, text in (("resolve", "print the URI of the published version"), ("list", "list every version")):
        a = actions.add_parser(action, help=text, description=f"{text[0].upper()}{text[1:]} of a dataset.")
        a.add_argument("prefix", metavar="PREFIX", help="datasets prefix (local folder or s3://bucket/path)")
        a.add_argument("name", metavar="NAME", help="dataset name")
        a.add_argument("--json", action="store_true", help="print JSON instead of text")
        a.set_defaults(func=run)
    e = actions.add_parser(
        "export",
        help="export a complete version to an MVTec-AD or flat folder layout",
        description="Copy the PNG bytes of a complete dataset version (streamed part file by part file) into a "
        "local folder that anomaly-detection tools read.",
        epilog=EXPORT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument("uri", metavar="URI", help="a version (local folder or s3://...), or a dataset <prefix>/<name>")
    e.add_argument("name", metavar="NAME", nargs="?", help="dataset name: URI is then the prefix, resolved via LATEST")
    e.add_argument("--format", choices=("mvtec", "folder"), required=True, help="output layout")
    e.add_argument("--out", metavar="DIR", required=True, help="local output folder")
    e.add_argument("--no-normals", action="store_true", help="mvtec: leave train/good empty")
    e.set_defaults(func=run_export)


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


def run_export(args: argparse.Namespace) -> int:
    """Export the version and print the summary."""
    cfg = ExportConfig(source=args.uri, name=args.name, format=args.format, out=args.out, normals=not args.no_normals)
    print(export_version(cfg).format())
    return 0
