"""Kubeflow Pipelines (v2) definition of a full refresh: train → masks → manifest → synthesize → evaluate → publish.

Compile: ``python infra/kubeflow/pipeline.py`` (writes ``pipeline.yaml`` next to this file; a test checks that the
committed file equals a fresh compile). Upload ``pipeline.yaml`` in the Kubeflow UI, or run it with
``kfp.Client().create_run_from_pipeline_package`` / ``recurring_run.py``.

Every Ray step is one lightweight component, :func:`rayjob_step`, running in the fastgen image: it builds a RayJob
from one of the ``infra/kuberay/rayjob-*.yaml`` templates (embedded here at compile time), sets the entrypoint
``fastgen <command> --config /configs/<config> --set ...`` and waits for the RayJob (see ``rayjob_launcher.py``).
The pod's service account needs the rights in ``rbac.yaml``. Overrides may use these placeholders, filled in from
the pipeline parameters and the version id the first step picks::

    ${model_uri}     the published model (train writes it, the later steps read it)
    ${version}       the new dataset version id (UTC time, pipelines.versions.new_version_id)
    ${version_uri}   <datasets_prefix>/<dataset_name>/versions/<version>        (the dataset version)
    ${work_uri}      <datasets_prefix>/<dataset_name>/work/<version>            (masks/, manifest/, evaluation/)

The last step, :func:`publish_step`, checks the evaluation's ``metrics.json`` against ``min_metrics`` and only
then moves ``LATEST`` (``pipelines.versions.publish_latest``) and applies the retention (``keep`` versions).
"""

import sys
from pathlib import Path
from typing import Any

import yaml
from kfp import compiler, dsl

HERE = Path(__file__).resolve().parent
KUBERAY = HERE.parent / "kuberay"
sys.path.insert(0, str(HERE))
from rayjob_launcher import (  # noqa: E402  (a sibling file, shipped into the component as source)
    expand_overrides,
    rayjob_from_template,
    rayjob_outcome,
    run_rayjob,
    wait_for_rayjob,
)

IMAGE = "fastgen:0.1.0-gpu"  # infra/docker/Dockerfile (GPU variant); kfp and the kubernetes client are in it
PIPELINE_YAML = HERE / "pipeline.yaml"


def template(name: str) -> dict[str, Any]:
    """The RayJob manifest ``infra/kuberay/rayjob-<name>.yaml`` as a mapping."""
    return yaml.safe_load((KUBERAY / f"rayjob-{name}.yaml").read_text())


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def new_version() -> str:
    """A new dataset version id: the current UTC time, ``YYYYMMDDTHHMMSSZ``."""
    from pipelines.versions import new_version_id

    return new_version_id()


@dsl.component(
    base_image=IMAGE,
    install_kfp_package=False,
    additional_funcs=[rayjob_outcome, wait_for_rayjob, expand_overrides, rayjob_from_template, run_rayjob],
)
def rayjob_step(
    manifest: dict,
    command: str,
    config: str,
    overrides: list,
    model_uri: str,
    datasets_prefix: str,
    dataset_name: str,
    version: str,
    image: str,
    namespace: str,
    timeout_s: int,
    poll_s: int,
) -> str:
    """Run ``fastgen <command>`` as a RayJob built from ``manifest`` and wait for it; returns its final jobStatus."""
    base = f"{datasets_prefix.rstrip('/')}/{dataset_name}"
    values = {
        "model_uri": model_uri,
        "version": version,
        "version_uri": f"{base}/versions/{version}",
        "work_uri": f"{base}/work/{version}",
    }
    name = f"fastgen-{command}-{version}".lower()
    body = rayjob_from_template(
        manifest,
        name=name,
        command=command,
        config=config,
        overrides=expand_overrides([str(o) for o in overrides], values),
        image=image,
    )
    status = run_rayjob(body, namespace=namespace, timeout_s=timeout_s, poll_s=poll_s)
    return status.get("jobStatus", "")


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def publish_step(datasets_prefix: str, dataset_name: str, version: str, min_metrics: dict, keep: int) -> str:
    """Check ``<work>/evaluation/metrics.json`` against ``min_metrics``; if all pass, move LATEST; apply retention.

    ``min_metrics`` maps a dotted path into metrics.json (e.g. ``"overall.pixel_auroc"``) to its lowest accepted
    value. A failed check fails the step and leaves LATEST untouched.
    """
    import json

    from pipelines import storage as st
    from pipelines.versions import apply_retention, publish_latest

    metrics_uri = f"{datasets_prefix.rstrip('/')}/{dataset_name}/work/{version}/evaluation/metrics.json"
    metrics = json.loads(st.read_text(metrics_uri))
    checks = {}
    for path, minimum in sorted(min_metrics.items()):
        value: Any = metrics
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        ok = isinstance(value, (int, float)) and value >= float(minimum)
        checks[path] = {"value": value, "min": minimum, "passed": ok}
    validation = {"passed": all(c["passed"] for c in checks.values()), "metrics_uri": metrics_uri, "checks": checks}
    pointer = publish_latest(datasets_prefix, dataset_name, version, validation=validation)
    deleted = apply_retention(datasets_prefix, dataset_name, keep)
    print(f"LATEST → {pointer.uri}; retention deleted {deleted or 'nothing'}")
    return pointer.uri


@dsl.pipeline(name="fastgen-refresh", description="Train, make masks, synthesize, evaluate, publish a dataset.")
def fastgen_refresh(
    datasets_prefix: str = "s3://fastgen/datasets",
    dataset_name: str = "magnetic_tile",
    model_uri: str = "s3://fastgen/models/magnetic_tile",
    train_config: str = "train-gpu-full.yaml",
    train_overrides: list = ["publish_uri=${model_uri}"],  # noqa: B006  (KFP reads defaults from the signature)
    masks_config: str = "masks-full.yaml",
    masks_overrides: list = ["out=${work_uri}/masks"],  # noqa: B006
    manifest_config: str = "manifest-shards.yaml",
    manifest_overrides: list = [  # noqa: B006
        "out=${work_uri}/manifest",
        "model_uri=${model_uri}",
        "masks.source=shards",
        "masks.shards_uri=${work_uri}/masks",
    ],
    synthesize_config: str = "synthesize-gpu.yaml",
    synthesize_overrides: list = ["manifest=${work_uri}/manifest", "out=${version_uri}", "model_uri=${model_uri}"],  # noqa: B006
    evaluate_config: str = "evaluate-synthetic.yaml",
    evaluate_overrides: list = [  # noqa: B006
        "out=${work_uri}/evaluation",
        "train_sources=[{kind: synthetic, uri: '${version_uri}'}]",
    ],
    min_metrics: dict = {},  # noqa: B006
    keep: int = 5,
    image: str = IMAGE,
    namespace: str = "fastgen",
    step_timeout_s: int = 86400,
    poll_s: int = 30,
) -> None:
    """The refresh chain; each Ray step waits for its RayJob, so a failure stops the chain before publish."""
    version = new_version().set_display_name("version id")
    common = dict(
        model_uri=model_uri,
        datasets_prefix=datasets_prefix,
        dataset_name=dataset_name,
        version=version.output,
        image=image,
        namespace=namespace,
        timeout_s=step_timeout_s,
        poll_s=poll_s,
    )
    previous = version
    steps = [
        ("train", "train", train_config, train_overrides),
        ("masks", "masks", masks_config, masks_overrides),
        ("manifest", "manifest", manifest_config, manifest_overrides),
        ("synthesize", "synthesize", synthesize_config, synthesize_overrides),
        ("evaluate", "evaluate", evaluate_config, evaluate_overrides),
    ]
    for command, manifest_name, config, overrides in steps:
        task = rayjob_step(
            manifest=template(manifest_name), command=command, config=config, overrides=overrides, **common
        )
        task.set_display_name(command).after(previous)
        task.set_caching_options(False)  # a rerun must really run (the RayJob name carries the version)
        previous = task
    publish = publish_step(
        datasets_prefix=datasets_prefix,
        dataset_name=dataset_name,
        version=version.output,
        min_metrics=min_metrics,
        keep=keep,
    )
    publish.set_display_name("publish").after(previous).set_caching_options(False)
    version.set_caching_options(False)


def compile_pipeline(path: Path = PIPELINE_YAML) -> Path:
    """Compile :func:`fastgen_refresh` to ``path`` (KFP IR YAML)."""
    compiler.Compiler().compile(pipeline_func=fastgen_refresh, package_path=str(path))
    return path


if __name__ == "__main__":
    print(compile_pipeline(Path(sys.argv[1]) if len(sys.argv) > 1 else PIPELINE_YAML))
