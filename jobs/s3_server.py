"""``fastgen s3-server``: run the embedded SeaweedFS S3 server on loopback in the foreground until Ctrl-C.

Prints the endpoint and the AWS variables to export so that every other ``fastgen`` command (and any S3 client)
uses it; ``--bucket`` creates buckets up front. SIGINT and SIGTERM stop the server and its whole process group.
"""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType

from pipelines.s3server import S3ServerError, SeaweedS3Server, check_bucket_name


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``s3-server``."""
    p = subparsers.add_parser(
        "s3-server",
        help="run a local S3-compatible server (SeaweedFS) until Ctrl-C",
        description="Run the embedded SeaweedFS S3 server on 127.0.0.1 in the foreground until Ctrl-C.",
    )
    p.add_argument("--dir", default=None, help="data directory, kept after exit (default: a temporary one, removed)")
    p.add_argument("--port", type=int, default=8333, help="S3 port on 127.0.0.1 (default: 8333)")
    p.add_argument("--bucket", action="append", default=[], metavar="NAME", help="create this bucket (repeatable)")
    p.set_defaults(func=run)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """Turn SIGTERM into the same clean stop as Ctrl-C."""
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    """Start the server, print how to use it, block until Ctrl-C/SIGTERM, stop it; exit code 0 on a clean stop."""
    for name in args.bucket:
        check_bucket_name(name)
    server = SeaweedS3Server(args.dir, port=args.port)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.start()
        uris = [server.create_bucket(name) for name in args.bucket]
        print(f"SeaweedFS S3 server running (pid {server.pid}), data in {server.data_dir}")
        print(f"endpoint: {server.endpoint_url}")
        for uri in uris:
            print(f"bucket: {uri}")
        print("Use it from another shell (any key/secret is accepted):")
        for key, value in server.env().items():
            print(f"  export {key}={value}")
        print("Press Ctrl-C to stop.", flush=True)
        code = server.wait()
        print(f"fastgen s3-server: weed exited with code {code}; last log lines:\n{server.log_tail()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopping the S3 server", flush=True)
        return 0
    except S3ServerError as exc:
        print(f"fastgen s3-server: error: {exc}", file=sys.stderr)
        return 1
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)
