"""The quality benchmark reuses a segmenter only while its datasets are the ones it was trained on."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks import quality
from pipelines.evaluate import EvaluateConfig
from pipelines.evaluate.config import TrainSource


def test_a_dataset_remade_after_its_segmenter_invalidates_the_reuse(tmp_path: Path) -> None:
    dataset = tmp_path / "fast"
    dataset.mkdir()
    success = dataset / "_SUCCESS"
    success.write_text("")
    metrics = tmp_path / "metrics.json"
    metrics.write_text("{}")
    cfg = EvaluateConfig(
        dataset_root=str(tmp_path),
        out=str(tmp_path / "eval"),
        train_sources=[
            TrainSource(kind="synthetic", uri=str(dataset), pairs_per_key=2),
            TrainSource(kind="real_third"),
        ],
    )
    os.utime(success, (1_000, 1_000))
    os.utime(metrics, (2_000, 2_000))
    assert not quality.remade_since(metrics, cfg)  # the segmenter saw this dataset
    os.utime(success, (3_000, 3_000))
    assert quality.remade_since(metrics, cfg)  # the folder was synthesized again afterwards


def test_a_relative_and_an_absolute_model_path_share_the_generator_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    absolute = str(tmp_path / "train" / "run-a" / "model")
    tag = quality.generator_tag(absolute)
    assert tag.startswith("datasets-run-a-")
    assert quality.generator_tag("train/run-a/model") == tag == quality.generator_tag(absolute + "/")
    assert quality.generator_tag("train/run-b/model") != tag
    assert quality.generator_tag("s3://bucket/run-a/model/") == quality.generator_tag("s3://bucket/run-a/model")
