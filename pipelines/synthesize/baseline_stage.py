"""Ray stage 2 for the baselines: CutPaste, CutPaste-Scar, DRAEM-style Perlin or real-defect paste instead of the
FAST model.

Same batch contract as :class:`pipelines.synthesize.stages.FastSynthesizer` (rows with ``status != ""`` pass
through), so the load, QC/encode and commit stages are shared and every method's output is a dataset version of
the same schema. A baseline makes its own mask: ``image`` and ``mask`` are both replaced, and ``mask_source``
becomes the generator's name. Each row's randomness is ``np.random.default_rng(row.seed)``: the same manifest row
gives the same bytes wherever it runs.

Perlin textures are, by default, the manifest's normal images ("textures drawn from the dataset's own normal
images"); the texture of a row is drawn uniformly among them with the row's generator, redrawn once when it is the
row's own image. A texture that cannot be read is a row rejection (``input_unreadable``), not a job failure.

Realpaste pastes the row's own real mask, with the defect image that mask belongs to, onto the row's normal image.
The driver maps each manifest row to its defect image once (:func:`defect_image_uris`: the row's ``mask_uri``, or
for embedded real masks its ``mask_source`` ``real:<mask stem>``, looked up among the ground-truth masks of the
manifest's dataset); the actor loads and resizes the defect image exactly as the normal image is loaded, so image
and mask share the model geometry. A row without a known defect image (e.g. a mask-stage mask) is rejected as
``generator_failed``; a defect image that cannot be read as ``input_unreadable``.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from fast_core import qc
from fast_core.baselines import CutPaste, CutPasteConfig, PerlinAnomaly, RealPaste
from fast_core.data.layout import Layout, read_dataset
from fast_core.data.transforms import decode_png, to_model_image
from pipelines import storage
from pipelines.storage import StorageConfig
from pipelines.synthesize.encode import STAGE_SYNTH, Batch
from pipelines.synthesize.stages import to_model_uint8

logger = logging.getLogger(__name__)

TEXTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
GENERATORS = ("cutpaste", "cutpaste_scar", "perlin", "realpaste")
#: Decoded textures / defect images kept per actor (least recently used dropped first).
CACHE_IMAGES = 512


class InputUnreadable(Exception):
    """A Perlin texture or a realpaste defect image could not be read or decoded (a row problem: the row is rejected
    as ``input_unreadable``)."""


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


def _local_key(uri: str) -> str:
    """A local path made absolute and resolved (as manifests store them); other URIs unchanged."""
    return uri if "://" in uri else str(Path(uri).resolve())


def defect_image_uris(rows: pa.Table, dataset_root: str, layout: Layout = "mvtec") -> dict[str, str]:
    """``sample_id`` → defect image path for each manifest row whose mask is a ground-truth mask of the dataset.

    The dataset at ``dataset_root`` is listed once (:func:`fast_core.data.layout.read_dataset`) and every record with
    a mask maps its mask path to its image path. A row matches by its ``mask_uri`` (both sides resolved), or, for a
    mask embedded as ``mask_png``, by ``mask_source == "real:<mask stem>"`` within its category and defect type
    (what ``fastgen manifest`` writes for real masks). Other rows (mask-stage masks, foreign files) are left out.

    Args:
        rows: manifest rows with ``sample_id``, ``category``, ``defect_type``, ``mask_uri`` and ``mask_source``.
        dataset_root: a local dataset root (the manifest's ``dataset_root``).
        layout: its layout.

    Raises:
        ValueError: when the dataset root cannot be listed.
    """
    try:
        records = read_dataset(dataset_root, layout).records
    except (FileNotFoundError, ValueError) as exc:
        raise ValueError(f"realpaste: cannot list the manifest's dataset {dataset_root!r}: {exc}") from exc
    by_uri: dict[str, str] = {}
    by_stem: dict[tuple[str, str, str], str] = {}
    for r in records:
        if r.mask_path is not None:
            image = str(r.image_path.resolve())
            by_uri[str(r.mask_path.resolve())] = image
            by_stem[(r.category, r.defect_type, f"real:{r.mask_path.stem}")] = image
    out: dict[str, str] = {}
    cols = [rows.column(n).to_pylist() for n in ("sample_id", "category", "defect_type", "mask_uri", "mask_source")]
    for sid, category, defect, mask_uri, source in zip(*cols, strict=True):
        found = by_uri.get(_local_key(mask_uri)) if mask_uri else by_stem.get((category, defect, source))
        if found is not None:
            out[sid] = found
    logger.info("realpaste: %d of %d rows have a known defect image", len(out), rows.num_rows)
    return out


class BaselineSynthesizer:
    """Ray stage 2 (actor, CPU): paint each good row with a baseline generator of :mod:`fast_core.baselines`.

    Args:
        generator: ``"cutpaste"`` (patch), ``"cutpaste_scar"``, ``"perlin"`` or ``"realpaste"``.
        image_size: S, the side of the rows' images (the model's size).
        image_channels: C of the rows' images.
        textures: Perlin texture URIs (see :func:`texture_uris`); unused by the others.
        defect_images: realpaste: ``sample_id`` → defect image URI (see :func:`defect_image_uris`); unused by the
            others.
        num_cpus: CPUs of this actor (sets torch's thread count for the texture resize).
        storage_cfg: S3 settings for ``s3://`` textures and defect images.
    """

    def __init__(
        self,
        *,
        generator: str,
        image_size: int,
        image_channels: int,
        textures: list[str] | None = None,
        defect_images: dict[str, str] | None = None,
        num_cpus: float = 1.0,
        storage_cfg: StorageConfig | None = None,
    ) -> None:
        torch.set_num_threads(max(1, math.ceil(num_cpus)))
        if generator == "cutpaste":
            self.cutpaste: CutPaste | None = CutPaste(CutPasteConfig(mode="patch"))
        elif generator == "cutpaste_scar":
            self.cutpaste = CutPaste(CutPasteConfig(mode="scar"))
        elif generator in ("perlin", "realpaste"):
            self.cutpaste = None
            if generator == "perlin" and not textures:
                raise ValueError("BaselineSynthesizer('perlin') needs at least one texture")
        else:
            raise ValueError(f"unknown baseline generator {generator!r}; valid: {', '.join(GENERATORS)}")
        self.generator = generator
        self.perlin = PerlinAnomaly()
        self.realpaste = RealPaste()
        self.size, self.channels = image_size, image_channels
        self.textures = list(textures or [])
        self.defect_images = dict(defect_images or {})
        self.storage = storage_cfg
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        logger.info(
            "BaselineSynthesizer: %s, %d textures, %d defect images",
            generator,
            len(self.textures),
            len(self.defect_images),
        )

    def _model_image(self, uri: str, what: str) -> np.ndarray:
        """The image at ``uri`` decoded and resized to the model geometry as the load stage does, uint8 (S, S, C);
        cached per actor (``CACHE_IMAGES`` entries)."""
        if uri in self._cache:
            self._cache.move_to_end(uri)
            return self._cache[uri]
        mode = "L" if self.channels == 1 else "RGB"
        try:
            image = decode_png(storage.read_bytes(uri, self.storage), mode)  # type: ignore[arg-type]
        except (FileNotFoundError, ValueError) as exc:
            raise InputUnreadable(f"{what} {uri}: {exc}") from exc
        self._cache[uri] = to_model_uint8(to_model_image(image, self.size, self.channels))
        if len(self._cache) > CACHE_IMAGES:
            self._cache.popitem(last=False)
        return self._cache[uri]

    def _paint(self, batch: Batch, i: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(image_out uint8 (S, S, C), mask bool (S, S)) for row ``i`` of ``batch``."""
        image = batch["image"][i]
        if self.cutpaste is not None:
            return self.cutpaste.generate(image, rng)
        if self.generator == "realpaste":
            sample_id = str(batch["sample_id"][i])
            uri = self.defect_images.get(sample_id)
            if uri is None:
                raise ValueError(
                    f"realpaste: no defect image is known for the mask of {sample_id} (mask_source "
                    f"{batch['mask_source'][i]}); realpaste needs real ground-truth masks of the manifest's dataset"
                )
            defect = self._model_image(uri, "defect image")
            return self.realpaste.generate(image, rng, defect=defect, defect_mask=batch["mask"][i] > 0)
        pick = int(rng.integers(len(self.textures)))
        if self.textures[pick] == str(batch["source_image"][i]) and len(self.textures) > 1:
            pick = int(rng.integers(len(self.textures)))
        return self.perlin.generate(image, rng, texture=self._model_image(self.textures[pick], "texture"))

    def __call__(self, batch: Batch) -> Batch:
        """Paint the good rows of ``batch``; a row that fails gets ``generator_failed`` or ``input_unreadable``."""
        n = len(batch["status"])
        out = dict(batch)
        for name in ("status", "stage", "detail", "mask_source"):
            out[name] = np.array(batch[name], copy=True)
        out["image_in"] = batch["image"]  # x_n, for the change check of encode_and_qc
        out["image"] = np.array(batch["image"], copy=True)
        out["mask"] = np.array(batch["mask"], copy=True)
        out["finite"] = np.ones(n, dtype=bool)
        out["latent_mask_empty"] = np.zeros(n, dtype=bool)
        out["nfe"] = np.zeros(n, dtype=np.int32)
        for i in np.flatnonzero(out["status"] == ""):
            rng = np.random.default_rng(int(batch["seed"][i]))
            try:
                image, mask = self._paint(batch, i, rng)
            except InputUnreadable as exc:
                out["status"][i], out["stage"][i], out["detail"][i] = qc.INPUT_UNREADABLE, STAGE_SYNTH, str(exc)
                continue
            except (ValueError, RuntimeError) as exc:  # no patch fits / no Perlin mask / no known defect image
                out["status"][i], out["stage"][i], out["detail"][i] = qc.GENERATOR_FAILED, STAGE_SYNTH, str(exc)
                continue
            out["image"][i] = image
            out["mask"][i] = mask.astype(np.uint8) * 255
            out["mask_source"][i] = self.generator
        return out
