"""End to end on a local Ray: outputs and their consumers, resume after a failed write, a killed actor, reruns."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from fast_core.data.transforms import decode_png
from fast_core.synthesis import SynthesisConfig
from pipelines.shards import InjectedWriteFault
from pipelines.synthesize import ComputeConfig, FaultConfig, SynthesizeConfig, run_synthesis
from tests.helpers.dummy_data import make_dummy_mvtec
from tests.helpers.manifests import pair_rows, write_manifest_rows
from tests.helpers.synthetic_versions import content_bytes
from tests.helpers.tiny_models import publish_tiny_model

pytestmark = pytest.mark.ray

SHARD_SIZE = 6
N_ROWS = 16  # 3 shards: 6 + 6 + 4
BAD = {"tiny__crack__000001": "input_unreadable", "tiny__scratch__000002": "mask_empty"}


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory, ray_local: None) -> dict:
    """A dataset, a tiny model, a manifest with two bad rows, and the output of an uninterrupted run."""
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("synth")
    root = make_dummy_mvtec(tmp / "data", categories=("tiny",), defects={"crack": 3, "scratch": 3}, mode="RGB")
    model = publish_tiny_model(str(tmp / "model"))
    rows = pair_rows(root, model, {("tiny", "crack"): 8, ("tiny", "scratch"): 8})
    empty = tmp / "empty_mask.png"
    from PIL import Image

    Image.fromarray(np.zeros((32, 40), np.uint8)).save(empty)
    for row in rows:
        if row["sample_id"] == "tiny__crack__000001":
            row["image_uri"] = str(tmp / "gone.png")
        if row["sample_id"] == "tiny__scratch__000002":
            row["mask_uri"] = str(empty)
    manifest = write_manifest_rows(str(tmp / "manifest"), rows)
    ref = _cfg(manifest, tmp / "reference")
    summary = run_synthesis(ref)
    return {"tmp": tmp, "manifest": manifest, "rows": rows, "ref": Path(ref.out), "summary": summary}


def _cfg(manifest: str, out: Path, **kwargs) -> SynthesizeConfig:
    return SynthesizeConfig(
        manifest=manifest,
        out=str(out),
        shard_size=SHARD_SIZE,
        sampler=SynthesisConfig(nfe=3),
        compute=ComputeConfig(batch_size=4),
        preview_pairs=4,
        **kwargs,
    )


def test_outputs_and_consumers(job: dict, ray_local: None) -> None:
    out, summary = job["ref"], job["summary"]
    assert (summary.written, summary.rejected, summary.shards_written) == (N_ROWS - 2, 2, 3)
    assert summary.rejected_by_reason == {"input_unreadable": 1, "mask_empty": 1}
    # pyarrow: every sample once, in manifest order, images are PNGs at the model size that match the tree
    table = pq.read_table(out / "data")
    ids = table.column("sample_id").to_pylist()
    assert sorted(ids) == sorted(r["sample_id"] for r in job["rows"] if r["sample_id"] not in BAD)
    assert len(set(ids)) == len(ids)
    row = table.slice(0, 1).to_pylist()[0]
    image = decode_png(row["image"]["bytes"])
    assert image.shape == (32, 32, 3) and (row["width"], row["height"]) == (32, 32)
    assert row["image"]["path"] == "images/tiny/crack/tiny__crack__000000.png"
    assert (out / row["image"]["path"]).read_bytes() == row["image"]["bytes"]
    assert (out / "masks/tiny/crack/tiny__crack__000000_mask.png").read_bytes() == row["mask"]["bytes"]
    assert row["mask_area"] == int((decode_png(row["mask"]["bytes"]) > 0).sum()) > 0
    assert (row["sampler"], row["nfe"], row["run_id"]) == ("aias", 3, summary.run_id)
    features = json.loads(table.schema.metadata[b"huggingface"])["info"]["features"]
    assert features["image"] == {"_type": "Image"} and features["mask"] == {"_type": "Image"}
    rejected = pq.read_table(out / "rejected").to_pylist()
    assert {r["sample_id"]: r["reason"] for r in rejected} == BAD and {r["stage"] for r in rejected} == {"load"}
    # Ray Data reads the same rows
    import ray.data

    ds = ray.data.read_parquet(str(out / "data"))
    assert sorted(ds.to_pandas()["sample_id"].tolist()) == sorted(ids)
    # dataset-level files
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["written"], stats["rejected"], stats["shards"]) == (N_ROWS - 2, 2, 3)
    assert stats["written_by_key"] == {"tiny/crack": 7, "tiny/scratch": 7}
    assert json.loads((out / "_SUCCESS").read_text())["written"] == N_ROWS - 2
    assert decode_png((out / "preview.png").read_bytes()).shape[2] == 3
    assert stats["run_id"] == "synth-" + stats["provenance"]["config_sha256"][:16]
    assert stats["provenance"]["model"]["uri"] == stats["model_uri"] and (out / "README.md").is_file()
    assert "| tiny | crack | 7 | 1 |" in (out / "README.md").read_text() and (out / "report.html").is_file()
    assert "shard_size: 6" in (out / "config.resolved.yaml").read_text()


def test_huggingface_datasets_reads_images(job: dict) -> None:
    datasets = pytest.importorskip("datasets", reason="the optional consumer check needs the datasets package")
    ds = datasets.load_dataset("parquet", data_files=str(job["ref"] / "data" / "*.parquet"), split="train")
    assert ds.features["image"].__class__.__name__ == "Image"
    assert ds[0]["image"].size == (32, 32)


def test_rerun_of_finished_job_writes_nothing(job: dict) -> None:
    out = job["ref"]
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file()}
    summary = run_synthesis(_cfg(job["manifest"], out))
    assert summary.already_complete and summary.written == N_ROWS - 2
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file()} == before


def test_failed_write_then_resume_is_byte_identical(job: dict) -> None:
    out = job["tmp"] / "resumed"
    with pytest.raises(InjectedWriteFault, match="after 1 committed shard"):
        run_synthesis(_cfg(job["manifest"], out, fault=FaultConfig(fail_writes_after_shards=1)))
    # Shards commit in the order they finish, so which one landed first is not fixed; exactly one did.
    (marker,) = (out / "_commits").glob("part-*.json")
    done = json.loads(marker.read_text())
    assert not (out / "_SUCCESS").exists()
    summary = run_synthesis(_cfg(job["manifest"], out))
    committed_rows = len(done["sample_ids"]) + len(done["rejected_ids"])
    assert committed_rows == (SHARD_SIZE if marker.name != "part-00002.json" else N_ROWS - 2 * SHARD_SIZE)
    assert (summary.shards_skipped, summary.shards_written, summary.rows_this_run) == (1, 2, N_ROWS - committed_rows)
    assert content_bytes(out) == content_bytes(job["ref"])


def test_killed_actor_loses_and_duplicates_nothing(job: dict) -> None:
    out = job["tmp"] / "actor_killed"
    summary = run_synthesis(_cfg(job["manifest"], out, fault=FaultConfig(kill_actor_after_batches=2)))
    assert (out / "_faults" / "actor-killed").exists()  # the actor really died once
    assert (summary.written, summary.rejected) == (N_ROWS - 2, 2)
    ids = pq.read_table(out / "data").column("sample_id").to_pylist()
    assert len(ids) == len(set(ids)) == N_ROWS - 2
    assert content_bytes(out) == content_bytes(job["ref"])


def test_different_job_into_same_output_is_refused(job: dict) -> None:
    cfg = _cfg(job["manifest"], job["ref"])
    cfg.sampler = SynthesisConfig(nfe=4)
    with pytest.raises(ValueError, match="already holds shards of a different job"):
        run_synthesis(cfg)


def test_actors_holding_every_cpu_fail_fast(
    job: dict, ray_local: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import ray

    from pipelines import ray_utils

    cpus = ray.cluster_resources()["CPU"]
    monkeypatch.setattr(ray_utils, "started_local", lambda: True)
    with pytest.raises(ValueError, match="read/encode tasks could never run"):
        ray_utils.check_cpu_budget(1, cpus, cpus, "read/encode tasks")
    # run_synthesis checks before its pipeline starts: no shard is written.
    no_room = ComputeConfig(batch_size=4, num_cpus=cpus, task_cpus=cpus)
    cfg = SynthesizeConfig(manifest=job["manifest"], out=str(job["tmp"] / "no-room"), compute=no_room)
    with pytest.raises(ValueError, match="read/encode tasks could never run"):
        run_synthesis(cfg)
    assert not (job["tmp"] / "no-room" / "data").exists()
    monkeypatch.setattr(ray_utils, "started_local", lambda: False)  # a shared cluster may autoscale: warn only
    ray_utils.check_cpu_budget(1, cpus, cpus, "read/encode tasks")
    assert "could never run" in caplog.text
    ray_utils.check_cpu_budget(1, 1.0, 1.0, "read/encode tasks")


def test_window_frame_model_writes_pairs_at_each_images_own_size(tmp_path: Path, ray_local: None) -> None:
    """A window-frame model on images of several sizes: every pair keeps its source image's size, the width and
    height columns say so, only mask pixels change, and preview, card and report are written."""
    root = make_dummy_mvtec(
        tmp_path / "data", categories=("tiny",), defects={"crack": 3}, mode="RGB", size=(48, 72), vary_size=True
    )
    model = publish_tiny_model(str(tmp_path / "model"), frame="window")
    rows = pair_rows(root, model, {("tiny", "crack"): 5})
    summary = run_synthesis(_cfg(write_manifest_rows(str(tmp_path / "manifest"), rows), tmp_path / "out"))
    assert (summary.written, summary.rejected) == (5, 0)
    table = pq.read_table(tmp_path / "out" / "data").to_pylist()
    sources = {r["sample_id"]: decode_png(Path(r["image_uri"]).read_bytes(), "RGB") for r in rows}
    assert len({sources[r["sample_id"]].shape for r in table}) > 1  # the sizes really differ
    for r in table:
        source, image = sources[r["sample_id"]], decode_png(r["image"]["bytes"], "RGB")
        label = decode_png(r["mask"]["bytes"]) > 0
        assert image.shape == source.shape and (r["height"], r["width"]) == source.shape[:2]
        np.testing.assert_array_equal(image[~label], source[~label])
    assert (tmp_path / "out" / "preview.png").is_file() and (tmp_path / "out" / "report.html").is_file()
