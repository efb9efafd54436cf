"""Building the model a stage starts from: the preset (or the given base) plus the weights of every finished stage.

    from scratch:  model = FastLDM.from_scratch(model_preset(preset, keys, C), seed)
    given base:    model = FastLDM.from_base(<local copy of base_model_uri>, model_preset(...), seed)
    pretrained first stage:  model = FastLDM.from_scratch(with_taef2(preset), first_stage=TAEF2.from_folder(...))
    then, for each earlier stage of the run (vae → base → fast):  model ← that stage's final weights
                   (vae also sets the latent scaling factor s it measured, vae.config.scaling_factor = s,
                   recorded in stages/vae.json; with a pretrained first stage it has no weights, only s)

The weights a stage owns (what its checkpoints hold) are named as in ``FastLDM.state_dict()``:
vae ``vae.*``; base ``unet.*`` + ``conditioner.*``; fast :meth:`FastLDM.fast_state_dict` (prompt vectors, FARM,
Adaptor incl. BatchNorm buffers).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import torch

from fast_core.models.base import check_state
from fast_core.models.ldm import FastLDM, FastModelConfig, model_preset, with_taef2
from fast_core.models.taef2 import LICENSE_NAME, TAEF2
from pipelines import storage as st
from pipelines.storage import StorageConfig
from pipelines.train.checkpoint import RunStore
from pipelines.train.config import STAGE_ORDER, TrainConfig

logger = logging.getLogger(__name__)

CACHE = Path(os.environ.get("FASTGEN_CACHE", Path.home() / ".cache" / "fastgen"))
BASE_CACHE = CACHE / "bases"
FIRST_STAGE_CACHE = CACHE / "first_stages"


def model_config(cfg: TrainConfig, keys: list[str]) -> FastModelConfig:
    """The preset with the run's keys and image channels, and the config's overrides applied."""
    mc = model_preset(cfg.model.preset, keys, cfg.dataset.image_channels)
    if cfg.model.adaptor_mode is not None:
        mc.adaptor = dataclasses.replace(mc.adaptor, mode=cfg.model.adaptor_mode)
    if cfg.model.mask_downsample is not None:
        mc.mask_downsample = cfg.model.mask_downsample
    if cfg.model.unet_conditioning is not None:
        mc.unet = dataclasses.replace(mc.unet, conditioning=cfg.model.unet_conditioning)
    if cfg.model.unet_prediction is not None:
        mc.unet = dataclasses.replace(mc.unet, prediction=cfg.model.unet_prediction)
    if cfg.model.unet_key_embedding:
        mc.unet = dataclasses.replace(mc.unet, key_embedding=True)
    if cfg.model.first_stage_uri is not None:
        mc = with_taef2(mc, cfg.dataset.image_size)
    if cfg.model.farm_keyed:
        mc.farm = dataclasses.replace(mc.farm, num_keys=len(keys))
    if cfg.model.farm_skips or cfg.model.farm_residual or cfg.model.farm_context:
        mc.farm = dataclasses.replace(
            mc.farm, skips=cfg.model.farm_skips, residual=cfg.model.farm_residual, context=cfg.model.farm_context
        )
    if cfg.model.farm_pixel_mask:
        mc.farm = dataclasses.replace(mc.farm, mask_detail=mc.downsample_factor**2)
    return mc


def _local_dir(uri: str, storage: StorageConfig | None, field: str, cache: Path, marker: str) -> Path:
    """A local directory holding ``uri``: a local path as is, an ``s3://`` folder copied once into ``cache``
    (complete when ``marker`` is there; it is copied last)."""
    if not uri.startswith("s3://"):
        _, path = st.filesystem(uri, storage)
        if not Path(path).is_dir():
            raise FileNotFoundError(f"model.{field}: {uri} is not a directory")
        return Path(path)
    target = cache / hashlib.sha256(uri.encode()).hexdigest()[:24]
    if not (target / marker).is_file():
        st.get_dir(uri, target, storage)
    return target


def local_base_dir(uri: str, storage: StorageConfig | None = None) -> Path:
    """A local directory holding the base model at ``uri`` (an ``s3://`` base is copied once into a cache)."""
    return _local_dir(uri, storage, "base_model_uri", BASE_CACHE, "model_index.json")


def load_first_stage(uri: str, storage: StorageConfig | None = None) -> TAEF2:
    """The pretrained TAEF2 at ``uri`` (a local folder, or ``s3://`` copied once into a cache), loaded strictly."""
    return TAEF2.from_folder(_local_dir(uri, storage, "first_stage_uri", FIRST_STAGE_CACHE, LICENSE_NAME))


def stage_state_names(model: FastLDM, stage: str) -> list[str]:
    """Names (in ``model.state_dict()``) of the tensors ``stage`` trains and checkpoints."""
    names = list(model.state_dict())
    if stage == "vae":
        return [] if isinstance(model.vae, TAEF2) else [n for n in names if n.startswith("vae.")]
    if stage == "base":
        return [n for n in names if n.startswith(("unet.", "conditioner."))]
    if stage == "fast":
        return list(model.fast_state_dict())
    raise ValueError(f"stage {stage!r} has no FastLDM weights")


def stage_state(model: FastLDM, stage: str) -> dict[str, torch.Tensor]:
    """The tensors of ``stage`` (see :func:`stage_state_names`)."""
    state = model.state_dict()
    return {n: state[n] for n in stage_state_names(model, stage)}


def set_scaling_factor(model: FastLDM, s: float, shift: list[float] | None = None) -> None:
    """z = s · (E(x) − μ): set the latent scaling factor (and TAEF2's channel shift μ, ``shift``) on the model and in
    the first stage's config (saved with the base)."""
    if not s > 0 or s != s:
        raise ValueError(f"latent scaling factor must be a positive number, got {s}")
    if shift is not None and not isinstance(model.vae, TAEF2):
        raise ValueError("a latent shift needs the pretrained TAEF2 first stage (model.first_stage_uri)")
    if isinstance(model.vae, TAEF2):
        mu = None if shift is None else tuple(float(v) for v in shift)
        model.vae.config = dataclasses.replace(model.vae.config, scaling_factor=float(s), latent_shift=mu)  # validates
        model.config.taef2 = dataclasses.replace(model.config.taef2, scaling_factor=float(s), latent_shift=mu)
    else:
        model.vae.register_to_config(scaling_factor=float(s))
        model.config.vae.scaling_factor = float(s)
    model.scaling_factor = float(s)


def recorded_shift(cfg: TrainConfig, done: dict[str, Any]) -> list[float] | None:
    """The channel shift μ stage "vae" recorded (``done``: its ``stages/vae.json``), checked against
    ``model.latent_shift``: the base and FAST stages must train on the latents the run was measured for.

    Raises:
        ValueError: the config asks for a shift the finished stage did not measure, or the other way round.
    """
    shift = done.get("latent_shift")
    if bool(cfg.model.latent_shift) != (shift is not None):
        raise ValueError(
            f"model.latent_shift is {str(cfg.model.latent_shift).lower()} but this run's finished stage 'vae' was "
            f"measured {'with' if shift is not None else 'without'} a channel shift; keep the setting the run started "
            "with, or use another run_name"
        )
    return None if shift is None else [float(v) for v in shift]


def load_stage_weights(model: FastLDM, stage: str, weights: dict[str, torch.Tensor], where: str) -> None:
    """Load ``stage``'s tensors into ``model``; missing, unexpected or mis-shaped tensors are a ValueError."""
    expected = stage_state(model, stage)
    check_state(expected, weights, where)
    model.load_state_dict(weights, strict=False)


def required_stages(cfg: TrainConfig, upto: str | None) -> list[str]:
    """The finished stages whose weights the model at the start of ``upto`` holds (None: the final model).

    From scratch: vae before base, vae + base before fast. On a given base only fast itself counts. The mask stage
    trains its own model from scratch, so it needs none (``stages: [mask]`` is a run of its own).
    """
    if upto == "mask":
        return []
    before = STAGE_ORDER if upto is None else STAGE_ORDER[: STAGE_ORDER.index(upto)]
    owned = ("fast",) if cfg.model.base_model_uri is not None else ("vae", "base", "fast")
    return [s for s in before if s in owned]


def build_model(cfg: TrainConfig, keys: list[str], store: RunStore, upto: str | None) -> FastLDM:
    """The model at the start of stage ``upto``: preset or base + every finished earlier stage (None: all stages).

    Raises:
        CheckpointError / ValueError: an earlier stage's final checkpoint is missing, corrupt or does not match.
    """
    mc = model_config(cfg, keys)
    if cfg.model.base_model_uri is not None:
        model = FastLDM.from_base(local_base_dir(cfg.model.base_model_uri, cfg.storage), mc, seed=cfg.seed)
    elif cfg.model.first_stage_uri is not None:
        first = load_first_stage(cfg.model.first_stage_uri, cfg.storage)
        model = FastLDM.from_scratch(mc, seed=cfg.seed, first_stage=first)
    else:
        model = FastLDM.from_scratch(mc, seed=cfg.seed)
    for stage in required_stages(cfg, upto):
        if stage == "vae" and cfg.model.first_stage_uri is not None:  # pretrained: only the measured scale (+ shift)
            done = store.done("vae")
            set_scaling_factor(model, float(done["scaling_factor"]), recorded_shift(cfg, done))
            continue
        ckpt = store.stage_weights(stage)
        load_stage_weights(model, stage, ckpt.final_weights, f"stage {stage!r} checkpoint {ckpt.uri}")
        if stage == "vae":
            set_scaling_factor(model, float(store.done("vae")["scaling_factor"]))
    return model
