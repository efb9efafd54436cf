"""Synthesis against the embedded S3 server: everything on S3, and the server stopped for a few seconds mid-write."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import socket
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from fast_core.data.transforms import decode_png
from fast_core.synthesis import SynthesisConfig
from pipelines import storage
from pipelines.s3server import SeaweedS3Server
from pipelines.shards import ShardStore, sha256
from pipelines.storage import StorageConfig
from pipelines.synthesize import ComputeConfig, SynthesizeConfig, run_synthesis
from tests.helpers.dummy_data import make_dummy_mvtec
from tests.helpers.manifests import pair_rows, write_manifest_rows
from tests.helpers.synthetic_versions import content_bytes
from tests.helpers.tiny_models import publish_tiny_model

pytestmark = [pytest.mark.ray, pytest.mark.s3]


def _check_dataset(out: str, storage_cfg: StorageConfig, n_rows: int) -> None:
    """Every committed file is whole: markers' digests match the parts, each id once, every PNG decodes."""
    ids: list[str] = []
    for marker_uri in storage.glob(storage.join(out, "_commits", "part-*.json"), storage_cfg):
        marker = json.loads(storage.read_text(marker_uri, storage_cfg))
        for rel, digest in marker["files"].items():
            assert sha256(storage.read_bytes(storage.join(out, rel), storage_cfg)) == digest
        ids += marker["sample_ids"] + marker["rejected_ids"]
    assert len(ids) == len(set(ids)) == n_rows
    for uri in storage.glob(storage.join(out, "data", "*.parquet"), storage_cfg):
        table = pq.read_table(io.BytesIO(storage.read_bytes(uri, storage_cfg)))
        for row in table.to_pylist():
            assert storage.read_bytes(storage.join(out, row["image"]["path"]), storage_cfg) == row["image"]["bytes"]
            decode_png(row["image"]["bytes"])
            decode_png(row["mask"]["bytes"])
    assert storage.exists(storage.join(out, "_SUCCESS"), storage_cfg)


def test_everything_on_s3(s3_bucket, ray_local: None, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    root = make_dummy_mvtec(tmp_path / "data", categories=("tiny",), defects={"crack": 2}, mode="L")
    data_uri = storage.join(s3_bucket.uri, "dataset")
    storage.put_dir(root, data_uri, s3_bucket.storage)
    model = publish_tiny_model(storage.join(s3_bucket.uri, "model"), s3_bucket.storage, image_channels=1)
    rows = pair_rows(root, model, {("tiny", "crack"): 5}, embed_png=True)
    for row in rows:  # inputs read from S3 as well
        row["image_uri"] = row["image_uri"].replace(str(root.resolve()), data_uri)
    manifest = write_manifest_rows(storage.join(s3_bucket.uri, "manifest"), rows, s3_bucket.storage)
    out = storage.join(s3_bucket.uri, "dataset-v1")
    cfg = SynthesizeConfig(
        manifest=manifest,
        out=out,
        shard_size=3,
        sampler=SynthesisConfig(nfe=3),
        compute=ComputeConfig(batch_size=4),
        storage=s3_bucket.storage,
        model_cache_dir=str(tmp_path / "cache"),
        preview_pairs=2,
    )
    summary = run_synthesis(cfg)
    assert (summary.written, summary.rejected, summary.shards) == (5, 0, 2)
    _check_dataset(out, s3_bucket.storage, 5)
    first = pq.read_table(
        io.BytesIO(storage.read_bytes(storage.join(out, "data/part-00000.parquet"), s3_bucket.storage))
    )
    assert decode_png(first.column("image")[0].as_py()["bytes"]).shape == (32, 32)  # grayscale model: L PNGs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_s3_outage_during_writes_is_carried_by_retries_to_the_same_bytes(
    ray_local: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Stop the server right after the first shard commits, start it again 3 s later: the retries carry the run (no
    exception, no rerun), and the version is byte-identical to an uninterrupted run of the same config."""
    torch.set_num_threads(1)
    server = SeaweedS3Server(tmp_path / "s3", port=_free_port(), stop_timeout_s=1.0)
    server.start()
    restarter: list[threading.Thread] = []
    original_commit = ShardStore.commit

    def commit_then_outage(self: ShardStore, shard: int, *args, **kwargs):
        marker = original_commit(self, shard, *args, **kwargs)
        if not restarter:  # first commit done: the server goes away for 3 s while later shards are written
            server.stop()
            restarter.append(threading.Thread(target=lambda: (time.sleep(3.0), server.start())))
            restarter[0].start()
        return marker

    try:
        bucket = server.create_bucket("outage")
        patient = StorageConfig(
            endpoint_url=server.endpoint_url,
            region="us-east-1",
            key="k",
            secret="s",
            retries=12,
            backoff_s=0.5,
            max_backoff_s=2.0,
            connect_timeout_s=2.0,
            read_timeout_s=10.0,
        )
        root = make_dummy_mvtec(tmp_path / "data", categories=("tiny",), defects={"crack": 3}, mode="RGB")
        model = publish_tiny_model(str(tmp_path / "model"))
        n_rows = 8
        manifest = write_manifest_rows(str(tmp_path / "manifest"), pair_rows(root, model, {("tiny", "crack"): n_rows}))
        out = storage.join(bucket, "v1")
        cfg = SynthesizeConfig(
            manifest=manifest,
            out=storage.join(bucket, "reference"),
            shard_size=2,
            sampler=SynthesisConfig(nfe=3),
            compute=ComputeConfig(batch_size=2),
            storage=patient,
            preview_pairs=2,
        )
        assert run_synthesis(cfg).written == n_rows  # the uninterrupted reference

        monkeypatch.setattr(ShardStore, "commit", commit_then_outage)
        with caplog.at_level(logging.WARNING, logger="pipelines.storage"):
            summary = run_synthesis(dataclasses.replace(cfg, out=out))  # one call: no exception, no rerun
        restarter[0].join()
        assert any("retry" in r.getMessage() for r in caplog.records)  # the outage was seen and retried
        assert summary.written == n_rows and summary.shards == n_rows // 2
        _check_dataset(out, patient, n_rows)
        for name in ("reference", "v1"):
            storage.get_dir(storage.join(bucket, name), tmp_path / "local" / name, patient)
        reference, carried = (content_bytes(tmp_path / "local" / n) for n in ("reference", "v1"))
        assert reference and carried == reference
    finally:
        for t in restarter:
            t.join()
        server.stop()
