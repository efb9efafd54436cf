"""The GPU check's figures: the assumed peak per device, the fastest batch, the short table printed at the end.

The fraction of peak of :mod:`benchmarks.gpu_check` is the achieved UNet TFLOP/s over P, the dense (no sparsity) bf16
tensor-core peak of the device in :data:`PEAK_BF16_TFLOPS`, matched on ``torch.cuda.get_device_name()``.
"""

from __future__ import annotations

from typing import Any

#: Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, by a fragment of ``torch.cuda.get_device_name()`` (lower
#: case), first match wins; from the vendors' datasheets (SXM H100 and H200: 989; NVL and PCIe boards are slower).
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("h200 nvl", 835.0),
    ("h200", 989.0),
    ("h100 nvl", 835.0),
    ("h100 pcie", 756.0),
    ("h100", 989.0),  # "NVIDIA H100 80GB HBM3" (SXM)
    ("a100", 312.0),
)
FALLBACK_PEAK = 989.0  # an unknown GPU is compared with an H100/H200 SXM (recorded in peak_source)
DRY_RUN_PEAK = 1.0  # nominal: the dry run only exercises the arithmetic


def peak_tflops(device_name: str, dry_run: bool, override: float | None) -> tuple[float, str]:
    """(P, where P comes from): ``--peak-tflops``, the dry run's nominal value, :data:`PEAK_BF16_TFLOPS` or the
    fallback.

    >>> peak_tflops("NVIDIA H200", False, None)
    (989.0, 'table: h200')
    >>> peak_tflops("NVIDIA H100 PCIe", False, None)[0]
    756.0
    """
    if override is not None:
        return override, "--peak-tflops"
    if dry_run:
        return DRY_RUN_PEAK, "nominal (dry run on CPU: the fraction only exercises the code)"
    name = device_name.lower()
    for fragment, tflops in PEAK_BF16_TFLOPS:
        if fragment in name:
            return tflops, f"table: {fragment}"
    return FALLBACK_PEAK, f"assumed (no table entry for {device_name!r}; give --peak-tflops)"


def best_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The fastest batch of the sweep (pairs/s), with its UNet rate."""
    ok = [r for r in rows if "error" not in r]
    if not ok:
        return None
    r = max(ok, key=lambda r: r["pairs_per_s"])
    return {k: r[k] for k in ("batch", "pairs_per_s", "unet_tflops", "unet_fraction_of_peak", "peak_memory_bytes")}


def table(report: dict[str, Any]) -> str:
    """The short stdout table: training stages, then the sweep."""
    lines = [f"{report['device_name']} ({report['device']}, {report['dtype']}), peak {report['peak_tflops']:g} TFLOP/s"]
    for s in (report.get("train") or {}).get("stages", []):
        sps = s["steady_steps_per_s"]
        lines.append(
            f"  train {s['stage']:4s} {s['steps']} steps × batch {s['batch_size']}: {s['wall_s']:.1f} s in the loop, "
            f"{'n/a' if sps is None else f'{sps:.2f}'} steps/s steady"
        )
    lines.append("  batch | pairs/s | UNet TFLOP/s | % peak | peak GiB | s/batch")
    for r in report.get("sweep", []):
        if "error" in r:
            lines.append(f"  {r['batch']:5d} | {r['error']}")
            continue
        mem = r["peak_memory_bytes"]
        unet, frac = r["unet_tflops"] or 0.0, r["unet_fraction_of_peak"] or 0.0
        lines.append(
            f"  {r['batch']:5d} | {r['pairs_per_s']:7.2f} | {unet:12.4g} | {100 * frac:6.1f}"
            f" | {'—' if mem is None else f'{mem / 2**30:.2f}':>8s} | {r['seconds_per_batch']:.3f}"
        )
    return "\n".join(lines)
