"""Report of the quality benchmark: the targets (2σ rule, :mod:`benchmarks.quality_stats`), markdown tables with
mean ± std over segmenter seeds, and the mIoU bar chart with error bars.

Metric definitions (from ``fastgen evaluate``'s ``metrics.json``): per pixel, thresholded at 0.5, accumulated over
the whole test set (the last 2/3 of each defect type plus every ``test/good`` image) at the segmenter's input size.
anomaly IoU = TP / (TP + FP + FN); background IoU likewise for the normal class; mIoU = their mean; aAcc = pixel
accuracy; mAcc = anomaly-pixel recall TP / (TP + FN); pixel AUROC / AP from the segmenter's probabilities.
Every cell is the mean over the segmenter seeds ± their sample std (the mean alone for one seed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from benchmarks.quality_stats import compare, not_worse, within

#: Row order of every table and of the chart.
METHOD_ORDER = (
    "fast",
    "fast_no_farm",
    "fast_replace",
    "fast_smooth",
    "fast_no_farm_smooth",
    "fast_routed",
    "fast_no_farm_routed",
    "fast_routed_cell",
    "fast_no_farm_routed_cell",
    "fast_clip",
    "fast_no_farm_clip",
    "fast_farm_early",
    "fast_ref",
    "fast_ref_no_farm",
    "fast_masks_augment",
    "fast_masks_diffusion",
    "fast_masks_mix",
    "ddpm",
    "ddim",
    "dpmpp",
    "unipc",
    "cutpaste",
    "cutpaste_scar",
    "perlin",
    "realpaste",
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


def method_label(name: str, settings: dict[str, Any]) -> str:
    """Human-readable name of a training set (``settings``: the report's preset settings)."""
    ddpm_nfe, ref_t = settings["ddpm_nfe"], settings.get("ref_start_t", 500)
    return {
        "fast": "FAST (AIAS-10 + FARM)",
        "fast_no_farm": "FAST w/o FARM (AIAS-10)",
        "fast_replace": "FAST, decoded-window paste (FAST_SPEC §3)",
        "fast_smooth": "FAST, change smoothed at the mask's scale",
        "fast_no_farm_smooth": "FAST w/o FARM, change smoothed at the mask's scale",
        "fast_routed": "FAST, change smoothed in masks ≥ 16 px thick only",
        "fast_no_farm_routed": "FAST w/o FARM, change smoothed in masks ≥ 16 px thick only",
        "fast_routed_cell": "FAST, change smoothed at ≤ 3 px in masks ≥ 16 px thick only",
        "fast_no_farm_routed_cell": "FAST w/o FARM, change smoothed at ≤ 3 px in masks ≥ 16 px thick only",
        "fast_clip": "FAST, ẑ0 clipped to the decoder range",
        "fast_no_farm_clip": "FAST w/o FARM, ẑ0 clipped",
        "fast_farm_early": "FAST, FARM at t ≥ 800 only, ẑ0 clipped",
        "fast_ref": f"FAST from the real defect noised to t = {ref_t} (AIAS-10 + FARM)",
        "fast_ref_no_farm": f"FAST from the real defect noised to t = {ref_t}, w/o FARM",
        "fast_masks_augment": "FAST on augmented masks",
        "fast_masks_diffusion": "FAST on diffusion-sampled masks",
        "fast_masks_mix": "FAST on augmented + sampled masks (1:1)",
        "ddpm": f"DDPM-{ddpm_nfe} (same model)",
        "ddim": "DDIM-50 (same model)",
        "dpmpp": "DPM-Solver++(2M)-10 + FARM (same model)",
        "unipc": "UniPC-10 + FARM (same model)",
        "cutpaste": "CutPaste",
        "cutpaste_scar": "CutPaste-Scar",
        "perlin": "DRAEM-style Perlin",
        "realpaste": "real-defect paste",
        "real_third": "real third only",
        "real_third_fast": "real third + FAST",
    }[name]


def _contrast_rows(
    contrast: dict[str, Any], rows: tuple[str, ...], field: str, defects: list[str], settings: dict[str, Any], fmt: str
) -> list[str]:
    """One markdown row per training set of a per-defect-type median (``field`` of the contrast summaries)."""
    lines = []
    for m in rows:
        per = contrast.get(m, {}).get(field, {})
        cells = " | ".join("–" if per.get(d) is None else fmt.format(per[d]) for d in defects)
        lines.append(
            f"| {'real defects (training third)' if m == 'real_third' else method_label(m, settings)} | {cells} |"
        )
    return lines


def anomaly_pairs(method: dict[str, Any]) -> int:
    """Anomalous training pairs of one segmenter (every source but the normal images with empty masks)."""
    return sum(n for source, n in method["train"]["pairs"].items() if source != "normal")


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100.0 * x:.2f}"


def _cell(mean: float | None, std: float | None) -> str:
    """``"67.80 ± 1.20"`` (points), ``"67.80"`` without a std, ``"–"`` without a mean."""
    return _pct(mean) if std is None or mean is None else f"{100.0 * mean:.2f} ± {100.0 * std:.2f}"


def targets(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The targets in mIoU points with the 2σ rule (None when a method was not run or has a single seed)."""
    methods = report["methods"]
    present = [b for b in BASELINES if b in methods and methods[b]["overall"].get("miou") is not None]
    best = max(present, key=lambda b: methods[b]["overall"]["miou"]) if present else None
    fast = methods.get("fast")
    return {
        "fast_minus_best_baseline": {
            **compare(fast, methods.get(best) if best else None, 5.0),
            "against": best,
            "target": ">= +5 and > 2σ",
        },
        "fast_minus_realpaste": {**compare(fast, methods.get("realpaste")), "target": "> 2σ"},
        "real_third_fast_minus_real_third": {
            **compare(methods.get("real_third_fast"), methods.get("real_third"), 2.0),
            "target": ">= +2 and > 2σ",
        },
        "fast_minus_no_farm": {**compare(fast, methods.get("fast_no_farm")), "target": "> 2σ"},
        "fast_minus_ddpm": {**within(fast, methods.get("ddpm"), 1.0), "target": "abs <= 1"},
        "masks_mix_minus_augment": {
            **not_worse(methods.get("fast_masks_mix"), methods.get("fast_masks_augment")),
            "target": ">= -2σ",
        },
    }


def _count(n: int, noun: str) -> str:
    """``"1 type"``, ``"5 types"``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _shortfall(report: dict[str, Any], name: str) -> str:
    """Pairs the method failed to make for its training set, with the synthesis rejection reasons."""
    method = report["methods"][name]
    short = method.get("shortfall", 0)
    if not short:
        return "0"
    source = "fast" if name == "real_third_fast" else name
    reasons = report["datasets"].get(source, {}).get("rejected_by_reason", {})
    why = ", ".join(f"{k} {v}" for k, v in sorted(reasons.items()))
    return f"{short} ({why})" if why else str(short)


def render_markdown(report: dict[str, Any]) -> str:
    """results.md: provenance, the overall table, anomaly IoU per defect type, the targets and the timings."""
    settings = report["preset_settings"]
    names = [m for m in METHOD_ORDER if m in report["methods"]]
    seeds = report["seeds"]
    lines = [
        f"## {report['dataset']} — preset `{report['preset']}`",
        "",
        f"- command: `{report['command']}`",
        f"- commit: `{report['commit']}`, date {report['date']}, machine: {report['machine']['platform']}",
        f"- generator: `{report['model_uri'] or '(none)'}`; {report['pairs_per_defect']} pairs per defect type "
        f"({_count(len(report['defect_types']), 'type')}) for every synthetic method",
        f"- segmenter: {report['segmenter']}; {settings['seg_steps']} steps × batch {settings['seg_batch']}; "
        f"seeds {', '.join(map(str, seeds))}",
        "- metrics in %, mean ± sample std over the seeds, pooled over the whole test set (held-out 2/3 of each "
        "defect type + all test/good) at native resolution",
        "",
        "| training set | anomaly pairs | not made | " + " | ".join(label for _, label in COLUMNS) + " |",
        "|---|---:|---|" + "---:|" * len(COLUMNS),
    ]
    for m in names:
        method = report["methods"][m]
        cells = " | ".join(_cell(method["overall"].get(k), method["overall_std"].get(k)) for k, _ in COLUMNS)
        lines.append(f"| {method_label(m, settings)} | {method['anomaly_pairs']} | {_shortfall(report, m)} | {cells} |")
    for m, error in report.get("failed", {}).items():
        lines.append(f"| {method_label(m, settings)} | 0 | all | " + " | ".join("–" for _ in COLUMNS) + " |")
        lines.append(f"<!-- {m}: {error} -->")
    defects = report["defect_types"]
    lines += ["", "Anomaly IoU (%) per defect type (test anomaly images of that type), mean ± std:", ""]
    lines.append("| training set | " + " | ".join(d.split("/", 1)[1] for d in defects) + " | mean |")
    lines.append("|---|" + "---:|" * (len(defects) + 1))
    for m in names:
        method = report["methods"][m]
        per, per_std = method["per_defect_type"], method["per_defect_type_std"]
        cells = " | ".join(
            _cell(per.get(d, {}).get("anomaly_iou"), per_std.get(d, {}).get("anomaly_iou")) for d in defects
        )
        mean = method["mean_over_defect_types"].get("anomaly_iou")
        lines.append(f"| {method_label(m, settings)} | {cells} | {_pct(mean)} |")
    contrast = report.get("ring_contrast", {})
    if contrast:
        lines += ["", "Median ring contrast (grey levels, |mean in mask − mean in the 3-px ring around it|):", ""]
        lines.append("| pairs of | " + " | ".join(d.split("/", 1)[1] for d in defects) + " |")
        lines.append("|---|" + "---:|" * len(defects))
        rows = ("real_third", *[n for n in METHOD_ORDER if n in contrast and n != "real_third"])
        lines += _contrast_rows(contrast, rows, "median_per_defect_type", defects, settings, "{:.1f}")
        lines += [
            "",
            "Median grain ratio (|x − 3×3 mean| inside the mask over the same in the ring around it; a smooth fill "
            "is ≪ 1):",
            "",
            "| pairs of | " + " | ".join(d.split("/", 1)[1] for d in defects) + " |",
            "|---|" + "---:|" * len(defects),
        ]
        lines += _contrast_rows(contrast, rows, "grain_ratio_per_defect_type", defects, settings, "{:.2f}")
        if any("signed_median_per_defect_type" in v for v in contrast.values()):  # reports before the sign: none
            lines += [
                "",
                "Median signed contrast (grey levels, mean in mask − mean in the ring; < 0: darker than around it):",
                "",
                "| pairs of | " + " | ".join(d.split("/", 1)[1] for d in defects) + " |",
                "|---|" + "---:|" * len(defects),
            ]
            lines += _contrast_rows(contrast, rows, "signed_median_per_defect_type", defects, settings, "{:+.1f}")
    lines += ["", "| target | mIoU points | pooled σ | goal | met |", "|---|---:|---:|---|---|"]
    for key, t in report["targets"].items():
        value = "–" if t["points"] is None else f"{t['points']:+.2f}"
        sigma = "–" if t.get("sigma") is None else f"{t['sigma']:.2f}"
        met = "–" if t["met"] is None else ("yes" if t["met"] else "no")
        label = key.replace("_", " ") + (f" ({t['against']})" if t.get("against") else "")
        lines.append(f"| {label} | {value} | {sigma} | {t['target']} | {met} |")
    lines.append("")
    lines.append("A target marked – lacks a method or a second seed (no σ, so the 2σ rule cannot decide).")
    timing = ", ".join(f"{k} {v:.0f}" for k, v in report["timing_s"].items())
    lines += ["", f"Wall seconds: {timing}.", ""]
    return "\n".join(lines)


def render_miou_chart(report: dict[str, Any], path: Path) -> Path:
    """A horizontal bar chart of overall mIoU (%) by training set, ± one std as a whisker, as a PNG (PIL only)."""
    settings = report["preset_settings"]
    names = [m for m in METHOD_ORDER if m in report["methods"]]
    values = [report["methods"][m]["overall"].get("miou") for m in names]
    row, left, width, top = 34, 230, 420, 46
    image = Image.new("RGB", (left + width + 130, top + row * len(names) + 20), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    title = f"mIoU (%) by training set, mean ± std over {len(report['seeds'])} seed(s): {report['dataset']}"
    draw.text((10, 10), f"{title}, preset {report['preset']}", fill="black")
    finite = [v for v in values if v is not None and np.isfinite(v)]
    low = 100.0 * min(finite + [0.5]) - 5.0  # mIoU of an all-background prediction is ~50 %: start the axis near it
    low = max(0.0, min(low, 45.0))
    for i, (m, v) in enumerate(zip(names, values, strict=True)):
        y = top + i * row
        draw.text((10, y + 8), method_label(m, settings), fill="black", font=font)
        if v is None or not np.isfinite(v):
            draw.text((left, y + 8), "n/a", fill="gray", font=font)
            continue

        def x_of(value: float) -> int:
            return left + max(1, round(width * (100.0 * value - low) / (100.0 - low)))

        colour = (200, 60, 40) if m.startswith("fast") or m == "real_third_fast" else (90, 110, 160)
        draw.rectangle([left, y + 4, x_of(v), y + row - 6], fill=colour)
        std = report["methods"][m]["overall_std"].get("miou")
        label = f"{100.0 * v:.2f}"
        if std is not None:
            lo, hi = x_of(max(v - std, low / 100.0)), x_of(min(v + std, 1.0))
            mid = y + (row - 2) // 2
            draw.line([lo, mid, hi, mid], fill="black", width=2)
            draw.line([lo, mid - 5, lo, mid + 5], fill="black", width=2)
            draw.line([hi, mid - 5, hi, mid + 5], fill="black", width=2)
            label += f" ± {100.0 * std:.2f}"
        draw.text((max(x_of(v), x_of(min(v + (std or 0.0), 1.0))) + 6, y + 8), label, fill="black", font=font)
    draw.text((left, top + row * len(names) + 4), f"axis from {low:.0f} % to 100 %", fill="gray", font=font)
    image.save(path)
    return path
