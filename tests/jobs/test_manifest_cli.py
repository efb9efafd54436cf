"""``fastgen manifest`` through ``jobs.cli.main``: summary output, rerun no-op, immutability and config errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from jobs.cli import main
from pipelines.config import load_config
from pipelines.manifest import read_manifest
from pipelines.manifest_config import ManifestConfig
from tests.helpers.dummy_data import make_dummy_mvtec

REPO = Path(__file__).resolve().parents[2]


def _write_config(tmp_path: Path, **extra: object) -> Path:
    root = make_dummy_mvtec(tmp_path / "ds", defects={"scratch": 6, "hole": 3})
    cfg = {
        "dataset": {"root": str(root), "layout": "mvtec"},
        "masks": {"source": "real"},
        "counts": {"default": 4, "per_key": {"widget/hole": 2}},
        "job_seed": 5,
        "model_uri": "s3://models/widget",
        **extra,
    }
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_cli_writes_and_summarises(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _write_config(tmp_path)
    out = tmp_path / "manifests" / "v1"
    assert main(["manifest", "--config", str(config), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"manifest {out}: written" in text and "rows: 6  job_seed: 5" in text
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line.startswith("widget/")}
    assert rows == {"widget/hole": ["2", "1", "0", "4"], "widget/scratch": ["4", "2", "0", "4"]}
    assert read_manifest(str(out)).num_rows == 6
    assert main(["manifest", "--config", str(config), "--out", str(out)]) == 0
    assert f"manifest {out}: unchanged" in capsys.readouterr().out
    # Same out, other content: exit 2 with one line that names the fix.
    assert main(["manifest", "--config", str(config), "--out", str(out), "--set", "job_seed=6"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds a different manifest" in err[0] and "choose a new out" in err[0]


def test_cli_config_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _write_config(tmp_path, out=str(tmp_path / "m"))
    assert main(["manifest", "--config", str(config), "--set", "counts.defualt=3"]) == 2
    assert "unknown key(s) 'defualt'; valid keys: default, per_key" in capsys.readouterr().err
    assert main(["manifest", "--config", str(config), "--set", "counts.per_key={widget/dent: 2}"]) == 2
    assert "unknown defect key(s) 'widget/dent'" in capsys.readouterr().err
    assert main(["manifest", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_example_configs_load() -> None:
    """The shipped example configs pass the strict loader (no unknown keys, valid values)."""
    paths = sorted((REPO / "jobs" / "configs").glob("manifest-*.yaml"))
    configs = {p.stem: load_config(ManifestConfig, p) for p in paths}
    assert set(configs) == {"manifest-real", "manifest-shards"}
    assert configs["manifest-real"].masks.source == "real" and not configs["manifest-real"].masks.embed
    assert configs["manifest-shards"].masks.embed and configs["manifest-shards"].out.startswith("s3://")
