"""``fastgen evaluate`` through ``jobs.cli.main``: config errors exit 2 with one line; a tiny run end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from jobs.cli import main
from tests.helpers.dummy_data import make_dummy_mvtec

REPO = Path(__file__).resolve().parents[2]


def _write_config(tmp_path: Path, root: Path) -> Path:
    cfg = {
        "dataset_root": str(root),
        "out": str(tmp_path / "unused"),
        "train_sources": [{"kind": "real_third"}],
        "steps": 3,
        "batch_size": 2,
        "image_size": 32,
        "in_channels": 3,
        "log_every": 1,
        "num_preview": 2,
    }
    path = tmp_path / "evaluate.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_example_configs_load() -> None:
    from pipelines.config import load_config
    from pipelines.evaluate import EvaluateConfig

    for path in sorted((REPO / "jobs" / "configs").glob("evaluate-*.yaml")):
        cfg = load_config(EvaluateConfig, path)
        assert cfg.train_sources and cfg.image_size % 32 == 0, path


def test_config_errors_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_dummy_mvtec(tmp_path / "ds", mode="RGB")
    path = _write_config(tmp_path, root)
    assert main(["evaluate", "--config", str(path), "--set", "arch=segformer"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["fastgen evaluate: error: evaluate.yaml.arch = 'segformer' is not one of: 'unet', 'fpn'"]
    assert main(["evaluate", "--config", str(path), "--set", f"dataset_root={tmp_path / 'missing'}"]) == 2
    assert "dataset_root not found" in capsys.readouterr().err


@pytest.mark.ray
def test_evaluate_runs_end_to_end(tmp_path: Path, ray_local: None, capsys: pytest.CaptureFixture[str]) -> None:
    torch.set_num_threads(1)
    root = make_dummy_mvtec(tmp_path / "ds", mode="RGB", defects={"scratch": 3, "hole": 3})
    out = tmp_path / "eval"
    assert main(["evaluate", "--config", str(_write_config(tmp_path, root)), "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["pairs"] == {"real_third": 2, "normal": 0}
    assert set(metrics["per_defect_type"]) == {"widget/hole", "widget/scratch"}
    assert "overall" in stdout and "defect widget/hole" in stdout and str(out / "metrics.json") in stdout
    assert (out / "predictions.png").is_file() and (out / "config.resolved.yaml").is_file()
