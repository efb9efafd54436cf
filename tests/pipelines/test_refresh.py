"""``fastgen refresh``: masks → manifest → synthesis → validation → LATEST, on local storage and on S3."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from jobs.cli import main
from pipelines import refresh, storage
from pipelines.config import load_config
from pipelines.refresh import REFRESH_DIR, VALIDATION_NAME, RefreshConfig, run_refresh, validate_version, work_uri
from pipelines.versions import ValidationFailedError, list_versions, read_latest, resolve
from tests.helpers.dummy_data import make_dummy_mvtec
from tests.helpers.synthetic_versions import make_synthetic_version
from tests.helpers.tiny_models import publish_tiny_model

CONFIG = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "refresh-tiny.yaml"
KEYS = ("good", "tiny/crack", "tiny/scratch")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A tiny RGB dataset (two defect types) and a tiny published model that knows its keys."""
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("refresh")
    root = make_dummy_mvtec(tmp / "data", categories=("tiny",), defects={"crack": 3, "scratch": 3}, mode="RGB")
    return {"root": str(root), "model": publish_tiny_model(str(tmp / "model"), keys=KEYS)}


def _cfg(inputs: dict[str, str], prefix: str, *overrides: str) -> RefreshConfig:
    return load_config(
        RefreshConfig,
        CONFIG,
        [
            f"dataset.root={json.dumps(inputs['root'])}",
            f"model_uri={json.dumps(inputs['model'])}",
            f"prefix={json.dumps(prefix)}",
            *overrides,
        ],
    )


def test_validation_bounds() -> None:
    cfg = load_config(RefreshConfig, CONFIG, ['dataset.root="x"']).validation
    assert validate_version(cfg, 10, 9, 1, {"output_blank": 1})["passed"]
    failed = validate_version(cfg, 10, 4, 6, {"mask_empty": 6})
    assert not failed["passed"] and len(failed["failures"]) == 2 and failed["rejection_rate"] == 0.6


def test_stage_sections_are_checked_before_any_work(inputs: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="RefreshConfig.synthesize: remove 'out'"):
        _cfg(inputs, str(tmp_path), 'synthesize.out="elsewhere"')
    with pytest.raises(ValueError, match=r"RefreshConfig.masks: unknown key\(s\) 'colour'"):
        _cfg(inputs, str(tmp_path), "masks.colour=1")
    with pytest.raises(ValueError, match="not a valid path segment"):
        _cfg(inputs, str(tmp_path), 'name="../up"')
    assert not any(tmp_path.iterdir())


def test_failed_refreshes_never_displace_published_versions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """run_refresh records every outcome and applies retention after passes and failures alike: failed versions never
    count toward retention.keep, the newest retention.keep_failed of them stay, LATEST stays on a validated one.

    The stages are stand-ins (no Ray, no model): synthesis writes a synthetic version and reports the counts below.
    """
    outcome = {"written": 4, "rejected": 0}

    def fake_synthesis(cfg: refresh.SynthesizeConfig) -> SimpleNamespace:
        make_synthetic_version(cfg.out, n_per_defect=4, size=(8, 8))
        reasons = {"mask_empty": outcome["rejected"]} if outcome["rejected"] else {}
        return SimpleNamespace(**outcome, rejected_by_reason=reasons)

    monkeypatch.setattr(refresh, "write_manifest", lambda cfg: SimpleNamespace(rows=4))
    monkeypatch.setattr(refresh, "run_synthesis", fake_synthesis)
    prefix = str(tmp_path / "datasets")
    base = ['dataset.root="x"', 'model_uri="m"', f"prefix={json.dumps(prefix)}", "masks=null"]

    def run(version: str, passed: bool) -> refresh.RefreshSummary:
        outcome.update({"written": 4, "rejected": 0} if passed else {"written": 1, "rejected": 3})
        cfg = load_config(RefreshConfig, CONFIG, [*base, f"version={version}", "retention.keep=1"])
        cfg.retention.keep_failed = 1
        return run_refresh(cfg)

    assert run("r0", True).published
    with pytest.raises(ValidationFailedError, match="LATEST is unchanged.*retention removed: nothing"):
        run("r1", False)
    with pytest.raises(ValidationFailedError, match="retention removed: r1"):  # only the older failed one goes
        run("r2", False)
    assert read_latest(prefix, "tiny").version == "r0"
    assert [(v.version, v.state) for v in list_versions(prefix, "tiny")] == [("r0", "validated"), ("r2", "failed")]
    summary = run("r3", True)
    assert summary.published and summary.removed == ["r0"]
    assert [(v.version, v.state) for v in list_versions(prefix, "tiny")] == [("r2", "failed"), ("r3", "validated")]
    report = json.loads(storage.read_text(storage.join(resolve(prefix, "tiny"), REFRESH_DIR, VALIDATION_NAME)))
    assert report["passed"] is True and report["version"] == "r3"


@pytest.mark.ray
def test_refresh_publishes_resumes_and_keeps_latest_on_failure(
    inputs: dict[str, str], tmp_path: Path, ray_local: None
) -> None:
    prefix = str(tmp_path / "datasets")
    cfg = _cfg(inputs, prefix)
    first = run_refresh(cfg)
    assert first.published and not first.resumed and first.validation["rows"] == 8
    uri = resolve(prefix, "tiny")
    assert uri == first.uri and storage.exists(storage.join(uri, "_SUCCESS"))
    assert storage.exists(storage.join(work_uri(uri, "masks"), "_SUCCESS"))  # the mask stage fed the manifest
    manifest = json.loads(storage.read_text(storage.join(work_uri(uri, "manifest"), "manifest.json")))
    assert manifest["mask_source"]["kind"] == "shards"

    # An interrupted refresh (no _SUCCESS yet) of the same spec is resumed, not started again.
    storage.remove(storage.join(uri, "_SUCCESS"))
    again = run_refresh(cfg)
    assert again.resumed and again.version == first.version and again.published

    # A version that fails validation is kept for inspection, but LATEST does not move.
    strict = _cfg(
        inputs, prefix, "job_seed=1", "validation.min_written_fraction=1.0", "synthesize.qc.min_mask_area_px=100000"
    )
    with pytest.raises(ValidationFailedError, match="LATEST is unchanged"):
        run_refresh(strict)
    assert read_latest(prefix, "tiny").version == first.version
    failed = [v for v in list_versions(prefix, "tiny") if v.version != first.version]
    assert len(failed) == 1
    report = json.loads(storage.read_text(storage.join(failed[0].uri, REFRESH_DIR, VALIDATION_NAME)))
    assert report["passed"] is False and report["rejected_by_reason"]


@pytest.mark.ray
@pytest.mark.s3
def test_refresh_cli_to_s3_and_dataset_resolve(
    inputs: dict[str, str], s3_bucket, ray_local: None, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    endpoint = s3_bucket.storage.endpoint_url
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_bucket.storage.key or "any")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_bucket.storage.secret or "any")
    prefix = f"{s3_bucket.uri}/datasets"
    args = [
        "refresh",
        "--config",
        str(CONFIG),
        "--set",
        f"dataset.root={json.dumps(inputs['root'])}",
        "--set",
        f"model_uri={json.dumps(inputs['model'])}",
        "--set",
        f"prefix={json.dumps(prefix)}",
    ]
    assert main(args) == 0
    assert "published as LATEST" in capsys.readouterr().out
    assert main(["dataset", "resolve", prefix, "tiny"]) == 0
    uri = capsys.readouterr().out.strip()
    assert uri.startswith(f"{prefix}/tiny/versions/") and storage.exists(f"{uri}/_SUCCESS", s3_bucket.storage)
    assert main(["dataset", "list", prefix, "tiny", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 1 and rows[0]["latest"] and rows[0]["complete"]
