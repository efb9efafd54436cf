"""Row schemas of a synthesized dataset version (DESIGN.md §4) and the Hugging Face ``datasets`` feature metadata.

``image`` and ``mask`` are ``struct<bytes: binary, path: string>``, the layout of the ``datasets`` ``Image`` feature;
``path`` is the PNG's path relative to the dataset root (the same file exists under ``images/`` / ``masks/``).
The schema metadata carries ``b"huggingface": {"info": {"features": {...}}}`` so ``datasets`` decodes both columns as
images without being told.
"""

from __future__ import annotations

import json

import pyarrow as pa

IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

_COLUMNS: tuple[tuple[str, pa.DataType], ...] = (
    ("sample_id", pa.string()),
    ("category", pa.string()),
    ("defect_type", pa.string()),
    ("image", IMAGE_STRUCT),
    ("mask", IMAGE_STRUCT),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("mask_area", pa.int64()),
    ("seed", pa.int64()),
    ("source_image", pa.string()),
    ("mask_source", pa.string()),
    ("sampler", pa.string()),
    ("nfe", pa.int32()),
    ("model_uri", pa.string()),
    ("run_id", pa.string()),
)


def _hf_features() -> dict[str, dict[str, str]]:
    """``datasets`` Features JSON of the data columns: Image for image/mask, Value(dtype) otherwise."""
    dtypes = {pa.string(): "string", pa.int32(): "int32", pa.int64(): "int64"}
    return {
        name: {"_type": "Image"} if t == IMAGE_STRUCT else {"dtype": dtypes[t], "_type": "Value"}
        for name, t in _COLUMNS
    }


HF_METADATA = {b"huggingface": json.dumps({"info": {"features": _hf_features()}}, sort_keys=True).encode()}

DATA_SCHEMA = pa.schema([pa.field(n, t) for n, t in _COLUMNS], metadata=HF_METADATA)

REJECTED_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("category", pa.string()),
        ("defect_type", pa.string()),
        ("stage", pa.string()),  # load | synthesize | qc
        ("reason", pa.string()),  # one of fast_core.qc.REASONS
        ("detail", pa.string()),
    ]
)


def image_path(category: str, defect_type: str, sample_id: str) -> str:
    """``images/<category>/<defect>/<sample_id>.png`` (MVTec/anomalib folder convention)."""
    return f"images/{category}/{defect_type}/{sample_id}.png"


def mask_path(category: str, defect_type: str, sample_id: str) -> str:
    """``masks/<category>/<defect>/<sample_id>_mask.png``."""
    return f"masks/{category}/{defect_type}/{sample_id}_mask.png"
