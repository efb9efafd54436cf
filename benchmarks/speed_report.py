"""The report of :mod:`benchmarks.speed`: the headline ratios, ``SPEED.md`` and ``speed.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks import sampler_speed
from benchmarks.speed_common import fmt_bytes, fmt_num
from benchmarks.speed_gpu import md_gpu
from benchmarks.speed_output import md_output
from benchmarks.speed_pipeline import RSS_GOAL, md_pipeline
from benchmarks.speed_store import md_store

#: What names the run that measured a part (kept per part by ``speed.py --update``).
PROVENANCE = ("git_commit", "date", "command")


def provenance(report: dict[str, Any]) -> dict[str, Any]:
    """The commit, date and command of the run ``report`` describes."""
    return {k: report[k] for k in PROVENANCE}


def headline(parts: dict[str, Any]) -> dict[str, Any]:
    """The ratios the issue asks for, from whichever parts ran (None where a part did not run)."""
    sampler, pipe = parts.get("sampler", {}), parts.get("pipeline", {})
    best = parts.get("gpu", {}).get("best") or {}
    best = best if best.get("nfe") == 10 else {}
    return {
        "ddpm1000_over_aias10": sampler.get("ratio_ddpm1000_over_aias10"),
        "ray1_over_bare_warm": pipe.get("ratio_ray1_warm_over_bare"),
        "ray1_over_bare_cold": pipe.get("ratio_ray1_cold_over_bare"),
        "ray2_over_ray1_warm": pipe.get("speedup_ray2_over_ray1_warm"),
        "ray1_over_bare_steady_warm": pipe.get("steady_ratio_ray1_warm_over_bare"),
        "ray2_over_bare2_steady_warm": pipe.get("steady_ratio_ray2_warm_over_bare2"),
        "ray1_startup_s_warm": pipe.get("runs", {}).get("ray-1-warm", {}).get("startup_s"),
        "actor_peak_rss_bytes": _actor_peak(pipe),
        "sampler_preset": sampler.get("preset"),
        "window_over_global_pairs_per_core": _frame_ratio(sampler),
        "gpu_best_pairs_per_s_nfe10": best.get("pairs_per_s"),
        "gpu_unet_fraction_of_peak": best.get("unet_fraction_of_peak"),
    }


def _frame_ratio(sampler: dict[str, Any]) -> float | None:
    """AIAS-10 pairs/s per core of the window frame over the global frame's (None when not measured)."""
    rates = {f["frame"]: f["pairs_per_s_per_core"] for f in sampler.get("frames", [])}
    return rates["window"] / rates["global"] if rates.get("window") and rates.get("global") else None


def _actor_peak(pipe: dict[str, Any]) -> int | None:
    """The largest peak RSS of any synthesis actor over the pipeline runs (None when none was measured)."""
    peaks = [r["memory"].get("actor_peak_rss_bytes_max") for r in pipe.get("ray_runs", {}).values()]
    return max((p for p in peaks if p), default=None)


def aias10_times(parts: dict[str, Any]) -> dict[str, float]:
    """AIAS-10 seconds per image measured in this run, by where they were measured."""
    times = {}
    for row in parts.get("sampler", {}).get("rows", []):
        if row["label"] == "AIAS-10":
            s = parts["sampler"]
            times[f"sampler {s['preset']} {s['image_size']}² {s['device']}"] = row["seconds_per_image"]
    best = parts.get("gpu", {}).get("best")
    if best and best["nfe"] == 10:
        times[f"gpu {parts['gpu']['preset']} {parts['gpu']['image_size']}²"] = 1.0 / best["pairs_per_s"]
    return times


def render_markdown(report: dict[str, Any]) -> str:
    """SPEED.md: machine, commit, date, command, the headline ratios and one section per part."""
    m, h, parts = report["machine"], report["headline"], report["parts"]
    lines = [
        "# Speed benchmark\n",
        f"- Machine: {m['cpu']}, {m['cores']} cores ({m['cores_usable']} usable), load {m['load_average_1min']:.1f} "
        f"at start; GPU: {m['gpu'] or 'none'}; torch {m['torch']}, Ray {m['ray']}, Python {m['python']}",
        f"- Commit: `{report['git_commit']}`; date: {report['date']}",
        f"- Command: `{report['command']}`",
        "\n## Headline\n",
        "| ratio | value | goal |",
        "|---|---:|---:|",
        f"| AIAS-10 speed-up over DDPM-1000, end to end ({h.get('sampler_preset') or '—'} preset) | "
        f"{fmt_num(h['ddpm1000_over_aias10'], '.1f', '×')} | ≥ 50× |",
        f"| pipeline / bare, 1 actor (warm; cold) | {fmt_num(h['ray1_over_bare_warm'])}; "
        f"{fmt_num(h['ray1_over_bare_cold'])} | |",
        f"| pipeline / bare after the first shard, 1 actor (warm) | {fmt_num(h.get('ray1_over_bare_steady_warm'))} "
        "| ≥ 0.85 |",
        "| pipeline / bare after the first shard, 2 actors against 2 bare processes (warm) | "
        f"{fmt_num(h.get('ray2_over_bare2_steady_warm'))} | ≥ 0.85 |",
        "| AIAS-10 pairs/s per core, window frame / global frame (same NFE) | "
        f"{fmt_num(h.get('window_over_global_pairs_per_core'))} | |",
        "| start-up to the first committed shard, 1 actor (warm) | "
        f"{fmt_num(h.get('ray1_startup_s_warm'), '.1f', ' s')} | ≤ 15 s |",
        f"| 2 actors / 1 actor (warm) | {fmt_num(h['ray2_over_ray1_warm'])} | |",
        f"| peak RSS of a synthesis actor | {fmt_bytes(h.get('actor_peak_rss_bytes'))} | ≤ {RSS_GOAL >> 20} MiB |",
        f"| GPU pairs/s at NFE 10 (best batch) | {fmt_num(h['gpu_best_pairs_per_s_nfe10'])} | ≥ 20 |",
        f"| GPU UNet fraction of peak | {fmt_num(h['gpu_unet_fraction_of_peak'])} | ≥ 0.40 |",
    ]
    sections = (
        ("1. Sampler cost per image", "sampler", sampler_speed.markdown_table),
        ("2. Ray pipeline against a bare loop", "pipeline", md_pipeline),
        ("3. Object store as the rows grow", "store", md_store),
        ("4. Output path", "output", md_output),
        ("5. GPU", "gpu", md_gpu),
    )
    for title, key, render in sections:
        part = parts.get(key, {})
        lines.append(f"\n## {title}\n")
        lines.append(f"Not run: {part['not_run']}." if "not_run" in part else render(part))
        run = report.get("part_runs", {}).get(key)
        if run and any(run.get(k) != report[k] for k in PROVENANCE):
            lines.append(
                f"\n(measured by an earlier run, kept by --update: commit `{run['git_commit']}`, {run['date']}, "
                f"`{run['command']}`)"
            )
        if "seconds" in report.get("part_seconds", {}).get(key, {}):
            lines.append(f"\n(part took {report['part_seconds'][key]['seconds']:.0f} s)")
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], json_path: Path, md_path: Path) -> None:
    """Fill the headline and write both files."""
    report["headline"] = headline(report["parts"])
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(render_markdown(report))
