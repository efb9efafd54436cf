"""Ray stage 2 for the baselines: CutPaste, CutPaste-Scar or DRAEM-style Perlin instead of the FAST model.

Same batch contract as :class:`pipelines.synthesize.stages.FastSynthesizer` (rows with ``status != ""`` pass
through), so the load, QC/encode and commit stages are shared and every method's output is a dataset version of
the same schema. A baseline makes its own mask: ``image`` and ``mask`` are both replaced, and ``mask_source``
becomes the generator's name. Each row's randomness is ``np.random.default_rng(row.seed)``: the same manifest row
gives the same bytes wherever it runs.

Perlin textures are, by default, the manifest's normal images ("textures drawn from the dataset's own normal
images"); the texture of a row is drawn uniformly among them with the row's generator, redrawn once when it is the
row's own image. A texture that cannot be read is a row rejection (``input_unreadable``), not a job failure.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch

from fast_core import qc
from fast_core.baselines import CutPaste, CutPasteConfig, PerlinAnomaly
from fast_core.data.transforms import decode_png, to_model_image
from pipelines import storage
from pipelines.storage import StorageConfig
from pipelines.synthesize.stages import STAGE_SYNTH, Batch, to_model_uint8

logger = logging.getLogger(__name__)

TEXTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class TextureUnreadable(Exception):
    """A Perlin texture could not be read or decoded (a row problem: the row is rejected as ``input_unreadable``)."""


def texture_uris(texture_dir: str | None, normal_images: list[str], max_textures: int) -> list[str]:
    """The Perlin texture set: image files of ``texture_dir`` (sorted), else the distinct normal images (sorted).

    Raises:
        ValueError: when the folder does not exist or holds no image file, or there is no texture at all.
    """
    if texture_dir is not None:
        folder = Path(texture_dir)
        if not folder.is_dir():
            raise ValueError(f"baseline.texture_dir = {texture_dir!r} is not a folder")
        found = sorted(str(p.resolve()) for p in folder.rglob("*") if p.suffix.lower() in TEXTURE_SUFFIXES)
        if not found:
            raise ValueError(f"baseline.texture_dir = {texture_dir!r} holds no image ({', '.join(TEXTURE_SUFFIXES)})")
    else:
        found = sorted(set(normal_images))
    if not found:
        raise ValueError("no Perlin texture: the manifest has no normal image and baseline.texture_dir is null")
    return found[:max_textures]


class BaselineSynthesizer:
    """Ray stage 2 (actor, CPU): paint each good row with a baseline generator of :mod:`fast_core.baselines`.

    Args:
        generator: ``"cutpaste"`` (patch), ``"cutpaste_scar"`` or ``"perlin"``.
        image_size: S, the side of the rows' images (the model's size).
        image_channels: C of the rows' images.
        textures: Perlin texture URIs (see :func:`texture_uris`); unused by CutPaste.
        num_cpus: CPUs of this actor (sets torch's thread count for the texture resize).
        storage_cfg: S3 settings for ``s3://`` textures.
    """

    def __init__(
        self,
        *,
        generator: str,
        image_size: int,
        image_channels: int,
        textures: list[str] | None = None,
        num_cpus: float = 1.0,
        storage_cfg: StorageConfig | None = None,
    ) -> None:
        torch.set_num_threads(max(1, math.ceil(num_cpus)))
        if generator == "cutpaste":
            self.cutpaste: CutPaste | None = CutPaste(CutPasteConfig(mode="patch"))
        elif generator == "cutpaste_scar":
            self.cutpaste = CutPaste(CutPasteConfig(mode="scar"))
        elif generator == "perlin":
            self.cutpaste = None
            if not textures:
                raise ValueError("BaselineSynthesizer('perlin') needs at least one texture")
        else:
            raise ValueError(f"unknown baseline generator {generator!r}; valid: cutpaste, cutpaste_scar, perlin")
        self.generator = generator
        self.perlin = PerlinAnomaly()
        self.size, self.channels = image_size, image_channels
        self.textures = list(textures or [])
        self.storage = storage_cfg
        self._cache: dict[str, np.ndarray] = {}
        logger.info("BaselineSynthesizer: %s, %d textures", generator, len(self.textures))

    def _texture(self, uri: str) -> np.ndarray:
        """The texture at ``uri`` decoded and resized to the model geometry, uint8 (S, S, C); cached per actor."""
        if uri not in self._cache:
            mode = "L" if self.channels == 1 else "RGB"
            try:
                image = decode_png(storage.read_bytes(uri, self.storage), mode)  # type: ignore[arg-type]
            except (FileNotFoundError, ValueError) as exc:
                raise TextureUnreadable(f"texture {uri}: {exc}") from exc
            self._cache[uri] = to_model_uint8(to_model_image(image, self.size, self.channels))
        return self._cache[uri]

    def _paint(self, image: np.ndarray, own_uri: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(image_out uint8 (S, S, C), mask bool (S, S)) for one normal image."""
        if self.cutpaste is not None:
            return self.cutpaste.generate(image, rng)
        pick = int(rng.integers(len(self.textures)))
        if self.textures[pick] == own_uri and len(self.textures) > 1:
            pick = int(rng.integers(len(self.textures)))
        return self.perlin.generate(image, rng, texture=self._texture(self.textures[pick]))

    def __call__(self, batch: Batch) -> Batch:
        """Paint the good rows of ``batch``; a row that fails gets ``generator_failed`` or ``input_unreadable``."""
        n = len(batch["status"])
        out = dict(batch)
        for name in ("status", "stage", "detail", "mask_source"):
            out[name] = np.array(batch[name], copy=True)
        out["image"] = np.array(batch["image"], copy=True)
        out["mask"] = np.array(batch["mask"], copy=True)
        out["finite"] = np.ones(n, dtype=bool)
        out["latent_mask_empty"] = np.zeros(n, dtype=bool)
        out["nfe"] = np.zeros(n, dtype=np.int32)
        for i in np.flatnonzero(out["status"] == ""):
            rng = np.random.default_rng(int(batch["seed"][i]))
            try:
                image, mask = self._paint(out["image"][i], str(batch["source_image"][i]), rng)
            except TextureUnreadable as exc:
                out["status"][i], out["stage"][i], out["detail"][i] = qc.INPUT_UNREADABLE, STAGE_SYNTH, str(exc)
                continue
            except (ValueError, RuntimeError) as exc:  # CutPaste: no patch fits; Perlin: no mask in the area bounds
                out["status"][i], out["stage"][i], out["detail"][i] = qc.GENERATOR_FAILED, STAGE_SYNTH, str(exc)
                continue
            out["image"][i] = image
            out["mask"][i] = mask.astype(np.uint8) * 255
            out["mask_source"][i] = self.generator
        return out
