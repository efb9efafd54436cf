"""Report of the quality benchmark: the targets of FAST_SPEC §8 / the issue, markdown tables and the mIoU bar chart.

Metric definitions (from ``fastgen evaluate``'s ``metrics.json``): per pixel, thresholded at 0.5, accumulated over
the whole test set (the last 2/3 of each defect type plus every ``test/good`` image) at the segmenter's input size.
anomaly IoU = TP / (TP + FP + FN); background IoU likewise for the normal class; mIoU = their mean; aAcc = pixel
accuracy; mAcc = anomaly-pixel recall TP / (TP + FN); pixel AUROC / AP from the segmenter's probabilities.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

#: Row order of every table and of the chart.
METHOD_ORDER = (
    "fast",
    "fast_no_farm",
    "ddpm",
    "ddim",
    "cutpaste",
    "cutpaste_scar",
    "perlin",
    "real_third",
    "real_third_fast",
)
BASELINES = ("cutpaste", "cutpaste_scar", "perlin")
COLUMNS = (
    ("miou", "mIoU"),
    ("anomaly_iou", "anomaly IoU"),
    ("background_iou", "background IoU"),
    ("aacc", "aAcc"),
    ("macc", "mAcc (recall)"),
    ("pixel_auroc", "pixel AUROC"),
    ("pixel_ap", "pixel AP"),
)


def method_label(name: str, ddpm_nfe: int) -> str:
    """Human-readable name of a training set."""
    return {
        "fast": "FAST (AIAS-10 + FARM)",
        "fast_no_farm": "FAST w/o FARM (AIAS-10)",
        "ddpm": f"DDPM-{ddpm_nfe} (same model)",
        "ddim": "DDIM-50 (same model)",
        "cutpaste": "CutPaste",
        "cutpaste_scar": "CutPaste-Scar",
        "perlin": "DRAEM-style Perlin",
        "real_third": "real third only",
        "real_third_fast": "real third + FAST",
    }[name]


def anomaly_pairs(method: dict[str, Any]) -> int:
    """Anomalous training pairs of one segmenter (every source but the normal images with empty masks)."""
    return sum(n for source, n in method["train"]["pairs"].items() if source != "normal")


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100.0 * x:.2f}"


def _miou(report: dict[str, Any], name: str) -> float | None:
    method = report["methods"].get(name)
    return None if method is None else method["overall"]["miou"]


def targets(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The issue's three targets, in mIoU points (None when a needed method was not run or is nan)."""
    fast, no_farm, ddpm = _miou(report, "fast"), _miou(report, "fast_no_farm"), _miou(report, "ddpm")
    baselines = [v for v in (_miou(report, b) for b in BASELINES) if v is not None]

    def points(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else round(100.0 * (a - b), 2)

    best = max(baselines) if baselines else None
    gap = points(fast, best)
    farm = points(fast, no_farm)
    sampler = points(fast, ddpm)
    return {
        "fast_minus_best_baseline": {"points": gap, "target": ">= +5", "met": None if gap is None else gap >= 5.0},
        "fast_minus_no_farm": {"points": farm, "target": "> 0", "met": None if farm is None else farm > 0.0},
        "fast_minus_ddpm": {
            "points": sampler,
            "target": "abs <= 1",
            "met": None if sampler is None else abs(sampler) <= 1.0,
        },
    }


def _count(n: int, noun: str) -> str:
    """``"1 type"``, ``"5 types"``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def render_markdown(report: dict[str, Any]) -> str:
    """results.md: provenance, the overall table, anomaly IoU per defect type, the targets and the timings."""
    nfe = report["preset_settings"]["ddpm_nfe"]
    names = [m for m in METHOD_ORDER if m in report["methods"]]
    lines = [
        f"## {report['dataset']} — preset `{report['preset']}`",
        "",
        f"- command: `{report['command']}`",
        f"- commit: `{report['commit']}`, date {report['date']}, machine: {report['machine']['platform']}",
        f"- generator: `{report['model_uri'] or '(none)'}`; {report['pairs_per_defect']} pairs per defect type "
        f"({_count(len(report['defect_types']), 'type')}); segmenter {report['preset_settings']['seg_steps']} "
        f"steps × batch {report['preset_settings']['seg_batch']} at {report['preset_settings']['seg_size']} px, "
        "seed fixed",
        "- metrics in %, pooled over the whole test set (held-out 2/3 of each defect type + all test/good)",
        "",
        "| training set | anomaly pairs | " + " | ".join(label for _, label in COLUMNS) + " |",
        "|---|---:|" + "---:|" * len(COLUMNS),
    ]
    for m in names:
        overall = report["methods"][m]["overall"]
        pairs = anomaly_pairs(report["methods"][m])
        cells = " | ".join(_pct(overall.get(key)) for key, _ in COLUMNS)
        lines.append(f"| {method_label(m, nfe)} | {pairs} | {cells} |")
    for m, error in report.get("failed", {}).items():
        lines.append(f"| {method_label(m, nfe)} | 0 | " + " | ".join("–" for _ in COLUMNS) + " |")
        lines.append(f"<!-- {m}: {error} -->")
    defects = report["defect_types"]
    lines += ["", "Anomaly IoU (%) per defect type (test anomaly images of that type):", ""]
    lines.append("| training set | " + " | ".join(d.split("/", 1)[1] for d in defects) + " | mean |")
    lines.append("|---|" + "---:|" * (len(defects) + 1))
    for m in names:
        per = report["methods"][m]["per_defect_type"]
        cells = " | ".join(_pct(per.get(d, {}).get("anomaly_iou")) for d in defects)
        mean = report["methods"][m]["mean_over_defect_types"].get("anomaly_iou")
        lines.append(f"| {method_label(m, nfe)} | {cells} | {_pct(mean)} |")
    contrast = report.get("ring_contrast", {})
    if contrast:
        lines += ["", "Median ring contrast (grey levels, |mean in mask − mean in the 3-px ring around it|):", ""]
        lines.append("| pairs of | " + " | ".join(d.split("/", 1)[1] for d in defects) + " |")
        lines.append("|---|" + "---:|" * len(defects))
        for m in ("real_third", *[n for n in METHOD_ORDER if n in contrast and n != "real_third"]):
            per = contrast.get(m, {}).get("median_per_defect_type", {})
            cells = " | ".join("–" if per.get(d) is None else f"{per[d]:.1f}" for d in defects)
            lines.append(
                f"| {'real defects (training third)' if m == 'real_third' else method_label(m, nfe)} | {cells} |"
            )
    lines += ["", "| target | mIoU points | goal | met |", "|---|---:|---|---|"]
    for key, t in report["targets"].items():
        value = "–" if t["points"] is None else f"{t['points']:+.2f}"
        met = "–" if t["met"] is None else ("yes" if t["met"] else "no")
        lines.append(f"| {key.replace('_', ' ')} | {value} | {t['target']} | {met} |")
    timing = ", ".join(f"{k} {v:.0f}" for k, v in report["timing_s"].items())
    lines += ["", f"Wall seconds: {timing}.", ""]
    return "\n".join(lines)


def render_miou_chart(report: dict[str, Any], path: Path) -> Path:
    """A horizontal bar chart of overall mIoU (%) by training set, as a PNG (PIL only)."""
    nfe = report["preset_settings"]["ddpm_nfe"]
    names = [m for m in METHOD_ORDER if m in report["methods"]]
    values = [_miou(report, m) for m in names]
    row, left, width, top = 34, 230, 420, 46
    image = Image.new("RGB", (left + width + 90, top + row * len(names) + 20), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    draw.text((10, 10), f"mIoU (%) by training set: {report['dataset']}, preset {report['preset']}", fill="black")
    finite = [v for v in values if v is not None and np.isfinite(v)]
    low = 100.0 * min(finite + [0.5]) - 5.0  # mIoU of an all-background prediction is ~50 %: start the axis near it
    low = max(0.0, min(low, 45.0))
    for i, (m, v) in enumerate(zip(names, values, strict=True)):
        y = top + i * row
        draw.text((10, y + 8), method_label(m, nfe), fill="black", font=font)
        if v is None or not np.isfinite(v):
            draw.text((left, y + 8), "n/a", fill="gray", font=font)
            continue
        length = max(1, round(width * (100.0 * v - low) / (100.0 - low)))
        colour = (200, 60, 40) if m.startswith("fast") or m == "real_third_fast" else (90, 110, 160)
        draw.rectangle([left, y + 4, left + length, y + row - 6], fill=colour)
        draw.text((left + length + 6, y + 8), f"{100.0 * v:.2f}", fill="black", font=font)
    draw.text((left, top + row * len(names) + 4), f"axis from {low:.0f} % to 100 %", fill="gray", font=font)
    image.save(path)
    return path
