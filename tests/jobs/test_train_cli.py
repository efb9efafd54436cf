"""``fastgen train``: exit codes and one-line errors; a run interrupted after step 3 and continued with --resume.

The interrupted run uses the test-only ``fault.stop_after_steps`` (the driver sees the worker fail, as after a kill);
the resumed run must continue the step count, the optimizer state and metrics.jsonl instead of starting over.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.cli import main
from pipelines.config import load_config
from pipelines.train import TrainConfig, TrainingFailed, run_training
from pipelines.train.checkpoint import RunStore
from tests.helpers.dummy_data import make_dummy_mvtec
from tests.helpers.tiny_models import tiny_base_model_dir

CONFIG = str(Path(__file__).resolve().parents[2] / "jobs" / "configs" / "train-tiny.yaml")


def test_unknown_key_exits_2_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--config", CONFIG, "--set", "stage.fast.stepz=3", "--set", f"dataset.root={tmp_path}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "unknown key(s) 'stepz'" in err[0] and "valid keys: steps" in err[0]


def test_missing_dataset_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--config", CONFIG, "--set", f"dataset.root={tmp_path / 'nope'}"])
    assert code == 2
    assert "dataset root not found" in capsys.readouterr().err


@pytest.mark.ray
def test_interrupted_run_resumes_with_optimizer_state_and_step(
    ray_local: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_dummy_mvtec(tmp_path / "ds", categories=("tiny",), n_good=4, defects={"crack": 6, "scratch": 6})
    overrides = [
        f"dataset.root={root}",
        "dataset.image_channels=1",
        f"storage_path={tmp_path / 'runs'}",
        "stages=[fast]",
        f"model.base_model_uri={tiny_base_model_dir(tmp_path, image_channels=1)}",
        "stage.fast.steps=4",
        "stage.fast.checkpoint_every=2",
    ]
    args = ["train", "--config", CONFIG] + [a for kv in overrides for a in ("--set", kv)]
    assert main([*args, "--resume"]) == 2  # nothing to resume yet
    assert "no run to resume" in capsys.readouterr().err

    with pytest.raises(TrainingFailed, match="stopped after step 3 by fault.stop_after_steps"):
        run_training(load_config(TrainConfig, CONFIG, [*overrides, "fault.stop_after_steps=3"]))
    store = RunStore(str(tmp_path / "runs" / "tiny"))
    at_two = store.load_latest("fast")
    steps = [r["step"] for r in store.read_metrics()]
    assert at_two.step == 2 and steps == [1, 2, 3]

    assert main([*args, "--resume"]) == 0
    out = capsys.readouterr().out
    assert "fast  4 steps, trained from step 2" in out and f"model: {tmp_path / 'runs' / 'tiny' / 'model'}" in out
    assert [r["step"] for r in store.read_metrics()] == [1, 2, 3, 4]  # the killed run's step 3 is replaced
    final = store.load_latest("fast")
    assert final.step == 4 and final.state["epoch"] > at_two.state["epoch"]
    # AdamW's per-parameter step counter continued from 2 (not restarted): 4 updates in all
    assert {int(s["step"]) for s in final.optimizer["state"].values()} == {4}
    assert final.state["metrics"][:2] == at_two.state["metrics"]  # the history up to the checkpoint is carried over

    assert main([*args, "--resume"]) == 0  # a finished stage is skipped
    assert "skipped (finished earlier)" in capsys.readouterr().out
