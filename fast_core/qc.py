"""Quality control of synthesized pairs: why a row is rejected, decided from its inputs and its outputs alone.

Every check returns a reason (one of :data:`REASONS`) and a one-line detail, or None when the row passes; nothing here
raises on a bad row, so a pipeline records the reason and goes on. Masks follow the MVTec convention: > 0 = anomaly.

Input checks, on the decoded image and mask at their stored resolution:

* ``mask_empty``          the mask has no anomaly pixel (:func:`check_mask`, what synthesis checks: its mask comes
                          from another image and is resized to the model's frame on its own);
* ``mask_size_mismatch``  mask (H, W) differs from the image's (H, W) (:func:`check_inputs`, for an image and its own
                          mask).

Output checks (:func:`check_output`), on the pasted output x_out = M ⊙ decode(z) + (1 − M) ⊙ x_n and the label M at the
model's size S × S:

* ``output_nonfinite``     x_out had a NaN/inf before quantisation (reported by the synthesizer: uint8 cannot hold it);
* ``latent_mask_empty``    the latent mask m = down(M) had no anomaly cell, so the sampler never saw an anomaly
                           region (rejected only when :attr:`QCConfig.reject_latent_mask_empty`);
* ``output_blank``         x_out is one constant value (max = min over all pixels and channels);
* ``mask_area_too_small``  area(M) = Σ [M > 0] < :attr:`QCConfig.min_mask_area_px` after resizing to S × S;
* ``output_unchanged``     the mean change inside the label, Σ_{M>0} |x_out − x_n| / (C · area(M)) in grey levels,
                           is below :attr:`QCConfig.min_change` [ours]: the generator painted (nearly) nothing where the
                           label says "defect", and a segmenter trained on such a pair learns that defects are
                           invisible. Off (0) by default.

The loaders report ``input_unreadable``, ``mask_unreadable``, ``prompt_unknown`` and ``invalid_row`` with the same
record shape; a baseline generator that cannot paint a row (no CutPaste patch fits, no Perlin mask within the area
bounds) reports ``generator_failed``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

INPUT_UNREADABLE = "input_unreadable"
MASK_UNREADABLE = "mask_unreadable"
MASK_EMPTY = "mask_empty"
MASK_SIZE_MISMATCH = "mask_size_mismatch"
PROMPT_UNKNOWN = "prompt_unknown"
INVALID_ROW = "invalid_row"
LATENT_MASK_EMPTY = "latent_mask_empty"
OUTPUT_NONFINITE = "output_nonfinite"
OUTPUT_BLANK = "output_blank"
MASK_AREA_TOO_SMALL = "mask_area_too_small"
GENERATOR_FAILED = "generator_failed"
OUTPUT_UNCHANGED = "output_unchanged"

REASONS = (
    INPUT_UNREADABLE,
    MASK_UNREADABLE,
    MASK_EMPTY,
    MASK_SIZE_MISMATCH,
    PROMPT_UNKNOWN,
    INVALID_ROW,
    LATENT_MASK_EMPTY,
    OUTPUT_NONFINITE,
    OUTPUT_BLANK,
    MASK_AREA_TOO_SMALL,
    GENERATOR_FAILED,
    OUTPUT_UNCHANGED,
)


@dataclass(kw_only=True)
class QCConfig:
    """Bounds of the output checks."""

    min_mask_area_px: int = 1  # reject when fewer anomaly pixels than this remain in the S × S label
    reject_latent_mask_empty: bool = True  # reject pairs whose mask vanished at latent resolution (nothing synthesized)
    min_change: float = 0.0  # reject when the mean |x_out − x_n| inside the label is below this (grey levels; 0 = off)

    def __post_init__(self) -> None:
        if isinstance(self.min_mask_area_px, bool) or not isinstance(self.min_mask_area_px, int):
            raise ValueError(f"QCConfig.min_mask_area_px must be an integer, got {self.min_mask_area_px!r}")
        if self.min_mask_area_px < 0:
            raise ValueError(f"QCConfig.min_mask_area_px = {self.min_mask_area_px} must be >= 0")
        c = self.min_change
        if isinstance(c, bool) or not isinstance(c, int | float) or not 0 <= c <= 255:
            raise ValueError(f"QCConfig.min_change must be a number of grey levels in [0, 255], got {c!r}")
        self.min_change = float(c)
        if not isinstance(self.reject_latent_mask_empty, bool):
            raise ValueError(
                f"QCConfig.reject_latent_mask_empty must be true or false, got {self.reject_latent_mask_empty!r}"
            )


@dataclass(frozen=True)
class Rejection:
    """Why a row was dropped: ``reason`` is one of :data:`REASONS`; ``detail`` a short human-readable line."""

    reason: str
    detail: str


def mask_area(mask: np.ndarray) -> int:
    """Number of anomaly pixels, Σ [M > 0].

    >>> mask_area(np.array([[0, 255], [255, 0]], np.uint8))
    2
    """
    return int(np.count_nonzero(mask))


def check_mask(mask: np.ndarray) -> Rejection | None:
    """``mask_unreadable`` (not one channel) or ``mask_empty`` for a decoded mask, else None.

    This is the check of synthesis inputs: a manifest pairs a normal image with a mask taken from *another* (defect)
    image, and both are resized to the model's S × S frame on their own, so their stored sizes need not agree.

    >>> check_mask(np.zeros((4, 5), np.uint8)).reason
    'mask_empty'
    >>> check_mask(np.full((4, 5), 255, np.uint8)) is None
    True
    """
    if mask.ndim != 2:
        return Rejection(MASK_UNREADABLE, f"mask must be one channel (H, W), got shape {mask.shape}")
    if mask_area(mask) == 0:
        return Rejection(MASK_EMPTY, f"mask of size {mask.shape[1]}x{mask.shape[0]} has no anomaly pixel")
    return None


def check_inputs(image: np.ndarray, mask: np.ndarray) -> Rejection | None:
    """``mask_empty`` or ``mask_size_mismatch`` for a decoded (H, W[, C]) image and (H', W') mask, else None.

    >>> check_inputs(np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8)).reason
    'mask_empty'
    >>> check_inputs(np.zeros((4, 4), np.uint8), np.full((4, 5), 255, np.uint8)).reason
    'mask_size_mismatch'
    >>> check_inputs(np.zeros((4, 4, 3), np.uint8), np.full((4, 4), 255, np.uint8)) is None
    True
    """
    rejection = check_mask(mask)
    if rejection is not None:
        return rejection
    if tuple(mask.shape[:2]) != tuple(image.shape[:2]):
        return Rejection(
            MASK_SIZE_MISMATCH,
            f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is {image.shape[1]}x{image.shape[0]}",
        )
    return None


def mean_change(image: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> float:
    """Σ_{M>0} |x_out − x_n| / (C · area(M)): the mean absolute change inside the label, in grey levels.

    Args:
        image: x_out as uint8 (S, S[, C]); reference: x_n, the same shape; mask: M (S, S), > 0 = anomaly.

    >>> x = np.zeros((2, 2), np.uint8); y = x.copy(); y[0, 0] = 12
    >>> mean_change(y, x, np.array([[255, 255], [0, 0]], np.uint8))
    6.0
    """
    inside = mask > 0
    if image.shape != reference.shape:
        raise ValueError(f"mean_change: output {image.shape} and input {reference.shape} differ in shape")
    if not inside.any():
        return 0.0
    diff = np.abs(image.astype(np.int16) - reference.astype(np.int16))
    return float(diff[inside].mean())


def check_output(
    image: np.ndarray,
    mask: np.ndarray,
    *,
    finite: bool,
    latent_mask_empty: bool,
    cfg: QCConfig,
    change: float | None = None,
) -> Rejection | None:
    """The first failed output check (order: nonfinite, latent mask, blank, area, change) for one pair, else None.

    Args:
        image: the pasted output x_out as uint8 (S, S[, C]).
        mask: the label M as uint8 (S, S), > 0 = anomaly.
        finite: whether x_out was finite before quantisation.
        latent_mask_empty: whether the latent mask had no anomaly cell.
        cfg: bounds.
        change: :func:`mean_change` of the pair where it was painted; needed when ``cfg.min_change`` > 0.

    >>> ok = np.arange(16, dtype=np.uint8).reshape(4, 4); m = np.full((4, 4), 255, np.uint8)
    >>> check_output(ok, m, finite=True, latent_mask_empty=False, cfg=QCConfig()) is None
    True
    >>> check_output(np.zeros((4, 4), np.uint8), m, finite=True, latent_mask_empty=False, cfg=QCConfig()).reason
    'output_blank'
    >>> check_output(ok, m, finite=True, latent_mask_empty=False, cfg=QCConfig(min_mask_area_px=17)).reason
    'mask_area_too_small'
    >>> check_output(ok, m, finite=True, latent_mask_empty=False, cfg=QCConfig(min_change=2), change=1.5).reason
    'output_unchanged'
    """
    if not finite:
        return Rejection(OUTPUT_NONFINITE, "the synthesized image had NaN or infinite values")
    if latent_mask_empty and cfg.reject_latent_mask_empty:
        return Rejection(
            LATENT_MASK_EMPTY, "the mask has no anomaly cell at latent resolution; nothing was synthesized"
        )
    if image.size == 0 or int(image.max()) == int(image.min()):
        value = int(image.flat[0]) if image.size else 0
        return Rejection(OUTPUT_BLANK, f"the output image is constant (every pixel = {value})")
    area = mask_area(mask)
    if area < cfg.min_mask_area_px:
        return Rejection(
            MASK_AREA_TOO_SMALL,
            f"mask area {area} px at {mask.shape[1]}x{mask.shape[0]} is below qc.min_mask_area_px = "
            f"{cfg.min_mask_area_px}",
        )
    if cfg.min_change > 0:
        if change is None:
            raise ValueError("check_output: qc.min_change > 0 needs the pair's change (mean_change)")
        if change < cfg.min_change:
            return Rejection(
                OUTPUT_UNCHANGED,
                f"the mean change inside the mask is {change:.2f} grey levels, below qc.min_change = "
                f"{cfg.min_change:g}: nothing visible was painted",
            )
    return None
