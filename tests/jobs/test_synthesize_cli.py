"""``fastgen synthesize``: config errors exit 2 before Ray starts; a killed driver, rerun, gives the same bytes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from jobs.cli import main
from tests.helpers.dummy_data import make_dummy_mvtec
from tests.helpers.manifests import pair_rows, write_manifest_rows
from tests.helpers.processes import fastgen, kill_when, run
from tests.helpers.synthetic_versions import content_bytes
from tests.helpers.tiny_models import publish_tiny_model


def test_config_errors_exit_2_with_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = main(["synthesize", "--set", "compute.actors=2", "--manifest", "m", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert "unknown key(s) 'actors'" in err and err.startswith("fastgen synthesize: error:")


def test_help_lists_synthesize(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["synthesize", "--help"])
    assert "resumes an interrupted run" in " ".join(capsys.readouterr().out.split())


def _command(config: Path, out: Path) -> list[str]:
    return fastgen("synthesize", "--config", str(config), "--out", str(out), "--num-cpus", "4")


@pytest.mark.ray
def test_driver_killed_after_first_commit_then_rerun_is_byte_identical(tmp_path: Path) -> None:
    root = make_dummy_mvtec(tmp_path / "data", categories=("tiny",), defects={"crack": 3, "scratch": 3}, mode="RGB")
    model = publish_tiny_model(str(tmp_path / "model"))
    rows = pair_rows(root, model, {("tiny", "crack"): 12, ("tiny", "scratch"): 12})
    manifest = write_manifest_rows(str(tmp_path / "manifest"), rows)
    config = tmp_path / "synth.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "manifest": manifest,
                "out": "unused",
                "shard_size": 4,
                "sampler": {"nfe": 20},
                "compute": {"batch_size": 4, "num_cpus": 1},
                "preview_pairs": 4,
            }
        )
    )
    reference = tmp_path / "reference"
    done = run(_command(config, reference))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "24 pairs written, 0 rejected" in done.stdout

    out = tmp_path / "killed"
    kill_when(_command(config, out), lambda: any((out / "_commits").glob("part-*.json")))  # any order
    committed = sorted(p.name for p in (out / "_commits").glob("part-*.json"))
    assert 1 <= len(committed) < 6 and not (out / "_SUCCESS").exists()  # really killed mid-run

    rerun = run(_command(config, out))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{len(committed)} already committed" in rerun.stdout
    assert content_bytes(out) == content_bytes(reference)
    again = run(_command(config, out))
    assert again.returncode == 0 and "already complete" in again.stdout
