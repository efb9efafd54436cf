"""Builders of tiny randomly initialised FAST models for tests: 32×32 images, 4×8×8 latents, no downloaded weights.

Two base variants, both built from the real diffusers/transformers classes and saved/loaded through the real code:

* from scratch: AutoencoderKL + UNet2DConditionModel + LearnedPromptEncoder (:func:`tiny_base_model_dir`);
* pretrained-text layout: the same plus a tiny ``LDMBertModel`` and a ``BertTokenizer`` over a small vocabulary file
  written into the test's tmp dir (:func:`tiny_ldmbert_base_dir`), as in ``CompVis/ldm-text2im-large-256``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from fast_core.models.base import BaseComponents, build_base_components, save_base_model
from fast_core.models.ldm import FastLDM, FastModelConfig, tiny_config
from fast_core.models.taef2 import LICENSE_NAME, PTH_NAMES, TAEF2
from pipelines.model_store import ModelInfo, publish_model
from pipelines.storage import StorageConfig

TINY_KEYS = ("good", "tiny/crack", "tiny/scratch")
# A BERT vocabulary just large enough for "Anomaly *", the init word "defect" and a few test prompts.
TINY_VOCAB = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "anomaly", "*", "defect", "crack", "good", "scratch", "a")


def tiny_fast_config(
    image_channels: int = 3,
    keys: tuple[str, ...] = TINY_KEYS,
    inpaint: bool | str = False,
    prediction: str = "epsilon",
) -> FastModelConfig:
    """The ``tiny`` preset with the test keys (``inpaint``: the UNet takes z ‖ m ‖ (1 − m) z_bg, or a conditioning name
    such as "inpaint_px"; ``prediction``: what the UNet outputs, ε or v)."""
    cfg = tiny_config(keys=keys, image_channels=image_channels)
    if inpaint:
        cfg.unet = dataclasses.replace(cfg.unet, conditioning="inpaint" if inpaint is True else inpaint)
    cfg.unet = dataclasses.replace(cfg.unet, prediction=prediction)
    return cfg


def tiny_base_components(image_channels: int = 3, seed: int = 0) -> BaseComponents:
    """A from-scratch tiny base (VAE, UNet, LearnedPromptEncoder) initialised from ``seed``."""
    cfg = tiny_fast_config(image_channels)
    return build_base_components(cfg.vae, cfg.unet, cfg.prompt_encoder, seed=seed)


def tiny_base_model_dir(tmp_path: Path, image_channels: int = 3, seed: int = 0) -> Path:
    """Save a from-scratch tiny base under ``tmp_path/base`` (diffusers layout) and return the directory."""
    return save_base_model(tiny_base_components(image_channels, seed), Path(tmp_path) / "base")


def tiny_fast_ldm(
    image_channels: int = 3, seed: int = 0, inpaint: bool | str = False, prediction: str = "epsilon"
) -> FastLDM:
    """A tiny FastLDM (from-scratch base + FARM + Adaptor), all weights from ``seed``; builds in well under a second."""
    return FastLDM.from_scratch(tiny_fast_config(image_channels, inpaint=inpaint, prediction=prediction), seed=seed)


def write_taef2_folder(folder: Path, seed: int = 0) -> Path:
    """A randomly initialised TAEF2 written as the published files (two ``.pth`` state dicts + ``LICENSE``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TAEF2()
    for part, name in PTH_NAMES.items():
        torch.save(getattr(model, part).state_dict(), folder / name)
    (folder / LICENSE_NAME).write_text("MIT License (test copy)\n")
    return folder


def write_tiny_vocab(folder: Path) -> Path:
    """Write ``vocab.txt`` (one BERT word piece a line) into ``folder`` and return its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "vocab.txt"
    path.write_text("\n".join(TINY_VOCAB) + "\n")
    return path


def tiny_ldmbert_components(tmp_path: Path, image_channels: int = 3, seed: int = 0) -> BaseComponents:
    """A tiny base in the pretrained-text layout: VAE, UNet, a 1-layer LDMBertModel (d_model 16) and a BertTokenizer."""
    from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import LDMBertConfig, LDMBertModel
    from transformers import BertTokenizer

    scratch = tiny_base_components(image_channels, seed)
    vocab = write_tiny_vocab(Path(tmp_path) / "vocab")
    tokenizer = BertTokenizer.from_pretrained(vocab.parent)  # reads vocab.txt; lower-cases like bert-base-uncased
    bert_cfg = LDMBertConfig(
        vocab_size=len(TINY_VOCAB),
        max_position_embeddings=16,
        encoder_layers=1,
        encoder_ffn_dim=32,
        encoder_attention_heads=2,
        head_dim=8,
        d_model=scratch.unet.config.cross_attention_dim,
        dropout=0.0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 3)
        bert = LDMBertModel(bert_cfg).eval()
    return BaseComponents(vae=scratch.vae, unet=scratch.unet, text_encoder=bert, tokenizer=tokenizer)


def tiny_ldmbert_base_dir(tmp_path: Path, image_channels: int = 3, seed: int = 0) -> Path:
    """Save :func:`tiny_ldmbert_components` under ``tmp_path/ldmbert_base`` and return the directory."""
    components = tiny_ldmbert_components(tmp_path, image_channels, seed)
    return save_base_model(components, Path(tmp_path) / "ldmbert_base")


def publish_tiny_model(
    uri: str,
    storage: StorageConfig | None = None,
    image_channels: int = 3,
    keys: tuple[str, ...] = TINY_KEYS,
    seed: int = 0,
    frame: str = "global",
    window_zoom: float = 1.0,
    untrained_keys: tuple[str, ...] = (),
    window_level: float | None = None,
) -> str:
    """Publish a tiny model (32 px, random weights from ``seed``) at ``uri`` with the real publishing code; ``frame``
    ``"window"`` marks it as trained on native-resolution windows (synthesis then works in windows, at
    ``window_zoom``, scaled to the grey level ``window_level`` when given); ``untrained_keys`` marks keys as never
    trained on (e.g. ``"good"`` of a defect-only run)."""
    model = FastLDM.from_scratch(tiny_fast_config(image_channels, keys), seed=seed)
    info = ModelInfo(
        image_size=32,
        image_channels=image_channels,
        keys=list(keys),
        preset="tiny",
        run_id="tiny-test",
        frame=frame,  # type: ignore[arg-type]
        window_zoom=window_zoom,
        window_level=window_level,
        untrained_keys=list(untrained_keys),
    )
    return publish_model(model, uri, info, storage)
