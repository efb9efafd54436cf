"""``fastgen masks``: config errors exit 2 before Ray starts; the example configs load; a tiny run prints a summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.cli import main
from pipelines.config import load_config
from pipelines.masks import MasksConfig
from tests.helpers.dummy_data import make_dummy_mvtec

REPO = Path(__file__).resolve().parents[2]


def test_config_errors_exit_2_with_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = main(["masks", "--set", "dataset.root=x", "--set", "sources.gan=1", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert err.startswith("fastgen masks: error:") and "unknown key(s) 'gan'" in err and "augment" in err


def test_help_lists_masks(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "masks" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["masks", "--help"])
    assert "resumes an interrupted run" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("name", ["masks-tiny.yaml", "masks-cpu.yaml", "masks-full.yaml"])
def test_example_configs_load(name: str) -> None:
    cfg = load_config(MasksConfig, REPO / "jobs" / "configs" / name)
    assert cfg.out and cfg.counts.default >= 1
    if name == "masks-full.yaml":
        assert cfg.out.startswith("s3://") and cfg.mask_model_uri and cfg.sources.diffusion > 0


@pytest.mark.ray
def test_tiny_run_prints_summary(ray_local: None, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    root = make_dummy_mvtec(tmp_path / "ds", defects={"scratch": 6}, size=(40, 48))
    out = tmp_path / "out"
    args = ["masks", "--config", str(REPO / "jobs/configs/masks-tiny.yaml"), "--set", f"dataset.root={root}"]
    assert main([*args, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"{out}: " in text and "masks written" in text and "masks/s" in text
    stats = json.loads((out / "stats.json").read_text())
    assert stats["written"] + stats["rejected"] == 8
    assert (out / "_SUCCESS").is_file() and (out / "config.resolved.yaml").is_file()
    assert main([*args, "--out", str(out)]) == 0
    assert "already complete" in capsys.readouterr().out
