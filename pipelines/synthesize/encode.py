"""The last Ray Data stage of synthesis, ``encode_and_qc`` (CPU tasks), and the batch columns every stage shares.

    … ──► FastSynthesizer (actor pool) ──► encode_and_qc (CPU tasks) ──► shard writer

It lives apart from :mod:`pipelines.synthesize.stages` and imports no torch or diffusers (only numpy, Pillow and
``fast_core``'s stored-form helpers): Ray runs it in task worker processes, and a fresh one imports the function's
module before its first block. With the generator's imports that took about 5 s on two cores, on the critical path of
the first committed shard; without them it takes a fraction of a second.
"""

from __future__ import annotations

import numpy as np

from fast_core import qc
from fast_core.data.png import decode_png, encode_png, to_uint8_chw
from fast_core.data.windows import Window, paste_window

Batch = dict[str, np.ndarray]

STAGE_LOAD, STAGE_SYNTH, STAGE_QC = "load", "synthesize", "qc"
# Metadata columns carried from the manifest to the writer (manifest name → batch name).
META_COLUMNS = {
    "sample_id": "sample_id",
    "category": "category",
    "defect_type": "defect_type",
    "prompt": "prompt",
    "seed": "seed",
    "image_uri": "source_image",
    "mask_source": "mask_source",
}
PASS_COLUMNS = (*META_COLUMNS.values(), "row", "shard", "status", "stage", "detail")


def encode_and_qc(batch: Batch, *, qc_cfg: qc.QCConfig) -> Batch:
    """Ray stage 3 (CPU task): QC each synthesized pair and encode it as PNGs (deterministic bytes).

    Grayscale outputs (C = 1) are written as L PNGs, RGB as RGB. ``mask_area`` = Σ [M > 0] of the S × S label.
    """
    n = len(batch["status"])
    out: Batch = {name: np.array(batch[name], copy=True) for name in PASS_COLUMNS}
    out["nfe"] = np.asarray(batch["nfe"], dtype=np.int32)
    out["image_png"] = np.full(n, b"", dtype=object)
    out["mask_png"] = np.full(n, b"", dtype=object)
    out["mask_area"] = np.zeros(n, dtype=np.int64)
    out["width"] = np.zeros(n, dtype=np.int32)
    out["height"] = np.zeros(n, dtype=np.int32)
    for i in np.flatnonzero(out["status"] == ""):
        image, mask = batch["image"][i], batch["mask"][i]
        if "window" in batch:
            image, mask = _paste_back(batch, i)
        change = None  # measured in the model frame, where the generator painted
        if qc_cfg.min_change > 0 and "image_in" in batch:
            change = qc.mean_change(batch["image"][i], batch["image_in"][i], batch["mask"][i])
        rejection = qc.check_output(
            image,
            mask,
            finite=bool(batch["finite"][i]),
            latent_mask_empty=bool(batch["latent_mask_empty"][i]),
            cfg=qc_cfg,
            change=change,
        )
        if rejection is not None:
            out["status"][i], out["stage"][i], out["detail"][i] = rejection.reason, STAGE_QC, rejection.detail
            continue
        out["image_png"][i] = encode_png(image[..., 0] if image.shape[-1] == 1 else image)
        out["mask_png"][i] = encode_png(mask)
        out["mask_area"][i] = qc.mask_area(mask)
        out["height"][i], out["width"][i] = mask.shape
    return out


def _paste_back(batch: Batch, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Window frame: (native image with the generated window pasted inside the label (H, W, C), label (H, W) in
    {0, 255}) of row ``i``; every pixel outside the label is the native image's. With a ``window_in`` column (residual
    paste) only the window's change is carried to native size (:func:`~fast_core.data.windows.paste_window`)."""
    channels = batch["image"].shape[-1]
    native = decode_png(batch["native_png"][i], "L" if channels == 1 else "RGB")
    label = decode_png(batch["native_mask_png"][i], "L") > 0
    y0, x0, side = (int(v) for v in batch["window"][i])
    reference = batch["window_in"][i].transpose(2, 0, 1) if "window_in" in batch else None
    pasted = paste_window(
        to_uint8_chw(native, channels), batch["image"][i].transpose(2, 0, 1), label, Window(y0, x0, side), reference
    )
    return np.ascontiguousarray(pasted.transpose(1, 2, 0)), label.astype(np.uint8) * 255
