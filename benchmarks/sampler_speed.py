"""Sampler speed: wall time per synthesized image for AIAS-10/20/50, DDIM-50, PLMS-50 and DDPM-1000, in one run.

Every sampler runs through the same :func:`fast_core.synthesis.synthesize` loop (FARM mixing, background
re-injection, paste), so the numbers compare samplers, not code paths. Each configuration runs ``--repeats`` times
(default 3) after one warm-up pass; the table reports the median, the ratio DDPM-1000 / AIAS-10, and where the time
goes: VAE encode, the denoising loop (split into UNet, FARM, Adaptor and the rest: scheduler math and noise draws),
VAE decode and the pixel paste. Module times come from simple wall-clock wrappers around ``forward`` (with a CUDA
synchronisation on GPU, which adds a little overhead per call).

Runbook (from the repository root, with the project's virtual environment active):

    python -m benchmarks.sampler_speed                         # `tiny` preset: 32² images, 4×8×8 latents, CPU, batch 4
    python -m benchmarks.sampler_speed --preset small          # `cpu_small` preset: 128² images, 4×32×32 latents
    python -m benchmarks.sampler_speed --device cuda --dtype float16 --batch 16 --preset small
    python -m benchmarks.sampler_speed --samplers AIAS-10 DDIM-50 --repeats 5 --out /tmp/speed.json

Output: a markdown table on stdout and JSON at ``--out`` (default ``benchmarks/results/sampler_speed.json``).
The models are randomly initialised: speed does not depend on the weights, only on the architecture.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from fast_core.models.ldm import FastLDM, model_preset
from fast_core.synthesis import SynthesisConfig, synthesize

RUNS: dict[str, tuple[str, int]] = {  # label -> (sampler, nfe)
    "AIAS-10": ("aias", 10),
    "AIAS-20": ("aias", 20),
    "AIAS-50": ("aias", 50),
    "DDIM-50": ("ddim", 50),
    "PLMS-50": ("plms", 50),
    "DPM-Solver++-10": ("dpmpp", 10),
    "DPM-Solver++-20": ("dpmpp", 20),
    "UniPC-10": ("unipc", 10),
    "UniPC-20": ("unipc", 20),
    "DDPM-1000": ("ddpm", 1000),
}
MODULES = ("unet", "farm", "adaptor")
PRESETS = {"tiny": "tiny", "small": "cpu_small"}  # --preset -> fast_core.models.ldm preset
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def build_model(preset: str, image_channels: int, device: torch.device) -> tuple[FastLDM, int]:
    """The randomly initialised model of ``preset`` (``tiny`` or ``cpu_small``) on ``device`` and its image size."""
    if preset not in PRESETS:
        raise ValueError(f"--preset {preset!r} is not one of: {', '.join(PRESETS)}")
    cfg = model_preset(PRESETS[preset], keys=["good", "bench/defect"], image_channels=image_channels)
    model = FastLDM.from_scratch(cfg, seed=0).to(device).eval()
    return model, cfg.vae.sample_size


@contextlib.contextmanager
def module_timers(model: Any, device: torch.device) -> Iterator[dict[str, float]]:
    """Accumulate wall seconds spent in ``forward`` of the UNet, FARM and Adaptor while the context is open."""
    seconds = dict.fromkeys(MODULES, 0.0)
    originals = {}

    def timed(name: str, forward: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            out = forward(*args, **kwargs)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds[name] += time.perf_counter() - start
            return out

        return wrapper

    for name in MODULES:
        module = getattr(model, name)
        originals[name] = module.forward
        module.forward = timed(name, module.forward)
    try:
        yield seconds
    finally:
        for name in MODULES:
            del getattr(model, name).forward  # drop the instance attribute: the class method is visible again
            if getattr(model, name).forward != originals[name]:
                raise RuntimeError(f"could not restore {name}.forward")


def time_one(
    model: Any, sampler: str, nfe: int, batch: int, size: int, device: torch.device, dtype: torch.dtype, seed: int
) -> dict[str, float]:
    """One timed synthesize call: total seconds, phase seconds and module seconds."""
    channels = model.image_channels
    g = torch.Generator().manual_seed(seed)
    images = (torch.rand(batch, channels, size, size, generator=g) * 2 - 1).to(device)
    masks = torch.zeros(batch, 1, size, size, device=device)
    masks[..., size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1.0
    keys = [model.conditioner.keys[0]] * batch
    gens = [torch.Generator().manual_seed(seed + i) for i in range(batch)]
    cfg = SynthesisConfig(sampler=sampler, nfe=nfe, batch_size=batch)
    with module_timers(model, device) as modules:
        start = time.perf_counter()
        result = synthesize(model, images, masks, keys, cfg, gens, device, dtype)
        total = time.perf_counter() - start
    if result.nfe != nfe:
        raise RuntimeError(f"{sampler}: counted {result.nfe} UNet calls, expected {nfe}")
    return {"total": total, **result.timings, **modules}


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, time every configuration, print the markdown table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=list(PRESETS), default="tiny")
    parser.add_argument("--batch", type=int, default=4, help="images per synthesize call (B)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per configuration; the median is reported")
    parser.add_argument("--samplers", nargs="+", choices=list(RUNS), default=list(RUNS))
    parser.add_argument("--channels", type=int, choices=[1, 3], default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sampler_speed.json"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    model, size = build_model(args.preset, args.channels, device)

    time_one(model, "aias", 10, args.batch, size, device, dtype, args.seed)  # warm-up (allocator, kernels)
    rows = []
    for label in args.samplers:
        sampler, nfe = RUNS[label]
        runs = [time_one(model, sampler, nfe, args.batch, size, device, dtype, args.seed) for _ in range(args.repeats)]
        median_total = statistics.median(r["total"] for r in runs)
        median_run = min(runs, key=lambda r: abs(r["total"] - median_total))
        rows.append(
            {
                "label": label,
                "sampler": sampler,
                "nfe": nfe,
                "seconds_per_image": median_total / args.batch,
                "seconds_per_batch_runs": [r["total"] for r in runs],
                "split_seconds": {k: v for k, v in median_run.items() if k != "total"},
                "split_total": median_run["total"],
            }
        )
        print(f"{label}: {median_total / args.batch:.4f} s/image", flush=True)

    per_image = {r["label"]: r["seconds_per_image"] for r in rows}
    ratio = per_image["DDPM-1000"] / per_image["AIAS-10"] if {"DDPM-1000", "AIAS-10"} <= per_image.keys() else None
    report = {
        "preset": args.preset,
        "image_size": size,
        "image_channels": args.channels,
        "batch": args.batch,
        "repeats": args.repeats,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "dtype": args.dtype,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "ratio_ddpm1000_over_aias10": ratio,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(markdown_table(report))
    print(f"\nJSON written to {args.out}")
    return 0


def markdown_table(report: dict[str, Any]) -> str:
    """The results as a markdown table: time per image and the percentage split of the median run."""
    head = (
        f"Preset {report['preset']} ({report['image_channels']}×{report['image_size']}², batch {report['batch']}, "
        f"{report['device']} {report['dtype']}, {report['torch_threads']} threads, median of {report['repeats']})\n\n"
        "| sampler | NFE | s / image | encode | loop | · UNet | · FARM | · Adaptor | · other | decode | paste |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for r in report["rows"]:
        s, total = r["split_seconds"], r["split_total"]
        other = s["loop"] - s["unet"] - s["farm"] - s["adaptor"]

        def pct(x: float, total: float = total) -> str:
            return f"{100 * x / total:.1f}%"

        lines.append(
            f"| {r['label']} | {r['nfe']} | {r['seconds_per_image']:.4f} | {pct(s['encode'])} | {pct(s['loop'])} | "
            f"{pct(s['unet'])} | {pct(s['farm'])} | {pct(s['adaptor'])} | {pct(other)} | {pct(s['decode'])} | "
            f"{pct(s['paste'])} |"
        )
    if report["ratio_ddpm1000_over_aias10"] is not None:
        lines.append(f"\nDDPM-1000 / AIAS-10 time per image: ×{report['ratio_ddpm1000_over_aias10']:.1f}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
