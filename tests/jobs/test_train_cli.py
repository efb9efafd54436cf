"""``fastgen train``: exit codes and one-line errors; interrupted runs continued with --resume.

* in process: the test-only ``fault.stop_after_steps`` fails the workers after step 3 (no Ray Train retry); the
  resumed run continues the step count, the optimizer state and metrics.jsonl instead of starting over;
* a real kill: the training driver (a subprocess with its own local Ray) is SIGKILLed mid-stage; ``--resume``
  continues at the same step and data position, and every stage's final weights equal an uninterrupted run's,
  bit for bit (CPU, float32: the same operations in the same order).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from jobs.cli import main
from pipelines.config import load_config
from pipelines.train import TrainConfig, TrainingFailed, run_training
from pipelines.train.checkpoint import RunStore
from tests.helpers.dummy_data import make_dummy_mvtec
from tests.helpers.processes import fastgen, kill_when, run
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


def _grey_tiny(tmp_path: Path, *overrides: str, fast_only: bool = True) -> list[str]:
    """``--set`` values: a grey dummy dataset, runs under ``tmp_path/runs``, FAST on a tiny base (or every stage)."""
    root = make_dummy_mvtec(tmp_path / "ds", categories=("tiny",), n_good=4, defects={"crack": 6, "scratch": 6})
    sets = [f"dataset.root={root}", "dataset.image_channels=1", f"storage_path={tmp_path / 'runs'}"]
    if fast_only:
        sets += ["stages=[fast]", f"model.base_model_uri={tiny_base_model_dir(tmp_path, image_channels=1)}"]
    return [*sets, *overrides]


def _cli(sets: list[str], *extra: str) -> list[str]:
    """The ``fastgen train`` command line (a subprocess with its own local Ray of 3 CPUs)."""
    return fastgen("train", "--config", CONFIG, *[a for kv in sets for a in ("--set", kv)], "--num-cpus", "3", *extra)


@pytest.mark.ray
def test_interrupted_run_resumes_with_optimizer_state_and_step(
    ray_local: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    overrides = _grey_tiny(
        tmp_path,
        "stage.fast.steps=4",
        "stage.fast.checkpoint_every=2",
        "scaling.max_failures=0",  # the stop is an interruption, not a worker failure to recover from
    )
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
    assert final.step == 4
    # AdamW's per-parameter step counter continued from 2 (not restarted): 4 updates in all
    assert {int(s["step"]) for s in final.optimizer["state"].values()} == {4}
    assert final.state["metrics"][:2] == at_two.state["metrics"]  # the history up to the checkpoint is carried over

    assert main([*args, "--resume"]) == 0  # a finished stage is skipped
    assert "skipped (finished earlier)" in capsys.readouterr().out


def _final_weights(run_dir: Path, stages: tuple[str, ...]) -> dict[str, dict[str, torch.Tensor]]:
    store = RunStore(str(run_dir))
    return {stage: store.stage_weights(stage).weights for stage in stages}


@pytest.mark.ray
def test_driver_killed_mid_stage_then_resume_gives_the_same_weights(tmp_path: Path) -> None:
    sets = _grey_tiny(
        tmp_path,
        "stage.vae.steps=2",
        "stage.base.steps=8",  # 8 rows per worker at batch 2: 4 batches an epoch, so step 3 is mid-epoch
        "stage.base.checkpoint_every=2",
        "stage.fast.steps=2",
        fast_only=False,
    )

    def command(name: str, *extra: str) -> list[str]:
        return _cli([*sets, f"run_name={name}"], *extra)

    reference = run(command("reference"))
    assert reference.returncode == 0, reference.stderr[-3000:]

    killed = tmp_path / "runs" / "killed"
    kill_when(command("killed"), (killed / "checkpoints" / "base" / "step-00000002" / "state.json").exists)
    store = RunStore(str(killed))
    assert store.done("vae") is not None and store.done("base") is None  # really killed inside the base stage

    resumed = run(command("killed", "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "vae   2 steps, skipped (finished earlier)" in resumed.stdout
    resumed_from = int(re.search(r"base  8 steps, trained from step (\d+)", resumed.stdout).group(1))
    assert 2 <= resumed_from < 8
    stages = ("vae", "base", "fast")
    want, got = _final_weights(tmp_path / "runs" / "reference", stages), _final_weights(killed, stages)
    for stage in stages:
        assert want[stage].keys() == got[stage].keys()
        assert all(torch.equal(want[stage][k], got[stage][k]) for k in want[stage]), stage


@pytest.mark.ray
def test_console_shows_progress_bars_and_keeps_ray_internals_in_the_log_file(tmp_path: Path) -> None:
    done = run(_cli(_grey_tiny(tmp_path, "stage.fast.steps=4")))
    assert done.returncode == 0, done.stderr[-3000:]
    err = done.stderr
    assert "training fast: 100%" in err and "4/4" in err  # the stage's progress bar
    for internal in ("Reporting training result", "TrainingReport", "logging_progress", "RayDeprecationWarning"):
        assert internal not in err and internal not in done.stdout, internal
    log = Path(re.search(r"full log in (\S+\.log)", err).group(1))
    text = log.read_text()
    assert " ray" in text and "stage fast: training steps 1..4" in text  # Ray's records and ours, in the file
