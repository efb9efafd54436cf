"""The ``fastgen demo`` chain: a list of named steps run in order on a procedural dataset it makes itself.

Each :class:`DemoStep` reads and fills a shared :class:`DemoContext`. The steps: make the procedural dataset under
``<out>/dataset``, write ``<out>/config.resolved.yaml``, inspect the dataset; then (``chain.enabled``) train a tiny
FAST model from scratch with Ray Train (``<out>/runs``), refresh a dataset version with it (augmented masks →
manifest → Ray Data synthesis → validation → ``LATEST``, under ``<out>/datasets``), and train and test a segmenter
on that version (``<out>/evaluation/metrics.json``). Everything runs on CPU at toy scale: the point is the whole
chain, not the quality of a model trained for a minute.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fast_core.configbase import from_dict
from fast_core.data.procedural import ProceduralConfig, make_procedural_dataset
from fast_core.data.validate import Report
from pipelines.config import RESOLVED_NAME, dump_config
from pipelines.inspect import InspectConfig, inspect_dataset

logger = logging.getLogger(__name__)

DEMO_DATASET = "demo"  # the dataset name under <out>/datasets


@dataclass(kw_only=True)
class ChainConfig:
    """The train → refresh → evaluate part of the demo (tiny preset, CPU)."""

    enabled: bool = True  # false: stop after the inspection
    image_size: int = 32  # model, synthesis and segmenter resolution (the tiny preset is 32 px)
    train_steps: int = 40  # optimizer steps of each training stage (vae, base, fast)
    masks_per_defect: int = 12  # augmented masks made per defect type
    pairs_per_defect: int = 8  # synthesized pairs per defect type
    evaluate_steps: int = 40  # segmenter optimizer steps

    def __post_init__(self) -> None:
        for name in ("image_size", "train_steps", "masks_per_defect", "pairs_per_defect", "evaluate_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"DemoConfig.chain.{name} must be an integer >= 1, got {value!r}")
        if self.image_size % 32:
            raise ValueError(f"DemoConfig.chain.image_size must be a multiple of 32, got {self.image_size}")


@dataclass(kw_only=True)
class DemoConfig:
    """Settings of ``fastgen demo``."""

    out: str = "demo_out"  # output folder: dataset/, config.resolved.yaml and the later stages' outputs
    seed: int = 0  # run seed (>= 0); the dataset's files depend only on it and `data`
    data: ProceduralConfig = field(default_factory=ProceduralConfig)  # the procedural dataset to make
    chain: ChainConfig = field(default_factory=ChainConfig)  # train → refresh → evaluate

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ValueError(f"DemoConfig.seed = {self.seed} must be >= 0")
        if not self.out:
            raise ValueError("DemoConfig.out is empty; give an output folder")


@dataclass
class DemoContext:
    """What the steps share: the config, the output folder, and each step's results."""

    cfg: DemoConfig
    out: Path
    dataset_root: Path | None = None
    report: Report | None = None
    model_uri: str | None = None  # the published FAST model (train step)
    version_uri: str | None = None  # the published dataset version (refresh step)
    metrics: dict[str, Any] | None = None  # the segmenter's test metrics (evaluate step)
    failed: str | None = None  # set by a step to stop the chain, with the reason
    timings: dict[str, float] = field(default_factory=dict)  # step name → seconds


@dataclass(frozen=True)
class DemoStep:
    """One stage of the demo: a name, a one-line description and a function that updates the context."""

    name: str
    description: str
    run: Callable[[DemoContext], None]


def write_resolved_config(ctx: DemoContext) -> None:
    """Write ``<out>/config.resolved.yaml`` (the config actually used)."""
    ctx.out.mkdir(parents=True, exist_ok=True)
    (ctx.out / RESOLVED_NAME).write_text(dump_config(ctx.cfg))


def make_dataset(ctx: DemoContext) -> None:
    """Make the procedural MVTec-layout dataset under ``<out>/dataset``."""
    d = ctx.cfg.data
    ctx.dataset_root = make_procedural_dataset(
        ctx.out / "dataset",
        categories=d.categories,
        defects=d.defects,
        n_train_good=d.n_train_good,
        n_test_good=d.n_test_good,
        n_per_defect=d.n_per_defect,
        size=d.size,
        seed=ctx.cfg.seed,
    )


def inspect_step(ctx: DemoContext) -> None:
    """Validate the dataset; any error stops the chain."""
    if ctx.dataset_root is None:
        raise ValueError("the inspect step needs the dataset step before it")
    ctx.report = inspect_dataset(InspectConfig(root=str(ctx.dataset_root)))
    if not ctx.report.ok:
        ctx.failed = f"inspection found {len(ctx.report.errors)} error(s) in {ctx.dataset_root}"


def _require(value: Any, what: str, step: str) -> Any:
    if value is None:
        raise ValueError(f"the {step} step needs {what} from an earlier step")
    return value


def train_step(ctx: DemoContext) -> None:
    """Train VAE, base and FAST stage of the tiny preset from scratch (1 Ray Train worker) and publish the model."""
    from pipelines.train import TrainConfig, run_training

    root = _require(ctx.dataset_root, "the dataset", "train")
    c = ctx.cfg.chain
    stage = {"steps": c.train_steps, "batch_size": 4, "lr": 1e-3, "checkpoint_every": c.train_steps,
             "log_every": max(1, c.train_steps // 4)}  # fmt: skip
    cfg = from_dict(
        TrainConfig,
        {
            "run_name": "tiny",
            "storage_path": str(ctx.out / "runs"),
            "dataset": {"root": str(root), "image_size": c.image_size, "image_channels": 3},
            "model": {"preset": "tiny"},
            "stages": ["vae", "base", "fast"],
            "stage": {"vae": stage, "base": stage, "fast": stage},
            "scaling": {"num_workers": 1},
            "seed": ctx.cfg.seed,
            "grid_samples": 2,
            "grid_nfe": 4,
        },
        "demo train config",
    )
    ctx.model_uri = run_training(cfg).model_uri


def refresh_step(ctx: DemoContext) -> None:
    """Augmented masks → manifest → synthesis → validation → LATEST, for every defect type of the dataset."""
    from pipelines.refresh import RefreshConfig, run_refresh

    root = _require(ctx.dataset_root, "the dataset", "refresh")
    model = _require(ctx.model_uri, "a trained model", "refresh")
    c = ctx.cfg.chain
    cfg = from_dict(
        RefreshConfig,
        {
            "name": DEMO_DATASET,
            "prefix": str(ctx.out / "datasets"),
            "model_uri": model,
            "dataset": {"root": str(root)},
            "counts": {"default": c.pairs_per_defect},
            "job_seed": ctx.cfg.seed,
            "masks": {
                "counts": {"default": c.masks_per_defect},
                "size": [ctx.cfg.data.size, ctx.cfg.data.size],
                "shard_size": 64,
            },
            "synthesize": {
                "shard_size": 32,
                "sampler": {"nfe": 10, "batch_size": 8},
                "qc": {"reject_latent_mask_empty": False},
                "compute": {"concurrency": 1, "num_cpus": 1, "batch_size": 8},
                "preview_pairs": 8,
            },
            "validation": {"min_written_fraction": 0.5, "max_rejection_rate": 0.5},
        },
        "demo refresh config",
    )
    ctx.version_uri = run_refresh(cfg).uri


def evaluate_step(ctx: DemoContext) -> None:
    """Train the segmenter on the synthesized version (+ normal images) and test it on the held-out real defects."""
    from pipelines.evaluate import EvaluateConfig, run_evaluation

    root = _require(ctx.dataset_root, "the dataset", "evaluate")
    version = _require(ctx.version_uri, "a dataset version", "evaluate")
    c = ctx.cfg.chain
    cfg = from_dict(
        EvaluateConfig,
        {
            "dataset_root": str(root),
            "out": str(ctx.out / "evaluation"),
            "train_sources": [{"kind": "synthetic", "uri": version}],
            "seed": ctx.cfg.seed,
            "steps": c.evaluate_steps,
            "batch_size": 8,
            "crop_size": 2 * c.image_size,  # native-resolution crops of the demo's small images
            "log_every": max(1, c.evaluate_steps // 4),
        },
        "demo evaluate config",
    )
    ctx.metrics = run_evaluation(cfg)


BASE_STEPS: tuple[DemoStep, ...] = (
    DemoStep("dataset", "make the procedural dataset", make_dataset),
    DemoStep("config", f"write {RESOLVED_NAME}", write_resolved_config),
    DemoStep("inspect", "validate every image and mask", inspect_step),
)
CHAIN_STEPS: tuple[DemoStep, ...] = (
    DemoStep("train", "train a tiny FAST model from scratch (Ray Train)", train_step),
    DemoStep("refresh", "masks -> manifest -> synthesis -> validation -> LATEST (Ray Data)", refresh_step),
    DemoStep("evaluate", "train a segmenter on the new version, test it on real held-out defects", evaluate_step),
)
DEMO_STEPS: tuple[DemoStep, ...] = BASE_STEPS + CHAIN_STEPS


def demo_steps(cfg: DemoConfig) -> tuple[DemoStep, ...]:
    """The steps ``cfg`` asks for: all of them, or only dataset, config and inspection."""
    return DEMO_STEPS if cfg.chain.enabled else BASE_STEPS


def run_demo(cfg: DemoConfig, steps: Sequence[DemoStep] | None = None) -> DemoContext:
    """Run ``steps`` (default: :func:`demo_steps`) in order on a fresh context; stop after a step that sets
    ``ctx.failed``.

    Returns:
        The context: ``dataset_root``, ``report``, ``failed`` and per-step ``timings``.
    """
    ctx = DemoContext(cfg=cfg, out=Path(cfg.out))
    steps = demo_steps(cfg) if steps is None else steps
    for i, step in enumerate(steps, start=1):
        logger.info("[%d/%d] %s: %s", i, len(steps), step.name, step.description)
        start = time.perf_counter()
        step.run(ctx)
        ctx.timings[step.name] = time.perf_counter() - start
        logger.info("[%d/%d] %s done in %.1f s", i, len(steps), step.name, ctx.timings[step.name])
        if ctx.failed:
            logger.error("demo stopped after %s: %s", step.name, ctx.failed)
            break
    return ctx
