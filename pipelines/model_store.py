"""Published FAST models: the stable, self-describing directory that training writes and synthesis reads.

Layout at a model URI (a local directory or an ``s3://`` prefix)::

    <uri>/base/        the base LDM in the CompVis diffusers layout (fast_core.models.base.save_base_model)
    <uri>/fast/        fast.safetensors + fast_config.json (FastLDM.save_fast: prompt vectors, FARM, Adaptor)
    <uri>/model.json   ModelInfo (image size and channels, defect keys and the untrained ones, preset, trained steps,
                       run id, frame), written LAST

``model.json`` is the completion marker: a model URI without it is incomplete (a publish that died half way) and is
refused. Every file is written atomically, so a reader sees each file whole. Weights are safetensors only.

``fetch_model`` gives a local directory for any URI: a local model is used in place; an ``s3://`` model is copied to
a cache directory keyed by the URI and the content of its ``model.json`` (a republished model gets a fresh copy).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from fast_core.configbase import from_dict, to_dict
from fast_core.models.base import save_base_model
from fast_core.models.ldm import FastLDM
from pipelines import storage as st
from pipelines.storage import StorageConfig

logger = logging.getLogger(__name__)

MODEL_INFO = "model.json"
BASE_DIR = "base"
FAST_DIR = "fast"
FORMAT = "fastgen-model/1"
DEFAULT_CACHE = Path(os.environ.get("FASTGEN_CACHE", Path.home() / ".cache" / "fastgen")) / "models"


@dataclass(kw_only=True)
class ModelInfo:
    """What a consumer needs to know about a published model besides its weights."""

    image_size: int  # the model's square input/output size S (images and masks are resized to S × S)
    image_channels: int  # 1 (grayscale) or 3 (RGB)
    keys: list[str]  # defect keys "<category>/<defect_type>" (and "good") the conditioner knows
    preset: str = ""  # the model preset it was built from ("tiny", "cpu_small", "full") or "" for a loaded base
    steps: dict[str, int] = field(default_factory=dict)  # trained steps per stage, e.g. {"vae": 400, "fast": 800}
    run_id: str = ""  # the training run that produced it
    # "global": synthesis resizes the whole image to S × S; "window": it runs in an S × S window around each mask at
    # the image's own pixel size and pastes back inside the mask (FAST_SPEC §9, fast_core.data.windows)
    frame: Literal["global", "window"] = "global"
    window_margin: float = 0.25  # window frame: side = max(⌈S / zoom⌉, ⌈mask box side · (1 + margin)⌉)
    window_zoom: float = 1.0  # window frame: the smallest window is ⌈S / zoom⌉ pixels, resized up to S
    # window frame: L, the grey level each window's background is scaled to before the model sees it, and its change
    # scaled back after (fast_core.data.window_level); None: windows as cut
    window_level: float | None = None
    # keys the conditioner knows but no training row carried, e.g. "good" after training on defect windows only
    # (dataset.windows_per_normal: 0): synthesis refuses guidance, whose negative branch is "good", on such a model
    untrained_keys: list[str] = field(default_factory=list)
    format: str = FORMAT

    def __post_init__(self) -> None:
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or self.image_size < 1:
            raise ValueError(f"ModelInfo.image_size must be a positive integer, got {self.image_size!r}")
        if self.image_channels not in (1, 3):
            raise ValueError(f"ModelInfo.image_channels must be 1 or 3, got {self.image_channels!r}")
        if not self.keys:
            raise ValueError("ModelInfo.keys must name at least one key")
        if self.frame not in ("global", "window"):
            raise ValueError(f"ModelInfo.frame must be 'global' or 'window', got {self.frame!r}")
        if isinstance(self.window_zoom, bool) or not isinstance(self.window_zoom, int | float) or self.window_zoom < 1:
            raise ValueError(f"ModelInfo.window_zoom must be a number >= 1, got {self.window_zoom!r}")
        level = self.window_level
        if level is not None and (
            isinstance(level, bool) or not isinstance(level, int | float) or not 0 < level <= 255
        ):
            raise ValueError(f"ModelInfo.window_level must be null or a grey level in (0, 255], got {level!r}")
        if level is not None and self.frame != "window":
            raise ValueError("ModelInfo.window_level needs frame 'window' (it scales the windows around the masks)")
        if not set(self.untrained_keys) <= set(self.keys):
            raise ValueError(f"ModelInfo.untrained_keys {self.untrained_keys!r} must be among its keys {self.keys!r}")
        if self.format != FORMAT:
            raise ValueError(f"model format {self.format!r} is not supported (expected {FORMAT!r})")


def publish_model(model: FastLDM, uri: str, info: ModelInfo, storage: StorageConfig | None = None) -> str:
    """Write ``model`` (base + FAST parts) and ``info`` to ``uri``; ``model.json`` last. Returns ``uri``.

    Raises:
        ValueError: ``info`` disagrees with the model (channels, keys).
    """
    if info.image_channels != model.image_channels:
        raise ValueError(
            f"publish_model: info.image_channels={info.image_channels} but the model takes {model.image_channels}"
        )
    if sorted(info.keys) != sorted(model.keys):
        raise ValueError(f"publish_model: info.keys {info.keys} differ from the model's keys {model.keys}")
    with tempfile.TemporaryDirectory(prefix="fastgen-publish-") as tmp:
        save_base_model(model.base_components(), Path(tmp) / BASE_DIR)
        model.save_fast(Path(tmp) / FAST_DIR)
        st.put_dir(tmp, uri, storage)
    st.write_text_atomic(st.join(uri, MODEL_INFO), json.dumps(to_dict(info), indent=2) + "\n", storage)
    logger.info("published model (%s, %d px, keys %s) to %s", info.preset or "base", info.image_size, info.keys, uri)
    return uri


def read_model_info(uri: str, storage: StorageConfig | None = None) -> ModelInfo:
    """The :class:`ModelInfo` of the model at ``uri``.

    Raises:
        FileNotFoundError: ``uri/model.json`` is missing (no model there, or an unfinished publish).
        ValueError: ``model.json`` is not valid.
    """
    info_uri = st.join(uri, MODEL_INFO)
    if not st.exists(info_uri, storage):
        raise FileNotFoundError(
            f"{uri}: no published model there ({MODEL_INFO} is missing; a model is complete only once {MODEL_INFO} "
            f"is written)"
        )
    try:
        data = json.loads(st.read_text(info_uri, storage))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{info_uri}: not valid JSON ({exc})") from exc
    return from_dict(ModelInfo, data, MODEL_INFO)


def fetch_model(
    uri: str, storage: StorageConfig | None = None, cache_dir: str | os.PathLike[str] | None = None
) -> Path:
    """A local directory holding the published model at ``uri`` (downloaded once into the cache for ``s3://``)."""
    info = read_model_info(uri, storage)
    if not uri.startswith("s3://"):
        _, path = st.filesystem(uri, storage)
        return Path(path)
    key = hashlib.sha256((uri + "\n" + json.dumps(to_dict(info), sort_keys=True)).encode()).hexdigest()[:24]
    target = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE
    local = target / key
    if (local / MODEL_INFO).is_file():
        return local
    partial = target / f".{key}.{os.getpid()}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    st.get_dir(uri, partial, storage)
    try:
        partial.rename(local)  # atomic; a concurrent fetch that won the race leaves an equal copy in place
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)
        if not (local / MODEL_INFO).is_file():
            raise
    logger.info("fetched model %s into %s", uri, local)
    return local


def load_model(
    uri: str,
    storage: StorageConfig | None = None,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[FastLDM, ModelInfo]:
    """Load the published model at ``uri`` for synthesis: eval mode, frozen, on ``device`` in ``dtype``."""
    local = fetch_model(uri, storage, cache_dir)
    info = read_model_info(str(local))
    model = FastLDM.load_fast(local / FAST_DIR, local / BASE_DIR, device=device, dtype=dtype)
    if model.image_channels != info.image_channels:
        raise ValueError(
            f"{uri}: {MODEL_INFO} says image_channels={info.image_channels}, the weights take {model.image_channels}"
        )
    model.configure_stage("frozen")
    model.eval()
    return model, info
