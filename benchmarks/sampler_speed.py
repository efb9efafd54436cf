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
    python -m benchmarks.sampler_speed --preset window         # window mode: 128² windows of 208×256 images
    python -m benchmarks.sampler_speed --device cuda --dtype float16 --batch 16 --preset small
    python -m benchmarks.sampler_speed --samplers AIAS-10 DDIM-50 --repeats 5 --out /tmp/speed.json

Presets ``tiny`` and ``small`` run the global frame: the whole image is the model's input. ``window`` is the CPU
product path (FAST_SPEC §9, ``jobs/configs/train-cpu-window.yaml``): ``cpu_small`` widths on the TAEF2 first stage
(32 × 16 × 16 latents of 128² windows), an inpainting UNet and ``any`` mask downsampling; each image is a 208 × 256
native frame (Magnetic Tile's size) with a defect box, and one call is the whole path a row takes in the window frame:
cut the window around the mask (:func:`~fast_core.data.windows.cut_around`), synthesize it, paste it back inside the
mask at native size (:func:`~fast_core.data.windows.paste_window`). The cut and the paste-back are their own columns.

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

import numpy as np
import torch

from fast_core.data.windows import cut_around, paste_window
from fast_core.models.ldm import FastLDM, FastModelConfig, model_preset
from fast_core.models.taef2 import TAEF2, TAEF2Config
from fast_core.synthesis import SynthesisConfig, synthesize, to_uint8
from pipelines.config import load_config
from pipelines.train.config import TrainConfig
from pipelines.train.models import model_config

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
PRESETS = {"tiny": "tiny", "small": "cpu_small", "window": "cpu_small"}  # --preset -> fast_core.models.ldm preset
WINDOW_PRESETS = ("window",)  # presets that run the window frame (module docstring)
WINDOW_TRAIN_CONFIG = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "train-cpu-window.yaml"
NATIVE_SHAPE = (208, 256)  # (H, W) of a window preset's native image: Magnetic Tile's size
WINDOW_MARGIN = 0.25
VARIANTS = ("eager", "channels_last", "compile")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def window_config(keys: list[str], image_channels: int) -> tuple[FastModelConfig, int]:
    """The model ``jobs/configs/train-cpu-window.yaml`` trains (built by the training code from that file, so the
    benchmark follows the config) and its window side S."""
    cfg = load_config(
        TrainConfig, WINDOW_TRAIN_CONFIG, ["dataset.root=/unused", f"dataset.image_channels={image_channels}"]
    )
    return model_config(cfg, keys), cfg.dataset.image_size


def build_model(preset: str, image_channels: int, device: torch.device) -> tuple[FastLDM, int]:
    """The randomly initialised model of ``preset`` on ``device`` and its image (window) size; a window preset's
    TAEF2 has random weights of the published shapes (speed depends on the shapes only)."""
    if preset not in PRESETS:
        raise ValueError(f"--preset {preset!r} is not one of: {', '.join(PRESETS)}")
    keys = ["good", "bench/defect"]
    if preset not in WINDOW_PRESETS:
        cfg = model_preset(PRESETS[preset], keys=keys, image_channels=image_channels)
        return FastLDM.from_scratch(cfg, seed=0).to(device).eval(), cfg.vae.sample_size
    cfg, size = window_config(keys, image_channels)
    torch.manual_seed(0)
    first_stage = TAEF2(TAEF2Config(image_channels=image_channels))
    return FastLDM.from_scratch(cfg, seed=0, first_stage=first_stage).to(device).eval(), size


def native_inputs(batch: int, channels: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``batch`` textured native images (H, W, C) uint8 of :data:`NATIVE_SHAPE` and a defect box mask (H, W) each,
    at a seeded place and size (10-40 % of the short side)."""
    rng = np.random.default_rng(seed)
    h, w = NATIVE_SHAPE
    images, masks = [], []
    for _ in range(batch):
        images.append(rng.integers(0, 256, (h, w, channels), dtype=np.uint8))
        bh, bw = (int(v) for v in rng.integers(h // 10, 2 * h // 5, 2))
        y, x = int(rng.integers(0, h - bh)), int(rng.integers(0, w - bw))
        mask = np.zeros((h, w), np.uint8)
        mask[y : y + bh, x : x + bw] = 255
        masks.append(mask)
    return images, masks


def time_window(
    model: Any, cfg: SynthesisConfig, batch: int, size: int, device: torch.device, dtype: torch.dtype, seed: int
) -> tuple[Any, dict[str, float]]:
    """One window-frame call: cut ``batch`` windows, synthesize them, paste them back; (result, cut/paste seconds)."""
    channels = model.image_channels
    natives, labels = native_inputs(batch, channels, seed)
    start = time.perf_counter()
    cuts = [cut_around(image, mask, size, channels, WINDOW_MARGIN) for image, mask in zip(natives, labels, strict=True)]
    images = torch.from_numpy(np.stack([c.image for c in cuts])).float().div(127.5).sub(1.0).to(device)
    masks = torch.from_numpy(np.stack([c.mask for c in cuts])).float()[:, None].to(device)
    cut_s = time.perf_counter() - start
    keys = [model.conditioner.keys[1]] * batch
    gens = [torch.Generator().manual_seed(seed + i) for i in range(batch)]
    result = synthesize(model, images, masks, keys, cfg, gens, device, dtype)
    start = time.perf_counter()
    windows = to_uint8(result.images)
    for cut, window in zip(cuts, windows, strict=True):
        pasted = paste_window(cut.native, window.transpose(2, 0, 1), cut.label, cut.window)
        if pasted.shape != cut.native.shape:
            raise RuntimeError(f"paste_window returned {pasted.shape} for a {cut.native.shape} image")
    return result, {"window_cut": cut_s, "window_paste": time.perf_counter() - start}


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
    model: Any,
    sampler: str,
    nfe: int,
    batch: int,
    size: int,
    device: torch.device,
    dtype: torch.dtype,
    seed: int,
    modules: bool = True,
) -> dict[str, float]:
    """One timed synthesize call (in a window preset, with the cut and the paste-back): total seconds, phase seconds
    and, with ``modules``, the seconds inside the UNet, FARM and Adaptor (off for compiled modules: a wrapper around
    ``forward`` would break the compiled graph)."""
    cfg = SynthesisConfig(sampler=sampler, nfe=nfe, batch_size=batch)
    timers = module_timers(model, device) if modules else contextlib.nullcontext({})
    with timers as seconds:
        start = time.perf_counter()
        if model.config.first_stage == "taef2":
            result, window = time_window(model, cfg, batch, size, device, dtype, seed)
        else:
            result, window = time_global(model, cfg, batch, size, device, dtype, seed), {}
        total = time.perf_counter() - start
    if result.nfe != nfe:
        raise RuntimeError(f"{sampler}: counted {result.nfe} UNet calls, expected {nfe}")
    return {"total": total, **result.timings, **window, **seconds}


def time_global(
    model: Any, cfg: SynthesisConfig, batch: int, size: int, device: torch.device, dtype: torch.dtype, seed: int
) -> Any:
    """One global-frame call: ``batch`` random images with a centred square mask, synthesized whole."""
    channels = model.image_channels
    g = torch.Generator().manual_seed(seed)
    images = (torch.rand(batch, channels, size, size, generator=g) * 2 - 1).to(device)
    masks = torch.zeros(batch, 1, size, size, device=device)
    masks[..., size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1.0
    keys = [model.conditioner.keys[0]] * batch
    gens = [torch.Generator().manual_seed(seed + i) for i in range(batch)]
    return synthesize(model, images, masks, keys, cfg, gens, device, dtype)


def prepare_variant(model: Any, variant: str) -> Any:
    """``model`` set up as ``variant``: ``eager`` as it is, ``channels_last`` (NHWC weights: the convolutions run in
    that layout), ``compile`` (``torch.compile`` of the UNet and of the first stage's encoder and decoder, in place;
    the first call compiles)."""
    if variant == "channels_last":
        return model.to(memory_format=torch.channels_last)
    if variant == "compile":
        model.unet.compile()
        first = model.vae
        for part in (first.encoder, first.decoder):
            part.compile()
        return model
    if variant != "eager":
        raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
    return model


def interleaved_runs(
    entries: list[tuple[Any, int]], args: argparse.Namespace, device: torch.device, dtype: torch.dtype
) -> list[list[float]]:
    """Seconds per AIAS-10 call of each (model, image size) of ``entries`` over ``args.repeats`` rounds, one call of
    each per round, so drift in the machine's load falls on every entry alike (no module timers)."""
    runs: list[list[float]] = [[] for _ in entries]
    for _ in range(args.repeats):
        for (model, size), out in zip(entries, runs, strict=True):
            out.append(time_one(model, "aias", 10, args.batch, size, device, dtype, args.seed, False)["total"])
    return runs


def time_variants(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> list[dict[str, Any]]:
    """AIAS-10 per image for each of ``args.variants`` on a fresh model each, interleaved over ``args.repeats``
    rounds (so drift in the machine's load falls on every variant alike); compile time is the first call's."""
    models, rows = {}, []
    for variant in args.variants:
        model, size = build_model(args.preset, args.channels, device)
        models[variant] = prepare_variant(model, variant)
        start = time.perf_counter()
        time_one(models[variant], "aias", 10, args.batch, size, device, dtype, args.seed, modules=False)
        rows.append({"variant": variant, "first_call_s": time.perf_counter() - start, "runs": []})
    entries = [(models[row["variant"]], size) for row in rows]
    for row, runs in zip(rows, interleaved_runs(entries, args, device, dtype), strict=True):
        row["runs"] = runs
    eager = statistics.median(rows[0]["runs"]) if rows and rows[0]["variant"] == "eager" else None
    for row in rows:
        row["seconds_per_image"] = statistics.median(row["runs"]) / args.batch
        row["speedup_over_eager"] = eager / (row["seconds_per_image"] * args.batch) if eager else None
    return rows


def time_frames(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> list[dict[str, Any]]:
    """AIAS-10 per pair in the window frame (``window``: cut, synthesize a 128² window, paste back into a 208 × 256
    image) and in the global frame (``small``: the whole 128² image is the model's input) at the same NFE, each on its
    own model, interleaved over ``args.repeats`` rounds. Pairs/s per core = 1 / (s per pair · torch threads)."""
    rows = []
    for preset in ("window", "small"):
        model, size = build_model(preset, args.channels, device)
        time_one(model, "aias", 10, args.batch, size, device, dtype, args.seed, modules=False)  # warm-up
        rows.append({"preset": preset, "model": model, "size": size, "runs": []})
    entries = [(row["model"], row["size"]) for row in rows]
    for row, runs in zip(rows, interleaved_runs(entries, args, device, dtype), strict=True):
        row["runs"] = runs
    threads = torch.get_num_threads() if device.type == "cpu" else None
    out = []
    for row in rows:
        per_pair = statistics.median(row["runs"]) / args.batch
        out.append(
            {
                "preset": row["preset"],
                "frame": "window" if row["preset"] in WINDOW_PRESETS else "global",
                "image_size": row["size"],
                "seconds_per_pair": per_pair,
                "pairs_per_s_per_core": 1.0 / (per_pair * threads) if threads else None,
                "runs": row["runs"],
            }
        )
    return out


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
    parser.add_argument(
        "--variants",
        nargs="*",
        choices=VARIANTS,
        default=[],
        help="also time AIAS-10 with these model set-ups, eager first (default: none)",
    )
    parser.add_argument(
        "--frames", action="store_true", help="also time AIAS-10 per pair in the window and the global frame"
    )
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
        "frame": "window" if args.preset in WINDOW_PRESETS else "global",
        "image_size": size,
        "native_shape": list(NATIVE_SHAPE) if args.preset in WINDOW_PRESETS else None,
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
        "variants": time_variants(args, device, dtype) if args.variants else [],
        "frames": time_frames(args, device, dtype) if args.frames else [],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(markdown_table(report))
    print(f"\nJSON written to {args.out}")
    return 0


def markdown_table(report: dict[str, Any]) -> str:
    """The results as a markdown table: time per image and the percentage split of the median run."""
    native = report.get("native_shape")
    frame = f"windows of {native[0]}×{native[1]} images" if native else "whole images"
    head = (
        f"Preset {report['preset']} ({report['image_channels']}×{report['image_size']}² {frame}, batch "
        f"{report['batch']}, {report['device']} {report['dtype']}, {report['torch_threads']} threads, median of "
        f"{report['repeats']})\n\n"
        "| sampler | NFE | s / image | window cut | encode | loop | · UNet | · FARM | · Adaptor | · other | decode | "
        "paste | paste-back |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for r in report["rows"]:
        s, total = r["split_seconds"], r["split_total"]
        other = s["loop"] - s["unet"] - s["farm"] - s["adaptor"]

        def pct(x: float, total: float = total) -> str:
            return f"{100 * x / total:.1f}%"

        cut, back = s.get("window_cut"), s.get("window_paste")
        lines.append(
            f"| {r['label']} | {r['nfe']} | {r['seconds_per_image']:.4f} | {'—' if cut is None else pct(cut)} | "
            f"{pct(s['encode'])} | {pct(s['loop'])} | {pct(s['unet'])} | {pct(s['farm'])} | {pct(s['adaptor'])} | "
            f"{pct(other)} | {pct(s['decode'])} | {pct(s['paste'])} | {'—' if back is None else pct(back)} |"
        )
    if report["ratio_ddpm1000_over_aias10"] is not None:
        lines.append(f"\nDDPM-1000 / AIAS-10 time per image: ×{report['ratio_ddpm1000_over_aias10']:.1f}")
    if report.get("variants"):
        lines += [
            "\nAIAS-10 with other model set-ups (a fresh model each, rounds interleaved; the first call compiles):\n",
            "| set-up | s / image | speed-up over eager | first call s |",
            "|---|---:|---:|---:|",
        ]
        for v in report["variants"]:
            speedup = "—" if v["speedup_over_eager"] is None else f"{v['speedup_over_eager']:.2f}×"
            lines.append(f"| {v['variant']} | {v['seconds_per_image']:.4f} | {speedup} | {v['first_call_s']:.1f} |")
    if report.get("frames"):
        lines += [
            "\nAIAS-10 per pair, window frame against global frame (same NFE and batch, rounds interleaved):\n",
            "| frame | model input | s / pair | pairs / s per core |",
            "|---|---|---:|---:|",
        ]
        for f in report["frames"]:
            what = f"{f['image_size']}² window of a {NATIVE_SHAPE[0]}×{NATIVE_SHAPE[1]} image"
            what = what if f["frame"] == "window" else f"whole {f['image_size']}² image"
            per_core = "—" if f["pairs_per_s_per_core"] is None else f"{f['pairs_per_s_per_core']:.3f}"
            lines.append(f"| {f['frame']} | {what} | {f['seconds_per_pair']:.4f} | {per_core} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
