"""The frozen base LDM of FAST: VAE/UNet configs, from-scratch builders, and loading/saving in the diffusers layout.

A base model directory follows the diffusers layout of ``CompVis/ldm-text2im-large-256`` (FAST_SPEC §6)::

    model_index.json
    vqvae/      AutoencoderKL            config.json + diffusion_pytorch_model.safetensors
    taef2/      TAEF2 (instead of vqvae) config.json + encoder/decoder.safetensors + LICENSE   (pretrained first stage)
    unet/       UNet2DConditionModel     config.json + diffusion_pytorch_model.safetensors
    scheduler/  DDIMScheduler            scheduler_config.json (the training noise schedule)
    bert/       LDMBertModel             config.json + model.safetensors       (pretrained variant)
    tokenizer/  BertTokenizer            vocab.txt + tokenizer_config.json      (pretrained variant)
    prompt_encoder/ LearnedPromptEncoder config.json + model.safetensors       (from-scratch variant)

A base holds either ``bert`` + ``tokenizer`` (a pretrained text encoder, conditioned by textual inversion) or
``prompt_encoder`` (trained from scratch together with the UNet). :func:`load_base_model` detects which one from
``model_index.json``. Weights are read only from safetensors files (``use_safetensors=True``); pickled ``.bin`` weights
are refused with a message saying to convert them. Missing or corrupt files raise errors that name the file.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from fast_core.configbase import check_choices, from_dict, to_dict
from fast_core.models.conditioning import LearnedPromptEncoder, PromptEncoderConfig
from fast_core.models.taef2 import TAEF2

logger = logging.getLogger(__name__)

MODEL_INDEX = "model_index.json"
PROMPT_ENCODER_WEIGHTS = "model.safetensors"
CONFIG_NAME = "config.json"

# The noise schedule FAST trains and samples with (FAST_SPEC §1); a base must declare the same one.
TRAINING_SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
}
# The scheduler of the CompVis LDM pipeline (DDIM over the schedule above).
DEFAULT_SCHEDULER_CONFIG: dict[str, Any] = {
    **TRAINING_SCHEDULE,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "prediction_type": "epsilon",
}


def _first(value: int | Sequence[int]) -> int:
    """An int config value that diffusers may also store per block (a list): the first entry."""
    return int(value) if isinstance(value, int) else int(value[0])


@dataclass(kw_only=True)
class VAEConfig:
    """Keyword arguments of the diffusers ``AutoencoderKL`` (the LDM's first stage); latents are ``h = H / 2^(n-1)``.

    The downsampling factor is ``2 ** (len(block_out_channels) - 1)``: 4 blocks give the f8 autoencoder of the LDM.
    """

    image_channels: int = 3  # input/output channels: 3 for RGB, 1 for grayscale datasets
    latent_channels: int = 4  # C of the latent z
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)  # one encoder/decoder block per entry (kl-f8)
    layers_per_block: int = 2  # ResNet layers per block
    norm_num_groups: int = 32  # GroupNorm groups; must divide every block width
    scaling_factor: float = 0.18215  # z = scaling_factor · posterior mean, so z has roughly unit variance
    sample_size: int = 256  # nominal image size H = W (diffusers metadata; any multiple of the factor works)

    def __post_init__(self) -> None:
        check_choices(self)
        self.block_out_channels = tuple(self.block_out_channels)
        if self.image_channels not in (1, 3):
            raise ValueError(f"VAEConfig.image_channels must be 1 or 3, got {self.image_channels}")
        if not self.block_out_channels or any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(
                f"VAEConfig.block_out_channels {self.block_out_channels} must be non-empty multiples of "
                f"norm_num_groups ({self.norm_num_groups})"
            )
        if self.scaling_factor <= 0:
            raise ValueError(f"VAEConfig.scaling_factor must be > 0, got {self.scaling_factor}")

    @property
    def downsample_factor(self) -> int:
        """f = H / h, the image-to-latent size ratio."""
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def from_model(cls, vae: AutoencoderKL) -> VAEConfig:
        """The config of a built or loaded ``AutoencoderKL``."""
        c = vae.config
        return cls(
            image_channels=int(c.in_channels),
            latent_channels=int(c.latent_channels),
            block_out_channels=tuple(c.block_out_channels),
            layers_per_block=int(c.layers_per_block),
            norm_num_groups=int(c.norm_num_groups),
            scaling_factor=float(c.scaling_factor),
            sample_size=_first(c.sample_size),
        )


@dataclass(kw_only=True)
class UNetConfig:
    """Keyword arguments of the diffusers ``UNet2DConditionModel`` (in/out channels come from the VAE latent), plus
    what it is fed (``conditioning``) and what it predicts (``prediction``).

    ``conditioning`` "inpaint" [ours] widens the input to 2C + 1 channels: z_t ‖ m ‖ (1 − m) ⊙ z_0, the latent mask and
    the clean background outside it (as Stable Diffusion's inpainting UNet), so the UNet knows where the defect goes
    and what surrounds it; "inpaint_px" [ours] adds the pixel mask folded into the latent grid, unshuffle_f(M) (f²
    channels: cell (i, j) carries the f × f pixels it covers), so the UNet also knows where inside each masked cell
    the defect lies; "none" is the LDM's C-channel input.

    Note: diffusers' ``attention_head_dim`` is, for this UNet class, the *number of heads* per attention block (a
    legacy name kept for the LDM checkpoints; the CompVis LDM uses 8 heads).
    """

    sample_size: int = 32  # nominal latent size h = w
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)  # widths per resolution
    layers_per_block: int = 2  # ResNet (+ transformer) layers per down block
    cross_attention_dim: int = 1280  # width D of the conditioning tokens (the text encoder's hidden size)
    attention_head_dim: int = 8  # number of attention heads (diffusers' legacy name)
    norm_num_groups: int = 32  # GroupNorm groups; must divide every block width
    down_block_types: tuple[str, ...] = (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    )
    up_block_types: tuple[str, ...] = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
    # extra input channels: none; m ‖ (1 − m) ⊙ z_0 (inpaint); and unshuffle_f(M) as well (inpaint_px)
    conditioning: Literal["none", "inpaint", "inpaint_px"] = "none"
    # what the network outputs: ε (FAST_SPEC §1) or v = √ᾱ_t ε − √(1−ᾱ_t) z_0 [ours]; stored as the base's scheduler
    # prediction_type, and FastLDM.unet_eps turns v̂ into ε̂ for everything downstream
    prediction: Literal["epsilon", "v_prediction"] = "epsilon"
    # [ours] one learned vector per defect key added to the timestep embedding (diffusers' num_class_embeds, the
    # prompt encoder's key order), so the key scales and shifts every ResNet block; without it the key reaches the
    # UNet only through cross-attention, which the cpu_small UNet has at its two coarsest levels only
    key_embedding: bool = False

    def __post_init__(self) -> None:
        check_choices(self)
        if not isinstance(self.key_embedding, bool):
            raise ValueError(f"UNetConfig.key_embedding must be true or false, got {self.key_embedding!r}")
        self.block_out_channels = tuple(self.block_out_channels)
        self.down_block_types = tuple(self.down_block_types)
        self.up_block_types = tuple(self.up_block_types)
        n = len(self.block_out_channels)
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ValueError(
                f"UNetConfig: down_block_types ({len(self.down_block_types)}) and up_block_types "
                f"({len(self.up_block_types)}) need one entry per block_out_channels entry ({n})"
            )
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(
                f"UNetConfig.block_out_channels {self.block_out_channels} must be multiples of "
                f"norm_num_groups ({self.norm_num_groups})"
            )

    @classmethod
    def from_model(cls, unet: UNet2DConditionModel) -> UNetConfig:
        """The config of a built or loaded ``UNet2DConditionModel`` (in = 2 · out + 1 channels: ``inpaint``; more:
        ``inpaint_px``, whose f² extra channels the model checks against its first stage's f; a class embedding:
        ``key_embedding``); the network does not record its ``prediction``, which the base's scheduler config carries
        (default epsilon)."""
        c = unet.config
        extra = int(c.in_channels) - (2 * int(c.out_channels) + 1)
        return cls(
            conditioning="none" if extra < 0 else "inpaint" if extra == 0 else "inpaint_px",
            sample_size=_first(c.sample_size),
            block_out_channels=tuple(c.block_out_channels),
            layers_per_block=_first(c.layers_per_block),
            cross_attention_dim=_first(c.cross_attention_dim),
            attention_head_dim=_first(c.attention_head_dim),
            norm_num_groups=int(c.norm_num_groups),
            down_block_types=tuple(c.down_block_types),
            up_block_types=tuple(c.up_block_types),
            key_embedding=c.get("num_class_embeds") is not None,
        )


def build_vae(cfg: VAEConfig) -> AutoencoderKL:
    """A randomly initialised ``AutoencoderKL`` of shape ``cfg`` (initialisation uses torch's global RNG)."""
    n = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=cfg.image_channels,
        out_channels=cfg.image_channels,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block,
        act_fn="silu",
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_num_groups,
        sample_size=cfg.sample_size,
        scaling_factor=cfg.scaling_factor,
    )


def first_stage_factor(first_stage: nn.Module) -> int:
    """f = H / h of a built first stage: TAEF2's configured factor, or 2^(levels − 1) for a KL VAE (as
    :attr:`VAEConfig.downsample_factor`)."""
    if isinstance(first_stage, TAEF2):
        return first_stage.config.downsample_factor
    return 2 ** (len(first_stage.config.block_out_channels) - 1)


def unet_in_channels(cfg: UNetConfig, latent_channels: int, factor: int) -> int:
    """C for a plain UNet, 2C + 1 for an ``inpaint`` one (z_t ‖ m ‖ (1 − m) ⊙ z_0), 2C + 1 + f² for an ``inpaint_px``
    one (… ‖ unshuffle_f(M)); f = ``factor``, the first stage's H / h.

    >>> [unet_in_channels(UNetConfig(conditioning=c), 32, 8) for c in ("none", "inpaint", "inpaint_px")]
    [32, 65, 129]
    """
    if cfg.conditioning == "none":
        return latent_channels
    return 2 * latent_channels + 1 + (factor * factor if cfg.conditioning == "inpaint_px" else 0)


def build_unet(cfg: UNetConfig, latent_channels: int, factor: int, num_keys: int = 0) -> UNet2DConditionModel:
    """A randomly initialised ``UNet2DConditionModel`` of shape ``cfg`` on ``latent_channels``-channel latents at
    1/``factor`` of the image size; with ``cfg.key_embedding``, one class embedding per key (``num_keys`` >= 1)."""
    if cfg.key_embedding and num_keys < 1:
        raise ValueError(f"UNetConfig.key_embedding needs the number of keys (>= 1), got {num_keys}")
    return UNet2DConditionModel(
        sample_size=cfg.sample_size,
        in_channels=unet_in_channels(cfg, latent_channels, factor),
        out_channels=latent_channels,
        down_block_types=cfg.down_block_types,
        up_block_types=cfg.up_block_types,
        block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block,
        cross_attention_dim=cfg.cross_attention_dim,
        attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=cfg.norm_num_groups,
        num_class_embeds=num_keys if cfg.key_embedding else None,
    )


@dataclass
class BaseComponents:
    """The parts of a base LDM, with one conditioning source: ``text_encoder`` + ``tokenizer``, or ``prompt_encoder``.

    Attributes:
        vae: the first-stage autoencoder (a trained ``AutoencoderKL`` or the pretrained :class:`TAEF2`).
        unet: the ε- or v-prediction UNet (``scheduler_config['prediction_type']``).
        scheduler_config: the training noise schedule (DDIMScheduler kwargs).
        text_encoder: a pretrained text encoder (LDMBertModel), or None.
        tokenizer: its tokenizer, or None.
        prompt_encoder: a from-scratch :class:`LearnedPromptEncoder`, or None.
    """

    vae: AutoencoderKL | TAEF2
    unet: UNet2DConditionModel
    scheduler_config: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_SCHEDULER_CONFIG))
    text_encoder: nn.Module | None = None
    tokenizer: Any = None
    prompt_encoder: LearnedPromptEncoder | None = None

    def __post_init__(self) -> None:
        has_text = self.text_encoder is not None or self.tokenizer is not None
        if has_text == (self.prompt_encoder is not None):
            raise ValueError(
                "BaseComponents needs exactly one conditioning source: text_encoder + tokenizer (pretrained) "
                "or prompt_encoder (from scratch)"
            )
        if has_text and (self.text_encoder is None or self.tokenizer is None):
            raise ValueError("BaseComponents: a pretrained text encoder needs both text_encoder and tokenizer")

    @property
    def kind(self) -> str:
        """``"pretrained_text"`` (text encoder + tokenizer) or ``"scratch"`` (learned prompt encoder)."""
        return "scratch" if self.prompt_encoder is not None else "pretrained_text"


def build_base_components(
    vae: VAEConfig,
    unet: UNetConfig,
    prompt_encoder: PromptEncoderConfig,
    seed: int = 0,
    first_stage: TAEF2 | None = None,
) -> BaseComponents:
    """A randomly initialised from-scratch base: VAE, UNet and a :class:`LearnedPromptEncoder`.

    With a pretrained ``first_stage`` (TAEF2) no VAE is built: the UNet works on that first stage's latents.

    diffusers initialises its modules from torch's global RNG, so the builds run inside ``torch.random.fork_rng``
    seeded with ``seed``: the same seed gives the same weights, and the caller's global RNG state is untouched.
    The modules come back in eval mode, as :func:`load_base_model` returns them.
    """
    if prompt_encoder.dim != unet.cross_attention_dim:
        raise ValueError(
            f"prompt_encoder.dim ({prompt_encoder.dim}) must equal unet.cross_attention_dim "
            f"({unet.cross_attention_dim}): the prompt tokens are the UNet's cross-attention context"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae_model = build_vae(vae) if first_stage is None else first_stage
        unet_model = build_unet(
            unet, int(vae_model.config.latent_channels), first_stage_factor(vae_model), len(prompt_encoder.keys)
        )
    generator = torch.Generator().manual_seed(seed + 1)
    encoder = LearnedPromptEncoder(prompt_encoder, generator=generator)
    return BaseComponents(
        vae=vae_model.eval(),
        unet=unet_model.eval(),
        prompt_encoder=encoder.eval(),
        scheduler_config={**DEFAULT_SCHEDULER_CONFIG, "prediction_type": unet.prediction},
    )


# loading helpers


def _check_dir(folder: Path, what: str) -> None:
    if not folder.is_dir():
        raise FileNotFoundError(f"base model: the {what} folder {folder} is missing")


def _check_weights(folder: Path, what: str, expected: str) -> Path:
    """Return ``folder/expected`` after checking that it exists, is a readable safetensors file and is not a pickle."""
    _check_dir(folder, what)
    config = folder / CONFIG_NAME
    if not config.is_file():
        raise FileNotFoundError(f"base model: {config} is missing (the {what} config)")
    weights = folder / expected
    if not weights.is_file():
        pickles = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.ckpt"))
        if pickles:
            raise ValueError(
                f"base model: {folder} holds only pickled PyTorch weights ({', '.join(pickles)}); this project never "
                f"unpickles weights. Convert them to safetensors first (load once in a trusted environment and call "
                f"save_pretrained(..., safe_serialization=True)), so that {weights.name} exists"
            )
        raise FileNotFoundError(f"base model: {weights} is missing (the {what} weights)")
    check_safetensors(weights, "base model")
    return weights


def check_safetensors(path: Path, owner: str) -> None:
    """Raise ``ValueError`` naming ``path`` when its safetensors header is unreadable (corrupt or truncated file)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except Exception as exc:  # any header error means a corrupt or truncated file
        raise ValueError(f"{owner}: {path} is not a valid safetensors file ({exc})") from exc


def read_json(path: Path, owner: str = "base model") -> dict[str, Any]:
    """Read a JSON object; a missing file, invalid JSON or a non-object is an error naming ``path``."""
    if not path.is_file():
        raise FileNotFoundError(f"{owner}: {path} is missing")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{owner}: {path} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{owner}: {path} must hold a JSON object")
    return data


def _wrap_load(what: str, folder: Path, loader: Any) -> Any:
    """Call ``loader()``; re-raise any failure as a ValueError that names the component folder."""
    try:
        return loader()
    except (FileNotFoundError, ValueError):
        raise
    except Exception as exc:  # library errors become one clear message naming the folder
        raise ValueError(f"base model: could not load the {what} from {folder}: {exc}") from exc


PREDICTIONS = ("epsilon", "v_prediction")  # what a base UNet may output (scheduler ``prediction_type``)


def _check_schedule(config: dict[str, Any], path: Path) -> None:
    bad = {k: config.get(k) for k, v in TRAINING_SCHEDULE.items() if config.get(k, v) != v}
    if config.get("prediction_type", "epsilon") not in PREDICTIONS:
        bad["prediction_type"] = config.get("prediction_type")
    if bad:
        raise ValueError(
            f"base model: {path} declares {bad}, but FAST trains and samples with {TRAINING_SCHEDULE} and epsilon "
            f"(FAST_SPEC §1) or v prediction; this base model is not compatible"
        )


def check_state(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], where: str) -> None:
    """Raise ``ValueError`` naming the missing, unexpected and mis-shaped tensors of ``state`` against ``expected``."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k}: {tuple(state[k].shape)} stored, {tuple(v.shape)} expected"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        raise ValueError(
            f"{where}: tensors do not match the model; missing {missing}, unexpected {unexpected}, "
            f"shape mismatches {shapes}"
        )


def load_prompt_encoder(folder: str | Path) -> LearnedPromptEncoder:
    """Load a :class:`LearnedPromptEncoder` saved by :func:`save_prompt_encoder` (config.json + model.safetensors)."""
    folder = Path(folder)
    weights = _check_weights(folder, "prompt_encoder", PROMPT_ENCODER_WEIGHTS)
    cfg = from_dict(PromptEncoderConfig, read_json(folder / CONFIG_NAME), "prompt_encoder/config.json")
    encoder = LearnedPromptEncoder(cfg)
    state = load_file(str(weights))
    check_state(encoder.state_dict(), state, f"base model: {weights} (against prompt_encoder/config.json)")
    encoder.load_state_dict(state)
    return encoder


def save_prompt_encoder(encoder: LearnedPromptEncoder, folder: str | Path) -> None:
    """Write ``encoder`` as ``folder/config.json`` + ``folder/model.safetensors``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_NAME).write_text(json.dumps(to_dict(encoder.config), indent=2) + "\n")
    state = {k: v.detach().to("cpu").contiguous() for k, v in encoder.state_dict().items()}
    save_file(state, str(folder / PROMPT_ENCODER_WEIGHTS), metadata={"format": "pt"})


def load_base_model(
    path: str | Path, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> BaseComponents:
    """Load a base LDM from a local diffusers-layout directory (see the module docstring).

    Args:
        path: the directory holding ``model_index.json``.
        device: where to place the modules (None: CPU).
        dtype: floating dtype of the modules (None: as stored).

    Returns:
        The components, every module in eval mode.

    Raises:
        FileNotFoundError: a file or folder is missing (named in the message).
        ValueError: a file is corrupt, holds only pickled weights, or declares an incompatible noise schedule.
    """
    from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import LDMBertModel
    from transformers import BertTokenizer

    root = Path(path)
    _check_dir(root, "base model")
    index = read_json(root / MODEL_INDEX)
    first = "taef2" if "taef2" in index else "vqvae"
    for name in (first, "unet", "scheduler"):
        if name not in index:
            raise ValueError(f"base model: {root / MODEL_INDEX} does not list the {name!r} component")

    vae_dir, unet_dir, sched_dir = root / first, root / "unet", root / "scheduler"
    _check_dir(vae_dir, first)
    if first == "vqvae":
        _check_weights(vae_dir, "vqvae", "diffusion_pytorch_model.safetensors")
    _check_weights(unet_dir, "unet", "diffusion_pytorch_model.safetensors")
    _check_dir(sched_dir, "scheduler")
    scheduler_config = read_json(sched_dir / "scheduler_config.json")
    _check_schedule(scheduler_config, sched_dir / "scheduler_config.json")
    vae = _wrap_load(
        first,
        vae_dir,
        (lambda: TAEF2.from_folder(vae_dir))
        if first == "taef2"
        else (lambda: AutoencoderKL.from_pretrained(vae_dir, use_safetensors=True, low_cpu_mem_usage=False)),
    )
    unet = _wrap_load(
        "unet",
        unet_dir,
        lambda: UNet2DConditionModel.from_pretrained(unet_dir, use_safetensors=True, low_cpu_mem_usage=False),
    )

    text_encoder = tokenizer = prompt_encoder = None
    if "bert" in index:
        bert_dir, tok_dir = root / "bert", root / "tokenizer"
        _check_weights(bert_dir, "bert", "model.safetensors")
        _check_dir(tok_dir, "tokenizer")
        if not (tok_dir / "vocab.txt").is_file() and not (tok_dir / "tokenizer.json").is_file():
            raise FileNotFoundError(f"base model: {tok_dir / 'vocab.txt'} is missing (the tokenizer vocabulary)")
        text_encoder = _wrap_load(
            "bert", bert_dir, lambda: LDMBertModel.from_pretrained(bert_dir, use_safetensors=True)
        )
        tokenizer = _wrap_load("tokenizer", tok_dir, partial(BertTokenizer.from_pretrained, tok_dir))
    elif "prompt_encoder" in index:
        prompt_encoder = load_prompt_encoder(root / "prompt_encoder")
    else:
        raise ValueError(
            f"base model: {root / MODEL_INDEX} lists neither 'bert' (+ 'tokenizer') nor 'prompt_encoder'; "
            f"one conditioning source is required"
        )

    components = BaseComponents(
        vae=vae,
        unet=unet,
        scheduler_config=scheduler_config,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        prompt_encoder=prompt_encoder,
    )
    for module in (vae, unet, text_encoder, prompt_encoder):
        if module is None:
            continue
        if device is not None or dtype is not None:
            module.to(device=device, dtype=dtype)
        module.eval()
    logger.info("loaded base model %s (%s conditioning)", root, components.kind)
    return components


def save_base_model(components: BaseComponents, path: str | Path) -> Path:
    """Write ``components`` in the diffusers layout (safetensors weights, JSON configs); returns the directory.

    The pretrained variant writes ``bert`` + ``tokenizer`` and a ``model_index.json`` the diffusers
    ``LDMTextToImagePipeline`` can read; the from-scratch variant writes ``prompt_encoder`` instead.
    """
    import diffusers

    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    first = "taef2" if isinstance(components.vae, TAEF2) else "vqvae"
    if first == "taef2":
        components.vae.save(root / "taef2")
    else:
        components.vae.save_pretrained(root / "vqvae", safe_serialization=True)
    components.unet.save_pretrained(root / "unet", safe_serialization=True)
    DDIMScheduler.from_config(components.scheduler_config).save_pretrained(root / "scheduler")
    index: dict[str, Any] = {"_diffusers_version": diffusers.__version__}
    if components.prompt_encoder is not None:
        index["_class_name"] = "FastBaseLDM"
        save_prompt_encoder(components.prompt_encoder, root / "prompt_encoder")
        index["prompt_encoder"] = ["fast_core", "LearnedPromptEncoder"]
    else:
        index["_class_name"] = "LDMTextToImagePipeline"
        components.text_encoder.save_pretrained(root / "bert", safe_serialization=True)
        components.tokenizer.save_pretrained(root / "tokenizer")
        index["bert"] = ["latent_diffusion", "LDMBertModel"]
        index["tokenizer"] = ["transformers", "BertTokenizer"]
    index.update(
        {
            "scheduler": ["diffusers", "DDIMScheduler"],
            "unet": ["diffusers", "UNet2DConditionModel"],
        }
    )
    index[first] = ["fast_core", "TAEF2"] if first == "taef2" else ["diffusers", "AutoencoderKL"]
    (root / MODEL_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    logger.info("saved base model (%s conditioning) to %s", components.kind, root)
    return root
