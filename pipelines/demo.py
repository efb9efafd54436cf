"""The ``fastgen demo`` chain: a list of named steps run in order on a procedural dataset it makes itself.

Each :class:`DemoStep` reads and fills a shared :class:`DemoContext`; a later stage is added by appending a step to
:data:`DEMO_STEPS` (and, when it needs settings, a section to :class:`DemoConfig`). Present steps: make the
procedural dataset under ``<out>/dataset``, write ``<out>/config.resolved.yaml``, inspect the dataset. The stages
listed in :data:`PENDING_STAGES` are not part of this build.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fast_core.data.procedural import ProceduralConfig, make_procedural_dataset
from fast_core.data.validate import Report
from pipelines.config import RESOLVED_NAME, dump_config
from pipelines.inspect import InspectConfig, inspect_dataset

logger = logging.getLogger(__name__)

#: Stages of the full chain that this build does not run yet, in chain order.
PENDING_STAGES: tuple[str, ...] = ("training", "masks", "synthesis", "evaluation")


@dataclass(kw_only=True)
class DemoConfig:
    """Settings of ``fastgen demo``."""

    out: str = "demo_out"  # output folder: dataset/, config.resolved.yaml and the later stages' outputs
    seed: int = 0  # run seed (>= 0); the dataset's files depend only on it and `data`
    data: ProceduralConfig = field(default_factory=ProceduralConfig)  # the procedural dataset to make

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


DEMO_STEPS: tuple[DemoStep, ...] = (
    DemoStep("dataset", "make the procedural dataset", make_dataset),
    DemoStep("config", f"write {RESOLVED_NAME}", write_resolved_config),
    DemoStep("inspect", "validate every image and mask", inspect_step),
)


def run_demo(cfg: DemoConfig, steps: Sequence[DemoStep] = DEMO_STEPS) -> DemoContext:
    """Run ``steps`` in order on a fresh context; stop after a step that sets ``ctx.failed``.

    Returns:
        The context: ``dataset_root``, ``report``, ``failed`` and per-step ``timings``.
    """
    ctx = DemoContext(cfg=cfg, out=Path(cfg.out))
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
