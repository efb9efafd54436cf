"""Sampled against augmented masks, per defect type, from one finished mask-stage output (``fastgen masks``).

Reads ``stats.json`` (its ``fidelity_by_source``: Wasserstein distances to the real training masks and the near-copy
fraction, per source and defect key) and the accepted / rejected rows, and checks the mask issue's targets for the
``diffusion`` source against the ``augment`` one, per defect key k:

    pass(k)        = accepted / (accepted + rejected) of the sampled masks              ≥ 0.90 over all keys
    W_area(k)      ≤ 2 · W_area of the augmented masks of k                            (area fraction)
    W_aspect(k)    ≤ 2 · W_aspect of the augmented masks of k                          (bounding-box aspect)
    near_copy      = fraction of the accepted sampled masks whose nearest real shape has IoU > 0.9, over all keys
                     (Σ_k near_copy(k) · accepted(k) / Σ_k accepted(k))                  ≤ 0.10
                     (and per key, ``near_copy_met_every_type``, read against the real masks' own floor)

A set without both sources, or a key without both, leaves that check undecided (``None``).

    python -m benchmarks.mask_fidelity runs/magnetic_tile/masks/stretch-mix --out benchmarks/results/masks_mt.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

PASS_MIN = 0.90  # sampled masks that pass the filters, over all keys
W_RATIO_MAX = 2.0  # a sampled key's Wasserstein distance against the augmented one's
NEAR_COPY_MAX = 0.10  # sampled masks that are near-copies of a real training mask
SOURCES = ("augment", "diffusion")


def _rows(folder: Path) -> list[dict[str, Any]]:
    """``category``, ``defect_type`` and ``source`` (and ``reason``) of every row in a Parquet folder, or none."""
    if not folder.is_dir() or not any(folder.glob("*.parquet")):
        return []
    columns = ["category", "defect_type", "source"] + (["reason"] if folder.name == "rejected" else [])
    return pq.read_table(folder, columns=columns).to_pylist()


def summarise(
    stats: Mapping[str, Any], accepted: Iterable[Mapping[str, Any]], rejected: Iterable[Mapping[str, Any]]
) -> dict[str, Any]:
    """Per key and source: counts, pass rate, the two Wasserstein distances, near-copies; then the checks."""
    rejected = list(rejected)
    ok = Counter((f"{r['category']}/{r['defect_type']}", r["source"]) for r in accepted)
    bad = Counter((f"{r['category']}/{r['defect_type']}", r["source"]) for r in rejected)
    fidelity = stats.get("fidelity_by_source", {})
    keys = sorted({k for k, _ in ok} | {k for k, _ in bad})
    per_key: dict[str, dict[str, Any]] = {}
    for key in keys:
        entry: dict[str, Any] = {}
        for source in SOURCES:
            a, b = ok[(key, source)], bad[(key, source)]
            if a + b == 0:
                continue
            line: dict[str, Any] = {"accepted": a, "rejected": b, "pass": a / (a + b)}
            f = fidelity.get(source, {}).get(key)
            if f:
                line["w_area"] = f["stats"]["area_fraction"]["wasserstein"]
                line["w_aspect"] = f["stats"]["bbox_aspect"]["wasserstein"]
                line["near_copy"] = f["shape"]["near_copy_fraction"]
                line["real_near_copy_floor"] = f["shape"]["real_near_copy_fraction"]
            entry[source] = line
        per_key[key] = entry
    return {"per_key": per_key, "checks": checks(per_key), "rejected_by_reason": _reasons(rejected)}


def _reasons(rejected: list[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    out: dict[str, Counter[str]] = {}
    for r in rejected:
        out.setdefault(r["source"], Counter())[r.get("reason") or "?"] += 1
    return {s: dict(c.most_common()) for s, c in sorted(out.items())}


def _ratio(sampled: Mapping[str, Any], augmented: Mapping[str, Any], name: str) -> float | None:
    s, a = sampled.get(name), augmented.get(name)
    if s is None or a is None:
        return None
    return float("inf") if a == 0 and s > 0 else (1.0 if a == 0 else s / a)


def checks(per_key: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The targets of the module docstring; each is True, False, or None when it cannot be decided."""
    sampled = {k: v["diffusion"] for k, v in per_key.items() if "diffusion" in v}
    total = sum(v["accepted"] + v["rejected"] for v in sampled.values())
    passed = sum(v["accepted"] for v in sampled.values())
    ratios: dict[str, dict[str, float | None]] = {}
    for key, s in sampled.items():
        a = per_key[key].get("augment", {})
        ratios[key] = {"w_area": _ratio(s, a, "w_area"), "w_aspect": _ratio(s, a, "w_aspect")}
    flat = [r for v in ratios.values() for r in v.values()]
    copies = [s.get("near_copy") for s in sampled.values()]
    decided = bool(copies) and None not in copies and passed > 0
    overall = sum(s["near_copy"] * s["accepted"] for s in sampled.values()) / passed if decided else None
    return {
        "pass_rate": passed / total if total else None,
        "pass_rate_met": (passed / total >= PASS_MIN) if total else None,
        "w_ratio": ratios,
        "w_ratio_met": None if not flat or None in flat else all(r <= W_RATIO_MAX for r in flat),
        "near_copy": overall,
        "near_copy_met": None if overall is None else overall <= NEAR_COPY_MAX,
        "near_copy_met_every_type": None if not decided else all(c <= NEAR_COPY_MAX for c in copies),
    }


def markdown(summary: Mapping[str, Any]) -> str:
    """One table row per key: pass, W area and W aspect (augmented / sampled, ratio), near-copies."""
    lines = [
        "| type | pass, augmented | pass, sampled | W area fraction, aug / sampled | W box aspect, aug / sampled "
        "| near-copies aug | sampled | real floor |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def num(v: Any, fmt: str) -> str:
        return "–" if v is None else format(v, fmt)

    for key, entry in summary["per_key"].items():
        a, s = entry.get("augment", {}), entry.get("diffusion", {})
        r = summary["checks"]["w_ratio"].get(key, {})
        cells = [
            f"`{key.split('/', 1)[-1]}`",
            num(a.get("pass"), ".2f"),
            num(s.get("pass"), ".2f"),
            f"{num(a.get('w_area'), '.4f')} / {num(s.get('w_area'), '.4f')} ({num(r.get('w_area'), '.1f')}×)",
            f"{num(a.get('w_aspect'), '.2f')} / {num(s.get('w_aspect'), '.2f')} ({num(r.get('w_aspect'), '.1f')}×)",
            num(a.get("near_copy"), ".2f"),
            num(s.get("near_copy"), ".2f"),
            num(s.get("real_near_copy_floor", a.get("real_near_copy_floor")), ".2f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    c = summary["checks"]
    lines.append("")
    lines.append(
        f"Sampled masks passing the filters: {num(c['pass_rate'], '.3f')} (≥ {PASS_MIN} met: {c['pass_rate_met']}); "
        f"every W ≤ {W_RATIO_MAX}× the augmented one: {c['w_ratio_met']}; near-copies {num(c['near_copy'], '.3f')} "
        f"(≤ {NEAR_COPY_MAX} met: {c['near_copy_met']}; in every type: {c['near_copy_met_every_type']})."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Summarise one mask-stage output; print the table and write the JSON (``--out``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="a finished fastgen masks output folder (local)")
    parser.add_argument("--out", type=Path, help="write the summary JSON here")
    args = parser.parse_args(argv)
    stats_path = args.output / "stats.json"
    if not stats_path.is_file():
        parser.error(f"{stats_path} is missing: is {args.output} a finished fastgen masks output?")
    stats = json.loads(stats_path.read_text())
    summary = summarise(stats, _rows(args.output / "data"), _rows(args.output / "rejected"))
    counts = {"written": stats.get("written"), "rejected": stats.get("rejected")}
    summary = {"output": str(args.output), **counts, **summary}
    print(markdown(summary))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
