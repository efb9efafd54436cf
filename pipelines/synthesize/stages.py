"""The Ray Data stages of synthesis, as plain callables (unit-testable without Ray); the last, CPU-only one is
:mod:`pipelines.synthesize.encode`, which imports no torch.

    manifest rows ──► load_inputs (CPU tasks) ──► FastSynthesizer (actor pool, GPU) ──► encode_and_qc (CPU tasks)

Every row flows through every stage, including rows that failed: a failed row carries ``status`` = its reason (one of
:data:`fast_core.qc.REASONS`), ``stage`` and ``detail``, and later stages pass it on untouched. So each manifest row
reaches the shard writer exactly once, as a pair or as a rejection, which is what lets the writer tell that a shard
is complete. ``status == ""`` means the row is still good.

Batch columns between stages (B rows, model size S, channels C):

* after :func:`load_inputs`: the manifest metadata (``sample_id``, ``category``, ``defect_type``, ``prompt``,
  ``seed``, ``source_image``, ``mask_source``), the row's manifest index ``row`` and ``shard``, ``status``, ``stage``,
  ``detail``, ``image`` uint8 (B, S, S, C) resized as ``to_model_image`` does, ``mask`` uint8 (B, S, S) in {0, 255};
* after :class:`FastSynthesizer` (or the baselines' painter): ``image`` replaced by the pasted output x_out as
  uint8, ``image_in`` the input x_n it started from (for the change check), plus ``finite``, ``latent_mask_empty``
  and ``nfe``; in the window frame with the residual paste also ``window_in`` (the same window, the reference of
  the native-size paste);
* after :func:`encode_and_qc`: ``image`` and ``mask`` replaced by PNG bytes ``image_png`` / ``mask_png``, plus
  ``mask_area``; the arrays are dropped so only bytes travel to the writer.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from fast_core import qc
from fast_core.baselines.realpaste import paste_in_place
from fast_core.data.transforms import decode_png, encode_png, to_model_image, to_model_mask, to_uint8_chw
from fast_core.data.window_level import background_mean, from_level, level_gain, to_level
from fast_core.data.windows import cut_around, cut_image, mask_at
from fast_core.synthesis import SynthesisConfig, synthesize, to_uint8
from pipelines import storage
from pipelines.model_store import load_model
from pipelines.storage import StorageConfig
from pipelines.synthesize.encode import META_COLUMNS, STAGE_LOAD, Batch

logger = logging.getLogger(__name__)


def _safe_name(value: Any) -> bool:
    """Whether ``value`` can be one path segment of the output tree."""
    return (
        isinstance(value, str) and bool(value) and value not in (".", "..") and "/" not in value and "\\" not in value
    )


def to_model_uint8(tensor: torch.Tensor) -> np.ndarray:
    """(C, S, S) float in [−1, 1] from ``to_model_image`` → uint8 (S, S, C): exact inverse of v / 127.5 − 1."""
    return ((tensor + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def _read_image(uri: str, mode: str, storage_cfg: StorageConfig | None) -> np.ndarray:
    """Decode the image at ``uri`` as ``mode``; ``FileNotFoundError``/``ValueError`` for a missing or bad file."""
    return decode_png(storage.read_bytes(uri, storage_cfg), mode)  # type: ignore[arg-type]


def _read_row(
    row: dict[str, Any], channels: int, keys: frozenset[str], storage_cfg: StorageConfig | None
) -> tuple[qc.Rejection | None, np.ndarray | None, np.ndarray | None]:
    """(rejection, image uint8 (H, W[, 3]) as decoded, mask uint8 (H', W')) of one manifest row; None when rejected.

    Missing or undecodable files are row problems (a rejection); storage outages (connection errors) are not and
    propagate, so the task fails and Ray retries it or the job stops with the error.
    """
    for name in ("sample_id", "category", "defect_type"):
        if not _safe_name(row[name]):
            return qc.Rejection(qc.INVALID_ROW, f"{name} = {row[name]!r} cannot name a file"), None, None
    if row["prompt"] not in keys:
        return qc.Rejection(qc.PROMPT_UNKNOWN, f"prompt {row['prompt']!r} is not a key of the model"), None, None
    mode = "L" if channels == 1 else "RGB"
    try:
        image = _read_image(row["image_uri"], mode, storage_cfg)
    except (FileNotFoundError, ValueError) as exc:
        return qc.Rejection(qc.INPUT_UNREADABLE, f"{row['image_uri']}: {exc}"), None, None
    has_uri, has_png = row["mask_uri"] is not None, row["mask_png"] is not None
    if has_uri == has_png:
        return qc.Rejection(qc.MASK_UNREADABLE, "exactly one of mask_uri and mask_png must be set"), None, None
    try:
        mask = _read_image(row["mask_uri"], "L", storage_cfg) if has_uri else decode_png(row["mask_png"], "L")
    except (FileNotFoundError, ValueError) as exc:
        return qc.Rejection(qc.MASK_UNREADABLE, f"{row['mask_uri'] or 'mask_png'}: {exc}"), None, None
    rejection = qc.check_mask(mask)  # the mask is another image's: resized on its own, any size is fine
    if rejection is not None:
        return rejection, None, None
    return None, image, mask


def _reference(
    row: dict[str, Any],
    image: np.ndarray,
    mask: np.ndarray,
    defect_images: dict[str, str],
    channels: int,
    storage_cfg: StorageConfig | None,
) -> tuple[qc.Rejection | None, np.ndarray | None]:
    """(rejection, reference uint8 like ``image``): the row's real defect pasted where its mask lies on ``image``."""
    uri = defect_images.get(str(row["sample_id"]))
    if uri is None:
        detail = (
            f"no defect image is known for the mask of {row['sample_id']} (mask_source {row['mask_source']}); "
            "a reference start needs real ground-truth masks of the manifest's dataset"
        )
        return qc.Rejection(qc.GENERATOR_FAILED, detail), None
    try:
        defect = _read_image(uri, "L" if channels == 1 else "RGB", storage_cfg)
    except (FileNotFoundError, ValueError) as exc:
        return qc.Rejection(qc.INPUT_UNREADABLE, f"defect image {uri}: {exc}"), None
    label = mask_at(mask, *image.shape[:2])
    return None, paste_in_place(image, defect, label)


def _global_inputs(image: np.ndarray, mask: np.ndarray, size: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Global frame: image uint8 (S, S, C) resized as ``to_model_image`` does, mask uint8 (S, S) in {0, 255}."""
    x = to_model_uint8(to_model_image(image, size, channels))
    m = (to_model_mask(mask, size)[0].numpy() > 0.5).astype(np.uint8) * 255
    return x, m


def load_inputs(
    batch: pa.Table,
    *,
    pending: pa.Table,
    image_size: int,
    image_channels: int,
    keys: list[str],
    storage_cfg: StorageConfig | None = None,
    frame: str = "global",
    window_margin: float = 0.25,
    window_zoom: float = 1.0,
    defect_images: dict[str, str] | None = None,
) -> Batch:
    """Ray stage 1 (CPU task): keep the rows of pending shards, fetch and decode their inputs, resize to the model.

    Args:
        batch: manifest rows (pyarrow).
        pending: (``sample_id``, ``row``, ``shard``) of every manifest row whose shard is not committed yet; other
            rows are dropped here (their shard is done).
        image_size: S, the model's size.
        image_channels: C, the model's channels (grayscale models take L images).
        keys: the model's defect keys; a row whose ``prompt`` is not one is rejected (``prompt_unknown``).
        storage_cfg: S3 settings for ``s3://`` image and mask URIs.
        frame: ``"global"`` (resize the whole image and mask to S × S) or ``"window"`` (cut an S × S window around
            the mask at the image's own size; the batch then also carries ``window`` (B, 3) int64 = (y0, x0, side)
            and the native image and label as PNG bytes ``native_png`` / ``native_mask_png`` for the paste-back).
        window_margin: the window frame's margin (fast_core.data.windows).
        window_zoom: the window frame's zoom: the smallest window is ⌈S / zoom⌉ pixels (fast_core.data.windows).
        defect_images: for a reference start (``sampler.start: reference``): ``sample_id`` → the real defect image
            of the row's mask. The batch then also carries ``reference`` (B, S, S, C) uint8: the input with that
            defect pasted inside the mask (:func:`fast_core.baselines.realpaste.paste_in_place`), cut and resized as
            the input is. A row without a known or readable defect image is rejected (``generator_failed`` /
            ``input_unreadable``).
    """
    idx = pc.index_in(batch.column("sample_id"), value_set=pending.column("sample_id"))
    keep = pc.is_valid(idx)
    batch, idx = batch.filter(keep), idx.filter(keep)
    rows = batch.to_pylist()
    positions = idx.to_numpy(zero_copy_only=False).astype(np.int64)
    n, s, c = len(rows), image_size, image_channels
    out: Batch = {name: np.empty(n, dtype=object) for name in (*META_COLUMNS.values(), "status", "stage", "detail")}
    out["seed"] = np.zeros(n, dtype=np.int64)
    out["row"] = pending.column("row").to_numpy()[positions].astype(np.int64)
    out["shard"] = pending.column("shard").to_numpy()[positions].astype(np.int64)
    out["image"] = np.zeros((n, s, s, c), dtype=np.uint8)
    out["mask"] = np.zeros((n, s, s), dtype=np.uint8)
    windowed = frame == "window"
    if defect_images is not None:
        out["reference"] = np.zeros((n, s, s, c), dtype=np.uint8)
    if windowed:
        out["window"] = np.zeros((n, 3), dtype=np.int64)
        out["native_png"] = np.full(n, b"", dtype=object)
        out["native_mask_png"] = np.full(n, b"", dtype=object)
    key_set = frozenset(keys)
    for i, row in enumerate(rows):
        for src, dst in META_COLUMNS.items():
            out[dst][i] = row[src]
        rejection, image, mask = _read_row(row, c, key_set, storage_cfg)
        if rejection is not None:
            out["status"][i], out["stage"][i], out["detail"][i] = rejection.reason, STAGE_LOAD, rejection.detail
            continue
        assert image is not None and mask is not None
        reference = None
        if defect_images is not None:
            rejection, reference = _reference(row, image, mask, defect_images, c, storage_cfg)
            if rejection is not None:
                out["status"][i], out["stage"][i], out["detail"][i] = rejection.reason, STAGE_LOAD, rejection.detail
                continue
        out["status"][i] = out["stage"][i] = out["detail"][i] = ""
        if not windowed:
            out["image"][i], out["mask"][i] = _global_inputs(image, mask, s, c)
            if reference is not None:
                out["reference"][i] = _global_inputs(reference, mask, s, c)[0]
            continue
        cut = cut_around(image, mask, s, c, window_margin, window_zoom)
        if reference is not None:
            out["reference"][i] = cut_image(to_uint8_chw(reference, c), cut.window, s).transpose(1, 2, 0)
        out["image"][i], out["mask"][i] = cut.image.transpose(1, 2, 0), cut.mask * 255
        out["window"][i] = (cut.window.y0, cut.window.x0, cut.window.side)
        out["native_png"][i] = encode_png(cut.native[0] if c == 1 else cut.native.transpose(1, 2, 0))
        out["native_mask_png"][i] = encode_png(cut.label.astype(np.uint8) * 255)
    return out


class FastSynthesizer:
    """Ray stage 2 (actor): the FAST model, loaded once per actor, run on batches of good rows.

    Each row's randomness comes from ``torch.Generator().manual_seed(row.seed)`` (on the CPU, whatever the device),
    so a row's output does not depend on its batch-mates, the actor, or retries.

    Args:
        model_uri: a published model (:mod:`pipelines.model_store`).
        sampler: the synthesis settings.
        num_gpus: GPUs of this actor; > 0 runs on ``cuda``.
        num_cpus: CPUs of this actor; on CPU it sets torch's thread count (rounded up).
        dtype: ``"float32"``, or ``"float16"``/``"bfloat16"`` on CUDA.
        storage_cfg: S3 settings for an ``s3://`` model.
        cache_dir: local cache for ``s3://`` models.
        kill_after_batches: fault injection (tests): ``os._exit`` on the k-th batch, once per job (``fault_marker``).
        fault_marker: URI of the marker that makes the kill happen once.
    """

    def __init__(
        self,
        *,
        model_uri: str,
        sampler: SynthesisConfig,
        num_gpus: float = 0.0,
        num_cpus: float = 1.0,
        dtype: str = "float32",
        storage_cfg: StorageConfig | None = None,
        cache_dir: str | None = None,
        kill_after_batches: int | None = None,
        fault_marker: str | None = None,
    ) -> None:
        self.device = torch.device("cuda" if num_gpus > 0 else "cpu")
        if self.device.type == "cpu":
            torch.set_num_threads(max(1, math.ceil(num_cpus)))
        self.dtype = getattr(torch, dtype)
        self.sampler = sampler
        self.model, self.info = load_model(model_uri, storage_cfg, device=self.device, cache_dir=cache_dir)
        if self.device.type == "cpu":
            # NHWC weights: the CPU convolutions run in that layout, AIAS-10 in the window frame ~1.08× faster
            # (benchmarks/SPEED.md §1, set-up variants); the same maths in another summation order
            self.model.to(memory_format=torch.channels_last)
        self.storage = storage_cfg
        self.kill_after_batches = kill_after_batches
        self.fault_marker = fault_marker
        self.batches = 0
        logger.info("FastSynthesizer: model %s on %s (%s)", model_uri, self.device, dtype)

    def _maybe_die(self) -> None:
        """Fault injection: exit the actor's process abruptly on the k-th batch, the first time in the job only."""
        if self.kill_after_batches is None or self.batches != self.kill_after_batches or self.fault_marker is None:
            return
        if storage.exists(self.fault_marker, self.storage):
            return
        storage.write_text_atomic(
            self.fault_marker, f"actor pid {os.getpid()} killed on batch {self.batches}\n", self.storage
        )
        logger.warning("fault injection: actor pid %d exits on batch %d", os.getpid(), self.batches)
        os._exit(1)

    def __call__(self, batch: Batch) -> Batch:
        """Synthesize the good rows of ``batch``; rejected rows pass through with zero images."""
        self.batches += 1
        self._maybe_die()
        n = len(batch["status"])
        good = np.flatnonzero(batch["status"] == "")
        out = dict(batch)
        out["finite"] = np.ones(n, dtype=bool)
        out["latent_mask_empty"] = np.zeros(n, dtype=bool)
        out["nfe"] = np.zeros(n, dtype=np.int32)
        if len(good) == 0:
            return out
        channels = self.model.image_channels
        images = torch.stack([to_model_image(batch["image"][i], batch["image"].shape[1], channels) for i in good])
        masks = torch.from_numpy((batch["mask"][good] > 0).astype(np.float32))[:, None]  # (B, 1, S, S)
        keys = [str(batch["prompt"][i]) for i in good]
        generators = [torch.Generator().manual_seed(int(batch["seed"][i])) for i in good]
        references = None
        if self.sampler.start == "reference":
            references = torch.stack(
                [to_model_image(batch["reference"][i], batch["image"].shape[1], channels) for i in good]
            )
        level = self.info.window_level
        if level is not None:  # the model's grey level (fast_core.data.window_level): one gain per window
            gain = torch.tensor(
                [
                    level_gain(level, background_mean(batch["image"][i].transpose(2, 0, 1), batch["mask"][i]))
                    for i in good
                ],
                dtype=torch.float64,
            )
            inputs, images = images, to_level(images, gain)
            references = None if references is None else to_level(references, gain)
        result = synthesize(
            self.model,
            images,
            masks,
            keys,
            self.sampler,
            generators,
            device=self.device,
            dtype=self.dtype,
            references=references,
        )
        x_out = result.images.float().cpu()
        if level is not None:
            x_out = from_level(inputs, images, x_out, gain)
        finite = torch.isfinite(x_out).flatten(1).all(dim=1).numpy()
        image_out = np.array(batch["image"], copy=True)
        image_out[good] = to_uint8(torch.nan_to_num(x_out, nan=0.0, posinf=1.0, neginf=-1.0))
        out["image_in"] = batch["image"]  # x_n, for the change check of encode_and_qc
        if "window" in batch and self.sampler.pastes_change:
            out["window_in"] = batch["image"]  # the reference of the native-size residual paste (encode_and_qc)
        out["image"] = image_out
        out["finite"][good] = finite
        out["latent_mask_empty"][good] = result.latent_mask_empty.cpu().numpy()
        out["nfe"][good] = result.nfe
        return out
