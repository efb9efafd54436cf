"""Schedule the compiled refresh pipeline as a Kubeflow recurring run (KFP v2 client).

Usage::

    python infra/kubeflow/recurring_run.py --host https://kubeflow.example.com/pipeline \\
        --experiment fastgen --cron "0 0 3 * * 1" --param dataset_name=magnetic_tile --param keep=5

KFP cron expressions have six fields (seconds first). ``--max-concurrency 1`` (the default) keeps refreshes from
overlapping; ``--no-catchup`` (the default) skips runs missed while the schedule was paused. Parameters are
``key=value`` with the value parsed as JSON when it parses (``keep=5``, ``min_metrics={"overall.pixel_auroc": 0.9}``),
else taken as a string.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

PIPELINE_YAML = Path(__file__).resolve().parent / "pipeline.yaml"


def parse_params(items: list[str]) -> dict[str, Any]:
    """``["k=v", ...]`` → ``{k: v}``; values parsed as JSON where possible."""
    params: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--param {item!r} is not of the form key=value")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Create a KFP recurring run of the fastgen refresh pipeline.")
    parser.add_argument("--host", required=True, help="KFP API endpoint")
    parser.add_argument("--experiment", default="fastgen")
    parser.add_argument("--job-name", default="fastgen-refresh-weekly")
    parser.add_argument("--cron", default="0 0 3 * * 1", help="six-field cron (default: Mondays 03:00)")
    parser.add_argument("--max-concurrency", type=int, default=1)
    parser.add_argument("--catchup", action="store_true", help="run schedules missed while paused")
    parser.add_argument("--service-account", default="fastgen-pipeline", help="see infra/kubeflow/rbac.yaml")
    parser.add_argument("--param", action="append", default=[], help="pipeline parameter key=value (repeatable)")
    parser.add_argument("--package", type=Path, default=PIPELINE_YAML)
    args = parser.parse_args(argv)

    import kfp

    client = kfp.Client(host=args.host)
    experiment = client.create_experiment(name=args.experiment)
    run = client.create_recurring_run(
        experiment_id=experiment.experiment_id,
        job_name=args.job_name,
        cron_expression=args.cron,
        max_concurrency=args.max_concurrency,
        no_catchup=not args.catchup,
        pipeline_package_path=str(args.package),
        params=parse_params(args.param),
        service_account=args.service_account,
        enabled=True,
    )
    print(f"recurring run {run.recurring_run_id} ({args.job_name}): {args.cron}")


if __name__ == "__main__":
    main()
