"""Published models: publish → fetch → load round trip (local and S3), incomplete and corrupt models refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipelines import storage
from pipelines.model_store import MODEL_INFO, ModelInfo, fetch_model, load_model, publish_model, read_model_info
from tests.helpers.tiny_models import TINY_KEYS, publish_tiny_model, tiny_fast_ldm


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_publish_and_load_local_round_trip(tmp_path: Path) -> None:
    uri = publish_tiny_model(str(tmp_path / "model"), image_channels=1, seed=3)
    model, info = load_model(uri)
    assert info.image_size == 32 and info.image_channels == 1 and info.keys == list(TINY_KEYS)
    assert _same_weights(model, tiny_fast_ldm(image_channels=1, seed=3))
    assert model.trainable_parameters() == [] and not model.training
    assert fetch_model(uri) == tmp_path / "model"


@pytest.mark.s3
def test_publish_and_load_s3_uses_cache(tmp_path: Path, s3_bucket) -> None:
    uri = publish_tiny_model(f"{s3_bucket.uri}/models/m1", s3_bucket.storage, seed=5)
    cache = tmp_path / "cache"
    model, info = load_model(uri, s3_bucket.storage, cache_dir=cache)
    assert info.preset == "tiny" and _same_weights(model, tiny_fast_ldm(seed=5))
    local = fetch_model(uri, s3_bucket.storage, cache_dir=cache)
    assert (local / MODEL_INFO).is_file() and len(list(cache.iterdir())) == 1  # fetched once, reused


def test_model_without_info_is_incomplete(tmp_path: Path) -> None:
    uri = publish_tiny_model(str(tmp_path / "model"))
    (tmp_path / "model" / MODEL_INFO).unlink()
    with pytest.raises(FileNotFoundError, match="model.json is missing"):
        load_model(uri)


def test_corrupt_info_and_weights_are_named(tmp_path: Path) -> None:
    uri = publish_tiny_model(str(tmp_path / "model"))
    info_path = tmp_path / "model" / MODEL_INFO
    good = info_path.read_text()
    info_path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_model_info(uri)
    info_path.write_text(json.dumps({**json.loads(good), "colour": "red"}))
    with pytest.raises(ValueError, match="colour"):
        read_model_info(uri)
    info_path.write_text(good)
    (tmp_path / "model" / "fast" / "fast.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="fast.safetensors"):
        load_model(uri)


def test_publish_rejects_info_that_disagrees(tmp_path: Path) -> None:
    model = tiny_fast_ldm()
    bad = ModelInfo(image_size=32, image_channels=1, keys=list(TINY_KEYS))
    with pytest.raises(ValueError, match="image_channels"):
        publish_model(model, str(tmp_path / "m"), bad)
    with pytest.raises(ValueError, match="keys"):
        publish_model(model, str(tmp_path / "m"), ModelInfo(image_size=32, image_channels=3, keys=["other"]))
    with pytest.raises(ValueError, match="image_channels must be 1 or 3"):
        ModelInfo(image_size=32, image_channels=2, keys=["a"])
    with pytest.raises(ValueError, match="window_zoom must be a number >= 1, got 0.5"):
        ModelInfo(image_size=32, image_channels=1, keys=["a"], frame="window", window_zoom=0.5)
    for level in (0, 300, True):
        with pytest.raises(ValueError, match=r"window_level must be null or a grey level in \(0, 255\]"):
            ModelInfo(image_size=32, image_channels=1, keys=["a"], frame="window", window_level=level)
    with pytest.raises(ValueError, match="window_level needs frame 'window'"):
        ModelInfo(image_size=32, image_channels=1, keys=["a"], window_level=80.0)


def test_put_dir_get_dir_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "x.bin").write_bytes(b"xyz")
    (src / "top.txt").write_text("top")
    written = storage.put_dir(src, str(tmp_path / "dst"))
    assert [Path(w).name for w in written] == ["x.bin", "top.txt"]
    out = storage.get_dir(str(tmp_path / "dst"), tmp_path / "back")
    assert (out / "a" / "b" / "x.bin").read_bytes() == b"xyz" and (out / "top.txt").read_text() == "top"
    with pytest.raises(FileNotFoundError):
        storage.get_dir(str(tmp_path / "nothing"), tmp_path / "x")
