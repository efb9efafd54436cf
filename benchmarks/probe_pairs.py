"""The probe's visible gate: paint real training-third masks on normal images with the production synthesis path, and
compare the painted defects' ring contrast and grain ratio with the real ones', per defect type; draw a contact sheet.

For each defect type, up to ``per_type`` training-third masks (spread over the sorted list) are paired with normal
``train/good`` images (the i-th mask with normal image ``i · ⌊N_good / per_type⌋``), run through exactly what a
synthesis job runs (:func:`~pipelines.synthesize.stages.load_inputs` in the model's frame,
:class:`~pipelines.synthesize.stages.FastSynthesizer` with AIAS-10 + FARM, :func:`~pipelines.synthesize.encode.
encode_and_qc`), and the output's ring contrast and grain ratio (:mod:`benchmarks.quality_contrast`) are measured
at the image's own size; the same masks on their own real images give the reference. The gate of a defect type
passes when both median ratios painted / real lie in [0.5, 2] and the polarity holds: the painted defect is as visible
as a real one, as grainy inside as its surroundings are (a smooth fill teaches a segmenter a cue that real defects
lack), and at least half the painted defects are darker (brighter) than their ring where the real ones' median signed
contrast is darker (brighter) by ``POLARITY_MIN`` grey levels or more. Ring contrast alone is blind to the sign: a
bright blot where real defects are dark pits passes it. The contact sheet has two rows per type: the real defects,
then the painted ones, each cell the centred window around the mask (``cut_around`` with the model's S, margin and zoom)
resized to ``cell`` px, so large masks show whole.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

import numpy as np
import pyarrow as pa

from benchmarks.quality_contrast import Tally
from fast_core import qc
from fast_core.data.layout import load_image, load_mask, read_dataset, split_anomalies
from fast_core.data.transforms import decode_png, encode_png
from fast_core.data.windows import cut_around, cut_image, mask_at
from fast_core.synthesis import SynthesisConfig
from pipelines.manifest import MANIFEST_SCHEMA, row_seed, sample_id_for
from pipelines.model_store import ModelInfo
from pipelines.synthesize.encode import encode_and_qc
from pipelines.synthesize.stages import FastSynthesizer, load_inputs
from pipelines.train.data import defect_key
from pipelines.train.grid import compose

GATE = (0.5, 2.0)  # painted / real median ring contrast (and grain ratio) that passes
POLARITY_MIN = 4.0  # grey levels: real defects whose median signed contrast is smaller have no sign to keep


def probe_rows(
    root: str, model_uri: str, per_type: int
) -> tuple[list[dict[str, Any]], dict[str, list[tuple[int, str]]]]:
    """Manifest rows (normal image, training-third mask) and, per key, (row index, real image of that row's mask)."""
    split = split_anomalies(read_dataset(root).records)
    good = sorted(split.train_good, key=lambda r: str(r.image_path))
    if not good:
        raise ValueError(f"{root}: no train/good image to paint on")
    by_key: dict[str, list[Any]] = defaultdict(list)
    for r in split.gen_train:
        if r.mask_path is not None:
            by_key[defect_key(r)].append(r)
    rows, real = [], {}
    for key, records in sorted(by_key.items()):
        records = sorted(records, key=lambda r: str(r.image_path))
        picks = records[:: max(1, len(records) // per_type)][:per_type]
        real[key] = [(len(rows) + i, str(r.image_path)) for i, r in enumerate(picks)]
        stride = max(1, len(good) // per_type)
        for i, r in enumerate(picks):
            sid = sample_id_for(r.category, r.defect_type, i)
            rows.append(
                {
                    "sample_id": sid,
                    "category": r.category,
                    "defect_type": r.defect_type,
                    "image_uri": str(good[(i * stride) % len(good)].image_path),
                    "mask_uri": str(r.mask_path),
                    "mask_png": None,
                    "mask_source": f"real:{r.mask_path.stem}",
                    "prompt": key,
                    "seed": row_seed(0, sid),
                    "model_uri": model_uri,
                }
            )
    return rows, real


def _window_cell(image: np.ndarray, mask: np.ndarray, cell: int, info: ModelInfo) -> np.ndarray:
    """The model's centred window (side ≥ S) around ``mask`` in ``image`` (H, W[, 3]), resized to ``cell``."""
    cut = cut_around(image, mask, info.image_size, info.image_channels, info.window_margin, info.window_zoom)
    out = cut_image(cut.native, cut.window, cell)
    return out[0] if info.image_channels == 1 else out.transpose(1, 2, 0)


def _compare(real: list[float], painted: list[float], digits: int) -> dict[str, float | None]:
    """Real and painted medians and their ratio painted / real (None where a side is empty or the real one is 0)."""
    r = statistics.median(real) if real else None
    p = statistics.median(painted) if painted else None
    ratio = p / r if p is not None and r else None
    return {
        "real_median": None if r is None else round(r, digits),
        "painted_median": None if p is None else round(p, digits),
        "ratio": None if ratio is None else round(ratio, 3),
    }


def _passes(ratio: float | None) -> bool:
    return ratio is not None and GATE[0] <= ratio <= GATE[1]


def _polarity(real: list[float], painted: list[float]) -> dict[str, Any]:
    """Median signed contrast of the real and painted defects, the share of painted ones on the real median's side
    (None when the real median is within ``POLARITY_MIN`` of 0 or a side is empty), and whether the polarity holds
    (that share ≥ 1/2; it holds trivially when there is no sign to keep)."""
    r = statistics.median(real) if real else None
    p = statistics.median(painted) if painted else None
    share = None
    if r is not None and abs(r) >= POLARITY_MIN and painted:
        share = sum(1 for v in painted if v * r > 0) / len(painted)
    return {
        "real_median": None if r is None else round(r, 2),
        "painted_median": None if p is None else round(p, 2),
        "same_sign_share": None if share is None else round(share, 3),
        "passes": share is None or share >= 0.5,
    }


def _paint(
    rows: list[dict[str, Any]], model_uri: str, info: ModelInfo, threads: int, sampler: SynthesisConfig | None
) -> dict[str, Any]:
    """The manifest ``rows`` through exactly what a synthesis job runs: the encoded batch (``image_png``,
    ``mask_png``, ``status`` per row)."""
    table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
    pending = pa.table(
        {"sample_id": [r["sample_id"] for r in rows], "row": list(range(len(rows))), "shard": [0] * len(rows)}
    )
    batch = load_inputs(
        table,
        pending=pending,
        image_size=info.image_size,
        image_channels=info.image_channels,
        keys=list(info.keys),
        frame=info.frame,
        window_margin=info.window_margin,
        window_zoom=info.window_zoom,
    )
    synth = FastSynthesizer(model_uri=model_uri, sampler=sampler or SynthesisConfig(nfe=10), num_cpus=threads)
    return encode_and_qc(synth(batch), qc_cfg=qc.QCConfig(min_mask_area_px=1))


def key_swap(
    model_uri: str,
    info: ModelInfo,
    root: str,
    per_type: int = 8,
    threads: int = 2,
    sampler: SynthesisConfig | None = None,
) -> dict[str, Any]:
    """Does the defect key steer what is painted? The probe's masks of every type painted under every defect key
    of the dataset, each mask with its own row's seed under every key (the same noise, only the key differs).

    Returns ``signed[mask type][key]``, the median signed contrast (grey levels) of that type's masks painted under
    that key; ``key_spread[mask type]`` = max − min over the keys (what the key moves) and ``type_spread[key]`` =
    max − min over the mask types (what the mask and its place move). A key spread far below the type spread means
    the model paints by mask, not by key.
    """
    rows, real_paths = probe_rows(root, model_uri, per_type)
    keys = sorted(real_paths)
    swapped = [
        {**row, "sample_id": f"{row['sample_id']}-as-{k}".replace("/", "_"), "prompt": k} for k in keys for row in rows
    ]
    out = _paint(swapped, model_uri, info, threads, sampler)
    mode = "L" if info.image_channels == 1 else "RGB"
    tallies = {k: Tally() for k in keys}
    for j, row in enumerate(swapped):
        if out["status"][j] == "":
            mask_type = rows[j % len(rows)]["prompt"]
            tallies[row["prompt"]].add(
                mask_type, decode_png(out["image_png"][j], mode), decode_png(out["mask_png"][j]) > 0
            )
    signed = {
        t: {k: round(statistics.median(tallies[k].signed[t]), 2) for k in keys if tallies[k].signed[t]} for t in keys
    }
    return {
        "pairs_per_type": per_type,
        "signed": signed,
        "key_spread": {t: round(max(v.values()) - min(v.values()), 2) for t, v in signed.items() if v},
        "type_spread": {
            k: round(max(vals) - min(vals), 2) for k in keys if (vals := [signed[t][k] for t in keys if k in signed[t]])
        },
    }


def paint_and_compare(
    model_uri: str,
    info: ModelInfo,
    root: str,
    per_type: int = 8,
    cell: int = 96,
    threads: int = 2,
    sampler: SynthesisConfig | None = None,
) -> tuple[dict[str, Any], bytes]:
    """(per-key ring contrast and grain ratio of painted vs real and the gate, contact sheet PNG) — see the module
    docstring. ``sampler``: how the pairs are painted (default: AIAS-10 with FARM, unguided)."""
    rows, real_paths = probe_rows(root, model_uri, per_type)
    out = _paint(rows, model_uri, info, threads, sampler)
    real, painted = Tally(), Tally()
    sheet: list[list[np.ndarray]] = []
    rejected: dict[str, str] = {}
    mode = "L" if info.image_channels == 1 else "RGB"
    for key, paths in real_paths.items():
        real_cells, fake_cells = [], []
        for j, path in paths:
            mask = load_mask(rows[j]["mask_uri"])
            image = load_image(path, mode)
            real.add(key, image, mask_at(mask, *image.shape[:2]))
            real_cells.append(_window_cell(image, mask, cell, info))
            if out["status"][j] != "":
                rejected[rows[j]["sample_id"]] = str(out["status"][j])
                continue
            fake, label = decode_png(out["image_png"][j], mode), decode_png(out["mask_png"][j]) > 0
            painted.add(key, fake, label)
            fake_cells.append(_window_cell(fake, label, cell, info))
        sheet += [real_cells, fake_cells]
    per_key = {}
    for key in real_paths:
        contrast = _compare(real.contrast[key], painted.contrast[key], 2)
        grain = _compare(real.grain[key], painted.grain[key], 3)
        polarity = _polarity(real.signed[key], painted.signed[key])
        per_key[key] = {
            **contrast,
            "grain": grain,
            "polarity": polarity,
            "passes": _passes(contrast["ratio"]) and _passes(grain["ratio"]) and polarity["passes"],
        }
    result = {
        "pairs_per_type": per_type,
        "per_defect_type": per_key,
        "all_pass": all(v["passes"] for v in per_key.values()),
        "rejected": rejected,
    }
    return result, encode_png(compose(sheet))
