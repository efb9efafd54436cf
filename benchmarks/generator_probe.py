"""Generator probe: does a trained FAST model know what a defect looks like, and where?

On the generator's own training-third anomaly images (FAST_SPEC §8.1), with fixed draws of t and ε, it measures the
FAST-stage ε-error split into the anomaly cells (m = down(M) = 1) and the rest, for three predictors on the same
FARM-mixed input z̃_t of FAST_SPEC §6:

    z_t = √ᾱ_t z_0 + √(1−ᾱ_t) ε;   z̃_t = (1−m) z_t + m (√ᾱ_t FARM(z_t, m, t) + √(1−ᾱ_t) ε)
    unet(key)   ε_θ(z̃_t, t, c(key))              the base UNet with the image's defect prompt
    unet(good)  ε_θ(z̃_t, t, c("good"))           the same UNet told "normal"
    fast        Adaptor(ε_θ(z̃_t, t, c(key)), m)  what the sampler uses

    prompt gain = 1 − mse_fg(unet(key)) / mse_fg(unet(good))      # 0: the prompt tells the UNet nothing about defects

the clean estimate the sampler steps with, ẑ0 = (z̃_t − √(1−ᾱ_t) ε̂_fast)/√ᾱ_t, as relative errors
Σ (ẑ0 − z_0)² / Σ z_0² over the anomaly cells and the rest at t ≥ 750, where the sampler's first steps decide what a
defect looks like and an ε-error is multiplied by up to 1/√ᾱ_t ≈ 15 (≫ 1: the estimate is noise, not a picture),
and FARM's relative foreground error Σ_fg (ẑ0_fg − z_0)² / Σ_fg z_0², over all t and over t ≤ 250 alone, where z_t
is almost z_0: a FARM that cannot reproduce a nearly clean latent there (error ≫ 0.2) flattens every sampled defect,
since the sampler mixes its estimate in down to t = 125. A prompt gain near 0 means the base model
paints the same thing inside a mask whatever defect it is asked for, so only FARM and the Adaptor can make a defect.
A window-frame model is probed on the centred windows around the masks, as it was trained.

Then the visible gate (:mod:`benchmarks.probe_pairs`, ``--pairs`` per type): real masks painted on normal images
by the production synthesis path, their median ring contrast and grain ratio against the real defects', per type
(pass: both 0.5–2×), and a contact sheet per model (``--sheets``). With ``--key-swap`` the same masks are also painted
under every defect key with the same noise (:func:`benchmarks.probe_pairs.key_swap`): if the median signed contrast
moves less between keys than between mask types, the model paints by mask and place, not by key. With ``--cells``
the probed windows are also painted on themselves and their cell contrast is compared with the real one
(:mod:`benchmarks.probe_cells`): does the model put a thin or small defect where it lies inside its latent cells?

    python -m benchmarks.generator_probe DATASET_ROOT [NAME=]MODEL_URI… [--images 64] [--pairs 8] [--json F]
        [--sheets DIR] [--key-swap] [--cells]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, get_args

import torch

from benchmarks.probe_cells import cell_contrast, cell_markdown
from benchmarks.probe_pairs import key_swap, paint_and_compare
from fast_core.data.layout import load_image, load_mask, read_dataset, split_anomalies
from fast_core.data.transforms import to_model_image, to_model_mask
from fast_core.data.window_level import background_mean, level_gain, scale_uint8
from fast_core.data.windows import cut_around
from fast_core.schedulers.scheduling_aias import AIASScheduler
from fast_core.synthesis_config import Paste, SynthesisConfig
from fast_core.training import farm_mixed_input
from pipelines.model_store import load_model
from pipelines.train.data import defect_key

logger = logging.getLogger(__name__)

TIMESTEPS = tuple(range(50, 1000, 100))  # t = 50, 150, …, 950: every noise level the sampler visits
LOW_T = 250  # FARM's error is also reported over t ≤ LOW_T, where z_t is nearly z_0
HIGH_T = 750  # the clean estimate's error is reported over t ≥ HIGH_T, the sampler's first steps


def load_probe_batch(
    root: str,
    size: int,
    channels: int,
    n: int,
    frame: str = "global",
    margin: float = 0.25,
    zoom: float = 1.0,
    level: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Up to ``n`` training-third anomaly images with masks, spread evenly over the sorted list, as the model sees
    them: resized to S × S (global frame) or the centred S × S window around the mask (window frame), scaled to the
    model's grey level when it has one (``ModelInfo.window_level``, as its training windows were)."""
    train = [r for r in split_anomalies(read_dataset(root).records).gen_train if r.mask_path is not None]
    if not train:
        raise ValueError(f"{root}: no training-third anomaly image with a mask")
    step = max(1, len(train) // n)
    recs = train[::step][:n]
    if frame != "window":
        x = torch.stack([to_model_image(load_image(r.image_path), size, channels) for r in recs])
        M = torch.stack([to_model_mask(load_mask(r.mask_path), size) for r in recs])
        return x, M, [defect_key(r) for r in recs]
    cuts = [cut_around(load_image(r.image_path), load_mask(r.mask_path), size, channels, margin, zoom) for r in recs]
    images = [c.image if level is None else scale_uint8(c.image, level_gain(level, background_mean(c.image, c.mask)))
              for c in cuts]  # fmt: skip
    x = torch.stack([torch.from_numpy(i).float() / 127.5 - 1.0 for i in images])
    M = torch.stack([torch.from_numpy(c.mask).float()[None] for c in cuts])
    return x, M, [defect_key(r) for r in recs]


@torch.no_grad()
def probe(model: Any, x: torch.Tensor, M: torch.Tensor, keys: list[str], seed: int = 0) -> dict[str, float]:
    """The probe's figures for one model and batch (see the module docstring), averaged over :data:`TIMESTEPS`."""
    g = torch.Generator().manual_seed(seed)
    z0 = model.encode(x).float()
    m = model.latent_mask(M).float()
    fg = m.expand_as(z0) > 0
    sums = {name: [0.0, 0.0] for name in ("unet_key", "unet_good", "fast")}
    farm_err: dict[int, float] = {}  # t → FARM's relative foreground error
    x0_err: dict[int, tuple[float, float]] = {}  # t → the clean estimate's relative error (fg, bg)
    alphas = AIASScheduler().alphas_cumprod  # ᾱ_t of the FAST schedule
    for t in TIMESTEPS:
        tt = torch.full((len(keys),), t, dtype=torch.long)
        eps = torch.randn(z0.shape, generator=g)
        z0_fg, z_mix = farm_mixed_input(model, z0, m, tt, eps, keys, M)
        preds = {
            "unet_key": model.unet_eps(z_mix, tt, keys, m, z0, M),
            "unet_good": model.unet_eps(z_mix, tt, ["good"] * len(keys), m, z0, M),
            "fast": model.predict_eps(z_mix, tt, keys, m, z0, M),
        }
        for name, pred in preds.items():
            sq = (pred.float() - eps).pow(2)
            sums[name][0] += float(sq[fg].mean())
            sums[name][1] += float(sq[~fg].mean())
        ab = float(alphas[t])
        z0_hat = (z_mix - (1.0 - ab) ** 0.5 * preds["fast"].float()) / ab**0.5  # ẑ0 = (z̃ − √(1−ᾱ) ε̂)/√ᾱ
        x0_sq = (z0_hat - z0).pow(2)
        x0_err[t] = (float(x0_sq[fg].sum() / z0[fg].pow(2).sum()), float(x0_sq[~fg].sum() / z0[~fg].pow(2).sum()))
        farm_err[t] = float((z0_fg - z0)[fg].pow(2).sum() / z0[fg].pow(2).sum())
    n = len(TIMESTEPS)
    out: dict[str, float] = {
        "images": float(len(keys)),
        "latent_fg_fraction": float(m.mean()),
        "latent_masks_empty": float((m.flatten(1).sum(1) == 0).sum()),
    }
    for name, (f, b) in sums.items():
        out[f"mse_fg_{name}"] = f / n
        out[f"mse_bg_{name}"] = b / n
    out["prompt_gain_fg"] = 1.0 - out["mse_fg_unet_key"] / out["mse_fg_unet_good"]
    out["farm_rel_err_fg"] = sum(farm_err.values()) / n
    low = [e for t, e in farm_err.items() if t <= LOW_T]
    out["farm_rel_err_fg_low_t"] = sum(low) / len(low)
    high = [e for t, e in x0_err.items() if t >= HIGH_T]
    out["x0_rel_err_fg_high_t"] = sum(e[0] for e in high) / len(high)
    out["x0_rel_err_bg_high_t"] = sum(e[1] for e in high) / len(high)
    return out


def markdown(rows: dict[str, dict[str, float]]) -> str:
    """One row per probed model."""
    head = (
        "| model | ε-MSE fg: UNet(key) | UNet(good) | UNet+Adaptor | ε-MSE bg: UNet+Adaptor | prompt gain fg | "
        "FARM rel. err fg | at t ≤ 250 | ẑ0 rel. err t ≥ 750: fg | bg |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['mse_fg_unet_key']:.4f} | {r['mse_fg_unet_good']:.4f} | {r['mse_fg_fast']:.4f} | "
            f"{r['mse_bg_fast']:.4f} | {100 * r['prompt_gain_fg']:.1f} % | {r['farm_rel_err_fg']:.3f} | "
            f"{r['farm_rel_err_fg_low_t']:.3f} | {r['x0_rel_err_fg_high_t']:.3f} | {r['x0_rel_err_bg_high_t']:.3f} |"
        )
    return "\n".join(lines)


def contrast_markdown(rows: dict[str, dict[str, Any]]) -> str:
    """One row per probed model and defect type: real and painted median ring contrast and grain ratio, the ratios
    painted / real, the median signed contrast real / painted with the share of painted defects of the real sign, and
    the gate (both ratios in [0.5, 2], the sign kept by at least half)."""
    lines = [
        "| model | defect type | contrast real | painted | ratio | grain real | painted | ratio | signed real / "
        "painted (same sign) | gate |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for name, r in rows.items():
        for key, v in r["ring_contrast"]["per_defect_type"].items():
            g, s = v["grain"], v["polarity"]
            share = "–" if s["same_sign_share"] is None else f"{100 * s['same_sign_share']:.0f} %"
            lines.append(
                f"| {name} | {key} | {v['real_median']} | {v['painted_median']} | {v['ratio']} | "
                f"{g['real_median']} | {g['painted_median']} | {g['ratio']} | "
                f"{s['real_median']} / {s['painted_median']} ({share}) | {'pass' if v['passes'] else 'FAIL'} |"
            )
    return "\n".join(lines)


def key_swap_markdown(rows: dict[str, dict[str, Any]]) -> str:
    """One row per probed model and mask type: the median signed contrast of its masks painted under each defect key,
    and the key spread; a last row per model with each key's spread over the mask types (:func:`key_swap`)."""
    lines = []
    for name, r in rows.items():
        swap = r.get("key_swap")
        if swap is None:
            continue
        keys = sorted(swap["type_spread"])
        lines += [
            f"| {name}: mask type ↓, painted as → | " + " | ".join(keys) + " | key spread |",
            "|---|" + "---:|" * (len(keys) + 1),
        ]
        for t, v in swap["signed"].items():
            cells = " | ".join(str(v.get(k, "–")) for k in keys)
            lines.append(f"| {t} | {cells} | {swap['key_spread'].get(t, '–')} |")
        lines.append("| type spread | " + " | ".join(str(swap["type_spread"][k]) for k in keys) + " | |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Probe each ``MODEL_URI`` (name=uri or uri) on DATASET_ROOT; print a markdown table, optionally write JSON."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset_root")
    ap.add_argument("models", nargs="+", help="published model folders, optionally as NAME=URI")
    ap.add_argument("--images", type=int, default=64, help="training-third images probed (default 64)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument(
        "--pairs", type=int, default=8, help="masks painted per defect type for the ring-contrast gate (0: skip)"
    )
    ap.add_argument("--sheets", type=Path, default=None, help="folder for <name>_sheet.png contact sheets")
    ap.add_argument(
        "--guidance", type=float, default=1.0, help="guidance w of the painted pairs (SynthesisConfig.guidance)"
    )
    ap.add_argument("--no-farm", action="store_true", help="paint the pairs without FARM")
    ap.add_argument(
        "--key-swap",
        action="store_true",
        help="also paint every type's masks under every defect key (the same noise): does the key steer the paint?",
    )
    ap.add_argument(
        "--cells",
        action="store_true",
        help="also paint the probed windows on themselves: is a defect put where it lies inside its latent cells?",
    )
    ap.add_argument(
        "--paste",
        choices=get_args(Paste),
        default="residual",
        help="what goes inside M in the painted pairs (SynthesisConfig.paste; default residual)",
    )
    ap.add_argument(
        "--smooth-min-radius",
        type=int,
        default=0,
        help="with --paste smooth: masks thinner than this half-thickness keep their change unsmoothed (default 0)",
    )
    ap.add_argument(
        "--smooth-max-sigma",
        type=float,
        default=None,
        help="with --paste smooth: the blur's σ capped at this many pixels (SynthesisConfig.smooth_max_sigma)",
    )
    args = ap.parse_args(argv)
    if args.images < 1 or args.pairs < 0:
        ap.error("--images must be >= 1 and --pairs >= 0")
    try:
        SynthesisConfig(
            nfe=10,
            guidance=args.guidance,
            smooth_min_radius=args.smooth_min_radius,
            smooth_max_sigma=args.smooth_max_sigma,
        )
    except ValueError as exc:
        ap.error(str(exc))
    torch.set_num_threads(args.threads)
    rows: dict[str, dict[str, Any]] = {}
    for spec in args.models:
        name, _, uri = spec.rpartition("=") if "=" in spec else (spec, "", spec)
        model, info = load_model(uri)
        x, M, keys = load_probe_batch(
            args.dataset_root,
            info.image_size,
            info.image_channels,
            args.images,
            info.frame,
            info.window_margin,
            info.window_zoom,
            info.window_level,
        )
        logger.info("probing %s (%s frame) on %d images", uri, info.frame, len(keys))
        rows[name] = probe(model, x, M, keys)
        sampler = SynthesisConfig(
            nfe=10,
            guidance=args.guidance,
            use_farm=not args.no_farm,
            paste=args.paste,
            smooth_min_radius=args.smooth_min_radius,
            smooth_max_sigma=args.smooth_max_sigma,
        )
        if args.cells:  # painted with paste "replace" whatever --paste says
            rows[name]["cell_contrast"] = cell_contrast(model, x, M, keys, sampler)
        if args.pairs:
            contrast, sheet = paint_and_compare(
                uri, info, args.dataset_root, args.pairs, threads=args.threads, sampler=sampler
            )
            rows[name]["ring_contrast"] = contrast
            if args.key_swap:
                rows[name]["key_swap"] = key_swap(
                    uri, info, args.dataset_root, args.pairs, threads=args.threads, sampler=sampler
                )
            if args.sheets is not None:
                args.sheets.mkdir(parents=True, exist_ok=True)
                (args.sheets / f"{name}_sheet.png").write_bytes(sheet)
    print(markdown(rows))
    if args.pairs:
        print(contrast_markdown(rows))
    if args.pairs and args.key_swap:
        print(key_swap_markdown(rows))
    if args.cells:
        print(cell_markdown(rows))
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
