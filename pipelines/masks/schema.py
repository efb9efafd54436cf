"""Row schemas of a mask-stage output (the layout :mod:`pipelines.manifest`'s ``shards`` source reads).

``data/part-*.parquet``: one accepted mask per row, ``mask`` = ``struct<bytes: binary, path: string>`` (PNG, 0/255
grey) with ``path`` the side file ``masks/<category>/<defect>/<sample_id>_mask.png`` relative to the output root.
``rejected/part-*.parquet``: one rejected plan row per row with its stage and reason (and the mask PNG when one was
made, so a rejection can be looked at); ``rejected/real-masks.parquet``: the real masks that could not be used.
"""

from __future__ import annotations

import pyarrow as pa

MASK_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

DATA_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("category", pa.string()),
        ("defect_type", pa.string()),
        ("mask", MASK_STRUCT),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("source", pa.string()),  # augment | diffusion | real
        ("source_mask", pa.string()),  # stem of the real mask it derives from ("" for diffusion)
        ("seed", pa.int64()),
        ("mask_area", pa.int64()),  # anomaly pixels
        ("area_fraction", pa.float64()),
        ("num_components", pa.int32()),  # 8-connected
        ("bbox_aspect", pa.float64()),  # bounding-box width / height
        ("run_id", pa.string()),
    ],
    metadata={b"huggingface": b'{"info": {"features": {"mask": {"_type": "Image"}}}}'},
)

REJECTED_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("category", pa.string()),
        ("defect_type", pa.string()),
        ("source", pa.string()),
        ("source_mask", pa.string()),
        ("stage", pa.string()),  # real | generate | filter
        ("reason", pa.string()),  # a fast_core.masks.REASONS entry, a REAL_REASONS entry or "generate_failed"
        ("detail", pa.string()),
        ("mask_png", pa.binary()),  # the generated mask when there is one
    ]
)

REAL_REJECTED_FILE = "rejected/real-masks.parquet"
STAGE_REAL, STAGE_GENERATE, STAGE_FILTER = "real", "generate", "filter"
GENERATE_FAILED = "generate_failed"


def mask_path(category: str, defect_type: str, sample_id: str) -> str:
    """``masks/<category>/<defect>/<sample_id>_mask.png`` (the path :mod:`pipelines.manifest` looks for)."""
    return f"masks/{category}/{defect_type}/{sample_id}_mask.png"


def sample_id_for(category: str, defect_type: str, index: int) -> str:
    """``f"{category}__{defect}__m{index:06d}"``.

    >>> sample_id_for("tile", "crack", 7)
    'tile__crack__m000007'
    """
    return f"{category}__{defect_type}__m{index:06d}"
