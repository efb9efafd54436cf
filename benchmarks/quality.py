"""Quality benchmark (FAST_SPEC §8): does FAST data train better segmenters on real held-out defects?

One run, one dataset, every method side by side, the same segmenter budget for each::

    generator   train (or reuse) the FAST model on the dataset (generators see the training third only)
    manifest    ⌈N·(1 + headroom)⌉ rows per defect type: train/good images × real training-third masks, seeded;
                the baselines use one without a model URI (``<work>/manifest-…-nomodel``), so their datasets and
                segmenters are reused across generators; FAST methods one per generator (``<work>/datasets-<run>-
                <sha8>/``). With a window-frame model, FAST pairs keep each image's size and the baselines paint at
                ``window_baseline_size`` (256²) so that both reach the segmenter at nearly native sharpness
    synthesize  one dataset version per synthetic method (the manifest fixes normal images and seeds):
                  FAST (AIAS-10 + FARM) · FAST without FARM (AIAS-10) · FAST with FAST_SPEC §3's decoded-window
                  paste instead of the residual one (``fast_replace``, with --methods) · FAST with and without
                  FARM, the decoded change smoothed at the mask's own scale (``fast_smooth``,
                  ``fast_no_farm_smooth``, with --methods; fast_core.smooth_paste), or only inside masks at
                  least 16 px thick (``fast_routed``, ``fast_no_farm_routed``; ``…_routed_cell`` with the blur
                  capped at the decoder's cell scale, σ <= 3 px) · DDPM-T (T = 100 on
                  cpu-full, 1000 on GPU) · FAST on generated masks (``fast_masks_augment`` / ``_diffusion`` /
                  ``_mix``, with --methods: the mask stage makes the masks, a manifest with the same job seed and
                  counts pairs them with the normal images, FAST paints them; the sampled ones need
                  --mask-model-uri) ·
                  DDIM-50 · CutPaste · DRAEM-style Perlin (these two paint their own masks) · real-defect paste
                  (the row's real training-third defect cut out and pasted elsewhere on the normal image)
    evaluate    one segmenter per training set and segmenter seed (each method's pairs, "real third only", "real
                third + FAST"): every synthetic method trains on exactly N pairs per defect type (the first N it
                made; the headroom covers rejected rows, and a shortfall is reported with its reasons), with the
                same seeds, steps, batch, crops, augmentation and normal fraction; the segmenter is the pretrained
                EfficientNet-Lite0 U-Net at native resolution; tested on the real test set (the last 2/3 of each
                defect type + test/good). Kept beside their datasets: ``<work>/eval/<set>/seed<k>`` for sets no
                generator paints, ``<work>/datasets-<run>-<sha8>/eval/<set>/seed<k>`` for the generator's, so
                generators compared in one work folder keep their own segmenters
    diagnose    ring contrast |mean in M − mean around M| of each method's pairs next to the real defects'
                (benchmarks.quality_contrast): is the painted anomaly visible at all?
    report      results.json (every seed's metrics, mean and std per method), results.md (mean ± std tables, the
                targets under the 2σ rule of benchmarks.quality_stats), miou.png (bar chart with ± std whiskers)

Every step is resumable: a finished model, manifest, dataset version (``_SUCCESS``) or evaluation (``metrics.json``
with the same resolved config, written after its datasets' ``_SUCCESS``) is reused, so an interrupted benchmark
continues where it stopped and a dataset remade in its folder gets new segmenters.

Runbook (repository root, project venv active)::

    python -m benchmarks.quality ../shared/data/magnetic_tile --preset cpu-quick   # 1 seed, 5 training sets
    python -m benchmarks.quality ../shared/data/magnetic_tile --preset cpu-full    # 3 seeds, every training set
    python -m benchmarks.quality ../shared/data/kolektorsdd --preset cpu-full \\
        --model-uri runs/quality/kolektorsdd/train/kolektorsdd-cpu-inpaint/model    # reuse a trained model
    python -m benchmarks.quality /data/mvtec --preset gpu-full --methods fast fast_no_farm cutpaste
    python -m benchmarks.quality ../shared/data/magnetic_tile --preset cpu-full --methods fast_masks_augment \
        fast_masks_diffusion fast_masks_mix --mask-model-uri runs/magnetic-tile-mask-cpu/mask_model

Outputs under ``--work`` (default ``runs/quality/<dataset folder name>``); ``--results`` (default
``<work>/report``) gets results.json, results.md and miou.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.quality_contrast import dataset_contrast, real_third_contrast
from benchmarks.quality_report import METHOD_ORDER, anomaly_pairs, render_markdown, render_miou_chart, targets
from benchmarks.quality_stats import aggregate_seeds
from benchmarks.speed_common import git_commit
from fast_core.data.layout import load_image, read_dataset, split_anomalies
from fast_core.qc import QCConfig
from fast_core.synthesis import SynthesisConfig
from pipelines.config import dump_config, load_config
from pipelines.evaluate import EvaluateConfig, run_evaluation
from pipelines.evaluate.config import ScalingSettings, TrainSource
from pipelines.evaluate.run import METRICS_NAME
from pipelines.manifest import write_manifest
from pipelines.manifest_config import (
    ManifestConfig,
    ManifestCountsConfig,
    ManifestDatasetConfig,
    ManifestMasksConfig,
)
from pipelines.masks.config import (
    MasksComputeConfig,
    MasksConfig,
    MasksCountsConfig,
    MasksDatasetConfig,
    MasksSourcesConfig,
)
from pipelines.masks.run import run_masks
from pipelines.model_store import read_model_info
from pipelines.ray_utils import ensure_ray
from pipelines.synthesize import ComputeConfig, SynthesizeConfig, run_synthesis
from pipelines.synthesize.config import BaselineSettings
from pipelines.synthesize.outputs import SUCCESS as SUCCESS_NAME
from pipelines.train import TrainConfig, run_training

logger = logging.getLogger("benchmarks.quality")
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Preset:
    """Budget of one benchmark preset: generator, pairs, samplers, segmenter, seeds and compute."""

    train_config: str  # TrainConfig YAML (repository-relative) for a generator the benchmark trains itself
    generator_name: str  # the generator's run name suffix: presets with one train_config share one generator
    pairs_per_defect: int  # N pairs per defect type (FAST_SPEC §8.2; paper: 500)
    min_pairs: int  # at least this many pairs per method in all (N is raised for datasets with few defect types)
    ddpm_nfe: int  # steps of the many-step DDPM reference
    seg_steps: int  # segmenter optimiser steps (the same for every method)
    seg_batch: int
    seg_crop: int  # native-resolution training crop side of the segmenter
    seeds: tuple[int, ...]  # segmenter seeds: every training set is evaluated once per seed
    methods: tuple[str, ...]  # the training sets compared by default
    synth_cpus: float  # CPUs per synthesizer actor (its torch threads on CPU)
    synth_gpus: float
    use_gpu: bool  # segmenter training on GPU
    seg_cpus: float  # CPUs (torch threads on CPU) of the segmenter's Ray Train worker
    dtype: str = "float32"
    # fast_ref* start from each row's real defect pasted where its mask lies, noised to t₀ = ref_start_t (500: ᾱ = 0.28,
    # the latent keeps √ᾱ = 0.53 of the defect's own signal; SDEdit's middle strength, set before any run) and run
    # AIAS-10 from there. Other values (--ref-start-t) diagnose how much of a real defect the generator keeps; give
    # each its own --work, as the method names do not carry t₀.
    ref_start_t: int = 500
    headroom: float = 0.25  # the manifest asks ⌈N·(1 + headroom)⌉ rows per type, so rejected rows leave N pairs
    contrast_size: int = 128  # side of baseline pairs and ring contrast without a model or with a global-frame one
    # With a window-frame model, FAST pairs keep each image's own size; the baselines paint at this side instead (at
    # least every image side of the shared data, 256), so resizing their pairs back to the image barely blurs them.
    window_baseline_size: int = 256


#: FAST on masks made by the mask stage (augmented, diffusion-sampled, half and half) instead of the real third.
MASK_METHODS = ("fast_masks_augment", "fast_masks_diffusion", "fast_masks_mix")
#: The training sets of FAST_SPEC §8.5 plus the real-defect paste baseline.
ALL_METHODS = (
    "fast", "fast_no_farm", "fast_replace", "fast_smooth", "fast_no_farm_smooth", "fast_routed", "fast_no_farm_routed",
    "fast_routed_cell", "fast_no_farm_routed_cell", "fast_clip", "fast_no_farm_clip", "fast_farm_early",
    "fast_ref", "fast_ref_no_farm", *MASK_METHODS, "ddpm", "ddim", "dpmpp", "unipc",
    "cutpaste", "perlin", "realpaste", "real_third", "real_third_fast",
)  # fmt: skip
QUICK_METHODS = ("fast", "cutpaste", "perlin", "realpaste", "real_third")
#: The other fast solvers on the same model, FARM and loop (DPM-Solver++(2M) and UniPC at AIAS's NFE of 10): run them
#: with --methods; in a CPU preset each adds one segmenter per seed (about 3–5 minutes) to budgets already spent.
SOLVER_METHODS = ("dpmpp", "unipc")
#: cpu-full leaves DDIM-50, the paste ablations and the clipped samplers out (add them with --methods) and runs its
#: many-step reference as DDPM-100, to stay under 90 minutes on 2 cores: 8 sets × 3 seeds × ~155 s segmenters (400
#: channels-last steps at ~0.32 s + ~28 s of testing) + ~11 min of DDPM-100 synthesis on Magnetic Tile's 256² model.
ABLATIONS = (
    "ddim", "fast_replace", "fast_smooth", "fast_no_farm_smooth", "fast_routed", "fast_no_farm_routed",
    "fast_routed_cell", "fast_no_farm_routed_cell", "fast_clip",
    "fast_no_farm_clip", "fast_farm_early",
    "fast_ref", "fast_ref_no_farm",
    *MASK_METHODS,
)  # fmt: skip
CPU_FULL_METHODS = tuple(m for m in ALL_METHODS if m not in ABLATIONS and m not in SOLVER_METHODS)

CPU_QUICK = Preset(
    train_config="jobs/configs/train-cpu-window.yaml",
    generator_name="cpu-pixelmask",  # a new name when the recipe changes: an old run refuses a changed config
    pairs_per_defect=16,
    min_pairs=64,
    ddpm_nfe=200,
    seg_steps=750,
    seg_batch=8,
    seg_crop=128,
    seeds=(0,),
    methods=QUICK_METHODS,
    synth_cpus=2,
    synth_gpus=0,
    use_gpu=False,
    seg_cpus=2,
)

PRESETS: dict[str, Preset] = {
    "cpu-quick": CPU_QUICK,
    "cpu-full": dataclasses.replace(CPU_QUICK, ddpm_nfe=100, seg_steps=400, seeds=(0, 1, 2), methods=CPU_FULL_METHODS),
    "gpu-full": Preset(
        train_config="jobs/configs/train-gpu-full.yaml",
        generator_name="gpu-full",
        pairs_per_defect=500,
        min_pairs=500,
        ddpm_nfe=1000,
        seg_steps=4000,
        seg_batch=16,
        seg_crop=256,
        seeds=(0, 1, 2),
        methods=ALL_METHODS,
        synth_cpus=4,
        synth_gpus=1,
        use_gpu=True,
        seg_cpus=4,
        dtype="bfloat16",
        contrast_size=256,
    ),
}


@dataclass(frozen=True)
class Method:
    """One synthetic training set: how its pairs are made."""

    name: str
    generator: str  # SynthesizeConfig.generator
    sampler: str = "aias"
    nfe: int = 10
    use_farm: bool = True
    paste: str = "residual"  # SynthesisConfig.paste
    smooth_min_radius: int = 0  # SynthesisConfig.smooth_min_radius
    smooth_max_sigma: float | None = None  # SynthesisConfig.smooth_max_sigma
    clip_x0: float | None = None  # SynthesisConfig.clip_x0 (TAEF2: 3 s, the decoder's own soft-clamp range)
    farm_min_t: int = 0  # SynthesisConfig.farm_min_t
    start: str = "noise"  # SynthesisConfig.start
    start_t: int = 999  # SynthesisConfig.start_t
    masks: str = "real"  # where the manifest's masks come from: "real" (training third) or a key of MASK_SOURCES


def synthetic_methods(preset: Preset) -> dict[str, Method]:
    """The synthetic methods of FAST_SPEC §8.5 at this preset (DDPM's step count depends on it)."""
    return {
        "fast": Method("fast", "fast"),
        "fast_no_farm": Method("fast_no_farm", "fast", use_farm=False),
        "fast_replace": Method("fast_replace", "fast", paste="replace"),
        "fast_smooth": Method("fast_smooth", "fast", paste="smooth"),
        "fast_no_farm_smooth": Method("fast_no_farm_smooth", "fast", use_farm=False, paste="smooth"),
        "fast_routed": Method("fast_routed", "fast", paste="smooth", smooth_min_radius=ROUTE_MIN_RADIUS),
        "fast_no_farm_routed": Method(
            "fast_no_farm_routed", "fast", use_farm=False, paste="smooth", smooth_min_radius=ROUTE_MIN_RADIUS
        ),
        "fast_routed_cell": Method(
            "fast_routed_cell", "fast", paste="smooth", smooth_min_radius=ROUTE_MIN_RADIUS, smooth_max_sigma=CELL_SIGMA
        ),
        "fast_no_farm_routed_cell": Method(
            "fast_no_farm_routed_cell",
            "fast",
            use_farm=False,
            paste="smooth",
            smooth_min_radius=ROUTE_MIN_RADIUS,
            smooth_max_sigma=CELL_SIGMA,
        ),  # fmt: skip
        "fast_clip": Method("fast_clip", "fast", clip_x0=CLIP_X0),
        "fast_no_farm_clip": Method("fast_no_farm_clip", "fast", use_farm=False, clip_x0=CLIP_X0),
        "fast_farm_early": Method("fast_farm_early", "fast", clip_x0=CLIP_X0, farm_min_t=FARM_EARLY_T),
        "fast_ref": Method("fast_ref", "fast", start="reference", start_t=preset.ref_start_t),
        "fast_ref_no_farm": Method(
            "fast_ref_no_farm", "fast", use_farm=False, start="reference", start_t=preset.ref_start_t
        ),
        "fast_masks_augment": Method("fast_masks_augment", "fast", masks="augment"),
        "fast_masks_diffusion": Method("fast_masks_diffusion", "fast", masks="diffusion"),
        "fast_masks_mix": Method("fast_masks_mix", "fast", masks="mix"),
        "ddpm": Method("ddpm", "fast", sampler="ddpm", nfe=preset.ddpm_nfe),
        "ddim": Method("ddim", "fast", sampler="ddim", nfe=50),
        "dpmpp": Method("dpmpp", "fast", sampler="dpmpp", nfe=10),
        "unipc": Method("unipc", "fast", sampler="unipc", nfe=10),
        "cutpaste": Method("cutpaste", "cutpaste"),
        "cutpaste_scar": Method("cutpaste_scar", "cutpaste_scar"),
        "perlin": Method("perlin", "perlin"),
        "realpaste": Method("realpaste", "realpaste"),
    }


#: |ẑ0| bound of the clipped FAST methods, in scaled latent units: TAEF2's decoder soft-clamps its input to ±3
#: (3 tanh(u/3)), i.e. ±3 s = ±4.1 at the measured s = 1.375 of the CPU generator; beyond it nothing decodes
#: differently, and an unconverged UNet's ẑ0 overshoots there (sampled latents up to |z| = 10 inside M without FARM).
CLIP_X0 = 4.1
#: fast_routed smooths the change only inside masks at least this thick (half-thickness r in window pixels, 8: 16 px
#: across); thinner ones keep the residual paste. Set from the smooth paste's own run: it blurred away KolektorSDD's
#: cracks (r <= 4) and Magnetic Tile's blowholes (r <= 5), and helped only the wide fray and uneven patches (median
#: r 14 and 21).
ROUTE_MIN_RADIUS = 8
#: The ``_routed_cell`` methods cap that blur at σ = 3 window pixels, the scale of the decoder's 8-px cell (TAEF2,
#: f = 8): a period-8 pattern keeps 6 %, one of two cells 50 % (fast_core.smooth_paste). With σ = r/2 (7–20 px in
#: fray and uneven patches) a segmenter trained on the routed pairs learned soft shading: 1–5 % of the background of
#: Magnetic Tile's test images far from any defect came out positive, mostly the tile's shaded border, against
#: 0.2–0.6 % for CutPaste (benchmarks/RESULTS.md).
CELL_SIGMA = 3.0
#: fast_farm_early mixes with FARM only in the first two AIAS segments (t = 999, 874): FARM's MSE-trained estimate is
#: a conditional mean, and mixed in at every step it leaves the sampled latent inside M at std 0.46 against 1.04 for
#: real latents (0.85 when it stops at t = 800).
FARM_EARLY_T = 800

#: The mask stage's source weights behind each FAST-on-generated-masks method (FAST_SPEC §7; `fastgen masks`).
MASK_SOURCES: dict[str, dict[str, float]] = {
    "augment": {"augment": 1.0, "diffusion": 0.0, "real": 0.0},
    "diffusion": {"augment": 0.0, "diffusion": 1.0, "real": 0.0},
    "mix": {"augment": 0.5, "diffusion": 0.5, "real": 0.0},
}

#: Training sets that are not one synthetic method alone.
REAL_SETS = ("real_third", "real_third_fast")


@dataclass
class Timings:
    """Wall seconds per phase (reused steps count ~0)."""

    phases: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, seconds: float) -> None:
        self.phases[name] = round(self.phases.get(name, 0.0) + seconds, 2)


def run_commit(started: str) -> str:
    """The commit the run started at (``-dirty`` when tracked files differed), and the one at report time if other.

    Ray workers import the code on disk as they start, so a commit made while the run goes on is named too.
    """
    now = git_commit()
    return started if now == started else f"{started} (at report time: {now})"


def defect_keys(root: str) -> list[str]:
    """``category/defect`` keys with at least one generator-training (first-third) image."""
    split = split_anomalies(read_dataset(root).records)
    return sorted({f"{r.category}/{r.defect_type}" for r in split.gen_train})


def pairs_per_key(preset: Preset, n_keys: int, override: int | None) -> int:
    """N = max(pairs_per_defect, ⌈min_pairs / number of defect types⌉), or the command-line override."""
    return override if override is not None else max(preset.pairs_per_defect, math.ceil(preset.min_pairs / n_keys))


def requested_per_key(preset: Preset, n: int) -> int:
    """Manifest rows per defect type: ⌈N·(1 + headroom)⌉, so that N pairs remain after rejections.

    >>> requested_per_key(PRESETS["cpu-quick"], 16)
    20
    """
    return math.ceil(n * (1.0 + preset.headroom))


def ensure_generator(args: argparse.Namespace, preset: Preset, name: str, work: Path, timings: Timings) -> str:
    """The published FAST model: ``--model-uri`` when given, else trained (or resumed) under ``<work>/train``."""
    if args.model_uri:
        return str(args.model_uri)
    overrides = [
        f"dataset.root={args.dataset_root}",
        f"run_name={name}-{preset.generator_name}",
        f"storage_path={work / 'train'}",
        "publish_uri=null",
        *args.train_set,
    ]
    cfg = load_config(TrainConfig, REPO / preset.train_config, overrides)
    start = time.perf_counter()
    summary = run_training(cfg)
    timings.add("train_generator", time.perf_counter() - start)
    if summary.model_uri is None:
        raise ValueError(f"{preset.train_config} has no fast stage: no model to synthesize with")
    logger.info("generator: %s", summary.model_uri)
    return summary.model_uri


def synthesize_all(
    methods: list[Method],
    manifest: str,
    preset: Preset,
    folder: Path,
    timings: Timings,
    geometry: tuple[int, int],
) -> dict[str, dict[str, Any]]:
    """One dataset version per synthetic method under ``<folder>/<method>``; returns their summaries.

    ``geometry`` (S, C): the baselines make their pairs at S × S with C channels without reading any model; FAST
    methods paint in the model's own geometry and frame.
    """
    out: dict[str, dict[str, Any]] = {}
    baseline = BaselineSettings(image_size=geometry[0], image_channels=geometry[1])
    for method in methods:
        fast = method.generator == "fast"
        cfg = SynthesizeConfig(
            manifest=manifest,
            out=str(folder / method.name),
            shard_size=64,
            generator=method.generator,  # type: ignore[arg-type]
            sampler=SynthesisConfig(
                sampler=method.sampler,  # type: ignore[arg-type]
                nfe=method.nfe,
                use_farm=method.use_farm,
                paste=method.paste,  # type: ignore[arg-type]
                smooth_min_radius=method.smooth_min_radius,
                smooth_max_sigma=method.smooth_max_sigma,
                clip_x0=method.clip_x0,
                farm_min_t=method.farm_min_t,
                start=method.start,  # type: ignore[arg-type]
                start_t=method.start_t,
            ),
            qc=QCConfig(min_mask_area_px=4),
            baseline=baseline if not fast else BaselineSettings(),
            compute=ComputeConfig(
                concurrency=1,
                num_cpus=preset.synth_cpus,
                num_gpus=preset.synth_gpus if fast else 0.0,
                dtype=preset.dtype if fast else "float32",  # type: ignore[arg-type]
                task_cpus=preset.synth_cpus if preset.synth_gpus == 0 else 1.0,
                batch_size=8,
            ),
            preview_pairs=16,
        )
        logger.info("synthesize %s → %s", method.name, cfg.out)
        start = time.perf_counter()
        summary = run_synthesis(cfg)
        seconds = time.perf_counter() - start
        timings.add(f"synthesize_{method.name}", seconds)
        out[method.name] = {
            "uri": cfg.out,
            "written": summary.written,
            "rejected": summary.rejected,
            "rejected_by_reason": summary.rejected_by_reason,
            "pairs_per_s_this_run": round(summary.pairs_per_s, 4),
            "already_complete": summary.already_complete,
            "wall_s": round(seconds, 2),
        }
    return out


def generator_tag(model_uri: str) -> str:
    """``datasets-<name>-<sha8>``: the folder of one generator's manifest and FAST datasets (name: the training run;
    sha8 of the URI, a local path made absolute first, so a relative and an absolute --model-uri share the folder).

    >>> generator_tag("/w/train/magnetic_tile-cpu-window/model")
    'datasets-magnetic_tile-cpu-window-006bce03'
    >>> generator_tag("/w/train/magnetic_tile-cpu-window/model/")
    'datasets-magnetic_tile-cpu-window-006bce03'
    """
    uri = model_uri.rstrip("/") if "://" in model_uri else os.path.abspath(model_uri)
    path = Path(uri)
    name = path.parent.name if path.name == "model" else path.name
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    return f"datasets-{safe}-{hashlib.sha256(uri.encode()).hexdigest()[:8]}"


def manifest_config(
    root: str, requested: int, seed: int, model_uri: str, work: Path, tag: str = "", masks_uri: str | None = None
) -> ManifestConfig:
    """The manifest of N·(1 + headroom) rows per defect type: without a model for the baselines (``<work>/
    manifest-n<R>-seed<s>-nomodel``), or for one generator (``<work>/<tag>/manifest-n<R>-seed<s>``, with
    ``-<mask set>`` when its masks come from the mask stage's output at ``masks_uri`` instead of the training third).
    Every manifest of one run has the same job seed and N·(1 + headroom) rows per type, drawn from the same normal
    images; which of them each row gets also depends on how many masks the type has (pipelines.manifest draws a
    permutation of the masks first), so two mask sets of different sizes pair differently."""
    folder = (
        work / tag / f"manifest-n{requested}-seed{seed}"
        if model_uri
        else work / f"manifest-n{requested}-seed{seed}-nomodel"
    )
    masks = ManifestMasksConfig()
    if masks_uri:
        folder = folder.with_name(f"{folder.name}-{Path(masks_uri).name}")
        masks = ManifestMasksConfig(source="shards", shards_uri=masks_uri)
    return ManifestConfig(
        dataset=ManifestDatasetConfig(root=root),
        counts=ManifestCountsConfig(default=requested),
        masks=masks,
        job_seed=seed,
        model_uri=model_uri,
        out=str(folder),
    )


def ensure_masks(
    source: str, root: str, requested: int, seed: int, mask_model_uri: str | None, folder: Path, timings: Timings
) -> str:
    """The mask stage's output for one mask set of :data:`MASK_SOURCES` (``requested`` masks per defect type, at each
    type's most common real mask shape, the stage's default filters); resumes or reuses a finished one."""
    out = folder / f"masks-{source}-n{requested}-seed{seed}"
    weights = MASK_SOURCES[source]
    cfg = MasksConfig(
        dataset=MasksDatasetConfig(root=root),
        out=str(out),
        counts=MasksCountsConfig(default=requested),
        sources=MasksSourcesConfig(**weights),
        mask_model_uri=mask_model_uri if weights["diffusion"] > 0 else None,
        job_seed=seed,
        compute=MasksComputeConfig(num_cpus=2),
    )
    logger.info("masks %s → %s", source, out)
    start = time.perf_counter()
    summary = run_masks(cfg)
    timings.add(f"masks_{source}", time.perf_counter() - start)
    logger.info("masks %s: %d written, %d rejected", source, summary.written, summary.rejected)
    return str(out)


def train_sources(name: str, datasets: dict[str, dict[str, Any]], n: int) -> list[TrainSource]:
    """The training set of one row of the table: a synthetic method's first ``n`` pairs per defect type."""
    if name == "real_third":
        return [TrainSource(kind="real_third")]
    if name == "real_third_fast":
        fast = TrainSource(kind="synthetic", uri=datasets["fast"]["uri"], pairs_per_key=n)
        return [fast, TrainSource(kind="real_third")]
    return [TrainSource(kind="synthetic", uri=datasets[name]["uri"], pairs_per_key=n)]


def eval_folder(name: str, work: Path, tag: str) -> Path:
    """Where a training set's segmenters are kept: ``<work>/<tag>/eval/<name>`` when the set is painted by the
    generator whose folder is ``tag`` (see ``generator_tag``), ``<work>/eval/<name>`` when it is not.

    Keyed as the datasets are, so two generators compared in one work folder each keep their segmenters, and the
    baselines' segmenters (which no generator paints) are shared by both.

    >>> eval_folder("fast", Path("/w"), "datasets-run-0123abcd").as_posix()
    '/w/datasets-run-0123abcd/eval/fast'
    >>> eval_folder("cutpaste", Path("/w"), "").as_posix()
    '/w/eval/cutpaste'
    """
    return (work / tag if tag else work) / "eval" / name


def evaluation_config(
    name: str,
    seed: int,
    datasets: dict[str, dict[str, Any]],
    args: argparse.Namespace,
    preset: Preset,
    n: int,
    folder: Path,
) -> EvaluateConfig:
    """The segmenter run of one training set and seed in ``folder / seed<seed>`` (everything but the sources and
    the seed is shared)."""
    pretrained = args.encoder == "efficientnet_lite0"
    return EvaluateConfig(
        dataset_root=args.dataset_root,
        out=str(folder / f"seed{seed}"),
        train_sources=train_sources(name, datasets, n),
        seed=seed,
        steps=args.seg_steps or preset.seg_steps,
        batch_size=preset.seg_batch,
        resolution="native",
        crop_size=preset.seg_crop,
        in_channels=3 if pretrained else args.channels,
        encoder=args.encoder,
        pretrained=pretrained,
        arch=args.arch,
        scaling=ScalingSettings(num_workers=1, use_gpu=preset.use_gpu, cpus_per_worker=preset.seg_cpus),
        log_every=50,
    )


def remade_since(metrics_path: Path, cfg: EvaluateConfig) -> bool:
    """True when a synthetic source of ``cfg`` was completed after ``metrics_path`` was written.

    The resolved config names a dataset by its folder; a dataset remade in the same folder (another sampler setting,
    a retrained model at the same path) must not be judged by the segmenter of the old one.
    """
    written = metrics_path.stat().st_mtime
    for source in cfg.train_sources:
        success = Path(source.uri or "") / SUCCESS_NAME
        if source.kind == "synthetic" and success.exists() and success.stat().st_mtime > written:
            return True
    return False


def evaluate_all(
    names: list[str],
    datasets: dict[str, dict[str, Any]],
    args: argparse.Namespace,
    preset: Preset,
    n: int,
    folders: dict[str, Path],
    timings: Timings,
) -> dict[str, dict[str, Any]]:
    """Train and test one segmenter per training set and seed under ``folders[name]``; reuse ``metrics.json``
    written there with the same config.

    Returns, per training set, ``{"seeds": {seed: metrics.json}}`` or ``{"error": why}``.
    """
    results: dict[str, dict[str, Any]] = {}
    total, done = len(names) * len(args.seeds), 0
    for name in names:
        source = "fast" if name == "real_third_fast" else name
        if source in datasets and datasets[source]["written"] == 0:
            reasons = datasets[source]["rejected_by_reason"]
            results[name] = {"error": f"{source} wrote no pair (rejected: {reasons}); no segmenter trained"}
            logger.error("evaluate %s: %s", name, results[name]["error"])
            done += len(args.seeds)
            continue
        results[name] = {"seeds": {}}
        for seed in args.seeds:
            done += 1
            cfg = evaluation_config(name, seed, datasets, args, preset, n, folders[name])
            metrics_path = Path(cfg.out) / METRICS_NAME
            resolved_path = Path(cfg.out) / "config.resolved.yaml"
            if (
                metrics_path.exists()
                and resolved_path.exists()
                and resolved_path.read_text() == dump_config(cfg)
                and not remade_since(metrics_path, cfg)
            ):
                logger.info("[%d/%d] evaluate %s seed %d: reusing %s", done, total, name, seed, metrics_path)
                results[name]["seeds"][seed] = json.loads(metrics_path.read_text())
                continue
            logger.info(
                "[%d/%d] evaluate %s seed %d: %s", done, total, name, seed, [s.describe() for s in cfg.train_sources]
            )
            start = time.perf_counter()
            results[name]["seeds"][seed] = run_evaluation(cfg)
            timings.add(f"evaluate_{name}", time.perf_counter() - start)
    return results


def method_summary(name: str, seeds: dict[int, dict[str, Any]], n: int, n_keys: int) -> dict[str, Any]:
    """Mean ± std over seeds, every seed's metrics, the pairs used and how many of the N per type were not made."""
    first = seeds[min(seeds)]
    pairs = first["train"]["pairs"]
    shortfall = sum(max(0, n * n_keys - c) for s, c in pairs.items() if s.startswith("synthetic:"))
    return {
        **aggregate_seeds(seeds),
        "anomaly_pairs": anomaly_pairs(first),
        "pairs": first["train"]["pairs"],
        "pairs_by_key": first["train"].get("pairs_by_key", {}),
        "shortfall": shortfall,
        "per_seed": {
            str(seed): {
                "overall": ev["overall"],
                "per_defect_type": ev["per_defect_type"],
                "mean_over_defect_types": ev["mean_over_defect_types"],
                "train": ev["train"],
                "timing_s": ev["timing_s"],
            }
            for seed, ev in sorted(seeds.items())
        },
    }


def dataset_channels(root: str) -> int:
    """3 when any of the first train/good images is colour (an RGB file whose channels differ), else 1."""
    index = read_dataset(root)
    goods = [r for r in index.records if r.defect_type == "good"][:8]
    for record in goods:
        image = load_image(record.image_path, "RGB")
        if not (np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2])):
            return 3
    return 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.quality",
        description="FAST_SPEC §8 quality benchmark: segmenters trained on each method's pairs, tested on real "
        "held-out defects, with error bars over segmenter seeds.",
    )
    parser.add_argument("dataset_root", help="MVTec-layout dataset root (a category folder or a folder of them)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu-quick")
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=[*METHOD_ORDER],
        help="training sets to compare (default: the preset's; cpu-quick: fast cutpaste perlin realpaste real_third)",
    )
    parser.add_argument("--model-uri", help="reuse this published FAST model instead of training one")
    parser.add_argument(
        "--mask-model-uri",
        help="a trained mask diffusion model (fastgen train, stage mask) for fast_masks_diffusion and fast_masks_mix",
    )
    parser.add_argument(
        "--train-set", action="append", default=[], metavar="KEY=VALUE", help="override in the generator TrainConfig"
    )
    parser.add_argument("--pairs-per-defect", type=int, help="N pairs per defect type (default: the preset's rule)")
    parser.add_argument("--seg-steps", type=int, help="segmenter steps (default: the preset's)")
    parser.add_argument("--seeds", type=int, nargs="+", help="segmenter seeds (default: the preset's)")
    parser.add_argument("--arch", choices=["unet", "fpn"], default="unet", help="segmenter decoder")
    parser.add_argument(
        "--encoder",
        choices=["efficientnet_lite0", "resnet18"],
        default="efficientnet_lite0",
        help="segmenter encoder: the pretrained EfficientNet-Lite0 (default) or a ResNet-18 trained from scratch",
    )
    parser.add_argument(
        "--ref-start-t",
        type=int,
        help="t0 of the fast_ref methods' reference start (default: the preset's, 500); use its own --work",
    )
    parser.add_argument("--seed", type=int, default=0, help="manifest job seed (which normal images, masks, seeds)")
    parser.add_argument("--work", type=Path, help="working folder (default runs/quality/<dataset folder name>)")
    parser.add_argument("--results", type=Path, help="report folder (default <work>/report)")
    args = parser.parse_args(argv)
    if not Path(args.dataset_root).is_dir():
        parser.error(f"dataset_root {args.dataset_root!r} is not a folder")
    args.dataset_root = str(Path(args.dataset_root).resolve())  # every stage gets the absolute path
    if args.pairs_per_defect is not None and args.pairs_per_defect < 1:
        parser.error("--pairs-per-defect must be >= 1")
    if args.seeds is not None and (len(set(args.seeds)) != len(args.seeds) or min(args.seeds) < 0):
        parser.error("--seeds must be distinct non-negative integers")
    preset = PRESETS[args.preset]
    args.methods = list(args.methods or preset.methods)
    args.seeds = list(args.seeds or preset.seeds)
    sampled = sorted(m for m in args.methods if m in ("fast_masks_diffusion", "fast_masks_mix"))
    if sampled and not args.mask_model_uri:
        parser.error(f"--methods {' '.join(sampled)} sample masks: give --mask-model-uri (a trained mask model)")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table; exit 0 (the targets are reported, not asserted)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    preset = PRESETS[args.preset]
    if args.ref_start_t is not None:
        preset = dataclasses.replace(preset, ref_start_t=args.ref_start_t)
    root = args.dataset_root
    name = Path(root).name
    work = (args.work or REPO / "runs" / "quality" / name).resolve()
    report_dir = args.results or work / "report"
    timings = Timings()
    start, started_at = time.perf_counter(), git_commit()
    keys = defect_keys(args.dataset_root)
    if not keys:
        raise SystemExit(f"{args.dataset_root}: no defect type with a generator-training image")
    n = pairs_per_key(preset, len(keys), args.pairs_per_defect)
    names = [m for m in METHOD_ORDER if m in args.methods]
    available = synthetic_methods(preset)
    needed = {m for m in names if m in available} | ({"fast"} if "real_third_fast" in names else set())
    args.channels = dataset_channels(root)  # the ResNet-18 option's input; the pretrained encoder takes 3
    logger.info(
        "%s: %d defect types × %d pairs; training sets: %s; segmenter seeds %s",
        name, len(keys), n, ", ".join(names), args.seeds,
    )  # fmt: skip

    # Logical CPUs of a local Ray: the synthesizer actor takes synth_cpus (its torch threads) and the read/encode
    # tasks need room beside it, so advertise twice the cores (ignored when RAY_ADDRESS names a cluster).
    ensure_ray(max(4, 2 * (os.cpu_count() or 1)))
    # FAST methods need the generator; a baseline-only run needs no model and paints at contrast_size × channels.
    uses_model = any(available[m].generator == "fast" for m in needed) or bool(args.model_uri)
    model_uri = ensure_generator(args, preset, name, work, timings) if uses_model else ""
    # Read once, before any work: a missing or incomplete --model-uri fails here.
    info = read_model_info(model_uri) if model_uri else None
    # The baselines never read the model: they paint at the model's geometry (or the preset's) from a manifest
    # without a model URI, so their datasets and segmenters are reused across generators.
    windowed = info is not None and info.frame == "window"
    if info is None:
        geometry = (preset.contrast_size, args.channels)
    else:
        geometry = (preset.window_baseline_size if windowed else info.image_size, info.image_channels)
    contrast_size = None if windowed else geometry[0]  # window runs: every pair measured at its own size
    datasets: dict[str, dict[str, Any]] = {}
    requested = requested_per_key(preset, n)
    methods = [available[m] for m in available if m in needed]
    t0 = time.perf_counter()
    baselines = [m for m in methods if m.generator != "fast"]
    if baselines:
        manifest = write_manifest(manifest_config(root, requested, args.seed, "", work))
        folder = work / f"datasets-{geometry[0]}px-{geometry[1]}ch"
        datasets.update(synthesize_all(baselines, manifest.uri, preset, folder, timings, geometry))
    fast_methods = [m for m in methods if m.generator == "fast"]
    fast_names = {m for m in needed if available[m].generator == "fast"}
    tag = generator_tag(model_uri) if model_uri else ""
    for masks in sorted({m.masks for m in fast_methods}, key=lambda k: k != "real"):
        group = [m for m in fast_methods if m.masks == masks]
        masks_uri = None
        if masks != "real":
            masks_uri = ensure_masks(masks, root, requested, args.seed, args.mask_model_uri, work / tag, timings)
        manifest = write_manifest(manifest_config(root, requested, args.seed, model_uri, work, tag, masks_uri))
        datasets.update(synthesize_all(group, manifest.uri, preset, work / tag, timings, geometry))
    timings.add("manifests_and_synthesis", time.perf_counter() - t0)
    contrast = {"real_third": real_third_contrast(root, contrast_size)}
    contrast.update({m: dataset_contrast(d["uri"], contrast_size) for m, d in datasets.items()})
    painted = fast_names | {"real_third_fast"}  # the sets whose pairs come from the generator
    folders = {m: eval_folder(m, work, tag if m in painted else "") for m in names}
    evaluations = evaluate_all(names, datasets, args, preset, n, folders, timings)

    report = {
        "dataset_root": root,
        "dataset": name,
        "preset": args.preset,
        "preset_settings": {**preset.__dict__, "seg_steps": args.seg_steps or preset.seg_steps},
        "command": " ".join(["python -m benchmarks.quality", *(argv if argv is not None else sys.argv[1:])]),
        "commit": run_commit(started_at),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
        },
        "model_uri": model_uri,
        "baseline_geometry": {"image_size": geometry[0], "image_channels": geometry[1]},
        "frame": info.frame if info else None,
        "segmenter": f"{args.encoder}{' (ImageNet-pretrained)' if args.encoder == 'efficientnet_lite0' else ''} "
        f"{args.arch}, native resolution, {preset.seg_crop}² crops",
        "seeds": args.seeds,
        "defect_types": keys,
        "pairs_per_defect": n,
        "requested_per_defect": requested if needed else None,
        "datasets": datasets,
        "ring_contrast": contrast,
        "failed": {m: ev["error"] for m, ev in evaluations.items() if "error" in ev},
        "methods": {
            m: method_summary(m, ev["seeds"], n, len(keys)) for m, ev in evaluations.items() if "error" not in ev
        },
        "timing_s": {**timings.phases, "total": round(time.perf_counter() - start, 2)},
    }
    report["targets"] = targets(report)
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = render_markdown(report)
    (report_dir / "results.md").write_text(markdown)
    render_miou_chart(report, report_dir / "miou.png")
    print(markdown)
    logger.info("report: %s (total %.0f s)", report_dir, report["timing_s"]["total"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
