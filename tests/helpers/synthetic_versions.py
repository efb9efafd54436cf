"""Tiny synthesized dataset versions in the DESIGN §4 layout, written with pyarrow, for tests of their consumers.

``data/part-<k:05d>.parquet`` with ``image``/``mask`` as ``struct<bytes, path>`` PNG, the PNG side files under
``images/`` and ``masks/``, ``stats.json`` and ``_SUCCESS`` last. Images are dark noise with one bright rectangle;
the mask marks exactly that rectangle, so a segmenter can learn the pairs.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fast_core.data.transforms import encode_png
from pipelines.synthesize.schema import DATA_SCHEMA


def bright_square_pair(
    size: tuple[int, int], mode: Literal["L", "RGB"], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A dark noisy uint8 image with one bright rectangle, and the bool mask of that rectangle."""
    h, w = size
    img = rng.integers(20, 70, (h, w), dtype=np.uint8)
    mask = np.zeros((h, w), bool)
    rh, rw = int(rng.integers(h // 6, h // 3)), int(rng.integers(w // 6, w // 3))
    y, x = int(rng.integers(0, h - rh)), int(rng.integers(0, w - rw))
    img[y : y + rh, x : x + rw] = rng.integers(200, 250, (rh, rw), dtype=np.uint8)
    mask[y : y + rh, x : x + rw] = True
    return (np.repeat(img[..., None], 3, axis=2) if mode == "RGB" else img), mask


def make_synthetic_version(
    out: str | Path,
    category: str = "widget",
    defect_types: Sequence[str] = ("scratch",),
    n_per_defect: int = 6,
    size: tuple[int, int] = (32, 40),
    mode: Literal["L", "RGB"] = "L",
    rows_per_part: int = 4,
    seed: int = 0,
    corrupt_images: Collection[str] = (),
    corrupt_masks: Collection[str] = (),
    success: bool = True,
    normals_root: str | Path | None = None,
) -> Path:
    """Write a dataset version under ``out`` and return it.

    Args:
        corrupt_images / corrupt_masks: sample_ids whose image / mask PNG bytes are truncated in the Parquet rows.
        success: write ``_SUCCESS`` (False leaves an incomplete version).
        normals_root: also write the normal images the rows name, ``<normals_root>/<category>/train/good/<i:03d>.png``
            (flat grey, one per index, shared by the defect types), and name them by absolute path in
            ``source_image``; None: ``source_image`` is the relative path of a file that does not exist.
    """
    root = Path(out)
    rng = np.random.default_rng(seed)
    rows = []
    for defect in defect_types:
        for i in range(n_per_defect):
            sid = f"{category}__{defect}__{i:06d}"
            img, mask = bright_square_pair(size, mode, rng)
            img_png, mask_png = encode_png(img), encode_png(mask)
            img_rel = f"images/{category}/{defect}/{sid}.png"
            mask_rel = f"masks/{category}/{defect}/{sid}_mask.png"
            for rel, data in ((img_rel, img_png), (mask_rel, mask_png)):
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                (root / rel).write_bytes(data)
            if sid in corrupt_images:
                img_png = img_png[: len(img_png) // 2]
            if sid in corrupt_masks:
                mask_png = mask_png[: len(mask_png) // 2]
            source = f"{category}/train/good/{i:03d}.png"
            if normals_root is not None:
                normal = Path(normals_root).absolute() / source
                normal.parent.mkdir(parents=True, exist_ok=True)
                normal.write_bytes(encode_png(np.full(size, 40 + i, np.uint8)))
                source = str(normal)
            rows.append(
                {
                    "sample_id": sid,
                    "category": category,
                    "defect_type": defect,
                    "image": {"bytes": img_png, "path": img_rel},
                    "mask": {"bytes": mask_png, "path": mask_rel},
                    "width": size[1],
                    "height": size[0],
                    "mask_area": int(mask.sum()),
                    "seed": i,
                    "source_image": source,
                    "mask_source": f"real:{i:03d}_mask",
                    "sampler": "aias",
                    "nfe": 10,
                    "model_uri": "tests://tiny",
                    "run_id": "test-run",
                }
            )
    (root / "data").mkdir(parents=True, exist_ok=True)
    for k in range(0, len(rows), rows_per_part):
        table = pa.Table.from_pylist(rows[k : k + rows_per_part], schema=DATA_SCHEMA)
        pq.write_table(table, root / "data" / f"part-{k // rows_per_part:05d}.parquet")
    (root / "stats.json").write_text(json.dumps({"rows": len(rows)}) + "\n")
    if success:
        (root / "_SUCCESS").write_text("")
    return root


#: The folders of a synthesized version whose bytes depend only on the manifest, model and content config.
CONTENT_DIRS = ("data", "rejected", "images", "masks", "_commits")


def content_bytes(out: Path) -> dict[str, bytes]:
    """Relative path → bytes of every file under :data:`CONTENT_DIRS` of the dataset version at ``out`` (temporary
    dot-files excluded): what two runs of the same job must agree on byte for byte."""
    return {
        str(p.relative_to(out)): p.read_bytes()
        for d in CONTENT_DIRS
        for p in sorted((out / d).rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }
